//! `WatchSecrets`: an agent's live view of the secrets it was granted.
//!
//! A watch is opened like a read (identity, token use, rate limit, all-or-nothing
//! first values). Then every change to the vault wakes it: it re-checks that its
//! reader still has access to every secret (a grant removed, a client disabled,
//! a token revoked or expired end it) and sends the secrets whose current version
//! moved. The change signal is a `tokio::sync::watch`, which keeps only the
//! latest generation, so a slow reader gets the newest state, never a backlog.

use super::{Reader, SecretRef, Vault, VaultError};
use crate::audit::{Actor, Event, Kind, Outcome};
use crate::crypto::SecretBytes;
use crate::identity::Peer;
use crate::policy::{Action, Decision};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One open watch.
pub struct Watcher {
    actor: Actor,
    reader: Reader,
    /// Each watched secret with the version last sent.
    secrets: Vec<(String, String, u64)>,
    changes: tokio::sync::watch::Receiver<u64>,
    /// The incident epoch at open: a later incident ends the watch.
    epoch: u64,
    /// When its token expires or goes idle (see `policy::token_ends`).
    token_ends: Option<i64>,
    _open: Open,
}

/// Counts a watch as open until it is dropped.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Open {
        count.fetch_add(1, Ordering::SeqCst);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A value sent to a watcher.
pub struct Update {
    pub env: String,
    pub name: String,
    pub version: u64,
    pub value: SecretBytes,
}

impl Vault {
    /// Opens a watch of `secrets`; returns it with their current values.
    pub async fn watch(
        &self,
        actor: &Actor,
        peer: Option<&Peer>,
        token: Option<&SecretBytes>,
        secrets: &[SecretRef<'_>],
    ) -> Result<(Watcher, Vec<Update>), VaultError> {
        // Subscribed before the first read, so a change between the two is seen.
        let changes = self.changes.subscribe();
        let epoch = self.incident_epoch.load(Ordering::SeqCst);
        let mut actor = actor.clone();
        let reader = self.identify(&mut actor, peer, token).await?;
        self.admit(&actor, &reader, secrets.len())?;
        let wanted: Vec<_> = secrets.iter().map(|s| (*s, 0)).collect();
        let values = self.read_as(&actor, &reader, &wanted).await?;
        let first = secrets
            .iter()
            .zip(values)
            .map(|(s, (version, value))| Update { env: s.env.into(), name: s.name.into(), version, value })
            .collect::<Vec<_>>();
        let secrets = first.iter().map(|u| (u.env.clone(), u.name.clone(), u.version)).collect();
        let open = Open::new(&self.watching);
        let token_ends = self.token_ends(&reader);
        Ok((Watcher { actor, reader, secrets, changes, epoch, token_ends, _open: open }, first))
    }

    /// Waits until some watched secret has a new current version and returns
    /// those that do. Ends with [`VaultError::AccessEnded`] once the reader may no
    /// longer read one of them, or with the error a read gives (sealed).
    pub async fn watch_next(&self, watcher: &mut Watcher) -> Result<Vec<Update>, VaultError> {
        loop {
            let ends = watcher.token_ends.unwrap_or(i64::MAX);
            tokio::select! {
                changed = watcher.changes.changed() => changed.map_err(|_| VaultError::Sealed)?,
                // Its token's time is up: the recheck ends it.
                () = crate::clock::sleep_until_unix(ends), if watcher.token_ends.is_some() => {}
            }
            if self.incident_epoch.load(Ordering::SeqCst) != watcher.epoch {
                return Err(VaultError::AccessEnded("every watched secret (revoke-all)".into()));
            }
            // Sealed: the watch ends (FAILED_PRECONDITION), as a read would.
            let keys = self.keys()?;
            let mut updates = Vec::new();
            let mut events = Vec::new();
            for (env, name, sent) in &watcher.secrets {
                let secret = SecretRef { env, name };
                let ended = || VaultError::AccessEnded(format!("{env}/{name}"));
                // The one decision, as for a read: a token revoked or expired, a
                // client disabled, a grant removed all end the watch here.
                let client = match self.decide(&watcher.reader, secret, Action::Read) {
                    Decision::Allowed { client } => client,
                    Decision::Denied(why) => return Err(self.watch_ended(watcher, secret, why, ended())),
                };
                // Most wake-ups concern other secrets: compare the version before
                // decrypting anything.
                let current = match self.image().secret(env, name) {
                    Ok(found) => found.and_then(|s| s.current().map(|(v, c)| (v, c.clone()))),
                    Err(e) => return Err(self.watch_ended(watcher, secret, "quarantined", e.into())),
                };
                match current {
                    Some((version, _)) if version == *sent => {}
                    Some((version, ciphertext)) => {
                        let value = keys.open_version(&secret.version(version), &ciphertext)?;
                        if self.audit_reads {
                            let mut who = watcher.actor.clone();
                            who.client = client;
                            events.push(
                                Event::new(Kind::SecretRead, Outcome::Ok, &who)
                                    .secret(env, name)
                                    .with("version", version)
                                    .with("watch", true),
                            );
                        }
                        updates.push(Update { env: env.clone(), name: name.clone(), version, value });
                    }
                    None => {
                        return Err(self.watch_ended(watcher, secret, "no current version", ended()));
                    }
                }
            }
            // Its token may have been used meanwhile, which moves its idle end.
            watcher.token_ends = self.token_ends(&watcher.reader);
            self.journal.room().await;
            self.record_all(events)?;
            for update in &updates {
                if let Some(entry) = watcher.secrets.iter_mut().find(|(e, n, _)| *e == update.env && *n == update.name)
                {
                    entry.2 = update.version;
                }
            }
            if !updates.is_empty() {
                return Ok(updates);
            }
        }
    }

    /// When a token-identified watch's token expires or goes idle, as it stands now.
    fn token_ends(&self, reader: &Reader) -> Option<i64> {
        let Reader::Token { accessor, .. } = reader else { return None };
        self.image().token(accessor).and_then(|t| t.ends_at())
    }

    fn watch_ended(&self, watcher: &Watcher, secret: SecretRef<'_>, reason: &str, error: VaultError) -> VaultError {
        let event = Event::new(Kind::SecretWatch, Outcome::Denied, &watcher.actor)
            .secret(secret.env, secret.name)
            .with("reason", reason);
        match self.record_all(vec![event]) {
            Ok(()) => error,
            Err(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;
    use crate::state::{PolicyChange, SecretLabels};
    use std::time::Duration;

    #[tokio::test]
    async fn a_slow_watcher_skips_to_the_newest_value() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(&dir.path().join("data"), &Config::default()).unwrap();
        let actor = Actor::vaultd();
        vault.init(&actor, &SecretBytes::new(b"a passphrase".to_vec())).unwrap();
        let secret = SecretRef::parse("", "telegram").unwrap();
        let put = |value: &str| {
            let value = SecretBytes::new(value.as_bytes().to_vec());
            vault.put(&actor, secret, &SecretLabels::default(), &PolicyChange::default(), &value).unwrap()
        };
        put("v1");
        let owner = Peer { uid: vault.owner, gid: 0, pid: None, accepted: None };
        let (mut watcher, first) = vault.watch(&actor, Some(&owner), None, &[secret]).await.unwrap();
        assert_eq!((first.len(), first[0].version, first[0].value.expose()), (1, 1, &b"v1"[..]));
        // Five rotations while the watcher is not looking: it gets the last one only.
        for i in 2..=6 {
            put(&format!("v{i}"));
        }
        let next = vault.watch_next(&mut watcher).await.unwrap();
        assert_eq!((next.len(), next[0].version, next[0].value.expose()), (1, 6, &b"v6"[..]));
        let idle = tokio::time::timeout(Duration::from_millis(200), vault.watch_next(&mut watcher)).await;
        assert!(idle.is_err(), "nothing changed, yet the watcher woke with an update");
        // A change that is not a new version of it (another secret) sends nothing.
        vault
            .put(
                &actor,
                SecretRef::parse("", "other").unwrap(),
                &SecretLabels::default(),
                &PolicyChange::default(),
                &SecretBytes::new(b"x".to_vec()),
            )
            .unwrap();
        let idle = tokio::time::timeout(Duration::from_millis(200), vault.watch_next(&mut watcher)).await;
        assert!(idle.is_err());
        // Sealing ends a watch (FAILED_PRECONDITION), even with nothing new to send.
        let other = SecretRef::parse("", "other").unwrap();
        let (mut sealed_watch, _) = vault.watch(&actor, Some(&owner), None, &[other]).await.unwrap();
        vault.seal(&actor).unwrap();
        let ended = vault.watch_next(&mut sealed_watch).await.err().unwrap();
        assert!(matches!(ended, VaultError::Sealed), "{ended}");
        vault.unlock(&actor, &SecretBytes::new(b"a passphrase".to_vec())).unwrap();
        // Deleting it ends the watch.
        vault.delete(&actor, secret).unwrap();
        let ended = vault.watch_next(&mut watcher).await.err().unwrap();
        assert!(matches!(ended, VaultError::AccessEnded(_)), "{ended}");
    }
}
