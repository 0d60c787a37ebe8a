//! Network: an overlay (VXLAN) network that tasks on any node can join.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::object::{Object, Resource};
use crate::validation::FieldError;

/// A Network object.
pub type Network = Object<NetworkSpec>;

/// The name of the routing-mesh network the controller creates.
pub const INGRESS_NETWORK: &str = "ingress";

/// The name of the per-node egress bridge, shown as a Network (driver `bridge`, scope
/// `local`) as Swarm shows `docker_gwbridge`. The controller creates the object; every
/// agent makes the bridge itself. No service may list it: tasks on non-internal networks
/// get a leg on it automatically.
pub const GATEWAY_BRIDGE_NETWORK: &str = "gwbridge";

/// The gateway bridge's subnet on every node (Docker uses 172.18.0.0/16 too).
pub const GATEWAY_BRIDGE_SUBNET: &str = "172.18.0.0/16";

/// The gateway bridge's driver.
pub const BRIDGE_DRIVER: &str = "bridge";

/// `status.scope` of networks that exist on each node separately (the gateway bridge).
pub const SCOPE_LOCAL: &str = "local";

/// Why users may not create, replace or delete the network called `name` (a message for
/// `metadata.name`), or `None`: the `ingress` and `gwbridge` names belong to the system,
/// which creates those networks and keeps them present.
pub fn reserved_network_name(name: &str) -> Option<String> {
    match name {
        INGRESS_NETWORK => Some(format!(
            "{INGRESS_NETWORK:?} is reserved: it is the routing-mesh network, which Shoal creates \
             and keeps itself (services join it by publishing ports in ingress mode); \
             choose another name"
        )),
        GATEWAY_BRIDGE_NETWORK => Some(format!(
            "{GATEWAY_BRIDGE_NETWORK:?} is reserved: it is each node's egress bridge, which Shoal \
             creates and keeps itself (tasks on non-internal networks reach it automatically); \
             choose another name"
        )),
        _ => None,
    }
}

/// What the user wants of a network. Unset addressing is allocated by the controller.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSpec {
    /// The driver: `overlay` (the default, and the only one users may create); `bridge` is
    /// the system's gateway bridge.
    #[serde(default)]
    pub driver: String,
    /// IPv4 subnet in CIDR form (`10.1.2.0/24`); allocated from the default pool when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Gateway address inside the subnet; the first host address when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Whether standalone containers may attach (kept for Swarm compatibility).
    #[serde(default)]
    pub attachable: bool,
    /// No egress through the gateway bridge.
    #[serde(default)]
    pub internal: bool,
    /// The routing-mesh network. Only the controller creates one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ingress: bool,
    /// MTU of the overlay; underlay MTU minus 50 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Driver labels (Docker's `--label` on networks).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What the controller allocated for a network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkStatus {
    /// The allocated subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// The gateway address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The VXLAN network identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// `Pending`, `Ready` or `Failed`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    /// Why the network is not ready, when it is not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The spec generation this status describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// `local` for a network that exists on each node separately (the gateway bridge);
    /// unset means `swarm` (cluster-wide).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

impl NetworkSpec {
    /// The parsed subnet, if set and valid.
    pub fn subnet_net(&self) -> Option<Ipv4Network> {
        self.subnet.as_deref().and_then(|s| parse_cidr(s).ok())
    }
}

/// Parses an IPv4 CIDR whose host bits are zero.
pub fn parse_cidr(s: &str) -> Result<Ipv4Network, String> {
    let net: Ipv4Network = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 CIDR such as 10.1.2.0/24"))?;
    if net.network() != net.ip() {
        return Err(format!(
            "{s:?} has host bits set; did you mean {}/{}?",
            net.network(),
            net.prefix()
        ));
    }
    Ok(net)
}

impl Resource for NetworkSpec {
    const KIND: &'static str = "Network";
    const PLURAL: &'static str = "networks";
    const USER_OWNED: bool = true;
    const STACK_NAMES: bool = true;
    type Status = NetworkStatus;

    fn apply_defaults(&mut self) {
        if self.driver.is_empty() {
            self.driver = "overlay".into();
        }
    }

    fn validate_spec(&self, errs: &mut Vec<FieldError>) {
        if !matches!(self.driver.as_str(), "overlay" | BRIDGE_DRIVER | "") {
            errs.push(FieldError::new(
                "spec.driver",
                format!(
                    "unsupported driver {:?}: only \"overlay\" exists (\"bridge\" is the system's gateway bridge)",
                    self.driver
                ),
            ));
        }
        let subnet = match self.subnet.as_deref().map(parse_cidr) {
            Some(Err(msg)) => {
                errs.push(FieldError::new("spec.subnet", msg));
                None
            }
            Some(Ok(net)) if net.prefix() > 29 => {
                errs.push(FieldError::new(
                    "spec.subnet",
                    "must be /29 or larger to hold tasks",
                ));
                None
            }
            Some(Ok(net)) => Some(net),
            None => None,
        };
        if let Some(gw) = &self.gateway {
            match gw.parse::<Ipv4Addr>() {
                Err(_) => errs.push(FieldError::new(
                    "spec.gateway",
                    format!("{gw:?} is not an IPv4 address"),
                )),
                Ok(ip) => match subnet {
                    None if self.subnet.is_none() => errs.push(FieldError::new(
                        "spec.gateway",
                        "needs spec.subnet: a gateway only makes sense inside a chosen subnet",
                    )),
                    Some(net)
                        if !net.contains(ip) || ip == net.network() || ip == net.broadcast() =>
                    {
                        errs.push(FieldError::new(
                            "spec.gateway",
                            format!("{ip} is not a host address of {net}"),
                        ))
                    }
                    _ => {}
                },
            }
        }
        if let Some(mtu) = self.mtu {
            if !(576..=9000).contains(&mtu) {
                errs.push(FieldError::new("spec.mtu", "must be 576-9000"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::Validate;

    fn errors(spec: NetworkSpec) -> Vec<String> {
        let mut n = Network::new("net", spec);
        n.apply_defaults();
        n.validated()
            .err()
            .unwrap_or_default()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn network_defaults_to_overlay_driver() {
        let mut n = Network::new("net", NetworkSpec::default());
        n.apply_defaults();
        assert_eq!(n.spec.driver, "overlay");
    }

    #[test]
    fn network_rejects_bad_subnet_gateway_driver_and_mtu() {
        let errs = errors(NetworkSpec {
            driver: "macvlan".into(),
            subnet: Some("10.0.0.0/33".into()),
            gateway: Some("nope".into()),
            mtu: Some(70),
            ..Default::default()
        });
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].starts_with("spec.driver"));
        assert!(errs[1].starts_with("spec.subnet: \"10.0.0.0/33\" is not an IPv4 CIDR"));
        assert!(errs[2].starts_with("spec.gateway"));
        assert!(errs[3].starts_with("spec.mtu"));
    }

    #[test]
    fn network_rejects_host_bits_and_gateway_outside_subnet() {
        let errs = errors(NetworkSpec {
            subnet: Some("10.1.2.3/24".into()),
            ..Default::default()
        });
        assert_eq!(
            errs,
            vec!["spec.subnet: \"10.1.2.3/24\" has host bits set; did you mean 10.1.2.0/24?"]
        );
        let errs = errors(NetworkSpec {
            subnet: Some("10.1.2.0/24".into()),
            gateway: Some("10.1.3.1".into()),
            ..Default::default()
        });
        assert_eq!(
            errs,
            vec!["spec.gateway: 10.1.3.1 is not a host address of 10.1.2.0/24"]
        );
    }

    #[test]
    fn the_ingress_name_is_reserved() {
        assert!(reserved_network_name("ingress")
            .unwrap()
            .starts_with("\"ingress\" is reserved"));
        assert_eq!(reserved_network_name("appnet"), None);
    }

    #[test]
    fn network_accepts_subnet_with_gateway() {
        assert!(errors(NetworkSpec {
            subnet: Some("10.1.2.0/24".into()),
            gateway: Some("10.1.2.1".into()),
            ..Default::default()
        })
        .is_empty());
    }
}
