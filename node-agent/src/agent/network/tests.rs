//! Unit tests of [`NodeNetwork`] against the recording fakes (network, DNS, VIP tables, mesh,
//! container runtime).

use super::*;
use crate::agent::containers::{ContainerTasks, LABEL_TASK};
use crate::agent::task_runtime::TaskRuntime;
use crate::dns::{QueryKind, RecordingDns};
use crate::lb::RecordingLb;
use crate::net::{NetCall, Observed, Peer, PeerOp, RecordingNetwork};
use crate::runtime::fake::{Call, FakeRuntime};
use shoal_api_types::endpoints::{EndpointTask, Endpoints};
use shoal_api_types::service::{PortConfig, PublishMode};
use shoal_api_types::{Network as NetworkObject, NetworkStatus, TaskAttachment, TaskSpec};
use std::collections::BTreeSet;

const PREFIX: &str = "shoal-node-1-";

pub(super) struct Node {
    pub(super) tasks: ContainerTasks,
    pub(super) network: Arc<NodeNetwork>,
    pub(super) runtime: Arc<FakeRuntime>,
    pub(super) net: Arc<RecordingNetwork>,
    dns: Arc<RecordingDns>,
    dns_internal: Arc<RecordingDns>,
    pub(super) lb: Arc<RecordingLb>,
}

fn node_with(net: RecordingNetwork, runtime: Arc<FakeRuntime>) -> Node {
    let net = Arc::new(net);
    let (dns, dns_internal, lb) = (
        Arc::new(RecordingDns::default()),
        Arc::new(RecordingDns::default()),
        Arc::new(RecordingLb::default()),
    );
    let network = Arc::new(NodeNetwork::new(
        net.clone(),
        dns.clone(),
        dns_internal.clone(),
        lb.clone(),
        RecordStore::new(),
        Ipv4Addr::new(198, 18, 0, 1),
        "/run/netns",
        PREFIX,
    ));
    network.set_networks([
        overlay("appnet", 4097, false),
        overlay("other", 4098, false),
        overlay("private", 4099, true),
    ]);
    network.set_endpoints([]);
    Node {
        tasks: ContainerTasks::new(runtime.clone(), "node-1").with_network(network.clone()),
        network,
        runtime,
        net,
        dns,
        dns_internal,
        lb,
    }
}

pub(super) fn node() -> Node {
    node_with(RecordingNetwork::new(PREFIX), Arc::new(FakeRuntime::new()))
}

fn overlay(name: &str, vni: u32, internal: bool) -> NetworkObject {
    let mut n = NetworkObject::new(
        name,
        NetworkSpec {
            internal,
            ..Default::default()
        },
    );
    n.status = NetworkStatus {
        vni: Some(vni),
        subnet: Some(format!("10.0.{}.0/24", vni - 4096)),
        ..Default::default()
    };
    n
}

pub(super) fn task(id: &str, networks: &[(&str, &str)]) -> Task {
    let internal = networks.iter().all(|(n, _)| *n == "private") && !networks.is_empty();
    Task::new(
        id,
        TaskSpec {
            service: "api".into(),
            slot: Some(1),
            node: Some("node-1".into()),
            image: "localhost:5000/busybox:latest".into(),
            args: vec!["httpd".into()],
            internal,
            attachments: networks
                .iter()
                .map(|(n, a)| TaskAttachment {
                    network: (*n).into(),
                    address: format!("{a}/24"),
                    mac: String::new(),
                    aliases: vec![],
                })
                .collect(),
            ..Default::default()
        },
    )
}

pub(super) fn endpoints(
    network: &str,
    service: &str,
    vip: &str,
    tasks: &[(&str, &str)],
) -> Endpoints {
    EndpointsSpec::vip(network, service, vip)
        .tasks(tasks.iter().map(|(ip, node)| {
            EndpointTask::new(&format!("{service}.{ip}"), ip)
                .id(&format!("t-{ip}"))
                .on(node)
        }))
        .object()
}

pub(super) fn netns(id: &str) -> PathBuf {
    PathBuf::from(format!("/run/netns/{PREFIX}{id}"))
}

#[tokio::test]
async fn start_should_attach_the_task_before_creating_its_container_in_that_namespace() {
    let n = node();
    n.tasks
        .start_task(&task("t1", &[("appnet", "10.0.1.5")]))
        .await
        .unwrap();
    let calls = n.net.calls();
    let attach = calls
        .iter()
        .position(|c| matches!(c, NetCall::AttachTask(_)))
        .expect("attached");
    let overlay = calls
        .iter()
        .position(|c| matches!(c, NetCall::EnsureOverlay(o) if o.vni == 4097))
        .expect("overlay ensured");
    let gateway = calls
        .iter()
        .position(|c| matches!(c, NetCall::EnsureGateway(_)))
        .expect("gateway ensured");
    assert!(overlay < attach && gateway < attach, "{calls:?}");
    let NetCall::AttachTask(spec) = &calls[attach] else {
        unreachable!()
    };
    assert_eq!(spec.attachments[0].vni, 4097);
    assert!(spec.egress);
    assert_eq!(n.runtime.spec("t1").unwrap().netns, Some(netns("t1")));
    assert!(n.runtime.calls().contains(&Call::Start("t1".into())));
    assert_eq!(
        n.dns.calls(),
        [format!("ensure t1 {} appnet", netns("t1").display())]
    );
    assert!(n.dns_internal.calls().is_empty());
    assert_eq!(n.lb.entries(&netns("t1")), Some(vec![]));
    assert_eq!(n.network.local_tasks(), ["t1"]);
}

#[tokio::test]
async fn a_failed_attach_should_delete_the_container_made_beside_it_and_an_unknown_network_cost_none(
) {
    let n = node();
    n.net.fail("attach_task");
    let err = n
        .tasks
        .start_task(&task("t1", &[("appnet", "10.0.1.5")]))
        .await
        .unwrap_err();
    assert!(err.is_temporary(), "{err:?}");
    let calls = n.runtime.calls();
    let create = calls
        .iter()
        .position(|c| matches!(c, Call::Create(s) if s.id == "t1"));
    let delete = calls.iter().position(|c| *c == Call::Delete("t1".into()));
    assert!(
        matches!((create, delete), (Some(c), Some(d)) if c < d),
        "the container created beside the failed attach is deleted: {calls:?}"
    );
    assert!(!calls.contains(&Call::Start("t1".into())), "{calls:?}");
    n.runtime.clear_calls();
    let err = n
        .tasks
        .start_task(&task("t2", &[("nope", "10.0.9.5")]))
        .await
        .unwrap_err();
    assert!(err.reason().contains("\"nope\" does not exist"), "{err:?}");
    assert!(n.runtime.ids().is_empty());
    assert!(!n
        .runtime
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Create(_))));
    assert!(n.dns.calls().is_empty());
}

/// Runs `start` on a paused clock; `None` if it stalled (with a paused clock, tokio jumps
/// straight to the deadline once every task waits, so a stall fails at once).
async fn unless_stalled<T>(start: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(60), start)
        .await
        .ok()
}

#[tokio::test(start_paused = true)]
async fn start_should_create_the_container_while_the_network_is_set_up() {
    // A barrier of 2 met by the container create and the namespace attach: it opens only
    // if both are in flight at once (one after the other, the first waits forever).
    let n = node();
    let meet = Arc::new(tokio::sync::Barrier::new(2));
    n.runtime.meet_on_create(meet.clone());
    n.net.meet_on_attach(meet);
    let started = unless_stalled(n.tasks.start_task(&task("t1", &[("appnet", "10.0.1.5")])))
        .await
        .expect("the create and the attach ran at the same time")
        .unwrap();
    let inner: Vec<&str> = started.stages.within().iter().map(|s| s.0).collect();
    assert_eq!(
        inner,
        [
            "network",
            "create",
            "net_locks",
            "net_devices",
            "net_peers",
            "net_attach",
            "net_serve"
        ]
    );
    assert!(started.stages.get().iter().any(|s| s.0 == "setup"));
    // The process starts only after both: in the namespace the attach made.
    assert_eq!(n.runtime.spec("t1").unwrap().netns, Some(netns("t1")));
    let calls = n.runtime.calls();
    assert_eq!(calls.last(), Some(&Call::Start("t1".into())), "{calls:?}");
    assert_eq!(n.network.local_tasks(), ["t1"]);

    // Either side failing while the other succeeds removes what the other made.
    n.net.fail("attach_task");
    let err = unless_stalled(n.tasks.start_task(&task("t2", &[("appnet", "10.0.1.6")])))
        .await
        .expect("concurrent")
        .unwrap_err();
    assert!(err.is_temporary(), "{err:?}");
    assert!(!n.runtime.ids().contains(&"t2".to_string()));
    assert!(!n.runtime.calls().contains(&Call::Start("t2".into())));
    n.net.heal("attach_task");
    n.net.clear_calls();
    let err = unless_stalled(n.tasks.start_task(&task("-t3", &[("appnet", "10.0.1.7")])))
        .await
        .expect("concurrent")
        .unwrap_err();
    assert!(matches!(err, TaskError::Rejected { .. }), "{err:?}");
    let calls = n.net.calls();
    let attach = calls
        .iter()
        .position(|c| matches!(c, NetCall::AttachTask(s) if s.task == "-t3"));
    let detach = calls
        .iter()
        .position(|c| *c == NetCall::DetachTask("-t3".into()));
    assert!(
        matches!((attach, detach), (Some(a), Some(d)) if a < d),
        "the namespace made beside the failed create is removed: {calls:?}"
    );
    assert_eq!(n.network.local_tasks(), ["t1"]);
}

#[tokio::test]
async fn a_wrong_image_should_cost_no_namespace_and_a_failed_create_should_detach() {
    let n = node();
    n.runtime.set_image_missing("localhost:5000/nope:1");
    let mut t = task("t1", &[("appnet", "10.0.1.5")]);
    t.spec.image = "localhost:5000/nope:1".into();
    let err = n.tasks.start_task(&t).await.unwrap_err();
    assert_eq!(err.reason(), "image not found: localhost:5000/nope:1");
    assert!(n.net.calls().is_empty(), "{:?}", n.net.calls());

    // An id containerd refuses: the create fails after the attach.
    let t = task("-t2", &[("appnet", "10.0.1.6")]);
    let err = n.tasks.start_task(&t).await.unwrap_err();
    assert!(matches!(err, TaskError::Rejected { .. }), "{err:?}");
    assert!(n.runtime.ids().is_empty());
    assert!(n.net.calls().contains(&NetCall::DetachTask("-t2".into())));
    assert_eq!(n.dns.calls().last().unwrap(), "stop -t2");
}

#[tokio::test]
async fn internal_tasks_should_get_no_gateway_and_a_dns_server_without_upstreams() {
    let n = node();
    n.tasks
        .start_task(&task("t1", &[("private", "10.0.3.5")]))
        .await
        .unwrap();
    assert!(!n
        .net
        .calls()
        .iter()
        .any(|c| matches!(c, NetCall::EnsureGateway(_))));
    assert!(n.dns.calls().is_empty());
    assert_eq!(
        n.dns_internal.calls(),
        [format!("ensure t1 {} private", netns("t1").display())]
    );
}

#[tokio::test]
async fn remove_should_detach_after_deleting_and_drop_overlays_nobody_uses() {
    let n = node();
    n.tasks
        .start_task(&task("t1", &[("appnet", "10.0.1.5")]))
        .await
        .unwrap();
    n.tasks
        .start_task(&task(
            "t2",
            &[("appnet", "10.0.1.6"), ("other", "10.0.2.6")],
        ))
        .await
        .unwrap();
    n.net.clear_calls();
    n.tasks.remove_task("t2").await.unwrap();
    assert!(!n.runtime.ids().contains(&"t2".to_string()));
    let calls = n.net.calls();
    assert!(
        calls.contains(&NetCall::DetachTask("t2".into())),
        "{calls:?}"
    );
    assert!(calls.contains(&NetCall::RemoveOverlay(4098)), "{calls:?}");
    assert!(!calls.contains(&NetCall::RemoveOverlay(4097)), "{calls:?}");
    assert_eq!(n.dns.calls().last().unwrap(), "stop t2");
    n.tasks.remove_task("t1").await.unwrap();
    assert!(n.net.calls().contains(&NetCall::RemoveOverlay(4097)));
    assert!(n.network.local_tasks().is_empty());
    // Removing again is a no-op that still succeeds.
    n.tasks.remove_task("t1").await.unwrap();
}

#[tokio::test]
async fn a_teardown_should_look_for_unused_overlays_only_when_one_may_have_emptied() {
    let n = node();
    for t in ["t1", "t2"] {
        n.tasks
            .start_task(&task(t, &[("appnet", "10.0.1.5")]))
            .await
            .unwrap();
    }
    n.net.clear_calls();
    n.tasks.remove_task("t2").await.unwrap();
    assert_eq!(
        n.net.calls(),
        [NetCall::DetachTask("t2".into())],
        "t1 still uses appnet's overlay: no links observed"
    );
    n.tasks.remove_task("t1").await.unwrap();
    let calls = n.net.calls();
    assert!(calls.contains(&NetCall::Observe), "{calls:?}");
    assert!(calls.contains(&NetCall::RemoveOverlay(4097)), "{calls:?}");
    // A task on no network says nothing of any overlay: the links are looked at.
    n.tasks.start_task(&task("t3", &[])).await.unwrap();
    n.net.clear_calls();
    n.tasks.remove_task("t3").await.unwrap();
    assert!(
        n.net.calls().contains(&NetCall::Observe),
        "{:?}",
        n.net.calls()
    );
}

#[tokio::test]
async fn a_start_should_sync_only_peers_whose_entries_are_not_in_place() {
    let n = node();
    let ep = |tasks: &[(&str, &str)]| endpoints("appnet", "api", "10.0.1.2", tasks);
    n.network.set_endpoints([ep(&[("10.0.1.7", "198.18.0.2")])]);
    let lists = |n: &Node| {
        n.net
            .calls()
            .iter()
            .filter(|c| **c == NetCall::ListPeerEntries(4097))
            .count()
    };
    n.tasks
        .start_task(&task("t1", &[("appnet", "10.0.1.5")]))
        .await
        .unwrap();
    assert_eq!(lists(&n), 1, "a new overlay: synced");
    n.net.clear_calls();
    n.tasks
        .start_task(&task("t2", &[("appnet", "10.0.1.6")]))
        .await
        .unwrap();
    assert_eq!(lists(&n), 0, "every peer in place: {:?}", n.net.calls());
    // A remote task no sync has reached yet.
    n.network.set_endpoints([ep(&[
        ("10.0.1.7", "198.18.0.2"),
        ("10.0.1.8", "198.18.0.3"),
    ])]);
    n.tasks
        .start_task(&task("t3", &[("appnet", "10.0.1.9")]))
        .await
        .unwrap();
    assert_eq!(lists(&n), 1);
    assert!(n.net.calls().iter().any(|c| matches!(c,
        NetCall::ApplyPeerOp(4097, PeerOp::AddNeigh(e)) if e.ip == ip("10.0.1.8"))));
}

#[tokio::test]
async fn setups_should_ensure_devices_only_until_they_are_known_to_be_made() {
    let n = node();
    let ensures = |n: &Node| -> Vec<NetCall> {
        n.net
            .calls()
            .into_iter()
            .filter(|c| matches!(c, NetCall::EnsureOverlay(_) | NetCall::EnsureGateway(_)))
            .collect()
    };
    let start = |id: &'static str, address: &'static str| {
        let t = task(id, &[("appnet", address)]);
        let tasks = &n.tasks;
        async move { tasks.start_task(&t).await }
    };
    start("t1", "10.0.1.5").await.unwrap();
    assert_eq!(ensures(&n).len(), 2, "appnet's overlay and the gateway");
    n.net.clear_calls();
    start("t2", "10.0.1.6").await.unwrap();
    assert_eq!(ensures(&n), [], "both known to be in place");

    // The overlay goes behind the agent's back: the attach fails, the retry makes it again.
    n.net.remove_overlay(4097).await.unwrap();
    n.net.clear_calls();
    assert!(start("t3", "10.0.1.7").await.is_err());
    assert_eq!(ensures(&n), []);
    start("t3", "10.0.1.7").await.unwrap();
    assert_eq!(ensures(&n).len(), 2, "{:?}", n.net.calls());

    // A removal of unused overlays forgets what was made too.
    for t in ["t1", "t2", "t3"] {
        n.tasks.remove_task(t).await.unwrap();
    }
    assert!(n.net.calls().contains(&NetCall::RemoveOverlay(4097)));
    n.net.clear_calls();
    start("t4", "10.0.1.8").await.unwrap();
    assert_eq!(ensures(&n).len(), 2, "{:?}", n.net.calls());
}

#[tokio::test]
async fn setups_should_run_side_by_side_so_one_waiting_for_the_peers_lock_holds_up_no_other() {
    let n = node();
    let ep = |tasks: &[(&str, &str)]| endpoints("appnet", "api", "10.0.1.2", tasks);
    n.network.set_endpoints([ep(&[("10.0.1.7", "198.18.0.2")])]);
    // `other` is up and its (no) peers are known to be in place: a setup there syncs nothing.
    n.network
        .setup(&task("b0", &[("other", "10.0.2.5")]))
        .await
        .unwrap();
    // An Endpoints pass is syncing peers; a setup on appnet must wait for it.
    let held = n.network.peers.lock().await;
    let a_task = task("a", &[("appnet", "10.0.1.5")]);
    let a = n.network.setup(&a_task);
    tokio::pin!(a);
    still_waiting(a.as_mut()).await;
    without_waiting(
        n.network.setup(&task("b", &[("other", "10.0.2.6")])),
        "a setup does not queue behind one waiting for the peers lock",
    )
    .await
    .unwrap();
    drop(held);
    a.await.unwrap();
    assert!(n.net.calls().iter().any(|c| matches!(c,
        NetCall::ApplyPeerOp(4097, PeerOp::AddNeigh(e)) if e.ip == ip("10.0.1.7"))));
}

#[tokio::test]
async fn an_overlay_removal_should_wait_for_a_setup_still_attaching_to_that_overlay() {
    let n = node_with_t1().await;
    let attach = Arc::new(tokio::sync::Barrier::new(2));
    n.net.meet_on_attach(attach.clone());
    let t2_task = task("t2", &[("appnet", "10.0.1.6")]);
    let setup = n.network.setup(&t2_task);
    tokio::pin!(setup);
    // t2's setup has made its devices and waits in its attach.
    still_waiting(setup.as_mut()).await;
    // t1 leaves: as far as the local tasks go, appnet's overlay is unused now.
    let teardown = n.network.teardown("t1");
    tokio::pin!(teardown);
    still_waiting(teardown.as_mut()).await;
    assert!(
        !n.net.calls().contains(&NetCall::RemoveOverlay(4097)),
        "no removal while a setup is attaching: {:?}",
        n.net.calls()
    );
    let (attached, ()) = tokio::join!(setup, async {
        attach.wait().await;
    });
    attached.expect("t2 attached to an overlay still there");
    teardown.await;
    assert!(
        !n.net.calls().contains(&NetCall::RemoveOverlay(4097)),
        "t2 uses it: {:?}",
        n.net.calls()
    );
}

#[tokio::test]
async fn an_exited_process_should_lose_its_networking_but_keep_its_container() {
    let n = node();
    n.tasks
        .start_task(&task("t1", &[("appnet", "10.0.1.5")]))
        .await
        .unwrap();
    n.runtime.exit("t1", 137);
    for _ in 0..200 {
        if n.net.calls().contains(&NetCall::DetachTask("t1".into())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(n.net.calls().contains(&NetCall::DetachTask("t1".into())));
    assert!(n.net.calls().contains(&NetCall::RemoveOverlay(4097)));
    assert_eq!(n.dns.calls().last().unwrap(), "stop t1");
    assert_eq!(n.runtime.ids(), ["t1"]);
    assert!(n.network.local_tasks().is_empty());
}

#[tokio::test]
async fn endpoints_changes_should_sync_peers_records_and_only_the_affected_vip_tables() {
    let n = node();
    n.tasks
        .start_task(&task("t1", &[("appnet", "10.0.1.5")]))
        .await
        .unwrap();
    n.tasks
        .start_task(&task("t2", &[("other", "10.0.2.5")]))
        .await
        .unwrap();
    let mut applied = Applied::default();
    n.network.refresh(&mut applied.endpoints).await;
    let lb_before = n.lb.calls().len();
    n.net.clear_calls();

    n.network.set_endpoints([
        endpoints(
            "appnet",
            "api",
            "10.0.1.2",
            &[("10.0.1.5", "198.18.0.1"), ("10.0.1.7", "198.18.0.2")],
        ),
        endpoints("unrelated", "db", "10.0.9.2", &[("10.0.9.5", "198.18.0.3")]),
    ]);
    n.network.refresh(&mut applied.endpoints).await;

    // Peers: only the remote task, on appnet's overlay.
    let peer_ops: Vec<_> = n
        .net
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            NetCall::ApplyPeerOp(vni, op) => Some((vni, op)),
            _ => None,
        })
        .collect();
    assert_eq!(peer_ops.len(), 2, "{peer_ops:?}");
    assert!(peer_ops.iter().all(|(vni, _)| *vni == 4097));
    assert!(peer_ops.iter().any(|(_, op)| matches!(op,
        PeerOp::AddNeigh(e) if e.ip == Ipv4Addr::new(10, 0, 1, 7))));
    // Records of appnet answer the VIP for every view on it.
    assert_eq!(
        n.network
            .records()
            .view(&["appnet"])
            .answer("api", QueryKind::A),
        crate::dns::Answer::Addrs(vec!["10.0.1.2".parse().unwrap()])
    );
    // VIP rules: t1's namespace only, changed from what it held (not rewritten): first
    // with the local backend, then, its peer entries synced, with the remote one.
    let lb_calls = n.lb.calls()[lb_before..].to_vec();
    let update = format!("update {} 2", netns("t1").display());
    assert_eq!(lb_calls, [update.clone(), update], "{lb_calls:?}");
    assert_eq!(n.lb.entries(&netns("t1")).unwrap()[0].backends.len(), 2);

    // No change, no work.
    n.net.clear_calls();
    n.network.refresh(&mut applied.endpoints).await;
    assert_eq!(n.lb.calls().len(), lb_before + 2);
    assert!(n.net.calls().is_empty(), "{:?}", n.net.calls());
}

/// Endpoints of `service` on `network` with tasks (address, node, ready).
fn endpoints_ready(
    network: &str,
    service: &str,
    vip: &str,
    tasks: &[(&str, &str, bool)],
) -> Endpoints {
    EndpointsSpec::vip(network, service, vip)
        .tasks(tasks.iter().map(|(ip, node, ready)| {
            EndpointTask::new(&format!("{service}.{ip}"), ip)
                .id(&format!("t-{ip}"))
                .on(node)
                .ready(*ready)
        }))
        .object()
}

/// How long a step may take that must not wait for a lock the test holds (the fakes answer
/// at once; the lock would never be given).
const NO_LOCK: Duration = Duration::from_secs(2);

/// Runs `step`, which must not wait for a lock the test holds.
async fn without_waiting<F: std::future::Future>(step: F, why: &str) -> F::Output {
    tokio::time::timeout(NO_LOCK, step).await.expect(why)
}

/// Polls `step` a while: it must still be waiting (for a lock the test holds).
async fn still_waiting<F: std::future::Future>(step: std::pin::Pin<&mut F>) {
    assert!(
        tokio::time::timeout(Duration::from_millis(200), step)
            .await
            .is_err(),
        "the peer sync waits for the peers lock"
    );
}

/// A node running task `t1` on appnet (10.0.1.5), for the VIP table tests below.
async fn node_with_t1() -> Node {
    let n = node();
    n.tasks
        .start_task(&task("t1", &[("appnet", "10.0.1.5")]))
        .await
        .unwrap();
    n
}

/// The backends of the first VIP entry in t1's table.
fn t1_backends(n: &Node) -> Vec<Ipv4Addr> {
    n.lb.entries(&netns("t1")).unwrap()[0].backends.clone()
}

/// Sets the Endpoints to `api` (VIP 10.0.1.2) on appnet with tasks (address, node, ready);
/// node-1 (198.18.0.1) is this one.
fn set_api(n: &Node, tasks: &[(&str, &str, bool)]) {
    n.network
        .set_endpoints([endpoints_ready("appnet", "api", "10.0.1.2", tasks)])
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[tokio::test]
async fn vip_tables_should_drop_a_backend_without_waiting_for_task_setups_and_add_one_after_its_peers(
) {
    let n = node_with_t1().await;
    let backends = || t1_backends(&n);
    let set = |tasks: &[(&str, &str, bool)]| set_api(&n, tasks);
    set(&[
        ("10.0.1.5", "198.18.0.1", true),
        ("10.0.1.7", "198.18.0.2", true),
    ]);
    let mut applied = Applied::default();
    n.network.refresh(&mut applied.endpoints).await;
    assert_eq!(backends(), [ip("10.0.1.5"), ip("10.0.1.7")]);

    // Task starts and stops hold the overlays lock (an overlay removal exclusively, as
    // here); Endpoints changes never wait for it, peer syncs included.
    let setups = n.network.overlays.write().await;
    set(&[
        ("10.0.1.5", "198.18.0.1", true),
        ("10.0.1.7", "198.18.0.2", false),
    ]);
    without_waiting(
        n.network.refresh(&mut applied.endpoints),
        "a withdrawal does not wait for task setups",
    )
    .await;
    assert_eq!(backends(), [ip("10.0.1.5")]);
    set(&[
        ("10.0.1.5", "198.18.0.1", true),
        ("10.0.1.7", "198.18.0.2", false),
        ("10.0.1.6", "198.18.0.2", false),
    ]);
    without_waiting(
        n.network.refresh(&mut applied.endpoints),
        "a peer sync does not wait for task setups",
    )
    .await;
    assert!(n.net.calls().iter().any(|c| matches!(c,
        NetCall::ApplyPeerOp(4097, PeerOp::AddNeigh(e)) if e.ip == ip("10.0.1.6"))));
    drop(setups);

    // A new remote task while another peer sync holds the peers lock: the drained one
    // leaves at once, the new one waits for its peer entries.
    let held = n.network.peers.lock().await;
    n.net.clear_calls();
    set(&[
        ("10.0.1.5", "198.18.0.1", false),
        ("10.0.1.7", "198.18.0.2", false),
        ("10.0.1.6", "198.18.0.2", false),
        ("10.0.1.8", "198.18.0.2", true),
    ]);
    let refresh = n.network.refresh(&mut applied.endpoints);
    tokio::pin!(refresh);
    still_waiting(refresh.as_mut()).await;
    assert_eq!(
        backends(),
        [ip("10.0.1.5")],
        "kept: its only backend would be one not reachable yet"
    );
    assert!(n.net.calls().is_empty(), "{:?}", n.net.calls());
    drop(held);
    refresh.await;
    assert_eq!(backends(), [ip("10.0.1.8")]);
    assert!(n.net.calls().iter().any(|c| matches!(c,
        NetCall::ApplyPeerOp(4097, PeerOp::AddNeigh(e)) if e.ip == ip("10.0.1.8"))));
}

#[tokio::test]
async fn a_failed_peer_sync_should_keep_the_new_backend_out_and_be_retried_at_the_next_pass() {
    let n = node_with_t1().await;
    let backends = || t1_backends(&n);
    let set = |tasks: &[(&str, &str, bool)]| set_api(&n, tasks);
    set(&[("10.0.1.5", "198.18.0.1", true)]);
    let mut applied = Applied::default();
    n.network.refresh(&mut applied.endpoints).await;
    n.net.fail("apply_peer_op");
    set(&[
        ("10.0.1.5", "198.18.0.1", true),
        ("10.0.1.8", "198.18.0.2", true),
    ]);
    n.network.refresh(&mut applied.endpoints).await;
    assert_eq!(backends(), [ip("10.0.1.5")], "no peer entry, no backend");
    n.net.heal("apply_peer_op");
    n.network.refresh(&mut applied.endpoints).await;
    assert_eq!(
        backends(),
        [ip("10.0.1.5"), ip("10.0.1.8")],
        "synced again, then added"
    );
}

#[tokio::test]
async fn a_vip_table_should_take_a_remote_backend_only_once_its_peer_entries_are_in_place() {
    let n = node_with_t1().await;
    set_api(&n, &[("10.0.1.5", "198.18.0.1", true)]);
    let mut applied = Applied::default();
    n.network.refresh(&mut applied.endpoints).await;
    // A change that lands after a pass read the Endpoints and before it programs t1's
    // table: the programming reads it, but nothing has synced its peer yet.
    set_api(
        &n,
        &[
            ("10.0.1.5", "198.18.0.1", true),
            ("10.0.1.8", "198.18.0.2", true),
        ],
    );
    n.network
        .program_lb("t1", false, &BTreeSet::new())
        .await
        .unwrap();
    assert_eq!(
        t1_backends(&n),
        [ip("10.0.1.5")],
        "no peer entry, no backend"
    );
    n.network.refresh(&mut applied.endpoints).await;
    assert_eq!(t1_backends(&n), [ip("10.0.1.5"), ip("10.0.1.8")]);
}

/// Starts `n`'s network loops with t1 desired: returns the desired tasks' and the
/// shutdown's senders and the loops' handle.
#[allow(clippy::type_complexity)]
fn run_loops(
    n: &Node,
    resync: Duration,
) -> (
    watch::Sender<super::super::desired::DesiredTasks>,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let t1 = task("t1", &[("appnet", "10.0.1.5")]);
    let (desired_tx, desired) = watch::channel(Some(BTreeMap::from([("t1".to_string(), t1)])));
    let (stop, shutdown) = watch::channel(false);
    let background = tokio::spawn(n.network.clone().run(
        n.runtime.clone(),
        BackgroundContext {
            desired,
            shutdown,
            resync,
        },
    ));
    (desired_tx, stop, background)
}

#[tokio::test]
async fn an_endpoints_change_should_not_wait_for_a_full_reconcile() {
    let n = node_with_t1().await;
    set_api(
        &n,
        &[
            ("10.0.1.5", "198.18.0.1", true),
            ("10.0.1.7", "198.18.0.2", true),
        ],
    );
    let (_desired_tx, stop, background) = run_loops(&n, Duration::from_millis(20));
    let programmed = |want: &[&str]| {
        let want: Vec<Ipv4Addr> = want.iter().map(|a| ip(a)).collect();
        let lb = n.lb.clone();
        async move {
            while lb
                .entries(&netns("t1"))
                .and_then(|e| e.first().map(|e| e.backends.clone()))
                != Some(want.clone())
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    tokio::time::timeout(
        Duration::from_secs(5),
        programmed(&["10.0.1.5", "10.0.1.7"]),
    )
    .await
    .expect("the loop programs t1's table");
    // The next resync's reconcile waits for the overlays lock (as behind task setups or an
    // overlay removal).
    let setups = n.network.overlays.write().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        n.network.busy.try_write().is_err(),
        "a reconcile is under way"
    );
    set_api(
        &n,
        &[
            ("10.0.1.5", "198.18.0.1", true),
            ("10.0.1.7", "198.18.0.2", false),
        ],
    );
    without_waiting(
        programmed(&["10.0.1.5"]),
        "a drained backend leaves while a full reconcile waits",
    )
    .await;
    drop(setups);
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), background)
        .await
        .expect("the loops stop")
        .unwrap();
}

#[tokio::test]
async fn the_network_loops_should_end_together_when_the_desired_tasks_close() {
    let n = node_with_t1().await;
    let (desired_tx, _stop, background) = run_loops(&n, Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The converge loop ended (the agent is going away): the passes loop ends, and the
    // reconcile loop with it, without waiting for the shutdown signal.
    drop(desired_tx);
    tokio::time::timeout(Duration::from_secs(5), background)
        .await
        .expect("both loops end")
        .unwrap();
}

#[tokio::test]
async fn a_pass_should_sync_again_where_entries_went_missing_without_an_endpoints_change() {
    let n = node_with_t1().await;
    set_api(
        &n,
        &[
            ("10.0.1.5", "198.18.0.1", true),
            ("10.0.1.7", "198.18.0.2", true),
        ],
    );
    let mut applied = Applied::default();
    n.network.refresh(&mut applied.endpoints).await;
    // Another sync, from an older reading, took 10.0.1.7's entries out.
    n.network.net.sync_peers(4097, &[]).await.unwrap();
    n.net.clear_calls();
    n.network.refresh(&mut applied.endpoints).await;
    assert!(
        n.net.calls().iter().any(|c| matches!(c,
            NetCall::ApplyPeerOp(4097, PeerOp::AddNeigh(e)) if e.ip == ip("10.0.1.7"))),
        "synced again: {:?}",
        n.net.calls()
    );
    assert_eq!(t1_backends(&n), [ip("10.0.1.5"), ip("10.0.1.7")]);
}

#[tokio::test]
async fn verifying_a_vip_table_should_keep_an_entry_whose_backends_are_all_held_back() {
    let n = node_with_t1().await;
    set_api(&n, &[("10.0.1.7", "198.18.0.2", true)]);
    let mut applied = Applied::default();
    n.network.refresh(&mut applied.endpoints).await;
    assert_eq!(t1_backends(&n), [ip("10.0.1.7")]);
    // The periodic verification runs between a change and the pass that syncs its peer.
    set_api(&n, &[("10.0.1.9", "198.18.0.2", true)]);
    n.network.verify_lb().await;
    assert_eq!(
        t1_backends(&n),
        [ip("10.0.1.7")],
        "kept until 10.0.1.9 is reached"
    );
    n.network.refresh(&mut applied.endpoints).await;
    assert_eq!(t1_backends(&n), [ip("10.0.1.9")]);
}

#[tokio::test]
async fn an_endpoints_change_should_program_the_vip_tables_of_local_tasks_at_once() {
    let n = node();
    for (id, ip) in [("t1", "10.0.1.5"), ("t2", "10.0.1.6"), ("t3", "10.0.1.7")] {
        n.tasks
            .start_task(&task(id, &[("appnet", ip)]))
            .await
            .unwrap();
    }
    let mut applied = Applied::default();
    n.network.refresh(&mut applied.endpoints).await;
    n.lb.slow_updates(100);
    n.network.set_endpoints([endpoints_ready(
        "appnet",
        "api",
        "10.0.1.2",
        &[
            ("10.0.1.5", "198.18.0.1", true),
            ("10.0.1.6", "198.18.0.1", true),
        ],
    )]);
    n.network.refresh(&mut applied.endpoints).await;
    assert_eq!(n.lb.most_updates_at_once(), 3, "{:?}", n.lb.calls());
    for id in ["t1", "t2", "t3"] {
        assert_eq!(n.lb.entries(&netns(id)).unwrap()[0].backends.len(), 2);
    }
}

#[tokio::test]
async fn a_vip_change_that_fails_should_fall_back_to_writing_the_table_whole() {
    let n = node();
    n.tasks
        .start_task(&task("t1", &[("appnet", "10.0.1.5")]))
        .await
        .unwrap();
    let mut applied = Applied::default();
    n.network.refresh(&mut applied.endpoints).await;
    let before = n.lb.calls().len();
    n.lb.refuse_updates(true);
    n.network.set_endpoints([endpoints(
        "appnet",
        "api",
        "10.0.1.2",
        &[("10.0.1.5", "198.18.0.1"), ("10.0.1.7", "198.18.0.2")],
    )]);
    n.network.refresh(&mut applied.endpoints).await;
    let t1 = netns("t1").display().to_string();
    // Twice: with the local backend, then with the remote one once its peers are synced.
    assert_eq!(
        n.lb.calls()[before..],
        [
            format!("update {t1} 2"),
            format!("program {t1} 2"),
            format!("update {t1} 2"),
            format!("program {t1} 2")
        ]
    );
    assert_eq!(n.lb.entries(&netns("t1")).unwrap()[0].backends.len(), 2);
}

#[tokio::test]
async fn resync_should_repair_a_vip_table_that_drifted_behind_the_agents_back() {
    let n = node();
    let t1 = task("t1", &[("appnet", "10.0.1.5")]);
    n.tasks.start_task(&t1).await.unwrap();
    n.network.set_endpoints([endpoints(
        "appnet",
        "api",
        "10.0.1.2",
        &[("10.0.1.5", "198.18.0.1")],
    )]);
    let mut applied = Applied::default();
    n.network.refresh(&mut applied.endpoints).await;
    let want = n.lb.entries(&netns("t1")).unwrap();
    assert_eq!(want.len(), 2);
    let desired = BTreeMap::from([("t1".to_string(), t1)]);
    // What `run` does at each resync.
    let resync = || async {
        assert!(
            n.network
                .reconcile(n.runtime.as_ref() as &dyn ContainerRuntime, &desired)
                .await
        );
        n.network.verify_lb().await;
    };
    // In step: the resync reads the table back and leaves it alone.
    let before = n.lb.calls().len();
    resync().await;
    assert_eq!(n.lb.calls().len(), before);

    // A stale backend appears in the kernel; the agent's cache does not know.
    let mut stale = want.clone();
    stale[0].backends.push("10.0.1.99".parse().unwrap());
    n.lb.set_entries(&netns("t1"), Some(stale));
    // An Endpoints refresh without a change trusts the cache...
    n.network.refresh(&mut applied.endpoints).await;
    assert_eq!(n.lb.calls().len(), before);
    // ...the resync does not: the table is written whole.
    resync().await;
    assert_eq!(
        n.lb.calls()[before..],
        [format!("program {} 2", netns("t1").display())]
    );
    assert_eq!(n.lb.entries(&netns("t1")), Some(want.clone()));
    // And a table that vanished is written again too.
    n.lb.set_entries(&netns("t1"), None);
    resync().await;
    assert_eq!(n.lb.entries(&netns("t1")), Some(want));
}

#[tokio::test]
async fn a_service_in_several_slices_should_feed_peers_records_and_vip_tables_as_one() {
    let n = node();
    n.tasks
        .start_task(&task("t1", &[("appnet", "10.0.1.5")]))
        .await
        .unwrap();
    let mut applied = Applied::default();
    n.network.refresh(&mut applied.endpoints).await;
    n.net.clear_calls();

    let slice = |k: u32, tasks: &[(&str, &str)]| {
        let mut ep = endpoints("appnet", "api", "10.0.1.2", tasks);
        ep.spec.slice = k;
        ep.spec.clone().object()
    };
    n.network.set_endpoints([
        slice(0, &[("10.0.1.5", "198.18.0.1"), ("10.0.1.6", "198.18.0.2")]),
        slice(1, &[("10.0.1.7", "198.18.0.2"), ("10.0.1.8", "198.18.0.3")]),
        slice(2, &[("10.0.1.9", "198.18.0.3")]),
    ]);
    n.network.refresh(&mut applied.endpoints).await;

    let neighbours: BTreeSet<Ipv4Addr> = n
        .net
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            NetCall::ApplyPeerOp(_, PeerOp::AddNeigh(e)) => Some(e.ip),
            _ => None,
        })
        .collect();
    let remote: BTreeSet<Ipv4Addr> = ["10.0.1.6", "10.0.1.7", "10.0.1.8", "10.0.1.9"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(neighbours, remote, "remote tasks of every slice are peers");
    let crate::dns::Answer::Addrs(mut addrs) = n
        .network
        .records()
        .view(&["appnet"])
        .answer("tasks.api", QueryKind::A)
    else {
        panic!("tasks.api unknown")
    };
    addrs.sort();
    assert_eq!(addrs.len(), 5, "{addrs:?}");
    let entries = n.lb.entries(&netns("t1")).unwrap();
    assert_eq!(entries.len(), 2, "one VIP, TCP and UDP: {entries:?}");
    assert!(entries.iter().all(|e| e.backends.len() == 5));
}

#[tokio::test]
async fn reconcile_should_restart_dns_of_surviving_tasks_and_collect_leftovers() {
    // What a crashed agent left: t1 runs (container, namespace, overlay), `gone` has a
    // namespace but no container, overlay 4098 has no task, and `ended` (orphaned while
    // the agent was away) still has its container and namespace.
    let runtime = Arc::new(FakeRuntime::new());
    let first = node_with(RecordingNetwork::new(PREFIX), runtime.clone());
    let t1 = task("t1", &[("appnet", "10.0.1.5")]);
    first.tasks.start_task(&t1).await.unwrap();
    first
        .tasks
        .start_task(&task("gone", &[("other", "10.0.2.5")]))
        .await
        .unwrap();
    first
        .tasks
        .start_task(&task("ended", &[("appnet", "10.0.1.8")]))
        .await
        .unwrap();
    let observed: Observed = first.net.observe().await.unwrap();
    runtime.remove("gone");
    assert_eq!(runtime.ids(), ["ended", "t1"]);
    assert_eq!(
        runtime.spec("t1").unwrap().labels[LABEL_TASK],
        "t1".to_string()
    );

    let n = node_with(RecordingNetwork::with_observed(PREFIX, observed), runtime);
    n.network.set_endpoints([endpoints(
        "appnet",
        "api",
        "10.0.1.2",
        &[("10.0.1.5", "198.18.0.1")],
    )]);
    let mut ended = task("ended", &[("appnet", "10.0.1.8")]);
    ended.status.state = shoal_api_types::TaskState::Orphaned;
    let desired = BTreeMap::from([("t1".to_string(), t1), ("ended".to_string(), ended)]);
    assert!(
        n.network
            .reconcile(n.runtime.as_ref() as &dyn ContainerRuntime, &desired)
            .await
    );
    let calls = n.net.calls();
    assert!(
        calls.contains(&NetCall::DetachTask("gone".into())),
        "{calls:?}"
    );
    assert!(
        calls.contains(&NetCall::DetachTask("ended".into())),
        "an ended task keeps its container, not its networking: {calls:?}"
    );
    assert_eq!(n.dns.server("ended"), None);
    assert!(calls.contains(&NetCall::RemoveOverlay(4098)), "{calls:?}");
    assert!(
        !calls.iter().any(|c| matches!(c, NetCall::AttachTask(_))),
        "the running task is left alone: {calls:?}"
    );
    assert_eq!(
        n.dns.server("t1"),
        Some((netns("t1"), vec!["appnet".to_string()]))
    );
    assert_eq!(n.lb.entries(&netns("t1")).unwrap().len(), 2);
    assert_eq!(n.network.local_tasks(), ["t1"]);

    // A second reconcile changes nothing.
    n.net.clear_calls();
    let lb_calls = n.lb.calls().len();
    assert!(
        n.network
            .reconcile(n.runtime.as_ref() as &dyn ContainerRuntime, &desired)
            .await
    );
    assert!(n
        .net
        .calls()
        .iter()
        .all(|c| matches!(c, NetCall::Observe | NetCall::ListPeerEntries(_))));
    assert_eq!(n.lb.calls().len(), lb_calls);
}

#[tokio::test]
async fn reconcile_should_wait_for_starts_in_flight() {
    let n = node();
    let held = n.network.hold().await;
    assert!(
        !n.network
            .reconcile(
                n.runtime.as_ref() as &dyn ContainerRuntime,
                &BTreeMap::new()
            )
            .await
    );
    drop(held);
    assert!(
        n.network
            .reconcile(
                n.runtime.as_ref() as &dyn ContainerRuntime,
                &BTreeMap::new()
            )
            .await
    );
}

#[tokio::test(start_paused = true)]
async fn drain_should_wait_until_the_task_leaves_every_endpoints_object() {
    let n = node();
    n.network.set_endpoints([endpoints(
        "appnet",
        "api",
        "10.0.1.100",
        &[("10.0.1.2", "198.18.0.1")],
    )]);
    assert!(n.network.is_ready_anywhere("t-10.0.1.2"));
    let network = n.network.clone();
    let drained =
        tokio::spawn(async move { network.drain("t-10.0.1.2", Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !drained.is_finished(),
        "still listed as ready: keeps waiting"
    );
    let mut eps = endpoints("appnet", "api", "10.0.1.100", &[("10.0.1.2", "198.18.0.1")]);
    eps.spec.tasks[0].ready = false;
    n.network.set_endpoints([eps]);
    assert!(drained.await.unwrap(), "drained once marked not ready");
}

#[tokio::test(start_paused = true)]
async fn drain_should_give_up_after_its_limit() {
    let n = node();
    n.network.set_endpoints([endpoints(
        "appnet",
        "api",
        "10.0.1.100",
        &[("10.0.1.2", "198.18.0.1")],
    )]);
    assert!(!n.network.drain("t-10.0.1.2", Duration::from_secs(2)).await);
    assert!(
        n.network.drain("unknown", Duration::from_secs(2)).await,
        "a task listed nowhere is drained"
    );
}

fn node_obj(name: &str, address: &str, ingress: &str) -> shoal_api_types::Node {
    let mut n = shoal_api_types::Node::new(name, Default::default());
    n.status.address = address.into();
    n.status.ingress_address = ingress.into();
    n
}

/// A node's networking with the routing mesh, on the recording fakes.
fn mesh_node(
    net: &Arc<RecordingNetwork>,
    name: &str,
    underlay: Ipv4Addr,
    mesh: Arc<crate::mesh::RecordingMesh>,
) -> NodeNetwork {
    NodeNetwork::new(
        net.clone(),
        Arc::new(RecordingDns::default()),
        Arc::new(RecordingDns::default()),
        Arc::new(RecordingLb::default()),
        RecordStore::new(),
        underlay,
        "/run/netns",
        PREFIX,
    )
    .with_mesh(name, mesh)
}

/// Node 3 (198.18.0.3, ingress address 10.255.0.3) running the mesh on the ingress
/// network, with `others` in the Nodes besides itself.
fn node3_on_ingress(
    others: &[shoal_api_types::Node],
) -> (
    Arc<RecordingNetwork>,
    Arc<crate::mesh::RecordingMesh>,
    NodeNetwork,
) {
    let net = Arc::new(RecordingNetwork::new(PREFIX));
    let mesh = Arc::new(crate::mesh::RecordingMesh::default());
    let network = mesh_node(&net, "node-3", Ipv4Addr::new(198, 18, 0, 3), mesh.clone());
    let mut ingress = overlay("ingress", 4096, false);
    ingress.status.subnet = Some("10.255.0.0/16".into());
    network.set_networks([ingress]);
    let mut nodes = others.to_vec();
    nodes.push(node_obj("node-3", "198.18.0.3", "10.255.0.3"));
    network.set_nodes(nodes);
    (net, mesh, network)
}

/// Sets the Endpoints of ingress to `pub` publishing 9091 → 80, with tasks (address, ready)
/// on node-2 (198.18.0.2).
fn set_pub(network: &NodeNetwork, tasks: &[(&str, bool)]) {
    let tasks: Vec<(&str, &str, bool)> = tasks
        .iter()
        .map(|(ip, ready)| (*ip, "198.18.0.2", *ready))
        .collect();
    let mut eps = endpoints_ready("ingress", "pub", "10.255.0.2", &tasks);
    eps.spec.ports = vec![PortConfig {
        published: 9091,
        target: 80,
        ..Default::default()
    }];
    network.set_endpoints([eps]);
}

#[tokio::test]
async fn the_mesh_should_keep_a_backend_out_until_a_failed_peer_sync_is_retried() {
    let (net, mesh, network) = node3_on_ingress(&[]);
    let set = |ips: &[&str]| {
        let tasks: Vec<(&str, bool)> = ips.iter().map(|ip| (*ip, true)).collect();
        set_pub(&network, &tasks)
    };
    let backends = || mesh.rules().unwrap().ports[0].backends.clone();
    let mut applied = Applied::default();
    set(&["10.255.0.7"]);
    network.refresh_mesh(&mut applied.mesh).await;
    net.fail("apply_peer_op");
    set(&["10.255.0.7", "10.255.0.8"]);
    network.refresh_mesh(&mut applied.mesh).await;
    assert_eq!(backends(), [ip("10.255.0.7")], "no peer entry, no backend");
    net.heal("apply_peer_op");
    network.refresh_mesh(&mut applied.mesh).await;
    assert_eq!(backends(), [ip("10.255.0.7"), ip("10.255.0.8")]);
}

#[tokio::test]
async fn the_mesh_should_sync_ingress_peers_again_when_another_sync_left_entries_out() {
    let (net, mesh, network) = node3_on_ingress(&[]);
    set_pub(&network, &[("10.255.0.7", true), ("10.255.0.8", true)]);
    let mut applied = Applied::default();
    network.refresh_mesh(&mut applied.mesh).await;
    // A task setup's sync of ingress, from an older reading, takes 10.255.0.8's entries out.
    network
        .net
        .sync_peers(
            4096,
            &[Peer {
                ip: ip("10.255.0.7"),
                node: ip("198.18.0.2"),
            }],
        )
        .await
        .unwrap();
    net.clear_calls();
    network.refresh_mesh(&mut applied.mesh).await;
    assert!(
        net.calls().iter().any(|c| matches!(c,
            NetCall::ApplyPeerOp(4096, PeerOp::AddNeigh(e)) if e.ip == ip("10.255.0.8"))),
        "synced again: {:?}",
        net.calls()
    );
    assert_eq!(
        mesh.rules().unwrap().ports[0].backends,
        [ip("10.255.0.7"), ip("10.255.0.8")]
    );
}

#[tokio::test]
async fn the_mesh_should_drop_a_backend_without_waiting_for_task_setups_and_add_one_after_its_peers(
) {
    let (net, mesh, network) = node3_on_ingress(&[node_obj("node-2", "198.18.0.2", "10.255.0.4")]);
    // `pub` on node 2, published on 9091; node 3 (this one) runs none of its tasks.
    let set = |tasks: &[(&str, bool)]| set_pub(&network, tasks);
    let backends = || mesh.rules().unwrap().ports[0].backends.clone();
    set(&[("10.255.0.5", true), ("10.255.0.6", true)]);
    let mut applied = Applied::default();
    network.refresh_mesh(&mut applied.mesh).await;
    assert_eq!(backends(), [ip("10.255.0.5"), ip("10.255.0.6")]);

    // Task starts and stops hold the overlays lock (an overlay removal exclusively, as
    // here); Endpoints changes never wait for it once the node is on ingress, peer syncs
    // included.
    let setups = network.overlays.write().await;
    set(&[("10.255.0.5", true), ("10.255.0.6", false)]);
    without_waiting(
        network.refresh_mesh(&mut applied.mesh),
        "a withdrawal does not wait for task setups",
    )
    .await;
    assert_eq!(backends(), [ip("10.255.0.5")]);
    set(&[
        ("10.255.0.5", true),
        ("10.255.0.6", false),
        ("10.255.0.9", false),
    ]);
    without_waiting(
        network.refresh_mesh(&mut applied.mesh),
        "a peer sync does not wait for task setups",
    )
    .await;
    assert!(net.calls().iter().any(|c| matches!(c,
        NetCall::ApplyPeerOp(4096, PeerOp::AddNeigh(e)) if e.ip == ip("10.255.0.9"))));
    drop(setups);

    // A new task while another peer sync holds the peers lock: the drained ones leave at
    // once, the new one waits for its peer entries.
    let held = network.peers.lock().await;
    net.clear_calls();
    set(&[
        ("10.255.0.5", false),
        ("10.255.0.6", false),
        ("10.255.0.9", false),
        ("10.255.0.7", true),
    ]);
    let refresh = network.refresh_mesh(&mut applied.mesh);
    tokio::pin!(refresh);
    still_waiting(refresh.as_mut()).await;
    assert_eq!(
        backends(),
        [ip("10.255.0.5")],
        "kept: its only backend would be one not reachable yet"
    );
    set(&[
        ("10.255.0.5", true),
        ("10.255.0.6", false),
        ("10.255.0.9", false),
        ("10.255.0.7", true),
    ]);
    assert!(net.calls().is_empty(), "{:?}", net.calls());
    drop(held);
    refresh.await;
    assert!(net.calls().iter().any(|c| matches!(c,
        NetCall::ApplyPeerOp(4096, PeerOp::AddNeigh(e)) if e.ip == ip("10.255.0.7"))));
    assert_eq!(
        backends(),
        [ip("10.255.0.7")],
        "the Endpoints the peers were synced for"
    );
}

#[tokio::test]
async fn a_repair_should_withdraw_a_drained_backend_before_it_waits_for_task_setups() {
    let (net, mesh, network) = node3_on_ingress(&[]);
    let backends = || mesh.rules().unwrap().ports[0].backends.clone();
    set_pub(&network, &[("10.255.0.5", true), ("10.255.0.6", true)]);
    let mut applied = Applied::default();
    network.refresh_mesh(&mut applied.mesh).await;
    assert_eq!(backends(), [ip("10.255.0.5"), ip("10.255.0.6")]);

    // A full reconcile just finished; an overlay removal holds the overlays lock as a
    // backend is drained.
    applied.mesh.repair();
    let setups = network.overlays.write().await;
    net.clear_calls();
    set_pub(&network, &[("10.255.0.5", true), ("10.255.0.6", false)]);
    let refresh = network.refresh_mesh(&mut applied.mesh);
    tokio::pin!(refresh);
    still_waiting(refresh.as_mut()).await;
    assert_eq!(
        backends(),
        [ip("10.255.0.5")],
        "withdrawn before the repair waits for task setups"
    );
    assert!(net.calls().is_empty(), "{:?}", net.calls());
    drop(setups);
    refresh.await;
    assert!(
        net.calls()
            .iter()
            .any(|c| matches!(c, NetCall::EnsureOverlay(o) if o.vni == 4096)),
        "the ingress overlay ensured again: {:?}",
        net.calls()
    );
}

#[tokio::test]
async fn a_repair_should_write_the_gateway_again_and_spare_the_next_setups_doing_it() {
    let (net, _mesh, network) = node3_on_ingress(&[]);
    set_pub(&network, &[("10.255.0.5", true)]);
    let mut applied = Applied::default();
    let gateways = || {
        net.calls()
            .iter()
            .filter(|c| matches!(c, NetCall::EnsureGateway(_)))
            .count()
    };
    network.refresh_mesh(&mut applied.mesh).await;
    assert_eq!(gateways(), 1, "the mesh needs the gateway's ip_forward");
    net.clear_calls();
    network.refresh_mesh(&mut applied.mesh).await;
    assert_eq!(gateways(), 0, "nothing changed");

    // A full reconcile forgot what setups made, and asks for a repair. The egress table may
    // have been flushed while the bridge stayed, and no task may start to write it again.
    network.devices.lock().await.forget();
    applied.mesh.repair();
    net.fail("ensure_gateway");
    network.refresh_mesh(&mut applied.mesh).await;
    assert!(applied.mesh.repair.gateway, "still due after a failure");
    net.heal("ensure_gateway");
    net.clear_calls();
    network.refresh_mesh(&mut applied.mesh).await;
    assert_eq!(gateways(), 1, "{:?}", net.calls());
    assert!(!applied.mesh.repair.gateway);
    assert!(
        network.devices.lock().await.gateway,
        "recorded, so the next egress setup skips it"
    );
    net.clear_calls();
    network.refresh_mesh(&mut applied.mesh).await;
    assert_eq!(gateways(), 0);
}

#[tokio::test]
async fn a_repair_should_apply_each_mesh_step_again_until_it_succeeds() {
    let (net, mesh, network) = node3_on_ingress(&[node_obj("node-2", "198.18.0.2", "10.255.0.4")]);
    set_pub(&network, &[("10.255.0.5", true)]);
    let mut applied = Applied::default();
    network.refresh_mesh(&mut applied.mesh).await;
    let (programs, health) = (mesh.programs(), mesh.health());
    // Nothing changed: nothing is applied again.
    net.clear_calls();
    network.refresh_mesh(&mut applied.mesh).await;
    assert!(net.calls().is_empty(), "{:?}", net.calls());
    assert_eq!(mesh.programs(), programs);

    // A repair whose overlay step fails: the other steps are applied again, and only the
    // failed one is tried again at the next refresh, until it succeeds.
    applied.mesh.repair();
    net.fail("ensure_overlay");
    network.refresh_mesh(&mut applied.mesh).await;
    let calls = net.calls();
    assert!(
        calls.contains(&NetCall::ListPeerEntries(4096)),
        "the peers synced again: {calls:?}"
    );
    assert_eq!(mesh.programs(), programs + 1, "the table programmed again");
    let overlay_due = mesh_state::Repair {
        overlay: true,
        ..Default::default()
    };
    assert_eq!(applied.mesh.repair, overlay_due);
    net.clear_calls();
    network.refresh_mesh(&mut applied.mesh).await;
    let ensured = |calls: &[NetCall]| {
        calls
            .iter()
            .any(|c| matches!(c, NetCall::EnsureOverlay(o) if o.vni == 4096))
    };
    let calls = net.calls();
    assert!(ensured(&calls), "{calls:?}");
    assert!(
        !calls.contains(&NetCall::ListPeerEntries(4096)),
        "only the failed step again: {calls:?}"
    );
    assert_eq!(mesh.programs(), programs + 1);
    assert_eq!(applied.mesh.repair, overlay_due);
    net.heal("ensure_overlay");
    net.clear_calls();
    network.refresh_mesh(&mut applied.mesh).await;
    assert!(ensured(&net.calls()), "{:?}", net.calls());
    assert_eq!(applied.mesh.repair, mesh_state::Repair::default(), "done");
    assert_eq!(mesh.health(), health);
    net.clear_calls();
    network.refresh_mesh(&mut applied.mesh).await;
    assert!(net.calls().is_empty(), "{:?}", net.calls());
    assert_eq!(mesh.programs(), programs + 1);
}

#[tokio::test]
async fn the_mesh_should_join_ingress_with_the_node_address_and_program_published_ports() {
    let net = Arc::new(RecordingNetwork::new(PREFIX));
    let runtime = Arc::new(FakeRuntime::new());
    let mesh = Arc::new(crate::mesh::RecordingMesh::default());
    let network = Arc::new(
        NodeNetwork::new(
            net.clone(),
            Arc::new(RecordingDns::default()),
            Arc::new(RecordingDns::default()),
            Arc::new(RecordingLb::default()),
            RecordStore::new(),
            Ipv4Addr::new(198, 18, 0, 1),
            "/run/netns",
            PREFIX,
        )
        .with_mesh("node-1", mesh.clone()),
    );
    let tasks = ContainerTasks::new(runtime.clone(), "node-1").with_network(network.clone());
    let mut ingress = overlay("ingress", 4096, false);
    ingress.status.subnet = Some("10.255.0.0/16".into());
    network.set_networks([ingress, overlay("appnet", 4097, false)]);
    network.set_nodes([
        node_obj("node-1", "198.18.0.1", "10.255.0.3"),
        node_obj("node-2", "198.18.0.2", "10.255.0.4"),
        node_obj("node-3", "198.18.0.3", ""),
    ]);
    let mut pub_eps = endpoints(
        "ingress",
        "pub",
        "10.255.0.2",
        &[("10.255.0.5", "198.18.0.2")],
    );
    pub_eps.spec.ports = vec![PortConfig {
        published: 9091,
        target: 80,
        ..Default::default()
    }];
    network.set_endpoints([pub_eps]);
    let mut applied = Applied::default();
    network.refresh_mesh(&mut applied.mesh).await;

    // Every node joins ingress with its own address, even without a task.
    let calls = net.calls();
    let with_addr = OverlaySpec {
        vni: 4096,
        mtu: None,
        address: Some("10.255.0.3/16".parse().unwrap()),
    };
    assert!(
        calls.contains(&NetCall::EnsureOverlay(with_addr.clone())),
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|c| matches!(c, NetCall::EnsureGateway(_))),
        "ip_forward comes with the gateway: {calls:?}"
    );
    // Peers: the remote task and node-2's ingress address (node-3 has none yet).
    let neigh: BTreeSet<Ipv4Addr> = calls
        .iter()
        .filter_map(|c| match c {
            NetCall::ApplyPeerOp(4096, PeerOp::AddNeigh(e)) => Some(e.ip),
            _ => None,
        })
        .collect();
    assert_eq!(
        neigh,
        BTreeSet::from([Ipv4Addr::new(10, 255, 0, 4), Ipv4Addr::new(10, 255, 0, 5)])
    );
    let rules = mesh.rules().expect("programmed");
    assert_eq!(rules.node_address, Some(Ipv4Addr::new(198, 18, 0, 1)));
    assert_eq!(
        rules.ingress,
        Some(("shb-4096".to_string(), Ipv4Addr::new(10, 255, 0, 3)))
    );
    assert_eq!(rules.ports.len(), 1);
    assert_eq!(
        (rules.ports[0].published, rules.ports[0].target),
        (9091, 80)
    );
    assert_eq!(rules.ports[0].backends, [Ipv4Addr::new(10, 255, 0, 5)]);

    // Nothing changed: no work.
    net.clear_calls();
    network.refresh_mesh(&mut applied.mesh).await;
    assert!(net.calls().is_empty(), "{:?}", net.calls());
    assert_eq!(mesh.programs(), 1);

    // A local task with a host-mode port: its gateway address; the ingress overlay a
    // task joins keeps the node's address.
    let mut t = task("h1", &[("ingress", "10.255.0.9")]);
    t.spec.ports = vec![PortConfig {
        published: 8080,
        target: 80,
        mode: PublishMode::Host,
        ..Default::default()
    }];
    tasks.start_task(&t).await.unwrap();
    assert!(!net
        .calls()
        .iter()
        .any(|c| matches!(c, NetCall::EnsureOverlay(o) if o.vni == 4096 && o.address.is_none())));
    network.refresh_mesh(&mut applied.mesh).await;
    let rules = mesh.rules().unwrap();
    let host = rules
        .ports
        .iter()
        .find(|p| p.published == 8080)
        .expect("host port");
    assert_eq!(host.mode, PublishMode::Host);
    assert_eq!(host.backends.len(), 1);
    assert!(host.backends[0].octets()[..2] == [172, 18], "{host:?}");

    // The service goes: its port goes, node-2 stays a peer; the task leaving takes its
    // host port, and the ingress overlay stays.
    network.set_endpoints([]);
    tasks.remove_task("h1").await.unwrap();
    assert!(!net.calls().contains(&NetCall::RemoveOverlay(4096)));
    network.refresh_mesh(&mut applied.mesh).await;
    assert!(mesh.rules().unwrap().ports.is_empty());
    let dels: Vec<Ipv4Addr> = net
        .calls()
        .iter()
        .filter_map(|c| match c {
            NetCall::ApplyPeerOp(4096, PeerOp::DelNeigh(e)) => Some(e.ip),
            _ => None,
        })
        .collect();
    assert_eq!(dels, [Ipv4Addr::new(10, 255, 0, 5)]);
}

#[tokio::test]
async fn a_task_on_ingress_should_see_neither_its_names_nor_its_vips() {
    let n = node();
    let mut ingress = overlay("ingress", 4096, false);
    ingress.status.subnet = Some("10.255.0.0/16".into());
    n.network
        .set_networks([ingress, overlay("appnet", 4097, false)]);
    // `web` is on ingress only (it publishes a port); `api` is on appnet.
    n.network.set_endpoints([
        endpoints(
            "ingress",
            "web",
            "10.255.0.2",
            &[("10.255.0.5", "198.18.0.2")],
        ),
        endpoints("appnet", "api", "10.0.1.2", &[("10.0.1.7", "198.18.0.2")]),
    ]);
    n.tasks
        .start_task(&task(
            "t1",
            &[("ingress", "10.255.0.9"), ("appnet", "10.0.1.5")],
        ))
        .await
        .unwrap();
    let mut applied = Applied::default();
    n.network.refresh(&mut applied.endpoints).await;

    // The DNS server's view: appnet only.
    let (_, networks) = n.dns.server("t1").expect("a DNS server");
    assert_eq!(networks, ["appnet"]);
    let view = n.network.records().view(&networks);
    assert_eq!(
        view.answer("api", QueryKind::A),
        crate::dns::Answer::Addrs(vec!["10.0.1.2".parse().unwrap()])
    );
    assert_eq!(
        n.network
            .records()
            .view(&["ingress", "appnet"])
            .answer("web", QueryKind::A),
        crate::dns::Answer::NxDomain
    );
    // VIP rules: api's VIP, not web's ingress VIP.
    let entries = n.lb.entries(&netns("t1")).expect("VIP rules");
    assert!(!entries.is_empty());
    assert!(
        entries.iter().all(|e| e.vip == Ipv4Addr::new(10, 0, 1, 2)),
        "{entries:?}"
    );
    // The ingress overlay's peers are still synced (the mesh's backends).
    assert!(n.net.calls().iter().any(|c| matches!(c,
        NetCall::ApplyPeerOp(4096, PeerOp::AddNeigh(e)) if e.ip == Ipv4Addr::new(10, 255, 0, 5))));
}

/// The (protocol, port)s the mesh's last document dispatches on.
fn programmed(mesh: &crate::mesh::RecordingMesh) -> Vec<String> {
    let rules = mesh.rules().expect("programmed");
    let doc = crate::mesh::ruleset(&rules);
    let elems = doc["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| o.pointer("/add/map/elem"))
        .cloned()
        .unwrap_or_default();
    elems
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    format!(
                        "{}/{}",
                        e[0]["concat"][1],
                        e[0]["concat"][0].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_mesh_should_never_program_a_reserved_port() {
    use shoal_api_types::service::Protocol;
    use shoal_api_types::settings::{ClusterSettingsSpec, ReservedPort, CLUSTER_SETTINGS};
    let net = Arc::new(RecordingNetwork::new(PREFIX));
    let runtime = Arc::new(FakeRuntime::new());
    let mesh = Arc::new(crate::mesh::RecordingMesh::default());
    let network = Arc::new(
        NodeNetwork::new(
            net.clone(),
            Arc::new(RecordingDns::default()),
            Arc::new(RecordingDns::default()),
            Arc::new(RecordingLb::default()),
            RecordStore::new(),
            Ipv4Addr::new(198, 18, 0, 1),
            "/run/netns",
            PREFIX,
        )
        .with_mesh("node-1", mesh.clone())
        // The agent's own listen port.
        .with_reserved_ports([ReservedPort::tcp(7801)]),
    );
    let tasks = ContainerTasks::new(runtime.clone(), "node-1").with_network(network.clone());
    let mut ingress = overlay("ingress", 4096, false);
    ingress.status.subnet = Some("10.255.0.0/16".into());
    network.set_networks([ingress]);
    network.set_nodes([node_obj("node-1", "198.18.0.1", "10.255.0.3")]);
    // Services stored before the ports were reserved (the API refuses them now).
    let mut pub_eps = endpoints(
        "ingress",
        "pub",
        "10.255.0.2",
        &[("10.255.0.5", "198.18.0.2")],
    );
    let port = |published: u32, protocol| PortConfig {
        published,
        target: 80,
        protocol,
        ..Default::default()
    };
    pub_eps.spec.ports = vec![
        port(8080, Protocol::Tcp),
        port(4789, Protocol::Udp),
        port(2379, Protocol::Tcp),
        port(7801, Protocol::Tcp),
        port(23790, Protocol::Tcp),
    ];
    network.set_endpoints([pub_eps]);
    let mut t = task("h1", &[("ingress", "10.255.0.9")]);
    t.spec.ports = vec![PortConfig {
        published: 22,
        target: 22,
        mode: PublishMode::Host,
        ..Default::default()
    }];
    tasks.start_task(&t).await.unwrap();
    let mut applied = Applied::default();

    // Settings not listed yet: the defaults, and the node's own ports.
    network.refresh_mesh(&mut applied.mesh).await;
    assert_eq!(programmed(&mesh), ["8080/tcp", "23790/tcp"]);

    // The cluster reserves 23790/tcp and no longer 22 or 2379: the node's own ports stay
    // reserved all the same.
    network.set_settings([shoal_api_types::ClusterSettings::new(
        CLUSTER_SETTINGS,
        ClusterSettingsSpec::with_reserved_ports([ReservedPort::tcp(23790)]),
    )]);
    network.refresh_mesh(&mut applied.mesh).await;
    assert_eq!(programmed(&mesh), ["22/tcp", "2379/tcp", "8080/tcp"]);

    // The settings object missing altogether: the same.
    network.set_settings([]);
    network.refresh_mesh(&mut applied.mesh).await;
    assert_eq!(programmed(&mesh), ["8080/tcp", "23790/tcp"]);
    let skipped: Vec<String> = mesh
        .rules()
        .unwrap()
        .skipped()
        .map(|p| p.key().to_string())
        .collect();
    assert!(skipped.contains(&"4789/udp".to_string()), "{skipped:?}");
    assert!(skipped.contains(&"7801/tcp".to_string()), "{skipped:?}");
}

#[tokio::test]
async fn the_node_policy_should_follow_the_nodes_and_be_reprogrammed_after_a_reconcile() {
    let net = Arc::new(RecordingNetwork::new(PREFIX));
    let network = mesh_node(
        &net,
        "node-1",
        Ipv4Addr::new(198, 18, 0, 1),
        Arc::new(crate::mesh::RecordingMesh::default()),
    )
    .with_node_policy();
    assert!(network.caches().nodes.is_some(), "the agent watches Nodes");
    let mut ingress = overlay("ingress", 4096, false);
    ingress.status.subnet = Some("10.255.0.0/16".into());
    network.set_networks([ingress]);
    network.set_endpoints([]);
    let programmed = |net: &RecordingNetwork| -> Vec<crate::net::NodePolicy> {
        net.calls()
            .into_iter()
            .filter_map(|c| match c {
                NetCall::ProgramNodePolicy(p) => Some(p),
                _ => None,
            })
            .collect()
    };
    let mut applied = Applied::default();
    // Nodes not listed yet: nothing is programmed (an empty set would cut every overlay).
    network.refresh_node_policy(&mut applied).await;
    assert!(programmed(&net).is_empty());

    network.set_nodes([
        node_obj("node-1", "198.18.0.1", "10.255.0.3"),
        node_obj("node-2", "198.18.0.2", "10.255.0.4"),
        node_obj("node-3", "not-an-address", ""),
    ]);
    network.refresh_node_policy(&mut applied).await;
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    assert_eq!(
        programmed(&net),
        [crate::net::NodePolicy {
            vxlan_peers: BTreeSet::from([ip("198.18.0.1"), ip("198.18.0.2")]),
            ingress_bridge: Some("shb-4096".into()),
        }]
    );
    // Unchanged: no work.
    network.refresh_node_policy(&mut applied).await;
    assert_eq!(programmed(&net).len(), 1);

    // A node joins: the set grows; a node leaves: it shrinks.
    network.set_nodes([
        node_obj("node-1", "198.18.0.1", "10.255.0.3"),
        node_obj("node-2", "198.18.0.2", "10.255.0.4"),
        node_obj("node-4", "198.18.0.4", ""),
    ]);
    network.refresh_node_policy(&mut applied).await;
    network.set_nodes([node_obj("node-1", "198.18.0.1", "10.255.0.3")]);
    network.refresh_node_policy(&mut applied).await;
    let all = programmed(&net);
    assert_eq!(all.len(), 3);
    assert!(all[1].vxlan_peers.contains(&ip("198.18.0.4")));
    assert_eq!(all[2].vxlan_peers, BTreeSet::from([ip("198.18.0.1")]));

    // A failure is retried at the next refresh; a full reconcile (restart, resync) forgets
    // what was applied, so the table is programmed again.
    net.fail("program_node_policy");
    network.set_nodes([node_obj("node-1", "198.18.0.1", "")]);
    network.refresh_node_policy(&mut applied).await;
    net.heal("program_node_policy");
    network.refresh_node_policy(&mut applied).await;
    assert_eq!(programmed(&net).len(), 5);
    assert_eq!(programmed(&net)[4].ingress_bridge, None, "left ingress");
    applied.node_policy = None;
    network.refresh_node_policy(&mut applied).await;
    assert_eq!(programmed(&net).len(), 6);
}

#[tokio::test]
async fn without_the_node_policy_nothing_is_programmed() {
    let n = node();
    assert!(n.network.caches().nodes.is_none());
    n.network
        .set_nodes([node_obj("node-1", "198.18.0.1", "10.255.0.3")]);
    let mut applied = Applied::default();
    n.network.refresh_node_policy(&mut applied).await;
    assert!(n.net.calls().is_empty(), "{:?}", n.net.calls());
}

/// A [`LoadBalancer`] whose `program` and `update` wait for a permit once closed, and say when one
/// is waiting.
struct GatedLb {
    inner: RecordingLb,
    closed: std::sync::atomic::AtomicBool,
    waiting: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl LoadBalancer for GatedLb {
    async fn program(&self, netns: &Path, entries: &[VipEntry]) -> Result<(), crate::lb::LbError> {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            self.waiting.notify_one();
            let _permit = self.release.acquire().await;
        }
        self.inner.program(netns, entries).await
    }
    async fn update(
        &self,
        netns: &Path,
        from: &[VipEntry],
        to: &[VipEntry],
    ) -> Result<(), crate::lb::LbError> {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            self.waiting.notify_one();
            let _permit = self.release.acquire().await;
        }
        self.inner.update(netns, from, to).await
    }
    async fn programmed(&self, netns: &Path) -> Result<Option<Vec<VipEntry>>, crate::lb::LbError> {
        self.inner.programmed(netns).await
    }
    async fn remove(&self, netns: &Path) -> Result<(), crate::lb::LbError> {
        self.inner.remove(netns).await
    }
}

#[tokio::test]
async fn a_start_should_not_wait_for_the_reconcile_to_program_other_tasks() {
    let runtime = Arc::new(FakeRuntime::new());
    let lb = Arc::new(GatedLb {
        inner: RecordingLb::default(),
        closed: Default::default(),
        waiting: Default::default(),
        release: tokio::sync::Semaphore::new(0),
    });
    let network = Arc::new(NodeNetwork::new(
        Arc::new(RecordingNetwork::new(PREFIX)),
        Arc::new(RecordingDns::default()),
        Arc::new(RecordingDns::default()),
        lb.clone(),
        RecordStore::new(),
        Ipv4Addr::new(198, 18, 0, 1),
        "/run/netns",
        PREFIX,
    ));
    network.set_networks([overlay("appnet", 4097, false)]);
    network.set_endpoints([]);
    let tasks = ContainerTasks::new(runtime.clone(), "node-1").with_network(network.clone());
    tasks
        .start_task(&task("t1", &[("appnet", "10.0.1.5")]))
        .await
        .unwrap();
    // New endpoints: the reconcile reprograms t1's VIP table, and that is slow.
    network.set_endpoints([endpoints(
        "appnet",
        "api",
        "10.0.1.2",
        &[("10.0.1.5", "198.18.0.1")],
    )]);
    lb.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    let waiting = lb.waiting.notified();
    let (net, rt) = (network.clone(), runtime.clone());
    let reconcile = tokio::spawn(async move {
        net.reconcile(rt.as_ref() as &dyn ContainerRuntime, &BTreeMap::new())
            .await
    });
    waiting.await;
    // The reconcile is busy with t1's VIP table: a start may take the shared side.
    assert!(
        network.busy.try_read().is_ok(),
        "starts would wait for the reconcile's VIP programming"
    );
    lb.release.add_permits(1);
    assert!(reconcile.await.unwrap());
}

#[tokio::test]
async fn a_local_traffic_port_should_go_to_the_nodes_ready_tasks_and_report_them_on_its_health_port(
) {
    let net = Arc::new(RecordingNetwork::new(PREFIX));
    let runtime = Arc::new(FakeRuntime::new());
    let mesh = Arc::new(crate::mesh::RecordingMesh::default());
    let network = Arc::new(
        NodeNetwork::new(
            net.clone(),
            Arc::new(RecordingDns::default()),
            Arc::new(RecordingDns::default()),
            Arc::new(RecordingLb::default()),
            RecordStore::new(),
            Ipv4Addr::new(198, 18, 0, 1),
            "/run/netns",
            PREFIX,
        )
        .with_mesh("node-1", mesh.clone()),
    );
    let tasks = ContainerTasks::new(runtime.clone(), "node-1").with_network(network.clone());
    let mut ingress = overlay("ingress", 4096, false);
    ingress.status.subnet = Some("10.255.0.0/16".into());
    network.set_networks([ingress]);
    network.set_nodes([
        node_obj("node-1", "198.18.0.1", "10.255.0.3"),
        node_obj("node-2", "198.18.0.2", "10.255.0.4"),
    ]);
    let eps = |local_ready: bool| {
        let mut e = EndpointsSpec::vip("ingress", "loc", "10.255.0.2")
            .tasks([
                EndpointTask::new("loc.1", "10.255.0.9")
                    .id("l1")
                    .on("198.18.0.1")
                    .ready(local_ready),
                EndpointTask::new("loc.2", "10.255.0.10")
                    .id("l2")
                    .on("198.18.0.2"),
            ])
            .object();
        e.spec.ports = vec![PortConfig {
            published: 8080,
            target: 80,
            traffic: shoal_api_types::TrafficPolicy::Local,
            health_port: Some(31001),
            ..Default::default()
        }];
        e
    };
    network.set_endpoints([eps(true)]);
    tasks
        .start_task(&task("l1", &[("ingress", "10.255.0.9")]))
        .await
        .unwrap();
    let mut applied = Applied::default();
    network.refresh_mesh(&mut applied.mesh).await;
    let rules = mesh.rules().expect("programmed");
    let port = rules.ports.iter().find(|p| p.published == 8080).unwrap();
    assert_eq!(port.backends.len(), 1, "only the local task: {port:?}");
    assert!(
        port.backends[0].octets()[..2] == [172, 18],
        "at its gateway-bridge address, not an ingress IP: {port:?}"
    );
    assert_eq!(
        mesh.health(),
        Some((Ipv4Addr::new(198, 18, 0, 1), BTreeMap::from([(31001, 1)])))
    );

    // The local task is not ready: the node refuses and its health port says 503 (0).
    network.set_endpoints([eps(false)]);
    network.refresh_mesh(&mut applied.mesh).await;
    let rules = mesh.rules().unwrap();
    assert!(rules
        .ports
        .iter()
        .find(|p| p.published == 8080)
        .unwrap()
        .backends
        .is_empty());
    assert_eq!(mesh.health().unwrap().1, BTreeMap::from([(31001, 0)]));

    // The service goes: no health port is served any more.
    network.set_endpoints([]);
    network.refresh_mesh(&mut applied.mesh).await;
    assert_eq!(mesh.health().unwrap().1, BTreeMap::new());
}
