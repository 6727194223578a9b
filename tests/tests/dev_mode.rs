//! The README's first run: `vaultd --dev`, with the real (default) KDF, prints two
//! `export` lines; a session through them works; SIGTERM deletes the temp dir.
#![allow(clippy::unwrap_used)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use vault_tests::{ChildGuard, bins, run};

/// `export NAME='VALUE'` → VALUE, for a path without quotes in it.
fn exported(line: &str, name: &str) -> PathBuf {
    let value = line
        .strip_prefix(&format!("export {name}='"))
        .and_then(|rest| rest.strip_suffix('\''))
        .unwrap_or_else(|| panic!("expected `export {name}='…'`, got {line:?}"));
    assert!(!value.contains('\''), "{line:?}");
    PathBuf::from(value)
}

#[test]
fn dev_mode_prints_exports_serves_and_cleans_up() {
    let tmp = tempfile::Builder::new().prefix("vault-e2e-dev-").tempdir().unwrap();
    let log = std::fs::File::create(tmp.path().join("vaultd.log")).unwrap();
    let mut cmd = Command::new(&bins().vaultd);
    cmd.arg("--dev").env("TMPDIR", tmp.path()).env_remove("VAULTD_INSECURE_TEST_KDF").env_remove("VAULTD_LOG");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut guard = ChildGuard(Some(child));

    let (tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    let timeout = Duration::from_secs(60);
    let next_line = || {
        lines.recv_timeout(timeout).unwrap_or_else(|_| {
            panic!(
                "no export line within {timeout:?}; log:\n{}",
                std::fs::read_to_string(tmp.path().join("vaultd.log")).unwrap()
            )
        })
    };
    let agent = exported(&next_line(), "VAULT_SOCKET");
    let admin = exported(&next_line(), "VAULT_ADMIN_SOCKET");
    let dev_dir = agent.parent().unwrap().to_path_buf();
    assert_eq!(admin.parent(), Some(dev_dir.as_path()));
    assert!(dev_dir.starts_with(tmp.path()), "the temp dir honours TMPDIR: {}", dev_dir.display());
    assert!(dev_dir.is_dir());

    let ctl = |args: &[&str], stdin: &[u8]| {
        let mut cmd = Command::new(&bins().vaultctl);
        cmd.args(args).env("VAULT_SOCKET", &agent).env("VAULT_ADMIN_SOCKET", &admin).env_remove("VAULT_ENV");
        run(cmd, stdin)
    };
    let status = ctl(&["--json", "status"], b"").ok().json();
    assert_eq!((status["initialized"].clone(), status["sealed"].clone()), (true.into(), false.into()), "{status}");
    let kdf = &status["kdf"];
    assert_eq!(kdf["insecure_test_profile"], false, "--dev uses the real KDF: {status}");
    assert_eq!((kdf["memory_kib"].clone(), kdf["iterations"].clone()), (65536.into(), 3.into()), "{status}");
    assert_eq!(kdf["parallelism"], 4, "{status}");

    ctl(&["put", "demo", "--provider", "telegram"], b"123456:demo-token").ok();
    assert_eq!(ctl(&["get", "demo"], b"").ok().stdout, b"123456:demo-token");
    assert_eq!(ctl(&["--json", "list"], b"").ok().json()[0]["name"], "demo");

    let status = guard.stop_with(rustix::process::Signal::TERM);
    assert!(status.success(), "{status}");
    reader.join().unwrap();
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(rest.is_empty(), "--dev prints exactly two lines on stdout; also got {rest:?}");
    assert!(!Path::new(&dev_dir).exists(), "{} survived SIGTERM", dev_dir.display());
}
