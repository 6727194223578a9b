//! The README's "For agents" examples are the code the tests run: the Rust and
//! Python blocks must be verbatim parts of the example agents (which
//! `example_agents.rs` runs), and the `vaultctl exec` lines are run here as
//! written, against a real vaultd.
#![allow(clippy::unwrap_used)]

mod upstream;

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

/// The fenced blocks of `lang` in the README's section `title`.
fn section_blocks(title: &str, lang: &str) -> Vec<String> {
    let readme = repo("README.md");
    let section = readme.split(&format!("\n## {title}\n")).nth(1).unwrap().split("\n## ").next().unwrap();
    section.split(&format!("```{lang}\n")).skip(1).map(|rest| rest.split("```").next().unwrap().to_owned()).collect()
}

/// "Keys your agents never see": the config as written (but for the
/// providers' addresses: local upstreams that behave like them, and their
/// CA), the shell block as written, the SDK examples as written.
#[test]
fn the_broker_section_runs_as_written() {
    if !std::process::Command::new("python3")
        .args(["-c", "import anthropic, openai"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        vault_tests::skip_unless_ci(
            "python3 cannot import anthropic and openai: pip install -r tests/python/broker-requirements.txt",
        );
        return;
    }
    let title = "Keys your agents never see";
    let (toml, sh, python) =
        (section_blocks(title, "toml"), section_blocks(title, "sh"), section_blocks(title, "python"));
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
    let mut cmd = std::process::Command::new("sh");
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
