//! Incident response (ARCHITECTURE §7): what revoke-all changes, its report, and the
//! break-glass path that works straight on the data directory, without the
//! daemon or the passphrase (`vaultctl revoke-all --offline`).

use crate::audit::{Actor, Event, Kind, Outcome, chain};
use crate::state::{Draft, Incident, IncidentMode, Persist as _, StateError};
use crate::store::{Store, StoreError, now_unix};
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

/// In a change: every token revoked, every client disabled, every current
/// version (and a previous one in grace) compromised, and `incident` stored
/// with its report (a new one has id 0; an offline one being applied keeps its
/// own). Returns the report and its audit event.
pub fn revoke_everything(state: &mut Draft<'_>, mut incident: Incident) -> Result<Report, StateError> {
    let now = now_unix();
    let mut tokens = 0;
    for accessor in state.token_accessors() {
        if let Some(t) = state.token_mut(&accessor)?
            && t.revoke(now)
        {
            tokens += 1;
        }
    }
    let mut clients = 0;
    for name in state.client_names() {
        if let Some(c) = state.client_mut(&name)?
            && c.disable()
        {
            clients += 1;
        }
    }
    let mut secrets = Vec::new();
    for (env, name) in state.secret_names() {
        if let Some(s) = state.secret_mut(&env, &name)?
            && s.compromise()
        {
            secrets.push(format!("{env}/{name}"));
        }
    }
    let report = report(&incident, tokens, clients, secrets);
    incident.report = to_json(&report);
    state.save_incident(incident);
    Ok(report)
}

/// The record of a revoke-all (`kind`: made, or applied by vaultd after it was
/// made offline).
pub fn event(kind: Kind, report: &Report, actor: &Actor) -> Event {
    Event::new(kind, Outcome::Ok, actor)
        .with("incident", report.id)
        .with("mode", report.mode.clone())
        .with("reason", report.reason.clone())
        .with("tokens_revoked", report.tokens_revoked)
        .with("clients_disabled", report.clients_disabled)
        .with("secrets_compromised", report.secrets_compromised)
}

/// An incident's report: what it revoked (or, offline, will revoke).
fn report(incident: &Incident, tokens: u64, clients: u64, secrets: Vec<String>) -> Report {
    Report {
        id: incident.id,
        reason: incident.reason.clone(),
        mode: incident.mode.as_str().into(),
        started_unix: incident.started_unix,
        tokens_revoked: tokens,
        clients_disabled: clients,
        secrets_compromised: secrets.len() as u64,
        needs_rotation: secrets,
        ..Report::default()
    }
}

/// A new incident, numbered `id`, now.
pub fn new_incident(id: i64, mode: IncidentMode, reason: &str) -> Incident {
    Incident { id, started_unix: now_unix(), mode, reason: reason.into(), report: "{}".into() }
}

/// Break-glass: revoke-all straight on `data_dir`, with no daemon and no
/// passphrase. Without the key nothing can be signed, so it stores the incident
/// alone, unsigned (the one row vaultd accepts from behind its back), with a
/// report of what it will reach; vaultd applies it (every token revoked, every
/// client disabled, every current version compromised) within a second if it
/// runs, and before serving anything at its next unlock otherwise. SQLite's
/// locking makes it safe beside a running (or hung) vaultd. Its audit record is
/// stored unchained, like everything written while sealed, and is chained by
/// vaultd. Run it as the vault's owner: vaultd refuses files another user made.
pub fn revoke_all_offline(data_dir: &Path, reason: &str) -> Result<Report, IncidentError> {
    check_reason(reason)?;
    let store = Store::open(data_dir)?;
    let actor = Actor::this_process("offline");
    let report = store.write(|txn| {
        let (tokens, clients, secrets) = crate::store::incident_reach(txn)?;
        let mut incident = new_incident(txn.next_incident_id()?, IncidentMode::Offline, reason);
        let report = report(&incident, tokens, clients, secrets);
        incident.report = to_json(&report);
        txn.save_incident(&mut incident, None)?;
        chain::append(txn, None, &[event(Kind::IncidentRevokeAll, &report, &actor)])?;
        Ok::<_, StoreError>(report)
    })?;
    Ok(report)
}
