//! `vaultctl revoke-all` and `vaultctl incident list|show`: the operator's worst
//! day (ARCHITECTURE §7). Through the daemon, or with `--offline` straight on the data
//! directory when the daemon is down or hung (break-glass, no passphrase).

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;

use serde::Serialize;
use vault_proto::v1::IncidentReport as Report;
use vault_proto::v1::{self, ListIncidentsRequest, RevokeAllRequest, ShowIncidentRequest};

use crate::Global;
use crate::daemon::{self, Reply as _};
use crate::exit::usage;
use crate::output::{self, timestamp};

#[derive(Debug, clap::Args)]
pub(crate) struct RevokeAllArgs {
    /// Why: kept in the incident record and the audit log.
    #[arg(long, value_name = "TEXT")]
    reason: String,
    /// Seal the vault afterwards (every key wiped from vaultd's memory).
    #[arg(long, conflicts_with = "offline")]
    seal: bool,
    /// Also run each compromised secret's revoke-old hook, so the provider
    /// forgets the leaked credential (failures are listed, not fatal).
    #[arg(long, conflicts_with = "offline")]
    provider_revoke: bool,
    /// Do not ask for confirmation (it is asked only on a terminal).
    #[arg(long)]
    yes: bool,
    /// Break-glass: work straight on the data directory, without the daemon or
    /// the passphrase. Run it as the vault's owner. A running vaultd honours it
    /// within a second.
    #[arg(long, requires = "data_dir")]
    offline: bool,
    /// The data directory, for --offline.
    #[arg(long, value_name = "DIR", requires = "offline")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum IncidentCommand {
    /// Every incident, oldest first.
    List,
    /// One incident's report and the audit timeline of the hours before it.
    Show {
        id: i64,
        /// How many hours of audit log before the incident to show.
        #[arg(long, default_value_t = 6)]
        hours: u32,
    },
}

pub(crate) async fn revoke_all(global: &Global, args: RevokeAllArgs) -> anyhow::Result<()> {
    if args.reason.trim().is_empty() {
        return Err(usage("give a reason: --reason TEXT"));
    }
    if !args.yes && std::io::stdin().is_terminal() {
        confirm()?;
    }
    let report = match &args.data_dir {
        Some(dir) => vaultd::incident::revoke_all_offline(dir, &args.reason).map_err(|e| match e {
            vaultd::incident::IncidentError::Reason => usage(e.to_string()),
            other => anyhow::anyhow!("{}: {other}", dir.display()),
        })?,
        None => {
            let mut admin = daemon::admin(global).await?;
            let request =
                RevokeAllRequest { reason: args.reason, seal: args.seal, provider_revoke: args.provider_revoke };
            admin.revoke_all(request).await.reply()?
        }
    };
    print_report(global, &report, None)
}

fn confirm() -> anyhow::Result<()> {
    eprint!(
        "This revokes every token, disables every client and marks every secret compromised.\nType REVOKE to go on: "
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != "REVOKE" {
        anyhow::bail!("not confirmed; nothing was changed");
    }
    Ok(())
}

/// The incident report as vaultd stores it (`{"id","reason","mode","started_unix","tokens_revoked",
/// "clients_disabled","secrets_compromised","streams_closed","sealed",
/// "needs_rotation","provider_revoke":[{"secret","ok","detail"}]}`), plus
/// `timeline` for `show`.
#[derive(Serialize)]
struct ReportJson<'a> {
    #[serde(flatten)]
    report: &'a Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeline: Option<Vec<serde_json::Value>>,
}

fn print_report(global: &Global, r: &Report, timeline: Option<&[v1::AuditEntry]>) -> anyhow::Result<()> {
    let entries = timeline.map(|t| t.iter().map(super::audit::parse).collect::<anyhow::Result<Vec<_>>>());
    let entries = entries.transpose()?;
    if global.json {
        return output::json(&ReportJson { report: r, timeline: entries });
    }
    let mut lines = vec![
        format!("incident {} ({}) at {}: {}", r.id, r.mode, timestamp(r.started_unix), r.reason),
        format!("tokens revoked: {}", r.tokens_revoked),
        format!("clients disabled: {}", r.clients_disabled),
        format!("secrets compromised: {}", r.secrets_compromised),
        format!("watch streams closed: {}", r.streams_closed),
    ];
    if r.sealed {
        lines.push("vault sealed".into());
    }
    for hook in &r.provider_revoke {
        let result = if hook.ok { "ok" } else { "FAILED" };
        lines.push(format!("provider revoke {}: {result}: {}", hook.secret, hook.detail));
    }
    if !r.needs_rotation.is_empty() {
        lines.push(format!("needs rotation: {}", r.needs_rotation.join(", ")));
        lines.push("next: vaultctl rotate --compromised; vaultctl client enable NAME; vaultctl audit verify".into());
    }
    if let Some(entries) = &entries {
        lines.push(format!("audit timeline ({} entries):", entries.len()));
        lines.extend(entries.iter().map(super::audit::human));
    }
    output::lines(&lines)
}

pub(crate) async fn incident(global: &Global, command: IncidentCommand) -> anyhow::Result<()> {
    let mut admin = daemon::admin(global).await?;
    match command {
        IncidentCommand::List => {
            let incidents = admin.list_incidents(ListIncidentsRequest {}).await.reply()?.incidents;
            if global.json {
                return output::json(&incidents);
            }
            let rows: Vec<Vec<String>> = incidents
                .iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        timestamp(r.started_unix),
                        r.mode.clone(),
                        format!("{}/{}/{}", r.tokens_revoked, r.clients_disabled, r.secrets_compromised),
                        r.reason.clone(),
                    ]
                })
                .collect();
            output::table(&["ID", "STARTED", "MODE", "TOKENS/CLIENTS/SECRETS", "REASON"], &rows)
        }
        IncidentCommand::Show { id, hours } => {
            let reply = admin.show_incident(ShowIncidentRequest { id, hours }).await.reply()?;
            let report = daemon::required(reply.report, "report")?;
            print_report(global, &report, Some(&reply.timeline))
        }
    }
}
