//! Scheduler: assigns pending tasks (below `tasks/_unassigned/`) to ready, active nodes.
//!
//! Placement: among the nodes that pass every filter (placement constraints on node name
//! and labels, a global task's own node, host-mode published ports free on that node —
//! host ports are unique per node, not per cluster), pick the node with the fewest tasks of
//! the same service, then the fewest tasks overall, then by name. A task nothing fits
//! stays pending and says why in `spec.pendingReason` ("no suitable node (host port 8080
//! in use on 3 nodes)").
//!
//! Invariants: one scheduling pass at a time (a single queue key), over the cache at one
//! revision; an assignment moves the task key from `tasks/_unassigned/<id>` to
//! `tasks/<node>/<id>` in one transaction (delete compared on revision + create), so a task
//! is never on two nodes, and a pass that lost a race is simply retried.
//!
//! [`schedule`] is a pure function over plain values; [`reconcile_pending`] does the I/O.
//! See docs/architecture.md ("Controller").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use shoal_api_types::{Constraint, NodeAvailability, NodeState, Protocol, PublishMode, TaskState};

use crate::context::Context;
use shoal_store::Batch;

use crate::reconcile::{Action, ControllerError};

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
    let mut best: Option<usize> = None;
    let mut wrong_node = 0;
    let mut failed_constraints: BTreeMap<String, usize> = BTreeMap::new();
    let mut ports_in_use: BTreeMap<String, usize> = BTreeMap::new();
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
        if let Some((p, proto)) = task.host_ports.iter().find(|p| node.host_ports.contains(p)) {
            *ports_in_use.entry(port_name(*p, *proto)).or_default() += 1;
            continue;
        }
        let key = |n: &NodeLoad| {
            (
                n.per_service.get(&task.service).copied().unwrap_or(0),
                n.total,
            )
        };
        best = match best {
            Some(b) if (key(&nodes[b]), &nodes[b].name) <= (key(node), &node.name) => Some(b),
            _ => Some(i),
        };
    }
    match best {
        Some(i) => {
            let node = &mut nodes[i];
            node.total += 1;
            *node.per_service.entry(task.service.clone()).or_default() += 1;
            node.host_ports.extend(task.host_ports.iter().copied());
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
            for (p, n) in ports_in_use {
                why.push(format!("host port {p} in use on {}", nodes_word(n)));
            }
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

/// One scheduling pass over every pending task.
pub async fn reconcile_pending(_key: String, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    ctx.sync().await;
    let keys = ctx.keys.clone();
    let now = Utc::now();
    let txns = {
        let world = ctx.cache.read();
        if world.unassigned.is_empty() {
            return Ok(Action::AwaitChange);
        }
        let mut loads: BTreeMap<String, NodeLoad> = world
            .nodes
            .values()
            .filter(|n| {
                n.status.state == NodeState::Ready
                    && n.spec.availability == NodeAvailability::Active
            })
            .filter(|n| world.node_leases.contains(&n.metadata.name))
            .map(|n| {
                (
                    n.metadata.name.clone(),
                    NodeLoad {
                        name: n.metadata.name.clone(),
                        labels: n.spec.labels.clone(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        for t in world.tasks.values() {
            let Some(node) = &t.spec.node else { continue };
            let Some(load) = loads.get_mut(node) else {
                continue;
            };
            // A stopping task still holds its ports until it has stopped.
            if t.status.state.is_terminal() {
                continue;
            }
            if t.spec.desired_state == TaskState::Running {
                load.total += 1;
                *load.per_service.entry(t.spec.service.clone()).or_default() += 1;
            }
            load.host_ports.extend(
                t.spec
                    .ports
                    .iter()
                    .filter(|p| p.mode == PublishMode::Host)
                    .map(|p| (p.published, p.protocol)),
            );
        }
        let mut pending: Vec<Arc<shoal_api_types::Task>> = world
            .unassigned
            .iter()
            .filter_map(|id| world.tasks.get(id).cloned())
            .filter(|t| t.is_live() && world.services.contains_key(&t.spec.service))
            .collect();
        pending.sort_by(|a, b| {
            (&a.spec.service, a.spec.slot, &a.metadata.name).cmp(&(
                &b.spec.service,
                b.spec.slot,
                &b.metadata.name,
            ))
        });
        let requests: Vec<TaskRequest> = pending
            .iter()
            .map(|t| TaskRequest {
                id: t.metadata.name.clone(),
                service: t.spec.service.clone(),
                constraints: world
                    .services
                    .get(&t.spec.service)
                    .map(|s| s.spec.constraints())
                    .unwrap_or_default(),
                host_ports: t
                    .spec
                    .ports
                    .iter()
                    .filter(|p| p.mode == PublishMode::Host)
                    .map(|p| (p.published, p.protocol))
                    .collect(),
                pin: t.pinned_node().map(str::to_string),
            })
            .collect();
        let mut loads: Vec<NodeLoad> = loads.into_values().collect();
        let decisions = schedule(&requests, &mut loads);
        let mut txns = Vec::with_capacity(pending.len());
        for (task, decision) in pending.iter().zip(decisions) {
            let mut txn = Batch::new();
            match decision {
                Decision::Assign(node) => {
                    txn.delete(&keys, task.as_ref());
                    let mut moved = (**task).clone();
                    moved.spec.node = Some(node);
                    moved.spec.pending_reason.clear();
                    moved.status.state = TaskState::Assigned;
                    moved.status.timestamp = Some(now);
                    moved.status.message = "scheduled".into();
                    txn.create_keeping_identity(&keys, &moved);
                }
                Decision::Pending(reason) => {
                    if task.spec.pending_reason != reason {
                        let mut next = (**task).clone();
                        next.spec.pending_reason = reason;
                        txn.update(&keys, &next);
                    }
                }
            }
            txns.push(txn);
        }
        txns
    };
    ctx.writer.commit_all(txns, 16).await?;
    Ok(Action::AwaitChange)
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
}
