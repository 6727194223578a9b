//! The key hierarchy: passphrase key → root key → numbered key terms → versions.
//!
//! Every stored blob starts with a format byte; a secret version's ciphertext also
//! carries the key term that sealed it. The associated data binds each blob to
//! where it belongs (domain label, environment, name, version, term), so a
//! ciphertext copied or swapped into another row fails to decrypt.

use super::{CryptoError, KdfParams, Key, Mac, SecretBytes, aead, kdf, mac};
use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

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
///
/// The set of terms changes while unlocked (`rotate-key`, retirement), so it sits
/// behind a lock; every holder of the proof sees the same keyring.
pub struct Unlocked {
    /// Kept to wrap new key terms; never leaves this module.
    root: Key,
    terms: RwLock<BTreeMap<u32, Key>>,
    /// Chains the audit log (HKDF of the root key).
    audit_key: Key,
    /// Fingerprints values for the audit log (`vaultctl audit hash`).
    digest_key: Key,
    /// Hashes bearer tokens for storage and lookup.
    token_key: Key,
    /// Authenticates backup files.
    backup_key: Key,
    /// Authenticates the rows that decide access and which value is served
    /// (`state`): each row, each table's set of rows, and the whole.
    state_key: Key,
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
    const LABEL: &[u8] = b"vaultd/v1/secret-version\0";
    // Made at its final size: growing it twice cost more than the rest (every read).
    let mut aad = Vec::with_capacity(LABEL.len() + 1 + 2 + id.env.len() + 2 + id.name.len() + 8 + 4);
    aad.extend_from_slice(LABEL);
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
    let unlocked = Unlocked::from_keys(root, BTreeMap::from([(1, term_key)]));
    Ok((Header { kdf, salt, wrapped_root }, term, unlocked))
}

/// Unwraps the root key from `header` with `passphrase`.
fn open_root(passphrase: &SecretBytes, header: &Header) -> Result<Key, CryptoError> {
    if header.salt.len() != SALT_LEN {
        return Err(CryptoError::KdfParams("salt has the wrong length"));
    }
    let passphrase_key = kdf::derive(passphrase.expose(), &header.salt, header.kdf)?;
    let root_bytes = strip_format(&header.wrapped_root)
        .and_then(|sealed| aead::open(&passphrase_key, &root_aad(&header.kdf, &header.salt), sealed))
        .map_err(|_| CryptoError::WrongPassphrase)?;
    Key::from_slice(root_bytes.expose())
}

/// `rekey`: checks `old` against `header` and returns a new header with the same
/// root key wrapped under `new` with `kdf` and a fresh salt. Only the root key is
/// re-wrapped, so the cost is two KDF runs whatever the vault's size.
pub fn rekey(old: &SecretBytes, header: &Header, new: &SecretBytes, kdf: KdfParams) -> Result<Header, CryptoError> {
    // Refuse bad parameters before spending a KDF run on the old passphrase.
    kdf.check()?;
    let root = open_root(old, header)?;
    let mut salt = vec![0u8; SALT_LEN];
    super::fill_random(&mut salt)?;
    let passphrase_key = kdf::derive(new.expose(), &salt, kdf)?;
    let wrapped_root = with_format(aead::seal(&passphrase_key, &root_aad(&kdf, &salt), &root.0[..])?);
    Ok(Header { kdf, salt, wrapped_root })
}

impl Unlocked {
    /// Derives the passphrase key and unwraps the root key and every term. A
    /// passphrase that does not open the root key is [`CryptoError::WrongPassphrase`].
    pub fn open(passphrase: &SecretBytes, header: &Header, terms: &[WrappedTerm]) -> Result<Unlocked, CryptoError> {
        let root = open_root(passphrase, header)?;
        let mut ring = BTreeMap::new();
        for t in terms {
            let key_bytes = aead::open(&root, &term_aad(t.term), strip_format(&t.wrapped)?)?;
            ring.insert(t.term, Key::from_slice(key_bytes.expose())?);
        }
        if ring.is_empty() {
            return Err(CryptoError::DecryptionFailed);
        }
        Ok(Unlocked::from_keys(root, ring))
    }

    fn from_keys(root: Key, terms: BTreeMap<u32, Key>) -> Unlocked {
        Unlocked {
            audit_key: mac::derive(&root, mac::AUDIT_LABEL),
            digest_key: mac::derive(&root, mac::DIGEST_LABEL),
            token_key: mac::derive(&root, mac::TOKEN_LABEL),
            backup_key: mac::derive(&root, mac::BACKUP_LABEL),
            state_key: mac::derive(&root, mac::STATE_LABEL),
            root,
            terms: RwLock::new(terms),
        }
    }

    // A panic while holding the lock cannot leave the map half-changed (each
    // change is one insert or remove), so a poisoned lock is safe to reuse.
    fn terms(&self) -> RwLockReadGuard<'_, BTreeMap<u32, Key>> {
        self.terms.read().unwrap_or_else(|p| p.into_inner())
    }

    fn terms_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<u32, Key>> {
        self.terms.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a new key term numbered `term` and returns it wrapped under the root
    /// key, for the caller to store. The key is usable at once: the caller picks
    /// the term to seal under from the store, so a term whose transaction did not
    /// commit is never used, and a later term of the same number replaces it.
    pub fn add_term(&self, term: u32) -> Result<WrappedTerm, CryptoError> {
        let key = Key::random()?;
        let wrapped = with_format(aead::seal(&self.root, &term_aad(term), &key.0[..])?);
        self.terms_mut().insert(term, key);
        Ok(WrappedTerm { term, wrapped })
    }

    /// Wipes a retired term's key (no stored version uses it any more).
    pub fn remove_term(&self, term: u32) {
        self.terms_mut().remove(&term);
    }

    /// Whether `term`'s key is in memory.
    pub fn has_term(&self, term: u32) -> bool {
        self.terms().contains_key(&term)
    }

    /// The MAC that authenticates a backup file (see `backup`).
    pub fn backup_mac(&self) -> mac::StreamMac {
        mac::StreamMac::new(&self.backup_key)
    }

    /// The MAC that chains an audit entry to the one before it: over its
    /// content, given in parts.
    pub fn audit_mac(&self, previous: &[u8], content: &[&[u8]]) -> Mac {
        mac::sign(&self.audit_key, &[&[b"entry\0", previous], content].concat())
    }

    /// Whether `expected` is the chain MAC of `content` after `previous` (constant time).
    pub fn audit_mac_matches(&self, previous: &[u8], content: &[u8], expected: &[u8]) -> bool {
        mac::verify(&self.audit_key, &[b"entry\0", previous, content], expected)
    }

    /// What chains read-journal records, for the records of one append (one
    /// read, or a GetSecrets batch): the key is made ready once for all of them.
    pub fn journal_chain(&self) -> JournalChain {
        JournalChain(mac::Signer::new(&self.audit_key))
    }

    pub fn journal_mac_matches(&self, previous: &[u8], content: &[u8], expected: &[u8]) -> bool {
        mac::verify(&self.audit_key, &[b"journal\0", previous, content], expected)
    }

    /// The MAC of the journal's import position (see `audit::journal`): moving
    /// the position forward to skip records needs the key.
    pub fn journal_position_mac(&self, jseq: u64, jmac: &[u8]) -> Mac {
        mac::sign(&self.audit_key, &[b"journal-position\0", &jseq.to_be_bytes(), jmac])
    }

    /// The MAC of the audit head row: which entry is the newest chained one, and
    /// the state generation it was written at (0, covered by no MAC of its own,
    /// only in heads written before the state was authenticated).
    pub fn audit_head_mac(&self, seq: u64, entry_mac: &[u8], state_generation: u64) -> Mac {
        let generation = state_generation.to_be_bytes();
        let tail: &[u8] = if state_generation == 0 { &[] } else { &generation };
        mac::sign(&self.audit_key, &[b"head\0", &seq.to_be_bytes(), entry_mac, tail])
    }

    pub fn audit_head_matches(&self, seq: u64, entry_mac: &[u8], state_generation: u64, expected: &[u8]) -> bool {
        let want = self.audit_head_mac(seq, entry_mac, state_generation);
        expected.len() == want.len() && expected.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// The MAC of one stored row of the authenticated state: `encoding` names its
    /// table and identity first (see `state::mac`).
    pub fn row_mac(&self, encoding: &[u8]) -> Mac {
        mac::sign(&self.state_key, &[b"row\0", encoding])
    }

    /// A row's share of its table's sum: a PRF of its MAC that is never stored,
    /// so nobody without the key can find another set of rows with the same sum.
    pub fn row_term(&self, row_mac: &[u8]) -> u128 {
        let out = mac::sign(&self.state_key, &[b"term\0", row_mac]);
        u128::from_be_bytes(out[..16].try_into().unwrap_or_default())
    }

    /// The MAC of the state's root: its generation and every table's count and sum.
    pub fn state_root_mac(&self, encoding: &[u8]) -> Mac {
        mac::sign(&self.state_key, &[b"root\0", encoding])
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
        format!("hmac-sha256:{}", super::hex(&mac::sign(&self.digest_key, &[value])))
    }

    /// The newest term in memory.
    pub fn newest_term(&self) -> u32 {
        self.terms().keys().next_back().copied().unwrap_or(0)
    }

    /// Seals a secret version's value under `term` (the store's newest, chosen in
    /// the writing transaction): `format || term (u32 BE) || nonce || ct || tag`.
    pub fn seal_version(&self, id: &VersionId<'_>, term: u32, value: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let terms = self.terms();
        let key = terms.get(&term).ok_or(CryptoError::UnknownTerm(term))?;
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
        self.opener().open(id, ciphertext)
    }

    /// [`Unlocked::open_version`] for the values of one request (a GetSecrets
    /// batch): a key term's cipher is made once for a run of values sealed
    /// under it (all of them, but while a new term re-seals them).
    pub fn opener(&self) -> Opener<'_> {
        Opener { keys: self, last: None }
    }
}

/// Opens versions' ciphertexts (see [`Unlocked::opener`]).
pub struct Opener<'k> {
    keys: &'k Unlocked,
    /// The term of the last value opened, and its cipher.
    last: Option<(u32, aead::Cipher)>,
}

impl Opener<'_> {
    /// See [`Unlocked::open_version`].
    pub fn open(&mut self, id: &VersionId<'_>, ciphertext: &[u8]) -> Result<SecretBytes, CryptoError> {
        let rest = strip_format(ciphertext)?;
        let (term, sealed) = rest.split_first_chunk::<4>().ok_or(CryptoError::DecryptionFailed)?;
        let term = u32::from_be_bytes(*term);
        let cipher = match &mut self.last {
            Some((last, cipher)) if *last == term => cipher,
            last => {
                let cipher =
                    self.keys.terms().get(&term).map(aead::Cipher::new).ok_or(CryptoError::DecryptionFailed)?;
                &mut last.insert((term, cipher)).1
            }
        };
        cipher.open(&version_aad(id, term), sealed)
    }
}

/// Chains read-journal records (see [`Unlocked::journal_chain`]).
pub struct JournalChain(mac::Signer);

impl JournalChain {
    /// The chain MAC of a read-journal record: like an entry's, in its own
    /// domain, so a journal record can never pass for a table entry or the reverse.
    pub fn mac(&self, previous: &[u8], content: &[u8]) -> Mac {
        self.0.sign(&[b"journal\0", previous, content])
    }
}

/// The key term a version's ciphertext names, without opening it (`None` when the
/// blob is too short or of an unknown format). Untrusted: opening checks it.
pub fn ciphertext_term(ciphertext: &[u8]) -> Option<u32> {
    let rest = strip_format(ciphertext).ok()?;
    rest.first_chunk::<4>().map(|t| u32::from_be_bytes(*t))
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
        let ct = unlocked.seal_version(&ID, 1, b"123:abc").unwrap();
        let again = Unlocked::open(&SecretBytes::new(b"correct horse".to_vec()), &header, &[term]).unwrap();
        assert_eq!(again.open_version(&ID, &ct).unwrap().expose(), b"123:abc");
        let wrong = Unlocked::open(&SecretBytes::new(b"wrong".to_vec()), &header, &[]);
        assert_eq!(wrong.err(), Some(CryptoError::WrongPassphrase));
    }

    #[test]
    fn ciphertext_is_bound_to_its_row() {
        let (_, _, unlocked) = hierarchy(b"p");
        let ct = unlocked.seal_version(&ID, 1, b"v").unwrap();
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

    #[test]
    fn new_terms_seal_and_retired_terms_are_gone() {
        let (header, term1, unlocked) = hierarchy(b"p");
        let old = unlocked.seal_version(&ID, 1, b"old").unwrap();
        assert_eq!(unlocked.seal_version(&ID, 2, b"x").err(), Some(CryptoError::UnknownTerm(2)));
        let term2 = unlocked.add_term(2).unwrap();
        assert_eq!(unlocked.newest_term(), 2);
        let new = unlocked.seal_version(&ID, 2, b"new").unwrap();
        assert_eq!(ciphertext_term(&new), Some(2));
        assert_eq!(ciphertext_term(&old), Some(1));
        // The wrapped term opens at the next unlock, under the same root key.
        let again = Unlocked::open(&SecretBytes::new(b"p".to_vec()), &header, &[term1, term2]).unwrap();
        assert_eq!(again.open_version(&ID, &new).unwrap().expose(), b"new");
        assert_eq!(again.open_version(&ID, &old).unwrap().expose(), b"old");
        unlocked.remove_term(1);
        assert!(!unlocked.has_term(1));
        assert_eq!(unlocked.open_version(&ID, &old).err(), Some(CryptoError::DecryptionFailed));
        assert_eq!(unlocked.open_version(&ID, &new).unwrap().expose(), b"new");
    }

    #[test]
    fn one_opener_opens_a_batch_under_several_terms_and_checks_each_value() {
        let (_, _, unlocked) = hierarchy(b"p");
        unlocked.add_term(2).unwrap();
        let other = VersionId { name: "discord", ..ID };
        let batch = [(ID, 1, b"a"), (ID, 2, b"b"), (other, 2, b"c"), (other, 1, b"d")]
            .map(|(id, term, value)| (id, unlocked.seal_version(&id, term, value).unwrap(), value));
        let mut opener = unlocked.opener();
        for (id, ct, value) in &batch {
            assert_eq!(opener.open(id, ct).unwrap().expose(), value.as_slice());
        }
        // A cipher made for an earlier value lets no other row, term or bit through.
        let (_, ct, _) = &batch[2];
        assert_eq!(opener.open(&ID, ct).err(), Some(CryptoError::DecryptionFailed));
        let mut wrong_term = ct.clone();
        wrong_term[4] = 1;
        assert_eq!(opener.open(&other, &wrong_term).err(), Some(CryptoError::DecryptionFailed));
        let mut flipped = ct.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(opener.open(&other, &flipped).err(), Some(CryptoError::DecryptionFailed));
        unlocked.remove_term(1);
        let (_, ct, _) = &batch[3];
        assert_eq!(unlocked.opener().open(&other, ct).err(), Some(CryptoError::DecryptionFailed));
    }

    #[test]
    fn a_journal_chain_signs_what_journal_mac_matches_accepts() {
        let (_, _, unlocked) = hierarchy(b"p");
        let chain = unlocked.journal_chain();
        let first = chain.mac(&[0; crate::crypto::MAC_LEN], b"record 1");
        let second = chain.mac(&first, b"record 2");
        assert!(unlocked.journal_mac_matches(&[0; crate::crypto::MAC_LEN], b"record 1", &first));
        assert!(unlocked.journal_mac_matches(&first, b"record 2", &second));
        assert!(!unlocked.journal_mac_matches(&first, b"record 3", &second));
        assert_ne!(first, unlocked.audit_mac(&[0; crate::crypto::MAC_LEN], &[b"record 1"]), "its own domain");
    }

    #[test]
    fn rekey_rewraps_the_same_root_key() {
        let (header, term, unlocked) = hierarchy(b"old pass");
        let ct = unlocked.seal_version(&ID, 1, b"value").unwrap();
        let (old, new) = (SecretBytes::new(b"old pass".to_vec()), SecretBytes::new(b"new pass".to_vec()));
        let stronger = KdfParams { memory_kib: 20 * 1024, iterations: 3, parallelism: 1 };
        let rekeyed = rekey(&old, &header, &new, stronger).unwrap();
        assert_eq!(rekeyed.kdf, stronger);
        assert_ne!(rekeyed.salt, header.salt, "a fresh salt");
        let terms = [WrappedTerm { term: 1, wrapped: term.wrapped.clone() }];
        let opened = Unlocked::open(&new, &rekeyed, &terms).unwrap();
        assert_eq!(opened.open_version(&ID, &ct).unwrap().expose(), b"value");
        assert_eq!(opened.audit_mac(b"", &[b"x"]), unlocked.audit_mac(b"", &[b"x"]), "same root, same subkeys");
        assert_eq!(Unlocked::open(&old, &rekeyed, &terms).err(), Some(CryptoError::WrongPassphrase));
        assert_eq!(rekey(&new, &header, &new, stronger).err(), Some(CryptoError::WrongPassphrase));
        let oversize = KdfParams { memory_kib: u32::MAX, ..stronger };
        assert!(matches!(rekey(&old, &header, &new, oversize), Err(CryptoError::KdfParams(_))));
    }

    mod envelope {
        use super::*;
        use proptest::prelude::*;
        use std::sync::OnceLock;

        /// One hierarchy with terms 1 and 2 for every case: Argon2 runs once.
        fn keys() -> &'static Unlocked {
            static KEYS: OnceLock<Unlocked> = OnceLock::new();
            KEYS.get_or_init(|| {
                let (_, _, unlocked) = hierarchy(b"proptest");
                unlocked.add_term(2).unwrap();
                unlocked
            })
        }

        fn name() -> impl Strategy<Value = String> {
            "[a-z0-9][a-z0-9_.-]{0,20}"
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn round_trips(value in proptest::collection::vec(any::<u8>(), 1..512), env in name(), nm in name(), version in 1u64.., term in 1u32..=2) {
                let id = VersionId { env: &env, name: &nm, version };
                let ct = keys().seal_version(&id, term, &value).unwrap();
                prop_assert_eq!(ciphertext_term(&ct), Some(term));
                let opened = keys().open_version(&id, &ct).unwrap();
                prop_assert_eq!(opened.expose(), &value[..]);
            }

            /// Every strict prefix is refused with the one opaque error.
            #[test]
            fn truncation_fails(value in proptest::collection::vec(any::<u8>(), 1..128), cut in any::<prop::sample::Index>()) {
                let ct = keys().seal_version(&ID, 1, &value).unwrap();
                let short = &ct[..cut.index(ct.len())];
                prop_assert_eq!(keys().open_version(&ID, short).err(), Some(CryptoError::DecryptionFailed));
            }

            /// Relabelling a ciphertext with another term fails, also when that
            /// term's key is loaded.
            #[test]
            fn wrong_term_fails(value in proptest::collection::vec(any::<u8>(), 1..128), other in any::<u32>()) {
                prop_assume!(other != 1);
                let mut ct = keys().seal_version(&ID, 1, &value).unwrap();
                ct[1..5].copy_from_slice(&other.to_be_bytes());
                prop_assert_eq!(keys().open_version(&ID, &ct).err(), Some(CryptoError::DecryptionFailed));
            }

            /// A ciphertext opened as any other row (the associated data) fails.
            #[test]
            fn wrong_aad_fails(value in proptest::collection::vec(any::<u8>(), 1..128), env in name(), nm in name(), version in 1u64..) {
                let id = VersionId { env: &env, name: &nm, version };
                prop_assume!((id.env, id.name, id.version) != (ID.env, ID.name, ID.version));
                let ct = keys().seal_version(&ID, 2, &value).unwrap();
                prop_assert_eq!(keys().open_version(&id, &ct).err(), Some(CryptoError::DecryptionFailed));
            }

            /// Any flipped bit anywhere fails.
            #[test]
            fn flipped_bits_fail(value in proptest::collection::vec(any::<u8>(), 1..128), at in any::<prop::sample::Index>(), mask in 1u8..) {
                let mut ct = keys().seal_version(&ID, 1, &value).unwrap();
                let i = at.index(ct.len());
                ct[i] ^= mask;
                prop_assert_eq!(keys().open_version(&ID, &ct).err(), Some(CryptoError::DecryptionFailed));
            }

            /// Arbitrary bytes never panic and never open.
            #[test]
            fn garbage_never_opens(blob in proptest::collection::vec(any::<u8>(), 0..80)) {
                prop_assert!(keys().open_version(&ID, &blob).is_err());
                let term = ciphertext_term(&blob);
                prop_assert_eq!(term.is_some(), blob.len() >= 5 && blob[0] == FORMAT_V1);
            }
        }
    }
}
