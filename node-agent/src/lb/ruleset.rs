//! Owns the VIP table's document: [`ruleset`] builds the one nft transaction that replaces
//! `table ip shoal_lb` for a set of [`VipEntry`]s, and [`parse_programmed`] reads a listed
//! table back into entries. Pure: no namespace, no `nft` process (see [`super`] for the
//! layout and its design, and docs/architecture.md, "Node agent").

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::{json, Value};
use shoal_api_types::service::Protocol;

use super::entries::{normalize, parse_ip, LbError, VipEntry};
use crate::net::nft::{self, ct_new, goto, meta, payload, proto_name, Table};

/// The only table we own in a task namespace (family `ip`).
pub const TABLE: &str = "shoal_lb";
/// The base chain, hooked at output (traffic from the task to a VIP).
pub const NAT_CHAIN: &str = "nat";
/// Verdict map keyed by VIP . protocol . port.
pub const PORT_MAP: &str = "services";
/// Verdict map keyed by VIP . protocol (every port).
pub const VIP_MAP: &str = "vips";
/// Backend map keyed by VIP . protocol . index.
pub const BACKENDS_MAP: &str = "backends";
/// Backend map keyed by VIP . protocol . port . index.
pub const PORT_BACKENDS_MAP: &str = "port_backends";
/// The shared DNAT chain of whole-VIP entries.
pub const DNAT_CHAIN: &str = "dnat";
/// The shared DNAT chain of port entries.
pub const DNAT_PORT_CHAIN: &str = "dnat_port";
/// The chain that refuses connections to services without ready backends.
pub const REJECT_CHAIN: &str = "reject";
/// Prefix of the per-service chains (one round-robin counter each).
pub const SERVICE_CHAIN_PREFIX: &str = "svc_";
/// Priority of the nat chain (the usual dstnat priority).
pub const NAT_PRIORITY: i32 = -100;

/// Our table, for the document builders.
const NFT: Table = Table::ip(TABLE);

/// The key of an entry in the verdict maps, and of its backends (without the index).
fn key_parts(e: &VipEntry) -> Vec<Value> {
    let mut k = vec![json!(e.vip.to_string()), json!(proto_name(e.protocol))];
    if let Some(port) = e.port {
        k.push(json!(port));
    }
    k
}

/// The one nft JSON document (`nft -j -f -` input) that atomically replaces our table with
/// one for `entries` (normalised first).
pub fn ruleset(entries: &[VipEntry]) -> Value {
    let entries = normalize(entries.iter().cloned());
    // One counter chain per (VIP, backend count, port entry or not): tcp and udp of one VIP
    // share it.
    let mut chains: BTreeMap<(Ipv4Addr, usize, bool), String> = BTreeMap::new();
    let mut chain_rules: Vec<(String, usize, bool)> = Vec::new();
    let (mut port_verdicts, mut vip_verdicts, mut port_backends, mut backends) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for e in &entries {
        let key = key_parts(e);
        let target = if e.backends.is_empty() {
            REJECT_CHAIN.to_owned()
        } else {
            let n = e.backends.len();
            chains
                .entry((e.vip, n, e.port.is_some()))
                .or_insert_with(|| {
                    let name = format!("{SERVICE_CHAIN_PREFIX}{}", chain_rules.len());
                    chain_rules.push((name.clone(), n, e.port.is_some()));
                    name
                })
                .clone()
        };
        let verdict = json!([{"concat": key}, goto(&target)]);
        let (verdicts, bmap) = if e.port.is_some() {
            (&mut port_verdicts, &mut port_backends)
        } else {
            (&mut vip_verdicts, &mut backends)
        };
        verdicts.push(verdict);
        for (i, b) in e.backends.iter().enumerate() {
            let mut k = key.clone();
            k.push(json!(i));
            bmap.push(json!([{"concat": k}, b.to_string()]));
        }
    }

    let mut objs: Vec<Value> = Vec::with_capacity(16 + 2 * chain_rules.len());
    objs.extend(NFT.replace());
    objs.push(NFT.base_chain(NAT_CHAIN, "nat", "output", NAT_PRIORITY));
    for name in [DNAT_CHAIN, DNAT_PORT_CHAIN, REJECT_CHAIN] {
        objs.push(NFT.chain(name));
    }
    for (name, _, _) in &chain_rules {
        objs.push(NFT.chain(name));
    }
    objs.push(NFT.map(
        PORT_MAP,
        &["ipv4_addr", "inet_proto", "inet_service"],
        "verdict",
        port_verdicts,
    ));
    objs.push(NFT.map(
        VIP_MAP,
        &["ipv4_addr", "inet_proto"],
        "verdict",
        vip_verdicts,
    ));
    objs.push(NFT.map(
        PORT_BACKENDS_MAP,
        &["ipv4_addr", "inet_proto", "inet_service", "mark"],
        "ipv4_addr",
        port_backends,
    ));
    objs.push(NFT.map(
        BACKENDS_MAP,
        &["ipv4_addr", "inet_proto", "mark"],
        "ipv4_addr",
        backends,
    ));
    let daddr = || payload("ip", "daddr");
    objs.push(NFT.rule(NAT_CHAIN, json!([ct_new(), {"vmap": {"key": {"concat": [daddr(), meta("l4proto"), payload("th", "dport")]}, "data": format!("@{PORT_MAP}")}}])));
    objs.push(NFT.rule(NAT_CHAIN, json!([ct_new(), {"vmap": {"key": {"concat": [daddr(), meta("l4proto")]}, "data": format!("@{VIP_MAP}")}}])));
    objs.push(NFT.rule(DNAT_CHAIN, json!([{"dnat": {"addr": {"map": {"key": {"concat": [daddr(), meta("l4proto"), meta("mark")]}, "data": format!("@{BACKENDS_MAP}")}}}}])));
    objs.push(NFT.rule(
        DNAT_PORT_CHAIN,
        json!([{"dnat": {"addr": {"map": {"key": {"concat": [daddr(), meta("l4proto"), payload("th", "dport"), meta("mark")]}, "data": format!("@{PORT_BACKENDS_MAP}")}}}}]),
    ));
    objs.extend(nft::refuse_rules(&NFT, REJECT_CHAIN));
    for (name, n, port) in &chain_rules {
        let next = if *port { DNAT_PORT_CHAIN } else { DNAT_CHAIN };
        objs.push(NFT.rule(name, json!([{"mangle": {"key": meta("mark"), "value": {"numgen": {"mode": "inc", "mod": n}}}}, goto(next)])));
    }
    nft::document(objs)
}

/// The document that removes our table (whether or not it exists).
pub fn delete_ruleset() -> Value {
    NFT.delete_document()
}

type Key = (Ipv4Addr, Protocol, Option<u16>);

/// Read back the entries a `nft -j list table ip shoal_lb` document describes (normalised).
/// Anything that does not have the shape [`ruleset`] writes (a verdict pointing at a chain
/// we did not make, a backend index out of range of the chain's counter) is an error: the
/// caller then simply reprograms.
pub fn parse_programmed(json: &str) -> Result<Vec<VipEntry>, LbError> {
    let doc: Value =
        serde_json::from_str(json).map_err(|e| LbError::Parse(format!("not JSON: {e}")))?;
    let objects = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| LbError::Parse("no nftables array".into()))?;
    let mut verdicts: Vec<(Key, String)> = Vec::new();
    let mut backends: BTreeMap<Key, BTreeMap<u32, Ipv4Addr>> = BTreeMap::new();
    let mut modulus: BTreeMap<String, u64> = BTreeMap::new();
    for obj in objects {
        if let Some(map) = obj.get("map") {
            let name = map.get("name").and_then(Value::as_str).unwrap_or_default();
            let elems = map
                .get("elem")
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            match name {
                PORT_MAP | VIP_MAP => {
                    for el in elems {
                        verdicts.push(parse_verdict(el, name == PORT_MAP)?);
                    }
                }
                BACKENDS_MAP | PORT_BACKENDS_MAP => {
                    for el in elems {
                        let (key, index, ip) = parse_backend(el, name == PORT_BACKENDS_MAP)?;
                        backends.entry(key).or_default().insert(index, ip);
                    }
                }
                _ => {}
            }
        } else if let Some(rule) = obj.get("rule") {
            let chain = rule
                .get("chain")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if chain.starts_with(SERVICE_CHAIN_PREFIX) {
                let n = rule
                    .pointer("/expr/0/mangle/value/numgen/mod")
                    .and_then(Value::as_u64);
                modulus.insert(
                    chain.to_owned(),
                    n.ok_or_else(|| LbError::Parse(format!("service chain {chain}: {rule}")))?,
                );
            }
        }
    }
    let mut out = Vec::with_capacity(verdicts.len());
    for ((vip, protocol, port), target) in verdicts {
        let list: Vec<Ipv4Addr> = if target == REJECT_CHAIN {
            Vec::new()
        } else {
            let n = *modulus.get(&target).ok_or_else(|| {
                LbError::Parse(format!("{vip}: verdict goto {target}, which is not ours"))
            })?;
            let have = backends
                .get(&(vip, protocol, port))
                .cloned()
                .unwrap_or_default();
            (0..n as u32)
                .map(|i| {
                    have.get(&i)
                        .copied()
                        .ok_or_else(|| LbError::Parse(format!("{vip}: no backend {i} of {n}")))
                })
                .collect::<Result<_, _>>()?
        };
        out.push(VipEntry {
            vip,
            protocol,
            port,
            backends: list,
        });
    }
    Ok(normalize(out))
}

fn parse_key(parts: &[Value], with_port: bool, bad: &dyn Fn() -> LbError) -> Result<Key, LbError> {
    let vip = parts
        .first()
        .and_then(Value::as_str)
        .and_then(parse_ip)
        .ok_or_else(bad)?;
    let protocol = match parts.get(1) {
        Some(Value::String(p)) if p == "tcp" => Protocol::Tcp,
        Some(Value::String(p)) if p == "udp" => Protocol::Udp,
        Some(Value::Number(n)) if n.as_u64() == Some(6) => Protocol::Tcp,
        Some(Value::Number(n)) if n.as_u64() == Some(17) => Protocol::Udp,
        _ => return Err(bad()),
    };
    let port = if with_port {
        Some(
            parts
                .get(2)
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(bad)?,
        )
    } else {
        None
    };
    Ok((vip, protocol, port))
}

fn parse_verdict(el: &Value, with_port: bool) -> Result<(Key, String), LbError> {
    let bad = || LbError::Parse(format!("verdict map element {el}"));
    let pair = el.as_array().filter(|a| a.len() == 2).ok_or_else(bad)?;
    let parts = pair[0]
        .get("concat")
        .and_then(Value::as_array)
        .ok_or_else(bad)?;
    let target = pair[1]
        .pointer("/goto/target")
        .and_then(Value::as_str)
        .ok_or_else(bad)?;
    Ok((parse_key(parts, with_port, &bad)?, target.to_owned()))
}

fn parse_backend(el: &Value, with_port: bool) -> Result<(Key, u32, Ipv4Addr), LbError> {
    let bad = || LbError::Parse(format!("backend map element {el}"));
    let pair = el.as_array().filter(|a| a.len() == 2).ok_or_else(bad)?;
    let parts = pair[0]
        .get("concat")
        .and_then(Value::as_array)
        .ok_or_else(bad)?;
    let key = parse_key(parts, with_port, &bad)?;
    let index = parts
        .get(if with_port { 3 } else { 2 })
        .and_then(Value::as_u64)
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(bad)?;
    let ip = pair[1].as_str().and_then(parse_ip).ok_or_else(bad)?;
    Ok((key, index, ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::entries::tests::{endpoints, task};
    use crate::lb::entries::vip_entries;
    use shoal_api_types::endpoints::EndpointsSpec;
    use shoal_api_types::service::EndpointMode;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn ruleset_replaces_the_table_atomically_with_maps_and_service_chains() {
        let entries = vec![
            VipEntry {
                vip: ip("10.0.1.2"),
                protocol: Protocol::Tcp,
                port: None,
                backends: vec![ip("10.0.1.6"), ip("10.0.1.5")],
            },
            VipEntry {
                vip: ip("10.0.1.2"),
                protocol: Protocol::Udp,
                port: None,
                backends: vec![ip("10.0.1.5"), ip("10.0.1.6")],
            },
            VipEntry {
                vip: ip("10.0.1.3"),
                protocol: Protocol::Tcp,
                port: Some(8080),
                backends: vec![ip("10.0.1.7")],
            },
            VipEntry {
                vip: ip("10.0.1.4"),
                protocol: Protocol::Tcp,
                port: None,
                backends: vec![],
            },
        ];
        let doc = ruleset(&entries);
        let t = json!({"family": "ip", "name": "shoal_lb"});
        let ct_new =
            json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}});
        let chain =
            |n: &str| json!({"add": {"chain": {"family": "ip", "table": "shoal_lb", "name": n}}});
        let rule = |c: &str, expr: Value| json!({"add": {"rule": {"family": "ip", "table": "shoal_lb", "chain": c, "expr": expr}}});
        let map = |name: &str, key: Value, data: &str, elem: Value| json!({"add": {"map": {"family": "ip", "table": "shoal_lb", "name": name, "type": key, "map": data, "elem": elem}}});
        let daddr = json!({"payload": {"protocol": "ip", "field": "daddr"}});
        let l4 = json!({"meta": {"key": "l4proto"}});
        let dport = json!({"payload": {"protocol": "th", "field": "dport"}});
        let mark = json!({"meta": {"key": "mark"}});
        let expected = json!({"nftables": [
            {"add": {"table": t}},
            {"delete": {"table": t}},
            {"add": {"table": t}},
            {"add": {"chain": {"family": "ip", "table": "shoal_lb", "name": "nat", "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}}},
            chain("dnat"),
            chain("dnat_port"),
            chain("reject"),
            chain("svc_0"),
            chain("svc_1"),
            map("services", json!(["ipv4_addr", "inet_proto", "inet_service"]), "verdict",
                json!([[{"concat": ["10.0.1.3", "tcp", 8080]}, {"goto": {"target": "svc_1"}}]])),
            map("vips", json!(["ipv4_addr", "inet_proto"]), "verdict", json!([
                [{"concat": ["10.0.1.2", "tcp"]}, {"goto": {"target": "svc_0"}}],
                [{"concat": ["10.0.1.2", "udp"]}, {"goto": {"target": "svc_0"}}],
                [{"concat": ["10.0.1.4", "tcp"]}, {"goto": {"target": "reject"}}]])),
            map("port_backends", json!(["ipv4_addr", "inet_proto", "inet_service", "mark"]), "ipv4_addr",
                json!([[{"concat": ["10.0.1.3", "tcp", 8080, 0]}, "10.0.1.7"]])),
            map("backends", json!(["ipv4_addr", "inet_proto", "mark"]), "ipv4_addr", json!([
                [{"concat": ["10.0.1.2", "tcp", 0]}, "10.0.1.5"],
                [{"concat": ["10.0.1.2", "tcp", 1]}, "10.0.1.6"],
                [{"concat": ["10.0.1.2", "udp", 0]}, "10.0.1.5"],
                [{"concat": ["10.0.1.2", "udp", 1]}, "10.0.1.6"]])),
            rule("nat", json!([ct_new, {"vmap": {"key": {"concat": [daddr, l4, dport]}, "data": "@services"}}])),
            rule("nat", json!([ct_new, {"vmap": {"key": {"concat": [daddr, l4]}, "data": "@vips"}}])),
            rule("dnat", json!([{"dnat": {"addr": {"map": {"key": {"concat": [daddr, l4, mark]}, "data": "@backends"}}}}])),
            rule("dnat_port", json!([{"dnat": {"addr": {"map": {"key": {"concat": [daddr, l4, dport, mark]}, "data": "@port_backends"}}}}])),
            rule("reject", json!([{"match": {"op": "==", "left": l4, "right": "tcp"}}, {"reject": {"type": "tcp reset"}}])),
            rule("reject", json!([{"reject": {"type": "icmp", "expr": "port-unreachable"}}])),
            rule("svc_0", json!([{"mangle": {"key": mark, "value": {"numgen": {"mode": "inc", "mod": 2}}}}, {"goto": {"target": "dnat"}}])),
            rule("svc_1", json!([{"mangle": {"key": mark, "value": {"numgen": {"mode": "inc", "mod": 1}}}}, {"goto": {"target": "dnat_port"}}])),
        ]});
        assert_eq!(
            doc,
            expected,
            "got {}",
            serde_json::to_string_pretty(&doc).unwrap()
        );
    }

    #[test]
    fn ruleset_without_entries_still_replaces_the_table_with_empty_maps() {
        let doc = ruleset(&[]);
        let objs = doc["nftables"].as_array().unwrap();
        assert_eq!(
            objs.len(),
            17,
            "table add/delete/add, 4 chains, 4 maps, 6 rules"
        );
        assert!(objs.iter().all(|o| o.pointer("/add/map/elem").is_none()));
    }

    #[test]
    fn generated_document_reads_back_as_the_same_entries() {
        let entries = normalize(vec![
            VipEntry {
                vip: ip("10.0.1.2"),
                protocol: Protocol::Tcp,
                port: None,
                backends: vec![ip("10.0.1.5"), ip("10.0.1.6")],
            },
            VipEntry {
                vip: ip("10.0.1.2"),
                protocol: Protocol::Udp,
                port: Some(53),
                backends: vec![ip("10.0.1.5")],
            },
            VipEntry {
                vip: ip("10.0.1.4"),
                protocol: Protocol::Tcp,
                port: None,
                backends: vec![],
            },
        ]);
        // `nft -j list` prints maps and rules as plain objects, not commands: strip the verbs.
        let doc = ruleset(&entries);
        let listed: Vec<Value> = doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("add").cloned())
            .collect();
        let json = json!({"nftables": listed}).to_string();
        assert_eq!(parse_programmed(&json).unwrap(), entries);
    }

    #[test]
    fn parse_programmed_reads_nft_list_output() {
        // Verbatim `nft -j list table ip shoal_lb` (nft 1.0.6, kernel 6.18) after applying a
        // document of ours: a round-robin VIP, a port entry and a VIP without backends.
        let json = include_str!("../../tests/lb_support/nft-list-1.0.6.json");
        let e = |vip: &str, protocol, port, backends: &[&str]| VipEntry {
            vip: ip(vip),
            protocol,
            port,
            backends: backends.iter().map(|b| ip(b)).collect(),
        };
        assert_eq!(
            parse_programmed(json).unwrap(),
            vec![
                e("10.0.1.2", Protocol::Tcp, None, &["10.0.1.5", "10.0.1.6"]),
                e("10.0.1.3", Protocol::Udp, Some(53), &["10.0.1.7"]),
                e("10.0.1.4", Protocol::Tcp, None, &[]),
            ]
        );
        assert!(parse_programmed("{}").is_err());
        // A verdict into a chain we did not make is not ours to interpret.
        let foreign = json.replace("\"target\": \"svc_0\"", "\"target\": \"elsewhere\"");
        assert!(parse_programmed(&foreign).is_err());
    }

    #[test]
    fn ten_thousand_services_build_one_map_entry_per_key_and_one_chain_per_service() {
        let n = 10_000u32;
        let eps: Vec<EndpointsSpec> = (0..n)
            .map(|i| {
                let vip = Ipv4Addr::from(0x0a00_0000 + 2 * i + 2);
                let backend = |k: u32| {
                    task(
                        &format!("s{i}.{k}"),
                        &Ipv4Addr::from(0x0b00_0000 + 4 * i + k).to_string(),
                        true,
                    )
                };
                endpoints(
                    &format!("s{i}"),
                    Some(&vip.to_string()),
                    EndpointMode::Vip,
                    vec![backend(1), backend(2), backend(3)],
                )
            })
            .collect();
        let entries = vip_entries(&eps);
        assert_eq!(entries.len(), 2 * n as usize);
        let value = ruleset(&entries);
        let objs = value["nftables"].as_array().unwrap();
        let count = |pred: &dyn Fn(&Value) -> bool| objs.iter().filter(|o| pred(o)).count();
        assert_eq!(
            count(&|o| o
                .pointer("/add/chain")
                .is_some_and(|c| c["name"].as_str().unwrap().starts_with("svc_"))),
            n as usize
        );
        let vips = objs
            .iter()
            .find(|o| o.pointer("/add/map/name") == Some(&json!("vips")))
            .unwrap();
        assert_eq!(
            vips.pointer("/add/map/elem")
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            2 * n as usize
        );
        // The base chain stays at two rules whatever the number of services.
        assert_eq!(
            count(&|o| o.pointer("/add/rule/chain") == Some(&json!("nat"))),
            2
        );
        // One counter rule per service, and two dnat rules in all.
        assert_eq!(
            count(&|o| o
                .pointer("/add/rule/chain")
                .is_some_and(|c| c.as_str().unwrap().starts_with("svc_"))),
            n as usize
        );
        assert_eq!(count(&|o| o.pointer("/add/rule/expr/0/dnat").is_some()), 2);
        let backends = objs
            .iter()
            .find(|o| o.pointer("/add/map/name") == Some(&json!("backends")))
            .unwrap();
        assert_eq!(
            backends
                .pointer("/add/map/elem")
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            6 * n as usize
        );
        let text = value.to_string();
        assert!(text.len() < 16 << 20, "document is {} bytes", text.len());
        assert_eq!(parse_programmed(&json!({"nftables": objs.iter().filter_map(|o| o.get("add").cloned()).collect::<Vec<_>>()}).to_string()).unwrap(), entries);
    }
}
