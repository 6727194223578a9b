//! `vaultctl get NAME`: read a secret the way an agent does, over the agent
//! socket, so it also shows what the calling identity has been granted.

use serde::Serialize;
use vault_proto::names;
use vault_proto::v1::GetSecretRequest;

use crate::Global;
use crate::cmd::secret_ref;
use crate::daemon::{self, Reply as _, RpcError};
use crate::output::{self, ShownValue};
use crate::secret::Secret;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The secret's name.
    name: String,
    /// Read this version: the current one, or the previous one during its grace period.
    #[arg(long, value_name = "N")]
    version: Option<u64>,
}

/// `{"env","name","version","value"}`, with `value_base64` in place of `value`
/// when the value is not UTF-8.
#[derive(Serialize)]
pub(crate) struct GetJson<'a> {
    pub(crate) env: &'a str,
    pub(crate) name: &'a str,
    pub(crate) version: u64,
    #[serde(flatten)]
    pub(crate) value: ShownValue<'a>,
}

pub(crate) async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let secret = secret_ref(global, &args.name)?;
    let mut agent = daemon::agent(global).await?;
    let request = GetSecretRequest { env: secret.env, name: secret.name, version: args.version.unwrap_or(0) };
    let request = daemon::with_token(tonic::Request::new(request))?;
    let reply = agent.get_secret(request).await.reply();
    // A static hint, the same whether the secret exists or not: an agent must
    // not learn which (see `vault.v1.Agent`).
    let mut reply = match (reply, args.version) {
        (Err(e), Some(version)) if e.downcast_ref::<RpcError>().is_some_and(|r| r.code() == tonic::Code::NotFound) => {
            let hint = format!(
                "{e} (version {version}: an agent reads only the current version, and the previous one during \
                 its grace period; `vaultctl versions NAME` lists each version's state)"
            );
            return Err(RpcError::from(tonic::Status::not_found(hint)).into());
        }
        (reply, _) => reply?,
    };
    let value = Secret::new(std::mem::take(&mut reply.value));

    if !global.json {
        // The exact bytes and nothing else, so `get x > file` round-trips.
        return output::raw(value.expose());
    }
    output::json(&GetJson {
        env: names::env_or_default(&reply.env),
        name: &reply.name,
        version: reply.version,
        value: ShownValue::new(value.expose()),
    })
}
