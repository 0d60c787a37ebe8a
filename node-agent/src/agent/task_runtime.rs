//! Owns [`TaskRuntime`], the narrow trait the converge loop drives side effects through (the
//! agent's port to a container runtime; `crate::runtime` is the containerd side): it starts,
//! stops, removes and lists the containers (with their namespaces and links) of this node's
//! tasks. The containerd + netlink implementation and the hollow one ([`crate::hollow`])
//! implement it; tests inject recording fakes.
//!
//! Invariants every implementation keeps:
//! - Everything it creates carries a recognisable name or label, so [`TaskRuntime::list`]
//!   returns exactly what is ours (also after a crash) and garbage collection is a diff.
//! - Every method is idempotent: starting a started task, stopping a stopped one and
//!   removing a removed one succeed and change nothing.
//! - Nothing here writes to etcd; the agent reports status from what these methods return.

use std::time::Duration;

use async_trait::async_trait;
use shoal_api_types::endpoints::EndpointsSpec;
use shoal_api_types::network::NetworkSpec;
use shoal_api_types::Task;
use shoal_api_types::{ClusterSettingsSpec, NodeSpec};
use tokio::sync::watch;

use super::cluster::Cache;
use super::desired::DesiredTasks;

/// What the runtime observes of one task's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObservedState {
    /// Created (or half created) but not running; starting it again resumes it.
    Created,
    /// Its process runs.
    Running,
    /// Its process exited with this code; the container is kept (for logs) until removed.
    Exited {
        /// The exit code (128 + signal when killed by a signal).
        exit_code: i32,
    },
}

/// One task the runtime knows about, as [`TaskRuntime::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedTask {
    /// The task id (`metadata.name` of the Task).
    pub id: String,
    /// The container's id in the runtime.
    pub container_id: String,
    /// Created, running or exited.
    pub state: ObservedState,
    /// Result of the health check: `None` when the task has none.
    pub healthy: Option<bool>,
    /// Why the runtime ended the task itself, if it did (a failing health check).
    pub stopped_because: Option<String>,
    /// Whether the kernel's OOM killer killed a process of the exited container (it went
    /// over its memory limit).
    pub oom_killed: bool,
}

impl ObservedTask {
    /// A running task without a health check.
    pub fn running(id: impl Into<String>, container_id: impl Into<String>) -> Self {
        ObservedTask {
            id: id.into(),
            container_id: container_id.into(),
            state: ObservedState::Running,
            healthy: None,
            stopped_because: None,
            oom_killed: false,
        }
    }

    /// A task whose process exited with `exit_code`.
    pub fn exited(id: impl Into<String>, container_id: impl Into<String>, exit_code: i32) -> Self {
        ObservedTask {
            id: id.into(),
            container_id: container_id.into(),
            state: ObservedState::Exited { exit_code },
            healthy: None,
            stopped_because: None,
            oom_killed: false,
        }
    }
}

/// What a successful [`TaskRuntime::start_task`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The container's id, reported in `status.containerId`.
    pub container_id: String,
    /// Where the start spent its time (image, network, create, start…), logged with the
    /// agent's own stages (see [`super::stages`]); empty when the runtime does not say.
    pub stages: super::stages::Stages,
}

/// Why a runtime operation failed, classified by what the agent reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The task can never run as specified (image not found, invalid spec). The agent
    /// reports the task `rejected` with `reason` as its error.
    #[error("task {task}: {reason}")]
    Rejected {
        /// The task id.
        task: String,
        /// What was wrong, for users (`image not found: localhost:5000/nope:1`).
        reason: String,
    },
    /// Starting or running the task failed (registry down, exec failed). The agent reports
    /// the task `failed` with `reason`; the controller's restart policy decides what next.
    #[error("task {task}: {reason}")]
    Failed {
        /// The task id.
        task: String,
        /// What went wrong, for users.
        reason: String,
    },
    /// The runtime itself is unreachable (containerd down, netlink socket gone). Nothing is
    /// reported to the task; the agent retries with backoff.
    #[error("container runtime unavailable: {0}")]
    Unavailable(String),
}

impl TaskError {
    /// The message shown in `status.err`.
    pub fn reason(&self) -> &str {
        match self {
            TaskError::Rejected { reason, .. } | TaskError::Failed { reason, .. } => reason,
            TaskError::Unavailable(reason) => reason,
        }
    }

    /// Whether trying the same operation later may succeed without anything changing in the
    /// task (only [`TaskError::Unavailable`]).
    pub fn is_temporary(&self) -> bool {
        matches!(self, TaskError::Unavailable(_))
    }
}

/// The container runtime as the converge loop sees it. `Send + Sync`; the agent holds it
/// as `Arc<dyn TaskRuntime>` and calls it from several tasks at once, but never runs two
/// operations on the same task id at the same time.
#[async_trait]
pub trait TaskRuntime: Send + Sync + 'static {
    /// Written to `Node.status.runtime` (`containerd`, `hollow`).
    fn name(&self) -> &'static str;

    /// Creates what the task needs (image, namespace, links, container) and starts its
    /// process. Idempotent: resumes a half-created task and returns the running one as is.
    async fn start_task(&self, task: &Task) -> Result<Started, TaskError>;

    /// Stops the task's process: SIGTERM, up to `grace`, then SIGKILL. Returns once it has
    /// exited; the container stays (as [`ObservedState::Exited`]) until removed. Stopping a
    /// task that does not run, or does not exist, succeeds.
    async fn stop_task(&self, id: &str, grace: Duration) -> Result<(), TaskError>;

    /// Stops the task if it runs and deletes everything it had (container, namespace,
    /// links). Removing an unknown task succeeds.
    async fn remove_task(&self, id: &str) -> Result<(), TaskError>;

    /// Every task of ours the runtime has, running or not.
    async fn list(&self) -> Result<Vec<ObservedTask>, TaskError>;

    /// What [`Self::list`] would return of the tasks `ids` (those it has; in any order).
    /// The converge loop's rounds that plan only changed tasks ask this instead of listing
    /// everything. The default lists everything and keeps those; a runtime that can look a
    /// task up by id (the hollow one) answers without copying the rest.
    async fn observe(&self, ids: &[&str]) -> Result<Vec<ObservedTask>, TaskError> {
        let wanted: std::collections::HashSet<&str> = ids.iter().copied().collect();
        let mut all = self.list().await?;
        all.retain(|o| wanted.contains(o.id.as_str()));
        Ok(all)
    }

    /// Resolves when something may have changed without the agent asking (a process
    /// exited, a health check flipped), so the agent converges at once instead of at the
    /// next resync. The default never resolves.
    async fn changed(&self) {
        std::future::pending::<()>().await
    }

    /// The cluster-wide caches the runtime reads while it runs ([`Self::run_background`]):
    /// the agent lists and watches etcd into them, so the runtime starts no watch of its own.
    /// `None` (the default): it reads none, and the agent watches nothing for it.
    fn caches(&self) -> Option<ClusterCaches> {
        None
    }

    /// Background work of the runtime over the desired tasks and its [`Self::caches`] (the
    /// containerd runtime's task networking: peer, DNS and VIP updates, the routing mesh,
    /// garbage collection). The agent calls it once when it spawns and aborts it on shutdown;
    /// it runs until `ctx.shutdown` turns true. The default does nothing.
    async fn run_background(&self, ctx: BackgroundContext) {
        let _ = ctx;
    }
}

/// Cluster-wide objects a runtime reads, as caches it owns and the agent fills (list at a
/// revision, then watch; `None` until the first list completed).
#[derive(Debug, Clone)]
pub struct ClusterCaches {
    /// Every Network.
    pub networks: watch::Sender<Cache<NetworkSpec>>,
    /// The Endpoints of the networks the node needs: those of its tasks that have not
    /// ended, and [`ClusterCaches::always_endpoints`] (see
    /// [`super::endpoints_watch`]).
    pub endpoints: watch::Sender<Cache<EndpointsSpec>>,
    /// Networks whose Endpoints the runtime needs whether or not a local task is on them
    /// (the routing mesh: `ingress`).
    pub always_endpoints: Vec<String>,
    /// Every Node, when the runtime needs them (the routing mesh).
    pub nodes: Option<watch::Sender<Cache<NodeSpec>>>,
    /// The ClusterSettings (reserved ports), when the runtime needs them (the routing mesh).
    pub settings: Option<watch::Sender<Cache<ClusterSettingsSpec>>>,
}

/// What the background loop needs from the agent.
#[derive(Clone)]
pub struct BackgroundContext {
    /// This node's tasks, as the converge loop sees them.
    pub desired: watch::Receiver<DesiredTasks>,
    /// Turns true when the agent shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// How often to reconcile everything even if nothing changed.
    pub resync: Duration,
}

impl std::fmt::Debug for BackgroundContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundContext")
            .field("resync", &self.resync)
            .finish()
    }
}
