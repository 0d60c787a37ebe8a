//! The reconcile runtime, kube-runtime style, on tokio:
//!
//! ```text
//! watcher (list at R, watch from R+1, relist on compaction)
//!   → cache (one consistent snapshot of everything below the key root, swapped in whole
//!     on relist)
//!   → work queues (de-duplicated keys, per-key exponential backoff with jitter)
//!   → runners (one reconcile per key at a time, a concurrency cap per queue)
//!   → reconcile(key, ctx) -> Result<Action>, level-triggered, with an error policy
//! ```
//!
//! Invariants: a key is never reconciled twice at once; a key added while it is being
//! reconciled runs again afterwards; every write goes through [`txn::Writer`], which fences
//! it on the leader key, so a deposed leader cannot change anything.

pub mod backoff;
pub mod cache;
pub mod error;
pub mod queue;
pub mod runner;
pub mod txn;
pub mod watcher;

pub use backoff::Backoff;
pub use cache::{Cache, Change, World};
pub use error::ControllerError;
pub use queue::WorkQueue;
pub use runner::{Action, Runner};
pub use txn::{Txn, Writer};
pub use watcher::{RawEvent, RawKv, Watcher, WatcherEvent};
