//! Batches: how imported read-journal records are stored, one row for many.
//!
//! A row and a MAC per read would cost the table more than the read costs
//! vaultd, so an import stores what it takes from the journal as one row: its
//! `records` are the journal's frames as journaled (`length | content | journal
//! MAC`), LZ4-compressed, and they are entries `seq - n + 1 ..= seq`. Each
//! record's content is its entry's encoding with its journal number where the
//! entry's seq would be. Reads repeat their actor, kind and secret, so the
//! records compress about four times, and every byte not written is one the
//! commit, the checkpoint and the disk are spared. The row's own MAC, in the
//! chain like any other, covers its fields and the records as stored, so a
//! batch verifies with one MAC and without decompressing. Only when that fails
//! are the records' journal numbers and MACs used, to name the first entry
//! altered (if they still decompress; else the batch's first).

use super::journal::{self, Entry};
use super::{Class, Kind};
use crate::crypto::{self, Mac, Unlocked};
use crate::store::{AuditFields, AuditFilter, AuditRow};
use serde_json::{Value, json};

/// The row for `count` journal records, the first numbered `first_number` and
/// chained onto `after`, the newest made at `time`; without the records
/// themselves: [`chain::append_batch`](super::chain::append_batch) stores them
/// with it, and numbers it.
pub(super) fn row(count: usize, first_number: u64, after: &Mac, time: i64) -> AuditRow {
    let detail = json!({ "records": count, "journal_first": first_number, "journal_after": crypto::hex(after) });
    let actor = json!({ "vaultd": true }).to_string();
    AuditFields([Kind::AuditBatch.as_str(), Class::Audit.as_str(), "ok", &actor, "", &detail.to_string()])
        .to_row(0, time, None)
}

/// How many entries `row` holds (0 if it is a batch that does not say).
pub fn count(row: &AuditRow) -> u64 {
    match &row.records {
        None => 1,
        Some(_) => stated(row).map_or(0, |s| s.count),
    }
}

/// The entries of `row` that `filter` matches, oldest first: a batch's
/// records, or the row itself. A batch's records are matched before they are
/// made into rows, since most are not wanted.
pub fn matching(row: AuditRow, filter: &AuditFilter) -> Vec<AuditRow> {
    let Some(stored) = &row.records else {
        return if filter.matches(row.time_unix_ms, row.fields()) { vec![row] } else { Vec::new() };
    };
    let Some(frames) = unpack(stored) else {
        tracing::warn!(
            seq = row.seq,
            "an audit batch does not decompress: its entries are left out (see `audit verify`)"
        );
        return Vec::new();
    };
    let (records, _) = journal::parse(&frames);
    let count = stated(&row).map_or(records.len() as u64, |s| s.count);
    // `take`: records past the stated count (only a tampered batch has them)
    // would take the next row's seqs.
    rows(&records[..records.len().min(count as usize)], (row.seq + 1).saturating_sub(count), filter)
}

/// The entries `records` are, numbered from `first`, that `filter` matches.
pub(super) fn rows(records: &[Entry], first: u64, filter: &AuditFilter) -> Vec<AuditRow> {
    let entries = records.iter().zip(first..).filter_map(|(record, seq)| Some((seq, record.fields()?)));
    entries
        .filter(|(_, (_, time, fields))| filter.matches(*time, *fields))
        .map(|(seq, (_, time, fields))| fields.to_row(seq, time, None))
        .collect()
}

/// Every entry of `row`, oldest first.
pub fn entries(row: AuditRow) -> Vec<AuditRow> {
    matching(row, &AuditFilter::default())
}

/// For a batch whose MAC does not hold: the first of its entries (the first
/// being `first`) found altered, and how; `None` if each record is as
/// journaled (then the row's own fields were altered). Records that no longer
/// decompress (their bytes edited as they lie) are reported at `first`.
pub(super) fn first_altered(keys: &Unlocked, row: &AuditRow, first: u64) -> Option<(u64, String)> {
    let Some(frames) = unpack(row.records.as_deref()?) else {
        return Some((first, format!("entries from {first} on do not decompress (edited)")));
    };
    let (records, rest) = journal::parse(&frames);
    let stated = stated(row);
    let mut previous = stated.as_ref().and_then(|s| s.after);
    let start = stated.as_ref().map_or_else(|| records.first().map_or(0, Entry::number), |s| s.first_number);
    for (i, (record, seq)) in records.iter().zip(first..).enumerate() {
        let number = start.checked_add(i as u64);
        let problem = if number.is_none_or(|n| record.number() > n) {
            format!("entry {seq} is missing (deleted or reordered)")
        } else if Some(record.number()) < number {
            format!("entry {seq} is out of order (inserted or reordered)")
        } else if previous.is_some_and(|p| !keys.journal_mac_matches(&p, record.content(), &record.mac)) {
            format!("entry {seq} does not match its MAC (edited)")
        } else {
            previous = Some(record.mac);
            continue;
        };
        return Some((seq, problem));
    }
    let end = first + records.len() as u64;
    if rest > 0 {
        return Some((end, format!("entry {end} is not a whole record (edited)")));
    }
    let count = stated.map_or(records.len() as u64, |s| s.count);
    match count.cmp(&(records.len() as u64)) {
        std::cmp::Ordering::Greater => Some((end, format!("entry {end} is missing (deleted)"))),
        std::cmp::Ordering::Less => {
            let extra = first + count;
            Some((extra, format!("entry {extra} follows the last of its batch (inserted)")))
        }
        std::cmp::Ordering::Equal => None,
    }
}

/// Records as a batch stores them: compressed, after their size.
pub(super) fn pack(frames: &[u8]) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(frames)
}

/// The frames `stored` holds, or `None` if it is not a batch's records.
fn unpack(stored: &[u8]) -> Option<Vec<u8>> {
    // No batch holds more than twice what the journal lets wait, and LZ4 makes
    // at most 255 bytes of one: a larger stated size is damage, not allocated.
    let size = u32::from_le_bytes(*stored.first_chunk()?) as usize;
    if size > 2 * journal::MAX_WAITING_BYTES || size > stored.len().saturating_mul(255) {
        return None;
    }
    lz4_flex::block::decompress_size_prepended(stored).ok().filter(|frames| frames.len() == size)
}

/// What a batch row says of its records.
struct Stated {
    count: u64,
    first_number: u64,
    /// The journal MAC the first record chains onto.
    after: Option<Mac>,
}

fn stated(row: &AuditRow) -> Option<Stated> {
    let detail: Value = serde_json::from_str(&row.detail).ok()?;
    let after = detail["journal_after"].as_str().and_then(crypto::unhex);
    Some(Stated { count: detail["records"].as_u64()?, first_number: detail["journal_first"].as_u64()?, after })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_come_back_as_packed_and_damage_is_none_not_a_panic() {
        let frames: Vec<u8> =
            (0..2000u32).flat_map(|i| [&i.to_be_bytes()[..], b"secret.read default/bench"].concat()).collect();
        let stored = pack(&frames);
        assert!(stored.len() * 3 < frames.len(), "{} of {}", stored.len(), frames.len());
        assert_eq!(unpack(&stored), Some(frames.clone()));
        assert_eq!(unpack(&pack(&[])), Some(Vec::new()));
        // A stated size no LZ4 block can make, or more than a batch holds:
        // refused before anything is allocated.
        let mut huge = stored.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(unpack(&huge), None);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..600_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut big = pack(&noise);
        assert!(big.len() * 255 > 2 * journal::MAX_WAITING_BYTES, "{}", big.len());
        big[..4].copy_from_slice(&(2 * journal::MAX_WAITING_BYTES as u32 + 1).to_le_bytes());
        assert_eq!(unpack(&big), None);
        for cut in [0, 2, 4, stored.len() / 2, stored.len() - 1] {
            assert!(unpack(&stored[..cut]).is_none(), "cut at {cut}");
        }
        assert!(unpack(&[0xff; 64]).is_none());
        let mut flipped = stored.clone();
        flipped[10] ^= 0x40;
        assert!(unpack(&flipped) != Some(frames), "an edit shows");
    }
}
