//! Node failure: the tasks of a dead node are replaced on the others, each slot keeps
//! exactly one live task, and the replacements run once the node's lease is gone (waited
//! for up to the TTL + 5 s; how fast is figure 3 of `shoal-bench`, not a test: a timed
//! bound fails on a loaded machine). A node that comes back gets nothing back.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use shoal_api_types::{NodeSpec, NodeState, TaskState};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(2);
const T: Duration = Duration::from_secs(15);

async fn assert_one_live_task_per_slot(store: &shoal_store::Store, service: &str, n: u64) {
    let mut per_slot: BTreeMap<u64, usize> = BTreeMap::new();
    for t in live(store, service).await {
        *per_slot.entry(t.spec.slot.unwrap()).or_default() += 1;
    }
    assert_eq!(
        per_slot,
        (1..=n).map(|s| (s, 1)).collect::<BTreeMap<_, _>>()
    );
}

async fn replace_tasks_of_a_dead_node(crash: bool) {
    let (_etcd, store) = etcd().await;
    let mut nodes = nodes(&store, 3, TTL).await;
    let controller = Controller::start(store.clone(), config());
    network(&store, "appnet", None).await;
    let spec = shoal_api_types::ServiceSpec {
        networks: vec![shoal_api_types::NetworkAttachmentConfig {
            name: "appnet".into(),
            aliases: vec![],
        }],
        ..replicated(6)
    };
    service(&store, "api", spec).await;
    let before = wait_running(&store, "api", 6, T).await;
    let victims: Vec<String> = before
        .iter()
        .filter(|t| t.spec.node.as_deref() == Some("node-1"))
        .map(|t| t.metadata.name.clone())
        .collect();
    assert_eq!(victims.len(), 2);

    let killed_at = Instant::now();
    let node = nodes.remove(0);
    if crash {
        node.crash();
    } else {
        node.kill().await;
    }
    let after = wait_for(
        TTL + Duration::from_secs(5),
        "replacements running",
        || async {
            let r = running(&store, "api").await;
            (r.len() == 6 && r.iter().all(|t| t.spec.node.as_deref() != Some("node-1")))
                .then_some(r)
        },
    )
    .await;
    let took = killed_at.elapsed();
    eprintln!(
        "replacements running {took:?} after the node was {}",
        if crash { "crashed" } else { "killed" }
    );
    assert_eq!(
        per_node(&after),
        BTreeMap::from([("node-2".into(), 3), ("node-3".into(), 3)])
    );
    assert_one_live_task_per_slot(&store, "api", 6).await;

    // The old tasks are orphaned, not moved; the node is down.
    let all = service_tasks(&store, "api").await;
    for v in &victims {
        let t = all
            .iter()
            .find(|t| t.metadata.name == *v)
            .expect("history kept");
        assert_eq!(t.status.state, TaskState::Orphaned);
        assert_eq!(t.spec.desired_state, TaskState::Shutdown);
    }
    let n1 = store
        .get_named::<NodeSpec>("node-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n1.status.state, NodeState::Down);
    // Addresses stay unique.
    let mut ips: Vec<String> = after
        .iter()
        .map(|t| t.spec.attachments[0].address.clone())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 6);

    // The node comes back: ready again, but its old tasks stay gone.
    let _back = HollowNode::start(&store, "node-1", 1, &[], TTL).await;
    wait_for(T, "node-1 ready", || async {
        let n = store
            .get_named::<NodeSpec>("node-1")
            .await
            .unwrap()
            .unwrap();
        (n.status.state == NodeState::Ready).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        per_node(&running(&store, "api").await),
        BTreeMap::from([("node-2".into(), 3), ("node-3".into(), 3)])
    );
    assert_one_live_task_per_slot(&store, "api", 6).await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_node_tasks_should_be_replaced_on_the_other_nodes() {
    replace_tasks_of_a_dead_node(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashed_node_tasks_should_be_replaced_once_the_lease_lapses() {
    replace_tasks_of_a_dead_node(true).await;
}
