//! The load client: N tasks, each on its own connection with one request in
//! flight at a time, until a deadline (or a request count); the latency of every
//! request in the measured period. The same client drives the floor and vaultd.
//!
//! It runs as its own process — the bench re-executes itself with the hidden
//! `client` subcommand ([`client`]) — on a single-threaded tokio runtime, and
//! prints one JSON line, a [`LoadResult`], on stdout. [`run`] is the bench's side.

use crate::report::{LoadResult, percentile};
use anyhow::Context as _;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vault_proto::v1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Op {
    /// `Agent.GetSecret` of the secret `--name` (vaultd's agent socket, or the floor).
    Get,
    /// `Agent.GetSecrets` of the `--batch` secrets `NAME-0`, `NAME-1`, … in one call.
    GetMany,
    /// `Agent.GetSecret` of `NAME-i`, `i` drawn at random from 0..`--spread` each request.
    GetSpread,
    /// `Admin.PutSecret` of a new secret `PREFIX-N` per request (vaultd's admin socket).
    Put,
    /// `Admin.ShowSecret` of `NAME` with its value (vaultd's admin socket): the
    /// owner's reveal, recorded in a transaction of its own, which first imports
    /// the reads waiting in the journal.
    Reveal,
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClientArgs {
    /// The socket to load.
    #[arg(long)]
    pub(crate) socket: PathBuf,
    #[arg(long, value_enum)]
    pub(crate) op: Op,
    /// Connections, each with one request in flight at a time.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) in_flight: u16,
    /// Warm-up before measuring; requests in it are not counted.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) warmup: f64,
    /// The measured period (with --count: the longest the run may take).
    #[arg(long)]
    pub(crate) seconds: f64,
    /// Stop after this many requests.
    #[arg(long)]
    pub(crate) count: Option<u64>,
    /// The secret `get` reads (`get-many`: NAME-0, NAME-1, …).
    #[arg(long, default_value = "bench")]
    pub(crate) name: String,
    /// Secrets per `get-many` call.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) batch: u16,
    /// `put` stores secrets PREFIX-0, PREFIX-1, …
    #[arg(long, default_value = "put")]
    pub(crate) prefix: String,
    /// How many secrets `get-spread` draws from.
    #[arg(long, default_value_t = 1)]
    pub(crate) spread: u64,
    /// Read a bearer token from stdin and send it with every request
    /// (`authorization: Bearer …`); never on the command line.
    #[arg(long)]
    pub(crate) token_stdin: bool,
}

/// A bearer token, held to be sent and never shown.
#[derive(Clone)]
pub(crate) struct Bearer(String);

impl Bearer {
    pub(crate) fn new(token: String) -> Bearer {
        Bearer(token)
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

/// `message` as a request, with `bearer` (if any) in its `authorization` header.
pub(crate) fn with_token<T>(message: T, bearer: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(bearer) = bearer
        && let Ok(value) = format!("Bearer {bearer}").parse()
    {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl ClientArgs {
    /// `op` on `socket` with `in_flight` connections for `seconds`, no warm-up,
    /// the defaults otherwise (as the command line has them).
    pub(crate) fn new(socket: &std::path::Path, op: Op, in_flight: u16, seconds: f64) -> ClientArgs {
        ClientArgs {
            socket: socket.to_path_buf(),
            op,
            in_flight,
            warmup: 0.0,
            seconds,
            count: None,
            name: "bench".into(),
            batch: 20,
            prefix: "put".into(),
            spread: 1,
            token_stdin: false,
        }
    }

    fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "client".into(),
            "--socket".into(),
            self.socket.display().to_string(),
            "--op".into(),
            clap::ValueEnum::to_possible_value(&self.op).map(|v| v.get_name().to_owned()).unwrap_or_default(),
            "--in-flight".into(),
            self.in_flight.to_string(),
            "--warmup".into(),
            self.warmup.to_string(),
            "--seconds".into(),
            self.seconds.to_string(),
            "--name".into(),
            self.name.clone(),
            "--batch".into(),
            self.batch.to_string(),
            "--prefix".into(),
            self.prefix.clone(),
            "--spread".into(),
            self.spread.to_string(),
        ];
        if self.token_stdin {
            a.push("--token-stdin".into());
        }
        if let Some(count) = self.count {
            a.extend(["--count".into(), count.to_string()]);
        }
        a
    }
}

/// The bench's side: runs the client as a separate process and returns what it measured.
pub(crate) async fn run(args: &ClientArgs) -> anyhow::Result<LoadResult> {
    run_with(args, &crate::child::Launch::default()).await
}

/// [`run`], the client started as `launch` says (another uid, a token on stdin).
pub(crate) async fn run_with(args: &ClientArgs, launch: &crate::child::Launch) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(args.token_stdin == launch.stdin.is_some(), "a token client without a token, or the reverse");
    let limit = Duration::from_secs_f64(args.warmup + args.seconds + 30.0);
    crate::child::run_with(args.to_args(), limit, "load", launch).await
}

/// The hidden `client` subcommand.
pub(crate) fn client(args: &ClientArgs) -> anyhow::Result<()> {
    crate::child::serve(crate::child::current_thread()?, load(args))
}

/// What one task saw.
#[derive(Default)]
struct TaskTally {
    latencies_ns: Vec<u64>,
    total: u64,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
    reply_bytes: usize,
}

async fn load(args: &ClientArgs) -> anyhow::Result<LoadResult> {
    let bearer = if args.token_stdin {
        let mut token = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut token).context("reading the token from stdin")?;
        Some(Bearer::new(token.trim().to_owned()))
    } else {
        None
    };
    let cpu_before = crate::noise::cpu_seconds(std::process::id())?;
    let mut channels = Vec::new();
    for _ in 0..args.in_flight {
        channels.push(
            vault_proto::connect(&args.socket)
                .await
                .with_context(|| format!("connecting to {}", args.socket.display()))?,
        );
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let deadline = measure_from + Duration::from_secs_f64(args.seconds);
    let issued = Arc::new(AtomicU64::new(0));
    let count = args.count.unwrap_or(u64::MAX);
    let tasks: Vec<_> = channels
        .into_iter()
        .enumerate()
        .map(|(i, channel)| {
            let (args, issued, bearer) = (args.clone(), issued.clone(), bearer.clone());
            let draw = Draw::seeded(i as u64);
            tokio::spawn(async move {
                let call = Call { args: &args, bearer: bearer.as_ref(), draw };
                call.task(channel, measure_from, deadline, &issued, count).await
            })
        })
        .collect();
    let mut tally = TaskTally::default();
    for t in tasks {
        let t = t.await.context("a load task panicked")?;
        tally.latencies_ns.extend(t.latencies_ns);
        tally.total += t.total;
        for (code, n) in t.errors {
            *tally.errors.entry(code).or_default() += n;
        }
        tally.first_error = tally.first_error.or(t.first_error);
        tally.reply_bytes = tally.reply_bytes.max(t.reply_bytes);
    }
    let measured_s = (Instant::now().max(measure_from) - measure_from).as_secs_f64();
    let mut lat = tally.latencies_ns;
    lat.sort_unstable();
    let us = |p: f64| percentile(&lat, p).map_or(f64::NAN, |ns| ns as f64 / 1000.0);
    Ok(LoadResult {
        client_pid: std::process::id(),
        requests: lat.len() as u64,
        requests_total: tally.total,
        errors: tally.errors.values().sum(),
        errors_by_code: tally.errors,
        first_error: tally.first_error,
        measured_s,
        throughput: lat.len() as f64 / measured_s,
        p50_us: us(50.0),
        p99_us: us(99.0),
        max_us: us(100.0),
        reply_bytes: tally.reply_bytes,
        client_cpu_s: crate::noise::cpu_seconds(std::process::id())? - cpu_before,
    })
}

/// Picks secrets for `get-spread`: xorshift64*, enough to spread reads evenly
/// (not for anything secret), seeded per connection so each draws its own.
struct Draw(u64);

impl Draw {
    fn seeded(task: u64) -> Draw {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Draw((nanos as u64 ^ task.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// What one connection's task sends.
struct Call<'a> {
    args: &'a ClientArgs,
    bearer: Option<&'a Bearer>,
    draw: Draw,
}

impl Call<'_> {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        with_token(message, self.bearer.map(Bearer::expose))
    }

    /// One connection's loop: a request at a time until `deadline` or until `count`
    /// requests have been issued across all tasks. Latencies of requests started at
    /// or after `measure_from` are kept; a failed request is counted, by its status
    /// code, not timed.
    async fn task(
        mut self,
        channel: tonic::transport::Channel,
        measure_from: Instant,
        deadline: Instant,
        issued: &AtomicU64,
        count: u64,
    ) -> TaskTally {
        let args = self.args;
        let mut agent = vault_proto::agent_client(channel.clone());
        let mut admin = vault_proto::admin_client(channel);
        let value = crate::secret_value();
        let names: Vec<String> = (0..args.batch).map(|i| format!("{}-{i}", args.name)).collect();
        let mut t = TaskTally::default();
        loop {
            let started = Instant::now();
            if started >= deadline {
                break;
            }
            let n = issued.fetch_add(1, Ordering::Relaxed);
            if n >= count {
                break;
            }
            let outcome = match args.op {
                Op::Get => {
                    let req = v1::GetSecretRequest { env: String::new(), name: args.name.clone(), version: 0 };
                    agent.get_secret(self.request(req)).await.map(|r| prost::Message::encoded_len(r.get_ref()))
                }
                Op::GetSpread => {
                    let name = format!("{}-{}", args.name, self.draw.below(args.spread));
                    let req = v1::GetSecretRequest { env: String::new(), name, version: 0 };
                    agent.get_secret(self.request(req)).await.map(|r| prost::Message::encoded_len(r.get_ref()))
                }
                Op::GetMany => {
                    let req = v1::GetSecretsRequest { env: String::new(), names: names.clone() };
                    agent.get_secrets(self.request(req)).await.map(|r| prost::Message::encoded_len(r.get_ref()))
                }
                Op::Reveal => {
                    let secret = Some(v1::SecretRef { env: String::new(), name: args.name.clone() });
                    let req = v1::ShowSecretRequest { secret, reveal: true, version: 0 };
                    admin.show_secret(req).await.map(|r| prost::Message::encoded_len(r.get_ref()))
                }
                Op::Put => {
                    let secret = Some(v1::SecretRef { env: String::new(), name: format!("{}-{n}", args.prefix) });
                    let req = v1::PutSecretRequest { secret, value: value.clone(), ..Default::default() };
                    admin.put_secret(req).await.map(|r| prost::Message::encoded_len(r.get_ref()))
                }
            };
            let took = started.elapsed();
            t.total += 1;
            match outcome {
                Ok(bytes) => {
                    t.reply_bytes = bytes;
                    if started >= measure_from {
                        t.latencies_ns.push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
                    }
                }
                Err(status) => {
                    *t.errors.entry(format!("{:?}", status.code())).or_default() += 1;
                    t.first_error.get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                }
            }
        }
        t
    }
}
