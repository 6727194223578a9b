//! `vaultctl completions SHELL` and `vaultctl man`: generated from the real clap
//! definitions, usable by the shell and by man, and needing no daemon.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use vault_tests::{Output, bins, run};

/// vaultctl with `args`, its sockets pointed nowhere: these commands must not dial.
fn vaultctl(args: &[&str]) -> Output {
    let mut cmd = Command::new(&bins().vaultctl);
    cmd.args(args).env("VAULT_SOCKET", "/nonexistent/agent.sock").env("VAULT_ADMIN_SOCKET", "/nonexistent/admin.sock");
    run(cmd, b"")
}

/// Whether `tool` is on PATH.
fn installed(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

#[test]
fn each_shell_gets_a_script_naming_the_real_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = vaultctl(&["completions", shell]).ok();
        assert!(out.stderr.is_empty(), "{shell}: {}", out.stderr);
        let script = out.text();
        assert!(script.len() > 1000, "{shell}: a {}-byte script", script.len());
        // Top-level and nested subcommands (`token revoke`), and global options.
        for word in ["vaultctl", "put", "audit", "verify", "revoke", "admin-socket", "json"] {
            assert!(script.contains(word), "{shell}: the script lacks {word:?}");
        }
    }
    let out = vaultctl(&["completions", "tcsh"]);
    // The argument is not quoted back (it could be anything), but where it is and what would do are.
    let message = out.error(2);
    assert!(
        message.contains("invalid value #2 (4 characters)") && message.contains("possible values: bash"),
        "{message}"
    );
}

/// Runs `script` with `shell_args` (e.g. `-n`, syntax check only), piping `input` in.
fn shell(shell: &str, shell_args: &[&str], input: &[u8]) -> Output {
    let mut cmd = Command::new(shell);
    cmd.args(shell_args);
    run(cmd, input)
}

#[test]
fn the_bash_script_parses_and_completes() {
    assert!(installed("bash"), "bash is needed for this test");
    let script = vaultctl(&["completions", "bash"]).ok().stdout;
    let syntax = shell("bash", &["-n"], &script);
    assert_eq!(syntax.code, Some(0), "bash -n: {}", syntax.stderr);

    // Loaded, it completes `vaultctl au` to `audit`, and `vaultctl audit ` to its subcommands.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vaultctl.bash");
    std::fs::write(&path, &script).unwrap();
    let probe = format!(
        r#"source '{}'
COMP_WORDS=(vaultctl au); COMP_CWORD=1; _vaultctl vaultctl au vaultctl
echo "first: ${{COMPREPLY[*]}}"
COMP_WORDS=(vaultctl audit ""); COMP_CWORD=2; _vaultctl vaultctl "" audit
echo "audit: ${{COMPREPLY[*]}}"
"#,
        path.display()
    );
    let out = shell("bash", &[], probe.as_bytes());
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let text = out.text();
    assert!(text.lines().any(|l| l == "first: audit"), "{text}");
    let audit = text.lines().find_map(|l| l.strip_prefix("audit: ")).unwrap();
    for sub in ["query", "export", "verify"] {
        assert!(audit.split_whitespace().any(|w| w == sub), "`vaultctl audit ` offers {sub}: {audit}");
    }
}

#[test]
fn the_zsh_and_fish_scripts_parse_where_those_shells_are_installed() {
    for (sh, check) in [("zsh", &["-n"][..]), ("fish", &["--no-execute"][..])] {
        if !installed(sh) {
            vault_tests::say_skipped(&format!("{sh} is not installed, so its script's syntax is not checked"));
            continue;
        }
        let script = vaultctl(&["completions", sh]).ok().stdout;
        let out = shell(sh, check, &script);
        assert_eq!(out.code, Some(0), "{sh} {check:?}: {}", out.stderr);
    }
}

#[test]
fn the_man_page_documents_the_real_commands() {
    let out = vaultctl(&["man"]).ok();
    let page = out.text();
    assert!(page.contains(".TH vaultctl 1"), "a roff page for section 1:\n{page}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "no {section}");
    }
    for sub in ["vaultctl\\-put(1)", "vaultctl\\-audit(1)", "vaultctl\\-token(1)", "vaultctl\\-completions(1)"] {
        assert!(page.contains(sub), "the page does not list {sub}");
    }
    assert!(!page.contains("vaultctl\\-man(1)") && !page.contains("vaultctl\\-help(1)"), "hidden or help pages listed");
    assert!(page.contains("\\-\\-admin\\-socket"), "the global options are documented");
    let name = page.split(".SH NAME\n").nth(1).and_then(|rest| rest.lines().next()).unwrap();
    assert_eq!(name, "vaultctl \\- manage a vaultd secrets vault", "the NAME line says it once");
    assert!(page.contains("vaultd is unreachable"), "the exit codes are documented");

    // --out-dir writes every page the main one refers to.
    let dir = tempfile::tempdir().unwrap();
    let dir_str = dir.path().to_str().unwrap();
    vaultctl(&["man", "--out-dir", dir_str]).ok();
    for referenced in page.split("\\fBvaultctl\\-").skip(1).filter_map(|r| r.split_once("(1)")) {
        let name = format!("vaultctl-{}.1", referenced.0.replace("\\-", "-").trim_end_matches("\\fR"));
        assert!(dir.path().join(&name).is_file(), "{name} is referenced but was not written");
    }
    let written = std::fs::read_to_string(dir.path().join("vaultctl.1")).unwrap();
    assert_eq!(written, page, "the printed page and the written one are the same");
    for nested in ["vaultctl-put.1", "vaultctl-audit-verify.1", "vaultctl-token-create.1"] {
        let text = std::fs::read_to_string(dir.path().join(nested)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{nested} is roff");
    }
    if installed("man") {
        let out =
            Command::new("man").arg("-l").arg(Path::new(dir_str).join("vaultctl.1")).env("MANWIDTH", "80").output();
        let out = out.unwrap();
        assert!(out.status.success(), "man -l: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("SUBCOMMANDS"));
    } else {
        vault_tests::say_skipped("man is not installed, so the page is not rendered");
    }
}

#[test]
fn bash_completes_secret_and_client_names_from_vaultd() {
    assert!(installed("bash"), "bash is needed for this test");
    let d = vault_tests::Daemon::initialized();
    d.ctl(&["--env", "prod", "put", "TELEGRAM_BOT_TOKEN"], b"t").ok();
    d.ctl(&["--env", "prod", "put", "OPENAI_API_KEY"], b"o").ok();
    d.ctl(&["put", "elsewhere"], b"e").ok();
    d.ctl(&["client", "add", "telegram-bot", "--uid", "65534"], b"").ok();
    let script = d.ctl(&["completions", "bash"], b"").ok().stdout;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vaultctl.bash");
    std::fs::write(&path, &script).unwrap();
    let complete = |words: &[&str]| {
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let probe = format!(
            "source '{}'\nCOMP_WORDS=({}); COMP_CWORD={}; _vaultctl_names vaultctl '{}' '{}'\necho \"${{COMPREPLY[*]}}\"\n",
            path.display(),
            quoted.join(" "),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        );
        let mut cmd = Command::new("bash");
        cmd.env("PATH", format!("{}:{}", bins().vaultctl.parent().unwrap().display(), std::env::var("PATH").unwrap()))
            .env("VAULT_SOCKET", &d.agent_socket)
            .env("VAULT_ADMIN_SOCKET", &d.admin_socket)
            .env_remove("VAULT_ENV");
        let out = run(cmd, probe.as_bytes());
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        out.text().trim().to_owned()
    };
    assert_eq!(complete(&["vaultctl", "--env", "prod", "get", "TE"]), "TELEGRAM_BOT_TOKEN");
    assert_eq!(complete(&["vaultctl", "--env", "prod", "rotate", ""]), "OPENAI_API_KEY TELEGRAM_BOT_TOKEN");
    assert_eq!(complete(&["vaultctl", "show", ""]), "elsewhere");
    assert_eq!(complete(&["vaultctl", "client", "disable", "tel"]), "telegram-bot");
    let pattern = complete(&["vaultctl", "client", "grant", "telegram-bot", ""]);
    assert!(!pattern.contains("telegram-bot"), "a pattern goes there, not a name: {pattern}");
    // Words still come from clap's script.
    assert!(complete(&["vaultctl", "au"]).contains("audit"));
}
