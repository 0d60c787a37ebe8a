//! Docker-style flags turned into objects: `service create` flags into a [`Service`],
//! `network create` flags into a [`Network`], `node update` flags applied to a [`Node`].
//!
//! Pure functions, no I/O (except reading `$K` for `-e K`). Every error names the flag and
//! the value it did not understand, and says what would be accepted. Validation of the
//! resulting object (ranges, DNS names, port clashes) is the server's; these functions check
//! only what the flag syntax itself decides.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use shoal_api_types::capabilities;
use shoal_api_types::{
    Constraint, EndpointMode, HealthCheck, Network, NetworkAttachmentConfig, NetworkSpec, Node,
    NodeAvailability, Placement, PortConfig, Protocol, PublishMode, RestartCondition,
    RestartPolicy, SeccompMode, Service, ServiceMode, ServiceSpec,
};
use shoal_api_types::{Cpus, Memory, ResourceLimits, ResourceReservations, Resources};

use crate::args::{
    AvailabilityFlag, EndpointModeFlag, ModeFlag, NetworkCreateArgs, NodeUpdateArgs,
    RestartConditionFlag, ServiceCreateArgs,
};

/// Parses one `-p/--publish` value: `PUBLISHED:TARGET[/tcp|udp]` or
/// `published=P,target=T[,protocol=tcp|udp][,mode=ingress|host]`.
pub fn parse_publish(value: &str) -> Result<PortConfig, String> {
    let err = |why: String| format!("--publish {value:?}: {why}");
    if value.contains('=') {
        let mut port = PortConfig::default();
        let (mut published, mut target) = (None, None);
        for field in value.split(',') {
            let (key, val) = field
                .split_once('=')
                .ok_or_else(|| err(format!("{field:?} is not key=value")))?;
            match key.trim() {
                "published" => {
                    published =
                        Some(parse_port_number(val).map_err(|e| err(format!("published: {e}")))?)
                }
                "target" => {
                    target = Some(parse_port_number(val).map_err(|e| err(format!("target: {e}")))?)
                }
                "protocol" => port.protocol = parse_protocol(val).map_err(err)?,
                "mode" => {
                    port.mode = match val.trim() {
                        "ingress" => PublishMode::Ingress,
                        "host" => PublishMode::Host,
                        other => {
                            return Err(err(format!("mode {other:?} must be ingress or host")))
                        }
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown key {other:?} (use published, target, protocol and mode)"
                    )))
                }
            }
        }
        port.target = target.ok_or_else(|| err("target= is required".into()))?;
        port.published = published.ok_or_else(|| {
            err("published= is required (Shoal does not pick published ports)".into())
        })?;
        return Ok(port);
    }
    let (ports, protocol) = match value.split_once('/') {
        Some((ports, proto)) => (ports, parse_protocol(proto).map_err(err)?),
        None => (value, Protocol::Tcp),
    };
    let (published, target) = ports.split_once(':').ok_or_else(|| {
        err("use PUBLISHED:TARGET[/udp] (e.g. 8080:80) or published=8080,target=80[,protocol=udp][,mode=host]".into())
    })?;
    Ok(PortConfig {
        published: parse_port_number(published).map_err(|e| err(format!("published port: {e}")))?,
        target: parse_port_number(target).map_err(|e| err(format!("target port: {e}")))?,
        protocol,
        mode: PublishMode::Ingress,
    })
}

fn parse_port_number(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a port number"))?;
    if !(1..=65535).contains(&n) {
        return Err(format!("{n} is not 1-65535"));
    }
    Ok(n)
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        other => Err(format!("protocol {other:?} must be tcp or udp")),
    }
}

/// Parses one `--network` value: `NAME` or `name=NAME[,alias=A]...`.
pub fn parse_network(value: &str) -> Result<NetworkAttachmentConfig, String> {
    let err = |why: String| format!("--network {value:?}: {why}");
    if !value.contains('=') {
        if value.is_empty() || value.contains(',') {
            return Err(err("use NAME or name=NAME,alias=ALIAS".into()));
        }
        return Ok(NetworkAttachmentConfig {
            name: value.to_string(),
            aliases: vec![],
        });
    }
    let mut att = NetworkAttachmentConfig::default();
    for field in value.split(',') {
        match field.split_once('=') {
            Some(("name" | "target", v)) => att.name = v.to_string(),
            Some(("alias", v)) => att.aliases.push(v.to_string()),
            _ => return Err(err(format!("{field:?} is not name=... or alias=..."))),
        }
    }
    if att.name.is_empty() {
        return Err(err("name= is required".into()));
    }
    Ok(att)
}

/// Parses `KEY=VALUE` for `flag` (the value may be empty; the key may not).
pub fn parse_key_value(flag: &str, value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{flag} {value:?}: use KEY=VALUE")),
    }
}

/// Parses `-e K=V`, or `-e K` taking the value of `K` from `lookup` (the environment).
pub fn parse_env(
    value: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some(("", _)) => Err(format!("--env {value:?}: the name is empty")),
        Some((k, v)) => Ok((k.to_string(), v.to_string())),
        None if value.is_empty() => Err("--env \"\": the name is empty".into()),
        None => lookup(value).map(|v| (value.to_string(), v)).ok_or_else(|| {
            format!("--env {value:?}: no value given and ${value} is not set here (use --env {value}=VALUE)")
        }),
    }
}

fn seconds(d: Duration) -> u32 {
    d.as_secs().min(u32::MAX as u64) as u32
}

/// Builds the Service that `service create` asks for. `lookup_env` resolves `-e K`.
pub fn service_from_args(
    a: &ServiceCreateArgs,
    lookup_env: impl Fn(&str) -> Option<String>,
) -> Result<Service> {
    let mode = match a.mode {
        Some(ModeFlag::Global) => ServiceMode::Global,
        _ => ServiceMode::Replicated,
    };
    if mode == ServiceMode::Global && a.replicas.is_some() {
        bail!("--replicas cannot be used with --mode global (a global service runs one task on every eligible node)");
    }
    if let Some(r) = a.replicas.filter(|r| *r < 0) {
        bail!("--replicas {r}: must be 0 or more");
    }
    let mut spec = ServiceSpec {
        image: a.image.clone(),
        args: a.args.clone(),
        mode,
        replicas: match mode {
            ServiceMode::Replicated => Some(a.replicas.unwrap_or(1)),
            ServiceMode::Global => None,
        },
        endpoint_mode: match a.endpoint_mode {
            Some(EndpointModeFlag::Dnsrr) => EndpointMode::Dnsrr,
            _ => EndpointMode::Vip,
        },
        ..Default::default()
    };
    if let Some(ep) = &a.entrypoint {
        spec.command = ep.split_whitespace().map(str::to_string).collect();
        if spec.command.is_empty() {
            bail!("--entrypoint: must not be empty");
        }
    }
    for n in &a.networks {
        spec.networks
            .push(parse_network(n).map_err(anyhow::Error::msg)?);
    }
    for p in &a.publish {
        spec.ports
            .push(parse_publish(p).map_err(anyhow::Error::msg)?);
    }
    for c in &a.constraints {
        c.parse::<Constraint>()
            .map_err(|e| anyhow::anyhow!("--constraint {c:?}: {e}"))?;
    }
    spec.placement = Placement {
        constraints: a.constraints.clone(),
    };
    for e in &a.env {
        let (k, v) = parse_env(e, &lookup_env).map_err(anyhow::Error::msg)?;
        spec.env.insert(k, v);
    }
    spec.restart_policy = RestartPolicy {
        condition: match a.restart_condition {
            Some(RestartConditionFlag::OnFailure) => RestartCondition::OnFailure,
            Some(RestartConditionFlag::None) => RestartCondition::None,
            _ => RestartCondition::Any,
        },
        delay_seconds: a.restart_delay.map(seconds),
        max_attempts: a.restart_max_attempts,
    };
    spec.stop_grace_period_seconds = a.stop_grace_period.map(seconds);
    let health_tuned = a.health_interval.is_some()
        || a.health_timeout.is_some()
        || a.health_retries.is_some()
        || a.health_start_period.is_some();
    match &a.health_cmd {
        Some(cmd) => {
            spec.healthcheck = Some(HealthCheck {
                command: vec!["sh".into(), "-c".into(), cmd.clone()],
                interval_seconds: a.health_interval.map(seconds),
                timeout_seconds: a.health_timeout.map(seconds),
                retries: a.health_retries,
                start_period_seconds: a.health_start_period.map(seconds),
            })
        }
        None if health_tuned => bail!("--health-interval, --health-timeout, --health-retries and --health-start-period need --health-cmd"),
        None => {}
    }
    container_settings(a, &mut spec)?;
    let mut svc = Service::new(a.name.clone(), spec);
    svc.metadata.labels = labels("--label", &a.labels)?;
    Ok(svc)
}

/// `--user`, `--workdir`, `--read-only`, `--cap-add`, `--cap-drop`, `--security-opt` and the
/// `--limit-*` / `--reserve-*` flags, as Docker names them.
fn container_settings(a: &ServiceCreateArgs, spec: &mut ServiceSpec) -> Result<()> {
    spec.user = a.user.clone().unwrap_or_default();
    spec.working_dir = a.workdir.clone().unwrap_or_default();
    spec.read_only_root_filesystem = a.read_only;
    for (flag, names, out) in [
        ("--cap-add", &a.cap_add, &mut spec.cap_add),
        ("--cap-drop", &a.cap_drop, &mut spec.cap_drop),
    ] {
        for name in names {
            if capabilities::canonical(name).is_none() {
                bail!(
                    "{flag} {name:?}: not a Linux capability (e.g. NET_ADMIN, CAP_SYS_TIME or ALL)"
                );
            }
            out.push(name.clone());
        }
    }
    for opt in &a.security_opts {
        spec.seccomp = match opt.split_once(['=', ':']) {
            Some(("seccomp", "unconfined")) => SeccompMode::Unconfined,
            Some(("seccomp", "default")) => SeccompMode::Default,
            Some(("seccomp", other)) => bail!(
                "--security-opt {opt:?}: seccomp takes unconfined or default (custom profiles are not supported, got {other:?})"
            ),
            _ => bail!("--security-opt {opt:?}: the supported option is seccomp=unconfined"),
        };
    }
    let cpus = |flag: &str, v: &Option<String>| -> Result<Option<Cpus>> {
        v.as_deref()
            .map(|s| {
                s.parse::<Cpus>()
                    .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
            })
            .transpose()
    };
    let memory = |flag: &str, v: &Option<String>| -> Result<Option<Memory>> {
        v.as_deref()
            .map(|s| {
                s.parse::<Memory>()
                    .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
            })
            .transpose()
    };
    spec.resources = Resources {
        limits: ResourceLimits {
            cpus: cpus("--limit-cpu", &a.limit_cpu)?,
            memory: memory("--limit-memory", &a.limit_memory)?,
            pids: a.limit_pids,
        },
        reservations: ResourceReservations {
            cpus: cpus("--reserve-cpu", &a.reserve_cpu)?,
            memory: memory("--reserve-memory", &a.reserve_memory)?,
        },
    };
    Ok(())
}

fn labels(flag: &str, values: &[String]) -> Result<BTreeMap<String, String>> {
    values
        .iter()
        .map(|v| parse_key_value(flag, v).map_err(anyhow::Error::msg))
        .collect()
}

/// Builds the Network that `network create` asks for.
pub fn network_from_args(a: &NetworkCreateArgs) -> Result<Network> {
    if a.driver != "overlay" {
        bail!("--driver {:?}: only the overlay driver exists", a.driver);
    }
    if a.gateway.is_some() && a.subnet.is_none() {
        bail!("--gateway needs --subnet (a gateway only makes sense inside a chosen subnet)");
    }
    let spec = NetworkSpec {
        driver: a.driver.clone(),
        subnet: a.subnet.clone(),
        gateway: a.gateway.clone(),
        attachable: a.attachable,
        internal: a.internal,
        ingress: false,
        mtu: a.mtu,
        labels: labels("--label", &a.labels)?,
    };
    Ok(Network::new(a.name.clone(), spec))
}

/// Checks `node update` flags before anything is read from the server.
pub fn check_node_update(a: &NodeUpdateArgs) -> Result<()> {
    if a.label_add.is_empty() && a.label_rm.is_empty() && a.availability.is_none() {
        bail!("nothing to change: use --label-add KEY=VALUE, --label-rm KEY or --availability active|pause|drain");
    }
    for l in &a.label_add {
        parse_key_value("--label-add", l).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// Applies `node update` flags to a node read from the server. Removing a label the node
/// does not have is an error, as in Docker.
pub fn update_node(node: &mut Node, a: &NodeUpdateArgs) -> Result<()> {
    for l in &a.label_add {
        let (k, v) = parse_key_value("--label-add", l).map_err(anyhow::Error::msg)?;
        node.spec.labels.insert(k, v);
    }
    for k in &a.label_rm {
        if node.spec.labels.remove(k).is_none() {
            bail!("--label-rm {k:?}: node {} has no such label", node.name());
        }
    }
    if let Some(av) = a.availability {
        node.spec.availability = match av {
            AvailabilityFlag::Active => NodeAvailability::Active,
            AvailabilityFlag::Pause => NodeAvailability::Pause,
            AvailabilityFlag::Drain => NodeAvailability::Drain,
        };
    }
    Ok(())
}

/// Parses one `service scale` target, `NAME=REPLICAS`.
pub fn parse_scale(value: &str) -> Result<(String, i64)> {
    let Some((name, n)) = value.split_once('=') else {
        bail!("{value:?}: use SERVICE=REPLICAS (e.g. api=3)");
    };
    if name.is_empty() {
        bail!("{value:?}: the service name is empty (use SERVICE=REPLICAS)");
    }
    match n.trim().parse::<i64>() {
        Ok(r) if r >= 0 => Ok((name.to_string(), r)),
        _ => bail!("{value:?}: {n:?} is not a number of replicas (0 or more)"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command, NetworkCommand, NodeCommand, ServiceCommand};

    fn create_args(argv: &[&str]) -> ServiceCreateArgs {
        let mut full = vec!["shoal", "service", "create"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Service(ServiceCommand::Create(a)) => *a,
            other => panic!("{other:?}"),
        }
    }

    fn service(argv: &[&str]) -> Result<Service> {
        service_from_args(&create_args(argv), |k| {
            (k == "HOME_ISH").then(|| "/root".to_string())
        })
    }

    fn error(argv: &[&str]) -> String {
        format!("{:#}", service(argv).unwrap_err())
    }

    #[test]
    fn service_flags_build_the_whole_spec() {
        let s = service(&[
            "--name",
            "api",
            "--replicas",
            "3",
            "--network",
            "appnet",
            "--network",
            "name=backend,alias=db,alias=pg",
            "-p",
            "8080:80",
            "-p",
            "53:53/udp",
            "--publish",
            "published=9000,target=90,mode=host",
            "--endpoint-mode",
            "vip",
            "--constraint",
            "node.labels.zone==a",
            "-e",
            "A=1",
            "-e",
            "HOME_ISH",
            "--label",
            "team=core",
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "5s",
            "--restart-max-attempts",
            "3",
            "--stop-grace-period",
            "30s",
            "busybox:latest",
            "sleep",
            "1000",
        ])
        .unwrap();
        assert_eq!(s.metadata.name, "api");
        assert_eq!(
            s.metadata.labels,
            BTreeMap::from([("team".into(), "core".into())])
        );
        let spec = &s.spec;
        assert_eq!(spec.image, "busybox:latest");
        assert!(spec.command.is_empty());
        assert_eq!(spec.args, vec!["sleep", "1000"]);
        assert_eq!(spec.mode, ServiceMode::Replicated);
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(
            spec.networks[0],
            NetworkAttachmentConfig {
                name: "appnet".into(),
                aliases: vec![]
            }
        );
        assert_eq!(
            spec.networks[1],
            NetworkAttachmentConfig {
                name: "backend".into(),
                aliases: vec!["db".into(), "pg".into()]
            }
        );
        assert_eq!(
            spec.ports,
            vec![
                PortConfig {
                    published: 8080,
                    target: 80,
                    protocol: Protocol::Tcp,
                    mode: PublishMode::Ingress
                },
                PortConfig {
                    published: 53,
                    target: 53,
                    protocol: Protocol::Udp,
                    mode: PublishMode::Ingress
                },
                PortConfig {
                    published: 9000,
                    target: 90,
                    protocol: Protocol::Tcp,
                    mode: PublishMode::Host
                },
            ]
        );
        assert_eq!(spec.placement.constraints, vec!["node.labels.zone==a"]);
        assert_eq!(spec.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(spec.env.get("HOME_ISH").map(String::as_str), Some("/root"));
        assert_eq!(spec.restart_policy.condition, RestartCondition::OnFailure);
        assert_eq!(spec.restart_policy.delay_seconds, Some(5));
        assert_eq!(spec.restart_policy.max_attempts, Some(3));
        assert_eq!(spec.stop_grace_period_seconds, Some(30));
    }

    #[test]
    fn container_flags_build_the_settings_and_resources() {
        let s = service(&[
            "--name",
            "api",
            "-u",
            "1000:1000",
            "-w",
            "/srv",
            "--read-only",
            "--cap-add",
            "net_admin",
            "--cap-add",
            "CAP_SYS_TIME",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "seccomp=unconfined",
            "--limit-cpu",
            "0.5",
            "--limit-memory",
            "64M",
            "--limit-pids",
            "100",
            "--reserve-cpu",
            "250m",
            "--reserve-memory",
            "32Mi",
            "busybox",
        ])
        .unwrap();
        let spec = &s.spec;
        assert_eq!(spec.user, "1000:1000");
        assert_eq!(spec.working_dir, "/srv");
        assert!(spec.read_only_root_filesystem);
        assert_eq!(spec.cap_add, ["net_admin", "CAP_SYS_TIME"]);
        assert_eq!(spec.cap_drop, ["ALL"]);
        assert_eq!(spec.seccomp, SeccompMode::Unconfined);
        assert_eq!(spec.resources.limits.cpus, Some(Cpus(500)));
        assert_eq!(spec.resources.limits.memory, Some(Memory(64 << 20)));
        assert_eq!(spec.resources.limits.pids, Some(100));
        assert_eq!(spec.resources.reservations.cpus, Some(Cpus(250)));
        assert_eq!(spec.resources.reservations.memory, Some(Memory(32 << 20)));
        // `service inspect` prints the spec: the settings are there, as the API spells them.
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["spec"]["user"], "1000:1000");
        assert_eq!(v["spec"]["workingDir"], "/srv");
        assert_eq!(v["spec"]["readOnlyRootFilesystem"], true);
        assert_eq!(v["spec"]["capAdd"][0], "net_admin");
        assert_eq!(v["spec"]["seccomp"], "unconfined");
        assert_eq!(v["spec"]["resources"]["limits"]["memory"], "64Mi");
        assert_eq!(v["spec"]["resources"]["limits"]["cpus"], 0.5);
        // Defaults: nothing set, the default profile.
        let s = service(&["--name", "api", "busybox"]).unwrap();
        assert_eq!(s.spec.seccomp, SeccompMode::Default);
        assert_eq!(s.spec.resources, Resources::default());
        assert!(!s.spec.read_only_root_filesystem && s.spec.user.is_empty());
    }

    #[test]
    fn bad_container_flags_name_the_flag() {
        for (argv, want) in [
            (
                &["--cap-add", "NET_ADMINS"][..],
                "--cap-add \"NET_ADMINS\": not a Linux capability",
            ),
            (
                &["--cap-drop", "nope"][..],
                "--cap-drop \"nope\": not a Linux capability",
            ),
            (
                &["--security-opt", "apparmor=x"][..],
                "--security-opt \"apparmor=x\": the supported option is seccomp=unconfined",
            ),
            (
                &["--security-opt", "seccomp=/p.json"][..],
                "seccomp takes unconfined or default",
            ),
            (
                &["--limit-memory", "lots"][..],
                "--limit-memory: \"lots\" is not a memory size",
            ),
            (
                &["--limit-cpu", "1x"][..],
                "--limit-cpu: \"1x\" is not a CPU quantity",
            ),
            (&["--reserve-memory", "1x"][..], "--reserve-memory:"),
        ] {
            let mut full = vec!["--name", "api"];
            full.extend_from_slice(argv);
            full.push("busybox");
            let e = error(&full);
            assert!(e.contains(want), "{argv:?}: {e}");
        }
    }

    #[test]
    fn service_defaults_to_one_replica_and_global_has_none() {
        let s = service(&["--name", "api", "busybox"]).unwrap();
        assert_eq!(s.spec.replicas, Some(1));
        assert!(s.spec.args.is_empty());
        let s = service(&["--name", "mon", "--mode", "global", "busybox"]).unwrap();
        assert_eq!(s.spec.mode, ServiceMode::Global);
        assert_eq!(s.spec.replicas, None);
    }

    #[test]
    fn entrypoint_becomes_the_command() {
        let s = service(&[
            "--name",
            "api",
            "--entrypoint",
            "/bin/sh -c",
            "busybox",
            "echo hi",
        ])
        .unwrap();
        assert_eq!(s.spec.command, vec!["/bin/sh", "-c"]);
        assert_eq!(s.spec.args, vec!["echo hi"]);
    }

    #[test]
    fn health_flags_build_a_shell_check() {
        let s = service(&[
            "--name",
            "api",
            "--health-cmd",
            "wget -q localhost",
            "--health-interval",
            "2s",
            "busybox",
        ])
        .unwrap();
        let hc = s.spec.healthcheck.unwrap();
        assert_eq!(hc.command, vec!["sh", "-c", "wget -q localhost"]);
        assert_eq!(hc.interval_seconds, Some(2));
        assert!(
            error(&["--name", "api", "--health-retries", "2", "busybox"])
                .contains("need --health-cmd")
        );
    }

    #[test]
    fn bad_publish_forms_name_the_flag_and_the_fix() {
        let e = error(&["--name", "api", "-p", "8080", "busybox"]);
        assert!(
            e.starts_with("--publish \"8080\": use PUBLISHED:TARGET"),
            "{e}"
        );
        let e = error(&["--name", "api", "-p", "70000:80", "busybox"]);
        assert_eq!(
            e,
            "--publish \"70000:80\": published port: 70000 is not 1-65535"
        );
        let e = error(&["--name", "api", "-p", "80:http", "busybox"]);
        assert_eq!(
            e,
            "--publish \"80:http\": target port: \"http\" is not a port number"
        );
        let e = error(&["--name", "api", "-p", "53:53/sctp", "busybox"]);
        assert_eq!(
            e,
            "--publish \"53:53/sctp\": protocol \"sctp\" must be tcp or udp"
        );
        let e = error(&[
            "--name",
            "api",
            "--publish",
            "published=8080,target=80,mode=bridge",
            "busybox",
        ]);
        assert_eq!(e, "--publish \"published=8080,target=80,mode=bridge\": mode \"bridge\" must be ingress or host");
        let e = error(&["--name", "api", "--publish", "target=80", "busybox"]);
        assert!(e.contains("published= is required"), "{e}");
        let e = error(&[
            "--name",
            "api",
            "--publish",
            "published=1,target=2,colour=red",
            "busybox",
        ]);
        assert!(e.contains("unknown key \"colour\""), "{e}");
    }

    #[test]
    fn other_bad_flags_name_the_flag() {
        assert!(
            error(&["--name", "a", "--mode", "global", "--replicas", "2", "x"])
                .starts_with("--replicas cannot")
        );
        assert_eq!(
            error(&["--name", "a", "--replicas", "-1", "x"]),
            "--replicas -1: must be 0 or more"
        );
        let e = error(&["--name", "a", "--constraint", "node.colour==red", "x"]);
        assert!(e.starts_with("--constraint \"node.colour==red\": "), "{e}");
        let e = error(&["--name", "a", "-e", "UNSET_VAR", "x"]);
        assert!(e.starts_with("--env \"UNSET_VAR\": no value given"), "{e}");
        assert_eq!(
            error(&["--name", "a", "--label", "novalue", "x"]),
            "--label \"novalue\": use KEY=VALUE"
        );
        assert!(error(&["--name", "a", "--network", "alias=x", "x"]).contains("name= is required"));
    }

    #[test]
    fn network_flags_build_the_spec() {
        let argv = [
            "shoal",
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.1.2.0/24",
            "--gateway",
            "10.1.2.1",
            "--attachable",
            "--internal",
            "--label",
            "env=prod",
            "--mtu",
            "1400",
            "appnet",
        ];
        let Command::Network(NetworkCommand::Create(a)) =
            Cli::try_parse_from(argv).unwrap().command
        else {
            panic!()
        };
        let n = network_from_args(&a).unwrap();
        assert_eq!(n.metadata.name, "appnet");
        assert_eq!(
            n.spec,
            NetworkSpec {
                driver: "overlay".into(),
                subnet: Some("10.1.2.0/24".into()),
                gateway: Some("10.1.2.1".into()),
                attachable: true,
                internal: true,
                ingress: false,
                mtu: Some(1400),
                labels: BTreeMap::from([("env".into(), "prod".into())]),
            }
        );
        let Command::Network(NetworkCommand::Create(a)) =
            Cli::try_parse_from(["shoal", "network", "create", "-d", "bridge", "n"])
                .unwrap()
                .command
        else {
            panic!()
        };
        assert!(network_from_args(&a)
            .unwrap_err()
            .to_string()
            .contains("only the overlay driver"));
        let Command::Network(NetworkCommand::Create(a)) =
            Cli::try_parse_from(["shoal", "network", "create", "n"])
                .unwrap()
                .command
        else {
            panic!()
        };
        assert_eq!(network_from_args(&a).unwrap().spec.subnet, None);
    }

    #[test]
    fn node_update_adds_and_removes_labels() {
        let argv = [
            "shoal",
            "node",
            "update",
            "--label-add",
            "zone=a",
            "--label-rm",
            "old",
            "--availability",
            "drain",
            "n1",
        ];
        let Command::Node(NodeCommand::Update(a)) = Cli::try_parse_from(argv).unwrap().command
        else {
            panic!()
        };
        check_node_update(&a).unwrap();
        let mut node = Node::new("n1", Default::default());
        node.spec.labels.insert("old".into(), "x".into());
        update_node(&mut node, &a).unwrap();
        assert_eq!(
            node.spec.labels,
            BTreeMap::from([("zone".into(), "a".into())])
        );
        assert_eq!(node.spec.availability, NodeAvailability::Drain);
        let err = update_node(&mut node, &a).unwrap_err().to_string();
        assert!(err.contains("has no such label"), "{err}");
        let Command::Node(NodeCommand::Update(a)) =
            Cli::try_parse_from(["shoal", "node", "update", "n1"])
                .unwrap()
                .command
        else {
            panic!()
        };
        assert!(check_node_update(&a)
            .unwrap_err()
            .to_string()
            .starts_with("nothing to change"));
    }

    #[test]
    fn scale_targets_parse_and_reject_bad_forms() {
        assert_eq!(parse_scale("api=3").unwrap(), ("api".into(), 3));
        assert!(parse_scale("api")
            .unwrap_err()
            .to_string()
            .contains("SERVICE=REPLICAS"));
        assert!(parse_scale("api=-1")
            .unwrap_err()
            .to_string()
            .contains("is not a number of replicas"));
        assert!(parse_scale("=2").is_err());
    }

    /// A cheap fuzz: strings built from the characters these parsers care about never
    /// panic, and whatever parses is in range.
    #[test]
    fn flag_parsers_never_panic_on_arbitrary_input() {
        const ALPHABET: &[u8] = b"0123456789:/=,.-abdehilmnoprstuvcgyTPU \xff";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let s: String = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize] as char)
                .collect();
            if let Ok(p) = parse_publish(&s) {
                assert!(
                    (1..=65535).contains(&p.published) && (1..=65535).contains(&p.target),
                    "{s:?}"
                );
            }
            let _ = parse_network(&s);
            let _ = parse_env(&s, |_| None);
            let _ = parse_key_value("--label", &s);
            let _ = parse_scale(&s);
            let _ = crate::args::parse_duration(&s);
        }
    }
}
