//! Property test (issue 20): the image vaultd serves reads from (`state::Image`,
//! loaded at unlock and changed only by the transaction that commits a change)
//! never serves a value, nor allows a read, that its store would not.
//!
//! Each trial runs a few dozen random operations on one vault: writes, manual
//! and generated rotations, deletions, clients added, removed, disabled and
//! enabled, grants of both kinds given and taken, tokens (some with use, time or
//! idle limits) created and revoked, seals, revoke-alls (online, while sealed,
//! and offline with the daemon's honouring), key rotations with rewraps, time
//! passing, and restarts (clean, and crashes: the vault dropped unsealed, with
//! what it held only in memory lost). After every operation every read an agent
//! or the owner could try (every secret, versions 0..=3 and around the current
//! one; the owner, kernel-identified clients of other uids, every token from
//! its uid and another) is checked two ways:
//! - against a model the test keeps of what should be served;
//! - at random points (after every operation in some trials), against the store:
//!   a consistent copy of the data directory (`VACUUM INTO`, the state's one
//!   file: the journal holds audit records only), opened and unlocked by a second
//!   vault as a restarted vaultd would, which must give every read the same
//!   outcome as the live image. The one documented difference: a token without a
//!   use limit notes its last use in memory until the next flush (every 10 s,
//!   and at seal), so a store copied before it may find the token idle sooner;
//!   the model knows which uses are flushed and says where the two may differ.
//!   A use-limited token's count is durable at once: no difference allowed.
//!
//! In process: by default 10 trials (300 operations, about 40,000 reads, some
//! 125 copies of the store; 30-45 s in debug on a busy 2-core machine, most of
//! it unlocking the copies). `VAULT_COHERENCE_TRIALS` runs more,
//! `VAULT_COHERENCE_SEED` replays a run.
#![allow(clippy::unwrap_used)]

mod common;

use common::Rng;
use rusqlite::Connection;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vaultd::audit::Actor;
use vaultd::clock::now_unix;
use vaultd::config::{Config, KeysConfig, LimitsConfig, RotationConfig};
use vaultd::crypto::{KdfParams, SecretBytes};
use vaultd::identity::Peer;
use vaultd::state::change::DEFAULT_GRACE_SECS;
use vaultd::state::{Grant, GrantKind, PolicyChange, SecretLabels};
use vaultd::store::{DB_FILE, DataDirLock};
use vaultd::vault::{SecretRef, TokenSpec, Trigger, Vault, VaultError};

const PASSPHRASE: &[u8] = b"image coherence passphrase";
/// The cheapest parameters a vault accepts: the KDF is not under test here.
const KDF: KdfParams = KdfParams { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 };
const SECRETS: [(&str, &str); 4] = [("prod", "alpha"), ("prod", "beta"), ("staging", "gamma"), ("dev", "delta")];
const CLIENTS: [&str; 4] = ["bot", "ops", "ci", "box"];
/// Client uids; peers also read as each.
const UIDS: [u32; 4] = [2000, 3000, 4000, 5000];
/// Every side of a pattern is `*` or a name: the model's matcher needs no more.
const PATTERNS: [&str; 6] = ["prod/alpha", "prod/*", "*/*", "staging/gamma", "*/beta", "dev/*"];
const GENERATE: &str = "generate:24:alnum";

/// How far the clock moves when time passes. Every limit below is at least 400 s
/// from a multiple of it, so no outcome depends on the seconds an operation
/// takes: a previous version is readable for 3 steps (not 4), a token lives 2
/// steps (not 3) and may go unused for 1 step (not 2).
const STEP: i64 = 1000;
const GRACE: i64 = DEFAULT_GRACE_SECS;
const TTL: i64 = 2500;
const IDLE: i64 = 1500;

const OPS_PER_TRIAL: u64 = 30;

fn pass() -> SecretBytes {
    SecretBytes::new(PASSPHRASE.to_vec())
}

fn me() -> Actor {
    Actor::vaultd()
}

fn secret(s: usize) -> SecretRef<'static> {
    SecretRef::parse(SECRETS[s].0, SECRETS[s].1).unwrap()
}

fn peer(uid: u32) -> Peer {
    Peer { uid, gid: uid, pid: None, accepted: None }
}

fn owner_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

// ---- what a read gives

/// A read's outcome: what was served, or the kind of refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Read {
    Value(u64, Vec<u8>),
    /// GetSecrets: every value, in order.
    Values(Vec<(u64, Vec<u8>)>),
    NotFound,
    /// A token vaultd knows but does not honour.
    TokenRefused,
    /// A token it does not know (its client removed).
    TokenUnknown,
    Sealed,
    Other(String),
}

impl Read {
    fn of_error(e: VaultError) -> Read {
        match e {
            VaultError::NotFound { .. } => Read::NotFound,
            VaultError::TokenRefused => Read::TokenRefused,
            VaultError::TokenUnknown => Read::TokenUnknown,
            VaultError::Sealed => Read::Sealed,
            other => Read::Other(other.to_string()),
        }
    }

    fn of(r: Result<(u64, SecretBytes), VaultError>) -> Read {
        r.map_or_else(Read::of_error, |(v, s)| Read::Value(v, s.expose().to_vec()))
    }

    fn served(&self) -> bool {
        matches!(self, Read::Value(..) | Read::Values(_))
    }
}

#[derive(Debug, Clone, Copy)]
enum Reader {
    Owner,
    /// A kernel-identified caller of this uid (and gid).
    Kernel(u32),
    /// The trial's token number `.0`, presented by a caller of uid `.1`.
    Token(usize, u32),
}

#[derive(Debug, Clone, Copy)]
enum Probe {
    /// The owner's `show --reveal` of a version (0: the current one).
    Reveal(usize, u64),
    Get(Reader, usize, u64),
    /// GetSecrets of every secret's current version.
    GetMany(Reader),
}

// ---- the model: what should be served

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Current,
    /// Readable by agents until then.
    Previous(i64),
    Retired,
    Compromised,
}

#[derive(Debug, Clone)]
struct ModelSecret {
    current: u64,
    versions: BTreeMap<u64, (Vec<u8>, State)>,
    generated: bool,
}

#[derive(Debug, Clone)]
struct ModelClient {
    uid: u32,
    gid: Option<u32>,
    enabled: bool,
    token_only: bool,
    grants: BTreeMap<String, GrantKind>,
}

#[derive(Debug, Clone)]
struct ModelToken {
    client: String,
    bind_uid: Option<u32>,
    created: i64,
    expires: Option<i64>,
    idle: Option<i64>,
    uses: Option<i64>,
    /// The last use as stored, and a later one noted only in memory (a token
    /// without a use limit: written back by a flush or a seal).
    stored_use: Option<i64>,
    noted_use: Option<i64>,
    revoked: bool,
    /// Removed with its client.
    gone: bool,
}

#[derive(Debug, Clone, Default)]
struct Model {
    secrets: BTreeMap<usize, ModelSecret>,
    clients: BTreeMap<String, ModelClient>,
    tokens: Vec<ModelToken>,
    sealed: bool,
    /// A revoke-all made while sealed: applied at the next unlock.
    pending_revoke: bool,
    keep: u64,
}

fn matches(pattern: &str, s: usize) -> bool {
    let (env, name) = pattern.split_once('/').unwrap();
    (env == "*" || env == SECRETS[s].0) && (name == "*" || name == SECRETS[s].1)
}

impl ModelClient {
    fn reads(&self, s: usize) -> bool {
        self.grants.iter().any(|(p, kind)| *kind == GrantKind::Read && matches(p, s))
    }
}

impl Model {
    /// What a vault unlocked anew on the store holds: uses noted only in memory are not there.
    fn stored(&self) -> Model {
        let mut m = self.clone();
        for t in &mut m.tokens {
            t.noted_use = None;
        }
        m
    }

    fn flush(&mut self) {
        for t in &mut self.tokens {
            t.stored_use = t.stored_use.max(t.noted_use.take());
        }
    }

    fn seal(&mut self) {
        self.flush();
        self.sealed = true;
    }

    fn unlock(&mut self) {
        // The image is the store's (a re-unlock too: uses noted only in memory are lost).
        *self = self.stored();
        self.sealed = false;
        if std::mem::take(&mut self.pending_revoke) {
            self.revoke_everything();
        }
    }

    fn revoke_everything(&mut self) {
        self.tokens.iter_mut().for_each(|t| t.revoked = true);
        self.clients.values_mut().for_each(|c| c.enabled = false);
        for s in self.secrets.values_mut() {
            for (_, state) in s.versions.values_mut() {
                if matches!(state, State::Current | State::Previous(_)) {
                    *state = State::Compromised;
                }
            }
        }
    }

    /// A new current value: the number it gets.
    fn promote(&mut self, s: usize, value: Vec<u8>, now: i64) -> u64 {
        let Some(m) = self.secrets.get_mut(&s) else {
            let versions = BTreeMap::from([(1, (value, State::Current))]);
            self.secrets.insert(s, ModelSecret { current: 1, versions, generated: false });
            return 1;
        };
        for (_, state) in m.versions.values_mut() {
            if matches!(state, State::Previous(_)) {
                *state = State::Retired;
            }
        }
        if let Some((_, state @ State::Current)) = m.versions.get_mut(&m.current) {
            *state = State::Previous(now + GRACE);
        }
        let new = m.versions.keys().next_back().unwrap() + 1;
        m.versions.insert(new, (value, State::Current));
        m.current = new;
        // Of the versions no longer served, only the newest `keep` are kept.
        let oldest_kept = new.saturating_sub(self.keep);
        m.versions.retain(|n, (_, state)| *n > oldest_kept || !matches!(state, State::Retired | State::Compromised));
        new
    }

    /// The version an agent may read (`version` 0: the current one), with its value.
    fn readable(&self, s: usize, version: u64, now: i64) -> Option<(u64, Vec<u8>)> {
        let m = self.secrets.get(&s)?;
        let n = if version == 0 { m.current } else { version };
        let (value, state) = m.versions.get(&n)?;
        let ok = match state {
            State::Current => n == m.current,
            State::Previous(until) => now < *until,
            State::Retired | State::Compromised => false,
        };
        ok.then(|| (n, value.clone()))
    }

    /// Whether a token vaultd knows (not gone) is honoured.
    fn token_usable(&self, i: usize, uid: u32, now: i64) -> bool {
        let t = &self.tokens[i];
        let last = t.stored_use.max(t.noted_use).unwrap_or(t.created);
        !t.revoked
            && t.expires.is_none_or(|e| now < e)
            && t.idle.is_none_or(|idle| now - last < idle)
            && t.uses.is_none_or(|n| n > 0)
            && t.bind_uid.is_none_or(|b| b == uid)
            && self.clients.get(&t.client).is_some_and(|c| c.enabled)
    }

    /// Who the reader is: refused here (a token), or judged per secret.
    fn identify(&self, reader: Reader, now: i64) -> Result<(), Read> {
        match reader {
            Reader::Token(..) if self.sealed => Err(Read::Sealed),
            Reader::Token(i, _) if self.tokens[i].gone => Err(Read::TokenUnknown),
            Reader::Token(i, uid) if !self.token_usable(i, uid, now) => Err(Read::TokenRefused),
            _ => Ok(()),
        }
    }

    /// Whether the reader may read secret `s` (while sealed nobody is granted anything).
    fn granted(&self, reader: Reader, s: usize) -> bool {
        match reader {
            Reader::Owner => true,
            Reader::Kernel(uid) => {
                !self.sealed
                    && !self.clients.values().any(|c| c.uid == uid && c.token_only)
                    && self.clients.values().any(|c| {
                        c.enabled && !c.token_only && c.uid == uid && c.gid.is_none_or(|g| g == uid) && c.reads(s)
                    })
            }
            Reader::Token(i, _) => self.clients.get(&self.tokens[i].client).is_some_and(|c| c.reads(s)),
        }
    }

    fn read_one(&self, reader: Reader, s: usize, version: u64, now: i64) -> Read {
        if !self.granted(reader, s) {
            return Read::NotFound;
        }
        if self.sealed {
            return Read::Sealed;
        }
        self.readable(s, version, now).map_or(Read::NotFound, |(n, v)| Read::Value(n, v))
    }

    /// A served request spends one use of its token (a refused one nothing).
    fn spend(&mut self, reader: Reader, now: i64) {
        let Reader::Token(i, _) = reader else { return };
        let t = &mut self.tokens[i];
        match &mut t.uses {
            Some(n) => {
                *n -= 1;
                t.stored_use = Some(now);
            }
            None => t.noted_use = t.noted_use.max(Some(now)),
        }
    }

    /// What `probe` should give at `now`, and its effect on the state.
    fn read(&mut self, probe: Probe, now: i64) -> Read {
        let out = match probe {
            Probe::Reveal(s, version) => return self.reveal(s, version),
            Probe::Get(reader, s, version) => match self.identify(reader, now) {
                Err(refused) => return refused,
                Ok(()) => self.read_one(reader, s, version, now),
            },
            Probe::GetMany(reader) => match self.identify(reader, now) {
                Err(refused) => return refused,
                // All or nothing: the first refusal, else every value.
                Ok(()) => (0..SECRETS.len())
                    .map(|s| match self.read_one(reader, s, 0, now) {
                        Read::Value(n, v) => Ok((n, v)),
                        refused => Err(refused),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_or_else(|refused| refused, Read::Values),
            },
        };
        if out.served()
            && let Probe::Get(reader, ..) | Probe::GetMany(reader) = probe
        {
            self.spend(reader, now);
        }
        out
    }

    /// The owner may reveal any stored version; 0 is the current one, if it is current.
    fn reveal(&self, s: usize, version: u64) -> Read {
        if self.sealed {
            return Read::Sealed;
        }
        let Some(m) = self.secrets.get(&s) else { return Read::NotFound };
        let n = if version == 0 { m.current } else { version };
        match m.versions.get(&n) {
            Some((_, state)) if version == 0 && *state != State::Current => Read::NotFound,
            Some((value, _)) => Read::Value(n, value.clone()),
            None => Read::NotFound,
        }
    }

    /// Every read to try: by the owner, kernel-identified clients and every token
    /// (from its own uid and another), of versions 0..=3 and around the current.
    fn probes(&self, homes: &[u32]) -> Vec<Probe> {
        let mut readers = vec![Reader::Owner];
        readers.extend(UIDS.iter().map(|u| Reader::Kernel(*u)));
        let kernel = readers.len();
        for (i, home) in homes.iter().enumerate() {
            readers.push(Reader::Token(i, *home));
            readers.push(Reader::Token(i, if *home == UIDS[0] { UIDS[1] } else { UIDS[0] }));
        }
        let mut probes = Vec::new();
        for s in 0..SECRETS.len() {
            let current = self.secrets.get(&s).map_or(0, |m| m.current);
            let mut versions: BTreeSet<u64> = (0..=3).collect();
            versions.extend([current.saturating_sub(1), current, current + 1]);
            probes.extend(versions.iter().map(|v| Probe::Reveal(s, *v)));
            for (r, reader) in readers.iter().enumerate() {
                for v in &versions {
                    // Tokens read the current and the previous version.
                    if r < kernel || *v == 0 || *v + 1 == current {
                        probes.push(Probe::Get(*reader, s, *v));
                    }
                }
            }
        }
        probes.extend(readers.iter().map(|r| Probe::GetMany(*r)));
        probes
    }
}

// ---- the vault under test

fn client(
    name: &str,
    uid: u32,
    gid: Option<u32>,
    token_only: bool,
    grants: &BTreeMap<String, GrantKind>,
) -> vaultd::state::Client {
    vaultd::state::Client {
        id: 0,
        name: name.into(),
        uid,
        gid,
        exe: None,
        exe_sha256: None,
        enabled: true,
        token_only,
        grants: grants.iter().map(|(p, kind)| (p.clone(), Grant { kind: *kind, created_unix: 0 })).collect(),
        created_unix: 0,
    }
}

async fn read(vault: &Vault, probe: Probe, tokens: &[SecretBytes]) -> Read {
    let who = |reader: Reader| match reader {
        Reader::Owner => (peer(owner_uid()), None),
        Reader::Kernel(uid) => (peer(uid), None),
        Reader::Token(i, uid) => (peer(uid), Some(&tokens[i])),
    };
    match probe {
        Probe::Reveal(s, version) => Read::of(vault.reveal(&me(), secret(s), version)),
        Probe::Get(reader, s, version) => {
            let (peer, token) = who(reader);
            Read::of(vault.get(&me(), Some(&peer), token, secret(s), version).await)
        }
        Probe::GetMany(reader) => {
            let (peer, token) = who(reader);
            let all: Vec<_> = (0..SECRETS.len()).map(secret).collect();
            match vault.get_many(&me(), Some(&peer), token, &all).await {
                Ok(values) => Read::Values(values.into_iter().map(|(n, v)| (n, v.expose().to_vec())).collect()),
                Err(e) => Read::of_error(e),
            }
        }
    }
}

/// What an operation's error was, for comparing with the model's.
fn kind(r: Result<(), VaultError>) -> Result<(), String> {
    r.map_err(|e| match e {
        VaultError::NotFound { .. } => "not found".into(),
        VaultError::ClientNotFound(_) => "client not found".into(),
        VaultError::ClientExists(_) => "client exists".into(),
        VaultError::TokenNotFound(_) => "token not found".into(),
        VaultError::Rotator(_) => "rotator".into(),
        other => format!("unexpected: {other}"),
    })
}

fn want(ok: bool, error: &str) -> Result<(), String> {
    if ok { Ok(()) } else { Err(error.into()) }
}

/// Descriptors and mappings of this process that reach into `dir`.
fn held(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let mut found: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.starts_with(&dir))
        .collect();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    found.extend(maps.lines().filter(|l| l.contains(&dir)).map(str::to_owned));
    found
}

/// Opens the vault on `dir` as vaultd does: its data directory locked first.
fn open(dir: &Path, config: &Config) -> (Arc<Vault>, DataDirLock) {
    vaultd::store::prepare_data_dir(dir).unwrap();
    let lock = vaultd::store::lock_data_dir(dir).unwrap();
    (Vault::open(dir, config).unwrap(), lock)
}

/// A consistent copy of `from`'s state at `to`, made as a backup would be.
fn copy_store(from: &Path, to: &Path) {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().mode(0o700).create(to).unwrap();
    // Made 0600 first: VACUUM INTO fills an empty file, and vaultd refuses an open one.
    drop(vaultd::store::create_owner_only(&to.join(DB_FILE)).unwrap());
    let db = Connection::open(from.join(DB_FILE)).unwrap();
    db.execute("VACUUM INTO ?1", [to.join(DB_FILE).to_str().unwrap()]).unwrap();
}

/// Who reads, for the tally: the owner's reveals and reads, kernel-identified clients, tokens.
const WHO: [&str; 4] = ["reveal", "owner", "client", "token"];

fn who(probe: Probe) -> usize {
    match probe {
        Probe::Reveal(..) => 0,
        Probe::Get(reader, ..) | Probe::GetMany(reader) => match reader {
            Reader::Owner => 1,
            Reader::Kernel(_) => 2,
            Reader::Token(..) => 3,
        },
    }
}

#[derive(Default)]
struct Tally {
    ops: u64,
    reads: u64,
    /// Reads served and refused, by [`WHO`].
    served: [u64; 4],
    refused: [u64; 4],
    stores: u64,
    store_reads: u64,
    /// Reads the store refused (an idle token) where the image took the token: uses not flushed yet.
    unflushed: u64,
    restarts: u64,
    revoke_alls: u64,
}

impl Tally {
    fn add(&mut self, t: &Tally) {
        for (sum, n) in [
            (&mut self.ops, t.ops),
            (&mut self.reads, t.reads),
            (&mut self.stores, t.stores),
            (&mut self.store_reads, t.store_reads),
            (&mut self.unflushed, t.unflushed),
            (&mut self.restarts, t.restarts),
            (&mut self.revoke_alls, t.revoke_alls),
        ] {
            *sum += n;
        }
        for w in 0..WHO.len() {
            self.served[w] += t.served[w];
            self.refused[w] += t.refused[w];
        }
    }
}

struct Trial {
    /// What names this trial for a replay.
    name: String,
    work: PathBuf,
    dir: PathBuf,
    config: Config,
    vault: Option<(Arc<Vault>, DataDirLock)>,
    model: Model,
    /// Each token, the uid of its client when it was made, and its accessor.
    tokens: Vec<SecretBytes>,
    homes: Vec<u32>,
    accessors: Vec<String>,
    log: Vec<String>,
    /// Values written so far (each is new).
    written: u64,
    tally: Tally,
}

impl Trial {
    fn vault(&self) -> Arc<Vault> {
        self.vault.as_ref().unwrap().0.clone()
    }

    fn at(&self) -> String {
        format!("{}, after: {}", self.name, self.log.join("; "))
    }

    fn value(&mut self, s: usize) -> Vec<u8> {
        self.written += 1;
        format!("{}/{}#{}", SECRETS[s].0, SECRETS[s].1, self.written).into_bytes()
    }

    fn check_op(&self, what: &str, got: Result<(), String>, want: Result<(), String>) {
        assert_eq!(got, want, "{what}: the vault and the model disagree; {}", self.at());
    }

    /// Every read, against the model; with `store`, against a vault unlocked on a
    /// copy of the store too (the model, as that copy holds it, says where the
    /// two may differ).
    async fn check(&mut self, store: bool) {
        let live = self.vault();
        let copy = if store { Some(self.open_copy()) } else { None };
        let mut stored = copy.as_ref().map(|_| self.model.stored());
        for probe in self.model.probes(&self.homes) {
            let now = now_unix();
            let got = read(&live, probe, &self.tokens).await;
            let want = self.model.read(probe, now);
            if let (Some((copy, dir)), Some(stored)) = (&copy, &mut stored) {
                let from_store = read(copy, probe, &self.tokens).await;
                let want_store = stored.read(probe, now);
                assert!(
                    got == from_store || want != want_store,
                    "{probe:?}: the image gave {got:?}, the store (copied to {}) {from_store:?}; {}",
                    dir.display(),
                    self.at()
                );
                assert_eq!(from_store, want_store, "{probe:?} from the store: the model disagrees; {}", self.at());
                if got != from_store {
                    // The image still takes the token (and serves, or refuses the secret); the store finds it idle.
                    assert!(
                        got != Read::TokenRefused && from_store == Read::TokenRefused,
                        "{probe:?}: the image gave {got:?}, the store {from_store:?}; {}",
                        self.at()
                    );
                    self.tally.unflushed += 1;
                }
                self.tally.store_reads += 1;
            }
            assert_eq!(got, want, "{probe:?} from the image: the model disagrees; {}", self.at());
            self.tally.reads += 1;
            match got.served() {
                true => self.tally.served[who(probe)] += 1,
                false => self.tally.refused[who(probe)] += 1,
            }
        }
        if let Some((copy, dir)) = copy {
            drop(copy);
            assert!(held(&dir).is_empty(), "a dropped vault still holds {:?}", held(&dir));
            std::fs::remove_dir_all(&dir).unwrap();
            self.tally.stores += 1;
        }
        // The daemon's importer moves the reads' records into the table every 100 ms.
        if !self.model.sealed {
            live.import_journal().unwrap();
        }
    }

    /// A second vault, unlocked on a copy of the live one's store.
    fn open_copy(&self) -> (Arc<Vault>, PathBuf) {
        let dir = self.work.join(format!("copy-{}", self.tally.stores));
        copy_store(&self.dir, &dir);
        let copy = Vault::open(&dir, &self.config).unwrap();
        copy.unlock(&me(), &pass()).unwrap();
        let problems = copy.status().unwrap().integrity;
        assert!(problems.is_empty(), "the store does not verify: {problems:?}; {}", self.at());
        (copy, dir)
    }

    fn unlock(&mut self) {
        self.vault().unlock(&me(), &pass()).unwrap();
        self.model.unlock();
        let problems = self.vault().status().unwrap().integrity;
        assert!(problems.is_empty(), "the store does not verify at unlock: {problems:?}; {}", self.at());
    }

    /// vaultd stopped (sealing first) or killed, and started again on the same directory.
    fn restart(&mut self, crash: bool) {
        if !crash {
            self.vault().seal(&me()).unwrap();
            self.model.seal();
        }
        let err = vaultd::store::lock_data_dir(&self.dir).unwrap_err().to_string();
        assert!(err.contains("in use by another vaultd"), "a second lock of a held data directory: {err}");
        // As vaultd's run ends: the vault first, then the lock.
        self.vault = None;
        let left = held(&self.dir);
        assert!(left.is_empty(), "a dropped vault and lock still hold {left:?}; {}", self.at());
        self.vault = Some(open(&self.dir, &self.config));
        self.model.sealed = true;
        self.unlock();
        self.tally.restarts += 1;
    }

    async fn seal_and_unlock(&mut self, rng: &mut Rng) {
        self.vault().seal(&me()).unwrap();
        self.model.seal();
        self.check(false).await;
        if rng.one_in(6) {
            self.log.push("revoke-all while sealed".into());
            self.vault().revoke_all(&me(), "drill while sealed", false, false).await.unwrap();
            self.model.pending_revoke = true;
            self.tally.revoke_alls += 1;
        } else if rng.one_in(5) {
            self.log.push("offline revoke-all while sealed".into());
            vaultd::incident::revoke_all_offline(&self.dir, "offline drill").unwrap();
            self.model.pending_revoke = true;
            self.tally.revoke_alls += 1;
        }
        if rng.one_in(3) {
            self.log.push("crash while sealed".into());
            self.restart(true);
        } else {
            self.unlock();
        }
    }

    /// One random operation, checked against the model's expectation.
    async fn step(&mut self, rng: &mut Rng) {
        let vault = self.vault();
        let now = now_unix();
        let s = rng.below(SECRETS.len() as u64) as usize;
        let exists = self.model.secrets.contains_key(&s);
        let generated = self.model.secrets.get(&s).is_some_and(|m| m.generated);
        // Mostly a client that exists.
        let existing: Vec<&str> = CLIENTS.into_iter().filter(|c| self.model.clients.contains_key(*c)).collect();
        let name = if existing.is_empty() || rng.one_in(4) { rng.pick(&CLIENTS) } else { rng.pick(&existing) };
        let client = self.model.clients.get(name).cloned();
        match rng.below(100) {
            0..18 => self.put(s),
            18..26 => {
                self.log.push(format!("rotate {s} manually"));
                let value = self.value(s);
                let got =
                    vault.rotate(&me(), secret(s), Some(SecretBytes::new(value.clone())), Trigger::Operator).await;
                let ok = got.as_ref().ok().map(|r| r.version);
                self.check_op(
                    "rotate",
                    kind(got.map(drop)),
                    want(exists, "not found").and(want(!generated, "rotator")),
                );
                if let Some(version) = ok {
                    assert_eq!(version, self.model.promote(s, value, now), "rotate {s}: version; {}", self.at());
                }
            }
            26..31 => {
                self.log.push(format!("rotate {s} generated"));
                let got = vault.rotate(&me(), secret(s), None, Trigger::Operator).await;
                let ok = got.as_ref().ok().map(|r| r.version);
                self.check_op("rotate", kind(got.map(drop)), want(exists, "not found").and(want(generated, "rotator")));
                if let Some(version) = ok {
                    // The value is random: the owner's reveal says it, the store checks it later.
                    let (_, value) = vault.reveal(&me(), secret(s), version).unwrap();
                    assert_eq!(version, self.model.promote(s, value.expose().to_vec(), now), "{}", self.at());
                }
            }
            31..34 => {
                let to = !generated;
                self.log.push(format!("{s} rotates {}", if to { "generated" } else { "manually" }));
                let rotator = if to { GENERATE } else { "manual" };
                let change = PolicyChange { rotator: Some(rotator.into()), ..PolicyChange::default() };
                self.check_op(
                    "set rotator",
                    kind(vault.set_rotation(&me(), secret(s), &change).map(drop)),
                    want(exists, "not found"),
                );
                if let Some(m) = self.model.secrets.get_mut(&s) {
                    m.generated = to;
                }
            }
            34..36 => {
                self.log.push(format!("rm {s}"));
                self.check_op("rm", kind(vault.delete(&me(), secret(s)).map(drop)), want(exists, "not found"));
                self.model.secrets.remove(&s);
            }
            36..42 => self.client_add(rng, name, client.is_some()),
            42..44 => {
                self.log.push(format!("client rm {name}"));
                self.check_op(
                    "client rm",
                    kind(vault.client_remove(&me(), name)),
                    want(client.is_some(), "client not found"),
                );
                self.model.clients.remove(name);
                self.model.tokens.iter_mut().filter(|t| t.client == name).for_each(|t| t.gone = true);
            }
            44..50 => {
                let enabled = !rng.one_in(3);
                self.log.push(format!("client {name} {}", if enabled { "enable" } else { "disable" }));
                let got = vault.client_set_enabled(&me(), name, enabled).map(drop);
                self.check_op("client enable", kind(got), want(client.is_some(), "client not found"));
                if let Some(c) = self.model.clients.get_mut(name) {
                    c.enabled = enabled;
                }
            }
            50..60 => {
                let pattern = rng.pick(&PATTERNS);
                let grant = rng.pick(&[Some(GrantKind::Read), Some(GrantKind::Read), Some(GrantKind::Use), None]);
                self.log.push(format!("client {name} grant {pattern} {grant:?}"));
                let got = vault.client_grants(&me(), name, &[pattern.into()], grant).map(drop);
                self.check_op("grant", kind(got), want(client.is_some(), "client not found"));
                if let Some(c) = self.model.clients.get_mut(name) {
                    match grant {
                        Some(kind) => c.grants.insert(pattern.into(), kind),
                        None => c.grants.remove(pattern),
                    };
                }
            }
            60..68 => self.token_create(rng, name, client.as_ref(), now),
            68..72 => self.token_revoke(rng),
            72..76 => {
                drop(vault); // a crash while sealed drops the vault
                self.log.push("seal, unlock".into());
                self.seal_and_unlock(rng).await;
            }
            76..77 => self.revoke_all(rng).await,
            77..83 => {
                drop(vault);
                let crash = rng.one_in(2);
                self.log.push(if crash { "crash, restart" } else { "stop, restart" }.into());
                self.restart(crash);
            }
            83..86 => {
                self.log.push("unlock again".into());
                self.unlock();
            }
            86..92 if cfg!(debug_assertions) => {
                self.log.push(format!("{STEP} s pass"));
                advance(STEP);
            }
            92..96 => {
                self.log.push("flush token uses".into());
                vault.flush_token_uses().unwrap();
                self.model.flush();
            }
            _ => {
                let rewrap = rng.one_in(2);
                self.log.push(format!("rotate-key{}", if rewrap { " --rewrap" } else { "" }));
                vault.rotate_key(&me(), rewrap).unwrap();
                // In small batches, as `vaultctl rewrap` goes.
                let (mut after, limit) = (0, 1 + rng.below(4) as u32);
                if rewrap {
                    loop {
                        let batch = vault.rewrap(&me(), None, after, limit).unwrap();
                        if batch.done {
                            break;
                        }
                        after = batch.next_after;
                    }
                }
            }
        }
    }

    fn put(&mut self, s: usize) {
        self.log.push(format!("put {s}"));
        let value = self.value(s);
        let (labels, policy) = (SecretLabels::default(), PolicyChange::default());
        let (version, _) =
            self.vault().put(&me(), secret(s), &labels, &policy, &SecretBytes::new(value.clone())).unwrap();
        assert_eq!(version, self.model.promote(s, value, now_unix()), "put {s}: version; {}", self.at());
    }

    /// Every secret written, and two clients with grants: most reads are then
    /// decided by the operations that follow, not refused for want of a start.
    fn setup(&mut self, rng: &mut Rng) {
        (0..SECRETS.len()).for_each(|s| self.put(s));
        let first = rng.below(CLIENTS.len() as u64) as usize;
        for name in [CLIENTS[first], CLIENTS[(first + 1) % CLIENTS.len()]] {
            self.client_add(rng, name, false);
        }
    }

    fn client_add(&mut self, rng: &mut Rng, name: &str, exists: bool) {
        let uid = rng.pick(&UIDS);
        let gid = rng.pick(&[None, Some(uid), Some(uid + 1)]);
        let token_only = rng.one_in(4);
        let mut grants = BTreeMap::new();
        for _ in 0..=rng.below(3) {
            grants
                .insert(rng.pick(&PATTERNS).to_owned(), rng.pick(&[GrantKind::Read, GrantKind::Read, GrantKind::Use]));
        }
        self.log.push(format!("client add {name} uid {uid} gid {gid:?} token-only {token_only} {grants:?}"));
        let got = self.vault().client_add(&me(), client(name, uid, gid, token_only, &grants)).map(drop);
        self.check_op("client add", kind(got), want(!exists, "client exists"));
        if !exists {
            self.model.clients.insert(name.into(), ModelClient { uid, gid, enabled: true, token_only, grants });
        }
    }

    fn token_create(&mut self, rng: &mut Rng, name: &str, client: Option<&ModelClient>, now: i64) {
        let spec = TokenSpec {
            ttl: rng.one_in(3).then_some(Duration::from_secs(TTL as u64)),
            idle: rng.one_in(2).then_some(Duration::from_secs(IDLE as u64)),
            uses: rng.one_in(2).then(|| 1 + rng.below(6) as u32),
            any_uid: rng.one_in(3),
            bind_exe: None,
        };
        self.log.push(format!(
            "token {} for {name}: ttl {:?} idle {:?} uses {:?} any uid {}",
            self.tokens.len(),
            spec.ttl,
            spec.idle,
            spec.uses,
            spec.any_uid
        ));
        let got = self.vault().token_create(&me(), name, &spec);
        let Some(client) = client else {
            return self.check_op("token create", kind(got.map(drop)), Err("client not found".into()));
        };
        let (token, row) = got.unwrap();
        self.tokens.push(token);
        self.accessors.push(row.accessor);
        self.homes.push(client.uid);
        self.model.tokens.push(ModelToken {
            client: name.into(),
            bind_uid: (!spec.any_uid).then_some(client.uid),
            created: now,
            expires: spec.ttl.map(|_| now + TTL),
            idle: spec.idle.map(|_| IDLE),
            uses: spec.uses.map(i64::from),
            stored_use: None,
            noted_use: None,
            revoked: false,
            gone: false,
        });
    }

    fn token_revoke(&mut self, rng: &mut Rng) {
        let vault = self.vault();
        if self.tokens.is_empty() || rng.one_in(4) {
            self.log.push("token revoke --all".into());
            let live = self.model.tokens.iter().filter(|t| !t.gone && !t.revoked).count() as u64;
            assert_eq!(vault.token_revoke(&me(), None).unwrap(), live, "token revoke --all; {}", self.at());
            self.model.tokens.iter_mut().for_each(|t| t.revoked = true);
            return;
        }
        let i = rng.below(self.tokens.len() as u64) as usize;
        self.log.push(format!("token revoke {i}"));
        let t = &self.model.tokens[i];
        let got = vault.token_revoke(&me(), Some(&self.accessors[i]));
        let want = if t.gone { Err("token not found".into()) } else { Ok(()) };
        let revoked = got.as_ref().ok().copied();
        self.check_op("token revoke", kind(got.map(drop)), want);
        if let Some(n) = revoked {
            assert_eq!(n, u64::from(!t.revoked), "token revoke {i}: count; {}", self.at());
            self.model.tokens[i].revoked = true;
        }
    }

    async fn revoke_all(&mut self, rng: &mut Rng) {
        let vault = self.vault();
        self.tally.revoke_alls += 1;
        if rng.one_in(3) {
            // Another process on the data directory; the daemon honours it within a second.
            self.log.push("offline revoke-all".into());
            vaultd::incident::revoke_all_offline(&self.dir, "offline drill").unwrap();
            vault.honour_incidents().await.unwrap();
            self.model.revoke_everything();
            return;
        }
        let seal = rng.one_in(2);
        self.log.push(format!("revoke-all{}", if seal { " --seal" } else { "" }));
        vault.revoke_all(&me(), "drill", seal, false).await.unwrap();
        self.model.revoke_everything();
        if seal {
            self.model.seal();
            self.check(false).await;
            self.unlock();
        }
    }
}

#[cfg(debug_assertions)]
fn advance(secs: i64) {
    vaultd::clock::advance(Duration::from_secs(secs as u64));
}

/// Release builds cannot move the clock: time does not pass there (never chosen).
#[cfg(not(debug_assertions))]
fn advance(_: i64) {}

/// An initialized vault with the cheap KDF, sealed: each trial starts from a copy.
fn template(at: &Path) {
    let (vault, lock) = open(at, &Config::default());
    vault.init(&me(), &pass()).unwrap();
    vault.rekey(&me(), &pass(), None, Some(KDF)).unwrap();
    vault.seal(&me()).unwrap();
    drop((vault, lock));
}

fn config(rng: &mut Rng) -> Config {
    let unlimited = LimitsConfig {
        client_rate: 1e12,
        client_burst: 1e12,
        global_rate: 1e12,
        global_burst: 1e12,
        ..LimitsConfig::default()
    };
    Config {
        limits: unlimited,
        // Few versions kept and short key terms: pruning and new terms happen often.
        rotation: RotationConfig { keep_versions: 2 + rng.below(3) as u32, ..RotationConfig::default() },
        keys: KeysConfig { max_encryptions_per_term: 2 + rng.below(6) },
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_serves_what_the_store_would() {
    let (trials, seed) = (common::trials("VAULT_COHERENCE", 10), common::seed("VAULT_COHERENCE"));
    eprintln!("image coherence: seed {seed} (replay: VAULT_COHERENCE_SEED={seed})");
    let started = std::time::Instant::now();
    let mut rng = Rng::new(seed);
    let work = tempfile::tempdir().unwrap();
    let template_dir = work.path().join("template");
    template(&template_dir);
    let mut total = Tally::default();
    for n in 0..trials {
        // In every fourth trial the store is checked after every operation, else now and then.
        let thorough = n % 4 == 0;
        let config = config(&mut rng);
        let trial_dir = work.path().join(format!("t{n}"));
        std::fs::create_dir(&trial_dir).unwrap();
        let dir = trial_dir.join("data");
        copy_store(&template_dir, &dir);
        let mut trial = Trial {
            name: format!(
                "trial {n} of seed {seed} (replay: VAULT_COHERENCE_SEED={seed} VAULT_COHERENCE_TRIALS={})",
                n + 1
            ),
            work: trial_dir.clone(),
            dir: dir.clone(),
            model: Model { keep: u64::from(config.rotation.keep_versions), sealed: true, ..Model::default() },
            vault: Some(open(&dir, &config)),
            config,
            tokens: Vec::new(),
            homes: Vec::new(),
            accessors: Vec::new(),
            log: Vec::new(),
            written: 0,
            tally: Tally::default(),
        };
        trial.unlock();
        trial.setup(&mut rng);
        for _ in 0..OPS_PER_TRIAL {
            trial.step(&mut rng).await;
            trial.tally.ops += 1;
            let store = thorough || rng.one_in(5);
            trial.check(store).await;
        }
        total.add(&trial.tally);
        drop(trial.vault.take());
        std::fs::remove_dir_all(&trial_dir).unwrap();
    }
    let t = total;
    let by_who: Vec<String> =
        (0..WHO.len()).map(|w| format!("{} {}/{}", WHO[w], t.served[w], t.served[w] + t.refused[w])).collect();
    eprintln!(
        "image coherence: {trials} trials (seed {seed}) in {:.1} s: {} operations ({} restarts, {} revoke-alls), \
         {} reads checked against the model (served: {}), {} against {} copies of the store ({} refused by the \
         store for a token use not yet flushed, as documented)",
        started.elapsed().as_secs_f64(),
        t.ops,
        t.restarts,
        t.revoke_alls,
        t.reads,
        by_who.join(", "),
        t.store_reads,
        t.stores,
        t.unflushed
    );
    for (w, who) in WHO.iter().enumerate() {
        assert!(t.served[w] > 0 && t.refused[w] > 0, "{who} reads must be both served and refused: {by_who:?}");
    }
    assert!(t.stores >= trials, "the store was compared too seldom: {}", t.stores);
}

/// Found by the property test: a GetMany refused as a whole, one of its names
/// not granted, spent a use of its token though nothing was served, so the
/// token ran out early (and a token without a use limit was kept from idling).
#[tokio::test]
async fn a_refused_get_many_spends_no_use_of_its_token() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("data");
    template(&dir);
    let (vault, _lock) = open(&dir, &Config::default());
    vault.unlock(&me(), &pass()).unwrap();
    let (labels, policy) = (SecretLabels::default(), PolicyChange::default());
    for s in [0, 1] {
        vault.put(&me(), secret(s), &labels, &policy, &SecretBytes::new(b"value".to_vec())).unwrap();
    }
    let grants = BTreeMap::from([("prod/alpha".to_owned(), GrantKind::Read)]);
    vault.client_add(&me(), client("bot", UIDS[0], None, false, &grants)).unwrap();
    let spec = TokenSpec { ttl: None, idle: None, uses: Some(1), any_uid: false, bind_exe: None };
    let (token, _) = vault.token_create(&me(), "bot", &spec).unwrap();
    let bot = peer(UIDS[0]);
    let refused = vault.get_many(&me(), Some(&bot), Some(&token), &[secret(0), secret(1)]).await;
    assert_eq!(refused.map(drop).map_err(Read::of_error), Err(Read::NotFound), "prod/beta is not granted");
    let got = vault.get(&me(), Some(&bot), Some(&token), secret(0), 0).await;
    assert_eq!(Read::of(got), Read::Value(1, b"value".to_vec()), "the token's one use is still there");
}
