//! The node's own input and forward policy: `table inet shoal_node` in the home netns. Owns
//! that table and nothing else; a pure function of a [`NodePolicy`] ([`node_policy_ruleset`]),
//! applied through [`super::nft`] by [`super::Kernel`] (see docs/architecture.md, "Overlay in
//! the kernel").
//!
//! ```text
//! table inet shoal_node {
//!   counter vxlan_dropped {}                     # VXLAN from a sender that is not a node
//!   counter tasks_refused {}                     # tasks reaching for the node itself
//!   set vxlan_peers { type ipv4_addr; elements = { 198.18.0.1, 198.18.0.2 } }
//!   chain input { type filter hook input priority filter; policy accept;
//!     iifname "shoal_gwbridge" jump from_tasks
//!     iifname "shb-*" jump from_tasks
//!     udp dport 4789 jump vxlan }
//!   chain vxlan {
//!     ip saddr @vxlan_peers accept
//!     counter name "vxlan_dropped" drop }
//!   chain from_tasks {
//!     ct state established,related accept
//!     counter name "tasks_refused"
//!     meta l4proto tcp reject with tcp reset
//!     reject with icmpx port-unreachable }
//!   chain vxlan_untracked_in { type filter hook prerouting priority raw; policy accept;
//!     udp dport 4789 notrack }
//!   chain vxlan_untracked_out { type filter hook output priority raw; policy accept;
//!     udp dport 4789 notrack }
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     oifname "shb-*" ct state established,related accept
//!     oifname "shb-*" ct status dnat accept
//!     oifname "shb-*" iifname != "shb-*" drop
//!     oifname "shb-4096" iifname != "shb-4096" drop }   # only once the node is on ingress
//! }
//! ```
//!
//! - **Input** (what is addressed to the node: its underlay address, its ingress address, the
//!   gateway bridge's, loopback, IPv6 link-local — the `input` hook sees every local address
//!   at once): from the gateway bridge and from every overlay bridge only replies pass. The
//!   routing mesh's DNAT (`shoal_mesh`, priority dstnat) runs before this hook and never
//!   targets a local address, so a task reaching a published port through its node is
//!   forwarded, not delivered here. The tasks' DNS server listens at 127.0.0.11 inside each
//!   task namespace and forwards from the agent's namespace, so it needs no exception. The
//!   table is `inet` so that IPv6 (link-local addresses exist on every bridge) is refused
//!   the same way.
//! - **VXLAN**: UDP 4789 is accepted only from the addresses in `vxlan_peers` (every Node's
//!   underlay address and this node's own); the rest is counted in `vxlan_dropped` and
//!   dropped silently.
//! - **VXLAN is not tracked**: the encapsulated packets, both ways, skip conntrack (`notrack`
//!   at raw priority): nothing here matches their state or NATs them (the `vxlan` chain
//!   decides by source address alone), and a conntrack lookup per overlay packet is pure
//!   cost on the data path (docs/benchmarks.md, "Data plane").
//! - **Forward into overlays**: bridged traffic between two ports of one bridge passes the
//!   IP forward hook only where `br_netfilter` is on (an agent in the host's namespace; in a
//!   node namespace of its own the agent turns it off, see `net::datapath`), with `iifname`
//!   and `oifname` both the bridge; either way it is never touched. A new connection routed into an
//!   overlay bridge passes only when the routing mesh DNATed it; from outside the overlays
//!   (underlay, gateway bridge) nothing else goes in, and into the ingress bridge — the only
//!   overlay bridge with a node address, so the only one the node has a route into —
//!   nothing else comes from another overlay.
//!
//! Every base chain in every table sees a packet: an `accept` here does not override a drop
//! in `shoal_gw` or `shoal_mesh`, and the other way round, so each table is read alone.
//!
//! **Updates** are one transaction that keeps the table, its counters and its set: add the
//! table, flush its rules, add the counters and the set (no-ops when they exist), flush the
//! set and add its elements, add the chains and their rules. A packet sees the old policy or
//! the new one, never none, and the counters keep counting across node joins and leaves.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{json, Value};

use super::names::{self, GW_BRIDGE, VXLAN_PORT};
use super::nft::{self, eq, meta, Table};

/// Our table in the home netns.
pub const TABLE: Table = Table::inet("shoal_node");
/// The set of addresses VXLAN is accepted from.
pub const VXLAN_PEERS_SET: &str = "vxlan_peers";
/// The counter of dropped VXLAN packets.
pub const VXLAN_DROPPED_COUNTER: &str = "vxlan_dropped";
/// The counter of refused packets from tasks to the node.
pub const TASKS_REFUSED_COUNTER: &str = "tasks_refused";

/// The chain that exempts arriving VXLAN packets from conntrack.
pub const UNTRACKED_IN: &str = "vxlan_untracked_in";
/// The chain that exempts VXLAN packets this node sends from conntrack.
pub const UNTRACKED_OUT: &str = "vxlan_untracked_out";
/// nftables' `raw` priority: before conntrack (-200) looks at the packet.
const RAW_PRIORITY: i32 = -300;

/// What the node's policy is a function of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePolicy {
    /// The underlay addresses VXLAN is accepted from.
    pub vxlan_peers: BTreeSet<Ipv4Addr>,
    /// The ingress overlay's bridge, once the node has its address on it.
    pub ingress_bridge: Option<String>,
}

impl NodePolicy {
    /// The policy of the node at `underlay`, given every Node's underlay address (unparsable
    /// ones are skipped) and the VNI of the ingress overlay when the node is on it.
    pub fn new<'a>(
        underlay: Ipv4Addr,
        node_addresses: impl IntoIterator<Item = &'a str>,
        ingress_vni: Option<u32>,
    ) -> Self {
        let mut vxlan_peers: BTreeSet<Ipv4Addr> = node_addresses
            .into_iter()
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        vxlan_peers.insert(underlay);
        NodePolicy {
            vxlan_peers,
            ingress_bridge: ingress_vni.map(names::bridge_name),
        }
    }
}

fn ct_in(key: &str, right: Value) -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": key}}, "right": right}})
}

fn established() -> Value {
    ct_in("state", json!(["established", "related"]))
}

fn ne(left: Value, right: impl Into<Value>) -> Value {
    json!({"match": {"op": "!=", "left": left, "right": right.into()}})
}

/// The one transaction that programs the node's policy (see the module docs).
pub fn node_policy_ruleset(policy: &NodePolicy) -> Value {
    let t = TABLE;
    let (family, table) = (t.family(), t.name());
    let counter =
        |name: &str| json!({"add": {"counter": {"family": family, "table": table, "name": name}}});
    let set = json!({"family": family, "table": table, "name": VXLAN_PEERS_SET});
    let mut objs = vec![
        json!({"add": {"table": t.obj()}}),
        json!({"flush": {"table": t.obj()}}),
        counter(VXLAN_DROPPED_COUNTER),
        counter(TASKS_REFUSED_COUNTER),
        json!({"add": {"set": {"family": family, "table": table, "name": VXLAN_PEERS_SET, "type": "ipv4_addr"}}}),
        json!({"flush": {"set": set.clone()}}),
    ];
    if !policy.vxlan_peers.is_empty() {
        let mut elems = set;
        elems["elem"] = policy
            .vxlan_peers
            .iter()
            .map(|a| Value::from(a.to_string()))
            .collect();
        objs.push(json!({"add": {"element": elems}}));
    }
    objs.push(t.base_chain("input", "filter", "input", 0));
    objs.push(t.chain("vxlan"));
    objs.push(t.chain("from_tasks"));
    objs.push(t.base_chain("forward", "filter", "forward", 0));
    objs.push(t.base_chain(UNTRACKED_IN, "filter", "prerouting", RAW_PRIORITY));
    objs.push(t.base_chain(UNTRACKED_OUT, "filter", "output", RAW_PRIORITY));
    let jump = |target: &str| json!({"jump": {"target": target}});
    for iif in [GW_BRIDGE, "shb-*"] {
        objs.push(t.rule(
            "input",
            json!([eq(meta("iifname"), iif), jump("from_tasks")]),
        ));
    }
    objs.push(t.rule(
        "input",
        json!([eq(nft::payload("udp", "dport"), VXLAN_PORT), jump("vxlan")]),
    ));
    objs.push(t.rule(
        "vxlan",
        json!([eq(nft::payload("ip", "saddr"), format!("@{VXLAN_PEERS_SET}")), {"accept": null}]),
    ));
    objs.push(t.rule(
        "vxlan",
        json!([{"counter": VXLAN_DROPPED_COUNTER}, {"drop": null}]),
    ));
    objs.push(t.rule("from_tasks", json!([established(), {"accept": null}])));
    objs.push(t.rule("from_tasks", json!([{ "counter": TASKS_REFUSED_COUNTER }])));
    objs.push(t.rule(
        "from_tasks",
        json!([eq(meta("l4proto"), "tcp"), {"reject": {"type": "tcp reset"}}]),
    ));
    objs.push(t.rule(
        "from_tasks",
        json!([{"reject": {"type": "icmpx", "expr": "port-unreachable"}}]),
    ));
    for chain in [UNTRACKED_IN, UNTRACKED_OUT] {
        objs.push(t.rule(
            chain,
            json!([eq(nft::payload("udp", "dport"), VXLAN_PORT), {"notrack": null}]),
        ));
    }
    let into_overlays = || eq(meta("oifname"), "shb-*");
    objs.push(t.rule(
        "forward",
        json!([into_overlays(), established(), {"accept": null}]),
    ));
    objs.push(t.rule(
        "forward",
        json!([into_overlays(), ct_in("status", json!("dnat")), {"accept": null}]),
    ));
    objs.push(t.rule(
        "forward",
        json!([into_overlays(), ne(meta("iifname"), "shb-*"), {"drop": null}]),
    ));
    if let Some(bridge) = &policy.ingress_bridge {
        objs.push(t.rule(
            "forward",
            json!([eq(meta("oifname"), bridge.as_str()), ne(meta("iifname"), bridge.as_str()), {"drop": null}]),
        ));
    }
    nft::document(objs)
}

/// The document that removes the table (whether or not it exists).
pub fn delete_node_policy() -> Value {
    TABLE.delete_document()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn policy() -> NodePolicy {
        NodePolicy::new(
            ip("198.18.0.1"),
            ["198.18.0.2", "198.18.0.3", "not an address", "198.18.0.2"],
            Some(4096),
        )
    }

    fn rules_of<'a>(doc: &'a Value, chain: &str) -> Vec<&'a Value> {
        doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.pointer("/add/rule"))
            .filter(|r| r["chain"] == chain)
            .map(|r| &r["expr"])
            .collect()
    }

    #[test]
    fn node_policy_should_hold_every_node_address_and_its_own() {
        let p = policy();
        assert_eq!(
            p.vxlan_peers
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>(),
            ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
        );
        assert_eq!(p.ingress_bridge.as_deref(), Some("shb-4096"));
        let lone = NodePolicy::new(ip("198.18.0.1"), [], None);
        assert_eq!(lone.vxlan_peers, BTreeSet::from([ip("198.18.0.1")]));
        assert_eq!(lone.ingress_bridge, None);
    }

    #[test]
    fn ruleset_should_update_in_place_keeping_counters_and_replacing_the_set() {
        let doc = node_policy_ruleset(&policy());
        let objs = doc["nftables"].as_array().unwrap();
        let table = json!({"family": "inet", "name": "shoal_node"});
        // Never deleted: the counters survive; the rules and the set's elements are
        // replaced in the same transaction.
        assert_eq!(objs[0], json!({"add": {"table": table}}));
        assert_eq!(objs[1], json!({"flush": {"table": table}}));
        assert!(!doc.to_string().contains("delete"), "{doc}");
        let set = json!({"family": "inet", "table": "shoal_node", "name": "vxlan_peers"});
        let flush = objs
            .iter()
            .position(|o| *o == json!({"flush": {"set": set}}))
            .expect("the set is flushed");
        let elems = objs
            .iter()
            .position(|o| o.pointer("/add/element").is_some())
            .expect("elements");
        assert!(flush < elems);
        assert_eq!(
            objs[elems]["add"]["element"]["elem"],
            json!(["198.18.0.1", "198.18.0.2", "198.18.0.3"])
        );
        for c in ["vxlan_dropped", "tasks_refused"] {
            assert!(
                objs.iter()
                    .any(|o| o.pointer("/add/counter/name") == Some(&json!(c))),
                "{c}"
            );
        }
        // Same input, same document (the kernel test `node_policy_netns` checks that nft
        // takes it: the schema types of the `nftables` crate know no named counter).
        assert_eq!(doc, node_policy_ruleset(&policy()));
    }

    #[test]
    fn ruleset_should_refuse_tasks_reaching_the_node_but_let_replies_in() {
        let doc = node_policy_ruleset(&policy());
        let input = rules_of(&doc, "input");
        assert_eq!(
            input,
            [
                &json!([{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "shoal_gwbridge"}}, {"jump": {"target": "from_tasks"}}]),
                &json!([{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "shb-*"}}, {"jump": {"target": "from_tasks"}}]),
                &json!([{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 4789}}, {"jump": {"target": "vxlan"}}]),
            ]
        );
        let from_tasks = rules_of(&doc, "from_tasks");
        assert_eq!(
            from_tasks[0],
            &json!([{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}])
        );
        assert_eq!(from_tasks[1], &json!([{"counter": "tasks_refused"}]));
        assert!(from_tasks[2].to_string().contains("tcp reset"));
        assert!(from_tasks[3].to_string().contains("icmpx"));
        assert_eq!(from_tasks.len(), 4);
    }

    #[test]
    fn ruleset_should_accept_vxlan_only_from_the_set_and_count_the_rest() {
        let doc = node_policy_ruleset(&policy());
        assert_eq!(
            rules_of(&doc, "vxlan"),
            [
                &json!([{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@vxlan_peers"}}, {"accept": null}]),
                &json!([{"counter": "vxlan_dropped"}, {"drop": null}]),
            ]
        );
    }

    #[test]
    fn ruleset_should_forward_into_overlays_only_bridged_replies_or_dnat() {
        let doc = node_policy_ruleset(&policy());
        let m = |op: &str, key: &str, right: &str| json!({"match": {"op": op, "left": {"meta": {"key": key}}, "right": right}});
        assert_eq!(
            rules_of(&doc, "forward"),
            [
                &json!([m("==", "oifname", "shb-*"), {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]),
                &json!([m("==", "oifname", "shb-*"), {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}, {"accept": null}]),
                &json!([m("==", "oifname", "shb-*"), m("!=", "iifname", "shb-*"), {"drop": null}]),
                &json!([m("==", "oifname", "shb-4096"), m("!=", "iifname", "shb-4096"), {"drop": null}]),
            ]
        );
        // Before the node is on ingress there is no ingress rule; bridged traffic (iif ==
        // oif, one bridge) matches no drop either way.
        let early = node_policy_ruleset(&NodePolicy::new(ip("198.18.0.1"), [], None));
        assert_eq!(rules_of(&early, "forward").len(), 3);
    }

    #[test]
    fn ruleset_should_exempt_vxlan_from_conntrack_both_ways_before_conntrack_runs() {
        let doc = node_policy_ruleset(&policy());
        let notrack = json!([{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 4789}}, {"notrack": null}]);
        for (chain, hook) in [(UNTRACKED_IN, "prerouting"), (UNTRACKED_OUT, "output")] {
            assert_eq!(rules_of(&doc, chain), [&notrack], "{chain}");
            let def = doc["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|o| o.pointer("/add/chain").filter(|c| c["name"] == chain))
                .expect("the chain is declared");
            assert_eq!(def["hook"], hook);
            assert!(
                def["prio"].as_i64().unwrap() < -200,
                "before conntrack: {def}"
            );
        }
    }

    #[test]
    fn an_empty_set_has_no_element_object_and_delete_removes_the_table() {
        let empty = NodePolicy::default();
        let doc = node_policy_ruleset(&empty);
        assert!(!doc.to_string().contains(r#""element""#), "{doc}");
        assert_eq!(
            delete_node_policy()["nftables"][1],
            json!({"delete": {"table": {"family": "inet", "name": "shoal_node"}}})
        );
    }
}
