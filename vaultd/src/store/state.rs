//! The authenticated state's rows (see `state`): read whole at unlock, written
//! entry by entry as vaultd changes them. Nothing here decides anything: what
//! is read is checked by `state::load` before vaultd acts on any of it, and
//! what is written is what vaultd holds, with the MACs `state::mac` made.

use super::{StoreError, Txn};
use crate::state::mac::{ClientMacs, Root, SecretMacs, Table};
use crate::state::model::{Client, Grant, Incident, KeyTerm, Rotation, Secret, Token, Version};
use crate::state::{Child, Found, Persist, StoredState};
use rusqlite::{OptionalExtension, params};
use std::sync::Arc;

/// Reads a column that holds an enum's spelling; a spelling vaultd never writes
/// makes the row unreadable (it was altered).
fn spelled<T: std::str::FromStr>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<T>> {
    Ok(r.get::<_, String>(i)?.parse().ok())
}

/// Calls `each` with every row `sql` returns.
fn each_row(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    mut each: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<()>,
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare(sql)?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        each(r)?;
    }
    Ok(())
}

impl Txn<'_> {
    /// Every authenticated row (at unlock, and for `integrity ack`).
    pub fn load_state(&self) -> Result<StoredState, StoreError> {
        let mut s = StoredState::default();
        let tx = &self.tx;
        each_row(
            tx,
            "SELECT id, env, name, provider, description, current_version, created_unix, updated_unix, rotator,
                    rotate_every_secs, grace_secs, next_rotation_unix, due_alerted_unix, mac FROM secret",
            |r| {
                let row = Secret {
                    id: r.get(0)?,
                    env: r.get(1)?,
                    name: r.get(2)?,
                    provider: r.get(3)?,
                    description: r.get(4)?,
                    current_version: r.get(5)?,
                    created_unix: r.get(6)?,
                    updated_unix: r.get(7)?,
                    rotator: r.get(8)?,
                    rotate_every_secs: r.get(9)?,
                    grace_secs: r.get(10)?,
                    next_rotation_unix: r.get(11)?,
                    due_alerted_unix: r.get(12)?,
                    versions: Default::default(),
                    rotations: Default::default(),
                };
                s.secrets.push(Found { row, mac: r.get(13)? });
                Ok(())
            },
        )?;
        each_row(
            tx,
            "SELECT rowid, secret_id, version, state, ciphertext, created_unix, expires_unix, revoke_pending,
                    revoke_after_unix, mac FROM secret_version",
            |r| {
                let Some(state) = spelled(r, 3)? else {
                    s.unreadable.push((Table::Version, r.get(0)?));
                    return Ok(());
                };
                let row = Version {
                    state,
                    ciphertext: r.get::<_, Option<Vec<u8>>>(4)?.map(Arc::from),
                    created_unix: r.get(5)?,
                    expires_unix: r.get(6)?,
                    revoke_pending: r.get(7)?,
                    revoke_after_unix: r.get(8)?,
                };
                s.versions.push(Child { parent: r.get(1)?, key: r.get(2)?, row, mac: r.get(9)? });
                Ok(())
            },
        )?;
        each_row(
            tx,
            "SELECT id, secret_id, rotator, trigger, step, from_version, new_version, error, started_unix,
                    updated_unix, mac FROM rotation",
            |r| {
                let (Some(trigger), Some(step)) = (spelled(r, 3)?, spelled(r, 4)?) else {
                    s.unreadable.push((Table::Rotation, r.get(0)?));
                    return Ok(());
                };
                let row = Rotation {
                    rotator: r.get(2)?,
                    trigger,
                    step,
                    from_version: r.get(5)?,
                    new_version: r.get(6)?,
                    error: r.get(7)?,
                    started_unix: r.get(8)?,
                    updated_unix: r.get(9)?,
                };
                s.rotations.push(Child { parent: r.get(1)?, key: r.get(0)?, row, mac: r.get(10)? });
                Ok(())
            },
        )?;
        let mut stmt = tx.prepare(
            "SELECT id, name, uid, gid, exe, exe_sha256, enabled, created_unix, mac, token_only FROM client",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let row = Client {
                id: r.get(0)?,
                name: r.get(1)?,
                uid: r.get(2)?,
                gid: r.get(3)?,
                exe: r.get(4)?,
                exe_sha256: r.get(5)?,
                enabled: r.get(6)?,
                token_only: r.get(9)?,
                created_unix: r.get(7)?,
                grants: Default::default(),
            };
            s.clients.push(Found { row, mac: r.get(8)? });
        }
        each_row(tx, "SELECT rowid, client_id, pattern, created_unix, mac, kind FROM client_grant", |r| {
            let Some(kind) = spelled(r, 5)? else {
                s.unreadable.push((Table::Grant, r.get(0)?));
                return Ok(());
            };
            let row = Grant { kind, created_unix: r.get(3)? };
            s.grants.push(Child { parent: r.get(1)?, key: r.get(2)?, row, mac: r.get(4)? });
            Ok(())
        })?;
        // A token's client is named by its row id; one that names no client reads
        // with an empty name, which its MAC does not match.
        each_row(
            tx,
            "SELECT t.accessor, t.hash, COALESCE(c.name, ''), t.bind_uid, t.created_unix, t.expires_unix,
                    t.idle_secs, t.uses_left, t.last_used_unix, t.revoked_unix, t.mac, t.bind_exe
             FROM token t LEFT JOIN client c ON c.id = t.client_id",
            |r| {
                let row = Token {
                    accessor: r.get(0)?,
                    hash: r.get(1)?,
                    client: r.get(2)?,
                    bind_uid: r.get(3)?,
                    bind_exe: r.get(11)?,
                    created_unix: r.get(4)?,
                    expires_unix: r.get(5)?,
                    idle_secs: r.get(6)?,
                    uses_left: r.get(7)?,
                    last_used_unix: r.get(8)?,
                    revoked_unix: r.get(9)?,
                };
                s.tokens.push(Found { row, mac: r.get(10)? });
                Ok(())
            },
        )?;
        each_row(tx, "SELECT id, started_unix, mode, reason, report, mac FROM incident", |r| {
            let Some(mode) = spelled(r, 2)? else {
                s.unreadable.push((Table::Incident, r.get(0)?));
                return Ok(());
            };
            let row = Incident { id: r.get(0)?, started_unix: r.get(1)?, mode, reason: r.get(3)?, report: r.get(4)? };
            s.incidents.push(Found { row, mac: r.get(5)? });
            Ok(())
        })?;
        each_row(tx, "SELECT term, wrapped_key, created_unix, encryptions, rewrap, mac FROM key_term", |r| {
            let row = KeyTerm {
                term: r.get(0)?,
                wrapped_key: r.get(1)?,
                created_unix: r.get(2)?,
                encryptions: r.get(3)?,
                rewrap: r.get(4)?,
            };
            s.terms.push(Found { row, mac: r.get(5)? });
            Ok(())
        })?;
        s.root = self.state_root()?;
        Ok(s)
    }

    pub fn state_root(&self) -> Result<Option<Root>, StoreError> {
        Ok(self
            .tx
            .query_row("SELECT generation, tables, mac FROM state_root WHERE id = 1", [], |r| {
                Ok(Root { generation: r.get(0)?, tables: r.get(1)?, mac: r.get(2)? })
            })
            .optional()?)
    }

    /// A rotation id no stored row has (rotation ids are unique across secrets).
    pub fn next_rotation_id(&self) -> Result<i64, StoreError> {
        Ok(self.tx.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM rotation", [], |r| r.get(0))?)
    }
}

impl Persist for Txn<'_> {
    type Error = StoreError;

    fn set_state_root(&self, root: &Root) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO state_root (id, generation, tables, mac) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET generation = ?1, tables = ?2, mac = ?3",
            )?
            .execute(params![root.generation, root.tables, root.mac])?;
        Ok(())
    }

    /// Writes `new` (inserting it when `new.id` is 0, which then gets its id) with
    /// its MACs: the rows that differ from `old`, and the removal of children
    /// `new` no longer has. Rows that no vaultd wrote under its id are replaced or
    /// removed too.
    fn save_secret(&self, old: Option<&Secret>, new: &mut Secret, macs: &SecretMacs) -> Result<(), StoreError> {
        let tx = &self.tx;
        if new.id == 0 {
            tx.execute(
                "INSERT INTO secret (env, name, provider, description, current_version, created_unix, updated_unix,
                                     rotator, rotate_every_secs, grace_secs, next_rotation_unix, due_alerted_unix, mac)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params![
                    new.env,
                    new.name,
                    new.provider,
                    new.description,
                    new.current_version,
                    new.created_unix,
                    new.updated_unix,
                    new.rotator,
                    new.rotate_every_secs,
                    new.grace_secs,
                    new.next_rotation_unix,
                    new.due_alerted_unix,
                    macs.row
                ],
            )?;
            new.id = tx.last_insert_rowid();
        } else {
            tx.prepare_cached(
                "UPDATE secret SET env = ?, name = ?, provider = ?, description = ?, current_version = ?,
                   created_unix = ?, updated_unix = ?, rotator = ?, rotate_every_secs = ?, grace_secs = ?,
                   next_rotation_unix = ?, due_alerted_unix = ?, mac = ? WHERE id = ?",
            )?
            .execute(params![
                new.env,
                new.name,
                new.provider,
                new.description,
                new.current_version,
                new.created_unix,
                new.updated_unix,
                new.rotator,
                new.rotate_every_secs,
                new.grace_secs,
                new.next_rotation_unix,
                new.due_alerted_unix,
                macs.row,
                new.id
            ])?;
        }
        let id = new.id;
        let keep_versions: Vec<u64> = new.versions.keys().copied().collect();
        tx.prepare_cached(
            "DELETE FROM secret_version WHERE secret_id = ?1 AND version NOT IN (SELECT value FROM json_each(?2))",
        )?
        .execute(params![id, serde_json::to_string(&keep_versions).unwrap_or_default()])?;
        for (number, v) in &new.versions {
            if old.and_then(|o| o.versions.get(number)) == Some(v) {
                continue;
            }
            tx.prepare_cached(
                "INSERT INTO secret_version (secret_id, version, state, ciphertext, created_unix, expires_unix,
                                             revoke_pending, revoke_after_unix, mac)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (secret_id, version) DO UPDATE SET state = ?3, ciphertext = ?4, created_unix = ?5,
                   expires_unix = ?6, revoke_pending = ?7, revoke_after_unix = ?8, mac = ?9",
            )?
            .execute(params![
                id,
                number,
                v.state.as_str(),
                v.ciphertext.as_deref(),
                v.created_unix,
                v.expires_unix,
                v.revoke_pending,
                v.revoke_after_unix,
                macs.versions.get(number).map(|m| &m[..])
            ])?;
        }
        let keep_rotations: Vec<i64> = new.rotations.keys().copied().collect();
        tx.prepare_cached("DELETE FROM rotation WHERE secret_id = ?1 AND id NOT IN (SELECT value FROM json_each(?2))")?
            .execute(params![id, serde_json::to_string(&keep_rotations).unwrap_or_default()])?;
        for (rid, r) in &new.rotations {
            if old.and_then(|o| o.rotations.get(rid)) == Some(r) {
                continue;
            }
            tx.prepare_cached(
                "INSERT INTO rotation (id, secret_id, rotator, trigger, step, from_version, new_version, error,
                                       started_unix, updated_unix, mac)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (id) DO UPDATE SET secret_id = ?2, rotator = ?3, trigger = ?4, step = ?5,
                   from_version = ?6, new_version = ?7, error = ?8, started_unix = ?9, updated_unix = ?10, mac = ?11",
            )?
            .execute(params![
                rid,
                id,
                r.rotator,
                r.trigger.as_str(),
                r.step.as_str(),
                r.from_version,
                r.new_version,
                r.error,
                r.started_unix,
                r.updated_unix,
                macs.rotations.get(rid).map(|m| &m[..])
            ])?;
        }
        Ok(())
    }

    /// Deletes rows that name a parent that does not exist (never vaultd's).
    fn delete_orphans(&self) -> Result<(), StoreError> {
        self.tx.execute_batch(
            "DELETE FROM secret_version WHERE secret_id NOT IN (SELECT id FROM secret);
             DELETE FROM rotation WHERE secret_id NOT IN (SELECT id FROM secret);
             DELETE FROM client_grant WHERE client_id NOT IN (SELECT id FROM client);
             DELETE FROM token WHERE client_id NOT IN (SELECT id FROM client);",
        )?;
        Ok(())
    }

    /// Deletes a secret with every row under it. `secure_delete` overwrites the
    /// freed pages.
    fn delete_secret(&self, id: i64) -> Result<(), StoreError> {
        self.tx.execute("DELETE FROM secret_version WHERE secret_id = ?", [id])?;
        self.tx.execute("DELETE FROM rotation WHERE secret_id = ?", [id])?;
        self.tx.execute("DELETE FROM secret WHERE id = ?", [id])?;
        Ok(())
    }

    /// Writes a client and its grants (see [`Txn::save_secret`]).
    fn save_client(&self, old: Option<&Client>, new: &mut Client, macs: &ClientMacs) -> Result<(), StoreError> {
        let tx = &self.tx;
        if new.id == 0 {
            tx.execute(
                "INSERT INTO client (name, uid, gid, exe, exe_sha256, enabled, token_only, created_unix, mac)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params![
                    new.name,
                    new.uid,
                    new.gid,
                    new.exe,
                    new.exe_sha256,
                    new.enabled,
                    new.token_only,
                    new.created_unix,
                    macs.row
                ],
            )?;
            new.id = tx.last_insert_rowid();
        } else {
            tx.prepare_cached(
                "UPDATE client SET name = ?, uid = ?, gid = ?, exe = ?, exe_sha256 = ?, enabled = ?, token_only = ?,
                   created_unix = ?, mac = ? WHERE id = ?",
            )?
            .execute(params![
                new.name,
                new.uid,
                new.gid,
                new.exe,
                new.exe_sha256,
                new.enabled,
                new.token_only,
                new.created_unix,
                macs.row,
                new.id
            ])?;
        }
        let patterns: Vec<&String> = new.grants.keys().collect();
        tx.prepare_cached(
            "DELETE FROM client_grant WHERE client_id = ?1 AND pattern NOT IN (SELECT value FROM json_each(?2))",
        )?
        .execute(params![new.id, serde_json::to_string(&patterns).unwrap_or_default()])?;
        for (pattern, g) in &new.grants {
            if old.and_then(|o| o.grants.get(pattern)) == Some(g) {
                continue;
            }
            tx.prepare_cached(
                "INSERT INTO client_grant (client_id, pattern, kind, created_unix, mac) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (client_id, pattern) DO UPDATE SET kind = ?3, created_unix = ?4, mac = ?5",
            )?
            .execute(params![
                new.id,
                pattern,
                g.kind.as_str(),
                g.created_unix,
                macs.grants.get(pattern).map(|m| &m[..])
            ])?;
        }
        Ok(())
    }

    /// Deletes a client, its grants and its tokens.
    fn delete_client(&self, id: i64) -> Result<(), StoreError> {
        self.tx.execute("DELETE FROM token WHERE client_id = ?", [id])?;
        self.tx.execute("DELETE FROM client_grant WHERE client_id = ?", [id])?;
        self.tx.execute("DELETE FROM client WHERE id = ?", [id])?;
        Ok(())
    }

    /// Writes a token of the client whose row id is `client_id`.
    fn save_token(&self, t: &Token, client_id: i64, mac: &[u8]) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO token (accessor, hash, client_id, bind_uid, created_unix, expires_unix, idle_secs,
                                    uses_left, last_used_unix, revoked_unix, mac, bind_exe)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (accessor) DO UPDATE SET hash = ?2, client_id = ?3, bind_uid = ?4, created_unix = ?5,
                   expires_unix = ?6, idle_secs = ?7, uses_left = ?8, last_used_unix = ?9, revoked_unix = ?10,
                   mac = ?11, bind_exe = ?12",
            )?
            .execute(params![
                t.accessor,
                t.hash,
                client_id,
                t.bind_uid,
                t.created_unix,
                t.expires_unix,
                t.idle_secs,
                t.uses_left,
                t.last_used_unix,
                t.revoked_unix,
                mac,
                t.bind_exe
            ])?;
        Ok(())
    }

    fn delete_token(&self, accessor: &str) -> Result<(), StoreError> {
        self.tx.execute("DELETE FROM token WHERE accessor = ?", [accessor])?;
        Ok(())
    }

    /// Writes an incident; one with id 0 is inserted and gets its id.
    fn save_incident(&self, i: &mut Incident, mac: Option<&[u8]>) -> Result<(), StoreError> {
        if i.id == 0 {
            self.tx.execute(
                "INSERT INTO incident (started_unix, mode, reason, report, mac) VALUES (?, ?, ?, ?, ?)",
                params![i.started_unix, i.mode.as_str(), i.reason, i.report, mac],
            )?;
            i.id = self.tx.last_insert_rowid();
        } else {
            self.tx.execute(
                "INSERT INTO incident (id, started_unix, mode, reason, report, mac) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET started_unix = ?2, mode = ?3, reason = ?4, report = ?5, mac = ?6",
                params![i.id, i.started_unix, i.mode.as_str(), i.reason, i.report, mac],
            )?;
        }
        Ok(())
    }

    fn save_term(&self, t: &KeyTerm, mac: &[u8]) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO key_term (term, wrapped_key, created_unix, encryptions, rewrap, mac)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (term) DO UPDATE SET wrapped_key = ?2, created_unix = ?3, encryptions = ?4,
                   rewrap = ?5, mac = ?6",
            )?
            .execute(params![t.term, t.wrapped_key, t.created_unix, t.encryptions, t.rewrap, mac])?;
        Ok(())
    }

    fn delete_term(&self, term: u32) -> Result<(), StoreError> {
        self.tx.execute("DELETE FROM key_term WHERE term = ?", [term])?;
        Ok(())
    }
}
