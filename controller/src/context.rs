//! What every reconcile gets: [`Context`] (store, cache, fenced writer, settings, the work
//! queues and the little state the leader keeps between passes). The stages import it; it
//! imports no stage but for the types of that state. See docs/architecture.md ("Controller").
//!
//! It also carries the one hand-over between two stages: the orchestrator's new tasks go to
//! the scheduler's next pass ([`Context::create_placed`]), which writes them placed, so
//! placement stays one stage with one pass at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shoal_api_types::keys::Keys;
use shoal_api_types::Task;
use shoal_store::{Batch, Store, StoreError, Writer};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::ManagerConfig;
use crate::reconcile::{Cache, ControllerError, WorkQueue};

/// The one key of the scheduler's queue.
pub const PENDING: &str = "pending";

/// A new task for the scheduler to place: the task as the orchestrator built it (not on a
/// node) and what must commit with it (its address claims).
#[derive(Clone)]
pub struct Unplaced {
    /// The task.
    pub task: Task,
    /// Written in the same transaction as the task.
    pub with: Batch,
}

/// New tasks handed to the scheduler's pass, and where to say how their writes went.
pub struct Handoff {
    /// The tasks, in order.
    pub tasks: Vec<Unplaced>,
    /// The result of committing them (the highest revision written, or the first error).
    pub done: oneshot::Sender<Result<i64, StoreError>>,
}

/// The work queues.
#[derive(Clone, Default)]
pub struct Queues {
    /// Network names.
    pub networks: WorkQueue<String>,
    /// Service names.
    pub services: WorkQueue<String>,
    /// Node names.
    pub nodes: WorkQueue<String>,
    /// The one scheduling key.
    pub scheduler: WorkQueue<String>,
    /// The one ClusterSettings key.
    pub settings: WorkQueue<String>,
}

/// What every reconcile gets.
pub struct Context {
    /// The store (reads outside the cache; all etcd access goes through it).
    pub store: Store,
    /// The key layout.
    pub keys: Keys,
    /// The cache.
    pub cache: Arc<Cache>,
    /// Fenced writes.
    pub writer: Writer,
    /// Settings.
    pub config: ManagerConfig,
    /// The queues.
    pub queues: Queues,
    /// Next-fit cursors of the address picker, per network.
    pub ip_cursors: Mutex<HashMap<String, u32>>,
    /// When nodes without a liveness key are to be declared down.
    pub lease_deadlines: Mutex<HashMap<String, Instant>>,
    /// Per service, what its last full pass found when nothing was to do (the orchestrator's).
    pub quiet_plans: Mutex<HashMap<String, crate::orchestrator::quiet::QuietPlan>>,
    /// New tasks waiting for the scheduler's next pass ([`Context::create_placed`]).
    pub handoffs: Mutex<Vec<Handoff>>,
}

impl Context {
    /// Waits until the cache reflects every write this leader made, so a reconcile never
    /// acts on a view older than its own last change.
    pub async fn sync(&self) {
        self.cache.wait_for(self.writer.last_revision()).await;
    }

    /// Creates `tasks` through the scheduler: hands them to its next pass, which places
    /// each (or leaves it pending with its reason) and writes it with its `with` in one
    /// transaction, and waits until they are written. Every one is attempted; the first
    /// error is returned.
    pub async fn create_placed(&self, tasks: Vec<Unplaced>) -> Result<(), ControllerError> {
        if tasks.is_empty() {
            return Ok(());
        }
        let (done, written) = oneshot::channel();
        self.handoffs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Handoff { tasks, done });
        self.queues.scheduler.add(PENDING.to_string());
        match written.await {
            Ok(result) => result.map(drop).map_err(ControllerError::from),
            // The pass ended without a word (it panicked, or the term ended): read again.
            Err(_) => Err(ControllerError::Conflict(
                "the scheduling pass ended before writing the new tasks".into(),
            )),
        }
    }

    /// Takes every hand-over waiting for a scheduling pass.
    pub fn take_handoffs(&self) -> Vec<Handoff> {
        std::mem::take(&mut *self.handoffs.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
