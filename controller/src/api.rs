//! The HTTP API (placeholder until written).

use shoal_store::Store;
use tokio::sync::watch;

/// Serves the API until `shutdown` turns true.
pub async fn serve(listener: tokio::net::TcpListener, store: Store, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let _ = (listener, store, shutdown);
    anyhow::bail!("the API is not written yet")
}
