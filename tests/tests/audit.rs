//! The tamper-evident audit log (ARCHITECTURE §8), end to end: `audit verify` finds every
//! kind of tampering at the right entry, a failed audit write fails the action, no
//! value or passphrase reaches the trail, and query, export, tail, forwarding,
//! retention and `reads = false` do what they say.
#![allow(clippy::unwrap_used)]

use rusqlite::{Connection, params};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};
use vault_proto::v1::{DeleteSecretRequest, GetSecretRequest, PutSecretRequest, SecretRef, ShowSecretRequest};
use vault_tests::{
    ChildGuard, Daemon, Options, PASSPHRASE, base64, bins, contains, files_under, hex, jsonl, path_str, unique_tag,
    wait_for,
};

#[track_caller]
fn intact(d: &Daemon) -> (u64, u64, u64) {
    d.audit_verify().unwrap_or_else(|(seq, problem)| panic!("expected an intact log, broken at {seq}: {problem}"))
}

/// "type outcome secret reason": one entry in a form assertions can compare.
fn brief(e: &Value) -> String {
    let secret = e["secret"].as_str().filter(|s| !s.is_empty()).unwrap_or("-");
    let reason = e["detail"]["reason"].as_str().unwrap_or("-");
    format!("{} {} {secret} {reason}", e["type"].as_str().unwrap(), e["outcome"].as_str().unwrap())
}

fn seqs(entries: &[Value]) -> Vec<u64> {
    entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

fn last_seq(db: &Connection) -> u64 {
    db.query_row("SELECT MAX(seq) FROM audit", [], |r| r.get(0)).unwrap()
}

/// A log with entries of every kind: allowed and denied, writes, reads and
/// reveals, some recorded while sealed (chained at the next unlock), and a stop.
fn tamper_template() -> Daemon {
    let mut d = Daemon::initialized();
    d.put("alpha", b"alpha-1");
    d.put("alpha", b"alpha-2");
    d.put("beta", b"beta-1");
    d.get("alpha");
    d.ctl(&["get", "nope"], b"").error(3);
    d.ctl(&["show", "--reveal", "beta"], b"").ok();
    d.ctl(&["rm", "beta"], b"").ok();
    d.ctl(&["seal"], b"").ok();
    d.ctl(&["get", "alpha"], b"").error(4);
    d.ctl(&["unlock", "--passphrase-file", "-"], b"wrong").error(3);
    d.unlock();
    d.get("alpha");
    d.put("gamma", b"gamma-1");
    intact(&d);
    assert!(d.stop().status.success());
    d
}

/// A running, unlocked daemon on a copy of `template`'s data dir.
fn copy_of(template: &Daemon) -> Daemon {
    let mut d = Daemon::new(Options::default());
    std::fs::DirBuilder::new().mode(0o700).create(&d.data_dir).unwrap();
    for file in files_under(&template.data_dir) {
        std::fs::copy(&file, d.data_dir.join(file.file_name().unwrap())).unwrap();
    }
    d.launch();
    d.unlock();
    d
}

/// One case a line: what | entry k (a WHERE clause) | the edit | where `audit verify` must
/// say the chain breaks. `$k` is k, `$n` the last seq before the edit, `$copy` every column
/// but seq, mac and records. In a `+read` case an agent reads a secret between the edit and
/// the verify. (Entries inside a batch of reads: the next test.)
const TAMPERS: &str = "
edit the detail          | $W2     | UPDATE audit SET detail = json_set(detail, '$.version', 1) WHERE seq = $k  | $k
edit the actor (uid)     | $SEALED | UPDATE audit SET actor = json_set(actor, '$.uid', 4242) WHERE seq = $k     | $k
edit the kind            | $DELETE | UPDATE audit SET kind = 'secret.write' WHERE seq = $k                      | $k
edit the outcome         | $SEALED | UPDATE audit SET outcome = 'ok', class = 'access' WHERE seq = $k           | $k
edit the time (+1 ms)    | $REVEAL | UPDATE audit SET time_unix_ms = time_unix_ms + 1 WHERE seq = $k            | $k
edit the secret          | $DELETE | UPDATE audit SET secret = 'default/alpha' WHERE seq = $k                   | $k
delete an entry          | $REVEAL | DELETE FROM audit WHERE seq = $k                                           | $k
delete a sealed read     | $SEALED | DELETE FROM audit WHERE seq = $k                                           | $k
append a copy of one     | $DELETE | INSERT INTO audit SELECT $n + 1, $copy, mac, records FROM audit WHERE seq = $k      | $n + 1
forge one into a gap     | $DELETE | DELETE FROM audit WHERE seq = $k;
                                     INSERT INTO audit SELECT $k, $copy, mac, records FROM audit WHERE seq = $k + 1      | $k
insert before the first  | 1       | INSERT INTO audit SELECT 0, $copy, mac, records FROM audit WHERE seq = 1            | 0
swap two entries         | $W2     | UPDATE audit SET seq = -1 WHERE seq = $k; UPDATE audit SET seq = $k
                                     WHERE seq = $k + 1; UPDATE audit SET seq = $k + 1 WHERE seq = -1           | $k
delete the last two      | 1       | DELETE FROM audit WHERE seq >= $n - 1                                      | $n - 1
the same, head rewritten | 1       | DELETE FROM audit WHERE seq >= $n - 1; UPDATE audit_head SET seq = $n - 2  | $n - 1
set a mac to NULL        | $REVEAL | UPDATE audit SET mac = NULL WHERE seq = $k                                 | $k
append an unchained one  | $REVEAL | INSERT INTO audit SELECT $n + 1, $copy, NULL, records FROM audit WHERE seq = $k     | $n + 1
edit, NULL macs, +read   | $W2     | UPDATE audit SET detail = json_set(detail, '$.version', 1) WHERE seq = $k;
                                     UPDATE audit SET mac = NULL WHERE seq >= $k                                | $k
same, head back, +read   | $W2     | UPDATE audit SET detail = json_set(detail, '$.version', 1) WHERE seq = $k;
                                     UPDATE audit SET mac = NULL WHERE seq >= $k;
                                     UPDATE audit_head SET seq = $k - 1                                         | $k
";

#[test]
fn verify_finds_each_kind_of_tampering_at_the_right_entry() {
    let template = tamper_template();
    // A line that starts with a space continues the one before.
    let cases: Vec<Vec<String>> = TAMPERS
        .trim()
        .replace("\n  ", " ")
        .lines()
        .map(|l| l.split(" | ").map(|f| f.split_whitespace().collect::<Vec<_>>().join(" ")).collect())
        .collect();
    let mut failures = Vec::new();
    for case in &cases {
        let [what, entry, edit, want] = &case[..] else { panic!("{case:?}") };
        let d = copy_of(&template);
        assert_eq!(intact(&d).1, 1, "{what}: the untouched copy verifies");
        let db = d.db();
        let entry = entry
            .replace("$W2", "kind = 'secret.write' AND json_extract(detail, '$.version') = 2")
            .replace("$SEALED", "kind = 'secret.read' AND secret = 'default/alpha' AND outcome = 'denied'")
            .replace("$DELETE", "kind = 'secret.delete'")
            .replace("$REVEAL", "kind = 'secret.reveal'");
        let k: u64 = db.query_row(&format!("SELECT MIN(seq) FROM audit WHERE {entry}"), [], |r| r.get(0)).unwrap();
        let fill = |sql: &str| {
            let copy = "time_unix_ms, kind, class, outcome, actor, secret, detail";
            sql.replace("$k", &k.to_string()).replace("$n", &last_seq(&db).to_string()).replace("$copy", copy)
        };
        let want: u64 = db.query_row(&format!("SELECT {}", fill(want)), [], |r| r.get(0)).unwrap();
        db.execute_batch(&fill(edit)).unwrap();
        if what.ends_with("+read") {
            d.get("alpha");
        }
        // Twice: the first verify's own record must not hide the break either.
        for attempt in ["first", "second"] {
            match d.audit_verify() {
                Err((seq, problem)) if seq == want && (!what.starts_with("delete") || problem.contains("missing")) => {}
                got => failures.push(format!("{what}: {attempt} verify: want broken at {want}, got {got:?}")),
            }
        }
    }
    assert_eq!(cases.len(), 18);
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// A batch row's records, as frames.
fn unpack(stored: &[u8]) -> Vec<u8> {
    lz4_flex::block::decompress_size_prepended(stored).unwrap()
}

/// Frames stored as a batch row's records.
fn pack(frames: &[u8]) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(frames)
}

/// Each frame (`length | content | MAC`) in a batch row's records.
fn frames(records: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let mut at = 0;
    while at < records.len() {
        let len = u32::from_be_bytes(records[at..at + 4].try_into().unwrap()) as usize;
        spans.push(at..at + 4 + len + 32);
        at += 4 + len + 32;
    }
    assert_eq!(at, records.len(), "records end in a whole frame");
    spans
}

/// Reads are stored a batch to a row (their journal records, under one MAC). An
/// entry edited, deleted, inserted or reordered inside a batch, or the batch row
/// itself altered, breaks `audit verify` at that entry.
#[test]
fn verify_finds_tampering_inside_a_batch_of_reads_at_the_right_entry() {
    let mut template = Daemon::initialized();
    template.put("alpha", b"alpha-1");
    // Reads in quick succession, so that one import takes several.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut agent = vault_proto::agent_client(vault_proto::connect(&template.agent_socket).await.unwrap());
        for i in 0..40 {
            let name = if i % 5 == 4 { "nope" } else { "alpha" };
            let _ = agent.get_secret(GetSecretRequest { env: String::new(), name: name.into(), version: 0 }).await;
        }
    });
    template.put("gamma", b"gamma-1");
    intact(&template);
    assert!(template.stop().status.success());
    let (seq, stored): (u64, Vec<u8>) = template
        .db()
        .query_row("SELECT seq, records FROM audit WHERE records IS NOT NULL ORDER BY length(records) DESC", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    // Stored compressed: the edits are made as someone who knows the format would.
    let records = unpack(&stored);
    let spans = frames(&records);
    let n = spans.len() as u64;
    assert!(n >= 4, "the largest batch holds {n} reads");
    let first = seq + 1 - n;
    let frame = |i: usize| records[spans[i].clone()].to_vec();
    let without = |i: usize| [&records[..spans[i].start], &records[spans[i].end..]].concat();
    let mac_edited = |i: usize| {
        let mut out = records.clone();
        out[spans[i].end - 1] ^= 1;
        out
    };
    let edited = |i: usize| {
        let mut out = records.clone();
        let uid = contains_at(&records[spans[i].clone()], br#""uid":"#).unwrap() + spans[i].start + 6;
        out[uid] = if out[uid] == b'9' { b'8' } else { b'9' };
        out
    };
    let cases: Vec<(&str, Vec<u8>, u64, &str)> = vec![
        ("edit a read's uid", edited(2), first + 2, "MAC"),
        ("edit the first read's uid", edited(0), first, "MAC"),
        ("delete a read", without(2), first + 2, "missing"),
        (
            "insert a copy of a read",
            [&records[..spans[2].start], &frame(1), &records[spans[2].start..]].concat(),
            first + 2,
            "out of order",
        ),
        (
            "swap two reads",
            [&records[..spans[1].start], &frame(2), &frame(1), &records[spans[2].end..]].concat(),
            first + 1,
            "",
        ),
        ("cut the last read short", records[..records.len() - 10].to_vec(), seq, ""),
        ("edit the first read's journal MAC", mac_edited(0), first, "MAC"),
        ("append a copy of the last read", [&records[..], &frame(spans.len() - 1)].concat(), seq + 1, "inserted"),
    ];
    let mut failures = Vec::new();
    let mut check = |what: &str, d: &Daemon, want: u64, says: &str| {
        for attempt in ["first", "second"] {
            match d.audit_verify() {
                Err((at, problem)) if at == want && problem.contains(says) => {}
                got => failures.push(format!("{what}: {attempt} verify: want broken at {want} ({says}), got {got:?}")),
            }
        }
    };
    let packed = cases.into_iter().map(|(what, frames, want, says)| (what, pack(&frames), want, says));
    let cut = ("cut the stored records short", stored[..stored.len() - 1].to_vec(), first, "decompress");
    for (what, tampered, want, says) in packed.chain([cut]) {
        let d = copy_of(&template);
        assert_eq!(intact(&d).1, 1, "{what}: the untouched copy verifies");
        d.db().execute("UPDATE audit SET records = ? WHERE seq = ?", params![tampered, seq]).unwrap();
        d.get("alpha");
        check(what, &d, want, says);
    }
    for (what, edit, says) in [
        ("delete the batch", "DELETE FROM audit WHERE seq = ?", "missing"),
        ("edit the batch's time", "UPDATE audit SET time_unix_ms = time_unix_ms + 1 WHERE seq = ?", "MAC"),
        ("edit the batch's count", "UPDATE audit SET detail = json_set(detail, '$.records', 1) WHERE seq = ?", ""),
        (
            "number the batch's records from the largest u64",
            "UPDATE audit SET detail = replace(detail, '\"journal_first\":' || json_extract(detail, '$.journal_first'),
             '\"journal_first\":18446744073709551615') WHERE seq = ?",
            "",
        ),
    ] {
        let d = copy_of(&template);
        d.db().execute(edit, [seq]).unwrap();
        check(what, &d, first, says);
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

fn contains_at(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Every seal checkpoints the log head (hourly ones go out while unlocked): the
/// checkpoint names the newest entry before it and that entry's MAC, as the
/// table holds them, so a copy forwarded elsewhere pins the chain.
#[test]
fn a_seal_checkpoints_the_head_of_the_log() {
    let d = Daemon::initialized();
    d.put("alpha", b"alpha-1");
    for _ in 0..3 {
        d.get("alpha");
    }
    d.ctl(&["seal"], b"").ok();
    d.unlock();
    let checkpoints = d.audit_query(&["--type", "audit.checkpoint"]);
    assert_eq!(checkpoints.len(), 1, "{checkpoints:#?}");
    let (at, detail) = (checkpoints[0]["seq"].as_u64().unwrap(), &checkpoints[0]["detail"]);
    let named = detail["seq"].as_u64().unwrap();
    // The three reads, a batch, are the head it names.
    let reads = d.audit_query(&["--type", "secret.read"]);
    assert_eq!(reads.last().unwrap()["seq"].as_u64(), Some(named), "{reads:#?}");
    assert_eq!(named + 1, at, "the checkpoint follows the entry it names");
    let mac: Vec<u8> = d.db().query_row("SELECT mac FROM audit WHERE seq = ?", [named], |r| r.get(0)).unwrap();
    assert_eq!(detail["mac"].as_str(), Some(hex(&mac).as_str()));
    intact(&d);
}

/// Changes to who may read and to how secrets rotate are recorded, by whom,
/// in order: a client added, granted, ungranted, disabled, enabled and
/// removed; a token created and revoked (by accessor, never the token); a
/// secret's rotation policy.
#[test]
fn access_and_policy_changes_are_recorded() {
    let d = Daemon::initialized();
    let ok = |args: &[&str]| d.ctl(args, b"").ok();
    ok(&["client", "add", "bot", "--uid", "4242", "--allow", "prod/telegram"]);
    ok(&["client", "grant", "bot", "prod/discord"]);
    ok(&["client", "ungrant", "bot", "prod/discord"]);
    ok(&["client", "disable", "bot"]);
    ok(&["client", "enable", "bot"]);
    let created = ok(&["--json", "token", "create", "--client", "bot"]).json();
    let (token, accessor) = (created["token"].as_str().unwrap(), created["accessor"].as_str().unwrap());
    ok(&["token", "revoke", accessor]);
    ok(&["client", "rm", "bot"]);
    d.ctl(&["put", "telegram", "--rotator", "generate", "--rotate-every", "30d", "--grace", "2h"], b"v1").ok();
    let entries: Vec<Value> = ["client", "token", "rotation.policy"]
        .iter()
        .flat_map(|t| d.audit_query(&["--type", t]))
        .map(|e| (e["seq"].as_u64().unwrap(), e))
        .collect::<BTreeMap<u64, Value>>()
        .into_values()
        .collect();
    let got: Vec<String> = entries
        .iter()
        .map(|e| {
            let detail = &e["detail"];
            let about = ["client", "patterns", "accessor", "rotate_every_secs", "grace_secs"]
                .iter()
                .filter(|k| !detail[**k].is_null())
                .map(|k| format!("{k}={}", detail[*k]))
                .collect::<Vec<_>>()
                .join(" ");
            format!("{} {} {about}", e["type"].as_str().unwrap(), e["outcome"].as_str().unwrap())
        })
        .collect();
    let want = [
        "client.add ok client=\"bot\"",
        "client.grant ok client=\"bot\" patterns=[\"prod/discord\"]",
        "client.ungrant ok client=\"bot\" patterns=[\"prod/discord\"]",
        "client.disable ok client=\"bot\"",
        "client.enable ok client=\"bot\"",
        &format!("token.create ok client=\"bot\" accessor=\"{accessor}\""),
        &format!("token.revoke ok accessor=\"{accessor}\""),
        "client.remove ok client=\"bot\"",
        "rotation.policy ok rotate_every_secs=2592000 grace_secs=7200",
    ];
    assert_eq!(got, want, "{entries:#?}");
    for e in &entries {
        assert_eq!(e["actor"]["socket"], "admin", "{e}");
    }
    let export = d.audit_export("all.jsonl").0;
    assert!(contains_at(&export, token.as_bytes()).is_none(), "the token itself is never recorded");
    intact(&d);
}

/// A query's reply holds what was asked for, a thousand entries and more (one
/// reply was once capped at a value's size, about 300 entries).
#[test]
fn a_query_for_a_thousand_entries_gets_them() {
    let d = Daemon::initialized();
    d.put("alpha", b"alpha-1");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut agent = vault_proto::agent_client(vault_proto::connect(&d.agent_socket).await.unwrap());
        for _ in 0..1100 {
            let req = GetSecretRequest { env: String::new(), name: "alpha".into(), version: 0 };
            agent.get_secret(req).await.unwrap();
        }
    });
    let reads = d.audit_query(&["--type", "secret.read", "--limit", "1000"]);
    assert_eq!(reads.len(), 1000);
    let newest = seqs(&reads);
    assert!(newest.windows(2).all(|w| w[0] < w[1]), "oldest first");
    let all = d.audit_query(&["--type", "secret.read", "--limit", "0"]);
    assert_eq!(all.len(), 1100);
    assert_eq!(&seqs(&all)[100..], &newest[..], "the newest thousand");
}

#[test]
fn ten_thousand_operations_and_a_restart_leave_an_intact_log() {
    let started = Instant::now();
    let mut d = Daemon::initialized();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let want = rt.block_on(load(&d));
    drop(rt);
    let ops: u64 = want.values().sum();
    assert!(ops >= 10_000, "{ops}");
    d.restart();
    d.unlock();
    let (entries, first, last) = intact(&d);
    assert_eq!((first, last), (1, entries));
    assert!(entries > ops, "{entries} entries for {ops} operations");
    let (_, entries) = d.audit_export("all.jsonl");
    assert_eq!(seqs(&entries), (1..=entries.len() as u64).collect::<Vec<_>>(), "every entry, once, in order");
    let mut got = BTreeMap::<String, u64>::new();
    for e in entries.iter().filter(|e| e["type"].as_str().unwrap().starts_with("secret.")) {
        *got.entry(format!("{} {}", e["type"].as_str().unwrap(), e["outcome"].as_str().unwrap())).or_default() += 1;
    }
    assert_eq!(got, want, "one record per operation");
    // Reads were imported in batches: far fewer rows than entries.
    let rows: u64 = d.db().query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0)).unwrap();
    assert!(rows * 4 < entries.len() as u64, "{rows} rows for {} entries", entries.len());
    eprintln!("10k operations, restart and verify: {:?}", started.elapsed());
}

/// Drives puts, gets (some of unknown or deleted secrets), reveals and deletes
/// concurrently; returns how many of each ("kind outcome") the client saw.
async fn load(d: &Daemon) -> BTreeMap<String, u64> {
    let admin = vault_proto::admin_client(vault_proto::connect(&d.admin_socket).await.unwrap());
    let agent = vault_proto::agent_client(vault_proto::connect(&d.agent_socket).await.unwrap());
    let secret = |name: String| Some(SecretRef { env: String::new(), name });
    for i in 0..100 {
        let req =
            PutSecretRequest { secret: secret(format!("s{}", i % 20)), value: vec![b'v'; 1 + i], ..Default::default() };
        admin.clone().put_secret(req).await.unwrap();
    }
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8u64 {
        let (mut admin, mut agent) = (admin.clone(), agent.clone());
        tasks.spawn(async move {
            let mut seen = BTreeMap::<String, u64>::new();
            for i in 0..1250u64 {
                let name = match i % 10 {
                    0 => format!("missing{t}"),
                    1 => format!("tmp{}", i % 40),
                    _ => format!("s{}", (i + t) % 20),
                };
                let outcome = if i % 50 == 7 {
                    let req = ShowSecretRequest {
                        secret: Some(SecretRef { env: String::new(), name }),
                        reveal: true,
                        version: 0,
                    };
                    admin.show_secret(req).await.unwrap();
                    "secret.reveal ok"
                } else {
                    match agent.get_secret(GetSecretRequest { env: String::new(), name, version: 0 }).await {
                        Ok(_) => "secret.read ok",
                        Err(e) if e.code() == tonic::Code::NotFound => "secret.read denied",
                        Err(e) => panic!("{e}"),
                    }
                };
                *seen.entry(outcome.to_owned()).or_default() += 1;
            }
            seen
        });
    }
    let mut admin = admin.clone();
    let mut seen = BTreeMap::from([("secret.write ok".to_owned(), 100)]);
    for i in 0..40 {
        let put = PutSecretRequest { secret: secret(format!("tmp{i}")), value: b"tmp".to_vec(), ..Default::default() };
        admin.put_secret(put).await.unwrap();
        admin.delete_secret(DeleteSecretRequest { secret: secret(format!("tmp{i}")) }).await.unwrap();
    }
    *seen.get_mut("secret.write ok").unwrap() += 40;
    seen.insert("secret.delete ok".into(), 40);
    while let Some(counts) = tasks.join_next().await {
        for (k, v) in counts.unwrap() {
            *seen.entry(k).or_default() += v;
        }
    }
    seen
}

#[test]
fn a_failed_audit_write_fails_the_action_and_serves_nothing() {
    let mut d = Daemon::initialized();
    d.put("telegram", b"old-telegram-value");
    d.db()
        .execute_batch(
            "CREATE TRIGGER audit_fail BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'simulated full disk'); END;",
        )
        .unwrap();
    // Actions recorded in their own transaction fail at once and change nothing.
    let reveal = d.ctl(&["show", "--reveal", "telegram"], b"");
    assert!(reveal.error(1).contains("simulated full disk"), "{}", reveal.stderr);
    assert!(!reveal.stderr.contains("old-telegram-value") && reveal.stdout.is_empty());
    let put = d.ctl(&["put", "telegram"], b"new-telegram-value");
    assert!(put.error(1).contains("simulated full disk"), "{}", put.stderr);
    assert!(d.ctl(&["rm", "telegram"], b"").error(1).contains("simulated full disk"));

    // A read's record goes to the journal first; the import into the table fails
    // within a moment, and from then on reads are refused rather than served with
    // a record that cannot reach the log.
    let started = Instant::now();
    let mut served = 0;
    let refusal = loop {
        let out = d.ctl(&["get", "telegram"], b"");
        if out.code == Some(0) {
            assert_eq!(out.stdout, b"old-telegram-value");
            served += 1;
        } else {
            assert!(!out.stderr.contains("old-telegram-value") && out.stdout.is_empty());
            break out.error(1).to_owned();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "reads are still served");
    };
    assert!(refusal.contains("audit log could not be written"), "{refusal}");
    let unknown = d.ctl(&["get", "nope"], b"");
    assert!(unknown.code != Some(0) && unknown.stdout.is_empty(), "an unrecorded denial: {unknown:?}");
    d.assert_running();

    d.db().execute_batch("DROP TRIGGER audit_fail").unwrap();
    // Once the log can be written again, so are the records of the reads served
    // before the refusals began: none is lost, and nothing refused was recorded as done.
    wait_for("reads to be served again", || (d.ctl(&["get", "telegram"], b"").code == Some(0)).then_some(()));
    let reads = d.audit_query(&["--type", "secret.read", "--limit", "1000"]);
    let ok = reads.iter().filter(|e| e["outcome"] == "ok").count();
    assert_eq!(ok, served + 1, "the reads served are the reads recorded: {reads:?}");
    assert!(d.audit_query(&["--type", "secret.reveal"]).is_empty(), "a refused reveal was recorded");
    let versions = d.ctl(&["--json", "versions", "telegram"], b"").ok().json();
    assert_eq!(versions.as_array().unwrap().len(), 1, "the refused put stored nothing: {versions}");
    assert_eq!(d.put("telegram", b"new-telegram-value"), 2);
    assert_eq!(d.get("telegram"), b"new-telegram-value");
    intact(&d);
}

#[test]
fn no_value_or_passphrase_reaches_the_audit_trail() {
    let mut d = Daemon::new(Options::default());
    let sink = d.dir.path().join("sink.jsonl");
    d.opts.config = Some(format!("[[audit.sink]]\ntype = \"jsonl\"\npath = \"{}\"\n", sink.display()));
    d.launch();
    d.init();
    let tag = unique_tag();
    let text = format!("sk-ant-AUDIT-CANARY-{tag}");
    let old = format!("old-AUDIT-CANARY-{tag}");
    let inner = format!("bin-AUDIT-CANARY-{tag}");
    let binary = [b"\x00\xff\xfe".as_slice(), inner.as_bytes(), b"\x80\x00\x01"].concat();
    let wrong = format!("wrong-passphrase-CANARY-{tag}");
    d.put("text", old.as_bytes());
    d.put("text", text.as_bytes());
    d.put("binary", &binary);
    assert_eq!(d.get("text"), text.as_bytes());
    assert_eq!(d.get("binary"), binary);
    d.ctl(&["show", "--reveal", "text"], b"").ok();
    d.ctl(&["--json", "show", "--reveal", "binary"], b"").ok();
    d.ctl(&["unlock", "--passphrase-file", "-"], wrong.as_bytes()).error(3);
    d.ctl(&["seal"], b"").ok();
    d.ctl(&["unlock", "--passphrase-file", "-"], wrong.as_bytes()).error(3);
    d.unlock();

    // The digest stands in for the value: `audit hash` finds each write.
    let writes = d.audit_query(&["--type", "secret.write"]);
    for (name, value, i) in [("text", old.as_bytes(), 0), ("text", text.as_bytes(), 1), ("binary", &binary, 2)] {
        let digest = d.ctl(&["audit", "hash"], value).ok().text();
        assert!(digest.starts_with("hmac-sha256:") && digest.len() == 12 + 64 + 1, "{digest:?}");
        assert_eq!(writes[i]["secret"], format!("default/{name}"));
        assert_eq!(writes[i]["detail"]["value_digest"].as_str(), Some(digest.trim_end()), "{name} #{i}");
    }
    assert_ne!(writes[0]["detail"]["value_digest"], writes[1]["detail"]["value_digest"]);

    let (exported, entries) = d.audit_export("export.jsonl");
    let kinds: Vec<String> = entries.iter().map(brief).collect();
    for want in
        ["secret.reveal ok default/binary -", "vault.unlock denied - wrong passphrase", "secret.read ok default/text -"]
    {
        assert!(kinds.iter().any(|k| k == want), "{want} not in {kinds:#?}");
    }
    let last = *seqs(&entries).last().unwrap();
    let sunk = wait_for("the sink to catch up", || {
        let bytes = std::fs::read(&sink).unwrap_or_default();
        seqs(&jsonl(&bytes)).contains(&last).then_some(bytes)
    });
    let sql = "SELECT group_concat(kind || class || outcome || actor || secret || detail, ' ') FROM audit";
    let mut rows: Vec<u8> = d.db().query_row(sql, [], |r| r.get::<_, String>(0)).unwrap().into_bytes();
    let db = d.db();
    let mut batches = db.prepare("SELECT records FROM audit WHERE records IS NOT NULL").unwrap();
    let batches: Vec<Vec<u8>> = batches.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert!(!batches.is_empty(), "reads were imported as batches");
    rows.extend(batches.iter().flat_map(|b| unpack(b)));
    let haystacks = [
        ("the export", exported),
        ("the jsonl sink", sunk),
        ("audit query --json", d.ctl(&["--json", "audit", "query", "--limit", "0"], b"").ok().stdout),
        ("audit tail --json", d.ctl(&["--json", "audit", "tail", "--type", "all", "-n", "0"], b"").ok().stdout),
        ("the audit table", rows),
        ("vaultd's log", d.log().into_bytes()),
    ];
    let secrets: [&[u8]; 6] =
        [text.as_bytes(), old.as_bytes(), &binary, inner.as_bytes(), wrong.as_bytes(), PASSPHRASE];
    for (where_, hay) in &haystacks {
        assert!(hay.len() > 100, "{where_} is empty: nothing was checked");
        for secret in secrets {
            let (hex, b64) = (hex(secret), base64(secret));
            for needle in [secret, hex.as_bytes(), hex.to_uppercase().as_bytes(), b64.as_bytes()] {
                assert!(!contains(hay, needle), "{where_} holds {:?}", String::from_utf8_lossy(needle));
            }
        }
    }
}

#[test]
fn query_and_export_match_what_happened() {
    let config = "agent_socket_mode = \"0666\"\n".to_owned();
    let d = Daemon::start_with(Options { config: Some(config), ..Options::default() });
    d.init();
    d.put("telegram", b"t1");
    d.ctl(&["--env", "prod", "put", "telegram"], b"t2").ok();
    d.get("telegram");
    d.ctl(&["get", "nope"], b"").error(3);
    d.ctl(&["unlock", "--passphrase-file", "-"], b"not the passphrase").error(3);
    d.ctl(&["seal"], b"").ok();
    d.ctl(&["get", "telegram"], b"").error(4);
    d.unlock();
    let mut want_security = vec![
        "vault.init ok - -",
        "secret.read denied default/nope not found",
        "vault.unlock denied - wrong passphrase",
        "vault.seal ok - -",
        "secret.read denied default/telegram sealed",
        "vault.unlock ok - -",
    ];
    if vault_tests::is_root() {
        std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = tempfile::Builder::new().prefix("vault-e2e-bin-").tempdir().unwrap();
        std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let vaultctl = bin.path().join("vaultctl");
        std::fs::copy(&bins().vaultctl, &vaultctl).unwrap();
        // Until every child forked meanwhile has exec'd, the copy is "text file busy".
        wait_for("the copy to run", || std::process::Command::new(&vaultctl).arg("--version").output().ok());
        // The agent socket admits any caller the kernel names; with no client
        // granted, the read is denied (looking like "not found") and recorded.
        std::fs::set_permissions(&d.agent_socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let as_nobody = |args: &[&str]| {
            let mut cmd = std::process::Command::new(&vaultctl);
            cmd.uid(65534).gid(65534).current_dir("/");
            cmd.args(args).env("VAULT_SOCKET", &d.agent_socket).env("VAULT_ADMIN_SOCKET", &d.admin_socket);
            vault_tests::run(cmd, b"")
        };
        as_nobody(&["get", "telegram"]).error(3);
        want_security.push("secret.read denied default/telegram not granted");
        // The admin socket refuses another uid outright, even if its mode were loosened.
        std::fs::set_permissions(&d.admin_socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        as_nobody(&["status"]).error(3);
        wait_for("the refusal's record", || d.audit_query(&["--type", "request"]).first().cloned());
        want_security.push("request.refused denied - -");
    } else {
        vault_tests::skip_unless_ci("the other-uid part needs root");
    }
    d.ctl(&["show", "--reveal", "telegram"], b"").ok();

    let security = d.audit_query(&["--type", "security", "--limit", "50"]);
    assert_eq!(security.iter().map(brief).collect::<Vec<_>>(), want_security);
    assert!(security.iter().all(|e| e["class"] == "security"), "{security:#?}");
    if let Some(refused) = security.iter().find(|e| e["type"] == "request.refused") {
        assert!(refused["actor"]["uid"] == 65534 && refused["actor"]["socket"] == "admin", "{refused}");
    }

    let (_, all) = d.audit_export("export.jsonl");
    let n = all.len() as u64;
    assert_eq!(seqs(&all), (1..=n).collect::<Vec<_>>(), "every entry, in seq order, no gap");
    assert_eq!(brief(&all[all.len() - 1]), "audit.export ok - -", "the export records itself");
    let keys = ["actor", "class", "detail", "outcome", "secret", "seq", "time", "time_unix_ms", "type"];
    for e in &all {
        let mut got: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        got.sort_unstable();
        assert_eq!(got, keys, "{e}");
        assert!(e["actor"].is_object() && e["detail"].is_object() && e["time"].as_str().unwrap().ends_with('Z'), "{e}");
        let socket = e["actor"]["socket"].as_str();
        assert!(e["actor"]["vaultd"] == true || (socket.is_some() && e["actor"]["uid"].is_u64()), "{e}");
    }
    assert_eq!(d.audit_query(&[]), all, "query --limit 0 lists what the export holds");

    let select = |pred: &dyn Fn(&Value) -> bool| all.iter().filter(|e| pred(e)).cloned().collect::<Vec<_>>();
    let mid = &all[all.len() / 2];
    let (t_mid, since) = (mid["time_unix_ms"].as_i64().unwrap(), mid["time"].as_str().unwrap());
    let filters: [(&[&str], Vec<Value>); 8] = [
        (&["--secret", "telegram"], select(&|e| e["secret"].as_str().unwrap().ends_with("/telegram"))),
        (&["--secret", "default/telegram"], select(&|e| e["secret"] == "default/telegram")),
        (&["--secret", "prod/telegram"], select(&|e| e["secret"] == "prod/telegram")),
        (&["--type", "secret"], select(&|e| e["type"].as_str().unwrap().starts_with("secret."))),
        (&["--type", "secret.read"], select(&|e| e["type"] == "secret.read")),
        (&["--type", "access"], select(&|e| e["class"] == "access")),
        (&["--since", since], select(&|e| e["time_unix_ms"].as_i64().unwrap() >= t_mid)),
        (&["--until", since], select(&|e| e["time_unix_ms"].as_i64().unwrap() < t_mid)),
    ];
    for (args, want) in filters {
        assert!(!want.is_empty(), "{args:?}: the expectation is not empty");
        assert_eq!(seqs(&d.audit_query(args)), seqs(&want), "{args:?}");
    }
    assert_eq!(seqs(&d.audit_query(&["--limit", "2"])), [n - 1, n], "the newest, oldest first");
    let path = d.dir.path().join("export.jsonl");
    let again = d.ctl(&["audit", "export", "--output", path_str(&path)], b"");
    assert!(again.error(1).contains("cannot create"), "an existing file is refused");
    assert_eq!(jsonl(&std::fs::read(&path).unwrap()), all, "and left alone");
}

#[test]
fn tail_follow_receives_a_denial_made_after_it_started() {
    let d = Daemon::initialized();
    let mut cmd = d.ctl_command(&["--json", "audit", "tail", "--follow"]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut tail = ChildGuard(Some(cmd.spawn().unwrap()));
    let stdout = tail.0.as_mut().unwrap().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let next = |timeout| rx.recv_timeout(timeout).ok().map(|l| serde_json::from_str::<Value>(&l).unwrap());
    let first = next(Duration::from_secs(10)).expect("the backlog");
    assert_eq!(brief(&first), "vault.init ok - -", "the backlog is security entries");
    d.put("telegram", b"token");
    d.get("telegram");
    d.ctl(&["get", "nope"], b"").error(3);
    let live = next(Duration::from_secs(10)).expect("the denial, live");
    assert_eq!(brief(&live), "secret.read denied default/nope not found", "writes and reads are not security");
    assert_eq!(next(Duration::from_millis(300)), None);
}

#[test]
fn sinks_get_every_entry_the_export_has() {
    let mut d = Daemon::new(Options::default());
    let (file, socket) = (d.dir.path().join("sink.jsonl"), d.dir.path().join("syslog.sock"));
    let syslog = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    syslog.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    d.opts.config = Some(format!(
        "[[audit.sink]]\ntype = \"jsonl\"\npath = \"{}\"\n[[audit.sink]]\ntype = \"syslog\"\nsocket = \"{}\"\n",
        file.display(),
        socket.display()
    ));
    d.launch();
    d.init();
    d.put("telegram", b"token");
    d.get("telegram");
    d.ctl(&["get", "nope"], b"").error(3);
    d.ctl(&["seal"], b"").ok();
    d.ctl(&["get", "telegram"], b"").error(4);
    d.unlock();
    let (_, exported) = d.audit_export("export.jsonl");
    let want = seqs(&exported);
    let mut datagrams = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = syslog.recv(&mut buf) {
        let line = String::from_utf8(buf[..n].to_vec()).unwrap();
        let (head, json) = line.split_once(" audit - ").unwrap_or_else(|| panic!("{line:?}"));
        let entry: Value = serde_json::from_str(json).unwrap();
        let pri = if entry["outcome"] == "ok" { "<85>1 " } else { "<84>1 " };
        assert!(head.starts_with(pri) && head.ends_with(&format!(" - vaultd {}", d.pid())), "{line:?}");
        datagrams.push(entry);
        if seqs(&datagrams).last() == want.last() {
            break;
        }
    }
    let lines = wait_for("the jsonl sink", || {
        let entries = jsonl(&std::fs::read(&file).unwrap_or_default());
        seqs(&entries).contains(want.last().unwrap()).then_some(entries)
    });
    assert_eq!(seqs(&lines), want, "the jsonl sink has what the export has");
    assert_eq!(lines, exported);
    assert_eq!(seqs(&datagrams), want, "syslog has what the export has");
    assert_eq!(datagrams, exported);
    assert_eq!(d.status()["audit_forward_errors"], 0);
}

#[test]
fn a_dead_sink_never_blocks_reads_and_is_counted() {
    let mut d = Daemon::new(Options::default());
    let socket = d.dir.path().join("nobody-listens.sock");
    d.opts.config = Some(format!("[[audit.sink]]\ntype = \"syslog\"\nsocket = \"{}\"\n", socket.display()));
    d.launch();
    d.init();
    d.put("telegram", b"token");
    let started = Instant::now();
    for _ in 0..30 {
        assert_eq!(d.get("telegram"), b"token");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "30 reads took {:?}", started.elapsed());
    let status = wait_for("a forwarding error", || {
        let status = d.status();
        (status["audit_forward_errors"].as_u64()? > 0).then_some(status)
    });
    assert!(status["audit_forward_dropped"].is_u64(), "{status}");
    assert_eq!(d.audit_query(&["--type", "secret.read"]).len(), 30, "the log itself is complete");
    intact(&d);
}

#[test]
fn retention_prunes_old_entries_and_verify_catches_a_moved_anchor() {
    let mut d = Daemon::initialized();
    d.put("telegram", b"token");
    d.get("telegram");
    assert!(d.stop().status.success());
    std::thread::sleep(Duration::from_millis(2200));
    let passphrase = d.passphrase_file(PASSPHRASE);
    d.opts.args = vec!["--passphrase-file".into(), passphrase.into()];
    d.opts.config = Some("[audit]\nretention = \"2s\"\n".into());
    d.launch();
    let pruned = wait_for("retention at startup", || d.audit_query(&["--type", "audit.pruned"]).pop());
    let upto = pruned["detail"]["upto"].as_u64().unwrap();
    assert_eq!(pruned["detail"]["count"].as_u64(), Some(upto), "entries 1..={upto} went: {pruned}");
    assert_eq!(pruned["actor"]["vaultd"], true);
    let left = d.audit_query(&[]);
    assert_eq!(left[0]["seq"].as_u64(), Some(upto + 1), "{left:#?}");
    assert!(left.iter().all(|e| e["type"] != "secret.write" && e["type"] != "vault.init"), "{left:#?}");
    // Verify first imports what waits in the journal (a refusal recorded since may be among it).
    let newest = left.last().unwrap()["seq"].as_u64().unwrap();
    let (_, first, last) = intact(&d);
    assert!(first == upto + 1 && last >= newest, "verified {first}..={last}; the query ended at {newest}");
    let anchor: u64 = d.db().query_row("SELECT seq FROM audit_anchor", [], |r| r.get(0)).unwrap();
    assert_eq!(anchor, upto);

    // Cut more off the front and move the anchor to match: the chain from the new
    // anchor holds, but no retention record accounts for the cut.
    let p = pruned["seq"].as_u64().unwrap();
    assert!(p - 1 > upto, "there are entries between the anchor and the pruning record");
    let db = d.db();
    let mac: Vec<u8> = db.query_row("SELECT mac FROM audit WHERE seq = ?", [p - 1], |r| r.get(0)).unwrap();
    db.execute("DELETE FROM audit WHERE seq < ?", [p]).unwrap();
    db.execute("UPDATE audit_anchor SET seq = ?1, mac = ?2", params![p - 1, mac]).unwrap();
    let (seq, problem) = d.audit_verify().unwrap_err();
    assert_eq!(seq, p, "{problem}");
    assert!(problem.contains("retention record"), "{problem}");
    // --json says the same on stdout, and still exits 1; each failed verify is on record.
    let out = d.ctl(&["--json", "audit", "verify"], b"");
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let v = out.json();
    assert_eq!(
        (v["intact"].clone(), v["broken_seq"].clone(), v["problem"].as_str()),
        (false.into(), p.into(), Some(&*problem))
    );
    assert!(out.stderr.starts_with(&format!("vaultctl: audit log broken at entry {p}: ")), "{}", out.stderr);
    let verifies: Vec<String> = d.audit_query(&["--type", "audit.verify"]).iter().map(brief).collect();
    assert_eq!(verifies, ["audit.verify ok - -", "audit.verify failed - -", "audit.verify failed - -"]);
}

#[test]
fn reads_off_still_records_denials_and_reveals() {
    let config = "[audit]\nreads = false\n".to_owned();
    let d = Daemon::start_with(Options { config: Some(config), ..Options::default() });
    d.init();
    d.put("telegram", b"token");
    assert_eq!(d.get("telegram"), b"token");
    d.ctl(&["get", "nope"], b"").error(3);
    d.ctl(&["show", "--reveal", "telegram"], b"").ok();
    let secret = d.audit_query(&["--type", "secret"]);
    let got: Vec<String> = secret.iter().map(brief).collect();
    assert_eq!(
        got,
        [
            "secret.write ok default/telegram -",
            "secret.read denied default/nope not found",
            "secret.reveal ok default/telegram -"
        ]
    );
    let start = d.audit_query(&["--type", "daemon.start"]);
    assert_eq!(start[0]["detail"]["audit_reads"], false, "the setting is on record");
    intact(&d);
}
