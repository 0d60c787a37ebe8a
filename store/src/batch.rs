//! [`Batch`]: several writes and preconditions in one etcd transaction, all or nothing, and
//! [`Writer`], which commits batches under a [`Fence`]. Used by `apply` (typed creates and
//! updates with "nothing changed since the list" preconditions), by removal rules and by
//! every reconciler of the controller (allocation claims written together with the task).
//!
//! Invariants:
//! - Every typed write compares the key's revision: a create requires the key to be absent,
//!   an update or delete requires `metadata.resourceVersion`; a lost race fails the whole
//!   batch with [`StoreError::Conflict`], never a silent overwrite.
//! - A fenced commit also requires the fence key to still have the create_revision it had
//!   when the fence was taken. The controller's fence is the leader key, so a replica that
//!   lost its lease (key deleted, or re-created by another replica) cannot change anything,
//!   even with writes already in flight.
//! - [`Writer::commit_all`] packs batches into etcd transactions below etcd's limits; each
//!   batch stays atomic whether it is committed packed or alone.

use std::sync::atomic::{AtomicI64, Ordering};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use futures::stream::{self, StreamExt};
use shoal_api_types::keys::{prefix_range_end, Keys};
use shoal_api_types::{Object, Resource};

use crate::error::{At, StoreError};
use crate::store::{encode, prepare_create, with_revision, Identity, Store};
use crate::Result;

/// etcd's default `--max-txn-ops` is 128; stay below it (the fence adds one compare).
pub const MAX_TXN_OPS: usize = 120;
/// Stay well below etcd's default 1.5 MiB request limit.
pub const MAX_TXN_BYTES: usize = 1024 * 1024;

/// One operation of a batch, described for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Create `key` (must not exist).
    Create(String),
    /// Update `key` at a revision.
    Update(String),
    /// Delete `key` at a revision.
    Delete(String),
    /// A precondition.
    Require(String),
}

impl std::fmt::Display for BatchOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchOp::Create(k) => write!(f, "create {k}"),
            BatchOp::Update(k) => write!(f, "update {k}"),
            BatchOp::Delete(k) => write!(f, "delete {k}"),
            BatchOp::Require(r) => f.write_str(r),
        }
    }
}

/// The key whose create_revision every fenced commit compares (the leader key and the term
/// of this replica's leadership).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The key.
    pub key: String,
    /// The create_revision it must still have.
    pub create_revision: i64,
}

/// An all-or-nothing set of writes. Build it, then [`Batch::commit`] it (unfenced) or hand
/// it to a [`Writer`]. Typed operations take anything that knows the key layout: a
/// [`Store`] or its [`Keys`].
#[derive(Default, Clone)]
pub struct Batch {
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
    bytes: usize,
    described: Vec<BatchOp>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of compares or operations, whichever is larger (what etcd limits).
    pub fn size(&self) -> usize {
        self.compares.len().max(self.ops.len())
    }

    /// What the batch does, in order.
    pub fn ops(&self) -> &[BatchOp] {
        &self.described
    }

    fn put(&mut self, key: String, value: Vec<u8>, compare: Compare, what: BatchOp) {
        self.bytes += key.len() * 2 + value.len();
        self.compares.push(compare);
        self.ops.push(TxnOp::put(key, value, None));
        self.described.push(what);
    }

    fn create_as<S: Resource>(
        &mut self,
        keys: &Keys,
        obj: &Object<S>,
        identity: Identity,
    ) -> Object<S> {
        let obj = prepare_create(obj, identity);
        let key = keys.key(&obj);
        self.put(
            key.clone(),
            encode(&obj),
            Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            BatchOp::Create(key),
        );
        obj
    }

    /// Creates `obj` as a new object (fresh uid, creationTimestamp now, generation 1); fails
    /// the batch if its key exists. Returns the object as it will be stored.
    pub fn create<S: Resource>(&mut self, keys: &impl AsRef<Keys>, obj: &Object<S>) -> Object<S> {
        self.create_as(keys.as_ref(), obj, Identity::New)
    }

    /// Creates `obj` at its key keeping its uid, creationTimestamp and generation (set only
    /// where missing): the same object moved to a new key, as the scheduler moves a task
    /// from the unassigned prefix to its node. Fails the batch if the key exists.
    pub fn create_keeping_identity<S: Resource>(
        &mut self,
        keys: &impl AsRef<Keys>,
        obj: &Object<S>,
    ) -> Object<S> {
        self.create_as(keys.as_ref(), obj, Identity::Keep)
    }

    /// Writes `obj` if its key is still at `obj.metadata.resourceVersion`.
    pub fn update<S: Resource>(&mut self, keys: &impl AsRef<Keys>, obj: &Object<S>) {
        let key = keys.as_ref().key(obj);
        let rev = obj.metadata.revision().unwrap_or(0);
        self.put(
            key.clone(),
            encode(obj),
            Compare::mod_revision(key.clone(), CompareOp::Equal, rev),
            BatchOp::Update(key),
        );
    }

    /// Deletes `obj` if its key is still at `obj.metadata.resourceVersion`.
    pub fn delete<S: Resource>(&mut self, keys: &impl AsRef<Keys>, obj: &Object<S>) {
        let rev = obj.metadata.revision().unwrap_or(0);
        self.delete_raw(keys.as_ref().key(obj), rev);
    }

    /// Writes a raw key that must not exist yet (an allocation record and its owner).
    pub fn claim(&mut self, key: impl Into<String>, value: impl AsRef<[u8]>) {
        let key = key.into();
        self.put(
            key.clone(),
            value.as_ref().to_vec(),
            Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            BatchOp::Create(key),
        );
    }

    /// Deletes a raw key if it is still at `revision` (releasing an allocation we saw).
    pub fn delete_raw(&mut self, key: impl Into<String>, revision: i64) {
        let key = key.into();
        self.bytes += key.len() * 2;
        self.compares.push(Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            revision,
        ));
        self.ops.push(TxnOp::delete(key.clone(), None));
        self.described.push(BatchOp::Delete(key));
    }

    /// Writes a raw key whatever it holds (a value owned by an object written in the same
    /// batch under that object's preconditions, like a Secret's payload).
    pub fn put_raw(&mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) {
        let key = key.into();
        let value = value.into();
        self.bytes += key.len() + value.len();
        self.ops.push(TxnOp::put(key.clone(), value, None));
        self.described.push(BatchOp::Update(key));
    }

    /// Deletes a raw key if it exists, whatever its revision (a value owned by an object
    /// deleted in the same batch).
    pub fn remove_raw(&mut self, key: impl Into<String>) {
        let key = key.into();
        self.bytes += key.len();
        self.ops.push(TxnOp::delete(key.clone(), None));
        self.described.push(BatchOp::Delete(key));
    }

    /// Requires that `key` exists.
    pub fn require_present(&mut self, key: impl Into<String>) {
        let key = key.into();
        self.bytes += key.len();
        self.compares
            .push(Compare::create_revision(key.clone(), CompareOp::Greater, 0));
        self.described
            .push(BatchOp::Require(format!("{key} exists")));
    }

    /// Requires that nothing below `prefix` was created or changed after `revision` (as far
    /// as etcd can tell from live keys: deletions are not caught; pair with a list at
    /// `revision` to judge the keys that were there).
    pub fn require_unchanged_since(&mut self, prefix: &str, revision: i64) {
        self.bytes += prefix.len() * 2;
        self.compares.push(
            Compare::mod_revision(prefix, CompareOp::Less, revision + 1)
                .with_range(prefix_range_end(prefix)),
        );
        self.described.push(BatchOp::Require(format!(
            "nothing below {prefix} changed after revision {revision}"
        )));
    }

    /// Adds everything of `other`.
    pub fn extend(&mut self, other: Batch) {
        self.compares.extend(other.compares);
        self.ops.extend(other.ops);
        self.bytes += other.bytes;
        self.described.extend(other.described);
    }

    /// Commits everything or nothing, unfenced. Returns the revision of the write (of the
    /// store, for an empty batch).
    pub async fn commit(self, store: &Store) -> Result<i64> {
        if self.is_empty() {
            return store.revision().await;
        }
        self.commit_fenced(store, None).await
    }

    /// Commits everything or nothing, and only if `fence` still holds.
    async fn commit_fenced(self, store: &Store, fence: Option<&Fence>) -> Result<i64> {
        let mut compares = self.compares;
        if let Some(f) = fence {
            compares.push(Compare::create_revision(
                f.key.clone(),
                CompareOp::Equal,
                f.create_revision,
            ));
        }
        let txn = Txn::new().when(compares).and_then(self.ops);
        let what = summary(&self.described);
        let resp = store.kv().txn(txn).await.at("commit a batch:", &what)?;
        if !resp.succeeded() {
            let cause = if fence.is_some() {
                "changed since read, or leadership lost"
            } else {
                "changed since read"
            };
            return Err(StoreError::Conflict(format!(
                "a precondition failed ({cause}): {what}; read again and retry"
            )));
        }
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }
}

/// The first operations of a batch, for messages.
fn summary(ops: &[BatchOp]) -> String {
    let mut what: Vec<String> = ops.iter().take(4).map(|op| op.to_string()).collect();
    if ops.len() > 4 {
        what.push(format!("and {} more", ops.len() - 4));
    }
    what.join(", ")
}

/// Sets the resourceVersion a batch gave an object (after [`Batch::commit`]).
pub fn stored<S: Resource>(obj: Object<S>, revision: i64) -> Object<S> {
    with_revision(obj, revision)
}

/// Commits batches, each under the same optional [`Fence`], and remembers the highest
/// revision written (so a reader of a cache can wait until it reflects its own writes).
pub struct Writer {
    store: Store,
    fence: Option<Fence>,
    last: AtomicI64,
}

impl Writer {
    /// A writer whose every commit requires `fence` (`None`: unfenced, for tests of single
    /// reconcilers).
    pub fn new(store: Store, fence: Option<Fence>) -> Self {
        Writer {
            store,
            fence,
            last: AtomicI64::new(0),
        }
    }

    /// The fence of every commit.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// The revision of the latest successful commit.
    pub fn last_revision(&self) -> i64 {
        self.last.load(Ordering::SeqCst)
    }

    /// Commits `batch` all or nothing; returns the revision written (0 for an empty batch:
    /// nothing written).
    pub async fn commit(&self, batch: Batch) -> Result<i64> {
        if batch.is_empty() {
            return Ok(0);
        }
        let rev = batch
            .commit_fenced(&self.store, self.fence.as_ref())
            .await?;
        self.last.fetch_max(rev, Ordering::SeqCst);
        Ok(rev)
    }

    /// Commits many independent batches, packed into etcd transactions below
    /// [`MAX_TXN_OPS`] and [`MAX_TXN_BYTES`], `parallel` at a time. Every one is attempted:
    /// when a packed transaction fails on a precondition, its members are retried one by
    /// one so one lost race does not hold back the rest. Returns the highest revision
    /// written, or the first error after all were attempted.
    pub async fn commit_all(&self, batches: Vec<Batch>, parallel: usize) -> Result<i64> {
        let mut packs: Vec<Vec<Batch>> = Vec::new();
        let (mut size, mut bytes) = (0, 0);
        for b in batches.into_iter().filter(|b| !b.is_empty()) {
            let fits = !packs.is_empty()
                && size + b.size() <= MAX_TXN_OPS
                && bytes + b.bytes <= MAX_TXN_BYTES;
            if !fits {
                packs.push(Vec::new());
                (size, bytes) = (0, 0);
            }
            size += b.size();
            bytes += b.bytes;
            packs.last_mut().expect("pushed").push(b);
        }
        let results: Vec<Result<i64>> = stream::iter(packs)
            .map(|p| self.commit_pack(p))
            .buffer_unordered(parallel.max(1))
            .collect()
            .await;
        highest(results)
    }

    async fn commit_pack(&self, pack: Vec<Batch>) -> Result<i64> {
        if pack.len() == 1 {
            return self.commit(pack.into_iter().next().expect("one")).await;
        }
        let mut merged = Batch::new();
        for b in &pack {
            merged.extend(b.clone());
        }
        match self.commit(merged).await {
            Err(StoreError::Conflict(_)) => {
                let mut results = Vec::with_capacity(pack.len());
                for b in pack {
                    results.push(self.commit(b).await);
                }
                highest(results)
            }
            other => other,
        }
    }
}

/// The highest revision, or the first error.
fn highest(results: Vec<Result<i64>>) -> Result<i64> {
    let mut rev = 0;
    let mut first_err = None;
    for r in results {
        match r {
            Ok(r) => rev = rev.max(r),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(rev),
    }
}
