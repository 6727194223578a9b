//! `vaultctl rekey`: change the passphrase and/or the Argon2 parameters. Only the
//! root key is re-wrapped, so it takes the same time whatever the vault holds;
//! the old passphrase stops working at once.

use std::path::PathBuf;

use serde::Serialize;
use vault_proto::v1::{KdfParams, RekeyRequest, StatusRequest};

use crate::Global;
use crate::daemon::{self, Reply as _};
use crate::exit::usage;
use crate::input::{self, Passphrase};
use crate::output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Read the current passphrase from FILE ('-' for stdin); one trailing
    /// newline is ignored. Without it, $VAULT_PASSPHRASE if set, else a prompt.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Read the new passphrase from FILE ('-' for stdin). Without it (and without
    /// --keep-passphrase) it is prompted for twice.
    #[arg(long, value_name = "FILE", conflicts_with = "keep_passphrase")]
    new_passphrase_file: Option<PathBuf>,
    /// Keep the passphrase; change only the Argon2 parameters.
    #[arg(long)]
    keep_passphrase: bool,
    /// Accept a new passphrase shorter than 12 characters (with a warning).
    #[arg(long)]
    weak_passphrase: bool,
    /// Argon2id memory in MiB (19 to 2048) [default: unchanged].
    #[arg(long, value_name = "MIB")]
    kdf_memory_mib: Option<u32>,
    /// Argon2id passes (2 to 64) [default: unchanged].
    #[arg(long, value_name = "T")]
    kdf_iterations: Option<u32>,
    /// Argon2id lanes (1 to 16) [default: unchanged].
    #[arg(long, value_name = "P")]
    kdf_parallelism: Option<u32>,
}

impl Args {
    fn changes_kdf(&self) -> bool {
        self.kdf_memory_mib.is_some() || self.kdf_iterations.is_some() || self.kdf_parallelism.is_some()
    }
}

/// `{"passphrase_changed","kdf":{"memory_kib","iterations","parallelism"}}`.
#[derive(Serialize)]
struct RekeyJson {
    passphrase_changed: bool,
    kdf: KdfJson,
}

#[derive(Serialize)]
struct KdfJson {
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
}

pub(crate) async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    if args.keep_passphrase && !args.changes_kdf() {
        return Err(usage("nothing to change: --keep-passphrase needs a --kdf-* option"));
    }
    let stdin = |f: &Option<PathBuf>| f.as_deref() == Some(std::path::Path::new("-"));
    if stdin(&args.passphrase_file) && stdin(&args.new_passphrase_file) {
        return Err(usage("only one of --passphrase-file and --new-passphrase-file can be '-' (stdin)"));
    }
    let memory_kib = match args.kdf_memory_mib {
        Some(mib) => Some(mib.checked_mul(1024).ok_or_else(|| usage("--kdf-memory-mib is too large"))?),
        None => None,
    };
    let old = input::passphrase(args.passphrase_file.as_deref(), Passphrase::Existing)?;
    let new =
        if args.keep_passphrase { None } else { Some(input::new_passphrase(args.new_passphrase_file.as_deref())?) };
    if let Some(new) = &new {
        input::check_strength(new, args.weak_passphrase)?;
    }

    let mut admin = daemon::admin(global).await?;
    let kdf = if args.changes_kdf() {
        let status = admin.status(StatusRequest {}).await.reply()?;
        let current = status.kdf.unwrap_or_default();
        Some(KdfParams {
            memory_kib: memory_kib.unwrap_or(current.memory_kib),
            iterations: args.kdf_iterations.unwrap_or(current.iterations),
            parallelism: args.kdf_parallelism.unwrap_or(current.parallelism),
            ..KdfParams::default()
        })
    } else {
        None
    };
    let passphrase_changed = new.is_some();
    let request = RekeyRequest {
        passphrase: old.into_request_bytes(),
        new_passphrase: new.map(|n| n.into_request_bytes()).unwrap_or_default(),
        kdf,
    };
    let reply = admin.rekey(request).await.reply()?;
    let k = daemon::required(reply.kdf, "kdf")?;
    if global.json {
        let kdf = KdfJson { memory_kib: k.memory_kib, iterations: k.iterations, parallelism: k.parallelism };
        return output::json(&RekeyJson { passphrase_changed, kdf });
    }
    let what = if passphrase_changed { "passphrase changed" } else { "passphrase kept" };
    output::lines(&[format!(
        "rekeyed: {what}; kdf {} m={} KiB t={} p={}",
        k.algorithm, k.memory_kib, k.iterations, k.parallelism
    )])
}
