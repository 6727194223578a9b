//! `vaultctl seal`: make vaultd forget every key until the next unlock.

use vault_proto::v1::SealRequest;

use crate::Global;
use crate::cmd::status;
use crate::daemon::{self, Reply as _};

pub(crate) async fn run(global: &Global) -> anyhow::Result<()> {
    let mut admin = daemon::admin(global).await?;
    let reply = admin.seal(SealRequest {}).await.reply()?;
    let status = daemon::required(reply.status, "status")?;
    if global.json {
        return status::print_json(&status);
    }
    crate::output::lines(&["vault sealed"])
}
