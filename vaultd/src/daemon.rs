//! Starting and stopping the daemon: open the vault, maybe unlock it, bind both
//! sockets, serve until told to stop, then remove the sockets and wipe the keys.

use crate::audit::{Actor, Event, Kind, Outcome, forward, journal, refusals};
use crate::config::{Config, ConfigError, SinkConfig};
use crate::crypto::{self, SecretBytes};
use crate::notify;
use crate::server;
use crate::vault::{Vault, VaultError};
use std::future::Future;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How often the log head is checkpointed (and forwarded) and retention applied.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);

/// Where vaultd takes the passphrase from at startup when no `--passphrase-file`
/// is given: for containers. The trade-off is in SECURITY.md.
pub const PASSPHRASE_ENV: &str = "VAULTD_PASSPHRASE";

#[derive(Debug)]
pub struct Options {
    pub data_dir: PathBuf,
    pub agent_socket: PathBuf,
    pub admin_socket: PathBuf,
    pub passphrase_file: Option<PathBuf>,
    /// `$VAULTD_PASSPHRASE`, when set.
    pub passphrase_env: Option<SecretBytes>,
    pub config: Config,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Startup(String),
}

/// Runs the daemon on `opts.data_dir` until `shutdown` completes.
pub async fn run(mut opts: Options, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    crate::store::prepare_data_dir(&opts.data_dir).map_err(VaultError::from)?;
    let _lock = crate::store::lock_data_dir(&opts.data_dir).map_err(VaultError::from)?;
    let vault = Vault::open(&opts.data_dir, &opts.config)?;
    let passphrase = match (&opts.passphrase_file, opts.passphrase_env.take()) {
        (Some(_), Some(_)) => {
            return Err(DaemonError::Startup(format!("give --passphrase-file or {PASSPHRASE_ENV}, not both")));
        }
        (Some(file), None) => Some((read_passphrase_file(file)?, "the passphrase file")),
        (None, Some(passphrase)) => Some((passphrase, PASSPHRASE_ENV)),
        (None, None) => None,
    };
    // What to do next is said once the sockets listen: a bind error comes first.
    let next = if let Some((passphrase, source)) = passphrase {
        let v = vault.clone();
        blocking(move || v.unlock(&Actor::vaultd(), &passphrase)).await?;
        tracing::info!("vault unlocked from {source}");
        None
    } else if !vault.status()?.initialized {
        Some("vault not initialized; run `vaultctl init`")
    } else {
        Some("vault sealed; run `vaultctl unlock`")
    };
    serve(vault, &opts, || next.into_iter().for_each(|n| tracing::info!("{n}")), shutdown).await
}

/// `--dev`: a throwaway vault in a fresh temp dir, initialized and unlocked with a
/// random passphrase that is never shown, deleted on exit.
pub async fn run_dev(shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let dir = tempfile::Builder::new().prefix("vaultd-dev-").tempdir().map_err(|source| DaemonError::Io {
        what: "creating a temp dir in",
        path: std::env::temp_dir(),
        source,
    })?;
    // Agents of other users can reach the agent socket (the directory is searchable,
    // not listable), so a first session can show one reading; each read is still
    // checked against its grants. The data dir inside stays 0700.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).map_err(|source| DaemonError::Io {
        what: "setting the mode of",
        path: dir.path().to_owned(),
        source,
    })?;
    let opts = Options {
        data_dir: dir.path().join("data"),
        agent_socket: dir.path().join("agent.sock"),
        admin_socket: dir.path().join("admin.sock"),
        passphrase_file: None,
        passphrase_env: None,
        config: Config { agent_socket_mode: 0o666, ..Config::default() },
    };
    crate::store::prepare_data_dir(&opts.data_dir).map_err(VaultError::from)?;
    let _lock = crate::store::lock_data_dir(&opts.data_dir).map_err(VaultError::from)?;
    let vault = Vault::open(&opts.data_dir, &opts.config)?;
    let passphrase = crypto::random_secret(32).map_err(VaultError::from)?;
    let v = vault.clone();
    blocking(move || v.init(&Actor::vaultd(), &passphrase)).await?;
    let ready = || {
        println!("export VAULT_SOCKET={}", shell_quote(&opts.agent_socket));
        println!("export VAULT_ADMIN_SOCKET={}", shell_quote(&opts.admin_socket));
        tracing::warn!(dir = %dir.path().display(), "dev mode: throwaway vault, unlocked; deleted on exit");
    };
    let result = serve(vault, &opts, ready, shutdown).await;
    dir.close().map_err(|e| DaemonError::Startup(format!("--dev: removing the temp dir: {e}")))?;
    result
}

async fn serve(
    vault: Arc<Vault>,
    opts: &Options,
    ready: impl FnOnce(),
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let bind = |path: &Path, mode, gid| {
        let path = path.to_path_buf();
        async move {
            server::bind(&path, mode, gid).await.map_err(|source| DaemonError::Io { what: "binding", path, source })
        }
    };
    let agent = bind(&opts.agent_socket, opts.config.agent_socket_mode, opts.config.agent_socket_gid).await?;
    let admin = bind(&opts.admin_socket, 0o600, None).await?;
    let broker = crate::broker::Broker::new(vault.clone(), &opts.config.broker).map_err(DaemonError::Startup)?;
    let (broker_stop, stop_broker) = tokio::sync::watch::channel(());
    let broker_task = match &broker {
        Some(b) => {
            let listeners = b.bind(&opts.agent_socket).await.map_err(|source| DaemonError::Io {
                what: "binding the broker for",
                path: opts.agent_socket.clone(),
                source,
            })?;
            Some(tokio::spawn(b.clone().serve(listeners, stop_broker)))
        }
        None => None,
    };
    // Sinks first, so they see the start record; refuse to serve if it cannot be written.
    forward::spawn(&opts.config.audit.sinks, &vault.subscribe_sender(), vault.forward_stats());
    let alerts = crate::broker::alert::spawn(vault.clone(), &opts.config.alerts).map_err(DaemonError::Startup)?;
    vault.record_durable(start_event(&opts.config))?;
    let maintenance = tokio::spawn(maintain(vault.clone(), opts.config.audit.retention));
    let scheduler = tokio::spawn(schedule(vault.clone(), opts.config.rotation.check_every));
    let incidents = tokio::spawn(honour_incidents(vault.clone()));
    let importer = tokio::spawn(import_journal(vault.clone()));
    let refusals = tokio::spawn(record_refusals(vault.clone()));
    tracing::info!(agent = %opts.agent_socket.display(), admin = %opts.admin_socket.display(), "listening");
    ready();
    // Both sockets are bound and listening (connections queue until the server
    // accepts them), and a `--passphrase-file` vault is unlocked: ready.
    notify::notify(notify::READY);
    // Seal the moment shutdown begins: requests still draining keep the keys they
    // already hold, new ones are refused, and nothing waits on a slow client.
    let v = vault.clone();
    let shutdown = async move {
        shutdown.await;
        notify::notify(notify::STOPPING);
        let _ = broker_stop.send(());
        let counted = v.record_refusals();
        let stop = v.record_durable(Event::new(Kind::DaemonStop, Outcome::Ok, &Actor::vaultd()));
        let sealed = v.seal(&Actor::vaultd());
        for e in [counted.err(), stop.err(), sealed.err()].into_iter().flatten() {
            tracing::error!(error = %e, "recording the shutdown failed");
        }
    };
    server::serve(vault.clone(), agent, admin, &opts.config.limits, broker, shutdown).await;
    if let Some(task) = broker_task {
        let _ = task.await;
    }
    maintenance.abort();
    scheduler.abort();
    incidents.abort();
    importer.abort();
    refusals.abort();
    if let Some(alerts) = alerts {
        alerts.abort();
    }
    for path in [&opts.agent_socket, &opts.admin_socket] {
        let _ = std::fs::remove_file(path);
    }
    // Sealed already by the shutdown; this wipes nothing more.
    let sealed = vault.seal(&Actor::vaultd());
    tracing::info!("stopped; keys wiped");
    Ok(sealed?)
}

/// The record of a start: the settings that decide what is recorded and who can connect.
fn start_event(config: &Config) -> Event {
    let sinks: Vec<String> = config
        .audit
        .sinks
        .iter()
        .map(|s| match s {
            SinkConfig::Jsonl { path } => format!("jsonl:{}", path.display()),
            SinkConfig::Syslog { socket } => format!("syslog:{}", socket.display()),
        })
        .collect();
    Event::new(Kind::DaemonStart, Outcome::Ok, &Actor::vaultd())
        .with("version", env!("CARGO_PKG_VERSION"))
        .with("agent_socket_mode", format!("{:04o}", config.agent_socket_mode))
        .with("audit_reads", config.audit.reads)
        .with("audit_retention", config.audit.retention.map(|r| humantime::format_duration(r).to_string()))
        .with("audit_sinks", sinks)
}

/// Hourly, while unlocked: apply retention, then checkpoint the log head (the
/// checkpoint travels to the sinks, out of reach of whoever can edit the database).
async fn maintain(vault: Arc<Vault>, retention: Option<Duration>) {
    let mut every = tokio::time::interval(MAINTENANCE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if vault.is_sealed() {
            continue;
        }
        let v = vault.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let pruned = match retention {
                Some(retention) => v.audit_prune(retention)?,
                None => 0,
            };
            v.checkpoint()?;
            Ok::<_, VaultError>(pruned)
        })
        .await;
        match outcome {
            Ok(Ok(pruned)) if pruned > 0 => tracing::info!(pruned, "audit retention applied"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "audit maintenance failed"),
            Err(_) => tracing::error!("audit maintenance task panicked"),
        }
    }
}

/// The rotation scheduler: a pass every `every` (due rotations, ended grace
/// periods, interrupted rotations); passes while sealed do nothing.
async fn schedule(vault: Arc<Vault>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = vault.rotation_pass().await {
            tracing::error!(error = %e, "rotation scheduler pass failed");
        }
    }
}

/// Moves journaled records into the audit table, every `IMPORT_EVERY` or sooner
/// when many wait (see `audit::journal`).
async fn import_journal(vault: Arc<Vault>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(journal::IMPORT_EVERY) => {}
            () = vault.journal_wanted() => {}
        }
        let v = vault.clone();
        match tokio::task::spawn_blocking(move || v.import_journal()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "importing the audit journal failed; reads are refused until it works")
            }
            Err(_) => tracing::error!("the audit journal import panicked"),
        }
    }
}

/// Every interval, the refusals counted past their callers' budgets, a record
/// per caller (see `audit::refusals`), and the token uses noted since they were
/// last written (see `Vault::flush_token_uses`).
async fn record_refusals(vault: Arc<Vault>) {
    let mut tick = tokio::time::interval(refusals::INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = vault.record_refusals() {
            tracing::error!(error = %e, "recording the refusals counted failed");
        }
        let v = vault.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || v.flush_token_uses()).await {
            tracing::error!(error = %e, "writing the token uses back failed");
        }
    }
}

/// Every second: a revoke-all made offline (by another process, on the data
/// dir) ends this vaultd's streams and agent connections too.
async fn honour_incidents(vault: Arc<Vault>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Err(e) = vault.honour_incidents().await {
            tracing::error!(error = %e, "checking for offline incidents failed");
        }
    }
}

async fn blocking(f: impl FnOnce() -> Result<(), VaultError> + Send + 'static) -> Result<(), DaemonError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| DaemonError::Startup("a startup task panicked".into()))?
        .map_err(DaemonError::from)
}

/// Reads a passphrase file. One trailing newline is dropped, since files written
/// with `echo` end with one; all other bytes count. A file others can read is
/// used, with a warning: refusing would break systemd credentials on some setups.
fn read_passphrase_file(path: &Path) -> Result<SecretBytes, DaemonError> {
    let io_err = |source| DaemonError::Io { what: "reading the passphrase file", path: path.into(), source };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "the passphrase file is readable by group or others; chmod 600 it");
    }
    let mut bytes = std::fs::read(path).map_err(io_err)?;
    strip_one_newline(&mut bytes);
    Ok(SecretBytes::new(bytes))
}

fn strip_one_newline(bytes: &mut Vec<u8>) {
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(bytes.len() - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(bytes.len() - 1);
    }
}

/// Single-quotes a path for the `export` lines `--dev` prints.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_exactly_one_newline() {
        for (input, want) in [
            (&b"pass\n"[..], &b"pass"[..]),
            (b"pass\r\n", b"pass"),
            (b"pass\n\n", b"pass\n"),
            (b"pass", b"pass"),
            (b" pass ", b" pass "),
        ] {
            let mut v = input.to_vec();
            strip_one_newline(&mut v);
            assert_eq!(v, want);
        }
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote(Path::new("/tmp/a b/it's")), r"'/tmp/a b/it'\''s'");
    }
}
