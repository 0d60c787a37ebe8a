//! Task convergence against a real etcd with the hollow runtime: tasks are written as the
//! controller writes them, and the agent's status reports are checked.

mod agent_support;

use std::sync::Arc;

use agent_support::*;
use shoal_api_types::TaskState;
use shoal_node_agent::hollow::HollowRuntime;

#[tokio::test]
async fn a_task_desired_running_should_be_reported_running() {
    let (_etcd, store) = etcd().await;
    let runtime = Arc::new(HollowRuntime::new());
    let agent = spawn(&store, config("node-1"), &runtime);
    assign_task(&store, "node-1", "t1", TaskState::Running).await;

    let t = task_in_state(&store, "node-1", "t1", TaskState::Running).await;
    assert_eq!(t.status.container_id, "hollow-t1");
    assert_eq!(t.status.message, "started");
    assert!(t.status.healthy, "no health check: healthy once running");
    assert!(t.status.timestamp.is_some());
    assert_eq!(runtime.running(), vec!["t1".to_string()]);
    agent.shutdown().await;
}

#[tokio::test]
async fn tasks_present_before_the_agent_starts_should_be_run() {
    let (_etcd, store) = etcd().await;
    for id in ["a", "b", "c"] {
        assign_task(&store, "node-1", id, TaskState::Running).await;
    }
    assign_task(&store, "node-2", "elsewhere", TaskState::Running).await;
    let runtime = Arc::new(HollowRuntime::new());
    let agent = spawn(&store, config("node-1"), &runtime);
    for id in ["a", "b", "c"] {
        task_in_state(&store, "node-1", id, TaskState::Running).await;
    }
    converged(&agent).await;
    assert_eq!(
        runtime.running(),
        vec!["a".to_string(), "b".into(), "c".into()]
    );
    assert_eq!(
        task(&store, "node-2", "elsewhere")
            .await
            .unwrap()
            .status
            .state,
        TaskState::Assigned
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn a_task_desired_shutdown_should_be_stopped_and_reported_shutdown() {
    let (_etcd, store) = etcd().await;
    let runtime = Arc::new(HollowRuntime::new());
    let agent = spawn(&store, config("node-1"), &runtime);
    assign_task(&store, "node-1", "t1", TaskState::Running).await;
    task_in_state(&store, "node-1", "t1", TaskState::Running).await;

    change_task(&store, "node-1", "t1", |t| {
        t.spec.desired_state = TaskState::Shutdown;
        true
    })
    .await;
    let t = task_in_state(&store, "node-1", "t1", TaskState::Shutdown).await;
    assert_eq!(t.status.exit_code, Some(0));
    assert!(runtime.running().is_empty());
    agent.shutdown().await;
}

#[tokio::test]
async fn a_task_assigned_with_desired_shutdown_should_be_reported_shutdown_without_starting() {
    let (_etcd, store) = etcd().await;
    let runtime = Arc::new(HollowRuntime::new());
    let agent = spawn(&store, config("node-1"), &runtime);
    assign_task(&store, "node-1", "t1", TaskState::Shutdown).await;
    task_in_state(&store, "node-1", "t1", TaskState::Shutdown).await;
    assert!(runtime.snapshot().is_empty());
    agent.shutdown().await;
}

#[tokio::test]
async fn exits_should_be_reported_complete_or_failed_with_the_exit_code() {
    let (_etcd, store) = etcd().await;
    let runtime = Arc::new(HollowRuntime::new());
    let agent = spawn(&store, config("node-1"), &runtime);
    assign_task(&store, "node-1", "ok", TaskState::Running).await;
    assign_task(&store, "node-1", "bad", TaskState::Running).await;
    task_in_state(&store, "node-1", "ok", TaskState::Running).await;
    task_in_state(&store, "node-1", "bad", TaskState::Running).await;

    assert!(runtime.exit("ok", 0));
    assert!(runtime.exit("bad", 3));
    let ok = task_in_state(&store, "node-1", "ok", TaskState::Complete).await;
    assert_eq!(ok.status.exit_code, Some(0));
    let bad = task_in_state(&store, "node-1", "bad", TaskState::Failed).await;
    assert_eq!(bad.status.exit_code, Some(3));
    assert_eq!(bad.status.err, "task exited with code 3");
    agent.shutdown().await;
}

#[tokio::test]
async fn states_should_never_move_backwards() {
    let (_etcd, store) = etcd().await;
    let runtime = Arc::new(HollowRuntime::new());
    let agent = spawn(&store, config("node-1"), &runtime);
    assign_task(&store, "node-1", "t1", TaskState::Running).await;
    task_in_state(&store, "node-1", "t1", TaskState::Running).await;

    // The controller orphans the task (its node was thought down): terminal, so the agent
    // stops what it runs and leaves the status alone.
    let orphaned = change_task(&store, "node-1", "t1", |t| {
        t.status.state = TaskState::Orphaned;
        true
    })
    .await;
    eventually("the orphaned task to be stopped", || async {
        runtime.running().is_empty().then_some(())
    })
    .await;
    converged(&agent).await;
    let after = task(&store, "node-1", "t1").await.unwrap();
    assert_eq!(after.status.state, TaskState::Orphaned);
    assert_eq!(
        after.metadata.resource_version, orphaned.metadata.resource_version,
        "not rewritten"
    );

    // A container that stopped running without the agent's say: failed, not restarted.
    assign_task(&store, "node-1", "t2", TaskState::Running).await;
    task_in_state(&store, "node-1", "t2", TaskState::Running).await;
    runtime.forget("t2");
    let t2 = task_in_state(&store, "node-1", "t2", TaskState::Failed).await;
    assert!(
        t2.status.err.contains("container is gone"),
        "{}",
        t2.status.err
    );
    converged(&agent).await;
    assert!(
        runtime.running().is_empty(),
        "a failed task is not started again"
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn deleting_a_task_should_remove_its_container() {
    let (_etcd, store) = etcd().await;
    let runtime = Arc::new(HollowRuntime::new());
    let agent = spawn(&store, config("node-1"), &runtime);
    assign_task(&store, "node-1", "t1", TaskState::Running).await;
    task_in_state(&store, "node-1", "t1", TaskState::Running).await;

    store
        .delete::<shoal_api_types::TaskSpec>(&task_key(&store, "node-1", "t1"), None)
        .await
        .unwrap();
    eventually("the container to be removed", || async {
        runtime.snapshot().is_empty().then_some(())
    })
    .await;
    agent.shutdown().await;
}

#[tokio::test]
async fn a_restarted_agent_should_leave_running_tasks_alone_and_register_again() {
    let (_etcd, store) = etcd().await;
    // The runtime outlives the agent, as containerd does.
    let runtime = Arc::new(HollowRuntime::new());
    let first = spawn(&store, config("node-1"), &runtime);
    let first_lease = first.registered().await.unwrap();
    for id in ["a", "b"] {
        assign_task(&store, "node-1", id, TaskState::Running).await;
    }
    let before = [
        task_in_state(&store, "node-1", "a", TaskState::Running).await,
        task_in_state(&store, "node-1", "b", TaskState::Running).await,
    ];
    converged(&first).await;
    drop(first); // a crash: no graceful shutdown, the lease stays until it expires

    let second = spawn(&store, config("node-1"), &runtime);
    let second_lease = second.registered().await.unwrap();
    assert_ne!(first_lease.id, second_lease.id);
    converged(&second).await;
    converged(&second).await;
    for t in &before {
        let now = task(&store, "node-1", t.name()).await.unwrap();
        assert_eq!(
            now.metadata.resource_version,
            t.metadata.resource_version,
            "task {} was rewritten",
            t.name()
        );
        assert_eq!(now.status.state, TaskState::Running);
    }
    assert_eq!(runtime.running().len(), 2);
    let node = node(&store, "node-1").await.unwrap();
    assert_eq!(node.status.lease, format!("{:x}", second_lease.id));
    assert_eq!(
        liveness_key(&store, "node-1").await.map(|(_, l)| l),
        Some(second_lease.id)
    );
    second.shutdown().await;
}

#[tokio::test]
async fn a_node_that_comes_back_should_clean_up_tasks_taken_from_it() {
    let (_etcd, store) = etcd().await;
    let runtime = Arc::new(HollowRuntime::new());
    let first = spawn(&store, config("node-1"), &runtime);
    for id in ["kept", "orphaned", "deleted"] {
        assign_task(&store, "node-1", id, TaskState::Running).await;
        task_in_state(&store, "node-1", id, TaskState::Running).await;
    }
    drop(first);

    // While the agent is away, the controller orphans one task and deletes another.
    change_task(&store, "node-1", "orphaned", |t| {
        t.status.state = TaskState::Orphaned;
        t.spec.desired_state = TaskState::Shutdown;
        true
    })
    .await;
    store
        .delete::<shoal_api_types::TaskSpec>(&task_key(&store, "node-1", "deleted"), None)
        .await
        .unwrap();

    let second = spawn(&store, config("node-1"), &runtime);
    eventually("only the kept task to run", || async {
        (runtime.running() == vec!["kept".to_string()]).then_some(())
    })
    .await;
    eventually("the deleted task's container to be gone", || async {
        runtime
            .snapshot()
            .iter()
            .all(|o| o.id != "deleted")
            .then_some(())
    })
    .await;
    assert_eq!(
        task(&store, "node-1", "orphaned")
            .await
            .unwrap()
            .status
            .state,
        TaskState::Orphaned
    );
    second.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_should_leave_tasks_running() {
    let (_etcd, store) = etcd().await;
    let runtime = Arc::new(HollowRuntime::new());
    let agent = spawn(&store, config("node-1"), &runtime);
    assign_task(&store, "node-1", "t1", TaskState::Running).await;
    task_in_state(&store, "node-1", "t1", TaskState::Running).await;
    agent.shutdown().await;
    assert_eq!(runtime.running(), vec!["t1".to_string()]);
    assert_eq!(
        task(&store, "node-1", "t1").await.unwrap().status.state,
        TaskState::Running
    );
}
