//! The REST handlers under `/apis/shoal/v1/<plural>[/<name>]`: list (or watch), get,
//! create, replace and delete, per the kind's [`Access`].
//!
//! - Replace needs `metadata.resourceVersion` (422 without it, 409 if stale); it keeps uid,
//!   creationTimestamp and status and bumps generation when the spec changed. The status a
//!   client sends is ignored everywhere.
//! - Nodes: only `spec` and labels change through the API; a node that is ready is deleted
//!   only with `?force=true`; deleting a node revokes it (`private::revoke`, its etcd user
//!   removed).
//! - Secrets and Configs: create, replace (labels only: the payload is immutable) and
//!   delete (409 while a service's spec references it); never answered with their data.
//! - Tasks and Endpoints are read-only (405).
//! - `POST services/<name>/rollback` swaps a service's spec with its previous one
//!   ([`plan::rollback`]: the same rules as a replace, at the revision read).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use shoal_api_types::{
    FieldError, NodeSpec, NodeState, Object, ObjectList, Resource, ServiceSpec, Status,
};
use shoal_store::StoreError;

use super::error::{ApiError, ApiResult};
use super::kinds::{Access, ApiKind, Locate, UserKind};
use super::payloads::StoredPayload;
use super::plan::{self, Change, Expect};
use super::request::{
    parse_revision, path_name, too_large, BodyText, LargeBodyText, ListParams, Query, WriteParams,
};
use super::state::App;
use super::{body, watch};

/// `GET /apis/shoal/v1/<plural>`: the list, or with `?watch=true` a watch stream.
pub async fn list<S: ApiKind>(
    State(app): State<App>,
    Query(params): Query<ListParams>,
) -> ApiResult<Response> {
    let sel = S::selection(app.store.keys(), &params)?;
    if params.watch {
        return watch::watch::<S>(&app, sel, &params).await;
    }
    let (mut items, revision) = app.store.list_prefix::<S>(&sel.prefix).await?;
    items.retain(|o| S::selected(o, &sel));
    Ok(Json(ObjectList::new(items, revision)).into_response())
}

/// Reads one object by name.
pub async fn find<S: ApiKind>(app: &App, name: &str) -> ApiResult<Option<Object<S>>> {
    path_name(S::KIND, name)?;
    let keys = app.store.keys();
    Ok(match S::locate(keys, name) {
        Locate::Key(key) => app.store.get::<S>(&key).await?,
        Locate::Scan => {
            let (items, _) = app.store.list_prefix::<S>(&keys.prefix::<S>()).await?;
            items.into_iter().find(|o| o.metadata.name == name)
        }
    })
}

/// `GET /apis/shoal/v1/<plural>/<name>`.
pub async fn get_one<S: ApiKind>(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<Json<Object<S>>> {
    match find::<S>(&app, &name).await? {
        Some(obj) => Ok(Json(obj)),
        None => Err(Status::not_found(S::KIND, &name).into()),
    }
}

/// `POST /apis/shoal/v1/<plural>` for user kinds: 201 with the stored object.
pub async fn create<S: UserKind>(
    State(app): State<App>,
    Query(params): Query<WriteParams>,
    LargeBodyText(text): LargeBodyText,
) -> ApiResult<Response> {
    check_body_size::<S>(&text)?;
    let obj = body::parse_one::<S>(&text, None)?;
    let change = Change {
        document: None,
        object: S::into_any(obj),
        expect: Expect::Absent,
    };
    let key = app.secrets_key().await?;
    let done = one::<S>(plan::write(&app.store, key, vec![change], params.dry_run).await?)?;
    Ok((StatusCode::CREATED, Json(done)).into_response())
}

/// `PUT /apis/shoal/v1/<plural>/<name>` for user kinds.
pub async fn replace<S: UserKind>(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(params): Query<WriteParams>,
    LargeBodyText(text): LargeBodyText,
) -> ApiResult<Json<Object<S>>> {
    check_body_size::<S>(&text)?;
    path_name(S::KIND, &name)?;
    let obj = body::parse_one::<S>(&text, Some(&name))?;
    let revision = required_revision::<S>(&obj)?;
    let change = Change {
        document: None,
        object: S::into_any(obj),
        expect: Expect::Revision(revision),
    };
    let key = app.secrets_key().await?;
    Ok(Json(one(plan::write(
        &app.store,
        key,
        vec![change],
        params.dry_run,
    )
    .await?)?))
}

/// The kind's own body limit (the extractor read up to the largest any kind takes).
fn check_body_size<S: ApiKind>(text: &str) -> Result<(), Status> {
    if text.len() > S::MAX_BODY {
        return Err(too_large(S::MAX_BODY));
    }
    Ok(())
}

/// `DELETE /apis/shoal/v1/{secrets,configs}/<name>`: 409 while a service's spec references
/// it (see [`plan::delete_payload`]).
pub async fn delete_payload<S: StoredPayload + ApiKind>(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(params): Query<WriteParams>,
) -> ApiResult<Json<Object<S>>> {
    path_name(S::KIND, &name)?;
    let expected = expected_revision(&params)?;
    Ok(Json(
        plan::delete_payload::<S>(&app.store, &name, expected, params.dry_run).await?,
    ))
}

/// The single object of a one-object write.
fn one<S: UserKind>(mut planned: Vec<plan::Planned>) -> ApiResult<Object<S>> {
    planned
        .pop()
        .and_then(|p| S::from_any(p.object))
        .ok_or_else(|| {
            Status::internal(format!("a write of one {} returned nothing", S::KIND)).into()
        })
}

/// `metadata.resourceVersion` of a replace body: required, numeric.
fn required_revision<S: Resource>(obj: &Object<S>) -> Result<i64, Status> {
    let field = "metadata.resourceVersion";
    let message = match obj.metadata.resource_version.as_deref() {
        None | Some("") => format!(
            "is required to replace a {}: send back the resourceVersion you read (or use apply)",
            S::KIND.to_lowercase()
        ),
        Some(v) => match v.parse::<i64>() {
            Ok(r) if r > 0 => return Ok(r),
            _ => format!("{v:?} is not a resourceVersion (a positive whole number)"),
        },
    };
    Err(Status::invalid(
        format!(
            "{} {:?} is invalid",
            S::KIND.to_lowercase(),
            obj.metadata.name
        ),
        vec![FieldError::new(field, message).into()],
    ))
}

fn expected_revision(params: &WriteParams) -> Result<Option<i64>, Status> {
    params
        .resource_version
        .as_deref()
        .filter(|v| !v.is_empty())
        .map(|v| parse_revision("resourceVersion", v))
        .transpose()
}

/// `DELETE /apis/shoal/v1/networks/<name>`: 409 while a service uses it.
pub async fn delete_network(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(params): Query<WriteParams>,
) -> ApiResult<Json<shoal_api_types::Network>> {
    path_name("Network", &name)?;
    let expected = expected_revision(&params)?;
    Ok(Json(
        plan::delete_network(&app.store, &name, expected, params.dry_run).await?,
    ))
}

/// `DELETE /apis/shoal/v1/services/<name>`.
pub async fn delete_service(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(params): Query<WriteParams>,
) -> ApiResult<Json<shoal_api_types::Service>> {
    let expected = expected_revision(&params)?;
    if params.dry_run {
        return get_one::<ServiceSpec>(State(app), Path(name)).await;
    }
    path_name("Service", &name)?;
    let key = app.store.keys().named::<ServiceSpec>(&name);
    Ok(Json(
        app.store
            .delete::<ServiceSpec>(&key, expected)
            .await
            .map_err(named_not_found::<ServiceSpec>(&name))?,
    ))
}

/// `POST /apis/shoal/v1/services/<name>/rollback[?dryRun=true]`: back to the previous spec
/// (see [`plan::rollback`]); 200 with the stored service, 404 unknown, 409 without a
/// previous spec.
pub async fn rollback_service(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(params): Query<WriteParams>,
) -> ApiResult<Json<shoal_api_types::Service>> {
    path_name("Service", &name)?;
    let rolled = plan::rollback(&app.store, &name, chrono::Utc::now(), params.dry_run).await?;
    if !params.dry_run {
        tracing::info!(service = %name, generation = rolled.metadata.generation, "rollback requested");
    }
    Ok(Json(rolled))
}

/// Store errors name objects by the last key segment; use the requested name.
fn named_not_found<S: Resource>(name: &str) -> impl FnOnce(StoreError) -> ApiError + '_ {
    move |e| match e {
        StoreError::NotFound { .. } => Status::not_found(S::KIND, name).into(),
        other => other.into(),
    }
}

/// `PUT /apis/shoal/v1/nodes/<name>`: changes spec (labels, availability) and metadata
/// labels; the agent's status is kept.
pub async fn replace_node(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(params): Query<WriteParams>,
    BodyText(text): BodyText,
) -> ApiResult<Json<shoal_api_types::Node>> {
    path_name("Node", &name)?;
    let wanted = body::parse_one::<NodeSpec>(&text, Some(&name))?;
    let revision = required_revision(&wanted)?;
    let Some(current) = app.store.get_named::<NodeSpec>(&name).await? else {
        return Err(Status::not_found("Node", &name).into());
    };
    let now = current.metadata.revision().unwrap_or(0);
    if now != revision {
        return Err(Status::conflict(format!(
            "node {name:?} was changed since resourceVersion {revision} (it is now at {now}); read it again and retry"
        ))
        .into());
    }
    if current.spec == wanted.spec && current.metadata.labels == wanted.metadata.labels {
        return Ok(Json(current));
    }
    let mut next = current.clone();
    if next.spec != wanted.spec {
        next.metadata.generation += 1;
    }
    next.spec = wanted.spec;
    next.metadata.labels = wanted.metadata.labels;
    if params.dry_run {
        return Ok(Json(next));
    }
    Ok(Json(
        app.store
            .update(&next)
            .await
            .map_err(named_not_found::<NodeSpec>(&name))?,
    ))
}

/// `DELETE /apis/shoal/v1/nodes/<name>`: a node that is not ready (its agent is gone), or any
/// with `?force=true`. Revokes the node (its certificates so far are refused, its etcd user
/// removed) before deleting it.
pub async fn delete_node(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(params): Query<WriteParams>,
) -> ApiResult<Json<shoal_api_types::Node>> {
    path_name("Node", &name)?;
    let expected = expected_revision(&params)?;
    let Some(node) = app.store.get_named::<NodeSpec>(&name).await? else {
        return Err(Status::not_found("Node", &name).into());
    };
    if node.status.state == NodeState::Ready && !params.force {
        return Err(Status::conflict(format!(
            "node {name} is ready: stop its agent (or wait until it is down) before removing it, \
             or remove it anyway with ?force=true (`shoal node rm --force {name}`)"
        ))
        .into());
    }
    let current = node.metadata.revision().unwrap_or(0);
    if let Some(want) = expected.filter(|w| *w != current) {
        return Err(Status::conflict(format!(
            "node {name:?} was changed since resourceVersion {want} (it is now at {current}); read it again and retry"
        ))
        .into());
    }
    if params.dry_run {
        return Ok(Json(node));
    }
    // Revoke first: if anything below fails, the node's certificates are refused already.
    super::private::revoke(&app.store, &name).await?;
    super::join::remove_node_user(&app.store, &name).await?;
    // Delete only the node we judged: if it became ready meanwhile, this is a conflict
    // (forced: whatever its agent wrote since).
    let key = app.store.keys().named::<NodeSpec>(&name);
    let precondition = if params.force {
        expected
    } else {
        Some(current)
    };
    tracing::info!(node = %name, force = params.force, "node removed and its certificates revoked");
    Ok(Json(
        app.store
            .delete::<NodeSpec>(&key, precondition)
            .await
            .map_err(named_not_found::<NodeSpec>(&name))?,
    ))
}

/// Writes to kinds the API does not let users write: 405 with the reason.
pub async fn not_writable<S: ApiKind>() -> ApiError {
    let message = match S::ACCESS {
        Access::Node => "nodes register themselves: run shoal-node-agent on the host (nodes can be read, changed with PUT and removed once down)".to_string(),
        _ => format!(
            "{} are managed by Shoal and cannot be written through the API; change the services they come from",
            S::PLURAL
        ),
    };
    Status::new(405, "MethodNotAllowed", message).into()
}
