//! One brokered request, from the caller's bytes to the upstream's and back.

use super::route::{self, Refusal, Route, telegram_placeholder};
use super::scan::{Found, Needles, Scanner};
use super::upstream::{Body, BoxError};
use super::usage::{Meter, Tokens};
use super::{Broker, Origin};
use crate::audit::{Actor, Event, Kind, Outcome};
use crate::crypto::SecretBytes;
use crate::identity::Peer;
use crate::limits::Presenter;
use crate::vault::{SecretRef, Usage, Vault, VaultError};
use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, HOST, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Request bytes read before the upstream is called: a body this small is
/// judged whole, so a refused one never reaches the upstream at all.
const PREFETCH: usize = 64 << 10;
/// How much of a refused request's body is read (and dropped), and for how
/// long, before the refusal is sent.
const DRAIN_BYTES: usize = 1 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);
/// Frames buffered between the upstream and the caller: a stream is passed
/// on, not collected.
const IN_FLIGHT_FRAMES: usize = 2;

/// What the record of a request says besides the caller.
struct Exchange {
    started: Instant,
    method: String,
    route: Option<Arc<Route>>,
    path: String,
}

impl Broker {
    pub(super) async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        origin: Arc<Origin>,
        connection: u64,
    ) -> Result<Response<Body>, Infallible> {
        let mut exchange = Exchange {
            started: Instant::now(),
            method: req.method().as_str().chars().take(16).collect(),
            route: None,
            path: String::new(),
        };
        let peer = match &*origin {
            Origin::Unix(peer) => peer.clone(),
            Origin::Tcp(uid) => uid.map(|uid| Peer { uid, gid: u32::MAX, pid: None, accepted: None }),
        };
        let mut actor = Actor::peer("broker", peer.as_ref());
        let (parts, body) = req.into_parts();
        let mut body = Some(body);
        match self.forward(parts, &mut body, (&origin, connection), peer.as_ref(), &mut actor, &mut exchange).await {
            Ok(response) => Ok(response),
            Err(refusal) => {
                record(&self.vault, &actor, None, &exchange, Err(&refusal));
                if let Some(body) = body {
                    drain(body).await;
                }
                let provider = exchange.route.as_ref().filter(|_| !matches!(refusal, Refusal::NoRoute(_)));
                Ok(refused(&refusal, provider.map(|r| r.provider)))
            }
        }
    }

    /// Forwards the request, or says why not; `body` is taken once the
    /// request is let through to the guard.
    async fn forward(
        &self,
        parts: http::request::Parts,
        body: &mut Option<Incoming>,
        (origin, connection): (&Origin, u64),
        peer: Option<&Peer>,
        actor: &mut Actor,
        exchange: &mut Exchange,
    ) -> Result<Response<Body>, Refusal> {
        let full = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let (name, rest) = split_route(full);
        let route = self.routes.get(name).cloned().ok_or_else(|| Refusal::NoRoute(printable(name)))?;
        exchange.route = Some(route.clone());
        exchange.path = recorded_path(&route, rest);
        let token = caller_token(&route, &parts.headers, rest)?;
        if matches!(origin, Origin::Tcp(_)) && token.is_none() {
            return Err(Refusal::TokenRequired);
        }
        let secret = SecretRef { env: &route.env, name: &route.secret };
        let uid = peer.map_or(u32::MAX, |p| p.uid);
        let presenters = token.as_ref().map(|token| Presenter::of(connection, uid, token));
        if let Some(presenters) = &presenters
            && let Err(wait) = self.vault.unpaused(&self.pauses, presenters, actor)
        {
            return Err(Refusal::RateLimited(wait.as_millis() as u64));
        }
        let authorized = self.vault.authorize_use(actor, peer, token.as_ref(), secret).await;
        if let Some(presenters) = &presenters {
            self.pauses.settle(presenters, &authorized);
        }
        let usage = authorized.map_err(|e| refusal_of(e, name))?;
        *actor = usage.actor.clone();
        actor.client = usage.client.clone();
        // The owner has no budget, as it has no rate limit.
        if let Some(client) = &usage.client {
            self.budgets.admit(client, &route, crate::clock::now_unix()).map_err(Refusal::OverBudget)?;
        }
        if parts.headers.get(CONTENT_ENCODING).is_some_and(|e| e.as_bytes() != b"identity") {
            return Err(Refusal::BadRequest(
                "a compressed request body cannot be inspected; send it uncompressed".into(),
            ));
        }

        let needles = self.needles();
        self.guard_head(&parts, &needles, actor, &usage)?;
        let guard_hit = Arc::new(AtomicBool::new(false));
        let body = body.take().ok_or_else(|| Refusal::BadRequest("the request body was read already".into()))?;
        let body = self.guard_body(body, &needles, guard_hit.clone(), actor, &usage).await?;

        let uri = route.upstream_uri(rest, &usage.value).map_err(|e| Refusal::BadRequest(e.to_owned()))?;
        let mut upstream = Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .body(body)
            .map_err(|_| Refusal::BadRequest("the request cannot be forwarded".into()))?;
        *upstream.headers_mut() = forwarded_headers(&route, parts.headers);
        if let Some(header) = route.header(&usage.value) {
            let (name, value) = header.map_err(Refusal::Unavailable)?;
            upstream.headers_mut().insert(name, value);
        }
        let sent = tokio::time::timeout(route.config.timeout, route.client.request(upstream)).await;
        let reply = match sent {
            Err(_) => return Err(Refusal::Timeout),
            Ok(Err(_)) if guard_hit.load(Ordering::SeqCst) => return Err(Refusal::Exfiltration),
            Ok(Err(e)) => return Err(Refusal::Upstream(upstream_error(&e))),
            Ok(Ok(reply)) => reply,
        };
        Ok(self.reply(reply, usage, route, actor.clone(), exchange, needles))
    }

    /// The guard on the request line and headers (the caller's stand-in key
    /// is stripped before it is forwarded, so it is looked at too).
    fn guard_head(
        &self,
        parts: &http::request::Parts,
        needles: &Needles,
        actor: &Actor,
        usage: &Usage,
    ) -> Result<(), Refusal> {
        let uri = parts.uri.to_string();
        let carried = std::iter::once(uri.as_bytes())
            .chain(parts.headers.iter().flat_map(|(k, v)| [k.as_str().as_bytes(), v.as_bytes()]))
            .any(|bytes| needles.find(bytes).is_some());
        if carried {
            self.exfiltration(actor, usage, "headers");
            return Err(Refusal::Exfiltration);
        }
        Ok(())
    }

    /// The request body through the guard: read whole when small, streamed
    /// through otherwise, each chunk passed on once no value can be in it.
    async fn guard_body(
        &self,
        mut body: Incoming,
        needles: &Arc<Needles>,
        hit: Arc<AtomicBool>,
        actor: &Actor,
        usage: &Usage,
    ) -> Result<Body, Refusal> {
        let mut scanner = Scanner::new(needles.clone());
        let mut head = BytesMut::new();
        let found = |broker: &Broker| {
            broker.exfiltration(actor, usage, "body");
            Refusal::Exfiltration
        };
        while head.len() < PREFETCH {
            match body.frame().await {
                None => {
                    head.extend_from_slice(&scanner.pass_end().map_err(|Found| found(self))?);
                    return Ok(Full::new(head.freeze()).map_err(|e: Infallible| match e {}).boxed());
                }
                Some(Err(_)) => return Err(Refusal::BadRequest("the request body ended early".into())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        head.extend_from_slice(&scanner.pass(data).map_err(|Found| found(self))?);
                    }
                }
            }
        }
        // The rest streams through a task: a value found there fails the
        // upstream request (the caller is told it was refused).
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(IN_FLIGHT_FRAMES);
        let (vault, event) = (self.vault.clone(), self.exfiltration_event(actor, usage, "body"));
        let _ = tx.try_send(Ok(Frame::data(head.freeze())));
        tokio::spawn(async move {
            let refuse = |tx: mpsc::Sender<_>| async move {
                hit.store(true, Ordering::SeqCst);
                vault.record_detached(event);
                let _ = tx.send(Err::<Frame<Bytes>, BoxError>("refused by the exfiltration guard".into())).await;
            };
            loop {
                let data = match body.frame().await {
                    None => break,
                    Some(Err(e)) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => data,
                        Err(_) => continue,
                    },
                };
                match scanner.pass(data) {
                    Err(Found) => return refuse(tx).await,
                    Ok(out) if out.is_empty() => {}
                    Ok(out) => {
                        if tx.send(Ok(Frame::data(out))).await.is_err() {
                            return;
                        }
                    }
                }
            }
            match scanner.pass_end() {
                Err(Found) => refuse(tx).await,
                Ok(rest) if !rest.is_empty() => drop(tx.send(Ok(Frame::data(rest))).await),
                Ok(_) => {}
            }
        });
        Ok(StreamBody::new(ReceiverStream::new(rx)).boxed())
    }

    /// The upstream's reply, streamed to the caller through a task that
    /// redacts stored values, meters usage, and cuts the stream the moment
    /// the caller may no longer use the secret; recorded when it ends.
    fn reply(
        &self,
        reply: Response<Incoming>,
        usage: Usage,
        route: Arc<Route>,
        actor: Actor,
        exchange: &mut Exchange,
        needles: Arc<Needles>,
    ) -> Response<Body> {
        let (mut parts, mut body) = reply.into_parts();
        for name in route::HOP_BY_HOP {
            parts.headers.remove(name);
        }
        let content_type = parts.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let mut meter = Meter::new(content_type);
        let mut scanner = Scanner::new(needles);
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(IN_FLIGHT_FRAMES);
        let (broker_vault, budgets) = (self.vault.clone(), self.budgets.clone());
        let status = parts.status.as_u16();
        let exchange = Exchange {
            started: exchange.started,
            method: std::mem::take(&mut exchange.method),
            route: exchange.route.clone(),
            path: std::mem::take(&mut exchange.path),
        };
        tokio::spawn(async move {
            let ended = ended(&broker_vault, &usage);
            tokio::pin!(ended);
            let mut bytes = 0u64;
            let end = loop {
                let frame = tokio::select! {
                    biased;
                    () = &mut ended => break End::Cut,
                    f = tokio::time::timeout(route.config.timeout, body.frame()) => f,
                };
                let frame = match frame {
                    Err(_) => break End::UpstreamTimeout,
                    Ok(None) => break End::Complete,
                    Ok(Some(Err(_))) => break End::UpstreamFailed,
                    Ok(Some(Ok(frame))) => frame,
                };
                let frame = match frame.into_data() {
                    Ok(data) => {
                        bytes += data.len() as u64;
                        meter.feed(&data);
                        let out = scanner.mask(data);
                        if out.is_empty() {
                            continue;
                        }
                        Frame::data(out)
                    }
                    Err(frame) => frame,
                };
                tokio::select! {
                    biased;
                    () = &mut ended => break End::Cut,
                    sent = tx.send(Ok(frame)) => if sent.is_err() { break End::CallerGone },
                }
            };
            match end {
                End::Complete => {
                    let tail = scanner.mask_end();
                    if !tail.is_empty() {
                        let _ = tx.send(Ok(Frame::data(tail))).await;
                    }
                }
                End::CallerGone => {}
                _ => {
                    let _ = tx.send(Err(end.as_str().into())).await;
                }
            }
            meter.finish();
            if let Some(client) = &usage.client {
                budgets.charge(client, &route, meter.tokens, meter.model.as_deref(), crate::clock::now_unix());
            }
            let done = Done { status, bytes, tokens: meter.tokens, model: meter.model.take(), end };
            record(&broker_vault, &actor, Some(&usage), &exchange, Ok(&done));
        });
        // Redaction keeps lengths, so a Content-Length stays true.
        Response::from_parts(parts, StreamBody::new(ReceiverStream::new(rx)).boxed())
    }

    fn exfiltration_event(&self, actor: &Actor, usage: &Usage, place: &'static str) -> Event {
        Event::new(Kind::BrokerExfiltration, Outcome::Denied, actor)
            .secret(&usage.env, &usage.name)
            .with("where", place)
    }

    fn exfiltration(&self, actor: &Actor, usage: &Usage, place: &'static str) {
        tracing::warn!(client = ?usage.client, place, "broker: a request carried a stored value; refused");
        self.vault.record_detached(self.exfiltration_event(actor, usage, place));
    }
}

/// The `broker.request` record: who, which route, method, path (no query
/// values), status, bytes, tokens, latency. Never a value or a body.
fn record(vault: &Vault, actor: &Actor, usage: Option<&Usage>, exchange: &Exchange, result: Result<&Done, &Refusal>) {
    let mut event = Event::new(
        Kind::BrokerRequest,
        match result {
            Ok(done) if done.end == End::Complete || done.end == End::CallerGone => Outcome::Ok,
            Ok(_) => Outcome::Failed,
            Err(Refusal::Upstream(_) | Refusal::Timeout) => Outcome::Failed,
            Err(_) => Outcome::Denied,
        },
        actor,
    )
    .with("route", exchange.route.as_ref().map(|r| r.name.clone()))
    .with("method", exchange.method.clone())
    .with("path", exchange.path.clone())
    .with("latency_ms", exchange.started.elapsed().as_millis() as u64);
    if let Some(usage) = usage {
        event = event.secret(&usage.env, &usage.name).with("version", usage.version);
    }
    event = match result {
        Ok(done) => event
            .with("status", done.status)
            .with("bytes", done.bytes)
            .with("input_tokens", done.tokens.input)
            .with("output_tokens", done.tokens.output)
            .with("model", done.model.clone())
            .with("end", done.end.as_str()),
        Err(refusal) => event.with("status", refusal.status().as_u16()).with("reason", refusal.reason()),
    };
    vault.record_detached(event);
}

/// How a reply's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Complete,
    /// The caller's use ended (revoke-all, disabled, revoked, sealed).
    Cut,
    CallerGone,
    UpstreamFailed,
    UpstreamTimeout,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Complete => "complete",
            End::Cut => "cut: access ended",
            End::CallerGone => "caller went away",
            End::UpstreamFailed => "upstream failed",
            End::UpstreamTimeout => "upstream timed out",
        }
    }
}

struct Done {
    status: u16,
    bytes: u64,
    tokens: Tokens,
    model: Option<String>,
    end: End,
}

/// Resolves when `usage` may no longer go on: a revoke-all, or any change
/// after which the vault says no (sealed, client disabled, token revoked).
async fn ended(vault: &Vault, usage: &Usage) {
    let (mut cutoff, mut changes) = (vault.cutoffs(), vault.changes());
    loop {
        tokio::select! {
            c = cutoff.changed() => if c.is_ok() { return },
            c = changes.changed() => {
                if c.is_err() {
                    return std::future::pending().await;
                }
                if !vault.may_still_use(usage) {
                    return;
                }
            }
        }
    }
}

/// The refusal's reply, in the provider's shape.
fn refused(refusal: &Refusal, provider: Option<super::Provider>) -> Response<Body> {
    let body = refusal.body(provider).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)).map_err(|e: Infallible| match e {}).boxed());
    *response.status_mut() = refusal.status();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Refusal::RateLimited(ms) = refusal {
        let secs = ms.div_ceil(1000).max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert("retry-after", v);
        }
    }
    response
}

/// `/{route}{rest}` → (route, rest), `rest` starting with `/` (or empty).
fn split_route(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    let end = path.find(['/', '?']).unwrap_or(path.len());
    (&path[..end], &path[end..])
}

/// A route name as the caller sent it, made safe to show (bounded, printable).
fn printable(name: &str) -> String {
    name.chars().take(64).map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect()
}

/// The path as recorded: the query's names without their values, and no
/// stand-in key (Telegram's path form).
fn recorded_path(route: &Route, rest: &str) -> String {
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = match telegram_placeholder(path).filter(|_| route.credential_header().is_none()) {
        Some((_, method)) => format!("/bot…/{method}"),
        None => path.to_owned(),
    };
    let mut out: String = path.chars().take(512).collect();
    if !query.is_empty() {
        let names: Vec<&str> = query.split('&').map(|kv| kv.split('=').next().unwrap_or_default()).collect();
        out.push('?');
        out.push_str(&names.iter().map(|n| format!("{n}=")).collect::<Vec<_>>().join("&"));
    }
    out
}

/// The vaultd token the caller presents in place of the key: `x-vault-token`,
/// Telegram's path, or the header the provider's SDK sends its key in. A
/// stand-in that is not a vaultd token (`vt_…`) is no token.
fn caller_token(route: &Route, headers: &http::HeaderMap, rest: &str) -> Result<Option<SecretBytes>, Refusal> {
    let mut candidates: Vec<&str> = Vec::new();
    candidates.extend(headers.get_all("x-vault-token").iter().filter_map(|v| v.to_str().ok()));
    if route.credential_header().is_none()
        && let Some((placeholder, _)) = telegram_placeholder(rest)
    {
        candidates.push(placeholder);
    }
    for name in ["authorization", "x-api-key", "api-key"] {
        candidates.extend(headers.get_all(name).iter().filter_map(route::credential_in));
    }
    let tokens: Vec<&str> = candidates.into_iter().filter(|c| c.starts_with("vt_")).collect();
    match tokens.as_slice() {
        [] => Ok(None),
        [first, others @ ..] if others.iter().all(|o| o == first) => {
            Ok(Some(SecretBytes::new(first.as_bytes().to_vec())))
        }
        _ => Err(Refusal::BadRequest("two different vaultd tokens in one request".into())),
    }
}

/// The caller's headers as the upstream gets them: no hop-by-hop header, no
/// stand-in key, the upstream's host, and replies uncompressed (so they can
/// be redacted and metered).
fn forwarded_headers(route: &Route, mut headers: http::HeaderMap) -> http::HeaderMap {
    for name in route::HOP_BY_HOP.iter().chain(&route::CREDENTIALS) {
        headers.remove(*name);
    }
    headers.remove(http::header::AUTHORIZATION);
    if let Some(name) = route.credential_header() {
        headers.remove(name);
    }
    headers.remove(HOST);
    headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    headers
}

fn refusal_of(e: VaultError, route: &str) -> Refusal {
    match e {
        VaultError::NotFound { .. } => Refusal::NoRoute(route.into()),
        VaultError::TokenRefused | VaultError::TokenUnknown => Refusal::BadToken,
        VaultError::RateLimited(wait) => Refusal::RateLimited(wait.as_millis() as u64),
        VaultError::Sealed | VaultError::Uninitialized => Refusal::Unavailable("the vault is sealed".into()),
        other => {
            tracing::error!(error = %other, "broker: authorizing a use failed");
            Refusal::Unavailable("vaultd could not serve this request".into())
        }
    }
}

/// Reads and drops what a refused caller is still sending, a little and
/// briefly: its reply can then be read, where closing the connection on a
/// body half sent would give the caller a broken pipe instead of the refusal.
async fn drain(mut body: Incoming) {
    let mut left = DRAIN_BYTES;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else { continue };
            left = left.saturating_sub(data.len());
            if left == 0 {
                return;
            }
        }
    })
    .await;
}

/// What went wrong reaching the upstream, for the caller (never the value:
/// the error comes from the connection, which never saw it in clear).
fn upstream_error(e: &hyper_util::client::legacy::Error) -> String {
    let cause = super::check::root_cause(e);
    if e.is_connect() { format!("cannot connect: {cause}") } else { cause }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_route_off() {
        assert_eq!(split_route("/anthropic/v1/messages?x=1"), ("anthropic", "/v1/messages?x=1"));
        assert_eq!(split_route("/openai"), ("openai", ""));
        assert_eq!(split_route("/openai?x"), ("openai", "?x"));
        assert_eq!(split_route("/"), ("", ""));
    }
}
