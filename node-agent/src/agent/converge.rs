//! The converge loop: level-triggered, on every change of the desired tasks, every
//! completed operation, every runtime notification and a periodic resync, it observes what
//! the runtime has, plans against the cached desired tasks ([`super::plan::plan`]) and
//! applies the operations. A round plans only the tasks that may need something new
//! (changed by the watch, or whose operation finished); relists, runtime notifications,
//! failures and the resync plan every task ([`super::rounds`]).
//!
//! Invariants:
//! - Nothing is planned before the first complete list of desired tasks (an empty cache
//!   would otherwise remove every running task).
//! - At most one operation per task id is in flight; a task with one is left out of plans
//!   until it completes, so a slow start (an image pull) holds up neither other tasks nor
//!   the loop.
//! - Errors are not remembered: the next plan sees the world as it is, after a backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::apply::{ApplyError, Effects, WAITING};
use super::desired::DesiredTasks;
use super::plan::{Op, StatusUpdate};
use super::rounds::{plan_round, Pending, Scope};
use shoal_api_types::TaskState;
use shoal_store::{Backoff, ChangeLog};

/// How the converge loop is doing, for tests, metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConvergeStats {
    /// Rounds planned (each lists the runtime once).
    pub rounds: u64,
    /// Operations started.
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Whether the last round planned nothing and nothing is in flight: converged.
    pub idle: bool,
}

pub(crate) struct Converger {
    pub effects: Effects,
    pub desired: watch::Receiver<DesiredTasks>,
    /// The names of the tasks the desired-task watch changed (its reflector's log).
    pub changes: ChangeLog,
    pub resync: Duration,
    pub concurrency: usize,
    /// How long a running task wanted stopped keeps running first (see
    /// `AgentConfig::drain_delay`).
    pub drain_delay: Duration,
    pub stats: watch::Sender<ConvergeStats>,
}

type OpResult = (String, Result<(), ApplyError>);

/// The loop's books: operations in flight (by tokio task and by task id) and what the next
/// round plans.
#[derive(Default)]
struct Book {
    in_flight: HashMap<tokio::task::Id, String>,
    /// The task ids of `in_flight`: at most one operation per task.
    busy: foldhash::HashSet<String>,
    pending: Pending,
}

impl Book {
    /// Books the end of an operation: its task is planned again by the next round.
    fn done(&mut self, id: tokio::task::Id) -> Option<String> {
        let task = self.in_flight.remove(&id)?;
        self.busy.remove(&task);
        self.pending.task(&task);
        Some(task)
    }
}

/// The shortest time between two rounds: a burst of changes (a thousand status writes
/// landing) costs a few rounds, not one each; a single change waits for it at most once.
const MIN_ROUND_GAP: std::time::Duration = std::time::Duration::from_millis(10);

impl Converger {
    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let mut running: JoinSet<OpResult> = JoinSet::new();
        let mut book = Book::default();
        let mut backoff = Backoff::new(
            Duration::from_millis(200),
            self.resync.max(Duration::from_secs(1)),
        );
        let mut retry_at: Option<Instant> = None;
        let mut last_round = Instant::now() - MIN_ROUND_GAP;
        let first_resync = Instant::now() + shoal_store::jittered(self.resync);
        let mut resync = tokio::time::interval_at(first_resync, self.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Every wake-up but shutdown plans a round.
        loop {
            // At most one round per MIN_ROUND_GAP: wake-ups in between (watch events,
            // completions) are planned together by the next one.
            tokio::time::sleep_until(last_round + MIN_ROUND_GAP).await;
            last_round = Instant::now();
            if let Err(e) = self.round(&mut book, &permits, &mut running).await {
                tracing::warn!(error = %e, "cannot list the runtime's tasks");
                self.report_waiting(&e).await;
                retry_at = Some(Instant::now() + backoff.next().unwrap_or_default());
            }
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = super::shutdown::stopped(&mut shutdown) => break,
                Some(done) = running.join_next_with_id() => {
                    let mut failed = self.finished(done, &mut book);
                    while let Some(done) = running.try_join_next_with_id() {
                        failed |= self.finished(done, &mut book);
                    }
                    if failed {
                        // Errors are not remembered: the retry plans everything.
                        book.pending.everything();
                        retry_at = Some(Instant::now() + backoff.next().unwrap_or_default());
                    } else if retry_at.is_none() {
                        backoff.reset();
                    }
                }
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                // Changes the agent did not cause, and the resync: everything is planned.
                _ = self.effects.runtime.changed() => book.pending.everything(),
                _ = resync.tick() => book.pending.everything(),
                _ = retry => {
                    retry_at = None;
                    book.pending.everything();
                }
            }
        }
        // Dropping `running` aborts operations in flight; containers are left as they are.
    }

    /// While the runtime cannot be listed, every task waiting to start says why in its
    /// status (`service ps` shows it): written once per distinct error, cleared when the
    /// task starts.
    async fn report_waiting(&self, e: &super::task_runtime::TaskError) {
        let err = e.to_string();
        let waiting: Vec<String> = match &*self.desired.borrow() {
            Some(tasks) => tasks
                .values()
                .filter(|t| {
                    t.spec.desired_state == TaskState::Running
                        && t.status.state >= TaskState::Assigned
                        && t.status.state <= TaskState::Starting
                        && t.status.err != err
                })
                .map(|t| t.name().to_string())
                .collect(),
            None => vec![],
        };
        let update = StatusUpdate::new(TaskState::Starting, WAITING).with_err(err);
        for id in waiting {
            if let Err(e) = self.effects.report(&id, &update).await {
                tracing::warn!(task = %id, error = %e, "cannot report a task waiting for the runtime");
            }
        }
    }

    /// One plan over what may have changed ([`rounds`](super::rounds)): returns an error
    /// only if the runtime could not be listed.
    async fn round(
        &mut self,
        book: &mut Book,
        permits: &Arc<Semaphore>,
        running: &mut JoinSet<OpResult>,
    ) -> Result<(), super::task_runtime::TaskError> {
        {
            // The log is taken while the cache is borrowed (and marked seen): a change
            // after this wakes the next round and is in its log.
            let desired = self.desired.borrow_and_update();
            if desired.is_none() {
                return Ok(());
            }
            book.pending.changed(self.changes.take());
        }
        let scope = book.pending.take();
        let observed = match &scope {
            Scope::All => self.effects.runtime.list().await,
            Scope::Only(ids) if ids.is_empty() => Ok(vec![]),
            Scope::Only(ids) => {
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                self.effects.runtime.observe(&ids).await
            }
        };
        let observed = observed.inspect_err(|_| book.pending.everything())?;
        // Planned over the cache in place: a node with many tasks copies only those it
        // acts on. (A change since the log was taken is planned now if in scope, and again
        // by the next round, which it wakes.)
        let ops = match &*self.desired.borrow() {
            Some(tasks) => plan_round(tasks, &scope, &book.busy, &observed),
            None => return Ok(()),
        };
        let started = ops.len() as u64;
        for op in ops {
            let id = op.task_id().to_string();
            let (effects, permits, task_id) = (self.effects.clone(), permits.clone(), id.clone());
            tracing::debug!(task = %id, ?op, "applying");
            let drain = match op {
                Op::Stop { drain: true, .. } => self.drain_delay,
                _ => Duration::ZERO,
            };
            let handle = running.spawn(async move {
                // Draining holds no permit: it is only waiting.
                tokio::time::sleep(drain).await;
                let _permit = permits.acquire_owned().await;
                (task_id, effects.apply(op).await)
            });
            book.busy.insert(id.clone());
            book.in_flight.insert(handle.id(), id);
        }
        self.stats.send_modify(|s| {
            s.rounds += 1;
            s.ops += started;
            s.idle = book.in_flight.is_empty();
        });
        Ok(())
    }

    /// Books a finished operation; returns whether it failed.
    fn finished(
        &self,
        done: Result<(tokio::task::Id, OpResult), tokio::task::JoinError>,
        book: &mut Book,
    ) -> bool {
        let failed = match done {
            Ok((id, (task, result))) => {
                book.done(id);
                match result {
                    Ok(()) => false,
                    Err(e) => {
                        tracing::warn!(task = %task, error = %e, temporary = e.is_temporary(), "operation failed");
                        true
                    }
                }
            }
            Err(e) => {
                let task = book.done(e.id()).unwrap_or_default();
                tracing::error!(task = %task, error = %e, "operation panicked");
                true
            }
        };
        if failed {
            self.stats.send_modify(|s| s.errors += 1);
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use async_trait::async_trait;
    use shoal_api_types::{Task, TaskSpec};
    use shoal_store::StoreError;

    use super::*;
    use crate::agent::apply::{advance, StatusSink};
    use crate::agent::task_runtime::{TaskError, TaskRuntime};
    use crate::hollow::runtime::HollowRuntime;

    /// Stands in for etcd: status writes (forward only) land in the desired tasks, as the
    /// agent's watch would bring them back (and log their names, as its reflector would).
    struct MemoryStore(watch::Sender<DesiredTasks>, ChangeLog);

    #[async_trait]
    impl StatusSink for MemoryStore {
        async fn report(
            &self,
            id: &str,
            update: &StatusUpdate,
        ) -> Result<Option<Task>, StoreError> {
            let mut stored = None;
            self.0.send_if_modified(|tasks| {
                let Some(t) = tasks.as_mut().and_then(|tasks| tasks.get_mut(id)) else {
                    return false;
                };
                let changed = advance(&mut t.status, update, chrono::Utc::now());
                stored = Some(t.clone());
                if changed {
                    self.1.record(id);
                }
                changed
            });
            Ok(stored)
        }

        async fn confirm(&self, id: &str) -> Result<Option<Task>, StoreError> {
            Ok(self.0.borrow().as_ref().and_then(|t| t.get(id)).cloned())
        }
    }

    fn task(id: &str) -> Task {
        let mut t = Task::new(
            id,
            TaskSpec {
                service: "api".into(),
                desired_state: TaskState::Running,
                ..Default::default()
            },
        );
        t.status.state = TaskState::Assigned;
        t
    }

    struct Running {
        desired: watch::Sender<DesiredTasks>,
        changes: ChangeLog,
        stats: watch::Receiver<ConvergeStats>,
        shutdown: watch::Sender<bool>,
        handle: tokio::task::JoinHandle<()>,
    }

    impl Running {
        /// Lists the desired tasks anew, as the watch does on a relist.
        fn relist(&self, tasks: BTreeMap<String, Task>) {
            self.desired.send_modify(|d| {
                *d = Some(tasks);
                self.changes.record_all();
            });
        }

        /// Changes (or adds, or with `None` deletes) one desired task, as a watch event.
        fn change(&self, id: &str, f: impl FnOnce(Option<Task>) -> Option<Task>) {
            self.desired.send_modify(|d| {
                let d = d.as_mut().unwrap();
                if let Some(t) = f(d.remove(id)) {
                    d.insert(id.to_string(), t);
                }
                self.changes.record(id);
            });
        }

        fn state(&self, id: &str) -> Option<TaskState> {
            self.desired
                .borrow()
                .as_ref()
                .and_then(|t| t.get(id))
                .map(|t| t.status.state)
        }
    }

    fn start(runtime: Arc<HollowRuntime>, resync: Duration) -> Running {
        start_draining(runtime, resync, Duration::ZERO)
    }

    fn start_draining(runtime: Arc<HollowRuntime>, resync: Duration, drain: Duration) -> Running {
        let (desired, desired_rx) = watch::channel(None);
        let (stats_tx, stats) = watch::channel(ConvergeStats::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let changes = ChangeLog::new();
        let status = Arc::new(MemoryStore(desired.clone(), changes.clone()));
        let converger = Converger {
            effects: Effects { runtime, status },
            desired: desired_rx,
            changes: changes.clone(),
            resync,
            concurrency: 4,
            drain_delay: drain,
            stats: stats_tx,
        };
        let handle = tokio::spawn(converger.run(shutdown_rx));
        Running {
            desired,
            changes,
            stats,
            shutdown,
            handle,
        }
    }

    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn converge_should_touch_nothing_before_the_first_list() {
        let runtime = Arc::new(HollowRuntime::new());
        runtime.start_task(&task("old")).await.unwrap();
        let running = start(runtime.clone(), Duration::from_millis(10));
        // Many resyncs pass without a list: nothing is planned, "old" stays.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(running.stats.borrow().rounds, 0);
        assert_eq!(runtime.running(), vec!["old".to_string()]);

        running.relist(BTreeMap::new());
        until("old to be removed", || runtime.snapshot().is_empty()).await;
        running.shutdown.send_replace(true);
        running.handle.await.unwrap();
    }

    #[tokio::test]
    async fn converge_should_run_desired_tasks_and_react_to_exits_without_waiting_for_a_resync() {
        let runtime = Arc::new(HollowRuntime::new());
        // No resync during the test: only changes and runtime notifications drive it.
        let running = start(runtime.clone(), Duration::from_secs(3600));
        let tasks: BTreeMap<_, _> = ["a", "b"]
            .into_iter()
            .map(|id| (id.to_string(), task(id)))
            .collect();
        running.relist(tasks);
        until("both running", || {
            running.state("a") == Some(TaskState::Running)
                && running.state("b") == Some(TaskState::Running)
        })
        .await;
        until("idle", || running.stats.borrow().idle).await;

        runtime.exit("a", 2);
        until("a failed", || running.state("a") == Some(TaskState::Failed)).await;
        let exit_code = running.desired.borrow().as_ref().unwrap()["a"]
            .status
            .exit_code;
        assert_eq!(exit_code, Some(2));
        assert_eq!(running.state("b"), Some(TaskState::Running));
        running.shutdown.send_replace(true);
        running.handle.await.unwrap();
        assert_eq!(
            runtime.running(),
            vec!["b".to_string()],
            "shutdown leaves tasks running"
        );
    }

    #[tokio::test]
    async fn converge_should_act_on_changed_and_deleted_tasks_without_a_resync() {
        let runtime = Arc::new(HollowRuntime::new());
        // No resync: only the changes the watch logs drive the rounds after the first.
        let running = start(runtime.clone(), Duration::from_secs(3600));
        let ids = ["a", "b", "c", "d"];
        running.relist(ids.iter().map(|id| (id.to_string(), task(id))).collect());
        until("all running", || {
            ids.iter()
                .all(|id| running.state(id) == Some(TaskState::Running))
        })
        .await;
        until("idle", || running.stats.borrow().idle).await;

        running.change("b", |_| None);
        running.change("c", |c| {
            let mut c = c.unwrap();
            c.spec.desired_state = TaskState::Shutdown;
            Some(c)
        });
        running.change("e", |_| Some(task("e")));
        until("b removed, c shut down, e running", || {
            !runtime.snapshot().iter().any(|o| o.id == "b")
                && running.state("c") == Some(TaskState::Shutdown)
                && running.state("e") == Some(TaskState::Running)
        })
        .await;
        until("idle", || running.stats.borrow().idle).await;
        assert_eq!(runtime.running(), vec!["a", "d", "e"]);
        running.shutdown.send_replace(true);
        running.handle.await.unwrap();
    }

    /// A runtime that can be "down": listing and starting fail as when containerd is
    /// stopped.
    struct Flaky {
        inner: HollowRuntime,
        down: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl TaskRuntime for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        async fn start_task(
            &self,
            task: &Task,
        ) -> Result<crate::agent::task_runtime::Started, TaskError> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(TaskError::Unavailable("connection refused".into()));
            }
            self.inner.start_task(task).await
        }
        async fn stop_task(&self, id: &str, grace: Duration) -> Result<(), TaskError> {
            self.inner.stop_task(id, grace).await
        }
        async fn remove_task(&self, id: &str) -> Result<(), TaskError> {
            self.inner.remove_task(id).await
        }
        async fn list(&self) -> Result<Vec<crate::agent::task_runtime::ObservedTask>, TaskError> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(TaskError::Unavailable("connection refused".into()));
            }
            self.inner.list().await
        }
    }

    #[tokio::test]
    async fn a_task_waiting_for_a_runtime_that_is_down_should_say_so_and_start_when_it_is_back() {
        let flaky = Arc::new(Flaky {
            inner: HollowRuntime::new(),
            down: true.into(),
        });
        let (desired, desired_rx) = watch::channel(None);
        let (stats_tx, _stats) = watch::channel(ConvergeStats::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let changes = ChangeLog::new();
        let converger = Converger {
            effects: Effects {
                runtime: flaky.clone(),
                status: Arc::new(MemoryStore(desired.clone(), changes.clone())),
            },
            desired: desired_rx,
            changes,
            resync: Duration::from_secs(3600),
            concurrency: 4,
            drain_delay: Duration::ZERO,
            stats: stats_tx,
        };
        let handle = tokio::spawn(converger.run(shutdown_rx));
        desired.send_replace(Some(BTreeMap::from([("a".to_string(), task("a"))])));
        let status =
            |d: &watch::Sender<DesiredTasks>| d.borrow().as_ref().unwrap()["a"].status.clone();
        until("a says the runtime is unavailable", || {
            status(&desired).err == "container runtime unavailable: connection refused"
        })
        .await;
        assert_eq!(status(&desired).state, TaskState::Starting);
        assert_eq!(status(&desired).message, WAITING);
        flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
        until("a running, its error cleared", || {
            let s = status(&desired);
            s.state == TaskState::Running && s.err.is_empty()
        })
        .await;
        shutdown.send_replace(true);
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn a_running_task_wanted_stopped_should_keep_running_for_the_drain_delay() {
        let runtime = Arc::new(HollowRuntime::new());
        let running = start_draining(
            runtime.clone(),
            Duration::from_secs(3600),
            Duration::from_millis(400),
        );
        running.relist(BTreeMap::from([("a".to_string(), task("a"))]));
        until("a running", || {
            running.state("a") == Some(TaskState::Running)
        })
        .await;
        let asked = Instant::now();
        running.change("a", |a| {
            let mut a = a.unwrap();
            a.spec.desired_state = TaskState::Shutdown;
            Some(a)
        });
        until("a stopped", || {
            running.state("a") == Some(TaskState::Shutdown)
        })
        .await;
        assert!(
            asked.elapsed() >= Duration::from_millis(400),
            "stopped after {:?}, before the drain delay",
            asked.elapsed()
        );
        running.shutdown.send_replace(true);
        running.handle.await.unwrap();
    }
}
