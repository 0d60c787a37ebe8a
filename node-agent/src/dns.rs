//! Embedded DNS for service discovery: one server per task network namespace at
//! 127.0.0.11:53 (UDP and TCP), served from the agent's process, answering from record
//! tables built from the Endpoints objects the agent watches.
//!
//! Pieces:
//! - [`records`]: the pure part. [`NetworkRecords::build`] turns the Endpoints objects of one
//!   network into its names; [`records::answer`] decides, for the tables of the networks the
//!   asking task is on, between addresses, NXDOMAIN and forwarding.
//! - [`RecordStore`]: one shared, atomically swapped table per network. Every server of a
//!   task on that network holds the same slot, so [`RecordStore::set`] changes what every
//!   namespace answers at once, with no per-namespace work.
//! - [`View`]: the slots of one task's networks in attachment order — the scoping: a task
//!   only ever sees names of networks it is attached to.
//! - [`DnsServer`] (in `server`): hickory-server with our request handler; sockets bound
//!   inside the namespace. [`DnsHost`] keeps one server per task behind the [`DnsServers`]
//!   trait; [`RecordingDns`] is its fake for converge-loop tests.
//!
//! Invariants: a table is replaced whole (readers see the old or the new one); answers have
//! TTL 0, so a task leaving the Endpoints leaves DNS with the next lookup; names of ours never
//! go upstream (unknown → NXDOMAIN, AAAA/other types → empty NOERROR).
//!
//! The namespace's loopback must be up before a server starts there (127.0.0.11 is a
//! loopback address); the agent's netns setup does that.

#[cfg(any(test, feature = "test-util"))]
mod fake;
pub mod records;
mod server;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use shoal_api_types::endpoints::EndpointsSpec;

#[cfg(any(test, feature = "test-util"))]
pub use fake::RecordingDns;
pub use records::{build_tables, normalize_name, Answer, NameEntry, NetworkRecords, QueryKind};
pub use server::{parse_resolv_conf, DnsServer, DnsServerConfig, DNS_ADDR, TTL};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A file or namespace operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The file or namespace.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A socket could not be bound inside the namespace.
    #[error("bind {what} {addr} in namespace {netns}: {source}{hint}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The namespace.
        netns: PathBuf,
        /// `udp` or `tcp`.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
        /// What to check.
        hint: &'static str,
    },
}

impl DnsError {
    /// Whether retrying later may help (e.g. loopback not up yet, or the namespace is still
    /// being made). A bind conflict on 127.0.0.11:53 is not temporary.
    pub fn is_temporary(&self) -> bool {
        match self {
            DnsError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            DnsError::Bind { source, .. } => source.kind() == std::io::ErrorKind::AddrNotAvailable,
        }
    }
}

/// One network's table, swapped whole.
#[derive(Debug, Default)]
struct Slot(RwLock<Arc<NetworkRecords>>);

impl Slot {
    fn get(&self) -> Arc<NetworkRecords> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, records: Arc<NetworkRecords>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = records;
    }
}

/// The record tables of every network, shared by all servers of this agent.
#[derive(Debug, Clone, Default)]
pub struct RecordStore {
    slots: Arc<Mutex<HashMap<String, Arc<Slot>>>>,
}

impl RecordStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self, network: &str) -> Arc<Slot> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(network.to_owned())
            .or_default()
            .clone()
    }

    /// Replace the table of `network`; every view on it answers from the new one at once.
    pub fn set(&self, network: &str, records: NetworkRecords) {
        self.slot(network).set(Arc::new(records));
    }

    /// Rebuild the table of `network` from its Endpoints objects.
    pub fn set_from_endpoints<'a>(
        &self,
        network: &str,
        endpoints: impl IntoIterator<Item = &'a EndpointsSpec>,
    ) {
        self.set(
            network,
            NetworkRecords::build(endpoints.into_iter().filter(|e| e.network == network)),
        );
    }

    /// Replace every table: networks in `tables` get theirs, all others become empty (and
    /// are forgotten once no view holds them).
    pub fn replace_all(&self, mut tables: BTreeMap<String, NetworkRecords>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for (net, slot) in slots.iter() {
            slot.set(Arc::new(tables.remove(net).unwrap_or_default()));
        }
        for (net, records) in tables {
            slots.entry(net).or_default().set(Arc::new(records));
        }
        slots.retain(|_, slot| Arc::strong_count(slot) > 1 || !slot.get().is_empty());
    }

    /// Empty the table of `network` (its names disappear from every view at once).
    pub fn remove(&self, network: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(network) {
            slot.set(Arc::new(NetworkRecords::default()));
            if Arc::strong_count(slot) == 1 {
                slots.remove(network);
            }
        }
    }

    /// The current table of `network` (empty if unknown).
    pub fn get(&self, network: &str) -> Arc<NetworkRecords> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(network)
            .map(|s| s.get())
            .unwrap_or_default()
    }

    /// The view of a task attached to `networks` (in attachment order).
    pub fn view<S: AsRef<str>>(&self, networks: &[S]) -> View {
        View {
            networks: networks.iter().map(|n| n.as_ref().to_owned()).collect(),
            slots: networks.iter().map(|n| self.slot(n.as_ref())).collect(),
        }
    }
}

/// What one task sees: the live tables of the networks it is attached to.
#[derive(Debug, Clone)]
pub struct View {
    networks: Vec<String>,
    slots: Vec<Arc<Slot>>,
}

impl View {
    /// The networks, in lookup order.
    pub fn networks(&self) -> &[String] {
        &self.networks
    }

    /// Decide the answer for one question (see [`records::answer`]).
    pub fn answer(&self, qname: &str, kind: QueryKind) -> Answer {
        let tables: Vec<Arc<NetworkRecords>> = self.slots.iter().map(|s| s.get()).collect();
        records::answer(&tables, qname, kind)
    }
}

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
    servers: tokio::sync::Mutex<HashMap<String, DnsServer>>,
}

impl DnsHost {
    /// Servers answering from `store`, forwarding per `config`.
    pub fn new(store: RecordStore, config: DnsServerConfig) -> Self {
        DnsHost {
            store,
            config: Arc::new(config),
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
        let server =
            DnsServer::start(Some(netns), self.store.view(networks), self.config.clone()).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::endpoints::EndpointTask;
    use shoal_api_types::service::EndpointMode;

    fn ep(network: &str, service: &str, vip: &str, tasks: &[(&str, &str)]) -> EndpointsSpec {
        EndpointsSpec {
            network: network.into(),
            service: service.into(),
            vip: Some(vip.into()),
            endpoint_mode: EndpointMode::Vip,
            tasks: tasks
                .iter()
                .map(|(n, ip)| EndpointTask {
                    name: (*n).into(),
                    ip: (*ip).into(),
                    ready: true,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_store_update_reaches_every_view_at_once() {
        let store = RecordStore::new();
        let a = store.view(&["appnet"]);
        let b = store.view(&["appnet", "other"]);
        assert_eq!(a.answer("api", QueryKind::A), Answer::NxDomain);
        store.set_from_endpoints(
            "appnet",
            &[ep("appnet", "api", "10.0.1.2", &[("api.1", "10.0.1.5")])],
        );
        for v in [&a, &b] {
            assert_eq!(
                v.answer("api", QueryKind::A),
                Answer::Addrs(vec!["10.0.1.2".parse().unwrap()])
            );
        }
        store.remove("appnet");
        assert_eq!(a.answer("api", QueryKind::A), Answer::NxDomain);
    }

    #[test]
    fn replace_all_empties_networks_that_are_gone() {
        let store = RecordStore::new();
        let v = store.view(&["x"]);
        store.replace_all(build_tables(&[
            ep("x", "api", "10.0.1.2", &[]),
            ep("y", "db", "10.0.2.2", &[]),
        ]));
        assert!(matches!(v.answer("api", QueryKind::A), Answer::Addrs(_)));
        assert_eq!(store.get("y").len(), 2);
        store.replace_all(build_tables(&[ep("y", "db", "10.0.2.2", &[])]));
        assert_eq!(v.answer("api", QueryKind::A), Answer::NxDomain);
        assert_eq!(store.get("y").len(), 2);
    }

    #[test]
    fn set_from_endpoints_ignores_other_networks() {
        let store = RecordStore::new();
        store.set_from_endpoints(
            "x",
            &[
                ep("x", "api", "10.0.1.2", &[]),
                ep("y", "db", "10.0.2.2", &[]),
            ],
        );
        assert_eq!(
            store.view(&["x"]).answer("db", QueryKind::A),
            Answer::NxDomain
        );
    }

    #[tokio::test]
    async fn recording_dns_remembers_servers_and_calls() {
        let dns = RecordingDns::default();
        let nets = vec!["appnet".to_owned()];
        dns.ensure("t1", Path::new("/run/netns/t1"), &nets)
            .await
            .unwrap();
        assert_eq!(
            dns.server("t1"),
            Some((PathBuf::from("/run/netns/t1"), nets))
        );
        assert_eq!(dns.keys().await, ["t1"]);
        dns.stop("t1").await;
        assert_eq!(dns.keys().await, Vec::<String>::new());
        assert_eq!(dns.calls(), ["ensure t1 /run/netns/t1 appnet", "stop t1"]);
    }

    #[test]
    fn resolv_conf_gives_nameservers_in_order_without_ourselves() {
        let text = "# generated\nsearch example.com\nnameserver 10.1.1.1\nnameserver 127.0.0.11\nnameserver fe80::1%eth0 # link-local\n  nameserver 127.0.0.53\noptions ndots:0\n";
        let got: Vec<String> = parse_resolv_conf(text)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["10.1.1.1:53", "127.0.0.53:53"]);
    }
}
