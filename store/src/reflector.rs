//! [`reflect`]: keeps a `tokio::sync::watch` channel equal to the objects of one kind below
//! a prefix — kube-runtime's reflector over this crate's [`Watcher`].
//!
//! Invariants:
//! - The published [`Cache`] is `None` until the first list is complete, and every relist
//!   replaces it whole: nobody mistakes "not listed yet" for "nothing there" (the node agent
//!   would otherwise delete every FDB entry, or stop every task, of the node).
//! - Between lists, it changes by exactly the watched events, in revision order.
//! - Values that do not decode are logged and left out, never fatal.
//! - With a [`ChangeLog`] ([`reflect_logged`]), every name the cache changes (put or
//!   deleted) is recorded in the same critical section as the change itself (under the
//!   channel's write lock), and a relist records "everything". A reader that takes the log
//!   while it borrows the cache ([`ChangeLog::take`] inside `borrow_and_update`) sees each
//!   change either in both or in neither, and a change it did not see wakes it again: so a
//!   consumer that works only on the changed names never misses one.
//! - With a [`Known`] ([`reflect_known`]), a put event whose key and revision the consumer
//!   already holds an object for is taken from it instead of decoded: the object written at
//!   that revision is the one the event carries (the node agent's own status writes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use shoal_api_types::{Object, Resource};
use tokio::sync::watch;

use crate::raw::{RawEvent, RawKv};
use crate::store::decode;
use crate::watcher::{Watcher, WatcherEvent};

/// Objects by `metadata.name`; `None` until the first list completed.
pub type Cache<S> = Option<BTreeMap<String, Object<S>>>;

/// What changed in a [`Cache`] since a [`ChangeLog`] was last taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Anything may have changed (the cache was listed anew, or nobody took the log yet).
    All,
    /// Only the objects of these names were put or deleted (empty: nothing changed).
    Names(HashSet<String>),
}

impl Changed {
    /// Whether `name` may have changed.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Changed::All => true,
            Changed::Names(names) => names.contains(name),
        }
    }
}

/// The names a reflector changed, for a consumer that works on changes only (the node
/// agent plans only the tasks that changed). Cheap to clone; clones share one log. Starts
/// as [`Changed::All`].
#[derive(Debug, Clone)]
pub struct ChangeLog(Arc<Mutex<Changed>>);

impl Default for ChangeLog {
    fn default() -> Self {
        ChangeLog(Arc::new(Mutex::new(Changed::All)))
    }
}

impl ChangeLog {
    /// A log that says everything changed.
    pub fn new() -> Self {
        ChangeLog::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Changed> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `name` was put or deleted.
    pub fn record(&self, name: &str) {
        if let Changed::Names(names) = &mut *self.lock() {
            if !names.contains(name) {
                names.insert(name.to_string());
            }
        }
    }

    /// Records that anything may have changed (a relist).
    pub fn record_all(&self) {
        *self.lock() = Changed::All;
    }

    /// What changed since the last call, leaving the log empty.
    pub fn take(&self) -> Changed {
        std::mem::replace(&mut *self.lock(), Changed::Names(HashSet::new()))
    }
}

/// The object stored at a key at a revision, if the consumer already has it (its own
/// write): `(key, mod_revision)` in, `None` to decode the event as usual.
pub type Known<S> = Arc<dyn Fn(&str, i64) -> Option<Object<S>> + Send + Sync>;

/// Puts `o` into `cache` (if listed) and records its name in `log`.
pub fn put_logged<S: Resource>(cache: &mut Cache<S>, o: Object<S>, log: Option<&ChangeLog>) {
    if let Some(cache) = cache {
        if let Some(log) = log {
            log.record(o.name());
        }
        cache.insert(o.name().to_string(), o);
    }
}

/// Deletes `name` from `cache` and records it in `log`; returns whether it was there.
pub fn delete_logged<S: Resource>(
    cache: &mut Cache<S>,
    name: &str,
    log: Option<&ChangeLog>,
) -> bool {
    let removed = cache.as_mut().is_some_and(|c| c.remove(name).is_some());
    if let (true, Some(log)) = (removed, log) {
        log.record(name);
    }
    removed
}

/// Keeps `tx` equal to the objects of kind `S` below the watcher's prefix. Runs until
/// dropped, whether or not anyone holds a receiver right now: a reader may read through a
/// clone of the sender (`watch::Sender::borrow`, as the node agent's network loop does), and
/// receivers may subscribe later.
pub async fn reflect<S: Resource>(watcher: Watcher, tx: watch::Sender<Cache<S>>) {
    reflect_logged(watcher, tx, None).await
}

/// [`reflect`], also recording every changed name in `log` (see the module's invariants).
pub async fn reflect_logged<S: Resource>(
    watcher: Watcher,
    tx: watch::Sender<Cache<S>>,
    log: Option<ChangeLog>,
) {
    reflect_known(watcher, tx, log, None).await
}

/// [`reflect_logged`], taking a put event's object from `known` when it has it.
pub async fn reflect_known<S: Resource>(
    mut watcher: Watcher,
    tx: watch::Sender<Cache<S>>,
    log: Option<ChangeLog>,
    known: Option<Known<S>>,
) {
    let log = log.as_ref();
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
                tx.send_modify(|cache| {
                    *cache = Some(objects);
                    if let Some(log) = log {
                        log.record_all();
                    }
                });
            }
            WatcherEvent::Events { events, .. } => {
                for ev in events {
                    match ev {
                        RawEvent::Put(kv) => {
                            let own = known.as_ref().and_then(|k| k(&kv.key, kv.mod_revision));
                            let Some(o) = own.or_else(|| decoded::<S>(&kv)) else {
                                continue;
                            };
                            names.insert(kv.key.clone(), o.name().to_string());
                            tx.send_modify(|cache| put_logged(cache, o, log));
                        }
                        RawEvent::Delete { key, .. } => {
                            let Some(name) = names.remove(&key) else {
                                continue;
                            };
                            tx.send_if_modified(|cache| delete_logged(cache, &name, log));
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
