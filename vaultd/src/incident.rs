//! Incident response (DESIGN §7): what revoke-all changes, its report, and the
//! break-glass path that works straight on the data directory, without the
//! daemon or the passphrase (`vaultctl revoke-all --offline`).

use crate::audit::{Actor, Event, Outcome, chain};
use crate::store::{Store, StoreError, Txn, now_unix};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// An incident's report: stored with it, printed by `revoke-all` and `incident
/// show`. Names and counts only, never a value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub id: i64,
    pub reason: String,
    /// `online` (through vaultd) or `offline` (break-glass, on the data dir).
    pub mode: String,
    pub started_unix: i64,
    pub tokens_revoked: u64,
    pub clients_disabled: u64,
    pub secrets_compromised: u64,
    /// Watch streams open at the time, all ended (0 offline: a running vaultd
    /// ends its own when it notices the incident).
    pub streams_closed: u64,
    pub sealed: bool,
    /// `env/name` of every secret to rotate (`vaultctl rotate --compromised`).
    pub needs_rotation: Vec<String>,
    /// Provider revocations by the secrets' hooks (`--provider-revoke`).
    pub provider_revoke: Vec<HookOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookOutcome {
    pub secret: String,
    pub ok: bool,
    /// What happened: "revoked at the provider", or the hook's error.
    pub detail: String,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    pub fn from_json(text: &str) -> Report {
        serde_json::from_str(text).unwrap_or_default()
    }
}

impl From<Report> for vault_proto::v1::IncidentReport {
    fn from(r: Report) -> Self {
        vault_proto::v1::IncidentReport {
            id: r.id,
            reason: r.reason,
            mode: r.mode,
            started_unix: r.started_unix,
            tokens_revoked: r.tokens_revoked,
            clients_disabled: r.clients_disabled,
            secrets_compromised: r.secrets_compromised,
            streams_closed: r.streams_closed,
            sealed: r.sealed,
            needs_rotation: r.needs_rotation,
            provider_revoke: r
                .provider_revoke
                .into_iter()
                .map(|h| vault_proto::v1::HookOutcome { secret: h.secret, ok: h.ok, detail: h.detail })
                .collect(),
        }
    }
}

impl From<vault_proto::v1::IncidentReport> for Report {
    fn from(r: vault_proto::v1::IncidentReport) -> Self {
        Report {
            id: r.id,
            reason: r.reason,
            mode: r.mode,
            started_unix: r.started_unix,
            tokens_revoked: r.tokens_revoked,
            clients_disabled: r.clients_disabled,
            secrets_compromised: r.secrets_compromised,
            streams_closed: r.streams_closed,
            sealed: r.sealed,
            needs_rotation: r.needs_rotation,
            provider_revoke: r
                .provider_revoke
                .into_iter()
                .map(|h| HookOutcome { secret: h.secret, ok: h.ok, detail: h.detail })
                .collect(),
        }
    }
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
    report.id = txn.incident_insert(mode, reason, &report.to_json())?;
    txn.incident_set_report(report.id, &report.to_json())?;
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
