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
//! [`desired_endpoints`] is pure; the service reconcile in [`crate::orchestrator`] writes.

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
}
