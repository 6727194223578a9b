//! The vault: the store plus the lock state, and the operations the API serves.
//!
//! Sealed means no key is in memory; every operation but `status`, `init` and
//! `unlock` then fails with [`VaultError::Sealed`]. Nothing here knows about gRPC.
//!
//! This file holds the lock state and the one way state changes ([`Vault::commit`]:
//! the change and its audit records in one transaction); each concern's operations
//! are in their own file: agent reads in `read`, live updates in `watch`, clients
//! and tokens in `access`, rotation's state machine in `rotate`, revoke-all in
//! `incident`, the key lifecycle and backups in `keys`.

mod access;
mod broker;
mod incident;
mod keys;
mod read;
mod rotate;
mod watch;

use crate::policy::Reader;
pub use access::{MAX_TOKENS_PER_CLIENT, TokenSpec};
pub use broker::ProviderCheck;
pub use keys::{KeyRotated, MAX_REWRAP_BATCH, Rewrapped};
pub use read::Usage;
pub use rotate::{Rotated, RotationRow, Trigger};
pub use watch::{Update, Watcher};

use crate::audit::chain::{self, Resumed, Tip};
use crate::audit::journal::{self, Appended, Journal, JournalFailed};
use crate::audit::refusals::Refusals;
use crate::audit::{Actor, Event, Kind, Outcome, Record, Verdict, batch, forward};
use crate::config::Config;
use crate::crypto::{self, CryptoError, KdfParams, SecretBytes, Unlocked, VersionId};
use crate::limits::Limits;
use crate::rotation::RotationConfig;
use crate::state::{
    self, Draft, Image, PolicyChange, Promoted, Secret, SecretLabels, StateError, VersionRow, Violation, anchor,
};
use crate::store::{AuditFilter, AuditRow, Store, StoreError, Txn};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
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
    /// A token vaultd knows but does not honour (revoked, expired, idle, used
    /// up, shown by another uid or executable, its client disabled).
    #[error("invalid, expired or revoked token")]
    TokenRefused,
    /// A token vaultd does not know: a guess, or garbage. Only these pause their
    /// presenter (`limits::Pauses`); the caller cannot tell the two apart.
    #[error("invalid, expired or revoked token")]
    TokenUnknown,
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
    /// A request's argument is malformed (the text says which and why).
    #[error("{0}")]
    InvalidArgument(&'static str),
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
    Audit(#[from] JournalFailed),
    /// A row vaultd would act on was changed behind its back.
    #[error("{0}")]
    Integrity(String),
}

impl From<StateError> for VaultError {
    fn from(e: StateError) -> Self {
        VaultError::Integrity(e.to_string())
    }
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
    /// Integrity problems found and not yet acknowledged (`integrity ack`).
    pub integrity: Vec<String>,
}

pub struct Vault {
    store: Store,
    limits: Limits,
    /// `None` while sealed. Readers clone the `Arc` and drop the lock at once, so a
    /// seal never waits on a read; the keys are wiped when the last clone drops.
    keys: RwLock<Option<Arc<Unlocked>>>,
    /// The verified state while unlocked (empty while sealed): what every
    /// decision and read is made from. Changed only by [`Vault::commit`], after
    /// the transaction that wrote the change committed.
    image: RwLock<Image>,
    /// Integrity problems found and not acknowledged, for `status`.
    problems: Mutex<Vec<String>>,
    /// The audit chain's keys and tip while unlocked. Every write holds this lock
    /// around its transaction (lock order: this, then the store's writer), so the
    /// tip always matches what is committed and an unlock never races an append.
    chain: Mutex<Option<Chain>>,
    /// Serializes init and unlock: each runs Argon2 with 64 MiB, and a burst of
    /// them must neither exhaust memory nor make guessing cheaper.
    kdf_gate: Mutex<()>,
    /// Where the records of reads and refusals go first (see `audit::journal`).
    journal: Journal,
    /// A caller's refusals past its budget, counted (see `audit::refusals`).
    refusals: Refusals,
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
    /// When the vault was last unlocked: a rotation in progress that started
    /// before was interrupted by a crash (see `rotate::finish_interrupted`).
    unlocked_at: std::sync::atomic::AtomicI64,
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
    /// Where the monotonic anchor lives (`[integrity] anchor`), if anywhere.
    anchor: Option<std::path::PathBuf>,
    /// The credential broker's provider check, for rotations tested by one.
    provider_check: std::sync::OnceLock<Box<dyn broker::ProviderCheck>>,
}

impl Vault {
    /// Opens the vault in `data_dir`, sealed.
    pub fn open(data_dir: &Path, config: &Config) -> Result<Arc<Vault>, VaultError> {
        let store = Store::open(data_dir)?;
        let latest_incident = store.latest_incident()?;
        let (published, _) = broadcast::channel(forward::BUFFER);
        Ok(Arc::new(Vault {
            store,
            limits: Limits::new(config.limits),
            keys: RwLock::new(None),
            image: RwLock::default(),
            problems: Mutex::default(),
            chain: Mutex::new(None),
            kdf_gate: Mutex::new(()),
            journal: Journal::new(data_dir),
            refusals: Refusals::new(rustix::process::geteuid().as_raw()),
            audit_reads: config.audit.reads,
            rotation: config.rotation.clone(),
            rotating: Mutex::default(),
            unlocked_at: Default::default(),
            changes: tokio::sync::watch::Sender::new(0),
            incident_seen: latest_incident.into(),
            incident_epoch: Default::default(),
            watching: Arc::default(),
            cutoff: tokio::sync::watch::Sender::new(0),
            owner: rustix::process::geteuid().as_raw(),
            published,
            forward_stats: Arc::default(),
            max_encryptions: config.keys.max_encryptions_per_term.max(1),
            anchor: config.integrity.anchor.clone(),
            provider_check: Default::default(),
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

    /// The verified state, for a decision or a read (empty while sealed).
    fn image(&self) -> RwLockReadGuard<'_, Image> {
        self.image.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` and appends the events it returns, in one transaction (durable
    /// unless `durable` is false: records of requests that change nothing), then
    /// publishes the committed entries. The one way state changes: `f` changes
    /// the state through `c.state`, which is written back re-signed in the same
    /// transaction, and the image takes it once the transaction committed. The
    /// journal's waiting records go in before the entries: they happened before.
    fn commit<T>(
        &self,
        durable: bool,
        f: impl FnOnce(&mut Change<'_, '_>) -> Result<(T, Vec<Event>), VaultError>,
    ) -> Result<T, VaultError> {
        let mut chain = self.chain();
        let mut tip = chain.as_ref().map(|c| c.tip.clone());
        let mut journaled = journal::Records::default();
        let image = self.image();
        let committed = self.store.write_with(durable, |txn| {
            let mut change = Change { txn, state: image.draft() };
            let (out, events) = f(&mut change)?;
            let changes = match chain.as_ref() {
                Some(c) => Some(change.state.persist(txn, &c.keys)?),
                None if change.state.is_empty() => None,
                // Sealed, nothing can be signed: callers check first.
                None => return Err(VaultError::Sealed),
            };
            let generation_moved = match (tip.as_mut(), &changes) {
                (Some(tip), Some(changes)) if changes.generation() != tip.generation => {
                    tip.generation = changes.generation();
                    true
                }
                _ => false,
            };
            // A durable write that records nothing (a token's use) leaves them:
            // their pages would only lengthen its fsync. Everything else imports
            // them before its own entries, which come after them.
            let imported = match chain.as_ref().zip(tip.as_mut()) {
                Some((c, tip)) if !(durable && events.is_empty()) => {
                    journaled = self.journal.take();
                    Some(journal::import(txn, &c.keys, tip, &journaled)?)
                }
                _ => None,
            };
            let link = chain.as_ref().zip(tip.as_mut()).map(|(c, tip)| (&*c.keys, tip));
            let rows = chain::append(txn, link, &events)?;
            if let (true, Some(c), Some(tip)) = (generation_moved, chain.as_ref(), tip.as_ref()) {
                // The head records the state generation, whatever else was written.
                chain::set_head(txn, &c.keys, tip)?;
            }
            // Changes made through the admin API move the anchor; a token's use does not.
            let anchored = generation_moved && !events.is_empty();
            Ok::<_, VaultError>((out, imported, rows, changes, anchored))
        });
        drop(image);
        let (out, imported, own_rows, changes, anchored) = match committed {
            Ok(committed) => committed,
            Err(e) => {
                self.journal.untake(journaled);
                return Err(e);
            }
        };
        if let Some(changes) = changes {
            self.image.write().unwrap_or_else(|p| p.into_inner()).apply(changes);
        }
        if let (true, Some(c), Some(tip)) = (anchored, chain.as_ref(), tip.as_ref()) {
            self.write_anchor(&c.keys, anchor::Mark { generation: tip.generation, seq: tip.seq });
        }
        // Checked after the commit: a follower subscribing later finds them in the table.
        let mut rows = match imported {
            Some(imported) if self.published.receiver_count() > 0 => imported.rows(&journaled),
            _ => Vec::new(),
        };
        rows.extend(own_rows);
        self.journal.imported(&journaled);
        if let (Some(c), Some(tip)) = (chain.as_mut(), tip) {
            c.tip = tip;
        }
        drop(chain);
        self.publish(rows);
        Ok(out)
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&mut Change<'_, '_>) -> Result<(T, Vec<Event>), VaultError>,
    ) -> Result<T, VaultError> {
        self.commit(true, f)
    }

    /// Appends events that record no change of their own, in a transaction.
    fn append(&self, events: Vec<Event>, durable: bool) -> Result<(), VaultError> {
        self.commit(durable, |_| Ok(((), events)))
    }

    /// Makes `unlocked` the vault's keys: in one transaction, runs `prepare` (init
    /// stores the new header there), resumes the audit chain, imports what an
    /// earlier run left in the journal, checks the stored state and applies the
    /// revoke-alls made offline, and records `event`; then journals anew.
    fn open_with(
        &self,
        unlocked: Unlocked,
        prepare: impl FnOnce(&mut Change<'_, '_>) -> Result<(), VaultError>,
        event: Event,
    ) -> Result<(), VaultError> {
        let keys = Arc::new(unlocked);
        let mut chain = self.chain();
        // Unlocked already: what was journaled is in the files, read back below.
        drop(self.journal.close());
        let leftover = self.journal.leftover()?;
        let (tip, rows, recovered, image, problems) = self.store.write(|txn| {
            let Resumed { mut tip, events: found, head_generation } = chain::resume(txn, &keys)?;
            let (mut image, mut violations) = self.check_state(txn, &keys, head_generation)?;
            let here = anchor::Mark { generation: image.generation(), seq: tip.seq };
            if let Some(problem) = self.anchor_problem(&keys, here) {
                tracing::error!(%problem, "the data directory is not the newest vaultd wrote; nothing in it is acted on");
                violations.push(Violation { table: state::mac::Table::Secret, row: "anchor".into(), problem });
                image.quarantine_everything();
            }
            let mut recovered = leftover.import(txn, &keys, &mut tip)?;
            let mut events: Vec<Event> = recovery_events(&recovered);
            events.extend(found);
            events.extend(violations.iter().take(MAX_VIOLATION_EVENTS).map(violation_event));
            if violations.len() > MAX_VIOLATION_EVENTS {
                events.push(
                    Event::new(Kind::IntegrityViolation, Outcome::Failed, &Actor::vaultd())
                        .with("table", "*")
                        .with("row", "*")
                        .with("problem", format!("{} more rows", violations.len() - MAX_VIOLATION_EVENTS)),
                );
            }
            // Init's first key term, and the revoke-alls made offline, are
            // changes like any other: signed, then recorded.
            let mut change = Change { txn, state: image.draft() };
            prepare(&mut change)?;
            events.extend(incident::apply_pending(&mut change)?);
            events.extend(rotate::roll_back_interrupted(&mut change)?);
            let changes = change.state.persist(txn, &keys)?;
            image.apply(changes);
            tip.generation = image.generation();
            events.push(event);
            let mut rows = std::mem::take(&mut recovered.rows);
            rows.extend(chain::append(txn, Some((&keys, &mut tip)), &events)?);
            chain::set_head(txn, &keys, &tip)?;
            let problems = open_problems(txn)?;
            Ok::<_, VaultError>((tip, rows, recovered, image, problems))
        })?;
        leftover.dispose(recovered.problem.is_some());
        if let Err(e) = self.journal.open(keys.clone(), recovered.position) {
            // Reads are still recorded, one transaction each, until the next unlock.
            tracing::error!(error = %e, "cannot start the audit journal");
        }
        self.incident_seen.fetch_max(image.latest_incident(), std::sync::atomic::Ordering::SeqCst);
        *self.problems.lock().unwrap_or_else(|p| p.into_inner()) = problems;
        self.write_anchor(&keys, anchor::Mark { generation: image.generation(), seq: tip.seq });
        *self.image.write().unwrap_or_else(|p| p.into_inner()) = image;
        *chain = Some(Chain { keys: keys.clone(), tip });
        self.unlocked_at.store(crate::clock::now_unix(), std::sync::atomic::Ordering::SeqCst);
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(keys);
        drop(chain);
        self.notify();
        self.publish(rows);
        // The rows read to check the state are gone: so is their memory.
        crate::sys::release_free_memory();
        Ok(())
    }

    /// `integrity ack`: the owner has reviewed what `status` lists as changed
    /// behind vaultd's back. In one transaction the state is signed anew as it
    /// stands, with what quarantined rows could grant taken away (their clients
    /// disabled, their tokens revoked, their secrets' previous versions retired),
    /// and an `integrity.acknowledged` entry records it: from there on `status`
    /// is clear and `audit verify` reports the acknowledged problems as such.
    /// Returns what was acknowledged.
    pub fn acknowledge_integrity(&self, actor: &Actor) -> Result<Vec<String>, VaultError> {
        self.keys()?;
        let mut chain = self.chain();
        let Some(c) = chain.as_mut() else { return Err(VaultError::Sealed) };
        let acknowledged = self.problems.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut tip = c.tip.clone();
        let journaled = self.journal.take();
        let written = self.store.write(|txn| {
            let imported = journal::import(txn, &c.keys, &mut tip, &journaled)?;
            let quarantined: std::collections::BTreeSet<_> = {
                let image = self.image();
                image.quarantine_list().cloned().collect()
            };
            let generation = self.image().generation();
            let image = state::load::resign(txn, &c.keys, txn.load_state()?, generation, &quarantined, false)?;
            tip.generation = image.generation();
            let event = Event::new(Kind::IntegrityAcknowledged, Outcome::Ok, actor)
                .with("problems", acknowledged.clone())
                .with("quarantined", quarantined.len());
            let rows = chain::append(txn, Some((&c.keys, &mut tip)), &[event])?;
            chain::set_head(txn, &c.keys, &tip)?;
            Ok::<_, VaultError>((image, imported, rows))
        });
        let (image, imported, own_rows) = match written {
            Ok(w) => w,
            Err(e) => {
                self.journal.untake(journaled);
                return Err(e);
            }
        };
        let mut rows = if self.published.receiver_count() > 0 { imported.rows(&journaled) } else { Vec::new() };
        rows.extend(own_rows);
        self.journal.imported(&journaled);
        // The owner has accepted this state as the newest: so does the anchor.
        self.problems.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.write_anchor(&c.keys, anchor::Mark { generation: image.generation(), seq: tip.seq });
        c.tip = tip;
        *self.image.write().unwrap_or_else(|p| p.into_inner()) = image;
        drop(chain);
        self.notify();
        self.publish(rows);
        Ok(acknowledged)
    }

    /// Why the data directory, at `here`, is not the newest this vault wrote by
    /// the anchor, if it is not (see `state::anchor`).
    fn anchor_problem(&self, keys: &Unlocked, here: anchor::Mark) -> Option<String> {
        let path = self.anchor.as_deref()?;
        match anchor::read(path, keys) {
            Err(problem) => Some(problem),
            Ok(Some(mark)) if anchor::rolled_back(mark, here) => Some(format!(
                "the data directory (state generation {}, audit entry {}) is older than the anchor in {} \
                 (generation {}, entry {}): an older copy was put back",
                here.generation,
                here.seq,
                path.display(),
                mark.generation,
                mark.seq
            )),
            Ok(_) => None,
        }
    }

    /// Moves the anchor to `mark`; a failure is logged (the change it records
    /// has committed), and the next write tries again. Never while integrity
    /// problems are open: the anchor must not follow a state nobody vouched for.
    fn write_anchor(&self, keys: &Unlocked, mark: anchor::Mark) {
        if !self.problems.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            return;
        }
        if let Some(path) = &self.anchor
            && let Err(e) = anchor::write(path, keys, mark)
        {
            tracing::error!(anchor = %path.display(), error = %e, "cannot write the anchor");
        }
    }

    /// The stored state, checked: the image of what verifies, and what does not.
    /// A vault from before authenticated state (no root, nothing signed, a head
    /// written before generations) is signed as it stands, once.
    fn check_state(
        &self,
        txn: &Txn<'_>,
        keys: &Unlocked,
        head_generation: Option<u64>,
    ) -> Result<(Image, Vec<Violation>), VaultError> {
        let stored = txn.load_state()?;
        if stored.root.is_none() && head_generation == Some(0) && stored.is_unsigned() {
            tracing::warn!("signing the state of a vault made before it was authenticated");
            let image = state::load::resign(txn, keys, stored, 0, &Default::default(), true)?;
            return Ok((image, Vec::new()));
        }
        let loaded = state::load::check(keys, stored, head_generation);
        for v in &loaded.violations {
            tracing::error!(violation = %v, "a row was changed behind vaultd's back; it is not acted on");
        }
        Ok((loaded.image, loaded.violations))
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

    /// Records events of requests that change nothing (reads, refusals) and
    /// returns once they are recorded: journaled, or while sealed (no key to
    /// chain with) committed in a transaction.
    pub(super) fn record_all<R: Record>(&self, records: Vec<R>) -> Result<(), VaultError> {
        let records = self.refusals.sift(records);
        match self.journal.append(&records)? {
            Appended::Yes => Ok(()),
            Appended::Closed => self.append(records.into_iter().map(Record::into_event).collect(), false),
        }
    }

    /// [`Vault::record_all`] of one event.
    pub fn record(&self, event: Event) -> Result<(), VaultError> {
        self.record_all(vec![event])
    }

    /// Records a refusal that guards nothing (a connection closed at accept): a
    /// failure is logged, since there is no request left to fail.
    pub fn record_detached(&self, event: Event) {
        if let Err(e) = self.record(event) {
            tracing::error!(error = %e, "recording a refusal failed");
        }
    }

    /// Records the refusals counted since the last call, a record per caller
    /// (the daemon's, every `audit::refusals::INTERVAL`, and at shutdown).
    pub fn record_refusals(&self) -> Result<(), VaultError> {
        self.record_all(self.refusals.summaries())
    }

    /// Records an event now, durably (startup and shutdown records).
    pub fn record_durable(&self, event: Event) -> Result<(), VaultError> {
        self.append(vec![event], true)
    }

    /// Moves what waits in the journal into the audit table (the daemon's
    /// importer, and before anything reads the table). Until an import succeeds
    /// after one failed, requests that would be journaled are refused.
    pub fn import_journal(&self) -> Result<(), VaultError> {
        if !self.journal.is_waiting() {
            // An import may be under way (its records taken, not yet committed):
            // what reads the table next must see them, so wait for it. Every
            // import holds the chain's lock until its transaction committed.
            drop(self.chain());
            return Ok(());
        }
        self.append(Vec::new(), false).inspect_err(|e| self.journal.stalled(e.to_string()))
    }

    /// Resolves when enough is waiting in the journal to import it early.
    pub async fn journal_wanted(&self) {
        self.journal.wanted().await
    }

    pub fn is_sealed(&self) -> bool {
        self.current_keys().is_none()
    }

    pub fn status(&self) -> Result<Status, VaultError> {
        use std::sync::atomic::Ordering::Relaxed;
        let header = self.store.header()?;
        let sealed = self.current_keys().is_none();
        let image = self.image();
        let now = crate::clock::now_unix();
        let names = |pick: &dyn Fn(&Secret) -> bool| -> Vec<String> {
            let mut names: Vec<String> =
                image.secrets().filter(|s| pick(s)).map(|s| format!("{}/{}", s.env, s.name)).collect();
            names.sort();
            names
        };
        Ok(Status {
            initialized: header.is_some(),
            sealed,
            secrets: image.secrets().count() as u64,
            key_term: image.newest_term(),
            kdf: header.map(|(h, _)| h.kdf),
            schema_version: self.store.schema_version(),
            audit_forward_errors: self.forward_stats.errors.load(Relaxed),
            audit_forward_dropped: self.forward_stats.dropped.load(Relaxed),
            rotations_due: names(&|s| s.next_rotation_unix.is_some_and(|due| due <= now)),
            compromised: names(&Secret::is_compromised),
            rotations_failed: names(&|s| s.last_rotation().is_some_and(|(_, r)| r.step == state::Step::Failed)),
            integrity: if sealed {
                Vec::new()
            } else {
                self.problems.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
        let event = Event::new(Kind::VaultInit, Outcome::Ok, actor)
            .with("kdf", format!("argon2id m={} t={} p={}", kdf.memory_kib, kdf.iterations, kdf.parallelism));
        let now = crate::clock::now_unix();
        let first = state::KeyTerm {
            term: term.term,
            wrapped_key: term.wrapped,
            created_unix: now,
            encryptions: 0,
            rewrap: false,
        };
        self.open_with(
            unlocked,
            |c| {
                c.txn.initialize(&header)?;
                Ok(c.state.insert_term(first)?)
            },
            event,
        )
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
            Ok(unlocked) => self.open_with(unlocked, |_| Ok(()), Event::new(Kind::VaultUnlock, Outcome::Ok, actor)),
            Err(e) => {
                let (outcome, error) = match e {
                    CryptoError::WrongPassphrase => (Outcome::Denied, VaultError::WrongPassphrase),
                    other => (Outcome::Failed, VaultError::Crypto(other)),
                };
                let event = Event::new(Kind::VaultUnlock, outcome, actor).with("reason", error.to_string());
                self.append(vec![event], true)?;
                Err(error)
            }
        }
    }

    /// Drops the keys (wiped once in-flight reads finish). Sealing always takes
    /// effect; its record (with a checkpoint of the log head) is written with the
    /// outgoing keys, and an error reports a record that could not be written.
    pub fn seal(&self, actor: &Actor) -> Result<(), VaultError> {
        // The token uses noted in memory go with the image: written back first.
        if let Err(e) = self.flush_token_uses() {
            tracing::error!(error = %e, "writing the token uses back before sealing failed");
        }
        let mut chain = self.chain();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = None;
        *self.image.write().unwrap_or_else(|p| p.into_inner()) = Image::default();
        let journaled = self.journal.close();
        let Some(Chain { keys, mut tip }) = chain.take() else { return Ok(()) };
        let rows = self.store.write(|txn| {
            let mut rows = journal::import(txn, &keys, &mut tip, &journaled.waiting)?.rows(&journaled.waiting);
            let events = [checkpoint(&tip), Event::new(Kind::VaultSeal, Outcome::Ok, actor)];
            rows.extend(chain::append(txn, Some((&keys, &mut tip)), &events)?);
            Ok::<_, VaultError>((rows, tip))
        });
        drop(chain);
        if let Ok((_, tip)) = &rows {
            // Otherwise the files stay, for the next unlock to import.
            journaled.remove_files();
            self.write_anchor(&keys, anchor::Mark { generation: tip.generation, seq: tip.seq });
        }
        let rows = rows.map(|(rows, _)| rows);
        // Watchers end now (their next read finds the vault sealed), whatever the record did.
        self.notify();
        self.publish(rows?);
        Ok(())
    }

    /// A receiver that wakes on every change watchers care about, and on seal and unlock.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
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
        self.check_policy(secret, policy)?;
        let keys = self.keys()?;
        let digest = keys.value_digest(value.expose());
        let keep = self.rotation.keep_versions;
        let now = crate::clock::now_unix();
        let put = self.write(|c| {
            let mut events = Vec::with_capacity(3);
            let term = self.sealing_term(&mut c.state, &keys, 1, &mut events)?;
            let (version, promoted) = match c.state.secret_mut(secret.env, secret.name)? {
                Some(s) => {
                    let version = s.next_version();
                    s.relabel(labels);
                    s.add_pending(version, keys.seal_version(&secret.version(version), term, value.expose())?, now);
                    (version, Some(s.promote(version, keep, now)))
                }
                None => {
                    let sealed = keys.seal_version(&secret.version(1), term, value.expose())?;
                    c.state.insert_secret(Secret::new(secret.env, secret.name, labels, sealed, now))?;
                    (1, None)
                }
            };
            let mut event = Event::new(Kind::SecretWrite, Outcome::Ok, actor)
                .secret(secret.env, secret.name)
                .with("version", version)
                .with("value_digest", digest);
            if let Some(p) = promoted {
                event = event.with("previous_version", p.previous).with("grace_until_unix", p.grace_until);
            }
            events.push(event);
            if !policy.is_empty() {
                c.secret(secret)?.set_policy(policy, now);
                events.push(rotate::policy_event(actor, secret, policy));
            }
            Ok(((version, promoted), events))
        })?;
        self.notify();
        Ok(put)
    }

    /// A secret as served (its metadata, never its value); an unknown one and a
    /// quarantined one are errors.
    pub(super) fn secret(&self, secret: SecretRef<'_>) -> Result<Arc<Secret>, VaultError> {
        self.keys()?;
        self.image().secret(secret.env, secret.name)?.cloned().ok_or_else(|| secret.not_found())
    }

    /// A secret's metadata (never its value).
    pub fn describe(&self, secret: SecretRef<'_>) -> Result<Arc<Secret>, VaultError> {
        self.secret(secret)
    }

    pub fn list(&self, env: &str) -> Result<Vec<Arc<Secret>>, VaultError> {
        let env = names::env_or_default(env);
        names::validate(env).map_err(|why| VaultError::InvalidName { what: "environment", why })?;
        self.keys()?;
        let mut rows: Vec<Arc<Secret>> = self.image().secrets_in(env).cloned().collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rows)
    }

    /// Every version of a secret, newest first.
    pub fn versions(&self, secret: SecretRef<'_>) -> Result<Vec<VersionRow>, VaultError> {
        Ok(self.secret(secret)?.version_rows())
    }

    /// Deletes the secret and every version; returns how many versions went.
    pub fn delete(&self, actor: &Actor, secret: SecretRef<'_>) -> Result<u64, VaultError> {
        self.keys()?;
        let destroyed = self.write(|c| {
            let gone = c.state.remove_secret(secret.env, secret.name)?.ok_or_else(|| secret.not_found())?;
            let destroyed = gone.versions.len() as u64;
            let event = Event::new(Kind::SecretDelete, Outcome::Ok, actor)
                .secret(secret.env, secret.name)
                .with("versions_destroyed", destroyed);
            Ok((destroyed, vec![event]))
        })?;
        self.notify();
        Ok(destroyed)
    }

    /// Audit entries matching `filter` (metadata only; needs the vault unlocked).
    pub fn audit_query(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, VaultError> {
        self.keys()?;
        self.import_journal()?;
        let limit = if filter.limit == 0 { usize::MAX } else { filter.limit as usize };
        let mut found = Vec::new();
        self.store.audit_scan_back(filter, |row| {
            found.extend(batch::matching(row, filter).into_iter().rev().take(limit - found.len()));
            found.len() < limit
        })?;
        found.reverse();
        Ok(found)
    }

    /// Checks the whole chain (on its own connection; reads go on meanwhile).
    /// Blocking: call from a blocking context.
    pub fn audit_verify(&self) -> Result<Verdict, VaultError> {
        let keys = self.keys()?;
        self.import_journal()?;
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
        self.import_journal()?;
        let mut page = Vec::new();
        self.store.audit_scan(after_seq, |row| {
            page.extend(
                batch::entries(row).into_iter().filter(|e| e.seq > after_seq).take(limit as usize - page.len()),
            );
            page.len() < limit as usize
        })?;
        Ok(page)
    }

    /// Deletes entries older than `retention`, recording the pruning in the chain
    /// so that `audit verify` can tell it from tampering. Returns how many went.
    pub fn audit_prune(&self, retention: std::time::Duration) -> Result<u64, VaultError> {
        self.keys()?;
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = crate::clock::now_ms().saturating_sub(retention_ms);
        self.write(|c| match c.txn.audit_prune(cutoff)? {
            None => Ok((0, vec![])),
            Some((upto, count)) => {
                let event = Event::new(Kind::AuditPruned, Outcome::Ok, &Actor::vaultd())
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

    /// The keyed digest of `secret`'s current value (`None`: no such secret), so
    /// the owner can tell whether a write would change it without reading it.
    pub fn current_digest(&self, secret: SecretRef<'_>) -> Result<Option<String>, VaultError> {
        let keys = self.keys()?;
        match self.read_current(secret) {
            Ok((_, value)) => Ok(Some(keys.value_digest(value.expose()))),
            Err(VaultError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
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

/// What an unlock says about the journal an earlier run left: records imported,
/// files that ended mid-record (a crash while writing), and damage.
fn recovery_events(recovered: &journal::Recovered) -> Vec<Event> {
    let vaultd = Actor::vaultd();
    let mut events = Vec::new();
    if recovered.imported > 0 || !recovered.torn.is_empty() {
        events.push(
            Event::new(Kind::AuditJournalRecovered, Outcome::Ok, &vaultd)
                .with("imported", recovered.imported)
                .with("incomplete", recovered.torn.clone()),
        );
    }
    if let Some(problem) = &recovered.problem {
        tracing::error!(%problem, "the audit journal was altered; its files are kept as *.damaged");
        events.push(
            Event::new(Kind::AuditJournalDamaged, Outcome::Failed, &vaultd)
                .with("problem", problem.clone())
                .with("kept", "DATA_DIR/journal/*.damaged"),
        );
    }
    events
}

/// A checkpoint event naming the current tip of the log.
fn checkpoint(tip: &Tip) -> Event {
    Event::new(Kind::AuditCheckpoint, Outcome::Ok, &Actor::vaultd())
        .with("seq", tip.seq)
        .with("mac", crypto::hex(&tip.mac))
}

/// Runs blocking work (an fsync, a hook's wait) from an async request without
/// holding up the worker it runs on: on a multi-threaded runtime the worker
/// hands its other tasks to another thread for the duration. The one place that
/// decides this (a current-thread runtime, as in some unit tests, or no runtime
/// at all, runs `f` in place).
pub(crate) fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A change in the making: the transaction it is written in, and the state as
/// it changes (see [`Vault::commit`]).
pub(super) struct Change<'t, 'i> {
    pub txn: &'t Txn<'t>,
    pub state: Draft<'i>,
}

impl Change<'_, '_> {
    /// A secret to change, which must exist.
    fn secret(&mut self, secret: SecretRef<'_>) -> Result<&mut Secret, VaultError> {
        self.state.secret_mut(secret.env, secret.name)?.ok_or_else(|| secret.not_found())
    }
}

/// Integrity events an unlock records at most, one per row; more are counted in one.
const MAX_VIOLATION_EVENTS: usize = 100;

fn violation_event(v: &Violation) -> Event {
    Event::new(Kind::IntegrityViolation, Outcome::Failed, &Actor::vaultd())
        .with("table", v.table.sql())
        .with("row", v.row.clone())
        .with("problem", v.problem.clone())
}

/// Integrity problems in the log since the last acknowledgement, as `status` shows them.
fn open_problems(txn: &Txn<'_>) -> Result<Vec<String>, StoreError> {
    Ok(txn
        .audit_open_problems()?
        .into_iter()
        .map(|(seq, kind, detail)| {
            let d: serde_json::Value = serde_json::from_str(&detail).unwrap_or_default();
            let what = match Kind::parse(&kind) {
                Some(Kind::AuditTampered) => format!("audit log: {}", d["problem"].as_str().unwrap_or("altered")),
                _ => format!(
                    "{} {}: {}",
                    d["table"].as_str().unwrap_or("?"),
                    d["row"].as_str().unwrap_or("?"),
                    d["problem"].as_str().unwrap_or("?")
                ),
            };
            format!("entry {seq}: {what}")
        })
        .collect())
}

/// The audit chain's state while unlocked.
struct Chain {
    keys: Arc<Unlocked>,
    tip: Tip,
}
