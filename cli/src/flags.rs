//! Docker-style flags turned into objects: `service create` flags into a [`Service`],
//! `service update` flags applied to a [`Service`], `network create` flags into a
//! [`Network`], `node update` flags applied to a [`Node`].
//!
//! Pure functions, no I/O (except reading `$K` for `-e K`). Every error names the flag and
//! the value it did not understand, and says what would be accepted. Validation of the
//! resulting object (ranges, DNS names, port clashes) is the server's; these functions check
//! only what the flag syntax itself decides.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use shoal_api_types::capabilities;
use shoal_api_types::service::DEFAULT_FILE_MODE;
use shoal_api_types::{ConfigReference, Mount, MountType, SecretReference};
use shoal_api_types::{
    Constraint, EndpointMode, HealthCheck, Network, NetworkAttachmentConfig, NetworkSpec, Node,
    NodeAvailability, Placement, PortConfig, Protocol, PublishMode, RestartCondition,
    RestartPolicy, SeccompMode, Service, ServiceMode, ServiceSpec, TrafficPolicy,
};
use shoal_api_types::{Cpus, Memory, ResourceLimits, ResourceReservations, Resources};

use shoal_api_types::update::{
    FailureAction, HumanDuration, Ratio, UpdateConfig, UpdateOrder, MAX_UPDATE_PERIOD,
};

use crate::args::{
    AvailabilityFlag, EndpointModeFlag, FailureActionFlag, FileFlags, FileUpdateFlags,
    LifecycleFlags, ModeFlag, NetworkCreateArgs, NodeUpdateArgs, RestartConditionFlag,
    RollbackFailureActionFlag, ServiceCreateArgs, ServiceUpdateArgs, UpdateOrderFlag,
    UpdatePolicyFlags, WaitArgs,
};

/// Parses one `-p/--publish` value: `PUBLISHED:TARGET[/tcp|udp]` or
/// `published=P,target=T[,protocol=tcp|udp][,mode=ingress|host][,traffic=cluster|local]`
/// `[,health-port=H]` (the server checks that traffic and health-port fit the mode).
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
                "traffic" => {
                    port.traffic = match val.trim() {
                        "cluster" => TrafficPolicy::Cluster,
                        "local" => TrafficPolicy::Local,
                        other => {
                            return Err(err(format!("traffic {other:?} must be cluster or local")))
                        }
                    }
                }
                "health-port" | "healthPort" => {
                    port.health_port = Some(
                        parse_port_number(val).map_err(|e| err(format!("health-port: {e}")))?,
                    )
                }
                other => {
                    return Err(err(format!(
                        "unknown key {other:?} (use published, target, protocol, mode, traffic and health-port)"
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
        ..Default::default()
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

/// Splits `value` into words as a POSIX shell would for plain words: whitespace separates,
/// '...' quotes literally, "..." quotes with `\"` and `\\` escapes, and `\` outside quotes
/// escapes the next character. No expansion of variables, globs or `~`.
pub fn split_words(flag: &str, value: &str) -> Result<Vec<String>, String> {
    let mut words = vec![];
    let mut word: Option<String> = None;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("{flag} {value:?}: unterminated ' quote")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err(format!("{flag} {value:?}: unterminated \" quote")),
                        },
                        Some(c) => w.push(c),
                        None => return Err(format!("{flag} {value:?}: unterminated \" quote")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err(format!("{flag} {value:?}: a trailing \\ escapes nothing")),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// Parses one `--publish-rm` value, `PUBLISHED[/tcp|udp]`, into the published port and
/// protocol that identify the port to remove.
pub fn parse_publish_rm(value: &str) -> Result<(u32, Protocol), String> {
    let err = |why: String| format!("--publish-rm {value:?}: {why}");
    let (port, protocol) = match value.split_once('/') {
        Some((port, proto)) => (port, parse_protocol(proto).map_err(err)?),
        None => (value, Protocol::Tcp),
    };
    let port = parse_port_number(port).map_err(|e| {
        err(format!(
            "{e} (use PUBLISHED[/tcp|udp], e.g. 8080 or 53/udp)"
        ))
    })?;
    Ok((port, protocol))
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
        ..Default::default()
    };
    for e in &a.env {
        let (k, v) = parse_env(e, &lookup_env).map_err(anyhow::Error::msg)?;
        spec.env.insert(k, v);
    }
    spec.restart_policy = RestartPolicy {
        condition: match a.lifecycle.restart_condition {
            Some(RestartConditionFlag::OnFailure) => RestartCondition::OnFailure,
            Some(RestartConditionFlag::None) => RestartCondition::None,
            _ => RestartCondition::Any,
        },
        delay_seconds: a.lifecycle.restart_delay.map(seconds),
        max_attempts: a.lifecycle.restart_max_attempts,
    };
    spec.stop_grace_period_seconds = a.lifecycle.stop_grace_period.map(seconds);
    let health_tuned = a.lifecycle.health_interval.is_some()
        || a.lifecycle.health_timeout.is_some()
        || a.lifecycle.health_retries.is_some()
        || a.lifecycle.health_start_period.is_some();
    match &a.lifecycle.health_cmd {
        Some(cmd) => {
            spec.healthcheck = Some(HealthCheck {
                command: vec!["sh".into(), "-c".into(), cmd.clone()],
                interval_seconds: a.lifecycle.health_interval.map(seconds),
                timeout_seconds: a.lifecycle.health_timeout.map(seconds),
                retries: a.lifecycle.health_retries,
                start_period_seconds: a.lifecycle.health_start_period.map(seconds),
            })
        }
        None if health_tuned => bail!("--health-interval, --health-timeout, --health-retries and --health-start-period need --health-cmd"),
        None => {}
    }
    container_settings(a, &mut spec)?;
    apply_update_policy(&mut spec, &a.policy)?;
    apply_file_flags(&mut spec, &a.files)?;
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
        spec.seccomp = security_opt(opt)?;
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

/// Applies `service update` flags to a service read from the server, removals before
/// additions as in Docker. Fails, naming the flag and the value, on input it does not
/// understand or on removing what the service does not have; the caller then writes
/// nothing. `lookup_env` resolves `--env-add K`. Whether anything changed is the caller's
/// comparison of before and after.
pub fn update_service(
    svc: &mut Service,
    a: &ServiceUpdateArgs,
    lookup_env: impl Fn(&str) -> Option<String>,
) -> Result<()> {
    let name = svc.metadata.name.clone();
    let spec = &mut svc.spec;
    if let Some(image) = &a.image {
        if image.trim().is_empty() {
            bail!("--image: must not be empty");
        }
        spec.image = image.clone();
    }
    if let Some(args) = &a.args {
        spec.args = split_words("--args", args).map_err(anyhow::Error::msg)?;
    }
    if let Some(ep) = &a.entrypoint {
        spec.command = split_words("--entrypoint", ep).map_err(anyhow::Error::msg)?;
    }
    if let Some(r) = a.replicas {
        if spec.mode == ServiceMode::Global {
            bail!("--replicas {r}: service {name} is global (it runs one task on every eligible node)");
        }
        if r < 0 {
            bail!("--replicas {r}: must be 0 or more");
        }
        spec.replicas = Some(r);
    }
    for k in &a.env_rm {
        if spec.env.remove(k).is_none() {
            bail!("--env-rm {k:?}: service {name} has no such environment variable");
        }
    }
    for e in &a.env_add {
        let (k, v) = parse_env(e, &lookup_env).map_err(|e| {
            anyhow::anyhow!(
                "{}",
                e.replacen("--env ", "--env-add ", 1)
                    .replace("(use --env ", "(use --env-add ")
            )
        })?;
        spec.env.insert(k, v);
    }
    for k in &a.label_rm {
        if svc.metadata.labels.remove(k).is_none() {
            bail!("--label-rm {k:?}: service {name} has no such label");
        }
    }
    for l in &a.label_add {
        let (k, v) = parse_key_value("--label-add", l).map_err(anyhow::Error::msg)?;
        svc.metadata.labels.insert(k, v);
    }
    let spec = &mut svc.spec;
    for p in &a.publish_rm {
        let (published, protocol) = parse_publish_rm(p).map_err(anyhow::Error::msg)?;
        let before = spec.ports.len();
        spec.ports
            .retain(|q| !(q.published == published && q.protocol == protocol));
        if spec.ports.len() == before {
            bail!(
                "--publish-rm {p:?}: service {name} does not publish {published}/{protocol}",
                protocol = protocol_name(protocol)
            );
        }
    }
    for p in &a.publish_add {
        let port = parse_publish(p)
            .map_err(|e| anyhow::anyhow!("{}", e.replacen("--publish ", "--publish-add ", 1)))?;
        match spec
            .ports
            .iter_mut()
            .find(|q| q.published == port.published && q.protocol == port.protocol)
        {
            Some(q) => *q = port,
            None => spec.ports.push(port),
        }
    }
    for n in &a.network_rm {
        let before = spec.networks.len();
        spec.networks.retain(|att| &att.name != n);
        if spec.networks.len() == before {
            bail!("--network-rm {n:?}: service {name} is not attached to it");
        }
    }
    for n in &a.network_add {
        let att = parse_network(n)
            .map_err(|e| anyhow::anyhow!("{}", e.replacen("--network ", "--network-add ", 1)))?;
        match spec.networks.iter_mut().find(|x| x.name == att.name) {
            Some(x) => *x = att,
            None => spec.networks.push(att),
        }
    }
    for c in &a.constraint_rm {
        let before = spec.placement.constraints.len();
        spec.placement.constraints.retain(|x| x.trim() != c.trim());
        if spec.placement.constraints.len() == before {
            bail!("--constraint-rm {c:?}: service {name} has no such constraint");
        }
    }
    for c in &a.constraint_add {
        c.parse::<Constraint>()
            .map_err(|e| anyhow::anyhow!("--constraint-add {c:?}: {e}"))?;
        if !spec
            .placement
            .constraints
            .iter()
            .any(|x| x.trim() == c.trim())
        {
            spec.placement.constraints.push(c.clone());
        }
    }
    if let Some(c) = a.lifecycle.restart_condition {
        spec.restart_policy.condition = match c {
            RestartConditionFlag::Any => RestartCondition::Any,
            RestartConditionFlag::OnFailure => RestartCondition::OnFailure,
            RestartConditionFlag::None => RestartCondition::None,
        };
    }
    if let Some(d) = a.lifecycle.restart_delay {
        spec.restart_policy.delay_seconds = Some(seconds(d));
    }
    if let Some(n) = a.lifecycle.restart_max_attempts {
        spec.restart_policy.max_attempts = Some(n);
    }
    if let Some(d) = a.lifecycle.stop_grace_period {
        spec.stop_grace_period_seconds = Some(seconds(d));
    }
    update_health(spec, a, &name)?;
    update_container_settings(spec, a)?;
    apply_update_policy(spec, &a.policy)?;
    update_file_flags(spec, &a.files, &name)?;
    if a.force {
        spec.force_update = spec.force_update.wrapping_add(1);
    }
    Ok(())
}

/// The `--update-*` and `--rollback-*` policy flags set `spec.updateConfig` and
/// `spec.rollbackConfig` (only the fields given). A ratio outside 0..1 or a period over 1h
/// is refused here, naming the flag, so nothing is written.
pub fn apply_update_policy(spec: &mut ServiceSpec, p: &UpdatePolicyFlags) -> Result<()> {
    set_policy(
        &mut spec.update_config,
        "--update",
        PolicyFlags {
            parallelism: p.update_parallelism,
            delay: p.update_delay,
            failure_action: p.update_failure_action.map(|a| match a {
                FailureActionFlag::Pause => FailureAction::Pause,
                FailureActionFlag::Continue => FailureAction::Continue,
                FailureActionFlag::Rollback => FailureAction::Rollback,
            }),
            monitor: p.update_monitor,
            max_failure_ratio: p.update_max_failure_ratio,
            order: p.update_order,
        },
    )?;
    set_policy(
        &mut spec.rollback_config,
        "--rollback",
        PolicyFlags {
            parallelism: p.rollback_parallelism,
            delay: p.rollback_delay,
            failure_action: p.rollback_failure_action.map(|a| match a {
                RollbackFailureActionFlag::Pause => FailureAction::Pause,
                RollbackFailureActionFlag::Continue => FailureAction::Continue,
            }),
            monitor: p.rollback_monitor,
            max_failure_ratio: p.rollback_max_failure_ratio,
            order: p.rollback_order,
        },
    )
}

/// One policy's flags, whichever prefix they came with.
struct PolicyFlags {
    parallelism: Option<u64>,
    delay: Option<Duration>,
    failure_action: Option<FailureAction>,
    monitor: Option<Duration>,
    max_failure_ratio: Option<f64>,
    order: Option<UpdateOrderFlag>,
}

fn set_policy(cfg: &mut UpdateConfig, prefix: &str, f: PolicyFlags) -> Result<()> {
    if let Some(n) = f.parallelism {
        cfg.parallelism = n;
    }
    for (name, value, field) in [
        ("delay", f.delay, &mut cfg.delay),
        ("monitor", f.monitor, &mut cfg.monitor),
    ] {
        if let Some(d) = value {
            if d > MAX_UPDATE_PERIOD {
                bail!("{prefix}-{name} {}: must be at most 1h", HumanDuration(d));
            }
            *field = HumanDuration(d);
        }
    }
    if let Some(a) = f.failure_action {
        cfg.failure_action = a;
    }
    if let Some(r) = f.max_failure_ratio {
        // NaN is not in the range either.
        if !(0.0..=1.0).contains(&r) {
            bail!("{prefix}-max-failure-ratio {r}: must be between 0 and 1 (e.g. 0.2 tolerates one failed task in five)");
        }
        cfg.max_failure_ratio = Ratio(r);
    }
    if let Some(o) = f.order {
        cfg.order = match o {
            UpdateOrderFlag::StopFirst => UpdateOrder::StopFirst,
            UpdateOrderFlag::StartFirst => UpdateOrder::StartFirst,
        };
    }
    Ok(())
}

/// The change flags given along with `service update --rollback` (which takes none: a
/// rollback goes back to the previous spec as it was). Every field is named here, so a new
/// flag cannot be forgotten: the destructuring stops compiling until it is sorted.
pub fn change_flags(a: &ServiceUpdateArgs) -> Vec<&'static str> {
    let ServiceUpdateArgs {
        rollback: _,
        image,
        force,
        args,
        entrypoint,
        replicas,
        env_add,
        env_rm,
        label_add,
        label_rm,
        publish_add,
        publish_rm,
        network_add,
        network_rm,
        constraint_add,
        constraint_rm,
        lifecycle,
        policy,
        files,
        no_healthcheck,
        user,
        workdir,
        read_only,
        cap_add,
        cap_drop,
        security_opts,
        limit_cpu,
        limit_memory,
        limit_pids,
        reserve_cpu,
        reserve_memory,
        wait: WaitArgs { .. },
        name: _,
    } = a;
    let LifecycleFlags {
        restart_condition,
        restart_delay,
        restart_max_attempts,
        stop_grace_period,
        health_cmd,
        health_interval,
        health_timeout,
        health_retries,
        health_start_period,
    } = lifecycle;
    let UpdatePolicyFlags {
        update_parallelism,
        update_delay,
        update_failure_action,
        update_monitor,
        update_max_failure_ratio,
        update_order,
        rollback_parallelism,
        rollback_delay,
        rollback_failure_action,
        rollback_monitor,
        rollback_max_failure_ratio,
        rollback_order,
    } = policy;
    let FileUpdateFlags {
        secret_add,
        secret_rm,
        config_add,
        config_rm,
        mount_add,
        mount_rm,
        container_label_add,
        container_label_rm,
        replicas_max_per_node,
    } = files;
    [
        ("--image", image.is_some()),
        ("--force", *force),
        ("--args", args.is_some()),
        ("--entrypoint", entrypoint.is_some()),
        ("--replicas", replicas.is_some()),
        ("--env-add", !env_add.is_empty()),
        ("--env-rm", !env_rm.is_empty()),
        ("--label-add", !label_add.is_empty()),
        ("--label-rm", !label_rm.is_empty()),
        ("--publish-add", !publish_add.is_empty()),
        ("--publish-rm", !publish_rm.is_empty()),
        ("--network-add", !network_add.is_empty()),
        ("--network-rm", !network_rm.is_empty()),
        ("--constraint-add", !constraint_add.is_empty()),
        ("--constraint-rm", !constraint_rm.is_empty()),
        ("--restart-condition", restart_condition.is_some()),
        ("--restart-delay", restart_delay.is_some()),
        ("--restart-max-attempts", restart_max_attempts.is_some()),
        ("--stop-grace-period", stop_grace_period.is_some()),
        ("--health-cmd", health_cmd.is_some()),
        ("--health-interval", health_interval.is_some()),
        ("--health-timeout", health_timeout.is_some()),
        ("--health-retries", health_retries.is_some()),
        ("--health-start-period", health_start_period.is_some()),
        ("--no-healthcheck", *no_healthcheck),
        ("--user", user.is_some()),
        ("--workdir", workdir.is_some()),
        ("--read-only", read_only.is_some()),
        ("--cap-add", !cap_add.is_empty()),
        ("--cap-drop", !cap_drop.is_empty()),
        ("--security-opt", !security_opts.is_empty()),
        ("--limit-cpu", limit_cpu.is_some()),
        ("--limit-memory", limit_memory.is_some()),
        ("--limit-pids", limit_pids.is_some()),
        ("--reserve-cpu", reserve_cpu.is_some()),
        ("--reserve-memory", reserve_memory.is_some()),
        ("--update-parallelism", update_parallelism.is_some()),
        ("--update-delay", update_delay.is_some()),
        ("--update-failure-action", update_failure_action.is_some()),
        ("--update-monitor", update_monitor.is_some()),
        (
            "--update-max-failure-ratio",
            update_max_failure_ratio.is_some(),
        ),
        ("--update-order", update_order.is_some()),
        ("--rollback-parallelism", rollback_parallelism.is_some()),
        ("--rollback-delay", rollback_delay.is_some()),
        (
            "--rollback-failure-action",
            rollback_failure_action.is_some(),
        ),
        ("--rollback-monitor", rollback_monitor.is_some()),
        (
            "--rollback-max-failure-ratio",
            rollback_max_failure_ratio.is_some(),
        ),
        ("--rollback-order", rollback_order.is_some()),
        ("--secret-add", !secret_add.is_empty()),
        ("--secret-rm", !secret_rm.is_empty()),
        ("--config-add", !config_add.is_empty()),
        ("--config-rm", !config_rm.is_empty()),
        ("--mount-add", !mount_add.is_empty()),
        ("--mount-rm", !mount_rm.is_empty()),
        ("--container-label-add", !container_label_add.is_empty()),
        ("--container-label-rm", !container_label_rm.is_empty()),
        ("--replicas-max-per-node", replicas_max_per_node.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, given)| given.then_some(flag))
    .collect()
}

/// Refuses `service update --rollback` with change flags, naming them.
pub fn check_rollback_alone(a: &ServiceUpdateArgs) -> Result<()> {
    let given = change_flags(a);
    if a.rollback && !given.is_empty() {
        bail!(
            "--rollback cannot be combined with {}: a rollback restores the previous spec as it was (run the change as a separate `service update`)",
            given.join(", ")
        );
    }
    Ok(())
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// `--health-*` and `--no-healthcheck`: tuning flags change the current check; without
/// one they need `--health-cmd`.
fn update_health(spec: &mut ServiceSpec, a: &ServiceUpdateArgs, name: &str) -> Result<()> {
    if a.no_healthcheck {
        spec.healthcheck = None;
        return Ok(());
    }
    let tuned = a.lifecycle.health_interval.is_some()
        || a.lifecycle.health_timeout.is_some()
        || a.lifecycle.health_retries.is_some()
        || a.lifecycle.health_start_period.is_some();
    if a.lifecycle.health_cmd.is_none() && !tuned {
        return Ok(());
    }
    let hc = match (&mut spec.healthcheck, &a.lifecycle.health_cmd) {
        (Some(hc), _) => hc,
        (None, Some(_)) => spec.healthcheck.insert(HealthCheck::default()),
        (None, None) => bail!("--health-interval, --health-timeout, --health-retries and --health-start-period change a health check, and service {name} has none (add --health-cmd)"),
    };
    if let Some(cmd) = &a.lifecycle.health_cmd {
        hc.command = vec!["sh".into(), "-c".into(), cmd.clone()];
    }
    if let Some(d) = a.lifecycle.health_interval {
        hc.interval_seconds = Some(seconds(d));
    }
    if let Some(d) = a.lifecycle.health_timeout {
        hc.timeout_seconds = Some(seconds(d));
    }
    if let Some(n) = a.lifecycle.health_retries {
        hc.retries = Some(n);
    }
    if let Some(d) = a.lifecycle.health_start_period {
        hc.start_period_seconds = Some(seconds(d));
    }
    Ok(())
}

/// One `--security-opt` value: the seccomp mode it names.
fn security_opt(opt: &str) -> Result<SeccompMode> {
    Ok(match opt.split_once(['=', ':']) {
        Some(("seccomp", "unconfined")) => SeccompMode::Unconfined,
        Some(("seccomp", "default")) => SeccompMode::Default,
        Some(("seccomp", other)) => bail!(
            "--security-opt {opt:?}: seccomp takes unconfined or default (custom profiles are not supported, got {other:?})"
        ),
        _ => bail!("--security-opt {opt:?}: the supported option is seccomp=unconfined"),
    })
}

/// `--user`, `--workdir`, `--read-only[=false]`, `--cap-add`, `--cap-drop`, `--security-opt`
/// and the `--limit-*` / `--reserve-*` flags (0 removes a limit or reservation, as in
/// Docker).
fn update_container_settings(spec: &mut ServiceSpec, a: &ServiceUpdateArgs) -> Result<()> {
    if let Some(u) = &a.user {
        spec.user = u.clone();
    }
    if let Some(w) = &a.workdir {
        spec.working_dir = w.clone();
    }
    if let Some(ro) = a.read_only {
        spec.read_only_root_filesystem = ro;
    }
    for opt in &a.security_opts {
        spec.seccomp = security_opt(opt)?;
    }
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
            if !out.contains(name) {
                out.push(name.clone());
            }
        }
    }
    let cpus = |flag: &str, v: &str| -> Result<Option<Cpus>> {
        let c = v
            .parse::<Cpus>()
            .map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
        Ok((c.0 != 0).then_some(c))
    };
    let memory = |flag: &str, v: &str| -> Result<Option<Memory>> {
        let m = v
            .parse::<Memory>()
            .map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
        Ok((m.0 != 0).then_some(m))
    };
    let r = &mut spec.resources;
    if let Some(v) = &a.limit_cpu {
        r.limits.cpus = cpus("--limit-cpu", v)?;
    }
    if let Some(v) = &a.limit_memory {
        r.limits.memory = memory("--limit-memory", v)?;
    }
    if let Some(n) = a.limit_pids {
        r.limits.pids = (n != 0).then_some(n);
    }
    if let Some(v) = &a.reserve_cpu {
        r.reservations.cpus = cpus("--reserve-cpu", v)?;
    }
    if let Some(v) = &a.reserve_memory {
        r.reservations.memory = memory("--reserve-memory", v)?;
    }
    Ok(())
}

/// A file reference of `--secret`/`--config` (and their `-add` forms): the source, the
/// target as given (empty: the default), uid, gid and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// The Secret's or Config's name.
    pub source: String,
    /// `target=`, or empty.
    pub target: String,
    /// `uid=` (default 0).
    pub uid: u32,
    /// `gid=` (default 0).
    pub gid: u32,
    /// `mode=` (default 0444).
    pub mode: u32,
}

/// Parses `NAME` or `source=NAME[,target=T][,uid=N][,gid=N][,mode=M]` for `flag`. A mode
/// with a leading 0 is octal (`0400`), as Docker reads it; `0o400` works too.
pub fn parse_file_ref(flag: &str, value: &str) -> Result<FileRef, String> {
    let err = |why: String| format!("{flag} {value:?}: {why}");
    let mut r = FileRef {
        source: String::new(),
        target: String::new(),
        uid: 0,
        gid: 0,
        mode: DEFAULT_FILE_MODE,
    };
    if !value.contains('=') {
        if value.is_empty() || value.contains(',') {
            return Err(err("use NAME or source=NAME,target=...".into()));
        }
        r.source = value.to_string();
        return Ok(r);
    }
    for field in value.split(',') {
        let (key, val) = field
            .split_once('=')
            .ok_or_else(|| err(format!("{field:?} is not key=value")))?;
        let number = |what: &str| -> Result<u32, String> {
            val.trim()
                .parse()
                .map_err(|_| err(format!("{what} {val:?} is not a number")))
        };
        match key.trim() {
            "source" | "src" => r.source = val.to_string(),
            "target" | "dst" | "destination" => r.target = val.to_string(),
            "uid" => r.uid = number("uid")?,
            "gid" => r.gid = number("gid")?,
            "mode" => {
                let v = val.trim();
                let octal = v
                    .strip_prefix("0o")
                    .or_else(|| v.strip_prefix('0').filter(|d| !d.is_empty()));
                let mode = match octal {
                    Some(digits) => u32::from_str_radix(digits, 8),
                    None => v.parse(),
                }
                .map_err(|_| err(format!("mode {val:?} is not a number (e.g. 0400)")))?;
                if mode > 0o777 {
                    return Err(err(format!("mode {val:?} is not a file mode (0 to 0777)")));
                }
                r.mode = mode;
            }
            other => {
                return Err(err(format!(
                    "unknown key {other:?} (use source, target, uid, gid and mode)"
                )))
            }
        }
    }
    if r.source.is_empty() {
        return Err(err("source= is required".into()));
    }
    Ok(r)
}

fn secret_ref(flag: &str, value: &str) -> Result<SecretReference> {
    let r = parse_file_ref(flag, value).map_err(anyhow::Error::msg)?;
    Ok(SecretReference {
        source: r.source,
        target: r.target,
        uid: r.uid,
        gid: r.gid,
        mode: r.mode,
    })
}

fn config_ref(flag: &str, value: &str) -> Result<ConfigReference> {
    let r = parse_file_ref(flag, value).map_err(anyhow::Error::msg)?;
    Ok(ConfigReference {
        source: r.source,
        target: r.target,
        uid: r.uid,
        gid: r.gid,
        mode: r.mode,
    })
}

/// Parses one `--mount` value:
/// `type=volume|bind|tmpfs,source=SRC,target=/PATH[,readonly[=true|false]][,tmpfs-size=SIZE]`,
/// with Docker's aliases (`src`, `dst`/`destination`, `ro`). The type defaults to volume.
pub fn parse_mount(flag: &str, value: &str) -> Result<Mount, String> {
    let err = |why: String| format!("{flag} {value:?}: {why}");
    let mut m = Mount::default();
    for field in value.split(',') {
        let (key, val) = match field.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (field.trim(), None),
        };
        match (key, val) {
            ("type", Some(t)) => {
                m.type_ = match t {
                    "volume" => MountType::Volume,
                    "bind" => MountType::Bind,
                    "tmpfs" => MountType::Tmpfs,
                    other => {
                        return Err(err(format!("type {other:?} must be volume, bind or tmpfs")))
                    }
                }
            }
            ("source" | "src", Some(v)) => m.source = v.to_string(),
            ("target" | "dst" | "destination", Some(v)) => m.target = v.to_string(),
            ("readonly" | "ro", None) => m.read_only = true,
            ("readonly" | "ro", Some(v)) => {
                m.read_only = match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    other => return Err(err(format!("readonly={other:?}: use true or false"))),
                }
            }
            ("tmpfs-size", Some(v)) => {
                m.tmpfs_size = Some(
                    v.parse::<Memory>()
                        .map_err(|e| err(format!("tmpfs-size: {e}")))?,
                )
            }
            _ => {
                return Err(err(format!(
                    "{field:?}: use type=, source= (src=), target= (dst=), readonly and tmpfs-size="
                )))
            }
        }
    }
    if m.target.is_empty() {
        return Err(err("target= is required".into()));
    }
    if m.type_ != MountType::Tmpfs && m.source.is_empty() {
        return Err(err(
            "source= is required (a volume name or a host path)".into()
        ));
    }
    if m.tmpfs_size.is_some() && m.type_ != MountType::Tmpfs {
        return Err(err("tmpfs-size needs type=tmpfs".into()));
    }
    Ok(m)
}

/// `service create`'s secret, config, mount, container-label and per-node flags.
pub fn apply_file_flags(spec: &mut ServiceSpec, f: &FileFlags) -> Result<()> {
    for v in &f.secrets {
        spec.secrets.push(secret_ref("--secret", v)?);
    }
    for v in &f.configs {
        spec.configs.push(config_ref("--config", v)?);
    }
    for v in &f.mounts {
        spec.mounts
            .push(parse_mount("--mount", v).map_err(anyhow::Error::msg)?);
    }
    spec.container_labels = labels("--container-label", &f.container_labels)?;
    spec.placement.max_replicas_per_node = f.replicas_max_per_node.filter(|n| *n > 0);
    Ok(())
}

/// `service update`'s `--secret-*`, `--config-*`, `--mount-*`, `--container-label-*` and
/// `--replicas-max-per-node`, removals first. Removing what is not there is an error.
fn update_file_flags(spec: &mut ServiceSpec, f: &FileUpdateFlags, name: &str) -> Result<()> {
    for s in &f.secret_rm {
        let before = spec.secrets.len();
        spec.secrets.retain(|r| &r.source != s);
        if spec.secrets.len() == before {
            bail!("--secret-rm {s:?}: service {name} does not use that secret");
        }
    }
    for c in &f.config_rm {
        let before = spec.configs.len();
        spec.configs.retain(|r| &r.source != c);
        if spec.configs.len() == before {
            bail!("--config-rm {c:?}: service {name} does not use that config");
        }
    }
    for t in &f.mount_rm {
        let before = spec.mounts.len();
        let t = t.trim_end_matches('/');
        spec.mounts.retain(|m| m.target.trim_end_matches('/') != t);
        if spec.mounts.len() == before {
            bail!("--mount-rm {t:?}: service {name} has no mount at that target");
        }
    }
    for k in &f.container_label_rm {
        if spec.container_labels.remove(k).is_none() {
            bail!("--container-label-rm {k:?}: service {name} has no such container label");
        }
    }
    for v in &f.secret_add {
        let r = secret_ref("--secret-add", v)?;
        match spec
            .secrets
            .iter_mut()
            .find(|x| x.file_name() == r.file_name())
        {
            Some(x) => *x = r,
            None => spec.secrets.push(r),
        }
    }
    for v in &f.config_add {
        let r = config_ref("--config-add", v)?;
        match spec.configs.iter_mut().find(|x| x.path() == r.path()) {
            Some(x) => *x = r,
            None => spec.configs.push(r),
        }
    }
    for v in &f.mount_add {
        let m = parse_mount("--mount-add", v).map_err(anyhow::Error::msg)?;
        match spec
            .mounts
            .iter_mut()
            .find(|x| x.target.trim_end_matches('/') == m.target.trim_end_matches('/'))
        {
            Some(x) => *x = m,
            None => spec.mounts.push(m),
        }
    }
    for l in &f.container_label_add {
        let (k, v) = parse_key_value("--container-label-add", l).map_err(anyhow::Error::msg)?;
        spec.container_labels.insert(k, v);
    }
    if let Some(n) = f.replicas_max_per_node {
        spec.placement.max_replicas_per_node = (n > 0).then_some(n);
    }
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
                    mode: PublishMode::Ingress,
                    ..Default::default()
                },
                PortConfig {
                    published: 53,
                    target: 53,
                    protocol: Protocol::Udp,
                    mode: PublishMode::Ingress,
                    ..Default::default()
                },
                PortConfig {
                    published: 9000,
                    target: 90,
                    protocol: Protocol::Tcp,
                    mode: PublishMode::Host,
                    ..Default::default()
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
        let e = error(&[
            "--name",
            "api",
            "--publish",
            "published=8080,target=80,traffic=nearest",
            "busybox",
        ]);
        assert_eq!(e, "--publish \"published=8080,target=80,traffic=nearest\": traffic \"nearest\" must be cluster or local");
        let e = error(&[
            "--name",
            "api",
            "--publish",
            "published=8080,target=80,traffic=local,health-port=0",
            "busybox",
        ]);
        assert!(e.ends_with("health-port: 0 is not 1-65535"), "{e}");
    }

    #[test]
    fn publish_should_take_traffic_and_a_health_port_in_the_long_syntax() {
        assert_eq!(
            parse_publish("published=8080,target=80,traffic=local,health-port=31001").unwrap(),
            PortConfig {
                published: 8080,
                target: 80,
                traffic: TrafficPolicy::Local,
                health_port: Some(31001),
                ..Default::default()
            }
        );
        assert_eq!(
            parse_publish("published=8080,target=80,traffic=cluster")
                .unwrap()
                .traffic,
            TrafficPolicy::Cluster
        );
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

    fn update_args(argv: &[&str]) -> ServiceUpdateArgs {
        let mut full = vec!["shoal", "service", "update"];
        full.extend_from_slice(argv);
        full.push("api");
        match Cli::try_parse_from(full).unwrap().command {
            Command::Service(ServiceCommand::Update(a)) => *a,
            other => panic!("{other:?}"),
        }
    }

    /// A service as `service create` would make it, with something of everything.
    fn sample() -> Service {
        service(&[
            "--name",
            "api",
            "--replicas",
            "2",
            "--network",
            "appnet",
            "-p",
            "8080:80",
            "-p",
            "53:53/udp",
            "--constraint",
            "node.labels.zone==a",
            "-e",
            "A=1",
            "--label",
            "team=core",
            "--health-cmd",
            "true",
            "--limit-memory",
            "64M",
            "busybox:1",
            "sleep",
            "1000",
        ])
        .unwrap()
    }

    fn updated(argv: &[&str]) -> Result<Service> {
        let mut s = sample();
        update_service(&mut s, &update_args(argv), |k| {
            (k == "HOME_ISH").then(|| "/root".to_string())
        })?;
        Ok(s)
    }

    fn update_error(argv: &[&str]) -> String {
        format!("{:#}", updated(argv).unwrap_err())
    }

    #[test]
    fn policy_flags_set_update_and_rollback_config_on_create_and_update() {
        let svc = service(&[
            "--name",
            "api",
            "--update-parallelism",
            "2",
            "--update-delay",
            "10s",
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "1m30s",
            "--update-max-failure-ratio",
            "0.5",
            "--update-order",
            "start-first",
            "--rollback-parallelism",
            "0",
            "--rollback-failure-action",
            "continue",
            "--rollback-order",
            "start-first",
            "busybox",
        ])
        .unwrap();
        assert_eq!(
            svc.spec.update_config,
            UpdateConfig {
                parallelism: 2,
                delay: HumanDuration::from_secs(10),
                failure_action: FailureAction::Rollback,
                monitor: HumanDuration::from_secs(90),
                max_failure_ratio: Ratio(0.5),
                order: UpdateOrder::StartFirst,
            }
        );
        assert_eq!(
            svc.spec.rollback_config,
            UpdateConfig {
                parallelism: 0,
                failure_action: FailureAction::Continue,
                order: UpdateOrder::StartFirst,
                ..Default::default()
            }
        );
        // Without flags: Swarm's defaults.
        assert_eq!(sample().spec.update_config, UpdateConfig::default());
        // update changes only the fields given.
        let s = updated(&["--update-delay", "500ms", "--rollback-monitor", "2s"]).unwrap();
        assert_eq!(
            s.spec.update_config,
            UpdateConfig {
                delay: HumanDuration(Duration::from_millis(500)),
                ..Default::default()
            }
        );
        assert_eq!(s.spec.rollback_config.monitor, HumanDuration::from_secs(2));
        assert_eq!(s.spec.rollback_config.parallelism, 1);
    }

    #[test]
    fn bad_policy_flags_name_the_flag() {
        assert_eq!(
            update_error(&["--update-max-failure-ratio", "1.5"]),
            "--update-max-failure-ratio 1.5: must be between 0 and 1 (e.g. 0.2 tolerates one failed task in five)"
        );
        assert!(update_error(&["--rollback-max-failure-ratio", "NaN"])
            .starts_with("--rollback-max-failure-ratio NaN: must be between 0 and 1"));
        assert_eq!(
            update_error(&["--update-delay", "2h"]),
            "--update-delay 2h: must be at most 1h"
        );
        assert!(update_error(&["--update-max-failure-ratio", "-0.5"])
            .starts_with("--update-max-failure-ratio -0.5: must be between 0 and 1"));
        assert!(
            error(&["--name", "a", "--rollback-monitor", "61m", "busybox"])
                .starts_with("--rollback-monitor 1h 1m: must be at most 1h")
        );
        // What clap refuses names the flag and the accepted values.
        for (argv, want) in [
            (&["--update-parallelism", "-1"][..], "--update-parallelism"),
            (&["--update-delay", "soon"][..], "--update-delay"),
            (&["--update-order", "random"][..], "stop-first, start-first"),
            (
                &["--rollback-failure-action", "rollback"][..],
                "pause, continue",
            ),
        ] {
            let mut full = vec!["shoal", "service", "update"];
            full.extend_from_slice(argv);
            full.push("api");
            let e = Cli::try_parse_from(full).unwrap_err().to_string();
            assert!(e.contains(want), "{argv:?}: {e}");
        }
    }

    #[test]
    fn rollback_refuses_change_flags_and_names_them() {
        assert!(check_rollback_alone(&update_args(&["--rollback", "-d", "-q"])).is_ok());
        assert!(check_rollback_alone(&update_args(&["--image", "x"])).is_ok());
        let e = check_rollback_alone(&update_args(&[
            "--rollback",
            "--image",
            "x",
            "--health-retries",
            "3",
            "--update-order",
            "start-first",
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "--rollback cannot be combined with --image, --health-retries, --update-order:"
            ),
            "{e}"
        );
        // Every change flag counts: each one alone is refused.
        for argv in [
            &["--force"][..],
            &["--env-rm", "A"],
            &["--no-healthcheck"],
            &["--read-only"],
            &["--limit-pids", "5"],
            &["--rollback-delay", "1s"],
            &["--publish-add", "80:80"],
        ] {
            let mut full = vec!["--rollback"];
            full.extend_from_slice(argv);
            assert!(
                check_rollback_alone(&update_args(&full)).is_err(),
                "{argv:?}"
            );
        }
    }

    #[test]
    fn update_without_flags_changes_nothing() {
        assert_eq!(updated(&[]).unwrap(), sample());
        // Re-adding what is there is no change either.
        assert_eq!(
            updated(&[
                "--env-add",
                "A=1",
                "--constraint-add",
                "node.labels.zone==a"
            ])
            .unwrap(),
            sample()
        );
    }

    #[test]
    fn update_force_increments_the_counter_even_with_nothing_else() {
        let s = updated(&["--force"]).unwrap();
        assert_eq!(s.spec.force_update, 1);
        let mut s2 = s.clone();
        update_service(&mut s2, &update_args(&["--force"]), |_| None).unwrap();
        assert_eq!(s2.spec.force_update, 2);
        assert_eq!(serde_json::to_value(&s2).unwrap()["spec"]["forceUpdate"], 2);
        // Skipped when 0, so existing manifests and stored services read the same.
        assert!(serde_json::to_value(sample()).unwrap()["spec"]
            .get("forceUpdate")
            .is_none());
    }

    #[test]
    fn update_sets_image_args_entrypoint_and_replicas() {
        let s = updated(&[
            "--image",
            "busybox:2",
            "--args",
            r#"sh -c 'echo "hi there"' "a\"b" c\ d"#,
            "--entrypoint",
            "/bin/env",
            "--replicas",
            "5",
        ])
        .unwrap();
        assert_eq!(s.spec.image, "busybox:2");
        assert_eq!(
            s.spec.args,
            ["sh", "-c", "echo \"hi there\"", "a\"b", "c d"]
        );
        assert_eq!(s.spec.command, ["/bin/env"]);
        assert_eq!(s.spec.replicas, Some(5));
        assert!(updated(&["--args", ""]).unwrap().spec.args.is_empty());
        assert_eq!(
            updated(&["--args", "--port 80"]).unwrap().spec.args,
            ["--port", "80"]
        );
    }

    #[test]
    fn update_adds_and_removes_env_and_labels() {
        let s = updated(&[
            "--env-rm",
            "A",
            "--env-add",
            "B=2",
            "--env-add",
            "HOME_ISH",
            "--label-rm",
            "team",
            "--label-add",
            "tier=web",
        ])
        .unwrap();
        assert_eq!(
            s.spec.env,
            BTreeMap::from([
                ("B".into(), "2".into()),
                ("HOME_ISH".into(), "/root".into())
            ])
        );
        assert_eq!(
            s.metadata.labels,
            BTreeMap::from([("tier".into(), "web".into())])
        );
        // Removals go first: rm then add of one key replaces it.
        let s = updated(&["--env-rm", "A", "--env-add", "A=9"]).unwrap();
        assert_eq!(s.spec.env.get("A").map(String::as_str), Some("9"));
    }

    #[test]
    fn update_adds_and_removes_ports_networks_and_constraints() {
        let s = updated(&[
            "--publish-rm",
            "8080",
            "--publish-rm",
            "53/udp",
            "--publish-add",
            "9090:90",
            "--network-rm",
            "appnet",
            "--network-add",
            "name=backend,alias=db",
            "--constraint-rm",
            "node.labels.zone==a",
            "--constraint-add",
            "node.name!=n1",
        ])
        .unwrap();
        assert_eq!(
            s.spec.ports,
            vec![PortConfig {
                published: 9090,
                target: 90,
                protocol: Protocol::Tcp,
                mode: PublishMode::Ingress,
                ..Default::default()
            }]
        );
        assert_eq!(
            s.spec.networks,
            vec![NetworkAttachmentConfig {
                name: "backend".into(),
                aliases: vec!["db".into()]
            }]
        );
        assert_eq!(s.spec.placement.constraints, ["node.name!=n1"]);
        // Publishing a published port again replaces its target.
        let s = updated(&["--publish-add", "8080:81"]).unwrap();
        assert_eq!(s.spec.ports.len(), 2);
        assert_eq!(s.spec.ports[0].target, 81);
    }

    #[test]
    fn update_changes_health_restart_and_grace() {
        let s = updated(&[
            "--health-interval",
            "3s",
            "--health-retries",
            "4",
            "--health-timeout",
            "1s",
            "--health-start-period",
            "7s",
            "--restart-condition",
            "none",
            "--restart-delay",
            "2s",
            "--restart-max-attempts",
            "6",
            "--stop-grace-period",
            "20s",
        ])
        .unwrap();
        let hc = s.spec.healthcheck.unwrap();
        assert_eq!(hc.command, ["sh", "-c", "true"]);
        assert_eq!(
            (
                hc.interval_seconds,
                hc.retries,
                hc.timeout_seconds,
                hc.start_period_seconds
            ),
            (Some(3), Some(4), Some(1), Some(7))
        );
        assert_eq!(s.spec.restart_policy.condition, RestartCondition::None);
        assert_eq!(s.spec.restart_policy.delay_seconds, Some(2));
        assert_eq!(s.spec.restart_policy.max_attempts, Some(6));
        assert_eq!(s.spec.stop_grace_period_seconds, Some(20));
        let s = updated(&["--health-cmd", "wget -q localhost"]).unwrap();
        assert_eq!(
            s.spec.healthcheck.unwrap().command,
            ["sh", "-c", "wget -q localhost"]
        );
        assert_eq!(
            updated(&["--no-healthcheck"]).unwrap().spec.healthcheck,
            None
        );
        let mut s = sample();
        s.spec.healthcheck = None;
        let e = update_service(&mut s, &update_args(&["--health-retries", "2"]), |_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("add --health-cmd"), "{e}");
    }

    #[test]
    fn update_changes_container_settings_and_zero_removes_limits() {
        let s = updated(&[
            "-u",
            "1000",
            "-w",
            "/srv",
            "--read-only",
            "--cap-add",
            "NET_ADMIN",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "seccomp=unconfined",
            "--limit-cpu",
            "0.5",
            "--limit-pids",
            "50",
            "--reserve-cpu",
            "250m",
            "--reserve-memory",
            "32Mi",
        ])
        .unwrap();
        assert_eq!(
            (s.spec.user.as_str(), s.spec.working_dir.as_str()),
            ("1000", "/srv")
        );
        assert!(s.spec.read_only_root_filesystem);
        assert_eq!(s.spec.cap_add, ["NET_ADMIN"]);
        assert_eq!(s.spec.cap_drop, ["ALL"]);
        assert_eq!(s.spec.seccomp, SeccompMode::Unconfined);
        let r = &s.spec.resources;
        assert_eq!(r.limits.cpus, Some(Cpus(500)));
        assert_eq!(r.limits.memory, Some(Memory(64 << 20)));
        assert_eq!(r.limits.pids, Some(50));
        assert_eq!(r.reservations.cpus, Some(Cpus(250)));
        assert_eq!(r.reservations.memory, Some(Memory(32 << 20)));
        let mut s2 = s.clone();
        update_service(
            &mut s2,
            &update_args(&[
                "--read-only=false",
                "--limit-memory",
                "0",
                "--limit-cpu",
                "0",
                "--limit-pids",
                "0",
                "-u",
                "",
                "--security-opt",
                "seccomp=default",
            ]),
            |_| None,
        )
        .unwrap();
        assert!(!s2.spec.read_only_root_filesystem);
        assert_eq!(s2.spec.seccomp, SeccompMode::Default);
        // A bare --read-only right before NAME does not swallow it.
        let a = update_args(&["--read-only"]);
        assert_eq!((a.read_only, a.name.as_str()), (Some(true), "api"));
        assert_eq!(update_args(&[]).read_only, None);
        assert_eq!(s2.spec.resources.limits, Default::default());
        assert!(s2.spec.user.is_empty());
    }

    #[test]
    fn bad_update_flags_and_absent_removals_name_the_flag_and_value() {
        for (argv, want) in [
            (&["--env-rm", "NOPE"][..], "--env-rm \"NOPE\": service api has no such environment variable"),
            (&["--label-rm", "nope"][..], "--label-rm \"nope\": service api has no such label"),
            (&["--publish-rm", "9999"][..], "--publish-rm \"9999\": service api does not publish 9999/tcp"),
            (&["--publish-rm", "8080/udp"][..], "--publish-rm \"8080/udp\": service api does not publish 8080/udp"),
            (&["--publish-rm", "http"][..], "--publish-rm \"http\": \"http\" is not a port number"),
            (&["--publish-rm", "80/sctp"][..], "--publish-rm \"80/sctp\": protocol \"sctp\" must be tcp or udp"),
            (&["--network-rm", "other"][..], "--network-rm \"other\": service api is not attached to it"),
            (&["--constraint-rm", "node.name==x"][..], "--constraint-rm \"node.name==x\": service api has no such constraint"),
            (&["--constraint-add", "node.colour==red"][..], "--constraint-add \"node.colour==red\": "),
            (&["--publish-add", "8080"][..], "--publish-add \"8080\": use PUBLISHED:TARGET"),
            (&["--network-add", "alias=x"][..], "--network-add \"alias=x\": name= is required"),
            (&["--env-add", "UNSET_VAR"][..], "--env-add \"UNSET_VAR\": no value given and $UNSET_VAR is not set here (use --env-add UNSET_VAR=VALUE)"),
            (&["--env-add", "=1"][..], "--env-add \"=1\": the name is empty"),
            (&["--label-add", "novalue"][..], "--label-add \"novalue\": use KEY=VALUE"),
            (&["--replicas", "-1"][..], "--replicas -1: must be 0 or more"),
            (&["--image", ""][..], "--image: must not be empty"),
            (&["--args", "'open"][..], "--args \"'open\": unterminated ' quote"),
            (&["--args", "\"open"][..], "--args \"\\\"open\": unterminated \" quote"),
            (&["--args", "x\\"][..], "--args \"x\\\\\": a trailing \\ escapes nothing"),
            (&["--entrypoint", "'x"][..], "--entrypoint \"'x\": unterminated"),
            (&["--cap-add", "NOPE"][..], "--cap-add \"NOPE\": not a Linux capability"),
            (&["--cap-drop", "NOPE"][..], "--cap-drop \"NOPE\": not a Linux capability"),
            (&["--security-opt", "apparmor=x"][..], "--security-opt \"apparmor=x\": the supported option is seccomp=unconfined"),
            (&["--limit-memory", "lots"][..], "--limit-memory: \"lots\" is not a memory size"),
            (&["--limit-cpu", "1x"][..], "--limit-cpu: \"1x\" is not a CPU quantity"),
            (&["--reserve-cpu", "1x"][..], "--reserve-cpu:"),
            (&["--reserve-memory", "1x"][..], "--reserve-memory:"),
        ] {
            let e = update_error(argv);
            assert!(e.starts_with(want), "{argv:?}: {e}");
        }
        let mut g = service(&["--name", "api", "--mode", "global", "busybox"]).unwrap();
        let e = update_service(&mut g, &update_args(&["--replicas", "2"]), |_| None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--replicas 2: service api is global"), "{e}");
        // --no-healthcheck with a health flag is refused by the parser.
        assert!(Cli::try_parse_from([
            "shoal",
            "service",
            "update",
            "--no-healthcheck",
            "--health-cmd",
            "x",
            "api"
        ])
        .is_err());
    }

    #[test]
    fn secret_config_and_mount_flags_build_references_and_mounts() {
        let s = service(&[
            "--name",
            "api",
            "--secret",
            "pw",
            "--secret",
            "src=tls,target=key.pem,uid=100,gid=101,mode=0400",
            "--config",
            "source=site,target=/etc/site.conf,mode=0o640",
            "--mount",
            "type=volume,src=data,dst=/data,readonly",
            "--mount",
            "type=tmpfs,target=/cache,tmpfs-size=64m",
            "--mount",
            "type=bind,source=/srv/www,destination=/www,ro=false",
            "--container-label",
            "team=shop",
            "--replicas-max-per-node",
            "1",
            "busybox",
        ])
        .unwrap();
        assert_eq!(
            s.spec.secrets,
            [
                SecretReference {
                    source: "pw".into(),
                    target: String::new(),
                    uid: 0,
                    gid: 0,
                    mode: 0o444
                },
                SecretReference {
                    source: "tls".into(),
                    target: "key.pem".into(),
                    uid: 100,
                    gid: 101,
                    mode: 0o400
                },
            ]
        );
        assert_eq!(s.spec.configs[0].path(), "/etc/site.conf");
        assert_eq!(s.spec.configs[0].mode, 0o640);
        assert_eq!(
            s.spec.mounts,
            [
                Mount {
                    type_: MountType::Volume,
                    source: "data".into(),
                    target: "/data".into(),
                    read_only: true,
                    tmpfs_size: None
                },
                Mount {
                    type_: MountType::Tmpfs,
                    source: String::new(),
                    target: "/cache".into(),
                    read_only: false,
                    tmpfs_size: Some(Memory(64 << 20))
                },
                Mount {
                    type_: MountType::Bind,
                    source: "/srv/www".into(),
                    target: "/www".into(),
                    read_only: false,
                    tmpfs_size: None
                },
            ]
        );
        assert_eq!(
            s.spec.container_labels.get("team").map(String::as_str),
            Some("shop")
        );
        assert_eq!(s.spec.placement.max_replicas_per_node, Some(1));
        // A decimal mode is read as decimal, as Docker does.
        assert_eq!(
            parse_file_ref("--secret", "source=a,mode=256")
                .unwrap()
                .mode,
            0o400
        );
        for (argv, want) in [
            (
                &["--secret", "target=x"][..],
                "--secret \"target=x\": source= is required",
            ),
            (
                &["--secret", "source=a,mode=0999"][..],
                "--secret \"source=a,mode=0999\": mode \"0999\" is not a number",
            ),
            (
                &["--secret", "source=a,mode=01000"][..],
                "--secret \"source=a,mode=01000\": mode \"01000\" is not a file mode",
            ),
            (
                &["--config", "source=a,owner=1"][..],
                "--config \"source=a,owner=1\": unknown key \"owner\"",
            ),
            (
                &["--mount", "src=data"][..],
                "--mount \"src=data\": target= is required",
            ),
            (
                &["--mount", "type=nfs,src=a,dst=/a"][..],
                "--mount \"type=nfs,src=a,dst=/a\": type \"nfs\" must be volume, bind or tmpfs",
            ),
            (
                &["--mount", "dst=/a"][..],
                "--mount \"dst=/a\": source= is required",
            ),
            (
                &["--mount", "src=a,dst=/a,tmpfs-size=1m"][..],
                "--mount \"src=a,dst=/a,tmpfs-size=1m\": tmpfs-size needs type=tmpfs",
            ),
            (
                &["--container-label", "x"][..],
                "--container-label \"x\": use KEY=VALUE",
            ),
        ] {
            let mut full = vec!["--name", "api"];
            full.extend_from_slice(argv);
            full.push("busybox");
            let e = error(&full);
            assert!(e.starts_with(want), "{argv:?}: {e}");
        }
    }

    #[test]
    fn update_rotates_secrets_and_changes_mounts_and_labels() {
        let mut s = sample();
        update_service(
            &mut s,
            &update_args(&[
                "--secret-add",
                "pw",
                "--config-add",
                "site",
                "--mount-add",
                "src=data,dst=/data",
                "--container-label-add",
                "a=1",
                "--replicas-max-per-node",
                "2",
            ]),
            |_| None,
        )
        .unwrap();
        assert_eq!(s.spec.placement.max_replicas_per_node, Some(2));
        let before = s.clone();
        // Rotation: the old secret out, a new one in at the same file name.
        update_service(
            &mut s,
            &update_args(&[
                "--secret-rm",
                "pw",
                "--secret-add",
                "source=pw2,target=pw",
                "--mount-add",
                "src=data2,dst=/data/",
                "--container-label-rm",
                "a",
                "--replicas-max-per-node",
                "0",
            ]),
            |_| None,
        )
        .unwrap();
        assert_eq!(s.spec.secrets.len(), 1);
        assert_eq!(
            (
                s.spec.secrets[0].source.as_str(),
                s.spec.secrets[0].file_name()
            ),
            ("pw2", "pw")
        );
        assert_eq!(s.spec.mounts.len(), 1);
        assert_eq!(s.spec.mounts[0].source, "data2");
        assert!(s.spec.container_labels.is_empty());
        assert_eq!(s.spec.placement.max_replicas_per_node, None);
        let mut t = before.clone();
        update_service(
            &mut t,
            &update_args(&["--mount-rm", "/data", "--config-rm", "site"]),
            |_| None,
        )
        .unwrap();
        assert!(t.spec.mounts.is_empty() && t.spec.configs.is_empty());
        for (argv, want) in [
            (
                &["--secret-rm", "nope"][..],
                "--secret-rm \"nope\": service api does not use that secret",
            ),
            (
                &["--config-rm", "nope"][..],
                "--config-rm \"nope\": service api does not use that config",
            ),
            (
                &["--mount-rm", "/nope"][..],
                "--mount-rm \"/nope\": service api has no mount at that target",
            ),
            (
                &["--container-label-rm", "x"][..],
                "--container-label-rm \"x\": service api has no such container label",
            ),
            (&["--secret-add", ""][..], "--secret-add \"\": use NAME"),
        ] {
            let mut t = before.clone();
            let e = format!(
                "{:#}",
                update_service(&mut t, &update_args(argv), |_| None).unwrap_err()
            );
            assert!(e.starts_with(want), "{argv:?}: {e}");
        }
        // Each new flag counts as a change for --rollback.
        assert!(check_rollback_alone(&update_args(&["--rollback", "--secret-rm", "pw"])).is_err());
        assert!(check_rollback_alone(&update_args(&[
            "--rollback",
            "--replicas-max-per-node",
            "1"
        ]))
        .is_err());
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
            let _ = parse_publish_rm(&s);
            let _ = parse_file_ref("--secret", &s);
            let _ = parse_mount("--mount", &s);
            let _ = split_words("--args", &s);
            let _ = crate::args::parse_duration(&s);
        }
    }
}
