//! The egress ruleset: `table ip shoal_gw` in the home netns, replaced atomically in one nft
//! transaction (add table, flush it, add chains and rules), through the `nftables` crate's
//! JSON API. The document is built as JSON and checked against the crate's schema types.
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
use nftables::schema::Nftables;
use serde_json::json;

use super::names::{GW_BRIDGE, NFT_TABLE};
use super::NetError;

/// The whole egress table for a gateway subnet, as one transaction.
pub fn egress_ruleset(subnet: Ipv4Network) -> Result<Nftables<'static>, NetError> {
    let table = json!({"family": "ip", "name": NFT_TABLE});
    let rule = |chain: &str, expr: serde_json::Value| json!({"add": {"rule": {"family": "ip", "table": NFT_TABLE, "chain": chain, "expr": expr}}});
    let oif_gw = |op: &str| json!({"match": {"op": op, "left": {"meta": {"key": "oifname"}}, "right": GW_BRIDGE}});
    let doc = json!({"nftables": [
        {"add": {"table": table}},
        {"flush": {"table": table}},
        {"add": {"chain": {"family": "ip", "table": NFT_TABLE, "name": "postrouting",
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}},
        {"add": {"chain": {"family": "ip", "table": NFT_TABLE, "name": "forward",
            "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}},
        rule("postrouting", json!([
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                "right": {"prefix": {"addr": subnet.network().to_string(), "len": subnet.prefix()}}}},
            oif_gw("!="),
            {"masquerade": null}
        ])),
        rule("forward", json!([
            {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
            {"accept": null}
        ])),
        rule("forward", json!([
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": GW_BRIDGE}},
            {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "shb-*"}},
            {"drop": null}
        ])),
        rule("forward", json!([
            oif_gw("=="),
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
            {"accept": null}
        ])),
        rule("forward", json!([oif_gw("=="), {"drop": null}])),
    ]});
    serde_json::from_value(doc)
        .map_err(|e| NetError::Nft(format!("building the egress ruleset: {e}")))
}

/// Deleting the table, tolerating its absence (add-then-delete in one transaction).
pub fn delete_ruleset() -> Nftables<'static> {
    let table = json!({"family": "ip", "name": NFT_TABLE});
    serde_json::from_value(
        json!({"nftables": [{"add": {"table": table}}, {"delete": {"table": table}}]}),
    )
    .expect("static document matches the schema")
}

/// Run `nft -j -f -` with `doc` (in the calling thread's namespace). We spawn `nft`
/// ourselves rather than through `nftables::helper`, which lets nft's stderr — the only place
/// nft says what it refused — go to our stderr instead of into the error.
pub fn apply(doc: &Nftables<'_>) -> Result<(), NetError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let payload =
        serde_json::to_vec(doc).map_err(|e| NetError::Nft(format!("serializing: {e}")))?;
    let mut child = Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            NetError::Nft(format!(
                "cannot run nft ({e}); install it: apt-get install nftables"
            ))
        })?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(&payload));
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::Nft(format!("waiting for nft: {e}")))?;
    if let Some(Err(e)) = written {
        if out.status.success() {
            return Err(NetError::Nft(format!("writing to nft: {e}")));
        }
    }
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Nft(format!(
            "nft -j -f - failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_ruleset_is_one_transaction_that_replaces_the_table() {
        let doc = egress_ruleset("172.18.0.0/16".parse().unwrap()).unwrap();
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
        assert_eq!(doc.objects.len(), 9);
    }

    #[test]
    fn delete_ruleset_tolerates_a_missing_table() {
        let text = serde_json::to_string(&delete_ruleset()).unwrap();
        assert!(
            text.starts_with(r#"{"nftables":[{"add":{"table""#),
            "{text}"
        );
    }
}
