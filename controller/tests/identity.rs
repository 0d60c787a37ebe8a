//! Issue 12 on the controller: the data dir `init` writes, node join and renewal over the
//! HTTPS API, join-token rotation, node revocation, and the exec hop's mutual TLS. A real
//! etcd (plaintext: etcd TLS and users are the store's and dev-up's business) and a secure
//! API server on 127.0.0.1:0 in the test process.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use axum::{Extension, Json, Router};
use clap::Parser;
use serde_json::{json, Value};
use shoal_api_types::{
    ExecResponse, Node, NodeSpec, NodeState, NodeStatus, Task, TaskSpec, TaskState, TaskStatus,
};
use shoal_controller::app::Cli;
use shoal_controller::identity::{self, DataDir, InitOptions};
use shoal_pki::{csr, inspect, Ca, ClientAuth, Issued, PeerIdentity, Profile, Usage};
use shoal_store::testing::TestEtcd;
use shoal_store::Store;
use tokio::sync::watch;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn init(dir: &DataDir) -> String {
    identity::init(
        dir,
        &InitOptions {
            cluster: "test".into(),
            api_sans: vec!["10.1.2.3".into(), "ctl.example".into()],
            force: false,
        },
    )
    .unwrap()
}

#[test]
fn init_should_write_the_data_dir_with_private_modes_and_keep_an_existing_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("shoal"));
    let token = init(&dir);
    assert!(token.starts_with("shoal_"));
    assert_eq!(mode(dir.root()), 0o700);
    for key in [
        "ca.key",
        "api.key",
        "controller.key",
        "admin.token",
        "secrets.key",
    ] {
        assert_eq!(mode(&dir.file(key)), 0o600, "{key}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.admin_token()).unwrap().trim(),
        token
    );
    let ca_pem = std::fs::read_to_string(dir.ca_cert()).unwrap();
    assert_eq!(inspect(&ca_pem).unwrap().common_name, "shoal-ca test");
    let loaded = identity::load(&dir).unwrap();
    assert_eq!(
        inspect(&loaded.controller.cert_pem).unwrap().common_name,
        "shoal-controller"
    );
    // The API certificate serves localhost and every --api-san.
    let api_der = rustls_pem(&loaded.api.cert_pem);
    let text = String::from_utf8_lossy(&api_der);
    assert!(text.contains("ctl.example") && text.contains("localhost"));

    // A second init keeps the CA unless forced.
    let err = identity::init(
        &dir,
        &InitOptions {
            cluster: "test".into(),
            api_sans: vec![],
            force: false,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.ca_cert()).unwrap(), ca_pem);
    identity::init(
        &dir,
        &InitOptions {
            cluster: "test".into(),
            api_sans: vec![],
            force: true,
        },
    )
    .unwrap();
    assert_ne!(std::fs::read_to_string(dir.ca_cert()).unwrap(), ca_pem);

    // etcd member certificates.
    let (crt, key) = identity::cert_etcd(&dir, "etcd-1", &["127.0.0.1".into()]).unwrap();
    assert_eq!(crt, dir.root().join("etcd/etcd-1.crt"));
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&dir.root().join("etcd")), 0o700);
    let info = inspect(&std::fs::read_to_string(&crt).unwrap()).unwrap();
    assert_eq!(info.common_name, "etcd-1");
}

fn rustls_pem(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// A secure API server over a test etcd and a fresh data dir.
struct Secure {
    _etcd: TestEtcd,
    _tmp: tempfile::TempDir,
    store: Store,
    ca: Ca,
    controller: Issued,
    port: u16,
    addr: std::net::SocketAddr,
    /// The admin token `init` wrote (the secure API wants a token on all but the public
    /// routes).
    admin: String,
    _shutdown: watch::Sender<bool>,
}

struct Answer {
    code: u16,
    body: Value,
}

impl Secure {
    async fn start() -> Secure {
        // A private etcd: etcd users and roles are etcd-wide, not per key root, so tests
        // joining and removing `node-1` must not share one etcd.
        let etcd = TestEtcd::private().await;
        let store = etcd.store().await;
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("shoal"));
        init(&dir);
        let admin = std::fs::read_to_string(dir.admin_token())
            .unwrap()
            .trim()
            .to_string();
        let cli = Cli::try_parse_from([
            "shoal-controller",
            "--data-dir",
            dir.root().to_str().unwrap(),
            "--advertise-etcd",
            "https://10.1.2.3:2379",
            "--node-cert-lifetime",
            "1h",
        ])
        .unwrap();
        let id = cli.config.identity().unwrap().unwrap();
        let ca = Ca::load(id.ca.cert_pem(), id.ca.key_pem()).unwrap();
        let controller = id.controller.clone();
        let secrets_key = cli.config.secrets_key().unwrap();
        let secure = cli.config.secure(id, secrets_key).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        tokio::spawn(shoal_controller::api::serve_tls(
            listener,
            store.clone(),
            secure,
            rx,
        ));
        Secure {
            _etcd: etcd,
            _tmp: tmp,
            store,
            ca,
            controller,
            port: addr.port(),
            addr,
            admin,
            _shutdown: tx,
        }
    }

    fn client(&self, identity: Option<&Issued>) -> reqwest::Client {
        let tls = shoal_pki::client_config(
            self.ca.cert_pem(),
            identity.map(|i| (i.cert_pem.as_str(), i.key_pem.as_str())),
        )
        .unwrap();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .resolve("localhost", self.addr)
            .build()
            .unwrap()
    }

    async fn call(
        &self,
        identity: Option<&Issued>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        let url = format!("https://localhost:{}{path}", self.port);
        let mut req = self
            .client(identity)
            .request(method, url)
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer { code, body }
    }

    async fn join_token(&self) -> String {
        let a = self
            .call(None, reqwest::Method::GET, "/v1/join-token", None)
            .await;
        assert_eq!(a.code, 200, "{}", a.body);
        a.body["token"].as_str().unwrap().to_string()
    }

    /// Joins `name` with `token`: the answer and the node's key.
    async fn join(&self, token: &str, name: &str) -> (Answer, String) {
        let (csr_pem, key_pem) = csr(name).unwrap();
        let a = self
            .call(
                None,
                reqwest::Method::POST,
                "/v1/join",
                Some(json!({"token": token, "name": name, "address": "10.0.0.7", "csr": csr_pem})),
            )
            .await;
        (a, key_pem)
    }

    async fn joined(&self, name: &str) -> Issued {
        let token = self.join_token().await;
        let (a, key_pem) = self.join(&token, name).await;
        assert_eq!(a.code, 200, "{}", a.body);
        Issued {
            cert_pem: a.body["certificate"].as_str().unwrap().to_string(),
            key_pem,
        }
    }

    async fn renew(&self, identity: Option<&Issued>, name: &str) -> Answer {
        let (csr_pem, _) = csr(name).unwrap();
        self.call(
            identity,
            reqwest::Method::POST,
            "/v1/renew",
            Some(json!({"csr": csr_pem})),
        )
        .await
    }

    async fn node(&self, name: &str, state: NodeState, endpoint: &str) {
        let mut n = Node::new(name, NodeSpec::default());
        n.status = NodeStatus {
            state,
            address: "127.0.0.1".into(),
            agent_endpoint: endpoint.into(),
            runtime: "containerd".into(),
            ..Default::default()
        };
        self.store.create(&n).await.unwrap();
    }
}

#[tokio::test]
async fn join_should_admit_the_current_secret_of_this_cluster_only() {
    let s = Secure::start().await;
    let token = s.join_token().await;
    assert!(token.starts_with(&format!("SWMTKN-1-{}-", s.ca.digest())));
    // The CA is public.
    let a = s
        .call(None, reqwest::Method::GET, "/v1/join/ca", None)
        .await;
    assert_eq!(a.code, 200);
    assert_eq!(a.body.as_str().unwrap(), s.ca.cert_pem());

    let (a, _) = s.join(&token, "node-1").await;
    assert_eq!(a.code, 200, "{}", a.body);
    let info = inspect(a.body["certificate"].as_str().unwrap()).unwrap();
    assert_eq!(info.common_name, "node-1");
    assert_eq!(
        info.not_after.duration_since(info.not_before).unwrap(),
        Duration::from_secs(3600)
    );
    assert_eq!(a.body["ca"].as_str().unwrap(), s.ca.cert_pem());
    assert_eq!(a.body["etcdEndpoints"], json!(["https://10.1.2.3:2379"]));

    // A wrong secret, a token of another cluster, a malformed token: 401.
    let parsed: shoal_pki::JoinToken = token.parse().unwrap();
    let wrong = shoal_pki::JoinToken {
        ca_digest: parsed.ca_digest.clone(),
        secret: shoal_pki::new_join_secret(),
    };
    let other = shoal_pki::JoinToken {
        ca_digest: Ca::generate("other").unwrap().digest(),
        secret: parsed.secret.clone(),
    };
    for bad in [wrong.to_string(), other.to_string(), "SWMTKN-1-nope".into()] {
        let (a, _) = s.join(&bad, "node-2").await;
        assert_eq!(a.code, 401, "{bad}: {}", a.body);
        assert_eq!(a.body["reason"], "Unauthorized");
    }
    // A bad or reserved name: 400.
    for name in ["Node_2", "shoal-controller", "root"] {
        let (a, _) = s.join(&token, name).await;
        assert_eq!(a.code, 400, "{name}: {}", a.body);
    }
}

#[tokio::test]
async fn rotating_the_join_token_should_refuse_the_old_secret() {
    let s = Secure::start().await;
    let old = s.join_token().await;
    let a = s
        .call(None, reqwest::Method::POST, "/v1/join-token/rotate", None)
        .await;
    assert_eq!(a.code, 200, "{}", a.body);
    let new = a.body["token"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(s.join_token().await, new);
    let (a, _) = s.join(&old, "node-1").await;
    assert_eq!(a.code, 401, "{}", a.body);
    let (a, _) = s.join(&new, "node-1").await;
    assert_eq!(a.code, 200, "{}", a.body);
}

#[tokio::test]
async fn renew_should_accept_a_node_certificate_until_the_node_is_removed() {
    let s = Secure::start().await;
    let cert = s.joined("node-1").await;
    let a = s.renew(Some(&cert), "node-1").await;
    assert_eq!(a.code, 200, "{}", a.body);
    assert_eq!(
        inspect(a.body["certificate"].as_str().unwrap())
            .unwrap()
            .common_name,
        "node-1"
    );
    // No client certificate: 401; the controller's own certificate is no node's: 403.
    assert_eq!(s.renew(None, "node-1").await.code, 401);
    assert_eq!(s.renew(Some(&s.controller), "node-1").await.code, 403);

    // Removing the node revokes its certificates.
    s.node("node-1", NodeState::Down, "").await;
    let a = s
        .call(
            None,
            reqwest::Method::DELETE,
            "/apis/shoal/v1/nodes/node-1",
            None,
        )
        .await;
    assert_eq!(a.code, 200, "{}", a.body);
    let a = s.renew(Some(&cert), "node-1").await;
    assert_eq!(a.code, 403, "{}", a.body);
    assert!(a.body["message"].as_str().unwrap().contains("revoked"));

    // Joining again (a certificate made after the removal) works.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = s.joined("node-1").await;
    assert_eq!(s.renew(Some(&again), "node-1").await.code, 200);
}

#[tokio::test]
async fn removing_a_ready_node_should_need_force() {
    let s = Secure::start().await;
    s.node("node-1", NodeState::Ready, "").await;
    let path = "/apis/shoal/v1/nodes/node-1";
    let a = s.call(None, reqwest::Method::DELETE, path, None).await;
    assert_eq!(a.code, 409, "{}", a.body);
    assert!(a.body["message"].as_str().unwrap().contains("force"));
    assert!(s
        .store
        .get_raw(&s.store.keys().revoked("node-1"))
        .await
        .unwrap()
        .is_none());
    let a = s
        .call(
            None,
            reqwest::Method::DELETE,
            &format!("{path}?force=true"),
            None,
        )
        .await;
    assert_eq!(a.code, 200, "{}", a.body);
    let revoked = s
        .store
        .get_raw(&s.store.keys().revoked("node-1"))
        .await
        .unwrap()
        .expect("revocation record");
    let v: Value = serde_json::from_slice(&revoked.value).unwrap();
    assert!(v["revokedAt"].is_string(), "{v}");
    assert!(s
        .store
        .get_named::<NodeSpec>("node-1")
        .await
        .unwrap()
        .is_none());
}

/// A fake agent serving exec over TLS with `cert`, requiring a client certificate from
/// `ca`; records the client's CN.
async fn fake_agent(ca: &Ca, cert: &Issued, seen: Arc<Mutex<Vec<String>>>) -> String {
    let tls = shoal_pki::server_config(
        &cert.cert_pem,
        &cert.key_pem,
        ClientAuth::Required {
            ca_pem: ca.cert_pem().into(),
        },
    )
    .unwrap();
    let router = Router::new().route(
        "/v1/tasks/{id}/exec",
        post(move |Extension(peer): Extension<PeerIdentity>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(peer.common_name);
                Json(ExecResponse {
                    exit_code: 0,
                    stdout: "hi\n".into(),
                    stderr: String::new(),
                    truncated: false,
                })
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    tokio::spawn(shoal_pki::serve(
        listener,
        shoal_pki::Reloadable::new(tls),
        router,
        std::future::pending(),
    ));
    endpoint
}

async fn running_task(store: &Store, id: &str, node: &str) {
    let mut t = Task::new(
        id,
        TaskSpec {
            service: "worker".into(),
            slot: Some(1),
            node: Some(node.into()),
            desired_state: TaskState::Running,
            image: "busybox".into(),
            ..Default::default()
        },
    );
    t.status = TaskStatus {
        state: TaskState::Running,
        ..Default::default()
    };
    store.create(&t).await.unwrap();
}

fn agent_cert(ca: &Ca, name: &str) -> Issued {
    ca.issue(&Profile {
        common_name: name.into(),
        dns_names: vec![name.into()],
        ips: vec!["127.0.0.1".parse().unwrap()],
        usage: Usage::Both,
        lifetime: Duration::from_secs(3600),
    })
    .unwrap()
}

#[tokio::test]
async fn the_exec_hop_should_verify_the_agent_certificate_for_the_node_name() {
    let s = Secure::start().await;
    let exec = json!({"argv": ["true"]});
    let seen = Arc::new(Mutex::new(Vec::new()));

    // node-1's agent presents node-1's certificate: exec works, as shoal-controller.
    let good = fake_agent(&s.ca, &agent_cert(&s.ca, "node-1"), seen.clone()).await;
    s.node("node-1", NodeState::Ready, &good).await;
    running_task(&s.store, "aaaa1111", "node-1").await;
    let a = s
        .call(
            None,
            reqwest::Method::POST,
            "/apis/shoal/v1/tasks/aaaa1111/exec",
            Some(exec.clone()),
        )
        .await;
    assert_eq!(a.code, 200, "{}", a.body);
    assert_eq!(a.body["stdout"], "hi\n");
    assert_eq!(*seen.lock().unwrap(), vec!["shoal-controller".to_string()]);

    // node-2 publishes an endpoint whose agent holds node-3's certificate: refused.
    let imposter = fake_agent(&s.ca, &agent_cert(&s.ca, "node-3"), seen.clone()).await;
    s.node("node-2", NodeState::Ready, &imposter).await;
    running_task(&s.store, "bbbb2222", "node-2").await;
    let a = s
        .call(
            None,
            reqwest::Method::POST,
            "/apis/shoal/v1/tasks/bbbb2222/exec",
            Some(exec.clone()),
        )
        .await;
    assert_eq!(a.code, 502, "{}", a.body);
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("cannot reach the agent of node node-2"),
        "{}",
        a.body
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the imposter was never asked"
    );

    // Once node-1 is revoked, its certificate is refused too.
    s.store
        .put_raw(
            &s.store.keys().revoked("node-1"),
            serde_json::to_vec(&json!({"revokedAt": chrono::Utc::now()})).unwrap(),
        )
        .await
        .unwrap();
    let a = s
        .call(
            None,
            reqwest::Method::POST,
            "/apis/shoal/v1/tasks/aaaa1111/exec",
            Some(exec),
        )
        .await;
    assert_eq!(a.code, 502, "{}", a.body);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn the_secure_api_should_want_a_token_but_let_nodes_join_without_one() {
    let s = Secure::start().await;
    let anonymous = s.client(None);
    let url = |p: &str| format!("https://localhost:{}{p}", s.port);
    let resp = anonymous
        .get(url("/apis/shoal/v1/nodes"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = anonymous.get(url("/v1/join-token")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401, "the join token is the admin's");
    let resp = anonymous.get(url("/v1/join/ca")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "the CA is public");
    assert_eq!(resp.text().await.unwrap().trim(), s.ca.cert_pem().trim());
    let resp = anonymous.get(url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

/// GETs a task's payloads with `identity` as client certificate and no token.
async fn payloads(s: &Secure, identity: Option<&Issued>, task: &str) -> Answer {
    let url = format!("https://localhost:{}/v1/node/tasks/{task}/payloads", s.port);
    let resp = s.client(identity).get(url).send().await.unwrap();
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    Answer {
        code,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

#[tokio::test]
async fn payloads_should_be_delivered_only_to_the_node_the_task_is_on() {
    use base64::Engine;
    let s = Secure::start().await;
    let node1 = s.joined("node-1").await;
    let node2 = s.joined("node-2").await;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let created = s
        .call(
            None,
            reqwest::Method::POST,
            "/apis/shoal/v1/secrets",
            Some(
                json!({"apiVersion": "shoal/v1", "kind": "Secret", "metadata": {"name": "pw"},
                        "spec": {"data": b64(b"hunter2")}}),
            ),
        )
        .await;
    assert_eq!(created.code, 201, "{}", created.body);
    let mut t = Task::new(
        "t1",
        TaskSpec {
            service: "api".into(),
            node: Some("node-1".into()),
            desired_state: TaskState::Running,
            secrets: vec![shoal_api_types::SecretReference {
                source: "pw".into(),
                target: "pw".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    t = s.store.create(&t).await.unwrap();

    let mine = payloads(&s, Some(&node1), "t1").await;
    assert_eq!(mine.code, 200, "{}", mine.body);
    assert_eq!(mine.body["secrets"][0]["name"], "pw");
    assert_eq!(mine.body["secrets"][0]["data"], b64(b"hunter2"));
    let other = payloads(&s, Some(&node2), "t1").await;
    assert_eq!(other.code, 404, "{}", other.body);
    assert_eq!(payloads(&s, None, "t1").await.code, 401);
    let controller = payloads(&s, Some(&s.controller), "t1").await;
    assert_eq!(controller.code, 403, "{}", controller.body);
    // A task no longer wanted running gets nothing.
    t.spec.desired_state = TaskState::Shutdown;
    s.store.update(&t).await.unwrap();
    assert_eq!(payloads(&s, Some(&node1), "t1").await.code, 403);

    // The controller's key opens what is stored; another key does not.
    let key = shoal_controller::secrets_key::SecretsKey::load_or_create(
        &s._tmp.path().join("shoal").join("secrets.key"),
    )
    .unwrap();
    assert_eq!(
        shoal_controller::secrets_key::check_stored(&s.store, &key)
            .await
            .unwrap(),
        1
    );
    let wrong = shoal_controller::secrets_key::SecretsKey::from_bytes(&[0; 32]);
    let err = shoal_controller::secrets_key::check_stored(&s.store, &wrong)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot be decrypted"), "{err}");
}
