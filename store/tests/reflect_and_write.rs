//! The store's shared machinery against a real etcd: the reflector publishes nothing before
//! a complete list and follows changes after it; the one create path keeps or renews
//! identity as asked; a fenced writer refuses writes once its fence key is re-created;
//! `commit_all` commits every batch that can be, packed or one by one.

use std::time::Duration;

use shoal_api_types::{Network, NetworkSpec};
use shoal_store::testing::TestEtcd;
use shoal_store::{
    leader, reflect, reflect_known, reflect_logged, Batch, Cache, ChangeLog, Changed, Fence,
    StoreError, Watcher, Writer,
};
use tokio::sync::watch;

fn network(name: &str) -> Network {
    Network::new(
        name,
        NetworkSpec {
            driver: "overlay".into(),
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn reflect_should_publish_nothing_before_a_complete_list_then_follow_changes() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    store.create(&network("a")).await.unwrap();
    let (tx, mut rx) = watch::channel::<Cache<NetworkSpec>>(None);
    assert!(
        rx.borrow_and_update().is_none(),
        "None before the first list"
    );
    let prefix = store.keys().prefix::<NetworkSpec>();
    let task = tokio::spawn(reflect(Watcher::new(store.clone(), prefix), tx));

    let listed = rx.wait_for(Option::is_some).await.unwrap().clone().unwrap();
    assert_eq!(listed.keys().collect::<Vec<_>>(), vec!["a"]);

    store.create(&network("b")).await.unwrap();
    store
        .delete::<NetworkSpec>(&store.keys().named::<NetworkSpec>("a"), None)
        .await
        .unwrap();
    let now = rx
        .wait_for(|c| {
            c.as_ref()
                .is_some_and(|c| !c.contains_key("a") && c.contains_key("b"))
        })
        .await
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(now.len(), 1);
    task.abort();
}

#[tokio::test]
async fn reflect_logged_should_log_every_name_it_puts_or_deletes_and_all_on_a_list() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    store.create(&network("a")).await.unwrap();
    store.create(&network("c")).await.unwrap();
    let (tx, mut rx) = watch::channel::<Cache<NetworkSpec>>(None);
    let log = ChangeLog::new();
    let prefix = store.keys().prefix::<NetworkSpec>();
    let task = tokio::spawn(reflect_logged(
        Watcher::new(store.clone(), prefix),
        tx,
        Some(log.clone()),
    ));
    rx.wait_for(Option::is_some).await.unwrap();
    assert_eq!(log.take(), Changed::All, "the list changes everything");
    assert_eq!(log.take(), Changed::Names(Default::default()));

    store.create(&network("b")).await.unwrap();
    store
        .delete::<NetworkSpec>(&store.keys().named::<NetworkSpec>("a"), None)
        .await
        .unwrap();
    rx.wait_for(|c| {
        c.as_ref()
            .is_some_and(|c| !c.contains_key("a") && c.contains_key("b"))
    })
    .await
    .unwrap();
    let Changed::Names(names) = log.take() else {
        panic!("not a list")
    };
    let mut names: Vec<_> = names.into_iter().collect();
    names.sort();
    assert_eq!(names, vec!["a", "b"], "c did not change");
    task.abort();
}

#[tokio::test]
async fn reflect_known_should_take_a_put_the_consumer_holds_instead_of_decoding_it() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    let (tx, mut rx) = watch::channel::<Cache<NetworkSpec>>(None);
    let prefix = store.keys().prefix::<NetworkSpec>();
    let own_key = store.keys().named::<NetworkSpec>("own");
    // The consumer's copy of "own" after its create carries a mark that etcd's value does
    // not: the cache holds the mark only if the copy was taken. (Matched by key and "after
    // the create", so that other tests writing to a shared etcd move no revision it needs.)
    let own: std::sync::Arc<std::sync::Mutex<Option<(i64, Network)>>> = Default::default();
    let known: shoal_store::Known<NetworkSpec> = {
        let own = own.clone();
        let own_key = own_key.clone();
        std::sync::Arc::new(move |key, rev| {
            let own = own.lock().unwrap();
            let (after, net) = own.as_ref()?;
            (key == own_key && rev > *after).then(|| net.clone())
        })
    };
    let task = tokio::spawn(reflect_known(
        Watcher::new(store.clone(), prefix),
        tx,
        None,
        Some(known),
    ));
    rx.wait_for(Option::is_some).await.unwrap();
    let created = store.create(&network("own")).await.unwrap();
    let mut next = created.clone();
    next.spec.mtu = Some(1400);
    let mut marked = next.clone();
    marked.spec.mtu = Some(1234);
    *own.lock().unwrap() = Some((created.metadata.revision().unwrap(), marked));
    store.update(&next).await.unwrap();
    store.create(&network("other")).await.unwrap();
    let now = rx
        .wait_for(|c| c.as_ref().is_some_and(|c| c.contains_key("other")))
        .await
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(now["own"].spec.mtu, Some(1234), "taken from the consumer");
    assert_eq!(now["other"].spec.mtu, None, "decoded");
    task.abort();
}

#[tokio::test]
async fn reflect_should_keep_publishing_when_readers_hold_only_the_sender() {
    // The node agent's network loop reads its caches through a clone of the sender
    // (`watch::Sender::borrow`) and holds no receiver: the reflector must not stop then.
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    store.create(&network("a")).await.unwrap();
    let (tx, rx) = watch::channel::<Cache<NetworkSpec>>(None);
    drop(rx);
    let reader = tx.clone();
    let prefix = store.keys().prefix::<NetworkSpec>();
    let task = tokio::spawn(reflect(Watcher::new(store.clone(), prefix), tx));
    // A receiver made now only to wait on; the reflector started with none.
    let mut waiter = reader.subscribe();
    waiter.wait_for(Option::is_some).await.unwrap();
    drop(waiter);
    store.create(&network("b")).await.unwrap();
    let mut waiter = reader.subscribe();
    waiter
        .wait_for(|c| c.as_ref().is_some_and(|c| c.contains_key("b")))
        .await
        .unwrap();
    assert!(!task.is_finished(), "the reflector keeps running");
    task.abort();
}

#[tokio::test]
async fn create_should_renew_identity_and_create_keeping_identity_should_keep_it() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    let first = store.create(&network("a")).await.unwrap();

    // A moved object (deleted, then created again: etcd allows one operation per key in a
    // transaction) keeps its identity...
    let key = store.keys().named::<NetworkSpec>("a");
    store.delete::<NetworkSpec>(&key, None).await.unwrap();
    let mut moved = first.clone();
    moved.metadata.generation = 3;
    let mut batch = Batch::new();
    let kept = batch.create_keeping_identity(&store, &moved);
    batch.commit(&store).await.unwrap();
    assert_eq!(kept.metadata.uid, first.metadata.uid);
    assert_eq!(
        kept.metadata.creation_timestamp,
        first.metadata.creation_timestamp
    );
    assert_eq!(kept.metadata.generation, 3);
    let stored = store.get_named::<NetworkSpec>("a").await.unwrap().unwrap();
    assert_eq!(stored.metadata.uid, first.metadata.uid);

    // ...while a create is a new object, whatever the caller filled in.
    store.delete::<NetworkSpec>(&key, None).await.unwrap();
    let mut batch = Batch::new();
    let renewed = batch.create(&store, &stored);
    batch.commit(&store).await.unwrap();
    assert_ne!(renewed.metadata.uid, first.metadata.uid);
    assert_eq!(renewed.metadata.generation, 1);
}

#[tokio::test]
async fn a_fenced_writer_should_refuse_writes_once_the_fence_key_is_recreated() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    let first = leader::campaign(&store, "first", Duration::from_secs(5)).await;
    let fence = first.fence();
    assert_eq!(
        fence,
        Fence {
            key: store.keys().leader(),
            create_revision: first.term
        }
    );
    let writer = Writer::new(store.clone(), Some(fence));
    let mut batch = Batch::new();
    batch.create(&store, &network("by-first"));
    let rev = writer.commit(batch).await.unwrap();
    assert_eq!(writer.last_revision(), rev);

    first.resign(&store).await;
    let second = leader::campaign(&store, "second", Duration::from_secs(5)).await;
    assert_eq!(
        leader::current(&store).await.unwrap().map(|(id, _)| id),
        Some("second".to_string())
    );
    let mut batch = Batch::new();
    batch.create(&store, &network("by-first-again"));
    let err = writer.commit(batch).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(store
        .get_named::<NetworkSpec>("by-first-again")
        .await
        .unwrap()
        .is_none());
    assert_eq!(writer.last_revision(), rev, "a refused write moves nothing");
    second.resign(&store).await;
}

#[tokio::test]
async fn commit_all_should_commit_every_batch_that_can_be_even_past_one_transaction() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    store.create(&network("n0007")).await.unwrap();
    // More single-create batches than fit one etcd transaction; one of them loses its race.
    let batches: Vec<Batch> = (0..300)
        .map(|i| {
            let mut b = Batch::new();
            b.create(&store, &network(&format!("n{i:04}")));
            b
        })
        .collect();
    let writer = Writer::new(store.clone(), None);
    let err = writer.commit_all(batches, 4).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    let (items, _) = store.list::<NetworkSpec>().await.unwrap();
    assert_eq!(items.len(), 300, "every other batch was committed");
    assert!(
        store
            .count(&store.keys().prefix::<NetworkSpec>())
            .await
            .unwrap()
            == 300
    );
}
