//! Nothing that might be a secret is echoed: a value typed where an argument
//! goes, a token given to `token revoke`, a value piped with `echo`, a short
//! passphrase. Table-driven: each case's whole output (stdout and stderr) is
//! searched for the canary it was given. Also the small usability errors that
//! sit beside them: swapped sockets, user names for --uid, an old version.
#![allow(clippy::unwrap_used)]

use vault_tests::{Daemon, path_str, unique_tag};

const USAGE: i32 = 2;
const NOT_FOUND: i32 = 3;

#[test]
fn no_error_repeats_an_argument_a_token_or_a_value() {
    let d = Daemon::initialized();
    d.put("telegram", b"123:tg");
    let canary = format!("sk-proj-{}", unique_tag());
    let c = canary.as_str();
    let token = format!("vt_{}{}{}{}", unique_tag(), unique_tag(), unique_tag(), unique_tag());
    let long = format!("--secret={c}");
    let eq_var = format!("{c}=telegram");
    let spaced = format!("{c} x");
    // A key in a name's place: keys mix cases, names do not.
    let key_as_name = format!("{c}XyZ");
    // (args, stdin, exit code, what the message says instead)
    let cases: Vec<(Vec<&str>, &[u8], i32, &str)> = vec![
        (vec!["put", "openai", c], b"", USAGE, "unexpected argument #3 ("),
        (vec!["--json", "put", "openai", c], b"", USAGE, "#4 ("),
        (vec!["rotate", "telegram", c], b"", USAGE, "unexpected argument #3"),
        (vec![c], b"", USAGE, "#1 ("),
        (vec!["get", "telegram", "--version", c], b"", USAGE, "invalid value #4"),
        (vec!["exec", "--secret", c, "--", "true"], b"", USAGE, "expected VAR=NAME"),
        (vec!["exec", &long, "--", "true"], b"", USAGE, "expected VAR=NAME"),
        (vec!["exec", "--secret", &eq_var, "--", "true"], b"", USAGE, "not an environment variable name"),
        (vec!["exec", "--secret", "A=telegram", "--on-rotate", c, "--", "true"], b"", USAGE, "expected restart"),
        (vec!["audit", "query", "--limit", c], b"", USAGE, "invalid value #4"),
        (vec!["client", "add", "bot", "--uid", c], b"", USAGE, "no such user"),
        (vec!["token", "revoke", &token], b"", USAGE, "that is a token, not its accessor"),
        (vec!["get", &key_as_name], b"", USAGE, "mixes upper and lower case"),
        (vec!["put", &key_as_name], b"v", USAGE, "mixes upper and lower case"),
        (vec!["token", "revoke", c], b"", USAGE, "16 hex digits"),
        (vec!["run", "--only", &spaced, "--", "true"], b"", USAGE, "invalid --only pattern"),
    ];
    for (args, stdin, code, says) in &cases {
        let out = d.ctl(args, stdin);
        let message = out.error(*code);
        assert!(message.contains(says), "{args:?}: {message}");
        for secret in [c, token.as_str()] {
            assert!(!out.stderr.contains(secret) && !out.text().contains(secret), "{args:?} echoed it: {message}");
        }
    }
    assert_eq!(d.status()["secrets"], 1, "nothing was stored");
}

#[test]
fn a_value_from_echo_and_a_short_passphrase_are_warned_about_without_echo() {
    let d = Daemon::start();
    let tag = unique_tag();

    // A passphrase under 12 characters: refused, then accepted with --weak-passphrase and a warning.
    let weak = d.write_file("weak", format!("{}\n", &tag[..8]).as_bytes());
    let out = d.ctl(&["init", "--passphrase-file", path_str(&weak)], b"");
    assert!(out.error(USAGE).contains("shorter than 12 characters"), "{}", out.stderr);
    let out = d.ctl(&["init", "--weak-passphrase", "--passphrase-file", path_str(&weak)], b"").ok();
    assert!(out.stderr.contains("warning: the passphrase is shorter than 12"), "{}", out.stderr);
    assert!(!out.stderr.contains(&tag[..8]) && !out.text().contains(&tag[..8]));
    let new = d.write_file("new", b"short\n");
    let out = d.ctl(&["rekey", "--passphrase-file", path_str(&weak), "--new-passphrase-file", path_str(&new)], b"");
    assert!(out.error(USAGE).contains("shorter than 12"), "{}", out.stderr);

    // `echo "$TOKEN" | vaultctl put`: stored as given, with a warning that does not show it.
    let value = format!("tok-{tag}\n");
    let out = d.ctl(&["put", "telegram"], value.as_bytes()).ok();
    assert!(out.stderr.contains("warning: the value ends with a newline"), "{}", out.stderr);
    assert!(!out.stderr.contains(&tag) && !out.text().contains(&tag));
    assert_eq!(d.get("telegram"), value.as_bytes(), "stored byte for byte");
    // printf '%s': no warning.
    let out = d.ctl(&["put", "telegram"], format!("tok-{tag}").as_bytes()).ok();
    assert_eq!(out.stderr, "");
}

#[test]
fn swapped_sockets_old_versions_and_user_names_get_clear_answers() {
    let d = Daemon::initialized();
    d.put("telegram", b"v1");
    d.put("telegram", b"v2");
    d.put("telegram", b"v3");

    // The admin socket where the agent socket goes, and the other way round.
    let mut cmd = d.ctl_command(&["status"]);
    cmd.env("VAULT_ADMIN_SOCKET", &d.agent_socket);
    let out = vault_tests::run(cmd, b"");
    assert!(out.error(1).contains("swapped"), "{}", out.stderr);
    let mut cmd = d.ctl_command(&["get", "telegram"]);
    cmd.env("VAULT_SOCKET", &d.admin_socket);
    assert!(vault_tests::run(cmd, b"").error(1).contains("swapped"));

    // Stale exports (a --dev vault gone): init and unlock say so before asking for a passphrase.
    for command in ["init", "unlock"] {
        let mut cmd = d.ctl_command(&[command]);
        cmd.env("VAULT_ADMIN_SOCKET", d.dir.path().join("gone/admin.sock"));
        let out = vault_tests::run(cmd, b"");
        assert!(out.error(5).contains("cannot reach vaultd"), "{command}: {}", out.stderr);
    }

    // A retired version: a hint, and the same answer for a secret that does not exist.
    let old = d.ctl(&["get", "telegram", "--version", "1"], b"");
    let missing = d.ctl(&["get", "nosuch", "--version", "1"], b"");
    let (old, missing) = (old.error(NOT_FOUND), missing.error(NOT_FOUND));
    assert!(old.contains("grace period"), "{old}");
    assert_eq!(old.replace("telegram", "nosuch"), missing, "an agent cannot tell them apart");

    // --uid and --gid take names.
    let out = d.ctl(&["--json", "client", "add", "bot", "--uid", "nobody", "--gid", "root"], b"").ok().json();
    assert_eq!((out["uid"].as_u64(), out["gid"].as_u64()), (Some(65534), Some(0)), "{out}");
}
