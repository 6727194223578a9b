//! Tamper test: random bytes flipped across the database file, 1,000 times, and
//! every read through the store and crypto layers (the path `get` takes) either
//! returns the right value or an error: never a wrong value, never a panic or a
//! hang. In process, so it runs in seconds; `VAULT_TAMPER_TRIALS` runs more,
//! `VAULT_TAMPER_SEED` replays a run.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use vaultd::crypto::{self, KdfParams, SecretBytes, Unlocked, VersionId};
use vaultd::store::{DB_FILE, SecretLabels, Store};

type AnyError = Box<dyn std::error::Error + Send + Sync>;

const PASSPHRASE: &[u8] = b"tamper test passphrase";
/// The lowest parameters a header may carry: the KDF is not under test here.
const KDF: KdfParams = KdfParams { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 };

/// xorshift64*: seeded from the environment or the clock, printed for replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Writes `bytes` as the database of a new owner-only data dir, as vaultd requires.
fn data_dir_with(dir: &std::path::Path, bytes: &[u8]) {
    use std::io::Write as _;
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().mode(0o700).create(dir).unwrap();
    vaultd::store::create_owner_only(&dir.join(DB_FILE)).unwrap().write_all(bytes).unwrap();
}

/// (env, name) → version → value, for every version written.
type Expected = BTreeMap<(String, String), BTreeMap<u64, Vec<u8>>>;

/// A vault with two key terms, 24 secrets, some with several versions; returns
/// its database file's bytes, the expected values and the unlocked keys.
fn build(dir: &std::path::Path) -> (Vec<u8>, Expected, Unlocked) {
    let store = Store::open(dir).unwrap();
    let (header, term, keys) = crypto::create(&SecretBytes::new(PASSPHRASE.to_vec()), KDF).unwrap();
    store.write(|txn| txn.initialize(&header, &term)).unwrap();
    let mut expected = Expected::new();
    let mut put = |env: &str, name: &str, value: Vec<u8>, term: u32| {
        let (version, _) = store
            .write(|txn| {
                txn.put(env, name, &SecretLabels::default(), 10, |version| {
                    Ok::<_, AnyError>(keys.seal_version(&VersionId { env, name, version }, term, &value)?)
                })
            })
            .unwrap();
        expected.entry((env.into(), name.into())).or_default().insert(version, value);
    };
    for i in 0..16 {
        put("prod", &format!("secret-{i}"), format!("value-{i}-first").into_bytes(), 1);
    }
    let term2 = keys.add_term(2).unwrap();
    store.write(|txn| txn.insert_term(&term2, false)).unwrap();
    for i in 0..24 {
        let env = if i % 3 == 0 { "staging" } else { "prod" };
        put(env, &format!("secret-{i}"), format!("value-{i}-term2-{}", "x".repeat(i * 7)).into_bytes(), 2);
    }
    for i in 0..4 {
        put("prod", &format!("secret-{i}"), format!("value-{i}-third").into_bytes(), 2);
    }
    drop(store); // the last connection to close checkpoints the WAL into the file
    assert!(!dir.join(format!("{DB_FILE}-wal")).exists());
    (std::fs::read(dir.join(DB_FILE)).unwrap(), expected, keys)
}

/// Opens a tampered copy and reads everything the way vaultd would; returns
/// how many reads gave the right value and how many an error. Panics on a wrong value.
fn read_everything(dir: &std::path::Path, expected: &Expected, keys: &Unlocked, header: &[u8]) -> (u64, u64) {
    let (mut right, mut refused) = (0, 0);
    let Ok(store) = Store::open(dir) else { return (0, 1) };
    let Ok(Some((h, terms))) = store.header() else { return (0, 1) };
    // The keys in memory, unless the stored hierarchy changed: then unlock afresh
    // from the tampered header, as a restarted vaultd would.
    let stored: Vec<u8> = [&h.salt[..], &h.wrapped_root[..]]
        .concat()
        .into_iter()
        .chain(terms.iter().flat_map(|t| t.wrapped.clone()))
        .chain([h.kdf.memory_kib, h.kdf.iterations, h.kdf.parallelism].iter().flat_map(|n| n.to_be_bytes()))
        .collect();
    let reopened;
    let keys = if stored == header {
        keys
    } else {
        match Unlocked::open(&SecretBytes::new(PASSPHRASE.to_vec()), &h, &terms) {
            Ok(k) => {
                reopened = k;
                &reopened
            }
            Err(_) => return (0, 1),
        }
    };
    for ((env, name), versions) in expected {
        let current = versions.iter().next_back().map(|(_, v)| v).unwrap();
        match store.current(env, name) {
            Ok(Some((version, ct))) => match keys.open_version(&VersionId { env, name, version }, &ct) {
                Ok(value) => {
                    assert_eq!(value.expose(), &current[..], "{env}/{name}: a wrong current value");
                    right += 1;
                }
                Err(_) => refused += 1,
            },
            Ok(None) | Err(_) => refused += 1,
        }
    }
    // Every stored version, as a rewrap or `backup verify` reads them.
    let walked = store.each_version(|env, name, version, ct| {
        if let Ok(value) = keys.open_version(&VersionId { env, name, version }, ct) {
            let want = expected.get(&(env.into(), name.into())).and_then(|v| v.get(&version));
            assert_eq!(Some(value.expose()), want.map(|v| &v[..]), "{env}/{name} v{version}: a wrong value");
        }
        Ok::<_, vaultd::store::StoreError>(())
    });
    if walked.is_err() {
        refused += 1;
    }
    let _ = store.list("prod");
    let _ = store.versions("prod", "secret-1");
    (right, refused)
}

#[test]
fn flipped_bytes_never_yield_a_wrong_value() {
    let trials: u64 = std::env::var("VAULT_TAMPER_TRIALS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let seed = std::env::var("VAULT_TAMPER_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    let mut rng = Rng(seed | 1);
    let work = tempfile::tempdir().unwrap();
    let (original, expected, keys) = build(&work.path().join("original"));
    let (h, terms) = Store::open(&work.path().join("original")).unwrap().header().unwrap().unwrap();
    let header: Vec<u8> = [&h.salt[..], &h.wrapped_root[..]]
        .concat()
        .into_iter()
        .chain(terms.iter().flat_map(|t| t.wrapped.clone()))
        .chain([h.kdf.memory_kib, h.kdf.iterations, h.kdf.parallelism].iter().flat_map(|n| n.to_be_bytes()))
        .collect();
    // The untampered copy reads back completely: the checks below are live.
    let clean = work.path().join("clean");
    data_dir_with(&clean, &original);
    assert_eq!(read_everything(&clean, &expected, &keys, &header), (expected.len() as u64, 0));

    let started = Instant::now();
    let (mut right, mut refused, mut slowest) = (0, 0, Duration::ZERO);
    for trial in 0..trials {
        let dir = work.path().join(format!("t{trial}"));
        let mut bytes = original.clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] ^= 1 + rng.below(255) as u8;
        }
        data_dir_with(&dir, &bytes);
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(|| read_everything(&dir, &expected, &keys, &header));
        let (r, e) = outcome.unwrap_or_else(|_| panic!("trial {trial} (seed {seed}): see the panic above"));
        slowest = slowest.max(t.elapsed());
        right += r;
        refused += e;
        std::fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!(
        "tamper: {trials} trials on a {} byte file in {:.1} s (seed {seed}): {right} right values, {refused} errors, \
         0 wrong; slowest trial {slowest:?}",
        original.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(slowest < Duration::from_secs(20), "a trial took {slowest:?}");
    assert!(refused > 0, "no flip was ever noticed: the trials did not tamper");
}
