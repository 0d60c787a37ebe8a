//! The agent's Endpoints watch: only the networks this node needs, not the whole
//! `endpoints/` prefix. A network is needed while a task of the node that has not ended is
//! attached to it ([`watched_networks`]), and always when the runtime asks for it (the
//! routing mesh needs `ingress` on every node). Each needed network has its own
//! list-then-watch ([`shoal_store::Watcher`] on `endpoints/<network>/`): started when the
//! first task on the network appears in the node's desired tasks, stopped when the last one
//! leaves. What DNS, the overlays' peers and the VIP tables read is the union, one cache
//! keyed by Endpoints name (names are `<network>.<service>[.<slice>]`, so networks and
//! slices never collide; the readers group a service's slices back into one).
//!
//! Invariants:
//! - The union is `None` until the node's tasks are listed and every network they need is
//!   listed: nobody mistakes "not listed yet" for "nothing there" after a restart.
//! - No change of a watched network is missed: its watcher lists at a revision and watches
//!   from the next one (and relists on compaction, replacing that network's objects whole).
//! - A network that stops being needed leaves the union at once, with all its objects; events
//!   of its stopped watcher that were already queued are dropped (each start has its own
//!   generation), so they cannot bring it back.
//! - A network that becomes needed enters the union when its list completes; until then it is
//!   absent. A network new to the node has no overlay, records or VIP rules on it yet, and
//!   the fan-out ([`super::network`]) applies the list when it lands, as for any change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use shoal_api_types::endpoints::{Endpoints, EndpointsSpec};
use shoal_api_types::Task;
use shoal_store::{RawEvent, RawKv, Store, Watcher, WatcherEvent};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::cluster::Cache;
use super::desired::DesiredTasks;

/// The networks whose Endpoints the node needs: those of its tasks that have not ended
/// (status not terminal: from assignment until the container exited), and `always`.
pub fn watched_networks<'a>(
    tasks: impl IntoIterator<Item = &'a Task>,
    always: &[String],
) -> BTreeSet<String> {
    let mut networks: BTreeSet<String> = always.iter().cloned().collect();
    for t in tasks {
        if t.status.state.is_terminal() {
            continue;
        }
        networks.extend(t.spec.attachments.iter().map(|a| a.network.clone()));
    }
    networks
}

/// One network's watcher, running until dropped.
struct Follow {
    generation: u64,
    task: JoinHandle<()>,
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a network's watcher sends to the union.
struct Update {
    network: String,
    generation: u64,
    event: WatcherEvent,
}

/// The union and what it is made of.
struct Union {
    /// Unpublished objects until the first complete listing, then `None` (the channel holds
    /// them).
    staged: Option<BTreeMap<String, Endpoints>>,
    /// Endpoints names by key, per listed network (delete events carry only the key).
    names: BTreeMap<String, HashMap<String, String>>,
    tx: watch::Sender<Cache<EndpointsSpec>>,
}

impl Union {
    fn edit(&mut self, f: impl FnOnce(&mut BTreeMap<String, Endpoints>) -> bool) {
        match &mut self.staged {
            Some(staged) => {
                f(staged);
            }
            None => {
                self.tx.send_if_modified(|c| c.as_mut().is_some_and(f));
            }
        }
    }

    /// Takes `network`'s objects out (it is no longer watched).
    fn forget(&mut self, network: &str) {
        let Some(names) = self.names.remove(network) else {
            return;
        };
        self.edit(|objects| {
            let mut changed = false;
            for name in names.values() {
                changed |= objects.remove(name).is_some();
            }
            changed
        });
    }

    fn apply(&mut self, network: &str, event: WatcherEvent) {
        match event {
            WatcherEvent::Restarted { items, revision } => {
                // One edit: readers never see the network empty between the old and the new
                // list.
                let old = self.names.remove(network).unwrap_or_default();
                let mut names = HashMap::new();
                let mut listed = Vec::new();
                for kv in &items {
                    if let Some(o) = decoded(kv) {
                        names.insert(kv.key.clone(), o.name().to_string());
                        listed.push(o);
                    }
                }
                tracing::debug!(
                    network,
                    revision,
                    objects = listed.len(),
                    "listed endpoints"
                );
                self.names.insert(network.to_string(), names);
                self.edit(|objects| {
                    let mut changed = false;
                    for name in old.values() {
                        changed |= objects.remove(name).is_some();
                    }
                    for o in listed {
                        let name = o.name().to_string();
                        changed |= objects.get(&name) != Some(&o);
                        objects.insert(name, o);
                    }
                    changed
                });
            }
            WatcherEvent::Events { events, .. } => {
                for ev in events {
                    let Some(names) = self.names.get_mut(network) else {
                        return;
                    };
                    match ev {
                        RawEvent::Put(kv) => {
                            let Some(o) = decoded(&kv) else { continue };
                            names.insert(kv.key.clone(), o.name().to_string());
                            self.edit(|objects| {
                                objects.insert(o.name().to_string(), o);
                                true
                            });
                        }
                        RawEvent::Delete { key, .. } => {
                            let Some(name) = names.remove(&key) else {
                                continue;
                            };
                            self.edit(|objects| objects.remove(&name).is_some());
                        }
                    }
                }
            }
        }
    }

    /// Publishes the staged objects once the node's tasks and every needed network are
    /// listed.
    fn publish_when_listed(&mut self, wanted: Option<&BTreeSet<String>>) {
        let Some(wanted) = wanted else { return };
        if self.staged.is_some() && wanted.iter().all(|n| self.names.contains_key(n)) {
            self.tx.send_replace(self.staged.take());
        }
    }
}

fn decoded(kv: &RawKv) -> Option<Endpoints> {
    match shoal_store::decode::<EndpointsSpec>(kv.key.as_bytes(), &kv.value, kv.mod_revision) {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring undecodable Endpoints");
            None
        }
    }
}

/// Keeps `tx` equal to the Endpoints of the networks the node needs ([`watched_networks`] of
/// `desired`, plus `always`) until `shutdown` turns true.
pub async fn watch_endpoints(
    store: Store,
    progress_every: Duration,
    mut desired: watch::Receiver<DesiredTasks>,
    always: Vec<String>,
    tx: watch::Sender<Cache<EndpointsSpec>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (updates_tx, mut updates) = mpsc::channel::<Update>(64);
    let mut follows: BTreeMap<String, Follow> = BTreeMap::new();
    let mut generation = 0u64;
    let mut union = Union {
        staged: Some(BTreeMap::new()),
        names: BTreeMap::new(),
        tx,
    };
    loop {
        let wanted = desired
            .borrow_and_update()
            .as_ref()
            .map(|tasks| watched_networks(tasks.values(), &always));
        if let Some(wanted) = &wanted {
            let gone: Vec<String> = follows
                .keys()
                .filter(|n| !wanted.contains(*n))
                .cloned()
                .collect();
            for network in gone {
                follows.remove(&network);
                union.forget(&network);
                tracing::debug!(network, "stopped watching endpoints");
            }
            for network in wanted {
                if follows.contains_key(network) {
                    continue;
                }
                generation += 1;
                let prefix = store.keys().network_endpoints(network);
                let watcher =
                    Watcher::new(store.clone(), prefix).with_progress_every(progress_every);
                let task = tokio::spawn(follow(
                    network.clone(),
                    generation,
                    watcher,
                    updates_tx.clone(),
                ));
                follows.insert(network.clone(), Follow { generation, task });
                tracing::debug!(network, "watching endpoints");
            }
        }
        union.publish_when_listed(wanted.as_ref());
        tokio::select! {
            r = desired.changed() => if r.is_err() { break },
            Some(u) = updates.recv() => {
                if follows.get(&u.network).is_some_and(|f| f.generation == u.generation) {
                    union.apply(&u.network, u.event);
                }
            }
            _ = super::shutdown::stopped(&mut shutdown) => break,
        }
    }
}

async fn follow(network: String, generation: u64, mut watcher: Watcher, tx: mpsc::Sender<Update>) {
    loop {
        let event = watcher.next().await;
        let update = Update {
            network: network.clone(),
            generation,
            event,
        };
        if tx.send(update).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::{TaskAttachment, TaskState};

    fn task(id: &str, state: TaskState, networks: &[&str]) -> Task {
        let mut t = Task::new(id, Default::default());
        t.status.state = state;
        t.spec.attachments = networks
            .iter()
            .map(|n| TaskAttachment {
                network: n.to_string(),
                ..Default::default()
            })
            .collect();
        t
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn watched_networks_should_follow_the_tasks_that_have_not_ended() {
        let a = task("a", TaskState::Assigned, &["front", "back"]);
        let b = task("b", TaskState::Running, &["back"]);
        let c = task("c", TaskState::Complete, &["old"]);
        assert_eq!(watched_networks([&a, &b, &c], &[]), set(&["back", "front"]));
        // The first task on a network brings it, the last one leaving takes it away.
        assert_eq!(watched_networks([&b], &[]), set(&["back"]));
        let b_done = task("b", TaskState::Failed, &["back"]);
        assert_eq!(watched_networks([&b_done], &[]), set(&[]));
        assert_eq!(watched_networks([], &[]), set(&[]));
    }

    #[test]
    fn watched_networks_should_keep_what_the_runtime_always_needs() {
        let always = vec!["ingress".to_string()];
        assert_eq!(watched_networks([], &always), set(&["ingress"]));
        let a = task("a", TaskState::Running, &["ingress", "web"]);
        assert_eq!(watched_networks([&a], &always), set(&["ingress", "web"]));
    }

    #[test]
    fn watched_networks_should_keep_a_task_wanted_shut_down_until_it_exits() {
        let mut a = task("a", TaskState::Running, &["web"]);
        a.spec.desired_state = TaskState::Shutdown;
        assert_eq!(watched_networks([&a], &[]), set(&["web"]), "draining");
        a.status.state = TaskState::Shutdown;
        assert_eq!(watched_networks([&a], &[]), set(&[]));
    }
}
