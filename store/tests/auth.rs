//! etcd's security boundary against a real etcd with TLS and `--client-cert-auth`: who can
//! read and write what with which client certificate, once `store::auth` has set up users
//! and roles. Every test starts a private secured etcd (`TestEtcd::start_secured`).

use std::time::Duration;

use shoal_api_types::keys::{CONTROLLER_USER, FLEET_USER};
use shoal_api_types::settings::{default_reserved_ports, CLUSTER_SETTINGS};
use shoal_api_types::{ClusterSettings, ClusterSettingsSpec};
use shoal_api_types::{
    Endpoints, EndpointsSpec, Network, NetworkSpec, Node, NodeSpec, Service, ServiceSpec, Task,
    TaskSpec, TaskState,
};
use shoal_store::testing::TestEtcd;
use shoal_store::{auth, Batch, Store, StoreError, Watcher, WatcherEvent};

fn network(name: &str) -> Network {
    Network::new(
        name,
        NetworkSpec {
            driver: "overlay".into(),
            ..Default::default()
        },
    )
}

fn service(name: &str) -> Service {
    Service::new(
        name,
        ServiceSpec {
            image: "busybox".into(),
            ..Default::default()
        },
    )
}

fn task(id: &str, node: &str) -> Task {
    Task::new(
        id,
        TaskSpec {
            node: Some(node.into()),
            ..Default::default()
        },
    )
}

fn endpoints(net: &str, svc: &str) -> Endpoints {
    Endpoints::new(
        format!("{net}.{svc}"),
        EndpointsSpec {
            network: net.into(),
            service: svc.into(),
            ..Default::default()
        },
    )
}

/// Fails unless `r` is etcd's refusal (and so not worth retrying).
#[track_caller]
fn assert_denied<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    match r {
        Err(e @ StoreError::PermissionDenied { .. }) => {
            assert!(!e.is_temporary(), "{what}: a refusal is not temporary");
            assert!(e.to_string().contains("permission denied"), "{what}: {e}");
        }
        other => panic!("{what}: expected permission denied, got {other:?}"),
    }
}

/// A secured etcd holding a little of everything, written as the controller: networks,
/// a service, its endpoints, nodes a and b with a task each, and private keys.
async fn cluster() -> (TestEtcd, Store) {
    let etcd = TestEtcd::start_secured().await;
    let ctl = etcd.store().await;
    ctl.create(&network("appnet")).await.unwrap();
    ctl.create(&service("web")).await.unwrap();
    ctl.create(&endpoints("appnet", "web")).await.unwrap();
    for node in ["a", "b"] {
        ctl.create(&Node::new(node, NodeSpec::default()))
            .await
            .unwrap();
        ctl.create(&task(&format!("t-{node}"), node)).await.unwrap();
        auth::ensure_node_user(&ctl, node).await.unwrap();
    }
    ctl.put_raw(&private_key(&ctl, "join-token"), "secret")
        .await
        .unwrap();
    ctl.create(&ClusterSettings::new(
        CLUSTER_SETTINGS,
        ClusterSettingsSpec::with_reserved_ports(default_reserved_ports()),
    ))
    .await
    .unwrap();
    (etcd, ctl)
}

fn private_key(store: &Store, name: &str) -> String {
    format!("{}/private/{name}", store.keys().root())
}

async fn node_store(etcd: &TestEtcd, node: &str) -> Store {
    Store::connect(&etcd.connect_as(node))
        .await
        .unwrap_or_else(|e| panic!("connect as node {node}: {e}"))
}

#[tokio::test]
async fn without_a_client_certificate_nothing_can_be_read() {
    let (etcd, _ctl) = cluster().await;
    // No certificate: etcd refuses the TLS handshake, so no request gets through.
    let refused = Store::connect(&etcd.connect_without_certificate()).await;
    assert!(refused.is_err(), "connected without a client certificate");
    // A certificate of the cluster CA whose CN names no etcd user reads nothing either.
    let stranger = Store::connect(&etcd.connect_as("stranger")).await;
    assert_denied(
        stranger.map(|_| ()),
        "connect as a user that does not exist",
    );
}

#[tokio::test]
async fn a_node_reads_shared_state_and_its_own_tasks_only() {
    let (etcd, ctl) = cluster().await;
    let a = node_store(&etcd, "a").await;
    let keys = a.keys().clone();
    assert_eq!(a.list::<NetworkSpec>().await.unwrap().0.len(), 1);
    assert_eq!(a.list::<ServiceSpec>().await.unwrap().0.len(), 1);
    assert_eq!(a.list::<NodeSpec>().await.unwrap().0.len(), 2);
    assert_eq!(a.list::<EndpointsSpec>().await.unwrap().0.len(), 1);
    let (own, _) = a
        .list_prefix::<TaskSpec>(&keys.node_tasks("a"))
        .await
        .unwrap();
    assert_eq!(own.len(), 1);
    // The reserved ports the agent never programs a rule for.
    let settings = a
        .get::<ClusterSettingsSpec>(&keys.cluster_settings())
        .await
        .unwrap()
        .expect("the settings");
    assert_eq!(settings.spec.reserved_ports.len(), 6);
    // What the agent keeps caches of, it can also watch.
    for prefix in [
        keys.prefix::<NetworkSpec>(),
        keys.prefix::<EndpointsSpec>(),
        keys.prefix::<NodeSpec>(),
        keys.prefix::<ClusterSettingsSpec>(),
        keys.node_tasks("a"),
    ] {
        let mut watcher = Watcher::new(a.clone(), prefix.clone());
        assert!(
            matches!(watcher.next().await, WatcherEvent::Restarted { .. }),
            "{prefix}"
        );
    }
    ctl.create(&network("other")).await.unwrap();
    let mut watch = a.watch_raw(&keys.prefix::<NetworkSpec>(), 0).await.unwrap();
    ctl.create(&network("third")).await.unwrap();
    let (events, _) = watch.next().await.unwrap();
    assert!(!events.is_empty());

    assert_denied(
        a.list_prefix::<TaskSpec>(&keys.node_tasks("b")).await,
        "list node b's tasks",
    );
    assert_denied(a.list::<TaskSpec>().await, "list every task");
    assert_denied(
        a.get_raw(&private_key(&ctl, "join-token")).await,
        "read a private key",
    );
    assert_denied(
        a.list_raw(&format!("{}/private/", keys.root())).await,
        "list the private prefix",
    );
    assert_denied(a.get_raw(&keys.leader()).await, "read the leader key");
    assert_denied(a.list_raw(&keys.subnets()).await, "list ipam");
    // etcd cancels a forbidden watch in its first answer.
    let denied = match a.watch_raw(&keys.node_tasks("b"), 0).await {
        Ok(mut watch) => watch.next().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert_denied(denied, "watch node b's tasks");
}

#[tokio::test]
async fn a_node_writes_its_own_node_tasks_and_liveness_key() {
    let (etcd, ctl) = cluster().await;
    let a = node_store(&etcd, "a").await;
    let keys = a.keys().clone();

    // Its Node: delete and create again, and update the status.
    let node_key = keys.named::<NodeSpec>("a");
    a.delete::<NodeSpec>(&node_key, None).await.unwrap();
    a.create(&Node::new("a", NodeSpec::default()))
        .await
        .unwrap();
    let updated = a
        .update_with::<NodeSpec>(&node_key, |n| {
            n.status.address = "198.18.0.1".into();
            true
        })
        .await
        .unwrap();
    assert!(updated.is_some());

    // Its tasks' status.
    let task_key = format!("{}t-a", keys.node_tasks("a"));
    let reported = a
        .update_with::<TaskSpec>(&task_key, |t| {
            t.status.state = TaskState::Running;
            true
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reported.status.state, TaskState::Running);

    // Its liveness key, bound to a lease it keeps alive, then revokes.
    let lease = a.grant_lease(Duration::from_secs(5)).await.unwrap();
    let keeper = a.keep_alive(lease);
    a.put_with_lease(&keys.node_lease("a"), "alive", lease)
        .await
        .unwrap();
    assert!(ctl.get_raw(&keys.node_lease("a")).await.unwrap().is_some());
    assert!(!keeper.is_lost());
    drop(keeper);
    a.revoke_lease(lease).await.unwrap();
    assert!(ctl.get_raw(&keys.node_lease("a")).await.unwrap().is_none());

    // A watch of its own tasks sees the controller's writes.
    let mut watcher = Watcher::new(a.clone(), keys.node_tasks("a"));
    assert!(matches!(
        watcher.next().await,
        WatcherEvent::Restarted { ref items, .. } if items.len() == 1
    ));
    ctl.create(&task("t-a2", "a")).await.unwrap();
    let WatcherEvent::Events { events, .. } = watcher.next().await else {
        panic!("expected events");
    };
    assert_eq!(events.len(), 1);
}

#[tokio::test]
async fn a_node_cannot_write_another_nodes_keys_or_the_users_spec() {
    let (etcd, _ctl) = cluster().await;
    let a = node_store(&etcd, "a").await;
    let keys = a.keys().clone();
    assert_denied(
        a.create(&task("evil", "b")).await,
        "create a task of node b",
    );
    assert_denied(
        a.update_with::<TaskSpec>(&format!("{}t-b", keys.node_tasks("b")), |_| true)
            .await,
        "update a task of node b",
    );
    assert_denied(
        a.put_raw(&format!("{}evil", keys.node_tasks("b")), "x")
            .await,
        "put below node b's tasks",
    );
    assert_denied(
        a.create(&task("evil", "_unassigned")).await,
        "create an unassigned task",
    );
    assert_denied(a.create(&service("evil")).await, "create a Service");
    assert_denied(
        a.update_with::<ServiceSpec>(&keys.named::<ServiceSpec>("web"), |s| {
            s.spec.image = "evil".into();
            true
        })
        .await,
        "change a Service",
    );
    assert_denied(
        a.create(&Node::new("c", NodeSpec::default())).await,
        "create another Node",
    );
    assert_denied(
        a.delete::<NodeSpec>(&keys.named::<NodeSpec>("b"), None)
            .await,
        "delete node b",
    );
    assert_denied(
        a.put_raw(&keys.node_lease("b"), "x").await,
        "write node b's liveness key",
    );
    assert_denied(a.create(&network("evil")).await, "create a Network");
    assert_denied(
        a.delete_raw(&keys.cluster_settings()).await,
        "delete the cluster settings",
    );
    assert_denied(
        a.put_raw(&keys.cluster_settings(), "{}").await,
        "write the cluster settings",
    );
    // One forbidden write makes the whole transaction fail, the allowed part included.
    let mut batch = Batch::new();
    batch.create(&keys, &task("mine", "a"));
    batch.create(&keys, &task("theirs", "b"));
    assert_denied(batch.commit(&a).await, "a batch writing b's task");
    assert!(a
        .get_raw(&format!("{}mine", keys.node_tasks("a")))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn removing_a_node_user_cuts_its_open_client_off_within_two_seconds() {
    let (etcd, ctl) = cluster().await;
    let a = node_store(&etcd, "a").await;
    a.list::<NetworkSpec>().await.unwrap();
    let b = node_store(&etcd, "b").await;

    auth::remove_node_user(&ctl, "a").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match a.list::<NetworkSpec>().await {
            Err(StoreError::PermissionDenied { .. }) => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "node a still reads 2 s after its user was removed: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_denied(
        a.update_with::<NodeSpec>(&a.keys().named::<NodeSpec>("a"), |_| true)
            .await,
        "write its Node after removal",
    );
    // Idempotent, and other nodes are unaffected.
    auth::remove_node_user(&ctl, "a").await.unwrap();
    b.list::<NetworkSpec>().await.unwrap();
    // Adding it back lets the same certificate in again (refusing that certificate for
    // good is the controller's revocation list, not etcd's).
    auth::ensure_node_user(&ctl, "a").await.unwrap();
    a.list::<NetworkSpec>().await.unwrap();
}

#[tokio::test]
async fn bootstrap_twice_and_concurrently_is_fine() {
    let etcd = TestEtcd::start_tls().await;
    let first = etcd.store().await;
    let second = Store::connect(&etcd.connect()).await.unwrap();
    assert!(!auth::auth_enabled(&first).await.unwrap());
    // Before auth, any certificate of the CA may do anything.
    Store::connect(&etcd.connect_as("stranger")).await.unwrap();

    let (x, y) = tokio::join!(auth::bootstrap(&first), auth::bootstrap(&second));
    x.unwrap();
    y.unwrap();
    auth::bootstrap(&first).await.unwrap();
    assert!(auth::auth_enabled(&first).await.unwrap());
    assert_denied(
        Store::connect(&etcd.connect_as("stranger"))
            .await
            .map(|_| ()),
        "a user that does not exist after auth enable",
    );

    // Node users too: twice, concurrently, then as usual.
    let (x, y) = tokio::join!(
        auth::ensure_node_user(&first, "a"),
        auth::ensure_node_user(&second, "a")
    );
    x.unwrap();
    y.unwrap();
    auth::ensure_node_user(&first, "a").await.unwrap();
    let a = node_store(&etcd, "a").await;
    a.create(&Node::new("a", NodeSpec::default()))
        .await
        .unwrap();
    assert_denied(a.create(&service("evil")).await, "create a Service");
}

#[tokio::test]
async fn the_controller_identity_can_do_everything() {
    let (etcd, ctl) = cluster().await;
    let keys = ctl.keys().clone();
    assert!(auth::auth_enabled(&ctl).await.unwrap());
    assert_eq!(ctl.list::<TaskSpec>().await.unwrap().0.len(), 2);
    assert_eq!(
        ctl.get_raw(&private_key(&ctl, "join-token"))
            .await
            .unwrap()
            .unwrap()
            .value,
        b"secret"
    );
    ctl.put_raw(&keys.leader(), "me").await.unwrap();
    ctl.put_raw(&keys.vni(4097), "appnet").await.unwrap();
    ctl.create(&task("t-b2", "b")).await.unwrap();
    ctl.create(&service("api")).await.unwrap();
    ctl.delete::<NodeSpec>(&keys.named::<NodeSpec>("a"), None)
        .await
        .unwrap();
    let rev = ctl.revision().await.unwrap();
    ctl.compact(rev).await.unwrap();
    // Another controller replica (a certificate of its own, same CN) too.
    let other = Store::connect(&etcd.connect_as(CONTROLLER_USER))
        .await
        .unwrap();
    other.list_raw(&format!("{}/", keys.root())).await.unwrap();
    auth::ensure_node_user(&other, "c").await.unwrap();
    auth::remove_node_user(&other, "c").await.unwrap();
}

#[tokio::test]
async fn the_hollow_fleet_writes_for_every_node_but_reads_nothing_private() {
    let (etcd, ctl) = cluster().await;
    auth::ensure_fleet_user(&ctl).await.unwrap();
    auth::ensure_fleet_user(&ctl).await.unwrap();
    let fleet = Store::connect(&etcd.connect_as(FLEET_USER)).await.unwrap();
    let keys = fleet.keys().clone();
    for node in ["hollow-1", "hollow-2"] {
        fleet
            .create(&Node::new(node, NodeSpec::default()))
            .await
            .unwrap();
        fleet.put_raw(&keys.node_lease(node), "x").await.unwrap();
        fleet
            .list_prefix::<TaskSpec>(&keys.node_tasks(node))
            .await
            .unwrap();
    }
    fleet
        .update_with::<TaskSpec>(&format!("{}t-b", keys.node_tasks("b")), |_| true)
        .await
        .unwrap();
    assert_denied(
        fleet.get_raw(&private_key(&ctl, "join-token")).await,
        "read a private key",
    );
    assert_denied(fleet.create(&service("evil")).await, "create a Service");
}

#[tokio::test]
async fn shoal_users_cannot_be_added_or_removed_as_nodes() {
    let (etcd, ctl) = cluster().await;
    for name in [CONTROLLER_USER, "root", FLEET_USER] {
        let err = auth::remove_node_user(&ctl, name).await.unwrap_err();
        assert!(!err.is_temporary(), "{err}");
        assert!(err.to_string().contains("reserved"), "{err}");
        assert!(auth::ensure_node_user(&ctl, name).await.is_err());
    }
    // The controllers' user is still there.
    Store::connect(&etcd.connect_as(CONTROLLER_USER))
        .await
        .unwrap()
        .list::<TaskSpec>()
        .await
        .unwrap();
}

#[tokio::test]
async fn ensure_node_user_takes_back_permissions_beyond_the_layout() {
    let (etcd, ctl) = cluster().await;
    let keys = ctl.keys().clone();
    let extra = format!("{}/private/", keys.root());
    // Someone granted node a's role more than the layout says.
    let out = etcdctl(&etcd, Some(CONTROLLER_USER))
        .args(["role", "grant-permission", "--prefix=true", "shoal-node-a"])
        .args(["read", &extra])
        .output()
        .expect("run etcdctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = node_store(&etcd, "a").await;
    a.list_raw(&extra).await.unwrap();

    auth::ensure_node_user(&ctl, "a").await.unwrap();
    assert_denied(a.list_raw(&extra).await, "read the private prefix");
    a.list::<NetworkSpec>().await.unwrap();
}

/// `etcdctl` against the test etcd, as `user` (a client certificate with that CN) or with
/// no client certificate.
fn etcdctl(etcd: &TestEtcd, user: Option<&str>) -> std::process::Command {
    let mut cmd = std::process::Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.endpoint))
        .arg("--dial-timeout=2s")
        .arg("--command-timeout=3s");
    cmd.arg(format!("--cacert={}", etcd.ca_file().display()));
    if let Some(user) = user {
        let (_, cert, key) = etcd.identity_files(user);
        cmd.arg(format!("--cert={}", cert.display()))
            .arg(format!("--key={}", key.display()));
    }
    cmd
}

/// Runs etcdctl; its exit status and what it printed.
fn run(mut cmd: std::process::Command) -> (bool, String) {
    let out = cmd
        .output()
        .expect("run etcdctl (apt-get install etcd-client)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn etcdctl_without_a_certificate_reads_nothing_and_node_a_cannot_write_node_b() {
    shoal_testkit::require!(tools = ["etcdctl"]);
    let (etcd, ctl) = cluster().await;
    let root = ctl.keys().root().to_string();
    let everything = format!("{root}/");

    let mut cmd = etcdctl(&etcd, None);
    cmd.args(["get", "--prefix", &everything]);
    let (ok, out) = run(cmd);
    assert!(!ok, "read without a client certificate: {out}");
    assert!(!out.contains("secret") && !out.contains("appnet"), "{out}");

    let a = |args: &[&str]| {
        let mut cmd = etcdctl(&etcd, Some("a"));
        cmd.args(args);
        run(cmd)
    };
    let (ok, out) = a(&["get", &format!("{root}/networks/appnet")]);
    assert!(ok && out.contains("appnet"), "node a reads networks: {out}");
    let (ok, out) = a(&["put", &format!("{root}/tasks/a/mine"), "x"]);
    assert!(ok, "node a writes below its own tasks: {out}");
    let (ok, out) = a(&["put", &format!("{root}/tasks/b/evil"), "x"]);
    assert!(
        !ok && out.contains("permission denied"),
        "node a wrote b's task: {out}"
    );
    let (ok, out) = a(&["get", "--prefix", &format!("{root}/private/")]);
    assert!(
        !ok && out.contains("permission denied"),
        "node a read private: {out}"
    );
    let (ok, out) = a(&["put", &format!("{root}/services/evil"), "{}"]);
    assert!(
        !ok && out.contains("permission denied"),
        "node a wrote a Service: {out}"
    );
    assert!(ctl
        .get_raw(&format!("{root}/tasks/b/evil"))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_removed_node_loses_its_lease_and_liveness_key() {
    let (etcd, ctl) = cluster().await;
    let a = node_store(&etcd, "a").await;
    let key = a.keys().node_lease("a");
    let lease = a.grant_lease(Duration::from_secs(2)).await.unwrap();
    let keeper = a.keep_alive(lease);
    a.put_with_lease(&key, "alive", lease).await.unwrap();
    // etcd checks no permission on keep-alives: without the revocation the removed node
    // would keep its liveness key, and so its Ready state, for as long as it runs.
    auth::remove_node_user(&ctl, "a").await.unwrap();
    assert!(ctl.get_raw(&key).await.unwrap().is_none());
    tokio::time::timeout(Duration::from_secs(2), keeper.lost())
        .await
        .expect("the node's keep-alive ends within 2 s");
    assert_denied(
        a.put_with_lease(&key, "alive", lease).await,
        "write its liveness key after removal",
    );
    // Without a lease-bound key, removal deletes the key; without any, it is done.
    ctl.put_raw(&ctl.keys().node_lease("b"), "x").await.unwrap();
    auth::remove_node_user(&ctl, "b").await.unwrap();
    assert!(ctl
        .get_raw(&ctl.keys().node_lease("b"))
        .await
        .unwrap()
        .is_none());
    auth::remove_node_user(&ctl, "b").await.unwrap();
}

#[tokio::test]
async fn a_secured_etcd_resumes_with_its_tls_users_and_roles() {
    let (mut etcd, _ctl) = cluster().await;
    etcd.stop();
    etcd.resume().await;
    let a = node_store(&etcd, "a").await;
    a.list::<NetworkSpec>().await.unwrap();
    assert_denied(a.create(&service("evil")).await, "create a Service");
    assert!(Store::connect(&etcd.connect_without_certificate())
        .await
        .is_err());
}
