//! The README works as written: every `sh` block runs, in order, verbatim, in one
//! shell (so `export`, `unset` and files carry from block to block, as they do for
//! a reader), as root against a fresh daemon, and the test fails if any command
//! fails (`set -euo pipefail`). The Rust and Python blocks are verbatim parts of
//! the example agents, which `example_agents.rs` runs.
//!
//! What stands in for the reader, and why:
//! - The shell runs in a private mount namespace with empty `/usr/local`, `/var`,
//!   `/run`, `/srv` and a copy of `/etc`, so the README's paths (`/var/lib/vaultd`,
//!   `/run/vaultd`, `useradd bot`) are its own and the machine is left as it was.
//! - `cargo install` is a checked stand-in: it accepts exactly the README's two
//!   commands and installs the vaultd and vaultctl this test process built from
//!   the same sources (a release build takes ten minutes; a fresh clone following
//!   the README runs the real one).
//! - A block that starts with `# In another terminal` is started in the
//!   background, as a second terminal would run it; the next block starts once it
//!   is ready (its sockets listen, or it printed a first line). The `export`
//!   lines `vaultd --dev` prints are pasted into the shell, as the README asks.
//! - The working directory is a copy of the repository's tracked files.
//! - The two blocks that call systemctl are not run: they need a host whose init
//!   is systemd (`needs_systemd`; tests/tests/systemd.rs checks the unit and
//!   the drop-in).
//! - "Keys your agents never see" runs in a test of its own, against a vaultd
//!   with the section's config and local upstreams standing in for the
//!   providers (`the_broker_section_runs_as_written`).
#![allow(clippy::unwrap_used)]

mod upstream;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vault_tests::{Daemon, bins, is_root, path_str, skip_unless_ci};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn repo(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap()
}

/// A fenced block of the README: the section it is in, its language, its text.
#[derive(Debug)]
struct Block {
    section: String,
    lang: String,
    text: String,
}

/// Every fenced block, in order, with the nearest heading above it.
fn blocks() -> Vec<Block> {
    let readme = repo("README.md");
    let mut blocks = Vec::new();
    let mut section = String::new();
    let mut open: Option<(String, String)> = None;
    for line in readme.lines() {
        match &mut open {
            Some(_) if line.starts_with("```") => {
                let (lang, text) = open.take().unwrap();
                blocks.push(Block { section: section.clone(), lang, text });
            }
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None if line.starts_with("```") => {
                open = Some((line.trim_start_matches('`').to_owned(), String::new()));
            }
            None if line.starts_with('#') => section = line.trim_start_matches('#').trim().to_owned(),
            None => {}
        }
    }
    assert!(open.is_none(), "the README has an unclosed code block");
    blocks
}

/// Whether a block needs a host whose init is systemd (it calls systemctl): the
/// only blocks not run.
fn needs_systemd(block: &Block) -> bool {
    block.text.lines().any(|l| l.split_whitespace().any(|w| w == "systemctl"))
}

/// The section whose blocks need the providers (stood in for by local
/// upstreams): run by `the_broker_section_runs_as_written`, not in the session.
const BROKER_SECTION: &str = "Keys your agents never see";

/// What marks a block that runs until stopped, in a second terminal.
const BACKGROUND: &str = "# In another terminal";

#[test]
fn the_rust_and_python_snippets_are_the_tested_examples() {
    let agents: Vec<Block> = blocks().into_iter().filter(|b| b.section == "For agents").collect();
    let of = |lang: &str| agents.iter().filter(|b| b.lang == lang).map(|b| b.text.clone()).collect::<Vec<_>>();
    let rust = of("rust");
    assert_eq!(rust.len(), 1);
    assert!(repo("proto/examples/agent.rs").contains(&rust[0]), "README's Rust block differs from the example");
    let python = of("python");
    assert_eq!(python.len(), 1);
    assert!(repo("clients/python/examples/agent.py").contains(&python[0]), "README's Python block differs");
}

/// The shell script the README's `sh` blocks make, with the stand-ins above.
fn script(blocks: &[Block]) -> String {
    let mut script = String::from(
        r#"set -euo pipefail
__pids=""
# Each background block is a process group of its own (setsid), stopped whole,
# and waited for: vaultd --dev removes its temp dir as it exits.
trap 'for p in $__pids; do kill -TERM -- "-$p" 2>/dev/null || true; done; wait' EXIT
# A block that runs until stopped: in the background; ready once vaultd listens
# (and --dev printed its exports, which are then pasted here), or once anything
# else printed a line.
__background() {
    setsid bash "$1.sh" > "$1.out" 2> "$1.err" &
    __pids="$__pids $!"
    local pid=$!
    for _ in $(seq 600); do
        kill -0 "$pid" 2>/dev/null || { echo "$1 exited:" >&2; cat "$1.out" "$1.err" >&2; return 1; }
        if grep -q listening "$1.err"; then
            if ! grep -q -- --dev "$1.sh" || [ "$(grep -c '^export ' "$1.out")" = 2 ]; then
                eval "$(grep '^export ' "$1.out" || true)"
                return 0
            fi
        elif ! grep -q '^vaultd ' "$1.sh" && [ -s "$1.out" ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "$1 was not ready after 60 s:" >&2; cat "$1.out" "$1.err" >&2; return 1
}
"#,
    );
    for (i, block) in blocks.iter().enumerate() {
        script.push_str(&format!("echo '>>> README block {i} ({})' >&2\n", block.section.replace('\'', "")));
        if block.text.starts_with(BACKGROUND) {
            script.push_str(&format!("cat > .readme-bg{i}.sh <<'README_BLOCK'\n{}README_BLOCK\n", block.text));
            script.push_str(&format!("__background .readme-bg{i}\n"));
        } else {
            script.push_str(&block.text);
        }
    }
    script.push_str("echo '>>> README done' >&2\n");
    script
}

/// Private `/usr/local`, `/var`, `/run`, `/srv` and `/etc` for the README's paths,
/// a `cargo` that installs the binaries this test built, then the script.
fn namespace_setup(tmp: &Path, shim_dir: &Path) -> String {
    let tmp = path_str(tmp);
    format!(
        r#"set -eu
mount --make-rprivate /
for dir in /usr/local /var /run /srv; do mount -t tmpfs -o mode=0755 tmpfs "$dir"; done
mkdir -p /var/log /var/lib /var/backups /usr/local/bin
cp -a /etc {tmp}/etc && mount --bind {tmp}/etc /etc
export PATH="{shim}:/usr/local/bin:$PATH"
exec bash {tmp}/readme.sh < /dev/null
"#,
        shim = path_str(shim_dir),
    )
}

/// `cargo`, for the README test: exactly the README's install commands, served
/// from the binaries built for this test.
fn cargo_shim(dir: &Path) {
    let bins = bins();
    let shim = format!(
        r#"#!/bin/sh
case "$*" in
"install --locked --root /usr/local --path vaultd") exec install -D -m 0755 {vaultd} /usr/local/bin/vaultd ;;
"install --locked --root /usr/local --path vaultctl") exec install -D -m 0755 {vaultctl} /usr/local/bin/vaultctl ;;
*) echo "the README test's cargo knows only the README's install commands, not: cargo $*" >&2; exit 1 ;;
esac
"#,
        vaultd = path_str(&bins.vaultd),
        vaultctl = path_str(&bins.vaultctl),
    );
    std::fs::create_dir(dir).unwrap();
    let path = dir.join("cargo");
    std::fs::write(&path, shim).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// The repository's tracked files (as they are in the working tree) in `dest`.
fn copy_repo(dest: &Path) {
    let root = repo_root();
    let files = Command::new("git").arg("-C").arg(&root).args(["ls-files", "-z"]).output().unwrap();
    assert!(files.status.success(), "git ls-files: {}", String::from_utf8_lossy(&files.stderr));
    std::fs::create_dir(dest).unwrap();
    let mut tar = Command::new("sh")
        .args(["-c", r#"tar -C "$1" --null -T - -cf - | tar -C "$2" -xf -"#, "sh"])
        .arg(&root)
        .arg(dest)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut tar.stdin.take().unwrap(), &files.stdout).unwrap();
    assert!(tar.wait().unwrap().success(), "copying the repository");
}

#[test]
fn every_shell_block_runs_in_order_as_written() {
    if !is_root() {
        skip_unless_ci("the README's sessions run as root (they add a user for an agent)");
        return;
    }
    for tool in ["unshare", "runuser", "useradd", "python3"] {
        if !Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap().status.success() {
            skip_unless_ci(&format!("{tool} is not installed"));
            return;
        }
    }
    let all = blocks();
    let skipped: Vec<&str> =
        all.iter().filter(|b| b.lang == "sh" && needs_systemd(b)).map(|b| b.section.as_str()).collect();
    assert_eq!(skipped, ["Executable selectors", "Deploying with systemd"], "only systemd's blocks are not run");
    let run: Vec<Block> =
        all.into_iter().filter(|b| b.lang == "sh" && !needs_systemd(b) && b.section != BROKER_SECTION).collect();
    assert!(run.len() >= 15, "{} blocks", run.len());
    // `set -e` does not stop at a failure before `&&` (`a && b` with `a` failing
    // goes on): one command a line, so that every failure fails the test.
    for block in &run {
        let joined = block.text.lines().find(|l| l.contains("&&") && !l.contains("sh -c"));
        assert!(
            joined.is_none(),
            "a README command joined with && would hide a failure ({}): {joined:?}",
            block.section
        );
    }
    for section in ["Install", "A first session", "A real vault", "From a `.env` file", "For agents"] {
        assert!(run.iter().any(|b| b.section == section), "no block in {section}");
    }

    let tmp = tempfile::Builder::new().prefix("vault-e2e-readme-").tempdir().unwrap();
    let work = tmp.path().join("vaultd");
    copy_repo(&work);
    cargo_shim(&tmp.path().join("shim"));
    std::fs::write(tmp.path().join("readme.sh"), script(&run)).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--fork", "bash", "-c", &namespace_setup(tmp.path(), &tmp.path().join("shim"))])
        .current_dir(&work)
        .env_remove("VAULT_SOCKET")
        .env_remove("VAULT_ADMIN_SOCKET")
        .env_remove("VAULT_ENV")
        .env_remove("VAULT_TOKEN")
        .env_remove("VAULT_PASSPHRASE")
        .env_remove("VAULTD_PASSPHRASE")
        .env_remove("VAULTD_INSECURE_TEST_KDF")
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("XDG_RUNTIME_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let out = output_within(cmd, Duration::from_secs(600));
    let log =
        format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "a README command failed ({}); {log}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(">>> README done"), "{log}");
    let ran = stderr.matches(">>> README block ").count();
    assert_eq!(ran, run.len(), "every block ran; {log}");
    eprintln!("README: {ran} shell blocks ran in {:.0?}", started.elapsed());
    if std::env::var_os("README_TEST_SHOW").is_some() {
        eprintln!("{log}");
    }
}

/// Runs `cmd` to completion, killing it (and failing) after `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> std::process::Output {
    let mut child = vault_tests::spawn(&mut cmd);
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let status = vault_tests::wait_until(&mut child, Instant::now() + limit);
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the README's blocks did not finish within {limit:?}: {}",
            String::from_utf8_lossy(&err.join().unwrap())
        );
    };
    std::process::Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// "Keys your agents never see": the config as written (but for the
/// providers' addresses: local upstreams that behave like them, and their
/// CA), the shell block as written, the SDK examples as written.
#[test]
fn the_broker_section_runs_as_written() {
    if !Command::new("python3").args(["-c", "import anthropic, openai"]).output().is_ok_and(|o| o.status.success()) {
        skip_unless_ci(
            "python3 cannot import anthropic and openai: pip install -r tests/python/broker-requirements.txt",
        );
        return;
    }
    let section: Vec<Block> = blocks().into_iter().filter(|b| b.section == BROKER_SECTION).collect();
    let of = |lang: &str| section.iter().filter(|b| b.lang == lang).map(|b| b.text.clone()).collect::<Vec<_>>();
    let (toml, sh, python) = (of("toml"), of("sh"), of("python"));
    assert_eq!((toml.len(), sh.len(), python.len()), (1, 1, 2));
    let tag = vault_tests::unique_tag();
    let (anthropic, openai) = (format!("sk-ant-readme-{tag}"), format!("sk-openai-readme-{tag}"));
    let mut d = Daemon::new(vault_tests::Options::default());
    let up = upstream::Upstream::start(d.dir.path(), &[&anthropic, &openai]);
    let mut config = toml[0].clone();
    for provider in ["https://api.anthropic.com", "https://api.openai.com"] {
        let written = format!("upstream = \"{provider}\"\n");
        assert!(config.contains(&written), "{written}");
        config =
            config.replace(&written, &format!("upstream = \"{}\"\nca_file = \"{}\"\n", up.url, path_str(&up.ca_file)));
    }
    d.opts.config = Some(config);
    d.launch();
    d.init();
    let work = d.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("anthropic.key"), &anthropic).unwrap();
    std::fs::write(work.join("openai.key"), &openai).unwrap();
    std::fs::write(work.join("claude.py"), &python[0]).unwrap();
    std::fs::write(work.join("gpt.py"), &python[1]).unwrap();
    let mut cmd = Command::new("sh");
    let path = format!("{}:{}", path_str(bins().vaultctl.parent().unwrap()), std::env::var("PATH").unwrap_or_default());
    cmd.args(["-e", "-c", &sh[0]])
        .current_dir(&work)
        .env("PATH", path)
        .env("VAULT_SOCKET", &d.agent_socket)
        .env("VAULT_ADMIN_SOCKET", &d.admin_socket)
        .env("VAULTD_INSECURE_TEST_KDF", "1")
        .env_remove("VAULT_ENV")
        .env_remove("VAULT_TOKEN")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OPENAI_API_KEY");
    let out = vault_tests::run(cmd, b"");
    assert_eq!(out.code, Some(0), "{}\n{}", out.text(), out.stderr);
    let text = out.text();
    assert!(text.contains("\nhello from the upstream\nhello from the upstream\nCLIENT  ROUTE "), "{text}");
    assert!(text.contains("\nbot     anthropic  1/60     1          35/2000000    0.0000         ok\n"), "{text}");
    assert!(text.contains("\nbot     openai     1        1          21            0.0000/5.0000  ok\n"), "{text}");
    let seen = up.seen();
    assert!(seen.iter().any(|r| r.header("x-api-key").as_deref() == Some(anthropic.as_str())));
    assert!(seen.iter().any(|r| r.header("authorization") == Some(format!("Bearer {openai}"))));
    assert!(!text.contains(&anthropic) && !text.contains(&openai));
}
