//! The one wall clock. Everything that compares against a time the vault stores
//! (token expiry and idle limits, grace periods, rotation schedules, audit
//! timestamps) asks [`now_ms`] or [`now_unix`], so a test can move time instead
//! of sleeping through it.
//!
//! Tests move it two ways, and only in debug builds (a release build reads the
//! system clock and nothing else):
//! - in process, [`advance`];
//! - in a real vaultd, `VAULTD_TEST_CLOCK_FILE=PATH`: vaultd reads the offset (in
//!   milliseconds, a decimal number) from PATH at start and whenever [`follow`]
//!   sees it change, polling every 50 ms.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Added to the system clock (debug builds' tests only; always 0 in release).
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Counts the times a test moved the clock, waking [`sleep_until_unix`].
static MOVED: LazyLock<tokio::sync::watch::Sender<u64>> = LazyLock::new(|| tokio::sync::watch::Sender::new(0));

/// The environment variable naming the offset file (debug builds only).
pub const TEST_CLOCK_ENV: &str = "VAULTD_TEST_CLOCK_FILE";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let system = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    system.saturating_add(OFFSET_MS.load(Ordering::Relaxed))
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    now_ms().div_euclid(1000)
}

/// Moves the clock forward by `by` (tests).
#[cfg(any(test, debug_assertions))]
pub fn advance(by: Duration) {
    let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
    OFFSET_MS.fetch_add(ms, Ordering::Relaxed);
    MOVED.send_modify(|moves| *moves += 1);
}

fn set_offset(ms: i64) {
    if OFFSET_MS.swap(ms, Ordering::Relaxed) != ms {
        MOVED.send_modify(|moves| *moves += 1);
    }
}

/// Resolves once the clock reads `unix` (seconds since the epoch) or later,
/// also when a test moves the clock there.
pub async fn sleep_until_unix(unix: i64) {
    let mut moved = MOVED.subscribe();
    loop {
        let left = unix.saturating_mul(1000).saturating_sub(now_ms());
        let Ok(left @ 1..) = u64::try_from(left) else { return };
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(left)) => {}
            _ = moved.changed() => {}
        }
    }
}

/// In a debug build with [`TEST_CLOCK_ENV`] set, keeps the offset equal to the
/// number in that file until the runtime stops. Does nothing otherwise.
pub fn follow() {
    if !cfg!(debug_assertions) {
        return;
    }
    let Some(path) = std::env::var_os(TEST_CLOCK_ENV) else { return };
    let read = move || std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<i64>().ok());
    if let Some(ms) = read() {
        set_offset(ms);
    }
    tracing::warn!("{TEST_CLOCK_ENV} is set: the clock follows a test's file (debug builds only)");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if let Some(ms) = read() {
                set_offset(ms);
            }
        }
    });
}
