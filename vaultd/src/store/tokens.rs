//! Bearer tokens: stored as keyed hashes, looked up by hash, listed by accessor.

use super::{Store, StoreError, Txn};
use rusqlite::{OptionalExtension, params};

/// A token's metadata (never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub accessor: String,
    pub client: String,
    pub bind_uid: Option<u32>,
    pub created_unix: i64,
    pub expires_unix: Option<i64>,
    pub idle_secs: Option<i64>,
    pub uses_left: Option<i64>,
    pub last_used_unix: Option<i64>,
    pub revoked_unix: Option<i64>,
}

/// A new token's settings.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub accessor: &'a str,
    pub hash: &'a [u8],
    pub client: &'a str,
    pub bind_uid: Option<u32>,
    pub created_unix: i64,
    pub expires_unix: Option<i64>,
    pub idle_secs: Option<i64>,
    pub uses: Option<i64>,
}

const TOKENS: &str = "SELECT t.accessor, c.name, t.bind_uid, t.created_unix, t.expires_unix, t.idle_secs,
            t.uses_left, t.last_used_unix, t.revoked_unix
     FROM token t JOIN client c ON c.id = t.client_id";

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        accessor: r.get(0)?,
        client: r.get(1)?,
        bind_uid: r.get(2)?,
        created_unix: r.get(3)?,
        expires_unix: r.get(4)?,
        idle_secs: r.get(5)?,
        uses_left: r.get(6)?,
        last_used_unix: r.get(7)?,
        revoked_unix: r.get(8)?,
    })
}

impl Txn<'_> {
    /// Stores a token; `false` when its client does not exist.
    pub fn token_insert(&self, t: &NewToken<'_>) -> Result<bool, StoreError> {
        let inserted = self.tx.execute(
            "INSERT INTO token (accessor, hash, client_id, bind_uid, created_unix, expires_unix, idle_secs, uses_left)
             SELECT ?, ?, id, ?, ?, ?, ?, ? FROM client WHERE name = ?",
            params![t.accessor, t.hash, t.bind_uid, t.created_unix, t.expires_unix, t.idle_secs, t.uses, t.client],
        )?;
        Ok(inserted == 1)
    }

    /// Tokens of `client` that are neither revoked nor past their TTL.
    pub fn tokens_active(&self, client: &str, now: i64) -> Result<u64, StoreError> {
        Ok(self.tx.query_row(
            "SELECT COUNT(*) FROM token t JOIN client c ON c.id = t.client_id
             WHERE c.name = ? AND t.revoked_unix IS NULL AND (t.expires_unix IS NULL OR t.expires_unix > ?)",
            params![client, now],
            |r| r.get(0),
        )?)
    }

    pub fn token_by_hash(&self, hash: &[u8]) -> Result<Option<TokenRow>, StoreError> {
        Ok(self.tx.prepare_cached(&format!("{TOKENS} WHERE t.hash = ?"))?.query_row([hash], token_row).optional()?)
    }

    /// Records a use: the time, and one use fewer when uses are counted.
    pub fn token_use(&self, accessor: &str, now: i64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "UPDATE token SET last_used_unix = ?, uses_left = CASE WHEN uses_left IS NULL THEN NULL ELSE uses_left - 1 END
                 WHERE accessor = ?",
            )?
            .execute(params![now, accessor])?;
        Ok(())
    }

    /// Revokes one token (`None` for every live one); returns how many were revoked.
    pub fn token_revoke(&self, accessor: Option<&str>, now: i64) -> Result<u64, StoreError> {
        let n = self.tx.execute(
            "UPDATE token SET revoked_unix = ? WHERE revoked_unix IS NULL AND (?2 IS NULL OR accessor = ?2)",
            params![now, accessor],
        )?;
        Ok(n as u64)
    }

    pub fn token_exists(&self, accessor: &str) -> Result<bool, StoreError> {
        Ok(self.tx.query_row("SELECT EXISTS (SELECT 1 FROM token WHERE accessor = ?)", [accessor], |r| r.get(0))?)
    }
}

impl Store {
    /// One token by accessor (a watch re-checks its token at every update).
    pub fn token(&self, accessor: &str) -> Result<Option<TokenRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!("{TOKENS} WHERE t.accessor = ?"))?;
        Ok(stmt.query_row([accessor], token_row).optional()?)
    }

    pub fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!("{TOKENS} ORDER BY t.created_unix, t.accessor"))?;
        let rows = stmt.query_map([], token_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }
}
