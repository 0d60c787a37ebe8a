//! The [`Store`]: typed get, list, create, update and delete over etcd, and the one etcd
//! client every clone of a store shares.
//!
//! The client can be replaced while the store is in use ([`Store::set_connect`], a node
//! agent's certificate renewal): requests started afterwards use the new client; watches
//! already open finish on the old one (the list-then-watch [`crate::Watcher`] reopens on
//! the new one), and lease keep-alives ([`crate::LeaseKeeper`]) move to the new one at once.

use std::sync::{Arc, RwLock};

use chrono::Utc;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse, TxnResponse};
use shoal_api_types::keys::Keys;
use shoal_api_types::{Object, Resource};

use crate::connect::Connect;
use crate::error::{At, StoreError};
use crate::Result;

/// Keys per page of a list.
pub const LIST_PAGE: i64 = 2_000;

/// The largest gRPC message we accept from etcd: it batches up to 1000 revisions into one
/// watch response for a watcher catching up, far beyond gRPC's default 4 MiB.
pub(crate) const MAX_MESSAGE: usize = 512 << 20;

/// What [`Store::update_many`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateMany<S: Resource> {
    /// Every object was written, at this revision (0: nothing to write).
    Written(i64),
    /// At least one key had changed, so nothing was written: each key's current object,
    /// in the order given (`None`: the key is gone).
    Conflict(Vec<Option<Object<S>>>),
}

/// What [`Store::check_many`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckMany<S: Resource> {
    /// Every key still holds the revision given.
    Unchanged,
    /// At least one key had changed: each key's current object, in the order given
    /// (`None`: the key is gone).
    Changed(Vec<Option<Object<S>>>),
}

/// Typed access to objects in etcd. Cheap to clone; clones share one connection, and
/// [`Store::set_connect`] replaces it for all of them.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Shared>,
    pub(crate) keys: Keys,
}

/// The client all clones of a store use, and a counter of its replacements.
struct Shared {
    client: RwLock<Client>,
    generation: tokio::sync::watch::Sender<u64>,
    /// The settings the client was built from, and the endpoint it is pinned to (see
    /// [`crate::failover`]).
    pinned: RwLock<(Connect, usize)>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.keys.root())
            .finish()
    }
}

impl AsRef<Keys> for Store {
    fn as_ref(&self) -> &Keys {
        &self.keys
    }
}

impl Store {
    /// Connects to etcd. Fails if no endpoint answers within the connect timeout.
    ///
    /// With several endpoints the client is pinned to the first that answers, and a
    /// background task moves it to another when that one stops answering
    /// ([`crate::failover`]).
    pub async fn connect(cfg: &Connect) -> Result<Store> {
        let keys = cfg.root.as_deref().map(Keys::new).unwrap_or_default();
        let (client, index) = crate::failover::first_answering(cfg, &keys, 0).await?;
        let store = Store {
            conn: Arc::new(Shared {
                client: RwLock::new(client),
                generation: tokio::sync::watch::Sender::new(0),
                pinned: RwLock::new((cfg.clone(), index)),
            }),
            keys,
        };
        if cfg.endpoints.len() > 1 {
            store.spawn_failover_monitor();
        }
        Ok(store)
    }

    /// Starts the monitor of the pinned endpoint ([`crate::failover`]); it ends when every
    /// clone of the store is dropped.
    fn spawn_failover_monitor(&self) {
        let weak = Arc::downgrade(&self.conn);
        let keys = self.keys.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(crate::failover::PROBE_EVERY).await;
                let Some(conn) = weak.upgrade() else {
                    return;
                };
                let store = Store {
                    conn,
                    keys: keys.clone(),
                };
                if crate::failover::healthy(&store.client(), &keys).await {
                    continue;
                }
                let (cfg, pinned) = store.pinned();
                let next = (pinned + 1) % cfg.endpoints.len();
                match crate::failover::first_answering(&cfg, &keys, next).await {
                    Ok((client, index)) if index != pinned => {
                        tracing::warn!(
                            from = %cfg.endpoints[pinned],
                            to = %cfg.endpoints[index],
                            "etcd endpoint stopped answering; moved to another"
                        );
                        store.replace_client(client, cfg, index);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "no etcd endpoint answers"),
                }
            }
        });
    }

    /// The settings and pinned endpoint index (failover).
    pub(crate) fn pinned(&self) -> (Connect, usize) {
        self.conn
            .pinned
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the client (a failover, a renewal) and tells watchers and lease keepers.
    pub(crate) fn replace_client(&self, client: Client, cfg: Connect, index: usize) {
        *self.conn.client.write().unwrap_or_else(|e| e.into_inner()) = client;
        *self.conn.pinned.write().unwrap_or_else(|e| e.into_inner()) = (cfg, index);
        self.conn.generation.send_modify(|g| *g += 1);
    }

    /// Replaces the etcd client of this store and all its clones with one built from
    /// `cfg` (new endpoints, a renewed client certificate), once it has answered a
    /// request; on error the current client stays. The key root does not change (`cfg.root`
    /// must be `None` or the same).
    ///
    /// Requests started afterwards use the new client. Watches already open keep running
    /// on the old connection until they end (a [`crate::Watcher`] or [`crate::reflect`]
    /// then reopens on the new one); [`crate::LeaseKeeper`]s switch to the new client at
    /// once, so the leases they keep are never interrupted.
    pub async fn set_connect(&self, cfg: Connect) -> Result<()> {
        if let Some(root) = cfg.root.as_deref() {
            if Keys::new(root).root() != self.keys.root() {
                return Err(StoreError::InvalidConnect(format!(
                    "the key root cannot change from {} to {root}",
                    self.keys.root()
                )));
            }
        }
        // Connecting is lazy; make sure the new client is let in (with the same probe as
        // `connect`) before using it, starting at the endpoint pinned now.
        let cfg = Connect {
            root: Some(self.keys.root().to_string()),
            ..cfg
        };
        let (_, pinned) = self.pinned();
        let (client, index) = crate::failover::first_answering(&cfg, &self.keys, pinned).await?;
        self.replace_client(client, cfg, index);
        Ok(())
    }

    /// A store over a connection of its own, built from this store's settings, for work
    /// that load on the shared connection must not delay (lease keep-alives: a node agent's
    /// reconcile traffic can queue thousands of requests on one HTTP/2 connection). It
    /// follows this store: when [`Store::set_connect`] or a failover replaces this store's
    /// client, the separate store reconnects with the new settings; that stops once either
    /// store is dropped.
    pub async fn separate(&self) -> Result<Store> {
        let (cfg, _) = self.pinned();
        let other = Store::connect(&cfg).await?;
        let mut changes = self.client_changes();
        let parent = Arc::downgrade(&self.conn);
        let child = Arc::downgrade(&other.conn);
        let keys = self.keys.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let (Some(parent), Some(child)) = (parent.upgrade(), child.upgrade()) else {
                    return;
                };
                let parent = Store {
                    conn: parent,
                    keys: keys.clone(),
                };
                let child = Store {
                    conn: child,
                    keys: keys.clone(),
                };
                let (cfg, _) = parent.pinned();
                drop(parent);
                if let Err(e) = child.set_connect(cfg).await {
                    tracing::warn!(error = %e, "the separate etcd connection cannot follow the new settings; it keeps the old ones");
                }
            }
        });
        Ok(other)
    }

    /// The current etcd client (cheap: clones share the connection).
    pub(crate) fn client(&self) -> Client {
        self.conn
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes whenever [`Store::set_connect`] replaces the client.
    pub(crate) fn client_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.conn.generation.subscribe()
    }

    /// The key layout in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The key read (count only, never written) to learn the store's revision and whether
    /// a revision is compacted: one every identity may read, the controller's as well as a
    /// node's (`<root>/nodes/`, the nodes' prefix itself, which no Node is named).
    fn probe_key(&self) -> String {
        self.keys.prefix::<shoal_api_types::NodeSpec>()
    }

    /// The current revision of the whole store.
    pub async fn revision(&self) -> Result<i64> {
        let probe = self.probe_key();
        let resp = self
            .kv()
            .get(probe.as_str(), Some(GetOptions::new().with_count_only()))
            .await
            .at("read", &probe)?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// The object at `key`, if any.
    pub async fn get<S: Resource>(&self, key: &str) -> Result<Option<Object<S>>> {
        let resp = self.kv().get(key, None).await.at("read", key)?;
        resp.kvs()
            .first()
            .map(|kv| decode(kv.key(), kv.value(), kv.mod_revision()))
            .transpose()
    }

    /// The object of kind `S` named `name` (kinds keyed by name only).
    pub async fn get_named<S: Resource>(&self, name: &str) -> Result<Option<Object<S>>> {
        self.get(&self.keys.named::<S>(name)).await
    }

    /// Every object of kind `S`, and the revision they were read at.
    pub async fn list<S: Resource>(&self) -> Result<(Vec<Object<S>>, i64)> {
        self.list_prefix(&self.keys.prefix::<S>()).await
    }

    /// Every object of kind `S` below `prefix`, and the revision they were read at.
    ///
    /// Reads in pages of [`LIST_PAGE`] keys, all at the revision of the first page, so a
    /// list of any size is one consistent snapshot and no response nears gRPC's limits.
    pub async fn list_prefix<S: Resource>(&self, prefix: &str) -> Result<(Vec<Object<S>>, i64)> {
        let (raw, revision) = self.list_raw(prefix).await?;
        let items = raw
            .iter()
            .map(|kv| decode(kv.key.as_bytes(), &kv.value, kv.mod_revision))
            .collect::<Result<_>>()?;
        Ok((items, revision))
    }

    /// A KV client whose responses may be as large as etcd sends them.
    pub(crate) fn kv(&self) -> etcd_client::KvClient {
        self.client()
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
    }

    /// Fails with [`StoreError::Compacted`] if `revision` is no longer readable.
    pub async fn check_revision(&self, revision: i64) -> Result<()> {
        let opts = GetOptions::new().with_revision(revision).with_count_only();
        let probe = self.probe_key();
        match self.kv().get(probe.as_str(), Some(opts)).await {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("compacted") => {
                let compacted = s
                    .message()
                    .split_whitespace()
                    .last()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                Err(StoreError::Compacted {
                    requested: revision,
                    compacted,
                })
            }
            // A future revision is fine to watch from: the watch waits.
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("future revision") => {
                Ok(())
            }
            Err(e) => Err(StoreError::from_etcd(e, "read", &probe)),
        }
    }

    /// Creates an object: sets uid, creationTimestamp and generation 1, and fails with
    /// [`StoreError::AlreadyExists`] if the key is taken.
    pub async fn create<S: Resource>(&self, obj: &Object<S>) -> Result<Object<S>> {
        let obj = prepare_create(obj, Identity::New);
        let key = self.keys.key(&obj);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), encode(&obj), None)]);
        let resp = self.kv().txn(txn).await.at("create", &key)?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists {
                kind: S::KIND,
                name: obj.metadata.name.clone(),
            });
        }
        Ok(with_revision(
            obj,
            resp.header().map(|h| h.revision()).unwrap_or(0),
        ))
    }

    /// Writes `obj` if its key's mod_revision still equals `obj.metadata.resourceVersion`.
    /// The caller decides generation and status; see [`Store::update_with`].
    pub async fn update<S: Resource>(&self, obj: &Object<S>) -> Result<Object<S>> {
        let key = self.keys.key(obj);
        let rev = required_revision(obj)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key.clone(), encode(obj), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.kv().txn(txn).await.at("update", &key)?;
        if !resp.succeeded() {
            let exists = resp
                .op_responses()
                .iter()
                .any(|r| matches!(r, TxnOpResponse::Get(g) if !g.kvs().is_empty()));
            if !exists {
                return Err(StoreError::NotFound {
                    kind: S::KIND,
                    name: obj.metadata.name.clone(),
                });
            }
            return Err(StoreError::Conflict(format!(
                "{} {:?} was changed since resourceVersion {rev}; read it again and retry",
                S::KIND.to_lowercase(),
                obj.metadata.name
            )));
        }
        Ok(with_revision(
            obj.clone(),
            resp.header().map(|h| h.revision()).unwrap_or(0),
        ))
    }

    /// Writes every object of `objs` in one transaction, each only if its key's
    /// mod_revision still equals its `metadata.resourceVersion`: all or nothing. On a lost
    /// race nothing is written and [`UpdateMany::Conflict`] carries every key's current
    /// object (read in the same transaction), so the caller can redo its change without
    /// another request. The caller keeps the batch below [`crate::MAX_TXN_OPS`] and
    /// [`crate::MAX_TXN_BYTES`]; an object without a resourceVersion is refused.
    pub async fn update_many<S: Resource>(&self, objs: &[Object<S>]) -> Result<UpdateMany<S>> {
        if objs.is_empty() {
            return Ok(UpdateMany::Written(0));
        }
        let (compares, gets) = self.revision_guard(objs)?;
        let puts: Vec<TxnOp> = objs
            .iter()
            .map(|obj| TxnOp::put(self.keys.key(obj), encode(obj), None))
            .collect();
        let first = self.keys.key(&objs[0]);
        let txn = Txn::new().when(compares).and_then(puts).or_else(gets);
        let resp = self.kv().txn(txn).await.at("update", &first)?;
        if resp.succeeded() {
            return Ok(UpdateMany::Written(
                resp.header().map(|h| h.revision()).unwrap_or(0),
            ));
        }
        let current = current_objects::<S>(&resp)?;
        Ok(UpdateMany::Conflict(current))
    }

    /// Checks that every object of `objs` is still stored at its `metadata.resourceVersion`,
    /// in one read-only transaction: compares only, so etcd serves it as a linearizable
    /// read (no raft entry, no new revision, no watch event). If one changed,
    /// [`CheckMany::Changed`] carries every key's current object (read in the same
    /// transaction). The caller keeps the batch below [`crate::MAX_TXN_OPS`]; an object
    /// without a resourceVersion is refused.
    pub async fn check_many<S: Resource>(&self, objs: &[Object<S>]) -> Result<CheckMany<S>> {
        if objs.is_empty() {
            return Ok(CheckMany::Unchanged);
        }
        let (compares, gets) = self.revision_guard(objs)?;
        let first = self.keys.key(&objs[0]);
        let txn = Txn::new().when(compares).or_else(gets);
        let resp = self.kv().txn(txn).await.at("check", &first)?;
        if resp.succeeded() {
            return Ok(CheckMany::Unchanged);
        }
        let current = current_objects::<S>(&resp)?;
        Ok(CheckMany::Changed(current))
    }

    /// For a transaction over `objs` that reads them all back when one changed: a compare
    /// of each key's mod_revision with the object's resourceVersion, and a get of each key
    /// (for the `else` branch, decoded by [`current_objects`]).
    fn revision_guard<S: Resource>(
        &self,
        objs: &[Object<S>],
    ) -> Result<(Vec<Compare>, Vec<TxnOp>)> {
        let mut compares = Vec::with_capacity(objs.len());
        let mut gets = Vec::with_capacity(objs.len());
        for obj in objs {
            let key = self.keys.key(obj);
            let rev = required_revision(obj)?;
            compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, rev));
            gets.push(TxnOp::get(key, None));
        }
        Ok((compares, gets))
    }

    /// Read-modify-write with retries on conflict: reads the object at `key`, lets `change`
    /// edit it (returning `false` means "nothing to do"), bumps `generation` if the spec
    /// changed, and writes it back. Returns the stored object, or `None` if it does not
    /// exist.
    pub async fn update_with<S: Resource>(
        &self,
        key: &str,
        mut change: impl FnMut(&mut Object<S>) -> bool,
    ) -> Result<Option<Object<S>>> {
        for _ in 0..16 {
            let Some(current) = self.get::<S>(key).await? else {
                return Ok(None);
            };
            let mut next = current.clone();
            if !change(&mut next) {
                return Ok(Some(current));
            }
            if next.spec != current.spec {
                next.metadata.generation = current.metadata.generation + 1;
            }
            match self.update(&next).await {
                Ok(obj) => return Ok(Some(obj)),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict(format!(
            "{key}: gave up after 16 conflicting writes"
        )))
    }

    /// Deletes the object at `key`, if its mod_revision equals `expected` (when given).
    /// Returns the deleted object.
    pub async fn delete<S: Resource>(&self, key: &str, expected: Option<i64>) -> Result<Object<S>> {
        let name = key.rsplit('/').next().unwrap_or(key).to_string();
        let compare = match expected {
            Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
            None => Compare::create_revision(key, CompareOp::Greater, 0),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::get(key, None), TxnOp::delete(key, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.kv().txn(txn).await.at("delete", key)?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let found = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| decode::<S>(kv.key(), kv.value(), kv.mod_revision())),
            _ => None,
        });
        match (resp.succeeded(), found) {
            (true, Some(obj)) => Ok(with_revision(obj?, revision)),
            (_, None) => Err(StoreError::NotFound {
                kind: S::KIND,
                name,
            }),
            (false, Some(_)) => Err(StoreError::Conflict(format!(
                "{} {name:?} was changed since resourceVersion {}; read it again and retry",
                S::KIND.to_lowercase(),
                expected.unwrap_or_default()
            ))),
        }
    }

    /// The raw value at `key`, storing `value` there first if the key does not exist, in one
    /// transaction: of several callers racing, the first write wins and every caller gets
    /// the winner's value (a create-if-absent for cluster-wide secrets and settings).
    pub async fn get_or_create_raw(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<Vec<u8>> {
        let value = value.into();
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.kv().txn(txn).await.at("create", key)?;
        if resp.succeeded() {
            return Ok(value);
        }
        let existing = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        existing.ok_or_else(|| {
            StoreError::Conflict(format!("{key} was deleted while it was being read; retry"))
        })
    }

    /// Compacts etcd's history up to `revision` (tests and maintenance).
    pub async fn compact(&self, revision: i64) -> Result<()> {
        self.kv()
            .compact(revision, None)
            .await
            .at("compact the history", "")?;
        Ok(())
    }
}

/// Whether creating an object gives it a new identity or keeps the one it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Identity {
    /// A new object: fresh uid, creationTimestamp now, generation 1.
    New,
    /// The same object at a new key (the scheduler moving a task to its node): uid,
    /// creationTimestamp and generation are kept, and set only where missing.
    Keep,
}

/// Stamps the server-set fields of an object about to be created: the one create path of
/// [`Store::create`] and [`crate::Batch`].
pub(crate) fn prepare_create<S: Resource>(obj: &Object<S>, identity: Identity) -> Object<S> {
    let mut obj = obj.clone();
    obj.api_version = shoal_api_types::API_VERSION.to_string();
    obj.kind = S::KIND.to_string();
    let keep = identity == Identity::Keep;
    if !keep || obj.metadata.uid.is_empty() {
        obj.metadata.uid = uuid::Uuid::new_v4().to_string();
    }
    if !keep || obj.metadata.creation_timestamp.is_none() {
        obj.metadata.creation_timestamp = Some(Utc::now());
    }
    obj.metadata.generation = if keep {
        obj.metadata.generation.max(1)
    } else {
        1
    };
    obj.metadata.resource_version = None;
    obj
}

/// The revision an update of `obj` is compared on: its resourceVersion, which it must have.
fn required_revision<S: Resource>(obj: &Object<S>) -> Result<i64> {
    obj.metadata.revision().ok_or_else(|| {
        StoreError::Conflict(format!(
            "{} {:?}: metadata.resourceVersion is required to update",
            S::KIND,
            obj.metadata.name
        ))
    })
}

/// The stored form: JSON without resourceVersion ([`Object::stored`], no copy).
pub(crate) fn encode<S: Resource>(obj: &Object<S>) -> Vec<u8> {
    serde_json::to_vec(&obj.stored()).expect("objects always serialise")
}

/// Decodes a stored value and sets resourceVersion from the key's mod_revision (what a
/// consumer of a raw [`crate::Watcher`] needs to read objects of one kind).
pub fn decode<S: Resource>(key: &[u8], value: &[u8], mod_revision: i64) -> Result<Object<S>> {
    let obj: Object<S> = serde_json::from_slice(value).map_err(|source| StoreError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })?;
    Ok(with_revision(obj, mod_revision))
}

pub(crate) fn with_revision<S: Resource>(mut obj: Object<S>, revision: i64) -> Object<S> {
    obj.metadata.resource_version = Some(revision.to_string());
    obj
}

/// The objects the gets of a failed [`Store::revision_guard`] transaction read, in order
/// (`None` for a key that is gone).
fn current_objects<S: Resource>(resp: &TxnResponse) -> Result<Vec<Option<Object<S>>>> {
    let mut current = Vec::new();
    for r in resp.op_responses() {
        if let TxnOpResponse::Get(g) = r {
            current.push(match g.kvs().first() {
                Some(kv) => Some(decode::<S>(kv.key(), kv.value(), kv.mod_revision())?),
                None => None,
            });
        }
    }
    Ok(current)
}
