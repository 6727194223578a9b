//! Backup files in process: a snapshot written as a backup file verifies and
//! restores; an edit that keeps the file's checksum right (a deliberate one) is
//! still caught, by the HMAC, even where no ciphertext protects the bytes.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use vaultd::backup::{self, BackupError};
use vaultd::crypto::{self, Checksum, KdfParams, SecretBytes, VersionId};
use vaultd::store::{SecretLabels, Store};

type AnyError = Box<dyn std::error::Error + Send + Sync>;

const KDF: KdfParams = KdfParams { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 };

/// A vault with a few secrets (one with a recognisable description), backed up
/// to `dir/backup`; returns the backup's path.
fn backup_of_a_vault(dir: &std::path::Path, passphrase: &[u8]) -> std::path::PathBuf {
    let data = dir.join("data");
    let store = Store::open(&data).unwrap();
    let (header, term, keys) = crypto::create(&SecretBytes::new(passphrase.to_vec()), KDF).unwrap();
    store.write(|txn| txn.initialize(&header, &term)).unwrap();
    for (name, description) in [("telegram", "DESCRIPTION-CANARY"), ("openai", ""), ("discord", "")] {
        let labels = SecretLabels { provider: String::new(), description: description.into() };
        store
            .write(|txn| {
                txn.put("prod", name, &labels, 10, |version| {
                    let id = VersionId { env: "prod", name, version };
                    Ok::<_, AnyError>(keys.seal_version(&id, 1, format!("value-of-{name}").as_bytes())?)
                })
            })
            .unwrap();
    }
    let path = dir.join("backup");
    let mut file = vaultd::store::create_owner_only(&path).unwrap();
    let writer = backup::Writer::new(store.snapshot().unwrap(), keys.backup_mac()).unwrap();
    let len = writer.file_len();
    for chunk in writer {
        file.write_all(&chunk.unwrap()).unwrap();
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    path
}

/// Replaces `from` by `to` (same length) in the file and recomputes its SHA-256,
/// as someone editing it on purpose would.
fn edit_keeping_the_checksum(path: &std::path::Path, from: &[u8], to: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.windows(from.len()).position(|w| w == from).expect("the bytes to edit");
    bytes[at..at + to.len()].copy_from_slice(to);
    let covered = bytes.len() - 64;
    let mut sum = Checksum::default();
    sum.update(&bytes[..covered]);
    bytes[covered..covered + 32].copy_from_slice(&sum.finish());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_backup_verifies_restores_and_catches_deliberate_edits() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = SecretBytes::new(b"backup passphrase".to_vec());
    let path = backup_of_a_vault(tmp.path(), pass.expose());

    let report = backup::verify(&path, &pass).unwrap();
    assert_eq!((report.secrets, report.versions, report.key_terms), (3, 3, 1));
    let wrong = SecretBytes::new(b"not it".to_vec());
    assert!(matches!(backup::verify(&path, &wrong), Err(BackupError::WrongPassphrase)));

    // Restore: into a new dir, never over anything.
    let restored = tmp.path().join("restored");
    assert_eq!(backup::restore(&path, &restored).unwrap().secrets, 3);
    assert!(matches!(backup::restore(&path, &restored), Err(BackupError::NotEmpty(_))));
    let store = Store::open(&restored).unwrap();
    let (header, terms) = store.header().unwrap().unwrap();
    let keys = vaultd::crypto::Unlocked::open(&pass, &header, &terms).unwrap();
    let (version, ct) = store.current("prod", "telegram").unwrap().unwrap();
    let value = keys.open_version(&VersionId { env: "prod", name: "telegram", version }, &ct).unwrap();
    assert_eq!(value.expose(), b"value-of-telegram");
    drop(store);

    // A metadata edit with the checksum fixed up: the database stays sound and
    // every ciphertext still opens, so only the HMAC can tell.
    edit_keeping_the_checksum(&path, b"DESCRIPTION-CANARY", b"DESCRIPTION-EDITED");
    assert!(matches!(backup::verify(&path, &pass), Err(BackupError::Forged)));
    // A ciphertext edit with the checksum fixed up.
    let other = backup_of_a_vault(&tmp.path().join("second"), pass.expose());
    edit_keeping_the_checksum(&other, b"prod", b"prxd");
    assert!(backup::verify(&other, &pass).is_err());
    // An accidental flip (checksum not fixed): refused without the passphrase, by restore too.
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(backup::verify(&path, &pass), Err(BackupError::Damaged(_))));
    let target = tmp.path().join("never");
    assert!(matches!(backup::restore(&path, &target), Err(BackupError::Damaged(_))));
    assert!(!target.exists(), "a failed restore leaves nothing behind");
}
