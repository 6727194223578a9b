//! Group commit for read records. A read changes nothing in the database, so its
//! audit record would otherwise cost a transaction of its own per read. Readers
//! queue their record and wait; one thread commits everything queued in a single
//! transaction and answers them all. Under load one commit serves many reads; at
//! one read in flight it costs one commit, as before.

use super::Event;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// How many queued records one transaction takes at most.
const MAX_BATCH: usize = 1024;
/// Readers waiting beyond this many block on the queue rather than grow it.
const QUEUE: usize = 16 * 1024;

/// Why a record was not committed; the read it guards is refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the audit log could not be written ({0}); the request was refused")]
pub struct CommitFailed(pub String);

struct Pending {
    event: Event,
    done: Option<oneshot::Sender<Result<(), CommitFailed>>>,
}

/// The queue in front of the commit thread.
pub struct Committer {
    queue: mpsc::SyncSender<Pending>,
}

impl Committer {
    /// Starts the commit thread. `commit` appends a batch in one transaction; the
    /// thread ends when the `Committer` is dropped or `commit` reports that its
    /// target is gone (`None`).
    pub fn start(commit: impl Fn(Vec<Event>) -> Option<Result<(), String>> + Send + 'static) -> Committer {
        let (queue, rx) = mpsc::sync_channel::<Pending>(QUEUE);
        let spawned = std::thread::Builder::new().name("audit-commit".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                let (events, waiters): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.event, p.done)).unzip();
                let Some(result) = commit(events) else { return };
                if let Err(e) = &result {
                    tracing::error!(error = %e, "audit commit failed; the reads it guards are refused");
                }
                for done in waiters.into_iter().flatten() {
                    let _ = done.send(result.clone().map_err(CommitFailed));
                }
            }
        });
        if let Err(e) = spawned {
            // Without the thread every recorded read fails closed (its sender sees the queue gone).
            tracing::error!(error = %e, "cannot start the audit commit thread");
        }
        Committer { queue }
    }

    /// Queues `event` and waits until it is committed.
    pub async fn record(&self, event: Event) -> Result<(), CommitFailed> {
        let (done, committed) = oneshot::channel();
        let gone = || CommitFailed("the audit commit thread is not running".into());
        let queue = self.queue.clone();
        let pending = Pending { event, done: Some(done) };
        // try_send first: the common case never leaves the async worker.
        match queue.try_send(pending) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(pending)) => tokio::task::spawn_blocking(move || queue.send(pending))
                .await
                .map_err(|_| gone())?
                .map_err(|_| gone())?,
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(gone()),
        }
        committed.await.map_err(|_| gone())?
    }

    /// Queues `event` without waiting (for records of refusals that guard nothing,
    /// like a connection closed at accept). Dropped, with a log line, if the queue is full.
    pub fn record_detached(&self, event: Event) {
        if self.queue.try_send(Pending { event, done: None }).is_err() {
            tracing::error!("audit queue full or closed: a detached audit record was dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, Outcome};
    use std::sync::{Arc, Mutex};

    fn event() -> Event {
        Event::new("secret.read", Outcome::Ok, &Actor::vaultd())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_concurrent_records_and_reports_failures() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = batches.clone();
        let committer = Arc::new(Committer::start(move |events| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            seen.lock().unwrap_or_else(|p| p.into_inner()).push(events.len());
            Some(Ok(()))
        }));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let c = committer.clone();
                tokio::spawn(async move { c.record(event()).await })
            })
            .collect();
        for t in tasks {
            assert!(matches!(t.await, Ok(Ok(()))));
        }
        let batches = batches.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(batches.iter().sum::<usize>(), 64);
        assert!(batches.len() < 64, "no batching happened: {batches:?}");

        let failing = Committer::start(|_| Some(Err("disk full".into())));
        let err = failing.record(event()).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("disk full") && err.contains("refused"), "{err}");
    }
}
