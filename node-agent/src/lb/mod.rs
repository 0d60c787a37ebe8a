//! VIP load balancing with nftables inside each task's network namespace (see
//! docs/architecture.md, "Node agent"). [`ruleset`](mod@ruleset) describes the whole table
//! (as an nft script) and judges a table read back, [`plan`](mod@plan) computes the change
//! between two sets of entries, [`netlink`](mod@netlink) sends either to the kernel as one
//! nf_tables batch and reads the table back; this file holds the entries, the
//! [`LoadBalancer`] trait, its nftables implementation and [`converge`], the one way the
//! agent brings a table to what it should be.
//!
//! Owns one table, `table ip shoal_lb`, per task namespace and nothing else in it. The table
//! is a pure function of the VIP entries of the networks the task is on. It is written whole
//! ([`program`]: add + delete + recreate in one batch) only when nothing is known about it
//! (a new task, an agent restart) or when it is not what it should be (drift, a change that
//! failed); every other change is incremental ([`update`]: only the elements and counter
//! chains of the services that changed, also in one batch). Either way a packet sees the
//! old table or the new one, never a half-built one.
//!
//! ```text
//! table ip shoal_lb {
//!   map services      { type ipv4_addr . inet_proto . inet_service : verdict }         # VIP . tcp . 80 : goto svc_0a000103_p1
//!   map vips          { type ipv4_addr . inet_proto : verdict }                        # VIP . tcp : goto svc_0a000102_2, VIP2 . tcp : goto refuse
//!   map port_backends { type ipv4_addr . inet_proto . inet_service . mark : ipv4_addr } # VIP . tcp . 80 . 0 : 10.0.1.7
//!   map backends      { type ipv4_addr . inet_proto . mark : ipv4_addr }                # VIP . tcp . 0 : 10.0.1.5, VIP . tcp . 1 : 10.0.1.6
//!   chain nat { type nat hook output priority -100; policy accept;
//!     ct state new ip daddr . meta l4proto . th dport vmap @services
//!     ct state new ip daddr . meta l4proto vmap @vips }
//!   chain svc_0a000102_2 { meta mark set numgen inc mod 2 goto pick_backend }  # per VIP and count
//!   chain pick_backend { dnat to ip daddr . meta l4proto . meta mark map @backends }
//!   chain pick_port_backend { dnat to ip daddr . meta l4proto . th dport . meta mark map @port_backends }
//!   chain refuse { meta l4proto tcp reject with tcp reset; reject }   # no ready backend
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
//! - **Counter chains are named after what they count** (`svc_<VIP in hex>_<n>`, `_p<n>` for
//!   port entries), not numbered: a change names exactly the chains it adds and deletes, and
//!   chains of unchanged services (and their counters) are never touched. A new backend count
//!   is a new chain: the verdict moves to it in the same batch and the old one is deleted.
//! - **nf_tables netlink, not the `nft` tool** ([`netlink`](mod@netlink), issue 17): before
//!   any element command nft 1.0.6 loads a cache holding every chain of the namespace — one
//!   per service — so a one-service change through `nft -f` cost 30–95 ms at 10,000
//!   services and grew with the table; nft also spent about half of a full write parsing
//!   its input and seconds of CPU listing a big table. The agent now sends the batch nft
//!   would send for [`ruleset`]'s script (same objects, byte for byte: a netns test compares
//!   `nft list` of both) and reads the table back with netlink dumps; a change's batch holds
//!   only the changed services' elements and chains. `nft` remains the tool to look at a
//!   table (`nft list table ip shoal_lb` in the task's namespace).
//! - **Incremental, with a full write as the safety net** ([`converge`]): the agent keeps the
//!   entries it last programmed per task; a change is planned against them and applied in
//!   one transaction. If the kernel refuses it (the table is not what the cache says: an
//!   element to delete is missing, say) nothing of it applies and the table is written
//!   whole. The agent's periodic resync reads every table back ([`LoadBalancer::programmed`])
//!   and writes it whole when it differs from what it should be.
//!
//! Invariants: entries are normalised (sorted, backends deduplicated and sorted, one entry
//! per key) before generation, so the same input always gives the same batch;
//! [`read_programmed`] returns exactly [`normalize`]d entries for what is in the kernel, and
//! only for tables of exactly the shape [`ruleset`] writes (anything else is an error, which
//! [`converge`] repairs with a full write).

mod entries;
#[cfg(any(test, feature = "test-util"))]
mod fake;
pub mod netlink;
mod plan;
mod ruleset;
pub mod sockdiag;
pub mod socket;

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::net::nft;
pub use entries::{normalize, vip_entries, without_pending, LbError, LoadBalancer, VipEntry};
#[cfg(any(test, feature = "test-util"))]
pub use fake::RecordingLb;
pub use plan::{plan, Change};
pub use ruleset::{
    parse_programmed, ruleset, service_chain, Layout, BACKENDS_MAP, DNAT_CHAIN, DNAT_PORT_CHAIN,
    NAT_CHAIN, NAT_PRIORITY, PORT_BACKENDS_MAP, PORT_MAP, REJECT_CHAIN, SERVICE_CHAIN_PREFIX,
    TABLE, VIP_MAP,
};
pub use socket::SocketLb;

/// Replace our table in the namespace at `netns` with one for `entries`: the table
/// [`ruleset`] describes, sent as one nf_tables netlink batch ([`netlink::table_messages`]),
/// which is what `nft -f` would send for that script without nft's parsing.
/// Connections the old table NATed to a backend the new one lacks are forgotten
/// ([`netlink::conntrack`]).
pub async fn program(netns: Option<&Path>, entries: &[VipEntry]) -> Result<(), LbError> {
    let msgs = netlink::table_messages(&normalized(entries));
    send(netns, msgs, Some(pairs(entries))).await
}

/// Sends `msgs` as one batch in the namespace at `netns`. With `kept`, the (VIP, backend)
/// pairs of the table the batch leaves, it then deletes the conntrack entries that would
/// send a client to any other pair ([`netlink::conntrack`]); that is best effort, logged,
/// and never fails the change, which is in force by then.
async fn send(
    netns: Option<&Path>,
    msgs: Vec<netlink::Message>,
    kept: Option<BTreeSet<(Ipv4Addr, Ipv4Addr)>>,
) -> Result<(), LbError> {
    let at = netns.map(Path::to_owned);
    crate::net::netns::run_in(netns, move || {
        netlink::send(&msgs)?;
        if let Some(kept) = kept {
            match netlink::conntrack::forget_stale(|vip, b| kept.contains(&(vip, b))) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(netns = ?at, deleted = n, "forgot connections to backends the VIP table dropped"),
                Err(e) => tracing::warn!(netns = ?at, error = %e, "cannot forget connections to backends the VIP table dropped"),
            }
        }
        Ok::<_, netlink::NetlinkError>(())
    })
    .await
    .map_err(|e| netns_error(netns, e))??;
    Ok(())
}

/// The (VIP, backend) pairs of `entries`.
fn pairs(entries: &[VipEntry]) -> BTreeSet<(Ipv4Addr, Ipv4Addr)> {
    entries
        .iter()
        .flat_map(|e| e.backends.iter().map(|b| (e.vip, *b)))
        .collect()
}

/// Change our table in the namespace at `netns`, which holds `from`, to hold `to`: one
/// transaction with only what differs ([`plan`]), sent as one nf_tables netlink batch
/// ([`netlink`](mod@netlink)), so its cost does not depend on the table's size; nothing
/// runs when nothing differs. Fails (changing nothing) when the table is not what `from`
/// says, as far as the change touches it.
pub async fn update(
    netns: Option<&Path>,
    from: &[VipEntry],
    to: &[VipEntry],
) -> Result<(), LbError> {
    let change = plan(&normalized(from), &normalized(to));
    if change.is_empty() {
        return Ok(());
    }
    // Connections are forgotten only when a backend left a VIP: a change that only adds
    // costs no conntrack dump.
    let kept = pairs(to);
    let dropped = pairs(from).iter().any(|p| !kept.contains(p));
    send(netns, netlink::messages(&change), dropped.then_some(kept)).await
}

/// `entries` normalised, without a copy when they already are (the agent's always are).
fn normalized(entries: &[VipEntry]) -> Cow<'_, [VipEntry]> {
    let sorted = entries
        .windows(2)
        .all(|w| (w[0].vip, w[0].protocol, w[0].port) < (w[1].vip, w[1].protocol, w[1].port))
        && entries
            .iter()
            .all(|e| e.backends.windows(2).all(|w| w[0] < w[1]));
    if sorted {
        Cow::Borrowed(entries)
    } else {
        Cow::Owned(normalize(entries.iter().cloned()))
    }
}

/// Remove our table from the namespace at `netns` (absent is fine).
pub async fn remove(netns: Option<&Path>) -> Result<(), LbError> {
    send(
        netns,
        netlink::delete_table_messages(),
        Some(BTreeSet::new()),
    )
    .await
}

/// What is programmed in the namespace at `netns` (normalised entries), or `None` when our
/// table does not exist. Compare with [`normalize`]d desired entries to skip no-op applies.
///
/// Read with netlink dumps ([`netlink`](mod@netlink)), not `nft -j list`: the same objects,
/// judged by the same rules as [`parse_programmed`], at a fraction of the cost.
pub async fn read_programmed(netns: Option<&Path>) -> Result<Option<Vec<VipEntry>>, LbError> {
    let listed = crate::net::netns::run_in(netns, netlink::read_table)
        .await
        .map_err(|e| netns_error(netns, e))??;
    listed.map(|l| l.entries()).transpose()
}

fn netns_error(netns: Option<&Path>, e: crate::net::NetError) -> LbError {
    LbError::Nft(nft::NftError::Netns {
        path: netns.map(Path::to_owned).unwrap_or_default(),
        reason: e.to_string(),
    })
}

/// How [`converge`] brought a table to the desired entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Converged {
    /// It held them already.
    Unchanged,
    /// Only what changed was applied ([`LoadBalancer::update`]).
    Changed,
    /// The table was written whole ([`LoadBalancer::program`]): nothing was known about it,
    /// it had drifted, or the incremental change failed.
    Rewritten,
}

/// Brings the table in `netns` to `desired` (normalised) through `lb`. With `known`, what
/// was last programmed there (the agent's cache), the change is incremental, and a change
/// that fails falls back to a full write. Without it the table is read back: kept when it
/// holds `desired` (with its round-robin counters), written whole otherwise (absent,
/// drifted, or not of our shape). An error means the table may be anything: forget it.
pub async fn converge(
    lb: &dyn LoadBalancer,
    netns: &Path,
    known: Option<&[VipEntry]>,
    desired: &[VipEntry],
) -> Result<Converged, LbError> {
    match known {
        Some(known) if known == desired => return Ok(Converged::Unchanged),
        Some(known) => match lb.update(netns, known, desired).await {
            Ok(()) => return Ok(Converged::Changed),
            Err(e) => {
                // nft quotes the line it refused, which can be long.
                let e: String = e.to_string().chars().take(400).collect();
                tracing::warn!(netns = %netns.display(), error = %e, "incremental VIP table change failed; writing the table whole");
            }
        },
        None => match lb.programmed(netns).await {
            Ok(Some(programmed)) if programmed == desired => {
                lb.adopt(netns, desired).await;
                return Ok(Converged::Unchanged);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::info!(netns = %netns.display(), error = %e, "VIP table not of our shape; writing it whole")
            }
        },
    }
    lb.program(netns, desired).await?;
    Ok(Converged::Rewritten)
}

/// The real [`LoadBalancer`]: nf_tables inside the namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct NftLoadBalancer;

#[async_trait::async_trait]
impl LoadBalancer for NftLoadBalancer {
    async fn program(&self, netns: &Path, entries: &[VipEntry]) -> Result<(), LbError> {
        program(Some(netns), entries).await
    }
    async fn update(
        &self,
        netns: &Path,
        from: &[VipEntry],
        to: &[VipEntry],
    ) -> Result<(), LbError> {
        update(Some(netns), from, to).await
    }
    async fn programmed(&self, netns: &Path) -> Result<Option<Vec<VipEntry>>, LbError> {
        read_programmed(Some(netns)).await
    }
    async fn remove(&self, netns: &Path) -> Result<(), LbError> {
        remove(Some(netns)).await
    }
}
