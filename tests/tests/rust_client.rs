//! `vault_proto::Client`, the helper Rust agents use, against a real vaultd: get,
//! get_many, watch, and the refusals an agent meets. Its example agent is run in
//! example_agents.rs.
#![allow(clippy::unwrap_used)]

use std::time::Duration;
use tokio_stream::StreamExt as _;
use tonic::Code;
use vault_proto::{Client, Secret};
use vault_tests::{Daemon, unique_tag};

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
