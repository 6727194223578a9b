//! Forwarding committed entries to a SIEM: a JSON-lines file (or stdout) and
//! syslog/journald (RFC 5424 datagrams on `/dev/log`, which journald also serves).
//!
//! The audit log in the database is the record; forwarding is a copy. Each sink
//! reads from a bounded broadcast buffer, so a slow or broken sink never blocks a
//! read: it retries with backoff, and if it falls more than the buffer behind, the
//! skipped entries are counted and reported (they stay in the database).

use super::entry_json;
use crate::config::SinkConfig;
use crate::store::AuditRow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;

/// Entries a sink may fall behind before it starts skipping.
pub const BUFFER: usize = 4096;

/// Forwarding health, shown by `vaultctl status`.
#[derive(Debug, Default)]
pub struct Stats {
    pub errors: AtomicU64,
    pub dropped: AtomicU64,
}

enum Sink {
    File { path: PathBuf, file: Option<tokio::fs::File> },
    Stdout,
    Syslog { socket: PathBuf, conn: Option<tokio::net::UnixDatagram> },
}

impl Sink {
    fn name(&self) -> String {
        match self {
            Sink::File { path, .. } => format!("jsonl:{}", path.display()),
            Sink::Stdout => "jsonl:stdout".into(),
            Sink::Syslog { socket, .. } => format!("syslog:{}", socket.display()),
        }
    }

    async fn send(&mut self, row: &AuditRow) -> std::io::Result<()> {
        let json = entry_json(row).to_string();
        match self {
            Sink::File { path, file } => {
                if file.is_none() {
                    let opened =
                        tokio::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&*path).await?;
                    *file = Some(opened);
                }
                let f = file.as_mut().ok_or_else(|| std::io::Error::other("file not open"))?;
                let result = f.write_all(format!("{json}\n").as_bytes()).await;
                if result.is_err() {
                    *file = None; // reopen on the next try (the file may have been rotated away)
                }
                result
            }
            Sink::Stdout => {
                let mut out = tokio::io::stdout();
                out.write_all(format!("{json}\n").as_bytes()).await?;
                out.flush().await
            }
            Sink::Syslog { socket, conn } => {
                if conn.is_none() {
                    let c = tokio::net::UnixDatagram::unbound()?;
                    c.connect(&*socket)?;
                    *conn = Some(c);
                }
                let c = conn.as_ref().ok_or_else(|| std::io::Error::other("syslog not connected"))?;
                let result = c.send(syslog_line(row, &json).as_bytes()).await.map(|_| ());
                if result.is_err() {
                    *conn = None;
                }
                result
            }
        }
    }
}

/// An RFC 5424 message: facility authpriv (10), severity warning (4) for denials
/// and failures, notice (5) otherwise; the entry's JSON as the message.
fn syslog_line(row: &AuditRow, json: &str) -> String {
    let severity = if row.outcome == "ok" { 5 } else { 4 };
    let time =
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(row.time_unix_ms.max(0) as u64));
    format!("<{}>1 {time} - vaultd {} audit - {json}", 10 * 8 + severity, std::process::id())
}

/// Starts one task per configured sink, each subscribed to `entries`.
pub fn spawn(sinks: &[SinkConfig], entries: &broadcast::Sender<Arc<AuditRow>>, stats: Arc<Stats>) {
    for config in sinks {
        let sink = match config {
            SinkConfig::Jsonl { path } if path.as_os_str() == "-" => Sink::Stdout,
            SinkConfig::Jsonl { path } => Sink::File { path: path.clone(), file: None },
            SinkConfig::Syslog { socket } => Sink::Syslog { socket: socket.clone(), conn: None },
        };
        tokio::spawn(run(sink, entries.subscribe(), stats.clone()));
    }
}

async fn run(mut sink: Sink, mut rx: broadcast::Receiver<Arc<AuditRow>>, stats: Arc<Stats>) {
    let name = sink.name();
    loop {
        let row = match rx.recv().await {
            Ok(row) => row,
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                stats.dropped.fetch_add(skipped, Ordering::Relaxed);
                tracing::error!(sink = %name, skipped, "audit forwarding fell behind; skipped entries remain in the audit log");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let mut backoff = Duration::from_millis(100);
        while let Err(e) = sink.send(&row).await {
            let errors = stats.errors.fetch_add(1, Ordering::Relaxed) + 1;
            if errors == 1 || errors.is_power_of_two() {
                tracing::warn!(sink = %name, error = %e, seq = row.seq, errors, "audit forwarding failed; retrying");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(seq: u64, outcome: &str) -> AuditRow {
        AuditRow {
            seq,
            time_unix_ms: 0,
            kind: "secret.read".into(),
            class: "access".into(),
            outcome: outcome.into(),
            actor: r#"{"uid":1}"#.into(),
            secret: "default/x".into(),
            detail: "{}".into(),
            mac: None,
            records: None,
        }
    }

    #[tokio::test]
    async fn jsonl_and_syslog_sinks_receive_entries() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.jsonl");
        let log = dir.path().join("log.sock");
        let listener = tokio::net::UnixDatagram::bind(&log).unwrap();
        let (tx, _) = broadcast::channel(BUFFER);
        let stats = Arc::new(Stats::default());
        let sinks = [SinkConfig::Jsonl { path: file.clone() }, SinkConfig::Syslog { socket: log }];
        spawn(&sinks, &tx, stats.clone());
        tx.send(Arc::new(row(1, "ok"))).unwrap();
        tx.send(Arc::new(row(2, "denied"))).unwrap();

        let mut buf = [0u8; 4096];
        let n = listener.recv(&mut buf).await.unwrap();
        let first = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(first.starts_with("<85>1 1970-01-01T00:00:00.000Z - vaultd "), "{first}");
        assert!(first.contains(r#""seq":1"#), "{first}");
        let n = listener.recv(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("<84>1 "));

        for _ in 0..100 {
            if std::fs::read_to_string(&file).unwrap_or_default().lines().count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let seqs: Vec<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [1, 2]);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_broken_sink_retries_never_blocks_and_counts_what_it_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("late.sock");
        let (tx, _) = broadcast::channel(4);
        let stats = Arc::new(Stats::default());
        spawn(&[SinkConfig::Syslog { socket: socket.clone() }], &tx, stats.clone());
        tx.send(Arc::new(row(0, "ok"))).unwrap();
        while stats.errors.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await; // the sink is now stuck on entry 0
        }
        for seq in 1..100 {
            tx.send(Arc::new(row(seq, "ok"))).unwrap(); // never blocks, though nobody listens
        }
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(stats.errors.load(Ordering::Relaxed) >= 2, "the sink retried");

        let listener = tokio::net::UnixDatagram::bind(&socket).unwrap();
        let mut buf = [0u8; 4096];
        let mut recv = async || {
            let n = tokio::time::timeout(Duration::from_secs(5), listener.recv(&mut buf)).await.unwrap().unwrap();
            let line = String::from_utf8_lossy(&buf[..n]).to_string();
            let json = &line[line.find('{').unwrap()..];
            serde_json::from_str::<serde_json::Value>(json).unwrap()["seq"].as_u64().unwrap()
        };
        assert_eq!(recv().await, 0, "the entry it was stuck on is delivered");
        assert_eq!(recv().await, 96, "then it skips to what the buffer still holds");
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 95);
    }
}
