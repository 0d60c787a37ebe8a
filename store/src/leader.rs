//! Leader election on an etcd lease, next to the leases it is built on.
//!
//! The leader key (`keys.leader()`) holds the leader's identity and is bound to its lease.
//! A replica becomes leader by creating the key when absent (`create_revision == 0`); that
//! creation revision is its term and its [`Fence`]: every write of a [`crate::Writer`]
//! fenced on it fails the moment the lease expires or is revoked (the key is deleted) or
//! another replica re-creates the key. Followers watch the key and campaign again when it
//! disappears.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse};

use crate::backoff::Backoff;
use crate::batch::Fence;
use crate::lease::{Lease, LeaseKeeper};
use crate::store::Store;
use crate::Result;

/// This replica holds the leader key.
pub struct Leadership {
    /// The leader key.
    pub key: String,
    /// The key's create_revision: this leader's term, the fence of every write.
    pub term: i64,
    /// Who we are.
    pub identity: String,
    keeper: LeaseKeeper,
}

impl Leadership {
    /// The fence every write of this leader must carry.
    pub fn fence(&self) -> Fence {
        Fence {
            key: self.key.clone(),
            create_revision: self.term,
        }
    }

    /// The lease the key is bound to.
    pub fn lease(&self) -> Lease {
        self.keeper.lease()
    }

    /// Resolves when the lease could not be renewed.
    pub async fn lost(&self) {
        self.keeper.lost().await
    }

    /// Gives leadership up now (revokes the lease, deleting the key).
    pub async fn resign(self, store: &Store) {
        let lease = self.keeper.lease();
        drop(self.keeper);
        if let Err(e) = store.revoke_lease(lease).await {
            tracing::warn!(error = %e, "revoking the leader lease failed; it expires on its own");
        }
    }
}

/// The current leader: identity and lease id, if any.
pub async fn current(store: &Store) -> Result<Option<(String, i64)>> {
    let kv = store.get_raw(&store.keys().leader()).await?;
    Ok(kv.map(|kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.lease)))
}

/// Campaigns until this replica is leader. Retries etcd errors with backoff.
pub async fn campaign(store: &Store, identity: &str, ttl: Duration) -> Leadership {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match try_campaign(store, identity, ttl).await {
            Ok(Some(l)) => return l,
            Ok(None) => backoff.reset(),
            Err(e) => {
                tracing::warn!(error = %e, "leader election failed; retrying");
                tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(1))).await;
            }
        }
    }
}

/// One attempt: wait while someone holds the key, then try to create it.
async fn try_campaign(store: &Store, identity: &str, ttl: Duration) -> Result<Option<Leadership>> {
    let key = store.keys().leader();
    let mut kv = store.kv();
    // Wait for the key to be absent.
    let resp = kv.get(key.clone(), None).await?;
    if let Some(holder) = resp.kvs().first() {
        let from = resp.header().map(|h| h.revision()).unwrap_or(0) + 1;
        tracing::debug!(leader = %String::from_utf8_lossy(holder.value()), "following");
        let mut stream = store
            .client()
            .watch_client()
            .watch(
                key.clone(),
                Some(etcd_client::WatchOptions::new().with_start_revision(from)),
            )
            .await?;
        loop {
            let Some(msg) = stream.message().await? else {
                return Ok(None);
            };
            if msg.canceled() || msg.compact_revision() > 0 {
                return Ok(None);
            }
            if msg
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                break;
            }
        }
    }
    let lease = store.grant_lease(ttl).await?;
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.clone(),
            identity,
            Some(PutOptions::new().with_lease(lease.id)),
        )])
        .or_else([TxnOp::get(key.clone(), None)]);
    let resp = kv.txn(txn).await?;
    if !resp.succeeded() {
        let _ = store.revoke_lease(lease).await;
        let other = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
            _ => None,
        });
        tracing::debug!(leader = ?other, "lost the election");
        return Ok(None);
    }
    let term = resp.header().map(|h| h.revision()).unwrap_or(0);
    let keeper = store.keep_alive(lease);
    Ok(Some(Leadership {
        key,
        term,
        identity: identity.to_string(),
        keeper,
    }))
}
