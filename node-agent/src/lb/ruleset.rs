//! Owns the VIP table's shape: [`ruleset`] writes the one nft script (`nft -f -` input) that
//! replaces `table ip shoal_lb` for a set of [`VipEntry`]s (the table in nft's words; the
//! agent sends the same objects as a netlink batch, [`super::netlink::table_messages`]),
//! [`Layout`] is that table as elements (what [`super::plan`] diffs), [`Listed`] is a table
//! as read back and [`Listed::entries`] judges it; [`parse_programmed`] reads nft's JSON
//! listing (`nft -j list`) into one. Pure: no namespace, no `nft` process (see [`super`]
//! for the layout and its design, and docs/architecture.md, "Node agent").
//!
//! Invariants: every name in the table is a pure function of the entries — a counter chain
//! is named after its VIP, its backend count and whether it serves port entries
//! ([`service_chain`]), never after its position — so the same service keeps the same chain
//! across writes and a change can name exactly what it touches. [`parse_programmed`]
//! accepts only tables of that shape (a verdict into a chain of another name, a backend
//! element no verdict uses, a counter chain no verdict uses are errors), so "reads back as
//! the desired entries" means "is exactly the table [`ruleset`] writes for them", up to
//! the counters' positions.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde_json::Value;
use shoal_api_types::service::Protocol;

use super::entries::{normalize, parse_ip, LbError, VipEntry};
use crate::net::nft::proto_name;

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
/// The shared DNAT chain of whole-VIP entries (`dnat` is a keyword of nft's syntax, so the
/// chain is named after what it does).
pub const DNAT_CHAIN: &str = "pick_backend";
/// The shared DNAT chain of port entries.
pub const DNAT_PORT_CHAIN: &str = "pick_port_backend";
/// The chain that refuses connections to services without ready backends.
pub const REJECT_CHAIN: &str = "refuse";
/// Prefix of the per-service chains (one round-robin counter each).
pub const SERVICE_CHAIN_PREFIX: &str = "svc_";
/// Priority of the nat chain (the usual dstnat priority).
pub const NAT_PRIORITY: i32 = -100;

/// An entry's key in the verdict maps (and, with an index, in the backend maps).
pub(super) type Key = (Ipv4Addr, Protocol, Option<u16>);

/// The counter chain of the entries of `vip` with `backends` backends: `svc_<vip in
/// hex>_<n>` for whole-VIP entries, `svc_<vip in hex>_p<n>` for port entries. TCP and UDP of
/// one VIP (and the ports of one VIP) with the same count share it, and so its counter.
pub fn service_chain(vip: Ipv4Addr, backends: usize, port: bool) -> String {
    let p = if port { "p" } else { "" };
    format!("{SERVICE_CHAIN_PREFIX}{:08x}_{p}{backends}", u32::from(vip))
}

/// Where an entry's verdict goes: its counter chain, or [`REJECT_CHAIN`] without backends.
pub(super) fn target(e: &VipEntry) -> String {
    if e.backends.is_empty() {
        REJECT_CHAIN.to_owned()
    } else {
        service_chain(e.vip, e.backends.len(), e.port.is_some())
    }
}

/// `vip . proto[ . port]`.
pub(super) fn write_key(out: &mut String, k: &Key) {
    let _ = write!(out, "{} . {}", k.0, proto_name(k.1));
    if let Some(p) = k.2 {
        let _ = write!(out, " . {p}");
    }
}

/// One verdict element: `key : goto target`.
pub(super) fn write_verdict(out: &mut String, k: &Key, target: &str) {
    write_key(out, k);
    let _ = write!(out, " : goto {target}");
}

/// One backend element: `key . index : address`.
pub(super) fn write_backend(out: &mut String, k: &Key, index: usize, ip: Ipv4Addr) {
    write_key(out, k);
    let _ = write!(out, " . {index} : {ip}");
}

/// The verdict map of a key.
pub(super) fn verdict_map(k: &Key) -> &'static str {
    if k.2.is_some() {
        PORT_MAP
    } else {
        VIP_MAP
    }
}

/// The backend map of a key.
pub(super) fn backend_map(k: &Key) -> &'static str {
    if k.2.is_some() {
        PORT_BACKENDS_MAP
    } else {
        BACKENDS_MAP
    }
}

/// The one rule of a counter chain: pick an index, go to the shared DNAT chain.
pub(super) fn service_rule(backends: usize, port: bool) -> String {
    let next = if port { DNAT_PORT_CHAIN } else { DNAT_CHAIN };
    format!("meta mark set numgen inc mod {backends} goto {next}")
}

/// The table for a set of entries as the elements a change adds or deletes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Counter chains: name → (backend count, serves port entries).
    pub chains: BTreeMap<String, (usize, bool)>,
    /// Verdict elements: key → target chain.
    pub verdicts: BTreeMap<Key, String>,
    /// Backend elements: (key, index) → address.
    pub backends: BTreeMap<(Key, usize), Ipv4Addr>,
}

impl Layout {
    /// The layout of `entries` (normalised entries: one per key).
    pub fn of(entries: &[VipEntry]) -> Self {
        let mut l = Layout::default();
        for e in entries {
            let key = (e.vip, e.protocol, e.port);
            if !e.backends.is_empty() {
                l.chains.insert(
                    service_chain(e.vip, e.backends.len(), e.port.is_some()),
                    (e.backends.len(), e.port.is_some()),
                );
            }
            l.verdicts.insert(key, target(e));
            for (i, b) in e.backends.iter().enumerate() {
                l.backends.insert((key, i), *b);
            }
        }
        l
    }
}

/// One map declaration with its elements, written by `elems` as a comma-separated list.
fn write_map(out: &mut String, name: &str, typ: &str, elems: impl FnOnce(&mut String) -> bool) {
    let _ = write!(out, "\tmap {name} {{ type {typ};");
    let mut body = String::new();
    if elems(&mut body) {
        let _ = write!(out, " elements = {{ {body} }}");
    }
    out.push_str(" }\n");
}

/// The one nft script (`nft -f -` input, one transaction) that atomically replaces our
/// table with one for `entries` (normalised first): the table is added (so that deleting it
/// succeeds), deleted and written again, in one batch, so a packet sees the old table or the
/// new one. Written straight into a string: building a JSON value tree for 10,000 services
/// cost a third of the sync.
pub fn ruleset(entries: &[VipEntry]) -> String {
    let entries = normalize(entries.iter().cloned());
    let mut out = String::with_capacity(512 + entries.len() * 160);
    let _ = writeln!(
        out,
        "table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable ip {TABLE} {{"
    );
    // Declared before what refers to them: backend maps, the chains that read them, the
    // counter chains, the verdict maps that jump to those, and the base chain last.
    for port in [false, true] {
        let (name, typ) = if port {
            (
                PORT_BACKENDS_MAP,
                "ipv4_addr . inet_proto . inet_service . mark : ipv4_addr",
            )
        } else {
            (BACKENDS_MAP, "ipv4_addr . inet_proto . mark : ipv4_addr")
        };
        write_map(&mut out, name, typ, |b| {
            let mut any = false;
            for e in entries.iter().filter(|e| e.port.is_some() == port) {
                let k = (e.vip, e.protocol, e.port);
                for (i, ip) in e.backends.iter().enumerate() {
                    if any {
                        b.push_str(", ");
                    }
                    any = true;
                    write_backend(b, &k, i, *ip);
                }
            }
            any
        });
    }
    let _ = writeln!(
        out,
        "\tchain {DNAT_CHAIN} {{ dnat to ip daddr . meta l4proto . meta mark map @{BACKENDS_MAP}; }}"
    );
    let _ = writeln!(
        out,
        "\tchain {DNAT_PORT_CHAIN} {{ dnat to ip daddr . meta l4proto . th dport . meta mark map @{PORT_BACKENDS_MAP}; }}"
    );
    let _ = writeln!(
        out,
        "\tchain {REJECT_CHAIN} {{ meta l4proto tcp reject with tcp reset; reject with icmp type port-unreachable; }}"
    );
    // Entries of one VIP are adjacent (sorted); its chains are deduplicated among them.
    let mut seen: Vec<(Ipv4Addr, usize, bool)> = Vec::new();
    for e in entries.iter().filter(|e| !e.backends.is_empty()) {
        let chain = (e.vip, e.backends.len(), e.port.is_some());
        if seen.first().is_some_and(|c| c.0 != e.vip) {
            seen.clear();
        }
        if seen.contains(&chain) {
            continue;
        }
        seen.push(chain);
        let _ = writeln!(
            out,
            "\tchain {} {{ {}; }}",
            service_chain(chain.0, chain.1, chain.2),
            service_rule(chain.1, chain.2)
        );
    }
    for port in [false, true] {
        let (name, typ) = if port {
            (PORT_MAP, "ipv4_addr . inet_proto . inet_service : verdict")
        } else {
            (VIP_MAP, "ipv4_addr . inet_proto : verdict")
        };
        write_map(&mut out, name, typ, |b| {
            let mut any = false;
            for e in entries.iter().filter(|e| e.port.is_some() == port) {
                if any {
                    b.push_str(", ");
                }
                any = true;
                write_verdict(b, &(e.vip, e.protocol, e.port), &target(e));
            }
            any
        });
    }
    // `ct state new` is redundant in a nat chain, but a `ct` expression is what makes the
    // kernel enable conntrack in the namespace.
    let _ = writeln!(
        out,
        "\tchain {NAT_CHAIN} {{ type nat hook output priority {NAT_PRIORITY}; policy accept; \
         ct state new ip daddr . meta l4proto . th dport vmap @{PORT_MAP}; \
         ct state new ip daddr . meta l4proto vmap @{VIP_MAP}; }}"
    );
    out.push_str("}\n");
    out
}

/// A table as read back (from nft's JSON listing or from netlink), before its shape is
/// judged by [`Listed::entries`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Listed {
    /// Verdict map elements: key → the chain they go to (`None`: a verdict other than
    /// `goto`).
    pub(super) verdicts: Vec<(Key, Option<String>)>,
    /// Backend map elements: key, index → address.
    pub(super) backends: Vec<(Key, u32, Ipv4Addr)>,
    /// Counter chains (named [`SERVICE_CHAIN_PREFIX`]…): name → the modulus of each of
    /// their rules (`None`: a rule that is not `meta mark set numgen inc mod n goto …`).
    pub(super) chains: BTreeMap<String, Vec<Option<u64>>>,
}

/// Read back the entries a `nft -j list table ip shoal_lb` document describes (normalised),
/// judged by `Listed::entries` (as the netlink read-back is).
pub fn parse_programmed(json: &str) -> Result<Vec<VipEntry>, LbError> {
    let doc: Value =
        serde_json::from_str(json).map_err(|e| LbError::Parse(format!("not JSON: {e}")))?;
    let objects = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| LbError::Parse("no nftables array".into()))?;
    let mut listed = Listed::default();
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
                        let (key, target) = parse_verdict(el, name == PORT_MAP)?;
                        listed.verdicts.push((key, Some(target)));
                    }
                }
                BACKENDS_MAP | PORT_BACKENDS_MAP => {
                    for el in elems {
                        listed
                            .backends
                            .push(parse_backend(el, name == PORT_BACKENDS_MAP)?);
                    }
                }
                _ => {}
            }
        } else if let Some(chain) = obj.get("chain") {
            let name = chain
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if name.starts_with(SERVICE_CHAIN_PREFIX) {
                listed.chains.entry(name.to_owned()).or_default();
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
                listed.chains.entry(chain.to_owned()).or_default().push(n);
            }
        }
    }
    listed.entries()
}

impl Listed {
    /// The entries this table holds (normalised). Anything that does not have the shape
    /// [`ruleset`] writes is an error (the caller then rewrites the table): a verdict into
    /// a chain other than the entry's [`service_chain`], a counter chain without exactly one
    /// rule or that no verdict uses, a backend element missing or beyond its verdict's
    /// count, or one of a key without a verdict.
    pub(super) fn entries(self) -> Result<Vec<VipEntry>, LbError> {
        let Listed {
            verdicts,
            backends: elems,
            chains: rules,
        } = self;
        let mut modulus: BTreeMap<String, u64> = BTreeMap::new();
        let mut chains: BTreeMap<String, bool> = BTreeMap::new();
        for (chain, rules) in rules {
            match rules[..] {
                [] => {}
                [Some(n)] => {
                    modulus.insert(chain.clone(), n);
                }
                [None] => {
                    return Err(LbError::Parse(format!(
                        "service chain {chain}: a rule that is not ours"
                    )))
                }
                _ => {
                    return Err(LbError::Parse(format!(
                        "service chain {chain} has more than one rule"
                    )))
                }
            }
            chains.insert(chain, false);
        }
        let mut backends: BTreeMap<Key, BTreeMap<u32, Ipv4Addr>> = BTreeMap::new();
        for (key, index, ip) in elems {
            backends.entry(key).or_default().insert(index, ip);
        }
        let verdicts = verdicts
            .into_iter()
            .map(|(k, t)| {
                t.map(|t| (k, t))
                    .ok_or_else(|| LbError::Parse(format!("{}: a verdict that is not goto", k.0)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(verdicts.len());
        for ((vip, protocol, port), target) in verdicts {
            let list: Vec<Ipv4Addr> = if target == REJECT_CHAIN {
                if backends.remove(&(vip, protocol, port)).is_some() {
                    return Err(LbError::Parse(format!(
                        "{vip}: backend elements of an entry that refuses"
                    )));
                }
                Vec::new()
            } else {
                let n = *modulus.get(&target).ok_or_else(|| {
                    LbError::Parse(format!("{vip}: verdict goto {target}, which is not ours"))
                })?;
                if target != service_chain(vip, n as usize, port.is_some()) {
                    return Err(LbError::Parse(format!(
                        "{vip}: verdict goto {target}, not the chain of {n} backends"
                    )));
                }
                chains.insert(target.clone(), true);
                let have = backends.remove(&(vip, protocol, port)).unwrap_or_default();
                if let Some(i) = have.keys().find(|i| u64::from(**i) >= n) {
                    return Err(LbError::Parse(format!(
                        "{vip}: backend element {i} beyond the chain's {n}"
                    )));
                }
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
        if let Some(((vip, protocol, port), _)) = backends.iter().next() {
            return Err(LbError::Parse(format!(
                "backend elements of {vip} {} {port:?}, which has no verdict",
                proto_name(*protocol)
            )));
        }
        if let Some((chain, _)) = chains.iter().find(|(_, used)| !**used) {
            return Err(LbError::Parse(format!(
                "service chain {chain}, which no verdict uses"
            )));
        }
        Ok(normalize(out))
    }
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
pub(super) mod tests {
    use super::*;
    use crate::lb::entries::tests::{endpoints, task};
    use crate::lb::entries::vip_entries;
    use shoal_api_types::endpoints::EndpointsSpec;
    use shoal_api_types::service::EndpointMode;

    pub(crate) fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// A VIP entry from strings.
    pub(crate) fn e(
        vip: &str,
        protocol: Protocol,
        port: Option<u16>,
        backends: &[&str],
    ) -> VipEntry {
        VipEntry {
            vip: ip(vip),
            protocol,
            port,
            backends: backends.iter().map(|b| ip(b)).collect(),
        }
    }

    #[test]
    fn ruleset_replaces_the_table_atomically_with_maps_and_service_chains() {
        let entries = vec![
            e("10.0.1.2", Protocol::Tcp, None, &["10.0.1.6", "10.0.1.5"]),
            e("10.0.1.2", Protocol::Tcp, Some(53), &["10.0.1.5"]),
            e("10.0.1.2", Protocol::Udp, None, &["10.0.1.5", "10.0.1.6"]),
            e("10.0.1.3", Protocol::Tcp, Some(8080), &["10.0.1.7"]),
            e("10.0.1.4", Protocol::Tcp, None, &[]),
        ];
        let expected = "\
table ip shoal_lb {}
delete table ip shoal_lb
table ip shoal_lb {
\tmap backends { type ipv4_addr . inet_proto . mark : ipv4_addr; elements = { 10.0.1.2 . tcp . 0 : 10.0.1.5, 10.0.1.2 . tcp . 1 : 10.0.1.6, 10.0.1.2 . udp . 0 : 10.0.1.5, 10.0.1.2 . udp . 1 : 10.0.1.6 } }
\tmap port_backends { type ipv4_addr . inet_proto . inet_service . mark : ipv4_addr; elements = { 10.0.1.2 . tcp . 53 . 0 : 10.0.1.5, 10.0.1.3 . tcp . 8080 . 0 : 10.0.1.7 } }
\tchain pick_backend { dnat to ip daddr . meta l4proto . meta mark map @backends; }
\tchain pick_port_backend { dnat to ip daddr . meta l4proto . th dport . meta mark map @port_backends; }
\tchain refuse { meta l4proto tcp reject with tcp reset; reject with icmp type port-unreachable; }
\tchain svc_0a000102_2 { meta mark set numgen inc mod 2 goto pick_backend; }
\tchain svc_0a000102_p1 { meta mark set numgen inc mod 1 goto pick_port_backend; }
\tchain svc_0a000103_p1 { meta mark set numgen inc mod 1 goto pick_port_backend; }
\tmap vips { type ipv4_addr . inet_proto : verdict; elements = { 10.0.1.2 . tcp : goto svc_0a000102_2, 10.0.1.2 . udp : goto svc_0a000102_2, 10.0.1.4 . tcp : goto refuse } }
\tmap services { type ipv4_addr . inet_proto . inet_service : verdict; elements = { 10.0.1.2 . tcp . 53 : goto svc_0a000102_p1, 10.0.1.3 . tcp . 8080 : goto svc_0a000103_p1 } }
\tchain nat { type nat hook output priority -100; policy accept; ct state new ip daddr . meta l4proto . th dport vmap @services; ct state new ip daddr . meta l4proto vmap @vips; }
}
";
        assert_eq!(ruleset(&entries), expected);
    }

    #[test]
    fn ruleset_without_entries_still_replaces_the_table_with_empty_maps() {
        let text = ruleset(&[]);
        assert!(text.starts_with("table ip shoal_lb {}\ndelete table ip shoal_lb\n"));
        assert!(!text.contains("elements"), "{text}");
        assert!(!text.contains("svc_"), "{text}");
        assert_eq!(text.matches("\tmap ").count(), 4);
        assert_eq!(text.matches("\tchain ").count(), 4);
    }

    #[test]
    fn layout_names_chains_after_the_service_not_its_position() {
        let one = [e("10.0.1.9", Protocol::Tcp, None, &["10.0.1.5"])];
        let two = [
            e("10.0.1.2", Protocol::Tcp, None, &["10.0.1.6"]),
            one[0].clone(),
        ];
        let chain = service_chain(ip("10.0.1.9"), 1, false);
        assert_eq!(chain, "svc_0a000109_1");
        assert_eq!(Layout::of(&one).verdicts.values().next(), Some(&chain));
        assert_eq!(Layout::of(&two).verdicts.values().last(), Some(&chain));
    }

    /// Verbatim `nft -j list table ip shoal_lb` (nft 1.0.6, kernel 6.18) after applying
    /// [`ruleset`] of [`fixture_entries`].
    const LISTED: &str = include_str!("../../tests/lb_support/nft-list-1.0.6.json");

    fn fixture_entries() -> Vec<VipEntry> {
        vec![
            e("10.0.1.2", Protocol::Tcp, None, &["10.0.1.5", "10.0.1.6"]),
            e("10.0.1.3", Protocol::Udp, Some(53), &["10.0.1.7"]),
            e("10.0.1.4", Protocol::Tcp, None, &[]),
        ]
    }

    #[test]
    fn parse_programmed_reads_nft_list_output() {
        // The listing was made by applying this script (`nft -f`), which is ours.
        assert_eq!(
            ruleset(&fixture_entries()),
            include_str!("../../tests/lb_support/ruleset-1.0.6.nft")
        );
        assert_eq!(parse_programmed(LISTED).unwrap(), fixture_entries());
        assert!(parse_programmed("{}").is_err());
    }

    /// `LISTED` with its objects edited by `f`.
    fn listed_with(f: impl Fn(&mut Vec<Value>)) -> String {
        let mut doc: Value = serde_json::from_str(LISTED).unwrap();
        f(doc["nftables"].as_array_mut().unwrap());
        doc.to_string()
    }

    fn map_elems<'a>(objs: &'a mut [Value], name: &str) -> &'a mut Vec<Value> {
        objs.iter_mut()
            .find(|o| o.pointer("/map/name") == Some(&Value::from(name)))
            .and_then(|o| o.pointer_mut("/map/elem"))
            .and_then(Value::as_array_mut)
            .unwrap()
    }

    #[test]
    fn parse_programmed_rejects_what_ruleset_does_not_write() {
        // A verdict into a chain we did not make is not ours to interpret.
        let foreign = LISTED.replace(
            "\"target\": \"svc_0a000102_2\"",
            "\"target\": \"elsewhere\"",
        );
        assert_ne!(foreign, LISTED);
        assert!(parse_programmed(&foreign).is_err());
        // A stale backend element beyond the counter (a service that shrank).
        let stale = listed_with(|objs| {
            map_elems(objs, BACKENDS_MAP).push(serde_json::json!(
                [{"concat": ["10.0.1.2", "tcp", 2]}, "10.0.1.99"]
            ))
        });
        let err = parse_programmed(&stale).unwrap_err().to_string();
        assert!(err.contains("beyond"), "{err}");
        // A backend element of a key without a verdict (a service that left).
        let orphan = listed_with(|objs| {
            map_elems(objs, BACKENDS_MAP).push(serde_json::json!(
                [{"concat": ["10.0.9.9", "tcp", 0]}, "10.0.1.99"]
            ))
        });
        let err = parse_programmed(&orphan).unwrap_err().to_string();
        assert!(err.contains("no verdict"), "{err}");
        // Backends of a key that refuses.
        let refusing = listed_with(|objs| {
            map_elems(objs, BACKENDS_MAP).push(serde_json::json!(
                [{"concat": ["10.0.1.4", "tcp", 0]}, "10.0.1.99"]
            ))
        });
        assert!(parse_programmed(&refusing).is_err());
        // A counter chain nothing jumps to.
        let unused = listed_with(|objs| {
            objs.push(serde_json::json!({"chain": {"family": "ip", "table": "shoal_lb", "name": "svc_0a000109_1"}}))
        });
        let err = parse_programmed(&unused).unwrap_err().to_string();
        assert!(err.contains("no verdict uses"), "{err}");
        // A verdict whose chain's name does not match its count.
        let renamed = LISTED.replace("svc_0a000102_2", "svc_0a000102_3");
        let err = parse_programmed(&renamed).unwrap_err().to_string();
        assert!(err.contains("not the chain"), "{err}");
    }

    #[test]
    fn ten_thousand_services_build_one_element_per_key_and_one_chain_per_service() {
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
        let text = ruleset(&entries);
        let line = |prefix: &str| text.lines().find(|l| l.starts_with(prefix)).unwrap();
        // One counter chain per service (TCP and UDP share it), each with one rule.
        assert_eq!(text.matches("\tchain svc_").count(), n as usize);
        assert_eq!(text.matches("numgen inc mod 3").count(), n as usize);
        // One verdict per entry, three backends per entry, and two dnat rules in all.
        assert_eq!(
            line("\tmap vips").matches(": goto svc_").count(),
            2 * n as usize
        );
        assert_eq!(
            line("\tmap backends").matches(", ").count(),
            6 * n as usize - 1
        );
        assert_eq!(text.matches("dnat to").count(), 2);
        // The base chain stays at two rules whatever the number of services.
        assert_eq!(line("\tchain nat").matches("vmap").count(), 2);
        assert!(text.len() < 8 << 20, "script is {} bytes", text.len());
        assert_eq!(Layout::of(&entries).chains.len(), n as usize);
    }
}
