//! The [`Network`] trait: every networking side effect the agent needs, behind one narrow
//! trait ([`super::Kernel`] is the real one, `RecordingNetwork` the fake).

use async_trait::async_trait;

use super::error::NetError;
use super::nodefw::NodePolicy;
use super::peers::plan_peers;
use super::types::{
    GatewaySpec, Observed, OverlayInfo, OverlaySpec, Peer, PeerEntries, PeerOp, TaskNetInfo,
    TaskNetSpec,
};

/// The networking side effects the agent needs, one narrow trait. Every method is
/// idempotent: calling it again with the same input is a no-op.
#[async_trait]
pub trait Network: Send + Sync {
    /// Create the overlay's bridge and VXLAN device unless present; fix master/MTU/up state.
    async fn ensure_overlay(&self, spec: &OverlaySpec) -> Result<OverlayInfo, NetError>;
    /// Delete the overlay's links (with their FDB and neighbour entries). Detach its tasks first.
    async fn remove_overlay(&self, vni: u32) -> Result<(), NetError>;
    /// Create the gateway bridge, masquerade rules and ip_forward unless present.
    async fn ensure_gateway(&self, spec: &GatewaySpec) -> Result<(), NetError>;
    /// Delete the gateway bridge and our nftables tables (egress and the node's policy): the
    /// node's networking teardown.
    async fn remove_gateway(&self) -> Result<(), NetError>;
    /// Program the node's input and forward policy (`table inet shoal_node`, see
    /// [`super::nodefw`]) in one transaction that keeps its counters.
    async fn program_node_policy(&self, policy: &NodePolicy) -> Result<(), NetError>;
    /// Create the task netns and its veths; returns what the container runtime needs.
    async fn attach_task(&self, spec: &TaskNetSpec) -> Result<TaskNetInfo, NetError>;
    /// Delete the task's veths and netns.
    async fn detach_task(&self, task: &str) -> Result<(), NetError>;
    /// FDB and neighbour entries on the overlay's VXLAN device.
    async fn list_peer_entries(&self, vni: u32) -> Result<PeerEntries, NetError>;
    /// Apply one entry change to the overlay's VXLAN device (deleting an absent entry is fine).
    async fn apply_peer_op(&self, vni: u32, op: &PeerOp) -> Result<(), NetError>;
    /// Everything of ours that exists, for plan and garbage collection.
    async fn observe(&self) -> Result<Observed, NetError>;
    /// Delete one of [`Observed::stray_links`] (refuses names that are not task ports).
    async fn remove_stray_link(&self, link: &str) -> Result<(), NetError>;

    /// Converge the overlay's entries to exactly `desired`; returns what was changed.
    async fn sync_peers(&self, vni: u32, desired: &[Peer]) -> Result<Vec<PeerOp>, NetError> {
        let observed = self.list_peer_entries(vni).await?;
        let ops = plan_peers(desired, &observed);
        for op in &ops {
            self.apply_peer_op(vni, op).await?;
        }
        Ok(ops)
    }
}
