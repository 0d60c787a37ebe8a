//! Certificates from `shoal_pki::Ca` over real TLS handshakes on loopback: `serve` with
//! each client-auth mode, a reqwest client from `client_config`, and the `PeerIdentity`
//! a handler sees.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{Extension, Router};
use shoal_pki::{
    ca_digest, client_config, csr, inspect, server_config, Ca, ClientAuth, Issued, PeerIdentity,
    PkiError, Profile, Reloadable, Usage,
};
use tokio::sync::oneshot;

fn profile(cn: &str, usage: Usage) -> Profile {
    Profile {
        common_name: cn.into(),
        dns_names: vec![cn.into()],
        ips: vec!["127.0.0.1".parse().unwrap()],
        usage,
        lifetime: Duration::from_secs(3600),
    }
}

fn server_cert(ca: &Ca) -> Issued {
    ca.issue(&profile("localhost", Usage::Server)).unwrap()
}

/// A node's certificate the way a joining agent gets it: its own key, a CSR, the CA signs.
fn node_cert(ca: &Ca, name: &str) -> Issued {
    let (csr_pem, key_pem) = csr(name).unwrap();
    let cert_pem = ca.sign_csr(&csr_pem, &profile(name, Usage::Both)).unwrap();
    Issued { cert_pem, key_pem }
}

async fn whoami(identity: Option<Extension<PeerIdentity>>) -> String {
    identity.map_or("anonymous".into(), |Extension(i)| i.common_name)
}

struct Server {
    addr: SocketAddr,
    tls: Arc<Reloadable>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(config: Arc<rustls::ServerConfig>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = Reloadable::new(config);
    let (stop, stopped) = oneshot::channel::<()>();
    let router = Router::new().route("/whoami", get(whoami));
    let task = tokio::spawn(shoal_pki::serve(
        listener,
        tls.clone(),
        router,
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        tls,
        stop: Some(stop),
        task,
    }
}

async fn get_whoami(
    server: &Server,
    ca_pem: &str,
    identity: Option<&Issued>,
) -> reqwest::Result<String> {
    let tls = client_config(
        ca_pem,
        identity.map(|i| (i.cert_pem.as_str(), i.key_pem.as_str())),
    )
    .unwrap();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve("localhost", server.addr)
        .build()
        .unwrap();
    client
        .get(format!("https://localhost:{}/whoami", server.addr.port()))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await
}

#[tokio::test]
async fn csr_signed_by_the_ca_should_identify_the_client_to_the_handler() {
    let ca = Ca::generate("test").unwrap();
    let server_id = server_cert(&ca);
    let server = start(
        server_config(
            &server_id.cert_pem,
            &server_id.key_pem,
            ClientAuth::Optional {
                ca_pem: ca.cert_pem().into(),
            },
        )
        .unwrap(),
    )
    .await;
    let node = node_cert(&ca, "node-1");
    assert_eq!(
        get_whoami(&server, ca.cert_pem(), Some(&node))
            .await
            .unwrap(),
        "node-1"
    );
    // Optional: a client without a certificate gets through, with no identity.
    assert_eq!(
        get_whoami(&server, ca.cert_pem(), None).await.unwrap(),
        "anonymous"
    );
}

#[tokio::test]
async fn required_client_auth_should_refuse_a_client_without_certificate() {
    let ca = Ca::generate("test").unwrap();
    let server_id = server_cert(&ca);
    let server = start(
        server_config(
            &server_id.cert_pem,
            &server_id.key_pem,
            ClientAuth::Required {
                ca_pem: ca.cert_pem().into(),
            },
        )
        .unwrap(),
    )
    .await;
    assert!(get_whoami(&server, ca.cert_pem(), None).await.is_err());
    let controller = ca.issue(&profile("shoal-controller", Usage::Both)).unwrap();
    assert_eq!(
        get_whoami(&server, ca.cert_pem(), Some(&controller))
            .await
            .unwrap(),
        "shoal-controller"
    );
}

#[tokio::test]
async fn certificates_of_another_ca_should_be_refused_both_ways() {
    let ca = Ca::generate("test").unwrap();
    let other = Ca::generate("other").unwrap();
    let server_id = server_cert(&ca);
    let server = start(
        server_config(
            &server_id.cert_pem,
            &server_id.key_pem,
            ClientAuth::Optional {
                ca_pem: ca.cert_pem().into(),
            },
        )
        .unwrap(),
    )
    .await;
    // The client trusts another CA: the server's certificate is refused.
    assert!(get_whoami(&server, other.cert_pem(), None).await.is_err());
    // The client presents another CA's certificate: even Optional refuses it.
    let stranger = node_cert(&other, "node-1");
    assert!(get_whoami(&server, ca.cert_pem(), Some(&stranger))
        .await
        .is_err());
    // A client certificate whose usage is server-only is no client identity.
    let server_only = ca.issue(&profile("node-2", Usage::Server)).unwrap();
    assert!(get_whoami(&server, ca.cert_pem(), Some(&server_only))
        .await
        .is_err());
}

#[tokio::test]
async fn a_reloaded_config_should_serve_new_connections_and_shutdown_should_end_serve() {
    let ca = Ca::generate("test").unwrap();
    let next = Ca::generate("next").unwrap();
    let first = server_cert(&ca);
    let mut server =
        start(server_config(&first.cert_pem, &first.key_pem, ClientAuth::None).unwrap()).await;
    assert!(get_whoami(&server, ca.cert_pem(), None).await.is_ok());
    let second = server_cert(&next);
    server
        .tls
        .set(server_config(&second.cert_pem, &second.key_pem, ClientAuth::None).unwrap());
    assert!(get_whoami(&server, ca.cert_pem(), None).await.is_err());
    assert!(get_whoami(&server, next.cert_pem(), None).await.is_ok());
    server.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), &mut server.task)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
}

#[test]
fn a_loaded_ca_should_sign_like_the_generated_one_and_refuse_a_foreign_key() {
    let ca = Ca::generate("test").unwrap();
    let loaded = Ca::load(ca.cert_pem(), ca.key_pem()).unwrap();
    assert_eq!(loaded.digest(), ca.digest());
    assert_eq!(ca.digest(), ca_digest(ca.cert_pem()).unwrap());
    assert_eq!(ca.digest().len(), 64);
    assert_eq!(inspect(ca.cert_pem()).unwrap().common_name, "shoal-ca test");
    let other = Ca::generate("other").unwrap();
    assert!(matches!(
        Ca::load(ca.cert_pem(), other.key_pem()),
        Err(PkiError::KeyMismatch)
    ));
    // sign_csr takes only the public key: the CN is the profile's, not the request's.
    let (csr_pem, _) = csr("i-am-the-controller").unwrap();
    let cert = loaded
        .sign_csr(&csr_pem, &profile("node-1", Usage::Both))
        .unwrap();
    let info = inspect(&cert).unwrap();
    assert_eq!(info.common_name, "node-1");
    let lifetime = info.not_after.duration_since(info.not_before).unwrap();
    assert_eq!(lifetime, Duration::from_secs(3600));
    assert_eq!(info.serial.len(), 32);
    assert!(loaded
        .sign_csr("not a csr", &profile("x", Usage::Both))
        .is_err());
}

#[tokio::test]
async fn a_revoking_client_should_refuse_server_certificates_made_until_the_revocation() {
    let ca = Ca::generate("test").unwrap();
    let agent = node_cert(&ca, "localhost");
    let server =
        start(server_config(&agent.cert_pem, &agent.key_pem, ClientAuth::None).unwrap()).await;
    let get = |revoked_at: Option<std::time::SystemTime>| {
        let tls = shoal_pki::client_config_revoking(ca.cert_pem(), None, revoked_at).unwrap();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .resolve("localhost", server.addr)
            .build()
            .unwrap();
        let url = format!("https://localhost:{}/whoami", server.addr.port());
        async move { client.get(url).send().await }
    };
    let now = std::time::SystemTime::now();
    assert!(get(Some(now)).await.is_err(), "made before the revocation");
    assert!(get(Some(now - Duration::from_secs(86_400))).await.is_ok());
    assert!(get(None).await.is_ok());
}
