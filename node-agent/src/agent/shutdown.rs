//! Owns the agent's shutdown signal as its tasks see it: a `watch` flag that turns true
//! once. A leaf module, so every task of the agent can wait on it without importing the
//! agent's top level. See docs/architecture.md ("Node agent").

use tokio::sync::watch;

/// Resolves once `shutdown` turns true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
