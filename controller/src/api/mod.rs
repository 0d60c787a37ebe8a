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
//! ```
//!
//! Modules: [`request`] reads bodies and queries, [`body`] parses objects, [`kinds`] says
//! what each kind allows, [`rest`] and [`apply`] handle writes through [`plan`] (which checks
//! [`rules`] and commits one transaction), [`watch`] streams events, [`metrics`] and
//! [`openapi`] describe the server, [`error`] maps failures to statuses; [`exec`] and
//! [`logs`] reach tasks through their node agents ([`agent`]); [`state`] is what every
//! handler shares.

pub mod agent;
pub mod apply;
pub mod body;
pub mod error;
pub mod exec;
pub mod kinds;
pub mod logs;
pub mod metrics;
pub mod openapi;
pub mod plan;
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

use self::error::ApiError;
use self::metrics::Metrics;
use self::state::App;

/// Serves the API on `listener` until `shutdown` turns true; open watches end then, and the
/// server waits for in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    shutdown: signal::Receiver<bool>,
) -> anyhow::Result<()> {
    // Make sure the agents' cluster token exists before anyone needs it (agents create it
    // too if they come first); a failure here is retried on the first exec.
    if let Err(e) = agent::Agents::new().token(&store, false).await {
        tracing::warn!(error = %e.message, "cannot read or create the agent token yet");
    }
    let app = router_with_shutdown(store, shutdown.clone());
    let mut stop = shutdown;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { watch::wait_for_shutdown(&mut stop).await })
        .await?;
    Ok(())
}

/// The API's router over `store` (for tests; it never shuts watches down by itself).
pub fn router(store: Store) -> Router {
    let (_never, shutdown) = signal::channel(false);
    router_with_shutdown(store, shutdown)
}

/// The API's router; watch streams end when `shutdown` turns true.
pub fn router_with_shutdown(store: Store, shutdown: signal::Receiver<bool>) -> Router {
    let app = App {
        store,
        metrics: Arc::new(Metrics::new()),
        shutdown,
        openapi: Arc::new(openapi::document()),
        agents: Arc::new(agent::Agents::new()),
    };
    routes(app)
}

fn routes(app: App) -> Router {
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
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .route(
            "/metrics",
            get(metrics::serve_metrics).with_state(metrics.clone()),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track,
        ))
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
