//! Audit rows: appending inside a write transaction, querying, and a consistent
//! snapshot for verification and export. The chaining itself (MACs) is the
//! audit module's job; this file only stores what it is given.

use super::{Store, StoreError, Txn};
use rusqlite::{OptionalExtension, params};

/// One stored audit entry, or a batch of them. `actor` and `detail` are JSON
/// objects as text: the MAC covers exactly these bytes (and `records`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: u64,
    pub time_unix_ms: i64,
    pub kind: String,
    pub class: String,
    pub outcome: String,
    pub actor: String,
    pub secret: String,
    pub detail: String,
    pub mac: Option<Vec<u8>>,
    /// A batch's journal records, which are its entries, as stored: compressed
    /// (`audit::batch`); `None` in a row of one entry.
    pub records: Option<Vec<u8>>,
}

/// An entry's text fields, borrowed: kind, class, outcome, actor, secret, detail.
#[derive(Debug, Clone, Copy)]
pub struct AuditFields<'a>(pub [&'a str; 6]);

impl AuditRow {
    pub fn fields(&self) -> AuditFields<'_> {
        AuditFields([&self.kind, &self.class, &self.outcome, &self.actor, &self.secret, &self.detail])
    }
}

impl AuditFields<'_> {
    pub fn to_row(self, seq: u64, time_unix_ms: i64, mac: Option<Vec<u8>>) -> AuditRow {
        let [kind, class, outcome, actor, secret, detail] = self.0.map(str::to_owned);
        AuditRow { seq, time_unix_ms, kind, class, outcome, actor, secret, detail, mac, records: None }
    }
}

/// Inserts entries (see [`Txn::audit_inserter`]).
pub struct AuditInserter<'t>(rusqlite::CachedStatement<'t>);

impl AuditInserter<'_> {
    pub fn insert(
        &mut self,
        seq: u64,
        time_unix_ms: i64,
        fields: AuditFields<'_>,
        mac: Option<&[u8]>,
        records: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let [kind, class, outcome, actor, secret, detail] = fields.0;
        self.0.execute(params![seq, time_unix_ms, kind, class, outcome, actor, secret, detail, mac, records])?;
        Ok(())
    }
}

/// What `audit query` filters on; `None`/empty means "any".
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since_unix_ms: Option<i64>,
    pub until_unix_ms: Option<i64>,
    /// An exact kind (`secret.read`), a kind's family (`secret`), or a class (`security`).
    pub kind: Option<String>,
    /// The client name recorded in the actor.
    pub client: Option<String>,
    /// `env/name`, or a bare name in any environment.
    pub secret: Option<String>,
    pub limit: u32,
}

impl AuditFilter {
    /// Whether the entry made at `time_unix_ms` with `fields` is one the filter asks for.
    pub fn matches(&self, time_unix_ms: i64, fields: AuditFields<'_>) -> bool {
        let [kind, class, _, actor, secret, _] = fields.0;
        let kind_ok = self
            .kind
            .as_deref()
            .is_none_or(|k| kind == k || class == k || kind.strip_prefix(k).is_some_and(|rest| rest.starts_with('.')));
        let secret_ok = self.secret.as_deref().is_none_or(|s| match s.split_once('/') {
            Some(_) => secret == s,
            None => secret.rsplit_once('/').is_some_and(|(_, name)| name == s),
        });
        let client_ok = self.client.as_deref().is_none_or(|c| {
            serde_json::from_str::<serde_json::Value>(actor).is_ok_and(|a| a["client"].as_str() == Some(c))
        });
        kind_ok
            && secret_ok
            && client_ok
            && self.since_unix_ms.is_none_or(|t| time_unix_ms >= t)
            && self.until_unix_ms.is_none_or(|t| time_unix_ms < t)
    }
}

const COLUMNS: &str = "seq, time_unix_ms, kind, class, outcome, actor, secret, detail, mac, records";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        seq: r.get(0)?,
        time_unix_ms: r.get(1)?,
        kind: r.get(2)?,
        class: r.get(3)?,
        outcome: r.get(4)?,
        actor: r.get(5)?,
        secret: r.get(6)?,
        detail: r.get(7)?,
        mac: r.get(8)?,
        records: r.get(9)?,
    })
}

/// The audit head row: the newest chained entry, the state generation it was
/// written at, and its MAC over both (see `audit::chain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub mac: Vec<u8>,
    pub state_generation: u64,
}

const HEAD: &str = "SELECT seq, head_mac, state_generation FROM audit_head WHERE id = 1";

fn head(r: &rusqlite::Row<'_>) -> rusqlite::Result<Head> {
    Ok(Head { seq: r.get(0)?, mac: r.get(1)?, state_generation: r.get(2)? })
}

/// The seq of the newest acknowledgement of integrity problems (0: none).
const ACKNOWLEDGED: &str = "(SELECT COALESCE(MAX(seq), 0) FROM audit WHERE kind = 'integrity.acknowledged')";

impl Txn<'_> {
    /// The highest seq in use: the newest entry's, or the anchor's after retention
    /// emptied the table (0 for a new log).
    pub fn audit_max_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .tx
            .prepare_cached("SELECT COALESCE(MAX(seq), (SELECT seq FROM audit_anchor WHERE id = 1), 0) FROM audit")?
            .query_row([], |r| r.get(0))?)
    }

    /// The stored head.
    pub fn audit_head(&self) -> Result<Option<Head>, StoreError> {
        Ok(self.tx.query_row(HEAD, [], head).optional()?)
    }

    /// The first entry at or before `seq` stored without a MAC, if any.
    pub fn audit_first_unsigned(&self, upto: u64) -> Result<Option<u64>, StoreError> {
        Ok(self.tx.query_row("SELECT MIN(seq) FROM audit WHERE mac IS NULL AND seq <= ?", [upto], |r| r.get(0))?)
    }

    /// Integrity problems recorded since the last acknowledgement: (seq, kind,
    /// detail), oldest first.
    pub fn audit_open_problems(&self) -> Result<Vec<(u64, String, String)>, StoreError> {
        let mut stmt = self.tx.prepare_cached(&format!(
            "SELECT seq, kind, detail FROM audit WHERE kind IN ('integrity.violation', 'audit.tampered')
               AND seq > {ACKNOWLEDGED} ORDER BY seq"
        ))?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The MAC of entry `seq`, if it exists and is chained.
    pub fn audit_mac_at(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tx
            .query_row("SELECT mac FROM audit WHERE seq = ?", [seq], |r| r.get::<_, Option<Vec<u8>>>(0))
            .optional()?
            .flatten())
    }

    /// The newest chained entry: (seq, MAC).
    pub fn audit_last_chained(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self
            .tx
            .query_row("SELECT seq, mac FROM audit WHERE mac IS NOT NULL ORDER BY seq DESC LIMIT 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    /// Entries after `seq`, oldest first.
    pub fn audit_after(&self, seq: u64) -> Result<Vec<AuditRow>, StoreError> {
        let mut stmt = self.tx.prepare_cached(&format!("SELECT {COLUMNS} FROM audit WHERE seq > ? ORDER BY seq"))?;
        let rows = stmt.query_map([seq], row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// A statement inserting entries, prepared once for a whole batch.
    pub fn audit_inserter(&self) -> Result<AuditInserter<'_>, StoreError> {
        Ok(AuditInserter(self.tx.prepare_cached(
            "INSERT INTO audit (seq, time_unix_ms, kind, class, outcome, actor, secret, detail, mac, records)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )?))
    }

    pub fn audit_set_mac(&self, seq: u64, mac: &[u8]) -> Result<(), StoreError> {
        self.tx.prepare_cached("UPDATE audit SET mac = ? WHERE seq = ?")?.execute(params![mac, seq])?;
        Ok(())
    }

    pub fn audit_set_head(&self, h: &Head) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO audit_head (id, seq, head_mac, state_generation) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET seq = ?1, head_mac = ?2, state_generation = ?3",
            )?
            .execute(params![h.seq, h.mac, h.state_generation])?;
        Ok(())
    }

    /// How far the read journal has been imported: (record number, its journal
    /// MAC, the MAC of the pair).
    #[allow(clippy::type_complexity)]
    pub fn audit_journal(&self) -> Result<Option<(u64, Vec<u8>, Vec<u8>)>, StoreError> {
        Ok(self
            .tx
            .query_row("SELECT jseq, jmac, mac FROM audit_journal WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?)
    }

    pub fn audit_set_journal(&self, jseq: u64, jmac: &[u8], mac: &[u8]) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO audit_journal (id, jseq, jmac, mac) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET jseq = ?1, jmac = ?2, mac = ?3",
            )?
            .execute(params![jseq, jmac, mac])?;
        Ok(())
    }

    pub fn audit_anchor(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self
            .tx
            .query_row("SELECT seq, mac FROM audit_anchor WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// Deletes chained rows older than `before_unix_ms` (a batch's time is its
    /// newest entry's), never the newest row, and moves the anchor to the last
    /// deleted. Returns (last deleted seq, how many entries), or `None` when
    /// nothing was old enough.
    pub fn audit_prune(&self, before_unix_ms: i64) -> Result<Option<(u64, u64)>, StoreError> {
        // Never past an integrity problem that is not acknowledged: it stays in
        // the log, and in `status`, until the owner has seen it.
        let upto: Option<(u64, Vec<u8>)> = self
            .tx
            .query_row(
                &format!(
                    "SELECT seq, mac FROM audit
                     WHERE time_unix_ms < ?1 AND mac IS NOT NULL AND seq < (SELECT MAX(seq) FROM audit)
                       AND seq < COALESCE((SELECT MIN(seq) FROM audit
                                           WHERE kind IN ('integrity.violation', 'audit.tampered')
                                             AND seq > {ACKNOWLEDGED}), 9223372036854775807)
                     ORDER BY seq DESC LIMIT 1"
                ),
                [before_unix_ms],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((upto, mac)) = upto else { return Ok(None) };
        // Entries, not rows: a row may hold a batch of them.
        let after = self.audit_anchor()?.map_or(0, |(seq, _)| seq);
        self.tx.execute("DELETE FROM audit WHERE seq <= ?", [upto])?;
        self.tx.execute(
            "INSERT INTO audit_anchor (id, seq, mac) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET seq = ?1, mac = ?2",
            params![upto, mac],
        )?;
        Ok(Some((upto, upto.saturating_sub(after))))
    }
}

/// A consistent read of the whole log: every row, the head and the anchor, all
/// from one read transaction, so a verification never races a concurrent append.
pub struct AuditSnapshot {
    pub head: Option<Head>,
    pub anchor: Option<(u64, Vec<u8>)>,
}

impl Store {
    /// Rows newest first, from those that may hold entries in `filter`'s time
    /// range (a batch's time is its newest entry's), until `each` returns `false`.
    /// The other rules are the caller's ([`AuditFilter::matches`]), since a
    /// batch's entries are not columns.
    pub fn audit_scan_back(&self, filter: &AuditFilter, each: impl FnMut(AuditRow) -> bool) -> Result<(), StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM audit
             WHERE (?1 IS NULL OR time_unix_ms >= ?1) AND (?2 IS NULL OR records IS NOT NULL OR time_unix_ms < ?2)
             ORDER BY seq DESC"
        ))?;
        visit(stmt.query(params![filter.since_unix_ms, filter.until_unix_ms])?, each)
    }

    /// Walks every entry in seq order inside one read transaction on a connection
    /// of its own (agents' reads are not held up), calling `each` per row; stops
    /// early when `each` returns `false`.
    pub fn audit_walk(
        &self,
        mut each: impl FnMut(&AuditSnapshot, AuditRow) -> bool,
    ) -> Result<AuditSnapshot, StoreError> {
        let mut conn = rusqlite::Connection::open_with_flags(&self.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let tx = conn.transaction()?;
        let head = tx.query_row(HEAD, [], head).optional()?;
        let anchor = tx
            .query_row("SELECT seq, mac FROM audit_anchor WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let snapshot = AuditSnapshot { head, anchor };
        {
            let mut stmt = tx.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))?;
            visit(stmt.query([])?, |row| each(&snapshot, row))?;
        }
        Ok(snapshot)
    }

    /// The rows holding entries after `after_seq`, oldest first, until `each`
    /// returns `false`.
    pub fn audit_scan(&self, after_seq: u64, each: impl FnMut(AuditRow) -> bool) -> Result<(), StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM audit WHERE seq > ? ORDER BY seq"))?;
        visit(stmt.query([after_seq])?, each)
    }
}

/// Calls `each` with every row of `rows` until it returns `false`: the rows are
/// read one at a time, so a log of millions never sits in memory.
fn visit(mut rows: rusqlite::Rows<'_>, mut each: impl FnMut(AuditRow) -> bool) -> Result<(), StoreError> {
    while let Some(r) = rows.next()? {
        if !each(row(r)?) {
            break;
        }
    }
    Ok(())
}
