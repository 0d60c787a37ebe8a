//! Node ingress addresses (routing mesh): every node gets an address of its own on the
//! `ingress` network, claimed in etcd as `node/<name>`, stable across agent restarts that
//! rewrite the Node's status, distinct from task addresses, released when the Node goes.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use shoal_api_types::network::INGRESS_NETWORK;
use shoal_api_types::{NodeSpec, PortConfig, ServiceSpec};

const T: Duration = Duration::from_secs(15);

async fn ingress_address(store: &shoal_store::Store, node: &str) -> Option<Ipv4Addr> {
    let n = store.get_named::<NodeSpec>(node).await.ok()??;
    n.status.ingress_address.parse().ok()
}

async fn claim_owner(store: &shoal_store::Store, ip: Ipv4Addr) -> Option<String> {
    let key = store.keys().ip(INGRESS_NETWORK, ip);
    let kv = store.get_raw(&key).await.expect("get claim");
    kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_should_get_stable_distinct_claimed_ingress_addresses_released_on_delete() {
    let (_etcd, store) = etcd().await;
    let mut nodes = nodes(&store, 3, Duration::from_secs(2)).await;
    let controller = Controller::start(store.clone(), config());

    let mut addrs = Vec::new();
    for k in 1..=3 {
        let name = format!("node-{k}");
        let ip = wait_for(T, &format!("{name} has an ingress address"), || {
            let store = store.clone();
            let name = name.clone();
            async move { ingress_address(&store, &name).await }
        })
        .await;
        assert!(
            "10.255.0.0/16"
                .parse::<ipnetwork::Ipv4Network>()
                .unwrap()
                .contains(ip),
            "{name}: {ip}"
        );
        assert_ne!(ip, Ipv4Addr::new(10, 255, 0, 1), "not the gateway");
        assert_eq!(
            claim_owner(&store, ip).await.as_deref(),
            Some(format!("node/{name}").as_str()),
            "{name}'s address is claimed in its name"
        );
        addrs.push(ip);
    }
    assert_eq!(
        addrs.iter().collect::<BTreeSet<_>>().len(),
        3,
        "distinct: {addrs:?}"
    );

    // Task addresses on ingress never collide with node addresses.
    service(
        &store,
        "pub",
        ServiceSpec {
            ports: vec![PortConfig {
                published: 9091,
                target: 80,
                ..Default::default()
            }],
            ..replicated(3)
        },
    )
    .await;
    let tasks = wait_running(&store, "pub", 3, T).await;
    for t in &tasks {
        let a = t
            .spec
            .attachments
            .iter()
            .find(|a| a.network == INGRESS_NETWORK)
            .expect("an ingress attachment");
        let ip: Ipv4Addr = a.address.split('/').next().unwrap().parse().unwrap();
        assert!(!addrs.contains(&ip), "task {ip} vs nodes {addrs:?}");
    }

    // An agent restart rewrites the status without the address (as an older agent would):
    // the node gets the same address back from its claim.
    let second = nodes.remove(1);
    second.kill().await;
    let again = HollowNode::start(&store, "node-2", 2, &[], Duration::from_secs(2)).await;
    let back = wait_for(T, "node-2's address back", || {
        let store = store.clone();
        async move { ingress_address(&store, "node-2").await }
    })
    .await;
    assert_eq!(back, addrs[1], "stable across restarts");

    // Deleting a Node releases its claim.
    let third = nodes.remove(1);
    third.kill().await;
    let key = store.keys().named::<NodeSpec>("node-3");
    store
        .delete::<NodeSpec>(&key, None)
        .await
        .expect("delete node");
    wait_for(T, "node-3's claim released", || {
        let store = store.clone();
        let ip = addrs[2];
        async move { claim_owner(&store, ip).await.is_none().then_some(()) }
    })
    .await;
    assert_eq!(
        claim_owner(&store, addrs[0]).await.as_deref(),
        Some("node/node-1")
    );
    drop(again);
    controller.stop().await;
}
