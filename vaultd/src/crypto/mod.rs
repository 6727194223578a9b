//! The only code that touches ring and argon2 (ARCHITECTURE §3).
//!
//! Passphrase → Argon2id ([`kdf`]) → wraps a random root key → the root key wraps a
//! keyring of numbered key terms ([`keyring`]) → each secret version is sealed with
//! AES-256-GCM ([`aead`]) under the newest term. Unlocking yields an [`Unlocked`]
//! proof value; nothing decrypts without one.

mod aead;
pub mod kdf;
mod keyring;
mod mac;

pub use kdf::KdfParams;
pub use keyring::{Header, Unlocked, VersionId, WrappedTerm, ciphertext_term, create, rekey};
pub use mac::{MAC_LEN, Mac, StreamMac};

use zeroize::Zeroizing;

/// Bytes that are secret: a value or a passphrase. Zeroized on drop; `Debug` prints
/// `[redacted]`; the bytes are reached only through [`SecretBytes::expose`].
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret bytes. Named so every use is easy to find in review.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A 256-bit key. No `Debug`, no `Clone`; wiped on drop.
pub(crate) struct Key(Zeroizing<[u8; 32]>);

impl Key {
    fn random() -> Result<Self, CryptoError> {
        let mut key = Key(Zeroizing::new([0; 32]));
        fill_random(&mut key.0[..])?;
        Ok(key)
    }

    fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let mut key = Key(Zeroizing::new([0; 32]));
        if bytes.len() != 32 {
            return Err(CryptoError::DecryptionFailed);
        }
        key.0.copy_from_slice(bytes);
        Ok(key)
    }
}

/// What can go wrong in crypto. Every failed decryption is the one opaque
/// [`CryptoError::DecryptionFailed`]: no hint about which check failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("decryption failed")]
    DecryptionFailed,
    #[error("wrong passphrase")]
    WrongPassphrase,
    #[error("key derivation parameters refused: {0}")]
    KdfParams(&'static str),
    #[error("key term {0} is not loaded")]
    UnknownTerm(u32),
    #[error("the system random number generator failed")]
    Random,
}

pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new().fill(buf).map_err(|_| CryptoError::Random)
}

/// SHA-256 of everything `reader` yields, as lowercase hex (executable pinning).
pub fn sha256_reader(mut reader: impl std::io::Read) -> std::io::Result<String> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf)? {
            0 => break,
            n => ctx.update(&buf[..n]),
        }
    }
    Ok(hex(ctx.finish().as_ref()))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The MAC whose [`hex`] `text` is, if it is one.
pub fn unhex(text: &str) -> Option<Mac> {
    let mut mac = [0; MAC_LEN];
    if text.len() != 2 * mac.len() {
        return None;
    }
    for (byte, pair) in mac.iter_mut().zip(text.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(mac)
}

/// An unkeyed SHA-256 computed piece by piece: catches accidental damage to a
/// backup file where no key is at hand (restore).
pub struct Checksum(ring::digest::Context);

impl Default for Checksum {
    fn default() -> Self {
        Checksum(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Checksum {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

/// Fresh random bytes (e.g. the `--dev` passphrase).
pub fn random_secret(len: usize) -> Result<SecretBytes, CryptoError> {
    let mut bytes = vec![0; len];
    fill_random(&mut bytes)?;
    Ok(SecretBytes::new(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_bytes_debug_is_redacted() {
        let s = SecretBytes::new(b"sk-ant-secret".to_vec());
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(s.expose(), b"sk-ant-secret");
    }
}
