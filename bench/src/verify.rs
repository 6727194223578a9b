//! `vault-bench audit-verify`: issue 17's figure, `vaultctl audit verify` on an
//! audit log of 1,000,000 entries (target: under 5 s, release build).
//!
//! A log's cost to verify depends on its rows as much as on its entries: reads
//! are journaled and imported in batches, one row (and one MAC) a batch, so the
//! same million reads make about a thousand rows when they come in a flood and
//! some two hundred thousand when they trickle in (about five entries a row
//! here). The bench builds one log of each
//! [`Shape`], each in a fresh vaultd (audit reads on) with 256 secrets, reading
//! as the owner from client processes: a first `audit verify` imports the
//! journal and counts the entries, and the bench reads on, sizing each spell by
//! the entries the last one added, until the log holds `--entries`. Then it times
//! `vaultctl audit verify` (process start to exit) `--rounds` times, with the
//! noise meter around each (and a second at least): the verdict is the median
//! of the quiet ones, as in `vault-bench run`, and a refused request while
//! filling fails it.

use crate::load::{ClientArgs, Op};
use crate::noise::{self, Noise};
use crate::report::{Judge, LoadResult, Spread, Verdict};
use crate::vaultd::{self, Daemon};
use anyhow::{Context as _, ensure};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Secrets a batched read names (GetSecrets takes at most 256).
const NAMES: u16 = 256;
/// Read calls in flight while filling: enough to keep vaultd busy.
const IN_FLIGHT: u16 = 8;
/// The first spell of reads, which measures how fast the log grows.
const FIRST_SPELL_S: f64 = 1.0;
/// Issue 17's target for `audit verify`, in seconds.
const TARGET_S: f64 = 5.0;
/// The shortest time the noise meter watches around a verify.
const METER_AT_LEAST: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct VerifyArgs {
    /// Fill each audit log to at least this many entries.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    entries: u64,
    /// Timed `audit verify` runs on each log (after the one that imports the journal).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=50))]
    rounds: u16,
    /// Write the whole result to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// How the reads that fill a log reach its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Shape {
    /// A flood: GetSecrets of 256 names at a time, so each import moves about a
    /// thousand records into one row; the fewest rows, verify's easiest log.
    Flood,
    /// A trickle: GetSecret of one name, beside an owner's reveal at a time,
    /// each of which imports what waits first; a few records a row, like a log
    /// that months of light traffic built.
    Trickle,
}

impl Shape {
    fn describe(self) -> String {
        match self {
            Shape::Flood => {
                format!("flood: GetSecrets ×{NAMES}, {IN_FLIGHT} in flight (about 1,024 entries an audit row)")
            }
            Shape::Trickle => format!(
                "trickle: GetSecret, {IN_FLIGHT} in flight, beside owner reveals one at a time, each importing what waits (about five entries an audit row)"
            ),
        }
    }

    /// The load clients that fill for `seconds`, run at once.
    fn clients(self, daemon: &Daemon, seconds: f64) -> Vec<ClientArgs> {
        match self {
            Shape::Flood => vec![ClientArgs {
                name: "fill".into(),
                batch: NAMES,
                ..ClientArgs::new(&daemon.agent_socket, Op::GetMany, IN_FLIGHT, seconds)
            }],
            Shape::Trickle => vec![
                ClientArgs {
                    name: "fill-0".into(),
                    ..ClientArgs::new(&daemon.agent_socket, Op::Get, IN_FLIGHT, seconds)
                },
                ClientArgs { name: "fill-1".into(), ..ClientArgs::new(&daemon.admin_socket, Op::Reveal, 1, seconds) },
            ],
        }
    }
}

/// One timed `vaultctl audit verify`.
#[derive(Debug, Clone, Serialize)]
struct Timed {
    wall_s: f64,
    entries: u64,
    noise: Noise,
}

/// One log: how it was filled, and its verifies.
#[derive(Debug, Clone, Serialize)]
struct Log {
    shape: Shape,
    fill_requests: u64,
    fill_s: f64,
    /// Requests refused while filling (any reply but OK), by status code.
    refused: u64,
    refused_by_code: BTreeMap<String, u64>,
    first_refusal: Option<String>,
    /// vault.db and its WAL.
    db_bytes: u64,
    timed: Vec<Timed>,
    median_valid_s: Option<f64>,
    verdict: Verdict,
}

#[derive(Debug, Clone, Serialize)]
struct VerifyReport {
    vaultd: String,
    loadavg_start: String,
    loadavg_end: String,
    entries_wanted: u64,
    logs: Vec<Log>,
}

impl VerifyReport {
    fn markdown(&self) -> String {
        let mut out = String::new();
        let mut line = |l: String| {
            out.push_str(&l);
            out.push('\n');
        };
        line(format!(
            "vault-bench audit-verify: `vaultctl audit verify` on audit logs of at least {} entries, filled by reads as the owner with audit on; vaultd {}.",
            self.entries_wanted, self.vaultd
        ));
        line(format!("Load average (1, 5, 15 min) at start: {}; at end: {}.", self.loadavg_start, self.loadavg_end));
        line(format!(
            "A verify is invalid when other processes used more than {} of a core during it; the verdict needs {} valid ones.",
            noise::BUSY_CORES,
            noise::MIN_VALID_ROUNDS
        ));
        for log in &self.logs {
            let entries = log.timed.first().map_or(0, |t| t.entries);
            line(String::new());
            line(format!(
                "**{}**: {entries} entries from {} requests in {:.0} s; database (vault.db + WAL) {:.0} MB.",
                log.shape.describe(),
                log.fill_requests,
                log.fill_s,
                log.db_bytes as f64 / 1e6
            ));
            line(String::new());
            line("| verify | wall time, s | entries | load average (1 min) | others' CPU (cores) | |".into());
            line("|---:|---:|---:|---:|---:|---|".into());
            for (i, t) in log.timed.iter().enumerate() {
                line(format!(
                    "| {} | {:.3} | {} | {:.2} | {:.2} | {} |",
                    i + 1,
                    t.wall_s,
                    t.entries,
                    t.noise.loadavg_1,
                    t.noise.others_cores,
                    if t.noise.busy() { "**invalid** (busy)" } else { "valid" }
                ));
            }
        }
        line(String::new());
        line("| figure | value | target | |".into());
        line("|---|---:|---:|---|".into());
        for log in &self.logs {
            let entries = log.timed.first().map_or(0, |t| t.entries);
            let shape = format!("{:?}", log.shape).to_lowercase();
            line(format!(
                "| `vaultctl audit verify`, {entries} entries ({shape}), median of valid runs: s | {} | < {TARGET_S} s | {} |",
                log.median_valid_s.map_or_else(|| "—".into(), |s| format!("{s:.3}")),
                log.verdict
            ));
            let codes: Vec<String> = log.refused_by_code.iter().map(|(c, n)| format!("{c} {n}")).collect();
            line(format!(
                "| requests refused while filling ({shape}; any reply but OK) | {}{} | 0 | {} |",
                log.refused,
                if codes.is_empty() { String::new() } else { format!(" ({})", codes.join(", ")) },
                if log.refused == 0 { Verdict::Met } else { Verdict::Refused(log.refused) }
            ));
        }
        for log in &self.logs {
            if let Some(e) = &log.first_refusal {
                line(format!("\nFirst refusal ({:?}): {e}", log.shape));
            }
        }
        out
    }
}

/// `vault-bench audit-verify`.
pub(crate) fn run(args: &VerifyArgs) -> anyhow::Result<()> {
    let report = crate::measuring(" -- audit-verify", measure(args))?;
    crate::emit(&report.markdown(), &report, args.json.as_deref())
}

/// `vaultctl --json audit verify`: its wall time and the entries it counted;
/// fails unless the log is intact.
async fn verify(daemon: &Daemon) -> anyhow::Result<(Duration, u64)> {
    let (took, out) = daemon.ctl_output(&["--json", "audit", "verify"], b"").await?;
    let verdict: serde_json::Value = serde_json::from_slice(&out).context("reading `vaultctl audit verify`")?;
    ensure!(verdict["intact"] == true, "the audit log is not intact: {verdict}");
    Ok((took, verdict["entries"].as_u64().context("`audit verify` gave no entry count")?))
}

async fn measure(args: &VerifyArgs) -> anyhow::Result<VerifyReport> {
    let started = Instant::now();
    let progress = |what: &str| eprintln!("vault-bench: [{:>4.0} s] {what}", started.elapsed().as_secs_f64());
    let bins = vaultd::Bins::locate()?;
    let loadavg_start = noise::loadavg();
    let tmp = tempfile::Builder::new().prefix("vault-bench-verify-").tempdir()?;
    let mut logs = Vec::new();
    for shape in [Shape::Flood, Shape::Trickle] {
        logs.push(log(args, &bins, &tmp.path().join(format!("{shape:?}").to_lowercase()), shape, &progress).await?);
    }
    // A refusal in either fill fails both figures, as in `vault-bench run`.
    let refused = logs.iter().map(|l| l.refused).sum();
    let debug = cfg!(debug_assertions).then_some("a debug build; the target is for a release build");
    for log in &mut logs {
        let valid = log.timed.iter().filter(|t| !t.noise.busy()).count();
        let judge = Judge { refused, rounds: log.timed.len(), valid_rounds: valid };
        log.verdict = judge.rounds(log.median_valid_s.map(|s| s < TARGET_S), debug);
    }
    Ok(VerifyReport {
        vaultd: bins.vaultd.display().to_string(),
        loadavg_start,
        loadavg_end: noise::loadavg(),
        entries_wanted: args.entries,
        logs,
    })
}

/// Fills a fresh vaultd's log in `dir` the `shape` way, then times its verifies.
async fn log(
    args: &VerifyArgs,
    bins: &vaultd::Bins,
    dir: &Path,
    shape: Shape,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Log> {
    let daemon = Daemon::start(bins, dir, true).await?;
    daemon.init().await?;
    crate::fill(&daemon, NAMES.into(), "fill").await?;
    progress(&format!("filling a log, {}", shape.describe()));
    let fill_started = Instant::now();
    let (_, mut entries) = verify(&daemon).await?;
    let mut log = Log {
        shape,
        fill_requests: 0,
        fill_s: 0.0,
        refused: 0,
        refused_by_code: BTreeMap::new(),
        first_refusal: None,
        db_bytes: 0,
        timed: Vec::new(),
        median_valid_s: None,
        verdict: Verdict::NotMeasured("not judged yet".into()),
    };
    let mut seconds = FIRST_SPELL_S;
    while entries < args.entries {
        let spell = Instant::now();
        let clients = shape.clients(&daemon, seconds);
        let loads = futures_util::future::try_join_all(clients.iter().map(crate::load::run)).await?;
        let spell_s = spell.elapsed().as_secs_f64();
        loads.into_iter().for_each(|load| log.count(load));
        let before = entries;
        (_, entries) = verify(&daemon).await?;
        // Each verify adds an entry of its own; the reads (and reveals) add the rest.
        let rate = entries.saturating_sub(before + 1) as f64 / spell_s;
        ensure!(rate > 0.0, "{spell_s:.1} s of reads added no audit entries");
        // A little over what is missing, so that one more spell is usually enough.
        seconds = (args.entries.saturating_sub(entries) as f64 / rate * 1.02).clamp(0.2, 3600.0);
        progress(&format!("the log holds {entries} entries ({rate:.0} a second; {} refused)", log.refused));
    }
    log.fill_s = fill_started.elapsed().as_secs_f64();
    let meter = noise::Meter::new(vec![daemon.pid()]);
    for round in 0..args.rounds {
        // Metered over a second at least: over a tenth of one, the machine's
        // counters (a tick each 10 ms per CPU) would make a quiet run look busy.
        let metered = async {
            let window = tokio::time::Instant::now() + METER_AT_LEAST;
            let verified = verify(&daemon).await?;
            tokio::time::sleep_until(window).await;
            anyhow::Ok(verified)
        };
        let ((took, entries), noise) = meter.around(metered).await?;
        progress(&format!(
            "verify {}/{}: {:.3} s, {entries} entries, others' CPU {:.2} cores",
            round + 1,
            args.rounds,
            took.as_secs_f64(),
            noise.others_cores
        ));
        log.timed.push(Timed { wall_s: took.as_secs_f64(), entries, noise });
    }
    let valid: Vec<f64> = log.timed.iter().filter(|t| !t.noise.busy()).map(|t| t.wall_s).collect();
    log.median_valid_s = Spread::of(&valid).map(|s| s.median);
    log.db_bytes = ["vault.db", "vault.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join("data").join(f)).ok())
        .map(|m| m.len())
        .sum();
    Ok(log)
}

impl Log {
    /// Adds a fill client's requests and refusals.
    fn count(&mut self, load: LoadResult) {
        self.fill_requests += load.requests_total;
        self.refused += load.errors;
        self.first_refusal = self.first_refusal.take().or(load.first_error);
        for (code, n) in load.errors_by_code {
            *self.refused_by_code.entry(code).or_default() += n;
        }
    }
}
