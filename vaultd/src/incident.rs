//! Incident response (ARCHITECTURE §7): what revoke-all changes, its report, and the
//! break-glass path that works straight on the data directory, without the
//! daemon or the passphrase (`vaultctl revoke-all --offline`).

use crate::audit::{Actor, Event, Outcome, chain};
use crate::store::{Store, StoreError, Txn, now_unix};
use std::path::Path;

/// An incident's report: the wire's `IncidentReport`, stored with the incident
/// as JSON and printed by `revoke-all` and `incident show`. Names and counts
/// only, never a value. `streams_closed` is 0 offline: a running vaultd ends its
/// own streams when it notices the incident.
pub use vault_proto::v1::{HookOutcome, IncidentReport as Report};

pub fn to_json(report: &Report) -> String {
    serde_json::to_string(report).unwrap_or_else(|_| "{}".into())
}

/// A stored report (a damaged one reads as empty rather than failing the list).
pub fn from_json(text: &str) -> Report {
    serde_json::from_str(text).unwrap_or_default()
}

/// Reasons are free text for humans; bounded so a report stays a report.
const MAX_REASON: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    #[error("give a reason (--reason TEXT), up to {MAX_REASON} characters")]
    Reason,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub fn check_reason(reason: &str) -> Result<(), IncidentError> {
    if reason.trim().is_empty() || reason.len() > MAX_REASON {
        return Err(IncidentError::Reason);
    }
    Ok(())
}

/// In `txn`: every token revoked, every client disabled, every current version
/// compromised, the incident stored. Returns the report and its audit event.
pub fn revoke_everything(
    txn: &Txn<'_>,
    mode: &str,
    reason: &str,
    actor: &Actor,
) -> Result<(Report, Event), StoreError> {
    let revoked = txn.revoke_everything()?;
    let mut report = Report {
        reason: reason.into(),
        mode: mode.into(),
        started_unix: now_unix(),
        tokens_revoked: revoked.tokens,
        clients_disabled: revoked.clients,
        secrets_compromised: revoked.secrets.len() as u64,
        needs_rotation: revoked.secrets,
        ..Report::default()
    };
    report.id = txn.incident_insert(mode, reason, &to_json(&report))?;
    txn.incident_set_report(report.id, &to_json(&report))?;
    let event = Event::new("incident.revoke_all", Outcome::Ok, actor)
        .with("incident", report.id)
        .with("mode", mode)
        .with("reason", reason)
        .with("tokens_revoked", report.tokens_revoked)
        .with("clients_disabled", report.clients_disabled)
        .with("secrets_compromised", report.secrets_compromised);
    Ok((report, event))
}

/// Break-glass: revoke-all straight on `data_dir`, with no daemon and no
/// passphrase. SQLite's locking makes it safe beside a running (or hung) vaultd,
/// which honours it within a second. Its audit record is stored unchained, like
/// everything written while sealed, and is chained by vaultd at its next write
/// or unlock. Run it as the vault's owner: vaultd refuses files another user made.
pub fn revoke_all_offline(data_dir: &Path, reason: &str) -> Result<Report, IncidentError> {
    check_reason(reason)?;
    let store = Store::open(data_dir)?;
    let actor = Actor::this_process("offline");
    let report = store.write(|txn| {
        let (report, event) = revoke_everything(txn, "offline", reason, &actor)?;
        chain::append(txn, None, &[event])?;
        Ok::<_, StoreError>(report)
    })?;
    Ok(report)
}
