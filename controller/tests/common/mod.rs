//! Shared helpers of the controller's integration tests: a real etcd, controllers started
//! in-process, and hollow nodes: the node agent's real agent over its hollow runtime
//! (`shoal_node_agent::hollow`, a dev-dependency), which registers, keeps its lease and
//! reports its tasks without containers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shoal_api_types::{
    Network, NetworkSpec, Node, NodeSpec, Service, ServiceSpec, Task, TaskSpec, TaskState,
};
use shoal_controller::config::ManagerConfig;
use shoal_controller::context::{Context, Queues};
use shoal_controller::manager;
use shoal_controller::reconcile::{Action, Cache, Runner};
use shoal_controller::{allocator, orchestrator, scheduler};
use shoal_node_agent::agent::{Agent, AgentConfig, AgentHandle};
use shoal_node_agent::hollow::HollowRuntime;
use shoal_store::testing::TestEtcd;
use shoal_store::{Lease, RawEvent, Store, Watcher, Writer};
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
/// settled store they write nothing. Its scheduler queue has a runner of its own, so the
/// tasks a direct service reconcile creates are written (placed). Dropping it stops the
/// watcher and that runner.
pub struct DirectContext {
    pub ctx: Arc<Context>,
    feeder: JoinHandle<()>,
    scheduler: Option<JoinHandle<()>>,
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
            quiet_plans: Default::default(),
            handoffs: Default::default(),
        });
        let scheduler = tokio::spawn(
            Runner::new("scheduler", ctx.queues.scheduler.clone(), 1).run({
                let ctx = ctx.clone();
                move |k| scheduler::reconcile_pending(k, ctx.clone())
            }),
        );
        DirectContext {
            ctx,
            feeder,
            scheduler: Some(scheduler),
        }
    }
}

impl DirectContext {
    /// As [`DirectContext::start`], but the cache is filled once and never fed again: a
    /// controller whose view of etcd is behind.
    pub async fn frozen(store: &Store, config: &ManagerConfig) -> DirectContext {
        let keys = store.keys().clone();
        let cache = Arc::new(Cache::new(&keys));
        let mut watcher = Watcher::new(store.clone(), format!("{}/", keys.root()));
        cache.apply(watcher.next().await);
        let ctx = Arc::new(Context {
            store: store.clone(),
            keys,
            cache,
            writer: Writer::new(store.clone(), None),
            config: config.clone(),
            queues: Queues::default(),
            ip_cursors: Default::default(),
            lease_deadlines: Default::default(),
            quiet_plans: Default::default(),
            handoffs: Default::default(),
        });
        DirectContext {
            ctx,
            feeder: tokio::spawn(async {}),
            scheduler: None,
        }
    }
}

impl Drop for DirectContext {
    fn drop(&mut self) {
        self.feeder.abort();
        if let Some(s) = &self.scheduler {
            s.abort();
        }
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
    // The caller waited for the failure to show, which can come before the controller's
    // last write of the pass that showed it: let it finish first, or the reconciles below
    // would race it. A loop that writes more often than `settle` fails here; a slower one
    // (backoff) is caught by the reconciles and the window below.
    let settle = Duration::from_millis(700);
    let mut attempts = 0;
    loop {
        let writes = writes_during(store, settle).await;
        if writes.is_empty() {
            break;
        }
        attempts += 1;
        assert!(
            attempts < 15,
            "the controller never went quiet for {settle:?} in {attempts} tries: {writes:?}"
        );
    }
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

/// A hollow node: the node agent's own agent (`shoal_node_agent::hollow`, what
/// `shoal-agent --runtime hollow` runs) in this process. It registers the Node and keeps
/// its lease and liveness key, watches its tasks and reports them running or shut down
/// through the agent's real code path; only containers are missing. Dropping it stops the
/// agent as a crash would (the lease expires after its TTL).
pub struct HollowNode {
    pub name: String,
    /// The lease the node registered with.
    pub lease: Lease,
    store: Store,
    agent: AgentHandle,
}

impl HollowNode {
    /// Starts the agent of node `name` (number `index` gives its address, 198.18.0.`index`)
    /// with lease TTL `ttl`, and waits until it has registered. `labels` are put on the
    /// Node's spec first, as a user would before the agent joins (the agent never writes
    /// the spec).
    pub async fn start(
        store: &Store,
        name: &str,
        index: u8,
        labels: &[(&str, &str)],
        ttl: Duration,
    ) -> HollowNode {
        Self::start_with_capacity(store, name, index, labels, ttl, None).await
    }

    /// As [`HollowNode::start`], reporting `capacity` in the Node's status.
    pub async fn start_with_capacity(
        store: &Store,
        name: &str,
        index: u8,
        labels: &[(&str, &str)],
        ttl: Duration,
        capacity: Option<shoal_api_types::resources::NodeCapacity>,
    ) -> HollowNode {
        if !labels.is_empty() {
            label_node(store, name, labels).await;
        }
        let config = AgentConfig {
            lease_ttl: ttl,
            revoke_lease_on_exit: true,
            capacity,
            ..AgentConfig::new(name, format!("198.18.0.{index}"))
        };
        let agent = Agent::build(config, store.clone(), Arc::new(HollowRuntime::new()))
            .expect("hollow agent")
            .spawn();
        let lease = agent.registered().await.expect("hollow node registered");
        HollowNode {
            name: name.to_string(),
            lease,
            store: store.clone(),
            agent,
        }
    }

    /// Kills the node: the agent stops and revokes its lease, so its liveness key is gone
    /// now.
    pub async fn kill(self) {
        let key = self.store.keys().node_lease(&self.name);
        self.agent.shutdown().await;
        let left = self.store.get_raw(&key).await.expect("get liveness key");
        assert!(left.is_none(), "{}: lease not revoked", self.name);
    }

    /// Crashes the node: the agent stops and the lease expires on its own.
    pub fn crash(self) {
        drop(self.agent);
    }
}

/// Adds `labels` to node `name`'s spec, creating the Node if it does not exist.
async fn label_node(store: &Store, name: &str, labels: &[(&str, &str)]) {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let key = store.keys().named::<NodeSpec>(name);
    let updated = store
        .update_with::<NodeSpec>(&key, |n| {
            n.spec.labels.extend(labels.clone());
            true
        })
        .await
        .expect("label node");
    if updated.is_none() {
        let node = Node::new(
            name,
            NodeSpec {
                labels,
                ..Default::default()
            },
        );
        store.create(&node).await.expect("create node");
    }
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
