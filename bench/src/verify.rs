//! `vault-bench audit-verify`: issue 17's figure, `vaultctl audit verify` on an
//! audit log of 1,000,000 entries (target: under 5 s, release build).
//!
//! The bench starts a vaultd (audit reads on), stores 256 secrets, and fills the
//! log the way it fills in use: a client process reads them as the owner
//! (GetSecrets of all 256, a few calls in flight), each read recorded in the read
//! journal. A first `audit verify` imports the journal into the log and counts
//! its entries; the bench reads on, sizing each batch of calls by the entries the
//! last one added, until the log holds `--entries`. Then it times `vaultctl audit
//! verify` (process start to exit) `--rounds` times, with the noise meter around
//! each: the verdict is the median of the quiet ones, as in `vault-bench run`,
//! and a refused read while filling fails it.

use crate::load::{ClientArgs, Op};
use crate::noise::{self, Noise};
use crate::report::{Judge, Spread, Verdict};
use crate::vaultd::{self, Daemon};
use anyhow::{Context as _, ensure};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Secrets each fill call reads (GetSecrets takes at most 256 names).
const NAMES: u16 = 256;
/// Fill calls in flight: enough to keep vaultd busy.
const IN_FLIGHT: u16 = 8;
/// The first batch of fill calls, which measures the entries a call adds.
const FIRST_CALLS: u64 = 200;
/// Issue 17's target for `audit verify`, in seconds.
const TARGET_S: f64 = 5.0;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct VerifyArgs {
    /// Fill the audit log to at least this many entries.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    entries: u64,
    /// Timed `audit verify` runs (after the one that imports the journal).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=50))]
    rounds: u16,
    /// Write the whole result to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// One timed `vaultctl audit verify`.
#[derive(Debug, Clone, Serialize)]
struct Timed {
    wall_s: f64,
    entries: u64,
    noise: Noise,
}

#[derive(Debug, Clone, Serialize)]
struct VerifyReport {
    vaultd: String,
    loadavg_start: String,
    loadavg_end: String,
    entries_wanted: u64,
    fill_calls: u64,
    fill_s: f64,
    /// Reads refused while filling (any reply but OK), by status code.
    refused: u64,
    refused_by_code: BTreeMap<String, u64>,
    first_refusal: Option<String>,
    db_bytes: u64,
    timed: Vec<Timed>,
    median_valid_s: Option<f64>,
    verdict: Verdict,
}

impl VerifyReport {
    fn markdown(&self) -> String {
        let mut out = String::new();
        let mut line = |l: String| {
            out.push_str(&l);
            out.push('\n');
        };
        let entries = self.timed.first().map_or(0, |t| t.entries);
        line(format!(
            "vault-bench audit-verify: an audit log of {entries} entries (wanted ≥ {}), filled with {} GetSecrets ×{NAMES} calls as the owner, audit on, {IN_FLIGHT} in flight, in {:.0} s; database (vault.db + WAL) {:.0} MB. vaultd: {}.",
            self.entries_wanted,
            self.fill_calls,
            self.fill_s,
            self.db_bytes as f64 / 1e6,
            self.vaultd
        ));
        line(format!("Load average (1, 5, 15 min) at start: {}; at end: {}.", self.loadavg_start, self.loadavg_end));
        line(String::new());
        line("| verify | `vaultctl audit verify` wall time, s | entries | load average (1 min) | others' CPU (cores) | |".into());
        line("|---:|---:|---:|---:|---:|---|".into());
        for (i, t) in self.timed.iter().enumerate() {
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
        line(String::new());
        line("| figure | value | target | |".into());
        line("|---|---:|---:|---|".into());
        line(format!(
            "| `vaultctl audit verify`, {entries} entries, median of valid runs: s | {} | < {TARGET_S} s | {} |",
            self.median_valid_s.map_or_else(|| "—".into(), |s| format!("{s:.3}")),
            self.verdict
        ));
        let codes: Vec<String> = self.refused_by_code.iter().map(|(c, n)| format!("{c} {n}")).collect();
        line(format!(
            "| reads refused while filling (any reply but OK) | {}{} | 0 | {} |",
            self.refused,
            if codes.is_empty() { String::new() } else { format!(" ({})", codes.join(", ")) },
            if self.refused == 0 { Verdict::Met } else { Verdict::Refused(self.refused) }
        ));
        if let Some(e) = &self.first_refusal {
            line(format!("\nFirst refusal: {e}"));
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
    let daemon = Daemon::start(&bins, &tmp.path().join("verify"), true).await?;
    daemon.init().await?;
    crate::fill(&daemon, NAMES.into(), "fill").await?;

    let fill_started = Instant::now();
    let (_, mut entries) = verify(&daemon).await?;
    let (mut fill_calls, mut refused, mut first_refusal) = (0, 0, None);
    let mut refused_by_code: BTreeMap<String, u64> = BTreeMap::new();
    let mut calls = FIRST_CALLS;
    while entries < args.entries {
        let client = ClientArgs {
            count: Some(calls),
            name: "fill".into(),
            batch: NAMES,
            ..ClientArgs::new(&daemon.agent_socket, Op::GetMany, IN_FLIGHT, 3600.0)
        };
        let load = crate::load::run(&client).await?;
        fill_calls += load.requests_total;
        refused += load.errors;
        first_refusal = first_refusal.or(load.first_error);
        for (code, n) in load.errors_by_code {
            *refused_by_code.entry(code).or_default() += n;
        }
        let before = entries;
        (_, entries) = verify(&daemon).await?;
        // Each verify adds its own entry; the reads add the rest.
        let per_call = entries.saturating_sub(before + 1) as f64 / load.requests_total.max(1) as f64;
        ensure!(per_call > 0.0, "{} reads added no audit entries", load.requests_total);
        calls = ((args.entries.saturating_sub(entries)) as f64 / per_call).ceil().max(1.0) as u64;
        progress(&format!("the audit log holds {entries} entries ({per_call:.0} per call; {refused} refused)"));
    }
    let fill_s = fill_started.elapsed().as_secs_f64();

    let meter = noise::Meter::new(vec![daemon.pid()]);
    let mut timed = Vec::new();
    for round in 0..args.rounds {
        let ((took, entries), noise) = meter.around(verify(&daemon)).await?;
        progress(&format!(
            "verify {}/{}: {:.3} s, {entries} entries, others' CPU {:.2} cores",
            round + 1,
            args.rounds,
            took.as_secs_f64(),
            noise.others_cores
        ));
        timed.push(Timed { wall_s: took.as_secs_f64(), entries, noise });
    }
    let valid: Vec<f64> = timed.iter().filter(|t| !t.noise.busy()).map(|t| t.wall_s).collect();
    let median_valid_s = Spread::of(&valid).map(|s| s.median);
    let judge = Judge { refused, rounds: timed.len(), valid_rounds: valid.len() };
    let debug = cfg!(debug_assertions).then_some("a debug build; the target is for a release build");
    let verdict = judge.rounds(median_valid_s.map(|s| s < TARGET_S), debug);
    let db_bytes = ["vault.db", "vault.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(tmp.path().join("verify/data").join(f)).ok())
        .map(|m| m.len())
        .sum();
    Ok(VerifyReport {
        vaultd: bins.vaultd.display().to_string(),
        loadavg_start,
        loadavg_end: noise::loadavg(),
        entries_wanted: args.entries,
        fill_calls,
        fill_s,
        refused,
        refused_by_code,
        first_refusal,
        db_bytes,
        timed,
        median_valid_s,
        verdict,
    })
}
