//! Node: a host running an agent. The agent registers it and keeps a lease alive; users
//! may change its labels and availability.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::keys::{CONTROLLER_USER, FLEET_USER, ROOT_USER};
use crate::object::{Object, Resource};
use crate::resources::NodeCapacity;
use crate::validation::{check_dns_label, FieldError};

/// Names no Node may take: a node's name is its etcd user (the CN of its certificate),
/// and these are the users of etcd's superuser, the controllers and hollow fleets.
pub const RESERVED_NODE_NAMES: [&str; 3] = [ROOT_USER, CONTROLLER_USER, FLEET_USER];

/// Why `name` cannot name a node, if it cannot: not a DNS-1123 label, or reserved
/// ([`RESERVED_NODE_NAMES`]). The agent and the join endpoint check names with this.
pub fn check_node_name(name: &str) -> Result<(), String> {
    check_dns_label(name)?;
    if RESERVED_NODE_NAMES.contains(&name) {
        return Err(format!(
            "{name:?} is reserved for Shoal's own etcd users ({}); choose another node name",
            RESERVED_NODE_NAMES.join(", ")
        ));
    }
    Ok(())
}

/// A Node object.
pub type Node = Object<NodeSpec>;

/// Whether the scheduler may place tasks on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeAvailability {
    /// New tasks may land here.
    #[default]
    Active,
    /// No new tasks; running ones stay.
    Pause,
    /// No tasks; running ones move elsewhere.
    Drain,
}

/// The user-settable part of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// Labels used by placement constraints (`node.labels.zone==a`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `active` (default), `pause` or `drain`.
    #[serde(default)]
    pub availability: NodeAvailability,
}

/// Whether a node's agent is alive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Not yet seen.
    #[default]
    Unknown,
    /// The agent holds its lease.
    Ready,
    /// The lease expired.
    Down,
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeState::Unknown => "Unknown",
            NodeState::Ready => "Ready",
            NodeState::Down => "Down",
        })
    }
}

/// What the agent and controller report of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeStatus {
    /// Ready, Down or Unknown.
    #[serde(default)]
    pub state: NodeState,
    /// The underlay address other nodes reach this one at (VXLAN endpoint).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Where the agent serves `exec` (host:port).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent_endpoint: String,
    /// The etcd lease the agent keeps alive, in hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lease: String,
    /// `containerd` or `hollow` (testing mode, no containers).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime: String,
    /// When the agent registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<DateTime<Utc>>,
    /// Why the node is in its state.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The node's own address on the `ingress` network (routing mesh), without prefix
    /// length: allocated by the controller (claimed as `node/<name>`), kept across agent
    /// restarts, released when the Node is deleted. Empty until allocated. Additive: older
    /// writers leave it out, and agents keep it when they rewrite the status.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ingress_address: String,
    /// What the node offers the scheduler (reported by the agent; unset: unknown, and
    /// tasks that reserve resources do not go there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<NodeCapacity>,
}

impl Resource for NodeSpec {
    const KIND: &'static str = "Node";
    const PLURAL: &'static str = "nodes";
    const USER_OWNED: bool = false;
    type Status = NodeStatus;

    fn validate_name(name: &str, errs: &mut Vec<FieldError>) {
        // The DNS-label problems are reported by the metadata's own check.
        if check_dns_label(name).is_ok() {
            if let Err(msg) = check_node_name(name) {
                errs.push(FieldError::new("metadata.name", msg));
            }
        }
    }

    fn validate_spec(&self, errs: &mut Vec<FieldError>) {
        for key in self.labels.keys() {
            if key.is_empty() || key.contains(['=', ' ']) {
                errs.push(FieldError::new(
                    format!("spec.labels.{key}"),
                    "label keys must be non-empty, without '=' or spaces",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Validate;

    #[test]
    fn node_names_of_shoal_etcd_users_are_refused_with_a_field_error() {
        for name in RESERVED_NODE_NAMES {
            let errs = Node::new(name, NodeSpec::default())
                .validated()
                .unwrap_err();
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert_eq!(errs[0].field, "metadata.name");
            assert!(errs[0].message.contains("reserved"), "{}", errs[0]);
            assert!(check_node_name(name).is_err());
        }
    }

    #[test]
    fn ordinary_node_names_are_accepted_and_bad_labels_reported_once() {
        for name in ["node-1", "hollow-3", "rooted", "shoal-controller-2"] {
            assert!(Node::new(name, NodeSpec::default()).validated().is_ok());
            assert!(check_node_name(name).is_ok());
        }
        let errs = Node::new("Root", NodeSpec::default())
            .validated()
            .unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(check_node_name("Root").is_err());
    }
}
