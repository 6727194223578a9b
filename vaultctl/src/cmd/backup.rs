//! `vaultctl backup FILE`: an online, consistent snapshot taken by vaultd while it
//! serves, written here; `vaultctl backup verify FILE`: check one offline.
//!
//! vaultd produces the bytes and vaultctl writes the file, so the file belongs to
//! whoever ran vaultctl, lands where their path says (not in vaultd's mount
//! namespace, which systemd's PrivateTmp/ProtectSystem may change), and vaultd
//! never writes outside its data directory. It is created 0600 and refused if it
//! exists. It holds only ciphertext; the passphrase opens it.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;
use vault_proto::v1::BackupRequest;

use crate::Global;
use crate::daemon::{self, Reply as _};
use crate::input::{self, Passphrase};
use crate::output;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The backup file to create (0600; refused if it exists).
    #[arg(value_name = "FILE", required = true)]
    file: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Check a backup without restoring it: decrypt every record with the
    /// passphrase, check its authentication and the audit chain. Offline.
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// The backup file.
    file: PathBuf,
    /// Read the vault's passphrase (at the time of the backup) from FILE ('-'
    /// for stdin). Without it, $VAULT_PASSPHRASE if set, else a prompt.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

/// `{"file","bytes"}`.
#[derive(Serialize)]
struct BackupJson<'a> {
    file: &'a str,
    bytes: u64,
}

/// `{"intact","bytes","secrets","versions","key_terms","audit_entries"}`.
#[derive(Serialize)]
struct VerifyJson {
    intact: bool,
    bytes: u64,
    secrets: u64,
    versions: u64,
    key_terms: u64,
    audit_entries: u64,
}

pub(crate) async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    match (args.command, args.file) {
        (Some(Command::Verify(v)), _) => verify(global, v),
        (None, Some(file)) => backup(global, &file).await,
        (None, None) => Err(crate::exit::usage("give a FILE to write the backup to")),
    }
}

async fn backup(global: &Global, path: &Path) -> anyhow::Result<()> {
    // Created first, so an existing file is refused before vaultd does any work.
    let file = output::create_private(path)?;
    match write_backup(global, file).await {
        Ok(bytes) => {
            if global.json {
                return output::json(&BackupJson { file: &path.display().to_string(), bytes });
            }
            output::lines(&[format!("backup written to {} ({bytes} bytes)", path.display())])
        }
        Err(e) => {
            // Never leave a partial backup that looks like a real one.
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

async fn write_backup(global: &Global, mut file: File) -> anyhow::Result<u64> {
    let mut admin = daemon::admin(global).await?;
    let mut stream = admin.backup(BackupRequest {}).await.reply()?;
    let (mut written, mut total) = (0u64, None);
    while let Some(chunk) = stream.message().await.map_err(daemon::RpcError::from)? {
        total = Some(chunk.total);
        file.write_all(&chunk.data).context("cannot write the backup")?;
        written += chunk.data.len() as u64;
    }
    anyhow::ensure!(total == Some(written), "the backup stream ended early ({written} bytes)");
    file.sync_all().context("cannot write the backup")?;
    Ok(written)
}

fn verify(global: &Global, args: VerifyArgs) -> anyhow::Result<()> {
    let passphrase = input::passphrase(args.passphrase_file.as_deref(), Passphrase::Existing)?;
    let passphrase = vaultd::crypto::SecretBytes::new(passphrase.into_request_bytes());
    let r = vaultd::backup::verify(&args.file, &passphrase)?;
    if global.json {
        return output::json(&VerifyJson {
            intact: true,
            bytes: r.bytes,
            secrets: r.secrets,
            versions: r.versions,
            key_terms: r.key_terms,
            audit_entries: r.audit_entries,
        });
    }
    output::lines(&[format!(
        "backup intact: {} secrets, {} versions decrypted, {} key terms, audit chain of {} entries verified",
        r.secrets, r.versions, r.key_terms, r.audit_entries
    )])
}
