//! Owns the fan-out of Endpoints to this node: the record tables the DNS servers answer
//! from, the overlays' peer entries and the VIP table of each local task, kept equal to the
//! Endpoints cache ([`NodeNetwork::refresh`]), and draining a task out of service before it
//! stops ([`NodeNetwork::drain`]). The `ingress` network is in no task's DNS or VIP view
//! ([`crate::dns::view_networks`]): its peers are synced, its names and VIPs are not served.
//! See docs/architecture.md ("Node agent").

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shoal_api_types::endpoints::EndpointsSpec;
use shoal_api_types::network::INGRESS_NETWORK;

use futures::StreamExt;

use super::{task_failure, LbSlot, NodeNetwork, PeerSync, DRAIN_SETTLE, LB_CONCURRENCY};
use crate::agent::task_runtime::TaskError;
use crate::dns::view_networks;
use crate::lb::{self, LbError};
use crate::net::{new_peer_addresses, Peer};

impl NodeNetwork {
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

    /// The Endpoints of `network` (`None` before the first list).
    pub(super) fn endpoints_of(&self, network: &str) -> Option<Vec<EndpointsSpec>> {
        let eps = self.endpoints.borrow();
        let eps = eps.as_ref()?;
        Some(
            eps.values()
                .filter(|e| e.spec.network == network)
                .map(|e| e.spec.clone())
                .collect(),
        )
    }

    /// Record tables, DNS server and VIP table of a task whose namespace exists. The
    /// `ingress` network is left out of its DNS and VIP views ([`crate::dns::view_networks`]).
    pub(super) async fn serve(
        &self,
        id: &str,
        netns: &Path,
        networks: &[String],
        egress: bool,
    ) -> Result<(), TaskError> {
        let networks = view_networks(networks);
        let networks = networks.as_slice();
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
        // The DNS server and the VIP table are independent (sockets vs one nft transaction in
        // the namespace): made at the same time. A failure of either fails the setup, whose
        // teardown removes both.
        let dns = async {
            dns.ensure(id, netns, networks)
                .await
                .map_err(|e| task_failure(id, format!("start DNS server: {e}"), e.is_temporary()))
        };
        let lb = async {
            if self.endpoints.borrow().is_some() {
                self.program_lb(id, false, &BTreeSet::new())
                    .await
                    .map_err(|e| {
                        task_failure(id, format!("program VIP rules: {e}"), e.is_temporary())
                    })?;
            }
            Ok(())
        };
        let (dns, lb) = tokio::join!(dns, lb);
        dns.and(lb)
    }

    /// Converges the overlay of `network` to the remote tasks in its Endpoints (not before
    /// the first Endpoints list), holding the peers lock. With [`PeerSync::Missing`] (a
    /// task setup) nothing is done when every peer it wants is known to have its entries in
    /// place ([`crate::net::SyncedPeers::pending`]): starts on a node whose overlays are up
    /// then need no netlink dump of the peers each. Returns whether it succeeded.
    pub(super) async fn sync_peers(&self, network: &str, vni: u32, mode: PeerSync) -> bool {
        let Some(eps) = self.endpoints_of(network) else {
            return true;
        };
        let peers = self.peers_for(network, &eps);
        if mode == PeerSync::Missing
            && self
                .synced
                .pending(vni, &peers)
                .is_some_and(|p| p.is_empty())
        {
            return true;
        }
        // No await between the reading and the queueing: the peers lock is fair (first come,
        // first served), so syncs through here run in the order they read the Endpoints.
        // (The mesh pass reads earlier; it syncs only ingress, in no VIP table, and syncs
        // again when entries it wants are missing.)
        let _peers = self.peers.lock().await;
        match self.net.sync_peers(vni, &peers).await {
            Ok(ops) => {
                if !ops.is_empty() {
                    tracing::debug!(network, vni, changes = ops.len(), "synced overlay peers")
                }
                true
            }
            Err(e) => {
                tracing::warn!(network, vni, error = %e, "cannot sync overlay peers");
                false
            }
        }
    }

    /// Programs task `id`'s VIP table from the current Endpoints ([`lb::converge`]): only
    /// what changed since the entries last programmed there (the cache), or, without a cache
    /// entry or with `verify` (the periodic resync), after reading the table back, written
    /// whole when it is not what it should be (drift is repaired there). Remote backends
    /// whose peer entries are not in place ([`crate::net::SyncedPeers::pending`], from the same
    /// reading of the Endpoints) or at a `pending` address are left for a later call
    /// ([`lb::without_pending`]).
    pub(super) async fn program_lb(
        &self,
        id: &str,
        verify: bool,
        pending: &BTreeSet<Ipv4Addr>,
    ) -> Result<(), LbError> {
        if !self.local_map().contains_key(id) {
            return Ok(());
        }
        let slot = self.lb_lock().entry(id.to_string()).or_default().clone();
        let mut cache = slot.lock().await;
        // Torn down meanwhile (its slot went, or a task of the same id has a new one).
        let current = self
            .lb_lock()
            .get(id)
            .is_some_and(|s| Arc::ptr_eq(s, &slot));
        let Some(task) = self.local_map().get(id).cloned().filter(|_| current) else {
            return Ok(());
        };
        // One reading of each network's Endpoints, for the entries and for which of their
        // remote backends the overlay does not reach yet (the caller's `pending` covers an
        // overlay nothing is known of, as after an agent restart).
        let mut eps = Vec::new();
        let mut pending = pending.clone();
        for network in view_networks(&task.networks) {
            let of_network = self.endpoints_of(&network).unwrap_or_default();
            pending.extend(self.unreached(&network, &self.peers_for(&network, &of_network)));
            eps.extend(of_network);
        }
        // An entry whose backends are all held back keeps what was programmed, also when
        // verifying (which reads the table back instead of trusting the cache).
        let before = cache.take();
        let known = if verify { None } else { before.clone() };
        let entries = lb::without_pending(&lb::vip_entries(&eps), &pending, before.as_deref());
        if known.as_ref() == Some(&entries) {
            *cache = Some(entries);
            return Ok(());
        }
        let netns = self.netns_path(id);
        let how = lb::converge(self.lb.as_ref(), &netns, known.as_deref(), &entries).await?;
        match how {
            lb::Converged::Unchanged => {}
            lb::Converged::Changed => {
                tracing::debug!(task = %id, entries = entries.len(), "changed VIP rules")
            }
            lb::Converged::Rewritten if verify => {
                tracing::warn!(task = %id, entries = entries.len(), "VIP rules had drifted; rewrote them")
            }
            lb::Converged::Rewritten => {
                tracing::debug!(task = %id, entries = entries.len(), "programmed VIP rules")
            }
        }
        *cache = Some(entries);
        Ok(())
    }

    /// The addresses among `network`'s `wanted` peers whose entries are not in place
    /// (none when nothing is known of its overlay).
    pub(super) fn unreached(&self, network: &str, wanted: &[Peer]) -> BTreeSet<Ipv4Addr> {
        self.network_info(network)
            .ok()
            .and_then(|(vni, _)| self.synced.pending(vni, wanted))
            .unwrap_or_default()
    }

    /// The VIP cache's map of per-task slots.
    pub(super) fn lb_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LbSlot>> {
        self.lb_cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies Endpoints changes to every network with local tasks: record table, peers and
    /// the VIP tables of its local tasks. Networks whose Endpoints did not change since the
    /// last call (as `applied` remembers) are skipped.
    ///
    /// Nothing here waits for task setups (the overlays lock), so that a task being drained
    /// leaves the VIP tables without queueing behind starts and stops ([`DRAIN_SETTLE`]
    /// assumes it has left; docs/benchmarks-history.md measures how soon). Backends leave
    /// first; peers are synced (under the peers lock) only
    /// where they changed, and backends at new remote addresses enter the tables after that
    /// ([`lb::without_pending`]).
    pub async fn refresh(&self, applied: &mut BTreeMap<String, Vec<EndpointsSpec>>) {
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
        applied.retain(|n, _| by_network.contains_key(n.as_str()));
        let mut changed_tasks = BTreeSet::new();
        // Networks whose peers changed, with the addresses that are not peers yet.
        let mut to_sync = Vec::new();
        let mut pending = BTreeSet::new();
        for (network, tasks) in &by_network {
            let Some(eps) = self.endpoints_of(network) else {
                continue;
            };
            let before = applied.get(*network);
            let changed = before != Some(&eps);
            // The ingress overlay's peers are the mesh's to sync when the node is on it
            // (`refresh_mesh`, at the same time as this).
            let mesh_owns = *network == INGRESS_NETWORK && self.ingress_overlay().is_some();
            let peers = self.peers_for(network, &eps);
            // Entries missing whatever the Endpoints did (a sync that failed, an overlay
            // made again, another pass's sync from an older reading) are synced again too.
            let unreached = match mesh_owns {
                true => BTreeSet::new(),
                false => self.unreached(network, &peers),
            };
            if !changed && unreached.is_empty() {
                continue;
            }
            if changed && *network != INGRESS_NETWORK {
                self.records.set_from_endpoints(network, &eps);
            }
            // A network first seen here had its peers synced by the setup of the task that
            // joined it, moments ago: synced again below, nothing of it is held back.
            let synced = before.map(|b| self.peers_for(network, b));
            if (synced.as_ref() != Some(&peers) || !unreached.is_empty()) && !mesh_owns {
                let mut new = synced
                    .map(|synced| new_peer_addresses(&peers, &synced))
                    .unwrap_or_default();
                new.extend(unreached);
                pending.extend(new.iter().copied());
                to_sync.push((*network, new));
            }
            changed_tasks.extend(tasks.iter().copied());
            applied.insert(network.to_string(), eps);
        }
        // Every changed table at once: a table's transaction takes ~20 ms on the
        // development machine whatever its size, and one after the other they queued the
        // next change (docs/architecture.md, "Node agent").
        let program = |pending: BTreeSet<Ipv4Addr>| {
            let changed_tasks = &changed_tasks;
            async move {
                let pending = &pending;
                futures::stream::iter(changed_tasks)
                    .for_each_concurrent(LB_CONCURRENCY, |id| async move {
                        if let Err(e) = self.program_lb(id, false, pending).await {
                            tracing::warn!(task = %id, error = %e, "cannot program VIP rules");
                        }
                    })
                    .await
            }
        };
        program(pending.clone()).await;
        // A network whose peers could not be synced keeps its new backends out, and is
        // synced again at the next pass (it is not recorded as applied).
        let mut unsynced = BTreeSet::new();
        for (network, new) in to_sync {
            if let Ok((vni, _)) = self.network_info(network) {
                if !self.sync_peers(network, vni, PeerSync::Exact).await {
                    applied.remove(network);
                    unsynced.extend(new);
                }
            }
        }
        if unsynced != pending {
            program(unsynced).await;
        }
    }
}
