//! How the state may change: the transitions of a secret's versions and
//! rotations, and revoke-all's. Each works on an entry a [`Draft`](super::Draft)
//! holds; nothing here touches the database or the keys.

use super::SmallMap;
use super::model::{Client, Rotation, Secret, Step, Token, Trigger, Version, VersionState};
use crate::rotation::Rotator;
use std::sync::Arc;

/// Rotations kept per secret: the newest in progress, done or failed. Older
/// ones are history the audit log keeps anyway.
pub const MAX_ROTATIONS_KEPT: usize = 100;

/// A change to a secret's rotation policy; `None` keeps what is stored.
#[derive(Debug, Clone, Default)]
pub struct PolicyChange {
    /// The canonical rotator spelling (`rotation::Rotator`'s Display).
    pub rotator: Option<String>,
    /// `Some(None)` removes the schedule.
    pub every_secs: Option<Option<i64>>,
    pub grace_secs: Option<i64>,
}

impl PolicyChange {
    pub fn is_empty(&self) -> bool {
        self.rotator.is_none() && self.every_secs.is_none() && self.grace_secs.is_none()
    }
}

/// What a put changes besides the value; empty strings keep what is stored.
#[derive(Debug, Default, Clone)]
pub struct SecretLabels {
    pub provider: String,
    pub description: String,
}

/// What a promotion did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promoted {
    /// The version that became previous, if the old current was still good.
    pub previous: Option<u64>,
    /// When the previous version stops being readable.
    pub grace_until: i64,
}

/// The default grace period of a new secret's previous versions.
pub const DEFAULT_GRACE_SECS: i64 = 3600;

/// The next due time of a schedule starting at `now` (with jitter).
fn next_due(now: i64, every_secs: Option<i64>) -> Option<i64> {
    every_secs.map(|every| {
        let every = std::time::Duration::from_secs(every.max(0) as u64);
        now.saturating_add(every.as_secs() as i64).saturating_add(crate::rotation::jitter(every).as_secs() as i64)
    })
}

impl Secret {
    /// A new secret whose version 1 is `ciphertext`.
    pub fn new(env: &str, name: &str, labels: &SecretLabels, ciphertext: Vec<u8>, now: i64) -> Secret {
        let first = Version {
            state: VersionState::Current,
            ciphertext: Some(Arc::from(ciphertext)),
            created_unix: now,
            expires_unix: None,
            revoke_pending: false,
            revoke_after_unix: None,
        };
        Secret {
            id: 0,
            env: env.into(),
            name: name.into(),
            provider: labels.provider.clone(),
            description: labels.description.clone(),
            current_version: 1,
            created_unix: now,
            updated_unix: now,
            rotator: Rotator::Manual.to_string(),
            rotate_every_secs: None,
            grace_secs: DEFAULT_GRACE_SECS,
            next_rotation_unix: None,
            due_alerted_unix: None,
            versions: SmallMap::from([(1, first)]),
            rotations: SmallMap::new(),
        }
    }

    /// The number the next version gets.
    pub fn next_version(&self) -> u64 {
        self.newest_version() + 1
    }

    /// Labels that are not empty replace the stored ones.
    pub fn relabel(&mut self, labels: &SecretLabels) {
        if !labels.provider.is_empty() {
            self.provider.clone_from(&labels.provider);
        }
        if !labels.description.is_empty() {
            self.description.clone_from(&labels.description);
        }
    }

    /// Stores a pending version (not served until promoted).
    pub fn add_pending(&mut self, version: u64, ciphertext: Vec<u8>, now: i64) {
        self.versions.insert(
            version,
            Version {
                state: VersionState::Pending,
                ciphertext: Some(Arc::from(ciphertext)),
                created_unix: now,
                expires_unix: None,
                revoke_pending: false,
                revoke_after_unix: None,
            },
        );
    }

    /// Makes `version` current. The old current becomes previous (readable until
    /// its grace ends), unless it was compromised; an older previous retires at
    /// once, owing a revoke-old run when the rotator is a hook. The schedule
    /// restarts, and versions beyond the newest `keep` that are of no more use go.
    pub fn promote(&mut self, version: u64, keep: u32, now: i64) -> Promoted {
        let hook = Rotator::is_hook(&self.rotator);
        for v in self.versions.values_mut().filter(|v| v.state == VersionState::Previous) {
            v.state = VersionState::Retired;
            v.revoke_pending = hook;
            v.expires_unix = None;
        }
        let grace_until = now.saturating_add(self.grace_secs);
        let old = self.current_version;
        let previous = match self.versions.get_mut(&old) {
            Some(v) if v.state == VersionState::Current && old != version => {
                v.state = VersionState::Previous;
                v.expires_unix = Some(grace_until);
                Some(old)
            }
            _ => None,
        };
        if let Some(v) = self.versions.get_mut(&version) {
            v.state = VersionState::Current;
            v.expires_unix = None;
        }
        self.current_version = version;
        self.updated_unix = now;
        self.next_rotation_unix = next_due(now, self.rotate_every_secs);
        self.due_alerted_unix = None;
        let oldest_kept = version.saturating_sub(u64::from(keep.max(1)));
        self.versions.retain(|n, v| {
            *n > oldest_kept
                || v.revoke_pending
                || !matches!(v.state, VersionState::Retired | VersionState::Destroyed | VersionState::Compromised)
        });
        Promoted { previous, grace_until }
    }

    /// Applies a policy change; a new schedule starts counting at `now`.
    pub fn set_policy(&mut self, change: &PolicyChange, now: i64) {
        if let Some(rotator) = &change.rotator {
            self.rotator.clone_from(rotator);
        }
        if let Some(grace) = change.grace_secs {
            self.grace_secs = grace;
        }
        if let Some(every) = change.every_secs {
            self.rotate_every_secs = every;
            self.next_rotation_unix = next_due(now, every);
            self.due_alerted_unix = None;
        }
    }

    /// Starts a rotation numbered `id`; `false` if one is already in progress.
    pub fn begin_rotation(&mut self, id: i64, rotator: &str, trigger: Trigger, now: i64) -> bool {
        if self.rotation_in_progress().is_some() {
            return false;
        }
        self.rotations.insert(
            id,
            Rotation {
                rotator: rotator.into(),
                trigger,
                step: Step::Create,
                from_version: self.current_version,
                new_version: None,
                error: None,
                started_unix: now,
                updated_unix: now,
            },
        );
        while self.rotations.len() > MAX_ROTATIONS_KEPT {
            let Some((&oldest, _)) = self.rotations.iter().find(|(_, r)| !r.step.in_progress()) else { break };
            self.rotations.remove(&oldest);
        }
        true
    }

    /// Moves rotation `id` to `step`.
    pub fn rotation_step(&mut self, id: i64, step: Step, new_version: Option<u64>, error: Option<&str>, now: i64) {
        if let Some(r) = self.rotations.get_mut(&id) {
            r.step = step;
            if new_version.is_some() {
                r.new_version = new_version;
            }
            r.error = error.map(str::to_owned);
            r.updated_unix = now;
        }
    }

    /// After a failed scheduled rotation: try again after `retry_secs` (or the
    /// period, if shorter), not at every scheduler pass.
    pub fn postpone_rotation(&mut self, retry_secs: i64, now: i64) {
        if let Some(every) = self.rotate_every_secs {
            self.next_rotation_unix = Some(now.saturating_add(every.min(retry_secs)));
        }
    }

    /// A pending version that will never be current: it owes a revoke-old run if
    /// a hook made it, else it is destroyed.
    pub fn abandon_pending(&mut self, version: u64, hook: bool) {
        if let Some(v) = self.versions.get_mut(&version) {
            if hook {
                v.state = VersionState::Retired;
                v.revoke_pending = true;
            } else {
                v.state = VersionState::Destroyed;
                v.ciphertext = None;
            }
        }
    }

    /// A previous version whose grace ended: retired, owing a revoke-old run if
    /// `hook`. False if it is no longer previous.
    pub fn retire(&mut self, version: u64, hook: bool) -> bool {
        match self.versions.get_mut(&version) {
            Some(v) if v.state == VersionState::Previous => {
                v.state = VersionState::Retired;
                v.revoke_pending = hook;
                true
            }
            _ => false,
        }
    }

    /// The revoke-old hook ran for `version`: its value is destroyed. With
    /// `retry_after`, it failed: try again then.
    pub fn revoke_done(&mut self, version: u64, retry_after: Option<i64>) {
        if let Some(v) = self.versions.get_mut(&version) {
            match retry_after {
                None => {
                    v.revoke_pending = false;
                    v.revoke_after_unix = None;
                    v.state = VersionState::Destroyed;
                    v.ciphertext = None;
                }
                Some(at) => {
                    v.revoke_after_unix = Some(at);
                    // Owed until it succeeds (a compromised version too).
                    v.revoke_pending = true;
                }
            }
        }
    }

    /// Revoke-all: the current version (and a previous one) compromised. Returns
    /// whether the current version was current.
    pub fn compromise(&mut self) -> bool {
        let was_current = self.current().is_some();
        for v in self.versions.values_mut() {
            if matches!(v.state, VersionState::Current | VersionState::Previous) {
                v.state = VersionState::Compromised;
            }
        }
        was_current
    }

    /// Whether the current version is compromised (revoke-all).
    pub fn is_compromised(&self) -> bool {
        self.versions.get(&self.current_version).is_some_and(|v| v.state == VersionState::Compromised)
    }

    /// The versions an agent may read at `now`: the current one, and a previous
    /// one whose grace has not ended.
    pub fn readable(&self, version: u64, now: i64) -> Option<&Arc<[u8]>> {
        let v = self.versions.get(&version)?;
        let readable = match v.state {
            VersionState::Current => version == self.current_version,
            VersionState::Previous => v.expires_unix.is_some_and(|t| now < t),
            _ => false,
        };
        readable.then_some(v.ciphertext.as_ref()?)
    }
}

impl Client {
    /// Revoke-all: disabled. Returns whether it was enabled.
    pub fn disable(&mut self) -> bool {
        std::mem::replace(&mut self.enabled, false)
    }
}

impl Token {
    /// Revokes it at `now`; `false` if it was already revoked.
    pub fn revoke(&mut self, now: i64) -> bool {
        if self.revoked_unix.is_some() {
            return false;
        }
        self.revoked_unix = Some(now);
        true
    }

    /// Records a use at `now`: one use fewer when uses are counted.
    pub fn spend(&mut self, now: i64) {
        self.last_used_unix = Some(now);
        if let Some(n) = &mut self.uses_left {
            *n -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn secret() -> Secret {
        Secret::new("prod", "k", &SecretLabels::default(), vec![1], 100)
    }

    #[test]
    fn a_failed_scheduled_rotation_waits_the_retry_or_the_period_if_shorter() {
        for (every, want) in [(3600, 900), (60, 60)] {
            let mut s = secret();
            s.set_policy(&PolicyChange { every_secs: Some(Some(every)), ..PolicyChange::default() }, 100);
            s.postpone_rotation(900, 1000);
            assert_eq!(s.next_rotation_unix, Some(1000 + want));
        }
    }

    #[test]
    fn promotion_keeps_previous_in_grace_and_prunes_old_versions() {
        let mut s = secret();
        s.grace_secs = 50;
        for v in 2..=13 {
            s.add_pending(v, vec![v as u8], 100 + v as i64);
            let p = s.promote(v, 10, 200);
            assert_eq!(p, Promoted { previous: Some(v - 1), grace_until: 250 });
        }
        assert_eq!(s.current().map(|(v, _)| v), Some(13));
        assert_eq!(s.versions[&12].state, VersionState::Previous);
        assert!(s.readable(12, 249).is_some() && s.readable(12, 250).is_none());
        assert!(s.readable(11, 200).is_none(), "retired");
        assert!(s.versions.keys().all(|v| *v > 3), "{:?}", s.versions);
        assert!(s.compromise());
        assert!(s.is_compromised() && s.readable(13, 200).is_none() && s.readable(12, 200).is_none());
    }

    #[test]
    fn one_rotation_at_a_time_and_history_is_bounded() {
        let mut s = secret();
        assert!(s.begin_rotation(1, "manual", Trigger::Operator, 100));
        assert!(!s.begin_rotation(2, "manual", Trigger::Operator, 100));
        s.rotation_step(1, Step::Done, Some(2), None, 101);
        for id in 2..200 {
            assert!(s.begin_rotation(id, "manual", Trigger::Schedule, 100));
            s.rotation_step(id, Step::Failed, None, Some("x"), 101);
        }
        assert_eq!(s.rotations.len(), MAX_ROTATIONS_KEPT);
        assert_eq!(s.last_rotation().map(|(id, _)| id), Some(199));
    }
}
