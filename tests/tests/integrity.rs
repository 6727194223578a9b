//! Integrity at rest (issue 17), against a real daemon, tampering with the
//! SQLite file as an attacker who can write the data directory would (stop,
//! edit, restart and unlock; seal, edit, unlock; edit while running, then unlock
//! again): every edit is reported (by `audit verify`, `status` and an
//! `integrity.violation` entry naming the table and row) or refused at read,
//! and no tampered value is ever served.
#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use vault_tests::{Daemon, Options, PASSPHRASE, bins, is_root, path_str, run};

/// A daemon that unlocks itself at every start (`--passphrase-file`), initialized.
fn self_unlocking() -> Daemon {
    let mut d = Daemon::new(Options::default());
    let file = d.passphrase_file(PASSPHRASE);
    d.launch();
    d.init();
    d.opts.args = vec![OsString::from("--passphrase-file"), file.into_os_string()];
    d
}

fn problems(d: &Daemon) -> Vec<String> {
    let status = d.status();
    status["integrity"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_owned()).collect()
}

fn violations(d: &Daemon) -> Vec<serde_json::Value> {
    d.audit_query(&["--type", "integrity.violation"])
}

#[test]
fn unlock_never_signs_over_a_deleted_tail() {
    let mut d = self_unlocking();
    for i in 0..12 {
        d.put(&format!("s{i}"), b"v");
    }
    let (_, _, last) = d.audit_verify().unwrap();
    assert!(last > 10, "{last}");
    d.stop();
    d.db().execute("DELETE FROM audit WHERE seq > 7", []).unwrap();
    d.launch();
    // Reported, not re-signed: `audit verify` and `status` say so, twice.
    for _ in 0..2 {
        let (seq, problem) = d.audit_verify().unwrap_err();
        assert_eq!(seq, 8, "{problem}");
        // The head named the last entry written before the stop (the stop's own records).
        assert!(
            problem.contains("entries 8..=") && problem.contains("are missing (deleted from the end)"),
            "{problem}"
        );
        let listed = problems(&d);
        assert!(listed.iter().any(|p| p.contains("missing")), "{listed:?}");
    }
    // Without a head that verifies, the state's generation cannot be confirmed
    // (an older copy of it could have been put back too): nothing is served.
    assert!(d.ctl(&["get", "s11"], b"").error(1).contains("quarantined"));
    // Still reported, and still refused, after another restart: nothing falls
    // back silently.
    d.restart();
    assert_eq!(d.audit_verify().unwrap_err().0, 8);
    assert!(d.ctl(&["get", "s11"], b"").error(1).contains("quarantined"));
    // The owner's acknowledgement, itself recorded, clears it.
    let acked = d.ctl(&["--json", "integrity", "ack"], b"").ok().json();
    assert!(!acked["acknowledged"].as_array().unwrap().is_empty(), "{acked}");
    assert!(d.audit_verify().is_ok(), "acknowledged");
    assert!(problems(&d).is_empty());
    assert_eq!(d.audit_query(&["--type", "integrity.acknowledged"]).len(), 1);
    d.restart();
    assert!(d.audit_verify().is_ok() && problems(&d).is_empty(), "stays acknowledged");
    assert_eq!(d.get("s11"), b"v", "the state itself was never touched");
}

#[test]
fn seal_edit_unlock_does_not_sign_the_edits() {
    let d = Daemon::initialized();
    for i in 0..4 {
        d.put(&format!("s{i}"), b"v");
    }
    d.ctl(&["seal"], b"").ok();
    // Entries 3..=5 un-chained and edited, as if written while sealed.
    let db = d.db();
    db.execute("UPDATE audit SET mac = NULL, detail = '{\"forged\":true}' WHERE seq BETWEEN 3 AND 5", []).unwrap();
    drop(db);
    d.unlock();
    let (seq, problem) = d.audit_verify().unwrap_err();
    assert_eq!(seq, 3, "{problem}");
    let tampered = d.audit_query(&["--type", "audit.tampered"]);
    assert_eq!(tampered.len(), 1, "{tampered:?}");
    // The same rows un-chained again at the next unlock: still not signed.
    d.ctl(&["seal"], b"").ok();
    d.unlock();
    assert_eq!(d.audit_verify().unwrap_err().0, 3);
}

#[test]
fn a_deletion_in_the_middle_is_reported_even_renumbered() {
    let mut d = self_unlocking();
    for i in 0..5 {
        d.put(&format!("s{i}"), b"v");
    }
    d.stop();
    let db = d.db();
    // Delete entry 4 and close the gap, as a careful attacker would.
    db.execute_batch(
        "DELETE FROM audit WHERE seq = 4;
         UPDATE audit SET seq = -seq WHERE seq > 4;
         UPDATE audit SET seq = -seq - 1 WHERE seq < 0;
         UPDATE audit_head SET seq = seq - 1;",
    )
    .unwrap();
    drop(db);
    d.launch();
    let (seq, problem) = d.audit_verify().unwrap_err();
    assert!(seq <= 4, "broken at {seq}: {problem}");
    assert!(!problems(&d).is_empty());
}

#[test]
fn a_rolled_back_version_is_never_served() {
    let mut d = self_unlocking();
    d.put("telegram", b"OLD-VALUE");
    d.put("telegram", b"NEW-VALUE");
    d.stop();
    // Version 1 made current again behind vaultd's back.
    d.db()
        .execute_batch(
            "UPDATE secret_version SET state = 'retired' WHERE version = 2;
             UPDATE secret_version SET state = 'current', expires_unix = NULL WHERE version = 1;
             UPDATE secret SET current_version = 1;",
        )
        .unwrap();
    d.launch();
    for args in [&["get", "telegram"][..], &["show", "telegram", "--reveal"]] {
        let out = d.ctl(args, b"");
        assert_ne!(out.code, Some(0), "{args:?}");
        assert!(!vault_tests::contains(&out.stdout, b"OLD-VALUE"), "{args:?} served the rolled-back value");
        let message = out.error(out.code.unwrap());
        assert!(message.contains("quarantined"), "{args:?}: {message}");
    }
    let listed = problems(&d);
    assert!(listed.iter().any(|p| p.contains("secret_version default/telegram version 1")), "{listed:?}");
    assert!(listed.iter().any(|p| p.contains("secret default/telegram")), "{listed:?}");
    let found = violations(&d);
    assert!(found.iter().any(|v| v["detail"]["table"] == "secret_version"), "{found:?}");
    let (export, _) = d.audit_export("after.jsonl");
    assert!(!vault_tests::contains(&export, b"OLD-VALUE") && !vault_tests::contains(&export, b"NEW-VALUE"));
    // Acknowledged, the versions that failed their MACs are retired, not served.
    d.ctl(&["integrity", "ack"], b"").ok();
    assert_eq!(d.ctl(&["get", "telegram"], b"").code, Some(3), "not found: no version is current");
    let shown = d.ctl(&["show", "telegram", "--reveal", "--version", "2"], b"").ok().text();
    assert!(shown.contains("value: NEW-VALUE"), "the owner can still reveal it: {shown}");
    d.put("telegram", b"NEWER");
    assert_eq!(d.get("telegram"), b"NEWER");
}

/// Reads `prod/NAME` through a copy of vaultctl as `uid`.
fn get_as(d: &Daemon, vaultctl: &std::path::Path, uid: u32, name: &str) -> vault_tests::Output {
    let mut cmd = std::process::Command::new(vaultctl);
    cmd.args(["--env", "prod", "get", name]).env("VAULT_SOCKET", &d.agent_socket).env_remove("VAULT_TOKEN");
    cmd.uid(uid).gid(uid).current_dir("/");
    run(cmd, b"")
}

#[test]
fn an_inserted_or_edited_client_reads_nothing() {
    if !is_root() {
        vault_tests::skip_unless_ci("needs root to read as other uids");
        return;
    }
    const A: u32 = 65534;
    const B: u32 = 65533;
    let mut d = Daemon::new(Options { config: Some("agent_socket_mode = \"0666\"\n".into()), ..Options::default() });
    let file = d.passphrase_file(PASSPHRASE);
    d.launch();
    d.init();
    d.opts.args = vec![OsString::from("--passphrase-file"), file.into_os_string()];
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = tempfile::Builder::new().prefix("vault-e2e-bin-").tempdir().unwrap();
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let vaultctl = bin.path().join("vaultctl");
    std::fs::copy(&bins().vaultctl, &vaultctl).unwrap();
    d.ctl(&["--env", "prod", "put", "alpha"], b"ALPHA").ok();
    d.ctl(&["--env", "prod", "put", "beta"], b"BETA").ok();
    d.ctl(&["client", "add", "bot", "--uid", &A.to_string(), "--allow", "prod/alpha"], b"").ok();
    assert_eq!(get_as(&d, &vaultctl, A, "alpha").ok().stdout, b"ALPHA");

    // Added behind vaultd's back: a client for B granted everything.
    d.stop();
    d.db()
        .execute_batch(&format!(
            "INSERT INTO client (name, uid, enabled, created_unix) VALUES ('evil', {B}, 1, 0);
             INSERT INTO client_grant (client_id, pattern, created_unix)
               SELECT id, '*/*', 0 FROM client WHERE name = 'evil';"
        ))
        .unwrap();
    d.launch();
    get_as(&d, &vaultctl, B, "beta").error(3);
    assert_eq!(get_as(&d, &vaultctl, A, "alpha").ok().stdout, b"ALPHA", "the genuine client is unaffected");
    let listed = problems(&d);
    assert!(listed.iter().any(|p| p.contains("client evil")), "{listed:?}");

    // Edited while vaultd runs: not acted on now (vaultd never reads it back)...
    d.db().execute(&format!("UPDATE client SET uid = {B} WHERE name = 'bot'"), []).unwrap();
    get_as(&d, &vaultctl, B, "alpha").error(3);
    assert_eq!(get_as(&d, &vaultctl, A, "alpha").ok().stdout, b"ALPHA");
    // ...and reported, and quarantined, at the next unlock.
    d.ctl(&["seal"], b"").ok();
    d.unlock();
    get_as(&d, &vaultctl, B, "alpha").error(3);
    get_as(&d, &vaultctl, A, "alpha").error(3);
    let listed = problems(&d);
    assert!(listed.iter().any(|p| p.contains("client bot")), "{listed:?}");
    // Acknowledged: quarantined clients come back disabled, for the owner to re-enable.
    d.ctl(&["integrity", "ack"], b"").ok();
    let clients = d.ctl(&["--json", "client", "list"], b"").ok().json();
    for c in clients.as_array().unwrap() {
        assert_eq!(c["enabled"], false, "{c}");
    }
    get_as(&d, &vaultctl, B, "beta").error(3);
}

#[test]
fn a_second_vaultd_on_the_same_data_dir_refuses_to_start() {
    let d = Daemon::initialized();
    d.put("telegram", b"v");
    let mut second = Daemon::new(Options::default());
    second.data_dir = d.data_dir.clone();
    let stopped = second.launch_expecting_exit();
    assert!(!stopped.status.success());
    let lines: Vec<&str> =
        stopped.log.lines().filter(|l| l.starts_with("vaultd:") && !l.starts_with("vaultd: WARNING")).collect();
    assert_eq!(lines.len(), 1, "one line: {}", stopped.log);
    assert!(lines[0].contains(&format!("in use by another vaultd (pid {})", d.pid())), "{}", lines[0]);
    assert_eq!(d.get("telegram"), b"v", "the first keeps serving");
    d.put("telegram", b"w");
    assert!(d.audit_verify().is_ok());
}

#[test]
fn restore_refuses_a_crafted_backup_and_restores_a_genuine_one() {
    let d = Daemon::initialized();
    d.put("telegram", b"TG");
    let backup = d.dir.path().join("vault.backup");
    d.ctl(&["backup", path_str(&backup)], b"").ok();
    let pass = d.passphrase_file(PASSPHRASE);

    // The image with a client added, its SHA-256 recomputed: only the HMAC can tell.
    let crafted = d.dir.path().join("crafted.backup");
    let bytes = std::fs::read(&backup).unwrap();
    let image_len = u64::from_be_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let db_path = d.dir.path().join("image.db");
    std::fs::write(&db_path, &bytes[24..24 + image_len]).unwrap();
    {
        let db = rusqlite::Connection::open(&db_path).unwrap();
        db.execute_batch(
            "PRAGMA journal_mode = DELETE;
             INSERT INTO client (name, uid, enabled, created_unix) VALUES ('evil', 4242, 1, 0);
             INSERT INTO client_grant (client_id, pattern, created_unix)
               SELECT id, '*/*', 0 FROM client WHERE name = 'evil';",
        )
        .unwrap();
    }
    let image = std::fs::read(&db_path).unwrap();
    let mut out = bytes[..16].to_vec();
    out.extend_from_slice(&(image.len() as u64).to_be_bytes());
    out.extend_from_slice(&image);
    let digest = ring::digest::digest(&ring::digest::SHA256, &out);
    out.extend_from_slice(digest.as_ref());
    out.extend_from_slice(&bytes[bytes.len() - 32..]);
    std::fs::write(&crafted, out).unwrap();

    let target = d.dir.path().join("restored-crafted");
    let refused = d.ctl(
        &["restore", path_str(&crafted), "--data-dir", path_str(&target), "--passphrase-file", path_str(&pass)],
        b"",
    );
    let message = refused.error(refused.code.unwrap());
    assert!(message.contains("fails its authentication"), "{message}");
    assert!(!target.exists(), "a refused restore leaves nothing behind");

    let target = d.dir.path().join("restored");
    d.ctl(&["restore", path_str(&backup), "--data-dir", path_str(&target), "--passphrase-file", path_str(&pass)], b"")
        .ok();
    let mut restored = Daemon::new(Options::default());
    restored.data_dir = target;
    restored.launch();
    restored.unlock();
    assert_eq!(restored.get("telegram"), b"TG");
    assert!(restored.audit_verify().is_ok());
    assert!(problems(&restored).is_empty());
}

#[test]
fn a_whole_older_data_dir_put_back_is_caught_by_the_anchor() {
    let mut d = Daemon::new(Options::default());
    let anchor = d.dir.path().join("anchor");
    d.opts.config = Some(format!("[integrity]\nanchor = \"{}\"\n", anchor.display()));
    let file = d.passphrase_file(PASSPHRASE);
    d.launch();
    d.init();
    d.opts.args = vec![OsString::from("--passphrase-file"), file.into_os_string()];
    d.put("telegram", b"OLD-VALUE");
    d.stop();
    let older = d.dir.path().join("older");
    copy_dir(&d.data_dir, &older);
    d.launch();
    d.put("telegram", b"NEW-VALUE");
    d.ctl(&["token", "revoke", "--all"], b"").ok();
    d.stop();
    assert!(anchor.exists(), "the anchor is written");
    std::fs::remove_dir_all(&d.data_dir).unwrap();
    copy_dir(&older, &d.data_dir);
    d.launch();
    // Authentic but old: every row verifies, the anchor says otherwise.
    let out = d.ctl(&["get", "telegram"], b"");
    assert!(!vault_tests::contains(&out.stdout, b"OLD-VALUE"), "the rolled-back value was served");
    assert!(out.error(1).contains("quarantined"), "{out:?}");
    let listed = problems(&d);
    assert!(listed.iter().any(|p| p.contains("older than the anchor")), "{listed:?}");
    d.restart();
    assert!(d.ctl(&["get", "telegram"], b"").code != Some(0), "still refused after a restart");
    // The owner decides it is the state to keep.
    d.ctl(&["integrity", "ack"], b"").ok();
    assert_eq!(d.get("telegram"), b"OLD-VALUE");
    d.restart();
    assert!(problems(&d).is_empty());
    assert_eq!(d.get("telegram"), b"OLD-VALUE");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().mode(0o700).create(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        } else if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        }
    }
}
