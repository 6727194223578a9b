//! `vaultctl integrity`: what vaultd found changed behind its back (rows of the
//! state, entries of the audit log), and `integrity ack` to acknowledge it once
//! reviewed.

use serde::Serialize;
use vault_proto::v1::{AcknowledgeIntegrityRequest, StatusRequest};

use crate::Global;
use crate::daemon::{self, Reply as _};
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// List the problems found and not yet acknowledged (as `status` does).
    Show,
    /// After reviewing them: sign the state anew as it stands (quarantined clients
    /// disabled, their tokens revoked, their secrets' previous versions retired)
    /// and record that you saw the problems; `audit verify` then reports them as
    /// acknowledged. Review first: `vaultctl client list`, `token list`,
    /// `versions NAME`, `audit query --type security`.
    Ack,
}

/// `{"problems": [...]}` and `{"acknowledged": [...]}`.
#[derive(Serialize)]
struct ProblemsJson<'a> {
    problems: &'a [String],
}

#[derive(Serialize)]
struct AcknowledgedJson<'a> {
    acknowledged: &'a [String],
}

pub(crate) async fn run(global: &Global, command: Command) -> anyhow::Result<()> {
    let mut admin = daemon::admin(global).await?;
    match command {
        Command::Show => {
            let status = admin.status(StatusRequest {}).await.reply()?;
            if global.json {
                return output::json(&ProblemsJson { problems: &status.integrity });
            }
            if status.integrity.is_empty() {
                return output::lines(&["no integrity problems"]);
            }
            output::lines(&status.integrity)
        }
        Command::Ack => {
            let reply = admin.acknowledge_integrity(AcknowledgeIntegrityRequest {}).await.reply()?;
            if global.json {
                return output::json(&AcknowledgedJson { acknowledged: &reply.acknowledged });
            }
            let mut lines =
                vec![format!("acknowledged {} problems; the state is signed anew", reply.acknowledged.len())];
            lines.extend(reply.acknowledged);
            output::lines(&lines)
        }
    }
}
