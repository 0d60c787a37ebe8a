//! The HTTP API (axum): REST over Shoal's objects in etcd, apply, watch, health, metrics and
//! the OpenAPI document. The API keeps no state of its own: every request reads or writes
//! etcd through the [`Store`], so any number of controller replicas can serve it.
//!
//! Routes (all errors are [`Status`](shoal_api_types::Status) JSON with the HTTP code):
//!
//! ```text
//! GET    /apis/shoal/v1/{networks,services,nodes,tasks,endpoints}   list; ?watch=true streams
//! GET    /apis/shoal/v1/<plural>/<name>                             one object
//! POST   /apis/shoal/v1/{networks,services}                         create (201)
//! PUT    /apis/shoal/v1/{networks,services,nodes}/<name>            replace at resourceVersion
//! DELETE /apis/shoal/v1/{networks,services,nodes}/<name>            delete (200, the object)
//! POST   /apis/shoal/v1/apply[?dryRun=true]                         multi-document apply
//! POST   /apis/shoal/v1/tasks/<name>/exec                           run a command in a task
//! GET    /apis/shoal/v1/{tasks,services}/<name>/logs[?follow&tail=N] container output
//! GET    /healthz /readyz /metrics /openapi.json
//! GET    /v1/join/ca    POST /v1/join    POST /v1/renew                node join (public)
//! GET    /v1/join-token   POST /v1/join-token/rotate                  the join token
//! ```
//!
//! [`public_routes`] (health, join, renew) are apart from the rest ([`protected_routes`])
//! so that authentication can wrap only the latter. Served over TLS ([`serve_tls`]: the
//! API certificate, client certificates from the cluster CA optional, so `/v1/renew` sees
//! the node's) or, with `--insecure`, plain HTTP ([`serve`]).
//!
//! Modules: [`request`] reads bodies and queries, [`body`] parses objects, [`kinds`] says
//! what each kind allows, [`rest`] and [`apply`] handle writes through [`plan`] (which checks
//! [`rules`] and commits one transaction), [`watch`] streams events, [`metrics`] and
//! [`openapi`] describe the server, [`error`] maps failures to statuses; [`exec`] and
//! [`logs`] reach tasks through their node agents ([`agent`]); [`join`] admits nodes and
//! keeps the join token, with [`private`] records (join secret, revocations); [`state`]
//! is what every handler shares.

pub mod agent;
pub mod apply;
pub mod body;
pub mod error;
pub mod exec;
pub mod join;
pub mod kinds;
pub mod logs;
pub mod metrics;
pub mod openapi;
pub mod plan;
pub mod private;
pub mod request;
pub mod rest;
pub mod rules;
pub mod state;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shoal_api_types::{EndpointsSpec, NetworkSpec, NodeSpec, ServiceSpec, Status, TaskSpec};
use shoal_store::Store;
use tokio::sync::watch as signal;

use self::agent::AgentTls;
use self::error::ApiError;
use self::metrics::Metrics;
use self::state::{App, Cluster};

/// Serves the API in plain HTTP (`--insecure`: no cluster identity, plain HTTP to
/// agents) on `listener` until `shutdown` turns true; open watches end then, and the
/// server waits for in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    shutdown: signal::Receiver<bool>,
) -> anyhow::Result<()> {
    let app = router_with_shutdown(store, shutdown.clone());
    let mut stop = shutdown;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { watch::wait_for_shutdown(&mut stop).await })
        .await?;
    Ok(())
}

/// The secure API's settings: the cluster identity and the TLS config of the API server.
pub struct Secure {
    /// The CA and what joining nodes are told.
    pub cluster: Arc<Cluster>,
    /// The controller's identity toward agents.
    pub agents: AgentTls,
    /// The API server's TLS config (api.crt; client certificates optional).
    pub tls: Arc<shoal_pki::Reloadable>,
}

impl std::fmt::Debug for Secure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secure")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// Serves the API over TLS on `listener` until `shutdown` turns true.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    store: Store,
    secure: Secure,
    shutdown: signal::Receiver<bool>,
) -> anyhow::Result<()> {
    let app = build(
        store,
        shutdown.clone(),
        Some(secure.cluster),
        agent::Agents::mutual_tls(secure.agents),
    );
    let mut stop = shutdown;
    shoal_pki::serve(listener, secure.tls, app, async move {
        watch::wait_for_shutdown(&mut stop).await
    })
    .await?;
    Ok(())
}

/// The insecure API's router over `store` (for tests; it never shuts watches down by
/// itself).
pub fn router(store: Store) -> Router {
    let (_never, shutdown) = signal::channel(false);
    router_with_shutdown(store, shutdown)
}

/// The insecure API's router; watch streams end when `shutdown` turns true.
pub fn router_with_shutdown(store: Store, shutdown: signal::Receiver<bool>) -> Router {
    build(store, shutdown, None, agent::Agents::insecure())
}

/// The API's router with a cluster identity (`None`: insecure) and a hop to agents.
pub fn build(
    store: Store,
    shutdown: signal::Receiver<bool>,
    cluster: Option<Arc<Cluster>>,
    agents: agent::Agents,
) -> Router {
    let app = App {
        store,
        metrics: Arc::new(Metrics::new()),
        shutdown,
        openapi: Arc::new(openapi::document()),
        agents: Arc::new(agents),
        cluster,
    };
    routes(app)
}

fn routes(app: App) -> Router {
    let metrics = app.metrics.clone();
    protected_routes(app.clone())
        .merge(public_routes(app))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track,
        ))
}

/// Routes anyone may call: health, and what a node needs to join and renew (they
/// authenticate by join token or client certificate themselves).
pub fn public_routes(app: App) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/v1/join/ca", get(join::ca))
        .route("/v1/join", post(join::join))
        .route("/v1/renew", post(join::renew))
        .with_state(app)
}

/// Every other route (objects, exec and logs, the join token, metrics, OpenAPI).
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
        .route("/apis/shoal/v1/tasks/{name}/logs", get(logs::task_logs))
        .route(
            "/apis/shoal/v1/services/{name}/logs",
            get(logs::service_logs),
        )
        .route("/apis/shoal/v1/apply", post(apply::apply))
        .route("/v1/join-token", get(join::join_token))
        .route("/v1/join-token/rotate", post(join::rotate))
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
