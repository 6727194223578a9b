//! `vaultctl exec`: a program started with its secrets (environment or files),
//! restarted or signalled when they rotate, its signals forwarded and its exit
//! status passed through.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use vault_tests::{ChildGuard, Daemon, path_str, wait_for};

fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// Starts `vaultctl exec ARGS` in the background; stdout discarded, stderr to
/// `DIR/exec.err` (a file, not a pipe: the program inherits it and may outlive
/// a killed vaultctl).
fn exec_in_background(d: &Daemon, args: &[&str]) -> ChildGuard {
    let mut full = vec!["exec"];
    full.extend(args);
    let mut cmd = d.ctl_command(&full);
    let stderr = std::fs::File::create(d.dir.path().join("exec.err")).unwrap();
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
    ChildGuard(Some(vault_tests::spawn(&mut cmd)))
}

/// Polls `f` for 10 s.
fn wait_until_true(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Kills vaultctl exec and returns what it wrote to stderr.
fn exec_stderr(d: &Daemon, guard: &mut ChildGuard) -> String {
    let child = guard.0.as_mut().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(d.dir.path().join("exec.err")).unwrap_or_default()
}

fn ended(guard: &mut ChildGuard) -> Option<i32> {
    let child = guard.0.as_mut().unwrap();
    vault_tests::wait_until(child, Instant::now() + Duration::from_secs(15)).expect("vaultctl exec did not end").code()
}

#[test]
fn exec_injects_only_the_named_secrets_and_passes_the_exit_code_through() {
    let d = Daemon::initialized();
    d.put("telegram", b"tg-token-1");
    d.put("openai", b"sk-openai");
    let script = r#"echo "token=$TG"; [ -z "$OPENAI" ] && [ -z "$VAULT_TOKEN" ] && echo clean; exit 7"#;
    let out = d.ctl(&["exec", "--secret", "TG=telegram", "--on-rotate", "ignore", "--", "sh", "-c", script], b"");
    assert_eq!(out.code, Some(7), "{}", out.stderr);
    assert_eq!(out.text(), "token=tg-token-1\nclean\n");

    // Through a token of a client granted only telegram: its VAULT_TOKEN is not
    // passed on, and a secret it was not granted is refused before anything runs.
    d.ctl(&["client", "add", "bot", "--uid", "4242", "--allow", "default/telegram"], b"").ok();
    let token = d.ctl(&["--json", "token", "create", "--client", "bot", "--any-uid"], b"").ok().json();
    let token = token["token"].as_str().unwrap();
    let run = |args: &[&str]| {
        let mut cmd = d.ctl_command(args);
        cmd.env("VAULT_TOKEN", token);
        vault_tests::run(cmd, b"")
    };
    let check = r#"[ -z "$VAULT_TOKEN" ] && echo "$TG""#;
    let out = run(&["exec", "--secret", "TG=telegram", "--on-rotate", "ignore", "--", "sh", "-c", check]);
    assert_eq!((out.code, out.text()), (Some(0), "tg-token-1\n".into()), "{}", out.stderr);
    let marker = d.dir.path().join("ran");
    let touch = format!("touch {}", path_str(&marker));
    let out = run(&["exec", "--secret", "TG=telegram", "--secret", "AI=openai", "--", "sh", "-c", &touch]);
    assert!(out.error(3).contains("not found"), "{out:?}");
    assert!(!marker.exists(), "the program ran without its secrets");
    // Bad bindings are usage errors.
    let out = d.ctl(&["exec", "--secret", "1X=telegram", "--", "true"], b"");
    assert!(out.error(2).contains("not an environment variable name"), "{out:?}");
}

#[test]
fn files_are_0400_in_a_private_dir_and_removed_afterwards() {
    let d = Daemon::initialized();
    d.put("discord", b"discord-secret");
    let dir = d.dir.path().join("secrets");
    let script = r#"stat -c %a "$(dirname "$DC_FILE")" "$DC_FILE"; cat "$DC_FILE"; echo; [ -z "$DC" ] && echo no-env"#;
    let out = d.ctl(
        &[
            "exec",
            "--secret",
            "DC=discord",
            "--files",
            path_str(&dir),
            "--on-rotate",
            "ignore",
            "--",
            "sh",
            "-c",
            script,
        ],
        b"",
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.text(), "700\n400\ndiscord-secret\nno-env\n");
    assert!(!dir.exists(), "the secrets dir outlived the program");
}

#[test]
fn a_rotation_restarts_the_program_and_signals_are_forwarded() {
    let d = Daemon::initialized();
    d.put("telegram", b"tg-1");
    let log = d.dir.path().join("log");
    let script = format!(
        r#"trap 'echo "term $TG" >> {log}; exit 42' TERM; echo "start $TG" >> {log}; while :; do sleep 0.05; done"#,
        log = path_str(&log)
    );
    let mut exec = exec_in_background(&d, &["--secret", "TG=telegram", "--", "sh", "-c", &script]);
    wait_for("the first start", || (log_lines(&log) == ["start tg-1"]).then_some(()));
    d.ctl(&["rotate", "telegram"], b"tg-2").ok();
    wait_for("a restart with the new value", || (log_lines(&log).last()? == "start tg-2").then_some(()));
    assert_eq!(log_lines(&log), ["start tg-1", "term tg-1", "start tg-2"]);
    // SIGTERM to vaultctl reaches the program; its status is vaultctl's.
    vault_tests::signal(exec.0.as_ref().unwrap(), rustix::process::Signal::TERM);
    assert_eq!(ended(&mut exec), Some(42));
    assert_eq!(log_lines(&log).last().unwrap(), "term tg-2");
}

#[test]
fn signal_on_rotate_updates_the_files_first() {
    let d = Daemon::initialized();
    d.put("slack", b"xoxb-1");
    let log = d.dir.path().join("log");
    let dir = d.dir.path().join("run");
    let script = format!(
        r#"trap 'echo "usr1 $(cat "$SL_FILE")" >> {log}' USR1; echo "start $(cat "$SL_FILE")" >> {log}; while :; do sleep 0.05; done"#,
        log = path_str(&log)
    );
    // USR1, not HUP: a test run under nohup would hand sh an ignored SIGHUP, which
    // a shell may not trap.
    let args =
        ["--secret", "SL=slack", "--files", path_str(&dir), "--on-rotate", "signal:USR1", "--", "sh", "-c", &script];
    let mut exec = exec_in_background(&d, &args);
    wait_for("the start", || (log_lines(&log) == ["start xoxb-1"]).then_some(()));
    d.ctl(&["rotate", "slack"], b"xoxb-2").ok();
    if !wait_until_true(|| log_lines(&log).last().is_some_and(|l| l == "usr1 xoxb-2")) {
        let stderr = exec_stderr(&d, &mut exec);
        panic!("no USR1 with the new value: log {:?}; vaultctl: {stderr}; vaultd: {}", log_lines(&log), d.log());
    }
    assert_eq!(log_lines(&log), ["start xoxb-1", "usr1 xoxb-2"], "the program was restarted, not signalled");
    vault_tests::signal(exec.0.as_ref().unwrap(), rustix::process::Signal::INT);
    assert_eq!(ended(&mut exec), Some(130), "sh ended by the forwarded SIGINT");
    assert!(!dir.exists());
}
