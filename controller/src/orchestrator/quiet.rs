//! [`QuietPlan`]: what a full service pass found when the service's tasks needed nothing,
//! kept (per leader term, in [`crate::context::Context`]) so that the next passes skip the
//! slot plan while it holds. Owned by the orchestrator.
//!
//! Invariant: a plan holds only while the service's uid and spec, the shape of its tasks
//! ([`crate::reconcile::cache::ServiceTally::shaped_at`]) and of the nodes
//! ([`World::nodes_shaped_at`]) are what they were, and no update or rollback runs or is
//! paused: then a slot plan and the updater would find nothing again.

use shoal_api_types::{Service, ServiceSpec};

use crate::reconcile::cache::World;

/// What a full pass found for a service whose tasks needed nothing (no create, stop,
/// delete, restart or update): while the service's spec, the shape of its tasks and the
/// nodes are unchanged ([`crate::reconcile::cache::ServiceTally::shaped_at`],
/// [`World::nodes_shaped_at`]) and no update runs, the slot plan would find nothing again,
/// so a pass takes the running count from the cache's tally and the rest from here instead
/// of walking every task — the status passes while a big service's tasks report `starting`
/// and `running`. VIPs, Endpoints and the status are still decided as in a full pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuietPlan {
    /// The service's uid.
    pub uid: String,
    /// Its spec.
    pub spec: ServiceSpec,
    /// Its tasks' shape then.
    pub shaped_at: u64,
    /// The nodes' shape then.
    pub nodes_shaped_at: u64,
    /// How many tasks should run.
    pub desired: u64,
    /// The first reason a live task waited for a node.
    pub pending_reason: Option<String>,
}

impl QuietPlan {
    /// Whether the plan still holds for `service` in `world`.
    pub fn holds(&self, service: &Service, world: &World) -> bool {
        self.uid == service.metadata.uid
            && self.spec == service.spec
            && !updating(service)
            && self.shaped_at == shaped_at(world, &service.metadata.name)
            && self.nodes_shaped_at == world.nodes_shaped_at
    }
}

/// The shape of `service`'s tasks in `world` (0: it has none and never had).
pub fn shaped_at(world: &World, service: &str) -> u64 {
    world.tallies.get(service).map_or(0, |t| t.shaped_at)
}

/// Whether an update or rollback of `service` runs or is paused (the updater then has work each pass).
pub fn updating(service: &Service) -> bool {
    service
        .status
        .update_status
        .as_ref()
        .is_some_and(|us| us.state.is_active() || us.state.is_paused())
}
