//! Backup files in process: a backup verifies and restores, and restore checks
//! it all through (passphrase, HMAC, state) before it writes anything; an edit
//! that keeps the file's checksum right (a deliberate one) is caught by the
//! HMAC, even where no ciphertext protects the bytes.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use vaultd::audit::Actor;
use vaultd::backup::{self, BackupError};
use vaultd::config::Config;
use vaultd::crypto::{Checksum, SecretBytes};
use vaultd::state::{PolicyChange, SecretLabels};
use vaultd::vault::{SecretRef, Vault};

/// A vault with a few secrets (one with a recognisable description), backed up
/// to `dir/backup`; returns the backup's path.
fn backup_of_a_vault(dir: &std::path::Path, passphrase: &[u8]) -> std::path::PathBuf {
    let vault = Vault::open(&dir.join("data"), &Config::default()).unwrap();
    let actor = Actor::vaultd();
    vault.init(&actor, &SecretBytes::new(passphrase.to_vec())).unwrap();
    for (name, description) in [("telegram", "DESCRIPTION-CANARY"), ("openai", ""), ("discord", "")] {
        let labels = SecretLabels { provider: String::new(), description: description.into() };
        let value = SecretBytes::new(format!("value-of-{name}").into_bytes());
        let secret = SecretRef::parse("prod", name).unwrap();
        vault.put(&actor, secret, &labels, &PolicyChange::default(), &value).unwrap();
    }
    let path = dir.join("backup");
    let mut file = vaultd::store::create_owner_only(&path).unwrap();
    let writer = vault.backup(&actor).unwrap();
    let len = writer.file_len();
    for chunk in writer {
        file.write_all(&chunk.unwrap()).unwrap();
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    vault.seal(&actor).unwrap();
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
    assert!(matches!(backup::restore(&path, &tmp.path().join("w"), &wrong), Err(BackupError::WrongPassphrase)));
    assert!(!tmp.path().join("w").exists(), "a refused restore leaves nothing behind");

    // Restore: into a new dir, never over anything; the restored vault unlocks
    // and serves the value.
    let restored = tmp.path().join("restored");
    assert_eq!(backup::restore(&path, &restored, &pass).unwrap().secrets, 3);
    assert!(matches!(backup::restore(&path, &restored, &pass), Err(BackupError::NotEmpty(_))));
    let vault = Vault::open(&restored, &Config::default()).unwrap();
    vault.unlock(&Actor::vaultd(), &pass).unwrap();
    let (_, value) = vault.reveal(&Actor::vaultd(), SecretRef::parse("prod", "telegram").unwrap(), 0).unwrap();
    assert_eq!(value.expose(), b"value-of-telegram");
    assert!(vault.status().unwrap().integrity.is_empty());
    vault.seal(&Actor::vaultd()).unwrap();

    // A metadata edit with the checksum fixed up: the database stays sound and
    // every ciphertext still opens, so only the HMAC can tell; restore refuses
    // it before writing anything.
    edit_keeping_the_checksum(&path, b"DESCRIPTION-CANARY", b"DESCRIPTION-EDITED");
    assert!(matches!(backup::verify(&path, &pass), Err(BackupError::Forged)));
    let target = tmp.path().join("forged");
    assert!(matches!(backup::restore(&path, &target, &pass), Err(BackupError::Forged)));
    assert!(!target.exists(), "a refused restore leaves nothing behind");
    // A ciphertext edit with the checksum fixed up.
    let other = backup_of_a_vault(&tmp.path().join("second"), pass.expose());
    edit_keeping_the_checksum(&other, b"prod", b"prxd");
    assert!(backup::verify(&other, &pass).is_err());
    // An accidental flip (checksum not fixed): refused, by restore too.
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(backup::verify(&path, &pass), Err(BackupError::Damaged(_))));
    let target = tmp.path().join("never");
    assert!(matches!(backup::restore(&path, &target, &pass), Err(BackupError::Damaged(_))));
    assert!(!target.exists(), "a failed restore leaves nothing behind");
}
