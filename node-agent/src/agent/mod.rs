//! The node agent's core: registration, the desired-task watch and the converge loop,
//! independent of how containers are run.
//!
//! - [`register`]: the Node object and its lease (node lifecycle, agent side);
//! - [`desired`]: this node's tasks from etcd (list, watch, relist);
//! - [`plan`](mod@plan): the pure diff of desired against observed tasks;
//! - [`rounds`]: which tasks a converge round plans (those that changed, or all);
//! - [`apply`](mod@apply): operations against a [`TaskRuntime`] and a [`StatusSink`];
//! - [`status_batch`]: the status sink in etcd, many tasks' reports per transaction;
//! - [`converge`]: the level-triggered loop tying them together;
//! - [`containers`]: the [`TaskRuntime`] over the `runtime` module's containerd client,
//!   with health checks ([`health`]);
//! - [`network`]: the wiring of task networking (`net`, `dns`, `lb`, `mesh`) into it, run
//!   in the background through [`TaskRuntime::run_background`];
//! - [`task_runtime`]: the [`TaskRuntime`] trait those loops drive.
//!
//! The agent owns every watch: its tasks ([`desired`]) and the caches a runtime asks for
//! ([`TaskRuntime::caches`]: Networks and Nodes through [`cluster`]'s list-then-watch, the
//! Endpoints of the networks its tasks are on through [`endpoints_watch`]). See docs/architecture.md ("Node agent").
//!
//! Build then spawn: [`Agent::build`] checks the configuration (all fallible setup), and
//! [`Agent::spawn`] starts the loops and returns an [`AgentHandle`] to wait on and shut
//! down. Shutting down stops watching and leaves containers as they are, so a restarted
//! agent finds its tasks running and changes nothing; with
//! [`AgentConfig::revoke_lease_on_exit`] the lease is revoked so the node goes down at once.
//!
//! The agent owns task `status` and never touches task `spec`, never deletes tasks, and
//! never writes a Node's `spec`.

pub mod apply;
pub mod capacity;
pub mod cluster;
pub mod containers;
pub mod converge;
pub mod desired;
pub mod endpoints_watch;
pub mod health;
pub mod network;
pub mod plan;
pub mod register;
pub mod rounds;
mod shutdown;
pub mod stages;
pub mod status_batch;
pub mod task_runtime;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use shoal_api_types::network::NetworkSpec;
use shoal_api_types::resources::NodeCapacity;
use shoal_api_types::{ClusterSettingsSpec, NodeSpec};
use shoal_store::{Lease, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use apply::{advance, ApplyError, Effects, StatusSink};
pub use containers::ContainerTasks;
pub use converge::ConvergeStats;
pub use network::check::NodeCheck;
pub use network::NodeNetwork;
pub use plan::{plan, Op, StatusUpdate};
pub use status_batch::{BatchedStatus, StatusBatcher};
pub use task_runtime::{
    BackgroundContext, ClusterCaches, ObservedState, ObservedTask, Started, TaskError, TaskRuntime,
};

/// Default [`AgentConfig::drain_delay`].
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(3);

/// Default [`AgentConfig::lease_ttl`] (`--node-ttl`): 2 s, etcd's shortest lease (it raises
/// shorter ones to 2 s with its default election timeout). Failover waits for it: a dead
/// node's lease expires TTL − (time since its last renewal) after the death, etcd checks for
/// expired leases every 500 ms, and the replacements then take a few hundred milliseconds
/// to be created, placed and started — about 2.2–2.7 s with 2 s, over 3 s with 3 s. The
/// keeper renews every TTL/4 over a connection of its own (see [`register`]), so four
/// renewals in a row must fail before a live node goes down.
pub const DEFAULT_NODE_TTL: Duration = Duration::from_secs(2);

/// How an agent runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The node's name (a DNS-1123 label).
    pub name: String,
    /// The underlay address other nodes reach this one at.
    pub address: String,
    /// Where the agent serves `exec` (host:port), if it does.
    pub agent_endpoint: Option<String>,
    /// The node lease's time to live (whole seconds; etcd grants at least 2): the node goes
    /// down this long after the agent dies. Default [`DEFAULT_NODE_TTL`].
    pub lease_ttl: Duration,
    /// How often the agent converges even if nothing changed.
    pub resync: Duration,
    /// How often the agent checks that its Node and liveness key still say it is ready.
    pub check_every: Duration,
    /// Ask etcd for a watch progress notification this often while no events flow.
    pub watch_progress_every: Duration,
    /// Revoke the lease on shutdown so the node goes down at once (tests).
    pub revoke_lease_on_exit: bool,
    /// Runtime operations that may run at once.
    pub concurrency: usize,
    /// How long a running task that is wanted stopped keeps running before it is signalled:
    /// the controller takes it out of the Endpoints in the same write, and every node's
    /// load balancer (VIP, routing mesh, DNS) moves away meanwhile, so connections are not
    /// sent to a task that is exiting.
    pub drain_delay: Duration,
    /// What the node offers the scheduler, written to `Node.status.capacity` (None: not
    /// reported; then only tasks that reserve nothing are placed here). See
    /// [`capacity::detect`].
    pub capacity: Option<NodeCapacity>,
}

impl AgentConfig {
    /// A configuration with the default timings.
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> Self {
        AgentConfig {
            name: name.into(),
            address: address.into(),
            agent_endpoint: None,
            lease_ttl: DEFAULT_NODE_TTL,
            resync: Duration::from_secs(10),
            check_every: Duration::from_secs(30),
            watch_progress_every: Duration::from_secs(60),
            revoke_lease_on_exit: false,
            concurrency: 16,
            drain_delay: DEFAULT_DRAIN_DELAY,
            capacity: None,
        }
    }
}

/// Why an agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The node name is not a DNS-1123 label.
    #[error("--name: {0}")]
    InvalidName(String),
    /// The address is not an IP address.
    #[error("--address: {address:?} is not an IP address (give the address other nodes reach this one at)")]
    InvalidAddress {
        /// What was given.
        address: String,
    },
    /// A duration is out of range.
    #[error("{flag}: {message}")]
    InvalidTiming {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
    /// etcd could not be reached.
    #[error("cannot reach etcd: {0}")]
    Store(#[from] shoal_store::StoreError),
    /// The container runtime could not be set up.
    #[error("runtime: {0}")]
    Runtime(String),
}

/// A checked agent, ready to spawn.
pub struct Agent {
    config: AgentConfig,
    store: Store,
    runtime: Arc<dyn TaskRuntime>,
    /// `None`: batched writes to etcd ([`status_batch`]), through `batcher`.
    status: Option<Arc<dyn StatusSink>>,
    /// Shared with the other agents of a hollow fleet; `None`: the agent's own.
    batcher: Option<StatusBatcher>,
    liveness: register::Liveness,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("config", &self.config)
            .field("runtime", &self.runtime.name())
            .finish()
    }
}

impl Agent {
    /// Checks `config`; the agent will run tasks with `runtime` and write status to etcd.
    pub fn build(
        config: AgentConfig,
        store: Store,
        runtime: Arc<dyn TaskRuntime>,
    ) -> Result<Agent, AgentError> {
        shoal_api_types::validation::check_dns_label(&config.name)
            .map_err(AgentError::InvalidName)?;
        if config.name.starts_with('_') {
            return Err(AgentError::InvalidName(format!(
                "{:?} is reserved",
                config.name
            )));
        }
        if config.address.parse::<IpAddr>().is_err() {
            return Err(AgentError::InvalidAddress {
                address: config.address.clone(),
            });
        }
        if config.lease_ttl < Duration::from_secs(1) {
            return Err(AgentError::InvalidTiming {
                flag: "--node-ttl",
                message: "must be at least 1 second".into(),
            });
        }
        for (flag, d) in [
            ("--resync", config.resync),
            ("check interval", config.check_every),
            ("watch progress interval", config.watch_progress_every),
        ] {
            if d.is_zero() {
                return Err(AgentError::InvalidTiming {
                    flag,
                    message: "must be more than 0".into(),
                });
            }
        }
        Ok(Agent {
            config,
            store,
            runtime,
            status: None,
            batcher: None,
            liveness: register::Liveness::default(),
        })
    }

    /// Keeps the lease over `liveness`'s connection, shared with the other agents given
    /// it (a hollow fleet), instead of one of the agent's own.
    pub(crate) fn with_liveness(mut self, liveness: register::Liveness) -> Self {
        self.liveness = liveness;
        self
    }

    /// Writes task status to `status` instead of etcd (tests).
    pub fn with_status_sink(mut self, status: Arc<dyn StatusSink>) -> Self {
        self.status = Some(status);
        self
    }

    /// Commits task status through `batcher`, shared with other agents (a hollow fleet),
    /// instead of a batcher of its own.
    pub(crate) fn with_batcher(mut self, batcher: StatusBatcher) -> Self {
        self.batcher = Some(batcher);
        self
    }

    /// Starts registration, the task watch and the converge loop.
    pub fn spawn(self) -> AgentHandle {
        let Agent {
            config,
            store,
            runtime,
            status,
            batcher,
            liveness,
        } = self;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (lease_tx, lease_rx) = watch::channel(None);
        let (desired_tx, desired_rx) = watch::channel(None);
        // The names of the tasks the watch changed, for the converge loop's rounds.
        let changes = shoal_store::ChangeLog::new();
        let (stats_tx, stats_rx) = watch::channel(ConvergeStats::default());

        let registration = register::Registration {
            store: store.clone(),
            name: config.name.clone(),
            address: config.address.clone(),
            agent_endpoint: config.agent_endpoint.clone().unwrap_or_default(),
            runtime: runtime.name(),
            ttl: config.lease_ttl,
            check_every: config.check_every,
            revoke_on_exit: config.revoke_lease_on_exit,
            capacity: config.capacity,
            liveness,
        };
        let prefix = store.keys().node_tasks(&config.name);
        let background = BackgroundContext {
            desired: desired_rx.clone(),
            shutdown: shutdown_rx.clone(),
            resync: config.resync,
        };
        // The agent owns every watch: the runtime's caches are filled here.
        let mut watches = Vec::new();
        if let Some(caches) = runtime.caches() {
            let keys = store.keys().clone();
            let every = config.watch_progress_every;
            watches.push(tokio::spawn(cluster::watch_objects::<NetworkSpec>(
                store.clone(),
                keys.prefix::<NetworkSpec>(),
                every,
                caches.networks,
                None,
                shutdown_rx.clone(),
            )));
            watches.push(tokio::spawn(endpoints_watch::watch_endpoints(
                store.clone(),
                every,
                desired_rx.clone(),
                caches.always_endpoints,
                caches.endpoints,
                shutdown_rx.clone(),
            )));
            if let Some(nodes) = caches.nodes {
                watches.push(tokio::spawn(cluster::watch_objects::<NodeSpec>(
                    store.clone(),
                    keys.prefix::<NodeSpec>(),
                    every,
                    nodes,
                    None,
                    shutdown_rx.clone(),
                )));
            }
            if let Some(settings) = caches.settings {
                watches.push(tokio::spawn(cluster::watch_objects::<ClusterSettingsSpec>(
                    store.clone(),
                    keys.prefix::<ClusterSettingsSpec>(),
                    every,
                    settings,
                    None,
                    shutdown_rx.clone(),
                )));
            }
        }
        // The task watch takes the echoes of the agent's own status writes from the sink.
        let (status, own): (Arc<dyn StatusSink>, _) = match status {
            Some(status) => (status, None),
            None => {
                let batcher = batcher.unwrap_or_else(|| StatusBatcher::spawn(store.clone()));
                let sink = Arc::new(BatchedStatus::new(
                    batcher,
                    prefix.clone(),
                    desired_rx.clone(),
                ));
                (sink.clone() as Arc<dyn StatusSink>, Some(sink.echoes()))
            }
        };
        let background_runtime = runtime.clone();
        let converger = converge::Converger {
            effects: Effects { runtime, status },
            desired: desired_rx,
            changes: changes.clone(),
            resync: config.resync,
            concurrency: config.concurrency,
            drain_delay: config.drain_delay,
            stats: stats_tx,
        };
        let mut tasks = vec![
            tokio::spawn(registration.run(lease_tx, shutdown_rx.clone())),
            tokio::spawn(desired::watch_tasks(
                store,
                prefix,
                config.watch_progress_every,
                desired_tx,
                Some(changes),
                own,
                shutdown_rx.clone(),
            )),
            tokio::spawn(converger.run(shutdown_rx)),
            tokio::spawn(async move { background_runtime.run_background(background).await }),
        ];
        tasks.extend(watches);
        AgentHandle {
            name: config.name,
            shutdown: shutdown_tx,
            lease: lease_rx,
            stats: stats_rx,
            tasks,
        }
    }
}

/// A running agent. Dropping it stops the agent abruptly (as a crash would, without
/// revoking the lease); [`AgentHandle::shutdown`] stops it gracefully.
pub struct AgentHandle {
    name: String,
    shutdown: watch::Sender<bool>,
    lease: watch::Receiver<Option<Lease>>,
    stats: watch::Receiver<ConvergeStats>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandle")
            .field("name", &self.name)
            .field("lease", &self.lease())
            .finish()
    }
}

impl AgentHandle {
    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lease the node is registered with, if it is registered now.
    pub fn lease(&self) -> Option<Lease> {
        *self.lease.borrow()
    }

    /// Waits until the node is registered; `None` if the agent stopped first.
    pub async fn registered(&self) -> Option<Lease> {
        let mut rx = self.lease.clone();
        let lease = rx.wait_for(|l| l.is_some()).await.ok()?;
        *lease
    }

    /// The converge loop's progress now.
    pub fn stats(&self) -> ConvergeStats {
        *self.stats.borrow()
    }

    /// Follows the converge loop's progress.
    pub fn watch_stats(&self) -> watch::Receiver<ConvergeStats> {
        self.stats.clone()
    }

    /// Stops watching and converging (containers are left running), revokes the lease if
    /// configured, and waits for all of it.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Runs one agent until `shutdown` resolves, then shuts it down gracefully.
pub async fn run(
    config: AgentConfig,
    store: Store,
    runtime: Arc<dyn TaskRuntime>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let agent = Agent::build(config, store, runtime)?;
    let handle = agent.spawn();
    shutdown.await;
    tracing::info!(node = %handle.name(), "shutting down");
    handle.shutdown().await;
    Ok(())
}
