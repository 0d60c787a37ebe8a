//! [`Watch`]: typed events below a prefix from a revision on, with progress notifications
//! (bookmarks) and compaction reported as [`StoreError::Compacted`].

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::Duration;

use etcd_client::{
    EventType as EtcdEventType, WatchOptions, WatchRequestSender, WatchResponseStream,
};
use shoal_api_types::{Object, Resource};

use crate::error::StoreError;
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
    prefix: String,
    sender: WatchRequestSender,
    stream: WatchResponseStream,
    pending: VecDeque<Event<S>>,
    revision: i64,
    progress: Option<tokio::time::Interval>,
    _kind: PhantomData<S>,
}

impl Store {
    /// Watches every key below `prefix` from `from_revision` on (inclusive; pass a list's
    /// revision + 1). `from_revision` 0 means "from now".
    pub async fn watch<S: Resource>(&self, prefix: &str, from_revision: i64) -> Result<Watch<S>> {
        if from_revision > 0 {
            self.check_revision(from_revision).await?;
        }
        let mut opts = WatchOptions::new().with_prefix().with_prev_key();
        if from_revision > 0 {
            opts = opts.with_start_revision(from_revision);
        }
        let stream = self
            .client
            .watch_client()
            .max_decoding_message_size(crate::store::MAX_MESSAGE)
            .watch(prefix, Some(opts))
            .await?;
        let (sender, stream) = stream.split();
        Ok(Watch {
            prefix: prefix.to_string(),
            sender,
            stream,
            pending: VecDeque::new(),
            revision: from_revision.saturating_sub(1),
            progress: None,
            _kind: PhantomData,
        })
    }
}

impl<S: Resource> Watch<S> {
    /// Asks etcd for a [`Event::Progress`] every `every` while no events flow.
    pub fn with_progress_every(mut self, every: Duration) -> Self {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.reset();
        self.progress = Some(interval);
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
            let msg = match &mut self.progress {
                Some(interval) => tokio::select! {
                    m = self.stream.message() => m,
                    _ = interval.tick() => {
                        self.sender.request_progress().await.map_err(|e| self.ended(e.to_string()))?;
                        continue;
                    }
                },
                None => self.stream.message().await,
            };
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) => return Err(self.ended("etcd closed the stream".into())),
                Err(e) => return Err(self.ended(e.to_string())),
            };
            if resp.compact_revision() > 0 {
                return Err(StoreError::Compacted {
                    requested: self.revision + 1,
                    compacted: resp.compact_revision(),
                });
            }
            if resp.canceled() {
                return Err(self.ended(format!("canceled: {}", resp.cancel_reason())));
            }
            if resp.created() {
                continue;
            }
            let header_rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            if resp.events().is_empty() {
                self.pending.push_back(Event::Progress(header_rev));
                continue;
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let event = match ev.event_type() {
                    EtcdEventType::Put => {
                        let obj = decode::<S>(kv.key(), kv.value(), kv.mod_revision())?;
                        if kv.create_revision() == kv.mod_revision() {
                            Event::Added(obj)
                        } else {
                            Event::Modified(obj)
                        }
                    }
                    EtcdEventType::Delete => match ev.prev_kv() {
                        Some(prev) => Event::Deleted(with_revision(
                            decode::<S>(prev.key(), prev.value(), prev.mod_revision())?,
                            kv.mod_revision(),
                        )),
                        // History before the previous value was compacted: nothing to say.
                        None => continue,
                    },
                };
                self.pending.push_back(event);
            }
        }
    }

    fn ended(&self, reason: String) -> StoreError {
        StoreError::WatchEnded {
            prefix: self.prefix.clone(),
            reason,
        }
    }
}
