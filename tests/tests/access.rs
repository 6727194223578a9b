//! Bearer tokens, GetSecrets and rate limits, end to end with real processes.
//! The parts that run as other uids need root (CI is root) and skip otherwise.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use tonic::Code;
use vault_proto::v1::GetSecretsRequest;
use vault_tests::{Daemon, Options, Output, bins, is_root, run};

const A: u32 = 65534;
const B: u32 = 65533;

/// A daemon whose agent socket everyone can reach, and a vaultctl they can run.
fn shared_daemon(extra_config: &str) -> (Daemon, tempfile::TempDir, PathBuf) {
    let config = format!("agent_socket_mode = \"0666\"\n{extra_config}");
    let d = Daemon::start_with(Options { config: Some(config), ..Options::default() });
    d.init();
    fs::set_permissions(d.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = tempfile::Builder::new().prefix("vault-e2e-bin-").tempdir().unwrap();
    fs::set_permissions(bin.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let vaultctl = bin.path().join("vaultctl");
    fs::copy(&bins().vaultctl, &vaultctl).unwrap();
    vault_tests::wait_for("the copy to run", || std::process::Command::new(&vaultctl).arg("--version").output().ok());
    (d, bin, vaultctl)
}

fn get_as(d: &Daemon, vaultctl: &PathBuf, uid: u32, token: Option<&str>, name: &str) -> Output {
    let mut cmd = std::process::Command::new(vaultctl);
    cmd.args(["--env", "prod", "get", name]).env("VAULT_SOCKET", &d.agent_socket).env_remove("VAULT_TOKEN");
    if let Some(token) = token {
        cmd.env("VAULT_TOKEN", token);
    }
    cmd.uid(uid).gid(uid).current_dir("/");
    run(cmd, b"")
}

fn create_token(d: &Daemon, args: &[&str]) -> (String, String) {
    let mut all = vec!["--json", "token", "create", "--client", "bot"];
    all.extend_from_slice(args);
    let created = d.ctl(&all, b"").ok().json();
    (created["token"].as_str().unwrap().to_owned(), created["accessor"].as_str().unwrap().to_owned())
}

#[test]
fn tokens_are_bound_counted_expire_revoke_and_survive_a_restart() {
    if !is_root() {
        vault_tests::skip_unless_ci("needs root (run as root, as CI does)");
        return;
    }
    let (mut d, _bin, vaultctl) = shared_daemon("");
    d.ctl(&["--env", "prod", "put", "telegram"], b"123:tg").ok();
    d.ctl(&["client", "add", "bot", "--uid", &A.to_string(), "--allow", "prod/telegram"], b"").ok();

    let (token, accessor) = create_token(&d, &["--uses", "2"]);
    assert!(token.starts_with("vt_") && token.len() > 40, "{token}");
    assert_eq!(get_as(&d, &vaultctl, A, Some(&token), "telegram").ok().stdout, b"123:tg");
    let refusal = get_as(&d, &vaultctl, B, Some(&token), "telegram").error(3).to_owned();
    assert!(refusal.contains("token"), "a token bound to uid {A} is refused from {B}: {refusal}");
    assert_eq!(get_as(&d, &vaultctl, A, Some(&token), "telegram").ok().stdout, b"123:tg");
    get_as(&d, &vaultctl, A, Some(&token), "telegram").error(3); // two uses, both spent
    get_as(&d, &vaultctl, A, Some("vt_not-a-real-token"), "telegram").error(3);

    // A token of a disabled client is refused and spends none of its uses.
    let (counted, counted_accessor) = create_token(&d, &["--uses", "1"]);
    d.ctl(&["client", "disable", "bot"], b"").ok();
    get_as(&d, &vaultctl, A, Some(&counted), "telegram").error(3);
    d.ctl(&["client", "enable", "bot"], b"").ok();
    let listed = d.ctl(&["--json", "token", "list"], b"").ok().json();
    let untouched = listed.as_array().unwrap().iter().find(|t| t["accessor"] == counted_accessor.as_str()).unwrap();
    assert!(untouched["uses_left"] == 1 && untouched["last_used_unix"].is_null(), "{untouched}");
    assert_eq!(get_as(&d, &vaultctl, A, Some(&counted), "telegram").ok().stdout, b"123:tg");

    let (lasting, lasting_accessor) = create_token(&d, &["--ttl", "1h"]);
    let (short, _) = create_token(&d, &["--ttl", "1s"]);
    let (any, _) = create_token(&d, &["--any-uid"]);
    assert_eq!(get_as(&d, &vaultctl, B, Some(&any), "telegram").ok().stdout, b"123:tg", "--any-uid");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    get_as(&d, &vaultctl, A, Some(&short), "telegram").error(3);

    // A restart seals; once unlocked the token works until its TTL.
    d.restart();
    d.unlock();
    assert_eq!(get_as(&d, &vaultctl, A, Some(&lasting), "telegram").ok().stdout, b"123:tg");
    d.ctl(&["token", "revoke", &lasting_accessor], b"").ok();
    get_as(&d, &vaultctl, A, Some(&lasting), "telegram").error(3);

    let list = d.ctl(&["--json", "token", "list"], b"").ok();
    let listed = list.json();
    let spent = listed.as_array().unwrap().iter().find(|t| t["accessor"] == accessor.as_str()).unwrap();
    assert_eq!(spent["uses_left"], 0, "{spent}");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["accessor"] == lasting_accessor.as_str() && t["revoked_unix"].is_i64())
    );

    // The token itself never reaches the list, the audit trail or vaultd's log.
    let (export, entries) = d.audit_export("audit.jsonl");
    for t in [&token, &lasting, &short, &any] {
        let secret = &t.as_bytes()[3..];
        for (what, haystack) in [("list", &list.stdout), ("export", &export), ("log", &d.log().into_bytes())] {
            assert!(!vault_tests::contains(haystack, secret), "a token reached the {what}");
        }
    }
    let reasons: Vec<&str> = entries
        .iter()
        .filter(|e| e["type"] == "token.refused")
        .map(|e| e["detail"]["reason"].as_str().unwrap())
        .collect();
    let want = ["used from another uid", "no uses left", "unknown", "client disabled or removed", "expired", "revoked"];
    assert_eq!(reasons, want, "{entries:#?}");
    let used: Vec<_> = entries.iter().filter(|e| e["type"] == "secret.read" && e["outcome"] == "ok").collect();
    assert!(used.iter().all(|e| e["actor"]["token"].is_string() && e["actor"]["client"] == "bot"), "{used:#?}");
    assert!(d.audit_verify().is_ok());
}

#[test]
fn a_burst_over_the_limit_is_refused_and_others_are_unaffected() {
    if !is_root() {
        vault_tests::skip_unless_ci("needs root (run as root, as CI does)");
        return;
    }
    let (d, _bin, vaultctl) = shared_daemon("[limits]\nclient_rate = 1.0\nclient_burst = 3.0\n");
    d.ctl(&["--env", "prod", "put", "telegram"], b"123:tg").ok();
    for (name, uid) in [("greedy", A), ("polite", B)] {
        d.ctl(&["client", "add", name, "--uid", &uid.to_string(), "--allow", "prod/telegram"], b"").ok();
    }
    let codes: Vec<i32> = (0..6).map(|_| get_as(&d, &vaultctl, A, None, "telegram").code.unwrap()).collect();
    assert_eq!(&codes[..3], [0, 0, 0], "the burst is served");
    assert!(codes[3..].iter().all(|&c| c == 1), "then refused: {codes:?}");
    let refused = get_as(&d, &vaultctl, A, None, "telegram");
    assert!(refused.error(1).contains("rate limit exceeded; retry in"), "{refused:?}");
    assert_eq!(get_as(&d, &vaultctl, B, None, "telegram").ok().stdout, b"123:tg", "another client is unaffected");
    for _ in 0..6 {
        d.ctl(&["--env", "prod", "get", "telegram"], b"").ok(); // the owner is not limited
    }
    let limited = d.audit_query(&["--type", "request.rate_limited", "--limit", "0"]);
    assert_eq!(limited.len(), 4, "{limited:#?}");
    assert!(limited.iter().all(|e| e["actor"]["uid"] == A));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_secrets_is_all_or_nothing() {
    let d = Daemon::initialized();
    d.put("telegram", b"t");
    d.put("openai", b"o");
    let mut agent = vault_proto::agent_client(vault_proto::connect(&d.agent_socket).await.unwrap());
    let ask =
        |names: &[&str]| GetSecretsRequest { env: String::new(), names: names.iter().map(|n| (*n).into()).collect() };
    let got = agent.get_secrets(ask(&["openai", "telegram"])).await.unwrap().into_inner().secrets;
    let pairs: Vec<_> = got.iter().map(|s| (s.name.as_str(), s.value.as_slice(), s.version)).collect();
    assert_eq!(pairs, [("openai", &b"o"[..], 1), ("telegram", &b"t"[..], 1)]);
    let err = agent.get_secrets(ask(&["openai", "missing", "telegram"])).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("missing"), "{err:?}");
    let err = agent.get_secrets(ask(&["openai", "Bad Name"])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let too_many: Vec<String> = (0..257).map(|i| format!("s{i}")).collect();
    let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
    assert_eq!(agent.get_secrets(ask(&refs)).await.unwrap_err().code(), Code::InvalidArgument);
    let reads = d.audit_query(&["--type", "secret.read", "--limit", "0"]);
    assert_eq!(reads.len(), 5, "two reads, then two allowed and one denied in the failed batch: {reads:#?}");
}

#[test]
fn a_token_expires_when_the_clock_passes_its_ttl() {
    if !is_root() {
        vault_tests::skip_unless_ci("needs root to read as another uid");
        return;
    }
    let (d, _bin, vaultctl) = shared_daemon("");
    d.ctl(&["--env", "prod", "put", "telegram"], b"123:tg").ok();
    d.ctl(&["client", "add", "bot", "--uid", &A.to_string(), "--allow", "prod/telegram"], b"").ok();
    let (token, _) = create_token(&d, &["--ttl", "1h"]);
    assert_eq!(get_as(&d, &vaultctl, A, Some(&token), "telegram").ok().stdout, b"123:tg");
    // An hour and a second later by vaultd's clock, without waiting an hour.
    d.advance_clock(std::time::Duration::from_secs(3601));
    get_as(&d, &vaultctl, A, Some(&token), "telegram").error(3);
    let refused = d.audit_query(&["--type", "token.refused"]);
    assert_eq!(refused.last().unwrap()["detail"]["reason"], "expired", "{refused:?}");
}

/// Two containers on one uid (issue 19): A without its token reads nothing of
/// B's (nor of its own); with its token, only its own.
#[test]
fn token_only_clients_separate_agents_that_share_a_uid() {
    if !is_root() {
        vault_tests::skip_unless_ci("needs root to read as another uid");
        return;
    }
    let (d, _bin, vaultctl) = shared_daemon("");
    d.ctl(&["--env", "prod", "put", "alpha"], b"ALPHA").ok();
    d.ctl(&["--env", "prod", "put", "beta"], b"BETA").ok();
    let uid = A.to_string();
    d.ctl(&["client", "add", "cont-a", "--uid", &uid, "--token-only", "--allow", "prod/alpha"], b"").ok();
    // B's client is not token-only: the uid alone would match it, were it not
    // for A's being so.
    d.ctl(&["client", "add", "cont-b", "--uid", &uid, "--allow", "prod/beta"], b"").ok();
    let token = |client: &str| {
        let created = d.ctl(&["--json", "token", "create", "--client", client], b"").ok().json();
        created["token"].as_str().unwrap().to_owned()
    };
    let (a, b) = (token("cont-a"), token("cont-b"));
    for name in ["alpha", "beta"] {
        get_as(&d, &vaultctl, A, None, name).error(3);
    }
    assert_eq!(get_as(&d, &vaultctl, A, Some(&a), "alpha").ok().stdout, b"ALPHA");
    get_as(&d, &vaultctl, A, Some(&a), "beta").error(3);
    assert_eq!(get_as(&d, &vaultctl, A, Some(&b), "beta").ok().stdout, b"BETA");
    get_as(&d, &vaultctl, A, Some(&b), "alpha").error(3);
    let denied = d.audit_query(&["--type", "secret.read", "--secret", "prod/beta"]);
    assert!(
        denied.iter().any(|e| e["detail"]["reason"] == "this uid's clients need a token"),
        "the refusal says why: {denied:?}"
    );
    // The listing says so too.
    let listed = d.ctl(&["--json", "client", "list"], b"").ok().json();
    assert!(listed.as_array().unwrap().iter().any(|c| c["name"] == "cont-a" && c["token_only"] == true), "{listed}");
}

/// A token bound to an executable (issue 19): a same-uid process that got hold
/// of it (a leaked environment, a core dump) but runs another program, even a
/// byte-identical copy, is refused, and the audit log says why.
#[test]
fn a_token_bound_to_an_executable_serves_only_that_file() {
    if !is_root() {
        vault_tests::skip_unless_ci("needs root to read as another uid");
        return;
    }
    let (d, bin, vaultctl) = shared_daemon("");
    let other = bin.path().join("other");
    fs::copy(&vaultctl, &other).unwrap();
    d.ctl(&["--env", "prod", "put", "telegram"], b"123:tg").ok();
    d.ctl(&["client", "add", "bot", "--uid", &A.to_string(), "--token-only", "--allow", "prod/telegram"], b"").ok();
    let exe = vaultctl.to_str().unwrap();
    let (token, accessor) = create_token(&d, &["--exe", exe]);

    assert_eq!(get_as(&d, &vaultctl, A, Some(&token), "telegram").ok().stdout, b"123:tg");
    get_as(&d, &other, A, Some(&token), "telegram").error(3);
    // Polled: a query can miss a batch the journal importer is committing.
    let refused = vault_tests::wait_for("the refused token in the audit log", || {
        d.audit_query(&["--type", "token.refused"]).pop()
    });
    assert_eq!(refused["detail"]["reason"], "used from another executable", "{refused}");
    assert_eq!(refused["detail"]["accessor"], accessor.as_str(), "{refused}");

    let listed = d.ctl(&["--json", "token", "list"], b"").ok().json();
    assert_eq!(listed[0]["bind_exe"], exe, "{listed}");
    // A path that cannot be checked is refused when the token is made, not at every use.
    d.ctl(&["token", "create", "--client", "bot", "--exe", "vaultctl"], b"").error(2);
    let missing = d.ctl(&["token", "create", "--client", "bot", "--exe", "/nonexistent/agent"], b"");
    assert!(missing.error(2).contains("not a file vaultd can see"), "{missing:?}");
}

/// A token's use is spent only by a request that is served (issue 18, 20): not
/// by one the rate limit refuses, nor by one for a secret it was not granted.
#[test]
fn only_a_served_request_spends_a_tokens_use() {
    if !is_root() {
        vault_tests::skip_unless_ci("needs root to read as another uid");
        return;
    }
    let (d, _bin, vaultctl) = shared_daemon("[limits]\nclient_rate = 0.001\nclient_burst = 1.0\n");
    d.ctl(&["--env", "prod", "put", "telegram"], b"123:tg").ok();
    d.ctl(&["--env", "prod", "put", "other"], b"x").ok();
    d.ctl(&["client", "add", "bot", "--uid", &A.to_string(), "--allow", "prod/telegram"], b"").ok();
    let (token, accessor) = create_token(&d, &["--uses", "5"]);
    let uses_left = || {
        let listed = d.ctl(&["--json", "token", "list"], b"").ok().json();
        let t = listed.as_array().unwrap().iter().find(|t| t["accessor"] == accessor.as_str()).cloned().unwrap();
        t["uses_left"].as_i64().unwrap()
    };
    assert_eq!(get_as(&d, &vaultctl, A, Some(&token), "telegram").ok().stdout, b"123:tg");
    assert_eq!(uses_left(), 4);
    // The bucket is empty now: refused, and nothing spent.
    for _ in 0..3 {
        get_as(&d, &vaultctl, A, Some(&token), "telegram").error(1);
    }
    assert_eq!(uses_left(), 4, "a request the rate limit refused spent a use");
    let (d2, _bin2, vaultctl2) = shared_daemon("");
    d2.ctl(&["--env", "prod", "put", "other"], b"x").ok();
    d2.ctl(&["client", "add", "bot", "--uid", &A.to_string(), "--allow", "prod/telegram"], b"").ok();
    let created = d2.ctl(&["--json", "token", "create", "--client", "bot", "--uses", "5"], b"").ok().json();
    let token2 = created["token"].as_str().unwrap();
    get_as(&d2, &vaultctl2, A, Some(token2), "other").error(3);
    let listed = d2.ctl(&["--json", "token", "list"], b"").ok().json();
    assert_eq!(listed[0]["uses_left"], 5, "a read of a secret not granted spent a use: {listed}");
}
