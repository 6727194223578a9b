//! For the broker's tests: a local HTTPS server that behaves like the
//! providers (Anthropic messages with and without streaming, OpenAI chat
//! completions with usage, Telegram `getMe`/`sendMessage` with the token in
//! the path, Slack `auth.test`, Discord and GitHub's current user, model
//! lists), under a certificate from a CA made at test time; and an HTTP client
//! for the broker's socket and port.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vault_tests::{Daemon, Options, path_str, unique_tag};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A request the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// Every byte of the request, for "did X reach the upstream".
    pub fn bytes(&self) -> Vec<u8> {
        let mut all = format!("{} {}\n", self.method, self.path).into_bytes();
        for (k, v) in &self.headers {
            all.extend_from_slice(k.as_bytes());
            all.extend_from_slice(b": ");
            all.extend_from_slice(v);
            all.push(b'\n');
        }
        all.extend_from_slice(&self.body);
        all
    }
}

#[derive(Default)]
struct State {
    keys: Mutex<HashSet<String>>,
    seen: Mutex<Vec<Seen>>,
    /// TCP connections accepted.
    connections: std::sync::atomic::AtomicUsize,
}

/// The running upstream: `url` is `https://127.0.0.1:PORT`, `ca_file` the PEM
/// of the CA that signed its certificate.
pub struct Upstream {
    pub url: String,
    pub ca_file: PathBuf,
    state: Arc<State>,
    runtime: tokio::runtime::Runtime,
}

impl Upstream {
    /// Starts one, writing its CA to `dir/upstream-ca.pem`; `keys` are the
    /// credentials it accepts.
    pub fn start(dir: &std::path::Path, keys: &[&str]) -> Upstream {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "vaultd test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let ca_file = dir.join("upstream-ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let state = Arc::new(State::default());
        state.keys.lock().unwrap().extend(keys.iter().map(|k| k.to_string()));
        let st = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                st.connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (acceptor, st) = (acceptor.clone(), st.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req| serve(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Upstream { url, ca_file, state, runtime }
    }

    /// Replaces the keys it accepts.
    pub fn set_keys(&self, keys: &[&str]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.to_string()).collect();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// How many TCP connections it accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether `bytes` appear anywhere in what it received.
    pub fn saw(&self, bytes: &[u8]) -> bool {
        self.seen().iter().any(|s| vault_tests::contains(&s.bytes(), bytes))
    }
}

#[allow(deprecated)]
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn json_reply(status: u16, value: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .unwrap()
}

/// Server-sent events, one every `every`.
fn events(lines: Vec<String>, every: Duration) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        for line in lines {
            if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
        .unwrap()
}

async fn serve(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let headers: Vec<_> = req.headers().iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
    let body = req.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    let seen = Seen { method, path: path.clone(), headers, body };
    state.seen.lock().unwrap().push(seen.clone());
    let keys = state.keys.lock().unwrap().clone();
    let bearer = seen.header("authorization").and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned));
    let request: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
    let path_only = path.split('?').next().unwrap_or_default().to_owned();

    if let Some(rest) = path_only.strip_prefix("/bot") {
        // Telegram: the token in the path.
        let (token, method) = rest.split_once('/').unwrap_or((rest, ""));
        if !keys.contains(token) {
            return Ok(json_reply(401, json!({"ok": false, "error_code": 401, "description": "Unauthorized"})));
        }
        return Ok(match method {
            "getMe" => {
                json_reply(200, json!({"ok": true, "result": {"id": 1, "is_bot": true, "username": "test_bot"}}))
            }
            "sendMessage" => json_reply(200, json!({"ok": true, "result": {"message_id": 7, "text": request["text"]}})),
            _ => json_reply(404, json!({"ok": false, "error_code": 404, "description": "Not Found"})),
        });
    }
    let reply = match path_only.as_str() {
        "/v1/messages" | "/v1/models" if seen.header("x-api-key").is_some() => {
            let key = seen.header("x-api-key").unwrap_or_default();
            if !keys.contains(&key) {
                // Like some providers, it names the key it refused.
                let message = format!("invalid x-api-key {key}");
                return Ok(json_reply(
                    401,
                    json!({"type": "error", "error": {"type": "authentication_error", "message": message}}),
                ));
            }
            if path_only == "/v1/models" {
                json_reply(200, json!({"data": [{"id": "claude-test", "type": "model"}], "has_more": false}))
            } else if request["stream"] == json!(true) {
                anthropic_stream(&request)
            } else {
                json_reply(
                    200,
                    json!({
                        "id": "msg_1", "type": "message", "role": "assistant", "model": request["model"],
                        "content": [{"type": "text", "text": "hello from the upstream"}],
                        "stop_reason": "end_turn", "stop_sequence": null,
                        "usage": {"input_tokens": 10, "output_tokens": 25}
                    }),
                )
            }
        }
        "/v1/chat/completions" | "/v1/models" => {
            if !bearer.as_ref().is_some_and(|b| keys.contains(b)) {
                let error = json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
                return Ok(json_reply(401, error));
            }
            if path_only == "/v1/models" {
                json_reply(
                    200,
                    json!({"object": "list", "data": [{"id": "gpt-test", "object": "model", "created": 0, "owned_by": "test"}]}),
                )
            } else if request["stream"] == json!(true) {
                let chunk = |content: &str| {
                    json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": request["model"],
                        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
                };
                let usage = json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": request["model"],
                    "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}});
                let lines = vec![chunk("hello"), chunk(" there"), usage]
                    .into_iter()
                    .map(|v| format!("data: {v}\n\n"))
                    .chain(["data: [DONE]\n\n".to_owned()])
                    .collect();
                events(lines, Duration::from_millis(5))
            } else {
                json_reply(
                    200,
                    json!({
                        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": request["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from the upstream"}, "finish_reason": "stop", "logprobs": null}],
                        "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
                    }),
                )
            }
        }
        "/api/auth.test" => match bearer.filter(|b| keys.contains(b)) {
            Some(_) => json_reply(200, json!({"ok": true, "team": "test", "user": "bot"})),
            None => json_reply(200, json!({"ok": false, "error": "invalid_auth"})),
        },
        "/api/v10/users/@me" => {
            let key = seen.header("authorization").and_then(|a| a.strip_prefix("Bot ").map(str::to_owned));
            match key.filter(|k| keys.contains(k)) {
                Some(_) => json_reply(200, json!({"id": "1", "username": "bot"})),
                None => json_reply(401, json!({"message": "401: Unauthorized", "code": 0})),
            }
        }
        "/user" => match bearer.filter(|b| keys.contains(b)) {
            Some(_) => json_reply(200, json!({"login": "bot"})),
            None => json_reply(401, json!({"message": "Bad credentials"})),
        },
        // A webhook sink for alerts.
        "/alerts" => json_reply(200, json!({"ok": true})),
        _ => json_reply(404, json!({"error": "no such path"})),
    };
    Ok(reply)
}

/// Anthropic's streaming events; `"slow": N` in the request makes N text
/// deltas 100 ms apart (or `"every_ms"` apart).
fn anthropic_stream(request: &Value) -> Response<Body> {
    let deltas = request["slow"].as_u64().unwrap_or(2);
    let every = match (request["slow"].is_null(), request["every_ms"].as_u64()) {
        (true, _) => Duration::from_millis(5),
        (false, every) => Duration::from_millis(every.unwrap_or(100)),
    };
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut lines = vec![event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": request["model"], "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 1}}}),
    )];
    lines.push(event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    for i in 0..deltas {
        lines.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": format!("part{i} ")}}),
        ));
    }
    lines.push(event("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
    lines.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 25}}),
    ));
    lines.push(event("message_stop", json!({"type": "message_stop"})));
    events(lines, every)
}

/// Where the broker listens.
#[derive(Debug, Clone)]
pub enum Broker {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

/// A reply from the broker.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An agent's HTTP client for the broker.
pub struct Agent {
    runtime: tokio::runtime::Runtime,
    pub broker: Broker,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Agent {
    pub fn new(broker: Broker) -> Agent {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Agent { runtime, broker }
    }

    async fn connect(&self) -> Sender {
        macro_rules! handshake {
            ($stream:expr) => {{
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new($stream)).await.unwrap();
                tokio::spawn(conn);
                sender
            }};
        }
        match &self.broker {
            Broker::Unix(path) => handshake!(tokio::net::UnixStream::connect(path).await.unwrap()),
            Broker::Tcp(addr) => handshake!(tokio::net::TcpStream::connect(addr).await.unwrap()),
        }
    }

    fn build(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Request<Full<Bytes>> {
        let mut req = Request::builder().method(method).uri(path).header("host", "broker");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Full::new(Bytes::copy_from_slice(body))).unwrap()
    }

    /// One request on a fresh connection; the whole reply.
    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        self.runtime.block_on(async {
            let mut sender = self.connect().await;
            let reply = sender.send_request(Self::build(method, path, headers, body)).await.unwrap();
            let status = reply.status().as_u16();
            let headers = reply
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            let body = reply.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
            Reply { status, headers, body }
        })
    }

    pub fn post_json(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send("POST", path, &all, body.to_string().as_bytes())
    }

    /// A request whose reply is read chunk by chunk.
    pub fn stream(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Stream<'_> {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        let req = Self::build("POST", path, &all, body.to_string().as_bytes());
        let (status, body) = self.runtime.block_on(async {
            let mut sender = self.connect().await;
            let reply = sender.send_request(req).await.unwrap();
            (reply.status().as_u16(), reply.into_body())
        });
        Stream { agent: self, status, body }
    }
}

pub struct Stream<'a> {
    agent: &'a Agent,
    pub status: u16,
    body: Incoming,
}

/// The next piece of a streamed reply.
#[derive(Debug)]
pub enum Next {
    Data(Vec<u8>),
    End,
    /// The stream broke off.
    Broken,
}

impl Stream<'_> {
    pub fn next(&mut self, within: Duration) -> Next {
        self.agent.runtime.block_on(async {
            loop {
                match tokio::time::timeout(within, self.body.frame()).await {
                    Err(_) => panic!("no data within {within:?}"),
                    Ok(None) => return Next::End,
                    Ok(Some(Err(_))) => return Next::Broken,
                    Ok(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            return Next::Data(data.to_vec());
                        }
                    }
                }
            }
        })
    }

    /// Everything until the end (`Ok`) or a break (`Err`, with what came).
    pub fn rest(&mut self) -> Result<Vec<u8>, Vec<u8>> {
        let mut all = Vec::new();
        loop {
            match self.next(Duration::from_secs(10)) {
                Next::Data(d) => all.extend(d),
                Next::End => return Ok(all),
                Next::Broken => return Err(all),
            }
        }
    }
}

/// A vaultd with a broker whose routes all point at one local upstream.
pub struct Setup {
    pub d: Daemon,
    pub up: Upstream,
    pub socket: PathBuf,
    pub port: u16,
    /// The real keys, by route.
    pub keys: Keys,
}

pub struct Keys {
    pub anthropic: String,
    pub openai: String,
    pub telegram: String,
    pub slack: String,
    pub discord: String,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Setup {
    /// `extra` is appended to the config (more `[broker]` settings go in
    /// `broker_extra`, a route's in `route_extra(name)`); in it `{upstream}`,
    /// `{ca_file}` and `{dir}` stand for the upstream's URL, its CA file and
    /// the daemon's temp dir.
    pub fn new(broker_extra: &str, extra: &str) -> Setup {
        Setup::with_routes(broker_extra, &|_| String::new(), extra)
    }

    pub fn with_routes(broker_extra: &str, route_extra: &dyn Fn(&str) -> String, extra: &str) -> Setup {
        let tag = unique_tag();
        let keys = Keys {
            anthropic: format!("sk-ant-real-{tag}"),
            openai: format!("sk-openai-real-{tag}"),
            telegram: format!("123456:tg-real-{tag}"),
            slack: format!("xoxb-real-{tag}"),
            discord: format!("discord-real-{tag}"),
        };
        let mut d = Daemon::new(Options::default());
        let up =
            Upstream::start(d.dir.path(), &[&keys.anthropic, &keys.openai, &keys.telegram, &keys.slack, &keys.discord]);
        let socket = d.dir.path().join("broker.sock");
        let port = free_port();
        let route = |name: &str, provider: &str| {
            format!(
                "[[broker.route]]\nname = \"{name}\"\nprovider = \"{provider}\"\nupstream = \"{}\"\nsecret = \"prod/{name}\"\nca_file = \"{}\"\n{}\n",
                up.url,
                path_str(&up.ca_file),
                route_extra(name),
            )
        };
        let extra = extra.replace("{upstream}", &up.url).replace("{ca_file}", path_str(&up.ca_file));
        let extra = extra.replace("{dir}", path_str(d.dir.path()));
        let config = format!(
            "[broker]\nsocket = \"{}\"\nsocket_mode = \"0666\"\nlisten = \"127.0.0.1:{port}\"\n{broker_extra}\n{}{}{}{}{}{extra}",
            path_str(&socket),
            route("anthropic", "anthropic"),
            route("openai", "openai"),
            route("telegram", "telegram"),
            route("slack", "slack"),
            route("discord", "discord"),
        );
        d.opts.config = Some(config);
        d.launch();
        d.init();
        for (name, value) in [
            ("anthropic", &keys.anthropic),
            ("openai", &keys.openai),
            ("telegram", &keys.telegram),
            ("slack", &keys.slack),
            ("discord", &keys.discord),
        ] {
            d.ctl(&["--env", "prod", "put", name], value.as_bytes()).ok();
        }
        Setup { d, up, socket, port, keys }
    }

    /// A client of uid 0 (the tests' own) with `grants`, and a token for it.
    pub fn client(&self, name: &str, args: &[&str]) -> String {
        let mut all = vec!["client", "add", name, "--uid", "0"];
        all.extend_from_slice(args);
        self.d.ctl(&all, b"").ok();
        let out = self.d.ctl(&["--json", "token", "create", "--client", name], b"").ok();
        out.json()["token"].as_str().unwrap().to_owned()
    }

    pub fn unix(&self) -> Agent {
        Agent::new(Broker::Unix(self.socket.clone()))
    }

    pub fn tcp(&self) -> Agent {
        Agent::new(Broker::Tcp(format!("127.0.0.1:{}", self.port).parse().unwrap()))
    }

    /// The audit entries of brokered requests.
    pub fn requests(&self) -> Vec<Value> {
        self.d.audit_query(&["--type", "broker.request"])
    }

    /// Every audit entry, as text.
    pub fn audit_text(&self) -> String {
        serde_json::to_string(&self.d.audit_query(&[])).unwrap()
    }
}
