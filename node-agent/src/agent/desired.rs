//! The desired side: this node's tasks (`tasks/<node>/`), kept by the store's reflector like
//! the cluster-wide caches ([`super::cluster::watch_objects`]): list at revision R, watch
//! from R+1, resume after errors, list again on compaction. The cache is published only
//! once a list is complete (`None` before the first), so the converge loop
//! never mistakes "not listed yet" for "nothing wanted" and removes running tasks.

use std::time::Duration;

use shoal_api_types::TaskSpec;
use shoal_store::{ChangeLog, Known, Store, Watcher};
use tokio::sync::watch;

/// This node's tasks by id; `None` until the first list completed.
pub type DesiredTasks = super::cluster::Cache<TaskSpec>;

/// Keeps `tx` equal to the tasks below `prefix` until `shutdown` turns true, recording the
/// names it changes in `log`. A put event of the agent's own status write is taken from
/// `own` (the copy the agent wrote, [`super::BatchedStatus::echoes`]) instead of decoded.
pub(crate) async fn watch_tasks(
    store: Store,
    prefix: String,
    progress_every: Duration,
    tx: watch::Sender<DesiredTasks>,
    log: Option<ChangeLog>,
    own: Option<Known<TaskSpec>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let watcher = Watcher::new(store, prefix).with_progress_every(progress_every);
    tokio::select! {
        _ = shoal_store::reflect_known(watcher, tx, log, own) => {}
        _ = super::shutdown::stopped(&mut shutdown) => {}
    }
}
