//! The desired side: a watcher of this node's task prefix (`tasks/<node>/`) that keeps a
//! local cache of its tasks. List at revision R, watch from R+1; on compaction or when the
//! watch ends, list again. The cache is published only once a list is complete (`None`
//! before the first), so the converge loop never mistakes "not listed yet" for "nothing
//! wanted" and removes running tasks.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_api_types::{Task, TaskSpec};
use shoal_store::{Event, Store, StoreError};
use tokio::sync::watch;

use super::backoff::Backoff;

/// This node's tasks by id; `None` until the first list completed.
pub type DesiredTasks = Option<BTreeMap<String, Task>>;

/// Keeps `tx` equal to the tasks below `prefix` until `shutdown` turns true.
pub(crate) async fn watch_tasks(
    store: Store,
    prefix: String,
    progress_every: Duration,
    tx: watch::Sender<DesiredTasks>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let result = tokio::select! {
            r = list_and_watch(&store, &prefix, progress_every, &tx, &mut backoff) => r,
            _ = super::stopped(&mut shutdown) => return,
        };
        let delay = match &result {
            // Compaction: relist at once.
            Err(StoreError::Compacted { .. }) => Duration::ZERO,
            _ => backoff.next().unwrap_or_default(),
        };
        if let Err(e) = result {
            tracing::warn!(prefix = %prefix, error = %e, "task watch ended; listing again");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = super::stopped(&mut shutdown) => return,
        }
    }
}

async fn list_and_watch(
    store: &Store,
    prefix: &str,
    progress_every: Duration,
    tx: &watch::Sender<DesiredTasks>,
    backoff: &mut Backoff,
) -> Result<(), StoreError> {
    let (items, revision) = store.list_prefix::<TaskSpec>(prefix).await?;
    let tasks: BTreeMap<String, Task> = items
        .into_iter()
        .map(|t| (t.name().to_string(), t))
        .collect();
    tracing::debug!(prefix, revision, tasks = tasks.len(), "listed tasks");
    tx.send_replace(Some(tasks));
    let mut watch = store
        .watch::<TaskSpec>(prefix, revision + 1)
        .await?
        .with_progress_every(progress_every);
    backoff.reset();
    loop {
        match watch.next().await? {
            Event::Added(task) | Event::Modified(task) => {
                tx.send_modify(|cache| {
                    if let Some(cache) = cache {
                        cache.insert(task.name().to_string(), task);
                    }
                });
            }
            Event::Deleted(task) => {
                tx.send_modify(|cache| {
                    if let Some(cache) = cache {
                        cache.remove(task.name());
                    }
                });
            }
            Event::Progress(_) => {}
        }
    }
}
