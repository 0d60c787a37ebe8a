//! Hollow nodes — **a testing mode**, like Kubernetes' kubemark hollow nodes.
//!
//! [`HollowRuntime`] implements [`TaskRuntime`] without containers, namespaces or links:
//! a started task runs at once, a stopped one exits with code 0 (and is then reported
//! `shutdown`), and [`HollowRuntime::exit`] makes a task exit as a process would.
//! Everything else — registration, the lease, the task watch, planning and status writes
//! — is the agent's real code path, so tests and benchmarks can drive hundreds of nodes
//! from one machine. Its state lives in memory: an agent process restarted with
//! `--runtime hollow` has lost its "containers", and reports its running tasks failed.
//!
//! [`HollowFleet`] runs many hollow agents in one process, sharing one etcd client for
//! their work and a second one for their leases (so the fleet's own load cannot delay its
//! keep-alives), and one status batcher (so their reports share transactions), each with
//! its own lease and watch (`shoal-agent hollow-fleet --count N`).

use std::net::Ipv4Addr;
use std::sync::Arc;

use shoal_store::{Lease, Store};

pub use crate::agent::capacity::HOLLOW_CAPACITY;
use crate::agent::{Agent, AgentConfig, AgentError, AgentHandle};

pub(crate) mod runtime;
pub use runtime::HollowRuntime;

/// How to run a fleet of hollow agents.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// How many agents.
    pub count: usize,
    /// Node names are `<prefix><index>`.
    pub name_prefix: String,
    /// The index of the first node.
    pub first_index: usize,
    /// The first node's address; each next node gets the next address.
    pub first_address: Ipv4Addr,
    /// Settings shared by every agent (its name and address are replaced); the capacity
    /// each node reports is `agent.capacity` ([`HOLLOW_CAPACITY`] by default).
    pub agent: AgentConfig,
}

impl FleetConfig {
    /// `count` agents named `hollow-1`... with addresses from 198.19.0.1 and default timings.
    pub fn new(count: usize) -> Self {
        FleetConfig {
            count,
            name_prefix: "hollow-".into(),
            first_index: 1,
            first_address: Ipv4Addr::new(198, 19, 0, 1),
            agent: AgentConfig {
                capacity: Some(HOLLOW_CAPACITY),
                ..AgentConfig::new("hollow", "198.19.0.1")
            },
        }
    }
}

/// Many hollow agents in one process.
#[derive(Debug)]
pub struct HollowFleet {
    agents: Vec<AgentHandle>,
    runtimes: Vec<Arc<HollowRuntime>>,
    liveness: crate::agent::register::Liveness,
}

impl HollowFleet {
    /// Checks every agent's configuration, then starts them all; they share `store`'s
    /// connection for their work, and one separate connection for their leases.
    pub fn spawn(store: &Store, config: &FleetConfig) -> Result<HollowFleet, AgentError> {
        let liveness = crate::agent::register::Liveness::default();
        // One status batcher for the fleet: reports of all its nodes share transactions.
        let batcher = crate::agent::StatusBatcher::spawn(store.clone());
        let mut built = Vec::with_capacity(config.count);
        for i in 0..config.count {
            let index = config.first_index + i;
            let address = u32::from(config.first_address)
                .checked_add(i as u32)
                .map(Ipv4Addr::from)
                .ok_or_else(|| AgentError::InvalidAddress {
                    address: format!("{} + {i}", config.first_address),
                })?;
            let agent = AgentConfig {
                name: format!("{}{index}", config.name_prefix),
                address: address.to_string(),
                ..config.agent.clone()
            };
            let runtime = Arc::new(HollowRuntime::new());
            built.push((
                Agent::build(agent, store.clone(), runtime.clone())?
                    .with_liveness(liveness.clone())
                    .with_batcher(batcher.clone()),
                runtime,
            ));
        }
        let (agents, runtimes) = built
            .into_iter()
            .map(|(agent, runtime)| (agent.spawn(), runtime))
            .unzip();
        Ok(HollowFleet {
            agents,
            runtimes,
            liveness,
        })
    }

    /// How the renewals of all the fleet's leases went so far.
    pub fn renewals(&self) -> shoal_store::RenewalSummary {
        self.liveness.renewals()
    }

    /// The running agents.
    pub fn agents(&self) -> &[AgentHandle] {
        &self.agents
    }

    /// The runtime of the `i`th agent (0-based).
    pub fn runtime(&self, i: usize) -> Option<&Arc<HollowRuntime>> {
        self.runtimes.get(i)
    }

    /// The agent of node `name` and its runtime.
    pub fn agent(&self, name: &str) -> Option<(&AgentHandle, &Arc<HollowRuntime>)> {
        let i = self.agents.iter().position(|a| a.name() == name)?;
        Some((&self.agents[i], &self.runtimes[i]))
    }

    /// Takes node `name`'s agent out of the fleet (drop it to kill the node as a crash
    /// would: its lease expires after the TTL; or revoke its lease first to kill it now).
    pub fn take(&mut self, name: &str) -> Option<(AgentHandle, Arc<HollowRuntime>)> {
        let i = self.agents.iter().position(|a| a.name() == name)?;
        Some((self.agents.remove(i), self.runtimes.remove(i)))
    }

    /// Waits until every node is registered; returns their leases.
    pub async fn registered(&self) -> Vec<Option<Lease>> {
        futures::future::join_all(self.agents.iter().map(|a| a.registered())).await
    }

    /// Shuts every agent down gracefully, all at once.
    pub async fn shutdown(self) {
        futures::future::join_all(self.agents.into_iter().map(AgentHandle::shutdown)).await;
    }
}
