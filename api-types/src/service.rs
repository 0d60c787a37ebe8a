//! Service: a replicated or global set of tasks from one image, attached to networks,
//! discoverable by name through a virtual IP, optionally publishing ports.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::constraint::Constraint;
use crate::network::INGRESS_NETWORK;
use crate::object::{Object, Resource};
use crate::resources::Resources;
use crate::update::{UpdateConfig, UpdateState, UpdateStatus};
use crate::validation::{check_object_name, FieldError};

/// A Service object.
pub type Service = Object<ServiceSpec>;

/// How many tasks a service runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    /// `replicas` tasks, spread over the nodes.
    #[default]
    Replicated,
    /// One task on every eligible node.
    Global,
}

/// How a service name resolves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// The name resolves to one virtual IP, load-balanced over the running tasks.
    #[default]
    Vip,
    /// The name resolves to every running task's IP (DNS round robin).
    Dnsrr,
}

/// Transport protocol of a published port.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Where a published port answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// On every node, through the routing mesh.
    #[default]
    Ingress,
    /// Only on nodes running a task, straight to that task.
    Host,
}

/// Which tasks an ingress port's node sends a connection to (Kubernetes'
/// `externalTrafficPolicy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrafficPolicy {
    /// Any ready task of the service, on any node; the node SNATs, so the task sees the
    /// node's ingress address as the client.
    #[default]
    Cluster,
    /// Only the ready tasks on the node the connection reached, without SNAT, so the task
    /// sees the client's address; a node without one refuses.
    Local,
}

/// One published port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortConfig {
    /// The port on the nodes (1-65535).
    pub published: u32,
    /// The port in the task (1-65535).
    pub target: u32,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: Protocol,
    /// `ingress` (default) or `host`.
    #[serde(default)]
    pub mode: PublishMode,
    /// Ingress mode only: `cluster` (default: any ready task, the client's address is
    /// replaced by the node's) or `local` (only the receiving node's ready tasks, the
    /// client's address kept; a node without one refuses). Host-mode ports always go to the
    /// local task and keep the client's address, so they take no `traffic`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub traffic: TrafficPolicy,
    /// With `traffic: local` only: a TCP port (1-65535) on which every node answers HTTP
    /// `200 {"local":N}` while it has N > 0 ready tasks for this port, else
    /// `503 {"local":0}` — for an external load balancer's health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_port: Option<u32>,
}

impl std::fmt::Display for PortConfig {
    /// Docker's form: `*:9091->80/tcp`, or `9091->80/tcp (host)` for host mode; ingress ports
    /// with `traffic: local` end in ` (local)` or ` (local, health <port>)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.mode {
            PublishMode::Ingress => {
                write!(f, "*:{}->{}/{}", self.published, self.target, self.protocol)?;
                match (self.traffic, self.health_port) {
                    (TrafficPolicy::Cluster, _) => Ok(()),
                    (TrafficPolicy::Local, None) => f.write_str(" (local)"),
                    (TrafficPolicy::Local, Some(h)) => write!(f, " (local, health {h})"),
                }
            }
            PublishMode::Host => write!(
                f,
                "{}->{}/{} (host)",
                self.published, self.target, self.protocol
            ),
        }
    }
}

/// A network the service's tasks join.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkAttachmentConfig {
    /// The Network's name.
    pub name: String,
    /// Extra names the service answers to on this network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// Where tasks may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placement {
    /// Expressions such as `node.labels.zone==a` or `node.name!=node-3`; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// At most this many of the service's live tasks on one node (0 or unset: no limit;
    /// compose's `deploy.placement.max_replicas_per_node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u64>,
}

/// A Secret a service's tasks see as a file in `/run/secrets/`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretReference {
    /// The Secret's name.
    pub source: String,
    /// The file name in `/run/secrets/` (default: `source`); no `/`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// Owner of the file (default 0).
    #[serde(default)]
    pub uid: u32,
    /// Group of the file (default 0).
    #[serde(default)]
    pub gid: u32,
    /// Permission bits (default 0o444 = 292).
    #[serde(default = "default_file_mode")]
    pub mode: u32,
}

/// A Config a service's tasks see as a file at `target`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigReference {
    /// The Config's name.
    pub source: String,
    /// Absolute path of the file in the container (default: `/<source>`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// Owner of the file (default 0).
    #[serde(default)]
    pub uid: u32,
    /// Group of the file (default 0).
    #[serde(default)]
    pub gid: u32,
    /// Permission bits (default 0o444 = 292).
    #[serde(default = "default_file_mode")]
    pub mode: u32,
}

/// Default permission bits of a secret or config file: `0444`.
pub const DEFAULT_FILE_MODE: u32 = 0o444;

fn default_file_mode() -> u32 {
    DEFAULT_FILE_MODE
}

impl SecretReference {
    /// The file name in `/run/secrets/`.
    pub fn file_name(&self) -> &str {
        if self.target.is_empty() {
            &self.source
        } else {
            &self.target
        }
    }
}

impl ConfigReference {
    /// The absolute path of the file in the container.
    pub fn path(&self) -> String {
        if self.target.is_empty() {
            format!("/{}", self.source)
        } else {
            self.target.clone()
        }
    }
}

/// The kind of a mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// A named volume local to the node, created on first use.
    #[default]
    Volume,
    /// A host path, allowed only below a prefix the agent was given
    /// (`shoal-agent --allow-bind PREFIX`).
    Bind,
    /// A fresh tmpfs per task.
    Tmpfs,
}

/// A filesystem mounted into every task of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mount {
    /// `volume` (default), `bind` or `tmpfs`.
    #[serde(rename = "type", default)]
    pub type_: MountType,
    /// Volume name (volume), absolute host path (bind); unset for tmpfs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Absolute path in the container.
    pub target: String,
    /// Mount read-only.
    #[serde(default, skip_serializing_if = "is_default")]
    pub read_only: bool,
    /// Size limit of a tmpfs (`64Mi`, `64M`, bytes); unset: half the node's memory, as the
    /// kernel does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_size: Option<crate::resources::Memory>,
}

/// When a task that ended is replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Always (default).
    #[default]
    Any,
    /// Only when it exited non-zero or failed to start.
    OnFailure,
    /// Never.
    None,
}

/// Restart behaviour, as Swarm's `--restart-*` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestartPolicy {
    /// `any` (default), `on-failure` or `none`.
    #[serde(default)]
    pub condition: RestartCondition,
    /// Seconds to wait before a replacement starts (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_seconds: Option<u32>,
    /// Give up after this many restarts in a slot (0 or unset: never give up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

/// A health check the agent runs inside each task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// The command and its arguments; exit 0 means healthy.
    pub command: Vec<String>,
    /// Seconds between checks (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u32>,
    /// Seconds a check may take (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// Failures in a row before the task is unhealthy (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Seconds after start during which failures do not count (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period_seconds: Option<u32>,
}

/// Whether a task's container runs under a seccomp filter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// The default profile: the syscalls container runtimes deny by default are refused.
    #[default]
    Default,
    /// No filter (an explicit opt-out).
    Unconfined,
}

/// Most seconds a task may be given to stop before it is killed.
pub const MAX_STOP_GRACE_PERIOD_SECONDS: u32 = 600;

/// What the user wants of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// Image reference, e.g. `localhost:5000/busybox:latest`.
    pub image: String,
    /// Replaces the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments to the command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `replicated` (default) or `global`.
    #[serde(default)]
    pub mode: ServiceMode,
    /// Number of tasks in replicated mode (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
    /// Networks the tasks join.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachmentConfig>,
    /// Published ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
    /// `vip` (default) or `dnsrr`.
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// Placement constraints.
    #[serde(default, skip_serializing_if = "is_default")]
    pub placement: Placement,
    /// Restart behaviour.
    #[serde(default, skip_serializing_if = "is_default")]
    pub restart_policy: RestartPolicy,
    /// Optional health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthCheck>,
    /// Seconds between SIGTERM and SIGKILL when a task stops (default 10, at most
    /// [`MAX_STOP_GRACE_PERIOD_SECONDS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period_seconds: Option<u32>,
    /// User (and group) the command runs as: `name`, `uid`, `uid:gid` or `name:group`
    /// (default: the image's, else root).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Working directory of the command (default: the image's, else `/`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// Mount the image's root filesystem read-only.
    #[serde(default, skip_serializing_if = "is_default")]
    pub read_only_root_filesystem: bool,
    /// Capabilities added to Docker's default set (`NET_ADMIN` or `CAP_NET_ADMIN`; `ALL`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities removed from the default set (`ALL` drops every one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// `default` (the default seccomp profile) or `unconfined`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub seccomp: SeccompMode,
    /// CPU, memory and pids limits; CPU and memory reservations.
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: Resources,
    /// Swarm's `ForceUpdate`: a counter that, when changed, makes every task out of date
    /// and so replaces them all (one at a time) even though nothing else changed.
    /// `shoal service update --force` increments it.
    #[serde(default, skip_serializing_if = "is_default")]
    pub force_update: u64,
    /// How tasks are replaced when this spec changes (Swarm's defaults: one at a time,
    /// stop-first, pause on the first failure).
    #[serde(default, skip_serializing_if = "is_default")]
    pub update_config: UpdateConfig,
    /// How tasks are replaced when going back to the previous spec.
    #[serde(default, skip_serializing_if = "is_default")]
    pub rollback_config: UpdateConfig,
    /// Secrets mounted as files in `/run/secrets/` (a read-only tmpfs per task).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretReference>,
    /// Configs mounted as read-only files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<ConfigReference>,
    /// Volumes, bind mounts and tmpfs mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Labels on the tasks' containers (compose's service-level `labels`); keys starting
    /// with `shoal.io/` are Shoal's and refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub container_labels: BTreeMap<String, String>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl Service {
    /// Goes back to the previous spec, as `service rollback` asks: the current spec becomes
    /// the previous one (so a second rollback goes forward again), generation is bumped and
    /// the update status says a rollback started. Errors when there is no previous spec.
    pub fn rollback(&mut self, now: DateTime<Utc>) -> Result<(), String> {
        let Some(previous) = self.status.previous_spec.take() else {
            return Err(format!(
                "service {} has no previous spec to roll back to (it was never updated)",
                self.metadata.name
            ));
        };
        let current = std::mem::replace(&mut self.spec, *previous);
        self.status.previous_spec = Some(Box::new(current));
        self.metadata.generation += 1;
        self.status.update_status = Some(UpdateStatus {
            state: UpdateState::RollbackStarted,
            started_at: Some(now),
            message: "manually requested rollback".into(),
            ..Default::default()
        });
        Ok(())
    }
}

impl ServiceSpec {
    /// Desired task count in replicated mode (0 for global, which follows the nodes).
    pub fn replica_count(&self) -> u64 {
        match self.mode {
            ServiceMode::Replicated => self.replicas.unwrap_or(1).max(0) as u64,
            ServiceMode::Global => 0,
        }
    }

    /// The parsed placement constraints (invalid ones are skipped; validation reports them).
    pub fn constraints(&self) -> Vec<Constraint> {
        self.placement
            .constraints
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
    }

    /// Whether tasks need an attachment to the ingress network.
    pub fn publishes_ingress(&self) -> bool {
        self.ports.iter().any(|p| p.mode == PublishMode::Ingress)
    }

    /// The `traffic` and `healthPort` of each port: `traffic: local` and a health port only
    /// on ingress ports (host-mode ports always keep the client's address), a health port
    /// only with `traffic: local`, within 1-65535, and never one of the service's own
    /// published TCP port numbers; each health port once per service. Clashes with other
    /// services are the API's (`check_ports` in the controller).
    fn validate_traffic(&self, errs: &mut Vec<FieldError>) {
        let mut health: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, port) in self.ports.iter().enumerate() {
            if port.mode == PublishMode::Host && port.traffic != TrafficPolicy::Cluster {
                errs.push(FieldError::new(
                    format!("spec.ports[{i}].traffic"),
                    "traffic applies to ingress-mode ports only: a host-mode port already goes \
                     to the node's own task and keeps the client's address; remove traffic or \
                     use mode: ingress",
                ));
            }
            let Some(h) = port.health_port else { continue };
            let field = format!("spec.ports[{i}].healthPort");
            if port.traffic != TrafficPolicy::Local || port.mode != PublishMode::Ingress {
                errs.push(FieldError::new(
                    field,
                    "a health port needs traffic: local on an ingress-mode port (it reports the \
                     node's local ready tasks, which only that policy uses)",
                ));
                continue;
            }
            if !(1..=65535).contains(&h) {
                errs.push(FieldError::new(field, format!("must be 1-65535 (got {h})")));
                continue;
            }
            if let Some(j) = self
                .ports
                .iter()
                .position(|q| q.published == h && q.protocol == Protocol::Tcp)
            {
                errs.push(FieldError::new(
                    field,
                    format!("{h}/tcp is published by spec.ports[{j}]; a health port needs a port of its own"),
                ));
                continue;
            }
            if let Some(j) = health.insert(h, i) {
                errs.push(FieldError::new(
                    field,
                    format!("{h} is already the health port of spec.ports[{j}]"),
                ));
            }
        }
    }

    /// The networks (and aliases) the service's tasks join: its own, plus the ingress
    /// network when it publishes an ingress port.
    pub fn wanted_networks(&self) -> Vec<(String, Vec<String>)> {
        let mut wanted: Vec<(String, Vec<String>)> = self
            .networks
            .iter()
            .map(|n| (n.name.clone(), n.aliases.clone()))
            .collect();
        if self.publishes_ingress() && !wanted.iter().any(|(n, _)| n == INGRESS_NETWORK) {
            wanted.push((INGRESS_NETWORK.to_string(), vec![]));
        }
        wanted
    }
}

impl Resource for ServiceSpec {
    const KIND: &'static str = "Service";
    const PLURAL: &'static str = "services";
    const USER_OWNED: bool = true;
    const STACK_NAMES: bool = true;
    type Status = ServiceStatus;

    /// Keeps the old spec for rollback and starts the next update afresh (Swarm:
    /// `PreviousSpec` = the old spec, `UpdateStatus` cleared).
    fn spec_changed(old: &Self, status: &mut ServiceStatus) {
        status.previous_spec = Some(Box::new(old.clone()));
        status.update_status = None;
    }

    fn apply_defaults(&mut self) {
        if self.mode == ServiceMode::Replicated && self.replicas.is_none() {
            self.replicas = Some(1);
        }
    }

    fn validate_spec(&self, errs: &mut Vec<FieldError>) {
        if self.image.trim().is_empty() {
            errs.push(FieldError::new("spec.image", "is required"));
        } else if self.image.chars().any(char::is_whitespace) {
            errs.push(FieldError::new(
                "spec.image",
                format!("{:?} must not contain spaces", self.image),
            ));
        }
        match (self.mode, self.replicas) {
            (ServiceMode::Replicated, Some(r)) if r < 0 => errs.push(FieldError::new(
                "spec.replicas",
                format!("must be 0 or more (got {r})"),
            )),
            (ServiceMode::Replicated, Some(r)) if r > 100_000 => {
                errs.push(FieldError::new("spec.replicas", "must be at most 100000"))
            }
            (ServiceMode::Global, Some(_)) => errs.push(FieldError::new(
                "spec.replicas",
                "must not be set in global mode (one task runs on every eligible node)",
            )),
            _ => {}
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') {
                errs.push(FieldError::new(
                    format!("spec.env.{key}"),
                    "names must be non-empty and contain no '='",
                ));
            }
        }
        let mut seen_networks = BTreeSet::new();
        for (i, net) in self.networks.iter().enumerate() {
            if let Err(msg) = check_object_name(&net.name) {
                errs.push(FieldError::new(format!("spec.networks[{i}].name"), msg));
            } else if !seen_networks.insert(net.name.as_str()) {
                errs.push(FieldError::new(
                    format!("spec.networks[{i}].name"),
                    format!("network {:?} is listed twice", net.name),
                ));
            }
            for (j, alias) in net.aliases.iter().enumerate() {
                if let Err(msg) = check_object_name(alias) {
                    errs.push(FieldError::new(
                        format!("spec.networks[{i}].aliases[{j}]"),
                        msg,
                    ));
                }
            }
        }
        // (published, protocol) -> (index, mode) of the first port that claimed it.
        let mut claimed: BTreeMap<(u32, Protocol), (usize, PublishMode)> = BTreeMap::new();
        let mut by_number: BTreeMap<u32, (usize, PublishMode)> = BTreeMap::new();
        self.validate_traffic(errs);
        for (i, port) in self.ports.iter().enumerate() {
            let mut ok = true;
            for (field, value) in [("published", port.published), ("target", port.target)] {
                if !(1..=65535).contains(&value) {
                    errs.push(FieldError::new(
                        format!("spec.ports[{i}].{field}"),
                        format!("must be 1-65535 (got {value})"),
                    ));
                    ok = false;
                }
            }
            if !ok {
                continue;
            }
            if let Some((j, _)) = claimed.get(&(port.published, port.protocol)) {
                errs.push(FieldError::new(
                    format!("spec.ports[{i}].published"),
                    format!(
                        "{}/{} is already published by spec.ports[{j}]",
                        port.published, port.protocol
                    ),
                ));
                continue;
            }
            if let Some((j, mode)) = by_number.get(&port.published) {
                if *mode != port.mode {
                    errs.push(FieldError::new(
                        format!("spec.ports[{i}].published"),
                        format!(
                            "port {} is published in {} mode by spec.ports[{j}]; an ingress and a host port cannot share a number",
                            port.published,
                            mode_name(*mode)
                        ),
                    ));
                    continue;
                }
            }
            claimed.insert((port.published, port.protocol), (i, port.mode));
            by_number.entry(port.published).or_insert((i, port.mode));
        }
        if self.endpoint_mode == EndpointMode::Dnsrr
            && self.ports.iter().any(|p| p.mode == PublishMode::Ingress)
        {
            errs.push(FieldError::new(
                "spec.endpointMode",
                "dnsrr cannot publish ingress ports (the routing mesh needs a VIP); use mode: host or endpointMode: vip",
            ));
        }
        for (i, c) in self.placement.constraints.iter().enumerate() {
            if let Err(msg) = c.parse::<Constraint>() {
                errs.push(FieldError::new(
                    format!("spec.placement.constraints[{i}]"),
                    msg,
                ));
            }
        }
        if let Some(g) = self.stop_grace_period_seconds {
            if g > MAX_STOP_GRACE_PERIOD_SECONDS {
                errs.push(FieldError::new(
                    "spec.stopGracePeriodSeconds",
                    format!("must be at most {MAX_STOP_GRACE_PERIOD_SECONDS} (got {g})"),
                ));
            }
        }
        self.resources.validate("spec.resources", errs);
        if self.working_dir.contains('\0')
            || (!self.working_dir.is_empty() && !self.working_dir.starts_with('/'))
        {
            errs.push(FieldError::new(
                "spec.workingDir",
                format!("{:?} must be an absolute path", self.working_dir),
            ));
        }
        if self.user.chars().any(|c| c.is_whitespace() || c == '\0') {
            errs.push(FieldError::new(
                "spec.user",
                format!("{:?} must not contain spaces", self.user),
            ));
        }
        for (field, names) in [("capAdd", &self.cap_add), ("capDrop", &self.cap_drop)] {
            for (i, name) in names.iter().enumerate() {
                if crate::capabilities::canonical(name).is_none() {
                    errs.push(FieldError::new(
                        format!("spec.{field}[{i}]"),
                        format!("{name:?} is not a Linux capability (e.g. NET_ADMIN, CAP_SYS_TIME or ALL)"),
                    ));
                }
            }
        }
        self.update_config
            .validate("spec.updateConfig", false, errs);
        self.rollback_config
            .validate("spec.rollbackConfig", true, errs);
        let host_port = self.ports.iter().any(|p| p.mode == PublishMode::Host);
        for (path, cfg) in [
            ("spec.updateConfig.order", &self.update_config),
            ("spec.rollbackConfig.order", &self.rollback_config),
        ] {
            if self.mode == ServiceMode::Global
                && host_port
                && cfg.order == crate::update::UpdateOrder::StartFirst
            {
                errs.push(FieldError::new(
                    path,
                    "start-first cannot replace a global service's tasks that publish host-mode ports: \
                     the new task would need the port on the node while the old one holds it; use stop-first",
                ));
            }
        }
        self.validate_files_and_mounts(errs);
        if self.placement.max_replicas_per_node == Some(0) {
            errs.push(FieldError::new(
                "spec.placement.maxReplicasPerNode",
                "must be at least 1 (leave it unset for no limit)",
            ));
        }
        for key in self.container_labels.keys() {
            if key.is_empty() || key.starts_with("shoal.io/") {
                errs.push(FieldError::new(
                    format!("spec.containerLabels.{key}"),
                    "keys must be non-empty and must not start with shoal.io/ (Shoal's own labels)",
                ));
            }
        }
        if let Some(hc) = &self.healthcheck {
            if hc.command.is_empty() {
                errs.push(FieldError::new("spec.healthcheck.command", "is required"));
            }
            if hc.interval_seconds == Some(0) {
                errs.push(FieldError::new(
                    "spec.healthcheck.intervalSeconds",
                    "must be at least 1",
                ));
            }
        }
    }
}

impl ServiceSpec {
    /// Secrets, configs and mounts: names, targets (each container path once) and modes.
    fn validate_files_and_mounts(&self, errs: &mut Vec<FieldError>) {
        // container path -> the field that claimed it first
        let mut paths: BTreeMap<String, String> = BTreeMap::new();
        let mut claim = |path: String, field: String, errs: &mut Vec<FieldError>| {
            if let Some(first) = paths.get(&path) {
                errs.push(FieldError::new(
                    field,
                    format!("{path} is already mounted by {first}"),
                ));
            } else {
                paths.insert(path, field);
            }
        };
        for (i, r) in self.secrets.iter().enumerate() {
            let at = format!("spec.secrets[{i}]");
            if let Err(msg) = check_object_name(&r.source) {
                errs.push(FieldError::new(format!("{at}.source"), msg));
            }
            let name = r.file_name();
            if name.is_empty()
                || name.contains('/')
                || name == "."
                || name == ".."
                || name.contains('\0')
            {
                errs.push(FieldError::new(
                    format!("{at}.target"),
                    format!("{name:?} must be a file name in /run/secrets (no '/')"),
                ));
            } else {
                claim(format!("/run/secrets/{name}"), format!("{at}.target"), errs);
            }
            check_mode(&format!("{at}.mode"), r.mode, errs);
        }
        for (i, r) in self.configs.iter().enumerate() {
            let at = format!("spec.configs[{i}]");
            if let Err(msg) = check_object_name(&r.source) {
                errs.push(FieldError::new(format!("{at}.source"), msg));
            }
            let path = r.path();
            match check_container_path(&path) {
                Err(msg) => errs.push(FieldError::new(format!("{at}.target"), msg)),
                Ok(()) => claim(path, format!("{at}.target"), errs),
            }
            check_mode(&format!("{at}.mode"), r.mode, errs);
        }
        for (i, m) in self.mounts.iter().enumerate() {
            let at = format!("spec.mounts[{i}]");
            match check_container_path(&m.target) {
                Err(msg) => errs.push(FieldError::new(format!("{at}.target"), msg)),
                Ok(()) => claim(
                    m.target.trim_end_matches('/').to_string(),
                    format!("{at}.target"),
                    errs,
                ),
            }
            match m.type_ {
                MountType::Volume => {
                    if let Err(msg) = crate::volume::check_volume_name(&m.source) {
                        errs.push(FieldError::new(format!("{at}.source"), msg));
                    }
                }
                MountType::Bind => {
                    if let Err(msg) = check_container_path(&m.source) {
                        errs.push(FieldError::new(
                            format!("{at}.source"),
                            format!("a bind mount needs an absolute host path: {msg}"),
                        ));
                    }
                }
                MountType::Tmpfs => {
                    if !m.source.is_empty() {
                        errs.push(FieldError::new(
                            format!("{at}.source"),
                            "must be unset for a tmpfs mount",
                        ));
                    }
                }
            }
            if m.tmpfs_size.is_some() && m.type_ != MountType::Tmpfs {
                errs.push(FieldError::new(
                    format!("{at}.tmpfsSize"),
                    "only a tmpfs mount has a size",
                ));
            }
        }
    }
}

fn check_mode(field: &str, mode: u32, errs: &mut Vec<FieldError>) {
    if mode > 0o777 {
        errs.push(FieldError::new(
            field,
            format!("{mode:#o} is not a file mode (0 to 0777)"),
        ));
    }
}

/// Whether `path` is an absolute, normal path (no `..`, no NUL) other than `/`.
fn check_container_path(path: &str) -> Result<(), String> {
    let normal = path.starts_with('/')
        && !path.trim_end_matches('/').is_empty()
        && !path.contains('\0')
        && !path.split('/').any(|c| c == ".." || c == ".");
    if normal {
        Ok(())
    } else {
        Err(format!(
            "{path:?} must be an absolute path without '.' or '..' components, other than /"
        ))
    }
}

/// Name of a publish mode as users write it.
pub fn mode_name(mode: PublishMode) -> &'static str {
    match mode {
        PublishMode::Ingress => "ingress",
        PublishMode::Host => "host",
    }
}

/// A virtual IP of a service on one network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualIp {
    /// The network.
    pub network: String,
    /// The address, e.g. `10.0.1.2`.
    pub addr: String,
}

/// A condition in Kubernetes style.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// E.g. `Converged`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// A human message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<DateTime<Utc>>,
}

/// What the controller observed of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceStatus {
    /// Tasks that should be running.
    #[serde(default)]
    pub desired_tasks: u64,
    /// Tasks that are running.
    #[serde(default)]
    pub running_tasks: u64,
    /// One VIP per attached network (endpoint mode vip).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_ips: Vec<VirtualIp>,
    /// The spec generation this status describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The latest rolling update (or rollback), while and after it runs; reset when the
    /// spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_status: Option<UpdateStatus>,
    /// The spec before the last change, kept for `service rollback` (Swarm's
    /// `PreviousSpec`). Set by the API when the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<Box<ServiceSpec>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::Validate;

    fn errs(spec: ServiceSpec) -> Vec<String> {
        let mut s = Service::new("api", spec);
        s.apply_defaults();
        s.validated()
            .err()
            .unwrap_or_default()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    fn spec() -> ServiceSpec {
        ServiceSpec {
            image: "busybox".into(),
            ..Default::default()
        }
    }

    #[test]
    fn secrets_configs_and_mounts_are_checked_with_their_field_paths() {
        let mut s = spec();
        s.secrets = vec![
            SecretReference {
                source: "pw".into(),
                mode: DEFAULT_FILE_MODE,
                ..Default::default()
            },
            SecretReference {
                source: "pw2".into(),
                target: "pw".into(),
                mode: 0o1777,
                ..Default::default()
            },
            SecretReference {
                source: "x".into(),
                target: "a/b".into(),
                ..Default::default()
            },
        ];
        s.configs = vec![ConfigReference {
            source: "conf".into(),
            target: "etc/x".into(),
            ..Default::default()
        }];
        s.mounts = vec![
            Mount {
                type_: MountType::Volume,
                source: "bad/name".into(),
                target: "/data".into(),
                ..Default::default()
            },
            Mount {
                type_: MountType::Bind,
                source: "relative".into(),
                target: "/data".into(),
                ..Default::default()
            },
            Mount {
                type_: MountType::Volume,
                source: "v".into(),
                target: "/v".into(),
                tmpfs_size: Some(crate::resources::Memory(1024)),
                ..Default::default()
            },
        ];
        let e = errs(s);
        let fields: Vec<&str> = e.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.secrets[1].target",
                "spec.secrets[1].mode",
                "spec.secrets[2].target",
                "spec.configs[0].target",
                "spec.mounts[0].source",
                "spec.mounts[1].target",
                "spec.mounts[1].source",
                "spec.mounts[2].tmpfsSize",
            ],
            "{e:#?}"
        );
        assert!(e[0].contains("/run/secrets/pw is already mounted by spec.secrets[0].target"));
    }

    #[test]
    fn references_default_their_targets_and_modes() {
        let s: ServiceSpec = serde_json::from_str(
            r#"{"image":"b","secrets":[{"source":"pw"}],"configs":[{"source":"conf"}]}"#,
        )
        .unwrap();
        assert_eq!(s.secrets[0].file_name(), "pw");
        assert_eq!(s.secrets[0].mode, 0o444);
        assert_eq!(s.configs[0].path(), "/conf");
        assert!(errs(s).is_empty());
    }

    #[test]
    fn rollback_should_need_a_previous_spec_and_toggle_between_two() {
        let mut s = Service::new("api", spec());
        let err = s.rollback(Utc::now()).unwrap_err();
        assert!(err.contains("no previous spec"), "{err}");
        let v1 = s.spec.clone();
        let mut v2 = spec();
        v2.image = "busybox:2".into();
        ServiceSpec::spec_changed(&s.spec, &mut s.status);
        s.spec = v2.clone();
        s.rollback(Utc::now()).unwrap();
        assert_eq!(
            (&s.spec, s.status.previous_spec.as_deref()),
            (&v1, Some(&v2))
        );
        assert_eq!(
            s.status.update_status.as_ref().map(|u| u.state),
            Some(UpdateState::RollbackStarted)
        );
        assert_eq!(s.metadata.generation, 1);
        s.rollback(Utc::now()).unwrap();
        assert_eq!(
            (&s.spec, s.status.previous_spec.as_deref()),
            (&v2, Some(&v1))
        );
    }

    #[test]
    fn start_first_is_refused_for_a_global_service_with_host_ports() {
        let mut s = spec();
        s.mode = ServiceMode::Global;
        s.ports = vec![PortConfig {
            published: 8080,
            target: 80,
            mode: PublishMode::Host,
            ..Default::default()
        }];
        s.update_config.order = crate::update::UpdateOrder::StartFirst;
        let e = errs(s.clone());
        assert!(
            e.iter().any(|e| e.contains("spec.updateConfig.order")),
            "{e:?}"
        );
        s.mode = ServiceMode::Replicated;
        assert!(
            errs(s).is_empty(),
            "a replicated task may start on another node"
        );
    }

    #[test]
    fn update_policies_are_validated_with_their_paths() {
        let mut s = spec();
        s.update_config.max_failure_ratio = crate::update::Ratio(2.0);
        s.rollback_config.failure_action = crate::update::FailureAction::Rollback;
        let e = errs(s);
        assert!(
            e.iter()
                .any(|e| e.contains("spec.updateConfig.maxFailureRatio")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.contains("spec.rollbackConfig.failureAction")),
            "{e:?}"
        );
    }

    #[test]
    fn service_defaults_to_one_replica_in_vip_mode() {
        let mut s = Service::new("api", spec());
        s.apply_defaults();
        assert_eq!(s.spec.replicas, Some(1));
        assert_eq!(s.spec.endpoint_mode, EndpointMode::Vip);
        assert_eq!(s.spec.replica_count(), 1);
    }

    #[test]
    fn service_rejects_ports_out_of_range_with_field_paths() {
        let e = errs(ServiceSpec {
            ports: vec![
                PortConfig {
                    published: 0,
                    target: 80,
                    ..Default::default()
                },
                PortConfig {
                    published: 70000,
                    target: 80,
                    ..Default::default()
                },
            ],
            ..spec()
        });
        assert_eq!(
            e,
            vec![
                "spec.ports[0].published: must be 1-65535 (got 0)",
                "spec.ports[1].published: must be 1-65535 (got 70000)"
            ]
        );
    }

    #[test]
    fn service_rejects_negative_replicas_and_replicas_in_global_mode() {
        assert_eq!(
            errs(ServiceSpec {
                replicas: Some(-1),
                ..spec()
            }),
            vec!["spec.replicas: must be 0 or more (got -1)"]
        );
        assert_eq!(
            errs(ServiceSpec {
                mode: ServiceMode::Global,
                replicas: Some(2),
                ..spec()
            })
            .len(),
            1
        );
    }

    fn local_port(published: u32, health_port: Option<u32>) -> PortConfig {
        PortConfig {
            published,
            target: 80,
            traffic: TrafficPolicy::Local,
            health_port,
            ..Default::default()
        }
    }

    #[test]
    fn traffic_should_default_to_cluster_and_be_written_only_when_local() {
        let p: PortConfig = serde_json::from_str(r#"{"published":8080,"target":80}"#).unwrap();
        assert_eq!(p.traffic, TrafficPolicy::Cluster);
        assert_eq!(p.health_port, None);
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"published":8080,"target":80,"protocol":"tcp","mode":"ingress"}"#,
            "a cluster port reads as before issue 17, for agents that predate it"
        );
        let local: PortConfig = serde_json::from_str(
            r#"{"published":8080,"target":80,"traffic":"local","healthPort":31001}"#,
        )
        .unwrap();
        assert_eq!(local, local_port(8080, Some(31001)));
        assert_eq!(local.to_string(), "*:8080->80/tcp (local, health 31001)");
        assert_eq!(local_port(8080, None).to_string(), "*:8080->80/tcp (local)");
        let bad = serde_json::from_str::<PortConfig>(
            r#"{"published":8080,"target":80,"traffic":"nearest"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("unknown variant `nearest`"), "{bad}");
        assert!(errs(ServiceSpec {
            ports: vec![local_port(8080, Some(31001)), local_port(8081, None)],
            ..spec()
        })
        .is_empty());
    }

    #[test]
    fn traffic_and_health_port_should_be_refused_where_they_mean_nothing() {
        let host_local = PortConfig {
            mode: PublishMode::Host,
            ..local_port(8080, None)
        };
        let cluster_health = PortConfig {
            health_port: Some(31001),
            ..local_port(8081, None)
        };
        let e = errs(ServiceSpec {
            ports: vec![
                host_local,
                PortConfig {
                    traffic: TrafficPolicy::Cluster,
                    ..cluster_health
                },
            ],
            ..spec()
        });
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("spec.ports[0].traffic: traffic applies to ingress-mode ports only"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("spec.ports[1].healthPort: a health port needs traffic: local"),
            "{e:?}"
        );
    }

    #[test]
    fn health_ports_should_be_in_range_unpublished_and_used_once() {
        let e = errs(ServiceSpec {
            ports: vec![
                local_port(8080, Some(0)),
                local_port(8081, Some(8080)),
                local_port(8082, Some(31001)),
                local_port(8083, Some(31001)),
                local_port(8084, Some(70000)),
            ],
            ..spec()
        });
        assert_eq!(
            e,
            vec![
                "spec.ports[0].healthPort: must be 1-65535 (got 0)",
                "spec.ports[1].healthPort: 8080/tcp is published by spec.ports[0]; a health port needs a port of its own",
                "spec.ports[3].healthPort: 31001 is already the health port of spec.ports[2]",
                "spec.ports[4].healthPort: must be 1-65535 (got 70000)",
            ]
        );
    }

    #[test]
    fn service_rejects_ingress_and_host_ports_sharing_a_number() {
        let e = errs(ServiceSpec {
            ports: vec![
                PortConfig {
                    published: 8080,
                    target: 80,
                    ..Default::default()
                },
                PortConfig {
                    published: 8080,
                    target: 81,
                    protocol: Protocol::Udp,
                    mode: PublishMode::Host,
                    ..Default::default()
                },
            ],
            ..spec()
        });
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with(
                "spec.ports[1].published: port 8080 is published in ingress mode by spec.ports[0]"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn service_allows_same_number_for_tcp_and_udp_in_one_mode() {
        let e = errs(ServiceSpec {
            ports: vec![
                PortConfig {
                    published: 53,
                    target: 53,
                    ..Default::default()
                },
                PortConfig {
                    published: 53,
                    target: 53,
                    protocol: Protocol::Udp,
                    ..Default::default()
                },
            ],
            ..spec()
        });
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn service_rejects_duplicate_port_bad_network_and_constraint() {
        let e = errs(ServiceSpec {
            image: String::new(),
            ports: vec![
                PortConfig {
                    published: 80,
                    target: 80,
                    ..Default::default()
                },
                PortConfig {
                    published: 80,
                    target: 8080,
                    ..Default::default()
                },
            ],
            networks: vec![NetworkAttachmentConfig {
                name: "Bad_Net".into(),
                aliases: vec![],
            }],
            placement: Placement {
                constraints: vec!["node.colour==red".into()],
                ..Default::default()
            },
            ..Default::default()
        });
        let fields: Vec<&str> = e.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.image",
                "spec.networks[0].name",
                "spec.ports[1].published",
                "spec.placement.constraints[0]"
            ]
        );
    }

    #[test]
    fn port_display_matches_docker() {
        let p = PortConfig {
            published: 9091,
            target: 80,
            ..Default::default()
        };
        assert_eq!(p.to_string(), "*:9091->80/tcp");
    }

    #[test]
    fn unknown_capabilities_are_field_errors_naming_the_entry() {
        let ok = ServiceSpec {
            cap_add: vec!["net_admin".into(), "CAP_SYS_TIME".into(), "ALL".into()],
            cap_drop: vec!["all".into()],
            ..spec()
        };
        assert!(errs(ok).is_empty());
        let bad = ServiceSpec {
            cap_add: vec!["NET_ADMIN".into(), "NET_ADMINS".into()],
            cap_drop: vec!["CAP_NOPE".into()],
            ..spec()
        };
        let e = errs(bad);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("spec.capAdd[1]: \"NET_ADMINS\" is not a Linux capability"),
            "{e:?}"
        );
        assert!(e[1].starts_with("spec.capDrop[0]:"), "{e:?}");
    }
}
