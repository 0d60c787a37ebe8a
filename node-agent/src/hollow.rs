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
//! [`HollowFleet`] runs many hollow agents in one process, sharing one etcd client, each
//! with its own lease and watch (`shoal-agent hollow-fleet --count N`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use shoal_api_types::Task;
use shoal_store::{Lease, Store};
use tokio::sync::Notify;

use crate::agent::{
    Agent, AgentConfig, AgentError, AgentHandle, ObservedState, ObservedTask, Started, TaskError,
    TaskRuntime,
};

/// A runtime that starts nothing and reports what it was asked to do.
#[derive(Debug, Default)]
pub struct HollowRuntime {
    tasks: Mutex<BTreeMap<String, ObservedTask>>,
    changed: Notify,
}

impl HollowRuntime {
    /// An empty hollow runtime.
    pub fn new() -> Self {
        HollowRuntime::default()
    }

    /// Makes a running task exit with `exit_code`, as if its process ended; returns
    /// whether it was running.
    pub fn exit(&self, id: &str, exit_code: i32) -> bool {
        let mut tasks = self.tasks.lock().expect("hollow runtime lock");
        let Some(task) = tasks
            .get_mut(id)
            .filter(|t| t.state == ObservedState::Running)
        else {
            return false;
        };
        task.state = ObservedState::Exited { exit_code };
        drop(tasks);
        self.changed.notify_one();
        true
    }

    /// Forgets a task, as if its container was deleted behind the agent's back.
    pub fn forget(&self, id: &str) -> bool {
        let gone = self
            .tasks
            .lock()
            .expect("hollow runtime lock")
            .remove(id)
            .is_some();
        self.changed.notify_one();
        gone
    }

    /// The ids of the tasks that run.
    pub fn running(&self) -> Vec<String> {
        let tasks = self.tasks.lock().expect("hollow runtime lock");
        tasks
            .values()
            .filter(|t| t.state == ObservedState::Running)
            .map(|t| t.id.clone())
            .collect()
    }

    /// What the runtime has, as the agent observes it.
    pub fn snapshot(&self) -> Vec<ObservedTask> {
        self.tasks
            .lock()
            .expect("hollow runtime lock")
            .values()
            .cloned()
            .collect()
    }
}

#[async_trait]
impl TaskRuntime for HollowRuntime {
    fn name(&self) -> &'static str {
        "hollow"
    }

    async fn start_task(&self, task: &Task) -> Result<Started, TaskError> {
        let id = task.name().to_string();
        let container_id = format!("hollow-{id}");
        let observed = ObservedTask::running(id.clone(), container_id.clone());
        self.tasks
            .lock()
            .expect("hollow runtime lock")
            .insert(id, observed);
        Ok(Started { container_id })
    }

    async fn stop_task(&self, id: &str, _grace: Duration) -> Result<(), TaskError> {
        if let Some(task) = self.tasks.lock().expect("hollow runtime lock").get_mut(id) {
            if !matches!(task.state, ObservedState::Exited { .. }) {
                task.state = ObservedState::Exited { exit_code: 0 };
            }
        }
        Ok(())
    }

    async fn remove_task(&self, id: &str) -> Result<(), TaskError> {
        self.tasks.lock().expect("hollow runtime lock").remove(id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ObservedTask>, TaskError> {
        Ok(self.snapshot())
    }

    async fn changed(&self) {
        self.changed.notified().await
    }
}

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
    /// Settings shared by every agent (its name and address are replaced).
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
            agent: AgentConfig::new("hollow", "198.19.0.1"),
        }
    }
}

/// Many hollow agents in one process.
#[derive(Debug)]
pub struct HollowFleet {
    agents: Vec<AgentHandle>,
    runtimes: Vec<Arc<HollowRuntime>>,
}

impl HollowFleet {
    /// Checks every agent's configuration, then starts them all; they share `store`'s
    /// connection.
    pub fn spawn(store: &Store, config: &FleetConfig) -> Result<HollowFleet, AgentError> {
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
                Agent::build(agent, store.clone(), runtime.clone())?,
                runtime,
            ));
        }
        let (agents, runtimes) = built
            .into_iter()
            .map(|(agent, runtime)| (agent.spawn(), runtime))
            .unzip();
        Ok(HollowFleet { agents, runtimes })
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
