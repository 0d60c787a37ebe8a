//! VIP load balancing with nftables inside each task's network namespace.
//!
//! Owns one table, `table ip shoal_lb`, per task namespace and nothing else in it. The table
//! is generated as a pure function of the VIP entries of the networks the task is on
//! ([`ruleset`]) and replaced in one nft transaction (add + delete + recreate in one JSON
//! document, which `nft -j -f -` commits as one netlink batch): a packet sees either the old
//! table or the new one, never a half-built one.
//!
//! ```text
//! table ip shoal_lb {
//!   map services      { type ipv4_addr . inet_proto . inet_service : verdict }         # VIP . tcp . 80 : goto svc_0
//!   map vips          { type ipv4_addr . inet_proto : verdict }                        # VIP . tcp : goto svc_1, VIP2 . tcp : goto reject
//!   map port_backends { type ipv4_addr . inet_proto . inet_service . mark : ipv4_addr } # VIP . tcp . 80 . 0 : 10.0.1.7
//!   map backends      { type ipv4_addr . inet_proto . mark : ipv4_addr }                # VIP . tcp . 0 : 10.0.1.5, VIP . tcp . 1 : 10.0.1.6
//!   chain nat { type nat hook output priority -100; policy accept;
//!     ct state new ip daddr . meta l4proto . th dport vmap @services
//!     ct state new ip daddr . meta l4proto vmap @vips }
//!   chain svc_1 { meta mark set numgen inc mod 2 goto dnat }   # one per VIP (and per port entry)
//!   chain dnat { dnat to ip daddr . meta l4proto . meta mark map @backends }
//!   chain dnat_port { dnat to ip daddr . meta l4proto . th dport . meta mark map @port_backends }
//!   chain reject { meta l4proto tcp reject with tcp reset; reject }   # no ready backend
//! }
//! ```
//!
//! Design choices:
//! - **Per-packet cost is independent of the number of services**: the nat chain has two
//!   rules, each one hash lookup in a verdict map; the per-service chain holds one rule that
//!   picks an index, and the backend is one more hash lookup by VIP . protocol . index. Only
//!   the first packet of a connection sees the nat hook at all (conntrack NATs the rest).
//! - **Programming cost stays linear too**: there are exactly two `dnat` rules whatever the
//!   number of services. One `dnat to numgen ... map { anonymous }` rule per service (the
//!   first version) took ~10 s of kernel time to load 10,000 services; this layout loads them
//!   in under a second (measured with nft 1.0.6, kernel 6.18). The index travels from the
//!   service chain to the shared dnat chain in the packet mark, which nothing else uses in a
//!   task namespace (and which is scrubbed when the packet leaves the namespace).
//! - **Two verdict maps**: `services` is keyed by VIP . protocol . port, as the design asks,
//!   for entries that name a port. Swarm's VIP, however, forwards *every* port of the service
//!   (the container's own ports, which Shoal does not declare anywhere: `ports` in a Service
//!   are the published ones), so [`vip_entries`] produces port-less entries that go into
//!   `vips`, keyed by VIP . protocol. The port-keyed rule comes first, so a port entry
//!   overrides the whole-VIP entry of the same protocol. DNAT rewrites the address only.
//! - **`numgen inc`, not `numgen random`**: strict round robin per service spreads N new
//!   connections from a task as evenly as possible (40 connections over 2 backends are 20/20,
//!   not binomial) and needs no entropy. Each VIP has its own counter (its own chain), so two
//!   services used alternately do not lock each other onto one backend. The counters restart
//!   when the table is replaced.
//! - **No ready backend → reject** (TCP reset, ICMP port-unreachable otherwise): clients fail
//!   at once instead of retrying SYNs into a black hole. The nat rules match `ct state new`:
//!   redundant in a nat chain, but a `ct` expression is what makes the kernel enable
//!   conntrack in the namespace — a table with only reject verdicts and no `dnat` would
//!   otherwise have none, and a nat chain without conntrack never runs.
//! - **nft runs inside the namespace** by spawning it from a short-lived OS thread that has
//!   `setns`ed into the namespace: the child inherits the thread's network namespace, so no
//!   `ip netns exec`/`nsenter` binary (and no mount-namespace games) is needed, and tokio
//!   workers never change namespace.
//! - **The document is `serde_json` in `nft -j` input form**, not the `nftables` crate's
//!   schema types: nftables 0.6's `SetType` has no `verdict`, so it cannot express a verdict
//!   map. For the same reason we spawn `nft -j -f -` ourselves rather than through
//!   `nftables::helper::apply_ruleset`, which also drops nft's stderr (the only place nft says
//!   what was wrong).
//!
//! Invariants: entries are normalised (sorted, backends deduplicated and sorted, one entry
//! per key) before generation, so the same input always gives the same document and
//! [`read_programmed`] returns exactly [`normalize`]d entries for what is in the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use shoal_api_types::endpoints::EndpointsSpec;
use shoal_api_types::service::{EndpointMode, Protocol};

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

/// One load-balanced destination: traffic from the task to `vip` (protocol, port) is spread
/// over `backends`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipEntry {
    /// The service's virtual IP on a network the task is on.
    pub vip: Ipv4Addr,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The destination port, or `None` for every port of the protocol (Swarm's behaviour).
    pub port: Option<u16>,
    /// Addresses of the ready tasks; empty means connections are rejected.
    pub backends: Vec<Ipv4Addr>,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The namespace could not be opened or entered.
    #[error("enter network namespace {path}: {reason}")]
    Netns {
        /// The namespace path.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// nft could not be started or fed.
    #[error("run nft ({what}) in {netns}: {source}; is nftables installed?")]
    Spawn {
        /// What we were doing.
        what: &'static str,
        /// The namespace, or `-` for our own.
        netns: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// nft ran and refused.
    #[error("nft ({what}) failed in {netns}: {stderr}")]
    Nft {
        /// What we were doing.
        what: &'static str,
        /// The namespace, or `-` for our own.
        netns: String,
        /// nft's complaint.
        stderr: String,
    },
    /// nft's JSON output did not have the shape we write.
    #[error("unexpected nft output: {0}")]
    Parse(String),
}

impl LbError {
    /// Whether retrying later may help (the reconciler requeues with backoff); a missing
    /// namespace or an nft that rejects our document will not fix itself.
    pub fn is_temporary(&self) -> bool {
        match self {
            LbError::Spawn { .. } => true,
            LbError::Nft { stderr, .. } => {
                stderr.contains("Resource busy") || stderr.contains("Interrupted")
            }
            LbError::Netns { .. } | LbError::Parse(_) => false,
        }
    }
}

/// The VIP entries for a task namespace from the Endpoints objects of the networks the task
/// is on: for each service in `vip` mode with a VIP, one whole-VIP entry per protocol (TCP
/// and UDP) whose backends are the ready tasks. `dnsrr` services get none. Normalised.
pub fn vip_entries<'a>(endpoints: impl IntoIterator<Item = &'a EndpointsSpec>) -> Vec<VipEntry> {
    let mut out = Vec::new();
    for ep in endpoints {
        if ep.endpoint_mode != EndpointMode::Vip {
            continue;
        }
        let Some(vip) = ep.vip.as_deref().and_then(parse_ip) else {
            continue;
        };
        let backends: Vec<Ipv4Addr> = ep
            .tasks
            .iter()
            .filter(|t| t.ready)
            .filter_map(|t| parse_ip(&t.ip))
            .collect();
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            out.push(VipEntry {
                vip,
                protocol,
                port: None,
                backends: backends.clone(),
            });
        }
    }
    normalize(out)
}

/// An address as Endpoints carry it (tolerating a `/len` suffix).
fn parse_ip(s: &str) -> Option<Ipv4Addr> {
    s.split('/').next().and_then(|a| a.trim().parse().ok())
}

/// Sort entries, merge entries with the same key (union of backends), sort and deduplicate
/// backends.
pub fn normalize(entries: impl IntoIterator<Item = VipEntry>) -> Vec<VipEntry> {
    let mut by_key: BTreeMap<(Ipv4Addr, Protocol, Option<u16>), BTreeSet<Ipv4Addr>> =
        BTreeMap::new();
    for e in entries {
        by_key
            .entry((e.vip, e.protocol, e.port))
            .or_default()
            .extend(e.backends);
    }
    by_key
        .into_iter()
        .map(|((vip, protocol, port), b)| VipEntry {
            vip,
            protocol,
            port,
            backends: b.into_iter().collect(),
        })
        .collect()
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn table_obj() -> Value {
    json!({"family": "ip", "name": TABLE})
}

fn chain_obj(name: &str) -> Value {
    json!({"add": {"chain": {"family": "ip", "table": TABLE, "name": name}}})
}

fn rule(chain: &str, expr: Value) -> Value {
    json!({"add": {"rule": {"family": "ip", "table": TABLE, "chain": chain, "expr": expr}}})
}

fn map(name: &str, key: &[&str], data: &str, elems: Vec<Value>) -> Value {
    let mut map = json!({"family": "ip", "table": TABLE, "name": name, "type": key, "map": data});
    if !elems.is_empty() {
        map["elem"] = Value::Array(elems);
    }
    json!({"add": {"map": map}})
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

/// `ct state new` (see the module docs: it turns conntrack on in the namespace).
fn ct_new() -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}})
}

fn goto(target: &str) -> Value {
    json!({"goto": {"target": target}})
}

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
    // `add` first so that `delete` succeeds whether or not the table exists.
    objs.push(json!({"add": {"table": table_obj()}}));
    objs.push(json!({"delete": {"table": table_obj()}}));
    objs.push(json!({"add": {"table": table_obj()}}));
    objs.push(json!({"add": {"chain": {"family": "ip", "table": TABLE, "name": NAT_CHAIN, "type": "nat", "hook": "output", "prio": NAT_PRIORITY, "policy": "accept"}}}));
    for name in [DNAT_CHAIN, DNAT_PORT_CHAIN, REJECT_CHAIN] {
        objs.push(chain_obj(name));
    }
    for (name, _, _) in &chain_rules {
        objs.push(chain_obj(name));
    }
    objs.push(map(
        PORT_MAP,
        &["ipv4_addr", "inet_proto", "inet_service"],
        "verdict",
        port_verdicts,
    ));
    objs.push(map(
        VIP_MAP,
        &["ipv4_addr", "inet_proto"],
        "verdict",
        vip_verdicts,
    ));
    objs.push(map(
        PORT_BACKENDS_MAP,
        &["ipv4_addr", "inet_proto", "inet_service", "mark"],
        "ipv4_addr",
        port_backends,
    ));
    objs.push(map(
        BACKENDS_MAP,
        &["ipv4_addr", "inet_proto", "mark"],
        "ipv4_addr",
        backends,
    ));
    let daddr = || payload("ip", "daddr");
    objs.push(rule(NAT_CHAIN, json!([ct_new(), {"vmap": {"key": {"concat": [daddr(), meta("l4proto"), payload("th", "dport")]}, "data": format!("@{PORT_MAP}")}}])));
    objs.push(rule(NAT_CHAIN, json!([ct_new(), {"vmap": {"key": {"concat": [daddr(), meta("l4proto")]}, "data": format!("@{VIP_MAP}")}}])));
    objs.push(rule(DNAT_CHAIN, json!([{"dnat": {"addr": {"map": {"key": {"concat": [daddr(), meta("l4proto"), meta("mark")]}, "data": format!("@{BACKENDS_MAP}")}}}}])));
    objs.push(rule(
        DNAT_PORT_CHAIN,
        json!([{"dnat": {"addr": {"map": {"key": {"concat": [daddr(), meta("l4proto"), payload("th", "dport"), meta("mark")]}, "data": format!("@{PORT_BACKENDS_MAP}")}}}}]),
    ));
    objs.push(rule(REJECT_CHAIN, json!([{"match": {"op": "==", "left": meta("l4proto"), "right": "tcp"}}, {"reject": {"type": "tcp reset"}}])));
    objs.push(rule(
        REJECT_CHAIN,
        json!([{"reject": {"type": "icmp", "expr": "port-unreachable"}}]),
    ));
    for (name, n, port) in &chain_rules {
        let next = if *port { DNAT_PORT_CHAIN } else { DNAT_CHAIN };
        objs.push(rule(name, json!([{"mangle": {"key": meta("mark"), "value": {"numgen": {"mode": "inc", "mod": n}}}}, goto(next)])));
    }
    json!({ "nftables": objs })
}

/// The document that removes our table (whether or not it exists).
pub fn delete_ruleset() -> Value {
    json!({"nftables": [{"add": {"table": table_obj()}}, {"delete": {"table": table_obj()}}]})
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

/// Run `f` on a fresh OS thread that has entered the network namespace at `netns` (our own
/// namespace when `None`); processes it spawns inherit that namespace. Never runs on a tokio
/// worker, whose namespace must stay the agent's. (See [`crate::net::netns::run_in`].)
async fn in_netns<R: Send + 'static>(
    netns: Option<&Path>,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, LbError> {
    crate::net::netns::run_in(netns, f)
        .await
        .map_err(|e| LbError::Netns {
            path: netns.map(Path::to_owned).unwrap_or_default(),
            reason: e.to_string(),
        })
}

fn ns_label(netns: Option<&Path>) -> String {
    netns
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "-".into())
}

/// Run nft with `args`, feeding `stdin`; returns stdout. Blocking: call on a netns thread.
fn run_nft(
    args: &[&str],
    stdin: Option<String>,
    what: &'static str,
    netns: &str,
) -> Result<String, LbError> {
    let spawn_err = |source| LbError::Spawn {
        what,
        netns: netns.to_owned(),
        source,
    };
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // nft reads its whole input before it writes anything, so this cannot deadlock.
        pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(LbError::Nft {
            what,
            netns: netns.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Apply an nft JSON document inside the namespace at `netns` (one transaction).
pub async fn apply(netns: Option<&Path>, doc: &Value) -> Result<(), LbError> {
    let json = doc.to_string();
    let label = ns_label(netns);
    in_netns(netns, move || {
        run_nft(&["-j", "-f", "-"], Some(json), "apply ruleset", &label).map(drop)
    })
    .await?
}

/// Replace our table in the namespace at `netns` with one for `entries`.
pub async fn program(netns: Option<&Path>, entries: &[VipEntry]) -> Result<(), LbError> {
    apply(netns, &ruleset(entries)).await
}

/// Remove our table from the namespace at `netns` (absent is fine).
pub async fn remove(netns: Option<&Path>) -> Result<(), LbError> {
    apply(netns, &delete_ruleset()).await
}

/// The raw `nft -j list table ip shoal_lb` output in the namespace at `netns`, or `None`
/// when the table does not exist.
pub async fn list_raw(netns: Option<&Path>) -> Result<Option<String>, LbError> {
    let label = ns_label(netns);
    let r = in_netns(netns, move || {
        run_nft(
            &["-j", "list", "table", "ip", TABLE],
            None,
            "list table",
            &label,
        )
    })
    .await?;
    match r {
        Ok(out) => Ok(Some(out)),
        Err(LbError::Nft { stderr, .. }) if stderr.contains("No such file or directory") => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// What is programmed in the namespace at `netns` (normalised entries), or `None` when our
/// table does not exist. Compare with [`normalize`]d desired entries to skip no-op applies.
pub async fn read_programmed(netns: Option<&Path>) -> Result<Option<Vec<VipEntry>>, LbError> {
    match list_raw(netns).await? {
        Some(json) => parse_programmed(&json).map(Some),
        None => Ok(None),
    }
}

/// The firewall side effect behind one narrow trait, so the agent's converge loop can be
/// tested against [`RecordingLb`].
#[async_trait::async_trait]
pub trait LoadBalancer: Send + Sync {
    /// Replace the VIP rules in the namespace at `netns`.
    async fn program(&self, netns: &Path, entries: &[VipEntry]) -> Result<(), LbError>;
    /// What is programmed there (`None`: nothing of ours).
    async fn programmed(&self, netns: &Path) -> Result<Option<Vec<VipEntry>>, LbError>;
    /// Remove our rules there.
    async fn remove(&self, netns: &Path) -> Result<(), LbError>;
}

/// The real [`LoadBalancer`]: nft inside the namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct NftLoadBalancer;

#[async_trait::async_trait]
impl LoadBalancer for NftLoadBalancer {
    async fn program(&self, netns: &Path, entries: &[VipEntry]) -> Result<(), LbError> {
        program(Some(netns), entries).await
    }
    async fn programmed(&self, netns: &Path) -> Result<Option<Vec<VipEntry>>, LbError> {
        read_programmed(Some(netns)).await
    }
    async fn remove(&self, netns: &Path) -> Result<(), LbError> {
        remove(Some(netns)).await
    }
}

/// What a [`RecordingLb`] holds per namespace.
type Programmed = BTreeMap<PathBuf, Vec<VipEntry>>;

/// A [`LoadBalancer`] that only remembers: the state per namespace and the calls made.
#[derive(Debug, Default)]
pub struct RecordingLb {
    state: std::sync::Mutex<(Programmed, Vec<String>)>,
}

impl RecordingLb {
    /// The calls so far, as `program <netns> <n entries>` / `remove <netns>`.
    pub fn calls(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }
    /// What is "programmed" in `netns`.
    pub fn entries(&self, netns: &Path) -> Option<Vec<VipEntry>> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .get(netns)
            .cloned()
    }
}

#[async_trait::async_trait]
impl LoadBalancer for RecordingLb {
    async fn program(&self, netns: &Path, entries: &[VipEntry]) -> Result<(), LbError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.1.push(format!("program {} {}", netns.display(), entries.len()));
        st.0.insert(netns.to_owned(), normalize(entries.iter().cloned()));
        Ok(())
    }
    async fn programmed(&self, netns: &Path) -> Result<Option<Vec<VipEntry>>, LbError> {
        Ok(self.entries(netns))
    }
    async fn remove(&self, netns: &Path) -> Result<(), LbError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.1.push(format!("remove {}", netns.display()));
        st.0.remove(netns);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::endpoints::EndpointTask;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn task(name: &str, ip: &str, ready: bool) -> EndpointTask {
        EndpointTask {
            task: format!("id-{name}"),
            name: name.into(),
            ip: ip.into(),
            ready,
            ..Default::default()
        }
    }

    fn endpoints(
        service: &str,
        vip: Option<&str>,
        mode: EndpointMode,
        tasks: Vec<EndpointTask>,
    ) -> EndpointsSpec {
        EndpointsSpec {
            network: "appnet".into(),
            service: service.into(),
            vip: vip.map(Into::into),
            endpoint_mode: mode,
            tasks,
            ..Default::default()
        }
    }

    #[test]
    fn vip_entries_take_ready_tasks_of_vip_services_only() {
        let eps = [
            endpoints(
                "api",
                Some("10.0.1.2"),
                EndpointMode::Vip,
                vec![
                    task("api.1", "10.0.1.5", true),
                    task("api.2", "10.0.1.6", false),
                    task("api.3", "10.0.1.4", true),
                ],
            ),
            endpoints(
                "db",
                Some("10.0.1.3"),
                EndpointMode::Dnsrr,
                vec![task("db.1", "10.0.1.9", true)],
            ),
            endpoints(
                "web",
                None,
                EndpointMode::Vip,
                vec![task("web.1", "10.0.1.10", true)],
            ),
        ];
        let got = vip_entries(&eps);
        let backends = vec![ip("10.0.1.4"), ip("10.0.1.5")];
        assert_eq!(
            got,
            vec![
                VipEntry {
                    vip: ip("10.0.1.2"),
                    protocol: Protocol::Tcp,
                    port: None,
                    backends: backends.clone()
                },
                VipEntry {
                    vip: ip("10.0.1.2"),
                    protocol: Protocol::Udp,
                    port: None,
                    backends
                },
            ]
        );
    }

    #[test]
    fn normalize_merges_duplicate_keys_and_sorts_backends() {
        let e = |b: &[&str]| VipEntry {
            vip: ip("10.0.0.2"),
            protocol: Protocol::Tcp,
            port: Some(80),
            backends: b.iter().map(|s| ip(s)).collect(),
        };
        assert_eq!(
            normalize([e(&["10.0.0.9", "10.0.0.3"]), e(&["10.0.0.3", "10.0.0.4"])]),
            vec![e(&["10.0.0.3", "10.0.0.4", "10.0.0.9"])]
        );
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
        let json = include_str!("../tests/lb_support/nft-list-1.0.6.json");
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

    #[tokio::test]
    async fn recording_lb_remembers_state_and_calls() {
        let lb = RecordingLb::default();
        let ns = Path::new("/run/netns/t1");
        let e = VipEntry {
            vip: ip("10.0.0.2"),
            protocol: Protocol::Tcp,
            port: None,
            backends: vec![ip("10.0.0.5")],
        };
        lb.program(ns, std::slice::from_ref(&e)).await.unwrap();
        assert_eq!(lb.programmed(ns).await.unwrap(), Some(vec![e]));
        lb.remove(ns).await.unwrap();
        assert_eq!(lb.programmed(ns).await.unwrap(), None);
        assert_eq!(
            lb.calls(),
            vec!["program /run/netns/t1 1", "remove /run/netns/t1"]
        );
    }
}
