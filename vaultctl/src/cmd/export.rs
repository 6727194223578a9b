//! `vaultctl export --output FILE [--format dotenv|json]`: every secret of the
//! environment, with its current value, into a new file created 0600 (never to a
//! shell redirect, which would create it with the umask's mode). Owner only (the
//! admin socket); each value read is audited as a reveal.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use vault_proto::v1::{ListSecretsRequest, SecretRef, ShowSecretRequest};
use zeroize::Zeroizing;

use crate::Global;
use crate::cmd::checked_env;
use crate::daemon::{self, Reply as _};
use crate::exit::usage;
use crate::secret::Secret;
use crate::{dotenv, output};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The file to create (mode 0600; an existing file is never overwritten), or
    /// '-' for stdout.
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
    /// `dotenv` (what `vaultctl import` reads) or `json` (an object NAME → value,
    /// or NAME → {"value_base64": …} for a value that is not text).
    #[arg(long, value_enum, default_value = "dotenv")]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Dotenv,
    Json,
}

pub(crate) async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let env = checked_env(global)?.to_owned();
    // Created first: a path that is taken reveals nothing.
    let mut out = Output::create(&args.output)?;
    let mut admin = daemon::admin(global).await?;
    let listed = admin.list_secrets(ListSecretsRequest { env: env.clone() }).await.reply()?.secrets;
    let mut values = Vec::with_capacity(listed.len());
    for meta in listed {
        let secret = Some(SecretRef { env: env.clone(), name: meta.name.clone() });
        let mut reply = admin.show_secret(ShowSecretRequest { secret, reveal: true, version: 0 }).await.reply()?;
        values.push((meta.name, Secret::new(std::mem::take(&mut reply.value))));
    }
    let text = match args.format {
        Format::Dotenv => dotenv_text(&env, &values)?,
        Format::Json => json_text(&values)?,
    };
    out.write(&text)?;
    if args.output == Path::new("-") {
        return Ok(());
    }
    if global.json {
        return output::json(&serde_json::json!({ "env": env, "exported": values.len(), "output": args.output }));
    }
    output::lines(&[format!("exported {} secrets of {env} to {} (mode 0600)", values.len(), args.output.display())])
}

fn dotenv_text(env: &str, values: &[(String, Secret)]) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut text =
        Zeroizing::new(format!("# vaultd: the {} secrets of {env}. Keep this file private.\n", values.len()));
    for (name, value) in values {
        let line = dotenv::line(name, value.expose())
            .ok_or_else(|| usage(format!("{name} is not text, which a .env file cannot hold: use --format json")))?;
        text.push_str(&line);
    }
    Ok(Zeroizing::new(std::mem::take(&mut *text).into_bytes()))
}

fn json_text(values: &[(String, Secret)]) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(b"{".to_vec());
    for (i, (name, value)) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, name)?;
        out.push(b':');
        match output::ShownValue::new(value.expose()) {
            output::ShownValue::Utf8(text) => serde_json::to_writer(&mut *out, text)?,
            shown @ output::ShownValue::Base64(_) => serde_json::to_writer(&mut *out, &shown)?,
        }
    }
    out.extend_from_slice(b"}\n");
    Ok(out)
}

/// Where the export goes: stdout, or a new file (0600) removed again unless the
/// export completes.
enum Output {
    Stdout,
    File { path: PathBuf, file: std::fs::File, done: bool },
}

impl Output {
    fn create(path: &Path) -> anyhow::Result<Output> {
        if path == Path::new("-") {
            return Ok(Output::Stdout);
        }
        Ok(Output::File { path: path.to_owned(), file: output::create_private(path)?, done: false })
    }

    fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            Output::Stdout => output::raw(bytes),
            Output::File { path, file, done } => {
                file.write_all(bytes)
                    .and_then(|()| file.sync_all())
                    .with_context(|| format!("cannot write {}", path.display()))?;
                *done = true;
                Ok(())
            }
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Output::File { path, done: false, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}
