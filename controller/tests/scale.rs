//! Replicated services spread over nodes and follow scaling; endpoints, VIPs and status
//! follow the tasks; a deleted service is cleaned up.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use shoal_api_types::{
    EndpointsSpec, NetworkAttachmentConfig, ServiceSpec, Task, TaskSpec, TaskState,
};
use shoal_store::Event;

const T: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicated_service_should_spread_over_nodes_and_follow_scaling() {
    let (_etcd, store) = etcd().await;
    let _nodes = nodes(&store, 3, Duration::from_secs(5)).await;
    let controller = Controller::start(store.clone(), config());
    network(&store, "appnet", None).await;
    let spec = ServiceSpec {
        networks: vec![NetworkAttachmentConfig {
            name: "appnet".into(),
            aliases: vec!["web".into()],
        }],
        ..replicated(6)
    };
    service(&store, "api", spec).await;

    let tasks = wait_running(&store, "api", 6, T).await;
    assert_eq!(
        per_node(&tasks),
        BTreeMap::from([
            ("node-1".into(), 2),
            ("node-2".into(), 2),
            ("node-3".into(), 2)
        ])
    );
    let slots: BTreeSet<u64> = tasks.iter().filter_map(|t| t.spec.slot).collect();
    assert_eq!(slots, (1..=6).collect());
    let net = network_phase(&store, "appnet", "Ready").await;
    assert_eq!(net.status.subnet.as_deref(), Some("10.0.0.0/24"));
    assert_eq!(net.status.gateway.as_deref(), Some("10.0.0.1"));
    assert_eq!(net.status.vni, Some(4097));
    let ingress = network_phase(&store, "ingress", "Ready").await;
    assert_eq!(
        (ingress.status.subnet.as_deref(), ingress.status.vni),
        (Some("10.255.0.0/16"), Some(4096))
    );

    // Status and endpoints follow.
    let svc = wait_for(T, "service status", || async {
        let s = store
            .get_named::<ServiceSpec>("api")
            .await
            .unwrap()
            .unwrap();
        (s.status.running_tasks == 6 && s.status.desired_tasks == 6).then_some(s)
    })
    .await;
    assert_eq!(svc.status.virtual_ips.len(), 1);
    let vip = svc.status.virtual_ips[0].addr.clone();
    assert!(
        svc.status
            .conditions
            .iter()
            .any(|c| c.type_ == "Converged" && c.status == "True"),
        "{:?}",
        svc.status.conditions
    );
    let ep = wait_for(T, "endpoints with 6 tasks", || async {
        let ep = store
            .get::<EndpointsSpec>(&format!("{}/endpoints/appnet/api", store.keys().root()))
            .await
            .unwrap()?;
        (ep.spec.tasks.len() == 6).then_some(ep)
    })
    .await;
    assert_eq!(ep.spec.vip.as_deref(), Some(vip.as_str()));
    assert_eq!(ep.spec.aliases, vec!["web"]);
    assert!(ep
        .spec
        .tasks
        .iter()
        .all(|t| t.ready && t.node_address.starts_with("198.18.0.")));
    let ips: BTreeSet<&str> = ep.spec.tasks.iter().map(|t| t.ip.as_str()).collect();
    assert_eq!(ips.len(), 6);
    assert!(!ips.contains(vip.as_str()) && !ips.contains("10.0.0.1"));

    // Scale down to 2: the highest slots go.
    update_service(&store, "api", |s| s.replicas = Some(2)).await;
    let tasks = wait_running(&store, "api", 2, T).await;
    let slots: BTreeSet<u64> = tasks.iter().filter_map(|t| t.spec.slot).collect();
    assert_eq!(slots, BTreeSet::from([1, 2]));

    // Scale up to 9: 3 per node.
    update_service(&store, "api", |s| s.replicas = Some(9)).await;
    let tasks = wait_running(&store, "api", 9, T).await;
    assert_eq!(
        per_node(&tasks),
        BTreeMap::from([
            ("node-1".into(), 3),
            ("node-2".into(), 3),
            ("node-3".into(), 3)
        ])
    );
    let slots: BTreeSet<u64> = tasks.iter().filter_map(|t| t.spec.slot).collect();
    assert_eq!(slots, (1..=9).collect());

    // Delete: tasks stopped and removed, VIP released, endpoints gone.
    store
        .delete::<ServiceSpec>(&store.keys().named::<ServiceSpec>("api"), None)
        .await
        .unwrap();
    wait_for(T, "tasks removed", || async {
        service_tasks(&store, "api").await.is_empty().then_some(())
    })
    .await;
    wait_for(T, "endpoints removed and addresses released", || async {
        let ep = store
            .list_prefix::<EndpointsSpec>(&store.keys().network_endpoints("appnet"))
            .await
            .unwrap()
            .0;
        let ips = store
            .count(&store.keys().network_ips("appnet"))
            .await
            .unwrap();
        (ep.is_empty() && ips == 0).then_some(())
    })
    .await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_image_should_roll_out_one_task_at_a_time() {
    let (_etcd, store) = etcd().await;
    let _nodes = nodes(&store, 3, Duration::from_secs(5)).await;
    let controller = Controller::start(store.clone(), config());
    service(&store, "api", replicated(3)).await;
    let old = wait_running(&store, "api", 3, T).await;
    // Every task change from here on, with its revision.
    let (before, from) = store.list::<TaskSpec>().await.unwrap();
    let mut watch = store
        .watch::<TaskSpec>(&store.keys().prefix::<TaskSpec>(), from + 1)
        .await
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Ok(ev) = watch.next().await {
                seen.lock().unwrap().push(ev);
            }
        }
    });
    update_service(&store, "api", |s| s.image = "busybox:2".into()).await;
    let new = wait_for(T, "3 running tasks of the new image", || async {
        let r = running(&store, "api").await;
        let live = live(&store, "api").await;
        (r.len() == 3 && live.len() == 3 && r.iter().all(|t| t.spec.image == "busybox:2"))
            .then_some(r)
    })
    .await;
    let slots: BTreeSet<u64> = new.iter().filter_map(|t| t.spec.slot).collect();
    assert_eq!(slots, BTreeSet::from([1, 2, 3]));
    // The old tasks are history, stopped; the new ones were started one after another.
    let all = service_tasks(&store, "api").await;
    for o in &old {
        let t = all
            .iter()
            .find(|t| t.metadata.name == o.metadata.name)
            .expect("kept as history");
        assert_eq!(t.status.state, shoal_api_types::TaskState::Shutdown);
    }

    // One at a time: at no revision is more than one slot being replaced — a slot is being
    // replaced while its new task is wanted running but not running yet, or its old task is
    // told to stop but has not stopped.
    let last = all
        .iter()
        .filter_map(|t| t.metadata.revision())
        .max()
        .unwrap();
    wait_for(T, "the watch to deliver every task change", || async {
        seen.lock()
            .unwrap()
            .last()
            .is_some_and(|e: &Event<TaskSpec>| e.revision() >= last)
            .then_some(())
    })
    .await;
    recorder.abort();
    let events = std::mem::take(&mut *seen.lock().unwrap());
    let mut state: BTreeMap<String, Task> = before
        .into_iter()
        .map(|t| (t.metadata.name.clone(), t))
        .collect();
    let in_flight = |state: &BTreeMap<String, Task>| -> BTreeSet<u64> {
        state
            .values()
            .filter(|t| t.spec.service == "api")
            .filter(|t| {
                let new = t.spec.image == "busybox:2";
                (new && t.spec.desired_state == TaskState::Running
                    && t.status.state != TaskState::Running)
                    || (!new
                        && t.spec.desired_state != TaskState::Running
                        && !t.status.state.is_terminal())
            })
            .filter_map(|t| t.spec.slot)
            .collect()
    };
    let mut replaced = BTreeSet::new();
    let mut i = 0;
    while i < events.len() {
        let rev = events[i].revision();
        // All changes of one revision (one transaction) at once.
        while i < events.len() && events[i].revision() == rev {
            match &events[i] {
                Event::Added(t) | Event::Modified(t) => {
                    state.insert(t.metadata.name.clone(), t.clone());
                }
                Event::Deleted(t) => {
                    state.remove(&t.metadata.name);
                }
                Event::Progress(_) => {}
            }
            i += 1;
        }
        let slots = in_flight(&state);
        assert!(
            slots.len() <= 1,
            "slots {slots:?} replaced at once at revision {rev}"
        );
        replaced.extend(slots);
    }
    assert_eq!(
        replaced,
        BTreeSet::from([1, 2, 3]),
        "the watch saw every slot being replaced"
    );
    controller.stop().await;
}

/// The stored Endpoints slices of `service` on `network`: (slice number, task count), by
/// name order.
async fn slices(store: &shoal_store::Store, network: &str, service: &str) -> Vec<(u32, usize)> {
    let mut s: Vec<(u32, usize)> = store
        .list_prefix::<EndpointsSpec>(&store.keys().network_endpoints(network))
        .await
        .unwrap()
        .0
        .into_iter()
        .filter(|e| e.spec.service == service)
        .map(|e| {
            assert_eq!(
                e.metadata.name,
                shoal_api_types::endpoints::slice_name(network, service, e.spec.slice)
            );
            (e.spec.slice, e.spec.tasks.len())
        })
        .collect();
    s.sort();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_should_be_listed_in_slices_that_follow_scaling_and_deletion() {
    let (_etcd, store) = etcd().await;
    let _nodes = nodes(&store, 2, Duration::from_secs(5)).await;
    let mut cfg = config();
    cfg.endpoints_slice_size = 2;
    let controller = Controller::start(store.clone(), cfg);
    network(&store, "appnet", None).await;
    let spec = ServiceSpec {
        networks: vec![NetworkAttachmentConfig {
            name: "appnet".into(),
            aliases: vec![],
        }],
        ..replicated(5)
    };
    service(&store, "api", spec).await;
    wait_running(&store, "api", 5, T).await;
    wait_for(T, "3 slices of 2, 2 and 1 tasks", || async {
        let s = slices(&store, "appnet", "api").await;
        (s.iter().map(|(_, n)| n).sum::<usize>() == 5).then_some(s)
    })
    .await;
    assert_eq!(slices(&store, "appnet", "api").await.len(), 3);

    // Scaled to 1: the emptied slices above 0 go; slice 0 stays (with the VIP).
    update_service(&store, "api", |s| s.replicas = Some(1)).await;
    wait_running(&store, "api", 1, T).await;
    wait_for(T, "the slices emptied by scaling down deleted", || async {
        let s = slices(&store, "appnet", "api").await;
        (s.iter().map(|(_, n)| n).sum::<usize>() == 1 && s.iter().all(|(n, c)| *n == 0 || *c > 0))
            .then_some(s)
    })
    .await;

    // Deleted: every slice goes.
    store
        .delete::<ServiceSpec>(&store.keys().named::<ServiceSpec>("api"), None)
        .await
        .unwrap();
    wait_for(T, "every slice removed", || async {
        slices(&store, "appnet", "api")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    controller.stop().await;
}
