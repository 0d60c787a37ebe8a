//! Node lifecycle: a node is alive while its agent's liveness key
//! (`<root>/leases/nodes/<name>`, bound to the agent's etcd lease) exists.
//!
//! Invariants:
//! - liveness key gone (lease expired or revoked) for longer than `--node-lease-grace` →
//!   `Node.status.state = down`, and in the same pass every non-terminal task on the node
//!   is marked `orphaned` with desired state `shutdown`, which makes the orchestrator
//!   replace it elsewhere at once;
//! - the cache may be behind etcd (a loaded controller applies watch events late), so a
//!   node is never marked down on the cache's word alone: before that write, a fresh
//!   (linearizable) read must find the liveness key gone and the Node unchanged since the
//!   cache's copy (not re-registered meanwhile); otherwise nothing is written and the node
//!   is looked at again once the cache caught up ([`confirm_down`]);
//! - a node whose Node object exists but whose liveness key was never seen by this leader
//!   gets [`UNSEEN_GRACE`] to show it (agents register the Node, then the key);
//! - a node that comes back gets nothing back: its old tasks stay orphaned and its agent
//!   stops them; it is marked `ready` again and receives new work;
//! - a deleted Node takes its tasks with it (deleted, addresses released);
//! - every Node has an address of its own on the `ingress` network (the routing mesh's
//!   source address on that node): claimed at `ipam/ips/ingress/<ip>` with owner
//!   `node/<name>` in the same transaction that records it in `Node.status.ingressAddress`,
//!   kept for as long as the Node exists (also while it is down, so it is stable across
//!   restarts: a claim the node already holds is reused even if its status lost it), and
//!   released in the transaction that follows the Node's deletion. One node change costs
//!   one write (its own Node); agents learn each other's addresses by watching Nodes.
//!
//! [`plan_ingress_address`] is pure (addresses picked by [`crate::ipam`]); [`reconcile_node`]
//! does the I/O. See docs/architecture.md ("Controller").

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use shoal_api_types::network::INGRESS_NETWORK;
use shoal_api_types::{NodeState, TaskState};
use tokio::time::Instant;

use crate::context::Context;
use crate::ipam::{addressing, pick_ips, Addressing};
use shoal_store::Batch;

use crate::reconcile::{Action, ControllerError};

/// The owner written in the claim of node `name`'s ingress address.
pub fn node_owner(name: &str) -> String {
    format!("node/{name}")
}

/// What to do about one node's ingress address ([`plan_ingress_address`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressPlan {
    /// The node's address (`None`: the ingress network has no free address left).
    pub address: Option<Ipv4Addr>,
    /// A new claim to create (the picked address), if the node held none that fits.
    pub claim: Option<Ipv4Addr>,
    /// Claims of this node to release (outside the subnet, or more than one).
    pub release: Vec<Ipv4Addr>,
}

/// Decides a node's ingress address from the claims it holds on the ingress network
/// (`own`): the lowest one inside the subnet (not the gateway) is kept, the others go; with
/// none, a free address is picked next-fit from `cursor` (`taken` says what is claimed).
pub fn plan_ingress_address(
    own: &[Ipv4Addr],
    ingress: &Addressing,
    cursor: &mut u32,
    taken: impl Fn(Ipv4Addr) -> bool,
) -> IngressPlan {
    let mut own = own.to_vec();
    own.sort();
    let fits = |ip: &Ipv4Addr| {
        ingress.subnet.contains(*ip)
            && *ip != ingress.gateway
            && *ip != ingress.subnet.network()
            && *ip != ingress.subnet.broadcast()
    };
    let keep = own.iter().copied().find(fits);
    let release = own.iter().copied().filter(|ip| Some(*ip) != keep).collect();
    match keep {
        Some(ip) => IngressPlan {
            address: Some(ip),
            claim: None,
            release,
        },
        None => {
            let picked = pick_ips(ingress.subnet, ingress.gateway, 1, cursor, taken).pop();
            IngressPlan {
                address: picked,
                claim: picked,
                release,
            }
        }
    }
}

/// How long a Node without a liveness key that this leader never saw may stay `ready`.
pub const UNSEEN_GRACE: Duration = Duration::from_secs(5);

/// How long to wait before looking again at a node the cache called dead but etcd did not.
pub const BEHIND_RETRY: Duration = Duration::from_millis(200);

/// What etcd says now about a node the cache calls dead (a fresh read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshView {
    /// The liveness key exists.
    pub liveness_key: bool,
    /// The Node's mod revision (`None`: deleted).
    pub node_revision: Option<i64>,
}

/// Whether a node the cache (holding its Node at `cached_revision`) calls dead may be
/// marked down, given what etcd says now: only if the liveness key is gone and the Node is
/// the one the cache holds (not re-registered, not deleted: a deletion is the cache's to
/// handle when it arrives).
pub fn confirm_down(cached_revision: Option<i64>, fresh: FreshView) -> bool {
    !fresh.liveness_key && cached_revision.is_some() && fresh.node_revision == cached_revision
}

/// Reconciles one node's liveness and its tasks.
pub async fn reconcile_node(name: String, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    ctx.sync().await;
    let (txns, action, marks_down) = node_step(&ctx, &name);
    if let Some(cached_revision) = marks_down {
        let fresh = FreshView {
            liveness_key: ctx
                .store
                .get_raw(&ctx.keys.node_lease(&name))
                .await?
                .is_some(),
            node_revision: ctx
                .store
                .get_raw(&ctx.keys.named::<shoal_api_types::NodeSpec>(&name))
                .await?
                .map(|kv| kv.mod_revision),
        };
        if !confirm_down(cached_revision, fresh) {
            tracing::info!(node = %name, ?fresh, ?cached_revision, "the cache says the node's lease is gone but etcd does not agree (the cache is behind); not marking it down");
            return Ok(Action::Requeue(BEHIND_RETRY));
        }
    }
    ctx.writer.commit_all(txns, 8).await?;
    Ok(action)
}

/// Decides a node's state and its tasks' fate from the cache; the third value is the
/// cached Node's revision when this step marks the node down (to be confirmed first).
fn node_step(ctx: &Context, name: &str) -> (Vec<Batch>, Action, Option<Option<i64>>) {
    let name = name.to_string();
    let keys = ctx.keys.clone();
    let now = Utc::now();
    let mut action = Action::AwaitChange;
    {
        let world = ctx.cache.read();
        let node_tasks = || {
            world
                .tasks
                .values()
                .filter(|t| t.spec.node.as_deref() == Some(name.as_str()))
        };
        let mut txns = vec![];
        let Some(node) = world.nodes.get(&name).cloned() else {
            // Removed: its tasks go with it.
            for t in node_tasks() {
                let mut txn = Batch::new();
                txn.delete_raw(t.key(&keys), t.metadata.revision);
                for (net, ip) in world
                    .ipam
                    .by_owner
                    .get(&t.metadata.name)
                    .into_iter()
                    .flatten()
                {
                    if let Some(c) = world.ipam.ip_claim(net, *ip) {
                        txn.delete_raw(keys.ip(net, *ip), c.revision);
                    }
                }
                txns.push(txn);
            }
            let mut txn = Batch::new();
            for (net, ip) in world
                .ipam
                .by_owner
                .get(&node_owner(&name))
                .into_iter()
                .flatten()
            {
                if let Some(c) = world.ipam.ip_claim(net, *ip) {
                    txn.delete_raw(keys.ip(net, *ip), c.revision);
                }
            }
            if !txn.is_empty() {
                tracing::info!(node = %name, "node deleted; releasing its ingress address");
                txns.push(txn);
            }
            ctx.lease_deadlines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            return (txns, Action::AwaitChange, None);
        };
        let alive = world.node_leases.contains(&name);
        let mut state = node.status.state;
        let mut marks_down = None;
        // One transaction for the Node: its state and its ingress address (with the claim).
        let mut next = (*node).clone();
        let mut node_txn = Batch::new();
        if alive {
            ctx.lease_deadlines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            if state != NodeState::Ready {
                next.status.state = NodeState::Ready;
                next.status.message.clear();
                state = NodeState::Ready;
                tracing::info!(node = %name, "node is ready");
            }
        } else if state != NodeState::Down {
            let deadline = *ctx
                .lease_deadlines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(name.clone())
                .or_insert_with(|| Instant::now() + UNSEEN_GRACE.max(ctx.config.node_lease_grace));
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                next.status.state = NodeState::Down;
                next.status.message = "the agent's lease expired (no heartbeat)".into();
                state = NodeState::Down;
                marks_down = Some(node.metadata.revision());
                tracing::warn!(node = %name, "node is down");
            } else {
                action = Action::Requeue(left);
            }
        }
        if let Some(ingress) = world
            .networks
            .get(INGRESS_NETWORK)
            .and_then(|n| addressing(n))
        {
            let owner = node_owner(&name);
            let own: Vec<Ipv4Addr> = world
                .ipam
                .by_owner
                .get(&owner)
                .into_iter()
                .flatten()
                .filter(|(net, _)| net == INGRESS_NETWORK)
                .map(|(_, ip)| *ip)
                .collect();
            let plan = {
                let mut cursors = ctx.ip_cursors.lock().unwrap_or_else(|p| p.into_inner());
                let cursor = cursors.entry(INGRESS_NETWORK.to_string()).or_insert(0);
                plan_ingress_address(&own, &ingress, cursor, |ip| {
                    world.ipam.ip_taken(INGRESS_NETWORK, ip)
                })
            };
            for ip in &plan.release {
                if let Some(c) = world.ipam.ip_claim(INGRESS_NETWORK, *ip) {
                    node_txn.delete_raw(keys.ip(INGRESS_NETWORK, *ip), c.revision);
                }
            }
            if let Some(ip) = plan.claim {
                node_txn.claim(keys.ip(INGRESS_NETWORK, ip), &owner);
                tracing::info!(node = %name, %ip, "node ingress address allocated");
            }
            match plan.address {
                Some(ip) => next.status.ingress_address = ip.to_string(),
                None => {
                    tracing::warn!(node = %name, subnet = %ingress.subnet, "the ingress network has no free address for this node");
                }
            }
        }
        if next != *node {
            node_txn.update(&keys, &next);
        }
        if !node_txn.is_empty() {
            txns.push(node_txn);
        }
        if state == NodeState::Down {
            for t in node_tasks().filter(|t| !t.status.state.is_terminal()) {
                let mut next = t.to_task();
                next.spec.desired_state = TaskState::Shutdown;
                next.status.state = TaskState::Orphaned;
                next.status.timestamp = Some(now);
                next.status.err = format!("node {name} is down");
                next.status.message = "orphaned".into();
                let mut txn = Batch::new();
                txn.update(&keys, &next);
                txns.push(txn);
            }
        }
        (txns, action, marks_down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress() -> Addressing {
        Addressing {
            subnet: "10.255.0.0/29".parse().unwrap(),
            gateway: "10.255.0.1".parse().unwrap(),
            internal: false,
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn nodes_should_keep_the_ingress_address_they_hold() {
        let mut cursor = 0;
        let plan = plan_ingress_address(&[ip("10.255.0.4")], &ingress(), &mut cursor, |_| true);
        assert_eq!(
            plan,
            IngressPlan {
                address: Some(ip("10.255.0.4")),
                claim: None,
                release: vec![],
            }
        );
        assert_eq!(cursor, 0, "nothing picked");
    }

    #[test]
    fn nodes_should_claim_a_free_ingress_address_skipping_taken_ones_and_the_gateway() {
        let mut cursor = 0;
        let taken = |a: Ipv4Addr| a == ip("10.255.0.2");
        let plan = plan_ingress_address(&[], &ingress(), &mut cursor, taken);
        assert_eq!(plan.address, Some(ip("10.255.0.3")));
        assert_eq!(plan.claim, Some(ip("10.255.0.3")));
        assert!(plan.release.is_empty());
    }

    #[test]
    fn nodes_should_release_extra_or_foreign_ingress_claims() {
        let mut cursor = 0;
        let plan = plan_ingress_address(
            &[ip("10.9.0.5"), ip("10.255.0.6"), ip("10.255.0.5")],
            &ingress(),
            &mut cursor,
            |_| false,
        );
        assert_eq!(plan.address, Some(ip("10.255.0.5")), "the lowest that fits");
        assert_eq!(plan.claim, None);
        assert_eq!(plan.release, vec![ip("10.9.0.5"), ip("10.255.0.6")]);
    }

    #[test]
    fn nodes_should_get_no_ingress_address_from_a_full_network() {
        let mut cursor = 0;
        let plan = plan_ingress_address(&[], &ingress(), &mut cursor, |_| true);
        assert_eq!(plan.address, None);
        assert_eq!(plan.claim, None);
    }

    #[test]
    fn a_node_should_be_marked_down_only_if_etcd_agrees_it_is_gone() {
        let gone = FreshView {
            liveness_key: false,
            node_revision: Some(7),
        };
        assert!(confirm_down(Some(7), gone));
        let alive = FreshView {
            liveness_key: true,
            ..gone
        };
        assert!(
            !confirm_down(Some(7), alive),
            "the key is back: the cache is behind"
        );
        assert!(
            !confirm_down(Some(5), gone),
            "the Node changed since the cache's copy: re-registered meanwhile"
        );
        let deleted = FreshView {
            node_revision: None,
            ..gone
        };
        assert!(!confirm_down(Some(7), deleted), "deleted: not ours to mark");
        assert!(!confirm_down(None, gone), "no revision to compare with");
    }

    #[test]
    fn node_claims_are_named_after_the_node() {
        assert_eq!(node_owner("node-1"), "node/node-1");
    }
}
