//! [`TaskIndex`]: what `exec` and `logs` need to find a task by name without listing every
//! task: each task's id, key, service, display name (`api.1`, `mon.node-2`), node, desired
//! state and state ([`TaskRef`]), indexed by id (exact and by prefix), by display name and
//! by service. The full task is then read by its key (one read), so what a request acts on
//! is current even when the index lags.
//!
//! Invariants:
//! - One index per API replica, fed by one [`Watcher`] on the tasks prefix ([`TaskLookup`]):
//!   list, then watch; a relist builds a new index and swaps it in whole. Until the first
//!   list completes the index is unknown, never empty: lookups wait for it a little
//!   ([`INDEX_WAIT`]), then get 503.
//! - The watch runs only while lookups come: the first lookup starts it, and after
//!   [`IDLE_AFTER`] without one it stops and the index is dropped (unknown again). A
//!   replica nobody asks costs etcd no watch events for every task change, and the
//!   controller no decode of them. Starting and stopping are decided under one lock that
//!   each lookup takes first, so a lookup never waits on a watch that is about to stop.
//! - A task moves key when it is assigned (`tasks/_unassigned/<id>` → `tasks/<node>/<id>`):
//!   a delete of a key removes the task only if that key is still the task's, whatever the
//!   order of the two events.
//! - Of several tasks with one display name (a slot's history), the one wanted running that
//!   runs wins, then the one wanted running, then the newest ([`TaskIndex::resolve`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use shoal_api_types::{Task, TaskSpec, TaskState};
use shoal_store::{RawEvent, RawKv, Store, Watcher, WatcherEvent};
use tokio::sync::watch;

use super::agent::MIN_ID_PREFIX;

/// How long a lookup waits for the index to be listed, or to catch up with etcd.
pub const INDEX_WAIT: Duration = Duration::from_secs(5);

/// How often the index's watch asks etcd for progress, so that it can tell it has caught
/// up with a revision while no task changes.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// How long the index is kept without a lookup before its watch stops.
pub const IDLE_AFTER: Duration = Duration::from_secs(600);

/// What a lookup needs of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRef {
    /// The task id (`metadata.name`).
    pub id: String,
    /// Its etcd key (read it for the whole task).
    pub key: String,
    /// Its service.
    pub service: String,
    /// `api.1`, `mon.node-2`.
    pub display: String,
    /// The node, once assigned.
    pub node: Option<String>,
    /// What the controller wants.
    pub desired_state: TaskState,
    /// What the agent reports.
    pub state: TaskState,
    created: Option<DateTime<Utc>>,
    revision: i64,
}

impl TaskRef {
    /// The parts of `task` (stored at `key`) a lookup needs.
    pub fn new(key: impl Into<String>, task: &Task) -> TaskRef {
        TaskRef {
            id: task.metadata.name.clone(),
            key: key.into(),
            service: task.spec.service.clone(),
            display: task.spec.display_name(),
            node: task.spec.node.clone(),
            desired_state: task.spec.desired_state,
            state: task.status.state,
            created: task.metadata.creation_timestamp,
            revision: task.metadata.revision().unwrap_or(0),
        }
    }

    /// Wanted running and running: the best answer a display name can have.
    pub fn runs_as_wanted(&self) -> bool {
        self.desired_state == TaskState::Running && self.state == TaskState::Running
    }

    fn rank(&self) -> (bool, bool, Option<DateTime<Utc>>, i64) {
        (
            self.runs_as_wanted(),
            self.desired_state == TaskState::Running,
            self.created,
            self.revision,
        )
    }
}

/// The tasks by id, display name and service (see the module docs).
#[derive(Debug, Default)]
pub struct TaskIndex {
    by_id: BTreeMap<String, TaskRef>,
    /// Ids per display name, sorted (mostly one: a small vector, not a tree node each).
    by_display: HashMap<String, Vec<String>>,
    by_service: HashMap<String, BTreeSet<String>>,
    /// Every change up to this etcd revision is in the index.
    revision: i64,
}

impl TaskIndex {
    /// An index of `tasks` (with their keys) as of `revision`.
    pub fn new(tasks: impl IntoIterator<Item = TaskRef>, revision: i64) -> TaskIndex {
        let mut index = TaskIndex {
            revision,
            ..TaskIndex::default()
        };
        for t in tasks {
            index.put(t);
        }
        index
    }

    /// Every change up to this etcd revision is in the index.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// How many tasks it holds.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Adds or replaces a task (by id).
    pub fn put(&mut self, task: TaskRef) {
        self.remove_id(&task.id.clone());
        let ids = self.by_display.entry(task.display.clone()).or_default();
        if let Err(at) = ids.binary_search(&task.id) {
            ids.insert(at, task.id.clone());
        }
        self.by_service
            .entry(task.service.clone())
            .or_default()
            .insert(task.id.clone());
        self.by_id.insert(task.id.clone(), task);
    }

    /// Removes the task stored at `key`, if that key is still its own.
    pub fn delete(&mut self, key: &str) {
        let Some(id) = key.rsplit('/').next() else {
            return;
        };
        if self.by_id.get(id).is_some_and(|t| t.key == key) {
            self.remove_id(&id.to_string());
        }
    }

    fn remove_id(&mut self, id: &String) {
        let Some(old) = self.by_id.remove(id) else {
            return;
        };
        if let Some(ids) = self.by_display.get_mut(&old.display) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.by_display.remove(&old.display);
            }
        }
        if let Some(ids) = self.by_service.get_mut(&old.service) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_service.remove(&old.service);
            }
        }
    }

    /// The task `name` means: an id, a display name (the best of a slot's history), or a
    /// unique id prefix of at least [`MIN_ID_PREFIX`] characters.
    pub fn resolve(&self, name: &str) -> Option<&TaskRef> {
        if let Some(t) = self.by_id.get(name) {
            return Some(t);
        }
        let by_display = self
            .by_display
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
            .max_by_key(|t| t.rank());
        if by_display.is_some() {
            return by_display;
        }
        if name.len() >= MIN_ID_PREFIX {
            let mut prefixed = self
                .by_id
                .range(name.to_string()..)
                .take_while(|(id, _)| id.starts_with(name));
            if let (Some((_, one)), None) = (prefixed.next(), prefixed.next()) {
                return Some(one);
            }
        }
        None
    }

    /// Every task of `service`.
    pub fn of_service<'a>(&'a self, service: &str) -> impl Iterator<Item = &'a TaskRef> + 'a {
        self.by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
    }

    fn apply(&mut self, events: Vec<RawEvent>) {
        for ev in events {
            match ev {
                RawEvent::Put(kv) => {
                    if let Some(t) = decoded(&kv) {
                        self.put(t);
                    }
                }
                RawEvent::Delete { key, .. } => self.delete(&key),
            }
        }
    }
}

fn decoded(kv: &RawKv) -> Option<TaskRef> {
    match shoal_store::decode::<TaskSpec>(kv.key.as_bytes(), &kv.value, kv.mod_revision) {
        Ok(t) => Some(TaskRef::new(kv.key.clone(), &t)),
        Err(e) => {
            tracing::warn!(error = %e, "task index: ignoring an undecodable task");
            None
        }
    }
}

/// The API replica's task index, kept equal to etcd's tasks by a background watch that runs
/// from the first lookup until [`IDLE_AFTER`] passes without one (see the module docs).
#[derive(Debug)]
pub struct TaskLookup {
    store: Store,
    shutdown: watch::Receiver<bool>,
    idle_after: Duration,
    feed: Mutex<Feed>,
    index: RwLock<Option<TaskIndex>>,
    /// The index's revision (`None` while it is not listed), to wait on.
    revision: watch::Sender<Option<i64>>,
}

/// Whether the watch runs, and when a lookup last came.
#[derive(Debug)]
struct Feed {
    running: bool,
    last_used: tokio::time::Instant,
}

/// Why the index cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the task index is not loaded yet (is etcd reachable?); retry")]
pub struct NotLoaded;

impl TaskLookup {
    /// An index of `<root>/tasks/`, fed from the first lookup until [`IDLE_AFTER`] passes
    /// without one, `shutdown` turns true or the value is dropped.
    pub fn new(store: Store, shutdown: watch::Receiver<bool>) -> Arc<TaskLookup> {
        Self::with_idle_after(store, shutdown, IDLE_AFTER)
    }

    /// The same with another idle time (tests).
    pub fn with_idle_after(
        store: Store,
        shutdown: watch::Receiver<bool>,
        idle_after: Duration,
    ) -> Arc<TaskLookup> {
        Arc::new(TaskLookup {
            store,
            shutdown,
            idle_after,
            feed: Mutex::new(Feed {
                running: false,
                last_used: tokio::time::Instant::now(),
            }),
            index: RwLock::new(None),
            revision: watch::channel(None).0,
        })
    }

    /// Whether the index's watch runs now.
    pub fn is_watching(&self) -> bool {
        self.feed.lock().unwrap_or_else(|e| e.into_inner()).running
    }

    /// Marks a lookup and starts the watch unless it runs.
    fn start(self: &Arc<Self>) {
        let mut state = self.feed.lock().unwrap_or_else(|e| e.into_inner());
        state.last_used = tokio::time::Instant::now();
        if state.running {
            return;
        }
        state.running = true;
        let prefix = self.store.keys().prefix::<TaskSpec>();
        let watcher = Watcher::new(self.store.clone(), prefix).with_progress_every(PROGRESS_EVERY);
        let feeding = Arc::downgrade(self);
        let watching = Arc::downgrade(self);
        let check_every = (self.idle_after / 4).max(Duration::from_millis(10));
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let stopped = async {
                // A dropped sender means "never shut down by signal" (tests' routers).
                if shutdown.wait_for(|down| *down).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            // Checked beside the feed, not inside it: the watcher is not cancel-safe (a
            // dropped `next` relists), so it is dropped only when the feed stops for good.
            let idle = async {
                loop {
                    tokio::time::sleep(check_every).await;
                    match watching.upgrade() {
                        Some(lookup) if !lookup.stop_if_idle() => {}
                        _ => return,
                    }
                }
            };
            tokio::select! {
                _ = feed(watcher, feeding) => {}
                _ = stopped => {}
                _ = idle => {}
            }
        });
    }

    /// Stops feeding if no lookup came for `idle_after`: the watch's task then returns.
    /// Decided under the lock [`Self::start`] takes, so a lookup either came first (and the
    /// watch goes on) or finds it stopped (and starts a new one).
    fn stop_if_idle(&self) -> bool {
        let mut feed = self.feed.lock().unwrap_or_else(|e| e.into_inner());
        if feed.last_used.elapsed() < self.idle_after {
            return false;
        }
        feed.running = false;
        self.with_index(|i| *i = None);
        true
    }

    /// Runs `f` on the index once it is listed (waiting up to [`INDEX_WAIT`] for the first
    /// list).
    pub async fn read<T>(
        self: &Arc<Self>,
        f: impl FnOnce(&TaskIndex) -> T,
    ) -> Result<T, NotLoaded> {
        if !self.caught_up(0).await {
            return Err(NotLoaded);
        }
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.as_ref().map(f).ok_or(NotLoaded)
    }

    /// Waits (up to [`INDEX_WAIT`]) until the index holds every change up to `revision`;
    /// returns whether it does.
    pub async fn caught_up(self: &Arc<Self>, revision: i64) -> bool {
        self.start();
        let mut rx = self.revision.subscribe();
        let reached = async move {
            rx.wait_for(|r| r.is_some_and(|r| r >= revision))
                .await
                .is_ok()
        };
        tokio::time::timeout(INDEX_WAIT, reached)
            .await
            .unwrap_or(false)
    }

    fn with_index(&self, f: impl FnOnce(&mut Option<TaskIndex>)) {
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        f(&mut index);
        let revision = index.as_ref().map(TaskIndex::revision);
        drop(index);
        self.revision.send_replace(revision);
    }
}

async fn feed(mut watcher: Watcher, lookup: std::sync::Weak<TaskLookup>) {
    loop {
        let event = watcher.next().await;
        let Some(lookup) = lookup.upgrade() else {
            return;
        };
        match event {
            WatcherEvent::Restarted { items, revision } => {
                // Consumed as decoded: the raw values go while the index fills.
                let index =
                    TaskIndex::new(items.into_iter().filter_map(|kv| decoded(&kv)), revision);
                tracing::debug!(revision, tasks = index.len(), "task index listed");
                lookup.with_index(|i| *i = Some(index));
            }
            WatcherEvent::Events { events, revision } => lookup.with_index(|i| {
                if let Some(i) = i {
                    i.apply(events);
                    i.revision = i.revision.max(revision);
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    fn task(
        id: &str,
        service: &str,
        slot: Option<u64>,
        node: &str,
        desired: TaskState,
        state: TaskState,
        revision: i64,
    ) -> TaskRef {
        let mut t = Task::new(
            id,
            TaskSpec {
                service: service.into(),
                slot,
                node: Some(node.into()),
                desired_state: desired,
                ..Default::default()
            },
        );
        t.status.state = state;
        t.metadata.resource_version = Some(revision.to_string());
        TaskRef::new(format!("/r/tasks/{node}/{id}"), &t)
    }

    fn index() -> TaskIndex {
        TaskIndex::new(
            [
                task(
                    "aaaa1111",
                    "worker",
                    Some(1),
                    "node-1",
                    Shutdown,
                    Failed,
                    10,
                ),
                task(
                    "bbbb2222",
                    "worker",
                    Some(1),
                    "node-2",
                    Running,
                    Running,
                    50,
                ),
                // worker.2 is being replaced: the old one still runs, the new one is pending.
                task(
                    "cccc3333",
                    "worker",
                    Some(2),
                    "node-1",
                    Shutdown,
                    Running,
                    100,
                ),
                task(
                    "dddd4444",
                    "worker",
                    Some(2),
                    "node-3",
                    Running,
                    Pending,
                    10,
                ),
                task("eeee5555", "mon", None, "node-2", Running, Running, 10),
            ],
            7,
        )
    }

    fn id(i: &TaskIndex, name: &str) -> Option<String> {
        i.resolve(name).map(|t| t.id.clone())
    }

    #[test]
    fn names_should_resolve_to_the_running_task_of_a_slot() {
        let i = index();
        assert_eq!(id(&i, "worker.1").as_deref(), Some("bbbb2222"));
        assert_eq!(id(&i, "worker.2").as_deref(), Some("dddd4444"));
        assert_eq!(id(&i, "mon.node-2").as_deref(), Some("eeee5555"));
        assert_eq!(id(&i, "aaaa1111").as_deref(), Some("aaaa1111"));
        assert_eq!(id(&i, "cccc").as_deref(), Some("cccc3333"));
        assert_eq!(id(&i, "abc"), None, "too short a prefix");
        assert_eq!(id(&i, "worker.3"), None);
        assert_eq!(id(&i, "mon.node-1"), None);
        assert_eq!(id(&TaskIndex::default(), "worker.1"), None);
        assert_eq!(i.revision(), 7);
    }

    #[test]
    fn an_ambiguous_prefix_should_resolve_to_nothing() {
        let i = TaskIndex::new(
            [
                task("abcd1111", "a", Some(1), "n", Running, Running, 1),
                task("abcd2222", "a", Some(2), "n", Running, Running, 1),
            ],
            1,
        );
        assert_eq!(id(&i, "abcd"), None);
        assert_eq!(id(&i, "abcd2").as_deref(), Some("abcd2222"));
    }

    #[test]
    fn the_newest_should_win_among_tasks_not_wanted_running() {
        let i = TaskIndex::new(
            [
                task("old", "job", Some(1), "node-1", Shutdown, Complete, 100),
                task("new", "job", Some(1), "node-1", Shutdown, Complete, 200),
            ],
            1,
        );
        assert_eq!(id(&i, "job.1").as_deref(), Some("new"));
    }

    #[test]
    fn updates_and_deletes_should_keep_every_view_in_step() {
        let mut i = index();
        // worker.2's new task starts: it now wins its slot.
        i.put(task(
            "dddd4444",
            "worker",
            Some(2),
            "node-3",
            Running,
            Running,
            60,
        ));
        assert_eq!(id(&i, "worker.2").as_deref(), Some("dddd4444"));
        assert_eq!(i.len(), 5);
        i.delete("/r/tasks/node-3/dddd4444");
        assert_eq!(id(&i, "worker.2").as_deref(), Some("cccc3333"));
        let mut workers: Vec<String> = i.of_service("worker").map(|t| t.id.clone()).collect();
        workers.sort();
        assert_eq!(workers, ["aaaa1111", "bbbb2222", "cccc3333"]);
        i.delete("/r/tasks/node-2/eeee5555");
        assert_eq!(i.of_service("mon").count(), 0);
        assert_eq!(id(&i, "mon.node-2"), None);
    }

    #[test]
    fn a_task_that_moved_key_should_survive_the_delete_of_its_old_key() {
        let mut i = TaskIndex::default();
        let mut t = task("t1", "api", Some(1), "node-1", Running, Pending, 1);
        t.key = "/r/tasks/_unassigned/t1".into();
        t.node = None;
        i.put(t);
        // Assigned: the new key's put may arrive before the old key's delete.
        i.put(task("t1", "api", Some(1), "node-1", Running, Assigned, 2));
        i.delete("/r/tasks/_unassigned/t1");
        let found = i.resolve("api.1").expect("still indexed");
        assert_eq!(found.node.as_deref(), Some("node-1"));
        assert_eq!(found.key, "/r/tasks/node-1/t1");
        i.delete("/r/tasks/node-1/t1");
        assert!(i.is_empty());
    }
}
