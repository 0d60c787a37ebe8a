//! The API replica's task index against a real etcd: its watch runs only while lookups
//! come (started by the first, stopped after the idle time), and a lookup after a stop
//! lists again and finds what changed meanwhile.

mod common;

use std::time::Duration;

use shoal_api_types::{Task, TaskSpec};
use shoal_controller::api::task_index::TaskLookup;
use tokio::sync::watch;

fn task(id: &str, slot: u64) -> Task {
    Task::new(
        id,
        TaskSpec {
            service: "api".into(),
            slot: Some(slot),
            node: Some("node-1".into()),
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn the_index_watches_only_while_lookups_come() {
    let (_etcd, store) = common::etcd().await;
    store.create(&task("t1", 1)).await.expect("create t1");
    let (_down, shutdown) = watch::channel(false);
    let lookup = TaskLookup::with_idle_after(store.clone(), shutdown, Duration::from_millis(300));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!lookup.is_watching(), "no lookup yet, so no watch");

    let id = lookup
        .read(|i| i.resolve("api.1").map(|t| t.id.clone()))
        .await
        .expect("the first lookup lists");
    assert_eq!(id.as_deref(), Some("t1"));
    assert!(lookup.is_watching());

    // Lookups keep it going past the idle time.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        lookup.read(|i| i.len()).await.expect("lookup");
        assert!(lookup.is_watching(), "a lookup came within the idle time");
    }

    // Idle: the watch stops and the index goes.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        !lookup.is_watching(),
        "no lookup for 900 ms with an idle time of 300 ms"
    );

    // What changed while nobody watched is found by the next lookup.
    store.create(&task("t2", 2)).await.expect("create t2");
    let id = lookup
        .read(|i| i.resolve("api.2").map(|t| t.id.clone()))
        .await
        .expect("a lookup after the stop lists again");
    assert_eq!(id.as_deref(), Some("t2"));
    assert!(lookup.is_watching());
}
