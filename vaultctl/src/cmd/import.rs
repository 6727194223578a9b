//! `vaultctl import FILE.env [--dry-run]`: each `NAME=VALUE` of a `.env` file
//! becomes a secret of the environment (syntax in `dotenv`). What it did is
//! reported by name, never by value. Idempotent: a value equal to the secret's
//! current one (compared by vaultd's keyed digest, so the value is never read
//! back) makes no new version.

use std::collections::HashMap;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;
use vault_proto::v1::{HashValueRequest, ListSecretsRequest, PutSecretRequest, SecretRef};
use zeroize::Zeroizing;

use crate::Global;
use crate::cmd::checked_env;
use crate::daemon::{self, Reply as _};
use crate::exit::usage;
use crate::secret::Secret;
use crate::{dotenv, output};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The .env file ('-' for stdin). Refused if every user may read it.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Say what would be stored; store nothing.
    #[arg(long)]
    dry_run: bool,
}

/// What became of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    /// A new secret, version 1.
    New,
    /// A new version of an existing secret.
    Updated,
    /// The value is the current one: nothing stored.
    Unchanged,
    /// An empty value (`DEBUG=`): vaultd stores no empty value.
    SkippedEmpty,
}

/// `{"name","action","version","line"}`; `version` is the stored (or current) one, 0 for none.
#[derive(Serialize)]
struct Done {
    name: String,
    action: Action,
    version: u64,
    line: usize,
}

/// The largest `.env` file read: far more than a deployment's keys.
const MAX_FILE: u64 = 4 << 20;

pub(crate) async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let env = checked_env(global)?.to_owned();
    let text = read_private(&args.file)?;
    let shown = args.file.display();
    let entries = dotenv::parse(&text).map_err(|e| usage(format!("{shown}: {e}")))?;
    drop(text);
    if let Some(big) = entries.iter().find(|e| e.value.len() > vault_proto::MAX_VALUE_LEN) {
        return Err(usage(format!(
            "{shown}: line {}: the value of {} is {} bytes; the limit is {} bytes",
            big.line,
            big.name,
            big.value.len(),
            vault_proto::MAX_VALUE_LEN
        )));
    }

    let mut admin = daemon::admin(global).await?;
    let listed = admin.list_secrets(ListSecretsRequest { env: env.clone() }).await.reply()?.secrets;
    let current: HashMap<String, u64> = listed.into_iter().map(|m| (m.name, m.current_version)).collect();
    let mut done = Vec::with_capacity(entries.len());
    for entry in entries {
        let secret = SecretRef { env: env.clone(), name: entry.name.clone() };
        let (action, version) = match current.get(&entry.name) {
            _ if entry.value.is_empty() => (Action::SkippedEmpty, 0),
            None => (Action::New, 0),
            Some(&version) => {
                let request = HashValueRequest { value: copy(&entry.value), current_of: Some(secret.clone()) };
                let digests = admin.hash_value(request).await.reply()?;
                if digests.digest == digests.current_digest {
                    (Action::Unchanged, version)
                } else {
                    (Action::Updated, version)
                }
            }
        };
        let version = if args.dry_run || !matches!(action, Action::New | Action::Updated) {
            version
        } else {
            let put = PutSecretRequest { secret: Some(secret), value: copy(&entry.value), ..Default::default() };
            admin.put_secret(put).await.reply()?.version
        };
        done.push(Done { name: entry.name, action, version, line: entry.line });
    }
    report(global, &env, &args, &done)
}

/// The value for a request: a copy, moved into the message (see `Secret::into_request_bytes`).
fn copy(value: &Secret) -> Vec<u8> {
    Secret::new(value.expose().to_vec()).into_request_bytes()
}

fn report(global: &Global, env: &str, args: &Args, done: &[Done]) -> anyhow::Result<()> {
    if global.json {
        return output::json(&serde_json::json!({ "env": env, "dry_run": args.dry_run, "secrets": done }));
    }
    let word = |a: Action| match (a, args.dry_run) {
        (Action::New, false) => "new",
        (Action::New, true) => "would add",
        (Action::Updated, false) => "updated",
        (Action::Updated, true) => "would update",
        (Action::Unchanged, _) => "unchanged",
        (Action::SkippedEmpty, _) => "skipped (empty)",
    };
    let rows: Vec<Vec<String>> = done
        .iter()
        .map(|d| {
            let version = if d.version == 0 { "-".to_owned() } else { d.version.to_string() };
            vec![word(d.action).to_owned(), d.name.clone(), version, d.line.to_string()]
        })
        .collect();
    output::table(&["ACTION", "NAME", "VERSION", "LINE"], &rows)?;
    let count = |a| done.iter().filter(|d| d.action == a).count();
    let verb = if args.dry_run { "would import" } else { "imported" };
    output::lines(&[format!(
        "{verb} {} into {env}: {} new, {} updated, {} unchanged, {} skipped",
        args.file.display(),
        count(Action::New),
        count(Action::Updated),
        count(Action::Unchanged),
        count(Action::SkippedEmpty),
    )])
}

/// The file's bytes, refusing one every user may read: its secrets may already be
/// out, and importing it would suggest otherwise.
fn read_private(path: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut bytes = Zeroizing::new(Vec::new());
    let cannot = || format!("cannot read {}", path.display());
    if path == Path::new("-") {
        std::io::stdin().lock().take(MAX_FILE + 1).read_to_end(&mut bytes).context("cannot read stdin")?;
    } else {
        let file = std::fs::File::open(path).with_context(cannot)?;
        let mode = file.metadata().with_context(cannot)?.permissions().mode();
        if mode & 0o004 != 0 {
            return Err(usage(format!(
                "{0} is readable by every user (mode {1:04o}), so its secrets may already have been read: \
                 `chmod 600 {0}`, import again, and consider rotating them",
                path.display(),
                mode & 0o7777
            )));
        }
        (&file).take(MAX_FILE + 1).read_to_end(&mut bytes).with_context(cannot)?;
    }
    if bytes.len() as u64 > MAX_FILE {
        return Err(usage(format!("{} is over {} MiB: not a .env file", path.display(), MAX_FILE >> 20)));
    }
    Ok(bytes)
}
