//! Incidents: revoke-all's changes, in one transaction, and their records.

use super::{Store, StoreError, Txn, now_unix};
use rusqlite::{OptionalExtension, params};

/// One stored incident; `report` is its JSON report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentRow {
    pub id: i64,
    pub started_unix: i64,
    pub mode: String,
    pub reason: String,
    pub report: String,
}

/// What a revoke-all changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    pub tokens: u64,
    pub clients: u64,
    /// `env/name` of every secret whose current version it marked compromised.
    pub secrets: Vec<String>,
}

fn incident_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IncidentRow> {
    Ok(IncidentRow { id: r.get(0)?, started_unix: r.get(1)?, mode: r.get(2)?, reason: r.get(3)?, report: r.get(4)? })
}

impl Txn<'_> {
    /// Revokes every live token, disables every client, and marks every current
    /// version (and a previous one still in grace) compromised: no agent can read
    /// anything until the operator rotates and re-enables.
    pub fn revoke_everything(&self) -> Result<Revoked, StoreError> {
        let tx = &self.tx;
        let now = now_unix();
        let tokens = self.token_revoke(None, now)?;
        let clients = tx.execute("UPDATE client SET enabled = 0 WHERE enabled = 1", [])? as u64;
        let mut stmt = tx.prepare(
            "SELECT s.env || '/' || s.name FROM secret s
             JOIN secret_version v ON v.secret_id = s.id AND v.version = s.current_version
             WHERE v.state = 'current' ORDER BY s.env, s.name",
        )?;
        let secrets = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        tx.execute("UPDATE secret_version SET state = 'compromised' WHERE state IN ('current', 'previous')", [])?;
        Ok(Revoked { tokens, clients, secrets })
    }

    pub fn incident_insert(&self, mode: &str, reason: &str, report: &str) -> Result<i64, StoreError> {
        self.tx.execute(
            "INSERT INTO incident (started_unix, mode, reason, report) VALUES (?, ?, ?, ?)",
            params![now_unix(), mode, reason, report],
        )?;
        Ok(self.tx.last_insert_rowid())
    }

    /// An incident's mode (`online`, `offline`), if it exists.
    pub fn incident_mode(&self, id: i64) -> Result<Option<String>, StoreError> {
        Ok(self.tx.query_row("SELECT mode FROM incident WHERE id = ?", [id], |r| r.get(0)).optional()?)
    }

    pub fn incident_set_report(&self, id: i64, report: &str) -> Result<(), StoreError> {
        self.tx.execute("UPDATE incident SET report = ? WHERE id = ?", params![report, id])?;
        Ok(())
    }
}

impl Store {
    /// The newest incident's id (0: none), polled so that a revoke-all made
    /// offline, by another process, takes effect in a running vaultd too.
    pub fn latest_incident(&self) -> Result<i64, StoreError> {
        Ok(self.reader().query_row("SELECT COALESCE(MAX(id), 0) FROM incident", [], |r| r.get(0))?)
    }

    pub fn incidents(&self) -> Result<Vec<IncidentRow>, StoreError> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached("SELECT id, started_unix, mode, reason, report FROM incident ORDER BY id")?;
        let rows = stmt.query_map([], incident_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn incident(&self, id: i64) -> Result<Option<IncidentRow>, StoreError> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached("SELECT id, started_unix, mode, reason, report FROM incident WHERE id = ?")?;
        Ok(stmt.query_row([id], incident_row).optional()?)
    }

    /// The secrets whose current version is compromised (every environment).
    pub fn compromised(&self) -> Result<Vec<super::SecretRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "{} WHERE (id, current_version) IN (SELECT secret_id, version FROM secret_version WHERE state = 'compromised')
             ORDER BY env, name",
            super::SECRET_COLUMNS
        ))?;
        let rows = stmt.query_map([], super::secret_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }
}
