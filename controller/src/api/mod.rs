//! The HTTP API (axum): REST over Shoal's objects in etcd, apply, watch, health, metrics,
//! the OpenAPI document and API tokens. The API keeps no state of its own beyond caches fed
//! by etcd watches: every request reads or writes etcd through the [`Store`], so any number
//! of controller replicas can serve it.
//!
//! Routes (all errors are [`Status`](shoal_api_types::Status) JSON with the HTTP code):
//!
//! ```text
//! GET    /apis/shoal/v1/{networks,services,secrets,configs,nodes,tasks,endpoints}
//!                                                                   list; ?watch=true streams
//! GET    /apis/shoal/v1/<plural>/<name>                             one object
//! POST   /apis/shoal/v1/{networks,services,secrets,configs}         create (201)
//! PUT    /apis/shoal/v1/{networks,services,secrets,configs,nodes}/<name>
//!                                                                   replace at resourceVersion
//! DELETE /apis/shoal/v1/{networks,services,secrets,configs,nodes}/<name>
//!                                                                   delete (200, the object)
//! POST   /apis/shoal/v1/apply[?dryRun=true][&prune=key=value]       multi-document apply
//! POST   /apis/shoal/v1/services/<name>/rollback[?dryRun=true]      back to the previous spec
//! POST   /apis/shoal/v1/tasks/<name>/exec                           run a command in a task
//! GET    /apis/shoal/v1/volumes[?node=N]                            named volumes (agents)
//! DELETE /apis/shoal/v1/nodes/<node>/volumes/<name>                 remove one (its agent)
//! GET    /apis/shoal/v1/system/check                               audit etcd and every node
//!                                                                   ([`check`], the agents)
//! GET    /apis/shoal/v1/{tasks,services}/<name>/logs[?follow&tail=N] container output
//! POST   /v1/tokens   GET /v1/tokens   DELETE /v1/tokens/<name>     API tokens (admin)
//! GET    /healthz /readyz /metrics /openapi.json
//! GET    /v1/whoami                                             the caller's token name and role
//! GET    /  /ui/  /ui/<file>                                    the web view (public static files)
//! GET    /v1/join/ca    POST /v1/join    POST /v1/renew                node join (public)
//! GET    /v1/node/tasks/<task id>/payloads     a task's secrets and configs (public: the
//!                                              node's client certificate, see [`delivery`])
//! GET    /v1/join-token   POST /v1/join-token/rotate                  the join token
//! ```
//!
//! [`public_routes`] (health, join, renew) are apart from the rest ([`protected_routes`]).
//! With [`Auth::Tokens`] every route but [`auth::PUBLIC_PATHS`] needs `Authorization:
//! Bearer <token>` and a role that allows it ([`auth`]); with [`Auth::Off`] nothing is
//! checked (`--insecure`, and the in-process tests that predate tokens). Served over TLS
//! ([`serve_tls`]: the API certificate, client certificates from the cluster CA optional,
//! so `/v1/renew` sees the node's; tokens on) or, with `--insecure`, plain HTTP ([`serve`]).
//!
//! Modules: [`request`] reads bodies and queries, [`body`] parses objects, [`kinds`] says
//! what each kind allows, [`rest`] and [`apply`] handle writes through [`plan`] (which checks
//! [`rules`] and commits one transaction), [`watch`] streams events, [`metrics`] and
//! [`openapi`] describe the server, [`error`] maps failures to statuses; [`exec`] and
//! [`logs`] reach tasks through their node agents ([`agent`]), as [`volumes`] reaches
//! nodes; [`payloads`] holds what
//! Secrets, Configs and pruning add to [`plan`], and [`delivery`] hands a task's payloads
//! to its node; [`join`] admits nodes and
//! keeps the join token, with [`private`] records (join secret, revocations); [`web`]
//! serves the browser UI's files; [`auth`]
//! authenticates requests and [`tokens`] manages the tokens (and answers `whoami`); [`state`] is what every
//! handler shares.

pub mod agent;
pub mod apply;
pub mod auth;
pub mod body;
pub mod check;
pub mod delivery;
pub mod error;
pub mod exec;
pub mod join;
pub mod kinds;
pub mod logs;
pub mod metrics;
pub mod openapi;
pub mod payloads;
pub mod plan;
pub mod private;
pub mod request;
pub mod rest;
pub mod rules;
pub mod state;
pub mod task_index;
pub mod tokens;
pub mod volumes;
pub mod watch;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use shoal_api_types::{
    ConfigSpec, EndpointsSpec, NetworkSpec, NodeSpec, SecretSpec, ServiceSpec, Status, TaskSpec,
};
use shoal_store::Store;
use tokio::sync::watch as signal;

use self::agent::AgentTls;
pub use self::auth::Auth;
use self::error::ApiError;
use self::metrics::Metrics;
use self::state::{App, Cluster};
use crate::secrets_key::KeySource;

/// Serves the API in plain HTTP without authentication (`--insecure`: no cluster
/// identity, plain HTTP to agents) on `listener` until `shutdown` turns true (see
/// [`serve_with`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    shutdown: signal::Receiver<bool>,
) -> anyhow::Result<()> {
    serve_with(listener, store, shutdown, Auth::Off).await
}

/// Serves the API in plain HTTP on `listener` until `shutdown` turns true; open watches
/// end then, and the server waits for in-flight requests. The secrets key is kept in etcd
/// ([`KeySource::InEtcd`]).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    store: Store,
    shutdown: signal::Receiver<bool>,
    auth: Auth,
) -> anyhow::Result<()> {
    serve_plain(listener, store, shutdown, auth, KeySource::in_etcd()).await
}

/// [`serve_with`] with the secrets key from `secrets_key` (`--insecure` with
/// `--secrets-key`).
pub async fn serve_plain(
    listener: tokio::net::TcpListener,
    store: Store,
    shutdown: signal::Receiver<bool>,
    auth: Auth,
    secrets_key: KeySource,
) -> anyhow::Result<()> {
    let app = build_with(
        store,
        shutdown.clone(),
        None,
        agent::Agents::insecure(),
        auth,
        secrets_key,
    )
    .await?;
    let mut stop = shutdown;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { watch::wait_for_shutdown(&mut stop).await })
        .await?;
    Ok(())
}

/// The secure API's settings: the cluster identity, the TLS config of the API server and
/// the admin token to import.
pub struct Secure {
    /// The CA and what joining nodes are told.
    pub cluster: Arc<Cluster>,
    /// The controller's identity toward agents.
    pub agents: AgentTls,
    /// The API server's TLS config (api.crt; client certificates optional).
    pub tls: Arc<shoal_pki::Reloadable>,
    /// `admin.token` of the data dir, imported as the token `admin` unless one exists.
    pub admin_token: Option<String>,
    /// The secrets key (`<data-dir>/secrets.key` or `--secrets-key`).
    pub secrets_key: KeySource,
}

impl std::fmt::Debug for Secure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secure")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// Serves the API over TLS, with tokens, on `listener` until `shutdown` turns true.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    store: Store,
    secure: Secure,
    shutdown: signal::Receiver<bool>,
) -> anyhow::Result<()> {
    let app = build_with(
        store,
        shutdown.clone(),
        Some(secure.cluster),
        agent::Agents::mutual_tls(secure.agents),
        Auth::Tokens {
            admin_token: secure.admin_token,
        },
        secure.secrets_key,
    )
    .await?;
    let mut stop = shutdown;
    shoal_pki::serve(listener, secure.tls, app, async move {
        watch::wait_for_shutdown(&mut stop).await
    })
    .await?;
    Ok(())
}

/// [`build_with`] without a cluster identity, with plain HTTP to agents and the secrets
/// key in etcd (tests).
pub async fn build(
    store: Store,
    shutdown: signal::Receiver<bool>,
    auth: Auth,
) -> anyhow::Result<Router> {
    build_with(
        store,
        shutdown,
        None,
        agent::Agents::insecure(),
        auth,
        KeySource::in_etcd(),
    )
    .await
}

/// The fallible setup, then the router: with [`Auth::Tokens`] and an admin token, imports
/// it as the token `admin` unless one of that name exists (see
/// [`auth::import_admin_token`]).
pub async fn build_with(
    store: Store,
    shutdown: signal::Receiver<bool>,
    cluster: Option<Arc<Cluster>>,
    agents: agent::Agents,
    auth: Auth,
    secrets_key: KeySource,
) -> anyhow::Result<Router> {
    if let Auth::Tokens {
        admin_token: Some(token),
    } = &auth
    {
        // etcd may still be electing a leader (a cluster that just started): retry that.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match auth::import_admin_token(&store, token).await {
                Ok(_) => break,
                Err(e) if e.is_temporary() && tokio::time::Instant::now() < deadline => {
                    tracing::info!(error = %e, "retrying the admin token import");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => anyhow::bail!("importing the admin token into etcd: {e}"),
            }
        }
    }
    Ok(assemble(
        store,
        shutdown,
        cluster,
        agents,
        &auth,
        secrets_key,
    ))
}

/// The insecure API's router over `store` without authentication (for tests; it never
/// shuts watches down by itself).
pub fn router(store: Store) -> Router {
    let (_never, shutdown) = signal::channel(false);
    router_with_shutdown(store, shutdown)
}

/// The insecure API's router without authentication; watch streams end when `shutdown`
/// turns true.
pub fn router_with_shutdown(store: Store, shutdown: signal::Receiver<bool>) -> Router {
    router_with_auth(store, shutdown, &Auth::Off)
}

/// The API's router without a cluster identity (plain HTTP to agents, the secrets key in
/// etcd); watch streams end when `shutdown` turns true. With [`Auth::Tokens`] it starts the token table's watch (it
/// must be called inside a tokio runtime) and checks every request; it imports no admin
/// token (see [`build`]).
pub fn router_with_auth(store: Store, shutdown: signal::Receiver<bool>, auth: &Auth) -> Router {
    assemble(
        store,
        shutdown,
        None,
        agent::Agents::insecure(),
        auth,
        KeySource::in_etcd(),
    )
}

/// The router over the shared state: cluster identity (`None`: insecure), the hop to
/// agents, and the token table when `auth` wants one.
fn assemble(
    store: Store,
    shutdown: signal::Receiver<bool>,
    cluster: Option<Arc<Cluster>>,
    agents: agent::Agents,
    auth: &Auth,
    secrets_key: KeySource,
) -> Router {
    let token_table = match auth {
        Auth::Off => None,
        Auth::Tokens { .. } => Some(auth::spawn_token_table(store.clone(), shutdown.clone())),
    };
    let app = App {
        tasks: task_index::TaskLookup::new(store.clone(), shutdown.clone()),
        store,
        metrics: Arc::new(Metrics::new()),
        shutdown,
        openapi: Arc::new(openapi::document()),
        agents: Arc::new(agents),
        cluster,
        tokens: token_table.clone(),
        secrets_key: Arc::new(secrets_key),
    };
    routes(app, token_table)
}

fn routes(app: App, token_table: Option<auth::Tokens>) -> Router {
    let metrics = app.metrics.clone();
    let router = protected_routes(app.clone())
        .merge(public_routes(app))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    // Authentication runs inside the metrics layer, so 401s and 403s are counted by code;
    // it lets `auth::PUBLIC_PATHS` (the public routes) through.
    let router = match token_table {
        Some(table) => router.layer(axum::middleware::from_fn_with_state(
            table,
            auth::authenticate,
        )),
        None => router,
    };
    router.layer(axum::middleware::from_fn_with_state(
        metrics,
        metrics::track,
    ))
}

/// Routes anyone may call: health, what a node needs to join and renew (they
/// authenticate by join token or client certificate themselves), and the web view's
/// static files ([`web`]: no data; the page reads the API with the user's token).
pub fn public_routes(app: App) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/v1/join/ca", get(join::ca))
        .route("/v1/join", post(join::join))
        .route("/v1/renew", post(join::renew))
        .route("/v1/node/tasks/{id}/payloads", get(delivery::task_payloads))
        .with_state(app)
        .merge(web::routes())
}

/// Every other route (objects, exec and logs, tokens, the join token, metrics, OpenAPI).
pub fn protected_routes(app: App) -> Router {
    use rest::*;
    let metrics = app.metrics.clone();
    Router::new()
        .route(
            "/apis/shoal/v1/networks",
            get(list::<NetworkSpec>).post(create::<NetworkSpec>),
        )
        .route(
            "/apis/shoal/v1/networks/{name}",
            get(get_one::<NetworkSpec>)
                .put(replace::<NetworkSpec>)
                .delete(delete_network),
        )
        .route(
            "/apis/shoal/v1/services",
            get(list::<ServiceSpec>).post(create::<ServiceSpec>),
        )
        .route(
            "/apis/shoal/v1/services/{name}",
            get(get_one::<ServiceSpec>)
                .put(replace::<ServiceSpec>)
                .delete(delete_service),
        )
        .route(
            "/apis/shoal/v1/secrets",
            get(list::<SecretSpec>).post(create::<SecretSpec>),
        )
        .route(
            "/apis/shoal/v1/secrets/{name}",
            get(get_one::<SecretSpec>)
                .put(replace::<SecretSpec>)
                .delete(delete_payload::<SecretSpec>),
        )
        .route(
            "/apis/shoal/v1/configs",
            get(list::<ConfigSpec>).post(create::<ConfigSpec>),
        )
        .route(
            "/apis/shoal/v1/configs/{name}",
            get(get_one::<ConfigSpec>)
                .put(replace::<ConfigSpec>)
                .delete(delete_payload::<ConfigSpec>),
        )
        .route(
            "/apis/shoal/v1/nodes",
            get(list::<NodeSpec>).fallback(not_writable::<NodeSpec>),
        )
        .route(
            "/apis/shoal/v1/nodes/{name}",
            get(get_one::<NodeSpec>)
                .put(replace_node)
                .delete(delete_node)
                .fallback(not_writable::<NodeSpec>),
        )
        .route(
            "/apis/shoal/v1/tasks",
            get(list::<TaskSpec>).fallback(not_writable::<TaskSpec>),
        )
        .route(
            "/apis/shoal/v1/tasks/{name}",
            get(get_one::<TaskSpec>).fallback(not_writable::<TaskSpec>),
        )
        .route(
            "/apis/shoal/v1/endpoints",
            get(list::<EndpointsSpec>).fallback(not_writable::<EndpointsSpec>),
        )
        .route(
            "/apis/shoal/v1/endpoints/{name}",
            get(get_one::<EndpointsSpec>).fallback(not_writable::<EndpointsSpec>),
        )
        .route("/apis/shoal/v1/tasks/{name}/exec", post(exec::exec))
        .route("/apis/shoal/v1/volumes", get(volumes::list))
        .route("/apis/shoal/v1/system/check", get(check::check))
        .route(
            "/apis/shoal/v1/nodes/{node}/volumes/{name}",
            delete(volumes::delete),
        )
        .route("/apis/shoal/v1/tasks/{name}/logs", get(logs::task_logs))
        .route(
            "/apis/shoal/v1/services/{name}/rollback",
            post(rollback_service),
        )
        .route(
            "/apis/shoal/v1/services/{name}/logs",
            get(logs::service_logs),
        )
        .route("/apis/shoal/v1/apply", post(apply::apply))
        .route("/v1/join-token", get(join::join_token))
        .route("/v1/join-token/rotate", post(join::rotate))
        .route("/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/v1/tokens/{name}", delete(tokens::delete))
        .route("/v1/whoami", get(tokens::whoami))
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics::serve_metrics).with_state(metrics))
        .with_state(app)
}

/// `GET /readyz`: 200 while etcd answers, else 503.
async fn readyz(State(app): State<App>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), app.store.revision()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok").into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("etcd is unavailable: {e}"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "etcd did not answer within 2s",
        )
            .into_response(),
    }
}

async fn openapi_json(State(app): State<App>) -> Response {
    (
        [(CONTENT_TYPE, "application/json")],
        Json(app.openapi.as_ref().clone()),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    Status::new(
        404,
        "NotFound",
        format!("no route {}: see /openapi.json", uri.path()),
    )
    .into()
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    Status::new(
        405,
        "MethodNotAllowed",
        format!(
            "{method} is not allowed on {}: see /openapi.json",
            uri.path()
        ),
    )
    .into()
}
