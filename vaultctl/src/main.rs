//! `vaultctl`: the operator's command-line client for vaultd (ARCHITECTURE §9).
//!
//! Each subcommand lives in its own file under `cmd/`. Errors flow back here as
//! `anyhow::Error` and leave through one exit point, [`exit::report`], which prints
//! them once and picks the documented exit code.

mod cmd;
mod daemon;
mod dotenv;
mod exit;
mod input;
mod output;
mod secret;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// manage a vaultd secrets vault.
///
/// Secret values and passphrases are never taken from the command line: they come
/// from a file, from stdin, or from a prompt that does not echo.
#[derive(Debug, Parser)]
#[command(name = "vaultctl", version, after_help = exit::HELP)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: cmd::Command,
}

/// Options every subcommand understands. They are `global` so they may be given
/// before or after the subcommand, and each has an environment variable so a
/// deployment can set them once.
#[derive(Debug, clap::Args)]
pub(crate) struct Global {
    /// The agent socket (used by `get`, `watch` and `exec`).
    #[arg(long, global = true, value_name = "PATH", env = "VAULT_SOCKET",
          default_value = vault_proto::DEFAULT_AGENT_SOCKET)]
    pub(crate) socket: PathBuf,

    /// The admin socket (used by every other command).
    #[arg(long, global = true, value_name = "PATH", env = "VAULT_ADMIN_SOCKET",
          default_value = vault_proto::DEFAULT_ADMIN_SOCKET)]
    pub(crate) admin_socket: PathBuf,

    /// The environment secrets live in (`prod`, `staging`, …).
    #[arg(long, global = true, value_name = "ENV", env = "VAULT_ENV",
          default_value = vault_proto::names::DEFAULT_ENV)]
    pub(crate) env: String,

    /// Print machine-readable JSON (stable field names) instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

fn main() -> ExitCode {
    // First, while vaultctl is one thread: only root may read its memory or
    // /proc/PID/environ (it holds tokens, passphrases and values), and the token
    // leaves its environment.
    if let Err(err) = protect() {
        return exit::report(&err);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return exit::clap_error(err),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return exit::report(&anyhow::Error::from(err).context("starting the runtime")),
    };
    match runtime.block_on(cmd::run(&cli.global, cli.command)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(err) => exit::report(&err),
    }
}

fn protect() -> anyhow::Result<()> {
    use rustix::process::{DumpableBehavior, set_dumpable_behavior};
    set_dumpable_behavior(DumpableBehavior::NotDumpable)
        .map_err(|e| anyhow::anyhow!("prctl(PR_SET_DUMPABLE, 0): {e}"))?;
    daemon::take_token()
}
