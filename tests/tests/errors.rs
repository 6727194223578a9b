//! The CLI's error contract, table-driven: the documented exit code, exactly one
//! line on stderr starting `vaultctl: `, nothing on stdout, and no echo of input
//! that may be a secret pasted in the wrong place.
#![allow(clippy::unwrap_used)]

use vault_tests::{Daemon, Options};

/// Exit codes (ARCHITECTURE §9, `vaultctl --help`).
const ERROR: i32 = 1;
const USAGE: i32 = 2;
const NOT_FOUND: i32 = 3;
const SEALED: i32 = 4;
const UNREACHABLE: i32 = 5;

#[test]
fn invalid_names_are_refused_without_echoing_them() {
    let d = Daemon::initialized();
    d.put("telegram", b"token");
    let long = "a".repeat(129);
    let names = ["Bad", "-x", "a/b", long.as_str(), "", "tele gram", "café", ".hidden", "x\u{1b}[31m"];
    for name in names {
        // `--` so a name starting with '-' reaches the name check, not clap.
        let commands: [(&[&str], &[u8]); 5] = [
            (&["get", "--", name], b""),
            (&["put", "--", name], b"a-value"),
            (&["show", "--reveal", "--", name], b""),
            (&["versions", "--", name], b""),
            (&["rm", "--", name], b""),
        ];
        for (args, stdin) in commands {
            for json in [false, true] {
                let args: Vec<&str> = if json { [&["--json"], args].concat() } else { args.to_vec() };
                let out = d.ctl(&args, stdin);
                let message = out.error(USAGE);
                assert!(message.contains("invalid secret name"), "{args:?}: {message}");
                if name.len() > 1 {
                    assert!(!message.contains(name), "{args:?}: the message echoes the name: {message}");
                }
            }
        }
    }
    // Environments follow the same rule, from --env and from VAULT_ENV.
    for env in ["Prod", "-x", "a/b", long.as_str()] {
        let out = d.ctl(&[&format!("--env={env}"), "get", "telegram"], b"");
        let message = out.error(USAGE);
        assert!(message.contains("invalid environment") && !message.contains(env), "{env}: {message}");
        let mut cmd = d.ctl_command(&["list"]);
        cmd.env("VAULT_ENV", env);
        let out = vault_tests::run(cmd, b"");
        assert!(out.error(USAGE).contains("invalid environment"), "{env}");
    }
    assert_eq!(d.get("telegram"), b"token", "nothing was changed");
    assert_eq!(d.status()["secrets"], 1, "no secret was created");
}

#[test]
fn bad_values_are_usage_errors() {
    let d = Daemon::initialized();
    let oversize = vec![b'v'; 65537];
    let cases: [(&str, &[u8], &str); 3] = [
        ("empty value", b"", "empty"),
        ("one byte over the limit", &oversize, "65536"),
        ("far over the limit", &[b'w'; 300_000], "65536"),
    ];
    for (what, value, want) in cases {
        let out = d.ctl(&["put", "telegram"], value);
        let message = out.error(USAGE);
        assert!(message.contains(want), "{what}: {message}");
        assert!(!message.contains("vvvv") && !message.contains("wwww"), "{what}: the value is echoed: {message}");
        let file = d.write_file("value", value);
        let out = d.ctl(&["put", "telegram", "--from-file", file.to_str().unwrap()], b"");
        assert!(out.error(USAGE).contains(want), "{what}, from a file");
    }
    d.ctl(&["get", "telegram"], b"").error(NOT_FOUND);
    let out = d.ctl(&["put", "telegram", "--from-file", "/nonexistent/value"], b"");
    assert!(out.error(ERROR).contains("/nonexistent/value"), "{}", out.stderr);
}

/// Which daemon a case runs against.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// No daemon: sockets that do not exist.
    Down,
    /// Listening, never initialized.
    Fresh,
    /// Initialized, then sealed.
    Sealed,
    /// Initialized and unlocked, holding `telegram`.
    Open,
}

/// (daemon, arguments, stdin, exit code, what the message mentions)
type Case = (Target, &'static [&'static str], &'static [u8], i32, &'static str);

#[test]
fn every_failure_has_its_exit_code_and_one_line() {
    use Target::*;
    let fresh = Daemon::start();
    let sealed = Daemon::initialized();
    sealed.put("telegram", b"token");
    sealed.ctl(&["seal"], b"").ok();
    let open = Daemon::initialized();
    open.put("telegram", b"token");
    let down = Daemon::new(Options::default());

    let cases: &[Case] = &[
        (Open, &["get", "nope"], b"", NOT_FOUND, "not found"),
        (Open, &["show", "nope"], b"", NOT_FOUND, "not found"),
        (Open, &["show", "--reveal", "nope"], b"", NOT_FOUND, "not found"),
        (Open, &["versions", "nope"], b"", NOT_FOUND, "not found"),
        (Open, &["rm", "nope"], b"", NOT_FOUND, "not found"),
        (Open, &["--env", "staging", "get", "telegram"], b"", NOT_FOUND, "not found"),
        (Open, &["unlock", "--passphrase-file", "-"], b"wrong", NOT_FOUND, "wrong passphrase"),
        (Open, &["init", "--passphrase-file", "-"], b"another long passphrase", ERROR, "already initialized"),
        (Open, &["unlock", "--passphrase-file", "-"], b"\n", USAGE, "empty"),
        (Open, &["unlock"], b"", USAGE, "passphrase"),
        (Down, &["status"], b"", UNREACHABLE, "cannot reach vaultd"),
        (Down, &["get", "telegram"], b"", UNREACHABLE, "cannot reach vaultd"),
        (Down, &["put", "telegram"], b"value", UNREACHABLE, "cannot reach vaultd"),
        (Down, &["list"], b"", UNREACHABLE, "cannot reach vaultd"),
        (Down, &["unlock", "--passphrase-file", "-"], b"pass", UNREACHABLE, "cannot reach vaultd"),
        (Sealed, &["get", "telegram"], b"", SEALED, "sealed"),
        (Sealed, &["put", "telegram"], b"value", SEALED, "sealed"),
        (Sealed, &["show", "telegram"], b"", SEALED, "sealed"),
        (Sealed, &["show", "--reveal", "telegram"], b"", SEALED, "sealed"),
        (Sealed, &["list"], b"", SEALED, "sealed"),
        (Sealed, &["versions", "telegram"], b"", SEALED, "sealed"),
        (Sealed, &["rm", "telegram"], b"", SEALED, "sealed"),
        (Sealed, &["get", "nope"], b"", SEALED, "sealed"),
        (Fresh, &["get", "telegram"], b"", SEALED, "not initialized"),
        (Fresh, &["put", "telegram"], b"value", SEALED, "not initialized"),
        (Fresh, &["list"], b"", SEALED, "not initialized"),
        (Fresh, &["show", "telegram"], b"", SEALED, "not initialized"),
        (Fresh, &["unlock", "--passphrase-file", "-"], b"pass", SEALED, "not initialized"),
        (Fresh, &["init", "--passphrase-file", "-"], b"", USAGE, "empty"),
    ];
    for &(target, args, stdin, code, want) in cases {
        let daemon = match target {
            Down => &down,
            Fresh => &fresh,
            Sealed => &sealed,
            Open => &open,
        };
        for json in [false, true] {
            let args: Vec<&str> = if json { [&["--json"], args].concat() } else { args.to_vec() };
            let out = daemon.ctl(&args, stdin);
            let message = out.error(code);
            assert!(message.contains(want), "{target:?} {args:?}: {message:?} should mention {want:?}");
        }
    }
    // Nothing above changed the vaults.
    assert_eq!(fresh.status()["initialized"], false);
    assert_eq!(sealed.status()["sealed"], true);
    assert_eq!(open.get("telegram"), b"token");
}

#[test]
fn clap_usage_errors_exit_2() {
    let d = Daemon::initialized();
    for args in [&["get"][..], &["frobnicate"], &["put", "a", "--bogus"], &["get", "-x"]] {
        let out = d.ctl(args, b"");
        assert_eq!(out.code, Some(USAGE), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn argument_errors_are_one_line_too() {
    // README: "Every error is one line on stderr: `vaultctl: …`". That includes the
    // mistakes the argument parser catches, not only those vaultctl checks itself.
    let d = Daemon::initialized();
    for args in [&["get"][..], &["frobnicate"], &["put", "a", "--bogus"], &["--env"]] {
        let message = d.ctl(args, b"").error(USAGE).to_owned();
        assert!(!message.is_empty(), "{args:?}");
    }
    let help = d.ctl(&["--help"], b"").ok().text();
    assert!(help.contains("Usage") && help.contains("Exit status"), "--help still prints help: {help}");
}
