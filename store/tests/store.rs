//! The store against a real etcd: CAS writes, batches, watches from a revision, compaction,
//! leases.

use std::time::Duration;

use shoal_api_types::{Network, NetworkSpec, Service, ServiceSpec};
use shoal_store::testing::{own_keys, TestEtcd};
use shoal_store::{Batch, CheckMany, Event, RenewalStats, StoreError, UpdateMany};

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
async fn create_get_list_update_delete_round_trip() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    let created = store.create(&network("a")).await.unwrap();
    assert_eq!(created.metadata.generation, 1);
    assert!(!created.metadata.uid.is_empty());
    assert!(created.metadata.creation_timestamp.is_some());
    let rev = created.metadata.revision().unwrap();

    let got = store.get_named::<NetworkSpec>("a").await.unwrap().unwrap();
    assert_eq!(got, created);

    store.create(&network("b")).await.unwrap();
    let (items, list_rev) = store.list::<NetworkSpec>().await.unwrap();
    assert_eq!(
        items.iter().map(|n| n.name()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    assert!(list_rev > rev);

    let mut changed = got.clone();
    changed.spec.internal = true;
    let updated = store.update(&changed).await.unwrap();
    assert!(updated.metadata.revision().unwrap() > rev);

    let key = store.keys().named::<NetworkSpec>("a");
    let deleted = store.delete::<NetworkSpec>(&key, None).await.unwrap();
    assert!(deleted.spec.internal);
    assert!(store.get_named::<NetworkSpec>("a").await.unwrap().is_none());
    assert!(matches!(
        store.delete::<NetworkSpec>(&key, None).await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn create_of_existing_object_is_already_exists() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    store.create(&network("a")).await.unwrap();
    let err = store.create(&network("a")).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::AlreadyExists {
                kind: "Network",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn update_with_stale_revision_conflicts_and_one_of_two_racers_wins() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    let original = store.create(&network("a")).await.unwrap();
    let (mut one, mut two) = (original.clone(), original.clone());
    one.spec.mtu = Some(1400);
    two.spec.mtu = Some(1300);
    let (r1, r2) = tokio::join!(store.update(&one), store.update(&two));
    assert!(
        r1.is_ok() != r2.is_ok(),
        "exactly one racer wins: {r1:?} {r2:?}"
    );
    let loser = if r1.is_err() { r1 } else { r2 };
    assert!(matches!(loser, Err(StoreError::Conflict(_))));
    // And the stale original now conflicts too.
    assert!(matches!(
        store.update(&original).await,
        Err(StoreError::Conflict(_))
    ));
}

#[tokio::test]
async fn update_many_writes_all_or_returns_every_current_object() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    let a = store.create(&network("a")).await.unwrap();
    let b = store.create(&network("b")).await.unwrap();
    let (mut a1, mut b1) = (a.clone(), b.clone());
    a1.spec.mtu = Some(1400);
    b1.spec.mtu = Some(1300);
    let UpdateMany::Written(rev) = store.update_many(&[a1, b1]).await.unwrap() else {
        panic!("both were current")
    };
    let stored = store.get_named::<NetworkSpec>("b").await.unwrap().unwrap();
    assert_eq!(stored.spec.mtu, Some(1300));
    assert_eq!(stored.metadata.revision(), Some(rev));

    // `a` at its old revision: nothing is written, and both current objects come back.
    let (mut a2, mut b2) = (a.clone(), stored.clone());
    a2.spec.mtu = Some(1200);
    b2.spec.mtu = Some(1200);
    store
        .delete::<NetworkSpec>(&store.keys().named::<NetworkSpec>("b"), None)
        .await
        .unwrap();
    let UpdateMany::Conflict(current) = store.update_many(&[a2, b2]).await.unwrap() else {
        panic!("a was stale")
    };
    assert_eq!(current.len(), 2);
    assert_eq!(current[0].as_ref().unwrap().spec.mtu, Some(1400));
    assert!(current[1].is_none(), "b is gone");
    let a_now = store.get_named::<NetworkSpec>("a").await.unwrap().unwrap();
    assert_eq!(a_now.spec.mtu, Some(1400), "nothing written");
}

#[tokio::test]
async fn check_many_writes_nothing_and_returns_every_current_object_after_a_change() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    let a = store.create(&network("a")).await.unwrap();
    let b = store.create(&network("b")).await.unwrap();
    let before = own_keys(&store).await;
    assert_eq!(
        store.check_many(&[a.clone(), b.clone()]).await.unwrap(),
        CheckMany::Unchanged
    );
    assert_eq!(
        own_keys(&store).await,
        before,
        "a check is a read: nothing written"
    );

    // `b` changed since it was read: both current objects come back.
    let mut b1 = b.clone();
    b1.spec.mtu = Some(1300);
    store.update(&b1).await.unwrap();
    let CheckMany::Changed(current) = store.check_many(&[a.clone(), b]).await.unwrap() else {
        panic!("b was stale")
    };
    assert_eq!(current.len(), 2);
    assert_eq!(current[0].as_ref(), Some(&a));
    assert_eq!(current[1].as_ref().unwrap().spec.mtu, Some(1300));
}

#[tokio::test]
async fn update_with_retries_and_bumps_generation_only_on_spec_change() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    store.create(&network("a")).await.unwrap();
    let key = store.keys().named::<NetworkSpec>("a");
    let n = store
        .update_with::<NetworkSpec>(&key, |n| {
            n.status.phase = "Ready".into();
            true
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.metadata.generation, 1);
    let n = store
        .update_with::<NetworkSpec>(&key, |n| {
            n.spec.internal = true;
            true
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.metadata.generation, 2);
    assert_eq!(n.status.phase, "Ready");
}

#[tokio::test]
async fn batch_is_all_or_nothing() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    store.create(&network("taken")).await.unwrap();
    let mut batch = Batch::new();
    batch.create(&store, &network("fresh"));
    batch.create(&store, &network("taken"));
    assert!(matches!(
        batch.commit(&store).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store
        .get_named::<NetworkSpec>("fresh")
        .await
        .unwrap()
        .is_none());

    let mut batch = Batch::new();
    batch.claim(store.keys().ip("n", "10.0.0.2".parse().unwrap()), "task-1");
    batch.create(&store, &network("fresh"));
    batch.commit(&store).await.unwrap();
    let mut again = Batch::new();
    again.claim(store.keys().ip("n", "10.0.0.2".parse().unwrap()), "task-2");
    assert!(
        again.commit(&store).await.is_err(),
        "an address is never claimed twice"
    );
}

#[tokio::test]
async fn batch_precondition_on_unchanged_prefix_catches_concurrent_creates() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    let net = store.create(&network("appnet")).await.unwrap();
    let (_, rev) = store.list::<ServiceSpec>().await.unwrap();
    // Someone creates a service after we looked.
    store
        .create(&Service::new(
            "api",
            ServiceSpec {
                image: "x".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let mut batch = Batch::new();
    batch.require_unchanged_since(&store.keys().prefix::<ServiceSpec>(), rev);
    batch.delete(&store, &net);
    assert!(batch.commit(&store).await.is_err());
    assert!(store
        .get_named::<NetworkSpec>("appnet")
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn watch_from_revision_replays_exactly_the_missed_events() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    store.create(&network("before")).await.unwrap();
    let (_, rev) = store.list::<NetworkSpec>().await.unwrap();
    let a = store.create(&network("a")).await.unwrap();
    let mut a2 = a.clone();
    a2.spec.internal = true;
    store.update(&a2).await.unwrap();
    store
        .delete::<NetworkSpec>(&store.keys().named::<NetworkSpec>("a"), None)
        .await
        .unwrap();

    let mut watch = store
        .watch::<NetworkSpec>(&store.keys().prefix::<NetworkSpec>(), rev + 1)
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        match tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Added(o) => seen.push(format!("added {}", o.name())),
            Event::Modified(o) => seen.push(format!(
                "modified {} internal={}",
                o.name(),
                o.spec.internal
            )),
            Event::Deleted(o) => seen.push(format!("deleted {}", o.name())),
            Event::Progress(_) => {}
        }
    }
    assert_eq!(
        seen,
        vec!["added a", "modified a internal=true", "deleted a"]
    );
    // Nothing else is pending.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watch.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn watch_reports_progress_when_asked() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    let (_, rev) = store.list::<NetworkSpec>().await.unwrap();
    let mut watch = store
        .watch::<NetworkSpec>(&store.keys().prefix::<NetworkSpec>(), rev + 1)
        .await
        .unwrap()
        .with_progress_every(Duration::from_millis(200));
    let ev = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ev, Event::Progress(r) if r >= rev), "{ev:?}");
}

#[tokio::test]
async fn watch_from_compacted_revision_is_compacted_error() {
    let etcd = TestEtcd::private().await;
    let store = etcd.store().await;
    let first = store
        .create(&network("a"))
        .await
        .unwrap()
        .metadata
        .revision()
        .unwrap();
    store.create(&network("b")).await.unwrap();
    let now = store
        .create(&network("c"))
        .await
        .unwrap()
        .metadata
        .revision()
        .unwrap();
    store.compact(now).await.unwrap();
    let err = store
        .watch::<NetworkSpec>(&store.keys().prefix::<NetworkSpec>(), first)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, StoreError::Compacted { requested, .. } if requested == first),
        "{err}"
    );
}

#[tokio::test]
async fn lease_bound_keys_vanish_when_the_lease_is_revoked() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    let lease = store.grant_lease(Duration::from_secs(5)).await.unwrap();
    let keeper = store.keep_alive(lease);
    let key = store.keys().node_lease("node-1");
    store.put_with_lease(&key, "alive", lease).await.unwrap();
    assert_eq!(store.get_raw(&key).await.unwrap().unwrap().lease, lease.id);
    store.revoke_lease(lease).await.unwrap();
    assert!(store.get_raw(&key).await.unwrap().is_none());
    tokio::time::timeout(Duration::from_secs(10), keeper.lost())
        .await
        .expect("the keeper notices the lost lease");
}

#[tokio::test]
async fn renewals_should_be_counted_with_their_slowest_answer_and_longest_gap() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    let stats = RenewalStats::default();
    // Two leases share the stats, as a hollow fleet's nodes do. A 2 s TTL is renewed
    // every 500 ms.
    let a = store.grant_lease(Duration::from_secs(2)).await.unwrap();
    let b = store.grant_lease(Duration::from_secs(2)).await.unwrap();
    let _ka = store.keep_alive_counted(a, stats.clone());
    let _kb = store.keep_alive_counted(b, stats.clone());
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let s = stats.summary();
    // Renewals at about 0, 0.5, 1.0 and 1.5 s (fewer when etcd answers slowly), for
    // each lease: both count.
    assert!((4..=8).contains(&s.renewals), "{s:?}");
    // The gap: a period and an answer's time; never a whole TTL, or the lease lapsed.
    assert!(s.longest_gap >= Duration::from_millis(450), "{s:?}");
    assert!(s.longest_gap < Duration::from_secs(2), "{s:?}");
    assert!(s.slowest_answer > Duration::ZERO, "{s:?}");
    assert!(s.slowest_answer < s.longest_gap, "{s:?}");
}

#[tokio::test]
async fn writing_with_a_revoked_lease_should_say_the_lease_is_gone() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    let lease = store.grant_lease(Duration::from_secs(5)).await.unwrap();
    store.revoke_lease(lease).await.unwrap();
    let key = store.keys().node_lease("node-gone");
    let err = store
        .put_with_lease(&key, "alive", lease)
        .await
        .expect_err("the lease is gone");
    assert!(err.is_lease_gone(), "{err}");
    let other = store.put_raw(&key, "x").await.map(|_| ());
    assert!(other.is_ok(), "a write without a lease is not refused");
    let missing = store.get_raw("nothing").await.unwrap();
    assert!(missing.is_none());
}

#[tokio::test]
async fn a_separate_store_should_see_and_keep_alive_what_the_shared_one_does() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    let separate = store.separate().await.unwrap();
    assert_eq!(separate.keys().root(), store.keys().root());
    let lease = separate.grant_lease(Duration::from_secs(5)).await.unwrap();
    let keeper = separate.keep_alive(lease);
    let key = store.keys().node_lease("node-sep");
    separate.put_with_lease(&key, "alive", lease).await.unwrap();
    assert_eq!(store.get_raw(&key).await.unwrap().unwrap().lease, lease.id);
    store.revoke_lease(lease).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), keeper.lost())
        .await
        .expect("the keeper notices the lease revoked through the other connection");
}

#[tokio::test]
async fn lists_larger_than_a_page_come_whole_and_at_one_revision() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    let n = shoal_store::LIST_PAGE as usize * 2 + 7;
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let mut batch = Batch::new();
        for i in chunk {
            batch.create(&store, &network(&format!("n{i:05}")));
        }
        batch.commit(&store).await.unwrap();
    }
    let (items, rev) = store.list::<NetworkSpec>().await.unwrap();
    assert_eq!(items.len(), n);
    assert!(
        items.windows(2).all(|w| w[0].name() < w[1].name()),
        "sorted, no duplicates"
    );
    assert!(items.iter().all(|o| o.metadata.revision().unwrap() <= rev));

    // At one revision while another client writes: a writer keeps creating networks that
    // sort into the last page and changing one there, so every page read after the first
    // meets newer data; each list must still equal etcd's snapshot at its revision.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let store = etcd.store().await;
        let stop = stop.clone();
        async move {
            let mut k = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store.create(&network(&format!("nz{k:05}"))).await.unwrap();
                let last = store.keys().named::<NetworkSpec>(&format!("n{:05}", n - 1));
                store
                    .update_with::<NetworkSpec>(&last, |o| {
                        o.spec.labels.insert("k".into(), k.to_string());
                        true
                    })
                    .await
                    .unwrap();
                k += 1;
            }
            k
        }
    });
    let prefix = store.keys().prefix::<NetworkSpec>();
    let mut raced = 0;
    for _ in 0..5 {
        let (items, rev) = store.list::<NetworkSpec>().await.unwrap();
        let listed: Vec<(String, i64)> = items
            .iter()
            .map(|o| (o.name().to_string(), o.metadata.revision().unwrap()))
            .collect();
        let at_rev: Vec<(String, i64)> = store
            .list_raw_at(&prefix, rev)
            .await
            .unwrap()
            .into_iter()
            .map(|kv| (kv.key[prefix.len()..].to_string(), kv.mod_revision))
            .collect();
        assert_eq!(listed.len(), at_rev.len(), "list at {rev}: count");
        assert!(listed == at_rev, "list at {rev} differs from etcd at {rev}");
        let (_, now) = store.list::<NetworkSpec>().await.unwrap();
        if now > rev {
            raced += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(
        raced > 0 && writes > 0,
        "the writer wrote while the lists ran ({writes} rounds, {raced} lists raced)"
    );
}
