//! Shared helpers of the controller's integration tests: a real etcd, controllers started
//! in-process, and hollow nodes that follow the agent contract against the store directly
//! (register the Node, keep a lease-bound liveness key, report tasks running or shut down)
//! without containers. The controller does not depend on the agent crate, so this is the
//! test-side stand-in for `shoal-agent --runtime hollow`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use shoal_api_types::{
    Network, NetworkSpec, Node, NodeSpec, NodeState, NodeStatus, Service, ServiceSpec, Task,
    TaskSpec, TaskState,
};
use shoal_controller::config::ManagerConfig;
use shoal_controller::context::{Context, Queues};
use shoal_controller::manager;
use shoal_controller::reconcile::{Action, Cache};
use shoal_controller::{allocator, orchestrator};
use shoal_store::testing::TestEtcd;
use shoal_store::{Event, Lease, LeaseKeeper, RawEvent, Store, Watcher, Writer};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The shared test etcd (`SHOAL_TEST_ETCD`) or a private one, and a store on this test's
/// own key root.
pub async fn etcd() -> (TestEtcd, Store) {
    init_tracing();
    let etcd = TestEtcd::start().await;
    let store = etcd.store().await;
    (etcd, store)
}

/// Always a private etcd (tests that compact history).
pub async fn private_etcd() -> (TestEtcd, Store) {
    init_tracing();
    let etcd = TestEtcd::private().await;
    let store = etcd.store().await;
    (etcd, store)
}

/// The keys written below this test's key root during `d` (other tests sharing etcd do
/// not count), in order.
pub async fn writes_during(store: &Store, d: Duration) -> Vec<String> {
    let prefix = format!("{}/", store.keys().root());
    let mut watch = store.watch_raw(&prefix, 0).await.expect("watch");
    let mut keys = Vec::new();
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(Ok((events, _))) = tokio::time::timeout_at(deadline, watch.next()).await {
        keys.extend(events.into_iter().map(|e| match e {
            RawEvent::Put(kv) => kv.key,
            RawEvent::Delete { key, .. } => key,
        }));
    }
    keys
}

/// A reconcile context of the test's own over the store (a cache fed by a watcher from the
/// current revision, unfenced writes) and `config`, for calling a reconciler directly
/// beside a running controller with the same settings. Reconciles are idempotent: on a
/// settled store they write nothing. Dropping it stops the watcher.
pub struct DirectContext {
    pub ctx: Arc<Context>,
    feeder: JoinHandle<()>,
}

impl DirectContext {
    pub async fn start(store: &Store, config: &ManagerConfig) -> DirectContext {
        let keys = store.keys().clone();
        let cache = Arc::new(Cache::new(&keys));
        let mut watcher = Watcher::new(store.clone(), format!("{}/", keys.root()));
        cache.apply(watcher.next().await);
        let feeder = tokio::spawn({
            let cache = cache.clone();
            async move {
                loop {
                    cache.apply(watcher.next().await);
                }
            }
        });
        let ctx = Arc::new(Context {
            store: store.clone(),
            keys,
            cache,
            writer: Writer::new(store.clone(), None),
            config: config.clone(),
            queues: Queues::default(),
            ip_cursors: Default::default(),
            lease_deadlines: Default::default(),
        });
        DirectContext { ctx, feeder }
    }
}

impl Drop for DirectContext {
    fn drop(&mut self) {
        self.feeder.abort();
    }
}

/// Asserts that the controller (running with `config`) has settled on a failure and does
/// not retry it in a loop. The runner retries a key only when its reconcile returns an
/// error (backoff) or asks to be requeued, so a reconcile of each named network and
/// service, run now, must return `Ok(AwaitChange)`; and nothing is written for a while (at
/// least one resync of the test settings): a resync that rewrote a status, or a loop that
/// writes, would show.
pub async fn assert_no_retry_loop(
    store: &Store,
    config: &ManagerConfig,
    networks: &[&str],
    services: &[&str],
) {
    let direct = DirectContext::start(store, config).await;
    for n in networks {
        let r = allocator::reconcile_network(n.to_string(), direct.ctx.clone()).await;
        assert!(
            matches!(r, Ok(Action::AwaitChange)),
            "network {n}: reconcile returned {r:?}: the runner would retry it"
        );
    }
    for s in services {
        let r = orchestrator::reconcile_service(s.to_string(), direct.ctx.clone()).await;
        assert!(
            matches!(r, Ok(Action::AwaitChange)),
            "service {s}: reconcile returned {r:?}: the runner would retry it"
        );
    }
    let window = config.resync.min(Duration::from_secs(3)) + Duration::from_secs(1);
    let writes = writes_during(store, window).await;
    assert!(
        writes.is_empty(),
        "the controller keeps writing ({} writes in {window:?}): {writes:?}",
        writes.len()
    );
}

/// Settings with short timers for tests.
pub fn config() -> ManagerConfig {
    ManagerConfig {
        leader_lease_ttl: Duration::from_secs(2),
        resync: Duration::from_secs(3),
        ..ManagerConfig::default()
    }
}

/// A controller running in this process.
pub struct Controller {
    pub handle: JoinHandle<anyhow::Result<()>>,
    shutdown: watch::Sender<bool>,
}

impl Controller {
    /// Starts `manager::run` on `store`.
    pub fn start(store: Store, config: ManagerConfig) -> Controller {
        let (shutdown, rx) = watch::channel(false);
        let handle = tokio::spawn(manager::run(store, config, rx));
        Controller { handle, shutdown }
    }

    /// Stops it gracefully (resigning leadership).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.handle.await;
    }

    /// Kills it: nothing more runs, the lease is left to expire (or be revoked).
    pub fn abort(&self) {
        self.handle.abort();
    }
}

/// A hollow node: registers, keeps its lease, runs nothing, reports what it is asked.
pub struct HollowNode {
    pub name: String,
    pub lease: Lease,
    store: Store,
    keeper: Option<LeaseKeeper>,
    agent: JoinHandle<()>,
}

impl HollowNode {
    /// Registers node `name` (number `index` gives its address) with `labels`.
    pub async fn start(
        store: &Store,
        name: &str,
        index: u8,
        labels: &[(&str, &str)],
        ttl: Duration,
    ) -> HollowNode {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lease = store.grant_lease(ttl).await.expect("lease");
        let keeper = store.keep_alive(lease);
        let status = NodeStatus {
            state: NodeState::Ready,
            address: format!("198.18.0.{index}"),
            lease: format!("{:x}", lease.id),
            runtime: "hollow".into(),
            registered_at: Some(Utc::now()),
            ..Default::default()
        };
        let key = store.keys().named::<NodeSpec>(name);
        let updated = store
            .update_with::<NodeSpec>(&key, |n| {
                n.status = status.clone();
                n.spec.labels.extend(labels.clone());
                true
            })
            .await
            .expect("update node");
        if updated.is_none() {
            let mut node = Node::new(
                name,
                NodeSpec {
                    labels: labels.clone(),
                    ..Default::default()
                },
            );
            node.status = status.clone();
            store.create(&node).await.expect("register node");
        }
        store
            .put_with_lease(&store.keys().node_lease(name), "hollow", lease)
            .await
            .expect("liveness key");
        let agent = tokio::spawn(run_agent(store.clone(), name.to_string()));
        HollowNode {
            name: name.to_string(),
            lease,
            store: store.clone(),
            keeper: Some(keeper),
            agent,
        }
    }

    /// Kills the node: the agent stops and its lease is revoked (liveness key gone now).
    pub async fn kill(mut self) {
        self.agent.abort();
        self.keeper.take();
        self.store.revoke_lease(self.lease).await.expect("revoke");
    }

    /// Crashes the node: the agent stops and the lease expires on its own.
    pub fn crash(mut self) {
        self.agent.abort();
        self.keeper.take();
    }
}

impl Drop for HollowNode {
    fn drop(&mut self) {
        self.agent.abort();
    }
}

async fn run_agent(store: Store, node: String) {
    // Bounded, like a real agent's worker pool, so hundreds of tasks do not flood etcd.
    let permits = Arc::new(tokio::sync::Semaphore::new(32));
    let prefix = store.keys().node_tasks(&node);
    loop {
        let Ok((tasks, rev)) = store.list_prefix::<TaskSpec>(&prefix).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        for t in tasks {
            react(&store, &permits, t);
        }
        let Ok(mut watch) = store.watch::<TaskSpec>(&prefix, rev + 1).await else {
            continue;
        };
        while let Ok(ev) = watch.next().await {
            if let Event::Added(t) | Event::Modified(t) = ev {
                react(&store, &permits, t);
            }
        }
    }
}

/// Reports a task running (if wanted running) or shut down (if wanted stopped).
fn react(store: &Store, permits: &Arc<tokio::sync::Semaphore>, task: Task) {
    let want = match task.spec.desired_state {
        TaskState::Running if task.status.state < TaskState::Running => TaskState::Running,
        TaskState::Shutdown if !task.status.state.is_terminal() => TaskState::Shutdown,
        _ => return,
    };
    let store = store.clone();
    let permits = permits.clone();
    tokio::spawn(async move {
        let _permit = permits.acquire().await;
        let key = store.keys().key(&task);
        let _ = store
            .update_with::<TaskSpec>(&key, |t| {
                if t.status.state >= want
                    || (want == TaskState::Running && t.spec.desired_state != TaskState::Running)
                {
                    return false;
                }
                t.status.state = want;
                t.status.timestamp = Some(Utc::now());
                t.status.healthy = want == TaskState::Running;
                t.status.message = if want == TaskState::Running {
                    "started".into()
                } else {
                    "stopped".into()
                };
                true
            })
            .await;
    });
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    shoal_testkit::eventually(what, timeout, check).await
}

/// Every task.
pub async fn tasks(store: &Store) -> Vec<Task> {
    store.list::<TaskSpec>().await.expect("list tasks").0
}

/// The tasks of a service.
pub async fn service_tasks(store: &Store, service: &str) -> Vec<Task> {
    tasks(store)
        .await
        .into_iter()
        .filter(|t| t.spec.service == service)
        .collect()
}

/// Running tasks wanted running, of one service.
pub async fn running(store: &Store, service: &str) -> Vec<Task> {
    service_tasks(store, service)
        .await
        .into_iter()
        .filter(|t| {
            t.spec.desired_state == TaskState::Running && t.status.state == TaskState::Running
        })
        .collect()
}

/// Non-terminal tasks wanted running, of one service.
pub async fn live(store: &Store, service: &str) -> Vec<Task> {
    service_tasks(store, service)
        .await
        .into_iter()
        .filter(|t| t.spec.desired_state == TaskState::Running && !t.status.state.is_terminal())
        .collect()
}

/// Running tasks per node.
pub fn per_node(tasks: &[Task]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in tasks {
        *m.entry(t.spec.node.clone().unwrap_or_default())
            .or_default() += 1;
    }
    m
}

/// Waits until exactly `n` tasks of `service` run (and nothing else is live).
pub async fn wait_running(store: &Store, service: &str, n: usize, timeout: Duration) -> Vec<Task> {
    wait_for(
        timeout,
        &format!("{n} running tasks of {service}"),
        || async {
            let live = live(store, service).await;
            let running: Vec<Task> = live
                .iter()
                .filter(|t| t.status.state == TaskState::Running)
                .cloned()
                .collect();
            (running.len() == n && live.len() == n).then_some(running)
        },
    )
    .await
}

/// Waits until exactly `n` tasks of `service` run (others may be pending).
pub async fn wait_n_running(
    store: &Store,
    service: &str,
    n: usize,
    timeout: Duration,
) -> Vec<Task> {
    wait_for(
        timeout,
        &format!("{n} running tasks of {service}"),
        || async {
            let r = running(store, service).await;
            (r.len() == n).then_some(r)
        },
    )
    .await
}

/// Creates a network.
pub async fn network(store: &Store, name: &str, subnet: Option<&str>) -> Network {
    let mut n = Network::new(
        name,
        NetworkSpec {
            subnet: subnet.map(Into::into),
            ..Default::default()
        },
    );
    n.apply_defaults();
    store.create(&n).await.expect("create network")
}

/// Waits for a network's status phase.
pub async fn network_phase(store: &Store, name: &str, phase: &str) -> Network {
    wait_for(
        Duration::from_secs(10),
        &format!("network {name} {phase}"),
        || async {
            store
                .get_named::<NetworkSpec>(name)
                .await
                .ok()
                .flatten()
                .filter(|n| n.status.phase == phase)
        },
    )
    .await
}

/// Creates a service.
pub async fn service(store: &Store, name: &str, spec: ServiceSpec) -> Service {
    let mut s = Service::new(name, spec);
    s.apply_defaults();
    store.create(&s).await.expect("create service")
}

/// A replicated busybox service spec.
pub fn replicated(replicas: i64) -> ServiceSpec {
    ServiceSpec {
        image: "busybox".into(),
        replicas: Some(replicas),
        ..Default::default()
    }
}

/// Changes a service's spec.
pub async fn update_service(store: &Store, name: &str, change: impl Fn(&mut ServiceSpec) + Send) {
    let key = store.keys().named::<ServiceSpec>(name);
    store
        .update_with::<ServiceSpec>(&key, |s| {
            change(&mut s.spec);
            true
        })
        .await
        .expect("update service")
        .expect("service exists");
}

/// Starts `n` hollow nodes `node-1..node-n`.
pub async fn nodes(store: &Store, n: u8, ttl: Duration) -> Vec<HollowNode> {
    let mut v = vec![];
    for i in 1..=n {
        v.push(HollowNode::start(store, &format!("node-{i}"), i, &[], ttl).await);
    }
    v
}

/// Shared ownership of a store for closures.
pub type SharedStore = Arc<Store>;
