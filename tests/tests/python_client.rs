//! A gRPC client this project did not write: Python's grpcio, with stubs that
//! grpcio-tools generates from proto/ (clients/python), reads and watches secrets
//! on a real vaultd's agent socket. The assertions are clients/python/tests/'s
//! (test_agent.py as the vault's owner, test_watch.py as an agent with a token);
//! this runs them and checks that their tests ran and passed.
//!
//! Needs python3 with grpcio and grpcio-tools (clients/python/requirements.txt,
//! which .ci/run installs). Without them the test fails under CI and otherwise
//! says on stderr that it was skipped.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use vault_tests::{Daemon, Output, hex, python_grpc_available, run, unique_tag};

/// clients/python in this source tree.
fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python")
}

/// Runs test_agent.py against `d`'s agent socket, expecting a vault that is `expect`
/// (`unlocked` or `sealed`), with the secrets in `secrets` (text first, then binary).
fn run_python_tests(d: &Daemon, expect: &str, secrets: &[(&str, &[u8]); 2]) -> Output {
    let [(name, value), (binary_name, binary_value)] = secrets;
    let mut cmd = Command::new("python3");
    cmd.arg(client_dir().join("tests/test_agent.py"))
        .env("VAULT_SOCKET", &d.agent_socket)
        .env("VAULT_TEST_NAME", name)
        .env("VAULT_TEST_VALUE_HEX", hex(value))
        .env("VAULT_TEST_BINARY_NAME", binary_name)
        .env("VAULT_TEST_BINARY_VALUE_HEX", hex(binary_value))
        .env("VAULT_TEST_EXPECT", expect)
        // Stubs generated into this test's temp dir, nothing written into the source tree.
        .env("VAULTD_CLIENT_CACHE", d.dir.path().join("stubs"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("VAULT_ENV")
        .env_remove("VAULT_TOKEN")
        .env_remove("VAULTD_PROTO_PATH");
    run(cmd, b"")
}

/// Asserts unittest's verdict on stderr: exit 0, `Ran N tests` with N ≥ `min_tests`,
/// and a plain `OK` (nothing skipped). Returns N.
#[track_caller]
fn assert_passed(out: &Output, min_tests: u32) -> u32 {
    let log = format!("stdout:\n{}\nstderr:\n{}", out.text(), out.stderr);
    assert_eq!(out.code, Some(0), "test_agent.py failed; {log}");
    let ran = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("Ran ")?.split_once(" test")?.0.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no `Ran N tests` line; {log}"));
    assert!(ran >= min_tests, "ran {ran} tests, expected at least {min_tests}; {log}");
    let verdict = out.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    assert_eq!(verdict, "OK", "expected unittest's plain OK (no failures, nothing skipped); {log}");
    ran
}

#[test]
fn python_grpcio_client_reads_from_the_agent_socket() {
    if !python_grpc_available() {
        return;
    }
    let d = Daemon::initialized();
    let tag = unique_tag();
    let text = format!("tök€n-{tag}-日本語");
    let binary: Vec<u8> = [tag.as_bytes(), b"\xff\x00\xfe\x80\n".as_slice(), &(0..=255).collect::<Vec<u8>>()].concat();
    assert!(std::str::from_utf8(&binary).is_err(), "the binary value must not be UTF-8");
    d.put("py-text", text.as_bytes());
    d.put("py-binary", &binary);
    let secrets: [(&str, &[u8]); 2] = [("py-text", text.as_bytes()), ("py-binary", &binary)];

    let out = run_python_tests(&d, "unlocked", &secrets);
    let ran = assert_passed(&out, 3);
    for needle in [text.as_bytes(), &binary[..], tag.as_bytes()] {
        let printed = [out.stdout.as_slice(), out.stderr.as_bytes()].concat();
        assert!(!vault_tests::contains(&printed, needle), "a value reached the Python test's output");
    }
    eprintln!("python client: {ran} tests passed against an unlocked vault");

    // Sealed: the same socket answers FAILED_PRECONDITION, which the client raises as Sealed.
    d.ctl(&["seal"], b"").ok();
    let out = run_python_tests(&d, "sealed", &secrets);
    assert_passed(&out, 1);
}

#[test]
fn python_client_uses_a_token_and_follows_rotations_until_access_ends() {
    if !python_grpc_available() {
        return;
    }
    let d = Daemon::initialized();
    // Every value test_watch.py stores contains the tag: none may reach its output.
    let tag = unique_tag();
    let mut cmd = Command::new("python3");
    cmd.arg(client_dir().join("tests/test_watch.py"))
        .env("VAULT_SOCKET", &d.agent_socket)
        .env("VAULT_ADMIN_SOCKET", &d.admin_socket)
        .env("VAULTCTL", &vault_tests::bins().vaultctl)
        .env("VAULT_TEST_TAG", &tag)
        .env("VAULTD_CLIENT_CACHE", d.dir.path().join("stubs"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("VAULT_ENV")
        .env_remove("VAULT_TOKEN")
        .env_remove("VAULTD_PROTO_PATH");
    let out = run(cmd, b"");
    let ran = assert_passed(&out, 8);
    let printed = [out.stdout.as_slice(), out.stderr.as_bytes()].concat();
    assert!(!vault_tests::contains(&printed, tag.as_bytes()), "a value reached the Python test's output");
    // The watches really ran: each delivery is an audited read, and the rotated
    // value went out as version 2 to a watcher.
    let reads = d.audit_query(&["--type", "secret.read"]);
    assert!(reads.iter().any(|e| e["detail"]["watch"] == true && e["detail"]["version"] == 2), "{reads:?}");
    eprintln!("python client: {ran} token and watch tests passed");
}
