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
//! Command line, Swarm's way: `command` replaces the image's entrypoint (and then the image's
//! cmd is dropped); `args` replaces the image's cmd.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

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

/// The image's `User` as uid/gid. Numeric ids and `root` only: names would need the
/// image's `/etc/passwd`, which the agent does not read (yet).
pub fn parse_user(id: &str, user: &str) -> Result<(u32, u32), RuntimeError> {
    let bad = || RuntimeError::InvalidSpec {
        id: id.to_string(),
        reason: format!(
            "image user {user:?} is not supported; Shoal takes numeric uid[:gid] or root"
        ),
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid = match u {
        "" | "root" => 0,
        n => n.parse().map_err(|_| bad())?,
    };
    let gid = match g {
        None => uid,
        Some("root") => 0,
        Some(n) => n.parse().map_err(|_| bad())?,
    };
    Ok((uid, gid))
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
/// `cgroups_path` is e.g. `/shoal/<id>`.
pub fn build(
    spec: &ContainerSpec,
    image: &ImageConfig,
    state_dir: &Path,
    cgroups_path: &str,
) -> Result<Spec, RuntimeError> {
    let id = spec.id.as_str();
    let e = |err| oci_err(id, err);
    if spec.hostname.is_empty() {
        return Err(RuntimeError::InvalidSpec {
            id: id.to_string(),
            reason: "hostname is empty".to_string(),
        });
    }
    let (uid, gid) = parse_user(id, &image.user)?;
    let caps: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()
        .map_err(e)?;
    let cwd = if image.working_dir.is_empty() {
        "/".to_string()
    } else {
        image.working_dir.clone()
    };
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
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
        .no_new_privileges(false)
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

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(cgroups_path)
        .resources(
            LinuxResourcesBuilder::default()
                .devices(vec![LinuxDeviceCgroupBuilder::default()
                    .allow(false)
                    .access("rwm")
                    .build()
                    .map_err(e)?])
                .build()
                .map_err(e)?,
        )
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

    SpecBuilder::default()
        .version("1.0.2-dev")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
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

    #[test]
    fn users_are_numeric_or_root() {
        assert_eq!(parse_user("c", "").unwrap(), (0, 0));
        assert_eq!(parse_user("c", "root").unwrap(), (0, 0));
        assert_eq!(parse_user("c", "1000").unwrap(), (1000, 1000));
        assert_eq!(parse_user("c", "1000:50").unwrap(), (1000, 50));
        assert!(parse_user("c", "www-data").is_err());
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
    fn spec_has_hostname_namespaces_mounts_and_docker_caps() {
        let mut t = task();
        t.netns = Some(PathBuf::from("/var/run/netns/shoal-t1"));
        let s = build(&t, &busybox(), Path::new("/state/c1"), "/shoal/c1").unwrap();
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
        let s = build(&task(), &busybox(), Path::new("/s"), "/shoal/c1").unwrap();
        let v = serde_json::to_value(&s).unwrap();
        let net = &v["linux"]["namespaces"][4];
        assert_eq!(net["type"], "network");
        assert!(net.get("path").is_none());
    }
}
