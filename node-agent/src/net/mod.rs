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
//! - The node's own policy: `table inet shoal_node` ([`nodefw`]) refuses what tasks send
//!   to the node itself (from the gateway bridge or an overlay bridge), accepts VXLAN only
//!   from the nodes' underlay addresses, and forwards new connections into an overlay only
//!   when the routing mesh DNATed them.
//! - Bridged frames skip the IP hooks where the home is a node namespace of the agent's own
//!   ([`NetConfig::home_netns`]): [`datapath`] turns `br_netfilter` off there (Shoal filters
//!   nothing bridged; the hooks cost conntrack on every overlay packet), never in the host's
//!   namespace, where kube-proxy and Docker rely on it.
//! - Receiving, VXLAN from a node to a local task skips the VXLAN device and the bridge:
//!   [`fastpath`] (a BPF program at the underlay interface's tc ingress, loaded with the
//!   node policy) strips the outer headers and hands the frame to the task's namespace.
//!   It is a shortcut over the path above, which stays complete.
//! - 127.0.0.11 (the DNS server's address) needs no extra address: `lo` is brought up with
//!   127.0.0.1/8, and the kernel's local route covers all of 127.0.0.0/8.

pub mod datapath;
mod desired;
mod egress;
mod error;
#[cfg(any(test, feature = "test-util"))]
mod fake;
pub mod fastpath;
mod kernel;
pub mod names;
pub mod netns;
mod network;
pub mod nft;
pub mod nodefw;
mod peers;
mod plan;
mod synced;
mod types;

pub use desired::{desired_node, network_vni, node_ops, task_spec, LocalTask, NodeNet, SpecError};
pub use error::NetError;
#[cfg(any(test, feature = "test-util"))]
pub use fake::{NetCall, RecordingNetwork};
pub use kernel::Kernel;
pub use names::PortKind;
pub use network::Network;
pub use nodefw::NodePolicy;
pub use peers::plan_peers;
pub use plan::{
    apply_net_ops, new_peer_addresses, peers_from_endpoints, plan_network, reachable_backends,
    task_net_spec, DesiredNet, NetOp,
};
pub use synced::SyncedPeers;
pub use types::{
    Attachment, FdbEntry, GatewaySpec, NeighEntry, NetConfig, Observed, ObservedOverlay,
    ObservedPort, OverlayInfo, OverlaySpec, Peer, PeerEntries, PeerOp, TaskInterface, TaskNetInfo,
    TaskNetSpec,
};
