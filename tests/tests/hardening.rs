//! Memory hygiene of the running process (ARCHITECTURE §3): not dumpable, no core file
//! on a crash, memory locked out of swap where the limits allow and one warning
//! line where they do not. (files.rs checks the umask and the core limit.)
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vault_tests::{ChildGuard, Daemon, Options, is_root, wait_for, wait_until};

const NOBODY: u32 = 65534;

/// A `/proc/PID/status` field's value, e.g. `VmLck` → `"0 kB"`.
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let prefix = format!("{field}:");
    let line = status.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {field} in {status}"));
    line[prefix.len()..].trim().to_owned()
}

/// Options for a vaultd that does not run as root: as uid 65534 when the tests
/// are root (root's /proc files are root's either way, and root holds CAP_IPC_LOCK).
fn not_root(opts: Options) -> Options {
    Options { run_as: is_root().then_some(NOBODY), ..opts }
}

#[test]
fn the_process_is_not_dumpable() {
    // The kernel shows a process's /proc/PID files as owned by root exactly when
    // the process is not dumpable (prctl PR_SET_DUMPABLE 0): then no process of
    // the same user can ptrace it or read its memory through /proc/PID/mem.
    let d = Daemon::start_with(not_root(Options::default()));
    d.init();
    let pid = d.pid();
    let uid: u32 = status_field(pid, "Uid").split_whitespace().next().unwrap().parse().unwrap();
    assert_ne!(uid, 0, "vaultd must run as another user for this check");
    let owner = std::fs::metadata(format!("/proc/{pid}/status")).unwrap().uid();
    assert_eq!(owner, 0, "/proc/{pid}/status is owned by vaultd's uid {uid}: vaultd is dumpable");

    // The control: an ordinary process of the same user owns its /proc files, so
    // the check above tells the two cases apart.
    let mut sleep = Command::new("sleep");
    sleep.arg("30");
    if is_root() {
        sleep.uid(NOBODY).gid(NOBODY);
    }
    let control = ChildGuard(Some(sleep.spawn().unwrap()));
    let control_pid = control.0.as_ref().unwrap().id();
    let control_owner = std::fs::metadata(format!("/proc/{control_pid}/status")).unwrap().uid();
    assert_eq!(control_owner, uid, "a dumpable process of uid {uid} owns its /proc files");
}

/// Files named `core…` in `dir`.
fn core_files(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path());
    entries.filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("core"))).collect()
}

/// Raises the soft core limit as far as the hard one allows (the tests may run
/// with `ulimit -c 0`, which alone would hide a core dump).
const CORE_LIMIT_UP: &str = r#"ulimit -S -c "$(ulimit -H -c)""#;

#[test]
fn sigabrt_kills_vaultd_without_a_core_dump() {
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let suid_dumpable = std::fs::read_to_string("/proc/sys/fs/suid_dumpable").unwrap_or_default();
    let (core_pattern, suid_dumpable) = (core_pattern.trim(), suid_dumpable.trim());

    // The control: an ordinary process in the same conditions (cwd in a temp dir,
    // core limit raised) must dump core here, or this machine cannot show that
    // vaultd does not.
    let control_dir = tempfile::tempdir().unwrap();
    let mut control = Command::new("sh");
    control.args(["-c", &format!("{CORE_LIMIT_UP}; exec sleep 60")]).current_dir(control_dir.path());
    let mut control = ChildGuard(Some(control.spawn().unwrap()));
    let child = control.0.as_ref().unwrap();
    let pid = child.id();
    // Signal `sleep`, not the shell before it raised the limit.
    wait_for("the control to exec sleep", || {
        (std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim() == "sleep").then_some(())
    });
    let status = control.stop_with(rustix::process::Signal::ABORT);
    assert_eq!(status.signal(), Some(6), "the control died of SIGABRT: {status}");
    if !status.core_dumped() && core_files(control_dir.path()).is_empty() {
        eprintln!(
            "skipped: this machine dumps no core even for an ordinary process with the core limit raised \
             (core_pattern {core_pattern:?}, hard core limit may be 0), so vaultd's lack of one proves nothing"
        );
        return;
    }

    // vaultd, started with the core limit raised, initialized (keys in memory).
    let opts = Options { sh_prelude: Some(CORE_LIMIT_UP.into()), ..Options::default() };
    let mut d = Daemon::start_with(opts);
    d.init();
    d.put("telegram", b"123:telegram-token");
    let stopped = d.stop_with(rustix::process::Signal::ABORT);
    assert_eq!(stopped.status.signal(), Some(6), "vaultd died of SIGABRT: {}", stopped.status);
    // The wait status's core flag is the kernel's own word that it wrote a dump,
    // wherever core_pattern sends it. With a file pattern ("core", "core.%p") the
    // file would land in vaultd's cwd, the temp dir, and RLIMIT_CORE 0 alone stops
    // it. With a pipe ("|/usr/lib/systemd/systemd-coredump …") the kernel does not
    // apply RLIMIT_CORE (it hands the limit to the helper): what keeps the memory
    // out of the helper is that vaultd is not dumpable (unless fs.suid_dumpable is
    // 2, which dumps even non-dumpable processes to a pipe — a host setting to avoid).
    assert!(
        !stopped.status.core_dumped(),
        "the kernel dumped vaultd's memory (core_pattern {core_pattern:?}, fs.suid_dumpable {suid_dumpable})"
    );
    let cores = core_files(d.dir.path());
    assert!(cores.is_empty(), "core files in vaultd's cwd: {cores:?} (core_pattern {core_pattern:?})");
}

/// Whether a child shell may raise RLIMIT_MEMLOCK to unlimited here.
fn can_unlimit_memlock() -> bool {
    let mut sh = Command::new("sh");
    sh.args(["-c", "ulimit -l unlimited 2>/dev/null"]);
    let mut child = sh.spawn().unwrap();
    wait_until(&mut child, Instant::now() + Duration::from_secs(10)).is_some_and(|s| s.success())
}

/// Whether this process holds CAP_IPC_LOCK (a vaultd it starts inherits it).
fn has_ipc_lock() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    u64::from_str_radix(eff, 16).unwrap() & (1 << 14) != 0
}

#[test]
fn memory_is_locked_when_the_limit_allows() {
    // Either as the systemd unit sets it up (LimitMEMLOCK=infinity), or as root
    // with CAP_IPC_LOCK, which the limit does not bind.
    let prelude = if can_unlimit_memlock() {
        Some("ulimit -l unlimited".to_owned())
    } else if has_ipc_lock() {
        None
    } else {
        vault_tests::skip_unless_ci("RLIMIT_MEMLOCK cannot be made unlimited here and there is no CAP_IPC_LOCK");
        return;
    };
    let d = Daemon::start_with(Options { sh_prelude: prelude, ..Options::default() });
    d.init();
    d.put("telegram", b"123:telegram-token");
    assert_eq!(d.get("telegram"), b"123:telegram-token");
    let log = d.log();
    assert!(!log.contains("memory not locked"), "{log}");
    let pid = d.pid();
    let locked_kb: u64 = status_field(pid, "VmLck").trim_end_matches(" kB").parse().unwrap();
    assert!(locked_kb > 0, "VmLck is 0");
    // Every mapping is locked (VmFlags `lo`), the heap that holds the keys
    // included, except the kernel's own vDSO pages, which cannot be.
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut name = String::new();
    let mut unlocked = Vec::new();
    let mut saw_heap = false;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let locked = flags.split_whitespace().any(|f| f == "lo");
            saw_heap |= name == "[heap]" && locked;
            if !locked && !["[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]"].contains(&name.as_str()) {
                unlocked.push(name.clone());
            }
        } else if line.split_whitespace().next().is_some_and(|f| f.contains('-') && !f.ends_with(':')) {
            // A mapping's header: `start-end perms offset dev inode [name]`.
            name = line.split_whitespace().nth(5).unwrap_or("[anonymous]").to_owned();
        }
    }
    assert!(unlocked.is_empty(), "mappings not locked: {unlocked:?}");
    assert!(saw_heap, "the heap is mapped and locked");
}

#[test]
fn without_permission_to_lock_memory_vaultd_warns_once_and_serves() {
    if !is_root() && has_ipc_lock() {
        eprintln!("skipped: this non-root test runner holds CAP_IPC_LOCK, so vaultd may always lock");
        return;
    }
    // A 64 KiB limit, soft and hard, and (as uid 65534 when the tests are root) no CAP_IPC_LOCK.
    let opts = not_root(Options { sh_prelude: Some("ulimit -l 64".into()), ..Options::default() });
    let d = Daemon::start_with(opts);
    d.init();
    d.put("telegram", b"123:telegram-token");
    // The owner reads through the admin socket (root is not the owner on the agent socket).
    let shown = d.ctl(&["--json", "show", "--reveal", "telegram"], b"").ok().json();
    assert_eq!(shown["value"], "123:telegram-token", "{shown}");
    let log = d.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("memory not locked")).collect();
    assert_eq!(warnings.len(), 1, "one warning line:\n{log}");
    assert!(warnings[0].contains("WARN") && warnings[0].contains("RLIMIT_MEMLOCK is 64 KiB"), "{}", warnings[0]);
    assert_eq!(status_field(d.pid(), "VmLck"), "0 kB");
}
