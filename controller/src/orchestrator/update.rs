//! The updater: replaces a service's out-of-date tasks per its update policy
//! (`spec.updateConfig`, or `spec.rollbackConfig` while rolling back) and keeps
//! `status.updateStatus`. Pure over the service, its tasks and its slot plan, like the rest
//! of the orchestrator, so a new leader resumes an update from etcd alone.
//!
//! Rules:
//! - An update starts (`updating`) when the slot plan finds live tasks made from an older
//!   spec and no update is active or paused; the API clears `updateStatus` on every spec
//!   change, so a paused update stays paused until the next change.
//! - Batches of `parallelism` slots (0: all). A batch starts when no slot of the previous
//!   one is still in flight and `delay` has passed since it was ready (`batchReadyAt`).
//!   stop-first: the old task is stopped; its slot's replacement is created once it ended
//!   (see [`super::slots`]). start-first: the replacement is created next to the old task,
//!   and the old one is stopped once the new one runs, is healthy and is listed ready in the
//!   stored Endpoints (so every node's load balancer has it).
//! - A task of this update (made from the current spec, created since `startedAt`) that
//!   fails, is rejected or exits within `monitor` of starting (or before starting) is a
//!   failure, counted once (`failedTasks`). When failures ÷ updated slots exceeds
//!   `maxFailureRatio` the failure action runs: `pause` → `paused`; `rollback` → the spec
//!   goes back to the previous one and `rollback_started`; `continue` → nothing. A failure
//!   during a rollback pauses it (`rollback_paused`) unless its policy says continue.
//! - After the last batch, the update keeps watching for max(`monitor`, `delay` + 1 s),
//!   then `completed` (`rollback_completed`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shoal_api_types::{
    FailureAction, Service, TaskState, UpdateConfig, UpdateOrder, UpdateState, UpdateStatus,
};

use super::slots::{Outdated, Outdates, ServicePlan};
use crate::reconcile::TaskRecord;

/// What the updater decided besides the task writes it added to the slot plan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateStep {
    /// The update status to store (`None`: keep the stored one).
    pub status: Option<UpdateStatus>,
    /// Go back to the previous spec now (the failure action `rollback`).
    pub rollback: bool,
    /// Look again after this long (a delay or the final monitor period is running).
    pub requeue: Option<Duration>,
}

/// Where a slot's task lives: its replicated slot, or its node for a global service.
type SlotKey = (Option<u64>, Option<String>);

fn slot_of(t: &TaskRecord) -> SlotKey {
    match t.spec.slot {
        Some(s) => (Some(s), None),
        None => (None, t.spec.node.clone()),
    }
}

/// How long a new task without a health check must have run before the update counts it
/// ready (at most the monitor period): a command that exits at once fails inside it, so
/// the update pauses before it touches the next slot.
pub const SETTLE: Duration = Duration::from_secs(1);

/// When a task is (or will be, if it keeps running) ready for the update: when it passed
/// its health check, or, without one, when it has run for `settle`. `None`: not running.
fn ready_at(t: &TaskRecord, settle: Duration) -> Option<DateTime<Utc>> {
    if !t.is_live() || t.status.state != TaskState::Running {
        return None;
    }
    if t.spec.healthcheck().is_some() {
        // The moment of the first passing check is not recorded; passing is what counts.
        return t.status.healthy.then_some(DateTime::<Utc>::MIN_UTC);
    }
    let started = t.status.started_at.or(t.status.timestamp)?;
    Some(started + chrono::Duration::from_std(settle).unwrap_or_default())
}

/// Whether a task is ready for the update at `now` (see [`ready_at`]).
fn is_ready(t: &TaskRecord, settle: Duration, now: DateTime<Utc>) -> bool {
    ready_at(t, settle).is_some_and(|at| at <= now)
}

/// Whether `t` failed by itself within `monitor` of starting (or before it started).
fn failed_within(t: &TaskRecord, monitor: Duration) -> bool {
    if !matches!(
        t.status.state,
        TaskState::Failed | TaskState::Rejected | TaskState::Complete
    ) {
        return false;
    }
    match (t.status.started_at, t.status.timestamp) {
        (Some(start), Some(end)) => (end - start).to_std().unwrap_or_default() <= monitor,
        _ => true,
    }
}

/// Why a task failed, for the update's message: `task api.3: task exited with code 1`.
fn failure_of(t: &TaskRecord) -> String {
    let why = if !t.status.err.is_empty() {
        t.status.err.clone()
    } else if let Some(code) = t.status.exit_code {
        format!("exit {code}")
    } else {
        t.status.state.to_string()
    };
    format!("task {}: {why}", t.spec.display_name())
}

/// Plans the update of `service` (which exists): adds stops, creates and deletes to `plan`
/// and returns the update status. `listed_ready` says whether a task is listed ready in
/// every stored Endpoints object of the service.
pub fn plan_update(
    service: &Service,
    tasks: &[Arc<TaskRecord>],
    plan: &mut ServicePlan,
    listed_ready: impl Fn(&TaskRecord) -> bool,
    now: DateTime<Utc>,
) -> UpdateStep {
    let outdated = std::mem::take(&mut plan.outdated);
    let mut step = UpdateStep::default();
    let outdates = Outdates::new(service);

    // A start-first replacement that is ready takes over its slot, whatever the state.
    let settle = SETTLE.min(service.spec.update_config.monitor.get());
    let mut handed_over = BTreeSet::new();
    let mut settled_at: Option<DateTime<Utc>> = None;
    for o in &outdated {
        if let Some(s) = &o.successor {
            if is_ready(s, settle, now) && listed_ready(s) {
                plan.shutdown.push(o.task.clone());
                handed_over.insert(slot_of(&o.task));
            }
        }
    }

    let mut us = match service.status.update_status.clone() {
        Some(us) if us.state.is_active() || us.state.is_paused() => us,
        _ if outdated.is_empty() => {
            plan.outdated = outdated;
            return step;
        }
        _ => UpdateStatus {
            state: UpdateState::Updating,
            started_at: Some(now),
            message: "update in progress".into(),
            ..Default::default()
        },
    };
    if us.state.is_paused() {
        plan.outdated = outdated;
        return step;
    }
    let cfg: &UpdateConfig = if us.state.is_rollback() {
        &service.spec.rollback_config
    } else {
        &service.spec.update_config
    };
    let since = us.started_at.unwrap_or(now);
    let current: Vec<&Arc<TaskRecord>> = tasks
        .iter()
        .filter(|t| !outdates.check(t))
        .filter(|t| t.metadata.creation_timestamp.is_none_or(|c| c >= since))
        .collect();

    // Failures, each counted once.
    let monitor = cfg.monitor.get();
    let newly: Vec<&Arc<TaskRecord>> = current
        .iter()
        .filter(|t| failed_within(t, monitor) && !us.failed_tasks.contains(&t.metadata.name))
        .copied()
        .collect();
    us.failures += newly.len() as u64;
    us.failed_tasks
        .extend(newly.iter().map(|t| t.metadata.name.clone()));
    us.failed_tasks
        .retain(|n| tasks.iter().any(|t| &t.metadata.name == n));
    let updated: BTreeSet<SlotKey> = current.iter().map(|t| slot_of(t)).collect();
    let ratio = us.failures as f64 / updated.len().max(1) as f64;
    if us.failures > 0 && ratio > cfg.max_failure_ratio.0 {
        let last = newly
            .last()
            .map(|t| failure_of(t))
            .or_else(|| {
                us.message
                    .split_once("failure of ")
                    .map(|(_, m)| m.to_string())
            })
            .unwrap_or_default();
        match (us.state, cfg.failure_action) {
            (_, FailureAction::Continue) => {}
            (UpdateState::Updating, FailureAction::Rollback)
                if service.status.previous_spec.is_some() =>
            {
                step.rollback = true;
                step.status = Some(UpdateStatus {
                    state: UpdateState::RollbackStarted,
                    started_at: Some(now),
                    message: format!("update rolled back due to failure of {last}"),
                    ..Default::default()
                });
                plan.outdated = outdated;
                return step;
            }
            (UpdateState::Updating, action) => {
                us.state = UpdateState::Paused;
                us.message = format!("update paused due to failure of {last}");
                if action == FailureAction::Rollback {
                    us.message += "; there is no previous spec to roll back to";
                }
            }
            _ => {
                us.state = UpdateState::RollbackPaused;
                us.message = format!("rollback paused due to failure of {last}");
            }
        }
        if us.state.is_paused() {
            step.status = Some(us);
            plan.outdated = outdated;
            return step;
        }
    }

    // Tasks that never reached a node are replaced at once.
    for o in outdated.iter().filter(|o| o.task.spec.node.is_none()) {
        plan.delete.push(o.task.clone());
        plan.create.push(o.replacement.clone());
    }

    // Slots still in flight: an old task stopping before its replacement starts
    // (stop-first), a new one not yet ready (one nothing fits does not hold the update
    // up), a replacement created in this pass. An old task stopping after its start-first
    // replacement took over holds nothing up.
    let taken_over: BTreeSet<SlotKey> = tasks
        .iter()
        .filter(|t| t.is_live() && !outdates.check(t))
        .map(|t| slot_of(t))
        .collect();
    let mut in_flight: BTreeSet<SlotKey> = BTreeSet::new();
    for t in tasks {
        let stopping = t.spec.desired_state != TaskState::Running
            && !t.status.state.is_terminal()
            && t.spec.node.is_some()
            && outdates.check(t)
            && !taken_over.contains(&slot_of(t));
        let starting = t.is_live()
            && !outdates.check(t)
            && !is_ready(t, settle, now)
            && (t.spec.node.is_some() || t.spec.pending_reason.is_empty());
        if starting {
            // Running and settling: look again when it has settled.
            if let Some(at) = ready_at(t, settle).filter(|at| *at > now) {
                settled_at = Some(settled_at.map_or(at, |s| s.min(at)));
            }
        }
        if stopping || starting {
            in_flight.insert(slot_of(t));
        }
    }
    for c in &plan.create {
        in_flight.insert((c.slot, c.node.clone()));
    }

    let waiting: Vec<&Outdated> = outdated
        .iter()
        .filter(|o| o.task.spec.node.is_some() && o.successor.is_none())
        .collect();
    if !in_flight.is_empty() {
        us.batch_ready_at = None;
    } else if us.batch_ready_at.is_none() && !updated.is_empty() {
        // The previous batch is ready now.
        us.batch_ready_at = Some(now);
    }

    let delay = cfg.delay.get();
    if in_flight.is_empty() && !waiting.is_empty() {
        let due = us
            .batch_ready_at
            .map(|at| at + chrono::Duration::from_std(delay).unwrap_or_default());
        match due {
            Some(due) if due > now => {
                step.requeue = (due - now).to_std().ok();
            }
            _ => {
                let size = match cfg.parallelism {
                    0 => waiting.len(),
                    p => (p as usize).min(waiting.len()),
                };
                for o in &waiting[..size] {
                    match cfg.order {
                        UpdateOrder::StopFirst => plan.shutdown.push(o.task.clone()),
                        UpdateOrder::StartFirst => plan.create.push(o.replacement.clone()),
                    }
                }
                us.batch_ready_at = None;
            }
        }
    } else if in_flight.is_empty()
        && outdated
            .iter()
            .all(|o| handed_over.contains(&slot_of(&o.task)))
    {
        // Every slot is on the current spec: watch the last batch, then done.
        let ready_at = us.batch_ready_at.unwrap_or(now);
        us.batch_ready_at = Some(ready_at);
        let window = monitor.max(delay + Duration::from_secs(1));
        let done_at = ready_at + chrono::Duration::from_std(window).unwrap_or_default();
        if now >= done_at {
            if us.state.is_rollback() {
                us.state = UpdateState::RollbackCompleted;
                us.message = format!("rollback completed ({})", us.message);
            } else {
                us.state = UpdateState::Completed;
                us.message = "update completed".into();
            }
            us.completed_at = Some(now);
            us.batch_ready_at = None;
        } else {
            step.requeue = (done_at - now).to_std().ok();
        }
    }
    if let Some(at) = settled_at {
        let d = (at - now).to_std().unwrap_or_default();
        step.requeue = Some(step.requeue.map_or(d, |r| r.min(d)));
    }
    if service.status.update_status.as_ref() != Some(&us) {
        step.status = Some(us);
    }
    plan.outdated = outdated;
    step
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use shoal_api_types::service::HealthCheck;
    use shoal_api_types::{
        HumanDuration, Node, NodeSpec, NodeState, NodeStatus, Ratio, ServiceSpec, Task, TaskSpec,
    };

    use crate::orchestrator::slots::plan_service;

    fn t0() -> DateTime<Utc> {
        "2026-12-01T10:00:00Z".parse().unwrap()
    }

    fn secs(s: i64) -> DateTime<Utc> {
        t0() + chrono::Duration::seconds(s)
    }

    fn service(replicas: i64, image: &str, config: UpdateConfig) -> Service {
        let mut s = Service::new(
            "api",
            ServiceSpec {
                image: image.into(),
                replicas: Some(replicas),
                update_config: config,
                ..Default::default()
            },
        );
        s.status.previous_spec = Some(Box::new(ServiceSpec {
            image: "v1".into(),
            replicas: Some(replicas),
            ..Default::default()
        }));
        s
    }

    fn nodes() -> BTreeMap<String, Arc<Node>> {
        let mut n = Node::new("n1", NodeSpec::default());
        n.status = NodeStatus {
            state: NodeState::Ready,
            ..Default::default()
        };
        BTreeMap::from([("n1".to_string(), Arc::new(n))])
    }

    /// A task in `slot` made from `image`, created at `created`, in `state`.
    fn task(id: &str, slot: u64, image: &str, created: DateTime<Utc>, state: TaskState) -> Task {
        let mut t = Task::new(
            id,
            TaskSpec {
                service: "api".into(),
                slot: Some(slot),
                node: Some("n1".into()),
                desired_state: TaskState::Running,
                image: image.into(),
                stop_grace_period_seconds: 10,
                ..Default::default()
            },
        );
        t.metadata.creation_timestamp = Some(created);
        t.status.state = state;
        t.status.timestamp = Some(created + chrono::Duration::seconds(1));
        if state >= TaskState::Running {
            t.status.started_at = Some(created + chrono::Duration::seconds(1));
        }
        t.status.healthy = state == TaskState::Running;
        t
    }

    fn old_tasks(n: u64) -> Vec<Task> {
        (1..=n)
            .map(|s| task(&format!("old{s}"), s, "v1", secs(-100), TaskState::Running))
            .collect()
    }

    struct Pass {
        step: UpdateStep,
        plan: ServicePlan,
    }

    fn pass(svc: &Service, tasks: &[Task], now: DateTime<Utc>) -> Pass {
        pass_listed(svc, tasks, now, |_| true)
    }

    fn pass_listed(
        svc: &Service,
        tasks: &[Task],
        now: DateTime<Utc>,
        listed: impl Fn(&TaskRecord) -> bool,
    ) -> Pass {
        let tasks: Vec<Arc<TaskRecord>> = tasks
            .iter()
            .cloned()
            .map(|t| Arc::new(TaskRecord::from(t)))
            .collect();
        let mut plan = plan_service(Some(svc), &tasks, &nodes(), now, 5);
        let step = plan_update(svc, &tasks, &mut plan, listed, now);
        Pass { step, plan }
    }

    fn names(ts: &[Arc<TaskRecord>]) -> Vec<&str> {
        ts.iter().map(|t| t.metadata.name.as_str()).collect()
    }

    fn created_slots(plan: &ServicePlan) -> Vec<u64> {
        plan.create.iter().filter_map(|c| c.slot).collect()
    }

    fn with_status(mut svc: Service, step: &UpdateStep) -> Service {
        if let Some(us) = &step.status {
            svc.status.update_status = Some(us.clone());
        }
        svc
    }

    fn stopping(mut t: Task) -> Task {
        t.spec.desired_state = TaskState::Shutdown;
        t
    }

    fn ended(mut t: Task, state: TaskState, at: DateTime<Utc>) -> Task {
        t.status.state = state;
        t.status.timestamp = Some(at);
        t
    }

    #[test]
    fn an_update_should_start_with_one_batch_of_parallelism_stopping_first() {
        let cfg = UpdateConfig {
            parallelism: 2,
            ..Default::default()
        };
        let svc = service(6, "v2", cfg);
        let p = pass(&svc, &old_tasks(6), t0());
        let us = p.step.status.expect("an update status");
        assert_eq!(us.state, UpdateState::Updating);
        assert_eq!(us.started_at, Some(t0()));
        assert_eq!(names(&p.plan.shutdown), ["old1", "old2"]);
        assert!(
            p.plan.create.is_empty(),
            "stop-first: nothing starts before the old task ended"
        );
    }

    #[test]
    fn stop_first_should_create_a_replacement_only_once_the_old_task_ended() {
        let svc = service(2, "v2", UpdateConfig::default());
        let svc = with_status(svc.clone(), &pass(&svc, &old_tasks(2), t0()).step);
        let mut tasks = old_tasks(2);
        tasks[0] = stopping(tasks[0].clone());
        let p = pass(&svc, &tasks, secs(1));
        assert!(p.plan.create.is_empty() && p.plan.shutdown.is_empty());
        tasks[0] = ended(tasks[0].clone(), TaskState::Shutdown, secs(2));
        let p = pass(&svc, &tasks, secs(2));
        assert_eq!(created_slots(&p.plan), [1]);
        assert!(p.plan.shutdown.is_empty(), "one slot at a time");
    }

    #[test]
    fn batches_should_wait_until_the_last_one_is_ready_and_then_the_delay() {
        let cfg = UpdateConfig {
            parallelism: 2,
            delay: HumanDuration::from_secs(10),
            ..Default::default()
        };
        let svc = service(4, "v2", cfg);
        let svc = with_status(svc.clone(), &pass(&svc, &old_tasks(4), t0()).step);
        let mut tasks = old_tasks(4);
        for t in tasks.iter_mut().take(2) {
            *t = ended(stopping(t.clone()), TaskState::Shutdown, secs(1));
        }
        // The batch's replacements are starting: nothing else moves.
        tasks.push(task("new1", 1, "v2", secs(2), TaskState::Starting));
        tasks.push(task("new2", 2, "v2", secs(2), TaskState::Running));
        let p = pass(&svc, &tasks, secs(3));
        assert!(p.plan.shutdown.is_empty() && p.plan.create.is_empty());
        let svc = with_status(svc, &p.step);
        // Ready: the delay starts now.
        tasks[4] = task("new1", 1, "v2", secs(2), TaskState::Running);
        let p = pass(&svc, &tasks, secs(4));
        assert!(p.plan.shutdown.is_empty());
        assert_eq!(p.step.requeue, Some(Duration::from_secs(10)));
        let us = p.step.status.clone().unwrap();
        assert_eq!(us.batch_ready_at, Some(secs(4)));
        let svc = with_status(svc, &p.step);
        let p = pass(&svc, &tasks, secs(9));
        assert!(p.plan.shutdown.is_empty());
        assert_eq!(p.step.requeue, Some(Duration::from_secs(5)));
        let p = pass(&svc, &tasks, secs(14));
        assert_eq!(names(&p.plan.shutdown), ["old3", "old4"]);
    }

    #[test]
    fn start_first_should_stop_the_old_task_only_when_the_new_one_is_ready_and_listed() {
        let cfg = UpdateConfig {
            order: UpdateOrder::StartFirst,
            ..Default::default()
        };
        let mut svc = service(2, "v2", cfg);
        svc.spec.healthcheck = Some(HealthCheck {
            command: vec!["true".into()],
            ..Default::default()
        });
        let mut tasks = old_tasks(2);
        let p = pass(&svc, &tasks, t0());
        assert_eq!(created_slots(&p.plan), [1]);
        assert!(p.plan.shutdown.is_empty(), "the old task keeps serving");
        let svc = with_status(svc, &p.step);
        let mut new1 = task("new1", 1, "v2", secs(1), TaskState::Running);
        new1.spec.healthcheck = svc.spec.healthcheck.clone();
        new1.status.healthy = false;
        tasks.push(new1.clone());
        let p = pass(&svc, &tasks, secs(2));
        assert!(
            p.plan.shutdown.is_empty() && p.plan.create.is_empty(),
            "running but not healthy yet: {:?}",
            p.plan
        );
        new1.status.healthy = true;
        tasks[2] = new1;
        let p = pass_listed(&svc, &tasks, secs(3), |_| false);
        assert!(
            p.plan.shutdown.is_empty(),
            "healthy but not yet in the load balancers"
        );
        let p = pass(&svc, &tasks, secs(3));
        assert_eq!(names(&p.plan.shutdown), ["old1"]);
        // The old task stopping holds nothing up: the next slot starts.
        tasks[0] = stopping(tasks[0].clone());
        let p = pass(&svc, &tasks, secs(4));
        assert_eq!(created_slots(&p.plan), [2]);
    }

    #[test]
    fn a_new_task_without_a_health_check_should_settle_before_the_next_slot() {
        let svc = service(2, "v2", UpdateConfig::default());
        let svc = with_status(svc.clone(), &pass(&svc, &old_tasks(2), t0()).step);
        let mut tasks = old_tasks(2);
        tasks[0] = ended(stopping(tasks[0].clone()), TaskState::Shutdown, secs(1));
        // Running since 3 s (created at 2 s, started 1 s later).
        tasks.push(task("new1", 1, "v2", secs(2), TaskState::Running));
        let p = pass(&svc, &tasks, secs(3) + chrono::Duration::milliseconds(300));
        assert!(p.plan.shutdown.is_empty(), "still settling: {:?}", p.plan);
        assert_eq!(p.step.requeue, Some(Duration::from_millis(700)));
        let p = pass(&svc, &tasks, secs(4));
        assert_eq!(names(&p.plan.shutdown), ["old2"]);
    }

    #[test]
    fn a_failed_new_task_should_pause_the_update_and_leave_the_rest_alone() {
        let svc = service(3, "v2", UpdateConfig::default());
        let svc = with_status(svc.clone(), &pass(&svc, &old_tasks(3), t0()).step);
        let mut tasks = old_tasks(3);
        tasks[0] = ended(stopping(tasks[0].clone()), TaskState::Shutdown, secs(1));
        let mut failed = task("new1", 1, "v2", secs(2), TaskState::Running);
        failed = ended(failed, TaskState::Failed, secs(4));
        failed.status.err = "task exited with code 1".into();
        failed.status.exit_code = Some(1);
        tasks.push(failed);
        let p = pass(&svc, &tasks, secs(4));
        let us = p.step.status.unwrap();
        assert_eq!(us.state, UpdateState::Paused);
        assert_eq!(
            us.message,
            "update paused due to failure of task api.1: task exited with code 1"
        );
        assert_eq!(
            (us.failures, us.failed_tasks.clone()),
            (1, vec!["new1".into()])
        );
        assert!(p.plan.shutdown.iter().all(|t| t.metadata.name == "new1"));
        assert!(
            p.plan.create.iter().all(|c| c.slot == Some(1)),
            "only the failed slot restarts: {:?}",
            p.plan.create
        );
        // Paused stays paused.
        let mut svc = svc;
        svc.status.update_status = Some(us);
        let p = pass(&svc, &tasks, secs(60));
        assert_eq!(p.step.status, None);
        assert!(!p
            .plan
            .shutdown
            .iter()
            .any(|t| t.metadata.name.starts_with("old")));
    }

    #[test]
    fn a_failure_after_the_monitor_period_should_not_count() {
        let cfg = UpdateConfig {
            monitor: HumanDuration::from_secs(5),
            ..Default::default()
        };
        let svc = service(2, "v2", cfg);
        let svc = with_status(svc.clone(), &pass(&svc, &old_tasks(2), t0()).step);
        let mut tasks = old_tasks(2);
        tasks[0] = ended(stopping(tasks[0].clone()), TaskState::Shutdown, secs(1));
        // Started at 3 s, failed at 30 s.
        tasks.push(ended(
            task("new1", 1, "v2", secs(2), TaskState::Running),
            TaskState::Failed,
            secs(30),
        ));
        let p = pass(&svc, &tasks, secs(30));
        let us = p
            .step
            .status
            .unwrap_or_else(|| svc.status.update_status.clone().unwrap());
        assert_eq!((us.state, us.failures), (UpdateState::Updating, 0));
    }

    #[test]
    fn the_rollback_action_should_go_back_to_the_previous_spec() {
        let cfg = UpdateConfig {
            failure_action: FailureAction::Rollback,
            ..Default::default()
        };
        let svc = service(2, "v2", cfg);
        let svc = with_status(svc.clone(), &pass(&svc, &old_tasks(2), t0()).step);
        let mut tasks = old_tasks(2);
        tasks[0] = ended(stopping(tasks[0].clone()), TaskState::Shutdown, secs(1));
        tasks.push(ended(
            task("new1", 1, "v2", secs(2), TaskState::Starting),
            TaskState::Rejected,
            secs(3),
        ));
        let p = pass(&svc, &tasks, secs(3));
        assert!(p.step.rollback);
        let us = p.step.status.unwrap();
        assert_eq!(us.state, UpdateState::RollbackStarted);
        assert!(
            us.message
                .starts_with("update rolled back due to failure of task api.1"),
            "{}",
            us.message
        );
        assert!(p.plan.create.is_empty(), "nothing more on the failing spec");
    }

    #[test]
    fn a_failure_during_a_rollback_should_pause_it() {
        let mut svc = service(2, "v1", UpdateConfig::default());
        svc.status.update_status = Some(UpdateStatus {
            state: UpdateState::RollbackStarted,
            started_at: Some(t0()),
            ..Default::default()
        });
        let mut tasks: Vec<Task> = (1..=2)
            .map(|s| task(&format!("bad{s}"), s, "v2", secs(-50), TaskState::Running))
            .collect();
        tasks[0] = ended(stopping(tasks[0].clone()), TaskState::Shutdown, secs(1));
        tasks.push(ended(
            task("back1", 1, "v1", secs(2), TaskState::Running),
            TaskState::Failed,
            secs(4),
        ));
        let us = pass(&svc, &tasks, secs(4)).step.status.unwrap();
        assert_eq!(us.state, UpdateState::RollbackPaused);
        assert!(us
            .message
            .starts_with("rollback paused due to failure of task api.1"));
    }

    #[test]
    fn failures_within_the_ratio_should_not_stop_the_update_and_it_completes_after_monitor() {
        let cfg = UpdateConfig {
            parallelism: 0,
            max_failure_ratio: Ratio(0.5),
            monitor: HumanDuration::from_secs(5),
            ..Default::default()
        };
        let mut svc = service(4, "v2", cfg);
        // Not restarted: restart condition none.
        let none = shoal_api_types::RestartPolicy {
            condition: shoal_api_types::RestartCondition::None,
            ..Default::default()
        };
        svc.spec.restart_policy = none.clone();
        let first = pass(&svc, &old_tasks(4), t0());
        assert_eq!(first.plan.shutdown.len(), 4, "parallelism 0: all at once");
        let svc = with_status(svc, &first.step);
        let mut tasks: Vec<Task> = old_tasks(4)
            .into_iter()
            .map(|t| ended(stopping(t), TaskState::Shutdown, secs(1)))
            .collect();
        for s in 1..=4 {
            let mut t = task(&format!("new{s}"), s, "v2", secs(2), TaskState::Running);
            t.spec.restart_policy = none.clone();
            if s == 3 {
                t = ended(t, TaskState::Failed, secs(4));
            }
            tasks.push(t);
        }
        let p = pass(&svc, &tasks, secs(4));
        let us = p.step.status.clone().unwrap();
        assert_eq!((us.state, us.failures), (UpdateState::Updating, 1));
        assert_eq!(us.batch_ready_at, Some(secs(4)));
        assert_eq!(p.step.requeue, Some(Duration::from_secs(5)));
        let svc = with_status(svc, &p.step);
        let p = pass(&svc, &tasks, secs(9));
        let us = p.step.status.unwrap();
        assert_eq!(us.state, UpdateState::Completed);
        assert_eq!(us.completed_at, Some(secs(9)));
        assert_eq!(us.failures, 1, "the failure is counted once");
    }

    #[test]
    fn a_replica_change_alone_should_start_no_update() {
        let svc = service(4, "v1", UpdateConfig::default());
        let p = pass(&svc, &old_tasks(2), t0());
        assert_eq!(p.step, UpdateStep::default());
        assert_eq!(created_slots(&p.plan), [3, 4]);
    }
}
