//! Property test (issue 17): random edits, deletions, insertions, duplications,
//! moves and replays of older copies of rows in every authenticated table, with
//! the vault opened and unlocked anew after each (as a restarted vaultd would),
//! never yield a served value or an allowed read that the untouched database
//! would not give. Reads go through the vault's own API as an agent's would: by
//! the owner, by kernel-identified clients of other uids, and with tokens.
//!
//! The same holds for random bytes flipped anywhere in the file (the SQLite
//! structure included): a vault that does not open or unlock serves nothing.
//!
//! In process, so hundreds of trials run in seconds; `VAULT_STATE_TRIALS` runs
//! more, `VAULT_STATE_SEED` replays a run.
#![allow(clippy::unwrap_used)]

mod common;

use common::Rng;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use vaultd::audit::Actor;
use vaultd::config::Config;
use vaultd::crypto::{KdfParams, SecretBytes};
use vaultd::identity::Peer;
use vaultd::state::{Grant, GrantKind, PolicyChange, SecretLabels};
use vaultd::store::DB_FILE;
use vaultd::vault::{SecretRef, Trigger, Vault, VaultError};

const PASSPHRASE: &[u8] = b"state tamper passphrase";
/// The cheapest parameters a vault accepts: the KDF is not under test here.
const KDF: KdfParams = KdfParams { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 };
const SECRETS: [(&str, &str); 4] = [("prod", "alpha"), ("prod", "beta"), ("staging", "gamma"), ("prod", "delta")];
const UIDS: [u32; 5] = [2000, 3000, 4000, 5000, 6000];

fn pass() -> SecretBytes {
    SecretBytes::new(PASSPHRASE.to_vec())
}

fn put(vault: &Vault, env: &str, name: &str, value: &str) {
    let secret = SecretRef::parse(env, name).unwrap();
    let value = SecretBytes::new(value.as_bytes().to_vec());
    vault.put(&Actor::vaultd(), secret, &SecretLabels::default(), &PolicyChange::default(), &value).unwrap();
}

/// A vault with everything the state holds: secrets with several versions (one
/// previous in grace), a rotation history, clients (one disabled) with grants,
/// tokens (one used up, one revoked), an incident and two key terms. Returns
/// the tokens, and leaves a copy of the file from midway in `older`, for replays.
async fn build(dir: &Path, older: &Path) -> Vec<SecretBytes> {
    let vault = Vault::open(dir, &Config::default()).unwrap();
    let me = Actor::vaultd();
    vault.init(&me, &pass()).unwrap();
    vault.rekey(&me, &pass(), None, Some(KDF)).unwrap();
    for (i, (env, name)) in SECRETS.iter().enumerate() {
        put(&vault, env, name, &format!("{env}/{name}-v1-{i}"));
    }
    let client = |name: &str, uid: u32, grants: &[&str]| vaultd::state::Client {
        id: 0,
        name: name.into(),
        uid,
        gid: None,
        exe: None,
        exe_sha256: None,
        enabled: true,
        token_only: false,
        grants: grants.iter().map(|g| ((*g).into(), Grant { kind: GrantKind::Read, created_unix: 0 })).collect(),
        created_unix: 0,
    };
    vault.client_add(&me, client("bot", 2000, &["prod/alpha"])).unwrap();
    vault.client_add(&me, client("ops", 3000, &["prod/*"])).unwrap();
    vault.client_add(&me, client("off", 4000, &["*/*"])).unwrap();
    // A token-only client: its uid alone reads nothing.
    vault.client_add(&me, vaultd::state::Client { token_only: true, ..client("box", 6000, &["*/*"]) }).unwrap();
    vault.client_set_enabled(&me, "off", false).unwrap();
    vault.revoke_all(&me, "drill", false, false).await.unwrap();
    for name in ["bot", "ops"] {
        vault.client_set_enabled(&me, name, true).unwrap();
    }
    vault.seal(&me).unwrap();
    // A consistent copy (the WAL included), for replays of older rows.
    let db = Connection::open(dir.join(DB_FILE)).unwrap();
    db.execute("VACUUM INTO ?", [older.to_str().unwrap()]).unwrap();
    drop(db);
    vault.unlock(&me, &pass()).unwrap();
    for (i, (env, name)) in SECRETS.iter().enumerate() {
        put(&vault, env, name, &format!("{env}/{name}-v2-{i}"));
    }
    vault.rotate_key(&me, false).unwrap();
    put(&vault, "prod", "alpha", "prod/alpha-v3");
    let manual = SecretRef::parse("prod", "beta").unwrap();
    vault.rotate(&me, manual, Some(SecretBytes::new(b"prod/beta-rotated".to_vec())), Trigger::Operator).await.unwrap();
    vault.client_grants(&me, "bot", &["staging/gamma".into()], Some(GrantKind::Read)).unwrap();
    // Use through the broker only: never read.
    vault.client_grants(&me, "ops", &["staging/*".into()], Some(GrantKind::Use)).unwrap();
    let token = |client: &str, uses: Option<u32>| {
        vault.token_create(&me, client, &vaultd::vault::TokenSpec { uses, ..Default::default() }).unwrap()
    };
    let (bot, _) = token("bot", Some(1000));
    let (ops, _) = token("ops", None);
    let (spent, _) = token("ops", Some(1));
    let (boxed, _) = token("box", None);
    let (revoked, revoked_row) = token("bot", None);
    vault.token_revoke(&me, Some(&revoked_row.accessor)).unwrap();
    vault.get(&me, Some(&peer(3000)), Some(&spent), SecretRef::parse("prod", "beta").unwrap(), 0).await.unwrap();
    vault.seal(&me).unwrap();
    vec![bot, ops, spent, revoked, boxed]
}

fn peer(uid: u32) -> Peer {
    Peer { uid, gid: uid, pid: None, accepted: None }
}

/// Every read an agent could try, in a fixed order: its outcome (the value, or
/// nothing). A vault that does not open or unlock serves nothing.
async fn probe(dir: &Path, tokens: &[SecretBytes]) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let Ok(vault) = Vault::open(dir, &Config::default()) else { return out };
    let me = Actor::vaultd();
    if vault.unlock(&me, &pass()).is_err() {
        return out;
    }
    let owner = rustix::process::geteuid().as_raw();
    let value = |r: Result<(u64, SecretBytes), _>| {
        r.ok().map(|(v, s): (u64, SecretBytes)| [v.to_be_bytes().to_vec(), s.expose().to_vec()].concat())
    };
    for (env, name) in SECRETS {
        let secret = SecretRef::parse(env, name).unwrap();
        for version in 0..=4 {
            out.push(value(vault.get(&me, Some(&peer(owner)), None, secret, version).await));
            out.push(value(vault.reveal(&me, secret, version)));
        }
        for uid in UIDS {
            for version in 0..=2 {
                out.push(value(vault.get(&me, Some(&peer(uid)), None, secret, version).await));
            }
        }
        for token in tokens {
            for uid in [2000, 3000, 6000] {
                out.push(value(vault.get(&me, Some(&peer(uid)), Some(token), secret, 0).await));
            }
        }
    }
    // A flipped byte can corrupt a page unlock never read but the seal's record
    // writes to: the record fails (an error, not a panic), the vault seals anyway.
    if let Err(e) = vault.seal(&me) {
        assert!(matches!(e, VaultError::Store(_)), "seal: {e}");
    }
    // Sealed: the keys are gone whatever the record did. The reveal's own record
    // can hit the corrupted page too: then it is refused with that error instead.
    assert!(vault.is_sealed());
    match vault.reveal(&me, SecretRef::parse("prod", "alpha").unwrap(), 0) {
        Err(VaultError::Sealed | VaultError::Store(_)) => {}
        other => panic!("a reveal after the seal: {:?}", other.map(|(v, _)| v)),
    }
    out
}

/// An authenticated table, how to make a row that does not clash with others,
/// and its columns.
struct Table {
    name: &'static str,
    /// SQL for the columns of a copy of a row: what keeps it apart from the original.
    copy: &'static str,
}

const TABLES: &[Table] = &[
    Table {
        name: "secret",
        copy: "id + 1000, env, name || 'x', provider, description, current_version, created_unix, updated_unix, rotator, rotate_every_secs, grace_secs, next_rotation_unix, due_alerted_unix, mac",
    },
    Table {
        name: "secret_version",
        copy: "secret_id, version + 100, state, ciphertext, created_unix, expires_unix, revoke_pending, revoke_after_unix, mac",
    },
    Table {
        name: "rotation",
        copy: "id + 1000, secret_id, rotator, trigger, step, from_version, new_version, error, started_unix, updated_unix, mac",
    },
    Table { name: "client", copy: "id + 1000, name || 'x', uid, gid, exe, enabled, created_unix, exe_sha256, mac" },
    Table { name: "client_grant", copy: "client_id, pattern || 'x', created_unix, mac" },
    Table {
        name: "token",
        copy: "accessor || 'x', hash || x'00', client_id, bind_uid, created_unix, expires_unix, idle_secs, uses_left, last_used_unix, revoked_unix, mac",
    },
    Table { name: "incident", copy: "id + 1000, started_unix, mode, reason, report, mac" },
    Table { name: "key_term", copy: "term + 100, wrapped_key, created_unix, encryptions, rewrap, mac" },
    Table { name: "state_root", copy: "" },
    Table { name: "audit_head", copy: "" },
];

fn columns(db: &Connection, table: &str) -> Vec<String> {
    let mut stmt = db.prepare(&format!("SELECT name FROM pragma_table_info('{table}')")).unwrap();
    stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

fn rowids(db: &Connection, table: &str) -> Vec<i64> {
    let mut stmt = db.prepare(&format!("SELECT rowid FROM {table} ORDER BY rowid")).unwrap();
    stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

/// One random change to one authenticated table of `db`; returns what it did.
fn tamper(db: &Connection, older: &Path, rng: &mut Rng) -> String {
    let table = &TABLES[rng.below(TABLES.len() as u64) as usize];
    let t = table.name;
    let rows = rowids(db, t);
    if rows.is_empty() {
        return format!("{t}: empty, untouched");
    }
    let row = rows[rng.below(rows.len() as u64) as usize];
    let other = rows[rng.below(rows.len() as u64) as usize];
    let cols = columns(db, t);
    let col = &cols[rng.below(cols.len() as u64) as usize];
    let sql = match rng.below(7) {
        // Edit one field: to another row's, or to something else.
        0 => format!("UPDATE {t} SET {col} = (SELECT {col} FROM {t} WHERE rowid = {other}) WHERE rowid = {row}"),
        1 => {
            let value = ["0", "1", "2", "NULL", "'current'", "'previous'", "'*/*'", "9999999999", "x'00'"]
                [rng.below(9) as usize];
            format!("UPDATE {t} SET {col} = {value} WHERE rowid = {row}")
        }
        2 => format!("DELETE FROM {t} WHERE rowid = {row}"),
        // A copy of a row beside it (a duplicate under another key).
        3 if !table.copy.is_empty() => format!("INSERT INTO {t} SELECT {} FROM {t} WHERE rowid = {row}", table.copy),
        // Two rows' contents swapped (but for their keys): a reorder.
        4 => {
            let set: Vec<String> = cols
                .iter()
                .filter(|c| !["id", "accessor", "term", "seq"].contains(&c.as_str()))
                .map(|c| format!("{c} = (SELECT {c} FROM {t} WHERE rowid = {other})"))
                .collect();
            format!("UPDATE {t} SET {} WHERE rowid = {row}", set.join(", "))
        }
        // A row put back as it was midway through the build (or added back if gone).
        _ => format!(
            "ATTACH '{}' AS old; INSERT OR REPLACE INTO main.{t} SELECT * FROM old.{t} WHERE rowid = {row}; DETACH old;",
            older.display()
        ),
    };
    match db.execute_batch(&sql) {
        Ok(()) => sql,
        Err(e) => format!("{sql} (refused by SQLite: {e})"),
    }
}

fn data_dir(at: &Path, db: &[u8]) -> PathBuf {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().mode(0o700).create(at).unwrap();
    std::io::Write::write_all(&mut vaultd::store::create_owner_only(&at.join(DB_FILE)).unwrap(), db).unwrap();
    at.to_path_buf()
}

/// A built vault: the work dir, its file's bytes, a copy from midway, its tokens,
/// and what every probe gives on the untouched file.
struct Built {
    work: tempfile::TempDir,
    original: Vec<u8>,
    older: PathBuf,
    tokens: Vec<SecretBytes>,
    baseline: Vec<Option<Vec<u8>>>,
}

async fn built() -> Built {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("built");
    let older = work.path().join("older.db");
    let tokens = build(&dir, &older).await;
    let original = std::fs::read(dir.join(DB_FILE)).unwrap();
    assert!(!dir.join(format!("{DB_FILE}-wal")).exists());
    let baseline = probe(&data_dir(&work.path().join("clean"), &original), &tokens).await;
    let served = baseline.iter().filter(|o| o.is_some()).count();
    assert!(
        served > 30 && served < baseline.len(),
        "the probes must both read and be refused: {served} of {}",
        baseline.len()
    );
    Built { work, original, older, tokens, baseline }
}

/// Checks one trial's outcomes against the baseline; returns how many reads it
/// refused that the untouched vault serves (all of them if it did not open).
fn compare(got: &[Option<Vec<u8>>], baseline: &[Option<Vec<u8>>], what: &str) -> u64 {
    let mut refused = 0;
    for (i, outcome) in got.iter().enumerate() {
        match (outcome, &baseline[i]) {
            (Some(v), Some(want)) => assert_eq!(v, want, "probe {i}: a wrong value after {what}"),
            (Some(_), None) => panic!("probe {i}: allowed a read the untouched vault refuses, after {what}"),
            (None, Some(_)) => refused += 1,
            (None, None) => {}
        }
    }
    refused + baseline[got.len()..].iter().filter(|o| o.is_some()).count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_never_yield_a_wrong_value() {
    let (trials, seed) = (common::trials("VAULT_STATE", 200), common::seed("VAULT_STATE"));
    eprintln!("flipped bytes: seed {seed} (replay: VAULT_STATE_SEED={seed})");
    let mut rng = Rng::new(seed);
    let Built { work, original, tokens, baseline, .. } = built().await;
    let mut refused_reads = 0;
    for trial in 0..trials {
        let mut bytes = original.clone();
        let mut flipped = Vec::new();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] ^= 1 + rng.below(255) as u8;
            flipped.push(at);
        }
        let dir = data_dir(&work.path().join(format!("f{trial}")), &bytes);
        let got = probe(&dir, &tokens).await;
        refused_reads += compare(&got, &baseline, &format!("trial {trial} (seed {seed}): bytes {flipped:?} flipped"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!("flipped bytes: {trials} trials (seed {seed}), {refused_reads} reads refused, 0 wrong values");
    assert!(refused_reads > 0, "no flip was ever noticed: the trials did not tamper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_rows_never_serve_or_allow_what_the_untouched_state_would_not() {
    let (trials, seed) = (common::trials("VAULT_STATE", 200), common::seed("VAULT_STATE"));
    eprintln!("state tamper: seed {seed} (replay: VAULT_STATE_SEED={seed})");
    let mut rng = Rng::new(seed);
    let Built { work, original, older, tokens, baseline } = built().await;

    // Trials in which SQLite took at least one change.
    let (mut changed, mut refused_reads) = (0, 0);
    for trial in 0..trials {
        let dir = data_dir(&work.path().join(format!("t{trial}")), &original);
        let mut what = Vec::new();
        {
            let db = Connection::open(dir.join(DB_FILE)).unwrap();
            for _ in 0..=rng.below(2) {
                what.push(tamper(&db, &older, &mut rng));
            }
            db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        }
        if what.iter().any(|w| !w.contains("refused by SQLite") && !w.contains("untouched")) {
            changed += 1;
        }
        let got = probe(&dir, &tokens).await;
        refused_reads += compare(&got, &baseline, &format!("trial {trial} (seed {seed}): {what:?}"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!(
        "state tamper: {trials} trials (seed {seed}), {changed} changed a row, {refused_reads} reads refused \
         that the untouched vault serves, 0 wrong values, 0 reads allowed that it refuses"
    );
    assert!(changed > trials / 2, "most trials must change a row: {changed}");
    assert!(refused_reads > 0, "no tampering was ever noticed: the trials did not tamper");
}
