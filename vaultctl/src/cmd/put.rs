//! `vaultctl put NAME`: store a new version of a secret.

use std::path::PathBuf;

use vault_proto::names;
use vault_proto::v1::PutSecretRequest;

use crate::Global;
use crate::cmd::rotate::{NewVersionJson, PolicyArgs};
use crate::cmd::secret_ref;
use crate::daemon::{self, Reply as _};
use crate::{input, output};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The secret's name: letters in one case, digits, '_', '.', '-', starting with a letter or digit.
    name: String,
    /// A label for the provider the secret belongs to ("telegram", "anthropic", …).
    #[arg(long, value_name = "P")]
    provider: Option<String>,
    /// A free-text description.
    #[arg(long, value_name = "D")]
    description: Option<String>,
    /// Read the value from FILE ('-' for stdin), byte for byte. Without it the
    /// value is read from stdin when that is not a terminal, else prompted for
    /// without echo.
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
    #[command(flatten)]
    policy: PolicyArgs,
}

pub(crate) async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let secret = secret_ref(global, &args.name)?;
    let prompt = format!("Value for {}/{}: ", secret.env, secret.name);
    let value = input::value(args.from_file.as_deref(), &prompt)?;

    let mut admin = daemon::admin(global).await?;
    let request = PutSecretRequest {
        secret: Some(secret),
        value: value.into_request_bytes(),
        provider: args.provider.unwrap_or_default(),
        description: args.description.unwrap_or_default(),
        rotation: args.policy.change(),
    };
    let reply = admin.put_secret(request).await.reply()?;
    let meta = daemon::required(reply.secret, "secret")?;
    let env = names::env_or_default(&meta.env);
    let shown = NewVersionJson {
        env,
        name: &meta.name,
        version: reply.version,
        previous_version: reply.previous_version,
        grace_until_unix: reply.grace_until_unix,
    };
    if global.json {
        return output::json(&shown);
    }
    output::lines(&[shown.line("stored")])
}
