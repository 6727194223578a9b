//! `vaultctl exec --secret VAR=NAME... -- CMD ARGS...`: run a program with its
//! secrets, fetched in one round trip through the agent socket (as the agent it
//! is, or with `VAULT_TOKEN`), in its environment or, with `--files DIR`, as 0400
//! files. vaultctl stays as the program's parent: it forwards signals, exits with
//! the program's status, and on a rotation (pushed by `WatchSecrets`) restarts or
//! signals it, as `--on-rotate` says.
//!
//! The program sees only the secrets named here: vaultctl took its own
//! `VAULT_TOKEN` out of its environment at start, and, being non-dumpable, its
//! memory and `/proc/PID/environ` are closed to the program (root aside).

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use rustix::process::{Pid, Signal};
use tokio::signal::unix::{SignalKind, signal};
use vault_proto::v1::{GetSecretsRequest, GetSecretsResponse};
use zeroize::Zeroizing;

use crate::Global;
use crate::cmd::{checked_env, secret_ref};
use crate::daemon::{self, RpcError};
use crate::exit::{ChildExit, usage};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// An environment variable and the secret it gets: VAR=NAME. Repeat for more.
    #[arg(long = "secret", value_name = "VAR=NAME", required = true, value_parser = binding)]
    secrets: Vec<(String, String)>,
    #[command(flatten)]
    launch: Launch,
}

/// How the program is run and kept: what `exec` and `run` share.
#[derive(Debug, clap::Args)]
pub(crate) struct Launch {
    /// Write each secret to DIR/VAR (mode 0400; DIR made 0700 if missing, ideally
    /// on a tmpfs such as $XDG_RUNTIME_DIR) and set VAR_FILE to its path instead
    /// of VAR: out of the environment, which children inherit and tools print.
    /// Files and environment alike are private from other users, not from other
    /// processes of the same user: for that, run the program as a uid of its own.
    #[arg(long, value_name = "DIR")]
    files: Option<PathBuf>,
    /// On a rotation: restart the program with the new values (default), send it a
    /// signal (signal:HUP; with --files, the files are updated first), or ignore.
    #[arg(long, value_name = "ACTION", default_value = "restart", value_parser = on_rotate)]
    on_rotate: OnRotate,
    /// The program and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnRotate {
    Restart,
    Signal(Signal),
    Ignore,
}

fn binding(text: &str) -> Result<(String, String), String> {
    let (var, name) = text.split_once('=').ok_or("expected VAR=NAME")?;
    // Not quoted back: a value pasted here by mistake must not be echoed.
    if !vault_proto::names::is_env_var(var) {
        return Err("VAR is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)".into());
    }
    vault_proto::names::validate(name).map_err(|e| format!("invalid secret name: {e}"))?;
    Ok((var.to_owned(), name.to_owned()))
}

fn on_rotate(text: &str) -> Result<OnRotate, String> {
    match text {
        "restart" => Ok(OnRotate::Restart),
        "ignore" => Ok(OnRotate::Ignore),
        _ => match text.strip_prefix("signal:") {
            Some(name) => signal_named(name).map(OnRotate::Signal),
            None => Err("expected restart, signal:SIG or ignore".into()),
        },
    }
}

fn signal_named(name: &str) -> Result<Signal, String> {
    Ok(match name.trim_start_matches("SIG") {
        "HUP" => Signal::HUP,
        "INT" => Signal::INT,
        "QUIT" => Signal::QUIT,
        "TERM" => Signal::TERM,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "WINCH" => Signal::WINCH,
        other => return Err(format!("unknown signal {other:?} (HUP, INT, QUIT, TERM, USR1, USR2, WINCH)")),
    })
}

/// How long a program gets to exit after SIGTERM before a restart kills it.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The secrets as last received: variable → value.
type Values = BTreeMap<String, Zeroizing<Vec<u8>>>;

pub(crate) async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    for (_, name) in &args.secrets {
        secret_ref(global, name)?;
    }
    let env = checked_env(global)?.to_owned();
    launch(global, env, &args.secrets, &args.launch).await
}

/// Runs `launch.command` with `bindings` (VAR, secret name) from `env`, until it exits.
pub(crate) async fn launch(
    global: &Global,
    env: String,
    bindings: &[(String, String)],
    args: &Launch,
) -> anyhow::Result<()> {
    let names: Vec<String> = bindings.iter().map(|(_, n)| n.clone()).collect();
    let request =
        || daemon::with_token(tonic::Request::new(GetSecretsRequest { env: env.clone(), names: names.clone() }));
    let mut agent = daemon::agent(global).await?;
    // One round trip either way: a watch's first message carries every value.
    let (first, mut updates) = if args.on_rotate == OnRotate::Ignore && args.files.is_none() {
        (agent.get_secrets(request()?).await.map_err(RpcError::from)?.into_inner(), None)
    } else {
        let mut stream = agent.watch_secrets(request()?).await.map_err(RpcError::from)?.into_inner();
        let first = stream.message().await.map_err(RpcError::from)?.context("vaultd ended the watch at once")?;
        (first, Some(stream))
    };
    let mut values = Values::new();
    apply(&mut values, bindings, first);
    let vars = bindings.iter().map(|(var, _)| var.clone()).collect();
    let files = args.files.as_deref().map(|dir| Files::create(dir, vars)).transpose()?;
    if let Some(files) = &files {
        files.write(&values)?;
    }
    let mut child = spawn(args, &values, files.as_ref())?;
    let mut forwarded = Forwarded::new()?;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.context("waiting for the command")?;
                drop(files);
                return Err(ChildExit(exit_code(status)).into());
            }
            sig = forwarded.next() => {
                send(&child, sig);
            }
            update = next_update(&mut updates) => match update {
                Ok(Some(update)) => {
                    apply(&mut values, bindings, update);
                    if let Some(files) = &files {
                        files.write(&values)?;
                    }
                    match args.on_rotate {
                        OnRotate::Restart => {
                            stop(&mut child).await?;
                            child = spawn(args, &values, files.as_ref())?;
                        }
                        OnRotate::Signal(sig) => send(&child, sig),
                        OnRotate::Ignore => {}
                    }
                }
                // The program keeps running with what it has; only the updates stop.
                Ok(None) => updates = None,
                Err(e) => {
                    eprintln!("vaultctl: no more updates: {e:#}");
                    updates = None;
                }
            },
        }
    }
}

/// The next update from the watch, or never when there is none.
async fn next_update(
    updates: &mut Option<tonic::Streaming<GetSecretsResponse>>,
) -> anyhow::Result<Option<GetSecretsResponse>> {
    match updates {
        Some(stream) => Ok(stream.message().await.map_err(RpcError::from)?),
        None => std::future::pending().await,
    }
}

/// Stores each received secret under every variable bound to its name.
fn apply(values: &mut Values, bindings: &[(String, String)], mut reply: GetSecretsResponse) {
    for secret in &mut reply.secrets {
        let value = Zeroizing::new(std::mem::take(&mut secret.value));
        for (var, name) in bindings {
            if *name == secret.name {
                values.insert(var.clone(), value.clone());
            }
        }
    }
}

fn spawn(args: &Launch, values: &Values, files: Option<&Files>) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    for (var, value) in values {
        match files {
            Some(files) => cmd.env(format!("{var}_FILE"), files.path(var)),
            // An environment value must be text without NUL; a binary secret needs --files.
            None => {
                let text = std::str::from_utf8(value)
                    .ok()
                    .filter(|t| !t.contains('\0'))
                    .ok_or_else(|| usage(format!("the secret for {var} is not text: use --files")))?;
                cmd.env(var, text)
            }
        };
    }
    cmd.spawn().with_context(|| format!("cannot run {}", args.command[0]))
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`], and wait for the exit.
async fn stop(child: &mut tokio::process::Child) -> anyhow::Result<()> {
    send(child, Signal::TERM);
    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
        child.kill().await.context("killing the command")?;
    }
    Ok(())
}

fn send(child: &tokio::process::Child, sig: Signal) {
    if let Some(pid) = child.id().and_then(|id| Pid::from_raw(id as i32)) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// A shell's convention: the code, or 128 + the signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        _ => 1,
    }
}

/// The signals vaultctl passes on to the program rather than acting on.
struct Forwarded {
    streams: Vec<(tokio::signal::unix::Signal, Signal)>,
}

impl Forwarded {
    fn new() -> anyhow::Result<Forwarded> {
        let pairs = [
            (SignalKind::terminate(), Signal::TERM),
            (SignalKind::interrupt(), Signal::INT),
            (SignalKind::hangup(), Signal::HUP),
            (SignalKind::quit(), Signal::QUIT),
            (SignalKind::user_defined1(), Signal::USR1),
            (SignalKind::user_defined2(), Signal::USR2),
        ];
        let streams = pairs
            .into_iter()
            .map(|(kind, sig)| Ok((signal(kind).context("installing a signal handler")?, sig)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Forwarded { streams })
    }

    async fn next(&mut self) -> Signal {
        let waits = self.streams.iter_mut().map(|(stream, sig)| {
            let sig = *sig;
            Box::pin(async move {
                stream.recv().await;
                sig
            })
        });
        futures_util::future::select_all(waits).await.0
    }
}

/// `--files DIR`: one 0400 file per variable, replaced atomically on rotation,
/// removed when vaultctl exits (the directory too, if vaultctl made it).
struct Files {
    dir: PathBuf,
    made: bool,
    vars: Vec<String>,
}

impl Files {
    fn create(dir: &Path, vars: Vec<String>) -> anyhow::Result<Files> {
        let made = match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        };
        let meta = std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        let me = rustix::process::geteuid().as_raw();
        if !meta.is_dir() || meta.uid() != me || meta.permissions().mode() & 0o077 != 0 {
            return Err(usage(format!(
                "{} must be a directory of yours that nobody else can read (0700)",
                dir.display()
            )));
        }
        Ok(Files { dir: dir.to_owned(), made, vars })
    }

    fn path(&self, var: &str) -> PathBuf {
        self.dir.join(var)
    }

    fn write(&self, values: &Values) -> anyhow::Result<()> {
        for (var, value) in values {
            let tmp = self.dir.join(format!(".{var}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::io::Write::write_all(&mut file, value).with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, self.path(var))
                .with_context(|| format!("cannot replace {}", self.path(var).display()))?;
        }
        Ok(())
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        for var in &self.vars {
            let _ = std::fs::remove_file(self.path(var));
        }
        if self.made {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}
