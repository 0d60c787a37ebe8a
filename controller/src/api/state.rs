//! What every handler shares ([`App`]): the store, metrics, the shutdown signal, the
//! OpenAPI document, the hop to node agents, the secrets key, the cluster identity
//! ([`Cluster`]) and the API token table (both absent with `--insecure`). Handlers import it; it imports none of
//! them. See docs/architecture.md ("HTTP API").

use std::sync::Arc;
use std::time::Duration;

use shoal_store::Store;
use tokio::sync::watch as signal;

use super::agent::Agents;
use super::auth::Tokens;
use super::error::ApiResult;
use super::metrics::Metrics;
use crate::secrets_key::{KeySource, SecretsKey};

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
    /// Tasks by name, id and service, for exec and logs.
    pub tasks: Arc<super::task_index::TaskLookup>,
    /// The hop to node agents (exec, logs).
    pub agents: Arc<Agents>,
    /// The cluster identity; `None` with `--insecure` (then no node can join).
    pub cluster: Option<Arc<Cluster>>,
    /// The API token table; `None` when the API checks no tokens (`Auth::Off`).
    pub tokens: Option<Tokens>,
    /// Where the secrets key comes from (payload sealing and fingerprints).
    pub secrets_key: Arc<KeySource>,
}

impl App {
    /// The secrets key (503 while etcd cannot give an insecure cluster's key).
    pub async fn secrets_key(&self) -> ApiResult<Arc<SecretsKey>> {
        self.secrets_key
            .key(&self.store)
            .await
            .map_err(|e| match e {
                crate::secrets_key::KeyError::Store(e) => e.into(),
                other => shoal_api_types::Status::internal(other.to_string()).into(),
            })
    }
}

/// What the join API needs: the CA that signs node certificates and what joining nodes
/// are told.
pub struct Cluster {
    /// The cluster CA (with its key).
    pub ca: shoal_pki::Ca,
    /// The etcd endpoints nodes are told (`--advertise-etcd`, default `--etcd`).
    pub etcd_endpoints: Vec<String>,
    /// How long node certificates live (`--node-cert-lifetime`).
    pub node_cert_lifetime: Duration,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("ca", &self.ca)
            .field("etcd_endpoints", &self.etcd_endpoints)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}
