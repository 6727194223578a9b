//! The peer-uid check at accept: with both sockets reachable by everyone on the
//! filesystem (the agent socket 0666 by config, the admin socket chmod 0666 by
//! mistake), another uid still gets nothing. Needs root to run as another uid.
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
        eprintln!("skipped: needs root (run as root, as CI does)");
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

    let calls: [&[&str]; 5] =
        [&["get", "telegram"], &["status"], &["show", "--reveal", "telegram"], &["list"], &["seal"]];
    for args in calls {
        let out = call(Some(NOBODY), args);
        assert!(!out.stderr.contains("123:telegram-token"), "{}", out.stderr);
        // Denied (3) with one line, not "unreachable": the caller learns it was refused.
        let message = out.error(3);
        assert!(message.contains("permission denied"), "uid {NOBODY} {args:?}: {message}");
    }
    let log = d.log();
    for socket in ["agent", "admin"] {
        let refused = log
            .lines()
            .any(|l| l.contains("request refused") && l.contains(&format!("socket={socket}")) && l.contains("65534"));
        assert!(refused, "expected a refusal of uid 65534 on the {socket} socket in the log:\n{log}");
    }

    // The same binary as the owner: everything works, and nothing was sealed.
    assert_eq!(call(None, &["get", "telegram"]).ok().stdout, b"123:telegram-token");
    let status = call(None, &["--json", "status"]).ok().json();
    assert_eq!(status["sealed"], false, "{status}");
}
