//! rustls configurations from PEM: [`server_config`] (with [`ClientAuth`]),
//! [`client_config`] (trusting only the given CA, optionally presenting an identity;
//! [`client_config_revoking`] also refuses certificates made before a revocation) and
//! [`Reloadable`], a server config that renewal can swap while serving.
//!
//! Every config uses the `ring` provider explicitly and rustls' safe default protocol
//! versions; servers offer h2 and http/1.1 by ALPN.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::ca::info;
use crate::error::{PkiError, Result};

/// Whether a server asks for client certificates, and which CA they must chain to.
#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// No client certificates.
    None,
    /// Accepted and verified if sent (then in [`PeerIdentity`](crate::PeerIdentity)), not
    /// required: the API server, whose other clients use bearer tokens.
    Optional {
        /// The CA client certificates must chain to (PEM).
        ca_pem: String,
    },
    /// Required: the handshake fails without a certificate from this CA.
    Required {
        /// The CA client certificates must chain to (PEM).
        ca_pem: String,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn chain(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| PkiError::parse(what, e))?;
    if certs.is_empty() {
        return Err(PkiError::parse(what, "no PEM certificate"));
    }
    Ok(certs)
}

fn key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::parse(what, format!("no PEM private key ({e})")))
}

fn roots(ca_pem: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in chain(ca_pem, "the CA certificate")? {
        roots
            .add(cert)
            .map_err(PkiError::tls("adding the CA certificate"))?;
    }
    Ok(roots)
}

/// A server config presenting `cert_pem` (leaf first, then any intermediates) with
/// `key_pem`.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    client_auth: ClientAuth,
) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(PkiError::tls("choosing TLS versions"))?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional { ca_pem } => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&ca_pem)?), provider)
                .allow_unauthenticated()
                .build()?,
        ),
        ClientAuth::Required { ca_pem } => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&ca_pem)?), provider)
                .build()?,
        ),
    };
    let mut config = builder
        .with_single_cert(
            chain(cert_pem, "the server certificate")?,
            key(key_pem, "the server key")?,
        )
        .map_err(PkiError::tls("using the server certificate and key"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client config that trusts only `ca_pem` and presents `identity` (certificate PEM, key
/// PEM) when given.
pub fn client_config(ca_pem: &str, identity: Option<(&str, &str)>) -> Result<ClientConfig> {
    client_config_revoking(ca_pem, identity, None)
}

/// [`client_config`] that also refuses a server certificate whose notBefore is at or before
/// `revoked_at` (a removed node's certificates; see the controller's revocation records).
pub fn client_config_revoking(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    revoked_at: Option<SystemTime>,
) -> Result<ClientConfig> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(PkiError::tls("choosing TLS versions"))?;
    let builder = match revoked_at {
        None => builder.with_root_certificates(roots(ca_pem)?),
        Some(revoked_at) => {
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider)
                    .build()?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NotRevoked { inner, revoked_at }))
        }
    };
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key_pem)) => builder
            .with_client_auth_cert(
                chain(cert, "the client certificate")?,
                key(key_pem, "the client key")?,
            )
            .map_err(PkiError::tls("using the client certificate and key")),
    }
}

/// The WebPKI verifier, then: the leaf's notBefore must be after `revoked_at`.
#[derive(Debug)]
struct NotRevoked {
    inner: Arc<WebPkiServerVerifier>,
    revoked_at: SystemTime,
}

impl ServerCertVerifier for NotRevoked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let info = info(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        if info.not_before <= self.revoked_at {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A server config that can be swapped while serving (certificate renewal); each new
/// connection uses the config current when it is accepted.
#[derive(Debug)]
pub struct Reloadable {
    current: RwLock<Arc<ServerConfig>>,
}

impl Reloadable {
    /// Starts with `config`.
    pub fn new(config: Arc<ServerConfig>) -> Arc<Self> {
        Arc::new(Reloadable {
            current: RwLock::new(config),
        })
    }

    /// Replaces the config for connections accepted from now on.
    pub fn set(&self, config: Arc<ServerConfig>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// The config new connections get.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
