//! A route: where `/{name}/…` goes, how the secret is attached on the way
//! out, and what a refusal looks like to that provider's SDK.

use super::config::{Provider, RouteConfig};
use super::upstream::{self, HttpsClient};
use crate::crypto::SecretBytes;
use http::header::{HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use serde_json::json;
use vault_proto::names;

/// How the secret travels to the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Injection {
    /// `header: {prefix}{value}{suffix}`.
    Header { name: HeaderName, prefix: String, suffix: String },
    /// In the path, Telegram's way: `/bot{value}/METHOD`.
    TelegramPath,
}

pub(super) struct Route {
    pub(super) name: String,
    pub(super) provider: Provider,
    pub(super) env: String,
    pub(super) secret: String,
    /// `https://host[:port]`, and a base path without its trailing `/`.
    origin: (http::uri::Scheme, http::uri::Authority),
    base: String,
    pub(super) injection: Injection,
    pub(super) client: HttpsClient,
    pub(super) config: RouteConfig,
}

impl Route {
    pub(super) fn new(config: RouteConfig, roots: &rustls::RootCertStore) -> Result<Route, String> {
        let name = config.name.clone();
        let bad = |why: String| format!("[[broker.route]] {name:?}: {why}");
        names::validate(&name).map_err(|e| bad(format!("invalid name: {e}")))?;
        let (env, secret) = config
            .secret
            .split_once('/')
            .ok_or_else(|| bad(format!("secret {:?}: expected ENV/NAME", config.secret)))?;
        names::validate(env).map_err(|e| bad(format!("secret's environment: {e}")))?;
        names::validate(secret).map_err(|e| bad(format!("secret's name: {e}")))?;
        let uri: Uri = config.upstream.parse().map_err(|e| bad(format!("upstream {:?}: {e}", config.upstream)))?;
        if uri.scheme_str() != Some("https") || uri.query().is_some() {
            return Err(bad(format!("upstream {:?}: expected https://HOST[:PORT][/PATH]", config.upstream)));
        }
        let parts = uri.into_parts();
        let (Some(scheme), Some(authority)) = (parts.scheme, parts.authority) else {
            return Err(bad("upstream: no host".into()));
        };
        let base = parts.path_and_query.map(|p| p.path().trim_end_matches('/').to_owned()).unwrap_or_default();
        let injection = injection(&config).map_err(bad)?;
        let client = upstream::client(roots, config.ca_file.as_deref(), config.connect_timeout).map_err(bad)?;
        Ok(Route {
            name,
            provider: config.provider,
            env: env.into(),
            secret: secret.into(),
            origin: (scheme, authority),
            base,
            injection,
            client,
            config,
        })
    }

    /// The upstream URI for `rest` (the path after `/{name}`, with its query),
    /// with the secret in it for a path injection.
    pub(super) fn upstream_uri(&self, rest: &str, value: &SecretBytes) -> Result<Uri, String> {
        let path = match self.injection {
            Injection::TelegramPath => {
                let (_, method) = telegram_placeholder(rest).ok_or("expected /bot<TOKEN>/<METHOD>")?;
                let value = std::str::from_utf8(value.expose()).map_err(|_| "the bot token is not text")?;
                format!("{}/bot{value}/{method}", self.base)
            }
            Injection::Header { .. } => format!("{}{rest}", self.base),
        };
        Uri::builder()
            .scheme(self.origin.0.clone())
            .authority(self.origin.1.clone())
            .path_and_query(path)
            .build()
            .map_err(|_| "the path is not a valid URI".into())
    }

    /// The header to add, for a header injection.
    pub(super) fn header(&self, value: &SecretBytes) -> Option<Result<(HeaderName, HeaderValue), String>> {
        let Injection::Header { name, prefix, suffix } = &self.injection else { return None };
        let mut bytes = Vec::with_capacity(prefix.len() + value.len() + suffix.len());
        bytes.extend_from_slice(prefix.as_bytes());
        bytes.extend_from_slice(value.expose());
        bytes.extend_from_slice(suffix.as_bytes());
        let header = HeaderValue::from_bytes(&bytes).map(|mut v| {
            v.set_sensitive(true);
            (name.clone(), v)
        });
        // Never the value in the message.
        Some(header.map_err(|_| format!("the secret of route {} cannot go in a header", self.name)))
    }

    /// `client`'s budget here: its own, else the route's.
    pub(super) fn budget_of(&self, client: &str) -> super::config::Budget {
        self.config.clients.get(client).copied().unwrap_or(self.config.budget)
    }

    /// The header an SDK sends its key in, where the caller's token stands in.
    pub(super) fn credential_header(&self) -> Option<&HeaderName> {
        match &self.injection {
            Injection::Header { name, .. } => Some(name),
            Injection::TelegramPath => None,
        }
    }
}

/// `/bot{placeholder}/{method…}` → (placeholder, method…).
pub(super) fn telegram_placeholder(rest: &str) -> Option<(&str, &str)> {
    let path = rest.split('?').next()?;
    let tail = path.strip_prefix("/bot")?;
    let (placeholder, method) = tail.split_once('/')?;
    if method.is_empty() {
        return None;
    }
    Some((placeholder, &rest[4 + placeholder.len() + 1..]))
}

fn injection(config: &RouteConfig) -> Result<Injection, String> {
    let (default_header, default_format) = match config.provider {
        Provider::Anthropic => (Some("x-api-key"), "{value}"),
        Provider::Openai | Provider::Slack | Provider::Github => (Some("authorization"), "Bearer {value}"),
        Provider::Discord => (Some("authorization"), "Bot {value}"),
        Provider::Telegram if config.header.is_none() => return Ok(Injection::TelegramPath),
        Provider::Telegram | Provider::Generic => (None, "{value}"),
    };
    let header = config.header.as_deref().or(default_header).ok_or("a generic route needs `header`")?;
    let name =
        HeaderName::from_bytes(header.as_bytes()).map_err(|_| format!("header {header:?} is not a header name"))?;
    let format = config.format.as_deref().unwrap_or(default_format);
    let (prefix, suffix) = format.split_once("{value}").ok_or(format!("format {format:?} has no {{value}}"))?;
    Ok(Injection::Header { name, prefix: prefix.into(), suffix: suffix.into() })
}

/// Why the broker answered instead of the upstream.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Refusal {
    /// No such route, or not granted: the same answer.
    NoRoute(String),
    BadToken,
    TokenRequired,
    /// vaultd's rate limit (ms to wait).
    RateLimited(u64),
    OverBudget(String),
    Exfiltration,
    BadRequest(String),
    Unavailable(String),
    Upstream(String),
    Timeout,
}

impl Refusal {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Refusal::NoRoute(_) => StatusCode::NOT_FOUND,
            Refusal::BadToken | Refusal::TokenRequired => StatusCode::UNAUTHORIZED,
            Refusal::RateLimited(_) | Refusal::OverBudget(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Exfiltration => StatusCode::FORBIDDEN,
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Upstream(_) => StatusCode::BAD_GATEWAY,
            Refusal::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// What the audit record says.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Refusal::NoRoute(_) => "no route or not granted",
            Refusal::BadToken => "token refused",
            Refusal::TokenRequired => "no token",
            Refusal::RateLimited(_) => "rate limited",
            Refusal::OverBudget(_) => "over budget",
            Refusal::Exfiltration => "exfiltration",
            Refusal::BadRequest(_) => "bad request",
            Refusal::Unavailable(_) => "unavailable",
            Refusal::Upstream(_) => "upstream failed",
            Refusal::Timeout => "upstream timed out",
        }
    }

    pub(super) fn message(&self) -> String {
        match self {
            Refusal::NoRoute(name) => format!("vaultd broker: no route {name:?} for this caller"),
            Refusal::BadToken => "vaultd broker: invalid, expired or revoked vaultd token".into(),
            Refusal::TokenRequired => {
                "vaultd broker: a vaultd token is required here (as the API key, or x-vault-token)".into()
            }
            Refusal::RateLimited(ms) => format!("vaultd broker: rate limit exceeded; retry in {ms} ms"),
            Refusal::OverBudget(why) => format!("vaultd broker: over budget: {why}"),
            Refusal::Exfiltration => {
                "vaultd broker: refused: the request carries a value stored in vaultd (alert raised)".into()
            }
            Refusal::BadRequest(why) => format!("vaultd broker: bad request: {why}"),
            Refusal::Unavailable(why) => format!("vaultd broker: unavailable: {why}"),
            Refusal::Upstream(why) => format!("vaultd broker: upstream failed: {why}"),
            Refusal::Timeout => "vaultd broker: the upstream did not answer in time".into(),
        }
    }

    /// The body in `provider`'s own error shape (`None`: no route known, a
    /// neutral shape that says nothing about which routes exist).
    pub(super) fn body(&self, provider: Option<Provider>) -> serde_json::Value {
        let (status, message) = (self.status(), self.message());
        let code = status.as_u16();
        match provider {
            Some(Provider::Anthropic) => {
                let kind = match code {
                    400 => "invalid_request_error",
                    401 => "authentication_error",
                    403 => "permission_error",
                    404 => "not_found_error",
                    429 => "rate_limit_error",
                    _ => "api_error",
                };
                json!({"type": "error", "error": {"type": kind, "message": message}})
            }
            Some(Provider::Openai) => {
                let (kind, code) = match code {
                    401 => ("invalid_request_error", "invalid_api_key"),
                    429 if matches!(self, Refusal::OverBudget(_)) => ("insufficient_quota", "insufficient_quota"),
                    429 => ("requests", "rate_limit_exceeded"),
                    404 => ("invalid_request_error", "not_found"),
                    400 | 403 => ("invalid_request_error", "forbidden"),
                    _ => ("server_error", "server_error"),
                };
                json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
            }
            Some(Provider::Telegram) => json!({"ok": false, "error_code": code, "description": message}),
            Some(Provider::Slack) => {
                let error = match code {
                    401 => "invalid_auth",
                    429 => "ratelimited",
                    404 => "unknown_method",
                    _ => "request_refused",
                };
                json!({"ok": false, "error": error, "warning": message})
            }
            Some(Provider::Discord) => json!({"message": message, "code": 0}),
            Some(Provider::Github) => json!({"message": message}),
            Some(Provider::Generic) | None => json!({"error": {"type": status.canonical_reason(), "message": message}}),
        }
    }
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), and the
/// ones a caller's stand-in key travels in.
pub(super) const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
pub(super) const CREDENTIALS: [&str; 3] = ["x-api-key", "x-vault-token", "api-key"];

/// The bearer or bot credential in an `Authorization`-style value.
pub(super) fn credential_in(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?.trim();
    let bare = ["Bearer ", "bearer ", "Bot ", "token ", "Token "].iter().find_map(|p| text.strip_prefix(p));
    Some(bare.unwrap_or(text).trim())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn finds_telegrams_placeholder() {
        assert_eq!(telegram_placeholder("/botvt_abc/getMe"), Some(("vt_abc", "getMe")));
        assert_eq!(telegram_placeholder("/botX/sendMessage?chat_id=1"), Some(("X", "sendMessage?chat_id=1")));
        assert_eq!(telegram_placeholder("/getMe"), None);
        assert_eq!(telegram_placeholder("/botX/"), None);
    }

    #[test]
    fn injections_by_provider() {
        let config = |provider, header: Option<&str>, format: Option<&str>| RouteConfig {
            name: "r".into(),
            provider,
            upstream: "https://example.invalid".into(),
            secret: "prod/k".into(),
            header: header.map(Into::into),
            format: format.map(Into::into),
            ca_file: None,
            connect_timeout: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(1),
            budget: Default::default(),
            clients: Default::default(),
            prices: Default::default(),
        };
        let header = |name: &str, prefix: &str| Injection::Header {
            name: HeaderName::from_bytes(name.as_bytes()).unwrap(),
            prefix: prefix.into(),
            suffix: String::new(),
        };
        assert_eq!(injection(&config(Provider::Anthropic, None, None)).unwrap(), header("x-api-key", ""));
        assert_eq!(injection(&config(Provider::Openai, None, None)).unwrap(), header("authorization", "Bearer "));
        assert_eq!(injection(&config(Provider::Discord, None, None)).unwrap(), header("authorization", "Bot "));
        assert_eq!(injection(&config(Provider::Telegram, None, None)).unwrap(), Injection::TelegramPath);
        assert_eq!(
            injection(&config(Provider::Generic, Some("X-Key"), Some("K {value}"))).unwrap(),
            header("x-key", "K ")
        );
        assert!(injection(&config(Provider::Generic, None, None)).is_err());
        assert!(injection(&config(Provider::Generic, Some("x"), Some("no placeholder"))).is_err());
    }
}
