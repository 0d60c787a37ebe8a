//! Address picking inside an allocated network: the usable [`Addressing`] of a Ready
//! network, its gateway, and next-fit [`pick_ips`] / [`Picker`] for VIPs, task addresses
//! and nodes' ingress addresses.
//!
//! Pure: this module decides which address; the stage that records it writes its claim
//! (`ipam/ips/<network>/<ip>`) in the same transaction as its user, so the claim is what
//! makes an address taken (see docs/architecture.md, "Controller" and "etcd key layout").

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use shoal_api_types::network::parse_cidr;
use shoal_api_types::Network;

use crate::reconcile::cache::Ipam;

/// The gateway: the spec's, else the first host address.
pub fn gateway(subnet: Ipv4Network, requested: Option<&str>) -> Ipv4Addr {
    requested
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| Ipv4Addr::from(u32::from(subnet.network()) + 1))
}

/// Picks up to `n` free host addresses of `subnet` (never the network, broadcast or
/// gateway address, nor any `taken` one), next-fit from `cursor`, which advances so that
/// concurrent pickers and recently released addresses are not reused at once.
pub fn pick_ips(
    subnet: Ipv4Network,
    gateway: Ipv4Addr,
    n: usize,
    cursor: &mut u32,
    taken: impl Fn(Ipv4Addr) -> bool,
) -> Vec<Ipv4Addr> {
    let first = u32::from(subnet.network()) + 1;
    let hosts = (1u64 << (32 - subnet.prefix())).saturating_sub(2) as u32;
    let mut out = Vec::with_capacity(n);
    if hosts == 0 {
        return out;
    }
    for _ in 0..hosts {
        if out.len() == n {
            break;
        }
        let ip = Ipv4Addr::from(first + (*cursor % hosts));
        *cursor = (*cursor + 1) % hosts;
        if ip == gateway || taken(ip) || out.contains(&ip) {
            continue;
        }
        out.push(ip);
    }
    out
}

/// A network's usable addressing, once allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressing {
    /// The subnet.
    pub subnet: Ipv4Network,
    /// The gateway.
    pub gateway: Ipv4Addr,
    /// Whether the network is internal.
    pub internal: bool,
}

/// The addressing of a network whose status is Ready.
pub fn addressing(net: &Network) -> Option<Addressing> {
    if net.status.phase != "Ready" {
        return None;
    }
    let subnet = parse_cidr(net.status.subnet.as_deref()?).ok()?;
    let gateway = net
        .status
        .gateway
        .as_deref()
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| gateway(subnet, None));
    Some(Addressing {
        subnet,
        gateway,
        internal: net.spec.internal,
    })
}

/// A network has no free address left. Not retryable: shown in the service's status and
/// revisited when an address is released.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("network {network:?} ({subnet}) has no free address left; use a larger subnet")]
pub struct AddressesExhausted {
    /// The network.
    pub network: String,
    /// Its subnet.
    pub subnet: Ipv4Network,
}

/// Picks addresses for one reconcile pass: next-fit per network from the leader's cursors,
/// never a claimed address (`claimed(network, ip)`) nor one this pass picked already.
pub struct Picker<'a, F> {
    cursors: &'a mut HashMap<String, u32>,
    claimed: F,
    picked: HashSet<(String, Ipv4Addr)>,
}

impl<'a, F: Fn(&str, Ipv4Addr) -> bool> Picker<'a, F> {
    /// A picker over `cursors` (next-fit positions per network, kept across passes).
    pub fn new(cursors: &'a mut HashMap<String, u32>, claimed: F) -> Self {
        Picker {
            cursors,
            claimed,
            picked: HashSet::new(),
        }
    }

    /// One free address of `network`.
    pub fn pick(
        &mut self,
        network: &str,
        addressing: &Addressing,
    ) -> Result<Ipv4Addr, AddressesExhausted> {
        let cursor = self.cursors.entry(network.to_string()).or_insert(0);
        let (claimed, picked) = (&self.claimed, &self.picked);
        let ip = pick_ips(addressing.subnet, addressing.gateway, 1, cursor, |ip| {
            claimed(network, ip) || picked.contains(&(network.to_string(), ip))
        })
        .pop()
        .ok_or_else(|| AddressesExhausted {
            network: network.to_string(),
            subnet: addressing.subnet,
        })?;
        self.picked.insert((network.to_string(), ip));
        Ok(ip)
    }
}

/// An address claim to release, compared on the revision it was seen at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The network.
    pub network: String,
    /// The address.
    pub ip: Ipv4Addr,
    /// The claim's revision.
    pub revision: i64,
}

/// The address claims `owner` holds (a task id, `vip/<service>`, `node/<name>`), as
/// releases, in (network, address) order.
pub fn claims_of(ipam: &Ipam, owner: &str) -> Vec<Release> {
    ipam.by_owner
        .get(owner)
        .into_iter()
        .flatten()
        .filter_map(|(network, ip)| {
            let claim = ipam.ip_claim(network, *ip)?;
            Some(Release {
                network: network.clone(),
                ip: *ip,
                revision: claim.revision,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn ipam_should_pick_free_addresses_next_fit_skipping_the_gateway() {
        let subnet = net("10.0.0.0/29"); // hosts .1-.6, gateway .1
        let gw = gateway(subnet, None);
        assert_eq!(gw, "10.0.0.1".parse::<Ipv4Addr>().unwrap());
        let mut cursor = 0;
        let taken = |ip: Ipv4Addr| ip == "10.0.0.3".parse::<Ipv4Addr>().unwrap();
        let got = pick_ips(subnet, gw, 3, &mut cursor, taken);
        let want: Vec<Ipv4Addr> = ["10.0.0.2", "10.0.0.4", "10.0.0.5"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        // Next-fit continues after the last pick; only .6 is left.
        let got = pick_ips(subnet, gw, 5, &mut cursor, |ip| {
            taken(ip) || want.contains(&ip)
        });
        assert_eq!(got, vec!["10.0.0.6".parse::<Ipv4Addr>().unwrap()]);
    }
    #[test]
    fn picker_should_never_hand_out_one_address_twice_in_a_pass() {
        let a = Addressing {
            subnet: net("10.0.0.0/29"),
            gateway: "10.0.0.1".parse().unwrap(),
            internal: false,
        };
        let claimed: Ipv4Addr = "10.0.0.2".parse().unwrap();
        let mut cursors = HashMap::new();
        let mut picker = Picker::new(&mut cursors, |n: &str, ip| n == "a" && ip == claimed);
        let got: Vec<Ipv4Addr> = (0..4).map(|_| picker.pick("a", &a).unwrap()).collect();
        let want: Vec<Ipv4Addr> = ["10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            picker.pick("a", &a).unwrap_err().to_string(),
            "network \"a\" (10.0.0.0/29) has no free address left; use a larger subnet"
        );
        // Another network has its own cursor and claims.
        assert_eq!(
            picker.pick("b", &a).unwrap(),
            "10.0.0.2".parse::<Ipv4Addr>().unwrap()
        );
    }
}
