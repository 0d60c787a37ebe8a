//! The cache: one consistent snapshot ([`World`]) of everything below the key root, fed by
//! a single [`shoal_store::Watcher`], so every kind is seen at the same revision.
//!
//! Invariants:
//! - `World::revision` is the revision the snapshot reflects; all objects and allocation
//!   records in it are exactly etcd's state at that revision.
//! - A relist builds a fresh `World` and swaps it in whole; tasks unchanged since the
//!   previous world are shared with it, not decoded twice.
//! - Tasks are held as [`TaskRecord`]s: per-task fields plus a template shared by every
//!   task made from one version of a service ([`super::record`]); a record gives back the
//!   whole task for writers ([`TaskRecord::to_task`]).
//! - Indexes (tasks by service, unassigned tasks, claims by owner, node usage, running
//!   tasks per service) always agree with the primary maps.
//! - A service's [`ServiceTally::shaped_at`] changes whenever its tasks change in anything
//!   a slot plan reads (everything but a status moving between non-terminal states), and
//!   [`World::nodes_shaped_at`] whenever nodes or their liveness keys change; both only
//!   grow, also across a relist, so equal values mean an unchanged shape.
//! - Reconcilers read, never write, the cache; after writing to etcd at revision `W` they
//!   wait for `revision >= W` before reconciling again ([`Cache::wait_for`]), so they never
//!   act twice on a stale view.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use ipnetwork::Ipv4Network;
use shoal_api_types::endpoints::split_slice;
use shoal_api_types::keys::Keys;
use shoal_api_types::task::UNASSIGNED;
use shoal_api_types::{ClusterSettings, Endpoints, Network, Node, Object, Resource, Service, Task};

use super::record::{TaskRecord, Templates};
use super::usage::NodeUsages;
use tokio::sync::watch;

use shoal_store::{RawEvent, RawKv, WatcherEvent};

/// An allocation record: who holds it, and the key's mod_revision (to release it safely).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The owner written in the record (network name, task id, `vip/<service>`).
    pub owner: String,
    /// The record's mod_revision.
    pub revision: i64,
}

/// Address-management records.
#[derive(Debug, Clone, Default)]
pub struct Ipam {
    /// Claimed subnets.
    pub subnets: BTreeMap<Ipv4Network, Claim>,
    /// Claimed VNIs.
    pub vnis: BTreeMap<u32, Claim>,
    /// Claimed addresses per network.
    pub ips: HashMap<String, HashMap<Ipv4Addr, Claim>>,
    /// Addresses per owner: owner -> (network, address).
    pub by_owner: HashMap<String, BTreeSet<(String, Ipv4Addr)>>,
}

impl Ipam {
    /// Whether `ip` is claimed on `network`.
    pub fn ip_taken(&self, network: &str, ip: Ipv4Addr) -> bool {
        self.ips.get(network).is_some_and(|m| m.contains_key(&ip))
    }

    /// The claim of `ip` on `network`.
    pub fn ip_claim(&self, network: &str, ip: Ipv4Addr) -> Option<&Claim> {
        self.ips.get(network).and_then(|m| m.get(&ip))
    }
}

/// Per service, what its status pass reads without walking the service's tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceTally {
    /// Tasks wanted running that run.
    pub running: u64,
    /// [`World::shape_seq`] at the last change of the service's tasks other than a status
    /// moving between non-terminal states ([`is_progress`]): a task added, removed, moved,
    /// stopped, ended or rewritten.
    pub shaped_at: u64,
}

/// Whether a task changing from `old` to `new` only moved its status between non-terminal
/// states (`assigned` → `starting` → `running`, a health flip): what the slot plan of its
/// service does not depend on.
pub fn is_progress(old: Option<&TaskRecord>, new: Option<&TaskRecord>) -> bool {
    match (old, new) {
        (Some(o), Some(n)) => {
            o.metadata.uid == n.metadata.uid
                && o.spec == n.spec
                && !o.status.state.is_terminal()
                && !n.status.state.is_terminal()
        }
        _ => false,
    }
}

fn runs(t: &TaskRecord) -> bool {
    t.spec.desired_state == shoal_api_types::TaskState::Running
        && t.status.state == shoal_api_types::TaskState::Running
}

/// A task not yet on a node, as [`World::unassigned`] orders it: by service, slot, id.
pub type PendingKey = (String, Option<u64>, String);

fn pending_key(t: &TaskRecord) -> PendingKey {
    (t.spec.service.clone(), t.spec.slot, t.metadata.name.clone())
}

/// Everything the controller knows, at one revision.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// The etcd revision this snapshot reflects.
    pub revision: i64,
    /// Networks by name.
    pub networks: BTreeMap<String, Arc<Network>>,
    /// Services by name.
    pub services: BTreeMap<String, Arc<Service>>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Arc<Node>>,
    /// Nodes whose agent holds its liveness key.
    pub node_leases: HashSet<String>,
    /// Tasks by id.
    pub tasks: HashMap<String, Arc<TaskRecord>>,
    /// Tasks by service, then id (the same records as `tasks`).
    pub tasks_by_service: HashMap<String, HashMap<String, Arc<TaskRecord>>>,
    /// Tasks not yet on a node, in the order the scheduler places them.
    pub unassigned: BTreeSet<PendingKey>,
    /// What the tasks on each node use of it (the sum over `tasks`, kept as they change).
    pub usage: NodeUsages,
    /// Per service: running tasks and when its tasks last changed shape.
    pub tallies: HashMap<String, ServiceTally>,
    /// Counts shape changes (of any service's tasks, of nodes and their liveness keys);
    /// never goes back, also across a relist.
    pub shape_seq: u64,
    /// `shape_seq` at the last change of a node or a node's liveness key.
    pub nodes_shaped_at: u64,
    /// Endpoints slices by (network, service), then slice number.
    pub endpoints: BTreeMap<(String, String), BTreeMap<u32, Arc<Endpoints>>>,
    /// Allocation records.
    pub ipam: Ipam,
    /// The ClusterSettings object, if stored.
    pub settings: Option<Arc<ClusterSettings>>,
    /// The tasks' shared templates.
    pub templates: Templates,
}

/// What one event changed, for mapping to work-queue keys.
#[derive(Debug, Clone)]
pub enum Change {
    /// A network was created, changed or deleted.
    Network(String),
    /// A service was created, changed or deleted.
    Service(String),
    /// A node was created, changed or deleted.
    Node(String),
    /// A node's liveness key appeared (`true`) or went away (`false`).
    NodeLease(String, bool),
    /// A task changed: before and after.
    Task(Option<Arc<TaskRecord>>, Option<Arc<TaskRecord>>),
    /// An Endpoints slice of (network, service) changed.
    Endpoints(String, String),
    /// A subnet record was released.
    SubnetReleased,
    /// An address record on this network was released.
    IpReleased(String),
    /// The ClusterSettings object was written or deleted.
    Settings,
}

enum Parsed<'a> {
    Network(&'a str),
    Service(&'a str),
    Node(&'a str),
    Task(&'a str, &'a str),
    Endpoints(&'a str, &'a str, u32),
    NodeLease(&'a str),
    Subnet(Ipv4Network),
    Vni(u32),
    Ip(&'a str, Ipv4Addr),
    Settings,
    Other,
}

fn parse_key<'a>(root: &str, key: &'a str) -> Parsed<'a> {
    let Some(rest) = key.strip_prefix(root).and_then(|r| r.strip_prefix('/')) else {
        return Parsed::Other;
    };
    let parts: Vec<&'a str> = rest.split('/').collect();
    match parts.as_slice() {
        ["networks", n] => Parsed::Network(n),
        ["services", n] => Parsed::Service(n),
        ["nodes", n] => Parsed::Node(n),
        ["tasks", node, id] => Parsed::Task(node, id),
        ["endpoints", net, rest] => match split_slice(rest) {
            Some((svc, slice)) => Parsed::Endpoints(net, svc, slice),
            None => Parsed::Other,
        },
        ["leases", "nodes", n] => Parsed::NodeLease(n),
        ["settings", n] if *n == shoal_api_types::settings::CLUSTER_SETTINGS => Parsed::Settings,
        ["ipam", "subnets", s] => match s.rsplit_once('-') {
            Some((ip, len)) => match (ip.parse::<Ipv4Addr>(), len.parse::<u8>()) {
                (Ok(ip), Ok(len)) => Ipv4Network::new(ip, len)
                    .map(Parsed::Subnet)
                    .unwrap_or(Parsed::Other),
                _ => Parsed::Other,
            },
            None => Parsed::Other,
        },
        ["ipam", "vnis", v] => v.parse().map(Parsed::Vni).unwrap_or(Parsed::Other),
        ["ipam", "ips", net, ip] => ip
            .parse()
            .map(|ip| Parsed::Ip(net, ip))
            .unwrap_or(Parsed::Other),
        _ => Parsed::Other,
    }
}

fn decode<S: Resource>(kv: &RawKv) -> Option<Arc<Object<S>>> {
    match serde_json::from_slice::<Object<S>>(&kv.value) {
        Ok(mut obj) => {
            obj.metadata.resource_version = Some(kv.mod_revision.to_string());
            Some(Arc::new(obj))
        }
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "ignoring undecodable {}", S::KIND);
            None
        }
    }
}

impl World {
    /// Records `kv`. A task that `previous` (the world a relist replaces) holds at the
    /// same revision is shared with it, not decoded again, so a relist does not hold two
    /// copies of every task.
    fn put(&mut self, root: &str, kv: &RawKv, changes: &mut Vec<Change>, previous: Option<&World>) {
        match parse_key(root, &kv.key) {
            Parsed::Network(n) => {
                if let Some(o) = decode(kv) {
                    self.networks.insert(n.to_string(), o);
                    changes.push(Change::Network(n.to_string()));
                }
            }
            Parsed::Service(n) => {
                if let Some(o) = decode(kv) {
                    self.services.insert(n.to_string(), o);
                    changes.push(Change::Service(n.to_string()));
                }
            }
            Parsed::Node(n) => {
                if let Some(o) = decode(kv) {
                    self.nodes.insert(n.to_string(), o);
                    self.reshape_nodes();
                    changes.push(Change::Node(n.to_string()));
                }
            }
            Parsed::NodeLease(n) => {
                if self.node_leases.insert(n.to_string()) {
                    self.reshape_nodes();
                    changes.push(Change::NodeLease(n.to_string(), true));
                }
            }
            Parsed::Task(node, id) => {
                let unchanged = previous
                    .and_then(|w| w.tasks.get(id))
                    .filter(|t| t.metadata.revision == kv.mod_revision)
                    .cloned();
                let task = match unchanged {
                    Some(t) => t,
                    None => match decode_task(kv) {
                        Some(t) => Arc::new(TaskRecord::new(t, &mut self.templates)),
                        None => return,
                    },
                };
                let old = self.store_task(id, task.clone(), node == UNASSIGNED);
                changes.push(Change::Task(old, Some(task)));
            }
            Parsed::Endpoints(net, svc, slice) => {
                if let Some(o) = decode(kv) {
                    self.endpoints
                        .entry((net.to_string(), svc.to_string()))
                        .or_default()
                        .insert(slice, o);
                    changes.push(Change::Endpoints(net.to_string(), svc.to_string()));
                }
            }
            Parsed::Subnet(net) => {
                self.ipam.subnets.insert(net, claim(kv));
            }
            Parsed::Vni(v) => {
                self.ipam.vnis.insert(v, claim(kv));
            }
            Parsed::Ip(net, ip) => {
                let c = claim(kv);
                if let Some(prev) = self
                    .ipam
                    .ips
                    .entry(net.to_string())
                    .or_default()
                    .insert(ip, c.clone())
                {
                    unindex_owner(&mut self.ipam, &prev.owner, net, ip);
                }
                self.ipam
                    .by_owner
                    .entry(c.owner)
                    .or_default()
                    .insert((net.to_string(), ip));
            }
            Parsed::Settings => {
                if let Some(o) = decode(kv) {
                    self.settings = Some(o);
                    changes.push(Change::Settings);
                }
            }
            Parsed::Other => {}
        }
    }

    /// Puts `t` in place of the task `id` (its key's) in every index (`pending`: not yet on
    /// a node), and returns the one it replaced.
    fn store_task(
        &mut self,
        id: &str,
        t: Arc<TaskRecord>,
        pending: bool,
    ) -> Option<Arc<TaskRecord>> {
        let old = self.remove_task(id);
        if pending {
            self.unassigned.insert(pending_key(&t));
        }
        self.tasks_by_service
            .entry(t.spec.service.clone())
            .or_default()
            .insert(id.to_string(), t.clone());
        self.add_task_counts(&t);
        self.reshape(old.as_deref(), Some(&t));
        self.tasks.insert(id.to_string(), t);
        old
    }

    fn remove_task(&mut self, id: &str) -> Option<Arc<TaskRecord>> {
        let old = self.tasks.remove(id)?;
        self.unassigned.remove(&pending_key(&old));
        self.usage.remove(&old);
        if runs(&old) {
            if let Some(t) = self.tallies.get_mut(&old.spec.service) {
                t.running = t.running.saturating_sub(1);
            }
        }
        if let Some(set) = self.tasks_by_service.get_mut(&old.spec.service) {
            set.remove(id);
            if set.is_empty() {
                self.tasks_by_service.remove(&old.spec.service);
            }
        }
        Some(old)
    }

    fn add_task_counts(&mut self, t: &TaskRecord) {
        self.usage.add(t);
        if runs(t) {
            self.tallies
                .entry(t.spec.service.clone())
                .or_default()
                .running += 1;
        }
    }

    /// Records a shape change of the tasks' services unless `old` → `new` is progress.
    fn reshape(&mut self, old: Option<&TaskRecord>, new: Option<&TaskRecord>) {
        if is_progress(old, new) {
            return;
        }
        self.shape_seq += 1;
        for t in old.into_iter().chain(new) {
            self.tallies
                .entry(t.spec.service.clone())
                .or_default()
                .shaped_at = self.shape_seq;
        }
    }

    fn reshape_nodes(&mut self) {
        self.shape_seq += 1;
        self.nodes_shaped_at = self.shape_seq;
    }

    fn delete(&mut self, root: &str, key: &str, changes: &mut Vec<Change>) {
        match parse_key(root, key) {
            Parsed::Network(n) => {
                if self.networks.remove(n).is_some() {
                    changes.push(Change::Network(n.to_string()));
                }
            }
            Parsed::Service(n) => {
                if self.services.remove(n).is_some() {
                    changes.push(Change::Service(n.to_string()));
                }
            }
            Parsed::Node(n) => {
                if self.nodes.remove(n).is_some() {
                    self.reshape_nodes();
                    changes.push(Change::Node(n.to_string()));
                }
            }
            Parsed::NodeLease(n) => {
                if self.node_leases.remove(n) {
                    self.reshape_nodes();
                    changes.push(Change::NodeLease(n.to_string(), false));
                }
            }
            Parsed::Task(node, id) => {
                // A move (delete of the old key and create of the new one in one
                // transaction) must not drop the task: only remove what is at this key.
                let here = self
                    .tasks
                    .get(id)
                    .is_some_and(|t| t.spec.node.as_deref().unwrap_or(UNASSIGNED) == node);
                if here {
                    let old = self.remove_task(id);
                    self.reshape(old.as_deref(), None);
                    changes.push(Change::Task(old, None));
                }
            }
            Parsed::Endpoints(net, svc, slice) => {
                let key = (net.to_string(), svc.to_string());
                if let Some(slices) = self.endpoints.get_mut(&key) {
                    if slices.remove(&slice).is_some() {
                        if slices.is_empty() {
                            self.endpoints.remove(&key);
                        }
                        changes.push(Change::Endpoints(key.0, key.1));
                    }
                }
            }
            Parsed::Subnet(net) => {
                if self.ipam.subnets.remove(&net).is_some() {
                    changes.push(Change::SubnetReleased);
                }
            }
            Parsed::Vni(v) => {
                self.ipam.vnis.remove(&v);
            }
            Parsed::Ip(net, ip) => {
                if let Some(map) = self.ipam.ips.get_mut(net) {
                    if let Some(prev) = map.remove(&ip) {
                        unindex_owner(&mut self.ipam, &prev.owner, net, ip);
                        changes.push(Change::IpReleased(net.to_string()));
                    }
                }
            }
            Parsed::Settings => {
                if self.settings.take().is_some() {
                    changes.push(Change::Settings);
                }
            }
            Parsed::Other => {}
        }
    }

    /// Records `task` as if it had been listed (tests).
    pub fn insert_task(&mut self, task: Task) -> Arc<TaskRecord> {
        let t = Arc::new(TaskRecord::new(task, &mut self.templates));
        let (id, pending) = (t.metadata.name.clone(), t.spec.node.is_none());
        self.store_task(&id, t.clone(), pending);
        t
    }

    /// The tasks of a service.
    pub fn service_tasks(&self, service: &str) -> Vec<Arc<TaskRecord>> {
        self.tasks_by_service
            .get(service)
            .map(|tasks| tasks.values().cloned().collect())
            .unwrap_or_default()
    }
}

fn decode_task(kv: &RawKv) -> Option<Task> {
    match serde_json::from_slice::<Task>(&kv.value) {
        Ok(mut t) => {
            t.metadata.resource_version = Some(kv.mod_revision.to_string());
            Some(t)
        }
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "ignoring undecodable Task");
            None
        }
    }
}

fn claim(kv: &RawKv) -> Claim {
    Claim {
        owner: String::from_utf8_lossy(&kv.value).into_owned(),
        revision: kv.mod_revision,
    }
}

fn unindex_owner(ipam: &mut Ipam, owner: &str, net: &str, ip: Ipv4Addr) {
    if let Some(set) = ipam.by_owner.get_mut(owner) {
        set.remove(&(net.to_string(), ip));
        if set.is_empty() {
            ipam.by_owner.remove(owner);
        }
    }
}

/// The shared cache and its revision, which reconcilers can wait on.
pub struct Cache {
    root: String,
    world: RwLock<World>,
    revision: watch::Sender<i64>,
}

impl Cache {
    /// An empty cache for keys below `keys`' root (revision 0 until the first list).
    pub fn new(keys: &Keys) -> Self {
        Cache {
            root: keys.root().to_string(),
            world: RwLock::new(World::default()),
            revision: watch::channel(0).0,
        }
    }

    /// Reads the current snapshot. Do not hold across `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, World> {
        self.world.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The revision the cache reflects.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Waits until the cache reflects at least `revision`.
    pub async fn wait_for(&self, revision: i64) {
        let mut rx = self.revision.subscribe();
        let _ = rx.wait_for(|r| *r >= revision).await;
    }

    /// Applies what the watcher yielded; returns what changed (for a relist: everything,
    /// including what disappeared).
    pub fn apply(&self, event: WatcherEvent) -> Vec<Change> {
        let mut changes = Vec::new();
        let revision = match event {
            WatcherEvent::Restarted { items, revision } => {
                let mut fresh = World::default();
                {
                    let previous = self.world.read().unwrap_or_else(|p| p.into_inner());
                    fresh.templates = previous.templates.clone();
                    // Every shape seen before the relist is outdated.
                    fresh.shape_seq = previous.shape_seq;
                    fresh.reshape_nodes();
                    // Consumed as decoded: the raw values go while the world fills.
                    for kv in items {
                        fresh.put(&self.root, &kv, &mut changes, Some(&previous));
                    }
                }
                fresh.revision = revision;
                let mut world = self.world.write().unwrap_or_else(|p| p.into_inner());
                // Report what vanished while we were not watching.
                for n in world
                    .networks
                    .keys()
                    .filter(|n| !fresh.networks.contains_key(*n))
                {
                    changes.push(Change::Network(n.clone()));
                }
                for n in world
                    .services
                    .keys()
                    .filter(|n| !fresh.services.contains_key(*n))
                {
                    changes.push(Change::Service(n.clone()));
                }
                for n in world.nodes.keys().filter(|n| !fresh.nodes.contains_key(*n)) {
                    changes.push(Change::Node(n.clone()));
                }
                for n in world
                    .node_leases
                    .iter()
                    .filter(|n| !fresh.node_leases.contains(*n))
                {
                    changes.push(Change::NodeLease(n.clone(), false));
                }
                for (id, t) in world
                    .tasks
                    .iter()
                    .filter(|(id, _)| !fresh.tasks.contains_key(*id))
                {
                    let _ = id;
                    changes.push(Change::Task(Some(t.clone()), None));
                }
                if world.settings.is_some() && fresh.settings.is_none() {
                    changes.push(Change::Settings);
                }
                *world = fresh;
                revision
            }
            WatcherEvent::Events { events, revision } => {
                let mut world = self.world.write().unwrap_or_else(|p| p.into_inner());
                for ev in &events {
                    match ev {
                        RawEvent::Put(kv) => world.put(&self.root, kv, &mut changes, None),
                        RawEvent::Delete { key, .. } => world.delete(&self.root, key, &mut changes),
                    }
                }
                world.revision = world.revision.max(revision);
                world.revision
            }
        };
        self.revision.send_if_modified(|r| {
            if revision > *r {
                *r = revision;
                true
            } else {
                false
            }
        });
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::{NetworkSpec, TaskSpec};

    fn kv(key: String, value: Vec<u8>, rev: i64) -> RawKv {
        RawKv {
            key,
            value,
            mod_revision: rev,
            create_revision: rev,
            lease: 0,
        }
    }

    #[test]
    fn cache_should_keep_a_moved_task_and_index_claims() {
        let keys = Keys::new("/r");
        let cache = Cache::new(&keys);
        let net = Network::new("n", NetworkSpec::default());
        let mut t = Task::new(
            "t1",
            TaskSpec {
                service: "api".into(),
                ..Default::default()
            },
        );
        cache.apply(WatcherEvent::Restarted {
            items: vec![
                kv(keys.key(&net), serde_json::to_vec(&net).unwrap(), 2),
                kv(keys.key(&t), serde_json::to_vec(&t).unwrap(), 3),
                kv(keys.ip("n", "10.0.0.2".parse().unwrap()), b"t1".to_vec(), 3),
            ],
            revision: 3,
        });
        {
            let w = cache.read();
            assert_eq!(w.unassigned.len(), 1);
            assert_eq!(w.ipam.by_owner["t1"].len(), 1);
        }
        let old_key = keys.key(&t);
        t.spec.node = Some("node-1".into());
        cache.apply(WatcherEvent::Events {
            events: vec![
                RawEvent::Delete {
                    key: old_key,
                    revision: 4,
                    prev: None,
                },
                RawEvent::Put(kv(keys.key(&t), serde_json::to_vec(&t).unwrap(), 4)),
            ],
            revision: 4,
        });
        let w = cache.read();
        assert_eq!(w.revision, 4);
        assert!(w.unassigned.is_empty());
        assert_eq!(w.tasks["t1"].spec.node.as_deref(), Some("node-1"));
        assert_eq!(w.service_tasks("api").len(), 1);
    }

    #[test]
    fn node_usage_should_follow_every_task_change_as_a_walk_would_sum_it() {
        use shoal_api_types::TaskState;
        let keys = Keys::new("/r");
        let cache = Cache::new(&keys);
        let task = |id: &str, node: Option<&str>, desired, state| {
            let mut t = Task::new(
                id,
                TaskSpec {
                    service: "api".into(),
                    node: node.map(Into::into),
                    desired_state: desired,
                    ..Default::default()
                },
            );
            t.status.state = state;
            t
        };
        let put =
            |t: &Task, rev| RawEvent::Put(kv(keys.key(t), serde_json::to_vec(t).unwrap(), rev));
        let del = |t: &Task, rev| RawEvent::Delete {
            key: keys.key(t),
            revision: rev,
            prev: None,
        };
        let (run, shut) = (TaskState::Running, TaskState::Shutdown);
        let a0 = task("a", None, run, TaskState::Pending);
        let a1 = task("a", Some("n1"), run, TaskState::Assigned);
        let a2 = task("a", Some("n1"), run, TaskState::Running);
        let a3 = task("a", Some("n1"), shut, TaskState::Running);
        let a4 = task("a", Some("n1"), shut, TaskState::Shutdown);
        let b = task("b", Some("n2"), run, TaskState::Running);
        let steps: Vec<Vec<RawEvent>> = vec![
            vec![put(&a0, 2), put(&b, 2)],
            // The scheduler's move: delete and create in one transaction.
            vec![del(&a0, 3), put(&a1, 3)],
            vec![put(&a2, 4)],
            vec![put(&a3, 5)],
            vec![put(&a4, 6)],
            vec![del(&a4, 7), put(&a2, 7)],
            vec![del(&b, 8)],
        ];
        let mut seen = vec![];
        let mut shapes = vec![];
        for (i, events) in steps.into_iter().enumerate() {
            cache.apply(WatcherEvent::Events {
                events,
                revision: i as i64 + 2,
            });
            let w = cache.read();
            assert_eq!(
                w.usage,
                NodeUsages::walk(w.tasks.values().map(|t| &**t)),
                "step {i}"
            );
            let running = w.tasks.values().filter(|t| runs(t)).count() as u64;
            assert_eq!(w.tallies["api"].running, running, "step {i}");
            seen.push(w.usage.get("n1").map_or(0, |u| u.total));
            shapes.push(w.tallies["api"].shaped_at);
        }
        assert_eq!(
            seen,
            [0, 1, 1, 0, 0, 1, 1],
            "live tasks on n1 after each step"
        );
        // Only `assigned` -> `running` (step 2) left the shape as it was.
        let changed: Vec<bool> = shapes.windows(2).map(|w| w[0] != w[1]).collect();
        assert_eq!(changed, [true, false, true, true, true, true]);
    }

    #[test]
    fn a_relist_should_share_unchanged_tasks_and_decode_changed_ones() {
        let keys = Keys::new("/r");
        let cache = Cache::new(&keys);
        let task = |id: &str, image: &str| {
            let mut t = Task::new(
                id,
                TaskSpec {
                    service: "api".into(),
                    image: image.into(),
                    ..Default::default()
                },
            );
            t.spec.node = Some("n1".into());
            t
        };
        let (a, b) = (task("a", "one"), task("b", "one"));
        let item = |t: &Task, rev| kv(keys.key(t), serde_json::to_vec(t).unwrap(), rev);
        cache.apply(WatcherEvent::Restarted {
            items: vec![item(&a, 2), item(&b, 3)],
            revision: 3,
        });
        let (a_before, b_before) = {
            let w = cache.read();
            (w.tasks["a"].clone(), w.tasks["b"].clone())
        };
        // After a compaction: `a` unchanged, `b` rewritten, `c` new.
        let b2 = task("b", "two");
        let c = task("c", "one");
        cache.apply(WatcherEvent::Restarted {
            items: vec![item(&a, 2), item(&b2, 9), item(&c, 9)],
            revision: 9,
        });
        let w = cache.read();
        assert!(Arc::ptr_eq(&w.tasks["a"], &a_before), "unchanged: shared");
        assert!(!Arc::ptr_eq(&w.tasks["b"], &b_before));
        assert_eq!(w.tasks["b"].runs_with().image, "two");
        assert_eq!(w.tasks["c"].metadata.revision(), Some(9));
    }

    #[test]
    fn cache_should_hold_every_slice_of_a_service_apart_from_a_service_named_like_one() {
        let keys = Keys::new("/r");
        let cache = Cache::new(&keys);
        let ep = |svc: &str, slice: u32| {
            let o = shoal_api_types::EndpointsSpec::vip("n", svc, "10.0.0.2")
                .slice(slice)
                .object();
            kv(keys.key(&o), serde_json::to_vec(&o).unwrap(), 2)
        };
        cache.apply(WatcherEvent::Restarted {
            items: vec![ep("a", 0), ep("a", 1), ep("a", 2), ep("ab", 0)],
            revision: 2,
        });
        {
            let w = cache.read();
            let a = &w.endpoints[&("n".to_string(), "a".to_string())];
            assert_eq!(a.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
            assert_eq!(a[&2].metadata.name, "n.a.2");
            assert_eq!(w.endpoints[&("n".to_string(), "ab".to_string())].len(), 1);
        }
        let gone = |slice| RawEvent::Delete {
            key: ep("a", slice).key,
            revision: 3,
            prev: None,
        };
        let changes = cache.apply(WatcherEvent::Events {
            events: vec![gone(1), gone(2)],
            revision: 3,
        });
        assert!(
            changes
                .iter()
                .all(|c| matches!(c, Change::Endpoints(n, s) if n == "n" && s == "a")),
            "{changes:?}"
        );
        assert_eq!(changes.len(), 2);
        cache.apply(WatcherEvent::Events {
            events: vec![gone(0)],
            revision: 4,
        });
        let w = cache.read();
        assert!(!w
            .endpoints
            .contains_key(&("n".to_string(), "a".to_string())));
    }
}
