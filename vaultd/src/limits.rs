//! What one caller may take of what all callers share.
//!
//! - Rates: a token bucket per client (or per uid for callers with no client)
//!   and one for everyone; a read costs one token per secret it names. The
//!   client's bucket is asked first and the global one only for what the client's
//!   admits, so a flood from one caller spends its own budget, not everyone's.
//!   The vault's owner is exempt from both.
//! - Slots ([`Slots`]): things a caller holds open (agent connections, watch
//!   streams, requests in flight), capped per uid and in all; the owner is exempt
//!   from the per-uid caps, and some slots are kept for it alone.
//! - A pause for unknown tokens ([`Pauses`]), per connection and per token prefix:
//!   a caller guessing tokens slows itself down, never a valid token that
//!   another connection of the same uid presents.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::config::LimitsConfig;

/// Watch streams open at once, all callers together.
pub const MAX_WATCHES: usize = 4096;
/// Of those, kept for the owner alone.
pub const OWNER_WATCHES: usize = 256;

/// How many agent connections vaultd serves, from its file limit: each costs two
/// descriptors (the socket, and a pidfd of the peer), and a reserve is kept for
/// everything else (the admin socket's connections, the database, the journal,
/// rotation hooks' pipes), so the owner is served whatever agents do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    pub total: usize,
    pub per_uid: usize,
}

/// Descriptors an agent connection holds.
const FDS_PER_CONNECTION: usize = 2;
/// Agent connections kept for the owner alone.
pub const OWNER_CONNECTIONS: usize = 16;

impl ConnectionCaps {
    /// For a process whose file limit is `nofile`.
    pub fn derive(config: &LimitsConfig, nofile: u64) -> ConnectionCaps {
        let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
        let reserve = (nofile / 4).clamp(64, 1024);
        let fit = nofile.saturating_sub(reserve) / FDS_PER_CONNECTION;
        let total = config.connections.unwrap_or(fit).max(OWNER_CONNECTIONS + 1);
        let per_uid = config.connections_per_uid.unwrap_or((total / 4).clamp(8, 1024)).max(1);
        ConnectionCaps { total, per_uid }
    }
}

/// Raises this process's soft limit on open files to its hard limit (systemd's
/// default soft limit, 1024, is low for a daemon whose callers each hold a
/// connection); returns the limit now in force.
pub fn raise_file_limit() -> std::io::Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(Resource::Nofile, rustix::process::Rlimit { current: limit.maximum, ..limit })?;
    }
    Ok(file_limit())
}

/// This process's soft limit on open files (unlimited: `u64::MAX`).
pub fn file_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX)
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64) -> Bucket {
        Bucket { tokens: burst, at: Instant::now() }
    }

    /// Takes `cost` tokens, or says how long until they are there. A cost over
    /// the burst is taken from a full bucket, which it leaves in debt: a caller
    /// can make such a request, just not often.
    fn take(&mut self, cost: f64, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
        let needed = cost.min(burst);
        if self.tokens >= needed {
            self.tokens -= cost;
            return Ok(());
        }
        Err(Duration::from_secs_f64((needed - self.tokens) / rate.max(f64::MIN_POSITIVE)))
    }

    fn give_back(&mut self, cost: f64, burst: f64) {
        self.tokens = (self.tokens + cost).min(burst);
    }
}

pub struct Limits {
    config: LimitsConfig,
    /// std Mutex: held for a few arithmetic operations, never across an await.
    global: Mutex<Bucket>,
    clients: Mutex<HashMap<String, Bucket>>,
}

/// Callers tracked at most; past it the idle ones are forgotten (full again).
const MAX_TRACKED: usize = 10_000;

impl Limits {
    pub fn new(config: LimitsConfig) -> Limits {
        Limits { config, global: Mutex::new(Bucket::full(config.global_burst)), clients: Mutex::default() }
    }

    /// A read of `cost` secrets by `key` (a client name, or `uid:N`; `None` for
    /// the owner): `Err(retry after)` when over a limit. What the client's limit
    /// refuses never reaches the global one; what the global one refuses is
    /// given back to the client.
    pub fn admit(&self, key: Option<&str>, cost: usize) -> Result<(), Duration> {
        let Some(key) = key else { return Ok(()) };
        let (now, c, cost) = (Instant::now(), self.config, cost.max(1) as f64);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= MAX_TRACKED && !clients.contains_key(key) {
            clients.retain(|_, b| b.tokens < c.client_burst - 1.0);
        }
        let client = clients.entry(key.to_owned()).or_insert_with(|| Bucket::full(c.client_burst));
        client.take(cost, c.client_rate, c.client_burst, now)?;
        let global =
            self.global.lock().unwrap_or_else(|p| p.into_inner()).take(cost, c.global_rate, c.global_burst, now);
        if global.is_err() {
            client.give_back(cost, c.client_burst);
        }
        global
    }
}

/// Slots of one kind: at most `per_key` held by one uid and `total` by all,
/// of which `reserved` only the owner (key `None`) may take. The owner has no
/// per-uid cap.
pub struct Slots {
    total: usize,
    per_key: usize,
    reserved: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    by_key: HashMap<u32, usize>,
    /// By everyone but the owner.
    others: usize,
    owner: usize,
}

/// Which cap refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The caller's own.
    Caller(usize),
    /// Everyone's together.
    All(usize),
}

/// A slot taken; given back when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    key: Option<u32>,
}

impl Slots {
    pub fn new(total: usize, per_key: usize, reserved: usize) -> Arc<Slots> {
        Arc::new(Slots { total, per_key, reserved: reserved.min(total), held: Mutex::default() })
    }

    /// A slot for `key` (a uid; `None` for the owner), if its caps allow.
    pub fn take(self: &Arc<Self>, key: Option<u32>) -> Result<Slot, Full> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let all = held.others + held.owner;
        match key {
            None if all >= self.total => return Err(Full::All(self.total)),
            None => held.owner += 1,
            Some(_) if held.others >= self.total - self.reserved || all >= self.total => {
                return Err(Full::All(self.total - self.reserved));
            }
            Some(uid) => {
                let mine = held.by_key.entry(uid).or_default();
                if *mine >= self.per_key {
                    return Err(Full::Caller(self.per_key));
                }
                *mine += 1;
                held.others += 1;
            }
        }
        Ok(Slot { slots: self.clone(), key })
    }

    /// Slots held now, by everyone.
    pub fn held(&self) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.others + held.owner
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        match self.key {
            None => held.owner -= 1,
            Some(uid) => {
                held.others -= 1;
                if let Some(mine) = held.by_key.get_mut(&uid) {
                    *mine -= 1;
                    if *mine == 0 {
                        held.by_key.remove(&uid);
                    }
                }
            }
        }
    }
}

/// Who presented a token: the connection, and the token's first characters.
/// Neither can be used to pause someone else: connections are not shared, and
/// a valid token's prefix is known only to whoever holds the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Presenter {
    Connection(u64),
    Prefix(u32, [u8; PREFIX_LEN]),
}

/// Characters of a token (after `vt_`) that key its pause.
pub const PREFIX_LEN: usize = 8;

impl Presenter {
    /// Whom a failure of `token`, shown on `connection` by `uid`, pauses.
    pub fn of(connection: u64, uid: u32, token: &crate::crypto::SecretBytes) -> [Presenter; 2] {
        let mut prefix = [0; PREFIX_LEN];
        let tail = token.expose().get(3..).unwrap_or_default();
        let n = tail.len().min(prefix.len());
        prefix[..n].copy_from_slice(&tail[..n]);
        [Presenter::Connection(connection), Presenter::Prefix(uid, prefix)]
    }
}

struct Failures {
    count: u32,
    until: Instant,
}

/// Failures before a presenter is made to wait, and the longest wait.
const FREE_FAILURES: u32 = 3;
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// The bad-token pause: after a few failures a presenter waits, twice as long
/// for each further one.
#[derive(Default)]
pub struct Pauses {
    failures: Mutex<HashMap<Presenter, Failures>>,
}

impl Pauses {
    /// `Err(retry after)` while any of `presenters` is paused.
    pub fn allowed(&self, presenters: &[Presenter]) -> Result<(), Duration> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match presenters.iter().filter_map(|p| failures.get(p)).map(|f| f.until).max() {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// A token the presenters showed was refused.
    pub fn failed(&self, presenters: &[Presenter]) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, f| f.until > now);
        }
        for presenter in presenters {
            let f = failures.entry(*presenter).or_insert(Failures { count: 0, until: now });
            f.count += 1;
            if f.count > FREE_FAILURES {
                let pause = Duration::from_millis(250).saturating_mul(1 << (f.count - FREE_FAILURES).min(16));
                f.until = now + pause.min(MAX_PAUSE);
            }
        }
    }

    /// Counts how a request with a token the presenters showed ended.
    /// Guessing is what the pause slows; a token vaultd knows but no longer
    /// honours is refused each time and pauses nothing, so an agent that
    /// showed its revoked token a few times is served with its new one.
    pub fn settle<T>(&self, presenters: &[Presenter], result: &Result<T, crate::vault::VaultError>) {
        use crate::vault::VaultError;
        match result {
            Err(VaultError::TokenUnknown) => self.failed(presenters),
            Err(VaultError::TokenRefused) => {}
            // Sealed: the token was not looked at.
            Err(VaultError::Sealed | VaultError::Uninitialized) => {}
            _ => self.succeeded(presenters),
        }
    }

    /// A token they showed was good.
    pub fn succeeded(&self, presenters: &[Presenter]) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for presenter in presenters {
            failures.remove(presenter);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn buckets_refill_at_their_rate() {
        let mut b = Bucket::full(2.0);
        let t0 = Instant::now();
        assert!(b.take(1.0, 10.0, 2.0, t0).is_ok());
        assert!(b.take(1.0, 10.0, 2.0, t0).is_ok());
        let wait = b.take(1.0, 10.0, 2.0, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::from_millis(90), "{wait:?}");
        assert!(b.take(1.0, 10.0, 2.0, t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn a_read_costs_what_it_names() {
        let limits = Limits::new(LimitsConfig { client_rate: 1.0, client_burst: 10.0, ..LimitsConfig::default() });
        assert!(limits.admit(Some("batch"), 6).is_ok());
        let wait = limits.admit(Some("batch"), 6).unwrap_err();
        assert!(wait > Duration::from_secs(1), "4 tokens left, 6 wanted: {wait:?}");
        assert!(limits.admit(Some("batch"), 4).is_ok());
        // More than the burst is taken from a full bucket, leaving a debt.
        assert!(limits.admit(Some("big"), 25).is_ok());
        assert!(limits.admit(Some("big"), 1).unwrap_err() > Duration::from_secs(15));
    }

    #[test]
    fn a_client_over_its_limit_does_not_affect_another() {
        let limits = Limits::new(LimitsConfig { client_rate: 1.0, client_burst: 3.0, ..LimitsConfig::default() });
        for _ in 0..3 {
            assert!(limits.admit(Some("greedy"), 1).is_ok());
        }
        assert!(limits.admit(Some("greedy"), 1).is_err());
        assert!(limits.admit(Some("polite"), 1).is_ok());
        assert!(limits.admit(None, 1).is_ok(), "the owner is exempt");
    }

    #[test]
    fn what_a_client_limit_refuses_spends_nothing_of_the_global_one() {
        let config = LimitsConfig {
            client_rate: 1.0,
            client_burst: 5.0,
            global_rate: 1.0,
            global_burst: 10.0,
            ..LimitsConfig::default()
        };
        let limits = Limits::new(config);
        let served = (0..1000).filter(|_| limits.admit(Some("flood"), 1).is_ok()).count();
        assert_eq!(served, 5);
        for _ in 0..5 {
            assert!(limits.admit(Some("other"), 1).is_ok(), "the flood spent the global budget");
        }
        assert!(limits.admit(Some("third"), 1).is_err(), "the global budget is spent now");
        // What the global limit refused is given back to the client.
        let limits = Limits::new(LimitsConfig { global_burst: 1.0, global_rate: 1.0, ..config });
        assert!(limits.admit(Some("a"), 1).is_ok());
        assert!(limits.admit(Some("b"), 1).is_err());
        assert_eq!(limits.clients.lock().unwrap()["b"].tokens, 5.0);
        for _ in 0..100 {
            assert!(limits.admit(None, 1000).is_ok(), "the owner is exempt from the global limit too");
        }
    }

    #[test]
    fn slots_are_capped_per_uid_and_in_all_with_some_for_the_owner() {
        let slots = Slots::new(10, 3, 2);
        let mine: Vec<_> = (0..3).map(|_| slots.take(Some(7)).unwrap()).collect();
        assert_eq!(slots.take(Some(7)).err(), Some(Full::Caller(3)));
        let others: Vec<_> = (0..5).map(|i| slots.take(Some(100 + i)).unwrap()).collect();
        assert_eq!(slots.take(Some(200)).err(), Some(Full::All(8)), "two are kept for the owner");
        let owner: Vec<_> = (0..2).map(|_| slots.take(None).unwrap()).collect();
        assert_eq!(slots.take(None).err(), Some(Full::All(10)));
        assert_eq!(slots.held(), 10);
        drop(mine);
        assert!(slots.take(Some(7)).is_ok(), "dropped slots are given back");
        drop((others, owner));
        assert_eq!(slots.held(), 0);
        assert!(slots.held.lock().unwrap().by_key.is_empty(), "no uid is remembered with nothing held");
    }

    #[test]
    fn the_limits_section_parses_with_defaults_for_what_it_leaves_out() {
        let text = "[limits]\nconnections_per_uid = 10\nidle_timeout = \"30s\"";
        let limits = toml::from_str::<crate::config::Config>(text).unwrap().limits;
        assert_eq!(limits.connections_per_uid, Some(10));
        assert_eq!(limits.idle_timeout, Duration::from_secs(30));
        assert_eq!(limits.connections, None);
        assert_eq!(limits.handshake_timeout, LimitsConfig::default().handshake_timeout);
        assert!(toml::from_str::<crate::config::Config>("[limits]\nhandshake_timeout = \"soon\"").is_err());
        assert!(toml::from_str::<crate::config::Config>("[limits]\nsockets = 1").is_err());
    }

    #[test]
    fn connection_caps_follow_the_file_limit() {
        let config = LimitsConfig::default();
        assert_eq!(ConnectionCaps::derive(&config, 1024), ConnectionCaps { total: 384, per_uid: 96 });
        assert_eq!(ConnectionCaps::derive(&config, 65536), ConnectionCaps { total: 32256, per_uid: 1024 });
        let set = LimitsConfig { connections: Some(100), connections_per_uid: Some(5), ..config };
        assert_eq!(ConnectionCaps::derive(&set, 1024), ConnectionCaps { total: 100, per_uid: 5 });
    }

    #[test]
    fn bad_tokens_pause_their_connection_and_prefix_only() {
        let pauses = Pauses::default();
        let (conn, other_conn) = (Presenter::Connection(1), Presenter::Connection(2));
        let (bad, good) = (Presenter::Prefix(7, *b"deadbeef"), Presenter::Prefix(7, *b"0123abcd"));
        for _ in 0..FREE_FAILURES {
            pauses.failed(&[conn, bad]);
        }
        assert!(pauses.allowed(&[conn, bad]).is_ok());
        pauses.failed(&[conn, bad]);
        assert!(pauses.allowed(&[conn, good]).is_err(), "the connection is paused");
        assert!(pauses.allowed(&[other_conn, bad]).is_err(), "the prefix is paused");
        assert!(pauses.allowed(&[other_conn, good]).is_ok(), "another connection's valid token is not");
        pauses.succeeded(&[conn, bad]);
        assert!(pauses.allowed(&[conn, bad]).is_ok());
    }
}
