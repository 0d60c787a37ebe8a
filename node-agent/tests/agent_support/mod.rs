//! Shared helpers for the agent's integration tests: a real etcd, agent settings with
//! short timings, tasks written as the controller writes them, and polling with a deadline.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shoal_api_types::{Node, NodeSpec, Task, TaskSpec, TaskState};
use shoal_node_agent::agent::{Agent, AgentConfig, AgentHandle};
use shoal_node_agent::hollow::HollowRuntime;
use shoal_store::testing::TestEtcd;
use shoal_store::Store;

/// How long a condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// A real etcd and a store on a key root of this test's own.
pub async fn etcd() -> (TestEtcd, Store) {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    (etcd, store)
}

/// Agent settings with timings short enough for tests.
pub fn config(name: &str) -> AgentConfig {
    AgentConfig {
        lease_ttl: Duration::from_secs(2),
        resync: Duration::from_millis(500),
        check_every: Duration::from_secs(1),
        ..AgentConfig::new(name, "198.19.0.1")
    }
}

/// Starts a hollow agent for `name` with `runtime`.
pub fn spawn(store: &Store, config: AgentConfig, runtime: &Arc<HollowRuntime>) -> AgentHandle {
    Agent::build(config, store.clone(), runtime.clone())
        .expect("valid agent config")
        .spawn()
}

/// Polls `check` until it returns `Some`, failing the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    shoal_testkit::eventually(what, DEADLINE, check).await
}

/// Writes a task assigned to `node` as the controller does (`tasks/<node>/<id>`).
pub async fn assign_task(store: &Store, node: &str, id: &str, desired: TaskState) -> Task {
    assign_task_with(store, node, id, desired, |_| {}).await
}

/// Like [`assign_task`], with `edit` applied to the task before it is written.
pub async fn assign_task_with(
    store: &Store,
    node: &str,
    id: &str,
    desired: TaskState,
    edit: impl FnOnce(&mut Task),
) -> Task {
    let mut task = Task::new(
        id,
        TaskSpec {
            service: "api".into(),
            slot: Some(1),
            node: Some(node.into()),
            desired_state: desired,
            image: "localhost:5000/busybox:latest".into(),
            stop_grace_period_seconds: 1,
            ..Default::default()
        },
    );
    task.status.state = TaskState::Assigned;
    edit(&mut task);
    store.create(&task).await.expect("create task")
}

/// The key of a task on a node.
pub fn task_key(store: &Store, node: &str, id: &str) -> String {
    format!("{}{}", store.keys().node_tasks(node), id)
}

/// The task as stored now.
pub async fn task(store: &Store, node: &str, id: &str) -> Option<Task> {
    store
        .get::<TaskSpec>(&task_key(store, node, id))
        .await
        .expect("read task")
}

/// Waits until the task's status is `state`.
pub async fn task_in_state(store: &Store, node: &str, id: &str, state: TaskState) -> Task {
    eventually(&format!("task {id} to be {state}"), || async {
        task(store, node, id)
            .await
            .filter(|t| t.status.state == state)
    })
    .await
}

/// Changes a task as the controller would (its spec, or its status when orphaning it).
pub async fn change_task(
    store: &Store,
    node: &str,
    id: &str,
    change: impl FnMut(&mut Task) -> bool,
) -> Task {
    store
        .update_with::<TaskSpec>(&task_key(store, node, id), change)
        .await
        .expect("update task")
        .expect("task exists")
}

/// The node as stored now.
pub async fn node(store: &Store, name: &str) -> Option<Node> {
    store.get_named::<NodeSpec>(name).await.expect("read node")
}

/// The value and lease of the node's liveness key, if it exists.
pub async fn liveness_key(store: &Store, name: &str) -> Option<(String, i64)> {
    let kv = store
        .get_raw(&store.keys().node_lease(name))
        .await
        .expect("read liveness key");
    kv.map(|kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.lease))
}

/// Waits until the agent's converge loop has run a round with nothing left to do.
pub async fn converged(agent: &AgentHandle) {
    let start = agent.stats().rounds;
    eventually("the agent to converge", || async {
        let s = agent.stats();
        (s.rounds > start && s.idle).then_some(())
    })
    .await
}
