//! Endpoints: per (network, service), the VIP, ports, aliases and every running task's
//! address, MAC, node and node address, with readiness — split into slices of at most
//! `slice_size` tasks (`--endpoints-slice-size`, at most
//! [`shoal_api_types::endpoints::MAX_SLICE_TASKS`]). Agents watch the Endpoints of the
//! networks they have tasks on (as kube-proxy watches EndpointSlices).
//!
//! Invariants: a slice is written only when its content changes, so one task change costs
//! at most one slice write per network the task is on, never one per node; a task stays in
//! the slice it was first put in for as long as it is listed ([`plan_slices`], as
//! Kubernetes' EndpointSlice controller does), new tasks fill slices with room before a new
//! slice is made, an emptied slice n > 0 is deleted and slice 0 always exists (it carries
//! the VIP with no task); every slice carries the service-level fields; a task that is
//! being stopped (desired state shutdown) stays listed with `ready: false` until it has
//! stopped, so it leaves the load balancer before it goes away; every slice of a deleted
//! service or detached network is deleted by the service reconcile.
//!
//! [`desired_endpoints`], [`plan_slices`] and [`plan_endpoints`] are pure; the service
//! reconcile in [`crate::orchestrator`] writes what they decide. See docs/architecture.md
//! ("Controller").

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use shoal_api_types::endpoints::slice_name;
use shoal_api_types::{EndpointTask, Endpoints, EndpointsSpec, Node, Service, TaskState};

use crate::reconcile::TaskRecord;

/// The stored slices of one (network, service), by slice number.
pub type Slices = BTreeMap<u32, Arc<Endpoints>>;

/// What the Endpoints of `service` on `network` should hold, as one logical spec (slice 0,
/// every task, sorted by name); [`plan_slices`] cuts it into slices.
pub fn desired_endpoints(
    service: &Service,
    network: &str,
    aliases: &[String],
    vip: Option<&str>,
    tasks: &[Arc<TaskRecord>],
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
            let healthy = t.spec.healthcheck().is_none() || t.status.healthy;
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
        slice: 0,
        vip: vip.map(str::to_string),
        endpoint_mode: service.spec.endpoint_mode,
        ports: service.spec.ports.clone(),
        aliases: aliases.to_vec(),
        tasks: listed,
    }
}

/// A new Endpoints object for `spec` (named after its network, service and slice).
pub fn new_endpoints(spec: EndpointsSpec) -> Endpoints {
    Endpoints::new(slice_name(&spec.network, &spec.service, spec.slice), spec)
}

/// A change to one Endpoints slice.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointsChange {
    /// Create it (its key must not exist).
    Create(Endpoints),
    /// Write it, compared on the resourceVersion it was read at.
    Update(Endpoints),
    /// Delete it, compared on its resourceVersion.
    Delete(Arc<Endpoints>),
}

/// The slice changes that make the stored slices `existing` of one (network, service) hold
/// `wanted` (a logical spec from [`desired_endpoints`]), with at most `slice_size` tasks a
/// slice (1 at least), churning as little as possible:
/// - a listed task stays in its slice (its entry updated in place when it changed); a
///   task no longer wanted leaves its slice;
/// - new tasks (in `wanted`'s order) fill the slices with room, lowest number first, then
///   new slices, numbered from the lowest free number above 0;
/// - a slice over `slice_size` (the size was lowered) keeps its first `slice_size` tasks
///   and the rest are placed like new ones;
/// - slice 0 always exists; a slice n > 0 left empty is deleted;
/// - every slice carries `wanted`'s service-level fields, so changing one of them rewrites
///   every slice; a slice whose content is unchanged is not written.
///
/// Changes come in slice order.
pub fn plan_slices(
    wanted: EndpointsSpec,
    existing: Option<&Slices>,
    slice_size: usize,
) -> Vec<EndpointsChange> {
    let size = slice_size.max(1);
    let empty = Slices::new();
    let existing = existing.unwrap_or(&empty);
    let mut header = wanted;
    let tasks = std::mem::take(&mut header.tasks);
    header.slice = 0;
    // Wanted entries by task id, taken out as they are placed.
    let mut unplaced: HashMap<String, EndpointTask> =
        tasks.iter().map(|t| (t.task.clone(), t.clone())).collect();
    let mut placed: BTreeMap<u32, Vec<EndpointTask>> = BTreeMap::new();
    for (n, ep) in existing {
        let mut kept = Vec::new();
        for t in &ep.spec.tasks {
            if kept.len() == size {
                break;
            }
            if let Some(entry) = unplaced.remove(&t.task) {
                kept.push(entry);
            }
        }
        placed.insert(*n, kept);
    }
    placed.entry(0).or_default();
    let mut new = tasks
        .into_iter()
        .filter(|t| unplaced.contains_key(&t.task))
        .peekable();
    for kept in placed.values_mut() {
        while kept.len() < size {
            match new.next() {
                Some(t) => kept.push(t),
                None => break,
            }
        }
    }
    let mut next = 1;
    while new.peek().is_some() {
        while placed.contains_key(&next) {
            next += 1;
        }
        placed.insert(next, new.by_ref().take(size).collect());
    }

    let mut changes = Vec::new();
    for (n, mut slice_tasks) in placed {
        let old = existing.get(&n);
        if n > 0 && slice_tasks.is_empty() {
            if let Some(old) = old {
                changes.push(EndpointsChange::Delete(old.clone()));
            }
            continue;
        }
        slice_tasks.sort_by(|a, b| (&a.name, &a.task).cmp(&(&b.name, &b.task)));
        let spec = EndpointsSpec {
            slice: n,
            tasks: slice_tasks,
            ..header.clone()
        };
        match old {
            Some(old) if old.spec == spec => {}
            Some(old) => {
                let mut next = (**old).clone();
                next.spec = spec;
                changes.push(EndpointsChange::Update(next));
            }
            None => changes.push(EndpointsChange::Create(new_endpoints(spec))),
        }
    }
    changes
}

/// The changes that make the Endpoints of `service` equal `wanted` (one logical spec per
/// network the service is on, in order), each network's sliced by [`plan_slices`]; every
/// slice on a network not in `wanted` is deleted. With `wanted` empty (a deleted service)
/// every slice of the service goes.
pub fn plan_endpoints(
    service: &str,
    wanted: Vec<EndpointsSpec>,
    existing: &BTreeMap<(String, String), Slices>,
    slice_size: usize,
) -> Vec<EndpointsChange> {
    let mut changes = Vec::new();
    let networks: Vec<String> = wanted.iter().map(|w| w.network.clone()).collect();
    for spec in wanted {
        let stored = existing.get(&(spec.network.clone(), service.to_string()));
        changes.extend(plan_slices(spec, stored, slice_size));
    }
    for ((net, svc), slices) in existing {
        if svc == service && !networks.contains(net) {
            changes.extend(slices.values().cloned().map(EndpointsChange::Delete));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::endpoints::MAX_SLICE_TASKS;
    use shoal_api_types::{NodeStatus, ServiceSpec, Task, TaskAttachment, TaskSpec, TaskStatus};

    fn task(
        id: &str,
        slot: u64,
        node: &str,
        state: TaskState,
        desired: TaskState,
    ) -> Arc<TaskRecord> {
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
        Arc::new(TaskRecord::from(t))
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
        let existing: BTreeMap<(String, String), Slices> = [
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
                Slices::from([(0, Arc::new(new_endpoints(s)))]),
            )
        })
        .collect();
        let wanted = vec![
            spec("same", "10.0.1.2"),
            spec("moved", "10.0.2.9"),
            spec("new", "10.0.4.2"),
        ];
        let changes = plan_endpoints("api", wanted, &existing, MAX_SLICE_TASKS);
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
        assert_eq!(
            plan_endpoints("api", vec![], &existing, MAX_SLICE_TASKS).len(),
            3
        );
    }

    fn ep_task(i: usize) -> EndpointTask {
        EndpointTask::new(
            &format!("api.{i:05}"),
            &format!("10.0.{}.{}", i / 250, i % 250),
        )
        .id(&format!("t{i:05}"))
    }

    fn wanted(range: impl IntoIterator<Item = usize>) -> EndpointsSpec {
        spec("appnet", "10.0.0.2").tasks(range.into_iter().map(ep_task))
    }

    /// The stored slices after `changes` (as if written).
    fn apply(mut slices: Slices, changes: &[EndpointsChange]) -> Slices {
        for c in changes {
            match c {
                EndpointsChange::Create(e) | EndpointsChange::Update(e) => {
                    slices.insert(e.spec.slice, Arc::new(e.clone()));
                }
                EndpointsChange::Delete(e) => {
                    slices.remove(&e.spec.slice);
                }
            }
        }
        slices
    }

    fn sizes(slices: &Slices) -> Vec<(u32, usize)> {
        slices
            .iter()
            .map(|(n, e)| (*n, e.spec.tasks.len()))
            .collect()
    }

    fn slice_of(slices: &Slices, task: &str) -> Option<u32> {
        slices
            .iter()
            .find(|(_, e)| e.spec.tasks.iter().any(|t| t.task == task))
            .map(|(n, _)| *n)
    }

    fn two_thousand_five_hundred() -> Slices {
        apply(
            Slices::new(),
            &plan_slices(wanted(0..2500), None, MAX_SLICE_TASKS),
        )
    }

    #[test]
    fn a_2500_task_service_should_get_three_slices_of_at_most_1000() {
        let changes = plan_slices(wanted(0..2500), None, MAX_SLICE_TASKS);
        assert_eq!(changes.len(), 3);
        assert!(changes
            .iter()
            .all(|c| matches!(c, EndpointsChange::Create(_))));
        let slices = apply(Slices::new(), &changes);
        assert_eq!(sizes(&slices), vec![(0, 1000), (1, 1000), (2, 500)]);
        let names: Vec<&str> = slices.values().map(|e| e.metadata.name.as_str()).collect();
        assert_eq!(names, vec!["appnet.api", "appnet.api.1", "appnet.api.2"]);
        for e in slices.values() {
            assert_eq!(e.spec.vip.as_deref(), Some("10.0.0.2"), "self-describing");
        }
        // Stable: planning again changes nothing.
        assert!(plan_slices(wanted(0..2500), Some(&slices), MAX_SLICE_TASKS).is_empty());
    }

    #[test]
    fn adding_one_task_should_write_exactly_one_slice() {
        let slices = two_thousand_five_hundred();
        let changes = plan_slices(wanted(0..2501), Some(&slices), MAX_SLICE_TASKS);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let EndpointsChange::Update(e) = &changes[0] else {
            panic!("{changes:?}")
        };
        assert_eq!(e.spec.slice, 2, "the slice with room takes it");
        assert_eq!(e.spec.tasks.len(), 501);
    }

    #[test]
    fn removing_or_changing_one_task_should_write_exactly_one_slice() {
        let slices = two_thousand_five_hundred();
        let moved = slice_of(&slices, "t01234").unwrap();
        let changes = plan_slices(
            wanted((0..2500).filter(|i| *i != 1234)),
            Some(&slices),
            MAX_SLICE_TASKS,
        );
        assert_eq!(changes.len(), 1, "{changes:?}");
        let after = apply(slices.clone(), &changes);
        assert_eq!(after[&moved].spec.tasks.len(), 999);
        assert_eq!(slice_of(&after, "t01234"), None);

        // One task going unready is updated in place, in its slice.
        let mut spec = wanted(0..2500);
        spec.tasks[42].ready = false;
        let changes = plan_slices(spec, Some(&slices), MAX_SLICE_TASKS);
        assert_eq!(changes.len(), 1);
        let EndpointsChange::Update(e) = &changes[0] else {
            panic!("{changes:?}")
        };
        assert_eq!(Some(e.spec.slice), slice_of(&slices, "t00042"));
    }

    #[test]
    fn tasks_should_stay_in_their_slice_and_new_ones_fill_the_gaps() {
        let slices = two_thousand_five_hundred();
        // 10 tasks leave slice 0 and 10 new ones come: they fill slice 0 again, nothing
        // else moves.
        let changes = plan_slices(
            wanted((10..2500).chain(5000..5010)),
            Some(&slices),
            MAX_SLICE_TASKS,
        );
        assert_eq!(changes.len(), 1, "{changes:?}");
        let after = apply(slices.clone(), &changes);
        assert_eq!(sizes(&after), vec![(0, 1000), (1, 1000), (2, 500)]);
        assert_eq!(slice_of(&after, "t05005"), Some(0));
        for i in (10..2500).step_by(97) {
            let id = format!("t{i:05}");
            assert_eq!(slice_of(&after, &id), slice_of(&slices, &id), "{id} moved");
        }
    }

    #[test]
    fn a_service_level_change_should_rewrite_every_slice() {
        let slices = two_thousand_five_hundred();
        let mut spec = wanted(0..2500);
        spec.aliases = vec!["web".into()];
        let changes = plan_slices(spec, Some(&slices), MAX_SLICE_TASKS);
        assert_eq!(changes.len(), 3);
        let after = apply(slices, &changes);
        assert!(after.values().all(|e| e.spec.aliases == ["web"]));
        assert_eq!(sizes(&after), vec![(0, 1000), (1, 1000), (2, 500)]);
    }

    #[test]
    fn draining_to_zero_should_delete_every_slice_but_zero() {
        let slices = two_thousand_five_hundred();
        let changes = plan_slices(wanted(0..0), Some(&slices), MAX_SLICE_TASKS);
        let summary: Vec<(u32, &str)> = changes
            .iter()
            .map(|c| match c {
                EndpointsChange::Create(e) => (e.spec.slice, "create"),
                EndpointsChange::Update(e) => (e.spec.slice, "update"),
                EndpointsChange::Delete(e) => (e.spec.slice, "delete"),
            })
            .collect();
        assert_eq!(summary, vec![(0, "update"), (1, "delete"), (2, "delete")]);
        let after = apply(slices, &changes);
        assert_eq!(sizes(&after), vec![(0, 0)]);
        assert_eq!(
            after[&0].spec.vip.as_deref(),
            Some("10.0.0.2"),
            "slice 0 keeps the VIP"
        );
        // A service with no task at all still gets its slice 0.
        let created = plan_slices(wanted(0..0), None, MAX_SLICE_TASKS);
        assert!(matches!(&created[..], [EndpointsChange::Create(e)] if e.spec.slice == 0));
    }

    #[test]
    fn a_smaller_slice_size_should_cut_oversized_slices_and_number_from_the_lowest_gap() {
        let slices = apply(Slices::new(), &plan_slices(wanted(0..5), None, 2));
        assert_eq!(sizes(&slices), vec![(0, 2), (1, 2), (2, 1)]);
        // Slice 1 empties and is deleted; the next overflow takes number 1 again.
        let changes = plan_slices(wanted([0, 1, 4]), Some(&slices), 2);
        let after = apply(slices, &changes);
        assert_eq!(sizes(&after), vec![(0, 2), (2, 1)]);
        let after = apply(
            after.clone(),
            &plan_slices(wanted([0, 1, 4, 7, 8]), Some(&after), 2),
        );
        assert_eq!(sizes(&after), vec![(0, 2), (1, 1), (2, 2)]);
        // An old unsliced object over the size keeps its first tasks; the rest move out.
        let old = Slices::from([(0, Arc::new(new_endpoints(wanted(0..5))))]);
        let after = apply(old.clone(), &plan_slices(wanted(0..5), Some(&old), 2));
        assert_eq!(sizes(&after), vec![(0, 2), (1, 2), (2, 1)]);
    }
}
