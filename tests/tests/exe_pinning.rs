//! Executable selectors (`client add --exe`, `--exe-sha256`) against the three
//! bypasses of issue 19, each scripted as an agent of another uid would run it:
//! (a) connect, hand the connection to a relay child, exec the pinned binary;
//! (b) bind-mount another binary over the pinned path in a mount namespace of
//! one's own; (c) patch a hash-pinned binary in place and put its mtime back.
//! Each is refused, audited as a denial naming why, and the pinned binary itself
//! still reads. Needs root to run as other uids.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use vault_tests::{ChildGuard, Daemon, Options, Output, bins, example, is_root, path_str, run, wait_for};

/// The agent's uid.
const A: u32 = 65534;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A vault with `prod/telegram`, its agent socket open to every uid.
fn daemon() -> Daemon {
    let d = Daemon::start_with(Options { config: Some("agent_socket_mode = \"0666\"\n".into()), ..Options::default() });
    d.init();
    d.ctl(&["--env", "prod", "put", "telegram"], b"123:prod-token").ok();
    chmod(d.dir.path(), 0o755);
    d
}

/// Copies of programs that uid A can run (the target dir may not be reachable),
/// each its own file: `pinned` and `other` are both vaultctl, but two inodes.
struct Programs {
    dir: tempfile::TempDir,
}

impl Programs {
    fn new() -> Programs {
        let dir = tempfile::Builder::new().prefix("vault-e2e-bin-").tempdir().unwrap();
        chmod(dir.path(), 0o755);
        let programs = Programs { dir };
        for (name, from) in [("pinned", &bins().vaultctl), ("other", &bins().vaultctl)] {
            programs.copy(name, from);
        }
        programs
    }

    fn copy(&self, name: &str, from: &Path) -> PathBuf {
        let to = self.path(name);
        std::fs::copy(from, &to).unwrap();
        chmod(&to, 0o755);
        to
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Unless the tests run as root (then `None`: skipped): a vault, the programs,
/// and client `bot` for uid A with the selector `pin` gives (`--exe PATH` or
/// `--exe-sha256 HEX`), which the pinned program matches: it reads.
fn pinned_client(pin: impl FnOnce(&Programs) -> [String; 2]) -> Option<(Daemon, Programs)> {
    if !is_root() {
        eprintln!("skipped: needs root (run as root, as CI does)");
        return None;
    }
    let d = daemon();
    let programs = Programs::new();
    let [flag, value] = pin(&programs);
    d.ctl(&["client", "add", "bot", "--uid", &A.to_string(), &flag, &value, "--allow", "prod/telegram"], b"").ok();
    assert_reads(&programs.path("pinned"), &d);
    Some((d, programs))
}

#[track_caller]
fn assert_reads(program: &Path, d: &Daemon) {
    assert_eq!(get_as_agent(program, &d.agent_socket).ok().stdout, b"123:prod-token", "{} reads", program.display());
}

/// `PROGRAM --env prod get telegram` as uid A through `socket`.
fn get_as_agent(program: &Path, socket: &Path) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(["--env", "prod", "get", "telegram"]).env("VAULT_SOCKET", socket).current_dir("/");
    cmd.uid(A).gid(A);
    run(cmd, b"")
}

/// The reasons of the denied reads in the audit log, oldest first.
fn denials(d: &Daemon) -> Vec<String> {
    d.audit_query(&["--type", "secret.read"])
        .iter()
        .filter(|e| e["outcome"] == "denied")
        .map(|e| e["detail"]["reason"].as_str().unwrap_or("-").to_owned())
        .collect()
}

/// `out` is the documented denial, and the audit log's newest denied read says `reason`.
#[track_caller]
fn assert_refused(out: &Output, d: &Daemon, reason: &str) {
    assert!(out.error(3).contains("not found"), "{out:?}");
    // Polled: a query can miss a batch the journal importer is committing.
    let what = format!("a denied read with the reason {reason:?} in the audit log");
    wait_for(&what, || denials(d).last().filter(|r| *r == reason).map(drop));
}

/// (a) The process that connected execs the pinned binary after vaultd
/// accepted; the relay child it handed the connection to reads through it.
#[test]
fn a_relay_of_a_process_that_exec_d_the_pinned_binary_is_refused() {
    let pin = |p: &Programs| ["--exe".into(), path_str(&p.path("pinned")).into()];
    let Some((d, programs)) = pinned_client(pin) else { return };
    let (pinned, other) = (programs.path("pinned"), programs.path("other"));
    let relay = programs.copy("relay", &example("vault-tests", "relay"));
    let relay_dir = d.dir.path().join("relay");
    std::fs::create_dir(&relay_dir).unwrap();
    rustix::fs::chown(&relay_dir, Some(rustix::process::Uid::from_raw(A)), None).unwrap();
    let listen = relay_dir.join("relay.sock");
    // The pinned binary the connecting process becomes: a watch, which keeps it running.
    let mut cmd = Command::new(&relay);
    cmd.arg(&d.agent_socket).arg(&listen).arg("--").arg(&pinned).args(["--env", "prod", "watch", "telegram"]);
    cmd.env("VAULT_SOCKET", &d.agent_socket).current_dir("/").uid(A).gid(A);
    cmd.stdout(std::process::Stdio::null());
    let attacker = ChildGuard(Some(vault_tests::spawn(&mut cmd)));
    let pid = attacker.0.as_ref().unwrap().id();
    wait_for("the attacker to exec the pinned binary with its relay listening", || {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        (exe == pinned && listen.exists()).then_some(())
    });
    let out = get_as_agent(&other, &listen);
    assert_refused(&out, &d, "executable changed since connect");
    assert_reads(&pinned, &d);
}

/// (b) Another binary bind-mounted over the pinned path in a mount namespace of
/// the agent's own: by an unprivileged agent in a user namespace of its own
/// (`unshare -Urm`), and by root's `unshare -m` for an agent of uid A.
#[test]
fn another_binary_mounted_over_the_pinned_path_is_refused() {
    let pin = |p: &Programs| ["--exe".into(), path_str(&p.path("pinned")).into()];
    let Some((d, programs)) = pinned_client(pin) else { return };
    let (pinned, other) = (programs.path("pinned"), programs.path("other"));
    let attack = |unshare: &[&str], run_as: &[&str], as_agent: bool| {
        let mut cmd = Command::new("unshare");
        cmd.args(unshare).args(["sh", "-c", "mount --bind \"$1\" \"$2\" && shift 2 && exec \"$@\"", "sh"]);
        cmd.arg(&other).arg(&pinned).args(run_as).arg(&pinned).args(["--env", "prod", "get", "telegram"]);
        cmd.env("VAULT_SOCKET", &d.agent_socket).current_dir("/");
        if as_agent {
            cmd.uid(A).gid(A);
        }
        run(cmd, b"")
    };
    let out = attack(&["-Urm"], &[], true);
    assert_refused(&out, &d, "executable in another user namespace");
    let uid = A.to_string();
    let setpriv = ["setpriv", "--reuid", &uid, "--regid", &uid, "--clear-groups"];
    let out = attack(&["-m"], &setpriv, false);
    assert_refused(&out, &d, "executable differs");
    assert_reads(&pinned, &d);
}

/// (c) The agent owns a hash-pinned copy, patches it in place (same inode, same
/// size) after vaultd hashed it, and puts its mtime back.
#[test]
fn a_hash_pinned_binary_patched_in_place_is_refused() {
    let pin = |p: &Programs| {
        rustix::fs::chown(p.path("pinned"), Some(rustix::process::Uid::from_raw(A)), None).unwrap();
        let sum = Command::new("sha256sum").arg(p.path("pinned")).output().unwrap();
        let sha = String::from_utf8(sum.stdout).unwrap().split_whitespace().next().unwrap().to_owned();
        ["--exe-sha256".into(), sha]
    };
    let Some((d, programs)) = pinned_client(pin) else { return };
    let pinned = programs.path("pinned");

    let bytes = std::fs::read(&pinned).unwrap();
    let text = b"manage a vaultd secrets vault";
    let at = bytes.windows(text.len()).position(|w| w == text).expect("vaultctl's about text");
    let before = std::fs::metadata(&pinned).unwrap();
    let mtime = format!("@{}.{:09}", before.mtime(), before.mtime_nsec());
    let patch = "printf M | dd of=\"$1\" bs=1 seek=\"$2\" conv=notrunc status=none && touch -d \"$3\" \"$1\"";
    let mut cmd = Command::new("sh");
    cmd.args(["-c", patch, "sh"]).arg(&pinned).args([at.to_string(), mtime]).uid(A).gid(A);
    run(cmd, b"").ok();
    assert_eq!(std::fs::metadata(&pinned).unwrap().modified().unwrap(), before.modified().unwrap(), "mtime put back");
    assert_eq!(std::fs::metadata(&pinned).unwrap().len(), bytes.len() as u64);

    let out = get_as_agent(&pinned, &d.agent_socket);
    assert_refused(&out, &d, "executable hash differs");
    std::fs::write(&pinned, &bytes).unwrap();
    assert_reads(&pinned, &d);
}

/// vaultd as a dedicated user, as deploy/systemd runs it: without CAP_SYS_PTRACE
/// it cannot read the executable of an agent of another uid, `status` says so,
/// `client add --exe` warns, and the agent is refused. Granted the capability as
/// README "Executable selectors" says (an ambient capability: the systemd
/// drop-in's AmbientCapabilities=, here through setpriv), the agent reads, and a
/// hook vaultd runs does not inherit the capability.
#[test]
fn exe_selectors_with_vaultd_as_its_own_user() {
    if !is_root() {
        eprintln!("skipped: needs root (run as root, as CI does)");
        return;
    }
    const VAULTD: u32 = 65533;
    for granted in [false, true] {
        let caps = if granted { "--inh-caps=+sys_ptrace --ambient-caps=+sys_ptrace" } else { "" };
        let setpriv = format!("exec setpriv --reuid={VAULTD} --regid={VAULTD} --clear-groups {caps} \"$0\" \"$@\"");
        let mut d = Daemon::new(Options { sh_prelude: Some(setpriv), ..Options::default() });
        let vaultd_user = Some(rustix::process::Uid::from_raw(VAULTD));
        rustix::fs::chown(d.dir.path(), vaultd_user, Some(rustix::process::Gid::from_raw(VAULTD))).unwrap();
        chmod(d.dir.path(), 0o755);
        d.launch();
        d.init();
        chmod(&d.agent_socket, 0o666);
        d.ctl(&["--env", "prod", "put", "telegram"], b"123:prod-token").ok();
        let programs = Programs::new();
        let pinned = programs.path("pinned");

        assert_eq!(d.status()["exe_attestation"], granted, "granted: {granted}");
        let human = d.ctl(&["status"], b"").ok().text();
        let line = if granted { "exe attestation: available\n" } else { "exe attestation: unavailable: " };
        assert!(human.contains(line), "{human}");
        let add = ["client", "add", "bot", "--uid", &A.to_string(), "--exe", path_str(&pinned), "--allow", "prod/*"];
        let added = d.ctl(&add, b"").ok();
        let warned = added.stderr.contains("vaultctl: warning: exe attestation unavailable");
        assert_eq!(warned, !granted, "{added:?}");

        let out = get_as_agent(&pinned, &d.agent_socket);
        if granted {
            assert_eq!(out.ok().stdout, b"123:prod-token", "granted: the agent reads");
        } else {
            assert_refused(&out, &d, "executable unreadable");
            continue;
        }
        let hook = d.dir.path().join("caps-hook");
        let body = "cat > /dev/null; awk '/^Cap(Prm|Eff|Amb)/ { printf \"%s%s \", $1, $2 }' /proc/self/status";
        std::fs::write(&hook, format!("#!/bin/sh\n{body}\n")).unwrap();
        chmod(&hook, 0o755);
        let rotator = format!("exec:{}", hook.display());
        d.ctl(&["--env", "prod", "rotation", "set", "telegram", "--rotator", &rotator], b"").ok();
        d.ctl(&["--env", "prod", "rotate", "telegram"], b"").ok();
        let none = "CapPrm:0000000000000000 CapEff:0000000000000000 CapAmb:0000000000000000";
        let value = get_as_agent(&pinned, &d.agent_socket).ok().stdout;
        assert_eq!(String::from_utf8(value).unwrap().trim(), none, "the hook's capabilities");
    }
}
