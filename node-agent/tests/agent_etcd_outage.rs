//! The agent across an etcd outage longer than its lease: it registers again with a new
//! lease and its task watch resumes.

mod agent_support;

use std::sync::Arc;

use agent_support::*;
use shoal_api_types::{NodeState, TaskState};
use shoal_node_agent::hollow::HollowRuntime;
use shoal_store::testing::TestEtcd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_etcd_outage_longer_than_the_lease_the_agent_should_register_again_and_keep_converging(
) {
    let mut etcd = TestEtcd::private().await;
    let store = etcd.store().await;
    let runtime = Arc::new(HollowRuntime::new());
    let agent = spawn(&store, config("node-1"), &runtime);
    let first = agent.registered().await.unwrap();
    assign_task(&store, "node-1", "before", TaskState::Running).await;
    task_in_state(&store, "node-1", "before", TaskState::Running).await;

    etcd.stop();
    eventually("the agent to notice its lease is lost", || async {
        agent.lease().is_none().then_some(())
    })
    .await;
    etcd.resume().await;

    let second = eventually("a new lease", || async {
        agent.lease().filter(|l| l.id != first.id)
    })
    .await;
    eventually("the liveness key on the new lease", || async {
        liveness_key(&store, "node-1")
            .await
            .filter(|(_, l)| *l == second.id)
    })
    .await;
    eventually("the node ready with the new lease", || async {
        node(&store, "node-1").await.filter(|n| {
            n.status.state == NodeState::Ready && n.status.lease == format!("{:x}", second.id)
        })
    })
    .await;
    // The watch resumed: a task assigned now runs, and the one from before was left alone.
    assign_task(&store, "node-1", "after", TaskState::Running).await;
    task_in_state(&store, "node-1", "after", TaskState::Running).await;
    assert_eq!(
        task(&store, "node-1", "before").await.unwrap().status.state,
        TaskState::Running
    );
    assert_eq!(
        runtime.running(),
        vec!["after".to_string(), "before".into()]
    );
    agent.shutdown().await;
}
