//! Rotation policy: who makes a secret's next value, how often, and how long the
//! old one stays readable (ARCHITECTURE §6). The state machine that applies it lives in
//! `vault::rotate`; the hook protocol in [`hook`].

pub mod hook;

use crate::crypto::{self, CryptoError, SecretBytes};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Who makes the next value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotator {
    /// The operator supplies it (`vaultctl rotate NAME` reads it from stdin).
    Manual,
    /// vaultd draws a random value.
    Generate(Generate),
    /// A hook program creates it at the provider (see [`hook`]).
    Exec(PathBuf),
}

/// `generate[:LEN[:CHARSET]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generate {
    pub len: usize,
    pub charset: Charset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// `A-Za-z0-9`: survives every shell, URL and config format.
    Alnum,
    Hex,
    /// `A-Za-z0-9-_`.
    Base64Url,
    /// Every printable ASCII character but space.
    Printable,
}

impl Charset {
    fn alphabet(self) -> &'static [u8] {
        match self {
            Charset::Alnum => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            Charset::Hex => b"0123456789abcdef",
            Charset::Base64Url => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
            Charset::Printable => {
                b"!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~"
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Charset::Alnum => "alnum",
            Charset::Hex => "hex",
            Charset::Base64Url => "base64url",
            Charset::Printable => "printable",
        }
    }
}

/// A generated value's length bounds: below 16 characters is guessable.
pub const GENERATE_LEN: std::ops::RangeInclusive<usize> = 16..=4096;

impl Default for Generate {
    fn default() -> Self {
        Generate { len: 32, charset: Charset::Alnum }
    }
}

impl Generate {
    /// A uniformly random value: each character from the OS RNG by rejection
    /// sampling (no modulo bias).
    pub fn value(&self) -> Result<SecretBytes, CryptoError> {
        let alphabet = self.charset.alphabet();
        // The largest multiple of the alphabet's size that fits a byte.
        let limit = 256 - 256 % alphabet.len();
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(self.len));
        while out.len() < self.len {
            let random = crypto::random_secret(self.len * 2)?;
            let missing = self.len - out.len();
            let usable = random.expose().iter().filter(|&&b| usize::from(b) < limit);
            out.extend(usable.map(|&b| alphabet[usize::from(b) % alphabet.len()]).take(missing));
        }
        Ok(SecretBytes::new(std::mem::take(&mut *out)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotatorError {
    #[error("unknown rotator (expected manual, generate[:LEN[:CHARSET]] or exec:/absolute/path)")]
    Unknown,
    #[error("generate length must be {}..={} characters", GENERATE_LEN.start(), GENERATE_LEN.end())]
    Length,
    #[error("unknown charset (expected alnum, hex, base64url or printable)")]
    Charset,
    #[error("the hook path must be absolute")]
    RelativeHook,
}

/// What follows a stored rotator when its new values are tested by the
/// credential broker's built-in check of a route (`--check ROUTE`) instead of
/// a hook's test step: `ROTATOR;check=ROUTE`.
const CHECK: &str = ";check=";

/// A stored rotator split into who makes the value and the route whose
/// provider check tests it, if any.
pub fn split_check(stored: &str) -> (&str, Option<&str>) {
    match stored.rsplit_once(CHECK) {
        Some((rotator, route)) => (rotator, Some(route)),
        None => (stored, None),
    }
}

/// `rotator` tested by the check of `route`, as stored.
pub fn with_check(rotator: &str, route: Option<&str>) -> String {
    match route {
        Some(route) => format!("{rotator}{CHECK}{route}"),
        None => rotator.to_owned(),
    }
}

impl Rotator {
    /// Whether the stored spelling `rotator` names a hook (whose steps the
    /// provider takes part in, so old values owe a revoke-old run).
    pub fn is_hook(rotator: &str) -> bool {
        matches!(rotator.parse(), Ok(Rotator::Exec(_)))
    }

    /// Whether the stored spelling `rotator` is the manual one (the operator
    /// supplies each new value).
    pub fn is_manual(rotator: &str) -> bool {
        matches!(rotator.parse(), Ok(Rotator::Manual))
    }
}

impl FromStr for Rotator {
    type Err = RotatorError;

    /// Who makes the value; a `;check=ROUTE` after it is [`split_check`]'s.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (s, _) = split_check(s);
        if s == "manual" {
            return Ok(Rotator::Manual);
        }
        if let Some(path) = s.strip_prefix("exec:") {
            let path = PathBuf::from(path);
            return if path.is_absolute() { Ok(Rotator::Exec(path)) } else { Err(RotatorError::RelativeHook) };
        }
        let mut parts = s.split(':');
        if parts.next() != Some("generate") {
            return Err(RotatorError::Unknown);
        }
        let mut spec = Generate::default();
        if let Some(len) = parts.next() {
            spec.len = len.parse().ok().filter(|n| GENERATE_LEN.contains(n)).ok_or(RotatorError::Length)?;
        }
        if let Some(charset) = parts.next() {
            spec.charset = match charset {
                "alnum" => Charset::Alnum,
                "hex" => Charset::Hex,
                "base64url" => Charset::Base64Url,
                "printable" => Charset::Printable,
                _ => return Err(RotatorError::Charset),
            };
        }
        if parts.next().is_some() {
            return Err(RotatorError::Unknown);
        }
        Ok(Rotator::Generate(spec))
    }
}

impl std::fmt::Display for Rotator {
    /// The canonical spelling, as stored and shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rotator::Manual => f.write_str("manual"),
            Rotator::Generate(g) => write!(f, "generate:{}:{}", g.len, g.charset.name()),
            Rotator::Exec(path) => write!(f, "exec:{}", path.display()),
        }
    }
}

pub use crate::config::RotationConfig;

/// A random delay added to each scheduled due time, so secrets put together (or
/// a fleet of vaults) do not all rotate in the same second: up to a tenth of the
/// period, at most ten minutes.
pub fn jitter(every: Duration) -> Duration {
    let max = (every / 10).min(Duration::from_secs(600));
    let mut bytes = [0u8; 8];
    if crypto::fill_random(&mut bytes).is_err() || max.is_zero() {
        return Duration::ZERO;
    }
    let millis = u64::from_le_bytes(bytes) % (max.as_millis() as u64 + 1);
    Duration::from_millis(millis)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_and_prints_canonically() {
        for (text, canonical) in [
            ("manual", "manual"),
            ("generate", "generate:32:alnum"),
            ("generate:48", "generate:48:alnum"),
            ("generate:64:hex", "generate:64:hex"),
            ("exec:/usr/lib/vaultd/hooks/telegram", "exec:/usr/lib/vaultd/hooks/telegram"),
        ] {
            assert_eq!(text.parse::<Rotator>().unwrap().to_string(), canonical);
        }
        assert_eq!("exec:hooks/x".parse::<Rotator>(), Err(RotatorError::RelativeHook));
        assert_eq!("generate:8".parse::<Rotator>(), Err(RotatorError::Length));
        assert_eq!("generate:32:emoji".parse::<Rotator>(), Err(RotatorError::Charset));
        assert_eq!("generate:32:hex:x".parse::<Rotator>(), Err(RotatorError::Unknown));
        assert_eq!("aws".parse::<Rotator>(), Err(RotatorError::Unknown));
    }

    #[test]
    fn a_check_follows_the_rotator() {
        assert_eq!(split_check("manual;check=telegram"), ("manual", Some("telegram")));
        assert_eq!(split_check("exec:/hooks/x"), ("exec:/hooks/x", None));
        assert_eq!(with_check("exec:/hooks/x", Some("bot")), "exec:/hooks/x;check=bot");
        assert_eq!("exec:/hooks/x;check=bot".parse::<Rotator>(), Ok(Rotator::Exec("/hooks/x".into())));
    }

    #[test]
    fn generated_values_have_the_length_and_alphabet_asked_for() {
        for charset in [Charset::Alnum, Charset::Hex, Charset::Base64Url, Charset::Printable] {
            let spec = Generate { len: 100, charset };
            let a = spec.value().unwrap();
            assert_eq!(a.len(), 100);
            assert!(a.expose().iter().all(|b| charset.alphabet().contains(b)));
            assert_ne!(a.expose(), spec.value().unwrap().expose());
        }
    }

    #[test]
    fn jitter_stays_within_a_tenth_and_ten_minutes() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_secs(100)) <= Duration::from_secs(10));
            assert!(jitter(Duration::from_secs(86_400 * 30)) <= Duration::from_secs(600));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
