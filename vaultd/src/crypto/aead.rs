//! AES-256-GCM with a fresh random 96-bit nonce per message.
//!
//! Sealed form: `nonce (12) || ciphertext || tag (16)`. Callers put their own format
//! byte and key term in front and bind both through the associated data.
//!
//! ring's expanded key schedule cannot be wiped from outside, so it is built per
//! call (or per request, for a batch of values: [`Cipher`]) and dropped at once;
//! the long-lived copy of every key is the zeroizing [`Key`]. Building it costs
//! well under a microsecond.

use super::{CryptoError, Key, SecretBytes, fill_random};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

pub(super) const OVERHEAD: usize = NONCE_LEN + 16;

fn ring_key(key: &Key) -> LessSafeKey {
    // A 32-byte key is always valid for AES-256-GCM.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key.0[..]).expect("32-byte AES-256 key"))
}

pub(super) fn seal(key: &Key, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = ring_key(key)
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut out[NONCE_LEN..])
        .map_err(|_| CryptoError::DecryptionFailed)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

pub(super) fn open(key: &Key, aad: &[u8], sealed: &[u8]) -> Result<SecretBytes, CryptoError> {
    Cipher::new(key).open(aad, sealed)
}

/// A key's expanded schedule, for opening several values in a row (one
/// request's batch); dropped with it.
pub(super) struct Cipher(LessSafeKey);

impl Cipher {
    pub(super) fn new(key: &Key) -> Cipher {
        Cipher(ring_key(key))
    }

    pub(super) fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<SecretBytes, CryptoError> {
        if sealed.len() < OVERHEAD {
            return Err(CryptoError::DecryptionFailed);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::DecryptionFailed)?;
        // Decrypt inside a zeroizing buffer so a failed or finished open leaves no plaintext.
        let mut buf = SecretBytes::new(body.to_vec());
        let len =
            self.0.open_in_place(nonce, Aad::from(aad), &mut buf.0).map_err(|_| CryptoError::DecryptionFailed)?.len();
        buf.0.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_every_tamper_fails() {
        let key = Key::random().unwrap();
        let sealed = seal(&key, b"aad", b"value").unwrap();
        assert_eq!(open(&key, b"aad", &sealed).unwrap().expose(), b"value");
        assert_eq!(open(&key, b"other", &sealed).err(), Some(CryptoError::DecryptionFailed));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(open(&key, b"aad", &bad).err(), Some(CryptoError::DecryptionFailed), "byte {i}");
        }
        for len in 0..sealed.len() {
            assert!(open(&key, b"aad", &sealed[..len]).is_err(), "truncated to {len}");
        }
        let other = Key::random().unwrap();
        assert!(open(&other, b"aad", &sealed).is_err());
    }

    #[test]
    fn nonces_are_fresh() {
        let key = Key::random().unwrap();
        let a = seal(&key, b"", b"same").unwrap();
        let b = seal(&key, b"", b"same").unwrap();
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
    }
}
