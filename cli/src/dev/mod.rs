//! `shoal dev`: a whole cluster on one machine — the embedded default.
//!
//! `up` starts, under a state directory: etcd, a local registry on 127.0.0.1:5000 seeded with
//! `localhost:5000/busybox:latest`, one containerd per node, the controller, and N agents.
//! Node k gets a network namespace `shoal-node-k` wired to the underlay bridge `shoal-br0`
//! (198.18.0.k/24; the host side is 198.18.0.254). `down` removes every process, namespace,
//! link, mount and file it made; `status` tells what runs; `node stop K` kills node K as a
//! host would die (agent, containerd, containers) and `node start K` brings it back.
//!
//! Every process is recorded in a pid file under the state directory, so `down` works from
//! any later shell, also after a crash of `up`.

mod cluster;
mod host;
mod image;
mod process;

pub use cluster::{DevCluster, Layout};

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
}

/// `shoal dev node ...`
#[derive(Debug, Subcommand)]
pub enum NodeAction {
    /// Kill node K as a host would die: its agent, its containerd and its containers.
    Stop {
        /// Node number (1-based).
        k: u32,
    },
    /// Bring node K back.
    Start {
        /// Node number (1-based).
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
        } => {
            let layout = Layout::new(args.state_dir, nodes, &runtime)?;
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
    }
}

/// Points plain `shoal ...` commands at the cluster (the context file).
pub fn write_context(server: &str) -> anyhow::Result<()> {
    let path = crate::context::write_default_context(&crate::context::Context {
        server: server.to_string(),
        // The secured local cluster's CA and admin token: written by the lead's `dev up`.
        certificate_authority: None,
        token: None,
    })?;
    println!("wrote {} (server {server})", path.display());
    Ok(())
}
