//! `GET /v1/node/tasks/<task id>/payloads`: the Secrets and Configs a task references,
//! decrypted, for the agent of the node that runs it ([`TaskPayloads`]).
//!
//! A public route (no bearer token: [`super::auth::PUBLIC_PREFIX`]); the caller proves who
//! it is with its node certificate over mutual TLS:
//! - no client certificate → 401; a certificate whose CN is not a node name (the
//!   controller's, the hollow fleet's) or of a removed node (revoked) → 403;
//! - the task must be stored under `tasks/<that node>/<id>` (else 404: a node never learns
//!   about another node's tasks) and be wanted running (else 403);
//! - a referenced Secret or Config removed since the task was made → 404 naming it.
//!
//! With `--insecure` (plain HTTP) there is no identity to check: the task is found on any
//! node and its payloads are served to anyone who can reach the API (loopback only).
//! Payloads are never logged; answers carry `Cache-Control: no-store`.

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::http::header::CACHE_CONTROL;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use shoal_api_types::payload::{encode_payload, DeliveredPayload, TaskPayloads};
use shoal_api_types::{ConfigSpec, Resource, SecretSpec, Status, Task, TaskSpec, TaskState};
use shoal_pki::PeerIdentity;
use shoal_store::Store;

use super::error::ApiResult;
use super::payloads::StoredPayload;
use super::request::path_name;
use super::state::App;
use crate::secrets_key::SecretsKey;

/// The handler.
pub async fn task_payloads(
    State(app): State<App>,
    Path(id): Path<String>,
    peer: Option<Extension<PeerIdentity>>,
) -> ApiResult<Response> {
    path_name(TaskSpec::KIND, &id)?;
    let task = match (&app.cluster, peer) {
        (Some(_), None) => {
            return Err(Status::new(
                401,
                "Unauthorized",
                "payloads are served only to the node running the task: present its node \
                 certificate as TLS client certificate",
            )
            .into())
        }
        (Some(_), Some(Extension(peer))) => node_task(&app.store, &peer, &id).await?,
        (None, _) => any_task(&app.store, &id).await?,
    };
    if task.spec.desired_state != TaskState::Running {
        return Err(forbidden(format!(
            "task {id} is not wanted running (desired state {}): its payloads are no longer \
             served",
            task.spec.desired_state
        ))
        .into());
    }
    let key = app.secrets_key().await?;
    let answer = TaskPayloads {
        secrets: fetch::<SecretSpec>(
            &app.store,
            &key,
            &id,
            task.spec.secrets.iter().map(|r| r.source.as_str()),
        )
        .await?,
        configs: fetch::<ConfigSpec>(
            &app.store,
            &key,
            &id,
            task.spec.configs.iter().map(|r| r.source.as_str()),
        )
        .await?,
    };
    tracing::info!(
        task = %id,
        node = task.spec.node.as_deref().unwrap_or(""),
        secrets = answer.secrets.len(),
        configs = answer.configs.len(),
        "payloads delivered"
    );
    Ok(([(CACHE_CONTROL, "no-store")], Json(answer)).into_response())
}

fn forbidden(message: impl Into<String>) -> Status {
    Status::new(403, "Forbidden", message)
}

/// The task `id` stored under the calling node's prefix.
async fn node_task(store: &Store, peer: &PeerIdentity, id: &str) -> Result<Task, Status> {
    let node = &peer.common_name;
    if super::join::check_node_name(node).is_err() {
        return Err(forbidden(format!(
            "{node:?} is not a node: payloads are served to the node running the task"
        )));
    }
    if let Some(revocation) = super::private::revocation(store, node).await? {
        if revocation.refuses(peer.not_before) {
            return Err(forbidden(format!(
                "node {node} was removed: its certificate is revoked"
            )));
        }
    }
    let key = format!("{}{id}", store.keys().node_tasks(node));
    store
        .get::<TaskSpec>(&key)
        .await
        .map_err(|e| super::error::store_status(&e))?
        .ok_or_else(|| Status::new(404, "NotFound", format!("no task {id} on node {node}")))
}

/// The task `id` wherever it is (`--insecure`).
async fn any_task(store: &Store, id: &str) -> Result<Task, Status> {
    let (tasks, _) = store
        .list::<TaskSpec>()
        .await
        .map_err(|e| super::error::store_status(&e))?;
    tasks
        .into_iter()
        .find(|t| t.metadata.name == id)
        .ok_or_else(|| Status::not_found(TaskSpec::KIND, id))
}

/// The payloads named by `sources` (each once, in first-reference order), opened.
async fn fetch<'a, S: StoredPayload>(
    store: &Store,
    key: &SecretsKey,
    task: &str,
    sources: impl Iterator<Item = &'a str>,
) -> Result<Vec<DeliveredPayload>, Status> {
    let kind = S::KIND.to_lowercase();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for name in sources {
        if !seen.insert(name) {
            continue;
        }
        let stored = store
            .get_raw(&store.keys().payload::<S>(name))
            .await
            .map_err(|e| super::error::store_status(&e))?
            .ok_or_else(|| {
                Status::new(
                    404,
                    "NotFound",
                    format!("{kind} {name} of task {task} does not exist (it was removed)"),
                )
            })?;
        let bytes = S::from_stored(key, name, &stored.value).map_err(|e| {
            tracing::error!(%kind, %name, error = %e, "a stored payload does not open");
            Status::internal(e)
        })?;
        out.push(DeliveredPayload {
            name: name.to_string(),
            data: encode_payload(&bytes),
        });
    }
    Ok(out)
}
