//! The agent with real containers on a real overlay: its own containerd and registry
//! (`containerd_support`), a real etcd, and a node network namespace made by the test (the
//! agent's links live there, as in `shoal dev up`). The test writes what the controller would
//! (a Network with its VNI, Endpoints, two tasks) and checks that the tasks run in namespaces
//! with their addresses, that a health check run inside a task reports it healthy, that they
//! resolve the service at 127.0.0.11 to its VIP and reach each other over TCP by IP, VIP and
//! name, that the overlay holds the FDB entry of a remote task, that an agent restart leaves
//! the containers alone and serves DNS again, and that deleting the tasks removes their
//! namespaces and the overlay.
//!
//! Needs root, containerd, runc, docker-registry, skopeo, busybox-static, etcd, nft, dig and
//! iproute2; skipped with a message otherwise, failed when `SHOAL_TESTS_REQUIRED=1`. Everything it makes carries a unique prefix
//! (`shoal-t<id>`) and is removed by guards, also when an assertion fails. Nothing in the
//! root namespace is touched: the node's "underlay" is a veth pair inside its own namespace.

mod agent_support;
mod containerd_support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use agent_support::{eventually, task_in_state, task_key};
use containerd_support::{busybox_missing, TestEnv, BINARIES};
use shoal_api_types::endpoints::{EndpointTask, Endpoints, EndpointsSpec};
use shoal_api_types::{
    HealthCheck, Network, NetworkSpec, NetworkStatus, Task, TaskAttachment, TaskSpec, TaskState,
};
use shoal_node_agent::agent::{Agent, AgentConfig, AgentHandle, ContainerTasks, NodeNetwork};
use shoal_node_agent::runtime::{ContainerRuntime, ContainerdRuntime};
use shoal_store::testing::TestEtcd;
use shoal_store::Store;

const UNDERLAY: &str = "198.18.0.1";

/// The node's namespace and every task namespace of the node; removed on drop.
struct NodeNs {
    node: String,
    netns: String,
}

impl NodeNs {
    fn create(node: &str) -> NodeNs {
        let ns = NodeNs {
            node: node.to_string(),
            netns: format!("shoal-{node}"),
        };
        sh(&["ip", "netns", "add", &ns.netns]);
        let n = ns.netns.as_str();
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        sh(&[
            "ip", "-n", n, "link", "add", "u0", "type", "veth", "peer", "name", "u1",
        ]);
        sh(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            &format!("{UNDERLAY}/24"),
            "dev",
            "u0",
        ]);
        sh(&["ip", "-n", n, "link", "set", "u0", "up"]);
        sh(&["ip", "-n", n, "link", "set", "u1", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }

    fn task_netns(&self, task: &str) -> String {
        format!("shoal-{}-{task}", self.node)
    }

    /// Task namespaces of this node that exist now.
    fn task_namespaces(&self) -> Vec<String> {
        let prefix = format!("shoal-{}-", self.node);
        let mut v: Vec<String> = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        v.sort();
        v
    }

    /// Names of the links of ours in the node namespace.
    fn our_links(&self) -> Vec<String> {
        let out = sh(&["ip", "-n", &self.netns, "-o", "link", "show"]);
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("sh"))
            .collect()
    }
}

impl Drop for NodeNs {
    fn drop(&mut self) {
        for ns in self.task_namespaces() {
            let _ = Command::new("ip").args(["netns", "delete", &ns]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .status();
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn spawn_agent(
    store: &Store,
    env: &TestEnv,
    node: &NodeNs,
) -> (AgentHandle, Arc<ContainerdRuntime>) {
    let runtime = Arc::new(
        ContainerdRuntime::connect(env.config())
            .await
            .expect("connect to our containerd"),
    );
    let network = NodeNetwork::kernel(
        &node.node,
        UNDERLAY,
        Some(node.path()),
        std::path::Path::new("/etc/resolv.conf"),
        shoal_node_agent::lb::socket::cgroup_dir(&env.config().cgroup_parent).as_deref(),
    )
    .await
    .expect("task networking");
    let tasks =
        ContainerTasks::new(runtime.clone(), node.node.as_str()).with_network(Arc::new(network));
    let config = AgentConfig {
        lease_ttl: Duration::from_secs(3),
        resync: Duration::from_secs(2),
        ..AgentConfig::new(node.node.as_str(), UNDERLAY)
    };
    let agent = Agent::build(config, store.clone(), Arc::new(tasks))
        .expect("agent config")
        .spawn();
    (agent, runtime)
}

fn network() -> Network {
    let mut n = Network::new(
        "appnet",
        NetworkSpec {
            driver: "overlay".into(),
            ..Default::default()
        },
    );
    n.status = NetworkStatus {
        subnet: Some("10.0.1.0/24".into()),
        gateway: Some("10.0.1.1".into()),
        vni: Some(4097),
        phase: "Ready".into(),
        ..Default::default()
    };
    n
}

fn endpoints(service: &str, vip: &str, tasks: &[(&str, &str, &str)]) -> Endpoints {
    EndpointsSpec::vip("appnet", service, vip)
        .tasks(tasks.iter().map(|(task, ip, node)| {
            EndpointTask::new(&format!("{service}.1"), ip)
                .id(task)
                .on(node)
        }))
        .object()
}

fn task(node: &str, id: &str, service: &str, image: &str, ip: &str, command: &[&str]) -> Task {
    let mut t = Task::new(
        id,
        TaskSpec {
            service: service.into(),
            slot: Some(1),
            node: Some(node.into()),
            desired_state: TaskState::Running,
            image: image.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            stop_grace_period_seconds: 1,
            attachments: vec![TaskAttachment {
                network: "appnet".into(),
                address: format!("{ip}/24"),
                mac: String::new(),
                aliases: vec![],
            }],
            ..Default::default()
        },
    );
    t.status.state = TaskState::Assigned;
    t
}

/// Runs `argv` in container `id`; returns (exit code, stdout + stderr).
async fn exec(rt: &ContainerdRuntime, id: &str, argv: &[&str]) -> (i32, String) {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let out = rt
        .exec(id, &argv, Duration::from_secs(10), 1 << 20)
        .await
        .unwrap_or_else(|e| panic!("exec {argv:?} in {id}: {e}"));
    (
        out.exit_code,
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Retries `argv` in `id` until its output contains `want` (a neighbour entry or a DNS
/// server may take a moment); returns the output.
async fn exec_until(rt: &ContainerdRuntime, id: &str, argv: &[&str], want: &str) -> String {
    let mut last = String::new();
    for _ in 0..40 {
        let (code, out) = exec(rt, id, argv).await;
        if code == 0 && out.contains(want) {
            return out;
        }
        last = format!("exit {code}: {out}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{argv:?} in {id} never gave {want:?}; last: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_should_run_tasks_on_an_overlay_with_dns_and_vips_and_clean_up() {
    shoal_testkit::require!(
        root,
        tools = BINARIES,
        tools = ["etcd", "nft", "ip", "bridge", "dig"],
        also = busybox_missing()
    );
    let env = TestEnv::start();
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let node = NodeNs::create(&format!("t{id}"));
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    let image = env.image("busybox:latest");
    let n = node.node.clone();

    store.create(&network()).await.unwrap();
    for e in [
        endpoints("web", "10.0.1.2", &[("web1", "10.0.1.5", UNDERLAY)]),
        endpoints("client", "10.0.1.3", &[("client1", "10.0.1.6", UNDERLAY)]),
        // A task on another node: only its FDB/neighbour entries can be checked here.
        endpoints("remote", "10.0.1.4", &[("far1", "10.0.1.9", "198.18.0.2")]),
    ] {
        store.create(&e).await.unwrap();
    }
    let (agent, rt) = spawn_agent(&store, &env, &node).await;
    let web =
        "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www";
    let mut web1 = task(&n, "web1", "web", &image, "10.0.1.5", &["sh", "-c", web]);
    web1.spec.healthcheck = Some(HealthCheck {
        command: vec!["wget".into(), "-qO-".into(), "http://127.0.0.1/".into()],
        interval_seconds: Some(1),
        ..Default::default()
    });
    for t in [
        web1,
        task(
            &n,
            "client1",
            "client",
            &image,
            "10.0.1.6",
            &["sleep", "3600"],
        ),
    ] {
        store.create(&t).await.unwrap();
    }
    for t in ["web1", "client1"] {
        let t = task_in_state(&store, &n, t, TaskState::Running).await;
        assert_eq!(t.status.container_id, t.name());
    }

    // The health check (run inside the task) passes.
    eventually("web1 to be reported healthy", || async {
        let t = agent_support::task(&store, &n, "web1").await?;
        t.status.healthy.then_some(())
    })
    .await;

    // Each task in its own namespace, with its address.
    let addrs = sh(&[
        "ip",
        "-n",
        &node.task_netns("web1"),
        "-4",
        "-o",
        "addr",
        "show",
    ]);
    assert!(addrs.contains("10.0.1.5/24"), "{addrs}");
    let addrs = sh(&["ip", "-n", &node.task_netns("client1"), "-4", "-o", "addr"]);
    assert!(addrs.contains("10.0.1.6/24"), "{addrs}");

    // The remote task's entries on the overlay.
    let fdb = sh(&[
        "bridge",
        "-n",
        &node.netns,
        "fdb",
        "show",
        "dev",
        "shv-4097",
    ]);
    assert!(fdb.contains("02:42:0a:00:01:09 dst 198.18.0.2"), "{fdb}");

    // DNS at 127.0.0.11: the service is its VIP, tasks.<service> its tasks.
    exec_until(&rt, "client1", &["nslookup", "web"], "10.0.1.2").await;
    exec_until(&rt, "client1", &["nslookup", "tasks.web"], "10.0.1.5").await;
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        &node.task_netns("web1"),
        "dig",
        "+short",
        "+time=2",
        "+tries=1",
        "@127.0.0.11",
        "client",
    ]);
    assert_eq!(out.trim(), "10.0.1.3");

    // TCP from one task to the other: by IP, by VIP, by name.
    for url in ["http://10.0.1.5/", "http://10.0.1.2/", "http://web/"] {
        exec_until(&rt, "client1", &["wget", "-qO-", url], "web.1").await;
    }
    // A task's connection to the VIP is made to the backend itself, at connect() (no NAT):
    // its peer is the backend's address.
    let open_to_vip =
        "sleep 3 | nc 10.0.1.2 80 >/dev/null 2>&1 & sleep 1; netstat -tn | grep ESTABLISHED";
    exec_until(&rt, "client1", &["sh", "-c", open_to_vip], "10.0.1.5:80").await;

    // A restarted agent leaves the containers alone and serves DNS again. "Alone" means the
    // same init process per container, as containerd reports it (not every pid in the
    // namespace: httpd forks a short-lived child per request, the health check's among them).
    let init_pids = |rt: Arc<ContainerdRuntime>| async move {
        let mut pids = Vec::new();
        for id in ["web1", "client1"] {
            let status = rt.status(id).await.expect("container status");
            pids.push((id, status.pid.expect("a running container has an init pid")));
        }
        pids
    };
    let pids_before = init_pids(rt.clone()).await;
    agent.shutdown().await;
    drop(rt);
    let (agent, rt) = spawn_agent(&store, &env, &node).await;
    exec_until(&rt, "client1", &["nslookup", "web"], "10.0.1.2").await;
    agent_support::converged(&agent).await;
    let pids_after = init_pids(rt.clone()).await;
    assert_eq!(
        pids_before, pids_after,
        "an agent restart must not restart the containers"
    );
    exec_until(&rt, "client1", &["wget", "-qO-", "http://web/"], "web.1").await;
    // The new agent's connect() program knows the VIPs of the tables it found (connections
    // from before the restart are ended first, so that none of them counts).
    let fresh = format!("killall nc; {open_to_vip}");
    exec_until(&rt, "client1", &["sh", "-c", &fresh], "10.0.1.5:80").await;

    // Deleting the tasks removes their containers, namespaces and the overlay.
    for t in ["web1", "client1"] {
        store
            .delete::<TaskSpec>(&task_key(&store, &n, t), None)
            .await
            .unwrap();
    }
    eventually("the containers to be deleted", || async {
        rt.list().await.unwrap().is_empty().then_some(())
    })
    .await;
    eventually("the task namespaces and links to be removed", || async {
        let links: Vec<String> = node
            .our_links()
            .into_iter()
            .filter(|l| l != "shoal_gwbridge")
            .collect();
        (node.task_namespaces().is_empty() && links.is_empty()).then_some(())
    })
    .await;
    agent.shutdown().await;
}
