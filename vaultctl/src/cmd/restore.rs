//! `vaultctl restore FILE --data-dir DIR`: put a backup into a new data
//! directory, offline (vaultd need not run). The backup is checked all through
//! first, with the vault's passphrase (its HMAC above all: a backup edited to
//! add a client is refused before anything is written). Run it as the user
//! vaultd runs as, so the files it creates (DIR 0700, the database 0600) are
//! that user's.

use std::path::PathBuf;

use serde::Serialize;

use crate::Global;
use crate::input::{self, Passphrase};
use crate::output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The backup file.
    file: PathBuf,
    /// The data directory to create; it must not exist or be empty (never overwritten).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Read the vault passphrase from FILE ('-' for stdin) instead of
    /// VAULT_PASSPHRASE or a prompt.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

/// `{"data_dir","bytes","secrets","versions","key_terms"}`.
#[derive(Serialize)]
struct RestoreJson<'a> {
    data_dir: &'a str,
    bytes: u64,
    secrets: u64,
    versions: u64,
    key_terms: u64,
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let passphrase = input::passphrase(args.passphrase_file.as_deref(), Passphrase::Existing)?;
    let passphrase = vaultd::crypto::SecretBytes::new(passphrase.into_request_bytes());
    let r = vaultd::backup::restore(&args.file, &args.data_dir, &passphrase)?;
    let dir = args.data_dir.display().to_string();
    if global.json {
        return output::json(&RestoreJson {
            data_dir: &dir,
            bytes: r.bytes,
            secrets: r.secrets,
            versions: r.versions,
            key_terms: r.key_terms,
        });
    }
    output::lines(&[
        format!("restored {} secrets ({} versions) into {dir}", r.secrets, r.versions),
        format!("start vaultd with --data-dir {dir} and unlock it with the passphrase the backup was taken under"),
    ])
}
