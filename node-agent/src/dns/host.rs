//! Owns the per-task servers: the [`DnsServers`] trait (one server per task, keyed by the
//! caller) and [`DnsHost`], the real one, which starts a [`DnsServer`] inside each task
//! namespace answering from the shared [`RecordStore`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::config::DnsServerConfig;
use super::error::DnsError;
use super::forward::Forwarder;
use super::server::DnsServer;
use super::store::RecordStore;

/// The DNS side effect behind one narrow trait, so the agent's converge loop can be tested
/// against [`RecordingDns`]: one server per task, keyed by the caller (normally the task id).
/// Records are not part of it: the agent updates a [`RecordStore`] (pure memory) directly.
#[async_trait::async_trait]
pub trait DnsServers: Send + Sync {
    /// Make sure task `key` has a server in the namespace at `netns` answering for
    /// `networks` (in attachment order); restart it if the namespace or the networks
    /// changed. Idempotent.
    async fn ensure(&self, key: &str, netns: &Path, networks: &[String]) -> Result<(), DnsError>;
    /// Stop the server of task `key`, if any.
    async fn stop(&self, key: &str);
    /// The keys of the running servers, sorted (for garbage collection).
    async fn keys(&self) -> Vec<String>;
}

/// The real [`DnsServers`]: hickory servers bound inside task namespaces.
#[derive(Debug)]
pub struct DnsHost {
    store: RecordStore,
    config: Arc<DnsServerConfig>,
    forwarder: Arc<Forwarder>,
    servers: tokio::sync::Mutex<HashMap<String, DnsServer>>,
}

impl DnsHost {
    /// Servers answering from `store`, forwarding per `config`.
    pub fn new(store: RecordStore, config: DnsServerConfig) -> Self {
        DnsHost {
            store,
            config: Arc::new(config),
            forwarder: Arc::new(Forwarder::new()),
            servers: Default::default(),
        }
    }

    /// The shared record store.
    pub fn store(&self) -> &RecordStore {
        &self.store
    }
}

#[async_trait::async_trait]
impl DnsServers for DnsHost {
    async fn ensure(&self, key: &str, netns: &Path, networks: &[String]) -> Result<(), DnsError> {
        let mut servers = self.servers.lock().await;
        if let Some(s) = servers.get(key) {
            if s.netns() == Some(netns) && s.networks() == networks {
                return Ok(());
            }
            if let Some(old) = servers.remove(key) {
                old.shutdown().await;
            }
        }
        let server = DnsServer::start_shared(
            Some(netns),
            self.store.view(networks),
            self.config.clone(),
            self.forwarder.clone(),
        )
        .await?;
        servers.insert(key.to_owned(), server);
        Ok(())
    }

    async fn stop(&self, key: &str) {
        let old = self.servers.lock().await.remove(key);
        if let Some(old) = old {
            old.shutdown().await;
        }
    }

    async fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.servers.lock().await.keys().cloned().collect();
        k.sort();
        k
    }
}
