//! What the leader keeps present by itself: the `ingress` and `gwbridge` networks (created
//! again at once when deleted from etcd behind the API's back, with the same addressing) and the
//! ClusterSettings object (`--reserved-ports`), both watch-driven, not only at the start of
//! a term or at a resync.

mod common;

use std::time::Duration;

use common::*;
use shoal_api_types::network::INGRESS_NETWORK;
use shoal_api_types::settings::{ClusterSettingsSpec, ReservedPort};
use shoal_api_types::{ClusterSettings, Network, NetworkSpec};
use shoal_controller::config::ManagerConfig;
use shoal_store::Store;

/// Long resyncs: whatever comes back within seconds came back from the watch.
fn watch_driven() -> ManagerConfig {
    ManagerConfig {
        resync: Duration::from_secs(600),
        reserved_ports: vec![ReservedPort::udp(4789), ReservedPort::tcp(23790)],
        ..config()
    }
}

async fn ready_ingress(store: &Store, other_than_uid: &str) -> Network {
    wait_for(
        Duration::from_secs(5),
        "the ingress network Ready",
        || async {
            store
                .get_named::<NetworkSpec>(INGRESS_NETWORK)
                .await
                .ok()
                .flatten()
                .filter(|n| n.status.phase == "Ready" && n.metadata.uid != other_than_uid)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_should_create_the_ingress_network_again_when_it_is_deleted_in_etcd() {
    let (_etcd, store) = etcd().await;
    let controller = Controller::start(store.clone(), watch_driven());
    let first = ready_ingress(&store, "").await;
    assert_eq!(first.status.vni, Some(4096));

    // As `etcdctl del <root>/networks/ingress` would.
    let key = store.keys().named::<NetworkSpec>(INGRESS_NETWORK);
    assert!(store.delete_raw(&key).await.unwrap());
    let again = ready_ingress(&store, &first.metadata.uid).await;
    assert!(again.spec.ingress);
    assert_eq!(again.status.subnet, first.status.subnet, "same subnet");
    assert_eq!(again.status.vni, Some(4096), "same VNI");
    assert_eq!(again.status.gateway, first.status.gateway);

    // Twice in a row, too.
    assert!(store.delete_raw(&key).await.unwrap());
    ready_ingress(&store, &again.metadata.uid).await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_should_keep_the_gateway_bridge_network_local_and_out_of_the_pool() {
    use shoal_api_types::network::GATEWAY_BRIDGE_NETWORK;
    let (_etcd, store) = etcd().await;
    let controller = Controller::start(store.clone(), watch_driven());
    let ready = |uid: String| {
        let store = store.clone();
        async move {
            wait_for(Duration::from_secs(5), "gwbridge Ready", || async {
                store
                    .get_named::<NetworkSpec>(GATEWAY_BRIDGE_NETWORK)
                    .await
                    .ok()
                    .flatten()
                    .filter(|n| n.status.phase == "Ready" && n.metadata.uid != uid)
            })
            .await
        }
    };
    let gw = ready(String::new()).await;
    assert_eq!(gw.spec.driver, "bridge");
    assert_eq!(
        (
            gw.status.subnet.as_deref(),
            gw.status.gateway.as_deref(),
            gw.status.vni,
            gw.status.scope.as_str()
        ),
        (Some("172.18.0.0/16"), Some("172.18.0.1"), None, "local")
    );
    // Its subnet is claimed like any network's, so no overlay is given it.
    let claim = store
        .get_raw(&store.keys().subnet(&"172.18.0.0/16".parse().unwrap()))
        .await
        .unwrap()
        .expect("the subnet claim");
    assert_eq!(claim.value, GATEWAY_BRIDGE_NETWORK.as_bytes());
    // Deleted by hand: back at once.
    let key = store.keys().named::<NetworkSpec>(GATEWAY_BRIDGE_NETWORK);
    assert!(store.delete_raw(&key).await.unwrap());
    let again = ready(gw.metadata.uid.clone()).await;
    assert_eq!(again.status.subnet, gw.status.subnet);
    controller.stop().await;
}

async fn settings(store: &Store) -> Option<ClusterSettings> {
    store
        .get(&store.keys().cluster_settings())
        .await
        .expect("read settings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_should_publish_the_reserved_ports_and_keep_them_published() {
    let (_etcd, store) = etcd().await;
    let controller = Controller::start(store.clone(), watch_driven());
    let want = ClusterSettingsSpec::with_reserved_ports([
        ReservedPort::udp(4789),
        ReservedPort::tcp(23790),
    ]);
    let published = wait_for(Duration::from_secs(5), "the settings published", || async {
        settings(&store).await.filter(|s| s.spec == want)
    })
    .await;

    // Edited by hand: put back.
    let mut edited = published.clone();
    edited.spec = ClusterSettingsSpec::default();
    store.update(&edited).await.unwrap();
    wait_for(Duration::from_secs(5), "the settings restored", || async {
        settings(&store).await.filter(|s| {
            s.spec == want && s.metadata.resource_version != published.metadata.resource_version
        })
    })
    .await;
    // Deleted by hand: put back.
    assert!(store
        .delete_raw(&store.keys().cluster_settings())
        .await
        .unwrap());
    wait_for(Duration::from_secs(5), "the settings recreated", || async {
        settings(&store).await.filter(|s| s.spec == want)
    })
    .await;
    // And then left alone.
    let writes = writes_during(&store, Duration::from_secs(1)).await;
    assert!(
        !writes.iter().any(|k| k.contains("/settings/")),
        "{writes:?}"
    );
    controller.stop().await;
}
