//! From compose files to one [`compose_spec::Compose`]: each file is parsed as YAML, its
//! `<<` merge keys applied, every string value interpolated (environment first, then the
//! `.env` file next to the first compose file), the files merged in order (later files
//! override, as `docker compose -f a -f b` does), and the result read as compose types with
//! the key path of any error (`services.web.deploy.replicas: invalid type ...`).
//!
//! Merging follows the compose specification in the parts a stack uses: mappings merge key
//! by key; `command`, `entrypoint` and `healthcheck.test` are replaced; `environment`,
//! `labels` and the like merge as maps whichever syntax each file uses; a service's
//! `networks` list merges as a map; other sequences (ports, volumes, secrets...) gain the
//! later file's entries that are not already there; scalars are replaced.
//!
//! A few keys are taken out of the YAML before `compose_spec` reads it, because its types
//! do not follow the compose specification there: `update_config`/`rollback_config`'s
//! `failure_action` (it lacks `rollback`) and `max_failure_ratio` (it wants an integer),
//! `name` of a secret or config (it has none), and `image` (its parser refuses a registry
//! with a port but no dot, such as the local cluster's `localhost:5000/busybox`). They come
//! back in [`Loaded::extras`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use compose_spec::{Compose, YamlValue};
use serde_yaml::{Mapping, Value};

use super::interpolate::{interpolate, Unset};

/// One compose file as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeFile {
    /// Its path as given (messages name it; relative paths in the file are resolved from
    /// its directory).
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

/// An update or rollback policy's fields that `compose_spec` cannot read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyExtras {
    /// `failure_action`: pause, continue or rollback.
    pub failure_action: Option<String>,
    /// `max_failure_ratio`, a fraction.
    pub max_failure_ratio: Option<f64>,
}

/// What [`load`] took out of the YAML before `compose_spec` read it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extras {
    /// Per service: `image`.
    pub images: BTreeMap<String, String>,
    /// Per service: `deploy.update_config`'s extras.
    pub update: BTreeMap<String, PolicyExtras>,
    /// Per service: `deploy.rollback_config`'s extras.
    pub rollback: BTreeMap<String, PolicyExtras>,
    /// `secrets.<key>.name` of non-external secrets.
    pub secret_names: BTreeMap<String, String>,
    /// `configs.<key>.name` of non-external configs.
    pub config_names: BTreeMap<String, String>,
}

/// The merged compose file.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The typed file.
    pub compose: Compose,
    /// The merged YAML it was read from (for the unsupported-key warnings).
    pub raw: YamlValue,
    /// Keys read here rather than by `compose_spec`.
    pub extras: Extras,
    /// Variables used unset (they became ""), each once.
    pub unset: Vec<String>,
}

/// Reads the compose files. `lookup` is the environment; `dotenv` the text of the `.env`
/// file next to the first file, if there is one (the environment wins over it).
pub fn load(
    files: &[ComposeFile],
    lookup: &dyn Fn(&str) -> Option<String>,
    dotenv: Option<&str>,
) -> anyhow::Result<Loaded> {
    let dotenv_vars: BTreeMap<String, String> = match dotenv {
        Some(text) => dotenvy::from_read_iter(text.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!(".env: {e}"))?,
        None => BTreeMap::new(),
    };
    let vars = |name: &str| lookup(name).or_else(|| dotenv_vars.get(name).cloned());
    let mut unset = Unset::default();
    let mut merged: Option<Value> = None;
    for file in files {
        let name = file.path.display();
        let mut value: Value = serde_yaml::from_str(&file.text).map_err(|e| {
            anyhow::anyhow!("{name}: not valid YAML: {}", yaml_error(&e, &file.text))
        })?;
        if value.is_null() {
            anyhow::bail!("{name}: the file is empty");
        }
        if !value.is_mapping() {
            anyhow::bail!("{name}: a compose file is a mapping (services:, networks:, ...)");
        }
        value
            .apply_merge()
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        interpolate_value(&mut value, &mut vec![], &vars, &mut unset)
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        merged = Some(match merged {
            None => value,
            Some(mut base) => {
                merge(&mut base, value, &mut vec![]);
                base
            }
        });
    }
    let mut raw = merged.ok_or_else(|| anyhow::anyhow!("no compose file given (-c FILE)"))?;
    let extras = take_extras(&mut raw)?;
    let compose: Compose = serde_path_to_error::deserialize(raw.clone()).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'));
        if let (".", Some(field)) = (path.as_str(), missing) {
            // A required top-level key: name it as the path.
            anyhow::anyhow!("{field}: {inner}")
        } else if path == "." {
            anyhow::anyhow!("{inner}")
        } else {
            anyhow::anyhow!("{path}: {inner}")
        }
    })?;
    Ok(Loaded {
        compose,
        raw,
        extras,
        unset: unset.names.into_iter().collect(),
    })
}

/// A YAML error with its line and column: the reader's errors (a NUL, say) carry none, so
/// the first character YAML does not allow is located in `text`.
fn yaml_error(e: &serde_yaml::Error, text: &str) -> String {
    let message = e.to_string();
    if message.contains(" line ") {
        return message;
    }
    let bare = message.split(" at position ").next().unwrap_or(&message);
    match (
        shoal_api_types::manifest::first_disallowed_char(text),
        e.location(),
    ) {
        (Some((line, column)), _) => format!("{bare} at line {line} column {column}"),
        (None, Some(l)) => format!("{bare} at line {} column {}", l.line(), l.column()),
        (None, None) => message,
    }
}

/// `a.b[2].c` from path segments.
pub fn key_path(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if seg.starts_with('[') || out.is_empty() {
            out.push_str(seg);
        } else {
            out.push('.');
            out.push_str(seg);
        }
    }
    out
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn interpolate_value(
    value: &mut Value,
    path: &mut Vec<String>,
    vars: &dyn Fn(&str) -> Option<String>,
    unset: &mut Unset,
) -> Result<(), String> {
    match value {
        Value::String(s) => {
            *s = interpolate(s, vars, unset).map_err(|e| format!("{}: {e}", key_path(path)))?;
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(format!("[{i}]"));
                interpolate_value(item, path, vars, unset)?;
                path.pop();
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                path.push(key_text(k));
                interpolate_value(v, path, vars, unset)?;
                path.pop();
            }
        }
        Value::Tagged(t) => interpolate_value(&mut t.value, path, vars, unset)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Keys whose list form (`- K=V`) and map form (`K: V`) mean the same.
const LIST_OR_MAP: &[&str] = &[
    "environment",
    "labels",
    "annotations",
    "extra_hosts",
    "sysctls",
];

/// Keys a later file replaces whole.
const REPLACED: &[&str] = &["command", "entrypoint", "test"];

/// `- K=V` items as a mapping (`K` alone maps to null).
fn list_to_map(items: &[Value]) -> Mapping {
    let mut map = Mapping::new();
    for item in items {
        match item {
            Value::String(s) => match s.split_once('=') {
                Some((k, v)) => map.insert(Value::String(k.into()), Value::String(v.into())),
                None => map.insert(Value::String(s.clone()), Value::Null),
            },
            other => map.insert(other.clone(), Value::Null),
        };
    }
    map
}

fn as_map_form(v: Value, key: &str, path: &[String]) -> Value {
    let is_service_networks = key == "networks" && path.len() == 3 && path[0] == "services";
    match v {
        Value::Sequence(items) if LIST_OR_MAP.contains(&key) || is_service_networks => {
            Value::Mapping(list_to_map(&items))
        }
        other => other,
    }
}

/// Merges `over` into `base` (see the module docs). `path` is where `base` sits.
fn merge(base: &mut Value, over: Value, path: &mut Vec<String>) {
    let key = path.last().cloned().unwrap_or_default();
    if REPLACED.contains(&key.as_str()) {
        *base = over;
        return;
    }
    let over = as_map_form(over, &key, path);
    if !matches!(base, Value::Mapping(_)) {
        let taken = std::mem::take(base);
        *base = as_map_form(taken, &key, path);
    }
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                path.push(key_text(&k));
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v, path),
                    None => {
                        b.insert(k, v);
                    }
                }
                path.pop();
            }
        }
        (Value::Sequence(b), Value::Sequence(o)) => {
            for item in o {
                if !b.contains(&item) {
                    b.push(item);
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn services_mut(raw: &mut Value) -> Vec<(String, &mut Mapping)> {
    let Some(Value::Mapping(services)) = raw.get_mut("services") else {
        return vec![];
    };
    services
        .iter_mut()
        .filter_map(|(k, v)| match v {
            Value::Mapping(m) => Some((key_text(k), m)),
            _ => None,
        })
        .collect()
}

/// `mode: 0400` of a service's secrets and configs is octal, as Docker reads it; YAML 1.2
/// reads it as the string "0400", which is turned into the number here.
fn normalise_modes(service: &str, map: &mut Mapping) -> anyhow::Result<()> {
    for section in ["secrets", "configs"] {
        let Some(Value::Sequence(items)) = map.get_mut(section) else {
            continue;
        };
        for (i, item) in items.iter_mut().enumerate() {
            let Some(mode) = item.get_mut("mode") else {
                continue;
            };
            if let Value::String(text) = mode {
                let t = text.trim();
                let digits = t
                    .strip_prefix("0o")
                    .or_else(|| t.strip_prefix('0'))
                    .unwrap_or(t);
                let n = u32::from_str_radix(if digits.is_empty() { "0" } else { digits }, 8)
                    .ok()
                    .filter(|n| *n <= 0o777)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "services.{service}.{section}[{i}].mode: {t:?} is not an octal file mode (e.g. 0440)"
                        )
                    })?;
                *mode = Value::Number(n.into());
            }
        }
    }
    Ok(())
}

fn take_extras(raw: &mut Value) -> anyhow::Result<Extras> {
    let mut extras = Extras::default();
    for (service, map) in services_mut(raw) {
        match map.remove("image") {
            None => {}
            Some(Value::String(image)) => {
                extras.images.insert(service.clone(), image);
            }
            Some(_) => anyhow::bail!("services.{service}.image: must be a string"),
        }
        normalise_modes(&service, map)?;
        let Some(Value::Mapping(deploy)) = map.get_mut("deploy") else {
            continue;
        };
        for (policy, out) in [
            ("update_config", &mut extras.update),
            ("rollback_config", &mut extras.rollback),
        ] {
            let Some(Value::Mapping(cfg)) = deploy.get_mut(policy) else {
                continue;
            };
            let at = format!("services.{service}.deploy.{policy}");
            let mut found = PolicyExtras::default();
            if let Some(v) = cfg.remove("failure_action") {
                let Value::String(s) = v else {
                    anyhow::bail!("{at}.failure_action: use pause, continue or rollback");
                };
                if !["pause", "continue", "rollback"].contains(&s.as_str()) {
                    anyhow::bail!("{at}.failure_action: {s:?} is not pause, continue or rollback");
                }
                found.failure_action = Some(s);
            }
            if let Some(v) = cfg.remove("max_failure_ratio") {
                let ratio = match &v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                };
                match ratio {
                    Some(r) if (0.0..=1.0).contains(&r) => found.max_failure_ratio = Some(r),
                    _ => anyhow::bail!(
                        "{at}.max_failure_ratio: must be a number between 0 and 1 (e.g. 0.2)"
                    ),
                }
            }
            if found != PolicyExtras::default() {
                out.insert(service.clone(), found);
            }
        }
    }
    for (section, out) in [
        ("secrets", &mut extras.secret_names),
        ("configs", &mut extras.config_names),
    ] {
        let Some(Value::Mapping(items)) = raw.get_mut(section) else {
            continue;
        };
        for (k, v) in items.iter_mut() {
            let Value::Mapping(m) = v else { continue };
            let external = m.get("external").is_some_and(|e| e != &Value::Bool(false));
            if external {
                continue;
            }
            if let Some(name) = m.remove("name") {
                let Value::String(name) = name else {
                    anyhow::bail!("{section}.{}.name: must be a string", key_text(k));
                };
                out.insert(key_text(k), name);
            }
        }
    }
    Ok(extras)
}

/// `rel` below `dir`, without `.` components (`./pw.txt` -> `<dir>/pw.txt`).
pub fn resolve(dir: &Path, rel: &Path) -> PathBuf {
    dir.join(
        rel.components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect::<PathBuf>(),
    )
}

/// The directory relative paths of the compose files are resolved from: the first file's.
pub fn base_dir(files: &[ComposeFile]) -> PathBuf {
    files
        .first()
        .and_then(|f| f.path.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> ComposeFile {
        ComposeFile {
            path: PathBuf::from(name),
            text: text.into(),
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn a_nul_in_a_compose_file_is_located() {
        // Found by the property tests: the reader's error named no line.
        let files = [ComposeFile {
            path: "d.yml".into(),
            text: "services:\n  a\u{0}: {}\n".into(),
        }];
        let e = load(&files, &|_| None, None).unwrap_err().to_string();
        assert!(e.ends_with("at line 2 column 4"), "{e}");
        // Found by the property tests: a missing top-level key named no path.
        let none = [ComposeFile {
            path: "d.yml".into(),
            text: "x-a: 1\n".into(),
        }];
        let e = load(&none, &|_| None, None).unwrap_err().to_string();
        assert!(e.starts_with("services: missing field"), "{e}");
        let tab = [ComposeFile {
            path: "d.yml".into(),
            text: "\t".into(),
        }];
        let e = load(&tab, &|_| None, None).unwrap_err().to_string();
        assert!(e.contains(" line 1 column "), "{e}");
    }

    #[test]
    fn later_files_override_and_merge_maps_whatever_their_syntax() {
        let base = file(
            "a.yml",
            "services:\n  web:\n    image: busybox\n    command: [sleep, '1']\n    environment: [A=1, B=2]\n    ports: ['80:80']\n    networks: [front]\n",
        );
        let over = file(
            "b.yml",
            "services:\n  web:\n    image: busybox:2\n    command: [sleep, '2']\n    environment: {B: '3', C: '4'}\n    ports: ['80:80', '81:81']\n    networks: {back: {aliases: [w]}}\n",
        );
        let loaded = load(&[base, over], &no_env, None).unwrap();
        let web = &loaded.raw["services"]["web"];
        assert_eq!(loaded.extras.images["web"], "busybox:2");
        assert_eq!(
            web["command"],
            serde_yaml::from_str::<Value>("[sleep, '2']").unwrap()
        );
        assert_eq!(
            web["environment"],
            serde_yaml::from_str::<Value>("{A: '1', B: '3', C: '4'}").unwrap()
        );
        assert_eq!(web["ports"].as_sequence().unwrap().len(), 2);
        assert_eq!(
            web["networks"],
            serde_yaml::from_str::<Value>("{front: null, back: {aliases: [w]}}").unwrap()
        );
        assert_eq!(loaded.compose.services.len(), 1);
    }

    #[test]
    fn environment_wins_over_dotenv_and_errors_name_the_file_and_key() {
        let f = file(
            "app/compose.yml",
            "services:\n  web:\n    image: busybox:${TAG}\n    environment:\n      MODE: ${MODE:-dev}\n      X: ${UNSET_ONE}\n",
        );
        let env = |k: &str| (k == "TAG").then(|| "env".to_string());
        let loaded = load(
            std::slice::from_ref(&f),
            &env,
            Some("TAG=dotenv\nMODE=prod\n"),
        )
        .unwrap();
        assert_eq!(loaded.extras.images["web"], "busybox:env");
        assert_eq!(loaded.raw["services"]["web"]["environment"]["MODE"], "prod");
        assert_eq!(loaded.unset, ["UNSET_ONE"]);
        let bad = file(
            "c.yml",
            "services:\n  web:\n    image: ${IMAGE:?set IMAGE}\n",
        );
        let e = load(&[bad], &no_env, None).unwrap_err().to_string();
        assert_eq!(
            e,
            "c.yml: services.web.image: required variable IMAGE is missing a value: set IMAGE"
        );
    }

    #[test]
    fn type_errors_carry_the_key_path() {
        let f = file(
            "c.yml",
            "services:\n  web:\n    image: busybox\n    deploy:\n      replicas: many\n",
        );
        let e = load(&[f], &no_env, None).unwrap_err().to_string();
        assert!(e.starts_with("services.web.deploy.replicas: "), "{e}");
        let e = load(&[file("d.yml", "services: [\n")], &no_env, None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("d.yml: not valid YAML"), "{e}");
    }

    #[test]
    fn policy_fields_compose_spec_cannot_read_are_kept_aside() {
        let f = file(
            "c.yml",
            "services:\n  api:\n    image: busybox\n    deploy:\n      update_config: {failure_action: rollback, max_failure_ratio: 0.25, parallelism: 2}\nsecrets:\n  pw: {file: ./pw.txt, name: shared_pw}\n",
        );
        let loaded = load(&[f], &no_env, None).unwrap();
        assert_eq!(
            loaded.extras.update["api"],
            PolicyExtras {
                failure_action: Some("rollback".into()),
                max_failure_ratio: Some(0.25)
            }
        );
        assert_eq!(loaded.extras.secret_names["pw"], "shared_pw");
        assert_eq!(loaded.extras.images["api"], "busybox");
        let bad = file(
            "c.yml",
            "services:\n  api:\n    image: busybox\n    deploy:\n      rollback_config: {max_failure_ratio: 2}\n",
        );
        let e = load(&[bad], &no_env, None).unwrap_err().to_string();
        assert!(
            e.starts_with("services.api.deploy.rollback_config.max_failure_ratio:"),
            "{e}"
        );
    }
}
