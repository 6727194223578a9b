//! Key lifecycle end to end through vaultctl: `rekey` (new passphrase, stronger
//! Argon2, atomic under SIGKILL), `rotate-key` and `--rewrap` (terms retired,
//! re-running continues), the automatic new term at the configured limit, and
//! the passphrase sources (`VAULTD_PASSPHRASE`, `VAULT_PASSPHRASE`, a systemd
//! credential file).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};
use vault_tests::{Daemon, Options, PASSPHRASE, contains, path_str};

const NEW_PASSPHRASE: &[u8] = b"e2e the new passphrase after rekey";

/// The OWASP floor: stronger than the test profile, still quick in a test.
const STRONGER: [&str; 6] = ["--kdf-memory-mib", "19", "--kdf-iterations", "2", "--kdf-parallelism", "1"];

#[test]
fn rekey_changes_passphrase_and_kdf_and_the_old_passphrase_is_refused() {
    let mut d = Daemon::initialized();
    d.put("telegram", b"123:telegram-token");
    d.put("anthropic", b"sk-ant-value");
    let old = d.passphrase_file(PASSPHRASE);
    let new = d.write_file("new-passphrase", &[NEW_PASSPHRASE, b"\n"].concat());

    // A wrong current passphrase changes nothing.
    let wrong = d.write_file("wrong", b"not it\n");
    let args = ["rekey", "--passphrase-file", path_str(&wrong), "--new-passphrase-file", path_str(&new)];
    assert!(d.ctl(&args, b"").error(3).contains("wrong passphrase"));
    assert_eq!(d.status()["kdf"]["insecure_test_profile"], true);

    let mut args =
        vec!["--json", "rekey", "--passphrase-file", path_str(&old), "--new-passphrase-file", path_str(&new)];
    args.extend(STRONGER);
    let started = Instant::now();
    let out = d.ctl(&args, b"").ok().json();
    eprintln!("rekey (m=19 MiB, t=2, p=1; two Argon2 runs) took {:?}", started.elapsed());
    assert_eq!(out["passphrase_changed"], true, "{out}");
    assert_eq!(out["kdf"]["memory_kib"], 19 * 1024, "{out}");
    let status = d.status();
    assert_eq!((status["kdf"]["memory_kib"].clone(), status["kdf"]["iterations"].clone()), (19456.into(), 2.into()));
    assert_eq!(status["sealed"], false, "rekey leaves the vault unlocked: {status}");
    assert_eq!(d.get("telegram"), b"123:telegram-token");

    d.restart();
    let out = d.ctl(&["unlock", "--passphrase-file", path_str(&old)], b"");
    assert!(out.error(3).contains("wrong passphrase"), "the old passphrase must stop working");
    d.ctl(&["unlock", "--passphrase-file", path_str(&new)], b"").ok();
    assert_eq!(d.get("telegram"), b"123:telegram-token");
    assert_eq!(d.get("anthropic"), b"sk-ant-value");

    // Parameters only, the current passphrase from VAULT_PASSPHRASE.
    let mut cmd = d.ctl_command(&["--json", "rekey", "--keep-passphrase", "--kdf-iterations", "3"]);
    cmd.env("VAULT_PASSPHRASE", std::str::from_utf8(NEW_PASSPHRASE).unwrap());
    let out = vault_tests::run(cmd, b"").ok().json();
    assert_eq!((out["passphrase_changed"].clone(), out["kdf"]["iterations"].clone()), (false.into(), 3.into()));

    // Recorded, and no passphrase anywhere in the record or the log.
    let rekeys = d.audit_query(&["--type", "vault.rekey"]);
    let outcomes: Vec<&str> = rekeys.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["denied", "ok", "ok"], "{rekeys:?}");
    let (export, _) = d.audit_export("audit.jsonl");
    for secret in [PASSPHRASE, NEW_PASSPHRASE, b"not it"] {
        assert!(!contains(&export, secret) && !contains(d.log().as_bytes(), secret));
    }
    assert!(d.audit_verify().is_ok());
}

#[test]
fn rekey_refuses_bad_input_before_touching_anything() {
    let d = Daemon::initialized();
    let old = d.passphrase_file(PASSPHRASE);
    let new = d.write_file("new", b"a new long passphrase\n");
    let p = path_str(&old);
    // Nothing to change; both from stdin; a new passphrase on a non-terminal without a file.
    d.ctl(&["rekey", "--passphrase-file", p, "--keep-passphrase"], b"").error(2);
    d.ctl(&["rekey", "--passphrase-file", "-", "--new-passphrase-file", "-"], b"x").error(2);
    let message = d.ctl(&["rekey", "--passphrase-file", p], b"").error(2).to_owned();
    assert!(message.contains("--new-passphrase-file"), "{message}");
    // Parameters outside the bounds: refused as invalid input, vault unchanged.
    let n = path_str(&new);
    let args = [
        "rekey",
        "--passphrase-file",
        p,
        "--new-passphrase-file",
        n,
        "--kdf-memory-mib",
        "4096",
        "--kdf-iterations",
        "2",
    ];
    assert!(d.ctl(&args, b"").error(2).contains("above the maximum"));
    let args = ["rekey", "--passphrase-file", p, "--keep-passphrase", "--kdf-memory-mib", "1"];
    assert!(d.ctl(&args, b"").error(2).contains("below the minimum"));
    assert_eq!(d.status()["kdf"]["insecure_test_profile"], true);
}

/// SIGKILL at random moments of a rekey: after each, exactly one of the old and
/// the new passphrase opens the vault, never neither.
#[test]
fn rekey_is_atomic_under_sigkill() {
    let mut d = Daemon::initialized();
    d.put("telegram", b"token");
    let (mut current, mut next) = (PASSPHRASE.to_vec(), NEW_PASSPHRASE.to_vec());
    let (mut old_won, mut new_won) = (0, 0);
    let mut rng = vault_tests::Rng::from_env("VAULT_REKEY_CRASH_SEED");
    for trial in 0..12 {
        let old = d.write_file("current", &current);
        let new = d.write_file("next", &next);
        let mut args = vec!["rekey", "--passphrase-file", path_str(&old), "--new-passphrase-file", path_str(&new)];
        args.extend(STRONGER);
        let mut child = d
            .ctl_command(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(150_000)));
        d.kill();
        let _ = child.wait();
        d.launch();
        let try_unlock = |p: &[u8]| d.ctl(&["unlock", "--passphrase-file", "-"], p).code == Some(0);
        let (old_opens, new_opens) = (try_unlock(&current), try_unlock(&next));
        assert!(old_opens != new_opens, "trial {trial}: old opens {old_opens}, new opens {new_opens}");
        assert_eq!(d.get("telegram"), b"token");
        if new_opens {
            new_won += 1;
            std::mem::swap(&mut current, &mut next);
        } else {
            old_won += 1;
        }
    }
    eprintln!("rekey crash trials: old passphrase survived {old_won}, new one committed {new_won} (seed {})", rng.seed);
    assert!(d.audit_verify().is_ok());
}

#[test]
fn rotate_key_and_rewrap_end_to_end() {
    let mut d = Daemon::initialized();
    for i in 0..7 {
        d.put(&format!("s{i}"), format!("v{i}-term1").as_bytes());
    }
    d.put("s0", b"v0-second");
    assert_eq!(d.status()["key_term"], 1);

    let out = d.ctl(&["--json", "rotate-key"], b"").ok().json();
    assert_eq!(
        (out["term"].clone(), out["new_term"].clone(), out["to_rewrap"].clone()),
        (2.into(), true.into(), 8.into())
    );
    assert_eq!(d.status()["key_term"], 2);
    d.put("s1", b"v1-term2");
    d.put("fresh", b"fresh-term2");
    let mut terms = d.version_terms();
    terms.sort();
    assert_eq!(terms, [1, 1, 1, 1, 1, 1, 1, 1, 2, 2], "new writes use the new term");
    assert_eq!(d.get("s2"), b"v2-term1", "older terms still read");

    let started = Instant::now();
    let out = d.ctl(&["--json", "rotate-key", "--rewrap", "--batch", "3"], b"").ok().json();
    eprintln!("rotate-key --rewrap of 10 versions in batches of 3 took {:?}", started.elapsed());
    assert_eq!(out["term"], 3, "{out}");
    assert_eq!(out["rewrapped"], 10, "{out}");
    let mut retired: Vec<u64> = out["retired_terms"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
    retired.sort();
    assert_eq!(retired, [1, 2], "{out}");
    assert_eq!(d.version_terms(), [3; 10]);
    assert_eq!(d.key_terms().iter().map(|t| t.0).collect::<Vec<_>>(), [3], "retired terms are deleted");

    let check = |d: &Daemon| {
        assert_eq!(d.get("s0"), b"v0-second");
        assert_eq!(d.get("s1"), b"v1-term2");
        assert_eq!(d.get("fresh"), b"fresh-term2");
        for i in 2..7 {
            assert_eq!(d.get(&format!("s{i}")), format!("v{i}-term1").as_bytes());
        }
        let shown = d.ctl(&["--json", "versions", "s0"], b"").ok().json();
        assert_eq!(shown.as_array().unwrap().len(), 2);
    };
    check(&d);
    d.restart();
    d.unlock();
    check(&d);

    // Human output, and nothing left to do.
    let text = d.ctl(&["rotate-key", "--rewrap"], b"").ok().text();
    assert!(text.starts_with("new key term 4 for new writes\nrewrapped 10 versions under key term 4\n"), "{text}");
    let kinds: Vec<String> =
        d.audit_query(&["--type", "key"]).iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
    assert!(kinds.contains(&"key.rotate".to_owned()) && kinds.contains(&"key.rewrap.done".to_owned()), "{kinds:?}");
    assert!(d.audit_verify().is_ok());
}

#[test]
fn a_new_term_starts_at_the_configured_encryption_limit() {
    let config = "[keys]\nmax_encryptions_per_term = 3\n";
    let mut d = Daemon::start_with(Options { config: Some(config.into()), ..Options::default() });
    d.init();
    for i in 0..10 {
        d.put(&format!("s{i}"), format!("v{i}").as_bytes());
    }
    assert_eq!(d.key_terms(), [(1, 3), (2, 3), (3, 3), (4, 1)]);
    assert_eq!(d.status()["key_term"], 4);
    let automatic = d.audit_query(&["--type", "key.rotate"]);
    assert_eq!(automatic.len(), 3, "{automatic:?}");
    assert!(automatic.iter().all(|e| e["detail"]["reason"] == "encryption limit"), "{automatic:?}");

    // The count is persisted: it carries on after a restart.
    d.restart();
    d.unlock();
    for i in 10..13 {
        d.put(&format!("s{i}"), format!("v{i}").as_bytes());
    }
    assert_eq!(d.key_terms(), [(1, 3), (2, 3), (3, 3), (4, 3), (5, 1)]);
    for i in 0..13 {
        assert_eq!(d.get(&format!("s{i}")), format!("v{i}").as_bytes());
    }
    // A rewrap counts its encryptions too, starting terms as it goes; it still
    // ends, with every version at or past its target term and the rest retired.
    let out = d.ctl(&["--json", "rotate-key", "--rewrap", "--batch", "2"], b"").ok().json();
    let target = out["term"].as_u64().unwrap() as u32;
    assert!(target >= 6, "{out}");
    let terms = d.key_terms();
    assert!(terms.iter().all(|&(t, n)| t >= 6 && n <= 3), "{terms:?}");
    assert!(d.version_terms().iter().all(|&t| t >= 6), "{:?}", d.version_terms());
    for i in 0..13 {
        assert_eq!(d.get(&format!("s{i}")), format!("v{i}").as_bytes());
    }
    assert!(d.audit_verify().is_ok());
}

#[test]
fn vaultd_passphrase_env_and_a_systemd_credential_unlock_at_startup() {
    let mut d = Daemon::initialized();
    d.put("telegram", b"token");
    d.stop();

    // Containers: VAULTD_PASSPHRASE.
    d.opts.env = vec![("VAULTD_PASSPHRASE".into(), String::from_utf8(PASSPHRASE.to_vec()).unwrap())];
    d.launch();
    assert_eq!(d.status()["sealed"], false);
    assert_eq!(d.get("telegram"), b"token");
    assert!(d.log().contains("unlocked from VAULTD_PASSPHRASE"), "{}", d.log());
    d.stop();

    // Both sources at once is refused rather than guessed at.
    let file = d.passphrase_file(PASSPHRASE);
    d.opts.args = vec!["--passphrase-file".into(), file.into()];
    let stopped = d.launch_expecting_exit();
    assert_eq!(stopped.status.code(), Some(1));
    assert!(stopped.log.contains("not both"), "{}", stopped.log);

    // systemd's LoadCredentialEncrypted=passphrase: a read-only dir holding a 0400 file.
    let creds = d.dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    let credential = creds.join("passphrase");
    std::fs::write(&credential, PASSPHRASE).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&credential, std::fs::Permissions::from_mode(0o400)).unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o500)).unwrap();
    d.opts.env = vec![("CREDENTIALS_DIRECTORY".into(), path_str(&creds).into())];
    d.opts.args = vec!["--passphrase-file".into(), credential.into()];
    d.launch();
    assert_eq!(d.get("telegram"), b"token");
    assert!(!contains(d.log().as_bytes(), PASSPHRASE));
}

#[test]
fn vaultctl_reads_vault_passphrase() {
    let mut d = Daemon::initialized();
    d.put("telegram", b"token");
    d.restart();
    let mut cmd = d.ctl_command(&["unlock"]);
    cmd.env("VAULT_PASSPHRASE", "wrong");
    assert!(vault_tests::run(cmd, b"").error(3).contains("wrong passphrase"));
    let mut cmd = d.ctl_command(&["unlock"]);
    cmd.env("VAULT_PASSPHRASE", "");
    assert!(vault_tests::run(cmd, b"").error(2).contains("VAULT_PASSPHRASE is set but empty"));
    let mut cmd = d.ctl_command(&["unlock"]);
    cmd.env("VAULT_PASSPHRASE", std::ffi::OsStr::new(std::str::from_utf8(PASSPHRASE).unwrap()));
    vault_tests::run(cmd, b"").ok();
    assert_eq!(d.get("telegram"), b"token");
}
