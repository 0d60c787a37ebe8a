//! Shared helpers for the identity tests: an in-process fake controller built from
//! `shoal_pki` (a CA made for the test; `/v1/join/ca`, `/v1/join`, `/v1/renew` as the
//! contract of issue 12 fixes them; the real endpoints are the controller's), certificates
//! of that CA, and an HTTPS client that records the certificate a server presents.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{json, Value};
use shoal_pki::{Ca, ClientAuth, Issued, JoinToken, PeerIdentity, Profile, Reloadable, Usage};
use tokio::sync::oneshot;

/// The CN of the controllers' certificate.
pub const CONTROLLER: &str = "shoal-controller";

/// What the fake controller saw.
#[derive(Default)]
pub struct Seen {
    /// `GET /v1/join/ca` requests.
    pub ca: AtomicUsize,
    /// `POST /v1/join` requests, whatever their body.
    pub join: AtomicUsize,
    /// `POST /v1/renew` requests, whatever their body.
    pub renew: AtomicUsize,
    /// Requests (any path) whose URI, headers or body contain the join secret.
    pub carrying_secret: AtomicUsize,
    /// The CNs renewals were asked for with.
    pub renewed_for: Mutex<Vec<String>>,
}

struct Fake {
    ca: Ca,
    secret: String,
    etcd: Vec<String>,
    lifetime: Duration,
    seen: Arc<Seen>,
}

/// A fake controller serving HTTPS on loopback.
pub struct FakeController {
    /// The cluster CA.
    pub ca: Ca,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The right join token.
    pub token: JoinToken,
    /// What it saw.
    pub seen: Arc<Seen>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for FakeController {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The profile the fake controller signs nodes' CSRs with.
pub fn node_profile(name: &str, ip: &str, lifetime: Duration) -> Profile {
    Profile {
        common_name: name.into(),
        dns_names: vec![name.into()],
        ips: ip.parse().into_iter().collect(),
        usage: Usage::Both,
        lifetime,
    }
}

/// A certificate of `ca` for `cn` (client and server), key made by the CA.
pub fn issue(ca: &Ca, cn: &str) -> Issued {
    ca.issue(&node_profile(cn, "127.0.0.1", Duration::from_secs(3600)))
        .unwrap()
}

impl FakeController {
    /// Starts one whose node certificates live `lifetime`.
    pub async fn start(lifetime: Duration) -> FakeController {
        let ca = Ca::generate("test").unwrap();
        let secret = shoal_pki::new_join_secret();
        let seen = Arc::new(Seen::default());
        let state = Arc::new(Fake {
            ca: Ca::load(ca.cert_pem(), ca.key_pem()).unwrap(),
            secret: secret.clone(),
            etcd: vec!["https://127.0.0.1:2379".into()],
            lifetime,
            seen: seen.clone(),
        });
        let router = Router::new()
            .route("/v1/join/ca", get(join_ca))
            .route("/v1/join", post(join))
            .route("/v1/renew", post(renew))
            .layer(axum::middleware::from_fn_with_state(state.clone(), inspect))
            .with_state(state);
        let api = ca
            .issue(&Profile {
                common_name: "localhost".into(),
                dns_names: vec!["localhost".into()],
                ips: vec!["127.0.0.1".parse().unwrap()],
                usage: Usage::Server,
                lifetime: Duration::from_secs(3600),
            })
            .unwrap();
        let tls = shoal_pki::server_config(
            &api.cert_pem,
            &api.key_pem,
            ClientAuth::Optional {
                ca_pem: ca.cert_pem().into(),
            },
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(shoal_pki::serve(
            listener,
            Reloadable::new(tls),
            router,
            async move {
                let _ = stopped.await;
            },
        ));
        FakeController {
            token: JoinToken {
                ca_digest: ca.digest(),
                secret,
            },
            ca,
            url: format!("https://127.0.0.1:{}", addr.port()),
            seen,
            stop: Some(stop),
        }
    }
}

/// Counts every request that carries the secret anywhere.
async fn inspect(State(fake): State<Arc<Fake>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let in_headers = parts
        .headers
        .values()
        .any(|v| String::from_utf8_lossy(v.as_bytes()).contains(&fake.secret));
    if parts.uri.to_string().contains(&fake.secret)
        || in_headers
        || String::from_utf8_lossy(&bytes).contains(&fake.secret)
    {
        fake.seen.carrying_secret.fetch_add(1, Ordering::SeqCst);
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

async fn join_ca(State(fake): State<Arc<Fake>>) -> String {
    fake.seen.ca.fetch_add(1, Ordering::SeqCst);
    fake.ca.cert_pem().to_string()
}

fn issued(fake: &Fake, name: &str, address: &str, csr: &str) -> Response {
    match fake
        .ca
        .sign_csr(csr, &node_profile(name, address, fake.lifetime))
    {
        Ok(certificate) => Json(json!({
            "certificate": certificate,
            "ca": fake.ca.cert_pem(),
            "etcdEndpoints": fake.etcd,
            "notAfter": "2099-01-01T00:00:00Z",
        }))
        .into_response(),
        Err(e) => status(400, &e.to_string()),
    }
}

fn status(code: u16, message: &str) -> Response {
    let reason = if code == 401 {
        "Unauthorized"
    } else {
        "BadRequest"
    };
    (
        StatusCode::from_u16(code).unwrap(),
        Json(json!({"code": code, "reason": reason, "message": message})),
    )
        .into_response()
}

async fn join(State(fake): State<Arc<Fake>>, Json(body): Json<Value>) -> Response {
    fake.seen.join.fetch_add(1, Ordering::SeqCst);
    let field = |k: &str| body[k].as_str().unwrap_or_default().to_string();
    let token: Result<JoinToken, _> = field("token").parse();
    match token {
        Ok(t) if t.secret == fake.secret => {}
        _ => return status(401, "the join token is not valid"),
    }
    issued(&fake, &field("name"), &field("address"), &field("csr"))
}

async fn renew(
    State(fake): State<Arc<Fake>>,
    peer: Option<Extension<PeerIdentity>>,
    Json(body): Json<Value>,
) -> Response {
    fake.seen.renew.fetch_add(1, Ordering::SeqCst);
    let Some(Extension(peer)) = peer else {
        return status(401, "renewal needs the node's certificate");
    };
    fake.seen
        .renewed_for
        .lock()
        .unwrap()
        .push(peer.common_name.clone());
    issued(
        &fake,
        &peer.common_name,
        "127.0.0.1",
        body["csr"].as_str().unwrap_or_default(),
    )
}

/// A WebPKI verifier that also records the certificate the server presented.
#[derive(Debug)]
pub struct Recorder {
    inner: Arc<WebPkiServerVerifier>,
    /// The last leaf certificate seen.
    pub seen: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.clone().into_owned());
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// An HTTPS client trusting `ca_pem`, presenting `identity`, that records the server's
/// certificate; each request opens a new connection.
pub fn recording_client(
    ca_pem: &str,
    identity: Option<&Issued>,
    node: &str,
    addr: SocketAddr,
) -> (reqwest::Client, Arc<Recorder>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let recorder = Arc::new(Recorder {
        inner: WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap(),
        seen: Mutex::new(None),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone());
    let tls = match identity {
        Some(i) => {
            let certs = CertificateDer::pem_slice_iter(i.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key =
                rustls::pki_types::PrivateKeyDer::from_pem_slice(i.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve(node, addr)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    (client, recorder)
}

/// The serial of a DER certificate.
pub fn serial(der: &CertificateDer<'_>) -> String {
    shoal_pki::inspect_der(der).unwrap().serial
}
