//! [`Runner`]: takes keys from a [`WorkQueue`] and reconciles them, at most `concurrency`
//! at once and never one key twice at once; applies the returned [`Action`] or, on error,
//! the error policy (retryable errors back off per key, others wait for a change or the
//! periodic resync). A reconcile that panics is logged and retried with backoff like a
//! retryable error, so its key is never left marked as in progress.

use std::any::Any;
use std::future::Future;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::error::ControllerError;
use super::queue::WorkQueue;

/// What to do with a key after reconciling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reconcile again after this long, even without a change.
    Requeue(Duration),
    /// Nothing to do until something changes (or the periodic resync).
    AwaitChange,
}

impl Action {
    /// Reconcile again after `d`.
    pub fn requeue(d: Duration) -> Action {
        Action::Requeue(d)
    }

    /// The earlier of two actions.
    pub fn min(self, other: Action) -> Action {
        match (self, other) {
            (Action::Requeue(a), Action::Requeue(b)) => Action::Requeue(a.min(b)),
            (Action::Requeue(a), _) | (_, Action::Requeue(a)) => Action::Requeue(a),
            _ => Action::AwaitChange,
        }
    }
}

/// Runs one reconciler over one queue.
pub struct Runner<K> {
    name: &'static str,
    queue: WorkQueue<K>,
    concurrency: usize,
}

impl<K: Clone + Eq + Hash + Send + Sync + std::fmt::Display + 'static> Runner<K> {
    /// A runner named `name` (for logs) over `queue`.
    pub fn new(name: &'static str, queue: WorkQueue<K>, concurrency: usize) -> Self {
        Runner {
            name,
            queue,
            concurrency: concurrency.max(1),
        }
    }

    /// Reconciles keys until the queue closes (or this future is dropped, which aborts the
    /// reconciles in flight).
    pub async fn run<F, Fut>(self, reconcile: F)
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, ControllerError>> + Send + 'static,
    {
        let reconcile = Arc::new(reconcile);
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut running = JoinSet::new();
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let Some(key) = self.queue.next().await else {
                break;
            };
            let queue = self.queue.clone();
            let reconcile = reconcile.clone();
            let name = self.name;
            running.spawn(async move {
                let started = tokio::time::Instant::now();
                // A panicking reconcile must not leave its key marked "processing" for ever
                // (it would never be reconciled again): it counts as a failure to retry.
                let result = AssertUnwindSafe(reconcile(key.clone()))
                    .catch_unwind()
                    .await;
                tracing::trace!(reconciler = name, %key, elapsed = ?started.elapsed(), ok = matches!(result, Ok(Ok(_))), "reconciled");
                match result {
                    Ok(Ok(action)) => {
                        queue.forget(&key);
                        if let Action::Requeue(d) = action {
                            queue.add_after(key.clone(), d);
                        }
                    }
                    Ok(Err(e)) => error_policy(name, &queue, &key, &e),
                    Err(panic) => {
                        let delay = queue.add_rate_limited(key.clone());
                        tracing::error!(reconciler = name, %key, panic = panic_message(&*panic), ?delay, "reconcile panicked; retrying");
                    }
                }
                queue.done(&key);
                drop(permit);
            });
            while running.try_join_next().is_some() {}
        }
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// Retryable errors back off per key; the rest are logged and wait for a change.
fn error_policy<K: Clone + Eq + Hash + Send + std::fmt::Display + 'static>(
    name: &str,
    queue: &WorkQueue<K>,
    key: &K,
    error: &ControllerError,
) {
    if matches!(error, ControllerError::NotLeader) {
        return;
    }
    if error.is_temporary() {
        let delay = queue.add_rate_limited(key.clone());
        tracing::debug!(reconciler = name, %key, error = %error, ?delay, "reconcile failed; retrying");
    } else {
        tracing::warn!(reconciler = name, %key, error = %error, "reconcile failed; waiting for a change");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use shoal_store::Backoff;

    #[tokio::test(start_paused = true)]
    async fn runner_should_never_reconcile_one_key_twice_at_once_and_cap_concurrency() {
        let q: WorkQueue<String> = WorkQueue::new(Backoff::default());
        let active = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let max_seen = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        // Recorded here and checked after the run: a panic inside a reconcile would only
        // end that reconcile's task, which the runner does not report.
        let twice = Arc::new(Mutex::new(Vec::<String>::new()));
        let runner = Runner::new("test", q.clone(), 2);
        let handle = tokio::spawn({
            let (active, max_seen, calls, twice) = (
                active.clone(),
                max_seen.clone(),
                calls.clone(),
                twice.clone(),
            );
            runner.run(move |k: String| {
                let (active, max_seen, calls, twice) = (
                    active.clone(),
                    max_seen.clone(),
                    calls.clone(),
                    twice.clone(),
                );
                async move {
                    {
                        let mut a = active.lock().unwrap();
                        if !a.insert(k.clone()) {
                            twice.lock().unwrap().push(k.clone());
                        }
                        max_seen.fetch_max(a.len(), Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    active.lock().unwrap().remove(&k);
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(Action::AwaitChange)
                }
            })
        });
        for _ in 0..3 {
            for k in ["a", "b", "c", "d"] {
                q.add(k.to_string());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            *twice.lock().unwrap(),
            Vec::<String>::new(),
            "keys reconciled twice at once"
        );
        assert_eq!(max_seen.load(Ordering::SeqCst), 2);
        // Each key ran once, then once more because it was re-added while queued or running.
        assert!(calls.load(Ordering::SeqCst) >= 4 && calls.load(Ordering::SeqCst) <= 8);
        // A key added again while it is reconciled, with a permit free: it waits for the
        // running reconcile and then runs once more.
        let before = calls.load(Ordering::SeqCst);
        q.add("a".to_string());
        tokio::time::sleep(Duration::from_millis(300)).await;
        q.add("a".to_string());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            *twice.lock().unwrap(),
            Vec::<String>::new(),
            "a key added while being reconciled was reconciled twice at once"
        );
        assert_eq!(calls.load(Ordering::SeqCst), before + 2);
        q.close();
        handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn runner_should_retry_a_key_whose_reconcile_panicked() {
        let q: WorkQueue<String> = WorkQueue::new(
            Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).with_jitter(0.0),
        );
        let times = Arc::new(Mutex::new(vec![]));
        let start = tokio::time::Instant::now();
        let handle = tokio::spawn({
            let times = times.clone();
            Runner::new("test", q.clone(), 1).run(move |k: String| {
                let times = times.clone();
                async move {
                    let n = {
                        let mut t = times.lock().unwrap();
                        t.push((k.clone(), start.elapsed().as_secs()));
                        t.len()
                    };
                    if n == 1 {
                        panic!("reconcile of {k} broke");
                    }
                    Ok(Action::AwaitChange)
                }
            })
        });
        q.add("k".to_string());
        tokio::time::sleep(Duration::from_secs(10)).await;
        // The panic cost one backoff step, then the key was reconciled again; the one
        // permit was given back, so another key still runs.
        q.add("other".to_string());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            *times.lock().unwrap(),
            vec![
                ("k".to_string(), 0),
                ("k".to_string(), 1),
                ("other".to_string(), 10)
            ]
        );
        q.close();
        handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn runner_should_back_off_retryable_errors_and_requeue_on_request() {
        let q: WorkQueue<String> = WorkQueue::new(
            Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).with_jitter(0.0),
        );
        let times = Arc::new(Mutex::new(vec![]));
        let start = tokio::time::Instant::now();
        let handle = tokio::spawn({
            let times = times.clone();
            Runner::new("test", q.clone(), 4).run(move |_k: String| {
                let times = times.clone();
                async move {
                    let n = {
                        let mut t = times.lock().unwrap();
                        t.push(start.elapsed().as_secs());
                        t.len()
                    };
                    if n < 4 {
                        Err(ControllerError::Conflict("lost a race".into()))
                    } else if n == 4 {
                        Ok(Action::requeue(Duration::from_secs(30)))
                    } else {
                        Ok(Action::AwaitChange)
                    }
                }
            })
        });
        q.add("k".to_string());
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert_eq!(*times.lock().unwrap(), vec![0, 1, 3, 7, 37]);
        q.close();
        handle.await.unwrap();
    }
}
