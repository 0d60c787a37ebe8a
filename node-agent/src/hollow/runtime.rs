//! [`HollowRuntime`]: the hollow testing mode's [`TaskRuntime`] — no containers,
//! namespaces or links; a started task runs at once, a stopped one exits with code 0, and
//! [`HollowRuntime::exit`] makes a task exit as a process would. A leaf of the agent's
//! trait module only, so the agent's own tests can use it. See [`super`] and
//! docs/architecture.md ("Node agent").

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use shoal_api_types::Task;
use tokio::sync::Notify;

use crate::agent::task_runtime::{ObservedState, ObservedTask, Started, TaskError, TaskRuntime};

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
        Ok(Started {
            container_id,
            stages: Default::default(),
        })
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

    async fn observe(&self, ids: &[&str]) -> Result<Vec<ObservedTask>, TaskError> {
        let tasks = self.tasks.lock().expect("hollow runtime lock");
        Ok(ids
            .iter()
            .filter_map(|id| tasks.get(*id).cloned())
            .collect())
    }

    async fn changed(&self) {
        self.changed.notified().await
    }
}
