//! Unit tests of the mesh rules planning ([`super::ingress_ports`], [`super::host_ports`],
//! [`super::ruleset`], [`super::MeshRules::health_answers`], [`super::MeshRules::without_pending`]): plain values, no kernel.

use super::*;
use shoal_api_types::endpoints::EndpointTask;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn task(ip: &str, ready: bool) -> EndpointTask {
    EndpointTask::new(&format!("pub.{ip}"), ip)
        .id(&format!("t-{ip}"))
        .ready(ready)
}

fn port(published: u32, target: u32, protocol: Protocol, mode: PublishMode) -> PortConfig {
    PortConfig {
        published,
        target,
        protocol,
        mode,
        ..Default::default()
    }
}

fn eps(network: &str, ports: Vec<PortConfig>, tasks: Vec<EndpointTask>) -> EndpointsSpec {
    EndpointsSpec {
        ports,
        ..EndpointsSpec::vip(network, "pub", "10.255.0.2").tasks(tasks)
    }
}

#[test]
fn ingress_ports_should_take_backends_from_every_slice_once_per_port() {
    let ports = vec![port(9091, 80, Protocol::Tcp, PublishMode::Ingress)];
    let slices: Vec<EndpointsSpec> = (0..3u32)
        .map(|n| EndpointsSpec {
            slice: n,
            ..eps(
                "ingress",
                ports.clone(),
                vec![task(&format!("10.255.0.{}", 5 + n), true)],
            )
        })
        .collect();
    let got = ingress_ports(slices.iter().rev(), &BTreeMap::new());
    assert_eq!(
        got,
        vec![MeshPort {
            protocol: Protocol::Tcp,
            published: 9091,
            target: 80,
            mode: PublishMode::Ingress,
            backends: vec![ip("10.255.0.5"), ip("10.255.0.6"), ip("10.255.0.7")],
            ..Default::default()
        }]
    );
}

#[test]
fn ingress_ports_should_map_published_to_target_on_ready_ingress_tasks() {
    let ingress = eps(
        "ingress",
        vec![
            port(9091, 80, Protocol::Tcp, PublishMode::Ingress),
            port(9092, 9000, Protocol::Udp, PublishMode::Ingress),
            port(8080, 80, Protocol::Tcp, PublishMode::Host),
        ],
        vec![
            task("10.255.0.6", true),
            task("10.255.0.5", true),
            task("10.255.0.7", false),
        ],
    );
    let other = eps(
        "appnet",
        vec![port(9093, 80, Protocol::Tcp, PublishMode::Ingress)],
        vec![task("10.0.1.5", true)],
    );
    let got = normalize(ingress_ports([&ingress, &other], &BTreeMap::new()));
    assert_eq!(
        got,
        vec![
            MeshPort {
                protocol: Protocol::Tcp,
                published: 9091,
                target: 80,
                mode: PublishMode::Ingress,
                backends: vec![ip("10.255.0.5"), ip("10.255.0.6")],
                ..Default::default()
            },
            MeshPort {
                protocol: Protocol::Udp,
                published: 9092,
                target: 9000,
                mode: PublishMode::Ingress,
                backends: vec![ip("10.255.0.5"), ip("10.255.0.6")],
                ..Default::default()
            },
        ]
    );
}

fn local_port(published: u32, health_port: Option<u32>) -> PortConfig {
    PortConfig {
        traffic: TrafficPolicy::Local,
        health_port,
        ..port(published, 80, Protocol::Tcp, PublishMode::Ingress)
    }
}

#[test]
fn local_ports_should_go_only_to_this_nodes_ready_tasks_at_their_gateway_address() {
    let ingress = eps(
        "ingress",
        vec![
            local_port(8080, Some(31001)),
            port(9091, 80, Protocol::Tcp, PublishMode::Ingress),
        ],
        vec![
            task("10.255.0.5", true),  // here, ready
            task("10.255.0.6", false), // here, not ready
            task("10.255.0.7", true),  // elsewhere
        ],
    );
    let here = BTreeMap::from([
        ("t-10.255.0.5".to_string(), ip("172.18.0.5")),
        ("t-10.255.0.6".to_string(), ip("172.18.0.6")),
        ("t-other-service".to_string(), ip("172.18.0.9")),
    ]);
    let got = normalize(ingress_ports([&ingress], &here));
    assert_eq!(
        got,
        vec![
            MeshPort {
                protocol: Protocol::Tcp,
                published: 8080,
                target: 80,
                mode: PublishMode::Ingress,
                traffic: TrafficPolicy::Local,
                health_port: Some(31001),
                backends: vec![ip("172.18.0.5")],
            },
            MeshPort {
                protocol: Protocol::Tcp,
                published: 9091,
                target: 80,
                mode: PublishMode::Ingress,
                backends: vec![ip("10.255.0.5"), ip("10.255.0.7")],
                ..Default::default()
            },
        ],
        "cluster ports keep every ready task's ingress IP"
    );
    // A node without a ready local task: the local port has no backend (refused).
    let elsewhere = normalize(ingress_ports([&ingress], &BTreeMap::new()));
    assert!(elsewhere[0].backends.is_empty());
    assert_eq!(elsewhere[0].health_port, Some(31001));
    // A health port on a cluster port (the API refuses it) is never served.
    let stray = eps(
        "ingress",
        vec![PortConfig {
            health_port: Some(31002),
            ..port(9093, 80, Protocol::Tcp, PublishMode::Ingress)
        }],
        vec![task("10.255.0.5", true)],
    );
    assert_eq!(ingress_ports([&stray], &here)[0].health_port, None);
}

#[test]
fn local_ports_should_dnat_to_the_local_task_without_snat_and_refuse_without_one() {
    let mut r = rules();
    r.ports = vec![
        MeshPort {
            published: 8080,
            target: 80,
            traffic: TrafficPolicy::Local,
            backends: vec![ip("172.18.0.5")],
            ..Default::default()
        },
        MeshPort {
            published: 8081,
            target: 80,
            traffic: TrafficPolicy::Local,
            backends: vec![],
            ..Default::default()
        },
    ];
    let doc = ruleset(&r);
    assert_eq!(
        programmed_ports(&doc),
        [("tcp".to_string(), 8080), ("tcp".to_string(), 8081)]
    );
    let text = doc.to_string();
    assert!(
        text.contains(r#"[{"concat":["tcp",8081]},{"goto":{"target":"refuse"}}]"#),
        "{text}"
    );
    let objs = doc["nftables"].as_array().unwrap();
    let rules: Vec<&Value> = objs.iter().filter_map(|o| o.pointer("/add/rule")).collect();
    let port0: Vec<&&Value> = rules.iter().filter(|r| r["chain"] == "port_0").collect();
    assert_eq!(
        port0[0]["expr"][1]["dnat"],
        json!({"addr": {"map": {"key": {"numgen": {"mode": "inc", "mod": 1, "offset": 0}},
            "data": {"set": [[0, "172.18.0.5"]]}}}, "port": 80})
    );
    // The only SNAT is into the ingress overlay, which a local backend is never behind:
    // nothing rewrites the client's address on the way to the gateway bridge.
    let post: Vec<&&Value> = rules
        .iter()
        .filter(|r| r["chain"] == "postrouting")
        .collect();
    assert_eq!(post.len(), 1);
    assert_eq!(post[0]["expr"][0]["match"]["right"], "shb-4096");
    assert!(!text.contains("masquerade"), "{text}");
}

#[test]
fn health_answers_should_count_the_local_backends_of_programmed_local_ports() {
    let local = |published: u16, health: u16, n: usize| MeshPort {
        published,
        target: 80,
        traffic: TrafficPolicy::Local,
        health_port: Some(health),
        backends: (0..n)
            .map(|i| Ipv4Addr::new(172, 18, 0, 5 + i as u8))
            .collect(),
        ..Default::default()
    };
    let mut r = rules();
    r.ports = vec![
        local(8080, 31001, 2),
        local(8081, 31002, 0),
        local(8082, 22, 1),    // reserved health port
        local(2379, 31003, 1), // reserved published port
        MeshPort {
            health_port: Some(31004),
            ..rules().ports[1].clone() // a cluster port: no health port
        },
    ];
    r.reserved = node_reserved_ports(None, &[]);
    assert_eq!(r.health_answers(), BTreeMap::from([(31001, 2), (31002, 0)]));
    let no_ingress = MeshRules {
        ingress: None,
        ..r.clone()
    };
    assert!(
        no_ingress.health_answers().is_empty(),
        "no ingress port is programmed yet"
    );
    let no_address = MeshRules {
        node_address: None,
        ..r
    };
    assert!(no_address.health_answers().is_empty());
}

#[test]
fn host_ports_should_go_to_the_local_tasks_gateway_address_only() {
    let ports = vec![
        port(8080, 80, Protocol::Tcp, PublishMode::Host),
        port(9091, 80, Protocol::Tcp, PublishMode::Ingress),
    ];
    let none: Vec<PortConfig> = vec![];
    let got = host_ports([
        ("b", ports.as_slice(), Some(ip("172.18.0.3"))),
        ("a", none.as_slice(), Some(ip("172.18.0.2"))),
        ("c", ports.as_slice(), None),
    ]);
    assert_eq!(
        got,
        vec![MeshPort {
            protocol: Protocol::Tcp,
            published: 8080,
            target: 80,
            mode: PublishMode::Host,
            backends: vec![ip("172.18.0.3")],
            ..Default::default()
        }]
    );
}

fn rules() -> MeshRules {
    MeshRules {
        reserved: BTreeSet::new(),
        node_address: Some(ip("198.18.0.2")),
        ingress: Some(("shb-4096".into(), ip("10.255.0.3"))),
        ports: vec![
            MeshPort {
                protocol: Protocol::Udp,
                published: 9092,
                target: 9000,
                mode: PublishMode::Ingress,
                backends: vec![],
                ..Default::default()
            },
            MeshPort {
                protocol: Protocol::Tcp,
                published: 9091,
                target: 80,
                mode: PublishMode::Ingress,
                backends: vec![ip("10.255.0.6"), ip("10.255.0.5")],
                ..Default::default()
            },
            MeshPort {
                protocol: Protocol::Tcp,
                published: 8080,
                target: 80,
                mode: PublishMode::Host,
                backends: vec![ip("172.18.0.2")],
                ..Default::default()
            },
        ],
    }
}

#[test]
fn without_pending_should_drop_unreachable_backends_and_keep_a_port_that_would_have_none() {
    let programmed = rules();
    let pending: BTreeSet<Ipv4Addr> = [ip("10.255.0.7"), ip("10.255.0.8")].into();
    let set = |r: &mut MeshRules, published: u16, backends: &[&str]| {
        let p = r
            .ports
            .iter_mut()
            .find(|p| p.published == published)
            .unwrap();
        p.backends = backends.iter().map(|b| ip(b)).collect();
    };
    // 9091: 10.255.0.6 removed, 10.255.0.7 (pending) added; 9092: only a pending backend,
    // and none programmed before.
    let mut next = rules();
    set(&mut next, 9091, &["10.255.0.5", "10.255.0.7"]);
    set(&mut next, 9092, &["10.255.0.8"]);
    let now = next.without_pending(&pending, Some(&programmed));
    let backends = |r: &MeshRules, published: u16| {
        r.ports
            .iter()
            .find(|p| p.published == published)
            .map(|p| p.backends.clone())
    };
    assert_eq!(
        backends(&now, 9091),
        Some(vec![ip("10.255.0.5")]),
        "the removal applies, the addition waits"
    );
    assert_eq!(
        backends(&now, 9092),
        Some(vec![]),
        "kept as programmed (refusing)"
    );
    assert_eq!(backends(&now, 8080), Some(vec![ip("172.18.0.2")]));
    assert_eq!(now.node_address, next.node_address);
    // Every backend replaced by pending ones: the port stays as programmed meanwhile.
    let mut next = rules();
    set(&mut next, 9091, &["10.255.0.7", "10.255.0.8"]);
    let now = next.without_pending(&pending, Some(&programmed));
    assert_eq!(backends(&now, 9091), backends(&programmed, 9091));
    // A new port whose backends are all pending is left out until they are reachable.
    let now = next.without_pending(&pending, None);
    assert_eq!(backends(&now, 9091), None);
    // Nothing pending: the rules themselves.
    assert_eq!(
        next.without_pending(&BTreeSet::new(), Some(&programmed)),
        next
    );
}

#[test]
fn ruleset_should_replace_the_table_with_one_verdict_map_and_a_chain_per_port() {
    let doc = ruleset(&rules());
    let objs = doc["nftables"].as_array().unwrap();
    // add + delete + add: replaces whatever was there, in one transaction.
    assert_eq!(
        objs[0],
        json!({"add": {"table": {"family": "ip", "name": "shoal_mesh"}}})
    );
    assert_eq!(
        objs[1],
        json!({"delete": {"table": {"family": "ip", "name": "shoal_mesh"}}})
    );
    let map = objs
        .iter()
        .find_map(|o| o.pointer("/add/map"))
        .expect("the ports map");
    assert_eq!(
        map["elem"],
        json!([
            [{"concat": ["tcp", 8080]}, {"goto": {"target": "port_0"}}],
            [{"concat": ["tcp", 9091]}, {"goto": {"target": "port_1"}}],
            [{"concat": ["udp", 9092]}, {"goto": {"target": "refuse"}}]
        ])
    );
    let rules: Vec<&Value> = objs.iter().filter_map(|o| o.pointer("/add/rule")).collect();
    let in_chain =
        |c: &str| -> Vec<&Value> { rules.iter().copied().filter(|r| r["chain"] == c).collect() };
    // Arriving traffic and the node's own, to its underlay address, one lookup each.
    for chain in ["prerouting", "output"] {
        let r = in_chain(chain);
        assert_eq!(r.len(), 1, "{chain}");
        assert_eq!(r[0]["expr"][0]["match"]["right"], "198.18.0.2");
        assert_eq!(r[0]["expr"][2]["vmap"]["data"], "@ports");
    }
    // Ingress: round robin over the ready tasks (sorted), published 9091 -> target 80.
    assert_eq!(
        in_chain("port_1")[0]["expr"],
        json!([
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
            {"dnat": {"addr": {"map": {"key": {"numgen": {"mode": "inc", "mod": 2, "offset": 0}},
                "data": {"set": [[0, "10.255.0.5"], [1, "10.255.0.6"]]}}}, "port": 80}}
        ])
    );
    // Host: the local task's gateway address.
    assert_eq!(
        in_chain("port_0")[0]["expr"][1]["dnat"]["addr"]["map"]["data"],
        json!({"set": [[0, "172.18.0.2"]]})
    );
    // SNAT to the node's ingress address for what goes into the ingress overlay.
    assert_eq!(
        in_chain("postrouting")[0]["expr"],
        json!([
            {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "shb-4096"}},
            {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
            {"snat": {"addr": "10.255.0.3"}}
        ])
    );
    assert_eq!(in_chain("refuse").len(), 2);
    // Chains exist before the map that names them.
    let pos = |pred: &dyn Fn(&Value) -> bool| objs.iter().position(pred).unwrap();
    assert!(
        pos(&|o| o.pointer("/add/chain/name") == Some(&json!("port_1")))
            < pos(&|o| o.pointer("/add/map").is_some())
    );
    // Same input, same document.
    assert_eq!(doc, ruleset(&self::rules()));
}

#[test]
fn ruleset_without_ingress_address_keeps_host_ports_only() {
    let mut r = rules();
    r.ingress = None;
    let doc = ruleset(&r);
    let map = doc["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| o.pointer("/add/map"))
        .unwrap()
        .clone();
    assert_eq!(
        map["elem"],
        json!([[{"concat": ["tcp", 8080]}, {"goto": {"target": "port_0"}}]])
    );
    assert!(!doc.to_string().contains("snat"));
}

/// Every (protocol, port) the document dispatches on.
fn programmed_ports(doc: &Value) -> Vec<(String, u64)> {
    let map = doc["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| o.pointer("/add/map"))
        .expect("the ports map");
    map["elem"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let c = &e[0]["concat"];
            (c[0].as_str().unwrap().to_string(), c[1].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn ruleset_should_never_contain_a_reserved_port_in_either_mode() {
    let mut r = rules();
    let reserved_ingress = |published: u16, protocol| MeshPort {
        protocol,
        published,
        target: 80,
        mode: PublishMode::Ingress,
        backends: vec![ip("10.255.0.5")],
        ..Default::default()
    };
    r.ports.push(reserved_ingress(4789, Protocol::Udp));
    r.ports.push(reserved_ingress(2379, Protocol::Tcp));
    r.ports.push(MeshPort {
        mode: PublishMode::Host,
        backends: vec![ip("172.18.0.2")],
        ..reserved_ingress(22, Protocol::Tcp)
    });
    r.ports.push(reserved_ingress(7801, Protocol::Tcp));
    r.reserved = node_reserved_ports(None, &[ReservedPort::tcp(7801)]);
    let doc = ruleset(&r);
    assert_eq!(
        programmed_ports(&doc),
        [
            ("tcp".to_string(), 8080),
            ("tcp".to_string(), 9091),
            ("udp".to_string(), 9092)
        ]
    );
    let text = doc.to_string();
    for gone in ["4789", "2379", "7801"] {
        assert!(!text.contains(gone), "{gone} in {text}");
    }
    let mut skipped: Vec<String> = r.skipped().map(|p| p.key().to_string()).collect();
    skipped.sort();
    assert_eq!(skipped, ["22/tcp", "2379/tcp", "4789/udp", "7801/tcp"]);
}

#[test]
fn the_node_reserves_vxlan_and_its_own_ports_even_when_the_cluster_reserves_nothing() {
    let none = ClusterSettingsSpec::default();
    assert_eq!(
        node_reserved_ports(Some(&none), &[ReservedPort::tcp(7801)])
            .into_iter()
            .collect::<Vec<_>>(),
        [ReservedPort::udp(4789), ReservedPort::tcp(7801)]
    );
    // Unknown settings: the defaults.
    let defaults = node_reserved_ports(None, &[]);
    assert!(defaults.contains(&ReservedPort::tcp(22)));
    assert!(defaults.contains(&ReservedPort::tcp(2379)));
    let custom = ClusterSettingsSpec::with_reserved_ports([ReservedPort::tcp(23790)]);
    assert!(node_reserved_ports(Some(&custom), &[]).contains(&ReservedPort::tcp(23790)));
    assert!(!node_reserved_ports(Some(&custom), &[]).contains(&ReservedPort::tcp(22)));
}

#[test]
fn ruleset_without_node_address_is_an_empty_table() {
    let doc = ruleset(&MeshRules::default());
    assert_eq!(doc["nftables"].as_array().unwrap().len(), 3);
    assert!(MeshRules::default().is_empty());
    assert_eq!(
        delete_ruleset()["nftables"][1],
        json!({"delete": {"table": {"family": "ip", "name": "shoal_mesh"}}})
    );
}

#[tokio::test]
async fn recording_mesh_remembers_the_last_rules() {
    let m = RecordingMesh::default();
    m.program(&rules()).await.unwrap();
    assert_eq!(m.rules(), Some(rules()));
    assert_eq!(m.programs(), 1);
    m.remove().await.unwrap();
    assert_eq!(m.rules(), None);
}
