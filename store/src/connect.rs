//! [`Connect`]: every setting needed to reach etcd — endpoints, key root, TLS, credentials,
//! timeouts — and the one place that turns them into an etcd client.
//!
//! Invariant: every binary, benchmark and test builds its connection from a [`Connect`];
//! nothing outside this crate constructs an etcd client, so TLS and authentication are a
//! change here only.
//!
//! There is deliberately no per-request timeout: etcd-client applies it to every request,
//! streams included, so it would cut watches and lease keep-alives. Dead connections are
//! found by the HTTP/2 keep-alive instead.

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::Result;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct Connect {
    /// Endpoints, e.g. `http://127.0.0.1:2379` (`https://` with TLS).
    pub endpoints: Vec<String>,
    /// Key root; [`shoal_api_types::keys::DEFAULT_ROOT`] when `None`.
    pub root: Option<String>,
    /// PEM CA certificate to verify etcd with (enables TLS).
    pub ca_cert: Option<String>,
    /// PEM client certificate and key (enables TLS with client authentication).
    pub client_cert: Option<(String, String)>,
    /// User name and password for etcd's authentication.
    pub credentials: Option<(String, String)>,
    /// How long to wait for a connection to an endpoint.
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive: ping interval and how long to wait for the answer.
    pub keep_alive: (Duration, Duration),
}

impl Default for Connect {
    fn default() -> Self {
        Connect {
            endpoints: Vec::new(),
            root: None,
            ca_cert: None,
            client_cert: None,
            credentials: None,
            connect_timeout: Duration::from_secs(3),
            keep_alive: (Duration::from_secs(5), Duration::from_secs(3)),
        }
    }
}

impl Connect {
    /// Settings for `endpoints` with every other field at its default.
    pub fn to(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Connect {
        Connect {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..Connect::default()
        }
    }

    /// The etcd client options these settings stand for.
    fn options(&self) -> ConnectOptions {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_keep_alive(self.keep_alive.0, self.keep_alive.1)
            .with_keep_alive_while_idle(true);
        if self.ca_cert.is_some() || self.client_cert.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.ca_cert {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &self.client_cert {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            opts = opts.with_tls(tls);
        }
        if let Some((user, password)) = &self.credentials {
            opts = opts.with_user(user.clone(), password.clone());
        }
        opts
    }

    /// A (lazily connecting) etcd client.
    pub(crate) async fn client(&self) -> Result<Client> {
        Ok(Client::connect(&self.endpoints, Some(self.options())).await?)
    }
}
