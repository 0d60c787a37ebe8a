//! The `shoal` binary and the security boundary: `token create|ls|rm` against the real API
//! with tokens on (`shoal_controller::api::build` with `Auth::Tokens`) over a real etcd;
//! 401/403 messages with their hints; the context file's token; `join-token` and
//! `node rm --force` against a small fake of their endpoints; HTTPS verified with `--ca`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, RawQuery};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use shoal_api_types::{Node, NodeSpec};
use shoal_controller::api::Auth;
use shoal_store::testing::TestEtcd;
use shoal_store::Store;

const ADMIN: &str = "shoal_cliadmintoken00000000000000000000000";

/// The API with tokens on, over a test etcd, and a scratch directory.
struct Secured {
    url: String,
    store: Store,
    dir: tempfile::TempDir,
    _etcd: TestEtcd,
}

impl Secured {
    async fn start() -> Secured {
        let etcd = TestEtcd::start().await;
        let store = etcd.store().await;
        let (_never, shutdown) = tokio::sync::watch::channel(false);
        let auth = Auth::Tokens {
            admin_token: Some(ADMIN.into()),
        };
        let app = shoal_controller::api::build(store.clone(), shutdown, auth)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _keep = _never;
            axum::serve(listener, app).await
        });
        Secured {
            url,
            store,
            dir: tempfile::tempdir().unwrap(),
            _etcd: etcd,
        }
    }

    /// Runs `shoal` with no context file and no SHOAL_* variables, plus `env`.
    async fn run(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        shoal(self.dir.path(), env, args).await
    }

    /// `shoal --server URL --token TOKEN args...`, expecting success; stdout.
    async fn ok_as(&self, token: &str, args: &[&str]) -> String {
        let mut full = vec!["--server", &self.url, "--token", token];
        full.extend_from_slice(args);
        let out = self.run(&[], &full).await;
        assert!(
            out.status.success(),
            "shoal {args:?} failed: {}\n{}",
            text(&out.stderr),
            text(&out.stdout)
        );
        text(&out.stdout)
    }

    /// `shoal --server URL [--token TOKEN] args...`, expecting failure; stderr.
    async fn fails_as(&self, token: Option<&str>, args: &[&str]) -> String {
        let mut full = vec!["--server", self.url.as_str()];
        if let Some(t) = token {
            full.extend(["--token", t]);
        }
        full.extend_from_slice(args);
        let out = self.run(&[], &full).await;
        assert!(
            !out.status.success(),
            "shoal {args:?} should have failed; stdout:\n{}",
            text(&out.stdout)
        );
        text(&out.stderr)
    }
}

async fn shoal(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"));
    cmd.args(args)
        .env_remove("SHOAL_SERVER")
        .env_remove("SHOAL_TOKEN")
        .env_remove("SHOAL_CA")
        .env("SHOAL_CONFIG", home.join("no-context.json"))
        .env("HOME", home);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

#[tokio::test(flavor = "multi_thread")]
async fn token_create_prints_the_token_once_and_it_works() {
    let s = Secured::start().await;
    let out = s
        .run(
            &[],
            &[
                "--server",
                &s.url,
                "--token",
                ADMIN,
                "token",
                "create",
                "--role",
                "read-only",
                "viewer",
            ],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    assert!(
        token.starts_with("shoal_"),
        "stdout is the token alone: {token:?}"
    );
    assert!(
        text(&out.stderr).contains("shown only this once"),
        "{}",
        text(&out.stderr)
    );

    // It reads…
    assert_eq!(s.ok_as(&token, &["network", "ls", "-q"]).await, "");
    // …and may not write: the server's message and a hint naming the token's source.
    let err = s
        .fails_as(Some(&token), &["network", "create", "appnet"])
        .await;
    assert!(err.contains("read-only"), "{err}");
    assert!(
        err.contains("hint: the token from --token may not do this"),
        "{err}"
    );

    // JSON output carries the whole answer.
    let json: Value = serde_json::from_str(
        &s.ok_as(
            ADMIN,
            &["token", "create", "--role", "admin", "ops", "-o", "json"],
        )
        .await,
    )
    .unwrap();
    assert_eq!(json["name"], "ops");
    assert_eq!(json["role"], "admin");
    assert!(
        json["token"].as_str().unwrap().starts_with("shoal_"),
        "{json}"
    );

    // A taken name is refused.
    let err = s
        .fails_as(Some(ADMIN), &["token", "create", "--role", "admin", "ops"])
        .await;
    assert!(err.contains("token \"ops\" already exists"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_ls_lists_names_roles_and_ages_and_rm_revokes() {
    let s = Secured::start().await;
    s.ok_as(ADMIN, &["token", "create", "--role", "read-only", "viewer"])
        .await;
    let table = s.ok_as(ADMIN, &["token", "ls"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("ROLE") && lines[0].ends_with("CREATED"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("admin") && lines[1].contains(" admin "),
        "{table}"
    );
    assert!(
        lines[2].starts_with("viewer") && lines[2].contains("read-only"),
        "{table}"
    );
    assert!(lines[2].ends_with("s ago"), "{table}");
    assert_eq!(
        s.ok_as(ADMIN, &["token", "ls", "-q"]).await,
        "admin\nviewer\n"
    );
    let yaml = s.ok_as(ADMIN, &["token", "ls", "-o", "yaml"]).await;
    assert!(yaml.contains("role: read-only"), "{yaml}");
    assert!(!yaml.contains("sha256"), "{yaml}");

    assert_eq!(s.ok_as(ADMIN, &["token", "rm", "viewer"]).await, "viewer\n");
    assert_eq!(s.ok_as(ADMIN, &["token", "ls", "-q"]).await, "admin\n");
    let err = s
        .fails_as(Some(ADMIN), &["token", "rm", "viewer", "nope"])
        .await;
    assert!(err.contains("token \"viewer\" not found"), "{err}");
    assert!(err.contains("token \"nope\" not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_explain_which_token_was_used() {
    let s = Secured::start().await;
    let err = s.fails_as(None, &["network", "ls"]).await;
    assert!(
        err.contains("no bearer token"),
        "the server's message: {err}"
    );
    assert!(err.contains("hint: no token was sent"), "{err}");
    assert!(err.contains("$SHOAL_TOKEN"), "{err}");

    let out = s
        .run(
            &[("SHOAL_TOKEN", "shoal_revokedorwrong000000000000000000000")],
            &["--server", &s.url, "network", "ls"],
        )
        .await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("unknown or was revoked"), "{err}");
    assert!(
        err.contains("hint: the token from $SHOAL_TOKEN was refused"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_context_file_supplies_server_and_token() {
    let s = Secured::start().await;
    let ctx = s.dir.path().join("ctx.json");
    std::fs::write(&ctx, json!({"server": s.url, "token": ADMIN}).to_string()).unwrap();
    let env = [("SHOAL_CONFIG", ctx.to_str().unwrap())];
    let out = s.run(&env, &["token", "ls", "-q"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "admin\n");

    // Revoked: the hint names the context file.
    s.store
        .delete_raw(&s.store.keys().api_token("admin"))
        .await
        .unwrap();
    shoal_testkit::eventually(
        "the revoked context token to be refused",
        Duration::from_secs(5),
        || async {
            let out = s.run(&env, &["token", "ls"]).await;
            let err = text(&out.stderr);
            (!out.status.success() && err.contains("the token from the context file"))
                .then_some(err)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_rm_removes_a_stopped_node() {
    let s = Secured::start().await;
    s.store
        .create(&Node::new("node-9", NodeSpec::default()))
        .await
        .unwrap();
    assert_eq!(s.ok_as(ADMIN, &["node", "rm", "node-9"]).await, "node-9\n");
    assert!(s
        .store
        .get_named::<NodeSpec>("node-9")
        .await
        .unwrap()
        .is_none());
    let err = s.fails_as(Some(ADMIN), &["node", "rm", "node-9"]).await;
    assert!(err.contains("not found"), "{err}");
}

/// What the fake join-token / node endpoints saw.
#[derive(Default)]
struct Seen {
    deletes: Vec<(String, Option<String>)>,
    rotations: usize,
}

/// A fake of the endpoints other branches serve (join tokens, `node rm --force`), checking
/// the admin token.
async fn fake_api(seen: Arc<Mutex<Seen>>) -> String {
    fn authorised(h: &HeaderMap) -> Result<(), (StatusCode, Json<Value>)> {
        if h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {ADMIN}"))
        {
            return Ok(());
        }
        Err((
            StatusCode::UNAUTHORIZED,
            Json(json!({"code": 401, "reason": "Unauthorized", "message": "no"})),
        ))
    }
    let s1 = seen.clone();
    let s2 = seen.clone();
    let app = Router::new()
        .route(
            "/v1/join-token",
            get(|h: HeaderMap| async move {
                authorised(&h)?;
                Ok::<_, (StatusCode, Json<Value>)>(Json(json!({"token": "SWMTKN-1-abc-old"})))
            }),
        )
        .route(
            "/v1/join-token/rotate",
            post(move |h: HeaderMap| async move {
                authorised(&h)?;
                s1.lock().unwrap().rotations += 1;
                Ok::<_, (StatusCode, Json<Value>)>(Json(json!({"token": "SWMTKN-1-abc-new"})))
            }),
        )
        .route(
            "/apis/shoal/v1/nodes/{name}",
            delete(
                move |h: HeaderMap, UrlPath(name): UrlPath<String>, RawQuery(q): RawQuery| async move {
                    authorised(&h)?;
                    s2.lock().unwrap().deletes.push((name.clone(), q));
                    Ok::<_, (StatusCode, Json<Value>)>(Json(json!({"metadata": {"name": name}})))
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn join_token_prints_the_join_command_and_rotates() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let url = fake_api(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let env = [("SHOAL_TOKEN", ADMIN)];
    let out = shoal(dir.path(), &env, &["--server", &url, "join-token"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("SWMTKN-1-abc-old\n"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "shoal-agent join --token SWMTKN-1-abc-old --controller {url} --name NODE"
        )),
        "{stdout}"
    );
    let out = shoal(
        dir.path(),
        &env,
        &["--server", &url, "join-token", "--rotate", "-q"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "SWMTKN-1-abc-new\n");
    assert_eq!(seen.lock().unwrap().rotations, 1);

    let out = shoal(
        dir.path(),
        &env,
        &["--server", &url, "node", "rm", "--force", "node-2"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = shoal(
        dir.path(),
        &env,
        &["--server", &url, "node", "rm", "node-3"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        seen.lock().unwrap().deletes,
        [
            ("node-2".to_string(), Some("force=true".to_string())),
            ("node-3".to_string(), None)
        ]
    );
}

/// An axum listener that does the TLS handshake on accept (one at a time: tests only).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A client that does not trust us fails the handshake: wait for the next one.
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The real API with tokens on, over HTTPS with the test certificate; its https:// URL.
async fn https_api(store: Store) -> String {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(data("server.crt"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(data("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let (_never, shutdown) = tokio::sync::watch::channel(false);
    let auth = Auth::Tokens {
        admin_token: Some(ADMIN.into()),
    };
    let app = shoal_controller::api::build(store, shutdown, auth)
        .await
        .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    };
    tokio::spawn(async move {
        let _keep = _never;
        axum::serve(listener, app).await
    });
    format!("https://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread")]
async fn https_is_verified_against_the_given_ca_only() {
    let etcd = TestEtcd::start().await;
    let url = https_api(etcd.store().await).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = data("test-ca.crt");
    let ca = ca.to_str().unwrap();

    // The right CA, by flag or variable, and the token: served.
    let out = shoal(
        dir.path(),
        &[("SHOAL_TOKEN", ADMIN)],
        &["--server", &url, "--ca", ca, "token", "ls", "-q"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "admin\n");
    let out = shoal(
        dir.path(),
        &[("SHOAL_TOKEN", ADMIN), ("SHOAL_CA", ca)],
        &["--server", &url, "token", "ls", "-q"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The context file's CA, relative to the file.
    std::fs::copy(data("test-ca.crt"), dir.path().join("ca.crt")).unwrap();
    let ctx = dir.path().join("ctx.json");
    std::fs::write(
        &ctx,
        json!({"server": url, "certificateAuthority": "ca.crt", "token": ADMIN}).to_string(),
    )
    .unwrap();
    let out = shoal(
        dir.path(),
        &[("SHOAL_CONFIG", ctx.to_str().unwrap())],
        &["token", "ls", "-q"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // No CA, or another cluster's: refused before any request, with what to do.
    for args in [
        vec!["--server", url.as_str(), "token", "ls"],
        vec![
            "--server",
            url.as_str(),
            "--ca",
            data("other-ca.crt").to_str().unwrap(),
            "token",
            "ls",
        ],
    ] {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = shoal(dir.path(), &[("SHOAL_TOKEN", ADMIN)], &args).await;
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains("cannot verify the Shoal API"), "{err}");
        assert!(err.contains("--ca"), "{err}");
    }
}
