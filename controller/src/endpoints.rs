//! Endpoints: one object per (network, service) — the VIP, ports, aliases and every
//! running task's address, MAC, node and node address, with readiness. Agents watch the
//! Endpoints of the networks they have tasks on (as kube-proxy watches EndpointSlices).
//!
//! Invariants: the object is written only when its content changes, so one task change
//! costs at most one write per network the task is on, never one per node; a task that
//! is being stopped (desired state shutdown) stays listed with `ready: false` until it has
//! stopped, so it leaves the load balancer before it goes away; Endpoints of a deleted
//! service or detached network are deleted by the service reconcile.
//!
//! [`desired_endpoints`] and [`plan_endpoints`] are pure; the service reconcile in
//! [`crate::orchestrator`] writes what they decide. See docs/architecture.md ("Controller").

use std::collections::BTreeMap;
use std::sync::Arc;

use shoal_api_types::endpoints::endpoints_name;
use shoal_api_types::{EndpointTask, Endpoints, EndpointsSpec, Node, Service, Task, TaskState};

/// What the Endpoints of `service` on `network` should hold.
pub fn desired_endpoints(
    service: &Service,
    network: &str,
    aliases: &[String],
    vip: Option<&str>,
    tasks: &[Arc<Task>],
    nodes: &BTreeMap<String, Arc<Node>>,
) -> EndpointsSpec {
    let mut listed: Vec<EndpointTask> = tasks
        .iter()
        .filter(|t| t.status.state == TaskState::Running)
        .filter_map(|t| {
            let node = t.spec.node.as_ref()?;
            let att = t.spec.attachments.iter().find(|a| a.network == network)?;
            let ip = att
                .address
                .split('/')
                .next()
                .unwrap_or(&att.address)
                .to_string();
            let healthy = t.spec.healthcheck.is_none() || t.status.healthy;
            Some(EndpointTask {
                task: t.metadata.name.clone(),
                name: t.spec.display_name(),
                ip,
                mac: att.mac.clone(),
                node: node.clone(),
                node_address: nodes
                    .get(node)
                    .map(|n| n.status.address.clone())
                    .unwrap_or_default(),
                ready: t.spec.desired_state == TaskState::Running && healthy,
            })
        })
        .collect();
    listed.sort_by(|a, b| (&a.name, &a.task).cmp(&(&b.name, &b.task)));
    EndpointsSpec {
        network: network.to_string(),
        service: service.metadata.name.clone(),
        vip: vip.map(str::to_string),
        endpoint_mode: service.spec.endpoint_mode,
        ports: service.spec.ports.clone(),
        aliases: aliases.to_vec(),
        tasks: listed,
    }
}

/// A new Endpoints object for `spec`.
pub fn new_endpoints(spec: EndpointsSpec) -> Endpoints {
    Endpoints::new(endpoints_name(&spec.network, &spec.service), spec)
}

/// A change to one Endpoints object.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointsChange {
    /// Create it (its key must not exist).
    Create(Endpoints),
    /// Write it, compared on the resourceVersion it was read at.
    Update(Endpoints),
    /// Delete it, compared on its resourceVersion.
    Delete(Arc<Endpoints>),
}

/// The changes that make the Endpoints of `service` equal `wanted` (one spec per network
/// the service is on, in order): a missing one is created, a different one updated, an
/// equal one left alone, and one on a network not in `wanted` deleted. With `wanted`
/// empty (a deleted service) every Endpoints of the service goes.
pub fn plan_endpoints(
    service: &str,
    wanted: Vec<EndpointsSpec>,
    existing: &BTreeMap<(String, String), Arc<Endpoints>>,
) -> Vec<EndpointsChange> {
    let mut changes = Vec::new();
    for spec in &wanted {
        match existing.get(&(spec.network.clone(), service.to_string())) {
            Some(ep) if ep.spec == *spec => {}
            Some(ep) => {
                let mut next = (**ep).clone();
                next.spec = spec.clone();
                changes.push(EndpointsChange::Update(next));
            }
            None => changes.push(EndpointsChange::Create(new_endpoints(spec.clone()))),
        }
    }
    for ((net, svc), ep) in existing {
        if svc == service && !wanted.iter().any(|w| w.network == *net) {
            changes.push(EndpointsChange::Delete(ep.clone()));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::{NodeStatus, ServiceSpec, TaskAttachment, TaskSpec, TaskStatus};

    fn task(id: &str, slot: u64, node: &str, state: TaskState, desired: TaskState) -> Arc<Task> {
        let mut t = Task::new(
            id,
            TaskSpec {
                service: "api".into(),
                slot: Some(slot),
                node: Some(node.into()),
                desired_state: desired,
                attachments: vec![TaskAttachment {
                    network: "appnet".into(),
                    address: format!("10.0.1.{}/24", slot + 1),
                    mac: format!("02:42:0a:00:01:{:02x}", slot + 1),
                    aliases: vec![],
                }],
                ..Default::default()
            },
        );
        t.status = TaskStatus {
            state,
            healthy: true,
            ..Default::default()
        };
        Arc::new(t)
    }

    #[test]
    fn endpoints_should_list_running_tasks_with_node_addresses_and_readiness() {
        let svc = Service::new(
            "api",
            ServiceSpec {
                image: "busybox".into(),
                ..Default::default()
            },
        );
        let mut n1 = Node::new("n1", Default::default());
        n1.status = NodeStatus {
            address: "198.18.0.1".into(),
            ..Default::default()
        };
        let nodes = BTreeMap::from([("n1".to_string(), Arc::new(n1))]);
        let tasks = vec![
            task("b", 2, "n1", TaskState::Running, TaskState::Shutdown),
            task("a", 1, "n1", TaskState::Running, TaskState::Running),
            task("c", 3, "n1", TaskState::Starting, TaskState::Running),
        ];
        let spec = desired_endpoints(
            &svc,
            "appnet",
            &["web".into()],
            Some("10.0.1.2"),
            &tasks,
            &nodes,
        );
        assert_eq!(spec.tasks.len(), 2);
        assert_eq!(spec.tasks[0].name, "api.1");
        assert_eq!(spec.tasks[0].ip, "10.0.1.2");
        assert_eq!(spec.tasks[0].node_address, "198.18.0.1");
        assert!(spec.tasks[0].ready);
        assert!(
            !spec.tasks[1].ready,
            "a task being stopped leaves the load balancer first"
        );
        assert_eq!(spec.aliases, vec!["web"]);
        assert_eq!(new_endpoints(spec).metadata.name, "appnet.api");
    }

    fn spec(network: &str, vip: &str) -> EndpointsSpec {
        EndpointsSpec {
            network: network.into(),
            service: "api".into(),
            vip: Some(vip.into()),
            ..Default::default()
        }
    }

    #[test]
    fn endpoints_should_be_written_only_when_their_content_changes() {
        let existing: BTreeMap<(String, String), Arc<Endpoints>> = [
            spec("same", "10.0.1.2"),
            spec("moved", "10.0.2.2"),
            spec("left", "10.0.3.2"),
            EndpointsSpec {
                service: "other".into(),
                ..spec("left", "10.0.3.3")
            },
        ]
        .into_iter()
        .map(|s| {
            (
                (s.network.clone(), s.service.clone()),
                Arc::new(new_endpoints(s)),
            )
        })
        .collect();
        let wanted = vec![
            spec("same", "10.0.1.2"),
            spec("moved", "10.0.2.9"),
            spec("new", "10.0.4.2"),
        ];
        let changes = plan_endpoints("api", wanted, &existing);
        let summary: Vec<(&str, &str)> = changes
            .iter()
            .map(|c| match c {
                EndpointsChange::Create(e) => ("create", e.spec.network.as_str()),
                EndpointsChange::Update(e) => ("update", e.spec.network.as_str()),
                EndpointsChange::Delete(e) => ("delete", e.spec.network.as_str()),
            })
            .collect();
        assert_eq!(
            summary,
            vec![("update", "moved"), ("create", "new"), ("delete", "left")]
        );
        let EndpointsChange::Update(moved) = &changes[0] else {
            unreachable!()
        };
        assert_eq!(moved.spec.vip.as_deref(), Some("10.0.2.9"));
        // A deleted service loses every Endpoints, and only its own.
        assert_eq!(plan_endpoints("api", vec![], &existing).len(), 3);
    }
}
