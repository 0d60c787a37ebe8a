//! Owns keeping the node's input and forward policy (`table inet shoal_node`,
//! [`crate::net::nodefw`]) equal to what it is a function of: every Node's underlay address
//! (the VXLAN senders accepted) and the ingress overlay's bridge once this node is on it. It
//! runs from the background loop after the Nodes are listed (before that the table, if a
//! previous agent left one, stays as it was), is programmed again after every full
//! reconcile (an agent restart, every resync) and whenever its input changes; the table is
//! left in place when the agent stops, so a stopped agent does not open the node. See
//! docs/architecture.md ("Overlay in the kernel").

use crate::net::NodePolicy;

use super::{Applied, NodeNetwork};

impl NodeNetwork {
    /// The node's policy as it should be now; `None` while it is off or the Nodes are not
    /// listed yet.
    pub(super) fn node_policy(&self) -> Option<NodePolicy> {
        if !self.node_policy {
            return None;
        }
        let ingress_vni = self.ingress_overlay().map(|spec| spec.vni);
        let nodes = self.nodes.borrow();
        let nodes = nodes.as_ref()?;
        Some(NodePolicy::new(
            self.underlay,
            nodes.values().map(|n| n.status.address.as_str()),
            ingress_vni,
        ))
    }

    /// Programs the node's policy when it differs from what was last programmed (no-op
    /// without [`NodeNetwork::with_node_policy`]).
    pub async fn refresh_node_policy(&self, applied: &mut Applied) {
        let Some(policy) = self.node_policy() else {
            return;
        };
        if applied.node_policy.as_ref() == Some(&policy) {
            return;
        }
        match self.net.program_node_policy(&policy).await {
            Ok(()) => {
                tracing::debug!(
                    vxlan_peers = policy.vxlan_peers.len(),
                    "programmed the node's input and forward policy"
                );
                applied.node_policy = Some(policy);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot program the node's input and forward policy")
            }
        }
    }
}
