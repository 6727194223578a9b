//! The rotator hook protocol (`--rotator exec:PATH`, README "Rotation hooks").
//!
//! One run of the program per step, with the step's name in `VAULTD_STEP`:
//! - `create`: stdin is the current value; stdout is the new value, one line of
//!   printable text (a trailing newline is dropped).
//! - `test`: stdin is the new (pending) value; exit 0 if it works.
//! - `revoke-old`: stdin is a value to revoke at the provider (the previous one,
//!   once its grace period ends, or a new one that failed its test).
//!
//! Values never travel on argv. The hook is opened and checked once per run
//! ([`open_checked`]) and executed from that descriptor, so a rename cannot
//! swap in another program between the check and the exec. Each run gets a
//! cleared environment (only `PATH` and the `VAULTD_*` variables below), no
//! descriptor of vaultd's besides its three pipes (a script also gets itself as
//! `/dev/fd/N`, for its interpreter), `/` as its directory, its own process
//! group (killed whole on timeout), hard rlimits on memory, CPU seconds and
//! processes, no core dumps, and SIGKILL if vaultd dies. The last line of its
//! stderr becomes part of the error message (so it must not carry secrets; it is
//! dropped when it contains the value).

use super::RotationConfig;
use crate::crypto::SecretBytes;
use crate::sys::{ChildLimits, confine_child, exec_descriptor};
use rustix::fs::{CWD, FileType, Mode, OFlags, openat};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Create,
    Test,
    RevokeOld,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Create => "create",
            Step::Test => "test",
            Step::RevokeOld => "revoke-old",
        }
    }
}

/// What the hook is told about the secret (never its value: that is on stdin).
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub env: &'a str,
    pub name: &'a str,
    pub provider: &'a str,
    /// The version the step is about: the one being created, tested or revoked.
    pub version: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook {path}: {problem}; refusing to run it")]
    Unsafe { path: PathBuf, problem: String },
    #[error("hook {path} could not be started: {source}")]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("hook {step} step timed out after {}", humantime::format_duration(*.after))]
    Timeout { step: &'static str, after: Duration },
    #[error("hook {step} step exited with status {code}{stderr}")]
    Exit { step: &'static str, code: i32, stderr: String },
    #[error("hook {step} step was killed by signal {signal}{hint}{stderr}")]
    Signal { step: &'static str, signal: i32, hint: &'static str, stderr: String },
    #[error("hook {step} step printed {what}")]
    Garbage { step: &'static str, what: String },
    #[error("hook {step} step: {source}")]
    Io { step: &'static str, source: std::io::Error },
}

/// The only variable a hook inherits besides its own `VAULTD_*` ones.
const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Stderr kept per run: enough for a message, bounded whatever the hook prints.
const STDERR_CAP: u64 = 4096;

/// Runs one step of the hook at `path`, feeding `input` on stdin. Returns what it
/// printed (the new value) for `create`, `None` for the other steps.
///
/// Call it from an async task, not a blocking-pool thread: the child's death
/// signal follows the thread that spawned it, and pool threads come and go.
pub async fn run(
    path: &Path,
    step: Step,
    context: &Context<'_>,
    input: &SecretBytes,
    config: &RotationConfig,
) -> Result<Option<SecretBytes>, HookError> {
    let hook = open_checked(path)?;
    let spawn_error = |source| HookError::Spawn { path: path.into(), source };
    let env = [
        ("PATH", HOOK_PATH.to_owned()),
        ("VAULTD_STEP", step.as_str().to_owned()),
        ("VAULTD_SECRET", format!("{}/{}", context.env, context.name)),
        ("VAULTD_ENV", context.env.to_owned()),
        ("VAULTD_NAME", context.name.to_owned()),
        ("VAULTD_PROVIDER", context.provider.to_owned()),
        ("VAULTD_VERSION", context.version.to_string()),
    ];
    // The path is argv[0] and the name in messages; what runs is `hook`.
    let mut cmd = tokio::process::Command::new(path);
    cmd.current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    confine_child(
        &mut cmd,
        ChildLimits {
            memory_bytes: config.hook_memory_mib.saturating_mul(1024 * 1024),
            cpu_secs: config.hook_cpu_secs,
            processes: config.hook_processes,
        },
    );
    exec_descriptor(&mut cmd, hook, &path.to_string_lossy(), &env).map_err(spawn_error)?;
    let mut child = cmd.spawn().map_err(spawn_error)?;
    let group = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32));
    let kill_group = || {
        if let Some(group) = group {
            // Also reaps whatever the hook left running in the background.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    };
    let step_name = step.as_str();
    let io = |source| HookError::Io { step: step_name, source };

    let (Some(mut stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        kill_group();
        return Err(io(std::io::Error::other("no pipes to the hook")));
    };
    let input = Zeroizing::new(input.expose().to_vec());
    let exchange = async {
        let feed = async {
            // A hook that exits without reading its stdin is fine: ignore EPIPE.
            let _ = stdin.write_all(&input).await;
            drop(stdin);
        };
        let mut out = Zeroizing::new(Vec::new());
        // A careless hook may print the value on stderr too.
        let mut err = Zeroizing::new(Vec::new());
        let (mut stdout, mut stderr) = (stdout.take(vault_proto::MAX_VALUE_LEN as u64 + 2), stderr.take(STDERR_CAP));
        let read_out = stdout.read_to_end(&mut out);
        let read_err = stderr.read_to_end(&mut err);
        let ((), out_len, err_len) = tokio::join!(feed, read_out, read_err);
        out_len.map_err(io)?;
        err_len.map_err(io)?;
        if out.len() > vault_proto::MAX_VALUE_LEN + 1 {
            return Ok((None, out, err));
        }
        let status = child.wait().await.map_err(io)?;
        Ok::<_, HookError>((Some(status), out, err))
    };
    let outcome = tokio::time::timeout(config.hook_timeout, exchange).await;
    kill_group();
    let (status, mut out, err) = match outcome {
        Err(_) => return Err(HookError::Timeout { step: step_name, after: config.hook_timeout }),
        Ok(result) => result?,
    };
    let Some(status) = status else {
        return Err(HookError::Garbage {
            step: step_name,
            what: format!("more than {} bytes", vault_proto::MAX_VALUE_LEN),
        });
    };
    let stderr = last_line(&err, &[input.as_slice(), out.as_slice()]);
    if let Some(signal) = status.signal() {
        let hint = match signal {
            libc::SIGXCPU => " (its CPU time limit)",
            libc::SIGKILL => " (killed: a limit, or vaultd's timeout)",
            libc::SIGSEGV | libc::SIGBUS | libc::SIGABRT => " (out of memory under its limit?)",
            _ => "",
        };
        return Err(HookError::Signal { step: step_name, signal, hint, stderr });
    }
    if !status.success() {
        return Err(HookError::Exit { step: step_name, code: status.code().unwrap_or(-1), stderr });
    }
    if step != Step::Create {
        return Ok(None);
    }
    if out.last() == Some(&b'\n') {
        out.pop();
    }
    let garbage = |what: &str| Err(HookError::Garbage { step: step_name, what: what.into() });
    if out.is_empty() {
        return garbage("no value on stdout");
    }
    if out.contains(&b'\n') {
        return garbage("more than one line on stdout (the new value must be one line)");
    }
    if out.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return garbage("control characters on stdout (the new value must be printable text)");
    }
    if out.len() > vault_proto::MAX_VALUE_LEN {
        return garbage(&format!("more than {} bytes", vault_proto::MAX_VALUE_LEN));
    }
    Ok(Some(SecretBytes::new(std::mem::take(&mut *out))))
}

/// A hook runs with vaultd's privileges: refuse one that someone else could have
/// replaced. See [`open_checked`].
pub fn check_safe(path: &Path) -> Result<(), HookError> {
    open_checked(path).map(drop)
}

/// Opens the hook at `path` to be run by descriptor, once only root or vaultd's
/// user can have put it there. From `/` down, each directory is opened relative
/// to the one above (`O_PATH|O_NOFOLLOW`) and checked with `fstat` on what was
/// opened: owned by root or vaultd's user and writable by neither group nor
/// others (a root-owned sticky directory such as `/tmp` is fine: there nobody
/// else can rename or remove what root or vaultd put in it). A symlink anywhere
/// in the path is refused, so a rename can never make one directory stand for
/// another. The file must be a regular, executable file with the same owners
/// and no group or other write bit. What is checked is what [`run`] executes.
pub fn open_checked(path: &Path) -> Result<OwnedFd, HookError> {
    let unsafe_ = |problem: String| HookError::Unsafe { path: path.into(), problem };
    let mut components = path.components();
    if components.next() != Some(Component::RootDir) {
        return Err(unsafe_("not an absolute path".into()));
    }
    let names = components
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(unsafe_("the path has a '..' in it".into())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some((file_name, dir_names)) = names.split_last() else {
        return Err(unsafe_("not a regular file".into()));
    };
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut shown = PathBuf::from("/");
    let mut dir = openat(CWD, "/", flags, Mode::empty()).map_err(|e| unsafe_(format!("/: {e}")))?;
    let me = rustix::process::geteuid().as_raw();
    check(&dir, &shown, me, Kind::Directory).map_err(unsafe_)?;
    for name in dir_names {
        shown.push(name);
        dir = openat(&dir, *name, flags, Mode::empty()).map_err(|e| unsafe_(format!("{}: {e}", shown.display())))?;
        check(&dir, &shown, me, Kind::Directory).map_err(unsafe_)?;
    }
    shown.push(file_name);
    let file = openat(&dir, *file_name, flags, Mode::empty()).map_err(|e| unsafe_(e.to_string()))?;
    check(&file, &shown, me, Kind::File).map_err(unsafe_)?;
    Ok(file)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Directory,
    File,
}

/// What is wrong with the directory or hook file open at `fd` (named `shown`)
/// for running a hook as uid `me`, if anything.
fn check(fd: &OwnedFd, shown: &Path, me: u32, kind: Kind) -> Result<(), String> {
    let stat = rustix::fs::fstat(fd).map_err(|e| format!("{}: {e}", shown.display()))?;
    let mode = stat.st_mode & 0o7777;
    let what = match kind {
        Kind::Directory => format!("directory {} ", shown.display()),
        Kind::File => String::new(),
    };
    match (FileType::from_raw_mode(stat.st_mode), kind) {
        (FileType::Symlink, _) => return Err(format!("{} is a symlink", shown.display())),
        (FileType::Directory, Kind::Directory) | (FileType::RegularFile, Kind::File) => {}
        (_, Kind::Directory) => return Err(format!("{} is not a directory", shown.display())),
        (_, Kind::File) => return Err("not a regular file".into()),
    }
    if kind == Kind::File && mode & 0o111 == 0 {
        return Err("not executable".into());
    }
    let sticky_root = kind == Kind::Directory && mode & 0o1000 != 0 && stat.st_uid == 0;
    if mode & 0o022 != 0 && !sticky_root {
        return Err(format!("{what}is writable by group or others (mode {mode:04o})"));
    }
    if stat.st_uid != 0 && stat.st_uid != me {
        return Err(format!("{what}owned by uid {}, not root or vaultd's user", stat.st_uid));
    }
    Ok(())
}

/// `: LINE` for the last non-empty stderr line (printable, at most 200
/// characters), or nothing if there is none or it contains one of `secrets`.
fn last_line(stderr: &[u8], secrets: &[&[u8]]) -> String {
    let Some(line) = stderr.split(|&b| b == b'\n').rev().find(|l| !l.iter().all(u8::is_ascii_whitespace)) else {
        return String::new();
    };
    if secrets.iter().any(|s| !s.is_empty() && line.windows(s.len()).any(|w| w == *s)) {
        return ": (its stderr mentioned the value; not shown)".into();
    }
    let text: String =
        String::from_utf8_lossy(line).trim().chars().map(|c| if c.is_control() { '?' } else { c }).take(200).collect();
    format!(": {text}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn hook(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("hook");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        path
    }

    fn config() -> RotationConfig {
        RotationConfig { hook_timeout: Duration::from_secs(5), ..RotationConfig::default() }
    }

    async fn create(path: &Path, config: &RotationConfig) -> Result<Option<SecretBytes>, HookError> {
        let context = Context { env: "prod", name: "telegram", provider: "telegram", version: 4 };
        run(path, Step::Create, &context, &SecretBytes::new(b"old-value".to_vec()), config).await
    }

    #[tokio::test]
    async fn create_reads_the_old_value_and_prints_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = hook(
            dir.path(),
            r#"[ "$VAULTD_STEP" = create ] || exit 9
[ "$VAULTD_SECRET" = prod/telegram ] && [ "$VAULTD_VERSION" = 4 ] || exit 8
[ -z "$HOME" ] || exit 7
old=$(cat); echo "new-after-$old""#,
        );
        let value = create(&path, &config()).await.unwrap().unwrap();
        assert_eq!(value.expose(), b"new-after-old-value");
    }

    #[tokio::test]
    async fn failures_are_named_and_never_echo_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&str, &str)] = &[
            ("echo 'provider said no' >&2; exit 3", "exited with status 3: provider said no"),
            ("cat >&2; exit 1", "exited with status 1: (its stderr mentioned the value; not shown)"),
            ("true", "printed no value on stdout"),
            ("printf 'a\\nb\\n'", "more than one line"),
            ("printf 'a\\tb'", "control characters"),
            ("head -c 70000 /dev/zero | tr '\\0' a", "more than 65536 bytes"),
            ("kill -9 $$", "killed by signal 9"),
        ];
        for (body, expected) in cases {
            let err = create(&hook(dir.path(), body), &config()).await.unwrap_err().to_string();
            assert!(err.contains(expected), "{body}: {err}");
            assert!(!err.contains("old-value"), "{body}: {err}");
        }
    }

    #[tokio::test]
    async fn a_hanging_hook_and_its_children_are_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child-alive");
        let path = hook(dir.path(), &format!("(sleep 2; touch {}) & sleep 60", marker.display()));
        let config = RotationConfig { hook_timeout: Duration::from_millis(300), ..config() };
        let started = std::time::Instant::now();
        let err = create(&path, &config).await.unwrap_err().to_string();
        assert!(err.contains("timed out after 300ms"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "the hook's background child outlived the timeout");
    }

    #[tokio::test]
    async fn the_memory_limit_holds() {
        let dir = tempfile::tempdir().unwrap();
        // 64 MiB of address space is too little for a 256 MiB buffer.
        let path = hook(dir.path(), "python3 -c 'b = bytearray(256 * 1024 * 1024)' || exit 42; echo allocated");
        let config = RotationConfig { hook_memory_mib: 64, ..config() };
        let err = create(&path, &config).await.unwrap_err().to_string();
        assert!(err.contains("exited with status 42"), "{err}");
    }

    #[test]
    fn refuses_hooks_others_could_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = hook(dir.path(), "true");
        check_safe(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o722)).unwrap();
        assert!(check_safe(&path).unwrap_err().to_string().contains("writable by group or others"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_safe(&path).unwrap_err().to_string().contains("not executable"));
        assert!(check_safe(&dir.path().join("missing")).is_err());
        assert!(check_safe(dir.path()).unwrap_err().to_string().contains("not a regular file"));
        assert!(check_safe(Path::new("hook")).unwrap_err().to_string().contains("not an absolute path"));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(check_safe(&link).unwrap_err().to_string().contains(&format!("{} is a symlink", link.display())));
        let above = dir.path().join("..").join(dir.path().file_name().unwrap()).join("hook");
        assert!(check_safe(&above).unwrap_err().to_string().contains("'..'"));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
        let err = check_safe(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("directory {} is writable by group or others (mode 0770)", dir.path().display()))
        );
    }

    #[tokio::test]
    async fn a_binary_hook_runs_from_its_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uname");
        std::fs::copy("/bin/uname", &path).unwrap();
        let value = create(&path, &config()).await.unwrap().unwrap();
        assert_eq!(value.expose(), b"Linux");
    }
}
