//! vault-bench: vaultd measured against the floor — a bare tonic server answering
//! the same call over the same kind of socket — and vaultd's own costs (durable
//! puts, unlock, memory, watch fan-out), plus a soak mode. See `--help` and issue 7.
//!
//! Every server runs as its own process and every load comes from a separate
//! client process: the bench re-executes itself with the hidden `floor-server`,
//! `client`, `fanout-client` and `soak-client` subcommands. Modules: [`floor`]
//! (the echo server), [`load`] (the client), [`fanout`] (watchers and
//! rotations), [`soak`] (`vault-bench soak`), [`vaultd`] (starting, driving and
//! measuring vaultd), [`report`] (statistics, markdown, JSON).

mod broker;
mod child;
mod fanout;
mod floor;
mod load;
mod report;
mod revoke;
mod soak;
mod vaultd;

use anyhow::{Context as _, ensure};
use clap::{Parser, Subcommand};
use load::{ClientArgs, Op};
use report::{Case, Fanout, Goal, LoadResult, Memory, NotMeasured, Puts, Ratio, Report, Round, Settings};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The secret's size: a provider API key or bot token is 40–200 bytes.
const VALUE_LEN: usize = 100;
/// Warm-up before each measured period.
const WARMUP_S: f64 = 0.5;
/// The in-flight levels measured.
const IN_FLIGHT: [u16; 2] = [1, 32];
/// The secret GetSecret reads; GetSecrets reads `bench-0` … `bench-19`.
const SECRET: &str = "bench";
/// Secrets per GetSecrets call.
const BATCH: u16 = 20;
/// The calls measured, each at every in-flight level.
const CALLS: [(Op, &str); 2] = [(Op::Get, "GetSecret"), (Op::GetMany, "GetSecrets ×20")];
/// How long a fill of the vault (for the memory figures) may take, per secret.
const FILL_SECONDS_PER_SECRET: f64 = 0.05;

/// vault-bench: vaultd against the floor, and vaultd's own costs.
///
/// Measures, on this machine's unix sockets: GetSecret, and GetSecrets of 20
/// secrets, on vaultd (audit reads on, the default, and off) and on the floor (a
/// bare tonic server answering the same calls with replies of the same size), each
/// at 1 and at 32 requests in flight, with 100-byte values; durable puts; `vaultctl
/// unlock` at the default KDF; vaultd's resident memory (idle, with 10,000 and
/// with `--large` 100,000 secrets); watch fan-out (RotateSecret reply → the last
/// of 100 watchers, on 10 connections, has the new version).
/// Cases alternate (floor, vaultd audit on, vaultd audit off, …) in every round;
/// figures are the median and min–max across rounds.
///
/// "N in flight" is N client connections (one unix-socket HTTP/2 connection
/// each), each with one request outstanding at a time, for the floor and vaultd
/// alike. Servers and the load client are separate processes: the bench starts
/// vaultd, and re-executes itself for the floor server and for each client run.
///
/// vaultd and vaultctl are the binaries next to the bench's own
/// (target/release/). Under `cargo run` the bench first runs
/// `$CARGO build --locked -p vaultd -p vaultctl` with its own profile (a no-op
/// when they are fresh), so the vaultd measured is the one in the tree; run
/// directly, it needs them built: `cargo build --release -p vaultd -p vaultctl`.
///
/// Run it in release: `cargo run --release -p vault-bench`.
#[derive(Debug, Parser)]
#[command(name = "vault-bench", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the benchmark (the default).
    Run(RunArgs),
    /// Soak: 64 readers and background rotations and token churn for a long
    /// time; errors by kind, reads/s and vaultd's RSS over time. Exits non-zero
    /// if any unintended error occurred.
    Soak(soak::SoakArgs),
    /// Only the watch fan-out figure (also part of `run`).
    Fanout(FanoutOnlyArgs),
    /// Internal: the watchers and rotations of one fan-out run; prints a JSON result.
    #[command(hide = true)]
    FanoutClient(fanout::FanoutArgs),
    /// Only the revoke-all figure (also part of `run`): fresh vaults of 10,000
    /// tokens, 1,000 secrets and 200 watch streams each.
    RevokeAll {
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=20))]
        rounds: u16,
    },
    /// Internal: build one revoke-all scene and time the revoke-all; prints a JSON result.
    #[command(hide = true)]
    RevokeClient(revoke::RevokeArgs),
    /// The credential broker's overhead: the same HTTPS upstream called directly
    /// and through vaultd's broker over loopback (latency at 1 in flight,
    /// throughput at 32, the first streamed byte).
    Broker(broker::BrokerArgs),
    /// Internal: the broker bench's upstream.
    #[command(hide = true)]
    BrokerUpstream(broker::UpstreamArgs),
    /// Internal: one broker bench load run; prints a JSON result.
    #[command(hide = true)]
    BrokerClient(broker::ClientArgs),
    /// Internal: the soak's load; prints JSON lines.
    #[command(hide = true)]
    SoakClient(soak::SoakClientArgs),
    /// Internal: serve the floor on a socket.
    #[command(hide = true)]
    FloorServer {
        #[arg(long)]
        socket: PathBuf,
    },
    /// Internal: one load-client run; prints a JSON result.
    #[command(hide = true)]
    Client(ClientArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Rounds: each case is measured once per round (also the number of unlocks).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=50))]
    rounds: u16,
    /// Measured seconds per case per round (after a 0.5 s warm-up); also per put round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=120))]
    seconds: u64,
    /// Write every figure, every round, to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also measure memory with 100,000 secrets (filling takes minutes).
    #[arg(long)]
    large: bool,
    /// Watch fan-out: measured rotations (after one warm-up rotation).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    rotations: u16,
}

#[derive(Debug, Clone, clap::Args)]
struct FanoutOnlyArgs {
    /// Measured rotations (after one warm-up rotation).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    rotations: u16,
    /// Watch streams, all of one secret.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=4000))]
    watchers: u16,
    /// Connections the watchers are spread over.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    connections: u16,
    /// Also measure with audit reads off.
    #[arg(long)]
    audit_off_too: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Cmd::FloorServer { socket }) => floor::serve(&socket),
        Some(Cmd::Client(args)) => load::client(&args),
        Some(Cmd::Run(args)) => bench(args),
        Some(Cmd::Soak(args)) => soak::soak(&args),
        Some(Cmd::Fanout(args)) => fanout_only(&args),
        Some(Cmd::FanoutClient(args)) => fanout::client(&args),
        Some(Cmd::SoakClient(args)) => soak::client(&args),
        Some(Cmd::RevokeAll { rounds }) => revoke_only(rounds),
        Some(Cmd::RevokeClient(args)) => revoke::client(&args),
        Some(Cmd::Broker(args)) => broker::bench(&args),
        Some(Cmd::BrokerUpstream(args)) => broker::upstream(&args),
        Some(Cmd::BrokerClient(args)) => broker::client(&args),
        None => bench(cli.run),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vault-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a report's table, and with `--json FILE` writes every figure there.
pub(crate) fn emit(markdown: &str, report: &impl serde::Serialize, json: Option<&Path>) -> anyhow::Result<()> {
    print!("{markdown}");
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("vault-bench: wrote {}", path.display());
    }
    Ok(())
}

/// The 100-byte value stored in vaultd and returned by the floor.
pub(crate) fn secret_value() -> Vec<u8> {
    let mut v = b"sk-bench-".to_vec();
    v.resize(VALUE_LEN, b'x');
    v
}

/// For the bench's own children: exit if the bench dies (even by SIGKILL).
pub(crate) fn die_with_parent() -> anyhow::Result<()> {
    use rustix::process::{Signal, getppid, set_parent_process_death_signal};
    set_parent_process_death_signal(Some(Signal::TERM))?;
    // The parent may have died before the call: then we were reparented to init.
    ensure!(getppid().is_some_and(|p| !p.is_init()), "the bench that started this process is gone");
    Ok(())
}

fn bench(args: RunArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "vault-bench: WARNING: a debug build; figures mean little. Use `cargo run --release -p vault-bench`."
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = runtime.block_on(async {
        // Ctrl-c drops the bench's future: the guards in it stop every child.
        tokio::select! {
            report = measure(&args) => report,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    })?;
    emit(&report.markdown(), &report, args.json.as_deref())
}

/// One GetSecret server under test.
struct Target<'a> {
    label: &'static str,
    socket: &'a Path,
    pid: u32,
}

async fn measure(args: &RunArgs) -> anyhow::Result<Report> {
    let build_started = Instant::now();
    let bins = vaultd::Bins::locate()?;
    let build_s = build_started.elapsed().as_secs_f64();
    let started = Instant::now();
    let loadavg_start = loadavg();
    let busy = loadavg_start.split_whitespace().next().and_then(|l| l.parse::<f64>().ok()).unwrap_or(0.0);
    if busy >= 1.0 {
        eprintln!("vault-bench: WARNING: load average {busy} before starting: other work will make the figures noisy");
    }
    let tmp = tempfile::Builder::new().prefix("vault-bench-").tempdir()?;
    let progress = |what: &str| eprintln!("vault-bench: [{:>4.0} s] {what}", started.elapsed().as_secs_f64());

    let cases = get_cases(args, &bins, tmp.path(), &progress).await?;
    let mut reply_bytes = Vec::new();
    for (_, call) in CALLS {
        let sizes: Vec<usize> =
            cases.iter().filter(|c| c.call == call).flat_map(|c| c.rounds.iter().map(|r| r.load.reply_bytes)).collect();
        ensure!(sizes.windows(2).all(|w| w[0] == w[1]), "{call} reply sizes differ between servers: {sizes:?}");
        reply_bytes.push(format!("{call} {} bytes", sizes.first().copied().unwrap_or_default()));
    }
    progress("durable puts, 1 in flight");
    let puts = put_rounds(args, &bins, tmp.path()).await?;
    progress("watch fan-out");
    let fanout = vec![fanout(&bins, tmp.path(), true, 100, 10, args.rotations).await?];
    let revoke_all = vec![revoke_all(&bins, tmp.path(), 0).await?];
    progress("unlock time at the default KDF, and memory");
    let (unlock_ms, memory) = unlock_and_memory(args, &bins, tmp.path(), &progress).await?;

    let settings = Settings {
        rounds: args.rounds.into(),
        seconds: args.seconds,
        warmup_s: WARMUP_S,
        value_bytes: VALUE_LEN,
        reply_bytes: reply_bytes.join(", "),
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        concurrency:
            "N client connections, one request outstanding on each; client and each server are separate processes"
                .into(),
        vaultd: bins.vaultd.display().to_string(),
        loadavg_start,
        loadavg_end: loadavg(),
    };
    Ok(Report {
        settings,
        bench_pid: std::process::id(),
        ratios: ratios(&cases),
        cases,
        puts: Puts { rounds: puts },
        unlock_ms,
        memory,
        fanout,
        revoke_all,
        not_measured: vec![NotMeasured {
            item: "soak (errors, reads/s, RSS over time)".into(),
            reason: "a separate mode: `vault-bench soak --duration 10m`".into(),
        }],
        elapsed_s: started.elapsed().as_secs_f64(),
        build_s,
    })
}

/// GetSecret and GetSecrets on the floor and on vaultd with audit reads on and
/// off, at each in-flight level, alternating in every round.
async fn get_cases(
    args: &RunArgs,
    bins: &vaultd::Bins,
    tmp: &Path,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Vec<Case>> {
    progress("starting the floor and two vaultds (audit reads on, off)");
    let floor = floor::Floor::start(tmp).await?;
    let on = vaultd::Daemon::start(bins, &tmp.join("audit-on"), true).await?;
    let off = vaultd::Daemon::start(bins, &tmp.join("audit-off"), false).await?;
    for d in [&on, &off] {
        d.init().await?;
        d.put(SECRET, &secret_value()).await?;
        fill(d, BATCH.into(), SECRET).await?;
    }
    let targets = [
        Target { label: "floor (tonic echo)", socket: &floor.socket, pid: floor.pid() },
        Target { label: "vaultd, audit on", socket: &on.agent_socket, pid: on.pid() },
        Target { label: "vaultd, audit off", socket: &off.agent_socket, pid: off.pid() },
    ];
    let mut cases = Vec::new();
    for (_, call) in CALLS {
        for n in IN_FLIGHT {
            for t in &targets {
                cases.push(Case { call: call.into(), server: t.label.into(), in_flight: n.into(), rounds: Vec::new() });
            }
        }
    }
    let rounds = usize::from(args.rounds);
    for round in 0..rounds {
        progress(&format!("GetSecret(s) round {}/{rounds}", round + 1));
        let mut case = cases.iter_mut();
        for (op, call) in CALLS {
            for in_flight in IN_FLIGHT {
                for t in &targets {
                    let client = ClientArgs {
                        socket: t.socket.to_path_buf(),
                        op,
                        in_flight,
                        warmup: WARMUP_S,
                        seconds: args.seconds as f64,
                        count: None,
                        name: SECRET.into(),
                        batch: BATCH,
                        prefix: String::new(),
                    };
                    let cpu_before = vaultd::cpu_seconds(t.pid)?;
                    let load = load::run(&client).await?;
                    let cpu = vaultd::cpu_seconds(t.pid)? - cpu_before;
                    ensure!(
                        load.client_pid != t.pid && load.client_pid != std::process::id(),
                        "client and server share a process"
                    );
                    if let Some(e) = &load.first_error {
                        eprintln!(
                            "vault-bench: {call} {} at {in_flight} in flight: {} errors, first: {e}",
                            t.label, load.errors
                        );
                    }
                    let round = Round {
                        round,
                        server_pid: t.pid,
                        server_cpu_us_per_req: cpu * 1e6 / load.requests_total.max(1) as f64,
                        server_rss_kib_after: vaultd::rss_kib(t.pid)?,
                        load,
                    };
                    case.next().context("cases and targets disagree")?.rounds.push(round);
                }
            }
        }
    }
    Ok(cases)
}

/// Sequential durable puts of new secrets over the admin socket, `--seconds` per round.
async fn put_rounds(args: &RunArgs, bins: &vaultd::Bins, tmp: &Path) -> anyhow::Result<Vec<LoadResult>> {
    let daemon = vaultd::Daemon::start(bins, &tmp.join("puts"), true).await?;
    daemon.init().await?;
    let mut puts = Vec::new();
    for round in 0..args.rounds {
        let client = ClientArgs {
            socket: daemon.admin_socket.clone(),
            op: Op::Put,
            in_flight: 1,
            warmup: WARMUP_S,
            seconds: args.seconds as f64,
            count: None,
            name: String::new(),
            batch: 1,
            prefix: format!("put-r{round}"),
        };
        let load = load::run(&client).await?;
        ensure!(load.errors == 0, "puts failed: {} errors, first: {:?}", load.errors, load.first_error);
        puts.push(load);
    }
    Ok(puts)
}

/// `vaultctl unlock` after a restart, `--rounds` times; then vaultd's RSS idle,
/// after storing 10,000 (and with `--large` 100,000) secrets, and after a restart.
async fn unlock_and_memory(
    args: &RunArgs,
    bins: &vaultd::Bins,
    tmp: &Path,
    progress: &dyn Fn(&str),
) -> anyhow::Result<(Vec<f64>, Vec<Memory>)> {
    let mut daemon = vaultd::Daemon::start(bins, &tmp.join("memory"), true).await?;
    daemon.init().await?;
    daemon.put(SECRET, &secret_value()).await?;
    let mut unlock_ms = Vec::new();
    for _ in 0..args.rounds {
        daemon.restart().await?;
        unlock_ms.push(daemon.unlock().await?.as_secs_f64() * 1e3);
    }
    let settle = || tokio::time::sleep(Duration::from_secs(1));
    settle().await;
    // The targets: idle under 30 MB; with 100,000 secrets under 100 MB.
    let mut memory = vec![Memory {
        state: "idle after unlock, 1 secret".into(),
        secrets: 1,
        rss_kib: daemon.rss_kib()?,
        target_mb: Some(30.0),
    }];
    let mut stored = 1;
    let sizes: &[(u64, Option<f64>)] =
        if args.large { &[(10_000, None), (100_000, Some(100.0))] } else { &[(10_000, None)] };
    for &(secrets, target_mb) in sizes {
        progress(&format!("storing {secrets} secrets"));
        let fill = fill(&daemon, secrets - stored, &format!("fill{stored}")).await?;
        stored = secrets;
        memory.push(Memory {
            state: format!("after storing {secrets} secrets ({:.0} puts/s at 32 in flight)", fill.throughput),
            secrets,
            rss_kib: daemon.rss_kib()?,
            target_mb,
        });
        daemon.restart().await?;
        daemon.unlock().await?;
        settle().await;
        memory.push(Memory {
            state: format!("idle after restart and unlock, {secrets} secrets"),
            secrets,
            rss_kib: daemon.rss_kib()?,
            target_mb,
        });
    }
    Ok((unlock_ms, memory))
}

/// The first three fields of /proc/loadavg.
pub(crate) fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The secret the fan-out watchers watch; its rotator is `generate`.
const WATCHED: &str = "watched";

/// Watch fan-out on a fresh vaultd (audit reads on or off): `watchers` streams
/// over `connections` connections in a client process, `rotations` rotations.
async fn fanout(
    bins: &vaultd::Bins,
    tmp: &Path,
    audit_reads: bool,
    watchers: u16,
    connections: u16,
    rotations: u16,
) -> anyhow::Result<Fanout> {
    let label = if audit_reads { "audit on" } else { "audit off" };
    let daemon =
        vaultd::Daemon::start(bins, &tmp.join(format!("fanout-{}", label.replace(' ', "-"))), audit_reads).await?;
    daemon.init().await?;
    daemon.ctl(&["put", WATCHED, "--provider", "bench", "--rotator", "generate"], &secret_value()).await?;
    let args = fanout::FanoutArgs {
        agent_socket: daemon.agent_socket.clone(),
        admin_socket: daemon.admin_socket.clone(),
        name: WATCHED.into(),
        watchers,
        connections,
        rotations,
    };
    let result = fanout::run(&args).await?;
    ensure!(result.client_pid != daemon.pid(), "client and server share a process");
    Ok(Fanout { server: label.into(), result })
}

/// One revoke-all on a fresh vaultd (audit reads on), scene built by the client.
async fn revoke_all(bins: &vaultd::Bins, tmp: &Path, round: u16) -> anyhow::Result<revoke::RevokeResult> {
    let daemon = vaultd::Daemon::start(bins, &tmp.join(format!("revoke-{round}")), true).await?;
    daemon.init().await?;
    let args = revoke::RevokeArgs {
        agent_socket: daemon.agent_socket.clone(),
        admin_socket: daemon.admin_socket.clone(),
        tokens: 10_000,
        secrets: 1_000,
        streams: 200,
    };
    let result = revoke::run(&args).await?;
    ensure!(result.client_pid != daemon.pid(), "client and server share a process");
    Ok(result)
}

/// `vault-bench revoke-all`: only the revoke-all figure, `rounds` times.
fn revoke_only(rounds: u16) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let bins = vaultd::Bins::locate()?;
        let tmp = tempfile::Builder::new().prefix("vault-bench-").tempdir()?;
        let loadavg_start = loadavg();
        let mut out = Vec::new();
        for round in 0..rounds {
            out.push(revoke_all(&bins, tmp.path(), round).await?);
        }
        println!("Load average (1, 5, 15 min) at start: {loadavg_start}; at end: {}.", loadavg());
        println!("| tokens / secrets / streams | setup s | RevokeAll round trip ms | sent → last stream closed ms |");
        println!("|---|---:|---:|---:|");
        for r in &out {
            println!(
                "| {} / {} / {} | {:.1} | {:.1} | {:.1} |",
                r.tokens, r.secrets, r.streams, r.setup_s, r.revoke_ms, r.sent_to_last_closed_ms
            );
        }
        let closed: Vec<f64> = out.iter().map(|r| r.sent_to_last_closed_ms).collect();
        if let Some(s) = report::Spread::of(&closed) {
            println!(
                "\nsent → last stream closed: median {:.1} ms ({:.1}–{:.1}); target < 500 ms",
                s.median, s.min, s.max
            );
        }
        Ok(())
    })
}

/// `vault-bench fanout`: only the watch fan-out figure(s).
fn fanout_only(args: &FanoutOnlyArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let bins = vaultd::Bins::locate()?;
        let tmp = tempfile::Builder::new().prefix("vault-bench-").tempdir()?;
        let loadavg_start = loadavg();
        let mut out = Vec::new();
        for audit_reads in if args.audit_off_too { &[true, false][..] } else { &[true] } {
            out.push(fanout(&bins, tmp.path(), *audit_reads, args.watchers, args.connections, args.rotations).await?);
        }
        println!("Load average (1, 5, 15 min) at start: {loadavg_start}; at end: {}.", loadavg());
        println!("| vaultd | watchers / connections | rotations | ack → last ms | ack → first ms | RotateSecret ms | sent → last ms |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for f in &out {
            let show = |g: fn(&fanout::FanoutRound) -> f64| {
                report::Spread::of(&f.result.rounds.iter().map(g).collect::<Vec<_>>())
                    .map_or_else(|| "—".into(), |s| format!("{:.1} ({:.1}–{:.1})", s.median, s.min, s.max))
            };
            println!(
                "| {} | {} / {} | {} | {} | {} | {} | {} |",
                f.server,
                f.result.watchers,
                f.result.connections,
                f.result.rounds.len(),
                show(|r| r.ack_to_last_ms),
                show(|r| r.ack_to_first_ms),
                show(|r| r.rotate_ms),
                show(|r| r.sent_to_last_ms)
            );
        }
        Ok(())
    })
}

/// Stores `count` new secrets (32 puts in flight); fails on any error.
async fn fill(daemon: &vaultd::Daemon, count: u64, prefix: &str) -> anyhow::Result<LoadResult> {
    let client = ClientArgs {
        socket: daemon.admin_socket.clone(),
        op: Op::Put,
        in_flight: 32,
        warmup: 0.0,
        seconds: (count as f64 * FILL_SECONDS_PER_SECRET).max(60.0),
        count: Some(count),
        name: String::new(),
        batch: 1,
        prefix: prefix.into(),
    };
    let load = load::run(&client).await?;
    ensure!(load.errors == 0, "storing secrets failed: {} errors, first: {:?}", load.errors, load.first_error);
    ensure!(load.requests == count, "stored {} of {count} secrets before the time limit", load.requests);
    Ok(load)
}

/// vaultd/floor (throughput at 32 in flight; p50 and p99 at 1) and audit on/off,
/// for each call. The targets are for GetSecret; GetSecrets has none.
fn ratios(cases: &[Case]) -> Vec<Ratio> {
    let tput = |l: &LoadResult| l.throughput;
    let p50 = |l: &LoadResult| l.p50_us;
    let p99 = |l: &LoadResult| l.p99_us;
    let mut out = Vec::new();
    for (op, call) in CALLS {
        let per_round = |server: &str, n: usize, f: fn(&LoadResult) -> f64| -> Vec<f64> {
            let case = cases.iter().find(|c| c.call == call && c.server.starts_with(server) && c.in_flight == n);
            case.map(|c| c.rounds.iter().map(|r| f(&r.load)).collect()).unwrap_or_default()
        };
        let target = |goal, bound| (op == Op::Get).then_some((goal, bound));
        for audit in ["vaultd, audit on", "vaultd, audit off"] {
            out.push(Ratio::new(
                &format!("{call}: {audit} / floor, req/s at 32 in flight"),
                &per_round(audit, 32, tput),
                &per_round("floor", 32, tput),
                target(Goal::AtLeast, 0.75),
            ));
            out.push(Ratio::new(
                &format!("{call}: {audit} / floor, p50 at 1 in flight"),
                &per_round(audit, 1, p50),
                &per_round("floor", 1, p50),
                target(Goal::AtMost, 1.25),
            ));
            out.push(Ratio::new(
                &format!("{call}: {audit} / floor, p99 at 1 in flight"),
                &per_round(audit, 1, p99),
                &per_round("floor", 1, p99),
                target(Goal::AtMost, 1.5),
            ));
        }
        for n in IN_FLIGHT.map(usize::from) {
            out.push(Ratio::new(
                &format!("{call}: audit on / audit off, req/s at {n} in flight"),
                &per_round("vaultd, audit on", n, tput),
                &per_round("vaultd, audit off", n, tput),
                target(Goal::AtLeast, 0.9),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn soak_takes_a_humantime_duration_and_defaults_to_ten_minutes() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Some(Cmd::Soak(s)) => s,
            other => panic!("not soak: {other:?}"),
        };
        assert_eq!(parse(&["vault-bench", "soak"]).duration, Duration::from_secs(600));
        let s = parse(&["vault-bench", "soak", "--duration", "1h 30m", "--sample-every", "10s"]);
        assert_eq!((s.duration, s.sample_every), (Duration::from_secs(5400), Duration::from_secs(10)));
        assert!(Cli::try_parse_from(["vault-bench", "soak", "--duration", "ten"]).is_err());
        assert!(Cli::try_parse_from(["vault-bench", "--rounds", "2"]).unwrap().command.is_none());
    }
}
