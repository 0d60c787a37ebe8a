//! [`Batch`]: several writes and preconditions in one etcd transaction, all or nothing.
//! Used by `apply`, by allocations (claim an address and write the task together) and by
//! removal rules (delete a network only if no service changed since we looked).

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use shoal_api_types::keys::prefix_range_end;
use shoal_api_types::{Object, Resource};

use crate::error::StoreError;
use crate::store::{encode, prepare_create, with_revision, Store};
use crate::Result;

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

/// An all-or-nothing set of writes. Build it, then [`Batch::commit`].
#[derive(Default)]
pub struct Batch {
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
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

    /// What the batch does, in order.
    pub fn ops(&self) -> &[BatchOp] {
        &self.described
    }

    /// Creates `obj` (stamping uid, timestamp, generation); fails the batch if it exists.
    /// Returns the object as it will be stored.
    pub fn create<S: Resource>(&mut self, store: &Store, obj: &Object<S>) -> Object<S> {
        let obj = prepare_create(obj);
        let key = store.keys.key(&obj);
        self.compares
            .push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
        self.ops.push(TxnOp::put(key.clone(), encode(&obj), None));
        self.described.push(BatchOp::Create(key));
        obj
    }

    /// Writes `obj` if its key is still at `obj.metadata.resourceVersion`.
    pub fn update<S: Resource>(&mut self, store: &Store, obj: &Object<S>) {
        let key = store.keys.key(obj);
        let rev = obj.metadata.revision().unwrap_or(0);
        self.compares
            .push(Compare::mod_revision(key.clone(), CompareOp::Equal, rev));
        self.ops.push(TxnOp::put(key.clone(), encode(obj), None));
        self.described.push(BatchOp::Update(key));
    }

    /// Deletes `obj` if its key is still at `obj.metadata.resourceVersion`.
    pub fn delete<S: Resource>(&mut self, store: &Store, obj: &Object<S>) {
        let key = store.keys.key(obj);
        let rev = obj.metadata.revision().unwrap_or(0);
        self.compares
            .push(Compare::mod_revision(key.clone(), CompareOp::Equal, rev));
        self.ops.push(TxnOp::delete(key.clone(), None));
        self.described.push(BatchOp::Delete(key));
    }

    /// Writes a raw key that must not exist yet (an allocation record).
    pub fn claim(&mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) {
        let key = key.into();
        self.compares
            .push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
        self.ops.push(TxnOp::put(key.clone(), value, None));
        self.described.push(BatchOp::Create(key));
    }

    /// Deletes a raw key whether or not it exists (releasing an allocation).
    pub fn release(&mut self, key: impl Into<String>) {
        let key = key.into();
        self.ops.push(TxnOp::delete(key.clone(), None));
        self.described.push(BatchOp::Delete(key));
    }

    /// Requires that `key` exists.
    pub fn require_present(&mut self, key: impl Into<String>) {
        let key = key.into();
        self.compares
            .push(Compare::create_revision(key.clone(), CompareOp::Greater, 0));
        self.described
            .push(BatchOp::Require(format!("{key} exists")));
    }

    /// Requires that nothing below `prefix` was created, changed or deleted after
    /// `revision` ... as far as etcd can tell from live keys: creations and changes are
    /// caught; pair with a list at `revision` to judge the keys that were there.
    pub fn require_unchanged_since(&mut self, prefix: &str, revision: i64) {
        self.compares.push(
            Compare::mod_revision(prefix, CompareOp::Less, revision + 1)
                .with_range(prefix_range_end(prefix)),
        );
        self.described.push(BatchOp::Require(format!(
            "nothing below {prefix} changed after revision {revision}"
        )));
    }

    /// Commits everything or nothing. Returns the revision of the write.
    pub async fn commit(self, store: &Store) -> Result<i64> {
        if self.ops.is_empty() {
            return store.revision().await;
        }
        let txn = Txn::new().when(self.compares).and_then(self.ops);
        let resp = store.kv().txn(txn).await?;
        if !resp.succeeded() {
            let what: Vec<String> = self
                .described
                .iter()
                .map(|op| match op {
                    BatchOp::Create(k) => format!("create {k}"),
                    BatchOp::Update(k) => format!("update {k}"),
                    BatchOp::Delete(k) => format!("delete {k}"),
                    BatchOp::Require(r) => r.clone(),
                })
                .collect();
            return Err(StoreError::Conflict(format!(
                "a concurrent change got there first (batch: {}); read again and retry",
                what.join(", ")
            )));
        }
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }
}

/// Sets the resourceVersion a batch gave an object (after [`Batch::commit`]).
pub fn stored<S: Resource>(obj: Object<S>, revision: i64) -> Object<S> {
    with_revision(obj, revision)
}
