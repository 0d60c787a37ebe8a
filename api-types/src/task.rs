//! Task: one container of a service in one slot, on one node. The controller owns `spec`
//! (desired state, node, attachments); the agent owns `status`. States only move forward; a
//! replaced task is a new task in the same slot.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::labels;
use crate::meta::ObjectMeta;
use crate::object::{Object, Resource};
use crate::resources::Resources;
use crate::service::{
    ConfigReference, HealthCheck, Mount, PortConfig, RestartPolicy, SeccompMode, SecretReference,
    ServiceSpec,
};
use crate::validation::FieldError;

/// A Task object.
pub type Task = Object<TaskSpec>;

/// The key segment for tasks not yet on a node (node names cannot start with `_`).
pub const UNASSIGNED: &str = "_unassigned";

/// Life cycle of a task, in order. A task's state never moves backwards.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Created by the orchestrator.
    #[default]
    New,
    /// Waiting for a node.
    Pending,
    /// Placed on a node.
    Assigned,
    /// The agent is pulling the image and creating the container.
    Starting,
    /// The container runs.
    Running,
    /// Exited 0.
    Complete,
    /// Exited non-zero or could not start.
    Failed,
    /// The agent refused it (e.g. the image does not exist).
    Rejected,
    /// Stopped because it was no longer wanted.
    Shutdown,
    /// Its node went down.
    Orphaned,
}

impl TaskState {
    /// Whether the task has ended for good.
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut c = s.chars();
        match c.next() {
            Some(first) => write!(f, "{}{}", first.to_ascii_uppercase(), c.as_str()),
            None => Ok(()),
        }
    }
}

/// A task's address on one network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskAttachment {
    /// The network.
    pub network: String,
    /// Address with prefix length, e.g. `10.0.1.5/24`.
    pub address: String,
    /// MAC derived from the address (02:42:a.b.c.d).
    pub mac: String,
    /// Names the task answers to besides the service name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// What the controller wants of a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskSpec {
    /// The service the task belongs to.
    pub service: String,
    /// The slot (replicated mode), 1-based.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
    /// The node, once assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `running` or `shutdown`.
    pub desired_state: TaskState,
    /// The service generation the task was made from.
    #[serde(default)]
    pub service_generation: i64,
    /// Image reference.
    pub image: String,
    /// Entrypoint override.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// One address per network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<TaskAttachment>,
    /// Published ports (for host mode on the task's node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
    /// Health check, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthCheck>,
    /// Restart policy of the service.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Seconds between SIGTERM and SIGKILL.
    #[serde(default)]
    pub stop_grace_period_seconds: u32,
    /// Whether every network of the task is internal (no egress).
    #[serde(default)]
    pub internal: bool,
    /// Why the task is still pending, when it is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pending_reason: String,
    /// The service's `user`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// The service's `workingDir`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// The service's `readOnlyRootFilesystem`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub read_only_root_filesystem: bool,
    /// The service's `capAdd`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// The service's `capDrop`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// The service's `seccomp`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub seccomp: SeccompMode,
    /// The service's `resources`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: Resources,
    /// The service's `forceUpdate` when the task was made (a task whose value differs from
    /// the service's is out of date).
    #[serde(default, skip_serializing_if = "is_default")]
    pub force_update: u64,
    /// The service's `secrets` (the agent fetches their payloads from the controller).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretReference>,
    /// The service's `configs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<ConfigReference>,
    /// The service's `mounts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// The service's `containerLabels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub container_labels: BTreeMap<String, String>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// What the agent reports of a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskStatus {
    /// Current state.
    #[serde(default)]
    pub state: TaskState,
    /// When the state last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<DateTime<Utc>>,
    /// When the task started running (kept once it ends); the updater's monitor period
    /// counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// A short human message ("started", "pulling image").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// What went wrong, when something did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub err: String,
    /// Exit code, once exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The container's id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_id: String,
    /// Whether the health check passes (true when there is none and the task runs).
    #[serde(default)]
    pub healthy: bool,
    /// Whether the kernel killed the container for exceeding its memory limit.
    #[serde(default, skip_serializing_if = "is_default")]
    pub oom_killed: bool,
}

impl TaskSpec {
    /// The user-facing name: `api.1` (replicated) or `api.<node>` (global).
    pub fn display_name(&self) -> String {
        match (self.slot, &self.node) {
            (Some(slot), _) => format!("{}.{}", self.service, slot),
            (None, Some(node)) => format!("{}.{}", self.service, node),
            (None, None) => self.service.clone(),
        }
    }
}

/// Lives here rather than in `service` so that `service` needs nothing of `task` (the
/// task copies the service's fields; the comparison belongs with the copy).
impl ServiceSpec {
    /// Whether a task was made from a spec that differs from this one in anything the task
    /// runs with (not merely in the replica count): the orchestrator replaces such tasks,
    /// and the CLI does not count them as converged.
    pub fn outdates(&self, t: &TaskSpec) -> bool {
        let nets: Vec<(String, Vec<String>)> = t
            .attachments
            .iter()
            .map(|a| (a.network.clone(), a.aliases.clone()))
            .collect();
        t.image != self.image
            || t.command != self.command
            || t.args != self.args
            || t.env != self.env
            || t.ports != self.ports
            || t.healthcheck != self.healthcheck
            || t.restart_policy != self.restart_policy
            || t.stop_grace_period_seconds != self.stop_grace_period_seconds.unwrap_or(10)
            || t.user != self.user
            || t.working_dir != self.working_dir
            || t.read_only_root_filesystem != self.read_only_root_filesystem
            || t.cap_add != self.cap_add
            || t.cap_drop != self.cap_drop
            || t.seccomp != self.seccomp
            || t.resources != self.resources
            || t.force_update != self.force_update
            || t.secrets != self.secrets
            || t.configs != self.configs
            || t.mounts != self.mounts
            || t.container_labels != self.container_labels
            || nets != self.wanted_networks()
    }
}

impl Task {
    /// Whether the task is wanted running and has not ended: it holds its slot (or node,
    /// for a global service).
    pub fn is_live(&self) -> bool {
        self.spec.desired_state == TaskState::Running && !self.status.state.is_terminal()
    }

    /// Restarts in the task's slot before it, from the [`labels::ATTEMPT`] label (0 when
    /// absent or unreadable).
    pub fn attempt(&self) -> u32 {
        self.metadata
            .labels
            .get(labels::ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0)
    }

    /// The only node a global service's task may run on, from the [`labels::NODE`] label.
    pub fn pinned_node(&self) -> Option<&str> {
        self.metadata.labels.get(labels::NODE).map(String::as_str)
    }
}

impl Resource for TaskSpec {
    const KIND: &'static str = "Task";
    const PLURAL: &'static str = "tasks";
    const USER_OWNED: bool = false;
    type Status = TaskStatus;

    fn key_suffix(meta: &ObjectMeta, spec: &Self) -> String {
        format!(
            "{}/{}",
            spec.node.as_deref().unwrap_or(UNASSIGNED),
            meta.name
        )
    }

    fn validate_spec(&self, errs: &mut Vec<FieldError>) {
        if self.service.is_empty() {
            errs.push(FieldError::new("spec.service", "is required"));
        }
    }
}

/// The deterministic MAC of an IPv4 address on an overlay: `02:42:a:b:c:d` in hex.
pub fn mac_for_ip(ip: std::net::Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{SecretReference, DEFAULT_FILE_MODE};

    fn spec() -> ServiceSpec {
        ServiceSpec {
            image: "busybox".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_changed_secret_reference_outdates_tasks() {
        let mut s = spec();
        s.secrets = vec![SecretReference {
            source: "pw".into(),
            mode: DEFAULT_FILE_MODE,
            ..Default::default()
        }];
        let task = TaskSpec {
            image: s.image.clone(),
            secrets: s.secrets.clone(),
            stop_grace_period_seconds: 10,
            ..Default::default()
        };
        assert!(!s.outdates(&task));
        s.secrets[0].source = "pw2".into();
        assert!(s.outdates(&task));
    }

    #[test]
    fn task_states_only_order_forward() {
        assert!(TaskState::New < TaskState::Pending);
        assert!(TaskState::Running < TaskState::Complete);
        assert!(TaskState::Orphaned.is_terminal());
        assert!(!TaskState::Running.is_terminal());
        assert_eq!(TaskState::Running.to_string(), "Running");
    }

    #[test]
    fn task_keys_group_by_node() {
        let mut t = Task::new(
            "abc",
            TaskSpec {
                service: "api".into(),
                ..Default::default()
            },
        );
        assert_eq!(t.key_suffix(), "_unassigned/abc");
        t.spec.node = Some("node-1".into());
        assert_eq!(t.key_suffix(), "node-1/abc");
    }

    #[test]
    fn a_task_is_live_while_wanted_running_and_not_ended() {
        let mut t = Task::new(
            "t",
            TaskSpec {
                desired_state: TaskState::Running,
                ..Default::default()
            },
        );
        t.status.state = TaskState::Running;
        assert!(t.is_live());
        t.status.state = TaskState::Failed;
        assert!(!t.is_live(), "ended");
        t.status.state = TaskState::Running;
        t.spec.desired_state = TaskState::Shutdown;
        assert!(!t.is_live(), "being stopped");
    }

    #[test]
    fn attempt_and_pinned_node_come_from_labels() {
        let mut t = Task::new("t", TaskSpec::default());
        assert_eq!((t.attempt(), t.pinned_node()), (0, None));
        t.metadata.labels.insert(labels::ATTEMPT.into(), "3".into());
        t.metadata.labels.insert(labels::NODE.into(), "n1".into());
        assert_eq!((t.attempt(), t.pinned_node()), (3, Some("n1")));
        t.metadata.labels.insert(labels::ATTEMPT.into(), "x".into());
        assert_eq!(t.attempt(), 0);
    }

    #[test]
    fn macs_derive_from_ips() {
        assert_eq!(mac_for_ip("10.0.1.5".parse().unwrap()), "02:42:0a:00:01:05");
    }

    #[test]
    fn display_names_use_slot_or_node() {
        let spec = TaskSpec {
            service: "api".into(),
            slot: Some(2),
            ..Default::default()
        };
        assert_eq!(spec.display_name(), "api.2");
        let spec = TaskSpec {
            service: "mon".into(),
            node: Some("node-3".into()),
            ..Default::default()
        };
        assert_eq!(spec.display_name(), "mon.node-3");
    }
}
