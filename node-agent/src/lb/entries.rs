//! Owns what a task namespace's load balancer is asked for: [`VipEntry`]s built from the
//! Endpoints objects ([`vip_entries`], [`normalize`]), the [`LbError`]s, and the
//! [`LoadBalancer`] trait the real table (`NftLoadBalancer`) and the fake implement.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use shoal_api_types::endpoints::{group_slices, EndpointsSpec};
use shoal_api_types::network::INGRESS_NETWORK;
use shoal_api_types::service::{EndpointMode, Protocol};

use crate::net::nft::NftError;
use crate::net::reachable_backends;

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
    /// The kernel refused a change sent over netlink, or could not be asked.
    #[error(transparent)]
    Netlink(#[from] super::netlink::error::NetlinkError),
    /// nft's JSON output did not have the shape we write.
    #[error("unexpected nft output: {0}")]
    Parse(String),
    /// The connect() program's map could not be changed (`lb::socket`).
    #[error("VIP balancing at connect(): {0}")]
    Socket(String),
}

impl LbError {
    /// Whether retrying later may help (the reconciler requeues with backoff); a missing
    /// namespace or an nft that rejects our document will not fix itself.
    pub fn is_temporary(&self) -> bool {
        match self {
            LbError::Nft(e) => e.is_temporary(),
            LbError::Netlink(e) => e.is_temporary(),
            LbError::Parse(_) => false,
            LbError::Socket(_) => true,
        }
    }
}

/// The VIP entries for a task namespace from the Endpoints objects of the networks the task
/// is on: for each service in `vip` mode with a VIP, one whole-VIP entry per protocol (TCP
/// and UDP) whose backends are the ready tasks. `dnsrr` services get none, and neither do
/// the ingress VIPs (tasks meet over `ingress` only as the routing mesh's backends).
/// The slices of one service are read as one ([`group_slices`]): the VIP and mode from
/// slice 0, the backends from every slice. Normalised.
pub fn vip_entries<'a>(endpoints: impl IntoIterator<Item = &'a EndpointsSpec>) -> Vec<VipEntry> {
    let mut out = Vec::new();
    for g in group_slices(endpoints) {
        let ep = g.head;
        if ep.endpoint_mode != EndpointMode::Vip || ep.network == INGRESS_NETWORK {
            continue;
        }
        let Some(vip) = ep.vip.as_deref().and_then(parse_ip) else {
            continue;
        };
        let backends: Vec<Ipv4Addr> = g
            .tasks()
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

/// `entries` as far as they can be programmed while the `pending` addresses cannot be
/// reached yet (their overlay peer entries are not synced): each entry without its pending
/// backends. An entry that would keep none of its backends stays as `known` has it (or is
/// left out without one), so removals never wait for a peer sync and additions never come
/// before one. Without pending addresses, `entries`.
pub fn without_pending(
    entries: &[VipEntry],
    pending: &BTreeSet<Ipv4Addr>,
    known: Option<&[VipEntry]>,
) -> Vec<VipEntry> {
    if pending.is_empty() {
        return entries.to_vec();
    }
    let key = |e: &VipEntry| (e.vip, e.protocol, e.port);
    entries
        .iter()
        .filter_map(|e| match reachable_backends(&e.backends, pending) {
            Some(backends) => Some(VipEntry {
                backends,
                ..e.clone()
            }),
            None => known?.iter().find(|k| key(k) == key(e)).cloned(),
        })
        .collect()
}

/// The firewall side effect behind one narrow trait, so the agent's converge loop can be
/// tested against [`RecordingLb`].
#[async_trait::async_trait]
pub trait LoadBalancer: Send + Sync {
    /// Replace the VIP rules in the namespace at `netns` (written whole).
    async fn program(&self, netns: &Path, entries: &[VipEntry]) -> Result<(), LbError>;
    /// Change the VIP rules in the namespace at `netns`, which hold `from`, to `to`, touching
    /// only what differs, in one transaction; fails without changing anything when they do
    /// not hold `from`.
    async fn update(&self, netns: &Path, from: &[VipEntry], to: &[VipEntry])
        -> Result<(), LbError>;
    /// What is programmed there (`None`: nothing of ours).
    async fn programmed(&self, netns: &Path) -> Result<Option<Vec<VipEntry>>, LbError>;
    /// Remove our rules there.
    async fn remove(&self, netns: &Path) -> Result<(), LbError>;
    /// The namespace at `netns` goes, and its rules with it: drop what is kept about it
    /// outside the namespace (nothing, for a table that lives in it).
    async fn forget(&self, _netns: &Path) {}
    /// The rules at `netns` were read back holding `entries`, which they should, and are
    /// kept as they are ([`super::converge`], under the task's lock): take them as
    /// programmed (nothing to do, for a table that lives in the namespace).
    async fn adopt(&self, _netns: &Path, _entries: &[VipEntry]) {}
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use shoal_api_types::endpoints::EndpointTask;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    pub(crate) fn task(name: &str, ip: &str, ready: bool) -> EndpointTask {
        EndpointTask::new(name, ip).ready(ready)
    }

    pub(crate) fn endpoints(
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
    fn without_pending_should_drop_unreachable_backends_and_keep_an_entry_that_would_have_none() {
        let entry = |vip: &str, backends: &[&str]| VipEntry {
            vip: ip(vip),
            protocol: Protocol::Tcp,
            port: None,
            backends: backends.iter().map(|b| ip(b)).collect(),
        };
        let known = vec![
            entry("10.0.1.2", &["10.0.1.5", "10.0.1.6"]),
            entry("10.0.1.3", &["10.0.1.8"]),
        ];
        let pending: BTreeSet<Ipv4Addr> = [ip("10.0.1.7"), ip("10.0.1.9")].into();
        let desired = vec![
            entry("10.0.1.2", &["10.0.1.5", "10.0.1.7"]),
            entry("10.0.1.3", &["10.0.1.9"]),
            entry("10.0.1.4", &["10.0.1.9"]),
        ];
        assert_eq!(
            without_pending(&desired, &pending, Some(&known)),
            vec![
                entry("10.0.1.2", &["10.0.1.5"]),
                entry("10.0.1.3", &["10.0.1.8"])
            ],
            "10.0.1.6 leaves, 10.0.1.7 waits; .3 keeps its old backend; .4 waits whole"
        );
        assert_eq!(
            without_pending(&desired, &BTreeSet::new(), Some(&known)),
            desired
        );
        assert_eq!(
            without_pending(&desired, &pending, None),
            vec![entry("10.0.1.2", &["10.0.1.5"])]
        );
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
    fn vip_entries_should_balance_over_every_slice_of_a_service() {
        let slice = |n: u32, vip: Option<&str>, tasks| EndpointsSpec {
            slice: n,
            ..endpoints("api", vip, EndpointMode::Vip, tasks)
        };
        let eps = [
            slice(2, Some("10.0.1.2"), vec![task("api.5", "10.0.1.9", true)]),
            slice(0, Some("10.0.1.2"), vec![task("api.1", "10.0.1.5", true)]),
            // Written before the VIP was known (slices land one by one): slice 0 says
            // what the service is, this one only adds backends.
            slice(
                1,
                None,
                vec![
                    task("api.2", "10.0.1.6", true),
                    task("api.3", "10.0.1.7", false),
                ],
            ),
        ];
        let got = vip_entries(&eps);
        let backends = vec![ip("10.0.1.5"), ip("10.0.1.6"), ip("10.0.1.9")];
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got
            .iter()
            .all(|e| e.vip == ip("10.0.1.2") && e.backends == backends));
    }

    #[test]
    fn vip_entries_leave_out_the_ingress_vips() {
        let mut on_ingress = endpoints(
            "web",
            Some("10.255.0.2"),
            EndpointMode::Vip,
            vec![task("web.1", "10.255.0.5", true)],
        );
        on_ingress.network = "ingress".into();
        let on_appnet = endpoints(
            "api",
            Some("10.0.1.2"),
            EndpointMode::Vip,
            vec![task("api.1", "10.0.1.5", true)],
        );
        let got = vip_entries([&on_ingress, &on_appnet]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.iter().all(|e| e.vip == ip("10.0.1.2")), "{got:?}");
        assert!(vip_entries([&on_ingress]).is_empty());
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
