//! The shape of a local cluster ([`Layout`]: names, addresses, ports, paths — pure and
//! tested) and its life cycle ([`DevCluster`]: up, down, status, node stop/start).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::process::Daemon;
use super::{etcd, host, identity};

/// Everything about a local cluster that follows from its state dir and options.
/// Saved as `cluster.json` so later commands (`down`, `status`, `node stop`) find it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The state directory.
    pub state_dir: PathBuf,
    /// Number of nodes.
    pub nodes: u32,
    /// `containerd` or `hollow`.
    pub runtime: String,
    /// Number of etcd members: 1 (on loopback) or 3 (each in a namespace on the underlay).
    pub etcd_members: u32,
    /// Number of controllers (one leads, every one serves the API).
    pub controllers: u32,
    /// TLS, client certificates, etcd users and API tokens (the default); `false` only for
    /// the benchmarks' insecure baseline.
    pub secure: bool,
    /// The underlay's namespace: it holds the underlay bridge and the bridge's ends of every
    /// veth (nodes, etcd members, the host). A namespace of its own, so `br_netfilter` can be
    /// off there without touching the host's setting (see [`host::ensure_underlay`]).
    #[serde(default = "default_underlay_netns")]
    pub underlay_netns: String,
    /// The underlay bridge, in [`Layout::underlay_netns`].
    pub bridge: String,
    /// The host's address on the underlay (198.18.0.254), on [`Layout::host_veth`].
    pub host_address: Ipv4Addr,
    /// Extra flags every controller starts with (tests only, e.g. a small
    /// `--endpoints-slice-size`); kept so `controller start` passes them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controller_args: Vec<String>,
    /// The registry's address.
    pub registry: String,
    /// Where etcd data directories go: tmpfs when there is one (etcd fsyncs every write,
    /// which takes seconds on a busy disk; a dev cluster's data need not survive a reboot).
    pub etcd_base: PathBuf,
    /// The agents' `--resync` in seconds, when not their default (tests that inject drift
    /// by hand lengthen it, so the periodic repair does not race the check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_resync: Option<u64>,
}

/// What `shoal dev up` was asked for, besides the state dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Number of nodes (1-200).
    pub nodes: u32,
    /// `containerd` or `hollow`.
    pub runtime: String,
    /// 1 or 3.
    pub etcd_members: u32,
    /// 1-3.
    pub controllers: u32,
    /// See [`Layout::secure`].
    pub secure: bool,
    /// See [`Layout::agent_resync`].
    pub agent_resync: Option<u64>,
    /// See [`Layout::controller_args`].
    pub controller_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            runtime: "containerd".into(),
            etcd_members: 1,
            controllers: 1,
            secure: true,
            agent_resync: None,
            controller_args: Vec::new(),
        }
    }
}

/// [`Layout::underlay_netns`]; also what a `cluster.json` written before it existed gets.
fn default_underlay_netns() -> String {
    "shoal-underlay".into()
}

impl Layout {
    /// The layout of a cluster of `opts` under `state_dir`.
    pub fn new(state_dir: PathBuf, opts: &Options) -> anyhow::Result<Layout> {
        let nodes = opts.nodes;
        if !(1..=200).contains(&nodes) {
            bail!("--nodes must be 1-200 (got {nodes})");
        }
        let runtime = opts.runtime.as_str();
        if !matches!(runtime, "containerd" | "hollow") {
            bail!("--runtime must be containerd or hollow (got {runtime:?})");
        }
        if !matches!(opts.etcd_members, 1 | 3) {
            bail!("--etcd-members must be 1 or 3 (got {})", opts.etcd_members);
        }
        if !(1..=3).contains(&opts.controllers) {
            bail!("--controllers must be 1-3 (got {})", opts.controllers);
        }
        if let Some(bad) = opts.controller_args.iter().find(|a| !a.starts_with("--")) {
            bail!("--controller-arg must be a flag such as --endpoints-slice-size=2 (got {bad:?})");
        }
        let tag: String = state_dir
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let shm = Path::new("/dev/shm");
        let etcd_base = if shm.is_dir() {
            shm.join(format!("shoal-etcd{tag}"))
        } else {
            state_dir.join("etcd")
        };
        Ok(Layout {
            etcd_base,
            state_dir,
            nodes,
            runtime: runtime.to_string(),
            etcd_members: opts.etcd_members,
            controllers: opts.controllers,
            secure: opts.secure,
            underlay_netns: default_underlay_netns(),
            bridge: "shoal-br0".into(),
            host_address: Ipv4Addr::new(198, 18, 0, 254),
            registry: "127.0.0.1:5000".into(),
            agent_resync: opts.agent_resync,
            controller_args: opts.controller_args.clone(),
        })
    }

    fn scheme(&self) -> &'static str {
        if self.secure {
            "https"
        } else {
            "http"
        }
    }

    /// etcd member i's name (1-based).
    pub fn etcd_name(&self, i: u32) -> String {
        format!("etcd-{i}")
    }

    /// etcd member i's address: loopback for a single member, else 198.18.0.(240+i) in a
    /// namespace of its own on the underlay.
    pub fn etcd_address(&self, i: u32) -> Ipv4Addr {
        if self.etcd_members == 1 {
            Ipv4Addr::LOCALHOST
        } else {
            Ipv4Addr::new(198, 18, 0, 240 + i as u8)
        }
    }

    /// etcd member i's namespace (only with several members).
    pub fn etcd_netns(&self, i: u32) -> Option<String> {
        (self.etcd_members > 1).then(|| format!("shoal-etcd-{i}"))
    }

    /// etcd member i's veth end on the bridge, in the underlay's namespace.
    pub fn etcd_veth(&self, i: u32) -> String {
        format!("shoal-e{i}")
    }

    fn etcd_ports(&self) -> (u16, u16) {
        if self.etcd_members == 1 {
            (23790, 23800)
        } else {
            (2379, 2380)
        }
    }

    /// etcd member i's client URL.
    pub fn etcd_client_url(&self, i: u32) -> String {
        format!(
            "{}://{}:{}",
            self.scheme(),
            self.etcd_address(i),
            self.etcd_ports().0
        )
    }

    /// etcd member i's peer URL.
    pub fn etcd_peer_url(&self, i: u32) -> String {
        format!(
            "{}://{}:{}",
            self.scheme(),
            self.etcd_address(i),
            self.etcd_ports().1
        )
    }

    /// Every member's client URL, comma-separated (the `--etcd` flag).
    pub fn etcd_endpoints(&self) -> String {
        (1..=self.etcd_members)
            .map(|i| self.etcd_client_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// etcd member i's data directory.
    pub fn etcd_dir(&self, i: u32) -> PathBuf {
        self.etcd_base.join(self.etcd_name(i))
    }

    /// Where controller c's API listens.
    pub fn api_listen(&self, c: u32) -> String {
        format!("127.0.0.1:{}", 7776 + c)
    }

    /// Controller c's API URL.
    pub fn api_url_of(&self, c: u32) -> String {
        format!("{}://{}", self.scheme(), self.api_listen(c))
    }

    /// The API URL the context points at (controller 1).
    pub fn api_url(&self) -> String {
        self.api_url_of(1)
    }

    /// The controllers' data directory (`shoal-controller init`): CA, certificates, the
    /// admin token.
    pub fn pki_dir(&self) -> PathBuf {
        self.state_dir.join("pki")
    }

    /// Node k's identity (`shoal-agent join`): CA, node certificate and key, join.json.
    pub fn node_pki_dir(&self, k: u32) -> PathBuf {
        self.node_dir(k).join("pki")
    }

    /// Node k's name.
    pub fn node_name(&self, k: u32) -> String {
        format!("node-{k}")
    }

    /// Node k's network namespace.
    pub fn node_netns(&self, k: u32) -> String {
        format!("shoal-node-{k}")
    }

    /// The host's veth into the underlay: in the root namespace, with
    /// [`Layout::host_address`]; its peer is a port of the bridge.
    pub fn host_veth(&self) -> &'static str {
        "shoal-host"
    }

    /// Node k's veth end on the bridge, in the underlay's namespace (at most 15 characters).
    pub fn node_veth(&self, k: u32) -> String {
        format!("shoal-n{k}")
    }

    /// Node k's underlay address, 198.18.0.k.
    pub fn node_address(&self, k: u32) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, k as u8)
    }

    /// Node k's underlay MAC, derived from its address (locally administered): a node whose
    /// namespace is made again ("rebooted") keeps it, as a real host keeps its NIC's, so the
    /// other nodes' neighbour entries for it stay right. With a random MAC they would send
    /// its VXLAN traffic to the old one until their entries go stale (~30 s).
    pub fn node_mac(&self, k: u32) -> String {
        let [a, b, c, d] = self.node_address(k).octets();
        format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
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

    /// The published ports no service may take (the controllers' `--reserved-ports`): the
    /// defaults and every port this cluster itself listens on: etcd's client and peer
    /// ports, the controllers' API ports, the agents' ports.
    pub fn reserved_ports(&self) -> String {
        use shoal_api_types::settings::{
            default_reserved_ports, format_reserved_ports, ReservedPort,
        };
        let (client, peer) = self.etcd_ports();
        let mut ports = default_reserved_ports();
        ports.extend([ReservedPort::tcp(client), ReservedPort::tcp(peer)]);
        ports.extend((1..=self.controllers).map(|c| ReservedPort::tcp(7776 + c as u16)));
        ports.extend((1..=self.nodes).map(|k| ReservedPort::tcp(7800 + k as u16)));
        ports.sort();
        ports.dedup();
        format_reserved_ports(&ports)
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

    pub(super) fn daemon(&self, name: &str) -> Daemon {
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

pub(super) fn sibling(name: &str) -> anyhow::Result<PathBuf> {
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
            if existing != layout {
                bail!(
                    "a different cluster ({} node(s), {}, {} etcd member(s), {} controller(s){}) already exists under {}; run `shoal dev down` first",
                    existing.nodes,
                    existing.runtime,
                    existing.etcd_members,
                    existing.controllers,
                    if existing.secure { "" } else { ", insecure" },
                    layout.state_dir.display()
                );
            }
        }
        layout.save()?;
        if layout.secure {
            step("cluster identity (CA, certificates, admin token)", || {
                identity::init(&layout)
            })?;
        }
        if layout.runtime == "containerd" {
            step("registry with localhost:5000/busybox:latest", || {
                super::image::ensure_registry(&layout)
            })?;
        }
        step(
            &format!(
                "underlay bridge {} in namespace {} (host side {}/24 on {})",
                layout.bridge,
                layout.underlay_netns,
                layout.host_address,
                layout.host_veth()
            ),
            || host::ensure_underlay(&layout),
        )?;
        for i in 1..=layout.etcd_members {
            step(
                &format!("{} ({})", layout.etcd_name(i), layout.etcd_client_url(i)),
                || etcd::start_member(&layout, i),
            )?;
        }
        for c in 1..=layout.controllers {
            step(
                &format!("controller-{c} ({})", layout.api_url_of(c)),
                || start_controller(&layout, c),
            )?;
        }
        let api = identity::Api::of(&layout)?;
        api.wait_healthy(&layout, timeout).await?;
        if layout.secure {
            let token = api.join_token().await?;
            for k in 1..=layout.nodes {
                identity::join_node(&layout, k, &token)
                    .with_context(|| format!("joining node-{k}"))?;
            }
        }
        for k in 1..=layout.nodes {
            step(&format!("node-{k} ({})", layout.node_address(k)), || {
                start_node(&layout, k)
            })?;
        }
        wait_ready(&layout, &api, timeout).await?;
        super::write_context(&layout)?;
        println!();
        println!(
            "Local cluster ready: {} node(s), API at {}{}",
            layout.nodes,
            layout.api_url(),
            if layout.secure {
                " (TLS, admin token in the context)"
            } else {
                " (INSECURE: no TLS, no tokens)"
            }
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
            Err(_) => Layout::new(state_dir.to_path_buf(), &Options::default())?,
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
        for c in 1..=layout.controllers.max(3) {
            layout
                .daemon(&format!("controller-{c}"))
                .stop(Duration::from_secs(5))
                .await?;
        }
        if layout.runtime == "containerd" {
            super::image::stop_registry(&layout).await;
        }
        for i in 1..=3 {
            etcd::stop_member(&layout, i).await?;
            etcd::remove_member_netns(&layout, i);
        }
        host::remove_underlay(&layout);
        host::unmount_below(&layout.state_dir);
        let _ = std::fs::remove_dir_all(&layout.etcd_base);
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
            "Local cluster under {} ({} node(s), runtime {}, {} etcd member(s), {} controller(s), {}):",
            layout.state_dir.display(),
            layout.nodes,
            layout.runtime,
            layout.etcd_members,
            layout.controllers,
            if layout.secure { "secured" } else { "INSECURE" }
        );
        for i in 1..=layout.etcd_members {
            show(layout.daemon(&layout.etcd_name(i)));
        }
        if layout.runtime == "containerd" {
            // scripts/image/registry.sh keeps its own pid file.
            let mut registry = layout.daemon("registry");
            registry.pid_file = layout.state_dir.join("registry").join("pid");
            show(registry);
        }
        for c in 1..=layout.controllers {
            show(layout.daemon(&format!("controller-{c}")));
        }
        for k in 1..=layout.nodes {
            if layout.runtime == "containerd" {
                show(layout.daemon(&format!("containerd-{k}")));
            }
            show(layout.daemon(&format!("agent-{k}")));
        }
        for c in 1..=layout.controllers {
            println!("  API: {}", layout.api_url_of(c));
        }
        Ok(())
    }

    /// Kills node k as a host would die.
    pub async fn stop_node(state_dir: &Path, k: u32) -> anyhow::Result<()> {
        let layout = Layout::load(state_dir)?;
        check_number("node", k, layout.nodes)?;
        kill_node(&layout, k);
        println!("node-{k} stopped (agent, containerd and containers killed)");
        Ok(())
    }

    /// Brings node k back.
    pub async fn start_node(state_dir: &Path, k: u32) -> anyhow::Result<()> {
        let layout = Layout::load(state_dir)?;
        check_number("node", k, layout.nodes)?;
        start_node(&layout, k)?;
        println!("node-{k} started");
        Ok(())
    }

    /// Kills etcd member i (SIGKILL, as a host would die).
    pub async fn stop_etcd(state_dir: &Path, i: u32) -> anyhow::Result<()> {
        let layout = Layout::load(state_dir)?;
        check_number("etcd member", i, layout.etcd_members)?;
        layout.daemon(&layout.etcd_name(i)).kill_now();
        println!("{} stopped", layout.etcd_name(i));
        Ok(())
    }

    /// Brings etcd member i back (it rejoins with its data).
    pub async fn start_etcd(state_dir: &Path, i: u32) -> anyhow::Result<()> {
        let layout = Layout::load(state_dir)?;
        check_number("etcd member", i, layout.etcd_members)?;
        etcd::start_member(&layout, i)?;
        println!("{} started", layout.etcd_name(i));
        Ok(())
    }

    /// Kills controller c (SIGKILL).
    pub async fn stop_controller(state_dir: &Path, c: u32) -> anyhow::Result<()> {
        let layout = Layout::load(state_dir)?;
        check_number("controller", c, layout.controllers)?;
        layout.daemon(&format!("controller-{c}")).kill_now();
        println!("controller-{c} stopped");
        Ok(())
    }

    /// Brings controller c back.
    pub async fn start_controller(state_dir: &Path, c: u32) -> anyhow::Result<()> {
        let layout = Layout::load(state_dir)?;
        check_number("controller", c, layout.controllers)?;
        start_controller(&layout, c)?;
        println!("controller-{c} started");
        Ok(())
    }
}

fn check_number(what: &str, k: u32, count: u32) -> anyhow::Result<()> {
    if !(1..=count).contains(&k) {
        bail!("no {what} {k}: the cluster has {what}s 1-{count}");
    }
    Ok(())
}

fn step(what: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    println!("starting {what}");
    f().with_context(|| format!("starting {what}"))
}

fn start_controller(layout: &Layout, c: u32) -> anyhow::Result<()> {
    let mut args = vec![
        format!("--listen={}", layout.api_listen(c)),
        format!("--etcd={}", layout.etcd_endpoints()),
        format!("--reserved-ports={}", layout.reserved_ports()),
    ];
    if layout.secure {
        args.push(format!("--data-dir={}", layout.pki_dir().display()));
    } else {
        args.push("--insecure".into());
    }
    args.extend(layout.controller_args.iter().cloned());
    layout.daemon(&format!("controller-{c}")).start(
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
        format!("--etcd={}", layout.etcd_endpoints()),
        format!("--runtime={}", layout.runtime),
    ];
    if let Some(secs) = layout.agent_resync {
        args.push(format!("--resync={secs}"));
    }
    if layout.secure {
        args.push(format!("--pki-dir={}", layout.node_pki_dir(k).display()));
    } else {
        args.push("--insecure".into());
    }
    // Where tasks' secrets and configs come from: every controller, tried in turn (a
    // secured agent would default to the one it joined through only).
    let controllers: Vec<String> = (1..=layout.controllers)
        .map(|c| layout.api_url_of(c))
        .collect();
    args.push(format!("--controller={}", controllers.join(",")));
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

async fn wait_ready(layout: &Layout, api: &identity::Api, timeout: Duration) -> anyhow::Result<()> {
    println!("waiting for {} node(s) to be ready", layout.nodes);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ready = 0;
    while tokio::time::Instant::now() < deadline {
        if let Ok(list) = api.get("/apis/shoal/v1/nodes").await {
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
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut msg = format!(
        "only {ready} of {} node(s) became ready within {}s",
        layout.nodes,
        timeout.as_secs()
    );
    for name in ["controller-1", "agent-1"] {
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
        let l = Layout::new("/tmp/x".into(), &Options::default()).unwrap();
        assert_eq!(l.node_address(2), Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(l.node_mac(2), "02:00:c6:12:00:02");
        assert_ne!(l.node_mac(2), l.node_mac(3));
        assert_eq!(l.node_netns(3), "shoal-node-3");
        for k in [1, 200] {
            assert!(l.node_veth(k).len() <= 15);
        }
        assert!(l
            .containerd_config(1)
            .contains("/tmp/x/node-1/containerd/containerd.sock"));
    }

    #[test]
    fn the_underlay_has_a_namespace_of_its_own_also_for_a_cluster_json_written_before_it() {
        let l = Layout::new("/tmp/x".into(), &Options::default()).unwrap();
        assert_eq!(l.underlay_netns, "shoal-underlay");
        assert!(l.host_veth().len() <= 15);
        let mut old = serde_json::to_value(&l).unwrap();
        assert!(old
            .as_object_mut()
            .unwrap()
            .remove("underlay_netns")
            .is_some());
        let loaded: Layout = serde_json::from_value(old).unwrap();
        assert_eq!(loaded, l);
    }

    #[test]
    fn layout_rejects_bad_node_counts_and_runtimes() {
        let with = |f: fn(&mut Options)| {
            let mut o = Options::default();
            f(&mut o);
            Layout::new("/tmp/x".into(), &o)
        };
        assert!(with(|o| o.nodes = 0).is_err());
        assert!(with(|o| o.runtime = "docker".into()).is_err());
        assert!(with(|o| o.etcd_members = 2).is_err());
        assert!(with(|o| o.controllers = 0).is_err());
        assert!(with(|o| o.controllers = 3).is_ok());
        assert!(with(|o| o.controller_args = vec!["slice-size".into()]).is_err());
        let l = with(|o| o.controller_args = vec!["--endpoints-slice-size=2".into()]).unwrap();
        assert_eq!(l.controller_args, ["--endpoints-slice-size=2"]);
    }

    #[test]
    fn layout_puts_a_single_etcd_on_loopback_and_three_members_on_the_underlay() {
        let one = Layout::new("/tmp/x".into(), &Options::default()).unwrap();
        assert_eq!(one.etcd_endpoints(), "https://127.0.0.1:23790");
        assert_eq!(one.etcd_netns(1), None);
        assert_eq!(one.api_url(), "https://127.0.0.1:7777");
        let three = Layout::new(
            "/tmp/x".into(),
            &Options {
                etcd_members: 3,
                controllers: 2,
                ..Options::default()
            },
        )
        .unwrap();
        assert_eq!(
            three.etcd_endpoints(),
            "https://198.18.0.241:2379,https://198.18.0.242:2379,https://198.18.0.243:2379"
        );
        assert_eq!(three.etcd_peer_url(2), "https://198.18.0.242:2380");
        assert_eq!(three.etcd_netns(3).as_deref(), Some("shoal-etcd-3"));
        assert!(three.etcd_veth(3).len() <= 15);
        assert_eq!(three.api_url_of(2), "https://127.0.0.1:7778");
        let insecure = Layout::new(
            "/tmp/x".into(),
            &Options {
                secure: false,
                ..Options::default()
            },
        )
        .unwrap();
        assert_eq!(insecure.etcd_endpoints(), "http://127.0.0.1:23790");
        assert_eq!(insecure.api_url(), "http://127.0.0.1:7777");
    }

    #[test]
    fn layout_reserves_the_ports_the_cluster_listens_on() {
        let l = Layout::new(
            "/tmp/x".into(),
            &Options {
                nodes: 3,
                controllers: 2,
                ..Options::default()
            },
        )
        .unwrap();
        let ports = shoal_api_types::settings::parse_reserved_ports(&l.reserved_ports()).unwrap();
        let shown: Vec<String> = ports.iter().map(ToString::to_string).collect();
        for want in [
            "4789/udp",
            "22/tcp",
            "2379/tcp",
            "2380/tcp",
            "23790/tcp",
            "23800/tcp",
            "7777/tcp",
            "7778/tcp",
            "7800/tcp",
            "7801/tcp",
            "7802/tcp",
            "7803/tcp",
        ] {
            assert!(shown.contains(&want.to_string()), "{want} in {shown:?}");
        }
        assert!(!shown.contains(&"7804/tcp".to_string()), "{shown:?}");
        assert!(!shown.contains(&"7779/tcp".to_string()), "{shown:?}");
    }
}
