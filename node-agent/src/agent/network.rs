//! [`NodeNetwork`]: the wiring of task networking into the agent's containerd path. It owns
//! nothing in the kernel itself; it drives the narrow traits of the modules that do:
//! [`Network`] (namespaces, veths, overlays, FDB/neighbour entries), [`DnsServers`] (the
//! embedded DNS at 127.0.0.11 per task namespace, answering from a shared [`RecordStore`]) and
//! [`LoadBalancer`] (the nftables VIP table per task namespace).
//!
//! Life of a task's networking (called by [`super::ContainerTasks`]):
//! - [`NodeNetwork::setup`] before the container is created: ensure the overlay of each
//!   attachment (VNI, MTU from the Network object) and sync its peers, ensure the gateway
//!   bridge unless the task is `internal`, attach the task (netns + veths), fill the record
//!   tables of its networks, start its DNS server (forwarding upstream, or none for an
//!   internal task: REFUSED) and program its VIP table. Returns the netns path for the OCI
//!   spec. A failure after the attach detaches again, so no namespace is left without a task.
//! - [`NodeNetwork::teardown`] once the container's process exited (the container stays for
//!   its logs, its address goes), or after it is deleted: stop its DNS server, forget
//!   its VIP table (it dies with the namespace), detach it, and remove the overlays no local
//!   task uses any more.
//!
//! Background ([`NodeNetwork::run`], started by the agent through
//! [`super::TaskRuntime::run_background`]): watches of Networks and Endpoints
//! ([`super::cluster`]); on every Endpoints change, for each network with local tasks whose
//! Endpoints changed: its record table, the FDB/neighbour entries of its overlay (remote tasks
//! only: our own node address is left out) and the VIP table of each local task on it (skipped
//! when the table already holds exactly those entries). On start and every resync a full
//! reconcile: containers (runtime) and desired tasks (etcd) against [`Network::observe`] with
//! [`plan_network`] — namespaces, links and overlays no container needs are removed, missing
//! pieces of existing tasks are repaired, and DNS servers are (re)started for every task
//! namespace that survived an agent restart.
//!
//! Routing mesh ([`NodeNetwork::with_mesh`]; see [`crate::mesh`]): the background loop also
//! watches every Node. [`NodeNetwork::refresh_mesh`] puts the node's own ingress address
//! (`Node.status.ingressAddress`) on the ingress bridge whether or not tasks run here, keeps
//! that overlay, syncs its peers (remote ingress tasks and every other node's ingress
//! address), ensures the gateway bridge (`ip_forward`), and keeps the node's `shoal_mesh`
//! table equal to the ingress ports in the Endpoints of `ingress` plus the host-mode ports
//! of local tasks (to their gateway-bridge address). The table is left in place when the
//! agent stops (like containers) and replaced by the next agent.
//!
//! Invariants:
//! - Peers are never synced before the first complete Endpoints list (an empty cache would
//!   delete every entry).
//! - A task's networking exists while its container is not exited and its task has not
//!   ended: made before create, removed when the process exits or the container is deleted
//!   (or by the reconcile, for tasks that ended while the agent was away); the reconcile
//!   never removes the namespace of a live task's created or running container, nor of a
//!   task being started or removed (it takes the exclusive side of a lock that starts and
//!   removes hold shared, and skips a round rather than wait for a slow image pull).
//! - Overlay creation and removal are serialised, so a task starting on a network never sees
//!   its overlay removed under it by the last task leaving.
//! - VIP tables are programmed under one lock from the current Endpoints, so an older table
//!   never overwrites a newer one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnetwork::Ipv4Network;
use shoal_api_types::endpoints::EndpointsSpec;
use shoal_api_types::network::{parse_cidr, NetworkSpec, INGRESS_NETWORK};
use shoal_api_types::service::{PortConfig, PublishMode};
use shoal_api_types::{NodeSpec, Task};
use tokio::sync::{watch, RwLock};

/// How long a drained task keeps running after leaving the Endpoints, so that every agent
/// has reprogrammed DNS and VIPs before it gets SIGTERM.
pub const DRAIN_SETTLE: Duration = Duration::from_millis(300);

use super::cluster::{self, Cache};
use super::task_runtime::{BackgroundContext, TaskError};
use crate::dns::{DnsError, DnsHost, DnsServerConfig, DnsServers, RecordStore};
use crate::lb::{self, LbError, LoadBalancer, NftLoadBalancer, VipEntry};
use crate::mesh::{self, Mesh, MeshRules, NftMesh};
use crate::net::{
    self, apply_net_ops, names, peers_from_endpoints, plan_network, task_net_spec, DesiredNet,
    GatewaySpec, Kernel, NetConfig, NetError, NetOp, Network, OverlaySpec, Peer, PortKind,
    TaskNetSpec,
};
use crate::runtime::{labels, ContainerRuntime, ContainerState};

/// A local task's networking, as remembered for Endpoints updates.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LocalTask {
    /// Networks in attachment order.
    networks: Vec<String>,
    /// Whether its DNS server may forward upstream (not `internal`).
    egress: bool,
    /// Its host-mode published ports.
    host_ports: Vec<PortConfig>,
    /// Its address on the gateway bridge (host-mode ports go there).
    gateway: Option<Ipv4Addr>,
}

/// What the routing mesh last applied (see [`NodeNetwork::refresh_mesh`]).
#[derive(Debug, Default)]
struct MeshState {
    /// The gateway bridge (and with it `ip_forward`) was ensured.
    gateway: bool,
    /// The ingress overlay as last ensured (with the node's address).
    overlay: Option<OverlaySpec>,
    /// The ingress overlay's peers as last synced.
    peers: Option<(u32, Vec<Peer>)>,
    /// The table as last programmed.
    programmed: Option<MeshRules>,
}

fn host_mode_ports(task: &Task) -> Vec<PortConfig> {
    task.spec
        .ports
        .iter()
        .filter(|p| p.mode == PublishMode::Host)
        .cloned()
        .collect()
}

/// The node's task networking (see the module docs).
pub struct NodeNetwork {
    net: Arc<dyn Network>,
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
    /// Serialises overlay creation (with the attach) against overlay removal.
    overlays: tokio::sync::Mutex<()>,
    /// Last programmed VIP entries per task; held while programming.
    lb_cache: tokio::sync::Mutex<HashMap<String, Vec<VipEntry>>>,
    /// Endpoints last applied per local network.
    applied: tokio::sync::Mutex<BTreeMap<String, Vec<EndpointsSpec>>>,
    /// This node's name, when the routing mesh runs (see [`NodeNetwork::with_mesh`]).
    node: Option<String>,
    /// The node-level port rules (routing mesh, host mode).
    mesh: Option<Arc<dyn Mesh>>,
    /// Every Node (for peers' ingress addresses), when the mesh runs.
    nodes: watch::Sender<Cache<NodeSpec>>,
    /// What the mesh last applied; held while applying.
    mesh_state: tokio::sync::Mutex<MeshState>,
    /// Poked when local tasks come or go (their host ports).
    mesh_kick: tokio::sync::Notify,
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
        NodeNetwork {
            net,
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
            overlays: tokio::sync::Mutex::new(()),
            lb_cache: tokio::sync::Mutex::new(HashMap::new()),
            applied: tokio::sync::Mutex::new(BTreeMap::new()),
            node: None,
            mesh: None,
            nodes: watch::channel(None).0,
            mesh_state: tokio::sync::Mutex::new(MeshState::default()),
            mesh_kick: tokio::sync::Notify::new(),
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
    /// `/run/netns/shoal-<node>-<task>`, DNS upstreams from `resolv_conf`, nft for VIPs.
    pub async fn kernel(
        node: &str,
        address: &str,
        home_netns: Option<PathBuf>,
        resolv_conf: &Path,
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
            Arc::new(NftLoadBalancer),
            records,
            underlay,
            netns_dir,
            prefix,
        )
        .with_mesh(node, Arc::new(mesh)))
    }

    /// The shared record tables (what every DNS server answers from).
    pub fn records(&self) -> &RecordStore {
        &self.records
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

    /// Whether any Endpoints object lists task `id` as ready (in DNS and behind VIPs).
    pub fn is_ready_anywhere(&self, id: &str) -> bool {
        self.endpoints
            .borrow()
            .as_ref()
            .map(|eps| {
                eps.values()
                    .any(|e| e.spec.tasks.iter().any(|t| t.task == id && t.ready))
            })
            .unwrap_or(false)
    }

    /// Takes task `id` out of service before it is stopped: waits, at most `limit`, until no
    /// Endpoints object lists it as ready (the controller marks a task that is wanted shut
    /// down as not ready), then [`DRAIN_SETTLE`] more so every agent has applied the change
    /// to its DNS tables and VIP rules. Returns whether it drained within `limit`.
    pub async fn drain(&self, id: &str, limit: Duration) -> bool {
        let mut rx = self.endpoints.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        let mut waited = false;
        while self.is_ready_anywhere(id) {
            waited = true;
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return false,
            }
        }
        if waited {
            tokio::time::sleep(DRAIN_SETTLE).await;
        }
        true
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

    /// The VNI and MTU of `network`, if the controller has allocated it.
    fn network_info(&self, network: &str) -> Result<(u32, Option<u32>), String> {
        let networks = self.networks.borrow();
        let Some(networks) = networks.as_ref() else {
            return Err("networks are not listed yet".into());
        };
        let n = networks
            .get(network)
            .ok_or_else(|| format!("network {network:?} does not exist (yet)"))?;
        let vni = n
            .status
            .vni
            .ok_or_else(|| format!("network {network:?} has no VNI allocated yet"))?;
        Ok((vni, n.spec.mtu))
    }

    /// The Endpoints of `network` (`None` before the first list).
    fn endpoints_of(&self, network: &str) -> Option<Vec<EndpointsSpec>> {
        let eps = self.endpoints.borrow();
        let eps = eps.as_ref()?;
        Some(
            eps.values()
                .filter(|e| e.spec.network == network)
                .map(|e| e.spec.clone())
                .collect(),
        )
    }

    /// The ingress overlay with this node's address on it, once the mesh runs, the ingress
    /// network is allocated and the controller gave this node its address.
    fn ingress_overlay(&self) -> Option<OverlaySpec> {
        let node = self.node.as_deref()?;
        self.mesh.as_ref()?;
        let (vni, mtu, subnet) = {
            let networks = self.networks.borrow();
            let n = networks.as_ref()?.get(INGRESS_NETWORK)?;
            let subnet = parse_cidr(n.status.subnet.as_deref()?).ok()?;
            (n.status.vni?, n.spec.mtu, subnet)
        };
        let address: Ipv4Addr = {
            let nodes = self.nodes.borrow();
            let me = nodes.as_ref()?.get(node)?;
            me.status.ingress_address.parse().ok()?
        };
        Some(OverlaySpec {
            vni,
            mtu,
            address: Some(Ipv4Network::new(address, subnet.prefix()).ok()?),
        })
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

    /// The remote peers of `network`: remote tasks from its Endpoints and, on `ingress`
    /// while the mesh runs, every other node's ingress address.
    fn peers_for(&self, network: &str, eps: &[EndpointsSpec]) -> Vec<Peer> {
        let mut peers = peers_from_endpoints(eps, self.underlay);
        if network == INGRESS_NETWORK && self.mesh.is_some() {
            let me = self.node.as_deref().unwrap_or_default();
            let mut by_ip: BTreeMap<Ipv4Addr, Peer> = peers.iter().map(|p| (p.ip, *p)).collect();
            if let Some(nodes) = self.nodes.borrow().as_ref() {
                for n in nodes.values().filter(|n| n.name() != me) {
                    let (Ok(ip), Ok(node)) = (
                        n.status.ingress_address.parse::<Ipv4Addr>(),
                        n.status.address.parse::<Ipv4Addr>(),
                    ) else {
                        continue;
                    };
                    if node != self.underlay {
                        by_ip.insert(ip, Peer { ip, node });
                    }
                }
            }
            peers = by_ip.into_values().collect();
        }
        peers
    }

    fn task_spec(&self, task: &Task) -> Result<TaskNetSpec, TaskError> {
        let mut vnis = BTreeMap::new();
        for a in &task.spec.attachments {
            let (vni, _) = self
                .network_info(&a.network)
                .map_err(|e| TaskError::Unavailable(format!("task {}: {e}", task.name())))?;
            vnis.insert(a.network.clone(), vni);
        }
        task_net_spec(task.name(), &task.spec, |n| vnis.get(n).copied())
            .map_err(|e| net_error(task.name(), e))
    }

    /// Makes the task's networking (see the module docs); returns its netns path.
    pub async fn setup(&self, task: &Task) -> Result<PathBuf, TaskError> {
        let id = task.name();
        let spec = self.task_spec(task)?;
        let networks: Vec<String> = task
            .spec
            .attachments
            .iter()
            .map(|a| a.network.clone())
            .collect();
        let info = {
            let _overlays = self.overlays.lock().await;
            for (a, network) in spec.attachments.iter().zip(&networks) {
                let (_, mtu) = self
                    .network_info(network)
                    .map_err(|e| TaskError::Unavailable(format!("task {id}: {e}")))?;
                self.net
                    .ensure_overlay(&self.overlay_spec(a.vni, mtu))
                    .await
                    .map_err(|e| net_error(id, e))?;
                self.sync_peers(network, a.vni).await;
            }
            if spec.egress {
                self.net
                    .ensure_gateway(&GatewaySpec::default())
                    .await
                    .map_err(|e| net_error(id, e))?;
            }
            self.net
                .attach_task(&spec)
                .await
                .map_err(|e| net_error(id, e))?
        };
        let gateway = info.interfaces.iter().find_map(|i| match i.kind {
            PortKind::Gateway(_) => Some(i.address.ip()),
            PortKind::Overlay(_) => None,
        });
        self.local_map().insert(
            id.to_string(),
            LocalTask {
                networks: networks.clone(),
                egress: spec.egress,
                host_ports: host_mode_ports(task),
                gateway,
            },
        );
        self.mesh_kick.notify_one();
        if let Err(e) = self.serve(id, &info.path, &networks, spec.egress).await {
            self.teardown(id).await;
            return Err(e);
        }
        Ok(info.path)
    }

    /// Record tables, DNS server and VIP table of a task whose namespace exists.
    async fn serve(
        &self,
        id: &str,
        netns: &Path,
        networks: &[String],
        egress: bool,
    ) -> Result<(), TaskError> {
        for network in networks {
            if let Some(eps) = self.endpoints_of(network) {
                self.records.set_from_endpoints(network, &eps);
            }
        }
        let dns = if egress {
            &self.dns
        } else {
            &self.dns_internal
        };
        dns.ensure(id, netns, networks)
            .await
            .map_err(|e| task_failure(id, format!("start DNS server: {e}"), e.is_temporary()))?;
        if self.endpoints.borrow().is_some() {
            self.program_lb(id).await.map_err(|e| {
                task_failure(id, format!("program VIP rules: {e}"), e.is_temporary())
            })?;
        }
        Ok(())
    }

    /// Removes the task's networking (see the module docs). Never fails: what is left is
    /// garbage-collected by the next reconcile.
    pub async fn teardown(&self, id: &str) {
        self.dns.stop(id).await;
        self.dns_internal.stop(id).await;
        self.lb_cache.lock().await.remove(id);
        if self.local_map().remove(id).is_some() {
            self.mesh_kick.notify_one();
        }
        let _overlays = self.overlays.lock().await;
        if let Err(e) = self.net.detach_task(id).await {
            tracing::warn!(task = %id, error = %e, "cannot detach the task's network namespace; the next reconcile retries");
            return;
        }
        self.remove_unused_overlays().await;
    }

    /// Removes overlays without a task port (call with `overlays` held).
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
        for vni in observed.overlays.keys() {
            if !used.contains(vni) {
                if let Err(e) = self.net.remove_overlay(*vni).await {
                    tracing::warn!(vni, error = %e, "cannot remove an unused overlay");
                }
            }
        }
    }

    /// Converges the overlay of `network` to the remote tasks in its Endpoints (not before
    /// the first Endpoints list).
    async fn sync_peers(&self, network: &str, vni: u32) {
        let Some(eps) = self.endpoints_of(network) else {
            return;
        };
        let peers = self.peers_for(network, &eps);
        match self.net.sync_peers(vni, &peers).await {
            Ok(ops) if !ops.is_empty() => {
                tracing::debug!(network, vni, changes = ops.len(), "synced overlay peers")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(network, vni, error = %e, "cannot sync overlay peers"),
        }
    }

    /// Programs task `id`'s VIP table from the current Endpoints unless it holds them already.
    async fn program_lb(&self, id: &str) -> Result<(), LbError> {
        let mut cache = self.lb_cache.lock().await;
        let Some(task) = self.local_map().get(id).cloned() else {
            return Ok(());
        };
        let mut eps = Vec::new();
        for network in &task.networks {
            eps.extend(self.endpoints_of(network).unwrap_or_default());
        }
        let entries = lb::vip_entries(&eps);
        if cache.get(id) == Some(&entries) {
            return Ok(());
        }
        let netns = self.netns_path(id);
        if !cache.contains_key(id) {
            // After a restart: keep a table that is right (and its round-robin counters).
            if let Ok(Some(programmed)) = self.lb.programmed(&netns).await {
                if programmed == entries {
                    cache.insert(id.to_string(), entries);
                    return Ok(());
                }
            }
        }
        cache.remove(id);
        self.lb.program(&netns, &entries).await?;
        tracing::debug!(task = %id, entries = entries.len(), "programmed VIP rules");
        cache.insert(id.to_string(), entries);
        Ok(())
    }

    /// Applies Endpoints changes to every network with local tasks: record table, peers and
    /// the VIP tables of its local tasks. Networks whose Endpoints did not change since the
    /// last call are skipped.
    pub async fn refresh(&self) {
        if self.endpoints.borrow().is_none() {
            return;
        }
        let local = self.local_map().clone();
        let mut by_network: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (id, t) in &local {
            for n in &t.networks {
                by_network.entry(n).or_default().push(id);
            }
        }
        let mut changed_tasks = BTreeSet::new();
        {
            let mut applied = self.applied.lock().await;
            applied.retain(|n, _| by_network.contains_key(n.as_str()));
            for (network, tasks) in &by_network {
                let Some(eps) = self.endpoints_of(network) else {
                    continue;
                };
                if applied.get(*network) == Some(&eps) {
                    continue;
                }
                self.records.set_from_endpoints(network, &eps);
                if let Ok((vni, _)) = self.network_info(network) {
                    let _overlays = self.overlays.lock().await;
                    self.sync_peers(network, vni).await;
                }
                changed_tasks.extend(tasks.iter().copied());
                applied.insert(network.to_string(), eps);
            }
        }
        for id in changed_tasks {
            if let Err(e) = self.program_lb(id).await {
                tracing::warn!(task = %id, error = %e, "cannot program VIP rules");
            }
        }
    }

    /// The node's mesh table as it should be now: ingress-mode ports from the Endpoints of
    /// `ingress` (when the node has its ingress address), host-mode ports of local tasks.
    fn mesh_rules(&self, ingress: Option<&OverlaySpec>) -> MeshRules {
        let mut ports = Vec::new();
        let ingress = ingress.and_then(|spec| {
            let addr = spec.address?.ip();
            Some((names::bridge_name(spec.vni), addr))
        });
        if ingress.is_some() {
            let eps = self.endpoints_of(INGRESS_NETWORK).unwrap_or_default();
            ports.extend(mesh::ingress_ports(&eps));
        }
        let local = self.local_map().clone();
        ports.extend(mesh::host_ports(
            local
                .iter()
                .map(|(id, t)| (id.as_str(), t.host_ports.as_slice(), t.gateway)),
        ));
        MeshRules {
            node_address: Some(self.underlay),
            ingress,
            ports: mesh::normalize(ports),
        }
    }

    /// Converges the routing mesh (no-op without [`NodeNetwork::with_mesh`]): the gateway
    /// bridge (it turns `ip_forward` on, which the mesh needs on nodes without tasks too),
    /// the ingress overlay with the node's address and its peers (remote ingress tasks and
    /// every other node's ingress address), and the `shoal_mesh` table. Each step runs only
    /// when its input changed since it last succeeded.
    pub async fn refresh_mesh(&self) {
        let Some(mesh) = &self.mesh else {
            return;
        };
        if self.networks.borrow().is_none()
            || self.endpoints.borrow().is_none()
            || self.nodes.borrow().is_none()
        {
            return;
        }
        let mut st = self.mesh_state.lock().await;
        if !st.gateway {
            let _overlays = self.overlays.lock().await;
            match self.net.ensure_gateway(&GatewaySpec::default()).await {
                Ok(()) => st.gateway = true,
                Err(e) => {
                    tracing::warn!(error = %e, "routing mesh: cannot set up the gateway bridge")
                }
            }
        }
        let ingress = self.ingress_overlay();
        if let Some(spec) = &ingress {
            let _overlays = self.overlays.lock().await;
            if st.overlay.as_ref() != Some(spec) {
                match self.net.ensure_overlay(spec).await {
                    Ok(info) => {
                        tracing::info!(vni = spec.vni, address = ?spec.address, "joined the ingress network");
                        st.overlay = Some(spec.clone());
                        if info.created {
                            st.peers = None;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "routing mesh: cannot set up the ingress overlay")
                    }
                }
            }
            let eps = self.endpoints_of(INGRESS_NETWORK).unwrap_or_default();
            let peers = (spec.vni, self.peers_for(INGRESS_NETWORK, &eps));
            if st.overlay.is_some() && st.peers.as_ref() != Some(&peers) {
                match self.net.sync_peers(peers.0, &peers.1).await {
                    Ok(_) => st.peers = Some(peers),
                    Err(e) => {
                        tracing::warn!(error = %e, "routing mesh: cannot sync ingress peers")
                    }
                }
            }
        }
        let rules = self.mesh_rules(ingress.as_ref().filter(|_| st.overlay.is_some()));
        if st.programmed.as_ref() != Some(&rules) {
            match mesh.program(&rules).await {
                Ok(()) => {
                    tracing::debug!(ports = rules.ports.len(), "programmed the routing mesh");
                    st.programmed = Some(rules);
                }
                Err(e) => tracing::warn!(error = %e, "cannot program the routing mesh"),
            }
        }
    }

    /// The full reconcile (see the module docs). Returns `false` when a start or removal was
    /// in flight, so nothing was done: try again soon.
    pub async fn reconcile(
        &self,
        containers: &dyn ContainerRuntime,
        desired: &BTreeMap<String, Task>,
    ) -> bool {
        let Ok(_exclusive) = self.busy.try_write() else {
            return false;
        };
        if self.networks.borrow().is_none() || self.endpoints.borrow().is_none() {
            return true;
        }
        let listed = match containers.list().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "network reconcile: cannot list containers");
                return true;
            }
        };
        // Tasks whose process exited keep their container (logs) but not their networking;
        // neither do tasks that ended (a node that died and came back finds its orphaned
        // tasks' containers created but without a process).
        let with_container: BTreeSet<String> = listed
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
            .collect();
        let _overlays = self.overlays.lock().await;
        let observed = match self.net.observe().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "network reconcile: cannot observe the node's links");
                return true;
            }
        };
        // What each task with a container needs, when its spec is known.
        let mut specs = Vec::new();
        let mut local = BTreeMap::new();
        for id in &with_container {
            let Some(task) = desired.get(id) else {
                if let Some(t) = self.local_map().get(id) {
                    local.insert(id.clone(), t.clone());
                }
                continue;
            };
            match self.task_spec(task) {
                Ok(spec) => {
                    let gateway = observed
                        .task_ports
                        .get(id)
                        .into_iter()
                        .flatten()
                        .find_map(|p| match p.kind {
                            PortKind::Gateway(ip) => Some(ip),
                            PortKind::Overlay(_) => None,
                        });
                    local.insert(
                        id.clone(),
                        LocalTask {
                            networks: task
                                .spec
                                .attachments
                                .iter()
                                .map(|a| a.network.clone())
                                .collect(),
                            egress: spec.egress,
                            host_ports: host_mode_ports(task),
                            gateway,
                        },
                    );
                    specs.push(spec);
                }
                Err(e) => {
                    tracing::debug!(task = %id, error = %e, "network reconcile: skipping task")
                }
            }
        }
        let mut mtus = BTreeMap::new();
        let mut vni_network = BTreeMap::new();
        if let Some(nets) = self.networks.borrow().as_ref() {
            for n in nets.values() {
                if let Some(vni) = n.status.vni {
                    mtus.insert(vni, n.spec.mtu);
                    vni_network.insert(vni, n.name().to_string());
                }
            }
        }
        let mut want = DesiredNet::from_tasks(specs, &mtus, GatewaySpec::default());
        // Tasks with a container but no known spec keep their namespace and overlays.
        let unknown: BTreeSet<&String> = with_container
            .iter()
            .filter(|id| !want.tasks.contains_key(*id))
            .collect();
        for id in &unknown {
            for p in observed.task_ports.get(*id).into_iter().flatten() {
                if let PortKind::Overlay(vni) = p.kind {
                    want.overlays.entry(vni).or_insert(OverlaySpec {
                        vni,
                        mtu: mtus.get(&vni).copied().flatten(),
                        address: None,
                    });
                }
            }
        }
        // The ingress overlay (with the node's address) stays whether or not tasks use it.
        if let Some(spec) = self.ingress_overlay() {
            want.overlays.insert(spec.vni, spec);
        }
        for vni in want.overlays.keys() {
            if let Some(network) = vni_network.get(vni) {
                if let Some(eps) = self.endpoints_of(network) {
                    want.peers.insert(*vni, self.peers_for(network, &eps));
                }
            }
        }
        let ops: Vec<NetOp> = plan_network(&want, &observed)
            .into_iter()
            .filter(|op| match op {
                NetOp::DetachTask(t) => !unknown.contains(t),
                // Peers of overlays whose network is unknown are left as they are.
                NetOp::SyncPeers(vni, _) => want.peers.contains_key(vni),
                // The gateway bridge stays once made (cheap, and shared by every task).
                NetOp::RemoveGateway => false,
                _ => true,
            })
            .collect();
        for (op, result) in apply_net_ops(self.net.as_ref(), ops).await {
            match result {
                Ok(()) if !matches!(op, NetOp::SyncPeers(..)) => {
                    tracing::info!(?op, "network reconcile")
                }
                Ok(()) => {}
                Err(e) => tracing::warn!(?op, error = %e, "network reconcile step failed"),
            }
        }
        drop(_overlays);
        *self.local_map() = local.clone();
        {
            // Ensure the ingress overlay and the mesh table again at the next mesh refresh
            // (repairs what observe cannot see, such as the bridge's address).
            let mut st = self.mesh_state.lock().await;
            st.overlay = None;
            st.peers = None;
            st.programmed = None;
        }
        // DNS servers: every local task namespace has one (after a restart they are started
        // again); servers of tasks without a container stop.
        let present = self.net.observe().await.map(|o| o.task_netns).ok();
        for (id, t) in &local {
            if present.as_ref().is_some_and(|p| !p.contains(id)) {
                continue;
            }
            let (dns, other) = if t.egress {
                (&self.dns, &self.dns_internal)
            } else {
                (&self.dns_internal, &self.dns)
            };
            other.stop(id).await;
            let netns = self.netns_path(id);
            for network in &t.networks {
                if let Some(eps) = self.endpoints_of(network) {
                    self.records.set_from_endpoints(network, &eps);
                }
            }
            if let Err(e) = dns.ensure(id, &netns, &t.networks).await {
                tracing::warn!(task = %id, error = %e, "cannot start the task's DNS server");
            }
        }
        for host in [&self.dns, &self.dns_internal] {
            for key in host.keys().await {
                if !local.contains_key(&key) {
                    host.stop(&key).await;
                }
            }
        }
        self.lb_cache
            .lock()
            .await
            .retain(|id, _| local.contains_key(id));
        for id in local.keys() {
            if present.as_ref().is_some_and(|p| !p.contains(id)) {
                continue;
            }
            if let Err(e) = self.program_lb(id).await {
                tracing::warn!(task = %id, error = %e, "cannot program VIP rules");
            }
        }
        true
    }

    /// Watches Networks and Endpoints and keeps the node's networking converged until
    /// `ctx.shutdown` (see the module docs).
    pub async fn run(
        self: Arc<Self>,
        containers: Arc<dyn ContainerRuntime>,
        ctx: BackgroundContext,
    ) {
        let BackgroundContext {
            store,
            mut desired,
            mut shutdown,
            watch_progress_every,
            resync,
        } = ctx;
        let keys = store.keys().clone();
        let watches = [
            tokio::spawn(cluster::watch_objects::<NetworkSpec>(
                store.clone(),
                keys.prefix::<NetworkSpec>(),
                watch_progress_every,
                self.networks.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(cluster::watch_objects::<EndpointsSpec>(
                store.clone(),
                keys.prefix::<EndpointsSpec>(),
                watch_progress_every,
                self.endpoints.clone(),
                shutdown.clone(),
            )),
        ];
        let mut watches: Vec<_> = watches.into_iter().collect();
        if self.mesh.is_some() {
            watches.push(tokio::spawn(cluster::watch_objects::<NodeSpec>(
                store.clone(),
                keys.prefix::<NodeSpec>(),
                watch_progress_every,
                self.nodes.clone(),
                shutdown.clone(),
            )));
        }
        let mut networks = self.networks.subscribe();
        let mut endpoints = self.endpoints.subscribe();
        let mut nodes = self.nodes.subscribe();
        let mut tick = tokio::time::interval(resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Reconcile as soon as everything is listed (restart recovery), then every resync.
        let mut full_due = true;
        loop {
            let listed = self.networks.borrow().is_some()
                && self.endpoints.borrow().is_some()
                && desired.borrow().is_some();
            if full_due && listed {
                let snapshot = desired.borrow().clone().unwrap_or_default();
                full_due = !self.reconcile(containers.as_ref(), &snapshot).await;
            }
            self.refresh().await;
            self.refresh_mesh().await;
            let retry = async {
                if full_due && listed {
                    tokio::time::sleep(Duration::from_secs(1)).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                biased;
                _ = super::stopped(&mut shutdown) => break,
                r = networks.changed() => if r.is_err() { break },
                r = endpoints.changed() => if r.is_err() { break },
                r = desired.changed() => if r.is_err() { break },
                r = nodes.changed() => if r.is_err() { break },
                _ = self.mesh_kick.notified() => {}
                _ = tick.tick() => full_due = true,
                _ = retry => {}
            }
        }
        for w in watches {
            w.abort();
        }
        // The DNS servers are served by this process: they stop with the agent, as they
        // would if it exited. A restarted agent starts them again (see `reconcile`).
        for host in [&self.dns, &self.dns_internal] {
            for key in host.keys().await {
                host.stop(&key).await;
            }
        }
    }
}

/// How a networking error is reported on a task.
fn net_error(task: &str, e: NetError) -> TaskError {
    task_failure(task, format!("network: {e}"), e.is_temporary())
}

/// A failure while setting a task up: temporary ones are retried (`Unavailable`, nothing
/// reported), the rest fail the task with `reason`.
fn task_failure(task: &str, reason: String, temporary: bool) -> TaskError {
    if temporary {
        TaskError::Unavailable(format!("task {task}: {reason}"))
    } else {
        TaskError::Failed {
            task: task.to_string(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::containers::{ContainerTasks, LABEL_TASK};
    use crate::agent::task_runtime::TaskRuntime;
    use crate::dns::{QueryKind, RecordingDns};
    use crate::lb::RecordingLb;
    use crate::net::{NetCall, Observed, PeerOp, RecordingNetwork};
    use crate::runtime::fake::{Call, FakeRuntime};
    use shoal_api_types::endpoints::{EndpointTask, Endpoints};
    use shoal_api_types::service::{EndpointMode, PortConfig, PublishMode};
    use shoal_api_types::{Network as NetworkObject, NetworkStatus, TaskAttachment, TaskSpec};

    const PREFIX: &str = "shoal-node-1-";

    struct Node {
        tasks: ContainerTasks,
        network: Arc<NodeNetwork>,
        runtime: Arc<FakeRuntime>,
        net: Arc<RecordingNetwork>,
        dns: Arc<RecordingDns>,
        dns_internal: Arc<RecordingDns>,
        lb: Arc<RecordingLb>,
    }

    fn node_with(net: RecordingNetwork, runtime: Arc<FakeRuntime>) -> Node {
        let net = Arc::new(net);
        let (dns, dns_internal, lb) = (
            Arc::new(RecordingDns::default()),
            Arc::new(RecordingDns::default()),
            Arc::new(RecordingLb::default()),
        );
        let network = Arc::new(NodeNetwork::new(
            net.clone(),
            dns.clone(),
            dns_internal.clone(),
            lb.clone(),
            RecordStore::new(),
            Ipv4Addr::new(198, 18, 0, 1),
            "/run/netns",
            PREFIX,
        ));
        network.set_networks([
            overlay("appnet", 4097, false),
            overlay("other", 4098, false),
            overlay("private", 4099, true),
        ]);
        network.set_endpoints([]);
        Node {
            tasks: ContainerTasks::new(runtime.clone(), "node-1").with_network(network.clone()),
            network,
            runtime,
            net,
            dns,
            dns_internal,
            lb,
        }
    }

    fn node() -> Node {
        node_with(RecordingNetwork::new(PREFIX), Arc::new(FakeRuntime::new()))
    }

    fn overlay(name: &str, vni: u32, internal: bool) -> NetworkObject {
        let mut n = NetworkObject::new(
            name,
            NetworkSpec {
                internal,
                ..Default::default()
            },
        );
        n.status = NetworkStatus {
            vni: Some(vni),
            subnet: Some(format!("10.0.{}.0/24", vni - 4096)),
            ..Default::default()
        };
        n
    }

    fn task(id: &str, networks: &[(&str, &str)]) -> Task {
        let internal = networks.iter().all(|(n, _)| *n == "private") && !networks.is_empty();
        Task::new(
            id,
            TaskSpec {
                service: "api".into(),
                slot: Some(1),
                node: Some("node-1".into()),
                image: "localhost:5000/busybox:latest".into(),
                args: vec!["httpd".into()],
                internal,
                attachments: networks
                    .iter()
                    .map(|(n, a)| TaskAttachment {
                        network: (*n).into(),
                        address: format!("{a}/24"),
                        mac: String::new(),
                        aliases: vec![],
                    })
                    .collect(),
                ..Default::default()
            },
        )
    }

    fn endpoints(network: &str, service: &str, vip: &str, tasks: &[(&str, &str)]) -> Endpoints {
        Endpoints::new(
            format!("{network}.{service}"),
            EndpointsSpec {
                network: network.into(),
                service: service.into(),
                vip: Some(vip.into()),
                endpoint_mode: EndpointMode::Vip,
                tasks: tasks
                    .iter()
                    .map(|(ip, node)| EndpointTask {
                        task: format!("t-{ip}"),
                        name: format!("{service}.{ip}"),
                        ip: (*ip).into(),
                        node_address: (*node).into(),
                        ready: true,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        )
    }

    fn netns(id: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/{PREFIX}{id}"))
    }

    #[tokio::test]
    async fn start_should_attach_the_task_before_creating_its_container_in_that_namespace() {
        let n = node();
        n.tasks
            .start_task(&task("t1", &[("appnet", "10.0.1.5")]))
            .await
            .unwrap();
        let calls = n.net.calls();
        let attach = calls
            .iter()
            .position(|c| matches!(c, NetCall::AttachTask(_)))
            .expect("attached");
        let overlay = calls
            .iter()
            .position(|c| matches!(c, NetCall::EnsureOverlay(o) if o.vni == 4097))
            .expect("overlay ensured");
        let gateway = calls
            .iter()
            .position(|c| matches!(c, NetCall::EnsureGateway(_)))
            .expect("gateway ensured");
        assert!(overlay < attach && gateway < attach, "{calls:?}");
        let NetCall::AttachTask(spec) = &calls[attach] else {
            unreachable!()
        };
        assert_eq!(spec.attachments[0].vni, 4097);
        assert!(spec.egress);
        assert_eq!(n.runtime.spec("t1").unwrap().netns, Some(netns("t1")));
        assert!(n.runtime.calls().contains(&Call::Start("t1".into())));
        assert_eq!(
            n.dns.calls(),
            [format!("ensure t1 {} appnet", netns("t1").display())]
        );
        assert!(n.dns_internal.calls().is_empty());
        assert_eq!(n.lb.entries(&netns("t1")), Some(vec![]));
        assert_eq!(n.network.local_tasks(), ["t1"]);
    }

    #[tokio::test]
    async fn start_should_create_nothing_when_the_attach_fails_or_the_network_is_unknown() {
        let n = node();
        n.net.fail("attach_task");
        let err = n
            .tasks
            .start_task(&task("t1", &[("appnet", "10.0.1.5")]))
            .await
            .unwrap_err();
        assert!(err.is_temporary(), "{err:?}");
        let err = n
            .tasks
            .start_task(&task("t2", &[("nope", "10.0.9.5")]))
            .await
            .unwrap_err();
        assert!(err.reason().contains("\"nope\" does not exist"), "{err:?}");
        assert!(n.runtime.ids().is_empty());
        assert!(!n
            .runtime
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Create(_))));
        assert!(n.dns.calls().is_empty());
    }

    #[tokio::test]
    async fn a_wrong_image_should_cost_no_namespace_and_a_failed_create_should_detach() {
        let n = node();
        n.runtime.set_image_missing("localhost:5000/nope:1");
        let mut t = task("t1", &[("appnet", "10.0.1.5")]);
        t.spec.image = "localhost:5000/nope:1".into();
        let err = n.tasks.start_task(&t).await.unwrap_err();
        assert_eq!(err.reason(), "image not found: localhost:5000/nope:1");
        assert!(n.net.calls().is_empty(), "{:?}", n.net.calls());

        // An id containerd refuses: the create fails after the attach.
        let t = task("-t2", &[("appnet", "10.0.1.6")]);
        let err = n.tasks.start_task(&t).await.unwrap_err();
        assert!(matches!(err, TaskError::Rejected { .. }), "{err:?}");
        assert!(n.runtime.ids().is_empty());
        assert!(n.net.calls().contains(&NetCall::DetachTask("-t2".into())));
        assert_eq!(n.dns.calls().last().unwrap(), "stop -t2");
    }

    #[tokio::test]
    async fn internal_tasks_should_get_no_gateway_and_a_dns_server_without_upstreams() {
        let n = node();
        n.tasks
            .start_task(&task("t1", &[("private", "10.0.3.5")]))
            .await
            .unwrap();
        assert!(!n
            .net
            .calls()
            .iter()
            .any(|c| matches!(c, NetCall::EnsureGateway(_))));
        assert!(n.dns.calls().is_empty());
        assert_eq!(
            n.dns_internal.calls(),
            [format!("ensure t1 {} private", netns("t1").display())]
        );
    }

    #[tokio::test]
    async fn remove_should_detach_after_deleting_and_drop_overlays_nobody_uses() {
        let n = node();
        n.tasks
            .start_task(&task("t1", &[("appnet", "10.0.1.5")]))
            .await
            .unwrap();
        n.tasks
            .start_task(&task(
                "t2",
                &[("appnet", "10.0.1.6"), ("other", "10.0.2.6")],
            ))
            .await
            .unwrap();
        n.net.clear_calls();
        n.tasks.remove_task("t2").await.unwrap();
        assert!(!n.runtime.ids().contains(&"t2".to_string()));
        let calls = n.net.calls();
        assert!(
            calls.contains(&NetCall::DetachTask("t2".into())),
            "{calls:?}"
        );
        assert!(calls.contains(&NetCall::RemoveOverlay(4098)), "{calls:?}");
        assert!(!calls.contains(&NetCall::RemoveOverlay(4097)), "{calls:?}");
        assert_eq!(n.dns.calls().last().unwrap(), "stop t2");
        n.tasks.remove_task("t1").await.unwrap();
        assert!(n.net.calls().contains(&NetCall::RemoveOverlay(4097)));
        assert!(n.network.local_tasks().is_empty());
        // Removing again is a no-op that still succeeds.
        n.tasks.remove_task("t1").await.unwrap();
    }

    #[tokio::test]
    async fn an_exited_process_should_lose_its_networking_but_keep_its_container() {
        let n = node();
        n.tasks
            .start_task(&task("t1", &[("appnet", "10.0.1.5")]))
            .await
            .unwrap();
        n.runtime.exit("t1", 137);
        for _ in 0..200 {
            if n.net.calls().contains(&NetCall::DetachTask("t1".into())) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(n.net.calls().contains(&NetCall::DetachTask("t1".into())));
        assert!(n.net.calls().contains(&NetCall::RemoveOverlay(4097)));
        assert_eq!(n.dns.calls().last().unwrap(), "stop t1");
        assert_eq!(n.runtime.ids(), ["t1"]);
        assert!(n.network.local_tasks().is_empty());
    }

    #[tokio::test]
    async fn endpoints_changes_should_sync_peers_records_and_only_the_affected_vip_tables() {
        let n = node();
        n.tasks
            .start_task(&task("t1", &[("appnet", "10.0.1.5")]))
            .await
            .unwrap();
        n.tasks
            .start_task(&task("t2", &[("other", "10.0.2.5")]))
            .await
            .unwrap();
        n.network.refresh().await;
        let lb_before = n.lb.calls().len();
        n.net.clear_calls();

        n.network.set_endpoints([
            endpoints(
                "appnet",
                "api",
                "10.0.1.2",
                &[("10.0.1.5", "198.18.0.1"), ("10.0.1.7", "198.18.0.2")],
            ),
            endpoints("unrelated", "db", "10.0.9.2", &[("10.0.9.5", "198.18.0.3")]),
        ]);
        n.network.refresh().await;

        // Peers: only the remote task, on appnet's overlay.
        let peer_ops: Vec<_> = n
            .net
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                NetCall::ApplyPeerOp(vni, op) => Some((vni, op)),
                _ => None,
            })
            .collect();
        assert_eq!(peer_ops.len(), 2, "{peer_ops:?}");
        assert!(peer_ops.iter().all(|(vni, _)| *vni == 4097));
        assert!(peer_ops.iter().any(|(_, op)| matches!(op,
            PeerOp::AddNeigh(e) if e.ip == Ipv4Addr::new(10, 0, 1, 7))));
        // Records of appnet answer the VIP for every view on it.
        assert_eq!(
            n.network
                .records()
                .view(&["appnet"])
                .answer("api", QueryKind::A),
            crate::dns::Answer::Addrs(vec!["10.0.1.2".parse().unwrap()])
        );
        // VIP rules: t1's namespace only.
        let lb_calls = n.lb.calls()[lb_before..].to_vec();
        assert_eq!(
            lb_calls,
            [format!("program {} 2", netns("t1").display())],
            "{lb_calls:?}"
        );
        assert_eq!(n.lb.entries(&netns("t1")).unwrap()[0].backends.len(), 2);

        // No change, no work.
        n.net.clear_calls();
        n.network.refresh().await;
        assert_eq!(n.lb.calls().len(), lb_before + 1);
        assert!(n.net.calls().is_empty(), "{:?}", n.net.calls());
    }

    #[tokio::test]
    async fn reconcile_should_restart_dns_of_surviving_tasks_and_collect_leftovers() {
        // What a crashed agent left: t1 runs (container, namespace, overlay), `gone` has a
        // namespace but no container, overlay 4098 has no task, and `ended` (orphaned while
        // the agent was away) still has its container and namespace.
        let runtime = Arc::new(FakeRuntime::new());
        let first = node_with(RecordingNetwork::new(PREFIX), runtime.clone());
        let t1 = task("t1", &[("appnet", "10.0.1.5")]);
        first.tasks.start_task(&t1).await.unwrap();
        first
            .tasks
            .start_task(&task("gone", &[("other", "10.0.2.5")]))
            .await
            .unwrap();
        first
            .tasks
            .start_task(&task("ended", &[("appnet", "10.0.1.8")]))
            .await
            .unwrap();
        let observed: Observed = first.net.observe().await.unwrap();
        runtime.remove("gone");
        assert_eq!(runtime.ids(), ["ended", "t1"]);
        assert_eq!(
            runtime.spec("t1").unwrap().labels[LABEL_TASK],
            "t1".to_string()
        );

        let n = node_with(RecordingNetwork::with_observed(PREFIX, observed), runtime);
        n.network.set_endpoints([endpoints(
            "appnet",
            "api",
            "10.0.1.2",
            &[("10.0.1.5", "198.18.0.1")],
        )]);
        let mut ended = task("ended", &[("appnet", "10.0.1.8")]);
        ended.status.state = shoal_api_types::TaskState::Orphaned;
        let desired = BTreeMap::from([("t1".to_string(), t1), ("ended".to_string(), ended)]);
        assert!(
            n.network
                .reconcile(n.runtime.as_ref() as &dyn ContainerRuntime, &desired)
                .await
        );
        let calls = n.net.calls();
        assert!(
            calls.contains(&NetCall::DetachTask("gone".into())),
            "{calls:?}"
        );
        assert!(
            calls.contains(&NetCall::DetachTask("ended".into())),
            "an ended task keeps its container, not its networking: {calls:?}"
        );
        assert_eq!(n.dns.server("ended"), None);
        assert!(calls.contains(&NetCall::RemoveOverlay(4098)), "{calls:?}");
        assert!(
            !calls.iter().any(|c| matches!(c, NetCall::AttachTask(_))),
            "the running task is left alone: {calls:?}"
        );
        assert_eq!(
            n.dns.server("t1"),
            Some((netns("t1"), vec!["appnet".to_string()]))
        );
        assert_eq!(n.lb.entries(&netns("t1")).unwrap().len(), 2);
        assert_eq!(n.network.local_tasks(), ["t1"]);

        // A second reconcile changes nothing.
        n.net.clear_calls();
        let lb_calls = n.lb.calls().len();
        assert!(
            n.network
                .reconcile(n.runtime.as_ref() as &dyn ContainerRuntime, &desired)
                .await
        );
        assert!(n
            .net
            .calls()
            .iter()
            .all(|c| matches!(c, NetCall::Observe | NetCall::ListPeerEntries(_))));
        assert_eq!(n.lb.calls().len(), lb_calls);
    }

    #[tokio::test]
    async fn reconcile_should_wait_for_starts_in_flight() {
        let n = node();
        let held = n.network.hold().await;
        assert!(
            !n.network
                .reconcile(
                    n.runtime.as_ref() as &dyn ContainerRuntime,
                    &BTreeMap::new()
                )
                .await
        );
        drop(held);
        assert!(
            n.network
                .reconcile(
                    n.runtime.as_ref() as &dyn ContainerRuntime,
                    &BTreeMap::new()
                )
                .await
        );
    }

    #[tokio::test(start_paused = true)]
    async fn drain_should_wait_until_the_task_leaves_every_endpoints_object() {
        let n = node();
        n.network.set_endpoints([endpoints(
            "appnet",
            "api",
            "10.0.1.100",
            &[("10.0.1.2", "198.18.0.1")],
        )]);
        assert!(n.network.is_ready_anywhere("t-10.0.1.2"));
        let network = n.network.clone();
        let drained =
            tokio::spawn(async move { network.drain("t-10.0.1.2", Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !drained.is_finished(),
            "still listed as ready: keeps waiting"
        );
        let mut eps = endpoints("appnet", "api", "10.0.1.100", &[("10.0.1.2", "198.18.0.1")]);
        eps.spec.tasks[0].ready = false;
        n.network.set_endpoints([eps]);
        assert!(drained.await.unwrap(), "drained once marked not ready");
    }

    #[tokio::test(start_paused = true)]
    async fn drain_should_give_up_after_its_limit() {
        let n = node();
        n.network.set_endpoints([endpoints(
            "appnet",
            "api",
            "10.0.1.100",
            &[("10.0.1.2", "198.18.0.1")],
        )]);
        assert!(!n.network.drain("t-10.0.1.2", Duration::from_secs(2)).await);
        assert!(
            n.network.drain("unknown", Duration::from_secs(2)).await,
            "a task listed nowhere is drained"
        );
    }

    fn node_obj(name: &str, address: &str, ingress: &str) -> shoal_api_types::Node {
        let mut n = shoal_api_types::Node::new(name, Default::default());
        n.status.address = address.into();
        n.status.ingress_address = ingress.into();
        n
    }

    #[tokio::test]
    async fn the_mesh_should_join_ingress_with_the_node_address_and_program_published_ports() {
        let net = Arc::new(RecordingNetwork::new(PREFIX));
        let runtime = Arc::new(FakeRuntime::new());
        let mesh = Arc::new(crate::mesh::RecordingMesh::default());
        let network = Arc::new(
            NodeNetwork::new(
                net.clone(),
                Arc::new(RecordingDns::default()),
                Arc::new(RecordingDns::default()),
                Arc::new(RecordingLb::default()),
                RecordStore::new(),
                Ipv4Addr::new(198, 18, 0, 1),
                "/run/netns",
                PREFIX,
            )
            .with_mesh("node-1", mesh.clone()),
        );
        let tasks = ContainerTasks::new(runtime.clone(), "node-1").with_network(network.clone());
        let mut ingress = overlay("ingress", 4096, false);
        ingress.status.subnet = Some("10.255.0.0/16".into());
        network.set_networks([ingress, overlay("appnet", 4097, false)]);
        network.set_nodes([
            node_obj("node-1", "198.18.0.1", "10.255.0.3"),
            node_obj("node-2", "198.18.0.2", "10.255.0.4"),
            node_obj("node-3", "198.18.0.3", ""),
        ]);
        let mut pub_eps = endpoints(
            "ingress",
            "pub",
            "10.255.0.2",
            &[("10.255.0.5", "198.18.0.2")],
        );
        pub_eps.spec.ports = vec![PortConfig {
            published: 9091,
            target: 80,
            ..Default::default()
        }];
        network.set_endpoints([pub_eps]);
        network.refresh_mesh().await;

        // Every node joins ingress with its own address, even without a task.
        let calls = net.calls();
        let with_addr = OverlaySpec {
            vni: 4096,
            mtu: None,
            address: Some("10.255.0.3/16".parse().unwrap()),
        };
        assert!(
            calls.contains(&NetCall::EnsureOverlay(with_addr.clone())),
            "{calls:?}"
        );
        assert!(
            calls.iter().any(|c| matches!(c, NetCall::EnsureGateway(_))),
            "ip_forward comes with the gateway: {calls:?}"
        );
        // Peers: the remote task and node-2's ingress address (node-3 has none yet).
        let neigh: BTreeSet<Ipv4Addr> = calls
            .iter()
            .filter_map(|c| match c {
                NetCall::ApplyPeerOp(4096, PeerOp::AddNeigh(e)) => Some(e.ip),
                _ => None,
            })
            .collect();
        assert_eq!(
            neigh,
            BTreeSet::from([Ipv4Addr::new(10, 255, 0, 4), Ipv4Addr::new(10, 255, 0, 5)])
        );
        let rules = mesh.rules().expect("programmed");
        assert_eq!(rules.node_address, Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(
            rules.ingress,
            Some(("shb-4096".to_string(), Ipv4Addr::new(10, 255, 0, 3)))
        );
        assert_eq!(rules.ports.len(), 1);
        assert_eq!(
            (rules.ports[0].published, rules.ports[0].target),
            (9091, 80)
        );
        assert_eq!(rules.ports[0].backends, [Ipv4Addr::new(10, 255, 0, 5)]);

        // Nothing changed: no work.
        net.clear_calls();
        network.refresh_mesh().await;
        assert!(net.calls().is_empty(), "{:?}", net.calls());
        assert_eq!(mesh.programs(), 1);

        // A local task with a host-mode port: its gateway address; the ingress overlay a
        // task joins keeps the node's address.
        let mut t = task("h1", &[("ingress", "10.255.0.9")]);
        t.spec.ports = vec![PortConfig {
            published: 8080,
            target: 80,
            mode: PublishMode::Host,
            ..Default::default()
        }];
        tasks.start_task(&t).await.unwrap();
        assert!(!net.calls().iter().any(
            |c| matches!(c, NetCall::EnsureOverlay(o) if o.vni == 4096 && o.address.is_none())
        ));
        network.refresh_mesh().await;
        let rules = mesh.rules().unwrap();
        let host = rules
            .ports
            .iter()
            .find(|p| p.published == 8080)
            .expect("host port");
        assert_eq!(host.mode, PublishMode::Host);
        assert_eq!(host.backends.len(), 1);
        assert!(host.backends[0].octets()[..2] == [172, 18], "{host:?}");

        // The service goes: its port goes, node-2 stays a peer; the task leaving takes its
        // host port, and the ingress overlay stays.
        network.set_endpoints([]);
        tasks.remove_task("h1").await.unwrap();
        assert!(!net.calls().contains(&NetCall::RemoveOverlay(4096)));
        network.refresh_mesh().await;
        assert!(mesh.rules().unwrap().ports.is_empty());
        let dels: Vec<Ipv4Addr> = net
            .calls()
            .iter()
            .filter_map(|c| match c {
                NetCall::ApplyPeerOp(4096, PeerOp::DelNeigh(e)) => Some(e.ip),
                _ => None,
            })
            .collect();
        assert_eq!(dels, [Ipv4Addr::new(10, 255, 0, 5)]);
    }
}
