//! The routing mesh and host-mode publishing: nftables in the node's own namespace (the
//! agent's home netns).
//!
//! Owns one table, `table ip shoal_mesh`, in the home netns and nothing else there. It is a
//! pure function of the node's published ports ([`ruleset`] of [`MeshRules`]) and is
//! replaced in one nft transaction (add + delete + recreate in one JSON document, as in
//! [`crate::lb`]), so a packet sees the old table or the new one, never half of one.
//!
//! ```text
//! table ip shoal_mesh {
//!   map ports { type inet_proto . inet_service : verdict }   # tcp . 9091 : goto port_0, udp . 53 : goto refuse
//!   chain prerouting { type nat hook prerouting priority dstnat; policy accept;   # traffic arriving on the node
//!     ip daddr 198.18.0.2 ct state new meta l4proto . th dport vmap @ports }
//!   chain output { type nat hook output priority -100; policy accept;            # the node itself
//!     ip daddr 198.18.0.2 ct state new meta l4proto . th dport vmap @ports }
//!   chain port_0 { meta l4proto tcp dnat to numgen inc mod 2 map { 0 : 10.255.0.5, 1 : 10.255.0.6 } : 80 }
//!   chain refuse { reject with tcp reset; reject }            # ingress port without a ready task
//!   chain port_1 { meta l4proto tcp dnat to numgen inc mod 1 map { 0 : 172.18.0.5 } : 80 }  # traffic: local
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     oifname "shb-4096" ct status dnat snat to 10.255.0.3 }   # the node's ingress address
//! }
//! ```
//!
//! - **Ingress mode** ([`ingress_ports`]): every node, with or without a task of the
//!   service, DNATs `<node address>:<published>` to the ingress IPs of the service's ready
//!   tasks at the *target* port, round robin (`numgen inc`), and SNATs what it sends into
//!   the ingress overlay to its own ingress address, so replies come back through the same
//!   node (conntrack undoes both). The task sees a connection from the node's ingress
//!   address to its ingress IP and target port: nothing extra runs in task namespaces. An
//!   ingress port whose service has no ready task is refused at once (TCP reset, ICMP port
//!   unreachable) instead of hanging. The service's Endpoints on `ingress` carry the ports,
//!   so the rules follow the Endpoints watch: a removed service or port has no rule, and
//!   nothing listens on the node, so the kernel refuses.
//! - **`traffic: local` ingress ports** ([`ingress_ports`] with the node's local tasks): the
//!   node DNATs only to its own ready tasks of the service, at their gateway-bridge address
//!   (as host mode does), and nothing SNATs it, so the task sees the client's address and
//!   answers through its default route — the gateway bridge, i.e. this node, whose
//!   conntrack undoes the DNAT. Without a local ready task the port goes to `refuse`: the
//!   node never forwards it elsewhere. Not covered (as for host mode): a task of this node
//!   reaching the port through the node's address (hairpin over the gateway bridge; the
//!   e2e attempt timed out) — tasks use the service's VIP. Each such port may have a
//!   health port ([`MeshRules::health_answers`], served by [`health`]).
//! - **Host mode** ([`host_ports`]): only a node running a task of the service has a rule,
//!   to that local task's address on the gateway bridge (every task with egress has one,
//!   and the node routes to it; overlay bridges carry no node address). The egress table
//!   lets DNATed connections through to the gateway bridge. A task without egress (all its
//!   networks `internal`) cannot publish in host mode; other nodes have no rule, so they
//!   refuse. Two local tasks publishing the same host port cannot happen (the scheduler keeps
//!   host ports unique per node); should it, the first task (by id) wins.
//! - **Per-packet cost does not grow with the number of ports**: one verdict-map lookup
//!   keyed by protocol . port, then one rule in the port's chain (its own round-robin
//!   counter) with one anonymous-map lookup. Only a connection's first packet sees the nat
//!   hooks. Published ports are few (at most one per number and protocol in the cluster), so
//!   one chain per port keeps programming cheap as well.
//! - The rules match the node's underlay address only (not every local address, nor
//!   loopback): published ports answer where the node is reached.
//!
//! - **Reserved ports are never programmed** ([`MeshRules::reserved`]): the cluster's
//!   reserved ports (ClusterSettings, the controller's `--reserved-ports`; the API refuses
//!   services publishing them, so a rule for one means a service stored before the list
//!   changed, or a bypassed API) and the ports this node uses itself whatever the settings
//!   say ([`node_reserved_ports`]: VXLAN's 4789/udp, the agent's own listen port). The
//!   ruleset leaves them out, in either mode; the agent logs a warning for each.
//!
//! Invariants: ports are normalised (sorted by protocol and port, one per key, backends
//! sorted and deduplicated) so the same input always gives the same document; no port in
//! [`MeshRules::reserved`] ever appears in it.

#[cfg(any(test, feature = "test-util"))]
mod fake;
pub mod health;
pub mod read;
mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde_json::{json, Value};
use shoal_api_types::endpoints::{group_slices, EndpointsSpec};
use shoal_api_types::network::INGRESS_NETWORK;
use shoal_api_types::service::{PortConfig, Protocol, PublishMode, TrafficPolicy};
use shoal_api_types::settings::{default_reserved_ports, ClusterSettingsSpec, ReservedPort};

use crate::net::nft::{self, eq, meta, NftError, Table};

#[cfg(any(test, feature = "test-util"))]
pub use fake::RecordingMesh;
pub use health::{HealthError, HealthListeners};
pub use types::{Mesh, MeshPort, MeshRules};

/// The only table we own in the node's namespace (family `ip`).
pub const TABLE: &str = "shoal_mesh";
/// Verdict map keyed by protocol . published port.
pub const PORTS_MAP: &str = "ports";
/// Prefix of the per-port chains.
pub const PORT_CHAIN_PREFIX: &str = "port_";
/// The chain that refuses connections to ingress ports without ready tasks.
pub const REFUSE_CHAIN: &str = "refuse";

fn parse_ip(s: &str) -> Option<Ipv4Addr> {
    s.split('/').next().and_then(|a| a.trim().parse().ok())
}

fn port16(p: u32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

/// The ingress-mode ports of every service, from the Endpoints objects of the `ingress`
/// network (others are ignored). The slices of one service are read as one
/// ([`group_slices`]): ports from slice 0, tasks from all. Backends of a `traffic: cluster`
/// port are the ready tasks' ingress IPs; of a `traffic: local` port, the ready tasks that
/// run here, at their gateway-bridge address (`local`: this node's tasks, id → that
/// address), so a node without one refuses.
pub fn ingress_ports<'a>(
    endpoints: impl IntoIterator<Item = &'a EndpointsSpec>,
    local: &BTreeMap<String, Ipv4Addr>,
) -> Vec<MeshPort> {
    let mut out = Vec::new();
    for g in group_slices(endpoints) {
        let ep = g.head;
        if ep.network != INGRESS_NETWORK {
            continue;
        }
        let cluster: Vec<Ipv4Addr> = g
            .tasks()
            .filter(|t| t.ready)
            .filter_map(|t| parse_ip(&t.ip))
            .collect();
        let here: Vec<Ipv4Addr> = g
            .tasks()
            .filter(|t| t.ready)
            .filter_map(|t| local.get(&t.task).copied())
            .collect();
        for p in ep.ports.iter().filter(|p| p.mode == PublishMode::Ingress) {
            let (Some(published), Some(target)) = (port16(p.published), port16(p.target)) else {
                continue;
            };
            let backends = match p.traffic {
                TrafficPolicy::Cluster => cluster.clone(),
                TrafficPolicy::Local => here.clone(),
            };
            out.push(MeshPort {
                protocol: p.protocol,
                published,
                target,
                mode: PublishMode::Ingress,
                traffic: p.traffic,
                health_port: match p.traffic {
                    TrafficPolicy::Local => p.health_port.and_then(port16),
                    TrafficPolicy::Cluster => None,
                },
                backends,
            });
        }
    }
    out
}

/// The host-mode ports of the local tasks: (task id, its ports, its gateway-bridge address).
/// Tasks without a gateway address are skipped.
pub fn host_ports<'a>(
    tasks: impl IntoIterator<Item = (&'a str, &'a [PortConfig], Option<Ipv4Addr>)>,
) -> Vec<MeshPort> {
    let mut sorted: Vec<_> = tasks.into_iter().collect();
    sorted.sort_by_key(|(id, _, _)| *id);
    let mut out = Vec::new();
    for (_, ports, gw) in sorted {
        let Some(gw) = gw else { continue };
        for p in ports.iter().filter(|p| p.mode == PublishMode::Host) {
            let (Some(published), Some(target)) = (port16(p.published), port16(p.target)) else {
                continue;
            };
            out.push(MeshPort {
                protocol: p.protocol,
                published,
                target,
                mode: PublishMode::Host,
                backends: vec![gw],
                ..MeshPort::default()
            });
        }
    }
    out
}

/// The ports this node never programs: the cluster's reserved ports (`settings`, the
/// published ClusterSettings; the defaults while none is known) and the node's own
/// (`own`: VXLAN, the agent's listen port), which hold even without settings.
pub fn node_reserved_ports(
    settings: Option<&ClusterSettingsSpec>,
    own: &[ReservedPort],
) -> BTreeSet<ReservedPort> {
    let cluster = match settings {
        Some(s) => s.reserved_ports.clone(),
        None => default_reserved_ports(),
    };
    cluster
        .into_iter()
        .chain(own.iter().copied())
        .chain([shoal_api_types::settings::VXLAN_PORT])
        .collect()
}

/// Sorts ports by (protocol, published), keeping the first of each key, with sorted and
/// deduplicated backends.
pub fn normalize(ports: impl IntoIterator<Item = MeshPort>) -> Vec<MeshPort> {
    let mut by_key: BTreeMap<(Protocol, u16), MeshPort> = BTreeMap::new();
    for mut p in ports {
        p.backends.sort();
        p.backends.dedup();
        by_key.entry((p.protocol, p.published)).or_insert(p);
    }
    by_key.into_values().collect()
}

/// Our table, for the document builders.
const NFT: Table = Table::ip(TABLE);

/// The one nft JSON document (`nft -j -f -` input) that atomically replaces our table with
/// one for `rules` (normalised first). Without a node address or ports, the table is still
/// replaced, empty.
pub fn ruleset(rules: &MeshRules) -> Value {
    let ports: Vec<MeshPort> = normalize(
        rules
            .ports
            .iter()
            .filter(|p| p.mode == PublishMode::Host || rules.ingress.is_some())
            .filter(|p| !rules.reserved.contains(&p.key()))
            .cloned(),
    );
    let mut objs = NFT.replace();
    let Some(node) = rules.node_address else {
        return nft::document(objs);
    };
    objs.push(NFT.base_chain("prerouting", "nat", "prerouting", -100));
    objs.push(NFT.base_chain("output", "nat", "output", -100));
    objs.push(NFT.base_chain("postrouting", "nat", "postrouting", 100));
    objs.push(NFT.chain(REFUSE_CHAIN));
    let mut verdicts = Vec::with_capacity(ports.len());
    let mut port_rules = Vec::with_capacity(ports.len());
    for (i, p) in ports.iter().enumerate() {
        let key = json!({"concat": [nft::proto_name(p.protocol), p.published]});
        if p.backends.is_empty() {
            verdicts.push(json!([key, {"goto": {"target": REFUSE_CHAIN}}]));
            continue;
        }
        let chain = format!("{PORT_CHAIN_PREFIX}{i}");
        objs.push(NFT.chain(&chain));
        verdicts.push(json!([key, {"goto": {"target": chain}}]));
        let pick: Vec<Value> = p
            .backends
            .iter()
            .enumerate()
            .map(|(j, b)| json!([j, b.to_string()]))
            .collect();
        port_rules.push(NFT.rule(
            &chain,
            json!([
                eq(meta("l4proto"), nft::proto_name(p.protocol)),
                {"dnat": {"addr": {"map": {"key": {"numgen": {"mode": "inc", "mod": p.backends.len(), "offset": 0}}, "data": {"set": pick}}}, "port": p.target}}
            ]),
        ));
    }
    // Maps whose verdicts name chains come after the chains.
    objs.push(NFT.map(
        PORTS_MAP,
        &["inet_proto", "inet_service"],
        "verdict",
        verdicts,
    ));
    let dispatch = || {
        json!([
            eq(nft::payload("ip", "daddr"), node.to_string()),
            nft::ct_new(),
            {"vmap": {"key": {"concat": [meta("l4proto"), nft::payload("th", "dport")]}, "data": format!("@{PORTS_MAP}")}}
        ])
    };
    objs.push(NFT.rule("prerouting", dispatch()));
    objs.push(NFT.rule("output", dispatch()));
    objs.extend(port_rules);
    objs.extend(nft::refuse_rules(&NFT, REFUSE_CHAIN));
    if let Some((bridge, addr)) = &rules.ingress {
        objs.push(NFT.rule(
            "postrouting",
            json!([
                eq(meta("oifname"), bridge.as_str()),
                {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                {"snat": {"addr": addr.to_string()}}
            ]),
        ));
    }
    nft::document(objs)
}

/// The document that removes our table (whether or not it exists).
pub fn delete_ruleset() -> Value {
    NFT.delete_document()
}

/// The real [`Mesh`]: nft and the health listeners in the home netns (`None`: the agent's
/// own namespace).
#[derive(Debug, Clone, Default)]
pub struct NftMesh {
    home: Option<PathBuf>,
    health: std::sync::Arc<HealthListeners>,
    /// The backends of the last table programmed (`None`: none yet).
    backends: std::sync::Arc<std::sync::Mutex<Option<BTreeSet<Ipv4Addr>>>>,
}

impl NftMesh {
    /// Programs the namespace at `home` (`None`: our own).
    pub fn new(home: Option<PathBuf>) -> Self {
        NftMesh {
            health: std::sync::Arc::new(HealthListeners::new(home.clone())),
            home,
            backends: Default::default(),
        }
    }

    /// After a table that lacks a backend of the one before it (or the first one), deletes
    /// the home netns's connections to the node's address that were NATed to a backend the
    /// table no longer has, so that a client coming back from the same source port is not
    /// sent to it again (see [`crate::lb::netlink::conntrack`]). Best effort, logged.
    async fn forget_dropped_backends(&self, rules: &MeshRules) {
        let Some(node) = rules.node_address else {
            return;
        };
        let now: BTreeSet<Ipv4Addr> = rules
            .ports
            .iter()
            .flat_map(|p| p.backends.iter().copied())
            .collect();
        let dropped = {
            let mut last = self.backends.lock().unwrap_or_else(|p| p.into_inner());
            let dropped = last.as_ref().is_none_or(|b| !b.is_subset(&now));
            *last = Some(now.clone());
            dropped
        };
        if !dropped {
            return;
        }
        let forgot = crate::net::netns::run_in(self.home.as_deref(), move || {
            crate::lb::netlink::conntrack::forget_stale(|to, from| {
                to != node || now.contains(&from)
            })
        })
        .await;
        match forgot {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(
                deleted = n,
                "routing mesh: forgot connections to backends it dropped"
            ),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "routing mesh: cannot forget connections to backends it dropped")
            }
            Err(e) => {
                tracing::warn!(error = %e, "routing mesh: cannot enter the home namespace to forget connections")
            }
        }
    }
}

#[async_trait::async_trait]
impl Mesh for NftMesh {
    async fn program(&self, rules: &MeshRules) -> Result<(), NftError> {
        nft::apply(self.home.as_deref(), &ruleset(rules)).await?;
        self.forget_dropped_backends(rules).await;
        Ok(())
    }
    async fn remove(&self) -> Result<(), NftError> {
        nft::apply(self.home.as_deref(), &delete_ruleset()).await
    }
    async fn programmed(&self) -> Result<Option<String>, NftError> {
        nft::list_table(self.home.as_deref(), NFT).await
    }
    async fn serve_health(
        &self,
        address: Ipv4Addr,
        answers: &BTreeMap<u16, u32>,
    ) -> Result<(), HealthError> {
        self.health.serve(address, answers).await
    }
}

#[cfg(test)]
mod tests;
