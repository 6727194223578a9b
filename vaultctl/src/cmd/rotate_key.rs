//! `vaultctl rotate-key [--rewrap]`: a new key term for new writes; with
//! `--rewrap`, every stored version re-encrypted under it in batches, then the
//! older terms retired.
//!
//! The rewrap's progress lives in the data (each ciphertext names its term), so
//! an interrupted run (vaultctl or vaultd killed) is continued by running the
//! same command again: vaultd remembers that a rewrap is unfinished and does not
//! start yet another term.

use std::io::{IsTerminal as _, Write as _};

use serde::Serialize;
use vault_proto::v1::{RewrapKeysRequest, RotateKeyRequest};

use crate::Global;
use crate::daemon::{self, Reply as _};
use crate::output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Re-encrypt every stored version under the newest term, then retire the
    /// older terms. Running it again continues an interrupted rewrap.
    #[arg(long)]
    rewrap: bool,
    /// Versions per transaction during --rewrap (writes wait for each batch).
    #[arg(long, value_name = "N", default_value_t = 500, requires = "rewrap")]
    batch: u32,
}

/// `{"term","new_term","rewrapped","to_rewrap","retired_terms"}`.
#[derive(Serialize)]
struct RotateJson {
    term: u32,
    new_term: bool,
    rewrapped: u64,
    to_rewrap: u64,
    retired_terms: Vec<u32>,
}

/// Walks over everything at most this many times (one is expected).
const MAX_WALKS: u32 = 10;

pub(crate) async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let mut admin = daemon::admin(global).await?;
    let rotated = admin.rotate_key(RotateKeyRequest { rewrap: args.rewrap }).await.reply()?;
    let mut out = RotateJson {
        term: rotated.term,
        new_term: rotated.new_term,
        rewrapped: 0,
        to_rewrap: rotated.to_rewrap,
        retired_terms: rotated.retired_terms.clone(),
    };
    if args.rewrap {
        let mut progress = Progress::new(out.to_rewrap);
        let (mut after, mut walks) = (0, 1);
        loop {
            let batch = RewrapKeysRequest { after, batch: args.batch, term: rotated.term };
            let reply = match admin.rewrap_keys(batch).await.reply() {
                Ok(reply) => reply,
                Err(e) => {
                    progress.finish();
                    return Err(e.context(format!(
                        "rewrap interrupted after {} versions; run `vaultctl rotate-key --rewrap` again to continue",
                        out.rewrapped
                    )));
                }
            };
            out.rewrapped += reply.rewrapped;
            out.term = reply.term;
            out.retired_terms.extend(reply.retired_terms);
            after = reply.next_after;
            progress.show(out.rewrapped, out.term);
            if reply.done {
                if reply.remaining == 0 {
                    break;
                }
                // Versions left behind the walk (not expected: new writes use a
                // newer term): walk again from the start.
                walks += 1;
                anyhow::ensure!(
                    walks <= MAX_WALKS,
                    "new key terms keep starting; rewrap stopped after {MAX_WALKS} walks"
                );
                progress.total = out.rewrapped + reply.remaining;
                after = 0;
            }
        }
        progress.finish();
        out.to_rewrap = 0;
    }
    if global.json {
        return output::json(&out);
    }
    let mut lines = vec![if out.new_term {
        format!("new key term {} for new writes", out.term)
    } else {
        format!("continuing the unfinished rewrap to key term {}", out.term)
    }];
    if args.rewrap {
        lines.push(format!("rewrapped {} versions under key term {}", out.rewrapped, out.term));
    } else if out.to_rewrap > 0 {
        lines.push(format!(
            "{} versions remain under older terms (`vaultctl rotate-key --rewrap` moves them)",
            out.to_rewrap
        ));
    }
    if !out.retired_terms.is_empty() {
        let terms: Vec<String> = out.retired_terms.iter().map(u32::to_string).collect();
        lines.push(format!("retired key terms {}", terms.join(", ")));
    }
    output::lines(&lines)
}

/// A one-line progress display on stderr, redrawn in place; only when stderr is
/// a terminal (scripts and logs get the summary alone).
struct Progress {
    total: u64,
    tty: bool,
}

impl Progress {
    fn new(total: u64) -> Progress {
        Progress { total, tty: std::io::stderr().is_terminal() }
    }

    fn show(&self, done: u64, term: u32) {
        if !self.tty {
            return;
        }
        let total = self.total.max(done).max(1);
        let width = 30;
        let filled = (done * width / total) as usize;
        let bar = format!("{}{}", "#".repeat(filled), "-".repeat(width as usize - filled));
        let _ = write!(std::io::stderr(), "\rrewrap to term {term} [{bar}] {done}/{total} ({}%)", done * 100 / total);
    }

    fn finish(&self) {
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}
