//! `vaultctl run [--only PATTERN]... [--spec FILE] -- CMD ARGS...`: `exec` without
//! the list. The program gets every secret of the environment that the caller may
//! read (vaultd's `ListGranted`), each as the variable `names::env_var` names, or
//! exactly those a spec file declares. `vaultctl check --spec FILE` says what of a
//! spec is missing, without running anything.
//!
//! A spec file (`vaultd.toml` in the agent's repository) holds names only, so it
//! is safe to commit:
//!
//! ```toml
//! [secrets]
//! OPENAI_API_KEY = {}                                 # required, the secret of that name
//! TELEGRAM_BOT_TOKEN = { secret = "telegram" }        # from a secret of another name
//! SENTRY_DSN = { required = false, description = "error reports" }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use vault_proto::names;
use vault_proto::v1::ListGrantedRequest;

use crate::Global;
use crate::cmd::checked_env;
use crate::cmd::exec::{self, Launch};
use crate::daemon::{self, Reply as _, RpcError};
use crate::exit::usage;
use crate::output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Only the secrets whose names match PATTERN (`*` for any characters; repeatable).
    #[arg(long, value_name = "PATTERN", conflicts_with = "spec")]
    only: Vec<String>,
    /// Exactly the secrets FILE declares (see `vaultctl check`); a required one
    /// that is missing or not granted stops the program from starting.
    #[arg(long, value_name = "FILE")]
    spec: Option<PathBuf>,
    #[command(flatten)]
    launch: Launch,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// The spec file to check.
    #[arg(long, value_name = "FILE", default_value = "vaultd.toml")]
    spec: PathBuf,
}

/// A spec file: the variables a program needs, and where each comes from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    secrets: BTreeMap<String, Wanted>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wanted {
    /// The secret's name, if not the variable's.
    secret: Option<String>,
    #[serde(default = "yes")]
    required: bool,
    /// For people; `check` shows it.
    #[serde(default)]
    description: String,
}

fn yes() -> bool {
    true
}

/// One line of a spec, checked: variable, secret, required.
struct Binding {
    var: String,
    secret: String,
    required: bool,
    description: String,
}

pub(crate) async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let env = checked_env(global)?.to_owned();
    let spec = args.spec.as_deref().map(load).transpose()?;
    for pattern in &args.only {
        names::validate_pattern(&format!("x/{pattern}")).map_err(|e| usage(format!("invalid --only pattern: {e}")))?;
    }
    let granted = granted(global, &env).await?;
    let bindings = match &spec {
        Some(spec) => {
            let (present, missing) = split(spec, &granted);
            if missing.iter().any(|b| b.required) {
                return Err(missing_error(&env, args.spec.as_deref(), &missing));
            }
            present.into_iter().map(|b| (b.var, b.secret)).collect()
        }
        None => every(&env, &granted, &args.only)?,
    };
    exec::launch(global, env, &bindings, &args.launch).await
}

/// `vaultctl check --spec FILE`: a table of the spec's variables when every
/// required one is there; else an error naming those missing or not granted.
pub(crate) async fn check(global: &Global, args: CheckArgs) -> anyhow::Result<()> {
    let env = checked_env(global)?.to_owned();
    let spec = load(&args.spec)?;
    let granted = granted(global, &env).await?;
    let (present, missing) = split(&spec, &granted);
    if missing.iter().any(|b| b.required) {
        return Err(missing_error(&env, Some(&args.spec), &missing));
    }
    #[derive(Serialize)]
    struct Row<'a> {
        var: &'a str,
        secret: &'a str,
        required: bool,
        available: bool,
        description: &'a str,
    }
    let rows: Vec<Row<'_>> = present
        .iter()
        .map(|b| (b, true))
        .chain(missing.iter().map(|b| (b, false)))
        .map(|(b, available)| Row {
            var: &b.var,
            secret: &b.secret,
            required: b.required,
            available,
            description: &b.description,
        })
        .collect();
    if global.json {
        return output::json(&serde_json::json!({ "env": env, "secrets": rows }));
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.var.to_owned(),
                r.secret.to_owned(),
                if r.required { "required" } else { "optional" }.to_owned(),
                if r.available { "ok" } else { "missing or not granted" }.to_owned(),
                output::or_dash(r.description).to_owned(),
            ]
        })
        .collect();
    output::table(&["VARIABLE", "SECRET", "NEED", "STATUS", "DESCRIPTION"], &table)
}

/// The names in `env` the caller may read, as vaultd says (the owner: all of them).
async fn granted(global: &Global, env: &str) -> anyhow::Result<Vec<String>> {
    let mut agent = daemon::agent(global).await?;
    let request = daemon::with_token(tonic::Request::new(ListGrantedRequest { env: env.to_owned() }))?;
    Ok(agent.list_granted(request).await.reply()?.names)
}

/// Every granted secret (matching one of `only`, if given), each as its variable.
fn every(env: &str, granted: &[String], only: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut bindings: Vec<(String, String)> = Vec::new();
    for name in granted {
        if !only.is_empty() && !only.iter().any(|p| names::pattern_matches(&format!("x/{p}"), "x", name)) {
            continue;
        }
        let var = names::env_var(name).ok_or_else(|| {
            usage(format!(
                "secret {name} has no environment-variable name (it starts with a digit): \
                 leave it out with --only, or name a variable for it in a --spec file"
            ))
        })?;
        if let Some((_, other)) = bindings.iter().find(|(v, _)| *v == var) {
            return Err(usage(format!(
                "secrets {other} and {name} would both be {var}: choose with --only, or use a --spec file"
            )));
        }
        bindings.push((var, name.clone()));
    }
    if bindings.is_empty() {
        let what = if only.is_empty() { "" } else { " matching --only" };
        let status = tonic::Status::not_found(format!("no secret{what} in {env} exists or is granted to you"));
        return Err(RpcError::from(status).into());
    }
    Ok(bindings)
}

/// Reads and checks a spec file: variable names, secret names.
fn load(path: &Path) -> anyhow::Result<Vec<Binding>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let spec: Spec = toml::from_str(&text).map_err(|e| usage(format!("{}: {}", path.display(), e.message())))?;
    let mut bindings = Vec::with_capacity(spec.secrets.len());
    for (var, wanted) in spec.secrets {
        if !names::is_env_var(&var) {
            return Err(usage(format!("{}: {var} is not an environment variable name", path.display())));
        }
        let secret = wanted.secret.unwrap_or_else(|| var.clone());
        names::validate(&secret)
            .map_err(|e| usage(format!("{}: the secret for {var}: invalid secret name: {e}", path.display())))?;
        bindings.push(Binding { var, secret, required: wanted.required, description: wanted.description });
    }
    if bindings.is_empty() {
        return Err(usage(format!("{} declares no [secrets]", path.display())));
    }
    Ok(bindings)
}

/// The spec's bindings that `granted` has, and those it has not.
fn split(spec: &[Binding], granted: &[String]) -> (Vec<Binding>, Vec<Binding>) {
    let copy = |b: &Binding| Binding {
        var: b.var.clone(),
        secret: b.secret.clone(),
        required: b.required,
        description: b.description.clone(),
    };
    spec.iter().map(copy).partition(|b| granted.contains(&b.secret))
}

/// "Missing or not granted": vaultd answers both alike, on purpose.
fn missing_error(env: &str, spec: Option<&Path>, missing: &[Binding]) -> anyhow::Error {
    let named = |b: &Binding| {
        if b.var == b.secret { b.var.clone() } else { format!("{} (secret {})", b.var, b.secret) }
    };
    let required: Vec<String> = missing.iter().filter(|b| b.required).map(named).collect();
    let by = spec.map(|p| format!(", required by {}", p.display())).unwrap_or_default();
    let status = tonic::Status::not_found(format!("missing or not granted in {env}: {}{by}", required.join(", ")));
    RpcError::from(status).into()
}
