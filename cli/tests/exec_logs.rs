//! `shoal exec` and `shoal [service] logs` across the whole path: the real `shoal` binary →
//! the API server (`shoal_controller::api::router`) → a node agent's HTTP server
//! (`shoal_node_agent::server`) backed by the runtime's recording fake, over a real etcd.
//! The controller and the agent never depend on each other; this test crate may use both.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use shoal_api_types::{
    Node, NodeSpec, NodeState, NodeStatus, Service, ServiceSpec, Task, TaskSpec, TaskState,
    TaskStatus,
};
use shoal_node_agent::runtime::{ContainerRuntime, ContainerSpec, ExecOutput, FakeRuntime};
use shoal_node_agent::server::{AgentServer, ServerConfig, ServerHandle, Transport};
use shoal_store::testing::TestEtcd;
use shoal_store::Store;
use tokio::io::{AsyncBufReadExt, BufReader};

/// API server + one agent (node-1, fake runtime) + tasks in etcd.
struct Cluster {
    url: String,
    store: Store,
    fake: Arc<FakeRuntime>,
    logs: tempfile::TempDir,
    home: tempfile::TempDir,
    _agents: Vec<ServerHandle>,
    _etcd: TestEtcd,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Cluster {
    async fn start() -> Cluster {
        let etcd = TestEtcd::start().await;
        let store = etcd.store().await;
        let app = shoal_controller::api::router(store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let logs = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::new().with_log_dir(logs.path()));
        let mut cluster = Cluster {
            url,
            store,
            fake: fake.clone(),
            logs,
            home: tempfile::tempdir().unwrap(),
            _agents: vec![],
            _etcd: etcd,
        };
        let endpoint = cluster.agent("node-1", Some(fake)).await;
        cluster.node("node-1", NodeState::Ready, &endpoint).await;
        cluster
            .service("worker")
            .await
            .service("api")
            .await
            .task("w1aaaaaa", "worker", 1, "node-1", TaskState::Running)
            .await
            .task("w2bbbbbb", "worker", 2, "node-1", TaskState::Pending)
            .await
            .task("a1cccccc", "api", 1, "node-1", TaskState::Running)
            .await;
        for id in ["w1aaaaaa", "a1cccccc"] {
            cluster.container(id).await;
        }
        cluster
    }

    /// Starts an agent server for `node`; returns its endpoint.
    async fn agent(&mut self, node: &str, runtime: Option<Arc<dyn ContainerRuntime>>) -> String {
        let config = ServerConfig {
            node: node.into(),
            listen: "127.0.0.1:0".into(),
        };
        let server = AgentServer::bind(&config, runtime, Transport::Plain)
            .await
            .unwrap();
        let endpoint = server.endpoint("127.0.0.1");
        self._agents.push(server.spawn());
        endpoint
    }

    async fn node(&self, name: &str, state: NodeState, endpoint: &str) {
        let mut n = Node::new(name, NodeSpec::default());
        n.status = NodeStatus {
            state,
            address: "127.0.0.1".into(),
            agent_endpoint: endpoint.into(),
            runtime: "containerd".into(),
            ..Default::default()
        };
        self.store.create(&n).await.unwrap();
    }

    async fn service(&self, name: &str) -> &Self {
        let svc = Service::new(
            name,
            ServiceSpec {
                image: "localhost:5000/busybox:latest".into(),
                ..Default::default()
            },
        );
        self.store.create(&svc).await.unwrap();
        self
    }

    async fn task(
        &self,
        id: &str,
        service: &str,
        slot: u64,
        node: &str,
        state: TaskState,
    ) -> &Self {
        let mut t = Task::new(
            id,
            TaskSpec {
                service: service.into(),
                slot: Some(slot),
                node: Some(node.into()),
                desired_state: TaskState::Running,
                image: "localhost:5000/busybox:latest".into(),
                ..Default::default()
            },
        );
        t.status = TaskStatus {
            state,
            ..Default::default()
        };
        self.store.create(&t).await.unwrap();
        self
    }

    /// A running container for task `id`, with hostname = its display name.
    async fn container(&self, id: &str) {
        let spec = ContainerSpec {
            id: id.into(),
            image: "localhost:5000/busybox:latest".into(),
            hostname: id.into(),
            ..Default::default()
        };
        self.fake.create(&spec).await.unwrap();
        self.fake.start(id).await.unwrap();
    }

    fn log_file(&self, id: &str) -> PathBuf {
        let dir = self.logs.path().join(id);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("container.log")
    }

    fn append_log(&self, id: &str, s: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(id))
            .unwrap();
        f.write_all(s.as_bytes()).unwrap();
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"));
        cmd.arg("--server")
            .arg(&self.url)
            .args(args)
            .env_remove("SHOAL_SERVER")
            .env_remove("SHOAL_TOKEN")
            .env_remove("SHOAL_CA")
            .env("SHOAL_CONFIG", self.home.path().join("no-context.json"))
            .env("HOME", self.home.path())
            .kill_on_drop(true);
        cmd
    }

    async fn shoal(&self, args: &[&str]) -> Output {
        tokio::time::timeout(Duration::from_secs(30), self.command(args).output())
            .await
            .expect("shoal finished")
            .unwrap()
    }
}

/// Reads lines of `child`'s stdout until one contains `want` (or 10 s pass).
async fn read_until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    want: &str,
) -> Vec<String> {
    let mut seen = vec![];
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let hit = line.contains(want);
            seen.push(line);
            if hit {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "no line with {want:?}; saw {seen:?}"
    );
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_prints_the_commands_output_and_exits_with_its_status() {
    let c = Cluster::start().await;
    c.fake.set_exec_result(
        "w1aaaaaa",
        ExecOutput {
            exit_code: 3,
            stdout: b"to stdout\n".to_vec(),
            stderr: b"to stderr\n".to_vec(),
            truncated: false,
        },
    );
    let out = c
        .shoal(&["exec", "worker.1", "--", "sh", "-c", "exit 3"])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "to stdout\n");
    assert_eq!(text(&out.stderr), "to stderr\n");
    assert!(c
        .fake
        .calls()
        .contains(&shoal_node_agent::runtime::fake::Call::Exec(
            "w1aaaaaa".into(),
            vec!["sh".into(), "-c".into(), "exit 3".into()]
        )));

    // By task id (prefix) too; a command that succeeds exits 0.
    let out = c.shoal(&["exec", "a1cccc", "hostname"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "a1cccccc\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_output_over_the_cap_is_truncated_with_a_marker_on_every_hop() {
    let c = Cluster::start().await;
    let limit = shoal_api_types::exec::MAX_EXEC_OUTPUT_BYTES;
    c.fake.set_exec_result(
        "w1aaaaaa",
        ExecOutput {
            exit_code: 0,
            stdout: vec![b'y'; 3 * limit + 5],
            stderr: b"small\n".to_vec(),
            truncated: false,
        },
    );
    let out = c.shoal(&["exec", "worker.1", "--", "big"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let marker = format!(
        "\n[output truncated: {} bytes, {limit} kept]\n",
        3 * limit + 5
    );
    assert!(
        stdout.ends_with(&marker),
        "{}",
        &stdout[stdout.len() - 100..]
    );
    assert_eq!(stdout.len(), limit + marker.len());
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("small\n"), "{stderr}");
    assert!(stderr.contains("output truncated"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_explains_tasks_that_cannot_be_reached() {
    let mut c = Cluster::start().await;
    let out = c.shoal(&["exec", "worker.2", "--", "true"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("task worker.2 is not running (state: pending)"),
        "{}",
        text(&out.stderr)
    );

    let out = c.shoal(&["exec", "worker.9", "--", "true"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("task \"worker.9\" not found"),
        "{}",
        text(&out.stderr)
    );

    // A node that is down.
    c.node("node-2", NodeState::Down, "127.0.0.1:1").await;
    c.task("w3dddddd", "worker", 3, "node-2", TaskState::Running)
        .await;
    let err = text(&c.shoal(&["exec", "worker.3", "--", "true"]).await.stderr);
    assert!(err.contains("node-2, which is down"), "{err}");

    // A ready node whose agent does not answer.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    c.node("node-3", NodeState::Ready, &dead).await;
    c.task("w4eeeeee", "worker", 4, "node-3", TaskState::Running)
        .await;
    let err = text(&c.shoal(&["exec", "worker.4", "--", "true"]).await.stderr);
    assert!(
        err.contains(&format!("cannot reach the agent of node node-3 at {dead}")),
        "{err}"
    );

    // A hollow node.
    let hollow = c.agent("node-4", None).await;
    c.node("node-4", NodeState::Ready, &hollow).await;
    c.task("w5ffffff", "worker", 5, "node-4", TaskState::Running)
        .await;
    let err = text(&c.shoal(&["exec", "worker.5", "--", "true"]).await.stderr);
    assert!(
        err.contains("node node-4: hollow nodes run no containers"),
        "{err}"
    );

    // The task's status says running, but the agent has no container for it.
    c.task("w6gggggg", "worker", 6, "node-1", TaskState::Running)
        .await;
    let err = text(&c.shoal(&["exec", "worker.6", "--", "true"]).await.stderr);
    assert!(
        err.contains("task worker.6 is not running on node node-1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_print_a_tasks_output_and_service_logs_prefix_each_line() {
    let c = Cluster::start().await;
    c.append_log("a1cccccc", "line 1\nline 2\n");
    c.append_log("w1aaaaaa", "worker says hi\n");

    let out = c.shoal(&["logs", "api.1"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "line 1\nline 2\n");
    let out = c.shoal(&["logs", "api.1", "--tail", "1"]).await;
    assert_eq!(text(&out.stdout), "line 2\n");

    let out = c.shoal(&["service", "logs", "api"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "api.1@node-1 | line 1\napi.1@node-1 | line 2\n"
    );
    let out = c.shoal(&["service", "logs", "worker"]).await;
    assert_eq!(text(&out.stdout), "worker.1@node-1 | worker says hi\n");

    let out = c.shoal(&["service", "logs", "nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("service \"nope\" not found"),
        "{}",
        text(&out.stderr)
    );
    let out = c.shoal(&["logs", "worker.2"]).await;
    assert!(
        text(&out.stderr).contains("has no logs yet (state: pending)"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn following_logs_gets_appended_lines_and_ends_with_the_container() {
    let c = Cluster::start().await;
    c.append_log("a1cccccc", "before\n");

    let mut task = c
        .command(&["logs", "-f", "api.1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut task_lines = BufReader::new(task.stdout.take().unwrap()).lines();
    let mut svc = c
        .command(&["service", "logs", "-f", "api"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut svc_lines = BufReader::new(svc.stdout.take().unwrap()).lines();

    read_until(&mut task_lines, "before").await;
    read_until(&mut svc_lines, "api.1@node-1 | before").await;
    c.append_log("a1cccccc", "after\n");
    read_until(&mut task_lines, "after").await;
    read_until(&mut svc_lines, "api.1@node-1 | after").await;

    // A task that starts later joins the followed service logs.
    c.task("a2iiiiii", "api", 2, "node-1", TaskState::Running)
        .await;
    c.container("a2iiiiii").await;
    c.append_log("a2iiiiii", "second replica\n");
    read_until(&mut svc_lines, "api.2@node-1 | second replica").await;

    // The container ends: what it wrote last arrives, then the task's stream ends.
    c.append_log("a1cccccc", "last words\n");
    c.fake.exit("a1cccccc", 0);
    read_until(&mut task_lines, "last words").await;
    let status = tokio::time::timeout(Duration::from_secs(10), task.wait())
        .await
        .expect("shoal logs -f ends with the container")
        .unwrap();
    assert!(status.success());

    // The service is deleted and its containers end: the service's stream ends too.
    let key = c.store.keys().named::<ServiceSpec>("api");
    c.store.delete::<ServiceSpec>(&key, None).await.unwrap();
    c.fake.exit("a2iiiiii", 0);
    let status = tokio::time::timeout(Duration::from_secs(10), svc.wait())
        .await
        .expect("shoal service logs -f ends with the service")
        .unwrap();
    assert!(status.success());
}
