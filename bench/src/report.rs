//! Statistics (percentiles, median and range across rounds), the report's shape,
//! its markdown rendering and its JSON.

use serde::{Deserialize, Serialize};

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
    pub(crate) errors: u64,
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
    pub(crate) load: LoadResult,
}

/// A load case (a server at an in-flight level) over all rounds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Case {
    /// "GetSecret", or "GetSecrets ×20".
    pub(crate) call: String,
    pub(crate) server: String,
    pub(crate) in_flight: usize,
    pub(crate) rounds: Vec<Round>,
}

impl Case {
    fn spread(&self, f: impl Fn(&Round) -> f64) -> Option<Spread> {
        Spread::of(&self.rounds.iter().map(f).collect::<Vec<_>>())
    }
    pub(crate) fn throughput(&self) -> Option<Spread> {
        self.spread(|r| r.load.throughput)
    }
    pub(crate) fn p50(&self) -> Option<Spread> {
        self.spread(|r| r.load.p50_us)
    }
    pub(crate) fn p99(&self) -> Option<Spread> {
        self.spread(|r| r.load.p99_us)
    }
    fn cpu(&self) -> Option<Spread> {
        self.spread(|r| r.server_cpu_us_per_req)
    }
    fn errors(&self) -> u64 {
        self.rounds.iter().map(|r| r.load.errors).sum()
    }
}

/// `numerator / denominator` of one figure: of the medians, and per round (paired).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Ratio {
    pub(crate) name: String,
    pub(crate) of_medians: Option<f64>,
    pub(crate) per_round: Option<Spread>,
    /// The target, e.g. "≥ 0.75"; empty when it sets none.
    pub(crate) target: String,
    pub(crate) met: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Goal {
    AtLeast,
    AtMost,
}

impl Ratio {
    /// The ratio of `num` to `den` per round (paired by position) and of their
    /// medians, checked against `target` if there is one.
    pub(crate) fn new(name: &str, num: &[f64], den: &[f64], target: Option<(Goal, f64)>) -> Ratio {
        let per: Vec<f64> = num.iter().zip(den).map(|(n, d)| n / d).collect();
        let of_medians = match (Spread::of(num), Spread::of(den)) {
            (Some(n), Some(d)) if d.median > 0.0 => Some(n.median / d.median),
            _ => None,
        };
        let met = target.and_then(|(goal, bound)| {
            of_medians.map(|r| match goal {
                Goal::AtLeast => r >= bound,
                Goal::AtMost => r <= bound,
            })
        });
        let target = match target {
            Some((Goal::AtLeast, bound)) => format!("≥ {bound}"),
            Some((Goal::AtMost, bound)) => format!("≤ {bound}"),
            None => String::new(),
        };
        Ratio { name: name.into(), of_medians, per_round: Spread::of(&per), target, met }
    }
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
    pub(crate) item: String,
    pub(crate) reason: String,
}

/// Everything one run measured; `--json` writes it whole.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) settings: Settings,
    pub(crate) bench_pid: u32,
    pub(crate) cases: Vec<Case>,
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
    /// /proc/loadavg when the run started and when it ended: other work on the
    /// machine (a build, another benchmark) makes the figures noisy.
    pub(crate) loadavg_start: String,
    pub(crate) loadavg_end: String,
}

pub(crate) fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn opt(s: Option<Spread>, decimals: usize) -> String {
    s.map_or_else(|| "—".into(), |s| s.show(decimals))
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "—",
    }
}

impl Report {
    /// The report as markdown: figures are "median (min–max)" across rounds.
    pub(crate) fn markdown(&self) -> String {
        let s = &self.settings;
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
        line(format!("Load average (1, 5, 15 min) at start: {}; at end: {}.", s.loadavg_start, s.loadavg_end));
        line(String::new());
        line("| call | server | in flight | req/s | p50 µs | p99 µs | server CPU µs/req | errors |".into());
        line("|---|---|---:|---:|---:|---:|---:|---:|".into());
        for c in &self.cases {
            line(format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                c.call,
                c.server,
                c.in_flight,
                opt(c.throughput(), 0),
                opt(c.p50(), 1),
                opt(c.p99(), 1),
                opt(c.cpu(), 1),
                c.errors()
            ));
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
                verdict(r.met)
            ));
        }
        line(String::new());
        line("| other | figure | target | |".into());
        line("|---|---:|---:|---|".into());
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
            let met = m.target_mb.map(|t| mb(m.rss_kib) < t);
            let target = m.target_mb.map_or_else(String::new, |t| format!("< {t} MB"));
            line(format!("| vaultd RSS, {}: MB | {:.1} | {} | {} |", m.state, mb(m.rss_kib), target, verdict(met)));
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
                verdict(ack_to_last.map(|s| s.median < 50.0))
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
                verdict(Some(r.sent_to_last_closed_ms < 500.0))
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

    #[test]
    fn ratios_pair_rounds_and_check_the_target() {
        let r = Ratio::new("t", &[80.0, 90.0, 70.0], &[100.0, 100.0, 100.0], Some((Goal::AtLeast, 0.75)));
        assert_eq!(r.of_medians, Some(0.8));
        let p = r.per_round.unwrap();
        assert!((p.min - 0.7).abs() < 1e-12 && (p.max - 0.9).abs() < 1e-12);
        assert_eq!(r.met, Some(true));
        let r = Ratio::new("t", &[30.0], &[20.0], Some((Goal::AtMost, 1.25)));
        assert_eq!(r.of_medians, Some(1.5));
        assert_eq!(r.met, Some(false));
        let r = Ratio::new("t", &[30.0], &[20.0], None);
        assert_eq!((r.of_medians, r.met, r.target.as_str()), (Some(1.5), None, ""));
    }
}
