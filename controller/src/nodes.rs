//! Node lifecycle: a node is alive while its agent's liveness key
//! (`<root>/leases/nodes/<name>`, bound to the agent's etcd lease) exists.
//!
//! Invariants:
//! - liveness key gone (lease expired or revoked) for longer than `--node-lease-grace` →
//!   `Node.status.state = down`, and in the same pass every non-terminal task on the node
//!   is marked `orphaned` with desired state `shutdown`, which makes the orchestrator
//!   replace it elsewhere at once;
//! - a node whose Node object exists but whose liveness key was never seen by this leader
//!   gets [`UNSEEN_GRACE`] to show it (agents register the Node, then the key);
//! - a node that comes back gets nothing back: its old tasks stay orphaned and its agent
//!   stops them; it is marked `ready` again and receives new work;
//! - a deleted Node takes its tasks with it (deleted, addresses released).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use shoal_api_types::{NodeState, TaskState};
use tokio::time::Instant;

use crate::manager::Context;
use crate::runtime::{Action, ControllerError, Txn};

/// How long a Node without a liveness key that this leader never saw may stay `ready`.
pub const UNSEEN_GRACE: Duration = Duration::from_secs(5);

/// Reconciles one node's liveness and its tasks.
pub async fn reconcile_node(name: String, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    ctx.sync().await;
    let (txns, action) = node_step(&ctx, &name);
    ctx.writer.commit_all(txns, 8).await?;
    Ok(action)
}

/// Decides a node's state and its tasks' fate from the cache.
fn node_step(ctx: &Context, name: &str) -> (Vec<Txn>, Action) {
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
                let mut txn = Txn::new();
                txn.delete(&keys, t.as_ref());
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
            ctx.lease_deadlines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            return (txns, Action::AwaitChange);
        };
        let alive = world.node_leases.contains(&name);
        let mut state = node.status.state;
        if alive {
            ctx.lease_deadlines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            if state != NodeState::Ready {
                let mut next = (*node).clone();
                next.status.state = NodeState::Ready;
                next.status.message.clear();
                let mut txn = Txn::new();
                txn.update(&keys, &next);
                txns.push(txn);
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
                let mut next = (*node).clone();
                next.status.state = NodeState::Down;
                next.status.message = "the agent's lease expired (no heartbeat)".into();
                let mut txn = Txn::new();
                txn.update(&keys, &next);
                txns.push(txn);
                state = NodeState::Down;
                tracing::warn!(node = %name, "node is down");
            } else {
                action = Action::Requeue(left);
            }
        }
        if state == NodeState::Down {
            for t in node_tasks().filter(|t| !t.status.state.is_terminal()) {
                let mut next = (**t).clone();
                next.spec.desired_state = TaskState::Shutdown;
                next.status.state = TaskState::Orphaned;
                next.status.timestamp = Some(now);
                next.status.err = format!("node {name} is down");
                next.status.message = "orphaned".into();
                let mut txn = Txn::new();
                txn.update(&keys, &next);
                txns.push(txn);
            }
        }
        (txns, action)
    }
}
