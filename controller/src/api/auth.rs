//! Bearer-token authentication and roles: the middleware in front of every route but the
//! [`PUBLIC_PATHS`], the in-memory token table it reads, and the import of the admin token
//! at start.
//!
//! Invariants:
//! - Tokens are never stored: etcd holds `<root>/private/tokens/<name>` = `{name, role,
//!   sha256, createdAt}` and a presented token is hashed and compared with every stored
//!   hash in constant time (`shoal_pki::sha256_hex`, `shoal_pki::constant_time_eq`).
//! - No request waits for etcd: the table is fed by one [`Watcher`] on the tokens prefix
//!   (list, then watch; a relist swaps it whole), so a deleted (revoked) token is refused
//!   as soon as its delete event arrives. Until the first list completes the table is
//!   unknown, never empty: requests wait for it a little, then get 503.
//! - No, an unknown or a revoked token → 401 `Unauthorized`; a token whose role does not
//!   allow the request → 403 `Forbidden` naming the role. Both are `Status` bodies.
//! - `read-only` may `GET`/`HEAD` objects, lists and watches (`/apis/shoal/v1/...`),
//!   `/openapi.json`, `/metrics` and `/v1/whoami`: an allowlist, so any other route (logs, exec, tokens,
//!   join tokens, and routes added later) needs `admin`.
//!
//! With [`Auth::Off`] (`--insecure`, and in-process tests that predate tokens) no layer is
//! installed and every request is served as before.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use shoal_api_types::{Role, Status, StoredToken};
use shoal_pki::{constant_time_eq, sha256_hex};
use shoal_store::{RawEvent, RawKv, Store, StoreError, Watcher, WatcherEvent};
use tokio::sync::watch;

use super::error::status_response;

/// The routes anyone may call without a token (exact paths): health, and what a node
/// needs before it has credentials (the CA, joining, renewing with its certificate).
pub const PUBLIC_PATHS: &[&str] = &[
    "/healthz",
    "/readyz",
    "/v1/join/ca",
    "/v1/join",
    "/v1/renew",
];

/// The routes below this prefix are public too: node-facing routes that authenticate the
/// caller by its client certificate themselves (`/v1/node/tasks/<id>/payloads`).
pub const PUBLIC_PREFIX: &str = "/v1/node/";

/// Whether `path` is public ([`PUBLIC_PATHS`], below [`PUBLIC_PREFIX`], or one of the web
/// view's static files, [`super::web::is_ui_path`]).
pub fn is_public(path: &str) -> bool {
    PUBLIC_PATHS.contains(&path) || path.starts_with(PUBLIC_PREFIX) || super::web::is_ui_path(path)
}

/// How long a request waits for the first list of tokens before it is answered 503.
pub const TABLE_WAIT: Duration = Duration::from_secs(5);

/// Whether and how the API authenticates requests.
#[derive(Clone, Default)]
pub enum Auth {
    /// No authentication: everyone is admin (`--insecure`; tests that predate tokens).
    #[default]
    Off,
    /// Bearer tokens with roles.
    Tokens {
        /// Imported as the token named `admin` at start when no token of that name exists
        /// (the contents of `<data-dir>/admin.token`).
        admin_token: Option<String>,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Off => f.write_str("Off"),
            Auth::Tokens { admin_token } => f
                .debug_struct("Tokens")
                .field("admin_token", &admin_token.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

/// Who made a request: put into the request's extensions by [`authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name.
    pub name: String,
    /// The token's role.
    pub role: Role,
}

/// Known tokens by key: what [`authenticate`] compares against.
#[derive(Debug, Default, Clone)]
pub struct TokenTable {
    by_key: BTreeMap<String, StoredToken>,
    /// Every change up to this etcd revision is in the table.
    revision: i64,
}

impl TokenTable {
    /// Every change up to this etcd revision is in the table.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The token whose stored hash equals the sha256 of `presented`, compared in constant
    /// time against every entry (no early exit, so timing tells nothing about near misses).
    pub fn find(&self, presented: &str) -> Option<Principal> {
        let hash = sha256_hex(presented.as_bytes());
        let mut found = None;
        for t in self.by_key.values() {
            if constant_time_eq(hash.as_bytes(), t.sha256.as_bytes()) {
                found = Some(Principal {
                    name: t.name.clone(),
                    role: t.role,
                });
            }
        }
        found
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn put(&mut self, kv: &RawKv) {
        match serde_json::from_slice::<StoredToken>(&kv.value) {
            Ok(t) => {
                self.by_key.insert(kv.key.clone(), t);
            }
            Err(e) => {
                // A record we cannot read grants nothing.
                self.by_key.remove(&kv.key);
                tracing::warn!(key = %kv.key, error = %e, "ignoring an unreadable token record");
            }
        }
    }
}

/// The token table as the middleware sees it: `None` until the first list completed.
pub type Tokens = watch::Receiver<Option<Arc<TokenTable>>>;

/// Starts keeping a token table equal to `<root>/private/tokens/`. The feeding task ends
/// when every receiver is gone (the router was dropped) or `shutdown` turns true.
pub fn spawn_token_table(store: Store, mut shutdown: watch::Receiver<bool>) -> Tokens {
    let (tx, rx) = watch::channel(None);
    let prefix = store.keys().api_tokens();
    tokio::spawn(async move {
        let watcher = Watcher::new(store, prefix);
        tokio::select! {
            _ = feed(watcher, &tx) => {}
            _ = tx.closed() => {}
            _ = shutdown.wait_for(|down| *down) => {}
        }
    });
    rx
}

async fn feed(mut watcher: Watcher, tx: &watch::Sender<Option<Arc<TokenTable>>>) {
    let mut table = TokenTable::default();
    loop {
        match watcher.next().await {
            WatcherEvent::Restarted { items, revision } => {
                table = TokenTable::default();
                items.iter().for_each(|kv| table.put(kv));
                table.revision = revision;
                tracing::debug!(revision, tokens = table.len(), "API tokens listed");
            }
            WatcherEvent::Events { events, revision } => {
                table.revision = table.revision.max(revision);
                if events.is_empty() {
                    continue;
                }
                for ev in &events {
                    match ev {
                        RawEvent::Put(kv) => table.put(kv),
                        RawEvent::Delete { key, .. } => {
                            table.by_key.remove(key);
                        }
                    }
                }
            }
        }
        tx.send_replace(Some(Arc::new(table.clone())));
    }
}

/// The middleware: public paths pass; everything else needs a known token whose role
/// allows the request.
pub async fn authenticate(State(tokens): State<Tokens>, req: Request, next: Next) -> Response {
    if is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    match check(
        tokens,
        Request::from_parts(parts, axum::body::Body::empty()),
    )
    .await
    {
        Ok(mut req) => {
            *req.body_mut() = body;
            next.run(req).await
        }
        Err(refusal) => {
            // Read (a bounded part of) the body before refusing: answering an HTTP/2
            // request whose body is still coming resets its stream, and clients (curl)
            // then report a framing error instead of the 401/403.
            let _ = axum::body::to_bytes(body, REFUSED_BODY_LIMIT).await;
            refusal
        }
    }
}

/// How much of a refused request's body is read (and dropped) before answering.
const REFUSED_BODY_LIMIT: usize = 1 << 20;

/// The request with its caller's identity, or the refusal to answer.
async fn check(tokens: Tokens, mut req: Request) -> Result<Request, Response> {
    let presented = match bearer(req.headers().get(AUTHORIZATION)) {
        Ok(t) => t,
        Err(msg) => return Err(unauthorized(msg)),
    };
    let table = match current(tokens).await {
        Some(t) => t,
        None => {
            return Err(status_response(Status::unavailable(
                "the API tokens are not loaded yet (is etcd reachable?); retry",
            )))
        }
    };
    let Some(who) = table.find(&presented) else {
        return Err(unauthorized(
            "the bearer token is not valid: it is unknown or was revoked".to_string(),
        ));
    };
    if !allows(who.role, req.method(), req.uri().path()) {
        tracing::debug!(token = %who.name, method = %req.method(), path = req.uri().path(), "forbidden");
        return Err(status_response(Status::new(
            403,
            "Forbidden",
            format!(
                "token {:?} has role {}, which may not {} {}: {}",
                who.name,
                who.role,
                req.method(),
                req.uri().path(),
                match who.role {
                    Role::ReadOnly =>
                        "read-only tokens may only read objects, lists and watches; \
                         changes, exec and logs need an admin token",
                    Role::Admin => "no role may",
                }
            ),
        )));
    }
    req.extensions_mut().insert(who);
    Ok(req)
}

/// Waits (up to [`TABLE_WAIT`]) until the table reflects etcd `revision`: the token
/// endpoints answer only once their change is in force on this controller, so a script
/// can use a token as soon as `shoal token create` printed it, and a revoked token is
/// refused here by the time `shoal token rm` returns. Returns whether it got there.
pub async fn wait_for_revision(tokens: &Tokens, revision: i64) -> bool {
    let mut rx = tokens.clone();
    let caught_up = async move {
        rx.wait_for(|t| t.as_ref().is_some_and(|t| t.revision >= revision))
            .await
            .is_ok()
    };
    tokio::time::timeout(TABLE_WAIT, caught_up)
        .await
        .unwrap_or(false)
}

/// The table, waiting up to [`TABLE_WAIT`] for the first list.
async fn current(mut tokens: Tokens) -> Option<Arc<TokenTable>> {
    if let Some(t) = tokens.borrow().as_ref() {
        return Some(t.clone());
    }
    match tokio::time::timeout(TABLE_WAIT, tokens.wait_for(Option::is_some)).await {
        Ok(Ok(t)) => t.clone(),
        _ => None,
    }
}

/// The token of an `Authorization: Bearer <token>` header, or why there is none.
fn bearer(header: Option<&HeaderValue>) -> Result<String, String> {
    let Some(value) = header else {
        return Err(
            "no bearer token: send the header Authorization: Bearer <token> \
                    (an admin makes tokens with `shoal token create`)"
                .to_string(),
        );
    };
    let value = value.to_str().unwrap_or("").trim();
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim().to_string())
        }
        _ => Err("the Authorization header is not \"Bearer <token>\"".to_string()),
    }
}

fn unauthorized(message: String) -> Response {
    let mut resp = status_response(Status::new(401, "Unauthorized", message));
    resp.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// Whether `role` may call `method path`: admin everything; read-only GET/HEAD of the
/// object API (lists, objects, watches), the OpenAPI document, metrics and whoami, but no
/// logs.
pub fn allows(role: Role, method: &Method, path: &str) -> bool {
    match role {
        Role::Admin => true,
        Role::ReadOnly => {
            let reads = *method == Method::GET || *method == Method::HEAD;
            let readable = match path.strip_prefix("/apis/shoal/v1/") {
                // `<plural>/<name>/logs` and `.../exec` act on containers, not objects.
                Some(rest) => !matches!(
                    rest.split('/').collect::<Vec<_>>().as_slice(),
                    [_, _, "logs" | "exec", ..]
                ),
                None => path == "/openapi.json" || path == "/metrics" || path == "/v1/whoami",
            };
            reads && readable
        }
    }
}

/// Stores `token` as the token named `admin` unless a token of that name exists (then the
/// stored one wins: `shoal token rm admin` followed by a restart imports the file again).
/// Returns whether it was imported.
pub async fn import_admin_token(store: &Store, token: &str) -> Result<bool, StoreError> {
    let key = store.keys().api_token("admin");
    let record = StoredToken {
        name: "admin".into(),
        role: Role::Admin,
        sha256: sha256_hex(token.trim().as_bytes()),
        created_at: chrono::Utc::now(),
    };
    let value = serde_json::to_vec(&record).expect("token records serialise");
    let stored = store.get_or_create_raw(&key, value.clone()).await?;
    let imported = stored == value;
    if imported {
        tracing::info!("imported the admin token");
    } else if serde_json::from_slice::<StoredToken>(&stored)
        .is_ok_and(|t| !constant_time_eq(t.sha256.as_bytes(), record.sha256.as_bytes()))
    {
        tracing::warn!("a token named admin exists already and differs from the admin token file; keeping the stored one");
    }
    Ok(imported)
}

/// Reads `<data-dir>/admin.token` (one line); `Ok(None)` when the file does not exist.
pub fn read_admin_token(data_dir: &std::path::Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(data_dir.join("admin.token")) {
        Ok(t) if t.trim().is_empty() => Ok(None),
        Ok(t) => Ok(Some(t.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_reads_objects_but_not_logs_exec_or_tokens() {
        let ro = Role::ReadOnly;
        for (method, path) in [
            (Method::GET, "/apis/shoal/v1/networks"),
            (Method::GET, "/apis/shoal/v1/services/api"),
            (Method::HEAD, "/apis/shoal/v1/tasks"),
            (Method::GET, "/openapi.json"),
            (Method::GET, "/metrics"),
            (Method::GET, "/v1/whoami"),
            (Method::GET, "/apis/shoal/v1/networks/logs"),
        ] {
            assert!(allows(ro, &method, path), "{method} {path}");
        }
        for (method, path) in [
            (Method::POST, "/apis/shoal/v1/networks"),
            (Method::PUT, "/apis/shoal/v1/services/api"),
            (Method::DELETE, "/apis/shoal/v1/nodes/n1"),
            (Method::POST, "/apis/shoal/v1/apply"),
            (Method::POST, "/apis/shoal/v1/services/api/rollback"),
            (Method::POST, "/apis/shoal/v1/tasks/api.1/exec"),
            (Method::GET, "/apis/shoal/v1/tasks/api.1/logs"),
            (Method::GET, "/apis/shoal/v1/services/api/logs"),
            (Method::GET, "/v1/tokens"),
            (Method::GET, "/v1/join-token"),
            (Method::POST, "/v1/join-token/rotate"),
        ] {
            assert!(!allows(ro, &method, path), "{method} {path}");
            assert!(allows(Role::Admin, &method, path), "{method} {path}");
        }
    }

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(bearer(Some(&h("Bearer abc"))), Ok("abc".to_string()));
        assert_eq!(bearer(Some(&h("bearer  abc "))), Ok("abc".to_string()));
        assert!(bearer(None).unwrap_err().contains("no bearer token"));
        assert!(bearer(Some(&h("Basic YTpi"))).is_err());
        assert!(bearer(Some(&h("Bearer "))).is_err());
    }

    #[test]
    fn the_table_finds_tokens_by_hash_only() {
        let mut t = TokenTable::default();
        let token = shoal_pki::new_api_token();
        let rec = StoredToken {
            name: "ci".into(),
            role: Role::ReadOnly,
            sha256: sha256_hex(token.as_bytes()),
            created_at: chrono::Utc::now(),
        };
        t.put(&RawKv {
            key: "/r/private/tokens/ci".into(),
            value: serde_json::to_vec(&rec).unwrap(),
            mod_revision: 2,
            create_revision: 2,
            lease: 0,
        });
        assert_eq!(
            t.find(&token),
            Some(Principal {
                name: "ci".into(),
                role: Role::ReadOnly
            })
        );
        assert_eq!(t.find(&rec.sha256), None, "the hash is not a token");
        assert_eq!(t.find("shoal_wrong"), None);
        t.put(&RawKv {
            key: "/r/private/tokens/ci".into(),
            value: b"garbage".to_vec(),
            mod_revision: 3,
            create_revision: 2,
            lease: 0,
        });
        assert_eq!(t.find(&token), None, "an unreadable record grants nothing");
    }
}
