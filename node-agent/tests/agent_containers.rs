//! The agent with the containerd adapter over the runtime module's recording fake, against
//! a real etcd: what users see in task status for bad images, quick exits and stops.

mod agent_support;

use std::sync::Arc;

use agent_support::*;
use shoal_api_types::TaskState;
use shoal_node_agent::agent::{Agent, AgentHandle, ContainerTasks};
use shoal_node_agent::runtime::FakeRuntime;
use shoal_store::Store;

fn spawn_with(store: &Store, fake: &Arc<FakeRuntime>) -> AgentHandle {
    let runtime = Arc::new(ContainerTasks::new(fake.clone(), "node-1"));
    Agent::build(config("node-1"), store.clone(), runtime)
        .unwrap()
        .spawn()
}

async fn assign_image(store: &Store, id: &str, image: &str) {
    assign_task_with(store, "node-1", id, TaskState::Running, |t| {
        t.spec.image = image.into()
    })
    .await;
}

#[tokio::test]
async fn a_wrong_image_should_be_rejected_with_a_clear_error() {
    let (_etcd, store) = etcd().await;
    let fake = Arc::new(FakeRuntime::new());
    fake.set_image_missing("localhost:5000/nope:1");
    let agent = spawn_with(&store, &fake);
    assign_image(&store, "t1", "localhost:5000/nope:1").await;
    let t = task_in_state(&store, "node-1", "t1", TaskState::Rejected).await;
    assert_eq!(t.status.err, "image not found: localhost:5000/nope:1");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_registry_that_is_down_should_fail_the_task_with_the_reason() {
    let (_etcd, store) = etcd().await;
    let fake = Arc::new(FakeRuntime::new());
    fake.set_registry_down(true);
    let agent = spawn_with(&store, &fake);
    assign_image(&store, "t1", "localhost:5000/busybox:latest").await;
    let t = task_in_state(&store, "node-1", "t1", TaskState::Failed).await;
    assert!(t.status.err.contains("not reachable"), "{}", t.status.err);
    agent.shutdown().await;
}

#[tokio::test]
async fn an_image_that_exits_at_once_should_fail_with_its_exit_code() {
    let (_etcd, store) = etcd().await;
    let fake = Arc::new(FakeRuntime::new());
    fake.set_exit_on_start("localhost:5000/crash:1", 1);
    let agent = spawn_with(&store, &fake);
    assign_image(&store, "t1", "localhost:5000/crash:1").await;
    let t = task_in_state(&store, "node-1", "t1", TaskState::Failed).await;
    assert_eq!(t.status.exit_code, Some(1));
    assert_eq!(t.status.err, "task exited with code 1");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_container_killed_by_hand_should_fail_its_task_and_a_stop_should_shut_it_down() {
    let (_etcd, store) = etcd().await;
    let fake = Arc::new(FakeRuntime::new());
    let agent = spawn_with(&store, &fake);
    assign_task(&store, "node-1", "killed", TaskState::Running).await;
    assign_task(&store, "node-1", "stopped", TaskState::Running).await;
    let t = task_in_state(&store, "node-1", "killed", TaskState::Running).await;
    assert_eq!(t.status.container_id, "killed");
    task_in_state(&store, "node-1", "stopped", TaskState::Running).await;

    fake.exit("killed", 137);
    let t = task_in_state(&store, "node-1", "killed", TaskState::Failed).await;
    assert_eq!(t.status.exit_code, Some(137));

    change_task(&store, "node-1", "stopped", |t| {
        t.spec.desired_state = TaskState::Shutdown;
        true
    })
    .await;
    let t = task_in_state(&store, "node-1", "stopped", TaskState::Shutdown).await;
    assert_eq!(t.status.exit_code, Some(143), "SIGTERM honoured");

    store
        .delete::<shoal_api_types::TaskSpec>(&task_key(&store, "node-1", "stopped"), None)
        .await
        .unwrap();
    eventually("the stopped task's container to be deleted", || async {
        (!fake.ids().contains(&"stopped".to_string())).then_some(())
    })
    .await;
    agent.shutdown().await;
}
