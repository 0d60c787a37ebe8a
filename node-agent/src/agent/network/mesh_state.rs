//! [`MeshState`]: what the routing mesh last applied on this node, owned by the network
//! background loop and consulted by `mesh` so each step runs only when its input changed.
//! A leaf, so the loop (`network/mod.rs`) and the mesh steps need not import each other.
//! See docs/architecture.md ("Node agent").

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::mesh::MeshRules;
use crate::net::{OverlaySpec, Peer};

/// What the routing mesh last applied (see `NodeNetwork::refresh_mesh`).
#[derive(Debug, Default)]
pub struct MeshState {
    /// The gateway bridge (and with it `ip_forward`) was ensured.
    pub(crate) gateway: bool,
    /// The ingress overlay as last ensured (with the node's address).
    pub(crate) overlay: Option<OverlaySpec>,
    /// The ingress overlay's peers as last synced.
    pub(crate) peers: Option<(u32, Vec<Peer>)>,
    /// The table as last programmed.
    pub(crate) programmed: Option<MeshRules>,
    /// The health ports as last served (address, port → local ready count).
    pub(crate) health: Option<(Ipv4Addr, BTreeMap<u16, u32>)>,
}

impl MeshState {
    /// Ensure the ingress overlay and the mesh table again at the next refresh (repairs what
    /// observing links cannot see, such as the bridge's address).
    pub(crate) fn forget_applied(&mut self) {
        self.overlay = None;
        self.peers = None;
        self.programmed = None;
        self.health = None;
    }
}
