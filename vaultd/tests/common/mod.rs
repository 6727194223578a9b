//! What the property tests share: a small seeded generator, and a run's seed
//! and number of trials from the environment (`{PREFIX}_SEED` replays a run,
//! `{PREFIX}_TRIALS` runs more).

/// Xorshift64*: enough to choose operations, and the same seed replays a run.
pub(crate) struct Rng(u64);

impl Rng {
    /// Xorshift needs a state other than 0; every seed gives its own run.
    pub(crate) fn new(seed: u64) -> Rng {
        Rng((seed ^ 0x9e37_79b9_7f4a_7c15).max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    // Each test crate compiles this module anew, and not every one chooses so.
    #[allow(dead_code)]
    pub(crate) fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    #[allow(dead_code)]
    pub(crate) fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
}

/// `{prefix}_SEED`, else one from the clock.
pub(crate) fn seed(prefix: &str) -> u64 {
    std::env::var(format!("{prefix}_SEED")).ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    })
}

/// `{prefix}_TRIALS`, else `default`.
pub(crate) fn trials(prefix: &str, default: u64) -> u64 {
    std::env::var(format!("{prefix}_TRIALS")).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}
