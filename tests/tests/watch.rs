//! `WatchSecrets` against a real daemon: many watchers get a rotated value, and a
//! watch ends with PERMISSION_DENIED once its access ends.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tonic::Code;
use vault_proto::v1::GetSecretsRequest;
use vault_tests::{ChildGuard, Daemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_watchers_all_get_the_rotated_value() {
    let d = Daemon::initialized();
    d.put("telegram", b"token-v1");
    // 100 streams over 10 connections (the tests run as the vault's owner).
    let mut streams = Vec::new();
    for _ in 0..10 {
        let agent = vault_proto::agent_client(vault_proto::connect(&d.agent_socket).await.unwrap());
        for _ in 0..10 {
            let request = GetSecretsRequest { env: String::new(), names: vec!["telegram".into()] };
            let mut stream = agent.clone().watch_secrets(request).await.unwrap().into_inner();
            let first = stream.message().await.unwrap().unwrap();
            assert_eq!((first.secrets[0].version, &first.secrets[0].value[..]), (1, &b"token-v1"[..]));
            streams.push(stream);
        }
    }
    let watchers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let update = stream.message().await.unwrap().unwrap();
                (Instant::now(), update.secrets[0].version, update.secrets[0].value.clone())
            })
        })
        .collect();
    let ctl = d.ctl_command(&["rotate", "telegram"]);
    let rotated = tokio::task::spawn_blocking(move || (vault_tests::run(ctl, b"token-v2"), Instant::now()));
    let (out, acknowledged) = rotated.await.unwrap();
    out.ok();
    let mut last = acknowledged;
    for watcher in watchers {
        let (at, version, value) = tokio::time::timeout(Duration::from_secs(10), watcher).await.unwrap().unwrap();
        assert_eq!((version, &value[..]), (2, &b"token-v2"[..]));
        last = last.max(at);
    }
    eprintln!("100 watchers: the last had version 2 {:?} after vaultctl rotate returned", last - acknowledged);
    // Every delivery was a read, and was recorded.
    let reads = d.audit_query(&["--type", "secret.read", "--secret", "default/telegram"]);
    assert!(reads.iter().filter(|e| e["detail"]["watch"] == true && e["detail"]["version"] == 2).count() >= 100);
}

/// `vaultctl watch` with a token of a client; returns the process and a reader of its stdout.
fn watch(d: &Daemon, token: &str, names: &[&str]) -> (ChildGuard, BufReader<std::process::ChildStdout>) {
    let mut args = vec!["watch"];
    args.extend(names);
    let mut cmd = d.ctl_command(&args);
    cmd.env("VAULT_TOKEN", token).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = vault_tests::spawn(&mut cmd);
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (ChildGuard(Some(child)), stdout)
}

fn next_line(out: &mut BufReader<std::process::ChildStdout>) -> serde_json::Value {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// Waits for the watch to end and returns its exit code and stderr.
fn ended(mut guard: ChildGuard) -> (Option<i32>, String) {
    let mut child = guard.0.take().unwrap();
    let status = vault_tests::wait_until(&mut child, Instant::now() + Duration::from_secs(10));
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the watch did not end")
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn vaultctl_watch_prints_updates_and_ends_when_access_ends() {
    let d = Daemon::initialized();
    d.put("telegram", b"token-v1");
    d.put("openai", b"sk-v1");
    d.ctl(&["client", "add", "bot", "--uid", "4242", "--allow", "default/*"], b"").ok();
    let token = |d: &Daemon| {
        let out = d.ctl(&["--json", "token", "create", "--client", "bot", "--any-uid"], b"").ok().json();
        out["token"].as_str().unwrap().to_owned()
    };

    // Updates as JSON lines: every value at once, then each new one.
    let (guard, mut out) = watch(&d, &token(&d), &["telegram", "openai"]);
    let first = [next_line(&mut out), next_line(&mut out)];
    assert_eq!(first[0], serde_json::json!({"env": "default", "name": "telegram", "version": 1, "value": "token-v1"}));
    assert_eq!(first[1]["value"], "sk-v1");
    d.ctl(&["rotate", "openai"], b"sk-v2").ok();
    assert_eq!(
        next_line(&mut out),
        serde_json::json!({"env": "default", "name": "openai", "version": 2, "value": "sk-v2"})
    );
    // A grant removed ends it: PERMISSION_DENIED, which vaultctl exits 3 for.
    d.ctl(&["client", "ungrant", "bot", "default/*"], b"").ok();
    let (code, stderr) = ended(guard);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("access to default/") && stderr.contains("ended"), "{stderr}");

    // A revoked token ends it, and so does a disabled client.
    d.ctl(&["client", "grant", "bot", "default/telegram"], b"").ok();
    for (what, end) in
        [("token revoke", &["token", "revoke", "--all"][..]), ("client disable", &["client", "disable", "bot"])]
    {
        let (guard, mut out) = watch(&d, &token(&d), &["telegram"]);
        assert_eq!(next_line(&mut out)["version"], 1, "{what}");
        d.ctl(end, b"").ok();
        let (code, stderr) = ended(guard);
        assert_eq!(code, Some(3), "{what}: {stderr}");
        assert!(stderr.contains("ended"), "{what}: {stderr}");
        d.ctl(&["client", "enable", "bot"], b"").ok();
    }
    let denials = d.audit_query(&["--type", "secret.watch"]);
    assert_eq!(denials.len(), 3, "{denials:?}");
    assert!(d.audit_verify().is_ok());
}

#[tokio::test]
async fn a_watch_of_something_not_granted_is_not_found_like_a_read() {
    let d = Daemon::initialized();
    d.put("telegram", b"token-v1");
    d.ctl(&["client", "add", "bot", "--uid", "4242", "--allow", "default/other"], b"").ok();
    let out = d.ctl(&["--json", "token", "create", "--client", "bot", "--any-uid"], b"").ok().json();
    let token = out["token"].as_str().unwrap();
    let mut agent = vault_proto::agent_client(vault_proto::connect(&d.agent_socket).await.unwrap());
    let mut request = tonic::Request::new(GetSecretsRequest { env: String::new(), names: vec!["telegram".into()] });
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let status = agent.watch_secrets(request).await.err().unwrap();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let missing = GetSecretsRequest { env: String::new(), names: vec!["nosuch".into()] };
    let owner = agent.watch_secrets(missing).await.err().unwrap();
    assert_eq!(owner.code(), Code::NotFound);
    let none = agent.watch_secrets(GetSecretsRequest::default()).await.err().unwrap();
    assert_eq!(none.code(), Code::InvalidArgument);
}
