//! Group commit for read records. A read changes nothing in the database, so its
//! audit record would otherwise cost a transaction of its own per read.
//!
//! Leader-based: a reader queues its record; if no commit is in progress it
//! becomes the leader and commits everything queued, in one transaction, on its
//! own thread, until the queue is empty; readers arriving meanwhile wait for the
//! leader's next batch. At one read in flight this is one commit and no thread
//! handoff; under load one commit serves many reads.

use super::Event;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// How many queued records one transaction takes at most.
const MAX_BATCH: usize = 1024;
/// How many times a leader yields to gather records before it commits.
const MAX_GATHER_YIELDS: usize = 8;

/// Why a record was not committed; the read it guards is refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the audit log could not be written ({0}); the request was refused")]
pub struct CommitFailed(pub String);

type Done = oneshot::Sender<Result<(), CommitFailed>>;
type CommitFn = dyn Fn(Vec<Event>) -> Result<(), String> + Send + Sync;

#[derive(Default)]
struct Queue {
    pending: Vec<(Event, Option<Done>)>,
    leading: bool,
}

pub struct Committer {
    /// std Mutex: held only to push or take the queue, never across a commit.
    queue: Mutex<Queue>,
    commit: Box<CommitFn>,
}

impl Committer {
    /// `commit` appends a batch of events in one transaction.
    pub fn new(commit: impl Fn(Vec<Event>) -> Result<(), String> + Send + Sync + 'static) -> Committer {
        Committer { queue: Mutex::default(), commit: Box::new(commit) }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `event` and waits until it is committed.
    pub async fn record(&self, event: Event) -> Result<(), CommitFailed> {
        self.record_all(vec![event]).await
    }

    /// Queues `events` together (so one commit takes them all) and waits until
    /// every one is committed.
    pub async fn record_all(&self, events: Vec<Event>) -> Result<(), CommitFailed> {
        let mut committed = Vec::with_capacity(events.len());
        let lead = {
            let mut queue = self.queue();
            for event in events {
                let (done, rx) = oneshot::channel();
                queue.pending.push((event, Some(done)));
                committed.push(rx);
            }
            !std::mem::replace(&mut queue.leading, true)
        };
        if lead {
            // Before committing, let the requests already queued on this runtime
            // add their records (yield while the queue still grows): under load
            // that turns many commits into one; alone it costs a yield or two.
            let mut queued = self.queue().pending.len();
            for _ in 0..MAX_GATHER_YIELDS {
                tokio::task::yield_now().await;
                let now = self.queue().pending.len();
                if now == queued {
                    break;
                }
                queued = now;
            }
            self.lead();
        }
        for rx in committed {
            rx.await.map_err(|_| CommitFailed("the commit was abandoned".into()))??;
        }
        Ok(())
    }

    /// Queues `event` without waiting (for records of refusals that guard nothing,
    /// like a request denied at the door).
    pub fn record_detached(&self, event: Event) {
        if self.enqueue(event, None) {
            self.lead();
        }
    }

    /// Queues a record; true when the caller must lead (nobody else is).
    fn enqueue(&self, event: Event, done: Option<Done>) -> bool {
        let mut queue = self.queue();
        queue.pending.push((event, done));
        !std::mem::replace(&mut queue.leading, true)
    }

    /// Commits batches until the queue is empty, then gives up leadership.
    fn lead(&self) {
        loop {
            let batch: Vec<_> = {
                let mut queue = self.queue();
                if queue.pending.is_empty() {
                    queue.leading = false;
                    return;
                }
                let n = queue.pending.len().min(MAX_BATCH);
                queue.pending.drain(..n).collect()
            };
            let (events, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let result = (self.commit)(events).map_err(CommitFailed);
            if let Err(e) = &result {
                tracing::error!(error = %e, "audit commit failed; the reads it guards are refused");
            }
            for done in waiters.into_iter().flatten() {
                let _ = done.send(result.clone());
            }
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
        let committer = Arc::new(Committer::new(move |events| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            seen.lock().unwrap_or_else(|p| p.into_inner()).push(events.len());
            Ok(())
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

        let failing = Committer::new(|_| Err("disk full".into()));
        let err = failing.record(event()).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("disk full") && err.contains("refused"), "{err}");
    }

    #[tokio::test]
    async fn one_call_s_records_commit_together() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = batches.clone();
        let committer = Committer::new(move |events| {
            seen.lock().unwrap_or_else(|p| p.into_inner()).push(events.len());
            Ok(())
        });
        assert!(committer.record_all((0..20).map(|_| event()).collect()).await.is_ok());
        assert_eq!(*batches.lock().unwrap_or_else(|p| p.into_inner()), [20]);
    }
}
