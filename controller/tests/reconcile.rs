//! Global services, placement constraints, host-port conflicts, resource reservations, and
//! allocation failures that must show in a status (not panic, not loop).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use shoal_api_types::resources::{Cpus, Memory, NodeCapacity};
use shoal_api_types::{
    NetworkAttachmentConfig, NetworkSpec, NodeSpec, Placement, PortConfig, PublishMode,
    ServiceMode, ServiceSpec, TaskState,
};

const T: Duration = Duration::from_secs(15);

fn global() -> ServiceSpec {
    ServiceSpec {
        image: "busybox".into(),
        mode: ServiceMode::Global,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn global_service_should_follow_nodes_joining_and_leaving() {
    let (_etcd, store) = etcd().await;
    let mut nodes = nodes(&store, 2, Duration::from_secs(2)).await;
    let controller = Controller::start(store.clone(), config());
    service(&store, "mon", global()).await;
    let tasks = wait_running(&store, "mon", 2, T).await;
    assert_eq!(
        per_node(&tasks).keys().cloned().collect::<Vec<_>>(),
        vec!["node-1", "node-2"]
    );

    // A node joins: it gets one.
    nodes.push(HollowNode::start(&store, "node-3", 3, &[], Duration::from_secs(2)).await);
    let tasks = wait_running(&store, "mon", 3, T).await;
    assert_eq!(
        per_node(&tasks).values().copied().collect::<Vec<_>>(),
        vec![1, 1, 1]
    );

    // A node leaves: its task ends and is not replaced elsewhere.
    nodes.remove(0).kill().await;
    let tasks = wait_running(&store, "mon", 2, T).await;
    assert_eq!(
        per_node(&tasks).keys().cloned().collect::<Vec<_>>(),
        vec!["node-2", "node-3"]
    );

    // Drained: its task stops; desired count follows.
    let key = store.keys().named::<NodeSpec>("node-3");
    store
        .update_with::<NodeSpec>(&key, |n| {
            n.spec.availability = shoal_api_types::NodeAvailability::Drain;
            true
        })
        .await
        .unwrap();
    wait_running(&store, "mon", 1, T).await;
    wait_for(T, "desired 1", || async {
        let s = store
            .get_named::<ServiceSpec>("mon")
            .await
            .unwrap()
            .unwrap();
        (s.status.desired_tasks == 1 && s.status.running_tasks == 1).then_some(())
    })
    .await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_a_node_fits_should_be_created_on_it_and_never_under_unassigned() {
    let (_etcd, store) = etcd().await;
    let _nodes = nodes(&store, 2, Duration::from_secs(5)).await;
    let controller = Controller::start(store.clone(), config());
    let from = store.revision().await.unwrap() + 1;
    service(&store, "api", replicated(6)).await;
    let tasks = wait_running(&store, "api", 6, T).await;
    assert_eq!(
        per_node(&tasks).values().copied().collect::<Vec<_>>(),
        vec![3, 3]
    );
    // Every task key written since: each task was created at its node's key, never below
    // `_unassigned` (no move: one put fewer and no delete per task).
    let upto = store.revision().await.unwrap();
    let prefix = format!("{}/tasks/", store.keys().root());
    let mut watch = store
        .watch_raw(&prefix, from)
        .await
        .unwrap()
        .with_progress_every(Duration::from_millis(200));
    let (mut puts, mut deletes) = (vec![], vec![]);
    let mut at = from - 1;
    while at < upto {
        let (events, rev) = watch.next().await.unwrap();
        for e in events {
            match e {
                shoal_store::RawEvent::Put(kv) => puts.push(kv.key),
                shoal_store::RawEvent::Delete { key, .. } => deletes.push(key),
            }
        }
        at = rev;
    }
    assert!(
        puts.iter().all(|k| !k.contains("/_unassigned/")),
        "a task was created unassigned: {puts:?}"
    );
    assert!(deletes.is_empty(), "a task key moved: {deletes:?}");
    for t in &tasks {
        let key = format!(
            "{prefix}{}/{}",
            t.spec.node.as_deref().unwrap(),
            t.metadata.name
        );
        assert!(puts.contains(&key), "{key} never written: {puts:?}");
    }
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn constraints_should_be_respected() {
    let (_etcd, store) = etcd().await;
    let _a = HollowNode::start(
        &store,
        "node-a",
        1,
        &[("zone", "a")],
        Duration::from_secs(5),
    )
    .await;
    let _b = HollowNode::start(
        &store,
        "node-b",
        2,
        &[("zone", "b")],
        Duration::from_secs(5),
    )
    .await;
    let _c = HollowNode::start(
        &store,
        "node-c",
        3,
        &[("zone", "a")],
        Duration::from_secs(5),
    )
    .await;
    let controller = Controller::start(store.clone(), config());
    let spec = ServiceSpec {
        placement: Placement {
            constraints: vec!["node.labels.zone==a".into()],
            ..Default::default()
        },
        ..replicated(4)
    };
    service(&store, "api", spec).await;
    let tasks = wait_running(&store, "api", 4, T).await;
    let counts = per_node(&tasks);
    assert_eq!(
        counts.keys().cloned().collect::<Vec<_>>(),
        vec!["node-a", "node-c"]
    );
    assert!(counts.values().all(|n| *n == 2));

    // Nothing matches: pending with a reason.
    let spec = ServiceSpec {
        placement: Placement {
            constraints: vec!["node.labels.zone==z".into()],
            ..Default::default()
        },
        ..replicated(1)
    };
    service(&store, "nowhere", spec).await;
    let t = wait_for(T, "pending reason", || async {
        service_tasks(&store, "nowhere")
            .await
            .into_iter()
            .find(|t| !t.spec.pending_reason.is_empty())
    })
    .await;
    assert_eq!(
        t.spec.pending_reason,
        "no suitable node (constraint node.labels.zone==z not met on 3 nodes)"
    );
    assert_eq!(t.status.state, TaskState::Pending);
    assert!(t.spec.node.is_none());
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_ports_should_be_unique_per_node_and_explain_pending_tasks() {
    let (_etcd, store) = etcd().await;
    let _nodes = nodes(&store, 3, Duration::from_secs(5)).await;
    let controller = Controller::start(store.clone(), config());
    let port = PortConfig {
        published: 8080,
        target: 80,
        mode: PublishMode::Host,
        ..Default::default()
    };
    service(
        &store,
        "web",
        ServiceSpec {
            ports: vec![port.clone()],
            ..replicated(4)
        },
    )
    .await;
    let tasks = wait_n_running(&store, "web", 3, T).await;
    assert_eq!(
        per_node(&tasks).values().copied().collect::<Vec<_>>(),
        vec![1, 1, 1]
    );
    let pending = wait_for(T, "the 4th task pending with a reason", || async {
        live(&store, "web")
            .await
            .into_iter()
            .find(|t| t.spec.node.is_none() && !t.spec.pending_reason.is_empty())
    })
    .await;
    assert_eq!(
        pending.spec.pending_reason,
        "no suitable node (host port 8080 in use on 3 nodes)"
    );
    let svc = wait_for(T, "service condition", || async {
        let s = store
            .get_named::<ServiceSpec>("web")
            .await
            .unwrap()
            .unwrap();
        s.status
            .conditions
            .iter()
            .find(|c| c.type_ == "Converged" && c.reason == "NoSuitableNode")
            .cloned()
    })
    .await;
    assert!(
        svc.message.contains("host port 8080 in use on 3 nodes"),
        "{svc:?}"
    );

    // Another service on the same port conflicts too; scaling web down frees one node.
    update_service(&store, "web", |s| s.replicas = Some(2)).await;
    service(
        &store,
        "other",
        ServiceSpec {
            ports: vec![port],
            ..replicated(1)
        },
    )
    .await;
    let other = wait_running(&store, "other", 1, T).await;
    let web = wait_running(&store, "web", 2, T).await;
    let web_nodes: BTreeSet<_> = web.iter().map(|t| t.spec.node.clone()).collect();
    assert!(
        !web_nodes.contains(&other[0].spec.node),
        "host port shared on one node"
    );
    controller.stop().await;
}

fn reserving(replicas: i64, memory: &str) -> ServiceSpec {
    let mut spec = replicated(replicas);
    spec.resources.reservations.memory = Some(memory.parse().unwrap());
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservations_should_wait_for_capacity_and_go_on_when_it_frees_up() {
    let (_etcd, store) = etcd().await;
    let cap = |gi: u64| {
        Some(NodeCapacity {
            cpus: Cpus(2000),
            memory: Memory(gi << 30),
        })
    };
    let mut nodes = vec![];
    for (i, name) in ["node-a", "node-b"].iter().enumerate() {
        nodes.push(
            HollowNode::start_with_capacity(
                &store,
                name,
                i as u8 + 1,
                &[],
                Duration::from_secs(5),
                cap(1),
            )
            .await,
        );
    }
    let node = store
        .get_named::<NodeSpec>("node-a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        node.status.capacity,
        cap(1),
        "the agent reports its capacity"
    );
    let controller = Controller::start(store.clone(), config());
    // 768Mi each: one per node.
    service(&store, "hog", reserving(2, "768Mi")).await;
    let hogs = wait_running(&store, "hog", 2, T).await;
    assert_eq!(per_node(&hogs).len(), 2);
    service(&store, "api", reserving(1, "512Mi")).await;
    let pending = wait_for(T, "api pending with a reason", || async {
        live(&store, "api")
            .await
            .into_iter()
            .find(|t| t.spec.node.is_none() && !t.spec.pending_reason.is_empty())
    })
    .await;
    assert_eq!(
        pending.spec.pending_reason,
        "no suitable node (insufficient resources on 2 nodes: memory 512Mi wanted, at most 256Mi free)"
    );
    // Never more than a node holds, however long we wait.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(running(&store, "api").await.is_empty());

    // A hog goes: its node's memory is free again, and api is placed there.
    update_service(&store, "hog", |s| s.replicas = Some(1)).await;
    let api = wait_running(&store, "api", 1, T).await;
    let hog = wait_running(&store, "hog", 1, T).await;
    assert_ne!(api[0].spec.node, hog[0].spec.node);

    // A service bigger than any node waits until a node that can hold it joins.
    service(&store, "huge", reserving(1, "2Gi")).await;
    wait_for(T, "huge pending", || async {
        live(&store, "huge")
            .await
            .into_iter()
            .find(|t| t.spec.pending_reason.contains("memory 2Gi wanted"))
    })
    .await;
    nodes.push(
        HollowNode::start_with_capacity(&store, "node-c", 3, &[], Duration::from_secs(5), cap(4))
            .await,
    );
    let huge = wait_running(&store, "huge", 1, T).await;
    assert_eq!(huge[0].spec.node.as_deref(), Some("node-c"));
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allocation_failures_should_show_in_status_without_a_retry_loop() {
    let (_etcd, store) = etcd().await;
    let _nodes = nodes(&store, 1, Duration::from_secs(5)).await;
    let mut cfg = config();
    cfg.default_addr_pool = "10.9.0.0/23".parse().unwrap();
    cfg.resync = Duration::from_secs(60);
    let controller = Controller::start(store.clone(), cfg.clone());
    network(&store, "a", None).await;
    network(&store, "b", None).await;
    assert_eq!(
        network_phase(&store, "a", "Ready")
            .await
            .status
            .subnet
            .as_deref(),
        Some("10.9.0.0/24")
    );
    assert_eq!(
        network_phase(&store, "b", "Ready")
            .await
            .status
            .subnet
            .as_deref(),
        Some("10.9.1.0/24")
    );

    // Pool exhausted.
    network(&store, "c", None).await;
    let c = network_phase(&store, "c", "Failed").await;
    assert!(
        c.status
            .message
            .starts_with("address pool 10.9.0.0/23 is exhausted"),
        "{}",
        c.status.message
    );

    // Explicit overlapping subnet.
    network(&store, "d", Some("10.9.0.0/16")).await;
    let d = network_phase(&store, "d", "Failed").await;
    assert!(
        d.status.message.contains("overlaps subnet 10.9."),
        "{}",
        d.status.message
    );

    // No retry loop: both failures wait for a change.
    assert_no_retry_loop(&store, &cfg, &["c", "d"], &[]).await;

    // Freeing a subnet lets the waiting network through.
    store
        .delete::<NetworkSpec>(&store.keys().named::<NetworkSpec>("b"), None)
        .await
        .unwrap();
    let c = network_phase(&store, "c", "Ready").await;
    assert_eq!(c.status.subnet.as_deref(), Some("10.9.1.0/24"));

    // A network deleted while a service uses it: the service says so.
    let spec = ServiceSpec {
        networks: vec![NetworkAttachmentConfig {
            name: "a".into(),
            aliases: vec![],
        }],
        ..replicated(1)
    };
    service(&store, "api", spec).await;
    wait_running(&store, "api", 1, T).await;
    store
        .delete::<NetworkSpec>(&store.keys().named::<NetworkSpec>("a"), None)
        .await
        .unwrap();
    let cond = wait_for(T, "service condition NetworkNotFound", || async {
        let s = store
            .get_named::<ServiceSpec>("api")
            .await
            .unwrap()
            .unwrap();
        s.status
            .conditions
            .iter()
            .find(|c| c.type_ == "NetworksReady" && c.status == "False")
            .cloned()
    })
    .await;
    assert_eq!(cond.reason, "NetworkNotFound");
    assert!(
        cond.message.contains("network \"a\" does not exist"),
        "{}",
        cond.message
    );
    // The running task is left alone; no new ones are made; no retry loop.
    assert_no_retry_loop(&store, &cfg, &[], &["api"]).await;
    assert_eq!(live(&store, "api").await.len(), 1);
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_network_should_say_so_and_go_on_when_addresses_free_up() {
    let (_etcd, store) = etcd().await;
    let _nodes = nodes(&store, 2, Duration::from_secs(5)).await;
    let controller = Controller::start(store.clone(), config());
    // A /29 holds 6 hosts: the gateway, the VIP, and 4 tasks.
    network(&store, "tiny", Some("10.50.0.0/29")).await;
    let on_tiny = || {
        vec![NetworkAttachmentConfig {
            name: "tiny".into(),
            aliases: vec![],
        }]
    };
    service(
        &store,
        "api",
        ServiceSpec {
            networks: on_tiny(),
            ..replicated(6)
        },
    )
    .await;
    wait_n_running(&store, "api", 4, T).await;
    let cond = wait_for(T, "AddressesExhausted", || async {
        let s = store
            .get_named::<ServiceSpec>("api")
            .await
            .unwrap()
            .unwrap();
        s.status
            .conditions
            .iter()
            .find(|c| c.reason == "AddressesExhausted")
            .cloned()
    })
    .await;
    assert!(
        cond.message
            .contains("network \"tiny\" (10.50.0.0/29) has no free address left"),
        "{}",
        cond.message
    );
    assert_no_retry_loop(&store, &config(), &["tiny"], &["api"]).await;

    // Asking for what fits clears the condition.
    update_service(&store, "api", |s| s.replicas = Some(4)).await;
    wait_running(&store, "api", 4, T).await;
    wait_for(T, "NetworksReady again", || async {
        let s = store
            .get_named::<ServiceSpec>("api")
            .await
            .unwrap()
            .unwrap();
        s.status
            .conditions
            .iter()
            .any(|c| c.type_ == "NetworksReady" && c.status == "True")
            .then_some(())
    })
    .await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn published_ingress_ports_should_attach_tasks_to_the_ingress_network() {
    let (_etcd, store) = etcd().await;
    let _nodes = nodes(&store, 2, Duration::from_secs(5)).await;
    let controller = Controller::start(store.clone(), config());
    let port = PortConfig {
        published: 8080,
        target: 80,
        ..Default::default()
    };
    service(
        &store,
        "web",
        ServiceSpec {
            ports: vec![port.clone()],
            ..replicated(2)
        },
    )
    .await;
    let tasks = wait_running(&store, "web", 2, T).await;
    for t in &tasks {
        assert_eq!(t.spec.attachments.len(), 1);
        assert_eq!(t.spec.attachments[0].network, "ingress");
        assert!(
            t.spec.attachments[0].address.starts_with("10.255.")
                && t.spec.attachments[0].address.ends_with("/16")
        );
    }
    let ep = wait_for(T, "ingress endpoints", || async {
        let key = format!("{}/endpoints/ingress/web", store.keys().root());
        let ep = store
            .get::<shoal_api_types::EndpointsSpec>(&key)
            .await
            .unwrap()?;
        (ep.spec.tasks.len() == 2).then_some(ep)
    })
    .await;
    assert_eq!(ep.spec.ports, vec![port]);
    let svc = store
        .get_named::<ServiceSpec>("web")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(svc.status.virtual_ips.len(), 1);
    assert_eq!(svc.status.virtual_ips[0].network, "ingress");
    assert_eq!(
        ep.spec.vip.as_deref(),
        Some(svc.status.virtual_ips[0].addr.as_str())
    );
    controller.stop().await;
}
