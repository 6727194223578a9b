//! Callers as other uids, with both sockets reachable by everyone on the
//! filesystem (the agent socket 0666 by config, the admin socket chmod 0666 by
//! mistake): the admin socket refuses them; the agent socket serves exactly what a
//! matching, enabled client was granted. Needs root to run as other uids.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use vault_tests::{Daemon, Options, Output, bins, is_root, run};

const NOBODY: u32 = 65534;

fn chmod(path: &std::path::Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A copy of vaultctl that uid 65534 can execute (the target dir may not be reachable).
fn vaultctl_for_everyone() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("vault-e2e-bin-").tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let copy = dir.path().join("vaultctl");
    fs::copy(&bins().vaultctl, &copy).unwrap();
    chmod(&copy, 0o755);
    (dir, copy)
}

#[test]
fn other_uids_are_refused_on_both_sockets() {
    if !is_root() {
        vault_tests::skip_unless_ci("needs root (run as root, as CI does)");
        return;
    }
    let config = "agent_socket_mode = \"0666\"\n".to_owned();
    let d = Daemon::start_with(Options { config: Some(config), ..Options::default() });
    d.init();
    d.put("telegram", b"123:telegram-token");
    chmod(d.dir.path(), 0o755);
    chmod(&d.admin_socket, 0o666);
    assert_eq!(fs::metadata(&d.agent_socket).unwrap().permissions().mode() & 0o777, 0o666);
    let (_bin_dir, vaultctl) = vaultctl_for_everyone();

    let call = |uid: Option<u32>, args: &[&str]| -> Output {
        let mut cmd = std::process::Command::new(&vaultctl);
        cmd.args(args).env("VAULT_SOCKET", &d.agent_socket).env("VAULT_ADMIN_SOCKET", &d.admin_socket);
        cmd.env_remove("VAULT_ENV").current_dir("/");
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        run(cmd, b"")
    };

    // No client for this uid: the read looks like "not found", the admin calls are refused.
    let out = call(Some(NOBODY), &["get", "telegram"]);
    assert!(out.error(3).contains("not found"), "{out:?}");
    let calls: [&[&str]; 4] = [&["status"], &["show", "--reveal", "telegram"], &["list"], &["seal"]];
    for args in calls {
        let out = call(Some(NOBODY), args);
        assert!(!out.stderr.contains("123:telegram-token"), "{}", out.stderr);
        // Denied (3) with one line, not "unreachable": the caller learns it was refused.
        let message = out.error(3);
        assert!(message.contains("permission denied"), "uid {NOBODY} {args:?}: {message}");
    }
    let log = d.log();
    let refused =
        log.lines().any(|l| l.contains("request refused") && l.contains("socket=admin") && l.contains("65534"));
    assert!(refused, "expected a refusal of uid 65534 on the admin socket in the log:\n{log}");

    // The same binary as the owner: everything works, and nothing was sealed.
    assert_eq!(call(None, &["get", "telegram"]).ok().stdout, b"123:telegram-token");
    let status = call(None, &["--json", "status"]).ok().json();
    assert_eq!(status["sealed"], false, "{status}");
}

/// ARCHITECTURE §5 end to end: the same program as uid A (granted) reads prod/telegram,
/// as uid B it gets the documented denial, and after `client disable` A is denied
/// on its very next call.
#[test]
fn a_granted_uid_reads_another_is_denied_and_disable_takes_effect_at_once() {
    if !is_root() {
        vault_tests::skip_unless_ci("needs root (run as root, as CI does)");
        return;
    }
    const A: u32 = 65534;
    const B: u32 = 65533;
    let d = Daemon::start_with(Options { config: Some("agent_socket_mode = \"0666\"\n".into()), ..Options::default() });
    d.init();
    d.ctl(&["--env", "prod", "put", "telegram"], b"123:prod-token").ok();
    d.ctl(&["--env", "prod", "put", "openai"], b"sk-prod").ok();
    chmod(d.dir.path(), 0o755);
    let (_bin_dir, vaultctl) = vaultctl_for_everyone();
    let get = |uid: u32, name: &str| -> Output {
        let mut cmd = std::process::Command::new(&vaultctl);
        cmd.args(["--env", "prod", "get", name]).env("VAULT_SOCKET", &d.agent_socket).current_dir("/");
        cmd.uid(uid).gid(uid);
        run(cmd, b"")
    };
    d.ctl(&["client", "add", "bot", "--uid", &A.to_string(), "--allow", "prod/telegram"], b"").ok();

    assert_eq!(get(A, "telegram").ok().stdout, b"123:prod-token");
    let not_granted = get(A, "openai");
    let missing = get(A, "nothere");
    assert_eq!(not_granted.error(3).replace("openai", "X"), missing.error(3).replace("nothere", "X"), "same answer");
    assert!(get(B, "telegram").error(3).contains("not found"));

    d.ctl(&["client", "disable", "bot"], b"").ok();
    get(A, "telegram").error(3);
    d.ctl(&["client", "enable", "bot"], b"").ok();
    assert_eq!(get(A, "telegram").ok().stdout, b"123:prod-token");

    let reads = d.ctl(&["--json", "audit", "query", "--type", "secret.read", "--limit", "0"], b"").ok().json();
    let seen: Vec<String> = reads
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["actor"]["uid"],
                e["outcome"].as_str().unwrap(),
                e["actor"]["client"].as_str().unwrap_or("-")
            )
        })
        .collect();
    let want = [
        format!("{A} ok bot"),
        format!("{A} denied -"),
        format!("{A} denied -"),
        format!("{B} denied -"),
        format!("{A} denied -"),
        format!("{A} ok bot"),
    ];
    assert_eq!(seen, want, "{reads:#}");
    assert!(d.ctl(&["audit", "verify"], b"").ok().text().contains("intact"));
}

/// A client pinned to an executable's path and content: the real binary at that
/// path matches; the same binary with another pinned hash, or another path, does not.
#[test]
fn executable_path_and_hash_selectors() {
    if !is_root() {
        vault_tests::skip_unless_ci("needs root (run as root, as CI does)");
        return;
    }
    const A: u32 = 65534;
    let d = Daemon::start_with(Options { config: Some("agent_socket_mode = \"0666\"\n".into()), ..Options::default() });
    d.init();
    d.ctl(&["--env", "prod", "put", "telegram"], b"123:prod-token").ok();
    chmod(d.dir.path(), 0o755);
    let (_bin_dir, vaultctl) = vaultctl_for_everyone();
    let sum = std::process::Command::new("sha256sum").arg(&vaultctl).output().unwrap();
    let sha = String::from_utf8(sum.stdout).unwrap().split_whitespace().next().unwrap().to_owned();
    let exe = vaultctl.to_str().unwrap();
    let get = || {
        let mut cmd = std::process::Command::new(&vaultctl);
        cmd.args(["--env", "prod", "get", "telegram"]).env("VAULT_SOCKET", &d.agent_socket).current_dir("/");
        cmd.uid(A).gid(A);
        run(cmd, b"")
    };
    let add = |args: &[&str]| {
        let mut all = vec!["client", "add", "bot", "--uid", "65534", "--allow", "prod/telegram"];
        all.extend_from_slice(args);
        d.ctl(&all, b"").ok();
    };
    let zeros = "0".repeat(64);
    let cases: [(&str, Vec<&str>, bool); 4] = [
        ("path and hash", vec!["--exe", exe, "--exe-sha256", &sha], true),
        ("hash of something else", vec!["--exe", exe, "--exe-sha256", &zeros], false),
        ("another path", vec!["--exe", "/usr/bin/false"], false),
        ("hash alone", vec!["--exe-sha256", &sha], true),
    ];
    for (what, args, allowed) in cases {
        add(&args);
        let out = get();
        if allowed {
            assert_eq!(out.ok().stdout, b"123:prod-token", "{what}");
        } else {
            assert!(out.error(3).contains("not found"), "{what}");
        }
        d.ctl(&["client", "rm", "bot"], b"").ok();
    }
    let bad = d.ctl(&["client", "add", "bot", "--uid", "1", "--exe-sha256", "xyz"], b"");
    assert!(bad.error(2).contains("executable hash"), "{bad:?}");
}
