//! Bodies of the node join API (`POST /v1/join`, `POST /v1/renew`) and of the join token
//! endpoints (`GET /v1/join-token`, `POST /v1/join-token/rotate`). Wire names are camelCase.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `POST /v1/join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinRequest {
    /// `SWMTKN-1-<ca digest>-<secret>`.
    pub token: String,
    /// The node's name: its certificate's CN and DNS SAN, its etcd user.
    pub name: String,
    /// The node's IP address on the underlay (its certificate's IP SAN).
    pub address: String,
    /// A PEM certificate request for the node's new key (only its public key is used).
    pub csr: String,
}

/// `POST /v1/renew`, over mutual TLS with the node's current certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenewRequest {
    /// A PEM certificate request for the node's next key.
    pub csr: String,
}

/// The answer to a join or a renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    /// The node's certificate (PEM).
    pub certificate: String,
    /// The cluster CA (PEM).
    pub ca: String,
    /// The etcd endpoints nodes use.
    pub etcd_endpoints: Vec<String>,
    /// When the certificate expires.
    pub not_after: DateTime<Utc>,
}

/// `GET /v1/join-token`, `POST /v1/join-token/rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenResponse {
    /// `SWMTKN-1-<ca digest>-<secret>`.
    pub token: String,
}

/// Node names that would collide with the etcd users of the control plane.
pub const RESERVED_NODE_NAMES: [&str; 3] = ["root", "shoal-controller", "shoal-hollow-fleet"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_bodies_use_the_documented_wire_names() {
        let r: JoinRequest =
            serde_json::from_str(r#"{"token":"t","name":"node-1","address":"10.0.0.1","csr":"c"}"#)
                .unwrap();
        assert_eq!(r.name, "node-1");
        let resp = JoinResponse {
            certificate: "c".into(),
            ca: "a".into(),
            etcd_endpoints: vec!["https://10.0.0.1:2379".into()],
            not_after: DateTime::from_timestamp(0, 0).unwrap(),
        };
        let v = serde_json::to_value(&resp).unwrap();
        assert_eq!(v["etcdEndpoints"][0], "https://10.0.0.1:2379");
        assert_eq!(v["notAfter"], "1970-01-01T00:00:00Z");
    }
}
