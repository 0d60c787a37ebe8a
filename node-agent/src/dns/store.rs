//! Owns the shared record tables: [`RecordStore`] holds one atomically swapped table per
//! network, and a [`View`] is the slots of one task's networks in attachment order (a task
//! only ever sees names of networks it is attached to). A table is replaced whole.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use shoal_api_types::endpoints::EndpointsSpec;

use super::records::{self, Answer, NetworkRecords, QueryKind};

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
