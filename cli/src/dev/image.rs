//! The registry and test image of a local cluster, and the per-node container plumbing
//! the harness needs (agent runtime flags, killing a node's containers).
//!
//! The shell scripts in `scripts/image/` are embedded in the binary, so `shoal dev up`
//! works from any directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::cluster::Layout;
use super::process::run;

const REGISTRY_SH: &str = include_str!("../../../scripts/image/registry.sh");
const BUILD_BUSYBOX_SH: &str = include_str!("../../../scripts/image/build-busybox.sh");

fn scripts_dir(layout: &Layout) -> anyhow::Result<PathBuf> {
    let dir = layout.state_dir.join("scripts");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("registry.sh"), REGISTRY_SH)?;
    std::fs::write(dir.join("build-busybox.sh"), BUILD_BUSYBOX_SH)?;
    Ok(dir)
}

/// Starts the registry on 127.0.0.1:5000 and pushes `localhost:5000/busybox:latest`.
pub fn ensure_registry(layout: &Layout) -> anyhow::Result<()> {
    let dir = scripts_dir(layout)?;
    let script = dir.join("registry.sh");
    let state = layout.state_dir.display().to_string();
    std::process::Command::new("bash")
        .arg(&script)
        .args(["seed", &state])
        .env("SHOAL_REGISTRY_ADDR", &layout.registry)
        .status()
        .context("running registry.sh")?
        .success()
        .then_some(())
        .context("seeding the registry failed (see the lines above)")
}

/// Stops the registry.
pub async fn stop_registry(layout: &Layout) {
    if let Ok(dir) = scripts_dir(layout) {
        let _ = run(
            "bash",
            &[
                &dir.join("registry.sh").display().to_string(),
                "stop",
                &layout.state_dir.display().to_string(),
            ],
        );
    }
}

/// The agent flags that pick node k's containerd and network namespace.
pub fn agent_runtime_args(layout: &Layout, k: u32) -> Vec<String> {
    vec![
        format!(
            "--containerd-socket={}",
            layout.containerd_socket(k).display()
        ),
        format!("--netns={}", layout.node_netns(k)),
        format!("--state-dir={}", layout.node_dir(k).join("agent").display()),
        // runc's state below the node's directory too: a node is torn down by killing its
        // shims, so runc never deletes that state itself.
        format!(
            "--runc-root={}",
            layout.node_dir(k).join("containerd").join("runc").display()
        ),
        format!("--listen={}", layout.agent_listen(k)),
        format!(
            "--insecure-registry={}",
            layout.registry.replace("127.0.0.1", "localhost")
        ),
    ]
}

/// Kills every process below node k's containerd shims (the containers), then the shims.
/// Also removes the killed shims' sockets, which a shim deletes only when it exits cleanly.
pub fn kill_containers(layout: &Layout, k: u32) {
    let socket = layout.containerd_socket(k).display().to_string();
    let parents = process_parents();
    let shims: BTreeMap<i32, Vec<String>> = parents
        .keys()
        .copied()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.starts_with("containerd-shim"))
                .unwrap_or(false)
        })
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.contains(&socket).then_some((pid, args))
        })
        .collect();
    let pids: BTreeSet<i32> = shims.keys().copied().collect();
    let mut victims: Vec<i32> = descendants(&parents, &pids).into_iter().collect();
    victims.extend(&pids);
    for pid in victims {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for args in shims.values() {
        if let Some(path) = shim_socket(args) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Where a shim started with `args` serves: containerd puts every shim's socket at
/// `/run/containerd/s/<sha256 of "<containerd address>/<namespace>/<id>">`, whatever its
/// own state directory (containerd's `shim.SocketAddress`).
fn shim_socket(args: &[String]) -> Option<PathBuf> {
    let arg = |name: &str| {
        let i = args.iter().position(|a| a == name)?;
        args.get(i + 1)
    };
    let (namespace, id, address) = (arg("-namespace")?, arg("-id")?, arg("-address")?);
    let digest = Sha256::digest(format!("{address}/{namespace}/{id}"));
    Some(PathBuf::from(format!("/run/containerd/s/{digest:x}")))
}

/// pid -> parent pid of every process.
fn process_parents() -> BTreeMap<i32, i32> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the ')' that closes the command name: state, ppid, ...
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok());
        if let Some(ppid) = ppid {
            out.insert(pid, ppid);
        }
    }
    out
}

/// Every descendant of `roots` (not the roots themselves).
fn descendants(parents: &BTreeMap<i32, i32>, roots: &BTreeSet<i32>) -> BTreeSet<i32> {
    let mut found = BTreeSet::new();
    let mut frontier: Vec<i32> = roots.iter().copied().collect();
    while let Some(p) = frontier.pop() {
        for (&child, &parent) in parents {
            if parent == p && found.insert(child) {
                frontier.push(child);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_follow_the_whole_tree() {
        let parents = BTreeMap::from([(10, 1), (11, 10), (12, 11), (20, 1), (13, 10)]);
        let d = descendants(&parents, &BTreeSet::from([10]));
        assert_eq!(d, BTreeSet::from([11, 12, 13]));
    }

    #[test]
    fn a_shims_socket_is_named_by_its_address_namespace_and_id() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let shim = args(&[
            "/usr/bin/containerd-shim-runc-v2",
            "-namespace",
            "shoal",
            "-id",
            "t1",
            "-address",
            "/tmp/x/node-1/containerd/containerd.sock",
        ]);
        // printf '%s' /tmp/x/node-1/containerd/containerd.sock/shoal/t1 | sha256sum
        assert_eq!(
            shim_socket(&shim),
            Some(PathBuf::from(
                "/run/containerd/s/60a1bb44cb08e5f3df927445172aa0210ae239fc068ddf9ea3881f2c3033d76f"
            ))
        );
        assert_eq!(shim_socket(&shim[..5]), None, "no address");
    }
}
