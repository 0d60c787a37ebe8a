//! The agent's per-network Endpoints watch against a real etcd: the union holds the
//! Endpoints of the networks the node's tasks are on (and of the networks the runtime always
//! needs), follows their changes, ignores every other network, and gains or loses a network
//! as the first task on it comes or the last one goes. The node's tasks are fed through the
//! same channel the agent's task watch fills.

mod agent_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use agent_support::{etcd, eventually};
use shoal_api_types::endpoints::{EndpointTask, Endpoints, EndpointsSpec};
use shoal_api_types::{Task, TaskAttachment, TaskState};
use shoal_node_agent::agent::endpoints_watch::watch_endpoints;
use shoal_store::{Cache, Store};
use tokio::sync::watch;

fn endpoints(network: &str, service: &str, ips: &[&str]) -> Endpoints {
    EndpointsSpec::vip(network, service, "10.9.0.100")
        .tasks(
            ips.iter()
                .map(|ip| EndpointTask::new(&format!("{service}.{ip}"), ip).on("198.19.0.2")),
        )
        .object()
}

fn task(id: &str, networks: &[&str]) -> Task {
    let mut t = Task::new(id, Default::default());
    t.status.state = TaskState::Running;
    t.spec.attachments = networks
        .iter()
        .map(|n| TaskAttachment {
            network: n.to_string(),
            ..Default::default()
        })
        .collect();
    t
}

fn tasks(list: &[Task]) -> Option<BTreeMap<String, Task>> {
    Some(
        list.iter()
            .map(|t| (t.metadata.name.clone(), t.clone()))
            .collect(),
    )
}

/// The union's objects as `name -> task IPs`, once it is published.
fn view(rx: &watch::Receiver<Cache<EndpointsSpec>>) -> Option<BTreeMap<String, Vec<String>>> {
    rx.borrow().as_ref().map(|c| {
        c.iter()
            .map(|(n, e)| {
                (
                    n.clone(),
                    e.spec.tasks.iter().map(|t| t.ip.clone()).collect(),
                )
            })
            .collect()
    })
}

async fn union_is(
    rx: &watch::Receiver<Cache<EndpointsSpec>>,
    what: &str,
    want: &[(&str, &[&str])],
) {
    let want: BTreeMap<String, Vec<String>> = want
        .iter()
        .map(|(n, ips)| (n.to_string(), ips.iter().map(|s| s.to_string()).collect()))
        .collect();
    eventually(what, || {
        let done = view(rx).as_ref() == Some(&want);
        async move { done.then_some(()) }
    })
    .await;
}

async fn put(store: &Store, e: &Endpoints) {
    let key = store.keys().key(e);
    match store
        .get::<EndpointsSpec>(&key)
        .await
        .expect("read endpoints")
    {
        Some(old) => {
            let mut new = e.clone();
            new.metadata = old.metadata;
            store.update(&new).await.expect("update endpoints");
        }
        None => {
            store.create(e).await.expect("create endpoints");
        }
    }
}

#[tokio::test]
async fn agent_should_watch_the_endpoints_of_only_the_networks_its_tasks_are_on() {
    let (_etcd, store) = etcd().await;
    put(&store, &endpoints("front", "web", &["10.1.0.2"])).await;
    put(&store, &endpoints("back", "db", &["10.2.0.2"])).await;
    put(&store, &endpoints("ingress", "web", &["10.255.0.2"])).await;

    let (desired_tx, desired_rx) = watch::channel(None);
    let (tx, rx) = watch::channel(None);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let watching = tokio::spawn(watch_endpoints(
        store.clone(),
        Duration::from_secs(60),
        desired_rx,
        vec!["ingress".to_string()],
        tx,
        shutdown_rx,
    ));

    assert!(
        view(&rx).is_none(),
        "nothing before the node's tasks are listed"
    );
    desired_tx.send_replace(tasks(&[task("t1", &["front"])]));
    union_is(
        &rx,
        "front and ingress",
        &[
            ("front.web", &["10.1.0.2"]),
            ("ingress.web", &["10.255.0.2"]),
        ],
    )
    .await;

    // A change on another network is not seen; one on a watched network is.
    put(&store, &endpoints("back", "db", &["10.2.0.2", "10.2.0.3"])).await;
    put(
        &store,
        &endpoints("front", "web", &["10.1.0.2", "10.1.0.3"]),
    )
    .await;
    union_is(
        &rx,
        "front's change",
        &[
            ("front.web", &["10.1.0.2", "10.1.0.3"]),
            ("ingress.web", &["10.255.0.2"]),
        ],
    )
    .await;
    assert!(!rx.borrow().as_ref().unwrap().contains_key("back.db"));

    // The first task on `back` brings its Endpoints, as they are now.
    desired_tx.send_replace(tasks(&[task("t1", &["front"]), task("t2", &["back"])]));
    union_is(
        &rx,
        "back joined",
        &[
            ("back.db", &["10.2.0.2", "10.2.0.3"]),
            ("front.web", &["10.1.0.2", "10.1.0.3"]),
            ("ingress.web", &["10.255.0.2"]),
        ],
    )
    .await;
    put(&store, &endpoints("back", "cache", &["10.2.0.9"])).await;
    union_is(
        &rx,
        "back's new service",
        &[
            ("back.cache", &["10.2.0.9"]),
            ("back.db", &["10.2.0.2", "10.2.0.3"]),
            ("front.web", &["10.1.0.2", "10.1.0.3"]),
            ("ingress.web", &["10.255.0.2"]),
        ],
    )
    .await;

    // The last task on `front` ending takes front away; `ingress` stays.
    let mut ended = task("t1", &["front"]);
    ended.status.state = TaskState::Complete;
    desired_tx.send_replace(tasks(&[ended, task("t2", &["back"])]));
    union_is(
        &rx,
        "front left",
        &[
            ("back.cache", &["10.2.0.9"]),
            ("back.db", &["10.2.0.2", "10.2.0.3"]),
            ("ingress.web", &["10.255.0.2"]),
        ],
    )
    .await;

    // Changes made while `front` was not watched are there when it is watched again, and a
    // deletion on a watched network is seen.
    put(&store, &endpoints("front", "web", &["10.1.0.4"])).await;
    let cache = store.keys().key(&endpoints("back", "cache", &[]));
    store
        .delete::<EndpointsSpec>(&cache, None)
        .await
        .expect("delete back.cache");
    desired_tx.send_replace(tasks(&[task("t2", &["back"]), task("t3", &["front"])]));
    union_is(
        &rx,
        "front again, back.cache gone",
        &[
            ("back.db", &["10.2.0.2", "10.2.0.3"]),
            ("front.web", &["10.1.0.4"]),
            ("ingress.web", &["10.255.0.2"]),
        ],
    )
    .await;
    let names: BTreeSet<String> = rx.borrow().as_ref().unwrap().keys().cloned().collect();
    assert_eq!(names.len(), 3);

    shutdown_tx.send_replace(true);
    watching.await.expect("the watch stops on shutdown");
}
