//! `vaultctl rm NAME`: delete a secret and destroy every version of it.

use serde::Serialize;
use vault_proto::v1::DeleteSecretRequest;

use crate::Global;
use crate::cmd::secret_ref;
use crate::daemon::{self, Reply as _};
use crate::output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The secret's name.
    name: String,
}

/// `{"env","name","versions_destroyed"}`.
#[derive(Serialize)]
struct RmJson<'a> {
    env: &'a str,
    name: &'a str,
    versions_destroyed: u64,
}

pub(crate) async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let secret = secret_ref(global, &args.name)?;
    let mut admin = daemon::admin(global).await?;
    let request = DeleteSecretRequest { secret: Some(secret.clone()) };
    let reply = admin.delete_secret(request).await.reply()?;
    let destroyed = reply.versions_destroyed;

    if global.json {
        return output::json(&RmJson { env: &secret.env, name: &secret.name, versions_destroyed: destroyed });
    }
    let noun = if destroyed == 1 { "version" } else { "versions" };
    output::lines(&[format!("removed {}/{} ({destroyed} {noun} destroyed)", secret.env, secret.name)])
}
