//! Passphrase → key with Argon2id (RFC 9106, second recommended option).
//!
//! The parameters are stored in the vault header, which is untrusted input: they
//! are checked against a floor (OWASP: m = 19 MiB, t = 2) and a ceiling (so a
//! doctored header cannot make unlock eat all memory or spin for hours).

use super::{CryptoError, Key};
use zeroize::Zeroizing;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

/// Set to `1` in a **debug build** to create and open vaults with a trivially cheap
/// KDF, so end-to-end tests do not spend seconds per unlock. Release builds ignore
/// it, and vaultd prints a warning banner whenever it is in effect.
pub const INSECURE_TEST_PROFILE_ENV: &str = "VAULTD_INSECURE_TEST_KDF";

impl KdfParams {
    pub const DEFAULT: KdfParams = KdfParams { memory_kib: 64 * 1024, iterations: 3, parallelism: 4 };
    const FLOOR: KdfParams = KdfParams { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 };
    const CEILING: KdfParams = KdfParams { memory_kib: 2 * 1024 * 1024, iterations: 64, parallelism: 16 };
    /// Only accepted while [`insecure_test_profile_enabled`] is true.
    const INSECURE_TEST: KdfParams = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };

    /// The parameters for a new vault: the default, or the test profile when enabled.
    pub fn for_new_vault() -> KdfParams {
        if insecure_test_profile_enabled() { Self::INSECURE_TEST } else { Self::DEFAULT }
    }

    pub fn is_insecure_test_profile(&self) -> bool {
        *self == Self::INSECURE_TEST
    }

    /// Refuses parameters outside [floor, ceiling].
    pub fn check(&self) -> Result<(), CryptoError> {
        if self.is_insecure_test_profile() && insecure_test_profile_enabled() {
            return Ok(());
        }
        let (lo, hi) = (Self::FLOOR, Self::CEILING);
        if self.memory_kib < lo.memory_kib || self.iterations < lo.iterations || self.parallelism < lo.parallelism {
            return Err(CryptoError::KdfParams("below the minimum (m = 19 MiB, t = 2, p = 1)"));
        }
        if self.memory_kib > hi.memory_kib || self.iterations > hi.iterations || self.parallelism > hi.parallelism {
            return Err(CryptoError::KdfParams("above the maximum (m = 2 GiB, t = 64, p = 16)"));
        }
        Ok(())
    }
}

/// True when the insecure test profile is switched on (debug builds only).
pub fn insecure_test_profile_enabled() -> bool {
    cfg!(debug_assertions) && std::env::var_os(INSECURE_TEST_PROFILE_ENV).is_some_and(|v| v == "1")
}

pub(super) fn derive(passphrase: &[u8], salt: &[u8], params: KdfParams) -> Result<Key, CryptoError> {
    params.check()?;
    let argon_params = argon2::Params::new(params.memory_kib, params.iterations, params.parallelism, Some(32))
        .map_err(|_| CryptoError::KdfParams("rejected by argon2"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon_params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, &mut out[..])
        .map_err(|_| CryptoError::KdfParams("rejected by argon2"))?;
    Ok(Key(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_accepted_and_bounds_are_enforced() {
        assert_eq!(KdfParams::DEFAULT.check(), Ok(()));
        assert_eq!(KdfParams::FLOOR.check(), Ok(()));
        assert_eq!(KdfParams::CEILING.check(), Ok(()));
        let d = KdfParams::DEFAULT;
        let below = [
            KdfParams { memory_kib: 19 * 1024 - 1, ..d },
            KdfParams { iterations: 1, ..d },
            KdfParams { parallelism: 0, ..d },
        ];
        let above = [
            KdfParams { memory_kib: u32::MAX, ..d },
            KdfParams { iterations: 65, ..d },
            KdfParams { parallelism: 17, ..d },
        ];
        for p in below.iter().chain(&above) {
            assert!(matches!(p.check(), Err(CryptoError::KdfParams(_))), "{p:?}");
        }
    }

    #[test]
    fn test_profile_is_refused_unless_switched_on() {
        // Unit tests never set the variable; the profile must then be refused like
        // any other too-weak header.
        if !insecure_test_profile_enabled() {
            assert!(KdfParams::INSECURE_TEST.check().is_err());
            assert_eq!(KdfParams::for_new_vault(), KdfParams::DEFAULT);
        }
    }

    mod header {
        use super::*;
        use crate::crypto::{Header, SecretBytes, Unlocked};
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Stored parameters are accepted exactly within [floor, ceiling].
            #[test]
            fn check_accepts_exactly_the_bounds(m in any::<u32>(), t in any::<u32>(), p in any::<u32>()) {
                let params = KdfParams { memory_kib: m, iterations: t, parallelism: p };
                let (lo, hi) = (KdfParams::FLOOR, KdfParams::CEILING);
                let inside = (lo.memory_kib..=hi.memory_kib).contains(&m)
                    && (lo.iterations..=hi.iterations).contains(&t)
                    && (lo.parallelism..=hi.parallelism).contains(&p);
                prop_assert_eq!(params.check().is_ok(), inside || (params.is_insecure_test_profile() && insecure_test_profile_enabled()));
            }

            /// A header asking for more than the ceiling (or a salt of the wrong
            /// length) is refused before any Argon2 work: unlock answers at once.
            #[test]
            fn oversize_headers_are_refused_up_front(
                m in (KdfParams::CEILING.memory_kib + 1)..,
                t in 1u32..,
                p in 1u32..,
                salt in proptest::collection::vec(any::<u8>(), 0..40),
                wrapped in proptest::collection::vec(any::<u8>(), 0..80),
            ) {
                let header = Header { kdf: KdfParams { memory_kib: m, iterations: t, parallelism: p }, salt, wrapped_root: wrapped };
                let started = std::time::Instant::now();
                let r = Unlocked::open(&SecretBytes::new(b"pass".to_vec()), &header, &[]);
                prop_assert!(matches!(r, Err(CryptoError::KdfParams(_))));
                prop_assert!(started.elapsed() < std::time::Duration::from_millis(100));
            }
        }
    }
}
