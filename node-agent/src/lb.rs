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
//!   map services { type ipv4_addr . inet_proto . inet_service : verdict; elements = { VIP . tcp . 80 : goto svc_0 } }
//!   map vips     { type ipv4_addr . inet_proto : verdict;                elements = { VIP . tcp : goto svc_1, VIP . udp : goto svc_1 } }
//!   chain nat { type nat hook output priority -100; policy accept;
//!     ct state new ip daddr . meta l4proto . th dport vmap @services
//!     ct state new ip daddr . meta l4proto vmap @vips }
//!   chain svc_1 { dnat to numgen inc mod 2 map { 0 : 10.0.1.5, 1 : 10.0.1.6 } }
//!   chain svc_2 { meta l4proto tcp reject with tcp reset; reject }   # no ready backend
//! }
//! ```
//!
//! Design choices:
//! - **Per-packet cost is independent of the number of services**: the nat chain has two
//!   rules, each one hash lookup in a verdict map; the per-service chain is reached by `goto`
//!   and holds one rule whose backend choice is an anonymous map lookup. Only the first packet
//!   of a connection sees the nat hook at all (conntrack NATs the rest).
//! - **Two maps**: `services` is keyed by VIP . protocol . port, as the design asks, for
//!   entries that name a port. Swarm's VIP, however, forwards *every* port of the service (the
//!   container's own ports, which Shoal does not declare anywhere: `ports` in a Service are the
//!   published ones), so [`vip_entries`] produces port-less entries that go into `vips`, keyed
//!   by VIP . protocol. The port-keyed rule comes first, so a port entry overrides the
//!   whole-VIP entry of the same protocol. DNAT rewrites the address only; the port stays.
//! - **`numgen inc`, not `numgen random`**: strict round robin spreads N new connections from
//!   a task as evenly as possible (40 connections over 2 backends are 20/20, not binomial),
//!   needs no entropy per packet, and the counter lives in one rule per namespace so there
//!   is no cross-namespace contention. It restarts at 0 when the table is replaced.
//! - **No ready backend → reject** (TCP reset, ICMP port-unreachable otherwise): clients fail
//!   at once instead of retrying SYNs into a black hole.
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
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
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
/// Prefix of the per-service chains.
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

fn verdict_map(name: &str, key: &[&str], elems: Vec<Value>) -> Value {
    let mut map =
        json!({"family": "ip", "table": TABLE, "name": name, "type": key, "map": "verdict"});
    if !elems.is_empty() {
        map["elem"] = Value::Array(elems);
    }
    json!({"add": {"map": map}})
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

/// `ct state new`: redundant in a nat chain (which only sees new connections), but a `ct`
/// expression is what makes the kernel enable conntrack in the namespace. Without it a table
/// whose services all lack backends (reject only, no `dnat`) has no conntrack, and a nat
/// chain without conntrack never runs: connections would hang instead of being refused.
fn ct_new() -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}})
}

fn l4proto() -> Value {
    json!({"meta": {"key": "l4proto"}})
}

/// The rules of a service chain: DNAT over the backends, or reject when there are none.
fn service_rules(backends: &[Ipv4Addr]) -> Vec<Value> {
    match backends {
        [] => vec![
            json!([{"match": {"op": "==", "left": l4proto(), "right": "tcp"}}, {"reject": {"type": "tcp reset"}}]),
            json!([{"reject": {"type": "icmp", "expr": "port-unreachable"}}]),
        ],
        [one] => vec![json!([{"dnat": {"addr": one.to_string()}}])],
        many => {
            let items: Vec<Value> = many
                .iter()
                .enumerate()
                .map(|(i, ip)| json!([i, ip.to_string()]))
                .collect();
            vec![
                json!([{"dnat": {"addr": {"map": {"key": {"numgen": {"mode": "inc", "mod": many.len()}}, "data": {"set": items}}}}}]),
            ]
        }
    }
}

/// The one nft JSON document (`nft -j -f -` input) that atomically replaces our table with
/// one for `entries` (normalised first). Entries of one VIP with the same backends share a
/// chain.
pub fn ruleset(entries: &[VipEntry]) -> Value {
    let entries = normalize(entries.iter().cloned());
    // One chain per (vip, backends), numbered in entry order.
    let mut chains: BTreeMap<(Ipv4Addr, &[Ipv4Addr]), String> = BTreeMap::new();
    let mut chain_order: Vec<(String, &[Ipv4Addr])> = Vec::new();
    let mut port_elems = Vec::new();
    let mut vip_elems = Vec::new();
    for e in &entries {
        let name = chains
            .entry((e.vip, &e.backends))
            .or_insert_with(|| {
                let name = format!("{SERVICE_CHAIN_PREFIX}{}", chain_order.len());
                chain_order.push((name.clone(), &e.backends));
                name
            })
            .clone();
        let goto = json!({"goto": {"target": name}});
        match e.port {
            Some(port) => port_elems
                .push(json!([{"concat": [e.vip.to_string(), proto_name(e.protocol), port]}, goto])),
            None => vip_elems
                .push(json!([{"concat": [e.vip.to_string(), proto_name(e.protocol)]}, goto])),
        }
    }

    let mut objs: Vec<Value> = Vec::with_capacity(10 + 2 * chain_order.len());
    // `add` first so that `delete` succeeds whether or not the table exists.
    objs.push(json!({"add": {"table": table_obj()}}));
    objs.push(json!({"delete": {"table": table_obj()}}));
    objs.push(json!({"add": {"table": table_obj()}}));
    objs.push(json!({"add": {"chain": {"family": "ip", "table": TABLE, "name": NAT_CHAIN, "type": "nat", "hook": "output", "prio": NAT_PRIORITY, "policy": "accept"}}}));
    for (name, _) in &chain_order {
        objs.push(chain_obj(name));
    }
    objs.push(verdict_map(
        PORT_MAP,
        &["ipv4_addr", "inet_proto", "inet_service"],
        port_elems,
    ));
    objs.push(verdict_map(
        VIP_MAP,
        &["ipv4_addr", "inet_proto"],
        vip_elems,
    ));
    objs.push(rule(
        NAT_CHAIN,
        json!([ct_new(), {"vmap": {"key": {"concat": [payload("ip", "daddr"), l4proto(), payload("th", "dport")]}, "data": format!("@{PORT_MAP}")}}]),
    ));
    objs.push(rule(NAT_CHAIN, json!([ct_new(), {"vmap": {"key": {"concat": [payload("ip", "daddr"), l4proto()]}, "data": format!("@{VIP_MAP}")}}])));
    for (name, backends) in &chain_order {
        for expr in service_rules(backends) {
            objs.push(rule(name, expr));
        }
    }
    json!({ "nftables": objs })
}

/// The document that removes our table (whether or not it exists).
pub fn delete_ruleset() -> Value {
    json!({"nftables": [{"add": {"table": table_obj()}}, {"delete": {"table": table_obj()}}]})
}

/// Read back the entries a `nft -j list table ip shoal_lb` document describes (normalised).
/// Chains that are not referenced from a map are ignored; a service chain we cannot read
/// is an error (the caller then simply reprograms).
pub fn parse_programmed(json: &str) -> Result<Vec<VipEntry>, LbError> {
    let doc: Value =
        serde_json::from_str(json).map_err(|e| LbError::Parse(format!("not JSON: {e}")))?;
    let objects = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| LbError::Parse("no nftables array".into()))?;
    // chain name -> backends (None = reject)
    let mut chain_backends: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    let mut keyed: Vec<(Ipv4Addr, Protocol, Option<u16>, String)> = Vec::new();
    for obj in objects {
        if let Some(map) = obj.get("map") {
            let name = map.get("name").and_then(Value::as_str).unwrap_or_default();
            if name != PORT_MAP && name != VIP_MAP {
                continue;
            }
            for el in map
                .get("elem")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                keyed.push(parse_element(el)?);
            }
        } else if let Some(rule) = obj.get("rule") {
            let chain = rule
                .get("chain")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !chain.starts_with(SERVICE_CHAIN_PREFIX) {
                continue;
            }
            let backends = chain_backends.entry(chain.to_owned()).or_default();
            for stmt in rule
                .get("expr")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(dnat) = stmt.get("dnat") {
                    backends.extend(parse_dnat(dnat)?);
                }
            }
        }
    }
    let mut out = Vec::with_capacity(keyed.len());
    for (vip, protocol, port, chain) in keyed {
        let backends = chain_backends.get(&chain).cloned().unwrap_or_default();
        out.push(VipEntry {
            vip,
            protocol,
            port,
            backends,
        });
    }
    Ok(normalize(out))
}

fn parse_element(el: &Value) -> Result<(Ipv4Addr, Protocol, Option<u16>, String), LbError> {
    let bad = || LbError::Parse(format!("map element {el}"));
    let pair = el.as_array().filter(|a| a.len() == 2).ok_or_else(bad)?;
    let key = pair[0]
        .get("concat")
        .and_then(Value::as_array)
        .ok_or_else(bad)?;
    let target = pair[1]
        .get("goto")
        .and_then(|g| g.get("target"))
        .and_then(Value::as_str)
        .ok_or_else(bad)?;
    let vip = key
        .first()
        .and_then(Value::as_str)
        .and_then(parse_ip)
        .ok_or_else(bad)?;
    let protocol = match key.get(1) {
        Some(Value::String(p)) if p == "tcp" => Protocol::Tcp,
        Some(Value::String(p)) if p == "udp" => Protocol::Udp,
        Some(Value::Number(n)) if n.as_u64() == Some(6) => Protocol::Tcp,
        Some(Value::Number(n)) if n.as_u64() == Some(17) => Protocol::Udp,
        _ => return Err(bad()),
    };
    let port = match key.get(2) {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(bad)?,
        ),
    };
    Ok((vip, protocol, port, target.to_owned()))
}

fn parse_dnat(dnat: &Value) -> Result<Vec<Ipv4Addr>, LbError> {
    let bad = || LbError::Parse(format!("dnat statement {dnat}"));
    let addr = dnat.get("addr").ok_or_else(bad)?;
    if let Some(ip) = addr.as_str() {
        return Ok(vec![parse_ip(ip).ok_or_else(bad)?]);
    }
    let items = addr
        .get("map")
        .and_then(|m| m.get("data"))
        .and_then(|d| d.get("set"))
        .and_then(Value::as_array)
        .ok_or_else(bad)?;
    items
        .iter()
        .map(|item| {
            item.as_array()
                .and_then(|kv| kv.get(1))
                .and_then(Value::as_str)
                .and_then(parse_ip)
                .ok_or_else(bad)
        })
        .collect()
}

/// Run `f` on a fresh OS thread that has entered the network namespace at `netns` (our own
/// namespace when `None`); processes it spawns inherit that namespace. Never runs on a tokio
/// worker, whose namespace must stay the agent's.
async fn in_netns<R: Send + 'static>(
    netns: Option<&Path>,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, LbError> {
    let ns = match netns {
        Some(p) => Some((
            File::open(p).map_err(|e| LbError::Netns {
                path: p.to_owned(),
                reason: e.to_string(),
            })?,
            p.to_owned(),
        )),
        None => None,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("shoal-lb-netns".into())
        .spawn(move || {
            let r = match &ns {
                Some((file, path)) => {
                    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| LbError::Netns {
                            path: path.clone(),
                            reason: format!("setns: {e}"),
                        })
                        .map(|()| f())
                }
                None => Ok(f()),
            };
            let _ = tx.send(r);
        })
        .map_err(|e| LbError::Netns {
            path: netns.map(Path::to_owned).unwrap_or_default(),
            reason: format!("spawn thread: {e}"),
        })?;
    rx.await.unwrap_or_else(|_| {
        Err(LbError::Netns {
            path: netns.map(Path::to_owned).unwrap_or_default(),
            reason: "namespace thread panicked".into(),
        })
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

/// A [`LoadBalancer`] that only remembers: the state per namespace and the calls made.
#[derive(Debug, Default)]
pub struct RecordingLb {
    state: std::sync::Mutex<(BTreeMap<PathBuf, Vec<VipEntry>>, Vec<String>)>,
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
        let expected = json!({"nftables": [
            {"add": {"table": t}},
            {"delete": {"table": t}},
            {"add": {"table": t}},
            {"add": {"chain": {"family": "ip", "table": "shoal_lb", "name": "nat", "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}}},
            chain("svc_0"),
            chain("svc_1"),
            chain("svc_2"),
            {"add": {"map": {"family": "ip", "table": "shoal_lb", "name": "services", "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict",
                "elem": [[{"concat": ["10.0.1.3", "tcp", 8080]}, {"goto": {"target": "svc_1"}}]]}}},
            {"add": {"map": {"family": "ip", "table": "shoal_lb", "name": "vips", "type": ["ipv4_addr", "inet_proto"], "map": "verdict",
                "elem": [
                    [{"concat": ["10.0.1.2", "tcp"]}, {"goto": {"target": "svc_0"}}],
                    [{"concat": ["10.0.1.2", "udp"]}, {"goto": {"target": "svc_0"}}],
                    [{"concat": ["10.0.1.4", "tcp"]}, {"goto": {"target": "svc_2"}}]]}}},
            rule("nat", json!([ct_new, {"vmap": {"key": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}}, {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}, "data": "@services"}}])),
            rule("nat", json!([ct_new, {"vmap": {"key": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}}, {"meta": {"key": "l4proto"}}]}, "data": "@vips"}}])),
            rule("svc_0", json!([{"dnat": {"addr": {"map": {"key": {"numgen": {"mode": "inc", "mod": 2}}, "data": {"set": [[0, "10.0.1.5"], [1, "10.0.1.6"]]}}}}}])),
            rule("svc_1", json!([{"dnat": {"addr": "10.0.1.7"}}])),
            rule("svc_2", json!([{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"reject": {"type": "tcp reset"}}])),
            rule("svc_2", json!([{"reject": {"type": "icmp", "expr": "port-unreachable"}}])),
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
            8,
            "table add/delete/add, nat chain, two maps, two rules"
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
        // Trimmed from `nft -j list table ip shoal_lb` (nft 1.0.6).
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"table": {"family": "ip", "name": "shoal_lb", "handle": 3}},
          {"map": {"family": "ip", "name": "vips", "table": "shoal_lb", "type": ["ipv4_addr", "inet_proto"], "handle": 5, "map": "verdict",
             "elem": [[{"concat": ["10.0.0.3", "tcp"]}, {"goto": {"target": "svc_0"}}]]}},
          {"map": {"family": "ip", "name": "services", "table": "shoal_lb", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 4, "map": "verdict"}},
          {"rule": {"family": "ip", "table": "shoal_lb", "chain": "svc_0", "handle": 9, "expr": [{"dnat": {"addr": {"map": {"key": {"numgen": {"mode": "inc", "mod": 2, "offset": 0}}, "data": {"set": [[0, "10.0.0.5"], [1, "10.0.0.6"]]}}}}}]}}]}"#;
        assert_eq!(
            parse_programmed(json).unwrap(),
            vec![VipEntry {
                vip: ip("10.0.0.3"),
                protocol: Protocol::Tcp,
                port: None,
                backends: vec![ip("10.0.0.5"), ip("10.0.0.6")]
            }]
        );
        assert!(parse_programmed("{}").is_err());
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
        assert_eq!(
            count(&|o| o
                .pointer("/add/rule/chain")
                .is_some_and(|c| c.as_str().unwrap().starts_with("svc_"))),
            n as usize
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
