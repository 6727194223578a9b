//! `vaultctl unlock`: unseal the vault with its passphrase.

use std::path::PathBuf;

use vault_proto::v1::UnlockRequest;

use crate::Global;
use crate::cmd::status;
use crate::daemon::{self, Reply as _};
use crate::input::{self, Passphrase};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Read the passphrase from FILE ('-' for stdin); one trailing newline is
    /// ignored. Without it, $VAULT_PASSPHRASE is used if set, else the
    /// passphrase is prompted for.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

pub(crate) async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    // Dialed first: nobody should type a passphrase to learn that vaultd is not there.
    let mut admin = daemon::admin(global).await?;
    let passphrase = input::passphrase(args.passphrase_file.as_deref(), Passphrase::Existing)?;
    let request = UnlockRequest { passphrase: passphrase.into_request_bytes() };
    let reply = admin.unlock(request).await.reply()?;
    let status = daemon::required(reply.status, "status")?;
    if global.json {
        return status::print_json(&status);
    }
    crate::output::lines(&["vault unlocked"])
}
