//! `vaultctl backup` / `backup verify` / `restore` end to end: a backup taken
//! while writers and readers keep going restores to a vault whose values all
//! match what was acknowledged; the file is 0600 and only ciphertext; verify
//! catches a damaged file; restore never overwrites.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vault_proto::v1::{GetSecretRequest, PutSecretRequest, SecretRef};
use vault_tests::{Daemon, Options, PASSPHRASE, contains, path_str};

const SECRETS: usize = 500;
const HOT: usize = 20;

fn value(i: usize, generation: u64) -> Vec<u8> {
    format!("value-{i}-gen{generation}-{}", "v".repeat(i % 50)).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_every_acknowledged_value() {
    let d = Daemon::initialized();
    let mut admin = vault_proto::admin_client(vault_proto::connect(&d.admin_socket).await.unwrap());
    let put = |i: usize, generation: u64| PutSecretRequest {
        secret: Some(SecretRef { env: String::new(), name: format!("s{i}") }),
        value: value(i, generation),
        ..Default::default()
    };
    for i in 0..SECRETS {
        admin.put_secret(put(i, 0)).await.unwrap();
    }

    // Load: a writer bumps the generation of the hot secrets, recording for each
    // the last acknowledged one and the one in flight; a reader keeps reading.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..HOT).map(|_| AtomicU64::new(0)).collect());
    let started: Arc<Vec<AtomicU64>> = Arc::new((0..HOT).map(|_| AtomicU64::new(0)).collect());
    let writer = {
        let (stop, acked, started, mut admin) = (stop.clone(), acked.clone(), started.clone(), admin.clone());
        tokio::spawn(async move {
            let mut generation = 0;
            while !stop.load(Ordering::Relaxed) {
                generation += 1;
                for i in 0..HOT {
                    started[i].store(generation, Ordering::SeqCst);
                    admin.put_secret(put(i, generation)).await.unwrap();
                    acked[i].store(generation, Ordering::SeqCst);
                }
            }
            generation
        })
    };
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, reads) = (stop.clone(), reads.clone());
        let mut agent = vault_proto::agent_client(vault_proto::connect(&d.agent_socket).await.unwrap());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("s{}", n % SECRETS);
                agent.get_secret(GetSecretRequest { env: String::new(), name, version: 0 }).await.unwrap();
                reads.fetch_add(1, Ordering::Relaxed);
                n += 7;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    let reads_before = reads.load(Ordering::Relaxed);
    let file = d.dir.path().join("vault.backup");
    let t = Instant::now();
    let out = tokio::task::block_in_place(|| d.ctl(&["--json", "backup", path_str(&file)], b"").ok().json());
    let took = t.elapsed();
    let after: Vec<u64> = started.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    let reads_during = reads.load(Ordering::Relaxed) - reads_before;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let generations = writer.await.unwrap();
    reader.await.unwrap();
    eprintln!(
        "backup of {SECRETS} secrets ({} versions) under load: {} bytes in {took:?}; {reads_during} reads served \
         meanwhile; writer reached generation {generations}",
        SECRETS + HOT * generations as usize,
        out["bytes"]
    );
    assert!(generations > before.iter().copied().max().unwrap(), "the writer kept going during the backup");

    // The file: owner-only, the size reported, no value in it.
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(out["bytes"].as_u64(), Some(meta.len()));
    let bytes = std::fs::read(&file).unwrap();
    assert!(!contains(&bytes, b"value-1-gen0") && !contains(&bytes, PASSPHRASE));
    assert!(d.ctl(&["backup", path_str(&file)], b"").error(1).contains("File exists"));

    let pass = d.passphrase_file(PASSPHRASE);
    let verify = |f: &std::path::Path| {
        d.ctl(&["--json", "backup", "verify", path_str(f), "--passphrase-file", path_str(&pass)], b"")
    };
    let report = tokio::task::block_in_place(|| verify(&file).ok().json());
    assert_eq!((report["intact"].clone(), report["secrets"].clone()), (true.into(), SECRETS.into()), "{report}");

    // Restore offline into a new dir and serve it from a second vaultd.
    let restored = d.dir.path().join("restored");
    let restore = |to: &std::path::Path| {
        d.ctl(
            &["--json", "restore", path_str(&file), "--data-dir", path_str(to), "--passphrase-file", path_str(&pass)],
            b"",
        )
    };
    let out = tokio::task::block_in_place(|| restore(&restored).ok().json());
    assert_eq!(out["secrets"], SECRETS, "{out}");
    assert_eq!(std::fs::metadata(&restored).unwrap().permissions().mode() & 0o777, 0o700);
    for f in vault_tests::files_under(&restored) {
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600, "{}", f.display());
    }
    let mut second = Daemon::new(Options::default());
    second.data_dir = restored.clone();
    second.launch();
    second.unlock();
    let mut agent = vault_proto::agent_client(vault_proto::connect(&second.agent_socket).await.unwrap());
    for i in 0..SECRETS {
        let got =
            agent.get_secret(GetSecretRequest { env: String::new(), name: format!("s{i}"), version: 0 }).await.unwrap();
        let got = got.into_inner().value;
        if i < HOT {
            // Consistent: one generation, no older than acknowledged when the
            // backup began, no newer than begun when it ended.
            let generation = (before[i]..=after[i]).find(|&g| got == value(i, g));
            assert!(
                generation.is_some(),
                "s{i}: {:?} not in generations {}..={}",
                String::from_utf8_lossy(&got),
                before[i],
                after[i]
            );
        } else {
            assert_eq!(got, value(i, 0), "s{i}");
        }
    }
    assert!(second.audit_verify().is_ok());
    let restores = second.audit_query(&["--type", "vault.restore"]);
    assert_eq!(restores.len(), 1, "the restore is in the restored vault's log: {restores:?}");
    assert_eq!(second.audit_query(&["--type", "vault.backup"]).len(), 1, "and so is the backup it came from");

    // Restore never overwrites.
    let message = restore(&restored).error(1).to_owned();
    assert!(message.contains("not empty"), "{message}");
}

#[test]
fn backup_verify_catches_damage_and_a_wrong_passphrase() {
    let d = Daemon::initialized();
    for i in 0..50 {
        d.put(&format!("s{i}"), format!("value-{i}").as_bytes());
    }
    let file = d.dir.path().join("b");
    d.ctl(&["backup", path_str(&file)], b"").ok();
    let pass = d.passphrase_file(PASSPHRASE);
    let verify =
        |f: &std::path::Path| d.ctl(&["backup", "verify", path_str(f), "--passphrase-file", path_str(&pass)], b"");
    let text = verify(&file).ok().text();
    assert!(text.starts_with("backup intact: 50 secrets, 50 versions decrypted"), "{text}");

    let wrong = d.write_file("wrong", b"wrong\n");
    let out = d.ctl(&["backup", "verify", path_str(&file), "--passphrase-file", path_str(&wrong)], b"");
    assert!(out.error(3).contains("wrong passphrase"));

    let original = std::fs::read(&file).unwrap();
    let mut rng = vault_tests::Rng::from_env("VAULT_BACKUP_SEED");
    for trial in 0..5 {
        let mut bytes = original.clone();
        let at = 24 + rng.below(bytes.len() as u64 - 24) as usize;
        bytes[at] ^= 1 + rng.below(255) as u8;
        let damaged = d.write_file(&format!("damaged-{trial}"), &bytes);
        let message = verify(&damaged).error(1).to_owned();
        assert!(message.contains("damaged") || message.contains("authentication"), "byte {at}: {message}");
        let target = d.dir.path().join(format!("restore-{trial}"));
        let restore =
            ["restore", path_str(&damaged), "--data-dir", path_str(&target), "--passphrase-file", path_str(&pass)];
        d.ctl(&restore, b"").error(1);
        assert!(!target.exists(), "a refused restore leaves nothing");
    }
    let truncated = d.write_file("truncated", &original[..original.len() / 2]);
    assert!(verify(&truncated).error(1).contains("damaged"));
    let not_a_backup = d.write_file("other", b"SQLite format 3\0 and so on, long enough to have a trailer .......");
    assert!(verify(&not_a_backup).error(1).contains("not a vaultd backup"));
}
