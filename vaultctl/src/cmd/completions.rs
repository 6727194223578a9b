//! `vaultctl completions SHELL` and the hidden `vaultctl man`: a shell completion
//! script and the man pages, both generated from the clap definitions this binary
//! parses with, so they cannot drift from the real commands.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Prints the completion script, e.g. `vaultctl completions bash > /etc/bash_completion.d/vaultctl`.
pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let mut script = Vec::new();
    // Rendered into memory first: clap_complete panics on a failed write (a closed pipe).
    clap_complete::generate(args.shell, &mut crate::Cli::command(), "vaultctl", &mut script);
    print(&script)
}

#[derive(Debug, clap::Args)]
pub(crate) struct ManArgs {
    /// Write every page (vaultctl.1 and one per subcommand, vaultctl-put.1, …)
    /// into DIR instead of printing vaultctl.1.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

/// Prints vaultctl(1) in roff, or writes all the pages into a directory:
/// `vaultctl man --out-dir /usr/local/share/man/man1`.
pub(crate) fn man(args: ManArgs) -> anyhow::Result<()> {
    // `vaultctl help` is not a page of its own; the pages are.
    let cli = crate::Cli::command().disable_help_subcommand(true);
    if let Some(dir) = args.out_dir {
        clap_mangen::generate_to(cli, &dir).with_context(|| format!("writing man pages to {}", dir.display()))?;
        println!("wrote the man pages to {}", dir.display());
        return Ok(());
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(cli).render(&mut page).context("rendering the man page")?;
    print(&page)
}

fn print(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush()).context("writing to stdout")
}
