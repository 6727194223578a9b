//! Chaining entries with MACs, and checking the chain.
//!
//! `mac(n) = HMAC(audit key, mac(n-1) || content(n))`, starting from 32 zero bytes
//! (or, after retention, from the anchor: the last pruned entry's MAC). The head
//! row carries its own MAC over the newest chained entry, so cutting entries off
//! the end is caught too. Entries written while sealed are stored unchained and
//! chained, in order, by the first append after the next unlock.

use super::event::Event;
use crate::crypto::{MAC_LEN, Unlocked};
use crate::store::{AuditRow, StoreError, Txn};
use serde_json::Value;

const GENESIS: [u8; MAC_LEN] = [0; MAC_LEN];

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The bytes an entry's MAC covers: every stored field, length-prefixed so no
/// two different entries encode alike.
fn content(row: &AuditRow) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + row.actor.len() + row.detail.len());
    out.extend_from_slice(&row.seq.to_be_bytes());
    out.extend_from_slice(&row.time_unix_ms.to_be_bytes());
    for field in [&row.kind, &row.class, &row.outcome, &row.actor, &row.secret, &row.detail] {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

/// Appends `events` inside `txn`. With `keys`, any entries left unchained from a
/// sealed period are chained first, then the new ones, and the head moves; without
/// (sealed), the new entries are stored unchained.
pub fn append(txn: &Txn<'_>, keys: Option<&Unlocked>, events: &[Event]) -> Result<Vec<AuditRow>, StoreError> {
    let last = txn.audit_last()?;
    let mut seq = last.as_ref().map_or(0, |(seq, _)| *seq);
    if seq == 0 {
        seq = txn.audit_anchor()?.map_or(0, |(seq, _)| seq);
    }
    let time_unix_ms = now_ms();
    let mut rows = Vec::with_capacity(events.len());
    for event in events {
        seq += 1;
        rows.push(AuditRow {
            seq,
            time_unix_ms,
            kind: event.kind.into(),
            class: event.class().into(),
            outcome: event.outcome.as_str().into(),
            actor: serde_json::to_string(&event.actor).unwrap_or_else(|_| "{}".into()),
            secret: event.secret.clone().unwrap_or_default(),
            detail: Value::Object(event.detail.clone()).to_string(),
            mac: None,
        });
    }
    let Some(keys) = keys else {
        for row in &rows {
            txn.audit_insert(row)?;
        }
        return Ok(rows);
    };
    // The entry before the first one to chain: the last chained entry, the anchor,
    // or the start of the log.
    let backlog = txn.audit_unchained()?;
    let mut previous = match backlog.first() {
        Some(first) => txn.audit_mac_before(first.seq)?,
        None => last.and_then(|(_, mac)| mac),
    };
    if previous.is_none() {
        previous = txn.audit_anchor()?.map(|(_, mac)| mac);
    }
    let mut previous = previous.unwrap_or_else(|| GENESIS.to_vec());
    for row in &backlog {
        let mac = keys.audit_mac(&previous, &content(row));
        txn.audit_set_mac(row.seq, &mac)?;
        previous = mac.to_vec();
    }
    for row in &mut rows {
        let mac = keys.audit_mac(&previous, &content(row));
        row.mac = Some(mac.to_vec());
        txn.audit_insert(row)?;
        previous = mac.to_vec();
    }
    if let Some(newest) = rows.last().map(|r| r.seq).or(backlog.last().map(|r| r.seq)) {
        txn.audit_set_head(newest, &keys.audit_head_mac(newest, &previous))?;
    }
    Ok(rows)
}

/// The outcome of `audit verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Intact {
        entries: u64,
        first_seq: u64,
        last_seq: u64,
    },
    /// `seq` is the first entry where the chain does not hold.
    Broken {
        seq: u64,
        problem: String,
    },
}

/// Walks the rows (in seq order) and checks every link, the head and the anchor.
pub struct Verifier<'k> {
    keys: &'k Unlocked,
    previous: Vec<u8>,
    next_seq: u64,
    first_seq: Option<u64>,
    entries: u64,
    last_pruned_upto: Option<u64>,
    broken: Option<(u64, String)>,
}

impl<'k> Verifier<'k> {
    pub fn new(keys: &'k Unlocked, anchor: Option<&(u64, Vec<u8>)>) -> Self {
        let (next_seq, previous) = match anchor {
            Some((seq, mac)) => (seq + 1, mac.clone()),
            None => (1, GENESIS.to_vec()),
        };
        Verifier { keys, previous, next_seq, first_seq: None, entries: 0, last_pruned_upto: None, broken: None }
    }

    /// Checks one row; returns `false` once the chain is broken (stop walking).
    pub fn check(&mut self, row: &AuditRow) -> bool {
        if row.seq != self.next_seq {
            let problem = if row.seq > self.next_seq {
                format!("entry {} is missing (deleted)", self.next_seq)
            } else {
                format!("entry {} is out of order (inserted or reordered)", row.seq)
            };
            self.broken = Some((self.next_seq.min(row.seq), problem));
            return false;
        }
        let Some(mac) = &row.mac else {
            // While unlocked every entry is chained: an unchained one was added behind vaultd's back.
            self.broken = Some((row.seq, format!("entry {} is not chained (inserted)", row.seq)));
            return false;
        };
        if !self.keys.audit_mac_matches(&self.previous, &content(row), mac) {
            let problem = format!("entry {} does not match its MAC (edited, inserted or reordered)", row.seq);
            self.broken = Some((row.seq, problem));
            return false;
        }
        if row.kind == "audit.pruned" {
            self.last_pruned_upto = serde_json::from_str::<Value>(&row.detail).ok().and_then(|d| d["upto"].as_u64());
        }
        self.previous.clone_from(mac);
        self.first_seq.get_or_insert(row.seq);
        self.next_seq += 1;
        self.entries += 1;
        true
    }

    /// The verdict, once every row was seen, given the stored head and anchor.
    pub fn finish(self, head: Option<&(u64, Vec<u8>)>, anchor: Option<&(u64, Vec<u8>)>) -> Verdict {
        if let Some((seq, problem)) = self.broken {
            return Verdict::Broken { seq, problem };
        }
        let last_seq = self.next_seq - 1;
        match head {
            Some((head_seq, head_mac)) => {
                if *head_seq > last_seq {
                    let problem = format!("entries {}..={head_seq} are missing (deleted from the end)", last_seq + 1);
                    return Verdict::Broken { seq: last_seq + 1, problem };
                }
                if *head_seq < last_seq || !self.keys.audit_head_matches(*head_seq, &self.previous, head_mac) {
                    let problem = format!("the log head does not match entry {last_seq} (entries added or removed)");
                    return Verdict::Broken { seq: (*head_seq + 1).min(last_seq), problem };
                }
            }
            None if self.entries > 0 => {
                return Verdict::Broken { seq: last_seq, problem: "the log head is missing".into() };
            }
            None => {}
        }
        if let Some((anchor_seq, _)) = anchor
            && self.last_pruned_upto != Some(*anchor_seq)
        {
            let problem = format!("entries up to {anchor_seq} were removed without a retention record");
            return Verdict::Broken { seq: anchor_seq + 1, problem };
        }
        Verdict::Intact { entries: self.entries, first_seq: self.first_seq.unwrap_or(0), last_seq }
    }
}
