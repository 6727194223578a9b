//! `vaultctl watch NAME...`: follow secrets as an agent does, printing each
//! update as a JSON line (`{"env","name","version","value"}`, or `value_base64`
//! when the value is not UTF-8): first every current value, then each new one.

use vault_proto::names;
use vault_proto::v1::GetSecretsRequest;

use crate::Global;
use crate::cmd::get::GetJson;
use crate::cmd::{checked_env, secret_ref};
use crate::daemon::{self, RpcError};
use crate::output::{self, ShownValue};
use crate::secret::Secret;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The secrets to watch (at most 256).
    #[arg(required = true)]
    names: Vec<String>,
}

pub(crate) async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    for name in &args.names {
        secret_ref(global, name)?;
    }
    let env = checked_env(global)?.to_owned();
    let mut agent = daemon::agent(global).await?;
    let request = daemon::with_token(tonic::Request::new(GetSecretsRequest { env, names: args.names }))?;
    let mut stream = agent.watch_secrets(request).await.map_err(RpcError::from)?.into_inner();
    // Ends when vaultd ends the stream: an error (access ended, sealed) exits non-zero.
    while let Some(update) = stream.message().await.map_err(RpcError::from)? {
        for mut secret in update.secrets {
            let value = Secret::new(std::mem::take(&mut secret.value));
            output::json(&GetJson {
                env: names::env_or_default(&secret.env),
                name: &secret.name,
                version: secret.version,
                value: ShownValue::new(value.expose()),
            })?;
        }
    }
    Ok(())
}
