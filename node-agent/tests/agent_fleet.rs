//! Many hollow agents in one process, sharing one etcd connection.

mod agent_support;

use std::net::Ipv4Addr;

use agent_support::*;
use shoal_api_types::{NodeSpec, NodeState, TaskState};
use shoal_node_agent::hollow::{FleetConfig, HollowFleet};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hollow_fleet_of_50_should_register_50_ready_nodes_and_run_their_tasks() {
    let (_etcd, store) = etcd().await;
    let config = FleetConfig {
        count: 50,
        name_prefix: "hollow-".into(),
        first_index: 1,
        first_address: Ipv4Addr::new(198, 19, 0, 1),
        agent: config("template"),
    };
    let mut fleet = HollowFleet::spawn(&store, &config).expect("valid fleet");
    let leases = fleet.registered().await;
    assert_eq!(leases.iter().flatten().count(), 50);

    let nodes = eventually("50 ready nodes", || async {
        let (nodes, _) = store.list::<NodeSpec>().await.unwrap();
        (nodes
            .iter()
            .filter(|n| n.status.state == NodeState::Ready)
            .count()
            == 50)
            .then_some(nodes)
    })
    .await;
    let mut addresses: Vec<_> = nodes.iter().map(|n| n.status.address.clone()).collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 50, "every node has its own address");
    assert!(nodes
        .iter()
        .any(|n| n.metadata.name == "hollow-50" && n.status.address == "198.19.0.50"));
    for (i, lease) in leases.iter().enumerate() {
        let key = liveness_key(&store, &format!("hollow-{}", i + 1)).await;
        assert_eq!(
            key.map(|(_, l)| l),
            lease.map(|l| l.id),
            "hollow-{} has its own lease",
            i + 1
        );
    }

    for i in 1..=50 {
        assign_task(
            &store,
            &format!("hollow-{i}"),
            &format!("t{i}"),
            TaskState::Running,
        )
        .await;
    }
    for i in 1..=50 {
        task_in_state(
            &store,
            &format!("hollow-{i}"),
            &format!("t{i}"),
            TaskState::Running,
        )
        .await;
    }
    assert_eq!(fleet.runtime(0).unwrap().running(), vec!["t1".to_string()]);

    // Killing one node of the fleet: its liveness key goes with its lease.
    let (killed, runtime) = fleet.take("hollow-7").expect("hollow-7 is in the fleet");
    assert_eq!(runtime.running(), vec!["t7".to_string()]);
    let lease = killed.lease().expect("registered");
    drop(killed);
    store.revoke_lease(lease).await.unwrap();
    assert_eq!(liveness_key(&store, "hollow-7").await, None);
    assert!(fleet.agent("hollow-7").is_none() && fleet.agent("hollow-8").is_some());
    assert_eq!(fleet.agents().len(), 49);
    fleet.shutdown().await;
}
