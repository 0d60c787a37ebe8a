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
    /// Steps to apply again although their input did not change.
    pub(crate) repair: Repair,
}

/// The steps of the mesh a repair applies again (see [`MeshState::repair`]); each is cleared
/// when its own step succeeds, so one that keeps failing (a health port another process
/// holds) is the only one tried again.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Repair {
    /// The gateway bridge, with `ip_forward` and its egress table: observing links sees the
    /// bridge, not a table someone flushed, and a node may start no task to write it again.
    pub(crate) gateway: bool,
    pub(crate) overlay: bool,
    pub(crate) peers: bool,
    pub(crate) table: bool,
    pub(crate) health: bool,
}

impl MeshState {
    /// Ensure the gateway bridge and the ingress overlay, sync the overlay's peers and
    /// program the table and the health ports again at the next refresh (repairs what
    /// observing links cannot see, such as the bridge's address or the egress table). What
    /// was applied is kept meanwhile: that refresh still withdraws drained backends from the
    /// table as programmed before it waits for overlay removals to repair the gateway and
    /// the overlay.
    pub(crate) fn repair(&mut self) {
        self.repair = Repair {
            gateway: true,
            overlay: true,
            peers: true,
            table: true,
            health: true,
        };
    }
}
