//! Owns the shared record tables: [`RecordStore`] holds one atomically swapped table per
//! network, and a [`View`] is the slots of one task's networks in attachment order (a task
//! only ever sees names of networks it is attached to). A table is replaced whole.
//!
//! The `ingress` network is in no view (and gets no table): tasks meet over it only as the
//! routing mesh's backends, never by name or VIP, so a service that is on `ingress` only
//! because it publishes a port cannot be resolved through it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use shoal_api_types::endpoints::EndpointsSpec;
use shoal_api_types::network::INGRESS_NETWORK;

use super::records::{self, Answer, NetworkRecords, QueryKind};
use super::wire;

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

    /// Rebuild the table of `network` from its Endpoints objects (none for `ingress`).
    pub fn set_from_endpoints<'a>(
        &self,
        network: &str,
        endpoints: impl IntoIterator<Item = &'a EndpointsSpec>,
    ) {
        if network == INGRESS_NETWORK {
            return;
        }
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

    /// The view of a task attached to `networks` (in attachment order), `ingress` left out
    /// ([`view_networks`]).
    pub fn view<S: AsRef<str>>(&self, networks: &[S]) -> View {
        let networks = view_networks(networks);
        View {
            slots: networks.iter().map(|n| self.slot(n)).collect(),
            networks,
        }
    }
}

/// The networks of a task's DNS and VIP views: its attachments, in order, less `ingress`,
/// where tasks meet only as the routing mesh's backends (a service that is on `ingress`
/// only because it publishes a port is never resolved or load-balanced through it).
pub fn view_networks<S: AsRef<str>>(networks: &[S]) -> Vec<String> {
    networks
        .iter()
        .map(|n| n.as_ref())
        .filter(|n| *n != INGRESS_NETWORK)
        .map(str::to_owned)
        .collect()
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

    /// The UDP fast path: when `query` is a plain A question ([`wire::parse`]) for a name
    /// one of the view's tables knows (the first in attachment order wins, as in
    /// [`records::answer`]), write its answer from that table's prepared records into `out`
    /// and return `true`. `false` means: ask the general path. Each table is read once, so
    /// the answer comes from the old or the new table of a network, never a mix.
    pub(crate) fn fast_answer(&self, query: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(q) = wire::parse(query) else {
            return false;
        };
        for slot in &self.slots {
            let table = slot.0.read().unwrap_or_else(|e| e.into_inner());
            if let Some(prepared) = table.prepared(q.name()) {
                return wire::encode(query, &q, prepared, out);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::endpoints::EndpointTask;

    fn eps(network: &str, service: &str, vip: &str, task_ip: &str) -> EndpointsSpec {
        EndpointsSpec::vip(network, service, vip).tasks([EndpointTask::new(
            &format!("{service}.1"),
            task_ip,
        )
        .id("t1")])
    }

    #[test]
    fn a_view_never_answers_from_the_ingress_network() {
        let store = RecordStore::new();
        // `web` is on ingress only (it publishes a port); `api` is on appnet.
        let web = eps("ingress", "web", "10.255.0.2", "10.255.0.5");
        store.set_from_endpoints("ingress", [&web]);
        store.set_from_endpoints("appnet", [&eps("appnet", "api", "10.0.1.2", "10.0.1.5")]);
        // Even a table put there by hand is not in any view.
        store.set("ingress", NetworkRecords::build([&web]));
        let view = store.view(&["ingress", "appnet"]);
        assert_eq!(view.networks(), ["appnet"]);
        assert_eq!(
            view.answer("api", QueryKind::A),
            Answer::Addrs(vec!["10.0.1.2".parse().unwrap()])
        );
        for name in ["web", "tasks.web"] {
            assert_eq!(view.answer(name, QueryKind::A), Answer::NxDomain, "{name}");
        }
        // Not a name of ours at all: forwarded, never answered from ingress.
        assert_eq!(view.answer("web.1", QueryKind::A), Answer::Forward);
        assert_eq!(
            view.answer("2.0.255.10.in-addr.arpa", QueryKind::Ptr),
            Answer::Forward
        );
    }

    #[test]
    fn no_table_is_built_for_the_ingress_network() {
        let store = RecordStore::new();
        let web = eps("ingress", "web", "10.255.0.2", "10.255.0.5");
        store.set_from_endpoints("ingress", [&web]);
        assert!(store.get("ingress").is_empty());
    }
}
