//! Node registration: the agent's side of node lifecycle.
//!
//! Registering grants an etcd lease, keeps it alive, binds the liveness key
//! (`leases/nodes/<node>`, value: the lease id in hex) to it, and writes the Node's status
//! (`ready`, address, runtime, lease, registeredAt, capacity; the controller's
//! `ingressAddress` is kept)
//! — creating the Node with a default spec
//! if it does not exist. Users own the spec (labels, availability); it is never written.
//!
//! The controller marks the node down when the liveness key disappears. When the lease is
//! lost (revoked, or etcd unreachable for a TTL) the agent registers again with a new
//! lease; the tasks it had were orphaned by then, and the converge loop cleans them up.
//! Every `check_every` the agent also checks that the key and the Node still say what it
//! wrote, and writes them again if not.
//!
//! Liveness that load cannot starve: the lease is granted, kept alive and bound to the
//! liveness key over a connection of its own ([`Liveness`]: [`Store::separate`], one per
//! agent or one per hollow fleet), never the one the task watch, status writes and the
//! converge loop queue their requests on, and that connection and the keeper run on a
//! thread of their own, which the agent's work cannot hold up. When etcd
//! says the lease is gone ("lease not found", TTL 0), the agent never retries with it: it
//! grants a new lease and registers again at once.

use std::time::Duration;

use chrono::Utc;
use shoal_api_types::resources::NodeCapacity;
use shoal_api_types::{Node, NodeSpec, NodeState, NodeStatus};
use shoal_store::{Lease, LeaseKeeper, RenewalStats, RenewalSummary, Store, StoreError};
use std::sync::Arc;

use tokio::sync::{watch, OnceCell};

use shoal_store::Backoff;

/// The connection leases and liveness keys go through: made on first use from the work
/// store ([`Store::separate`]) and shared by every agent holding a clone (a hollow fleet
/// shares one; a real agent has its own). The connection and every lease keeper run on a
/// thread of their own (a single-threaded runtime), so a busy or blocked work runtime
/// cannot delay a renewal; the thread ends when the last clone is dropped.
#[derive(Debug, Clone, Default)]
pub(crate) struct Liveness(Arc<LivenessInner>);

#[derive(Debug, Default)]
struct LivenessInner {
    store: OnceCell<Store>,
    /// Every renewal of every lease kept through this liveness.
    renewals: RenewalStats,
    thread: std::sync::OnceLock<LivenessThread>,
}

/// The runtime of the liveness thread; dropping `_stop` ends it.
#[derive(Debug)]
struct LivenessThread {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Liveness {
    /// The separate store, connecting it (on the liveness thread) on first use.
    async fn store(&self, work: &Store) -> Result<Store, StoreError> {
        let handle = self.handle()?;
        self.0
            .store
            .get_or_try_init(|| async {
                let work = work.clone();
                handle
                    .spawn(async move { work.separate().await })
                    .await
                    .map_err(|e| StoreError::Unreachable(format!("liveness thread: {e}")))?
            })
            .await
            .cloned()
    }

    /// Renews `lease` over `store` on the liveness thread.
    fn keep_alive(&self, store: &Store, lease: Lease) -> Result<LeaseKeeper, StoreError> {
        let _on = self.handle()?.enter();
        Ok(store.keep_alive_counted(lease, self.0.renewals.clone()))
    }

    /// How the renewals of the leases kept through this liveness went so far.
    pub(crate) fn renewals(&self) -> RenewalSummary {
        self.0.renewals.summary()
    }

    /// The liveness thread's runtime, started on first use.
    fn handle(&self) -> Result<tokio::runtime::Handle, StoreError> {
        if let Some(t) = self.0.thread.get() {
            return Ok(t.handle.clone());
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, handle) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("shoal-liveness".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready.send(Ok(runtime.handle().clone()));
                // Until every clone of the Liveness is gone.
                let _ = runtime.block_on(stopped);
            })
            .map_err(|e| {
                StoreError::Unreachable(format!("cannot start the liveness thread: {e}"))
            })?;
        let handle = handle
            .recv()
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|e| {
                StoreError::Unreachable(format!("cannot start the liveness runtime: {e}"))
            })?;
        // Two agents racing here: the loser's thread ends as its `stop` is dropped.
        let thread = self.0.thread.get_or_init(|| LivenessThread {
            handle,
            _stop: stop,
        });
        Ok(thread.handle.clone())
    }
}

/// What a registration check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checked {
    /// The key and the Node say what the agent wrote (or say it again now).
    Ok,
    /// etcd no longer knows the lease: register again with a new one.
    LeaseGone,
}

/// What to register, and how.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub store: Store,
    pub name: String,
    pub address: String,
    pub agent_endpoint: String,
    pub runtime: &'static str,
    pub ttl: Duration,
    pub check_every: Duration,
    pub revoke_on_exit: bool,
    pub capacity: Option<NodeCapacity>,
    /// The connection for the lease and the liveness key.
    pub liveness: Liveness,
}

/// The lease id as written to the liveness key and `Node.status.lease`.
pub fn lease_hex(lease: Lease) -> String {
    format!("{:x}", lease.id)
}

impl Registration {
    /// Registers until `shutdown` turns true; publishes the current lease in `lease_tx`
    /// (`None` while not registered).
    pub(crate) async fn run(
        self,
        lease_tx: watch::Sender<Option<Lease>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::new(
            Duration::from_millis(200),
            self.ttl.max(Duration::from_secs(1)),
        );
        loop {
            let registered = tokio::select! {
                r = self.register_separately() => r,
                _ = super::shutdown::stopped(&mut shutdown) => return,
            };
            let (keeper, liveness) = match registered {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(node = %self.name, error = %e, "cannot register the node; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next().unwrap_or_default()) => continue,
                        _ = super::shutdown::stopped(&mut shutdown) => return,
                    }
                }
            };
            backoff.reset();
            let lease = keeper.lease();
            tracing::info!(node = %self.name, lease = %lease_hex(lease), "node registered");
            lease_tx.send_replace(Some(lease));
            let first_check = tokio::time::Instant::now() + shoal_store::jittered(self.check_every);
            let mut check = tokio::time::interval_at(first_check, self.check_every);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = keeper.lost() => {
                        tracing::warn!(node = %self.name, lease = %lease_hex(lease), "node lease lost; registering again");
                        lease_tx.send_replace(None);
                        break;
                    }
                    _ = check.tick() => {
                        match self.check(&liveness, lease).await {
                            Ok(Checked::Ok) => {}
                            Ok(Checked::LeaseGone) => {
                                tracing::warn!(node = %self.name, lease = %lease_hex(lease), "etcd no longer knows the node lease; registering again with a new one");
                                lease_tx.send_replace(None);
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(node = %self.name, error = %e, "cannot check the node's registration");
                            }
                        }
                    }
                    _ = super::shutdown::stopped(&mut shutdown) => {
                        if self.revoke_on_exit {
                            drop(keeper);
                            match tokio::time::timeout(Duration::from_secs(2), liveness.revoke_lease(lease)).await {
                                Ok(Ok(())) => tracing::info!(node = %self.name, "lease revoked"),
                                Ok(Err(e)) => tracing::warn!(node = %self.name, error = %e, "cannot revoke the lease"),
                                Err(_) => tracing::warn!(node = %self.name, "revoking the lease timed out"),
                            }
                        }
                        return;
                    }
                }
            }
        }
    }

    fn liveness_key(&self) -> String {
        self.store.keys().node_lease(&self.name)
    }

    /// Registers over the liveness connection (made now if need be); returns the keeper
    /// and that connection.
    async fn register_separately(&self) -> Result<(LeaseKeeper, Store), StoreError> {
        let liveness = self.liveness.store(&self.store).await?;
        let keeper = self.register(&liveness).await?;
        Ok((keeper, liveness))
    }

    /// Grants a new lease and binds the liveness key and the Node's status to it. The
    /// lease, its keep-alives and the key go through `liveness`; the Node through the work
    /// store.
    async fn register(&self, liveness: &Store) -> Result<LeaseKeeper, StoreError> {
        let lease = liveness.grant_lease(self.ttl).await?;
        let keeper = self.liveness.keep_alive(liveness, lease)?;
        let bind = async {
            liveness
                .put_with_lease(&self.liveness_key(), lease_hex(lease), lease)
                .await?;
            self.write_node(lease).await
        };
        match bind.await {
            Ok(()) => Ok(keeper),
            Err(e) => {
                drop(keeper);
                let _ = tokio::time::timeout(Duration::from_secs(1), liveness.revoke_lease(lease))
                    .await;
                Err(e)
            }
        }
    }

    fn status(&self, lease: Lease) -> NodeStatus {
        NodeStatus {
            state: NodeState::Ready,
            address: self.address.clone(),
            agent_endpoint: self.agent_endpoint.clone(),
            lease: lease_hex(lease),
            runtime: self.runtime.to_string(),
            registered_at: Some(Utc::now()),
            message: String::new(),
            ingress_address: String::new(),
            capacity: self.capacity,
        }
    }

    /// Writes the Node's status, creating the Node with a default spec if it is missing.
    async fn write_node(&self, lease: Lease) -> Result<(), StoreError> {
        let key = self.store.keys().named::<NodeSpec>(&self.name);
        let status = self.status(lease);
        for _ in 0..8 {
            let updated = self
                .store
                .update_with::<NodeSpec>(&key, |node| {
                    // The ingress address is the controller's allocation: keep it.
                    let ingress_address = std::mem::take(&mut node.status.ingress_address);
                    node.status = NodeStatus {
                        ingress_address,
                        ..status.clone()
                    };
                    true
                })
                .await?;
            if updated.is_some() {
                return Ok(());
            }
            let mut node = Node::new(self.name.clone(), NodeSpec::default());
            node.status = status.clone();
            match self.store.create(&node).await {
                Ok(_) => return Ok(()),
                Err(StoreError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict(format!(
            "node {:?}: created and deleted concurrently too often",
            self.name
        )))
    }

    /// Puts back the liveness key and the Node's ready status if something changed them
    /// while the lease lived; says so if the lease itself is gone.
    async fn check(&self, liveness: &Store, lease: Lease) -> Result<Checked, StoreError> {
        let key = self.liveness_key();
        let current = liveness.get_raw(&key).await?;
        if current.map(|kv| kv.lease) != Some(lease.id) {
            tracing::warn!(node = %self.name, "liveness key missing or not ours; writing it again");
            match liveness.put_with_lease(&key, lease_hex(lease), lease).await {
                Ok(()) => {}
                Err(e) if e.is_lease_gone() => return Ok(Checked::LeaseGone),
                Err(e) => return Err(e),
            }
        }
        let node = self.store.get_named::<NodeSpec>(&self.name).await?;
        let ok = node.is_some_and(|n| {
            n.status.state == NodeState::Ready && n.status.lease == lease_hex(lease)
        });
        if !ok {
            tracing::warn!(node = %self.name, "node not ready with our lease; writing its status again");
            self.write_node(lease).await?;
        }
        Ok(Checked::Ok)
    }
}
