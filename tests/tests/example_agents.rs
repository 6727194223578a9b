//! The example agents people copy (proto/examples/agent.rs and its Python twin
//! clients/python/examples/agent.py), run as an agent would be against a real
//! vaultd: `VAULT_SOCKET`, `VAULT_TOKEN`, `VAULT_ENV`, secret names on argv. Both
//! must load their secrets, report a rotation, exit 1 when access ends, and never
//! print a value. The same script drives both.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};
use vault_tests::{ChildGuard, Daemon, unique_tag};

/// One example agent and how its errors spell a status code.
struct Agent {
    /// The command for the example, without environment or names.
    command: fn() -> Command,
    /// Whether to keep the Python client's generated stubs in the test's temp dir
    /// (`VAULTD_CLIENT_CACHE`), rather than where a user's would go.
    stubs_in_temp: bool,
    /// How the example's error line ends for a gRPC code (`NotFound`, …).
    code: fn(&str) -> String,
    /// What its error line says when nothing listens on the socket.
    unreachable: &'static str,
}

const RUST: Agent = Agent {
    command: || Command::new(vault_tests::example("vault-proto", "agent")),
    stubs_in_temp: false,
    // vault_proto::Error: "vaultd: MESSAGE (NotFound)".
    code: |code| format!("({code})\n"),
    unreachable: "agent: cannot reach vaultd at ",
};

const PYTHON: Agent = Agent {
    command: || {
        let mut cmd = Command::new("python3");
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python");
        // As after `pip install ./clients/python`, without installing anything.
        cmd.arg(python.join("examples/agent.py")).env("PYTHONPATH", &python).env("PYTHONDONTWRITEBYTECODE", "1");
        cmd.env_remove("VAULTD_PROTO_PATH");
        cmd
    },
    stubs_in_temp: true,
    // VaultError: "MESSAGE (NOT_FOUND)".
    code: python_code,
    unreachable: "(UNAVAILABLE)",
};

/// The same example run as a user runs it after `pip install ./clients/python`
/// into a fresh virtualenv: the installed package, from any directory, with no
/// variable but the agent's own (a fresh `HOME` for the stubs' cache).
const INSTALLED_PYTHON: Agent = Agent {
    command: || {
        let mut cmd = installed_python();
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python/examples/agent.py"));
        cmd
    },
    stubs_in_temp: false,
    code: python_code,
    unreachable: "(UNAVAILABLE)",
};

/// The virtualenv's python, in the virtualenv's directory, with a fresh `HOME`
/// and none of the variables the source-tree runs use.
fn installed_python() -> Command {
    let venv = installed_venv();
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.current_dir(venv).env("HOME", venv.join("home"));
    for var in ["PYTHONPATH", "VAULTD_PROTO_PATH", "VAULTD_CLIENT_CACHE", "XDG_CACHE_HOME"] {
        cmd.env_remove(var);
    }
    cmd
}

/// A virtualenv with clients/python installed by pip, made once per test process.
/// Offline: the venv sees the system's grpcio, protobuf, setuptools and wheel
/// (clients/python/requirements.txt, which .ci/run installs), and pip may not
/// reach an index. It builds from a copy of clients/python, so nothing is written
/// into the source tree (the copy holds the proto the link in the package names).
fn installed_venv() -> &'static Path {
    static VENV: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf)> = std::sync::OnceLock::new();
    &VENV
        .get_or_init(|| {
            let dir = tempfile::Builder::new().prefix("vault-e2e-venv-").tempdir().unwrap();
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python");
            let copy = dir.path().join("src");
            let run = |cmd: &mut Command| {
                let out = cmd.output().unwrap();
                let said = format!(
                    "{cmd:?}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(out.status.success(), "{said}");
            };
            run(Command::new("cp").arg("-rL").arg(&source).arg(&copy));
            run(Command::new("python3").args(["-m", "venv", "--system-site-packages"]).arg(dir.path().join("venv")));
            let pip = [
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-index",
                "--no-build-isolation",
                "--disable-pip-version-check",
            ];
            run(Command::new(dir.path().join("venv/bin/python")).args(pip).arg(&copy));
            std::fs::create_dir(dir.path().join("venv/home")).unwrap();
            let venv = dir.path().join("venv");
            (dir, venv)
        })
        .1
}

/// How the Python client's errors spell a gRPC code: `NotFound` as `(NOT_FOUND)`.
fn python_code(code: &str) -> String {
    let mut upper = String::new();
    for (i, c) in code.char_indices() {
        if i > 0 && c.is_ascii_uppercase() {
            upper.push('_');
        }
        upper.push(c.to_ascii_uppercase());
    }
    format!("({upper})\n")
}

/// `token create --client CLIENT --any-uid` (the tests run as the vault's owner,
/// so a token is what makes the agent another client).
fn token(d: &Daemon, client: &str) -> String {
    let out = d.ctl(&["--json", "token", "create", "--client", client, "--any-uid"], b"").ok().json();
    out["token"].as_str().unwrap().to_owned()
}

fn agent_command(agent: &Agent, d: &Daemon, token: &str, names: &[&str]) -> Command {
    let mut cmd = (agent.command)();
    cmd.args(names)
        .env("VAULT_SOCKET", &d.agent_socket)
        .env("VAULT_TOKEN", token)
        .env("VAULT_ENV", "prod")
        .env_remove("VAULT_ADMIN_SOCKET");
    if agent.stubs_in_temp {
        cmd.env("VAULTD_CLIENT_CACHE", d.dir.path().join("stubs"));
    }
    cmd
}

fn line(out: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line
}

fn loads_its_secrets_and_follows_a_rotation(agent: &Agent) {
    let d = Daemon::initialized();
    let tag = unique_tag();
    // Lengths the test can tell apart: the agent prints lengths, never values.
    let telegram = format!("tg-{tag}");
    let openai = format!("sk-{tag}-openai");
    let rotated = format!("tg-v2-{tag}-rotated");
    assert_eq!([telegram.len(), openai.len(), rotated.len()], [19, 26, 30]);
    d.ctl(&["--env", "prod", "put", "telegram"], telegram.as_bytes()).ok();
    d.ctl(&["--env", "prod", "put", "openai"], openai.as_bytes()).ok();
    d.ctl(&["client", "add", "bot", "--uid", "4242", "--allow", "prod/*"], b"").ok();
    d.ctl(&["client", "add", "tg-only", "--uid", "4243", "--allow", "prod/telegram"], b"").ok();

    let mut cmd = agent_command(agent, &d, &token(&d, "bot"), &["telegram", "openai"]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut guard = ChildGuard(Some(vault_tests::spawn(&mut cmd)));
    let mut stdout = BufReader::new(guard.0.as_mut().unwrap().stdout.take().unwrap());
    let mut printed = String::new();
    for want in ["loaded telegram: 19 bytes\n", "loaded openai: 26 bytes\n", "watching 2 secrets\n"] {
        let got = line(&mut stdout);
        assert_eq!(got, want, "so far: {printed:?}");
        printed += &got;
    }
    // The watch is established ("watching"), so this rotation arrives as an update.
    d.ctl(&["--env", "prod", "rotate", "telegram"], rotated.as_bytes()).ok();
    let got = line(&mut stdout);
    assert_eq!(got, "updated telegram: version 2, 30 bytes\n", "so far: {printed:?}");
    printed += &got;

    // Its grant removed, the agent's watch ends and it exits 1, saying why.
    d.ctl(&["client", "ungrant", "bot", "prod/*"], b"").ok();
    let mut child = guard.0.take().unwrap();
    let status = vault_tests::wait_until(&mut child, Instant::now() + Duration::from_secs(10));
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the agent did not exit when its access ended")
    });
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    stdout.read_to_string(&mut printed).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("agent: ") && stderr.contains("access to prod/"), "{stderr}");
    assert!(stderr.ends_with(&(agent.code)("PermissionDenied")), "{stderr}");
    assert_eq!(printed.lines().count(), 4, "nothing more on stdout: {printed:?}");
    for value in [&telegram, &openai, &rotated, &tag] {
        assert!(!printed.contains(value.as_str()) && !stderr.contains(value.as_str()), "a value was printed");
    }

    // Startup fails cleanly with one line, and the token is what the vault judged:
    // as the owner (no token) openai would be readable; as tg-only it is not.
    for (what, token, want) in [
        ("a secret not granted", token(&d, "tg-only"), (agent.code)("NotFound")),
        ("an unknown token", "vt_not-a-real-token".into(), (agent.code)("Unauthenticated")),
    ] {
        let out = vault_tests::run(agent_command(agent, &d, &token, &["telegram", "openai"]), b"");
        assert_eq!(out.code, Some(1), "{what}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{what}: {}", out.text());
        assert!(out.stderr.starts_with("agent: ") && out.stderr.ends_with(&want), "{what}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{what}: {}", out.stderr);
    }
    let mut cmd = agent_command(agent, &d, "", &["telegram"]);
    cmd.env("VAULT_SOCKET", d.dir.path().join("no-such.sock"));
    let out = vault_tests::run(cmd, b"");
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.starts_with("agent: ") && out.stderr.contains(agent.unreachable), "{}", out.stderr);
}

#[test]
fn the_rust_example_agent_loads_its_secrets_and_follows_a_rotation() {
    loads_its_secrets_and_follows_a_rotation(&RUST);
}

#[test]
fn the_python_example_agent_loads_its_secrets_and_follows_a_rotation() {
    if !vault_tests::python_grpc_available() {
        return;
    }
    loads_its_secrets_and_follows_a_rotation(&PYTHON);
}

#[test]
fn the_python_example_agent_works_from_a_fresh_virtualenv_after_pip_install() {
    if !vault_tests::python_grpc_available() {
        return;
    }
    let have_wheel = Command::new("python3").args(["-c", "import setuptools, wheel"]).output();
    if !have_wheel.is_ok_and(|o| o.status.success()) {
        vault_tests::skip_unless_ci(
            "python3 cannot import setuptools and wheel, to build clients/python offline; \
             install them: python3 -m pip install -r clients/python/requirements.txt",
        );
        return;
    }
    // The package is the installed one, not the source tree's.
    let mut cmd = installed_python();
    let check = "import sys, vaultd_client; print(vaultd_client.__file__); sys.exit('site-packages' not in vaultd_client.__file__)";
    cmd.args(["-c", check]);
    let out = vault_tests::run(cmd, b"");
    assert_eq!(out.code, Some(0), "{} {}", out.text(), out.stderr);
    loads_its_secrets_and_follows_a_rotation(&INSTALLED_PYTHON);
}
