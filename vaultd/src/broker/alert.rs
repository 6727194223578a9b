//! Security alerts to an admin: `[[alert]]` sinks (a webhook's JSON POST, a
//! Telegram message, a command given the JSON on stdin), fed by the audit log
//! as it is committed, so an alert names only what an entry records (names
//! and numbers, never a value). Rate-limited: one alert per kind and subject
//! per [`REPEAT_AFTER`] (the ones held back are counted in the next), at most
//! [`MAX_PER_MINUTE`] in all. Each delivery is itself audited (`alert.sent`,
//! `alert.failed`).
//!
//! What raises one: an exfiltration attempt, a budget or rate limit exceeded,
//! a burst of refused tokens or denied reads ([`BURST`] in a minute, or a
//! counted summary of refusals), an integrity violation, a failed provider
//! check, a revoke-all, and anomalies once a client has been seen for
//! [`LEARNING`]: a secret it never used before, or a minute with ten times
//! its usual rate (and at least [`BURST`]).

use super::upstream::{self, Body, HttpsClient};
use crate::audit::{Actor, Event, Kind, Outcome, batch};
use crate::store::AuditRow;
use crate::vault::{SecretRef, Vault};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// The same alert (kind and subject) at most this often.
pub const REPEAT_AFTER: Duration = Duration::from_secs(60);
/// Alerts sent per minute, all together.
pub const MAX_PER_MINUTE: usize = 20;
/// Refusals in a minute that make a burst.
pub const BURST: usize = 10;
/// How long a client is watched before its habits count.
pub const LEARNING: Duration = Duration::from_secs(7 * 86_400);
/// How long a delivery may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Alerts waiting for delivery; past it they are dropped (and counted).
const QUEUE: usize = 64;

/// One `[[alert]]` sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum AlertConfig {
    /// A JSON POST of the alert to `url` (https).
    Webhook {
        url: String,
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
    /// A message to `chat_id`, sent with the bot token stored as `secret` (`env/name`).
    Telegram {
        secret: String,
        chat_id: String,
        #[serde(default = "telegram_api")]
        api: String,
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
    /// `argv` run with the alert's JSON on stdin (no shell, an empty environment).
    Command { argv: Vec<String> },
}

fn telegram_api() -> String {
    "https://api.telegram.org".into()
}

/// What an alert is about (its name in the JSON: `exfiltration_attempt`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    ExfiltrationAttempt,
    BudgetExceeded,
    RateLimitExceeded,
    /// A counted summary of refusals.
    RefusalsBurst,
    RefusedTokensBurst,
    DeniedReadsBurst,
    IntegrityViolation,
    ProviderCheckFailed,
    RevokeAll,
    /// A client used a secret it never used before (after [`LEARNING`]).
    NewSecretUsed,
    /// A client's minute at ten times its usual rate (after [`LEARNING`]).
    UnusualRate,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::ExfiltrationAttempt => "exfiltration_attempt",
            AlertKind::BudgetExceeded => "budget_exceeded",
            AlertKind::RateLimitExceeded => "rate_limit_exceeded",
            AlertKind::RefusalsBurst => "refusals_burst",
            AlertKind::RefusedTokensBurst => "refused_tokens_burst",
            AlertKind::DeniedReadsBurst => "denied_reads_burst",
            AlertKind::IntegrityViolation => "integrity_violation",
            AlertKind::ProviderCheckFailed => "provider_check_failed",
            AlertKind::RevokeAll => "revoke_all",
            AlertKind::NewSecretUsed => "new_secret_used",
            AlertKind::UnusualRate => "unusual_rate",
        }
    }
}

/// An alert: what happened, to whom, how often.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub kind: AlertKind,
    /// The client, uid or secret it is about (what its rate limit is keyed on).
    pub subject: String,
    pub fields: serde_json::Map<String, Value>,
}

impl Alert {
    fn json(&self, suppressed: u64) -> Value {
        let mut all = self.fields.clone();
        all.insert("alert".into(), self.kind.as_str().into());
        all.insert("subject".into(), self.subject.clone().into());
        all.insert("suppressed".into(), suppressed.into());
        all.insert("time_unix".into(), crate::clock::now_unix().into());
        Value::Object(all)
    }

    fn text(&self, suppressed: u64) -> String {
        let details: Vec<String> = self.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let more = if suppressed > 0 { format!(" ({suppressed} more held back)") } else { String::new() };
        format!("vaultd alert: {} ({}) {}{more}", self.kind.as_str().replace('_', " "), self.subject, details.join(" "))
    }
}

enum Sink {
    Webhook { url: http::Uri, client: HttpsClient },
    Telegram { secret: (String, String), chat_id: String, api: String, client: HttpsClient },
    Command { argv: Vec<String> },
}

impl Sink {
    fn new(config: &AlertConfig, roots: &rustls::RootCertStore) -> Result<Sink, String> {
        let client = |ca_file: &Option<PathBuf>| upstream::client(roots, ca_file.as_deref(), SEND_TIMEOUT);
        Ok(match config {
            AlertConfig::Webhook { url, ca_file } => {
                let url: http::Uri = url.parse().map_err(|e| format!("[[alert]] webhook url {url:?}: {e}"))?;
                if url.scheme_str() != Some("https") {
                    return Err(format!("[[alert]] webhook url {url}: expected https://"));
                }
                Sink::Webhook { url, client: client(ca_file)? }
            }
            AlertConfig::Telegram { secret, chat_id, api, ca_file } => {
                let (env, name) = secret
                    .split_once('/')
                    .ok_or_else(|| format!("[[alert]] telegram secret {secret:?}: expected ENV/NAME"))?;
                SecretRef::parse(env, name).map_err(|e| format!("[[alert]] telegram secret: {e}"))?;
                let secret = (env.to_owned(), name.to_owned());
                Sink::Telegram {
                    secret,
                    chat_id: chat_id.clone(),
                    api: api.trim_end_matches('/').into(),
                    client: client(ca_file)?,
                }
            }
            AlertConfig::Command { argv } if argv.is_empty() => return Err("[[alert]] command: argv is empty".into()),
            AlertConfig::Command { argv } => Sink::Command { argv: argv.clone() },
        })
    }

    fn name(&self) -> String {
        match self {
            Sink::Webhook { url, .. } => format!("webhook:{}", url.authority().map(|a| a.as_str()).unwrap_or("?")),
            Sink::Telegram { chat_id, .. } => format!("telegram:{chat_id}"),
            Sink::Command { argv } => format!("command:{}", argv[0]),
        }
    }

    async fn send(&self, vault: &Vault, alert: &Alert, suppressed: u64) -> Result<(), String> {
        match self {
            Sink::Webhook { url, client } => post(client, url.clone(), alert.json(suppressed)).await,
            Sink::Telegram { secret, chat_id, api, client } => {
                let (env, name) = (&secret.0, &secret.1);
                let (_, token) = vault
                    .use_for_vaultd(SecretRef { env, name }, "alert")
                    .map_err(|_| format!("the bot token {env}/{name} cannot be read"))?;
                let token = std::str::from_utf8(token.expose()).map_err(|_| "the bot token is not text".to_owned())?;
                let url =
                    format!("{api}/bot{token}/sendMessage").parse().map_err(|_| "a bad Telegram URL".to_owned())?;
                let message = json!({"chat_id": chat_id, "text": alert.text(suppressed)});
                // The URL holds the token: errors name the sink, never it.
                post(client, url, message).await.map_err(|_| "the Telegram API refused or failed".to_owned())
            }
            Sink::Command { argv } => run_command(argv, alert.json(suppressed)).await,
        }
    }
}

async fn post(client: &HttpsClient, url: http::Uri, body: Value) -> Result<(), String> {
    let body: Body = Full::new(Bytes::from(body.to_string())).map_err(|e| match e {}).boxed();
    let req =
        http::Request::post(url).header("content-type", "application/json").body(body).map_err(|e| e.to_string())?;
    let reply = tokio::time::timeout(SEND_TIMEOUT, client.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| format!("{e}"))?;
    let status = reply.status();
    let _ = tokio::time::timeout(SEND_TIMEOUT, reply.into_body().collect()).await;
    if status.is_success() { Ok(()) } else { Err(format!("HTTP {status}")) }
}

async fn run_command(argv: &[String], body: Value) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(body.to_string().as_bytes()).await;
    }
    match tokio::time::timeout(SEND_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("exited with {status}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Starts the alerting task for `configs` (none: nothing to do).
pub fn spawn(vault: Arc<Vault>, configs: &[AlertConfig]) -> Result<Option<tokio::task::JoinHandle<()>>, String> {
    if configs.is_empty() {
        return Ok(None);
    }
    let roots = upstream::system_roots();
    let sinks: Vec<Sink> = configs.iter().map(|c| Sink::new(c, &roots)).collect::<Result<_, _>>()?;
    let rows = vault.subscribe();
    let (tx, rx) = mpsc::channel(QUEUE);
    let deliveries = tokio::spawn(deliver(vault.clone(), sinks, rx));
    Ok(Some(tokio::spawn(async move {
        watch(rows, tx).await;
        deliveries.abort();
    })))
}

/// Turns committed entries into alerts, rate-limited, for delivery.
async fn watch(mut rows: broadcast::Receiver<Arc<AuditRow>>, tx: mpsc::Sender<(Alert, u64)>) {
    let (mut detector, mut limiter) = (Detector::default(), Limiter::default());
    loop {
        let row = match rows.recv().await {
            Ok(row) => row,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "alerting fell behind the audit log; entries skipped");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        for entry in batch::entries(AuditRow::clone(&row)) {
            let now = crate::clock::now_ms();
            let Some(alert) = detector.observe(&entry, now) else { continue };
            if let Some(suppressed) = limiter.allow(&alert, now)
                && tx.try_send((alert, suppressed)).is_err()
            {
                tracing::warn!("alert queue full; an alert was dropped");
            }
        }
    }
}

async fn deliver(vault: Arc<Vault>, sinks: Vec<Sink>, mut rx: mpsc::Receiver<(Alert, u64)>) {
    while let Some((alert, suppressed)) = rx.recv().await {
        for sink in &sinks {
            let result = sink.send(&vault, &alert, suppressed).await;
            let (outcome, kind) = match &result {
                Ok(()) => (Outcome::Ok, Kind::AlertSent),
                Err(_) => (Outcome::Failed, Kind::AlertFailed),
            };
            let mut event = Event::new(kind, outcome, &Actor::vaultd())
                .with("alert", alert.kind.as_str())
                .with("subject", alert.subject.clone())
                .with("sink", sink.name())
                .with("suppressed", suppressed);
            if let Err(why) = result {
                tracing::warn!(sink = %sink.name(), alert = alert.kind.as_str(), %why, "alert not delivered");
                event = event.with("error", why);
            }
            vault.record_detached(event);
        }
    }
}

/// Per kind and subject: when it was last sent and how many were held back since.
#[derive(Default)]
struct Limiter {
    last: HashMap<(AlertKind, String), (i64, u64)>,
    sent: VecDeque<i64>,
}

impl Limiter {
    /// `Some(held back before it)` when `alert` may go now.
    fn allow(&mut self, alert: &Alert, now: i64) -> Option<u64> {
        let repeat = REPEAT_AFTER.as_millis() as i64;
        while self.sent.front().is_some_and(|t| now - t >= 60_000) {
            self.sent.pop_front();
        }
        if self.last.len() > 10_000 {
            self.last.retain(|_, (at, _)| now - *at < repeat);
        }
        let entry = self.last.entry((alert.kind, alert.subject.clone())).or_insert((i64::MIN, 0));
        if now.saturating_sub(entry.0) < repeat || self.sent.len() >= MAX_PER_MINUTE {
            entry.1 += 1;
            return None;
        }
        self.sent.push_back(now);
        let held = std::mem::take(&mut entry.1);
        entry.0 = now;
        Some(held)
    }
}

/// A client's habits, from what it was allowed to read and use.
struct Habits {
    first_ms: i64,
    secrets: HashSet<String>,
    total: u64,
    minute: i64,
    this_minute: u64,
}

/// Which entries make an alert.
#[derive(Default)]
struct Detector {
    /// Recent refusals by the burst they may make.
    refusals: HashMap<AlertKind, VecDeque<i64>>,
    clients: HashMap<String, Habits>,
}

impl Detector {
    fn observe(&mut self, e: &AuditRow, now: i64) -> Option<Alert> {
        // A row vaultd did not write raises nothing here (the chain's checks report it).
        let entry = Kind::parse(&e.kind)?;
        if matches!(entry, Kind::AlertSent | Kind::AlertFailed) {
            return None;
        }
        let actor: Value = serde_json::from_str(&e.actor).unwrap_or_default();
        let detail: Value = serde_json::from_str(&e.detail).unwrap_or_default();
        let client = actor["client"].as_str().map(str::to_owned);
        let who = client.clone().or_else(|| actor["uid"].as_u64().map(|u| format!("uid {u}"))).unwrap_or_default();
        let mut fields = serde_json::Map::new();
        let mut put = |k: &str, v: Value| {
            if !v.is_null() && v != "" {
                fields.insert(k.into(), v);
            }
        };
        put("client", client.clone().into());
        put("uid", actor["uid"].clone());
        put("secret", e.secret.clone().into());
        put("route", detail["route"].clone());
        let ok = e.outcome == Outcome::Ok.as_str();
        let (kind, subject) = match entry {
            Kind::BrokerExfiltration => (AlertKind::ExfiltrationAttempt, who),
            Kind::BrokerRequest if detail["reason"] == "over budget" => (AlertKind::BudgetExceeded, who),
            Kind::RequestRateLimited => (AlertKind::RateLimitExceeded, who),
            Kind::RequestRefusals => {
                put("count", detail["count"].clone());
                (AlertKind::RefusalsBurst, who)
            }
            Kind::TokenRefused => (AlertKind::RefusedTokensBurst, self.burst(AlertKind::RefusedTokensBurst, now)?),
            Kind::SecretRead | Kind::SecretUse if e.outcome == Outcome::Denied.as_str() => {
                (AlertKind::DeniedReadsBurst, self.burst(AlertKind::DeniedReadsBurst, now)?)
            }
            Kind::IntegrityViolation | Kind::AuditTampered | Kind::AuditJournalDamaged => {
                put("table", detail["table"].clone());
                (AlertKind::IntegrityViolation, e.kind.clone())
            }
            Kind::ProviderCheck if !ok => (AlertKind::ProviderCheckFailed, e.secret.clone()),
            Kind::IncidentRevokeAll | Kind::IncidentApplied => (AlertKind::RevokeAll, "vault".into()),
            Kind::SecretRead | Kind::SecretUse if ok => {
                let (kind, count) = self.habit(client.as_deref()?, &e.secret, now)?;
                put("count", count.into());
                (kind, who)
            }
            _ => return None,
        };
        Some(Alert { kind, subject, fields })
    }

    /// The subject of a burst of `what` when this one makes [`BURST`] in a minute.
    fn burst(&mut self, what: AlertKind, now: i64) -> Option<String> {
        let recent = self.refusals.entry(what).or_default();
        recent.push_back(now);
        while recent.front().is_some_and(|t| now - t >= 60_000) {
            recent.pop_front();
        }
        (recent.len() >= BURST).then(|| format!("{} in a minute", recent.len()))
    }

    /// An anomaly in `client`'s use of `secret`, once its habits are learned.
    fn habit(&mut self, client: &str, secret: &str, now: i64) -> Option<(AlertKind, u64)> {
        if self.clients.len() > 10_000 && !self.clients.contains_key(client) {
            return None;
        }
        let h = self.clients.entry(client.to_owned()).or_insert_with(|| Habits {
            first_ms: now,
            secrets: HashSet::new(),
            total: 0,
            minute: now.div_euclid(60_000),
            this_minute: 0,
        });
        let learned = now - h.first_ms >= LEARNING.as_millis() as i64;
        let minute = now.div_euclid(60_000);
        if h.minute != minute {
            (h.minute, h.this_minute) = (minute, 0);
        }
        h.total += 1;
        h.this_minute += 1;
        let new = h.secrets.len() < 1_000 && h.secrets.insert(secret.to_owned());
        if !learned {
            return None;
        }
        if new {
            return Some((AlertKind::NewSecretUsed, h.total));
        }
        let minutes = ((now - h.first_ms) / 60_000).max(1) as u64;
        let usual = h.total / minutes;
        (h.this_minute >= (10 * usual).max(BURST as u64)).then_some((AlertKind::UnusualRate, h.this_minute))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(kind: Kind, outcome: &str, actor: Value, secret: &str, detail: Value) -> AuditRow {
        AuditRow {
            seq: 1,
            time_unix_ms: 0,
            kind: kind.as_str().into(),
            class: String::new(),
            outcome: outcome.into(),
            actor: actor.to_string(),
            secret: secret.into(),
            detail: detail.to_string(),
            mac: None,
            records: None,
        }
    }

    #[test]
    fn parses_the_sinks() {
        let text = r#"
            [[alert]]
            type = "webhook"
            url = "https://hooks.example/x"
            [[alert]]
            type = "telegram"
            secret = "ops/alert-bot"
            chat_id = "-100"
            [[alert]]
            type = "command"
            argv = ["/usr/local/bin/page"]
        "#;
        let alerts = toml::from_str::<crate::config::Config>(text).unwrap().alerts;
        assert_eq!(alerts.len(), 3);
        assert!(matches!(&alerts[1], AlertConfig::Telegram { api, .. } if api == "https://api.telegram.org"));
        assert!(toml::from_str::<crate::config::Config>("[[alert]]\ntype = \"pager\"").is_err());
        let roots = rustls::RootCertStore::empty();
        let http = AlertConfig::Webhook { url: "http://hooks.example/x".into(), ca_file: None };
        assert!(Sink::new(&http, &roots).is_err(), "plain http is refused");
        assert!(Sink::new(&AlertConfig::Command { argv: vec![] }, &roots).is_err());
    }

    #[test]
    fn entries_that_raise_alerts() {
        let mut d = Detector::default();
        let bot = json!({"client": "bot", "uid": 1000});
        let e = row(Kind::BrokerExfiltration, "denied", bot.clone(), "prod/anthropic", json!({"where": "body"}));
        let alert = d.observe(&e, 0).unwrap();
        assert_eq!((alert.kind, alert.subject.as_str()), (AlertKind::ExfiltrationAttempt, "bot"));
        assert_eq!(alert.fields["secret"], "prod/anthropic");
        let e = row(Kind::BrokerRequest, "denied", bot.clone(), "", json!({"reason": "over budget", "route": "a"}));
        assert_eq!(d.observe(&e, 0).unwrap().kind, AlertKind::BudgetExceeded);
        let e = row(Kind::IncidentRevokeAll, "ok", json!({"uid": 0}), "", json!({}));
        assert_eq!(d.observe(&e, 0).unwrap().kind, AlertKind::RevokeAll);
        let e = row(Kind::IntegrityViolation, "failed", json!({"vaultd": true}), "", json!({"table": "secret"}));
        let alert = d.observe(&e, 0).unwrap();
        assert_eq!((alert.kind, alert.fields["table"].clone()), (AlertKind::IntegrityViolation, json!("secret")));
        let e = row(Kind::AlertSent, "ok", json!({"vaultd": true}), "", json!({}));
        assert_eq!(d.observe(&e, 0), None, "alerts do not alert");
        // A burst: the tenth refused token in a minute.
        let refused = row(Kind::TokenRefused, "denied", json!({"uid": 7}), "", json!({"reason": "unknown"}));
        let raised: Vec<_> = (0..12).filter_map(|i| d.observe(&refused, i * 1000)).collect();
        assert_eq!(raised.len(), 3);
        assert_eq!(raised[0].kind, AlertKind::RefusedTokensBurst);
        assert_eq!(d.observe(&refused, 200_000), None, "the minute passed");
    }

    #[test]
    fn habits_count_after_the_learning_period() {
        let mut d = Detector::default();
        let read = |secret: &str| row(Kind::SecretRead, "ok", json!({"client": "bot"}), secret, json!({"version": 1}));
        assert_eq!(d.observe(&read("prod/a"), 0), None);
        assert_eq!(d.observe(&read("prod/b"), 1000), None, "still learning");
        let later = LEARNING.as_millis() as i64 + 1;
        assert_eq!(d.observe(&read("prod/a"), later), None);
        assert_eq!(d.observe(&read("prod/c"), later).unwrap().kind, AlertKind::NewSecretUsed);
        let burst: Vec<_> = (0..BURST).filter_map(|_| d.observe(&read("prod/a"), later + 1)).collect();
        assert_eq!(burst.last().unwrap().kind, AlertKind::UnusualRate);
    }

    #[test]
    fn alerts_are_rate_limited_and_count_what_they_hold_back() {
        let mut l = Limiter::default();
        let alert = |subject: &str| Alert {
            kind: AlertKind::ExfiltrationAttempt,
            subject: subject.into(),
            fields: Default::default(),
        };
        assert_eq!(l.allow(&alert("bot"), 0), Some(0));
        assert_eq!(l.allow(&alert("bot"), 1000), None);
        assert_eq!(l.allow(&alert("bot"), 2000), None);
        assert_eq!(l.allow(&alert("other"), 2000), Some(0), "another subject");
        assert_eq!(l.allow(&alert("bot"), 61_000), Some(2), "the two held back are counted");
        let sent = (0..100).filter(|i| l.allow(&alert(&format!("s{i}")), 70_000).is_some()).count();
        assert_eq!(sent, MAX_PER_MINUTE - 1, "one was sent within the minute before");
    }
}
