//! What every reconcile gets: [`Context`] (store, cache, fenced writer, settings, the work
//! queues and the little state the leader keeps between passes). The stages import it; it
//! imports no stage but for the types of that state. See docs/architecture.md ("Controller").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shoal_api_types::keys::Keys;
use shoal_store::{Store, Writer};
use tokio::time::Instant;

use crate::config::ManagerConfig;
use crate::reconcile::{Cache, WorkQueue};

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
}

impl Context {
    /// Waits until the cache reflects every write this leader made, so a reconcile never
    /// acts on a view older than its own last change.
    pub async fn sync(&self) {
        self.cache.wait_for(self.writer.last_revision()).await;
    }
}
