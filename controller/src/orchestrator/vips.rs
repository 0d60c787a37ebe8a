//! The networks a service's tasks join and the service's VIP on each: which networks
//! ([`wanted_networks`]), whether they are usable yet ([`resolve_networks`]), and which
//! addresses to claim or release as VIPs ([`plan_vips`]). Pure over the cache.
//!
//! A VIP is claimed at `ipam/ips/<network>/<ip>` with owner `vip/<service>` in the same
//! transaction as the `Service.status` that records it; the claim, not the status, makes
//! it the service's (see docs/architecture.md, "Controller").

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use shoal_api_types::{EndpointMode, Network, Service, ServiceSpec, VirtualIp};

use super::write::Write;
use crate::ipam::{addressing, claims_of, AddressesExhausted, Addressing};
use crate::reconcile::cache::Ipam;

/// The owner written in the claims of `service`'s VIPs.
pub fn vip_owner(service: &str) -> String {
    format!("vip/{service}")
}

/// The networks a service's tasks join, with aliases: the spec's, plus `ingress` when it
/// publishes ports through the routing mesh.
pub fn wanted_networks(spec: &ServiceSpec) -> Vec<(String, Vec<String>)> {
    spec.wanted_networks()
}

/// A network a service's tasks join, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    /// The network.
    pub network: String,
    /// The service's aliases on it.
    pub aliases: Vec<String>,
    /// Its subnet and gateway.
    pub addressing: Addressing,
}

/// Why a service's networks are not usable yet: a condition reason and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetProblem {
    /// `NetworkNotFound`, `NetworkFailed` or `NetworkPending`.
    pub reason: &'static str,
    /// What is wrong and what to do, for users.
    pub message: String,
}

/// Resolves the networks `spec` wants: the allocated ones, and the first problem with any
/// other (missing, failed, not allocated yet).
pub fn resolve_networks(
    spec: &ServiceSpec,
    networks: &BTreeMap<String, Arc<Network>>,
) -> (Vec<Attach>, Option<NetProblem>) {
    let mut attaches = Vec::new();
    let mut problem: Option<NetProblem> = None;
    for (net, aliases) in wanted_networks(spec) {
        match networks.get(&net) {
            None => {
                problem.get_or_insert(NetProblem {
                    reason: "NetworkNotFound",
                    message: format!("network {net:?} does not exist (was it deleted while in use?); create it or remove it from spec.networks"),
                });
            }
            Some(n) => match addressing(n) {
                Some(addressing) => attaches.push(Attach {
                    network: net,
                    aliases,
                    addressing,
                }),
                None if n.status.phase == "Failed" => {
                    problem.get_or_insert(NetProblem {
                        reason: "NetworkFailed",
                        message: format!("network {net:?} failed: {}", n.status.message),
                    });
                }
                None => {
                    problem.get_or_insert(NetProblem {
                        reason: "NetworkPending",
                        message: format!("network {net:?} is not allocated yet"),
                    });
                }
            },
        }
    }
    (attaches, problem)
}

/// A service's VIPs after this pass and the claims that change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VipPlan {
    /// The VIPs to record in `status.virtualIps`, in network order.
    pub vips: Vec<VirtualIp>,
    /// Claims of new VIPs and releases of VIPs no longer wanted; they commit with the
    /// status.
    pub writes: Vec<Write>,
    /// The first network without a free address.
    pub exhausted: Option<AddressesExhausted>,
}

/// Decides `service`'s VIPs (endpoint mode `vip` only): a VIP the status records and the
/// service's claim still holds is kept; a network without one gets a picked address;
/// every other claim of the service is released.
pub fn plan_vips(
    service: &Service,
    attaches: &[Attach],
    ipam: &Ipam,
    mut pick: impl FnMut(&Attach) -> Result<Ipv4Addr, AddressesExhausted>,
) -> VipPlan {
    let owner = vip_owner(&service.metadata.name);
    let mut plan = VipPlan::default();
    if service.spec.endpoint_mode == EndpointMode::Vip {
        for a in attaches {
            let existing = service
                .status
                .virtual_ips
                .iter()
                .find(|v| v.network == a.network)
                .and_then(|v| {
                    let ip: Ipv4Addr = v.addr.parse().ok()?;
                    (ipam.ip_claim(&a.network, ip)?.owner == owner).then_some(ip)
                });
            let ip = match existing {
                Some(ip) => ip,
                None => match pick(a) {
                    Ok(ip) => {
                        plan.writes.push(Write::Claim {
                            network: a.network.clone(),
                            ip,
                            owner: owner.clone(),
                        });
                        ip
                    }
                    Err(e) => {
                        plan.exhausted.get_or_insert(e);
                        continue;
                    }
                },
            };
            plan.vips.push(VirtualIp {
                network: a.network.clone(),
                addr: ip.to_string(),
            });
        }
    }
    let vips = &plan.vips;
    let stale = claims_of(ipam, &owner)
        .into_iter()
        .filter(|r| {
            !vips
                .iter()
                .any(|v| v.network == r.network && v.addr == r.ip.to_string())
        })
        .map(Write::Release);
    plan.writes.extend(stale.collect::<Vec<_>>());
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::Release;
    use crate::reconcile::cache::Claim;
    use shoal_api_types::{NetworkAttachmentConfig, NetworkSpec, NetworkStatus};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn ready(name: &str, subnet: &str) -> (String, Arc<Network>) {
        let mut n = Network::new(name, NetworkSpec::default());
        n.status = NetworkStatus {
            subnet: Some(subnet.into()),
            gateway: None,
            vni: Some(4097),
            phase: "Ready".into(),
            ..Default::default()
        };
        (name.to_string(), Arc::new(n))
    }

    fn attach(network: &str) -> Attach {
        Attach {
            network: network.into(),
            aliases: vec![],
            addressing: Addressing {
                subnet: "10.0.1.0/24".parse().unwrap(),
                gateway: ip("10.0.1.1"),
                internal: false,
            },
        }
    }

    fn service(nets: &[&str]) -> Service {
        Service::new(
            "api",
            ServiceSpec {
                image: "busybox".into(),
                networks: nets
                    .iter()
                    .map(|n| NetworkAttachmentConfig {
                        name: n.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        )
    }

    fn claim(ipam: &mut Ipam, network: &str, addr: &str, owner: &str, revision: i64) {
        ipam.ips.entry(network.into()).or_default().insert(
            ip(addr),
            Claim {
                owner: owner.into(),
                revision,
            },
        );
        ipam.by_owner
            .entry(owner.into())
            .or_default()
            .insert((network.into(), ip(addr)));
    }

    #[test]
    fn vips_should_name_the_first_unusable_network_and_keep_the_usable_ones() {
        let mut failed = Network::new("bad", NetworkSpec::default());
        failed.status.phase = "Failed".into();
        failed.status.message = "pool exhausted".into();
        let networks = BTreeMap::from([
            ready("front", "10.0.1.0/24"),
            ("bad".to_string(), Arc::new(failed)),
            (
                "new".to_string(),
                Arc::new(Network::new("new", NetworkSpec::default())),
            ),
        ]);
        let (attaches, problem) =
            resolve_networks(&service(&["front", "gone", "bad"]).spec, &networks);
        assert_eq!(attaches.len(), 1);
        assert_eq!(attaches[0].network, "front");
        let problem = problem.unwrap();
        assert_eq!(problem.reason, "NetworkNotFound");
        assert!(problem.message.contains("\"gone\""), "{}", problem.message);
        let (_, problem) = resolve_networks(&service(&["bad", "new"]).spec, &networks);
        assert_eq!(problem.unwrap().reason, "NetworkFailed");
        let (_, problem) = resolve_networks(&service(&["new"]).spec, &networks);
        assert_eq!(problem.unwrap().reason, "NetworkPending");
    }

    #[test]
    fn vips_should_keep_a_claimed_vip_claim_a_missing_one_and_release_stale_ones() {
        let mut svc = service(&["front", "back"]);
        svc.status.virtual_ips = vec![VirtualIp {
            network: "front".into(),
            addr: "10.0.1.5".into(),
        }];
        let mut ipam = Ipam::default();
        claim(&mut ipam, "front", "10.0.1.5", "vip/api", 3);
        claim(&mut ipam, "old", "10.0.9.9", "vip/api", 4);
        let plan = plan_vips(&svc, &[attach("front"), attach("back")], &ipam, |_| {
            Ok(ip("10.0.1.7"))
        });
        let addrs: Vec<_> = plan.vips.iter().map(|v| (&*v.network, &*v.addr)).collect();
        assert_eq!(addrs, vec![("front", "10.0.1.5"), ("back", "10.0.1.7")]);
        assert_eq!(
            plan.writes,
            vec![
                Write::Claim {
                    network: "back".into(),
                    ip: ip("10.0.1.7"),
                    owner: "vip/api".into()
                },
                Write::Release(Release {
                    network: "old".into(),
                    ip: ip("10.0.9.9"),
                    revision: 4
                }),
            ]
        );
        assert!(plan.exhausted.is_none());
    }

    #[test]
    fn vips_should_not_trust_a_status_address_the_service_does_not_hold() {
        let mut svc = service(&["front"]);
        svc.status.virtual_ips = vec![VirtualIp {
            network: "front".into(),
            addr: "10.0.1.5".into(),
        }];
        let mut ipam = Ipam::default();
        claim(&mut ipam, "front", "10.0.1.5", "some-task", 3);
        let plan = plan_vips(&svc, &[attach("front")], &ipam, |_| Ok(ip("10.0.1.8")));
        assert_eq!(plan.vips[0].addr, "10.0.1.8");
    }

    #[test]
    fn vips_should_report_exhaustion_and_claim_nothing_in_dnsrr_mode() {
        let svc = service(&["front"]);
        let exhausted = AddressesExhausted {
            network: "front".into(),
            subnet: "10.0.1.0/24".parse().unwrap(),
        };
        let plan = plan_vips(&svc, &[attach("front")], &Ipam::default(), |_| {
            Err(exhausted.clone())
        });
        assert!(plan.vips.is_empty() && plan.writes.is_empty());
        assert_eq!(plan.exhausted, Some(exhausted));

        let mut dnsrr = service(&["front"]);
        dnsrr.spec.endpoint_mode = EndpointMode::Dnsrr;
        let mut ipam = Ipam::default();
        claim(&mut ipam, "front", "10.0.1.5", "vip/api", 3);
        let plan = plan_vips(&dnsrr, &[attach("front")], &ipam, |_| unreachable!());
        assert!(plan.vips.is_empty());
        assert_eq!(plan.writes.len(), 1, "the old VIP is released: {plan:?}");
    }
}
