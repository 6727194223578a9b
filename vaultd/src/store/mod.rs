//! The only code that touches rusqlite: one SQLite file in WAL mode.
//!
//! Durability: `synchronous = FULL` makes every commit fsync the WAL, so a write
//! that was acknowledged survives a crash or power loss. Reads use their own
//! connection so an fsync in progress never stalls an agent's read.

mod access;
mod audit;
mod files;
mod incident;
mod keys;
mod migrations;
mod rotation;
mod tokens;

pub use access::ClientRow;
pub use audit::{AuditFields, AuditFilter, AuditInserter, AuditRow, AuditSnapshot};
pub use files::{create_owner_only, prepare_data_dir};
pub use incident::{IncidentRow, Revoked};
pub use keys::SealedVersion;
pub use rotation::{DueRow, OldVersion, PolicyChange, Promoted, RotationRow};
pub use tokens::{NewToken, TokenRow};

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

/// A secret's metadata (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRow {
    pub env: String,
    pub name: String,
    pub provider: String,
    pub description: String,
    pub current_version: u64,
    pub created_unix: i64,
    pub updated_unix: i64,
    /// The rotation policy (schema 6).
    pub rotator: String,
    pub rotate_every_secs: Option<i64>,
    pub grace_secs: i64,
    pub next_rotation_unix: Option<i64>,
}

/// One version's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    pub version: u64,
    pub state: String,
    pub created_unix: i64,
    pub expires_unix: Option<i64>,
}

/// What a put changes besides the value; empty strings keep what is stored.
#[derive(Debug, Default, Clone)]
pub struct SecretLabels {
    pub provider: String,
    pub description: String,
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

    /// One version's state, grace end and ciphertext (`None`: destroyed).
    #[allow(clippy::type_complexity)]
    pub fn version(
        &self,
        env: &str,
        name: &str,
        version: u64,
    ) -> Result<Option<(String, Option<i64>, Option<Vec<u8>>)>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT v.state, v.expires_unix, v.ciphertext FROM secret s
             JOIN secret_version v ON v.secret_id = s.id WHERE s.env = ? AND s.name = ? AND v.version = ?",
        )?;
        Ok(stmt.query_row(params![env, name, version], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?)
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

    /// The current version's number and ciphertext.
    pub fn current(&self, env: &str, name: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT v.version, v.ciphertext FROM secret s
             JOIN secret_version v ON v.secret_id = s.id AND v.version = s.current_version
             WHERE s.env = ? AND s.name = ? AND v.state = 'current' AND v.ciphertext IS NOT NULL",
        )?;
        Ok(stmt.query_row(params![env, name], |r| Ok((r.get(0)?, r.get(1)?))).optional()?)
    }

    pub fn secret(&self, env: &str, name: &str) -> Result<Option<SecretRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!("{SECRET_COLUMNS} WHERE env = ? AND name = ?"))?;
        Ok(stmt.query_row(params![env, name], secret_row).optional()?)
    }

    pub fn list(&self, env: &str) -> Result<Vec<SecretRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!("{SECRET_COLUMNS} WHERE env = ? ORDER BY name"))?;
        let rows = stmt.query_map([env], secret_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Every version of `env/name`, newest first; `None` for an unknown secret.
    pub fn versions(&self, env: &str, name: &str) -> Result<Option<Vec<VersionRow>>, StoreError> {
        let conn = self.reader();
        let id: Option<i64> = conn
            .query_row("SELECT id FROM secret WHERE env = ? AND name = ?", params![env, name], |r| r.get(0))
            .optional()?;
        let Some(id) = id else { return Ok(None) };
        let mut stmt = conn.prepare_cached(
            "SELECT version, state, created_unix, expires_unix FROM secret_version
             WHERE secret_id = ? ORDER BY version DESC",
        )?;
        let rows = stmt
            .query_map([id], |r| {
                Ok(VersionRow {
                    version: r.get(0)?,
                    state: r.get(1)?,
                    created_unix: r.get(2)?,
                    expires_unix: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(Some(rows))
    }

    pub fn count_secrets(&self) -> Result<u64, StoreError> {
        Ok(self.reader().query_row("SELECT COUNT(*) FROM secret", [], |r| r.get(0))?)
    }
}

impl Txn<'_> {
    /// Stores a new vault's header and first key term, once.
    pub fn initialize(&self, header: &Header, term: &WrappedTerm) -> Result<(), StoreError> {
        let tx = &self.tx;
        let exists: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM vault_header)", [], |r| r.get(0))?;
        if exists {
            return Err(StoreError::AlreadyInitialized);
        }
        let now = now_unix();
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
                now
            ],
        )?;
        tx.execute(
            "INSERT INTO key_term (term, wrapped_key, created_unix) VALUES (?, ?, ?)",
            params![term.term, term.wrapped, now],
        )?;
        Ok(())
    }

    /// Adds a new current version of `env/name` (creating the secret if needed)
    /// and promotes it (see [`Txn::promote`]). `seal` gets the new version number,
    /// which the ciphertext is bound to, and runs inside the transaction.
    pub fn put<E: From<StoreError>>(
        &self,
        env: &str,
        name: &str,
        labels: &SecretLabels,
        keep: u32,
        seal: impl FnOnce(u64) -> Result<Vec<u8>, E>,
    ) -> Result<(u64, Option<Promoted>), E> {
        let tx = &self.tx;
        let now = now_unix();
        if let Some((id, _, _)) = self.secret_ids(env, name)? {
            tx.execute(
                "UPDATE secret SET provider = CASE WHEN ?1 = '' THEN provider ELSE ?1 END,
                   description = CASE WHEN ?2 = '' THEN description ELSE ?2 END WHERE id = ?3",
                params![labels.provider, labels.description, id],
            )
            .map_err(StoreError::from)?;
            let version = self.next_version(id)?;
            self.insert_version(id, version, "pending", &seal(version)?)?;
            return Ok((version, Some(self.promote(id, version, keep)?)));
        }
        tx.execute(
            "INSERT INTO secret (env, name, provider, description, current_version, created_unix, updated_unix)
             VALUES (?, ?, ?, ?, 1, ?, ?)",
            params![env, name, labels.provider, labels.description, now, now],
        )
        .map_err(StoreError::from)?;
        let id = tx.last_insert_rowid();
        self.insert_version(id, 1, "current", &seal(1)?)?;
        Ok((1, None))
    }

    /// Deletes `env/name` with every version; returns how many versions went, or
    /// `None` for an unknown secret. `secure_delete` overwrites the freed pages.
    pub fn delete(&self, env: &str, name: &str) -> Result<Option<u64>, StoreError> {
        let tx = &self.tx;
        let id: Option<i64> = tx
            .query_row("SELECT id FROM secret WHERE env = ? AND name = ?", params![env, name], |r| r.get(0))
            .optional()?;
        let Some(id) = id else { return Ok(None) };
        let destroyed = tx.execute("DELETE FROM secret_version WHERE secret_id = ?", [id])?;
        tx.execute("DELETE FROM secret WHERE id = ?", [id])?;
        Ok(Some(destroyed as u64))
    }
}

const SECRET_COLUMNS: &str = "SELECT env, name, provider, description, current_version, created_unix, updated_unix,
       rotator, rotate_every_secs, grace_secs, next_rotation_unix FROM secret";

fn secret_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SecretRow> {
    Ok(SecretRow {
        env: r.get(0)?,
        name: r.get(1)?,
        provider: r.get(2)?,
        description: r.get(3)?,
        current_version: r.get(4)?,
        created_unix: r.get(5)?,
        updated_unix: r.get(6)?,
        rotator: r.get(7)?,
        rotate_every_secs: r.get(8)?,
        grace_secs: r.get(9)?,
        next_rotation_unix: r.get(10)?,
    })
}
