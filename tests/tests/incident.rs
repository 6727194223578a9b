//! Incident response end to end (ARCHITECTURE §7): revoke-all through the daemon and
//! offline, its report, the streams it ends, and the way back.
#![allow(clippy::unwrap_used)]

use std::time::Duration;
use tonic::Code;
use vault_proto::v1::GetSecretsRequest;
use vault_tests::{Daemon, Options, path_str};

const CLIENTS: [(&str, u32); 3] = [("bot-a", 5001), ("bot-b", 5002), ("bot-c", 5003)];

/// 3 clients granted everything, 5 tokens (any uid), 10 secrets; returns the tokens.
fn populate(d: &Daemon) -> Vec<String> {
    for i in 0..10 {
        d.put(&format!("secret{i}"), format!("value-{i}-do-not-leak").as_bytes());
    }
    for (name, uid) in CLIENTS {
        d.ctl(&["client", "add", name, "--uid", &uid.to_string(), "--allow", "default/*"], b"").ok();
    }
    (0..5)
        .map(|i| {
            let client = CLIENTS[i % 3].0;
            let out = d.ctl(&["--json", "token", "create", "--client", client, "--any-uid"], b"").ok().json();
            out["token"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn watch_request(token: Option<&str>, name: &str) -> tonic::Request<GetSecretsRequest> {
    let mut request = tonic::Request::new(GetSecretsRequest { env: String::new(), names: vec![name.into()] });
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

type Streams = Vec<tonic::Streaming<vault_proto::v1::GetSecretsResponse>>;

/// 20 watch streams: 15 through the tokens, 5 by the owner.
async fn open_streams(d: &Daemon, tokens: &[String]) -> Streams {
    let agent = vault_proto::agent_client(vault_proto::connect(&d.agent_socket).await.unwrap());
    let mut streams = Vec::new();
    for i in 0..20 {
        let token = (i < 15).then(|| tokens[i % tokens.len()].as_str());
        let mut stream =
            agent.clone().watch_secrets(watch_request(token, &format!("secret{}", i % 10))).await.unwrap().into_inner();
        stream.message().await.unwrap().unwrap();
        streams.push(stream);
    }
    streams
}

/// Each stream's end: the status it ended with.
async fn stream_ends(streams: Streams) -> Vec<Code> {
    let mut codes = Vec::new();
    for mut stream in streams {
        let end = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("a stream did not end");
        codes.push(match end {
            Ok(Some(_)) => Code::Ok,
            Ok(None) => Code::Cancelled,
            Err(status) => status.code(),
        });
    }
    codes
}

fn get_with(d: &Daemon, token: Option<&str>, name: &str) -> vault_tests::Output {
    let mut cmd = d.ctl_command(&["get", name]);
    if let Some(token) = token {
        cmd.env("VAULT_TOKEN", token);
    }
    vault_tests::run(cmd, b"")
}

/// `get_with`, waiting out the pause vaultd puts on a uid after three refused
/// tokens in a row (exit 1, "retry in N ms").
fn get_patiently(d: &Daemon, token: Option<&str>, name: &str) -> vault_tests::Output {
    for _ in 0..10 {
        let out = get_with(d, token, name);
        match out.stderr.split("retry in ").nth(1).and_then(|r| r.split(' ').next()) {
            Some(wait) => std::thread::sleep(Duration::from_millis(wait.parse::<u64>().unwrap() + 50)),
            None => return out,
        }
    }
    panic!("still paused after ten tries");
}

fn assert_token_refused(d: &Daemon, token: &str) {
    let out = get_patiently(d, Some(token), "secret0");
    assert!(out.error(3).contains("invalid, expired or revoked token"), "{out:?}");
}

/// The end state every revoke-all must leave, whichever way it was made.
fn assert_everything_revoked(d: &Daemon, tokens: &[String]) {
    for token in tokens {
        assert_token_refused(d, token);
    }
    // Not even the owner is served a compromised value.
    assert!(get_with(d, None, "secret3").error(3).contains("not found"));
    let clients = d.ctl(&["--json", "client", "list"], b"").ok().json();
    assert!(clients.as_array().unwrap().iter().all(|c| c["enabled"] == false), "{clients}");
    let listed = d.ctl(&["--json", "token", "list"], b"").ok().json();
    assert!(listed.as_array().unwrap().iter().all(|t| t["revoked_unix"].as_i64().unwrap() > 0), "{listed}");
    let status = d.status();
    let compromised: Vec<String> = (0..10).map(|i| format!("default/secret{i}")).collect();
    assert_eq!(status["compromised"], serde_json::json!(compromised), "{status}");
    assert!(d.audit_verify().is_ok(), "{:?}", d.audit_verify());
}

fn assert_no_secret_in(text: &[u8], tokens: &[String]) {
    for i in 0..10 {
        assert!(!vault_tests::contains(text, format!("value-{i}-do-not-leak").as_bytes()), "a value leaked");
    }
    for token in tokens {
        assert!(!vault_tests::contains(text, token.as_bytes()), "a token leaked");
    }
    assert!(!vault_tests::contains(text, vault_tests::PASSPHRASE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_all_cuts_everyone_off_and_reports_exact_counts() {
    let d = Daemon::initialized();
    let tokens = populate(&d);
    // Agents read before the incident: the forensic timeline must show it.
    assert_eq!(get_with(&d, Some(&tokens[0]), "secret1").ok().stdout, b"value-1-do-not-leak");
    let streams = open_streams(&d, &tokens).await;
    // An idle agent connection: open before, closed by vaultd after.
    let mut idle = std::os::unix::net::UnixStream::connect(&d.agent_socket).unwrap();
    idle.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    // vaultd speaks first (its HTTP/2 settings), then waits for us: open.
    let mut greeting = Vec::new();
    let before = std::io::Read::read_to_end(&mut idle, &mut greeting);
    assert!(before.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock), "{before:?}");

    let out = d.ctl(&["--json", "revoke-all", "--reason", "laptop with bot tokens stolen", "--yes"], b"").ok();
    let report = out.json();
    assert_eq!(report["tokens_revoked"], 5, "{report}");
    assert_eq!(report["clients_disabled"], 3, "{report}");
    assert_eq!(report["secrets_compromised"], 10, "{report}");
    assert_eq!(report["streams_closed"], 20, "{report}");
    assert_eq!(report["needs_rotation"].as_array().unwrap().len(), 10, "{report}");
    assert_eq!(report["mode"], "online");
    let codes = stream_ends(streams).await;
    assert!(codes.iter().all(|c| *c == Code::PermissionDenied), "{codes:?}");
    let mut rest = Vec::new();
    let after = std::io::Read::read_to_end(&mut idle, &mut rest);
    assert!(after.is_ok(), "the idle agent connection is still open: {after:?}");
    assert_everything_revoked(&d, &tokens);

    // The record: listed, shown with the audit timeline before it, nothing secret.
    let listed = d.ctl(&["--json", "incident", "list"], b"").ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["reason"], "laptop with bot tokens stolen");
    let shown = d.ctl(&["--json", "incident", "show", "1"], b"").ok();
    let timeline = shown.json()["timeline"].as_array().unwrap().clone();
    let kinds: Vec<&str> = timeline.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"secret.read") && kinds.contains(&"incident.revoke_all"), "{kinds:?}");
    assert!(kinds.contains(&"token.create") && kinds.contains(&"incident.completed"), "{kinds:?}");
    let human = d.ctl(&["incident", "show", "1"], b"").ok();
    assert!(human.text().contains("needs rotation: default/secret0"), "{}", human.text());
    for text in [&out.stdout, &shown.stdout, &human.stdout, &d.audit_export("audit.jsonl").0] {
        assert_no_secret_in(text, &tokens);
    }

    // Twice is safe: nothing more to revoke, and a second record.
    let again = d.ctl(&["--json", "revoke-all", "--reason", "again", "--yes"], b"").ok().json();
    assert_eq!((again["tokens_revoked"].as_u64(), again["secrets_compromised"].as_u64()), (Some(0), Some(0)));

    // The way back: rotate everything compromised, re-enable, a new token.
    for i in 0..5 {
        d.ctl(&["rotation", "set", &format!("secret{i}"), "--rotator", "generate"], b"").ok();
    }
    let walked = d.ctl(&["rotate", "--compromised"], b"").ok();
    assert_eq!(walked.text().lines().count(), 5, "{}", walked.stderr);
    assert!(walked.stderr.contains("default/secret7 is compromised but rotates manually"), "{}", walked.stderr);
    for i in 5..10 {
        d.ctl(&["rotate", &format!("secret{i}")], format!("fresh-{i}").as_bytes()).ok();
    }
    assert_eq!(d.status()["compromised"], serde_json::json!([]));
    d.ctl(&["client", "enable", "bot-a"], b"").ok();
    let token = d.ctl(&["--json", "token", "create", "--client", "bot-a", "--any-uid"], b"").ok().json();
    let fresh = get_patiently(&d, token["token"].as_str(), "secret7").ok();
    assert_eq!(fresh.stdout, b"fresh-7");
    // The old compromised versions are never served, even as "previous".
    assert!(get_with(&d, None, "secret7").ok().stdout == b"fresh-7");
    let old = d.ctl(&["get", "secret7", "--version", "1"], b"");
    assert!(old.error(3).contains("not found"), "{old:?}");
    assert!(d.audit_verify().is_ok());
}

/// Break-glass: the same end state with the daemon killed and with it running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_revoke_all_works_with_the_daemon_dead_or_alive() {
    // Killed: revoke-all on the data dir; a vaultd started later honours it.
    let mut dead = Daemon::initialized();
    let dead_tokens = populate(&dead);
    dead.kill();
    let offline = |d: &Daemon, reason: &str| {
        d.ctl(&["--json", "revoke-all", "--offline", "--data-dir", &data_dir_of(d), "--reason", reason, "--yes"], b"")
    };
    let report = offline(&dead, "host compromised").ok().json();
    assert_eq!((report["tokens_revoked"].as_u64(), report["clients_disabled"].as_u64()), (Some(5), Some(3)));
    assert_eq!(report["secrets_compromised"], 10);
    assert_eq!(report["mode"], "offline");
    assert_no_secret_in(&serde_json::to_vec(&report).unwrap(), &dead_tokens);
    // Twice is safe: without the key it can only record the incident, and the
    // next vaultd to unlock applies both (signed) before serving anything.
    let again = offline(&dead, "host compromised").ok().json();
    assert_eq!(again["tokens_revoked"], 5, "what it will reach: {again}");
    dead.launch();
    dead.unlock();
    assert_everything_revoked(&dead, &dead_tokens);
    let applied = dead.audit_query(&["--type", "incident.applied"]);
    assert_eq!(applied.len(), 2, "{applied:?}");
    assert!(dead.audit_verify().is_ok());
    assert_eq!(dead.status()["integrity"], serde_json::json!([]), "the offline incidents are adopted, not violations");

    // Running, unlocked, with agents watching: the same, and the streams end.
    let alive = Daemon::initialized();
    let tokens = populate(&alive);
    let streams = open_streams(&alive, &tokens).await;
    let report = offline(&alive, "host compromised").ok().json();
    assert_eq!((report["tokens_revoked"].as_u64(), report["secrets_compromised"].as_u64()), (Some(5), Some(10)));
    let codes = stream_ends(streams).await;
    assert!(codes.iter().all(|c| *c == Code::PermissionDenied), "{codes:?}");
    // The running vaultd chains the offline record on at its next write.
    alive.put("after", b"x");
    assert_everything_revoked_but(&alive, &tokens, 1);
    assert!(alive.audit_verify().is_ok(), "{:?}", alive.audit_verify());
    let kinds = || -> Vec<String> {
        alive.audit_query(&["--type", "incident"]).iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
    };
    vault_tests::wait_for("incident.honoured", || {
        (kinds() == ["incident.revoke_all", "incident.applied", "incident.honoured"]).then_some(())
    });
    assert_eq!(alive.status()["integrity"], serde_json::json!([]));
    assert!(alive.audit_verify().is_ok(), "{:?}", alive.audit_verify());
}

fn data_dir_of(d: &Daemon) -> String {
    path_str(&d.data_dir).to_owned()
}

/// [`assert_everything_revoked`] for a vault with `extra` secrets put after the incident.
fn assert_everything_revoked_but(d: &Daemon, tokens: &[String], extra: usize) {
    for token in tokens {
        assert_token_refused(d, token);
    }
    let status = d.status();
    assert_eq!(status["compromised"].as_array().unwrap().len(), 10, "{status}");
    assert_eq!(status["secrets"].as_u64().unwrap() as usize, 10 + extra);
}

#[test]
fn provider_revoke_runs_the_hooks_and_seal_wipes_the_keys() {
    let config = "[rotation]\nhook_timeout = \"5s\"\n".to_owned();
    let d = Daemon::start_with(Options { config: Some(config), ..Options::default() });
    d.init();
    let hook = d.dir.path().join("hook");
    let log = d.dir.path().join("revoked");
    std::fs::write(&hook, format!("#!/bin/sh\nv=$(cat)\n[ \"$VAULTD_STEP\" = revoke-old ] || exit 1\n[ \"$VAULTD_NAME\" = broken ] && {{ echo 'provider down' >&2; exit 7; }}\necho \"$VAULTD_SECRET $v\" >> {}\n", log.display())).unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let rotator = format!("exec:{}", hook.display());
    d.ctl(&["put", "telegram", "--rotator", &rotator], b"tg-token").ok();
    d.ctl(&["put", "broken", "--rotator", &rotator], b"br-token").ok();
    d.ctl(&["put", "plain"], b"plain-token").ok();
    let report =
        d.ctl(&["--json", "revoke-all", "--reason", "r", "--provider-revoke", "--seal", "--yes"], b"").ok().json();
    let hooks = report["provider_revoke"].as_array().unwrap();
    assert_eq!(hooks.len(), 2, "{report}");
    assert_eq!((hooks[0]["secret"].as_str(), hooks[0]["ok"].as_bool()), (Some("default/broken"), Some(false)));
    assert!(hooks[0]["detail"].as_str().unwrap().contains("provider down"), "{report}");
    assert_eq!((hooks[1]["secret"].as_str(), hooks[1]["ok"].as_bool()), (Some("default/telegram"), Some(true)));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "default/telegram tg-token\n");
    assert_eq!(report["sealed"], true);
    assert_eq!(d.status()["sealed"], true);
    assert!(!serde_json::to_string(&report).unwrap().contains("tg-token"));
    d.unlock();
    assert!(d.audit_verify().is_ok());
}
