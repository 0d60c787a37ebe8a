//! Unit tests of the node's audit ([`NodeNetwork::check_once`], [`NodeCheck`]) against the
//! recording fakes: converged state has no drift; each kind of damage is named.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_api_types::check::DriftKind;
use shoal_api_types::{Task, TaskState};
use tokio::sync::watch;

use super::check::NodeCheck;
use super::tests::{endpoints, netns, node, task, Node};
use crate::agent::containers::LABEL_TASK;
use crate::agent::task_runtime::TaskRuntime;
use crate::lb::{LoadBalancer, VipEntry};
use crate::net::names::mac_for_ip;
use crate::net::{FdbEntry, Network, PeerOp};
use crate::runtime::{ContainerRuntime, ContainerSpec, LABEL_MANAGED};

/// A node running t1 on appnet with one remote peer, reconciled, its desired tasks known.
async fn converged() -> (
    Node,
    BTreeMap<String, Task>,
    watch::Sender<crate::agent::desired::DesiredTasks>,
) {
    let n = node();
    n.network.set_endpoints([endpoints(
        "appnet",
        "api",
        "10.0.1.2",
        &[("10.0.1.5", "198.18.0.1"), ("10.0.1.7", "198.18.0.2")],
    )]);
    let mut t1 = task("t1", &[("appnet", "10.0.1.5")]);
    n.tasks.start_task(&t1).await.unwrap();
    t1.status.state = TaskState::Running;
    t1.spec.desired_state = TaskState::Running;
    let desired = BTreeMap::from([("t1".to_string(), t1)]);
    assert!(
        n.network
            .reconcile(n.runtime.as_ref() as &dyn ContainerRuntime, &desired)
            .await
    );
    let (tx, rx) = watch::channel(Some(desired.clone()));
    n.network.remember_desired(rx);
    (n, desired, tx)
}

#[tokio::test]
async fn a_converged_node_should_have_no_drift() {
    let (n, _, _tx) = converged().await;
    let drift = n
        .network
        .check_once("node-1", n.runtime.as_ref())
        .await
        .unwrap();
    assert_eq!(drift, vec![]);
}

#[tokio::test]
async fn a_node_should_not_be_checked_before_its_tasks_are_listed() {
    let n = node();
    let e = n
        .network
        .check_once("node-1", n.runtime.as_ref())
        .await
        .unwrap_err();
    assert!(e.contains("not listed its tasks"), "{e}");
}

#[tokio::test]
async fn a_missing_fdb_entry_should_be_named_with_its_network() {
    let (n, _, _tx) = converged().await;
    let remote = "10.0.1.7".parse().unwrap();
    n.net
        .apply_peer_op(
            4097,
            &PeerOp::DelFdb(FdbEntry {
                mac: mac_for_ip(remote),
                node: "198.18.0.2".parse().unwrap(),
            }),
        )
        .await
        .unwrap();
    let drift = n
        .network
        .check_once("node-1", n.runtime.as_ref())
        .await
        .unwrap();
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(drift[0].kind, DriftKind::Fdb);
    assert_eq!(drift[0].object, "appnet (vni 4097)");
    assert_eq!(drift[0].expected, "02:42:0a:00:01:07 dst 198.18.0.2");
}

#[tokio::test]
async fn a_stale_vip_entry_and_a_missing_namespace_should_be_named() {
    let (n, mut desired, tx) = converged().await;
    let mut entries = n.lb.entries(&netns("t1")).unwrap();
    entries.push(VipEntry {
        vip: "10.0.1.99".parse().unwrap(),
        protocol: shoal_api_types::Protocol::Tcp,
        port: None,
        backends: vec![],
    });
    n.lb.program(&netns("t1"), &entries).await.unwrap();
    let drift = n
        .network
        .check_once("node-1", n.runtime.as_ref())
        .await
        .unwrap();
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(drift[0].kind, DriftKind::Nft);
    assert_eq!(drift[0].object, "t1 (shoal_lb)");
    assert_eq!(drift[0].found, "10.0.1.99/tcp → reject");

    // A second task whose container runs but whose namespace is gone.
    n.lb.program(&netns("t1"), &entries[..entries.len() - 1])
        .await
        .unwrap();
    let mut t2 = task("t2", &[("appnet", "10.0.1.6")]);
    n.tasks.start_task(&t2).await.unwrap();
    n.net.detach_task("t2").await.unwrap();
    t2.status.state = TaskState::Running;
    desired.insert("t2".into(), t2);
    tx.send_replace(Some(desired));
    let drift = n
        .network
        .check_once("node-1", n.runtime.as_ref())
        .await
        .unwrap();
    assert!(
        drift
            .iter()
            .any(|d| d.kind == DriftKind::Netns && d.object == "t2" && d.found == "nothing"),
        "{drift:?}"
    );
}

#[tokio::test]
async fn a_labelled_container_no_task_explains_should_be_reported_by_the_settled_check() {
    let (n, _, _tx) = converged().await;
    let spec = ContainerSpec {
        id: "intruder".into(),
        image: "localhost:5000/busybox:latest".into(),
        labels: BTreeMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_TASK.to_string(), "ghost".to_string()),
        ]),
        ..Default::default()
    };
    n.runtime.create(&spec).await.unwrap();
    n.runtime.start("intruder").await.unwrap();
    let check = NodeCheck::new("node-1", n.network.clone(), n.runtime.clone())
        .with_settle(Duration::from_millis(10));
    let report = check.run().await.unwrap();
    assert_eq!(report.nodes, ["node-1"]);
    assert_eq!(report.drift.len(), 1, "{report:?}");
    assert_eq!(report.drift[0].kind, DriftKind::Container);
    assert_eq!(report.drift[0].object, "ghost");
    assert_eq!(report.drift[0].found, "container intruder (running)");
}

#[tokio::test]
async fn the_agent_server_should_serve_the_report_and_say_when_it_has_none() {
    use crate::server::{AgentServer, ServerConfig, Transport};
    let (n, _, _tx) = converged().await;
    let config = ServerConfig {
        node: "node-1".into(),
        listen: "127.0.0.1:0".into(),
    };
    let with = AgentServer::bind(&config, None, Transport::Plain)
        .await
        .unwrap()
        .with_check(Arc::new(NodeCheck::new(
            "node-1",
            n.network.clone(),
            n.runtime.clone(),
        )));
    let without = AgentServer::bind(&config, None, Transport::Plain)
        .await
        .unwrap();
    let (a, b) = (with.local_addr(), without.local_addr());
    let (with, without) = (with.spawn(), without.spawn());
    let report: shoal_api_types::CheckReport = reqwest::get(format!("http://{a}/v1/check"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report.nodes, ["node-1"]);
    assert!(report.is_clean(), "{report:?}");
    let resp = reqwest::get(format!("http://{b}/v1/check")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 501);
    with.shutdown().await;
    without.shutdown().await;
}
