//! Rotation end to end through vaultctl against a real daemon (ARCHITECTURE §6): the
//! three rotators, grace periods, the scheduler, failing hooks, and crashes in
//! the middle of a rotation.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vault_tests::{Daemon, Options, path_str, wait_for};

/// A daemon whose scheduler looks every 100 ms, with `extra` config lines.
fn daemon(extra: &str) -> Daemon {
    let config = format!("[rotation]\ncheck_every = \"100ms\"\nhook_timeout = \"5s\"\n{extra}");
    let d = Daemon::start_with(Options { config: Some(config), ..Options::default() });
    d.init();
    d
}

/// Writes an executable hook script (0700, owned by the test's uid) into the
/// daemon's temp dir. `{dir}` in `body` becomes that dir.
fn hook(d: &Daemon, name: &str, body: &str) -> PathBuf {
    let dir = d.dir.path();
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/bash\n{}\n", body.replace("{dir}", path_str(dir)))).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    path
}

/// A hook that records each step it sees (with the value on its stdin) in
/// `DIR/steps`, and creates `new-N` values.
const RECORDING_HOOK: &str = r#"
input=$(cat)
echo "$VAULTD_STEP $VAULTD_SECRET v$VAULTD_VERSION $input" >> {dir}/steps
[ "$VAULTD_STEP" = create ] && echo "new-$VAULTD_VERSION"
exit 0
"#;

fn steps(d: &Daemon) -> Vec<String> {
    std::fs::read_to_string(d.dir.path().join("steps")).unwrap_or_default().lines().map(str::to_owned).collect()
}

fn versions(d: &Daemon, name: &str) -> Vec<(u64, String)> {
    let out = d.ctl(&["--json", "versions", name], b"").ok().json();
    out.as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_u64().unwrap(), v["state"].as_str().unwrap().to_owned()))
        .collect()
}

fn audit_types(d: &Daemon, secret: &str) -> Vec<String> {
    d.audit_query(&["--secret", secret, "--limit", "1000"])
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn manual_rotation_keeps_the_previous_version_readable_during_grace() {
    let d = daemon("");
    d.ctl(&["put", "telegram", "--grace", "3s"], b"bot-token-v1").ok();
    let out = d.ctl(&["--json", "rotate", "telegram"], b"bot-token-v2").ok().json();
    assert_eq!((out["version"].as_u64(), out["previous_version"].as_u64()), (Some(2), Some(1)));
    assert_eq!(d.get("telegram"), b"bot-token-v2");
    // An agent that asks for the previous version gets it during grace…
    assert_eq!(d.ctl(&["get", "telegram", "--version", "1"], b"").ok().stdout, b"bot-token-v1");
    assert_eq!(d.ctl(&["get", "telegram", "--version", "2"], b"").ok().stdout, b"bot-token-v2");
    assert_eq!(versions(&d, "telegram"), [(2, "current".into()), (1, "previous".into())]);
    // …and not after: the scheduler retires it, and reads say "not found".
    let retired = wait_for("the previous version to retire", || {
        let v = versions(&d, "telegram");
        (v[1].1 == "retired").then_some(v)
    });
    assert_eq!(retired[0], (2, "current".into()));
    let err = d.ctl(&["get", "telegram", "--version", "1"], b"");
    assert!(err.error(3).contains("not found"), "{err:?}");
    // A version that never existed is the same answer.
    assert!(d.ctl(&["get", "telegram", "--version", "9"], b"").error(3).contains("not found"));
    // The owner can still reveal a retired version.
    let shown = d.ctl(&["--json", "show", "telegram", "--reveal", "--version", "1"], b"").ok().json();
    assert_eq!(shown["value"], "bot-token-v1");

    let types = audit_types(&d, "default/telegram");
    for kind in ["rotation.start", "rotation.created", "rotation.promoted", "rotation.retired"] {
        assert!(types.iter().any(|t| t == kind), "{kind} missing from {types:?}");
    }
    let (export, _) = d.audit_export("audit.jsonl");
    for value in [&b"bot-token-v1"[..], b"bot-token-v2"] {
        assert!(!vault_tests::contains(&export, value), "a value is in the audit log");
    }
    assert!(d.audit_verify().is_ok());
}

#[test]
fn generate_rotation_makes_a_value_of_the_asked_shape() {
    let d = daemon("");
    d.ctl(&["put", "api-key", "--rotator", "generate:40:hex"], b"initial").ok();
    let first = d.ctl(&["--json", "rotate", "api-key"], b"").ok().json();
    assert_eq!(first["version"], 2);
    let value = d.get("api-key");
    assert_eq!(value.len(), 40);
    assert!(value.iter().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{value:?}");
    d.ctl(&["rotate", "api-key"], b"").ok();
    assert_ne!(d.get("api-key"), value);
    // A generated secret takes no value from the operator.
    let file = d.write_file("value", b"mine");
    let refused = d.ctl(&["rotate", "api-key", "--from-file", path_str(&file)], b"");
    assert!(refused.error(2).contains("makes its own value"), "{refused:?}");
    // Policy shows and can change later.
    let shown = d.ctl(&["--json", "show", "api-key"], b"").ok().json();
    assert_eq!(shown["rotator"], "generate:40:hex");
    assert_eq!(shown["last_rotation"]["step"], "done");
    d.ctl(&["rotation", "set", "api-key", "--rotator", "manual", "--grace", "0s"], b"").ok();
    let err = d.ctl(&["rotation", "set", "api-key", "--rotator", "generate:4"], b"");
    assert!(err.error(2).contains("length"), "{err:?}");
    assert!(d.ctl(&["rotation", "set", "api-key"], b"").error(2).contains("give --rotator"));
    d.ctl(&["rotate", "api-key"], b"operator-value").ok();
    assert_eq!(d.get("api-key"), b"operator-value");
}

#[test]
fn exec_rotation_runs_create_test_then_revoke_old_after_grace() {
    let d = daemon("");
    let path = hook(&d, "hook", RECORDING_HOOK);
    let rotator = format!("exec:{}", path.display());
    d.ctl(&["put", "discord", "--rotator", &rotator, "--grace", "1s"], b"old-value").ok();
    let out = d.ctl(&["--json", "rotate", "discord"], b"").ok().json();
    assert_eq!(out["version"], 2);
    assert_eq!(d.get("discord"), b"new-2");
    // The previous version's grace ends; the hook revokes it; its ciphertext goes.
    wait_for("revoke-old", || steps(&d).iter().any(|s| s.starts_with("revoke-old")).then_some(()));
    assert_eq!(
        steps(&d),
        [
            "create default/discord v2 old-value",
            "test default/discord v2 new-2",
            "revoke-old default/discord v1 old-value"
        ]
    );
    wait_for("v1 destroyed", || (versions(&d, "discord")[1].1 == "destroyed").then_some(()));
    let types = audit_types(&d, "default/discord");
    let rotation: Vec<&str> = types.iter().map(String::as_str).filter(|t| t.starts_with("rotation.")).collect();
    assert_eq!(
        rotation,
        [
            "rotation.policy",
            "rotation.start",
            "rotation.created",
            "rotation.tested",
            "rotation.promoted",
            "rotation.retired",
            "rotation.revoked_old"
        ]
    );
    assert!(d.audit_verify().is_ok());
}

#[test]
fn failing_hooks_leave_the_current_version_and_vaultd_untouched() {
    let mut d = daemon("hook_memory_mib = 64\n[limits]\nclient_rate = 1000\n");
    d.ctl(&["put", "slack"], b"slack-v1").ok();
    let cases = [
        ("exits", "cat > /dev/null; echo 'provider said no' >&2; exit 3", "exited with status 3: provider said no"),
        ("hangs", "sleep 30", "timed out after 5s"),
        ("garbage", "printf 'two\\nlines\\n'", "more than one line"),
        ("empty", "cat > /dev/null", "no value on stdout"),
        (
            "memory",
            "python3 -c 'b = bytearray(256 * 1024 * 1024)' 2>/dev/null || { echo 'MemoryError' >&2; exit 9; }; echo x",
            "exited with status 9: MemoryError",
        ),
        (
            "test-fails",
            r#"input=$(cat); echo "$VAULTD_STEP $input" >> {dir}/steps
               [ "$VAULTD_STEP" = create ] && { echo cand-9f3e; exit 0; }
               [ "$VAULTD_STEP" = test ] && { echo 'rejected by the provider' >&2; exit 1; }
               exit 0"#,
            "test step exited with status 1: rejected by the provider",
        ),
    ];
    for (name, body, expected) in cases {
        let path = hook(&d, name, body);
        d.ctl(&["rotation", "set", "slack", "--rotator", &format!("exec:{}", path.display())], b"").ok();
        let started = Instant::now();
        let out = d.ctl(&["rotate", "slack"], b"");
        let err = out.error(1);
        assert!(err.contains("rotation of default/slack failed") && err.contains(expected), "{name}: {err}");
        assert!(!err.contains("slack-v1"), "{name}: {err}");
        assert!(started.elapsed() < Duration::from_secs(15), "{name} took {:?}", started.elapsed());
        assert_eq!(d.get("slack"), b"slack-v1", "{name}");
        let shown = d.ctl(&["--json", "show", "slack"], b"").ok().json();
        assert_eq!(shown["last_rotation"]["step"], "failed", "{name}");
        assert!(d.status()["rotations_failed"].as_array().unwrap().contains(&"default/slack".into()), "{name}");
        d.assert_running();
    }
    // The value that failed its test was created at the provider: revoke-old forgets it.
    wait_for("revoke-old of the failed candidate", || {
        steps(&d).iter().any(|s| s == "revoke-old cand-9f3e").then_some(())
    });
    let versions = versions(&d, "slack");
    assert_eq!(versions.iter().filter(|(_, s)| s == "current").count(), 1, "{versions:?}");
    assert!(!versions.iter().any(|(_, s)| s == "pending"), "{versions:?}");
    // A hook others could replace is refused when it is set.
    let loose = hook(&d, "loose", "true");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = d.ctl(&["rotation", "set", "slack", "--rotator", &format!("exec:{}", loose.display())], b"");
    assert!(err.error(2).contains("writable by group or others"), "{err:?}");
    let types = audit_types(&d, "default/slack");
    assert_eq!(types.iter().filter(|t| *t == "rotation.failed").count(), cases.len(), "{types:?}");
    assert!(d.audit_verify().is_ok());
}

#[test]
fn the_scheduler_rotates_due_secrets_and_raises_manual_ones() {
    let d = daemon("");
    d.ctl(&["put", "auto", "--rotator", "generate", "--rotate-every", "1s", "--grace", "0s"], b"first").ok();
    d.ctl(&["put", "by-hand", "--rotate-every", "1s"], b"first").ok();
    wait_for("two scheduled rotations", || (versions(&d, "auto")[0].0 >= 3).then_some(()));
    let by_schedule = d.audit_query(&["--type", "change", "--secret", "default/auto", "--limit", "100"]);
    assert!(by_schedule.iter().any(|e| e["detail"]["trigger"] == "schedule"), "{by_schedule:?}");
    // The manual one is not rotated but shows as due, raised once as an alert.
    wait_for("the manual due alert", || {
        d.status()["rotations_due"].as_array().unwrap().contains(&"default/by-hand".into()).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let alerts = d.audit_query(&["--type", "security", "--secret", "default/by-hand", "--limit", "100"]);
    assert_eq!(alerts.iter().filter(|e| e["type"] == "rotation.due").count(), 1, "{alerts:?}");
    assert_eq!(versions(&d, "by-hand").len(), 1);
    let human = d.ctl(&["status"], b"").ok().text();
    assert!(human.contains("rotation due: default/by-hand"), "{human}");
    // `rotate --due` lists it, and rotating it by hand clears it.
    let due = d.ctl(&["rotate", "--due"], b"").ok();
    assert!(due.stderr.contains("default/by-hand is due but rotates manually"), "{}", due.stderr);
    d.ctl(&["rotate", "by-hand"], b"second").ok();
    assert!(!d.status()["rotations_due"].as_array().unwrap().contains(&"default/by-hand".into()));
    assert!(d.audit_verify().is_ok());
}

#[test]
fn rotate_due_rotates_many_with_progress() {
    // A long check period: only `rotate --due` rotates here.
    let config = "[rotation]\ncheck_every = \"1h\"\n".to_owned();
    let d = Daemon::start_with(Options { config: Some(config), ..Options::default() });
    d.init();
    for i in 0..12 {
        d.ctl(&["put", &format!("key{i}"), "--rotator", "generate", "--rotate-every", "1s"], b"v").ok();
    }
    std::thread::sleep(Duration::from_millis(1300));
    let out = d.ctl(&["rotate", "--due"], b"").ok();
    assert_eq!(out.text().lines().count(), 12, "{}", out.text());
    for i in 1..=12 {
        assert!(out.stderr.contains(&format!("[{i}/12]")), "{}", out.stderr);
    }
    for i in 0..12 {
        assert_eq!(versions(&d, &format!("key{i}"))[0].0, 2);
    }
}

/// A SIGKILL at any moment of an exec rotation: after a restart and unlock the
/// secret has exactly one readable current version, no rotation stays stuck,
/// and every value that reached the test step (so exists at the provider) was
/// kept and promoted, never lost.
#[test]
fn rotation_survives_sigkill_at_every_step() {
    let trials: usize = std::env::var("VAULT_CRASH_TRIALS").ok().and_then(|n| n.parse().ok()).unwrap_or(24);
    let mut d = daemon("keep_versions = 1000\n");
    // The hook sleeps as long as DIR/sleep_ms says, at its step's start and end.
    let path = hook(
        &d,
        "hook",
        r#"input=$(cat)
ms=$(cat {dir}/sleep_ms)
# DIR/exact names a step to pause in for exactly ms (and not at all in others).
pause() {
  if [ -e {dir}/exact ]; then [ "$(cat {dir}/exact)" = "$VAULTD_STEP" ] && s=$ms || s=0; else s=$((RANDOM % (ms + 1))); fi
  sleep "$(awk "BEGIN { print $s / 1000 }")"
}
echo "$VAULTD_STEP-start $input" >> {dir}/steps
pause
if [ "$VAULTD_STEP" = create ]; then value="made-$VAULTD_VERSION-$RANDOM$RANDOM"; echo "$value"; echo "created $value" >> {dir}/steps; fi
pause
echo "$VAULTD_STEP-end $input" >> {dir}/steps
exit 0"#,
    );
    let sleep_file = d.dir.path().join("sleep_ms");
    let set_sleep = |ms: u32| std::fs::write(&sleep_file, ms.to_string()).unwrap();
    set_sleep(0);
    d.ctl(&["put", "bot", "--rotator", &format!("exec:{}", path.display()), "--grace", "1h"], b"original").ok();
    let mut killed_in = std::collections::BTreeMap::<String, usize>::new();
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut random = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let exact = d.dir.path().join("exact");
    for trial in 0..trials {
        // The first two trials stop in a known step (create, then test): the hook
        // pauses there long enough to be caught.
        if trial < 2 {
            std::fs::write(&exact, ["create", "test"][trial]).unwrap();
            set_sleep(2000);
        } else {
            set_sleep(150);
        }
        let mut rotate = d.ctl_command(&["rotate", "bot"]);
        rotate
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut rotate = vault_tests::spawn(&mut rotate);
        // The first trials kill at known steps; the rest at random moments.
        match trial {
            0 => wait_for("create-start", || steps(&d).last().filter(|s| s.starts_with("create-start")).map(drop)),
            1 => wait_for("test-start", || steps(&d).last().filter(|s| s.starts_with("test-start")).map(drop)),
            _ => std::thread::sleep(Duration::from_millis(random(700))),
        }
        let last = steps(&d).last().cloned().unwrap_or_default();
        *killed_in.entry(last.split(' ').next().unwrap_or("").to_owned()).or_default() += 1;
        d.kill();
        let _ = rotate.wait();
        let _ = std::fs::remove_file(&exact);
        set_sleep(0);
        d.launch();
        d.unlock();
        if trial < 2 {
            // Never refused for what the crash interrupted: rolled back at unlock
            // (create), or resumed first (test), and then this rotation runs.
            let rotated = d.ctl(&["--json", "rotate", "bot"], b"").ok().json();
            assert!(rotated["version"].as_u64().is_some(), "trial {trial}: {rotated}");
        }
        // The scheduler picks up what the crash interrupted.
        let shown = wait_for("no rotation in progress", || {
            let shown = d.ctl(&["--json", "show", "bot"], b"").ok().json();
            (!matches!(shown["last_rotation"]["step"].as_str(), Some("create" | "test"))).then_some(shown)
        });
        let current = d.get("bot");
        assert!(!current.is_empty(), "trial {trial}: no readable current version");
        let all = versions(&d, "bot");
        assert_eq!(all.iter().filter(|(_, s)| s == "current").count(), 1, "trial {trial}: {all:?}");
        assert!(!all.iter().any(|(_, s)| s == "pending"), "trial {trial}: {all:?} ({shown})");
        if all[0].0 != shown["current_version"].as_u64().unwrap() {
            let trail: Vec<String> = d
                .audit_query(&["--limit", "60"])
                .iter()
                .map(|e| format!("{} {} {} {}", e["seq"], e["type"], e["actor"], e["detail"]))
                .collect();
            panic!("trial {trial}: {all:?} vs {shown}\n{}\n{}", trail.join("\n"), d.log());
        }
    }
    // Every value that reached its test step (so exists at the provider) was
    // stored and then promoted: found through its keyed digest in the audit log.
    let events = d.audit_query(&["--secret", "default/bot", "--type", "rotation"]);
    let versions_of = |kind: &str, key: &str, value: &str| -> Vec<u64> {
        events
            .iter()
            .filter(|e| e["type"] == kind && e["detail"][key] == value)
            .map(|e| e["detail"]["version"].as_u64().unwrap())
            .collect()
    };
    let tested: std::collections::BTreeSet<String> =
        steps(&d).iter().filter_map(|s| s.strip_prefix("test-start ").map(str::to_owned)).collect();
    for value in &tested {
        let digest = d.ctl(&["audit", "hash"], value.as_bytes()).ok().text().trim().to_owned();
        let created = versions_of("rotation.created", "value_digest", &digest);
        assert_eq!(created.len(), 1, "{value} was stored {created:?}");
        let promoted = events.iter().any(|e| e["type"] == "rotation.promoted" && e["detail"]["version"] == created[0]);
        assert!(promoted, "{value} (version {}) reached the provider's test but was never promoted", created[0]);
    }
    eprintln!("{trials} kills; last hook step seen at the kill: {killed_in:?}; {} values tested", tested.len());
    assert!(killed_in.keys().any(|k| k.starts_with("create")), "{killed_in:?}");
    assert!(killed_in.keys().any(|k| k.starts_with("test")), "{killed_in:?}");
    assert!(d.audit_verify().is_ok());
}

#[test]
fn the_example_hook_in_the_repo_rotates_against_its_demo_provider() {
    let d = daemon("");
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hooks/rotate-example.sh");
    let path = hook(&d, "rotate-example.sh", &std::fs::read_to_string(source).unwrap());
    let keys = d.dir.path().join("demo-provider.keys");
    d.ctl(&["put", "demo", "--rotator", &format!("exec:{}", path.display()), "--grace", "0s"], b"initial").ok();
    for version in [2, 3] {
        let out = d.ctl(&["--json", "rotate", "demo"], b"").ok().json();
        assert_eq!(out["version"], version);
    }
    let current = String::from_utf8(d.get("demo")).unwrap();
    assert!(current.starts_with("demo_") && current.len() == 53, "{current}");
    // Once both old keys are revoked, the provider knows only the current one.
    wait_for("the old keys revoked", || {
        let known = std::fs::read_to_string(&keys).unwrap();
        (known.lines().collect::<Vec<_>>() == [current.as_str()]).then_some(())
    });
}

/// After revoke-all, rotating a secret whose rotator is a hook also runs its
/// revoke-old step for the compromised versions, so the provider forgets them
/// too, and says which it could not revoke (issue 21).
#[test]
fn rotating_a_compromised_secret_revokes_its_compromised_versions_at_the_provider() {
    let d = daemon("");
    let recording = hook(&d, "hook", RECORDING_HOOK);
    let failing = hook(
        &d,
        "failing",
        r#"input=$(cat)
[ "$VAULTD_STEP" = create ] && echo "new-$VAULTD_VERSION"
[ "$VAULTD_STEP" = revoke-old ] && { echo "provider down" >&2; exit 3; }
exit 0"#,
    );
    d.ctl(&["put", "bot", "--rotator", &format!("exec:{}", recording.display())], b"compromised-v1").ok();
    d.ctl(&["put", "other", "--rotator", &format!("exec:{}", failing.display())], b"other-v1").ok();
    d.ctl(&["revoke-all", "--reason", "drill", "--yes"], b"").ok();
    let out = d.ctl(&["--json", "rotate", "bot"], b"").ok().json();
    assert_eq!(out["revoked_compromised"], serde_json::json!([1]), "{out}");
    assert!(steps(&d).iter().any(|s| s == "revoke-old default/bot v1 compromised-v1"), "{:?}", steps(&d));
    assert_eq!(versions(&d, "bot")[1], (1, "destroyed".into()), "the provider forgot it, so vaultd does too");
    let text = d.ctl(&["rotate", "other"], b"").ok().text();
    assert!(text.contains("NOT revoked at the provider (retried by vaultd): version 1:"), "{text}");
    assert!(text.contains("provider down"), "{text}");
    // Owed still: the scheduler tries again later; meanwhile it is never served.
    assert_eq!(versions(&d, "other")[1], (1, "compromised".into()));
    assert!(d.ctl(&["get", "other", "--version", "1"], b"").error(3).contains("not found"));
}
