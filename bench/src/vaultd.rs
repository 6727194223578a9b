//! vaultd and vaultctl as the bench runs them: finding (building) the release
//! binaries, a daemon in its own directory, `vaultctl` calls, and what /proc says
//! about a process (resident memory). Also [`Process`], the guard that
//! stops every child the bench starts.

use anyhow::{Context as _, bail, ensure};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to listen, or to exit after SIGTERM.
const SERVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `vaultctl` call may take (unlock runs Argon2 at 64 MiB).
const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// The vault passphrase; the vault lives in a temp dir and holds nothing real.
const PASSPHRASE: &[u8] = b"vault-bench passphrase (not a secret)\n";

/// The vaultd and vaultctl binaries.
#[derive(Debug, Clone)]
pub(crate) struct Bins {
    pub(crate) vaultd: PathBuf,
    pub(crate) vaultctl: PathBuf,
}

impl Bins {
    /// vaultd and vaultctl from the bench binary's own directory (target/release).
    /// Under `cargo run` ($CARGO set) they are first built with that profile, a
    /// no-op when fresh, so the vaultd measured is the one in the source tree.
    pub(crate) fn locate() -> anyhow::Result<Bins> {
        let exe = std::env::current_exe().context("finding the bench binary")?;
        let dir = exe.parent().context("the bench binary has no directory")?;
        if let Some(cargo) = std::env::var_os("CARGO") {
            let profile = match dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => "dev",
                Some(other) => other,
            };
            let target_dir = dir.parent().context("the profile dir has no parent")?;
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
            eprintln!("vault-bench: cargo build --profile {profile} -p vaultd -p vaultctl");
            let mut cmd = Command::new(cargo);
            // What `cargo run` set for this package must not reach the build: ring's
            // build script reruns when CARGO_MANIFEST_DIR changes, and so would
            // rebuild ring and vaultd on every bench run.
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy();
                let per_package =
                    ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_CRATE_NAME", "CARGO_BIN_NAME", "CARGO_PRIMARY"];
                if per_package.iter().any(|p| key.starts_with(p)) {
                    cmd.env_remove(&*key);
                }
            }
            let status = cmd
                .args(["build", "--quiet", "--locked", "-p", "vaultd", "-p", "vaultctl", "--profile", profile])
                .arg("--manifest-path")
                .arg(manifest)
                .arg("--target-dir")
                .arg(target_dir)
                .stdin(Stdio::null())
                .status()
                .context("running cargo build")?;
            ensure!(status.success(), "building vaultd and vaultctl failed ({status})");
        }
        let bins = Bins { vaultd: dir.join("vaultd"), vaultctl: dir.join("vaultctl") };
        for bin in [&bins.vaultd, &bins.vaultctl] {
            ensure!(
                bin.is_file(),
                "{} is missing: run `cargo build --release -p vaultd -p vaultctl`, or run the bench with `cargo run`",
                bin.display()
            );
        }
        Ok(bins)
    }
}

impl Bins {
    /// `vaultd` at `path`, and the `vaultctl` beside it (or `fallback`'s when
    /// there is none): another build to compare with.
    pub(crate) fn beside(path: &Path, fallback: &Bins) -> anyhow::Result<Bins> {
        let vaultd = std::fs::canonicalize(path).with_context(|| format!("finding {}", path.display()))?;
        ensure!(vaultd.is_file(), "{} is not a file", vaultd.display());
        let sibling = vaultd.with_file_name("vaultctl");
        let vaultctl = if sibling.is_file() { sibling } else { fallback.vaultctl.clone() };
        Ok(Bins { vaultd, vaultctl })
    }
}

/// A child process that is stopped when dropped — on success, on an error, and
/// when ctrl-c drops the bench's future: SIGTERM, then SIGKILL after 5 s.
#[derive(Debug)]
pub(crate) struct Process {
    name: String,
    child: Option<Child>,
}

impl Process {
    pub(crate) fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Process> {
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Process { name: name.into(), child: Some(child) })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits until `socket` accepts connections; fails if the process exits first.
    pub(crate) async fn wait_listening(&mut self, socket: &Path, log: Option<&Path>) -> anyhow::Result<()> {
        let deadline = Instant::now() + SERVER_TIMEOUT;
        loop {
            if tokio::net::UnixStream::connect(socket).await.is_ok() {
                return Ok(());
            }
            let child = self.child.as_mut().context("not running")?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!("{} exited during startup ({status}){}", self.name, log_tail(log));
            }
            ensure!(
                Instant::now() < deadline,
                "{} did not listen within {SERVER_TIMEOUT:?}{}",
                self.name,
                log_tail(log)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGTERM and wait (SIGKILL after [`SERVER_TIMEOUT`]); the exit status, or
    /// `None` if it needed SIGKILL.
    pub(crate) async fn stop(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else { bail!("{} is not running", self.name) };
        signal(&child, rustix::process::Signal::TERM);
        let deadline = Instant::now() + SERVER_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        signal(&child, rustix::process::Signal::KILL);
        child.wait()?;
        Ok(None)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        signal(&child, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        signal(&child, rustix::process::Signal::KILL);
        let _ = child.wait();
    }
}

fn signal(child: &Child, sig: rustix::process::Signal) {
    // "No such process" is fine: it may just have exited.
    let _ = rustix::process::kill_process(rustix::process::Pid::from_child(child), sig);
}

fn log_tail(log: Option<&Path>) -> String {
    let Some(text) = log.and_then(|p| std::fs::read_to_string(p).ok()) else { return String::new() };
    let lines: Vec<&str> = text.lines().collect();
    format!("; its log ends:\n{}", lines[lines.len().saturating_sub(20)..].join("\n"))
}

/// A vaultd with its own directory: `DIR/data`, `DIR/agent.sock`, `DIR/admin.sock`,
/// `DIR/vaultd.log` (stderr), and `DIR/vaultd.toml` when audit reads are off
/// (or another configuration is given).
/// Started with the default KDF and log level (VAULTD_INSECURE_TEST_KDF and
/// VAULTD_LOG are removed from its environment). Stopped on drop.
pub(crate) struct Daemon {
    bins: Bins,
    dir: PathBuf,
    pub(crate) agent_socket: PathBuf,
    pub(crate) admin_socket: PathBuf,
    config: Option<PathBuf>,
    passphrase_file: PathBuf,
    log: PathBuf,
    process: Option<Process>,
}

impl Daemon {
    /// Starts a new, uninitialized vaultd in `dir` (created) and waits until it listens.
    pub(crate) async fn start(bins: &Bins, dir: &Path, audit_reads: bool) -> anyhow::Result<Daemon> {
        let config = if audit_reads { None } else { Some("[audit]\nreads = false\n") };
        Daemon::start_with_config(bins, dir, config).await
    }

    /// [`Daemon::start`] with `config` as `DIR/vaultd.toml` (none: no config file).
    pub(crate) async fn start_with_config(bins: &Bins, dir: &Path, config: Option<&str>) -> anyhow::Result<Daemon> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let write = |name: &str, bytes: &[u8]| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            Ok(path)
        };
        let config = config.map(|text| write("vaultd.toml", text.as_bytes())).transpose()?;
        let mut d = Daemon {
            bins: bins.clone(),
            agent_socket: dir.join("agent.sock"),
            admin_socket: dir.join("admin.sock"),
            passphrase_file: write("passphrase", PASSPHRASE)?,
            log: dir.join("vaultd.log"),
            dir: dir.to_path_buf(),
            config,
            process: None,
        };
        d.launch().await?;
        Ok(d)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        ensure!(self.process.is_none(), "vaultd is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new(&self.bins.vaultd);
        cmd.arg("--data-dir").arg(self.dir.join("data"));
        cmd.arg("--socket").arg(&self.agent_socket).arg("--admin-socket").arg(&self.admin_socket);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.env_remove("VAULTD_INSECURE_TEST_KDF").env_remove("VAULTD_LOG").env_remove("RUNTIME_DIRECTORY");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let mut process = Process::spawn("vaultd", &mut cmd)?;
        process.wait_listening(&self.admin_socket, Some(&self.log)).await?;
        self.process = Some(process);
        Ok(())
    }

    /// SIGTERM; fails unless vaultd exits cleanly.
    pub(crate) async fn stop(&mut self) -> anyhow::Result<()> {
        let mut process = self.process.take().context("vaultd is not running")?;
        match process.stop().await? {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!("vaultd exited with {status} on SIGTERM{}", log_tail(Some(&self.log))),
            None => bail!("vaultd ignored SIGTERM for {SERVER_TIMEOUT:?}"),
        }
    }

    /// Stops vaultd and starts it again on the same data: it comes back sealed.
    pub(crate) async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.launch().await
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Process::pid)
    }

    /// `DIR`: the sockets, the log and the data dir are in it.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `vaultctl ARGS` against this daemon with `stdin`; fails unless it
    /// succeeds. Returns its wall time (process start to exit).
    pub(crate) async fn ctl(&self, args: &[&str], stdin: &[u8]) -> anyhow::Result<Duration> {
        self.ctl_output(args, stdin).await.map(|(took, _)| took)
    }

    /// [`Daemon::ctl`], also returning its stdout.
    pub(crate) async fn ctl_output(&self, args: &[&str], stdin: &[u8]) -> anyhow::Result<(Duration, Vec<u8>)> {
        use tokio::io::AsyncWriteExt as _;
        let mut cmd = tokio::process::Command::new(&self.bins.vaultctl);
        cmd.args(args)
            .env("VAULT_SOCKET", &self.agent_socket)
            .env("VAULT_ADMIN_SOCKET", &self.admin_socket)
            .env_remove("VAULT_ENV")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd.spawn().context("starting vaultctl")?;
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(stdin).await?;
        }
        let out = tokio::time::timeout(CTL_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| format!("vaultctl {} took over {CTL_TIMEOUT:?}", args.join(" ")))??;
        let took = started.elapsed();
        ensure!(
            out.status.success(),
            "vaultctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok((took, out.stdout))
    }

    /// `vaultctl init --passphrase-file F` (which leaves the vault unlocked).
    pub(crate) async fn init(&self) -> anyhow::Result<()> {
        self.ctl(&["init", "--passphrase-file", &self.passphrase_path()?], b"").await.map(drop)
    }

    /// `vaultctl unlock --passphrase-file F`; its wall time.
    pub(crate) async fn unlock(&self) -> anyhow::Result<Duration> {
        self.ctl(&["unlock", "--passphrase-file", &self.passphrase_path()?], b"").await
    }

    /// `vaultctl put NAME` with the value on stdin.
    pub(crate) async fn put(&self, name: &str, value: &[u8]) -> anyhow::Result<()> {
        self.ctl(&["put", name, "--provider", "bench"], value).await.map(drop)
    }

    fn passphrase_path(&self) -> anyhow::Result<String> {
        self.passphrase_file.to_str().map(str::to_owned).context("the temp dir's path is not UTF-8")
    }

    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.pid())
    }

    /// "; its log ends: …" with the last lines vaultd wrote, for an error message.
    pub(crate) fn log_tail(&self) -> String {
        log_tail(Some(&self.log))
    }
}

/// VmRSS of `pid`, from /proc/PID/status, in KiB.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/PID/status")?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).context("no VmRSS in /proc/PID/status")?;
    let kib = line.trim().strip_suffix("kB").context("VmRSS is not in kB")?;
    Ok(kib.trim().parse()?)
}
