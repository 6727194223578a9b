//! `vaultctl list`: the secrets of one environment.

use vault_proto::v1::ListSecretsRequest;

use crate::Global;
use crate::cmd::checked_env;
use crate::cmd::show::MetaJson;
use crate::daemon::{self, Reply as _};
use crate::output::{self, or_dash, timestamp};

pub(crate) async fn run(global: &Global) -> anyhow::Result<()> {
    let env = checked_env(global)?;
    let mut admin = daemon::admin(global).await?;
    let reply = admin.list_secrets(ListSecretsRequest { env: env.to_owned() }).await.reply()?;

    if global.json {
        // An array of the objects `show --json` prints, never with a value.
        let all: Vec<MetaJson<'_>> = reply.secrets.iter().map(MetaJson::from).collect();
        return output::json(&all);
    }
    let rows: Vec<Vec<String>> = reply
        .secrets
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.current_version.to_string(),
                or_dash(&m.provider).to_owned(),
                timestamp(m.updated_unix),
            ]
        })
        .collect();
    output::table(&["NAME", "VERSION", "PROVIDER", "UPDATED"], &rows)
}
