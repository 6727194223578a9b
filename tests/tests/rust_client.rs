//! `vault_proto::Client`, the helper Rust agents use, against a real vaultd: as a
//! library (get, get_many, watch, refusals) and through the example agent
//! (`proto/examples/agent.rs`), which the README tells people to copy.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt as _;
use tonic::Code;
use vault_proto::{Client, Secret};
use vault_tests::{ChildGuard, Daemon, unique_tag};

/// `vaultctl token create --client CLIENT --any-uid`: the token (the tests all
/// run as the vault's owner, so a token is what makes them another client).
fn token(d: &Daemon, client: &str) -> String {
    let out = d.ctl(&["--json", "token", "create", "--client", client, "--any-uid"], b"").ok().json();
    out["token"].as_str().unwrap().to_owned()
}

/// The next update of `watch`, failing the test after 10 s.
async fn next(watch: &mut vault_proto::Watch) -> Result<Option<Vec<Secret>>, vault_proto::Error> {
    tokio::time::timeout(Duration::from_secs(10), watch.message()).await.expect("no update within 10 s")
}

/// `(name, version, value)` of each secret in an update.
fn summary(update: &[Secret]) -> Vec<(&str, u64, &[u8])> {
    update.iter().map(|s| (s.name.as_str(), s.version, s.value.expose())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reads_watches_and_is_refused_like_any_agent() {
    let d = Daemon::initialized();
    let tag = unique_tag();
    let (telegram, openai, other) = (format!("tg-v1-{tag}"), format!("sk-v1-{tag}"), format!("other-{tag}"));
    for (name, value) in [("telegram", &telegram), ("openai", &openai), ("other", &other)] {
        d.ctl(&["--env", "prod", "put", name], value.as_bytes()).ok();
    }
    let allow = ["--allow", "prod/telegram", "--allow", "prod/openai"];
    d.ctl(&[&["client", "add", "bot", "--uid", "4242"][..], &allow].concat(), b"").ok();
    let bot_token = token(&d, "bot");
    let vault = Client::connect(&d.agent_socket).await.unwrap().with_env("prod").with_token(&bot_token).unwrap();
    let shown = format!("{vault:?}");
    assert!(shown.contains("[set]") && shown.contains("prod") && !shown.contains(&bot_token[3..]), "{shown}");

    // get and get_many: the exact bytes, by name.
    let value = vault.get("telegram").await.unwrap();
    assert_eq!(value.expose_str().unwrap(), telegram);
    assert_eq!(format!("{value:?}"), "[redacted]");
    let many = vault.get_many(&["telegram", "openai"]).await.unwrap();
    assert_eq!(many.len(), 2);
    assert_eq!((many["telegram"].expose(), many["openai"].expose()), (telegram.as_bytes(), openai.as_bytes()));

    // Not granted and not there are one answer; get_many is all or nothing; the
    // environment is the client's: without with_env, telegram is default/telegram,
    // which does not exist.
    let default_env = Client::connect(&d.agent_socket).await.unwrap().with_token(&bot_token).unwrap();
    for (what, err) in [
        ("not granted", vault.get("other").await.err().unwrap()),
        ("no such secret", vault.get("nosuch").await.err().unwrap()),
        ("one of many not granted", vault.get_many(&["telegram", "other"]).await.err().unwrap()),
        ("the default environment", default_env.get("telegram").await.err().unwrap()),
    ] {
        assert_eq!(err.code(), Code::NotFound, "{what}: {err}");
        assert!(!err.to_string().contains(&tag), "{what}: {err}");
    }

    // watch: every value at once, then only what rotated, through both interfaces.
    let mut watch = vault.watch(&["telegram", "openai"]).await.unwrap();
    let first = next(&mut watch).await.unwrap().unwrap();
    assert_eq!(summary(&first), [("telegram", 1, telegram.as_bytes()), ("openai", 1, openai.as_bytes())]);
    let rotated = format!("sk-v2-{tag}");
    d.ctl(&["--env", "prod", "rotate", "openai"], rotated.as_bytes()).ok();
    let update = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(summary(&update), [("openai", 2, rotated.as_bytes())]);
    assert_eq!(update[0].env, "prod");

    // Access ends: the watch ends with PERMISSION_DENIED, then yields nothing.
    d.ctl(&["client", "ungrant", "bot", "prod/openai"], b"").ok();
    let ended = next(&mut watch).await.err().unwrap();
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended}");
    assert!(ended.to_string().contains("access to prod/openai ended"), "{ended}");
    assert!(next(&mut watch).await.unwrap().is_none());

    // A revoked token ends a watch too, and is refused outright afterwards.
    let mut watch = vault.watch(&["telegram"]).await.unwrap();
    assert_eq!(summary(&next(&mut watch).await.unwrap().unwrap()), [("telegram", 1, telegram.as_bytes())]);
    d.ctl(&["token", "revoke", "--all"], b"").ok();
    assert_eq!(next(&mut watch).await.err().unwrap().code(), Code::PermissionDenied);
    assert_eq!(vault.get("telegram").await.err().unwrap().code(), Code::Unauthenticated);
}

/// The example agent, run as an agent would be: `VAULT_SOCKET`, `VAULT_TOKEN`,
/// `VAULT_ENV` and the secret names on argv.
fn agent(d: &Daemon, token: &str, names: &[&str]) -> Command {
    let mut cmd = Command::new(vault_tests::example("vault-proto", "agent"));
    cmd.args(names)
        .env("VAULT_SOCKET", &d.agent_socket)
        .env("VAULT_TOKEN", token)
        .env("VAULT_ENV", "prod")
        .env_remove("VAULT_ADMIN_SOCKET");
    cmd
}

fn line(out: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line
}

#[test]
fn the_example_agent_loads_its_secrets_and_follows_a_rotation() {
    let d = Daemon::initialized();
    let tag = unique_tag();
    // Lengths the test can tell apart: the agent prints lengths, never values.
    let telegram = format!("tg-{tag}"); // 19 bytes
    let openai = format!("sk-{tag}-openai"); // 26 bytes
    let rotated = format!("tg-v2-{tag}-rotated"); // 30 bytes
    assert_eq!([telegram.len(), openai.len(), rotated.len()], [19, 26, 30]);
    d.ctl(&["--env", "prod", "put", "telegram"], telegram.as_bytes()).ok();
    d.ctl(&["--env", "prod", "put", "openai"], openai.as_bytes()).ok();
    d.ctl(&["client", "add", "bot", "--uid", "4242", "--allow", "prod/*"], b"").ok();
    d.ctl(&["client", "add", "tg-only", "--uid", "4243", "--allow", "prod/telegram"], b"").ok();

    let mut cmd = agent(&d, &token(&d, "bot"), &["telegram", "openai"]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut guard = ChildGuard(Some(vault_tests::spawn(&mut cmd)));
    let child = guard.0.as_mut().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    for want in ["loaded telegram: 19 bytes\n", "loaded openai: 26 bytes\n", "watching 2 secrets\n"] {
        let got = line(&mut stdout);
        assert_eq!(got, want, "so far: {printed:?}");
        printed += &got;
    }
    // The watch is established ("watching"), so this rotation arrives as an update.
    d.ctl(&["--env", "prod", "rotate", "telegram"], rotated.as_bytes()).ok();
    let got = line(&mut stdout);
    assert_eq!(got, "updated telegram: version 2, 30 bytes\n", "so far: {printed:?}");
    printed += &got;

    // Its grant removed, the agent's watch ends and it exits 1, saying why.
    d.ctl(&["client", "ungrant", "bot", "prod/*"], b"").ok();
    let mut child = guard.0.take().unwrap();
    let status = vault_tests::wait_until(&mut child, Instant::now() + Duration::from_secs(10));
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the agent did not exit when its access ended")
    });
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    stdout.read_to_string(&mut printed).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("agent: vaultd: access to prod/") && stderr.contains("(PermissionDenied)"), "{stderr}");
    assert_eq!(printed.lines().count(), 4, "nothing more on stdout: {printed:?}");
    for value in [&telegram, &openai, &rotated, &tag] {
        assert!(!printed.contains(value.as_str()) && !stderr.contains(value.as_str()), "a value was printed");
    }

    // Startup fails cleanly, and the token is what the vault judged: as the owner
    // (no token) openai would be readable; as tg-only it is not.
    let out = vault_tests::run(agent(&d, &token(&d, "tg-only"), &["telegram", "openai"]), b"");
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.text());
    assert!(out.stderr.starts_with("agent: vaultd: ") && out.stderr.contains("(NotFound)"), "{}", out.stderr);
    let out = vault_tests::run(agent(&d, "vt_not-a-real-token", &["telegram"]), b"");
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("(Unauthenticated)"), "{}", out.stderr);
    let mut cmd = agent(&d, "", &["telegram"]);
    cmd.env("VAULT_SOCKET", d.dir.path().join("no-such.sock"));
    let out = vault_tests::run(cmd, b"");
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.starts_with("agent: cannot reach vaultd at "), "{}", out.stderr);
}
