//! `vaultctl rotate NAME | --due` and `vaultctl rotation set|list`: rotating
//! secrets now, and the policy that rotates them on schedule.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use serde::Serialize;
use vault_proto::names;
use vault_proto::v1::{
    ListRotationsRequest, RotateSecretRequest, RotateSecretResponse, RotationChange, SecretRef, SetRotationRequest,
    ShowSecretRequest,
};

use crate::Global;
use crate::cmd::secret_ref;
use crate::daemon::{self, Reply as _};
use crate::exit::usage;
use crate::output::{self, timestamp};
use crate::{cmd, input};
use vaultd::rotation::split_check;

/// The policy options `put` and `rotation set` share.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct PolicyArgs {
    /// Who makes the next value: manual (you, at `vaultctl rotate`),
    /// generate[:LEN[:CHARSET]] (vaultd; CHARSET alnum, hex, base64url or
    /// printable; default generate:32:alnum) or exec:/abs/path (a hook; see the
    /// README's "Rotation hooks").
    #[arg(long, value_name = "R")]
    rotator: Option<String>,
    /// Test each new value with the credential broker's check of ROUTE (a
    /// [[broker.route]]: list models, Telegram getMe, …) before it is promoted,
    /// instead of a hook's test step.
    #[arg(long, value_name = "ROUTE", requires = "rotator")]
    check: Option<String>,
    /// Rotate on schedule, every D ("30d", "12h"); "never" removes the schedule.
    #[arg(long, value_name = "D", value_parser = every)]
    rotate_every: Option<u64>,
    /// How long the previous version stays readable after a rotation (default 1h).
    #[arg(long, value_name = "D", value_parser = duration)]
    grace: Option<u64>,
}

impl PolicyArgs {
    pub(crate) fn change(self) -> Option<RotationChange> {
        if self.rotator.is_none() && self.rotate_every.is_none() && self.grace.is_none() {
            return None;
        }
        let rotator = match (self.rotator, self.check) {
            (Some(rotator), Some(route)) => Some(format!("{rotator};check={route}")),
            (rotator, _) => rotator,
        };
        Some(RotationChange { rotator, rotate_every_secs: self.rotate_every, grace_secs: self.grace })
    }
}

fn duration(text: &str) -> Result<u64, String> {
    humantime::parse_duration(text).map(|d| d.as_secs()).map_err(|e| format!("not a duration like \"30d\": {e}"))
}

fn every(text: &str) -> Result<u64, String> {
    match text {
        "never" => Ok(0),
        _ => match duration(text)? {
            0 => Err("the period must be at least a second (or \"never\")".into()),
            secs => Ok(secs),
        },
    }
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["name", "due", "compromised"]))]
pub(crate) struct RotateArgs {
    /// The secret to rotate now.
    name: Option<String>,
    /// Rotate every secret whose schedule is due (every environment). Secrets
    /// with the manual rotator are listed, not rotated: they need a value each.
    #[arg(long, conflicts_with_all = ["name", "from_file", "compromised"])]
    due: bool,
    /// Rotate every secret revoke-all marked compromised (every environment).
    /// Manual ones are prompted for, one by one, on a terminal; otherwise listed.
    #[arg(long, conflicts_with_all = ["name", "from_file"])]
    compromised: bool,
    /// The new value, for the manual rotator: read from FILE ('-' for stdin).
    /// Without it the value is read from stdin when that is not a terminal, else
    /// prompted for without echo.
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum RotationCommand {
    /// Set a secret's rotation policy.
    Set {
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Secrets with a rotation schedule, soonest due first (every environment).
    List {
        /// Only those due now.
        #[arg(long)]
        due: bool,
    },
}

/// `{"env","name","version","previous_version","grace_until_unix"}`: what `put`
/// and `rotate` print; the last two are 0 when no version became previous.
#[derive(Serialize)]
pub(crate) struct NewVersionJson<'a> {
    pub(crate) env: &'a str,
    pub(crate) name: &'a str,
    pub(crate) version: u64,
    pub(crate) previous_version: u64,
    pub(crate) grace_until_unix: i64,
}

impl NewVersionJson<'_> {
    /// The human line: `VERB env/name version N[; version P readable until T]`.
    pub(crate) fn line(&self, verb: &str) -> String {
        let previous = match self.previous_version {
            0 => String::new(),
            v => format!("; version {v} readable until {}", timestamp(self.grace_until_unix)),
        };
        format!("{verb} {}/{} version {}{previous}", self.env, self.name, self.version)
    }
}

pub(crate) async fn run(global: &Global, args: RotateArgs) -> anyhow::Result<()> {
    let Some(name) = args.name else { return walk(global, args.compromised).await };
    let secret = secret_ref(global, &name)?;
    let mut admin = daemon::admin(global).await?;
    // Only the manual rotator takes a value: ask vaultd which one this secret has
    // before reading (or prompting for) anything.
    let shown = admin.show_secret(ShowSecretRequest { secret: Some(secret.clone()), ..Default::default() }).await;
    let meta = daemon::required(shown.reply()?.secret, "secret")?;
    // A rotator may be followed by `;check=ROUTE` (its test): who makes the value is before it.
    let value = match split_check(&meta.rotator).0 {
        "manual" => {
            let prompt = format!("New value for {}/{}: ", names::env_or_default(&secret.env), secret.name);
            input::value(args.from_file.as_deref(), &prompt)?.into_request_bytes()
        }
        other if args.from_file.is_some() => {
            return Err(usage(format!(
                "{}/{} rotates with {other}, which makes its own value",
                secret.env, secret.name
            )));
        }
        _ => Vec::new(),
    };
    let reply = admin.rotate_secret(RotateSecretRequest { secret: Some(secret), value }).await.reply()?;
    print_rotated(global, &reply)
}

/// `rotate`'s JSON: [`NewVersionJson`]'s fields, and for a compromised secret
/// with a hook, `"revoked_compromised"` (versions its revoke-old step revoked at
/// the provider) and `"not_revoked"` (`"version N: why"`).
#[derive(Serialize)]
struct RotatedJson<'a> {
    #[serde(flatten)]
    version: NewVersionJson<'a>,
    revoked_compromised: &'a [u64],
    not_revoked: &'a [String],
}

fn print_rotated(global: &Global, reply: &RotateSecretResponse) -> anyhow::Result<()> {
    let meta = reply.secret.as_ref();
    let env = names::env_or_default(meta.map_or("", |m| &m.env));
    let name = meta.map_or("", |m| &m.name);
    let shown = NewVersionJson {
        env,
        name,
        version: reply.version,
        previous_version: reply.previous_version,
        grace_until_unix: reply.grace_until_unix,
    };
    if global.json {
        let revoked_compromised = &reply.revoked_compromised;
        return output::json(&RotatedJson { version: shown, revoked_compromised, not_revoked: &reply.not_revoked });
    }
    let mut lines = vec![shown.line("rotated")];
    if !reply.revoked_compromised.is_empty() {
        let versions: Vec<String> = reply.revoked_compromised.iter().map(u64::to_string).collect();
        lines.push(format!("compromised versions revoked at the provider: {}", versions.join(", ")));
    }
    for why in &reply.not_revoked {
        lines.push(format!("NOT revoked at the provider (retried by vaultd): {why}"));
    }
    output::lines(&lines)
}

/// `rotate --due` and `rotate --compromised`: one by one, with a progress line
/// per secret on stderr.
async fn walk(global: &Global, compromised: bool) -> anyhow::Result<()> {
    let mut admin = daemon::admin(global).await?;
    let request = ListRotationsRequest { due_only: !compromised, compromised_only: compromised };
    let secrets = admin.list_rotations(request).await.reply()?.secrets;
    // A manual rotator needs a value per secret: only a terminal can give them.
    let prompt = compromised && std::io::stdin().is_terminal();
    let (manual, rotatable): (Vec<_>, Vec<_>) =
        secrets.into_iter().partition(|m| split_check(&m.rotator).0 == "manual" && !prompt);
    let total = rotatable.len();
    let mut failed = Vec::new();
    for (i, meta) in rotatable.iter().enumerate() {
        let label = format!("{}/{}", names::env_or_default(&meta.env), meta.name);
        let value = match split_check(&meta.rotator).0 {
            "manual" => input::value(None, &format!("New value for {label}: "))?.into_request_bytes(),
            _ => Vec::new(),
        };
        eprint!("[{}/{total}] {label} ({}) … ", i + 1, meta.rotator);
        let secret = SecretRef { env: meta.env.clone(), name: meta.name.clone() };
        match admin.rotate_secret(RotateSecretRequest { secret: Some(secret), value }).await.reply() {
            Ok(reply) => {
                eprintln!("version {}", reply.version);
                print_rotated(global, &reply)?;
            }
            Err(e) => {
                eprintln!("failed");
                failed.push(format!("{label}: {e:#}"));
            }
        }
    }
    let what = if compromised { "compromised" } else { "due" };
    for meta in &manual {
        let env = names::env_or_default(&meta.env);
        eprintln!(
            "{env}/{} is {what} but rotates manually: run `vaultctl --env {env} rotate {}`",
            meta.name, meta.name
        );
    }
    if total == 0 && manual.is_empty() {
        eprintln!("nothing is {what}");
    }
    if !failed.is_empty() {
        anyhow::bail!("{} of {total} rotations failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

pub(crate) async fn rotation(global: &Global, command: RotationCommand) -> anyhow::Result<()> {
    match command {
        RotationCommand::Set { name, policy } => {
            let secret = secret_ref(global, &name)?;
            let change = policy.change().ok_or_else(|| usage("give --rotator, --rotate-every or --grace"))?;
            let mut admin = daemon::admin(global).await?;
            let meta =
                admin.set_rotation(SetRotationRequest { secret: Some(secret), change: Some(change) }).await.reply()?;
            if global.json {
                return output::json(&cmd::show::MetaJson::from(&meta));
            }
            output::lines(&cmd::show::policy_lines(&meta))
        }
        RotationCommand::List { due } => {
            let mut admin = daemon::admin(global).await?;
            let request = ListRotationsRequest { due_only: due, compromised_only: false };
            let secrets = admin.list_rotations(request).await.reply()?.secrets;
            if global.json {
                let all: Vec<_> = secrets.iter().map(cmd::show::MetaJson::from).collect();
                return output::json(&all);
            }
            let rows: Vec<Vec<String>> = secrets
                .iter()
                .map(|m| {
                    vec![
                        format!("{}/{}", names::env_or_default(&m.env), m.name),
                        m.rotator.clone(),
                        cmd::show::period(m.rotate_every_secs),
                        timestamp(m.next_rotation_unix),
                    ]
                })
                .collect();
            output::table(&["SECRET", "ROTATOR", "EVERY", "DUE"], &rows)
        }
    }
}
