//! The manager: leader election, then the reconcilers. Owns the leader loop, the mapping
//! of cache changes to work-queue keys (`dispatch`), one runner per queue and the periodic
//! resync. The `ingress` and `gwbridge` networks are the allocator's to keep present: their
//! keys are queued at the start of every term and every resync, and whenever they change (a
//! deletion included).
//! The queues and their stages are listed in docs/architecture.md ("Controller").
//!
//! Invariant: when the lease is lost, everything stops at once (the futures are dropped and
//! any write still in flight fails its leader fence); the replica then campaigns again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_api_types::network::{GATEWAY_BRIDGE_NETWORK, INGRESS_NETWORK};
use shoal_api_types::{NodeState, TaskState};

use crate::reconcile::TaskRecord;
use shoal_store::leader::{self, Leadership};
use shoal_store::{Backoff, Store, Watcher, Writer};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::ManagerConfig;
use crate::context::{Context, Queues};
use crate::reconcile::{Cache, Change, Runner, WorkQueue};

/// The key of the scheduler's queue.
pub use crate::context::PENDING;

/// Runs the reconcilers while this replica is leader, until `shutdown` turns true.
pub async fn run(
    store: Store,
    config: ManagerConfig,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let identity = format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "controller".into()),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let leadership = tokio::select! {
            l = leader::campaign(&store, &identity, config.leader_lease_ttl) => l,
            _ = stopped(&mut shutdown) => return Ok(()),
        };
        tracing::info!(%identity, term = leadership.term, "became leader");
        tokio::select! {
            _ = lead(&store, &config, &leadership) => {
                tracing::warn!("reconcilers stopped; resigning");
                leadership.resign(&store).await;
            }
            _ = leadership.lost() => {
                tracing::warn!(%identity, "lost the leader lease; stopped reconciling");
            }
            _ = stopped(&mut shutdown) => {
                leadership.resign(&store).await;
                return Ok(());
            }
        }
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Everything the leader runs. Returns only if something fatal happened; dropping it
/// stops everything.
async fn lead(store: &Store, config: &ManagerConfig, leadership: &Leadership) {
    let keys = store.keys().clone();
    let cache = Arc::new(Cache::new(&keys));
    let queues = Queues {
        networks: WorkQueue::new(Backoff::default()),
        services: WorkQueue::new(Backoff::default()),
        nodes: WorkQueue::new(Backoff::default()),
        scheduler: WorkQueue::new(Backoff::new(
            Duration::from_millis(50),
            Duration::from_secs(10),
        )),
        settings: WorkQueue::new(Backoff::default()),
    };
    let ctx = Arc::new(Context {
        store: store.clone(),
        keys: keys.clone(),
        cache: cache.clone(),
        writer: Writer::new(store.clone(), Some(leadership.fence())),
        config: config.clone(),
        queues: queues.clone(),
        ip_cursors: Mutex::new(HashMap::new()),
        lease_deadlines: Mutex::new(HashMap::new()),
        quiet_plans: Mutex::new(HashMap::new()),
        handoffs: Mutex::new(Vec::new()),
    });
    let mut tasks = JoinSet::new();

    // Watcher → cache → queues.
    let mut watcher = Watcher::new(store.clone(), format!("{}/", keys.root()));
    let first = watcher.next().await;
    let changes = cache.apply(first);
    dispatch(&ctx, changes);
    tasks.spawn({
        let ctx = ctx.clone();
        async move {
            loop {
                let ev = watcher.next().await;
                let changes = ctx.cache.apply(ev);
                dispatch(&ctx, changes);
            }
        }
    });

    // The ingress network (the allocator creates it when missing) and the settings, at
    // once rather than at the first resync.
    queues.networks.add(INGRESS_NETWORK.to_string());
    queues.networks.add(GATEWAY_BRIDGE_NETWORK.to_string());
    queues.settings.add(crate::settings::SETTINGS.to_string());

    let conc = config.concurrency.max(1);
    tasks.spawn(Runner::new("networks", queues.networks.clone(), 1).run({
        let ctx = ctx.clone();
        move |k| crate::allocator::reconcile_network(k, ctx.clone())
    }));
    tasks.spawn(Runner::new("services", queues.services.clone(), conc).run({
        let ctx = ctx.clone();
        move |k| crate::orchestrator::reconcile_service(k, ctx.clone())
    }));
    tasks.spawn(Runner::new("nodes", queues.nodes.clone(), conc).run({
        let ctx = ctx.clone();
        move |k| crate::nodes::reconcile_node(k, ctx.clone())
    }));
    tasks.spawn(Runner::new("scheduler", queues.scheduler.clone(), 1).run({
        let ctx = ctx.clone();
        move |k| crate::scheduler::reconcile_pending(k, ctx.clone())
    }));
    tasks.spawn(Runner::new("settings", queues.settings.clone(), 1).run({
        let ctx = ctx.clone();
        move |k| crate::settings::reconcile_settings(k, ctx.clone())
    }));
    tasks.spawn({
        let ctx = ctx.clone();
        async move {
            let mut tick = tokio::time::interval(ctx.config.resync.max(Duration::from_millis(100)));
            tick.tick().await;
            loop {
                tick.tick().await;
                resync(&ctx);
            }
        }
    });
    // Everything runs until this future is dropped; a task ending is a bug.
    if let Some(r) = tasks.join_next().await {
        tracing::error!(result = ?r.err(), "a reconciler loop ended");
    }
}

/// Queues every key.
fn resync(ctx: &Context) {
    let world = ctx.cache.read();
    ctx.queues.networks.add_all(world.networks.keys().cloned());
    ctx.queues.networks.add(INGRESS_NETWORK.to_string());
    ctx.queues.networks.add(GATEWAY_BRIDGE_NETWORK.to_string());
    ctx.queues
        .settings
        .add(crate::settings::SETTINGS.to_string());
    ctx.queues.services.add_all(world.services.keys().cloned());
    ctx.queues.nodes.add_all(world.nodes.keys().cloned());
    ctx.queues.scheduler.add(PENDING.to_string());
}

/// Maps cache changes to queue keys.
fn dispatch(ctx: &Context, changes: Vec<Change>) {
    if changes.is_empty() {
        return;
    }
    let q = &ctx.queues;
    let mut schedule = false;
    let mut all_services = false;
    let mut failed_networks = false;
    let mut networks_changed = vec![];
    let mut freed_addresses: Vec<String> = vec![];
    let mut task_services: HashSet<String> = HashSet::new();
    for change in changes {
        match change {
            Change::Network(n) => {
                networks_changed.push(n.clone());
                q.networks.add(n);
                failed_networks = true;
            }
            Change::Service(n) => {
                q.services.add(n);
                schedule = true;
            }
            Change::Node(n) => {
                q.nodes.add(n);
                all_services = true;
                schedule = true;
            }
            Change::NodeLease(n, present) => {
                let mut deadlines = ctx
                    .lease_deadlines
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if present {
                    deadlines.remove(&n);
                } else {
                    deadlines.insert(n.clone(), Instant::now() + ctx.config.node_lease_grace);
                }
                drop(deadlines);
                q.nodes.add(n);
                schedule = true;
            }
            Change::Task(old, new) => {
                let t = new
                    .as_ref()
                    .or(old.as_ref())
                    .expect("a task change has a task");
                task_services.insert(t.spec.service.clone());
                let pending = |t: &TaskRecord| {
                    t.spec.node.is_none() && t.spec.desired_state == TaskState::Running
                };
                let ended = |t: &TaskRecord| t.status.state.is_terminal();
                if new.as_deref().is_some_and(pending) || new.as_deref().is_none_or(ended) {
                    schedule = true;
                }
                if let Some(node) = new.as_ref().and_then(|t| t.spec.node.clone()) {
                    // A task landing on a node already down must be orphaned too.
                    if ctx
                        .cache
                        .read()
                        .nodes
                        .get(&node)
                        .is_some_and(|n| n.status.state == NodeState::Down)
                    {
                        q.nodes.add(node);
                    }
                }
            }
            Change::Endpoints(_, svc) => q.services.add(svc),
            Change::SubnetReleased => failed_networks = true,
            Change::Settings => q.settings.add(crate::settings::SETTINGS.to_string()),
            Change::IpReleased(net) => {
                if !freed_addresses.contains(&net) {
                    freed_addresses.push(net);
                }
            }
        }
    }
    let world = ctx.cache.read();
    for service in task_services {
        // Task changes of big services are batched: a reconcile of a service with n tasks
        // costs O(n), so it runs at most every n/100 ms (capped at 500 ms), not per change.
        let n = world.tasks_by_service.get(&service).map_or(0, |t| t.len());
        let delay = Duration::from_millis((n as u64 / 100).min(500));
        q.services.add_after(service, delay);
    }
    if !freed_addresses.is_empty() {
        // Services that ran out of addresses may go on.
        q.services.add_all(
            world
                .services
                .values()
                .filter(|s| {
                    s.status
                        .conditions
                        .iter()
                        .any(|c| c.reason == "AddressesExhausted")
                        && crate::orchestrator::wanted_networks(&s.spec)
                            .iter()
                            .any(|(n, _)| freed_addresses.contains(n))
                })
                .map(|s| s.metadata.name.clone()),
        );
    }
    if failed_networks {
        q.networks.add_all(
            world
                .networks
                .values()
                .filter(|n| n.status.phase == "Failed")
                .map(|n| n.metadata.name.clone()),
        );
    }
    if networks_changed.iter().any(|n| n == INGRESS_NETWORK) {
        // Nodes get their ingress addresses once the ingress network is allocated.
        q.nodes.add_all(world.nodes.keys().cloned());
    }
    if all_services {
        q.services.add_all(world.services.keys().cloned());
    } else if !networks_changed.is_empty() {
        q.services.add_all(
            world
                .services
                .values()
                .filter(|s| {
                    s.spec
                        .networks
                        .iter()
                        .any(|a| networks_changed.contains(&a.name))
                        || (s.spec.publishes_ingress()
                            && networks_changed.iter().any(|n| n == INGRESS_NETWORK))
                })
                .map(|s| s.metadata.name.clone()),
        );
    }
    if schedule && !world.unassigned.is_empty() {
        q.scheduler.add(PENDING.to_string());
    }
}
