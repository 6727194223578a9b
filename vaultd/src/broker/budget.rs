//! Budgets per client and route: requests per minute and per day, tokens per
//! day (from the provider's `usage`), and cost per day (from the route's price
//! table). Days are UTC days on vaultd's clock; a new day starts every count
//! at zero. Kept in memory: a restart starts them again too.

use super::config::Budget;
use super::route::Route;
use super::usage::Tokens;
use std::collections::BTreeMap;
use std::sync::Mutex;

const DAY: i64 = 86_400;

/// What one client spent on one route.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spent {
    pub day: i64,
    pub minute: i64,
    pub requests_this_minute: u64,
    pub requests_today: u64,
    pub tokens_today: u64,
    pub cost_today: f64,
}

impl Spent {
    /// Moved to `now`: a new minute or day starts its counts at zero.
    fn at(mut self, now: i64) -> Spent {
        let (day, minute) = (now.div_euclid(DAY), now.div_euclid(60));
        if self.day != day {
            self = Spent { day, ..Spent::default() };
        }
        if self.minute != minute {
            self.minute = minute;
            self.requests_this_minute = 0;
        }
        self
    }

    /// Why another request would be over `budget`, if it would.
    fn over(&self, budget: &Budget) -> Option<String> {
        let checks = [
            (budget.requests_per_minute, self.requests_this_minute, "requests this minute"),
            (budget.requests_per_day, self.requests_today, "requests today"),
            (budget.tokens_per_day, self.tokens_today, "tokens today"),
        ];
        for (limit, used, what) in checks {
            if let Some(limit) = limit.filter(|l| used >= *l) {
                return Some(format!("{used} of {limit} {what}"));
            }
        }
        let cost = budget.cost_per_day.filter(|c| self.cost_today >= *c)?;
        Some(format!("a cost of {:.4} of {cost:.4} today", self.cost_today))
    }
}

/// A client's use of a route, for `vaultctl budget`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub client: String,
    pub route: String,
    pub spent: Spent,
    pub budget: Budget,
    /// When today's counts start again (unix seconds).
    pub resets_unix: i64,
}

impl Row {
    /// Whether the next request would be refused.
    pub fn over(&self) -> bool {
        self.spent.over(&self.budget).is_some()
    }
}

#[derive(Default)]
pub(super) struct Budgets {
    spent: Mutex<BTreeMap<(String, String), Spent>>,
}

impl Budgets {
    /// Counts a request by `client` on `route` at `now`, or says why it is
    /// over budget (and counts nothing).
    pub(super) fn admit(&self, client: &str, route: &Route, now: i64) -> Result<(), String> {
        let budget = route.budget_of(client);
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        let entry = spent.entry((client.to_owned(), route.name.clone())).or_default();
        *entry = entry.at(now);
        if let Some(why) = entry.over(&budget) {
            let resets = if why.contains("minute") { "next minute" } else { "00:00 UTC" };
            return Err(format!("client {client} on route {}: {why}; resets at {resets}", route.name));
        }
        entry.requests_this_minute += 1;
        entry.requests_today += 1;
        Ok(())
    }

    /// Adds what a reply said it used.
    pub(super) fn charge(&self, client: &str, route: &Route, tokens: Tokens, model: Option<&str>, now: i64) {
        if tokens == Tokens::default() {
            return;
        }
        let price = model.and_then(|m| route.config.prices.get(m));
        let cost = price.map_or(0.0, |p| (tokens.input as f64 * p.input + tokens.output as f64 * p.output) / 1e6);
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        let entry = spent.entry((client.to_owned(), route.name.clone())).or_default();
        *entry = entry.at(now);
        entry.tokens_today = entry.tokens_today.saturating_add(tokens.input.saturating_add(tokens.output));
        entry.cost_today += cost;
    }

    /// Every client's use of every route it used today, and every client
    /// budget the config names.
    pub(super) fn rows<'a>(&self, routes: impl Iterator<Item = &'a Route>, now: i64) -> Vec<Row> {
        let spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        let resets_unix = (now.div_euclid(DAY) + 1) * DAY;
        let mut rows = Vec::new();
        for route in routes {
            let named = route.config.clients.keys().map(String::as_str);
            let used = spent.keys().filter(|(_, r)| *r == route.name).map(|(c, _)| c.as_str());
            let mut clients: Vec<&str> = named.chain(used).collect();
            clients.sort_unstable();
            clients.dedup();
            for client in clients {
                let key = (client.to_owned(), route.name.clone());
                let spent = spent.get(&key).copied().unwrap_or_default().at(now);
                let budget = route.budget_of(client);
                rows.push(Row { client: client.into(), route: route.name.clone(), spent, budget, resets_unix });
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn limits_reset_each_minute_and_day() {
        let budget = Budget { requests_per_minute: Some(2), tokens_per_day: Some(100), ..Budget::default() };
        let t = 10 * DAY + 30;
        let mut s = Spent::default().at(t);
        s.requests_this_minute = 2;
        assert!(s.over(&budget).unwrap().contains("2 of 2 requests this minute"));
        let s = s.at(t + 60);
        assert_eq!(s.over(&budget), None);
        let s = Spent { tokens_today: 100, ..s };
        assert!(s.over(&budget).unwrap().contains("100 of 100 tokens today"));
        assert_eq!(s.at(t + DAY).over(&budget), None, "a new day");
        let cost = Budget { cost_per_day: Some(1.5), ..Budget::default() };
        assert!(Spent { cost_today: 1.5, ..s }.over(&cost).is_some());
        assert!(Spent { cost_today: 1.4, ..s }.over(&cost).is_none());
    }
}
