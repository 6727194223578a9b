//! The only code that touches rusqlite: one SQLite file in WAL mode.
//!
//! Durability: `synchronous = FULL` makes every commit fsync the WAL, so a write
//! that was acknowledged survives a crash or power loss. Reads use their own
//! connection so an fsync in progress never stalls an agent's read.

mod audit;
mod files;
mod incident;
mod keys;
mod migrations;
mod state;

pub use audit::{AuditFields, AuditFilter, AuditInserter, AuditRow, AuditSnapshot, Head};
pub use files::{DataDirLock, LOCK_FILE, create_owner_only, lock_data_dir, prepare_data_dir};
pub use incident::reach as incident_reach;

use crate::crypto::{Header, KdfParams, WrappedTerm};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is {problem}")]
    Unsafe { path: PathBuf, problem: String },
    #[error(
        "the database is from a newer vaultd (schema {found}; this build knows up to {known}); refusing to open it"
    )]
    NewerSchema { found: u32, known: u32 },
    #[error("the vault is already initialized")]
    AlreadyInitialized,
    #[error("the database stayed locked; the snapshot could not be taken")]
    SnapshotBusy,
    #[error("{0}")]
    Malformed(&'static str),
}

pub struct Store {
    /// Both write connections sit behind one lock, so SQLite never sees two
    /// writers at once (no busy waits). std Mutex, not tokio's: every critical
    /// section is a short synchronous SQLite call that never awaits.
    writers: Mutex<Writers>,
    /// A few read connections, so concurrent agent reads do not queue on one.
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
    path: PathBuf,
    schema_version: u32,
}

struct Writers {
    /// `synchronous = FULL`: every commit is fsynced before it is acknowledged.
    durable: Connection,
    /// `synchronous = NORMAL`: for batches of read records only. Its commits
    /// survive a vaultd crash; the next durable commit syncs them to disk.
    /// Kept separate because switching the pragma would re-prepare statements.
    fast: Connection,
}

/// Read connections: enough for the runtime's workers plus a blocking task.
const READERS: usize = 4;

/// An open write transaction. Everything an action changes, and the audit entries
/// that record it, go through one `Txn`, so they commit or vanish together.
pub struct Txn<'c> {
    tx: Transaction<'c>,
}

pub const DB_FILE: &str = "vault.db";

/// Snapshots for `backup` are taken into `DATA_DIR/.backup-*.tmp` (owner-only like
/// the database) and deleted once streamed; leftovers of a crash go at the next open.
const SNAPSHOT_PREFIX: &str = ".backup-";

pub(crate) use crate::clock::now_unix;

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // The bundled SQLite has STAT4, which lets the planner look at bound values and
    // so re-prepares a cached statement at every execution (measured: every agent
    // read re-parsed its SELECT, ~6x its cost). Plans that ignore bound values are
    // as good here: every hot query is a primary-key or unique-index lookup.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        return Err(StoreError::Sqlite(rusqlite::Error::InvalidQuery));
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA secure_delete = ON;
         PRAGMA trusted_schema = OFF;",
    )?;
    Ok(())
}

impl Store {
    /// Opens (creating 0600 if missing) `DIR/vault.db` and brings its schema up to date.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        files::prepare_data_dir(data_dir)?;
        let path = data_dir.join(DB_FILE);
        files::prepare_db_file(&path)?;
        files::remove_stale(data_dir, SNAPSHOT_PREFIX);
        let mut durable = Connection::open(&path)?;
        configure(&durable)?;
        let schema_version = migrations::apply(&mut durable)?;
        let fast = Connection::open(&path)?;
        configure(&fast)?;
        fast.pragma_update(None, "synchronous", "NORMAL")?;
        let readers = (0..READERS)
            .map(|_| {
                let conn = Connection::open(&path)?;
                configure(&conn)?;
                Ok(Mutex::new(conn))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Store {
            writers: Mutex::new(Writers { durable, fast }),
            readers,
            next_reader: Default::default(),
            path,
            schema_version,
        })
    }

    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }

    fn writers(&self) -> MutexGuard<'_, Writers> {
        // A panic while holding the lock cannot leave SQLite half-written (the
        // transaction rolls back on drop), so a poisoned lock is safe to reuse.
        self.writers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A free read connection, or (all busy) the next in turn.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        for conn in &self.readers {
            if let Ok(guard) = conn.try_lock() {
                return guard;
            }
        }
        let n = self.next_reader.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.readers[n % self.readers.len()].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key hierarchy's stored half, or `None` before `init`.
    pub fn header(&self) -> Result<Option<(Header, Vec<WrappedTerm>)>, StoreError> {
        let conn = self.reader();
        let header = conn
            .query_row(
                "SELECT kdf_memory_kib, kdf_iterations, kdf_parallelism, kdf_salt, wrapped_root
                 FROM vault_header WHERE id = 1",
                [],
                |r| {
                    Ok(Header {
                        kdf: KdfParams { memory_kib: r.get(0)?, iterations: r.get(1)?, parallelism: r.get(2)? },
                        salt: r.get(3)?,
                        wrapped_root: r.get(4)?,
                    })
                },
            )
            .optional()?;
        let Some(header) = header else { return Ok(None) };
        let mut stmt = conn.prepare("SELECT term, wrapped_key FROM key_term ORDER BY term")?;
        let terms = stmt
            .query_map([], |r| Ok(WrappedTerm { term: r.get(0)?, wrapped: r.get(1)? }))?
            .collect::<Result<_, _>>()?;
        Ok(Some((header, terms)))
    }

    /// Runs `f` in one write transaction and commits it, fsync-durable; any error
    /// rolls everything back.
    pub fn write<T, E: From<StoreError>>(&self, f: impl FnOnce(&Txn<'_>) -> Result<T, E>) -> Result<T, E> {
        self.write_with(true, f)
    }

    /// [`Store::write`], with `durable = false` committing without waiting for
    /// fsync (`synchronous = NORMAL`): the commit survives a vaultd crash, and an
    /// OS crash loses at most what the next durable commit would have synced.
    /// Used only for batches of read audit records.
    pub fn write_with<T, E: From<StoreError>>(
        &self,
        durable: bool,
        f: impl FnOnce(&Txn<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut writers = self.writers();
        let conn = if durable { &mut writers.durable } else { &mut writers.fast };
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(StoreError::from)?;
        let txn = Txn { tx };
        let out = f(&txn)?;
        txn.tx.commit().map_err(StoreError::from)?;
        Ok(out)
    }

    /// How many secrets the file holds (a backup's report; not acted on).
    pub fn count_secrets(&self) -> Result<u64, StoreError> {
        Ok(self.reader().query_row("SELECT COUNT(*) FROM secret", [], |r| r.get(0))?)
    }

    /// An online, consistent copy of the database, in a temp file in the data
    /// directory (0600, deleted when dropped). Contains only what the database
    /// does: ciphertexts, wrapped keys, metadata, the audit log.
    pub fn snapshot(&self) -> Result<tempfile::NamedTempFile, StoreError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let io = |source| StoreError::Io { path: dir.into(), source };
        let tmp = tempfile::Builder::new().prefix(SNAPSHOT_PREFIX).suffix(".tmp").tempfile_in(dir).map_err(io)?;
        let src = Connection::open_with_flags(&self.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        src.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut dst = Connection::open(tmp.path())?;
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
        // One step copies every page inside one read transaction: a consistent
        // snapshot that writers (WAL) never wait for and that never restarts.
        // Busy/Locked (a checkpoint holding a lock) is retried briefly.
        for _ in 0..100 {
            match backup.step(-1)? {
                rusqlite::backup::StepResult::Done => {
                    drop(backup);
                    drop(dst);
                    return Ok(tmp);
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        Err(StoreError::SnapshotBusy)
    }
}

impl Txn<'_> {
    /// Stores a new vault's header, once (its first key term is state: see `state`).
    pub fn initialize(&self, header: &Header) -> Result<(), StoreError> {
        let tx = &self.tx;
        let exists: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM vault_header)", [], |r| r.get(0))?;
        if exists {
            return Err(StoreError::AlreadyInitialized);
        }
        tx.execute(
            "INSERT INTO vault_header
               (id, kdf_memory_kib, kdf_iterations, kdf_parallelism, kdf_salt, wrapped_root, created_unix)
             VALUES (1, ?, ?, ?, ?, ?, ?)",
            params![
                header.kdf.memory_kib,
                header.kdf.iterations,
                header.kdf.parallelism,
                header.salt,
                header.wrapped_root,
                now_unix()
            ],
        )?;
        Ok(())
    }
}
