//! The egress ruleset: `table ip shoal_gw` in the home netns, replaced atomically in one nft
//! transaction (add table, flush it, add chains and rules) through [`super::nft`]. Owns that
//! table and nothing else (see docs/architecture.md, "Node agent").
//!
//! ```text
//! table ip shoal_gw {
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr 172.18.0.0/16 oifname != "shoal_gwbridge" masquerade }
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     ct status dnat accept
//!     iifname "shoal_gwbridge" oifname "shb-*" drop
//!     oifname "shoal_gwbridge" ct state established,related accept
//!     oifname "shoal_gwbridge" drop }
//! }
//! ```
//!
//! `ct status dnat accept` lets through what the routing mesh (`crate::mesh`, the node's
//! `shoal_mesh` table) DNATed: host-mode ports into the gateway bridge, and a task reaching
//! a published port through its node's address (gateway bridge → ingress overlay). Only the
//! node namespace's own DNAT sets that status (a task's VIP DNAT happens in the task's
//! namespace, with its own conntrack), so no other path into an overlay opens.

use ipnetwork::Ipv4Network;
use serde_json::{json, Value};

use super::names::{GW_BRIDGE, NFT_TABLE};
use super::nft::{self, eq, meta, Table};

/// Our table in the home netns.
pub const TABLE: Table = Table::ip(NFT_TABLE);

/// The whole egress table for a gateway subnet, as one transaction.
pub fn egress_ruleset(subnet: Ipv4Network) -> Value {
    let oif_gw =
        |op: &str| json!({"match": {"op": op, "left": meta("oifname"), "right": GW_BRIDGE}});
    let saddr = json!({"prefix": {"addr": subnet.network().to_string(), "len": subnet.prefix()}});
    nft::document(vec![
        json!({"add": {"table": TABLE.obj()}}),
        json!({"flush": {"table": TABLE.obj()}}),
        TABLE.base_chain("postrouting", "nat", "postrouting", 100),
        TABLE.base_chain("forward", "filter", "forward", 0),
        TABLE.rule(
            "postrouting",
            json!([eq(nft::payload("ip", "saddr"), saddr), oif_gw("!="), {"masquerade": null}]),
        ),
        TABLE.rule(
            "forward",
            json!([
                {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                {"accept": null}
            ]),
        ),
        TABLE.rule(
            "forward",
            json!([eq(meta("iifname"), GW_BRIDGE), eq(meta("oifname"), "shb-*"), {"drop": null}]),
        ),
        TABLE.rule(
            "forward",
            json!([
                oif_gw("=="),
                {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
                {"accept": null}
            ]),
        ),
        TABLE.rule("forward", json!([oif_gw("=="), {"drop": null}])),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_ruleset_is_one_transaction_that_replaces_the_table() {
        let doc = egress_ruleset("172.18.0.0/16".parse().unwrap());
        let text = serde_json::to_string(&doc).unwrap();
        assert!(
            text.contains(r#""flush":{"table":{"family":"ip","name":"shoal_gw"}}"#),
            "{text}"
        );
        assert!(
            text.contains(r#""prefix":{"addr":"172.18.0.0","len":16}"#),
            "{text}"
        );
        assert!(text.contains("masquerade"), "{text}");
        assert!(text.contains(r#""right":"dnat""#), "{text}");
        // Valid `nft -j` input: the nftables crate's schema types read it.
        let parsed: nftables::schema::Nftables = serde_json::from_value(doc).unwrap();
        assert_eq!(parsed.objects.len(), 9);
    }
}
