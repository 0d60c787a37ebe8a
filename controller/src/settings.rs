//! The settings stage: keeps the one ClusterSettings object (`<root>/settings/cluster`)
//! equal to this leader's flags (`--reserved-ports`), so the API (every replica) and the
//! node agents (whose etcd role reads it) share one list of reserved published ports.
//!
//! Invariants: written only when it differs from what the flags say (one write per change,
//! none in a steady state); watch-driven, so a deleted or edited object is put back by the
//! leader at once. The decision ([`settings_step`]) is pure over the cache.

use std::sync::Arc;

use shoal_api_types::settings::{ClusterSettingsSpec, CLUSTER_SETTINGS};
use shoal_api_types::ClusterSettings;
use shoal_store::Batch;

use crate::context::Context;
use crate::reconcile::{Action, ControllerError};

/// The key of the settings queue (there is one object).
pub const SETTINGS: &str = CLUSTER_SETTINGS;

/// The object the flags want, against what is stored: `None` when nothing is to write,
/// else the object to create (no stored one) or update (the stored one, with the new spec).
pub fn settings_step(
    stored: Option<&ClusterSettings>,
    wanted: &ClusterSettingsSpec,
) -> Option<ClusterSettings> {
    match stored {
        Some(s) if s.spec == *wanted => None,
        Some(s) => {
            let mut next = s.clone();
            next.spec = wanted.clone();
            next.metadata.generation += 1;
            Some(next)
        }
        None => Some(ClusterSettings::new(CLUSTER_SETTINGS, wanted.clone())),
    }
}

/// What this leader's flags say.
pub fn wanted(ctx: &Context) -> ClusterSettingsSpec {
    ClusterSettingsSpec::with_reserved_ports(ctx.config.reserved_ports.iter().copied())
}

/// Publishes the settings if the stored object differs from the flags.
pub async fn reconcile_settings(
    _key: String,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    ctx.sync().await;
    let wanted = wanted(&ctx);
    let stored = ctx.cache.read().settings.clone();
    let Some(next) = settings_step(stored.as_deref(), &wanted) else {
        return Ok(Action::AwaitChange);
    };
    let mut txn = Batch::new();
    if stored.is_some() {
        txn.update(&ctx.keys, &next);
    } else {
        txn.create(&ctx.keys, &next);
    }
    ctx.writer.commit(txn).await?;
    tracing::info!(
        reserved_ports = %shoal_api_types::settings::format_reserved_ports(&wanted.reserved_ports),
        "published the cluster settings"
    );
    Ok(Action::AwaitChange)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::settings::{default_reserved_ports, ReservedPort};

    #[test]
    fn settings_are_written_when_missing_or_different_and_left_alone_when_equal() {
        let wanted = ClusterSettingsSpec::with_reserved_ports(default_reserved_ports());
        let created = settings_step(None, &wanted).expect("created");
        assert_eq!(created.name(), "cluster");
        assert_eq!(created.spec, wanted);
        let mut stored = created.clone();
        stored.metadata.generation = 1;
        stored.metadata.resource_version = Some("7".into());
        assert_eq!(settings_step(Some(&stored), &wanted), None);
        let fewer = ClusterSettingsSpec::with_reserved_ports([ReservedPort::udp(4789)]);
        let updated = settings_step(Some(&stored), &fewer).expect("updated");
        assert_eq!(updated.spec, fewer);
        assert_eq!(updated.metadata.generation, 2);
        assert_eq!(updated.metadata.resource_version.as_deref(), Some("7"));
    }
}
