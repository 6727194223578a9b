//! `WatchSecrets`: an agent's live view of the secrets it was granted.
//!
//! A watch is opened like a read (identity, token use, rate limit, all-or-nothing
//! first values). Then every change to the vault wakes it: it re-checks that its
//! reader still has access to every secret (a grant removed, a client disabled,
//! a token revoked or expired end it) and sends the secrets whose current version
//! moved. The change signal is a `tokio::sync::watch`, which keeps only the
//! latest generation, so a slow reader gets the newest state, never a backlog.

use super::{Reader, SecretRef, Vault, VaultError};
use crate::audit::{Actor, Event, Outcome};
use crate::crypto::SecretBytes;
use crate::identity::Peer;

/// One open watch.
pub struct Watcher {
    actor: Actor,
    reader: Reader,
    /// Each watched secret with the version last sent.
    secrets: Vec<(String, String, u64)>,
    changes: tokio::sync::watch::Receiver<u64>,
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
        let mut actor = actor.clone();
        let reader = self.identify(&mut actor, peer, token).await?;
        self.admit(&actor, &reader)?;
        let wanted: Vec<_> = secrets.iter().map(|s| (*s, 0)).collect();
        let values = self.read_as(&actor, &reader, &wanted).await?;
        let first = secrets
            .iter()
            .zip(values)
            .map(|(s, (version, value))| Update { env: s.env.into(), name: s.name.into(), version, value })
            .collect::<Vec<_>>();
        let secrets = first.iter().map(|u| (u.env.clone(), u.name.clone(), u.version)).collect();
        Ok((Watcher { actor, reader, secrets, changes }, first))
    }

    /// Waits until some watched secret has a new current version and returns
    /// those that do. Ends with [`VaultError::AccessEnded`] once the reader may no
    /// longer read one of them, or with the error a read gives (sealed).
    pub async fn watch_next(&self, watcher: &mut Watcher) -> Result<Vec<Update>, VaultError> {
        loop {
            if watcher.changes.changed().await.is_err() {
                return Err(VaultError::Sealed);
            }
            self.recheck(watcher)?;
            let clients = self.candidate_clients(&watcher.reader)?;
            let mut updates = Vec::new();
            let mut events = Vec::new();
            for (env, name, sent) in &watcher.secrets {
                let secret = SecretRef { env, name };
                let ended = || VaultError::AccessEnded(format!("{env}/{name}"));
                let Some(client) = self.access(&watcher.reader, &clients, secret) else {
                    return Err(self.watch_ended(watcher, secret, "not granted any more", ended()).await);
                };
                let result = self.read_current(secret);
                let mut who = watcher.actor.clone();
                who.client = client;
                match result {
                    Ok((version, _)) if version == *sent => {}
                    Ok((version, value)) => {
                        if self.audit_reads {
                            events.push(
                                Event::new("secret.read", Outcome::Ok, &who)
                                    .secret(env, name)
                                    .with("version", version)
                                    .with("watch", true),
                            );
                        }
                        updates.push(Update { env: env.clone(), name: name.clone(), version, value });
                    }
                    Err(VaultError::NotFound { .. }) => {
                        return Err(self.watch_ended(watcher, secret, "no current version", ended()).await);
                    }
                    Err(e) => return Err(e),
                }
            }
            self.record_all(events).await?;
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

    /// A token-identified watch holds its token for as long as it runs: it ends
    /// when the token is revoked or expires, or its client is disabled.
    fn recheck(&self, watcher: &mut Watcher) -> Result<(), VaultError> {
        let Reader::Token(client) = &watcher.reader else { return Ok(()) };
        let accessor = watcher.actor.token.clone().unwrap_or_default();
        let now = crate::store::now_unix();
        let token_ok = self
            .store
            .token(&accessor)?
            .is_some_and(|t| t.revoked_unix.is_none() && t.expires_unix.is_none_or(|e| now < e));
        let fresh = self.store.client(&client.name)?.filter(|c| c.enabled);
        match (token_ok, fresh) {
            (true, Some(fresh)) => {
                watcher.reader = Reader::Token(fresh);
                Ok(())
            }
            _ => {
                let event = Event::new("secret.watch", Outcome::Denied, &watcher.actor)
                    .with("reason", "token revoked or expired, or client disabled");
                self.record_detached(event);
                Err(VaultError::AccessEnded("every watched secret".into()))
            }
        }
    }

    async fn watch_ended(
        &self,
        watcher: &Watcher,
        secret: SecretRef<'_>,
        reason: &str,
        error: VaultError,
    ) -> VaultError {
        let event = Event::new("secret.watch", Outcome::Denied, &watcher.actor)
            .secret(secret.env, secret.name)
            .with("reason", reason);
        match self.record_all(vec![event]).await {
            Ok(()) => error,
            Err(e) => e,
        }
    }
}
