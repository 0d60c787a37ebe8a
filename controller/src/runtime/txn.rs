//! Fenced, all-or-nothing writes.
//!
//! A [`Txn`] collects compares and operations (typed creates/updates/deletes compared on
//! revisions, raw allocation claims and releases). The [`Writer`] commits it with one more
//! compare: the leader key still has the create_revision this replica's election produced.
//! A replica that lost its lease (key gone or re-created by another replica) therefore
//! cannot change anything, even with writes already in flight.
//!
//! [`Writer::commit_all`] packs many small transactions into etcd transactions below etcd's
//! per-transaction operation limit; each small one stays atomic.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::Utc;
use etcd_client::{Client, Compare, CompareOp, TxnOp};
use futures::stream::{self, StreamExt};
use shoal_api_types::keys::Keys;
use shoal_api_types::{Object, Resource};

use super::error::ControllerError;

/// etcd's default `--max-txn-ops` is 128; stay below it (the fence adds one compare).
pub const MAX_TXN_OPS: usize = 120;
/// Stay well below etcd's default 1.5 MiB request limit.
pub const MAX_TXN_BYTES: usize = 1024 * 1024;

/// A set of compares and writes that commit together or not at all.
#[derive(Default, Clone)]
pub struct Txn {
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
    bytes: usize,
    what: Vec<String>,
}

/// The stored form of an object: JSON without resourceVersion.
pub fn encode<S: Resource>(obj: &Object<S>) -> Vec<u8> {
    let mut obj = obj.clone();
    obj.metadata.resource_version = None;
    serde_json::to_vec(&obj).expect("objects always serialise")
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Txn::default()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of compares or operations, whichever is larger (what etcd limits).
    pub fn size(&self) -> usize {
        self.compares.len().max(self.ops.len())
    }

    fn put(&mut self, key: String, value: Vec<u8>, compare: Compare, what: String) {
        self.bytes += key.len() * 2 + value.len();
        self.compares.push(compare);
        self.ops.push(TxnOp::put(key, value, None));
        self.what.push(what);
    }

    /// Creates `obj` at its key (which must not exist). Sets uid, creationTimestamp and
    /// generation if unset, so a moved object keeps its identity. Returns it as stored.
    pub fn create<S: Resource>(&mut self, keys: &Keys, obj: &Object<S>) -> Object<S> {
        let mut obj = obj.clone();
        obj.api_version = shoal_api_types::API_VERSION.to_string();
        obj.kind = S::KIND.to_string();
        if obj.metadata.uid.is_empty() {
            obj.metadata.uid = uuid::Uuid::new_v4().to_string();
        }
        if obj.metadata.creation_timestamp.is_none() {
            obj.metadata.creation_timestamp = Some(Utc::now());
        }
        obj.metadata.generation = obj.metadata.generation.max(1);
        obj.metadata.resource_version = None;
        let key = keys.key(&obj);
        self.put(
            key.clone(),
            encode(&obj),
            Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            format!("create {key}"),
        );
        obj
    }

    /// Writes `obj` if its key is still at `obj.metadata.resourceVersion`.
    pub fn update<S: Resource>(&mut self, keys: &Keys, obj: &Object<S>) {
        let key = keys.key(obj);
        let rev = obj.metadata.revision().unwrap_or(0);
        self.put(
            key.clone(),
            encode(obj),
            Compare::mod_revision(key.clone(), CompareOp::Equal, rev),
            format!("update {key}"),
        );
    }

    /// Deletes `obj` if its key is still at `obj.metadata.resourceVersion`.
    pub fn delete<S: Resource>(&mut self, keys: &Keys, obj: &Object<S>) {
        let key = keys.key(obj);
        let rev = obj.metadata.revision().unwrap_or(0);
        self.delete_raw(key, rev);
    }

    /// Claims a raw allocation record that must not exist yet.
    pub fn claim(&mut self, key: String, owner: &str) {
        self.put(
            key.clone(),
            owner.as_bytes().to_vec(),
            Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            format!("claim {key}"),
        );
    }

    /// Deletes a raw key if it is still at `revision` (releasing an allocation we saw).
    pub fn delete_raw(&mut self, key: String, revision: i64) {
        self.bytes += key.len() * 2;
        self.compares.push(Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            revision,
        ));
        self.ops.push(TxnOp::delete(key.clone(), None));
        self.what.push(format!("delete {key}"));
    }

    /// Adds everything of `other`.
    pub fn extend(&mut self, other: Txn) {
        self.compares.extend(other.compares);
        self.ops.extend(other.ops);
        self.bytes += other.bytes;
        self.what.extend(other.what);
    }
}

/// Commits transactions, fenced on the leader key.
pub struct Writer {
    client: Client,
    fence: Option<(String, i64)>,
    last: AtomicI64,
}

impl Writer {
    /// A writer whose every commit requires `leader_key` to have `create_revision`
    /// (`None`: unfenced, for tests of single reconcilers).
    pub fn new(client: Client, fence: Option<(String, i64)>) -> Self {
        Writer {
            client,
            fence,
            last: AtomicI64::new(0),
        }
    }

    /// The revision of the latest successful commit.
    pub fn last_revision(&self) -> i64 {
        self.last.load(Ordering::SeqCst)
    }

    /// Commits `txn` all or nothing; returns the revision written.
    pub async fn commit(&self, txn: Txn) -> Result<i64, ControllerError> {
        if txn.is_empty() {
            return Ok(0);
        }
        let mut compares = txn.compares;
        if let Some((key, rev)) = &self.fence {
            compares.push(Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                *rev,
            ));
        }
        let etcd_txn = etcd_client::Txn::new().when(compares).and_then(txn.ops);
        let resp = self.client.kv_client().txn(etcd_txn).await?;
        if !resp.succeeded() {
            let mut what = txn.what;
            let more = what.len().saturating_sub(4);
            what.truncate(4);
            if more > 0 {
                what.push(format!("and {more} more"));
            }
            return Err(ControllerError::Conflict(format!(
                "a precondition failed (changed since read, or leadership lost): {}",
                what.join(", ")
            )));
        }
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        self.last.fetch_max(rev, Ordering::SeqCst);
        Ok(rev)
    }

    /// Commits many independent transactions, packed into etcd transactions below the
    /// limits, `parallel` at a time. Every one is attempted: when a packed transaction
    /// fails on a precondition, its members are retried one by one so one lost race does
    /// not hold back the rest. Returns the highest revision written, or the first error
    /// after all were attempted.
    pub async fn commit_all(
        &self,
        txns: Vec<Txn>,
        parallel: usize,
    ) -> Result<i64, ControllerError> {
        let mut packs: Vec<Vec<Txn>> = Vec::new();
        let mut size = 0;
        let mut bytes = 0;
        for t in txns.into_iter().filter(|t| !t.is_empty()) {
            let fits = packs.last().is_some_and(|_| {
                size + t.size() <= MAX_TXN_OPS && bytes + t.bytes <= MAX_TXN_BYTES
            });
            if !fits {
                packs.push(Vec::new());
                size = 0;
                bytes = 0;
            }
            size += t.size();
            bytes += t.bytes;
            packs.last_mut().expect("pushed").push(t);
        }
        let results: Vec<Result<i64, ControllerError>> = stream::iter(packs)
            .map(|p| self.commit_pack(p))
            .buffer_unordered(parallel.max(1))
            .collect()
            .await;
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

    async fn commit_pack(&self, pack: Vec<Txn>) -> Result<i64, ControllerError> {
        if pack.len() == 1 {
            return self.commit(pack.into_iter().next().expect("one")).await;
        }
        let mut merged = Txn::new();
        for t in &pack {
            merged.extend(t.clone());
        }
        match self.commit(merged).await {
            Err(ControllerError::Conflict(_)) => {
                let mut rev = 0;
                let mut first_err = None;
                for t in pack {
                    match self.commit(t).await {
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
            other => other,
        }
    }
}
