//! VIP load balancing with nftables inside each task's network namespace (see
//! docs/architecture.md, "Node agent"). [`ruleset`](mod@ruleset) builds and parses the
//! table's document; this file holds the entries, the [`LoadBalancer`] trait and its nft
//! implementation.
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
//! - Running `nft` inside the namespace and the shared JSON pieces are [`crate::net::nft`]'s.
//!
//! Invariants: entries are normalised (sorted, backends deduplicated and sorted, one entry
//! per key) before generation, so the same input always gives the same document and
//! [`read_programmed`] returns exactly [`normalize`]d entries for what is in the kernel.

#[cfg(any(test, feature = "test-util"))]
mod fake;
mod ruleset;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use shoal_api_types::endpoints::EndpointsSpec;
use shoal_api_types::service::{EndpointMode, Protocol};

use crate::net::nft::{self, NftError, Table};
#[cfg(any(test, feature = "test-util"))]
pub use fake::RecordingLb;
pub use ruleset::{delete_ruleset, parse_programmed, ruleset};

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
    /// nft could not run, or refused our document.
    #[error(transparent)]
    Nft(#[from] NftError),
    /// nft's JSON output did not have the shape we write.
    #[error("unexpected nft output: {0}")]
    Parse(String),
}

impl LbError {
    /// Whether retrying later may help (the reconciler requeues with backoff); a missing
    /// namespace or an nft that rejects our document will not fix itself.
    pub fn is_temporary(&self) -> bool {
        match self {
            LbError::Nft(e) => e.is_temporary(),
            LbError::Parse(_) => false,
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
pub(crate) fn parse_ip(s: &str) -> Option<Ipv4Addr> {
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

/// Replace our table in the namespace at `netns` with one for `entries`.
pub async fn program(netns: Option<&Path>, entries: &[VipEntry]) -> Result<(), LbError> {
    Ok(nft::apply(netns, &ruleset(entries)).await?)
}

/// Remove our table from the namespace at `netns` (absent is fine).
pub async fn remove(netns: Option<&Path>) -> Result<(), LbError> {
    Ok(nft::apply(netns, &delete_ruleset()).await?)
}

/// The raw `nft -j list table ip shoal_lb` output in the namespace at `netns`, or `None`
/// when the table does not exist.
pub async fn list_raw(netns: Option<&Path>) -> Result<Option<String>, LbError> {
    Ok(nft::list_table(netns, Table::ip(TABLE)).await?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::endpoints::EndpointTask;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    pub(super) fn task(name: &str, ip: &str, ready: bool) -> EndpointTask {
        EndpointTask::new(name, ip).ready(ready)
    }

    pub(super) fn endpoints(
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
}
