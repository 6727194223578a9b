//! The vaultd binary: parse arguments, harden the process, run, and report the
//! outcome from one exit point.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use vaultd::config::Config;
use vaultd::crypto::kdf;
use vaultd::daemon::{self, DaemonError, Options};

/// vaultd — the secrets vault daemon for AI-agent deployments.
///
/// Starts sealed (or uninitialized); `vaultctl init` / `vaultctl unlock` over the
/// admin socket, or `--passphrase-file`, opens it. Logs go to stderr; set
/// VAULTD_LOG (e.g. `debug`, `vaultd=trace`) to change the level. No level ever
/// logs a secret value or passphrase.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Directory for the vault database (created 0700; refused if others can access it).
    #[arg(long, required_unless_present = "dev")]
    data_dir: Option<PathBuf>,
    /// Agent socket [default: $RUNTIME_DIRECTORY/agent.sock, else /run/vaultd/agent.sock,
    /// where vaultctl looks; a missing directory is created].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Admin socket, owner-only [default: $RUNTIME_DIRECTORY/admin.sock, else /run/vaultd/admin.sock].
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Unlock at startup with the passphrase in this file (one trailing newline
    /// ignored), e.g. "$CREDENTIALS_DIRECTORY/passphrase". Without it,
    /// $VAULTD_PASSPHRASE is used when set (containers; see SECURITY.md).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// TOML config file (see README).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Throwaway vault in a temp dir, unlocked, deleted on exit; prints the
    /// `export VAULT_SOCKET=… VAULT_ADMIN_SOCKET=…` lines to use it. Agents of
    /// other users may connect to its agent socket (reads still need grants).
    #[arg(long, conflicts_with_all = ["data_dir", "socket", "admin_socket", "passphrase_file", "config"])]
    dev: bool,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VAULTD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    let args = Args::parse();

    for failure in vaultd::process::harden() {
        tracing::warn!(%failure, "process hardening step failed");
    }
    match vaultd::limits::raise_file_limit() {
        Ok(nofile) => tracing::debug!(nofile, "file limit"),
        Err(why) => tracing::warn!("cannot raise the file limit to its hard limit: {why}"),
    }
    if let Err(why) = vaultd::process::lock_memory() {
        tracing::warn!("memory not locked, so keys and secrets may be written to swap: {why}");
    }
    if rustix::process::geteuid().is_root() {
        tracing::warn!("running as root: run vaultd as a dedicated user (see SECURITY.md)");
    }
    if !vaultd::identity::exe_attestation() {
        tracing::info!(
            "exe attestation unavailable (no CAP_SYS_PTRACE): --exe and --exe-sha256 match no agent of another uid; see README \"Executable selectors\""
        );
    }
    if kdf::insecure_test_profile_enabled() {
        eprintln!(
            "vaultd: WARNING: {}=1 — new vaults use a trivially cheap KDF. FOR TESTS ONLY; never store real secrets.",
            kdf::INSECURE_TEST_PROFILE_ENV
        );
    }

    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vaultd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), DaemonError> {
    let runtime = tokio::runtime::Runtime::new().map_err(|source| DaemonError::Io {
        what: "starting the runtime in",
        path: ".".into(),
        source,
    })?;
    runtime.block_on(async {
        vaultd::clock::follow();
        let shutdown = shutdown_signal().map_err(|source| DaemonError::Io {
            what: "installing signal handlers in",
            path: ".".into(),
            source,
        })?;
        if args.dev {
            return daemon::run_dev(shutdown).await;
        }
        let Some(data_dir) = args.data_dir else { unreachable!("clap requires --data-dir without --dev") };
        // Where vaultctl looks by default, so that neither needs a flag.
        let default_dir = std::path::Path::new(vault_proto::DEFAULT_AGENT_SOCKET).parent().unwrap_or(&data_dir);
        let socket_dir = std::env::var_os("RUNTIME_DIRECTORY").map_or_else(|| default_dir.to_owned(), PathBuf::from);
        let config = match &args.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let opts = Options {
            agent_socket: args.socket.unwrap_or_else(|| socket_dir.join("agent.sock")),
            admin_socket: args.admin_socket.unwrap_or_else(|| socket_dir.join("admin.sock")),
            passphrase_file: args.passphrase_file,
            passphrase_env: std::env::var_os(daemon::PASSPHRASE_ENV)
                .map(|v| vaultd::crypto::SecretBytes::new(std::os::unix::ffi::OsStringExt::into_vec(v))),
            data_dir,
            config,
        };
        daemon::run(opts, shutdown).await
    })
}

/// Resolves on SIGTERM or SIGINT. Installed before serving so an early signal is not lost.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}
