//! A loaded compose file turned into Shoal objects, as `docker stack deploy` turns one into
//! Swarm objects: networks, secrets and configs named `<stack>_<key>` (unless `external` or
//! given a `name:`), services named `<stack>_<service>`, every object labelled
//! `shoal.io/stack=<stack>`. Each service's short name is an alias on every network it
//! joins, so `db` resolves inside the stack; a service that lists no network joins
//! `<stack>_default`, created only then.
//!
//! Everything that can be checked without the server is checked here and reported at its
//! compose key path (`services.web.secrets[0]: secret pw is not defined ...`). Keys Shoal
//! does not honour are warnings, one per key and service; the deploy goes on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use compose_spec::service::deploy::resources::{Limits, Reservations};
use compose_spec::service::deploy::{self as cdeploy, Deploy};
use compose_spec::service::healthcheck::{self as chealth, Healthcheck};
use compose_spec::service::ports::{self as cports, Port};
use compose_spec::service::volumes::mount::Mount as CMount;
use compose_spec::service::{ByteValue, Command, Limit, NetworkConfig};
use compose_spec::{ListOrMap, Resource, ShortOrLong};
use serde_yaml::Value;
use shoal_api_types::labels::STACK;
use shoal_api_types::manifest::AnyObject;
use shoal_api_types::payload::encode_payload;
use shoal_api_types::update::{FailureAction, HumanDuration, Ratio, UpdateConfig, UpdateOrder};
use shoal_api_types::validation::check_object_name;
use shoal_api_types::volume::check_volume_name;
use shoal_api_types::{
    Config, ConfigReference, ConfigSpec, Constraint, Cpus, EndpointMode, HealthCheck, Memory,
    Mount, MountType, Network, NetworkAttachmentConfig, NetworkSpec, PortConfig, Protocol,
    PublishMode, ResourceLimits, ResourceReservations, Resources, RestartCondition, RestartPolicy,
    Secret, SecretReference, SecretSpec, Service, ServiceMode, ServiceSpec, TrafficPolicy,
};

use super::load::{base_dir, load, resolve, ComposeFile, Extras, PolicyExtras};
use crate::flags::split_words;

/// What `stack deploy` sends, and what it tells the user.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Networks, secrets, configs, then services.
    pub objects: Vec<AnyObject>,
    /// The compose key each object came from (`services.web`), in the same order.
    pub origins: Vec<String>,
    /// One line per ignored key (and per variable used unset).
    pub warnings: Vec<String>,
}

/// The outside world a conversion reads: the environment and files (the compose files'
/// `.env`, `env_file`s, and `file:` of secrets and configs).
pub struct Inputs<'a> {
    /// A variable's value in the environment.
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
    /// A file's bytes.
    pub read: &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
}

/// Checks a stack name: a DNS label without `_` (the `_` separates it from the keys).
pub fn check_stack_name(name: &str) -> Result<()> {
    if name.contains('_') {
        bail!("stack name {name:?} must not contain '_' (objects are named <stack>_<name>)");
    }
    check_object_name(name).map_err(|e| anyhow!("stack name {name:?}: {e}"))
}

/// Turns compose files into the objects of stack `stack`.
pub fn convert(stack: &str, files: &[ComposeFile], inputs: &Inputs) -> Result<Stack> {
    check_stack_name(stack)?;
    let dir = base_dir(files);
    let dotenv = match (inputs.read)(&dir.join(".env")) {
        Ok(bytes) => Some(String::from_utf8(bytes).context(".env is not UTF-8 text")?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => bail!("cannot read {}: {e}", dir.join(".env").display()),
    };
    let loaded = load(files, inputs.lookup, dotenv.as_deref())?;
    let dotenv_vars: BTreeMap<String, String> = dotenv
        .as_deref()
        .map(|t| dotenvy::from_read_iter(t.as_bytes()).flatten().collect())
        .unwrap_or_default();
    let vars = |name: &str| (inputs.lookup)(name).or_else(|| dotenv_vars.get(name).cloned());
    let mut warnings: Vec<String> = loaded
        .unset
        .iter()
        .map(|v| format!("variable {v} is not set: using an empty string"))
        .collect();
    warnings.extend(unsupported_keys(&loaded.raw));
    let mut cx = Cx {
        stack,
        dir,
        read: inputs.read,
        vars: &vars,
        extras: loaded.extras,
        out: Stack {
            objects: vec![],
            origins: vec![],
            warnings,
        },
        networks: BTreeMap::new(),
        secrets: BTreeMap::new(),
        configs: BTreeMap::new(),
        volumes: BTreeMap::new(),
    };
    let c = loaded.compose;
    cx.networks(&c.networks)?;
    cx.payloads(&c)?;
    cx.volumes(&c.volumes)?;
    let mut default_needed = false;
    let mut services = vec![];
    for (key, svc) in c.services {
        let key = key.to_string();
        let (service, uses_default) = cx.service(&key, svc)?;
        default_needed |= uses_default;
        services.push((key, service));
    }
    if default_needed && !c.networks.contains_key("default") {
        let name = cx.scoped("default");
        let net = Network::new(
            name,
            NetworkSpec {
                driver: "overlay".into(),
                ..Default::default()
            },
        );
        cx.push(
            "networks.default",
            AnyObject::Network(cx.labelled(net, BTreeMap::new())),
        );
    }
    for (key, svc) in services {
        cx.push(&format!("services.{key}"), AnyObject::Service(svc));
    }
    Ok(cx.out)
}

struct Cx<'a> {
    stack: &'a str,
    dir: PathBuf,
    read: &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    vars: &'a dyn Fn(&str) -> Option<String>,
    extras: Extras,
    out: Stack,
    /// compose key -> object name, per section.
    networks: BTreeMap<String, String>,
    secrets: BTreeMap<String, String>,
    configs: BTreeMap<String, String>,
    volumes: BTreeMap<String, String>,
}

fn labels_of(l: &ListOrMap, at: &str) -> Result<BTreeMap<String, String>> {
    let map = l.clone().into_map().map_err(|e| anyhow!("{at}: {e}"))?;
    Ok(map
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.map(|v| v.to_string()).unwrap_or_default()))
        .collect())
}

/// Whole seconds, rounding up (a 1.5s interval waits 2s rather than 1s).
fn secs_ceil(d: Duration) -> u32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.min(u64::from(u32::MAX)) as u32
}

/// Bytes of a compose byte value, with Docker's binary units (`64m` = 64 MiB).
fn bytes(v: ByteValue) -> u64 {
    match v {
        ByteValue::Bytes(n) => n,
        ByteValue::Kilobytes(n) => n.saturating_mul(1 << 10),
        ByteValue::Megabytes(n) => n.saturating_mul(1 << 20),
        ByteValue::Gigabytes(n) => n.saturating_mul(1 << 30),
    }
}

impl Cx<'_> {
    fn scoped(&self, key: &str) -> String {
        format!("{}_{key}", self.stack)
    }

    fn labelled<S: shoal_api_types::Resource>(
        &self,
        mut obj: shoal_api_types::Object<S>,
        labels: BTreeMap<String, String>,
    ) -> shoal_api_types::Object<S> {
        obj.metadata.labels = labels;
        obj.metadata
            .labels
            .insert(STACK.to_string(), self.stack.to_string());
        obj
    }

    fn push(&mut self, origin: &str, obj: AnyObject) {
        self.out.origins.push(origin.to_string());
        self.out.objects.push(obj);
    }

    fn checked_name(&self, name: String, at: &str) -> Result<String> {
        check_object_name(&name).map_err(|e| anyhow!("{at}: name {name:?}: {e}"))?;
        Ok(name)
    }

    fn read_file(&self, path: &Path, at: &str) -> Result<Vec<u8>> {
        let full = resolve(&self.dir, path);
        (self.read)(&full).map_err(|e| anyhow!("{at}: cannot read {}: {e}", full.display()))
    }

    fn networks(&mut self, nets: &compose_spec::Networks) -> Result<()> {
        for (key, res) in nets {
            let key = key.to_string();
            let at = format!("networks.{key}");
            let net = match res {
                Some(Resource::External { name }) => {
                    let name = name.clone().unwrap_or_else(|| key.clone());
                    self.networks.insert(key, name);
                    continue;
                }
                Some(Resource::Compose(n)) => n.clone(),
                None => Default::default(),
            };
            let name =
                self.checked_name(net.name.clone().unwrap_or_else(|| self.scoped(&key)), &at)?;
            let mut spec = NetworkSpec {
                driver: "overlay".into(),
                attachable: net.attachable,
                internal: net.internal,
                ..Default::default()
            };
            match &net.driver {
                None => {}
                Some(compose_spec::network::Driver::Other(d)) if d == "overlay" => {}
                Some(other) => bail!(
                    "{at}.driver: only overlay networks can be created in a stack (got {other:?})"
                ),
            }
            if let Some(ipam) = &net.ipam {
                match ipam.config.as_slice() {
                    [] => {}
                    [one] => {
                        spec.subnet = one.subnet.map(|s| s.to_string());
                        spec.gateway = one.gateway.map(|g| g.to_string());
                    }
                    _ => bail!("{at}.ipam.config: a network has one subnet in Shoal"),
                }
            }
            // As `network create --label`: a network's own labels are in its spec.
            spec.labels = labels_of(&net.labels, &format!("{at}.labels"))?;
            self.networks.insert(key, name.clone());
            let obj = self.labelled(Network::new(name, spec), BTreeMap::new());
            self.push(&at, AnyObject::Network(obj));
        }
        Ok(())
    }

    fn payloads(&mut self, c: &compose_spec::Compose) -> Result<()> {
        for (key, res) in &c.secrets {
            let key = key.to_string();
            let at = format!("secrets.{key}");
            let s = match res {
                Resource::External { name } => {
                    let name = name.clone().unwrap_or_else(|| key.clone());
                    self.secrets.insert(key, name);
                    continue;
                }
                Resource::Compose(s) => s,
            };
            let data = match &s.source {
                compose_spec::secret::Source::File(p) => {
                    self.read_file(p, &format!("{at}.file"))?
                }
                compose_spec::secret::Source::Environment(var) => (self.vars)(var)
                    .ok_or_else(|| anyhow!("{at}.environment: variable {var} is not set"))?
                    .into_bytes(),
            };
            let name = self.extras.secret_names.get(&key).cloned();
            let name = self.checked_name(name.unwrap_or_else(|| self.scoped(&key)), &at)?;
            let labels = labels_of(&s.labels, &format!("{at}.labels"))?;
            self.secrets.insert(key, name.clone());
            let spec = SecretSpec {
                data: Some(encode_payload(&data)),
            };
            let obj = self.labelled(Secret::new(name, spec), labels);
            self.push(&at, AnyObject::Secret(obj));
        }
        for (key, res) in &c.configs {
            let key = key.to_string();
            let at = format!("configs.{key}");
            let s = match res {
                Resource::External { name } => {
                    let name = name.clone().unwrap_or_else(|| key.clone());
                    self.configs.insert(key, name);
                    continue;
                }
                Resource::Compose(s) => s,
            };
            let data = match &s.source {
                compose_spec::config::Source::File(p) => {
                    self.read_file(p, &format!("{at}.file"))?
                }
                compose_spec::config::Source::Environment(var) => (self.vars)(var)
                    .ok_or_else(|| anyhow!("{at}.environment: variable {var} is not set"))?
                    .into_bytes(),
                compose_spec::config::Source::Content(text) => text.clone().into_bytes(),
            };
            let name = self.extras.config_names.get(&key).cloned();
            let name = self.checked_name(name.unwrap_or_else(|| self.scoped(&key)), &at)?;
            let labels = labels_of(&s.labels, &format!("{at}.labels"))?;
            self.configs.insert(key, name.clone());
            let spec = ConfigSpec {
                data: Some(encode_payload(&data)),
            };
            let obj = self.labelled(Config::new(name, spec), labels);
            self.push(&at, AnyObject::Config(obj));
        }
        Ok(())
    }

    fn volumes(&mut self, vols: &compose_spec::Volumes) -> Result<()> {
        for (key, res) in vols {
            let key = key.to_string();
            let name = match res {
                Some(Resource::External { name }) => name.clone().unwrap_or_else(|| key.clone()),
                Some(Resource::Compose(v)) => v.name.clone().unwrap_or_else(|| self.scoped(&key)),
                None => self.scoped(&key),
            };
            check_volume_name(&name).map_err(|e| anyhow!("volumes.{key}: {e}"))?;
            self.volumes.insert(key, name);
        }
        Ok(())
    }

    /// The service, and whether it joins the default network.
    fn service(&mut self, key: &str, s: compose_spec::Service) -> Result<(Service, bool)> {
        let at = format!("services.{key}");
        let name = self.checked_name(self.scoped(key), &at)?;
        let image = self.extras.images.get(key).cloned().ok_or_else(|| {
            anyhow!("{at}.image: is required (Shoal runs images; build: is not supported)")
        })?;
        let mut spec = ServiceSpec {
            image,
            ..Default::default()
        };
        let words = |c: &Command, field: &str| -> Result<Vec<String>> {
            match c {
                Command::String(s) => {
                    split_words(&format!("{at}.{field}"), s).map_err(anyhow::Error::msg)
                }
                Command::List(l) => Ok(l.clone()),
            }
        };
        if let Some(c) = &s.command {
            spec.args = words(c, "command")?;
        }
        if let Some(c) = &s.entrypoint {
            spec.command = words(c, "entrypoint")?;
        }
        if let Some(files) = &s.env_file {
            for (i, entry) in files.clone().into_list().into_iter().enumerate() {
                let (path, required) = match entry {
                    ShortOrLong::Short(p) => (p, true),
                    ShortOrLong::Long(c) => (c.path, c.required),
                };
                let full = resolve(&self.dir, &path);
                let text = match (self.read)(&full) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
                    Err(e) => bail!("{at}.env_file[{i}]: cannot read {}: {e}", full.display()),
                };
                for kv in dotenvy::from_read_iter(text.as_slice()) {
                    let (k, v) =
                        kv.map_err(|e| anyhow!("{at}.env_file[{i}]: {}: {e}", full.display()))?;
                    spec.env.insert(k, v);
                }
            }
        }
        let env = s
            .environment
            .clone()
            .into_map()
            .map_err(|e| anyhow!("{at}.environment: {e}"))?;
        for (k, v) in env {
            let k = k.to_string();
            match v {
                Some(v) => {
                    spec.env.insert(k, v.to_string());
                }
                // `- NAME` alone: the value from here, or nothing.
                None => {
                    if let Some(v) = (self.vars)(&k) {
                        spec.env.insert(k, v);
                    }
                }
            }
        }
        spec.healthcheck = health(&s.healthcheck, &at)?;
        spec.ports = ports(&s.ports, &at, &mut self.out.warnings)?;
        let uses_default = self.attach(&mut spec, key, &s.network_config, &at)?;
        self.files(&mut spec, &s, &at)?;
        self.mounts(&mut spec, &s.volumes, &at)?;
        spec.container_labels = labels_of(&s.labels, &format!("{at}.labels"))?;
        spec.user = s.user.as_ref().map(|u| u.to_string()).unwrap_or_default();
        spec.working_dir = s
            .working_dir
            .as_ref()
            .map(|p| p.as_path().display().to_string())
            .unwrap_or_default();
        spec.stop_grace_period_seconds = s.stop_grace_period.map(secs_ceil);
        spec.cap_add = s.cap_add.iter().cloned().collect();
        spec.cap_drop = s.cap_drop.iter().cloned().collect();
        spec.read_only_root_filesystem = s.read_only;
        let labels = self.deploy(&mut spec, key, s.deploy.as_ref(), &at)?;
        let svc = self.labelled(Service::new(name, spec), labels);
        Ok((svc, uses_default))
    }

    /// Networks of a service; true when it lists none (and so joins the default network).
    fn attach(
        &mut self,
        spec: &mut ServiceSpec,
        key: &str,
        config: &Option<NetworkConfig>,
        at: &str,
    ) -> Result<bool> {
        let listed: Vec<(String, Vec<String>)> = match config {
            Some(NetworkConfig::Networks(ShortOrLong::Short(set))) => {
                set.iter().map(|n| (n.to_string(), vec![])).collect()
            }
            Some(NetworkConfig::Networks(ShortOrLong::Long(map))) => map
                .iter()
                .map(|(n, cfg)| {
                    let aliases = cfg
                        .as_ref()
                        .map(|c| c.aliases.iter().map(|a| a.to_string()).collect())
                        .unwrap_or_default();
                    (n.to_string(), aliases)
                })
                .collect(),
            // network_mode is warned about; Swarm ignores it too.
            Some(NetworkConfig::NetworkMode(_)) | None => vec![],
        };
        let uses_default = listed.is_empty();
        let listed = if uses_default {
            vec![("default".to_string(), vec![])]
        } else {
            listed
        };
        for (net, mut aliases) in listed {
            let name = match self.networks.get(&net) {
                Some(name) => name.clone(),
                None if net == "default" => self.scoped("default"),
                None => bail!(
                    "{at}.networks.{net}: network {net} is not defined in the top-level networks:"
                ),
            };
            if !aliases.iter().any(|a| a == key) {
                aliases.insert(0, key.to_string());
            }
            spec.networks
                .push(NetworkAttachmentConfig { name, aliases });
        }
        Ok(uses_default)
    }

    fn files(&mut self, spec: &mut ServiceSpec, s: &compose_spec::Service, at: &str) -> Result<()> {
        for (i, r) in s.secrets.iter().enumerate() {
            let at = format!("{at}.secrets[{i}]");
            let (key, target, uid, gid, mode) = reference(r);
            let source = self.secrets.get(&key).cloned().ok_or_else(|| {
                anyhow!("{at}: secret {key} is not defined in the top-level secrets:")
            })?;
            let target = match target {
                None => key.clone(),
                Some(t) => {
                    let t = t.display().to_string();
                    match t.strip_prefix("/run/secrets/") {
                        Some(file) => file.to_string(),
                        None if t.starts_with('/') => bail!(
                            "{at}.target: {t:?}: secrets are files in /run/secrets (give a file name)"
                        ),
                        None => t,
                    }
                }
            };
            spec.secrets.push(SecretReference {
                source,
                target,
                uid: uid.unwrap_or(0),
                gid: gid.unwrap_or(0),
                mode: mode.unwrap_or(shoal_api_types::service::DEFAULT_FILE_MODE),
            });
        }
        for (i, r) in s.configs.iter().enumerate() {
            let at = format!("{at}.configs[{i}]");
            let (key, target, uid, gid, mode) = reference(r);
            let source = self.configs.get(&key).cloned().ok_or_else(|| {
                anyhow!("{at}: config {key} is not defined in the top-level configs:")
            })?;
            let target = match target {
                None => format!("/{key}"),
                Some(t) if t.is_absolute() => t.display().to_string(),
                Some(t) => bail!("{at}.target: {:?} must be an absolute path", t.display()),
            };
            spec.configs.push(ConfigReference {
                source,
                target,
                uid: uid.unwrap_or(0),
                gid: gid.unwrap_or(0),
                mode: mode.unwrap_or(shoal_api_types::service::DEFAULT_FILE_MODE),
            });
        }
        Ok(())
    }

    fn mounts(
        &mut self,
        spec: &mut ServiceSpec,
        volumes: &compose_spec::service::Volumes,
        at: &str,
    ) -> Result<()> {
        for (i, v) in volumes.iter().enumerate() {
            let at = format!("{at}.volumes[{i}]");
            let m = match v.clone() {
                ShortOrLong::Short(s) => s.into_long(),
                ShortOrLong::Long(m) => m,
            };
            let mount = match m {
                CMount::Volume(v) => {
                    let key = v
                        .source
                        .as_ref()
                        .ok_or_else(|| {
                            anyhow!("{at}: anonymous volumes are not supported: name the volume (NAME:{})", v.common.target.as_path().display())
                        })?
                        .to_string();
                    let source = self.volumes.get(&key).cloned().ok_or_else(|| {
                        anyhow!("{at}: volume {key} is not defined in the top-level volumes:")
                    })?;
                    Mount {
                        type_: MountType::Volume,
                        source,
                        target: v.common.target.as_path().display().to_string(),
                        read_only: v.common.read_only,
                        tmpfs_size: None,
                    }
                }
                CMount::Bind(b) => {
                    let source = resolve(&self.dir, b.source.as_path());
                    let source = std::path::absolute(&source).unwrap_or(source);
                    Mount {
                        type_: MountType::Bind,
                        source: source.display().to_string(),
                        target: b.common.target.as_path().display().to_string(),
                        read_only: b.common.read_only,
                        tmpfs_size: None,
                    }
                }
                CMount::Tmpfs(t) => Mount {
                    type_: MountType::Tmpfs,
                    source: String::new(),
                    target: t.common.target.as_path().display().to_string(),
                    read_only: t.common.read_only,
                    tmpfs_size: t
                        .tmpfs
                        .as_ref()
                        .and_then(|o| o.size)
                        .map(|b| Memory(bytes(b))),
                },
                CMount::NamedPipe(_) | CMount::Cluster(_) => {
                    bail!("{at}: only volume, bind and tmpfs mounts are supported")
                }
            };
            spec.mounts.push(mount);
        }
        Ok(())
    }

    /// `deploy:`; returns the service's labels (`deploy.labels`).
    fn deploy(
        &mut self,
        spec: &mut ServiceSpec,
        key: &str,
        deploy: Option<&Deploy>,
        at: &str,
    ) -> Result<BTreeMap<String, String>> {
        let at = format!("{at}.deploy");
        let d = deploy.cloned().unwrap_or_default();
        spec.mode = match d.mode {
            Some(cdeploy::Mode::Global) => ServiceMode::Global,
            _ => ServiceMode::Replicated,
        };
        spec.replicas = match (spec.mode, d.replicas) {
            (ServiceMode::Global, Some(_)) => {
                bail!("{at}.replicas: cannot be used with mode: global")
            }
            (ServiceMode::Global, None) => None,
            (ServiceMode::Replicated, r) => Some(r.unwrap_or(1).min(i64::MAX as u64) as i64),
        };
        spec.endpoint_mode = match &d.endpoint_mode {
            None | Some(cdeploy::EndpointMode::VIp) => EndpointMode::Vip,
            Some(cdeploy::EndpointMode::DnsRR) => EndpointMode::Dnsrr,
            Some(cdeploy::EndpointMode::Other(o)) => {
                bail!("{at}.endpoint_mode: {o:?} is not vip or dnsrr")
            }
        };
        if let Some(p) = &d.placement {
            for (i, c) in p.constraints.iter().enumerate() {
                c.parse::<Constraint>()
                    .map_err(|e| anyhow!("{at}.placement.constraints[{i}]: {e}"))?;
            }
            spec.placement.constraints = p.constraints.clone();
            spec.placement.max_replicas_per_node = p.max_replicas_per_node;
        }
        if let Some(r) = &d.resources {
            spec.resources = resources(r.limits.as_ref(), r.reservations.as_ref(), &at)?;
        }
        if let Some(r) = &d.restart_policy {
            spec.restart_policy = RestartPolicy {
                condition: match r.condition {
                    Some(cdeploy::RestartCondition::None) => RestartCondition::None,
                    Some(cdeploy::RestartCondition::OnFailure) => RestartCondition::OnFailure,
                    _ => RestartCondition::Any,
                },
                delay_seconds: r.delay.map(secs_ceil),
                max_attempts: r.max_attempts.map(|n| n.min(u64::from(u32::MAX)) as u32),
            };
        }
        let extras = |m: &BTreeMap<String, PolicyExtras>| m.get(key).cloned().unwrap_or_default();
        if let Some(u) = &d.update_config {
            spec.update_config = policy(
                u,
                extras(&self.extras.update),
                &format!("{at}.update_config"),
            )?;
        } else if self.extras.update.contains_key(key) {
            spec.update_config = policy(&Default::default(), extras(&self.extras.update), &at)?;
        }
        if let Some(u) = &d.rollback_config {
            spec.rollback_config = policy(
                u,
                extras(&self.extras.rollback),
                &format!("{at}.rollback_config"),
            )?;
        } else if self.extras.rollback.contains_key(key) {
            spec.rollback_config = policy(&Default::default(), extras(&self.extras.rollback), &at)?;
        }
        labels_of(&d.labels, &format!("{at}.labels"))
    }
}

type RefParts = (
    String,
    Option<PathBuf>,
    Option<u32>,
    Option<u32>,
    Option<u32>,
);

fn reference(
    r: &ShortOrLong<compose_spec::Identifier, compose_spec::service::ConfigOrSecret>,
) -> RefParts {
    match r {
        ShortOrLong::Short(id) => (id.to_string(), None, None, None, None),
        ShortOrLong::Long(l) => (l.source.to_string(), l.target.clone(), l.uid, l.gid, l.mode),
    }
}

fn health(h: &Option<Healthcheck>, at: &str) -> Result<Option<HealthCheck>> {
    let at = format!("{at}.healthcheck");
    let c = match h {
        None | Some(Healthcheck::Disable) => return Ok(None),
        Some(Healthcheck::Command(c)) => c,
    };
    let command = match &c.test {
        None => bail!("{at}.test: is required (Shoal does not read health checks from images)"),
        Some(chealth::Test::ShellCommand(s)) => vec!["sh".into(), "-c".into(), s.clone()],
        // compose_spec took the "CMD" / "CMD-SHELL" / "NONE" word off already.
        Some(chealth::Test::Command(words)) if !words.is_empty() => words.clone(),
        Some(chealth::Test::Command(_)) => {
            bail!("{at}.test: [\"CMD\"] needs a command after it")
        }
    };
    Ok(Some(HealthCheck {
        command,
        interval_seconds: c.interval.map(secs_ceil),
        timeout_seconds: c.timeout.map(secs_ceil),
        retries: c.retries.map(|n| n.min(u64::from(u32::MAX)) as u32),
        start_period_seconds: c.start_period.map(secs_ceil),
    }))
}

/// Compose has no traffic policy: the long port syntax takes it as an extension,
/// `x-shoal-traffic: cluster|local` (Shoal's `traffic`).
const TRAFFIC_EXT: &str = "x-shoal-traffic";
/// `x-shoal-health-port: N` on a long-syntax port (Shoal's `healthPort`).
const HEALTH_PORT_EXT: &str = "x-shoal-health-port";

fn ports(p: &cports::Ports, at: &str, warnings: &mut Vec<String>) -> Result<Vec<PortConfig>> {
    let mut out = vec![];
    for (i, entry) in p.iter().enumerate() {
        let at = format!("{at}.ports[{i}]");
        let longs: Vec<Port> = match entry.clone() {
            ShortOrLong::Short(s) => s.into_long_iter().collect(),
            ShortOrLong::Long(l) => vec![l],
        };
        for port in longs {
            let published = port.published.ok_or_else(|| {
                anyhow!("{at}: give the published port too (PUBLISHED:TARGET, or published: in the long syntax): Shoal does not pick published ports")
            })?;
            if published.end().is_some() {
                bail!("{at}: a published port range needs as many target ports");
            }
            if port.host_ip.is_some() {
                warnings.push(format!(
                    "{at}: host_ip is not supported: the port is published on every address"
                ));
            }
            out.push(PortConfig {
                published: u32::from(published.start()),
                target: u32::from(port.target),
                protocol: match &port.protocol {
                    None | Some(cports::Protocol::Tcp) => Protocol::Tcp,
                    Some(cports::Protocol::Udp) => Protocol::Udp,
                    Some(cports::Protocol::Other(o)) => {
                        bail!("{at}.protocol: {o:?} is not tcp or udp")
                    }
                },
                mode: match port.mode {
                    Some(cports::Mode::Host) => PublishMode::Host,
                    _ => PublishMode::Ingress,
                },
                traffic: match port.extensions.get(TRAFFIC_EXT).map(|v| v.as_str()) {
                    None => TrafficPolicy::Cluster,
                    Some(Some("cluster")) => TrafficPolicy::Cluster,
                    Some(Some("local")) => TrafficPolicy::Local,
                    Some(_) => bail!("{at}.{TRAFFIC_EXT}: must be cluster or local"),
                },
                health_port: match port.extensions.get(HEALTH_PORT_EXT) {
                    None => None,
                    Some(v) => Some(
                        v.as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .filter(|n| (1..=65535).contains(n))
                            .ok_or_else(|| {
                                anyhow!("{at}.{HEALTH_PORT_EXT}: must be a port number (1-65535)")
                            })?,
                    ),
                },
            });
            for key in port.extensions.keys() {
                if ![TRAFFIC_EXT, HEALTH_PORT_EXT].contains(&key.as_str()) {
                    warnings.push(format!("{at}.{key}: not a Shoal extension: ignored"));
                }
            }
        }
    }
    Ok(out)
}

fn resources(
    limits: Option<&Limits>,
    reservations: Option<&Reservations>,
    at: &str,
) -> Result<Resources> {
    let cpus = |c: Option<compose_spec::service::Cpus>, field: &str| -> Result<Option<Cpus>> {
        c.map(|c| {
            c.into_inner()
                .to_string()
                .parse::<Cpus>()
                .map_err(|e| anyhow!("{at}.resources.{field}: {e}"))
        })
        .transpose()
    };
    let mut r = Resources::default();
    if let Some(l) = limits {
        r.limits = ResourceLimits {
            cpus: cpus(l.cpus, "limits.cpus")?,
            memory: l.memory.map(|m| Memory(bytes(m))),
            pids: match l.pids {
                Some(Limit::Value(n)) => Some(n),
                _ => None,
            },
        };
    }
    if let Some(res) = reservations {
        r.reservations = ResourceReservations {
            cpus: cpus(res.cpus, "reservations.cpus")?,
            memory: res.memory.map(|m| Memory(bytes(m))),
        };
    }
    Ok(r)
}

fn policy(
    u: &cdeploy::UpdateOrRollbackConfig,
    extras: PolicyExtras,
    at: &str,
) -> Result<UpdateConfig> {
    let mut cfg = UpdateConfig::default();
    if let Some(n) = u.parallelism {
        cfg.parallelism = n;
    }
    for (name, value, field) in [
        ("delay", u.delay, &mut cfg.delay),
        ("monitor", u.monitor, &mut cfg.monitor),
    ] {
        if let Some(d) = value {
            if d > shoal_api_types::update::MAX_UPDATE_PERIOD {
                bail!("{at}.{name}: must be at most 1h");
            }
            *field = HumanDuration(d);
        }
    }
    cfg.failure_action = match extras.failure_action.as_deref() {
        None | Some("pause") => FailureAction::Pause,
        Some("continue") => FailureAction::Continue,
        Some(_) => FailureAction::Rollback,
    };
    if let Some(r) = extras.max_failure_ratio {
        cfg.max_failure_ratio = Ratio(r);
    }
    if let Some(o) = u.order {
        cfg.order = match o {
            cdeploy::Order::StopFirst => UpdateOrder::StopFirst,
            cdeploy::Order::StartFirst => UpdateOrder::StartFirst,
        };
    }
    Ok(cfg)
}

/// Keys each part of a compose file may hold; `*` below a key: its sub-keys are free.
const TOP_KEYS: &[&str] = &[
    "version", "name", "services", "networks", "volumes", "secrets", "configs",
];
const SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "healthcheck",
    "ports",
    "networks",
    "secrets",
    "configs",
    "volumes",
    "labels",
    "user",
    "working_dir",
    "stop_grace_period",
    "deploy",
    "cap_add",
    "cap_drop",
    "read_only",
];
const DEPLOY_KEYS: &[&str] = &[
    "mode",
    "replicas",
    "placement",
    "resources",
    "restart_policy",
    "update_config",
    "rollback_config",
    "endpoint_mode",
    "labels",
];
const NESTED_KEYS: &[(&str, &[&str])] = &[
    (
        "healthcheck",
        &[
            "test",
            "interval",
            "timeout",
            "retries",
            "start_period",
            "disable",
        ],
    ),
    (
        "deploy.placement",
        &["constraints", "max_replicas_per_node"],
    ),
    ("deploy.resources", &["limits", "reservations"]),
    ("deploy.resources.limits", &["cpus", "memory", "pids"]),
    ("deploy.resources.reservations", &["cpus", "memory"]),
    (
        "deploy.restart_policy",
        &["condition", "delay", "max_attempts"],
    ),
    (
        "deploy.update_config",
        &["parallelism", "delay", "monitor", "order"],
    ),
    (
        "deploy.rollback_config",
        &["parallelism", "delay", "monitor", "order"],
    ),
];
const NETWORK_KEYS: &[&str] = &[
    "driver",
    "attachable",
    "internal",
    "labels",
    "ipam",
    "external",
    "name",
];
const VOLUME_KEYS: &[&str] = &["external", "name"];
const SECRET_KEYS: &[&str] = &["file", "environment", "external", "name", "labels"];
const CONFIG_KEYS: &[&str] = &[
    "file",
    "environment",
    "content",
    "external",
    "name",
    "labels",
];

fn keys(v: &Value) -> Vec<String> {
    v.as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .filter(|k| !k.starts_with("x-"))
                .collect()
        })
        .unwrap_or_default()
}

fn get<'v>(v: &'v Value, dotted: &str) -> Option<&'v Value> {
    dotted.split('.').try_fold(v, |v, k| v.get(k))
}

/// One warning per key Shoal does not honour, per service (or per top-level entry).
pub fn unsupported_keys(raw: &Value) -> Vec<String> {
    let mut out = vec![];
    for k in keys(raw) {
        if !TOP_KEYS.contains(&k.as_str()) {
            out.push(format!("top-level key {k} is not supported: ignored"));
        }
    }
    if let Some(services) = raw.get("services").and_then(Value::as_mapping) {
        for (name, svc) in services {
            let name = name.as_str().unwrap_or("?");
            let mut ignored: Vec<String> = keys(svc)
                .into_iter()
                .filter(|k| !SERVICE_KEYS.contains(&k.as_str()))
                .collect();
            if let Some(deploy) = svc.get("deploy") {
                ignored.extend(
                    keys(deploy)
                        .into_iter()
                        .filter(|k| !DEPLOY_KEYS.contains(&k.as_str()))
                        .map(|k| format!("deploy.{k}")),
                );
            }
            for (path, allowed) in NESTED_KEYS {
                if let Some(v) = get(svc, path) {
                    ignored.extend(
                        keys(v)
                            .into_iter()
                            .filter(|k| !allowed.contains(&k.as_str()))
                            .map(|k| format!("{path}.{k}")),
                    );
                }
            }
            for k in ignored {
                out.push(format!("service {name}: {k} is not supported: ignored"));
            }
        }
    }
    for (section, allowed) in [
        ("networks", NETWORK_KEYS),
        ("volumes", VOLUME_KEYS),
        ("secrets", SECRET_KEYS),
        ("configs", CONFIG_KEYS),
    ] {
        let Some(items) = raw.get(section).and_then(Value::as_mapping) else {
            continue;
        };
        for (name, item) in items {
            let name = name.as_str().unwrap_or("?");
            for k in keys(item) {
                let local_driver = section == "volumes"
                    && k == "driver"
                    && item.get("driver").and_then(Value::as_str) == Some("local");
                if !allowed.contains(&k.as_str()) && !local_driver {
                    out.push(format!("{section} {name}: {k} is not supported: ignored"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &str = r#"
version: "3.8"
services:
  web:
    image: localhost:5000/busybox:${TAG:-latest}
    command: httpd -f -p 80
    ports:
      - "8080:80"
      - target: 81
        published: 8081
        protocol: udp
        mode: host
    networks: [front]
    configs:
      - source: site
        target: /etc/site.conf
    healthcheck:
      test: ["CMD-SHELL", "wget -qO- http://localhost/"]
      interval: 1500ms
      retries: 3
    deploy:
      replicas: 2
      labels: {tier: web}
    labels: {com.example.role: frontend}
  api:
    image: busybox
    entrypoint: ["/bin/sh", "-c"]
    command: ["echo $$HOME"]
    environment:
      - MODE=${MODE:?MODE must be set}
      - FROM_HOST
    networks:
      front:
      back:
        aliases: [backend]
    secrets:
      - pw
      - source: pw
        target: /run/secrets/other
        mode: 0400
    stop_grace_period: 1m30s
    deploy:
      replicas: 3
      update_config:
        parallelism: 2
        delay: 10s
        order: start-first
        failure_action: rollback
        max_failure_ratio: 0.5
      restart_policy: {condition: on-failure, delay: 2s, max_attempts: 4}
      resources:
        limits: {cpus: "0.5", memory: 64m, pids: 100}
        reservations: {memory: 32m}
  store:
    image: busybox
    volumes:
      - data:/data
      - type: tmpfs
        target: /cache
        tmpfs: {size: 64m}
    build: ./store
    privileged: true
    deploy:
      placement:
        constraints: [node.labels.disk==ssd]
        max_replicas_per_node: 1
        preferences: [{spread: node.labels.zone}]
  worker:
    image: busybox
    depends_on: [api]
    deploy: {mode: global}
networks:
  front: {}
  back: {internal: true, attachable: true}
  outside: {external: true, name: shared}
volumes:
  data: {}
secrets:
  pw: {file: ./pw.txt}
configs:
  site: {file: ./site.conf}
"#;

    fn files(text: &str) -> Vec<ComposeFile> {
        vec![ComposeFile {
            path: PathBuf::from("/srv/shop/compose.yml"),
            text: text.into(),
        }]
    }

    fn read(path: &Path) -> std::io::Result<Vec<u8>> {
        match path.to_str() {
            Some("/srv/shop/pw.txt") => Ok(b"s3cret".to_vec()),
            Some("/srv/shop/site.conf") => Ok(b"listen 80".to_vec()),
            Some("/srv/shop/.env") => Ok(b"TAG=1.36\nMODE=dotenv\n".to_vec()),
            _ => Err(std::io::ErrorKind::NotFound.into()),
        }
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "MODE" => Some("prod".into()),
            "FROM_HOST" => Some("yes".into()),
            _ => None,
        }
    }

    fn shop() -> Stack {
        convert(
            "shop",
            &files(SHOP),
            &Inputs {
                lookup: &env,
                read: &read,
            },
        )
        .unwrap()
    }

    fn service<'a>(stack: &'a Stack, name: &str) -> &'a Service {
        stack
            .objects
            .iter()
            .find_map(|o| match o {
                AnyObject::Service(s) if s.name() == name => Some(s),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    #[test]
    fn objects_are_named_after_the_stack_and_labelled_with_it() {
        let stack = shop();
        let refs: Vec<String> = stack.objects.iter().map(AnyObject::reference).collect();
        assert_eq!(
            refs,
            [
                "network/shop_front",
                "network/shop_back",
                "secret/shop_pw",
                "config/shop_site",
                "network/shop_default",
                "service/shop_web",
                "service/shop_api",
                "service/shop_store",
                "service/shop_worker",
            ]
        );
        assert_eq!(stack.origins[0], "networks.front");
        assert_eq!(stack.origins[5], "services.web");
        for o in &stack.objects {
            let labels = match o {
                AnyObject::Network(n) => &n.metadata.labels,
                AnyObject::Service(s) => &s.metadata.labels,
                AnyObject::Secret(s) => &s.metadata.labels,
                AnyObject::Config(c) => &c.metadata.labels,
            };
            assert_eq!(
                labels.get(STACK).map(String::as_str),
                Some("shop"),
                "{}",
                o.reference()
            );
        }
        match &stack.objects[1] {
            AnyObject::Network(n) => {
                assert!(n.spec.internal && n.spec.attachable);
                assert_eq!(n.spec.driver, "overlay");
            }
            other => panic!("{other:?}"),
        }
        match &stack.objects[2] {
            AnyObject::Secret(s) => assert_eq!(
                s.spec.data.as_deref(),
                Some(encode_payload(b"s3cret").as_str())
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn services_join_their_networks_with_their_short_name_as_alias() {
        let stack = shop();
        let api = service(&stack, "shop_api");
        assert_eq!(
            api.spec.networks,
            [
                NetworkAttachmentConfig {
                    name: "shop_front".into(),
                    aliases: vec!["api".into()]
                },
                NetworkAttachmentConfig {
                    name: "shop_back".into(),
                    aliases: vec!["api".into(), "backend".into()]
                },
            ]
        );
        let store = service(&stack, "shop_store");
        assert_eq!(
            store.spec.networks,
            [NetworkAttachmentConfig {
                name: "shop_default".into(),
                aliases: vec!["store".into()]
            }]
        );
    }

    #[test]
    fn interpolation_uses_the_environment_before_dotenv() {
        let stack = shop();
        let web = service(&stack, "shop_web");
        assert_eq!(web.spec.image, "localhost:5000/busybox:1.36");
        let api = service(&stack, "shop_api");
        assert_eq!(api.spec.env.get("MODE").map(String::as_str), Some("prod"));
        assert_eq!(
            api.spec.env.get("FROM_HOST").map(String::as_str),
            Some("yes")
        );
        assert_eq!(api.spec.args, ["echo $HOME"]);
        assert_eq!(api.spec.command, ["/bin/sh", "-c"]);
        let no_mode = |name: &str| if name == "MODE" { None } else { env(name) };
        let read_no_env = |p: &Path| {
            if p.ends_with(".env") {
                Err(std::io::ErrorKind::NotFound.into())
            } else {
                read(p)
            }
        };
        let e = convert(
            "shop",
            &files(SHOP),
            &Inputs {
                lookup: &no_mode,
                read: &read_no_env,
            },
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "/srv/shop/compose.yml: services.api.environment[0]: required variable MODE is missing a value: MODE must be set"
        );
    }

    #[test]
    fn deploy_keys_map_onto_the_service_spec() {
        let stack = shop();
        let web = service(&stack, "shop_web");
        assert_eq!(web.spec.replicas, Some(2));
        assert_eq!(web.spec.args, ["httpd", "-f", "-p", "80"]);
        assert_eq!(
            web.metadata.labels.get("tier").map(String::as_str),
            Some("web")
        );
        assert_eq!(
            web.spec
                .container_labels
                .get("com.example.role")
                .map(String::as_str),
            Some("frontend")
        );
        assert_eq!(
            web.spec.ports,
            [
                PortConfig {
                    published: 8080,
                    target: 80,
                    protocol: Protocol::Tcp,
                    mode: PublishMode::Ingress,
                    ..Default::default()
                },
                PortConfig {
                    published: 8081,
                    target: 81,
                    protocol: Protocol::Udp,
                    mode: PublishMode::Host,
                    ..Default::default()
                },
            ]
        );
        let hc = web.spec.healthcheck.clone().unwrap();
        assert_eq!(hc.command, ["sh", "-c", "wget -qO- http://localhost/"]);
        assert_eq!((hc.interval_seconds, hc.retries), (Some(2), Some(3)));
        assert_eq!(
            web.spec.configs,
            [ConfigReference {
                source: "shop_site".into(),
                target: "/etc/site.conf".into(),
                uid: 0,
                gid: 0,
                mode: 0o444
            }]
        );
        let api = service(&stack, "shop_api");
        assert_eq!(api.spec.secrets.len(), 2);
        assert_eq!(api.spec.secrets[0].source, "shop_pw");
        assert_eq!(api.spec.secrets[0].target, "pw");
        assert_eq!(api.spec.secrets[1].target, "other");
        assert_eq!(api.spec.secrets[1].mode, 0o400);
        assert_eq!(api.spec.stop_grace_period_seconds, Some(90));
        let u = &api.spec.update_config;
        assert_eq!(u.parallelism, 2);
        assert_eq!(u.delay, HumanDuration::from_secs(10));
        assert_eq!(u.order, UpdateOrder::StartFirst);
        assert_eq!(u.failure_action, FailureAction::Rollback);
        assert_eq!(u.max_failure_ratio, Ratio(0.5));
        assert_eq!(
            api.spec.restart_policy,
            RestartPolicy {
                condition: RestartCondition::OnFailure,
                delay_seconds: Some(2),
                max_attempts: Some(4)
            }
        );
        let r = &api.spec.resources;
        assert_eq!(r.limits.cpus, Some(Cpus(500)));
        assert_eq!(r.limits.memory, Some(Memory(64 << 20)));
        assert_eq!(r.limits.pids, Some(100));
        assert_eq!(r.reservations.memory, Some(Memory(32 << 20)));
        let store = service(&stack, "shop_store");
        assert_eq!(store.spec.placement.constraints, ["node.labels.disk==ssd"]);
        assert_eq!(store.spec.placement.max_replicas_per_node, Some(1));
        assert_eq!(
            store.spec.mounts,
            [
                Mount {
                    type_: MountType::Volume,
                    source: "shop_data".into(),
                    target: "/data".into(),
                    read_only: false,
                    tmpfs_size: None
                },
                Mount {
                    type_: MountType::Tmpfs,
                    source: String::new(),
                    target: "/cache".into(),
                    read_only: false,
                    tmpfs_size: Some(Memory(64 << 20))
                },
            ]
        );
        let worker = service(&stack, "shop_worker");
        assert_eq!(
            (worker.spec.mode, worker.spec.replicas),
            (ServiceMode::Global, None)
        );
        // Everything validates as the server would.
        for o in &stack.objects {
            let mut errs = vec![];
            o.validate(&mut errs);
            assert!(errs.is_empty(), "{}: {errs:?}", o.reference());
        }
    }

    #[test]
    fn a_cmd_health_check_runs_its_words_as_they_are() {
        let text = "services:\n  w:\n    image: busybox\n    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"http://127.0.0.1/\"]\n";
        let stack = convert(
            "s",
            &files(text),
            &Inputs {
                lookup: &env,
                read: &read,
            },
        )
        .unwrap();
        let hc = service(&stack, "s_w").spec.healthcheck.clone().unwrap();
        assert_eq!(hc.command, ["wget", "-q", "http://127.0.0.1/"]);
    }

    #[test]
    fn unsupported_keys_give_one_warning_per_key_and_service() {
        let stack = shop();
        assert_eq!(
            stack.warnings,
            [
                "service store: build is not supported: ignored",
                "service store: privileged is not supported: ignored",
                "service store: deploy.placement.preferences is not supported: ignored",
                "service worker: depends_on is not supported: ignored",
            ]
        );
    }

    #[test]
    fn mistakes_name_the_compose_key() {
        let inputs = Inputs {
            lookup: &env,
            read: &read,
        };
        for (text, want) in [
            ("services:\n  a:\n    image: busybox\n    networks: [nope]\n", "services.a.networks.nope: network nope is not defined"),
            ("services:\n  a:\n    image: busybox\n    secrets: [nope]\n", "services.a.secrets[0]: secret nope is not defined"),
            ("services:\n  a:\n    image: busybox\n    volumes: ['nope:/x']\n", "services.a.volumes[0]: volume nope is not defined"),
            ("services:\n  a:\n    build: .\n", "services.a.image: is required"),
            ("services:\n  a:\n    image: busybox\n    ports: ['80']\n", "services.a.ports[0]: give the published port"),
            ("services:\n  a:\n    image: busybox\n    deploy: {mode: global, replicas: 2}\n", "services.a.deploy.replicas: cannot be used with mode: global"),
            ("services:\n  a:\n    image: busybox\n    deploy: {placement: {constraints: ['node.colour==red']}}\n", "services.a.deploy.placement.constraints[0]: "),
            ("services:\n  a:\n    image: busybox\n    deploy: {replicas: -1}\n", "services.a.deploy.replicas: "),
            ("services:\n  Bad:\n    image: busybox\n", "services.Bad: name \"shop_Bad\""),
            ("services:\n  a:\n    image: busybox\nsecrets:\n  pw: {file: ./missing}\n", "secrets.pw.file: cannot read /srv/shop/missing"),
            ("services:\n  a:\n    image: busybox\nnetworks:\n  n: {driver: bridge}\n", "networks.n.driver: only overlay"),
        ] {
            let e = convert("shop", &files(text), &inputs).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text}\n got: {e}");
        }
        assert!(convert("my_shop", &files(SHOP), &inputs).is_err());
    }

    #[test]
    fn ports_should_take_the_traffic_policy_and_health_port_extensions() {
        let inputs = Inputs {
            lookup: &env,
            read: &read,
        };
        let text = "services:\n  a:\n    image: busybox\n    ports:\n      - {target: 80, published: 8080, x-shoal-traffic: local, x-shoal-health-port: 31001}\n      - {target: 81, published: 8081, x-shoal-traffic: cluster, x-colour: red}\n      - '8082:82'\n";
        let stack = convert("shop", &files(text), &inputs).unwrap();
        let a = service(&stack, "shop_a");
        assert_eq!(
            a.spec.ports[0],
            PortConfig {
                published: 8080,
                target: 80,
                traffic: TrafficPolicy::Local,
                health_port: Some(31001),
                ..Default::default()
            }
        );
        assert_eq!(a.spec.ports[1].traffic, TrafficPolicy::Cluster);
        assert_eq!(a.spec.ports[2].traffic, TrafficPolicy::Cluster);
        assert!(
            stack.warnings.contains(
                &"services.a.ports[1].x-colour: not a Shoal extension: ignored".to_string()
            ),
            "{:?}",
            stack.warnings
        );
        for (text, want) in [
            ("services:\n  a:\n    image: busybox\n    ports:\n      - {target: 80, published: 8080, x-shoal-traffic: nearest}\n", "services.a.ports[0].x-shoal-traffic: must be cluster or local"),
            ("services:\n  a:\n    image: busybox\n    ports:\n      - {target: 80, published: 8080, x-shoal-health-port: 0}\n", "services.a.ports[0].x-shoal-health-port: must be a port number (1-65535)"),
        ] {
            let e = convert("shop", &files(text), &inputs).unwrap_err().to_string();
            assert!(e.ends_with(want), "{text}\n got: {e}");
        }
    }

    #[test]
    fn external_and_named_resources_keep_their_names() {
        let text = "services:\n  a:\n    image: busybox\n    networks: [ext]\n    secrets: [pw]\n    volumes: ['keep:/k', 'shared:/s']\nnetworks:\n  ext: {external: true}\nsecrets:\n  pw: {external: true, name: prod_pw}\nvolumes:\n  keep: {external: true}\n  shared: {name: team-data}\n";
        let stack = convert(
            "shop",
            &files(text),
            &Inputs {
                lookup: &env,
                read: &read,
            },
        )
        .unwrap();
        let refs: Vec<String> = stack.objects.iter().map(AnyObject::reference).collect();
        assert_eq!(refs, ["service/shop_a"]);
        let a = service(&stack, "shop_a");
        assert_eq!(a.spec.networks[0].name, "ext");
        assert_eq!(a.spec.secrets[0].source, "prod_pw");
        assert_eq!(a.spec.secrets[0].target, "pw");
        assert_eq!(a.spec.mounts[0].source, "keep");
        assert_eq!(a.spec.mounts[1].source, "team-data");
    }

    #[test]
    fn an_override_file_changes_the_base() {
        let mut f = files(SHOP);
        f.push(ComposeFile {
            path: PathBuf::from("/srv/shop/prod.yml"),
            text: "services:\n  web:\n    deploy: {replicas: 5}\n    environment: {EXTRA: '1'}\n"
                .into(),
        });
        let stack = convert(
            "shop",
            &f,
            &Inputs {
                lookup: &env,
                read: &read,
            },
        )
        .unwrap();
        let web = service(&stack, "shop_web");
        assert_eq!(web.spec.replicas, Some(5));
        assert_eq!(web.spec.env.get("EXTRA").map(String::as_str), Some("1"));
        assert_eq!(
            web.metadata.labels.get("tier").map(String::as_str),
            Some("web")
        );
    }
}
