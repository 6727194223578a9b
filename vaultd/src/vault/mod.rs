//! The vault: the store plus the lock state, and the operations the API serves.
//!
//! Sealed means no key is in memory; every operation but `status`, `init` and
//! `unlock` then fails with [`VaultError::Sealed`]. Nothing here knows about gRPC.
//! Rotation's state machine is in [`rotate`]; live updates for agents in [`watch`].

mod incident;
mod rotate;
mod watch;

pub use rotate::{Rotated, Trigger};
pub use watch::{Update, Watcher};

use crate::audit::chain::{self, Tip};
use crate::audit::{self, Actor, Committer, Event, Outcome, Verdict, forward};
use crate::config::Config;
use crate::crypto::{self, CryptoError, KdfParams, SecretBytes, Unlocked, VersionId};
use crate::identity::{Caller, Peer};
use crate::limits::Limits;
use crate::policy;
use crate::rotation::RotationConfig;
use crate::store::{
    AuditFilter, AuditRow, ClientRow, NewToken, PolicyChange, Promoted, SecretLabels, SecretRow, Store, StoreError,
    TokenRow, Txn, VersionRow,
};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio::sync::broadcast;
use vault_proto::names::{self, NameError};

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the vault is sealed; run `vaultctl unlock`")]
    Sealed,
    #[error("the vault is not initialized; run `vaultctl init`")]
    Uninitialized,
    #[error("the vault is already initialized")]
    AlreadyInitialized,
    #[error("wrong passphrase")]
    WrongPassphrase,
    #[error("the passphrase is empty")]
    EmptyPassphrase,
    #[error("secret {env}/{name} not found")]
    NotFound { env: String, name: String },
    #[error("client {0} not found")]
    ClientNotFound(String),
    #[error("client {0} already exists")]
    ClientExists(String),
    #[error("invalid grant pattern: {0}")]
    InvalidPattern(NameError),
    #[error("invalid executable hash: expected 64 lowercase hex digits (sha256sum's output)")]
    InvalidExeSha256,
    #[error("invalid, expired or revoked token")]
    TokenRefused,
    #[error("token {0} not found")]
    TokenNotFound(String),
    #[error("client {0} has {max} live tokens already; revoke some first", max = MAX_TOKENS_PER_CLIENT)]
    TooManyTokens(String),
    #[error("rate limit exceeded; retry in {} ms", .0.as_millis())]
    RateLimited(Duration),
    #[error("invalid {what}: {why}")]
    InvalidName { what: &'static str, why: NameError },
    #[error("the value is empty")]
    EmptyValue,
    #[error("the value is {0} bytes; the limit is {max} bytes", max = vault_proto::MAX_VALUE_LEN)]
    ValueTooLarge(usize),
    #[error("incident {0} not found")]
    IncidentNotFound(i64),
    #[error("a rotation of {0} is already in progress")]
    RotationInProgress(String),
    #[error("{0}")]
    RotationFailed(String),
    #[error("{0}")]
    Rotator(String),
    #[error("access to {0} ended (revoked, disabled, or the secret is gone)")]
    AccessEnded(String),
    #[error("Argon2 parameters refused: {0}")]
    KdfRefused(&'static str),
    #[error(
        "cannot rewrap {env}/{name} version {version}: decryption failed (the stored record is damaged; \
         `vaultctl rm` the secret, then run `vaultctl rotate-key --rewrap` again)"
    )]
    RewrapFailed { env: String, name: String, version: u64 },
    #[error("no key term number is left")]
    TermsExhausted,
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Audit(#[from] audit::committer::CommitFailed),
}

impl From<StoreError> for VaultError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyInitialized => VaultError::AlreadyInitialized,
            other => VaultError::Store(other),
        }
    }
}

/// A validated `env/name`.
#[derive(Debug, Clone, Copy)]
pub struct SecretRef<'a> {
    pub env: &'a str,
    pub name: &'a str,
}

impl<'a> SecretRef<'a> {
    /// Validates both parts; an empty environment means [`names::DEFAULT_ENV`].
    pub fn parse(env: &'a str, name: &'a str) -> Result<Self, VaultError> {
        let env = names::env_or_default(env);
        names::validate(env).map_err(|why| VaultError::InvalidName { what: "environment", why })?;
        names::validate(name).map_err(|why| VaultError::InvalidName { what: "secret name", why })?;
        Ok(SecretRef { env, name })
    }

    fn version(&self, version: u64) -> VersionId<'a> {
        VersionId { env: self.env, name: self.name, version }
    }

    fn not_found(&self) -> VaultError {
        VaultError::NotFound { env: self.env.into(), name: self.name.into() }
    }
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub initialized: bool,
    pub sealed: bool,
    pub secrets: u64,
    pub key_term: u32,
    pub kdf: Option<KdfParams>,
    pub schema_version: u32,
    pub audit_forward_errors: u64,
    pub audit_forward_dropped: u64,
    /// `env/name` of secrets due for rotation, and of those whose last rotation failed.
    pub rotations_due: Vec<String>,
    pub rotations_failed: Vec<String>,
    /// `env/name` of secrets whose current version is compromised (revoke-all).
    pub compromised: Vec<String>,
}

/// Live tokens a client may hold at once.
pub const MAX_TOKENS_PER_CLIENT: u64 = 100;

/// Who is reading, once identified.
enum Reader {
    Owner,
    /// Judged by the clients its uid (and gid, executable) match.
    Kernel(Caller),
    /// Judged by the token's client alone.
    Token(ClientRow),
    /// Nobody the vault knows (no credentials).
    Nobody,
}

pub struct Vault {
    store: Store,
    limits: Limits,
    /// `None` while sealed. Readers clone the `Arc` and drop the lock at once, so a
    /// seal never waits on a read; the keys are wiped when the last clone drops.
    keys: RwLock<Option<Arc<Unlocked>>>,
    /// The audit chain's keys and tip while unlocked. Every write holds this lock
    /// around its transaction (lock order: this, then the store's writer), so the
    /// tip always matches what is committed and an unlock never races an append.
    chain: Mutex<Option<Chain>>,
    /// Serializes init and unlock: each runs Argon2 with 64 MiB, and a burst of
    /// them must neither exhaust memory nor make guessing cheaper.
    kdf_gate: Mutex<()>,
    /// Group commit for the records of reads.
    committer: Committer,
    /// Whether successful agent reads are recorded (denials always are).
    audit_reads: bool,
    /// The vault's owner (vaultd's uid): reads everything on the agent socket.
    owner: u32,
    /// Committed entries, for `audit tail` and the forwarding sinks.
    published: broadcast::Sender<Arc<AuditRow>>,
    forward_stats: Arc<forward::Stats>,
    /// `[rotation]` settings: versions kept, hook limits.
    rotation: RotationConfig,
    /// Secrets being rotated by this process (see `rotate::Claim`).
    rotating: Mutex<HashSet<(String, String)>>,
    /// Bumped after every change an agent's watch may care about (a new current
    /// version, a grant, a client or token change, a seal). A watch channel keeps
    /// only the latest value: a slow watcher skips to the newest state.
    changes: tokio::sync::watch::Sender<u64>,
    /// The newest incident this vaultd has acted on (see `incident`).
    incident_seen: std::sync::atomic::AtomicI64,
    /// Bumped by every incident: watches opened before it end.
    incident_epoch: std::sync::atomic::AtomicU64,
    /// Watch streams open now.
    watching: Arc<std::sync::atomic::AtomicUsize>,
    /// Bumped to close every agent connection.
    cutoff: tokio::sync::watch::Sender<u64>,
    /// Values a key term may seal before a new term starts (`[keys]`).
    max_encryptions: u64,
}

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
    /// Opens the vault in `data_dir`, sealed.
    pub fn open(data_dir: &Path, config: &Config) -> Result<Arc<Vault>, VaultError> {
        let store = Store::open(data_dir)?;
        let latest_incident = store.latest_incident()?;
        let (published, _) = broadcast::channel(forward::BUFFER);
        Ok(Arc::new_cyclic(|vault: &Weak<Vault>| {
            let vault = vault.clone();
            let committer = Committer::new(move |events| match vault.upgrade() {
                Some(vault) => vault.append(events, false).map_err(|e| e.to_string()),
                None => Err("vaultd is shutting down".into()),
            });
            Vault {
                store,
                limits: Limits::new(config.limits),
                keys: RwLock::new(None),
                chain: Mutex::new(None),
                kdf_gate: Mutex::new(()),
                committer,
                audit_reads: config.audit.reads,
                rotation: config.rotation.clone(),
                rotating: Mutex::default(),
                changes: tokio::sync::watch::Sender::new(0),
                incident_seen: latest_incident.into(),
                incident_epoch: Default::default(),
                watching: Arc::default(),
                cutoff: tokio::sync::watch::Sender::new(0),
                owner: rustix::process::geteuid().as_raw(),
                published,
                forward_stats: Arc::default(),
                max_encryptions: config.keys.max_encryptions_per_term.max(1),
            }
        }))
    }

    fn current_keys(&self) -> Option<Arc<Unlocked>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn keys(&self) -> Result<Arc<Unlocked>, VaultError> {
        match self.current_keys() {
            Some(keys) => Ok(keys),
            None if self.store.header()?.is_none() => Err(VaultError::Uninitialized),
            None => Err(VaultError::Sealed),
        }
    }

    fn chain(&self) -> std::sync::MutexGuard<'_, Option<Chain>> {
        self.chain.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` and appends the events it returns, in one transaction (durable
    /// unless `durable` is false: read records only), then publishes the committed
    /// entries. The one way state changes.
    fn commit<T>(
        &self,
        durable: bool,
        f: impl FnOnce(&Txn<'_>) -> Result<(T, Vec<Event>), VaultError>,
    ) -> Result<T, VaultError> {
        let mut chain = self.chain();
        let mut tip = chain.as_ref().map(|c| c.tip.clone());
        let (out, rows) = self.store.write_with(durable, |txn| {
            let (out, events) = f(txn)?;
            let link = chain.as_ref().zip(tip.as_mut()).map(|(c, tip)| (&*c.keys, tip));
            Ok::<_, VaultError>((out, chain::append(txn, link, &events)?))
        })?;
        if let (Some(c), Some(tip)) = (chain.as_mut(), tip) {
            c.tip = tip;
        }
        drop(chain);
        self.publish(rows);
        Ok(out)
    }

    fn write<T>(&self, f: impl FnOnce(&Txn<'_>) -> Result<(T, Vec<Event>), VaultError>) -> Result<T, VaultError> {
        self.commit(true, f)
    }

    /// Appends events that record no change of their own (reads, refusals).
    fn append(&self, events: Vec<Event>, durable: bool) -> Result<(), VaultError> {
        self.commit(durable, |_| Ok(((), events)))
    }

    /// Makes `unlocked` the vault's keys: in one transaction, runs `prepare` (init
    /// stores the new header there), resumes the audit chain and records `event`.
    fn open_with(
        &self,
        unlocked: Unlocked,
        prepare: impl FnOnce(&Txn<'_>) -> Result<(), VaultError>,
        event: Event,
    ) -> Result<(), VaultError> {
        let keys = Arc::new(unlocked);
        let mut chain = self.chain();
        let (tip, rows) = self.store.write(|txn| {
            prepare(txn)?;
            let mut tip = chain::resume(txn, &keys)?;
            let rows = chain::append(txn, Some((&keys, &mut tip)), &[event])?;
            Ok::<_, VaultError>((tip, rows))
        })?;
        *chain = Some(Chain { keys: keys.clone(), tip });
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(keys);
        drop(chain);
        self.publish(rows);
        Ok(())
    }

    fn publish(&self, rows: Vec<AuditRow>) {
        for row in rows {
            // No receiver (no sink, nobody tailing) is fine: the entry is in the database.
            let _ = self.published.send(Arc::new(row));
        }
    }

    /// Committed audit entries as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AuditRow>> {
        self.published.subscribe()
    }

    /// The sender side, for the forwarding sinks to subscribe to.
    pub fn subscribe_sender(&self) -> broadcast::Sender<Arc<AuditRow>> {
        self.published.clone()
    }

    pub fn forward_stats(&self) -> Arc<forward::Stats> {
        self.forward_stats.clone()
    }

    /// Records a refusal that guards nothing (a connection closed at accept),
    /// without waiting for the commit.
    pub fn record_detached(&self, event: Event) {
        self.committer.record_detached(event);
    }

    /// Records an event now, durably (startup and shutdown records).
    pub fn record_durable(&self, event: Event) -> Result<(), VaultError> {
        self.append(vec![event], true)
    }

    /// Records an event through the group commit and waits for it.
    pub async fn record(&self, event: Event) -> Result<(), VaultError> {
        Ok(self.committer.record(event).await?)
    }

    pub fn is_sealed(&self) -> bool {
        self.current_keys().is_none()
    }

    pub fn status(&self) -> Result<Status, VaultError> {
        use std::sync::atomic::Ordering::Relaxed;
        let header = self.store.header()?;
        let keys = self.current_keys();
        let keys_present = keys.is_some();
        Ok(Status {
            initialized: header.is_some(),
            sealed: keys.is_none(),
            secrets: if keys.is_some() { self.store.count_secrets()? } else { 0 },
            key_term: if keys.is_some() { self.store.newest_term()? } else { 0 },
            kdf: header.map(|(h, _)| h.kdf),
            schema_version: self.store.schema_version(),
            audit_forward_errors: self.forward_stats.errors.load(Relaxed),
            audit_forward_dropped: self.forward_stats.dropped.load(Relaxed),
            rotations_due: match keys_present {
                true => self
                    .store
                    .rotations_due(crate::store::now_unix())?
                    .into_iter()
                    .map(|d| format!("{}/{}", d.env, d.name))
                    .collect(),
                false => Vec::new(),
            },
            compromised: match keys_present {
                true => self.store.compromised()?.into_iter().map(|r| format!("{}/{}", r.env, r.name)).collect(),
                false => Vec::new(),
            },
            rotations_failed: match keys_present {
                true => self.store.rotations_failed()?.into_iter().map(|r| format!("{}/{}", r.env, r.name)).collect(),
                false => Vec::new(),
            },
        })
    }

    /// Creates the key hierarchy and leaves the vault unlocked. Runs Argon2: call
    /// from a blocking context.
    pub fn init(&self, actor: &Actor, passphrase: &SecretBytes) -> Result<(), VaultError> {
        if passphrase.is_empty() {
            return Err(VaultError::EmptyPassphrase);
        }
        let _gate = self.kdf_gate.lock().unwrap_or_else(|p| p.into_inner());
        if self.store.header()?.is_some() {
            return Err(VaultError::AlreadyInitialized);
        }
        let kdf = KdfParams::for_new_vault();
        let (header, term, unlocked) = crypto::create(passphrase, kdf)?;
        let event = Event::new("vault.init", Outcome::Ok, actor)
            .with("kdf", format!("argon2id m={} t={} p={}", kdf.memory_kib, kdf.iterations, kdf.parallelism));
        self.open_with(unlocked, |txn| Ok(txn.initialize(&header, &term)?), event)
    }

    /// Checks the passphrase and loads the keys. A wrong passphrase changes
    /// nothing (also when already unlocked) but is recorded. Runs Argon2: call
    /// from a blocking context.
    pub fn unlock(&self, actor: &Actor, passphrase: &SecretBytes) -> Result<(), VaultError> {
        if passphrase.is_empty() {
            return Err(VaultError::EmptyPassphrase);
        }
        let _gate = self.kdf_gate.lock().unwrap_or_else(|p| p.into_inner());
        let (header, terms) = self.store.header()?.ok_or(VaultError::Uninitialized)?;
        match Unlocked::open(passphrase, &header, &terms) {
            // Also chains what was recorded while sealed.
            Ok(unlocked) => self.open_with(unlocked, |_| Ok(()), Event::new("vault.unlock", Outcome::Ok, actor)),
            Err(e) => {
                let (outcome, error) = match e {
                    CryptoError::WrongPassphrase => (Outcome::Denied, VaultError::WrongPassphrase),
                    other => (Outcome::Failed, VaultError::Crypto(other)),
                };
                let event = Event::new("vault.unlock", outcome, actor).with("reason", error.to_string());
                self.append(vec![event], true)?;
                Err(error)
            }
        }
    }

    /// Drops the keys (wiped once in-flight reads finish). Sealing always takes
    /// effect; its record (with a checkpoint of the log head) is written with the
    /// outgoing keys, and an error reports a record that could not be written.
    pub fn seal(&self, actor: &Actor) -> Result<(), VaultError> {
        let mut chain = self.chain();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = None;
        let Some(Chain { keys, mut tip }) = chain.take() else { return Ok(()) };
        let events = [checkpoint(&tip), Event::new("vault.seal", Outcome::Ok, actor)];
        let rows = self.store.write(|txn| chain::append(txn, Some((&keys, &mut tip)), &events));
        drop(chain);
        // Watchers end now (their next read finds the vault sealed), whatever the record did.
        self.notify();
        self.publish(rows?);
        Ok(())
    }

    /// Wakes every watcher to look at the vault again.
    fn notify(&self) {
        self.changes.send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// Appends a checkpoint: the head's seq and MAC, for forwarding to a place an
    /// attacker who can edit the database cannot reach.
    pub fn checkpoint(&self) -> Result<(), VaultError> {
        let tip = self.chain().as_ref().map(|c| c.tip.clone()).ok_or(VaultError::Sealed)?;
        self.append(vec![checkpoint(&tip)], true)
    }

    /// Stores `value` as the new current version; returns its number and, for an
    /// existing secret, what became of the old current. Fsyncs: call from a
    /// blocking context.
    pub fn put(
        &self,
        actor: &Actor,
        secret: SecretRef<'_>,
        labels: &SecretLabels,
        policy: &PolicyChange,
        value: &SecretBytes,
    ) -> Result<(u64, Option<Promoted>), VaultError> {
        check_value(value)?;
        rotate::check_policy(policy)?;
        let keys = self.keys()?;
        let digest = keys.value_digest(value.expose());
        let put = self.write(|txn| {
            let mut events = Vec::with_capacity(3);
            let term = self.sealing_term(txn, &keys, 1, &mut events)?;
            let (version, promoted) =
                txn.put(secret.env, secret.name, labels, self.rotation.keep_versions, |version| {
                    Ok::<_, VaultError>(keys.seal_version(&secret.version(version), term, value.expose())?)
                })?;
            let mut event = Event::new("secret.write", Outcome::Ok, actor)
                .secret(secret.env, secret.name)
                .with("version", version)
                .with("value_digest", digest);
            if let Some(p) = promoted {
                event = event.with("previous_version", p.previous).with("grace_until_unix", p.grace_until);
            }
            events.push(event);
            if !policy.is_empty() {
                txn.set_policy(secret.env, secret.name, policy)?;
                events.push(rotate::policy_event(actor, secret, policy));
            }
            Ok(((version, promoted), events))
        })?;
        self.notify();
        Ok(put)
    }

    /// The term to seal `count` values under, inside the writing transaction: the
    /// store's newest, so a term is used only once its row is committed. When it
    /// would pass the per-term limit a new term starts here (recorded in
    /// `events`). The count is persisted with the write.
    fn sealing_term(
        &self,
        txn: &Txn<'_>,
        keys: &Unlocked,
        count: u64,
        events: &mut Vec<Event>,
    ) -> Result<u32, VaultError> {
        let (newest, used) = txn.newest_term()?;
        let term = if used.saturating_add(count) > self.max_encryptions {
            let next = newest.checked_add(1).ok_or(VaultError::TermsExhausted)?;
            txn.insert_term(&keys.add_term(next)?, false)?;
            events.push(
                Event::new("key.rotate", Outcome::Ok, &Actor::vaultd())
                    .with("term", next)
                    .with("previous_term", newest)
                    .with("reason", "encryption limit")
                    .with("encryptions", used),
            );
            next
        } else {
            newest
        };
        txn.count_encryptions(term, count)?;
        Ok(term)
    }

    fn read_current(&self, secret: SecretRef<'_>) -> Result<(u64, SecretBytes), VaultError> {
        let keys = self.keys()?;
        let (version, ciphertext) = self.store.current(secret.env, secret.name)?.ok_or_else(|| secret.not_found())?;
        Ok((version, keys.open_version(&secret.version(version), &ciphertext)?))
    }

    /// What an agent may read: the current version (`version` 0 or its number),
    /// or the previous one until its grace period ends. Anything else is "not
    /// found", like a secret that does not exist.
    fn read_for_agent(&self, secret: SecretRef<'_>, version: u64) -> Result<(u64, SecretBytes), VaultError> {
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

    /// The rate limit, per client (or uid) and global; the owner is exempt.
    fn admit(&self, actor: &Actor, reader: &Reader) -> Result<(), VaultError> {
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
    fn access(&self, reader: &Reader, clients: &[ClientRow], secret: SecretRef<'_>) -> Option<Option<String>> {
        match reader {
            Reader::Owner => Some(None),
            Reader::Kernel(caller) => {
                policy::granting_client(caller, clients, secret.env, secret.name).map(|c| Some(c.to_owned()))
            }
            Reader::Token(c) => c
                .grants
                .iter()
                .any(|p| vault_proto::names::pattern_matches(p, secret.env, secret.name))
                .then(|| Some(c.name.clone())),
            Reader::Nobody => None,
        }
    }

    /// The clients a kernel-identified reader may match, fresh from the store.
    fn candidate_clients(&self, reader: &Reader) -> Result<Vec<ClientRow>, VaultError> {
        Ok(match reader {
            Reader::Kernel(c) => self.store.clients_for_uid(c.peer.uid)?,
            _ => Vec::new(),
        })
    }

    /// Reads `secrets` (each with its version, 0 for current) for an identified
    /// reader: all or nothing, each read and each denial recorded first.
    async fn read_as(
        &self,
        actor: &Actor,
        reader: &Reader,
        secrets: &[(SecretRef<'_>, u64)],
    ) -> Result<Vec<(u64, SecretBytes)>, VaultError> {
        let clients = self.candidate_clients(reader)?;
        let mut results = Vec::with_capacity(secrets.len());
        let mut events = Vec::with_capacity(secrets.len());
        for (secret, version) in secrets {
            let mut who = actor.clone();
            let Some(client) = self.access(reader, &clients, *secret) else {
                events.push(
                    Event::new("secret.read", Outcome::Denied, &who)
                        .secret(secret.env, secret.name)
                        .with("reason", "not granted"),
                );
                results.push(Err(secret.not_found()));
                continue;
            };
            who.client = client;
            let result = self.read_for_agent(*secret, *version);
            if self.audit_reads || result.is_err() {
                events.push(read_event("secret.read", &who, *secret, &result));
            }
            results.push(result);
        }
        self.record_all(events).await?;
        results.into_iter().collect()
    }

    /// Names the reader: a token (checked and used up by one), else the kernel's
    /// identity. A refused token is recorded and never falls back to the uid.
    async fn identify(
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
                self.record(event).await?;
                Err(VaultError::TokenRefused)
            }
        }
    }

    /// Records events through the group commit, in one batch, and waits for all.
    async fn record_all(&self, events: Vec<Event>) -> Result<(), VaultError> {
        Ok(self.committer.record_all(events).await?)
    }

    /// The owner's `show --reveal`: like [`Vault::get`], always recorded.
    /// `version` 0 is the current one; any other stored version can be revealed.
    pub async fn reveal(
        &self,
        actor: &Actor,
        secret: SecretRef<'_>,
        version: u64,
    ) -> Result<(u64, SecretBytes), VaultError> {
        let result = if version == 0 {
            self.read_current(secret)
        } else {
            self.read_version_any(secret, version).map(|value| (version, value))
        };
        self.record(read_event("secret.reveal", actor, secret, &result)).await?;
        result
    }

    pub fn describe(&self, secret: SecretRef<'_>) -> Result<SecretRow, VaultError> {
        self.keys()?;
        self.store.secret(secret.env, secret.name)?.ok_or_else(|| secret.not_found())
    }

    pub fn list(&self, env: &str) -> Result<Vec<SecretRow>, VaultError> {
        let env = names::env_or_default(env);
        names::validate(env).map_err(|why| VaultError::InvalidName { what: "environment", why })?;
        self.keys()?;
        Ok(self.store.list(env)?)
    }

    pub fn versions(&self, secret: SecretRef<'_>) -> Result<Vec<VersionRow>, VaultError> {
        self.keys()?;
        self.store.versions(secret.env, secret.name)?.ok_or_else(|| secret.not_found())
    }

    /// Deletes the secret and every version; returns how many versions went.
    pub fn delete(&self, actor: &Actor, secret: SecretRef<'_>) -> Result<u64, VaultError> {
        self.keys()?;
        let destroyed = self.write(|txn| {
            let destroyed = txn.delete(secret.env, secret.name)?.ok_or_else(|| secret.not_found())?;
            let event = Event::new("secret.delete", Outcome::Ok, actor)
                .secret(secret.env, secret.name)
                .with("versions_destroyed", destroyed);
            Ok((destroyed, vec![event]))
        })?;
        self.notify();
        Ok(destroyed)
    }

    pub fn clients(&self) -> Result<Vec<ClientRow>, VaultError> {
        self.keys()?;
        Ok(self.store.clients()?)
    }

    /// Adds a client with its first grants.
    pub fn client_add(&self, actor: &Actor, client: ClientRow) -> Result<ClientRow, VaultError> {
        names::validate(&client.name).map_err(|why| VaultError::InvalidName { what: "client name", why })?;
        check_patterns(&client.grants)?;
        if let Some(sha) = &client.exe_sha256
            && !(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            return Err(VaultError::InvalidExeSha256);
        }
        self.keys()?;
        let event = Event::new("client.add", Outcome::Ok, actor)
            .with("client", client.name.clone())
            .with("uid", client.uid)
            .with("gid", client.gid)
            .with("exe", client.exe.clone())
            .with("exe_sha256", client.exe_sha256.clone())
            .with("grants", client.grants.clone());
        self.client_change(&client.name.clone(), event, |txn| {
            if !txn.client_add(&client)? {
                return Err(VaultError::ClientExists(client.name.clone()));
            }
            Ok(true)
        })
    }

    pub fn client_remove(&self, actor: &Actor, name: &str) -> Result<(), VaultError> {
        self.keys()?;
        self.write(|txn| {
            if !txn.client_remove(name)? {
                return Err(VaultError::ClientNotFound(name.into()));
            }
            Ok(((), vec![Event::new("client.remove", Outcome::Ok, actor).with("client", name)]))
        })?;
        self.notify();
        Ok(())
    }

    pub fn client_set_enabled(&self, actor: &Actor, name: &str, enabled: bool) -> Result<ClientRow, VaultError> {
        self.keys()?;
        let kind = if enabled { "client.enable" } else { "client.disable" };
        let event = Event::new(kind, Outcome::Ok, actor).with("client", name);
        self.client_change(name, event, |txn| Ok(txn.client_set_enabled(name, enabled)?))
    }

    /// Adds (`grant`) or removes grant patterns.
    pub fn client_grants(
        &self,
        actor: &Actor,
        name: &str,
        patterns: &[String],
        grant: bool,
    ) -> Result<ClientRow, VaultError> {
        check_patterns(patterns)?;
        self.keys()?;
        let kind = if grant { "client.grant" } else { "client.ungrant" };
        let event = Event::new(kind, Outcome::Ok, actor).with("client", name).with("patterns", patterns.to_vec());
        self.client_change(name, event, |txn| {
            Ok(if grant { txn.client_grant(name, patterns)? } else { txn.client_ungrant(name, patterns)? })
        })
    }

    /// Applies `change` (false: no such client), records `event`, returns the client.
    fn client_change(
        &self,
        name: &str,
        event: Event,
        change: impl FnOnce(&Txn<'_>) -> Result<bool, VaultError>,
    ) -> Result<ClientRow, VaultError> {
        let row = self.write(|txn| {
            if !change(txn)? {
                return Err(VaultError::ClientNotFound(name.into()));
            }
            let row = txn.client(name)?.ok_or_else(|| VaultError::ClientNotFound(name.into()))?;
            Ok((row, vec![event]))
        })?;
        self.notify();
        Ok(row)
    }

    /// Creates a token for `client`; returns it (shown once, stored only hashed)
    /// with its metadata. Bound to the client's uid unless `any_uid`.
    pub fn token_create(
        &self,
        actor: &Actor,
        client: &str,
        ttl: Option<Duration>,
        idle: Option<Duration>,
        uses: Option<u32>,
        any_uid: bool,
    ) -> Result<(SecretBytes, TokenRow), VaultError> {
        let keys = self.keys()?;
        let secret = crypto::random_secret(32)?;
        let token = SecretBytes::new(format!("vt_{}", hex(secret.expose())).into_bytes());
        let accessor = hex(crypto::random_secret(8)?.expose());
        let hash = keys.token_hash(token.expose());
        let now = crate::store::now_unix();
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let row = self.write(|txn| {
            let owner = txn.client(client)?.ok_or_else(|| VaultError::ClientNotFound(client.into()))?;
            if txn.tokens_active(client, now)? >= MAX_TOKENS_PER_CLIENT {
                return Err(VaultError::TooManyTokens(client.into()));
            }
            let new = NewToken {
                accessor: &accessor,
                hash: &hash,
                client,
                bind_uid: (!any_uid).then_some(owner.uid),
                created_unix: now,
                expires_unix: ttl.map(|t| now.saturating_add(secs(t))),
                idle_secs: idle.map(secs),
                uses: uses.map(i64::from),
            };
            txn.token_insert(&new)?;
            let row = TokenRow {
                accessor: accessor.clone(),
                client: client.into(),
                bind_uid: new.bind_uid,
                created_unix: now,
                expires_unix: new.expires_unix,
                idle_secs: new.idle_secs,
                uses_left: new.uses,
                last_used_unix: None,
                revoked_unix: None,
            };
            let event = Event::new("token.create", Outcome::Ok, actor)
                .with("accessor", accessor.clone())
                .with("client", client)
                .with("bind_uid", new.bind_uid)
                .with("expires_unix", new.expires_unix)
                .with("idle_secs", new.idle_secs)
                .with("uses", new.uses);
            Ok((row, vec![event]))
        })?;
        Ok((token, row))
    }

    pub fn tokens(&self) -> Result<Vec<TokenRow>, VaultError> {
        self.keys()?;
        Ok(self.store.tokens()?)
    }

    /// Revokes one token by accessor, or (`None`) every live one; returns how many.
    pub fn token_revoke(&self, actor: &Actor, accessor: Option<&str>) -> Result<u64, VaultError> {
        self.keys()?;
        let now = crate::store::now_unix();
        let revoked = self.write(|txn| {
            if let Some(a) = accessor
                && !txn.token_exists(a)?
            {
                return Err(VaultError::TokenNotFound(a.into()));
            }
            let revoked = txn.token_revoke(accessor, now)?;
            let event = Event::new("token.revoke", Outcome::Ok, actor)
                .with("accessor", accessor.unwrap_or("*"))
                .with("revoked", revoked);
            Ok((revoked, vec![event]))
        })?;
        self.notify();
        Ok(revoked)
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
            Ok(rekeyed) => self.write(|txn| {
                txn.set_header(&rekeyed)?;
                let event = Event::new("vault.rekey", Outcome::Ok, actor)
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
                self.append(vec![Event::new("vault.rekey", outcome, actor).with("reason", error.to_string())], true)?;
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
        let rotated = self.write(|txn| {
            if rewrap && let Some(target) = txn.rewrap_target()? {
                let to_rewrap = txn.count_older_versions(target)?;
                let event = Event::new("key.rewrap.resume", Outcome::Ok, actor)
                    .with("term", target)
                    .with("to_rewrap", to_rewrap);
                return Ok((KeyRotated { term: target, new_term: false, to_rewrap, retired: vec![] }, vec![event]));
            }
            let (newest, _) = txn.newest_term()?;
            let term = newest.checked_add(1).ok_or(VaultError::TermsExhausted)?;
            txn.insert_term(&keys.add_term(term)?, rewrap)?;
            let retired = txn.retire_unused_terms(term)?;
            let to_rewrap = txn.count_older_versions(term)?;
            let mut events = vec![
                Event::new("key.rotate", Outcome::Ok, actor)
                    .with("term", term)
                    .with("previous_term", newest)
                    .with("reason", "operator")
                    .with("rewrap", rewrap),
            ];
            if !retired.is_empty() {
                events.push(Event::new("key.retire", Outcome::Ok, actor).with("terms", retired.clone()));
            }
            Ok((KeyRotated { term, new_term: true, to_rewrap, retired }, events))
        })?;
        for &term in &rotated.retired {
            keys.remove_term(term);
        }
        Ok(rotated)
    }

    /// One batch of a rewrap: re-seals, under the newest term, up to `limit`
    /// versions with rowid above `after` that are sealed under a term older than
    /// `target` (`None`: the newest), in one durable transaction with its record.
    /// Progress lives in the data (each ciphertext names its term), so a crash
    /// loses at most the batch in flight and a new walk continues. A term started
    /// meanwhile (the encryption limit) is at least `target`, so the walk still
    /// ends. Once nothing older than `target` is left, the terms no version uses
    /// are retired. Call from a blocking context.
    pub fn rewrap(&self, actor: &Actor, target: Option<u32>, after: u64, limit: u32) -> Result<Rewrapped, VaultError> {
        let keys = self.keys()?;
        // A batch seals `limit` values under one term, so it may not exceed the per-term limit.
        let limit = limit.clamp(1, MAX_REWRAP_BATCH).min(u32::try_from(self.max_encryptions).unwrap_or(u32::MAX));
        let result = self.write(|txn| {
            let (newest, _) = txn.newest_term()?;
            let target = target.unwrap_or(newest).min(newest);
            let batch = txn.older_versions(after, target, limit)?;
            let mut events = Vec::new();
            let mut term = newest;
            let mut next_after = after;
            if !batch.is_empty() {
                term = self.sealing_term(txn, &keys, batch.len() as u64, &mut events)?;
                for old in &batch {
                    let id = VersionId { env: &old.env, name: &old.name, version: old.version };
                    let value = keys.open_version(&id, &old.ciphertext).map_err(|_| VaultError::RewrapFailed {
                        env: old.env.clone(),
                        name: old.name.clone(),
                        version: old.version,
                    })?;
                    txn.set_ciphertext(old.rowid, &keys.seal_version(&id, term, value.expose())?)?;
                    next_after = old.rowid;
                }
                events.push(
                    Event::new("key.rewrap", Outcome::Ok, actor).with("term", term).with("versions", batch.len()),
                );
            }
            let done = (batch.len() as u64) < u64::from(limit);
            let (mut remaining, mut retired) = (0, Vec::new());
            if done {
                remaining = txn.count_older_versions(target)?;
                if remaining == 0 {
                    retired = txn.retire_unused_terms(term)?;
                    if let Some(pending) = txn.rewrap_target()?
                        && txn.count_older_versions(pending)? == 0
                    {
                        txn.rewrap_finished()?;
                        events.push(Event::new("key.rewrap.done", Outcome::Ok, actor).with("term", pending));
                    }
                    if !retired.is_empty() {
                        events.push(Event::new("key.retire", Outcome::Ok, actor).with("terms", retired.clone()));
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
                let event = Event::new("key.rewrap", Outcome::Failed, actor)
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
        self.append(vec![Event::new("vault.backup", Outcome::Ok, actor)], true)?;
        let snapshot = self.store.snapshot()?;
        Ok(crate::backup::Writer::new(snapshot, keys.backup_mac())?)
    }

    /// Audit entries matching `filter` (metadata only; needs the vault unlocked).
    pub fn audit_query(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, VaultError> {
        self.keys()?;
        Ok(self.store.audit_query(filter)?)
    }

    /// Checks the whole chain (on its own connection; reads go on meanwhile).
    /// Blocking: call from a blocking context.
    pub fn audit_verify(&self) -> Result<Verdict, VaultError> {
        let keys = self.keys()?;
        let mut verifier: Option<chain::Verifier<'_>> = None;
        let snapshot = self.store.audit_walk(|snapshot, row| {
            verifier.get_or_insert_with(|| chain::Verifier::new(&keys, snapshot.anchor.as_ref())).check(&row)
        })?;
        let verifier = verifier.unwrap_or_else(|| chain::Verifier::new(&keys, snapshot.anchor.as_ref()));
        Ok(verifier.finish(snapshot.head.as_ref(), snapshot.anchor.as_ref()))
    }

    /// Up to `limit` entries after `after_seq`, oldest first (export pages).
    pub fn audit_page(&self, after_seq: u64, limit: u32) -> Result<Vec<AuditRow>, VaultError> {
        self.keys()?;
        Ok(self.store.audit_page(after_seq, limit)?)
    }

    /// Deletes entries older than `retention`, recording the pruning in the chain
    /// so that `audit verify` can tell it from tampering. Returns how many went.
    pub fn audit_prune(&self, retention: std::time::Duration) -> Result<u64, VaultError> {
        self.keys()?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let cutoff = now.saturating_sub(retention).as_millis() as i64;
        self.write(|txn| match txn.audit_prune(cutoff)? {
            None => Ok((0, vec![])),
            Some((upto, count)) => {
                let event = Event::new("audit.pruned", Outcome::Ok, &Actor::vaultd())
                    .with("upto", upto)
                    .with("count", count)
                    .with("retention", humantime::format_duration(retention).to_string());
                Ok((count, vec![event]))
            }
        })
    }

    /// The keyed digest of a candidate value, to find it in the audit log.
    pub fn value_digest(&self, value: &SecretBytes) -> Result<String, VaultError> {
        Ok(self.keys()?.value_digest(value.expose()))
    }
}

/// A value's size rules, for every way one enters the vault.
fn check_value(value: &SecretBytes) -> Result<(), VaultError> {
    if value.is_empty() {
        return Err(VaultError::EmptyValue);
    }
    if value.len() > vault_proto::MAX_VALUE_LEN {
        return Err(VaultError::ValueTooLarge(value.len()));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_patterns(patterns: &[String]) -> Result<(), VaultError> {
    patterns.iter().try_for_each(|p| names::validate_pattern(p).map_err(VaultError::InvalidPattern))
}

/// A checkpoint event naming the current tip of the log.
fn checkpoint(tip: &Tip) -> Event {
    let mac: String = tip.mac.iter().map(|b| format!("{b:02x}")).collect();
    Event::new("audit.checkpoint", Outcome::Ok, &Actor::vaultd()).with("seq", tip.seq).with("mac", mac)
}

/// The audit chain's state while unlocked.
struct Chain {
    keys: Arc<Unlocked>,
    tip: Tip,
}

/// The record of a read: allowed (with the version), denied (unknown, sealed) or
/// failed (did not decrypt).
fn read_event(
    kind: &'static str,
    actor: &Actor,
    secret: SecretRef<'_>,
    result: &Result<(u64, SecretBytes), VaultError>,
) -> Event {
    let event = |outcome| Event::new(kind, outcome, actor).secret(secret.env, secret.name);
    match result {
        Ok((version, _)) => event(Outcome::Ok).with("version", *version),
        Err(VaultError::NotFound { .. }) => event(Outcome::Denied).with("reason", "not found"),
        Err(VaultError::Sealed) => event(Outcome::Denied).with("reason", "sealed"),
        Err(VaultError::Uninitialized) => event(Outcome::Denied).with("reason", "not initialized"),
        Err(e) => event(Outcome::Failed).with("reason", e.to_string()),
    }
}
