//! Cross-object rules: checks that need more than the object itself, as pure functions over
//! objects already read (so they are tested without etcd).
//!
//! - The network name `ingress` is the system's: users cannot create, replace or delete it
//!   (the controller creates the routing-mesh network and keeps it present).
//! - A Network's explicit subnet must not overlap any other network's subnet (spec or
//!   allocated status); subnet, gateway, driver and the ingress flag cannot change once set.
//! - A Network users write has driver `overlay`: `bridge` is the gateway bridge's
//!   (`gwbridge`, the system's, one per node).
//! - A Service may only join networks that exist, and never the ingress network or the
//!   gateway bridge directly; every Secret and Config it references exists (or is written in
//!   the same body); it publishes no reserved port (`shoal_api_types::settings`, checked in `plan` against
//!   the stored ClusterSettings).
//! - An ingress-mode published port (number + protocol) belongs to one service; a port
//!   number used in ingress mode by one service cannot be used in host mode by another.
//!   Host-mode ports may repeat across services (the scheduler keeps them apart per node).
//! - A health port (`traffic: local`) answers on every node, so it belongs to one service
//!   and is nobody's published TCP port.
//! - A Network is in use while a Service lists it (the ingress network: while a Service
//!   publishes in ingress mode).
//!
//! Invalid objects are 422 (field errors); port clashes are 409 (a conflict with another
//! object, named in the message).

use std::collections::BTreeMap;

use ipnetwork::Ipv4Network;
use shoal_api_types::network::{parse_cidr, BRIDGE_DRIVER, GATEWAY_BRIDGE_NETWORK};
use shoal_api_types::service::mode_name;
use shoal_api_types::{Config, FieldError, Network, Protocol, PublishMode, Secret, Service};

/// The subnet a network occupies: its explicit one, else the allocated one.
pub fn network_subnet(n: &Network) -> Option<Ipv4Network> {
    n.spec
        .subnet_net()
        .or_else(|| n.status.subnet.as_deref().and_then(|s| parse_cidr(s).ok()))
}

/// Whether two subnets share an address.
pub fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// `candidate`'s explicit subnet against every other network (422 on `spec.subnet`).
pub fn check_subnet<'a>(
    candidate: &Network,
    others: impl IntoIterator<Item = &'a Network>,
) -> Vec<FieldError> {
    let Some(mine) = candidate.spec.subnet_net() else {
        return vec![];
    };
    others
        .into_iter()
        .filter(|o| o.name() != candidate.name())
        .filter_map(|o| {
            network_subnet(o)
                .filter(|theirs| overlaps(mine, *theirs))
                .map(|theirs| (o, theirs))
        })
        .map(|(o, theirs)| {
            FieldError::new(
                "spec.subnet",
                format!(
                    "{mine} overlaps {theirs} of network {:?}; choose a subnet outside it",
                    o.name()
                ),
            )
        })
        .collect()
}

/// Users may not write a network named `ingress` (422 on `metadata.name`).
pub fn check_network_name(name: &str) -> Vec<FieldError> {
    shoal_api_types::network::reserved_network_name(name)
        .map(|msg| FieldError::new("metadata.name", msg))
        .into_iter()
        .collect()
}

/// What may not change between the stored network and the one asked for (422). `None`
/// for a new network.
pub fn check_network_change(existing: Option<&Network>, next: &Network) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let Some(old) = existing else {
        if next.spec.ingress {
            errs.push(FieldError::new(
                "spec.ingress",
                "only Shoal creates the ingress network; leave spec.ingress unset",
            ));
        }
        if next.spec.driver == BRIDGE_DRIVER {
            errs.push(FieldError::new(
                "spec.driver",
                format!(
                    "{BRIDGE_DRIVER:?} is the gateway bridge's driver ({GATEWAY_BRIDGE_NETWORK:?},                      which Shoal keeps on every node); user networks are \"overlay\""
                ),
            ));
        }
        return errs;
    };
    let recreate = "remove the network and create it again to change it";
    if next.spec.ingress != old.spec.ingress {
        errs.push(FieldError::new(
            "spec.ingress",
            "cannot be changed: only Shoal creates the ingress network",
        ));
    }
    if next.spec.driver != old.spec.driver {
        errs.push(FieldError::new(
            "spec.driver",
            format!("cannot be changed from {:?}; {recreate}", old.spec.driver),
        ));
    }
    // Setting a previously unset field to what was allocated changes nothing.
    let same = |new: &Option<String>, old_spec: &Option<String>, allocated: &Option<String>| {
        new == old_spec || (old_spec.is_none() && new.is_some() && new == allocated)
    };
    if !same(&next.spec.subnet, &old.spec.subnet, &old.status.subnet) {
        errs.push(FieldError::new(
            "spec.subnet",
            format!(
                "cannot be changed from {} (tasks hold addresses in it); {recreate}",
                shown(&old.spec.subnet)
            ),
        ));
    }
    if !same(&next.spec.gateway, &old.spec.gateway, &old.status.gateway) {
        errs.push(FieldError::new(
            "spec.gateway",
            format!(
                "cannot be changed from {}; {recreate}",
                shown(&old.spec.gateway)
            ),
        ));
    }
    errs
}

fn shown(v: &Option<String>) -> String {
    match v {
        Some(v) => v.clone(),
        None => "unset (allocated by Shoal)".into(),
    }
}

/// Every network `svc` joins must exist in `networks` and not be the ingress network (422).
pub fn check_service_networks(
    svc: &Service,
    networks: &BTreeMap<String, Network>,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, att) in svc.spec.networks.iter().enumerate() {
        let field = format!("spec.networks[{i}].name");
        let bridge = networks
            .get(&att.name)
            .is_some_and(|n| n.spec.driver == BRIDGE_DRIVER);
        if att.name == GATEWAY_BRIDGE_NETWORK || bridge {
            errs.push(FieldError::new(
                field,
                format!(
                    "{:?} is the gateway bridge: every task on a non-internal network reaches                      it by itself; list overlay networks only",
                    att.name
                ),
            ));
            continue;
        }
        match networks.get(&att.name) {
            None => errs.push(FieldError::new(
                field,
                format!("network {:?} does not exist; create it first (or apply it in the same body)", att.name),
            )),
            Some(n) if n.spec.ingress => errs.push(FieldError::new(
                field,
                format!(
                    "{:?} is the routing-mesh network; services join it by themselves when they publish ports in ingress mode",
                    att.name
                ),
            )),
            Some(_) => {}
        }
    }
    errs
}

/// Every Secret and Config `svc` references must exist (422 on
/// `spec.secrets[i].source` / `spec.configs[i].source`).
pub fn check_service_payloads(
    svc: &Service,
    secrets: &BTreeMap<String, Secret>,
    configs: &BTreeMap<String, Config>,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, r) in svc.spec.secrets.iter().enumerate() {
        if !secrets.contains_key(&r.source) {
            errs.push(FieldError::new(
                format!("spec.secrets[{i}].source"),
                format!(
                    "secret {:?} does not exist; create it first (`shoal secret create {} FILE`) \
                     or apply it in the same body",
                    r.source, r.source
                ),
            ));
        }
    }
    for (i, r) in svc.spec.configs.iter().enumerate() {
        if !configs.contains_key(&r.source) {
            errs.push(FieldError::new(
                format!("spec.configs[{i}].source"),
                format!(
                    "config {:?} does not exist; create it first (`shoal config create {} FILE`) \
                     or apply it in the same body",
                    r.source, r.source
                ),
            ));
        }
    }
    errs
}

/// `svc`'s published ports against every other service's (409 on
/// `spec.ports[i].published`, naming the other service). One problem per port at most.
pub fn check_ports<'a>(
    svc: &Service,
    others: impl IntoIterator<Item = &'a Service>,
) -> Vec<FieldError> {
    let others: Vec<&Service> = others
        .into_iter()
        .filter(|o| o.name() != svc.name())
        .collect();
    let mut errs = Vec::new();
    'ports: for (i, p) in svc.spec.ports.iter().enumerate() {
        for other in &others {
            for q in &other.spec.ports {
                if p.protocol == Protocol::Tcp && q.health_port == Some(p.published) {
                    errs.push(FieldError::new(
                        format!("spec.ports[{i}].published"),
                        format!(
                            "port {}/tcp is the health port of service {}",
                            p.published,
                            other.name()
                        ),
                    ));
                    continue 'ports;
                }
                if p.published != q.published {
                    continue;
                }
                let message = match (p.mode, q.mode) {
                    (PublishMode::Ingress, PublishMode::Ingress) if p.protocol == q.protocol => {
                        format!("port {}/{} is already published by service {}", p.published, p.protocol, other.name())
                    }
                    (PublishMode::Host, PublishMode::Host) | (PublishMode::Ingress, PublishMode::Ingress) => continue,
                    (mine, theirs) => format!(
                        "port {} is published in {} mode by service {}; a port published in ingress mode by one \
                         service cannot be published in {} mode by another",
                        p.published,
                        mode_name(theirs),
                        other.name(),
                        mode_name(mine)
                    ),
                };
                errs.push(FieldError::new(
                    format!("spec.ports[{i}].published"),
                    message,
                ));
                continue 'ports;
            }
        }
    }
    'health: for (i, h) in svc
        .spec
        .ports
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some((i, p.health_port?)))
    {
        for other in &others {
            for q in &other.spec.ports {
                let message = if q.health_port == Some(h) {
                    format!(
                        "port {h} is already the health port of service {}",
                        other.name()
                    )
                } else if q.published == h && q.protocol == Protocol::Tcp {
                    format!(
                        "port {h}/tcp is already published by service {}",
                        other.name()
                    )
                } else {
                    continue;
                };
                errs.push(FieldError::new(
                    format!("spec.ports[{i}].healthPort"),
                    message,
                ));
                continue 'health;
            }
        }
    }
    errs
}

/// The names of the services that keep `net` in use, sorted.
pub fn services_using(net: &Network, services: &[Service]) -> Vec<String> {
    let mut users: Vec<String> = services
        .iter()
        .filter(|s| {
            s.spec.networks.iter().any(|a| a.name == net.name())
                || (net.spec.ingress && s.spec.publishes_ingress())
        })
        .map(|s| s.name().to_string())
        .collect();
    users.sort();
    users.dedup();
    users
}

/// The 409 message for deleting a network in use.
pub fn in_use_message(network: &str, users: &[String]) -> String {
    format!(
        "network {network} is in use by service(s): {}",
        users.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::{
        NetworkAttachmentConfig, NetworkSpec, PortConfig, Protocol, ServiceSpec,
    };

    fn net(name: &str, subnet: Option<&str>) -> Network {
        Network::new(
            name,
            NetworkSpec {
                driver: "overlay".into(),
                subnet: subnet.map(Into::into),
                ..Default::default()
            },
        )
    }

    fn svc(name: &str, nets: &[&str], ports: &[(u32, Protocol, PublishMode)]) -> Service {
        Service::new(
            name,
            ServiceSpec {
                image: "busybox".into(),
                networks: nets
                    .iter()
                    .map(|n| NetworkAttachmentConfig {
                        name: n.to_string(),
                        aliases: vec![],
                    })
                    .collect(),
                ports: ports
                    .iter()
                    .map(|&(published, protocol, mode)| PortConfig {
                        published,
                        target: 80,
                        protocol,
                        mode,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn subnets_overlap_when_either_contains_the_other() {
        let a: Ipv4Network = "10.1.0.0/16".parse().unwrap();
        let b: Ipv4Network = "10.1.2.0/24".parse().unwrap();
        let c: Ipv4Network = "10.2.0.0/24".parse().unwrap();
        assert!(overlaps(a, b) && overlaps(b, a));
        assert!(!overlaps(a, c));
    }

    #[test]
    fn subnet_overlap_names_the_other_network_and_counts_allocated_subnets() {
        let mut allocated = net("auto", None);
        allocated.status.subnet = Some("10.0.5.0/24".into());
        let others = [
            net("big", Some("10.1.0.0/16")),
            allocated,
            net("apart", Some("10.9.0.0/24")),
        ];
        let errs = check_subnet(&net("new", Some("10.1.2.0/24")), &others);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.subnet");
        assert!(
            errs[0]
                .message
                .contains("overlaps 10.1.0.0/16 of network \"big\""),
            "{}",
            errs[0].message
        );
        assert_eq!(
            check_subnet(&net("new", Some("10.0.0.0/8")), &others).len(),
            3
        );
        assert!(check_subnet(&net("new", None), &others).is_empty());
    }

    #[test]
    fn a_network_does_not_overlap_itself() {
        let n = net("same", Some("10.1.0.0/24"));
        assert!(check_subnet(&n, std::slice::from_ref(&n)).is_empty());
    }

    #[test]
    fn network_addressing_cannot_change_but_may_pin_what_was_allocated() {
        let mut old = net("n", None);
        old.status.subnet = Some("10.0.3.0/24".into());
        assert!(check_network_change(Some(&old), &net("n", Some("10.0.3.0/24"))).is_empty());
        let errs = check_network_change(Some(&old), &net("n", Some("10.0.4.0/24")));
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.subnet");
        let pinned = net("n", Some("10.0.3.0/24"));
        assert_eq!(
            check_network_change(Some(&pinned), &net("n", None))[0].field,
            "spec.subnet"
        );
    }

    #[test]
    fn users_cannot_create_an_ingress_network() {
        let mut n = net("mesh", None);
        n.spec.ingress = true;
        assert_eq!(check_network_change(None, &n)[0].field, "spec.ingress");
        assert!(check_network_change(Some(&n), &n).is_empty());
    }

    #[test]
    fn services_may_only_join_existing_non_ingress_networks() {
        let mut ingress = net("ingress", None);
        ingress.spec.ingress = true;
        let nets: BTreeMap<String, Network> = [net("appnet", None), ingress]
            .into_iter()
            .map(|n| (n.name().to_string(), n))
            .collect();
        let errs =
            check_service_networks(&svc("api", &["appnet", "missing", "ingress"], &[]), &nets);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.networks[1].name", "spec.networks[2].name"]);
        assert!(errs[0].message.contains("\"missing\" does not exist"));
    }

    #[test]
    fn services_may_not_list_the_gateway_bridge_and_users_may_not_make_bridges() {
        let mut gw = net("gwbridge", None);
        gw.spec.driver = "bridge".into();
        let mut other_bridge = net("br", None);
        other_bridge.spec.driver = "bridge".into();
        let nets: BTreeMap<String, Network> = [gw, other_bridge.clone()]
            .into_iter()
            .map(|n| (n.name().to_string(), n))
            .collect();
        let errs = check_service_networks(&svc("api", &["gwbridge", "br"], &[]), &nets);
        assert_eq!(errs.len(), 2);
        assert!(
            errs[0].message.contains("gateway bridge"),
            "{}",
            errs[0].message
        );
        // Even before the leader made it.
        let errs = check_service_networks(&svc("api", &["gwbridge"], &[]), &BTreeMap::new());
        assert!(
            errs[0].message.contains("gateway bridge"),
            "{}",
            errs[0].message
        );
        let errs = check_network_change(None, &other_bridge);
        assert_eq!(errs[0].field, "spec.driver");
    }

    #[test]
    fn referenced_secrets_and_configs_must_exist() {
        use shoal_api_types::{ConfigReference, ConfigSpec, SecretReference, SecretSpec};
        let mut s = svc("api", &[], &[]);
        s.spec.secrets = vec![
            SecretReference {
                source: "pw".into(),
                ..Default::default()
            },
            SecretReference {
                source: "gone".into(),
                ..Default::default()
            },
        ];
        s.spec.configs = vec![ConfigReference {
            source: "conf".into(),
            ..Default::default()
        }];
        let secrets = [("pw".to_string(), Secret::new("pw", SecretSpec::default()))].into();
        let errs = check_service_payloads(&s, &secrets, &BTreeMap::new());
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.secrets[1].source", "spec.configs[0].source"]);
        assert!(errs[0].message.contains("secret \"gone\" does not exist"));
        let configs = [(
            "conf".to_string(),
            Config::new("conf", ConfigSpec::default()),
        )]
        .into();
        assert_eq!(check_service_payloads(&s, &secrets, &configs).len(), 1);
    }

    #[test]
    fn an_ingress_port_belongs_to_one_service_per_protocol() {
        use PublishMode::*;
        let web = svc("web", &[], &[(8080, Protocol::Tcp, Ingress)]);
        let errs = check_ports(&svc("api", &[], &[(8080, Protocol::Tcp, Ingress)]), [&web]);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.ports[0].published");
        assert_eq!(
            errs[0].message,
            "port 8080/tcp is already published by service web"
        );
        assert!(
            check_ports(&svc("api", &[], &[(8080, Protocol::Udp, Ingress)]), [&web]).is_empty()
        );
        // A service does not clash with its own earlier version.
        assert!(
            check_ports(&svc("web", &[], &[(8080, Protocol::Tcp, Ingress)]), [&web]).is_empty()
        );
    }

    #[test]
    fn a_health_port_belongs_to_one_service_and_is_nobodys_published_port() {
        use PublishMode::*;
        let with_health = |name: &str, published: u32, health: u32| {
            let mut s = svc(name, &[], &[(published, Protocol::Tcp, Ingress)]);
            s.spec.ports[0].traffic = shoal_api_types::TrafficPolicy::Local;
            s.spec.ports[0].health_port = Some(health);
            s
        };
        let web = with_health("web", 8080, 31001);
        let shown = |errs: Vec<FieldError>| -> Vec<String> {
            errs.iter().map(ToString::to_string).collect()
        };
        assert_eq!(
            shown(check_ports(&with_health("api", 8081, 31001), [&web])),
            ["spec.ports[0].healthPort: port 31001 is already the health port of service web"]
        );
        assert_eq!(
            shown(check_ports(&with_health("api", 8081, 8080), [&web])),
            ["spec.ports[0].healthPort: port 8080/tcp is already published by service web"]
        );
        assert_eq!(
            shown(check_ports(
                &svc("api", &[], &[(31001, Protocol::Tcp, Host)]),
                [&web]
            )),
            ["spec.ports[0].published: port 31001/tcp is the health port of service web"]
        );
        assert!(
            check_ports(&svc("api", &[], &[(31001, Protocol::Udp, Ingress)]), [&web]).is_empty()
        );
        assert!(check_ports(&with_health("web", 8080, 31001), [&web]).is_empty());
    }

    #[test]
    fn host_ports_repeat_but_never_share_a_number_with_ingress() {
        use PublishMode::*;
        let host = svc("h1", &[], &[(9000, Protocol::Tcp, Host)]);
        assert!(check_ports(&svc("h2", &[], &[(9000, Protocol::Tcp, Host)]), [&host]).is_empty());
        let errs = check_ports(&svc("i", &[], &[(9000, Protocol::Udp, Ingress)]), [&host]);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0]
                .message
                .starts_with("port 9000 is published in host mode by service h1"),
            "{}",
            errs[0].message
        );
        let ingress = svc("i", &[], &[(9000, Protocol::Tcp, Ingress)]);
        assert!(
            check_ports(&svc("h3", &[], &[(9000, Protocol::Tcp, Host)]), [&ingress])[0]
                .message
                .contains("in ingress mode by service i")
        );
    }

    #[test]
    fn networks_are_in_use_by_services_listing_them() {
        let services = [
            svc("worker", &["appnet"], &[]),
            svc("api", &["appnet", "other"], &[]),
            svc("lone", &[], &[]),
        ];
        let users = services_using(&net("appnet", None), &services);
        assert_eq!(users, ["api", "worker"]);
        assert_eq!(
            in_use_message("appnet", &users),
            "network appnet is in use by service(s): api, worker"
        );
        let mut ingress = net("ingress", None);
        ingress.spec.ingress = true;
        let publisher = svc("web", &[], &[(80, Protocol::Tcp, PublishMode::Ingress)]);
        assert_eq!(services_using(&ingress, &[publisher]), ["web"]);
    }
}
