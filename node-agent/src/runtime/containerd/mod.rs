//! [`ContainerdRuntime`]: the [`ContainerRuntime`] over containerd's gRPC API
//! (`containerd-client`), in a containerd namespace of its own. This file owns the
//! connection (configuration, namespace and lease metadata on requests, shared error
//! mapping); [`image`] owns pulls, imports, unpacking and leases; [`container`] owns
//! containers and their tasks (create, start, stop, exec, logs) and implements the trait.
//!
//! **Pulls are done client-side**, not through CRI's `ImageService.PullImage`: the CRI plugin
//! always pulls into the `k8s.io` namespace (not ours), takes plain-HTTP registries only from
//! containerd's own config (so the agent's `--plain-http-registry` list would have to be
//! written into every node's containerd config), and its proto is not part of
//! `containerd-client`. Client-side, a pull is: resolve the reference over the registry HTTP
//! API v2 ([`super::registry`]), pick the platform's manifest from an index, stream each blob
//! into containerd's content store (`Content.Write`, skipping blobs it already has), label
//! the blobs so containerd's garbage collector keeps the tree (`containerd.io/gc.ref.*`, as
//! containerd's own pull does), unpack the layers into the snapshotter (`Snapshots.Prepare`
//! on the parent chain id + `Diff.Apply` + `Snapshots.Commit` as the chain id), and create
//! the image record (`Images.Create`). All of it runs under a containerd lease, so a
//! half-done pull is never collected under our feet and never leaks: the lease expires.
//! The same code imports an OCI archive ([`ContainerdRuntime::import_oci_archive`]).
//!
//! **Containers**: a snapshot keyed by the container id on the image's top chain id, a
//! container record with the OCI spec of [`super::spec`] and the [`LABEL_MANAGED`] label, and
//! per-container files in `<state_dir>/<id>/` (resolv.conf, hosts, hostname, `container.log`).
//! Tasks run under the runc v2 shim with stdout and stderr appended to the log through the
//! shim's `file://` stdio; a background loop rotates the logs by size
//! ([`super::logs`], [`ContainerdConfig::log_rotation`]). A container's OOM kills are read
//! from its cgroup's `oom_kill` counter when it has exited ([`ContainerdRuntime::oom_kills`]):
//! the cgroup stays until the task is deleted, so the count survives an agent restart
//! (containerd's `/tasks/oom` event would not). `exec` uses FIFOs so stdout and stderr stay apart.
//!
//! Invariant: everything this module creates in containerd (containers, snapshots, images,
//! content, leases) lives in the configured namespace; `delete` removes the container's
//! snapshot and state directory too.

mod container;
mod events;
mod image;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use containerd_client::tonic::metadata::{Ascii, MetadataValue};
use containerd_client::tonic::{Code, Request, Status};
use tokio::sync::Mutex;

use super::api::ContainerRuntime;
use super::error::RuntimeError;
use super::logs::LogRotation;
use super::registry::{Platform, RegistryClient};

/// How to reach and use a containerd.
#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    /// containerd's gRPC socket (per node in a local cluster).
    pub socket: PathBuf,
    /// containerd namespace for everything Shoal creates.
    pub namespace: String,
    /// Per-container files go to `<state_dir>/<id>/`.
    pub state_dir: PathBuf,
    /// Snapshotter (`overlayfs`; `native` where overlay mounts are not possible).
    pub snapshotter: String,
    /// Runtime (shim) name.
    pub runtime: String,
    /// Registries reached over plain HTTP (`host:port`, or `host` for all ports).
    pub plain_http_registries: Vec<String>,
    /// cgroup parent; a container's cgroup is `<cgroup_parent>/<id>`.
    pub cgroup_parent: String,
    /// Registry name → `host:port` actually dialled (see
    /// [`RegistryClient::with_endpoint`]); e.g. `localhost:5000` → `198.18.0.254:5000` for
    /// an agent in a local-cluster node namespace.
    pub registry_endpoints: BTreeMap<String, String>,
    /// When containers' logs are rotated and how many files are kept.
    pub log_rotation: LogRotation,
    /// The most one image pull may take in all (manifest, config and every layer); past
    /// it the pull is abandoned and the task fails with [`RuntimeError::PullTimeout`].
    pub pull_timeout: Duration,
    /// The directory runc keeps its container state in (`<dir>/<namespace>/<id>`); `None`
    /// leaves runc's default, `/run/containerd/runc`. A local-cluster node sets its own,
    /// below its directory, so the state of containers killed with their node goes with it.
    pub runc_root: Option<PathBuf>,
}

/// How long a pull may take unless configured (`--pull-timeout`).
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(300);

impl ContainerdConfig {
    /// Defaults for a socket and a state directory: namespace `shoal`, overlayfs, runc v2,
    /// plain HTTP to `localhost:5000` and `127.0.0.1:5000`, cgroups under `/shoal`.
    pub fn new(socket: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        ContainerdConfig {
            socket: socket.into(),
            namespace: "shoal".to_string(),
            state_dir: state_dir.into(),
            snapshotter: "overlayfs".to_string(),
            runtime: "io.containerd.runc.v2".to_string(),
            plain_http_registries: vec!["localhost:5000".to_string(), "127.0.0.1:5000".to_string()],
            cgroup_parent: "/shoal".to_string(),
            registry_endpoints: BTreeMap::new(),
            log_rotation: LogRotation::default(),
            pull_timeout: DEFAULT_PULL_TIMEOUT,
            runc_root: None,
        }
    }
}

/// The containerd-backed runtime. Cheap to share (`Arc`); all methods take `&self`.
pub struct ContainerdRuntime {
    cfg: ContainerdConfig,
    client: containerd_client::Client,
    ns: MetadataValue<Ascii>,
    registry: RegistryClient,
    platform: Platform,
    pull_lock: Mutex<()>,
    changes: tokio::sync::watch::Sender<u64>,
    events_task: tokio::task::JoinHandle<()>,
    rotation_task: tokio::task::JoinHandle<()>,
}

impl Drop for ContainerdRuntime {
    fn drop(&mut self) {
        self.events_task.abort();
        self.rotation_task.abort();
    }
}

/// How often container logs are checked for rotation.
pub const LOG_ROTATION_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// File name of a container's log in its state directory.
pub const LOG_FILE: &str = "container.log";

/// Rotates the logs under `state_dir` every [`LOG_ROTATION_CHECK`] (see [`super::logs`]).
async fn rotate_logs(state_dir: PathBuf, policy: LogRotation) {
    let mut tick = tokio::time::interval(LOG_ROTATION_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let dir = state_dir.clone();
        let _ =
            tokio::task::spawn_blocking(move || super::logs::rotate_all(&dir, LOG_FILE, policy))
                .await;
    }
}
/// The answer of a lookup call: NotFound is `None`, other errors fail.
fn found<T>(
    answer: Result<T, Status>,
    call: &'static str,
    key: &str,
) -> Result<Option<T>, RuntimeError> {
    match answer {
        Ok(v) => Ok(Some(v)),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(status_err(call, key)(s)),
    }
}

/// The answer of a lookup call as "is it there": NotFound is `false`, other errors fail.
fn exists<T>(
    answer: Result<T, Status>,
    call: &'static str,
    key: &str,
) -> Result<bool, RuntimeError> {
    found(answer, call, key).map(|v| v.is_some())
}

fn status_err(op: &'static str, object: impl Into<String>) -> impl FnOnce(Status) -> RuntimeError {
    let object = object.into();
    move |s| RuntimeError::Containerd {
        op,
        object,
        code: s.code(),
        message: s.message().to_string(),
    }
}
impl ContainerdRuntime {
    /// Connects to containerd (and checks that it answers).
    pub async fn connect(cfg: ContainerdConfig) -> Result<Self, RuntimeError> {
        let socket = cfg.socket.display().to_string();
        let unavailable = |reason: String| RuntimeError::Unavailable {
            socket: socket.clone(),
            reason,
        };
        let ns = cfg
            .namespace
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| unavailable(format!("bad namespace {:?}", cfg.namespace)))?;
        let channel = containerd_client::connect(&cfg.socket)
            .await
            .map_err(|e| unavailable(super::registry::root_cause(&e)))?;
        let client = containerd_client::Client::from(channel);
        client
            .version()
            .version(())
            .await
            .map_err(|s| unavailable(s.message().to_string()))?;
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| RuntimeError::io(&cfg.state_dir, e))?;
        let changes = tokio::sync::watch::channel(0).0;
        let events_task = tokio::spawn(events::follow_exits(
            containerd_client::Client::from(client.channel()),
            cfg.namespace.clone(),
            changes.clone(),
        ));
        let rotation_task = tokio::spawn(rotate_logs(cfg.state_dir.clone(), cfg.log_rotation));
        Ok(ContainerdRuntime {
            changes,
            events_task,
            rotation_task,
            registry: cfg.registry_endpoints.iter().fold(
                RegistryClient::new(cfg.plain_http_registries.clone()),
                |c, (name, endpoint)| c.with_endpoint(name.clone(), endpoint.clone()),
            ),
            platform: Platform::current(),
            cfg,
            client,
            ns,
            pull_lock: Mutex::new(()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ContainerdConfig {
        &self.cfg
    }

    /// containerd's version string.
    pub async fn version(&self) -> Result<String, RuntimeError> {
        let v = self
            .client
            .version()
            .version(())
            .await
            .map_err(status_err("Version", ""))?
            .into_inner();
        Ok(v.version)
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert("containerd-namespace", self.ns.clone());
        r
    }

    fn req_lease<T>(&self, msg: T, lease: &str) -> Request<T> {
        let mut r = self.req(msg);
        if let Ok(v) = lease.parse() {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join(id)
    }

    /// The container's cgroup path (`<cgroup_parent>/<id>`), as given to runc.
    fn cgroups_path(&self, id: &str) -> String {
        format!("{}/{}", self.cfg.cgroup_parent.trim_end_matches('/'), id)
    }

    /// How many times the kernel's OOM killer killed a process in the container's cgroup
    /// (`oom_kill` of cgroup v1's `memory.oom_control` or cgroup v2's `memory.events`);
    /// 0 when the cgroup is gone.
    pub fn oom_kills(&self, id: &str) -> u64 {
        let rel = self.cgroups_path(id);
        let rel = rel.trim_start_matches('/');
        let root = std::path::Path::new(CGROUP_ROOT);
        [
            root.join("memory").join(rel).join("memory.oom_control"),
            root.join(rel).join("memory.events"),
        ]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find_map(|text| parse_oom_kill(&text))
        .unwrap_or(0)
    }
}

/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The `oom_kill N` line of `memory.oom_control` (v1) or `memory.events` (v2).
fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// Shared handle type the agent can store.
pub type SharedRuntime = Arc<dyn ContainerRuntime>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_counts_parse_from_v1_and_v2_files() {
        assert_eq!(
            parse_oom_kill("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            Some(2)
        );
        assert_eq!(
            parse_oom_kill("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\noom_group_kill 0\n"),
            Some(1)
        );
        assert_eq!(parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"), None);
    }
}
