//! Leader election: one controller reconciles at a time; killing the leader in the middle
//! of a scale-up leaves exactly the wanted tasks, no slot twice, no address twice; a
//! deposed leader's writes are refused by the fence.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use shoal_api_types::{NetworkAttachmentConfig, ServiceSpec, TaskSpec};
use shoal_store::leader;
use shoal_store::{Batch, Event, Lease, StoreError, Writer};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_mid_scale_up_should_leave_exactly_the_wanted_tasks() {
    leader_dies_mid_scale_up(true).await;
}

/// The old leader keeps running but loses its lease (as in a network partition): it must
/// stop writing at once and follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_losing_its_lease_mid_scale_up_should_stop_and_follow() {
    leader_dies_mid_scale_up(false).await;
}

async fn leader_dies_mid_scale_up(abort: bool) {
    let (etcd, store) = etcd().await;
    let _nodes = nodes(&store, 4, Duration::from_secs(5)).await;
    network(&store, "big", Some("10.20.0.0/16")).await;
    let spec = ServiceSpec {
        networks: vec![NetworkAttachmentConfig {
            name: "big".into(),
            aliases: vec![],
        }],
        ..replicated(0)
    };
    service(&store, "api", spec).await;

    // One task per transaction, so the scale-up takes 200 commits and the kill lands in
    // the middle of it (with 15 per batch a delayed watch event once let all 14 batches
    // through first).
    let cfg = shoal_controller::config::ManagerConfig {
        task_create_batch: 1,
        ..config()
    };
    let mut a = Controller::start(etcd.store().await, cfg);
    let (leader_a, lease_a) = wait_for(Duration::from_secs(10), "a leader", || async {
        leader::current(&store).await.unwrap()
    })
    .await;
    network_phase(&store, "big", "Ready").await;
    let b = Controller::start(
        etcd.store().await,
        shoal_controller::config::ManagerConfig {
            task_create_batch: 1,
            ..config()
        },
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        leader::current(&store).await.unwrap().unwrap().0,
        leader_a,
        "b must follow"
    );

    // Scale 0 -> 200 and kill the leader as soon as its first tasks show up. The watch
    // starts at etcd's current revision: a start revision that other writes have already
    // passed puts the watcher in etcd's catch-up group, which delivers up to 100 ms late.
    let mut watch = store
        .watch::<TaskSpec>(&store.keys().prefix::<TaskSpec>(), 0)
        .await
        .unwrap();
    update_service(&store, "api", |s| s.replicas = Some(200)).await;
    loop {
        if let Event::Added(_) = watch.next().await.unwrap() {
            break;
        }
    }
    if abort {
        a.abort();
    }
    store
        .revoke_lease(Lease {
            id: lease_a,
            ttl: Duration::from_secs(2),
        })
        .await
        .unwrap();
    // From here the old leader writes nothing (aborted, or fenced off by its lease): what
    // exists now is what it made. The kill must land mid-scale, or this proves nothing.
    let seen_at_kill = tasks(&store).await.len();
    eprintln!("tasks when the leader was killed: {seen_at_kill}");
    assert!(
        seen_at_kill > 0 && seen_at_kill < 200,
        "the leader must die in the middle of the scale-up: {seen_at_kill} of 200 tasks existed"
    );

    let (leader_b, _) = wait_for(Duration::from_secs(10), "b to lead", || async {
        leader::current(&store)
            .await
            .unwrap()
            .filter(|(id, _)| *id != leader_a)
    })
    .await;
    assert_ne!(leader_b, leader_a);
    let running = wait_running(&store, "api", 200, Duration::from_secs(30)).await;

    let all = tasks(&store).await;
    assert_eq!(
        all.len(),
        200,
        "exactly 200 tasks (saw {seen_at_kill} when the leader died)"
    );
    let mut slots: Vec<u64> = all.iter().filter_map(|t| t.spec.slot).collect();
    slots.sort();
    assert_eq!(slots, (1..=200).collect::<Vec<_>>(), "every slot once");
    let ips: BTreeSet<String> = all
        .iter()
        .map(|t| t.spec.attachments[0].address.clone())
        .collect();
    assert_eq!(ips.len(), all.len(), "no address twice");
    assert_eq!(running.len(), 200);
    // Claims match the tasks plus the VIP exactly.
    let claims = store.count(&store.keys().network_ips("big")).await.unwrap();
    assert_eq!(claims, 201);
    if !abort {
        if a.handle.is_finished() {
            panic!("the deposed leader ended: {:?}", (&mut a.handle).await);
        }
        // Stopping the leader hands over to the old one, which finds nothing to change.
        b.stop().await;
        wait_for(Duration::from_secs(10), "a leads again", || async {
            leader::current(&store)
                .await
                .unwrap()
                .filter(|(id, _)| *id != leader_b)
                .map(|_| ())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(tasks(&store).await.len(), 200);
        a.stop().await;
    } else {
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deposed_leaders_writes_should_be_refused() {
    let (_etcd, store) = etcd().await;
    let first = leader::campaign(&store, "first", Duration::from_secs(2)).await;
    let writer = Writer::new(store.clone(), Some(first.fence()));
    let mut txn = Batch::new();
    txn.claim(store.keys().vni(5000), "x");
    writer.commit(txn).await.expect("the leader writes");

    first.resign(&store).await;
    let second = leader::campaign(&store, "second", Duration::from_secs(2)).await;
    assert!(second.term > 0);
    let mut txn = Batch::new();
    txn.claim(store.keys().vni(5001), "x");
    let err = writer.commit(txn).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    let got = store.get_raw(&store.keys().vni(5001)).await.unwrap();
    assert!(got.is_none(), "nothing written by the deposed leader");
}
