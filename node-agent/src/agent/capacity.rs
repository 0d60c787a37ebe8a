//! The node's capacity, as the agent reports it in `Node.status.capacity` for the scheduler
//! to weigh tasks' reservations against.
//!
//! CPUs: the agent's available parallelism (the standard library already reads the
//! cgroup's CPU quota, v1 `cpu.cfs_quota_us` or v2 `cpu.max`, and the affinity mask), or
//! the quota in `cpu.max` when that is lower. Memory: `MemTotal` from `/proc/meminfo`, or
//! the agent's cgroup limit (v2 `memory.max`, v1 `memory.limit_in_bytes`) when lower.
//! `--capacity-cpus` and `--capacity-memory` override either (tests, shared machines).
//!
//! The parsers are pure; [`detect`] reads the files.

use std::path::Path;

use shoal_api_types::resources::{Cpus, Memory, NodeCapacity};

/// `MemTotal` in bytes from the text of `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | Some("KB") | Some("kb") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// The cgroup path of the v2 hierarchy (`0::/path`) and of the v1 memory and cpu
/// controllers, from the text of `/proc/self/cgroup`.
pub fn parse_proc_cgroup(text: &str) -> CgroupPaths {
    let mut paths = CgroupPaths::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            paths.unified = Some(path.to_string());
        }
        for c in controllers.split(',') {
            match c {
                "memory" => paths.memory_v1 = Some(path.to_string()),
                "cpu" => paths.cpu_v1 = Some(path.to_string()),
                _ => {}
            }
        }
    }
    paths
}

/// Where the agent's cgroups are (paths relative to the hierarchies' roots).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupPaths {
    /// cgroup v2.
    pub unified: Option<String>,
    /// cgroup v1 memory controller.
    pub memory_v1: Option<String>,
    /// cgroup v1 cpu controller.
    pub cpu_v1: Option<String>,
}

/// A memory limit file's value (`max`, or v1's huge "unlimited" number: None).
pub fn parse_memory_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    let v: u64 = t.parse().ok()?;
    // cgroup v1 says "no limit" with a page-rounded i64::MAX.
    (v < (1 << 62)).then_some(v)
}

/// Millicpus from cgroup v2's `cpu.max` (`quota period`, `max period`: None).
pub fn parse_cpu_max(text: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    let quota: u64 = words.next()?.parse().ok()?;
    let period: u64 = words.next().unwrap_or("100000").parse().ok()?;
    if period == 0 {
        return None;
    }
    Some((quota * 1000).div_ceil(period).max(1))
}

/// The capacity from what was read: parallelism, `MemTotal`, and the cgroup limits.
pub fn combine(
    parallelism: u64,
    cpu_quota_millis: Option<u64>,
    mem_total: u64,
    mem_limit: Option<u64>,
) -> NodeCapacity {
    let cpus = (parallelism.max(1) * 1000).min(cpu_quota_millis.unwrap_or(u64::MAX));
    let memory = mem_total.min(mem_limit.unwrap_or(u64::MAX));
    NodeCapacity {
        cpus: Cpus(cpus),
        memory: Memory(memory),
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// This machine's capacity as the agent sees it (None if `/proc/meminfo` cannot be read);
/// `cpus` and `memory` override what is found.
pub fn detect(cpus: Option<Cpus>, memory: Option<Memory>) -> Option<NodeCapacity> {
    let root = Path::new("/sys/fs/cgroup");
    let paths = read(Path::new("/proc/self/cgroup"))
        .map(|t| parse_proc_cgroup(&t))
        .unwrap_or_default();
    let in_root = |sub: &str, path: &Option<String>, file: &str| {
        path.as_ref()
            .and_then(|p| read(&root.join(sub).join(p.trim_start_matches('/')).join(file)))
    };
    let mem_limit = [
        in_root("", &paths.unified, "memory.max"),
        in_root("memory", &paths.memory_v1, "memory.limit_in_bytes"),
    ]
    .into_iter()
    .flatten()
    .filter_map(|t| parse_memory_limit(&t))
    .min();
    let cpu_quota = in_root("", &paths.unified, "cpu.max").and_then(|t| parse_cpu_max(&t));
    let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let found = match read(Path::new("/proc/meminfo")).and_then(|t| parse_meminfo(&t)) {
        Some(total) => Some(combine(parallelism, cpu_quota, total, mem_limit)),
        None => memory.map(|m| NodeCapacity {
            cpus: Cpus(parallelism * 1000),
            memory: m,
        }),
    }?;
    Some(NodeCapacity {
        cpus: cpus.unwrap_or(found.cpus),
        memory: memory.unwrap_or(found.memory),
    })
}

/// What a hollow node reports unless told otherwise: large, so benchmarks' reservations
/// never run out by accident (64 CPUs, 256Gi).
pub const HOLLOW_CAPACITY: NodeCapacity = NodeCapacity {
    cpus: Cpus(64_000),
    memory: Memory(256 << 30),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_gives_the_total_in_bytes() {
        let text = "MemTotal:       24684084 kB\nMemFree:        1 kB\n";
        assert_eq!(parse_meminfo(text), Some(24684084 * 1024));
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn cgroup_paths_and_limits_are_read_for_v1_and_v2() {
        let v1 = "4:memory:/process_api/54b8\n1:cpu,cpuacct:/x\n0::/\n";
        let p = parse_proc_cgroup(v1);
        assert_eq!(p.memory_v1.as_deref(), Some("/process_api/54b8"));
        assert_eq!(p.cpu_v1.as_deref(), Some("/x"));
        assert_eq!(p.unified.as_deref(), Some("/"));
        assert_eq!(
            parse_proc_cgroup("0::/system.slice/shoal-agent.service\n").unified,
            Some("/system.slice/shoal-agent.service".into())
        );
        assert_eq!(parse_memory_limit("max\n"), None);
        assert_eq!(parse_memory_limit("9223372036854771712\n"), None);
        assert_eq!(parse_memory_limit("1073741824\n"), Some(1 << 30));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1500));
        assert_eq!(parse_cpu_max("50000 100000"), Some(500));
    }

    #[test]
    fn the_lower_of_the_machine_and_the_cgroup_wins() {
        let c = combine(8, Some(1500), 16 << 30, Some(2 << 30));
        assert_eq!((c.cpus, c.memory), (Cpus(1500), Memory(2 << 30)));
        let c = combine(2, None, 16 << 30, Some(64 << 30));
        assert_eq!((c.cpus, c.memory), (Cpus(2000), Memory(16 << 30)));
    }

    #[test]
    fn overrides_replace_what_is_detected() {
        let c = detect(Some(Cpus(500)), Some(Memory(1 << 30))).unwrap();
        assert_eq!((c.cpus, c.memory), (Cpus(500), Memory(1 << 30)));
        let found = detect(None, None).expect("this machine has /proc/meminfo");
        assert!(found.cpus.millis() >= 1000 && found.memory.bytes() > 0);
    }
}
