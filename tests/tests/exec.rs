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

/// A program `vaultctl exec` runs cannot take vaultctl's token (issue 19): as
/// the same uid it can open neither /proc/$PPID/environ nor /proc/$PPID/mem
/// (vaultctl is non-dumpable), and even root finds no token in vaultctl's
/// /proc/PID/environ (vaultctl wiped it there when it read it).
#[test]
fn the_program_cannot_read_vaultctl_s_token() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !vault_tests::is_root() {
        eprintln!("skipped: needs root (run as root, as CI does)");
        return;
    }
    const A: u32 = 65534;
    let chmod = |path: &Path, mode| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    let config = Some("agent_socket_mode = \"0666\"\n".to_owned());
    let d = Daemon::start_with(vault_tests::Options { config, ..vault_tests::Options::default() });
    d.init();
    d.put("telegram", b"tg-token-1");
    chmod(d.dir.path(), 0o755);
    d.ctl(&["client", "add", "bot", "--uid", &A.to_string(), "--allow", "default/telegram"], b"").ok();
    let token = d.ctl(&["--json", "token", "create", "--client", "bot"], b"").ok().json();
    let token = token["token"].as_str().unwrap().to_owned();
    let report = d.dir.path().join("report");
    std::fs::create_dir(&report).unwrap();
    rustix::fs::chown(&report, Some(rustix::process::Uid::from_raw(A)), None).unwrap();
    let bin = tempfile::Builder::new().prefix("vault-e2e-bin-").tempdir().unwrap();
    chmod(bin.path(), 0o755);
    let vaultctl = bin.path().join("vaultctl");
    std::fs::copy(&vault_tests::bins().vaultctl, &vaultctl).unwrap();

    let probe = r#"for f in environ mem; do
        if (: < /proc/$PPID/$f) 2>/dev/null; then echo "opened $f"; else echo "refused $f"; fi
    done > "$1/seen"; echo "$PPID $TG" > "$1/ppid"; while [ ! -e "$1/done" ]; do sleep 0.05; done"#;
    let mut cmd = std::process::Command::new(&vaultctl);
    cmd.args(["exec", "--secret", "TG=telegram", "--on-rotate", "ignore", "--", "sh", "-c", probe, "sh"]);
    cmd.arg(&report).env("VAULT_SOCKET", &d.agent_socket).env("VAULT_TOKEN", &token).env_remove("VAULT_ENV");
    cmd.current_dir("/").uid(A).gid(A).stdin(Stdio::null()).stdout(Stdio::null());
    let mut guard = ChildGuard(Some(vault_tests::spawn(&mut cmd)));
    let ppid = wait_for("the program's report", || std::fs::read_to_string(report.join("ppid")).ok());
    assert_eq!(ppid, format!("{} tg-token-1\n", guard.0.as_ref().unwrap().id()), "the program runs under vaultctl");
    let seen = std::fs::read_to_string(report.join("seen")).unwrap();
    assert_eq!(seen, "refused environ\nrefused mem\n");
    let pid = ppid.split(' ').next().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(vault_tests::contains(&environ, b"VAULT_SOCKET="), "root reads the rest of vaultctl's environment");
    assert!(!vault_tests::contains(&environ, token.as_bytes()), "the token is still in vaultctl's environ");
    std::fs::write(report.join("done"), b"").unwrap();
    assert!(guard.0.take().unwrap().wait().unwrap().success());
}
