//! `vaultctl check ROUTE…` / `vaultctl check --all`: each broker route's
//! credential checked live at its provider by vaultd (Anthropic and OpenAI
//! list models, Telegram `getMe`, Slack `auth.test`, Discord and GitHub the
//! current user). The value never leaves vaultd; the output names the account
//! or the provider's reason. Without routes, `vaultctl check [--spec FILE]`
//! checks a spec file instead (`run::check`).

use serde::Serialize;
use vault_proto::names;
use vault_proto::v1::{CheckProvidersRequest, ProviderCheck};

use crate::Global;
use crate::cmd::run as spec;
use crate::daemon::{self, Reply as _};
use crate::exit::usage;
use crate::output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Broker routes to check at their providers (as named in vaultd's [[broker.route]]).
    #[arg(value_name = "ROUTE", conflicts_with_all = ["all", "spec"])]
    routes: Vec<String>,
    /// Check every broker route at its provider.
    #[arg(long, conflicts_with = "spec")]
    all: bool,
    #[command(flatten)]
    spec: spec::CheckArgs,
}

pub(crate) async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    if args.routes.is_empty() && !args.all {
        return spec::check(global, args.spec).await;
    }
    for route in &args.routes {
        names::validate(route).map_err(|e| usage(format!("invalid route name: {e}")))?;
    }
    let mut broker = daemon::broker_admin(global).await?;
    let checks = broker.check_providers(CheckProvidersRequest { routes: args.routes }).await.reply()?.checks;
    let failed: Vec<&ProviderCheck> = checks.iter().filter(|c| !c.ok).collect();
    if !failed.is_empty() {
        let each: Vec<String> = failed.iter().map(|c| format!("{} ({}): {}", c.route, c.secret, c.detail)).collect();
        anyhow::bail!("{} of {} checks failed: {}", failed.len(), checks.len(), each.join("; "));
    }
    if global.json {
        return output::json(&checks.iter().map(CheckJson::from).collect::<Vec<_>>());
    }
    if checks.is_empty() {
        return output::lines(&["no broker routes to check"]);
    }
    let lines: Vec<String> =
        checks.iter().map(|c| format!("{} ({}, {}): ok, {}", c.route, c.provider, c.secret, c.detail)).collect();
    output::lines(&lines)
}

/// `[{"route","provider","secret","ok","detail"}]`.
#[derive(Serialize)]
struct CheckJson<'a> {
    route: &'a str,
    provider: &'a str,
    secret: &'a str,
    ok: bool,
    detail: &'a str,
}

impl<'a> From<&'a ProviderCheck> for CheckJson<'a> {
    fn from(c: &'a ProviderCheck) -> Self {
        CheckJson { route: &c.route, provider: &c.provider, secret: &c.secret, ok: c.ok, detail: &c.detail }
    }
}
