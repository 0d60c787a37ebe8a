//! Container networking on this node, the kernel side: network namespaces per task, a bridge
//! plus a VXLAN device per overlay network, veths joining tasks to them, static FDB and
//! neighbour entries for remote tasks, and the gateway (egress) bridge with masquerade.
//!
//! Everything sits behind the narrow [`Network`] trait: [`Kernel`] drives netlink
//! (`rtnetlink`) and the egress table through [`nft`] (the one nft runner, also used by
//! `lb` and `mesh`); `RecordingNetwork` (feature `test-util`) is a `Send + Sync` fake for
//! the agent's unit tests. The pure side: [`desired_node`] says what the node's networking
//! should be ([`DesiredNet`], built with [`task_net_spec`] and [`peers_from_endpoints`]),
//! [`plan_network`] diffs it against [`Network::observe`] into [`NetOp`]s that
//! [`apply_net_ops`] runs; [`plan_peers`] diffs one overlay's FDB and neighbour entries.
//! Files and their place among the agent's modules: docs/architecture.md ("Node agent").
//!
//! # Running the agent inside a node namespace
//!
//! Task namespaces are bind mounts under `/run/netns`, made in the agent's *mount*
//! namespace. Start an agent that lives in a node netns with `nsenter --net=/run/netns/NODE`
//! (network namespace only), not `ip netns exec`, whose private mount namespace would keep
//! those mounts invisible to containerd and `ip netns` on the host (checked: the host then
//! sees an empty file and `setns` fails with EINVAL).
//!
//! A task that sends to a peer before its entries exist caches a FAILED neighbour entry for
//! about three seconds (ordinary ARP behaviour); program the peers of a network before, or
//! right after, starting tasks on it.
//!
//! # Model (see docs/architecture.md and DESIGN.md "Networking model")
//!
//! - "Home" is the namespace the agent's links live in: the agent's own netns, or one given
//!   in [`NetConfig::home_netns`] (tests use that to play several nodes in one process). We
//!   never touch any other namespace except the task namespaces we create.
//! - Overlay per network per node: bridge `shb-<vni>` and VXLAN `shv-<vni>` (dstport 4789,
//!   local = underlay address, no learning, ARP proxy on), the VXLAN enslaved to the bridge.
//!   The bridge has **no IP address**, so the node cannot route between overlays — except
//!   the ingress overlay, where [`OverlaySpec::address`] gives the node its own address.
//! - Remote tasks: a static FDB entry on the VXLAN device (MAC → remote node, `self`,
//!   permanent) and a permanent neighbour entry on the VXLAN device (IP → MAC). With the
//!   device's `proxy` flag the VXLAN driver answers the tasks' ARP requests itself from that
//!   table, so no broadcast leaves the node and no all-zeros (flooding) FDB entry exists.
//!   This is what Docker's libnetwork overlay driver does (neighbour and FDB entries on the
//!   vxlan link, `Proxy: true`), and it keeps one entry per remote task per node, instead of
//!   one per remote task per local task as neighbour entries inside each task netns would.
//! - Per task: netns `<prefix><task>`; per attachment a veth whose host end (`she<hash>`,
//!   alias `shoal/<netns>/<vni>`) is a port of the overlay bridge and whose peer is `ethN`
//!   in the task netns with the task's IP/prefix, its deterministic MAC and the overlay MTU.
//!   Unless every network is internal, one more veth (`shg<hash>`, alias
//!   `shoal/<netns>/gw/<ip>`) joins the gateway bridge `shoal_gwbridge` (172.18.0.0/16,
//!   `.1` on the bridge) and gives the task its default route. Gateway ports are bridge-
//!   isolated, so tasks cannot talk to each other through the gateway bridge.
//! - Egress: `table ip shoal_gw` in the home netns masquerades the gateway subnet leaving
//!   through any other interface, refuses new connections *into* the gateway bridge, and
//!   drops what the gateway bridge would route into an overlay bridge (a node address on the
//!   ingress overlay must not become a path from every task into the ingress network);
//!   `net.ipv4.ip_forward=1` is set in the home netns only.
//! - 127.0.0.11 (the DNS server's address) needs no extra address: `lo` is brought up with
//!   127.0.0.1/8, and the kernel's local route covers all of 127.0.0.0/8.

mod desired;
mod egress;
#[cfg(any(test, feature = "test-util"))]
mod fake;
mod kernel;
pub mod names;
pub mod netns;
pub mod nft;
mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use async_trait::async_trait;
use ipnetwork::Ipv4Network;

pub use desired::{desired_node, network_vni, node_ops, task_spec, LocalTask, NodeNet, SpecError};
#[cfg(any(test, feature = "test-util"))]
pub use fake::{NetCall, RecordingNetwork};
pub use kernel::Kernel;
pub use names::PortKind;
pub use plan::{
    apply_net_ops, peers_from_endpoints, plan_network, plan_peers, task_net_spec, DesiredNet, NetOp,
};

/// How the real implementation is set up on this node.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Prefix of every task netns name (`shoal-node1-`); also what `observe` lists.
    pub prefix: String,
    /// The node's underlay address: VXLAN `local`, and the source of the underlay MTU.
    pub underlay: Ipv4Addr,
    /// Where links live; `None` = the agent's current network namespace.
    pub home_netns: Option<PathBuf>,
    /// Directory of named namespaces (`/run/netns`).
    pub netns_dir: PathBuf,
}

impl NetConfig {
    /// Defaults for an agent on a host: home = own netns, `/run/netns`.
    pub fn new(prefix: impl Into<String>, underlay: Ipv4Addr) -> Self {
        Self {
            prefix: prefix.into(),
            underlay,
            home_netns: None,
            netns_dir: PathBuf::from(netns::NETNS_DIR),
        }
    }
}

/// An overlay network on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlaySpec {
    /// VXLAN network identifier (4096 = ingress, 4097+ = others).
    pub vni: u32,
    /// The network's MTU; underlay MTU − 50 when `None`.
    pub mtu: Option<u32>,
    /// The node's own address on this overlay, put on the bridge (with the bridge's MAC set
    /// to the derived `02:42:…`, so other nodes can hold FDB/neighbour entries for it). Only
    /// for the ingress network, whose published ports the node DNATs into the overlay;
    /// `None` for every other overlay — their bridges carry no address, so the node cannot
    /// route between overlays. Addresses not given here are removed from the bridge.
    pub address: Option<Ipv4Network>,
}

/// What [`Network::ensure_overlay`] made or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayInfo {
    /// Bridge name.
    pub bridge: String,
    /// VXLAN device name.
    pub vxlan: String,
    /// The MTU in effect.
    pub mtu: u32,
    /// The VXLAN device was (re)created by this call, so it holds no peer entries yet:
    /// sync them now rather than at the next periodic resync.
    pub created: bool,
}

/// The node's gateway (egress) bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySpec {
    /// Subnet of the bridge; its first host address goes on the bridge.
    pub subnet: Ipv4Network,
    /// MTU of the bridge and task veths; the underlay's when `None`.
    pub mtu: Option<u32>,
}

impl Default for GatewaySpec {
    fn default() -> Self {
        Self {
            subnet: names::GW_DEFAULT_SUBNET.parse().expect("valid default"),
            mtu: None,
        }
    }
}

/// One network attachment of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The overlay's VNI; [`Network::ensure_overlay`] must have run for it.
    pub vni: u32,
    /// The task's address with the network's prefix length (`10.0.1.2/24`).
    pub address: Ipv4Network,
}

/// A task's networking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskNetSpec {
    /// Task key (the task ID); the netns is `<prefix><task>`.
    pub task: String,
    /// Attachments in interface order: the first becomes `eth0`.
    pub attachments: Vec<Attachment>,
    /// Whether to join the gateway bridge (false when every network is internal).
    pub egress: bool,
}

/// One interface inside a task netns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInterface {
    /// `eth0`, `eth1`, …
    pub name: String,
    /// What it connects to.
    pub kind: PortKind,
    /// Its address and prefix.
    pub address: Ipv4Network,
    /// Its MAC (`02:42:…`).
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
}

/// What [`Network::attach_task`] set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskNetInfo {
    /// Netns name (`<prefix><task>`).
    pub netns: String,
    /// Netns path, for the OCI spec (`/run/netns/<name>`).
    pub path: PathBuf,
    /// The interfaces, overlays first, the gateway one last.
    pub interfaces: Vec<TaskInterface>,
}

/// A remote task on an overlay: its IP (the MAC is derived) and its node's underlay address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    /// The remote task's overlay IP.
    pub ip: Ipv4Addr,
    /// The node it runs on.
    pub node: Ipv4Addr,
}

/// A static FDB entry on a VXLAN device: frames for `mac` go to `node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    /// Remote task MAC.
    pub mac: [u8; 6],
    /// Remote node's underlay address.
    pub node: Ipv4Addr,
}

/// A permanent neighbour (ARP) entry on a VXLAN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NeighEntry {
    /// Remote task IP.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: [u8; 6],
}

/// FDB and neighbour entries present on one overlay's VXLAN device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerEntries {
    /// Static unicast FDB entries (all-zeros and multicast ones are left out).
    pub fdb: BTreeSet<FdbEntry>,
    /// Neighbour entries.
    pub neigh: BTreeSet<NeighEntry>,
}

/// One change to a VXLAN device's entries, from [`plan_peers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerOp {
    /// Remove an FDB entry.
    DelFdb(FdbEntry),
    /// Remove a neighbour entry.
    DelNeigh(NeighEntry),
    /// Add (or replace) an FDB entry.
    AddFdb(FdbEntry),
    /// Add (or replace) a neighbour entry.
    AddNeigh(NeighEntry),
}

/// An overlay's links as found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedOverlay {
    /// `shb-<vni>` exists.
    pub bridge: bool,
    /// `shv-<vni>` exists.
    pub vxlan: bool,
}

/// A task's host-side veth as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPort {
    /// Link name (`she…`/`shg…`).
    pub link: String,
    /// What it connects.
    pub kind: PortKind,
}

/// Everything of ours in the home netns and the netns directory, for plan/GC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Overlays by VNI (either half present).
    pub overlays: BTreeMap<u32, ObservedOverlay>,
    /// Task keys (prefix stripped) that have a netns.
    pub task_netns: BTreeSet<String>,
    /// Host-side task veths by task key (prefix stripped); a key may have no netns (leftover).
    pub task_ports: BTreeMap<String, Vec<ObservedPort>>,
    /// The gateway bridge exists.
    pub gateway: bool,
    /// `she…`/`shg…` links without a readable alias (an interrupted attach): delete them.
    pub stray_links: Vec<String>,
}

/// Errors of the networking layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request failed.
    #[error("netlink: {op} {object}: {source}")]
    Netlink {
        /// What we were doing.
        op: &'static str,
        /// The link, address or entry.
        object: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A namespace syscall failed.
    #[error("{op} {path}: {source}")]
    Netns {
        /// The syscall.
        op: &'static str,
        /// The namespace path.
        path: PathBuf,
        /// errno.
        #[source]
        source: nix::Error,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `nft` refused or could not run.
    #[error("nftables: {0}")]
    Nft(#[from] nft::NftError),
    /// A task attachment names an overlay that is not set up on this node.
    #[error("overlay with VNI {vni} is not set up on this node (call ensure_overlay first)")]
    OverlayMissing {
        /// The VNI.
        vni: u32,
    },
    /// A task wants egress but the gateway bridge is missing.
    #[error(
        "gateway bridge {} is not set up on this node (call ensure_gateway first)",
        names::GW_BRIDGE
    )]
    GatewayMissing,
    /// No free address left on the gateway bridge.
    #[error("gateway subnet {0} has no free address")]
    GatewayExhausted(Ipv4Network),
    /// The underlay address is on no interface of the home netns.
    #[error("underlay address {0} is on no interface of the node's namespace")]
    NoUnderlay(Ipv4Addr),
    /// Bad input (a name, a VNI).
    #[error("invalid: {0}")]
    Invalid(String),
}

impl NetError {
    /// Whether trying again later may succeed (the reconciler requeues with backoff) rather
    /// than the input being wrong. Missing prerequisites are retryable: the agent creates the
    /// overlay or gateway and comes back.
    pub fn is_temporary(&self) -> bool {
        !matches!(self, NetError::Invalid(_) | NetError::GatewayExhausted(_))
    }
}

/// The networking side effects the agent needs, one narrow trait. Every method is
/// idempotent: calling it again with the same input is a no-op.
#[async_trait]
pub trait Network: Send + Sync {
    /// Create the overlay's bridge and VXLAN device unless present; fix master/MTU/up state.
    async fn ensure_overlay(&self, spec: &OverlaySpec) -> Result<OverlayInfo, NetError>;
    /// Delete the overlay's links (with their FDB and neighbour entries). Detach its tasks first.
    async fn remove_overlay(&self, vni: u32) -> Result<(), NetError>;
    /// Create the gateway bridge, masquerade rules and ip_forward unless present.
    async fn ensure_gateway(&self, spec: &GatewaySpec) -> Result<(), NetError>;
    /// Delete the gateway bridge and our nftables table.
    async fn remove_gateway(&self) -> Result<(), NetError>;
    /// Create the task netns and its veths; returns what the container runtime needs.
    async fn attach_task(&self, spec: &TaskNetSpec) -> Result<TaskNetInfo, NetError>;
    /// Delete the task's veths and netns.
    async fn detach_task(&self, task: &str) -> Result<(), NetError>;
    /// FDB and neighbour entries on the overlay's VXLAN device.
    async fn list_peer_entries(&self, vni: u32) -> Result<PeerEntries, NetError>;
    /// Apply one entry change to the overlay's VXLAN device (deleting an absent entry is fine).
    async fn apply_peer_op(&self, vni: u32, op: &PeerOp) -> Result<(), NetError>;
    /// Everything of ours that exists, for plan and garbage collection.
    async fn observe(&self) -> Result<Observed, NetError>;
    /// Delete one of [`Observed::stray_links`] (refuses names that are not task ports).
    async fn remove_stray_link(&self, link: &str) -> Result<(), NetError>;

    /// Converge the overlay's entries to exactly `desired`; returns what was changed.
    async fn sync_peers(&self, vni: u32, desired: &[Peer]) -> Result<Vec<PeerOp>, NetError> {
        let observed = self.list_peer_entries(vni).await?;
        let ops = plan_peers(desired, &observed);
        for op in &ops {
            self.apply_peer_op(vni, op).await?;
        }
        Ok(ops)
    }
}
