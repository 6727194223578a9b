//! `vaultctl completions SHELL` and the hidden `vaultctl man`: a shell completion
//! script and the man pages, both generated from the clap definitions this binary
//! parses with, so they cannot drift from the real commands.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;
use vault_proto::v1;

use crate::daemon::{self, Reply as _};

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
    if args.shell == Shell::Bash {
        script.extend_from_slice(BASH_NAMES.as_bytes());
    }
    print(&script)
}

/// Bash: after clap's completion of the words vaultctl defines, secret and client
/// names from vaultd itself (`vaultctl __complete`), for the argument that names
/// one. zsh and fish complete the words only.
const BASH_NAMES: &str = r#"
# Secret and client names, asked of vaultd as whoever runs the shell.
_vaultctl_names() {
    _vaultctl "$@"
    local i=1 word sub="" args=() positional=0 kind=""
    while [ "$i" -lt "$COMP_CWORD" ]; do
        word="${COMP_WORDS[$i]}"
        case "$word" in
            --env|--socket|--admin-socket) args+=("$word" "${COMP_WORDS[$((i + 1))]}"); i=$((i + 2)); continue ;;
            -*) ;;
            *) if [ -z "$sub" ]; then sub="$word"; elif [ "$sub" = client ] && [ "$positional" = 0 ] && [ -z "$kind" ]; then kind="client $word"; else positional=$((positional + 1)); fi ;;
        esac
        i=$((i + 1))
    done
    case "$sub" in
        get|show|versions|rm|rotate|put|watch) kind=secrets ;;
        client) case "$kind" in "client rm"|"client enable"|"client disable"|"client grant"|"client ungrant") kind=clients ;; *) return ;; esac ;;
        *) return ;;
    esac
    [ "$kind" = secrets ] && [ "$positional" -gt 0 ] && [ "$sub" != watch ] && return
    [ "$kind" = clients ] && [ "$positional" -gt 0 ] && return
    local cur="${COMP_WORDS[$COMP_CWORD]}"
    case "$cur" in -*) return ;; esac
    local names
    names="$(vaultctl "${args[@]}" __complete "$kind" 2>/dev/null)" || return
    COMPREPLY=($(compgen -W "$names" -- "$cur"))
}
complete -F _vaultctl_names -o bashdefault -o default vaultctl
"#;

#[derive(Debug, clap::Args)]
pub(crate) struct NamesArgs {
    #[arg(value_enum)]
    kind: Names,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Names {
    Secrets,
    Clients,
}

/// `vaultctl __complete secrets|clients`: the names a shell may offer, one a
/// line. Secrets of the environment as the owner lists them (admin socket), or
/// else as an agent may read them (agent socket); clients from the admin socket.
/// Prints nothing when vaultd cannot say: completion never shows an error.
pub(crate) async fn names(global: &crate::Global, args: NamesArgs) -> anyhow::Result<()> {
    let env = crate::cmd::checked_env(global)?.to_owned();
    let names: Vec<String> = match args.kind {
        Names::Secrets => match owner_secrets(global, &env).await {
            Ok(names) => names,
            Err(_) => {
                let mut agent = daemon::agent(global).await?;
                let request = daemon::with_token(tonic::Request::new(v1::ListGrantedRequest { env }))?;
                agent.list_granted(request).await.reply().map(|r| r.names).unwrap_or_default()
            }
        },
        Names::Clients => {
            let mut admin = daemon::admin(global).await?;
            let clients = admin.list_clients(v1::ListClientsRequest {}).await.reply().map(|r| r.clients);
            clients.unwrap_or_default().into_iter().map(|c| c.name).collect()
        }
    };
    crate::output::lines(&names)
}

async fn owner_secrets(global: &crate::Global, env: &str) -> anyhow::Result<Vec<String>> {
    let mut admin = daemon::admin(global).await?;
    let reply = admin.list_secrets(v1::ListSecretsRequest { env: env.to_owned() }).await.reply()?;
    Ok(reply.secrets.into_iter().map(|m| m.name).collect())
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
