//! Kernel tests of `net`: real namespaces, bridges, VXLAN, veths and nftables. They need
//! root, `ip` and `nft` (`shoal_testkit::require!`: skipped with a message otherwise, failed
//! when `SHOAL_TESTS_REQUIRED=1`) and touch nothing in the root namespace: each test builds
//! its own lab — a "world" namespace holding the underlay bridge (198.18.0.254/24) and an
//! "outside" address (203.0.113.10), and node namespaces joined to it by veths (node k =
//! 198.18.0.k) — and runs `Kernel` with `home_netns` = the node namespace.
//! Every name starts with a per-run prefix `st<4 hex>`, and a Drop guard deletes every
//! namespace with that prefix, also when a test fails.
//!
//! Connectivity is probed with TCP from threads that `setns` into the task namespaces (no
//! `ping` needed on the machine): a connect that succeeds crossed the path under test.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use shoal_node_agent::net::{
    names, netns, Attachment, GatewaySpec, Kernel, NetConfig, Network, NodePolicy, OverlaySpec,
    Peer, PortKind, TaskNetInfo, TaskNetSpec,
};

const WORLD_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// `ip ARGS…`, panicking with its stderr on failure.
fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip ARGS…` stdout.
fn ip_out(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A lab of namespaces; everything named `<prefix>…` goes away on drop.
struct Lab {
    prefix: String,
}

impl Lab {
    /// A world namespace and `nodes` node namespaces on its underlay bridge.
    fn new(nodes: u8) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let tag = (nanos ^ std::process::id().rotate_left(16)) & 0xffff;
        let lab = Lab {
            prefix: format!("st{tag:04x}"),
        };
        let w = lab.world();
        ip(&format!("netns add {w}"));
        ip(&format!("-n {w} link set lo up"));
        ip(&format!("-n {w} addr add {WORLD_IP}/32 dev lo"));
        ip(&format!("-n {w} link add br0 type bridge"));
        ip(&format!("-n {w} addr add 198.18.0.254/24 dev br0"));
        ip(&format!("-n {w} link set br0 up"));
        for k in 1..=nodes {
            let n = lab.node(k);
            ip(&format!("netns add {n}"));
            ip(&format!("-n {n} link set lo up"));
            ip(&format!(
                "-n {w} link add u{k} type veth peer name ul0 netns {n}"
            ));
            ip(&format!("-n {w} link set u{k} master br0 up"));
            ip(&format!("-n {n} addr add 198.18.0.{k}/24 dev ul0"));
            ip(&format!("-n {n} link set ul0 up"));
            ip(&format!("-n {n} route add default via 198.18.0.254"));
        }
        lab
    }

    fn world(&self) -> String {
        format!("{}-w", self.prefix)
    }

    fn node(&self, k: u8) -> String {
        format!("{}-n{k}", self.prefix)
    }

    fn node_path(&self, k: u8) -> PathBuf {
        PathBuf::from(netns::NETNS_DIR).join(self.node(k))
    }

    /// The task-namespace prefix of node k's agent.
    fn task_prefix(&self, k: u8) -> String {
        format!("{}-n{k}-", self.prefix)
    }

    async fn kernel(&self, k: u8) -> Kernel {
        let mut config = NetConfig::new(self.task_prefix(k), Ipv4Addr::new(198, 18, 0, k));
        config.home_netns = Some(self.node_path(k));
        Kernel::connect(config)
            .await
            .expect("connect to node netns")
    }

    fn namespaces(&self) -> Vec<String> {
        netns::list(Path::new(netns::NETNS_DIR), &self.prefix).unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Tasks first (their veths die with them), then nodes, then the world.
        let mut names = self.namespaces();
        names.sort_by_key(|n| std::cmp::Reverse(n.len()));
        for name in names {
            let _ = netns::delete(Path::new(netns::NETNS_DIR), &name);
        }
        let left = self.namespaces();
        if !left.is_empty() {
            eprintln!("WARNING: namespaces left behind: {left:?}");
        }
    }
}

/// Run `f` on a thread inside the namespace at `ns`.
fn in_ns<R: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> R + Send + 'static,
) -> std::thread::JoinHandle<R> {
    let file = File::open(ns).expect("open netns");
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// A TCP listener in `ns` on `addr` that accepts one connection within `wait` and returns the
/// peer address it saw. Returns once the listener is bound.
fn serve_once(
    ns: &Path,
    addr: SocketAddr,
    wait: Duration,
) -> std::thread::JoinHandle<Option<SocketAddr>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = in_ns(ns, move || {
        let listener = TcpListener::bind(addr).expect("bind probe listener");
        listener.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((_, peer)) => return Some(peer),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        None
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("listener ready");
    handle
}

/// Whether a TCP connection from `ns` to `addr` succeeds within 2 s.
fn can_connect(ns: &Path, addr: SocketAddr) -> bool {
    in_ns(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
    })
    .join()
    .unwrap()
}

/// Probe `from` → `to_ns` at `ip:port`; returns the source address the server saw, if any.
fn probe(from: &Path, to_ns: &Path, ip: Ipv4Addr, port: u16) -> Option<SocketAddr> {
    let addr = SocketAddr::from((ip, port));
    let server = serve_once(to_ns, addr, Duration::from_secs(3));
    let ok = can_connect(from, addr);
    let seen = server.join().unwrap();
    if ok {
        seen
    } else {
        None
    }
}

/// [`probe`] up to three times: a task that tried to reach a peer before its entries existed
/// holds a FAILED neighbour entry for a few seconds (ordinary ARP negative caching).
fn probe_retry(from: &Path, to_ns: &Path, ip: Ipv4Addr, port: u16) -> Option<SocketAddr> {
    (0..3).find_map(|i| probe(from, to_ns, ip, port + i))
}

fn task(name: &str, vni: u32, addr: &str, egress: bool) -> TaskNetSpec {
    TaskNetSpec {
        task: name.into(),
        attachments: vec![Attachment {
            vni,
            address: addr.parse().unwrap(),
        }],
        egress,
    }
}

fn gw_ip(info: &TaskNetInfo) -> Ipv4Addr {
    info.interfaces
        .iter()
        .find_map(|i| match i.kind {
            PortKind::Gateway(ip) => Some(ip),
            _ => None,
        })
        .expect("task has a gateway interface")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_should_carry_traffic_between_tasks_on_two_nodes_and_leave_nothing() {
    shoal_testkit::require!(root, tools = ["ip", "nft", "bridge"]);
    let lab = Lab::new(2);
    let (k1, k2) = (lab.kernel(1).await, lab.kernel(2).await);
    let overlay = OverlaySpec {
        vni: 4097,
        mtu: None,
        address: None,
    };
    for k in [&k1, &k2] {
        let info = k.ensure_overlay(&overlay).await.unwrap();
        assert_eq!(
            (info.bridge.as_str(), info.vxlan.as_str(), info.mtu),
            ("shb-4097", "shv-4097", 1450)
        );
        assert!(info.created);
        // Idempotent.
        let again = k.ensure_overlay(&overlay).await.unwrap();
        assert!(!again.created);
        assert_eq!(again.mtu, info.mtu);
    }
    let details = ip_out(&format!("-d -n {} link show shv-4097", lab.node(1)));
    for want in [
        "vxlan id 4097",
        "local 198.18.0.1",
        "dstport 4789",
        "nolearning",
        "proxy",
        "master shb-4097",
        "mtu 1450",
    ] {
        assert!(details.contains(want), "{want:?} missing in {details}");
    }

    let t1 = k1
        .attach_task(&task("t1", 4097, "10.0.1.2/24", false))
        .await
        .unwrap();
    let t2 = k2
        .attach_task(&task("t2", 4097, "10.0.1.3/24", false))
        .await
        .unwrap();
    assert_eq!(
        t1.path,
        PathBuf::from(format!("/run/netns/{}t1", lab.task_prefix(1)))
    );
    assert_eq!(t1.interfaces.len(), 1);
    assert_eq!(
        (
            t1.interfaces[0].name.as_str(),
            t1.interfaces[0].mac.as_str()
        ),
        ("eth0", "02:42:0a:00:01:02")
    );
    let eth0 = ip_out(&format!("-n {} addr show eth0", t1.netns));
    for want in ["02:42:0a:00:01:02", "10.0.1.2/24", "mtu 1450", "UP"] {
        assert!(eth0.contains(want), "{want:?} missing in {eth0}");
    }
    // Attaching again changes nothing.
    assert_eq!(
        k1.attach_task(&task("t1", 4097, "10.0.1.2/24", false))
            .await
            .unwrap(),
        t1
    );

    // Before any FDB/neighbour entry, nothing crosses (no flooding).
    assert_eq!(
        probe(&t1.path, &t2.path, Ipv4Addr::new(10, 0, 1, 3), 7001),
        None
    );

    let p2 = Peer {
        ip: Ipv4Addr::new(10, 0, 1, 3),
        node: Ipv4Addr::new(198, 18, 0, 2),
    };
    let p1 = Peer {
        ip: Ipv4Addr::new(10, 0, 1, 2),
        node: Ipv4Addr::new(198, 18, 0, 1),
    };
    assert_eq!(k1.sync_peers(4097, &[p2]).await.unwrap().len(), 2);
    assert_eq!(k2.sync_peers(4097, &[p1]).await.unwrap().len(), 2);
    let again = k1.sync_peers(4097, &[p2]).await.unwrap();
    assert!(
        again.is_empty(),
        "converged sync is a no-op: {again:?} {:?}",
        k1.list_peer_entries(4097).await
    );
    let entries = k1.list_peer_entries(4097).await.unwrap();
    assert_eq!(entries.fdb.len(), 1);
    assert_eq!(entries.neigh.len(), 1);
    // The kernel's own view of the FDB (`bridge` must run and answer: an empty or failed
    // listing is a failure, not "nothing to check").
    let out = Command::new("bridge")
        .args(["-n", &lab.node(1), "fdb", "show", "dev", "shv-4097"])
        .output()
        .expect("run bridge");
    let bridge_fdb = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bridge fdb show failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        bridge_fdb.contains("02:42:0a:00:01:03 dst 198.18.0.2 self permanent"),
        "{bridge_fdb}"
    );
    assert!(
        !bridge_fdb.contains("00:00:00:00:00:00"),
        "no flooding entry: {bridge_fdb}"
    );

    // Traffic crosses VXLAN both ways and arrives from the task's own address (no NAT).
    let seen = probe_retry(&t1.path, &t2.path, Ipv4Addr::new(10, 0, 1, 3), 7002);
    let seen = seen.unwrap_or_else(|| {
        let dump = [
            format!("-n {} neigh", t1.netns),
            format!("-n {} neigh", lab.node(1)),
            format!("-n {} -s link", lab.node(1)),
            format!("-n {} -s link", lab.node(2)),
            format!("-n {} neigh", t2.netns),
        ]
        .map(|a| format!("ip {a}:\n{}", ip_out(&a)))
        .join("\n");
        panic!("t1 -> t2 over VXLAN failed\n{dump}")
    });
    assert_eq!(seen.ip(), Ipv4Addr::new(10, 0, 1, 2));
    assert!(
        probe(&t2.path, &t1.path, Ipv4Addr::new(10, 0, 1, 2), 7005).is_some(),
        "t2 -> t1 over VXLAN"
    );

    // The DNS server's address is bindable with no extra address (lo covers 127/8).
    let bound = netns::run_in(Some(&t1.path), || {
        std::net::UdpSocket::bind("127.0.0.11:0").is_ok()
    })
    .await
    .unwrap();
    assert!(bound, "127.0.0.11 bindable in the task netns");

    // Removing the peer removes both entries, and the path breaks.
    let ops = k1.sync_peers(4097, &[]).await.unwrap();
    assert_eq!(ops.len(), 2);
    assert_eq!(
        k1.list_peer_entries(4097).await.unwrap(),
        Default::default()
    );

    // A restarted agent (a fresh Kernel) sees what exists, and garbage-collects it all.
    let k1b = lab.kernel(1).await;
    let seen = k1b.observe().await.unwrap();
    assert!(seen.task_netns.contains("t1"));
    assert_eq!(seen.task_ports["t1"].len(), 1);
    assert!(seen.overlays[&4097].bridge && seen.overlays[&4097].vxlan);
    assert!(!seen.gateway);
    for t in seen.task_netns.iter().chain(seen.task_ports.keys()) {
        k1b.detach_task(t).await.unwrap();
    }
    for vni in seen.overlays.keys() {
        k1b.remove_overlay(*vni).await.unwrap();
    }
    k2.detach_task("t2").await.unwrap();
    k2.remove_overlay(4097).await.unwrap();
    // Detaching twice is fine.
    k2.detach_task("t2").await.unwrap();
    for k in [&k1b, &k2] {
        let left = k.observe().await.unwrap();
        assert_eq!(left, Default::default(), "nothing of ours left");
    }
    for n in [1, 2] {
        let links = ip_out(&format!("-n {} -o link show", lab.node(n)));
        assert!(!links.contains(" sh"), "links left on node {n}: {links}");
    }
    assert_eq!(
        lab.namespaces().len(),
        3,
        "only the lab's own namespaces remain: {:?}",
        lab.namespaces()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_on_different_overlays_should_not_reach_each_other() {
    shoal_testkit::require!(root, tools = ["ip", "nft"]);
    let lab = Lab::new(2);
    let (k1, k2) = (lab.kernel(1).await, lab.kernel(2).await);
    for k in [&k1, &k2] {
        k.ensure_overlay(&OverlaySpec {
            vni: 4097,
            mtu: None,
            address: None,
        })
        .await
        .unwrap();
        k.ensure_overlay(&OverlaySpec {
            vni: 4098,
            mtu: Some(1400),
            address: None,
        })
        .await
        .unwrap();
        k.ensure_gateway(&GatewaySpec::default()).await.unwrap();
    }
    // Node 1: a on A (10.0.1.2), b1 on B (10.0.2.2). Node 2: a2 on A (10.0.1.3), b on B (10.0.2.3).
    let a = k1
        .attach_task(&task("a", 4097, "10.0.1.2/24", true))
        .await
        .unwrap();
    let b1 = k1
        .attach_task(&task("b1", 4098, "10.0.2.2/24", true))
        .await
        .unwrap();
    let a2 = k2
        .attach_task(&task("a2", 4097, "10.0.1.3/24", true))
        .await
        .unwrap();
    let b = k2
        .attach_task(&task("b", 4098, "10.0.2.3/24", true))
        .await
        .unwrap();
    assert_eq!(b1.interfaces[0].mtu, 1400);
    let node = |k: u8| Ipv4Addr::new(198, 18, 0, k);
    let ip4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    k1.sync_peers(
        4097,
        &[Peer {
            ip: ip4("10.0.1.3"),
            node: node(2),
        }],
    )
    .await
    .unwrap();
    k1.sync_peers(
        4098,
        &[Peer {
            ip: ip4("10.0.2.3"),
            node: node(2),
        }],
    )
    .await
    .unwrap();
    k2.sync_peers(
        4097,
        &[Peer {
            ip: ip4("10.0.1.2"),
            node: node(1),
        }],
    )
    .await
    .unwrap();
    k2.sync_peers(
        4098,
        &[Peer {
            ip: ip4("10.0.2.2"),
            node: node(1),
        }],
    )
    .await
    .unwrap();

    // Same overlay: reachable (the control).
    assert!(
        probe(&a.path, &a2.path, ip4("10.0.1.3"), 7101).is_some(),
        "a -> a2 on overlay A"
    );
    assert!(
        probe(&b1.path, &b.path, ip4("10.0.2.3"), 7102).is_some(),
        "b1 -> b on overlay B"
    );
    // Other overlay, other node and same node: unreachable, also through the gateway bridge.
    assert_eq!(
        probe(&a.path, &b.path, ip4("10.0.2.3"), 7103),
        None,
        "a -> b across overlays"
    );
    assert_eq!(
        probe(&a.path, &b1.path, ip4("10.0.2.2"), 7104),
        None,
        "a -> b1 across overlays, same node"
    );
    assert_eq!(
        probe(&a.path, &b1.path, gw_ip(&b1), 7105),
        None,
        "a -> b1's gateway address"
    );
    assert_ne!(gw_ip(&a), gw_ip(&b1), "distinct gateway addresses");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_should_masquerade_through_the_gateway_and_internal_tasks_get_none() {
    shoal_testkit::require!(root, tools = ["ip", "nft"]);
    let root_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let lab = Lab::new(1);
    let k = lab.kernel(1).await;
    k.ensure_overlay(&OverlaySpec {
        vni: 4097,
        mtu: None,
        address: None,
    })
    .await
    .unwrap();
    k.ensure_gateway(&GatewaySpec::default()).await.unwrap();
    k.ensure_gateway(&GatewaySpec::default()).await.unwrap();
    let e = k
        .attach_task(&task("e", 4097, "10.0.1.2/24", true))
        .await
        .unwrap();
    let i = k
        .attach_task(&task("i", 4097, "10.0.1.3/24", false))
        .await
        .unwrap();
    assert_eq!(e.interfaces.len(), 2);
    assert_eq!(e.interfaces[1].name, "eth1");
    assert_eq!(gw_ip(&e), Ipv4Addr::new(172, 18, 0, 2));
    assert_eq!(i.interfaces.len(), 1);
    let routes = ip_out(&format!("-n {} route show", e.netns));
    assert!(
        routes.contains("default via 172.18.0.1 dev eth1"),
        "{routes}"
    );
    assert!(!ip_out(&format!("-n {} route show", i.netns)).contains("default"));
    let forward = netns::read_sysctl(Some(&lab.node_path(1)), "net.ipv4.ip_forward")
        .await
        .unwrap();
    assert_eq!(forward, "1");

    let world = PathBuf::from(netns::NETNS_DIR).join(lab.world());
    let seen = probe(&e.path, &world, WORLD_IP, 7201).expect("egress task reaches the outside");
    assert_eq!(
        seen.ip(),
        Ipv4Addr::new(198, 18, 0, 1),
        "masqueraded to the node's address"
    );
    assert_eq!(
        probe(&i.path, &world, WORLD_IP, 7202),
        None,
        "internal task has no egress"
    );
    let ns = lab.node(1);
    // The gateway bridge has an address of its own, the one e cached for its gateway: a
    // port with a lower address joining (a bridge without a set address takes its lowest
    // port's) or leaving does not move it, so e keeps reaching the outside at once.
    let gw_link = || ip_out(&format!("-n {ns} -br link show shoal_gwbridge"));
    assert!(gw_link().contains("02:42:ac:12:00:01"), "{}", gw_link());
    let e2 = k
        .attach_task(&task("e2", 4097, "10.0.1.4/24", true))
        .await
        .unwrap();
    let port = names::host_veth_name(&e2.netns, PortKind::Gateway(gw_ip(&e2)));
    ip(&format!(
        "-n {ns} link set {port} address 02:00:00:00:00:01"
    ));
    assert!(gw_link().contains("02:42:ac:12:00:01"), "{}", gw_link());
    assert!(
        probe(&e.path, &world, WORLD_IP, 7204).is_some(),
        "e reaches the outside after a port with a lower address joined"
    );
    k.detach_task("e2").await.unwrap();
    assert!(probe(&e.path, &world, WORLD_IP, 7205).is_some());
    // Ensured again, the bridge keeps its neighbour entries (e's among them); an address
    // changed by hand is set back.
    let neigh = || ip_out(&format!("-n {ns} neigh show dev shoal_gwbridge"));
    assert!(neigh().contains("172.18.0.2"), "{}", neigh());
    k.ensure_gateway(&GatewaySpec::default()).await.unwrap();
    assert!(neigh().contains("172.18.0.2"), "{}", neigh());
    ip(&format!(
        "-n {ns} link set shoal_gwbridge address 02:00:00:00:00:02"
    ));
    k.ensure_gateway(&GatewaySpec::default()).await.unwrap();
    assert!(gw_link().contains("02:42:ac:12:00:01"), "{}", gw_link());

    // The outside cannot open connections to a task's gateway address.
    assert!(ip_out(&format!("-n {} route show", lab.world())).contains("198.18.0.0/24"));
    ip(&format!(
        "-n {} route add 172.18.0.0/16 via 198.18.0.1",
        lab.world()
    ));
    assert_eq!(
        probe(&world, &e.path, gw_ip(&e), 7203),
        None,
        "inbound to the gateway bridge is refused"
    );

    // Tear down: nothing of ours remains in the node netns.
    k.detach_task("e").await.unwrap();
    k.detach_task("i").await.unwrap();
    k.remove_overlay(4097).await.unwrap();
    k.remove_gateway().await.unwrap();
    k.remove_gateway().await.unwrap();
    assert_eq!(k.observe().await.unwrap(), Default::default());
    let tables = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "list", "tables"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap();
    assert!(!tables.contains("shoal_gw"), "{tables}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        root_forward
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_should_report_strays_and_ensure_should_repair_wrong_settings() {
    shoal_testkit::require!(root, tools = ["ip", "nft"]);
    let lab = Lab::new(1);
    let k = lab.kernel(1).await;
    let err = k
        .attach_task(&task("x", 4097, "10.0.1.2/24", false))
        .await
        .unwrap_err();
    assert!(
        err.is_temporary() && err.to_string().contains("4097"),
        "{err}"
    );
    k.ensure_overlay(&OverlaySpec {
        vni: 4097,
        mtu: None,
        address: None,
    })
    .await
    .unwrap();
    let err = k
        .attach_task(&task("x", 4097, "10.0.1.2/24", true))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("gateway"), "{err}");
    assert!(
        lab.namespaces().iter().all(|n| !n.ends_with("-x")),
        "a refused attach creates nothing"
    );
    // A veth with our name pattern but no alias (an interrupted attach) is a stray.
    ip(&format!(
        "-n {} link add she0123456789a type veth peer name tmp0",
        lab.node(1)
    ));
    let seen = k.observe().await.unwrap();
    assert_eq!(seen.stray_links, vec!["she0123456789a".to_string()]);
    k.remove_stray_link("she0123456789a").await.unwrap();
    // An overlay device with other settings is replaced; a changed gateway subnet moves the
    // bridge's address.
    ip(&format!(
        "-n {} link add shv-4099 type vxlan id 4099 dstport 4789 local 198.18.0.1",
        lab.node(1)
    ));
    let info = k
        .ensure_overlay(&OverlaySpec {
            vni: 4099,
            mtu: None,
            address: None,
        })
        .await
        .unwrap();
    assert!(info.created);
    let details = ip_out(&format!("-d -n {} link show shv-4099", lab.node(1)));
    assert!(
        details.contains("nolearning") && details.contains("proxy"),
        "{details}"
    );
    k.remove_overlay(4099).await.unwrap();
    k.ensure_gateway(&GatewaySpec::default()).await.unwrap();
    let other = GatewaySpec {
        subnet: "172.19.0.0/16".parse().unwrap(),
        mtu: None,
    };
    k.ensure_gateway(&other).await.unwrap();
    let addrs = ip_out(&format!(
        "-n {} -4 -o addr show shoal_gwbridge",
        lab.node(1)
    ));
    assert!(
        addrs.contains("172.19.0.1/16") && !addrs.contains("172.18."),
        "{addrs}"
    );
    k.remove_gateway().await.unwrap();
    assert!(k.observe().await.unwrap().stray_links.is_empty());
    assert!(
        k.remove_stray_link("ul0").await.is_err(),
        "refuses links that are not ours"
    );
    k.remove_overlay(4097).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_address_on_an_overlay_should_be_reachable_from_remote_tasks_and_plain_overlays_have_none(
) {
    shoal_testkit::require!(root, tools = ["ip", "nft"]);
    let lab = Lab::new(2);
    let (k1, k2) = (lab.kernel(1).await, lab.kernel(2).await);
    // The ingress case: node 1 holds 10.0.9.251 on the overlay itself.
    let with_addr = OverlaySpec {
        vni: 4096,
        mtu: None,
        address: Some("10.0.9.251/24".parse().unwrap()),
    };
    k1.ensure_overlay(&with_addr).await.unwrap();
    k1.ensure_overlay(&with_addr).await.unwrap();
    k2.ensure_overlay(&OverlaySpec {
        vni: 4096,
        mtu: None,
        address: None,
    })
    .await
    .unwrap();
    let t = k2
        .attach_task(&task("t", 4096, "10.0.9.3/24", false))
        .await
        .unwrap();
    let (n1, n2) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
    k1.sync_peers(
        4096,
        &[Peer {
            ip: Ipv4Addr::new(10, 0, 9, 3),
            node: n2,
        }],
    )
    .await
    .unwrap();
    k2.sync_peers(
        4096,
        &[Peer {
            ip: Ipv4Addr::new(10, 0, 9, 251),
            node: n1,
        }],
    )
    .await
    .unwrap();
    let br = ip_out(&format!("-n {} addr show shb-4096", lab.node(1)));
    assert!(
        br.contains("02:42:0a:00:09:fb") && br.contains("10.0.9.251/24"),
        "{br}"
    );
    let seen = probe_retry(
        &t.path,
        &lab.node_path(1),
        Ipv4Addr::new(10, 0, 9, 251),
        7301,
    );
    assert_eq!(
        seen.map(|s| s.ip()),
        Some(std::net::IpAddr::V4(Ipv4Addr::new(10, 0, 9, 3))),
        "task on node 2 reaches node 1's overlay address"
    );
    // Ensured again unchanged, the bridge keeps the node's neighbour entries on it (setting
    // a bridge's address, even to the one it has, flushes them).
    ip(&format!(
        "-n {} neigh replace 10.0.9.77 lladdr 02:42:0a:00:09:4d dev shb-4096 nud stale",
        lab.node(1)
    ));
    k1.ensure_overlay(&with_addr).await.unwrap();
    let neigh = ip_out(&format!("-n {} neigh show dev shb-4096", lab.node(1)));
    assert!(neigh.contains("10.0.9.77"), "{neigh}");

    // The node's address must not turn the gateway bridge into a path into the overlay: a
    // task on another overlay of node 1 cannot reach an ingress task of node 1 through it.
    k1.ensure_gateway(&GatewaySpec::default()).await.unwrap();
    k1.ensure_overlay(&OverlaySpec {
        vni: 4097,
        mtu: None,
        address: None,
    })
    .await
    .unwrap();
    let inner = k1
        .attach_task(&task("inner", 4096, "10.0.9.4/24", false))
        .await
        .unwrap();
    let other = k1
        .attach_task(&task("other", 4097, "10.0.1.2/24", true))
        .await
        .unwrap();
    assert!(
        probe_retry(
            &lab.node_path(1),
            &inner.path,
            Ipv4Addr::new(10, 0, 9, 4),
            7311
        )
        .is_some(),
        "the node itself reaches its ingress task"
    );
    assert_eq!(
        probe(&other.path, &inner.path, Ipv4Addr::new(10, 0, 9, 4), 7315),
        None,
        "no route from the gateway bridge into an overlay"
    );

    // The node's address moves within its subnet: the bridge holds the new one (deleting the
    // old primary must not take the new secondary with it), and remote tasks reach it.
    k1.ensure_overlay(&OverlaySpec {
        vni: 4096,
        mtu: None,
        address: Some("10.0.9.250/24".parse().unwrap()),
    })
    .await
    .unwrap();
    let br = ip_out(&format!("-n {} -4 addr show shb-4096", lab.node(1)));
    assert!(
        br.contains("10.0.9.250/24") && !br.contains("10.0.9.251"),
        "{br}"
    );
    k2.sync_peers(4096, &[peer("10.0.9.250", 1)]).await.unwrap();
    assert!(
        probe_retry(
            &t.path,
            &lab.node_path(1),
            Ipv4Addr::new(10, 0, 9, 250),
            7321
        )
        .is_some(),
        "a task on node 2 reaches node 1's moved address"
    );

    // Without `address`, ensure takes any address off the bridge again.
    k1.ensure_overlay(&OverlaySpec {
        vni: 4096,
        mtu: None,
        address: None,
    })
    .await
    .unwrap();
    let br = ip_out(&format!("-n {} -4 addr show shb-4096", lab.node(1)));
    assert!(!br.contains("inet "), "{br}");
    k2.detach_task("t").await.unwrap();
    k1.remove_overlay(4096).await.unwrap();
    k2.remove_overlay(4096).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_attaches_should_get_distinct_gateway_addresses_and_detach_cleanly() {
    shoal_testkit::require!(root, tools = ["ip", "nft"]);
    let lab = Lab::new(1);
    let k = std::sync::Arc::new(lab.kernel(1).await);
    k.ensure_overlay(&OverlaySpec {
        vni: 4097,
        mtu: None,
        address: None,
    })
    .await
    .unwrap();
    k.ensure_gateway(&GatewaySpec::default()).await.unwrap();
    let n = 16u8;
    let attaches = (0..n).map(|i| {
        let k = k.clone();
        tokio::spawn(async move {
            k.attach_task(&task(
                &format!("c{i}"),
                4097,
                &format!("10.0.1.{}/24", i + 2),
                true,
            ))
            .await
        })
    });
    let infos: Vec<TaskNetInfo> = futures::future::join_all(attaches)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let gws: std::collections::BTreeSet<Ipv4Addr> = infos.iter().map(gw_ip).collect();
    assert_eq!(
        gws.len(),
        usize::from(n),
        "distinct gateway addresses: {gws:?}"
    );
    let seen = k.observe().await.unwrap();
    assert_eq!(seen.task_netns.len(), usize::from(n));
    assert!(seen.task_ports.values().all(|p| p.len() == 2));
    // Two tasks on the same overlay and node talk over the bridge.
    assert!(probe_retry(
        &infos[0].path,
        &infos[1].path,
        Ipv4Addr::new(10, 0, 1, 3),
        7401
    )
    .is_some());
    let detaches = (0..n).map(|i| {
        let k = k.clone();
        tokio::spawn(async move { k.detach_task(&format!("c{i}")).await })
    });
    for r in futures::future::join_all(detaches).await {
        r.unwrap().unwrap();
    }
    k.remove_overlay(4097).await.unwrap();
    k.remove_gateway().await.unwrap();
    assert_eq!(k.observe().await.unwrap(), Default::default());
}

/// The agent may itself run inside the node's namespace (`home_netns: None`): everything
/// must then land in that namespace, including ip_forward and the nft table.
#[test]
fn an_agent_living_in_the_node_namespace_should_configure_that_namespace() {
    shoal_testkit::require!(root, tools = ["ip", "nft"]);
    let root_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let lab = Lab::new(1);
    let prefix = lab.task_prefix(1);
    let done = in_ns(&lab.node_path(1), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let k = Kernel::connect(NetConfig::new(prefix, Ipv4Addr::new(198, 18, 0, 1)))
                .await
                .unwrap();
            k.ensure_overlay(&OverlaySpec {
                vni: 4097,
                mtu: None,
                address: None,
            })
            .await
            .unwrap();
            k.ensure_gateway(&GatewaySpec::default()).await.unwrap();
            let t = k
                .attach_task(&task("t", 4097, "10.0.1.2/24", true))
                .await
                .unwrap();
            let forward = netns::read_sysctl(None, "net.ipv4.ip_forward")
                .await
                .unwrap();
            (t, forward)
        })
    })
    .join()
    .unwrap();
    let (t, forward) = done;
    assert_eq!(forward, "1");
    let links = ip_out(&format!("-n {} -o link show", lab.node(1)));
    assert!(
        links.contains("shb-4097") && links.contains("shoal_gwbridge"),
        "{links}"
    );
    let tables = Command::new("ip")
        .args(["netns", "exec", &lab.node(1), "nft", "list", "tables"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap();
    assert!(tables.contains("shoal_gw"), "{tables}");
    assert!(ip_out(&format!("-n {} route show", t.netns)).contains("default via 172.18.0.1"));
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        root_forward
    );
    assert!(
        !ip_out("-o link show").contains("shb-4097"),
        "nothing in the root namespace"
    );
}

// ---- The node's input and forward policy (`table inet shoal_node`, `net::nodefw`) ----

/// A TCP listener in `ns` on `addr` that accepts every connection for `wait`; returns how
/// many it accepted. Returns once the listener is bound.
fn serve_for(ns: &Path, addr: SocketAddr, wait: Duration) -> std::thread::JoinHandle<usize> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = in_ns(ns, move || {
        let listener = TcpListener::bind(addr).expect("bind listener");
        listener.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let deadline = Instant::now() + wait;
        let mut n = 0;
        while Instant::now() < deadline {
            match listener.accept() {
                Ok(_) => n += 1,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        n
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("listener ready");
    handle
}

/// `nft -j list counter inet shoal_node NAME` in namespace `ns`: its packet count.
fn policy_counter(ns: &str, name: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-j", "list", "counter", "inet"])
        .args(["shoal_node", name])
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft list counter {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| o.pointer("/counter/packets").and_then(|p| p.as_u64()))
        .expect("a counter in nft's answer")
}

/// The conntrack table of a namespace (`/proc/net/nf_conntrack` read inside it).
fn conntrack_entries(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/nf_conntrack"])
        .output()
        .expect("run ip netns exec cat");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nft_tables(ns: &str) -> String {
    Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "tables"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap()
}

fn peer(ip: &str, node: u8) -> Peer {
    Peer {
        ip: ip.parse().unwrap(),
        node: Ipv4Addr::new(198, 18, 0, node),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_overlay_should_turn_bridge_netfilter_off_in_the_home_namespace_only() {
    shoal_testkit::require!(root, tools = ["ip"]);
    const KEYS: [&str; 3] = [
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
        "net.bridge.bridge-nf-call-arptables",
    ];
    let lab = Lab::new(1);
    let node = lab.node_path(1);
    let read = |ns: Option<PathBuf>| async move {
        let mut v = Vec::new();
        for key in KEYS {
            v.push(
                netns::read_sysctl_if_present(ns.as_deref(), key)
                    .await
                    .unwrap(),
            );
        }
        v
    };
    let host_before = read(None).await;
    if read(Some(node.clone())).await.iter().any(Option::is_none) {
        // No br_netfilter in this kernel: bridged frames never reach the IP hooks, and
        // ensure_overlay has nothing to write (checked by the plan's unit tests).
        eprintln!("this kernel has no br_netfilter; only checking that ensure_overlay succeeds");
    } else {
        // Someone (the kernel default, another bridge user) turned the hooks on.
        for key in KEYS {
            netns::write_sysctl(Some(&node), key, "1").await.unwrap();
        }
    }
    let k = lab.kernel(1).await;
    let overlay = OverlaySpec {
        vni: 4097,
        mtu: None,
        address: None,
    };
    k.ensure_overlay(&overlay).await.unwrap();
    let after = read(Some(node.clone())).await;
    for (key, v) in KEYS.iter().zip(&after) {
        if let Some(v) = v {
            assert_eq!(v, "0", "{key} in the node namespace");
        }
    }
    // An ensure of a converged overlay (the periodic resync) repairs a value set back.
    if after[0].is_some() {
        netns::write_sysctl(Some(&node), KEYS[0], "1")
            .await
            .unwrap();
        k.ensure_overlay(&overlay).await.unwrap();
        let repaired = netns::read_sysctl(Some(&node), KEYS[0]).await.unwrap();
        assert_eq!(repaired, "0");
    }
    assert_eq!(
        read(None).await,
        host_before,
        "the host namespace is untouched"
    );
    k.remove_overlay(4097).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_should_be_accepted_only_from_known_nodes_and_the_rest_counted() {
    shoal_testkit::require!(root, tools = ["ip", "nft"]);
    let lab = Lab::new(3);
    let ks = [
        lab.kernel(1).await,
        lab.kernel(2).await,
        lab.kernel(3).await,
    ];
    let overlay = OverlaySpec {
        vni: 4097,
        mtu: None,
        address: None,
    };
    let mut tasks = Vec::new();
    for (i, k) in ks.iter().enumerate() {
        k.ensure_overlay(&overlay).await.unwrap();
        let t = k
            .attach_task(&task(
                &format!("t{i}"),
                4097,
                &format!("10.0.1.{}/24", i + 2),
                false,
            ))
            .await
            .unwrap();
        tasks.push(t);
    }
    // Node 1 knows tasks on nodes 2 and 3; nodes 2 and 3 know node 1's task.
    ks[0]
        .sync_peers(4097, &[peer("10.0.1.3", 2), peer("10.0.1.4", 3)])
        .await
        .unwrap();
    ks[1]
        .sync_peers(4097, &[peer("10.0.1.2", 1)])
        .await
        .unwrap();
    ks[2]
        .sync_peers(4097, &[peer("10.0.1.2", 1)])
        .await
        .unwrap();
    let t1 = Ipv4Addr::new(10, 0, 1, 2);
    // The control: without a policy both reach node 1's task.
    assert!(probe_retry(&tasks[1].path, &tasks[0].path, t1, 7401).is_some());
    assert!(probe_retry(&tasks[2].path, &tasks[0].path, t1, 7411).is_some());

    // Node 3 is not a node as far as node 1 knows.
    let known = |addrs: &[&'static str]| {
        NodePolicy::new(Ipv4Addr::new(198, 18, 0, 1), addrs.iter().copied(), None)
    };
    ks[0]
        .program_node_policy(&known(&["198.18.0.2"]))
        .await
        .unwrap();
    let n1 = lab.node(1);
    let before = policy_counter(&n1, "vxlan_dropped");
    assert_eq!(before, 0);
    assert!(
        probe(&tasks[1].path, &tasks[0].path, t1, 7421).is_some(),
        "a known node's VXLAN passes"
    );
    assert_eq!(
        probe(&tasks[2].path, &tasks[0].path, t1, 7422),
        None,
        "an unknown sender's VXLAN is dropped"
    );
    let dropped = policy_counter(&n1, "vxlan_dropped");
    assert!(dropped > before, "counted: {dropped}");
    // The policy's `ct` rules make conntrack run in node 1; the VXLAN packets that crossed
    // (both ways) were exempted from it.
    let tracked = conntrack_entries(&n1);
    assert!(!tracked.contains("dport=4789"), "VXLAN tracked: {tracked}");
    // Traffic of the network between known nodes is unaffected, both ways.
    assert!(probe(
        &tasks[0].path,
        &tasks[1].path,
        Ipv4Addr::new(10, 0, 1, 3),
        7423
    )
    .is_some());

    // Node 3 joins: the set grows in place; the counter keeps its count; again is a no-op.
    let all = known(&["198.18.0.2", "198.18.0.3"]);
    ks[0].program_node_policy(&all).await.unwrap();
    ks[0].program_node_policy(&all).await.unwrap();
    assert!(policy_counter(&n1, "vxlan_dropped") >= dropped);
    assert!(
        probe(&tasks[2].path, &tasks[0].path, t1, 7431).is_some(),
        "node 3 admitted"
    );
    // Node 3 leaves: dropped again at once (no connection tracking involved).
    ks[0]
        .program_node_policy(&known(&["198.18.0.2"]))
        .await
        .unwrap();
    assert_eq!(probe(&tasks[2].path, &tasks[0].path, t1, 7441), None);

    // A restarted agent (a fresh Kernel) programs the same table again; teardown removes it.
    let k1b = lab.kernel(1).await;
    k1b.program_node_policy(&all).await.unwrap();
    assert!(nft_tables(&n1).contains("table inet shoal_node"));
    k1b.remove_gateway().await.unwrap();
    let tables = nft_tables(&n1);
    assert!(!tables.contains("shoal_node"), "{tables}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_should_not_reach_their_node_while_overlays_and_the_mesh_still_work() {
    use shoal_api_types::service::{Protocol, PublishMode};
    use shoal_node_agent::mesh::{Mesh, MeshPort, MeshRules, NftMesh};

    shoal_testkit::require!(root, tools = ["ip", "nft"]);
    let lab = Lab::new(2);
    let (k1, k2) = (lab.kernel(1).await, lab.kernel(2).await);
    let n1 = Ipv4Addr::new(198, 18, 0, 1);
    let ip4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    // Node 1 is on ingress (10.255.0.1) with an ingress task `i`, and on overlay 4097 with
    // tasks `a` and `b`; node 2 has `c` on 4097 and `j` on ingress.
    k1.ensure_gateway(&GatewaySpec::default()).await.unwrap();
    k1.ensure_overlay(&OverlaySpec {
        vni: 4096,
        mtu: None,
        address: Some("10.255.0.1/16".parse().unwrap()),
    })
    .await
    .unwrap();
    let plain = |vni| OverlaySpec {
        vni,
        mtu: None,
        address: None,
    };
    k1.ensure_overlay(&plain(4097)).await.unwrap();
    k2.ensure_overlay(&plain(4096)).await.unwrap();
    k2.ensure_overlay(&plain(4097)).await.unwrap();
    let i = k1
        .attach_task(&task("i", 4096, "10.255.0.5/16", false))
        .await
        .unwrap();
    let a = k1
        .attach_task(&task("a", 4097, "10.0.1.2/24", true))
        .await
        .unwrap();
    let b = k1
        .attach_task(&task("b", 4097, "10.0.1.3/24", true))
        .await
        .unwrap();
    let c = k2
        .attach_task(&task("c", 4097, "10.0.1.4/24", false))
        .await
        .unwrap();
    let j = k2
        .attach_task(&task("j", 4096, "10.255.0.6/16", false))
        .await
        .unwrap();
    k1.sync_peers(4097, &[peer("10.0.1.4", 2)]).await.unwrap();
    k1.sync_peers(4096, &[peer("10.255.0.6", 2)]).await.unwrap();
    k2.sync_peers(4097, &[peer("10.0.1.2", 1), peer("10.0.1.3", 1)])
        .await
        .unwrap();
    k2.sync_peers(4096, &[peer("10.255.0.5", 1), peer("10.255.0.1", 1)])
        .await
        .unwrap();
    let node1 = lab.node_path(1);
    let world = PathBuf::from(netns::NETNS_DIR).join(lab.world());
    let gw = Ipv4Addr::new(172, 18, 0, 1);
    // "The agent", "etcd", "the API", "ssh": listeners on every address of node 1.
    let ports = [7801u16, 2379, 7777, 22];
    let listeners: Vec<_> = ports
        .iter()
        .map(|p| {
            serve_for(
                &node1,
                SocketAddr::from(([0, 0, 0, 0], *p)),
                Duration::from_secs(30),
            )
        })
        .collect();
    // The underlay routes into the overlays through node 1, and `i` answers back to it.
    ip(&format!(
        "-n {} route add 10.255.0.0/16 via {n1}",
        lab.world()
    ));
    ip(&format!(
        "-n {} route add 198.18.0.0/24 via 10.255.0.1",
        i.netns
    ));
    let routed_in = || {
        let backend = serve_for(
            &i.path,
            SocketAddr::from(([0, 0, 0, 0], 81)),
            Duration::from_secs(3),
        );
        let ok = can_connect(&world, SocketAddr::from((ip4("10.255.0.5"), 81)));
        backend.join().unwrap();
        ok
    };
    // A task overlay has no route on the node; give it one (a careless operator) to check
    // that the policy, not the missing route, keeps the underlay out.
    ip(&format!(
        "-n {} route add 10.0.1.0/24 dev shb-4097",
        lab.node(1)
    ));
    ip(&format!(
        "-n {} route add 10.0.1.0/24 via {n1}",
        lab.world()
    ));
    let routed_into_task_overlay = || {
        let backend = serve_for(
            &a.path,
            SocketAddr::from(([0, 0, 0, 0], 82)),
            Duration::from_secs(3),
        );
        let ok = can_connect(&world, SocketAddr::from((ip4("10.0.1.2"), 82)));
        backend.join().unwrap();
        ok
    };
    assert!(
        routed_into_task_overlay(),
        "the control: routed into overlay 4097"
    );
    // The control: without the policy a task reaches its node, the underlay the overlay.
    assert!(can_connect(&a.path, SocketAddr::from((gw, 7801))));
    assert!(can_connect(
        &i.path,
        SocketAddr::from((ip4("10.255.0.1"), 7801))
    ));
    assert!(routed_in(), "the control: routed into the ingress overlay");

    k1.program_node_policy(&NodePolicy::new(
        n1,
        ["198.18.0.1", "198.18.0.2"],
        Some(4096),
    ))
    .await
    .unwrap();
    let mesh = NftMesh::new(Some(node1.clone()));
    mesh.program(&MeshRules {
        node_address: Some(n1),
        ingress: Some(("shb-4096".into(), ip4("10.255.0.1"))),
        ports: vec![MeshPort {
            protocol: Protocol::Tcp,
            published: 9091,
            target: 80,
            mode: PublishMode::Ingress,
            backends: vec![ip4("10.255.0.5")],
            ..Default::default()
        }],
        reserved: Default::default(),
    })
    .await
    .unwrap();

    let refused_before = policy_counter(&lab.node(1), "tasks_refused");
    for port in ports {
        for to in [n1, gw, ip4("10.255.0.1")] {
            assert!(
                !can_connect(&a.path, SocketAddr::from((to, port))),
                "task a reached {to}:{port} on its node"
            );
        }
        assert!(
            !can_connect(&i.path, SocketAddr::from((ip4("10.255.0.1"), port))),
            "ingress task reached its node's ingress address :{port}"
        );
        assert!(
            !can_connect(&j.path, SocketAddr::from((ip4("10.255.0.1"), port))),
            "a remote ingress task reached node 1's ingress address :{port}"
        );
    }
    assert!(policy_counter(&lab.node(1), "tasks_refused") > refused_before);
    // The underlay still reaches the node (the policy is about tasks only).
    assert!(can_connect(&world, SocketAddr::from((n1, 7801))));

    // Overlay traffic: bridged on one node, over VXLAN between nodes, both ways.
    let t = |x: &str| ip4(x);
    assert!(
        probe_retry(&a.path, &b.path, t("10.0.1.3"), 7501).is_some(),
        "a -> b, one node"
    );
    assert!(
        probe_retry(&a.path, &c.path, t("10.0.1.4"), 7511).is_some(),
        "a -> c"
    );
    assert!(
        probe_retry(&c.path, &b.path, t("10.0.1.3"), 7521).is_some(),
        "c -> b"
    );
    assert!(
        probe_retry(&j.path, &i.path, t("10.255.0.5"), 7531).is_some(),
        "j -> i on ingress"
    );
    // Egress still leaves the node.
    assert!(
        probe(&a.path, &world, WORLD_IP, 7541).is_some(),
        "a -> outside"
    );

    // The mesh: a published port through the node, from the underlay and from a task.
    let backend = serve_for(
        &i.path,
        SocketAddr::from(([0, 0, 0, 0], 80)),
        Duration::from_secs(10),
    );
    assert!(
        can_connect(&world, SocketAddr::from((n1, 9091))),
        "outside -> published port"
    );
    assert!(
        can_connect(&a.path, SocketAddr::from((n1, 9091))),
        "task -> its node's published port"
    );
    assert_eq!(backend.join().unwrap(), 2, "both reached the ingress task");

    // Routed into an overlay without the mesh's DNAT: dropped.
    assert!(!routed_in(), "the underlay routed into the ingress overlay");
    assert!(
        !routed_into_task_overlay(),
        "the underlay routed into overlay 4097"
    );

    // The listeners stop on their own; the lab's namespaces go with the test.
    drop(listeners);
    k1.remove_gateway().await.unwrap();
    assert!(!nft_tables(&lab.node(1)).contains("shoal_node"));
}

/// Packets node `ns`'s VXLAN device for `vni` has received so far.
fn vxlan_rx(ns: &str, vni: u32) -> u64 {
    vxlan_stat(ns, vni, "rx_packets")
}

/// Receive errors of node `ns`'s VXLAN device for `vni` so far.
fn vxlan_rx_errors(ns: &str, vni: u32) -> u64 {
    vxlan_stat(ns, vni, "rx_errors")
}

/// One of the statistics (`/sys/class/net/<dev>/statistics/<name>`) of node `ns`'s VXLAN
/// device for `vni`.
fn vxlan_stat(ns: &str, vni: u32, name: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat"])
        .arg(format!("/sys/class/net/shv-{vni}/statistics/{name}"))
        .output()
        .expect("run ip netns exec cat");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("shv-{vni}'s {name}: {e}"))
}

/// Whether the overlay's traffic to node 2's task skipped node 2's VXLAN device (the fast
/// path took it) while a connection from node 1's task went through.
fn via_fast_path(lab: &Lab, from: &TaskNetInfo, to: &TaskNetInfo, ip: Ipv4Addr, port: u16) -> bool {
    let n2 = lab.node(2);
    let before = vxlan_rx(&n2, 4097);
    assert!(
        probe_retry(&from.path, &to.path, ip, port).is_some(),
        "node 1's task reaches node 2's"
    );
    vxlan_rx(&n2, 4097) == before
}

/// Overlay 4097 on nodes 1 and 2 with task `a` (10.0.1.2) on node 1 and `b` (10.0.1.3) on
/// node 2, each node's peer entries in place; no node policy (so no fast path) yet.
async fn a_on_node_1_and_b_on_node_2(lab: &Lab) -> (Kernel, Kernel, TaskNetInfo, TaskNetInfo) {
    let (k1, k2) = (lab.kernel(1).await, lab.kernel(2).await);
    let overlay = OverlaySpec {
        vni: 4097,
        mtu: None,
        address: None,
    };
    k1.ensure_overlay(&overlay).await.unwrap();
    k2.ensure_overlay(&overlay).await.unwrap();
    let a = k1
        .attach_task(&task("a", 4097, "10.0.1.2/24", false))
        .await
        .unwrap();
    let b = k2
        .attach_task(&task("b", 4097, "10.0.1.3/24", false))
        .await
        .unwrap();
    k1.sync_peers(4097, &[peer("10.0.1.3", 2)]).await.unwrap();
    k2.sync_peers(4097, &[peer("10.0.1.2", 1)]).await.unwrap();
    (k1, k2, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_should_deliver_vxlan_from_nodes_to_tasks_and_follow_ports_and_restarts() {
    shoal_testkit::require!(root, tools = ["ip", "nft"]);
    let lab = Lab::new(2);
    let (_k1, k2, a, b) = a_on_node_1_and_b_on_node_2(&lab).await;
    let b_ip = Ipv4Addr::new(10, 0, 1, 3);
    // The control: before the node policy loads it, the VXLAN device carries the traffic.
    assert!(!via_fast_path(&lab, &a, &b, b_ip, 7501));

    let both = NodePolicy::new(
        Ipv4Addr::new(198, 18, 0, 2),
        ["198.18.0.1", "198.18.0.2"],
        None,
    );
    k2.program_node_policy(&both).await.unwrap();
    assert!(
        via_fast_path(&lab, &a, &b, b_ip, 7511),
        "delivered by the program"
    );
    // From a sender that is not a node, VXLAN falls to the kernel's path: dropped and counted.
    k2.program_node_policy(&NodePolicy::new(
        Ipv4Addr::new(198, 18, 0, 2),
        ["198.18.0.2"],
        None,
    ))
    .await
    .unwrap();
    let n2 = lab.node(2);
    let dropped = policy_counter(&n2, "vxlan_dropped");
    assert_eq!(probe(&a.path, &b.path, b_ip, 7521), None);
    assert!(policy_counter(&n2, "vxlan_dropped") > dropped);
    k2.program_node_policy(&both).await.unwrap();

    // The task goes and another takes its address: the program follows the new port (a
    // stale entry would send it to the deleted veth, and the probe would fail).
    k2.detach_task("b").await.unwrap();
    // Forgotten with its port: what node 1 still sends to the address takes the kernel's
    // path (a stale entry would hand it to the deleted veth, past the VXLAN device).
    let before = vxlan_rx(&n2, 4097);
    assert!(!can_connect(&a.path, SocketAddr::from((b_ip, 7529))));
    assert!(
        vxlan_rx(&n2, 4097) > before,
        "the kernel's path after a detach"
    );
    let b2 = k2
        .attach_task(&task("b2", 4097, "10.0.1.3/24", false))
        .await
        .unwrap();
    assert!(via_fast_path(&lab, &a, &b2, b_ip, 7531), "the new port");

    // A restarted agent (the old one gone, its program detached with it) loads the program
    // again and learns the ports already there from their namespaces.
    drop(k2);
    assert!(
        !via_fast_path(&lab, &a, &b2, b_ip, 7541),
        "no program, no agent"
    );
    let k2 = lab.kernel(2).await;
    k2.program_node_policy(&both).await.unwrap();
    assert!(via_fast_path(&lab, &a, &b2, b_ip, 7551), "recovered");

    // Removing the node's networking unloads it.
    k2.remove_gateway().await.unwrap();
    assert!(!via_fast_path(&lab, &a, &b2, b_ip, 7561));
}

/// `nft ARGS…` in the namespace at `ns` (a path), panicking with its stderr on failure;
/// its stdout.
fn nft_in(ns: &Path, args: &'static [&'static str]) -> String {
    in_ns(ns, move || {
        let out = Command::new("nft").args(args).output().expect("run nft");
        assert!(
            out.status.success(),
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .join()
    .unwrap()
}

/// Sends one UDP datagram with the IPv4 TOS byte `tos` from `from` to `to` and waits up to
/// 2 s for it in `to_ns`: whether it arrived.
fn udp_arrives(from: &Path, to_ns: &Path, to: SocketAddr, tos: u32) -> bool {
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = in_ns(to_ns, move || {
        let socket = std::net::UdpSocket::bind(to).expect("bind the UDP receiver");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 64];
        socket.recv(&mut buf).is_ok_and(|n| &buf[..n] == b"ce?")
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    in_ns(from, move || {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        socket.set_tos_v4(tos).unwrap();
        socket.send_to(b"ce?", &to.into()).unwrap();
    })
    .join()
    .unwrap();
    server.join().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_should_carry_a_congestion_mark_into_ecn_capable_packets_and_leave_the_rest_to_the_kernel(
) {
    shoal_testkit::require!(root, tools = ["ip", "nft"]);
    let lab = Lab::new(2);
    let (_k1, k2, a, b) = a_on_node_1_and_b_on_node_2(&lab).await;
    let both = NodePolicy::new(
        Ipv4Addr::new(198, 18, 0, 2),
        ["198.18.0.1", "198.18.0.2"],
        None,
    );
    k2.program_node_policy(&both).await.unwrap();
    let to = SocketAddr::from((Ipv4Addr::new(10, 0, 1, 3), 7600));
    let n2 = lab.node(2);
    // Warm up: ARP on the overlay, the forwarding entries.
    assert!((0..3).any(|_| udp_arrives(&a.path, &b.path, to, 0)));

    // A congested underlay: node 1 marks every VXLAN packet it sends CE, and the receiving
    // task counts CE-marked datagrams (after ip_rcv, so with a valid header checksum).
    ip(&format!(
        "netns exec {} nft add table ip cetest {{ chain out {{ type filter hook postrouting \
         priority 0; udp dport 4789 ip ecn set ce; }}; }}",
        lab.node(1)
    ));
    nft_in(
        &b.path,
        &[
            "add table ip seen { counter ce {}; chain pre { type filter hook prerouting \
             priority 0; udp dport 7600 ip ecn ce counter name ce; }; }",
        ],
    );
    let ce_seen = || {
        let out = nft_in(&b.path, &["list", "counter", "ip", "seen", "ce"]);
        out.split("packets ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("a packet count in {out}"))
    };

    // ECN-capable (ECT(0)): the mark goes on to the inner header, on the fast path.
    let (rx, errors) = (vxlan_rx(&n2, 4097), vxlan_rx_errors(&n2, 4097));
    assert!(udp_arrives(&a.path, &b.path, to, 2), "an ECT(0) datagram");
    assert_eq!(ce_seen(), 1, "the task sees the congestion mark");
    assert_eq!(vxlan_rx(&n2, 4097), rx, "the program carried it");
    // So is one already marked inside (CE over CE).
    assert!(udp_arrives(&a.path, &b.path, to, 3), "a CE datagram");
    assert_eq!(ce_seen(), 2);
    assert_eq!(vxlan_rx(&n2, 4097), rx);
    assert_eq!(vxlan_rx_errors(&n2, 4097), errors);

    // Not ECN-capable inside: left to the kernel, which drops it (RFC 6040) and counts it.
    assert!(
        !udp_arrives(&a.path, &b.path, to, 0),
        "a Not-ECT datagram under CE"
    );
    assert_eq!(ce_seen(), 2);
    assert!(vxlan_rx_errors(&n2, 4097) > errors, "the kernel's drop");
}
