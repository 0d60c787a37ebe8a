//! Typed access to Shoal's objects in etcd, shared by the controller, the API server, the
//! node agent, the benchmarks and the tests: the only crate that talks to etcd (see
//! `docs/architecture.md`, "store").
//!
//! What lives here: connection settings ([`Connect`]), typed get/list/create/update/delete
//! ([`Store`]), all-or-nothing writes with an optional fence ([`Batch`], [`Writer`]), raw
//! keys for allocation records and liveness ([`RawKv`]), watches ([`Watch`], [`RawWatch`]),
//! the list-then-watch state machine ([`Watcher`]) and the typed cache over it
//! ([`reflect`]), leases ([`LeaseKeeper`]), leader election ([`leader`]), etcd users and
//! roles ([`auth`]) and the retry policy everything shares ([`Backoff`]).
//!
//! Invariants:
//! - Every write is an etcd transaction that compares `mod_revision` (or `create_revision`
//!   for creates); a lost race is [`StoreError::Conflict`] / [`StoreError::AlreadyExists`],
//!   never a silent overwrite. A fenced write also compares the fence key.
//! - `metadata.resourceVersion` is the key's `mod_revision`; it is never stored in the value.
//! - A list returns the revision it was read at; a watch from `revision + 1` sees exactly
//!   the changes after it. A compacted revision is [`StoreError::Compacted`], the signal to
//!   relist.
//! - etcd refusing a request (no permission, user removed) is
//!   [`StoreError::PermissionDenied`], never temporary.
//! - No type of `etcd-client` appears in this crate's public API except as the source of
//!   [`StoreError::Etcd`] and [`StoreError::Auth`].

pub mod auth;
mod backoff;
mod batch;
mod connect;
mod error;
pub mod failover;
pub mod leader;
mod lease;
mod raw;
mod reflector;
mod store;
#[cfg(feature = "test-util")]
pub mod testing;
mod watch;
mod watcher;

pub use backoff::{jittered, Backoff};
pub use batch::{stored, Batch, BatchOp, Fence, Writer, MAX_TXN_BYTES, MAX_TXN_OPS};
pub use connect::Connect;
pub use error::StoreError;
pub use leader::Leadership;
pub use lease::{Lease, LeaseKeeper, RenewalStats, RenewalSummary};
pub use raw::{RawEvent, RawKv, RawWatch};
pub use reflector::{
    delete_logged, put_logged, reflect, reflect_known, reflect_logged, Cache, ChangeLog, Changed,
    Known,
};
pub use store::{decode, CheckMany, Store, UpdateMany, LIST_PAGE};
pub use watch::{Event, Watch};
pub use watcher::{Watcher, WatcherEvent};

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The environment of the etcd servers Shoal starts (the local cluster's, the benchmarks',
/// `testing`'s; deploy/etcd/etcd.env.example says the same for real hosts): Go's garbage
/// collector lets the heap grow 4 times its live size between collections, not once
/// (`GOGC=400`; Go's default is 100). etcd keeps its key index in memory and allocates on
/// every request, so at scale its collector is a large part of its CPU: figure 2 at
/// 1,000 × 100,000 spent a median 31.5 CPU-s in etcd by default and 23.5 with this, for a
/// peak RSS of ~1.8 GiB against ~0.8 GiB (docs/benchmarks-history.md, "etcd's garbage
/// collector").
pub const ETCD_ENV: &[(&str, &str)] = &[("GOGC", "400")];
