//! The shape of a local cluster ([`Layout`]: names, addresses, ports, paths — pure and
//! tested) and its life cycle ([`DevCluster`]: up, down, status, node stop/start).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::host;
use super::process::Daemon;

/// Everything about a local cluster that follows from its state dir and node count.
/// Saved as `cluster.json` so later commands (`down`, `status`) find it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The state directory.
    pub state_dir: PathBuf,
    /// Number of nodes.
    pub nodes: u32,
    /// `containerd` or `hollow`.
    pub runtime: String,
    /// The underlay bridge in the root namespace.
    pub bridge: String,
    /// The bridge's address (198.18.0.254).
    pub host_address: Ipv4Addr,
    /// etcd's client URL.
    pub etcd_url: String,
    /// The API server's address.
    pub api_listen: String,
    /// The registry's address.
    pub registry: String,
    /// etcd's data directory: on tmpfs when there is one (etcd fsyncs every write, which
    /// takes seconds on a busy disk; a dev cluster's data need not survive a reboot).
    pub etcd_dir: PathBuf,
}

impl Layout {
    /// The layout of a cluster of `nodes` nodes under `state_dir`.
    pub fn new(state_dir: PathBuf, nodes: u32, runtime: &str) -> anyhow::Result<Layout> {
        if !(1..=200).contains(&nodes) {
            bail!("--nodes must be 1-200 (got {nodes})");
        }
        if !matches!(runtime, "containerd" | "hollow") {
            bail!("--runtime must be containerd or hollow (got {runtime:?})");
        }
        let tag: String = state_dir
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let shm = Path::new("/dev/shm");
        let etcd_dir = if shm.is_dir() {
            shm.join(format!("shoal-etcd{tag}"))
        } else {
            state_dir.join("etcd")
        };
        Ok(Layout {
            etcd_dir,
            state_dir,
            nodes,
            runtime: runtime.to_string(),
            bridge: "shoal-br0".into(),
            host_address: Ipv4Addr::new(198, 18, 0, 254),
            etcd_url: "http://127.0.0.1:23790".into(),
            api_listen: "127.0.0.1:7777".into(),
            registry: "127.0.0.1:5000".into(),
        })
    }

    /// Node k's name.
    pub fn node_name(&self, k: u32) -> String {
        format!("node-{k}")
    }

    /// Node k's network namespace.
    pub fn node_netns(&self, k: u32) -> String {
        format!("shoal-node-{k}")
    }

    /// Node k's veth end on the bridge (at most 15 characters).
    pub fn node_veth(&self, k: u32) -> String {
        format!("shoal-n{k}")
    }

    /// Node k's underlay address, 198.18.0.k.
    pub fn node_address(&self, k: u32) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, k as u8)
    }

    /// Node k's directory (containerd data, agent state).
    pub fn node_dir(&self, k: u32) -> PathBuf {
        self.state_dir.join(format!("node-{k}"))
    }

    /// Node k's containerd socket.
    pub fn containerd_socket(&self, k: u32) -> PathBuf {
        self.node_dir(k).join("containerd").join("containerd.sock")
    }

    /// Where the agent of node k serves exec (on loopback).
    pub fn agent_listen(&self, k: u32) -> String {
        format!("127.0.0.1:{}", 7800 + k)
    }

    /// The API server's URL.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_listen)
    }

    fn file(&self) -> PathBuf {
        self.state_dir.join("cluster.json")
    }

    /// Reads the layout `up` saved.
    pub fn load(state_dir: &Path) -> anyhow::Result<Layout> {
        let path = state_dir.join("cluster.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no local cluster under {} (start one with: shoal dev up)",
                state_dir.display()
            )
        })?;
        Ok(serde_json::from_str(&text)?)
    }

    fn save(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.state_dir)?;
        std::fs::write(self.file(), serde_json::to_string_pretty(self)?)?;
        Ok(())
    }

    fn daemon(&self, name: &str) -> Daemon {
        Daemon::new(&self.state_dir, name)
    }

    /// The containerd config of node k.
    pub fn containerd_config(&self, k: u32) -> String {
        let dir = self.node_dir(k).join("containerd");
        format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n\
             [grpc]\n  address = \"{sock}\"\n\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\n[debug]\n  address = \"\"\n\n\
             [metrics]\n  address = \"\"\n",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = self.containerd_socket(k).display(),
        )
    }
}

/// A local cluster's life cycle.
pub struct DevCluster;

/// The directory of the `shoal` binary, where `shoal-controller` and `shoal-agent` live too.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .context("the shoal binary has a directory")?
        .to_path_buf())
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "{} not found next to shoal (build the workspace: cargo build --workspace)",
            path.display()
        );
    }
    Ok(path)
}

impl DevCluster {
    /// Starts everything and waits until every node is ready.
    pub async fn up(layout: Layout, timeout: Duration) -> anyhow::Result<()> {
        host::check_prerequisites()?;
        if let Ok(existing) = Layout::load(&layout.state_dir) {
            if existing.nodes != layout.nodes || existing.runtime != layout.runtime {
                bail!(
                    "a cluster of {} node(s) ({}) already exists under {}; run `shoal dev down` first",
                    existing.nodes,
                    existing.runtime,
                    layout.state_dir.display()
                );
            }
        }
        layout.save()?;
        step("etcd", || start_etcd(&layout))?;
        if layout.runtime == "containerd" {
            step("registry with localhost:5000/busybox:latest", || {
                super::image::ensure_registry(&layout)
            })?;
        }
        step(
            &format!(
                "underlay bridge {} ({}/24)",
                layout.bridge, layout.host_address
            ),
            || host::ensure_underlay(&layout),
        )?;
        step("controller", || start_controller(&layout))?;
        for k in 1..=layout.nodes {
            step(&format!("node-{k} ({})", layout.node_address(k)), || {
                start_node(&layout, k)
            })?;
        }
        wait_ready(&layout, timeout).await?;
        super::write_context(&layout.api_url())?;
        println!();
        println!(
            "Local cluster ready: {} node(s), API at {}",
            layout.nodes,
            layout.api_url()
        );
        println!(
            "  state, logs and pid files: {}",
            layout.state_dir.display()
        );
        println!("Try:");
        println!("  shoal node ls");
        println!("  shoal apply -f manifests/demo/");
        println!("  shoal service ps api");
        println!("  shoal dev down");
        Ok(())
    }

    /// Stops everything and removes what `up` made.
    pub async fn down(state_dir: &Path) -> anyhow::Result<()> {
        let layout = match Layout::load(state_dir) {
            Ok(l) => l,
            Err(_) => Layout::new(state_dir.to_path_buf(), 1, "containerd")?,
        };
        let mut saved_nodes = layout.nodes;
        // Also sweep node namespaces of a larger earlier cluster.
        for ns in host::netns_with_prefix("shoal-node-") {
            if let Some(k) = ns.strip_prefix("shoal-node-").and_then(|n| n.parse().ok()) {
                saved_nodes = saved_nodes.max(k);
            }
        }
        for k in 1..=saved_nodes {
            stop_node(&layout, k, Duration::from_secs(5)).await;
            host::remove_node_netns(&layout, k);
        }
        layout
            .daemon("controller")
            .stop(Duration::from_secs(5))
            .await?;
        if layout.runtime == "containerd" {
            super::image::stop_registry(&layout).await;
        }
        layout.daemon("etcd").stop(Duration::from_secs(5)).await?;
        host::remove_underlay(&layout);
        host::unmount_below(&layout.state_dir);
        let _ = std::fs::remove_dir_all(&layout.etcd_dir);
        if layout.state_dir.join("cluster.json").exists() {
            std::fs::remove_dir_all(&layout.state_dir)
                .with_context(|| format!("removing {}", layout.state_dir.display()))?;
        }
        println!("Local cluster removed.");
        Ok(())
    }

    /// Prints what runs.
    pub async fn status(state_dir: &Path) -> anyhow::Result<()> {
        let layout = Layout::load(state_dir)?;
        let show = |d: Daemon| {
            let state = d
                .running_pid()
                .map(|p| format!("running (pid {p})"))
                .unwrap_or_else(|| "stopped".into());
            println!("  {:<14} {state}", d.name);
        };
        println!(
            "Local cluster under {} ({} node(s), runtime {}):",
            layout.state_dir.display(),
            layout.nodes,
            layout.runtime
        );
        show(layout.daemon("etcd"));
        if layout.runtime == "containerd" {
            // scripts/image/registry.sh keeps its own pid file.
            let mut registry = layout.daemon("registry");
            registry.pid_file = layout.state_dir.join("registry").join("pid");
            show(registry);
        }
        show(layout.daemon("controller"));
        for k in 1..=layout.nodes {
            if layout.runtime == "containerd" {
                show(layout.daemon(&format!("containerd-{k}")));
            }
            show(layout.daemon(&format!("agent-{k}")));
        }
        println!("  API: {}", layout.api_url());
        Ok(())
    }

    /// Kills node k as a host would die.
    pub async fn stop_node(state_dir: &Path, k: u32) -> anyhow::Result<()> {
        let layout = Layout::load(state_dir)?;
        check_node(&layout, k)?;
        kill_node(&layout, k);
        println!("node-{k} stopped (agent, containerd and containers killed)");
        Ok(())
    }

    /// Brings node k back.
    pub async fn start_node(state_dir: &Path, k: u32) -> anyhow::Result<()> {
        let layout = Layout::load(state_dir)?;
        check_node(&layout, k)?;
        start_node(&layout, k)?;
        println!("node-{k} started");
        Ok(())
    }
}

fn check_node(layout: &Layout, k: u32) -> anyhow::Result<()> {
    if !(1..=layout.nodes).contains(&k) {
        bail!("no node {k}: the cluster has nodes 1-{}", layout.nodes);
    }
    Ok(())
}

fn step(what: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    println!("starting {what}");
    f().with_context(|| format!("starting {what}"))
}

fn start_etcd(layout: &Layout) -> anyhow::Result<()> {
    let dir = &layout.etcd_dir;
    let port: u16 = layout
        .etcd_url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(23790);
    let peer = format!("http://127.0.0.1:{}", port + 10);
    let args = vec![
        "--name=shoal-dev".to_string(),
        format!("--data-dir={}", dir.display()),
        format!("--listen-client-urls={}", layout.etcd_url),
        format!("--advertise-client-urls={}", layout.etcd_url),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=shoal-dev={peer}"),
        "--log-level=warn".to_string(),
    ];
    let etcd = host::which("etcd").context("etcd")?;
    layout.daemon("etcd").start(&etcd, &args, &[])?;
    Ok(())
}

fn start_controller(layout: &Layout) -> anyhow::Result<()> {
    let args = vec![
        format!("--listen={}", layout.api_listen),
        format!("--etcd={}", layout.etcd_url),
        // Plaintext until `dev up` runs `init` and etcd with TLS (issue 12, another branch).
        "--insecure".to_string(),
    ];
    layout.daemon("controller").start(
        &sibling("shoal-controller")?,
        &args,
        &[("RUST_LOG", "info".into())],
    )?;
    Ok(())
}

fn start_node(layout: &Layout, k: u32) -> anyhow::Result<()> {
    host::ensure_node_netns(layout, k)?;
    let mut args = vec![
        format!("--name={}", layout.node_name(k)),
        format!("--address={}", layout.node_address(k)),
        format!("--etcd={}", layout.etcd_url),
        format!("--runtime={}", layout.runtime),
    ];
    if layout.runtime == "containerd" {
        let dir = layout.node_dir(k).join("containerd");
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("config.toml");
        std::fs::write(&config, layout.containerd_config(k))?;
        let containerd = host::which("containerd").context("containerd")?;
        layout.daemon(&format!("containerd-{k}")).start(
            &containerd,
            &["--config".into(), config.display().to_string()],
            &[],
        )?;
        args.extend(super::image::agent_runtime_args(layout, k));
    }
    layout.daemon(&format!("agent-{k}")).start(
        &sibling("shoal-agent")?,
        &args,
        &[("RUST_LOG", "info,hickory_server=warn".into())],
    )?;
    Ok(())
}

async fn stop_node(layout: &Layout, k: u32, grace: Duration) {
    let _ = layout.daemon(&format!("agent-{k}")).stop(grace).await;
    kill_node(layout, k);
}

/// Kills node k's agent, containerd and every container it ran, at once.
fn kill_node(layout: &Layout, k: u32) {
    layout.daemon(&format!("agent-{k}")).kill_now();
    if layout.runtime == "containerd" {
        super::image::kill_containers(layout, k);
        layout.daemon(&format!("containerd-{k}")).kill_now();
        host::unmount_below(&layout.node_dir(k));
    }
}

async fn wait_ready(layout: &Layout, timeout: Duration) -> anyhow::Result<()> {
    println!("waiting for {} node(s) to be ready", layout.nodes);
    let client = reqwest::Client::new();
    let url = format!("{}/apis/shoal/v1/nodes", layout.api_url());
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ready = 0;
    while tokio::time::Instant::now() < deadline {
        if let Ok(resp) = client.get(&url).send().await {
            if let Ok(list) = resp.json::<serde_json::Value>().await {
                ready = list["items"]
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .filter(|n| n["status"]["state"] == "ready")
                            .count()
                    })
                    .unwrap_or(0);
                if ready as u32 >= layout.nodes {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut msg = format!(
        "only {ready} of {} node(s) became ready within {}s",
        layout.nodes,
        timeout.as_secs()
    );
    for name in ["controller", "agent-1"] {
        let tail = layout.daemon(name).log_tail(5);
        if !tail.is_empty() {
            msg.push_str(&format!("\n--- last lines of {name}.log:\n{tail}"));
        }
    }
    bail!(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_names_fit_kernel_limits_and_addresses_follow_node_numbers() {
        let l = Layout::new("/tmp/x".into(), 3, "containerd").unwrap();
        assert_eq!(l.node_address(2), Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(l.node_netns(3), "shoal-node-3");
        for k in [1, 200] {
            assert!(l.node_veth(k).len() <= 15);
        }
        assert!(l
            .containerd_config(1)
            .contains("/tmp/x/node-1/containerd/containerd.sock"));
    }

    #[test]
    fn layout_rejects_bad_node_counts_and_runtimes() {
        assert!(Layout::new("/tmp/x".into(), 0, "containerd").is_err());
        assert!(Layout::new("/tmp/x".into(), 3, "docker").is_err());
    }
}
