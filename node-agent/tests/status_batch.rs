//! Batched status writes against a real etcd: many reports in one transaction, no read
//! for a task the agent knows, and a stale copy redone on the stored one.

mod agent_support;

use std::collections::BTreeMap;

use agent_support::*;
use futures::future::join_all;
use shoal_api_types::{Task, TaskState};
use shoal_node_agent::agent::{BatchedStatus, StatusBatcher, StatusSink, StatusUpdate};
use shoal_store::testing::own_keys;
use shoal_store::Store;
use tokio::sync::watch;

/// A sink for node `n1` that knows `tasks` (as the agent's task watch would).
fn sink(store: &Store, tasks: &[Task]) -> BatchedStatus {
    let cache: BTreeMap<String, Task> = tasks
        .iter()
        .map(|t| (t.metadata.name.clone(), t.clone()))
        .collect();
    let (_tx, rx) = watch::channel(Some(cache));
    BatchedStatus::new(
        StatusBatcher::spawn(store.clone()),
        store.keys().node_tasks("n1"),
        rx,
    )
}

fn starting() -> StatusUpdate {
    StatusUpdate::new(TaskState::Starting, "starting")
}

#[tokio::test]
async fn reports_sent_together_should_commit_in_one_transaction() {
    let (_etcd, store) = etcd().await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        tasks.push(assign_task(&store, "n1", &format!("t{i}"), TaskState::Running).await);
    }
    let sink = sink(&store, &tasks);
    let update = starting();
    let stored = join_all(tasks.iter().map(|t| sink.report(t.name(), &update))).await;
    // Other tests share this etcd, so count by the tasks' own revisions: one for all.
    let rev = stored[0]
        .as_ref()
        .unwrap()
        .as_ref()
        .unwrap()
        .metadata
        .revision();
    for (t, s) in tasks.iter().zip(stored) {
        let s = s.unwrap().expect("the task exists");
        assert_eq!(s.status.state, TaskState::Starting);
        assert_eq!(s.metadata.revision(), rev, "40 reports, one transaction");
        let now = task(&store, "n1", t.name()).await.unwrap();
        assert_eq!(now.status.state, TaskState::Starting);
        assert_eq!(now.metadata.revision(), rev);
        assert_eq!(now.spec, t.spec, "only the status changes");
    }

    // A report that moves nothing forward writes nothing.
    let again = join_all(tasks.iter().map(|t| sink.report(t.name(), &update))).await;
    assert!(again.iter().all(|r| r.as_ref().unwrap().is_some()));
    for t in &tasks {
        let now = task(&store, "n1", t.name()).await.unwrap();
        assert_eq!(now.metadata.revision(), rev, "{} rewritten", t.name());
    }

    // The sink's own write is newer than its (stale) watch: the next report builds on it.
    let running = StatusUpdate::new(TaskState::Running, "started");
    let s = sink.report("t0", &running).await.unwrap().unwrap();
    assert_eq!(s.status.state, TaskState::Running);
    assert_eq!(
        task(&store, "n1", "t0").await.unwrap().status.state,
        TaskState::Running
    );
}

#[tokio::test]
async fn a_task_changed_behind_the_agents_back_should_get_its_status_on_the_stored_spec() {
    let (_etcd, store) = etcd().await;
    let a = assign_task(&store, "n1", "a", TaskState::Running).await;
    let b = assign_task(&store, "n1", "b", TaskState::Running).await;
    let sink = sink(&store, &[a.clone(), b.clone()]);
    // The controller wants `a` stopped; the sink's copy does not know yet.
    change_task(&store, "n1", "a", |t| {
        t.spec.desired_state = TaskState::Shutdown;
        true
    })
    .await;
    let update = starting();
    let (ra, rb) = tokio::join!(sink.report("a", &update), sink.report("b", &update));
    let (ra, rb) = (ra.unwrap().unwrap(), rb.unwrap().unwrap());
    assert_eq!(
        ra.spec.desired_state,
        TaskState::Shutdown,
        "the stored spec is kept"
    );
    assert_eq!(ra.status.state, TaskState::Starting);
    assert_eq!(rb.status.state, TaskState::Starting);
    let stored = task(&store, "n1", "a").await.unwrap();
    assert_eq!(stored.spec.desired_state, TaskState::Shutdown);
    assert_eq!(stored.status.state, TaskState::Starting);
}

#[tokio::test]
async fn a_task_the_agent_does_not_know_is_read_and_a_deleted_one_is_none() {
    let (_etcd, store) = etcd().await;
    assign_task(&store, "n1", "unseen", TaskState::Running).await;
    let gone = assign_task(&store, "n1", "gone", TaskState::Running).await;
    let sink = sink(&store, std::slice::from_ref(&gone));
    store
        .delete::<shoal_api_types::TaskSpec>(&task_key(&store, "n1", "gone"), None)
        .await
        .unwrap();
    let update = starting();
    let unseen = sink.report("unseen", &update).await.unwrap().unwrap();
    assert_eq!(unseen.status.state, TaskState::Starting);
    assert!(sink.report("gone", &update).await.unwrap().is_none());
    assert!(
        task(&store, "n1", "gone").await.is_none(),
        "never recreated"
    );
}

#[tokio::test]
async fn a_confirmation_should_write_nothing_and_see_what_the_controller_changed() {
    let (_etcd, store) = etcd().await;
    let a = assign_task(&store, "n1", "a", TaskState::Running).await;
    let b = assign_task(&store, "n1", "b", TaskState::Running).await;
    assign_task(&store, "n1", "unseen", TaskState::Running).await;
    let sink = sink(&store, &[a.clone(), b.clone()]);

    // Unchanged: the agent's copies come back, and none of this test's keys is written.
    let before = own_keys(&store).await;
    let (ca, cb) = tokio::join!(sink.confirm("a"), sink.confirm("b"));
    assert_eq!(ca.unwrap().unwrap(), a);
    assert_eq!(cb.unwrap().unwrap(), b);
    assert_eq!(own_keys(&store).await, before, "nothing written");

    // The controller wants `a` stopped and deleted `b`; the sink's copies do not know.
    change_task(&store, "n1", "a", |t| {
        t.spec.desired_state = TaskState::Shutdown;
        true
    })
    .await;
    store
        .delete::<shoal_api_types::TaskSpec>(&task_key(&store, "n1", "b"), None)
        .await
        .unwrap();
    let (ca, cb, cu) = tokio::join!(sink.confirm("a"), sink.confirm("b"), sink.confirm("unseen"));
    let ca = ca.unwrap().unwrap();
    assert_eq!(ca.spec.desired_state, TaskState::Shutdown);
    assert_eq!(ca.status.state, TaskState::Assigned, "only read");
    assert!(cb.unwrap().is_none(), "b is gone");
    assert_eq!(
        cu.unwrap().unwrap().name(),
        "unseen",
        "read, as with a report"
    );
}

#[tokio::test]
async fn the_echo_of_an_own_write_should_be_the_task_as_etcd_decodes_it() {
    let (_etcd, store) = etcd().await;
    let a = assign_task(&store, "n1", "a", TaskState::Running).await;
    let sink = std::sync::Arc::new(sink(&store, std::slice::from_ref(&a)));
    let running = StatusUpdate::new(TaskState::Running, "started").with_healthy(true);
    let written = sink.report("a", &running).await.unwrap().unwrap();
    let rev = written.metadata.revision().unwrap();
    let echoes = sink.clone().echoes();
    let key = task_key(&store, "n1", "a");
    let echo = echoes(&key, rev).expect("the agent's own write");
    assert_eq!(echo, task(&store, "n1", "a").await.unwrap(), "as decoded");
    assert!(
        echoes(&key, rev + 1).is_none(),
        "another revision is decoded"
    );
    assert!(echoes(&task_key(&store, "n1", "b"), rev).is_none());
}
