//! What the routing mesh is asked for ([`MeshRules`] of [`MeshPort`]s) and the [`Mesh`] trait
//! that programs it; shared by the real table ([`super::NftMesh`]) and the fake.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use shoal_api_types::service::{Protocol, PublishMode, TrafficPolicy};
use shoal_api_types::settings::ReservedPort;

use super::health::HealthError;
use crate::net::nft::NftError;
use crate::net::reachable_backends;

/// One published port on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MeshPort {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The port on the node.
    pub published: u16,
    /// The port in the task.
    pub target: u16,
    /// Ingress (every node, to the ingress IPs of ready tasks) or host (local task only).
    pub mode: PublishMode,
    /// Ingress mode: `cluster` (backends are every ready task's ingress IP, SNAT into the
    /// ingress overlay) or `local` (backends are this node's ready tasks' gateway-bridge
    /// addresses, no SNAT: the task sees the client's address). Host mode: `cluster`.
    pub traffic: TrafficPolicy,
    /// `traffic: local` only: the TCP port on which the node reports `backends.len()`.
    pub health_port: Option<u16>,
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

    /// What each health port answers: port → the number of local ready tasks (the
    /// backends) of its `traffic: local` port, for the ports the table programs; a reserved
    /// health port (TCP) is left out like a reserved published port. Without a node
    /// address, none.
    pub fn health_answers(&self) -> BTreeMap<u16, u32> {
        let mut out = BTreeMap::new();
        if self.node_address.is_none() {
            return out;
        }
        for p in &self.ports {
            let Some(h) = p.health_port else { continue };
            if p.traffic != TrafficPolicy::Local
                || p.mode != PublishMode::Ingress
                || self.ingress.is_none()
                || self.reserved.contains(&p.key())
                || self.reserved.contains(&ReservedPort::tcp(h))
            {
                continue;
            }
            let n = u32::try_from(p.backends.len()).unwrap_or(u32::MAX);
            out.entry(h).or_insert(n);
        }
        out
    }

    /// These rules as far as they can be programmed while the `pending` addresses cannot be
    /// reached yet (their overlay peer entries are not synced): each port without its
    /// pending backends. A port that would keep none of its backends stays as `programmed`
    /// has it (or is left out if it has none there), so that removals never wait for a peer
    /// sync and additions never come before one. Without pending addresses, `self`.
    pub fn without_pending(
        &self,
        pending: &BTreeSet<Ipv4Addr>,
        programmed: Option<&MeshRules>,
    ) -> MeshRules {
        if pending.is_empty() {
            return self.clone();
        }
        let ports = self
            .ports
            .iter()
            .filter_map(|p| match reachable_backends(&p.backends, pending) {
                Some(backends) => Some(MeshPort {
                    backends,
                    ..p.clone()
                }),
                None => programmed?
                    .ports
                    .iter()
                    .find(|q| q.key() == p.key())
                    .cloned(),
            })
            .collect();
        MeshRules {
            ports,
            ..self.clone()
        }
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
    /// Answer HTTP on `address:port` for each health port of `answers` (port → local ready
    /// count: 200 `{"local":N}`, or 503 `{"local":0}`), and on no other health port.
    /// Idempotent: ports already served keep their listener and take the new count.
    async fn serve_health(
        &self,
        address: Ipv4Addr,
        answers: &BTreeMap<u16, u32>,
    ) -> Result<(), HealthError>;
}
