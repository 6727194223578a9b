//! The key lifecycle: the term each write seals under, rekey, rotate-key and
//! rewrap, and online backups.

use super::{Vault, VaultError};
use crate::audit::{Actor, Event, Kind, Outcome};
use crate::crypto::{self, CryptoError, KdfParams, SecretBytes, Unlocked, VersionId, WrappedTerm};
use crate::state::{Draft, KeyTerm};

/// What `rotate-key` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRotated {
    /// The newest term: new writes (and a rewrap) use it.
    pub term: u32,
    /// False when an unfinished rewrap was continued instead.
    pub new_term: bool,
    /// Versions sealed under older terms.
    pub to_rewrap: u64,
    pub retired: Vec<u32>,
}

/// What one `rewrap` batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrapped {
    pub term: u32,
    pub rewrapped: u64,
    /// Where the next batch starts.
    pub next_after: u64,
    /// The walk reached the last version.
    pub done: bool,
    /// Once done: versions still under an older term (a term started meanwhile);
    /// a new walk from the start moves them.
    pub remaining: u64,
    pub retired: Vec<u32>,
}

/// Versions one rewrap transaction takes at most: the writer lock is held that long.
pub const MAX_REWRAP_BATCH: u32 = 10_000;

impl Vault {
    /// The term to seal `count` values under, inside the writing transaction: the
    /// store's newest, so a term is used only once its row is committed. When it
    /// would pass the per-term limit a new term starts here (recorded in
    /// `events`). The count is persisted with the write.
    pub(super) fn sealing_term(
        &self,
        state: &mut Draft<'_>,
        keys: &Unlocked,
        count: u64,
        events: &mut Vec<Event>,
    ) -> Result<u32, VaultError> {
        let newest = state.term_numbers().last().copied().ok_or(VaultError::TermsExhausted)?;
        let used = state.term(newest).map_or(0, |t| t.encryptions);
        let term = if used.saturating_add(count) > self.max_encryptions {
            let next = newest.checked_add(1).ok_or(VaultError::TermsExhausted)?;
            state.insert_term(new_term(keys.add_term(next)?, false))?;
            events.push(
                Event::new(Kind::KeyRotate, Outcome::Ok, &Actor::vaultd())
                    .with("term", next)
                    .with("previous_term", newest)
                    .with("reason", "encryption limit")
                    .with("encryptions", used),
            );
            next
        } else {
            newest
        };
        if let Some(t) = state.term_mut(term)? {
            t.encryptions = t.encryptions.saturating_add(count);
        }
        Ok(term)
    }

    /// `rekey`: checks `old`, then re-wraps the root key under `new` (or `old`
    /// again) with `kdf` (or the current parameters) and a fresh salt. One row
    /// changes, in one transaction with its record: a crash leaves either the old
    /// or the new passphrase working. Needs the vault unlocked; runs Argon2 twice:
    /// call from a blocking context.
    pub fn rekey(
        &self,
        actor: &Actor,
        old: &SecretBytes,
        new: Option<&SecretBytes>,
        kdf: Option<KdfParams>,
    ) -> Result<KdfParams, VaultError> {
        if old.is_empty() || new.is_some_and(SecretBytes::is_empty) {
            return Err(VaultError::EmptyPassphrase);
        }
        self.keys()?;
        let _gate = self.kdf_gate.lock().unwrap_or_else(|p| p.into_inner());
        let (header, _) = self.store.header()?.ok_or(VaultError::Uninitialized)?;
        let kdf = kdf.unwrap_or(header.kdf);
        match crypto::rekey(old, &header, new.unwrap_or(old), kdf) {
            Ok(rekeyed) => self.write(|c| {
                c.txn.set_header(&rekeyed)?;
                let event = Event::new(Kind::VaultRekey, Outcome::Ok, actor)
                    .with("passphrase_changed", new.is_some())
                    .with("kdf", format!("argon2id m={} t={} p={}", kdf.memory_kib, kdf.iterations, kdf.parallelism));
                Ok((kdf, vec![event]))
            }),
            Err(e) => {
                let error = match e {
                    CryptoError::WrongPassphrase => VaultError::WrongPassphrase,
                    CryptoError::KdfParams(why) => VaultError::KdfRefused(why),
                    other => VaultError::Crypto(other),
                };
                let outcome = if matches!(error, VaultError::Crypto(_)) { Outcome::Failed } else { Outcome::Denied };
                self.append(
                    vec![Event::new(Kind::VaultRekey, outcome, actor).with("reason", error.to_string())],
                    true,
                )?;
                Err(error)
            }
        }
    }

    /// `rotate-key`: starts a new key term for new writes and retires older
    /// terms no version uses. With `rewrap`, marks the new term as the target of
    /// a rewrap ([`Vault::rewrap`]); if one is unfinished, continues it instead of
    /// starting yet another term.
    pub fn rotate_key(&self, actor: &Actor, rewrap: bool) -> Result<KeyRotated, VaultError> {
        let keys = self.keys()?;
        let rotated = self.write(|c| {
            if rewrap && let Some(target) = rewrap_target(&c.state) {
                let to_rewrap = count_older_versions(&c.state, target)?;
                let event = Event::new(Kind::KeyRewrapResume, Outcome::Ok, actor)
                    .with("term", target)
                    .with("to_rewrap", to_rewrap);
                return Ok((KeyRotated { term: target, new_term: false, to_rewrap, retired: vec![] }, vec![event]));
            }
            let newest = c.state.term_numbers().last().copied().unwrap_or(0);
            let term = newest.checked_add(1).ok_or(VaultError::TermsExhausted)?;
            c.state.insert_term(new_term(keys.add_term(term)?, rewrap))?;
            let retired = retire_unused_terms(&mut c.state, term)?;
            let to_rewrap = count_older_versions(&c.state, term)?;
            let mut events = vec![
                Event::new(Kind::KeyRotate, Outcome::Ok, actor)
                    .with("term", term)
                    .with("previous_term", newest)
                    .with("reason", "operator")
                    .with("rewrap", rewrap),
            ];
            if !retired.is_empty() {
                events.push(Event::new(Kind::KeyRetire, Outcome::Ok, actor).with("terms", retired.clone()));
            }
            Ok((KeyRotated { term, new_term: true, to_rewrap, retired }, events))
        })?;
        for &term in &rotated.retired {
            keys.remove_term(term);
        }
        Ok(rotated)
    }

    /// One batch of a rewrap: re-seals, under the newest term, up to `limit`
    /// versions after the cursor `after` (a position in `env/name/version`
    /// order, see [`Rewrapped::next_after`]) that are sealed under a term older
    /// than `target` (`None`: the newest), in one durable transaction with its
    /// record. Progress lives in the data (each ciphertext names its term), so a
    /// crash loses at most the batch in flight and a new walk continues. A term
    /// started meanwhile (the encryption limit) is at least `target`, so the walk
    /// still ends. Once nothing older than `target` is left, the terms no version
    /// uses are retired. Call from a blocking context.
    pub fn rewrap(&self, actor: &Actor, target: Option<u32>, after: u64, limit: u32) -> Result<Rewrapped, VaultError> {
        let keys = self.keys()?;
        // A batch seals `limit` values under one term, so it may not exceed the per-term limit.
        let limit = limit.clamp(1, MAX_REWRAP_BATCH).min(u32::try_from(self.max_encryptions).unwrap_or(u32::MAX));
        let result = self.write(|c| {
            let newest = c.state.term_numbers().last().copied().unwrap_or(0);
            let target = target.unwrap_or(newest).min(newest);
            let batch = older_versions(&c.state, after, target, limit)?;
            let mut events = Vec::new();
            let mut term = newest;
            let mut next_after = after;
            if !batch.is_empty() {
                term = self.sealing_term(&mut c.state, &keys, batch.len() as u64, &mut events)?;
                for (position, env, name, version) in &batch {
                    let id = VersionId { env, name, version: *version };
                    let s = c
                        .state
                        .secret_mut(env, name)?
                        .ok_or_else(|| VaultError::NotFound { env: env.clone(), name: name.clone() })?;
                    let v = s
                        .versions
                        .get_mut(version)
                        .ok_or_else(|| VaultError::NotFound { env: env.clone(), name: name.clone() })?;
                    let ciphertext = v.ciphertext.clone().unwrap_or_default();
                    let value = keys.open_version(&id, &ciphertext).map_err(|_| VaultError::RewrapFailed {
                        env: env.clone(),
                        name: name.clone(),
                        version: *version,
                    })?;
                    v.ciphertext = Some(keys.seal_version(&id, term, value.expose())?.into());
                    next_after = *position;
                }
                events.push(
                    Event::new(Kind::KeyRewrap, Outcome::Ok, actor).with("term", term).with("versions", batch.len()),
                );
            }
            let done = (batch.len() as u64) < u64::from(limit);
            let (mut remaining, mut retired) = (0, Vec::new());
            if done {
                remaining = count_older_versions(&c.state, target)?;
                if remaining == 0 {
                    retired = retire_unused_terms(&mut c.state, term)?;
                    if let Some(pending) = rewrap_target(&c.state)
                        && count_older_versions(&c.state, pending)? == 0
                    {
                        for n in c.state.term_numbers() {
                            if let Some(t) = c.state.term_mut(n)?.filter(|t| t.rewrap) {
                                t.rewrap = false;
                            }
                        }
                        events.push(Event::new(Kind::KeyRewrapDone, Outcome::Ok, actor).with("term", pending));
                    }
                    if !retired.is_empty() {
                        events.push(Event::new(Kind::KeyRetire, Outcome::Ok, actor).with("terms", retired.clone()));
                    }
                }
            }
            let rewrapped = batch.len() as u64;
            Ok((Rewrapped { term, rewrapped, next_after, done, remaining, retired }, events))
        });
        match result {
            Ok(r) => {
                for &t in &r.retired {
                    keys.remove_term(t);
                }
                Ok(r)
            }
            Err(VaultError::RewrapFailed { env, name, version }) => {
                let event = Event::new(Kind::KeyRewrap, Outcome::Failed, actor)
                    .secret(&env, &name)
                    .with("version", version)
                    .with("reason", "decryption failed");
                self.append(vec![event], true)?;
                Err(VaultError::RewrapFailed { env, name, version })
            }
            Err(e) => Err(e),
        }
    }

    /// `backup`: records the backup (so the copy holds its own record), then
    /// takes an online, consistent snapshot and returns it as a backup file's
    /// bytes, authenticated under the vault's backup key. Call from a blocking context.
    pub fn backup(&self, actor: &Actor) -> Result<crate::backup::Writer, VaultError> {
        let keys = self.keys()?;
        self.append(vec![Event::new(Kind::VaultBackup, Outcome::Ok, actor)], true)?;
        let snapshot = self.store.snapshot()?;
        Ok(crate::backup::Writer::new(snapshot, keys.backup_mac())?)
    }
}

fn new_term(wrapped: WrappedTerm, rewrap: bool) -> KeyTerm {
    KeyTerm {
        term: wrapped.term,
        wrapped_key: wrapped.wrapped,
        created_unix: crate::clock::now_unix(),
        encryptions: 0,
        rewrap,
    }
}

/// The target term of a `rotate-key --rewrap` that has not finished yet.
fn rewrap_target(state: &Draft<'_>) -> Option<u32> {
    state.term_numbers().into_iter().rev().find(|n| state.term(*n).is_some_and(|t| t.rewrap))
}

/// A stored version as (position, env, name, version, its term): the position
/// is its place in `env/name/version` order, 1-based, the cursor a rewrap
/// resumes from.
type Sealed = (u64, String, String, u64, u32);

/// Every stored version (see [`Sealed`]).
fn sealed_versions(state: &Draft<'_>) -> Result<Vec<Sealed>, VaultError> {
    let mut all = Vec::new();
    for (env, name) in state.secret_names() {
        let Some(s) = state.secret(&env, &name)? else { continue };
        for (n, v) in &s.versions {
            if let Some(term) = v.ciphertext.as_deref().and_then(crypto::ciphertext_term) {
                all.push((env.clone(), name.clone(), *n, term));
            }
        }
    }
    Ok(all.into_iter().zip(1..).map(|((env, name, n, term), position)| (position, env, name, n, term)).collect())
}

/// Up to `limit` versions after position `after` sealed under a term older than `target`.
fn older_versions(
    state: &Draft<'_>,
    after: u64,
    target: u32,
    limit: u32,
) -> Result<Vec<(u64, String, String, u64)>, VaultError> {
    Ok(sealed_versions(state)?
        .into_iter()
        .filter(|(position, _, _, _, term)| *position > after && *term < target)
        .take(limit as usize)
        .map(|(position, env, name, n, _)| (position, env, name, n))
        .collect())
}

/// How many versions are sealed under a term older than `target`.
fn count_older_versions(state: &Draft<'_>, target: u32) -> Result<u64, VaultError> {
    Ok(sealed_versions(state)?.iter().filter(|(_, _, _, _, term)| *term < target).count() as u64)
}

/// Deletes every term older than `newest` that no stored version names, and
/// returns them.
fn retire_unused_terms(state: &mut Draft<'_>, newest: u32) -> Result<Vec<u32>, VaultError> {
    let used: std::collections::BTreeSet<u32> = sealed_versions(state)?.into_iter().map(|v| v.4).collect();
    let retired: Vec<u32> = state.term_numbers().into_iter().filter(|t| *t < newest && !used.contains(t)).collect();
    for term in &retired {
        state.remove_term(*term)?;
    }
    Ok(retired)
}
