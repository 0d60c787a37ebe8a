//! The OCI runtime spec of a task container, and the small files bind-mounted into it.
//!
//! Pure functions: a [`ContainerSpec`] plus the image's config become an
//! [`oci_spec::runtime::Spec`] that matches what Docker/containerd give a default container:
//! Docker's default capability set, containerd's default mounts, masked and read-only paths,
//! new pid/ipc/uts/mount namespaces and the task's network namespace (a path, or a new one),
//! the task name as hostname, and `/etc/resolv.conf`, `/etc/hosts`, `/etc/hostname`
//! bind-mounted from the task's state directory. The rootfs is `rootfs` in the bundle, where
//! the shim mounts the snapshot.
//!
//! The task's own mounts ([`ContainerSpec::mounts`]: secrets, configs, volumes, binds,
//! tmpfs) follow the defaults, so `/run/secrets` lands on the default `/run` tmpfs.
//!
//! Command line, Swarm's way: `command` replaces the image's entrypoint (and then the image's
//! cmd is dropped); `args` replaces the image's cmd.
//!
//! Hardening, always on: `noNewPrivileges`, the default seccomp profile of [`super::seccomp`]
//! (unless the task is `seccomp: unconfined`), a pids limit (the task's, else
//! [`DEFAULT_PIDS_LIMIT`]). Per task: capabilities (Docker's default set plus `capAdd` minus
//! `capDrop`), user (numeric, or names resolved through the image's `/etc/passwd` and
//! `/etc/group`, [`RootfsFiles`]), working directory, a read-only root filesystem (the
//! bind-mounted `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname` stay writable, as in
//! Docker; no `/tmp` is added, as in Docker), memory (swap limited to the same, so no swap),
//! and CPU (CFS quota over a 100 ms period).

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use shoal_api_types::capabilities::{canonical as canonical_capability, ALL, LINUX_CAPABILITIES};
use shoal_api_types::resources::DEFAULT_PIDS_LIMIT;

use super::error::RuntimeError;
use super::types::{ContainerSpec, DnsConfig, ImageConfig};

/// File names in a task's state directory.
pub const RESOLV_CONF: &str = "resolv.conf";
/// See [`RESOLV_CONF`].
pub const HOSTS: &str = "hosts";
/// See [`RESOLV_CONF`].
pub const HOSTNAME: &str = "hostname";

/// Docker's default capabilities (moby `oci/caps/defaults.go`).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// containerd's default masked paths.
pub const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// containerd's default read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The process's argv: entrypoint + cmd with the task's overrides applied.
pub fn process_args(
    spec: &ContainerSpec,
    image: &ImageConfig,
) -> Result<Vec<String>, RuntimeError> {
    let args: Vec<String> = if !spec.command.is_empty() {
        spec.command
            .iter()
            .chain(spec.args.iter())
            .cloned()
            .collect()
    } else {
        let cmd = if spec.args.is_empty() {
            &image.cmd
        } else {
            &spec.args
        };
        image.entrypoint.iter().chain(cmd.iter()).cloned().collect()
    };
    if args.is_empty() {
        return Err(RuntimeError::InvalidSpec {
            id: spec.id.clone(),
            reason: format!(
                "image {} has no entrypoint or cmd and the task gives no command",
                spec.image
            ),
        });
    }
    Ok(args)
}

/// The environment: the image's, then `HOSTNAME`, then the task's (later wins per key).
pub fn process_env(spec: &ContainerSpec, image: &ImageConfig) -> Vec<String> {
    fn set(out: &mut Vec<(String, String)>, k: &str, v: &str) {
        if let Some(e) = out.iter_mut().find(|(ek, _)| ek == k) {
            e.1 = v.to_string();
        } else {
            out.push((k.to_string(), v.to_string()));
        }
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(&mut out, k, v);
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        set(
            &mut out,
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    set(&mut out, "HOSTNAME", &spec.hostname);
    for (k, v) in &spec.env {
        set(&mut out, k, v);
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// CFS period of a CPU limit, in microseconds (Docker's).
pub const CPU_PERIOD_US: u64 = 100_000;

/// `/etc/passwd` and `/etc/group` of the container's root filesystem, when the runtime could
/// read them (names in `user` are resolved through them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootfsFiles {
    /// `/etc/passwd`.
    pub passwd: Option<String>,
    /// `/etc/group`.
    pub group: Option<String>,
}

/// The user a container's process runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedUser {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups (those of `/etc/group` listing the user, when no group is given).
    pub additional_gids: Vec<u32>,
}

/// Resolves `user` (`uid`, `uid:gid`, `name`, `name:group`; empty = root) the way Docker
/// does: a name must be in the image's `/etc/passwd` (a group in its `/etc/group`); a
/// numeric uid always works and takes its primary group from `/etc/passwd` when listed
/// there, else gid 0.
pub fn resolve_user(
    id: &str,
    user: &str,
    files: &RootfsFiles,
) -> Result<ResolvedUser, RuntimeError> {
    let bad = |reason: String| RuntimeError::InvalidSpec {
        id: id.to_string(),
        reason,
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    // name:password:uid:gid:...
    let passwd: Vec<Vec<&str>> = files
        .passwd
        .as_deref()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    // name:password:gid:member,member
    let groups: Vec<Vec<&str>> = files
        .group
        .as_deref()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    let (uid, mut gid, name) = if u.is_empty() {
        (0, 0, Some("root".to_string()))
    } else if let Ok(uid) = u.parse::<u32>() {
        match passwd.iter().find(|f| f[2] == u) {
            Some(f) => (uid, f[3].parse().unwrap_or(0), Some(f[0].to_string())),
            None => (uid, 0, None),
        }
    } else {
        match passwd.iter().find(|f| f[0] == u) {
            Some(f) => (
                f[2].parse()
                    .map_err(|_| bad(format!("user {u:?} has a bad uid in /etc/passwd")))?,
                f[3].parse().unwrap_or(0),
                Some(u.to_string()),
            ),
            None if u == "root" => (0, 0, Some("root".to_string())),
            None if files.passwd.is_none() => {
                return Err(bad(format!(
                    "user {u:?}: the image's /etc/passwd could not be read; use a numeric uid[:gid]"
                )))
            }
            None => return Err(bad(format!("user {u:?} is not in the image's /etc/passwd"))),
        }
    };
    let mut additional_gids = Vec::new();
    match g {
        Some("") => return Err(bad(format!("user {user:?}: the group is empty"))),
        Some(g) => {
            gid = if let Ok(n) = g.parse::<u32>() {
                n
            } else if let Some(f) = groups.iter().find(|f| f[0] == g) {
                f[2].parse()
                    .map_err(|_| bad(format!("group {g:?} has a bad gid in /etc/group")))?
            } else if g == "root" {
                0
            } else if files.group.is_none() {
                return Err(bad(format!(
                    "group {g:?}: the image's /etc/group could not be read; use a numeric gid"
                )));
            } else {
                return Err(bad(format!("group {g:?} is not in the image's /etc/group")));
            };
        }
        None => {
            if let Some(name) = &name {
                for f in &groups {
                    let member = f.get(3).is_some_and(|m| m.split(',').any(|m| m == name));
                    if let (true, Ok(n)) = (member, f[2].parse::<u32>()) {
                        if n != gid && !additional_gids.contains(&n) {
                            additional_gids.push(n);
                        }
                    }
                }
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

/// The agent's own bounding set (`CapBnd` of `/proc/self/status`); all bits if unreadable.
pub fn own_bounding_set() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

fn capability(name: &str) -> Option<Capability> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// The capability set: Docker's default set, plus `add`, minus `drop` (`ALL` in `add` starts
/// from every capability, `ALL` in `drop` from none; a capability both added and dropped is
/// added, as in Docker). Unknown names are an [`RuntimeError::InvalidSpec`].
pub fn capabilities(
    id: &str,
    add: &[String],
    drop: &[String],
) -> Result<HashSet<Capability>, RuntimeError> {
    let parse = |names: &[String]| -> Result<Vec<String>, RuntimeError> {
        names
            .iter()
            .map(|n| {
                canonical_capability(n).ok_or_else(|| RuntimeError::InvalidSpec {
                    id: id.to_string(),
                    reason: format!("{n:?} is not a Linux capability"),
                })
            })
            .collect()
    };
    let (add, drop) = (parse(add)?, parse(drop)?);
    let mut caps: HashSet<Capability> = if add.iter().any(|c| c == ALL) {
        // Every capability the node has: a process cannot grant what its bounding set lacks
        // (runc would fail to start the container).
        let own = own_bounding_set();
        LINUX_CAPABILITIES
            .iter()
            .enumerate()
            .filter(|(bit, _)| own & (1u64 << bit) != 0)
            .filter_map(|(_, c)| capability(c))
            .collect()
    } else if drop.iter().any(|c| c == ALL) {
        HashSet::new()
    } else {
        DEFAULT_CAPABILITIES.into_iter().collect()
    };
    for c in drop.iter().filter(|c| *c != ALL) {
        if let Some(c) = capability(c) {
            caps.remove(&c);
        }
    }
    for c in add.iter().filter(|c| *c != ALL) {
        if let Some(c) = capability(c) {
            caps.insert(c);
        }
    }
    Ok(caps)
}

/// `/etc/resolv.conf` for `dns`.
pub fn resolv_conf(dns: &DnsConfig) -> String {
    let mut s = String::new();
    if !dns.search.is_empty() {
        s.push_str(&format!("search {}\n", dns.search.join(" ")));
    }
    for ns in &dns.nameservers {
        s.push_str(&format!("nameserver {ns}\n"));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    s
}

/// `/etc/hosts`: localhost entries and the task's own name on its first address
/// (127.0.1.1 when it has none).
pub fn hosts_file(hostname: &str, addresses: &[IpAddr]) -> String {
    let own = addresses
        .first()
        .copied()
        .unwrap_or(IpAddr::from([127, 0, 1, 1]));
    format!(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n\
         {own}\t{hostname}\n"
    )
}

/// Writes `resolv.conf`, `hosts` and `hostname` into `dir` (created if missing).
pub fn write_files(dir: &Path, spec: &ContainerSpec) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io(dir, e))?;
    for (name, content) in [
        (RESOLV_CONF, resolv_conf(&spec.dns)),
        (HOSTS, hosts_file(&spec.hostname, &spec.addresses)),
        (HOSTNAME, format!("{}\n", spec.hostname)),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, content).map_err(|e| RuntimeError::io(&p, e))?;
    }
    Ok(())
}

fn oci_err(id: &str, e: oci_spec::OciSpecError) -> RuntimeError {
    RuntimeError::InvalidSpec {
        id: id.to_string(),
        reason: format!("building the OCI spec: {e}"),
    }
}

fn mount(
    dst: &str,
    typ: &str,
    src: &str,
    opts: &[&str],
) -> Result<oci_spec::runtime::Mount, oci_spec::OciSpecError> {
    MountBuilder::default()
        .destination(dst)
        .typ(typ)
        .source(src)
        .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
}

/// Builds the OCI runtime spec. `state_dir` holds the files of [`write_files`];
/// `cgroups_path` is e.g. `/shoal/<id>`; `rootfs` has the image's user database, if read.
pub fn build(
    spec: &ContainerSpec,
    image: &ImageConfig,
    state_dir: &Path,
    cgroups_path: &str,
    rootfs: &RootfsFiles,
) -> Result<Spec, RuntimeError> {
    let id = spec.id.as_str();
    let e = |err| oci_err(id, err);
    if spec.hostname.is_empty() {
        return Err(RuntimeError::InvalidSpec {
            id: id.to_string(),
            reason: "hostname is empty".to_string(),
        });
    }
    let user = if spec.user.is_empty() {
        &image.user
    } else {
        &spec.user
    };
    let user = resolve_user(id, user, rootfs)?;
    let caps = capabilities(id, &spec.cap_add, &spec.cap_drop)?;
    // Inheritable and ambient are empty, as in Docker (oci-spec's defaults would give them
    // AUDIT_WRITE, KILL and NET_BIND_SERVICE: ambient capabilities survive execve even for
    // non-root users, and an inheritable set outside the bounding set makes runc fail).
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(e)?;
    let cwd = [&spec.working_dir, &image.working_dir]
        .into_iter()
        .find(|d| !d.is_empty())
        .cloned()
        .unwrap_or_else(|| "/".to_string());
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids)
                .build()
                .map_err(e)?,
        )
        .args(process_args(spec, image)?)
        .env(process_env(spec, image))
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(1024u64)
            .soft(1024u64)
            .build()
            .map_err(e)?])
        .no_new_privileges(true)
        .build()
        .map_err(e)?;

    let file = |name: &str| state_dir.join(name).to_string_lossy().into_owned();
    let mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/run",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/etc/resolv.conf",
            "bind",
            &file(RESOLV_CONF),
            &["rbind", "rprivate", "rw"],
        ),
        mount(
            "/etc/hosts",
            "bind",
            &file(HOSTS),
            &["rbind", "rprivate", "rw"],
        ),
        mount(
            "/etc/hostname",
            "bind",
            &file(HOSTNAME),
            &["rbind", "rprivate", "rw"],
        ),
    ]
    .into_iter()
    .chain(spec.mounts.iter().map(|m| {
        let options: Vec<&str> = m.options.iter().map(String::as_str).collect();
        mount(&m.destination, &m.typ, &m.source, &options)
    }))
    .collect::<Result<Vec<_>, _>>()
    .map_err(e)?;

    let ns = |typ: LinuxNamespaceType| LinuxNamespaceBuilder::default().typ(typ).build();
    let mut namespaces = vec![
        ns(LinuxNamespaceType::Pid).map_err(e)?,
        ns(LinuxNamespaceType::Ipc).map_err(e)?,
        ns(LinuxNamespaceType::Uts).map_err(e)?,
        ns(LinuxNamespaceType::Mount).map_err(e)?,
    ];
    let net = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
    let net = match &spec.netns {
        Some(p) => net.path(p.clone()),
        None => net,
    };
    namespaces.push(net.build().map_err(e)?);

    let mut resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(e)?])
        .pids(
            LinuxPidsBuilder::default()
                .limit(i64::from(spec.limits.pids.unwrap_or(DEFAULT_PIDS_LIMIT)))
                .build()
                .map_err(e)?,
        );
    if let Some(bytes) = spec.limits.memory {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes)
                .swap(bytes)
                .build()
                .map_err(e)?,
        );
    }
    if let Some(millis) = spec.limits.cpu_millis {
        let quota = (millis.saturating_mul(CPU_PERIOD_US) / 1000).max(1000);
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(i64::try_from(quota).unwrap_or(i64::MAX))
                .period(CPU_PERIOD_US)
                .build()
                .map_err(e)?,
        );
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(cgroups_path)
        .resources(resources.build().map_err(e)?)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(e)?;
    if !spec.seccomp_unconfined {
        linux.set_seccomp(Some(super::seccomp::default_profile()));
    }

    SpecBuilder::default()
        .version("1.0.2-dev")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(spec.read_only_root)
                .build()
                .map_err(e)?,
        )
        .process(process)
        .hostname(spec.hostname.clone())
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn task() -> ContainerSpec {
        ContainerSpec {
            id: "c1".into(),
            image: "localhost:5000/busybox:latest".into(),
            hostname: "api.1".into(),
            ..Default::default()
        }
    }

    fn busybox() -> ImageConfig {
        ImageConfig {
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into(), "A=image".into()],
            working_dir: "/".into(),
            ..Default::default()
        }
    }

    #[test]
    fn args_follow_swarm_override_rules() {
        let img = ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            ..Default::default()
        };
        let mut t = task();
        assert_eq!(process_args(&t, &img).unwrap(), ["/entry", "default"]);
        t.args = vec!["x".into()];
        assert_eq!(process_args(&t, &img).unwrap(), ["/entry", "x"]);
        t.command = vec!["sh".into(), "-c".into()];
        t.args = vec!["echo hi".into()];
        assert_eq!(process_args(&t, &img).unwrap(), ["sh", "-c", "echo hi"]);
        t.args.clear();
        assert_eq!(process_args(&t, &img).unwrap(), ["sh", "-c"]);
        let e = process_args(&task(), &ImageConfig::default()).unwrap_err();
        assert!(e.to_string().contains("no entrypoint or cmd"), "{e}");
    }

    #[test]
    fn env_layers_image_then_hostname_then_task() {
        let mut t = task();
        t.env.insert("A".into(), "task".into());
        t.env.insert("B".into(), "b".into());
        assert_eq!(
            process_env(&t, &busybox()),
            ["PATH=/bin", "A=task", "HOSTNAME=api.1", "B=b"]
        );
        let env = process_env(&t, &ImageConfig::default());
        assert!(env[0].starts_with("PATH=/usr/local/sbin"));
    }

    fn etc() -> RootfsFiles {
        RootfsFiles {
            passwd: Some(
                "root:x:0:0:root:/root:/bin/sh\n# comment\nwww:x:33:33::/var/www:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n".into(),
            ),
            group: Some("root:x:0:\nwww:x:33:\napp:x:1000:\nwheel:x:10:app,www\naudio:x:29:app\n".into()),
        }
    }

    fn user(u: &str, files: &RootfsFiles) -> Result<(u32, u32, Vec<u32>), String> {
        resolve_user("c", u, files)
            .map(|r| (r.uid, r.gid, r.additional_gids))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn users_resolve_as_docker_resolves_them() {
        let none = RootfsFiles::default();
        assert_eq!(user("", &none).unwrap(), (0, 0, vec![]));
        assert_eq!(user("root", &none).unwrap(), (0, 0, vec![]));
        // Numeric ids always work; the primary group comes from /etc/passwd, else 0.
        assert_eq!(user("1000", &none).unwrap(), (1000, 0, vec![]));
        assert_eq!(user("1000:50", &none).unwrap(), (1000, 50, vec![]));
        assert_eq!(user("1000", &etc()).unwrap(), (1000, 1000, vec![10, 29]));
        assert_eq!(user("4242", &etc()).unwrap(), (4242, 0, vec![]));
        // Names go through the image's files; supplementary groups only without a group.
        assert_eq!(user("www", &etc()).unwrap(), (33, 33, vec![10]));
        assert_eq!(user("app:audio", &etc()).unwrap(), (1000, 29, vec![]));
        assert_eq!(user("33:wheel", &etc()).unwrap(), (33, 10, vec![]));
        let e = user("nobody", &etc()).unwrap_err();
        assert!(
            e.contains("\"nobody\" is not in the image's /etc/passwd"),
            "{e}"
        );
        let e = user("www-data", &none).unwrap_err();
        assert!(e.contains("could not be read; use a numeric uid"), "{e}");
        let e = user("app:nogroup", &etc()).unwrap_err();
        assert!(
            e.contains("\"nogroup\" is not in the image's /etc/group"),
            "{e}"
        );
        assert!(user("app:", &etc()).is_err());
    }

    fn caps(add: &[&str], drop: &[&str]) -> Vec<String> {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut v: Vec<String> = capabilities("c", &s(add), &s(drop))
            .unwrap()
            .into_iter()
            .map(|c| {
                serde_json::to_value(c)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn capabilities_are_the_default_set_plus_adds_minus_drops() {
        assert_eq!(caps(&[], &[]).len(), 14);
        let c = caps(&["net_admin", "CAP_SYS_TIME"], &["NET_RAW", "cap_chown"]);
        assert_eq!(c.len(), 14);
        assert!(c.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(c.contains(&"CAP_SYS_TIME".to_string()));
        assert!(!c.contains(&"CAP_NET_RAW".to_string()));
        assert!(!c.contains(&"CAP_CHOWN".to_string()));
        assert_eq!(caps(&[], &["ALL"]), Vec::<String>::new());
        assert_eq!(
            caps(&["NET_BIND_SERVICE"], &["all"]),
            ["CAP_NET_BIND_SERVICE"]
        );
        let all = caps(&["ALL"], &["SYS_ADMIN"]);
        let own = (own_bounding_set() & ((1 << 41) - 1)).count_ones() as usize;
        assert_eq!(all.len(), own - 1);
        assert!(!all.contains(&"CAP_SYS_ADMIN".to_string()));
        // Added and dropped: added, as in Docker.
        assert!(caps(&["NET_ADMIN"], &["NET_ADMIN"]).contains(&"CAP_NET_ADMIN".to_string()));
        let e = capabilities("c", &["NOPE".into()], &[]).unwrap_err();
        assert!(
            e.to_string().contains("\"NOPE\" is not a Linux capability"),
            "{e}"
        );
    }

    #[test]
    fn hardening_is_on_by_default() {
        let s = build(&task(), &busybox(), Path::new("/s"), "/shoal/c1", &etc()).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(
            v["process"]["capabilities"]["ambient"],
            serde_json::json!([])
        );
        assert_eq!(
            v["process"]["capabilities"]["inheritable"],
            serde_json::json!([])
        );
        assert_eq!(v["root"]["readonly"], false);
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        let denied: Vec<&str> = v["linux"]["seccomp"]["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["names"].as_array().unwrap())
            .map(|n| n.as_str().unwrap())
            .collect();
        for name in [
            "unshare",
            "mount",
            "ptrace",
            "clone",
            "clone3",
            "personality",
        ] {
            assert!(denied.contains(&name), "{name}");
        }
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 1024);
        assert!(v["linux"]["resources"].get("memory").is_none());
        assert!(v["linux"]["resources"].get("cpu").is_none());
        assert_eq!(v["process"]["user"]["uid"], 0);
    }

    #[test]
    fn task_settings_reach_the_spec() {
        let mut t = task();
        t.user = "app".into();
        t.working_dir = "/srv".into();
        t.read_only_root = true;
        t.cap_add = vec!["NET_ADMIN".into()];
        t.seccomp_unconfined = true;
        t.limits = super::super::types::Limits {
            memory: Some(32 << 20),
            cpu_millis: Some(500),
            pids: Some(64),
        };
        let s = build(&t, &busybox(), Path::new("/s"), "/shoal/c1", &etc()).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(v["process"]["user"]["gid"], 1000);
        assert_eq!(
            v["process"]["user"]["additionalGids"],
            serde_json::json!([10, 29])
        );
        assert_eq!(v["process"]["cwd"], "/srv");
        assert_eq!(v["root"]["readonly"], true);
        assert!(v["linux"].get("seccomp").is_none());
        assert!(v["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "CAP_NET_ADMIN"));
        let r = &v["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 32 << 20);
        assert_eq!(r["memory"]["swap"], 32 << 20);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["pids"]["limit"], 64);
        // The image's user and working directory when the task sets none.
        let img = ImageConfig {
            user: "www".into(),
            working_dir: "/var/www".into(),
            ..busybox()
        };
        let s = build(&task(), &img, Path::new("/s"), "/shoal/c1", &etc()).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["process"]["user"]["uid"], 33);
        assert_eq!(v["process"]["cwd"], "/var/www");
        let e = build(
            &task(),
            &img,
            Path::new("/s"),
            "/shoal/c1",
            &RootfsFiles::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"www\""), "{e}");
    }

    #[test]
    fn resolv_conf_points_at_the_embedded_dns() {
        assert_eq!(
            resolv_conf(&DnsConfig::default()),
            "nameserver 127.0.0.11\noptions ndots:0\n"
        );
    }

    #[test]
    fn hosts_file_maps_the_task_name_to_its_address() {
        let h = hosts_file("api.1", &["10.0.1.5".parse().unwrap()]);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.0.1.5\tapi.1\n"));
        assert!(hosts_file("x", &[]).ends_with("127.0.1.1\tx\n"));
    }

    #[test]
    fn the_tasks_own_mounts_should_follow_the_default_ones_in_order() {
        let mut t = task();
        t.mounts = vec![
            super::super::types::ContainerMount {
                destination: "/run/secrets".into(),
                typ: "bind".into(),
                source: "/state/payloads/t1/secrets".into(),
                options: vec!["rbind".into(), "ro".into()],
            },
            super::super::types::ContainerMount {
                destination: "/cache".into(),
                typ: "tmpfs".into(),
                source: "tmpfs".into(),
                options: vec!["size=1024".into()],
            },
        ];
        let s = build(
            &t,
            &busybox(),
            Path::new("/s"),
            "/c",
            &RootfsFiles::default(),
        )
        .unwrap();
        let v = serde_json::to_value(&s).unwrap();
        let mounts = v["mounts"].as_array().unwrap();
        let at = |dst: &str| mounts.iter().position(|m| m["destination"] == dst).unwrap();
        assert!(at("/run") < at("/run/secrets"));
        assert_eq!(at("/run/secrets") + 1, at("/cache"));
        assert_eq!(at("/cache"), mounts.len() - 1);
        let secrets = &mounts[at("/run/secrets")];
        assert_eq!(secrets["source"], "/state/payloads/t1/secrets");
        assert_eq!(secrets["options"], serde_json::json!(["rbind", "ro"]));
        assert_eq!(mounts[at("/cache")]["type"], "tmpfs");
    }

    #[test]
    fn spec_has_hostname_namespaces_mounts_and_docker_caps() {
        let mut t = task();
        t.netns = Some(PathBuf::from("/var/run/netns/shoal-t1"));
        let s = build(
            &t,
            &busybox(),
            Path::new("/state/c1"),
            "/shoal/c1",
            &RootfsFiles::default(),
        )
        .unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["hostname"], "api.1");
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(v["process"]["args"], serde_json::json!(["sh"]));
        assert_eq!(v["process"]["cwd"], "/");
        assert_eq!(v["linux"]["cgroupsPath"], "/shoal/c1");
        let nss = v["linux"]["namespaces"].as_array().unwrap();
        let types: Vec<&str> = nss.iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["pid", "ipc", "uts", "mount", "network"]);
        assert_eq!(nss[4]["path"], "/var/run/netns/shoal-t1");
        let mounts = v["mounts"].as_array().unwrap();
        let resolv = mounts
            .iter()
            .find(|m| m["destination"] == "/etc/resolv.conf")
            .unwrap();
        assert_eq!(resolv["source"], "/state/c1/resolv.conf");
        assert_eq!(resolv["type"], "bind");
        for dst in [
            "/proc",
            "/sys",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/etc/hosts",
        ] {
            assert!(mounts.iter().any(|m| m["destination"] == dst), "{dst}");
        }
        let caps = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert_eq!(caps.len(), 14);
        assert!(caps.iter().any(|c| c == "CAP_NET_RAW"));
        assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        assert!(v["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/proc/kcore"));
    }

    #[test]
    fn without_a_netns_path_the_container_gets_a_new_one() {
        let s = build(
            &task(),
            &busybox(),
            Path::new("/s"),
            "/shoal/c1",
            &RootfsFiles::default(),
        )
        .unwrap();
        let v = serde_json::to_value(&s).unwrap();
        let net = &v["linux"]["namespaces"][4];
        assert_eq!(net["type"], "network");
        assert!(net.get("path").is_none());
    }
}
