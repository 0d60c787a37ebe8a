//! Node lifecycle against a controller whose cache is behind etcd: a node is marked down
//! only when a fresh read agrees that its liveness key is gone and that it did not
//! re-register meanwhile (no false node-downs under load).

mod common;

use std::time::Duration;

use common::*;
use shoal_api_types::{Node, NodeSpec, NodeState, NodeStatus};
use shoal_controller::nodes::{reconcile_node, BEHIND_RETRY};
use shoal_controller::reconcile::Action;
use shoal_store::Store;

/// Creates a ready Node `name` with no liveness key.
async fn ready_node(store: &Store, name: &str) {
    let mut node = Node::new(name, NodeSpec::default());
    node.status = NodeStatus {
        state: NodeState::Ready,
        address: "198.18.0.9".into(),
        ..Default::default()
    };
    store.create(&node).await.expect("create node");
}

async fn state(store: &Store, name: &str) -> NodeState {
    store
        .get_named::<NodeSpec>(name)
        .await
        .expect("get node")
        .expect("node exists")
        .status
        .state
}

/// A frozen context that believes `name`'s liveness key has been gone past its deadline.
async fn stale_view(store: &Store, name: &str) -> DirectContext {
    let direct = DirectContext::frozen(store, &config()).await;
    direct
        .ctx
        .lease_deadlines
        .lock()
        .unwrap()
        .insert(name.to_string(), tokio::time::Instant::now());
    direct
}

#[tokio::test]
async fn a_node_whose_liveness_key_the_cache_has_not_seen_yet_should_not_be_marked_down() {
    let (_etcd, store) = etcd().await;
    ready_node(&store, "node-a").await;
    let direct = stale_view(&store, "node-a").await;
    // The agent's key lands after the cache's last look.
    let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    store
        .put_with_lease(&store.keys().node_lease("node-a"), "1", lease)
        .await
        .unwrap();

    let action = reconcile_node("node-a".into(), direct.ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::Requeue(BEHIND_RETRY));
    assert_eq!(state(&store, "node-a").await, NodeState::Ready);
    store.revoke_lease(lease).await.unwrap();
}

#[tokio::test]
async fn a_node_that_re_registered_behind_the_caches_back_should_not_be_marked_down() {
    let (_etcd, store) = etcd().await;
    ready_node(&store, "node-b").await;
    let direct = stale_view(&store, "node-b").await;
    // The agent wrote its Node again (a new registration) since the cache's copy.
    store
        .update_with::<NodeSpec>(&store.keys().named::<NodeSpec>("node-b"), |n| {
            n.status.lease = "abc".into();
            true
        })
        .await
        .unwrap()
        .expect("node updated");

    let action = reconcile_node("node-b".into(), direct.ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::Requeue(BEHIND_RETRY));
    assert_eq!(state(&store, "node-b").await, NodeState::Ready);
}

#[tokio::test]
async fn a_node_whose_liveness_key_is_really_gone_should_be_marked_down() {
    let (_etcd, store) = etcd().await;
    ready_node(&store, "node-c").await;
    let direct = stale_view(&store, "node-c").await;

    reconcile_node("node-c".into(), direct.ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(state(&store, "node-c").await, NodeState::Down);
}
