//! `vaultctl budget`: each client's use of each broker route today, against
//! its budget (requests per minute and day, tokens and cost per day).

use serde::Serialize;
use vault_proto::v1::{BudgetUse, BudgetsRequest};

use crate::Global;
use crate::daemon::{self, Reply as _};
use crate::output;

pub(crate) async fn run(global: &Global) -> anyhow::Result<()> {
    let budgets = fetch(global).await?;
    if global.json {
        return output::json(&budgets.iter().map(BudgetJson::from).collect::<Vec<_>>());
    }
    if budgets.is_empty() {
        return output::lines(&["no brokered use today"]);
    }
    let rows: Vec<Vec<String>> = budgets.iter().map(row).collect();
    output::table(&["CLIENT", "ROUTE", "REQ/MIN", "REQ TODAY", "TOKENS TODAY", "COST TODAY", "STATE"], &rows)
}

pub(crate) async fn fetch(global: &Global) -> anyhow::Result<Vec<BudgetUse>> {
    let mut broker = daemon::broker_admin(global).await?;
    Ok(broker.budgets(BudgetsRequest {}).await.reply()?.budgets)
}

/// `used/limit`, or `used` when unlimited.
fn of<T: std::fmt::Display>(used: T, limit: Option<T>) -> String {
    match limit {
        Some(limit) => format!("{used}/{limit}"),
        None => used.to_string(),
    }
}

fn row(b: &BudgetUse) -> Vec<String> {
    vec![
        b.client.clone(),
        b.route.clone(),
        of(b.requests_this_minute, b.requests_per_minute),
        of(b.requests_today, b.requests_per_day),
        of(b.tokens_today, b.tokens_per_day),
        of(format!("{:.4}", b.cost_today), b.cost_per_day.map(|c| format!("{c:.4}"))),
        if b.over { "OVER BUDGET".into() } else { "ok".into() },
    ]
}

/// The status lines of clients over budget (for `vaultctl status`).
pub(crate) fn over_lines(budgets: &[BudgetUse]) -> Vec<String> {
    budgets
        .iter()
        .filter(|b| b.over)
        .map(|b| format!("over budget: client {} on route {} (see `vaultctl budget`)", b.client, b.route))
        .collect()
}

/// `[{"client","route","requests_this_minute","requests_today","tokens_today","cost_today",
/// "requests_per_minute","requests_per_day","tokens_per_day","cost_per_day","resets_unix","over"}]`;
/// a limit is null when unlimited.
#[derive(Serialize)]
struct BudgetJson<'a> {
    client: &'a str,
    route: &'a str,
    requests_this_minute: u64,
    requests_today: u64,
    tokens_today: u64,
    cost_today: f64,
    requests_per_minute: Option<u64>,
    requests_per_day: Option<u64>,
    tokens_per_day: Option<u64>,
    cost_per_day: Option<f64>,
    resets_unix: i64,
    over: bool,
}

impl<'a> From<&'a BudgetUse> for BudgetJson<'a> {
    fn from(b: &'a BudgetUse) -> Self {
        BudgetJson {
            client: &b.client,
            route: &b.route,
            requests_this_minute: b.requests_this_minute,
            requests_today: b.requests_today,
            tokens_today: b.tokens_today,
            cost_today: b.cost_today,
            requests_per_minute: b.requests_per_minute,
            requests_per_day: b.requests_per_day,
            tokens_per_day: b.tokens_per_day,
            cost_per_day: b.cost_per_day,
            resets_unix: b.resets_unix,
            over: b.over,
        }
    }
}
