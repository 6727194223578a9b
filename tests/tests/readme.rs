//! The README's "For agents" examples are the code the tests run: the Rust and
//! Python blocks must be verbatim parts of the example agents (which
//! `example_agents.rs` runs), and the `vaultctl exec` lines are run here as
//! written, against a real vaultd.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use vault_tests::{Daemon, bins, path_str};

fn repo(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)).unwrap()
}

/// The fenced blocks of `lang` in the README's "For agents" section.
fn blocks(lang: &str) -> Vec<String> {
    let readme = repo("README.md");
    let section = readme.split("\n## For agents\n").nth(1).unwrap().split("\n## ").next().unwrap();
    section.split(&format!("```{lang}\n")).skip(1).map(|rest| rest.split("```").next().unwrap().to_owned()).collect()
}

#[test]
fn the_rust_and_python_snippets_are_the_tested_examples() {
    let rust = blocks("rust");
    assert_eq!(rust.len(), 1);
    assert!(repo("proto/examples/agent.rs").contains(&rust[0]), "README's Rust block differs from the example");
    let python = blocks("python");
    assert_eq!(python.len(), 1);
    assert!(repo("clients/python/examples/agent.py").contains(&python[0]), "README's Python block differs");
}

/// Stands in for the reader's bot: checks it got both secrets, by variable or file.
const BOT: &str = r#"import os
def value(var):
    if var in os.environ:
        return os.environ[var]
    with open(os.environ[var + "_FILE"]) as f:
        return f.read()
assert "VAULT_TOKEN" not in os.environ
assert value("TELEGRAM_TOKEN") == "123:tg" and value("ANTHROPIC_API_KEY") == "sk-ant-1", "wrong secrets"
print("bot ok")
"#;

#[test]
fn the_exec_lines_run_as_written() {
    let d = Daemon::initialized();
    d.put("telegram", b"123:tg");
    d.put("anthropic", b"sk-ant-1");
    let lines: Vec<String> =
        blocks("sh").concat().lines().filter(|l| l.starts_with("vaultctl exec")).map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    std::fs::write(d.dir.path().join("bot.py"), BOT).unwrap();
    let runtime = d.dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let vaultctl_dir = bins().vaultctl.parent().unwrap();
    for line in lines {
        // The line through a shell, as a reader would paste it, with vaultctl on PATH.
        let mut cmd = std::process::Command::new("sh");
        let path = format!("{}:{}", path_str(vaultctl_dir), std::env::var("PATH").unwrap_or_default());
        cmd.args(["-c", &line])
            .current_dir(d.dir.path())
            .env("PATH", path)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("VAULT_SOCKET", &d.agent_socket)
            .env("VAULT_ADMIN_SOCKET", &d.admin_socket)
            .env_remove("VAULT_ENV")
            .env_remove("VAULT_TOKEN");
        let out = vault_tests::run(cmd, b"");
        assert_eq!((out.code, out.text()), (Some(0), "bot ok\n".into()), "{line}: {}", out.stderr);
    }
    assert!(std::fs::read_dir(&runtime).unwrap().next().is_none(), "--files left something behind");
}
