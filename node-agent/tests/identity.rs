//! The node's identity against an in-process fake controller (`identity_support`): join
//! pins the CA by the token's digest before the secret leaves the node, renewal replaces
//! the certificate under a running exec/logs server, and that server lets only the
//! controller's certificate through. No root and no etcd needed.

mod identity_support;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use identity_support::{issue, recording_client, serial, FakeController, CONTROLLER};
use shoal_node_agent::identity::{
    join, IdentityError, JoinInfo, JoinRequest, NodeIdentity, PkiDir, Renewer,
};
use shoal_node_agent::server::{AgentServer, ServerConfig, ServerHandle, Transport};
use shoal_pki::{Ca, JoinToken, Reloadable};

const HOUR: Duration = Duration::from_secs(3600);

fn request(fake: &FakeController, token: JoinToken) -> JoinRequest {
    JoinRequest {
        token,
        controller: fake.url.clone(),
        name: "node-1".into(),
        address: "127.0.0.1".into(),
    }
}

/// An agent server with `tls`, hollow (exec answers 501 once past authentication).
async fn agent_server(tls: Arc<Reloadable>) -> (ServerHandle, std::net::SocketAddr) {
    let config = ServerConfig {
        node: "node-1".into(),
        listen: "127.0.0.1:0".into(),
    };
    let server = AgentServer::bind(&config, None, Transport::Tls(tls))
        .await
        .unwrap();
    let addr = server.local_addr();
    (server.spawn(), addr)
}

async fn exec(client: &reqwest::Client, addr: std::net::SocketAddr) -> reqwest::Result<u16> {
    let resp = client
        .post(format!("https://node-1:{}/v1/tasks/t1/exec", addr.port()))
        .json(&serde_json::json!({"argv": ["true"]}))
        .send()
        .await?;
    Ok(resp.status().as_u16())
}

#[tokio::test]
async fn join_with_the_right_digest_should_write_the_node_identity() {
    let fake = FakeController::start(HOUR).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = PkiDir::new(tmp.path().join("pki"));
    let id = join(&request(&fake, fake.token.clone()), &dir)
        .await
        .unwrap();

    assert_eq!(fake.seen.join.load(Ordering::SeqCst), 1);
    let info = shoal_pki::inspect(&id.cert_pem).unwrap();
    assert_eq!(info.common_name, "node-1");
    assert_eq!(id.ca_pem, fake.ca.cert_pem());
    assert_eq!(id.join.controller, fake.url);
    assert_eq!(id.join.etcd_endpoints, ["https://127.0.0.1:2379"]);
    assert_eq!(id.join.name, "node-1");
    // On disk, with the key private; what was written loads back.
    assert_eq!(dir.load().unwrap(), id);
    let mode = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.key_path()), 0o600);
    assert_eq!(mode(dir.path().to_path_buf()), 0o700);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join_path()).unwrap()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"controller": fake.url, "etcdEndpoints": ["https://127.0.0.1:2379"], "name": "node-1"})
    );
    // The key was made here: the certificate is for it (it serves TLS with it).
    id.server_config().unwrap();
}

#[tokio::test]
async fn join_with_a_wrong_digest_should_be_refused_before_the_secret_is_sent() {
    let fake = FakeController::start(HOUR).await;
    let other = Ca::generate("other").unwrap();
    let token = JoinToken {
        ca_digest: other.digest(),
        secret: fake.token.secret.clone(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = PkiDir::new(tmp.path().join("pki"));
    let err = join(&request(&fake, token), &dir).await.unwrap_err();

    assert!(matches!(err, IdentityError::CaMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "the controller's CA digest {} does not match the join token's {}, refusing to send the join secret",
            fake.ca.digest(),
            other.digest()
        )),
        "{msg}"
    );
    // The CA was fetched; nothing carrying the secret ever reached the controller.
    assert_eq!(fake.seen.ca.load(Ordering::SeqCst), 1);
    assert_eq!(fake.seen.join.load(Ordering::SeqCst), 0);
    assert_eq!(fake.seen.carrying_secret.load(Ordering::SeqCst), 0);
    assert!(!dir.is_joined());
}

#[tokio::test]
async fn join_with_a_wrong_secret_should_be_refused_by_the_controller_with_its_message() {
    let fake = FakeController::start(HOUR).await;
    let token = JoinToken {
        ca_digest: fake.token.ca_digest.clone(),
        secret: shoal_pki::new_join_secret(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let err = join(&request(&fake, token), &PkiDir::new(tmp.path()))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, IdentityError::Refused { code: 401, .. }),
        "{msg}"
    );
    assert!(msg.contains("the join token is not valid"), "{msg}");
}

#[tokio::test]
async fn renewal_should_replace_the_certificate_under_a_running_agent_server() {
    let fake = FakeController::start(HOUR).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = PkiDir::new(tmp.path());
    let id = join(&request(&fake, fake.token.clone()), &dir)
        .await
        .unwrap();
    let tls = Reloadable::new(id.server_config().unwrap());
    let (server, addr) = agent_server(tls.clone()).await;
    let controller = issue(&fake.ca, CONTROLLER);
    let (client, seen) = recording_client(fake.ca.cert_pem(), Some(&controller), "node-1", addr);
    assert_eq!(exec(&client, addr).await.unwrap(), 501);
    let old_serial = serial(seen.seen.lock().unwrap().as_ref().unwrap());
    assert_eq!(old_serial, shoal_pki::inspect(&id.cert_pem).unwrap().serial);

    let mut renewer = Renewer::new(dir.clone(), id.clone()).with_server(tls);
    renewer.renew_now().await.unwrap();

    // Asked over mutual TLS with the node's certificate.
    assert_eq!(*fake.seen.renewed_for.lock().unwrap(), ["node-1"]);
    // New certificate and key on disk, together.
    let renewed = dir.load().unwrap();
    assert_ne!(renewed.cert_pem, id.cert_pem);
    assert_ne!(renewed.key_pem, id.key_pem);
    assert_eq!(&renewed, renewer.identity());
    let new_serial = shoal_pki::inspect(&renewed.cert_pem).unwrap().serial;
    // The same server, still running, answers new connections with the new certificate.
    assert_eq!(exec(&client, addr).await.unwrap(), 501);
    assert_eq!(
        serial(seen.seen.lock().unwrap().as_ref().unwrap()),
        new_serial
    );
    // And the renewed identity renews again (its certificate is the one presented).
    renewer.renew_now().await.unwrap();
    assert_eq!(fake.seen.renew.load(Ordering::SeqCst), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn the_renewal_loop_should_renew_within_the_certificates_lifetime() {
    // Certificates of 4 s: renewed between 2 s and 3.2 s after issue, over and over.
    let fake = FakeController::start(Duration::from_secs(4)).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = PkiDir::new(tmp.path());
    let id = join(&request(&fake, fake.token.clone()), &dir)
        .await
        .unwrap();
    let tls = Reloadable::new(id.server_config().unwrap());
    let (server, addr) = agent_server(tls.clone()).await;
    let handle = Renewer::new(dir.clone(), id.clone())
        .with_server(tls)
        .spawn();
    let mut renewals = handle.renewals();
    let not_before = shoal_pki::inspect(&id.cert_pem).unwrap().not_before;
    tokio::time::timeout(Duration::from_secs(5), renewals.wait_for(|n| *n >= 1))
        .await
        .expect("renewed before the certificate expired")
        .unwrap();
    // Not before half the lifetime (the renewal's own request takes a little while).
    let at = std::time::SystemTime::now()
        .duration_since(not_before)
        .unwrap();
    assert!(
        at >= Duration::from_secs(2),
        "renewed too early: {at:?} after notBefore"
    );
    tokio::time::timeout(Duration::from_secs(5), renewals.wait_for(|n| *n >= 2))
        .await
        .expect("renewed the renewed certificate too")
        .unwrap();
    // Past the first certificate's end, the server still answers the controller.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let controller = issue(&fake.ca, CONTROLLER);
    let (client, _) = recording_client(fake.ca.cert_pem(), Some(&controller), "node-1", addr);
    assert_eq!(exec(&client, addr).await.unwrap(), 501);
    assert_ne!(dir.load().unwrap().cert_pem, id.cert_pem);
    handle.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn the_agent_server_should_serve_only_the_controllers_certificate() {
    let ca = Ca::generate("test").unwrap();
    let node = issue(&ca, "node-1");
    let identity = NodeIdentity {
        ca_pem: ca.cert_pem().into(),
        cert_pem: node.cert_pem,
        key_pem: node.key_pem,
        join: JoinInfo {
            controller: "https://127.0.0.1:7777".into(),
            etcd_endpoints: vec!["https://127.0.0.1:2379".into()],
            name: "node-1".into(),
        },
    };
    let (server, addr) = agent_server(Reloadable::new(identity.server_config().unwrap())).await;

    // The controller's certificate gets through (hollow node: 501).
    let controller = issue(&ca, CONTROLLER);
    let (client, _) = recording_client(ca.cert_pem(), Some(&controller), "node-1", addr);
    assert_eq!(exec(&client, addr).await.unwrap(), 501);

    // No certificate: the handshake fails.
    let (client, _) = recording_client(ca.cert_pem(), None, "node-1", addr);
    let e = exec(&client, addr)
        .await
        .expect_err("no client certificate");
    assert!(e.is_connect() || e.is_request(), "{e:?}");

    // A certificate named shoal-controller from another CA: the handshake fails.
    let other = Ca::generate("other").unwrap();
    let impostor = issue(&other, CONTROLLER);
    let (client, _) = recording_client(ca.cert_pem(), Some(&impostor), "node-1", addr);
    exec(&client, addr)
        .await
        .expect_err("a certificate of another CA");

    // A cluster certificate that is not the controller's (another node, the hollow
    // fleet): 403 with the Status body.
    for cn in ["node-2", "shoal-hollow-fleet"] {
        let peer = issue(&ca, cn);
        let (client, _) = recording_client(ca.cert_pem(), Some(&peer), "node-1", addr);
        let resp = client
            .get(format!("https://node-1:{}/v1/tasks/t1/logs", addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{cn}");
        let status: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(status["reason"], "Forbidden");
        assert!(status["message"].as_str().unwrap().contains(cn));
    }
    server.shutdown().await;
}
