//! Owns one pass of `shoal system check` over the node's task networking and containers
//! ([`NodeNetwork::check_once`]): the same desired state the full reconcile, the Endpoints
//! fan-out and the mesh build (from this agent's caches and the desired tasks its converge
//! loop works from), against what containerd, netlink and nft hold now, with nothing
//! applied, and [`NodeCheck`], the node's whole audit (two passes, a settle time apart).
//! The comparisons are `crate::check`'s. It runs under the exclusive side of the
//! start/remove lock, as the reconcile does, so a task half set up is never read.
//! See docs/architecture.md ("shoal system check").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use shoal_api_types::check::{CheckReport, Drift, DriftKind};
use shoal_api_types::network::INGRESS_NETWORK;
use tokio::sync::watch;

use super::NodeNetwork;
use crate::agent::desired::DesiredTasks;
use crate::check::{self, NOTHING};
use crate::dns::{view_networks, NetworkRecords};
use crate::lb;
use crate::mesh;
use crate::net::{desired_node, node_ops, plan_peers, NetOp};
use crate::runtime::ContainerRuntime;

/// The node's audit: containers and task networking ([`NodeNetwork::check_once`]).
pub struct NodeCheck {
    node: String,
    network: Arc<NodeNetwork>,
    containers: Arc<dyn ContainerRuntime>,
    settle: Duration,
}

impl std::fmt::Debug for NodeCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCheck")
            .field("node", &self.node)
            .finish()
    }
}

impl NodeCheck {
    /// The check of node `node`, whose networking is `network` and containers `containers`.
    pub fn new(
        node: impl Into<String>,
        network: Arc<NodeNetwork>,
        containers: Arc<dyn ContainerRuntime>,
    ) -> Self {
        NodeCheck {
            node: node.into(),
            network,
            containers,
            settle: check::SETTLE,
        }
    }

    /// With another settle time (tests).
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// One report: a pass, and when it found anything, a second pass after the settle
    /// time; only drift found both times is reported. `Err` says why the node cannot be
    /// checked now (its caches are not listed yet, containerd does not answer).
    pub async fn run(&self) -> Result<CheckReport, String> {
        let first = self
            .network
            .check_once(&self.node, self.containers.as_ref())
            .await?;
        let drift = if first.is_empty() {
            first
        } else {
            tokio::time::sleep(self.settle).await;
            let second = self
                .network
                .check_once(&self.node, self.containers.as_ref())
                .await?;
            check::settled(&first, second)
        };
        let mut report = CheckReport {
            nodes: vec![self.node.clone()],
            drift,
        };
        report.normalize();
        Ok(report)
    }
}

/// How long a check waits for task starts and removals in flight to finish.
const BUSY_WAIT: Duration = Duration::from_secs(10);

impl NodeNetwork {
    /// Remembers the desired tasks the converge loop works from (the background loop calls
    /// this), for [`NodeNetwork::check_once`].
    pub(super) fn remember_desired(&self, desired: watch::Receiver<DesiredTasks>) {
        *self.desired.lock().unwrap_or_else(|e| e.into_inner()) = Some(desired);
    }

    /// One pass of the node's audit (see `crate::check`): every difference between what
    /// this agent would program and what is there, on node `node`. `Err` when the agent
    /// cannot tell yet (its tasks, Networks or Endpoints are not listed) or cannot read
    /// containerd or the kernel.
    pub async fn check_once(
        &self,
        node: &str,
        containers: &dyn ContainerRuntime,
    ) -> Result<Vec<Drift>, String> {
        let desired = self
            .desired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|rx| rx.borrow().clone())
            .ok_or("the agent has not listed its tasks yet")?;
        let networks = self
            .networks
            .borrow()
            .clone()
            .ok_or("the agent has not listed the networks yet")?;
        if self.endpoints.borrow().is_none() {
            return Err("the agent has not listed the Endpoints yet".into());
        }
        let _exclusive = tokio::time::timeout(BUSY_WAIT, self.busy.write())
            .await
            .map_err(|_| "tasks are being started or removed; try again".to_string())?;
        let listed = containers
            .list()
            .await
            .map_err(|e| format!("cannot list containers: {e}"))?;
        let mut drift = check::container_drift(node, &desired, &listed);

        // Networking: the reconcile's own plan, not applied.
        let live = super::live_tasks(&listed, &desired);
        let observed = self
            .net
            .observe()
            .await
            .map_err(|e| format!("cannot read the node's links: {e}"))?;
        let ingress = self.ingress_overlay();
        let planned = desired_node(
            &live,
            &desired,
            &networks,
            &observed,
            ingress.clone(),
            |network| {
                self.endpoints_of(network)
                    .map(|eps| self.peers_for(network, &eps))
            },
        );
        let network_of: BTreeMap<u32, String> = networks
            .values()
            .filter_map(|n| Some((n.status.vni?, n.name().to_string())))
            .collect();
        for op in node_ops(&planned, &observed) {
            match &op {
                NetOp::SyncPeers(vni, peers) => {
                    let entries = self
                        .net
                        .list_peer_entries(*vni)
                        .await
                        .map_err(|e| format!("cannot read the entries of vni {vni}: {e}"))?;
                    let name = network_of.get(vni).map(String::as_str).unwrap_or("?");
                    drift.extend(check::peer_drift(
                        node,
                        name,
                        *vni,
                        &plan_peers(peers, &entries),
                    ));
                }
                other => drift.extend(check::net_op_drift(node, other, &observed)),
            }
        }

        // Per task namespace: its DNS server and its VIP table.
        let serving: BTreeSet<String> = self
            .dns
            .keys()
            .await
            .into_iter()
            .chain(self.dns_internal.keys().await)
            .collect();
        let mut views = BTreeSet::new();
        for (id, t) in &planned.local {
            if !observed.task_netns.contains(id) {
                continue;
            }
            let view = view_networks(&t.networks);
            if !serving.contains(id) {
                drift.push(Drift::new(
                    node,
                    DriftKind::Dns,
                    id,
                    "a DNS server at 127.0.0.11",
                    NOTHING,
                ));
            }
            let mut eps = Vec::new();
            for network in &view {
                eps.extend(self.endpoints_of(network).unwrap_or_default());
            }
            views.extend(view);
            let expected = check::vip_elements(&lb::vip_entries(&eps));
            match self.lb.programmed(&self.netns_path(id)).await {
                Ok(found) => drift.extend(check::element_drift(
                    node,
                    DriftKind::Nft,
                    &format!("{id} ({})", lb::TABLE),
                    &expected,
                    &check::vip_elements(&found.unwrap_or_default()),
                )),
                Err(e) => drift.push(Drift::new(
                    node,
                    DriftKind::Nft,
                    format!("{id} ({})", lb::TABLE),
                    "the table the agent writes",
                    format!("a table it cannot read ({e})"),
                )),
            }
        }

        // DNS records of every network a local task resolves names on.
        for network in views.iter().filter(|n| n.as_str() != INGRESS_NETWORK) {
            let eps = self.endpoints_of(network).unwrap_or_default();
            let expected = NetworkRecords::build(eps.iter().filter(|e| &e.network == network));
            let found = self.records.get(network);
            drift.extend(check::element_drift(
                node,
                DriftKind::Dns,
                network,
                &check::dns_elements(&expected),
                &check::dns_elements(&found),
            ));
        }

        // The node's mesh table.
        if let Some(m) = &self.mesh {
            if self.nodes.borrow().is_some() {
                let eps = self.endpoints_of(INGRESS_NETWORK).unwrap_or_default();
                let rules = self.mesh_rules(ingress.as_ref(), &eps);
                let expected = mesh::read::port_elements(&mesh::ruleset(&rules));
                let object = format!("{} ports", mesh::TABLE);
                match m.programmed().await {
                    Ok(json) => {
                        let doc = json
                            .map(|j| serde_json::from_str(&j).unwrap_or_default())
                            .unwrap_or_default();
                        drift.extend(check::element_drift(
                            node,
                            DriftKind::Nft,
                            &object,
                            &expected,
                            &mesh::read::port_elements(&doc),
                        ));
                    }
                    Err(e) => drift.push(Drift::new(
                        node,
                        DriftKind::Nft,
                        object,
                        "the table the agent writes",
                        format!("a table it cannot read ({e})"),
                    )),
                }
            }
        }
        Ok(drift)
    }
}
