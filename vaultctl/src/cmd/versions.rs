//! `vaultctl versions NAME`: a secret's versions and their states.

use serde::Serialize;
use vault_proto::v1::ListVersionsRequest;

use crate::Global;
use crate::cmd::secret_ref;
use crate::daemon::{self, Reply as _};
use crate::output::{self, timestamp};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The secret's name.
    name: String,
}

/// `{"version","state","created_unix","expires_unix"}`; `expires_unix` is 0 when
/// the version has no grace deadline.
#[derive(Serialize)]
struct VersionJson<'a> {
    version: u64,
    state: &'a str,
    created_unix: i64,
    expires_unix: i64,
}

pub(crate) async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let secret = secret_ref(global, &args.name)?;
    let mut admin = daemon::admin(global).await?;
    let reply = admin.list_versions(ListVersionsRequest { secret: Some(secret) }).await.reply()?;

    if global.json {
        let all: Vec<VersionJson<'_>> = reply
            .versions
            .iter()
            .map(|v| VersionJson {
                version: v.version,
                state: &v.state,
                created_unix: v.created_unix,
                expires_unix: v.expires_unix,
            })
            .collect();
        return output::json(&all);
    }
    let rows: Vec<Vec<String>> = reply
        .versions
        .iter()
        .map(|v| {
            let until = if v.expires_unix == 0 { "-".into() } else { timestamp(v.expires_unix) };
            vec![v.version.to_string(), v.state.clone(), timestamp(v.created_unix), until]
        })
        .collect();
    output::table(&["VERSION", "STATE", "CREATED", "READABLE UNTIL"], &rows)
}
