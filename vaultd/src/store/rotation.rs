//! Rotation's persisted state: policies, the `rotation` rows of the state machine,
//! and the version transitions (pending → current → previous → retired).

use super::{Store, StoreError, Txn, now_unix};
use rusqlite::{OptionalExtension, params};

/// A change to a secret's rotation policy; `None` keeps what is stored.
#[derive(Debug, Clone, Default)]
pub struct PolicyChange {
    /// The canonical rotator spelling (`rotation::Rotator`'s Display).
    pub rotator: Option<String>,
    /// `Some(None)` removes the schedule.
    pub every_secs: Option<Option<i64>>,
    pub grace_secs: Option<i64>,
}

impl PolicyChange {
    pub fn is_empty(&self) -> bool {
        self.rotator.is_none() && self.every_secs.is_none() && self.grace_secs.is_none()
    }
}

/// One rotation (a row of the state machine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationRow {
    pub id: i64,
    pub env: String,
    pub name: String,
    pub rotator: String,
    pub trigger: String,
    pub step: String,
    pub from_version: u64,
    pub new_version: Option<u64>,
    pub error: Option<String>,
    pub started_unix: i64,
    pub updated_unix: i64,
}

/// A secret whose scheduled rotation is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRow {
    pub env: String,
    pub name: String,
    pub rotator: String,
    pub due_unix: i64,
    /// Whether this due period was already raised as an alert.
    pub alerted: bool,
}

/// A version whose time at the provider is over and that still needs the
/// revoke-old hook, or whose grace period just ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldVersion {
    pub env: String,
    pub name: String,
    pub provider: String,
    pub rotator: String,
    pub version: u64,
    pub ciphertext: Option<Vec<u8>>,
}

/// What a promotion did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promoted {
    /// The version that became previous, if the old current was still good.
    pub previous: Option<u64>,
    /// When the previous version stops being readable.
    pub grace_until: i64,
}

const ROTATIONS: &str = "SELECT r.id, s.env, s.name, r.rotator, r.trigger, r.step, r.from_version, r.new_version,
            r.error, r.started_unix, r.updated_unix
     FROM rotation r JOIN secret s ON s.id = r.secret_id";

fn rotation_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RotationRow> {
    Ok(RotationRow {
        id: r.get(0)?,
        env: r.get(1)?,
        name: r.get(2)?,
        rotator: r.get(3)?,
        trigger: r.get(4)?,
        step: r.get(5)?,
        from_version: r.get(6)?,
        new_version: r.get(7)?,
        error: r.get(8)?,
        started_unix: r.get(9)?,
        updated_unix: r.get(10)?,
    })
}

/// The next due time of a schedule starting now (with jitter).
fn next_due(now: i64, every_secs: Option<i64>) -> Option<i64> {
    every_secs.map(|every| {
        let every = std::time::Duration::from_secs(every.max(0) as u64);
        now.saturating_add(every.as_secs() as i64).saturating_add(crate::rotation::jitter(every).as_secs() as i64)
    })
}

impl Store {
    /// Secrets with a rotation schedule, across environments, soonest due first;
    /// with `due_at`, only those due by then.
    pub fn scheduled(&self, due_at: Option<i64>) -> Result<Vec<super::SecretRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "{} WHERE next_rotation_unix IS NOT NULL AND next_rotation_unix <= ? ORDER BY next_rotation_unix, env, name",
            super::SECRET_COLUMNS
        ))?;
        let rows = stmt.query_map([due_at.unwrap_or(i64::MAX)], super::secret_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Rotations in progress (`create` or `test`), oldest first.
    pub fn rotations_in_progress(&self) -> Result<Vec<RotationRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!("{ROTATIONS} WHERE r.step IN ('create', 'test') ORDER BY r.id"))?;
        let rows = stmt.query_map([], rotation_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The latest rotation of `env/name`.
    pub fn last_rotation(&self, env: &str, name: &str) -> Result<Option<RotationRow>, StoreError> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached(&format!("{ROTATIONS} WHERE s.env = ? AND s.name = ? ORDER BY r.id DESC LIMIT 1"))?;
        Ok(stmt.query_row(params![env, name], rotation_row).optional()?)
    }

    /// Secrets whose latest rotation failed (for `status`).
    pub fn rotations_failed(&self) -> Result<Vec<RotationRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "{ROTATIONS} WHERE r.id IN (SELECT MAX(id) FROM rotation GROUP BY secret_id) AND r.step = 'failed'
             ORDER BY s.env, s.name"
        ))?;
        let rows = stmt.query_map([], rotation_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Secrets due for rotation at `now`, across environments, most overdue first.
    pub fn rotations_due(&self, now: i64) -> Result<Vec<DueRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT env, name, rotator, next_rotation_unix, COALESCE(due_alerted_unix >= next_rotation_unix, 0)
             FROM secret WHERE next_rotation_unix <= ? ORDER BY next_rotation_unix, env, name",
        )?;
        let rows = stmt
            .query_map([now], |r| {
                Ok(DueRow {
                    env: r.get(0)?,
                    name: r.get(1)?,
                    rotator: r.get(2)?,
                    due_unix: r.get(3)?,
                    alerted: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Previous versions whose grace period is over at `now`.
    pub fn grace_ended(&self, now: i64) -> Result<Vec<OldVersion>, StoreError> {
        self.old_versions("v.state = 'previous' AND COALESCE(v.expires_unix, 0) <= ?", now)
    }

    /// Versions waiting for the revoke-old hook, whose back-off is over at `now`.
    pub fn revocations_due(&self, now: i64) -> Result<Vec<OldVersion>, StoreError> {
        self.old_versions("v.revoke_pending = 1 AND COALESCE(v.revoke_after_unix, 0) <= ?", now)
    }

    fn old_versions(&self, condition: &str, now: i64) -> Result<Vec<OldVersion>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT s.env, s.name, s.provider, s.rotator, v.version, v.ciphertext
             FROM secret_version v JOIN secret s ON s.id = v.secret_id WHERE {condition} ORDER BY s.id, v.version"
        ))?;
        let rows = stmt
            .query_map([now], |r| {
                Ok(OldVersion {
                    env: r.get(0)?,
                    name: r.get(1)?,
                    provider: r.get(2)?,
                    rotator: r.get(3)?,
                    version: r.get(4)?,
                    ciphertext: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

impl Txn<'_> {
    /// The id, current version and provider of `env/name`.
    pub fn secret_ids(&self, env: &str, name: &str) -> Result<Option<(i64, u64, String)>, StoreError> {
        Ok(self
            .tx
            .query_row(
                "SELECT id, current_version, provider FROM secret WHERE env = ? AND name = ?",
                params![env, name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    /// Applies a policy change; a new schedule starts counting now. Returns false
    /// for an unknown secret.
    pub fn set_policy(&self, env: &str, name: &str, change: &PolicyChange) -> Result<bool, StoreError> {
        let now = now_unix();
        let next = change.every_secs.map(|every| next_due(now, every));
        let changed = self.tx.execute(
            "UPDATE secret SET
               rotator = COALESCE(?1, rotator),
               grace_secs = COALESCE(?2, grace_secs),
               rotate_every_secs = CASE WHEN ?3 THEN ?4 ELSE rotate_every_secs END,
               next_rotation_unix = CASE WHEN ?3 THEN ?5 ELSE next_rotation_unix END,
               due_alerted_unix = CASE WHEN ?3 THEN NULL ELSE due_alerted_unix END
             WHERE env = ?6 AND name = ?7",
            params![
                change.rotator,
                change.grace_secs,
                change.every_secs.is_some(),
                change.every_secs.flatten(),
                next.flatten(),
                env,
                name
            ],
        )?;
        Ok(changed == 1)
    }

    /// Starts a rotation; `None` if one of this secret is already in progress.
    pub fn rotation_begin(
        &self,
        secret_id: i64,
        rotator: &str,
        trigger: &str,
        from_version: u64,
    ) -> Result<Option<i64>, StoreError> {
        let now = now_unix();
        let inserted = self.tx.execute(
            "INSERT INTO rotation (secret_id, rotator, trigger, step, from_version, started_unix, updated_unix)
             VALUES (?, ?, ?, 'create', ?, ?, ?)",
            params![secret_id, rotator, trigger, from_version, now, now],
        );
        match inserted {
            Ok(_) => Ok(Some(self.tx.last_insert_rowid())),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves a rotation to `step` (`test`, `done` or `failed`).
    pub fn rotation_step(
        &self,
        id: i64,
        step: &str,
        new_version: Option<u64>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE rotation SET step = ?, new_version = COALESCE(?, new_version), error = ?, updated_unix = ?
             WHERE id = ?",
            params![step, new_version, error, now_unix(), id],
        )?;
        Ok(())
    }

    /// After a failed scheduled rotation: try again after `retry_secs` (or the
    /// secret's period, if shorter), not at every scheduler pass.
    pub fn postpone_rotation(&self, secret_id: i64, retry_secs: i64) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE secret SET next_rotation_unix = ?1 + MIN(rotate_every_secs, ?2)
             WHERE id = ?3 AND rotate_every_secs IS NOT NULL",
            params![now_unix(), retry_secs, secret_id],
        )?;
        Ok(())
    }

    /// Records that the due period of `env/name` was raised as an alert.
    pub fn rotation_alerted(&self, env: &str, name: &str) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE secret SET due_alerted_unix = ? WHERE env = ? AND name = ?",
            params![now_unix(), env, name],
        )?;
        Ok(())
    }

    /// The number the next version of `secret_id` gets.
    pub fn next_version(&self, secret_id: i64) -> Result<u64, StoreError> {
        Ok(self.tx.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM secret_version WHERE secret_id = ?",
            [secret_id],
            |r| r.get(0),
        )?)
    }

    pub fn insert_version(
        &self,
        secret_id: i64,
        version: u64,
        state: &str,
        ciphertext: &[u8],
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO secret_version (secret_id, version, state, ciphertext, created_unix) VALUES (?, ?, ?, ?, ?)",
            params![secret_id, version, state, ciphertext, now_unix()],
        )?;
        Ok(())
    }

    /// The ciphertext of a pending version (a rotation resumed after a crash).
    pub fn pending(&self, secret_id: i64, version: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tx
            .query_row(
                "SELECT ciphertext FROM secret_version WHERE secret_id = ? AND version = ? AND state = 'pending'",
                params![secret_id, version],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// Makes `version` current. The old current becomes previous (readable until
    /// its grace ends), unless it was compromised; an older previous retires at
    /// once, owing a revoke-old run when the rotator is a hook. The schedule
    /// restarts, and versions beyond the newest `keep` that are of no more use go.
    pub fn promote(&self, secret_id: i64, version: u64, keep: u32) -> Result<Promoted, StoreError> {
        let tx = &self.tx;
        let now = now_unix();
        let (current, grace, every, rotator): (u64, i64, Option<i64>, String) = tx.query_row(
            "SELECT current_version, grace_secs, rotate_every_secs, rotator FROM secret WHERE id = ?",
            [secret_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        let hook = rotator.starts_with("exec:");
        tx.execute(
            "UPDATE secret_version SET state = 'retired', revoke_pending = ?, expires_unix = NULL
             WHERE secret_id = ? AND state = 'previous'",
            params![hook, secret_id],
        )?;
        let grace_until = now.saturating_add(grace);
        let previous = tx.execute(
            "UPDATE secret_version SET state = 'previous', expires_unix = ?
             WHERE secret_id = ? AND version = ? AND state = 'current'",
            params![grace_until, secret_id, current],
        )?;
        tx.execute(
            "UPDATE secret_version SET state = 'current', expires_unix = NULL WHERE secret_id = ? AND version = ?",
            params![secret_id, version],
        )?;
        tx.execute(
            "UPDATE secret SET current_version = ?, updated_unix = ?, next_rotation_unix = ?, due_alerted_unix = NULL
             WHERE id = ?",
            params![version, now, next_due(now, every), secret_id],
        )?;
        tx.execute(
            "DELETE FROM secret_version WHERE secret_id = ? AND version <= ? AND revoke_pending = 0
               AND state IN ('retired', 'destroyed', 'compromised')",
            params![secret_id, version.saturating_sub(u64::from(keep.max(1)))],
        )?;
        Ok(Promoted { previous: (previous == 1).then_some(current), grace_until })
    }

    /// A pending version that will never be current: it owes a revoke-old run if
    /// a hook made it, else it is destroyed.
    pub fn abandon_pending(&self, secret_id: i64, version: u64, hook: bool) -> Result<(), StoreError> {
        let sql = if hook {
            "UPDATE secret_version SET state = 'retired', revoke_pending = 1 WHERE secret_id = ? AND version = ?"
        } else {
            "UPDATE secret_version SET state = 'destroyed', ciphertext = NULL WHERE secret_id = ? AND version = ?"
        };
        self.tx.execute(sql, params![secret_id, version])?;
        Ok(())
    }

    /// A previous version whose grace ended: retired, owing a revoke-old run if
    /// `hook`. False if it changed meanwhile.
    pub fn retire(&self, env: &str, name: &str, version: u64, hook: bool) -> Result<bool, StoreError> {
        let n = self.tx.execute(
            "UPDATE secret_version SET state = 'retired', revoke_pending = ?
             WHERE version = ? AND state = 'previous'
               AND secret_id = (SELECT id FROM secret WHERE env = ? AND name = ?)",
            params![hook, version, env, name],
        )?;
        Ok(n == 1)
    }

    /// The revoke-old hook ran for a version: nothing needs it any more, so its
    /// ciphertext is destroyed. With `retry_after`, it failed: try again then.
    pub fn revoke_done(&self, env: &str, name: &str, version: u64, retry_after: Option<i64>) -> Result<(), StoreError> {
        let sql = match retry_after {
            None => {
                "UPDATE secret_version SET revoke_pending = 0, revoke_after_unix = NULL, state = 'destroyed',
                   ciphertext = NULL
                 WHERE version = ?2 AND secret_id = (SELECT id FROM secret WHERE env = ?3 AND name = ?4)
                   AND ?1 IS NULL"
            }
            Some(_) => {
                "UPDATE secret_version SET revoke_after_unix = ?1
                 WHERE version = ?2 AND secret_id = (SELECT id FROM secret WHERE env = ?3 AND name = ?4)"
            }
        };
        self.tx.execute(sql, params![retry_after, version, env, name])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::SecretLabels;

    #[test]
    fn a_failed_scheduled_rotation_waits_the_retry_or_the_period_if_shorter() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        let next = |every: i64| {
            store
                .write(|txn| {
                    txn.put("prod", "k", &SecretLabels::default(), 10, |_| Ok::<_, StoreError>(vec![1]))?;
                    let change = PolicyChange { every_secs: Some(Some(every)), ..PolicyChange::default() };
                    txn.set_policy("prod", "k", &change)?;
                    let (id, _, _) = txn.secret_ids("prod", "k")?.unwrap();
                    txn.postpone_rotation(id, 900)
                })
                .unwrap();
            store.secret("prod", "k").unwrap().unwrap().next_rotation_unix
        };
        let now = now_unix();
        let after_hourly = next(3600).unwrap() - now;
        assert!((900..=902).contains(&after_hourly), "{after_hourly}");
        let after_minutely = next(60).unwrap() - now;
        assert!((60..=62).contains(&after_minutely), "{after_minutely}");
    }
}
