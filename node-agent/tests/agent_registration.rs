//! Node registration against a real etcd, with hollow agents.

mod agent_support;

use std::collections::BTreeMap;
use std::sync::Arc;

use agent_support::*;
use shoal_api_types::{Node, NodeAvailability, NodeSpec, NodeState};
use shoal_node_agent::agent::{Agent, AgentConfig, AgentError};
use shoal_node_agent::hollow::HollowRuntime;

#[tokio::test]
async fn registering_should_create_a_ready_node_and_its_liveness_key() {
    let (_etcd, store) = etcd().await;
    let agent = spawn(
        &store,
        AgentConfig {
            address: "198.19.0.7".into(),
            ..config("node-1")
        },
        &Arc::new(HollowRuntime::new()),
    );
    let lease = agent.registered().await.expect("registered");

    let node = eventually("node-1 to be ready", || async {
        node(&store, "node-1")
            .await
            .filter(|n| n.status.state == NodeState::Ready)
    })
    .await;
    assert_eq!(node.status.address, "198.19.0.7");
    assert_eq!(node.status.runtime, "hollow");
    assert_eq!(node.status.lease, format!("{:x}", lease.id));
    assert!(node.status.registered_at.is_some());
    assert_eq!(node.spec, NodeSpec::default());
    let (value, key_lease) = liveness_key(&store, "node-1").await.expect("liveness key");
    assert_eq!((value, key_lease), (format!("{:x}", lease.id), lease.id));
    agent.shutdown().await;
}

#[tokio::test]
async fn a_blocked_work_runtime_should_not_starve_the_lease() {
    // The test runtime has one thread, which the agent's work shares: block it for well
    // over a TTL. The keeper runs on the liveness thread, so the lease never lapses.
    let (_etcd, store) = etcd().await;
    let config = config("node-1");
    let ttl = config.lease_ttl;
    let agent = spawn(&store, config, &Arc::new(HollowRuntime::new()));
    let lease = agent.registered().await.expect("registered");
    std::thread::sleep(ttl * 3);
    let (_, key_lease) = liveness_key(&store, "node-1")
        .await
        .expect("the liveness key outlived the blocked runtime");
    assert_eq!(key_lease, lease.id, "the same lease, never lost");
    agent.shutdown().await;
}

#[tokio::test]
async fn registering_should_keep_the_spec_users_own() {
    let (_etcd, store) = etcd().await;
    let mut existing = Node::new(
        "node-1",
        NodeSpec {
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            availability: NodeAvailability::Drain,
        },
    );
    existing.status.state = NodeState::Down;
    store.create(&existing).await.unwrap();

    let agent = spawn(&store, config("node-1"), &Arc::new(HollowRuntime::new()));
    agent.registered().await.expect("registered");
    let node = eventually("node-1 to be ready", || async {
        node(&store, "node-1")
            .await
            .filter(|n| n.status.state == NodeState::Ready)
    })
    .await;
    assert_eq!(node.spec, existing.spec);
    assert_eq!(node.metadata.generation, 1, "the spec was not rewritten");
    agent.shutdown().await;
}

#[tokio::test]
async fn revoking_the_lease_should_remove_the_liveness_key_and_the_agent_should_register_again() {
    let (_etcd, store) = etcd().await;
    let agent = spawn(&store, config("node-1"), &Arc::new(HollowRuntime::new()));
    let first = agent.registered().await.expect("registered");
    liveness_key(&store, "node-1").await.expect("liveness key");

    store.revoke_lease(first).await.unwrap();
    // The key went with the lease; the agent notices and registers with a new lease.
    let second = eventually("a new lease", || async {
        agent.lease().filter(|l| l.id != first.id)
    })
    .await;
    let (_, key_lease) = eventually("the liveness key to be back", || async {
        liveness_key(&store, "node-1")
            .await
            .filter(|(_, l)| *l == second.id)
    })
    .await;
    assert_eq!(key_lease, second.id);
    let node = eventually("the node to carry the new lease", || async {
        node(&store, "node-1")
            .await
            .filter(|n| n.status.lease == format!("{:x}", second.id))
    })
    .await;
    assert_eq!(node.status.state, NodeState::Ready);
    agent.shutdown().await;
}

#[tokio::test]
async fn an_agent_finding_its_lease_gone_should_register_with_a_new_one_at_once_not_retry_the_old_one(
) {
    let (_etcd, store) = etcd().await;
    // A TTL so long that the keeper's next renewal (every TTL/4 = 30 s) comes after the
    // test's deadline: only the registration check (every 300 ms) can notice in time.
    let config = AgentConfig {
        lease_ttl: std::time::Duration::from_secs(120),
        check_every: std::time::Duration::from_millis(300),
        ..config("node-1")
    };
    let agent = spawn(&store, config, &Arc::new(HollowRuntime::new()));
    let first = agent.registered().await.expect("registered");
    store.revoke_lease(first).await.unwrap();
    // The check finds the key gone, etcd refuses to bind it to the dead lease ("lease not
    // found"): the agent grants a new lease and registers again.
    let second = eventually("a new lease", || async {
        agent.lease().filter(|l| l.id != first.id)
    })
    .await;
    let (_, key_lease) = eventually("the liveness key bound to the new lease", || async {
        liveness_key(&store, "node-1")
            .await
            .filter(|(_, l)| *l == second.id)
    })
    .await;
    assert_eq!(key_lease, second.id);
    agent.shutdown().await;
}

#[tokio::test]
async fn the_agent_should_put_back_a_liveness_key_and_ready_state_changed_behind_its_back() {
    let (_etcd, store) = etcd().await;
    let agent = spawn(&store, config("node-1"), &Arc::new(HollowRuntime::new()));
    let lease = agent.registered().await.expect("registered");
    store
        .delete_raw(&store.keys().node_lease("node-1"))
        .await
        .unwrap();
    store
        .update_with::<NodeSpec>(&store.keys().named::<NodeSpec>("node-1"), |n| {
            n.status.state = NodeState::Down;
            true
        })
        .await
        .unwrap();
    eventually("the liveness key to be back", || async {
        liveness_key(&store, "node-1")
            .await
            .filter(|(_, l)| *l == lease.id)
    })
    .await;
    eventually("the node to be ready again", || async {
        node(&store, "node-1")
            .await
            .filter(|n| n.status.state == NodeState::Ready)
    })
    .await;
    assert_eq!(agent.lease(), Some(lease), "same lease: it was never lost");
    agent.shutdown().await;
}

#[tokio::test]
async fn shutdown_with_revoke_lease_on_exit_should_remove_the_liveness_key_at_once() {
    let (_etcd, store) = etcd().await;
    let agent = spawn(
        &store,
        AgentConfig {
            revoke_lease_on_exit: true,
            lease_ttl: std::time::Duration::from_secs(60),
            ..config("node-1")
        },
        &Arc::new(HollowRuntime::new()),
    );
    agent.registered().await.expect("registered");
    agent.shutdown().await;
    assert_eq!(liveness_key(&store, "node-1").await, None);
}

#[tokio::test]
async fn shutdown_without_revoke_should_leave_the_lease_to_expire() {
    let (_etcd, store) = etcd().await;
    let agent = spawn(
        &store,
        AgentConfig {
            lease_ttl: std::time::Duration::from_secs(60),
            ..config("node-1")
        },
        &Arc::new(HollowRuntime::new()),
    );
    let lease = agent.registered().await.expect("registered");
    agent.shutdown().await;
    assert_eq!(
        liveness_key(&store, "node-1").await.map(|(_, l)| l),
        Some(lease.id)
    );
}

#[tokio::test]
async fn build_should_reject_bad_names_addresses_and_timings() {
    let (_etcd, store) = etcd().await;
    let runtime = Arc::new(HollowRuntime::new());
    let build =
        |config: AgentConfig| Agent::build(config, store.clone(), runtime.clone()).map(|_| ());
    assert!(matches!(
        build(config("Node_1")),
        Err(AgentError::InvalidName(_))
    ));
    assert!(matches!(
        build(AgentConfig {
            address: "nowhere".into(),
            ..config("node-1")
        }),
        Err(AgentError::InvalidAddress { .. })
    ));
    let zero_ttl = AgentConfig {
        lease_ttl: std::time::Duration::ZERO,
        ..config("node-1")
    };
    assert!(matches!(
        build(zero_ttl),
        Err(AgentError::InvalidTiming { .. })
    ));
    assert!(build(config("node-1")).is_ok());
}
