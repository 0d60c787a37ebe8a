//! The agent's HTTPS clients toward the controller: one that trusts nothing and only
//! records what the controller presents (to fetch the CA at join, before it is pinned),
//! and one pinned to the cluster CA, with the node's certificate once it has one. Also the
//! reading of `/v1/join` and `/v1/renew` answers (wire types: `shoal_api_types::join`).

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Serialize;
use shoal_api_types::Status;

use super::error::IdentityError;

/// How long a request to the controller may take.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The answer of `/v1/join` and `/v1/renew` (the API's own type).
pub(crate) type Issued = shoal_api_types::join::JoinResponse;

/// Records the certificates a server presents and accepts them all: only for fetching
/// the CA at join, over a connection that carries no secret. The handshake signature is
/// still checked, so the recorded certificate is the peer's.
#[derive(Debug)]
struct Recording {
    provider: Arc<CryptoProvider>,
    seen: Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.clear();
        seen.push(end_entity.clone().into_owned());
        seen.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The CA certificate (PEM) the controller at `controller` serves at `GET /v1/join/ca`,
/// fetched over TLS without verifying anything (nothing secret is sent), and the
/// certificates the controller presented on that connection.
pub(crate) async fn fetch_ca_unverified(
    controller: &reqwest::Url,
) -> Result<(String, Vec<CertificateDer<'static>>), IdentityError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recording = Arc::new(Recording {
        provider: provider.clone(),
        seen: Mutex::new(Vec::new()),
    });
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            IdentityError::Pki(shoal_pki::PkiError::Tls {
                what: "choosing TLS versions".into(),
                source: e,
            })
        })?
        .dangerous()
        .with_custom_certificate_verifier(recording.clone())
        .with_no_client_auth();
    let client = client(tls)?;
    let url = endpoint(controller, "/v1/join/ca");
    let resp = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| IdentityError::unreachable(&url, e))?;
    let pem = text(&url, "fetching the cluster CA", resp).await?;
    let seen = recording
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok((pem, seen))
}

/// A client that trusts only `ca_pem` and presents `identity` (certificate, key PEM).
pub(crate) fn pinned_client(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<reqwest::Client, IdentityError> {
    client(shoal_pki::client_config(ca_pem, identity)?)
}

fn client(tls: rustls::ClientConfig) -> Result<reqwest::Client, IdentityError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| IdentityError::Client(e.to_string()))
}

/// `controller` with `path` in place of its own.
pub(crate) fn endpoint(controller: &reqwest::Url, path: &str) -> reqwest::Url {
    let mut url = controller.clone();
    url.set_path(path);
    url.set_query(None);
    url
}

/// POSTs `body` as JSON and reads an [`Issued`] answer.
pub(crate) async fn post_issued(
    client: &reqwest::Client,
    url: &reqwest::Url,
    what: &str,
    body: &impl Serialize,
) -> Result<Issued, IdentityError> {
    let resp = client
        .post(url.clone())
        .json(body)
        .send()
        .await
        .map_err(|e| IdentityError::unreachable(url, e))?;
    let text = text(url, what, resp).await?;
    serde_json::from_str(&text).map_err(|e| IdentityError::BadAnswer {
        url: url.to_string(),
        reason: format!("{what}: {e}"),
    })
}

/// The body of a 200 answer; any other status is [`IdentityError::Refused`] with the
/// controller's message.
pub(crate) async fn text(
    url: &reqwest::Url,
    what: &str,
    resp: reqwest::Response,
) -> Result<String, IdentityError> {
    let status = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| IdentityError::unreachable(url, e))?;
    if status.is_success() {
        return Ok(body);
    }
    let message = serde_json::from_str::<Status>(&body)
        .map(|s| s.message)
        .unwrap_or_else(|_| body.trim().chars().take(300).collect());
    Err(IdentityError::Refused {
        url: url.to_string(),
        what: what.to_string(),
        code: status.as_u16(),
        message,
    })
}
