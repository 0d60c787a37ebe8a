//! [`reflect`]: keeps a `tokio::sync::watch` channel equal to the objects of one kind below
//! a prefix — kube-runtime's reflector over this crate's [`Watcher`].
//!
//! Invariants:
//! - The published [`Cache`] is `None` until the first list is complete, and every relist
//!   replaces it whole: nobody mistakes "not listed yet" for "nothing there" (the node agent
//!   would otherwise delete every FDB entry, or stop every task, of the node).
//! - Between lists, it changes by exactly the watched events, in revision order.
//! - Values that do not decode are logged and left out, never fatal.

use std::collections::{BTreeMap, HashMap};

use shoal_api_types::{Object, Resource};
use tokio::sync::watch;

use crate::raw::{RawEvent, RawKv};
use crate::store::decode;
use crate::watcher::{Watcher, WatcherEvent};

/// Objects by `metadata.name`; `None` until the first list completed.
pub type Cache<S> = Option<BTreeMap<String, Object<S>>>;

/// Keeps `tx` equal to the objects of kind `S` below the watcher's prefix. Runs until
/// dropped, whether or not anyone holds a receiver right now: a reader may read through a
/// clone of the sender (`watch::Sender::borrow`, as the node agent's network loop does), and
/// receivers may subscribe later.
pub async fn reflect<S: Resource>(mut watcher: Watcher, tx: watch::Sender<Cache<S>>) {
    // Object names by key: a delete event carries only the key.
    let mut names: HashMap<String, String> = HashMap::new();
    loop {
        match watcher.next().await {
            WatcherEvent::Restarted { items, revision } => {
                names.clear();
                let mut objects = BTreeMap::new();
                for kv in &items {
                    if let Some(o) = decoded::<S>(kv) {
                        names.insert(kv.key.clone(), o.name().to_string());
                        objects.insert(o.name().to_string(), o);
                    }
                }
                tracing::debug!(
                    prefix = watcher.prefix(),
                    revision,
                    objects = objects.len(),
                    "listed"
                );
                tx.send_replace(Some(objects));
            }
            WatcherEvent::Events { events, .. } => {
                for ev in events {
                    match ev {
                        RawEvent::Put(kv) => {
                            let Some(o) = decoded::<S>(&kv) else { continue };
                            names.insert(kv.key.clone(), o.name().to_string());
                            tx.send_modify(|cache| {
                                if let Some(cache) = cache {
                                    cache.insert(o.name().to_string(), o);
                                }
                            });
                        }
                        RawEvent::Delete { key, .. } => {
                            let Some(name) = names.remove(&key) else {
                                continue;
                            };
                            tx.send_if_modified(|cache| {
                                cache.as_mut().is_some_and(|c| c.remove(&name).is_some())
                            });
                        }
                    }
                }
            }
        }
    }
}

fn decoded<S: Resource>(kv: &RawKv) -> Option<Object<S>> {
    match decode::<S>(kv.key.as_bytes(), &kv.value, kv.mod_revision) {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring undecodable {}", S::KIND);
            None
        }
    }
}
