//! The data directory and database file: owner-only from creation, and refused
//! when someone else could read or own them.

use super::StoreError;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Creates the data directory 0700 if missing; refuses one that is group- or
/// world-accessible or owned by another user.
pub fn prepare_data_dir(dir: &Path) -> Result<(), StoreError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => check_owner_only(dir, &meta),
        Ok(_) => Err(StoreError::Unsafe { path: dir.into(), problem: "not a directory".into() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::Io { path: dir.into(), source }),
        Err(source) => Err(StoreError::Io { path: dir.into(), source }),
    }
}

/// The lock a running vaultd holds on its data directory (see [`lock_data_dir`]).
pub const LOCK_FILE: &str = "vaultd.lock";

/// Held for vaultd's life: no second vaultd runs on the same data directory.
/// Released by the kernel when the process ends, however it ends.
#[derive(Debug)]
pub struct DataDirLock(#[allow(dead_code)] fs::File);

/// Takes the exclusive lock on `DIR/vaultd.lock` (flock, not waiting) and writes
/// this process's pid into it. A lock another vaultd holds is refused with its
/// pid. The offline break-glass and restore do not take it: they must work
/// beside a running or hung vaultd (SQLite's own locking orders their writes).
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock, StoreError> {
    use std::io::{Read as _, Seek as _, Write as _};
    let path = dir.join(LOCK_FILE);
    let io = |source| StoreError::Io { path: path.clone(), source };
    // Opened without truncating: the holder's pid stays readable until we own it.
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    check_owner_only(&path, &meta)?;
    if let Err(e) = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        let who = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
        return Err(StoreError::Unsafe {
            path: dir.into(),
            problem: match e {
                rustix::io::Errno::WOULDBLOCK => {
                    format!("in use by another vaultd{who}; one vaultd per data directory")
                }
                other => format!("not lockable: {other}"),
            },
        });
    }
    file.set_len(0).and_then(|()| file.rewind()).map_err(io)?;
    writeln!(file, "{}", std::process::id()).and_then(|()| file.sync_all()).map_err(io)?;
    Ok(DataDirLock(file))
}

/// Creates the database file 0600 if missing (so SQLite's -wal and -shm files,
/// which copy its mode, are 0600 too); checks an existing one like the directory.
pub(super) fn prepare_db_file(path: &Path) -> Result<(), StoreError> {
    let created = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = fs::metadata(path).map_err(|source| StoreError::Io { path: path.into(), source })?;
            check_owner_only(path, &meta)
        }
        Err(source) => Err(StoreError::Io { path: path.into(), source }),
    }
}

/// Creates `path` as a new file, 0600 from the start; refuses to replace one.
pub fn create_owner_only(path: &Path) -> Result<fs::File, StoreError> {
    fs::OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| StoreError::Io { path: path.into(), source })
}

/// Removes files in `dir` whose names start with `prefix` (a crash's leftovers);
/// best effort.
pub(super) fn remove_stale(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn check_owner_only(path: &Path, meta: &fs::Metadata) -> Result<(), StoreError> {
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        let problem = format!("owned by uid {}, not by this process's uid {me}", meta.uid());
        return Err(StoreError::Unsafe { path: path.into(), problem });
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        let problem = format!("accessible to group or others (mode {mode:04o}); chmod go-rwx it");
        return Err(StoreError::Unsafe { path: path.into(), problem });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_owner_only_and_refuses_open_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        prepare_data_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let db = dir.join("vault.db");
        prepare_db_file(&db).unwrap();
        assert_eq!(fs::metadata(&db).unwrap().mode() & 0o777, 0o600);
        prepare_db_file(&db).unwrap();

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
        let err = prepare_data_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("mode 0750"), "{err}");
        fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(prepare_db_file(&db).is_err());
    }
}
