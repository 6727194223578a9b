//! The key hierarchy's stored half beyond `init`: the header that `rekey`
//! replaces, key terms with their encryption counts, and the queries `rewrap`
//! walks versions with.
//!
//! A version's key term is not a column: it is bytes 2..=5 of its ciphertext
//! (format byte, then the term, big-endian), so the term a version is sealed
//! under can never disagree with what it claims. SQLite compares BLOBs with
//! memcmp, so `substr(ciphertext, 2, 4) < ?` with the term's big-endian bytes is
//! a numeric comparison.

use super::{Store, StoreError, Txn, now_unix};
use crate::crypto::{Header, WrappedTerm};
use rusqlite::params;
use std::collections::BTreeSet;

/// A version sealed under an older term, as `rewrap` reads it.
pub struct SealedVersion {
    /// SQLite's rowid: the cursor a rewrap resumes from.
    pub rowid: u64,
    pub env: String,
    pub name: String,
    pub version: u64,
    pub ciphertext: Vec<u8>,
}

fn term_bytes(term: u32) -> Vec<u8> {
    term.to_be_bytes().to_vec()
}

impl Txn<'_> {
    /// Replaces the header (rekey): the one row changes in this transaction, so a
    /// crash leaves either the old or the new passphrase working, never neither.
    pub fn set_header(&self, header: &Header) -> Result<(), StoreError> {
        let changed = self.tx.execute(
            "UPDATE vault_header SET kdf_memory_kib = ?, kdf_iterations = ?, kdf_parallelism = ?,
               kdf_salt = ?, wrapped_root = ? WHERE id = 1",
            params![
                header.kdf.memory_kib,
                header.kdf.iterations,
                header.kdf.parallelism,
                header.salt,
                header.wrapped_root
            ],
        )?;
        if changed != 1 {
            return Err(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows));
        }
        Ok(())
    }

    /// The newest term and how many values it has sealed.
    pub fn newest_term(&self) -> Result<(u32, u64), StoreError> {
        Ok(self
            .tx
            .prepare_cached("SELECT term, encryptions FROM key_term ORDER BY term DESC LIMIT 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?)
    }

    /// Counts `n` more values sealed under `term`.
    pub fn count_encryptions(&self, term: u32, n: u64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("UPDATE key_term SET encryptions = encryptions + ? WHERE term = ?")?
            .execute(params![n, term])?;
        Ok(())
    }

    /// Stores a new term; `rewrap` marks it as the target of an unfinished rewrap.
    pub fn insert_term(&self, term: &WrappedTerm, rewrap: bool) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO key_term (term, wrapped_key, created_unix, rewrap) VALUES (?, ?, ?, ?)",
            params![term.term, term.wrapped, now_unix(), rewrap],
        )?;
        Ok(())
    }

    /// The target term of a `rotate-key --rewrap` that has not finished yet.
    pub fn rewrap_target(&self) -> Result<Option<u32>, StoreError> {
        Ok(self.tx.query_row("SELECT MAX(term) FROM key_term WHERE rewrap = 1", [], |r| r.get(0))?)
    }

    pub fn rewrap_finished(&self) -> Result<(), StoreError> {
        self.tx.execute("UPDATE key_term SET rewrap = 0 WHERE rewrap = 1", [])?;
        Ok(())
    }

    /// Up to `limit` versions sealed under a term older than `target`, with rowid
    /// above `after`, in rowid order.
    pub fn older_versions(&self, after: u64, target: u32, limit: u32) -> Result<Vec<SealedVersion>, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT v.rowid, s.env, s.name, v.version, v.ciphertext
             FROM secret_version v JOIN secret s ON s.id = v.secret_id
             WHERE v.rowid > ?1 AND v.ciphertext IS NOT NULL AND substr(v.ciphertext, 2, 4) < ?2
             ORDER BY v.rowid LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![after, term_bytes(target), limit], |r| {
                Ok(SealedVersion {
                    rowid: r.get(0)?,
                    env: r.get(1)?,
                    name: r.get(2)?,
                    version: r.get(3)?,
                    ciphertext: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// How many versions are sealed under a term older than `target`.
    pub fn count_older_versions(&self, target: u32) -> Result<u64, StoreError> {
        Ok(self.tx.query_row(
            "SELECT COUNT(*) FROM secret_version WHERE ciphertext IS NOT NULL AND substr(ciphertext, 2, 4) < ?",
            [term_bytes(target)],
            |r| r.get(0),
        )?)
    }

    pub fn set_ciphertext(&self, rowid: u64, ciphertext: &[u8]) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("UPDATE secret_version SET ciphertext = ? WHERE rowid = ?")?
            .execute(params![ciphertext, rowid])?;
        Ok(())
    }

    /// Deletes every term older than `newest` that no stored version names, and
    /// returns them. One pass over the versions.
    pub fn retire_unused_terms(&self, newest: u32) -> Result<Vec<u32>, StoreError> {
        let mut used = BTreeSet::new();
        {
            let mut stmt = self
                .tx
                .prepare("SELECT DISTINCT substr(ciphertext, 2, 4) FROM secret_version WHERE ciphertext IS NOT NULL")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                if let Ok(bytes) = <[u8; 4]>::try_from(r.get::<_, Vec<u8>>(0)?.as_slice()) {
                    used.insert(u32::from_be_bytes(bytes));
                }
            }
        }
        let mut stmt = self.tx.prepare("SELECT term FROM key_term WHERE term < ? ORDER BY term")?;
        let older: Vec<u32> = stmt.query_map([newest], |r| r.get(0))?.collect::<Result<_, _>>()?;
        let retired: Vec<u32> = older.into_iter().filter(|t| !used.contains(t)).collect();
        for term in &retired {
            self.tx.execute("DELETE FROM key_term WHERE term = ?", [term])?;
        }
        Ok(retired)
    }
}

impl Store {
    /// The newest key term in the store (0 before `init`).
    pub fn newest_term(&self) -> Result<u32, StoreError> {
        Ok(self.reader().query_row("SELECT COALESCE(MAX(term), 0) FROM key_term", [], |r| r.get(0))?)
    }

    /// The stored terms with their encryption counts, oldest first.
    pub fn terms(&self) -> Result<Vec<(u32, u64)>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare("SELECT term, encryptions FROM key_term ORDER BY term")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Calls `each(env, name, version, ciphertext)` for every stored version (in
    /// one read transaction), stopping at the first error; returns how many.
    pub fn each_version<E: From<StoreError>>(
        &self,
        mut each: impl FnMut(&str, &str, u64, &[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut conn = self.reader();
        let tx = conn.transaction().map_err(StoreError::from)?;
        let mut stmt = tx
            .prepare(
                "SELECT s.env, s.name, v.version, v.ciphertext FROM secret_version v
                 JOIN secret s ON s.id = v.secret_id WHERE v.ciphertext IS NOT NULL ORDER BY v.rowid",
            )
            .map_err(StoreError::from)?;
        let mut rows = stmt.query([]).map_err(StoreError::from)?;
        let mut count = 0;
        while let Some(r) = rows.next().map_err(StoreError::from)? {
            let row = || -> rusqlite::Result<(String, String, u64, Vec<u8>)> {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            };
            let (env, name, version, ciphertext) = row().map_err(StoreError::from)?;
            each(&env, &name, version, &ciphertext)?;
            count += 1;
        }
        Ok(count)
    }

    /// `PRAGMA integrity_check`: `None` when the file is sound, else SQLite's first complaint.
    pub fn integrity_problem(&self) -> Result<Option<String>, StoreError> {
        let verdict: String = self.reader().query_row("PRAGMA integrity_check(1)", [], |r| r.get(0))?;
        Ok((verdict != "ok").then_some(verdict))
    }
}
