//! `[broker]`, `[[broker.route]]` and `[[broker.budget]]` in the config file.

use crate::config::duration_value;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `[broker]`: where the credential broker listens and what it forwards where.
/// No route: no broker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// The broker's unix socket (HTTP/1.1). Callers are named by the kernel, as
    /// on the agent socket. Default: `broker.sock` beside the agent socket.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Mode of the socket, like `agent_socket_mode` (default "0600").
    #[serde(default = "owner_only", deserialize_with = "crate::config::octal_mode")]
    pub socket_mode: u32,
    /// A loopback TCP address (`127.0.0.1:PORT` or `[::1]:PORT`) for SDKs that
    /// only speak TCP. Callers there must present a vaultd token (see SECURITY.md).
    #[serde(default, deserialize_with = "loopback")]
    pub listen: Option<SocketAddr>,
    /// Connections open at once, in all and per uid (the owner has its own slots).
    #[serde(default = "default_connections")]
    pub connections: usize,
    #[serde(default = "default_connections_per_uid")]
    pub connections_per_uid: usize,
    /// How long a caller may take to send a request's headers.
    #[serde(default = "default_header_timeout", deserialize_with = "duration_value")]
    pub header_timeout: Duration,
    /// Stored values shorter than this are not looked for by the exfiltration
    /// guard (a one-character value would match every request).
    #[serde(default = "default_guard_min_len")]
    pub guard_min_len: usize,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            socket: None,
            socket_mode: owner_only(),
            listen: None,
            connections: default_connections(),
            connections_per_uid: default_connections_per_uid(),
            header_timeout: default_header_timeout(),
            guard_min_len: default_guard_min_len(),
            routes: Vec::new(),
        }
    }
}

/// One upstream the broker forwards to: `/{name}/…` → `{upstream}/…` with
/// `secret` attached the way `provider` expects it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    pub provider: Provider,
    /// `https://host[:port][/base]`.
    pub upstream: String,
    /// `env/name` of the secret to attach.
    pub secret: String,
    /// The header the value goes in, overriding the provider's (with `format`).
    #[serde(default)]
    pub header: Option<String>,
    /// The header's value, `{value}` standing for the secret (default `{value}`).
    #[serde(default)]
    pub format: Option<String>,
    /// PEM file of CA certificates trusted for this upstream, besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long to wait for a connection, and for the reply's headers or its
    /// next chunk.
    #[serde(default = "default_connect_timeout", deserialize_with = "duration_value")]
    pub connect_timeout: Duration,
    #[serde(default = "default_timeout", deserialize_with = "duration_value")]
    pub timeout: Duration,
    /// `[broker.route.budget]`: every client's budget on this route (each
    /// client has its own).
    #[serde(default)]
    pub budget: Budget,
    /// `[broker.route.clients.NAME]`: a client's budget instead of `budget`.
    #[serde(default)]
    pub clients: BTreeMap<String, Budget>,
    /// Prices per million tokens by model, for `cost_per_day`.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
}

/// Limits of one client on one route; unset: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub requests_per_day: Option<u64>,
    /// Tokens (input and output) per day, from the provider's `usage`.
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    /// In the price table's currency, per day.
    #[serde(default)]
    pub cost_per_day: Option<f64>,
}

/// Price of a million tokens, input and output.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

/// Who is at the other end of a route: how the secret is attached, what an
/// error looks like, how usage is reported, and how a credential is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Anthropic,
    Openai,
    Telegram,
    Slack,
    Discord,
    Github,
    /// Any other HTTP API: `header` (and `format`) say how.
    Generic,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::Openai => "openai",
            Provider::Telegram => "telegram",
            Provider::Slack => "slack",
            Provider::Discord => "discord",
            Provider::Github => "github",
            Provider::Generic => "generic",
        }
    }
}

fn owner_only() -> u32 {
    0o600
}

fn default_connections() -> usize {
    1024
}

fn default_connections_per_uid() -> usize {
    128
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_guard_min_len() -> usize {
    8
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_timeout() -> Duration {
    Duration::from_secs(600)
}

fn loopback<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    let addr: SocketAddr =
        text.parse().map_err(|_| serde::de::Error::custom(format!("listen {text:?}: expected IP:PORT")))?;
    if !addr.ip().is_loopback() {
        return Err(serde::de::Error::custom(format!(
            "listen {text:?}: only a loopback address (127.0.0.1, ::1): the broker attaches keys for whoever reaches it"
        )));
    }
    Ok(Some(addr))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::config::Config;

    #[test]
    fn parses_routes_and_budgets() {
        let text = r#"
            [broker]
            listen = "127.0.0.1:8080"
            [[broker.route]]
            name = "anthropic"
            provider = "anthropic"
            upstream = "https://api.anthropic.com"
            secret = "prod/anthropic"
            timeout = "30s"
            budget = { tokens_per_day = 1000 }
            [broker.route.prices."claude-x"]
            input = 3.0
            output = 15.0
            [broker.route.clients.bot]
            requests_per_minute = 5
        "#;
        let broker = toml::from_str::<Config>(text).unwrap().broker;
        assert_eq!(broker.listen.unwrap().port(), 8080);
        let route = &broker.routes[0];
        assert_eq!(route.budget.tokens_per_day, Some(1000));
        assert_eq!(route.timeout, std::time::Duration::from_secs(30));
        assert_eq!(route.prices["claude-x"].output, 15.0);
        assert_eq!(route.clients["bot"].requests_per_minute, Some(5));
        assert!(toml::from_str::<Config>("[broker]\nroute = [{ name = \"x\", budget = { typo = 1 } }]").is_err());
        assert!(toml::from_str::<Config>("[broker]\nlisten = \"0.0.0.0:80\"").is_err());
        assert!(toml::from_str::<Config>("[[broker.route]]\nname = \"x\"\nprovider = \"carrier-pigeon\"").is_err());
    }
}
