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
    /// Also print the current value (recorded in the audit log).
    #[arg(long)]
    reveal: bool,
    /// With --reveal: print this version's value instead (any version still stored).
    #[arg(long, value_name = "N", requires = "reveal")]
    version: Option<u64>,
}

/// `{"env","name","provider","description","current_version","created_unix","updated_unix",
/// "rotator","rotate_every_secs","grace_secs","next_rotation_unix"}` and, after a
/// first rotation, `last_rotation`. A 0 period or due time means no schedule.
#[derive(Serialize)]
pub(crate) struct MetaJson<'a> {
    env: &'a str,
    name: &'a str,
    provider: &'a str,
    description: &'a str,
    current_version: u64,
    created_unix: i64,
    updated_unix: i64,
    rotator: &'a str,
    rotate_every_secs: u64,
    grace_secs: u64,
    next_rotation_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_rotation: Option<RotationJson<'a>>,
}

/// `{"step","trigger","from_version","new_version","error","started_unix","updated_unix"}`.
#[derive(Serialize)]
pub(crate) struct RotationJson<'a> {
    step: &'a str,
    trigger: &'a str,
    from_version: u64,
    new_version: u64,
    error: &'a str,
    started_unix: i64,
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
            rotator: &m.rotator,
            rotate_every_secs: m.rotate_every_secs,
            grace_secs: m.grace_secs,
            next_rotation_unix: m.next_rotation_unix,
            last_rotation: m.last_rotation.as_ref().map(|r| RotationJson {
                step: &r.step,
                trigger: &r.trigger,
                from_version: r.from_version,
                new_version: r.new_version,
                error: &r.error,
                started_unix: r.started_unix,
                updated_unix: r.updated_unix,
            }),
        }
    }
}

/// A period in seconds as `30days`, or `never` for 0.
pub(crate) fn period(secs: u64) -> String {
    match secs {
        0 => "never".into(),
        secs => humantime::format_duration(std::time::Duration::from_secs(secs)).to_string(),
    }
}

/// The rotation policy and the latest rotation, for humans.
pub(crate) fn policy_lines(meta: &SecretMeta) -> Vec<String> {
    let mut lines = vec![
        format!("rotator: {}", meta.rotator),
        format!("rotate every: {}", period(meta.rotate_every_secs)),
        format!("grace: {}", humantime::format_duration(std::time::Duration::from_secs(meta.grace_secs))),
    ];
    if meta.next_rotation_unix != 0 {
        lines.push(format!("next rotation: {}", timestamp(meta.next_rotation_unix)));
    }
    if let Some(r) = &meta.last_rotation {
        let error = if r.error.is_empty() { String::new() } else { format!(": {}", r.error) };
        lines.push(format!(
            "last rotation: {} ({}, from version {}, {}){error}",
            r.step,
            r.trigger,
            r.from_version,
            timestamp(r.updated_unix)
        ));
    }
    lines
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
    let request = ShowSecretRequest { secret: Some(secret), reveal: args.reveal, version: args.version.unwrap_or(0) };
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
    output::lines(&policy_lines(&meta))?;
    match shown {
        Some(shown) => output::lines(&[shown.line().as_str()]),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON field names are a contract with scripts (ARCHITECTURE §9).
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
            rotator: "manual".into(),
            rotate_every_secs: 0,
            grace_secs: 3600,
            next_rotation_unix: 0,
            last_rotation: None,
        };
        let plain = ShowJson { meta: MetaJson::from(&meta), value: None };
        assert_eq!(
            serde_json::to_string(&plain).ok().as_deref(),
            Some(concat!(
                r#"{"env":"default","name":"telegram","provider":"telegram","description":"bot","#,
                r#""current_version":2,"created_unix":1,"updated_unix":3,"rotator":"manual","#,
                r#""rotate_every_secs":0,"grace_secs":3600,"next_rotation_unix":0}"#
            ))
        );
        let shown = ShownValue::new(b"\xff");
        let revealed = ShowJson { meta: MetaJson::from(&meta), value: Some(&shown) };
        let json = serde_json::to_string(&revealed).unwrap_or_default();
        assert!(json.ends_with(r#""next_rotation_unix":0,"value_base64":"/w=="}"#), "{json}");
    }
}
