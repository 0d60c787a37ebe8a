//! VIP load balancing in real namespaces (root only; skipped with a message otherwise): a
//! "task" namespace and two "backend" namespaces behind a bridge in a fourth namespace, all
//! made by the test and deleted by a guard. Connections from the task to VIP:80 are spread
//! over both backends; replacing the backends is atomic; no backend → refused at once; a
//! change touches only the service that changed; drift is repaired by a full write; a
//! client back on the source port of a SYN a dropped backend never answered reaches a
//! backend the table has (VIP tables and the routing mesh).

#[path = "lb_support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_api_types::service::Protocol;
use shoal_node_agent::lb::socket::SocketLb;
use shoal_node_agent::lb::{self, Converged, LoadBalancer, NftLoadBalancer, VipEntry};
use support::{in_ns, sh, Namespaces, Responder};

const VIP: &str = "10.77.0.100";

/// Open `n` connections to `vips` in turn (port 80) from inside `ns`; count the replies per
/// (VIP, backend).
fn spread_over(ns: &str, vips: &[&str], n: usize) -> BTreeMap<String, usize> {
    let targets: Vec<SocketAddr> = vips
        .iter()
        .map(|v| format!("{v}:80").parse().unwrap())
        .collect();
    let single = targets.len() == 1;
    in_ns(ns, move || {
        let mut seen = BTreeMap::new();
        for i in 0..n {
            let to = targets[i % targets.len()];
            let mut s =
                TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connect to VIP");
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).expect("read reply");
            let key = if single {
                reply
            } else {
                format!("{} {reply}", to.ip())
            };
            *seen.entry(key).or_insert(0) += 1;
        }
        seen
    })
}

/// Open `n` connections to VIP:80 from inside `ns`; count the replies per backend.
fn spread(ns: &str, n: usize) -> BTreeMap<String, usize> {
    spread_over(ns, &[VIP], n)
}

fn entry(backends: &[&str]) -> VipEntry {
    VipEntry {
        vip: VIP.parse().unwrap(),
        protocol: Protocol::Tcp,
        port: None,
        backends: backends
            .iter()
            .map(|b| b.parse::<Ipv4Addr>().unwrap())
            .collect(),
    }
}

/// A "task" namespace at 10.77.0.2 and two backends on a switch, b1 at 10.77.0.3 and b2
/// at 10.77.0.4, answering "b1" and "b2" on port 80: (the namespaces, the task's name, b1's
/// name, the responders). The responders go before the namespaces.
fn task_and_two_backends() -> (Namespaces, String, String, [Responder; 2]) {
    let mut nss = Namespaces::new();
    let switch = nss.add("sw");
    let task = nss.add("task");
    let b1 = nss.add("b1");
    let b2 = nss.add("b2");
    support::wire(
        &switch,
        &[
            (&task, "10.77.0.2/24"),
            (&b1, "10.77.0.3/24"),
            (&b2, "10.77.0.4/24"),
        ],
    );
    let r1 = Responder::start(&b1, "0.0.0.0:80".parse().unwrap(), "b1");
    let r2 = Responder::start(&b2, "0.0.0.0:80".parse().unwrap(), "b2");
    (nss, task, b1, [r1, r2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_spreads_vip_connections_over_backends_and_updates_atomically() {
    shoal_testkit::require!(root, tools = ["ip", "nft"]);
    let (_nss, task, b1, _backends) = task_and_two_backends();
    let task_path = Namespaces::path(&task);

    let root_tables_before = support::try_sh(&["nft", "list", "tables"]).1;

    // Nothing programmed yet.
    assert_eq!(lb::read_programmed(Some(&task_path)).await.unwrap(), None);

    // Two backends: 40 connections reach both, evenly.
    let two = vec![
        entry(&["10.77.0.3", "10.77.0.4"]),
        VipEntry {
            protocol: Protocol::Udp,
            ..entry(&["10.77.0.3", "10.77.0.4"])
        },
    ];
    lb::program(Some(&task_path), &two).await.unwrap();
    assert_eq!(
        lb::read_programmed(Some(&task_path)).await.unwrap(),
        Some(lb::normalize(two.clone()))
    );
    let seen = spread(&task, 40);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["b1", "b2"], "{seen:?}");
    assert!(seen.values().all(|&n| n >= 10), "uneven: {seen:?}");

    // The rules live in the task namespace only.
    assert_eq!(
        support::try_sh(&["nft", "list", "tables"]).1,
        root_tables_before,
        "the root namespace's tables changed"
    );
    assert!(sh(&["ip", "netns", "exec", &b1, "nft", "list", "tables"]).is_empty());

    // Two services used alternately each keep their own round robin.
    let vip2 = VipEntry {
        vip: "10.77.0.101".parse().unwrap(),
        ..entry(&["10.77.0.3", "10.77.0.4"])
    };
    lb::program(
        Some(&task_path),
        &[entry(&["10.77.0.3", "10.77.0.4"]), vip2],
    )
    .await
    .unwrap();
    let seen = spread_over(&task, &[VIP, "10.77.0.101"], 40);
    assert_eq!(seen.len(), 4, "each VIP reaches both backends: {seen:?}");

    // One backend, replaced in one transaction: everything goes to b2.
    lb::program(Some(&task_path), &[entry(&["10.77.0.4"])])
        .await
        .unwrap();
    let seen = spread(&task, 20);
    assert_eq!(seen, BTreeMap::from([("b2".to_owned(), 20)]));

    // A port entry overrides the whole-VIP entry for that port.
    lb::program(
        Some(&task_path),
        &[
            entry(&["10.77.0.4"]),
            VipEntry {
                port: Some(80),
                ..entry(&["10.77.0.3"])
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(spread(&task, 5), BTreeMap::from([("b1".to_owned(), 5)]));

    // No backend: refused at once, not a black hole.
    lb::program(Some(&task_path), &[entry(&[])]).await.unwrap();
    let (err, took) = in_ns(&task, || {
        let start = Instant::now();
        let r = TcpStream::connect_timeout(
            &format!("{VIP}:80").parse().unwrap(),
            Duration::from_secs(3),
        );
        (r.err().map(|e| e.kind()), start.elapsed())
    });
    assert_eq!(err, Some(std::io::ErrorKind::ConnectionRefused));
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // Removal leaves nothing of ours; removing twice is fine.
    lb::remove(Some(&task_path)).await.unwrap();
    lb::remove(Some(&task_path)).await.unwrap();
    assert_eq!(lb::read_programmed(Some(&task_path)).await.unwrap(), None);
}

/// A namespace `client` at 10.77.0.2 on a switch with a live backend, b2 at 10.77.0.4
/// (it answers "b2"), and a dead one, 10.77.0.9, whose frames go out and are never
/// answered: (the namespaces, the client's name, b2's responder). Drop the responder first.
fn dead_and_live(client: &str) -> (Namespaces, String, Responder) {
    let mut nss = Namespaces::new();
    let switch = nss.add("sw");
    let client = nss.add(client);
    let b2 = nss.add("b2");
    support::wire(&switch, &[(&client, "10.77.0.2/24"), (&b2, "10.77.0.4/24")]);
    let responder = Responder::start(&b2, "0.0.0.0:80".parse().unwrap(), "b2");
    let neigh = "neigh add 10.77.0.9 lladdr 02:00:00:00:00:09 dev eth0 nud permanent";
    let mut args = vec!["ip", "-n", &client];
    args.extend(neigh.split(' '));
    sh(&args);
    (nss, client, responder)
}

/// One connection to VIP:80 from inside `ns`, from source port `port`.
fn from_port(ns: &str, port: u16, timeout: Duration) -> Result<String, String> {
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    connect_from_port(ns, port, vip, timeout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_should_not_send_a_reused_source_port_to_a_backend_it_dropped() {
    shoal_testkit::require!(root, tools = ["ip", "nft"]);
    let (_nss, task, _b2) = dead_and_live("task");
    let task_path = Namespaces::path(&task);
    let dead = [entry(&["10.77.0.9"])];
    let live = [entry(&["10.77.0.4"])];
    let quick = Duration::from_millis(500);
    // Long enough for two SYNs (the second goes 1 s after the first).
    let patient = Duration::from_secs(3);

    // An incremental change. The SYN from port 40000 went to the dead backend and left a
    // conntrack entry behind; the same port after the change must reach the live one.
    lb::program(Some(&task_path), &dead).await.unwrap();
    assert!(
        from_port(&task, 40000, quick).is_err(),
        "the dead backend answered"
    );
    lb::update(Some(&task_path), &dead, &live).await.unwrap();
    assert_eq!(from_port(&task, 40000, patient), Ok("b2".to_owned()));

    // A full write.
    lb::program(Some(&task_path), &dead).await.unwrap();
    assert!(
        from_port(&task, 40002, quick).is_err(),
        "the dead backend answered"
    );
    lb::program(Some(&task_path), &live).await.unwrap();
    assert_eq!(from_port(&task, 40002, patient), Ok("b2".to_owned()));
}

/// The kernel handle of each counter chain in the namespace at `path`.
fn chain_handles(ns: &str) -> BTreeMap<String, u64> {
    let out = sh(&[
        "ip", "netns", "exec", ns, "nft", "-j", "list", "table", "ip", "shoal_lb",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    doc["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("chain"))
        .filter(|c| c["name"].as_str().unwrap().starts_with("svc_"))
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["handle"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_changes_only_what_changed_and_repairs_drift_with_a_full_write() {
    shoal_testkit::require!(root, tools = ["ip", "nft"]);
    let (_nss, task, _, _backends) = task_and_two_backends();
    let path = Namespaces::path(&task);
    let other = |backends: &[&str]| VipEntry {
        vip: "10.77.0.101".parse().unwrap(),
        ..entry(backends)
    };
    let lb = NftLoadBalancer;

    // Nothing known: written whole.
    let first = lb::normalize([entry(&["10.77.0.3", "10.77.0.4"]), other(&["10.77.0.3"])]);
    assert_eq!(
        lb::converge(&lb, &path, None, &first).await.unwrap(),
        Converged::Rewritten
    );
    let handles = chain_handles(&task);
    assert_eq!(handles.len(), 2, "{handles:?}");

    // One service changes: only its elements and chains; the other's chain is the same
    // kernel object (same handle), so its round-robin counter went on.
    let second = lb::normalize([entry(&["10.77.0.4"]), other(&["10.77.0.3"])]);
    assert_eq!(
        lb::converge(&lb, &path, Some(&first), &second)
            .await
            .unwrap(),
        Converged::Changed
    );
    assert_eq!(
        lb::read_programmed(Some(&path)).await.unwrap(),
        Some(second.clone())
    );
    let after = chain_handles(&task);
    let other_chain = lb::service_chain("10.77.0.101".parse().unwrap(), 1, false);
    assert_eq!(after.get(&other_chain), handles.get(&other_chain));
    assert!(!after.contains_key(&lb::service_chain(VIP.parse().unwrap(), 2, false)));
    assert_eq!(spread(&task, 10), BTreeMap::from([("b2".to_owned(), 10)]));
    assert_eq!(
        spread_over(&task, &["10.77.0.101"], 4),
        BTreeMap::from([("b1".to_owned(), 4)])
    );

    // A stale element appears behind the agent's back (a backend beyond the counter) and a
    // foreign verdict: the read-back sees drift, and a full write repairs it.
    sh(&[
        "ip",
        "netns",
        "exec",
        &task,
        "nft",
        "add",
        "element",
        "ip",
        "shoal_lb",
        "backends",
        "{ 10.77.0.100 . tcp . 7 : 10.77.0.9 }",
    ]);
    assert!(lb::read_programmed(Some(&path)).await.is_err());
    assert_eq!(
        lb::converge(&lb, &path, None, &second).await.unwrap(),
        Converged::Rewritten
    );
    assert_eq!(
        lb::read_programmed(Some(&path)).await.unwrap(),
        Some(second.clone())
    );
    sh(&[
        "ip",
        "netns",
        "exec",
        &task,
        "nft",
        "add",
        "element",
        "ip",
        "shoal_lb",
        "vips",
        "{ 10.77.0.200 . tcp : goto refuse }",
    ]);
    assert_ne!(
        lb::read_programmed(Some(&path)).await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(
        lb::converge(&lb, &path, None, &second).await.unwrap(),
        Converged::Rewritten
    );
    assert_eq!(
        lb::read_programmed(Some(&path)).await.unwrap(),
        Some(second.clone())
    );
    // In step: nothing to do.
    assert_eq!(
        lb::converge(&lb, &path, None, &second).await.unwrap(),
        Converged::Unchanged
    );

    // A cache that is wrong (it claims a service the table does not have): nft refuses the
    // change as a whole, and the table is written whole instead.
    let wrong = lb::normalize([entry(&["10.77.0.4"]), other(&["10.77.0.3"]), {
        VipEntry {
            vip: "10.77.0.102".parse().unwrap(),
            ..entry(&["10.77.0.3"])
        }
    }]);
    let third = lb::normalize([entry(&["10.77.0.3", "10.77.0.4"])]);
    assert!(lb::update(Some(&path), &wrong, &third).await.is_err());
    assert_eq!(
        lb::read_programmed(Some(&path)).await.unwrap(),
        Some(second.clone()),
        "a refused change changes nothing"
    );
    assert_eq!(
        lb::converge(&lb, &path, Some(&wrong), &third)
            .await
            .unwrap(),
        Converged::Rewritten
    );
    assert_eq!(lb::read_programmed(Some(&path)).await.unwrap(), Some(third));
    let seen = spread(&task, 20);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["b1", "b2"], "{seen:?}");
}

#[tokio::test]
async fn lb_programs_ten_thousand_services_in_one_transaction() {
    shoal_testkit::require!(root, tools = ["ip", "nft"]);
    let mut nss = Namespaces::new();
    let task = nss.add("big");
    let path = Namespaces::path(&task);
    let entries: Vec<VipEntry> = (0..10_000u32)
        .flat_map(|i| {
            let vip = Ipv4Addr::from(0x0a00_0000 + i + 2);
            let backends = vec![
                Ipv4Addr::from(0x0b00_0000 + 2 * i),
                Ipv4Addr::from(0x0b00_0000 + 2 * i + 1),
            ];
            [Protocol::Tcp, Protocol::Udp].map(|protocol| VipEntry {
                vip,
                protocol,
                port: None,
                backends: backends.clone(),
            })
        })
        .collect();
    let started = Instant::now();
    lb::program(Some(&path), &entries).await.unwrap();
    eprintln!(
        "programmed 10,000 services ({} entries) in {:?}",
        entries.len(),
        started.elapsed()
    );
    let started = Instant::now();
    let back = lb::read_programmed(Some(&path)).await.unwrap().unwrap();
    eprintln!("read back in {:?}", started.elapsed());
    let entries = lb::normalize(entries);
    assert_eq!(back, entries);
    // One service gets a third backend: one small transaction.
    let mut changed = entries.clone();
    for e in changed.iter_mut().take(2) {
        e.backends.push(Ipv4Addr::new(12, 0, 0, 1));
    }
    let started = Instant::now();
    lb::update(Some(&path), &entries, &changed).await.unwrap();
    eprintln!("changed one service in {:?}", started.elapsed());
    assert_eq!(
        lb::read_programmed(Some(&path)).await.unwrap().unwrap(),
        changed
    );
}

/// `base` unchanging services, and 50 more whose backends, counts (0 to 3) and port
/// entries depend on `shift`: between two shifts, every kind of change at once.
fn varied(base: u32, shift: u32) -> Vec<VipEntry> {
    let fixed = (0..base).flat_map(|i| {
        let vip = Ipv4Addr::from(0x0a10_0000 + i);
        let backends = vec![Ipv4Addr::from(0x0b10_0000 + 2 * i)];
        [Protocol::Tcp, Protocol::Udp].map(|protocol| VipEntry {
            vip,
            protocol,
            port: None,
            backends: backends.clone(),
        })
    });
    let moving = (0..50u32).flat_map(|i| {
        let vip = Ipv4Addr::from(0x0a00_0000 + i + shift / 7);
        let n = ((i + shift) % 4) as usize;
        let backends: Vec<Ipv4Addr> = (0..n)
            .map(|k| Ipv4Addr::from(0x0b00_0000 + i * 8 + k as u32 + shift % 3))
            .collect();
        let port = (i % 5 == 0).then_some(80 + (shift % 2) as u16);
        [Protocol::Tcp, Protocol::Udp].map(|protocol| VipEntry {
            vip,
            protocol,
            port,
            backends: backends.clone(),
        })
    });
    lb::normalize(fixed.chain(moving))
}

#[tokio::test]
async fn lb_changes_to_a_big_table_leave_exactly_the_wanted_table() {
    shoal_testkit::require!(root, tools = ["ip", "nft"]);
    let mut nss = Namespaces::new();
    let task = nss.add("chg");
    let path = Namespaces::path(&task);
    let mut now = varied(3_000, 0);
    lb::program(Some(&path), &now).await.unwrap();
    let before = chain_handles(&task);
    for shift in [1, 0, 9, 22, 5] {
        let next = varied(3_000, shift);
        lb::update(Some(&path), &now, &next).await.unwrap();
        assert_eq!(
            lb::read_programmed(Some(&path)).await.unwrap().as_ref(),
            Some(&next),
            "after the change to {shift}"
        );
        now = next;
    }
    // The unchanging services' counter chains are the objects the full write made.
    let after = chain_handles(&task);
    let fixed = lb::service_chain(Ipv4Addr::from(0x0a10_0000 + 17), 1, false);
    assert_eq!(after.get(&fixed), before.get(&fixed));
    assert!(after.contains_key(&fixed));
    // A change from what the table does not hold (a service it never had) is refused
    // whole: the other half of it (a new service) is not applied either.
    let ghost = |vip: &str| VipEntry {
        vip: vip.parse().unwrap(),
        ..entry(&["10.77.0.3"])
    };
    let mut stale = now.clone();
    stale.push(ghost("10.200.0.1"));
    let mut wanted = now.clone();
    wanted.push(ghost("10.200.0.2"));
    let err = lb::update(Some(&path), &lb::normalize(stale), &lb::normalize(wanted))
        .await
        .unwrap_err();
    eprintln!("refused as expected: {err}");
    assert_eq!(
        lb::read_programmed(Some(&path)).await.unwrap(),
        Some(now),
        "a refused change changes nothing"
    );
}

/// `nft -j list table ip shoal_lb` in `ns`, without the kernel's handles.
fn listed_without_handles(ns: &str) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("handle");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let out = sh(&[
        "ip", "netns", "exec", ns, "nft", "-j", "list", "table", "ip", "shoal_lb",
    ]);
    let mut doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    strip(&mut doc);
    doc
}

#[tokio::test]
async fn lb_netlink_write_is_the_table_nft_writes_for_the_script() {
    shoal_testkit::require!(root, tools = ["ip", "nft"]);
    let mut nss = Namespaces::new();
    let by_nft = nss.add("nft");
    let by_netlink = nss.add("nl");
    // Every kind of entry: whole-VIP with 2 backends, a port entry, a refusing one.
    let entries = lb::normalize(varied(3, 9).into_iter().chain([
        entry(&["10.77.0.3", "10.77.0.4"]),
        VipEntry {
            port: Some(53),
            protocol: Protocol::Udp,
            ..entry(&["10.77.0.5"])
        },
        VipEntry {
            vip: "10.77.0.104".parse().unwrap(),
            ..entry(&[])
        },
    ]));
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), lb::ruleset(&entries)).unwrap();
    let script = script.path().to_str().unwrap();
    sh(&["ip", "netns", "exec", &by_nft, "nft", "-f", script]);
    lb::program(Some(&Namespaces::path(&by_netlink)), &entries)
        .await
        .unwrap();
    assert_eq!(
        listed_without_handles(&by_netlink),
        listed_without_handles(&by_nft)
    );
    // And both read back as the entries.
    for ns in [&by_nft, &by_netlink] {
        assert_eq!(
            lb::read_programmed(Some(&Namespaces::path(ns)))
                .await
                .unwrap(),
            Some(entries.clone())
        );
    }
    // Removal over netlink leaves nothing; twice is fine.
    let path = Namespaces::path(&by_netlink);
    lb::remove(Some(&path)).await.unwrap();
    lb::remove(Some(&path)).await.unwrap();
    assert_eq!(lb::read_programmed(Some(&path)).await.unwrap(), None);
}

/// One connection to `to` from inside `ns`, from source port `port`: the reply, or why it
/// failed.
fn connect_from_port(
    ns: &str,
    port: u16,
    to: SocketAddr,
    timeout: Duration,
) -> Result<String, String> {
    in_ns(ns, move || {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
        s.set_reuse_address(true).map_err(|e| e.to_string())?;
        let local = SocketAddr::from(([0, 0, 0, 0], port));
        s.bind(&local.into()).map_err(|e| format!("bind: {e}"))?;
        s.connect_timeout(&to.into(), timeout)
            .map_err(|e| format!("connect: {e}"))?;
        let mut s = TcpStream::from(s);
        s.set_read_timeout(Some(timeout)).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .map_err(|e| format!("read: {e}"))?;
        Ok(reply)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_should_not_send_a_reused_source_port_to_a_backend_it_dropped() {
    use shoal_api_types::service::{PublishMode, TrafficPolicy};
    use shoal_node_agent::mesh::{Mesh, MeshPort, MeshRules, NftMesh};
    shoal_testkit::require!(root, tools = ["ip", "nft"]);
    let (_nss, node, _b2) = dead_and_live("node");
    let mesh = NftMesh::new(Some(Namespaces::path(&node)));
    let rules = |backend: &str| MeshRules {
        node_address: Some("10.77.0.2".parse().unwrap()),
        ports: vec![MeshPort {
            protocol: Protocol::Tcp,
            published: 8080,
            target: 80,
            mode: PublishMode::Host,
            traffic: TrafficPolicy::Cluster,
            health_port: None,
            backends: vec![backend.parse().unwrap()],
        }],
        ..Default::default()
    };
    let published: SocketAddr = "10.77.0.2:8080".parse().unwrap();

    // The node itself connects to its published port (the output hook): the first SYN from
    // port 40000 goes to the dead backend; after the change the same port reaches b2.
    mesh.program(&rules("10.77.0.9")).await.unwrap();
    assert!(
        connect_from_port(&node, 40000, published, Duration::from_millis(500)).is_err(),
        "the dead backend answered"
    );
    mesh.program(&rules("10.77.0.4")).await.unwrap();
    assert_eq!(
        connect_from_port(&node, 40000, published, Duration::from_secs(3)),
        Ok("b2".to_owned())
    );
    mesh.remove().await.unwrap();
}

/// A cgroup v2 directory made for one test (`name`); dropping kills what runs in it and
/// removes it, also when the test failed.
struct TestCgroup(std::path::PathBuf);

impl TestCgroup {
    fn new(name: &str) -> Self {
        let parent = format!("/shoal-test-socklb-{}-{name}", std::process::id());
        let dir = lb::socket::cgroup_dir(&parent).expect("cgroup v2 (the unified hierarchy)");
        std::fs::create_dir_all(&dir).expect("make the test cgroup");
        TestCgroup(dir)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One TCP connection to VIP:80 from a process in namespace `ns`, started in `cgroup` when
/// given (as a task's processes are) or in the test's own otherwise: the backend's reply, or
/// `Err` with what busybox nc printed.
fn connect_from(ns: &str, cgroup: Option<&TestCgroup>) -> Result<String, String> {
    connect_waiting(ns, cgroup.map(|c| c.0.as_path()), 1)
}

/// [`connect_from`] with the cgroup's directory, giving up after `secs`.
fn connect_waiting(ns: &str, cgroup: Option<&Path>, secs: u32) -> Result<String, String> {
    let join = cgroup
        .map(|c| format!("echo $$ > {}/cgroup.procs && ", c.display()))
        .unwrap_or_default();
    let script = format!("{join}exec ip netns exec {ns} busybox nc -w {secs} {VIP} 80 </dev/null");
    let (ok, out, err) = support::try_sh(&["sh", "-c", &script]);
    if ok && !out.is_empty() {
        Ok(out.trim().to_owned())
    } else {
        Err(format!("{out}{err}"))
    }
}

fn spread_from(ns: &str, cgroup: &TestCgroup, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let reply = connect_from(ns, Some(cgroup)).expect("connect to the VIP");
        *seen.entry(reply).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_process_should_reach_vip_backends_directly_at_connect_and_the_table_should_keep_the_rest(
) {
    shoal_testkit::require!(root, tools = ["ip", "nft", "busybox", "ss"]);
    let (mut nss, task, _, _backends) = task_and_two_backends();
    let task_path = Namespaces::path(&task);
    let cgroup = TestCgroup::new("reach");
    let lb = SocketLb::attach(&cgroup.0, Arc::new(NftLoadBalancer)).expect("load and attach");
    assert!(lb.is_attached().await);

    // Two backends (and UDP, which stays with the table): a task's connections reach both
    // in turn.
    let two = vec![
        entry(&["10.77.0.3", "10.77.0.4"]),
        VipEntry {
            protocol: Protocol::Udp,
            ..entry(&["10.77.0.3", "10.77.0.4"])
        },
    ];
    lb.program(&task_path, &two).await.unwrap();
    let both: Vec<Ipv4Addr> = vec!["10.77.0.3".parse().unwrap(), "10.77.0.4".parse().unwrap()];
    assert_eq!(
        lb.targets(&task_path).await,
        BTreeMap::from([(VIP.parse().unwrap(), both)])
    );
    assert_eq!(
        spread_from(&task, &cgroup, 10),
        BTreeMap::from([("b1".to_owned(), 5), ("b2".to_owned(), 5)])
    );

    // The connection is made to the backend itself: with the table gone, a task's process
    // still reaches one, while a process outside the cgroup (which the program never sees)
    // reaches nothing.
    sh(&[
        "ip", "netns", "exec", &task, "nft", "delete", "table", "ip", "shoal_lb",
    ]);
    assert!(connect_from(&task, Some(&cgroup)).is_ok());
    let outside = connect_from(&task, None);
    assert!(outside.is_err(), "without the table: {outside:?}");

    // Reading a table back changes nothing; forgetting the namespace takes its entries out
    // of the kernel's map.
    assert_eq!(lb.programmed(&task_path).await.unwrap(), None);
    assert_eq!(lb.mapped().await, 1);
    lb.forget(&task_path).await;
    assert!(lb.targets(&task_path).await.is_empty());
    assert_eq!(lb.mapped().await, 0);
    let gone = connect_from(&task, Some(&cgroup));
    assert!(gone.is_err(), "with the namespace forgotten: {gone:?}");

    // A change reaches the program: one backend, then none (the table refuses at once).
    lb.program(&task_path, &[entry(&["10.77.0.3", "10.77.0.4"])])
        .await
        .unwrap();
    lb.update(
        &task_path,
        &[entry(&["10.77.0.3", "10.77.0.4"])],
        &[entry(&["10.77.0.4"])],
    )
    .await
    .unwrap();
    assert_eq!(
        spread_from(&task, &cgroup, 4),
        BTreeMap::from([("b2".to_owned(), 4)])
    );
    lb.update(&task_path, &[entry(&["10.77.0.4"])], &[entry(&[])])
        .await
        .unwrap();
    assert!(lb.targets(&task_path).await.is_empty());
    let refused = connect_from(&task, Some(&cgroup)).unwrap_err();
    assert!(refused.contains("refused"), "{refused}");

    // A failed change leaves the table alone in charge.
    lb.program(&task_path, &[entry(&["10.77.0.3"])])
        .await
        .unwrap();
    assert!(!lb.targets(&task_path).await.is_empty());
    let ghost = VipEntry {
        vip: "10.77.0.102".parse().unwrap(),
        ..entry(&["10.77.0.4"])
    };
    let stale = lb
        .update(
            &task_path,
            &[entry(&["10.77.0.3"]), ghost],
            &[entry(&["10.77.0.4"])],
        )
        .await;
    assert!(stale.is_err(), "the table lacks the service `from` has");
    assert!(lb.targets(&task_path).await.is_empty());

    // An agent that starts (its own program; the old one detaches when dropped) fills its
    // map from the tables it reads back.
    lb.program(&task_path, &[entry(&["10.77.0.4"])])
        .await
        .unwrap();
    drop(lb);
    let lb = SocketLb::attach(&cgroup.0, Arc::new(NftLoadBalancer)).expect("attach again");
    assert!(lb.targets(&task_path).await.is_empty());
    let kept = lb::converge(&lb, &task_path, None, &[entry(&["10.77.0.4"])]).await;
    assert_eq!(kept.unwrap(), Converged::Unchanged);
    assert_eq!(lb.mapped().await, 1);
    sh(&[
        "ip", "netns", "exec", &task, "nft", "delete", "table", "ip", "shoal_lb",
    ]);
    assert_eq!(connect_from(&task, Some(&cgroup)).as_deref(), Ok("b2"));

    // A namespace that goes is forgotten at its teardown, or, missed, when another one
    // comes; one made again at a known path is another (its own cookie).
    let t2 = nss.add("t2");
    let t2_path = Namespaces::path(&t2);
    let one = [entry(&["10.77.0.3"])];
    lb.program(&t2_path, &one).await.unwrap();
    assert!(!lb.targets(&t2_path).await.is_empty());
    assert_eq!(lb.mapped().await, 2);
    lb.forget(&t2_path).await;
    assert!(lb.targets(&t2_path).await.is_empty());
    assert_eq!(lb.mapped().await, 1);
    lb.program(&t2_path, &one).await.unwrap();
    sh(&["ip", "netns", "del", &t2]);
    let t3 = nss.add("t3");
    let t3_path = Namespaces::path(&t3);
    lb.program(&t3_path, &one).await.unwrap();
    assert!(lb.targets(&t2_path).await.is_empty());
    assert!(!lb.targets(&t3_path).await.is_empty());
    assert_eq!(lb.mapped().await, 2, "task's VIP and t3's");
    sh(&["ip", "netns", "del", &t3]);
    nss.add("t3");
    lb.program(&t3_path, &one).await.unwrap();
    assert_eq!(lb.mapped().await, 2, "the old t3's entry went");
    // ...and the new t3's process is balanced (its SYN goes to the backend, unanswered).
    for cmd in [
        "link add eth0 type veth peer name peer0",
        "link set eth0 up",
        "link set peer0 up",
        "addr add 10.77.0.2/24 dev eth0",
        "neigh add 10.77.0.3 lladdr 02:00:00:00:00:03 dev eth0 nud permanent",
    ] {
        let mut args = vec!["ip", "-n", &t3];
        args.extend(cmd.split(' '));
        sh(&args);
    }
    let (ns, dir) = (t3.clone(), cgroup.0.clone());
    let opening = std::thread::spawn(move || connect_waiting(&ns, Some(&dir), 3));
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut seen = String::new();
    while !seen.contains("10.77.0.3:80") && Instant::now() < deadline {
        seen = sh(&[
            "ip", "netns", "exec", &t3, "ss", "-Htn", "state", "syn-sent",
        ]);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(seen.contains("10.77.0.3:80"), "t3's connection: {seen}");
    let _ = opening.join();

    // Removal takes the namespace out of both.
    lb.remove(&task_path).await.unwrap();
    assert!(lb.targets(&task_path).await.is_empty());
    assert_eq!(lb::read_programmed(Some(&task_path)).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_connect_balanced_to_a_backend_that_leaves_should_be_aborted_not_left_waiting() {
    shoal_testkit::require!(root, tools = ["ip", "nft", "busybox", "ss"]);
    let (_nss, task, _b2) = dead_and_live("task");
    let task_path = Namespaces::path(&task);
    let cgroup = TestCgroup::new("abort");
    let lb = SocketLb::attach(&cgroup.0, Arc::new(NftLoadBalancer)).expect("load and attach");
    let dead = [entry(&["10.77.0.9"])];
    lb.program(&task_path, &dead).await.unwrap();

    // A task's connection balanced to the dead backend waits for an answer to its SYN...
    let (ns, dir) = (task.clone(), cgroup.0.clone());
    let waiting = std::thread::spawn(move || connect_waiting(&ns, Some(&dir), 20));
    let syn_sent = || {
        sh(&[
            "ip", "netns", "exec", &task, "ss", "-Htn", "state", "syn-sent",
        ])
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !syn_sent().contains("10.77.0.9:80") {
        assert!(
            Instant::now() < deadline,
            "no connection to the dead backend"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...until the backend leaves the VIP: then it fails (the client may try again) instead
    // of waiting out its SYNs. The next one reaches the live backend.
    lb.update(&task_path, &dead, &[entry(&["10.77.0.4"])])
        .await
        .unwrap();
    let ended = waiting.join().unwrap().unwrap_err();
    assert!(ended.contains("abort"), "{ended}");
    assert!(syn_sent().is_empty());
    assert_eq!(connect_from(&task, Some(&cgroup)).as_deref(), Ok("b2"));
}
