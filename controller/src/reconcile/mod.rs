//! The reconcile machinery (kube-runtime style, on tokio; named `reconcile` so "runtime" means only the node agent's container runtime):
//!
//! ```text
//! shoal_store::Watcher (list at R, watch from R+1, relist on compaction)
//!   → cache (one consistent snapshot of everything below the key root, swapped in whole
//!     on relist)
//!   → work queues (de-duplicated keys, per-key exponential backoff with jitter)
//!   → runners (one reconcile per key at a time, a concurrency cap per queue)
//!   → reconcile(key, ctx) -> Result<Action>, level-triggered, with an error policy
//! ```
//!
//! Invariants: a key is never reconciled twice at once; a key added while it is being
//! reconciled runs again afterwards; every write is a [`shoal_store::Batch`] committed by a
//! [`shoal_store::Writer`] fenced on the leader key, so a deposed leader cannot change
//! anything.
//!
//! The watcher, batches, the fenced writer and [`shoal_store::Backoff`] live in the store,
//! the only crate that talks to etcd; this module owns what is the controller's own: the
//! cache of everything below the key root, the queues and the runners.

pub mod cache;
pub mod error;
pub mod queue;
pub mod record;
pub mod runner;
pub mod usage;

pub use cache::{Cache, Change, World};
pub use error::ControllerError;
pub use queue::WorkQueue;
pub use record::TaskRecord;
pub use runner::{Action, Runner};
