//! [`Watcher`]: the one list-then-watch state machine, over one prefix, shaped like
//! kube-runtime's watcher.
//!
//! ```text
//! Empty ──list (paged, pinned at revision R)──▶ Watching{from R+1} ──events──▶ Streaming
//!   ▲                                              ▲ stream broke: watch again from last+1
//!   └────────────── compacted (410) ───────────────┴──────────────────────────────┘
//! ```
//!
//! It yields [`WatcherEvent::Restarted`] with the complete list (first start and after
//! compaction; a consumer swaps it in whole), then [`WatcherEvent::Events`] in revision
//! order. Errors never end it: it backs off and resumes from the last revision it
//! delivered, relisting only when that revision was compacted. Progress notifications
//! advance the revision while nothing changes. Values are raw bytes: the controller's cache
//! decodes them by key, [`crate::reflect`] by type.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::error::StoreError;
use crate::raw::{RawEvent, RawKv, RawWatch};
use crate::store::Store;

/// What the watcher yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatcherEvent {
    /// Everything below the prefix at `revision` (first start and after compaction).
    Restarted {
        /// The keys.
        items: Vec<RawKv>,
        /// The revision they were read at.
        revision: i64,
    },
    /// Changes, in revision order; every change up to `revision` has been delivered.
    Events {
        /// The changes (empty for a progress notification).
        events: Vec<RawEvent>,
        /// The highest revision covered.
        revision: i64,
    },
}

enum State {
    Empty,
    Watching { from: i64 },
    Streaming { watch: Box<RawWatch> },
}

/// Lists then watches everything below one prefix.
pub struct Watcher {
    store: Store,
    prefix: String,
    progress_every: Option<Duration>,
    state: State,
    backoff: Backoff,
}

impl Watcher {
    /// A watcher over `prefix` (nothing happens until [`Watcher::next`]).
    pub fn new(store: Store, prefix: impl Into<String>) -> Self {
        Watcher {
            store,
            prefix: prefix.into(),
            progress_every: None,
            state: State::Empty,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    /// Also asks etcd for progress every `every`, beyond etcd's own periodic notifications.
    pub fn with_progress_every(mut self, every: Duration) -> Self {
        self.progress_every = Some(every);
        self
    }

    /// The watched prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The next batch of changes (or a full relist). Never fails: errors are logged and
    /// retried with backoff.
    pub async fn next(&mut self) -> WatcherEvent {
        loop {
            match std::mem::replace(&mut self.state, State::Empty) {
                State::Empty => match self.store.list_raw(&self.prefix).await {
                    Ok((items, revision)) => {
                        self.backoff.reset();
                        self.state = State::Watching { from: revision + 1 };
                        return WatcherEvent::Restarted { items, revision };
                    }
                    Err(e) => {
                        tracing::warn!(prefix = %self.prefix, error = %e, "list failed; retrying");
                        self.sleep().await;
                    }
                },
                State::Watching { from } => {
                    match self.store.open_watch(&self.prefix, from, false, true).await {
                        Ok(watch) => {
                            let watch = match self.progress_every {
                                Some(every) => watch.with_progress_every(every),
                                None => watch,
                            };
                            self.state = State::Streaming {
                                watch: Box::new(watch),
                            };
                        }
                        Err(e) => {
                            tracing::warn!(prefix = %self.prefix, error = %e, "watch failed; retrying");
                            self.state = State::Watching { from };
                            self.sleep().await;
                        }
                    }
                }
                State::Streaming { mut watch } => {
                    let last = watch.revision();
                    match watch.next().await {
                        Ok((events, revision)) => {
                            self.backoff.reset();
                            self.state = State::Streaming { watch };
                            if events.is_empty() && revision == last {
                                continue;
                            }
                            return WatcherEvent::Events { events, revision };
                        }
                        Err(StoreError::Compacted { compacted, .. }) => {
                            tracing::info!(prefix = %self.prefix, compacted, "watch revision compacted; relisting");
                        }
                        Err(e) => {
                            tracing::warn!(prefix = %self.prefix, error = %e, "watch stream failed; resuming");
                            self.state = State::Watching { from: last + 1 };
                            self.sleep().await;
                        }
                    }
                }
            }
        }
    }

    async fn sleep(&mut self) {
        let d = self.backoff.next().unwrap_or(Duration::from_secs(1));
        tokio::time::sleep(d).await;
    }
}
