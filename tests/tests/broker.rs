//! The credential broker against a real vaultd and local HTTPS upstreams that
//! behave like the providers (a CA made at test time): the key is attached on
//! the way out and never reaches the agent; `use` grants; streaming; rotation
//! and revoke-all during a stream; bad input; the audit of every request.
#![allow(clippy::unwrap_used)]

mod upstream;

use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use upstream::{Agent, Next, Setup};
use vault_tests::{contains, is_root, path_str, unique_tag};

fn message(stream: bool) -> Value {
    json!({"model": "claude-test", "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

#[test]
fn every_provider_gets_the_real_key_and_the_agent_never_holds_it() {
    let s = Setup::new("", "");
    let token = s.client("bot", &["--use", "--allow", "prod/*"]);
    let k = &s.keys;
    let ant = [("x-api-key", token.as_str()), ("anthropic-version", "2023-06-01")];
    let bearer = format!("Bearer {token}");
    for agent in [s.unix(), s.tcp()] {
        // Anthropic, whole and streamed.
        let reply = agent.post_json("/anthropic/v1/messages", &ant, &message(false));
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["content"][0]["text"], "hello from the upstream");
        let mut stream = agent.stream("/anthropic/v1/messages", &ant, &message(true));
        assert_eq!(stream.status, 200);
        let events = String::from_utf8(stream.rest().unwrap()).unwrap();
        assert!(events.contains("event: message_start") && events.contains("part1 "), "{events}");
        // OpenAI chat completions with usage.
        let chat = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]});
        let reply = agent.post_json("/openai/v1/chat/completions", &[("authorization", &bearer)], &chat);
        assert_eq!((reply.status, reply.json()["usage"]["total_tokens"].clone()), (200, json!(21)));
        // Telegram, the token in the path.
        let reply = agent.send("GET", &format!("/telegram/bot{token}/getMe"), &[], b"");
        assert_eq!(reply.json()["result"]["username"], "test_bot", "{}", reply.text());
        let send = json!({"chat_id": 42, "text": "hello"});
        let reply = agent.post_json(&format!("/telegram/bot{token}/sendMessage?chat_id=42"), &[], &send);
        assert_eq!(reply.json()["result"]["text"], "hello");
        // Slack and Discord, their header forms.
        let reply = agent.send("POST", "/slack/api/auth.test", &[("authorization", &bearer)], b"");
        assert_eq!(reply.json()["ok"], true, "{}", reply.text());
        let reply = agent.send("GET", "/discord/api/v10/users/@me", &[("authorization", &format!("Bot {token}"))], b"");
        assert_eq!(reply.json()["username"], "bot", "{}", reply.text());
        for real in [&k.anthropic, &k.openai, &k.telegram, &k.slack, &k.discord] {
            assert!(!contains(&reply.body, real.as_bytes()));
        }
    }
    // The upstream saw each real key in its place, and never the stand-in.
    let seen = s.up.seen();
    assert!(seen.iter().any(|r| r.header("x-api-key").as_deref() == Some(&k.anthropic)));
    assert!(seen.iter().any(|r| r.header("authorization") == Some(format!("Bearer {}", k.openai))));
    assert!(seen.iter().any(|r| r.path == format!("/bot{}/getMe", k.telegram)));
    assert!(seen.iter().any(|r| r.header("authorization") == Some(format!("Bearer {}", k.slack))));
    assert!(seen.iter().any(|r| r.header("authorization") == Some(format!("Bot {}", k.discord))));
    assert!(!s.up.saw(token.as_bytes()), "the vaultd token reached the upstream");
    assert!(seen.iter().all(|r| r.header("accept-encoding").as_deref() == Some("identity")));

    // Each request recorded: route, method, path without query values, status, bytes, tokens.
    let records = s.requests();
    assert_eq!(records.len(), 14, "{records:#?}");
    let streamed = records.iter().find(|r| r["detail"]["path"] == "/v1/messages" && r["detail"]["output_tokens"] == 25);
    let streamed = streamed.unwrap();
    assert_eq!(streamed["actor"]["client"], "bot");
    assert_eq!(streamed["detail"]["input_tokens"], 10);
    assert_eq!(streamed["detail"]["status"], 200);
    assert_eq!(streamed["detail"]["method"], "POST");
    assert!(streamed["detail"]["latency_ms"].is_u64(), "{streamed}");
    assert!(streamed["detail"]["bytes"].as_u64().unwrap() > 100);
    assert_eq!(streamed["secret"], "prod/anthropic");
    let telegram: Vec<_> = records.iter().filter(|r| r["detail"]["route"] == "telegram").collect();
    assert!(telegram.iter().any(|r| r["detail"]["path"] == "/bot…/sendMessage?chat_id="), "{telegram:#?}");
    let audit = s.audit_text();
    for secret in [&token, &k.anthropic, &k.openai, &k.telegram, &k.slack, &k.discord] {
        assert!(!audit.contains(secret.as_str()), "the audit log holds a secret");
    }
    assert!(!s.d.log().contains(&k.anthropic) && !s.d.log().contains(&token));
}

#[test]
fn use_without_read_is_brokered_but_not_readable_and_neither_looks_like_no_route() {
    let s = Setup::new("", "");
    let user = s.client("user", &[]);
    s.d.ctl(&["client", "grant", "user", "prod/anthropic", "--use"], b"").ok();
    let reader = s.client("reader", &["--allow", "prod/anthropic"]);
    let neither = s.client("neither", &["--allow", "prod/openai"]);
    let get = |token: &str| {
        let mut cmd = s.d.ctl_command(&["--env", "prod", "get", "anthropic"]);
        cmd.env("VAULT_TOKEN", token);
        vault_tests::run(cmd, b"")
    };
    assert!(get(&user).error(3).contains("not found"));
    assert_eq!(get(&reader).ok().stdout, s.keys.anthropic.as_bytes(), "a read grant reads");
    let agent = s.tcp();
    let call = |token: &str, path: &str| agent.post_json(path, &[("x-api-key", token)], &message(false));
    assert_eq!(call(&user, "/anthropic/v1/messages").status, 200);
    assert_eq!(call(&reader, "/anthropic/v1/messages").status, 200, "a read grant allows use too");
    let denied = call(&neither, "/anthropic/v1/messages");
    let missing = call(&neither, "/no-such-route/v1/messages");
    assert_eq!(denied.status, 404);
    assert_eq!((denied.status, denied.text()), (missing.status, missing.text().replace("no-such-route", "anthropic")));
    let header = |r: &upstream::Reply| r.headers.iter().find(|(k, _)| k == "content-type").cloned();
    assert_eq!(header(&denied), header(&missing));
    assert_eq!(s.up.seen().len(), 2, "a refused use never reaches the upstream");
    // The uses are audited like reads, allowed and denied.
    let uses = s.d.audit_query(&["--type", "secret.use"]);
    assert_eq!(uses.iter().filter(|u| u["outcome"] == "ok").count(), 2);
    assert_eq!(uses.iter().filter(|u| u["outcome"] == "denied").count(), 1);
}

#[test]
fn a_rotation_lets_a_stream_finish_and_the_next_request_carries_the_new_value() {
    let s = Setup::new("", "");
    let token = s.client("bot", &["--use", "--allow", "prod/anthropic"]);
    let new_key = format!("{}-v2", s.keys.anthropic);
    s.up.set_keys(&[&s.keys.anthropic, &new_key]);
    let agent = s.tcp();
    let slow = json!({"model": "claude-test", "max_tokens": 64, "stream": true, "slow": 10, "messages": []});
    let mut stream = agent.stream("/anthropic/v1/messages", &[("x-api-key", &token)], &slow);
    assert!(matches!(stream.next(Duration::from_secs(5)), Next::Data(_)));
    s.d.ctl(&["--env", "prod", "put", "anthropic"], new_key.as_bytes()).ok();
    let rest = String::from_utf8(stream.rest().expect("the stream finishes after a rotation")).unwrap();
    assert!(rest.contains("part9 ") && rest.contains("message_stop"), "{rest}");
    let reply = agent.post_json("/anthropic/v1/messages", &[("x-api-key", &token)], &message(false));
    assert_eq!(reply.status, 200);
    let keys: Vec<_> = s.up.seen().iter().filter_map(|r| r.header("x-api-key")).collect();
    assert_eq!(keys, [s.keys.anthropic.clone(), new_key], "no agent restart: the next request has the new value");
}

/// A slow stream in flight, cut by `action`: it must break off within 1 s.
fn cut_by(action: &[&str], owner_too: bool) {
    let s = Setup::new("", "");
    let token = s.client("bot", &["--use", "--allow", "prod/anthropic"]);
    let agent = s.tcp();
    let slow = json!({"model": "claude-test", "max_tokens": 64, "stream": true, "slow": 100, "messages": []});
    let mut stream = agent.stream("/anthropic/v1/messages", &[("x-api-key", &token)], &slow);
    assert!(matches!(stream.next(Duration::from_secs(5)), Next::Data(_)));
    let owner_agent = s.unix();
    let mut owners = owner_too.then(|| owner_agent.stream("/anthropic/v1/messages", &[], &slow));
    if let Some(o) = owners.as_mut() {
        assert!(matches!(o.next(Duration::from_secs(5)), Next::Data(_)));
    }
    let started = Instant::now();
    s.d.ctl(action, b"").ok();
    let ended = started.elapsed();
    let cut = loop {
        match stream.next(Duration::from_secs(5)) {
            Next::Data(_) => continue,
            Next::End => panic!("the stream ended normally; it should have been cut"),
            Next::Broken => break started.elapsed(),
        }
    };
    assert!(cut < Duration::from_secs(1), "cut {cut:?} after {action:?} (the command took {ended:?})");
    if let Some(o) = owners.as_mut() {
        assert!(o.rest().is_err(), "revoke-all cuts the owner's streams too");
    }
    let reply = agent.post_json("/anthropic/v1/messages", &[("x-api-key", &token)], &message(false));
    assert_eq!(reply.status, 401, "the token is revoked or its client disabled: {}", reply.text());
    let records = s.requests();
    assert!(records.iter().any(|r| r["detail"]["end"] == "cut: access ended"), "{records:#?}");
}

#[test]
fn revoke_all_cuts_a_stream_within_a_second() {
    cut_by(&["revoke-all", "--reason", "test", "--yes"], true);
}

#[test]
fn disabling_the_client_cuts_its_stream() {
    cut_by(&["client", "disable", "bot"], false);
}

#[test]
fn a_key_the_upstream_echoes_back_is_redacted() {
    let s = Setup::new("", "");
    let token = s.client("bot", &["--use", "--allow", "prod/anthropic"]);
    s.up.set_keys(&[]);
    let reply = s.tcp().post_json("/anthropic/v1/messages", &[("x-api-key", &token)], &message(false));
    assert_eq!(reply.status, 401);
    assert!(!contains(&reply.body, s.keys.anthropic.as_bytes()), "{}", reply.text());
    let masked = "*".repeat(s.keys.anthropic.len());
    assert_eq!(reply.json()["error"]["message"], format!("invalid x-api-key {masked}"));
}

#[test]
fn bad_input_gets_clear_http_errors() {
    let s = Setup::new("", "");
    let token = s.client("bot", &["--use", "--allow", "prod/*"]);
    let tcp = s.tcp();
    let anthropic =
        |agent: &Agent, headers: &[(&str, &str)]| agent.post_json("/anthropic/v1/messages", headers, &message(false));
    // No token on the port; a bad token; a token not shaped like one.
    let r = anthropic(&tcp, &[]);
    assert_eq!((r.status, r.json()["error"]["type"].clone()), (401, json!("authentication_error")));
    let r = anthropic(&tcp, &[("x-api-key", "vt_0000")]);
    assert_eq!((r.status, r.json()["type"].clone()), (401, json!("error")), "{}", r.text());
    let r = anthropic(&tcp, &[("x-api-key", "sk-placeholder")]);
    assert_eq!(r.status, 401, "a stand-in that is no token, on the port");
    // Two different tokens.
    let r = anthropic(&tcp, &[("x-api-key", &token), ("x-vault-token", "vt_other")]);
    assert_eq!(r.status, 400);
    // A compressed body cannot be inspected.
    let r =
        tcp.send("POST", "/anthropic/v1/messages", &[("x-api-key", &token), ("content-encoding", "gzip")], b"\x1f\x8b");
    assert_eq!(r.status, 400, "{}", r.text());
    // Unknown routes, odd paths, Telegram without its path form.
    for path in ["/", "/x", "/%00/../..", "/telegram/getMe", "/telegram/bot"] {
        let r = tcp.send("GET", path, &[("x-api-key", &token)], b"");
        assert!(matches!(r.status, 400 | 404), "{path}: {} {}", r.status, r.text());
        assert!(r.json().is_object());
    }
    // An OpenAI refusal in OpenAI's shape.
    let r = tcp.post_json("/openai/v1/chat/completions", &[("authorization", "Bearer vt_bad")], &json!({}));
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (401, json!("invalid_api_key")));
    // Telegram's shape.
    let r = tcp.send("GET", "/telegram/botvt_bad/getMe", &[], b"");
    assert_eq!((r.status, r.json()["ok"].clone(), r.json()["error_code"].clone()), (401, json!(false), json!(401)));
    // Headers too large: hyper's 431, no panic.
    let big = "x".repeat(600_000);
    let r = std::panic::catch_unwind(|| tcp.send("GET", "/anthropic/v1/models", &[("x-big", &big)], b""));
    assert!(r.map(|r| r.status == 431).unwrap_or(true));
    let seen: Vec<_> = s.up.seen().iter().map(|r| r.path.clone()).collect();
    assert!(seen.is_empty(), "nothing refused reached the upstream: {seen:?}");
    assert!(!s.d.log().contains("panicked"));
    let mut s = s;
    s.d.assert_running();
}

#[test]
fn the_kernel_names_a_caller_on_the_socket_with_no_key_at_all() {
    if !is_root() {
        vault_tests::skip_unless_ci("needs root to connect as another uid");
        return;
    }
    let s = Setup::new("", "");
    std::fs::set_permissions(s.d.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    s.d.ctl(&["client", "add", "nobody-bot", "--uid", "65534", "--use", "--allow", "prod/anthropic"], b"").ok();
    // As uid 65534, a plain HTTP request on the unix socket: no key, no token.
    let script = r#"
import http.client, json, socket, sys
class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sys.argv[1])
c = Conn("broker")
c.request("POST", sys.argv[2], body=json.dumps({"model": "claude-test", "max_tokens": 8, "messages": []}),
          headers={"content-type": "application/json"})
r = c.getresponse()
print(r.status, r.read().decode())
"#;
    let call = |path: &str| {
        let mut cmd = std::process::Command::new("python3");
        cmd.args(["-c", script, path_str(&s.socket), path]).current_dir("/");
        std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
        std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
        let out = vault_tests::run(cmd, b"");
        if out.code != Some(0) {
            let audit = s.d.audit_query(&[]);
            panic!("{}\nvaultd's log:\n{}\naudit: {audit:#?}", out.stderr, s.d.log());
        }
        out.text()
    };
    let out = call("/anthropic/v1/messages");
    assert!(out.starts_with("200 ") && out.contains("hello from the upstream"), "{out}");
    assert!(!out.contains(&s.keys.anthropic));
    let out = call("/openai/v1/chat/completions");
    assert!(out.starts_with("404 "), "not granted: {out}");
    let uses = s.d.audit_query(&["--type", "secret.use"]);
    assert!(
        uses.iter().any(|u| u["actor"]["uid"] == 65534 && u["actor"]["client"] == "nobody-bot" && u["outcome"] == "ok")
    );
}

#[test]
fn budgets_refuse_with_429_in_the_providers_shape_and_reset_each_day() {
    let routes = |name: &str| match name {
        "anthropic" => "[broker.route.budget]\ntokens_per_day = 50\n".to_owned(),
        "openai" => concat!(
            "[broker.route.clients.a]\nrequests_per_minute = 1\n",
            "[broker.route.clients.b]\ncost_per_day = 2.0\n",
            "[broker.route.prices.gpt-test]\ninput = 100000.0\noutput = 100000.0\n",
        )
        .to_owned(),
        _ => String::new(),
    };
    let s = Setup::with_routes("", &routes, "");
    let a = s.client("a", &["--use", "--allow", "prod/*"]);
    let b = s.client("b", &["--use", "--allow", "prod/*"]);
    let agent = s.tcp();
    let anthropic = |token: &str| agent.post_json("/anthropic/v1/messages", &[("x-api-key", token)], &message(false));
    // 35 tokens a message (10 in, 25 out): the second passes the 50, the third is refused.
    assert_eq!(anthropic(&a).status, 200);
    let mut stream = agent.stream("/anthropic/v1/messages", &[("x-api-key", &a)], &message(true));
    assert!(stream.rest().is_ok(), "streamed usage counts too");
    let seen = s.up.seen().len();
    let refused = anthropic(&a);
    assert_eq!(refused.status, 429);
    let body = refused.json();
    assert_eq!((body["type"].clone(), body["error"]["type"].clone()), (json!("error"), json!("rate_limit_error")));
    let message_text = body["error"]["message"].as_str().unwrap();
    assert!(message_text.contains("over budget") && message_text.contains("70 of 50 tokens today"), "{message_text}");
    assert_eq!(s.up.seen().len(), seen, "the upstream sees no further request");
    assert_eq!(anthropic(&b).status, 200, "another client is unaffected");

    // OpenAI: a's requests per minute, b's cost per day (21 tokens at 0.1 a token: 2.1 of 2.0).
    let chat = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]});
    let openai = |token: &str| {
        agent.post_json("/openai/v1/chat/completions", &[("authorization", &format!("Bearer {token}"))], &chat)
    };
    assert_eq!(openai(&a).status, 200);
    let r = openai(&a);
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (429, json!("insufficient_quota")), "{}", r.text());
    assert_eq!(openai(&b).status, 200);
    let r = openai(&b);
    assert_eq!(r.status, 429);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("cost"), "{}", r.text());

    // Visible in `vaultctl budget` and `status`.
    let budgets = s.d.ctl(&["--json", "budget"], b"").ok().json();
    let row = |client: &str, route: &str| {
        budgets.as_array().unwrap().iter().find(|r| r["client"] == client && r["route"] == route).cloned().unwrap()
    };
    assert_eq!(
        (row("a", "anthropic")["tokens_today"].clone(), row("a", "anthropic")["over"].clone()),
        (json!(70), json!(true))
    );
    assert_eq!(row("a", "anthropic")["tokens_per_day"], 50);
    assert_eq!(
        (row("b", "anthropic")["tokens_today"].clone(), row("b", "anthropic")["over"].clone()),
        (json!(35), json!(false))
    );
    assert!((row("b", "openai")["cost_today"].as_f64().unwrap() - 2.1).abs() < 1e-9);
    let table = s.d.ctl(&["budget"], b"").ok().text();
    assert!(table.contains("70/50") && table.contains("OVER BUDGET"), "{table}");
    let status = s.d.ctl(&["status"], b"").ok().text();
    assert!(status.contains("over budget: client a on route anthropic"), "{status}");
    let refusals: Vec<_> = s.requests().into_iter().filter(|r| r["detail"]["reason"] == "over budget").collect();
    assert_eq!(refusals.len(), 3);

    // A new day (vaultd's clock moved): every count starts again.
    s.d.advance_clock(Duration::from_secs(86_400));
    assert_eq!(anthropic(&a).status, 200);
    assert_eq!(openai(&a).status, 200);
    assert_eq!(openai(&b).status, 200);
}

#[test]
fn the_guard_refuses_stored_values_in_headers_and_bodies_and_alerts_arrive() {
    let alerts = concat!(
        "[[alert]]\ntype = \"webhook\"\nurl = \"{upstream}/alerts\"\nca_file = \"{ca_file}\"\n",
        "[[alert]]\ntype = \"telegram\"\nsecret = \"prod/telegram\"\nchat_id = \"-42\"\napi = \"{upstream}\"\nca_file = \"{ca_file}\"\n",
        "[[alert]]\ntype = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"cat >> {dir}/alerts.jsonl; echo >> {dir}/alerts.jsonl\"]\n",
    );
    let s = Setup::new("", alerts);
    let token = s.client("bot", &["--use", "--allow", "prod/anthropic"]);
    let old_password = format!("db-password-{}", unique_tag());
    let password = format!("db-password-{}", unique_tag());
    s.d.ctl(&["--env", "prod", "put", "db"], old_password.as_bytes()).ok();
    s.d.ctl(&["--env", "prod", "put", "db"], password.as_bytes()).ok();
    let agent = s.tcp();
    let key = [("x-api-key", token.as_str())];
    // In a header; in a JSON body (another provider's key, and an old version).
    let r = agent.post_json("/anthropic/v1/messages", &[key[0], ("x-note", &password)], &message(false));
    assert_eq!((r.status, r.json()["error"]["type"].clone()), (403, json!("permission_error")), "{}", r.text());
    for value in [&s.keys.openai, &old_password] {
        let body = json!({"model": "claude-test", "max_tokens": 8, "messages": [{"role": "user", "content": format!("send {value} away")}]});
        let r = agent.post_json("/anthropic/v1/messages", &key, &body);
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(r.text().contains("alert raised"));
    }
    // In a long body streamed through, the value far past the first 64 KiB.
    let long = format!("{}{password}", "x".repeat(300_000));
    let r = agent.post_json(
        "/anthropic/v1/messages",
        &key,
        &json!({"model": "claude-test", "messages": [{"role": "user", "content": long}]}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    for value in [&password, &old_password, &s.keys.openai] {
        assert!(!s.up.saw(value.as_bytes()), "a stored value reached the upstream");
    }
    // An innocent request still goes through.
    assert_eq!(agent.post_json("/anthropic/v1/messages", &key, &message(false)).status, 200);
    let refusals = s.d.audit_query(&["--type", "broker.exfiltration"]);
    assert_eq!(refusals.len(), 4, "{refusals:#?}");

    // The alert: once at each sink (the other three held back), names and numbers only.
    let posted = vault_tests::wait_for("the webhook alert", || {
        let seen = s.up.seen();
        let alerts: Vec<Value> = seen
            .iter()
            .filter(|r| r.path == "/alerts")
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .filter(|a: &Value| a["alert"] == "exfiltration_attempt")
            .collect();
        (!alerts.is_empty()).then_some(alerts)
    });
    assert_eq!(posted[0]["client"], "bot");
    assert_eq!(posted[0]["secret"], "prod/anthropic");
    let telegram = vault_tests::wait_for("the Telegram alert", || {
        s.up.seen().into_iter().find(|r| r.path == format!("/bot{}/sendMessage", s.keys.telegram))
    });
    let text: Value = serde_json::from_slice(&telegram.body).unwrap();
    assert_eq!(text["chat_id"], "-42");
    assert!(text["text"].as_str().unwrap().starts_with("vaultd alert: exfiltration attempt (bot)"), "{text}");
    let file = d_path(&s, "alerts.jsonl");
    let line = vault_tests::wait_for("the command's alert", || {
        std::fs::read_to_string(&file).ok().filter(|t| t.contains("exfiltration"))
    });
    std::thread::sleep(Duration::from_millis(500));
    let alerts_seen: Vec<_> = s.up.seen().into_iter().filter(|r| r.path == "/alerts").collect();
    assert_eq!(alerts_seen.len(), 1, "rate-limited: one alert a minute for the same client");
    for sent in [String::from_utf8_lossy(&alerts_seen[0].body).into_owned(), text.to_string(), line] {
        for value in [&password, &old_password, &s.keys.openai, &s.keys.anthropic, &s.keys.telegram, &token] {
            assert!(!sent.contains(value.as_str()), "an alert carried a secret: {sent}");
        }
    }
    let delivered = vault_tests::wait_for("the alert records", || {
        let sent = s.d.audit_query(&["--type", "alert.sent"]);
        (sent.len() >= 3).then_some(sent)
    });
    assert!(delivered.iter().all(|a| a["detail"]["alert"] == "exfiltration_attempt"), "{delivered:#?}");
}

fn d_path(s: &Setup, name: &str) -> PathBuf {
    s.d.dir.path().join(name)
}

#[test]
fn vaultctl_check_says_ok_for_a_valid_credential_and_why_a_revoked_one_fails() {
    let extra = concat!(
        "[[alert]]\ntype = \"webhook\"\nurl = \"{upstream}/alerts\"\nca_file = \"{ca_file}\"\n",
        "[[broker.route]]\nname = \"github\"\nprovider = \"github\"\nupstream = \"{upstream}\"\n",
        "secret = \"prod/github\"\nca_file = \"{ca_file}\"\n",
    );
    let s = Setup::new("", extra);
    let github = format!("ghp-real-{}", unique_tag());
    s.d.ctl(&["--env", "prod", "put", "github"], github.as_bytes()).ok();
    let k = &s.keys;
    s.up.set_keys(&[&k.anthropic, &k.openai, &k.telegram, &k.slack, &k.discord, &github]);
    let all = s.d.ctl(&["check", "--all"], b"").ok().text();
    for line in [
        "anthropic (anthropic, prod/anthropic): ok, 1 models listed",
        "discord (discord, prod/discord): ok, user bot",
        "github (github, prod/github): ok, user bot",
        "openai (openai, prod/openai): ok, 1 models listed",
        "slack (slack, prod/slack): ok, bot in test",
        "telegram (telegram, prod/telegram): ok, bot @test_bot",
    ] {
        assert!(all.contains(line), "{line:?} not in {all}");
    }
    let json = s.d.ctl(&["--json", "check", "telegram"], b"").ok().json();
    assert_eq!(
        json,
        json!([{"route": "telegram", "provider": "telegram", "secret": "prod/telegram", "ok": true, "detail": "bot @test_bot"}])
    );
    // The provider revokes the bot token and the Anthropic key (which it names when refusing).
    s.up.set_keys(&[&k.openai, &k.slack, &k.discord, &github]);
    let out = s.d.ctl(&["check", "telegram"], b"");
    assert_eq!(out.error(1), "1 of 1 checks failed: telegram (prod/telegram): HTTP 401: Unauthorized");
    let out = s.d.ctl(&["check", "--all"], b"");
    let message = out.error(1).to_owned();
    assert!(
        message.starts_with("2 of 6 checks failed: anthropic (prod/anthropic): HTTP 401: invalid x-api-key ***"),
        "{message}"
    );
    for value in [&k.anthropic, &k.telegram, &k.openai] {
        assert!(!message.contains(value.as_str()) && !out.stderr.contains(value.as_str()));
    }
    assert_eq!(s.d.ctl(&["check", "nope"], b"").error(3), "no route named \"nope\" in [broker]");
    assert_eq!(s.d.ctl(&["check", "--spec", "vaultd.toml", "telegram"], b"").code, Some(2), "a spec or routes");
    let checks = s.d.audit_query(&["--type", "provider.check"]);
    assert_eq!(checks.iter().filter(|c| c["outcome"] == "failed").count(), 3);
    assert_eq!(checks.iter().filter(|c| c["outcome"] == "ok").count(), 11);
    assert!(!serde_json::to_string(&checks).unwrap().contains(&k.anthropic));
    // A failed check raises an alert.
    let alert = vault_tests::wait_for("the check's alert", || {
        s.up.seen().into_iter().filter(|r| r.path == "/alerts").find_map(|r| {
            let a: Value = serde_json::from_slice(&r.body).unwrap();
            (a["alert"] == "provider_check_failed").then_some(a)
        })
    });
    assert!(alert["secret"] == "prod/telegram" || alert["secret"] == "prod/anthropic", "{alert}");
}

#[test]
fn only_the_owner_may_ask_the_brokers_admin_service() {
    if !is_root() {
        vault_tests::skip_unless_ci("needs root to call as another uid");
        return;
    }
    let s = Setup::new("", "");
    std::fs::set_permissions(s.d.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&s.d.admin_socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let bin = tempfile::Builder::new().prefix("vault-e2e-bin-").tempdir().unwrap();
    std::fs::set_permissions(bin.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let vaultctl = bin.path().join("vaultctl");
    std::fs::copy(&vault_tests::bins().vaultctl, &vaultctl).unwrap();
    for args in [&["budget"][..], &["check", "--all"]] {
        let mut cmd = std::process::Command::new(&vaultctl);
        cmd.args(args).env("VAULT_ADMIN_SOCKET", &s.d.admin_socket).current_dir("/");
        std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
        std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
        let out = vault_tests::run(cmd, b"");
        assert!(out.error(3).contains("permission denied"), "{args:?}: {}", out.stderr);
    }
    assert!(s.up.seen().is_empty(), "no check was made");
}

#[test]
fn a_rotation_tested_by_a_provider_check_promotes_only_a_value_that_works() {
    let alerts = "[[alert]]\ntype = \"webhook\"\nurl = \"{upstream}/alerts\"\nca_file = \"{ca_file}\"\n";
    let s = Setup::new("", alerts);
    let token = s.client("bot", &["--use", "--allow", "prod/telegram"]);
    let k = &s.keys;
    let prod = |args: &[&str], stdin: &[u8]| {
        let mut all = vec!["--env", "prod"];
        all.extend_from_slice(args);
        s.d.ctl(&all, stdin)
    };
    let set = |args: &[&str]| {
        let mut all = vec!["rotation", "set", "telegram"];
        all.extend_from_slice(args);
        prod(&all, b"")
    };
    // Checks that cannot be: no rotator; a route that carries another secret
    // (the new value would go to another provider); no such route; a value
    // that no provider issued.
    assert_eq!(set(&["--check", "telegram"]).code, Some(2), "--check needs --rotator");
    let message = set(&["--rotator", "manual", "--check", "anthropic"]).error(2).to_owned();
    assert!(message.contains("route anthropic carries prod/anthropic, not prod/telegram"), "{message}");
    assert!(set(&["--rotator", "manual", "--check", "nope"]).error(2).contains("no route named \"nope\""));
    assert!(set(&["--rotator", "generate", "--check", "telegram"]).error(2).contains("known to no provider"));
    assert!(s.d.audit_query(&["--type", "rotation.policy"]).is_empty(), "nothing refused was stored");
    set(&["--rotator", "manual", "--check", "telegram"]).ok();
    let shown = prod(&["--json", "show", "telegram"], b"").ok().json();
    assert_eq!(shown["rotator"], "manual;check=telegram", "{shown}");

    let getme = || s.tcp().send("GET", &format!("/telegram/bot{token}/getMe"), &[], b"");
    // What the provider saw last, the alerts aside: an alert's POST reaches the
    // same upstream whenever its sink gets to it, after the request or before.
    let last_to_provider = || s.up.seen().into_iter().rev().find(|r| r.path != "/alerts").unwrap().path;
    // A token the provider never issued: the test fails, the current value stays.
    let unknown = format!("{}-never-issued", k.telegram);
    let out = prod(&["rotate", "telegram"], unknown.as_bytes());
    let message = out.error(1).to_owned();
    assert!(message.contains("the telegram check failed: HTTP 401: Unauthorized"), "{message}");
    assert!(!message.contains(&unknown) && !out.stderr.contains(&unknown));
    assert!(s.up.seen().iter().any(|r| r.path == format!("/bot{unknown}/getMe")), "tested at the provider");
    assert_eq!(getme().status, 200);
    assert_eq!(last_to_provider(), format!("/bot{}/getMe", k.telegram));
    // The refused value is not kept (no hook's provider owes it a revoke-old run).
    let versions = prod(&["--json", "versions", "telegram"], b"").ok().json();
    assert_eq!(versions[0]["state"], "destroyed", "{versions}");
    // Recorded as a failed check of that version, and alerted.
    let checks = s.d.audit_query(&["--type", "provider.check"]);
    assert_eq!(checks.len(), 1, "{checks:#?}");
    assert_eq!((checks[0]["outcome"].clone(), checks[0]["detail"]["version"].clone()), (json!("failed"), json!(2)));
    let alert = vault_tests::wait_for("the check's alert", || {
        s.up.seen().into_iter().filter(|r| r.path == "/alerts").find_map(|r| {
            let a: Value = serde_json::from_slice(&r.body).unwrap();
            (a["alert"] == "provider_check_failed").then_some(a)
        })
    });
    assert_eq!(alert["secret"], "prod/telegram");
    assert!(!alert.to_string().contains(&unknown));

    // One it issued: tested at the provider, promoted, and the next request carries it.
    let issued = format!("{}-v3", k.telegram);
    s.up.set_keys(&[&k.telegram, &issued]);
    prod(&["rotate", "telegram"], issued.as_bytes()).ok();
    assert_eq!(getme().status, 200);
    assert_eq!(last_to_provider(), format!("/bot{issued}/getMe"));
    let failed = s.d.audit_query(&["--type", "rotation.failed"]);
    assert_eq!((failed.len(), failed[0]["detail"]["step"].clone()), (1, json!("test")));
    let tested = s.d.audit_query(&["--type", "rotation.tested"]);
    assert_eq!((tested.len(), tested[0]["detail"]["version"].clone()), (1, json!(3)));
    let audit = s.audit_text();
    assert!(!audit.contains(&unknown) && !audit.contains(&issued), "the audit log holds a value");
}

#[test]
fn upstream_connections_are_pooled_and_a_silent_upstream_times_out() {
    let routes = |name: &str| if name == "anthropic" { "timeout = \"500ms\"\n".to_owned() } else { String::new() };
    let s = Setup::with_routes("", &routes, "");
    let token = s.client("bot", &["--use", "--allow", "prod/*"]);
    let chat = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]});
    let bearer = format!("Bearer {token}");
    // Five callers, each on a connection of its own: one pooled connection upstream.
    for _ in 0..5 {
        let reply = s.tcp().post_json("/openai/v1/chat/completions", &[("authorization", &bearer)], &chat);
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(s.up.connections(), 1, "five requests on one pooled upstream connection");
    // The anthropic route waits 500 ms for the next chunk; this stream's is 3 s away.
    let agent = s.tcp();
    let silent =
        json!({"model": "claude-test", "max_tokens": 8, "stream": true, "slow": 2, "every_ms": 3000, "messages": []});
    let mut stream = agent.stream("/anthropic/v1/messages", &[("x-api-key", &token)], &silent);
    assert!(matches!(stream.next(Duration::from_secs(5)), Next::Data(_)));
    let started = Instant::now();
    loop {
        match stream.next(Duration::from_secs(5)) {
            Next::Data(_) => continue,
            Next::End => panic!("the stream ended normally; the route's timeout should have cut it"),
            Next::Broken => break,
        }
    }
    let cut = started.elapsed();
    assert!(cut < Duration::from_millis(2500), "cut after {cut:?}");
    let records = s.requests();
    assert!(records.iter().any(|r| r["detail"]["end"] == "upstream timed out"), "{records:#?}");
    // Another route keeps its own (default) timeout.
    let reply = agent.post_json("/openai/v1/chat/completions", &[("authorization", &bearer)], &chat);
    assert_eq!(reply.status, 200);
}

#[test]
fn alerts_arrive_for_bursts_budgets_rate_limits_anomalies_and_revoke_all() {
    let alerts = concat!(
        "[limits]\nclient_rate = 1.0\nclient_burst = 40.0\n",
        "[[alert]]\ntype = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"cat >> {dir}/alerts.jsonl; echo >> {dir}/alerts.jsonl\"]\n",
    );
    let routes = |name: &str| match name {
        "slack" => "[broker.route.budget]\nrequests_per_day = 2\n".to_owned(),
        _ => String::new(),
    };
    let s = Setup::with_routes("", &routes, alerts);
    let bot = s.client("bot", &["--use", "--allow", "prod/*"]);
    let nogrant = s.client("nogrant", &["--use", "--allow", "prod/discord"]);
    let greedy = s.client("greedy", &["--use", "--allow", "prod/*"]);
    let agent = s.tcp();
    let anthropic = |token: &str| agent.post_json("/anthropic/v1/messages", &[("x-api-key", token)], &message(false));
    let slack =
        |token: &str| agent.send("POST", "/slack/api/auth.test", &[("authorization", &format!("Bearer {token}"))], b"");
    let file = d_path(&s, "alerts.jsonl");
    let arrived = |kind: &str| {
        vault_tests::wait_for(&format!("the {kind} alert"), || {
            let text = std::fs::read_to_string(&file).ok()?;
            text.lines()
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .find(|a| a["alert"] == kind)
        })
    };
    assert_eq!(anthropic(&bot).status, 200);
    // Ten refused tokens in a minute (after the fourth, the guesser is paused,
    // as on the agent socket); ten denied uses in a minute.
    let guesses: Vec<u16> = (0..10).map(|_| anthropic(&format!("vt_{}", "0".repeat(64))).status).collect();
    assert_eq!(guesses[..4], [401; 4], "{guesses:?}");
    assert!(guesses[4..].contains(&429), "paused: {guesses:?}");
    for _ in 0..10 {
        assert_eq!(anthropic(&nogrant).status, 404);
    }
    arrived("refused_tokens_burst");
    arrived("denied_reads_burst");
    // A budget of two requests a day.
    assert_eq!((slack(&bot).status, slack(&bot).status), (200, 200));
    let over = slack(&bot);
    assert_eq!(over.status, 429, "{}", over.text());
    let body = over.json();
    assert_eq!((body["ok"].clone(), body["error"].clone()), (json!(false), json!("ratelimited")), "Slack's shape");
    assert!(body["warning"].as_str().unwrap().contains("2 of 2 requests today"), "{body}");
    let alert = arrived("budget_exceeded");
    assert_eq!((alert["client"].clone(), alert["route"].clone()), (json!("bot"), json!("slack")));
    // Past the rate limit (a burst of 40).
    let statuses: Vec<u16> = (0..45).map(|_| anthropic(&greedy).status).collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    let alert = arrived("rate_limit_exceeded");
    assert_eq!(alert["client"], "greedy", "{alert}");
    // A week later, bot's habits are learned: a secret it never used, then ten times its rate.
    s.d.advance_clock(Duration::from_secs(7 * 86_400 + 60));
    let bot = s.d.ctl(&["--json", "token", "create", "--client", "bot"], b"").ok().json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let openai = |token: &str| {
        let chat = json!({"model": "gpt-test", "messages": []});
        agent.post_json("/openai/v1/chat/completions", &[("authorization", &format!("Bearer {token}"))], &chat)
    };
    assert_eq!(openai(&bot).status, 200);
    let alert = arrived("new_secret_used");
    assert_eq!((alert["client"].clone(), alert["secret"].clone()), (json!("bot"), json!("prod/openai")));
    for _ in 0..20 {
        assert_eq!(openai(&bot).status, 200);
    }
    assert_eq!(arrived("unusual_rate")["client"], "bot");
    s.d.ctl(&["revoke-all", "--reason", "test", "--yes"], b"").ok();
    arrived("revoke_all");
    // Names and numbers only; each delivery recorded.
    let text = std::fs::read_to_string(&file).unwrap();
    for value in [&bot, &nogrant, &greedy, &s.keys.anthropic, &s.keys.openai, &s.keys.slack] {
        assert!(!text.contains(value.as_str()), "an alert carried a secret: {text}");
    }
    let sent = s.d.audit_query(&["--type", "alert.sent"]);
    assert!(sent.len() >= 7, "{sent:#?}");
}

#[test]
fn a_refused_caller_can_finish_sending_and_read_why() {
    use std::io::{Read, Write};
    let s = Setup::new("", "");
    let mut conn = std::os::unix::net::UnixStream::connect(&s.socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // A route that does not exist: refused before the body is read. The body
    // comes later, as a client that writes headers and body apart sends it
    // (on a unix socket, writing to a closed connection fails at once).
    let body = message(false).to_string();
    let head = format!(
        "POST /no-such-route/v1/messages HTTP/1.1\r\nhost: broker\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    conn.write_all(body.as_bytes()).expect("the body is read, not met with a closed connection");
    let mut reply = vec![0; 4096];
    let n = conn.read(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]).into_owned();
    assert!(reply.starts_with("HTTP/1.1 404 "), "{reply}");
}
