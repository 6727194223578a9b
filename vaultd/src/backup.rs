//! Backup files: what `vaultctl backup` writes, `backup verify` checks and
//! `restore` puts back.
//!
//! ```text
//! MAGIC (16) | image length (u64 BE) | image | SHA-256 (32) | HMAC-SHA256 (32)
//! ```
//!
//! The image is an online, consistent SQLite snapshot of the database (see
//! [`Store::snapshot`]): ciphertexts, wrapped keys, metadata and the audit log,
//! never a plaintext value or key. Both trailers cover every byte before them.
//! The SHA-256 catches accidental damage where no key is at hand (`restore`);
//! the HMAC, under a key derived from the root key, catches deliberate edits,
//! including to the metadata no ciphertext protects (clients, grants), and a file
//! from another vault (`backup verify`, which needs the passphrase).
//!
//! vaultd produces the bytes and vaultctl writes the file: see `vaultctl backup`.

use crate::audit::{Actor, Event, Kind, Outcome, chain};
use crate::crypto::{Checksum, CryptoError, MAC_LEN, SecretBytes, StreamMac, Unlocked, VersionId};
use crate::store::{DB_FILE, Store, StoreError, create_owner_only, prepare_data_dir};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 16] = b"vaultd-backup-1\n";
const HEADER_LEN: u64 = 16 + 8;
const TRAILER_LEN: u64 = 32 + MAC_LEN as u64;
/// Bytes per chunk: under the gRPC message limit.
pub const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is not a vaultd backup file", .0.display())]
    NotABackup(PathBuf),
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    #[error("wrong passphrase")]
    WrongPassphrase,
    #[error("the backup fails its authentication: it was altered, or it is another vault's")]
    Forged,
    #[error("{env}/{name} version {version} does not decrypt")]
    Record { env: String, name: String, version: u64 },
    #[error("audit log broken at entry {seq}: {problem}")]
    Audit { seq: u64, problem: String },
    #[error("the backup's state was altered: {0}")]
    State(String),
    #[error("{} is not empty; restore never overwrites", .0.display())]
    NotEmpty(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// The daemon's side: a snapshot turned into a backup file's bytes, chunk by
/// chunk. The snapshot's temp file is deleted when this is dropped.
pub struct Writer {
    _snapshot: tempfile::NamedTempFile,
    image: File,
    image_len: u64,
    left: u64,
    checksum: Checksum,
    mac: Option<StreamMac>,
    stage: Stage,
}

enum Stage {
    Header,
    Image,
    Trailer,
    Done,
}

impl Writer {
    pub fn new(snapshot: tempfile::NamedTempFile, mac: StreamMac) -> Result<Writer, StoreError> {
        let io = |source| StoreError::Io { path: snapshot.path().into(), source };
        let image = snapshot.reopen().map_err(io)?;
        let image_len = image.metadata().map_err(io)?.len();
        Ok(Writer {
            _snapshot: snapshot,
            image,
            image_len,
            left: image_len,
            checksum: Checksum::default(),
            mac: Some(mac),
            stage: Stage::Header,
        })
    }

    /// The size of the whole backup file.
    pub fn file_len(&self) -> u64 {
        HEADER_LEN + self.image_len + TRAILER_LEN
    }

    fn covered(&mut self, bytes: Vec<u8>) -> Vec<u8> {
        self.checksum.update(&bytes);
        if let Some(mac) = &mut self.mac {
            mac.update(&bytes);
        }
        bytes
    }
}

impl Iterator for Writer {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<io::Result<Vec<u8>>> {
        match self.stage {
            Stage::Header => {
                self.stage = Stage::Image;
                let mut header = MAGIC.to_vec();
                header.extend_from_slice(&self.image_len.to_be_bytes());
                Some(Ok(self.covered(header)))
            }
            Stage::Image if self.left > 0 => {
                let mut chunk = vec![0; CHUNK.min(usize::try_from(self.left).unwrap_or(CHUNK))];
                if let Err(e) = self.image.read_exact(&mut chunk) {
                    self.stage = Stage::Done;
                    return Some(Err(e));
                }
                self.left -= chunk.len() as u64;
                Some(Ok(self.covered(chunk)))
            }
            Stage::Image => {
                self.stage = Stage::Trailer;
                self.next()
            }
            Stage::Trailer => {
                self.stage = Stage::Done;
                let checksum = std::mem::take(&mut self.checksum).finish();
                let mac = self.mac.take().map(StreamMac::finish).unwrap_or([0; MAC_LEN]);
                Some(Ok([&checksum[..], &mac[..]].concat()))
            }
            Stage::Done => None,
        }
    }
}

/// What a verified or restored backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The backup file's size.
    pub bytes: u64,
    pub secrets: u64,
    /// Versions decrypted (verify) or stored (restore).
    pub versions: u64,
    pub key_terms: u64,
    /// Audit entries whose chain was checked (verify only).
    pub audit_entries: u64,
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.into(), source }
}

/// Checks the envelope of `src` (magic, length, SHA-256) while copying its image
/// into `dst`; returns the file's size and the HMAC it claims.
fn unpack(src: &Path, dst: &mut File, dst_path: &Path) -> Result<(u64, Vec<u8>), BackupError> {
    let mut file = File::open(src).map_err(io_at(src))?;
    let size = file.metadata().map_err(io_at(src))?.len();
    let mut header = [0u8; HEADER_LEN as usize];
    if size < HEADER_LEN + TRAILER_LEN {
        return Err(BackupError::NotABackup(src.into()));
    }
    file.read_exact(&mut header).map_err(io_at(src))?;
    if &header[..16] != MAGIC {
        return Err(BackupError::NotABackup(src.into()));
    }
    let image_len = u64::from_be_bytes(header[16..].try_into().unwrap_or_default());
    if HEADER_LEN.checked_add(image_len).and_then(|n| n.checked_add(TRAILER_LEN)) != Some(size) {
        return Err(BackupError::Damaged("its length does not match its header (truncated or extended)".into()));
    }
    let mut checksum = Checksum::default();
    checksum.update(&header);
    let mut left = image_len;
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let n = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
        file.read_exact(&mut buf[..n]).map_err(io_at(src))?;
        checksum.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(io_at(dst_path))?;
        left -= n as u64;
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    file.read_exact(&mut trailer).map_err(io_at(src))?;
    if checksum.finish()[..] != trailer[..32] {
        return Err(BackupError::Damaged("its checksum does not match".into()));
    }
    dst.sync_all().map_err(io_at(dst_path))?;
    Ok((size, trailer[32..].to_vec()))
}

/// Whether `src`'s HMAC under `keys` is `claimed` (a second pass over the file:
/// the key is known only once the image's header was opened).
fn mac_matches(src: &Path, keys: &Unlocked, claimed: &[u8]) -> Result<bool, BackupError> {
    let mut file = File::open(src).map_err(io_at(src))?;
    let covered = file.metadata().map_err(io_at(src))?.len().saturating_sub(TRAILER_LEN);
    let mut mac = keys.backup_mac();
    let mut reader = (&mut file).take(covered);
    let mut buf = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buf).map_err(io_at(src))? {
            0 => break,
            n => mac.update(&buf[..n]),
        }
    }
    Ok(mac.matches(claimed))
}

/// A backup unpacked into a private temp dir and checked all through: its
/// envelope, SQLite's own check, the passphrase, the HMAC, every version's
/// decryption, the authenticated state and the audit chain.
struct Checked {
    dir: tempfile::TempDir,
    report: Report,
}

fn check(src: &Path, passphrase: &SecretBytes) -> Result<Checked, BackupError> {
    use std::os::unix::fs::PermissionsExt as _;
    // Owner-only from creation, like a data dir: it holds a copy of the vault.
    let dir = tempfile::Builder::new()
        .prefix("vaultd-verify-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .map_err(io_at(&std::env::temp_dir()))?;
    let db = dir.path().join(DB_FILE);
    let (bytes, claimed) = unpack(src, &mut create_owner_only(&db)?, &db)?;
    let store = Store::open(dir.path())?;
    if let Some(problem) = store.integrity_problem()? {
        return Err(BackupError::Damaged(problem));
    }
    let (header, terms) = store.header()?.ok_or_else(|| BackupError::Damaged("it holds no vault header".into()))?;
    let keys = Unlocked::open(passphrase, &header, &terms).map_err(|e| match e {
        CryptoError::WrongPassphrase => BackupError::WrongPassphrase,
        // A wrapped key term that does not open: the file was altered.
        CryptoError::DecryptionFailed => BackupError::Forged,
        other => BackupError::Crypto(other),
    })?;
    if !mac_matches(src, &keys, &claimed)? {
        return Err(BackupError::Forged);
    }
    let versions =
        store.each_version(|env, name, version, ciphertext| {
            keys.open_version(&VersionId { env, name, version }, ciphertext)
                .map(drop)
                .map_err(|_| BackupError::Record { env: env.into(), name: name.into(), version })
        })?;
    let mut verifier: Option<chain::Verifier<'_>> = None;
    let snapshot = store.audit_walk(|s, row| {
        verifier.get_or_insert_with(|| chain::Verifier::new(&keys, s.anchor.as_ref())).check(&row)
    })?;
    let verifier = verifier.unwrap_or_else(|| chain::Verifier::new(&keys, snapshot.anchor.as_ref()));
    let audit_entries = match verifier.finish(snapshot.head.as_ref(), snapshot.anchor.as_ref()) {
        crate::audit::Verdict::Intact { entries, .. } => entries,
        crate::audit::Verdict::Broken { seq, problem } => return Err(BackupError::Audit { seq, problem }),
    };
    // The state as a vaultd unlocking it would find it: nothing changed behind its back.
    let head_generation = snapshot.head.as_ref().map(|h| h.state_generation);
    let stored = store.write(|txn| txn.load_state())?;
    if let Some(v) = crate::state::load::check(&keys, stored, head_generation).violations.first() {
        return Err(BackupError::State(v.to_string()));
    }
    let report =
        Report { bytes, secrets: store.count_secrets()?, versions, key_terms: terms.len() as u64, audit_entries };
    Ok(Checked { dir, report })
}

/// `backup verify`: checks `src` with `passphrase` (see [`check`]). Restores nothing.
pub fn verify(src: &Path, passphrase: &SecretBytes) -> Result<Report, BackupError> {
    Ok(check(src, passphrase)?.report)
}

/// `restore`: checks `src` with `passphrase` all through first (see [`check`]),
/// then puts its image into `dir`, which must be empty or missing (created
/// 0700; the database 0600). Refuses to overwrite anything, and a backup that
/// fails any check leaves nothing behind. The restore is recorded in the
/// restored vault's audit log, chained at its next unlock. Offline: run it as
/// the user vaultd runs as, with vaultd stopped.
pub fn restore(src: &Path, dir: &Path, passphrase: &SecretBytes) -> Result<Report, BackupError> {
    let created = match std::fs::read_dir(dir).map(|mut entries| entries.next().is_some()) {
        Ok(true) => return Err(BackupError::NotEmpty(dir.into())),
        Ok(false) => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => return Err(io_at(dir)(e)),
    };
    let checked = check(src, passphrase)?;
    prepare_data_dir(dir)?;
    let db = dir.join(DB_FILE);
    let restored = restore_into(&checked, src, dir, &db);
    if restored.is_err() {
        // Leave the directory as it was found: nothing of a failed restore stays.
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        if created {
            let _ = std::fs::remove_dir(dir);
        }
    }
    restored
}

fn restore_into(checked: &Checked, src: &Path, dir: &Path, db: &Path) -> Result<Report, BackupError> {
    let checked_db = checked.dir.path().join(DB_FILE);
    {
        // The checked image, as one file (SQLite folds its WAL in on close).
        let mut from = File::open(&checked_db).map_err(io_at(&checked_db))?;
        let mut to = create_owner_only(db)?;
        io::copy(&mut from, &mut to).map_err(io_at(db))?;
        to.sync_all().map_err(io_at(db))?;
    }
    let store = Store::open(dir)?;
    let actor = Actor {
        uid: Some(rustix::process::geteuid().as_raw()),
        pid: Some(rustix::process::getpid().as_raw_nonzero().get()),
        ..Actor::default()
    };
    let name = src.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let event =
        Event::new(Kind::VaultRestore, Outcome::Ok, &actor).with("from", name).with("bytes", checked.report.bytes);
    // No key here: stored unchained, like every record written while sealed.
    store.write(|txn| chain::append(txn, None, &[event]))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))?;
    Ok(Report { audit_entries: 0, ..checked.report.clone() })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// A well-formed envelope around `image` (the MAC is not checked by `unpack`).
    fn envelope(image: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(image.len() as u64).to_be_bytes());
        out.extend_from_slice(image);
        let mut sum = Checksum::default();
        sum.update(&out);
        out.extend_from_slice(&sum.finish());
        out.extend_from_slice(&[7; MAC_LEN]);
        out
    }

    fn unpack_bytes(bytes: &[u8]) -> Result<Vec<u8>, BackupError> {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("b"), dir.path().join("img"));
        std::fs::write(&src, bytes).unwrap();
        unpack(&src, &mut File::create(&dst).unwrap(), &dst)?;
        Ok(std::fs::read(&dst).unwrap())
    }

    #[test]
    fn a_well_formed_envelope_unpacks() {
        assert_eq!(unpack_bytes(&envelope(b"image bytes")).unwrap(), b"image bytes");
        assert!(matches!(unpack_bytes(b"SQLite format 3\0"), Err(BackupError::NotABackup(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The envelope parser: any truncation, extension or flipped byte is
        /// refused, and arbitrary bytes never panic.
        #[test]
        fn damaged_envelopes_are_refused(
            image in proptest::collection::vec(any::<u8>(), 0..300),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            mask in 1u8..,
            junk in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let good = envelope(&image);
            // The MAC bytes are checked by verify, not unpack: flip anywhere before them.
            let covered = good.len() - MAC_LEN;
            prop_assert!(unpack_bytes(&good[..cut.index(good.len())]).is_err());
            let mut extended = good.clone();
            extended.push(0);
            prop_assert!(unpack_bytes(&extended).is_err());
            let mut flipped = good.clone();
            flipped[flip.index(covered)] ^= mask;
            prop_assert!(unpack_bytes(&flipped).is_err());
            let _ = unpack_bytes(&junk);
        }
    }
}
