//! Watches of the cluster-wide objects the node's networking needs: every Network (VNI,
//! subnet, MTU, `internal`), every Node and the ClusterSettings, and (behind
//! [`super::desired`]) the node's tasks. Each is the store's one reflector
//! ([`shoal_store::reflect`]: list at revision R, watch from R+1, resume after errors, relist
//! on compaction) publishing into a `watch` channel until shutdown. The cache is published
//! only once a list is complete (`None` before the first), so nobody mistakes "not listed
//! yet" for "nothing there" (an empty Nodes cache would refuse every peer's VXLAN traffic
//! in the node policy).
//!
//! Endpoints are not watched here but per network, for the networks this node has tasks on
//! ([`super::endpoints_watch`]), over the same [`Watcher`].

use std::time::Duration;

use shoal_api_types::object::Resource;
use shoal_store::{ChangeLog, Store, Watcher};
use tokio::sync::watch;

/// Objects by `metadata.name`; `None` until the first list completed.
pub type Cache<S> = shoal_store::Cache<S>;

/// Keeps `tx` equal to the objects below `prefix` until `shutdown` turns true, recording
/// the names it changes in `log` if given (see [`shoal_store::reflect_logged`]).
pub(crate) async fn watch_objects<S: Resource>(
    store: Store,
    prefix: String,
    progress_every: Duration,
    tx: watch::Sender<Cache<S>>,
    log: Option<ChangeLog>,
    mut shutdown: watch::Receiver<bool>,
) {
    let watcher = Watcher::new(store, prefix).with_progress_every(progress_every);
    tokio::select! {
        _ = shoal_store::reflect_logged(watcher, tx, log) => {}
        _ = super::shutdown::stopped(&mut shutdown) => {}
    }
}
