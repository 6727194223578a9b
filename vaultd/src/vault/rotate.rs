//! Rotation's state machine (ARCHITECTURE §6), persisted in the `rotation` table:
//!
//! ```text
//! begin (step create) ─ hook create ─▶ pending stored (step test) ─ hook test ─▶ promoted (done)
//!        │ fails / crash: failed            │ fails: failed, pending owes revoke-old
//!                                           │ crash: the test is run again at the next pass
//! ```
//!
//! Manual and generated values need no hook: begin, store and promote are one
//! transaction. A promoted rotation leaves the old current as previous until its
//! grace ends; then it retires, and a hook's `revoke-old` step runs for it.
//! Every step is an audit record in the same transaction as the state it reaches,
//! and the current version is never touched before the promotion.

use super::{SecretRef, Vault, VaultError};
use crate::audit::{Actor, Event, Outcome};
use crate::crypto::SecretBytes;
use crate::rotation::{Rotator, hook};
use crate::store::{OldVersion, PolicyChange, Promoted, RotationRow, SecretRow, now_unix};
use std::sync::Arc;

/// Who started a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Operator,
    Schedule,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Operator => "operator",
            Trigger::Schedule => "schedule",
        }
    }
}

/// The outcome of a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotated {
    pub version: u64,
    pub promoted: Promoted,
}

/// A failed scheduled rotation is retried after this (or its period, if shorter).
const RETRY_SECS: i64 = 15 * 60;

/// Marks a secret as rotating in this process until dropped, so the scheduler
/// never runs a second rotation beside one in progress (the database's unique
/// index would refuse it anyway) nor "resumes" one that is merely running.
struct Claim<'a> {
    vault: &'a Vault,
    key: (String, String),
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.vault.rotating().remove(&self.key);
    }
}

impl Vault {
    fn rotating(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<(String, String)>> {
        self.rotating.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn claim(&self, secret: SecretRef<'_>) -> Result<Claim<'_>, VaultError> {
        let key = (secret.env.to_owned(), secret.name.to_owned());
        if !self.rotating().insert(key.clone()) {
            return Err(VaultError::RotationInProgress(format!("{}/{}", secret.env, secret.name)));
        }
        Ok(Claim { vault: self, key })
    }

    /// Changes a secret's rotation policy.
    pub fn set_rotation(
        &self,
        actor: &Actor,
        secret: SecretRef<'_>,
        change: &PolicyChange,
    ) -> Result<SecretRow, VaultError> {
        check_policy(change)?;
        self.keys()?;
        self.write(|txn| {
            if !txn.set_policy(secret.env, secret.name, change)? {
                return Err(secret.not_found());
            }
            Ok(((), vec![policy_event(actor, secret, change)]))
        })?;
        self.describe(secret)
    }

    /// Rotates `secret` with its rotator; `value` is the manual rotator's new
    /// value (and must be absent for the others). Returns once the new version is
    /// current, or with the error that left the current version as it was.
    pub async fn rotate(
        &self,
        actor: &Actor,
        secret: SecretRef<'_>,
        value: Option<SecretBytes>,
        trigger: Trigger,
    ) -> Result<Rotated, VaultError> {
        let keys = self.keys()?;
        let row = self.describe(secret)?;
        let rotator: Rotator = row.rotator.parse().map_err(|e: crate::rotation::RotatorError| {
            VaultError::Rotator(format!("{}/{}: stored rotator: {e}", secret.env, secret.name))
        })?;
        let value = match (&rotator, value) {
            (Rotator::Manual, Some(value)) => Some(value),
            (Rotator::Manual, None) => {
                return Err(VaultError::Rotator(format!(
                    "{}/{} rotates manually: give the new value (vaultctl rotate reads it from stdin or --from-file)",
                    secret.env, secret.name
                )));
            }
            (Rotator::Generate(spec), None) => Some(spec.value()?),
            (Rotator::Exec(_), None) => None,
            (other, Some(_)) => {
                return Err(VaultError::Rotator(format!(
                    "{}/{} rotates with {other}, which makes its own value; give none",
                    secret.env, secret.name
                )));
            }
        };
        let _claim = self.claim(secret)?;
        let rotator_name = rotator.to_string();
        let Some(value) = value else {
            let Rotator::Exec(path) = &rotator else { unreachable_rotator()? };
            return self.rotate_with_hook(actor, secret, &row, path, trigger).await;
        };
        super::check_value(&value)?;
        let digest = keys.value_digest(value.expose());
        let keep = self.rotation.keep_versions;
        let rotated = self.write(|txn| {
            let (id, from, _) = txn.secret_ids(secret.env, secret.name)?.ok_or_else(|| secret.not_found())?;
            let rotation = txn
                .rotation_begin(id, &rotator_name, trigger.as_str(), from)?
                .ok_or_else(|| VaultError::RotationInProgress(format!("{}/{}", secret.env, secret.name)))?;
            let version = txn.next_version(id)?;
            let mut events = vec![start_event(actor, secret, &rotator_name, trigger, from)];
            let term = self.sealing_term(txn, &keys, 1, &mut events)?;
            let sealed = keys.seal_version(&secret.version(version), term, value.expose())?;
            txn.insert_version(id, version, "pending", &sealed)?;
            let promoted = txn.promote(id, version, keep)?;
            txn.rotation_step(rotation, "done", Some(version), None)?;
            events.push(step_event("rotation.created", actor, secret, version).with("value_digest", digest));
            events.push(promoted_event(actor, secret, version, promoted));
            Ok((Rotated { version, promoted }, events))
        })?;
        self.notify();
        Ok(rotated)
    }

    /// create → store pending → test → promote, each step persisted before the
    /// next begins.
    async fn rotate_with_hook(
        &self,
        actor: &Actor,
        secret: SecretRef<'_>,
        row: &SecretRow,
        path: &std::path::Path,
        trigger: Trigger,
    ) -> Result<Rotated, VaultError> {
        let keys = self.keys()?;
        let rotator = format!("exec:{}", path.display());
        let (rotation, from, version) = self.write(|txn| {
            let (id, from, _) = txn.secret_ids(secret.env, secret.name)?.ok_or_else(|| secret.not_found())?;
            let rotation = txn
                .rotation_begin(id, &rotator, trigger.as_str(), from)?
                .ok_or_else(|| VaultError::RotationInProgress(format!("{}/{}", secret.env, secret.name)))?;
            let version = txn.next_version(id)?;
            Ok(((rotation, from, version), vec![start_event(actor, secret, &rotator, trigger, from)]))
        })?;
        let context = hook::Context { env: secret.env, name: secret.name, provider: &row.provider, version };
        let current = match self.read_version_any(secret, from) {
            Ok(value) => value,
            Err(e) => {
                return Err(self.rotation_failed(actor, secret, rotation, "create", None, e.to_string(), trigger));
            }
        };
        let created = match hook::run(path, hook::Step::Create, &context, &current, &self.rotation).await {
            Ok(Some(value)) => value,
            Ok(None) => unreachable_rotator()?,
            Err(e) => {
                return Err(self.rotation_failed(actor, secret, rotation, "create", None, e.to_string(), trigger));
            }
        };
        // From here on the provider knows the new value: store it before anything
        // else can go wrong, so it is never lost.
        let digest = keys.value_digest(created.expose());
        let version = self.write(|txn| {
            let (id, _, _) = txn.secret_ids(secret.env, secret.name)?.ok_or_else(|| secret.not_found())?;
            let version = txn.next_version(id)?;
            let mut events = Vec::with_capacity(2);
            let term = self.sealing_term(txn, &keys, 1, &mut events)?;
            txn.insert_version(
                id,
                version,
                "pending",
                &keys.seal_version(&secret.version(version), term, created.expose())?,
            )?;
            txn.rotation_step(rotation, "test", Some(version), None)?;
            events.push(step_event("rotation.created", actor, secret, version).with("value_digest", digest));
            Ok((version, events))
        })?;
        self.test_and_promote(actor, secret, rotation, path, &row.provider, version, &created, trigger).await
    }

    /// The `test` step and the promotion (also the resumption of a rotation that
    /// a crash interrupted after its pending version was stored).
    #[allow(clippy::too_many_arguments)]
    async fn test_and_promote(
        &self,
        actor: &Actor,
        secret: SecretRef<'_>,
        rotation: i64,
        path: &std::path::Path,
        provider: &str,
        version: u64,
        pending: &SecretBytes,
        trigger: Trigger,
    ) -> Result<Rotated, VaultError> {
        let context = hook::Context { env: secret.env, name: secret.name, provider, version };
        if let Err(e) = hook::run(path, hook::Step::Test, &context, pending, &self.rotation).await {
            return Err(self.rotation_failed(actor, secret, rotation, "test", Some(version), e.to_string(), trigger));
        }
        let keep = self.rotation.keep_versions;
        let promoted = self.write(|txn| {
            let (id, _, _) = txn.secret_ids(secret.env, secret.name)?.ok_or_else(|| secret.not_found())?;
            let promoted = txn.promote(id, version, keep)?;
            txn.rotation_step(rotation, "done", None, None)?;
            let events = vec![
                step_event("rotation.tested", actor, secret, version),
                promoted_event(actor, secret, version, promoted),
            ];
            Ok((promoted, events))
        })?;
        self.notify();
        Ok(Rotated { version, promoted })
    }

    /// Marks a rotation failed (a stored pending version owes a revoke-old run)
    /// and returns the error for the caller. The current version is untouched.
    #[allow(clippy::too_many_arguments)]
    fn rotation_failed(
        &self,
        actor: &Actor,
        secret: SecretRef<'_>,
        rotation: i64,
        step: &str,
        pending: Option<u64>,
        reason: String,
        trigger: Trigger,
    ) -> VaultError {
        let recorded = self.write(|txn| {
            if let Some((id, _, _)) = txn.secret_ids(secret.env, secret.name)? {
                if let Some(version) = pending {
                    txn.abandon_pending(id, version, true)?;
                }
                if trigger == Trigger::Schedule {
                    txn.postpone_rotation(id, RETRY_SECS)?;
                }
            }
            txn.rotation_step(rotation, "failed", None, Some(&reason))?;
            let event = Event::new("rotation.failed", Outcome::Failed, actor)
                .secret(secret.env, secret.name)
                .with("step", step)
                .with("reason", reason.clone());
            Ok(((), vec![event]))
        });
        match recorded {
            Ok(()) => {
                VaultError::RotationFailed(format!("rotation of {}/{} failed: {reason}", secret.env, secret.name))
            }
            Err(e) => e,
        }
    }

    /// Any stored version's value (for the hook's stdin), whatever its state.
    pub(super) fn read_version_any(&self, secret: SecretRef<'_>, version: u64) -> Result<SecretBytes, VaultError> {
        let keys = self.keys()?;
        let (_, _, ciphertext) =
            self.store.version(secret.env, secret.name, version)?.ok_or_else(|| secret.not_found())?;
        let ciphertext = ciphertext.ok_or_else(|| secret.not_found())?;
        Ok(keys.open_version(&secret.version(version), &ciphertext)?)
    }

    /// Secrets with a schedule (every environment), or only those due now, or
    /// (`compromised`) those whose current version revoke-all marked compromised.
    pub fn rotations(&self, due_only: bool, compromised: bool) -> Result<Vec<SecretRow>, VaultError> {
        self.keys()?;
        if compromised {
            return Ok(self.store.compromised()?);
        }
        Ok(self.store.scheduled(due_only.then(now_unix))?)
    }

    pub fn last_rotation(&self, secret: SecretRef<'_>) -> Result<Option<RotationRow>, VaultError> {
        self.keys()?;
        Ok(self.store.last_rotation(secret.env, secret.name)?)
    }

    /// One pass of the scheduler: resumes or rolls back interrupted rotations,
    /// starts due ones (alerts for manual ones), retires previous versions whose
    /// grace ended and runs their revoke-old hooks. Does nothing while sealed.
    /// Rotations run as their own tasks, so a slow hook holds up nothing else.
    pub async fn rotation_pass(self: &Arc<Self>) -> Result<(), VaultError> {
        if self.current_keys().is_none() {
            return Ok(());
        }
        let vaultd = Actor::vaultd();
        for rotation in self.store.rotations_in_progress()? {
            if self.rotating().contains(&(rotation.env.clone(), rotation.name.clone())) {
                continue;
            }
            let vault = self.clone();
            tokio::spawn(async move {
                if let Err(e) = vault.resume(&rotation).await {
                    tracing::warn!(secret = %format!("{}/{}", rotation.env, rotation.name), error = %e, "resuming a rotation");
                }
            });
        }
        let now = now_unix();
        for due in self.store.rotations_due(now)? {
            let secret = SecretRef { env: &due.env, name: &due.name };
            if due.rotator == "manual" {
                if !due.alerted {
                    self.write(|txn| {
                        txn.rotation_alerted(secret.env, secret.name)?;
                        let event = Event::new("rotation.due", Outcome::Ok, &vaultd)
                            .secret(secret.env, secret.name)
                            .with("due_unix", due.due_unix)
                            .with("reason", "manual rotation due: run `vaultctl rotate NAME`");
                        Ok(((), vec![event]))
                    })?;
                }
                continue;
            }
            if self.rotating().contains(&(due.env.clone(), due.name.clone())) {
                continue;
            }
            let vault = self.clone();
            tokio::spawn(async move {
                let secret = SecretRef { env: &due.env, name: &due.name };
                if let Err(e) = vault.rotate(&Actor::vaultd(), secret, None, Trigger::Schedule).await {
                    tracing::warn!(secret = %format!("{}/{}", due.env, due.name), error = %e, "scheduled rotation");
                }
            });
        }
        for old in self.store.grace_ended(now)? {
            let hook = old.rotator.starts_with("exec:");
            self.write(|txn| {
                if !txn.retire(&old.env, &old.name, old.version, hook)? {
                    return Ok(((), vec![]));
                }
                let event =
                    step_event("rotation.retired", &vaultd, SecretRef { env: &old.env, name: &old.name }, old.version)
                        .with("reason", "grace period over");
                Ok(((), vec![event]))
            })?;
        }
        for old in self.store.revocations_due(now)? {
            self.revoke_old(&old).await?;
        }
        Ok(())
    }

    /// Picks up a rotation that a crash interrupted: one that never stored its
    /// new value is rolled back (marked failed); one that did is tested again and
    /// promoted, so a value the provider created is never dropped.
    async fn resume(&self, rotation: &RotationRow) -> Result<(), VaultError> {
        let secret = SecretRef { env: &rotation.env, name: &rotation.name };
        let _claim = self.claim(secret)?;
        let vaultd = Actor::vaultd();
        let trigger = if rotation.trigger == "schedule" { Trigger::Schedule } else { Trigger::Operator };
        let (Some(version), "test", Ok(Rotator::Exec(path))) =
            (rotation.new_version, rotation.step.as_str(), rotation.rotator.parse::<Rotator>())
        else {
            let reason = format!(
                "interrupted in its {} step by a vaultd restart before the new value was stored; run it again",
                rotation.step
            );
            return Err(self.rotation_failed(&vaultd, secret, rotation.id, &rotation.step, None, reason, trigger));
        };
        let keys = self.keys()?;
        let (row, pending) = self.write(|txn| {
            let (id, _, provider) = txn.secret_ids(secret.env, secret.name)?.ok_or_else(|| secret.not_found())?;
            let ciphertext = txn.pending(id, version)?.ok_or_else(|| secret.not_found())?;
            let event = step_event("rotation.resumed", &vaultd, secret, version).with("step", "test");
            Ok(((provider, ciphertext), vec![event]))
        })?;
        let pending = keys.open_version(&secret.version(version), &pending)?;
        self.test_and_promote(&vaultd, secret, rotation.id, &path, &row, version, &pending, trigger).await?;
        Ok(())
    }

    /// Runs the revoke-old hook for a version the provider should forget; a
    /// failure is recorded and retried later with back-off.
    async fn revoke_old(&self, old: &OldVersion) -> Result<(), VaultError> {
        let secret = SecretRef { env: &old.env, name: &old.name };
        let vaultd = Actor::vaultd();
        let outcome = match (old.rotator.parse::<Rotator>(), &old.ciphertext) {
            (Ok(Rotator::Exec(path)), Some(ciphertext)) => {
                let keys = self.keys()?;
                let value = keys.open_version(&secret.version(old.version), ciphertext)?;
                let context =
                    hook::Context { env: secret.env, name: secret.name, provider: &old.provider, version: old.version };
                hook::run(&path, hook::Step::RevokeOld, &context, &value, &self.rotation)
                    .await
                    .map(|_| "revoked at the provider")
                    .map_err(|e| e.to_string())
            }
            // The rotator is no longer a hook: nothing can revoke it any more.
            _ => Ok("skipped: the rotator is no longer a hook"),
        };
        let now = now_unix();
        self.write(|txn| {
            let event = match &outcome {
                Ok(what) => {
                    txn.revoke_done(secret.env, secret.name, old.version, None)?;
                    step_event("rotation.revoked_old", &vaultd, secret, old.version).with("result", *what)
                }
                Err(reason) => {
                    txn.revoke_done(secret.env, secret.name, old.version, Some(now.saturating_add(RETRY_SECS)))?;
                    Event::new("rotation.failed", Outcome::Failed, &vaultd)
                        .secret(secret.env, secret.name)
                        .with("step", "revoke-old")
                        .with("version", old.version)
                        .with("reason", reason.clone())
                }
            };
            Ok(((), vec![event]))
        })
    }
}

fn unreachable_rotator<T>() -> Result<T, VaultError> {
    Err(VaultError::Rotator("internal error: rotator mismatch".into()))
}

fn start_event(actor: &Actor, secret: SecretRef<'_>, rotator: &str, trigger: Trigger, from: u64) -> Event {
    Event::new("rotation.start", Outcome::Ok, actor)
        .secret(secret.env, secret.name)
        .with("rotator", rotator)
        .with("trigger", trigger.as_str())
        .with("from_version", from)
}

fn step_event(kind: &'static str, actor: &Actor, secret: SecretRef<'_>, version: u64) -> Event {
    Event::new(kind, Outcome::Ok, actor).secret(secret.env, secret.name).with("version", version)
}

fn promoted_event(actor: &Actor, secret: SecretRef<'_>, version: u64, promoted: Promoted) -> Event {
    step_event("rotation.promoted", actor, secret, version)
        .with("previous_version", promoted.previous)
        .with("grace_until_unix", promoted.grace_until)
}

/// A policy change is checked before it is stored: a canonical rotator, and a
/// hook nobody else could have replaced.
pub(super) fn check_policy(change: &PolicyChange) -> Result<(), VaultError> {
    if let Some(rotator) = &change.rotator {
        match rotator.parse::<Rotator>() {
            Ok(Rotator::Exec(path)) => hook::check_safe(&path).map_err(|e| VaultError::Rotator(e.to_string()))?,
            Ok(parsed) if parsed.to_string() != *rotator => {
                return Err(VaultError::Rotator(format!("rotator {rotator:?} is not in canonical form ({parsed})")));
            }
            Ok(_) => {}
            Err(e) => return Err(VaultError::Rotator(e.to_string())),
        }
    }
    Ok(())
}

pub(super) fn policy_event(actor: &Actor, secret: SecretRef<'_>, change: &PolicyChange) -> Event {
    let mut event = Event::new("rotation.policy", Outcome::Ok, actor).secret(secret.env, secret.name);
    if let Some(rotator) = &change.rotator {
        event = event.with("rotator", rotator.clone());
    }
    if let Some(every) = change.every_secs {
        event = event.with("rotate_every_secs", every);
    }
    if let Some(grace) = change.grace_secs {
        event = event.with("grace_secs", grace);
    }
    event
}
