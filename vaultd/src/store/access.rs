//! Clients and their grants.

use super::{Store, StoreError, Txn, now_unix};
use rusqlite::{OptionalExtension, params};

/// A client with its grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRow {
    pub name: String,
    pub uid: u32,
    pub gid: Option<u32>,
    pub exe: Option<String>,
    pub exe_sha256: Option<String>,
    pub enabled: bool,
    pub grants: Vec<String>,
    pub created_unix: i64,
}

const CLIENTS: &str = "SELECT c.id, c.name, c.uid, c.gid, c.exe, c.enabled, c.created_unix,
            COALESCE((SELECT json_group_array(pattern) FROM client_grant g WHERE g.client_id = c.id), '[]'),
            c.exe_sha256
     FROM client c";

fn client_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClientRow> {
    let grants: String = r.get(7)?;
    let mut grants: Vec<String> = serde_json::from_str(&grants).unwrap_or_default();
    grants.sort();
    Ok(ClientRow {
        name: r.get(1)?,
        uid: r.get(2)?,
        gid: r.get(3)?,
        exe: r.get(4)?,
        exe_sha256: r.get(8)?,
        enabled: r.get(5)?,
        created_unix: r.get(6)?,
        grants,
    })
}

impl Txn<'_> {
    /// Adds a client; `false` if the name is taken.
    pub fn client_add(&self, c: &ClientRow) -> Result<bool, StoreError> {
        let added = self.tx.execute(
            "INSERT INTO client (name, uid, gid, exe, exe_sha256, enabled, created_unix) VALUES (?, ?, ?, ?, ?, 1, ?)
             ON CONFLICT (name) DO NOTHING",
            params![c.name, c.uid, c.gid, c.exe, c.exe_sha256, now_unix()],
        )?;
        if added == 1 {
            self.client_grant(&c.name, &c.grants)?;
        }
        Ok(added == 1)
    }

    /// `false` for an unknown client.
    pub fn client_remove(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.tx.execute("DELETE FROM client WHERE name = ?", [name])? == 1)
    }

    pub fn client_set_enabled(&self, name: &str, enabled: bool) -> Result<bool, StoreError> {
        Ok(self.tx.execute("UPDATE client SET enabled = ? WHERE name = ?", params![enabled, name])? == 1)
    }

    /// Adds grants (existing ones are kept); `false` for an unknown client.
    pub fn client_grant(&self, name: &str, patterns: &[String]) -> Result<bool, StoreError> {
        let Some(id) = self.client_id(name)? else { return Ok(false) };
        for p in patterns {
            self.tx.execute(
                "INSERT INTO client_grant (client_id, pattern, created_unix) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                params![id, p, now_unix()],
            )?;
        }
        Ok(true)
    }

    /// Removes grants (absent ones are ignored); `false` for an unknown client.
    pub fn client_ungrant(&self, name: &str, patterns: &[String]) -> Result<bool, StoreError> {
        let Some(id) = self.client_id(name)? else { return Ok(false) };
        for p in patterns {
            self.tx.execute("DELETE FROM client_grant WHERE client_id = ? AND pattern = ?", params![id, p])?;
        }
        Ok(true)
    }

    fn client_id(&self, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.tx.query_row("SELECT id FROM client WHERE name = ?", [name], |r| r.get(0)).optional()?)
    }

    pub fn client(&self, name: &str) -> Result<Option<ClientRow>, StoreError> {
        Ok(self.tx.query_row(&format!("{CLIENTS} WHERE c.name = ?"), [name], client_row).optional()?)
    }
}

impl Store {
    pub fn client(&self, name: &str) -> Result<Option<ClientRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!("{CLIENTS} WHERE c.name = ?"))?;
        Ok(stmt.query_row([name], client_row).optional()?)
    }

    pub fn clients(&self) -> Result<Vec<ClientRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!("{CLIENTS} ORDER BY c.name"))?;
        let rows = stmt.query_map([], client_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The enabled clients a caller with this uid could match (the policy checks
    /// the other selectors).
    pub fn clients_for_uid(&self, uid: u32) -> Result<Vec<ClientRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!("{CLIENTS} WHERE c.uid = ? AND c.enabled = 1 ORDER BY c.name"))?;
        let rows = stmt.query_map([uid], client_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }
}
