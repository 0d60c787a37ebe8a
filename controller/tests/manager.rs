//! The runtime against a real etcd: the watcher relists after compaction and the cache
//! swaps in the fresh list whole.

mod common;

use shoal_api_types::{Network, NetworkSpec};
use shoal_controller::runtime::{Cache, Watcher, WatcherEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_should_relist_after_compaction_and_cache_should_swap_whole() {
    let (_etcd, store) = common::private_etcd().await;
    store
        .create(&Network::new("a", NetworkSpec::default()))
        .await
        .unwrap();
    let cache = Cache::new(store.keys());
    let mut watcher = Watcher::new(store.client(), format!("{}/", store.keys().root()));
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
    let w = cache.read();
    assert!(w.networks.contains_key("b") && !w.networks.contains_key("a"));
    assert!(w.revision >= rev);
    // The vanished network is reported so its reconciler runs.
    assert!(changes
        .iter()
        .any(|c| matches!(c, shoal_controller::runtime::Change::Network(n) if n == "a")));
    drop(w);

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
