//! Agent reads: who is asking (kernel identity or token), what they may read,
//! and the read itself, recorded before the value is released.

use super::{SecretRef, Vault, VaultError};
use crate::audit::{Actor, Event, Outcome, Read, ReadDetail, Record};
use crate::crypto::SecretBytes;
use crate::identity::{Caller, Peer};
use crate::policy;
use crate::store::ClientRow;

/// Who is reading, once identified.
pub(super) enum Reader {
    Owner,
    /// Judged by the clients its uid (and gid, executable) match.
    Kernel(Caller),
    /// Judged by the token's client alone.
    Token(ClientRow),
    /// Nobody the vault knows (no credentials).
    Nobody,
}

/// The record of a read by `actor` as `client`, which ended as `outcome` says.
pub(super) fn read_record<'a>(
    kind: &'static str,
    actor: &'a Actor,
    client: Option<&'a str>,
    secret: SecretRef<'a>,
    (outcome, detail): (Outcome, ReadDetail),
) -> Read<'a> {
    Read { kind, outcome, actor, client, env: secret.env, name: secret.name, detail }
}

/// How a read ended: allowed (with the version), denied (unknown, sealed) or
/// failed (did not decrypt).
fn outcome(result: &Result<(u64, SecretBytes), VaultError>) -> (Outcome, ReadDetail) {
    let denied = |reason: &'static str| (Outcome::Denied, ReadDetail::Reason(reason.into()));
    match result {
        Ok((version, _)) => (Outcome::Ok, ReadDetail::Version(*version)),
        Err(VaultError::NotFound { .. }) => denied("not found"),
        Err(VaultError::Sealed) => denied("sealed"),
        Err(VaultError::Uninitialized) => denied("not initialized"),
        Err(e) => (Outcome::Failed, ReadDetail::Reason(e.to_string().into())),
    }
}

impl Vault {
    pub(super) fn read_current(&self, secret: SecretRef<'_>) -> Result<(u64, SecretBytes), VaultError> {
        let keys = self.keys()?;
        let (version, ciphertext) = self.store.current(secret.env, secret.name)?.ok_or_else(|| secret.not_found())?;
        Ok((version, keys.open_version(&secret.version(version), &ciphertext)?))
    }

    /// What an agent may read: the current version (`version` 0 or its number),
    /// or the previous one until its grace period ends. Anything else is "not
    /// found", like a secret that does not exist.
    pub(super) fn read_for_agent(&self, secret: SecretRef<'_>, version: u64) -> Result<(u64, SecretBytes), VaultError> {
        if version == 0 {
            return self.read_current(secret);
        }
        let keys = self.keys()?;
        let now = crate::store::now_unix();
        match self.store.version(secret.env, secret.name, version)? {
            Some((state, expires, Some(ciphertext)))
                if state == "current" || (state == "previous" && expires.is_some_and(|t| now < t)) =>
            {
                Ok((version, keys.open_version(&secret.version(version), &ciphertext)?))
            }
            _ => Err(secret.not_found()),
        }
    }

    /// An agent's read of one secret (`version` 0: the current one); see
    /// [`Vault::get_many`].
    pub async fn get(
        &self,
        actor: &Actor,
        peer: Option<&Peer>,
        token: Option<&SecretBytes>,
        secret: SecretRef<'_>,
        version: u64,
    ) -> Result<(u64, SecretBytes), VaultError> {
        let mut actor = actor.clone();
        let reader = self.identify(&mut actor, peer, token).await?;
        self.admit(&actor, &reader)?;
        let mut values = self.read_as(&actor, &reader, &[(secret, version)]).await?;
        values.pop().ok_or_else(|| secret.not_found())
    }

    /// An agent's read of current values, all or nothing, for `peer` as the kernel
    /// named it (or, with `token`, for the token's client). Not granted and not
    /// found are the same answer. Values are released only after their audit
    /// records are committed; every denial is recorded.
    pub async fn get_many(
        &self,
        actor: &Actor,
        peer: Option<&Peer>,
        token: Option<&SecretBytes>,
        secrets: &[SecretRef<'_>],
    ) -> Result<Vec<(u64, SecretBytes)>, VaultError> {
        let mut actor = actor.clone();
        let reader = self.identify(&mut actor, peer, token).await?;
        self.admit(&actor, &reader)?;
        let wanted: Vec<_> = secrets.iter().map(|s| (*s, 0)).collect();
        self.read_as(&actor, &reader, &wanted).await
    }

    /// The names in `env` that the caller may read now (names only: what
    /// `vaultctl run` injects), sorted. Not granted and not found look alike: the
    /// name is simply absent. Recorded as `secret.list`.
    pub async fn granted(
        &self,
        actor: &Actor,
        peer: Option<&Peer>,
        token: Option<&SecretBytes>,
        env: &str,
    ) -> Result<Vec<String>, VaultError> {
        let mut actor = actor.clone();
        let reader = self.identify(&mut actor, peer, token).await?;
        self.admit(&actor, &reader)?;
        self.keys()?;
        let clients = self.candidate_clients(&reader)?;
        let listed = self.store.list(env)?;
        let names: Vec<String> = listed
            .into_iter()
            .filter(|s| self.access(&reader, &clients, SecretRef { env, name: &s.name }).is_some())
            .map(|s| s.name)
            .collect();
        self.record(Event::new("secret.list", Outcome::Ok, &actor).with("env", env).with("names", names.len()))?;
        Ok(names)
    }

    /// The rate limit, per client (or uid) and global; the owner is exempt.
    pub(super) fn admit(&self, actor: &Actor, reader: &Reader) -> Result<(), VaultError> {
        let limit_key = match reader {
            Reader::Owner => None,
            Reader::Token(c) => Some(c.name.clone()),
            Reader::Kernel(c) => Some(format!("uid:{}", c.peer.uid)),
            Reader::Nobody => Some("nobody".into()),
        };
        if let Err(wait) = self.limits.admit(limit_key.as_deref()) {
            let event = Event::new("request.rate_limited", Outcome::Denied, actor)
                .with("retry_after_ms", wait.as_millis() as u64);
            self.record_detached(event);
            return Err(VaultError::RateLimited(wait));
        }
        Ok(())
    }

    /// Who grants `reader` access to `secret`: `Some(None)` the owner,
    /// `Some(Some(client))` a client's grant, `None` nobody.
    pub(super) fn access<'a>(
        &self,
        reader: &'a Reader,
        clients: &'a [ClientRow],
        secret: SecretRef<'_>,
    ) -> Option<Option<&'a str>> {
        match reader {
            Reader::Owner => Some(None),
            Reader::Kernel(caller) => policy::granting_client(caller, clients, secret.env, secret.name).map(Some),
            Reader::Token(c) => c
                .grants
                .iter()
                .any(|p| vault_proto::names::pattern_matches(p, secret.env, secret.name))
                .then_some(Some(&c.name)),
            Reader::Nobody => None,
        }
    }

    /// The clients a kernel-identified reader may match, fresh from the store.
    pub(super) fn candidate_clients(&self, reader: &Reader) -> Result<Vec<ClientRow>, VaultError> {
        Ok(match reader {
            Reader::Kernel(c) => self.store.clients_for_uid(c.peer.uid)?,
            _ => Vec::new(),
        })
    }

    /// Reads `secrets` (each with its version, 0 for current) for an identified
    /// reader: all or nothing, each read and each denial recorded first.
    pub(super) async fn read_as(
        &self,
        actor: &Actor,
        reader: &Reader,
        secrets: &[(SecretRef<'_>, u64)],
    ) -> Result<Vec<(u64, SecretBytes)>, VaultError> {
        let clients = self.candidate_clients(reader)?;
        let mut results = Vec::with_capacity(secrets.len());
        let mut records = Vec::with_capacity(secrets.len());
        for (secret, version) in secrets {
            let Some(client) = self.access(reader, &clients, *secret) else {
                let not_granted = (Outcome::Denied, ReadDetail::Reason("not granted".into()));
                records.push(read_record("secret.read", actor, None, *secret, not_granted));
                results.push(Err(secret.not_found()));
                continue;
            };
            let result = self.read_for_agent(*secret, *version);
            if self.audit_reads || result.is_err() {
                records.push(read_record("secret.read", actor, client, *secret, outcome(&result)));
            }
            results.push(result);
        }
        self.record_all(records)?;
        results.into_iter().collect()
    }

    /// Names the reader: a token (checked and used up by one), else the kernel's
    /// identity. A refused token is recorded and never falls back to the uid.
    pub(super) async fn identify(
        &self,
        actor: &mut Actor,
        peer: Option<&Peer>,
        token: Option<&SecretBytes>,
    ) -> Result<Reader, VaultError> {
        let Some(peer) = peer else { return Ok(Reader::Nobody) };
        let Some(token) = token else {
            return Ok(if peer.uid == self.owner { Reader::Owner } else { Reader::Kernel(Caller::new(peer.clone())) });
        };
        if let Err(wait) = self.limits.auth_allowed(peer.uid) {
            self.record_detached(
                Event::new("token.refused", Outcome::Denied, actor).with("reason", "paused after failed attempts"),
            );
            return Err(VaultError::RateLimited(wait));
        }
        let keys = self.keys()?;
        let hash = keys.token_hash(token.expose());
        let now = crate::store::now_unix();
        // The check and the use in one durable transaction: a use-limited token
        // cannot be spent twice, even across a crash.
        let checked = self.write(|txn| {
            let Some(row) = txn.token_by_hash(&hash)? else { return Ok((Err(("unknown", None)), vec![])) };
            if let Some(reason) = policy::token_refusal(&row, peer.uid, now) {
                return Ok((Err((reason, Some(row.accessor.clone()))), vec![]));
            }
            // A refused token spends nothing: the client is checked before the use is.
            let Some(client) = txn.client(&row.client)?.filter(|c| c.enabled) else {
                return Ok((Err(("client disabled or removed", Some(row.accessor))), vec![]));
            };
            txn.token_use(&row.accessor, now)?;
            Ok((Ok((row.accessor, client)), vec![]))
        })?;
        match checked {
            Ok((accessor, client)) => {
                self.limits.auth_succeeded(peer.uid);
                actor.token = Some(accessor);
                Ok(Reader::Token(client))
            }
            Err((reason, accessor)) => {
                self.limits.auth_failed(peer.uid);
                let mut event = Event::new("token.refused", Outcome::Denied, actor).with("reason", reason);
                if let Some(accessor) = accessor {
                    event = event.with("accessor", accessor);
                }
                self.record(event)?;
                Err(VaultError::TokenRefused)
            }
        }
    }

    /// The owner's `show --reveal`: like [`Vault::get`], always recorded, and in
    /// the table at once (not only journaled). `version` 0 is the current one; any
    /// other stored version can be revealed.
    pub fn reveal(&self, actor: &Actor, secret: SecretRef<'_>, version: u64) -> Result<(u64, SecretBytes), VaultError> {
        let result = if version == 0 {
            self.read_current(secret)
        } else {
            self.read_version_any(secret, version).map(|value| (version, value))
        };
        self.append(vec![read_record("secret.reveal", actor, None, secret, outcome(&result)).into_event()], false)?;
        result
    }
}
