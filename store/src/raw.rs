//! Untyped access: keys and values as etcd stores them ([`RawKv`]), for allocation records,
//! liveness keys, the controller's whole-root cache, counts and benchmarks — and
//! [`RawWatch`], the one watch stream every watch of this crate is built on.
//!
//! Invariants:
//! - Lists are paged ([`crate::LIST_PAGE`] keys a page) and every page is read at the
//!   revision of the first, so a list of any size is one consistent snapshot.
//! - A [`RawWatch`] reports compaction as [`StoreError::Compacted`] (relist) and every other
//!   end as [`StoreError::WatchEnded`] (resume from [`RawWatch::revision`] + 1).

use std::time::Duration;

use etcd_client::{
    EventType, GetOptions, KeyValue, WatchOptions, WatchRequestSender, WatchResponseStream,
};
use shoal_api_types::keys::prefix_range_end;

use crate::error::At;
use crate::error::StoreError;
use crate::store::{Store, LIST_PAGE};
use crate::Result;

/// One key and value as etcd stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawKv {
    /// The full key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the last change of the key.
    pub mod_revision: i64,
    /// Revision the key was created at.
    pub create_revision: i64,
    /// The lease the key is bound to (0 for none).
    pub lease: i64,
}

impl RawKv {
    pub(crate) fn from_etcd(kv: &KeyValue) -> RawKv {
        RawKv {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
            lease: kv.lease(),
        }
    }
}

/// One change of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    /// Created (`create_revision == mod_revision`) or changed.
    Put(RawKv),
    /// Deleted at `revision`.
    Delete {
        /// The key.
        key: String,
        /// The deletion revision.
        revision: i64,
        /// The value before the deletion, when the watch asked for it and etcd still had it.
        prev: Option<RawKv>,
    },
}

impl Store {
    /// The key and value at `key`, if any.
    pub async fn get_raw(&self, key: &str) -> Result<Option<RawKv>> {
        let resp = self.kv().get(key, None).await.at("read", key)?;
        Ok(resp.kvs().first().map(RawKv::from_etcd))
    }

    /// Every key below `prefix`, and the revision they were read at (paged, one snapshot).
    pub async fn list_raw(&self, prefix: &str) -> Result<(Vec<RawKv>, i64)> {
        self.list_raw_paged(prefix, 0).await
    }

    /// Every key below `prefix` as it was at `revision` (paged; [`StoreError::Compacted`]
    /// if that revision is gone): for checking a list against etcd's snapshot.
    pub async fn list_raw_at(&self, prefix: &str, revision: i64) -> Result<Vec<RawKv>> {
        self.check_revision(revision).await?;
        Ok(self.list_raw_paged(prefix, revision.max(1)).await?.0)
    }

    /// Pages through `prefix` at `revision` (0: at the revision of the first page).
    async fn list_raw_paged(&self, prefix: &str, mut revision: i64) -> Result<(Vec<RawKv>, i64)> {
        let end = prefix_range_end(prefix);
        let mut kv = self.kv();
        let mut items = Vec::new();
        let mut from = prefix.as_bytes().to_vec();
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let resp = kv.get(from.clone(), Some(opts)).await.at("list", prefix)?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            items.extend(resp.kvs().iter().map(RawKv::from_etcd));
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    // The next page starts just after the last key.
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((items, revision)),
            }
        }
    }

    /// The first key below `prefix` (in key order), if any.
    pub async fn first_raw(&self, prefix: &str) -> Result<Option<RawKv>> {
        let opts = GetOptions::new()
            .with_range(prefix_range_end(prefix))
            .with_limit(1);
        let resp = self.kv().get(prefix, Some(opts)).await.at("list", prefix)?;
        Ok(resp.kvs().first().map(RawKv::from_etcd))
    }

    /// How many keys are below `prefix` (without reading them).
    pub async fn count(&self, prefix: &str) -> Result<usize> {
        let opts = GetOptions::new()
            .with_range(prefix_range_end(prefix))
            .with_count_only();
        let resp = self
            .kv()
            .get(prefix, Some(opts))
            .await
            .at("count", prefix)?;
        Ok(usize::try_from(resp.count()).unwrap_or(0))
    }

    /// Writes `value` at `key` unconditionally (tests, benchmarks); returns the revision.
    /// Objects go through [`Store::create`], [`Store::update`] or a [`crate::Batch`].
    pub async fn put_raw(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<i64> {
        let resp = self.kv().put(key, value, None).await.at("write", key)?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Deletes `key` unconditionally (tests of repair paths); returns whether it existed.
    pub async fn delete_raw(&self, key: &str) -> Result<bool> {
        let resp = self.kv().delete(key, None).await.at("delete", key)?;
        Ok(resp.deleted() > 0)
    }

    /// Watches every key below `prefix` from `from_revision` on (inclusive; 0 means "from
    /// now"), with etcd's periodic progress notifications.
    pub async fn watch_raw(&self, prefix: &str, from_revision: i64) -> Result<RawWatch> {
        self.open_watch(prefix, from_revision, false, true).await
    }

    /// Opens a watch stream; `prev_kv` asks for deleted values, `progress_notify` for
    /// etcd's periodic progress notifications.
    pub(crate) async fn open_watch(
        &self,
        prefix: &str,
        from_revision: i64,
        prev_kv: bool,
        progress_notify: bool,
    ) -> Result<RawWatch> {
        let mut opts = WatchOptions::new().with_range(prefix_range_end(prefix));
        if from_revision > 0 {
            opts = opts.with_start_revision(from_revision);
        }
        if prev_kv {
            opts = opts.with_prev_key();
        }
        if progress_notify {
            opts = opts.with_progress_notify();
        }
        let stream = self
            .client()
            .watch_client()
            .max_decoding_message_size(crate::store::MAX_MESSAGE)
            .watch(prefix, Some(opts))
            .await
            .at("watch", prefix)?;
        let (sender, stream) = stream.split();
        Ok(RawWatch {
            prefix: prefix.to_string(),
            sender,
            stream,
            revision: from_revision.saturating_sub(1),
            progress: None,
        })
    }
}

/// A live watch of raw keys. Call [`RawWatch::next`] until it errs; then relist (on
/// `Compacted`) or watch again from [`RawWatch::revision`] + 1.
pub struct RawWatch {
    prefix: String,
    sender: WatchRequestSender,
    stream: WatchResponseStream,
    revision: i64,
    progress: Option<tokio::time::Interval>,
}

impl RawWatch {
    /// Also asks etcd for a progress notification every `every` (so an idle watch still
    /// advances [`RawWatch::revision`]).
    pub fn with_progress_every(mut self, every: Duration) -> Self {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.reset();
        self.progress = Some(interval);
        self
    }

    /// The revision every change up to which has been delivered.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The watched prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The next changes, in revision order, and the revision they bring the watch to. An
    /// empty list is a progress notification: nothing changed up to that revision.
    pub async fn next(&mut self) -> Result<(Vec<RawEvent>, i64)> {
        loop {
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
                Err(e) if e.to_string().contains("compacted") => {
                    return Err(StoreError::Compacted {
                        requested: self.revision + 1,
                        compacted: 0,
                    })
                }
                Err(e) => return Err(self.ended(e.to_string())),
            };
            if resp.compact_revision() > 0 {
                return Err(StoreError::Compacted {
                    requested: self.revision + 1,
                    compacted: resp.compact_revision(),
                });
            }
            if resp.canceled() {
                if resp.cancel_reason().contains("permission denied") {
                    return Err(StoreError::PermissionDenied {
                        op: "watch",
                        key: self.prefix.clone(),
                        reason: resp.cancel_reason().to_string(),
                    });
                }
                return Err(self.ended(format!("canceled: {}", resp.cancel_reason())));
            }
            if resp.created() {
                continue;
            }
            let mut events = Vec::with_capacity(resp.events().len());
            let mut revision = self.revision;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                revision = revision.max(kv.mod_revision());
                events.push(match ev.event_type() {
                    EventType::Put => RawEvent::Put(RawKv::from_etcd(kv)),
                    EventType::Delete => RawEvent::Delete {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        revision: kv.mod_revision(),
                        prev: ev.prev_kv().map(RawKv::from_etcd),
                    },
                });
            }
            if events.is_empty() {
                // A progress notification: everything up to the header revision was sent.
                let header = resp.header().map(|h| h.revision()).unwrap_or(0);
                revision = revision.max(header);
            }
            self.revision = revision;
            return Ok((events, revision));
        }
    }

    fn ended(&self, reason: String) -> StoreError {
        StoreError::WatchEnded {
            prefix: self.prefix.clone(),
            reason,
        }
    }
}
