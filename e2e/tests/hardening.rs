//! End-to-end: what a task cannot do to its node or to other tenants (issue 13), on a
//! secured 2-node local cluster: reserved ports, the node's input policy toward tasks, the
//! VXLAN source filter, the container sandbox (no_new_privs, seccomp, limits, OOM), bounded
//! exec output, and reservations the scheduler honours.
//!
//! One cluster runs at a time, so every scenario runs in sequence inside one test, each
//! announcing itself on stderr. Listeners the test starts in node 1's namespace are killed
//! and the cluster removed at the end, also on failure.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use shoal_e2e::{require_e2e, step, Cluster, BUSYBOX};

fn service(name: &str, replicas: u32, extra: &str) -> String {
    format!(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: {BUSYBOX}\n  \
         replicas: {replicas}\n{extra}"
    )
}

/// Listeners the test runs inside a node's namespace (busybox httpd), killed on drop.
struct Listeners(Vec<Child>);

impl Drop for Listeners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `busybox httpd` on every port, on every address of node k's namespace.
fn listen_in_node(k: u32, ports: &[u16], dir: &std::path::Path) -> Listeners {
    std::fs::create_dir_all(dir).expect("www dir");
    std::fs::write(dir.join("index.html"), "node-listener\n").expect("index");
    let ns = format!("shoal-node-{k}");
    let mut children = Vec::new();
    for port in ports {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "busybox", "httpd", "-f", "-p"])
            .arg(port.to_string())
            .arg("-h")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox httpd");
        children.push(child);
    }
    Listeners(children)
}

/// Whether an HTTP GET from the root namespace to ip:port answers with the listener's page.
fn answers_from_host(ip: Ipv4Addr, port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(2))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("node-listener")
}

/// The one running task of `service` and its node: (name, node).
fn running_task(c: &Cluster, service: &str) -> (String, String) {
    c.eventually(
        &format!("a running task of {service}"),
        Duration::from_secs(90),
        || {
            c.tasks(service)
                .into_iter()
                .find(|t| {
                    t["status"]["state"] == "running" && t["spec"]["desiredState"] == "running"
                })
                .map(|t| {
                    (
                        format!("{service}.{}", t["spec"]["slot"]),
                        t["spec"]["node"].as_str().unwrap_or_default().to_string(),
                    )
                })
        },
    )
}

fn pid_of(c: &Cluster, daemon: &str) -> u32 {
    let path = c.state_dir().join("run").join(format!("{daemon}.pid"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .expect("a pid")
}

/// VmHWM (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Packets counted by the named nftables counter in node k's namespace.
fn nft_counter(c: &Cluster, k: u32, table: &str, counter: &str) -> u64 {
    let out = c
        .in_node(k, &["nft", "-j", "list", "counter", "inet", table, counter])
        .ok();
    let v: Value = serde_json::from_str(&out).expect("nft json");
    v["nftables"]
        .as_array()
        .and_then(|a| a.iter().find_map(|o| o["counter"]["packets"].as_u64()))
        .unwrap_or_else(|| panic!("no counter {table}/{counter} in {out}"))
}

/// The first object of an `inspect` (a JSON array, as Docker prints).
fn first(v: Value) -> Value {
    match v {
        Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
        other => other,
    }
}

fn refused_with(run: &shoal_e2e::Run, words: &[&str]) -> bool {
    run.code != 0 && words.iter().all(|w| run.stderr.contains(w))
}

#[test]
fn a_task_cannot_hurt_its_node_or_other_tenants() {
    require_e2e!();
    let mut c = Cluster::up(2);

    step("reserved ports are refused with the field and the reason; nothing is written");
    for (publish, what) in [
        ("4789:4789/udp", "4789/udp"),
        ("22:22", "22/tcp"),
        ("7777:80", "7777/tcp"),
    ] {
        let run = c.shoal(&[
            "service", "create", "--name", "taken", "-p", publish, BUSYBOX, "sleep", "1000",
        ]);
        assert!(
            refused_with(&run, &["spec.ports[0].published", what, "reserved"]),
            "-p {publish} was not refused as reserved: {run:?}"
        );
    }
    let ls = c.shoal(&["service", "ls", "-q"]).ok();
    assert!(!ls.contains("taken"), "a refused service was written: {ls}");

    step("the ingress network is the system's");
    let run = c.shoal(&["network", "rm", "ingress"]);
    assert!(run.code != 0 && run.stderr.contains("ingress"), "{run:?}");
    let run = c.shoal(&["network", "create", "--driver", "overlay", "ingress"]);
    assert!(run.code != 0 && run.stderr.contains("ingress"), "{run:?}");

    step("a task reaches nothing of its node: agent, etcd, API and ssh ports are closed to it");
    c.apply(
        "apiVersion: shoal/v1\nkind: Network\nmetadata: {name: hard}\nspec: {driver: overlay}\n",
    );
    c.apply(&service(
        "prober",
        2,
        "  command: [sleep, \"100000\"]\n  networks: [{name: hard}]\n",
    ));
    let probers = c.eventually("two probers running", Duration::from_secs(90), || {
        let r = c.running("prober", "hard");
        (r.len() == 2).then_some(r)
    });
    let (task1, node1, _) = probers
        .iter()
        .find(|(_, n, _)| n == "node-1")
        .cloned()
        .or_else(|| probers.first().cloned())
        .expect("a prober");
    let k: u32 = node1.trim_start_matches("node-").parse().expect("node-k");
    let ports = [22u16, 2379, 23790, 7777, 7800 + k as u16];
    let _listeners = listen_in_node(k, &ports, &c.state_dir().join("www"));
    let node_ip = Ipv4Addr::new(198, 18, 0, k as u8);
    c.eventually(
        "the node listeners answer from the host",
        Duration::from_secs(10),
        || {
            ports
                .iter()
                .all(|p| answers_from_host(node_ip, *p))
                .then_some(())
        },
    );
    let node = first(c.json(&["node", "inspect", &node1]));
    let ingress_ip = node["status"]["ingressAddress"]
        .as_str()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut targets = vec![node_ip.to_string(), "172.18.0.1".to_string()];
    if !ingress_ip.is_empty() {
        targets.push(ingress_ip);
    }
    for ip in &targets {
        for port in ports {
            let url = format!("http://{ip}:{port}/");
            // Not `wget -T`: the image's busybox wget crashes on it (exit 139), which would
            // make this probe fail whatever the firewall does.
            let run = c.exec(&task1, &["timeout", "2", "wget", "-qO-", &url]);
            assert_ne!(run.code, 139, "the probe itself crashed: {run:?}");
            assert!(
                run.code != 0 && !run.stdout.contains("node-listener"),
                "{task1} reached its node at {url}: {run:?}"
            );
        }
    }
    step("… while the overlay between tasks on different nodes still works");
    let (other, _, other_ip) = probers
        .iter()
        .find(|(name, _, _)| *name != task1)
        .cloned()
        .expect("another prober");
    let run = c.exec(&task1, &["ping", "-c", "1", "-W", "2", &other_ip]);
    assert_eq!(
        run.code, 0,
        "{task1} cannot ping {other} at {other_ip}: {run:?}"
    );
    let run = c.exec(&task1, &["nslookup", "prober"]);
    assert_eq!(run.code, 0, "DNS from a task still works: {run:?}");

    step("VXLAN from an address that is not a node's is dropped and counted");
    let net = first(c.json(&["network", "inspect", "hard"]));
    let vni = net["status"]["vni"]
        .as_u64()
        .or_else(|| net["spec"]["vni"].as_u64())
        .unwrap_or_else(|| panic!("no VNI in {net}"));
    let before = nft_counter(&c, k, "shoal_node", "vxlan_dropped");
    let outside = c.outside_world().expect("outside world");
    let sh = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["-n", &outside])
            .args(args)
            .output()
            .expect("ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    let vni_s = vni.to_string();
    let remote = node_ip.to_string();
    sh(&[
        "link", "add", "vxevil", "type", "vxlan", "id", &vni_s, "remote", &remote, "dstport",
        "4789", "dev", "eth0",
    ]);
    sh(&["addr", "add", "10.254.254.254/32", "dev", "vxevil"]);
    sh(&["link", "set", "vxevil", "up"]);
    sh(&["route", "add", &format!("{other_ip}/32"), "dev", "vxevil"]);
    // The forged frames (ARP for a task address) go to node k's VXLAN port.
    let out = Command::new("ip")
        .args([
            "netns", "exec", &outside, "busybox", "ping", "-c", "3", "-W", "1",
        ])
        .arg(&other_ip)
        .output()
        .expect("busybox ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 packets transmitted"), "{out:?}");
    let after = nft_counter(&c, k, "shoal_node", "vxlan_dropped");
    assert!(
        after > before,
        "forged VXLAN from 198.18.0.200 was not counted as dropped ({before} -> {after})"
    );
    let run = c.exec(&task1, &["ping", "-c", "1", "-W", "2", &other_ip]);
    assert_eq!(
        run.code, 0,
        "the network still works after the forgery: {run:?}"
    );

    step("the sandbox: no_new_privs, seccomp filter, no user namespaces");
    let status = c.exec(&task1, &["cat", "/proc/self/status"]).ok();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["NoNewPrivs:", "1"])),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["Seccomp:", "2"])),
        "{status}"
    );
    let run = c.exec(&task1, &["unshare", "-r", "true"]);
    assert_ne!(run.code, 0, "unshare -r worked in a task: {run:?}");

    step("exec output is bounded; agent and controller stay small");
    let run = c.exec(&task1, &["sh", "-c", "yes | head -c 200000000"]);
    assert!(
        run.stdout.len() < 20 << 20,
        "exec returned {} bytes",
        run.stdout.len()
    );
    assert!(
        (run.stdout.clone() + &run.stderr).contains("truncated"),
        "no truncation marker in the last bytes: {:?} / {}",
        &run.stdout[run.stdout.len().saturating_sub(200)..],
        run.stderr
    );
    for daemon in [format!("agent-{k}"), "controller-1".to_string()] {
        let kib = peak_rss_kib(pid_of(&c, &daemon));
        eprintln!("{daemon}: peak RSS {} MiB", kib / 1024);
        assert!(kib < 100 * 1024, "{daemon} peak RSS {kib} KiB");
    }
    c.shoal(&["service", "rm", "prober"]).ok();

    step("a task over its memory limit is OOM-killed, shown as such, and replaced");
    c.apply(&service(
        "hog",
        1,
        "  command: [sh, -c, \"sleep 2; x=$(head -c 67108864 /dev/zero | tr '\\\\0' a); sleep 100000\"]\n  \
         resources: {limits: {memory: 32Mi}}\n",
    ));
    let oom = c.eventually("an OOM-killed hog task", Duration::from_secs(90), || {
        c.tasks("hog")
            .into_iter()
            .find(|t| t["status"]["oomKilled"] == true)
    });
    assert_eq!(oom["status"]["state"], "failed", "{oom}");
    let ps = c.shoal(&["service", "ps", "hog"]).ok();
    assert!(
        ps.contains("OOM"),
        "service ps does not show the OOM kill:\n{ps}"
    );
    c.eventually("the hog slot replaced", Duration::from_secs(60), || {
        (c.tasks("hog").len() >= 2).then_some(())
    });
    c.shoal(&["service", "rm", "hog"]).ok();

    step("a fork bomb meets the pids limit; the node keeps answering");
    c.apply(&service(
        "bomb",
        1,
        "  command: [sh, -c, \"f() { f & f & wait; }; f\"]\n  resources: {limits: {pids: 64}}\n  \
         placement: {constraints: [\"node.name==node-1\"]}\n",
    ));
    c.apply(&service(
        "neighbour",
        1,
        "  command: [sleep, \"100000\"]\n  placement: {constraints: [\"node.name==node-1\"]}\n",
    ));
    let (neighbour, _) = running_task(&c, "neighbour");
    running_task(&c, "bomb");
    std::thread::sleep(Duration::from_secs(3));
    let run = c.exec(&neighbour, &["echo", "alive"]);
    assert_eq!(run.stdout.trim(), "alive", "node-1 did not answer: {run:?}");
    let nodes = c.shoal(&["node", "ls"]).ok();
    assert!(!nodes.contains("Down"), "{nodes}");
    let (bomb, _) = running_task(&c, "bomb");
    let run = c.exec(&bomb, &["sh", "-c", "ps | wc -l"]);
    eprintln!("bomb: {} processes", run.stdout.trim());
    c.shoal(&["service", "rm", "bomb"]).ok();
    c.shoal(&["service", "rm", "neighbour"]).ok();

    step("a reservation no node can hold stays pending, with the reason");
    c.shoal_apply_detached(&service(
        "greedy",
        1,
        "  command: [sleep, \"100000\"]\n  resources: {reservations: {memory: 64Ti}}\n",
    ));
    let task = c.eventually(
        "a pending greedy task with a reason",
        Duration::from_secs(30),
        || {
            c.tasks("greedy").into_iter().find(|t| {
                t["status"]["state"] == "pending"
                    && t["spec"]["pendingReason"]
                        .as_str()
                        .is_some_and(|r| r.contains("memory"))
            })
        },
    );
    eprintln!("pending: {}", task["spec"]["pendingReason"]);
    let ps = c.shoal(&["service", "ps", "greedy"]).ok();
    assert!(ps.contains("memory"), "service ps does not say why:\n{ps}");
    c.shoal(&["service", "rm", "greedy"]).ok();
}
