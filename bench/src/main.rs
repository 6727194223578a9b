//! vault-bench: vaultd measured against the floor — a bare tonic server answering
//! the same call over the same kind of socket — and vaultd's own costs (durable
//! puts, unlock, memory, watch fan-out), plus a soak mode. See `--help` and issue 7.
//!
//! Every server runs as its own process and every load comes from a separate
//! client process: the bench re-executes itself with the hidden `floor-server`,
//! `client`, `fanout-client` and `soak-client` subcommands. Modules: [`floor`]
//! (the echo server), [`load`] (the client), [`fanout`] (watchers and
//! rotations), [`soak`] (`vault-bench soak`), [`verify`] (`vault-bench
//! audit-verify`), [`vaultd`] (starting and driving vaultd), [`noise`] (was the
//! machine quiet), [`report`] (statistics, verdicts, markdown, JSON).

mod broker;
mod child;
mod fanout;
mod floor;
mod load;
mod noise;
mod report;
mod revoke;
mod soak;
mod vaultd;
mod verify;

use anyhow::{Context as _, ensure};
use child::Launch;
use clap::{Parser, Subcommand};
use load::{Bearer, ClientArgs, Op};
use report::{
    Call, Case, Fanout, Goal, Judge, LoadResult, Memory, NotMeasured, Puts, Ratio, Report, Round, Settings, Subject,
};
use std::collections::HashMap;
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
const CALLS: [Call; 2] = [Call::GetSecret, Call::GetSecrets];
/// The secrets the spread case draws from, `s-0` … `s-99999`, in a vaultd of their own.
const SPREAD: u64 = 100_000;
const SPREAD_PREFIX: &str = "s";
/// The uid the kernel-client case's load client runs as (no such user is needed).
const KERNEL_CLIENT_UID: u32 = 64_123;
/// How long a fill of the vault (for the memory figures) may take, per secret.
const FILL_SECONDS_PER_SECRET: f64 = 0.05;

/// vault-bench: vaultd against the floor, and vaultd's own costs.
///
/// Measures, on this machine's unix sockets: GetSecret, and GetSecrets of 20
/// secrets, on vaultd (audit reads on, the default, and off) and on the floor (a
/// bare tonic server answering the same calls with replies of the same size), each
/// at 1 and at 32 requests in flight, with 100-byte values; GetSecret with a
/// client's bearer token, by a client of another uid (needs root), and spread at
/// random over 100,000 secrets against one secret of the same vaultd; with
/// `--compare-vaultd`, the same reads on another vaultd binary; durable puts;
/// `vaultctl unlock` at the default KDF; vaultd's resident memory (idle, with
/// 10,000 and 100,000 secrets); watch fan-out (RotateSecret reply → the last of
/// 100 watchers, on 10 connections, has the new version); revoke-all.
/// Cases alternate (floor, vaultd audit on, vaultd audit off, …) in every round;
/// figures are the median and min–max across rounds.
///
/// Honest under noise: a round in which other processes used more than 0.1 of a
/// core during any of its runs is invalid; targets are judged on the median of
/// at least 5 valid rounds, or not at all ("not measured (machine busy)"). Any
/// refused request (a reply that is not OK) fails every target of the run.
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
    /// Issue 17's figure: fill an audit log to 1,000,000 entries (reads with
    /// audit on, imported), then time `vaultctl audit verify` on it.
    AuditVerify(verify::VerifyArgs),
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
    /// Targets need at least 5 valid (quiet) rounds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=50))]
    rounds: u16,
    /// Measured seconds per case per round (after a 0.5 s warm-up); also per put round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=120))]
    seconds: u64,
    /// Write every figure, every round, to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also measure this vaultd binary (audit on, owner GetSecret), alternating
    /// with the current one, e.g. one built from an older commit; vaultctl is
    /// taken from the same directory if it is there.
    #[arg(long, value_name = "PATH")]
    compare_vaultd: Option<PathBuf>,
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
        Some(Cmd::AuditVerify(args)) => verify::run(&args),
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
    let report = measuring("", measure(&args))?;
    emit(&report.markdown(), &report, args.json.as_deref())
}

/// Runs `measure` to the end or until ctrl-c, after warning if this is a debug
/// build (`subcommand`: how to run this mode in release).
pub(crate) fn measuring<T>(subcommand: &str, measure: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    if cfg!(debug_assertions) {
        eprintln!(
            "vault-bench: WARNING: a debug build; figures mean little. Use `cargo run --release -p vault-bench{subcommand}`."
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        // Ctrl-c drops the bench's future: the guards in it stop every child.
        tokio::select! {
            report = measure => report,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    })
}

async fn measure(args: &RunArgs) -> anyhow::Result<Report> {
    let build_started = Instant::now();
    let bins = vaultd::Bins::locate()?;
    let build_s = build_started.elapsed().as_secs_f64();
    let started = Instant::now();
    let loadavg_start = noise::loadavg();
    let busy = noise::loadavg_1();
    if busy >= 1.0 {
        eprintln!("vault-bench: WARNING: load average {busy} before starting: other work will make the figures noisy");
    }
    let tmp = tempfile::Builder::new().prefix("vault-bench-").tempdir()?;
    let progress = |what: &str| eprintln!("vault-bench: [{:>4.0} s] {what}", started.elapsed().as_secs_f64());

    let mut servers = Servers::start(args, &bins, tmp.path(), &progress).await?;
    let cases = get_cases(args, &servers, &progress).await?;
    let mut reply_bytes = Vec::new();
    for call in CALLS {
        // The spread case's names differ in length, so its replies do too.
        let same_name = |c: &&Case| !matches!(c.subject, Subject::OneOf100k | Subject::SpreadOver100k);
        let sizes: Vec<usize> = cases
            .iter()
            .filter(|c| c.call == call)
            .filter(same_name)
            .flat_map(|c| c.rounds.iter().map(|r| r.load.reply_bytes))
            .collect();
        ensure!(
            sizes.windows(2).all(|w| w[0] == w[1]),
            "{} reply sizes differ between servers: {sizes:?}",
            call.label()
        );
        reply_bytes.push(format!("{} {} bytes", call.label(), sizes.first().copied().unwrap_or_default()));
    }
    let mut memory = servers.spread_memory(&progress).await?;
    let mut not_measured = servers.not_measured.clone();
    drop(servers);
    progress("durable puts, 1 in flight");
    let puts = put_rounds(args, &bins, tmp.path()).await?;
    progress("watch fan-out");
    let fanout = vec![fanout(&bins, tmp.path(), true, 100, 10, args.rotations).await?];
    let revoke_all = vec![revoke_all(&bins, tmp.path(), 0).await?];
    progress("unlock time at the default KDF, and memory");
    let (unlock_ms, small_memory) = unlock_and_memory(args, &bins, tmp.path(), &progress).await?;
    memory.splice(0..0, small_memory);

    let round_checks = report::round_checks(&cases);
    let basis = report::basis(&round_checks);
    // The compared build's refusals fail only the comparison: it is the reference, not the vaultd under test.
    let refused_by = |compared: bool| -> u64 {
        cases.iter().filter(|c| (c.subject == Subject::Compared) == compared).map(Case::refused).sum()
    };
    let (refused, refused_compared) = (refused_by(false), refused_by(true));
    let judge = Judge::new(refused, &round_checks);
    let unmeasured: HashMap<Subject, String> =
        not_measured.iter().filter_map(|n| n.subject.map(|s| (s, n.reason.clone()))).collect();
    let compared = args.compare_vaultd.is_some().then_some(refused_compared);
    let ratios = ratios(&cases, &basis, &judge, &unmeasured, compared);
    not_measured.push(NotMeasured {
        subject: None,
        item: "soak (errors, refused requests, reads/s, RSS over time)".into(),
        reason: "a separate mode: `vault-bench soak --duration 10m`".into(),
    });
    not_measured.push(NotMeasured {
        subject: None,
        item: "`vaultctl audit verify` on 1,000,000 entries (issue 17: < 5 s)".into(),
        reason: "a separate mode: `vault-bench audit-verify`".into(),
    });
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
        compared_vaultd: args.compare_vaultd.as_ref().map(|p| p.display().to_string()),
        loadavg_start,
        loadavg_end: noise::loadavg(),
    };
    Ok(Report {
        settings,
        bench_pid: std::process::id(),
        ratios,
        round_checks,
        basis,
        refused,
        refused_compared,
        cases,
        puts: Puts { rounds: puts },
        unlock_ms,
        memory,
        fanout,
        revoke_all,
        not_measured,
        elapsed_s: started.elapsed().as_secs_f64(),
        build_s,
    })
}

/// vaultd's configuration in the read cases: client and global rate limits far
/// above what the bench can do (a throttled read would be a refusal, and these
/// cases measure speed, not the limits; the owner is exempt anyway), and an agent
/// socket another uid can reach (the kernel-client case).
fn read_config(audit_reads: bool) -> String {
    let limits = "[limits]\nclient_rate = 1000000.0\nclient_burst = 1000000.0\nglobal_rate = 1000000.0\nglobal_burst = 1000000.0\n";
    format!("agent_socket_mode = \"0666\"\n[audit]\nreads = {audit_reads}\n{limits}")
}

/// A vaultd for the read cases in `dir` ([`read_config`]), initialized and
/// holding `bench` and `bench-0` … `bench-19`.
async fn reads_vaultd(bins: &vaultd::Bins, dir: &Path, audit_reads: bool) -> anyhow::Result<vaultd::Daemon> {
    let d = vaultd::Daemon::start_with_config(bins, dir, Some(&read_config(audit_reads))).await?;
    d.init().await?;
    d.put(SECRET, &secret_value()).await?;
    fill(&d, BATCH.into(), SECRET).await?;
    Ok(d)
}

/// The servers the rounds read from, set up and kept running for every round.
struct Servers {
    floor: floor::Floor,
    on: vaultd::Daemon,
    off: vaultd::Daemon,
    /// Holds `s-0` … `s-99999`.
    big: vaultd::Daemon,
    compared: Option<vaultd::Daemon>,
    /// A token of the client `bench-token` (bound to the bench's uid, granted `default/*`).
    token: Bearer,
    /// With root: the load client's uid and a copy of the bench it can execute,
    /// for the client `bench-kernel` (granted `default/*`).
    kernel_client: Option<(u32, PathBuf)>,
    not_measured: Vec<NotMeasured>,
}

impl Servers {
    async fn start(
        args: &RunArgs,
        bins: &vaultd::Bins,
        tmp: &Path,
        progress: &dyn Fn(&str),
    ) -> anyhow::Result<Servers> {
        progress("starting the floor and the vaultds (audit reads on, off)");
        let floor = floor::Floor::start(tmp).await?;
        let on = reads_vaultd(bins, &tmp.join("audit-on"), true).await?;
        let off = reads_vaultd(bins, &tmp.join("audit-off"), false).await?;
        let me = rustix::process::geteuid().as_raw().to_string();
        on.ctl(&["client", "add", "bench-token", "--uid", &me, "--allow", "default/*"], b"").await?;
        let (_, created) = on.ctl_output(&["--json", "token", "create", "--client", "bench-token"], b"").await?;
        let created: serde_json::Value = serde_json::from_slice(&created).context("reading `token create`")?;
        let token = Bearer::new(created["token"].as_str().context("`token create` printed no token")?.to_owned());
        let mut not_measured = Vec::new();
        let kernel_client = if rustix::process::geteuid().is_root() {
            let uid = KERNEL_CLIENT_UID.to_string();
            on.ctl(&["client", "add", "bench-kernel", "--uid", &uid, "--allow", "default/*"], b"").await?;
            Some((KERNEL_CLIENT_UID, reachable_copy_of_the_bench(tmp, on.dir())?))
        } else {
            not_measured.push(NotMeasured {
                subject: Some(Subject::KernelClient),
                item: "GetSecret by a client of another uid".into(),
                reason: "needs root: the load client runs as another uid".into(),
            });
            None
        };
        progress(&format!("storing {SPREAD} secrets for the spread case"));
        let big = vaultd::Daemon::start_with_config(bins, &tmp.join("100k"), Some(&read_config(true))).await?;
        big.init().await?;
        let filled = fill(&big, SPREAD, SPREAD_PREFIX).await?;
        progress(&format!("stored {SPREAD} secrets ({:.0} puts/s at 32 in flight)", filled.throughput));
        let compared = match &args.compare_vaultd {
            Some(path) => {
                let cbins = vaultd::Bins::beside(path, bins)?;
                progress(&format!("starting the compared vaultd {}", cbins.vaultd.display()));
                Some(reads_vaultd(&cbins, &tmp.join("compared"), true).await?)
            }
            None => {
                not_measured.push(NotMeasured {
                    subject: None,
                    item: "reads against another vaultd binary (issue 17: no more than 5 % slower)".into(),
                    reason: "pass `--compare-vaultd PATH`".into(),
                });
                None
            }
        };
        Ok(Servers { floor, on, off, big, compared, token, kernel_client, not_measured })
    }

    /// Every case, in the order each round runs them: for each call and in-flight
    /// level, every server and reader in turn.
    fn specs(&self) -> Vec<Spec> {
        let mut out = Vec::new();
        for call in CALLS {
            for in_flight in IN_FLIGHT {
                let mut add = |subject, socket: &Path, pid, op, name: &str, launch| {
                    out.push(Spec {
                        call,
                        subject,
                        in_flight,
                        socket: socket.to_path_buf(),
                        pid,
                        op,
                        name: name.into(),
                        launch,
                    });
                };
                let (op, name) = match call {
                    Call::GetSecret => (Op::Get, SECRET),
                    Call::GetSecrets => (Op::GetMany, SECRET), // bench-0 … bench-19
                };
                let owner = || Launch::default();
                add(Subject::Floor, &self.floor.socket, self.floor.pid(), op, name, owner());
                add(Subject::Owner, &self.on.agent_socket, self.on.pid(), op, name, owner());
                add(Subject::AuditOff, &self.off.agent_socket, self.off.pid(), op, name, owner());
                if call != Call::GetSecret {
                    continue;
                }
                // Issue 17's comparison is of reads (GetSecret): a reference build
                // that refuses GetSecrets ×20 (74df70f does) would void it for nothing.
                if let Some(d) = &self.compared {
                    add(Subject::Compared, &d.agent_socket, d.pid(), op, name, owner());
                }
                let token = Launch { stdin: Some(self.token.clone()), ..Launch::default() };
                add(Subject::Token, &self.on.agent_socket, self.on.pid(), op, name, token);
                if let Some(as_uid) = &self.kernel_client {
                    let kernel = Launch { as_uid: Some(as_uid.clone()), ..Launch::default() };
                    add(Subject::KernelClient, &self.on.agent_socket, self.on.pid(), op, name, kernel);
                }
                let one = format!("{SPREAD_PREFIX}-0");
                add(Subject::OneOf100k, &self.big.agent_socket, self.big.pid(), Op::Get, &one, owner());
                add(
                    Subject::SpreadOver100k,
                    &self.big.agent_socket,
                    self.big.pid(),
                    Op::GetSpread,
                    SPREAD_PREFIX,
                    owner(),
                );
            }
        }
        out
    }

    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.floor.pid(), self.on.pid(), self.off.pid(), self.big.pid()];
        pids.extend(self.compared.as_ref().map(vaultd::Daemon::pid));
        pids
    }

    /// The 100,000-secret vaultd's memory after the rounds read them, and idle
    /// after a restart and unlock.
    async fn spread_memory(&mut self, progress: &dyn Fn(&str)) -> anyhow::Result<Vec<Memory>> {
        progress("memory with 100,000 secrets");
        let mut out = vec![Memory {
            state: format!("{SPREAD} secrets, after the rounds' reads (spread over all of them)"),
            secrets: SPREAD,
            rss_kib: self.big.rss_kib()?,
            target_mb: Some(100.0),
        }];
        let big = &mut self.big;
        big.restart().await?;
        big.unlock().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        out.push(Memory {
            state: format!("idle after restart and unlock, {SPREAD} secrets"),
            secrets: SPREAD,
            rss_kib: big.rss_kib()?,
            target_mb: Some(100.0),
        });
        Ok(out)
    }
}

/// One case as the rounds run it.
struct Spec {
    call: Call,
    subject: Subject,
    in_flight: u16,
    socket: PathBuf,
    pid: u32,
    op: Op,
    name: String,
    launch: Launch,
}

/// Copies the bench to `tmp/bin` (mode 0755) and opens `tmp` and `daemon_dir`
/// for traversal (0711), so a load client of another uid can run it and reach
/// the agent socket (whose own mode, 0666, is set by vaultd's config).
fn reachable_copy_of_the_bench(tmp: &Path, daemon_dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = tmp.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    let copy = bin.join("vault-bench");
    std::fs::copy(std::env::current_exe()?, &copy).context("copying the bench for the other uid")?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
    for dir in [tmp, daemon_dir] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    }
    Ok(copy)
}

/// Every case, alternating in every round.
async fn get_cases(args: &RunArgs, servers: &Servers, progress: &dyn Fn(&str)) -> anyhow::Result<Vec<Case>> {
    let specs = servers.specs();
    let meter = noise::Meter::new(servers.pids());
    let mut cases: Vec<Case> = specs
        .iter()
        .map(|s| Case {
            call: s.call,
            subject: s.subject,
            server: s.subject.label().into(),
            in_flight: s.in_flight.into(),
            rounds: Vec::new(),
        })
        .collect();
    let rounds = usize::from(args.rounds);
    for round in 0..rounds {
        progress(&format!("round {}/{rounds} ({} cases; load average {})", round + 1, specs.len(), noise::loadavg()));
        for (spec, case) in specs.iter().zip(&mut cases) {
            let client = ClientArgs {
                warmup: WARMUP_S,
                name: spec.name.clone(),
                spread: SPREAD,
                token_stdin: spec.launch.stdin.is_some(),
                ..ClientArgs::new(&spec.socket, spec.op, spec.in_flight, args.seconds as f64)
            };
            let cpu_before = noise::cpu_seconds(spec.pid)?;
            let (load, noise) = meter.around(load::run_with(&client, &spec.launch)).await?;
            let cpu = noise::cpu_seconds(spec.pid)? - cpu_before;
            ensure!(
                load.client_pid != spec.pid && load.client_pid != std::process::id(),
                "client and server share a process"
            );
            if let Some(e) = &load.first_error {
                eprintln!(
                    "vault-bench: {} {} at {} in flight: {} refused, first: {e}",
                    spec.call.label(),
                    spec.subject.label(),
                    spec.in_flight,
                    load.errors
                );
            }
            case.rounds.push(Round {
                round,
                server_pid: spec.pid,
                server_cpu_us_per_req: cpu * 1e6 / load.requests_total.max(1) as f64,
                server_rss_kib_after: vaultd::rss_kib(spec.pid)?,
                noise,
                load,
            });
        }
        let check = &report::round_checks(&cases)[round];
        let busy = cases.iter().filter(|c| c.rounds[round].noise.busy()).count();
        progress(&format!(
            "round {}/{rounds}: {} (others' CPU: up to {:.2} of a core; {busy} of {} runs over {})",
            round + 1,
            if check.valid { "valid" } else { "INVALID, the machine was busy" },
            check.others_cores_max,
            cases.len(),
            noise::BUSY_CORES
        ));
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
            warmup: WARMUP_S,
            prefix: format!("put-r{round}"),
            ..ClientArgs::new(&daemon.admin_socket, Op::Put, 1, args.seconds as f64)
        };
        let load = load::run(&client).await?;
        ensure!(load.errors == 0, "puts failed: {} errors, first: {:?}", load.errors, load.first_error);
        puts.push(load);
    }
    Ok(puts)
}

/// `vaultctl unlock` after a restart, `--rounds` times; then vaultd's RSS idle,
/// after storing 10,000 secrets, and after a restart. (The 100,000-secret figures
/// come from the spread case's vaultd.)
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
    // The target: idle under 30 MB.
    let mut memory = vec![Memory {
        state: "idle after unlock, 1 secret".into(),
        secrets: 1,
        rss_kib: daemon.rss_kib()?,
        target_mb: Some(30.0),
    }];
    let secrets = 10_000;
    progress(&format!("storing {secrets} secrets"));
    let fill = fill(&daemon, secrets - 1, "fill1").await?;
    memory.push(Memory {
        state: format!("after storing {secrets} secrets ({:.0} puts/s at 32 in flight)", fill.throughput),
        secrets,
        rss_kib: daemon.rss_kib()?,
        target_mb: None,
    });
    daemon.restart().await?;
    daemon.unlock().await?;
    settle().await;
    memory.push(Memory {
        state: format!("idle after restart and unlock, {secrets} secrets"),
        secrets,
        rss_kib: daemon.rss_kib()?,
        target_mb: None,
    });
    Ok((unlock_ms, memory))
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
        let loadavg_start = noise::loadavg();
        let mut out = Vec::new();
        for round in 0..rounds {
            out.push(revoke_all(&bins, tmp.path(), round).await?);
        }
        println!("Load average (1, 5, 15 min) at start: {loadavg_start}; at end: {}.", noise::loadavg());
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
        let loadavg_start = noise::loadavg();
        let mut out = Vec::new();
        for audit_reads in if args.audit_off_too { &[true, false][..] } else { &[true] } {
            out.push(fanout(&bins, tmp.path(), *audit_reads, args.watchers, args.connections, args.rotations).await?);
        }
        println!("Load average (1, 5, 15 min) at start: {loadavg_start}; at end: {}.", noise::loadavg());
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
    let seconds = (count as f64 * FILL_SECONDS_PER_SECRET).max(60.0);
    let client = ClientArgs {
        count: Some(count),
        prefix: prefix.into(),
        ..ClientArgs::new(&daemon.admin_socket, Op::Put, 32, seconds)
    };
    let load = load::run(&client).await?;
    ensure!(
        load.errors == 0,
        "storing secrets failed: {} errors, first: {:?}{}",
        load.errors,
        load.first_error,
        daemon.log_tail()
    );
    ensure!(load.requests == count, "stored {} of {count} secrets before the time limit", load.requests);
    Ok(load)
}

/// The ratios the issues set targets on (issue 20's "Must be true", issue 7's
/// audit on / off, issue 17's "reads do not slow by more than 5 %"), and a few
/// without a target for context; each from the rounds in `basis`. The comparison
/// with `--compare-vaultd` (`refused_compared`: its refusals) also fails on those.
fn ratios(
    cases: &[Case],
    basis: &[usize],
    judge: &Judge,
    unmeasured: &HashMap<Subject, String>,
    refused_compared: Option<u64>,
) -> Vec<Ratio> {
    let compare_judge = &Judge { refused: judge.refused + refused_compared.unwrap_or(0), ..*judge };
    let tput = |r: &Round| r.load.throughput;
    let p50 = |r: &Round| r.load.p50_us;
    let p99 = |r: &Round| r.load.p99_us;
    let figure = |call: Call, subject: Subject, n: usize, f: fn(&Round) -> f64| -> Vec<f64> {
        let case = cases.iter().find(|c| c.call == call && c.subject == subject && c.in_flight == n);
        case.map(|c| c.each(basis, f)).unwrap_or_default()
    };
    let mut out = Vec::new();
    let mut ratio = |call: Call, (num, den): (Subject, Subject), n: usize, what: &str, f, target| {
        let why = unmeasured.get(&num).or_else(|| unmeasured.get(&den)).map(String::as_str);
        let name = format!("{}: {} / {}, {what} at {n} in flight", call.label(), num.label(), den.label());
        let judge = if Subject::Compared == num || Subject::Compared == den { compare_judge } else { judge };
        out.push(Ratio::new(&name, &figure(call, num, n, f), &figure(call, den, n, f), target, judge, why));
    };
    use Subject::*;
    let at_least = |bound| Some((Goal::AtLeast, bound));
    let at_most = |bound| Some((Goal::AtMost, bound));
    let get = Call::GetSecret;
    ratio(get, (Owner, Floor), 32, "req/s", tput, at_least(0.85));
    ratio(get, (Owner, Floor), 1, "p50", p50, at_most(1.25));
    ratio(get, (Owner, Floor), 1, "p99", p99, at_most(1.5));
    ratio(get, (AuditOff, Floor), 32, "req/s", tput, None);
    ratio(get, (AuditOff, Floor), 1, "p50", p50, None);
    ratio(get, (Owner, AuditOff), 32, "req/s", tput, at_least(0.9));
    ratio(get, (Owner, AuditOff), 1, "req/s", tput, at_least(0.9));
    ratio(get, (Token, Owner), 32, "req/s", tput, at_least(0.9));
    ratio(get, (Token, Owner), 1, "p50", p50, None);
    ratio(get, (KernelClient, Owner), 32, "req/s", tput, at_least(0.9));
    ratio(get, (KernelClient, Owner), 1, "p50", p50, None);
    ratio(get, (SpreadOver100k, OneOf100k), 32, "req/s", tput, at_least(0.9));
    ratio(get, (SpreadOver100k, OneOf100k), 1, "p50", p50, None);
    ratio(get, (OneOf100k, Owner), 32, "req/s", tput, None);
    let many = Call::GetSecrets;
    ratio(many, (Owner, Floor), 32, "calls/s", tput, at_least(0.6));
    ratio(many, (Owner, Floor), 1, "p50", p50, None);
    ratio(many, (AuditOff, Floor), 32, "calls/s", tput, None);
    if refused_compared.is_some() {
        ratio(get, (Owner, Compared), 32, "req/s", tput, at_least(0.95));
        ratio(get, (Owner, Compared), 1, "req/s", tput, at_least(0.95));
        ratio(get, (Owner, Compared), 1, "p50", p50, None);
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
