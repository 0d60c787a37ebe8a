//! Container resources: CPU and memory quantities, a service's limits and reservations, and
//! a node's capacity. Pure; no I/O.
//!
//! Quantities are written as users write them for Docker and Compose:
//! - CPUs: a number of CPUs (`0.5`, `2`) or Kubernetes millicpus (`"500m"`); kept in
//!   millicpus, shown as a number (`0.5`).
//! - Memory: bytes (`67108864`) or a number with a unit (`"64M"`, `"64Mi"`, `"1.5g"`); every
//!   unit is binary, as in Docker (`64M` = `64Mi` = 64 × 2²⁰ bytes); shown with the largest
//!   unit that divides it (`64Mi`).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::validation::FieldError;

/// A number of CPUs, in millicpus (1000 = one CPU).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpus(pub u64);

/// An amount of memory in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Memory(pub u64);

/// Most CPUs a quantity may name (guards against overflow and typos).
pub const MAX_CPUS: u64 = 100_000;

impl Cpus {
    /// Millicpus.
    pub fn millis(self) -> u64 {
        self.0
    }
}

impl Memory {
    /// Bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl std::str::FromStr for Cpus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let bad = || format!("{s:?} is not a CPU quantity (use e.g. 0.5, 2 or \"500m\")");
        let millis = if let Some(m) = t.strip_suffix('m') {
            m.parse::<u64>().map_err(|_| bad())?
        } else {
            let v: f64 = t.parse().map_err(|_| bad())?;
            if !v.is_finite() || v < 0.0 {
                return Err(bad());
            }
            (v * 1000.0).round() as u64
        };
        if millis > MAX_CPUS * 1000 {
            return Err(format!("{s:?} is more than {MAX_CPUS} CPUs"));
        }
        Ok(Cpus(millis))
    }
}

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            let s = format!("{}.{:03}", self.0 / 1000, self.0 % 1000);
            f.write_str(s.trim_end_matches('0'))
        }
    }
}

const UNITS: [(&str, u64); 5] = [
    ("", 1),
    ("k", 1 << 10),
    ("m", 1 << 20),
    ("g", 1 << 30),
    ("t", 1 << 40),
];

impl std::str::FromStr for Memory {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a memory size (use e.g. 64Mi, 64M, 1.5G or bytes)");
        let t = s.trim().to_ascii_lowercase();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim();
        let unit = unit.strip_suffix('b').unwrap_or(unit);
        let unit = unit.strip_suffix('i').unwrap_or(unit);
        let scale = UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, f)| *f)
            .ok_or_else(bad)?;
        let v: f64 = num.parse().map_err(|_| bad())?;
        let bytes = v * scale as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 / 2.0 {
            return Err(bad());
        }
        Ok(Memory(bytes.round() as u64))
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = ["", "Ki", "Mi", "Gi", "Ti"];
        for (i, (_, scale)) in UNITS.iter().enumerate().rev() {
            if *scale > 1 && self.0 >= *scale && self.0.is_multiple_of(*scale) {
                return write!(f, "{}{}", self.0 / scale, names[i]);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A number, or a string the quantity parses.
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Int(u64),
    Float(f64),
    Text(String),
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Int(n) => n.to_string().parse(),
            Raw::Float(v) => v.to_string().parse(),
            Raw::Text(s) => s.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Cpus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(1000) {
            s.serialize_u64(self.0 / 1000)
        } else {
            s.serialize_f64(self.0 as f64 / 1000.0)
        }
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Memory(n)),
            Raw::Float(v) => v.to_string().parse(),
            Raw::Text(s) => s.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Memory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Cpus {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cpus".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "CPUs: a number (0.5, 2) or millicpus (\"500m\")",
            "type": ["number", "string"]
        })
    }
}

impl JsonSchema for Memory {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Memory".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Memory: bytes, or a number with a binary unit (\"64Mi\", \"64M\", \"1.5G\")",
            "type": ["integer", "string"]
        })
    }
}

/// Hard limits of each task's container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceLimits {
    /// CPU time, as a number of CPUs (CFS quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    /// Memory; the container is OOM-killed above it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// Most processes and threads (default [`DEFAULT_PIDS_LIMIT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

/// What each task is guaranteed: the scheduler places it only on a node whose capacity
/// minus the reservations of the tasks already there covers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceReservations {
    /// CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
}

/// A service's `resources`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// Hard limits.
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: ResourceLimits,
    /// Guarantees the scheduler honours.
    #[serde(default, skip_serializing_if = "is_default")]
    pub reservations: ResourceReservations,
}

/// What a node offers the scheduler (reported by its agent in `status.capacity`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeCapacity {
    /// CPUs.
    pub cpus: Cpus,
    /// Memory.
    pub memory: Memory,
}

/// The pids limit of a task that sets none.
pub const DEFAULT_PIDS_LIMIT: u32 = 1024;

/// The smallest memory limit a container can start with.
pub const MIN_MEMORY_LIMIT: Memory = Memory(6 << 20);

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl Resources {
    /// The pids limit in force: the one set, or [`DEFAULT_PIDS_LIMIT`].
    pub fn pids_limit(&self) -> u32 {
        self.limits.pids.unwrap_or(DEFAULT_PIDS_LIMIT)
    }

    /// Field errors, under `path` (e.g. `spec.resources`).
    pub fn validate(&self, path: &str, errs: &mut Vec<FieldError>) {
        if let Some(m) = self.limits.memory {
            if m < MIN_MEMORY_LIMIT {
                errs.push(FieldError::new(
                    format!("{path}.limits.memory"),
                    format!("must be at least {MIN_MEMORY_LIMIT} (got {m})"),
                ));
            }
        }
        if self.limits.cpus == Some(Cpus(0)) {
            errs.push(FieldError::new(
                format!("{path}.limits.cpus"),
                "must be more than 0 (leave it out for no limit)",
            ));
        }
        if self.limits.pids == Some(0) {
            errs.push(FieldError::new(
                format!("{path}.limits.pids"),
                "must be at least 1",
            ));
        }
        for (field, limit, reservation) in [
            (
                "memory",
                self.limits.memory.map(|m| m.0),
                self.reservations.memory.map(|m| m.0),
            ),
            (
                "cpus",
                self.limits.cpus.map(|c| c.0),
                self.reservations.cpus.map(|c| c.0),
            ),
        ] {
            if let (Some(l), Some(r)) = (limit, reservation) {
                if r > l {
                    errs.push(FieldError::new(
                        format!("{path}.reservations.{field}"),
                        "must not exceed limits.".to_string() + field,
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_parse_numbers_and_millicpus() {
        assert_eq!("0.5".parse::<Cpus>().unwrap(), Cpus(500));
        assert_eq!("2".parse::<Cpus>().unwrap(), Cpus(2000));
        assert_eq!("250m".parse::<Cpus>().unwrap(), Cpus(250));
        assert!("-1".parse::<Cpus>().is_err());
        assert!("lots".parse::<Cpus>().is_err());
        assert_eq!(Cpus(1500).to_string(), "1.5");
        assert_eq!(Cpus(2000).to_string(), "2");
        assert_eq!(Cpus(250).to_string(), "0.25");
    }

    #[test]
    fn memory_units_are_binary_as_in_docker() {
        assert_eq!("64M".parse::<Memory>().unwrap(), Memory(64 << 20));
        assert_eq!("64Mi".parse::<Memory>().unwrap(), Memory(64 << 20));
        assert_eq!("64mb".parse::<Memory>().unwrap(), Memory(64 << 20));
        assert_eq!("1.5G".parse::<Memory>().unwrap(), Memory(3 << 29));
        assert_eq!("4096".parse::<Memory>().unwrap(), Memory(4096));
        assert!("64X".parse::<Memory>().is_err());
        assert!("".parse::<Memory>().is_err());
        assert_eq!(Memory(64 << 20).to_string(), "64Mi");
        assert_eq!(Memory(1000).to_string(), "1000");
    }

    #[test]
    fn quantities_round_trip_through_yaml_and_json() {
        let r: Resources = serde_yaml_ng::from_str(
            "limits: {cpus: 0.5, memory: 32M, pids: 50}\nreservations: {cpus: \"250m\", memory: 16777216}",
        )
        .unwrap();
        assert_eq!(r.limits.cpus, Some(Cpus(500)));
        assert_eq!(r.limits.memory, Some(Memory(32 << 20)));
        assert_eq!(r.reservations.memory, Some(Memory(16 << 20)));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"limits":{"cpus":0.5,"memory":"32Mi","pids":50},"reservations":{"cpus":0.25,"memory":"16Mi"}}"#
        );
        assert_eq!(serde_json::from_str::<Resources>(&json).unwrap(), r);
        let err = serde_yaml_ng::from_str::<Resources>("limits: {memory: lots}").unwrap_err();
        assert!(err.to_string().contains("not a memory size"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let mut r = Resources::default();
        r.limits.memory = Some(Memory(1 << 20));
        r.limits.pids = Some(0);
        r.limits.cpus = Some(Cpus(1000));
        r.reservations.cpus = Some(Cpus(2000));
        let mut errs = Vec::new();
        r.validate("spec.resources", &mut errs);
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.resources.limits.memory",
                "spec.resources.limits.pids",
                "spec.resources.reservations.cpus"
            ]
        );
        assert_eq!(Resources::default().pids_limit(), DEFAULT_PIDS_LIMIT);
    }
}
