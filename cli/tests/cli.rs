//! End-to-end tests of the `shoal` binary against the real HTTP API
//! (`shoal_controller::api::router`) over a real etcd, served in-process on a free loopback
//! port. No reconcilers run; where a test needs tasks to converge, a tiny fake controller
//! below writes tasks and service status straight into the store.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use shoal_api_types::{
    FailureAction, Node, NodeSpec, NodeState, NodeStatus, ServiceSpec, Task, TaskAttachment,
    TaskSpec, TaskState, TaskStatus, UpdateState, UpdateStatus,
};
use shoal_store::testing::TestEtcd;
use shoal_store::Store;

/// An API server over a test etcd, and a scratch directory.
struct Server {
    url: String,
    store: Store,
    dir: tempfile::TempDir,
    _etcd: TestEtcd,
}

impl Server {
    async fn start() -> Server {
        let etcd = TestEtcd::start().await;
        let store = etcd.store().await;
        let app = shoal_controller::api::router(store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server {
            url,
            store,
            dir: tempfile::tempdir().unwrap(),
            _etcd: etcd,
        }
    }

    /// Runs `shoal --server URL args...` with no context file or SHOAL_SERVER around.
    /// (`--server` goes first: words after a service's IMAGE belong to its command.)
    async fn shoal(&self, args: &[&str]) -> Output {
        let mut full = vec!["--server", &self.url];
        full.extend_from_slice(args);
        self.command(&full).output().await.unwrap()
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"));
        cmd.args(args)
            .env_remove("SHOAL_SERVER")
            .env_remove("SHOAL_TOKEN")
            .env_remove("SHOAL_CA")
            .env("SHOAL_CONFIG", self.dir.path().join("no-context.json"))
            .env("HOME", self.dir.path());
        cmd
    }

    /// Runs and expects success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.shoal(args).await;
        assert!(
            out.status.success(),
            "shoal {args:?} failed: {}\n{}",
            text(&out.stderr),
            text(&out.stdout)
        );
        text(&out.stdout)
    }

    /// Runs and expects failure; returns stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.shoal(args).await;
        assert!(
            !out.status.success(),
            "shoal {args:?} should have failed; stdout:\n{}",
            text(&out.stdout)
        );
        text(&out.stderr)
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(&path, content).unwrap();
        path
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

const APP: &str = "\
apiVersion: shoal/v1
kind: Network
metadata: {name: appnet}
spec: {subnet: 10.1.0.0/24}
---
apiVersion: shoal/v1
kind: Service
metadata: {name: api}
spec:
  image: localhost:5000/busybox:latest
  replicas: 2
  networks: [{name: appnet}]
  ports: [{published: 8080, target: 80}]
";

#[tokio::test(flavor = "multi_thread")]
async fn apply_creates_then_reports_unchanged_and_get_prints_json() {
    let s = Server::start().await;
    let f = s.file("app.yaml", APP);
    let out = s.ok(&["apply", "-f", p(&f), "--dry-run"]).await;
    assert_eq!(
        out,
        "network/appnet created (dry run)\nservice/api created (dry run)\n"
    );
    let out = s.ok(&["apply", "-f", p(&f), "--detach"]).await;
    assert_eq!(out, "network/appnet created\nservice/api created\n");
    let out = s.ok(&["apply", "-f", p(&f)]).await;
    assert_eq!(out, "network/appnet unchanged\nservice/api unchanged\n");

    let json: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "networks", "-o", "json"]).await).unwrap();
    assert_eq!(json["kind"], "NetworkList");
    assert_eq!(json["items"][0]["metadata"]["name"], "appnet");
    assert_eq!(json["items"][0]["spec"]["subnet"], "10.1.0.0/24");
    let json: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "svc/api", "-o", "json"]).await).unwrap();
    assert_eq!(json["spec"]["replicas"], 2);
    let yaml = s.ok(&["get", "service", "api", "-o", "yaml"]).await;
    assert!(
        yaml.contains("image: localhost:5000/busybox:latest"),
        "{yaml}"
    );
    let table = s.ok(&["get", "net"]).await;
    assert!(table.starts_with("NAME "), "{table}");
    assert!(table.contains("appnet"), "{table}");

    let out = s.ok(&["delete", "-f", p(&f)]).await;
    assert_eq!(out, "service/api deleted\nnetwork/appnet deleted\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_of_a_directory_is_all_or_nothing_and_names_the_file() {
    let s = Server::start().await;
    s.file(
        "m/01-net.yaml",
        "apiVersion: shoal/v1\nkind: Network\nmetadata: {name: appnet}\nspec: {}\n",
    );
    s.file(
        "m/02-svc.yml",
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {name: web}\nspec: {image: busybox, replicas: 1}\n---\n\
         apiVersion: shoal/v1\nkind: Service\nmetadata: {name: api}\nspec: {image: busybox, replicas: -1}\n",
    );
    let dir = s.dir.path().join("m");
    let err = s.fails(&["apply", "-f", p(&dir)]).await;
    assert!(err.contains("02-svc.yml, document 2"), "{err}");
    assert!(err.contains("spec.replicas"), "{err}");
    // Nothing was written.
    let out = s.ok(&["network", "ls", "-q"]).await;
    assert!(!out.contains("appnet"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_manifest_fails_with_the_field_path() {
    let s = Server::start().await;
    let f = s.file(
        "bad.yaml",
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {name: api}\nspec:\n  image: busybox\n  ports: [{published: 70000, target: 80}]\n",
    );
    let err = s.fails(&["apply", "-f", p(&f)]).await;
    assert!(err.contains("spec.ports[0].published"), "{err}");
    let f = s.file(
        "unknown.yaml",
        "apiVersion: shoal/v1\nkind: Network\nmetadata: {name: n}\nspec: {colour: red}\n",
    );
    let err = s.fails(&["apply", "-f", p(&f)]).await;
    assert!(err.contains("spec.colour"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn network_rm_of_a_network_in_use_fails_with_the_servers_message() {
    let s = Server::start().await;
    assert_eq!(
        s.ok(&["network", "create", "--subnet", "10.9.0.0/24", "appnet"])
            .await,
        "appnet\n"
    );
    s.ok(&[
        "service",
        "create",
        "--name",
        "api",
        "--network",
        "appnet",
        "--detach",
        "busybox",
    ])
    .await;
    let err = s.fails(&["network", "rm", "appnet"]).await;
    assert!(err.contains("in use"), "{err}");
    assert!(err.contains("api"), "{err}");
    let ls = s.ok(&["network", "ls"]).await;
    assert!(ls.contains("10.9.0.0/24"), "{ls}");

    let inspect: serde_json::Value =
        serde_json::from_str(&s.ok(&["network", "inspect", "appnet"]).await).unwrap();
    assert_eq!(inspect[0]["metadata"]["name"], "appnet");
    assert!(inspect[0]["endpoints"].is_array());

    s.ok(&["service", "rm", "api"]).await;
    assert_eq!(s.ok(&["network", "rm", "appnet"]).await, "appnet\n");
    let err = s.fails(&["network", "rm", "appnet"]).await;
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn detached_service_create_shows_in_service_ls() {
    let s = Server::start().await;
    let out = s
        .ok(&[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "2",
            "-p",
            "8080:80",
            "-d",
            "busybox",
            "sleep",
            "1000",
        ])
        .await;
    assert_eq!(out, "web\n");
    let ls = s.ok(&["service", "ls"]).await;
    let lines: Vec<&str> = ls.lines().collect();
    assert_eq!(lines.len(), 2, "{ls}");
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        cols,
        vec!["web", "replicated", "0/2", "busybox", "*:8080->80/tcp"]
    );
    let json: serde_json::Value =
        serde_json::from_str(&s.ok(&["service", "inspect", "web"]).await).unwrap();
    assert_eq!(
        json[0]["spec"]["args"],
        serde_json::json!(["sleep", "1000"])
    );

    // A port taken by another service is the server's clear error.
    let err = s
        .fails(&[
            "service", "create", "--name", "web2", "-p", "8080:80", "-d", "busybox",
        ])
        .await;
    assert!(err.contains("8080"), "{err}");
    // Bad flags never reach the server.
    let err = s
        .fails(&["service", "create", "--name", "x", "-p", "8080", "busybox"])
        .await;
    assert!(err.contains("--publish \"8080\""), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_grace_period_over_the_cap_is_refused_with_the_field_name() {
    let s = Server::start().await;
    let err = s
        .fails(&[
            "service",
            "create",
            "--name",
            "slow",
            "--stop-grace-period",
            "1h",
            "-d",
            "busybox",
        ])
        .await;
    assert!(err.contains("spec.stopGracePeriodSeconds"), "{err}");
    assert!(err.contains("at most 600"), "{err}");
    let ls = s.ok(&["service", "ls"]).await;
    assert!(!ls.contains("slow"), "nothing was created: {ls}");
    // The cap itself is allowed.
    s.ok(&[
        "service",
        "create",
        "--name",
        "slow",
        "--stop-grace-period",
        "10m",
        "-d",
        "busybox",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_without_a_controller_times_out_saying_what_is_missing() {
    let s = Server::start().await;
    let out = s
        .shoal(&[
            "service",
            "create",
            "--name",
            "slow",
            "--timeout",
            "1s",
            "busybox",
        ])
        .await;
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        stdout.contains("overall progress: 0 out of 1 tasks"),
        "{stdout}"
    );
    assert!(
        !stdout.contains('\x1b'),
        "no ANSI when not a terminal: {stdout:?}"
    );
    assert!(stderr.contains("timed out: no progress for 1s"), "{stderr}");
    assert!(stderr.contains("slow.1: new (no task yet)"), "{stderr}");
}

/// Plays the controller for replicated services: one running task per slot on `node-1`,
/// made from the service's spec; tasks above the replica count or made from an older spec
/// shut down (and replaced); the service's status observed.
///
/// And the updater, as the contract describes it (one pass, no batches): a spec change
/// that leaves outdated tasks sets `updateStatus` `updating`, then `completed` once no task
/// is outdated (`rollback_started` → `rollback_completed`). An update to an image whose
/// tag contains `bad` fails at once on slot 1: with failure action pause → `paused` and
/// nothing replaced; rollback → the spec swapped back, `rollback_started`.
async fn fake_controller(store: Store) {
    loop {
        let (services, _) = store.list::<ServiceSpec>().await.unwrap();
        let (tasks, _) = store.list::<TaskSpec>().await.unwrap();
        for svc in services {
            let replicas = svc.spec.replica_count();
            let gen = svc.metadata.generation;
            let outdated = tasks.iter().any(|t| {
                t.spec.service == svc.name()
                    && t.spec.desired_state == TaskState::Running
                    && svc.spec.outdates(&t.spec)
            });
            let state = svc.status.update_status.as_ref().map(|u| u.state);
            if outdated
                && svc.spec.image.contains(":bad")
                && matches!(state, None | Some(UpdateState::Updating))
            {
                fail_update(&store, svc).await;
                continue;
            }
            if state.is_some_and(UpdateState::is_paused) {
                continue;
            }
            for t in tasks.iter().filter(|t| {
                t.spec.service == svc.name()
                    && t.spec.desired_state == TaskState::Running
                    && (t.spec.slot.unwrap_or(0) > replicas || svc.spec.outdates(&t.spec))
            }) {
                let mut t = t.clone();
                t.spec.desired_state = TaskState::Shutdown;
                t.status.state = TaskState::Shutdown;
                let _ = store.update(&t).await;
            }
            for slot in 1..=replicas {
                let exists = tasks.iter().any(|t| {
                    t.spec.service == svc.name()
                        && t.spec.slot == Some(slot)
                        && t.spec.desired_state == TaskState::Running
                        && !svc.spec.outdates(&t.spec)
                });
                if !exists {
                    let s = &svc.spec;
                    let mut t = Task::new(
                        format!("{}{slot}{gen}0000000000", svc.name()),
                        TaskSpec {
                            service: svc.name().into(),
                            slot: Some(slot),
                            node: Some("node-1".into()),
                            desired_state: TaskState::Running,
                            service_generation: gen,
                            image: s.image.clone(),
                            command: s.command.clone(),
                            args: s.args.clone(),
                            env: s.env.clone(),
                            attachments: s
                                .wanted_networks()
                                .into_iter()
                                .map(|(network, aliases)| TaskAttachment {
                                    network,
                                    aliases,
                                    ..Default::default()
                                })
                                .collect(),
                            ports: s.ports.clone(),
                            healthcheck: s.healthcheck.clone(),
                            restart_policy: s.restart_policy.clone(),
                            stop_grace_period_seconds: s.stop_grace_period_seconds.unwrap_or(10),
                            user: s.user.clone(),
                            working_dir: s.working_dir.clone(),
                            read_only_root_filesystem: s.read_only_root_filesystem,
                            cap_add: s.cap_add.clone(),
                            cap_drop: s.cap_drop.clone(),
                            seccomp: s.seccomp,
                            resources: s.resources.clone(),
                            force_update: s.force_update,
                            ..Default::default()
                        },
                    );
                    t.status = TaskStatus {
                        state: TaskState::Running,
                        timestamp: Some(chrono::Utc::now()),
                        ..Default::default()
                    };
                    let _ = store.create(&t).await;
                }
            }
            let key = store.keys().named::<ServiceSpec>(svc.name());
            let _ = store
                .update_with::<ServiceSpec>(&key, |s| {
                    if s.metadata.generation != gen {
                        return false;
                    }
                    let mut changed = false;
                    if s.status.observed_generation != gen {
                        s.status.observed_generation = gen;
                        s.status.desired_tasks = s.spec.replica_count();
                        s.status.running_tasks = s.spec.replica_count();
                        changed = true;
                    }
                    match &mut s.status.update_status {
                        None if outdated => {
                            s.status.update_status = Some(UpdateStatus {
                                state: UpdateState::Updating,
                                started_at: Some(chrono::Utc::now()),
                                message: "update in progress".into(),
                                ..Default::default()
                            });
                            changed = true;
                        }
                        Some(u) if u.state.is_active() && !outdated => {
                            // The updater's states and messages.
                            (u.state, u.message) = match u.state {
                                UpdateState::RollbackStarted => (
                                    UpdateState::RollbackCompleted,
                                    format!("rollback completed ({})", u.message),
                                ),
                                _ => (UpdateState::Completed, "update completed".into()),
                            };
                            u.completed_at = Some(chrono::Utc::now());
                            changed = true;
                        }
                        _ => {}
                    }
                    changed
                })
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The fake updater's failure on slot 1, per `updateConfig.failureAction`.
async fn fail_update(store: &Store, mut svc: shoal_api_types::Service) {
    let now = chrono::Utc::now();
    let why = format!(
        "due to failure of task {}.1: task exited with code 1",
        svc.name()
    );
    match svc.spec.update_config.failure_action {
        FailureAction::Rollback => {
            svc.rollback(now).unwrap();
            if let Some(u) = &mut svc.status.update_status {
                u.message = format!("update rolled back {why}");
            }
        }
        _ => {
            svc.status.observed_generation = svc.metadata.generation;
            svc.status.update_status = Some(UpdateStatus {
                state: UpdateState::Paused,
                started_at: Some(now),
                message: format!("update paused {why}"),
                failures: 1,
                ..Default::default()
            });
        }
    }
    let _ = store.update(&svc).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn create_and_scale_wait_until_converged_and_ps_and_nodes_show_tasks() {
    let s = Server::start().await;
    let mut node = Node::new("node-1", NodeSpec::default());
    node.status = NodeStatus {
        state: NodeState::Ready,
        address: "198.18.0.1".into(),
        ..Default::default()
    };
    s.store.create(&node).await.unwrap();
    tokio::spawn(fake_controller(s.store.clone()));

    let out = s
        .ok(&[
            "service",
            "create",
            "--name",
            "api",
            "--replicas",
            "2",
            "busybox",
        ])
        .await;
    assert!(out.starts_with("api\n"), "{out}");
    assert!(out.contains("overall progress: 2 out of 2 tasks"), "{out}");
    assert!(out.contains("2/2: running"), "{out}");
    assert!(out.ends_with("verify: converged\n"), "{out}");

    let out = s.ok(&["service", "scale", "api=3"]).await;
    assert!(out.starts_with("api scaled to 3\n"), "{out}");
    assert!(out.contains("3/3: running"), "{out}");
    assert!(out.ends_with("verify: converged\n"), "{out}");

    let ps = s.ok(&["service", "ps", "api"]).await;
    let lines: Vec<&str> = ps.lines().collect();
    assert_eq!(lines.len(), 4, "{ps}");
    assert!(lines[0].starts_with("ID "), "{ps}");
    assert!(
        lines[1].contains(" api.1 ") && lines[1].contains("Running "),
        "{ps}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&s.ok(&["service", "ps", "api", "-o", "json"]).await).unwrap();
    assert_eq!(json["items"].as_array().unwrap().len(), 3);

    let nodes = s.ok(&["node", "ls"]).await;
    let cols: Vec<&str> = nodes.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(cols, vec!["node-1", "198.18.0.1", "Ready", "Active", "3"]);
    assert_eq!(
        s.ok(&["node", "update", "--label-add", "zone=a", "node-1"])
            .await,
        "node-1\n"
    );
    let nodes = s.ok(&["node", "ls"]).await;
    assert!(nodes.contains("zone=a"), "{nodes}");
    let err = s.fails(&["service", "scale", "nope=2"]).await;
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_context_file_names_the_server_and_unreachable_servers_are_explained() {
    let s = Server::start().await;
    let ctx = s.dir.path().join("ctx/context.json");
    shoal_cli::context::write_context(
        &ctx,
        &shoal_cli::context::Context {
            server: s.url.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let out = s
        .command(&["network", "ls", "-q"])
        .env("SHOAL_CONFIG", &ctx)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // SHOAL_SERVER beats the context file.
    let out = s
        .command(&["network", "ls"])
        .env("SHOAL_CONFIG", &ctx)
        .env("SHOAL_SERVER", "http://127.0.0.1:1")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot reach the Shoal API at http://127.0.0.1:1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_prints_events_as_they_happen() {
    let s = Server::start().await;
    // An object that exists before the watch starts is listed first: once it is printed,
    // the watch is open and sees what follows.
    s.ok(&["network", "create", "marker"]).await;
    let mut child = s
        .command(&["watch", "networks", "--server", &s.url])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for until in ["network/marker", "DELETED"] {
        if until == "DELETED" {
            s.ok(&["network", "create", "appnet"]).await;
            s.ok(&["network", "rm", "appnet"]).await;
        }
        while !seen.contains(until) && tokio::time::Instant::now() < deadline {
            let mut buf = [0u8; 4096];
            use tokio::io::AsyncReadExt;
            match tokio::time::timeout(Duration::from_millis(500), stdout.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => {}
            }
        }
    }
    child.kill().await.unwrap();
    assert!(seen.contains("ADDED     network/marker"), "{seen}");
    assert!(seen.contains("ADDED     network/appnet"), "{seen}");
    assert!(seen.contains("DELETED   network/appnet"), "{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_manifests_apply_as_one_directory() {
    let s = Server::start().await;
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/demo");
    let out = s.ok(&["apply", "-f", p(&demo), "--dry-run"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(!lines.is_empty(), "{out}");
    assert!(
        lines.iter().all(|l| l.ends_with(" created (dry run)")),
        "{out}"
    );
    assert!(lines.contains(&"service/api created (dry run)"), "{out}");
    // Dry run wrote nothing.
    assert_eq!(s.ok(&["service", "ls", "-q"]).await, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn service_update_changes_the_stored_spec_and_a_bad_removal_writes_nothing() {
    let s = Server::start().await;
    let mut node = Node::new("node-1", NodeSpec::default());
    node.status = NodeStatus {
        state: NodeState::Ready,
        address: "198.18.0.1".into(),
        ..Default::default()
    };
    s.store.create(&node).await.unwrap();
    s.ok(&[
        "service",
        "create",
        "--name",
        "api",
        "-e",
        "A=1",
        "-d",
        "busybox:1",
    ])
    .await;
    let stored = || async {
        s.store
            .get_named::<ServiceSpec>("api")
            .await
            .unwrap()
            .unwrap()
    };

    // Detached: written, returns at once.
    let out = s
        .ok(&["service", "update", "--image", "busybox:2", "-d", "api"])
        .await;
    assert_eq!(out, "api\n");
    let after = stored().await;
    assert_eq!(after.spec.image, "busybox:2");
    assert_eq!(after.spec.env.get("A").map(String::as_str), Some("1"));

    // Removing what is absent names the flag and the value, and writes nothing.
    let err = s
        .fails(&[
            "service",
            "update",
            "--env-rm",
            "NOPE",
            "--image",
            "busybox:3",
            "api",
        ])
        .await;
    assert!(err.contains("--env-rm \"NOPE\""), "{err}");
    let unchanged = stored().await;
    assert_eq!(
        unchanged.metadata.resource_version,
        after.metadata.resource_version
    );
    assert_eq!(unchanged.spec.image, "busybox:2");

    // Nothing to change: "no change", nothing written.
    let out = s
        .ok(&["service", "update", "--env-add", "A=1", "api"])
        .await;
    assert_eq!(out, "no change\n");
    assert_eq!(
        stored().await.metadata.resource_version,
        after.metadata.resource_version
    );

    // --force alone is a change; waiting shows progress as create does.
    tokio::spawn(fake_controller(s.store.clone()));
    let out = s.ok(&["service", "update", "--force", "api"]).await;
    assert!(out.starts_with("api\n"), "{out}");
    assert!(out.ends_with("verify: converged\n"), "{out}");
    assert_eq!(stored().await.spec.force_update, 1);
    // It waited for the task on the new spec, not the one it replaced.
    let (tasks, _) = s.store.list::<TaskSpec>().await.unwrap();
    let running: Vec<_> = tasks
        .iter()
        .filter(|t| t.spec.desired_state == TaskState::Running)
        .collect();
    assert_eq!(running.len(), 1, "{tasks:?}");
    assert_eq!(running[0].spec.force_update, 1);
    assert_eq!(running[0].spec.image, "busybox:2");

    let err = s
        .fails(&["service", "update", "--image", "x", "nope"])
        .await;
    assert!(err.contains("not found"), "{err}");
}

/// The images of the tasks of `service` that want to run.
async fn running_images(store: &Store, service: &str) -> Vec<String> {
    let (tasks, _) = store.list::<TaskSpec>().await.unwrap();
    let mut images: Vec<String> = tasks
        .into_iter()
        .filter(|t| t.spec.service == service && t.spec.desired_state == TaskState::Running)
        .map(|t| t.spec.image)
        .collect();
    images.sort();
    images
}

#[tokio::test(flavor = "multi_thread")]
async fn update_and_rollback_wait_for_the_update_status_and_fail_when_it_pauses_or_rolls_back() {
    let s = Server::start().await;
    let mut node = Node::new("node-1", NodeSpec::default());
    node.status = NodeStatus {
        state: NodeState::Ready,
        ..Default::default()
    };
    s.store.create(&node).await.unwrap();
    let stored = || async {
        s.store
            .get_named::<ServiceSpec>("api")
            .await
            .unwrap()
            .unwrap()
    };
    tokio::spawn(fake_controller(s.store.clone()));

    // Policy flags on create; bad values never reach the server.
    let err = s
        .fails(&[
            "service",
            "create",
            "--name",
            "api",
            "--update-max-failure-ratio",
            "2",
            "busybox:1",
        ])
        .await;
    assert!(
        err.contains("--update-max-failure-ratio 2: must be between 0 and 1"),
        "{err}"
    );
    assert_eq!(s.ok(&["service", "ls", "-q"]).await, "");
    let out = s
        .ok(&[
            "service",
            "create",
            "--name",
            "api",
            "--replicas",
            "2",
            "--update-parallelism",
            "2",
            "--update-order",
            "start-first",
            "--rollback-monitor",
            "2s",
            "busybox:1",
        ])
        .await;
    assert!(out.ends_with("verify: converged\n"), "{out}");
    let inspect: serde_json::Value =
        serde_json::from_str(&s.ok(&["service", "inspect", "api"]).await).unwrap();
    assert_eq!(inspect[0]["spec"]["updateConfig"]["parallelism"], 2);
    assert_eq!(inspect[0]["spec"]["updateConfig"]["order"], "start-first");
    assert_eq!(inspect[0]["spec"]["rollbackConfig"]["monitor"], "2s");

    // No previous spec: the API's 409 message, nothing written.
    let before = stored().await.metadata.resource_version;
    for argv in [
        &["service", "rollback", "api"][..],
        &["service", "update", "--rollback", "api"],
    ] {
        let err = s.fails(argv).await;
        assert!(
            err.contains("service api has no previous spec to roll back to"),
            "{argv:?}: {err}"
        );
    }
    assert_eq!(stored().await.metadata.resource_version, before);

    // An update waits for `completed`, and shows the state.
    let out = s
        .ok(&["service", "update", "--image", "busybox:2", "api"])
        .await;
    assert!(out.starts_with("api\n"), "{out}");
    assert!(out.contains("update: completed"), "{out}");
    assert!(out.ends_with("verify: converged\n"), "{out}");
    assert_eq!(
        running_images(&s.store, "api").await,
        ["busybox:2", "busybox:2"]
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&s.ok(&["service", "inspect", "api"]).await).unwrap();
    assert_eq!(inspect[0]["status"]["updateStatus"]["state"], "completed");
    assert!(inspect[0]["status"]["updateStatus"]["completedAt"].is_string());
    assert_eq!(inspect[0]["status"]["previousSpec"]["image"], "busybox:1");
    // ps shows the replaced tasks below the new ones, shut down.
    let ps = s.ok(&["service", "ps", "api"]).await;
    let history: Vec<&str> = ps.lines().filter(|l| l.contains("\\_ api.")).collect();
    assert_eq!(history.len(), 2, "{ps}");
    assert!(
        history
            .iter()
            .all(|l| l.contains("busybox:1") && l.contains("Shutdown")),
        "{ps}"
    );

    // --rollback with a change is refused before anything is written.
    let before = stored().await.metadata.resource_version;
    let err = s
        .fails(&[
            "service",
            "update",
            "--rollback",
            "--image",
            "busybox:3",
            "api",
        ])
        .await;
    assert!(
        err.contains("--rollback cannot be combined with --image"),
        "{err}"
    );
    assert_eq!(stored().await.metadata.resource_version, before);

    // --rollback goes back (quietly: the name only) and waits for rollback_completed.
    let out = s
        .ok(&["service", "update", "--rollback", "-q", "api"])
        .await;
    assert_eq!(out, "api\n");
    let back = stored().await;
    assert_eq!(back.spec.image, "busybox:1");
    assert_eq!(
        back.status.update_status.map(|u| u.state),
        Some(UpdateState::RollbackCompleted)
    );
    assert_eq!(
        running_images(&s.store, "api").await,
        ["busybox:1", "busybox:1"]
    );
    // Twice toggles; -d returns at once.
    assert_eq!(s.ok(&["service", "rollback", "-d", "api"]).await, "api\n");
    assert_eq!(stored().await.spec.image, "busybox:2");
    let out = s.ok(&["service", "rollback", "api"]).await;
    assert!(
        out.contains("update: rollback_completed (manually requested rollback)"),
        "{out}"
    );
    assert_eq!(stored().await.spec.image, "busybox:1");

    // A failing update with failure action pause: non-zero with the updater's message;
    // the tasks stay on the old spec.
    let out = s
        .shoal(&["service", "update", "--image", "busybox:bad", "api"])
        .await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("Error: service api: update paused due to failure of task api.1: task exited with code 1"),
        "{err}"
    );
    assert!(
        text(&out.stdout).contains("update: paused"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        running_images(&s.store, "api").await,
        ["busybox:1", "busybox:1"]
    );

    // Back, then a failing update whose failure action rolls it back: non-zero, "update
    // rolled back", the spec is the previous one again.
    s.ok(&["service", "rollback", "api"]).await;
    assert_eq!(stored().await.spec.image, "busybox:1");
    let err = s
        .fails(&[
            "service",
            "update",
            "--image",
            "busybox:bad",
            "--update-failure-action",
            "rollback",
            "api",
        ])
        .await;
    assert!(
        err.contains("Error: service api: update rolled back due to failure of task api.1"),
        "{err}"
    );
    let after = stored().await;
    assert_eq!(after.spec.image, "busybox:1");
    assert_eq!(
        after.status.update_status.map(|u| u.state),
        Some(UpdateState::RollbackCompleted)
    );
    assert_eq!(
        running_images(&s.store, "api").await,
        ["busybox:1", "busybox:1"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stack_deploy_sends_the_compose_file_as_one_apply_and_ls_and_services_show_it() {
    let s = Server::start().await;
    let compose = s.file(
        "shop/compose.yml",
        "services:\n  web:\n    image: localhost:5000/busybox:${TAG}\n    ports: ['8080:80']\n    networks: [front]\n    privileged: true\n    deploy: {replicas: 2}\n  api:\n    image: localhost:5000/busybox\nnetworks:\n  front: {}\n",
    );
    s.file("shop/.env", "TAG=latest\n");
    let out = s
        .shoal(&["stack", "deploy", "-c", p(&compose), "-d", "shop"])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "network/shop_front created\nnetwork/shop_default created\nservice/shop_web created\nservice/shop_api created\n"
    );
    assert_eq!(
        text(&out.stderr),
        "warning: service web: privileged is not supported: ignored\n"
    );
    let web = s.ok(&["get", "service", "shop_web", "-o", "json"]).await;
    let web: shoal_api_types::Service = serde_json::from_str(&web).unwrap();
    assert_eq!(web.spec.image, "localhost:5000/busybox:latest");
    assert_eq!(web.spec.networks[0].aliases, ["web"]);
    assert_eq!(web.metadata.labels["shoal.io/stack"], "shop");
    // The same file again changes nothing.
    let again = s
        .ok(&["stack", "deploy", "-c", p(&compose), "-d", "shop"])
        .await;
    assert!(again.lines().all(|l| l.ends_with(" unchanged")), "{again}");
    assert_eq!(s.ok(&["stack", "ls"]).await, "NAME   SERVICES\nshop   2\n");
    let services = s.ok(&["stack", "services", "-q", "shop"]).await;
    assert_eq!(services, "shop_api\nshop_web\n");
    let err = s.fails(&["stack", "services", "nope"]).await;
    assert!(err.contains("nothing found in stack: nope"), "{err}");
    let nets = s.ok(&["network", "ls"]).await;
    assert!(nets.starts_with("NAME "), "{nets}");
    assert!(
        nets.lines()
            .any(|l| l.starts_with("shop_front") && l.contains(" overlay   swarm ")),
        "{nets}"
    );
    // A bad file names the key and creates nothing.
    let bad = s.file(
        "bad.yml",
        "services:\n  w:\n    image: busybox\n    deploy: {replicas: lots}\n",
    );
    let err = s.fails(&["stack", "deploy", "-c", p(&bad), "other"]).await;
    assert!(err.contains("services.w.deploy.replicas: "), "{err}");
    assert_eq!(s.ok(&["stack", "ls", "-q"]).await, "shop\n");
}
