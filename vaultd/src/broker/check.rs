//! Live provider checks: does this credential work at its provider? Through
//! the route's own client (its upstream, TLS roots and timeouts), with the
//! request each provider offers for it: Anthropic and OpenAI list models,
//! Telegram `getMe`, Slack `auth.test`, Discord and GitHub the current user.
//! The answer names the provider's reason, never the value (masked if the
//! provider echoes it). Every check is recorded (`provider.check`); a failed
//! one raises an alert. A rotation may test its new value with a route's
//! check instead of a hook's test step ([`RotationChecks`]).

use super::Broker;
use super::config::Provider;
use super::route::Route;
use super::scan::{Needles, Scanner};
use super::upstream::Body;
use crate::audit::{Actor, Event, Kind, Outcome};
use crate::crypto::SecretBytes;
use crate::vault::{ProviderCheck, SecretRef, VaultError};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

/// A reply body read for a check's verdict at most.
const MAX_REPLY: usize = 64 << 10;

/// How a check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub route: String,
    pub provider: &'static str,
    pub secret: String,
    pub ok: bool,
    /// What the provider said (an account name, or why it refused).
    pub detail: String,
}

impl Broker {
    /// The first of `names` that names no route.
    pub fn unknown_route<'a>(&self, names: &'a [String]) -> Option<&'a str> {
        names.iter().find(|n| !self.routes.contains_key(*n)).map(String::as_str)
    }

    /// Checks the current value of each route named (all when `names` is
    /// empty; unknown names are skipped: ask [`Broker::unknown_route`] first).
    pub async fn check(&self, names: &[String], actor: &Actor) -> Result<Vec<Checked>, VaultError> {
        let mut routes: Vec<Arc<Route>> = if names.is_empty() {
            self.routes.values().cloned().collect()
        } else {
            names.iter().filter_map(|n| self.routes.get(n).cloned()).collect()
        };
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        let mut results = Vec::with_capacity(routes.len());
        for route in routes {
            let secret = SecretRef { env: &route.env, name: &route.secret };
            let value = self.vault.use_for_vaultd(secret, "provider check").map_err(|e| e.to_string());
            let value = value.as_ref().map(|(_, value)| value).map_err(String::clone);
            results.push(self.check_recorded(&route, value, actor, None).await?);
        }
        Ok(results)
    }

    /// Checks `value` (or says why there is none to check) at `route`'s
    /// provider, and records how it went (`provider.check`; with the version
    /// when it tests a rotation's new value).
    async fn check_recorded(
        &self,
        route: &Route,
        value: Result<&SecretBytes, String>,
        actor: &Actor,
        version: Option<u64>,
    ) -> Result<Checked, VaultError> {
        let verdict = match value {
            Ok(value) => check_value(route, value).await,
            Err(why) => Err(why),
        };
        let checked = Checked {
            route: route.name.clone(),
            provider: route.provider.as_str(),
            secret: format!("{}/{}", route.env, route.secret),
            ok: verdict.is_ok(),
            detail: verdict.unwrap_or_else(|why| why),
        };
        let mut event = Event::new(Kind::ProviderCheck, if checked.ok { Outcome::Ok } else { Outcome::Failed }, actor)
            .secret(&route.env, &route.secret)
            .with("route", checked.route.clone())
            .with("provider", checked.provider)
            .with("detail", checked.detail.clone());
        if let Some(version) = version {
            event = event.with("version", version).with("purpose", "rotation test");
        }
        self.vault.record(event)?;
        Ok(checked)
    }
}

/// The broker's side of rotations tested by a route's check (`--check
/// ROUTE`): the vault holds this, and it holds the broker weakly (the broker
/// holds the vault).
pub(super) struct RotationChecks(pub(super) Weak<Broker>);

impl RotationChecks {
    /// The route that may test values of `secret`, or why there is none.
    fn route(&self, route: &str, secret: SecretRef<'_>) -> Result<(Arc<Broker>, Arc<Route>), String> {
        let broker = self.0.upgrade().ok_or("the broker has stopped")?;
        let found = broker.routes.get(route).cloned().ok_or_else(|| format!("no route named {route:?} in [broker]"))?;
        if (found.env.as_str(), found.secret.as_str()) != (secret.env, secret.name) {
            return Err(format!(
                "route {route} carries {}/{}, not {}/{}: a new value is only sent where the old one goes",
                found.env, found.secret, secret.env, secret.name
            ));
        }
        if found.provider == Provider::Generic {
            return Err(format!("route {route} is generic: there is no built-in check for it"));
        }
        Ok((broker, found))
    }
}

impl ProviderCheck for RotationChecks {
    fn refuses(&self, route: &str, secret: SecretRef<'_>) -> Option<String> {
        self.route(route, secret).err()
    }

    fn check<'a>(
        &'a self,
        actor: &'a Actor,
        route: &'a str,
        secret: SecretRef<'a>,
        version: u64,
        value: &'a SecretBytes,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let (broker, route) = self.route(route, secret)?;
            let checked = broker.check_recorded(&route, Ok(value), actor, Some(version)).await;
            match checked.map_err(|e| e.to_string())? {
                Checked { ok: true, .. } => Ok(()),
                Checked { detail, .. } => Err(detail),
            }
        })
    }
}

/// Whether `value` works at `route`'s provider: `Ok(who it is)` or `Err(why not)`.
pub(super) async fn check_value(route: &Route, value: &SecretBytes) -> Result<String, String> {
    let (method, path) = match route.provider {
        Provider::Anthropic | Provider::Openai => ("GET", "/v1/models"),
        Provider::Telegram => ("GET", "/botTOKEN/getMe"),
        Provider::Slack => ("POST", "/api/auth.test"),
        Provider::Discord => ("GET", "/api/v10/users/@me"),
        Provider::Github => ("GET", "/user"),
        Provider::Generic => return Err("no built-in check for a generic route".into()),
    };
    let uri = route.upstream_uri(path, value).map_err(|e| e.to_owned())?;
    let body: Body = Empty::new().map_err(|e| match e {}).boxed();
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("user-agent", concat!("vaultd/", env!("CARGO_PKG_VERSION")))
        .header("accept", "application/json");
    if route.provider == Provider::Anthropic {
        req = req.header("anthropic-version", "2023-06-01");
    }
    let mut req = req.body(body).map_err(|_| "the check request cannot be made".to_owned())?;
    if let Some(header) = route.header(value) {
        let (name, value) = header?;
        req.headers_mut().insert(name, value);
    }
    let reply = tokio::time::timeout(route.config.timeout, route.client.request(req))
        .await
        .map_err(|_| "the provider did not answer in time".to_owned())?
        .map_err(|e| format!("cannot reach the provider: {}", root_cause(&e)))?;
    let status = reply.status();
    let mut body = reply.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map(|f| f.into_data()) else { break };
        if let Ok(data) = data {
            bytes.extend_from_slice(&data);
            if bytes.len() > MAX_REPLY {
                break;
            }
        }
    }
    // A provider that names the key it refused must not make us print it.
    let mut scanner = Scanner::new(Arc::new(Needles::new([SecretBytes::new(value.expose().to_vec())], 1)));
    let mut masked = scanner.mask(Bytes::from(bytes)).to_vec();
    masked.extend_from_slice(&scanner.mask_end());
    let reply: Value = serde_json::from_slice(&masked).unwrap_or(Value::Null);
    verdict(route.provider, status, &reply)
}

/// The provider's answer, read as it documents it.
fn verdict(provider: Provider, status: http::StatusCode, reply: &Value) -> Result<String, String> {
    let said = |v: &Value| v.as_str().map(|s| s.chars().take(200).collect::<String>());
    let reason = said(&reply["error"]["message"])
        .or_else(|| said(&reply["description"]))
        .or_else(|| said(&reply["error"]))
        .or_else(|| said(&reply["message"]))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("no reason given").into());
    let ok_flag = reply["ok"].as_bool();
    if !status.is_success() || ok_flag == Some(false) {
        return Err(format!("HTTP {}: {reason}", status.as_u16()));
    }
    Ok(match provider {
        Provider::Anthropic | Provider::Openai => {
            format!("{} models listed", reply["data"].as_array().map_or(0, Vec::len))
        }
        Provider::Telegram => format!("bot @{}", said(&reply["result"]["username"]).unwrap_or_default()),
        Provider::Slack => {
            format!("{} in {}", said(&reply["user"]).unwrap_or_default(), said(&reply["team"]).unwrap_or_default())
        }
        Provider::Discord => format!("user {}", said(&reply["username"]).unwrap_or_default()),
        Provider::Github => format!("user {}", said(&reply["login"]).unwrap_or_default()),
        Provider::Generic => String::new(),
    })
}

/// The innermost cause of an error (what a person can act on).
pub(super) fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_each_providers_answer() {
        let ok = http::StatusCode::OK;
        assert_eq!(
            verdict(Provider::Telegram, ok, &json!({"ok": true, "result": {"username": "b"}})),
            Ok("bot @b".into())
        );
        assert_eq!(
            verdict(Provider::Slack, ok, &json!({"ok": false, "error": "invalid_auth"})),
            Err("HTTP 200: invalid_auth".into())
        );
        let refused =
            json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}});
        assert_eq!(
            verdict(Provider::Anthropic, http::StatusCode::UNAUTHORIZED, &refused),
            Err("HTTP 401: invalid x-api-key".into())
        );
        assert_eq!(verdict(Provider::Openai, ok, &json!({"data": [{}, {}]})), Ok("2 models listed".into()));
    }
}
