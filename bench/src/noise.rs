//! Whether the machine was quiet while a figure was measured.
//!
//! The bench cannot make the machine quiet; it can say when it was not. For each
//! measured run it takes the CPU time the whole machine spent busy (/proc/stat)
//! and subtracts what the bench's own processes spent (its own process and every
//! child it has waited for, from /proc/self/stat, and each server it runs, from
//! /proc/PID/stat): what is left is other work, in cores. A round is *busy*
//! (invalid) when other work took more than [`BUSY_CORES`] of a core in any of its
//! runs; targets are judged on the other rounds only, and only when at least
//! [`MIN_VALID_ROUNDS`] remain.
//!
//! The 1-minute load average is reported with every round but is not the test:
//! it counts the bench's own client and servers, which keep two or three tasks
//! runnable on their own, so on a quiet 2-core machine it reads 1.4–2.1 while the
//! bench runs (issue 20) and would call every round busy.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Other processes using more than this share of one core during a run make its
/// round invalid.
pub(crate) const BUSY_CORES: f64 = 0.10;
/// A target is judged on the median of at least this many valid rounds (issue
/// 20: "median of ≥ 5 alternating rounds"); with fewer it is not measured.
pub(crate) const MIN_VALID_ROUNDS: usize = 5;

/// CPU time counters at one instant, in clock ticks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    at: Instant,
    /// All CPUs' busy time: user, nice, system, irq, softirq, steal (a guest's
    /// time is already in user; idle and iowait are not busy).
    machine: u64,
    /// The bench's own processes.
    ours: u64,
}

/// What other work did during one measured run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Noise {
    /// The 1-minute load average when the run started.
    pub(crate) loadavg_1: f64,
    /// CPU other processes used during the run, in cores (0.25: a quarter of one).
    pub(crate) others_cores: f64,
}

impl Noise {
    pub(crate) fn busy(&self) -> bool {
        self.others_cores > BUSY_CORES
    }
}

/// Measures other processes' CPU around the bench's runs; `pids` are the
/// bench's servers (the bench itself and its reaped children count on their own).
#[derive(Debug, Clone)]
pub(crate) struct Meter {
    pids: Vec<u32>,
}

impl Meter {
    pub(crate) fn new(pids: Vec<u32>) -> Meter {
        Meter { pids }
    }

    pub(crate) fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let mut ours = self_and_children_ticks()?;
        for &pid in &self.pids {
            ours += process_ticks(pid)?;
        }
        Ok(Snapshot { at: Instant::now(), machine: machine_busy_ticks()?, ours })
    }

    /// Runs `f` and says what other work did meanwhile.
    pub(crate) async fn around<T>(&self, f: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<(T, Noise)> {
        let loadavg_1 = loadavg_1();
        let before = self.snapshot()?;
        let value = f.await?;
        let after = self.snapshot()?;
        Ok((value, Noise { loadavg_1, others_cores: others_cores(&before, &after) }))
    }
}

/// Other processes' CPU between two snapshots, in cores (never negative: the
/// machine's counters are sampled at each tick, a process's are exact).
pub(crate) fn others_cores(before: &Snapshot, after: &Snapshot) -> f64 {
    let wall = (after.at - before.at).as_secs_f64();
    let machine = after.machine.saturating_sub(before.machine) as f64;
    let ours = after.ours.saturating_sub(before.ours) as f64;
    if wall <= 0.0 {
        return 0.0;
    }
    ((machine - ours) / ticks_per_second() / wall).max(0.0)
}

fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// The machine's busy ticks, from the first line of /proc/stat.
fn machine_busy_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_machine_busy(&stat).context("malformed /proc/stat")
}

fn parse_machine_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>().ok()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let field = |i: usize| f.get(i).copied().unwrap_or(0);
    (f.len() >= 4).then(|| field(0) + field(1) + field(2) + field(5) + field(6) + field(7))
}

/// Fields 14 onwards of /proc/PID/stat (utime, stime, cutime, cstime, …), in ticks.
fn stat_times(pid: &str) -> anyhow::Result<[u64; 4]> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc/PID/stat")?;
    parse_stat_times(&stat).context("malformed /proc/PID/stat")
}

fn parse_stat_times(stat: &str) -> Option<[u64; 4]> {
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field 14 (utime) is index 11.
    let mut out = [0; 4];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = fields.get(11 + i)?.parse().ok()?;
    }
    Some(out)
}

/// User + system CPU of `pid` (all its threads), in ticks.
pub(crate) fn process_ticks(pid: u32) -> anyhow::Result<u64> {
    let [utime, stime, ..] = stat_times(&pid.to_string())?;
    Ok(utime + stime)
}

/// The bench's CPU and that of every child it has waited for (the load clients), in ticks.
fn self_and_children_ticks() -> anyhow::Result<u64> {
    Ok(stat_times("self")?.iter().sum())
}

/// User + system CPU time of `pid` so far, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    Ok(process_ticks(pid)? as f64 / ticks_per_second())
}

/// The first three fields of /proc/loadavg.
pub(crate) fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The 1-minute load average (NaN if /proc/loadavg cannot be read).
pub(crate) fn loadavg_1() -> f64 {
    loadavg().split_whitespace().next().and_then(|l| l.parse().ok()).unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn machine_busy_counts_everything_but_idle_and_iowait() {
        let stat = "cpu  100 20 30 1000 50 1 2 3 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(parse_machine_busy(stat), Some(100 + 20 + 30 + 1 + 2 + 3));
        assert_eq!(parse_machine_busy("cpu  1 2 3 4\n"), Some(6));
        assert_eq!(parse_machine_busy("intr 1 2\n"), None);
        assert_eq!(parse_machine_busy("cpu  1 x 3 4\n"), None);
    }

    #[test]
    fn stat_times_read_after_the_command_name() {
        let stat = "42 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18";
        assert_eq!(parse_stat_times(stat), Some([11, 12, 13, 14]));
        assert_eq!(parse_stat_times("42 (x) S 1 2"), None);
    }

    #[test]
    fn others_are_the_machine_less_the_bench_per_second_of_wall_time() {
        let t = ticks_per_second();
        let at = Instant::now();
        let before = Snapshot { at, machine: 1000, ours: 500 };
        // Over 2 s the machine was busy 1.5 cores' worth and the bench 1.2.
        let after = Snapshot {
            at: at + Duration::from_secs(2),
            machine: 1000 + (3.0 * t) as u64,
            ours: 500 + (2.4 * t) as u64,
        };
        assert!((others_cores(&before, &after) - 0.3).abs() < 0.02);
        // Sampling skew that makes the bench look busier than the machine is no one's work.
        let after = Snapshot { at: at + Duration::from_secs(1), machine: 1000, ours: 600 };
        assert_eq!(others_cores(&before, &after), 0.0);
        assert!(Noise { loadavg_1: 0.0, others_cores: 0.11 }.busy());
        assert!(!Noise { loadavg_1: 9.0, others_cores: 0.10 }.busy());
    }

    #[test]
    fn the_meter_sees_a_busy_process_that_is_not_the_bench() {
        let meter = Meter::new(Vec::new());
        let spin = std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (_, noise) = runtime
            .block_on(meter.around(async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok(())
            }))
            .unwrap();
        let mut spin = spin;
        spin.kill().unwrap();
        spin.wait().unwrap();
        // The spinner (not yet waited for, so not the bench's) had a good share of a core.
        assert!(noise.others_cores > 2.0 * BUSY_CORES, "{noise:?}");
        assert!(noise.busy());
    }
}
