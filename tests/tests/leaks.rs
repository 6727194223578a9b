//! Secrets never leak: with vaultd logging at `trace`, drive every command (text
//! and `--json`, successes and failures) and search everything that is not meant
//! to carry a value — vaultd's log, every vaultctl stderr, every stdout but `get`'s
//! and `show --reveal`'s — for the values and the passphrases.
#![allow(clippy::unwrap_used)]

use vault_tests::{Daemon, Options, Output, base64, contains, path_str, unique_tag};

/// The ways a secret could show up: raw, as Rust's `Debug` of its bytes (what a
/// derived `Debug` of a `Vec<u8>` field prints), hex, and base64.
fn leak_forms(secret: &[u8]) -> Vec<(String, Vec<u8>)> {
    let debug = format!("{:?}", &secret[..12]);
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        ("raw".into(), secret.to_vec()),
        ("Debug bytes".into(), debug.trim_end_matches(']').as_bytes().to_vec()),
        ("hex".into(), hex.into_bytes()),
        ("base64".into(), base64(secret).into_bytes()),
    ]
}

struct Transcript {
    /// (where, bytes) that must not hold a secret.
    checked: Vec<(String, Vec<u8>)>,
}

impl Transcript {
    /// Records a call's stderr, and its stdout unless the call prints a value by design.
    fn record(&mut self, args: &[&str], out: &Output, prints_value: bool) {
        self.checked.push((format!("stderr of {args:?}"), out.stderr.clone().into_bytes()));
        if !prints_value {
            self.checked.push((format!("stdout of {args:?}"), out.stdout.clone()));
        }
    }
}

#[test]
fn values_and_passphrases_never_reach_logs_errors_or_metadata() {
    let trace = Options { env: vec![("VAULTD_LOG".into(), "trace".into())], ..Options::default() };
    let mut d = Daemon::start_with(trace);
    let tag = unique_tag();
    let value = format!("sk-ant-LEAKCANARY-value-{tag}");
    let file_value = format!("xoxb-LEAKCANARY-file-{tag}");
    let passphrase = format!("LEAKCANARY passphrase {tag}");
    let wrong = format!("LEAKCANARY wrong passphrase {tag}");
    let pass_file = d.write_file("pass", format!("{passphrase}\n").as_bytes());
    let wrong_file = d.write_file("wrong", wrong.as_bytes());
    let value_file = d.write_file("value", file_value.as_bytes());
    let (pass_file, wrong_file, value_file) = (path_str(&pass_file), path_str(&wrong_file), path_str(&value_file));

    // (args, stdin, prints the value by design)
    let script: &[(&[&str], &[u8], bool)] = &[
        (&["status"], b"", false),
        (&["unlock", "--passphrase-file", pass_file], b"", false), // not initialized yet
        (&["init", "--passphrase-file", pass_file], b"", false),
        (&["init", "--passphrase-file", wrong_file], b"", false), // already initialized
        (&["status"], b"", false),
        (&["put", "telegram", "--provider", "telegram"], value.as_bytes(), false),
        (&["put", "telegram"], value.as_bytes(), false),
        (&["put", "slack", "--from-file", value_file], b"", false),
        (&["--env", "prod", "put", "telegram"], value.as_bytes(), false),
        (&["put", "Bad-Name"], value.as_bytes(), false),
        (&["put", "toolong"], &[b'x'; 70_000], false),
        (&["get", "telegram"], b"", true),
        (&["get", "slack"], b"", true),
        (&["get", "missing"], b"", false),
        (&["show", "telegram"], b"", false),
        (&["show", "--reveal", "telegram"], b"", true),
        (&["list"], b"", false),
        (&["--env", "prod", "list"], b"", false),
        (&["versions", "telegram"], b"", false),
        (&["unlock", "--passphrase-file", wrong_file], b"", false),
        (&["unlock", "--passphrase-file", "-"], wrong.as_bytes(), false),
        (&["seal"], b"", false),
        (&["get", "telegram"], b"", false), // sealed
        (&["show", "--reveal", "telegram"], b"", false),
        (&["unlock", "--passphrase-file", wrong_file], b"", false),
        (&["unlock", "--passphrase-file", pass_file], b"", false),
        (&["get", "telegram"], b"", true),
        (&["rm", "slack"], b"", false),
        (&["get", "slack"], b"", false),
    ];
    let mut transcript = Transcript { checked: Vec::new() };
    for json in [false, true] {
        if json {
            // Start over on a fresh vault so init and its failures run again.
            d.stop();
            std::fs::remove_dir_all(&d.data_dir).unwrap();
            d.launch();
        }
        for &(args, stdin, prints_value) in script {
            let args: Vec<&str> = if json { [&["--json"], args].concat() } else { args.to_vec() };
            let out = d.ctl(&args, stdin);
            transcript.record(&args, &out, prints_value);
        }
        // The script did reach the paths it means to exercise.
        assert_eq!(d.get("telegram"), value.as_bytes());
        d.ctl(&["get", "slack"], b"").error(3);
    }
    // A value pasted in place of a name is not echoed either (exit 2, as a name).
    let out = d.ctl(&["get", &value], b"");
    transcript.record(&["get", "VALUE"], &out, false);
    out.error(2);

    let stopped = d.stop();
    assert!(stopped.status.success());
    assert!(stopped.log.lines().count() > 50, "expected a trace-level log, got:\n{}", stopped.log);
    assert!(stopped.log.contains("unlock refused"), "the failed unlocks are logged:\n{}", stopped.log);
    transcript.checked.push(("vaultd's log".into(), stopped.log.into_bytes()));

    for secret in [&value, &file_value, &passphrase, &wrong] {
        for (form, needle) in leak_forms(secret.as_bytes()) {
            for (place, bytes) in &transcript.checked {
                assert!(
                    !contains(bytes, &needle),
                    "{place} holds {form} of {secret:?}:\n{}",
                    String::from_utf8_lossy(bytes)
                );
            }
        }
    }
}
