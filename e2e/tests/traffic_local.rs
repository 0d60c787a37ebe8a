//! End-to-end (issue 17, item 5): a published port with `traffic: local` keeps the client's
//! address. On a 3-node local cluster (secured, `shoal dev up`'s defaults), driven through
//! the `shoal` binary, with traffic from the host (root) namespace — 198.18.0.254 on the
//! underlay bridge — to the nodes' underlay addresses only, bounded counts, short timeouts:
//!
//! - the task's log (busybox `httpd -v` logs `IP:port` per request) shows 198.18.0.254 for a
//!   request sent to its node's `traffic: local` port, while the same request through a
//!   `traffic: cluster` port of another node shows that node's ingress address (SNAT);
//! - the other nodes refuse the local port; the health port answers `200 {"local":1}` on the
//!   task's node and `503 {"local":0}` on the others;
//! - a `mode: host` port keeps the client's address too.
//!
//! The cluster is removed at the end, also on failure.

use std::net::Ipv4Addr;
use std::time::Duration;

use shoal_e2e::{http_get, node_ip, node_k, require_e2e, step, Cluster, Get, BUSYBOX};

/// An HTTP server that logs every request's peer (`198.18.0.254:40000: response:200`).
const HTTPD: &str = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -v -p 80 -h /www";
/// The host namespace's address on the underlay bridge: the client of every request here.
const CLIENT: &str = "198.18.0.254";

fn logs(c: &Cluster, service: &str) -> String {
    let run = c.shoal(&["service", "logs", service]);
    let text = format!("{}{}", run.stdout, run.stderr);
    if run.code != 0 || logged_peers(&text).is_empty() {
        eprintln!("service logs {service} (exit {}):\n{text}", run.code);
    }
    text
}

/// The peers the service's tasks logged: `A.B.C.D` of each `A.B.C.D:port: response:…`, or
/// of `[::ffff:A.B.C.D]:port: response:…` (httpd on a dual-stack socket).
fn logged_peers(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter(|l| l.contains("response:"))
        .filter_map(|l| {
            l.split_whitespace().find_map(|w| {
                let w = w.trim_start_matches('[').trim_start_matches("::ffff:");
                w.split([':', ']']).next().and_then(|a| a.parse().ok())
            })
        })
        .collect()
}

#[test]
fn logged_peers_should_read_both_forms_of_httpd_verbose_lines() {
    let text = "loc.1@node-1 | [::ffff:198.18.0.254]:40522: response:200\n\
                loc.1@node-1 | 10.255.0.4:3301: response:200\n\
                loc.1@node-1 | started";
    assert_eq!(
        logged_peers(text),
        [Ipv4Addr::new(198, 18, 0, 254), Ipv4Addr::new(10, 255, 0, 4)]
    );
}

/// Node `k`'s ingress address (`Node.status.ingressAddress`).
fn ingress_address(c: &Cluster, k: u32) -> Ipv4Addr {
    let v = c.json(&["get", "nodes", "-o", "json"]);
    let items = v
        .as_array()
        .cloned()
        .or_else(|| v["items"].as_array().cloned())
        .unwrap_or_default();
    items
        .iter()
        .find(|n| n["metadata"]["name"] == format!("node-{k}"))
        .and_then(|n| n["status"]["ingressAddress"].as_str())
        .and_then(|a| a.parse().ok())
        .expect("the node's ingress address")
}

#[test]
fn traffic_local_keeps_the_client_address_end_to_end() {
    require_e2e!();
    let c = Cluster::up(3);
    let wait = Duration::from_secs(90);

    step("loc: 9181 traffic=local with health port 31181, and 9182 (cluster), 1 replica");
    c.shoal(&[
        "service",
        "create",
        "--name",
        "loc",
        "--publish",
        "published=9181,target=80,traffic=local,health-port=31181",
        "-p",
        "9182:80",
        "--replicas",
        "1",
        BUSYBOX,
        "sh",
        "-c",
        HTTPD,
    ])
    .ok();
    let (task, node) = c.eventually("loc.1 running", wait, || {
        c.running("loc", "ingress")
            .into_iter()
            .next()
            .map(|(t, n, _)| (t, n))
    });
    let k = node_k(&node);
    let others: Vec<u32> = (1..=3).filter(|j| *j != k).collect();
    eprintln!("{task} runs on {node}");

    step("service ls and inspect carry the policy and the health port");
    let ls = c.shoal(&["service", "ls"]).ok();
    assert!(ls.contains("*:9181->80/tcp (local, health 31181)"), "{ls}");
    let inspect = c.shoal(&["service", "inspect", "loc"]).ok();
    assert!(
        inspect.contains("traffic") && inspect.contains("local") && inspect.contains("healthPort"),
        "{inspect}"
    );

    step("a request to the task's node: the task logs the client's own address");
    let body = c.eventually(
        "GET on the task's node",
        Duration::from_secs(30),
        || match http_get(node_ip(k), 9181) {
            Get::Ok(200, body) => Some(body),
            other => {
                eprintln!("GET {}:9181: {other:?}", node_ip(k));
                None
            }
        },
    );
    assert_eq!(body, task, "the page is the task's hostname");
    let peers = c.eventually(
        "the request in the task's log",
        Duration::from_secs(15),
        || {
            let p = logged_peers(&logs(&c, "loc"));
            (!p.is_empty()).then_some(p)
        },
    );
    eprintln!("the task logged {peers:?}");
    let client: Ipv4Addr = CLIENT.parse().unwrap();
    assert_eq!(
        peers,
        [client],
        "the task saw the client's address: {}",
        logs(&c, "loc")
    );

    step("the other nodes refuse the local port (no local task), never forward it");
    for j in &others {
        let got = http_get(node_ip(*j), 9181);
        assert_eq!(got, Get::Refused, "node {j} must refuse 9181");
    }

    step("the health port: 200 with the local count on the task's node, 503 elsewhere");
    let healthy = c.eventually("health 200", Duration::from_secs(15), || {
        match http_get(node_ip(k), 31181) {
            Get::Ok(code, body) => Some((code, body)),
            other => {
                eprintln!("health on node {k}: {other:?}");
                None
            }
        }
    });
    assert_eq!(healthy, (200, "{\"local\":1}".to_string()));
    for j in &others {
        assert_eq!(
            http_get(node_ip(*j), 31181),
            Get::Ok(503, "{\"local\":0}".to_string()),
            "node {j}"
        );
    }
    eprintln!("health: node {k} {healthy:?}, others 503 {{\"local\":0}}");

    step("for contrast, the cluster port through another node: the task sees that node (SNAT)");
    let entry = others[0];
    let snat = ingress_address(&c, entry);
    let body = c.eventually(
        "GET 9182 through a node without the task",
        Duration::from_secs(30),
        || match http_get(node_ip(entry), 9182) {
            Get::Ok(200, body) => Some(body),
            other => {
                eprintln!("GET {}:9182: {other:?}", node_ip(entry));
                None
            }
        },
    );
    assert_eq!(body, task);
    let peers = c.eventually("the second request logged", Duration::from_secs(15), || {
        let p = logged_peers(&logs(&c, "loc"));
        (p.len() >= 2).then_some(p)
    });
    assert_eq!(peers, [client, snat], "{}", logs(&c, "loc"));
    eprintln!("through node {entry} the task saw {snat} (node {entry}'s ingress address)");

    step("scaled to 0: the task's node refuses too and its health port says 503");
    c.shoal(&["service", "scale", "loc=0", "--timeout", "120s"])
        .ok();
    c.eventually(
        "9181 refused on the old node",
        Duration::from_secs(30),
        || (http_get(node_ip(k), 9181) == Get::Refused).then_some(()),
    );
    c.eventually("503 on the old node", Duration::from_secs(30), || {
        (http_get(node_ip(k), 31181) == Get::Ok(503, "{\"local\":0}".to_string())).then_some(())
    });

    step("mode: host keeps the client's address too");
    c.shoal(&[
        "service",
        "create",
        "--name",
        "hostsrc",
        "--publish",
        "published=9183,target=80,mode=host",
        BUSYBOX,
        "sh",
        "-c",
        HTTPD,
    ])
    .ok();
    let (host_task, host_node) = c.eventually("hostsrc.1 running", wait, || {
        c.tasks("hostsrc")
            .into_iter()
            .find(|t| t["status"]["state"] == "running" && t["spec"]["desiredState"] == "running")
            .and_then(|t| t["spec"]["node"].as_str().map(str::to_string))
            .map(|n| ("hostsrc.1".to_string(), n))
    });
    let hk = node_k(&host_node);
    let body = c.eventually(
        "GET on the host-mode node",
        Duration::from_secs(30),
        || match http_get(node_ip(hk), 9183) {
            Get::Ok(200, body) => Some(body),
            other => {
                eprintln!("GET {}:9183: {other:?}", node_ip(hk));
                None
            }
        },
    );
    assert_eq!(body, host_task);
    let peers = c.eventually(
        "the host-mode request logged",
        Duration::from_secs(15),
        || {
            let p = logged_peers(&logs(&c, "hostsrc"));
            (!p.is_empty()).then_some(p)
        },
    );
    assert_eq!(peers, [client], "{}", logs(&c, "hostsrc"));
    eprintln!("host mode: the task saw {peers:?}");
    c.shoal(&["service", "rm", "loc", "hostsrc"]).ok();
}
