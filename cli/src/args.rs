//! The command line, as clap types. Parsing only: turning flags into objects lives in
//! [`crate::flags`], running commands in [`crate::cmd`].
//!
//! Adding a command group (such as `shoal dev`) is one variant of [`Command`] plus one arm in
//! [`crate::run`].

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
pub use shoal_api_types::duration::parse_duration;

use crate::kinds::Kind;

/// `shoal`: run services on overlay networks across hosts.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, propagate_version = true)]
pub struct Cli {
    /// Where the API is (e.g. https://127.0.0.1:7777). Default: $SHOAL_SERVER, then the
    /// context file ($SHOAL_CONFIG or ~/.config/shoal/context.json), then
    /// https://127.0.0.1:7777.
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,

    /// The API token (sent as Authorization: Bearer). Default: $SHOAL_TOKEN, then the
    /// context file's "token". Prefer the variable: arguments show in `ps`.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,

    /// The cluster CA certificate (PEM) that an https:// server must chain to. Default:
    /// $SHOAL_CA, then the context file's "certificateAuthority".
    #[arg(long, global = true, value_name = "PATH")]
    pub ca: Option<std::path::PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Every top-level command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update objects from manifests (kubectl-style).
    Apply(ApplyArgs),
    /// List objects of a kind, or show one.
    Get(GetArgs),
    /// Delete objects by kind and name, or those named in manifests.
    Delete(DeleteArgs),
    /// Print changes to objects of a kind as they happen.
    Watch(WatchArgs),
    /// Manage networks (Docker-style).
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Manage services (Docker-style).
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Manage nodes (Docker-style).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Deploy and manage stacks: applications from compose files (Docker-style).
    #[command(subcommand)]
    Stack(StackCommand),
    /// Manage secrets: files mounted into tasks at /run/secrets (Docker-style).
    #[command(subcommand)]
    Secret(PayloadCommand),
    /// Manage configs: files mounted into tasks (Docker-style).
    #[command(subcommand)]
    Config(PayloadCommand),
    /// Manage named volumes on the nodes (Docker-style).
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Run a command in a running task and print its output (exit status passed through).
    Exec(ExecArgs),
    /// Fetch a task's logs.
    Logs(TaskLogsArgs),
    /// Manage API tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the token nodes join with, and the command to run on a new node (admin).
    JoinToken(JoinTokenArgs),
    /// Check the whole cluster (`system check`).
    #[command(subcommand)]
    System(SystemCommand),
    /// Run a whole cluster on this machine (local development and tests).
    Dev(crate::dev::DevArgs),
}

/// How to print objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// Columns for people.
    #[default]
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// How inspect commands print (JSON by default, as Docker does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum InspectFormat {
    /// JSON.
    #[default]
    Json,
    /// YAML.
    Yaml,
}

/// How `watch` prints events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum WatchFormat {
    /// `ADDED service/api` lines.
    #[default]
    Table,
    /// One JSON event per line, as the server sends them.
    Json,
}

/// Flags for waiting until services converge.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Return at once instead of waiting for tasks to run.
    #[arg(short, long)]
    pub detach: bool,
    /// How long to wait without progress (one more task running on the current spec)
    /// before failing (e.g. 120s, 5m, 1m30s).
    #[arg(long, default_value = "120s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// Wait without printing progress (the outcome still sets the exit status).
    #[arg(short, long)]
    pub quiet: bool,
}

/// `shoal apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A manifest file, a directory (every *.yaml, *.yml and *.json in it, sorted), or - for
    /// stdin. May be repeated; everything is sent as one all-or-nothing request.
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR|-"
    )]
    pub files: Vec<String>,
    /// Validate and report what would change, without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub wait: WaitArgs,
}

/// `shoal get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// networks (net), services (svc), nodes, tasks or endpoints (ep); `kind/name` works too.
    pub kind: String,
    /// One object's name.
    pub name: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// `shoal delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The kind (and names after it), or `kind/name`.
    #[arg(required_unless_present = "files", conflicts_with = "files")]
    pub kind: Option<String>,
    /// Names to delete.
    pub names: Vec<String>,
    /// Delete the objects these manifests name (a file, a directory or -).
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub files: Vec<String>,
}

/// `shoal watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The kind to watch.
    pub kind: String,
    /// Start after this revision (replaying what changed since); without it, the current
    /// objects come first as ADDED events.
    #[arg(long, value_name = "N")]
    pub resource_version: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: WatchFormat,
}

/// `shoal network ...`.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create an overlay network.
    Create(NetworkCreateArgs),
    /// List networks.
    #[command(visible_alias = "list")]
    Ls(ListArgs),
    /// Show networks in detail, with the services and tasks on them.
    Inspect(InspectArgs),
    /// Remove networks.
    #[command(visible_alias = "remove")]
    Rm(NamesArgs),
}

/// `shoal network create`.
#[derive(Debug, Args)]
pub struct NetworkCreateArgs {
    /// Driver (only overlay exists).
    #[arg(short, long, default_value = "overlay")]
    pub driver: String,
    /// Subnet in CIDR form; allocated from the default pool when not given.
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// Gateway address (needs --subnet).
    #[arg(long, value_name = "IP")]
    pub gateway: Option<String>,
    /// Allow standalone containers to attach.
    #[arg(long)]
    pub attachable: bool,
    /// No access to outside networks.
    #[arg(long)]
    pub internal: bool,
    /// MTU of the overlay (default: underlay MTU - 50).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// A label (key=value); may be repeated.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// The network's name.
    pub name: String,
}

/// Flags of `ls` commands.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
    /// Only print names.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Flags of `inspect` commands.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: InspectFormat,
    /// Names.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Commands that take names only.
#[derive(Debug, Args)]
pub struct NamesArgs {
    /// Names.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// `shoal service ...`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service and wait until its tasks run.
    Create(Box<ServiceCreateArgs>),
    /// List services.
    #[command(visible_alias = "list")]
    Ls(ListArgs),
    /// Show services in detail (including their virtual IPs).
    Inspect(InspectArgs),
    /// List the tasks of a service.
    Ps(ServicePsArgs),
    /// Change a service (Docker's `service update` flags) and wait until its tasks run.
    Update(Box<ServiceUpdateArgs>),
    /// Go back to the service's previous spec and wait until the rollback completes.
    Rollback(ServiceRollbackArgs),
    /// Set the number of replicas (`api=3 web=5`) and wait until they run.
    Scale(ServiceScaleArgs),
    /// Remove services.
    #[command(visible_alias = "remove")]
    Rm(NamesArgs),
    /// Fetch the logs of a service's tasks, each line prefixed with task@node.
    Logs(ServiceLogsArgs),
}

/// Service modes as flags spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeFlag {
    /// `--replicas` tasks.
    Replicated,
    /// One task per eligible node.
    Global,
}

/// Endpoint modes as flags spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EndpointModeFlag {
    /// One virtual IP per network.
    Vip,
    /// DNS round robin over task IPs.
    Dnsrr,
}

/// Restart conditions as flags spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartConditionFlag {
    /// Always replace a task that ended.
    Any,
    /// Only when it failed.
    OnFailure,
    /// Never.
    None,
}

/// The restart, stop and health-check flags of `service create` and `service update`.
#[derive(Debug, Clone, clap::Args)]
pub struct LifecycleFlags {
    /// When to replace a task that ended: any (default), on-failure, none.
    #[arg(long, value_enum)]
    pub restart_condition: Option<RestartConditionFlag>,
    /// Delay before a replacement starts (e.g. 5s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub restart_delay: Option<Duration>,
    /// Give up on a slot after this many restarts.
    #[arg(long, value_name = "N")]
    pub restart_max_attempts: Option<u32>,
    /// Time between SIGTERM and SIGKILL when a task stops (e.g. 10s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub stop_grace_period: Option<Duration>,
    /// Health check command, run with `sh -c`.
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Time between health checks.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub health_interval: Option<Duration>,
    /// Time a health check may take.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub health_timeout: Option<Duration>,
    /// Failures in a row before a task is unhealthy.
    #[arg(long, value_name = "N")]
    pub health_retries: Option<u32>,
    /// Time after start during which failed checks do not count.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub health_start_period: Option<Duration>,
}

/// What an update does when too many new tasks fail, as flags spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailureActionFlag {
    /// Stop replacing tasks; the update stays paused until the next one.
    Pause,
    /// Go on replacing tasks.
    Continue,
    /// Go back to the previous spec.
    Rollback,
}

/// What a rollback does when too many of its new tasks fail (a rollback cannot roll back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RollbackFailureActionFlag {
    /// Stop replacing tasks.
    Pause,
    /// Go on replacing tasks.
    Continue,
}

/// Update orders as flags spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UpdateOrderFlag {
    /// Stop the old task, then start the new one.
    StopFirst,
    /// Start the new task, and stop the old one once the new one runs and is healthy.
    StartFirst,
}

/// The update and rollback policy flags of `service create` and `service update`
/// (`spec.updateConfig`, `spec.rollbackConfig`), with Docker's names.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct UpdatePolicyFlags {
    /// Tasks replaced at once during an update (default 1; 0 = all at once).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub update_parallelism: Option<u64>,
    /// Wait between update batches (e.g. 10s; default 0s; at most 1h).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub update_delay: Option<Duration>,
    /// When too many new tasks fail: pause (default), continue or rollback.
    #[arg(long, value_enum, value_name = "ACTION")]
    pub update_failure_action: Option<FailureActionFlag>,
    /// How long each new task is watched for failure (default 5s; at most 1h).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub update_monitor: Option<Duration>,
    /// Failed ÷ updated tasks tolerated before the failure action runs (0 to 1; default 0).
    #[arg(long, value_name = "FRACTION", allow_negative_numbers = true)]
    pub update_max_failure_ratio: Option<f64>,
    /// stop-first (default) or start-first.
    #[arg(long, value_enum, value_name = "ORDER")]
    pub update_order: Option<UpdateOrderFlag>,
    /// Tasks replaced at once during a rollback (default 1; 0 = all at once).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub rollback_parallelism: Option<u64>,
    /// Wait between rollback batches (default 0s; at most 1h).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub rollback_delay: Option<Duration>,
    /// When too many of a rollback's new tasks fail: pause (default) or continue.
    #[arg(long, value_enum, value_name = "ACTION")]
    pub rollback_failure_action: Option<RollbackFailureActionFlag>,
    /// How long each task of a rollback is watched for failure (default 5s; at most 1h).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub rollback_monitor: Option<Duration>,
    /// Failed ÷ replaced tasks a rollback tolerates (0 to 1; default 0).
    #[arg(long, value_name = "FRACTION", allow_negative_numbers = true)]
    pub rollback_max_failure_ratio: Option<f64>,
    /// stop-first (default) or start-first, for rollbacks.
    #[arg(long, value_enum, value_name = "ORDER")]
    pub rollback_order: Option<UpdateOrderFlag>,
}

/// The `--secret`, `--config`, `--mount`, `--container-label` and
/// `--replicas-max-per-node` flags of `service create` (`service update` has their
/// `-add`/`-rm` forms in [`FileUpdateFlags`]; both parse values with the same functions).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FileFlags {
    /// Give tasks a secret as /run/secrets/TARGET: NAME, or
    /// source=NAME[,target=FILE][,uid=N][,gid=N][,mode=0400]; may be repeated.
    #[arg(long = "secret", value_name = "SECRET")]
    pub secrets: Vec<String>,
    /// Give tasks a config file: NAME (at /NAME), or
    /// source=NAME[,target=/PATH][,uid=N][,gid=N][,mode=0444]; may be repeated.
    #[arg(long = "config", value_name = "CONFIG")]
    pub configs: Vec<String>,
    /// Mount a filesystem: type=volume|bind|tmpfs,source=SRC,target=/PATH[,readonly]
    /// [,tmpfs-size=64m] (src/dst work too); may be repeated.
    #[arg(long = "mount", value_name = "MOUNT")]
    pub mounts: Vec<String>,
    /// A label on the tasks' containers (key=value); may be repeated.
    #[arg(long = "container-label", value_name = "KEY=VALUE")]
    pub container_labels: Vec<String>,
    /// At most N tasks of the service on one node (0: no limit).
    #[arg(long, value_name = "N")]
    pub replicas_max_per_node: Option<u64>,
}

/// The `service update` forms of [`FileFlags`]. Removals apply before additions.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FileUpdateFlags {
    /// Add a secret (as `service create --secret`); may be repeated.
    #[arg(long = "secret-add", value_name = "SECRET")]
    pub secret_add: Vec<String>,
    /// Remove a secret by name; may be repeated.
    #[arg(long = "secret-rm", value_name = "NAME")]
    pub secret_rm: Vec<String>,
    /// Add a config (as `service create --config`); may be repeated.
    #[arg(long = "config-add", value_name = "CONFIG")]
    pub config_add: Vec<String>,
    /// Remove a config by name; may be repeated.
    #[arg(long = "config-rm", value_name = "NAME")]
    pub config_rm: Vec<String>,
    /// Add a mount (as `service create --mount`); replaces a mount at the same target.
    #[arg(long = "mount-add", value_name = "MOUNT")]
    pub mount_add: Vec<String>,
    /// Remove the mount at a container path; may be repeated.
    #[arg(long = "mount-rm", value_name = "TARGET")]
    pub mount_rm: Vec<String>,
    /// Add or change a container label (key=value); may be repeated.
    #[arg(long = "container-label-add", value_name = "KEY=VALUE")]
    pub container_label_add: Vec<String>,
    /// Remove a container label; may be repeated.
    #[arg(long = "container-label-rm", value_name = "KEY")]
    pub container_label_rm: Vec<String>,
    /// At most N tasks of the service on one node (0: no limit).
    #[arg(long, value_name = "N")]
    pub replicas_max_per_node: Option<u64>,
}

/// `shoal service create`.
///
/// As in Docker, the words after IMAGE replace the image's CMD (they become `spec.args`);
/// `--entrypoint` replaces its ENTRYPOINT (`spec.command`). Flags for `shoal` itself go
/// before IMAGE: everything after it belongs to the command.
#[derive(Debug, Args)]
pub struct ServiceCreateArgs {
    /// The service's name (a DNS label).
    #[arg(long)]
    pub name: String,
    /// replicated (default) or global.
    #[arg(long, value_enum)]
    pub mode: Option<ModeFlag>,
    /// Number of tasks (replicated mode; default 1).
    #[arg(long, allow_negative_numbers = true)]
    pub replicas: Option<i64>,
    /// A network to attach to: NAME or name=NAME,alias=ALIAS...; may be repeated.
    #[arg(long = "network", value_name = "NETWORK")]
    pub networks: Vec<String>,
    /// Publish a port: PUBLISHED:TARGET[/udp] or
    /// published=P,target=T[,protocol=tcp|udp][,mode=ingress|host]; may be repeated.
    #[arg(short = 'p', long = "publish", value_name = "PORT")]
    pub publish: Vec<String>,
    /// vip (default) or dnsrr.
    #[arg(long, value_enum)]
    pub endpoint_mode: Option<EndpointModeFlag>,
    /// A placement constraint (node.labels.K==V, node.name!=N); may be repeated.
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraints: Vec<String>,
    /// An environment variable (K=V, or K to copy it from here); may be repeated.
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// A service label (key=value); may be repeated.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Restart, stop and health-check flags (shared with `service update`).
    #[command(flatten)]
    pub lifecycle: LifecycleFlags,
    /// Update and rollback policy flags (shared with `service update`).
    #[command(flatten)]
    pub policy: UpdatePolicyFlags,
    /// Secrets, configs, mounts, container labels and the per-node limit.
    #[command(flatten)]
    pub files: FileFlags,
    /// Replace the image's ENTRYPOINT (split on spaces).
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// Run as this user: NAME, UID, UID:GID or NAME:GROUP (names from the image's
    /// /etc/passwd and /etc/group).
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Working directory inside the container (absolute).
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Add a Linux capability (NET_ADMIN, CAP_SYS_TIME, ALL); may be repeated.
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability (NET_RAW, ALL); may be repeated.
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Security option: seccomp=unconfined (no seccomp filter) or seccomp=default.
    #[arg(long = "security-opt", value_name = "OPT")]
    pub security_opts: Vec<String>,
    /// Limit CPUs (e.g. 0.5, 2).
    #[arg(long, value_name = "CPUS")]
    pub limit_cpu: Option<String>,
    /// Limit memory (e.g. 64M, 1.5G); the task is OOM-killed above it.
    #[arg(long, value_name = "BYTES")]
    pub limit_memory: Option<String>,
    /// Limit the number of processes and threads (default 1024).
    #[arg(long, value_name = "N")]
    pub limit_pids: Option<u32>,
    /// Reserve CPUs: tasks go only to nodes with that much unreserved.
    #[arg(long, value_name = "CPUS")]
    pub reserve_cpu: Option<String>,
    /// Reserve memory: tasks go only to nodes with that much unreserved.
    #[arg(long, value_name = "BYTES")]
    pub reserve_memory: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub wait: WaitArgs,
    /// The image.
    pub image: String,
    /// Command and arguments: replace the image's CMD (spec.args), as in Docker. Everything
    /// after IMAGE belongs here, flags included.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARG"
    )]
    pub args: Vec<String>,
}

/// `shoal service update`.
///
/// Removals (`--*-rm`) apply before additions (`--*-add`), as in Docker, so
/// `--env-rm A --env-add A=2` replaces. Removing something the service does not have is an
/// error and nothing is written. With nothing to change, prints `no change`.
///
/// It waits as the update goes (`status.updateStatus`) and fails, with the reason, when the
/// update pauses or is rolled back after failures.
#[derive(Debug, Args)]
pub struct ServiceUpdateArgs {
    /// Go back to the previous spec instead (as `service rollback`); no change flag may be
    /// given with it.
    #[arg(long)]
    pub rollback: bool,
    /// The new image.
    #[arg(long)]
    pub image: Option<String>,
    /// Replace every task (one at a time) even if nothing else changes.
    #[arg(long)]
    pub force: bool,
    /// Replace the command's arguments (spec.args), split as a shell would split them
    /// (whitespace, with '...' and "..." quoting and \ escapes); "" clears them.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub args: Option<String>,
    /// Replace the image's ENTRYPOINT (split as --args is); "" restores the image's.
    #[arg(long, value_name = "CMD", allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// Number of tasks (replicated mode).
    #[arg(long, allow_negative_numbers = true)]
    pub replicas: Option<i64>,
    /// Add or change an environment variable (K=V, or K to copy it from here); may be
    /// repeated.
    #[arg(long = "env-add", value_name = "K=V")]
    pub env_add: Vec<String>,
    /// Remove an environment variable; may be repeated.
    #[arg(long = "env-rm", value_name = "K")]
    pub env_rm: Vec<String>,
    /// Add or change a service label (key=value); may be repeated.
    #[arg(long = "label-add", value_name = "KEY=VALUE")]
    pub label_add: Vec<String>,
    /// Remove a service label; may be repeated.
    #[arg(long = "label-rm", value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// Publish a port (as `service create --publish`); replaces a port with the same
    /// published port and protocol; may be repeated.
    #[arg(long = "publish-add", value_name = "PORT")]
    pub publish_add: Vec<String>,
    /// Stop publishing a port: PUBLISHED[/tcp|udp] (tcp if not given); may be repeated.
    #[arg(long = "publish-rm", value_name = "PORT")]
    pub publish_rm: Vec<String>,
    /// Attach to a network (NAME or name=NAME,alias=ALIAS...); replaces the aliases of a
    /// network already attached; may be repeated.
    #[arg(long = "network-add", value_name = "NETWORK")]
    pub network_add: Vec<String>,
    /// Detach from a network; may be repeated.
    #[arg(long = "network-rm", value_name = "NAME")]
    pub network_rm: Vec<String>,
    /// Add a placement constraint (node.labels.K==V, node.name!=N); may be repeated.
    #[arg(long = "constraint-add", value_name = "EXPR")]
    pub constraint_add: Vec<String>,
    /// Remove a placement constraint (as written when added); may be repeated.
    #[arg(long = "constraint-rm", value_name = "EXPR")]
    pub constraint_rm: Vec<String>,
    /// Restart, stop and health-check flags (as `service create`; --health-cmd replaces the
    /// current check, the tuning flags change it).
    #[command(flatten)]
    pub lifecycle: LifecycleFlags,
    /// Update and rollback policy flags (as `service create`).
    #[command(flatten)]
    pub policy: UpdatePolicyFlags,
    /// Secret, config, mount and container-label changes; the per-node limit.
    #[command(flatten)]
    pub files: FileUpdateFlags,
    /// Remove the health check.
    #[arg(long, conflicts_with_all = ["health_cmd", "health_interval", "health_timeout", "health_retries", "health_start_period"])]
    pub no_healthcheck: bool,
    /// Run as this user (NAME, UID, UID:GID, NAME:GROUP); "" restores the image's.
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Working directory inside the container (absolute); "" restores the image's.
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Mount the root filesystem read-only; `--read-only=false` makes it writable again.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub read_only: Option<bool>,
    /// Add a Linux capability (NET_ADMIN, CAP_SYS_TIME, ALL); may be repeated.
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability (NET_RAW, ALL); may be repeated.
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Security option: seccomp=unconfined (no seccomp filter) or seccomp=default.
    #[arg(long = "security-opt", value_name = "OPT")]
    pub security_opts: Vec<String>,
    /// Limit CPUs (e.g. 0.5, 2); 0 removes the limit.
    #[arg(long, value_name = "CPUS")]
    pub limit_cpu: Option<String>,
    /// Limit memory (e.g. 64M, 1.5G); 0 removes the limit.
    #[arg(long, value_name = "BYTES")]
    pub limit_memory: Option<String>,
    /// Limit the number of processes and threads; 0 restores the default (1024).
    #[arg(long, value_name = "N")]
    pub limit_pids: Option<u32>,
    /// Reserve CPUs; 0 removes the reservation.
    #[arg(long, value_name = "CPUS")]
    pub reserve_cpu: Option<String>,
    /// Reserve memory; 0 removes the reservation.
    #[arg(long, value_name = "BYTES")]
    pub reserve_memory: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub wait: WaitArgs,
    /// The service.
    pub name: String,
}

/// `shoal service rollback`.
#[derive(Debug, Args)]
pub struct ServiceRollbackArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub wait: WaitArgs,
    /// The service.
    pub name: String,
}

/// `shoal service ps`.
#[derive(Debug, Args)]
pub struct ServicePsArgs {
    /// The service.
    pub name: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
    /// Print full task ids.
    #[arg(long)]
    pub no_trunc: bool,
}

/// `shoal service scale`.
#[derive(Debug, Args)]
pub struct ServiceScaleArgs {
    /// SERVICE=REPLICAS pairs.
    #[arg(required = true, value_name = "SERVICE=REPLICAS")]
    pub targets: Vec<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub wait: WaitArgs,
}

/// `shoal service logs`.
#[derive(Debug, Args)]
pub struct ServiceLogsArgs {
    /// The service.
    pub name: String,
    /// Follow the output (tasks that start later join in) until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines of each task's output so far.
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<u64>,
}

/// `shoal logs`.
#[derive(Debug, Args)]
pub struct TaskLogsArgs {
    /// The task: a name such as api.1 (or mon.node-2 for a global service) or a task id.
    pub task: String,
    /// Follow the output until the task ends or you interrupt.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines so far.
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<u64>,
}

/// `shoal exec`.
///
/// `shoal exec worker.1 -- wget -qO- http://10.0.1.5/`: everything after the task (or
/// after `--`) is the command; it runs without a shell (use `sh -c '...'` for one).
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Kill the command after this long (e.g. 30s, 5m; at most 1h). Default: 60s.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// The task: a name such as api.1 (or mon.node-2 for a global service) or a task id.
    pub task: String,
    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// `shoal stack ...`.
#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// Create or update a stack from compose files and wait until its services run.
    #[command(visible_alias = "up")]
    Deploy(StackDeployArgs),
    /// List stacks.
    #[command(visible_alias = "list")]
    Ls(ListArgs),
    /// List the services of a stack.
    Services(StackServicesArgs),
    /// List the tasks of a stack.
    Ps(StackPsArgs),
    /// Remove stacks: every service, network, secret and config labelled with them; then
    /// wait until their tasks have stopped.
    #[command(visible_aliases = ["remove", "down"])]
    Rm(StackRmArgs),
}

/// `shoal stack rm`.
#[derive(Debug, Args)]
pub struct StackRmArgs {
    /// The stacks.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Return at once instead of waiting for the stacks' tasks to stop.
    #[arg(short, long)]
    pub detach: bool,
    /// How long to wait for the tasks to stop (e.g. 60s, 2m).
    #[arg(long, default_value = "120s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

/// `shoal stack deploy`.
#[derive(Debug, Args)]
pub struct StackDeployArgs {
    /// A compose file; repeat to merge several (later files override, as in compose).
    /// Variables come from the environment, then from `.env` next to the first file.
    #[arg(
        short = 'c',
        long = "compose-file",
        required = true,
        value_name = "FILE"
    )]
    pub compose_files: Vec<std::path::PathBuf>,
    /// Also remove the stack's services, networks, secrets and configs that the files no
    /// longer define.
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub wait: WaitArgs,
    /// The stack's name (objects are named NAME_<key>).
    pub name: String,
}

/// `shoal stack services`.
#[derive(Debug, Args)]
pub struct StackServicesArgs {
    /// The stack.
    pub name: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub list: ListArgs,
}

/// `shoal stack ps`.
#[derive(Debug, Args)]
pub struct StackPsArgs {
    /// The stack.
    pub name: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
    /// Print full task ids.
    #[arg(long)]
    pub no_trunc: bool,
}

/// `shoal secret ...` and `shoal config ...`.
#[derive(Debug, Subcommand)]
pub enum PayloadCommand {
    /// Create one from a file, or - for stdin.
    Create(PayloadCreateArgs),
    /// List them (the data is never shown).
    #[command(visible_alias = "list")]
    Ls(ListArgs),
    /// Show them in detail (metadata, size and fingerprint; never the data).
    Inspect(InspectArgs),
    /// Remove them (refused while a service uses one).
    #[command(visible_alias = "remove")]
    Rm(NamesArgs),
}

/// `shoal secret create` and `shoal config create`.
#[derive(Debug, Args)]
pub struct PayloadCreateArgs {
    /// A label (key=value); may be repeated.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// The name.
    pub name: String,
    /// The file holding the data, or - to read it from stdin.
    #[arg(value_name = "FILE|-")]
    pub file: String,
}

/// `shoal system ...`.
#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Audit the cluster: etcd (address claims, slots, Endpoints) and every ready node
    /// (containers, task namespaces, veths, FDB and neighbour entries, nft VIP and mesh
    /// elements, DNS records) against what etcd says; prints each drift and exits 1 when
    /// there is any.
    Check(SystemCheckArgs),
}

/// `shoal system check`.
#[derive(Debug, Args)]
pub struct SystemCheckArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `shoal volume ...`.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// List named volumes on every ready node (or one).
    #[command(visible_alias = "list")]
    Ls(VolumeLsArgs),
    /// Remove named volumes from a node (refused while a task uses one).
    #[command(visible_alias = "remove")]
    Rm(VolumeRmArgs),
}

/// `shoal volume ls`.
#[derive(Debug, Args)]
pub struct VolumeLsArgs {
    /// Only this node's volumes.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub list: ListArgs,
}

/// `shoal volume rm`.
#[derive(Debug, Args)]
pub struct VolumeRmArgs {
    /// The node the volumes are on (a volume is local to its node).
    #[arg(long, required = true, value_name = "NODE")]
    pub node: String,
    /// Names.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// `shoal node ...`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    #[command(visible_alias = "list")]
    Ls(ListArgs),
    /// Show nodes in detail.
    Inspect(InspectArgs),
    /// Change a node's labels or availability.
    Update(NodeUpdateArgs),
    /// Remove nodes and revoke their certificates (stop the agent first, or --force).
    #[command(visible_alias = "remove")]
    Rm(NodeRmArgs),
}

/// `shoal node rm`.
#[derive(Debug, Args)]
pub struct NodeRmArgs {
    /// Remove the node even if it is ready (its agent still runs).
    #[arg(short, long)]
    pub force: bool,
    /// Names.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// `shoal token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (it is shown only this once).
    Create(TokenCreateArgs),
    /// List tokens (never the tokens themselves).
    #[command(visible_alias = "list")]
    Ls(ListArgs),
    /// Revoke tokens.
    #[command(visible_alias = "remove")]
    Rm(NamesArgs),
}

/// Roles as flags spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleFlag {
    /// Everything.
    Admin,
    /// Read objects, lists and watches; no changes, exec or logs.
    ReadOnly,
}

impl From<RoleFlag> for shoal_api_types::Role {
    fn from(r: RoleFlag) -> Self {
        match r {
            RoleFlag::Admin => shoal_api_types::Role::Admin,
            RoleFlag::ReadOnly => shoal_api_types::Role::ReadOnly,
        }
    }
}

/// `shoal token create`.
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// admin or read-only.
    #[arg(long, value_enum)]
    pub role: RoleFlag,
    /// Output format: the token alone (table), or the whole answer as JSON or YAML.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
    /// The token's name (a DNS label).
    pub name: String,
}

/// `shoal join-token`.
#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    /// Make a new join secret first: the old token stops working for new nodes (joined
    /// nodes are unaffected).
    #[arg(long)]
    pub rotate: bool,
    /// Only print the token.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Node availability as flags spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AvailabilityFlag {
    /// Takes new tasks.
    Active,
    /// Takes no new tasks.
    Pause,
    /// Runs no tasks.
    Drain,
}

/// `shoal node update`.
#[derive(Debug, Args)]
pub struct NodeUpdateArgs {
    /// Add or change a label (key=value); may be repeated.
    #[arg(long = "label-add", value_name = "KEY=VALUE")]
    pub label_add: Vec<String>,
    /// Remove a label; may be repeated.
    #[arg(long = "label-rm", value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// active, pause or drain.
    #[arg(long, value_enum)]
    pub availability: Option<AvailabilityFlag>,
    /// The node.
    pub name: String,
}

/// The kind argument of `get`, `delete` and `watch`, split from an optional `/name`.
pub fn parse_kind_ref(s: &str) -> Result<(Kind, Option<String>), String> {
    match s.split_once('/') {
        Some((kind, name)) if !name.is_empty() => Ok((kind.parse()?, Some(name.to_string()))),
        Some((kind, _)) => Ok((kind.parse()?, None)),
        None => Ok((s.parse()?, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses_service_create_with_trailing_command() {
        let cli = Cli::try_parse_from([
            "shoal",
            "service",
            "create",
            "--name",
            "api",
            "-p",
            "8080:80",
            "--replicas",
            "3",
            "busybox",
            "sleep",
            "-n",
            "1000",
        ])
        .unwrap();
        match cli.command {
            Command::Service(ServiceCommand::Create(a)) => {
                assert_eq!(a.image, "busybox");
                assert_eq!(a.args, vec!["sleep", "-n", "1000"]);
                assert_eq!(a.replicas, Some(3));
                assert_eq!(a.wait.timeout, Duration::from_secs(120));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exec_takes_the_command_after_the_task_with_or_without_dashes() {
        for argv in [
            &["shoal", "exec", "worker.1", "--", "sh", "-c", "exit 3"][..],
            &["shoal", "exec", "worker.1", "sh", "-c", "exit 3"][..],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            match cli.command {
                Command::Exec(a) => {
                    assert_eq!(a.task, "worker.1");
                    assert_eq!(a.command, vec!["sh", "-c", "exit 3"]);
                }
                other => panic!("{other:?}"),
            }
        }
        let cli = Cli::try_parse_from([
            "shoal",
            "exec",
            "--timeout",
            "5s",
            "api.2",
            "--",
            "ls",
            "--",
            "-x",
        ])
        .unwrap();
        match cli.command {
            Command::Exec(a) => {
                assert_eq!(a.timeout, Some(Duration::from_secs(5)));
                assert_eq!(a.command, vec!["ls", "--", "-x"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["shoal", "exec", "worker.1"]).is_err());
    }

    #[test]
    fn cli_takes_server_flag_anywhere() {
        let cli =
            Cli::try_parse_from(["shoal", "network", "ls", "--server", "http://x:1"]).unwrap();
        assert_eq!(cli.server.as_deref(), Some("http://x:1"));
    }

    #[test]
    fn token_commands_parse_roles_and_global_credentials() {
        let cli = Cli::try_parse_from([
            "shoal",
            "token",
            "create",
            "--role",
            "read-only",
            "ci",
            "--token",
            "shoal_x",
            "--ca",
            "/tmp/ca.crt",
        ])
        .unwrap();
        assert_eq!(cli.token.as_deref(), Some("shoal_x"));
        assert_eq!(cli.ca.as_deref(), Some(std::path::Path::new("/tmp/ca.crt")));
        match cli.command {
            Command::Token(TokenCommand::Create(a)) => {
                assert_eq!(a.role, RoleFlag::ReadOnly);
                assert_eq!(a.name, "ci");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["shoal", "token", "create", "ci"]).is_err(),
            "--role is required"
        );
        assert!(Cli::try_parse_from(["shoal", "token", "create", "--role", "root", "ci"]).is_err());
        let cli = Cli::try_parse_from(["shoal", "node", "rm", "--force", "n1", "n2"]).unwrap();
        match cli.command {
            Command::Node(NodeCommand::Rm(a)) => {
                assert!(a.force);
                assert_eq!(a.names, ["n1", "n2"]);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["shoal", "join-token", "--rotate", "-q"]).unwrap();
        match cli.command {
            Command::JoinToken(a) => assert!(a.rotate && a.quiet),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn kind_refs_split_on_slash() {
        assert_eq!(
            parse_kind_ref("svc/api").unwrap(),
            (Kind::Service, Some("api".into()))
        );
        assert_eq!(parse_kind_ref("nets").unwrap(), (Kind::Network, None));
        assert!(parse_kind_ref("gadget/x").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
