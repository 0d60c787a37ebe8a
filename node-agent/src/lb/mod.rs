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

mod entries;
#[cfg(any(test, feature = "test-util"))]
mod fake;
mod ruleset;

use std::path::Path;

use crate::net::nft::{self, Table};
pub use entries::{normalize, vip_entries, LbError, LoadBalancer, VipEntry};
#[cfg(any(test, feature = "test-util"))]
pub use fake::RecordingLb;
pub use ruleset::{
    delete_ruleset, parse_programmed, ruleset, BACKENDS_MAP, DNAT_CHAIN, DNAT_PORT_CHAIN,
    NAT_CHAIN, NAT_PRIORITY, PORT_BACKENDS_MAP, PORT_MAP, REJECT_CHAIN, SERVICE_CHAIN_PREFIX,
    TABLE, VIP_MAP,
};

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
