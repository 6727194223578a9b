//! Rate limits: a token bucket per client (or per uid for callers with no client)
//! and one for everyone, plus a growing pause for a uid that keeps presenting bad
//! tokens. The vault's owner is exempt from the per-client limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `[limits]` in the config.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Reads per second each client may make, sustained, and in a burst.
    pub client_rate: f64,
    pub client_burst: f64,
    /// Reads per second for all callers together.
    pub global_rate: f64,
    pub global_burst: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { client_rate: 100.0, client_burst: 200.0, global_rate: 100_000.0, global_burst: 100_000.0 }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64) -> Bucket {
        Bucket { tokens: burst, at: Instant::now() }
    }

    /// Takes one token, or says how long until one is there.
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / rate.max(f64::MIN_POSITIVE)))
    }
}

struct Failures {
    count: u32,
    until: Instant,
}

pub struct Limits {
    config: LimitsConfig,
    /// std Mutex: held for a few arithmetic operations, never across an await.
    global: Mutex<Bucket>,
    clients: Mutex<HashMap<String, Bucket>>,
    failures: Mutex<HashMap<u32, Failures>>,
}

/// Failures before a uid is made to wait, and the longest wait.
const FREE_FAILURES: u32 = 3;
const MAX_PAUSE: Duration = Duration::from_secs(60);
/// Clients tracked at most; past it the idle ones are forgotten (full again).
const MAX_TRACKED: usize = 10_000;

impl Limits {
    pub fn new(config: LimitsConfig) -> Limits {
        Limits {
            config,
            global: Mutex::new(Bucket::full(config.global_burst)),
            clients: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    /// One read by `key` (a client name, or `uid:N`; `None` for the owner):
    /// `Err(retry after)` when over a limit.
    pub fn admit(&self, key: Option<&str>) -> Result<(), Duration> {
        let now = Instant::now();
        let c = self.config;
        self.global.lock().unwrap_or_else(|p| p.into_inner()).take(c.global_rate, c.global_burst, now)?;
        let Some(key) = key else { return Ok(()) };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= MAX_TRACKED && !clients.contains_key(key) {
            clients.retain(|_, b| b.tokens < c.client_burst - 1.0);
        }
        clients.entry(key.to_owned()).or_insert_with(|| Bucket::full(c.client_burst)).take(
            c.client_rate,
            c.client_burst,
            now,
        )
    }

    /// `Err(retry after)` while `uid` is paused for failed authentication.
    pub fn auth_allowed(&self, uid: u32) -> Result<(), Duration> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(&uid) {
            Some(f) if f.until > Instant::now() => Err(f.until - Instant::now()),
            _ => Ok(()),
        }
    }

    /// A failed authentication by `uid`: after a few, each doubles the pause.
    pub fn auth_failed(&self, uid: u32) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= MAX_TRACKED {
            let now = Instant::now();
            failures.retain(|_, f| f.until > now);
        }
        let f = failures.entry(uid).or_insert(Failures { count: 0, until: Instant::now() });
        f.count += 1;
        if f.count > FREE_FAILURES {
            let pause = Duration::from_millis(250).saturating_mul(1 << (f.count - FREE_FAILURES).min(16));
            f.until = Instant::now() + pause.min(MAX_PAUSE);
        }
    }

    pub fn auth_succeeded(&self, uid: u32) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&uid);
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
        assert!(b.take(10.0, 2.0, t0).is_ok());
        assert!(b.take(10.0, 2.0, t0).is_ok());
        let wait = b.take(10.0, 2.0, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::from_millis(90), "{wait:?}");
        assert!(b.take(10.0, 2.0, t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn a_client_over_its_limit_does_not_affect_another() {
        let limits = Limits::new(LimitsConfig { client_rate: 1.0, client_burst: 3.0, ..LimitsConfig::default() });
        for _ in 0..3 {
            assert!(limits.admit(Some("greedy")).is_ok());
        }
        assert!(limits.admit(Some("greedy")).is_err());
        assert!(limits.admit(Some("polite")).is_ok());
        assert!(limits.admit(None).is_ok(), "the owner is exempt from the per-client limit");
    }

    #[test]
    fn repeated_failures_pause_the_uid() {
        let limits = Limits::new(LimitsConfig::default());
        for _ in 0..FREE_FAILURES {
            limits.auth_failed(7);
        }
        assert!(limits.auth_allowed(7).is_ok());
        limits.auth_failed(7);
        assert!(limits.auth_allowed(7).is_err());
        assert!(limits.auth_allowed(8).is_ok());
        limits.auth_succeeded(7);
        assert!(limits.auth_allowed(7).is_ok());
    }
}
