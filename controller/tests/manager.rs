//! The runtime against a real etcd: the store's watcher relists after compaction and the
//! controller's cache swaps in the fresh list whole.

mod common;

use shoal_api_types::{Network, NetworkSpec};
use shoal_controller::reconcile::Cache;
use shoal_store::{Watcher, WatcherEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_should_relist_after_compaction_and_cache_should_swap_whole() {
    let (_etcd, store) = common::private_etcd().await;
    store
        .create(&Network::new("a", NetworkSpec::default()))
        .await
        .unwrap();
    let cache = Cache::new(store.keys());
    let mut watcher = Watcher::new(store.clone(), format!("{}/", store.keys().root()));
    let first = watcher.next().await;
    assert!(matches!(first, WatcherEvent::Restarted { .. }));
    cache.apply(first);
    assert!(cache.read().networks.contains_key("a"));

    // While not watching: a change, a deletion, and a compaction past them.
    store
        .create(&Network::new("b", NetworkSpec::default()))
        .await
        .unwrap();
    store
        .delete::<NetworkSpec>(&store.keys().named::<NetworkSpec>("a"), None)
        .await
        .unwrap();
    let rev = store.revision().await.unwrap();
    store.compact(rev).await.unwrap();

    let ev = watcher.next().await;
    let WatcherEvent::Restarted { revision, .. } = &ev else {
        panic!("expected a relist, got {ev:?}")
    };
    assert!(*revision >= rev);
    let changes = cache.apply(ev);
    {
        let w = cache.read();
        assert!(w.networks.contains_key("b") && !w.networks.contains_key("a"));
        assert!(w.revision >= rev);
    }
    // The vanished network is reported so its reconciler runs.
    assert!(changes
        .iter()
        .any(|c| matches!(c, shoal_controller::reconcile::Change::Network(n) if n == "a")));

    // And it keeps watching from there.
    store
        .create(&Network::new("c", NetworkSpec::default()))
        .await
        .unwrap();
    let ev = watcher.next().await;
    assert!(matches!(ev, WatcherEvent::Events { .. }), "{ev:?}");
    cache.apply(ev);
    assert!(cache.read().networks.contains_key("c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_should_catch_up_on_more_than_a_grpc_message_of_history() {
    let (_etcd, store) = common::etcd().await;
    let mut watcher = Watcher::new(store.clone(), format!("{}/", store.keys().root()));
    let WatcherEvent::Restarted {
        revision: start, ..
    } = watcher.next().await
    else {
        panic!("list first")
    };
    // ~20 MiB of history the watch has to deliver when it starts from `start + 1`; etcd
    // sends up to 1000 revisions (8 MiB here) in one response.
    let value = vec![b'x'; 8192];
    let mut puts = tokio::task::JoinSet::new();
    for chunk in 0..16 {
        let (store, value) = (store.clone(), value.clone());
        puts.spawn(async move {
            for i in 0..160 {
                store
                    .put_raw(
                        &format!("{}/junk/{chunk}-{i}", store.keys().root()),
                        value.clone(),
                    )
                    .await
                    .unwrap();
            }
        });
    }
    while puts.join_next().await.is_some() {}
    // Counted in events, not against etcd's revision: other tests write to the same etcd.
    let mut seen = 0;
    let mut revision = start;
    while seen < 16 * 160 {
        match tokio::time::timeout(std::time::Duration::from_secs(20), watcher.next())
            .await
            .expect("watch progresses")
        {
            WatcherEvent::Events {
                events,
                revision: r,
            } => {
                seen += events.len();
                assert!(
                    r >= revision,
                    "revisions never go back: {revision} then {r}"
                );
                revision = r;
            }
            WatcherEvent::Restarted { .. } => panic!("no relist needed"),
        }
    }
    assert_eq!(seen, 16 * 160);
}
