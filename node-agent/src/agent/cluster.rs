//! Watches of the cluster-wide objects the node's networking needs: every Network (VNI,
//! subnet, MTU, `internal`) and the Endpoints objects (VIPs, task addresses, node addresses).
//! The agent's one list-then-watch state machine (also behind [`super::desired`], the node's
//! tasks): list at revision R, watch from R+1, relist at
//! once on compaction and with backoff when the watch ends; the cache is published only once
//! a list is complete (`None` before the first), so nobody mistakes "not listed yet" for
//! "nothing there" (an empty Endpoints cache would delete every FDB entry of the node).
//!
//! The Endpoints watch covers the whole `endpoints/` prefix, not only the networks this node
//! has tasks on: simple and correct, and one watch per agent whatever the number of networks,
//! but every agent receives every Endpoints change of the cluster. Per-network prefix watches
//! (`endpoints/<network>/`, started and stopped as local tasks come and go) would cut that
//! to the networks with local tasks; they are the next step if this shows up in profiles.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_api_types::object::{Object, Resource};
use shoal_store::{Event, Store, StoreError};
use tokio::sync::watch;

use super::backoff::Backoff;

/// Objects by `metadata.name`; `None` until the first list completed.
pub type Cache<S> = Option<BTreeMap<String, Object<S>>>;

/// Keeps `tx` equal to the objects below `prefix` until `shutdown` turns true.
pub(crate) async fn watch_objects<S: Resource>(
    store: Store,
    prefix: String,
    progress_every: Duration,
    tx: watch::Sender<Cache<S>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let result = tokio::select! {
            r = list_and_watch(&store, &prefix, progress_every, &tx, &mut backoff) => r,
            _ = super::stopped(&mut shutdown) => return,
        };
        let delay = match &result {
            Err(StoreError::Compacted { .. }) => Duration::ZERO,
            _ => backoff.next().unwrap_or_default(),
        };
        if let Err(e) = result {
            tracing::warn!(prefix = %prefix, error = %e, "watch ended; listing again");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = super::stopped(&mut shutdown) => return,
        }
    }
}

async fn list_and_watch<S: Resource>(
    store: &Store,
    prefix: &str,
    progress_every: Duration,
    tx: &watch::Sender<Cache<S>>,
    backoff: &mut Backoff,
) -> Result<(), StoreError> {
    let (items, revision) = store.list_prefix::<S>(prefix).await?;
    let objects: BTreeMap<String, Object<S>> = items
        .into_iter()
        .map(|o| (o.name().to_string(), o))
        .collect();
    tracing::debug!(prefix, revision, objects = objects.len(), "listed");
    tx.send_replace(Some(objects));
    let mut watch = store
        .watch::<S>(prefix, revision + 1)
        .await?
        .with_progress_every(progress_every);
    backoff.reset();
    loop {
        match watch.next().await? {
            Event::Added(o) | Event::Modified(o) => {
                tx.send_modify(|cache| {
                    if let Some(cache) = cache {
                        cache.insert(o.name().to_string(), o);
                    }
                });
            }
            Event::Deleted(o) => {
                tx.send_if_modified(|cache| {
                    cache.as_mut().is_some_and(|c| c.remove(o.name()).is_some())
                });
            }
            Event::Progress(_) => {}
        }
    }
}
