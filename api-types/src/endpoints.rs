//! Endpoints: per (network, service), the VIP, ports and every running task's address,
//! split into *slices* of at most [`MAX_SLICE_TASKS`] tasks (as Kubernetes splits
//! Endpoints into EndpointSlices), so no object outgrows etcd's request size. Agents watch
//! these to program DNS, load balancing and VXLAN forwarding. One task change rewrites one
//! slice per network the task is on, never one object per node.
//!
//! Naming: slice 0 is `<network>.<service>` (key `endpoints/<network>/<service>`), slice
//! n > 0 is `<network>.<service>.<n>` (key `endpoints/<network>/<service>.<n>`). Network
//! and service names are DNS labels without dots, so the first `.` ends the network and a
//! second one starts the slice number: service `a` never shares a key prefix with `a.1`'s
//! service. Every slice carries the service-level fields (VIP, endpoint mode, ports,
//! aliases), so each is self-describing; consumers read one logical view per
//! (network, service) through [`group_slices`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::object::{Object, Resource};
use crate::service::{EndpointMode, PortConfig};
use crate::validation::FieldError;

/// An Endpoints slice, named [`slice_name`]`(network, service, slice)`.
pub type Endpoints = Object<EndpointsSpec>;

/// The most tasks one slice holds (about 200 bytes each in JSON, so a full slice stays far
/// below etcd's default 1.5 MiB request limit).
pub const MAX_SLICE_TASKS: usize = 1000;

/// One task behind a service on one network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointTask {
    /// Task id.
    pub task: String,
    /// Task display name (`api.1`).
    pub name: String,
    /// Address on this network, without prefix length.
    pub ip: String,
    /// MAC on this network.
    pub mac: String,
    /// The node running the task.
    pub node: String,
    /// That node's underlay address (the VXLAN remote).
    pub node_address: String,
    /// Whether the task takes traffic (running, and healthy if checked).
    pub ready: bool,
}

/// The state of one service on one network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointsSpec {
    /// The network.
    pub network: String,
    /// The service.
    pub service: String,
    /// Which slice of the service's tasks on this network this object holds (0 for the
    /// first, which always exists; omitted when 0, so objects written before slicing read
    /// as slice 0 and slice 0 stays readable by agents that predate slicing).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub slice: u32,
    /// The service's VIP on this network (vip mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    /// vip or dnsrr.
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// The service's published ports (for the routing mesh on `ingress`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
    /// The service's aliases on this network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// This slice's tasks (at most [`MAX_SLICE_TASKS`]), sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<EndpointTask>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The name of slice 0 of the Endpoints of `service` on `network`.
pub fn endpoints_name(network: &str, service: &str) -> String {
    format!("{network}.{service}")
}

/// The name of slice `slice` of the Endpoints of `service` on `network`:
/// `<network>.<service>` for slice 0, `<network>.<service>.<slice>` otherwise.
pub fn slice_name(network: &str, service: &str, slice: u32) -> String {
    match slice {
        0 => endpoints_name(network, service),
        n => format!("{network}.{service}.{n}"),
    }
}

/// Splits what follows the network in a slice's name or key (`<service>` or
/// `<service>.<n>`) into the service and the slice number. `None` for anything else: an
/// empty service, a number that is not canonical (`a.0`, `a.01`, `a.x`) or more dots.
pub fn split_slice(rest: &str) -> Option<(&str, u32)> {
    let (service, slice) = match rest.split_once('.') {
        None => (rest, 0),
        Some((service, n)) => {
            let canonical =
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0');
            (
                service,
                if canonical {
                    n.parse().ok()?
                } else {
                    return None;
                },
            )
        }
    };
    (!service.is_empty()).then_some((service, slice))
}

/// Parses a slice's name (`<network>.<service>[.<n>]`) into (network, service, slice).
pub fn parse_slice_name(name: &str) -> Option<(&str, &str, u32)> {
    let (network, rest) = name.split_once('.')?;
    let (service, slice) = split_slice(rest)?;
    (!network.is_empty()).then_some((network, service, slice))
}

/// One logical view of the Endpoints of a (network, service): all its slices.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceGroup<'a> {
    /// The slice the service-level fields are read from (VIP, endpoint mode, ports,
    /// aliases): slice 0, or the lowest stored one while slice 0 is missing. Never read
    /// its `tasks` as the service's: use [`SliceGroup::tasks`].
    pub head: &'a EndpointsSpec,
    /// Every slice, by slice number.
    pub slices: Vec<&'a EndpointsSpec>,
}

impl<'a> SliceGroup<'a> {
    /// The network.
    pub fn network(&self) -> &'a str {
        &self.head.network
    }

    /// The service.
    pub fn service(&self) -> &'a str {
        &self.head.service
    }

    /// The tasks of every slice, slice by slice.
    pub fn tasks(&self) -> impl Iterator<Item = &'a EndpointTask> + '_ {
        self.slices.iter().flat_map(|s| s.tasks.iter())
    }

    /// The view as one spec: the head's service-level fields with every slice's tasks,
    /// sorted by name (slice 0; for display and tests).
    pub fn merged(&self) -> EndpointsSpec {
        let mut tasks: Vec<EndpointTask> = self.tasks().cloned().collect();
        tasks.sort_by(|a, b| (&a.name, &a.task).cmp(&(&b.name, &b.task)));
        EndpointsSpec {
            slice: 0,
            tasks,
            ..self.head.clone()
        }
    }
}

/// Groups slices of any (network, service)s into one view per (network, service), sorted by
/// network then service. Each view's slices are in slice order; a slice listed twice (the
/// same number) is kept once.
pub fn group_slices<'a>(
    slices: impl IntoIterator<Item = &'a EndpointsSpec>,
) -> Vec<SliceGroup<'a>> {
    let mut by: BTreeMap<(&str, &str), BTreeMap<u32, &EndpointsSpec>> = BTreeMap::new();
    for s in slices {
        by.entry((s.network.as_str(), s.service.as_str()))
            .or_default()
            .insert(s.slice, s);
    }
    by.into_values()
        .filter_map(|slices| {
            let slices: Vec<&EndpointsSpec> = slices.into_values().collect();
            Some(SliceGroup {
                head: slices.first()?,
                slices,
            })
        })
        .collect()
}

impl EndpointTask {
    /// A task that takes traffic: `name` at `ip`, with the id `id-<name>`; chain
    /// [`EndpointTask::id`], [`EndpointTask::on`] and [`EndpointTask::ready`] for the rest.
    pub fn new(name: &str, ip: &str) -> EndpointTask {
        EndpointTask {
            task: format!("id-{name}"),
            name: name.into(),
            ip: ip.into(),
            ready: true,
            ..Default::default()
        }
    }

    /// With task id `id`.
    pub fn id(mut self, id: &str) -> EndpointTask {
        self.task = id.into();
        self
    }

    /// Running on the node whose underlay address is `node_address`.
    pub fn on(mut self, node_address: &str) -> EndpointTask {
        self.node_address = node_address.into();
        self
    }

    /// Taking traffic or not.
    pub fn ready(mut self, ready: bool) -> EndpointTask {
        self.ready = ready;
        self
    }
}

impl EndpointsSpec {
    /// `service` on `network` in vip mode behind `vip`, with no tasks yet.
    pub fn vip(network: &str, service: &str, vip: &str) -> EndpointsSpec {
        EndpointsSpec {
            network: network.into(),
            service: service.into(),
            vip: Some(vip.into()),
            endpoint_mode: EndpointMode::Vip,
            ..Default::default()
        }
    }

    /// With these tasks.
    pub fn tasks(mut self, tasks: impl IntoIterator<Item = EndpointTask>) -> EndpointsSpec {
        self.tasks = tasks.into_iter().collect();
        self
    }

    /// As slice `slice`.
    pub fn slice(mut self, slice: u32) -> EndpointsSpec {
        self.slice = slice;
        self
    }

    /// The object, named [`slice_name`] of its network, service and slice.
    pub fn object(self) -> Endpoints {
        Object::new(slice_name(&self.network, &self.service, self.slice), self)
    }
}

impl Resource for EndpointsSpec {
    const KIND: &'static str = "Endpoints";
    const PLURAL: &'static str = "endpoints";
    const USER_OWNED: bool = false;
    type Status = EndpointsStatus;

    fn key_suffix(meta: &ObjectMeta, _spec: &Self) -> String {
        // Network and service names are DNS labels, so the first '.' separates them; the
        // rest (`<service>` or `<service>.<n>`) is the last key segment ([`split_slice`]).
        match meta.name.split_once('.') {
            Some((net, svc)) => format!("{net}/{svc}"),
            None => meta.name.clone(),
        }
    }

    fn validate_spec(&self, errs: &mut Vec<FieldError>) {
        if self.network.is_empty() {
            errs.push(FieldError::new("spec.network", "is required"));
        }
        if self.service.is_empty() {
            errs.push(FieldError::new("spec.service", "is required"));
        }
        if self.tasks.len() > MAX_SLICE_TASKS {
            errs.push(FieldError::new(
                "spec.tasks",
                format!(
                    "a slice holds at most {MAX_SLICE_TASKS} tasks (got {}); put the rest in \
                     further slices",
                    self.tasks.len()
                ),
            ));
        }
    }
}

/// Endpoints carry no status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointsStatus {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_names_and_keys_should_agree_and_parse_back() {
        for (slice, name, suffix) in [
            (0, "appnet.api", "appnet/api"),
            (1, "appnet.api.1", "appnet/api.1"),
            (12, "appnet.api.12", "appnet/api.12"),
        ] {
            let obj = EndpointsSpec::vip("appnet", "api", "10.0.1.2")
                .slice(slice)
                .object();
            assert_eq!(obj.metadata.name, name);
            assert_eq!(obj.key_suffix(), suffix);
            assert_eq!(parse_slice_name(name), Some(("appnet", "api", slice)));
            let (net, rest) = suffix.split_once('/').unwrap();
            assert_eq!(net, "appnet");
            assert_eq!(split_slice(rest), Some(("api", slice)));
        }
        // Service `a` and service `a`'s slice 1 never read as each other.
        assert_eq!(split_slice("a"), Some(("a", 0)));
        assert_eq!(split_slice("a.1"), Some(("a", 1)));
        for bad in ["", ".1", "a.", "a.0", "a.01", "a.x", "a.1.2", "a.-1"] {
            assert_eq!(split_slice(bad), None, "{bad:?}");
        }
        assert_eq!(parse_slice_name("appnet"), None);
        assert_eq!(parse_slice_name(".api"), None);
    }

    #[test]
    fn slice_zero_should_read_and_write_without_the_slice_field() {
        let old = r#"{"network":"n","service":"s","vip":"10.0.0.2"}"#;
        let spec: EndpointsSpec = serde_json::from_str(old).unwrap();
        assert_eq!(spec.slice, 0);
        let json = serde_json::to_string(&spec).unwrap();
        assert!(!json.contains("slice"), "{json}");
        let json = serde_json::to_string(&spec.slice(3)).unwrap();
        assert!(json.contains(r#""slice":3"#), "{json}");
    }

    #[test]
    fn a_slice_should_hold_at_most_max_slice_tasks() {
        let task = |i: usize| EndpointTask::new(&format!("api.{i}"), "10.0.0.5");
        let mut obj = EndpointsSpec::vip("n", "api", "10.0.0.2")
            .tasks((0..MAX_SLICE_TASKS).map(task))
            .object();
        let mut errs = Vec::new();
        obj.spec.validate_spec(&mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        obj.spec.tasks.push(task(MAX_SLICE_TASKS));
        obj.spec.validate_spec(&mut errs);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.tasks");
    }

    #[test]
    fn slices_should_group_into_one_view_per_network_and_service() {
        let a0 =
            EndpointsSpec::vip("n", "a", "10.0.0.2").tasks([EndpointTask::new("a.1", "10.0.0.5")]);
        let a2 = EndpointsSpec::vip("n", "a", "10.0.0.2")
            .slice(2)
            .tasks([EndpointTask::new("a.3", "10.0.0.7")]);
        let a1 = EndpointsSpec::vip("n", "a", "10.0.0.2")
            .slice(1)
            .tasks([EndpointTask::new("a.2", "10.0.0.6")]);
        let b0 = EndpointsSpec::vip("n", "b", "10.0.0.3");
        let m1 = EndpointsSpec::vip("m", "a", "10.0.9.2").slice(1);
        let groups = group_slices([&a2, &b0, &a0, &m1, &a1]);
        let keys: Vec<(&str, &str, usize)> = groups
            .iter()
            .map(|g| (g.network(), g.service(), g.slices.len()))
            .collect();
        assert_eq!(keys, vec![("m", "a", 1), ("n", "a", 3), ("n", "b", 1)]);
        let a = &groups[1];
        assert_eq!(a.head.slice, 0);
        let names: Vec<&str> = a.tasks().map(|t| t.name.as_str()).collect();
        assert_eq!(names, vec!["a.1", "a.2", "a.3"]);
        let merged = a.merged();
        assert_eq!(merged.tasks.len(), 3);
        assert_eq!(merged.vip.as_deref(), Some("10.0.0.2"));
        // Without slice 0, the lowest slice answers for the service.
        assert_eq!(groups[0].head.slice, 1);
    }
}
