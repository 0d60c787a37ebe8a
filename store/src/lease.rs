//! etcd leases: liveness for node agents and the controller leader. A [`LeaseKeeper`]
//! renews a lease in the background and says when it is lost. It follows the store's
//! client: when [`Store::set_connect`] replaces it (certificate renewal), the keeper opens
//! its keep-alive stream on the new client at once, so the lease never lapses for it.

use std::time::Duration;

use etcd_client::PutOptions;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::At;
use crate::store::Store;
use crate::Result;

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The lease id.
    pub id: i64,
    /// Its time to live.
    pub ttl: Duration,
}

/// Renews a lease every quarter of its TTL (so three renewals in a row may be slow or lost
/// before it lapses), answering within half a TTL or retried on a new stream, until
/// dropped, revoked, or the lease is lost.
pub struct LeaseKeeper {
    lease: Lease,
    lost: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Store {
    /// Grants a lease of `ttl` (whole seconds, at least 1).
    pub async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        let secs = ttl.as_secs().max(1) as i64;
        let resp = self
            .client()
            .lease_client()
            .grant(secs, None)
            .await
            .at("grant a lease", "")?;
        Ok(Lease {
            id: resp.id(),
            ttl: Duration::from_secs(resp.ttl() as u64),
        })
    }

    /// Puts a raw value bound to a lease: it disappears when the lease expires.
    pub async fn put_with_lease(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        lease: Lease,
    ) -> Result<()> {
        self.client()
            .kv_client()
            .put(key, value, Some(PutOptions::new().with_lease(lease.id)))
            .await
            .at("write", key)?;
        Ok(())
    }

    /// Revokes a lease now, deleting every key bound to it.
    pub async fn revoke_lease(&self, lease: Lease) -> Result<()> {
        self.client()
            .lease_client()
            .revoke(lease.id)
            .await
            .at("revoke a lease", "")?;
        Ok(())
    }

    /// Starts renewing `lease` in the background.
    pub fn keep_alive(&self, lease: Lease) -> LeaseKeeper {
        let (tx, rx) = watch::channel(false);
        let store = self.clone();
        let mut changes = self.client_changes();
        let task = tokio::spawn(async move {
            let period = (lease.ttl / 4).max(Duration::from_millis(250));
            let answer_within = (lease.ttl / 2).max(Duration::from_millis(500));
            // The lease is lost when etcd says so (TTL 0: expired or revoked), or when no
            // renewal succeeded for a whole TTL. A failed round (the connection broke, the
            // store moving to another endpoint) is retried on the store's current client.
            let mut last_ok = tokio::time::Instant::now();
            loop {
                changes.borrow_and_update();
                let mut client = store.client().lease_client();
                let round = async {
                    let (mut keeper, mut responses) = client
                        .keep_alive(lease.id)
                        .await
                        .map_err(|_| Round::Failed)?;
                    loop {
                        keeper.keep_alive().await.map_err(|_| Round::Failed)?;
                        match tokio::time::timeout(answer_within, responses.message()).await {
                            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                                last_ok = tokio::time::Instant::now();
                            }
                            Ok(Ok(Some(_))) => return Err(Round::Expired),
                            _ => return Err(Round::Failed),
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(period) => {}
                            Ok(()) = changes.changed() => return Ok(()),
                        }
                    }
                };
                match round.await {
                    Ok(()) => {}
                    Err(Round::Expired) => break,
                    Err(Round::Failed) if last_ok.elapsed() >= lease.ttl => break,
                    Err(Round::Failed) => {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                            Ok(()) = changes.changed() => {}
                        }
                    }
                }
            }
            let _ = tx.send(true);
        });
        LeaseKeeper {
            lease,
            lost: rx,
            task,
        }
    }
}

/// How a keep-alive round ended badly.
enum Round {
    /// etcd answered TTL 0: the lease expired or was revoked.
    Expired,
    /// The stream or the connection failed: try again until a TTL has passed.
    Failed,
}

impl LeaseKeeper {
    /// The lease kept alive.
    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// Resolves once the lease could not be renewed (expired, revoked, etcd unreachable
    /// for a whole TTL).
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// Whether the lease was lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}
