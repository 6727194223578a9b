//! HMAC-SHA256 under subkeys derived from the root key with HKDF, one label per
//! purpose, so a key used to chain the audit log can never verify anything else.

use super::Key;
use ring::{hkdf, hmac};
use zeroize::Zeroizing;

pub const MAC_LEN: usize = 32;

/// A MAC over audit content; not secret.
pub type Mac = [u8; MAC_LEN];

pub(super) const AUDIT_LABEL: &[u8] = b"vaultd/v1/audit-chain";
pub(super) const DIGEST_LABEL: &[u8] = b"vaultd/v1/value-digest";
pub(super) const TOKEN_LABEL: &[u8] = b"vaultd/v1/token-hash";
pub(super) const BACKUP_LABEL: &[u8] = b"vaultd/v1/backup";
pub(super) const STATE_LABEL: &[u8] = b"vaultd/v1/state";

struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// HKDF-SHA256(salt = label domain, ikm = root key, info = label) → a 256-bit subkey.
pub(super) fn derive(root: &Key, label: &[u8]) -> Key {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"vaultd/v1/subkey").extract(&root.0[..]);
    let mut out = Zeroizing::new([0u8; 32]);
    // Expanding 32 bytes of SHA-256 output never fails.
    prk.expand(&[label], Len32).and_then(|okm| okm.fill(&mut out[..])).expect("HKDF-SHA256 expand to 32 bytes");
    Key(out)
}

/// HMAC over the concatenation of `parts`.
pub(super) fn sign(key: &Key, parts: &[&[u8]]) -> Mac {
    Signer::new(key).sign(parts)
}

/// A key made ready to sign several messages in a row (ring's inner and outer
/// hash states, two SHA-256 blocks to make). Like every ring key it cannot be
/// wiped, so it is made for one batch of MACs and dropped with it.
pub(super) struct Signer(hmac::Key);

impl Signer {
    pub(super) fn new(key: &Key) -> Signer {
        Signer(hmac::Key::new(hmac::HMAC_SHA256, &key.0[..]))
    }

    /// HMAC over the concatenation of `parts`.
    pub(super) fn sign(&self, parts: &[&[u8]]) -> Mac {
        let mut ctx = hmac::Context::with_key(&self.0);
        for part in parts {
            ctx.update(part);
        }
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

/// Constant-time check of a MAC over `parts`.
pub(super) fn verify(key: &Key, parts: &[&[u8]], expected: &[u8]) -> bool {
    let data: Vec<u8> = parts.concat();
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, &key.0[..]), &data, expected).is_ok()
}

/// An HMAC computed over data fed piece by piece (a backup file as it streams).
pub struct StreamMac(hmac::Context);

impl StreamMac {
    pub(super) fn new(key: &Key) -> StreamMac {
        StreamMac(hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &key.0[..])))
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> Mac {
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(self.0.sign().as_ref());
        out
    }

    /// Whether the MAC of everything fed is `expected` (constant time).
    pub fn matches(self, expected: &[u8]) -> bool {
        let mac = self.finish();
        // Accumulate every difference instead of stopping at the first, so the
        // time taken says nothing about where a forged MAC went wrong.
        expected.len() == MAC_LEN && mac.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn labels_give_independent_keys_and_macs_verify() {
        let root = Key::random().unwrap();
        let a = derive(&root, AUDIT_LABEL);
        let b = derive(&root, DIGEST_LABEL);
        assert_ne!(a.0, b.0);
        assert_eq!(derive(&root, AUDIT_LABEL).0, a.0);
        let mac = sign(&a, &[b"ab", b"c"]);
        assert!(verify(&a, &[b"a", b"bc"], &mac));
        assert!(!verify(&b, &[b"abc"], &mac));
        assert!(!verify(&a, &[b"abd"], &mac));
    }
}
