//! What an identity means to the agent's two TLS users: the etcd client
//! ([`shoal_store::Connect`] with the CA and the client certificate; the certificate's CN
//! is the etcd user) and the exec/logs server (the node certificate, and client
//! certificates of the cluster CA required; which CN may call is the server's check).

use std::sync::Arc;

use shoal_pki::ClientAuth;
use shoal_store::Connect;

use super::error::IdentityError;
use super::files::{FleetIdentity, NodeIdentity};

impl NodeIdentity {
    /// `base` (key root, timeouts, and endpoints — those of `join.json` when `base` names
    /// none) with TLS toward etcd: verified against `ca.crt`, presenting `node.crt`.
    pub fn etcd_connect(&self, base: &Connect) -> Connect {
        let endpoints = if base.endpoints.is_empty() {
            self.join.etcd_endpoints.clone()
        } else {
            base.endpoints.clone()
        };
        with_tls(base, endpoints, &self.ca_pem, &self.cert_pem, &self.key_pem)
    }

    /// The exec/logs server's TLS: `node.crt`, and a client certificate of the cluster CA
    /// required from every client.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
        Ok(shoal_pki::server_config(
            &self.cert_pem,
            &self.key_pem,
            ClientAuth::Required {
                ca_pem: self.ca_pem.clone(),
            },
        )?)
    }
}

impl FleetIdentity {
    /// `base` with TLS toward etcd, presenting the fleet's certificate.
    pub fn etcd_connect(&self, base: &Connect) -> Connect {
        with_tls(
            base,
            base.endpoints.clone(),
            &self.ca_pem,
            &self.cert_pem,
            &self.key_pem,
        )
    }
}

fn with_tls(base: &Connect, endpoints: Vec<String>, ca: &str, cert: &str, key: &str) -> Connect {
    Connect {
        endpoints,
        ca_cert: Some(ca.to_string()),
        client_cert: Some((cert.to_string(), key.to_string())),
        ..base.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::files::JoinInfo;

    fn identity() -> NodeIdentity {
        NodeIdentity {
            ca_pem: "CA".into(),
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
            join: JoinInfo {
                controller: "https://10.0.0.1:7777".into(),
                etcd_endpoints: vec!["https://10.0.0.1:2379".into()],
                name: "node-1".into(),
            },
        }
    }

    #[test]
    fn etcd_should_be_reached_with_the_node_certificate_at_the_joined_endpoints_unless_overridden()
    {
        let base = Connect {
            root: Some("/r/v1".into()),
            ..Connect::default()
        };
        let c = identity().etcd_connect(&base);
        assert_eq!(c.endpoints, ["https://10.0.0.1:2379"]);
        assert_eq!(c.root.as_deref(), Some("/r/v1"));
        assert_eq!(c.ca_cert.as_deref(), Some("CA"));
        assert_eq!(c.client_cert, Some(("CERT".into(), "KEY".into())));
        let c = identity().etcd_connect(&Connect::to(["https://etcd:2379"]));
        assert_eq!(c.endpoints, ["https://etcd:2379"]);
    }
}
