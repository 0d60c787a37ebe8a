//! Owns the routing mesh's convergence on this node: the node joins the `ingress` overlay
//! with the address the controller gave it (`Node.status.ingressAddress`) whether or not
//! tasks run here, holds every other node's ingress address as a peer, and keeps its
//! `shoal_mesh` table ([`crate::mesh`]) equal to the ingress ports in the Endpoints of
//! `ingress` plus the host-mode ports of local tasks (to their gateway-bridge address), less
//! the reserved ports (the ClusterSettings' and the node's own; a warning names each);
//! `traffic: local` ports go to the local ready tasks' gateway-bridge addresses, and their
//! health ports answer the count of those (served after the table that holds them). The
//! table is left in place when the agent stops (like containers) and replaced by the next
//! agent; the health listeners end with the agent. Each step runs only when its input
//! changed since it last succeeded, or a repair is due after a full reconcile
//! ([`MeshState`](super::mesh_state::MeshState), owned by the background loop, in
//! `mesh_state`). See docs/architecture.md ("Node agent").

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use shoal_api_types::endpoints::EndpointsSpec;
use shoal_api_types::network::{parse_cidr, INGRESS_NETWORK};
use shoal_api_types::settings::{reason, CLUSTER_SETTINGS};

use super::mesh_state::MeshState;
use super::NodeNetwork;
use crate::mesh::{self, MeshRules};
use crate::net::{names, new_peer_addresses, peers_from_endpoints, GatewaySpec, OverlaySpec, Peer};

impl NodeNetwork {
    /// The ingress overlay with this node's address on it, once the mesh runs, the ingress
    /// network is allocated and the controller gave this node its address.
    pub(super) fn ingress_overlay(&self) -> Option<OverlaySpec> {
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

    /// The remote peers of `network`: remote tasks from its Endpoints and, on `ingress`
    /// while the mesh runs, every other node's ingress address.
    pub(super) fn peers_for(&self, network: &str, eps: &[EndpointsSpec]) -> Vec<Peer> {
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

    /// The node's mesh table as it should be now: ingress-mode ports from `eps`, the
    /// Endpoints of `ingress` (when the node has its ingress address), host-mode ports of
    /// local tasks.
    pub(super) fn mesh_rules(
        &self,
        ingress: Option<&OverlaySpec>,
        eps: &[EndpointsSpec],
    ) -> MeshRules {
        let mut ports = Vec::new();
        let ingress = ingress.and_then(|spec| {
            let addr = spec.address?.ip();
            Some((names::bridge_name(spec.vni), addr))
        });
        let local = self.local_map().clone();
        if ingress.is_some() {
            let gateways: BTreeMap<String, Ipv4Addr> = local
                .iter()
                .filter_map(|(id, t)| Some((id.clone(), t.gateway?)))
                .collect();
            ports.extend(mesh::ingress_ports(eps, &gateways));
        }
        ports.extend(mesh::host_ports(
            local
                .iter()
                .map(|(id, t)| (id.as_str(), t.host_ports.as_slice(), t.gateway)),
        ));
        let reserved = {
            let settings = self.settings.borrow();
            let cluster = settings
                .as_ref()
                .and_then(|s| s.get(CLUSTER_SETTINGS))
                .map(|s| &s.spec);
            mesh::node_reserved_ports(cluster, &self.own_reserved)
        };
        MeshRules {
            node_address: Some(self.underlay),
            ingress,
            ports: mesh::normalize(ports),
            reserved,
        }
    }

    /// Converges the routing mesh (no-op without [`NodeNetwork::with_mesh`]): the gateway
    /// bridge (it turns `ip_forward` on, which the mesh needs on nodes without tasks too),
    /// the ingress overlay with the node's address and its peers (remote ingress tasks and
    /// every other node's ingress address), and the `shoal_mesh` table. Each step runs only
    /// when its input changed since it last succeeded, or a repair is due
    /// ([`MeshState::repair`]).
    ///
    /// Only joining the ingress network waits for others: for devices being made (the
    /// devices lock) and overlay removals (the overlays lock, shared with task setups), so
    /// that a task being drained leaves the table without queueing behind starts and stops
    /// ([`super::DRAIN_SETTLE`] assumes it has left). Backends leave first; new remote
    /// backends enter only after their peer entries are synced (under the peers lock), so
    /// no connection goes to an address the overlay cannot reach yet
    /// ([`MeshRules::without_pending`]).
    pub async fn refresh_mesh(&self, st: &mut MeshState) {
        let Some(mesh) = &self.mesh else {
            return;
        };
        if self.networks.borrow().is_none()
            || self.endpoints.borrow().is_none()
            || self.nodes.borrow().is_none()
        {
            return;
        }
        // One reading of the Endpoints for the peers and the table alike.
        let ingress = self.ingress_overlay();
        let eps = self.endpoints_of(INGRESS_NETWORK).unwrap_or_default();
        let rules = self.mesh_rules(ingress.as_ref(), &eps);
        let peers = ingress
            .as_ref()
            .map(|spec| (spec.vni, self.peers_for(INGRESS_NETWORK, &eps)));
        let peers_wanted = peers.clone();
        // Ingress peers whose entries are not in place whatever this pass last synced (a
        // task setup syncs them too, from its own reading): synced again below.
        let unreached = peers
            .as_ref()
            .is_some_and(|(_, wanted)| !self.unreached(INGRESS_NETWORK, wanted).is_empty());
        if ingress.is_some() && st.overlay == ingress {
            let pending = self.mesh_pending(peers.as_ref(), st.peers.as_ref());
            let now = rules.without_pending(&pending, st.programmed.as_ref());
            if st.programmed.as_ref() != Some(&now) {
                match mesh.program(&now).await {
                    // The table is written whole: a repair of it is done too.
                    Ok(()) => {
                        st.programmed = Some(now);
                        st.repair.table = false;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot program the routing mesh"),
                }
            }
        }
        // A repair keeps what was applied; each step it asks for runs until it succeeds.
        // Each of the gateway and the overlay waits for overlay removals: after the
        // withdrawal above.
        if !st.gateway || st.repair.gateway {
            self.ensure_mesh_gateway(st).await;
        }
        if let (Some(spec), Some(peers)) = (&ingress, peers) {
            if st.overlay.as_ref() != Some(spec) || st.repair.overlay {
                let _overlays = self.overlays.read().await;
                let _devices = self.devices.lock().await;
                match self.net.ensure_overlay(spec).await {
                    Ok(info) => {
                        if st.overlay.as_ref() != Some(spec) || info.created {
                            tracing::info!(vni = spec.vni, address = ?spec.address, "joined the ingress network");
                        }
                        st.overlay = Some(spec.clone());
                        st.repair.overlay = false;
                        if info.created {
                            st.peers = None;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "routing mesh: cannot set up the ingress overlay")
                    }
                }
            }
            if st.overlay.is_some()
                && (st.peers.as_ref() != Some(&peers) || unreached || st.repair.peers)
            {
                let _peers = self.peers.lock().await;
                match self.net.sync_peers(peers.0, &peers.1).await {
                    Ok(_) => {
                        st.peers = Some(peers);
                        st.repair.peers = false;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "routing mesh: cannot sync ingress peers")
                    }
                }
            }
        }
        // Backends at addresses the peers were not synced for stay out until they are.
        let rules = match &st.overlay {
            Some(_) => rules.without_pending(
                &self.mesh_pending(peers_wanted.as_ref(), st.peers.as_ref()),
                st.programmed.as_ref(),
            ),
            None => self.mesh_rules(None, &eps),
        };
        if st.programmed.as_ref() != Some(&rules) || st.repair.table {
            for p in rules.skipped() {
                tracing::warn!(
                    port = %p.key(),
                    mode = shoal_api_types::service::mode_name(p.mode),
                    reason = reason(p.key()),
                    "routing mesh: not programming a rule for a reserved port (a service \
                     publishes it; reserved ports are the controller's --reserved-ports and \
                     the agent's own)"
                );
            }
            match mesh.program(&rules).await {
                Ok(()) => {
                    tracing::debug!(ports = rules.ports.len(), "programmed the routing mesh");
                    st.programmed = Some(rules);
                    st.repair.table = false;
                }
                Err(e) => tracing::warn!(error = %e, "cannot program the routing mesh"),
            }
        }
        // Health ports answer what the table programs: only after it was programmed.
        if let Some(programmed) = &st.programmed {
            let health = (self.underlay, programmed.health_answers());
            if st.health.as_ref() != Some(&health) || st.repair.health {
                match mesh.serve_health(health.0, &health.1).await {
                    Ok(()) => {
                        st.health = Some(health);
                        st.repair.health = false;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "routing mesh: cannot serve a health port")
                    }
                }
            }
        }
    }

    /// Ensures the gateway bridge (`ip_forward`, the egress table), and records it among the
    /// devices made, so task setups do not write it again until the next overlay removal
    /// or reconcile.
    async fn ensure_mesh_gateway(&self, st: &mut MeshState) {
        let _overlays = self.overlays.read().await;
        let mut made = self.devices.lock().await;
        match self.net.ensure_gateway(&GatewaySpec::default()).await {
            Ok(()) => {
                (st.gateway, st.repair.gateway) = (true, false);
                made.gateway = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "routing mesh: cannot set up the gateway bridge")
            }
        }
    }

    /// The addresses among `wanted` ingress peers (VNI, peers) that are not reached yet:
    /// not in what the mesh pass last `synced`, or without entries in place
    /// ([`NodeNetwork::unreached`]).
    fn mesh_pending(
        &self,
        wanted: Option<&(u32, Vec<Peer>)>,
        synced: Option<&(u32, Vec<Peer>)>,
    ) -> BTreeSet<Ipv4Addr> {
        let mut pending = pending_peers(wanted, synced);
        if let Some((_, wanted)) = wanted {
            pending.extend(self.unreached(INGRESS_NETWORK, wanted));
        }
        pending
    }
}

/// The addresses among `wanted` peers (VNI, peers) that `synced` does not hold (all of them
/// when it is of another VNI or none).
fn pending_peers(
    wanted: Option<&(u32, Vec<Peer>)>,
    synced: Option<&(u32, Vec<Peer>)>,
) -> BTreeSet<Ipv4Addr> {
    let Some((vni, wanted)) = wanted else {
        return BTreeSet::new();
    };
    let synced = match synced {
        Some((v, s)) if v == vni => s.as_slice(),
        _ => &[],
    };
    new_peer_addresses(wanted, synced)
}
