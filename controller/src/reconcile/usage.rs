//! [`NodeUsage`]: what the tasks assigned to one node use of it — the live tasks (in
//! total and per service), their resource reservations and the host-mode ports held —
//! kept by the cache as tasks come, change and go, so the scheduler reads a node's load
//! instead of walking every task per pass.
//!
//! What a task contributes ([`Contribution::of`]) is a pure function of the task alone:
//! nothing while it is unassigned or ended (terminal); once on a node and not ended, its
//! host ports (a stopping task still holds them until it has stopped) and, while wanted
//! running, one live task of its service and its reservations.
//!
//! Invariant: [`NodeUsages`] equals the sum of the contributions of the cache's tasks
//! ([`NodeUsages::walk`]), whatever the order of the changes: the cache removes a task's
//! old contribution and adds its new one on every change. Sums use wrapping arithmetic so
//! that a removal undoes its addition exactly; a node's entry goes when nothing is left.

use std::collections::HashMap;

use shoal_api_types::{Protocol, PublishMode, TaskState};

use shoal_api_types::resources::{Cpus, Memory, ResourceReservations};
use shoal_api_types::service::PortConfig;

use super::record::TaskRecord;

/// CPUs (millicpus) and memory (bytes) reserved, or wanted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserved {
    /// Millicpus.
    pub cpus: u64,
    /// Bytes.
    pub memory: u64,
}

impl Reserved {
    /// What a task's `resources.reservations` reserve (unset: nothing).
    pub fn of(r: &ResourceReservations) -> Reserved {
        Reserved {
            cpus: r.cpus.map_or(0, Cpus::millis),
            memory: r.memory.map_or(0, Memory::bytes),
        }
    }

    /// Whether nothing is reserved.
    pub fn is_zero(&self) -> bool {
        self.cpus == 0 && self.memory == 0
    }

    /// Adds `other` (saturating).
    pub fn add(&mut self, other: Reserved) {
        self.cpus = self.cpus.saturating_add(other.cpus);
        self.memory = self.memory.saturating_add(other.memory);
    }
}

/// What one task adds to its node's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution<'a> {
    /// The node.
    pub node: &'a str,
    /// The service, when the task is live (wanted running).
    pub live_of: Option<&'a str>,
    /// What it reserves (zero unless live).
    pub reserve: Reserved,
    /// Host-mode published ports it holds.
    pub host_ports: Vec<(u32, Protocol)>,
}

impl<'a> Contribution<'a> {
    /// What `t` adds to its node, or nothing (unassigned, or ended).
    pub fn of(t: &'a TaskRecord) -> Option<Contribution<'a>> {
        let node = t.spec.node.as_deref()?;
        if t.status.state.is_terminal() {
            return None;
        }
        let live = t.spec.desired_state == TaskState::Running;
        Some(Contribution {
            node,
            live_of: live.then_some(t.spec.service.as_str()),
            reserve: if live {
                Reserved::of(&t.spec.resources().reservations)
            } else {
                Reserved::default()
            },
            host_ports: host_ports(t),
        })
    }
}

/// The host-mode published ports `t` asks for (port, protocol): what it holds on its node.
pub fn host_ports(t: &TaskRecord) -> Vec<(u32, Protocol)> {
    host_ports_of(t.spec.ports())
}

/// The host-mode ports among `ports` (port, protocol).
pub fn host_ports_of(ports: &[PortConfig]) -> Vec<(u32, Protocol)> {
    ports
        .iter()
        .filter(|p| p.mode == PublishMode::Host)
        .map(|p| (p.published, p.protocol))
        .collect()
}

/// One node's usage (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeUsage {
    /// Live tasks on the node.
    pub total: usize,
    /// Live tasks per service (no zero entries).
    pub per_service: HashMap<String, usize>,
    /// What the live tasks reserve.
    pub reserved: Reserved,
    /// Host ports held, with how many tasks hold each (no zero entries).
    pub host_ports: HashMap<(u32, Protocol), usize>,
}

impl NodeUsage {
    fn is_empty(&self) -> bool {
        self.total == 0 && self.host_ports.is_empty() && self.reserved.is_zero()
    }
}

/// The usage of every node some task uses (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeUsages {
    by_node: HashMap<String, NodeUsage>,
}

impl NodeUsages {
    /// The usage of node `name` (None: no task uses it).
    pub fn get(&self, name: &str) -> Option<&NodeUsage> {
        self.by_node.get(name)
    }

    /// Adds what `t` uses.
    pub fn add(&mut self, t: &TaskRecord) {
        let Some(c) = Contribution::of(t) else { return };
        let u = self.by_node.entry(c.node.to_string()).or_default();
        if let Some(service) = c.live_of {
            u.total += 1;
            match u.per_service.get_mut(service) {
                Some(n) => *n += 1,
                None => {
                    u.per_service.insert(service.to_string(), 1);
                }
            }
            u.reserved.cpus = u.reserved.cpus.wrapping_add(c.reserve.cpus);
            u.reserved.memory = u.reserved.memory.wrapping_add(c.reserve.memory);
        }
        for p in c.host_ports {
            *u.host_ports.entry(p).or_default() += 1;
        }
    }

    /// Removes what `t` used (it must have been added).
    pub fn remove(&mut self, t: &TaskRecord) {
        let Some(c) = Contribution::of(t) else { return };
        let Some(u) = self.by_node.get_mut(c.node) else {
            return;
        };
        if let Some(service) = c.live_of {
            u.total = u.total.saturating_sub(1);
            if let Some(n) = u.per_service.get_mut(service) {
                *n -= 1;
                if *n == 0 {
                    u.per_service.remove(service);
                }
            }
            u.reserved.cpus = u.reserved.cpus.wrapping_sub(c.reserve.cpus);
            u.reserved.memory = u.reserved.memory.wrapping_sub(c.reserve.memory);
        }
        for p in c.host_ports {
            if let Some(n) = u.host_ports.get_mut(&p) {
                *n -= 1;
                if *n == 0 {
                    u.host_ports.remove(&p);
                }
            }
        }
        if u.is_empty() {
            self.by_node.remove(c.node);
        }
    }

    /// The usages of `tasks`, summed from scratch (what the kept usages must equal).
    pub fn walk<'a>(tasks: impl IntoIterator<Item = &'a TaskRecord>) -> NodeUsages {
        let mut u = NodeUsages::default();
        for t in tasks {
            u.add(t);
        }
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::{Task, TaskSpec};

    fn task(service: &str, node: Option<&str>, desired: TaskState, state: TaskState) -> TaskRecord {
        let mut t = Task::new(
            "t",
            TaskSpec {
                service: service.into(),
                node: node.map(Into::into),
                desired_state: desired,
                ports: vec![PortConfig {
                    target: 80,
                    published: 8080,
                    mode: PublishMode::Host,
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        t.spec.resources.reservations = ResourceReservations {
            cpus: Some(Cpus(500)),
            memory: Some(Memory(1 << 20)),
        };
        t.status.state = state;
        TaskRecord::from(t)
    }

    #[test]
    fn a_live_task_should_count_reserve_and_hold_its_ports_on_its_node() {
        let t = task("api", Some("n1"), TaskState::Running, TaskState::Running);
        let u = NodeUsages::walk([&t]);
        let n1 = u.get("n1").expect("n1 used");
        assert_eq!(n1.total, 1);
        assert_eq!(n1.per_service["api"], 1);
        assert_eq!(
            n1.reserved,
            Reserved {
                cpus: 500,
                memory: 1 << 20
            }
        );
        assert_eq!(n1.host_ports[&(8080, Protocol::Tcp)], 1);
    }

    #[test]
    fn a_stopping_task_should_hold_only_its_ports_and_an_ended_or_unassigned_one_nothing() {
        let stopping = task("api", Some("n1"), TaskState::Shutdown, TaskState::Running);
        let u = NodeUsages::walk([&stopping]);
        let n1 = u.get("n1").expect("ports held");
        assert_eq!((n1.total, n1.reserved), (0, Reserved::default()));
        assert!(n1.per_service.is_empty());
        assert_eq!(n1.host_ports.len(), 1);
        let ended = task("api", Some("n1"), TaskState::Running, TaskState::Failed);
        let pending = task("api", None, TaskState::Running, TaskState::Pending);
        assert_eq!(NodeUsages::walk([&ended, &pending]), NodeUsages::default());
    }

    #[test]
    fn removing_what_was_added_should_leave_nothing() {
        let a = task("api", Some("n1"), TaskState::Running, TaskState::Running);
        let b = task("db", Some("n1"), TaskState::Shutdown, TaskState::Starting);
        let mut u = NodeUsages::walk([&a, &b, &a]);
        assert_eq!(
            u.get("n1").map(|n| n.host_ports[&(8080, Protocol::Tcp)]),
            Some(3)
        );
        u.remove(&a);
        u.remove(&b);
        assert_eq!(u, NodeUsages::walk([&a]));
        u.remove(&a);
        assert_eq!(u, NodeUsages::default());
    }
}
