//! `vault-bench broker`: the credential broker's overhead. The same HTTPS
//! upstream (a process of its own, a certificate from a CA made for the run)
//! is called directly and through vaultd's broker on its loopback port, by
//! the same client code in a process of its own, alternating every round:
//!
//! - added latency: p50 through the broker minus p50 direct, 1 in flight;
//! - throughput through the broker against direct, 32 in flight;
//! - first streamed byte: how much later it arrives through the broker.
//!
//! Both paths keep their connections open (the client's to the upstream or
//! the broker, the broker's pooled ones to the upstream); each request is a
//! small Anthropic-style JSON POST, and the reply carries `usage`, so the
//! broker does its whole job: token check, use decision and audit record,
//! the guard over the request, metering and masking of the reply.
//!
//! The goals are judged as every vault-bench target is (`noise`, `report`):
//! on the median of at least 5 rounds in which no other process used more
//! than a tenth of a core during any run; otherwise "not measured".

use crate::noise::BUSY_CORES;
use crate::report::Judge;
use crate::vaultd::{Bins, Daemon, Process};
use anyhow::{Context as _, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The goals of issue 22.
const ADDED_P50_US: f64 = 100.0;
const THROUGHPUT_RATIO: f64 = 0.8;
const FIRST_BYTE_DELAY_US: f64 = 1000.0;
/// The request each call sends.
const REQUEST: &str =
    r#"{"model":"bench","max_tokens":64,"messages":[{"role":"user","content":"Hello, how are you today?"}]}"#;
/// The route and the secret the broker attaches.
const ROUTE: &str = "bench";
const KEY: &str = "sk-bench-upstream-key-0123456789abcdef";

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BrokerArgs {
    /// Rounds: each case is measured once per round (goals are judged on the
    /// median of at least 5 rounds the machine was quiet in).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=50))]
    rounds: u16,
    /// Measured seconds per case per round (after a 0.5 s warm-up).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=120))]
    seconds: u64,
    /// Write every figure to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Internal: the upstream.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct UpstreamArgs {
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// Where to write the port it listens on.
    #[arg(long)]
    port_file: PathBuf,
}

/// Internal: one load run.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClientArgs {
    /// `https://127.0.0.1:PORT` (direct), `http://127.0.0.1:PORT/bench` (the
    /// broker's port) or `unix:SOCKET` (the broker's socket, route `bench`).
    #[arg(long)]
    base: String,
    /// The key sent as x-api-key (the real one direct, a vaultd token to the broker).
    #[arg(long)]
    key: String,
    #[arg(long)]
    ca_file: PathBuf,
    #[arg(long)]
    in_flight: u16,
    #[arg(long)]
    seconds: f64,
    /// Measure the first streamed byte instead of whole calls.
    #[arg(long)]
    stream: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Run {
    calls: u64,
    seconds: f64,
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The upstream: Anthropic-like replies, and a stream whose first event is sent at once.
pub(crate) fn upstream(args: &UpstreamArgs) -> anyhow::Result<()> {
    use rustls::pki_types::pem::PemObject;
    crate::die_with_parent()?;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(&args.cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&args.key)?;
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        std::fs::write(&args.port_file, listener.local_addr()?.port().to_string())?;
        loop {
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(reply);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    })
}

async fn reply(req: hyper::Request<hyper::body::Incoming>) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    let ok = req.headers().get("x-api-key").is_some_and(|k| k.as_bytes() == KEY.as_bytes());
    let stream = req.uri().path().ends_with("/stream");
    let _ = req.into_body().collect().await;
    let builder = hyper::Response::builder();
    if !ok {
        let body = Full::new(Bytes::from_static(
            br#"{"type":"error","error":{"type":"authentication_error","message":"bad key"}}"#,
        ));
        return Ok(builder.status(401).body(body.boxed()).unwrap_or_default());
    }
    if !stream {
        let body = r#"{"id":"msg_bench","type":"message","role":"assistant","model":"bench","content":[{"type":"text","text":"I am fine, thank you for asking."}],"stop_reason":"end_turn","usage":{"input_tokens":14,"output_tokens":9}}"#;
        let body = Full::new(Bytes::from_static(body.as_bytes())).boxed();
        return Ok(builder.header("content-type", "application/json").body(body).unwrap_or_default());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>(2);
    tokio::spawn(async move {
        let first = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":14,\"output_tokens\":1}}}\n\n";
        let _ = tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(first.as_bytes())))).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        let last = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let _ = tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(last.as_bytes())))).await;
    });
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    Ok(builder.header("content-type", "text/event-stream").body(body).unwrap_or_default())
}

/// One load run: `in_flight` tasks, each on its own kept-open connection.
pub(crate) fn client(args: &ClientArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    crate::child::serve(runtime, load(args.clone()))
}

async fn load(args: ClientArgs) -> anyhow::Result<Run> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&args.ca_file)? {
        roots.add(cert?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(usize::from(args.in_flight) + 1)
            .build(https);
    let path = if args.stream { "/stream" } else { "/v1/messages" };
    let socket = args.base.strip_prefix("unix:").map(PathBuf::from);
    let base = if socket.is_some() { format!("http://broker/{ROUTE}") } else { args.base.clone() };
    let uri: hyper::Uri = format!("{base}{path}").parse()?;
    let warmup = Instant::now() + Duration::from_millis(500);
    let end = warmup + Duration::from_secs_f64(args.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.in_flight {
        let (client, uri, key, stream) = (client.clone(), uri.clone(), args.key.clone(), args.stream);
        // On the socket, a connection of the task's own (the pool dials TCP only).
        let mut unix = match &socket {
            Some(path) => {
                let io = hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?);
                let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                Some(sender)
            }
            None => None,
        };
        tasks.spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            loop {
                let started = Instant::now();
                if started >= end {
                    return (latencies, errors);
                }
                let req = hyper::Request::post(uri.clone())
                    .header("x-api-key", &key)
                    .header("content-type", "application/json")
                    .header("anthropic-version", "2023-06-01")
                    .body(Full::new(Bytes::from_static(REQUEST.as_bytes())))
                    .expect("a valid request");
                let took = async {
                    let reply = match unix.as_mut() {
                        Some(sender) => sender.send_request(req).await.ok()?,
                        None => client.request(req).await.ok()?,
                    };
                    if !reply.status().is_success() {
                        return None;
                    }
                    let mut body = reply.into_body();
                    // The first byte for a stream, the whole reply otherwise.
                    let first = body.frame().await?.ok()?;
                    let took = started.elapsed();
                    let _ = first;
                    while let Some(frame) = body.frame().await {
                        frame.ok()?;
                    }
                    Some(if stream { took } else { started.elapsed() })
                }
                .await;
                match took {
                    Some(took) if started >= warmup => latencies.push(took),
                    Some(_) => {}
                    None => errors += 1,
                }
            }
        });
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    while let Some(done) = tasks.join_next().await {
        let (l, e) = done?;
        latencies.extend(l);
        errors += e;
    }
    ensure!(!latencies.is_empty(), "no call succeeded ({errors} failed)");
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    Ok(Run {
        calls: latencies.len() as u64,
        seconds: args.seconds,
        per_second: latencies.len() as f64 / args.seconds,
        p50_us: at(0.5),
        p99_us: at(0.99),
        errors,
    })
}

/// The figures of one round.
#[derive(Debug, Clone, Serialize)]
struct Round {
    direct_1: Run,
    broker_1: Run,
    socket_1: Run,
    direct_32: Run,
    broker_32: Run,
    socket_32: Run,
    direct_stream: Run,
    broker_stream: Run,
    socket_stream: Run,
    /// The most CPU other processes used during one of its runs, in cores.
    others_cores_max: f64,
    /// No run of it was disturbed (see `noise`): its figures count.
    valid: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    rounds: Vec<Round>,
    /// Through the port, with a vaultd token.
    added_p50_us: f64,
    throughput_ratio: f64,
    first_byte_delay_us: f64,
    /// Through the unix socket, the kernel naming the caller.
    socket_added_p50_us: f64,
    socket_throughput_ratio: f64,
    socket_first_byte_delay_us: f64,
    /// Rounds whose figures count (the medians are theirs, or all rounds' if none).
    valid_rounds: usize,
    loadavg_start: String,
    loadavg_end: String,
    cpus: usize,
}

pub(crate) fn bench(args: &BrokerArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "vault-bench: WARNING: a debug build; figures mean little. Use `cargo run --release -p vault-bench -- broker`."
        );
    }
    let runtime = crate::child::current_thread()?;
    let report = runtime.block_on(measure(args))?;
    crate::emit(&markdown(&report), &report, args.json.as_deref())
}

async fn measure(args: &BrokerArgs) -> anyhow::Result<Report> {
    let bins = Bins::locate()?;
    let loadavg_start = crate::noise::loadavg();
    let tmp = tempfile::Builder::new().prefix("vault-bench-broker-").tempdir()?;
    let (ca_file, cert, key) = certificates(tmp.path())?;
    let port_file = tmp.path().join("upstream.port");
    let mut upstream_cmd = std::process::Command::new(std::env::current_exe()?);
    upstream_cmd
        .arg("broker-upstream")
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("--port-file")
        .arg(&port_file);
    let upstream = Process::spawn("the upstream", &mut upstream_cmd)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let port = loop {
        if let Some(port) = std::fs::read_to_string(&port_file).ok().and_then(|p| p.parse::<u16>().ok()) {
            break port;
        }
        ensure!(Instant::now() < deadline, "the upstream did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let broker_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = format!(
        "[limits]\nclient_rate = 1000000.0\nclient_burst = 1000000.0\nglobal_rate = 1000000.0\nglobal_burst = 1000000.0\n\
         [broker]\nlisten = \"127.0.0.1:{broker_port}\"\n\
         [[broker.route]]\nname = \"{ROUTE}\"\nprovider = \"anthropic\"\nupstream = \"https://127.0.0.1:{port}\"\n\
         secret = \"default/{ROUTE}\"\nca_file = \"{}\"\n",
        ca_file.display()
    );
    let d = Daemon::start_with_config(&bins, &tmp.path().join("vault"), Some(&config)).await?;
    d.init().await?;
    d.put(ROUTE, KEY.as_bytes()).await?;
    let uid = rustix::process::geteuid().as_raw().to_string();
    d.ctl(&["client", "add", ROUTE, "--uid", &uid, "--use", "--allow", &format!("default/{ROUTE}")], b"").await?;
    let (_, token) = d.ctl_output(&["token", "create", "--client", ROUTE], b"").await?;
    let token = String::from_utf8(token)?.trim().to_owned();
    let direct = format!("https://127.0.0.1:{port}");
    let brokered = format!("http://127.0.0.1:{broker_port}/{ROUTE}");
    let socket = format!("unix:{}", tmp.path().join("vault").join("broker.sock").display());
    let meter = crate::noise::Meter::new(vec![d.pid(), upstream.pid()]);
    let run = |base: &str, key: &str, in_flight: u16, stream: bool| {
        let mut a = vec!["broker-client".to_owned(), "--base".into(), base.into(), "--key".into(), key.into()];
        a.extend(["--ca-file".into(), ca_file.display().to_string(), "--in-flight".into(), in_flight.to_string()]);
        a.extend(["--seconds".into(), args.seconds.to_string()]);
        if stream {
            a.push("--stream".into());
        }
        meter.around(crate::child::run::<Run>(a, Duration::from_secs(args.seconds + 60), "broker load"))
    };
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        eprintln!("vault-bench: broker round {round} of {}", args.rounds);
        let mut others = Vec::new();
        let mut measured = |(run, noise): (Run, crate::noise::Noise)| {
            others.push(noise);
            run
        };
        let mut round = Round {
            direct_1: measured(run(&direct, KEY, 1, false).await?),
            broker_1: measured(run(&brokered, &token, 1, false).await?),
            socket_1: measured(run(&socket, "unused", 1, false).await?),
            direct_32: measured(run(&direct, KEY, 32, false).await?),
            broker_32: measured(run(&brokered, &token, 32, false).await?),
            socket_32: measured(run(&socket, "unused", 32, false).await?),
            direct_stream: measured(run(&direct, KEY, 1, true).await?),
            broker_stream: measured(run(&brokered, &token, 1, true).await?),
            socket_stream: measured(run(&socket, "unused", 1, true).await?),
            others_cores_max: 0.0,
            valid: false,
        };
        round.others_cores_max = others.iter().map(|n| n.others_cores).fold(0.0, f64::max);
        round.valid = others.iter().all(|n| !n.busy());
        rounds.push(round);
    }
    let errors: u64 = rounds
        .iter()
        .flat_map(|r| {
            [&r.direct_1, &r.broker_1, &r.socket_1, &r.direct_32, &r.broker_32, &r.socket_32].into_iter().chain([
                &r.direct_stream,
                &r.broker_stream,
                &r.socket_stream,
            ])
        })
        .map(|r| r.errors)
        .sum();
    ensure!(errors == 0, "{errors} calls failed");
    let valid_rounds = rounds.iter().filter(|r| r.valid).count();
    let counted: Vec<Round> =
        if valid_rounds > 0 { rounds.iter().filter(|r| r.valid).cloned().collect() } else { rounds.clone() };
    let median = |f: fn(&Round) -> f64| median(&counted, f);
    Ok(Report {
        added_p50_us: median(|r| r.broker_1.p50_us - r.direct_1.p50_us),
        throughput_ratio: median(|r| r.broker_32.per_second / r.direct_32.per_second),
        first_byte_delay_us: median(|r| r.broker_stream.p50_us - r.direct_stream.p50_us),
        socket_added_p50_us: median(|r| r.socket_1.p50_us - r.direct_1.p50_us),
        socket_throughput_ratio: median(|r| r.socket_32.per_second / r.direct_32.per_second),
        socket_first_byte_delay_us: median(|r| r.socket_stream.p50_us - r.direct_stream.p50_us),
        valid_rounds,
        rounds,
        loadavg_start,
        loadavg_end: crate::noise::loadavg(),
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
    })
}

/// The median across rounds of `f`.
fn median(rounds: &[Round], f: impl Fn(&Round) -> f64) -> f64 {
    let mut v: Vec<f64> = rounds.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A CA made for the run, and the upstream's certificate from it: (CA, cert, key) PEM files.
fn certificates(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &ca)?;
    let write = |name: &str, text: String| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    Ok((write("ca.pem", ca.pem())?, write("cert.pem", cert.pem())?, write("key.pem", key.serialize_pem())?))
}

fn markdown(r: &Report) -> String {
    // Judged as every vault-bench target is: on the median of enough quiet rounds.
    let judge = Judge { refused: 0, rounds: r.rounds.len(), valid_rounds: r.valid_rounds };
    let goal = |met: bool| judge.rounds(Some(met), None).to_string();
    let counted: Vec<Round> = r.rounds.iter().filter(|x| x.valid || r.valid_rounds == 0).cloned().collect();
    let med = |f: fn(&Round) -> f64| median(&counted, f);
    // One figure: direct, then through the port and the socket with what the broker added.
    let row = |label: &str, unit: &str, (d, p, s): (f64, f64, f64), (dp, ds): (String, String), goal: String| {
        let added = |a: String| if a.is_empty() { a } else { format!(" ({a})") };
        format!("| {label} | {d:.0}{unit} | {p:.0}{unit}{} | {s:.0}{unit}{} | {goal} |\n", added(dp), added(ds))
    };
    let mut out = String::from(
        "| credential broker, loopback | direct | broker, port + token | broker, socket + kernel | goal (port; socket) |\n|---|---|---|---|---|\n",
    );
    out += &row(
        "p50 at 1 in flight",
        " µs",
        (med(|x| x.direct_1.p50_us), med(|x| x.broker_1.p50_us), med(|x| x.socket_1.p50_us)),
        (format!("+{:.0}", r.added_p50_us), format!("+{:.0}", r.socket_added_p50_us)),
        format!(
            "added ≤ {ADDED_P50_US} µs: {}; {}",
            goal(r.added_p50_us <= ADDED_P50_US),
            goal(r.socket_added_p50_us <= ADDED_P50_US)
        ),
    );
    out += &row(
        "p99 at 1 in flight",
        " µs",
        (med(|x| x.direct_1.p99_us), med(|x| x.broker_1.p99_us), med(|x| x.socket_1.p99_us)),
        (String::new(), String::new()),
        String::new(),
    );
    out += &row(
        "calls/s at 32 in flight",
        "",
        (med(|x| x.direct_32.per_second), med(|x| x.broker_32.per_second), med(|x| x.socket_32.per_second)),
        (format!("×{:.2}", r.throughput_ratio), format!("×{:.2}", r.socket_throughput_ratio)),
        format!(
            "≥ ×{THROUGHPUT_RATIO}: {}; {}",
            goal(r.throughput_ratio >= THROUGHPUT_RATIO),
            goal(r.socket_throughput_ratio >= THROUGHPUT_RATIO)
        ),
    );
    out += &row(
        "first streamed byte, p50",
        " µs",
        (med(|x| x.direct_stream.p50_us), med(|x| x.broker_stream.p50_us), med(|x| x.socket_stream.p50_us)),
        (format!("+{:.0}", r.first_byte_delay_us), format!("+{:.0}", r.socket_first_byte_delay_us)),
        format!(
            "delay ≤ {FIRST_BYTE_DELAY_US} µs: {}; {}",
            goal(r.first_byte_delay_us <= FIRST_BYTE_DELAY_US),
            goal(r.socket_first_byte_delay_us <= FIRST_BYTE_DELAY_US)
        ),
    );
    let others: Vec<String> = r.rounds.iter().map(|x| format!("{:.2}", x.others_cores_max)).collect();
    out += &format!(
        "\n{} rounds, {} valid (the medians are theirs; a round is invalid when other processes used more than \
         {BUSY_CORES} of a core during one of its runs: here at most {} cores, by round), {} CPUs; load average {} \
         at the start, {} at the end.\n",
        r.rounds.len(),
        r.valid_rounds,
        others.join(", "),
        r.cpus,
        r.loadavg_start,
        r.loadavg_end
    );
    out
}
