//! What the routing mesh is asked for ([`MeshRules`] of [`MeshPort`]s) and the [`Mesh`] trait
//! that programs it; shared by the real table ([`super::NftMesh`]) and the fake.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use shoal_api_types::service::{Protocol, PublishMode};
use shoal_api_types::settings::ReservedPort;

use crate::net::nft::NftError;

/// One published port on this node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MeshPort {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The port on the node.
    pub published: u16,
    /// The port in the task.
    pub target: u16,
    /// Ingress (every node, to the ingress IPs of ready tasks) or host (local task only).
    pub mode: PublishMode,
    /// Where connections go; empty means refused.
    pub backends: Vec<Ipv4Addr>,
}

/// Everything the node's table holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshRules {
    /// The node's underlay address, the destination that published ports answer on.
    pub node_address: Option<Ipv4Addr>,
    /// The ingress overlay's bridge and the node's address on it (SNAT source); ingress
    /// ports are left out while it is unknown.
    pub ingress: Option<(String, Ipv4Addr)>,
    /// The ports.
    pub ports: Vec<MeshPort>,
    /// Ports never programmed, whatever `ports` asks (the cluster's reserved ports and the
    /// ones this node uses itself): the table leaves them out.
    pub reserved: BTreeSet<ReservedPort>,
}

impl MeshPort {
    /// The port as a reserved-port key (`published/protocol`).
    pub fn key(&self) -> ReservedPort {
        ReservedPort::new(self.published, self.protocol)
    }
}

impl MeshRules {
    /// Whether the table has nothing to do (no address or no port).
    pub fn is_empty(&self) -> bool {
        self.node_address.is_none() || self.ports.is_empty()
    }

    /// The ports the table leaves out because they are reserved.
    pub fn skipped(&self) -> impl Iterator<Item = &MeshPort> {
        self.ports
            .iter()
            .filter(|p| self.reserved.contains(&p.key()))
    }
}

/// The node-level firewall side effect behind one narrow trait ([`NftMesh`] for real,
/// [`RecordingMesh`] in tests).
#[async_trait::async_trait]
pub trait Mesh: Send + Sync {
    /// Replace the node's mesh table with one for `rules`.
    async fn program(&self, rules: &MeshRules) -> Result<(), NftError>;
    /// Remove the node's mesh table.
    async fn remove(&self) -> Result<(), NftError>;
    /// The table as the kernel holds it (`nft -j list table` output; `None`: no table), for
    /// `shoal system check` ([`super::read`]).
    async fn programmed(&self) -> Result<Option<String>, NftError>;
}
