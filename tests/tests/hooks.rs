//! Rotation hooks run as vaultd, so what runs must be what vaultd checked, and
//! nothing of vaultd's may leak into it (issue 19): the hook is opened by
//! descriptor, the file and every directory above it checked on what was opened,
//! and that descriptor executed; a hook inherits no agent connection.
#![allow(clippy::unwrap_used)]

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use vault_tests::{ChildGuard, Daemon, Options, example, is_root, path_str};

const OTHER_UID: u32 = 65534;

fn daemon() -> Daemon {
    let config = "[rotation]\nhook_timeout = \"5s\"\n".to_owned();
    let d = Daemon::start_with(Options { config: Some(config), ..Options::default() });
    d.init();
    d
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn write_script(path: &Path, body: &str, mode: u32) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    chmod(path, mode);
}

fn set_rotator(d: &Daemon, name: &str, hook: &Path) -> vault_tests::Output {
    d.ctl(&["rotation", "set", name, "--rotator", &format!("exec:{}", hook.display())], b"")
}

/// `vaultctl watch NAME`, returned once its first line (the value) arrived, so
/// its connection is open and held.
fn watching(d: &Daemon, name: &str) -> ChildGuard {
    let mut cmd = d.ctl_command(&["watch", name]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = vault_tests::spawn(&mut cmd);
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains(name), "{first:?}");
    ChildGuard(Some(child))
}

/// Each socket descriptor of process `pid` with its open flags.
fn sockets_of(pid: u32) -> Vec<(u32, u32)> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    fds.filter_map(|entry| {
        let entry = entry.ok()?;
        std::fs::read_link(entry.path()).ok()?.to_str()?.starts_with("socket:").then_some(())?;
        let fd: u32 = entry.file_name().to_str()?.parse().ok()?;
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
        Some((fd, u32::from_str_radix(flags.trim(), 8).ok()?))
    })
    .collect()
}

/// A hook run while agents hold watches open sees its three pipes and nothing
/// else of vaultd's: a binary hook exactly 0, 1 and 2; a script hook also the
/// descriptor the kernel hands its interpreter (`/dev/fd/N`, the script itself).
#[test]
fn a_hook_inherits_no_agent_connection() {
    let d = daemon();
    d.put("watched", b"w1");
    d.put("fds", b"v1");
    let _watches: Vec<ChildGuard> = (0..3).map(|_| watching(&d, "watched")).collect();
    // vaultd's own sockets (listeners, connections and their duplicates) are all
    // close-on-exec: O_CLOEXEC in the octal `flags:` of /proc/PID/fdinfo.
    let sockets = sockets_of(d.pid());
    assert!(sockets.len() >= 2 + 3, "{sockets:?}");
    let inheritable: Vec<_> = sockets.iter().filter(|(_, flags)| flags & 0o2_000_000 == 0).collect();
    assert!(inheritable.is_empty(), "sockets without close-on-exec: {inheritable:?}");

    let binary = d.dir.path().join("fd_hook");
    std::fs::copy(example("vault-tests", "fd_hook"), &binary).unwrap();
    chmod(&binary, 0o755);
    set_rotator(&d, "fds", &binary).ok();
    d.ctl(&["rotate", "fds"], b"").ok();
    assert_eq!(String::from_utf8(d.get("fds")).unwrap(), "0=pipe 1=pipe 2=pipe", "a binary hook's descriptors");

    let script = d.dir.path().join("fd_hook.sh");
    write_script(&script, &format!("exec {}", path_str(&binary)), 0o700);
    set_rotator(&d, "fds", &script).ok();
    d.ctl(&["rotate", "fds"], b"").ok();
    let seen = String::from_utf8(d.get("fds")).unwrap();
    let fds: Vec<&str> = seen.split(' ').collect();
    assert_eq!(fds[..3], ["0=pipe", "1=pipe", "2=pipe"], "{seen}");
    let extra = &fds[3..];
    assert!(extra.len() <= 1 && extra.iter().all(|fd| fd.ends_with(&format!("={}", script.display()))), "{seen}");
}

/// The attack from issue 19: another user swaps the hook with a program of
/// theirs (renameat2 RENAME_EXCHANGE) in a loop while vaultd rotates. Here the
/// directory is vaultd's, so only the test (root) swaps; what matters is that
/// the file checked is the file run. Each rotation runs the real hook or is
/// refused naming the foreign file's owner; the foreign program never runs.
#[test]
fn a_hook_swapped_in_a_loop_never_runs_the_foreign_program() {
    if !is_root() {
        eprintln!("skipped: needs root (run as root, as CI does)");
        return;
    }
    let d = daemon();
    d.put("swapped", b"v0");
    let hooks = d.dir.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    chmod(&hooks, 0o755);
    let marker = d.dir.path().join("foreign-ran");
    let real = hooks.join("hook");
    write_script(
        &real,
        "cat > /dev/null\n[ \"$VAULTD_STEP\" = create ] && echo \"real-$VAULTD_VERSION\"\nexit 0",
        0o755,
    );
    let foreign = hooks.join("foreign");
    write_script(&foreign, &format!("touch {}\necho foreign", path_str(&marker)), 0o755);
    let other = Some(rustix::process::Uid::from_raw(OTHER_UID));
    rustix::fs::chown(&foreign, other, Some(rustix::process::Gid::from_raw(OTHER_UID))).unwrap();
    set_rotator(&d, "swapped", &real).ok();

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, real, foreign) = (stop.clone(), real.clone(), foreign.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            use rustix::fs::{CWD, RenameFlags, renameat_with};
            while !stop.load(Ordering::Relaxed)
                && renameat_with(CWD, &real, CWD, &foreign, RenameFlags::EXCHANGE).is_ok()
            {
                swaps += 1;
            }
            swaps
        })
    };
    let (mut ran, mut refused) = (0, 0);
    for _ in 0..100 {
        let out = d.ctl(&["rotate", "swapped"], b"");
        if out.code == Some(0) {
            ran += 1;
        } else {
            let err = out.error(1);
            assert!(err.contains(&format!("owned by uid {OTHER_UID}")), "{err}");
            refused += 1;
        }
        assert!(!marker.exists(), "the foreign program ran (after {ran} rotations, {refused} refused)");
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    eprintln!("100 rotations during {swaps} swaps: {ran} ran the real hook, {refused} refused");
    assert!(ran > 0, "the real hook never ran");
    assert!(String::from_utf8(d.get("swapped")).unwrap().starts_with("real-"));
}

/// A hook whose directory (or any directory above it) others could write, or
/// whose path goes through a symlink, is refused when set and when run.
#[test]
fn a_hook_others_could_replace_through_its_directory_is_refused() {
    let d = daemon();
    d.put("guarded", b"v0");
    let hooks = d.dir.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    chmod(&hooks, 0o755);
    let hook = hooks.join("hook");
    write_script(&hook, "cat > /dev/null; echo fresh", 0o700);
    set_rotator(&d, "guarded", &hook).ok();

    for mode in [0o777, 0o775, 0o757] {
        chmod(&hooks, mode);
        let err = d.ctl(&["rotate", "guarded"], b"");
        let why = format!("directory {} is writable by group or others (mode {mode:04o})", hooks.display());
        assert!(err.error(1).contains(&why), "{err:?}");
        assert!(set_rotator(&d, "guarded", &hook).error(2).contains(&why));
    }
    chmod(&hooks, 0o755);
    let link = d.dir.path().join("link");
    std::os::unix::fs::symlink(&hooks, &link).unwrap();
    let err = set_rotator(&d, "guarded", &link.join("hook"));
    assert!(err.error(2).contains(&format!("{} is a symlink", link.display())), "{err:?}");
    assert_eq!(d.get("guarded"), b"v0");
    d.ctl(&["rotate", "guarded"], b"").ok();
    assert_eq!(d.get("guarded"), b"fresh");
}
