//! The key hierarchy: passphrase key → root key → numbered key terms → versions.
//!
//! Every stored blob starts with a format byte; a secret version's ciphertext also
//! carries the key term that sealed it. The associated data binds each blob to
//! where it belongs (domain label, environment, name, version, term), so a
//! ciphertext copied or swapped into another row fails to decrypt.

use super::{CryptoError, KdfParams, Key, Mac, SecretBytes, aead, kdf, mac};
use std::collections::BTreeMap;

const FORMAT_V1: u8 = 1;
const SALT_LEN: usize = 16;

/// The non-secret half of the key hierarchy, as stored in the vault header.
pub struct Header {
    pub kdf: KdfParams,
    pub salt: Vec<u8>,
    pub wrapped_root: Vec<u8>,
}

/// A key term's key, sealed under the root key.
pub struct WrappedTerm {
    pub term: u32,
    pub wrapped: Vec<u8>,
}

/// Which secret version a ciphertext belongs to.
#[derive(Debug, Clone, Copy)]
pub struct VersionId<'a> {
    pub env: &'a str,
    pub name: &'a str,
    pub version: u64,
}

/// Proof that the vault was unlocked, and the keys that come with it. Dropping it
/// (seal, shutdown) wipes every key. There is no other way to decrypt.
pub struct Unlocked {
    terms: BTreeMap<u32, Key>,
    /// Chains the audit log (HKDF of the root key).
    audit_key: Key,
    /// Fingerprints values for the audit log (`vaultctl audit hash`).
    digest_key: Key,
    /// Hashes bearer tokens for storage and lookup.
    token_key: Key,
}

fn root_aad(kdf: &KdfParams, salt: &[u8]) -> Vec<u8> {
    let mut aad = b"vaultd/v1/root-key\0".to_vec();
    aad.push(FORMAT_V1);
    for n in [kdf.memory_kib, kdf.iterations, kdf.parallelism] {
        aad.extend_from_slice(&n.to_be_bytes());
    }
    aad.extend_from_slice(salt);
    aad
}

fn term_aad(term: u32) -> Vec<u8> {
    let mut aad = b"vaultd/v1/key-term\0".to_vec();
    aad.push(FORMAT_V1);
    aad.extend_from_slice(&term.to_be_bytes());
    aad
}

fn version_aad(id: &VersionId<'_>, term: u32) -> Vec<u8> {
    let mut aad = b"vaultd/v1/secret-version\0".to_vec();
    aad.push(FORMAT_V1);
    for part in [id.env, id.name] {
        // Names are at most 128 bytes; the length prefix keeps ("ab","c") ≠ ("a","bc").
        aad.extend_from_slice(&(part.len() as u16).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad.extend_from_slice(&id.version.to_be_bytes());
    aad.extend_from_slice(&term.to_be_bytes());
    aad
}

fn with_format(sealed: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + sealed.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&sealed);
    out
}

fn strip_format(blob: &[u8]) -> Result<&[u8], CryptoError> {
    match blob.split_first() {
        Some((&FORMAT_V1, rest)) => Ok(rest),
        _ => Err(CryptoError::DecryptionFailed),
    }
}

/// Creates a new key hierarchy: a random root key wrapped under the passphrase,
/// and key term 1 wrapped under the root key.
pub fn create(passphrase: &SecretBytes, kdf: KdfParams) -> Result<(Header, WrappedTerm, Unlocked), CryptoError> {
    let mut salt = vec![0u8; SALT_LEN];
    super::fill_random(&mut salt)?;
    let passphrase_key = kdf::derive(passphrase.expose(), &salt, kdf)?;
    let root = Key::random()?;
    let wrapped_root = with_format(aead::seal(&passphrase_key, &root_aad(&kdf, &salt), &root.0[..])?);
    let term_key = Key::random()?;
    let term = WrappedTerm { term: 1, wrapped: with_format(aead::seal(&root, &term_aad(1), &term_key.0[..])?) };
    let unlocked = Unlocked::from_keys(&root, BTreeMap::from([(1, term_key)]));
    Ok((Header { kdf, salt, wrapped_root }, term, unlocked))
}

impl Unlocked {
    /// Derives the passphrase key and unwraps the root key and every term. A
    /// passphrase that does not open the root key is [`CryptoError::WrongPassphrase`].
    pub fn open(passphrase: &SecretBytes, header: &Header, terms: &[WrappedTerm]) -> Result<Unlocked, CryptoError> {
        if header.salt.len() != SALT_LEN {
            return Err(CryptoError::KdfParams("salt has the wrong length"));
        }
        let passphrase_key = kdf::derive(passphrase.expose(), &header.salt, header.kdf)?;
        let root_bytes = strip_format(&header.wrapped_root)
            .and_then(|sealed| aead::open(&passphrase_key, &root_aad(&header.kdf, &header.salt), sealed))
            .map_err(|_| CryptoError::WrongPassphrase)?;
        let root = Key::from_slice(root_bytes.expose())?;
        let mut ring = BTreeMap::new();
        for t in terms {
            let key_bytes = aead::open(&root, &term_aad(t.term), strip_format(&t.wrapped)?)?;
            ring.insert(t.term, Key::from_slice(key_bytes.expose())?);
        }
        if ring.is_empty() {
            return Err(CryptoError::DecryptionFailed);
        }
        Ok(Unlocked::from_keys(&root, ring))
    }

    fn from_keys(root: &Key, terms: BTreeMap<u32, Key>) -> Unlocked {
        Unlocked {
            terms,
            audit_key: mac::derive(root, mac::AUDIT_LABEL),
            digest_key: mac::derive(root, mac::DIGEST_LABEL),
            token_key: mac::derive(root, mac::TOKEN_LABEL),
        }
    }

    /// The MAC that chains an audit entry to the one before it.
    pub fn audit_mac(&self, previous: &[u8], content: &[u8]) -> Mac {
        mac::sign(&self.audit_key, &[b"entry\0", previous, content])
    }

    /// Whether `expected` is the chain MAC of `content` after `previous` (constant time).
    pub fn audit_mac_matches(&self, previous: &[u8], content: &[u8], expected: &[u8]) -> bool {
        mac::verify(&self.audit_key, &[b"entry\0", previous, content], expected)
    }

    /// The MAC of the audit head row: which entry is the newest chained one.
    pub fn audit_head_mac(&self, seq: u64, entry_mac: &[u8]) -> Mac {
        mac::sign(&self.audit_key, &[b"head\0", &seq.to_be_bytes(), entry_mac])
    }

    pub fn audit_head_matches(&self, seq: u64, entry_mac: &[u8], expected: &[u8]) -> bool {
        mac::verify(&self.audit_key, &[b"head\0", &seq.to_be_bytes(), entry_mac], expected)
    }

    /// The stored form of a bearer token: a keyed hash, so a stolen database
    /// yields no usable token and lookups need the vault unlocked.
    pub fn token_hash(&self, token: &[u8]) -> Mac {
        mac::sign(&self.token_key, &[token])
    }

    /// A keyed fingerprint of a value (`hmac-sha256:HEX`): lets the audit log say
    /// *which* value was written without revealing it, and lets an auditor holding
    /// a candidate value check it (`vaultctl audit hash`).
    pub fn value_digest(&self, value: &[u8]) -> String {
        let mac = mac::sign(&self.digest_key, &[value]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        format!("hmac-sha256:{hex}")
    }

    /// The term new writes are sealed under.
    pub fn newest_term(&self) -> u32 {
        self.terms.keys().next_back().copied().unwrap_or(0)
    }

    /// Seals a secret version's value: `format || term (u32 BE) || nonce || ct || tag`.
    pub fn seal_version(&self, id: &VersionId<'_>, value: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let (&term, key) = self.terms.iter().next_back().ok_or(CryptoError::DecryptionFailed)?;
        let sealed = aead::seal(key, &version_aad(id, term), value)?;
        let mut out = Vec::with_capacity(5 + sealed.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&term.to_be_bytes());
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a secret version's ciphertext. Any mismatch — format, unknown term,
    /// wrong row, flipped bit — is the same [`CryptoError::DecryptionFailed`].
    pub fn open_version(&self, id: &VersionId<'_>, ciphertext: &[u8]) -> Result<SecretBytes, CryptoError> {
        let rest = strip_format(ciphertext)?;
        let (term, sealed) = rest.split_first_chunk::<4>().ok_or(CryptoError::DecryptionFailed)?;
        let term = u32::from_be_bytes(*term);
        let key = self.terms.get(&term).ok_or(CryptoError::DecryptionFailed)?;
        aead::open(key, &version_aad(id, term), sealed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Cheap parameters for unit tests: the KDF itself is not under test here.
    fn hierarchy(pass: &[u8]) -> (Header, WrappedTerm, Unlocked) {
        let kdf = KdfParams { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 };
        create(&SecretBytes::new(pass.to_vec()), kdf).unwrap()
    }

    const ID: VersionId<'static> = VersionId { env: "prod", name: "telegram", version: 1 };

    #[test]
    fn unlock_round_trip_and_wrong_passphrase() {
        let (header, term, unlocked) = hierarchy(b"correct horse");
        let ct = unlocked.seal_version(&ID, b"123:abc").unwrap();
        let again = Unlocked::open(&SecretBytes::new(b"correct horse".to_vec()), &header, &[term]).unwrap();
        assert_eq!(again.open_version(&ID, &ct).unwrap().expose(), b"123:abc");
        let wrong = Unlocked::open(&SecretBytes::new(b"wrong".to_vec()), &header, &[]);
        assert_eq!(wrong.err(), Some(CryptoError::WrongPassphrase));
    }

    #[test]
    fn ciphertext_is_bound_to_its_row() {
        let (_, _, unlocked) = hierarchy(b"p");
        let ct = unlocked.seal_version(&ID, b"v").unwrap();
        assert_eq!(ct[0], FORMAT_V1);
        assert_eq!(ct[1..5], 1u32.to_be_bytes());
        let others = [
            VersionId { env: "staging", ..ID },
            VersionId { name: "discord", ..ID },
            VersionId { version: 2, ..ID },
            VersionId { env: "prodt", name: "elegram", ..ID },
        ];
        for other in others {
            assert_eq!(unlocked.open_version(&other, &ct).err(), Some(CryptoError::DecryptionFailed), "{other:?}");
        }
        let mut wrong_term = ct.clone();
        wrong_term[4] = 2;
        assert_eq!(unlocked.open_version(&ID, &wrong_term).err(), Some(CryptoError::DecryptionFailed));
        let mut wrong_format = ct;
        wrong_format[0] = 2;
        assert_eq!(unlocked.open_version(&ID, &wrong_format).err(), Some(CryptoError::DecryptionFailed));
    }

    #[test]
    fn edited_header_params_do_not_unlock() {
        let (mut header, term, _) = hierarchy(b"p");
        header.kdf.iterations = 3;
        let r = Unlocked::open(&SecretBytes::new(b"p".to_vec()), &header, &[term]);
        assert_eq!(r.err(), Some(CryptoError::WrongPassphrase));
    }
}
