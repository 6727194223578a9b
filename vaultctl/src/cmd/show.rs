//! `vaultctl show NAME [--reveal]`: a secret's metadata, and on request its value.
//! Also home of the secret-metadata JSON that `list` prints.

use serde::Serialize;
use vault_proto::names;
use vault_proto::v1::{SecretMeta, ShowSecretRequest};

use crate::Global;
use crate::cmd::secret_ref;
use crate::daemon::{self, Reply as _};
use crate::output::{self, ShownValue, or_dash, timestamp};
use crate::secret::Secret;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The secret's name.
    name: String,
    /// Also print the current value.
    #[arg(long)]
    reveal: bool,
}

/// `{"env","name","provider","description","current_version","created_unix","updated_unix"}`.
#[derive(Serialize)]
pub(crate) struct MetaJson<'a> {
    env: &'a str,
    name: &'a str,
    provider: &'a str,
    description: &'a str,
    current_version: u64,
    created_unix: i64,
    updated_unix: i64,
}

impl<'a> From<&'a SecretMeta> for MetaJson<'a> {
    fn from(m: &'a SecretMeta) -> Self {
        MetaJson {
            env: names::env_or_default(&m.env),
            name: &m.name,
            provider: &m.provider,
            description: &m.description,
            current_version: m.current_version,
            created_unix: m.created_unix,
            updated_unix: m.updated_unix,
        }
    }
}

/// [`MetaJson`], plus `value` or `value_base64` with --reveal.
#[derive(Serialize)]
struct ShowJson<'a> {
    #[serde(flatten)]
    meta: MetaJson<'a>,
    #[serde(flatten)]
    value: Option<&'a ShownValue<'a>>,
}

pub(crate) async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let secret = secret_ref(global, &args.name)?;
    let mut admin = daemon::admin(global).await?;
    let request = ShowSecretRequest { secret: Some(secret), reveal: args.reveal };
    let mut reply = admin.show_secret(request).await.reply()?;
    let value = Secret::new(std::mem::take(&mut reply.value));
    let meta = daemon::required(reply.secret, "secret")?;
    // vaultd sends a value only when asked; never show one that was not asked for.
    let shown = args.reveal.then(|| ShownValue::new(value.expose()));

    if global.json {
        return output::json(&ShowJson { meta: MetaJson::from(&meta), value: shown.as_ref() });
    }
    output::lines(&[
        format!("env: {}", names::env_or_default(&meta.env)),
        format!("name: {}", meta.name),
        format!("provider: {}", or_dash(&meta.provider)),
        format!("description: {}", or_dash(&meta.description)),
        format!("current version: {}", meta.current_version),
        format!("created: {}", timestamp(meta.created_unix)),
        format!("updated: {}", timestamp(meta.updated_unix)),
    ])?;
    match shown {
        Some(shown) => output::lines(&[shown.line().as_str()]),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON field names are a contract with scripts (DESIGN §9).
    #[test]
    fn json_fields_are_stable() {
        let meta = SecretMeta {
            env: String::new(),
            name: "telegram".into(),
            provider: "telegram".into(),
            description: "bot".into(),
            current_version: 2,
            created_unix: 1,
            updated_unix: 3,
        };
        let plain = ShowJson { meta: MetaJson::from(&meta), value: None };
        assert_eq!(
            serde_json::to_string(&plain).ok().as_deref(),
            Some(concat!(
                r#"{"env":"default","name":"telegram","provider":"telegram","description":"bot","#,
                r#""current_version":2,"created_unix":1,"updated_unix":3}"#
            ))
        );
        let shown = ShownValue::new(b"\xff");
        let revealed = ShowJson { meta: MetaJson::from(&meta), value: Some(&shown) };
        let json = serde_json::to_string(&revealed).unwrap_or_default();
        assert!(json.ends_with(r#""updated_unix":3,"value_base64":"/w=="}"#), "{json}");
    }
}
