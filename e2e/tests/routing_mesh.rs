//! End-to-end: the routing mesh and host-mode publishing on a 3-node local cluster, driven
//! through the `shoal` binary, with traffic from the host (root) namespace to the nodes'
//! underlay addresses (198.18.0.k) only — bounded counts, short timeouts.
//!
//! One cluster runs at a time, so every scenario runs in sequence inside one test, each
//! announcing itself on stderr. The cluster is removed at the end, also on failure.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_e2e::{http_get, node_ip, node_k, require_e2e, step, Cluster, Get, BUSYBOX};

const HTTPD: &str = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www";

/// The sockets of node k's shims: containerd names each `/run/containerd/s/<sha256 of
/// "<containerd address>/<namespace>/<task id>">` (computed here with `sha256sum`).
fn shim_sockets(c: &Cluster, k: u32) -> Vec<PathBuf> {
    let address = c
        .state_dir()
        .join(format!("node-{k}/containerd/containerd.sock"));
    let address = address.to_str().unwrap();
    let ls = Command::new("ctr")
        .args(["--address", address, "-n", "shoal", "tasks", "ls", "-q"])
        .output()
        .expect("run ctr");
    assert!(ls.status.success(), "ctr tasks ls on node-{k}");
    String::from_utf8_lossy(&ls.stdout)
        .split_whitespace()
        .map(|id| {
            let sum = Command::new("sh")
                .args(["-c", "printf '%s' \"$1\" | sha256sum", "-"])
                .arg(format!("{address}/shoal/{id}"))
                .output()
                .expect("run sha256sum");
            let hex = String::from_utf8_lossy(&sum.stdout);
            PathBuf::from("/run/containerd/s").join(hex.split_whitespace().next().unwrap())
        })
        .collect()
}

/// The page when the GET answered 200.
fn page(ip: Ipv4Addr, port: u16) -> Option<String> {
    match http_get(ip, port) {
        Get::Ok(200, body) => Some(body),
        other => {
            eprintln!("GET {ip}:{port}: {other:?}");
            None
        }
    }
}

fn refused(ip: Ipv4Addr, port: u16) -> bool {
    matches!(http_get(ip, port), Get::Refused)
}

/// Each node's ingress address, from `Node.status.ingressAddress`.
fn ingress_addresses(c: &Cluster) -> Vec<(String, Option<Ipv4Addr>)> {
    let v = c.json(&["get", "nodes", "-o", "json"]);
    let items = v
        .as_array()
        .cloned()
        .or_else(|| v["items"].as_array().cloned())
        .unwrap_or_default();
    items
        .iter()
        .map(|n| {
            (
                n["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                n["status"]["ingressAddress"]
                    .as_str()
                    .and_then(|a| a.parse().ok()),
            )
        })
        .collect()
}

/// A DHCPDISCOVER as a relay agent at `giaddr` sends it (the reply goes back to giaddr:67).
fn dhcp_discover(giaddr: Ipv4Addr, xid: u32) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // ethernet
    p[2] = 6; // hlen
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[24..28].copy_from_slice(&giaddr.octets());
    p[28..34].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, 1, 255]);
    p
}

/// Sends DHCPDISCOVERs from 198.18.0.254:67 to `ip:port` (bounded retries); the reply's
/// first byte (2 = BOOTREPLY) and the offered address, if one came back.
fn udp_dhcp(ip: Ipv4Addr, port: u16, giaddr: Ipv4Addr) -> Option<(u8, Ipv4Addr)> {
    let sock = UdpSocket::bind("198.18.0.254:67").expect("bind 198.18.0.254:67 (udp)");
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    for xid in 0..5u32 {
        sock.send_to(&dhcp_discover(giaddr, 0x5ba1_0000 + xid), (ip, port))
            .expect("send");
        let mut buf = [0u8; 1500];
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if n >= 240 => {
                eprintln!("udp reply of {n} bytes from {from}");
                let offered = Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
                return Some((buf[0], offered));
            }
            Ok((n, from)) => eprintln!("short udp reply ({n} bytes) from {from}"),
            Err(e) => eprintln!("udp to {ip}:{port}: {e}"),
        }
    }
    None
}

fn create(c: &Cluster, args: &[&str]) {
    let mut all = vec!["service", "create"];
    all.extend_from_slice(args);
    c.shoal(&all).ok();
}

#[test]
fn routing_mesh_end_to_end() {
    require_e2e!();
    let c = Cluster::up(3);
    let wait = Duration::from_secs(90);

    step("every node gets an ingress address of its own");
    let addrs = c.eventually("3 nodes with ingress addresses", wait, || {
        let a = ingress_addresses(&c);
        (a.len() == 3 && a.iter().all(|(_, ip)| ip.is_some())).then_some(a)
    });
    eprintln!("{addrs:?}");
    let distinct: BTreeSet<_> = addrs.iter().map(|(_, a)| a.unwrap()).collect();
    assert_eq!(distinct.len(), 3, "distinct: {addrs:?}");
    let ingress_of = |node: &str| {
        addrs
            .iter()
            .find(|(n, _)| n == node)
            .and_then(|(_, a)| *a)
            .expect("node's ingress address")
    };

    step("pub -p 9091:80, 1 replica: every node answers 200 with the page, from the host");
    create(
        &c,
        &[
            "--name",
            "pub",
            "-p",
            "9091:80",
            "--replicas",
            "1",
            BUSYBOX,
            "sh",
            "-c",
            HTTPD,
        ],
    );
    let tasks = c.eventually("pub.1 running", wait, || {
        let r = c.running("pub", "ingress");
        (r.len() == 1).then_some(r)
    });
    let (_, pub_node, _) = tasks[0].clone();
    eprintln!("pub.1 runs on {pub_node}");
    for k in 1..=3 {
        let started = Instant::now();
        let body = c.eventually(
            &format!("GET 198.18.0.{k}:9091"),
            Duration::from_secs(30),
            || page(node_ip(k), 9091),
        );
        eprintln!(
            "198.18.0.{k}:9091 -> {body:?} ({}; after {:?})",
            if node_k(&pub_node) == k {
                "has the task"
            } else {
                "no task"
            },
            started.elapsed()
        );
        assert_eq!(body, "pub.1", "the page is the task's hostname");
    }

    step("service ls and inspect show the port");
    let ls = c.shoal(&["service", "ls"]).ok();
    assert!(ls.contains("*:9091->80/tcp"), "{ls}");
    let inspect = c.shoal(&["service", "inspect", "pub"]).ok();
    assert!(
        inspect.contains("9091") && inspect.contains("published"),
        "{inspect}"
    );

    step("publishing 9091 again is refused (409 naming pub)");
    let clash = c.shoal(&[
        "service", "create", "--name", "pub2", "-p", "9091:80", BUSYBOX, "sh", "-c", HTTPD,
    ]);
    assert_ne!(clash.code, 0, "{clash:?}");
    let text = format!("{}{}", clash.stdout, clash.stderr);
    assert!(text.contains("already published by service pub"), "{text}");
    eprintln!("refused: {}", text.trim());

    step("2 replicas: 30 requests to one node reach both tasks");
    c.shoal(&["service", "scale", "pub=2", "--timeout", "120s"])
        .ok();
    c.eventually("2 pub tasks running", wait, || {
        (c.running("pub", "ingress").len() == 2).then_some(())
    });
    let pages = c.eventually(
        "both tasks answer through node 1",
        Duration::from_secs(30),
        || {
            let mut seen = BTreeSet::new();
            let mut ok = 0;
            for _ in 0..30 {
                if let Some(p) = page(node_ip(1), 9091) {
                    ok += 1;
                    seen.insert(p);
                }
            }
            eprintln!("30 requests: {ok} answered, pages {seen:?}");
            (ok == 30 && seen.len() == 2).then_some(seen)
        },
    );
    assert_eq!(
        pages,
        BTreeSet::from(["pub.1".to_string(), "pub.2".to_string()])
    );

    step("host mode: only the node running the task answers on 8080; the others refuse");
    create(
        &c,
        &[
            "--name",
            "hostpub",
            "--publish",
            "published=8080,target=80,mode=host",
            BUSYBOX,
            "sh",
            "-c",
            HTTPD,
        ],
    );
    let host_task = c.eventually("hostpub.1 running", wait, || {
        c.tasks("hostpub")
            .into_iter()
            .find(|t| t["status"]["state"] == "running" && t["spec"]["desiredState"] == "running")
            .and_then(|t| t["spec"]["node"].as_str().map(str::to_string))
    });
    let hk = node_k(&host_task);
    eprintln!("hostpub.1 runs on {host_task}");
    let body = c.eventually("GET on the host-mode node", Duration::from_secs(30), || {
        page(node_ip(hk), 8080)
    });
    assert_eq!(body, "hostpub.1");
    for k in (1..=3).filter(|k| *k != hk) {
        assert!(
            refused(node_ip(k), 8080),
            "node {k} has no hostpub task and must refuse 8080: {:?}",
            http_get(node_ip(k), 8080)
        );
    }

    step("UDP: a published udp port answers through a node without a task");
    // Busybox's nc has no UDP mode; udhcpd is the busybox UDP server that answers. A
    // DISCOVER relayed "by" the entry node's ingress address comes back to that address's
    // port 67, which is where the mesh's SNAT put the request's source: conntrack undoes
    // both NATs and the host receives the OFFER.
    create(
        &c,
        &[
            "--name",
            "dhcp",
            "-p",
            "9092:67/udp",
            BUSYBOX,
            "sh",
            "-c",
            "printf 'start 10.9.9.10\\nend 10.9.9.20\\ninterface eth0\\nlease_file /tmp/leases\\n' > /tmp/u.conf \
             && touch /tmp/leases && exec udhcpd -f /tmp/u.conf",
        ],
    );
    let dhcp_node = c.eventually("dhcp.1 running", wait, || {
        c.running("dhcp", "ingress")
            .into_iter()
            .next()
            .map(|(_, n, _)| n)
    });
    let entry = (1..=3).find(|k| *k != node_k(&dhcp_node)).unwrap();
    eprintln!(
        "dhcp.1 on {dhcp_node}; asking through node {entry} (ingress {})",
        ingress_of(&format!("node-{entry}"))
    );
    let (op, offered) = c.eventually(
        "a udp answer through a node without the task",
        Duration::from_secs(30),
        || udp_dhcp(node_ip(entry), 9092, ingress_of(&format!("node-{entry}"))),
    );
    assert_eq!(op, 2, "a BOOTREPLY");
    assert!(
        offered.octets()[..3] == [10, 9, 9],
        "offered {offered} from the task's pool"
    );
    c.shoal(&["service", "rm", "dhcp"]).ok();

    step("removing the service closes the port on every node");
    c.shoal(&["service", "rm", "pub"]).ok();
    let removed = Instant::now();
    for k in 1..=3 {
        c.eventually(
            &format!("198.18.0.{k}:9091 refused"),
            Duration::from_secs(10),
            || refused(node_ip(k), 9091).then_some(()),
        );
    }
    eprintln!(
        "9091 closed on every node {:?} after `service rm`",
        removed.elapsed()
    );

    step("a node that dies takes no traffic through the others once its tasks are replaced");
    create(
        &c,
        &[
            "--name",
            "mesh",
            "-p",
            "9093:80",
            "--replicas",
            "3",
            BUSYBOX,
            "sh",
            "-c",
            HTTPD,
        ],
    );
    let mesh = c.eventually("3 mesh tasks running", wait, || {
        let r = c.running("mesh", "ingress");
        (r.len() == 3).then_some(r)
    });
    let victim = node_k(&mesh[0].1);
    eprintln!("stopping node {victim} (runs {})", mesh[0].0);
    let sockets = shim_sockets(&c, victim);
    assert!(!sockets.is_empty(), "node {victim} runs shims");
    for s in &sockets {
        assert!(
            s.exists(),
            "a shim's socket where containerd puts it: {}",
            s.display()
        );
    }
    c.stop_node(victim);
    let left: Vec<&PathBuf> = sockets.iter().filter(|s| s.exists()).collect();
    assert!(
        left.is_empty(),
        "the stopped node's shim sockets are gone: {left:?}"
    );
    let replaced = c.eventually("3 mesh tasks running on the other nodes", wait, || {
        let r = c.running("mesh", "ingress");
        (r.len() == 3 && r.iter().all(|(_, n, _)| node_k(n) != victim)).then_some(r)
    });
    eprintln!("replaced: {replaced:?}");
    for k in (1..=3).filter(|k| *k != victim) {
        c.eventually(
            &format!("all requests through node {k} succeed"),
            Duration::from_secs(30),
            || {
                let ok = (0..20).filter(|_| page(node_ip(k), 9093).is_some()).count();
                eprintln!("node {k}: {ok}/20 answered");
                (ok == 20).then_some(())
            },
        );
    }
    c.shoal(&["service", "rm", "mesh", "hostpub"]).ok();
}
