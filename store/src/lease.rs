//! etcd leases: liveness for node agents and the controller leader. A [`LeaseKeeper`]
//! renews a lease in the background and says when it is lost. It follows the store's
//! client: when [`Store::set_connect`] replaces it (certificate renewal), the keeper opens
//! its keep-alive stream on the new client at once, so the lease never lapses for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

/// How renewals went, shared by every keeper given the same one (a node's, a hollow
/// fleet's): the margin a lease had before it would have lapsed.
#[derive(Debug, Clone, Default)]
pub struct RenewalStats(Arc<RenewalCounters>);

#[derive(Debug, Default)]
struct RenewalCounters {
    renewals: AtomicU64,
    slowest_answer_us: AtomicU64,
    longest_gap_us: AtomicU64,
}

/// A summary of [`RenewalStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RenewalSummary {
    /// Renewals etcd confirmed.
    pub renewals: u64,
    /// The slowest answer to a renewal (request sent → etcd's answer read).
    pub slowest_answer: Duration,
    /// The longest time between two confirmed renewals of one lease: what came closest to
    /// the TTL, after which etcd would have let the lease lapse.
    pub longest_gap: Duration,
}

impl RenewalStats {
    /// Counts one confirmed renewal: how long its answer took, and how long after the one
    /// before it (of the same lease; the first: after the keeper started) it was confirmed.
    fn record(&self, answer: Duration, gap: Duration) {
        let c = &self.0;
        c.renewals.fetch_add(1, Ordering::Relaxed);
        c.slowest_answer_us
            .fetch_max(answer.as_micros() as u64, Ordering::Relaxed);
        c.longest_gap_us
            .fetch_max(gap.as_micros() as u64, Ordering::Relaxed);
    }

    /// What was counted so far.
    pub fn summary(&self) -> RenewalSummary {
        let c = &self.0;
        RenewalSummary {
            renewals: c.renewals.load(Ordering::Relaxed),
            slowest_answer: Duration::from_micros(c.slowest_answer_us.load(Ordering::Relaxed)),
            longest_gap: Duration::from_micros(c.longest_gap_us.load(Ordering::Relaxed)),
        }
    }
}

/// Renews a lease every quarter of its TTL (so three renewals in a row may be slow or lost
/// before it lapses), answering within half a TTL or retried on a new stream, until
/// dropped, revoked, or the lease is lost.
///
/// Why a quarter, although an idle fleet of 1,000 nodes then sends etcd 2,000 renewals a
/// second: with a third on a fixed cadence, the scale benchmark's 1,000 loaded nodes saw
/// answers take up to 776 ms and a node's renewals 1.49 s apart, 0.5 s short of its 2 s
/// TTL ([`RenewalStats`] measures it); waiting a quarter after each answer spreads the
/// renewals and leaves more margin.
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
        self.keep_alive_counted(lease, RenewalStats::default())
    }

    /// Starts renewing `lease` in the background, counting its renewals in `stats`.
    pub fn keep_alive_counted(&self, lease: Lease, stats: RenewalStats) -> LeaseKeeper {
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
                        let sent = tokio::time::Instant::now();
                        keeper.keep_alive().await.map_err(|_| Round::Failed)?;
                        match tokio::time::timeout(answer_within, responses.message()).await {
                            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                                let now = tokio::time::Instant::now();
                                stats.record(now - sent, now - last_ok);
                                if now - last_ok > lease.ttl / 2 {
                                    tracing::warn!(
                                        lease = format!("{:x}", lease.id),
                                        "renewed {} ms after the renewal before (TTL {} ms): close to lapsing",
                                        (now - last_ok).as_millis(),
                                        lease.ttl.as_millis()
                                    );
                                }
                                last_ok = now;
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
