//! revoke-all through the running daemon (ARCHITECTURE §7): the changes in one
//! transaction, then every watch stream ended with PERMISSION_DENIED and every
//! agent connection closed; optionally the secrets' hooks revoke them at the
//! provider, and the vault is sealed. A revoke-all made offline by another
//! process is noticed within a second ([`Vault::honour_incidents`]).

use super::{Change, Vault, VaultError};
use crate::audit::chain;
use crate::audit::{Actor, Event, Kind, Outcome};
use crate::incident::{self, HookOutcome, Report};
use crate::rotation::{Rotator, hook};
use crate::state::{Incident, IncidentMode, Persist as _};
use crate::store::{AuditFilter, AuditRow};
use futures_util::StreamExt as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Provider revocations run at once, at most.
const HOOKS_AT_ONCE: usize = 8;
/// How long revoke-all waits for watch streams to end before cutting the
/// connections of those whose readers are not reading.
const STREAMS_GRACE: Duration = Duration::from_secs(1);
/// Audit entries `incident show` returns at most.
const TIMELINE_MAX: u32 = 1000;

impl Vault {
    /// Revokes everything; returns the incident's report. Works sealed too (the
    /// audit record is then chained at the next unlock), except `provider_revoke`,
    /// which needs the keys to hand the hooks their values.
    pub async fn revoke_all(
        &self,
        actor: &Actor,
        reason: &str,
        seal: bool,
        provider_revoke: bool,
    ) -> Result<Report, VaultError> {
        incident::check_reason(reason).map_err(|e| VaultError::Rotator(e.to_string()))?;
        let mut report = if self.is_sealed() {
            // Nothing is served while sealed, and nothing can be signed: the
            // incident is stored unsigned and applied at the next unlock.
            self.store.write(|txn| {
                let mut i = incident::new_incident(txn.next_incident_id()?, IncidentMode::Online, reason);
                let mut report =
                    Report { id: i.id, reason: reason.into(), mode: i.mode.as_str().into(), ..Report::default() };
                report.started_unix = i.started_unix;
                i.report = incident::to_json(&report);
                txn.save_incident(&mut i, None)?;
                report.id = i.id;
                chain::append(txn, None, &[incident::event(Kind::IncidentRevokeAll, &report, actor)])?;
                Ok::<_, VaultError>(report)
            })?
        } else {
            self.write(|c| {
                let new = incident::new_incident(c.txn.next_incident_id()?, IncidentMode::Online, reason);
                let report = incident::revoke_everything(&mut c.state, new)?;
                let event = incident::event(Kind::IncidentRevokeAll, &report, actor);
                Ok((report, vec![event]))
            })?
        };
        self.incident_seen.fetch_max(report.id, Ordering::SeqCst);
        report.streams_closed = self.end_streams().await;
        if provider_revoke {
            report.provider_revoke = self.provider_revoke(&report.needs_rotation).await;
        }
        let event = Event::new(Kind::IncidentCompleted, Outcome::Ok, actor)
            .with("incident", report.id)
            .with("streams_closed", report.streams_closed)
            .with("provider_revoked", report.provider_revoke.iter().filter(|h| h.ok).count())
            .with("provider_failed", report.provider_revoke.iter().filter(|h| !h.ok).count())
            .with("seal", seal);
        self.save_report(&report, vec![event])?;
        if seal {
            self.seal(actor)?;
            report.sealed = true;
        }
        Ok(report)
    }

    /// Stores an incident's final report with `events`: signed while unlocked,
    /// kept unsigned (like the incident) while sealed.
    fn save_report(&self, report: &Report, events: Vec<Event>) -> Result<(), VaultError> {
        let json = incident::to_json(report);
        if self.is_sealed() {
            return self.store.write(|txn| {
                let mut i = Incident {
                    id: report.id,
                    started_unix: report.started_unix,
                    mode: report.mode.parse().unwrap_or(IncidentMode::Online),
                    reason: report.reason.clone(),
                    report: json,
                };
                txn.save_incident(&mut i, None)?;
                chain::append(txn, None, &events)?;
                Ok::<_, VaultError>(())
            });
        }
        self.write(|c| {
            let applied = c.state.image().incidents().find(|i| i.id == report.id).cloned();
            if let Some(mut i) = applied {
                i.report = json;
                c.state.save_incident(i);
            }
            Ok(((), events))
        })
    }

    /// Ends every watch stream (each answers PERMISSION_DENIED), waits a moment
    /// for them to go, then closes every agent connection: a stream whose reader
    /// is not reading cannot be told, but it can be cut. Returns how many streams
    /// were open.
    async fn end_streams(&self) -> u64 {
        let open = self.watching.load(Ordering::SeqCst) as u64;
        self.incident_epoch.fetch_add(1, Ordering::SeqCst);
        self.notify();
        let deadline = Instant::now() + STREAMS_GRACE;
        while self.watching.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.cutoff.send_modify(|n| *n = n.wrapping_add(1));
        open
    }

    /// Every incident's report, oldest first (those made offline and not yet
    /// applied too).
    pub fn incidents(&self) -> Result<Vec<Report>, VaultError> {
        self.keys()?;
        let image = self.image();
        let mut all: Vec<&Incident> = image.incidents().chain(image.pending_incidents()).collect();
        all.sort_by_key(|i| i.id);
        Ok(all.into_iter().map(|i| incident::from_json(&i.report)).collect())
    }

    /// One incident's report, and the audit log of the `hours` before it up to
    /// its own records (at most [`TIMELINE_MAX`] entries, the newest).
    pub fn incident(&self, id: i64, hours: u32) -> Result<(Report, Vec<AuditRow>), VaultError> {
        self.keys()?;
        let found = {
            let image = self.image();
            image.incidents().chain(image.pending_incidents()).find(|i| i.id == id).cloned()
        };
        let row = found.ok_or(VaultError::IncidentNotFound(id))?;
        let started_ms = row.started_unix.saturating_mul(1000);
        let filter = AuditFilter {
            since_unix_ms: Some(started_ms.saturating_sub(i64::from(hours) * 3_600_000)),
            // Its own records, and the completion record written right after.
            until_unix_ms: Some(started_ms.saturating_add(60_000)),
            limit: TIMELINE_MAX,
            ..AuditFilter::default()
        };
        Ok((incident::from_json(&row.report), self.audit_query(&filter)?))
    }

    /// Agent connections subscribe to this: a change means "close now".
    pub fn cutoffs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.cutoff.subscribe()
    }

    /// Acts on a revoke-all another process made (offline, on the data dir):
    /// applies it (signed now) and ends every stream and connection. Called
    /// every second by the daemon.
    pub async fn honour_incidents(&self) -> Result<(), VaultError> {
        let latest = self.store.latest_incident()?;
        if self.incident_seen.load(Ordering::SeqCst) >= latest {
            return Ok(());
        }
        tracing::warn!(
            incident = latest,
            "a revoke-all was made offline: applying it, ending every stream and connection"
        );
        if !self.is_sealed() {
            // Also chains the offline record on (see audit::chain).
            self.write(|c| {
                let mut events = Vec::new();
                for found in c.txn.unsigned_incidents()? {
                    let report = incident::revoke_everything(&mut c.state, found)?;
                    events.push(incident::event(Kind::IncidentApplied, &report, &Actor::vaultd()));
                }
                Ok(((), events))
            })?;
        }
        self.incident_seen.fetch_max(latest, Ordering::SeqCst);
        let streams = self.end_streams().await;
        let event = Event::new(Kind::IncidentHonoured, Outcome::Ok, &Actor::vaultd())
            .with("incident", latest)
            .with("streams_closed", streams);
        self.append(vec![event], true)?;
        Ok(())
    }

    /// Each compromised secret whose rotator is a hook gets its revoke-old step
    /// for the compromised value, a few at a time, each within the hook timeout.
    async fn provider_revoke(&self, secrets: &[String]) -> Vec<HookOutcome> {
        let runs = futures_util::stream::iter(secrets.to_vec())
            .map(|secret: String| async move {
                let (ok, detail) = match self.revoke_at_provider(&secret).await {
                    Ok(None) => return None,
                    Ok(Some(done)) => (true, done.to_owned()),
                    Err(why) => (false, why),
                };
                Some(HookOutcome { secret, ok, detail })
            })
            .buffer_unordered(HOOKS_AT_ONCE);
        let mut outcomes: Vec<HookOutcome> = runs.filter_map(std::future::ready).collect().await;
        outcomes.sort_by(|a, b| a.secret.cmp(&b.secret));
        outcomes
    }

    /// `Ok(None)`: the secret has no hook. `Err(why)`: the hook failed.
    async fn revoke_at_provider(&self, secret: &str) -> Result<Option<&'static str>, String> {
        let fail = |why: String| why;
        let (env, name) = secret.split_once('/').ok_or_else(|| fail("bad name".into()))?;
        let secret_ref = super::SecretRef { env, name };
        let row = self.describe(secret_ref).map_err(|e| fail(e.to_string()))?;
        let Ok(Rotator::Exec(path)) = row.rotator.parse::<Rotator>() else { return Ok(None) };
        let value = self.read_version_any(secret_ref, row.current_version).map_err(|e| fail(e.to_string()))?;
        let context = hook::Context { env, name, provider: &row.provider, version: row.current_version };
        hook::run(&path, hook::Step::RevokeOld, &context, &value, &self.rotation)
            .await
            .map(|_| Some("revoked at the provider"))
            .map_err(|e| fail(e.to_string()))
    }
}

/// At unlock, in its transaction: applies the revoke-alls made without the key
/// (offline, or while sealed) before anything is served. Returns their records.
pub(super) fn apply_pending(c: &mut Change<'_, '_>) -> Result<Vec<Event>, VaultError> {
    let pending: Vec<Incident> = c.state.image().pending_incidents().cloned().collect();
    let mut events = Vec::new();
    for found in pending {
        let report = incident::revoke_everything(&mut c.state, found)?;
        events.push(incident::event(Kind::IncidentApplied, &report, &Actor::vaultd()));
    }
    Ok(events)
}
