//! `vaultctl import`, `run`, `export` and `check` against a real vaultd: a
//! realistic `.env` file goes in, a program started by `vaultctl run` sees exactly
//! its variables, a second import changes nothing, and an export reads back the
//! same. Errors name lines and secrets, never values.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use vault_tests::{Daemon, Options, contains, is_root, path_str, run, skip_unless_ci, vaultctl_for_everyone};

/// A bot's `.env`, as found in the wild: 20 keys, with comments, `export`, both
/// quotes, escapes, an inline comment, a multi-line key and `$` that is text.
const DOTENV: &str = r#"# Bot settings (copied from the old server)
OPENAI_API_KEY=sk-proj-3fA9xQ2mZ7Lw0pRt
ANTHROPIC_API_KEY="sk-ant-api03-Yh8s_Jk2-QpL"
export TELEGRAM_BOT_TOKEN=7123456789:AAH3kdl-Xp9QqZ_w2sl
  export DISCORD_TOKEN = 'MTA5.GhX2.k1_zQ'   # the bot user's
SLACK_BOT_TOKEN=xoxb-1234-5678-AbCdEf # workspace: ops
SLACK_SIGNING_SECRET='8f14e45fceea167a5a36dedd4bea2543'

# Database
DATABASE_URL="postgres://bot:p%40ss@db.internal:5432/bot?sslmode=require"
REDIS_URL=redis://:hunter2@cache:6379/0
DB_PASSWORD='it"s $ecret'
WEBHOOK_SECRET="quote \" backslash \\ dollar \$HOME tab\tend"
GITHUB_TOKEN=ghp_16C7e42F292c6912E7710c838347Ae178B4a

# A PEM key, quoted over several lines
GOOGLE_PRIVATE_KEY="-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASC
BKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj
-----END PRIVATE KEY-----"
STRIPE_SECRET_KEY=sk_live_51H8xYzAbCdEf
SENTRY_DSN=https://abc123@o1.ingest.sentry.io/42
AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE
AWS_SECRET_ACCESS_KEY='wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY'
export HF_TOKEN="hf_AbCdEfGhIjKlMnOpQrStUvWxYz"
ELEVENLABS_API_KEY=el-9f8e7d6c5b4a   
MULTI_SINGLE='line one
line two'
OPENROUTER_API_KEY=sk-or-v1-0a1b2c3d4e5f
"#;

/// What each key of [`DOTENV`] means, written out by hand.
fn expected() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("OPENAI_API_KEY", "sk-proj-3fA9xQ2mZ7Lw0pRt"),
        ("ANTHROPIC_API_KEY", "sk-ant-api03-Yh8s_Jk2-QpL"),
        ("TELEGRAM_BOT_TOKEN", "7123456789:AAH3kdl-Xp9QqZ_w2sl"),
        ("DISCORD_TOKEN", "MTA5.GhX2.k1_zQ"),
        ("SLACK_BOT_TOKEN", "xoxb-1234-5678-AbCdEf"),
        ("SLACK_SIGNING_SECRET", "8f14e45fceea167a5a36dedd4bea2543"),
        ("DATABASE_URL", "postgres://bot:p%40ss@db.internal:5432/bot?sslmode=require"),
        ("REDIS_URL", "redis://:hunter2@cache:6379/0"),
        ("DB_PASSWORD", "it\"s $ecret"),
        ("WEBHOOK_SECRET", "quote \" backslash \\ dollar $HOME tab\tend"),
        ("GITHUB_TOKEN", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
        (
            "GOOGLE_PRIVATE_KEY",
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n-----END PRIVATE KEY-----",
        ),
        ("STRIPE_SECRET_KEY", "sk_live_51H8xYzAbCdEf"),
        ("SENTRY_DSN", "https://abc123@o1.ingest.sentry.io/42"),
        ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        ("HF_TOKEN", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz"),
        ("ELEVENLABS_API_KEY", "el-9f8e7d6c5b4a"),
        ("MULTI_SINGLE", "line one\nline two"),
        ("OPENROUTER_API_KEY", "sk-or-v1-0a1b2c3d4e5f"),
    ])
}

/// `vaultctl --env prod ARGS`.
fn ctl(d: &Daemon, args: &[&str]) -> vault_tests::Output {
    let full: Vec<&str> = ["--env", "prod"].iter().copied().chain(args.iter().copied()).collect();
    d.ctl(&full, b"")
}

/// The child's environment (`env -0`), as a map.
fn child_env(stdout: &[u8]) -> BTreeMap<String, String> {
    stdout
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let e = String::from_utf8(e.to_vec()).unwrap();
            let (k, v) = e.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Every value's bytes, to check none reaches an output.
fn no_value_in(out: &vault_tests::Output) {
    let printed = [out.stdout.as_slice(), out.stderr.as_bytes()].concat();
    for value in expected().values() {
        assert!(!contains(&printed, value.as_bytes()), "a value was printed: {}{}", out.text(), out.stderr);
    }
}

#[test]
fn a_dotenv_file_goes_in_runs_a_program_and_comes_back_out() {
    let d = Daemon::initialized();
    let want = expected();
    assert_eq!(want.len(), 20);
    let file = d.write_file("bot.env", DOTENV.as_bytes());
    let file = path_str(&file);

    // First import: 20 new secrets, reported by name only.
    let out = ctl(&d, &["import", file]).ok();
    no_value_in(&out);
    let text = out.text();
    assert!(
        text.ends_with(&format!("imported {file} into prod: 20 new, 0 updated, 0 unchanged, 0 skipped\n")),
        "{text}"
    );
    let listed = ctl(&d, &["--json", "list"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 20);

    // The program sees exactly these 20 variables, with these values.
    let out = ctl(&d, &["run", "--", "env", "-0"]).ok();
    let env = child_env(&out.stdout);
    for (name, value) in &want {
        assert_eq!(env.get(*name).map(String::as_str), Some(*value), "{name}");
    }
    let secret_vars: Vec<&String> = env.keys().filter(|k| want.contains_key(k.as_str())).collect();
    assert_eq!(secret_vars.len(), 20);
    assert!(!env.contains_key("VAULT_TOKEN"));

    // A second import stores nothing: no new version of any secret.
    let out = ctl(&d, &["import", file]).ok();
    no_value_in(&out);
    assert!(out.text().ends_with("0 new, 0 updated, 20 unchanged, 0 skipped\n"), "{}", out.text());
    let listed = ctl(&d, &["--json", "list"]).ok().json();
    assert!(listed.as_array().unwrap().iter().all(|s| s["current_version"] == 1), "{listed}");

    // One changed value: one new version, the rest unchanged.
    let changed = DOTENV.replace("el-9f8e7d6c5b4a", "el-rotated-0001");
    let changed_file = d.write_file("changed.env", changed.as_bytes());
    let out = ctl(&d, &["--json", "import", path_str(&changed_file)]).ok().json();
    let actions: Vec<(&str, &str)> = out["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["action"].as_str().unwrap()))
        .filter(|(_, a)| *a != "unchanged")
        .collect();
    assert_eq!(actions, [("ELEVENLABS_API_KEY", "updated")]);
    ctl(&d, &["import", file]).ok();

    // Export round-trips: the file is 0600, and importing it elsewhere gives the same values.
    let exported = d.dir.path().join("exported.env");
    let out = ctl(&d, &["export", "--output", path_str(&exported)]).ok();
    no_value_in(&out);
    let mode = std::fs::metadata(&exported).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let reveals = d.audit_query(&["--type", "secret.reveal"]);
    assert_eq!(reveals.len(), 20, "each exported value is audited as a reveal");
    // An existing file is never overwritten, and nothing is revealed for it.
    let out = ctl(&d, &["export", "--output", path_str(&exported)]);
    assert!(out.error(1).contains("cannot create"), "{}", out.stderr);
    assert_eq!(d.audit_query(&["--type", "secret.reveal"]).len(), 20);
    let out = d.ctl(&["--env", "copy", "import", path_str(&exported)], b"").ok();
    assert!(out.text().ends_with("20 new, 0 updated, 0 unchanged, 0 skipped\n"), "{}", out.text());
    for (name, value) in &want {
        assert_eq!(d.ctl(&["--env", "copy", "get", name], b"").ok().stdout, value.as_bytes(), "{name}");
    }

    // JSON export: an object of the same values.
    let json_path = d.dir.path().join("exported.json");
    ctl(&d, &["export", "--format", "json", "--output", path_str(&json_path)]).ok();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    for (name, value) in &want {
        assert_eq!(json[name], *value, "{name}");
    }
}

#[test]
fn import_refuses_what_it_should_and_dry_run_stores_nothing() {
    let d = Daemon::initialized();
    let file = d.write_file("bot.env", DOTENV.as_bytes());

    // World-readable: refused, with the reason.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = ctl(&d, &["import", path_str(&file)]);
    assert!(out.error(2).contains("readable by every user"), "{}", out.stderr);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();

    // --dry-run: says what it would do, stores nothing.
    let out = ctl(&d, &["import", "--dry-run", path_str(&file)]).ok();
    no_value_in(&out);
    assert!(out.text().contains("would add"), "{}", out.text());
    assert_eq!(d.status()["secrets"], 0);

    // A malformed file: the line, never its text; nothing stored.
    let bad = d.write_file("bad.env", b"A=1\nsk-proj-pasted-alone\n");
    let out = ctl(&d, &["import", path_str(&bad)]);
    let message = out.error(2);
    assert!(message.contains("line 2: expected NAME=VALUE") && !message.contains("sk-proj"), "{message}");
    assert_eq!(d.status()["secrets"], 0);

    // An empty value is skipped and said so.
    let empty = d.write_file("empty.env", b"DEBUG=\nTOKEN=abc\n");
    let out = ctl(&d, &["import", path_str(&empty)]).ok();
    assert!(out.text().ends_with("1 new, 0 updated, 0 unchanged, 1 skipped\n"), "{}", out.text());
}

#[test]
fn run_takes_what_is_granted_or_what_a_spec_declares() {
    let d = Daemon::initialized();
    let file = d.write_file("bot.env", b"OPENAI_API_KEY=sk-1\nTELEGRAM_BOT_TOKEN=tg-1\n");
    ctl(&d, &["import", path_str(&file)]).ok();
    d.ctl(&["--env", "prod", "put", "telegram-bot"], b"tg-2").ok();

    // --only picks; a name with '-' gets the documented variable name.
    let out = ctl(&d, &["run", "--only", "OPENAI*", "--only", "telegram*", "--", "env", "-0"]).ok();
    let env = child_env(&out.stdout);
    assert_eq!(env.get("OPENAI_API_KEY").map(String::as_str), Some("sk-1"));
    assert_eq!(env.get("TELEGRAM_BOT").map(String::as_str), Some("tg-2"));
    assert!(!env.contains_key("TELEGRAM_BOT_TOKEN"));

    // A spec: required and optional, a variable from a secret of another name.
    let spec = d.write_file(
        "vaultd.toml",
        br#"[secrets]
OPENAI_API_KEY = {}
TG = { secret = "telegram-bot", description = "the bot's token" }
SENTRY_DSN = { required = false }
"#,
    );
    let out = ctl(&d, &["run", "--spec", path_str(&spec), "--", "env", "-0"]).ok();
    let env = child_env(&out.stdout);
    assert_eq!(env.get("TG").map(String::as_str), Some("tg-2"));
    assert_eq!(env.get("OPENAI_API_KEY").map(String::as_str), Some("sk-1"));
    assert!(!env.contains_key("SENTRY_DSN") && !env.contains_key("TELEGRAM_BOT_TOKEN"));
    let out = ctl(&d, &["check", "--spec", path_str(&spec)]).ok();
    assert!(out.text().contains("SENTRY_DSN") && out.text().contains("missing or not granted"), "{}", out.text());

    // A required secret that is missing: the program never starts, the error names it.
    let marker = d.dir.path().join("started");
    let strict = d.write_file("strict.toml", b"[secrets]\nOPENAI_API_KEY = {}\nANTHROPIC_API_KEY = {}\n");
    let touch = format!("touch {}", path_str(&marker));
    let out = ctl(&d, &["run", "--spec", path_str(&strict), "--", "sh", "-c", &touch]);
    let message = out.error(3);
    assert!(message.contains("ANTHROPIC_API_KEY") && !message.contains("OPENAI_API_KEY"), "{message}");
    assert!(!marker.exists(), "the program started");
    let out = ctl(&d, &["check", "--spec", path_str(&strict)]);
    assert!(out.error(3).contains("missing or not granted in prod: ANTHROPIC_API_KEY"), "{}", out.stderr);

    // Two names for one variable: refused, naming both.
    d.ctl(&["--env", "prod", "put", "openai-api-key"], b"sk-2").ok();
    let out = ctl(&d, &["run", "--", "true"]);
    let message = out.error(2);
    assert!(message.contains("OPENAI_API_KEY") && message.contains("openai-api-key"), "{message}");
}

#[test]
fn an_agent_runs_with_what_it_was_granted_and_nothing_else() {
    if !is_root() {
        skip_unless_ci("needs root to run an agent as another uid");
        return;
    }
    const AGENT: u32 = 65534;
    let config = Some("agent_socket_mode = \"0666\"\n".to_owned());
    let d = Daemon::start_with(Options { config, ..Options::default() });
    d.init();
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_bin, vaultctl) = vaultctl_for_everyone();
    let file = d.write_file("bot.env", DOTENV.as_bytes());
    ctl(&d, &["import", path_str(&file)]).ok();
    let uid = AGENT.to_string();
    d.ctl(&["client", "add", "bot", "--uid", &uid, "--allow", "prod/OPENAI_*", "--allow", "prod/TELEGRAM_*"], b"").ok();

    let as_agent = |args: &[&str], token: Option<&str>| {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(&vaultctl);
        cmd.args(["--env", "prod"]).args(args).env("VAULT_SOCKET", &d.agent_socket).env_remove("VAULT_TOKEN");
        if let Some(token) = token {
            cmd.env("VAULT_TOKEN", token);
        }
        cmd.uid(AGENT).gid(AGENT).current_dir("/");
        run(cmd, b"")
    };
    let granted = |stdout: &[u8]| {
        let env = child_env(stdout);
        let mut names: Vec<String> = env.into_keys().filter(|k| expected().contains_key(k.as_str())).collect();
        names.sort();
        names
    };
    let out = as_agent(&["run", "--", "env", "-0"], None).ok();
    assert_eq!(granted(&out.stdout), ["OPENAI_API_KEY", "TELEGRAM_BOT_TOKEN"]);
    let out = as_agent(&["run", "--only", "TELEGRAM*", "--", "env", "-0"], None).ok();
    assert_eq!(granted(&out.stdout), ["TELEGRAM_BOT_TOKEN"]);

    // A secret it was not granted looks missing, as one that does not exist.
    let spec = d.write_file("vaultd.toml", b"[secrets]\nOPENAI_API_KEY = {}\nSTRIPE_SECRET_KEY = {}\nNOSUCH = {}\n");
    std::fs::set_permissions(&spec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = as_agent(&["check", "--spec", path_str(&spec)], None);
    let message = out.error(3);
    assert!(message.contains("missing or not granted in prod: NOSUCH, STRIPE_SECRET_KEY, required by"), "{message}");

    // A token names its own client's grants, and the child never sees the token.
    d.ctl(&["client", "add", "ci", "--uid", &uid, "--allow", "prod/HF_TOKEN"], b"").ok();
    let token = d.ctl(&["token", "create", "--client", "ci"], b"").ok().text().trim().to_owned();
    let out = as_agent(&["run", "--", "env", "-0"], Some(&token)).ok();
    assert_eq!(granted(&out.stdout), ["HF_TOKEN"]);
    assert!(!child_env(&out.stdout).contains_key("VAULT_TOKEN"));

    // No grant at all: a clear refusal, before anything runs.
    d.ctl(&["client", "disable", "bot"], b"").ok();
    d.ctl(&["client", "disable", "ci"], b"").ok();
    let out = as_agent(&["run", "--", "true"], None);
    assert!(out.error(3).contains("no secret in prod exists or is granted to you"), "{}", out.stderr);
    let listed = d.audit_query(&["--type", "secret.list"]);
    assert!(listed.len() >= 4, "every listing is audited: {listed:?}");
}

/// `run` is `exec` with the list made for it: the same files, rotation and
/// signal handling (one implementation, `exec::launch`).
#[test]
fn run_follows_rotations_like_exec() {
    let d = Daemon::initialized();
    let file = d.write_file("bot.env", b"SLACK_BOT_TOKEN=xoxb-1\n");
    ctl(&d, &["import", path_str(&file)]).ok();
    let log = d.dir.path().join("log");
    let dir = d.dir.path().join("run");
    let script = format!(
        r#"trap 'echo "usr1 $(cat "$SLACK_BOT_TOKEN_FILE")" >> {log}' USR1; echo "start $(cat "$SLACK_BOT_TOKEN_FILE")" >> {log}; while :; do sleep 0.05; done"#,
        log = path_str(&log)
    );
    let args =
        ["--env", "prod", "run", "--files", path_str(&dir), "--on-rotate", "signal:USR1", "--", "sh", "-c", &script];
    let mut cmd = d.ctl_command(&args);
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut run = vault_tests::ChildGuard(Some(vault_tests::spawn(&mut cmd)));
    let lines = || std::fs::read_to_string(&log).unwrap_or_default().lines().map(str::to_owned).collect::<Vec<_>>();
    vault_tests::wait_for("the start", || (lines() == ["start xoxb-1"]).then_some(()));
    d.ctl(&["--env", "prod", "rotate", "SLACK_BOT_TOKEN"], b"xoxb-2").ok();
    vault_tests::wait_for("the signal with the new file", || (lines().last()? == "usr1 xoxb-2").then_some(()));
    vault_tests::signal(run.0.as_ref().unwrap(), rustix::process::Signal::INT);
    let status = vault_tests::wait_until(
        run.0.as_mut().unwrap(),
        std::time::Instant::now() + std::time::Duration::from_secs(15),
    );
    assert_eq!(status.and_then(|s| s.code()), Some(130), "sh ended by the forwarded SIGINT");
    assert!(!dir.exists(), "--files removed its directory");
}
