//! Waiting for a service to converge, shown as `docker service create` shows it:
//!
//! ```text
//! overall progress: 2 out of 3 tasks
//! 1/3: running
//! 2/3: running
//! 3/3: pending (no suitable node (host port 8080 in use on 3 nodes))
//! verify: converged
//! ```
//!
//! While a rolling update (or rollback) runs, its state is the second line
//! (`update: updating`, `update: paused (update paused due to failure of task api.3: ...)`).
//!
//! [`progress`] is a pure function from a service, its tasks and the nodes to what is
//! shown; [`verdict`] decides from it whether the wait is over; [`Renderer`] turns
//! successive renderings into terminal output (redrawn in place with ANSI escapes on a
//! terminal, only changed lines otherwise); [`wait_for`] polls the API until every service
//! is done, failed, or the timeout passed.
//!
//! A service has converged when the controller has observed its current generation
//! (`status.observedGeneration >= metadata.generation`) and, for every wanted slot (one per
//! replica; in global mode one per ready, active node that satisfies the constraints, or
//! `status.desiredTasks` once observed), the slot's task wants to run, runs, and was made
//! from the service's current spec (so `service update` waits until every task is replaced).
//!
//! Once the controller observed the generation the command wrote, `status.updateStatus`
//! decides when there is one (the updater's monitor period is part of the wait):
//! `completed` is success; `paused`, `rollback_paused`, and `rollback_completed` after an
//! update (the failure action rolled it back) are failures with the updater's message; for
//! `service rollback`, `rollback_completed` is success. Without an update status (nothing
//! needed replacing, or a create or scale) convergence decides.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Result};
use shoal_api_types::{
    Constraint, Node, NodeAvailability, NodeSpec, NodeState, Service, ServiceMode, ServiceSpec,
    Task, TaskSpec, TaskState, UpdateState, UpdateStatus,
};

use crate::client::Client;
use crate::format::task_error;

/// One wanted slot (or node, in global mode) and the state of its task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotProgress {
    /// `1/3` in replicated mode, the node's name in global mode.
    pub label: String,
    /// The task's name, `api.1` or `api.node-1`.
    pub task: String,
    /// The task's state in lowercase, or `new` when the slot has no task yet.
    pub state: String,
    /// The error, pending reason or last failure of the slot; empty when there is none.
    pub detail: String,
    /// Whether the slot's task runs and is meant to.
    pub running: bool,
}

/// Where a service stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The service.
    pub service: String,
    /// How many tasks should run.
    pub desired: u64,
    /// How many of them run.
    pub running: u64,
    /// The service's generation, and whether the controller has observed it.
    pub generation: i64,
    /// Whether the controller has observed the current generation.
    pub observed: bool,
    /// One entry per wanted slot.
    pub slots: Vec<SlotProgress>,
    /// The rolling update's state and message (`status.updateStatus`), if any.
    pub update: Option<(UpdateState, String)>,
}

impl Progress {
    /// Whether the service has converged.
    pub fn converged(&self) -> bool {
        self.observed && self.running >= self.desired && self.slots.iter().all(|s| s.running)
    }

    /// The lines shown while waiting.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "overall progress: {} out of {} tasks",
            self.running, self.desired
        )];
        match &self.update {
            Some((state, m)) if m.is_empty() => out.push(format!("update: {state}")),
            Some((state, m)) => out.push(format!("update: {state} ({m})")),
            None => {}
        }
        for s in &self.slots {
            if s.detail.is_empty() {
                out.push(format!("{}: {}", s.label, s.state));
            } else {
                out.push(format!("{}: {} ({})", s.label, s.state, s.detail));
            }
        }
        out
    }

    /// What is still missing, for the timeout message: `1 of 3 tasks running; api.2:
    /// pending (no suitable node ...)`.
    pub fn missing(&self) -> String {
        let mut parts = vec![];
        if !self.observed {
            parts.push(format!(
                "the controller has not yet processed generation {} of service {} (is it running?)",
                self.generation, self.service
            ));
        }
        if let Some((state, _)) = &self.update {
            parts.push(format!("the update is {state}"));
        }
        parts.push(format!(
            "{} of {} tasks running",
            self.running, self.desired
        ));
        for s in self.slots.iter().filter(|s| !s.running) {
            let detail = match (s.state.as_str(), s.detail.as_str()) {
                ("new", "") => " (no task yet)".to_string(),
                (_, "") => String::new(),
                (_, d) => format!(" ({d})"),
            };
            parts.push(format!("{}: {}{detail}", s.task, s.state));
        }
        parts.join("; ")
    }
}

fn lower(state: TaskState) -> String {
    state.to_string().to_lowercase()
}

/// Whether a node may run a task of `spec`: ready, active and satisfying the constraints.
pub fn node_eligible(node: &Node, spec: &ServiceSpec) -> bool {
    node.status.state == NodeState::Ready
        && node.spec.availability == NodeAvailability::Active
        && spec
            .constraints()
            .iter()
            .all(|c: &Constraint| c.matches(node.name(), &node.spec.labels))
}

/// The most recently created of `tasks`.
fn newest<'a>(tasks: &[&'a Task]) -> Option<&'a Task> {
    tasks
        .iter()
        .copied()
        .max_by_key(|t| (t.metadata.creation_timestamp, t.metadata.revision()))
}

/// The slot's current task (the newest that should run, else the newest) and the error
/// of the newest failed attempt of this service generation, if the current one is not it.
fn slot_progress(
    service: &Service,
    label: String,
    task_name: String,
    tasks: &[&Task],
) -> SlotProgress {
    let live: Vec<&Task> = tasks
        .iter()
        .copied()
        .filter(|t| t.spec.desired_state == TaskState::Running)
        .collect();
    let current = newest(&live).or_else(|| newest(tasks));
    let Some(t) = current else {
        return SlotProgress {
            label,
            task: task_name,
            state: "new".into(),
            detail: String::new(),
            running: false,
        };
    };
    // A task made from an older spec (during `service update`) has not converged yet.
    let stale = service.spec.outdates(&t.spec);
    let running = t.spec.desired_state == TaskState::Running
        && t.status.state == TaskState::Running
        && !stale;
    let mut detail = if running {
        String::new()
    } else if stale && t.status.state == TaskState::Running {
        "old spec, to be replaced".into()
    } else {
        task_error(t)
    };
    if !running && detail.is_empty() {
        let failed: Vec<&Task> = tasks
            .iter()
            .copied()
            .filter(|f| {
                matches!(f.status.state, TaskState::Failed | TaskState::Rejected)
                    && f.metadata.name != t.metadata.name
                    && !f.status.err.is_empty()
                    && f.spec.service_generation >= service.metadata.generation
            })
            .collect();
        if let Some(f) = newest(&failed) {
            detail = format!("previous task {}: {}", lower(f.status.state), f.status.err);
        }
    }
    SlotProgress {
        label,
        task: task_name,
        state: lower(t.status.state),
        detail,
        running,
    }
}

/// Where `service` stands, given its tasks (others are ignored) and the nodes (used in
/// global mode).
pub fn progress(service: &Service, tasks: &[Task], nodes: &[Node]) -> Progress {
    let name = service.name();
    let observed = service.status.observed_generation >= service.metadata.generation;
    let mine: Vec<&Task> = tasks.iter().filter(|t| t.spec.service == name).collect();
    let (desired, slots) = match service.spec.mode {
        ServiceMode::Replicated => {
            let desired = service.spec.replica_count();
            let mut by_slot: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
            for t in &mine {
                if let Some(slot) = t.spec.slot {
                    by_slot.entry(slot).or_default().push(t);
                }
            }
            let slots: Vec<SlotProgress> = (1..=desired)
                .map(|slot| {
                    let ts = by_slot.remove(&slot).unwrap_or_default();
                    let task_name = TaskSpec {
                        service: name.into(),
                        slot: Some(slot),
                        ..Default::default()
                    }
                    .display_name();
                    slot_progress(service, format!("{slot}/{desired}"), task_name, &ts)
                })
                .collect();
            (desired, slots)
        }
        ServiceMode::Global => {
            let eligible: BTreeSet<&str> = nodes
                .iter()
                .filter(|n| node_eligible(n, &service.spec))
                .map(|n| n.name())
                .collect();
            let mut by_node: BTreeMap<&str, Vec<&Task>> =
                eligible.iter().map(|n| (*n, vec![])).collect();
            for t in &mine {
                if let Some(node) = t.spec.node.as_deref() {
                    if eligible.contains(node) || t.spec.desired_state == TaskState::Running {
                        by_node.entry(node).or_default().push(t);
                    }
                }
            }
            let desired = if observed && service.status.desired_tasks > 0 {
                service.status.desired_tasks
            } else {
                eligible.len() as u64
            };
            let slots: Vec<SlotProgress> = by_node
                .into_iter()
                .map(|(node, ts)| {
                    let task_name = TaskSpec {
                        service: name.into(),
                        node: Some(node.into()),
                        ..Default::default()
                    }
                    .display_name();
                    slot_progress(service, node.to_string(), task_name, &ts)
                })
                .collect();
            (desired, slots)
        }
    };
    let running = slots.iter().filter(|s| s.running).count() as u64;
    Progress {
        service: name.to_string(),
        desired,
        running,
        generation: service.metadata.generation,
        observed,
        slots,
        update: service
            .status
            .update_status
            .as_ref()
            .map(|u| (u.state, reason(u).to_string())),
    }
}

/// The part of an update's message worth showing: why it paused, rolled back or was rolled
/// back (the updater wraps the reason of a finished rollback as `rollback completed
/// (<reason>)`); nothing for `updating` and `completed`, whose state says it all.
pub fn reason(u: &UpdateStatus) -> &str {
    match u.state {
        UpdateState::Updating | UpdateState::Completed => "",
        _ => u
            .message
            .strip_prefix("rollback completed (")
            .and_then(|m| m.strip_suffix(')'))
            .unwrap_or(&u.message),
    }
}

/// What the command that is waiting asked for: it decides whether a finished rollback is
/// the goal or a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Intent {
    /// A create, update, scale or apply: a rollback means the change failed.
    #[default]
    Change,
    /// `service rollback` (or `service update --rollback`).
    Rollback,
}

/// One service to wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The service.
    pub name: String,
    /// The generation the command wrote: the status of earlier generations is ignored.
    /// `None`: the service's generation when it is read.
    pub generation: Option<i64>,
    /// What the command asked for.
    pub intent: Intent,
}

impl Target {
    /// Waits for `name` to converge at whatever generation it has (create, scale, apply).
    pub fn converge(name: impl Into<String>) -> Target {
        Target {
            name: name.into(),
            generation: None,
            intent: Intent::Change,
        }
    }
}

/// Whether a wait is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not yet.
    Waiting,
    /// Done: converged, or the update (rollback) completed.
    Done,
    /// The update stopped short; the message says why.
    Failed(String),
}

/// Decides from the service and its [`Progress`] whether the wait for `target` is over.
pub fn verdict(service: &Service, p: &Progress, target: &Target) -> Verdict {
    let written = target.generation.unwrap_or(service.metadata.generation);
    if service.status.observed_generation < written {
        return Verdict::Waiting;
    }
    let Some(update) = &service.status.update_status else {
        return if p.converged() {
            Verdict::Done
        } else {
            Verdict::Waiting
        };
    };
    let said = |fallback: &str| match reason(update) {
        "" => fallback.to_string(),
        r => r.to_string(),
    };
    let hint = |what: &str| {
        format!(
            "{what} (see `shoal service ps {name}`; `shoal service rollback {name}` goes back, \
             another `shoal service update {name}` starts afresh)",
            name = service.name()
        )
    };
    match (update.state, target.intent) {
        (UpdateState::Updating | UpdateState::RollbackStarted, _) => Verdict::Waiting,
        (UpdateState::Completed, _) | (UpdateState::RollbackCompleted, Intent::Rollback) => {
            Verdict::Done
        }
        (UpdateState::Paused, _) => Verdict::Failed(hint(&said("update paused"))),
        (UpdateState::RollbackPaused, _) => Verdict::Failed(hint(&said("rollback paused"))),
        (UpdateState::RollbackCompleted, Intent::Change) => {
            let m = said("update rolled back");
            Verdict::Failed(if m.starts_with("update rolled back") {
                m
            } else {
                format!("update rolled back: {m}")
            })
        }
    }
}

/// Turns successive renderings into output: on a terminal the block is redrawn in place;
/// otherwise each line is printed once, when it first appears.
#[derive(Debug, Default)]
pub struct Renderer {
    tty: bool,
    shown: Vec<String>,
    seen: BTreeSet<String>,
}

impl Renderer {
    /// A renderer for a terminal (`tty`) or a pipe/file.
    pub fn new(tty: bool) -> Self {
        Renderer {
            tty,
            ..Default::default()
        }
    }

    /// The bytes to write to show `lines`.
    pub fn update(&mut self, lines: &[String]) -> String {
        let mut out = String::new();
        if self.tty {
            if self.shown == lines {
                return out;
            }
            if !self.shown.is_empty() {
                // Up to the first line of the block, then clear to the end of the screen.
                out.push_str(&format!("\x1b[{}A\x1b[J", self.shown.len()));
            }
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
            self.shown = lines.to_vec();
        } else {
            for l in lines {
                if self.seen.insert(l.clone()) {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// `120s` or `500ms`, for messages.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

const POLL: Duration = Duration::from_millis(500);

/// How to wait: the `--timeout`, whether to print progress, whether `out` is a terminal.
#[derive(Debug, Clone, Copy)]
pub struct WaitOptions {
    /// Fail after this long.
    pub timeout: Duration,
    /// Print nothing while waiting (`-q`).
    pub quiet: bool,
    /// Redraw in place.
    pub tty: bool,
}

impl WaitOptions {
    /// From the `-d`/`--timeout`/`-q` flags.
    pub fn new(args: &crate::args::WaitArgs, tty: bool) -> WaitOptions {
        WaitOptions {
            timeout: args.timeout,
            quiet: args.quiet,
            tty,
        }
    }
}

/// Polls until every target is done (see [`verdict`]), printing progress to `out` (redrawn
/// in place on a terminal, nothing when quiet). Fails when a target's update pauses or is
/// rolled back, with the updater's message, or when the timeout passes first, saying what
/// is missing. Ctrl-C stops waiting (not the change, which the controller carries on with).
pub async fn wait_for(
    client: &Client,
    targets: &[Target],
    opts: WaitOptions,
    out: &mut dyn Write,
) -> Result<()> {
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let wait = async {
        for target in targets {
            if targets.len() > 1 && !opts.quiet {
                writeln!(out, "service/{}:", target.name)?;
            }
            wait_for_one(client, target, opts, out).await?;
        }
        Ok(())
    };
    tokio::select! {
        result = wait => result,
        _ = &mut interrupted => bail!(
            "stopped waiting; the change carries on in the background (see `shoal service ps {}`)",
            names.first().map(String::as_str).unwrap_or("NAME")
        ),
    }
}

/// The moment `timeout` from `now` (a huge timeout means "for ever", not an overflow).
fn deadline_after(now: tokio::time::Instant, timeout: Duration) -> tokio::time::Instant {
    now.checked_add(timeout)
        .unwrap_or(now + Duration::from_secs(100 * 365 * 86400))
}

/// The `--timeout` as a wait applies it: it counts from the last progress (more slots
/// running on the current spec than ever before in this wait).
struct Patience {
    timeout: Duration,
    most_running: usize,
    deadline: tokio::time::Instant,
}

impl Patience {
    fn new(timeout: Duration, now: tokio::time::Instant) -> Self {
        Patience {
            timeout,
            most_running: 0,
            deadline: deadline_after(now, timeout),
        }
    }

    /// Books `running` slots seen at `now`; returns how long is left (zero: out of time).
    fn observe(&mut self, running: usize, now: tokio::time::Instant) -> Duration {
        if running > self.most_running {
            self.most_running = running;
            self.deadline = deadline_after(now, self.timeout);
        }
        self.deadline.saturating_duration_since(now)
    }
}

/// Waits for one target. The timeout counts from the last progress: each slot that comes to
/// run on the current spec starts it again, so a long rolling update does not time out
/// while it moves, and one that stalls (or a task that never starts) does.
async fn wait_for_one(
    client: &Client,
    target: &Target,
    opts: WaitOptions,
    out: &mut dyn Write,
) -> Result<()> {
    let name = target.name.as_str();
    let mut renderer = Renderer::new(opts.tty);
    let mut patience = Patience::new(opts.timeout, tokio::time::Instant::now());
    loop {
        let service: Service = match client.get::<ServiceSpec>(name).await {
            Ok(s) => s,
            Err(e) if e.is_not_found() => {
                bail!("service {name} was removed while waiting for it to converge")
            }
            Err(e) => return Err(e.into()),
        };
        let tasks = client.list::<TaskSpec>(&[("service", name)]).await?.items;
        let nodes = match service.spec.mode {
            ServiceMode::Global => client.list::<NodeSpec>(&[]).await?.items,
            ServiceMode::Replicated => vec![],
        };
        let p = progress(&service, &tasks, &nodes);
        let running = p.slots.iter().filter(|s| s.running).count();
        let left = patience.observe(running, tokio::time::Instant::now());
        if !opts.quiet {
            write!(out, "{}", renderer.update(&p.lines()))?;
            out.flush()?;
        }
        match verdict(&service, &p, target) {
            Verdict::Done => {
                if !opts.quiet {
                    writeln!(out, "verify: converged")?;
                }
                return Ok(());
            }
            Verdict::Failed(why) => bail!("service {name}: {why}"),
            Verdict::Waiting => {}
        }
        if left.is_zero() {
            bail!(
                "timed out: no progress for {}: {}",
                format_duration(opts.timeout),
                p.missing()
            );
        }
        tokio::time::sleep(POLL.min(left)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_timeout_should_count_from_the_last_progress() {
        let t0 = tokio::time::Instant::now();
        let s = Duration::from_secs;
        let mut p = super::Patience::new(s(10), t0);
        assert_eq!(p.observe(0, t0 + s(4)), s(6));
        // One more slot runs: the full timeout again.
        assert_eq!(p.observe(1, t0 + s(9)), s(10));
        // A slot that stops and starts again is not progress.
        assert_eq!(p.observe(0, t0 + s(12)), s(7));
        assert_eq!(p.observe(1, t0 + s(15)), s(4));
        assert_eq!(p.observe(1, t0 + s(20)), Duration::ZERO);
    }

    use chrono::{DateTime, Utc};
    use shoal_api_types::{NodeStatus, ServiceStatus, TaskStatus};

    use super::*;

    fn at(secs: i64) -> Option<DateTime<Utc>> {
        Some(DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap())
    }

    fn service(replicas: i64, observed: bool) -> Service {
        let mut s = Service::new(
            "api",
            ServiceSpec {
                image: "busybox".into(),
                replicas: Some(replicas),
                ..Default::default()
            },
        );
        s.metadata.generation = 2;
        s.status = ServiceStatus {
            observed_generation: if observed { 2 } else { 1 },
            ..Default::default()
        };
        s
    }

    fn task(
        id: &str,
        slot: Option<u64>,
        node: Option<&str>,
        desired: TaskState,
        state: TaskState,
        t: i64,
    ) -> Task {
        let mut task = Task::new(
            id,
            TaskSpec {
                service: "api".into(),
                slot,
                node: node.map(str::to_string),
                desired_state: desired,
                service_generation: 2,
                image: "busybox".into(),
                // As the controller makes it from `service(..)`'s spec.
                stop_grace_period_seconds: 10,
                ..Default::default()
            },
        );
        task.metadata.creation_timestamp = at(t);
        task.status = TaskStatus {
            state,
            ..Default::default()
        };
        task
    }

    use TaskState::*;

    #[test]
    fn progress_counts_running_slots_and_explains_the_rest() {
        let mut pending = task("c", Some(3), None, Running, Pending, 3);
        pending.spec.pending_reason = "no suitable node (host port 8080 in use on 3 nodes)".into();
        let tasks = vec![
            task("a", Some(1), Some("n1"), Running, Running, 1),
            task("b", Some(2), Some("n2"), Running, Starting, 2),
            pending,
            task("other", Some(1), Some("n1"), Running, Running, 1),
        ];
        let mut tasks = tasks;
        tasks[3].spec.service = "web".into();
        let p = progress(&service(3, true), &tasks, &[]);
        assert_eq!(
            p.lines(),
            vec![
                "overall progress: 1 out of 3 tasks",
                "1/3: running",
                "2/3: starting",
                "3/3: pending (no suitable node (host port 8080 in use on 3 nodes))",
            ]
        );
        assert!(!p.converged());
        assert_eq!(
            p.missing(),
            "1 of 3 tasks running; api.2: starting; api.3: pending (no suitable node (host port 8080 in use on 3 nodes))"
        );
    }

    #[test]
    fn progress_shows_failures_of_the_slot_while_a_replacement_starts() {
        let mut failed = task("a", Some(1), Some("n1"), Shutdown, Failed, 1);
        failed.status.err = "exit code 127: sleep: not found".into();
        let tasks = vec![
            failed.clone(),
            task("b", Some(1), Some("n1"), Running, Starting, 2),
        ];
        let p = progress(&service(1, true), &tasks, &[]);
        assert_eq!(
            p.lines()[1],
            "1/1: starting (previous task failed: exit code 127: sleep: not found)"
        );
        // The failed task alone: its own error.
        let p = progress(&service(1, true), &[failed], &[]);
        assert_eq!(
            p.lines()[1],
            "1/1: failed (exit code 127: sleep: not found)"
        );
    }

    #[test]
    fn progress_of_an_update_waits_for_tasks_on_the_new_spec() {
        let mut svc = service(2, true);
        svc.spec.image = "busybox:2".into();
        let mut new = task("n", Some(1), Some("n1"), Running, Running, 2);
        new.spec.image = "busybox:2".into();
        let tasks = vec![
            task("a", Some(1), Some("n1"), Shutdown, Shutdown, 1),
            new,
            task("b", Some(2), Some("n1"), Running, Running, 1),
        ];
        let p = progress(&svc, &tasks, &[]);
        assert!(!p.converged());
        assert_eq!(
            p.lines(),
            vec![
                "overall progress: 1 out of 2 tasks",
                "1/2: running",
                "2/2: running (old spec, to be replaced)",
            ]
        );
    }

    #[test]
    fn progress_converges_only_once_the_generation_is_observed() {
        let tasks = vec![task("a", Some(1), Some("n1"), Running, Running, 1)];
        assert!(!progress(&service(1, false), &tasks, &[]).converged());
        assert!(progress(&service(1, false), &tasks, &[])
            .missing()
            .starts_with("the controller has not yet processed generation 2"));
        assert!(progress(&service(1, true), &tasks, &[]).converged());
        assert!(progress(&service(0, true), &[], &[]).converged());
        // Scaled down: slot 2's task is being shut down and does not count.
        let tasks = vec![
            task("a", Some(1), Some("n1"), Running, Running, 1),
            task("b", Some(2), Some("n1"), Shutdown, Running, 1),
        ];
        let p = progress(&service(1, true), &tasks, &[]);
        assert!(p.converged());
        assert_eq!(
            p.lines(),
            vec!["overall progress: 1 out of 1 tasks", "1/1: running"]
        );
    }

    #[test]
    fn progress_of_missing_tasks_says_new() {
        let p = progress(
            &service(2, true),
            &[task("a", Some(1), Some("n1"), Running, Running, 1)],
            &[],
        );
        assert_eq!(p.lines()[2], "2/2: new");
        assert_eq!(
            p.missing(),
            "1 of 2 tasks running; api.2: new (no task yet)"
        );
    }

    fn node(name: &str, state: NodeState, availability: NodeAvailability) -> Node {
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
        n
    }

    #[test]
    fn global_progress_has_one_line_per_eligible_node() {
        let mut s = service(0, false);
        s.spec.mode = ServiceMode::Global;
        s.spec.replicas = None;
        s.spec.placement.constraints = vec!["node.name!=n4".into()];
        let nodes = vec![
            node("n1", NodeState::Ready, NodeAvailability::Active),
            node("n2", NodeState::Ready, NodeAvailability::Active),
            node("n3", NodeState::Down, NodeAvailability::Active),
            node("n4", NodeState::Ready, NodeAvailability::Active),
            node("n5", NodeState::Ready, NodeAvailability::Drain),
        ];
        let tasks = vec![task("a", None, Some("n1"), Running, Running, 1)];
        let p = progress(&s, &tasks, &nodes);
        assert_eq!(
            p.lines(),
            vec![
                "overall progress: 1 out of 2 tasks",
                "n1: running",
                "n2: new"
            ]
        );
        assert_eq!(
            p.missing().split("; ").last().unwrap(),
            "api.n2: new (no task yet)"
        );
        // Once observed, the controller's count is authoritative.
        s.status.observed_generation = 2;
        s.status.desired_tasks = 1;
        let p = progress(&s, &tasks, &nodes[..1]);
        assert!(p.converged());
    }

    fn updating(state: UpdateState, message: &str) -> Service {
        let mut s = service(1, true);
        s.status.update_status = Some(shoal_api_types::UpdateStatus {
            state,
            message: message.into(),
            ..Default::default()
        });
        s
    }

    fn change(generation: i64) -> Target {
        Target {
            name: "api".into(),
            generation: Some(generation),
            intent: Intent::Change,
        }
    }

    #[test]
    fn progress_shows_the_update_state_and_its_message() {
        let tasks = vec![task("a", Some(1), Some("n1"), Running, Running, 1)];
        let p = progress(
            &updating(UpdateState::Updating, "update in progress"),
            &tasks,
            &[],
        );
        assert_eq!(
            p.lines(),
            vec![
                "overall progress: 1 out of 1 tasks",
                "update: updating",
                "1/1: running"
            ]
        );
        let s = updating(
            UpdateState::Paused,
            "update paused due to failure of task api.1: task exited with code 1",
        );
        let p = progress(&s, &tasks, &[]);
        assert_eq!(
            p.lines()[1],
            "update: paused (update paused due to failure of task api.1: task exited with code 1)"
        );
        assert!(
            p.missing().starts_with("the update is paused; "),
            "{}",
            p.missing()
        );
        // The updater's wrapper around the reason of a finished rollback is dropped.
        let s = updating(
            UpdateState::RollbackCompleted,
            "rollback completed (manually requested rollback)",
        );
        assert_eq!(
            progress(&s, &tasks, &[]).lines()[1],
            "update: rollback_completed (manually requested rollback)"
        );
        let s = updating(UpdateState::Completed, "update completed");
        assert_eq!(progress(&s, &tasks, &[]).lines()[1], "update: completed");
    }

    #[test]
    fn an_update_is_done_when_completed_not_when_its_tasks_run() {
        let tasks = vec![task("a", Some(1), Some("n1"), Running, Running, 1)];
        for (state, want) in [
            (UpdateState::Updating, Verdict::Waiting),
            (UpdateState::RollbackStarted, Verdict::Waiting),
            (UpdateState::Completed, Verdict::Done),
        ] {
            let s = updating(state, "");
            let p = progress(&s, &tasks, &[]);
            assert!(p.converged());
            assert_eq!(verdict(&s, &p, &change(2)), want, "{state}");
        }
        // Completed is done even while a task is not running (yet): the updater decided.
        let s = updating(UpdateState::Completed, "");
        let p = progress(&s, &[], &[]);
        assert_eq!(verdict(&s, &p, &change(2)), Verdict::Done);
    }

    #[test]
    fn an_update_fails_with_the_updaters_message_when_paused_or_rolled_back() {
        let tasks = vec![task("a", Some(1), Some("n1"), Running, Running, 1)];
        let paused = "update paused due to failure of task api.1: task exited with code 1";
        let s = updating(UpdateState::Paused, paused);
        let Verdict::Failed(why) = verdict(&s, &progress(&s, &tasks, &[]), &change(2)) else {
            panic!("paused must fail")
        };
        assert!(why.starts_with(paused), "{why}");
        assert!(why.contains("shoal service rollback api"), "{why}");

        let s = updating(UpdateState::RollbackPaused, "");
        let Verdict::Failed(why) = verdict(&s, &progress(&s, &tasks, &[]), &change(2)) else {
            panic!("rollback_paused must fail")
        };
        assert!(why.starts_with("rollback paused"), "{why}");

        // A failure rollback ends an update in failure, a requested one in success.
        let rolled = "update rolled back due to failure of task api.1: task exited with code 1";
        let s = updating(
            UpdateState::RollbackCompleted,
            &format!("rollback completed ({rolled})"),
        );
        let p = progress(&s, &tasks, &[]);
        assert_eq!(
            verdict(&s, &p, &change(2)),
            Verdict::Failed(rolled.to_string())
        );
        let s = updating(
            UpdateState::RollbackCompleted,
            "rollback completed (manually requested rollback)",
        );
        assert_eq!(
            verdict(&s, &p, &change(2)),
            Verdict::Failed("update rolled back: manually requested rollback".into())
        );
        let rollback = Target {
            intent: Intent::Rollback,
            ..change(2)
        };
        assert_eq!(verdict(&s, &p, &rollback), Verdict::Done);
    }

    #[test]
    fn status_older_than_the_written_generation_is_ignored() {
        let tasks = vec![task("a", Some(1), Some("n1"), Running, Running, 1)];
        // Observed generation 2, the command wrote 3: a completed (or paused) status of an
        // earlier update, or converged tasks, decide nothing yet.
        for state in [UpdateState::Completed, UpdateState::Paused] {
            let s = updating(state, "");
            let p = progress(&s, &tasks, &[]);
            assert_eq!(verdict(&s, &p, &change(3)), Verdict::Waiting, "{state}");
        }
        let s = service(1, true);
        let p = progress(&s, &tasks, &[]);
        assert_eq!(verdict(&s, &p, &change(3)), Verdict::Waiting);
        // Without an update status (nothing needed replacing), convergence decides.
        assert_eq!(verdict(&s, &p, &change(2)), Verdict::Done);
        assert_eq!(verdict(&s, &p, &Target::converge("api")), Verdict::Done);
        let p = progress(&s, &[], &[]);
        assert_eq!(verdict(&s, &p, &change(2)), Verdict::Waiting);
    }

    #[test]
    fn renderer_redraws_in_place_on_a_terminal() {
        let mut r = Renderer::new(true);
        let a = vec![
            "overall progress: 0 out of 1 tasks".to_string(),
            "1/1: new".to_string(),
        ];
        let b = vec![
            "overall progress: 1 out of 1 tasks".to_string(),
            "1/1: running".to_string(),
        ];
        assert_eq!(
            r.update(&a),
            "overall progress: 0 out of 1 tasks\n1/1: new\n"
        );
        assert_eq!(r.update(&a), "");
        assert_eq!(
            r.update(&b),
            "\x1b[2A\x1b[Joverall progress: 1 out of 1 tasks\n1/1: running\n"
        );
    }

    #[test]
    fn renderer_prints_only_new_lines_when_not_a_terminal() {
        let mut r = Renderer::new(false);
        let a = vec![
            "overall progress: 0 out of 2 tasks".to_string(),
            "1/2: new".into(),
            "2/2: new".into(),
        ];
        let b = vec![
            "overall progress: 0 out of 2 tasks".to_string(),
            "1/2: running".into(),
            "2/2: new".into(),
        ];
        assert_eq!(
            r.update(&a),
            "overall progress: 0 out of 2 tasks\n1/2: new\n2/2: new\n"
        );
        assert_eq!(r.update(&b), "1/2: running\n");
        assert!(!r.update(&b).contains('\x1b'));
    }

    #[test]
    fn durations_print_compactly() {
        assert_eq!(format_duration(Duration::from_secs(120)), "120s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
