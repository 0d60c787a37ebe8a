//! `shoal system check`: the wire types of the audit (issue 18). Each agent compares what
//! its desired state says the node should have with what the kernel and containerd have
//! (`GET /v1/check` on the agent), the controller checks etcd itself and asks every ready
//! node (`GET /apis/shoal/v1/system/check`), and both answer with a [`CheckReport`] whose
//! [`Drift`]s each name the node, the kind of thing, the object and what was expected
//! against what was found. An empty `drift` list means the cluster is as etcd says.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The node name of drift found in etcd itself (the controller's checks).
pub const ETCD_NODE: &str = "(etcd)";

/// What kind of thing drifted.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum DriftKind {
    /// A container: one no task explains, or a task without the container it should have.
    Container,
    /// A task's network namespace (missing, or left behind).
    Netns,
    /// A task's veth (missing, or a stray one).
    Veth,
    /// An overlay's bridge or VXLAN device, or the gateway bridge.
    BridgePort,
    /// A static FDB entry on an overlay's VXLAN device.
    Fdb,
    /// A neighbour entry on an overlay's VXLAN device.
    Neigh,
    /// An element of a Shoal nftables table (VIP maps in a task namespace, the node's mesh).
    Nft,
    /// A DNS record (or a task namespace without its DNS server).
    Dns,
    /// An IPAM claim no live object owns.
    Ipam,
    /// Two live tasks in one slot of a service.
    Slot,
    /// Two live objects holding one address.
    Address,
    /// An Endpoints object listing a task that is not running.
    Endpoints,
    /// A ready node whose agent did not answer.
    Unreachable,
}

impl DriftKind {
    /// The kind as printed (`bridge-port`, `fdb`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::Container => "container",
            DriftKind::Netns => "netns",
            DriftKind::Veth => "veth",
            DriftKind::BridgePort => "bridge-port",
            DriftKind::Fdb => "fdb",
            DriftKind::Neigh => "neigh",
            DriftKind::Nft => "nft",
            DriftKind::Dns => "dns",
            DriftKind::Ipam => "ipam",
            DriftKind::Slot => "slot",
            DriftKind::Address => "address",
            DriftKind::Endpoints => "endpoints",
            DriftKind::Unreachable => "unreachable",
        }
    }
}

impl std::fmt::Display for DriftKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One difference between what should be and what is.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Drift {
    /// The node it was found on ([`ETCD_NODE`] for the controller's checks of etcd).
    pub node: String,
    /// What kind of thing.
    pub kind: DriftKind,
    /// The object: a task id, `network/service`, a VNI, an address.
    pub object: String,
    /// What should be there (`"nothing"` when the thing should not exist).
    pub expected: String,
    /// What is there (`"nothing"` when it is missing).
    pub found: String,
}

impl Drift {
    /// A drift of `kind` on `node` about `object`.
    pub fn new(
        node: impl Into<String>,
        kind: DriftKind,
        object: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        Drift {
            node: node.into(),
            kind,
            object: object.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    /// `expected X, found Y`, as the CLI prints it.
    pub fn detail(&self) -> String {
        format!("expected {}, found {}", self.expected, self.found)
    }
}

/// The result of a check: the nodes that were checked and every drift, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckReport {
    /// Names of the nodes whose agents answered.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Every drift found (empty: none).
    #[serde(default)]
    pub drift: Vec<Drift>,
}

impl CheckReport {
    /// Whether nothing drifted.
    pub fn is_clean(&self) -> bool {
        self.drift.is_empty()
    }

    /// Sorts and deduplicates nodes and drift (by node, kind, object).
    pub fn normalize(&mut self) {
        self.nodes.sort();
        self.nodes.dedup();
        self.drift.sort();
        self.drift.dedup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_kinds_should_serialise_as_they_print() {
        for kind in [
            DriftKind::BridgePort,
            DriftKind::Fdb,
            DriftKind::Unreachable,
        ] {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
    }

    #[test]
    fn a_report_should_round_trip_and_sort_its_drift() {
        let mut report = CheckReport {
            nodes: vec!["node-2".into(), "node-1".into()],
            drift: vec![
                Drift::new("node-2", DriftKind::Fdb, "4097", "a", "b"),
                Drift::new("node-1", DriftKind::Nft, "t1", "a", "b"),
            ],
        };
        report.normalize();
        assert_eq!(report.nodes, ["node-1", "node-2"]);
        assert_eq!(report.drift[0].node, "node-1");
        let back: CheckReport =
            serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(back, report);
        assert!(!back.is_clean());
        assert_eq!(back.drift[0].detail(), "expected a, found b");
    }
}
