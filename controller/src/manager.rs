//! Leader election and the reconcilers (placeholder until written).

use shoal_store::Store;
use tokio::sync::watch;

/// Reconciler settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ManagerConfig {}

/// Runs the reconcilers while this replica is leader, until `shutdown` turns true.
pub async fn run(store: Store, config: ManagerConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let _ = (store, config, shutdown);
    Ok(())
}
