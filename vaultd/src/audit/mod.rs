//! The tamper-evident audit log (ARCHITECTURE §8).
//!
//! Every security-relevant action appends an [`Event`] in the same transaction as
//! the change it records ([`chain::append`]); if the append fails, so does the
//! action. Requests that change nothing (reads, refusals) have no transaction of
//! their own: their records go to the [`journal`] first, and the value is released
//! only once its record is written there; they reach the table a [`batch`] to a
//! row. Entries are published for `audit tail`
//! and the forwarding sinks ([`forward`]) as they reach the table.

pub mod batch;
pub mod chain;
mod event;
pub mod forward;
pub mod journal;
mod kind;
pub mod refusals;

pub use chain::Verdict;
pub use event::{Actor, Event, Outcome, Read, ReadDetail, Record, entry_json};
pub use kind::{Class, Kind};
