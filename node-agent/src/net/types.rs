//! The networking layer's plain data: what the agent asks for (overlays, the gateway, task
//! attachments, peers) and what [`super::Network::observe`] finds. No I/O here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnetwork::Ipv4Network;

use super::names::{self, PortKind};
use super::netns;

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

/// Test peer `10.0.1.<last>` on node `198.18.0.<node>`.
#[cfg(test)]
pub fn peer(last: u8, node: u8) -> Peer {
    Peer {
        ip: Ipv4Addr::new(10, 0, 1, last),
        node: Ipv4Addr::new(198, 18, 0, node),
    }
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
