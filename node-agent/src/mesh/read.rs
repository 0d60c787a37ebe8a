//! Reading the routing mesh's table back, for `shoal system check`: [`port_elements`] turns
//! an nft JSON document of `table ip shoal_mesh` into one line per element of its `ports`
//! map (`tcp/9091` → `dnat :80 to 10.255.0.5,10.255.0.6`, or `refuse`). It reads both what
//! [`super::ruleset`] writes (objects under `add`) and what `nft -j list table` prints (bare
//! objects), so "what the agent would write" and "what the kernel holds" compare line by
//! line. An element whose chain is missing or not of the shape we write reads as
//! `goto <chain> (not ours)`, which never matches a desired element.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{PORTS_MAP, PORT_CHAIN_PREFIX, REFUSE_CHAIN};

/// The objects of a document, `add` wrappers removed.
fn objects(doc: &Value) -> impl Iterator<Item = &Value> {
    doc.get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|o| o.get("add").unwrap_or(o))
}

/// `dnat :PORT to A,B` from a port chain's rule, if it has the shape [`super::ruleset`] writes.
fn dnat_of(rule: &Value) -> Option<String> {
    let exprs = rule.get("expr")?.as_array()?;
    let dnat = exprs.iter().find_map(|e| e.get("dnat"))?;
    let port = dnat.get("port")?.as_u64()?;
    let set = dnat.pointer("/addr/map/data/set")?.as_array()?;
    let mut backends: Vec<(u64, String)> = set
        .iter()
        .filter_map(|pair| {
            let pair = pair.as_array()?;
            Some((pair.first()?.as_u64()?, pair.get(1)?.as_str()?.to_string()))
        })
        .collect();
    backends.sort();
    let list: Vec<String> = backends.into_iter().map(|(_, ip)| ip).collect();
    Some(format!("dnat :{port} to {}", list.join(",")))
}

/// The `ports` map's elements of the mesh table in `doc`, keyed `proto/port`.
pub fn port_elements(doc: &Value) -> BTreeMap<String, String> {
    let mut chains: BTreeMap<String, String> = BTreeMap::new();
    let mut verdicts: Vec<(String, String)> = Vec::new();
    for obj in objects(doc) {
        if let Some(rule) = obj.get("rule") {
            let chain = rule
                .get("chain")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if chain.starts_with(PORT_CHAIN_PREFIX) {
                if let Some(d) = dnat_of(rule) {
                    chains.insert(chain.to_string(), d);
                }
            }
        } else if let Some(map) = obj.get("map") {
            if map.get("name").and_then(Value::as_str) != Some(PORTS_MAP) {
                continue;
            }
            for el in map
                .get("elem")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(pair) = el.as_array().filter(|p| p.len() == 2) else {
                    continue;
                };
                let key = pair[0]
                    .get("concat")
                    .and_then(Value::as_array)
                    .map(|parts| {
                        parts
                            .iter()
                            .map(|p| match p {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            })
                            .collect::<Vec<_>>()
                            .join("/")
                    })
                    .unwrap_or_else(|| pair[0].to_string());
                let target = pair[1]
                    .pointer("/goto/target")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                verdicts.push((key, target));
            }
        }
    }
    verdicts
        .into_iter()
        .map(|(key, target)| {
            let what = if target == REFUSE_CHAIN {
                "refuse".to_string()
            } else {
                chains
                    .get(&target)
                    .cloned()
                    .unwrap_or_else(|| format!("goto {target} (not ours)"))
            };
            (key, what)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use serde_json::json;
    use shoal_api_types::service::{Protocol, PublishMode};

    use super::*;
    use crate::mesh::{ruleset, MeshPort, MeshRules};

    fn rules() -> MeshRules {
        MeshRules {
            node_address: Some(Ipv4Addr::new(198, 18, 0, 2)),
            ingress: Some(("shb-4096".into(), Ipv4Addr::new(10, 255, 0, 3))),
            ports: vec![
                MeshPort {
                    protocol: Protocol::Tcp,
                    published: 9091,
                    target: 80,
                    mode: PublishMode::Ingress,
                    backends: vec![Ipv4Addr::new(10, 255, 0, 6), Ipv4Addr::new(10, 255, 0, 5)],
                    ..Default::default()
                },
                MeshPort {
                    protocol: Protocol::Udp,
                    published: 53,
                    target: 53,
                    mode: PublishMode::Ingress,
                    backends: vec![],
                    ..Default::default()
                },
            ],
            reserved: Default::default(),
        }
    }

    #[test]
    fn port_elements_should_read_the_generated_document() {
        let got = port_elements(&ruleset(&rules()));
        assert_eq!(
            got,
            BTreeMap::from([
                (
                    "tcp/9091".to_string(),
                    "dnat :80 to 10.255.0.5,10.255.0.6".to_string()
                ),
                ("udp/53".to_string(), "refuse".to_string()),
            ])
        );
    }

    #[test]
    fn port_elements_should_read_nft_list_output_as_the_document_it_came_from() {
        // What `nft -j list table ip shoal_mesh` printed for the same table (nft 1.0.6),
        // with one element added by hand.
        let listed = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "shoal_mesh", "handle": 1}},
            {"map": {"family": "ip", "name": "ports", "table": "shoal_mesh",
                     "type": ["inet_proto", "inet_service"], "handle": 3, "map": "verdict",
                     "elem": [[{"concat": ["udp", 53]}, {"goto": {"target": "refuse"}}],
                              [{"concat": ["tcp", 9091]}, {"goto": {"target": "port_0"}}],
                              [{"concat": ["tcp", 9999]}, {"goto": {"target": "refuse"}}]]}},
            {"chain": {"family": "ip", "table": "shoal_mesh", "name": "port_0", "handle": 1}},
            {"rule": {"family": "ip", "table": "shoal_mesh", "chain": "port_0", "handle": 5,
                      "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                               {"dnat": {"addr": {"map": {"key": {"numgen": {"mode": "inc", "mod": 2, "offset": 0}},
                                                          "data": {"set": [[0, "10.255.0.5"], [1, "10.255.0.6"]]}}},
                                         "port": 80}}]}}
        ]});
        let mut want = port_elements(&ruleset(&rules()));
        want.insert("tcp/9999".into(), "refuse".into());
        assert_eq!(port_elements(&listed), want);
    }

    #[test]
    fn an_element_pointing_at_a_chain_we_did_not_write_should_say_so() {
        let doc = json!({"nftables": [{"map": {"name": "ports",
            "elem": [[{"concat": ["tcp", 1]}, {"goto": {"target": "port_7"}}]]}}]});
        assert_eq!(port_elements(&doc)["tcp/1"], "goto port_7 (not ours)");
    }
}
