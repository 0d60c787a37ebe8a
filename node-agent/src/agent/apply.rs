//! Applying planned operations: runtime operations go through [`TaskRuntime`], status
//! writes through [`StatusSink`] (etcd in the agent, a recording fake in tests).
//!
//! Invariants:
//! - A task's status only moves forward, and a terminal status is never rewritten
//!   ([`advance`]); the same-state writes allowed are a health change of a running task
//!   and a changed `err` of a task waiting in `starting` (a container runtime that is down).
//! - A task is started only after etcd confirmed that the stored task still wants to run
//!   ([`StatusSink::confirm`], a read); a task the controller orphaned or deleted meanwhile
//!   is not started.
//! - A start reports only the latest state: `running` (or why it failed) once the runtime
//!   answered, and `starting` first only if the runtime takes longer than
//!   [`STARTING_AFTER`] (a hollow task, or a container whose image is there, goes from
//!   `assigned` to `running` in one write: one watch event less per task).
//! - Only `status` is written, never `spec` or `metadata`, and tasks are never deleted
//!   (in etcd: [`super::status_batch`], compared on the revision, redone on conflict).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use shoal_api_types::{Task, TaskState, TaskStatus};
use shoal_store::StoreError;

use super::plan::{Op, StatusUpdate};
use super::stages::{Lap, Stages, STARTED_MESSAGE};
use super::task_runtime::{Started, TaskError, TaskRuntime};

/// Where task status goes.
#[async_trait]
pub trait StatusSink: Send + Sync + 'static {
    /// Writes `update` to task `id` if [`advance`] allows it. Returns the task as stored
    /// afterwards (written or not), or `None` if it does not exist.
    async fn report(&self, id: &str, update: &StatusUpdate) -> Result<Option<Task>, StoreError>;

    /// The task as stored now, checked against the store without writing (a task the
    /// agent has a copy of is confirmed unchanged, else read), or `None` if it does not
    /// exist.
    async fn confirm(&self, id: &str) -> Result<Option<Task>, StoreError>;
}

/// How long a start may take before `starting` is reported while it goes on; a start
/// that ends sooner reports only its outcome.
pub const STARTING_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// Applies `update` to `status` if it moves it forward: a later state, (for a running
/// task) a change of health, or (for a task still starting) a new reason it waits — the
/// container runtime down, shown by `service ps` until the task starts. Terminal states
/// are final. Returns whether anything changed.
pub fn advance(status: &mut TaskStatus, update: &StatusUpdate, now: chrono::DateTime<Utc>) -> bool {
    if status.state.is_terminal() {
        return false;
    }
    let forward = update.state > status.state;
    let health = update.state == TaskState::Running
        && status.state == TaskState::Running
        && update.healthy != status.healthy;
    let waiting = update.state == TaskState::Starting
        && status.state == TaskState::Starting
        && update.err != status.err;
    if !forward && !health && !waiting {
        return false;
    }
    if waiting {
        status.timestamp = Some(now);
        status.message = update.message.clone();
        status.err = update.err.clone();
    }
    if forward {
        if update.state == TaskState::Running {
            status.started_at = Some(now);
        }
        status.state = update.state;
        status.timestamp = Some(now);
        status.message = update.message.clone();
        status.err = update.err.clone();
        if update.exit_code.is_some() {
            status.exit_code = update.exit_code;
        }
        status.oom_killed |= update.oom_killed;
    }
    if !update.container_id.is_empty() {
        status.container_id = update.container_id.clone();
    }
    status.healthy = update.healthy;
    true
}

/// The controller's and the watch's share of a start, from the task as planned: `placed`
/// (created → assigned, the controller's orchestrator and scheduler) and `seen` (assigned →
/// this operation running: the agent's watch, its converge round and a free permit). A task
/// planned again after a failed attempt is no longer `assigned`: only `seen` is given, from
/// its last status change.
pub fn placement_stages(task: &Task, now: chrono::DateTime<Utc>) -> Stages {
    let mut stages = Stages::new();
    let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
    if let (Some(created), Some(changed)) =
        (task.metadata.creation_timestamp, task.status.timestamp)
    {
        if task.status.state == TaskState::Assigned {
            stages.push_ms("placed", ms(changed - created));
        }
    }
    if let Some(changed) = task.status.timestamp {
        stages.push_ms("seen", ms(now - changed));
    }
    stages
}

/// The status message of a task that waits for the container runtime to come back (its
/// `err` says what failed).
pub const WAITING: &str = "waiting for the container runtime";

/// Why applying an operation failed. Reported task errors (rejected, failed) are not
/// errors here: they end up in the task's status.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The runtime could not do what was asked.
    #[error("{op} task {task}: {source}")]
    Runtime {
        /// `start`, `stop` or `remove`.
        op: &'static str,
        /// The task id.
        task: String,
        /// The runtime's error.
        #[source]
        source: TaskError,
    },
    /// The status could not be written.
    #[error("report status of task {task}: {source}")]
    Status {
        /// The task id.
        task: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

impl ApplyError {
    /// Whether the converge loop should try again soon (with backoff).
    pub fn is_temporary(&self) -> bool {
        match self {
            ApplyError::Runtime { source, .. } => source.is_temporary(),
            ApplyError::Status { source, .. } => source.is_temporary(),
        }
    }
}

/// Side effects the converge loop applies operations against.
#[derive(Clone)]
pub struct Effects {
    /// The container runtime.
    pub runtime: Arc<dyn TaskRuntime>,
    /// Where status goes.
    pub status: Arc<dyn StatusSink>,
}

impl Effects {
    /// Applies one operation.
    pub async fn apply(&self, op: Op) -> Result<(), ApplyError> {
        let id = op.task_id().to_string();
        let runtime_err = |op: &'static str, source| ApplyError::Runtime {
            op,
            task: id.clone(),
            source,
        };
        match op {
            Op::Report { update, .. } => {
                self.report(&id, &update).await?;
            }
            Op::Stop { grace, .. } => self
                .runtime
                .stop_task(&id, grace)
                .await
                .map_err(|e| runtime_err("stop", e))?,
            Op::Remove { .. } => self
                .runtime
                .remove_task(&id)
                .await
                .map_err(|e| runtime_err("remove", e))?,
            Op::Start(task) => {
                let mut stages = placement_stages(&task, Utc::now());
                let mut lap = Lap::start();
                let Some(stored) =
                    self.status
                        .confirm(&id)
                        .await
                        .map_err(|source| ApplyError::Status {
                            task: id.clone(),
                            source,
                        })?
                else {
                    return Ok(());
                };
                lap.lap("confirm");
                if stored.spec.desired_state != TaskState::Running
                    || stored.status.state > TaskState::Starting
                {
                    tracing::debug!(task = %id, state = %stored.status.state, "not starting: the task changed meanwhile");
                    return Ok(());
                }
                let mut runtime_stages = None;
                let update = match self.start(&id, &task).await {
                    Ok(started) => {
                        runtime_stages = Some(started.stages);
                        StatusUpdate::new(TaskState::Running, "started")
                            .with_container(started.container_id)
                            .with_healthy(task.spec.healthcheck.is_none())
                    }
                    Err(e @ TaskError::Rejected { .. }) => {
                        StatusUpdate::new(TaskState::Rejected, "rejected").with_err(e.reason())
                    }
                    Err(e @ TaskError::Failed { .. }) => {
                        StatusUpdate::new(TaskState::Failed, "failed").with_err(e.reason())
                    }
                    Err(e @ TaskError::Unavailable(_)) => {
                        // The task stays starting and is retried; its status says why.
                        let waiting =
                            StatusUpdate::new(TaskState::Starting, WAITING).with_err(e.to_string());
                        self.report(&id, &waiting).await?;
                        return Err(runtime_err("start", e));
                    }
                };
                let mut lap = match runtime_stages {
                    Some(runtime) => {
                        stages.extend(lap.stages());
                        stages.extend(&runtime);
                        Lap::start()
                    }
                    None => lap,
                };
                self.report(&id, &update).await?;
                if update.state == TaskState::Running {
                    lap.lap("running_write");
                    stages.extend(lap.stages());
                    tracing::info!(task = %id, stages = %stages.render(), "{STARTED_MESSAGE}");
                }
            }
        }
        Ok(())
    }

    /// Starts `task`, reporting `starting` meanwhile only if the start takes longer than
    /// [`STARTING_AFTER`]. That report is informational (the start was confirmed before):
    /// if it fails, the outcome's report that follows says what matters.
    async fn start(&self, id: &str, task: &Task) -> Result<Started, TaskError> {
        let start = self.runtime.start_task(task);
        tokio::pin!(start);
        tokio::select! {
            started = &mut start => started,
            () = tokio::time::sleep(STARTING_AFTER) => {
                let starting = StatusUpdate::new(TaskState::Starting, "starting");
                let (started, written) = tokio::join!(start, self.report(id, &starting));
                if let Err(e) = written {
                    tracing::debug!(task = %id, error = %e, "could not report starting");
                }
                started
            }
        }
    }

    /// Writes one status update (forward only, see [`advance`]); the task as stored.
    pub(crate) async fn report(
        &self,
        id: &str,
        update: &StatusUpdate,
    ) -> Result<Option<Task>, ApplyError> {
        self.status
            .report(id, update)
            .await
            .map_err(|source| ApplyError::Status {
                task: id.to_string(),
                source,
            })
    }

    /// Applies operations one after the other and returns the errors.
    pub async fn apply_all(&self, ops: Vec<Op>) -> Vec<ApplyError> {
        let mut errors = Vec::new();
        for op in ops {
            if let Err(e) = self.apply(op).await {
                errors.push(e);
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::agent::task_runtime::{ObservedTask, Started};
    use shoal_api_types::TaskSpec;

    /// Records runtime calls; start fails as configured per task id.
    #[derive(Default)]
    struct RecordingRuntime {
        calls: Mutex<Vec<String>>,
        start_errors: Mutex<BTreeMap<String, TaskError>>,
        /// How long a start takes (none: at once).
        start_takes: Mutex<Option<Duration>>,
    }

    #[async_trait]
    impl TaskRuntime for RecordingRuntime {
        fn name(&self) -> &'static str {
            "recording"
        }
        async fn start_task(&self, task: &Task) -> Result<Started, TaskError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("start {}", task.name()));
            let takes = *self.start_takes.lock().unwrap();
            if let Some(takes) = takes {
                tokio::time::sleep(takes).await;
            }
            match self.start_errors.lock().unwrap().get(task.name()) {
                Some(e) => Err(e.clone()),
                None => Ok(Started {
                    container_id: format!("c-{}", task.name()),
                    stages: Default::default(),
                }),
            }
        }
        async fn stop_task(&self, id: &str, grace: Duration) -> Result<(), TaskError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("stop {id} {}s", grace.as_secs()));
            Ok(())
        }
        async fn remove_task(&self, id: &str) -> Result<(), TaskError> {
            self.calls.lock().unwrap().push(format!("remove {id}"));
            Ok(())
        }
        async fn list(&self) -> Result<Vec<ObservedTask>, TaskError> {
            Ok(vec![])
        }
    }

    /// Task status in memory, with the same forward-only rule as etcd.
    #[derive(Default)]
    struct RecordingStatus {
        tasks: Mutex<BTreeMap<String, Task>>,
        writes: Mutex<Vec<(String, TaskState)>>,
    }

    #[async_trait]
    impl StatusSink for RecordingStatus {
        async fn report(
            &self,
            id: &str,
            update: &StatusUpdate,
        ) -> Result<Option<Task>, StoreError> {
            let mut tasks = self.tasks.lock().unwrap();
            let Some(task) = tasks.get_mut(id) else {
                return Ok(None);
            };
            if advance(&mut task.status, update, Utc::now()) {
                self.writes
                    .lock()
                    .unwrap()
                    .push((id.to_string(), task.status.state));
            }
            Ok(Some(task.clone()))
        }

        async fn confirm(&self, id: &str) -> Result<Option<Task>, StoreError> {
            Ok(self.tasks.lock().unwrap().get(id).cloned())
        }
    }

    fn task(id: &str, desired: TaskState, current: TaskState) -> Task {
        let mut t = Task::new(
            id,
            TaskSpec {
                service: "api".into(),
                desired_state: desired,
                ..Default::default()
            },
        );
        t.status.state = current;
        t
    }

    fn effects(tasks: &[Task]) -> (Effects, Arc<RecordingRuntime>, Arc<RecordingStatus>) {
        let runtime = Arc::new(RecordingRuntime::default());
        let status = Arc::new(RecordingStatus::default());
        status
            .tasks
            .lock()
            .unwrap()
            .extend(tasks.iter().map(|t| (t.name().to_string(), t.clone())));
        (
            Effects {
                runtime: runtime.clone(),
                status: status.clone(),
            },
            runtime,
            status,
        )
    }

    fn writes(status: &RecordingStatus) -> Vec<(String, TaskState)> {
        status.writes.lock().unwrap().clone()
    }

    fn calls(runtime: &RecordingRuntime) -> Vec<String> {
        runtime.calls.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_quick_start_should_report_only_running_with_the_container_id() {
        let t = task("t1", TaskState::Running, TaskState::Assigned);
        let (fx, runtime, status) = effects(std::slice::from_ref(&t));
        *runtime.start_takes.lock().unwrap() = Some(STARTING_AFTER / 2);
        fx.apply(Op::Start(Box::new(t))).await.unwrap();
        assert_eq!(calls(&runtime), vec!["start t1"]);
        assert_eq!(
            writes(&status),
            vec![("t1".into(), TaskState::Running)],
            "assigned -> running in one write"
        );
        let stored = status.tasks.lock().unwrap()["t1"].clone();
        assert_eq!(stored.status.container_id, "c-t1");
        assert!(stored.status.healthy);
        assert!(stored.status.timestamp.is_some());
        assert_eq!(
            stored.status.started_at, stored.status.timestamp,
            "the start time is recorded when the task runs"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_start_should_report_starting_while_it_goes_on_then_running() {
        let t = task("t1", TaskState::Running, TaskState::Assigned);
        let (fx, runtime, status) = effects(std::slice::from_ref(&t));
        *runtime.start_takes.lock().unwrap() = Some(STARTING_AFTER * 4);
        fx.apply(Op::Start(Box::new(t))).await.unwrap();
        assert_eq!(
            writes(&status),
            vec![
                ("t1".into(), TaskState::Starting),
                ("t1".into(), TaskState::Running)
            ]
        );
    }

    #[test]
    fn the_start_time_should_stay_when_the_task_ends() {
        let mut status = TaskStatus::default();
        let t0 = Utc::now();
        let running = StatusUpdate::new(TaskState::Running, "started").with_healthy(true);
        assert!(advance(&mut status, &running, t0));
        let later = t0 + chrono::Duration::seconds(3);
        assert!(advance(&mut status, &StatusUpdate::exited(1), later));
        assert_eq!(status.started_at, Some(t0));
        assert_eq!(status.timestamp, Some(later));
    }

    #[tokio::test]
    async fn start_should_report_rejections_and_failures_with_their_reason() {
        let (a, b) = (
            task("a", TaskState::Running, TaskState::Assigned),
            task("b", TaskState::Running, TaskState::Assigned),
        );
        let (fx, runtime, status) = effects(&[a.clone(), b.clone()]);
        runtime.start_errors.lock().unwrap().insert(
            "a".into(),
            TaskError::Rejected {
                task: "a".into(),
                reason: "image not found: localhost:5000/nope:1".into(),
            },
        );
        runtime.start_errors.lock().unwrap().insert(
            "b".into(),
            TaskError::Failed {
                task: "b".into(),
                reason: "registry down".into(),
            },
        );
        assert!(fx
            .apply_all(vec![Op::Start(Box::new(a)), Op::Start(Box::new(b))])
            .await
            .is_empty());
        let tasks = status.tasks.lock().unwrap().clone();
        assert_eq!(tasks["a"].status.state, TaskState::Rejected);
        assert_eq!(
            tasks["a"].status.err,
            "image not found: localhost:5000/nope:1"
        );
        assert_eq!(tasks["b"].status.state, TaskState::Failed);
        assert_eq!(tasks["b"].status.err, "registry down");
    }

    #[tokio::test]
    async fn start_should_leave_status_at_starting_and_retry_when_the_runtime_is_down() {
        let t = task("t1", TaskState::Running, TaskState::Assigned);
        let (fx, runtime, status) = effects(std::slice::from_ref(&t));
        runtime.start_errors.lock().unwrap().insert(
            "t1".into(),
            TaskError::Unavailable("containerd down".into()),
        );
        let err = fx.apply(Op::Start(Box::new(t))).await.unwrap_err();
        assert!(err.is_temporary());
        assert_eq!(writes(&status), vec![("t1".into(), TaskState::Starting)]);
        let tasks = status.tasks.lock().unwrap().clone();
        assert_eq!(tasks["t1"].status.state, TaskState::Starting);
        assert_eq!(
            tasks["t1"].status.err,
            "container runtime unavailable: containerd down"
        );
    }

    #[tokio::test]
    async fn start_should_not_start_tasks_that_were_orphaned_shut_down_or_deleted_meanwhile() {
        let planned = task("t1", TaskState::Running, TaskState::Assigned);
        let orphaned = task("t1", TaskState::Shutdown, TaskState::Orphaned);
        let (fx, runtime, status) = effects(&[orphaned]);
        fx.apply(Op::Start(Box::new(planned.clone())))
            .await
            .unwrap();
        let shut = task("t1", TaskState::Shutdown, TaskState::Assigned);
        let (fx2, runtime2, _) = effects(&[shut]);
        fx2.apply(Op::Start(Box::new(planned.clone())))
            .await
            .unwrap();
        let (fx3, runtime3, _) = effects(&[]);
        fx3.apply(Op::Start(Box::new(planned))).await.unwrap();
        assert!(
            calls(&runtime).is_empty()
                && calls(&runtime2).is_empty()
                && calls(&runtime3).is_empty()
        );
        assert!(writes(&status).is_empty());
    }

    #[tokio::test]
    async fn stop_and_remove_should_only_call_the_runtime() {
        let (fx, runtime, status) = effects(&[task("t1", TaskState::Shutdown, TaskState::Running)]);
        let ops = vec![
            Op::Stop {
                id: "t1".into(),
                grace: Duration::from_secs(3),
                drain: false,
            },
            Op::Remove { id: "old".into() },
        ];
        assert!(fx.apply_all(ops).await.is_empty());
        assert_eq!(calls(&runtime), vec!["stop t1 3s", "remove old"]);
        assert!(writes(&status).is_empty());
    }

    #[tokio::test]
    async fn report_should_never_move_a_state_backwards() {
        let (fx, _, status) = effects(&[task("t1", TaskState::Running, TaskState::Running)]);
        let back = Op::Report {
            id: "t1".into(),
            update: StatusUpdate::new(TaskState::Starting, "starting"),
        };
        fx.apply(back).await.unwrap();
        assert!(writes(&status).is_empty());
        let done = Op::Report {
            id: "t1".into(),
            update: StatusUpdate::exited(0),
        };
        fx.apply(done).await.unwrap();
        let after_terminal = Op::Report {
            id: "t1".into(),
            update: StatusUpdate::new(TaskState::Shutdown, "shutdown"),
        };
        fx.apply(after_terminal).await.unwrap();
        assert_eq!(writes(&status), vec![("t1".into(), TaskState::Complete)]);
        assert_eq!(status.tasks.lock().unwrap()["t1"].status.exit_code, Some(0));
    }

    #[test]
    fn advance_should_allow_health_changes_of_running_tasks_only() {
        let now = Utc::now();
        let mut s = TaskStatus {
            state: TaskState::Running,
            healthy: true,
            ..Default::default()
        };
        let sick = StatusUpdate::new(TaskState::Running, "started").with_healthy(false);
        assert!(advance(&mut s, &sick, now));
        assert!(!s.healthy);
        assert!(!advance(&mut s, &sick, now));
        let mut s = TaskStatus {
            state: TaskState::Starting,
            ..Default::default()
        };
        assert!(!advance(
            &mut s,
            &StatusUpdate::new(TaskState::Starting, "again").with_healthy(true),
            now
        ));
        let mut s = TaskStatus {
            state: TaskState::Failed,
            ..Default::default()
        };
        assert!(!advance(
            &mut s,
            &StatusUpdate::new(TaskState::Orphaned, "x"),
            now
        ));
    }

    #[test]
    fn advance_should_record_an_oom_kill_with_the_failure() {
        let mut s = TaskStatus {
            state: TaskState::Running,
            ..Default::default()
        };
        let killed = StatusUpdate::oom_killed(137, Some(shoal_api_types::Memory(32 << 20)));
        assert!(advance(&mut s, &killed, Utc::now()));
        assert_eq!(s.state, TaskState::Failed);
        assert!(s.oom_killed);
        assert_eq!(s.err, "OOM-killed (memory limit 32Mi)");
        assert_eq!(s.exit_code, Some(137));
    }

    #[test]
    fn placement_stages_should_split_controller_and_agent_time_of_an_assigned_task() {
        let t0 = chrono::DateTime::parse_from_rfc3339("2026-12-02T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut t = task("a", TaskState::Running, TaskState::Assigned);
        t.metadata.creation_timestamp = Some(t0);
        t.status.timestamp = Some(t0 + chrono::TimeDelta::milliseconds(40));
        let now = t0 + chrono::TimeDelta::milliseconds(65);
        assert_eq!(
            placement_stages(&t, now).get(),
            vec![("placed", 40.0), ("seen", 25.0)]
        );
        // Planned again after a failed attempt: only the time since its last change.
        t.status.state = TaskState::Starting;
        assert_eq!(placement_stages(&t, now).get(), vec![("seen", 25.0)]);
    }
}
