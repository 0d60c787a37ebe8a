//! [`WorkQueue`]: a de-duplicating queue of keys with delayed adds and per-key backoff.
//!
//! Invariants (client-go's workqueue semantics):
//! - a key is at most once in the ready queue, however often it is added;
//! - a key handed out by [`WorkQueue::next`] is not handed out again until
//!   [`WorkQueue::done`]; adds in between mark it dirty and it is queued again on `done`;
//! - a delayed add keeps the earliest deadline per key;
//! - [`WorkQueue::add_rate_limited`] waits the key's next backoff delay;
//!   [`WorkQueue::forget`] resets it.
//!
//! Time is tokio's, so tests can pause and advance it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use shoal_store::Backoff;

struct Inner<K> {
    ready: VecDeque<K>,
    queued: HashSet<K>,
    processing: HashSet<K>,
    dirty: HashSet<K>,
    /// Earliest deadline per delayed key.
    waiting: HashMap<K, Instant>,
    /// (deadline, sequence) of delayed entries; stale entries are skipped.
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    by_seq: HashMap<u64, K>,
    seq: u64,
    backoff: HashMap<K, Backoff>,
    closed: bool,
}

/// A shared, cloneable work queue.
pub struct WorkQueue<K> {
    inner: Arc<Mutex<Inner<K>>>,
    notify: Arc<Notify>,
    backoff: Backoff,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        WorkQueue {
            inner: self.inner.clone(),
            notify: self.notify.clone(),
            backoff: self.backoff.clone(),
        }
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> Default for WorkQueue<K> {
    fn default() -> Self {
        WorkQueue::new(Backoff::default())
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    /// An empty queue whose keys back off following `backoff`.
    pub fn new(backoff: Backoff) -> Self {
        WorkQueue {
            inner: Arc::new(Mutex::new(Inner {
                ready: VecDeque::new(),
                queued: HashSet::new(),
                processing: HashSet::new(),
                dirty: HashSet::new(),
                waiting: HashMap::new(),
                heap: BinaryHeap::new(),
                by_seq: HashMap::new(),
                seq: 0,
                backoff: HashMap::new(),
                closed: false,
            })),
            notify: Arc::new(Notify::new()),
            backoff,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` now (no-op if already queued; marks it dirty if being processed).
    pub fn add(&self, key: K) {
        let mut inner = self.lock();
        if Self::add_locked(&mut inner, key) {
            drop(inner);
            self.notify.notify_one();
        }
    }

    fn add_locked(inner: &mut Inner<K>, key: K) -> bool {
        if inner.closed || inner.queued.contains(&key) {
            return false;
        }
        if inner.processing.contains(&key) {
            inner.dirty.insert(key);
            return false;
        }
        inner.queued.insert(key.clone());
        inner.ready.push_back(key);
        true
    }

    /// Queues every key of `keys` now.
    pub fn add_all(&self, keys: impl IntoIterator<Item = K>) {
        let mut inner = self.lock();
        let mut any = false;
        for k in keys {
            any |= Self::add_locked(&mut inner, k);
        }
        drop(inner);
        if any {
            self.notify.notify_waiters();
            self.notify.notify_one();
        }
    }

    /// Queues `key` after `delay` (keeping an earlier deadline if one is set).
    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let deadline = Instant::now() + delay;
        let mut inner = self.lock();
        if inner.closed {
            return;
        }
        if let Some(existing) = inner.waiting.get(&key) {
            if *existing <= deadline {
                return;
            }
        }
        inner.waiting.insert(key.clone(), deadline);
        inner.seq += 1;
        let seq = inner.seq;
        inner.by_seq.insert(seq, key);
        inner.heap.push(Reverse((deadline, seq)));
        drop(inner);
        // Wake a waiter so it re-arms its timer for a possibly earlier deadline.
        self.notify.notify_waiters();
    }

    /// Queues `key` after its next backoff delay.
    pub fn add_rate_limited(&self, key: K) -> Duration {
        let delay = {
            let mut inner = self.lock();
            let template = self.backoff.clone();
            inner
                .backoff
                .entry(key.clone())
                .or_insert(template)
                .next()
                .unwrap_or_default()
        };
        self.add_after(key.clone(), delay);
        delay
    }

    /// Resets `key`'s backoff (after a successful reconcile).
    pub fn forget(&self, key: &K) {
        self.lock().backoff.remove(key);
    }

    /// Marks `key` finished; queues it again if it was added meanwhile.
    pub fn done(&self, key: &K) {
        let mut inner = self.lock();
        inner.processing.remove(key);
        if inner.dirty.remove(key) && Self::add_locked(&mut inner, key.clone()) {
            drop(inner);
            self.notify.notify_one();
        }
    }

    /// Stops the queue: [`WorkQueue::next`] returns `None` from now on.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }

    /// Keys ready now (not counting delayed or processing ones).
    pub fn len(&self) -> usize {
        self.lock().ready.len()
    }

    /// Whether no key is ready now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves due delayed keys to the ready queue; returns the next deadline.
    fn promote(inner: &mut Inner<K>, now: Instant) -> Option<Instant> {
        while let Some(Reverse((deadline, seq))) = inner.heap.peek().copied() {
            if deadline > now {
                return Some(deadline);
            }
            inner.heap.pop();
            let Some(key) = inner.by_seq.remove(&seq) else {
                continue;
            };
            if inner.waiting.get(&key) == Some(&deadline) {
                inner.waiting.remove(&key);
                Self::add_locked(inner, key);
            }
        }
        None
    }

    /// The next key to process, waiting for one; `None` once closed.
    pub async fn next(&self) -> Option<K> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let deadline = {
                let mut inner = self.lock();
                if inner.closed {
                    return None;
                }
                let deadline = Self::promote(&mut inner, Instant::now());
                if let Some(key) = inner.ready.pop_front() {
                    inner.queued.remove(&key);
                    inner.processing.insert(key.clone());
                    return Some(key);
                }
                deadline
            };
            match deadline {
                Some(d) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(d) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> WorkQueue<&'static str> {
        WorkQueue::new(
            Backoff::new(Duration::from_secs(1), Duration::from_secs(8)).with_jitter(0.0),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn queue_should_deduplicate_keys() {
        let q = queue();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(q.next().await, Some("b"));
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn queue_should_not_hand_out_a_key_being_processed_and_requeue_it_when_dirty() {
        let q = queue();
        q.add("a");
        let k = q.next().await.unwrap();
        q.add("a");
        assert!(q.is_empty(), "a key in processing is not queued again");
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        q.done(&k);
        assert_eq!(waiter.await.unwrap(), Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn queue_should_delay_adds_and_keep_the_earliest_deadline() {
        let q = queue();
        let start = Instant::now();
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(3));
        q.add_after("a", Duration::from_secs(5));
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn queue_should_back_off_exponentially_per_key_and_reset_on_forget() {
        let q = queue();
        let mut delays = vec![];
        for _ in 0..5 {
            let start = Instant::now();
            q.add_rate_limited("a");
            let k = q.next().await.unwrap();
            delays.push(start.elapsed().as_secs());
            q.done(&k);
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 8]);
        // Another key has its own backoff.
        assert_eq!(q.add_rate_limited("b"), Duration::from_secs(1));
        q.forget(&"a");
        assert_eq!(q.add_rate_limited("a"), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn queue_should_wake_a_waiter_for_an_earlier_delayed_key() {
        let q = queue();
        q.add_after("late", Duration::from_secs(60));
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { (q.next().await, Instant::now()) }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let start = Instant::now();
        q.add_after("soon", Duration::from_secs(2));
        let (k, at) = waiter.await.unwrap();
        assert_eq!(k, Some("soon"));
        assert_eq!(at - start, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn queue_should_end_when_closed() {
        let q = queue();
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        q.close();
        assert_eq!(waiter.await.unwrap(), None);
    }
}
