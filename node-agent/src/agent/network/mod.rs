//! [`NodeNetwork`]: the wiring of task networking into the agent's containerd path. It owns
//! nothing in the kernel itself; it drives the narrow traits of the modules that do:
//! [`Network`] (namespaces, veths, overlays, FDB/neighbour entries), [`DnsServers`] (the
//! embedded DNS at 127.0.0.11 per task namespace, answering from a shared [`RecordStore`]) and
//! [`LoadBalancer`] (the nftables VIP table per task namespace). This file owns a task's
//! networking from setup to teardown and the full reconcile; [`endpoints`] owns the fan-out
//! of Endpoints to DNS records, peers and VIP tables; [`mesh`](mod@mesh) the routing mesh. The
//! life of a task's networking and the reconcile are described in docs/architecture.md
//! ("Node agent").
//!
//! It starts no watch: the agent lists and watches Networks, Endpoints and (with the mesh)
//! Nodes into the caches this value owns ([`NodeNetwork::caches`], through
//! [`super::TaskRuntime::caches`]); tests fill them with `set_*`. The background loop
//! ([`NodeNetwork::run`]) owns what it last applied ([`Applied`]), so that needs no lock.
//!
//! Invariants:
//! - Peers are never synced before the first complete Endpoints list (an empty cache would
//!   delete every entry).
//! - A task's networking exists while its container is not exited and its task has not
//!   ended: made while the container is created (the container's spec names the namespace
//!   path before it exists; its process starts only once both are done), removed when the
//!   process exits or the container is deleted (or by the reconcile, for tasks that ended
//!   while the agent was away, and by the start itself when the create failed); the reconcile
//!   never removes the namespace of a live task's created or running container, nor of a
//!   task being started or removed (it takes the exclusive side of a lock that starts and
//!   removes hold shared, and skips a round rather than wait for a slow image pull). It
//!   holds that side only for its kernel pass (list, observe, repair): the DNS servers and
//!   VIP tables of every local task are programmed after it, against the live local map, so
//!   a start never waits for them.
//! - Overlay removal waits for every setup in flight (and they for it), so a task starting
//!   on a network never sees its overlay removed under it by the last task leaving; setups
//!   run side by side, only the making of devices is one at a time.
//! - A task's VIP table is programmed under that task's own lock (`lb_cache`, up to
//!   `LB_CONCURRENCY` tables at once) from the current Endpoints, so an older table never
//!   overwrites a newer one.

pub mod check;
#[cfg(test)]
mod check_tests;
mod endpoints;
mod mesh;
mod mesh_state;
mod nodefw;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_api_types::endpoints::EndpointsSpec;
use shoal_api_types::network::{NetworkSpec, INGRESS_NETWORK};
use shoal_api_types::settings::{ClusterSettingsSpec, ReservedPort, VXLAN_PORT};
use shoal_api_types::{NodeSpec, Task};
use tokio::sync::{watch, RwLock};

/// How long a drained task keeps running after leaving the Endpoints, so that every agent
/// has reprogrammed DNS and VIPs before it gets SIGTERM.
pub const DRAIN_SETTLE: Duration = Duration::from_millis(300);

/// Which entries a peer sync (`NodeNetwork::sync_peers`) puts in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerSync {
    /// Exactly the peers in the Endpoints: missing entries added, stale ones removed (the
    /// Endpoints pass).
    Exact,
    /// Only when a peer it wants is not known to have its entries in place (a task setup;
    /// stale entries are the Endpoints pass's to remove).
    Missing,
}

/// How many task namespaces' VIP tables one Endpoints change programs at once.
const LB_CONCURRENCY: usize = 16;

/// One task's VIP entries as last programmed (`None`: unknown, read the table back).
type LbSlot = Arc<tokio::sync::Mutex<Option<Vec<VipEntry>>>>;

use super::cluster::Cache;
use super::stages::Lap;
use super::task_runtime::{BackgroundContext, ClusterCaches, TaskError};
use crate::dns::{DnsError, DnsHost, DnsServerConfig, DnsServers, RecordStore};
use crate::lb::socket::SocketLb;
use crate::lb::{LoadBalancer, NftLoadBalancer, VipEntry};
use crate::mesh::{Mesh, NftMesh};
use crate::net::{
    self, apply_net_ops, desired_node, names, network_vni, node_ops, GatewaySpec, Kernel,
    LocalTask, NetConfig, NetError, NetOp, Network, OverlaySpec, PortKind, SpecError, TaskNetSpec,
};
use crate::runtime::{labels, ContainerRuntime, ContainerState};

/// What the background loop last applied; owned by that loop, so no lock guards it.
#[derive(Debug, Default)]
pub struct Applied {
    /// Endpoints last applied per local network.
    endpoints: BTreeMap<String, Vec<EndpointsSpec>>,
    /// What the routing mesh last applied.
    mesh: mesh_state::MeshState,
    /// The node's input and forward policy as last programmed.
    node_policy: Option<net::NodePolicy>,
}

/// The overlays (by VNI, as ensured) and gateway bridge that setups made, or found in
/// place, since the last overlay removal or reconcile: a setup skips ensuring them again (a
/// netlink round of checks per overlay, an `nft` run for the gateway's egress table). An
/// attach that fails forgets them all, so a device removed behind the agent's back is made
/// again by the retry; the periodic reconcile compares everything with the kernel anyway.
#[derive(Debug, Default)]
struct MadeDevices {
    overlays: HashMap<u32, OverlaySpec>,
    gateway: bool,
}

impl MadeDevices {
    fn forget(&mut self) {
        *self = MadeDevices::default();
    }
}

/// The node's task networking (see the module docs).
pub struct NodeNetwork {
    /// The side effects, through `synced` (every peer sync is recorded there).
    net: Arc<dyn Network>,
    /// Which overlay peers are in place, per VNI: a remote backend is programmed only once
    /// its address is ([`NodeNetwork::program_lb`], the mesh pass).
    synced: Arc<net::SyncedPeers>,
    dns: Arc<dyn DnsServers>,
    dns_internal: Arc<dyn DnsServers>,
    lb: Arc<dyn LoadBalancer>,
    records: RecordStore,
    underlay: Ipv4Addr,
    netns_dir: PathBuf,
    prefix: String,
    networks: watch::Sender<Cache<NetworkSpec>>,
    endpoints: watch::Sender<Cache<EndpointsSpec>>,
    local: Mutex<BTreeMap<String, LocalTask>>,
    /// Shared by starts and removes, exclusive for the reconcile.
    busy: RwLock<()>,
    /// Keeps overlays from being removed while they are made and used: held shared from a
    /// setup's first device to its attach (and by a detach, the mesh pass's devices),
    /// exclusively by what removes overlays (a teardown that may have emptied one, the
    /// reconcile). Setups run side by side: one waiting for the peers lock holds up no other.
    overlays: tokio::sync::RwLock<()>,
    /// Serialises the making of overlay and gateway devices among holders of `overlays`,
    /// and holds what was made since the last overlay removal or reconcile.
    devices: tokio::sync::Mutex<MadeDevices>,
    /// Serialises peer syncs (FDB and neighbour entries) with each other and with overlay
    /// removal, without waiting for task setups: taken after `overlays` where both are held,
    /// never while `devices` is.
    peers: tokio::sync::Mutex<()>,
    /// Last programmed VIP entries per task, each behind its own lock, held while that
    /// task's table is programmed (tables of different tasks are programmed at once).
    lb_cache: Mutex<HashMap<String, LbSlot>>,
    /// This node's name, when the routing mesh runs (see [`NodeNetwork::with_mesh`]).
    node: Option<String>,
    /// The node-level port rules (routing mesh, host mode).
    mesh: Option<Arc<dyn Mesh>>,
    /// Every Node (for peers' ingress addresses and the VXLAN senders), when the mesh or
    /// the node policy runs.
    nodes: watch::Sender<Cache<NodeSpec>>,
    /// Whether the node's input and forward policy is programmed (see `nodefw`).
    node_policy: bool,
    /// Poked when local tasks come or go (their host ports).
    mesh_kick: tokio::sync::Notify,
    /// The ClusterSettings (reserved ports), when the mesh runs.
    settings: watch::Sender<Cache<ClusterSettingsSpec>>,
    /// Ports this node uses itself, never programmed whatever the settings say.
    own_reserved: Vec<ReservedPort>,
    /// The desired tasks the converge loop works from, once [`NodeNetwork::run`] started
    /// (for `shoal system check`, in `check`).
    desired: Mutex<Option<watch::Receiver<super::desired::DesiredTasks>>>,
}

impl std::fmt::Debug for NodeNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeNetwork")
            .field("underlay", &self.underlay)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The netns prefix of a node's task namespaces: `shoal-<node>-`.
pub fn netns_prefix(node: &str) -> String {
    format!("shoal-{node}-")
}

/// Why the real networking could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkSetupError {
    /// The node address is not IPv4.
    #[error("--address {0:?}: task networking needs an IPv4 underlay address")]
    Address(String),
    /// Netlink could not be opened.
    #[error("{0}")]
    Net(#[from] NetError),
    /// resolv.conf could not be read.
    #[error("{0}")]
    Dns(#[from] DnsError),
}

impl NodeNetwork {
    /// Task networking over the given side effects; task namespaces are
    /// `<netns_dir>/<prefix><task>` (what `net` makes with the same prefix).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        net: Arc<dyn Network>,
        dns: Arc<dyn DnsServers>,
        dns_internal: Arc<dyn DnsServers>,
        lb: Arc<dyn LoadBalancer>,
        records: RecordStore,
        underlay: Ipv4Addr,
        netns_dir: impl Into<PathBuf>,
        prefix: impl Into<String>,
    ) -> Self {
        let synced = Arc::new(net::SyncedPeers::new(net));
        NodeNetwork {
            net: synced.clone(),
            synced,
            dns,
            dns_internal,
            lb,
            records,
            underlay,
            netns_dir: netns_dir.into(),
            prefix: prefix.into(),
            networks: watch::channel(None).0,
            endpoints: watch::channel(None).0,
            local: Mutex::new(BTreeMap::new()),
            busy: RwLock::new(()),
            overlays: tokio::sync::RwLock::new(()),
            devices: tokio::sync::Mutex::new(MadeDevices::default()),
            peers: tokio::sync::Mutex::new(()),
            lb_cache: Mutex::new(HashMap::new()),
            node: None,
            mesh: None,
            nodes: watch::channel(None).0,
            node_policy: false,
            mesh_kick: tokio::sync::Notify::new(),
            settings: watch::channel(None).0,
            own_reserved: vec![VXLAN_PORT],
            desired: Mutex::new(None),
        }
    }

    /// Runs the routing mesh and host-mode ports for node `node` through `mesh`: the node
    /// joins the `ingress` overlay with the address the controller gave it
    /// (`Node.status.ingressAddress`), holds every other node's ingress address as a peer,
    /// and keeps its `shoal_mesh` table equal to the published ports.
    pub fn with_mesh(mut self, node: impl Into<String>, mesh: Arc<dyn Mesh>) -> Self {
        self.node = Some(node.into());
        self.mesh = Some(mesh);
        self
    }

    /// Ports the mesh never programs besides the cluster's reserved ones, whatever the
    /// settings say: the agent's own listen port (VXLAN's 4789/udp always is).
    pub fn with_reserved_ports(mut self, ports: impl IntoIterator<Item = ReservedPort>) -> Self {
        self.own_reserved.extend(ports);
        self.own_reserved.sort();
        self.own_reserved.dedup();
        self
    }

    /// Replaces the ClusterSettings cache (the watch does this; tests call it directly).
    pub fn set_settings(
        &self,
        settings: impl IntoIterator<Item = shoal_api_types::ClusterSettings>,
    ) {
        self.settings.send_replace(Some(
            settings
                .into_iter()
                .map(|s| (s.name().to_string(), s))
                .collect(),
        ));
    }

    /// Programs the node's input and forward policy (`table inet shoal_node`): tasks cannot
    /// reach the node itself, VXLAN is accepted only from the Nodes' underlay addresses, and
    /// new connections are forwarded into overlays only when the routing mesh DNATed them.
    /// The agent then watches every Node.
    pub fn with_node_policy(mut self) -> Self {
        self.node_policy = true;
        self
    }

    /// Replaces the Nodes cache (the watch does this; tests call it directly).
    pub fn set_nodes(&self, nodes: impl IntoIterator<Item = shoal_api_types::Node>) {
        self.nodes.send_replace(Some(
            nodes
                .into_iter()
                .map(|n| (n.name().to_string(), n))
                .collect(),
        ));
    }

    /// The real thing for node `node` at underlay address `address`: netlink in `home_netns`
    /// (the node's namespace; `None` = the agent's own), task namespaces
    /// `/run/netns/shoal-<node>-<task>`, DNS upstreams from `resolv_conf`, nft for VIPs,
    /// and VIP balancing at connect() for the processes in the cgroup v2 directory
    /// `task_cgroup` (the tasks' containers' parent; [`crate::lb::socket`]).
    pub async fn kernel(
        node: &str,
        address: &str,
        home_netns: Option<PathBuf>,
        resolv_conf: &Path,
        task_cgroup: Option<&Path>,
    ) -> Result<NodeNetwork, NetworkSetupError> {
        let underlay: Ipv4Addr = address
            .parse()
            .map_err(|_| NetworkSetupError::Address(address.to_string()))?;
        let config = NetConfig {
            home_netns,
            ..NetConfig::new(netns_prefix(node), underlay)
        };
        let netns_dir = config.netns_dir.clone();
        let prefix = config.prefix.clone();
        let mesh = NftMesh::new(config.home_netns.clone());
        let kernel = Kernel::connect(config).await?;
        let records = RecordStore::new();
        let upstream = DnsServerConfig::from_resolv_conf(resolv_conf)?;
        let internal = DnsServerConfig {
            upstreams: Vec::new(),
            ..upstream.clone()
        };
        Ok(NodeNetwork::new(
            Arc::new(kernel),
            Arc::new(DnsHost::new(records.clone(), upstream)),
            Arc::new(DnsHost::new(records.clone(), internal)),
            match task_cgroup {
                Some(cgroup) => Arc::new(SocketLb::attached_or_tables(
                    cgroup,
                    Arc::new(NftLoadBalancer),
                )),
                None => Arc::new(NftLoadBalancer),
            },
            records,
            underlay,
            netns_dir,
            prefix,
        )
        .with_mesh(node, Arc::new(mesh))
        .with_node_policy())
    }

    /// The shared record tables (what every DNS server answers from).
    pub fn records(&self) -> &RecordStore {
        &self.records
    }

    /// The caches this value reads, for the agent to keep filled: Networks, the Endpoints of
    /// the networks with local tasks (and of `ingress` when the routing mesh runs) and, when
    /// the routing mesh or the node policy runs, every Node.
    pub fn caches(&self) -> ClusterCaches {
        ClusterCaches {
            networks: self.networks.clone(),
            endpoints: self.endpoints.clone(),
            always_endpoints: if self.mesh.is_some() {
                vec![INGRESS_NETWORK.to_string()]
            } else {
                Vec::new()
            },
            nodes: (self.mesh.is_some() || self.node_policy).then(|| self.nodes.clone()),
            settings: self.mesh.is_some().then(|| self.settings.clone()),
        }
    }

    /// The namespace path of task `id`.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        net::netns::path(&self.netns_dir, &names::task_netns_name(&self.prefix, id))
    }

    /// Replaces the Networks cache (the watch does this; tests call it directly).
    pub fn set_networks(&self, networks: impl IntoIterator<Item = shoal_api_types::Network>) {
        self.networks.send_replace(Some(
            networks
                .into_iter()
                .map(|n| (n.name().to_string(), n))
                .collect(),
        ));
    }

    /// Replaces the Endpoints cache (the watch does this; tests call it directly).
    pub fn set_endpoints(&self, endpoints: impl IntoIterator<Item = shoal_api_types::Endpoints>) {
        self.endpoints.send_replace(Some(
            endpoints
                .into_iter()
                .map(|e| (e.name().to_string(), e))
                .collect(),
        ));
    }

    /// Task ids with networking this agent knows of (started, or found at a reconcile).
    pub fn local_tasks(&self) -> Vec<String> {
        self.local_map().keys().cloned().collect()
    }

    fn local_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LocalTask>> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Held (shared) across a task's start or removal, so the reconcile does not take the
    /// task's namespace for a leftover meanwhile.
    pub async fn hold(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.busy.read().await
    }

    /// The overlay spec for `vni`: with the node's address on the ingress overlay.
    fn overlay_spec(&self, vni: u32, mtu: Option<u32>) -> OverlaySpec {
        match self.ingress_overlay() {
            Some(spec) if spec.vni == vni => spec,
            _ => OverlaySpec {
                vni,
                mtu,
                address: None,
            },
        }
    }

    /// Whether the task's networking can be made now: its networks are listed and allocated
    /// (what [`NodeNetwork::setup`] checks first). Reads only the caches; a start calls it
    /// before creating the container beside the setup, so a task on a network that does not
    /// exist (yet) costs no container.
    pub fn precheck(&self, task: &Task) -> Result<(), TaskError> {
        self.task_spec(task)?;
        for a in &task.spec.attachments {
            self.network_info(&a.network)
                .map_err(|e| TaskError::Unavailable(format!("task {}: {e}", task.name())))?;
        }
        Ok(())
    }

    /// Makes the task's networking (see the module docs); returns its netns path, which is
    /// [`NodeNetwork::netns_path`] (the container is created with it before it exists).
    pub async fn setup(&self, task: &Task) -> Result<PathBuf, TaskError> {
        self.setup_timed(task, &mut Lap::start()).await
    }

    /// [`NodeNetwork::setup`], timing its steps on `lap`: `net_locks` (waiting for the
    /// overlays and devices locks), `net_devices` (overlays and gateway), `net_peers` (peer
    /// syncs, with the wait for the peers lock), `net_attach` (namespace and veths),
    /// `net_serve` (DNS server and VIP rules).
    pub async fn setup_timed(&self, task: &Task, lap: &mut Lap) -> Result<PathBuf, TaskError> {
        let id = task.name();
        let spec = self.task_spec(task)?;
        let networks: Vec<String> = task
            .spec
            .attachments
            .iter()
            .map(|a| a.network.clone())
            .collect();
        let info = {
            let _overlays = self.overlays.read().await;
            {
                let mut made = self.devices.lock().await;
                lap.lap("net_locks");
                for (a, network) in spec.attachments.iter().zip(&networks) {
                    let (_, mtu) = self
                        .network_info(network)
                        .map_err(|e| TaskError::Unavailable(format!("task {id}: {e}")))?;
                    let overlay = self.overlay_spec(a.vni, mtu);
                    if made.overlays.get(&a.vni) != Some(&overlay) {
                        // Not counted on while an ensure that may fail part-way runs.
                        made.overlays.remove(&a.vni);
                        self.net
                            .ensure_overlay(&overlay)
                            .await
                            .map_err(|e| net_error(id, e))?;
                        made.overlays.insert(a.vni, overlay);
                    }
                }
                if spec.egress && !made.gateway {
                    self.net
                        .ensure_gateway(&GatewaySpec::default())
                        .await
                        .map_err(|e| net_error(id, e))?;
                    made.gateway = true;
                }
            }
            lap.lap("net_devices");
            for (a, network) in spec.attachments.iter().zip(&networks) {
                // A failure is logged; the network loop syncs again.
                self.sync_peers(network, a.vni, PeerSync::Missing).await;
            }
            lap.lap("net_peers");
            let info = match self.net.attach_task(&spec).await {
                Ok(info) => info,
                Err(e) => {
                    // A device may have gone behind the agent's back: the retry makes
                    // them all again.
                    self.devices.lock().await.forget();
                    return Err(net_error(id, e));
                }
            };
            lap.lap("net_attach");
            info
        };
        let gateway = info.interfaces.iter().find_map(|i| match i.kind {
            PortKind::Gateway(_) => Some(i.address.ip()),
            PortKind::Overlay(_) => None,
        });
        self.local_map()
            .insert(id.to_string(), LocalTask::of(task, spec.egress, gateway));
        self.mesh_kick.notify_one();
        if let Err(e) = self.serve(id, &info.path, &networks, spec.egress).await {
            self.teardown(id).await;
            return Err(e);
        }
        lap.lap("net_serve");
        Ok(info.path)
    }

    /// Removes the task's networking (see the module docs). Never fails: what is left is
    /// garbage-collected by the next reconcile.
    pub async fn teardown(&self, id: &str) {
        self.dns.stop(id).await;
        self.dns_internal.stop(id).await;
        let slot = self.lb_lock().remove(id);
        if let Some(slot) = slot {
            // A table change already under way finishes (and mirrors) before the namespace
            // is forgotten; later ones find the slot gone.
            drop(slot.lock().await);
        }
        self.lb.forget(&self.netns_path(id)).await;
        let left = self.local_map().remove(id);
        if left.is_some() {
            self.mesh_kick.notify_one();
        }
        {
            let _overlays = self.overlays.read().await;
            if let Err(e) = self.net.detach_task(id).await {
                tracing::warn!(task = %id, error = %e, "cannot detach the task's network namespace; the next reconcile retries");
                return;
            }
        }
        // A local task stays attached until its teardown: while another one is on each of
        // its networks, none of their overlays became unused, and the links need no look.
        let in_use = left.is_some_and(|t| {
            let local = self.local_map();
            !t.networks.is_empty()
                && t.networks
                    .iter()
                    .all(|n| local.values().any(|o| o.networks.contains(n)))
        });
        if !in_use {
            let _overlays = self.overlays.write().await;
            self.remove_unused_overlays().await;
        }
    }

    /// Removes overlays without a task port (call with `overlays` held exclusively).
    async fn remove_unused_overlays(&self) {
        let observed = match self.net.observe().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "cannot observe the node's links");
                return;
            }
        };
        let mut used: BTreeSet<u32> = observed
            .task_ports
            .values()
            .flatten()
            .filter_map(|p| match p.kind {
                PortKind::Overlay(vni) => Some(vni),
                PortKind::Gateway(_) => None,
            })
            .collect();
        // The ingress overlay stays while the node has its address (the routing mesh).
        if let Some(spec) = self.ingress_overlay() {
            used.insert(spec.vni);
        }
        let _peers = self.peers.lock().await;
        self.devices.lock().await.forget();
        for vni in observed.overlays.keys() {
            if !used.contains(vni) {
                if let Err(e) = self.net.remove_overlay(*vni).await {
                    tracing::warn!(vni, error = %e, "cannot remove an unused overlay");
                }
            }
        }
    }

    /// The VNI and MTU of `network`, if the controller has allocated it.
    fn network_info(&self, network: &str) -> Result<(u32, Option<u32>), String> {
        match self.networks.borrow().as_ref() {
            Some(networks) => network_vni(networks, network),
            None => Err("networks are not listed yet".into()),
        }
    }

    fn task_spec(&self, task: &Task) -> Result<TaskNetSpec, TaskError> {
        let spec = match self.networks.borrow().as_ref() {
            Some(networks) => net::task_spec(task, networks),
            None => Err(SpecError::Network("networks are not listed yet".into())),
        };
        spec.map_err(|e| match e {
            SpecError::Network(e) => TaskError::Unavailable(format!("task {}: {e}", task.name())),
            SpecError::Net(e) => net_error(task.name(), e),
        })
    }

    /// The full reconcile (see docs/architecture.md): containers (runtime) and desired tasks
    /// (etcd) against [`Network::observe`] through the pure [`desired_node`] and
    /// [`node_ops`]; then the DNS servers and VIP tables of every surviving task namespace
    /// (restarted after an agent restart). Returns `false` when a start or removal was in
    /// flight, so nothing was done: try again soon.
    pub async fn reconcile(
        &self,
        containers: &dyn ContainerRuntime,
        desired: &BTreeMap<String, Task>,
    ) -> bool {
        let Ok(exclusive) = self.busy.try_write() else {
            return false;
        };
        let locked_at = tokio::time::Instant::now();
        let (Some(networks), true) = (
            self.networks.borrow().clone(),
            self.endpoints.borrow().is_some(),
        ) else {
            return true;
        };
        let listed = match containers.list().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "network reconcile: cannot list containers");
                return true;
            }
        };
        let live = live_tasks(&listed, desired);
        let overlays = self.overlays.write().await;
        let peers = self.peers.lock().await;
        let observed = match self.net.observe().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "network reconcile: cannot observe the node's links");
                return true;
            }
        };
        let node = desired_node(
            &live,
            desired,
            &networks,
            &observed,
            self.ingress_overlay(),
            |network| {
                self.endpoints_of(network)
                    .map(|eps| self.peers_for(network, &eps))
            },
        );
        for (op, result) in apply_net_ops(self.net.as_ref(), node_ops(&node, &observed)).await {
            match result {
                Ok(()) if !matches!(op, NetOp::SyncPeers(..)) => {
                    tracing::info!(?op, "network reconcile")
                }
                Ok(()) => {}
                Err(e) => tracing::warn!(?op, error = %e, "network reconcile step failed"),
            }
        }
        // Whatever the reconcile made or removed, setups look at the devices again.
        self.devices.lock().await.forget();
        drop((peers, overlays));
        // Live tasks without a Task object keep what this agent remembers of them.
        let mut local = node.local;
        {
            let known = self.local_map();
            for id in live.iter().filter(|id| !desired.contains_key(*id)) {
                if let Some(t) = known.get(id) {
                    local.insert(id.clone(), t.clone());
                }
            }
        }
        *self.local_map() = local.clone();
        // Starts and removals wait for the exclusive side only while the kernel state is
        // diffed and repaired: DNS servers and VIP tables below are per task and keyed by
        // the live local map, so starts proceed meanwhile (a start waiting here for every
        // other task's DNS and nft programming made convergence outliers of seconds).
        drop(exclusive);
        tracing::debug!(
            held_ms = locked_at.elapsed().as_millis() as u64,
            "network reconcile: kernel pass done"
        );
        // DNS servers: every local task namespace has one (after a restart they are started
        // again); servers of tasks without a container stop.
        let present = self.net.observe().await.map(|o| o.task_netns).ok();
        for (id, t) in &local {
            if present.as_ref().is_some_and(|p| !p.contains(id)) {
                continue;
            }
            // Removed since (its teardown stopped its server already).
            if !self.local_map().contains_key(id) {
                continue;
            }
            let (dns, other) = if t.egress {
                (&self.dns, &self.dns_internal)
            } else {
                (&self.dns_internal, &self.dns)
            };
            other.stop(id).await;
            let netns = self.netns_path(id);
            let view = crate::dns::view_networks(&t.networks);
            for network in &view {
                if let Some(eps) = self.endpoints_of(network) {
                    self.records.set_from_endpoints(network, &eps);
                }
            }
            if let Err(e) = dns.ensure(id, &netns, &view).await {
                tracing::warn!(task = %id, error = %e, "cannot start the task's DNS server");
            }
        }
        // Against the live map: a task started since the snapshot keeps its server.
        for host in [&self.dns, &self.dns_internal] {
            for key in host.keys().await {
                if !self.local_map().contains_key(&key) {
                    host.stop(&key).await;
                }
            }
        }
        {
            let live = self.local_map().clone();
            self.lb_lock().retain(|id, _| live.contains_key(id));
        }
        for id in local.keys() {
            if present.as_ref().is_some_and(|p| !p.contains(id)) {
                continue;
            }
            if let Err(e) = self.program_lb(id, false, &BTreeSet::new()).await {
                tracing::warn!(task = %id, error = %e, "cannot program VIP rules");
            }
        }
        true
    }

    /// Reads every local task's VIP table back and writes it whole where it is not what
    /// the Endpoints say (drift behind the agent's back, which an Endpoints change alone
    /// never finds: it trusts the cache). Run after each resync's reconcile, without its
    /// exclusive lock (reading a table of 10,000 services back takes seconds, and starts
    /// must not wait for that); the VIP cache's lock orders it with other programming.
    pub async fn verify_lb(&self) {
        let ids: Vec<String> = self.local_map().keys().cloned().collect();
        let present = self.net.observe().await.map(|o| o.task_netns).ok();
        for id in ids {
            if present.as_ref().is_some_and(|p| !p.contains(&id)) {
                continue;
            }
            if let Err(e) = self.program_lb(&id, true, &BTreeSet::new()).await {
                tracing::warn!(task = %id, error = %e, "cannot verify VIP rules");
            }
        }
    }

    /// Keeps the node's networking converged to the caches and this node's tasks until
    /// `ctx.shutdown`, in two loops at once: the full reconcile ([`Self::reconcile_loop`]:
    /// as soon as everything is listed, for restart recovery, and every resync) and the
    /// passes that follow the caches ([`Self::passes_loop`]: Endpoints fan-out, the mesh,
    /// the node's policy, on every change). A reconcile lists the containers, observes every
    /// link and reads every VIP table back, which under a rolling update's load can take
    /// a second or more: an Endpoints change (a drained task leaving) does not wait for it.
    pub async fn run(
        self: Arc<Self>,
        containers: Arc<dyn ContainerRuntime>,
        ctx: BackgroundContext,
    ) {
        self.remember_desired(ctx.desired.clone());
        let (done, reconciled) = watch::channel(Reconciled::default());
        tokio::join!(
            self.reconcile_loop(containers.as_ref(), &ctx, done),
            self.passes_loop(&ctx, reconciled)
        );
        // The DNS servers are served by this process: they stop with the agent, as they
        // would if it exited. A restarted agent starts them again (see `reconcile`).
        for host in [&self.dns, &self.dns_internal] {
            for key in host.keys().await {
                host.stop(&key).await;
            }
        }
    }

    /// The full reconcile (then the VIP tables read back, [`Self::verify_lb`]) once
    /// everything is listed and every `ctx.resync`, again a second after one that could not
    /// finish; each attempt is told on `done`.
    async fn reconcile_loop(
        &self,
        containers: &dyn ContainerRuntime,
        ctx: &BackgroundContext,
        done: watch::Sender<Reconciled>,
    ) {
        let (mut desired, mut shutdown) = (ctx.desired.clone(), ctx.shutdown.clone());
        let mut networks = self.networks.subscribe();
        let mut endpoints = self.endpoints.subscribe();
        let mut tick = tokio::time::interval(ctx.resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut due = true;
        loop {
            let listed = self.networks.borrow().is_some()
                && self.endpoints.borrow().is_some()
                && desired.borrow().is_some();
            if due && listed {
                let snapshot = desired.borrow().clone().unwrap_or_default();
                due = !self.reconcile(containers, &snapshot).await;
                // Told before the tables are read back (that takes a while, and the passes
                // need not wait for it); a retry that could not finish again tells nothing.
                done.send_if_modified(|r| {
                    let first = !r.tried;
                    r.tried = true;
                    r.done += u64::from(!due);
                    first || !due
                });
                if !due {
                    self.verify_lb().await;
                }
            }
            let retry = async {
                if due && listed {
                    tokio::time::sleep(Duration::from_secs(1)).await
                } else {
                    std::future::pending().await
                }
            };
            // Until everything is listed, each listing may be the last one missing.
            let waiting = !listed;
            tokio::select! {
                biased;
                _ = super::shutdown::stopped(&mut shutdown) => break,
                // The passes loop ended (a watch it follows closed): so does this one.
                _ = done.closed() => break,
                r = networks.changed(), if waiting => if r.is_err() { break },
                r = endpoints.changed(), if waiting => if r.is_err() { break },
                r = desired.changed(), if waiting => if r.is_err() { break },
                _ = tick.tick() => due = true,
                _ = retry => {}
            }
        }
    }

    /// The passes that follow the caches: Endpoints fan-out ([`Self::refresh`]) and the
    /// mesh at once, then the node's policy; on every change. The mesh waits for the first
    /// full reconcile to be tried (after a restart it adopts the running tasks whose host
    /// ports the table publishes); without local tasks the Endpoints pass does nothing, and
    /// the policy needs only the Nodes. After each full reconcile the mesh and the policy
    /// are programmed again (repairing what observing links cannot see).
    async fn passes_loop(
        &self,
        ctx: &BackgroundContext,
        mut reconciled: watch::Receiver<Reconciled>,
    ) {
        let (mut desired, mut shutdown) = (ctx.desired.clone(), ctx.shutdown.clone());
        let mut applied = Applied::default();
        let mut networks = self.networks.subscribe();
        let mut endpoints = self.endpoints.subscribe();
        let mut nodes = self.nodes.subscribe();
        let mut settings = self.settings.subscribe();
        let mut seen = 0;
        loop {
            let now = *reconciled.borrow_and_update();
            if now.done != seen {
                seen = now.done;
                applied.mesh.repair();
                applied.node_policy = None;
            }
            // At once: each withdraws backends first and then may wait for the peers lock
            // to sync peers, and neither withdrawal should wait for the other's sync.
            let (endpoints_applied, mesh_applied) = (&mut applied.endpoints, &mut applied.mesh);
            let mesh = async {
                if now.tried {
                    self.refresh_mesh(mesh_applied).await
                }
            };
            tokio::join!(self.refresh(endpoints_applied), mesh);
            self.refresh_node_policy(&mut applied).await;
            tokio::select! {
                biased;
                _ = super::shutdown::stopped(&mut shutdown) => break,
                r = networks.changed() => if r.is_err() { break },
                r = endpoints.changed() => if r.is_err() { break },
                r = desired.changed() => if r.is_err() { break },
                r = nodes.changed() => if r.is_err() { break },
                r = settings.changed() => if r.is_err() { break },
                _ = self.mesh_kick.notified() => {}
                r = reconciled.changed() => if r.is_err() { break },
            }
        }
    }
}

/// What the reconcile loop tells the passes loop.
#[derive(Debug, Default, Clone, Copy)]
struct Reconciled {
    /// A full reconcile was tried (whether it finished or not).
    tried: bool,
    /// How many finished.
    done: u64,
}

/// How a networking error is reported on a task.
/// The tasks whose networking should exist, by task id (the container id when unlabelled).
/// Tasks whose process exited keep their container (logs) but not their networking;
/// neither do tasks that ended (a node that died and came back finds its orphaned tasks'
/// containers created but without a process).
pub(super) fn live_tasks(
    listed: &[crate::runtime::ContainerInfo],
    desired: &BTreeMap<String, Task>,
) -> BTreeSet<String> {
    listed
        .iter()
        .filter(|c| c.status.state != ContainerState::Exited)
        .map(|c| {
            labels::get(&c.labels, labels::LABEL_TASK)
                .cloned()
                .unwrap_or_else(|| c.id.clone())
        })
        .filter(|id| {
            desired
                .get(id)
                .is_none_or(|t| !t.status.state.is_terminal())
        })
        .collect()
}

fn net_error(task: &str, e: NetError) -> TaskError {
    task_failure(task, format!("network: {e}"), e.is_temporary())
}

/// A failure while setting a task up: temporary ones are retried (`Unavailable`, nothing
/// reported), the rest fail the task with `reason`.
pub(super) fn task_failure(task: &str, reason: String, temporary: bool) -> TaskError {
    if temporary {
        TaskError::Unavailable(format!("task {task}: {reason}"))
    } else {
        TaskError::Failed {
            task: task.to_string(),
            reason,
        }
    }
}
