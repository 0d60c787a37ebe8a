//! Typed access to Shoal's objects in etcd, shared by the controller, the API server and the
//! node agent.
//!
//! Invariants:
//! - Every write is an etcd transaction that compares `mod_revision` (or `create_revision`
//!   for creates); a lost race is [`StoreError::Conflict`] / [`StoreError::AlreadyExists`],
//!   never a silent overwrite.
//! - `metadata.resourceVersion` is the key's `mod_revision`; it is never stored in the value.
//! - A list returns the revision it was read at; [`Store::watch`] from `revision + 1` sees
//!   exactly the changes after it. A compacted revision is [`StoreError::Compacted`], the
//!   signal to relist.

mod batch;
mod error;
mod lease;
mod store;
#[cfg(feature = "test-util")]
pub mod testing;
mod watch;

pub use batch::{stored, Batch, BatchOp};
pub use error::StoreError;
pub use lease::{Lease, LeaseKeeper};
pub use store::{Connect, Store, LIST_PAGE};
pub use watch::{Event, Watch};

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
