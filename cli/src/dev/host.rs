//! The host side of a local cluster: prerequisites, the underlay bridge and the node
//! namespaces. These are set up with iproute2, as an operator would by hand; the agents
//! themselves use netlink for everything inside a node.

use anyhow::{bail, Context};

use super::cluster::Layout;
use super::process::{run, run_quiet};

/// Programs `dev up` needs, with the Debian package that brings each.
const PREREQUISITES: &[(&str, &str)] = &[
    ("etcd", "etcd-server"),
    ("containerd", "containerd"),
    ("runc", "runc"),
    ("docker-registry", "docker-registry"),
    ("skopeo", "skopeo"),
    ("busybox", "busybox-static"),
    ("nft", "nftables"),
    ("ip", "iproute2"),
];

/// Fails naming every missing program and the `apt-get install` line that fixes it.
pub fn check_prerequisites() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("shoal dev needs root: it creates network namespaces, links and containers (try: sudo shoal dev up)");
    }
    let missing: Vec<&(&str, &str)> = PREREQUISITES
        .iter()
        .filter(|(prog, _)| which(prog).is_none())
        .collect();
    if !missing.is_empty() {
        let programs: Vec<&str> = missing.iter().map(|(p, _)| *p).collect();
        let mut packages: Vec<&str> = missing.iter().map(|(_, pkg)| *pkg).collect();
        packages.dedup();
        bail!(
            "missing programs: {}\n  fix: apt-get install -y {}\n  (or run ./scripts/install-deps)",
            programs.join(", "),
            packages.join(" ")
        );
    }
    Ok(())
}

/// The full path of a program on PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// `br_netfilter`'s switches (`/proc/sys/net/bridge/…`), each per namespace.
const BRIDGE_NF_SWITCHES: [&str; 3] = [
    "bridge-nf-call-iptables",
    "bridge-nf-call-ip6tables",
    "bridge-nf-call-arptables",
];

/// Creates the underlay if missing: namespace [`Layout::underlay_netns`] holding the bridge,
/// and the host's veth into it ([`Layout::host_veth`], 198.18.0.254/24).
///
/// The bridge stands for the switch between real hosts, so it lives in a namespace of its own
/// with `br_netfilter` off there. In the root namespace, where that is the host's setting
/// (Docker and kube-proxy turn it on), every frame the bridge forwarded between two nodes
/// would pass the host's IP hooks, and its conntrack when the host has any: a cost per
/// overlay and routing-mesh packet that real hosts, joined by a wire, do not pay. The
/// root namespace keeps only the host's veth end.
pub fn ensure_underlay(layout: &Layout) -> anyhow::Result<()> {
    let ns = layout.underlay_netns.as_str();
    let br = layout.bridge.as_str();
    if !netns_exists(ns)? {
        run("ip", &["netns", "add", ns])?;
    }
    // Again on every `up`: a br_netfilter module loaded since turns it on in every namespace.
    bridge_netfilter_off(ns)?;
    run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
    if run("ip", &["-n", ns, "link", "show", br]).is_err() {
        run("ip", &["-n", ns, "link", "add", br, "type", "bridge"])?;
    }
    run("ip", &["-n", ns, "link", "set", br, "up"])?;
    let host_if = layout.host_veth();
    if run("ip", &["link", "show", host_if]).is_err() {
        run(
            "ip",
            &[
                "link", "add", host_if, "type", "veth", "peer", "name", "host", "netns", ns,
            ],
        )?;
        run("ip", &["-n", ns, "link", "set", "host", "master", br, "up"])?;
        let addr = format!("{}/24", layout.host_address);
        run("ip", &["addr", "add", &addr, "dev", host_if])?;
    }
    run("ip", &["link", "set", host_if, "up"])?;
    Ok(())
}

/// Wires namespace `ns` to the underlay bridge: a veth named `port` on the bridge, whose peer
/// is `eth0` in `ns` with `address`/24 (and `mac`, if given), up, and `ns`'s loopback up.
/// Returns `false` when `port` already exists, leaving it as it is.
pub fn attach_to_underlay(
    layout: &Layout,
    port: &str,
    ns: &str,
    address: std::net::Ipv4Addr,
    mac: Option<&str>,
) -> anyhow::Result<bool> {
    let under = layout.underlay_netns.as_str();
    if run("ip", &["-n", under, "link", "show", port]).is_ok() {
        return Ok(false);
    }
    run(
        "ip",
        &[
            "-n", under, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    run(
        "ip",
        &[
            "-n",
            under,
            "link",
            "set",
            port,
            "master",
            &layout.bridge,
            "up",
        ],
    )?;
    if let Some(mac) = mac {
        run("ip", &["-n", ns, "link", "set", "eth0", "address", mac])?;
    }
    let addr = format!("{address}/24");
    run("ip", &["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
    run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
    run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
    Ok(true)
}

/// Creates node k's namespace, wired to the bridge with 198.18.0.k/24, if missing.
pub fn ensure_node_netns(layout: &Layout, k: u32) -> anyhow::Result<()> {
    let ns = layout.node_netns(k);
    if !netns_exists(&ns)? {
        run("ip", &["netns", "add", &ns])?;
    }
    let mac = layout.node_mac(k);
    let port = layout.node_veth(k);
    if attach_to_underlay(layout, &port, &ns, layout.node_address(k), Some(&mac))? {
        let via = layout.host_address.to_string();
        run("ip", &["-n", &ns, "route", "add", "default", "via", &via])?;
    }
    Ok(())
}

/// Whether network namespace `ns` exists.
pub fn netns_exists(ns: &str) -> anyhow::Result<bool> {
    Ok(netns_names()?.iter().any(|n| n == ns))
}

/// Writes 0 to every `br_netfilter` switch the kernel has, in namespace `ns` (a kernel
/// without `br_netfilter` has none, and hooks nothing).
fn bridge_netfilter_off(ns: &str) -> anyhow::Result<()> {
    let netns = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening namespace {ns}"))?;
    // A thread of its own enters the namespace: /proc/sys/net is the calling thread's.
    std::thread::scope(|s| {
        s.spawn(move || -> anyhow::Result<()> {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering namespace {ns}"))?;
            for key in BRIDGE_NF_SWITCHES {
                let path = std::path::Path::new("/proc/sys/net/bridge").join(key);
                if path.exists() {
                    std::fs::write(&path, "0")
                        .with_context(|| format!("{} in {ns}", path.display()))?;
                }
            }
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("turning br_netfilter off in {ns}: the thread panicked"))?
    })
}

/// Removes node k's namespace (and with it everything inside: links, VXLANs, rules), and the
/// task namespaces its agent made (`shoal-node-k-<task>`, left when the agent is stopped).
pub fn remove_node_netns(layout: &Layout, k: u32) {
    for ns in netns_with_prefix(&format!("{}-", layout.node_netns(k))) {
        run_quiet("ip", &["netns", "delete", &ns]);
    }
    detach_from_underlay(layout, &layout.node_veth(k));
    run_quiet("ip", &["netns", "delete", &layout.node_netns(k)]);
}

/// Deletes `port` from the underlay bridge (and with it its peer), if it is there.
pub fn detach_from_underlay(layout: &Layout, port: &str) {
    run_quiet("ip", &["-n", &layout.underlay_netns, "link", "del", port]);
}

/// Removes the underlay: the host's veth and the underlay's namespace (with the bridge and
/// every port left on it). Also a root-namespace bridge of the same name, where clusters made
/// before the underlay had a namespace of its own kept it.
pub fn remove_underlay(layout: &Layout) {
    run_quiet("ip", &["link", "del", layout.host_veth()]);
    run_quiet("ip", &["netns", "delete", &layout.underlay_netns]);
    run_quiet("ip", &["link", "del", &layout.bridge]);
}

/// Names of network namespaces starting with `prefix` (none when they cannot be listed).
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    netns_names()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Names of every network namespace (`ip netns list` prints `NAME (id: N)` per line).
fn netns_names() -> anyhow::Result<Vec<String>> {
    Ok(run("ip", &["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Unmounts every mount below `dir` (containerd snapshots, task rootfs), deepest first.
pub fn unmount_below(dir: &std::path::Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let prefix = dir.to_string_lossy().to_string();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|t| t.starts_with(&prefix))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        run_quiet("umount", &["-l", t]);
    }
}
