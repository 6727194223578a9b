//! The tamper-evident audit log (DESIGN §8).
//!
//! Every security-relevant action appends an [`Event`] in the same transaction as
//! the change it records ([`chain::append`]); if the append fails, so does the
//! action. Reads have no transaction of their own, so their records go through a
//! group commit ([`Committer`]) and the value is released only once its record is
//! committed. Committed entries are then published for `audit tail` and the
//! forwarding sinks ([`forward`]).

pub mod chain;
pub mod committer;
mod event;
pub mod forward;

pub use chain::Verdict;
pub use committer::Committer;
pub use event::{Actor, Event, Outcome, entry_json};
