//! The end-to-end harness: the real `vaultd` and `vaultctl` binaries, a vault in a
//! temp dir, and helpers to drive it.
//!
//! - [`bins`] builds both binaries once per test process (they live in other
//!   packages, so Cargo's `CARGO_BIN_EXE_*` is not available here); [`example`]
//!   builds an example program the same way.
//! - [`Daemon`] runs vaultd with its own data dir and sockets in a [`TempDir`], its
//!   stderr captured to a file, and stops it on drop (SIGTERM, then SIGKILL).
//! - [`Daemon::ctl`] runs vaultctl against it; [`Output`] checks the CLI contract
//!   (exit code, one-line error on stderr, nothing on stdout).
//!
//! Every test gets its own temp dir and daemon, so tests run in parallel.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Every RPC of `vault.v1.Admin`, in admin.proto's order.
pub const ADMIN_RPCS: [&str; 34] = [
    "Init",
    "Unlock",
    "Seal",
    "Status",
    "PutSecret",
    "ShowSecret",
    "ListSecrets",
    "ListVersions",
    "DeleteSecret",
    "SetRotation",
    "RotateSecret",
    "ListRotations",
    "RevokeAll",
    "ListIncidents",
    "ShowIncident",
    "QueryAudit",
    "ExportAudit",
    "TailAudit",
    "VerifyAudit",
    "AcknowledgeIntegrity",
    "HashValue",
    "AddClient",
    "RemoveClient",
    "SetClientEnabled",
    "Grant",
    "Ungrant",
    "ListClients",
    "CreateToken",
    "ListTokens",
    "RevokeTokens",
    "Rekey",
    "RotateKey",
    "RewrapKeys",
    "Backup",
];

/// The passphrase [`Daemon::init`] sets and [`Daemon::unlock`] uses.
pub const PASSPHRASE: &[u8] = b"e2e correct horse battery staple";

/// How long vaultd may take to start listening (the `--dev` test runs the real
/// Argon2 in a debug build) or to stop after SIGTERM.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one vaultctl call may take before the test fails instead of hanging.
const CTL_TIMEOUT: Duration = Duration::from_secs(30);

/// The two binaries under test.
#[derive(Debug)]
pub struct Bins {
    pub vaultd: PathBuf,
    pub vaultctl: PathBuf,
}

/// Builds vaultd and vaultctl (once per test process) with the test binary's own
/// profile and target dir, and returns their paths.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(build)
}

fn build() -> Bins {
    let profile_dir = cargo_build(&["-p", "vaultd", "-p", "vaultctl"]);
    Bins { vaultd: profile_dir.join("vaultd"), vaultctl: profile_dir.join("vaultctl") }
}

/// Builds `cargo run -p PACKAGE --example NAME`'s binary (once per test process and
/// example) like [`bins`], and returns its path.
pub fn example(package: &str, name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let key = format!("{package}/{name}");
    // Held while building: concurrent cargo builds would only wait on each other.
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, path)) = built.iter().find(|(k, _)| *k == key) {
        return path.clone();
    }
    let path = cargo_build(&["-p", package, "--example", name]).join("examples").join(name);
    built.push((key, path.clone()));
    path
}

/// `cargo build ARGS` with the test binary's own profile and target dir; returns
/// the profile's output dir (`target/debug`).
fn cargo_build(args: &[&str]) -> PathBuf {
    // The test binary is target/<profile dir>/deps/<name>-<hash>.
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("test binaries live in target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("the profile dir is inside the target dir");
    let profile = match profile_dir.file_name().and_then(OsStr::to_str) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let out = Command::new(cargo)
        .args(["build", "--quiet"])
        .args(args)
        .args(["--profile", profile, "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .output()
        .expect("running cargo build");
    assert!(out.status.success(), "cargo build {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    profile_dir.to_owned()
}

/// What a finished process left behind. `stderr` is text: the CLI's errors are
/// (and vaultd's log is) UTF-8 by contract.
#[derive(Debug)]
pub struct Output {
    /// The exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    /// Asserts success and returns `self`.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "expected success; stderr: {}", self.stderr);
        self
    }

    /// stdout as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stdout parsed as one JSON document.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?} (stderr: {})", self.text(), self.stderr))
    }

    /// Asserts the CLI's error contract: exit `code`, nothing on stdout, exactly
    /// one line on stderr starting `vaultctl: `. Returns the message after the prefix.
    #[track_caller]
    pub fn error(&self, code: i32) -> &str {
        assert_eq!(self.code, Some(code), "exit code; stderr: {:?}; stdout: {:?}", self.stderr, self.text());
        assert!(self.stdout.is_empty(), "stdout must be empty on error, got {:?}", self.text());
        let line = self
            .stderr
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("stderr must end with a newline: {:?}", self.stderr));
        assert!(!line.contains('\n'), "stderr must be one line: {:?}", self.stderr);
        line.strip_prefix("vaultctl: ")
            .unwrap_or_else(|| panic!("stderr must start with `vaultctl: `: {:?}", self.stderr))
    }
}

/// Spawns `cmd`, retrying on ETXTBSY: a binary copied by another test thread can
/// still be open for writing in a child forked meanwhile, until that child execs.
pub fn spawn(cmd: &mut Command) -> Child {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result.unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}")),
        }
    }
}

/// "Text file busy" on Linux.
const ETXTBSY: i32 = 26;

/// Runs `cmd` with `stdin` piped in, collecting stdout and stderr; fails the test
/// (killing the process) if it runs longer than [`CTL_TIMEOUT`].
pub fn run(mut cmd: Command, stdin: &[u8]) -> Output {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = spawn(&mut cmd);
    let mut pipe = child.stdin.take().expect("piped stdin");
    let input = stdin.to_vec();
    // A command that exits without reading stdin makes this fail with EPIPE: fine.
    let writer = std::thread::spawn(move || drop(pipe.write_all(&input)));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let Some(status) = wait_until(&mut child, Instant::now() + CTL_TIMEOUT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not finish within {CTL_TIMEOUT:?}");
    };
    let _ = writer.join();
    let join = |h: std::thread::JoinHandle<Vec<u8>>| h.join().expect("pipe reader thread");
    Output {
        code: status.code(),
        stdout: join(stdout),
        stderr: String::from_utf8(join(stderr)).expect("stderr is UTF-8"),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Polls `child` until it exits or `deadline` passes.
pub fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `signal` to `child` (ignoring "no such process": it may just have exited).
pub fn signal(child: &Child, signal: rustix::process::Signal) {
    let _ = rustix::process::kill_process(rustix::process::Pid::from_child(child), signal);
}

/// Stops `child`: `sig`, then SIGKILL if it is still running after `grace`.
/// Returns the exit status and whether SIGKILL was needed.
pub fn terminate(child: &mut Child, sig: rustix::process::Signal, grace: Duration) -> (ExitStatus, bool) {
    signal(child, sig);
    if let Some(status) = wait_until(child, Instant::now() + grace) {
        return (status, false);
    }
    signal(child, rustix::process::Signal::KILL);
    (child.wait().expect("waiting for a killed child"), true)
}

/// A child process that is stopped (SIGTERM, then SIGKILL) if the test ends
/// without waiting for it, so a failing test never leaks a process.
#[derive(Debug)]
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Sends `sig` and waits for the child to exit, failing the test if it needs SIGKILL.
    pub fn stop_with(&mut self, sig: rustix::process::Signal) -> ExitStatus {
        let mut child = self.0.take().expect("the child is running");
        let (status, killed) = terminate(&mut child, sig, DAEMON_TIMEOUT);
        assert!(!killed, "the child ignored {sig:?} for {DAEMON_TIMEOUT:?}");
        status
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            terminate(&mut child, rustix::process::Signal::TERM, Duration::from_secs(5));
        }
    }
}

/// How a daemon is started; the same options apply on [`Daemon::restart`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Set `VAULTD_INSECURE_TEST_KDF=1` so init/unlock take microseconds, not a second.
    pub fast_kdf: bool,
    /// TOML written to `DIR/vaultd.toml` and passed as `--config`.
    pub config: Option<String>,
    /// Extra environment for vaultd, e.g. `("VAULTD_LOG", "trace")`.
    pub env: Vec<(String, String)>,
    /// Extra arguments for vaultd, e.g. `--passphrase-file F`.
    pub args: Vec<std::ffi::OsString>,
    /// Start vaultd with this umask (through `sh -c 'umask …; exec …'`).
    pub umask: Option<u32>,
    /// Shell commands run just before vaultd is exec'd, e.g. `ulimit -c unlimited`
    /// (through `sh -c '…; exec …'`, after the umask).
    pub sh_prelude: Option<String>,
    /// Run vaultd as this uid and gid (the test must be root). The temp dir is
    /// given to that uid, and vaultd runs from a copy everyone can execute.
    pub run_as: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fast_kdf: true,
            config: None,
            env: Vec::new(),
            args: Vec::new(),
            umask: None,
            sh_prelude: None,
            run_as: None,
        }
    }
}

/// How a daemon ended.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    /// Everything vaultd wrote to stderr (across restarts).
    pub log: String,
}

/// A vaultd in a temp dir: `DIR/data` (data dir), `DIR/agent.sock`,
/// `DIR/admin.sock`, stderr appended to `DIR/vaultd.log`. Stopped on drop.
pub struct Daemon {
    pub dir: TempDir,
    pub data_dir: PathBuf,
    pub agent_socket: PathBuf,
    pub admin_socket: PathBuf,
    pub log_path: PathBuf,
    /// Used by the next [`Daemon::launch`] (or restart).
    pub opts: Options,
    child: Option<Child>,
}

impl Daemon {
    /// A started daemon with default options: listening, not initialized.
    pub fn start() -> Daemon {
        Daemon::start_with(Options::default())
    }

    /// A started daemon, listening, not initialized.
    pub fn start_with(opts: Options) -> Daemon {
        let mut d = Daemon::new(opts);
        d.launch();
        d
    }

    /// A started daemon, initialized with [`PASSPHRASE`] (so unlocked).
    pub fn initialized() -> Daemon {
        let d = Daemon::start();
        d.init();
        d
    }

    /// The temp dir and paths, nothing running yet: a test can prepare the data
    /// dir first, then [`Daemon::launch`] or [`Daemon::launch_expecting_exit`].
    pub fn new(opts: Options) -> Daemon {
        let dir = tempfile::Builder::new().prefix("vault-e2e-").tempdir().expect("creating a temp dir");
        let p = dir.path();
        Daemon {
            data_dir: p.join("data"),
            agent_socket: p.join("agent.sock"),
            admin_socket: p.join("admin.sock"),
            log_path: p.join("vaultd.log"),
            dir,
            opts,
            child: None,
        }
    }

    fn spawn(&mut self) -> &mut Child {
        assert!(self.child.is_none(), "vaultd is already running");
        let vaultd = match self.opts.run_as {
            None => bins().vaultd.clone(),
            Some(uid) => self.vaultd_for(uid),
        };
        let prelude: Vec<String> =
            self.opts.umask.map(|u| format!("umask {u:03o}")).into_iter().chain(self.opts.sh_prelude.clone()).collect();
        let mut cmd = if prelude.is_empty() {
            Command::new(&vaultd)
        } else {
            let mut sh = Command::new("sh");
            sh.args(["-c", &format!("{}; exec \"$0\" \"$@\"", prelude.join("; "))]).arg(&vaultd);
            sh
        };
        if let Some(uid) = self.opts.run_as {
            use std::os::unix::process::CommandExt;
            // std also clears the supplementary groups when root sets a uid.
            cmd.uid(uid).gid(uid);
        }
        // A crash's core file, if any, lands in the temp dir, never in the repository.
        cmd.current_dir(self.dir.path());
        cmd.arg("--data-dir").arg(&self.data_dir);
        cmd.arg("--socket").arg(&self.agent_socket);
        cmd.arg("--admin-socket").arg(&self.admin_socket);
        if let Some(config) = &self.opts.config {
            let path = self.write_file("vaultd.toml", config.as_bytes());
            cmd.arg("--config").arg(path);
        }
        cmd.args(&self.opts.args);
        cmd.env_remove("VAULTD_LOG")
            .env_remove("VAULTD_INSECURE_TEST_KDF")
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("VAULTD_PASSPHRASE");
        // Tests run under systemd must not announce their vaultd to the runner's manager.
        cmd.env_remove("NOTIFY_SOCKET");
        if self.opts.fast_kdf {
            cmd.env("VAULTD_INSECURE_TEST_KDF", "1");
        }
        // The clock a test moves with Daemon::advance_clock (debug builds only).
        cmd.env("VAULTD_TEST_CLOCK_FILE", self.dir.path().join("clock"));
        cmd.envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("opening the log");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.child.insert(cmd.spawn().expect("spawning vaultd"))
    }

    /// Gives the temp dir to `uid` and copies vaultd to where it can execute it
    /// (the target dir may not be reachable); returns the copy's path.
    fn vaultd_for(&mut self, uid: u32) -> PathBuf {
        assert!(is_root(), "Options::run_as needs the tests to run as root");
        let id = Some(rustix::process::Uid::from_raw(uid));
        rustix::fs::chown(self.dir.path(), id, Some(rustix::process::Gid::from_raw(uid))).expect("chown the temp dir");
        let bin_dir = self.dir.path().join("bin");
        let copy = bin_dir.join("vaultd");
        if !copy.exists() {
            std::fs::create_dir(&bin_dir).expect("creating DIR/bin");
            std::fs::copy(&bins().vaultd, &copy).expect("copying vaultd");
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
        }
        copy
    }

    /// Moves vaultd's clock forward by `by` (vaultd follows `DIR/clock`, see
    /// vaultd's `clock` module), and waits until it has seen the change: token
    /// expiry, grace periods and schedules are tested without sleeping through them.
    pub fn advance_clock(&self, by: Duration) {
        let path = self.dir.path().join("clock");
        let now: i64 = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let next = now + i64::try_from(by.as_millis()).expect("a test's clock step fits in i64");
        std::fs::write(&path, next.to_string()).expect("writing the test clock");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod the test clock");
        // vaultd polls the file every 50 ms.
        std::thread::sleep(Duration::from_millis(150));
    }

    /// Starts vaultd without waiting for it to listen: for a test that watches the
    /// startup itself. Stopped on drop like any other.
    pub fn launch_unwaited(&mut self) {
        self.spawn();
    }

    /// Starts vaultd and waits until the admin socket accepts connections (both
    /// sockets are bound by then). Fails with vaultd's log if it exits instead.
    pub fn launch(&mut self) {
        self.spawn();
        let deadline = Instant::now() + DAEMON_TIMEOUT;
        loop {
            if std::os::unix::net::UnixStream::connect(&self.admin_socket).is_ok() {
                return;
            }
            let child = self.child.as_mut().expect("just spawned");
            if let Some(status) = child.try_wait().expect("waiting for vaultd") {
                self.child = None;
                panic!("vaultd exited during startup ({status}); its log:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "vaultd did not listen within {DAEMON_TIMEOUT:?}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts vaultd expecting it to refuse to start; returns how it ended.
    pub fn launch_expecting_exit(&mut self) -> Stopped {
        let child = self.spawn();
        let status = wait_until(child, Instant::now() + DAEMON_TIMEOUT);
        let Some(status) = status else {
            panic!("vaultd kept running; expected it to refuse to start. Log:\n{}", self.log());
        };
        self.child = None;
        Stopped { status, log: self.log() }
    }

    /// SIGTERM, and wait for vaultd to exit (failing the test if it needs SIGKILL).
    pub fn stop(&mut self) -> Stopped {
        self.stop_with(rustix::process::Signal::TERM)
    }

    /// Sends `sig` and waits for vaultd to exit (failing the test if it needs SIGKILL).
    pub fn stop_with(&mut self, sig: rustix::process::Signal) -> Stopped {
        self.try_stop(sig, DAEMON_TIMEOUT)
            .unwrap_or_else(|s| panic!("vaultd ignored {sig:?} for {DAEMON_TIMEOUT:?}; log:\n{}", s.log))
    }

    /// Sends `sig` and waits up to `grace` for vaultd to exit: `Ok` if it did,
    /// else `Err` once SIGKILL has ended it.
    pub fn try_stop(&mut self, sig: rustix::process::Signal, grace: Duration) -> Result<Stopped, Stopped> {
        let mut child = self.child.take().expect("vaultd is not running");
        let (status, killed) = terminate(&mut child, sig, grace);
        let stopped = Stopped { status, log: self.log() };
        if killed { Err(stopped) } else { Ok(stopped) }
    }

    /// Stops vaultd (asserting a clean exit) and starts it again on the same data.
    pub fn restart(&mut self) {
        let stopped = self.stop();
        assert!(stopped.status.success(), "vaultd exited with {} on SIGTERM; log:\n{}", stopped.status, stopped.log);
        self.launch();
    }

    /// SIGKILL, as a crash would: nothing is cleaned up.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("vaultd is running");
        signal(&child, rustix::process::Signal::KILL);
        child.wait().expect("waiting for vaultd");
    }

    /// Asserts vaultd is still running.
    #[track_caller]
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("vaultd was never started or was stopped");
        if let Some(status) = child.try_wait().expect("waiting for vaultd") {
            panic!("vaultd exited ({status}); log:\n{}", self.log());
        }
    }

    /// vaultd's pid while it runs.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("vaultd is running").id()
    }

    /// Everything vaultd has written to stderr so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// Writes `DIR/name` (mode 0600) and returns its path.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).expect("writing a test file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
        path
    }

    /// A vaultctl command aimed at this daemon through `VAULT_SOCKET` and
    /// `VAULT_ADMIN_SOCKET` (and no inherited `VAULT_ENV` or `VAULT_PASSPHRASE`).
    /// Offline commands (`backup verify`) open vault files themselves, so they get
    /// the daemon's KDF profile switch too.
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&bins().vaultctl);
        cmd.args(args)
            .env("VAULT_SOCKET", &self.agent_socket)
            .env("VAULT_ADMIN_SOCKET", &self.admin_socket)
            .env_remove("VAULT_ENV")
            .env_remove("VAULT_TOKEN")
            .env_remove("VAULT_PASSPHRASE")
            .env_remove("VAULTD_INSECURE_TEST_KDF");
        if self.opts.fast_kdf {
            cmd.env("VAULTD_INSECURE_TEST_KDF", "1");
        }
        cmd
    }

    /// Runs vaultctl with `args`, `stdin` piped in (so `put` reads its value from it).
    pub fn ctl(&self, args: &[&str], stdin: &[u8]) -> Output {
        run(self.ctl_command(args), stdin)
    }

    /// `vaultctl put NAME` with `value` on stdin; returns the new version number.
    #[track_caller]
    pub fn put(&self, name: &str, value: &[u8]) -> u64 {
        let out = self.ctl(&["--json", "put", name], value).ok();
        out.json()["version"].as_u64().expect("put --json has a version")
    }

    /// `vaultctl get NAME`: the exact bytes vaultctl printed.
    #[track_caller]
    pub fn get(&self, name: &str) -> Vec<u8> {
        self.ctl(&["get", name], b"").ok().stdout
    }

    /// `vaultctl init` with [`PASSPHRASE`] from a file.
    #[track_caller]
    pub fn init(&self) {
        let file = self.passphrase_file(PASSPHRASE);
        self.ctl(&["init", "--passphrase-file", path_str(&file)], b"").ok();
    }

    /// `vaultctl unlock` with [`PASSPHRASE`] from a file.
    #[track_caller]
    pub fn unlock(&self) {
        let file = self.passphrase_file(PASSPHRASE);
        self.ctl(&["unlock", "--passphrase-file", path_str(&file)], b"").ok();
    }

    /// `passphrase` plus the trailing newline an editor or `echo` adds, in a file
    /// outside the data dir.
    pub fn passphrase_file(&self, passphrase: &[u8]) -> PathBuf {
        self.write_file("passphrase", &[passphrase, b"\n"].concat())
    }

    /// `vaultctl status --json`.
    #[track_caller]
    pub fn status(&self) -> serde_json::Value {
        self.ctl(&["--json", "status"], b"").ok().json()
    }

    /// `vaultctl audit verify`: `Ok((entries, first_seq, last_seq))` from its one line,
    /// or `Err((broken_seq, problem))` from its one-line error (exit 1).
    #[track_caller]
    pub fn audit_verify(&self) -> Result<(u64, u64, u64), (u64, String)> {
        let out = self.ctl(&["audit", "verify"], b"");
        if out.code == Some(0) {
            let text = out.text();
            // After the entries, what was acknowledged (`; N problems …`), if anything.
            let text = match text.split_once("; ") {
                Some((head, _)) => format!("{head}\n"),
                None => text,
            };
            let parsed = text
                .strip_prefix("audit log intact: ")
                .and_then(|r| r.strip_suffix(")\n"))
                .and_then(|r| r.split_once(" entries (seq "))
                .and_then(|(n, range)| Some((n, range.split_once("..=")?)))
                .and_then(|(n, (a, b))| Some((n.parse().ok()?, a.parse().ok()?, b.parse().ok()?)));
            return Ok(parsed.unwrap_or_else(|| panic!("unexpected `audit verify` output: {text:?}")));
        }
        let message = out.error(1);
        let parsed = message
            .strip_prefix("audit log broken at entry ")
            .and_then(|r| r.split_once(": "))
            .and_then(|(seq, problem)| Some((seq.parse().ok()?, problem.to_owned())));
        Err(parsed.unwrap_or_else(|| panic!("unexpected `audit verify` error: {message:?}")))
    }

    /// `vaultctl --json audit query ARGS`: the entries (every match unless ARGS set `--limit`).
    #[track_caller]
    pub fn audit_query(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut full = vec!["--json", "audit", "query"];
        full.extend(args);
        if !args.contains(&"--limit") {
            full.extend(["--limit", "0"]);
        }
        match self.ctl(&full, b"").ok().json() {
            serde_json::Value::Array(entries) => entries,
            other => panic!("`audit query --json` printed {other}, not an array"),
        }
    }

    /// `vaultctl audit export` to a new file `DIR/name` (checked: its one line, mode
    /// 0600): the file's bytes and its entries.
    #[track_caller]
    pub fn audit_export(&self, name: &str) -> (Vec<u8>, Vec<serde_json::Value>) {
        let path = self.dir.path().join(name);
        let out = self.ctl(&["audit", "export", "--format", "jsonl", "--output", path_str(&path)], b"").ok();
        let bytes = std::fs::read(&path).expect("reading the export");
        let entries = jsonl(&bytes);
        assert_eq!(out.text(), format!("exported {} entries to {}\n", entries.len(), path.display()));
        let mode = std::fs::metadata(&path).expect("stat the export").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the export must be 0600");
        (bytes, entries)
    }

    /// The key terms in the database, oldest first: (term, encryptions).
    pub fn key_terms(&self) -> Vec<(u32, u64)> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT term, encryptions FROM key_term ORDER BY term").expect("key_term");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).expect("key_term").map(|r| r.expect("a row")).collect()
    }

    /// The key term each stored version's ciphertext names (bytes 2..=5, big-endian).
    pub fn version_terms(&self) -> Vec<u32> {
        let db = self.db();
        let mut stmt =
            db.prepare("SELECT ciphertext FROM secret_version WHERE ciphertext IS NOT NULL").expect("versions");
        stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
            .expect("versions")
            .map(|ct| {
                let ct = ct.expect("a row");
                u32::from_be_bytes(ct[1..5].try_into().expect("a ciphertext names its term"))
            })
            .collect()
    }

    /// A connection to the vault's database, for inspecting or tampering with it
    /// while vaultd runs (WAL mode: vaultd's reader sees committed changes).
    pub fn db(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(self.data_dir.join("vault.db")).expect("opening vault.db");
        conn.busy_timeout(Duration::from_secs(5)).expect("busy_timeout");
        conn
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, rustix::process::Signal::TERM, Duration::from_secs(5));
        }
    }
}

/// A path as `&str`, for argument lists (temp paths are UTF-8).
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// Standard padded base64 (RFC 4648), to check vaultctl's `value_base64` fields.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir`, recursively (sockets and other non-regular files skipped).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("reading a dir") {
        let path = entry.expect("a dir entry").path();
        let kind = std::fs::symlink_metadata(&path).expect("stat").file_type();
        if kind.is_dir() {
            files.extend(files_under(&path));
        } else if kind.is_file() {
            files.push(path);
        }
    }
    files
}

/// A random-looking lowercase hex tag, so each test's canaries are its own.
pub fn unique_tag() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// JSON lines (an export, a JSONL sink), each parsed.
#[track_caller]
pub fn jsonl(bytes: &[u8]) -> Vec<serde_json::Value> {
    let text = std::str::from_utf8(bytes).expect("JSON lines are UTF-8");
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}"))).collect()
}

/// A small seeded PRNG (xorshift64*) for randomized tests: the seed comes from
/// the environment variable given, else from the clock, and is printed by the
/// tests so a failing run can be replayed.
#[derive(Debug)]
pub struct Rng {
    pub seed: u64,
    state: u64,
}

impl Rng {
    pub fn from_env(var: &str) -> Rng {
        let seed = std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        });
        Rng { seed, state: seed | 1 }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Polls `f` every 20 ms until it returns `Some`, failing the test after 10 s.
#[track_caller]
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out after 10 s waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether python3 can import grpc and grpc_tools, for the Python client's tests.
/// Under CI (`CI` set) a missing one fails the test: .ci/run installs them
/// (clients/python/requirements.txt). Elsewhere the caller returns early, and this
/// says on stderr that the test was skipped.
pub fn python_grpc_available() -> bool {
    const REQUIREMENTS: &str = "clients/python/requirements.txt";
    let why = match Command::new("python3").args(["-c", "import grpc, grpc_tools"]).output() {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        Err(e) => format!("running python3: {e}"),
    };
    skip_unless_ci(&format!(
        "python3 cannot import grpc and grpc_tools ({why}); install them: python3 -m pip install -r {REQUIREMENTS}"
    ));
    false
}

/// A test that cannot run here because a tool is missing: under CI (`CI` set,
/// as .ci/run does, which installs every such tool) that is a failure; elsewhere
/// it says that the test was skipped, and the caller returns.
///
/// The line goes straight to the terminal's stderr, past the test harness's
/// capture (which keeps `eprintln!` of a passing test out of sight), so `cargo
/// test` shows `skipped: …` beside the test's `ok`.
#[track_caller]
pub fn skip_unless_ci(why: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{why} (CI must provide it: see .ci/run)");
    }
    say_skipped(why);
}

/// Says, where the person running `cargo test` sees it, that (part of) a test was
/// skipped: for optional checks, which CI need not run either.
pub fn say_skipped(why: &str) {
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {why}");
}

/// A copy of vaultctl that every uid can execute (the target dir may not be
/// reachable), in a 0755 temp dir that lives as long as the returned guard.
pub fn vaultctl_for_everyone() -> (TempDir, PathBuf) {
    let bin = tempfile::Builder::new().prefix("vault-e2e-bin-").tempdir().expect("creating a temp dir");
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
    let vaultctl = bin.path().join("vaultctl");
    std::fs::copy(&bins().vaultctl, &vaultctl).expect("copying vaultctl");
    wait_for("the copy to run", || Command::new(&vaultctl).arg("--version").output().ok());
    (bin, vaultctl)
}

/// Whether the tests run as root (the peer-uid and ownership tests need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn error_contract_is_checked() {
        let good = Output { code: Some(3), stdout: vec![], stderr: "vaultctl: not found\n".into() };
        assert_eq!(good.error(3), "not found");
        for bad in [
            Output { code: Some(3), stdout: vec![], stderr: "vaultctl: a\nb\n".into() },
            Output { code: Some(3), stdout: vec![], stderr: "error: x\n".into() },
            Output { code: Some(3), stdout: b"x".to_vec(), stderr: "vaultctl: x\n".into() },
            Output { code: Some(1), stdout: vec![], stderr: "vaultctl: x\n".into() },
        ] {
            assert!(std::panic::catch_unwind(|| bad.error(3).len()).is_err(), "{bad:?}");
        }
    }
}
