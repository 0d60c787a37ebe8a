//! `Store::set_connect` (a node agent's certificate renewal) against a real etcd: the
//! store's clients move to the new connection, and what was running keeps running — even
//! when the old connection dies right after the swap.

use std::net::SocketAddr;
use std::time::Duration;

use shoal_api_types::{Network, NetworkSpec};
use shoal_store::testing::TestEtcd;
use shoal_store::{reflect, Cache, Connect, StoreError, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A TCP proxy to `upstream`; dropping it closes its listener and every connection through
/// it, as a dead etcd connection would be.
struct Proxy {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn to(upstream: &str) -> Proxy {
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // Dropped (aborting every connection) when this task is aborted.
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy { addr, task }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn network(name: &str) -> Network {
    Network::new(name, NetworkSpec::default())
}

/// A running cache of `store`'s networks (`reflect` over a `Watcher`).
fn network_cache(
    store: &shoal_store::Store,
) -> (JoinHandle<()>, watch::Receiver<Cache<NetworkSpec>>) {
    let (tx, rx) = watch::channel::<Cache<NetworkSpec>>(None);
    let prefix = store.keys().prefix::<NetworkSpec>();
    let reflector = tokio::spawn(reflect(Watcher::new(store.clone(), prefix), tx));
    (reflector, rx)
}

/// Waits up to `secs` for the cache to hold the network `name`; fails with `what`.
async fn cached(rx: &mut watch::Receiver<Cache<NetworkSpec>>, name: &str, secs: u64, what: &str) {
    tokio::time::timeout(
        Duration::from_secs(secs),
        rx.wait_for(|c| c.as_ref().is_some_and(|c| c.contains_key(name))),
    )
    .await
    .expect(what)
    .unwrap();
}

#[tokio::test]
async fn set_connect_should_keep_a_running_watch_and_lease_alive_when_the_old_connection_dies() {
    let etcd = TestEtcd::start().await;
    let old = Proxy::to(&etcd.endpoint).await;
    let store = shoal_store::Store::connect(&Connect {
        endpoints: vec![old.endpoint()],
        ..etcd.connect()
    })
    .await
    .unwrap();
    let writer = etcd.store().await;

    // A running cache and a lease kept alive, both on the old connection.
    let (reflector, mut rx) = network_cache(&store);
    let lease = store.grant_lease(Duration::from_secs(2)).await.unwrap();
    let keeper = store.keep_alive(lease);
    let key = store.keys().node_lease("node-1");
    store.put_with_lease(&key, "alive", lease).await.unwrap();
    writer.create(&network("before")).await.unwrap();
    cached(&mut rx, "before", 5, "the cache follows changes").await;

    // A new client (renewed certificate), then the old connection dies.
    let new = Proxy::to(&etcd.endpoint).await;
    store
        .set_connect(Connect {
            endpoints: vec![new.endpoint()],
            ..etcd.connect()
        })
        .await
        .unwrap();
    drop(old);

    // Several lease TTLs later the lease is still there, and the cache still follows.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!keeper.is_lost(), "the lease keeper lost the lease");
    let kv = writer.get_raw(&key).await.unwrap().expect("liveness key");
    assert_eq!(kv.lease, lease.id);
    writer.create(&network("after")).await.unwrap();
    cached(
        &mut rx,
        "after",
        10,
        "the cache follows changes made after the swap",
    )
    .await;
    // New requests go through the new client.
    assert!(store
        .get_named::<NetworkSpec>("after")
        .await
        .unwrap()
        .is_some());
    reflector.abort();
}

#[tokio::test]
async fn set_connect_should_keep_the_current_client_when_the_new_one_cannot_connect() {
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    let dead = format!("http://127.0.0.1:{}", shoal_testkit::free_port());
    let err = store
        .set_connect(Connect {
            endpoints: vec![dead],
            connect_timeout: Duration::from_millis(500),
            ..Connect::default()
        })
        .await
        .unwrap_err();
    assert!(err.is_temporary(), "{err}");
    store.create(&network("still-works")).await.unwrap();
    let err = store
        .set_connect(Connect {
            root: Some("/elsewhere/v1".into()),
            ..etcd.connect()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidConnect(_)), "{err}");
}

#[tokio::test]
async fn a_store_with_several_endpoints_should_start_on_one_that_answers() {
    let etcd = TestEtcd::start().await;
    let dead = format!("http://127.0.0.1:{}", shoal_testkit::free_port());
    let store = shoal_store::Store::connect(&Connect {
        endpoints: vec![dead, etcd.endpoint.clone()],
        ..etcd.connect()
    })
    .await
    .expect("the second endpoint answers");
    store.create(&network("n")).await.unwrap();
}

#[tokio::test]
async fn a_store_should_move_to_another_endpoint_when_its_endpoint_dies() {
    // Two endpoints of one etcd: a proxy (pinned first) and etcd itself. Killing the
    // proxy is the pinned member dying.
    let etcd = TestEtcd::start().await;
    let first = Proxy::to(&etcd.endpoint).await;
    let store = shoal_store::Store::connect(&Connect {
        endpoints: vec![first.endpoint(), etcd.endpoint.clone()],
        ..etcd.connect()
    })
    .await
    .unwrap();
    let writer = etcd.store().await;
    let (reflector, mut rx) = network_cache(&store);
    // The node agents' lease TTL.
    let lease = store.grant_lease(Duration::from_secs(5)).await.unwrap();
    let keeper = store.keep_alive(lease);
    writer.create(&network("before")).await.unwrap();
    cached(&mut rx, "before", 5, "the cache follows changes").await;

    drop(first);

    // Within a few probe periods requests succeed again, on the other endpoint.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match store.revision().await {
            Ok(_) => break,
            Err(e) => {
                assert!(e.is_temporary(), "{e}");
                assert!(tokio::time::Instant::now() < deadline, "still failing: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    store.create(&network("after")).await.unwrap();
    cached(
        &mut rx,
        "after",
        10,
        "the cache follows changes after the move",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!keeper.is_lost(), "the lease was lost in the move");
    reflector.abort();
}

#[tokio::test]
async fn a_lease_keeper_should_keep_its_lease_through_an_outage_shorter_than_the_ttl() {
    // etcd restarting (or the store moving to another member) breaks the keep-alive stream;
    // the lease is only lost when no renewal succeeded for a whole TTL.
    let mut etcd = TestEtcd::private().await;
    let store = etcd.store().await;
    let lease = store.grant_lease(Duration::from_secs(10)).await.unwrap();
    let keeper = store.keep_alive(lease);
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    etcd.resume().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !keeper.is_lost(),
        "the keeper gave up during a short outage"
    );
    let key = store.keys().node_lease("node-1");
    store
        .put_with_lease(&key, "alive", lease)
        .await
        .expect("the lease is alive in etcd");
}
