//! The host side of a local cluster: prerequisites, the underlay bridge and the node
//! namespaces. These are set up with iproute2, as an operator would by hand; the agents
//! themselves use netlink for everything inside a node.

use anyhow::bail;

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

/// Creates the underlay bridge (host side 198.18.0.254/24) if missing.
pub fn ensure_underlay(layout: &Layout) -> anyhow::Result<()> {
    let br = &layout.bridge;
    if run("ip", &["link", "show", br]).is_err() {
        run("ip", &["link", "add", br, "type", "bridge"])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", layout.host_address),
                "dev",
                br,
            ],
        )?;
    }
    run("ip", &["link", "set", br, "up"])?;
    Ok(())
}

/// Creates node k's namespace, wired to the bridge with 198.18.0.k/24, if missing.
pub fn ensure_node_netns(layout: &Layout, k: u32) -> anyhow::Result<()> {
    let ns = layout.node_netns(k);
    let host_if = layout.node_veth(k);
    let exists = run("ip", &["netns", "list"])?
        .split_whitespace()
        .any(|n| n == ns);
    if !exists {
        run("ip", &["netns", "add", &ns])?;
    }
    if run("ip", &["link", "show", &host_if]).is_err() {
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        run(
            "ip",
            &["link", "set", &host_if, "master", &layout.bridge, "up"],
        )?;
        let addr = format!("{}/24", layout.node_address(k));
        run(
            "ip",
            &[
                "-n",
                &ns,
                "link",
                "set",
                "eth0",
                "address",
                &layout.node_mac(k),
            ],
        )?;
        run("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &layout.host_address.to_string(),
            ],
        )?;
    }
    Ok(())
}

/// Removes node k's namespace (and with it everything inside: links, VXLANs, rules), and the
/// task namespaces its agent made (`shoal-node-k-<task>`, left when the agent is stopped).
pub fn remove_node_netns(layout: &Layout, k: u32) {
    for ns in netns_with_prefix(&format!("{}-", layout.node_netns(k))) {
        run_quiet("ip", &["netns", "delete", &ns]);
    }
    run_quiet("ip", &["link", "del", &layout.node_veth(k)]);
    run_quiet("ip", &["netns", "delete", &layout.node_netns(k)]);
}

/// Removes the underlay bridge.
pub fn remove_underlay(layout: &Layout) {
    run_quiet("ip", &["link", "del", &layout.bridge]);
}

/// Names of network namespaces starting with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
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
