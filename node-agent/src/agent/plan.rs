//! The converge diff: [`plan`] compares the tasks the controller assigned to this node
//! (desired, from etcd) with what the runtime has (observed) and returns the operations
//! that move one towards the other. Pure: no I/O, no clock, so it is tested with plain
//! values.
//!
//! Rules, per task id:
//! - a task whose **status is terminal** is left alone, except that a container still
//!   running for it is stopped (the controller orphaned or replaced it);
//! - **desiredState running**: start it unless it runs; report `running` once it does;
//!   report `complete`/`failed` with the exit code when its process has exited; report
//!   `failed` when a task reported running has no running container any more (states never
//!   move backwards, so it is not started again: the controller replaces it);
//! - **desiredState shutdown** (or any state past running): stop it if it runs, then
//!   report `shutdown`;
//! - a desired state before running (not yet wanted) changes nothing;
//! - anything the runtime has that is **not a desired task** is removed (stopped if
//!   needed, then deleted with its namespace and links).
//!
//! At most one operation per task id, so operations on different tasks can run at once.

use std::time::Duration;

use foldhash::{HashMap, HashSet};

use shoal_api_types::service::MAX_STOP_GRACE_PERIOD_SECONDS;
use shoal_api_types::{Memory, Task, TaskState};

use super::task_runtime::{ObservedState, ObservedTask};

/// The status the agent reports for a task. Applied only if it moves the state forward
/// (see [`super::apply::advance`]); the timestamp is set when it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    /// The new state.
    pub state: TaskState,
    /// Short message (`started`, `finished`).
    pub message: String,
    /// What went wrong, if anything.
    pub err: String,
    /// Exit code, once exited.
    pub exit_code: Option<i32>,
    /// Container id, if known (empty keeps the stored one).
    pub container_id: String,
    /// Whether the task takes traffic (running and healthy, or running without a check).
    pub healthy: bool,
    /// Whether the container was OOM-killed.
    pub oom_killed: bool,
}

impl StatusUpdate {
    /// An update to `state` with `message` and nothing else.
    pub fn new(state: TaskState, message: impl Into<String>) -> Self {
        StatusUpdate {
            state,
            message: message.into(),
            err: String::new(),
            exit_code: None,
            container_id: String::new(),
            healthy: false,
            oom_killed: false,
        }
    }

    /// With an error message.
    pub fn with_err(mut self, err: impl Into<String>) -> Self {
        self.err = err.into();
        self
    }

    /// With an exit code.
    pub fn with_exit_code(mut self, code: i32) -> Self {
        self.exit_code = Some(code);
        self
    }

    /// With a container id.
    pub fn with_container(mut self, id: impl Into<String>) -> Self {
        self.container_id = id.into();
        self
    }

    /// With the health flag.
    pub fn with_healthy(mut self, healthy: bool) -> Self {
        self.healthy = healthy;
        self
    }

    /// `running`, healthy unless a health check says otherwise.
    pub fn running(observed: &ObservedTask) -> Self {
        StatusUpdate::new(TaskState::Running, "started")
            .with_container(observed.container_id.clone())
            .with_healthy(observed.healthy.unwrap_or(true))
    }

    /// A container the OOM killer ended: `failed` with the limit it went over (`complete`
    /// if it still exited 0, as in Swarm), flagged `oomKilled`.
    pub fn oom_killed(exit_code: i32, memory_limit: Option<Memory>) -> Self {
        let mut update = if exit_code == 0 {
            StatusUpdate::exited(0)
        } else {
            let why = match memory_limit {
                Some(m) => format!("OOM-killed (memory limit {m})"),
                None => "OOM-killed".to_string(),
            };
            StatusUpdate::new(TaskState::Failed, "failed")
                .with_err(why)
                .with_exit_code(exit_code)
        };
        update.oom_killed = true;
        update
    }

    /// `complete` (exit 0) or `failed` (otherwise) with the exit code.
    pub fn exited(exit_code: i32) -> Self {
        if exit_code == 0 {
            StatusUpdate::new(TaskState::Complete, "finished").with_exit_code(0)
        } else {
            StatusUpdate::new(TaskState::Failed, "failed")
                .with_err(format!("task exited with code {exit_code}"))
                .with_exit_code(exit_code)
        }
    }
}

/// One step towards the desired state.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Report `starting`, start the task, then report `running` (or `rejected`/`failed`).
    Start(Box<Task>),
    /// Stop the task's process (SIGTERM, `grace`, SIGKILL); its exit is reported by the
    /// next plan.
    Stop {
        /// Task id.
        id: String,
        /// Time between SIGTERM and SIGKILL.
        grace: Duration,
        /// The task was running (so in load balancers): wait the agent's drain delay first,
        /// while every node takes it out.
        drain: bool,
    },
    /// Stop if needed and delete everything of a task that is not desired any more.
    Remove {
        /// Task id.
        id: String,
    },
    /// Write a status to the task in etcd (forward only).
    Report {
        /// Task id.
        id: String,
        /// The status to write.
        update: StatusUpdate,
    },
}

impl Op {
    /// The id of the task the operation concerns.
    pub fn task_id(&self) -> &str {
        match self {
            Op::Start(task) => task.name(),
            Op::Stop { id, .. } | Op::Remove { id } | Op::Report { id, .. } => id,
        }
    }

    /// Whether the operation touches the runtime (as opposed to only etcd).
    pub fn is_runtime_op(&self) -> bool {
        !matches!(self, Op::Report { .. })
    }
}

/// The error reported for a task that was running and whose container is gone.
pub const CONTAINER_GONE: &str =
    "the task's container is gone (removed outside shoal, or its runtime lost it)";

/// The operations that converge `observed` towards `desired`: first one per desired task
/// that needs one (in the order given), then removals of everything else observed (in the
/// order observed).
pub fn plan<'a, D>(desired: D, observed: &[ObservedTask]) -> Vec<Op>
where
    D: IntoIterator<Item = &'a Task>,
    D::IntoIter: Clone,
{
    // A round plans every task of the node (a thousand on a big one, many rounds a second
    // while they start), so the lookups use a fast hash, and a task that needs nothing
    // costs no allocation.
    let desired = desired.into_iter();
    let by_id: HashMap<&str, &ObservedTask> = observed.iter().map(|o| (o.id.as_str(), o)).collect();
    let mut ops: Vec<Op> = desired
        .clone()
        .filter_map(|t| plan_task(t, by_id.get(t.name()).copied()))
        .collect();
    let wanted: HashSet<&str> = desired.map(|t| t.name()).collect();
    let mut removed = HashSet::default();
    for o in observed {
        if !wanted.contains(o.id.as_str()) && removed.insert(o.id.as_str()) {
            ops.push(Op::Remove { id: o.id.clone() });
        }
    }
    ops
}

fn plan_task(task: &Task, observed: Option<&ObservedTask>) -> Option<Op> {
    let id = || task.name().to_string();
    let current = task.status.state;
    let desired = task.spec.desired_state;
    // Validation refuses more than the maximum; a task written around it (an older
    // controller, a hand-edited key) is still not allowed to hold a stop for hours.
    let grace = Duration::from_secs(
        task.spec
            .stop_grace_period_seconds
            .min(MAX_STOP_GRACE_PERIOD_SECONDS)
            .into(),
    );
    let report = |update: StatusUpdate| Some(Op::Report { id: id(), update });
    let state = observed.map(|o| o.state);

    if current.is_terminal() {
        return match state {
            Some(ObservedState::Running) => Some(Op::Stop {
                id: id(),
                grace,
                drain: false,
            }),
            _ => None,
        };
    }

    if desired > TaskState::Running {
        return match (observed, state) {
            (_, Some(ObservedState::Running)) => Some(Op::Stop {
                id: id(),
                grace,
                drain: current == TaskState::Running,
            }),
            (Some(o), Some(ObservedState::Exited { exit_code })) => report(
                StatusUpdate::new(TaskState::Shutdown, "shutdown")
                    .with_exit_code(exit_code)
                    .with_container(o.container_id.clone()),
            ),
            _ => report(StatusUpdate::new(TaskState::Shutdown, "shutdown")),
        };
    }

    if desired < TaskState::Running {
        return None;
    }

    match (observed, state) {
        (Some(o), Some(ObservedState::Running)) => {
            let healthy = o.healthy.unwrap_or(true);
            let changed = current < TaskState::Running || task.status.healthy != healthy;
            changed.then(|| Op::Report {
                id: id(),
                update: StatusUpdate::running(o),
            })
        }
        (Some(o), Some(ObservedState::Exited { exit_code })) => {
            let mut update = if o.oom_killed {
                StatusUpdate::oom_killed(exit_code, task.spec.resources.limits.memory)
            } else {
                StatusUpdate::exited(exit_code)
            }
            .with_container(o.container_id.clone());
            if let Some(why) = &o.stopped_because {
                update = StatusUpdate::new(TaskState::Failed, "failed")
                    .with_err(format!("{why} (exit code {exit_code})"))
                    .with_exit_code(exit_code)
                    .with_container(o.container_id.clone());
            }
            report(update)
        }
        // Not running (absent, or created but never started): start it, unless it was
        // already reported running; then it is lost, and states never move back.
        (_, _) if current >= TaskState::Running => {
            report(StatusUpdate::new(TaskState::Failed, "failed").with_err(CONTAINER_GONE))
        }
        (_, _) => Some(Op::Start(Box::new(task.clone()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::{HealthCheck, TaskSpec, TaskStatus};

    fn task(id: &str, desired: TaskState, current: TaskState) -> Task {
        let mut t = Task::new(
            id,
            TaskSpec {
                service: "api".into(),
                slot: Some(1),
                node: Some("node-1".into()),
                desired_state: desired,
                image: "busybox".into(),
                stop_grace_period_seconds: 7,
                ..Default::default()
            },
        );
        t.status = TaskStatus {
            state: current,
            ..Default::default()
        };
        t
    }

    fn running(id: &str) -> ObservedTask {
        ObservedTask::running(id, format!("c-{id}"))
    }

    fn exited(id: &str, code: i32) -> ObservedTask {
        ObservedTask::exited(id, format!("c-{id}"), code)
    }

    fn created(id: &str) -> ObservedTask {
        ObservedTask {
            state: ObservedState::Created,
            ..running(id)
        }
    }

    fn stop(id: &str, drain: bool) -> Op {
        Op::Stop {
            id: id.into(),
            grace: Duration::from_secs(7),
            drain,
        }
    }

    fn report(id: &str, update: StatusUpdate) -> Op {
        Op::Report {
            id: id.into(),
            update,
        }
    }

    const RUN: TaskState = TaskState::Running;
    const SHUT: TaskState = TaskState::Shutdown;

    #[test]
    fn plan_should_do_nothing_when_nothing_is_desired_or_observed() {
        assert_eq!(plan(&[], &[]), vec![]);
    }

    #[test]
    fn plan_should_start_assigned_tasks_that_do_not_run() {
        for current in [
            TaskState::New,
            TaskState::Pending,
            TaskState::Assigned,
            TaskState::Starting,
        ] {
            let t = task("t1", RUN, current);
            assert_eq!(
                plan(std::slice::from_ref(&t), &[]),
                vec![Op::Start(Box::new(t.clone()))],
                "from {current}"
            );
            assert_eq!(
                plan(std::slice::from_ref(&t), &[created("t1")]),
                vec![Op::Start(Box::new(t))],
                "created, from {current}"
            );
        }
    }

    #[test]
    fn plan_should_report_running_once_the_container_runs() {
        for current in [TaskState::Assigned, TaskState::Starting] {
            let ops = plan(&[task("t1", RUN, current)], &[running("t1")]);
            let update = StatusUpdate::new(RUN, "started")
                .with_container("c-t1")
                .with_healthy(true);
            assert_eq!(ops, vec![report("t1", update)]);
        }
    }

    #[test]
    fn plan_should_leave_running_tasks_alone() {
        let mut t = task("t1", RUN, RUN);
        t.status.healthy = true;
        assert_eq!(plan(&[t], &[running("t1")]), vec![]);
    }

    #[test]
    fn plan_should_report_a_task_stopped_for_failing_health_as_failed_with_the_reason() {
        let t = task("t1", RUN, RUN);
        let stopped = ObservedTask {
            stopped_because: Some("task unhealthy".into()),
            ..exited("t1", 137)
        };
        match plan(&[t], &[stopped]).as_slice() {
            [Op::Report { update, .. }] => {
                assert_eq!(update.state, TaskState::Failed);
                assert_eq!(update.err, "task unhealthy (exit code 137)");
                assert_eq!(update.exit_code, Some(137));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plan_should_report_an_oom_killed_task_as_failed_with_its_memory_limit() {
        let mut t = task("t1", RUN, RUN);
        t.spec.resources.limits.memory = Some(Memory(32 << 20));
        let killed = ObservedTask {
            oom_killed: true,
            ..exited("t1", 137)
        };
        match plan(std::slice::from_ref(&t), &[killed]).as_slice() {
            [Op::Report { update, .. }] => {
                assert_eq!(update.state, TaskState::Failed);
                assert_eq!(update.err, "OOM-killed (memory limit 32Mi)");
                assert_eq!(update.exit_code, Some(137));
                assert!(update.oom_killed);
            }
            other => panic!("{other:?}"),
        }
        // Without the flag, a plain failure.
        match plan(&[t], &[exited("t1", 137)]).as_slice() {
            [Op::Report { update, .. }] => {
                assert_eq!(update.err, "task exited with code 137");
                assert!(!update.oom_killed);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plan_should_report_health_changes_of_running_tasks() {
        let mut t = task("t1", RUN, RUN);
        t.spec.healthcheck = Some(HealthCheck {
            command: vec!["true".into()],
            ..Default::default()
        });
        t.status.healthy = true;
        let sick = ObservedTask {
            healthy: Some(false),
            ..running("t1")
        };
        let update = StatusUpdate::new(RUN, "started")
            .with_container("c-t1")
            .with_healthy(false);
        assert_eq!(
            plan(std::slice::from_ref(&t), std::slice::from_ref(&sick)),
            vec![report("t1", update)]
        );
        t.status.healthy = false;
        assert_eq!(plan(&[t], &[sick]), vec![]);
    }

    #[test]
    fn plan_should_report_exits_as_complete_or_failed() {
        for current in [TaskState::Assigned, TaskState::Starting, RUN] {
            let ops = plan(&[task("t1", RUN, current)], &[exited("t1", 0)]);
            let update = StatusUpdate::new(TaskState::Complete, "finished")
                .with_exit_code(0)
                .with_container("c-t1");
            assert_eq!(ops, vec![report("t1", update)]);
            let ops = plan(&[task("t1", RUN, current)], &[exited("t1", 3)]);
            let update = StatusUpdate::new(TaskState::Failed, "failed")
                .with_err("task exited with code 3")
                .with_exit_code(3)
                .with_container("c-t1");
            assert_eq!(ops, vec![report("t1", update)]);
        }
    }

    #[test]
    fn plan_should_fail_running_tasks_whose_container_is_gone_instead_of_restarting_them() {
        let gone = StatusUpdate::new(TaskState::Failed, "failed").with_err(CONTAINER_GONE);
        assert_eq!(
            plan(&[task("t1", RUN, RUN)], &[]),
            vec![report("t1", gone.clone())]
        );
        assert_eq!(
            plan(&[task("t1", RUN, RUN)], &[created("t1")]),
            vec![report("t1", gone)]
        );
    }

    #[test]
    fn plan_should_clamp_the_stop_grace_period() {
        let mut t = task("t1", SHUT, RUN);
        t.spec.stop_grace_period_seconds = 86_400;
        assert_eq!(
            plan(&[t], &[running("t1")]),
            vec![Op::Stop {
                id: "t1".into(),
                grace: Duration::from_secs(MAX_STOP_GRACE_PERIOD_SECONDS.into()),
                drain: true,
            }]
        );
    }

    #[test]
    fn plan_should_stop_tasks_desired_shutdown_that_run() {
        for current in [TaskState::Assigned, TaskState::Starting, RUN] {
            assert_eq!(
                plan(&[task("t1", SHUT, current)], &[running("t1")]),
                vec![stop("t1", current == RUN)],
                "only a task that was running is drained first"
            );
        }
    }

    #[test]
    fn plan_should_report_shutdown_once_stopped_or_never_started() {
        for current in [TaskState::Assigned, TaskState::Starting, RUN] {
            let ops = plan(&[task("t1", SHUT, current)], &[exited("t1", 143)]);
            let update = StatusUpdate::new(SHUT, "shutdown")
                .with_exit_code(143)
                .with_container("c-t1");
            assert_eq!(ops, vec![report("t1", update)]);
            let shutdown = StatusUpdate::new(SHUT, "shutdown");
            assert_eq!(
                plan(&[task("t1", SHUT, current)], &[]),
                vec![report("t1", shutdown.clone())]
            );
            assert_eq!(
                plan(&[task("t1", SHUT, current)], &[created("t1")]),
                vec![report("t1", shutdown)]
            );
        }
    }

    #[test]
    fn plan_should_treat_desired_states_past_running_as_shutdown() {
        assert_eq!(
            plan(&[task("t1", TaskState::Complete, RUN)], &[running("t1")]),
            vec![stop("t1", true)]
        );
    }

    #[test]
    fn plan_should_not_start_tasks_not_yet_wanted() {
        assert_eq!(
            plan(&[task("t1", TaskState::Assigned, TaskState::Assigned)], &[]),
            vec![]
        );
        assert_eq!(
            plan(
                &[task("t1", TaskState::Assigned, TaskState::Assigned)],
                &[running("t1")]
            ),
            vec![]
        );
    }

    #[test]
    fn plan_should_leave_terminal_tasks_alone_but_stop_their_running_containers() {
        let terminal = [
            TaskState::Complete,
            TaskState::Failed,
            TaskState::Rejected,
            SHUT,
            TaskState::Orphaned,
        ];
        for current in terminal {
            for desired in [RUN, SHUT] {
                let t = task("t1", desired, current);
                assert_eq!(
                    plan(std::slice::from_ref(&t), &[]),
                    vec![],
                    "{desired}/{current}"
                );
                assert_eq!(
                    plan(std::slice::from_ref(&t), &[exited("t1", 1)]),
                    vec![],
                    "{desired}/{current}"
                );
                assert_eq!(
                    plan(std::slice::from_ref(&t), &[created("t1")]),
                    vec![],
                    "{desired}/{current}"
                );
                assert_eq!(
                    plan(&[t], &[running("t1")]),
                    vec![stop("t1", false)],
                    "{desired}/{current}"
                );
            }
        }
    }

    #[test]
    fn plan_should_remove_whatever_runs_that_is_not_desired() {
        let ops = plan(
            &[task("t1", RUN, RUN)],
            &[
                running("t1"),
                running("old"),
                exited("gone", 0),
                created("half"),
            ],
        );
        let mut t1 = task("t1", RUN, RUN);
        t1.status.healthy = true;
        assert_eq!(
            ops,
            vec![
                Op::Report {
                    id: "t1".into(),
                    update: StatusUpdate::new(RUN, "started")
                        .with_container("c-t1")
                        .with_healthy(true)
                },
                Op::Remove { id: "old".into() },
                Op::Remove { id: "gone".into() },
                Op::Remove { id: "half".into() },
            ]
        );
        assert_eq!(
            plan(&[t1], &[running("t1"), running("old")]),
            vec![Op::Remove { id: "old".into() }]
        );
    }

    #[test]
    fn plan_should_remove_everything_when_nothing_is_desired() {
        let ops = plan(&[], &[running("a"), exited("b", 0), exited("b", 0)]);
        assert_eq!(
            ops,
            vec![Op::Remove { id: "a".into() }, Op::Remove { id: "b".into() }]
        );
    }

    #[test]
    fn plan_should_yield_at_most_one_op_per_task_and_never_a_backward_report() {
        let states = [
            TaskState::New,
            TaskState::Pending,
            TaskState::Assigned,
            TaskState::Starting,
            RUN,
            TaskState::Complete,
            TaskState::Failed,
            TaskState::Rejected,
            SHUT,
            TaskState::Orphaned,
        ];
        let observations: Vec<Option<ObservedTask>> = vec![
            None,
            Some(created("t")),
            Some(running("t")),
            Some(exited("t", 0)),
            Some(exited("t", 1)),
        ];
        for desired in states {
            for current in states {
                for healthy in [false, true] {
                    for o in &observations {
                        let mut t = task("t", desired, current);
                        t.status.healthy = healthy;
                        let observed: Vec<_> = o.iter().cloned().collect();
                        let ops = plan(&[t], &observed);
                        assert!(ops.len() <= 1, "{desired}/{current}/{o:?}: {ops:?}");
                        for op in &ops {
                            assert_eq!(op.task_id(), "t");
                            if let Op::Report { update, .. } = op {
                                assert!(
                                    !current.is_terminal(),
                                    "{desired}/{current}/{o:?}: {ops:?}"
                                );
                                assert!(
                                    update.state > current
                                        || (update.state == RUN && current == RUN),
                                    "{desired}/{current}/{o:?}: {ops:?}"
                                );
                            }
                            if let Op::Start(_) = op {
                                assert_eq!(desired, RUN);
                                assert!(current <= TaskState::Starting);
                            }
                        }
                    }
                }
            }
        }
    }
}
