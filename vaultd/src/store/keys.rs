//! The key hierarchy's stored half beyond `init`: the header that `rekey`
//! replaces (key terms are state: see `state`), and the walks `backup verify`
//! and the sanity check make over the whole file.

use super::{Store, StoreError, Txn};
use crate::crypto::Header;
use rusqlite::params;

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
}

impl Store {
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
