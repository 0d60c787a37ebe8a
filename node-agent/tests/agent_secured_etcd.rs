//! A real (hollow) agent against a secured etcd with nothing but its node's role
//! (`store::auth::ensure_node_user`): registration, the lease, the task watch and status
//! reports all fit inside the node's permissions; so does a hollow fleet inside the fleet's.

mod agent_support;

use std::net::Ipv4Addr;
use std::sync::Arc;

use agent_support::*;
use shoal_api_types::keys::FLEET_USER;
use shoal_api_types::{NodeState, TaskState};
use shoal_node_agent::hollow::{FleetConfig, HollowFleet, HollowRuntime};
use shoal_store::testing::TestEtcd;
use shoal_store::{auth, Store};

#[tokio::test]
async fn an_agent_with_only_its_node_role_should_register_and_run_its_tasks() {
    let etcd = TestEtcd::start_secured().await;
    let ctl = etcd.store().await;
    auth::ensure_node_user(&ctl, "node-1").await.unwrap();
    let node_store = Store::connect(&etcd.connect_as("node-1")).await.unwrap();
    let runtime = Arc::new(HollowRuntime::new());
    let agent = spawn(&node_store, config("node-1"), &runtime);
    assert!(agent.registered().await.is_some());
    eventually("node-1 ready", || async {
        let n = node(&ctl, "node-1").await?;
        (n.status.state == NodeState::Ready).then_some(())
    })
    .await;
    assert!(liveness_key(&ctl, "node-1").await.is_some());

    assign_task(&ctl, "node-1", "t1", TaskState::Running).await;
    task_in_state(&ctl, "node-1", "t1", TaskState::Running).await;
    change_task(&ctl, "node-1", "t1", |t| {
        t.spec.desired_state = TaskState::Shutdown;
        true
    })
    .await;
    task_in_state(&ctl, "node-1", "t1", TaskState::Shutdown).await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hollow_fleet_with_the_fleet_role_should_register_and_run_tasks() {
    let etcd = TestEtcd::start_secured().await;
    let ctl = etcd.store().await;
    auth::ensure_fleet_user(&ctl).await.unwrap();
    let fleet_store = Store::connect(&etcd.connect_as(FLEET_USER)).await.unwrap();
    let fleet = HollowFleet::spawn(
        &fleet_store,
        &FleetConfig {
            count: 3,
            name_prefix: "hollow-".into(),
            first_index: 1,
            first_address: Ipv4Addr::new(198, 19, 0, 1),
            agent: config("template"),
        },
    )
    .expect("valid fleet");
    assert_eq!(fleet.registered().await.iter().flatten().count(), 3);
    assign_task(&ctl, "hollow-2", "t1", TaskState::Running).await;
    task_in_state(&ctl, "hollow-2", "t1", TaskState::Running).await;
    fleet.shutdown().await;
}
