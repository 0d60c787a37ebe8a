//! Task status in etcd, written in batches: [`StatusBatcher`] commits the status reports
//! of many tasks (of one agent, or of every agent of a hollow fleet) in one transaction,
//! and [`BatchedStatus`] is an agent's [`StatusSink`] in front of it.
//!
//! A report needs the stored task to change its status. The agent already has it: the task
//! watch's cache (what the converge loop planned from), or the agent's own last write of
//! it, whichever is newer. So a report reads nothing: the batch writes every task compared
//! on the revision it was known at. If any of them changed meanwhile (the controller wrote
//! the task), nothing is written and the same transaction returns every task's current
//! value; the changes are redone on those and the batch is sent again. A task the agent
//! does not know is read first (it was not planned from the watch: rare).
//!
//! A confirmation ([`StatusSink::confirm`], asked before a start) rides the same queue:
//! the confirmations of a batch are one read-only transaction that compares each task's
//! revision (etcd serves it as a linearizable read: no write, no watch event) and, if one
//! changed, returns every current value.
//!
//! Invariants, as with one write per report ([`super::apply`]): only `status` changes,
//! never `spec` or `metadata`; a status only moves forward ([`advance`]); a task that is
//! gone is reported as `None` and never recreated; each report is answered only after its
//! write committed (or was found unnecessary).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use shoal_api_types::{Task, TaskSpec};
use shoal_store::{CheckMany, Known, Store, StoreError, UpdateMany, MAX_TXN_BYTES, MAX_TXN_OPS};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::apply::{advance, StatusSink};
use super::desired::DesiredTasks;
use super::plan::StatusUpdate;

/// Most reports in one transaction (each is a compare, a put and, on conflict, a get).
pub const MAX_BATCH: usize = MAX_TXN_OPS - 8;

/// Transactions in flight at once.
const PARALLEL: usize = 4;

/// Own writes kept before those the watch has caught up with are dropped (at least; see
/// `Written`).
const PRUNE_ABOVE: usize = 64;

/// Times a batch is redone on fresh values before its reports fail with a conflict.
const ATTEMPTS: usize = 8;

type Reply = oneshot::Sender<Result<Option<Task>, StoreError>>;

/// One report: the task as the agent knows it (if at all), where it lives, the update
/// (`None`: a confirmation, nothing to write).
struct Request {
    key: String,
    known: Option<Task>,
    update: Option<StatusUpdate>,
    reply: Reply,
}

/// Commits status reports in batches. Cheap to clone; clones share one queue, so one
/// batcher can serve every agent of a process.
#[derive(Clone, Debug)]
pub struct StatusBatcher {
    tx: mpsc::UnboundedSender<Request>,
}

impl StatusBatcher {
    /// Starts the batcher on the current runtime; it stops when every clone is dropped.
    pub fn spawn(store: Store) -> StatusBatcher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx));
        StatusBatcher { tx }
    }

    async fn report(
        &self,
        key: String,
        known: Option<Task>,
        update: Option<&StatusUpdate>,
    ) -> Result<Option<Task>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            key,
            known,
            update: update.cloned(),
            reply,
        };
        let gone = || StoreError::Unreachable("the status batcher has stopped".into());
        self.tx.send(request).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<Request>) {
    let permits = Arc::new(Semaphore::new(PARALLEL));
    while let Some(first) = rx.recv().await {
        // Whatever queued up while the last transactions were in flight goes together.
        let mut batch = vec![first];
        let mut bytes = size(&batch[0]);
        while batch.len() < MAX_BATCH {
            let Ok(r) = rx.try_recv() else { break };
            bytes += size(&r);
            batch.push(r);
            // Each task is written once (and read once on a conflict): half the limit.
            if bytes >= MAX_TXN_BYTES / 2 {
                break;
            }
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let store = store.clone();
        tokio::spawn(async move {
            commit(&store, batch).await;
            drop(permit);
        });
    }
}

/// About what a report's task weighs in a transaction: its JSON counted, not kept.
fn size(r: &Request) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let Some(t) = &r.known else { return 4096 };
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, t) {
        Ok(()) => count.0 + r.key.len(),
        Err(_) => 4096,
    }
}

/// `e` for every report of a failed batch (store errors are not `Clone`): the same
/// variant where it matters to the caller (conflict, permission), else unreachable.
fn copy_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
        StoreError::PermissionDenied { op, key, reason } => StoreError::PermissionDenied {
            op,
            key: key.clone(),
            reason: reason.clone(),
        },
        other => StoreError::Unreachable(other.to_string()),
    }
}

/// Writes `batch`, redoing the changes on fresh values after a conflict. Each task is
/// copied once, into the write (the caller's copies are moved, not cloned).
async fn commit(store: &Store, batch: Vec<Request>) {
    let now = Utc::now();
    let mut open: Vec<(Request, Option<Task>)> = Vec::with_capacity(batch.len());
    // Confirmations of tasks the agent has a copy of, checked together below.
    let mut check: Vec<(Reply, Task)> = Vec::new();
    for mut r in batch {
        let known = r.known.take();
        if r.update.is_none() {
            if let Some(t) = known {
                check.push((r.reply, t));
                continue;
            }
        }
        let current = match known {
            Some(t) => Some(t),
            // Read now: fresh, so a confirmation is answered with it below.
            None => match store.get::<TaskSpec>(&r.key).await {
                Ok(t) => t,
                Err(e) => {
                    let _ = r.reply.send(Err(e));
                    continue;
                }
            },
        };
        open.push((r, current));
    }
    // The confirmations (a read) and the writes go to etcd at the same time.
    tokio::join!(confirm(store, check), write(store, open, now));
}

/// Writes the reports of `open` (each with the task it changes), redone on fresh values
/// after a conflict; answers a confirmation whose task was read just now with that task.
async fn write(store: &Store, mut open: Vec<(Request, Option<Task>)>, now: DateTime<Utc>) {
    for _ in 0..ATTEMPTS {
        // Answer what needs no write; the rest is written together.
        let mut requests: Vec<Request> = Vec::new();
        let mut tasks: Vec<Task> = Vec::new();
        for (r, current) in open.drain(..) {
            match current {
                None => {
                    let _ = r.reply.send(Ok(None));
                }
                Some(task) if r.update.is_none() => {
                    let _ = r.reply.send(Ok(Some(task)));
                }
                Some(mut task) => {
                    let mut status = task.status.clone();
                    let update = r.update.as_ref().expect("a confirmation was answered");
                    if advance(&mut status, update, now) {
                        task.status = status;
                        requests.push(r);
                        tasks.push(task);
                    } else {
                        let _ = r.reply.send(Ok(Some(task)));
                    }
                }
            }
        }
        if tasks.is_empty() {
            return;
        }
        match store.update_many(&tasks).await {
            Ok(UpdateMany::Written(rev)) => {
                for (r, mut t) in requests.into_iter().zip(tasks) {
                    t.metadata.resource_version = Some(rev.to_string());
                    let _ = r.reply.send(Ok(Some(t)));
                }
                return;
            }
            Ok(UpdateMany::Conflict(current)) => {
                open = requests.into_iter().zip(current).collect();
            }
            Err(e) => {
                for r in requests {
                    let _ = r.reply.send(Err(copy_err(&e)));
                }
                return;
            }
        }
    }
    for (r, _) in open {
        let _ = r.reply.send(Err(StoreError::Conflict(format!(
            "{}: gave up after {ATTEMPTS} conflicting writes",
            r.key
        ))));
    }
}

/// Answers confirmations: each task as given if none changed, else every current value.
async fn confirm(store: &Store, check: Vec<(Reply, Task)>) {
    if check.is_empty() {
        return;
    }
    let (replies, tasks): (Vec<Reply>, Vec<Task>) = check.into_iter().unzip();
    match store.check_many(&tasks).await {
        Ok(CheckMany::Unchanged) => {
            for (reply, t) in replies.into_iter().zip(tasks) {
                let _ = reply.send(Ok(Some(t)));
            }
        }
        Ok(CheckMany::Changed(current)) => {
            for (reply, t) in replies.into_iter().zip(current) {
                let _ = reply.send(Ok(t));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(copy_err(&e)));
            }
        }
    }
}

/// An agent's status sink: reports go through a [`StatusBatcher`] with the task as the
/// agent knows it.
pub struct BatchedStatus {
    batcher: StatusBatcher,
    prefix: String,
    desired: watch::Receiver<DesiredTasks>,
    /// The agent's own writes not yet seen in `desired`, by task id.
    written: Mutex<Written>,
}

/// The agent's own writes, pruned of those the watch has caught up with whenever they
/// doubled since the last pruning (so pruning costs O(1) per report, amortized, however
/// far the watch lags).
#[derive(Default)]
struct Written {
    tasks: HashMap<String, Task>,
    prune_above: usize,
}

impl BatchedStatus {
    /// The sink of the agent whose tasks live below `prefix` and are cached in `desired`.
    pub fn new(
        batcher: StatusBatcher,
        prefix: String,
        desired: watch::Receiver<DesiredTasks>,
    ) -> Self {
        BatchedStatus {
            batcher,
            prefix,
            desired,
            written: Mutex::default(),
        }
    }

    /// The newest copy of task `id` the agent has: watched or written by itself (only
    /// that one is copied). Drops an own write the watch has caught up with.
    fn known(&self, id: &str) -> Option<Task> {
        // Locked in the same order as in `report`: own writes, then the cache.
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let desired = self.desired.borrow();
        let watched = desired.as_ref().and_then(|tasks| tasks.get(id));
        let own = written.tasks.get(id);
        match (watched, own) {
            (Some(w), Some(o)) if revision(w) >= revision(o) => {
                let w = w.clone();
                written.tasks.remove(id);
                Some(w)
            }
            (_, Some(o)) => Some(o.clone()),
            (w, None) => w.cloned(),
        }
    }
}

fn revision(t: &Task) -> i64 {
    t.metadata.revision().unwrap_or(0)
}

#[async_trait]
impl StatusSink for BatchedStatus {
    async fn report(&self, id: &str, update: &StatusUpdate) -> Result<Option<Task>, StoreError> {
        let key = format!("{}{}", self.prefix, id);
        let stored = self
            .batcher
            .report(key, self.known(id), Some(update))
            .await?;
        self.remember(id, &stored);
        Ok(stored)
    }

    async fn confirm(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let key = format!("{}{}", self.prefix, id);
        let known = self.known(id);
        let was = known.as_ref().map(revision);
        let stored = self.batcher.report(key, known, None).await?;
        if stored.as_ref().map(revision) != was {
            // Newer than the copy the agent had: keep it until the watch shows it.
            self.remember(id, &stored);
        }
        Ok(stored)
    }
}

impl BatchedStatus {
    /// The agent's own write of task `id` at revision `rev`, if it made one: the task
    /// watch's echo of that write, without decoding it.
    pub fn written_at(&self, id: &str, rev: i64) -> Option<Task> {
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written
            .tasks
            .get(id)
            .filter(|own| revision(own) == rev)
            .cloned()
    }

    /// [`BatchedStatus::written_at`] by key, for the task watch's reflector.
    pub fn echoes(self: Arc<Self>) -> Known<TaskSpec> {
        Arc::new(move |key, rev| {
            let id = key.strip_prefix(self.prefix.as_str())?;
            self.written_at(id, rev)
        })
    }

    /// Keeps `stored`, the task as etcd has it now, until the watch shows it.
    fn remember(&self, id: &str, stored: &Option<Task>) {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        match stored {
            Some(t) => {
                written.tasks.insert(id.to_string(), t.clone());
            }
            None => {
                written.tasks.remove(id);
            }
        }
        if written.tasks.len() > written.prune_above.max(PRUNE_ABOVE) {
            // Keep only writes the watch has not shown yet.
            let desired = self.desired.borrow();
            written.tasks.retain(|id, own| {
                desired
                    .as_ref()
                    .and_then(|tasks| tasks.get(id))
                    .is_some_and(|w| revision(w) < revision(own))
            });
            written.prune_above = 2 * written.tasks.len();
        }
    }
}
