//! The container runtime's plain data: what the agent asks for ([`ContainerSpec`],
//! [`DnsConfig`]) and what it gets back (images, states, exec output). No I/O here.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

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
    /// `uid`, `uid:gid`, `name` or `name:group` (names from the image's `/etc/passwd` and
    /// `/etc/group`); empty = the image's user, else root.
    pub user: String,
    /// Working directory; empty = the image's, else `/`.
    pub working_dir: String,
    /// Mount the root filesystem read-only.
    pub read_only_root: bool,
    /// Capabilities added to Docker's default set (any case, with or without `CAP_`, `ALL`).
    pub cap_add: Vec<String>,
    /// Capabilities removed from the set (`ALL` removes every one not added back).
    pub cap_drop: Vec<String>,
    /// No seccomp filter (`seccomp: unconfined`); otherwise the default profile.
    pub seccomp_unconfined: bool,
    /// Resource limits.
    pub limits: Limits,
    /// Filesystems mounted besides the defaults (secrets, configs, volumes, binds, tmpfs),
    /// in this order, after the default mounts.
    pub mounts: Vec<ContainerMount>,
}

/// One extra mount of a container, as the OCI spec takes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerMount {
    /// Absolute path in the container.
    pub destination: String,
    /// `bind` or `tmpfs`.
    pub typ: String,
    /// Host path of a bind; `tmpfs` for a tmpfs.
    pub source: String,
    /// Mount options (`rbind`, `ro`, `nosuid`, `size=…`).
    pub options: Vec<String>,
}

/// A container's resource limits (cgroup settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Memory limit in bytes (swap is limited to the same, so there is none to use).
    pub memory: Option<u64>,
    /// CPU limit in millicpus (CFS quota over a 100 ms period).
    pub cpu_millis: Option<u64>,
    /// Most processes and threads; `None` = [`shoal_api_types::resources::DEFAULT_PIDS_LIMIT`].
    pub pids: Option<u32>,
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
    /// Its labels (including [`LABEL_MANAGED`](super::labels::LABEL_MANAGED)).
    pub labels: BTreeMap<String, String>,
    /// Its state.
    pub status: ContainerStatus,
    /// Whether the kernel's OOM killer killed a process of the container (its cgroup's
    /// `oom_kill` count since the main process started is not zero). Read for exited
    /// containers only.
    pub oom_killed: bool,
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
    /// Whether either stream was cut at the caller's limit (each then ends with a marker
    /// line, see [`super::capture`]).
    pub truncated: bool,
}
