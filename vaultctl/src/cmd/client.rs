//! `vaultctl client …`: the agents' identities (kernel-attested selectors) and the
//! grants that say which `ENV/NAME` patterns each may read.

use std::path::PathBuf;

use serde::Serialize;
use tonic::transport::Channel;
use vault_proto::names;
use vault_proto::v1::admin_client::AdminClient;
use vault_proto::v1::{self, ClientInfo};

use crate::Global;
use crate::daemon::{self, Reply as _};
use crate::exit::usage;
use crate::output::{self, or_dash, timestamp};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Add a client: callers with this uid (and gid, and executable, when given).
    Add(AddArgs),
    /// Let a client read secrets matching ENV/NAME patterns (`prod/telegram`, `prod/*`).
    Grant(GrantArgs),
    /// Take grants away.
    Ungrant(UngrantArgs),
    /// List clients and their grants.
    List,
    /// Remove a client and its grants.
    Rm(NameArg),
    /// Let a disabled client read again.
    Enable(NameArg),
    /// Stop a client from reading anything, keeping its grants.
    Disable(NameArg),
}

#[derive(Debug, clap::Args)]
pub(crate) struct AddArgs {
    name: String,
    /// The caller's user: a uid, or a user name (from the kernel, SO_PEERCRED).
    #[arg(long, value_name = "USER", value_parser = uid)]
    uid: u32,
    /// Also require this group: a gid, or a group name.
    #[arg(long, value_name = "GROUP", value_parser = gid)]
    gid: Option<u32>,
    /// Also require this executable (absolute path, as /proc/PID/exe names it).
    #[arg(long, value_name = "PATH")]
    exe: Option<PathBuf>,
    /// Also require the executable's content: its SHA-256 (as `sha256sum` prints it).
    #[arg(long, value_name = "HEX")]
    exe_sha256: Option<String>,
    /// A pattern the client may read (repeatable).
    #[arg(long = "allow", value_name = "PATTERN")]
    allow: Vec<String>,
    /// The --allow patterns allow use through the credential broker only: the
    /// agent never receives the value.
    #[arg(long = "use")]
    use_only: bool,
    /// Match this client by its tokens only, never by its uid: once a uid has
    /// such a client, a request from it without a token reads nothing. For
    /// agents that share a uid (containers): give each its own client and token.
    #[arg(long)]
    token_only: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct GrantArgs {
    name: String,
    #[arg(required = true, value_name = "PATTERN")]
    patterns: Vec<String>,
    /// Allow use through the credential broker only, never the value itself.
    #[arg(long = "use")]
    use_only: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct UngrantArgs {
    name: String,
    #[arg(required = true, value_name = "PATTERN")]
    patterns: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct NameArg {
    name: String,
}

/// `{"name","uid","gid","exe","exe_sha256","enabled","token_only","grants","use_only","created_unix"}`
/// (`use_only`: the grants that allow use through the broker only).
#[derive(Serialize)]
struct ClientJson<'a> {
    name: &'a str,
    uid: u32,
    gid: Option<u32>,
    exe: Option<&'a str>,
    exe_sha256: Option<&'a str>,
    enabled: bool,
    token_only: bool,
    grants: &'a [String],
    use_only: &'a [String],
    created_unix: i64,
}

impl<'a> From<&'a ClientInfo> for ClientJson<'a> {
    fn from(c: &'a ClientInfo) -> Self {
        ClientJson {
            name: &c.name,
            uid: c.uid,
            gid: c.gid,
            exe: (!c.exe.is_empty()).then_some(c.exe.as_str()),
            exe_sha256: (!c.exe_sha256.is_empty()).then_some(c.exe_sha256.as_str()),
            enabled: c.enabled,
            token_only: c.token_only,
            grants: &c.grants,
            use_only: &c.use_only,
            created_unix: c.created_unix,
        }
    }
}

fn uid(text: &str) -> Result<u32, String> {
    id(text, "passwd", "user")
}

fn gid(text: &str) -> Result<u32, String> {
    id(text, "group", "group")
}

/// A number as it is, else a name as `getent DB` resolves it (so users from
/// LDAP or systemd's dynamic users count, not only /etc/passwd). The id is stored:
/// a renamed user keeps its grants, a deleted one's uid reused would inherit them.
fn id(text: &str, db: &str, what: &str) -> Result<u32, String> {
    if let Ok(number) = text.parse() {
        return Ok(number);
    }
    let out = std::process::Command::new("getent")
        .args([db, "--", text])
        .output()
        .map_err(|e| format!("cannot look up {what} names (getent: {e}); give the number"))?;
    // NAME:x:ID:…
    let entry = String::from_utf8_lossy(&out.stdout);
    let id = entry.lines().next().and_then(|l| l.split(':').nth(2)).and_then(|n| n.parse().ok());
    id.ok_or_else(|| format!("no such {what}"))
}

fn checked_name(name: &str) -> anyhow::Result<String> {
    names::validate(name).map_err(|e| usage(format!("invalid client name: {e}")))?;
    Ok(name.to_owned())
}

fn checked_patterns(patterns: &[String]) -> anyhow::Result<Vec<String>> {
    for p in patterns {
        names::validate_pattern(p).map_err(|e| usage(format!("invalid grant pattern: {e}")))?;
    }
    Ok(patterns.to_vec())
}

pub(crate) async fn run(global: &Global, command: Command) -> anyhow::Result<()> {
    let reply = match command {
        Command::Add(a) => {
            let exe = match a.exe {
                Some(p) if p.is_absolute() => {
                    p.to_str().map(str::to_owned).ok_or_else(|| usage("--exe must be UTF-8"))?
                }
                Some(_) => return Err(usage("--exe must be an absolute path")),
                None => String::new(),
            };
            let request = v1::AddClientRequest {
                name: checked_name(&a.name)?,
                uid: a.uid,
                gid: a.gid,
                exe,
                allow: checked_patterns(&a.allow)?,
                exe_sha256: a.exe_sha256.unwrap_or_default().to_ascii_lowercase(),
                token_only: a.token_only,
                use_only: a.use_only,
            };
            let pins_exe = !request.exe.is_empty() || !request.exe_sha256.is_empty();
            let mut admin = daemon::admin(global).await?;
            let added = admin.add_client(request).await.reply()?;
            if pins_exe {
                warn_without_exe_attestation(&mut admin).await?;
            }
            added
        }
        Command::Grant(g) => {
            let request = v1::GrantRequest {
                name: checked_name(&g.name)?,
                patterns: checked_patterns(&g.patterns)?,
                use_only: g.use_only,
            };
            daemon::admin(global).await?.grant(request).await.reply()?
        }
        Command::Ungrant(g) => {
            let request = v1::GrantRequest {
                name: checked_name(&g.name)?,
                patterns: checked_patterns(&g.patterns)?,
                use_only: false,
            };
            daemon::admin(global).await?.ungrant(request).await.reply()?
        }
        Command::Enable(n) => set_enabled(global, &n.name, true).await?,
        Command::Disable(n) => set_enabled(global, &n.name, false).await?,
        Command::Rm(n) => {
            let name = checked_name(&n.name)?;
            daemon::admin(global).await?.remove_client(v1::ClientName { name: name.clone() }).await.reply()?;
            if global.json {
                return output::json(&serde_json::json!({ "removed": name }));
            }
            return output::lines(&[format!("removed client {name}")]);
        }
        Command::List => {
            let clients = daemon::admin(global).await?.list_clients(v1::ListClientsRequest {}).await.reply()?.clients;
            if global.json {
                return output::json(&clients.iter().map(ClientJson::from).collect::<Vec<_>>());
            }
            let rows: Vec<Vec<String>> = clients.iter().map(row).collect();
            return output::table(&["NAME", "UID", "GID", "EXE", "ENABLED", "GRANTS", "CREATED"], &rows);
        }
    };
    if global.json {
        return output::json(&ClientJson::from(&reply));
    }
    output::table(&["NAME", "UID", "GID", "EXE", "ENABLED", "GRANTS", "CREATED"], &[row(&reply)])
}

async fn set_enabled(global: &Global, name: &str, enabled: bool) -> anyhow::Result<ClientInfo> {
    let request = v1::SetClientEnabledRequest { name: checked_name(name)?, enabled };
    daemon::admin(global).await?.set_client_enabled(request).await.reply()
}

fn row(c: &ClientInfo) -> Vec<String> {
    vec![
        c.name.clone(),
        c.uid.to_string(),
        c.gid.map_or_else(|| "-".into(), |g| g.to_string()),
        or_dash(&c.exe).to_owned(),
        match (c.enabled, c.token_only) {
            (true, false) => "yes",
            (true, true) => "yes, token only",
            (false, _) => "no",
        }
        .into(),
        if c.grants.is_empty() {
            "-".into()
        } else {
            let shown: Vec<String> = c
                .grants
                .iter()
                .map(|g| if c.use_only.contains(g) { format!("{g} (use)") } else { g.clone() })
                .collect();
            shown.join(",")
        },
        timestamp(c.created_unix),
    ]
}

/// A client that pins an executable matches no agent of another uid while
/// vaultd cannot read their executables: say so (the client is added anyway).
async fn warn_without_exe_attestation(admin: &mut AdminClient<Channel>) -> anyhow::Result<()> {
    let status = admin.status(v1::StatusRequest {}).await.reply()?;
    if !status.exe_attestation {
        eprintln!(
            "vaultctl: warning: exe attestation {}; until then this client matches no agent of another uid",
            super::status::exe_attestation(&status)
        );
    }
    Ok(())
}
