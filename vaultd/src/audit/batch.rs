//! Batches: how imported read-journal records are stored, one row for many.
//!
//! A row and a MAC per read would cost the table more than the read costs
//! vaultd, so an import stores what it takes from the journal as one row: its
//! `records` are the journal's frames as journaled (`length | content | journal
//! MAC`), and they are entries `seq - n + 1 ..= seq`. Each record's content is
//! its entry's encoding with its journal number where the entry's seq would be.
//! The row's own MAC, in the chain like any other, covers its fields and the
//! records, so a batch verifies with one MAC. Only when that fails are the
//! records' journal MACs and numbers used, to name the first entry altered.

use super::journal;
use crate::crypto::Unlocked;
use crate::store::{AuditFields, AuditRow};
use serde_json::{Value, json};

pub const KIND: &str = "audit.batch";

/// The row for `count` journal records (the first numbered `first_number`,
/// the last made at `time`), without them: [`chain::append_batch`](super::chain::append_batch)
/// stores them with it, and numbers it.
pub(super) fn row(count: usize, first_number: u64, time: i64) -> AuditRow {
    let detail = json!({ "records": count, "journal_first": first_number }).to_string();
    let actor = json!({ "vaultd": true }).to_string();
    AuditFields([KIND, "audit", "ok", &actor, "", &detail]).to_row(0, time, None)
}

/// How many entries `row` holds.
pub fn count(row: &AuditRow) -> u64 {
    match &row.records {
        None => 1,
        Some(_) => stated(row).map_or(0, |(n, _)| n),
    }
}

/// The entries `row` holds, oldest first: a batch's records, or the row itself.
pub fn entries(row: AuditRow) -> Vec<AuditRow> {
    let Some(records) = &row.records else { return vec![row] };
    let (records, _) = journal::parse(records);
    let first = (row.seq + 1).saturating_sub(records.len() as u64);
    let rows = records.iter().zip(first..);
    rows.filter_map(|(record, seq)| {
        let (_, time_unix_ms, fields) = record.fields()?;
        Some(fields.to_row(seq, time_unix_ms, None))
    })
    .collect()
}

/// For a batch whose MAC does not hold: the first of its entries (the first
/// being `first`) found altered, and how; `None` if each record is as
/// journaled (then the row's own fields were altered).
pub(super) fn first_altered(keys: &Unlocked, row: &AuditRow, first: u64) -> Option<(u64, String)> {
    let (records, rest) = journal::parse(row.records.as_deref()?);
    let mut number = stated(row).map(|(_, number)| number);
    for (i, (record, seq)) in records.iter().zip(first..).enumerate() {
        let number = number.get_or_insert(record.number());
        let problem = if record.number() > *number {
            format!("entry {seq} is missing (deleted or reordered)")
        } else if record.number() < *number {
            format!("entry {seq} is out of order (inserted or reordered)")
        } else if i > 0 && !keys.journal_mac_matches(&records[i - 1].mac, record.content(), &record.mac) {
            format!("entry {seq} does not match its MAC (edited)")
        } else {
            *number += 1;
            continue;
        };
        return Some((seq, problem));
    }
    let end = first + records.len() as u64;
    if rest > 0 {
        return Some((end, format!("entry {end} is not a whole record (edited)")));
    }
    stated(row)
        .is_some_and(|(n, _)| n > records.len() as u64)
        .then(|| (end, format!("entry {end} is missing (deleted)")))
}

/// What the row says it holds: (how many records, the first one's journal number).
fn stated(row: &AuditRow) -> Option<(u64, u64)> {
    let detail: Value = serde_json::from_str(&row.detail).ok()?;
    Some((detail["records"].as_u64()?, detail["journal_first"].as_u64()?))
}
