//! End-to-end: a 3-node local cluster with real containerd containers, VXLAN overlays,
//! egress through the gateway bridge, DNS and VIPs — driven through the `shoal` binary.
//!
//! One cluster runs at a time, so every scenario runs in sequence inside one test, each
//! announcing itself on stderr. The cluster is removed at the end, also on failure.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shoal_e2e::{in_netns, node_k, require_e2e, step, Cluster, BUSYBOX, UNDERLAY_NETNS};

fn httpd_service(name: &str, replicas: u32, networks: &[&str]) -> String {
    let nets: Vec<String> = networks.iter().map(|n| format!("{{name: {n}}}")).collect();
    format!(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: {BUSYBOX}\n  command: [sh, -c]\n  \
         args: [\"mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www\"]\n  replicas: {replicas}\n  \
         networks: [{}]\n",
        nets.join(", ")
    )
}

fn sleeper_service(name: &str, networks: &[&str]) -> String {
    let nets: Vec<String> = networks.iter().map(|n| format!("{{name: {n}}}")).collect();
    format!(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: {BUSYBOX}\n  command: [sleep, \"100000\"]\n  \
         networks: [{}]\n",
        nets.join(", ")
    )
}

fn network(name: &str, internal: bool) -> String {
    format!("apiVersion: shoal/v1\nkind: Network\nmetadata: {{name: {name}}}\nspec: {{internal: {internal}}}\n")
}

/// Network namespaces on this machine whose name mentions `task_id`.
fn task_netns(task_id: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.contains(&task_id[..12.min(task_id.len())]))
        .map(str::to_string)
        .collect()
}

fn task_ids(c: &Cluster, service: &str) -> Vec<String> {
    c.tasks(service)
        .iter()
        .filter_map(|t| t["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

fn task_error(c: &Cluster, service: &str) -> String {
    c.shoal(&["service", "ps", service, "--no-trunc"]).stdout
}

/// The ERROR column of `service ps SERVICE --no-trunc`, one entry per task row, unquoted.
fn ps_errors(c: &Cluster, service: &str) -> Vec<String> {
    let table = c.shoal(&["service", "ps", service, "--no-trunc"]).ok();
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    // The table is ASCII and aligned by characters: the column starts where its header does.
    let col = header
        .find("ERROR")
        .unwrap_or_else(|| panic!("no ERROR column in:\n{table}"));
    lines
        .map(|l| {
            let cell: String = l.chars().skip(col).collect();
            cell.trim().trim_matches('"').to_string()
        })
        .collect()
}

/// A node as `get nodes -o json` shows it.
fn node_json(c: &Cluster, name: &str) -> serde_json::Value {
    let v = c.json(&["get", "nodes", "-o", "json"]);
    v["items"]
        .as_array()
        .or(v.as_array())
        .and_then(|items| items.iter().find(|n| n["metadata"]["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("node {name} not in {v}"))
}

/// Node k's running containers and their init pids, from its containerd (`ctr task ls`).
fn container_pids(c: &Cluster, k: u32) -> std::collections::BTreeMap<String, u32> {
    let sock = c
        .state_dir()
        .join(format!("node-{k}/containerd/containerd.sock"));
    let out = Command::new("ctr")
        .args([
            "--address",
            sock.to_str().unwrap(),
            "-n",
            "shoal",
            "task",
            "ls",
        ])
        .output()
        .expect("run ctr");
    assert!(
        out.status.success(),
        "ctr task ls on node-{k} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [id, pid, "RUNNING"] => Some((id.to_string(), pid.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

/// Ids of every task wanted running, of any service.
fn wanted_running(c: &Cluster) -> BTreeSet<String> {
    let v = c.json(&["get", "tasks", "-o", "json"]);
    v.as_array()
        .or_else(|| v["items"].as_array())
        .expect("a list of tasks")
        .iter()
        .filter(|t| t["spec"]["desiredState"] == "running")
        .filter_map(|t| t["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

/// Runs `nft ARGS` in the underlay's namespace; its stdout.
fn underlay_nft(args: &[&str]) -> String {
    let mut argv = vec!["nft"];
    argv.extend_from_slice(args);
    let r = in_netns(UNDERLAY_NETNS, &argv);
    assert_eq!(r.code, 0, "nft {args:?} in {UNDERLAY_NETNS}: {r:?}");
    r.stdout
}

/// The packets counted by the one counter in `nft list table` output.
fn counted_packets(family: &str, table: &str) -> u64 {
    let text = underlay_nft(&["list", "table", family, table]);
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet counter in {text}"))
}

/// The root namespace has only the host's veth into the underlay (no bridge), and a frame
/// the underlay bridge forwards between two nodes passes no IPv4 hook in the underlay's
/// namespace (`br_netfilter` is off there): a bridge-family counter sees the traffic of a
/// request from `task` to `ip` (on another node), an ip-family one at prerouting sees none.
fn underlay_frames_skip_the_ip_hooks(c: &Cluster, task: &str, ip: &str) {
    let root_link = |name: &str| {
        Command::new("ip")
            .args(["-o", "addr", "show", "dev", name])
            .output()
            .map(|o| {
                (
                    o.status.success(),
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                )
            })
            .expect("ip addr show")
    };
    assert!(
        !root_link("shoal-br0").0,
        "no underlay bridge in the root namespace"
    );
    let (ok, host) = root_link("shoal-host");
    assert!(
        ok && host.contains("198.18.0.254/24"),
        "the host's veth: {host}"
    );
    let probe = "table bridge e2e_seen { chain bridged { type filter hook forward priority 0; counter; }; }\n\
                 table ip e2e_hooked { chain routed { type filter hook prerouting priority 0; counter; }; }\n";
    underlay_nft(&[probe]);
    let r = c.exec(
        task,
        &["timeout", "5", "wget", "-qO-", &format!("http://{ip}/")],
    );
    let (seen, hooked) = (
        counted_packets("bridge", "e2e_seen"),
        counted_packets("ip", "e2e_hooked"),
    );
    underlay_nft(&["delete", "table", "bridge", "e2e_seen"]);
    underlay_nft(&["delete", "table", "ip", "e2e_hooked"]);
    assert_eq!(r.code, 0, "{task} -> http://{ip}/: {r:?}");
    assert!(
        seen > 0,
        "the request crossed the underlay bridge ({seen} frames)"
    );
    assert_eq!(hooked, 0, "bridged frames reached the underlay's IPv4 hooks ({hooked} packets): br_netfilter is on there");
}

#[test]
fn local_cluster_end_to_end() {
    require_e2e!();
    let mut c = Cluster::up(3);
    let wait = Duration::from_secs(90);

    step("overlay: api (2 replicas) and worker on appoverlay; worker reaches an api task on another node");
    c.apply(&format!(
        "{}---\n{}---\n{}",
        network("appoverlay", false),
        httpd_service("api", 2, &["appoverlay"]),
        sleeper_service("worker", &["appoverlay"])
    ));
    let api = c.eventually("2 api tasks running", wait, || {
        let r = c.running("api", "appoverlay");
        (r.len() == 2).then_some(r)
    });
    let nodes: BTreeSet<&str> = api.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(
        nodes.len(),
        2,
        "api replicas spread over two nodes: {api:?}"
    );
    let worker = c.eventually("worker running", wait, || {
        c.running("worker", "appoverlay").into_iter().next()
    });
    let (remote_name, remote_node, remote_ip) = api
        .iter()
        .find(|(_, n, _)| *n != worker.1)
        .expect("an api task on another node than worker.1")
        .clone();
    eprintln!(
        "worker.1 on {} -> {remote_name} on {remote_node} at {remote_ip}",
        worker.1
    );
    let page = c.eventually("wget across VXLAN", Duration::from_secs(30), || {
        let r = c.exec(
            "worker.1",
            &[
                "timeout",
                "5",
                "wget",
                "-qO-",
                &format!("http://{remote_ip}/"),
            ],
        );
        (r.code == 0).then_some(r.stdout)
    });
    assert_eq!(page.trim(), remote_name, "the page is that task's hostname");

    step("underlay: its bridge lives in a namespace of its own, where bridged frames pass no IP hook");
    underlay_frames_skip_the_ip_hooks(&c, "worker.1", &remote_ip);

    step("isolation: a task on another overlay cannot reach api");
    c.apply(&format!(
        "{}---\n{}",
        network("othernet", false),
        sleeper_service("stranger", &["othernet"])
    ));
    c.eventually("stranger running", wait, || {
        c.running("stranger", "othernet").into_iter().next()
    });
    let r = c.exec(
        "stranger.1",
        &[
            "timeout",
            "5",
            "wget",
            "-qO-",
            &format!("http://{remote_ip}/"),
        ],
    );
    assert_ne!(r.code, 0, "othernet must not reach appoverlay: {r:?}");

    step("discovery: `api` resolves to its VIP, tasks.api to both tasks; another network cannot resolve it");
    let vip = c.json(&["service", "inspect", "api"]);
    let vip = vip.as_array().map(|a| a[0].clone()).unwrap_or(vip);
    let vip = vip["status"]["virtualIps"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["network"] == "appoverlay"))
        .and_then(|v| v["addr"].as_str())
        .map(|a| a.split('/').next().unwrap().to_string())
        .expect("api has a VIP on appoverlay");
    let api_ips: BTreeSet<String> = c
        .running("api", "appoverlay")
        .into_iter()
        .map(|(_, _, ip)| ip)
        .collect();
    assert!(!api_ips.contains(&vip), "the VIP is no task's address");
    let answer = c.eventually("nslookup api", Duration::from_secs(30), || {
        let r = c.exec("worker.1", &["nslookup", "api"]);
        (r.code == 0 && r.stdout.contains(&vip)).then_some(r.stdout)
    });
    eprintln!("{answer}");
    let answer = c.exec("worker.1", &["nslookup", "tasks.api"]).ok();
    for ip in &api_ips {
        assert!(
            answer.contains(ip.as_str()),
            "tasks.api lists {ip}: {answer}"
        );
    }
    let r = c.exec("stranger.1", &["nslookup", "api"]);
    assert!(
        r.code != 0 || !r.stdout.contains(&vip),
        "othernet must not resolve api: {r:?}"
    );

    step("VIP load balancing: 40 requests from worker to http://api/ reach both tasks");
    let hits = |n: usize| -> std::collections::BTreeMap<String, usize> {
        let script = format!("i=0; while [ $i -lt {n} ]; do timeout 5 wget -qO- http://api/ || echo FAILED; i=$((i+1)); done");
        let out = c.exec("worker.1", &["sh", "-c", &script]).ok();
        let mut m = std::collections::BTreeMap::new();
        for line in out.lines() {
            *m.entry(line.trim().to_string()).or_insert(0) += 1;
        }
        m
    };
    let m = hits(40);
    eprintln!("{m:?}");
    assert!(!m.contains_key("FAILED"), "no request fails: {m:?}");
    assert_eq!(m.len(), 2, "both tasks answer: {m:?}");
    assert!(
        m.values().all(|&n| n >= 10),
        "each task takes at least 10 of 40: {m:?}"
    );

    step("scale api to 3: the new task takes traffic");
    c.shoal(&["service", "scale", "api=3", "--timeout", "120s"])
        .ok();
    let m = c.eventually(
        "three tasks answer through the VIP",
        Duration::from_secs(30),
        || {
            let m = hits(30);
            (m.len() == 3 && !m.contains_key("FAILED")).then_some(m)
        },
    );
    eprintln!("{m:?}");
    step("scale api back to 2 under load: a task leaves DNS and the VIP before it stops, so no request fails");
    let during = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let script = "i=0; while [ $i -lt 60 ]; do timeout 5 wget -qO- http://api/ || echo FAILED; i=$((i+1)); usleep 100000; done";
            c.exec("worker.1", &["sh", "-c", script]).ok()
        });
        std::thread::sleep(Duration::from_millis(700));
        c.shoal(&["service", "scale", "api=2", "--timeout", "120s"])
            .ok();
        load.join().expect("load thread")
    });
    let failed = during.lines().filter(|l| l.contains("FAILED")).count();
    eprintln!(
        "{} requests during scale-down, {failed} failed",
        during.lines().count()
    );
    assert_eq!(
        failed, 0,
        "no request fails while a task is drained:\n{during}"
    );

    step("endpoint mode dnsrr: the name gives task addresses and there is no VIP");
    c.apply(
        &httpd_service("rr", 2, &["appoverlay"])
            .replace("  replicas: 2\n", "  replicas: 2\n  endpointMode: dnsrr\n"),
    );
    let rr_ips: BTreeSet<String> = c.eventually("2 rr tasks", wait, || {
        let r = c.running("rr", "appoverlay");
        (r.len() == 2).then_some(r.into_iter().map(|(_, _, ip)| ip).collect())
    });
    let answer = c.eventually(
        "nslookup rr lists both tasks",
        Duration::from_secs(30),
        || {
            let r = c.exec("worker.1", &["nslookup", "rr"]);
            rr_ips
                .iter()
                .all(|ip| r.stdout.contains(ip.as_str()))
                .then_some(r.stdout)
        },
    );
    eprintln!("{answer}");
    let rr = c.json(&["service", "inspect", "rr"]);
    let rr = rr.as_array().map(|a| a[0].clone()).unwrap_or(rr);
    assert!(
        rr["status"]["virtualIps"]
            .as_array()
            .map(|v| v.is_empty())
            .unwrap_or(true),
        "dnsrr has no VIP: {rr}"
    );
    c.shoal(&["service", "rm", "rr"]).ok();

    step("health checks: a task that turns unhealthy leaves the load balancer and is replaced");
    let flaky = httpd_service("flaky", 2, &["appoverlay"]).replace(
        "  replicas: 2\n",
        "  replicas: 2\n  healthcheck: {command: [sh, -c, \"test ! -f /www/sick\"], intervalSeconds: 1, retries: 3}\n",
    );
    c.apply(&flaky);
    let first = c.eventually("both flaky tasks healthy", wait, || {
        let healthy: BTreeSet<String> = c
            .tasks("flaky")
            .iter()
            .filter(|t| t["status"]["state"] == "running" && t["status"]["healthy"] == true)
            .filter_map(|t| t["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        (healthy.len() == 2).then_some(healthy)
    });
    c.exec("flaky.1", &["touch", "/www/sick"]).ok();
    let reasons = c.eventually(
        "flaky.1 fails as unhealthy and a new task takes slot 1",
        wait,
        || {
            let ps = task_error(&c, "flaky");
            let now = c.running_ids("flaky");
            (ps.contains("unhealthy") && now.len() == 2 && now != first).then_some(ps)
        },
    );
    eprintln!("{reasons}");
    let served = c.eventually("both flaky slots answer through the VIP again", Duration::from_secs(30), || {
        let script = "i=0; while [ $i -lt 20 ]; do timeout 5 wget -qO- http://flaky/ || echo FAILED; i=$((i+1)); done";
        let out = c.exec("worker.1", &["sh", "-c", script]).ok();
        let names: BTreeSet<String> = out.lines().map(|l| l.trim().to_string()).collect();
        (names.len() == 2 && !names.contains("FAILED")).then_some(names)
    });
    eprintln!("{served:?}");
    c.shoal(&["service", "rm", "flaky"]).ok();

    step("egress: a task reaches the outside world through the gateway bridge; an internal one cannot");
    let outside = c.outside_world().expect("outside namespace");
    let www = c.state_dir().join("outside-www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "outside world\n").unwrap();
    let mut server: Child = Command::new("ip")
        .args([
            "netns", "exec", &outside, "busybox", "httpd", "-f", "-p", "8080", "-h",
        ])
        .arg(&www)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("outside httpd");
    let page = c.eventually(
        "worker reaches 198.18.0.200:8080",
        Duration::from_secs(30),
        || {
            let r = c.exec(
                "worker.1",
                &["timeout", "5", "wget", "-qO-", "http://198.18.0.200:8080/"],
            );
            (r.code == 0).then_some(r.stdout)
        },
    );
    assert_eq!(page.trim(), "outside world");
    c.apply(&format!(
        "{}---\n{}",
        network("sealednet", true),
        sleeper_service("sealed", &["sealednet"])
    ));
    c.eventually("sealed running", wait, || {
        c.running("sealed", "sealednet").into_iter().next()
    });
    let r = c.exec(
        "sealed.1",
        &["timeout", "5", "wget", "-qO-", "http://198.18.0.200:8080/"],
    );
    assert_ne!(r.code, 0, "an internal network has no egress: {r:?}");

    step("drift: an egress table flushed by hand is written again by the next full reconcile, with no task start");
    let (_, worker_node, _) = c
        .running("worker", "appoverlay")
        .into_iter()
        .next()
        .expect("worker.1");
    let k = node_k(&worker_node);
    let masquerades = || {
        c.in_node(k, &["nft", "list", "table", "ip", "shoal_gw"])
            .stdout
            .contains("masquerade")
    };
    assert!(masquerades(), "node-{k}'s egress table masquerades");
    let r = c.in_node(k, &["nft", "flush", "table", "ip", "shoal_gw"]);
    assert_eq!(r.code, 0, "flushing node-{k}'s egress table: {r:?}");
    assert!(!masquerades());
    c.eventually(
        "the egress table written again",
        Duration::from_secs(45),
        || masquerades().then_some(()),
    );
    let r = c.exec(
        "worker.1",
        &["timeout", "5", "wget", "-qO-", "http://198.18.0.200:8080/"],
    );
    if r.code != 0 {
        // Where it stalled: the node's table and entries, and the task's ARP cache (a
        // gateway bridge whose address moved once left it pointing nowhere).
        let table = c.in_node(k, &["nft", "list", "table", "ip", "shoal_gw"]);
        let neigh = c.in_node(k, &["ip", "neigh"]);
        let conns = c.in_node(k, &["grep", "198.18.0.200", "/proc/net/nf_conntrack"]);
        let gw = c.in_node(k, &["ip", "-br", "link", "show", "shoal_gwbridge"]);
        let arp = c.exec("worker.1", &["cat", "/proc/net/arp"]);
        eprintln!(
            "node-{k}'s shoal_gw:\n{}\nneighbours:\n{}\nconntrack:\n{}\ngateway bridge: {}\nworker's ARP cache:\n{}",
            table.stdout, neigh.stdout, conns.stdout, gw.stdout, arp.stdout
        );
    }
    assert_eq!(r.code, 0, "worker reaches the outside again: {r:?}");
    // Done with the outside server: stop it and reap it.
    let _ = server.kill();
    let _ = server.wait();

    step("restore: killing a task's container by hand gets the slot a running task again");
    let before = c.running_ids("api");
    let victim = before.iter().next().unwrap().clone();
    let netns = task_netns(&victim);
    assert!(!netns.is_empty(), "task {victim} has a network namespace");
    for ns in &netns {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .unwrap();
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    c.eventually(
        "api back to 2 running tasks without the killed one",
        wait,
        || {
            let now = c.running_ids("api");
            (now.len() == 2 && !now.contains(&victim)).then_some(())
        },
    );
    let m = c.eventually("after the replacement joins, every request succeeds and both tasks answer", Duration::from_secs(30), || {
        let script = "i=0; while [ $i -lt 20 ]; do timeout 5 wget -qO- http://api/ || echo FAILED; i=$((i+1)); done";
        let out = c.exec("worker.1", &["sh", "-c", script]).ok();
        let names: BTreeSet<String> = out.lines().map(|l| l.trim().to_string()).collect();
        (names.len() == 2 && !names.contains("FAILED")).then_some(names)
    });
    eprintln!("{m:?}");

    step("agent restart leaves running containers alone");
    let api = c.running("api", "appoverlay");
    let (task, node, _) = api[0].clone();
    let k = node_k(&node);
    let ids_before = c.running_ids("api");
    // Only containers of tasks wanted running: one still stopping (a removed service's,
    // which gets its grace period) may end on its own during the restart.
    let pids_before = c.eventually(
        &format!("node-{k} to run only containers of tasks wanted running"),
        Duration::from_secs(30),
        || {
            let pids = container_pids(&c, k);
            let wanted = wanted_running(&c);
            pids.keys().all(|id| wanted.contains(id)).then_some(pids)
        },
    );
    assert!(!pids_before.is_empty(), "node-{k} runs containers");
    // runc keeps their state below the node's directory, which `dev down` removes.
    let runc = c
        .state_dir()
        .join(format!("node-{k}/containerd/runc/shoal"));
    for id in pids_before.keys() {
        assert!(
            runc.join(id).join("state.json").exists(),
            "runc state of {id} in {}",
            runc.display()
        );
    }
    let lease_before = node_json(&c, &node)["status"]["lease"].clone();
    c.kill_agent(k);
    c.start_node(k);
    // The new agent registers with a lease of its own, then serves the node's tasks again
    // (its DNS server answers inside the task: the old agent's died with it).
    c.eventually("the restarted agent to re-register", wait, || {
        let n = node_json(&c, &node);
        (n["status"]["state"] == "ready" && n["status"]["lease"] != lease_before).then_some(())
    });
    c.eventually(
        "the restarted agent to answer DNS in its task",
        Duration::from_secs(30),
        || (c.exec(&task, &["nslookup", "api"]).code == 0).then_some(()),
    );
    assert_eq!(
        c.running_ids("api"),
        ids_before,
        "no task replaced by an agent restart"
    );
    assert_eq!(
        container_pids(&c, k),
        pids_before,
        "no container restarted by an agent restart"
    );

    step("wrong image, image that exits at once, registry down: clear errors, recovery when fixed");
    let bad = "apiVersion: shoal/v1\nkind: Service\nmetadata: {name: broken}\nspec:\n  image: localhost:5000/nope:1\n  \
         command: [sleep, \"100000\"]\n  networks: [{name: appoverlay}]\n";
    c.shoal_apply_detached(bad);
    c.eventually("image not found shown by service ps", wait, || {
        task_error(&c, "broken")
            .contains("image not found")
            .then_some(())
    });
    c.apply(&bad.replace("localhost:5000/nope:1", BUSYBOX));
    let quitter = bad
        .replace("localhost:5000/nope:1", BUSYBOX)
        .replace("[sleep, \"100000\"]", "[sh, -c, \"exit 3\"]");
    c.shoal_apply_detached(&quitter);
    c.eventually("exit code 3 shown by service ps", wait, || {
        ps_errors(&c, "broken")
            .iter()
            .any(|e| e == "task exited with code 3")
            .then_some(())
    });
    c.apply(&bad.replace("localhost:5000/nope:1", BUSYBOX));
    let registry = c.state_dir().join("scripts").join("registry.sh");
    let state = c.state_dir().to_str().unwrap().to_string();
    assert!(Command::new("bash")
        .arg(&registry)
        .args(["stop", &state])
        .status()
        .unwrap()
        .success());
    c.shoal_apply_detached(&bad.replace("localhost:5000/nope:1", "localhost:5000/busybox:v2"));
    c.eventually("registry unreachable shown by service ps", wait, || {
        task_error(&c, "broken")
            .contains("not reachable")
            .then_some(())
    });
    let seeded = Command::new("bash")
        .arg(&registry)
        .args(["seed", &state])
        .env("SHOAL_REGISTRY_IMAGE", "busybox:v2")
        .status()
        .unwrap();
    assert!(seeded.success());
    c.eventually(
        "broken recovers once the registry is back",
        Duration::from_secs(120),
        || (!c.running_ids("broken").is_empty()).then_some(()),
    );

    step("deleting a service removes its containers, namespaces, veths and FDB entries on every node");
    let gone_ids = task_ids(&c, "api");
    let macs: Vec<String> = c
        .tasks("api")
        .iter()
        .flat_map(|t| {
            t["spec"]["attachments"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|a| a["mac"].as_str().map(str::to_string))
        .collect();
    c.shoal(&["service", "rm", "api"]).ok();
    c.eventually("api's namespaces and FDB entries gone", wait, || {
        // Freed addresses (and so MACs) may already belong to newer tasks.
        let all = c.json(&["get", "tasks", "-o", "json"]);
        let in_use: BTreeSet<String> = all["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|t| t["spec"]["service"] != "api")
            .flat_map(|t| t["spec"]["attachments"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["mac"].as_str().map(str::to_string))
            .collect();
        let netns_left: Vec<String> = gone_ids.iter().flat_map(|id| task_netns(id)).collect();
        let fdb_left: Vec<String> = (1..=c.nodes)
            .flat_map(|k| {
                // Only the VXLAN device's own static entries (`self`): the bridge also keeps
                // entries it learned from traffic, which age out by themselves.
                let out = c.in_node(k, &["bridge", "fdb", "show"]).ok();
                let fdb: String = out.lines().filter(|l| l.contains(" self")).collect::<Vec<_>>().join("\n");
                macs.iter()
                    .filter(|m| !in_use.contains(*m) && fdb.contains(m.as_str()))
                    .map(move |m| format!("node-{k}: {m}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        let containers_left: Vec<String> = (1..=c.nodes)
            .flat_map(|k| {
                let sock = c.state_dir().join(format!("node-{k}/containerd/containerd.sock"));
                let out = Command::new("ctr")
                    .args(["--address", sock.to_str().unwrap(), "-n", "shoal", "containers", "ls", "-q"])
                    .output()
                    .expect("run ctr");
                assert!(out.status.success(), "ctr containers ls on node-{k} failed: {}", String::from_utf8_lossy(&out.stderr));
                let out = String::from_utf8_lossy(&out.stdout).into_owned();
                gone_ids.iter().filter(|id| out.contains(id.as_str())).map(|id| format!("node-{k}: {id}")).collect::<Vec<_>>()
            })
            .collect();
        if !netns_left.is_empty() || !fdb_left.is_empty() || !containers_left.is_empty() {
            eprintln!("still there: netns {netns_left:?}, fdb {fdb_left:?}, containers {containers_left:?}");
            return None;
        }
        Some(())
    });

    step("dev down leaves nothing behind");
    let state_dir = c.state_dir().to_path_buf();
    drop(c);
    let netns = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    // Only what the cluster names: other tests on this machine use their own prefixes.
    let ours: Vec<&str> = netns
        .lines()
        .filter(|l| {
            l.starts_with("shoal-node-")
                || l.starts_with("shoal-e2e-")
                || l.starts_with(UNDERLAY_NETNS)
        })
        .collect();
    assert!(ours.is_empty(), "namespaces left: {ours:?}");
    let links = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    assert!(
        !links.contains("shoal-br0") && !links.contains("shoal-n") && !links.contains("shoal-host"),
        "links left: {links}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(state_dir.to_str().unwrap()),
        "mounts left under {}",
        state_dir.display()
    );
    let ps = String::from_utf8_lossy(
        &Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    assert!(
        !ps.lines().any(|l| l.contains(state_dir.to_str().unwrap())),
        "processes left:\n{ps}"
    );
}
