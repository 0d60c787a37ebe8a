//! The kinds the CLI names on its command line, with kubectl-style aliases
//! (`network`/`networks`/`net`, `service`/`services`/`svc`, `node(s)`, `task(s)`,
//! `endpoints`/`ep`, `secret(s)`, `config(s)`), and the URL plural each maps to.

use std::fmt;
use std::str::FromStr;

use shoal_api_types::{
    ConfigSpec, EndpointsSpec, NetworkSpec, NodeSpec, Resource, SecretSpec, ServiceSpec, TaskSpec,
};

/// One kind of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Network.
    Network,
    /// Service.
    Service,
    /// Node.
    Node,
    /// Task.
    Task,
    /// Endpoints.
    Endpoints,
    /// Secret.
    Secret,
    /// Config.
    Config,
}

impl Kind {
    /// Every kind, in the order `get` help lists them.
    pub const ALL: [Kind; 7] = [
        Kind::Network,
        Kind::Service,
        Kind::Node,
        Kind::Task,
        Kind::Endpoints,
        Kind::Secret,
        Kind::Config,
    ];

    /// The kind as objects spell it (`Network`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Network => NetworkSpec::KIND,
            Kind::Service => ServiceSpec::KIND,
            Kind::Node => NodeSpec::KIND,
            Kind::Task => TaskSpec::KIND,
            Kind::Endpoints => EndpointsSpec::KIND,
            Kind::Secret => SecretSpec::KIND,
            Kind::Config => ConfigSpec::KIND,
        }
    }

    /// The plural in URLs (`networks`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Network => NetworkSpec::PLURAL,
            Kind::Service => ServiceSpec::PLURAL,
            Kind::Node => NodeSpec::PLURAL,
            Kind::Task => TaskSpec::PLURAL,
            Kind::Endpoints => EndpointsSpec::PLURAL,
            Kind::Secret => SecretSpec::PLURAL,
            Kind::Config => ConfigSpec::PLURAL,
        }
    }

    /// `network/appnet`, as kubectl prints references.
    pub fn reference(self, name: &str) -> String {
        format!("{}/{name}", self.name().to_lowercase())
    }

    /// The kind of an object's `kind` field (`Network`), if known.
    pub fn from_object_kind(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.plural())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Kind, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "network" | "networks" | "net" | "nets" => Kind::Network,
            "service" | "services" | "svc" => Kind::Service,
            "node" | "nodes" | "no" => Kind::Node,
            "task" | "tasks" => Kind::Task,
            "endpoints" | "endpoint" | "ep" => Kind::Endpoints,
            "secret" | "secrets" => Kind::Secret,
            "config" | "configs" => Kind::Config,
            _ => {
                return Err(format!(
                    "unknown kind {s:?}: use networks (net), services (svc), nodes, tasks, endpoints (ep), secrets or configs"
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_accept_singular_plural_and_short_names() {
        for (alias, kind) in [
            ("network", Kind::Network),
            ("networks", Kind::Network),
            ("net", Kind::Network),
            ("Service", Kind::Service),
            ("services", Kind::Service),
            ("svc", Kind::Service),
            ("node", Kind::Node),
            ("nodes", Kind::Node),
            ("task", Kind::Task),
            ("tasks", Kind::Task),
            ("endpoints", Kind::Endpoints),
            ("ep", Kind::Endpoints),
            ("secrets", Kind::Secret),
            ("config", Kind::Config),
        ] {
            assert_eq!(alias.parse::<Kind>(), Ok(kind), "{alias}");
        }
    }

    #[test]
    fn unknown_kinds_list_the_known_ones() {
        let err = "pods".parse::<Kind>().unwrap_err();
        assert!(err.contains("unknown kind \"pods\""), "{err}");
        assert!(err.contains("services (svc)"), "{err}");
    }

    #[test]
    fn kinds_map_to_plurals_and_references() {
        assert_eq!(Kind::Endpoints.plural(), "endpoints");
        assert_eq!(Kind::Network.reference("appnet"), "network/appnet");
        assert_eq!(Kind::from_object_kind("Service"), Some(Kind::Service));
    }
}
