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
use crate::audit::{Actor, Event, Kind, Outcome};
use crate::crypto::SecretBytes;
use crate::rotation::{Rotator, hook, split_check, with_check};
pub use crate::state::Trigger;
use crate::state::{PolicyChange, Promoted, Rotation, Secret, Step, VersionState};
use crate::store::now_unix;
use std::sync::Arc;

/// A version whose time at the provider is over: its grace ended, or its
/// revoke-old hook is due.
struct OldVersion {
    env: String,
    name: String,
    provider: String,
    rotator: String,
    version: u64,
    ciphertext: Option<Arc<[u8]>>,
}

impl OldVersion {
    fn of(s: &Secret, version: u64) -> OldVersion {
        OldVersion {
            env: s.env.clone(),
            name: s.name.clone(),
            provider: s.provider.clone(),
            rotator: s.rotator.clone(),
            version,
            ciphertext: s.versions.get(&version).and_then(|v| v.ciphertext.clone()),
        }
    }
}

/// A rotation, with the secret it rotates (as `last_rotation` reports it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationRow {
    pub id: i64,
    pub env: String,
    pub name: String,
    pub rotation: Rotation,
}

/// The outcome of a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    pub version: u64,
    pub promoted: Promoted,
    /// A compromised secret rotated with a hook: its compromised versions'
    /// revoke-old step, each revoked at the provider or why not.
    pub compromised: Vec<(u64, Result<(), String>)>,
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
    ) -> Result<Arc<Secret>, VaultError> {
        self.check_policy(secret, change)?;
        self.keys()?;
        self.write(|c| {
            c.secret(secret)?.set_policy(change, now_unix());
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
        self.finish_interrupted(secret).await?;
        let compromised = self.secret(secret)?.is_compromised();
        let claim = self.claim(secret)?;
        // Tested by a route's provider check (`;check=ROUTE`) before it is promoted?
        let check = split_check(&row.rotator).1;
        let rotator_name = with_check(&rotator.to_string(), check);
        let Some(value) = value else {
            let Rotator::Exec(path) = &rotator else { unreachable_rotator()? };
            let mut rotated = self.rotate_with_hook(actor, secret, &row, path, trigger).await?;
            drop(claim);
            if compromised {
                rotated.compromised = self.revoke_compromised(secret).await;
            }
            return Ok(rotated);
        };
        super::check_value(&value)?;
        let digest = keys.value_digest(value.expose());
        let keep = self.rotation.keep_versions;
        let now = now_unix();
        let (rotation, version, promoted) = self.write(|c| {
            let rotation = c.txn.next_rotation_id()?;
            let mut events = Vec::with_capacity(4);
            let term = self.sealing_term(&mut c.state, &keys, 1, &mut events)?;
            let s = c.secret(secret)?;
            let from = s.current_version;
            if !s.begin_rotation(rotation, &rotator_name, trigger, now) {
                return Err(VaultError::RotationInProgress(format!("{}/{}", secret.env, secret.name)));
            }
            let version = s.next_version();
            s.add_pending(version, keys.seal_version(&secret.version(version), term, value.expose())?, now);
            events.insert(0, start_event(actor, secret, &rotator_name, trigger, from));
            events.push(step_event(Kind::RotationCreated, actor, secret, version).with("value_digest", digest));
            // A value a check tests waits for it, pending, like a hook's.
            let promoted = check.is_none().then(|| s.promote(version, keep, now));
            let step = if promoted.is_some() { Step::Done } else { Step::Test };
            s.rotation_step(rotation, step, Some(version), None, now);
            if let Some(promoted) = promoted {
                events.push(promoted_event(actor, secret, version, promoted));
            }
            Ok(((rotation, version, promoted), events))
        })?;
        match (promoted, check) {
            (Some(promoted), _) => {
                drop(claim);
                self.notify();
                Ok(Rotated { version, promoted, compromised: Vec::new() })
            }
            (None, Some(route)) => {
                let test = Test::Check(route);
                self.test_and_promote(actor, secret, rotation, test, &row.provider, version, &value, trigger).await
            }
            (None, None) => unreachable_rotator(),
        }
    }

    /// An interrupted rotation of `secret` (one in progress that this process
    /// did not start: a crash ended the vaultd that did) is finished before
    /// another starts: resumed if its new value was stored, else rolled back. So
    /// `rotate` is never refused for one. A rotation running here is left alone
    /// (the next claim refuses).
    async fn finish_interrupted(&self, secret: SecretRef<'_>) -> Result<(), VaultError> {
        let key = (secret.env.to_owned(), secret.name.to_owned());
        let unlocked_at = self.unlocked_at.load(std::sync::atomic::Ordering::SeqCst);
        let patience = self.rotation.hook_timeout * 3 + std::time::Duration::from_secs(5);
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let found = self.secret(secret)?;
            let Some((id, rotation)) = found.rotation_in_progress() else { return Ok(()) };
            // Started since this unlock: a live one, and the claim refuses the new one.
            if rotation.started_unix > unlocked_at {
                return Ok(());
            }
            if !self.rotating().contains(&key) {
                let row =
                    RotationRow { id, env: found.env.clone(), name: found.name.clone(), rotation: rotation.clone() };
                // A resumed rotation that fails is over (recorded as failed): the new one goes on.
                return match self.resume(&row).await {
                    Ok(()) | Err(VaultError::RotationFailed(_) | VaultError::RotationInProgress(_)) => Ok(()),
                    Err(e) => Err(e),
                };
            }
            // The scheduler is resuming it: wait for that to end.
            if tokio::time::Instant::now() > deadline {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// After a compromised secret was rotated with its hook: the revoke-old step
    /// for each version revoke-all marked compromised, so the provider forgets
    /// them too. Each outcome is recorded; one that fails is retried by the
    /// scheduler with back-off.
    async fn revoke_compromised(&self, secret: SecretRef<'_>) -> Vec<(u64, Result<(), String>)> {
        let Ok(found) = self.secret(secret) else { return Vec::new() };
        let compromised: Vec<u64> = found
            .versions
            .iter()
            .filter(|(_, v)| v.state == VersionState::Compromised && v.ciphertext.is_some())
            .map(|(n, _)| *n)
            .collect();
        let mut outcomes = Vec::new();
        for version in compromised {
            let old = OldVersion::of(&found, version);
            let outcome = match self.revoke_old(&old).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(why)) => Err(why),
                Err(e) => Err(e.to_string()),
            };
            outcomes.push((version, outcome));
        }
        outcomes
    }

    /// create → store pending → test → promote, each step persisted before the
    /// next begins.
    async fn rotate_with_hook(
        &self,
        actor: &Actor,
        secret: SecretRef<'_>,
        row: &Secret,
        path: &std::path::Path,
        trigger: Trigger,
    ) -> Result<Rotated, VaultError> {
        let keys = self.keys()?;
        let rotator = row.rotator.clone();
        let (rotation, from, version) = self.write(|c| {
            let rotation = c.txn.next_rotation_id()?;
            let s = c.secret(secret)?;
            let from = s.current_version;
            if !s.begin_rotation(rotation, &rotator, trigger, now_unix()) {
                return Err(VaultError::RotationInProgress(format!("{}/{}", secret.env, secret.name)));
            }
            let version = s.next_version();
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
        let version = self.write(|c| {
            let mut events = Vec::with_capacity(2);
            let term = self.sealing_term(&mut c.state, &keys, 1, &mut events)?;
            let now = now_unix();
            let s = c.secret(secret)?;
            let version = s.next_version();
            s.add_pending(version, keys.seal_version(&secret.version(version), term, created.expose())?, now);
            s.rotation_step(rotation, Step::Test, Some(version), None, now);
            events.push(step_event(Kind::RotationCreated, actor, secret, version).with("value_digest", digest));
            Ok((version, events))
        })?;
        let test = match split_check(&row.rotator).1 {
            Some(route) => Test::Check(route),
            None => Test::Hook(path),
        };
        self.test_and_promote(actor, secret, rotation, test, &row.provider, version, &created, trigger).await
    }

    /// The `test` step and the promotion (also the resumption of a rotation that
    /// a crash interrupted after its pending version was stored).
    #[allow(clippy::too_many_arguments)]
    async fn test_and_promote(
        &self,
        actor: &Actor,
        secret: SecretRef<'_>,
        rotation: i64,
        test: Test<'_>,
        provider: &str,
        version: u64,
        pending: &SecretBytes,
        trigger: Trigger,
    ) -> Result<Rotated, VaultError> {
        let context = hook::Context { env: secret.env, name: secret.name, provider, version };
        let tested = match test {
            Test::Hook(path) => hook::run(path, hook::Step::Test, &context, pending, &self.rotation)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Test::Check(route) => match self.provider_check() {
                Ok(checks) => checks.check(actor, route, secret, version, pending).await,
                Err(why) => Err(why),
            }
            .map_err(|why| format!("the {route} check failed: {why}")),
        };
        if let Err(why) = tested {
            return Err(self.rotation_failed(actor, secret, rotation, "test", Some(version), why, trigger));
        }
        let keep = self.rotation.keep_versions;
        let promoted = self.write(|c| {
            let now = now_unix();
            let s = c.secret(secret)?;
            let promoted = s.promote(version, keep, now);
            s.rotation_step(rotation, Step::Done, None, None, now);
            let events = vec![
                step_event(Kind::RotationTested, actor, secret, version),
                promoted_event(actor, secret, version, promoted),
            ];
            Ok((promoted, events))
        })?;
        self.notify();
        Ok(Rotated { version, promoted, compromised: Vec::new() })
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
        let recorded = self.write(|c| {
            let now = now_unix();
            if let Some(s) = c.state.secret_mut(secret.env, secret.name)? {
                if let Some(version) = pending {
                    // Only a hook's provider knows the value it refused (and
                    // owes a revoke-old run); any other is simply destroyed.
                    let rotator = s.rotations.get(&rotation).map_or(s.rotator.as_str(), |r| r.rotator.as_str());
                    let hook = Rotator::is_hook(rotator);
                    s.abandon_pending(version, hook);
                }
                if trigger == Trigger::Schedule {
                    s.postpone_rotation(RETRY_SECS, now);
                }
                s.rotation_step(rotation, Step::Failed, None, Some(&reason), now);
            }
            let event = Event::new(Kind::RotationFailed, Outcome::Failed, actor)
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

    /// Secrets with a schedule (every environment), or only those due now, or
    /// (`compromised`) those whose current version revoke-all marked compromised.
    pub fn rotations(&self, due_only: bool, compromised: bool) -> Result<Vec<Arc<Secret>>, VaultError> {
        self.keys()?;
        let now = now_unix();
        let image = self.image();
        let mut found: Vec<&Arc<Secret>> = image
            .secrets()
            .filter(|s| match compromised {
                true => s.is_compromised(),
                false => s.next_rotation_unix.is_some_and(|due| !due_only || due <= now),
            })
            .collect();
        found.sort_by(|a, b| (a.next_rotation_unix, &a.env, &a.name).cmp(&(b.next_rotation_unix, &b.env, &b.name)));
        if compromised {
            found.sort_by(|a, b| (&a.env, &a.name).cmp(&(&b.env, &b.name)));
        }
        Ok(found.into_iter().cloned().collect())
    }

    pub fn last_rotation(&self, secret: SecretRef<'_>) -> Result<Option<RotationRow>, VaultError> {
        let s = self.secret(secret)?;
        Ok(s.last_rotation().map(|(id, r)| RotationRow {
            id,
            env: s.env.clone(),
            name: s.name.clone(),
            rotation: r.clone(),
        }))
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
        let now = now_unix();
        let (in_progress, due, grace_ended, revocations) = self.rotation_work(now);
        for rotation in in_progress {
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
        for (env, name, rotator, due_unix, alerted) in due {
            let secret = SecretRef { env: &env, name: &name };
            if Rotator::is_manual(&rotator) {
                if !alerted {
                    self.write(|c| {
                        c.secret(secret)?.due_alerted_unix = Some(now);
                        let event = Event::new(Kind::RotationDue, Outcome::Ok, &vaultd)
                            .secret(secret.env, secret.name)
                            .with("due_unix", due_unix)
                            .with("reason", "manual rotation due: run `vaultctl rotate NAME`");
                        Ok(((), vec![event]))
                    })?;
                }
                continue;
            }
            if self.rotating().contains(&(env.clone(), name.clone())) {
                continue;
            }
            let vault = self.clone();
            tokio::spawn(async move {
                let secret = SecretRef { env: &env, name: &name };
                if let Err(e) = vault.rotate(&Actor::vaultd(), secret, None, Trigger::Schedule).await {
                    tracing::warn!(secret = %format!("{env}/{name}"), error = %e, "scheduled rotation");
                }
            });
        }
        for old in grace_ended {
            let hook = Rotator::is_hook(&old.rotator);
            let secret = SecretRef { env: &old.env, name: &old.name };
            self.write(|c| {
                let Some(s) = c.state.secret_mut(secret.env, secret.name)? else { return Ok(((), vec![])) };
                if !s.retire(old.version, hook) {
                    return Ok(((), vec![]));
                }
                let event =
                    step_event(Kind::RotationRetired, &vaultd, secret, old.version).with("reason", "grace period over");
                Ok(((), vec![event]))
            })?;
        }
        for old in revocations {
            // A failure is recorded and retried with back-off by revoke_old itself.
            let _outcome = self.revoke_old(&old).await?;
        }
        Ok(())
    }

    /// What a scheduler pass has to do at `now`, from the verified state:
    /// rotations in progress, due schedules (env, name, rotator, due, alerted),
    /// previous versions whose grace ended, and revoke-old runs due.
    #[allow(clippy::type_complexity)]
    fn rotation_work(
        &self,
        now: i64,
    ) -> (Vec<RotationRow>, Vec<(String, String, String, i64, bool)>, Vec<OldVersion>, Vec<OldVersion>) {
        let image = self.image();
        let (mut in_progress, mut due, mut grace_ended, mut revocations) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for s in image.secrets() {
            if let Some((id, r)) = s.rotation_in_progress() {
                in_progress.push(RotationRow { id, env: s.env.clone(), name: s.name.clone(), rotation: r.clone() });
            }
            if let Some(at) = s.next_rotation_unix.filter(|at| *at <= now) {
                let alerted = s.due_alerted_unix.is_some_and(|a| a >= at);
                due.push((s.env.clone(), s.name.clone(), s.rotator.clone(), at, alerted));
            }
            for (n, v) in &s.versions {
                if v.state == VersionState::Previous && v.expires_unix.unwrap_or(0) <= now {
                    grace_ended.push(OldVersion::of(s, *n));
                }
                if v.revoke_pending && v.revoke_after_unix.unwrap_or(0) <= now {
                    revocations.push(OldVersion::of(s, *n));
                }
            }
        }
        in_progress.sort_by_key(|r| r.id);
        due.sort_by(|a, b| (a.3, &a.0, &a.1).cmp(&(b.3, &b.0, &b.1)));
        (in_progress, due, grace_ended, revocations)
    }

    /// Picks up a rotation that a crash interrupted: one that never stored its
    /// new value is rolled back (marked failed); one that did is tested again and
    /// promoted, so a value the provider created is never dropped.
    async fn resume(&self, found: &RotationRow) -> Result<(), VaultError> {
        let secret = SecretRef { env: &found.env, name: &found.name };
        let _claim = self.claim(secret)?;
        let vaultd = Actor::vaultd();
        let rotation = &found.rotation;
        let trigger = rotation.trigger;
        let parsed = rotation.rotator.parse::<Rotator>();
        let test = match (split_check(&rotation.rotator).1, &parsed) {
            (Some(route), _) => Some(Test::Check(route)),
            (None, Ok(Rotator::Exec(path))) => Some(Test::Hook(path)),
            _ => None,
        };
        let (Some(version), Step::Test, Some(test)) = (rotation.new_version, rotation.step, test) else {
            let reason = format!(
                "interrupted in its {} step by a vaultd restart before the new value was stored; run it again",
                rotation.step
            );
            return Err(self.rotation_failed(&vaultd, secret, found.id, rotation.step.as_str(), None, reason, trigger));
        };
        let keys = self.keys()?;
        let (row, pending) = self.write(|c| {
            let s = c.secret(secret)?;
            let ciphertext = s
                .versions
                .get(&version)
                .filter(|v| v.state == VersionState::Pending)
                .and_then(|v| v.ciphertext.clone())
                .ok_or_else(|| secret.not_found())?;
            let event = step_event(Kind::RotationResumed, &vaultd, secret, version).with("step", "test");
            Ok(((s.provider.clone(), ciphertext), vec![event]))
        })?;
        let pending = keys.open_version(&secret.version(version), &pending)?;
        self.test_and_promote(&vaultd, secret, found.id, test, &row, version, &pending, trigger).await?;
        Ok(())
    }

    /// Runs the revoke-old hook for a version the provider should forget; a
    /// failure is recorded and retried later with back-off. Returns what the
    /// hook did, or why it failed.
    async fn revoke_old(&self, old: &OldVersion) -> Result<Result<&'static str, String>, VaultError> {
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
        self.write(|c| {
            let Some(s) = c.state.secret_mut(secret.env, secret.name)? else { return Ok(((), vec![])) };
            let event = match &outcome {
                Ok(what) => {
                    s.revoke_done(old.version, None);
                    step_event(Kind::RotationRevokedOld, &vaultd, secret, old.version).with("result", *what)
                }
                Err(reason) => {
                    s.revoke_done(old.version, Some(now.saturating_add(RETRY_SECS)));
                    Event::new(Kind::RotationFailed, Outcome::Failed, &vaultd)
                        .secret(secret.env, secret.name)
                        .with("step", "revoke-old")
                        .with("version", old.version)
                        .with("reason", reason.clone())
                }
            };
            Ok(((), vec![event]))
        })?;
        Ok(outcome)
    }
}

fn unreachable_rotator<T>() -> Result<T, VaultError> {
    Err(VaultError::Rotator("internal error: rotator mismatch".into()))
}

fn start_event(actor: &Actor, secret: SecretRef<'_>, rotator: &str, trigger: Trigger, from: u64) -> Event {
    Event::new(Kind::RotationStart, Outcome::Ok, actor)
        .secret(secret.env, secret.name)
        .with("rotator", rotator)
        .with("trigger", trigger.as_str())
        .with("from_version", from)
}

fn step_event(kind: Kind, actor: &Actor, secret: SecretRef<'_>, version: u64) -> Event {
    Event::new(kind, Outcome::Ok, actor).secret(secret.env, secret.name).with("version", version)
}

fn promoted_event(actor: &Actor, secret: SecretRef<'_>, version: u64, promoted: Promoted) -> Event {
    step_event(Kind::RotationPromoted, actor, secret, version)
        .with("previous_version", promoted.previous)
        .with("grace_until_unix", promoted.grace_until)
}

/// How a rotation's new value is tested before it is promoted.
#[derive(Clone, Copy)]
enum Test<'a> {
    /// The hook's `test` step.
    Hook(&'a std::path::Path),
    /// The credential broker's check of this route's provider.
    Check(&'a str),
}

impl Vault {
    /// A policy change is checked before it is stored: a canonical rotator, a
    /// hook nobody else could have replaced, and a check by a route that
    /// carries this secret, of a value some provider issued.
    pub(super) fn check_policy(&self, secret: SecretRef<'_>, change: &PolicyChange) -> Result<(), VaultError> {
        let Some(stored) = &change.rotator else { return Ok(()) };
        let (rotator, check) = split_check(stored);
        let parsed = rotator.parse::<Rotator>().map_err(|e| VaultError::Rotator(e.to_string()))?;
        match &parsed {
            Rotator::Exec(path) => hook::check_safe(path).map_err(|e| VaultError::Rotator(e.to_string()))?,
            parsed if parsed.to_string() != rotator => {
                return Err(VaultError::Rotator(format!("rotator {rotator:?} is not in canonical form ({parsed})")));
            }
            _ => {}
        }
        let Some(route) = check else { return Ok(()) };
        let refused = |why: String| VaultError::Rotator(format!("--check {route}: {why}"));
        vault_proto::names::validate(route).map_err(|e| refused(e.to_string()))?;
        if let Rotator::Generate(_) = parsed {
            return Err(refused("a generated value is known to no provider: check manual or hook values".into()));
        }
        match self.provider_check().map_err(refused)?.refuses(route, secret) {
            Some(why) => Err(refused(why)),
            None => Ok(()),
        }
    }
}

pub(super) fn policy_event(actor: &Actor, secret: SecretRef<'_>, change: &PolicyChange) -> Event {
    let mut event = Event::new(Kind::RotationPolicy, Outcome::Ok, actor).secret(secret.env, secret.name);
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

/// At unlock, in its transaction: a rotation a crash interrupted before its new
/// value was stored (step `create`) is rolled back now, so nothing waits on it
/// (`rotate` is not refused for it). One whose value was stored (step `test`)
/// is resumed by the scheduler, or by the next `rotate` of that secret.
pub(super) fn roll_back_interrupted(c: &mut super::Change<'_, '_>) -> Result<Vec<Event>, VaultError> {
    let interrupted: Vec<(String, String, i64)> = c
        .state
        .image()
        .secrets()
        .filter_map(|s| {
            let (id, r) = s.rotation_in_progress()?;
            (r.step == Step::Create).then(|| (s.env.clone(), s.name.clone(), id))
        })
        .collect();
    let reason = "interrupted by a vaultd restart before the new value was stored; rolled back at unlock";
    let mut events = Vec::new();
    for (env, name, id) in interrupted {
        if let Some(s) = c.state.secret_mut(&env, &name)? {
            s.rotation_step(id, Step::Failed, None, Some(reason), now_unix());
            events.push(
                Event::new(Kind::RotationFailed, Outcome::Failed, &Actor::vaultd())
                    .secret(&env, &name)
                    .with("step", "create")
                    .with("reason", reason),
            );
        }
    }
    Ok(events)
}
