//! The optional monotonic anchor (`[integrity] anchor = "PATH"`).
//!
//! Everything in the data directory is authenticated, but a whole older copy of
//! it (a backup put back, a snapshot rolled back) is authentic too: nothing in
//! the directory can tell it is not the newest. The anchor is a small file in a
//! second place the operator names (another disk, a path only vaultd and root
//! may write, a TPM-backed or remote-synced mount): the newest state generation
//! and audit head vaultd wrote, under a MAC. At unlock, a data directory older
//! than the anchor is a rollback: reported, and nothing in it is acted on until
//! the owner acknowledges it.
//!
//! It is written at unlock, at seal and at every change made through the admin
//! API (not at a token's use, which would cost a write per read); so a
//! rollback to a point before the last of those is caught.

use crate::crypto::{self, Unlocked};
use std::io::Write as _;
use std::path::Path;

/// What the anchor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub generation: u64,
    pub seq: u64,
}

fn mac(keys: &Unlocked, mark: Mark) -> String {
    let mut e = b"anchor".to_vec();
    e.extend_from_slice(&mark.generation.to_be_bytes());
    e.extend_from_slice(&mark.seq.to_be_bytes());
    crypto::hex(&keys.state_root_mac(&e))
}

/// The mark in `path`: `Ok(None)` if there is no file yet, `Err` if it is not
/// one this vault wrote.
pub fn read(path: &Path, keys: &Unlocked) -> Result<Option<Mark>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| format!("{} is not an anchor file", path.display()))?;
    let (Some(generation), Some(seq), Some(claimed)) =
        (value["generation"].as_u64(), value["seq"].as_u64(), value["mac"].as_str())
    else {
        return Err(format!("{} is not an anchor file", path.display()));
    };
    let mark = Mark { generation, seq };
    if mac(keys, mark) != claimed {
        return Err(format!("{} does not match its MAC (altered, or another vault's)", path.display()));
    }
    Ok(Some(mark))
}

/// Writes `mark` to `path` atomically (a temp file beside it, synced, renamed
/// over it), owner-only.
pub fn write(path: &Path, keys: &Unlocked, mark: Mark) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".vaultd-anchor-").tempfile_in(dir)?;
    let json = serde_json::json!({ "generation": mark.generation, "seq": mark.seq, "mac": mac(keys, mark) });
    writeln!(tmp, "{json}")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Whether the data directory (at `found`) is older than the anchor says.
pub fn rolled_back(anchor: Mark, found: Mark) -> bool {
    found.generation < anchor.generation || found.seq < anchor.seq
}
