//! Crash safety of the key lifecycle: vaultd is SIGKILLed at random moments while
//! writers put secrets concurrently, a rotator rotates others (generated values)
//! and `vaultctl rotate-key --rewrap` re-seals every version. After each restart: every acknowledged write reads back (a
//! write that was in flight may or may not have landed), nothing decrypts wrong,
//! the audit chain verifies, and running `rotate-key --rewrap` again continues
//! an unfinished rewrap. At the end the rewrap completes, the older terms are
//! retired, and `backup verify` decrypts every version ever written.
//!
//! 50 trials by default (the test KDF keeps each restart cheap);
//! `VAULT_CRASH_TRIALS=N` runs more, `VAULT_CRASH_SEED=S` replays a run.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use vault_proto::v1::{self, GetSecretsRequest, PutSecretRequest, SecretRef, UnlockRequest, VerifyAuditRequest};
use vault_tests::{Daemon, PASSPHRASE, Rng, path_str};

const SEED_SECRETS: usize = 300;
const WRITERS: usize = 2;
/// Names each writer cycles over.
const WRITER_NAMES: usize = 40;

/// What the test knows about each name: the last acknowledged value, and the
/// value of a put that was in flight when vaultd died (it may have committed).
#[derive(Default)]
struct Ledger {
    acked: BTreeMap<String, Vec<u8>>,
    in_flight: BTreeMap<String, Vec<u8>>,
}

async fn admin(d: &Daemon) -> v1::admin_client::AdminClient<tonic::transport::Channel> {
    vault_proto::admin_client(vault_proto::connect(&d.admin_socket).await.unwrap())
}

fn put_request(name: &str, value: &[u8]) -> PutSecretRequest {
    PutSecretRequest {
        secret: Some(SecretRef { env: String::new(), name: name.into() }),
        value: value.to_vec(),
        ..Default::default()
    }
}

/// Puts to this writer's names until a put fails (vaultd died) or `stop`.
async fn writer(
    d_admin: std::path::PathBuf,
    k: usize,
    trial: usize,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let Ok(channel) = vault_proto::connect(&d_admin).await else { return 0 };
    let mut admin = vault_proto::admin_client(channel);
    let mut acked = 0;
    for seq in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let name = format!("w{k}-{}", seq % WRITER_NAMES);
        let value = format!("trial{trial}-w{k}-seq{seq}").into_bytes();
        ledger.lock().await.in_flight.insert(name.clone(), value.clone());
        match admin.put_secret(put_request(&name, &value)).await {
            Ok(_) => {
                let mut l = ledger.lock().await;
                l.in_flight.remove(&name);
                l.acked.insert(name, value);
                acked += 1;
            }
            Err(_) => break, // in flight when vaultd died: stays in `in_flight`
        }
    }
    acked
}

/// Secrets rotated (rotator `generate`) by [`rotator`] during the trials.
const ROTATED: usize = 5;

/// Rotates `rot-N` secrets until a rotation fails (vaultd died) or `stop`,
/// recording each acknowledged version: after a restart the current version must
/// be that one or newer.
async fn rotator(d_admin: std::path::PathBuf, acked: Arc<Mutex<BTreeMap<String, u64>>>, stop: Arc<AtomicBool>) {
    let Ok(channel) = vault_proto::connect(&d_admin).await else { return };
    let mut admin = vault_proto::admin_client(channel);
    for seq in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let name = format!("rot-{}", seq % ROTATED);
        let request = v1::RotateSecretRequest {
            secret: Some(SecretRef { env: String::new(), name: name.clone() }),
            value: vec![],
        };
        match admin.rotate_secret(request).await {
            Ok(reply) => drop(acked.lock().await.insert(name, reply.into_inner().version)),
            Err(_) => break,
        }
    }
}

/// Every name's current value, read through the agent socket in batches (all
/// or nothing: each must exist and decrypt), plus `maybe`: names that exist only
/// if a put in flight landed.
async fn read_all(d: &Daemon, names: &[String], maybe: &[String]) -> BTreeMap<String, Vec<u8>> {
    let mut agent = vault_proto::agent_client(vault_proto::connect(&d.agent_socket).await.unwrap());
    let mut out = BTreeMap::new();
    for chunk in names.chunks(200) {
        let request = GetSecretsRequest { env: String::new(), names: chunk.to_vec() };
        let reply = agent.get_secrets(request).await.unwrap_or_else(|e| panic!("reading back: {e:?}")).into_inner();
        for s in reply.secrets {
            out.insert(s.name, s.value);
        }
    }
    for name in maybe {
        match agent.get_secret(v1::GetSecretRequest { env: String::new(), name: name.clone(), version: 0 }).await {
            Ok(reply) => drop(out.insert(name.clone(), reply.into_inner().value)),
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => panic!("reading back {name}: {e:?}"),
        }
    }
    out
}

/// Versions sealed under a term older than the newest, straight from the database.
fn older_versions(d: &Daemon) -> u64 {
    let newest = d.key_terms().last().map_or(0, |t| t.0);
    d.version_terms().iter().filter(|&&t| t < newest).count() as u64
}

fn rewrap_pending(d: &Daemon) -> bool {
    d.db().query_row("SELECT EXISTS (SELECT 1 FROM key_term WHERE rewrap = 1)", [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_puts_and_rewrap_loses_no_acknowledged_write() {
    let trials: usize = std::env::var("VAULT_CRASH_TRIALS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let mut rng = Rng::from_env("VAULT_CRASH_SEED");
    eprintln!("crash test: {trials} trials, seed {} (VAULT_CRASH_SEED to replay)", rng.seed);
    let started = Instant::now();
    let mut d = Daemon::initialized();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    {
        let mut admin = admin(&d).await;
        for i in 0..SEED_SECRETS {
            let (name, value) = (format!("seed-{i}"), format!("seed-value-{i}").into_bytes());
            admin.put_secret(put_request(&name, &value)).await.unwrap();
            ledger.lock().await.acked.insert(name, value);
        }
    }
    let rotations = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    for i in 0..ROTATED {
        d.ctl(&["put", &format!("rot-{i}"), "--rotator", "generate"], b"first").ok();
        rotations.lock().await.insert(format!("rot-{i}"), 1);
    }
    let unlock_file = d.passphrase_file(PASSPHRASE);
    let (mut killed_mid_rewrap, mut resumed, mut total_acked, mut in_flight_landed) = (0, 0, 0, 0);
    let mut total_rotations = 0;

    for trial in 0..trials {
        let pending_before = rewrap_pending(&d);
        let rewrap = d
            .ctl_command(&["--json", "rotate-key", "--rewrap", "--batch", "20"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|k| tokio::spawn(writer(d.admin_socket.clone(), k, trial, ledger.clone(), stop.clone())))
            .collect();
        let rotating = tokio::spawn(rotator(d.admin_socket.clone(), rotations.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_micros(rng.below(300_000))).await;
        d.kill();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            total_acked += w.await.unwrap();
        }
        rotating.await.unwrap();
        let out = rewrap.wait_with_output().unwrap();

        d.launch();
        // Measured before anything writes: was the rewrap cut short?
        if older_versions(&d) > 0 {
            killed_mid_rewrap += 1;
        }
        let mut admin = admin(&d).await;
        admin.unlock(UnlockRequest { passphrase: PASSPHRASE.to_vec() }).await.unwrap();
        if pending_before {
            // This trial's `rotate-key --rewrap` continued the previous one; when it
            // got far enough to answer, it said so.
            resumed += 1;
            if out.status.success() {
                let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(json["new_term"], false, "trial {trial}: a pending rewrap must be continued: {json}");
            }
        }

        let mut l = ledger.lock().await;
        let known: Vec<String> = l.acked.keys().cloned().collect();
        let new: Vec<String> = l.in_flight.keys().filter(|n| !l.acked.contains_key(*n)).cloned().collect();
        let read = read_all(&d, &known, &new).await;
        for name in known.iter().chain(&new) {
            let Some(got) = read.get(name) else {
                assert!(new.contains(name), "trial {trial}: {name} is gone");
                continue; // its first put was in flight and did not land
            };
            let acked = l.acked.get(name);
            let in_flight = l.in_flight.get(name);
            assert!(
                Some(got) == acked || Some(got) == in_flight,
                "trial {trial}: {name} reads {:?}; acknowledged {:?}, in flight {:?}",
                String::from_utf8_lossy(got),
                acked.map(|v| String::from_utf8_lossy(v)),
                in_flight.map(|v| String::from_utf8_lossy(v)),
            );
            if in_flight.is_some_and(|v| v == got) {
                in_flight_landed += 1;
            }
            l.acked.insert(name.clone(), got.clone());
        }
        l.in_flight.clear();
        drop(l);
        // Every rotated secret reads (decrypts), at its acknowledged version or newer.
        let mut agent = vault_proto::agent_client(vault_proto::connect(&d.agent_socket).await.unwrap());
        let acked_rotations = rotations.lock().await.clone();
        let names: Vec<String> = acked_rotations.keys().cloned().collect();
        let request = GetSecretsRequest { env: String::new(), names };
        let reply = agent.get_secrets(request).await.unwrap_or_else(|e| panic!("trial {trial}: {e:?}")).into_inner();
        for s in reply.secrets {
            assert!(s.version >= acked_rotations[&s.name], "trial {trial}: {} lost an acknowledged rotation", s.name);
            let made = if s.version == 1 { 5 } else { 32 }; // "first", or generate:32
            assert_eq!(s.value.len(), made, "trial {trial}: {} holds a value nobody made", s.name);
            total_rotations = total_rotations.max(s.version);
        }
        let verdict = admin.verify_audit(VerifyAuditRequest {}).await.unwrap().into_inner();
        assert!(verdict.intact, "trial {trial}: audit chain broken at {}: {}", verdict.broken_seq, verdict.problem);
    }

    // Let the last rewrap finish: everything under one term, the older ones gone.
    let out = d.ctl(&["--json", "rotate-key", "--rewrap"], b"").ok().json();
    let terms = d.key_terms();
    assert_eq!(terms.len(), 1, "older terms are retired after the rewrap: {terms:?} ({out})");
    assert!(d.version_terms().iter().all(|&t| t == terms[0].0));
    let l = ledger.lock().await;
    let names: Vec<String> = l.acked.keys().cloned().collect();
    let read = read_all(&d, &names, &[]).await;
    assert!(names.iter().all(|n| read.get(n) == l.acked.get(n)), "values changed by the final rewrap");
    // Every version ever written (previous and retired ones too) decrypts.
    let backup = d.dir.path().join("final.backup");
    d.ctl(&["backup", path_str(&backup)], b"").ok();
    let verified =
        d.ctl(&["--json", "backup", "verify", path_str(&backup), "--passphrase-file", path_str(&unlock_file)], b"");
    let verified = verified.ok().json();
    assert_eq!(verified["intact"], true, "{verified}");
    eprintln!(
        "crash test: {trials} trials in {:.1} s; {killed_mid_rewrap} killed mid-rewrap, {resumed} continued a pending \
         rewrap, {total_acked} acknowledged puts, {in_flight_landed} in-flight puts landed, rotated secrets reached \
         version {total_rotations}; {} versions verified",
        started.elapsed().as_secs_f64(),
        verified["versions"]
    );
    // The test must have tested what it says: a good share of kills hit a rewrap.
    assert!(killed_mid_rewrap * 5 >= trials, "only {killed_mid_rewrap} of {trials} kills landed mid-rewrap");
    assert!(resumed > 0, "no trial continued an interrupted rewrap");
}

/// Reads `telegram` on its own agent connection until a read fails (vaultd died)
/// or `stop`; returns how many values it received.
async fn reader(agent_socket: std::path::PathBuf, stop: Arc<AtomicBool>) -> u64 {
    let Ok(channel) = vault_proto::connect(&agent_socket).await else { return 0 };
    let mut agent = vault_proto::agent_client(channel);
    let mut received = 0;
    while !stop.load(Ordering::Relaxed) {
        let request = v1::GetSecretRequest { env: String::new(), name: "telegram".into(), version: 0 };
        match agent.get_secret(request).await {
            Ok(reply) => {
                assert_eq!(reply.into_inner().value, b"a read value");
                received += 1;
            }
            Err(_) => break,
        }
    }
    received
}

/// Agents read while vaultd is SIGKILLed at random moments: the records of the
/// newest reads are then still in the read journal, not yet in the audit table.
/// After every restart and unlock, the log holds a record for every value an agent
/// received (and at most one more per reader and kill: a read whose reply was
/// cut off), and it verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_reads_loses_no_read_record() {
    const READERS: u64 = 4;
    let trials: u64 = 10;
    let mut rng = Rng::from_env("VAULT_CRASH_SEED");
    eprintln!("read crash test: {trials} trials, seed {} (VAULT_CRASH_SEED to replay)", rng.seed);
    let mut d = Daemon::initialized();
    d.put("telegram", b"a read value");
    let mut received = 0;
    for _ in 0..trials {
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> =
            (0..READERS).map(|_| tokio::spawn(reader(d.agent_socket.clone(), stop.clone()))).collect();
        tokio::time::sleep(Duration::from_micros(50_000 + rng.below(250_000))).await;
        d.kill();
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            received += r.await.unwrap();
        }
        d.launch();
        d.unlock();
    }
    let (_, entries) = d.audit_export("reads.jsonl");
    let count = |kind: &str| entries.iter().filter(|e| e["type"] == kind && e["outcome"] == "ok").count() as u64;
    let recorded = count("secret.read");
    eprintln!("{received} values received, {recorded} reads recorded");
    assert!(received > 100, "too few reads to mean anything: {received}");
    assert!(recorded >= received, "{} values were received without a record", received - recorded);
    assert!(recorded <= received + READERS * trials, "{recorded} records for {received} reads");
    assert!(count("audit.journal_recovered") > 0, "no kill left a record in the journal: nothing was tested");
    d.audit_verify().unwrap_or_else(|(seq, problem)| panic!("broken at {seq}: {problem}"));
}
