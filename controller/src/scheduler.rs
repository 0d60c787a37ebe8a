//! Scheduler: places tasks on ready, active nodes: the orchestrator's new tasks, handed
//! over through [`Context::create_placed`], and the tasks still pending below
//! `tasks/_unassigned/`.
//!
//! Placement: among the nodes that pass every filter (placement constraints on node name
//! and labels, a global task's own node, `placement.maxReplicasPerNode` — live tasks of the
//! service already on the node —, host-mode published ports free on that node —
//! host ports are unique per node, not per cluster, and the task's resource reservations
//! fit in the node's free capacity), pick the node with the fewest tasks of the same
//! service, then the fewest tasks overall, then by name. A task nothing fits stays pending
//! and says why in `spec.pendingReason` ("no suitable node (host port 8080 in use on 3
//! nodes)", "no suitable node (insufficient resources on 3 nodes: memory 64Gi wanted, at
//! most 3.2Gi free)").
//!
//! Reservations: a node's free capacity is its reported `status.capacity` minus the
//! reservations of the live tasks assigned to it (desired running, not terminal). A node
//! that reports no capacity takes only tasks that reserve nothing. The per-node totals
//! (live tasks, per service, reservations, host ports) are kept by the cache as tasks change
//! ([`crate::reconcile::usage::NodeUsages`]), and each placement adds to its node's totals,
//! so a pass costs O((pending + new) × nodes), not a walk over every task; it runs again
//! whenever a task ends or a node changes, so capacity that frees up places pending tasks.
//! A pass makes at most [`PASS_WRITES`] writes for pending tasks (new ones are all written)
//! and runs again at once when more wait.
//!
//! A pass places the pending tasks first (they waited longer), then the new ones. A new
//! task is created where it goes, in one transaction with its address claims: at
//! `tasks/<node>/<id>`, state `assigned`, when a node fits, so its key never moves; else at
//! `tasks/_unassigned/<id>` with its pending reason, for a later pass. A pending task that
//! fits moves from `tasks/_unassigned/<id>` to `tasks/<node>/<id>` in one transaction
//! (delete compared on revision + create), so a task is never on two nodes.
//!
//! Invariants: one scheduling pass at a time (a single queue key; the orchestrator does not
//! place, it hands its new tasks to the next pass and waits for their writes), over the
//! cache at one revision that reflects every earlier pass's writes ([`Context::sync`]), so a
//! pass never places from usage that misses an earlier placement; a pass counts its own
//! placements as it goes. A pass that lost a race is simply retried.
//!
//! [`schedule`] and [`plan_pass`] are pure functions over plain values; [`reconcile_pending`]
//! does the I/O. See docs/architecture.md ("Controller").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use shoal_api_types::resources::{Cpus, Memory, NodeCapacity, Resources};
use shoal_api_types::service::PortConfig;
use shoal_api_types::{
    Constraint, Node, NodeAvailability, NodeState, Protocol, Service, Task, TaskState,
};

use crate::context::Context;
use shoal_store::Batch;

use crate::reconcile::usage::{self, NodeUsage};
use crate::reconcile::{Action, ControllerError, TaskRecord, World};

/// A task waiting for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRequest {
    /// Task id.
    pub id: String,
    /// Its service.
    pub service: String,
    /// The service's placement constraints.
    pub constraints: Vec<Constraint>,
    /// Host-mode published ports it needs on its node.
    pub host_ports: Vec<(u32, Protocol)>,
    /// The only node it may go to (global services).
    pub pin: Option<String>,
    /// What it reserves.
    pub reserve: Reserved,
    /// At most this many live tasks of its service per node (`placement.maxReplicasPerNode`).
    pub max_per_node: Option<u64>,
}

pub use crate::reconcile::usage::Reserved;

/// Whether `want` fits in what `capacity` leaves free after `reserved`: `Ok` or the free
/// amounts (`Err(free)`). A node with no reported capacity fits only tasks that reserve
/// nothing (`Err(None)`).
pub fn fit(
    capacity: Option<NodeCapacity>,
    reserved: Reserved,
    want: Reserved,
) -> Result<(), Option<Reserved>> {
    if want.is_zero() {
        return Ok(());
    }
    let Some(cap) = capacity else {
        return Err(None);
    };
    let free = Reserved {
        cpus: cap.cpus.millis().saturating_sub(reserved.cpus),
        memory: cap.memory.bytes().saturating_sub(reserved.memory),
    };
    if want.cpus <= free.cpus && want.memory <= free.memory {
        Ok(())
    } else {
        Err(Some(free))
    }
}

/// Why nodes could not take a task for lack of resources, gathered over the nodes tried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shortfall {
    /// Nodes without a reported capacity.
    pub unknown: usize,
    /// Nodes with too little free capacity.
    pub short: usize,
    /// The most free CPUs among the nodes short of CPUs (None: no node was).
    pub most_free_cpus: Option<u64>,
    /// The most free memory among the nodes short of memory.
    pub most_free_memory: Option<u64>,
}

impl Shortfall {
    /// Books one node that did not fit `want` (`free`: as [`fit`] said).
    pub fn record(&mut self, want: Reserved, free: Option<Reserved>) {
        let Some(free) = free else {
            self.unknown += 1;
            return;
        };
        self.short += 1;
        if want.cpus > free.cpus {
            self.most_free_cpus = Some(self.most_free_cpus.unwrap_or(0).max(free.cpus));
        }
        if want.memory > free.memory {
            self.most_free_memory = Some(self.most_free_memory.unwrap_or(0).max(free.memory));
        }
    }

    /// The reasons, for `spec.pendingReason` (empty when every node fitted).
    pub fn reasons(&self, want: Reserved) -> Vec<String> {
        let mut why = vec![];
        if self.short > 0 {
            let mut parts = vec![];
            if let Some(free) = self.most_free_memory {
                parts.push(format!(
                    "memory {} wanted, at most {} free",
                    Memory(want.memory),
                    human_memory(free)
                ));
            }
            if let Some(free) = self.most_free_cpus {
                parts.push(format!(
                    "cpus {} wanted, at most {} free",
                    Cpus(want.cpus),
                    Cpus(free)
                ));
            }
            why.push(format!(
                "insufficient resources on {}: {}",
                nodes_word(self.short),
                parts.join(" and ")
            ));
        }
        if self.unknown > 0 {
            why.push(format!(
                "no capacity reported by {} (tasks that reserve resources go only to nodes that report theirs)",
                nodes_word(self.unknown)
            ));
        }
        why
    }
}

/// Memory for people: the largest binary unit, one decimal (`3.2Gi`, `512Mi`, `100`).
pub fn human_memory(bytes: u64) -> String {
    const NAMES: [&str; 4] = ["Ki", "Mi", "Gi", "Ti"];
    let mut unit = None;
    for (i, name) in NAMES.iter().enumerate() {
        if bytes >= 1u64 << (10 * (i + 1)) {
            unit = Some((1u64 << (10 * (i + 1)), *name));
        }
    }
    let Some((scale, name)) = unit else {
        return bytes.to_string();
    };
    // Rounded down, so "at most" stays true.
    let tenths = bytes as u128 * 10 / scale as u128;
    if tenths.is_multiple_of(10) {
        format!("{}{name}", tenths / 10)
    } else {
        format!("{}.{}{name}", tenths / 10, tenths % 10)
    }
}

/// A node that can take tasks, with what runs on it now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeLoad {
    /// Node name.
    pub name: String,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Live tasks on the node.
    pub total: usize,
    /// Live tasks per service.
    pub per_service: HashMap<String, usize>,
    /// Host ports in use.
    pub host_ports: HashSet<(u32, Protocol)>,
    /// What the node offers (None: not reported).
    pub capacity: Option<NodeCapacity>,
    /// What its live tasks reserve.
    pub reserved: Reserved,
}

/// Where a task goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// To this node.
    Assign(String),
    /// Nowhere yet, because.
    Pending(String),
}

fn port_name(port: u32, proto: Protocol) -> String {
    match proto {
        Protocol::Tcp => port.to_string(),
        Protocol::Udp => format!("{port}/udp"),
    }
}

fn nodes_word(n: usize) -> String {
    if n == 1 {
        "1 node".into()
    } else {
        format!("{n} nodes")
    }
}

/// Places `tasks` in order on `nodes`, updating the loads as it goes. Returns one decision
/// per task, in order.
pub fn schedule(tasks: &[TaskRequest], nodes: &mut [NodeLoad]) -> Vec<Decision> {
    tasks.iter().map(|t| place(t, nodes)).collect()
}

fn place(task: &TaskRequest, nodes: &mut [NodeLoad]) -> Decision {
    if nodes.is_empty() {
        return Decision::Pending("no suitable node (no ready and active nodes)".into());
    }
    // The best node so far: (tasks of the service on it, all its tasks), its index.
    let mut best: Option<((usize, usize), usize)> = None;
    let mut wrong_node = 0;
    let mut failed_constraints: BTreeMap<String, usize> = BTreeMap::new();
    let mut ports_in_use: BTreeMap<String, usize> = BTreeMap::new();
    let mut at_max = 0;
    let mut shortfall = Shortfall::default();
    for (i, node) in nodes.iter().enumerate() {
        if let Some(pin) = &task.pin {
            if *pin != node.name {
                wrong_node += 1;
                continue;
            }
        }
        if let Some(c) = task
            .constraints
            .iter()
            .find(|c| !c.matches(&node.name, &node.labels))
        {
            *failed_constraints.entry(constraint_text(c)).or_default() += 1;
            continue;
        }
        let here = node.per_service.get(&task.service).copied().unwrap_or(0);
        if let Some(max) = task.max_per_node {
            if here as u64 >= max {
                at_max += 1;
                continue;
            }
        }
        if let Some((p, proto)) = task.host_ports.iter().find(|p| node.host_ports.contains(p)) {
            *ports_in_use.entry(port_name(*p, *proto)).or_default() += 1;
            continue;
        }
        if let Err(free) = fit(node.capacity, node.reserved, task.reserve) {
            shortfall.record(task.reserve, free);
            continue;
        }
        let key = (here, node.total);
        best = match best {
            Some((k, b)) if (k, &nodes[b].name) <= (key, &node.name) => Some((k, b)),
            _ => Some((key, i)),
        };
    }
    match best {
        Some((_, i)) => {
            let node = &mut nodes[i];
            node.total += 1;
            *node.per_service.entry(task.service.clone()).or_default() += 1;
            node.host_ports.extend(task.host_ports.iter().copied());
            node.reserved.add(task.reserve);
            Decision::Assign(node.name.clone())
        }
        None => {
            let mut why = vec![];
            if let Some(pin) = &task.pin {
                if wrong_node == nodes.len() {
                    why.push(format!("node {pin} is not ready and active"));
                }
            }
            for (c, n) in failed_constraints {
                why.push(format!("constraint {c} not met on {}", nodes_word(n)));
            }
            if let (Some(max), true) = (task.max_per_node, at_max > 0) {
                why.push(format!(
                    "placement.maxReplicasPerNode {max} reached on {}",
                    nodes_word(at_max)
                ));
            }
            for (p, n) in ports_in_use {
                why.push(format!("host port {p} in use on {}", nodes_word(n)));
            }
            why.extend(shortfall.reasons(task.reserve));
            Decision::Pending(format!("no suitable node ({})", why.join("; ")))
        }
    }
}

fn constraint_text(c: &Constraint) -> String {
    let lhs = match &c.target {
        shoal_api_types::constraint::ConstraintTarget::NodeName => "node.name".to_string(),
        shoal_api_types::constraint::ConstraintTarget::NodeLabel(k) => format!("node.labels.{k}"),
    };
    format!("{lhs}{}{}", if c.equal { "==" } else { "!=" }, c.value)
}

/// At most this many task writes (placements and changed pending reasons) per pass; a pass
/// that has more to do asks to run again at once. It bounds what one pass holds in memory
/// (a placement is a whole task, encoded) and lets placements land while more tasks are
/// still being created.
pub const PASS_WRITES: usize = 5_000;

/// What one scheduling pass decided.
#[derive(Debug, Default)]
pub struct Pass {
    /// Each pending task that needs a write, with where it goes or its new pending reason,
    /// in placement order.
    pub decisions: Vec<(Arc<TaskRecord>, Decision)>,
    /// One decision per new task, in order (`Pending("")`: its service is gone; it is
    /// written as it is, for the orchestrator to remove).
    pub new: Vec<Decision>,
    /// Pending tasks were left for the next pass (the write limit was reached).
    pub more: bool,
}

/// A service's placement rules, looked up once per run of its tasks.
#[derive(Default)]
struct Rules<'a> {
    service: Option<&'a Service>,
    constraints: Vec<Constraint>,
}

impl<'a> Rules<'a> {
    /// What `task` (of `service`, with `ports`, `resources` and `pin`) asks of a node; None
    /// when its service is gone.
    fn request(
        &mut self,
        world: &'a World,
        id: &str,
        service: &str,
        ports: &[PortConfig],
        resources: &Resources,
        pin: Option<&str>,
    ) -> Option<TaskRequest> {
        if self.service.is_none_or(|s| s.metadata.name != service) {
            let s = world.services.get(service)?;
            self.service = Some(s);
            self.constraints = s.spec.constraints();
        }
        let s = self.service.expect("set above");
        Some(TaskRequest {
            id: id.to_string(),
            service: service.to_string(),
            constraints: self.constraints.clone(),
            host_ports: usage::host_ports_of(ports),
            pin: pin.map(str::to_string),
            reserve: Reserved::of(&resources.reservations),
            max_per_node: s.spec.placement.max_replicas_per_node,
        })
    }
}

/// Plans one pass over `world`: places its pending tasks (by service, slot, id), then the
/// `new` tasks, on the ready, active, leased nodes, whose loads are the cache's kept
/// [`crate::reconcile::usage::NodeUsages`] (no walk over the tasks already placed) plus the
/// pass's own placements; stops placing pending tasks after `limit` writes.
pub fn plan_pass(world: &World, new: &[&Task], limit: usize) -> Pass {
    let mut loads = schedulable(world);
    let mut pass = Pass::default();
    let mut rules = Rules::default();
    for (_, _, id) in &world.unassigned {
        if pass.decisions.len() >= limit.max(1) {
            pass.more = true;
            break;
        }
        let Some(t) = world.tasks.get(id) else {
            continue;
        };
        if !t.is_live() {
            continue;
        }
        let Some(request) = rules.request(
            world,
            t.name(),
            &t.spec.service,
            t.spec.ports(),
            t.spec.resources(),
            t.pinned_node(),
        ) else {
            continue;
        };
        match place(&request, &mut loads) {
            Decision::Pending(reason) if reason == t.spec.pending_reason => {}
            decision => pass.decisions.push((t.clone(), decision)),
        }
    }
    for t in new {
        let request = rules.request(
            world,
            &t.metadata.name,
            &t.spec.service,
            &t.spec.ports,
            &t.spec.resources,
            t.pinned_node(),
        );
        pass.new.push(match request {
            Some(r) => place(&r, &mut loads),
            None => Decision::Pending(String::new()),
        });
    }
    pass
}

/// The ready, active, leased nodes of `world`, with their loads.
fn schedulable(world: &World) -> Vec<NodeLoad> {
    world
        .nodes
        .values()
        .filter(|n| {
            n.status.state == NodeState::Ready && n.spec.availability == NodeAvailability::Active
        })
        .filter(|n| world.node_leases.contains(&n.metadata.name))
        .map(|n| node_load(n, world.usage.get(&n.metadata.name)))
        .collect()
}

/// `task` as the scheduler writes it: on the node it decided, or pending with its reason.
pub fn decided(mut task: Task, decision: Decision, now: DateTime<Utc>) -> Task {
    match decision {
        Decision::Assign(node) => {
            task.spec.node = Some(node);
            task.spec.pending_reason.clear();
            task.status.state = TaskState::Assigned;
            task.status.timestamp = Some(now);
            task.status.message = "scheduled".into();
        }
        Decision::Pending(reason) => task.spec.pending_reason = reason,
    }
    task
}

/// A schedulable node's load, from what its tasks use.
fn node_load(n: &Node, usage: Option<&NodeUsage>) -> NodeLoad {
    let mut load = NodeLoad {
        name: n.metadata.name.clone(),
        labels: n.spec.labels.clone(),
        capacity: n.status.capacity,
        ..Default::default()
    };
    if let Some(u) = usage {
        load.total = u.total;
        load.per_service = u.per_service.clone();
        load.reserved = u.reserved;
        load.host_ports = u.host_ports.keys().copied().collect();
    }
    load
}

/// One scheduling pass: the pending tasks (at most [`PASS_WRITES`] writes; requeued at
/// once when more are left) and every new task handed over since the last pass, each
/// hand-over told how its writes went.
pub async fn reconcile_pending(_key: String, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    ctx.sync().await;
    let handoffs = ctx.take_handoffs();
    let keys = ctx.keys.clone();
    let now = Utc::now();
    let (moves, creates, more) = {
        let world = ctx.cache.read();
        if world.unassigned.is_empty() && handoffs.is_empty() {
            return Ok(Action::AwaitChange);
        }
        let new: Vec<&Task> = handoffs
            .iter()
            .flat_map(|h| h.tasks.iter().map(|u| &u.task))
            .collect();
        let pass = plan_pass(&world, &new, PASS_WRITES);
        let mut moves = Vec::with_capacity(pass.decisions.len());
        for (task, decision) in pass.decisions {
            let mut txn = Batch::new();
            match decision {
                Decision::Assign(_) => {
                    txn.delete_raw(task.key(&keys), task.metadata.revision);
                    txn.create_keeping_identity(&keys, &decided(task.to_task(), decision, now));
                }
                Decision::Pending(_) => {
                    txn.update(&keys, &decided(task.to_task(), decision, now));
                }
            }
            moves.push(txn);
        }
        // Each new task: its claims and the task, where it goes, in one transaction.
        let mut decisions = pass.new.into_iter();
        let creates: Vec<_> = handoffs
            .into_iter()
            .map(|h| {
                let txns: Vec<Batch> = h
                    .tasks
                    .into_iter()
                    .zip(decisions.by_ref())
                    .map(|(u, decision)| {
                        let mut txn = u.with;
                        txn.create(&keys, &decided(u.task, decision, now));
                        txn
                    })
                    .collect();
                (txns, h.done)
            })
            .collect();
        (moves, creates, pass.more)
    };
    let created = join_all(creates.into_iter().map(|(txns, done)| {
        let ctx = ctx.clone();
        async move {
            let result = ctx.writer.commit_all(txns, 16).await;
            // The orchestrator may have stopped waiting (its term ended): nothing to tell.
            let _ = done.send(result);
        }
    }));
    let (moved, _) = tokio::join!(ctx.writer.commit_all(moves, 16), created);
    moved?;
    Ok(if more {
        Action::Requeue(std::time::Duration::ZERO)
    } else {
        Action::AwaitChange
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str, service: &str) -> TaskRequest {
        TaskRequest {
            id: id.into(),
            service: service.into(),
            constraints: vec![],
            host_ports: vec![],
            pin: None,
            reserve: Reserved::default(),
            max_per_node: None,
        }
    }

    fn node(name: &str) -> NodeLoad {
        NodeLoad {
            name: name.into(),
            ..Default::default()
        }
    }

    fn assigned(d: &[Decision]) -> Vec<&str> {
        d.iter()
            .map(|d| match d {
                Decision::Assign(n) => n.as_str(),
                Decision::Pending(_) => "-",
            })
            .collect()
    }

    #[test]
    fn scheduler_should_spread_replicas_across_nodes() {
        let mut nodes = vec![node("n1"), node("n2"), node("n3")];
        let tasks: Vec<_> = (0..6).map(|i| req(&format!("t{i}"), "api")).collect();
        let d = schedule(&tasks, &mut nodes);
        assert_eq!(assigned(&d), vec!["n1", "n2", "n3", "n1", "n2", "n3"]);
        assert!(nodes.iter().all(|n| n.per_service["api"] == 2));
    }

    #[test]
    fn scheduler_should_prefer_nodes_with_fewer_tasks_of_the_service_then_fewer_tasks() {
        let mut n1 = node("n1");
        n1.total = 5;
        n1.per_service.insert("db".into(), 5);
        let mut n2 = node("n2");
        n2.total = 1;
        n2.per_service.insert("api".into(), 1);
        let mut nodes = vec![n1, node("n3"), n2];
        let d = schedule(
            &[req("a", "api"), req("b", "api"), req("c", "api")],
            &mut nodes,
        );
        // n3 has nothing; then n1 (0 api, 5 total) and n2 (1 api) tie on api at 1 each -> fewer total.
        assert_eq!(assigned(&d), vec!["n3", "n1", "n2"]);
    }

    #[test]
    fn scheduler_should_honour_constraints_and_explain_when_nothing_fits() {
        let mut a = node("n1");
        a.labels.insert("zone".into(), "a".into());
        let mut nodes = vec![a, node("n2"), node("n3")];
        let mut t = req("t", "api");
        t.constraints = vec!["node.labels.zone==a".parse().unwrap()];
        let d = schedule(&[t.clone(), t.clone()], &mut nodes);
        assert_eq!(assigned(&d), vec!["n1", "n1"]);
        t.constraints = vec!["node.labels.zone==b".parse().unwrap()];
        let d = schedule(&[t], &mut nodes);
        assert_eq!(
            d,
            vec![Decision::Pending(
                "no suitable node (constraint node.labels.zone==b not met on 3 nodes)".into()
            )]
        );
    }

    #[test]
    fn scheduler_should_keep_max_replicas_per_node_and_say_so_when_nothing_fits() {
        let capped = |id: &str| TaskRequest {
            max_per_node: Some(1),
            ..req(id, "db")
        };
        let mut nodes = vec![node("a"), node("b")];
        // Another service's tasks do not count.
        nodes[0].per_service.insert("web".into(), 3);
        let d = schedule(
            &[capped("db.1"), capped("db.2"), capped("db.3")],
            &mut nodes,
        );
        assert_eq!(assigned(&d), ["a", "b", "-"]);
        assert_eq!(
            d[2],
            Decision::Pending(
                "no suitable node (placement.maxReplicasPerNode 1 reached on 2 nodes)".into()
            )
        );
    }

    #[test]
    fn scheduler_should_keep_host_ports_unique_per_node() {
        let mut nodes = vec![node("n1"), node("n2"), node("n3")];
        let mut t = req("t", "web");
        t.host_ports = vec![(8080, Protocol::Tcp)];
        let tasks = vec![t.clone(), t.clone(), t.clone(), t.clone()];
        let d = schedule(&tasks, &mut nodes);
        assert_eq!(
            assigned(&d)[..3].iter().collect::<HashSet<_>>().len(),
            3,
            "one per node"
        );
        assert_eq!(
            d[3],
            Decision::Pending("no suitable node (host port 8080 in use on 3 nodes)".into())
        );
        // Another protocol on the same number is a different port.
        let mut u = req("u", "dns");
        u.host_ports = vec![(8080, Protocol::Udp)];
        assert!(matches!(schedule(&[u], &mut nodes)[0], Decision::Assign(_)));
    }

    #[test]
    fn scheduler_should_place_pinned_tasks_only_on_their_node() {
        let mut nodes = vec![node("n1"), node("n2")];
        let mut t = req("g", "mon");
        t.pin = Some("n2".into());
        assert_eq!(
            schedule(&[t.clone()], &mut nodes),
            vec![Decision::Assign("n2".into())]
        );
        t.pin = Some("n9".into());
        assert_eq!(
            schedule(&[t], &mut nodes),
            vec![Decision::Pending(
                "no suitable node (node n9 is not ready and active)".into()
            )]
        );
        assert_eq!(
            schedule(&[req("x", "api")], &mut []),
            vec![Decision::Pending(
                "no suitable node (no ready and active nodes)".into()
            )]
        );
    }

    fn sized(name: &str, cpus: u64, mem: u64) -> NodeLoad {
        NodeLoad {
            capacity: Some(NodeCapacity {
                cpus: Cpus(cpus),
                memory: Memory(mem),
            }),
            ..node(name)
        }
    }

    fn reserving(id: &str, cpus: u64, mem: u64) -> TaskRequest {
        TaskRequest {
            reserve: Reserved { cpus, memory: mem },
            ..req(id, "big")
        }
    }

    const GI: u64 = 1 << 30;

    #[test]
    fn fit_should_weigh_reservations_against_free_capacity() {
        let cap = Some(NodeCapacity {
            cpus: Cpus(2000),
            memory: Memory(4 * GI),
        });
        let used = Reserved {
            cpus: 1500,
            memory: 3 * GI,
        };
        let want = |cpus, memory| Reserved { cpus, memory };
        assert_eq!(fit(cap, used, want(500, GI)), Ok(()));
        assert_eq!(
            fit(cap, used, want(600, 0)),
            Err(Some(Reserved {
                cpus: 500,
                memory: GI
            }))
        );
        assert!(fit(cap, used, want(0, GI + 1)).is_err());
        // No capacity reported: only tasks that reserve nothing.
        assert_eq!(fit(None, Reserved::default(), want(0, 0)), Ok(()));
        assert_eq!(fit(None, Reserved::default(), want(1, 0)), Err(None));
        // Over-committed nodes (capacity lowered) have nothing free, without overflow.
        assert!(fit(cap, want(9000, 9 * GI), want(1, 0)).is_err());
        assert_eq!(fit(cap, want(9000, 9 * GI), want(0, 0)), Ok(()));
    }

    #[test]
    fn shortfall_should_name_the_resource_and_the_most_free() {
        let want = Reserved {
            cpus: 0,
            memory: 64 * GI,
        };
        let mut s = Shortfall::default();
        for free in [3 * GI + GI / 5 + 1, GI, 2 * GI] {
            s.record(
                want,
                Some(Reserved {
                    cpus: 4000,
                    memory: free,
                }),
            );
        }
        assert_eq!(
            s.reasons(want),
            vec!["insufficient resources on 3 nodes: memory 64Gi wanted, at most 3.2Gi free"]
        );
        let want = Reserved {
            cpus: 4000,
            memory: 64 * GI,
        };
        s.record(
            want,
            Some(Reserved {
                cpus: 1500,
                memory: 100 * GI,
            }),
        );
        s.record(want, None);
        assert_eq!(
            s.reasons(want),
            vec![
                "insufficient resources on 4 nodes: memory 64Gi wanted, at most 3.2Gi free and cpus 4 wanted, at most 1.5 free",
                "no capacity reported by 1 node (tasks that reserve resources go only to nodes that report theirs)"
            ]
        );
        assert_eq!(human_memory(512 << 20), "512Mi");
        assert_eq!(human_memory((3 * GI) + (GI / 5) + 1), "3.2Gi");
        assert_eq!(human_memory(1023), "1023");
        assert_eq!(human_memory(GI - 1), "1023.9Mi");
    }

    #[test]
    fn scheduler_should_place_reservations_only_where_they_fit() {
        let mut nodes = vec![sized("n1", 2000, 4 * GI), sized("n2", 1000, GI), node("n3")];
        // 3Gi fits only n1; then n1 has 1Gi left, n2 1Gi: two more 1Gi tasks fit, not a third.
        let tasks = vec![
            reserving("a", 0, 3 * GI),
            reserving("b", 0, GI),
            reserving("c", 0, GI),
            reserving("d", 0, GI),
        ];
        let d = schedule(&tasks, &mut nodes);
        assert_eq!(assigned(&d)[..3], ["n1", "n2", "n1"]);
        assert_eq!(
            d[3],
            Decision::Pending(
                "no suitable node (insufficient resources on 2 nodes: memory 1Gi wanted, at most 0 free; \
                 no capacity reported by 1 node (tasks that reserve resources go only to nodes that report theirs))"
                    .into()
            )
        );
        assert_eq!(nodes[0].reserved.memory, 4 * GI);
        // Tasks that reserve nothing still go anywhere, n3 included.
        let d = schedule(&[req("x", "small")], &mut nodes);
        assert_eq!(assigned(&d), ["n3"]);
        // CPUs count too.
        let d = schedule(&[reserving("e", 2500, 0)], &mut nodes);
        assert_eq!(
            d[0],
            Decision::Pending(
                "no suitable node (insufficient resources on 2 nodes: cpus 2.5 wanted, at most 2 free; \
                 no capacity reported by 1 node (tasks that reserve resources go only to nodes that report theirs))"
                    .into()
            )
        );
    }

    #[test]
    fn scheduler_should_combine_the_reasons_of_every_filter() {
        let mut a = sized("n1", 1000, GI);
        a.labels.insert("zone".into(), "a".into());
        let mut b = sized("n2", 1000, GI);
        b.labels.insert("zone".into(), "a".into());
        b.host_ports.insert((80, Protocol::Tcp));
        let mut nodes = vec![a, b, sized("n3", 1000, GI)];
        let mut t = reserving("t", 0, 2 * GI);
        t.constraints = vec!["node.labels.zone==a".parse().unwrap()];
        t.host_ports = vec![(80, Protocol::Tcp)];
        assert_eq!(
            schedule(&[t], &mut nodes),
            vec![Decision::Pending(
                "no suitable node (constraint node.labels.zone==a not met on 1 node; \
                 host port 80 in use on 1 node; \
                 insufficient resources on 1 node: memory 2Gi wanted, at most 1Gi free)"
                    .into()
            )]
        );
    }

    mod pass {
        use super::super::*;
        use shoal_api_types::{NodeSpec, NodeStatus, Service, ServiceSpec, Task, TaskSpec};

        fn world(nodes: &[&str]) -> World {
            let mut w = World::default();
            for name in nodes {
                let mut n = Node::new(*name, NodeSpec::default());
                n.status = NodeStatus {
                    state: NodeState::Ready,
                    ..Default::default()
                };
                w.nodes.insert(name.to_string(), Arc::new(n));
                w.node_leases.insert(name.to_string());
            }
            w
        }

        fn add_service(w: &mut World, name: &str, spec: ServiceSpec) {
            w.services
                .insert(name.into(), Arc::new(Service::new(name, spec)));
        }

        fn add_task(w: &mut World, id: &str, service: &str, slot: u64, node: Option<&str>) {
            let mut t = Task::new(
                id,
                TaskSpec {
                    service: service.into(),
                    slot: Some(slot),
                    node: node.map(Into::into),
                    desired_state: TaskState::Running,
                    ..Default::default()
                },
            );
            t.status.state = if node.is_some() {
                TaskState::Running
            } else {
                TaskState::Pending
            };
            w.insert_task(t);
        }

        fn placed(p: &Pass) -> Vec<(&str, &str)> {
            p.decisions
                .iter()
                .map(|(t, d)| match d {
                    Decision::Assign(n) => (t.name(), n.as_str()),
                    Decision::Pending(_) => (t.name(), "-"),
                })
                .collect()
        }

        #[test]
        fn a_pass_should_place_on_the_nodes_least_used_by_the_tasks_already_placed() {
            let mut w = world(&["n1", "n2"]);
            add_service(&mut w, "api", ServiceSpec::default());
            add_task(&mut w, "a1", "api", 1, Some("n1"));
            add_task(&mut w, "a2", "api", 2, Some("n1"));
            add_task(&mut w, "a3", "api", 3, None);
            add_task(&mut w, "a4", "api", 4, None);
            add_task(&mut w, "a5", "api", 5, None);
            let p = plan_pass(&w, &[], 10);
            // n1 already runs two: n2 takes the next two, then n1 (tie on 2 each, by name).
            assert_eq!(placed(&p), [("a3", "n2"), ("a4", "n2"), ("a5", "n1")]);
            assert!(!p.more);
        }

        /// A task as the orchestrator builds it: not on a node, pending.
        fn new_task(id: &str, service: &str, slot: u64) -> Task {
            let mut t = Task::new(
                id,
                TaskSpec {
                    service: service.into(),
                    slot: Some(slot),
                    desired_state: TaskState::Running,
                    ..Default::default()
                },
            );
            t.status.state = TaskState::Pending;
            t
        }

        #[test]
        fn new_tasks_should_be_written_placed_after_the_pending_ones_counting_the_pass() {
            let mut w = world(&["n1", "n2"]);
            add_service(&mut w, "api", ServiceSpec::default());
            add_task(&mut w, "a1", "api", 1, Some("n1"));
            add_task(&mut w, "a2", "api", 2, None);
            let new = [new_task("a3", "api", 3), new_task("a4", "api", 4)];
            let p = plan_pass(&w, &new.iter().collect::<Vec<_>>(), 10);
            // The pending task first (n2: n1 runs a1), then the new ones on the usage that
            // includes it: a tie at one each, then by name.
            assert_eq!(placed(&p), [("a2", "n2")]);
            assert_eq!(
                p.new,
                [Decision::Assign("n1".into()), Decision::Assign("n2".into())]
            );
            // Written at its node's key, assigned: the key never moves.
            let now = Utc::now();
            let t = decided(new[0].clone(), p.new[0].clone(), now);
            let keys = shoal_api_types::keys::Keys::new("/r");
            assert_eq!(keys.key(&t), "/r/tasks/n1/a3");
            assert_eq!(t.spec.node.as_deref(), Some("n1"));
            assert_eq!(
                (
                    t.status.state,
                    t.status.message.as_str(),
                    t.status.timestamp
                ),
                (TaskState::Assigned, "scheduled", Some(now))
            );
        }

        #[test]
        fn a_new_task_no_node_fits_should_be_created_pending_and_placed_by_a_later_pass() {
            let mut w = world(&["n1"]);
            let zoned = ServiceSpec {
                placement: shoal_api_types::service::Placement {
                    constraints: vec!["node.labels.zone==a".into()],
                    ..Default::default()
                },
                ..Default::default()
            };
            add_service(&mut w, "api", zoned);
            let new = new_task("a1", "api", 1);
            let p = plan_pass(&w, &[&new], 10);
            let reason = "no suitable node (constraint node.labels.zone==a not met on 1 node)";
            assert_eq!(p.new, [Decision::Pending(reason.into())]);
            let t = decided(new, p.new[0].clone(), Utc::now());
            let keys = shoal_api_types::keys::Keys::new("/r");
            assert_eq!(keys.key(&t), "/r/tasks/_unassigned/a1");
            assert_eq!(
                (t.spec.pending_reason.as_str(), t.status.state),
                (reason, TaskState::Pending)
            );
            w.insert_task(t);
            assert!(
                plan_pass(&w, &[], 10).decisions.is_empty(),
                "same reason: no write"
            );
            // A node that fits joins: the next pass moves it there.
            let mut n2 = Node::new("n2", NodeSpec::default());
            n2.spec.labels.insert("zone".into(), "a".into());
            n2.status.state = NodeState::Ready;
            w.nodes.insert("n2".into(), Arc::new(n2));
            w.node_leases.insert("n2".into());
            assert_eq!(placed(&plan_pass(&w, &[], 10)), [("a1", "n2")]);
        }

        #[test]
        fn a_new_task_should_keep_every_rule_of_its_service() {
            let mut w = world(&["n1", "n2"]);
            let capped = ServiceSpec {
                placement: shoal_api_types::service::Placement {
                    max_replicas_per_node: Some(1),
                    ..Default::default()
                },
                ..Default::default()
            };
            add_service(&mut w, "db", capped);
            add_task(&mut w, "d1", "db", 1, Some("n1"));
            let mut web = new_task("w1", "web", 1);
            web.spec.ports = vec![shoal_api_types::service::PortConfig {
                target: 80,
                published: 8080,
                mode: shoal_api_types::PublishMode::Host,
                ..Default::default()
            }];
            add_service(&mut w, "web", ServiceSpec::default());
            let mut pinned = new_task("m1", "mon", 0);
            pinned
                .metadata
                .labels
                .insert(shoal_api_types::labels::NODE.into(), "n1".into());
            add_service(&mut w, "mon", ServiceSpec::default());
            let new = [
                new_task("d2", "db", 2),
                new_task("d3", "db", 3),
                web.clone(),
                web,
                new_task("x1", "gone", 1),
                pinned,
            ];
            let p = plan_pass(&w, &new.iter().collect::<Vec<_>>(), 10);
            assert_eq!(
                p.new,
                [
                    Decision::Assign("n2".into()),
                    Decision::Pending(
                        "no suitable node (placement.maxReplicasPerNode 1 reached on 2 nodes)"
                            .into()
                    ),
                    Decision::Assign("n1".into()),
                    Decision::Assign("n2".into()),
                    Decision::Pending(String::new()),
                    Decision::Assign("n1".into()),
                ]
            );
        }

        #[test]
        fn a_pass_should_stop_at_its_write_limit_and_say_more_are_left() {
            let mut w = world(&["n1", "n2"]);
            add_service(&mut w, "api", ServiceSpec::default());
            for slot in 1..=5 {
                add_task(&mut w, &format!("t{}", 9 - slot), "api", slot, None);
            }
            let p = plan_pass(&w, &[], 2);
            // In slot order, not id order.
            assert_eq!(placed(&p), [("t8", "n1"), ("t7", "n2")]);
            assert!(p.more);
            let p = plan_pass(&w, &[], 5);
            assert_eq!(p.decisions.len(), 5);
            assert!(!p.more);
        }

        #[test]
        fn tasks_that_stay_pending_for_the_same_reason_should_not_use_up_a_pass() {
            let mut w = world(&["n1"]);
            let stuck = ServiceSpec {
                placement: shoal_api_types::service::Placement {
                    constraints: vec!["node.name==elsewhere".into()],
                    ..Default::default()
                },
                ..Default::default()
            };
            add_service(&mut w, "a-stuck", stuck);
            add_service(&mut w, "b-api", ServiceSpec::default());
            add_task(&mut w, "s1", "a-stuck", 1, None);
            add_task(&mut w, "s2", "a-stuck", 2, None);
            add_task(&mut w, "b1", "b-api", 1, None);
            let first = plan_pass(&w, &[], 1);
            assert_eq!(placed(&first), [("s1", "-")], "a new reason is a write");
            assert!(first.more);
            // The reasons are written: the next passes skip those tasks for free.
            for (t, d) in first.decisions {
                let Decision::Pending(reason) = d else {
                    panic!()
                };
                let mut t = t.to_task();
                t.spec.pending_reason = reason;
                w.insert_task(t.clone());
                let mut t2 = w.tasks["s2"].to_task();
                t2.spec.pending_reason = t.spec.pending_reason.clone();
                w.insert_task(t2);
            }
            let next = plan_pass(&w, &[], 1);
            assert_eq!(placed(&next), [("b1", "n1")]);
            assert!(!next.more);
        }
    }
}
