//! `vaultctl token …`: bearer tokens for callers the kernel cannot tell apart (a
//! shared uid in containers). A token is printed once and stored only hashed.

use std::time::Duration;

use serde::Serialize;
use vault_proto::v1::{self, TokenInfo};

use crate::Global;
use crate::daemon::{self, Reply as _};
use crate::exit::usage;
use crate::output::{self, timestamp};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create a token for a client; prints it once (stdout; with --json, in "token").
    Create(CreateArgs),
    /// List tokens (accessor, client, expiry, last use; never the token).
    List,
    /// Revoke a token by accessor, or every token with --all.
    Revoke(RevokeArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    #[arg(long)]
    client: String,
    /// Lifetime ("1h", "30d"); none: until revoked.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// Refused after this long unused ("15m").
    #[arg(long, value_parser = humantime::parse_duration)]
    idle: Option<Duration>,
    /// How many reads it is good for.
    #[arg(long)]
    uses: Option<u32>,
    /// Usable from any uid (default: only the client's uid).
    #[arg(long)]
    any_uid: bool,
    /// Usable only by a process running this executable (absolute path; the
    /// same file, as vaultd attests it), besides the uid.
    #[arg(long, value_name = "PATH")]
    exe: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RevokeArgs {
    /// The token's accessor (from `token list`).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    accessor: Option<String>,
    #[arg(long)]
    all: bool,
}

/// `{"accessor","client","bind_uid","bind_exe","created_unix","expires_unix","idle_secs","uses_left","last_used_unix","revoked_unix"}`.
#[derive(Serialize)]
struct TokenJson<'a> {
    accessor: &'a str,
    client: &'a str,
    bind_uid: Option<u32>,
    bind_exe: Option<&'a str>,
    created_unix: i64,
    expires_unix: Option<i64>,
    idle_secs: Option<i64>,
    uses_left: Option<i64>,
    last_used_unix: Option<i64>,
    revoked_unix: Option<i64>,
}

impl<'a> From<&'a TokenInfo> for TokenJson<'a> {
    fn from(t: &'a TokenInfo) -> Self {
        let some = |n: i64| (n != 0).then_some(n);
        TokenJson {
            accessor: &t.accessor,
            client: &t.client,
            bind_uid: t.bind_uid,
            bind_exe: (!t.bind_exe.is_empty()).then_some(t.bind_exe.as_str()),
            created_unix: t.created_unix,
            expires_unix: some(t.expires_unix),
            idle_secs: some(t.idle_secs),
            uses_left: t.uses_left,
            last_used_unix: some(t.last_used_unix),
            revoked_unix: some(t.revoked_unix),
        }
    }
}

/// An accessor is 16 lowercase hex digits. Anything else is refused before
/// dialing and never quoted back: the likeliest mistake is the token itself.
fn check_accessor(accessor: &str) -> anyhow::Result<()> {
    if accessor.starts_with("vt_") {
        return Err(usage(
            "that is a token, not its accessor: `vaultctl token list` shows accessors; revoke this token \
             soon, since it was typed on a command line",
        ));
    }
    if accessor.len() != 16 || !accessor.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(usage("an accessor is 16 hex digits, as `vaultctl token list` shows"));
    }
    Ok(())
}

pub(crate) async fn run(global: &Global, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Create(a) => {
            vault_proto::names::validate(&a.client).map_err(|e| usage(format!("invalid client name: {e}")))?;
            let request = v1::CreateTokenRequest {
                client: a.client,
                ttl_secs: a.ttl.map_or(0, |d| d.as_secs().max(1)),
                idle_secs: a.idle.map_or(0, |d| d.as_secs().max(1)),
                uses: a.uses,
                any_uid: a.any_uid,
                bind_exe: match a.exe {
                    Some(p) if p.is_absolute() => {
                        p.to_str().map(str::to_owned).ok_or_else(|| usage("--exe must be UTF-8"))?
                    }
                    Some(_) => return Err(usage("--exe must be an absolute path")),
                    None => String::new(),
                },
            };
            let reply = daemon::admin(global).await?.create_token(request).await.reply()?;
            let info = daemon::required(reply.info.as_ref(), "token info")?;
            if global.json {
                #[derive(Serialize)]
                struct Created<'a> {
                    token: &'a str,
                    #[serde(flatten)]
                    info: TokenJson<'a>,
                }
                return output::json(&Created { token: &reply.token, info: TokenJson::from(info) });
            }
            output::lines(&[&reply.token])
        }
        Command::List => {
            let tokens = daemon::admin(global).await?.list_tokens(v1::ListTokensRequest {}).await.reply()?.tokens;
            if global.json {
                return output::json(&tokens.iter().map(TokenJson::from).collect::<Vec<_>>());
            }
            let when = |t: i64| if t == 0 { "-".to_owned() } else { timestamp(t) };
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    vec![
                        t.accessor.clone(),
                        t.client.clone(),
                        t.bind_uid.map_or_else(|| "any".into(), |u| u.to_string()),
                        when(t.expires_unix),
                        when(t.last_used_unix),
                        t.uses_left.map_or_else(|| "-".into(), |n| n.to_string()),
                        if t.revoked_unix != 0 { "revoked".into() } else { "live".into() },
                    ]
                })
                .collect();
            output::table(&["ACCESSOR", "CLIENT", "UID", "EXPIRES", "LAST USED", "USES LEFT", "STATE"], &rows)
        }
        Command::Revoke(r) => {
            if let Some(accessor) = &r.accessor {
                check_accessor(accessor)?;
            }
            let request = v1::RevokeTokensRequest { accessor: r.accessor.unwrap_or_default(), all: r.all };
            let revoked = daemon::admin(global).await?.revoke_tokens(request).await.reply()?.revoked;
            if global.json {
                return output::json(&serde_json::json!({ "revoked": revoked }));
            }
            output::lines(&[format!("revoked {revoked} token{}", if revoked == 1 { "" } else { "s" })])
        }
    }
}
