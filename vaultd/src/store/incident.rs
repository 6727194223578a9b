//! Incidents as the database holds them, for what reads them without the keys:
//! a running vaultd noticing a revoke-all made offline, and the offline
//! break-glass itself (`crate::incident`), which writes one unsigned row.

use super::{Store, StoreError, Txn};
use crate::state::{Incident, IncidentMode};
use rusqlite::OptionalExtension;

impl Txn<'_> {
    /// An incident's mode, if it exists.
    pub fn incident_mode(&self, id: i64) -> Result<Option<IncidentMode>, StoreError> {
        let mode: Option<String> =
            self.tx.query_row("SELECT mode FROM incident WHERE id = ?", [id], |r| r.get(0)).optional()?;
        Ok(mode.and_then(|m| m.parse().ok()))
    }

    /// The number the next incident gets.
    pub fn next_incident_id(&self) -> Result<i64, StoreError> {
        Ok(self.tx.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM incident", [], |r| r.get(0))?)
    }

    /// The incidents no vaultd has signed (an offline revoke-all's), oldest first.
    pub fn unsigned_incidents(&self) -> Result<Vec<Incident>, StoreError> {
        let mut stmt = self
            .tx
            .prepare("SELECT id, started_unix, mode, reason, report FROM incident WHERE mac IS NULL ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get(3)?, r.get(4)?))
        })?;
        let mut found = Vec::new();
        for row in rows {
            let (id, started_unix, mode, reason, report) = row?;
            if let Ok(mode) = mode.parse() {
                found.push(Incident { id, started_unix, mode, reason, report });
            }
        }
        Ok(found)
    }
}

impl Store {
    /// The newest incident's id (0: none), polled so that a revoke-all made
    /// offline, by another process, takes effect in a running vaultd too.
    pub fn latest_incident(&self) -> Result<i64, StoreError> {
        Ok(self.reader().query_row("SELECT COALESCE(MAX(id), 0) FROM incident", [], |r| r.get(0))?)
    }
}

/// Offline: how many tokens, clients and secrets a revoke-all will reach (read
/// without the key, for the report; vaultd applies it). (tokens, clients, secrets)
pub fn reach(txn: &Txn<'_>) -> Result<(u64, u64, Vec<String>), StoreError> {
    let tx = &txn.tx;
    let tokens = tx.query_row("SELECT COUNT(*) FROM token WHERE revoked_unix IS NULL", [], |r| r.get(0))?;
    let clients = tx.query_row("SELECT COUNT(*) FROM client WHERE enabled = 1", [], |r| r.get(0))?;
    let mut stmt = tx.prepare(
        "SELECT s.env || '/' || s.name FROM secret s
         JOIN secret_version v ON v.secret_id = s.id AND v.version = s.current_version
         WHERE v.state = 'current' ORDER BY s.env, s.name",
    )?;
    let secrets = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok((tokens, clients, secrets))
}
