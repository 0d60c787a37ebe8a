//! The container runtime: one narrow trait, [`ContainerRuntime`], between the agent and the
//! thing that runs task containers, with two implementations:
//!
//! - [`containerd::ContainerdRuntime`] talks gRPC to a containerd (1.6+) over its unix socket,
//!   inside a containerd namespace of its own (`shoal` by default), so nothing it does touches
//!   other users of the same containerd. Images are pulled client-side (see
//!   [`containerd`]'s docs for why not through CRI) from registries over the HTTP API v2.
//! - `fake::FakeRuntime` (feature `test-util`), a `Send + Sync` recording fake for tests of
//!   callers.
//!
//! Pure pieces live in their own modules so they are tested without containerd:
//! [`reference`] (image reference parsing and normalisation), [`registry`] (the registry
//! client and the image/manifest JSON types), [`spec`] (the OCI runtime spec and the
//! `/etc/resolv.conf`, `/etc/hosts`, `/etc/hostname` files a task gets); [`labels`] names the
//! labels on our containers. See docs/architecture.md ("Node agent").
//!
//! Invariants every implementation keeps:
//! - Container ids are chosen by the caller (the agent) and are stable: the same task always
//!   maps to the same id, so after an agent restart `list()` + the desired tasks give a pure
//!   diff. Everything created carries the [`LABEL_MANAGED`] label; `list()` returns only those.
//! - Every operation is idempotent where it can be: `delete` of a missing container is `Ok`,
//!   `ensure_image` of a present image touches no registry, `stop` of a stopped container
//!   returns its exit code.
//! - Errors name what failed (image, registry, container) and say whether retrying can help
//!   ([`RuntimeError::is_temporary`]).

pub mod containerd;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod labels;
pub mod reference;
pub mod registry;
pub mod spec;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

pub use containerd::{ContainerdConfig, ContainerdRuntime};
#[cfg(any(test, feature = "test-util"))]
pub use fake::FakeRuntime;
pub use labels::{LABEL_IMAGE, LABEL_MANAGED};
pub use reference::Reference;

/// What a task container looks like, as the agent asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerSpec {
    /// Container id, unique on the node: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 64 bytes.
    pub id: String,
    /// Image reference as written by the user (`busybox`, `localhost:5000/busybox:latest`).
    pub image: String,
    /// Hostname inside the container: the task name, e.g. `api.1`.
    pub hostname: String,
    /// Entrypoint override; empty = the image's entrypoint.
    pub command: Vec<String>,
    /// Arguments; empty = the image's cmd (when `command` is empty too).
    pub args: Vec<String>,
    /// Environment on top of the image's.
    pub env: BTreeMap<String, String>,
    /// Network namespace to join (e.g. `/var/run/netns/shoal-api.1`); `None` = a new, empty one.
    pub netns: Option<PathBuf>,
    /// The task's addresses; the first is mapped to `hostname` in `/etc/hosts`.
    pub addresses: Vec<IpAddr>,
    /// `/etc/resolv.conf` contents.
    pub dns: DnsConfig,
    /// Extra labels on the containerd container (the agent's task id, service, ...).
    pub labels: BTreeMap<String, String>,
}

/// What goes into a task's `/etc/resolv.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers; Shoal's embedded DNS at 127.0.0.11 by default.
    pub nameservers: Vec<IpAddr>,
    /// Search domains.
    pub search: Vec<String>,
    /// Resolver options (`ndots:0` by default, as Swarm writes it).
    pub options: Vec<String>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: vec![IpAddr::from([127, 0, 0, 11])],
            search: Vec::new(),
            options: vec!["ndots:0".to_string()],
        }
    }
}

/// A pulled and unpacked image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Normalised name, e.g. `docker.io/library/busybox:latest`.
    pub name: String,
    /// Digest of what the name points at (manifest or index).
    pub digest: String,
    /// Chain id of the top layer: the snapshot containers are prepared on.
    pub chain_id: String,
    /// The parts of the image config that shape a container.
    pub config: ImageConfig,
}

/// The container-relevant parts of an image config (`config` in the OCI image config JSON).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, as `KEY=value`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User`.
    pub user: String,
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, never started (or its task was cleaned up).
    Created,
    /// Its main process runs.
    Running,
    /// Paused (Shoal never pauses, but containerd can report it).
    Paused,
    /// Its main process exited.
    Exited,
    /// containerd could not tell.
    Unknown,
}

/// A container's state as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerStatus {
    /// The state.
    pub state: ContainerState,
    /// Main process id on the host, while running.
    pub pid: Option<u32>,
    /// Exit code once exited (128 + signal when killed by a signal).
    pub exit_code: Option<i32>,
}

impl ContainerStatus {
    /// A created, not started container.
    pub const CREATED: ContainerStatus = ContainerStatus {
        state: ContainerState::Created,
        pid: None,
        exit_code: None,
    };

    /// An exited container.
    pub fn exited(code: i32) -> Self {
        ContainerStatus {
            state: ContainerState::Exited,
            pid: None,
            exit_code: Some(code),
        }
    }

    /// A running container.
    pub fn running(pid: u32) -> Self {
        ContainerStatus {
            state: ContainerState::Running,
            pid: Some(pid),
            exit_code: None,
        }
    }
}

/// One of our containers, as `list()` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Container id.
    pub id: String,
    /// Image name the container was created from.
    pub image: String,
    /// Its labels (including [`LABEL_MANAGED`]).
    pub labels: BTreeMap<String, String>,
    /// Its state.
    pub status: ContainerStatus,
}

/// Result of `exec`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOutput {
    /// Exit code of the command.
    pub exit_code: i32,
    /// What it wrote to stdout.
    pub stdout: Vec<u8>,
    /// What it wrote to stderr.
    pub stderr: Vec<u8>,
}

/// The container runtime the agent drives. Object safe; share it as `Arc<dyn ContainerRuntime>`.
#[async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Makes sure `reference` is present and unpacked, pulling it if it is not.
    async fn ensure_image(&self, reference: &str) -> Result<ImageInfo, RuntimeError>;
    /// Creates (does not start) a container. Ensures the image first.
    /// [`RuntimeError::AlreadyExists`] if the id is taken.
    async fn create(&self, spec: &ContainerSpec) -> Result<(), RuntimeError>;
    /// Starts the container's main process (again, if it had exited); returns its pid.
    /// Output goes to [`ContainerRuntime::log_path`].
    async fn start(&self, id: &str) -> Result<u32, RuntimeError>;
    /// SIGTERM, up to `grace` for it to exit, then SIGKILL. Returns the exit code
    /// (`None` if it had never been started).
    async fn stop(&self, id: &str, grace: Duration) -> Result<Option<i32>, RuntimeError>;
    /// Kills what still runs and removes the container, its rootfs and its state directory
    /// (including the log). `Ok` if it does not exist.
    async fn delete(&self, id: &str) -> Result<(), RuntimeError>;
    /// Our containers (those with [`LABEL_MANAGED`]) and their states.
    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError>;
    /// One container's state; [`RuntimeError::NotFound`] if it does not exist.
    async fn status(&self, id: &str) -> Result<ContainerStatus, RuntimeError>;
    /// Waits until the container's main process exits; returns its exit code.
    async fn wait(&self, id: &str) -> Result<i32, RuntimeError>;
    /// Runs `argv` inside the running container (its env, cwd, user and capabilities),
    /// waits up to `timeout` (then kills it), and returns its exit code and output.
    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError>;
    /// Resolves when one of our containers' main processes may have exited since the call
    /// began (or the runtime lost track and the caller should re-list), so the agent
    /// converges at once instead of at its next resync. The default never resolves.
    async fn changed(&self) {
        std::future::pending::<()>().await
    }
    /// The file holding the container's stdout and stderr (appended across restarts).
    fn log_path(&self, id: &str) -> PathBuf;
}

/// Starts `id` and checks, after `within`, that it is still running: a container whose main
/// process exits that fast gives [`RuntimeError::ExitedAtOnce`] with its exit code, which is
/// what the agent reports instead of "running". Use a short `within` (e.g. 100 ms); with
/// `Duration::ZERO` it only starts.
pub async fn start_checked(
    rt: &dyn ContainerRuntime,
    id: &str,
    within: Duration,
) -> Result<u32, RuntimeError> {
    let pid = rt.start(id).await?;
    if within.is_zero() {
        return Ok(pid);
    }
    tokio::time::sleep(within).await;
    let st = rt.status(id).await?;
    match (st.state, st.exit_code) {
        (ContainerState::Exited, code) => Err(RuntimeError::ExitedAtOnce {
            id: id.to_string(),
            exit_code: code.unwrap_or(-1),
        }),
        _ => Ok(pid),
    }
}

/// Why a runtime operation failed. Messages are for users (they end up in `shoal service ps`).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image reference does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry answered, and has no such repository or tag.
    #[error("image not found: {reference}")]
    ImageNotFound {
        /// The reference as given.
        reference: String,
    },
    /// The registry could not be reached at all.
    #[error("registry {registry} is not reachable: {reason}")]
    RegistryUnreachable {
        /// `host:port`.
        registry: String,
        /// e.g. `connection refused`.
        reason: String,
    },
    /// The registry answered with an error.
    #[error("registry {registry} failed {what}: {reason}")]
    Registry {
        /// `host:port`.
        registry: String,
        /// What was asked (`GET /v2/busybox/manifests/latest`).
        what: String,
        /// HTTP status and body or transport error.
        reason: String,
        /// Whether a retry can help (5xx, 429, timeouts).
        temporary: bool,
    },
    /// The image exists but Shoal cannot run it (no linux/amd64 manifest, unknown media type...).
    #[error("image {reference} cannot be used: {reason}")]
    UnsupportedImage {
        /// The reference.
        reference: String,
        /// Why not.
        reason: String,
    },
    /// No such container.
    #[error("container {id} not found")]
    NotFound {
        /// Container id.
        id: String,
    },
    /// The container id is taken.
    #[error("container {id} already exists")]
    AlreadyExists {
        /// Container id.
        id: String,
    },
    /// The spec cannot become a container (bad id, no command, unsupported user...).
    #[error("invalid container {id}: {reason}")]
    InvalidSpec {
        /// Container id.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// containerd/runc refused to start the process (e.g. executable not found).
    #[error("container {id} failed to start: {reason}")]
    StartFailed {
        /// Container id.
        id: String,
        /// runc's message.
        reason: String,
    },
    /// The container's main process exited right after starting.
    #[error("container {id} exited at once with exit code {exit_code}")]
    ExitedAtOnce {
        /// Container id.
        id: String,
        /// Its exit code.
        exit_code: i32,
    },
    /// containerd's socket does not answer.
    #[error("containerd at {socket} is not reachable: {reason}")]
    Unavailable {
        /// The socket path.
        socket: String,
        /// Why.
        reason: String,
    },
    /// A containerd call failed.
    #[error("containerd {op} {object} failed: {code:?}: {message}")]
    Containerd {
        /// The call (`Tasks.Create`).
        op: &'static str,
        /// What it was about (container id, digest, snapshot key).
        object: String,
        /// gRPC status code.
        code: containerd_client::tonic::Code,
        /// containerd's message.
        message: String,
    },
    /// An operation did not finish in time.
    #[error("{op} of {id} did not finish within {after:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// Container id.
        id: String,
        /// The limit.
        after: Duration,
    },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// Whether retrying the same operation later can succeed without anyone changing
    /// anything (registry or containerd down, timeouts). A wrong image name, a bad spec, or a
    /// container that exits at once are not temporary: the task fails and the orchestrator
    /// decides what to do.
    pub fn is_temporary(&self) -> bool {
        use containerd_client::tonic::Code;
        match self {
            RuntimeError::RegistryUnreachable { .. }
            | RuntimeError::Unavailable { .. }
            | RuntimeError::Timeout { .. }
            | RuntimeError::Io { .. } => true,
            RuntimeError::Registry { temporary, .. } => *temporary,
            RuntimeError::Containerd { code, .. } => matches!(
                code,
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::ResourceExhausted
                    | Code::Unknown
                    | Code::Internal
            ),
            RuntimeError::InvalidReference { .. }
            | RuntimeError::ImageNotFound { .. }
            | RuntimeError::UnsupportedImage { .. }
            | RuntimeError::NotFound { .. }
            | RuntimeError::AlreadyExists { .. }
            | RuntimeError::InvalidSpec { .. }
            | RuntimeError::StartFailed { .. }
            | RuntimeError::ExitedAtOnce { .. } => false,
        }
    }

    /// How the agent should report this error on a task (see [`ErrorClass`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            RuntimeError::InvalidReference { .. }
            | RuntimeError::ImageNotFound { .. }
            | RuntimeError::UnsupportedImage { .. }
            | RuntimeError::InvalidSpec { .. } => ErrorClass::Rejected,
            RuntimeError::Unavailable { .. } => ErrorClass::Unavailable,
            RuntimeError::Containerd { code, .. }
                if *code == containerd_client::tonic::Code::Unavailable =>
            {
                ErrorClass::Unavailable
            }
            _ => ErrorClass::Failed,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            path: path.into(),
            source,
        }
    }
}

/// What a [`RuntimeError`] means for the task it happened to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The task can never run as specified: wrong image name, unusable image, bad spec.
    Rejected,
    /// This attempt failed (registry down, exited at once, runc refused); the task fails and
    /// the restart policy decides. [`RuntimeError::is_temporary`] tells whether the same
    /// spec may work later.
    Failed,
    /// containerd itself is not reachable: report nothing on the task, retry with backoff.
    Unavailable,
}

/// Checks a container id: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 64 bytes (it becomes a
/// directory name, a snapshot key and part of a cgroup path).
pub fn validate_container_id(id: &str) -> Result<(), RuntimeError> {
    let bad = |reason: &str| RuntimeError::InvalidSpec {
        id: id.to_string(),
        reason: reason.to_string(),
    };
    if id.is_empty() || id.len() > 64 {
        return Err(bad("container ids are 1 to 64 characters"));
    }
    let mut chars = id.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Err(bad("container ids start with a letter or digit"));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(bad(
            "container ids contain only letters, digits, '_', '.' and '-'",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_validated() {
        assert!(validate_container_id("shoal-api.1-abc").is_ok());
        assert!(validate_container_id("").is_err());
        assert!(validate_container_id("-x").is_err());
        assert!(validate_container_id("a/b").is_err());
        assert!(validate_container_id(&"a".repeat(65)).is_err());
    }

    #[test]
    fn errors_are_classified_and_readable() {
        let e = RuntimeError::ImageNotFound {
            reference: "localhost:5000/nope:1".into(),
        };
        assert_eq!(e.to_string(), "image not found: localhost:5000/nope:1");
        assert!(!e.is_temporary());
        let e = RuntimeError::RegistryUnreachable {
            registry: "localhost:5000".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            e.to_string(),
            "registry localhost:5000 is not reachable: connection refused"
        );
        assert!(e.is_temporary());
        let e = RuntimeError::ExitedAtOnce {
            id: "api.1".into(),
            exit_code: 3,
        };
        assert!(!e.is_temporary());
        assert!(e.to_string().contains("exit code 3"));
    }
}
