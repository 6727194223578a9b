//! Sealing across restarts, unlocking with the right and wrong passphrase, and
//! `init` on a vault that already has one.
#![allow(clippy::unwrap_used)]

use vault_tests::{Daemon, PASSPHRASE, path_str};

#[test]
fn restart_seals_and_the_passphrase_brings_values_back() {
    let mut d = Daemon::initialized();
    let binary: Vec<u8> = (0..=255).rev().collect();
    d.put("telegram", b"v1");
    d.put("telegram", b"123:telegram-token");
    d.put("binary", &binary);
    let status = d.status();
    assert_eq!((status["initialized"].clone(), status["sealed"].clone()), (true.into(), false.into()), "{status}");
    assert_eq!(status["kdf"]["insecure_test_profile"], true, "the harness runs the fast test KDF: {status}");

    d.restart();

    let status = d.status();
    assert_eq!(status["initialized"], true, "{status}");
    assert_eq!(status["sealed"], true, "a restarted vault starts sealed: {status}");
    assert_eq!(status["secrets"], 0, "nothing is counted while sealed: {status}");
    let message = d.ctl(&["get", "telegram"], b"").error(4).to_owned();
    assert!(message.contains("sealed"), "{message}");
    d.ctl(&["put", "other"], b"value").error(4);
    d.ctl(&["show", "telegram"], b"").error(4);
    d.ctl(&["list"], b"").error(4);

    let wrong = d.write_file("wrong-passphrase", b"not the passphrase\n");
    let message = d.ctl(&["unlock", "--passphrase-file", path_str(&wrong)], b"").error(3).to_owned();
    assert!(message.contains("wrong passphrase"), "{message}");
    assert_eq!(d.status()["sealed"], true, "a wrong passphrase must not unlock");
    d.ctl(&["get", "telegram"], b"").error(4);

    // The passphrase without its trailing newline, on stdin: the same passphrase.
    d.ctl(&["unlock", "--passphrase-file", "-"], PASSPHRASE).ok();
    assert_eq!(d.status()["sealed"], false);
    assert_eq!(d.status()["secrets"], 2);
    assert_eq!(d.get("telegram"), b"123:telegram-token");
    assert_eq!(d.get("binary"), binary);
    let versions = d.ctl(&["--json", "versions", "telegram"], b"").ok().json();
    assert_eq!(versions.as_array().unwrap().len(), 2, "{versions}");
}

#[test]
fn wrong_passphrase_on_an_unlocked_vault_changes_nothing() {
    let d = Daemon::initialized();
    d.put("telegram", b"token");
    d.ctl(&["unlock", "--passphrase-file", "-"], b"wrong").error(3);
    assert_eq!(d.status()["sealed"], false);
    assert_eq!(d.get("telegram"), b"token");
}

#[test]
fn seal_then_unlock() {
    let d = Daemon::initialized();
    d.put("telegram", b"token");
    let sealed = d.ctl(&["--json", "seal"], b"").ok().json();
    assert_eq!(sealed["sealed"], true, "{sealed}");
    d.ctl(&["get", "telegram"], b"").error(4);
    d.unlock();
    assert_eq!(d.get("telegram"), b"token");
}

#[test]
fn init_twice_is_refused_and_changes_nothing() {
    let mut d = Daemon::initialized();
    d.put("telegram", b"token");
    let other = d.write_file("other-passphrase", b"another passphrase");
    let init_again = ["init", "--passphrase-file", path_str(&other)];

    let message = d.ctl(&init_again, b"").error(1).to_owned();
    assert!(message.contains("already initialized"), "{message}");
    assert_eq!(d.get("telegram"), b"token");

    // Also while sealed: init must not replace the key hierarchy.
    d.restart();
    let message = d.ctl(&init_again, b"").error(1).to_owned();
    assert!(message.contains("already initialized"), "{message}");
    assert_eq!(d.status()["sealed"], true);
    d.ctl(&["unlock", "--passphrase-file", path_str(&other)], b"").error(3);
    d.unlock();
    assert_eq!(d.get("telegram"), b"token");
}

#[test]
fn passphrase_file_at_startup_unlocks() {
    let mut d = Daemon::initialized();
    d.put("telegram", b"token");
    let stopped = d.stop();
    assert!(stopped.status.success(), "{}", stopped.log);
    let file = d.passphrase_file(PASSPHRASE);
    d.opts.args = vec!["--passphrase-file".into(), file.into()];
    d.launch();
    assert_eq!(d.status()["sealed"], false);
    assert_eq!(d.get("telegram"), b"token");
}

#[test]
fn wrong_passphrase_file_at_startup_is_an_error() {
    let mut d = Daemon::initialized();
    d.stop();
    let file = d.write_file("wrong", b"wrong\n");
    d.opts.args = vec!["--passphrase-file".into(), file.into()];
    let stopped = d.launch_expecting_exit();
    assert_eq!(stopped.status.code(), Some(1), "{}", stopped.log);
    assert!(stopped.log.contains("wrong passphrase"), "{}", stopped.log);
    assert!(!d.admin_socket.exists() && !d.agent_socket.exists(), "no socket left behind");
}

#[test]
fn the_test_kdf_profile_is_refused_without_its_switch() {
    // A vault made with the cheap test profile must not open in a vaultd that was
    // not explicitly told to accept it: the profile cannot be enabled by accident.
    let mut d = Daemon::initialized();
    d.put("telegram", b"token");
    let banner = "VAULTD_INSECURE_TEST_KDF=1";
    assert!(d.log().contains(banner), "the test profile must announce itself:\n{}", d.log());
    d.stop();
    std::fs::remove_file(&d.log_path).unwrap();
    d.opts.fast_kdf = false;
    d.launch();
    assert!(!d.log().contains(banner), "{}", d.log());
    let out = d.ctl(&["unlock", "--passphrase-file", "-"], PASSPHRASE);
    assert!(out.error(1).contains("below the minimum"), "{}", out.stderr);
    assert_eq!(d.status()["sealed"], true);

    d.stop();
    d.opts.fast_kdf = true;
    d.launch();
    d.unlock();
    assert_eq!(d.get("telegram"), b"token");
}

#[test]
fn an_acknowledged_put_survives_a_crash() {
    let mut d = Daemon::initialized();
    for i in 1..=5 {
        d.put("telegram", format!("token-{i}").as_bytes());
    }
    d.kill(); // SIGKILL right after the last acknowledgement: no clean shutdown
    d.launch();
    d.unlock();
    assert_eq!(d.get("telegram"), b"token-5");
    let versions = d.ctl(&["--json", "versions", "telegram"], b"").ok().json();
    assert_eq!(versions.as_array().unwrap().len(), 5, "{versions}");
}
