//! The read journal: where the records of requests that change nothing (reads,
//! watches, refusals) go first.
//!
//! Such a request has no transaction of its own, and committing one for its
//! record would cost more than the read. So the record is appended to a journal
//! file, chained by MAC like the table, and the value is released once it is
//! there: copied into the file's shared mapping, it is in the kernel's page cache
//! and survives a vaultd crash, as a `synchronous = NORMAL` commit does. Records
//! are imported into the audit table in batches, one row each ([`batch`]): by
//! every transaction that appends entries, before its own (so the table keeps the
//! order things happened in, and a durable action makes every read before it
//! durable too), and by the daemon every [`IMPORT_EVERY`] or when [`IMPORT_AT`]
//! are waiting. What a crash leaves behind is checked and imported at the next
//! unlock.
//!
//! Files are `DATA/journal/NNNNNNNNNNNN.log`, each a run of records
//! `length (u32 BE) | content | MAC` and then zeros: a file is allocated
//! [`SEGMENT_BYTES`] long and mapped when it is started, so that appending a
//! record is a copy into memory, not a system call. The content is an entry's encoding (see
//! `chain::content`) with the record's number where an entry has its seq, and the
//! MAC is the journal MAC over the previous record's MAC and the content; numbers
//! and MACs run on across files and restarts, from the import position stored
//! (and authenticated) in the database. A new file is started at each unlock and
//! when one passes [`SEGMENT_BYTES`]; older files go once all they hold is
//! imported, but for one, zeroed and kept mapped as the spare that the next file
//! reuses (renamed), so that the journal does not fault in fresh pages as it goes.
//!
//! The chain catches a record edited, inserted, reordered or deleted, and a file
//! removed from the middle. It cannot catch records cut off the end of the journal
//! while vaultd is down: that is like cutting SQLite's WAL back to an earlier
//! commit, which a `synchronous = NORMAL` log cannot catch either.

use super::batch;
use super::chain::{self, GENESIS, Tip};
use super::event::{Record, now_ms};
use crate::crypto::{MAC_LEN, Mac, Unlocked};
use crate::store::{AuditFields, AuditFilter, AuditRow, StoreError, Txn};
use crate::sys::MappedFile;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How often the daemon imports what is waiting.
pub const IMPORT_EVERY: Duration = Duration::from_millis(100);
/// Records waiting that wake the importer before its time.
const IMPORT_AT: usize = 1024;
/// Records waiting beyond which a read waits for the import ([`Journal::room`])
/// before its records go in: the import is not keeping up, and the readers are
/// slowed down to its pace rather than refused.
const EASY_WAITING: usize = 16 * 1024;
/// How long a read waits for room, at most.
const MAX_WAIT: Duration = Duration::from_secs(2);
/// Records waiting beyond which requests are refused: the import is failing (or
/// hopelessly behind), and the memory they hold is bounded.
const MAX_WAITING: usize = 4 * EASY_WAITING;
/// The most bytes of records waiting. A batch holds at most twice that (what
/// an import that failed gives back, and what came meanwhile): a batch stating
/// more is damage, never allocated.
pub(super) const MAX_WAITING_BYTES: usize = 64 << 20;
/// How long a journal file is made; records go in until it is full.
const SEGMENT_BYTES: u64 = 4 << 20;
/// No record is this long; a length field that says so is damage.
const MAX_RECORD: usize = 1 << 20;
const DIR: &str = "journal";

/// One record: the entry's `content` (its seq slot holds the record's number),
/// and its journal MAC. Kept encoded: that is what is written, MAC'd and
/// imported, and building the entry's fields would cost more than all of that.
#[derive(Debug)]
pub struct Entry {
    content: Vec<u8>,
    pub mac: Mac,
}

impl Entry {
    /// The record's number.
    pub fn number(&self) -> u64 {
        self.content.first_chunk().map_or(0, |n| u64::from_be_bytes(*n))
    }

    /// When the record was made.
    pub fn time(&self) -> i64 {
        self.content.get(8..16).and_then(|t| t.try_into().ok()).map_or(0, i64::from_be_bytes)
    }

    pub fn content(&self) -> &[u8] {
        &self.content
    }

    /// The entry's (record number, time, fields).
    pub fn fields(&self) -> Option<(u64, i64, AuditFields<'_>)> {
        chain::fields(&self.content)
    }
}

/// Records back to back as the journal holds them (`length | content | MAC`):
/// what waits to be imported, kept in one buffer so that journaling a read
/// allocates nothing that outlives it, and stored as it is, as one [`batch`].
#[derive(Debug, Default)]
pub struct Records {
    frames: Vec<u8>,
    count: usize,
    /// The first record's number, and the journal MAC it chains onto.
    first: (u64, Mac),
    /// The last record's number and MAC.
    last: (u64, Mac),
    /// When the newest was made (appends take their time before the lock, so
    /// not always the last).
    newest: i64,
}

impl Records {
    fn push(&mut self, entry: &Entry, after: &Mac) {
        let length = (entry.content.len() as u32).to_be_bytes();
        let frame = [&length[..], &entry.content, &entry.mac].concat();
        self.add(&frame, after, entry.number(), 1, entry.mac, entry.time());
    }

    /// `count` framed records numbered from `first` and chained onto `after`,
    /// the last with `mac`, made at `time`.
    fn add(&mut self, frames: &[u8], after: &Mac, first: u64, count: usize, mac: Mac, time: i64) {
        if self.count == 0 {
            self.first = (first, *after);
        }
        self.frames.extend_from_slice(frames);
        self.count += count;
        self.last = (first + count as u64 - 1, mac);
        self.newest = self.newest.max(time);
    }

    /// `newer` goes after these.
    fn append(&mut self, newer: Records) {
        if self.count == 0 {
            *self = newer;
            return;
        }
        if newer.count > 0 {
            self.frames.extend_from_slice(&newer.frames);
            self.count += newer.count;
            self.last = newer.last;
            self.newest = self.newest.max(newer.newest);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn len(&self) -> usize {
        self.count
    }

    /// Each record, decoded from the frames.
    pub fn entries(&self) -> Vec<Entry> {
        parse(&self.frames).0
    }
}

/// Why records could not be journaled; the request they guard is refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the audit log could not be written ({0}); the request was refused")]
pub struct JournalFailed(pub String);

pub enum Appended {
    Yes,
    /// The vault is sealed (no key to chain with): the caller stores them itself.
    Closed,
}

pub struct Journal {
    dir: PathBuf,
    writer: Mutex<Option<Writer>>,
    /// Wakes the importer early.
    wake: tokio::sync::Notify,
    /// Wakes the reads waiting for room, after an import.
    drained: tokio::sync::Notify,
}

/// The open journal, while unlocked.
struct Writer {
    keys: Arc<Unlocked>,
    file: MappedFile,
    path: PathBuf,
    number: u64,
    /// Bytes of whole records in `file`; zeros follow up to `size`.
    len: u64,
    size: u64,
    /// The next record's number, and the MAC it chains onto.
    next: u64,
    mac: Mac,
    waiting: Records,
    /// Where [`Journal::append`] builds a frame, and each record's length in it
    /// (kept to save allocating them per read).
    frame: Vec<u8>,
    lengths: Vec<(usize, [u8; 4])>,
    /// Earlier files and the last record in each: deleted once imported, but
    /// for one kept as the spare.
    full: Vec<(PathBuf, MappedFile, u64)>,
    /// A file whose records are all imported, zeroed and still mapped: the next
    /// file is this one renamed, which spares a page fault every few records.
    spare: Option<(PathBuf, MappedFile)>,
    /// Why the last import failed: requests are refused until one succeeds.
    stalled: Option<String>,
}

/// What [`Journal::close`] hands over: records to import, then files to delete.
pub struct Closed {
    pub waiting: Records,
    files: Vec<PathBuf>,
}

/// What an earlier run left in the journal directory: each file and its records.
pub struct Leftover {
    files: Vec<(PathBuf, Vec<Entry>)>,
    /// Where a file ended in something that is not a whole record.
    torn: Vec<String>,
}

/// What [`Leftover::import`] found and did.
pub struct Recovered {
    pub imported: usize,
    /// Why records could not be imported (they were altered, or are missing).
    pub problem: Option<String>,
    pub torn: Vec<String>,
    /// The entries it added to the table.
    pub rows: Vec<AuditRow>,
    /// Where journaling goes on from: the last record number and its MAC.
    pub position: (u64, Mac),
}

impl Journal {
    pub fn new(data_dir: &Path) -> Journal {
        Journal {
            dir: data_dir.join(DIR),
            writer: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            drained: tokio::sync::Notify::new(),
        }
    }

    fn writer(&self) -> MutexGuard<'_, Option<Writer>> {
        // Every change to the writer is a plain assignment after the write it
        // records succeeded, so a poisoned lock leaves it consistent.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when records are waiting in numbers worth importing at once.
    pub async fn wanted(&self) {
        self.wake.notified().await;
    }

    /// Waits (at most [`MAX_WAIT`]) while more records wait to be imported than
    /// the import takes in easily: a read's records then go in once there is
    /// room, and readers go at the import's pace instead of being refused. No
    /// wait while the import is failing: that refuses the read at once.
    pub async fn room(&self) {
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            let crowded =
                self.writer().as_ref().is_some_and(|w| w.stalled.is_none() && w.waiting.len() >= EASY_WAITING);
            if !crowded {
                return;
            }
            self.wake.notify_one();
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return;
            }
        }
    }

    /// Appends `records` and returns once they are in the file.
    pub fn append(&self, records: &[impl Record]) -> Result<Appended, JournalFailed> {
        if records.is_empty() {
            return Ok(Appended::Yes);
        }
        // Everything but the numbers and MACs is prepared before taking the lock.
        let time = now_ms();
        let mut encoded = Vec::with_capacity(256 * records.len());
        let mut spans = Vec::with_capacity(records.len());
        for record in records {
            let at = encoded.len();
            record.encode(&mut encoded, 0, time);
            spans.push(at..encoded.len());
        }
        if spans.iter().any(|span| span.len() > MAX_RECORD) {
            // Recovery and batches read such a length as the end of the records.
            return Err(JournalFailed("a record is too long".into()));
        }
        let frame_len = spans.iter().map(|c| 4 + c.len() + MAC_LEN).sum::<usize>();

        let mut writer = self.writer();
        let Some(w) = writer.as_mut() else { return Ok(Appended::Closed) };
        if let Some(why) = &w.stalled {
            return Err(JournalFailed(format!("importing the journal failed: {why}")));
        }
        if w.waiting.len() + spans.len() > MAX_WAITING || w.waiting.frames.len() + frame_len > MAX_WAITING_BYTES {
            return Err(JournalFailed("the journal is not being imported fast enough".into()));
        }
        if w.len + frame_len as u64 > w.size {
            w.start_file(&self.dir, frame_len as u64)?;
        }
        let mut mac = w.mac;
        w.frame.clear();
        w.lengths.clear();
        for (span, number) in spans.into_iter().zip(w.next..) {
            let content = &mut encoded[span];
            content[..8].copy_from_slice(&number.to_be_bytes());
            mac = w.keys.journal_mac(&mac, content);
            w.lengths.push((w.frame.len(), (content.len() as u32).to_be_bytes()));
            w.frame.extend_from_slice(&[0; 4]);
            w.frame.extend_from_slice(content);
            w.frame.extend_from_slice(&mac);
        }
        // Each length goes in after everything else: a copy cut short by a crash
        // leaves no length in front of bytes that are not yet all there, so it
        // reads as the journal's end, never as an altered record.
        let at = w.len as usize;
        let written = w.file.write_at(at, &w.frame) && {
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            w.lengths.iter().all(|(i, length)| w.file.write_at(at + i, length))
        };
        if !written {
            return Err(JournalFailed(format!("{}: no room for the record", w.path.display())));
        }
        for (i, length) in &w.lengths {
            w.frame[*i..i + 4].copy_from_slice(length);
        }
        w.waiting.add(&w.frame, &w.mac, w.next, w.lengths.len(), mac, time);
        w.len += w.frame.len() as u64;
        w.next += w.lengths.len() as u64;
        w.mac = mac;
        if w.waiting.len() >= IMPORT_AT {
            self.wake.notify_one();
        }
        Ok(Appended::Yes)
    }

    pub fn is_waiting(&self) -> bool {
        self.writer().as_ref().is_some_and(|w| !w.waiting.is_empty())
    }

    /// The records waiting, for a transaction to import; the caller gives them
    /// back ([`Journal::untake`]) if it does not commit, or reports
    /// ([`Journal::imported`]) that it did.
    pub fn take(&self) -> Records {
        self.writer().as_mut().map(|w| std::mem::take(&mut w.waiting)).unwrap_or_default()
    }

    pub fn untake(&self, mut taken: Records) {
        if let Some(w) = self.writer().as_mut() {
            taken.append(std::mem::take(&mut w.waiting));
            w.waiting = taken;
        }
    }

    /// `taken` is in the table now: files that held only imported records go,
    /// or one becomes the spare.
    pub fn imported(&self, taken: &Records) {
        let done = {
            let mut writer = self.writer();
            let Some(w) = writer.as_mut() else { return };
            w.stalled = None;
            self.drained.notify_waiters();
            if taken.is_empty() {
                return;
            }
            let upto = taken.last.0;
            let (done, kept) = std::mem::take(&mut w.full).into_iter().partition(|(.., last)| *last <= upto);
            w.full = kept;
            (done, w.spare.is_none())
        };
        // Outside the journal's lock, so appends go on: zeroing a file, or
        // freeing its pages, takes a while (a commit calling this holds the
        // vault's chain lock, which a few hundred µs once per file is worth).
        let (mut done, want_spare): (Vec<(PathBuf, MappedFile, u64)>, bool) = done;
        if let Some((path, mut file, _)) = if want_spare { done.pop() } else { None } {
            zero(&mut file);
            // Defensive: callers hold the chain lock, so no spare came meanwhile
            // and the journal was not closed; if either happened, the file goes.
            match self.writer().as_mut().filter(|w| w.spare.is_none()) {
                Some(w) => w.spare = Some((path, file)),
                None => done.push((path, file, 0)),
            }
        }
        for (path, ..) in done {
            let _ = std::fs::remove_file(path);
        }
    }

    /// An import failed: refuse requests until one succeeds.
    pub fn stalled(&self, why: String) {
        if let Some(w) = self.writer().as_mut() {
            w.stalled = Some(why);
        }
        self.drained.notify_waiters();
    }

    /// Starts a new file after the last record imported (`position`), with `keys`.
    pub fn open(&self, keys: Arc<Unlocked>, position: (u64, Mac)) -> Result<(), StoreError> {
        crate::store::prepare_data_dir(&self.dir)?;
        let number = journal_files(&self.dir)?.last().and_then(|p| file_number(p)).unwrap_or(0) + 1;
        let path = segment_path(&self.dir, number);
        let file = new_file(&path, SEGMENT_BYTES)?;
        *self.writer() = Some(Writer {
            keys,
            file,
            path,
            number,
            len: 0,
            size: SEGMENT_BYTES,
            next: position.0 + 1,
            mac: position.1,
            waiting: Records::default(),
            frame: Vec::new(),
            lengths: Vec::new(),
            full: Vec::new(),
            spare: None,
            stalled: None,
        });
        Ok(())
    }

    /// Stops journaling (at seal, or before an unlock reopens it).
    pub fn close(&self) -> Closed {
        let writer = self.writer().take();
        self.drained.notify_waiters();
        match writer {
            Some(w) => {
                let earlier = w.full.into_iter().map(|(path, ..)| path).chain(w.spare.map(|(path, _)| path));
                Closed { waiting: w.waiting, files: earlier.chain([w.path]).collect() }
            }
            None => Closed { waiting: Records::default(), files: Vec::new() },
        }
    }

    /// Reads what earlier runs left in the journal directory (no keys needed).
    pub fn leftover(&self) -> Result<Leftover, StoreError> {
        let mut left = Leftover { files: Vec::new(), torn: Vec::new() };
        for path in journal_files(&self.dir)?.into_iter().filter(|p| p.extension().is_some_and(|e| e == "log")) {
            let bytes = std::fs::read(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?;
            let (records, rest) = parse(&bytes);
            if rest > 0 {
                left.torn.push(format!("{} ends in {rest} bytes that are not a whole record", path.display()));
            }
            left.files.push((path, records));
        }
        Ok(left)
    }
}

impl Closed {
    /// After `waiting` was imported: nothing in the files is needed any more.
    pub fn remove_files(self) {
        for path in self.files {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Writer {
    /// Starts the next file, with room for at least `room` bytes: the spare
    /// renamed, if it has the room and the rename works, or a new one.
    fn start_file(&mut self, dir: &Path, room: u64) -> Result<(), JournalFailed> {
        let path = segment_path(dir, self.number + 1);
        let reused = match self.spare.take() {
            Some((spare, file)) if file.len() as u64 >= room && std::fs::rename(&spare, &path).is_ok() => Some(file),
            Some((spare, _)) => {
                let _ = std::fs::remove_file(spare);
                None
            }
            None => None,
        };
        let file = match reused {
            Some(file) => file,
            None => new_file(&path, SEGMENT_BYTES.max(room)).map_err(|e| JournalFailed(e.to_string()))?,
        };
        let last = self.next - 1;
        let old = std::mem::replace(&mut self.file, file);
        let old_path = std::mem::replace(&mut self.path, path);
        self.full.push((old_path, old, last));
        self.number += 1;
        self.len = 0;
        self.size = self.file.len() as u64;
        Ok(())
    }
}

/// Zeroes `file` from its end back, so that if vaultd stops part way what is
/// left is imported records and then zeros (the last of those records may be
/// cut, which the next unlock reports as a torn end).
fn zero(file: &mut MappedFile) {
    static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
    for at in (0..file.len()).step_by(ZEROS.len()).rev() {
        file.write_at(at, &ZEROS[..(file.len() - at).min(ZEROS.len())]);
    }
}

impl Leftover {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// In the unlock's transaction: imports the records after the stored position
    /// that continue its chain, up to the first that does not (altered or missing
    /// records: the problem is reported, and the files are kept as evidence).
    /// Returns the position to journal on from.
    pub fn import(&self, txn: &Txn<'_>, keys: &Unlocked, tip: &mut Tip) -> Result<Recovered, StoreError> {
        let last_in_files = self.files.iter().flat_map(|(_, r)| r).map(Entry::number).max().unwrap_or(0);
        let mut torn = self.torn.clone();
        let (imported, mut mac, mut problem) = match position(txn, keys)? {
            Ok((jseq, jmac)) => (jseq, jmac, None),
            Err(problem) => (0, GENESIS, Some(problem)),
        };
        let mut next = imported + 1;
        let mut good = Records::default();
        for (path, records) in &self.files {
            for (i, entry) in records.iter().enumerate() {
                if problem.is_some() {
                    break;
                }
                let number = entry.number();
                if number <= imported {
                    continue; // imported before the crash; its file was not deleted yet
                }
                let wrong = if number < next {
                    Some(format!("journal record {number} appears twice (inserted or reordered)"))
                } else if number > next {
                    Some(format!("journal records {next} to {} are missing", number - 1))
                } else if !keys.journal_mac_matches(&mac, &entry.content, &entry.mac) {
                    Some(format!("journal record {next} does not match its MAC (edited or inserted)"))
                } else {
                    None
                };
                match wrong {
                    None => {
                        good.push(entry, &mac);
                        next += 1;
                        mac = entry.mac;
                    }
                    // The last record of a file may be one a crash cut short: it was
                    // never acknowledged, and the chain goes on without it. (Anything
                    // but the journal's very end dropped this way breaks the chain
                    // at the next record, so it hides no more than cutting the end.)
                    Some(_) if i + 1 == records.len() => {
                        torn.push(format!("{} ends in a record that does not verify", path.display()));
                    }
                    Some(wrong) => problem = Some(wrong),
                }
            }
        }
        let rows = import(txn, keys, tip, &good)?.rows(&good);
        let position = match problem {
            None => (next - 1, mac),
            // A fresh chain, numbered past anything in the files so none is reused.
            Some(_) => {
                let position = (last_in_files.max(next - 1), GENESIS);
                txn.audit_set_journal(position.0, &position.1, &keys.journal_position_mac(position.0, &position.1))?;
                position
            }
        };
        Ok(Recovered { imported: good.len(), problem, torn, rows, position })
    }

    /// After the import committed: imported files go; with a problem they stay,
    /// renamed `*.damaged`, as evidence.
    pub fn dispose(self, problem: bool) {
        for (path, _) in self.files {
            let _ = match problem {
                true => std::fs::rename(&path, path.with_extension("damaged")),
                false => std::fs::remove_file(&path),
            };
        }
    }
}

/// Stores journal records in the table, as one [`batch`] chained onto `tip`,
/// and how far the journal is imported.
pub fn import(txn: &Txn<'_>, keys: &Unlocked, tip: &mut Tip, records: &Records) -> Result<Imported, StoreError> {
    if records.is_empty() {
        return Ok(Imported { first: tip.seq + 1 });
    }
    let ((first_number, after), (number, mac)) = (records.first, records.last);
    let batch = batch::row(records.len(), first_number, &after, records.newest);
    let first = chain::append_batch(txn, keys, tip, batch, &batch::pack(&records.frames), records.len() as u64)?;
    txn.audit_set_journal(number, &mac, &keys.journal_position_mac(number, &mac))?;
    Ok(Imported { first })
}

/// Where [`import`] put records in the table: the first one's seq.
pub struct Imported {
    first: u64,
}

impl Imported {
    /// The table entries made of `records` (those imported), for the log's
    /// followers. Called after the commit, so that a follower that subscribes
    /// after the check for followers reads them from the table instead.
    pub fn rows(&self, records: &Records) -> Vec<AuditRow> {
        batch::rows(&records.entries(), self.first, &AuditFilter::default())
    }
}

/// The stored import position, or why it cannot be trusted.
fn position(txn: &Txn<'_>, keys: &Unlocked) -> Result<Result<(u64, Mac), String>, StoreError> {
    Ok(match txn.audit_journal()? {
        None => Ok((0, GENESIS)),
        Some((jseq, jmac, mac)) => match <Mac>::try_from(jmac.as_slice()) {
            Ok(jmac) if keys.journal_position_mac(jseq, &jmac).as_slice() == mac.as_slice() => Ok((jseq, jmac)),
            _ => Err("the journal's import position does not match its MAC (altered)".into()),
        },
    })
}

/// A new journal file, owner-only, `size` bytes of zeros, mapped. Its blocks
/// are allocated now, so that a full disk refuses a file, never a write into one
/// (a write into a mapping cannot fail: it would kill vaultd). A file that could
/// not be made whole is removed, so the next try can take its name.
fn new_file(path: &Path, size: u64) -> Result<MappedFile, StoreError> {
    let file = crate::store::create_owner_only(path)?;
    let made = allocate(&file, size).and_then(|()| MappedFile::new(&file, size as usize));
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made.map_err(|source| StoreError::Io { path: path.into(), source })
}

/// Allocates `size` bytes of zeros in `file`: with fallocate, or by writing the
/// zeros where the file system cannot fallocate.
fn allocate(file: &std::fs::File, size: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size) {
        Err(rustix::io::Errno::OPNOTSUPP) => {
            let zeros = [0; 1 << 16];
            for at in (0..size).step_by(zeros.len()) {
                file.write_all_at(&zeros[..(size - at).min(zeros.len() as u64) as usize], at)?;
            }
            Ok(())
        }
        done => done.map_err(Into::into),
    }
}

/// The whole records at the start of `bytes` (up to the zeros after the last),
/// and how many bytes are left over that are neither records nor zeros.
pub(super) fn parse(bytes: &[u8]) -> (Vec<Entry>, usize) {
    let mut records = Vec::new();
    let mut rest = bytes;
    while let Some((len, after)) = rest.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*len) as usize;
        if len == 0 {
            break;
        }
        if len > MAX_RECORD || after.len() < len + MAC_LEN {
            break;
        }
        let (content, after) = after.split_at(len);
        let (mac, after) = after.split_at(MAC_LEN);
        let (Some((number, ..)), Ok(mac)) = (chain::fields(content), Mac::try_from(mac)) else { break };
        if number > i64::MAX as u64 {
            break; // never made by vaultd (SQLite stores numbers as i64), and it would stop every unlock
        }
        records.push(Entry { content: content.to_vec(), mac });
        rest = after;
    }
    (records, rest.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1))
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:012}.log"))
}

/// The journal files in `dir` (damaged ones too, so that a new file never takes
/// their number), in order.
fn journal_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StoreError::Io { path: dir.into(), source }),
    };
    let mut files: Vec<(u64, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log" || e == "damaged"))
        .filter_map(|p| Some((file_number(&p)?, p)))
        .collect();
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

fn file_number(path: &Path) -> Option<u64> {
    path.file_stem()?.to_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::audit::{Actor, Event, Kind, Outcome, Read, ReadDetail, Verdict};
    use crate::config::Config;
    use crate::crypto::{KdfParams, SecretBytes};
    use crate::identity::Peer;
    use crate::state::{PolicyChange, SecretLabels};
    use crate::store::AuditFilter;
    use crate::vault::{SecretRef, Vault};

    const PASSPHRASE: &[u8] = b"a journal passphrase";

    fn read_event(n: u64) -> Event {
        Event::new(Kind::SecretRead, Outcome::Ok, &Actor::vaultd()).secret("default", "telegram").with("version", n)
    }

    #[test]
    fn a_record_decodes_to_what_was_encoded() {
        let mut row = read_event(7).to_row(41, 1_700_000_000_123);
        row.actor = r#"{"socket":"agent","uid":1000,"client":"bot ✓"}"#.into();
        assert_eq!(chain::decode(&chain::content(&row)), Some(row.clone()));
        let content = chain::content(&row);
        for cut in [0, 8, 20, content.len() - 1] {
            assert_eq!(chain::decode(&content[..cut]), None, "cut at {cut}");
        }
        assert_eq!(chain::decode(&[content.as_slice(), b"x"].concat()), None);

        // What the journal writes straight from an event or a read is what the
        // table's MAC covers, and a read encodes as its event does.
        let peer = Peer { uid: 1000, gid: 100, pid: Some(42), accepted: None };
        let actor = Actor { token: Some("tok-1".into()), ..Actor::peer("agent", Some(&peer)) };
        let reads = [
            (Outcome::Denied, Some("bot ✓"), ReadDetail::Reason("sealed".into())),
            (Outcome::Ok, None, ReadDetail::Version(7)),
            (Outcome::Failed, Some("b\"ot"), ReadDetail::Reason("a \"quoted\" reason".to_string().into())),
        ];
        for (outcome, client, detail) in reads {
            let read = Read { kind: Kind::SecretRead, outcome, actor: &actor, client, env: "prod", name: "x", detail };
            let mut from_read = Vec::new();
            read.encode(&mut from_read, 41, 1_700_000_000_123);
            let event = read.into_event();
            let mut from_event = Vec::new();
            event.encode(&mut from_event, 41, 1_700_000_000_123);
            let row = event.to_row(41, 1_700_000_000_123);
            assert_eq!(from_event, chain::content(&row));
            assert_eq!(from_read, from_event, "{row:?}");
        }
        let row = chain::decode(&{
            let mut out = Vec::new();
            Read {
                kind: Kind::SecretRead,
                outcome: Outcome::Ok,
                actor: &actor,
                client: Some("bot"),
                env: "prod",
                name: "x",
                detail: ReadDetail::Version(7),
            }
            .encode(&mut out, 1, 2);
            out
        })
        .unwrap();
        assert_eq!(row.actor, r#"{"socket":"agent","uid":1000,"gid":100,"pid":42,"client":"bot","token":"tok-1"}"#);
        assert_eq!((row.secret.as_str(), row.detail.as_str()), ("prod/x", r#"{"version":7}"#));
    }

    /// A vault with one secret, read `reads` times by its owner; then "crashed":
    /// dropped without sealing, so the journal is left as a killed vaultd leaves it.
    async fn crashed_after_reads(dir: &Path, reads: u64) -> PathBuf {
        let vault = Vault::open(&dir.join("data"), &Config::default()).unwrap();
        let actor = Actor::vaultd();
        vault.init(&actor, &SecretBytes::new(PASSPHRASE.to_vec())).unwrap();
        let secret = SecretRef::parse("", "telegram").unwrap();
        let value = SecretBytes::new(b"a value".to_vec());
        vault.put(&actor, secret, &SecretLabels::default(), &PolicyChange::default(), &value).unwrap();
        let owner = Peer { uid: rustix::process::geteuid().as_raw(), gid: 0, pid: None, accepted: None };
        for _ in 0..reads {
            vault.get(&actor, Some(&owner), None, secret, 0).await.unwrap();
        }
        drop(vault);
        dir.join("data").join(DIR)
    }

    fn reopen(dir: &Path) -> Arc<Vault> {
        let vault = Vault::open(&dir.join("data"), &Config::default()).unwrap();
        vault.unlock(&Actor::vaultd(), &SecretBytes::new(PASSPHRASE.to_vec())).unwrap();
        vault
    }

    fn entries(vault: &Vault, kind: &str) -> Vec<AuditRow> {
        let filter = AuditFilter { kind: Some(kind.into()), limit: 10_000, ..AuditFilter::default() };
        vault.audit_query(&filter).unwrap()
    }

    fn only_file(journal: &Path) -> PathBuf {
        let files = journal_files(journal).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        files[0].clone()
    }

    #[tokio::test]
    async fn reads_left_in_the_journal_by_a_crash_are_imported_at_unlock() {
        let dir = tempfile::tempdir().unwrap();
        let journal = crashed_after_reads(dir.path(), 25).await;
        let file = only_file(&journal);
        assert_eq!(parse(&std::fs::read(&file).unwrap()).0.len(), 25);

        let vault = reopen(dir.path());
        assert_eq!(entries(&vault, "secret.read").len(), 25);
        let recovered = entries(&vault, "audit.journal_recovered");
        assert_eq!(recovered.len(), 1);
        assert!(recovered[0].detail.contains(r#""imported":25"#), "{}", recovered[0].detail);
        assert!(matches!(vault.audit_verify().unwrap(), Verdict::Intact { .. }));
        assert!(parse(&std::fs::read(&file).unwrap_or_default()).0.is_empty(), "an imported file stays behind");

        // Imported records are never imported twice, and journaling goes on.
        drop(vault);
        let vault = reopen(dir.path());
        assert_eq!(entries(&vault, "secret.read").len(), 25);
        assert!(matches!(vault.audit_verify().unwrap(), Verdict::Intact { .. }));
    }

    #[tokio::test]
    async fn seal_and_a_second_unlock_import_everything_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(&dir.path().join("data"), &Config::default()).unwrap();
        let actor = Actor::vaultd();
        let passphrase = SecretBytes::new(PASSPHRASE.to_vec());
        vault.init(&actor, &passphrase).unwrap();
        let secret = SecretRef::parse("", "telegram").unwrap();
        let value = SecretBytes::new(b"a value".to_vec());
        vault.put(&actor, secret, &SecretLabels::default(), &PolicyChange::default(), &value).unwrap();
        let owner = Peer { uid: rustix::process::geteuid().as_raw(), gid: 0, pid: None, accepted: None };
        let read = || vault.get(&actor, Some(&owner), None, secret, 0);
        for _ in 0..5 {
            read().await.unwrap();
        }
        // Unlocking again while unlocked starts a new file; the records waiting in
        // the old one are imported from it, once.
        vault.unlock(&actor, &passphrase).unwrap();
        for _ in 0..3 {
            read().await.unwrap();
        }
        assert_eq!(entries(&vault, "secret.read").len(), 8);
        // Sealing imports what waits and leaves no file behind.
        read().await.unwrap();
        vault.seal(&actor).unwrap();
        let journal = dir.path().join("data").join(DIR);
        let left: usize =
            journal_files(&journal).unwrap().iter().map(|f| parse(&std::fs::read(f).unwrap()).0.len()).sum();
        assert_eq!(left, 0);
        // Sealed, a read's denial is stored in the table at once (no key to journal with).
        assert!(read().await.is_err());
        vault.unlock(&actor, &passphrase).unwrap();
        assert_eq!(entries(&vault, "secret.read").len(), 10);
        assert!(entries(&vault, "audit.journal_damaged").is_empty());
        assert!(matches!(vault.audit_verify().unwrap(), Verdict::Intact { .. }));
    }

    #[tokio::test]
    async fn a_file_cut_mid_record_is_recovered_up_to_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let journal = crashed_after_reads(dir.path(), 10).await;
        let file = only_file(&journal);
        let bytes = std::fs::read(&file).unwrap();
        let (records, _) = parse(&bytes);
        let end: usize = records.iter().map(|e| 4 + e.content.len() + MAC_LEN).sum();
        // The last record half there, as a crash during its write would leave it.
        let mut cut = bytes[..end - 20].to_vec();
        cut.resize(bytes.len(), 0);
        std::fs::write(&file, cut).unwrap();
        assert_recovered_cleanly(dir.path(), 9, "ends in a record that does not verify");
    }

    #[tokio::test]
    async fn a_record_whose_length_was_not_written_yet_reads_as_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let journal = crashed_after_reads(dir.path(), 3).await;
        let file = only_file(&journal);
        let mut bytes = std::fs::read(&file).unwrap();
        let (records, _) = parse(&bytes);
        // A crash during the last append: its record is all there but its length,
        // which goes in last. (With the bytes of a later record after it, too.)
        let last = records[..2].iter().map(|e| 4 + e.content.len() + MAC_LEN).sum::<usize>();
        let whole = 4 + records[2].content.len() + MAC_LEN;
        let copy = bytes[last..last + whole].to_vec();
        bytes[last..last + 4].fill(0);
        bytes[last + whole..last + 2 * whole].copy_from_slice(&copy);
        std::fs::write(&file, bytes).unwrap();
        assert_recovered_cleanly(dir.path(), 2, "that are not a whole record");
    }

    /// After a crash cut the journal short: `reads` imported at unlock, the
    /// recovery record `says` why the rest was not, no damage, the log intact.
    fn assert_recovered_cleanly(dir: &Path, reads: usize, says: &str) {
        let vault = reopen(dir);
        assert_eq!(entries(&vault, "secret.read").len(), reads);
        let recovered = entries(&vault, "audit.journal_recovered");
        assert!(recovered[0].detail.contains(says), "{}", recovered[0].detail);
        assert!(entries(&vault, "audit.journal_damaged").is_empty());
        assert!(matches!(vault.audit_verify().unwrap(), Verdict::Intact { .. }));
    }

    #[test]
    fn a_journal_file_that_cannot_be_allocated_is_not_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        // More than any disk (or file) can hold.
        assert!(new_file(&path, 1 << 62).is_err());
        assert!(!path.exists(), "a half-made file would block its name");
        assert!(new_file(&path, SEGMENT_BYTES).is_ok());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SEGMENT_BYTES);
    }

    #[tokio::test]
    async fn records_altered_while_vaultd_was_down_are_reported_not_imported() {
        type Alter = fn(&mut Vec<u8>, &[std::ops::Range<usize>]);
        // Each alters records 4 and on of 8, in the middle of the file.
        let cases: [(&str, Alter, &str, usize); 4] = [
            ("edit a byte", |b, r| b[r[3].start + 30] ^= 1, "record 4 does not match", 3),
            ("delete a record", |b, r| drop(b.drain(r[3].clone())), "records 4 to 4 are missing", 3),
            ("swap two records", |b, r| swap(b, r[3].clone(), r[4].clone()), "records 4 to 4 are missing", 3),
            ("insert a copy", |b, r| insert(b, r[3].end, r[3].clone()), "record 4 appears twice", 4),
        ];
        for (what, alter, problem, before) in cases {
            let dir = tempfile::tempdir().unwrap();
            let journal = crashed_after_reads(dir.path(), 8).await;
            let file = only_file(&journal);
            let mut bytes = std::fs::read(&file).unwrap();
            let spans = record_spans(&bytes);
            alter(&mut bytes, &spans);
            std::fs::write(&file, bytes).unwrap();

            let vault = reopen(dir.path());
            let damaged = entries(&vault, "audit.journal_damaged");
            assert_eq!(damaged.len(), 1, "{what}");
            assert!(damaged[0].detail.contains(problem), "{what}: {}", damaged[0].detail);
            assert_eq!(entries(&vault, "secret.read").len(), before, "{what}: only the records before it");
            match vault.audit_verify().unwrap() {
                Verdict::Broken { seq, problem } => {
                    assert_eq!(seq, damaged[0].seq, "{what}");
                    assert!(problem.contains("lost from the journal"), "{what}: {problem}");
                }
                intact => panic!("{what}: {intact:?}"),
            }
            assert!(file.with_extension("damaged").exists(), "{what}: the evidence is gone");
            // Journaling starts afresh after the damage.
            let owner = Peer { uid: rustix::process::geteuid().as_raw(), gid: 0, pid: None, accepted: None };
            let secret = SecretRef::parse("", "telegram").unwrap();
            vault.get(&Actor::vaultd(), Some(&owner), None, secret, 0).await.unwrap();
            drop(vault);
            let vault = reopen(dir.path());
            assert_eq!(entries(&vault, "secret.read").len(), before + 1, "{what}");
            assert_eq!(entries(&vault, "audit.journal_damaged").len(), 1, "{what}");
        }
    }

    #[tokio::test]
    async fn moving_the_import_position_forward_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let journal = crashed_after_reads(dir.path(), 5).await;
        let (records, _) = parse(&std::fs::read(only_file(&journal)).unwrap());
        // Claim all five imported, with the real MAC of the fifth: the pair's own MAC needs the key.
        let db = rusqlite::Connection::open(dir.path().join("data/vault.db")).unwrap();
        let forged = rusqlite::params![5, records[4].mac.to_vec(), vec![0u8; MAC_LEN]];
        db.execute("INSERT OR REPLACE INTO audit_journal (id, jseq, jmac, mac) VALUES (1, ?, ?, ?)", forged).unwrap();
        drop(db);
        let vault = reopen(dir.path());
        let damaged = entries(&vault, "audit.journal_damaged");
        assert!(damaged[0].detail.contains("import position"), "{}", damaged[0].detail);
        assert!(entries(&vault, "secret.read").is_empty());
    }

    /// A journal opened in `dir`, not tied to a vault.
    fn open_journal(dir: &Path) -> Journal {
        let (_, _, keys) = crate::crypto::create(&SecretBytes::new(PASSPHRASE.to_vec()), KdfParams::DEFAULT).unwrap();
        let journal = Journal::new(dir);
        journal.open(Arc::new(keys), (0, GENESIS)).unwrap();
        journal
    }

    /// Makes the current file full: the next append starts another.
    fn fill(journal: &Journal) {
        let mut writer = journal.writer();
        let w = writer.as_mut().unwrap();
        w.size = w.len;
    }

    #[tokio::test]
    async fn a_read_finding_the_import_behind_waits_for_it_and_is_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(open_journal(dir.path()));
        let batch: Vec<Event> = (0..1024).map(read_event).collect();
        // More than the import takes in easily, and no import yet.
        for _ in 0..EASY_WAITING / batch.len() {
            journal.append(&batch).unwrap();
        }
        let (room, reader) = tokio::sync::oneshot::channel();
        let j = journal.clone();
        tokio::spawn(async move {
            j.room().await;
            let _ = room.send(j.append(&[read_event(0)]).is_ok());
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(reader.is_empty(), "the read did not wait for the import");
        journal.imported(&journal.take());
        assert_eq!(tokio::time::timeout(Duration::from_secs(1), reader).await.unwrap(), Ok(true));

        // The wait is bounded; only far behind is a read refused.
        for _ in 0..EASY_WAITING / batch.len() {
            journal.append(&batch).unwrap();
        }
        let started = std::time::Instant::now();
        journal.room().await;
        assert!((MAX_WAIT..MAX_WAIT * 2).contains(&started.elapsed()), "{:?}", started.elapsed());
        while journal.append(&batch).is_ok() {}
        assert!(journal.writer().as_ref().unwrap().waiting.len() > MAX_WAITING - batch.len());
        // An import that failed refuses at once: no read waits on it.
        journal.stalled("disk full".into());
        tokio::time::timeout(Duration::from_millis(100), journal.room()).await.unwrap();
        assert!(journal.append(&[read_event(0)]).is_err());
    }

    #[test]
    fn a_file_whose_records_are_all_imported_is_zeroed_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open_journal(dir.path());
        let journal_dir = dir.path().join(DIR);
        journal.append(&[read_event(1), read_event(2)]).unwrap();
        fill(&journal);
        journal.append(&[read_event(3)]).unwrap();
        journal.imported(&journal.take());
        // File 1 held only imported records: it is kept, zeroed, as the spare.
        assert!(std::fs::read(segment_path(&journal_dir, 1)).unwrap().iter().all(|&b| b == 0));
        fill(&journal);
        journal.append(&[read_event(4)]).unwrap();
        // File 3 is the spare renamed, holding only what was written since.
        let files = journal_files(&journal_dir).unwrap();
        assert_eq!(files, [segment_path(&journal_dir, 2), segment_path(&journal_dir, 3)]);
        let (records, rest) = parse(&std::fs::read(&files[1]).unwrap());
        assert_eq!((records.iter().map(Entry::number).collect::<Vec<_>>(), rest), (vec![4], 0));
        let left = journal.leftover().unwrap();
        assert!(left.torn.is_empty(), "{:?}", left.torn);
        let numbers: Vec<u64> = left.files.iter().flat_map(|(_, r)| r).map(Entry::number).collect();
        assert_eq!(numbers, [3, 4]);
    }

    #[test]
    fn a_journal_file_that_cannot_be_made_fails_the_append() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open_journal(dir.path());
        assert!(matches!(journal.append(&[read_event(1)]), Ok(Appended::Yes)));
        // The file is full, and where the next would go is not a directory (a
        // full disk fails the same way: the file is allocated when it is made).
        fill(&journal);
        let journal_dir = dir.path().join(DIR);
        std::fs::rename(&journal_dir, dir.path().join("elsewhere")).unwrap();
        std::fs::write(&journal_dir, b"not a directory").unwrap();
        let refused = journal.append(&[read_event(2)]).err().unwrap().to_string();
        assert!(refused.contains("audit log could not be written") && refused.contains("journal"), "{refused}");
        std::fs::remove_file(&journal_dir).unwrap();
        std::fs::rename(dir.path().join("elsewhere"), &journal_dir).unwrap();
        assert!(matches!(journal.append(&[read_event(3), read_event(4)]), Ok(Appended::Yes)));
        assert_eq!(journal_files(&journal_dir).unwrap().len(), 2);

        // The files hold one unbroken chain, 1, 2, 3, without the refused record.
        let waiting = journal.take().entries();
        assert_eq!(waiting.iter().map(Entry::number).collect::<Vec<_>>(), [1, 2, 3]);
        let versions: Vec<String> = waiting.iter().map(|e| chain::decode(&e.content).unwrap().detail).collect();
        assert_eq!(versions, [r#"{"version":1}"#, r#"{"version":3}"#, r#"{"version":4}"#]);
        let left = journal.leftover().unwrap();
        assert!(left.torn.is_empty(), "{:?}", left.torn);
        let records: Vec<&Entry> = left.files.iter().flat_map(|(_, r)| r).collect();
        assert_eq!(records.len(), 3);
        let keys = journal.writer().as_ref().unwrap().keys.clone();
        let mut mac = GENESIS;
        for (entry, expected) in records.iter().zip(&waiting) {
            assert!(keys.journal_mac_matches(&mac, &entry.content, &entry.mac));
            assert_eq!(entry.content, expected.content);
            mac = entry.mac;
        }
    }

    fn record_spans(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
        let (records, _) = parse(bytes);
        let mut at = 0;
        records
            .iter()
            .map(|e| {
                let len = 4 + e.content.len() + MAC_LEN;
                at += len;
                at - len..at
            })
            .collect()
    }

    fn swap(bytes: &mut Vec<u8>, a: std::ops::Range<usize>, b: std::ops::Range<usize>) {
        let (first, second) = (bytes[a.clone()].to_vec(), bytes[b.clone()].to_vec());
        bytes.splice(a.start..b.end, second.into_iter().chain(first));
    }

    fn insert(bytes: &mut Vec<u8>, at: usize, copy: std::ops::Range<usize>) {
        let record = bytes[copy].to_vec();
        bytes.splice(at..at, record);
    }
}
