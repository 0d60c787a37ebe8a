//! Endpoints: per (network, service), the VIP, ports and every running task's address.
//! Agents watch these (as kube-proxy watches EndpointSlices) to program DNS, load
//! balancing and VXLAN forwarding. One task change rewrites one Endpoints object per network
//! the task is on, never one object per node.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::object::{Object, Resource};
use crate::service::{EndpointMode, PortConfig};
use crate::validation::FieldError;

/// An Endpoints object, named `<network>.<service>`.
pub type Endpoints = Object<EndpointsSpec>;

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
    /// The tasks, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<EndpointTask>,
}

/// The name of the Endpoints object of `service` on `network`.
pub fn endpoints_name(network: &str, service: &str) -> String {
    format!("{network}.{service}")
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

    /// The object, named [`endpoints_name`] of its network and service.
    pub fn object(self) -> Endpoints {
        Object::new(endpoints_name(&self.network, &self.service), self)
    }
}

impl Resource for EndpointsSpec {
    const KIND: &'static str = "Endpoints";
    const PLURAL: &'static str = "endpoints";
    const USER_OWNED: bool = false;
    type Status = EndpointsStatus;

    fn key_suffix(meta: &ObjectMeta, _spec: &Self) -> String {
        // Network and service names are DNS labels, so the first '.' separates them.
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
    }
}

/// Endpoints carry no status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointsStatus {}
