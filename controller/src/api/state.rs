//! What every handler shares ([`App`]): the store, metrics, the shutdown signal, the
//! OpenAPI document, the hop to node agents and the API token table (when tokens are on). Handlers import it; it imports none of
//! them. See docs/architecture.md ("HTTP API").

use std::sync::Arc;

use shoal_store::Store;
use tokio::sync::watch as signal;

use super::agent::Agents;
use super::auth::Tokens;
use super::metrics::Metrics;

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    /// The store.
    pub store: Store,
    /// Request and watch metrics.
    pub metrics: Arc<Metrics>,
    /// Turns true when the server shuts down (watch streams end then).
    pub shutdown: signal::Receiver<bool>,
    /// The OpenAPI document, built once.
    pub openapi: Arc<serde_json::Value>,
    /// The authenticated hop to node agents (exec, logs).
    pub agents: Arc<Agents>,
    /// The API token table; `None` when the API checks no tokens (`Auth::Off`).
    pub tokens: Option<Tokens>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}
