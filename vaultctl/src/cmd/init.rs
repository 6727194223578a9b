//! `vaultctl init`: create the vault and set its passphrase.

use std::path::PathBuf;

use vault_proto::v1::InitRequest;

use crate::Global;
use crate::cmd::status;
use crate::daemon::{self, Reply as _};
use crate::input::{self, Passphrase};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Read the passphrase from FILE ('-' for stdin); one trailing newline is
    /// ignored. Without it, $VAULT_PASSPHRASE is used if set, else the
    /// passphrase is prompted for twice.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Accept a passphrase shorter than 12 characters (with a warning).
    #[arg(long)]
    weak_passphrase: bool,
}

pub(crate) async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    // Dialed first: nobody should type a passphrase twice to learn that vaultd is
    // not there (say, after stale `--dev` exports).
    let mut admin = daemon::admin(global).await?;
    let passphrase = input::passphrase(args.passphrase_file.as_deref(), Passphrase::New)?;
    input::check_strength(&passphrase, args.weak_passphrase)?;
    let request = InitRequest { passphrase: passphrase.into_request_bytes() };
    let reply = admin.init(request).await.reply()?;
    let status = daemon::required(reply.status, "status")?;
    if global.json {
        return status::print_json(&status);
    }
    let line = if status.sealed {
        "vault initialized; it is sealed (run `vaultctl unlock`)"
    } else {
        "vault initialized and unlocked"
    };
    crate::output::lines(&[line])
}
