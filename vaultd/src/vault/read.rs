//! Agent reads: who is asking (kernel identity or token), what they may read
//! (the one decision is `policy::decide`), and the read itself, served from the
//! verified state in memory and recorded before the value is released.

use super::{SecretRef, Vault, VaultError, off_worker};
use crate::audit::{Actor, Event, Kind, Outcome, Read, ReadDetail, Record};
use crate::crypto::{SecretBytes, Unlocked};
use crate::identity::{Caller, Peer, Process as _};
use crate::policy::{self, Action, Decision, Reader};
use crate::state::Image;
use std::sync::Arc;

/// The record of a read by `actor` as `client`, which ended as `outcome` says.
pub(super) fn read_record<'a>(
    kind: Kind,
    actor: &'a Actor,
    client: Option<&'a str>,
    secret: SecretRef<'a>,
    (outcome, detail): (Outcome, ReadDetail),
) -> Read<'a> {
    Read { kind, outcome, actor, client, env: secret.env, name: secret.name, detail }
}

/// A read of one secret: the version read and its value.
type Opened = Result<(u64, SecretBytes), VaultError>;

/// How a read ended: allowed (with the version), denied (unknown, sealed) or
/// failed (did not decrypt, quarantined).
fn outcome(result: &Opened) -> (Outcome, ReadDetail) {
    let denied = |reason: &'static str| (Outcome::Denied, ReadDetail::Reason(reason.into()));
    match result {
        Ok((version, _)) => (Outcome::Ok, ReadDetail::Version(*version)),
        Err(VaultError::NotFound { .. }) => denied("not found"),
        Err(VaultError::Sealed) => denied("sealed"),
        Err(VaultError::Uninitialized) => denied("not initialized"),
        Err(e) => (Outcome::Failed, ReadDetail::Reason(e.to_string().into())),
    }
}

/// The ciphertext of a version an agent may read at `now`: the current one
/// (`version` 0 or its number), or the previous one until its grace ends.
/// Anything else is "not found", like a secret that does not exist.
fn agent_ciphertext(
    image: &Image,
    secret: SecretRef<'_>,
    version: u64,
    now: i64,
) -> Result<(u64, Arc<[u8]>), VaultError> {
    let found = image.secret(secret.env, secret.name)?.ok_or_else(|| secret.not_found())?;
    let version = if version == 0 { found.current_version } else { version };
    let ciphertext = found.readable(version, now).ok_or_else(|| secret.not_found())?;
    Ok((version, ciphertext.clone()))
}

impl Vault {
    pub(super) fn read_for_agent(&self, secret: SecretRef<'_>, version: u64) -> Result<(u64, SecretBytes), VaultError> {
        let keys = self.keys()?;
        let (version, ciphertext) = agent_ciphertext(&self.image(), secret, version, crate::clock::now_unix())?;
        Ok((version, keys.open_version(&secret.version(version), &ciphertext)?))
    }

    /// Why there are no keys to read with (sealed, or not initialized).
    fn locked(&self) -> VaultError {
        self.keys().err().unwrap_or(VaultError::Sealed)
    }

    /// The current version's value (the owner's reveal, hooks).
    pub(super) fn read_current(&self, secret: SecretRef<'_>) -> Result<(u64, SecretBytes), VaultError> {
        let keys = self.keys()?;
        let (version, ciphertext) = {
            let image = self.image();
            let found = image.secret(secret.env, secret.name)?.ok_or_else(|| secret.not_found())?;
            let (version, ciphertext) = found.current().ok_or_else(|| secret.not_found())?;
            (version, ciphertext.clone())
        };
        Ok((version, keys.open_version(&secret.version(version), &ciphertext)?))
    }

    /// Any stored version's value, whatever its state (reveal, hooks).
    pub(super) fn read_version_any(&self, secret: SecretRef<'_>, version: u64) -> Result<SecretBytes, VaultError> {
        let keys = self.keys()?;
        let ciphertext = {
            let image = self.image();
            let found = image.secret(secret.env, secret.name)?.ok_or_else(|| secret.not_found())?;
            found.versions.get(&version).and_then(|v| v.ciphertext.clone()).ok_or_else(|| secret.not_found())?
        };
        Ok(keys.open_version(&secret.version(version), &ciphertext)?)
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
        self.admit(&actor, &reader, 1)?;
        let mut values = self.read_as(&actor, &reader, &[(secret, version)]).await?;
        values.pop().ok_or_else(|| secret.not_found())
    }

    /// The credential broker's question for one request: may this caller (the
    /// kernel's identity, or a token) have `secret` used on its behalf (a `use`
    /// or `read` grant, `policy::decide`)? If so, its current value, for the
    /// broker to put on the wire, never for the caller. Rate-limited and
    /// audited as `secret.use` (allowed or denied), like a read. Not granted and
    /// not found are the same answer.
    pub async fn authorize_use(
        &self,
        actor: &Actor,
        peer: Option<&Peer>,
        token: Option<&SecretBytes>,
        secret: SecretRef<'_>,
    ) -> Result<Usage, VaultError> {
        let mut actor = actor.clone();
        let reader = self.identify(&mut actor, peer, token).await?;
        self.admit(&actor, &reader, 1)?;
        let epoch = self.incident_epoch.load(std::sync::atomic::Ordering::SeqCst);
        let decision = self.decide(&reader, secret, Action::Use);
        let result = match &decision {
            Decision::Allowed { .. } => self.read_for_agent(secret, 0),
            Decision::Denied(_) => Err(secret.not_found()),
        };
        let (client, detail) = match (&decision, &result) {
            (Decision::Denied(why), _) => (None, (Outcome::Denied, ReadDetail::Reason((*why).into()))),
            (Decision::Allowed { client }, r) => (client.as_deref(), outcome(r)),
        };
        if result.is_ok() {
            self.spend(&actor, &reader)?;
        }
        self.journal.room().await;
        self.record_all(vec![read_record(Kind::SecretUse, &actor, client, secret, detail)])?;
        let (version, value) = result?;
        let client = client.map(str::to_owned);
        Ok(Usage { actor, reader, env: secret.env.into(), name: secret.name.into(), version, value, client, epoch })
    }

    /// Whether a use allowed by [`Vault::authorize_use`] may go on (a stream in
    /// flight): no revoke-all since, the vault unsealed, and the caller still
    /// allowed (a client disabled, a grant or token revoked end it).
    pub fn may_still_use(&self, usage: &Usage) -> bool {
        let secret = SecretRef { env: &usage.env, name: &usage.name };
        self.incident_epoch.load(std::sync::atomic::Ordering::SeqCst) == usage.epoch
            && !self.is_sealed()
            && matches!(self.decide(&usage.reader, secret, Action::Use), Decision::Allowed { .. })
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
        self.admit(&actor, &reader, secrets.len())?;
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
        self.admit(&actor, &reader, 1)?;
        let names: Vec<String> = self
            .list(env)?
            .into_iter()
            .filter(|s| {
                matches!(self.decide(&reader, SecretRef { env, name: &s.name }, Action::Read), Decision::Allowed { .. })
            })
            .map(|s| s.name.clone())
            .collect();
        self.record(Event::new(Kind::SecretList, Outcome::Ok, &actor).with("env", env).with("names", names.len()))?;
        Ok(names)
    }

    /// The rate limit for a read of `cost` secrets, per client (or uid) and
    /// global; the owner is exempt.
    pub(super) fn admit(&self, actor: &Actor, reader: &Reader, cost: usize) -> Result<(), VaultError> {
        let limit_key = match reader {
            Reader::Owner => None,
            Reader::Token { client, .. } => Some(client.name.clone()),
            Reader::Kernel(c) => Some(format!("uid:{}", c.peer.uid)),
            Reader::Nobody => Some("nobody".into()),
        };
        if let Err(wait) = self.limits.admit(limit_key.as_deref(), cost) {
            // A token's client is whom the limit held back: the record (and
            // its alert) names it, as a read's record does.
            let mut actor = actor.clone();
            if let Reader::Token { client, .. } = reader {
                actor.client = Some(client.name.clone());
            }
            let event = Event::new(Kind::RequestRateLimited, Outcome::Denied, &actor)
                .with("retry_after_ms", wait.as_millis() as u64);
            self.record_detached(event);
            return Err(VaultError::RateLimited(wait));
        }
        Ok(())
    }

    /// Whether `reader` may read `secret` now, by the one rule (`policy::decide`),
    /// against the verified state.
    pub(super) fn decide(&self, reader: &Reader, secret: SecretRef<'_>, action: Action) -> Decision {
        let image = self.image();
        policy::decide(reader, &image, secret.env, secret.name, action, crate::clock::now_unix())
    }

    /// The decision on each of `secrets` and, where allowed, its value: every
    /// decision and ciphertext from one look at the verified state at one time,
    /// then each opened, a key term's cipher made once for the batch. The keys
    /// (and the ciphers) are dropped on return, before any wait for the journal.
    fn open_all(&self, reader: &Reader, secrets: &[(SecretRef<'_>, u64)]) -> (Vec<Decision>, Vec<Opened>) {
        let now = crate::clock::now_unix();
        let (decisions, ciphertexts): (Vec<_>, Vec<_>) = {
            let image = self.image();
            secrets
                .iter()
                .map(|&(secret, version)| {
                    let decision = policy::decide(reader, &image, secret.env, secret.name, Action::Read, now);
                    let allowed = matches!(decision, Decision::Allowed { .. });
                    let ciphertext = allowed.then(|| agent_ciphertext(&image, secret, version, now));
                    (decision, ciphertext)
                })
                .unzip()
        };
        let keys = self.current_keys();
        let mut opener = keys.as_deref().map(Unlocked::opener);
        let results = secrets
            .iter()
            .zip(ciphertexts)
            .map(|((secret, _), ciphertext)| match (ciphertext, opener.as_mut()) {
                (None, _) => Err(secret.not_found()),
                (Some(_), None) => Err(self.locked()),
                (Some(ciphertext), Some(opener)) => {
                    let (version, ciphertext) = ciphertext?;
                    Ok((version, opener.open(&secret.version(version), &ciphertext)?))
                }
            })
            .collect();
        (decisions, results)
    }

    /// Reads `secrets` (each with its version, 0 for current) for an identified
    /// reader: all or nothing, each read and each denial recorded first, in one
    /// journal append for the batch.
    pub(super) async fn read_as(
        &self,
        actor: &Actor,
        reader: &Reader,
        secrets: &[(SecretRef<'_>, u64)],
    ) -> Result<Vec<(u64, SecretBytes)>, VaultError> {
        let (decisions, results) = self.open_all(reader, secrets);
        let mut records = Vec::with_capacity(secrets.len());
        for (((secret, _), decision), result) in secrets.iter().zip(&decisions).zip(&results) {
            match decision {
                Decision::Denied(why) => records.push(read_record(
                    Kind::SecretRead,
                    actor,
                    None,
                    *secret,
                    (Outcome::Denied, ReadDetail::Reason((*why).into())),
                )),
                Decision::Allowed { client } if self.audit_reads || result.is_err() => {
                    records.push(read_record(Kind::SecretRead, actor, client.as_deref(), *secret, outcome(result)));
                }
                Decision::Allowed { .. } => {}
            }
        }
        // All or nothing: a request refused for one name was not served, and spends nothing.
        if !results.is_empty() && results.iter().all(Result::is_ok) {
            self.spend(actor, reader)?;
        }
        self.journal.room().await;
        self.record_all(records)?;
        results.into_iter().collect()
    }

    /// Spends one use of the token a served request came with. A token with a
    /// use limit is counted exactly, in a durable commit (off the async worker):
    /// a use is never spent twice, even across a crash, and the last one is
    /// refused to a concurrent request. One without a limit only notes the time
    /// (see `state::Image::note_use`): no commit per read.
    pub(super) fn spend(&self, actor: &Actor, reader: &Reader) -> Result<(), VaultError> {
        let Reader::Token { accessor, .. } = reader else { return Ok(()) };
        let now = crate::clock::now_unix();
        {
            let image = self.image();
            let Some(token) = image.token(accessor) else { return Err(VaultError::TokenRefused) };
            if token.uses_left.is_none() {
                image.note_use(accessor, now);
                return Ok(());
            }
        }
        let spent = off_worker(|| {
            self.write(|c| {
                let Some(token) = c.state.token_mut(accessor)? else { return Ok((false, vec![])) };
                if token.uses_left.is_some_and(|n| n <= 0) {
                    return Ok((false, vec![]));
                }
                token.spend(now);
                Ok((true, vec![]))
            })
        })?;
        if !spent {
            let event = Event::new(Kind::TokenRefused, Outcome::Denied, actor)
                .with("reason", "no uses left")
                .with("accessor", accessor.clone());
            self.record(event)?;
            return Err(VaultError::TokenRefused);
        }
        Ok(())
    }

    /// Names the reader: a token (checked; spent by [`Vault::spend`] once the
    /// request is served), else the kernel's identity. A refused token is
    /// recorded and never falls back to the uid.
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
        let keys = self.keys()?;
        let hash = keys.token_hash(token.expose());
        let now = crate::clock::now_unix();
        // Checked here, spent only once the request is served (see `spend`).
        let checked = {
            let image = self.image();
            match image.token_by_hash(&hash) {
                None => Err(("unknown", None)),
                Some(found) => {
                    let accessor = found.accessor.clone();
                    if let Some(reason) = policy::token_refusal(found, image.last_use(found), peer.uid, now) {
                        Err((reason, Some(accessor)))
                    } else if let Some(client) = image.client(&found.client).filter(|c| c.enabled).cloned() {
                        Ok((accessor, client, found.bind_exe.clone()))
                    } else {
                        Err(("client disabled or removed", Some(accessor)))
                    }
                }
            }
        };
        // A token bound to an executable: the caller must run that file, as its
        // identity was attested at accept (outside the state's lock: /proc reads).
        let checked = checked.and_then(|(accessor, client, bind_exe)| match bind_exe {
            None => Ok((accessor, client)),
            Some(exe) => match Caller::new(peer.clone()).runs(std::path::Path::new(&exe)) {
                Ok(true) => Ok((accessor, client)),
                Ok(false) => Err(("used from another executable", Some(accessor))),
                Err(why) => Err((why.reason(), Some(accessor))),
            },
        });
        match checked {
            Ok((accessor, client)) => {
                actor.token = Some(accessor.clone());
                Ok(Reader::Token { client, accessor, uid: peer.uid })
            }
            Err((reason, accessor)) => {
                let accessor_known = accessor.is_some();
                let mut event = Event::new(Kind::TokenRefused, Outcome::Denied, actor).with("reason", reason);
                if let Some(accessor) = accessor {
                    event = event.with("accessor", accessor);
                }
                self.record(event)?;
                Err(if accessor_known { VaultError::TokenRefused } else { VaultError::TokenUnknown })
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
        self.append(vec![read_record(Kind::SecretReveal, actor, None, secret, outcome(&result)).into_event()], false)?;
        result
    }
}

/// A use of a secret the broker was allowed (see [`Vault::authorize_use`]).
pub struct Usage {
    /// Who asked (with the token's accessor, if any), for the request's record.
    pub actor: Actor,
    reader: Reader,
    pub env: String,
    pub name: String,
    pub version: u64,
    /// The value to put on the wire. Never returned to the caller.
    pub value: SecretBytes,
    /// The client whose grant allowed it (`None`: the owner).
    pub client: Option<String>,
    epoch: u64,
}
