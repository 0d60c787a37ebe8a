//! Task slots: which tasks a service should have, as a pure [`plan_service`] over its tasks
//! and the nodes (creates, stops, deletes, rolling replacement, restart delays, history).
//!
//! Replicated services keep slots `1..=replicas` with one live task each; scaling down
//! stops the highest slots. Global services keep one live task per eligible node (ready,
//! active, matching the constraints). A task that ends is replaced, per the restart policy,
//! by a *new* task in the same slot (never by moving the old one); tasks on a drained node
//! are stopped and replaced elsewhere; tasks orphaned by a node going down are replaced at
//! once. Terminal tasks are kept as history (`--task-history-limit` per slot) and then
//! deleted. Invariant: at most one live task per slot (per node for global services).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shoal_api_types::{
    Node, NodeAvailability, NodeState, RestartCondition, Service, ServiceMode, TaskState,
};

use crate::reconcile::record::TaskTemplate;
use crate::reconcile::TaskRecord;

/// Default delay before a task that exited is replaced.
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(1);

fn created(t: &TaskRecord) -> (Option<DateTime<Utc>>, &str) {
    (t.metadata.creation_timestamp, t.metadata.name.as_str())
}

/// A task to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    /// Replicated slot.
    pub slot: Option<u64>,
    /// Global: the node it is for.
    pub node: Option<String>,
    /// Restart count in the slot.
    pub attempt: u32,
}

/// What to change about a service's tasks.
#[derive(Debug, Clone, Default)]
pub struct ServicePlan {
    /// Tasks to create.
    pub create: Vec<NewTask>,
    /// Tasks to stop (desired state shutdown).
    pub shutdown: Vec<Arc<TaskRecord>>,
    /// Tasks to delete (with their addresses).
    pub delete: Vec<Arc<TaskRecord>>,
    /// Look again after this long (a restart delay is running).
    pub requeue: Option<Duration>,
    /// How many tasks should run.
    pub desired: u64,
    /// Live tasks made from an older spec, for the updater ([`super::update`]).
    pub outdated: Vec<Outdated>,
}

/// A live task made from an older spec than the service's.
#[derive(Debug, Clone)]
pub struct Outdated {
    /// The task.
    pub task: Arc<TaskRecord>,
    /// The task that replaces it.
    pub replacement: NewTask,
    /// A live task on the current spec already in its slot (a start-first replacement).
    pub successor: Option<Arc<TaskRecord>>,
}

impl ServicePlan {
    fn requeue_in(&mut self, d: Duration) {
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }
}

/// Whether a node may receive new tasks of `service`.
pub fn node_eligible(node: &Node, service: &Service) -> bool {
    node.status.state == NodeState::Ready
        && node.spec.availability == NodeAvailability::Active
        && service
            .spec
            .constraints()
            .iter()
            .all(|c| c.matches(&node.metadata.name, &node.spec.labels))
}

/// Decides creates, stops and deletes for one service (`None`: deleted) from its tasks and
/// the nodes, at `now`.
pub fn plan_service(
    service: Option<&Service>,
    tasks: &[Arc<TaskRecord>],
    nodes: &BTreeMap<String, Arc<Node>>,
    now: DateTime<Utc>,
    history: usize,
) -> ServicePlan {
    let mut plan = ServicePlan::default();
    let Some(service) = service else {
        retire(tasks, nodes, &mut plan);
        return plan;
    };
    match service.spec.mode {
        ServiceMode::Replicated => {
            let n = service.spec.replica_count();
            plan.desired = n;
            let outdates = Outdates::new(service);
            // Slots 1..=n by index (most hold one task); others (0, above n) apart.
            let mut wanted: Vec<Vec<Arc<TaskRecord>>> = vec![Vec::new(); n as usize];
            let mut others: BTreeMap<u64, Vec<Arc<TaskRecord>>> = BTreeMap::new();
            for t in tasks {
                match t.spec.slot.unwrap_or(0) {
                    slot @ 1.. if slot <= n => wanted[slot as usize - 1].push(t.clone()),
                    slot => others.entry(slot).or_default().push(t.clone()),
                }
            }
            // In slot order, as one map of every slot would go.
            if let Some(ts) = others.remove(&0) {
                retire(&ts, nodes, &mut plan);
            }
            for (i, ts) in wanted.into_iter().enumerate() {
                let target = NewTask {
                    slot: Some(i as u64 + 1),
                    node: None,
                    attempt: 0,
                };
                plan_slot(&outdates, &ts, nodes, now, history, target, &mut plan);
            }
            for ts in others.values() {
                retire(ts, nodes, &mut plan);
            }
        }
        ServiceMode::Global => {
            let outdates = Outdates::new(service);
            let eligible: BTreeSet<&String> = nodes
                .iter()
                .filter(|(_, n)| node_eligible(n, service))
                .map(|(name, _)| name)
                .collect();
            plan.desired = eligible.len() as u64;
            let mut by_node: BTreeMap<String, Vec<Arc<TaskRecord>>> = BTreeMap::new();
            for t in tasks {
                let node = t
                    .spec
                    .node
                    .clone()
                    .or_else(|| t.pinned_node().map(str::to_string))
                    .unwrap_or_default();
                by_node.entry(node).or_default().push(t.clone());
            }
            for name in &eligible {
                by_node.entry((*name).clone()).or_default();
            }
            for (name, ts) in by_node {
                let paused = nodes.get(&name).is_some_and(|n| {
                    n.spec.availability == NodeAvailability::Pause
                        && n.status.state != NodeState::Down
                });
                if eligible.contains(&name) {
                    let target = NewTask {
                        slot: None,
                        node: Some(name.clone()),
                        attempt: 0,
                    };
                    plan_slot(&outdates, &ts, nodes, now, history, target, &mut plan);
                } else if paused {
                    // No new tasks; running ones stay.
                    gc_history(&ts, history, &mut plan);
                } else {
                    retire(&ts, nodes, &mut plan);
                }
            }
        }
    }
    plan
}

/// Whether a task was made from a spec that differs from the service's current one in
/// anything the task runs with (not merely in the replica count).
pub fn is_outdated(service: &Service, t: &TaskRecord) -> bool {
    service.spec.outdates(t.runs_with())
}

/// [`is_outdated`] for many tasks of one service in one pass, compared once per task
/// template (tasks made from one service version share one).
pub struct Outdates<'a> {
    service: &'a Service,
    /// By the template's address; the template is held, so the address is not reused.
    seen: RefCell<HashMap<usize, (Arc<TaskTemplate>, bool)>>,
}

impl<'a> Outdates<'a> {
    /// Compares with `service`.
    pub fn new(service: &'a Service) -> Self {
        Outdates {
            service,
            seen: RefCell::default(),
        }
    }

    /// Whether `t` is out of date, as [`is_outdated`].
    pub fn check(&self, t: &TaskRecord) -> bool {
        let template = &t.spec.template;
        let at = Arc::as_ptr(template) as usize;
        if let Some((_, outdated)) = self.seen.borrow().get(&at) {
            return *outdated;
        }
        let outdated = is_outdated(self.service, t);
        self.seen
            .borrow_mut()
            .insert(at, (template.clone(), outdated));
        outdated
    }
}

/// Removes every task of a slot that is no longer wanted: unstarted ones are deleted,
/// started ones stopped, ended ones deleted.
fn retire(tasks: &[Arc<TaskRecord>], nodes: &BTreeMap<String, Arc<Node>>, plan: &mut ServicePlan) {
    for t in tasks {
        let gone = match &t.spec.node {
            None => true,
            Some(n) => nodes
                .get(n)
                .is_none_or(|n| n.status.state == NodeState::Down),
        };
        if t.status.state.is_terminal() || gone {
            plan.delete.push(t.clone());
        } else if t.spec.desired_state == TaskState::Running {
            plan.shutdown.push(t.clone());
        }
    }
}

/// Keeps exactly one live task in a slot (or node, for global services).
fn plan_slot(
    outdates: &Outdates<'_>,
    tasks: &[Arc<TaskRecord>],
    nodes: &BTreeMap<String, Arc<Node>>,
    now: DateTime<Utc>,
    history: usize,
    target: NewTask,
    plan: &mut ServicePlan,
) {
    let mut keep: Vec<&Arc<TaskRecord>> = vec![];
    for t in tasks.iter().filter(|t| t.is_live()) {
        match t.spec.node.as_ref().map(|n| nodes.get(n)) {
            // Its node was removed: the task is gone with it.
            Some(None) => plan.delete.push(t.clone()),
            Some(Some(n)) if n.spec.availability == NodeAvailability::Drain => {
                plan.shutdown.push(t.clone())
            }
            _ => keep.push(t),
        }
    }
    // Prefer a running task, then the newest. A slot may hold one task on the current spec
    // next to one on an older spec (a start-first replacement in progress); the updater
    // stops the old one.
    keep.sort_by(|a, b| {
        let ra = a.status.state == TaskState::Running;
        let rb = b.status.state == TaskState::Running;
        rb.cmp(&ra).then_with(|| created(b).cmp(&created(a)))
    });
    let (current, old): (Vec<&Arc<TaskRecord>>, Vec<&Arc<TaskRecord>>) =
        keep.iter().partition(|t| !outdates.check(t));
    let successor = current.first().map(|t| (*t).clone());
    let predecessor = old.first().copied();
    let keep: Vec<&Arc<TaskRecord>> = match (current.first(), predecessor) {
        (Some(c), Some(o)) => {
            let mut rest: Vec<&Arc<TaskRecord>> = current[1..].to_vec();
            rest.extend(&old[1..]);
            [*c, o].into_iter().chain(rest).collect()
        }
        _ => keep,
    };
    let kept = if successor.is_some() && predecessor.is_some() {
        2
    } else {
        1
    };
    for extra in keep.iter().skip(kept) {
        if extra.spec.node.is_none() {
            plan.delete.push((*extra).clone());
        } else {
            plan.shutdown.push((*extra).clone());
        }
    }
    // An ended task in a slot another task holds is history (a start-first replacement
    // that failed next to the task it was to replace): no longer wanted running.
    if !keep.is_empty() {
        for t in tasks {
            if t.status.state.is_terminal() && t.spec.desired_state == TaskState::Running {
                plan.shutdown.push(t.clone());
            }
        }
    }
    // Stopped before it ever reached a node: nothing to wait for.
    for t in tasks {
        if t.spec.desired_state != TaskState::Running
            && t.spec.node.is_none()
            && !t.status.state.is_terminal()
        {
            plan.delete.push(t.clone());
        }
    }
    if let Some(old) = predecessor {
        plan.outdated.push(Outdated {
            task: old.clone(),
            replacement: NewTask {
                attempt: old.attempt(),
                ..target.clone()
            },
            successor,
        });
    }
    if keep.is_empty() {
        let last = tasks.iter().max_by(|a, b| created(a).cmp(&created(b)));
        match last {
            None => plan.create.push(target),
            // An update stops the old task first (stop-first): its replacement waits until
            // it ended, so the slot never runs two.
            Some(last)
                if !last.status.state.is_terminal()
                    && last.spec.node.is_some()
                    && outdates.check(last) => {}
            Some(last) => match restart_decision(outdates.service, last, now) {
                Restart::Now => {
                    // The ended task is history now: as in Swarm, it is no longer wanted
                    // running (`service ps` shows it as Shutdown / Failed).
                    if last.spec.desired_state == TaskState::Running
                        && last.status.state.is_terminal()
                    {
                        plan.shutdown.push(last.clone());
                    }
                    plan.create.push(NewTask {
                        attempt: last.attempt() + 1,
                        ..target
                    })
                }
                Restart::After(d) => plan.requeue_in(d),
                Restart::Never => {}
            },
        }
    }
    gc_history(tasks, history, plan);
}

/// Deletes the oldest ended tasks beyond `history`.
fn gc_history(tasks: &[Arc<TaskRecord>], history: usize, plan: &mut ServicePlan) {
    let mut ended: Vec<&Arc<TaskRecord>> = tasks
        .iter()
        .filter(|t| t.status.state.is_terminal())
        .collect();
    ended.sort_by(|a, b| created(b).cmp(&created(a)));
    for t in ended.into_iter().skip(history) {
        plan.delete.push(t.clone());
    }
}

enum Restart {
    Now,
    After(Duration),
    Never,
}

fn restart_decision(service: &Service, last: &TaskRecord, now: DateTime<Utc>) -> Restart {
    let policy = &service.spec.restart_policy;
    let state = last.status.state;
    let stopped_by_us = last.spec.desired_state != TaskState::Running;
    if !state.is_terminal() {
        // Being stopped by us (drain): replace right away.
        return Restart::Now;
    }
    let (allowed, delayed) = match state {
        TaskState::Orphaned => (true, false),
        _ if stopped_by_us => (true, false),
        TaskState::Complete => (policy.condition == RestartCondition::Any, true),
        TaskState::Failed | TaskState::Rejected => {
            (policy.condition != RestartCondition::None, true)
        }
        _ => (policy.condition == RestartCondition::Any, true),
    };
    if !allowed {
        return Restart::Never;
    }
    if let Some(max) = policy.max_attempts.filter(|m| *m > 0) {
        if delayed && last.attempt() >= max {
            return Restart::Never;
        }
    }
    if delayed {
        let delay = policy
            .delay_seconds
            .map(|s| Duration::from_secs(s as u64))
            .unwrap_or(DEFAULT_RESTART_DELAY);
        let ended = last
            .status
            .timestamp
            .or(last.metadata.creation_timestamp)
            .unwrap_or(now);
        let due = ended + chrono::Duration::from_std(delay).unwrap_or_default();
        if due > now {
            return Restart::After((due - now).to_std().unwrap_or(delay));
        }
    }
    Restart::Now
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::labels;
    use shoal_api_types::{NodeSpec, NodeStatus, RestartPolicy, ServiceSpec, Task, TaskSpec};

    fn service(replicas: i64) -> Service {
        let mut s = Service::new(
            "api",
            ServiceSpec {
                image: "busybox".into(),
                replicas: Some(replicas),
                ..Default::default()
            },
        );
        s.metadata.generation = 1;
        s
    }

    fn node(name: &str, state: NodeState, availability: NodeAvailability) -> (String, Arc<Node>) {
        let mut n = Node::new(
            name,
            NodeSpec {
                availability,
                ..Default::default()
            },
        );
        n.status = NodeStatus {
            state,
            ..Default::default()
        };
        (name.to_string(), Arc::new(n))
    }

    fn nodes() -> BTreeMap<String, Arc<Node>> {
        ["n1", "n2", "n3"]
            .iter()
            .map(|n| node(n, NodeState::Ready, NodeAvailability::Active))
            .collect()
    }

    fn rec(t: Task) -> Arc<TaskRecord> {
        Arc::new(TaskRecord::from(t))
    }

    fn task(
        id: &str,
        slot: u64,
        node: Option<&str>,
        state: TaskState,
        age_s: i64,
    ) -> Arc<TaskRecord> {
        rec(task_obj(id, slot, node, state, age_s))
    }

    fn task_obj(id: &str, slot: u64, node: Option<&str>, state: TaskState, age_s: i64) -> Task {
        let mut t = Task::new(
            id,
            TaskSpec {
                service: "api".into(),
                slot: Some(slot),
                node: node.map(Into::into),
                desired_state: TaskState::Running,
                image: "busybox".into(),
                stop_grace_period_seconds: 10,
                ..Default::default()
            },
        );
        t.metadata.creation_timestamp = Some(Utc::now() - chrono::Duration::seconds(age_s));
        t.status.state = state;
        t.status.timestamp = Some(Utc::now() - chrono::Duration::seconds(age_s));
        t
    }

    fn slots(plan: &ServicePlan) -> Vec<u64> {
        plan.create.iter().filter_map(|c| c.slot).collect()
    }

    fn ids(ts: &[Arc<TaskRecord>]) -> Vec<&str> {
        let mut v: Vec<&str> = ts.iter().map(|t| t.metadata.name.as_str()).collect();
        v.sort();
        v
    }

    #[test]
    fn orchestrator_should_fill_missing_slots() {
        let tasks = vec![task("a", 2, Some("n1"), TaskState::Running, 10)];
        let plan = plan_service(Some(&service(3)), &tasks, &nodes(), Utc::now(), 3);
        assert_eq!(slots(&plan), vec![1, 3]);
        assert!(plan.shutdown.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.desired, 3);
    }

    #[test]
    fn orchestrator_should_scale_down_the_highest_slots() {
        let tasks: Vec<_> = (1..=4)
            .map(|s| task(&format!("t{s}"), s, Some("n1"), TaskState::Running, 10))
            .collect();
        let mut pending = task("t5", 5, None, TaskState::Pending, 10);
        Arc::make_mut(&mut pending);
        let mut all = tasks.clone();
        all.push(pending);
        let plan = plan_service(Some(&service(2)), &all, &nodes(), Utc::now(), 3);
        assert!(plan.create.is_empty());
        assert_eq!(ids(&plan.shutdown), vec!["t3", "t4"]);
        assert_eq!(
            ids(&plan.delete),
            vec!["t5"],
            "never started: deleted at once"
        );
    }

    #[test]
    fn orchestrator_should_replace_orphaned_tasks_at_once_and_failed_ones_after_the_delay() {
        let now = Utc::now();
        let tasks = vec![
            task("o", 1, Some("n1"), TaskState::Orphaned, 0),
            task("f", 2, Some("n1"), TaskState::Failed, 0),
        ];
        let plan = plan_service(Some(&service(2)), &tasks, &nodes(), now, 3);
        assert_eq!(slots(&plan), vec![1]);
        assert!(
            plan.requeue.is_some_and(|d| d <= Duration::from_secs(2)),
            "{:?}",
            plan.requeue
        );
        let later = now + chrono::Duration::seconds(2);
        let plan = plan_service(Some(&service(2)), &tasks, &nodes(), later, 3);
        assert_eq!(slots(&plan), vec![1, 2]);
        assert_eq!(plan.create[1].attempt, 1);
    }

    #[test]
    fn orchestrator_should_follow_the_restart_condition_and_max_attempts() {
        let mut svc = service(1);
        svc.spec.restart_policy = RestartPolicy {
            condition: RestartCondition::OnFailure,
            delay_seconds: Some(0),
            max_attempts: Some(2),
        };
        let later = Utc::now() + chrono::Duration::seconds(5);
        let done = vec![task("c", 1, Some("n1"), TaskState::Complete, 0)];
        assert!(plan_service(Some(&svc), &done, &nodes(), later, 3)
            .create
            .is_empty());
        let mut failed = task_obj("f", 1, Some("n1"), TaskState::Failed, 0);
        failed
            .metadata
            .labels
            .insert(labels::ATTEMPT.into(), "2".into());
        let plan = plan_service(Some(&svc), &[rec(failed)], &nodes(), later, 3);
        assert!(plan.create.is_empty(), "max attempts reached");
    }

    #[test]
    fn orchestrator_should_keep_a_bounded_history_per_slot() {
        let mut tasks: Vec<_> = (0..5)
            .map(|i| {
                task(
                    &format!("old{i}"),
                    1,
                    Some("n1"),
                    TaskState::Failed,
                    100 - i,
                )
            })
            .collect();
        tasks.push(task("live", 1, Some("n2"), TaskState::Running, 1));
        let plan = plan_service(Some(&service(1)), &tasks, &nodes(), Utc::now(), 3);
        assert_eq!(ids(&plan.delete), vec!["old0", "old1"]);
        assert!(plan.create.is_empty());
    }

    #[test]
    fn orchestrator_should_mark_an_ended_task_shutdown_when_it_is_replaced() {
        let svc = service(1);
        // Failed a minute ago: past the restart delay.
        let failed = task("f", 1, Some("n1"), TaskState::Failed, 60);
        let plan = plan_service(Some(&svc), &[failed], &nodes(), Utc::now(), 3);
        assert_eq!(plan.create.len(), 1, "a replacement");
        assert_eq!(
            plan.shutdown.iter().map(|t| t.name()).collect::<Vec<_>>(),
            vec!["f"],
            "history wants it stopped"
        );
    }

    #[test]
    fn orchestrator_should_replace_tasks_on_drained_nodes() {
        let mut ns = nodes();
        let (k, v) = node("n1", NodeState::Ready, NodeAvailability::Drain);
        ns.insert(k, v);
        let tasks = vec![task("a", 1, Some("n1"), TaskState::Running, 10)];
        let plan = plan_service(Some(&service(1)), &tasks, &ns, Utc::now(), 3);
        assert_eq!(ids(&plan.shutdown), vec!["a"]);
        assert_eq!(slots(&plan), vec![1]);
    }

    #[test]
    fn orchestrator_should_run_one_global_task_per_eligible_node() {
        let mut svc = service(0);
        svc.spec.mode = ServiceMode::Global;
        svc.spec.replicas = None;
        svc.spec.placement.constraints = vec!["node.name!=n3".into()];
        let mut ns = nodes();
        let (k, v) = node("n4", NodeState::Down, NodeAvailability::Active);
        ns.insert(k, v);
        let mut on_n3 = task_obj("x", 0, Some("n3"), TaskState::Running, 10);
        on_n3.spec.slot = None;
        let plan = plan_service(Some(&svc), &[rec(on_n3)], &ns, Utc::now(), 3);
        let targets: Vec<_> = plan.create.iter().filter_map(|c| c.node.clone()).collect();
        assert_eq!(targets, vec!["n1", "n2"]);
        assert_eq!(
            ids(&plan.shutdown),
            vec!["x"],
            "n3 no longer matches the constraints"
        );
        assert_eq!(plan.desired, 2);
    }

    #[test]
    fn outdated_tasks_should_be_left_to_the_updater_and_a_slot_may_hold_a_successor() {
        let mut svc = service(3);
        svc.spec.image = "busybox:2".into();
        let mut tasks: Vec<Arc<TaskRecord>> = (1..=3)
            .map(|s| task(&format!("t{s}"), s, Some("n1"), TaskState::Running, 10))
            .collect();
        let plan = plan_service(Some(&svc), &tasks, &nodes(), Utc::now(), 3);
        assert!(
            plan.shutdown.is_empty() && plan.create.is_empty(),
            "{plan:?}"
        );
        let listed: Vec<&str> = plan
            .outdated
            .iter()
            .map(|o| o.task.metadata.name.as_str())
            .collect();
        assert_eq!(listed, ["t1", "t2", "t3"]);
        assert_eq!(plan.outdated[0].replacement.slot, Some(1));
        // A start-first replacement next to the old task: both stay; the updater decides.
        let mut new = task_obj("n1", 1, Some("n2"), TaskState::Starting, 0);
        new.spec.image = "busybox:2".into();
        tasks.push(rec(new));
        let plan = plan_service(Some(&svc), &tasks, &nodes(), Utc::now(), 3);
        assert!(
            plan.shutdown.is_empty() && plan.create.is_empty(),
            "{plan:?}"
        );
        let successor = plan.outdated[0].successor.as_ref().expect("a successor");
        assert_eq!(successor.metadata.name, "n1");
        // A scale alone makes nothing out of date.
        let plan = plan_service(Some(&service(3)), &tasks[..3], &nodes(), Utc::now(), 3);
        assert!(plan.outdated.is_empty(), "{plan:?}");
    }

    #[test]
    fn an_ended_task_next_to_a_live_one_should_become_history() {
        let live = task("t1", 1, Some("n1"), TaskState::Running, 10);
        let failed = task("t2", 1, Some("n1"), TaskState::Failed, 1);
        let plan = plan_service(Some(&service(1)), &[live, failed], &nodes(), Utc::now(), 3);
        assert_eq!(ids(&plan.shutdown), vec!["t2"]);
        assert!(plan.create.is_empty(), "{plan:?}");
    }

    #[test]
    fn a_slot_whose_old_task_is_stopping_should_wait_for_it_before_replacing_it() {
        let mut svc = service(1);
        svc.spec.force_update = 1;
        let mut old = task_obj("t1", 1, Some("n1"), TaskState::Running, 10);
        old.spec.desired_state = TaskState::Shutdown;
        let plan = plan_service(Some(&svc), &[rec(old.clone())], &nodes(), Utc::now(), 3);
        assert!(plan.create.is_empty(), "stop-first: {plan:?}");
        old.status.state = TaskState::Shutdown;
        let plan = plan_service(Some(&svc), &[rec(old)], &nodes(), Utc::now(), 3);
        assert_eq!(slots(&plan), vec![1]);
    }

    #[test]
    fn orchestrator_should_stop_and_delete_everything_of_a_deleted_service() {
        let tasks = vec![
            task("run", 1, Some("n1"), TaskState::Running, 1),
            task("pend", 2, None, TaskState::Pending, 1),
            task("done", 3, Some("n1"), TaskState::Shutdown, 1),
            task("lost", 4, Some("gone"), TaskState::Running, 1),
        ];
        let plan = plan_service(None, &tasks, &nodes(), Utc::now(), 3);
        assert_eq!(ids(&plan.shutdown), vec!["run"]);
        assert_eq!(ids(&plan.delete), vec!["done", "lost", "pend"]);
    }
}
