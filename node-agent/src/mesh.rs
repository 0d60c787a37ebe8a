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
}

impl NftMesh {
    /// Programs the namespace at `home` (`None`: our own).
    pub fn new(home: Option<PathBuf>) -> Self {
        NftMesh {
            health: std::sync::Arc::new(HealthListeners::new(home.clone())),
            home,
        }
    }
}

#[async_trait::async_trait]
impl Mesh for NftMesh {
    async fn program(&self, rules: &MeshRules) -> Result<(), NftError> {
        nft::apply(self.home.as_deref(), &ruleset(rules)).await
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
mod tests {
    use super::*;
    use shoal_api_types::endpoints::EndpointTask;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn task(ip: &str, ready: bool) -> EndpointTask {
        EndpointTask::new(&format!("pub.{ip}"), ip)
            .id(&format!("t-{ip}"))
            .ready(ready)
    }

    fn port(published: u32, target: u32, protocol: Protocol, mode: PublishMode) -> PortConfig {
        PortConfig {
            published,
            target,
            protocol,
            mode,
            ..Default::default()
        }
    }

    fn eps(network: &str, ports: Vec<PortConfig>, tasks: Vec<EndpointTask>) -> EndpointsSpec {
        EndpointsSpec {
            ports,
            ..EndpointsSpec::vip(network, "pub", "10.255.0.2").tasks(tasks)
        }
    }

    #[test]
    fn ingress_ports_should_take_backends_from_every_slice_once_per_port() {
        let ports = vec![port(9091, 80, Protocol::Tcp, PublishMode::Ingress)];
        let slices: Vec<EndpointsSpec> = (0..3u32)
            .map(|n| EndpointsSpec {
                slice: n,
                ..eps(
                    "ingress",
                    ports.clone(),
                    vec![task(&format!("10.255.0.{}", 5 + n), true)],
                )
            })
            .collect();
        let got = ingress_ports(slices.iter().rev(), &BTreeMap::new());
        assert_eq!(
            got,
            vec![MeshPort {
                protocol: Protocol::Tcp,
                published: 9091,
                target: 80,
                mode: PublishMode::Ingress,
                backends: vec![ip("10.255.0.5"), ip("10.255.0.6"), ip("10.255.0.7")],
                ..Default::default()
            }]
        );
    }

    #[test]
    fn ingress_ports_should_map_published_to_target_on_ready_ingress_tasks() {
        let ingress = eps(
            "ingress",
            vec![
                port(9091, 80, Protocol::Tcp, PublishMode::Ingress),
                port(9092, 9000, Protocol::Udp, PublishMode::Ingress),
                port(8080, 80, Protocol::Tcp, PublishMode::Host),
            ],
            vec![
                task("10.255.0.6", true),
                task("10.255.0.5", true),
                task("10.255.0.7", false),
            ],
        );
        let other = eps(
            "appnet",
            vec![port(9093, 80, Protocol::Tcp, PublishMode::Ingress)],
            vec![task("10.0.1.5", true)],
        );
        let got = normalize(ingress_ports([&ingress, &other], &BTreeMap::new()));
        assert_eq!(
            got,
            vec![
                MeshPort {
                    protocol: Protocol::Tcp,
                    published: 9091,
                    target: 80,
                    mode: PublishMode::Ingress,
                    backends: vec![ip("10.255.0.5"), ip("10.255.0.6")],
                    ..Default::default()
                },
                MeshPort {
                    protocol: Protocol::Udp,
                    published: 9092,
                    target: 9000,
                    mode: PublishMode::Ingress,
                    backends: vec![ip("10.255.0.5"), ip("10.255.0.6")],
                    ..Default::default()
                },
            ]
        );
    }

    fn local_port(published: u32, health_port: Option<u32>) -> PortConfig {
        PortConfig {
            traffic: TrafficPolicy::Local,
            health_port,
            ..port(published, 80, Protocol::Tcp, PublishMode::Ingress)
        }
    }

    #[test]
    fn local_ports_should_go_only_to_this_nodes_ready_tasks_at_their_gateway_address() {
        let ingress = eps(
            "ingress",
            vec![
                local_port(8080, Some(31001)),
                port(9091, 80, Protocol::Tcp, PublishMode::Ingress),
            ],
            vec![
                task("10.255.0.5", true),  // here, ready
                task("10.255.0.6", false), // here, not ready
                task("10.255.0.7", true),  // elsewhere
            ],
        );
        let here = BTreeMap::from([
            ("t-10.255.0.5".to_string(), ip("172.18.0.5")),
            ("t-10.255.0.6".to_string(), ip("172.18.0.6")),
            ("t-other-service".to_string(), ip("172.18.0.9")),
        ]);
        let got = normalize(ingress_ports([&ingress], &here));
        assert_eq!(
            got,
            vec![
                MeshPort {
                    protocol: Protocol::Tcp,
                    published: 8080,
                    target: 80,
                    mode: PublishMode::Ingress,
                    traffic: TrafficPolicy::Local,
                    health_port: Some(31001),
                    backends: vec![ip("172.18.0.5")],
                },
                MeshPort {
                    protocol: Protocol::Tcp,
                    published: 9091,
                    target: 80,
                    mode: PublishMode::Ingress,
                    backends: vec![ip("10.255.0.5"), ip("10.255.0.7")],
                    ..Default::default()
                },
            ],
            "cluster ports keep every ready task's ingress IP"
        );
        // A node without a ready local task: the local port has no backend (refused).
        let elsewhere = normalize(ingress_ports([&ingress], &BTreeMap::new()));
        assert!(elsewhere[0].backends.is_empty());
        assert_eq!(elsewhere[0].health_port, Some(31001));
        // A health port on a cluster port (the API refuses it) is never served.
        let stray = eps(
            "ingress",
            vec![PortConfig {
                health_port: Some(31002),
                ..port(9093, 80, Protocol::Tcp, PublishMode::Ingress)
            }],
            vec![task("10.255.0.5", true)],
        );
        assert_eq!(ingress_ports([&stray], &here)[0].health_port, None);
    }

    #[test]
    fn local_ports_should_dnat_to_the_local_task_without_snat_and_refuse_without_one() {
        let mut r = rules();
        r.ports = vec![
            MeshPort {
                published: 8080,
                target: 80,
                traffic: TrafficPolicy::Local,
                backends: vec![ip("172.18.0.5")],
                ..Default::default()
            },
            MeshPort {
                published: 8081,
                target: 80,
                traffic: TrafficPolicy::Local,
                backends: vec![],
                ..Default::default()
            },
        ];
        let doc = ruleset(&r);
        assert_eq!(
            programmed_ports(&doc),
            [("tcp".to_string(), 8080), ("tcp".to_string(), 8081)]
        );
        let text = doc.to_string();
        assert!(
            text.contains(r#"[{"concat":["tcp",8081]},{"goto":{"target":"refuse"}}]"#),
            "{text}"
        );
        let objs = doc["nftables"].as_array().unwrap();
        let rules: Vec<&Value> = objs.iter().filter_map(|o| o.pointer("/add/rule")).collect();
        let port0: Vec<&&Value> = rules.iter().filter(|r| r["chain"] == "port_0").collect();
        assert_eq!(
            port0[0]["expr"][1]["dnat"],
            json!({"addr": {"map": {"key": {"numgen": {"mode": "inc", "mod": 1, "offset": 0}},
                "data": {"set": [[0, "172.18.0.5"]]}}}, "port": 80})
        );
        // The only SNAT is into the ingress overlay, which a local backend is never behind:
        // nothing rewrites the client's address on the way to the gateway bridge.
        let post: Vec<&&Value> = rules
            .iter()
            .filter(|r| r["chain"] == "postrouting")
            .collect();
        assert_eq!(post.len(), 1);
        assert_eq!(post[0]["expr"][0]["match"]["right"], "shb-4096");
        assert!(!text.contains("masquerade"), "{text}");
    }

    #[test]
    fn health_answers_should_count_the_local_backends_of_programmed_local_ports() {
        let local = |published: u16, health: u16, n: usize| MeshPort {
            published,
            target: 80,
            traffic: TrafficPolicy::Local,
            health_port: Some(health),
            backends: (0..n)
                .map(|i| Ipv4Addr::new(172, 18, 0, 5 + i as u8))
                .collect(),
            ..Default::default()
        };
        let mut r = rules();
        r.ports = vec![
            local(8080, 31001, 2),
            local(8081, 31002, 0),
            local(8082, 22, 1),    // reserved health port
            local(2379, 31003, 1), // reserved published port
            MeshPort {
                health_port: Some(31004),
                ..rules().ports[1].clone() // a cluster port: no health port
            },
        ];
        r.reserved = node_reserved_ports(None, &[]);
        assert_eq!(r.health_answers(), BTreeMap::from([(31001, 2), (31002, 0)]));
        let no_ingress = MeshRules {
            ingress: None,
            ..r.clone()
        };
        assert!(
            no_ingress.health_answers().is_empty(),
            "no ingress port is programmed yet"
        );
        let no_address = MeshRules {
            node_address: None,
            ..r
        };
        assert!(no_address.health_answers().is_empty());
    }

    #[test]
    fn host_ports_should_go_to_the_local_tasks_gateway_address_only() {
        let ports = vec![
            port(8080, 80, Protocol::Tcp, PublishMode::Host),
            port(9091, 80, Protocol::Tcp, PublishMode::Ingress),
        ];
        let none: Vec<PortConfig> = vec![];
        let got = host_ports([
            ("b", ports.as_slice(), Some(ip("172.18.0.3"))),
            ("a", none.as_slice(), Some(ip("172.18.0.2"))),
            ("c", ports.as_slice(), None),
        ]);
        assert_eq!(
            got,
            vec![MeshPort {
                protocol: Protocol::Tcp,
                published: 8080,
                target: 80,
                mode: PublishMode::Host,
                backends: vec![ip("172.18.0.3")],
                ..Default::default()
            }]
        );
    }

    fn rules() -> MeshRules {
        MeshRules {
            reserved: BTreeSet::new(),
            node_address: Some(ip("198.18.0.2")),
            ingress: Some(("shb-4096".into(), ip("10.255.0.3"))),
            ports: vec![
                MeshPort {
                    protocol: Protocol::Udp,
                    published: 9092,
                    target: 9000,
                    mode: PublishMode::Ingress,
                    backends: vec![],
                    ..Default::default()
                },
                MeshPort {
                    protocol: Protocol::Tcp,
                    published: 9091,
                    target: 80,
                    mode: PublishMode::Ingress,
                    backends: vec![ip("10.255.0.6"), ip("10.255.0.5")],
                    ..Default::default()
                },
                MeshPort {
                    protocol: Protocol::Tcp,
                    published: 8080,
                    target: 80,
                    mode: PublishMode::Host,
                    backends: vec![ip("172.18.0.2")],
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn ruleset_should_replace_the_table_with_one_verdict_map_and_a_chain_per_port() {
        let doc = ruleset(&rules());
        let objs = doc["nftables"].as_array().unwrap();
        // add + delete + add: replaces whatever was there, in one transaction.
        assert_eq!(
            objs[0],
            json!({"add": {"table": {"family": "ip", "name": "shoal_mesh"}}})
        );
        assert_eq!(
            objs[1],
            json!({"delete": {"table": {"family": "ip", "name": "shoal_mesh"}}})
        );
        let map = objs
            .iter()
            .find_map(|o| o.pointer("/add/map"))
            .expect("the ports map");
        assert_eq!(
            map["elem"],
            json!([
                [{"concat": ["tcp", 8080]}, {"goto": {"target": "port_0"}}],
                [{"concat": ["tcp", 9091]}, {"goto": {"target": "port_1"}}],
                [{"concat": ["udp", 9092]}, {"goto": {"target": "refuse"}}]
            ])
        );
        let rules: Vec<&Value> = objs.iter().filter_map(|o| o.pointer("/add/rule")).collect();
        let in_chain = |c: &str| -> Vec<&Value> {
            rules.iter().copied().filter(|r| r["chain"] == c).collect()
        };
        // Arriving traffic and the node's own, to its underlay address, one lookup each.
        for chain in ["prerouting", "output"] {
            let r = in_chain(chain);
            assert_eq!(r.len(), 1, "{chain}");
            assert_eq!(r[0]["expr"][0]["match"]["right"], "198.18.0.2");
            assert_eq!(r[0]["expr"][2]["vmap"]["data"], "@ports");
        }
        // Ingress: round robin over the ready tasks (sorted), published 9091 -> target 80.
        assert_eq!(
            in_chain("port_1")[0]["expr"],
            json!([
                {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                {"dnat": {"addr": {"map": {"key": {"numgen": {"mode": "inc", "mod": 2, "offset": 0}},
                    "data": {"set": [[0, "10.255.0.5"], [1, "10.255.0.6"]]}}}, "port": 80}}
            ])
        );
        // Host: the local task's gateway address.
        assert_eq!(
            in_chain("port_0")[0]["expr"][1]["dnat"]["addr"]["map"]["data"],
            json!({"set": [[0, "172.18.0.2"]]})
        );
        // SNAT to the node's ingress address for what goes into the ingress overlay.
        assert_eq!(
            in_chain("postrouting")[0]["expr"],
            json!([
                {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "shb-4096"}},
                {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                {"snat": {"addr": "10.255.0.3"}}
            ])
        );
        assert_eq!(in_chain("refuse").len(), 2);
        // Chains exist before the map that names them.
        let pos = |pred: &dyn Fn(&Value) -> bool| objs.iter().position(pred).unwrap();
        assert!(
            pos(&|o| o.pointer("/add/chain/name") == Some(&json!("port_1")))
                < pos(&|o| o.pointer("/add/map").is_some())
        );
        // Same input, same document.
        assert_eq!(doc, ruleset(&self::rules()));
    }

    #[test]
    fn ruleset_without_ingress_address_keeps_host_ports_only() {
        let mut r = rules();
        r.ingress = None;
        let doc = ruleset(&r);
        let map = doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|o| o.pointer("/add/map"))
            .unwrap()
            .clone();
        assert_eq!(
            map["elem"],
            json!([[{"concat": ["tcp", 8080]}, {"goto": {"target": "port_0"}}]])
        );
        assert!(!doc.to_string().contains("snat"));
    }

    /// Every (protocol, port) the document dispatches on.
    fn programmed_ports(doc: &Value) -> Vec<(String, u64)> {
        let map = doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|o| o.pointer("/add/map"))
            .expect("the ports map");
        map["elem"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let c = &e[0]["concat"];
                (c[0].as_str().unwrap().to_string(), c[1].as_u64().unwrap())
            })
            .collect()
    }

    #[test]
    fn ruleset_should_never_contain_a_reserved_port_in_either_mode() {
        let mut r = rules();
        let reserved_ingress = |published: u16, protocol| MeshPort {
            protocol,
            published,
            target: 80,
            mode: PublishMode::Ingress,
            backends: vec![ip("10.255.0.5")],
            ..Default::default()
        };
        r.ports.push(reserved_ingress(4789, Protocol::Udp));
        r.ports.push(reserved_ingress(2379, Protocol::Tcp));
        r.ports.push(MeshPort {
            mode: PublishMode::Host,
            backends: vec![ip("172.18.0.2")],
            ..reserved_ingress(22, Protocol::Tcp)
        });
        r.ports.push(reserved_ingress(7801, Protocol::Tcp));
        r.reserved = node_reserved_ports(None, &[ReservedPort::tcp(7801)]);
        let doc = ruleset(&r);
        assert_eq!(
            programmed_ports(&doc),
            [
                ("tcp".to_string(), 8080),
                ("tcp".to_string(), 9091),
                ("udp".to_string(), 9092)
            ]
        );
        let text = doc.to_string();
        for gone in ["4789", "2379", "7801"] {
            assert!(!text.contains(gone), "{gone} in {text}");
        }
        let mut skipped: Vec<String> = r.skipped().map(|p| p.key().to_string()).collect();
        skipped.sort();
        assert_eq!(skipped, ["22/tcp", "2379/tcp", "4789/udp", "7801/tcp"]);
    }

    #[test]
    fn the_node_reserves_vxlan_and_its_own_ports_even_when_the_cluster_reserves_nothing() {
        let none = ClusterSettingsSpec::default();
        assert_eq!(
            node_reserved_ports(Some(&none), &[ReservedPort::tcp(7801)])
                .into_iter()
                .collect::<Vec<_>>(),
            [ReservedPort::udp(4789), ReservedPort::tcp(7801)]
        );
        // Unknown settings: the defaults.
        let defaults = node_reserved_ports(None, &[]);
        assert!(defaults.contains(&ReservedPort::tcp(22)));
        assert!(defaults.contains(&ReservedPort::tcp(2379)));
        let custom = ClusterSettingsSpec::with_reserved_ports([ReservedPort::tcp(23790)]);
        assert!(node_reserved_ports(Some(&custom), &[]).contains(&ReservedPort::tcp(23790)));
        assert!(!node_reserved_ports(Some(&custom), &[]).contains(&ReservedPort::tcp(22)));
    }

    #[test]
    fn ruleset_without_node_address_is_an_empty_table() {
        let doc = ruleset(&MeshRules::default());
        assert_eq!(doc["nftables"].as_array().unwrap().len(), 3);
        assert!(MeshRules::default().is_empty());
        assert_eq!(
            delete_ruleset()["nftables"][1],
            json!({"delete": {"table": {"family": "ip", "name": "shoal_mesh"}}})
        );
    }

    #[tokio::test]
    async fn recording_mesh_remembers_the_last_rules() {
        let m = RecordingMesh::default();
        m.program(&rules()).await.unwrap();
        assert_eq!(m.rules(), Some(rules()));
        assert_eq!(m.programs(), 1);
        m.remove().await.unwrap();
        assert_eq!(m.rules(), None);
    }
}
