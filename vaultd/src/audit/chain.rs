//! Chaining entries with MACs, and checking the chain.
//!
//! `mac(n) = HMAC(audit key, mac(n-1) || content(n))` over the rows, starting from
//! 32 zero bytes (or, after retention, from the anchor: the last pruned row's
//! MAC). A row is one entry, or a [`batch`] of journaled ones under one MAC. The
//! head row carries its own MAC over the newest chained row, so cutting entries
//! off the end is caught too.
//!
//! While unlocked, where the chain ends (the [`Tip`]) is kept in memory, never
//! re-read from the table: rows deleted, forged or un-chained behind vaultd's back
//! stay visible to `audit verify` instead of being chained over. The tip is found
//! at unlock, from the head checked against its MAC ([`resume`]); entries written
//! while sealed (stored unchained) are chained then, in order.

use super::Kind;
use super::batch;
use super::event::{Event, now_ms};
use crate::crypto::{MAC_LEN, Unlocked};
use crate::store::{AuditFields, AuditRow, Head, StoreError, Txn};
use serde_json::Value;

pub(super) const GENESIS: [u8; MAC_LEN] = [0; MAC_LEN];

/// The newest chained row: what the next row's MAC links to (`seq` is its
/// newest entry's), and the state generation the head records with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tip {
    pub seq: u64,
    pub mac: Vec<u8>,
    pub generation: u64,
}

/// The bytes a row's MAC covers: every stored field, length-prefixed so no two
/// different rows encode alike (a batch's records last). An entry's encoding
/// is also the read journal's record format.
pub(super) fn content(row: &AuditRow) -> Vec<u8> {
    let records = row.records.as_deref();
    let mut out = head(row, records.map(<[u8]>::len));
    out.extend_from_slice(records.unwrap_or_default());
    out
}

/// `content` without a batch's records themselves (`records` bytes of them
/// follow), so that the bulk of a batch is MAC'd where it lies, not copied.
fn head(row: &AuditRow, records: Option<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(72 + row.actor.len() + row.detail.len());
    header(&mut out, row.seq, row.time_unix_ms);
    for field in row.fields().0 {
        put(&mut out, |out| out.extend_from_slice(field.as_bytes()));
    }
    if let Some(len) = records {
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out
}

/// Appends to `out` the `content` of an entry numbered `seq` at
/// `time_unix_ms` without building its row first (the read journal's path):
/// its kind, class and outcome, then its actor, secret (the concatenation of
/// `secret`) and detail.
pub(super) fn encode(
    out: &mut Vec<u8>,
    seq: u64,
    time_unix_ms: i64,
    fields: [&str; 3],
    actor: &impl serde::Serialize,
    secret: &[&str],
    detail: &impl serde::Serialize,
) {
    fn json(out: &mut Vec<u8>, value: &impl serde::Serialize) {
        let at = out.len();
        if serde_json::to_writer(&mut *out, value).is_err() {
            out.truncate(at);
            out.extend_from_slice(b"{}");
        }
    }
    header(out, seq, time_unix_ms);
    for text in fields {
        put(out, |out| out.extend_from_slice(text.as_bytes()));
    }
    put(out, |out| json(out, actor));
    put(out, |out| secret.iter().for_each(|part| out.extend_from_slice(part.as_bytes())));
    put(out, |out| json(out, detail));
}

fn header(out: &mut Vec<u8>, seq: u64, time_unix_ms: i64) {
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&time_unix_ms.to_be_bytes());
}

/// Appends one field, written by `write`, after its length.
fn put(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    write(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// The entry `content` encoded, borrowed: (seq, time, fields), or `None` if
/// `bytes` are not one.
pub(super) fn fields(bytes: &[u8]) -> Option<(u64, i64, AuditFields<'_>)> {
    fn take<'b>(bytes: &mut &'b [u8], n: usize) -> Option<&'b [u8]> {
        let (head, rest) = bytes.split_at_checked(n)?;
        *bytes = rest;
        Some(head)
    }
    let mut rest = bytes;
    let seq = u64::from_be_bytes(take(&mut rest, 8)?.try_into().ok()?);
    let time_unix_ms = i64::from_be_bytes(take(&mut rest, 8)?.try_into().ok()?);
    let mut fields = [""; 6];
    for field in &mut fields {
        let len = u32::from_be_bytes(take(&mut rest, 4)?.try_into().ok()?) as usize;
        *field = std::str::from_utf8(take(&mut rest, len)?).ok()?;
    }
    rest.is_empty().then_some((seq, time_unix_ms, AuditFields(fields)))
}

/// The entry `content` encoded (`mac` unset), or `None` if `bytes` are not one.
#[cfg(test)]
pub(super) fn decode(bytes: &[u8]) -> Option<AuditRow> {
    let (seq, time_unix_ms, fields) = fields(bytes)?;
    Some(fields.to_row(seq, time_unix_ms, None))
}

/// The MAC of `row` chained onto `tip`, which then moves to `row`.
fn chain_row(keys: &Unlocked, tip: &mut Tip, row: &AuditRow) -> Vec<u8> {
    chain(keys, tip, row.seq, &[&content(row)])
}

/// The MAC of entry `seq`, whose content comes in `parts`, chained onto `tip`,
/// which then moves to it.
fn chain(keys: &Unlocked, tip: &mut Tip, seq: u64, parts: &[&[u8]]) -> Vec<u8> {
    let mac = keys.audit_mac(&tip.mac, parts).to_vec();
    tip.seq = seq;
    tip.mac.clone_from(&mac);
    mac
}

/// Writes the head: the tip, at the state generation it records.
pub fn set_head(txn: &Txn<'_>, keys: &Unlocked, tip: &Tip) -> Result<(), StoreError> {
    let mac = keys.audit_head_mac(tip.seq, &tip.mac, tip.generation).to_vec();
    txn.audit_set_head(&Head { seq: tip.seq, mac, state_generation: tip.generation })
}

/// Appends `events` inside `txn`. Unlocked (`chain` given), each is chained onto
/// the tip, which advances (the caller keeps the new tip only if `txn` commits);
/// sealed, they are stored unchained until the next unlock.
pub fn append(
    txn: &Txn<'_>,
    chain: Option<(&Unlocked, &mut Tip)>,
    events: &[Event],
) -> Result<Vec<AuditRow>, StoreError> {
    let time_unix_ms = now_ms();
    append_rows(txn, chain, events.iter().map(|e| e.to_row(0, time_unix_ms)).collect())
}

/// Numbers `rows` after everything stored, chains them (unlocked) and inserts them.
fn append_rows(
    txn: &Txn<'_>,
    mut chain: Option<(&Unlocked, &mut Tip)>,
    mut rows: Vec<AuditRow>,
) -> Result<Vec<AuditRow>, StoreError> {
    if rows.is_empty() {
        return Ok(rows);
    }
    let first = next_seq(txn, chain.as_mut().map(|(keys, tip)| (*keys, &mut **tip)))?;
    for (seq, row) in (first..).zip(&mut rows) {
        row.seq = seq;
    }
    if let Some((keys, tip)) = chain {
        for row in &mut rows {
            row.mac = Some(chain_row(keys, tip, row));
        }
        set_head(txn, keys, tip)?;
    }
    let mut inserter = txn.audit_inserter()?;
    for row in &rows {
        inserter.insert(row.seq, row.time_unix_ms, row.fields(), row.mac.as_deref(), None)?;
    }
    Ok(rows)
}

/// Appends `batch` (see [`batch`](super::batch)) with its `records` as stored, `n`
/// entries, chained onto `tip`: they take the next `n` seqs, the row's own
/// being the last. Returns the first.
pub(super) fn append_batch(
    txn: &Txn<'_>,
    keys: &Unlocked,
    tip: &mut Tip,
    mut batch: AuditRow,
    records: &[u8],
    n: u64,
) -> Result<u64, StoreError> {
    let first = next_seq(txn, Some((keys, &mut *tip)))?;
    batch.seq = first + n - 1;
    let mac = chain(keys, tip, batch.seq, &[&head(&batch, Some(records.len())), records]);
    set_head(txn, keys, tip)?;
    txn.audit_inserter()?.insert(batch.seq, batch.time_unix_ms, batch.fields(), Some(&mac), Some(records))?;
    Ok(first)
}

/// The seq the next entry takes: past both the table and the tip, so a forged
/// row keeps its seq (and breaks verification there) and a deleted tail leaves
/// a gap rather than being reused. Unlocked, first adopts an offline revoke-all.
fn next_seq(txn: &Txn<'_>, chain: Option<(&Unlocked, &mut Tip)>) -> Result<u64, StoreError> {
    let max_seq = txn.audit_max_seq()?;
    let Some((keys, tip)) = chain else { return Ok(max_seq + 1) };
    if max_seq > tip.seq {
        catch_up(txn, keys, tip)?;
    }
    Ok(max_seq.max(tip.seq) + 1)
}

/// The one record another process appends while vaultd may be unlocked: the
/// offline break-glass's `incident.revoke_all`, stored unchained (it has no keys).
/// vaultd adopts such records, and only those, chaining them on before anything
/// new, as it does at unlock for entries written while sealed. Anything else
/// after the tip (a forged row, chained or not) is never chained over: it stays
/// for `audit verify` to report.
fn catch_up(txn: &Txn<'_>, keys: &Unlocked, tip: &mut Tip) -> Result<(), StoreError> {
    let backlog = txn.audit_after(tip.seq)?;
    for row in &backlog {
        if row.mac.is_some() || !is_offline_incident(txn, row)? {
            return Ok(());
        }
    }
    for row in &backlog {
        let mac = chain_row(keys, tip, row);
        txn.audit_set_mac(row.seq, &mac)?;
    }
    tracing::warn!(entries = backlog.len(), "adopted the audit record of an offline revoke-all");
    Ok(())
}

/// Whether `row` records an offline revoke-all whose incident is stored.
fn is_offline_incident(txn: &Txn<'_>, row: &AuditRow) -> Result<bool, StoreError> {
    if row.kind != Kind::IncidentRevokeAll {
        return Ok(false);
    }
    let detail: Value = serde_json::from_str(&row.detail).unwrap_or_default();
    let (Some(id), Some("offline")) = (detail["incident"].as_i64(), detail["mode"].as_str()) else {
        return Ok(false);
    };
    Ok(txn.incident_mode(id)? == Some(crate::state::IncidentMode::Offline))
}

/// What an unlock found at the end of the log.
pub struct Resumed {
    pub tip: Tip,
    /// To append (signed) at once: `audit.adopted` for entries written while
    /// sealed, `audit.tampered` for a log that was altered.
    pub events: Vec<Event>,
    /// The state generation the head recorded, when the head verified and
    /// nothing but sealed-time entries followed it.
    pub head_generation: Option<u64>,
}

/// Entries vaultd writes while sealed (no key: stored unchained, adopted at the
/// next unlock): refusals and failures, and the few records of actions that need
/// no key. Anything else found unchained was not written by vaultd.
fn written_while_sealed(row: &AuditRow) -> bool {
    matches!(row.outcome.as_str(), "denied" | "failed")
        || matches!(
            Kind::parse(&row.kind),
            Some(
                Kind::DaemonStart
                    | Kind::DaemonStop
                    | Kind::VaultRestore
                    | Kind::IncidentRevokeAll
                    | Kind::IncidentCompleted
            )
        )
}

/// At unlock: finds the tip and decides what follows it. The head must verify;
/// the entries after it may be adopted (chained now) only if they are what a
/// sealed vaultd writes, unchained, one after the other. Nothing at or before
/// the head is ever signed again. Otherwise nothing is adopted and an
/// `audit.tampered` entry says what was found: `audit verify` reports it until
/// the owner acknowledges it (`vaultctl integrity ack`).
pub fn resume(txn: &Txn<'_>, keys: &Unlocked) -> Result<Resumed, StoreError> {
    let start = txn.audit_anchor()?.map_or(Tip { seq: 0, mac: GENESIS.to_vec(), generation: 0 }, |(seq, mac)| Tip {
        seq,
        mac,
        generation: 0,
    });
    let newest_chained = || -> Result<Tip, StoreError> {
        Ok(txn.audit_last_chained()?.map_or_else(|| start.clone(), |(seq, mac)| Tip { seq, mac, generation: 0 }))
    };
    let (mut tip, mut problem) = match txn.audit_head()? {
        Some(head) => match txn.audit_mac_at(head.seq)? {
            Some(mac) if keys.audit_head_matches(head.seq, &mac, head.state_generation, &head.mac) => {
                (Tip { seq: head.seq, mac, generation: head.state_generation }, None)
            }
            _ => {
                let newest = newest_chained()?;
                let problem = if newest.seq < head.seq {
                    format!("entries {}..={} are missing (deleted from the end)", newest.seq + 1, head.seq)
                } else {
                    format!("the log head (entry {}) does not verify: the log was altered", head.seq)
                };
                (newest, Some(problem))
            }
        },
        None => {
            let tip = newest_chained()?;
            let problem = (tip != start).then(|| "the log head is missing (deleted)".to_owned());
            (tip, problem)
        }
    };
    let mut events = Vec::new();
    if problem.is_none()
        && let Some(seq) = txn.audit_first_unsigned(tip.seq)?
    {
        problem = Some(format!("entry {seq} precedes the log head but has no MAC (its MAC was removed)"));
    }
    if problem.is_none() {
        let backlog = txn.audit_after(tip.seq)?;
        let adoptable = backlog.iter().zip(tip.seq + 1..).all(|(row, seq)| {
            row.seq == seq && row.mac.is_none() && row.records.is_none() && written_while_sealed(row)
        });
        if !adoptable {
            let first = backlog.first().map_or(tip.seq + 1, |r| r.seq);
            problem = Some(format!("entries from {first} on follow the log head but were not written by vaultd"));
        } else if let Some(first) = backlog.first() {
            let from = first.seq;
            for row in &backlog {
                let mac = chain_row(keys, &mut tip, row);
                txn.audit_set_mac(row.seq, &mac)?;
            }
            set_head(txn, keys, &tip)?;
            events.push(
                Event::new(Kind::AuditAdopted, super::Outcome::Ok, &super::Actor::vaultd())
                    .with("from", from)
                    .with("count", backlog.len())
                    .with("reason", "written while sealed"),
            );
        }
    }
    let head_generation = problem.is_none().then_some(tip.generation);
    if let Some(problem) = problem {
        tracing::error!(%problem, "the audit log was altered; `vaultctl audit verify` reports it");
        events.push(
            Event::new(Kind::AuditTampered, super::Outcome::Failed, &super::Actor::vaultd()).with("problem", problem),
        );
    }
    Ok(Resumed { tip, events, head_generation })
}

/// The outcome of `audit verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Intact {
        entries: u64,
        first_seq: u64,
        last_seq: u64,
        /// Problems the owner acknowledged (`vaultctl integrity ack`).
        acknowledged: u64,
    },
    /// `seq` is the first entry where the log does not hold, or that reports a
    /// problem nobody acknowledged.
    Broken { seq: u64, problem: String },
}

/// Walks the rows (in seq order) and checks every link, the head and the anchor.
///
/// A problem (a link that does not hold, or an entry in which vaultd itself
/// reported one: `audit.tampered`, `integrity.violation`, lost journal records)
/// stands until an `integrity.acknowledged` entry after it. Past a broken link
/// the walk can only be taken up again by such an entry: genuine (its MAC
/// chains onto the row stored before it), it is where the owner acknowledged
/// what came before.
pub struct Verifier<'k> {
    keys: &'k Unlocked,
    previous: Vec<u8>,
    next_seq: u64,
    first_seq: Option<u64>,
    entries: u64,
    last_pruned_upto: Option<u64>,
    /// Problems not acknowledged yet: (seq, what).
    problems: Vec<(u64, String)>,
    acknowledged: u64,
    /// The chain is broken: rows are not checked until an acknowledgement.
    broken: bool,
    /// The MAC stored with the row just seen, whatever it was.
    last_stored: Vec<u8>,
}

impl<'k> Verifier<'k> {
    pub fn new(keys: &'k Unlocked, anchor: Option<&(u64, Vec<u8>)>) -> Self {
        let (next_seq, previous) = match anchor {
            Some((seq, mac)) => (seq + 1, mac.clone()),
            None => (1, GENESIS.to_vec()),
        };
        Verifier {
            keys,
            last_stored: previous.clone(),
            previous,
            next_seq,
            first_seq: None,
            entries: 0,
            last_pruned_upto: None,
            problems: Vec::new(),
            acknowledged: 0,
            broken: false,
        }
    }

    /// Checks one row. Always `true` (walk on): an acknowledgement further on
    /// may take the walk up again.
    pub fn check(&mut self, row: &AuditRow) -> bool {
        let n = batch::count(row);
        let first = (row.seq + 1).saturating_sub(n.max(1));
        self.entries += n;
        if self.broken {
            self.resume_at(row);
        } else if let Err((seq, problem)) = self.link(row, first) {
            self.problems.push((seq, problem));
            self.broken = true;
        } else {
            self.reported(row);
        }
        self.last_stored = row.mac.clone().unwrap_or_default();
        true
    }

    /// Whether `row` continues the chain: in order, chained, its MAC right.
    fn link(&mut self, row: &AuditRow, first: u64) -> Result<(), (u64, String)> {
        if first != self.next_seq {
            if first > self.next_seq {
                return Err((self.next_seq, format!("entry {} is missing (deleted)", self.next_seq)));
            }
            let seq = self.next_seq.min(row.seq);
            return Err((seq, format!("entry {seq} is out of order (inserted or reordered)")));
        }
        let Some(mac) = &row.mac else {
            // While unlocked every entry is chained: an unchained one was added behind vaultd's back.
            return Err((first, format!("entry {first} is not chained (inserted)")));
        };
        if !self.keys.audit_mac_matches(&self.previous, &content(row), mac) {
            return Err(batch::first_altered(self.keys, row, first).unwrap_or_else(|| {
                (first, format!("entry {first} does not match its MAC (edited, inserted or reordered)"))
            }));
        }
        self.previous.clone_from(mac);
        self.first_seq.get_or_insert(first);
        self.next_seq = row.seq + 1;
        Ok(())
    }

    /// A verified row: problems it reports, acknowledgements, retention.
    fn reported(&mut self, row: &AuditRow) {
        let detail = || serde_json::from_str::<Value>(&row.detail).unwrap_or_default();
        let Some(kind) = Kind::parse(&row.kind) else { return };
        match kind {
            // Recorded at an unlock that found journaled records altered or
            // missing: they never reached the table, so the log is not whole.
            Kind::AuditJournalDamaged => {
                let problem = detail()["problem"].as_str().unwrap_or("records are missing").to_owned();
                self.problems
                    .push((row.seq, format!("entry {}: read records were lost from the journal: {problem}", row.seq)));
            }
            Kind::AuditTampered => {
                let problem = detail()["problem"].as_str().unwrap_or("the log was altered").to_owned();
                self.problems.push((row.seq, format!("entry {}: vaultd found the log altered: {problem}", row.seq)));
            }
            Kind::IntegrityViolation => {
                let d = detail();
                let what = format!(
                    "{} {}: {}",
                    d["table"].as_str().unwrap_or("?"),
                    d["row"].as_str().unwrap_or("?"),
                    d["problem"].as_str().unwrap_or("?")
                );
                self.problems.push((row.seq, format!("entry {}: vaultd found the state altered: {what}", row.seq)));
            }
            Kind::IntegrityAcknowledged => {
                self.acknowledged += self.problems.len() as u64;
                self.problems.clear();
            }
            Kind::AuditPruned => self.last_pruned_upto = detail()["upto"].as_u64(),
            _ => {}
        }
    }

    /// Past a broken link: `row` takes the walk up again if it is a genuine
    /// acknowledgement (its MAC chains onto the row stored before it).
    fn resume_at(&mut self, row: &AuditRow) {
        let Some(mac) = &row.mac else { return };
        if row.kind != Kind::IntegrityAcknowledged
            || row.records.is_some()
            || !self.keys.audit_mac_matches(&self.last_stored, &content(row), mac)
        {
            return;
        }
        self.broken = false;
        self.previous.clone_from(mac);
        self.next_seq = row.seq + 1;
        self.reported(row);
    }

    /// The verdict, once every row was seen, given the stored head and anchor.
    pub fn finish(mut self, head: Option<&Head>, anchor: Option<&(u64, Vec<u8>)>) -> Verdict {
        if !self.broken {
            let last_seq = self.next_seq - 1;
            match head {
                Some(head) if head.seq > last_seq => {
                    let problem = format!("entries {}..={} are missing (deleted from the end)", last_seq + 1, head.seq);
                    self.problems.push((last_seq + 1, problem));
                }
                Some(head) if head.seq < last_seq => {
                    self.problems
                        .push((head.seq + 1, format!("entry {} follows the log head (inserted)", head.seq + 1)));
                }
                Some(head)
                    if !self.keys.audit_head_matches(head.seq, &self.previous, head.state_generation, &head.mac) =>
                {
                    // The head names the last entry but its MAC is for another: the
                    // entries after it were removed and the head rewritten to hide it.
                    let problem = format!("entries after {last_seq} are missing (the log head was rewritten)");
                    self.problems.push((last_seq + 1, problem));
                }
                None if self.first_seq.is_some() => self.problems.push((last_seq, "the log head is missing".into())),
                _ => {}
            }
            if let Some((anchor_seq, _)) = anchor
                && self.last_pruned_upto != Some(*anchor_seq)
            {
                let problem = format!("entries up to {anchor_seq} were removed without a retention record");
                self.problems.push((anchor_seq + 1, problem));
            }
        }
        match self.problems.into_iter().min_by_key(|(seq, _)| *seq) {
            Some((seq, problem)) => Verdict::Broken { seq, problem },
            None => Verdict::Intact {
                entries: self.entries,
                first_seq: self.first_seq.unwrap_or(0),
                last_seq: self.next_seq - 1,
                acknowledged: self.acknowledged,
            },
        }
    }
}
