//! `shoal-agent`: the node agent binary. Parses flags and runs the library's agent (or a
//! fleet of hollow agents) until SIGTERM or Ctrl-C, or joins the cluster (`join`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use shoal_api_types::resources::{Cpus, Memory, NodeCapacity};
use shoal_api_types::settings::ReservedPort;
use shoal_node_agent::agent::{
    self, capacity, AgentConfig, ContainerTasks, NodeCheck, NodeNetwork, TaskRuntime,
};
use shoal_node_agent::hollow::{FleetConfig, HollowFleet, HollowRuntime, HOLLOW_CAPACITY};
use shoal_node_agent::identity::{
    self, ControllerClient, IdentityError, JoinRequest, PkiDir, Security, DEFAULT_PKI_DIR,
};
use shoal_node_agent::runtime::{ContainerRuntime, ContainerdConfig, ContainerdRuntime};
use shoal_node_agent::server::{AgentServer, ServerConfig};
use shoal_node_agent::taskfiles::{KernelFiles, TaskFiles, TaskFilesConfig};
use shoal_store::{Connect, Store};

/// mimalloc instead of glibc's malloc (see the workspace Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Shoal's node agent: registers this node and runs the tasks the controller assigns to it.
#[derive(Debug, Parser)]
#[command(
    name = "shoal-agent",
    version,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The node's name (a DNS-1123 label); with --pki-dir, the identity's unless given
    /// (and then it must be the same).
    #[arg(long, env = "SHOAL_NODE_NAME")]
    name: Option<String>,
    /// The underlay address other nodes reach this one at (the VXLAN endpoint).
    #[arg(long, required = true, env = "SHOAL_NODE_ADDRESS")]
    address: Option<String>,
    /// Where this agent serves `exec` (host:port), written to the Node's status.
    #[arg(long)]
    agent_endpoint: Option<String>,
    /// How tasks run: `containerd`, or `hollow` (a testing mode that starts no containers).
    #[arg(long, value_enum, default_value_t = RuntimeKind::Containerd)]
    runtime: RuntimeKind,
    #[command(flatten)]
    containerd: ContainerdArgs,
    #[command(flatten)]
    common: Common,
}

/// Settings of the containerd runtime (`--runtime containerd`).
#[derive(Debug, Args)]
struct ContainerdArgs {
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd_socket: PathBuf,
    /// The containerd namespace everything of Shoal's goes into.
    #[arg(long, default_value = "shoal")]
    containerd_namespace: String,
    /// containerd snapshotter (`native` where overlay mounts are not possible).
    #[arg(long, default_value = "overlayfs")]
    snapshotter: String,
    /// Where the agent keeps per-container files (logs, resolv.conf, hosts).
    #[arg(long, default_value = "/var/lib/shoal-agent")]
    state_dir: PathBuf,
    /// Where runc keeps container state (`<DIR>/<namespace>/<id>`; an absolute path, since
    /// the shim resolves it from its own directory); default: runc's own,
    /// /run/containerd/runc.
    #[arg(long, value_name = "DIR", value_parser = absolute_path)]
    runc_root: Option<PathBuf>,
    /// A registry (`host:port`) to pull from over plain HTTP, besides localhost:5000;
    /// repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
    /// The network namespace (under /run/netns) the node's links live in: overlays, the
    /// gateway bridge, task veths (a local-cluster node); default: the agent's own. Task
    /// namespaces are /run/netns/shoal-<name>-<task> either way.
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// The most one image pull may take in all (e.g. 5m, 90s); a task whose pull passes it
    /// fails with that reason.
    #[arg(long, default_value = "5m", value_parser = shoal_api_types::duration::parse_duration, value_name = "DURATION")]
    pull_timeout: Duration,
    /// Where to serve exec and logs to the API server (host:port); also published as the
    /// Node's agent endpoint unless --agent-endpoint says otherwise.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Rotate a container's log when it reaches this size (e.g. 10MiB, 512k).
    #[arg(long, value_name = "SIZE", default_value = "10MiB", value_parser = parse_size)]
    log_max_size: u64,
    /// Allow bind mounts (`spec.mounts[].type: bind`) of host paths below PREFIX (symlinks
    /// resolved); repeatable. Default: none, so every bind mount is refused.
    #[arg(long = "allow-bind", value_name = "PREFIX")]
    allow_bind: Vec<PathBuf>,
    /// Log files kept per container, the current one included.
    #[arg(long, value_name = "N", default_value_t = shoal_node_agent::runtime::logs::DEFAULT_MAX_FILES,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    log_max_files: u32,
}

/// A path that must be absolute and valid UTF-8 (it is sent to containerd as a string).
fn absolute_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if !p.is_absolute() {
        return Err(format!("{s:?} is not an absolute path"));
    }
    Ok(p)
}

/// A size as `--log-max-size` takes it: bytes or a binary unit (`10MiB`, `512k`).
fn parse_size(s: &str) -> Result<u64, String> {
    let m: shoal_api_types::Memory = s.parse()?;
    if m.bytes() < 1024 {
        return Err(format!("{s:?} is less than 1KiB"));
    }
    Ok(m.bytes())
}

/// The TCP port of a `host:port` listen address: the mesh never publishes it.
fn listen_port(listen: &str) -> Option<ReservedPort> {
    let port = listen.rsplit_once(':')?.1.parse::<u16>().ok()?;
    (port != 0).then_some(ReservedPort::tcp(port))
}

impl ContainerdArgs {
    async fn runtime(
        &self,
        node: &str,
        address: &str,
        controller: Option<Arc<ControllerClient>>,
    ) -> anyhow::Result<(
        Arc<dyn TaskRuntime>,
        Arc<dyn ContainerRuntime>,
        Arc<TaskFiles>,
        Arc<NodeCheck>,
    )> {
        let home = self.netns.as_ref().map(|n| Path::new("/run/netns").join(n));
        let mut config = ContainerdConfig::new(&self.containerd_socket, &self.state_dir);
        let task_cgroup = shoal_node_agent::lb::socket::cgroup_dir(&config.cgroup_parent);
        let network = NodeNetwork::kernel(
            node,
            address,
            home,
            Path::new("/etc/resolv.conf"),
            task_cgroup.as_deref(),
        )
        .await
        .context("cannot set up task networking")?
        .with_reserved_ports(self.listen.as_deref().and_then(listen_port));
        config.namespace = self.containerd_namespace.clone();
        config.snapshotter = self.snapshotter.clone();
        config.log_rotation = shoal_node_agent::runtime::logs::LogRotation {
            max_size: self.log_max_size,
            max_files: self.log_max_files,
        };
        config.pull_timeout = self.pull_timeout;
        config.runc_root = self.runc_root.clone();
        config
            .plain_http_registries
            .extend(self.insecure_registries.iter().cloned());
        // containerd may still be starting (started together with the agent): wait a while.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let runtime = loop {
            match ContainerdRuntime::connect(config.clone()).await {
                Ok(r) => break r,
                Err(e) if e.is_temporary() && tokio::time::Instant::now() < deadline => {
                    tracing::info!(error = %e, "waiting for containerd");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot use containerd at {}",
                            self.containerd_socket.display()
                        )
                    })
                }
            }
        };
        let runtime: Arc<dyn ContainerRuntime> = Arc::new(runtime);
        let mut files = TaskFilesConfig::new(&self.state_dir);
        files.allow_bind = self.allow_bind.clone();
        let mut files = TaskFiles::new(files, Arc::new(KernelFiles));
        if let Some(controller) = controller {
            files = files.with_source(controller);
        }
        let files = Arc::new(files);
        let network = Arc::new(network);
        let check = Arc::new(NodeCheck::new(node, network.clone(), runtime.clone()));
        Ok((
            Arc::new(
                ContainerTasks::new(runtime.clone(), node)
                    .with_network(network)
                    .with_files(files.clone()),
            ),
            runtime,
            files,
            check,
        ))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Joins the cluster: pins the controller's CA by the join token's digest, then trades
    /// the token for a node certificate, and writes the node's identity into --pki-dir.
    Join(JoinArgs),
    /// Runs many hollow agents (testing mode, no containers) in this process, sharing one
    /// etcd connection: for scale tests and benchmarks.
    HollowFleet(FleetArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RuntimeKind {
    /// Real containers through containerd.
    Containerd,
    /// Testing mode: tasks "run" at once without containers (like kubemark's hollow nodes).
    Hollow,
}

#[derive(Debug, Args)]
struct JoinArgs {
    /// The join token (`shoal join-token` prints it): SWMTKN-1-<ca digest>-<secret>.
    #[arg(long, env = "SHOAL_JOIN_TOKEN", hide_env_values = true)]
    token: String,
    /// The controller's URL.
    #[arg(long, value_name = "https://HOST:7777")]
    controller: String,
    /// The node's name (a DNS-1123 label): its certificate's CN and etcd user.
    #[arg(long, env = "SHOAL_NODE_NAME")]
    name: String,
    /// The node's underlay address (its certificate's IP SAN).
    #[arg(long, env = "SHOAL_NODE_ADDRESS")]
    address: String,
    /// Where to write the identity (ca.crt, node.crt, node.key, join.json).
    #[arg(long, default_value = DEFAULT_PKI_DIR)]
    pki_dir: PathBuf,
}

#[derive(Debug, Args)]
struct Common {
    /// The node's identity (`shoal-agent join` writes it; a hollow fleet's: ca.crt and
    /// fleet.crt/fleet.key): etcd over TLS with that certificate, exec/logs over mutual
    /// TLS, renewal. Required unless --insecure.
    #[arg(long, value_name = "DIR", conflicts_with = "insecure")]
    pki_dir: Option<PathBuf>,
    /// No identity: plaintext etcd without authentication and plain-HTTP exec/logs
    /// (benchmarks' baseline, old tests).
    #[arg(long)]
    insecure: bool,
    /// The controller(s) to fetch tasks' secrets and configs from, comma-separated or
    /// repeated; default: the one the node joined through (join.json). An --insecure agent
    /// without it cannot run tasks with secrets or configs.
    #[arg(long = "controller", value_delimiter = ',', value_name = "URL")]
    controllers: Vec<String>,
    /// etcd endpoints, comma-separated; default: those the controller gave at join
    /// (join.json), or http://127.0.0.1:2379 with --insecure.
    #[arg(long, env = "SHOAL_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// The root of Shoal's keys in etcd.
    #[arg(long, env = "SHOAL_ETCD_ROOT", default_value = shoal_api_types::keys::DEFAULT_ROOT)]
    etcd_root: String,
    /// How long the node lease lives without renewal (whole seconds; etcd grants at least
    /// 2 s): the node goes down, and its tasks are replaced elsewhere, this long after its
    /// agent dies. The agent renews it every quarter of that over a connection of its own.
    #[arg(long, alias = "lease-ttl", default_value = "2s", value_parser = parse_ttl, value_name = "DURATION")]
    node_ttl: Duration,
    /// Seconds between converges when nothing changed.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    resync: u64,
    /// Revoke the lease on exit so the node goes down at once (tests).
    #[arg(long)]
    revoke_lease_on_exit: bool,
    /// How long a running task that is wanted stopped keeps running before it is signalled,
    /// while every node's load balancer moves away from it (0 to stop at once).
    #[arg(long, default_value = "3s", value_parser = shoal_api_types::duration::parse_duration, value_name = "DURATION")]
    drain_delay: Duration,
    /// CPUs the node offers the scheduler (`4`, `0.5`, `500m`); default: what the agent
    /// may use (available parallelism, its cgroup's cpu.max), or 64 for hollow nodes.
    #[arg(long, value_name = "CPUS")]
    capacity_cpus: Option<Cpus>,
    /// Memory the node offers the scheduler (`8Gi`, `512M`); default: MemTotal, or the
    /// agent's cgroup memory limit if lower, or 256Gi for hollow nodes.
    #[arg(long, value_name = "SIZE")]
    capacity_memory: Option<Memory>,
}

#[derive(Debug, Args)]
struct FleetArgs {
    /// How many hollow agents.
    #[arg(long)]
    count: usize,
    /// Node names are `<prefix><index>`.
    #[arg(long, default_value = "hollow-")]
    name_prefix: String,
    /// The index of the first node.
    #[arg(long, default_value_t = 1)]
    first_index: usize,
    /// The first node's address; the others count up from it.
    #[arg(long, default_value = "198.19.0.1")]
    first_address: Ipv4Addr,
    #[command(flatten)]
    common: Common,
}

impl Common {
    fn connect(&self) -> Connect {
        Connect {
            endpoints: self.etcd.clone(),
            root: Some(self.etcd_root.clone()),
            ..Default::default()
        }
    }

    /// The capacity to report: the flags, over what is detected (or a hollow node's).
    fn capacity(&self, hollow: bool) -> Option<NodeCapacity> {
        if hollow {
            Some(NodeCapacity {
                cpus: self.capacity_cpus.unwrap_or(HOLLOW_CAPACITY.cpus),
                memory: self.capacity_memory.unwrap_or(HOLLOW_CAPACITY.memory),
            })
        } else {
            capacity::detect(self.capacity_cpus, self.capacity_memory)
        }
    }

    fn agent_config(&self, name: String, address: String) -> AgentConfig {
        AgentConfig {
            lease_ttl: self.node_ttl,
            resync: Duration::from_secs(self.resync.max(1)),
            revoke_lease_on_exit: self.revoke_lease_on_exit,
            drain_delay: self.drain_delay,
            ..AgentConfig::new(name, address)
        }
    }
}

/// `shoal-agent join`.
async fn join(args: JoinArgs) -> anyhow::Result<()> {
    let token = args.token.parse().map_err(IdentityError::InvalidToken)?;
    let dir = PkiDir::new(&args.pki_dir);
    let request = JoinRequest {
        token,
        controller: args.controller,
        name: args.name,
        address: args.address,
    };
    let joined = identity::join(&request, &dir).await?;
    println!(
        "node {} joined the cluster; its identity is in {}.\nStart the agent with: \
         shoal-agent --pki-dir {} --address {} …",
        joined.join.name,
        dir.path().display(),
        dir.path().display(),
        request.address
    );
    Ok(())
}

/// `--node-ttl`: a duration of whole seconds, at least 1 (a bare number is seconds).
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = shoal_api_types::duration::parse_duration(s)?;
    if d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
        return Err(format!(
            "{s:?}: etcd leases live whole seconds; give at least 1s (e.g. 2s)"
        ));
    }
    Ok(d)
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,hickory_server=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Join(args)) => join(args).await,
        Some(Command::HollowFleet(args)) => {
            let connect = identity::fleet_connect(
                args.common.pki_dir.as_deref(),
                args.common.insecure,
                &args.common.connect(),
            )?;
            let store = Store::connect(&connect)
                .await
                .with_context(|| format!("cannot reach etcd at {}", connect.endpoints.join(",")))?;
            let config = FleetConfig {
                count: args.count,
                name_prefix: args.name_prefix,
                first_index: args.first_index,
                first_address: args.first_address,
                agent: AgentConfig {
                    capacity: args.common.capacity(true),
                    ..args
                        .common
                        .agent_config("hollow".into(), args.first_address.to_string())
                },
            };
            let fleet = HollowFleet::spawn(&store, &config)?;
            tokio::select! {
                _ = fleet.registered() => tracing::info!(count = config.count, "all hollow nodes registered"),
                _ = shutdown_signal() => {
                    fleet.shutdown().await;
                    return Ok(());
                }
            }
            // The liveness margin, for benchmarks and operators: how close any node's
            // lease came to lapsing (the bench reads the last line).
            let ttl = config.agent.lease_ttl;
            let report = |fleet: &HollowFleet| {
                let r = fleet.renewals();
                tracing::info!(
                    "liveness: {} renewals, slowest answer {} ms, longest gap {} ms between a node's renewals (TTL {} ms)",
                    r.renewals,
                    r.slowest_answer.as_millis(),
                    r.longest_gap.as_millis(),
                    ttl.as_millis()
                );
            };
            let mut every = tokio::time::interval(Duration::from_secs(10));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => report(&fleet),
                    _ = shutdown_signal() => break,
                }
            }
            report(&fleet);
            tracing::info!("shutting down the hollow fleet");
            fleet.shutdown().await;
            Ok(())
        }
        None => {
            let security =
                Security::from_flags(cli.common.pki_dir.as_deref(), cli.common.insecure)?;
            let name = security.node_name(cli.name)?;
            let Some(address) = cli.address else {
                bail!("--address is required");
            };
            let controller = security.controller_client(&cli.common.controllers)?;
            let (runtime, containers, files, check): (Arc<dyn TaskRuntime>, _, _, _) =
                match cli.runtime {
                    RuntimeKind::Hollow => (Arc::new(HollowRuntime::new()), None, None, None),
                    RuntimeKind::Containerd => {
                        let (tasks, containers, files, check) = cli
                            .containerd
                            .runtime(&name, &address, controller.clone())
                            .await?;
                        (tasks, Some(containers), Some(files), Some(check))
                    }
                };
            let base = cli.common.connect();
            let connect = security.etcd_connect(&base);
            let store = Store::connect(&connect)
                .await
                .with_context(|| format!("cannot reach etcd at {}", connect.endpoints.join(",")))?;
            let transport = security.transport()?;
            let server = match &cli.containerd.listen {
                Some(listen) => {
                    let config = ServerConfig {
                        node: name.clone(),
                        listen: listen.clone(),
                    };
                    let mut server =
                        AgentServer::bind(&config, containers, transport.clone()).await?;
                    if let Some(files) = files {
                        server = server.with_volumes(files);
                    }
                    if let Some(check) = check {
                        server = server.with_check(check);
                    }
                    Some(server)
                }
                None => None,
            };
            let endpoint = server.as_ref().map(|s| s.endpoint(&address));
            let mut config = cli.common.agent_config(name, address);
            config.agent_endpoint = cli.agent_endpoint.or(endpoint);
            config.capacity = cli.common.capacity(cli.runtime == RuntimeKind::Hollow);
            match config.capacity {
                Some(c) => tracing::info!(cpus = %c.cpus, memory = %c.memory, "node capacity"),
                None => tracing::warn!("cannot tell the node's capacity; tasks that reserve resources will not be placed here (set --capacity-cpus and --capacity-memory)"),
            }
            let server = server.map(AgentServer::spawn);
            let renewal = security.renewer(&store, &base, &transport).map(|r| {
                match controller {
                    Some(client) => r.with_controller(client),
                    None => r,
                }
                .spawn()
            });
            agent::run(config, store, runtime, shutdown_signal()).await?;
            if let Some(renewal) = renewal {
                renewal.shutdown().await;
            }
            if let Some(server) = server {
                server.shutdown().await;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_listen_port_is_reserved() {
        assert_eq!(listen_port("127.0.0.1:7801"), Some(ReservedPort::tcp(7801)));
        assert_eq!(listen_port("[::1]:7800"), Some(ReservedPort::tcp(7800)));
        assert_eq!(listen_port("0.0.0.0:0"), None);
        assert_eq!(listen_port("nonsense"), None);
    }

    #[test]
    fn runc_root_should_be_an_absolute_path() {
        let base = ["shoal-agent", "--address", "198.18.0.1", "--insecure"];
        let with = |dir: &'static str| base.into_iter().chain(["--runc-root", dir]);
        let err = Cli::try_parse_from(with("runc")).unwrap_err().to_string();
        assert!(
            err.contains("--runc-root") && err.contains("not an absolute path"),
            "{err}"
        );
        let cli = Cli::parse_from(with("/n/runc"));
        assert_eq!(cli.containerd.runc_root, Some(PathBuf::from("/n/runc")));
    }

    #[test]
    fn node_ttl_should_default_to_the_agents_default_and_take_whole_seconds() {
        let cli = Cli::parse_from(["shoal-agent", "--address", "198.18.0.1", "--insecure"]);
        assert_eq!(
            cli.common.node_ttl,
            shoal_node_agent::agent::DEFAULT_NODE_TTL
        );
        let old = Cli::parse_from([
            "shoal-agent",
            "--address",
            "198.18.0.1",
            "--insecure",
            "--lease-ttl",
            "5",
        ]);
        assert_eq!(
            old.common.node_ttl,
            Duration::from_secs(5),
            "old flag, bare seconds"
        );
        assert_eq!(parse_ttl("3s"), Ok(Duration::from_secs(3)));
        assert!(parse_ttl("500ms").unwrap_err().contains("whole seconds"));
        assert!(parse_ttl("1.5s").is_err());
    }
}
