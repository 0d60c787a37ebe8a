//! Which overlay peers are in place: [`SyncedPeers`] wraps a [`Network`] and remembers, per
//! VNI, the peers (address and node) whose FDB and neighbour entries its last sync put there, so
//! that whoever programs a backend can check that the overlay reaches it
//! ([`SyncedPeers::pending`]) from the very Endpoints it programs, whatever pass synced.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::error::NetError;
use super::network::Network;
use super::nodefw::NodePolicy;
use super::plan::new_peer_addresses;
use super::types::{
    GatewaySpec, Observed, OverlayInfo, OverlaySpec, Peer, PeerEntries, PeerOp, TaskNetInfo,
    TaskNetSpec,
};

/// A [`Network`] that records the peers each overlay's syncs left in place. Every peer sync
/// of the agent goes through it (the Endpoints passes, task setups, the full reconcile).
pub struct SyncedPeers {
    inner: Arc<dyn Network>,
    synced: Mutex<Record>,
}

/// What [`SyncedPeers`] knows, under one lock.
#[derive(Default)]
struct Record {
    /// Per VNI, the peers with entries in place; no key: not known (nothing synced since
    /// this agent started, or the overlay was removed since).
    peers: HashMap<u32, BTreeSet<Peer>>,
    /// Per VNI, how many times its device was (maybe) made again or removed: a sync that
    /// saw this change while it ran may have put its entries on the old device, and
    /// records nothing.
    epoch: HashMap<u32, u64>,
}

impl Record {
    /// The device of `vni` was made again (or may have been): nothing on it yet.
    fn renew(&mut self, vni: u32, peers: Option<BTreeSet<Peer>>) {
        *self.epoch.entry(vni).or_default() += 1;
        match peers {
            Some(p) => self.peers.insert(vni, p),
            None => self.peers.remove(&vni),
        };
    }

    fn epoch(&self, vni: u32) -> u64 {
        self.epoch.get(&vni).copied().unwrap_or_default()
    }
}

impl SyncedPeers {
    /// Records the syncs made through `inner`.
    pub fn new(inner: Arc<dyn Network>) -> Self {
        SyncedPeers {
            inner,
            synced: Mutex::new(Record::default()),
        }
    }

    /// The addresses among `wanted` whose entries are not known to be in place on overlay
    /// `vni` (or point at another node): backends there are not to be programmed yet.
    /// `None` when nothing is known of that overlay (no sync through this since the agent
    /// started): the caller decides.
    pub fn pending(&self, vni: u32, wanted: &[Peer]) -> Option<BTreeSet<Ipv4Addr>> {
        let synced = self.lock();
        Some(new_peer_addresses(wanted, synced.peers.get(&vni)?))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.synced.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Network for SyncedPeers {
    async fn ensure_overlay(&self, spec: &OverlaySpec) -> Result<OverlayInfo, NetError> {
        let result = self.inner.ensure_overlay(spec).await;
        // A new VXLAN device has no entries, nor may one that failed part-way (a device
        // that did not match is deleted before it is made again).
        if result.as_ref().map_or(true, |info| info.created) {
            self.lock().renew(spec.vni, Some(BTreeSet::new()));
        }
        result
    }

    async fn remove_overlay(&self, vni: u32) -> Result<(), NetError> {
        self.lock().renew(vni, None);
        self.inner.remove_overlay(vni).await
    }

    async fn ensure_gateway(&self, spec: &GatewaySpec) -> Result<(), NetError> {
        self.inner.ensure_gateway(spec).await
    }

    async fn remove_gateway(&self) -> Result<(), NetError> {
        self.inner.remove_gateway().await
    }

    async fn program_node_policy(&self, policy: &NodePolicy) -> Result<(), NetError> {
        self.inner.program_node_policy(policy).await
    }

    async fn attach_task(&self, spec: &TaskNetSpec) -> Result<TaskNetInfo, NetError> {
        self.inner.attach_task(spec).await
    }

    async fn detach_task(&self, task: &str) -> Result<(), NetError> {
        self.inner.detach_task(task).await
    }

    async fn list_peer_entries(&self, vni: u32) -> Result<PeerEntries, NetError> {
        self.inner.list_peer_entries(vni).await
    }

    /// One entry changed outside a sync: the overlay's record is no longer known.
    async fn apply_peer_op(&self, vni: u32, op: &PeerOp) -> Result<(), NetError> {
        self.lock().peers.remove(&vni);
        self.inner.apply_peer_op(vni, op).await
    }

    async fn observe(&self) -> Result<Observed, NetError> {
        self.inner.observe().await
    }

    async fn remove_stray_link(&self, link: &str) -> Result<(), NetError> {
        self.inner.remove_stray_link(link).await
    }

    /// After a sync that worked, exactly `desired` is in place. After one that failed
    /// part-way, only what was in place and is still wanted is counted on (a sync does
    /// not touch an entry that is already right). A sync during which the device was made
    /// again records nothing: its entries may be on the old one.
    async fn sync_peers(&self, vni: u32, desired: &[Peer]) -> Result<Vec<PeerOp>, NetError> {
        let epoch = self.lock().epoch(vni);
        let result = self.inner.sync_peers(vni, desired).await;
        let wanted: BTreeSet<Peer> = desired.iter().copied().collect();
        let mut synced = self.lock();
        if synced.epoch(vni) != epoch {
            return result;
        }
        match &result {
            Ok(_) => {
                synced.peers.insert(vni, wanted);
            }
            Err(_) => {
                if let Some(had) = synced.peers.get_mut(&vni) {
                    had.retain(|p| wanted.contains(p));
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::fake::RecordingNetwork;
    use crate::net::types::peer;

    fn overlay(vni: u32) -> OverlaySpec {
        OverlaySpec {
            vni,
            mtu: None,
            address: None,
        }
    }

    fn ips(v: &[u8]) -> BTreeSet<Ipv4Addr> {
        v.iter().map(|l| Ipv4Addr::new(10, 0, 1, *l)).collect()
    }

    #[tokio::test]
    async fn a_sync_during_which_the_device_was_made_again_should_record_nothing() {
        let fake = Arc::new(RecordingNetwork::new("t-"));
        let net = Arc::new(SyncedPeers::new(fake.clone()));
        net.ensure_overlay(&overlay(4097)).await.unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        fake.meet_on_list_peers(barrier.clone());
        let sync = tokio::spawn({
            let net = net.clone();
            async move { net.sync_peers(4097, &[peer(2, 2)]).await }
        });
        // The sync is under way (this runtime has one thread: it ran up to the barrier).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!sync.is_finished());
        // Meanwhile the device vanished and was made again, without entries.
        fake.remove_overlay(4097).await.unwrap();
        assert!(net.ensure_overlay(&overlay(4097)).await.unwrap().created);
        barrier.wait().await;
        sync.await.unwrap().unwrap();
        assert_eq!(
            net.pending(4097, &[peer(2, 2)]),
            Some(ips(&[2])),
            "not counted on: the sync may have written to the old device"
        );
        // The next sync counts.
        fake.meet_on_list_peers(Arc::new(tokio::sync::Barrier::new(1)));
        net.sync_peers(4097, &[peer(2, 2)]).await.unwrap();
        assert_eq!(net.pending(4097, &[peer(2, 2)]), Some(ips(&[])));
    }

    #[tokio::test]
    async fn pending_should_follow_what_the_syncs_put_in_place() {
        let fake = Arc::new(RecordingNetwork::new("shoal-n1-"));
        let net = SyncedPeers::new(fake.clone());
        let wanted = [peer(2, 2), peer(3, 3)];
        assert_eq!(net.pending(4097, &wanted), None, "nothing known yet");
        net.ensure_overlay(&overlay(4097)).await.unwrap();
        assert_eq!(
            net.pending(4097, &wanted),
            Some(ips(&[2, 3])),
            "new overlay"
        );
        net.sync_peers(4097, &wanted[..1]).await.unwrap();
        assert_eq!(net.pending(4097, &wanted), Some(ips(&[3])));
        net.sync_peers(4097, &wanted).await.unwrap();
        assert_eq!(net.pending(4097, &wanted), Some(ips(&[])));
        // A failed sync keeps only what was there and is still wanted.
        fake.fail("apply_peer_op");
        assert!(net
            .sync_peers(4097, &[peer(3, 3), peer(4, 2)])
            .await
            .is_err());
        let now = [peer(3, 3), peer(4, 2)];
        assert_eq!(net.pending(4097, &now), Some(ips(&[4])));
        fake.heal("apply_peer_op");
        net.sync_peers(4097, &now).await.unwrap();
        let moved = [peer(3, 2), peer(4, 2)];
        assert_eq!(
            net.pending(4097, &moved),
            Some(ips(&[3])),
            "now on another node"
        );
        fake.fail("ensure_overlay");
        assert!(net.ensure_overlay(&overlay(4097)).await.is_err());
        assert_eq!(
            net.pending(4097, &now),
            Some(ips(&[3, 4])),
            "maybe made again"
        );
        fake.heal("ensure_overlay");
        net.remove_overlay(4097).await.unwrap();
        assert_eq!(net.pending(4097, &now), None, "removed: not known");
    }
}
