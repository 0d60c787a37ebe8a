//! [`Watcher`]: an explicit state machine over one etcd prefix.
//!
//! ```text
//! Empty ──list (paged, pinned at revision R)──▶ Watching{from R+1} ──events──▶ Watching
//!   ▲                                              │ stream broke: re-watch from last+1
//!   └────────────── compacted ─────────────────────┘
//! ```
//!
//! It yields [`WatcherEvent::Restarted`] with the complete list (the cache swaps it in
//! whole), then batches of [`RawEvent`]s in revision order. Transport errors never end it:
//! it backs off and resumes from the last revision it delivered, relisting only when that
//! revision was compacted. Values are raw bytes; the cache decodes them by key.

use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchStream};
use shoal_api_types::keys::prefix_range_end;

use super::backoff::Backoff;

/// Largest gRPC message accepted. etcd batches up to 1000 revisions into one watch
/// response for a watcher catching up, far beyond gRPC's default 4 MiB.
const MAX_MESSAGE: usize = 512 * 1024 * 1024;

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
    fn from_etcd(kv: &etcd_client::KeyValue) -> RawKv {
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
    /// Created or changed.
    Put(RawKv),
    /// Deleted at `revision`.
    Delete {
        /// The key.
        key: String,
        /// The deletion revision.
        revision: i64,
    },
}

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
        /// The changes.
        events: Vec<RawEvent>,
        /// The highest revision covered.
        revision: i64,
    },
}

enum State {
    Empty,
    Watching { from: i64 },
    Streaming { stream: Box<WatchStream>, last: i64 },
}

/// Lists then watches everything below one prefix.
pub struct Watcher {
    client: Client,
    prefix: String,
    page: i64,
    state: State,
    backoff: Backoff,
}

impl Watcher {
    /// A watcher over `prefix` (nothing happens until [`Watcher::next`]).
    pub fn new(client: Client, prefix: impl Into<String>) -> Self {
        Watcher {
            client,
            prefix: prefix.into(),
            page: 2000,
            state: State::Empty,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    /// The next batch of changes (or a full relist). Never fails: errors are logged and
    /// retried with backoff.
    pub async fn next(&mut self) -> WatcherEvent {
        loop {
            match std::mem::replace(&mut self.state, State::Empty) {
                State::Empty => match self.list().await {
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
                    let opts = WatchOptions::new()
                        .with_range(prefix_range_end(&self.prefix))
                        .with_start_revision(from)
                        .with_progress_notify();
                    match self
                        .client
                        .watch_client()
                        .max_decoding_message_size(MAX_MESSAGE)
                        .watch(self.prefix.clone(), Some(opts))
                        .await
                    {
                        Ok(stream) => {
                            self.state = State::Streaming {
                                stream: Box::new(stream),
                                last: from - 1,
                            };
                        }
                        Err(e) => {
                            tracing::warn!(prefix = %self.prefix, error = %e, "watch failed; retrying");
                            self.state = State::Watching { from };
                            self.sleep().await;
                        }
                    }
                }
                State::Streaming { mut stream, last } => match stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 {
                            tracing::info!(prefix = %self.prefix, compacted = resp.compact_revision(), "watch revision compacted; relisting");
                            continue;
                        }
                        if resp.canceled() {
                            tracing::warn!(prefix = %self.prefix, reason = resp.cancel_reason(), "watch canceled; resuming");
                            self.state = State::Watching { from: last + 1 };
                            self.sleep().await;
                            continue;
                        }
                        self.backoff.reset();
                        let mut events = Vec::with_capacity(resp.events().len());
                        let mut revision = last;
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            revision = revision.max(kv.mod_revision());
                            events.push(match ev.event_type() {
                                EventType::Put => RawEvent::Put(RawKv::from_etcd(kv)),
                                EventType::Delete => RawEvent::Delete {
                                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                                    revision: kv.mod_revision(),
                                },
                            });
                        }
                        if events.is_empty() {
                            // Created or progress notification: everything up to the header
                            // revision has been sent.
                            if let Some(h) = resp.header() {
                                if !resp.created() {
                                    revision = revision.max(h.revision());
                                }
                            }
                        }
                        self.state = State::Streaming {
                            stream,
                            last: revision,
                        };
                        if events.is_empty() && revision == last {
                            continue;
                        }
                        return WatcherEvent::Events { events, revision };
                    }
                    Ok(None) => {
                        tracing::warn!(prefix = %self.prefix, "watch stream closed; resuming");
                        self.state = State::Watching { from: last + 1 };
                        self.sleep().await;
                    }
                    Err(e) => {
                        let compacted = e.to_string().contains("compacted");
                        tracing::warn!(prefix = %self.prefix, error = %e, "watch stream failed; resuming");
                        self.state = if compacted {
                            State::Empty
                        } else {
                            State::Watching { from: last + 1 }
                        };
                        self.sleep().await;
                    }
                },
            }
        }
    }

    async fn sleep(&mut self) {
        let d = self.backoff.next().unwrap_or(Duration::from_secs(1));
        tokio::time::sleep(d).await;
    }

    /// Lists the prefix in pages, all at one revision.
    async fn list(&self) -> Result<(Vec<RawKv>, i64), etcd_client::Error> {
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE);
        let end = prefix_range_end(&self.prefix);
        let mut items = Vec::new();
        let mut start = self.prefix.as_bytes().to_vec();
        let mut revision = 0;
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(self.page);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let resp = kv.get(start.clone(), Some(opts)).await?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let kvs = resp.kvs();
            items.extend(kvs.iter().map(RawKv::from_etcd));
            match (resp.more(), kvs.last()) {
                (true, Some(last)) => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok((items, revision))
    }
}
