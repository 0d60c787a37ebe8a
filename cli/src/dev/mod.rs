//! `shoal dev`: a whole cluster on one machine — the embedded default.
//!
//! `up` starts, under a state directory: a cluster identity (CA, certificates, an admin
//! token), etcd with TLS and client-certificate authentication (1 member on loopback or 3
//! in namespaces of their own), a local registry on 127.0.0.1:5000 seeded with
//! `localhost:5000/busybox:latest`, one containerd per node, the controllers, and N agents
//! that each joined with a join token. Node k gets a network namespace `shoal-node-k` wired
//! to the underlay bridge `shoal-br0` (198.18.0.k/24), which lives in a namespace of its own,
//! `shoal-underlay`, with `br_netfilter` off; the host reaches it through the veth
//! `shoal-host` (198.18.0.254).
//! `down` removes every process, namespace, link, mount and file it made; `status` tells
//! what runs; `node stop K` kills node K as a host would die (agent, containerd, containers)
//! and `node start K` brings it back; `etcd stop|start I` and `controller stop|start C` do
//! the same for an etcd member and a controller. `--insecure` leaves security off, only to
//! measure what it costs.
//!
//! Every process is recorded in a pid file under the state directory, so `down` works from
//! any later shell, also after a crash of `up`.

mod cluster;
mod etcd;
mod host;
mod identity;
mod image;
mod process;

pub use cluster::{DevCluster, Layout, Options};

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `shoal dev ...`
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the cluster keeps its data, logs and pid files.
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/shoal-dev",
        env = "SHOAL_DEV_STATE"
    )]
    pub state_dir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: DevCommand,
}

/// The `dev` subcommands.
#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Start a local cluster (needs root).
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Container runtime of the agents: `containerd` (real) or `hollow` (testing mode,
        /// no containers).
        #[arg(long, default_value = "containerd")]
        runtime: String,
        /// Seconds to wait for every node to be ready.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// etcd members: 1 (on loopback) or 3 (each in a namespace on the underlay).
        #[arg(long, default_value_t = 1)]
        etcd_members: u32,
        /// Controllers (one leads; each serves the API, on 127.0.0.1:7777, :7778, …).
        #[arg(long, default_value_t = 1)]
        controllers: u32,
        /// No TLS, no client certificates, no tokens: only for measuring what security
        /// costs (the benchmarks' baseline). Never on a machine others can reach.
        #[arg(long)]
        insecure: bool,
        /// Seconds between the agents' periodic reconciles (their `--resync`; default 10).
        /// Tests that break a node by hand and expect `shoal system check` to see it
        /// lengthen it, so the periodic repair does not race the check.
        #[arg(long, value_name = "SECS")]
        agent_resync: Option<u64>,
        /// An extra flag for every controller, repeatable (tests only, e.g.
        /// `--controller-arg=--endpoints-slice-size=2`).
        #[arg(long = "controller-arg", hide = true, allow_hyphen_values = true)]
        controller_args: Vec<String>,
    },
    /// Stop the cluster and remove everything it made.
    Down,
    /// Show what runs.
    Status,
    /// Stop or start one node.
    Node {
        /// Stop or start.
        #[command(subcommand)]
        action: NodeAction,
    },
    /// Stop or start one etcd member.
    Etcd {
        /// Stop or start.
        #[command(subcommand)]
        action: NodeAction,
    },
    /// Stop or start one controller.
    Controller {
        /// Stop or start.
        #[command(subcommand)]
        action: NodeAction,
    },
}

/// `shoal dev node|etcd|controller ...`
#[derive(Debug, Subcommand)]
pub enum NodeAction {
    /// Kill number K as a host would die (a node: its agent, containerd and containers).
    Stop {
        /// Number (1-based).
        k: u32,
    },
    /// Bring number K back.
    Start {
        /// Number (1-based).
        k: u32,
    },
}

/// Runs a `shoal dev` command.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    match args.command {
        DevCommand::Up {
            nodes,
            runtime,
            timeout,
            etcd_members,
            controllers,
            insecure,
            agent_resync,
            controller_args,
        } => {
            let opts = Options {
                nodes,
                runtime,
                etcd_members,
                controllers,
                secure: !insecure,
                agent_resync,
                controller_args,
            };
            let layout = Layout::new(args.state_dir, &opts)?;
            DevCluster::up(layout, std::time::Duration::from_secs(timeout)).await
        }
        DevCommand::Down => DevCluster::down(&args.state_dir).await,
        DevCommand::Status => DevCluster::status(&args.state_dir).await,
        DevCommand::Node {
            action: NodeAction::Stop { k },
        } => DevCluster::stop_node(&args.state_dir, k).await,
        DevCommand::Node {
            action: NodeAction::Start { k },
        } => DevCluster::start_node(&args.state_dir, k).await,
        DevCommand::Etcd {
            action: NodeAction::Stop { k },
        } => DevCluster::stop_etcd(&args.state_dir, k).await,
        DevCommand::Etcd {
            action: NodeAction::Start { k },
        } => DevCluster::start_etcd(&args.state_dir, k).await,
        DevCommand::Controller {
            action: NodeAction::Stop { k },
        } => DevCluster::stop_controller(&args.state_dir, k).await,
        DevCommand::Controller {
            action: NodeAction::Start { k },
        } => DevCluster::start_controller(&args.state_dir, k).await,
    }
}

/// Points plain `shoal ...` commands at the cluster (the context file): its API, and for
/// a secured cluster the CA to verify it with and the admin token.
pub fn write_context(layout: &Layout) -> anyhow::Result<()> {
    let server = layout.api_url();
    let (ca, token) = if layout.secure {
        let pki = layout.pki_dir();
        (
            Some(pki.join("ca.crt").display().to_string()),
            Some(identity::admin_token(&pki)?),
        )
    } else {
        (None, None)
    };
    let path = crate::context::write_default_context(&crate::context::Context {
        server: server.clone(),
        certificate_authority: ca,
        token,
    })?;
    println!("wrote {} (server {server})", path.display());
    Ok(())
}
