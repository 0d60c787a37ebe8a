//! [`Watch`]: typed events below a prefix from a revision on, with progress notifications
//! (bookmarks) and compaction reported as [`StoreError::Compacted`]. A typed view of one
//! [`RawWatch`]; for a cache that survives errors and compaction use [`crate::Watcher`] or
//! [`crate::reflect`].

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::Duration;

use shoal_api_types::{Object, Resource};

use crate::raw::{RawEvent, RawWatch};
use crate::store::{decode, with_revision, Store};
use crate::Result;

/// One change below a watched prefix.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<S: Resource> {
    /// Created.
    Added(Object<S>),
    /// Changed.
    Modified(Object<S>),
    /// Deleted; the object as it was, with resourceVersion = the deletion revision.
    Deleted(Object<S>),
    /// Every change up to this revision has been delivered.
    Progress(i64),
}

impl<S: Resource> Event<S> {
    /// The revision the event happened at.
    pub fn revision(&self) -> i64 {
        match self {
            Event::Added(o) | Event::Modified(o) | Event::Deleted(o) => {
                o.metadata.revision().unwrap_or(0)
            }
            Event::Progress(r) => *r,
        }
    }
}

/// A live watch. Call [`Watch::next`] until it errs; then relist (on `Compacted`) or
/// re-watch from [`Watch::revision`] + 1.
pub struct Watch<S: Resource> {
    raw: RawWatch,
    pending: VecDeque<Event<S>>,
    revision: i64,
    _kind: PhantomData<S>,
}

impl Store {
    /// Watches every key below `prefix` from `from_revision` on (inclusive; pass a list's
    /// revision + 1). `from_revision` 0 means "from now".
    pub async fn watch<S: Resource>(&self, prefix: &str, from_revision: i64) -> Result<Watch<S>> {
        if from_revision > 0 {
            self.check_revision(from_revision).await?;
        }
        let raw = self.open_watch(prefix, from_revision, true, false).await?;
        Ok(Watch {
            revision: raw.revision(),
            raw,
            pending: VecDeque::new(),
            _kind: PhantomData,
        })
    }
}

impl<S: Resource> Watch<S> {
    /// Asks etcd for a [`Event::Progress`] every `every`.
    pub fn with_progress_every(mut self, every: Duration) -> Self {
        self.raw = self.raw.with_progress_every(every);
        self
    }

    /// The revision of the last event or progress delivered.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The next event. Errors end the watch.
    pub async fn next(&mut self) -> Result<Event<S>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                self.revision = self.revision.max(ev.revision());
                return Ok(ev);
            }
            let (events, revision) = self.raw.next().await?;
            if events.is_empty() {
                self.pending.push_back(Event::Progress(revision));
                continue;
            }
            for ev in events {
                let event = match ev {
                    RawEvent::Put(kv) => {
                        let obj = decode::<S>(kv.key.as_bytes(), &kv.value, kv.mod_revision)?;
                        if kv.create_revision == kv.mod_revision {
                            Event::Added(obj)
                        } else {
                            Event::Modified(obj)
                        }
                    }
                    RawEvent::Delete {
                        revision,
                        prev: Some(prev),
                        ..
                    } => Event::Deleted(with_revision(
                        decode::<S>(prev.key.as_bytes(), &prev.value, prev.mod_revision)?,
                        revision,
                    )),
                    // History before the previous value was compacted: nothing to say.
                    RawEvent::Delete { prev: None, .. } => continue,
                };
                self.pending.push_back(event);
            }
        }
    }
}
