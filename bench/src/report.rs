//! Statistics (percentiles, median and range across rounds), the report's shape,
//! its markdown rendering and its JSON.

use crate::noise::{BUSY_CORES, MIN_VALID_ROUNDS, Noise};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `p`-th percentile (0–100) of `sorted` (ascending), by the nearest-rank
/// method: the smallest value with at least `p`% of the values at or below it.
/// `None` for an empty slice.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p.clamp(0.0, 100.0) / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.saturating_sub(1).min(sorted.len() - 1)])
}

/// The median and the range of one figure across rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Spread {
    /// `None` when there are no values (or a value is NaN).
    pub(crate) fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Spread { median, min: v[0], max: v[n - 1] })
    }

    fn show(&self, decimals: usize) -> String {
        format!("{:.d$} ({:.d$}–{:.d$})", self.median, self.min, self.max, d = decimals)
    }
}

/// What one load-client run measured (the client prints it as one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LoadResult {
    /// The client process, to show it is not the server.
    pub(crate) client_pid: u32,
    /// Requests that completed in the measured period (after warm-up).
    pub(crate) requests: u64,
    /// Requests including warm-up (what server CPU per request is divided by).
    pub(crate) requests_total: u64,
    /// Requests refused or failed (any reply but OK), warm-up included.
    pub(crate) errors: u64,
    /// The same, by status code ("ResourceExhausted", "Internal", …).
    pub(crate) errors_by_code: BTreeMap<String, u64>,
    pub(crate) first_error: Option<String>,
    pub(crate) measured_s: f64,
    pub(crate) throughput: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) max_us: f64,
    /// Encoded size of the first reply's protobuf message.
    pub(crate) reply_bytes: usize,
    /// The client's own CPU time (user + system) over the whole run.
    pub(crate) client_cpu_s: f64,
}

/// One measured round of a case, with what the parent saw of the server.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Round {
    pub(crate) round: usize,
    pub(crate) server_pid: u32,
    /// The server's CPU time over the whole client run (connecting and warm-up
    /// included) divided by every request it answered in that run.
    pub(crate) server_cpu_us_per_req: f64,
    pub(crate) server_rss_kib_after: u64,
    /// What other work did during the run.
    pub(crate) noise: Noise,
    pub(crate) load: LoadResult,
}

/// The call a case makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Call {
    #[serde(rename = "GetSecret")]
    GetSecret,
    #[serde(rename = "GetSecrets ×20")]
    GetSecrets,
}

impl Call {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Call::GetSecret => "GetSecret",
            Call::GetSecrets => "GetSecrets ×20",
        }
    }
}

/// Who answers, and as whom the client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Subject {
    /// The bare tonic server answering from memory.
    Floor,
    /// vaultd with audit reads on (the default), read by its owner.
    Owner,
    /// vaultd with audit reads off, read by its owner.
    AuditOff,
    /// The audit-on vaultd, read with a client's bearer token.
    Token,
    /// The audit-on vaultd, read by a client the kernel names (another uid).
    KernelClient,
    /// A vaultd holding 100,000 secrets, one of them read over and over.
    OneOf100k,
    /// The same vaultd, each read of a secret drawn at random from all of them.
    SpreadOver100k,
    /// `--compare-vaultd`: another vaultd binary, audit on, read by its owner (GetSecret only).
    Compared,
}

impl Subject {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Subject::Floor => "floor (tonic echo)",
            Subject::Owner => "vaultd, audit on, owner",
            Subject::AuditOff => "vaultd, audit off, owner",
            Subject::Token => "vaultd, audit on, bearer token",
            Subject::KernelClient => "vaultd, audit on, client of another uid",
            Subject::OneOf100k => "vaultd with 100,000 secrets, one secret",
            Subject::SpreadOver100k => "vaultd with 100,000 secrets, a random one each read",
            Subject::Compared => "compared vaultd (--compare-vaultd), audit on, owner",
        }
    }
}

/// A load case (a call to a server, as a reader, at an in-flight level) over all rounds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Case {
    pub(crate) call: Call,
    pub(crate) subject: Subject,
    pub(crate) server: String,
    pub(crate) in_flight: usize,
    pub(crate) rounds: Vec<Round>,
}

impl Case {
    /// `f` of each round in `basis`.
    pub(crate) fn each(&self, basis: &[usize], f: impl Fn(&Round) -> f64) -> Vec<f64> {
        self.rounds.iter().filter(|r| basis.contains(&r.round)).map(f).collect()
    }
    fn spread(&self, basis: &[usize], f: impl Fn(&Round) -> f64) -> Option<Spread> {
        Spread::of(&self.each(basis, f))
    }
    /// Requests that got anything but OK, in every round (busy ones too).
    pub(crate) fn refused(&self) -> u64 {
        self.rounds.iter().map(|r| r.load.errors).sum()
    }
    fn refused_by_code(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (code, n) in self.rounds.iter().flat_map(|r| &r.load.errors_by_code) {
            *out.entry(code.clone()).or_default() += n;
        }
        out
    }
}

/// The verdict on one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verdict {
    Met,
    Missed,
    /// Requests were refused in this run: every target of the run fails.
    Refused(u64),
    /// Why there is no verdict: the machine was busy, the case needs root, …
    NotMeasured(String),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Met => f.write_str("met"),
            Verdict::Missed => f.write_str("**missed**"),
            Verdict::Refused(n) => write!(f, "**missed** ({n} refused requests in this run)"),
            Verdict::NotMeasured(why) => write!(f, "not measured ({why})"),
        }
    }
}

/// Turns a figure into a verdict, the same way for every target of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Judge {
    /// Requests refused anywhere in the run.
    pub(crate) refused: u64,
    pub(crate) rounds: usize,
    pub(crate) valid_rounds: usize,
}

impl Judge {
    /// The judge of a run with `refused` requests and these rounds.
    pub(crate) fn new(refused: u64, checks: &[RoundCheck]) -> Judge {
        Judge { refused, rounds: checks.len(), valid_rounds: checks.iter().filter(|c| c.valid).count() }
    }

    /// A figure that does not depend on rounds (memory, fan-out): only refusals override it.
    pub(crate) fn plain(&self, met: bool) -> Verdict {
        match (self.refused, met) {
            (0, true) => Verdict::Met,
            (0, false) => Verdict::Missed,
            (n, _) => Verdict::Refused(n),
        }
    }

    /// A figure from the median of valid rounds: refused requests fail it; too few
    /// valid rounds, or `unmeasured`, leave it without a verdict.
    pub(crate) fn rounds(&self, met: Option<bool>, unmeasured: Option<&str>) -> Verdict {
        if self.refused > 0 {
            return Verdict::Refused(self.refused);
        }
        if let Some(why) = unmeasured {
            return Verdict::NotMeasured(why.into());
        }
        if self.valid_rounds < MIN_VALID_ROUNDS {
            let invalid = self.rounds - self.valid_rounds;
            return Verdict::NotMeasured(if invalid > 0 {
                format!(
                    "machine busy: {invalid} of {} rounds invalid, {} valid, {MIN_VALID_ROUNDS} needed",
                    self.rounds, self.valid_rounds
                )
            } else {
                format!("{} rounds run, {MIN_VALID_ROUNDS} valid needed", self.rounds)
            });
        }
        match met {
            Some(met) => self.plain(met),
            None => Verdict::NotMeasured("no figure".into()),
        }
    }
}

/// `numerator / denominator` of one figure: of the medians, and per round (paired).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Ratio {
    pub(crate) name: String,
    pub(crate) of_medians: Option<f64>,
    pub(crate) per_round: Option<Spread>,
    /// The target, e.g. "≥ 0.85"; empty when it sets none.
    pub(crate) target: String,
    /// `None` when there is no target.
    pub(crate) verdict: Option<Verdict>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Goal {
    AtLeast,
    AtMost,
}

impl Goal {
    fn met(self, value: f64, bound: f64) -> bool {
        match self {
            Goal::AtLeast => value >= bound,
            Goal::AtMost => value <= bound,
        }
    }
}

impl Ratio {
    /// The ratio of `num` to `den` per round (paired by position) and of their
    /// medians; with a `target`, `judge` gives the verdict (`unmeasured`: why
    /// there is no figure).
    pub(crate) fn new(
        name: &str,
        num: &[f64],
        den: &[f64],
        target: Option<(Goal, f64)>,
        judge: &Judge,
        unmeasured: Option<&str>,
    ) -> Ratio {
        let per: Vec<f64> = num.iter().zip(den).map(|(n, d)| n / d).collect();
        let of_medians = match (Spread::of(num), Spread::of(den)) {
            (Some(n), Some(d)) if d.median > 0.0 => Some(n.median / d.median),
            _ => None,
        };
        let verdict = target.map(|(goal, bound)| judge.rounds(of_medians.map(|r| goal.met(r, bound)), unmeasured));
        let target = match target {
            Some((Goal::AtLeast, bound)) => format!("≥ {bound}"),
            Some((Goal::AtMost, bound)) => format!("≤ {bound}"),
            None => String::new(),
        };
        Ratio { name: name.into(), of_medians, per_round: Spread::of(&per), target, verdict }
    }
}

/// Whether a round was quiet enough to count.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RoundCheck {
    pub(crate) round: usize,
    /// The 1-minute load average when the round's first run started.
    pub(crate) loadavg_1_start: f64,
    /// Other processes' CPU, in cores: the most in any of the round's runs, and the mean.
    pub(crate) others_cores_max: f64,
    pub(crate) others_cores_mean: f64,
    pub(crate) valid: bool,
}

/// Each round's check, from what the noise meter saw around each of its runs.
pub(crate) fn round_checks(cases: &[Case]) -> Vec<RoundCheck> {
    let rounds = cases.iter().flat_map(|c| c.rounds.iter().map(|r| r.round + 1)).max().unwrap_or(0);
    (0..rounds)
        .map(|round| {
            // In case order, which is the order the round ran them in.
            let runs: Vec<&Round> = cases.iter().flat_map(|c| &c.rounds).filter(|r| r.round == round).collect();
            let others: Vec<f64> = runs.iter().map(|r| r.noise.others_cores).collect();
            RoundCheck {
                round,
                loadavg_1_start: runs.first().map_or(f64::NAN, |r| r.noise.loadavg_1),
                others_cores_max: others.iter().copied().fold(0.0, f64::max),
                others_cores_mean: others.iter().sum::<f64>() / others.len().max(1) as f64,
                valid: runs.iter().all(|r| !r.noise.busy()),
            }
        })
        .collect()
}

/// Durable puts, one in flight.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Puts {
    pub(crate) rounds: Vec<LoadResult>,
}

/// One resident-memory reading of vaultd.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Memory {
    pub(crate) state: String,
    pub(crate) secrets: u64,
    pub(crate) rss_kib: u64,
    /// The target in MB (10^6 bytes), if the issue sets one for this state.
    pub(crate) target_mb: Option<f64>,
}

/// Watch fan-out: rotation acknowledged → the last of N watchers has the value.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Fanout {
    /// "audit on" (the default) or "audit off".
    pub(crate) server: String,
    pub(crate) result: crate::fanout::FanoutResult,
}

impl Fanout {
    fn spread(&self, f: fn(&crate::fanout::FanoutRound) -> f64) -> Option<Spread> {
        Spread::of(&self.result.rounds.iter().map(f).collect::<Vec<_>>())
    }
    /// The target: the last watcher within 50 ms of the acknowledgement.
    pub(crate) fn ack_to_last(&self) -> Option<Spread> {
        self.spread(|r| r.ack_to_last_ms)
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct NotMeasured {
    /// The case it would have been, if it is one.
    pub(crate) subject: Option<Subject>,
    pub(crate) item: String,
    pub(crate) reason: String,
}

/// Everything one run measured; `--json` writes it whole.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) settings: Settings,
    pub(crate) bench_pid: u32,
    pub(crate) cases: Vec<Case>,
    pub(crate) round_checks: Vec<RoundCheck>,
    /// The rounds the figures are from: the valid ones, or all when none is.
    pub(crate) basis: Vec<usize>,
    /// Requests refused in any run (any reply but OK) by the floor and the
    /// vaultd under test: each fails every target.
    pub(crate) refused: u64,
    /// Requests the `--compare-vaultd` build refused: each fails the comparison.
    pub(crate) refused_compared: u64,
    pub(crate) ratios: Vec<Ratio>,
    pub(crate) puts: Puts,
    /// Wall time of `vaultctl unlock` after a restart, each attempt.
    pub(crate) unlock_ms: Vec<f64>,
    pub(crate) memory: Vec<Memory>,
    pub(crate) fanout: Vec<Fanout>,
    pub(crate) revoke_all: Vec<crate::revoke::RevokeResult>,
    pub(crate) not_measured: Vec<NotMeasured>,
    /// The measuring, from starting the servers to the last figure.
    pub(crate) elapsed_s: f64,
    /// Finding (under `cargo run`: building) vaultd and vaultctl, before that.
    pub(crate) build_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Settings {
    pub(crate) rounds: usize,
    pub(crate) seconds: u64,
    pub(crate) warmup_s: f64,
    pub(crate) value_bytes: usize,
    /// The encoded size of each call's reply, checked equal for the floor and vaultd.
    pub(crate) reply_bytes: String,
    pub(crate) cpus: usize,
    pub(crate) concurrency: String,
    pub(crate) vaultd: String,
    /// `--compare-vaultd`, if given.
    pub(crate) compared_vaultd: Option<String>,
    /// /proc/loadavg when the run started and when it ended.
    pub(crate) loadavg_start: String,
    pub(crate) loadavg_end: String,
}

/// Which rounds figures are taken from: the valid ones, or every one when none
/// is valid (then the figures are for information only: no target is judged).
pub(crate) fn basis(checks: &[RoundCheck]) -> Vec<usize> {
    let valid: Vec<usize> = checks.iter().filter(|c| c.valid).map(|c| c.round).collect();
    if valid.is_empty() { checks.iter().map(|c| c.round).collect() } else { valid }
}

pub(crate) fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn opt(s: Option<Spread>, decimals: usize) -> String {
    s.map_or_else(|| "—".into(), |s| s.show(decimals))
}

fn show_verdict(v: Option<&Verdict>) -> String {
    v.map_or_else(|| "—".into(), Verdict::to_string)
}

/// "3 (ResourceExhausted 2, Internal 1)", or "0".
fn refused_text(total: u64, by_code: &BTreeMap<String, u64>) -> String {
    if total == 0 {
        return "0".into();
    }
    let codes: Vec<String> = by_code.iter().map(|(code, n)| format!("{code} {n}")).collect();
    format!("**{total}** ({})", codes.join(", "))
}

impl Report {
    pub(crate) fn judge(&self) -> Judge {
        Judge::new(self.refused, &self.round_checks)
    }

    /// The report as markdown: figures are "median (min–max)" across rounds.
    pub(crate) fn markdown(&self) -> String {
        let s = &self.settings;
        let judge = self.judge();
        let mut out = String::new();
        let mut line = |l: String| {
            out.push_str(&l);
            out.push('\n');
        };
        line(format!(
            "vault-bench: {} rounds × {} s per case (+{} s warm-up), {}-byte values (replies, floor and vaultd alike: {}), {} CPUs; figures are median (min–max) across rounds.",
            s.rounds, s.seconds, s.warmup_s, s.value_bytes, s.reply_bytes, s.cpus
        ));
        line(format!("In flight: {}.", s.concurrency));
        if let Some(compared) = &s.compared_vaultd {
            line(format!("Compared vaultd: {compared} (against {}).", s.vaultd));
        }
        line(format!("Load average (1, 5, 15 min) at start: {}; at end: {}.", s.loadavg_start, s.loadavg_end));
        line(String::new());
        let invalid = judge.rounds - judge.valid_rounds;
        line(format!(
            "Rounds: {}, **{invalid} invalid** (machine busy: other processes used more than {BUSY_CORES} of a core during one of the round's runs, measured as /proc/stat's busy time less the bench's own processes'). Targets are judged on the median of valid rounds, {MIN_VALID_ROUNDS} at least; the load average is shown, not judged (the bench's own client and servers keep it near 2).",
            judge.rounds
        ));
        line(String::new());
        line("| round | load average (1 min) at start | others' CPU, most in a run (cores) | others' CPU, mean of runs | |".into());
        line("|---:|---:|---:|---:|---|".into());
        for c in &self.round_checks {
            line(format!(
                "| {} | {:.2} | {:.2} | {:.2} | {} |",
                c.round + 1,
                c.loadavg_1_start,
                c.others_cores_max,
                c.others_cores_mean,
                if c.valid { "valid" } else { "**invalid** (busy)" }
            ));
        }
        line(String::new());
        if judge.valid_rounds == 0 {
            line("No valid round: the figures below are from every round, for information only; no target is judged on them.".into());
        } else {
            line(format!("Figures below are from the {} valid rounds.", judge.valid_rounds));
        }
        line(String::new());
        line("| call | server, reader | in flight | req/s | p50 µs | p99 µs | server CPU µs/req | refused |".into());
        line("|---|---|---:|---:|---:|---:|---:|---:|".into());
        let b = &self.basis;
        for c in &self.cases {
            line(format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                c.call.label(),
                c.server,
                c.in_flight,
                opt(c.spread(b, |r| r.load.throughput), 0),
                opt(c.spread(b, |r| r.load.p50_us), 1),
                opt(c.spread(b, |r| r.load.p99_us), 1),
                opt(c.spread(b, |r| r.server_cpu_us_per_req), 1),
                refused_text(c.refused(), &c.refused_by_code())
            ));
        }
        for c in self.cases.iter().filter(|c| c.refused() > 0) {
            if let Some(e) = c.rounds.iter().find_map(|r| r.load.first_error.as_deref()) {
                line(format!("- {} {} at {} in flight, first refusal: {e}", c.call.label(), c.server, c.in_flight));
            }
        }
        line(String::new());
        line("| ratio | of medians | per round | target | |".into());
        line("|---|---:|---:|---:|---|".into());
        for r in &self.ratios {
            line(format!(
                "| {} | {} | {} | {} | {} |",
                r.name,
                r.of_medians.map_or_else(|| "—".into(), |v| format!("{v:.3}")),
                r.per_round.map_or_else(|| "—".into(), |p| format!("{:.3}–{:.3}", p.min, p.max)),
                r.target,
                show_verdict(r.verdict.as_ref())
            ));
        }
        line(String::new());
        line("| other | figure | target | |".into());
        line("|---|---:|---:|---|".into());
        line(format!(
            "| refused requests (any reply but OK), every run of every round | {} | 0 | {} |",
            self.refused,
            judge.plain(self.refused == 0)
        ));
        if s.compared_vaultd.is_some() {
            line(format!(
                "| refused requests by the compared vaultd (they fail only the comparison) | {} | | |",
                self.refused_compared
            ));
        }
        let puts = |f: fn(&LoadResult) -> f64| Spread::of(&self.puts.rounds.iter().map(f).collect::<Vec<_>>());
        line(format!("| durable put, 1 in flight: puts/s | {} | | |", opt(puts(|l| l.throughput), 0)));
        line(format!("| durable put, 1 in flight: p50 µs | {} | | |", opt(puts(|l| l.p50_us), 0)));
        line(format!("| durable put, 1 in flight: p99 µs | {} | | |", opt(puts(|l| l.p99_us), 0)));
        line(format!(
            "| unlock at the default KDF (`vaultctl unlock` wall time, {} restarts): ms | {} | | |",
            self.unlock_ms.len(),
            opt(Spread::of(&self.unlock_ms), 0)
        ));
        for m in &self.memory {
            let verdict = m.target_mb.map(|t| judge.plain(mb(m.rss_kib) < t));
            let target = m.target_mb.map_or_else(String::new, |t| format!("< {t} MB"));
            line(format!(
                "| vaultd RSS, {}: MB | {:.1} | {} | {} |",
                m.state,
                mb(m.rss_kib),
                target,
                show_verdict(verdict.as_ref())
            ));
        }
        for f in &self.fanout {
            let r = &f.result;
            let n = r.rounds.len();
            let prefix = format!(
                "watch fan-out, vaultd {}, {} watchers on {} connections, {n} rotations",
                f.server, r.watchers, r.connections
            );
            let ack_to_last = f.ack_to_last();
            line(format!(
                "| {prefix}: rotation acknowledged → last watcher has it, ms | {} | < 50 ms | {} |",
                opt(ack_to_last, 1),
                show_verdict(ack_to_last.map(|s| judge.plain(s.median < 50.0)).as_ref())
            ));
            line(format!(
                "| {prefix}: acknowledged → first watcher has it, ms | {} | | |",
                opt(f.spread(|r| r.ack_to_first_ms), 1)
            ));
            line(format!("| {prefix}: RotateSecret round trip, ms | {} | | |", opt(f.spread(|r| r.rotate_ms), 1)));
            line(format!(
                "| {prefix}: RotateSecret sent → last watcher has it, ms | {} | | |",
                opt(f.spread(|r| r.sent_to_last_ms), 1)
            ));
        }
        for r in &self.revoke_all {
            let prefix =
                format!("revoke-all, {} tokens / {} secrets / {} watch streams", r.tokens, r.secrets, r.streams);
            line(format!(
                "| {prefix}: RevokeAll sent → last stream closed, ms | {:.1} | < 500 ms | {} |",
                r.sent_to_last_closed_ms,
                judge.plain(r.sent_to_last_closed_ms < 500.0)
            ));
            line(format!("| {prefix}: RevokeAll round trip (the report), ms | {:.1} | | |", r.revoke_ms));
        }
        line(String::new());
        line("| not measured | why |".into());
        line("|---|---|".into());
        for n in &self.not_measured {
            line(format!("| {} | {} |", n.item, n.reason));
        }
        line(String::new());
        line(format!(
            "Run took {:.0} s (plus {:.0} s checking the vaultd and vaultctl builds). MB = 10^6 bytes.",
            self.elapsed_s, self.build_s
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 99.5), Some(100));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[10, 20, 30, 40], 50.0), Some(20));
        assert_eq!(percentile(&[10, 20, 30, 40], 51.0), Some(30));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn spread_is_median_min_max() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!(s, Spread { median: 2.0, min: 1.0, max: 3.0 });
        let s = Spread::of(&[4.0, 1.0, 10.0, 2.0]).unwrap();
        assert_eq!(s, Spread { median: 3.0, min: 1.0, max: 10.0 });
        assert_eq!(Spread::of(&[5.0]).unwrap(), Spread { median: 5.0, min: 5.0, max: 5.0 });
        assert!(Spread::of(&[]).is_none());
        assert!(Spread::of(&[1.0, f64::NAN]).is_none());
    }

    const QUIET: Judge = Judge { refused: 0, rounds: 5, valid_rounds: 5 };

    #[test]
    fn ratios_pair_rounds_and_check_the_target() {
        let r = Ratio::new("t", &[80.0, 90.0, 70.0], &[100.0, 100.0, 100.0], Some((Goal::AtLeast, 0.75)), &QUIET, None);
        assert_eq!(r.of_medians, Some(0.8));
        let p = r.per_round.unwrap();
        assert!((p.min - 0.7).abs() < 1e-12 && (p.max - 0.9).abs() < 1e-12);
        assert_eq!(r.verdict, Some(Verdict::Met));
        let r = Ratio::new("t", &[30.0], &[20.0], Some((Goal::AtMost, 1.25)), &QUIET, None);
        assert_eq!(r.of_medians, Some(1.5));
        assert_eq!(r.verdict, Some(Verdict::Missed));
        let r = Ratio::new("t", &[30.0], &[20.0], None, &QUIET, None);
        assert_eq!((r.of_medians, r.verdict, r.target.as_str()), (Some(1.5), None, ""));
    }

    #[test]
    fn a_refused_request_fails_every_target_of_the_run() {
        let judge = Judge { refused: 3, ..QUIET };
        let met = Ratio::new("t", &[90.0], &[100.0], Some((Goal::AtLeast, 0.85)), &judge, None);
        assert_eq!(met.verdict, Some(Verdict::Refused(3)));
        assert_eq!(judge.plain(true), Verdict::Refused(3));
        // Even a case that could not run, or rounds that were busy.
        assert_eq!(judge.rounds(Some(true), Some("needs root")), Verdict::Refused(3));
        let busy = Judge { refused: 1, rounds: 5, valid_rounds: 0 };
        assert_eq!(busy.rounds(Some(true), None), Verdict::Refused(1));
        assert_eq!(Verdict::Refused(3).to_string(), "**missed** (3 refused requests in this run)");
    }

    #[test]
    fn too_few_valid_rounds_leave_a_target_not_measured_never_met() {
        let busy = Judge { refused: 0, rounds: 6, valid_rounds: 4 };
        let v = busy.rounds(Some(true), None);
        assert_eq!(v, Verdict::NotMeasured("machine busy: 2 of 6 rounds invalid, 4 valid, 5 needed".into()));
        assert_eq!(v.to_string(), "not measured (machine busy: 2 of 6 rounds invalid, 4 valid, 5 needed)");
        let short = Judge { refused: 0, rounds: 2, valid_rounds: 2 };
        assert_eq!(short.rounds(Some(true), None), Verdict::NotMeasured("2 rounds run, 5 valid needed".into()));
        let enough = Judge { refused: 0, rounds: 7, valid_rounds: 5 };
        assert_eq!(enough.rounds(Some(true), None), Verdict::Met);
        assert_eq!(enough.rounds(Some(false), None), Verdict::Missed);
        assert_eq!(QUIET.rounds(Some(true), Some("needs root")), Verdict::NotMeasured("needs root".into()));
        assert_eq!(QUIET.rounds(None, None), Verdict::NotMeasured("no figure".into()));
    }

    fn round(round: usize, others_cores: f64, throughput: f64, errors: u64) -> Round {
        Round {
            round,
            server_pid: 1,
            server_cpu_us_per_req: 0.0,
            server_rss_kib_after: 0,
            noise: Noise { loadavg_1: 1.0 + round as f64, others_cores },
            load: LoadResult {
                client_pid: 2,
                requests: 10,
                requests_total: 10,
                errors,
                errors_by_code: if errors > 0 { [("Internal".to_owned(), errors)].into() } else { BTreeMap::new() },
                first_error: None,
                measured_s: 1.0,
                throughput,
                p50_us: 1.0,
                p99_us: 1.0,
                max_us: 1.0,
                reply_bytes: 1,
                client_cpu_s: 0.0,
            },
        }
    }

    #[test]
    fn a_round_with_one_busy_run_is_invalid_and_figures_skip_it() {
        let case =
            |subject, rounds| Case { call: Call::GetSecret, subject, server: String::new(), in_flight: 32, rounds };
        let cases = [
            case(Subject::Floor, vec![round(0, 0.02, 100.0, 0), round(1, 0.05, 100.0, 0), round(2, 0.0, 100.0, 0)]),
            case(Subject::Owner, vec![round(0, 0.03, 90.0, 0), round(1, 0.40, 10.0, 0), round(2, 0.0, 80.0, 2)]),
        ];
        let checks = round_checks(&cases);
        assert_eq!(checks.iter().map(|c| c.valid).collect::<Vec<_>>(), [true, false, true]);
        assert_eq!(checks[1].others_cores_max, 0.40);
        assert_eq!(checks[2].loadavg_1_start, 3.0);
        let basis = basis(&checks);
        assert_eq!(basis, [0, 2]);
        assert_eq!(cases[1].each(&basis, |r| r.load.throughput), [90.0, 80.0]);
        // Refusals count in every round.
        assert_eq!(cases[1].refused(), 2);
        assert_eq!(refused_text(2, &cases[1].refused_by_code()), "**2** (Internal 2)");
        // With no valid round, the figures come from all of them (and nothing is judged).
        let all_busy = [case(Subject::Floor, vec![round(0, 0.5, 1.0, 0), round(1, 0.5, 1.0, 0)])];
        assert_eq!(basis_of(&all_busy), [0, 1]);
    }

    fn basis_of(cases: &[Case]) -> Vec<usize> {
        basis(&round_checks(cases))
    }
}
