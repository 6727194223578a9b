//! A secret's life through vaultctl: put, get the exact bytes back, new versions,
//! show, list, rm, and environments kept apart.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use vault_tests::{Daemon, base64, path_str};

#[test]
fn get_returns_exactly_the_bytes_put() {
    let d = Daemon::initialized();
    let all_bytes: Vec<u8> = (0..=255).collect();
    let cases: [(&str, Vec<u8>); 6] = [
        ("telegram", b"123456:AAH-telegram-bot-token".to_vec()),
        ("trailing-newline", b"sk-ant-abc\n".to_vec()),
        ("binary", all_bytes),
        ("utf8", "clé-€-日本語-🦀".as_bytes().to_vec()),
        ("one-byte", b"x".to_vec()),
        ("max-size", (0..65536u32).map(|i| (i * 7 % 251) as u8).collect()),
    ];
    for (name, value) in &cases {
        assert_eq!(d.put(name, value), 1, "{name}");
    }
    for (name, value) in &cases {
        assert_eq!(&d.get(name), value, "{name}: get must print the value's exact bytes and nothing else");
    }
    assert_eq!(d.status()["secrets"], cases.len());
}

#[test]
fn get_json_shows_text_as_value_and_binary_as_base64() {
    let d = Daemon::initialized();
    d.put("text", "tök€n".as_bytes());
    d.put("bin", b"\xff\x00\xfe");
    let text = d.ctl(&["--json", "get", "text"], b"").ok().json();
    assert_eq!(text, json!({"env": "default", "name": "text", "version": 1, "value": "tök€n"}));
    let bin = d.ctl(&["--json", "get", "bin"], b"").ok().json();
    assert_eq!(bin, json!({"env": "default", "name": "bin", "version": 1, "value_base64": base64(b"\xff\x00\xfe")}));
    let shown = d.ctl(&["--json", "show", "--reveal", "bin"], b"").ok().json();
    assert_eq!(shown["value_base64"], base64(b"\xff\x00\xfe"), "{shown}");
    assert!(shown.get("value").is_none(), "{shown}");
}

#[test]
fn value_from_file_is_taken_byte_for_byte() {
    let d = Daemon::initialized();
    let value = b"from-file\r\n\x00end\n";
    let file = d.write_file("value", value);
    d.ctl(&["put", "filed", "--from-file", path_str(&file)], b"ignored stdin").ok();
    assert_eq!(d.get("filed"), value);
}

#[test]
fn versions_show_list_and_rm() {
    let d = Daemon::initialized();
    let put = d.ctl(&["--json", "put", "telegram", "--provider", "telegram", "--description", "bot"], b"v1-token");
    let new = json!({"env": "default", "name": "telegram", "version": 1, "previous_version": 0, "grace_until_unix": 0});
    assert_eq!(put.ok().json(), new);
    assert_eq!(d.put("telegram", b"v2-token"), 2);
    assert_eq!(d.get("telegram"), b"v2-token");

    let versions = d.ctl(&["--json", "versions", "telegram"], b"").ok().json();
    let states: Vec<_> =
        versions.as_array().unwrap().iter().map(|v| (v["version"].clone(), v["state"].clone())).collect();
    assert_eq!(states, [(json!(2), json!("current")), (json!(1), json!("previous"))], "{versions}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    for v in versions.as_array().unwrap() {
        assert!(v["created_unix"].as_i64().unwrap() > 1_600_000_000, "{v}");
    }
    // The previous version stays readable for the default grace period, an hour.
    assert_eq!(versions[0]["expires_unix"], 0, "{versions}");
    let grace_end = versions[1]["expires_unix"].as_i64().unwrap();
    assert!((now + 3590..=now + 3610).contains(&grace_end), "{versions}");

    let show = d.ctl(&["--json", "show", "telegram"], b"").ok().json();
    assert_eq!(show["current_version"], 2, "{show}");
    assert_eq!(show["provider"], "telegram", "labels are kept when a put gives none: {show}");
    assert_eq!(show["description"], "bot", "{show}");
    assert!(show.get("value").is_none() && show.get("value_base64").is_none(), "show without --reveal: {show}");
    let text = d.ctl(&["show", "telegram"], b"").ok().text();
    assert!(!text.contains("v2-token") && !text.contains("v1-token"), "{text}");

    // A third version: one previous at a time, the older one retires.
    assert_eq!(d.put("telegram", b"v3-token"), 3);
    let versions = d.ctl(&["--json", "versions", "telegram"], b"").ok().json();
    let states: Vec<_> = versions.as_array().unwrap().iter().map(|v| v["state"].clone()).collect();
    assert_eq!(states, [json!("current"), json!("previous"), json!("retired")], "{versions}");
    assert_eq!(d.put("telegram", b"v2-token"), 4);

    let revealed = d.ctl(&["--json", "show", "telegram", "--reveal"], b"").ok().json();
    assert_eq!(revealed["value"], "v2-token", "{revealed}");
    let revealed_text = d.ctl(&["show", "--reveal", "telegram"], b"").ok().text();
    assert!(revealed_text.contains("v2-token"), "{revealed_text}");

    d.put("anthropic", b"sk-ant");
    let list = d.ctl(&["--json", "list"], b"").ok().json();
    let names: Vec<_> = list.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["anthropic", "telegram"], "{list}");
    assert!(list.as_array().unwrap().iter().all(|s| s.get("value").is_none()), "{list}");
    let table = d.ctl(&["list"], b"").ok().text();
    assert!(table.contains("telegram") && table.contains("anthropic"), "{table}");

    let rm = d.ctl(&["--json", "rm", "telegram"], b"").ok().json();
    assert_eq!(rm, json!({"env": "default", "name": "telegram", "versions_destroyed": 4}));
    d.ctl(&["get", "telegram"], b"").error(3);
    d.ctl(&["show", "telegram"], b"").error(3);
    d.ctl(&["versions", "telegram"], b"").error(3);
    d.ctl(&["rm", "telegram"], b"").error(3);
    assert_eq!(d.get("anthropic"), b"sk-ant", "rm touches only the named secret");

    // A new secret of the same name starts over at version 1.
    assert_eq!(d.put("telegram", b"fresh"), 1);
    assert_eq!(d.get("telegram"), b"fresh");
}

#[test]
fn environments_are_separate() {
    let d = Daemon::initialized();
    d.put("telegram", b"default-token");
    let put = d.ctl(&["--env", "staging", "--json", "put", "telegram"], b"staging-token").ok().json();
    assert_eq!(
        put,
        json!({"env": "staging", "name": "telegram", "version": 1, "previous_version": 0, "grace_until_unix": 0})
    );

    assert_eq!(d.get("telegram"), b"default-token");
    assert_eq!(d.ctl(&["--env", "staging", "get", "telegram"], b"").ok().stdout, b"staging-token");
    // VAULT_ENV works like --env.
    let mut cmd = d.ctl_command(&["get", "telegram"]);
    cmd.env("VAULT_ENV", "staging");
    assert_eq!(vault_tests::run(cmd, b"").ok().stdout, b"staging-token");

    d.ctl(&["--env", "prod", "get", "telegram"], b"").error(3);
    let staging = d.ctl(&["--env", "staging", "--json", "list"], b"").ok().json();
    assert_eq!(staging.as_array().unwrap().len(), 1, "{staging}");
    assert_eq!(staging[0]["env"], "staging");

    d.ctl(&["--env", "staging", "rm", "telegram"], b"").ok();
    d.ctl(&["--env", "staging", "get", "telegram"], b"").error(3);
    assert_eq!(d.get("telegram"), b"default-token", "rm in staging leaves default alone");
}

#[test]
fn concurrent_puts_each_get_their_own_version() {
    let d = Daemon::initialized();
    let n = 12;
    std::thread::scope(|s| {
        for i in 0..n {
            let d = &d;
            s.spawn(move || d.put("telegram", format!("token-{i}").as_bytes()));
        }
    });
    let versions = d.ctl(&["--json", "versions", "telegram"], b"").ok().json();
    let versions = versions.as_array().unwrap();
    let numbers: Vec<u64> = versions.iter().map(|v| v["version"].as_u64().unwrap()).collect();
    // The newest ten are kept (`[rotation] keep_versions`); older retired ones go.
    assert_eq!(numbers, (3..=n).rev().collect::<Vec<u64>>());
    let current: Vec<_> = versions.iter().filter(|v| v["state"] == "current").collect();
    assert_eq!(current.len(), 1, "{versions:?}");
    assert_eq!(current[0]["version"], n);
    let value = String::from_utf8(d.get("telegram")).unwrap();
    assert!(value.starts_with("token-"), "{value}");
}
