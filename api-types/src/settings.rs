//! Cluster-wide settings the controller publishes for every component
//! ([`ClusterSettings`], one object at [`crate::keys::Keys::cluster_settings`], readable by
//! nodes), and the reserved published ports they carry.
//!
//! A reserved port ([`ReservedPort`], written `4789/udp`) is one the cluster itself uses on
//! its nodes: VXLAN, etcd, the API, the agent, SSH ([`default_reserved_ports`]). No Service
//! may publish one, in either mode ([`check_reserved_ports`]: a field error on
//! `spec.ports[i].published` naming the reason, [`reason`]), and the node agent never
//! programs a routing-mesh or host-port rule for one. The list is the controller's
//! `--reserved-ports` flag ([`parse_reserved_ports`]); the leader publishes it here.
//!
//! Pure: parsing, formatting and checks only.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::object::{Object, Resource};
use crate::service::{PortConfig, Protocol};
use crate::validation::FieldError;

/// The name of the one [`ClusterSettings`] object.
pub const CLUSTER_SETTINGS: &str = "cluster";

/// The flag that configures the reserved ports, named in messages.
pub const RESERVED_PORTS_FLAG: &str = "--reserved-ports";

/// One reserved port: a number and a protocol (`4789/udp`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReservedPort {
    /// The port number (1-65535).
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
}

impl ReservedPort {
    /// `port/protocol`.
    pub const fn new(port: u16, protocol: Protocol) -> Self {
        ReservedPort { port, protocol }
    }

    /// A TCP port.
    pub const fn tcp(port: u16) -> Self {
        ReservedPort::new(port, Protocol::Tcp)
    }

    /// A UDP port.
    pub const fn udp(port: u16) -> Self {
        ReservedPort::new(port, Protocol::Udp)
    }
}

impl std::fmt::Display for ReservedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

impl std::str::FromStr for ReservedPort {
    type Err = String;

    /// `4789/udp`, `2379/tcp`, or `22` (TCP, as Docker's `-p`).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (number, protocol) = match s.split_once('/') {
            Some((n, p)) => (n, p),
            None => (s, "tcp"),
        };
        let protocol = match protocol.trim().to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => {
                return Err(format!(
                    "{s:?}: unknown protocol {other:?} (use tcp or udp, as in 4789/udp)"
                ))
            }
        };
        match number.trim().parse::<u16>() {
            Ok(port) if port != 0 => Ok(ReservedPort { port, protocol }),
            _ => Err(format!(
                "{s:?} is not a port: use NUMBER/PROTOCOL with a number 1-65535, as in 4789/udp"
            )),
        }
    }
}

/// VXLAN's UDP port: every overlay's underlay traffic.
pub const VXLAN_PORT: ReservedPort = ReservedPort::udp(4789);
/// etcd's client port.
pub const ETCD_CLIENT_PORT: ReservedPort = ReservedPort::tcp(2379);
/// etcd's peer port.
pub const ETCD_PEER_PORT: ReservedPort = ReservedPort::tcp(2380);
/// The controller's API port.
pub const API_PORT: ReservedPort = ReservedPort::tcp(7777);
/// The node agent's exec and logs port.
pub const AGENT_PORT: ReservedPort = ReservedPort::tcp(7800);
/// SSH.
pub const SSH_PORT: ReservedPort = ReservedPort::tcp(22);

/// The reserved ports when the controller is not told otherwise: VXLAN, etcd (client and
/// peer), the API, the agent and SSH.
pub fn default_reserved_ports() -> Vec<ReservedPort> {
    vec![
        VXLAN_PORT,
        ETCD_CLIENT_PORT,
        ETCD_PEER_PORT,
        API_PORT,
        AGENT_PORT,
        SSH_PORT,
    ]
}

/// [`default_reserved_ports`] as the flag writes them.
pub fn default_reserved_ports_flag() -> String {
    format_reserved_ports(&default_reserved_ports())
}

/// Parses a comma-separated list (`4789/udp,2379/tcp,22`); an empty string is no port.
/// Sorted, each port once.
pub fn parse_reserved_ports(s: &str) -> Result<Vec<ReservedPort>, String> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        out.insert(part.parse::<ReservedPort>()?);
    }
    Ok(out.into_iter().collect())
}

/// The list as [`parse_reserved_ports`] reads it.
pub fn format_reserved_ports(ports: &[ReservedPort]) -> String {
    ports
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Why `port` is reserved, for the well-known ones; a generic reason for the others.
pub fn reason(port: ReservedPort) -> &'static str {
    match port {
        VXLAN_PORT => "VXLAN (the overlay's underlay port)",
        ETCD_CLIENT_PORT => "etcd's client port",
        ETCD_PEER_PORT => "etcd's peer port",
        API_PORT => "the Shoal API",
        AGENT_PORT => "the Shoal agent's exec and logs port",
        SSH_PORT => "SSH",
        _ => "a port the cluster itself uses",
    }
}

/// The message of a refused reserved port, e.g. `4789/udp is reserved: VXLAN (the
/// overlay's underlay port); reserved ports are configured with the controller's
/// --reserved-ports`.
pub fn reserved_message(port: ReservedPort) -> String {
    format!(
        "{port} is reserved: {}; reserved ports are configured with the controller's {RESERVED_PORTS_FLAG}",
        reason(port)
    )
}

/// Whether `published`/`protocol` is one of `reserved`.
pub fn is_reserved(reserved: &[ReservedPort], published: u32, protocol: Protocol) -> bool {
    u16::try_from(published)
        .ok()
        .is_some_and(|port| reserved.contains(&ReservedPort::new(port, protocol)))
}

/// One field error (`spec.ports[i].published`) per published port, in either mode, that
/// is in `reserved`, and one (`spec.ports[i].healthPort`) per health port (TCP) that is.
pub fn check_reserved_ports(ports: &[PortConfig], reserved: &[ReservedPort]) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        if is_reserved(reserved, p.published, p.protocol) {
            errs.push(FieldError::new(
                format!("spec.ports[{i}].published"),
                reserved_message(ReservedPort::new(p.published as u16, p.protocol)),
            ));
        }
        if let Some(h) = p
            .health_port
            .filter(|h| is_reserved(reserved, *h, Protocol::Tcp))
        {
            errs.push(FieldError::new(
                format!("spec.ports[{i}].healthPort"),
                reserved_message(ReservedPort::tcp(h as u16)),
            ));
        }
    }
    errs
}

/// The ClusterSettings object.
pub type ClusterSettings = Object<ClusterSettingsSpec>;

/// Settings every component reads; written by the controller (leader) from its flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSettingsSpec {
    /// Published ports no Service may take (`--reserved-ports`).
    #[serde(default)]
    pub reserved_ports: Vec<ReservedPort>,
}

impl ClusterSettingsSpec {
    /// Settings with these reserved ports (sorted, each once).
    pub fn with_reserved_ports(ports: impl IntoIterator<Item = ReservedPort>) -> Self {
        let ports: BTreeSet<ReservedPort> = ports.into_iter().collect();
        ClusterSettingsSpec {
            reserved_ports: ports.into_iter().collect(),
        }
    }
}

/// ClusterSettings has no status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettingsStatus {}

impl Resource for ClusterSettingsSpec {
    const KIND: &'static str = "ClusterSettings";
    const PLURAL: &'static str = "settings";
    const USER_OWNED: bool = false;
    type Status = ClusterSettingsStatus;

    fn validate_spec(&self, errs: &mut Vec<FieldError>) {
        for (i, p) in self.reserved_ports.iter().enumerate() {
            if p.port == 0 {
                errs.push(FieldError::new(
                    format!("spec.reservedPorts[{i}].port"),
                    "must be 1-65535",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::PublishMode;

    #[test]
    fn reserved_ports_parse_with_protocols_and_default_to_tcp() {
        assert_eq!(
            parse_reserved_ports(" 4789/udp, 2379/TCP,22 ,,22/tcp").unwrap(),
            vec![ReservedPort::tcp(22), ReservedPort::tcp(2379), VXLAN_PORT]
        );
        assert_eq!(parse_reserved_ports("").unwrap(), vec![]);
        assert_eq!(
            parse_reserved_ports(&default_reserved_ports_flag())
                .unwrap()
                .len(),
            6
        );
    }

    #[test]
    fn reserved_ports_refuse_bad_numbers_and_protocols() {
        for bad in ["0/tcp", "65536/udp", "x/tcp", "53/sctp", "/udp"] {
            let err = parse_reserved_ports(bad).unwrap_err();
            assert!(err.contains(bad.split('/').next().unwrap()), "{bad}: {err}");
        }
        assert!(parse_reserved_ports("53/sctp")
            .unwrap_err()
            .contains("unknown protocol \"sctp\""));
    }

    #[test]
    fn reserved_ports_round_trip_through_the_flag_form() {
        let ports = default_reserved_ports();
        let text = format_reserved_ports(&ports);
        assert_eq!(text, "4789/udp,2379/tcp,2380/tcp,7777/tcp,7800/tcp,22/tcp");
        let mut sorted = ports.clone();
        sorted.sort();
        assert_eq!(parse_reserved_ports(&text).unwrap(), sorted);
    }

    fn port(published: u32, protocol: Protocol, mode: PublishMode) -> PortConfig {
        PortConfig {
            published,
            target: 80,
            protocol,
            mode,
            ..Default::default()
        }
    }

    #[test]
    fn a_reserved_port_is_refused_in_either_mode_with_its_reason() {
        let ports = [
            port(8080, Protocol::Tcp, PublishMode::Ingress),
            port(4789, Protocol::Udp, PublishMode::Ingress),
            port(22, Protocol::Tcp, PublishMode::Host),
            port(4789, Protocol::Tcp, PublishMode::Ingress),
            port(70000, Protocol::Tcp, PublishMode::Ingress),
        ];
        let errs = check_reserved_ports(&ports, &default_reserved_ports());
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "spec.ports[1].published: 4789/udp is reserved: VXLAN (the overlay's underlay port); \
                 reserved ports are configured with the controller's --reserved-ports",
                "spec.ports[2].published: 22/tcp is reserved: SSH; \
                 reserved ports are configured with the controller's --reserved-ports",
            ]
        );
        assert!(check_reserved_ports(&ports, &[]).is_empty());
        let health = PortConfig {
            traffic: crate::service::TrafficPolicy::Local,
            health_port: Some(22),
            ..port(8080, Protocol::Tcp, PublishMode::Ingress)
        };
        assert_eq!(
            check_reserved_ports(&[health], &default_reserved_ports())
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["spec.ports[0].healthPort: 22/tcp is reserved: SSH; \
              reserved ports are configured with the controller's --reserved-ports"]
        );
        assert!(
            reserved_message(ReservedPort::tcp(23790)).contains("a port the cluster itself uses")
        );
    }

    #[test]
    fn cluster_settings_serialise_ports_as_objects() {
        let s = ClusterSettings::new(
            CLUSTER_SETTINGS,
            ClusterSettingsSpec::with_reserved_ports([VXLAN_PORT, SSH_PORT, VXLAN_PORT]),
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["kind"], "ClusterSettings");
        assert_eq!(
            json["spec"]["reservedPorts"],
            serde_json::json!([{"port": 22, "protocol": "tcp"}, {"port": 4789, "protocol": "udp"}])
        );
        let back: ClusterSettings = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }
}
