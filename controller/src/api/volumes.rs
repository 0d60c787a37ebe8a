//! Named volumes, which live on the nodes (not in etcd): the API asks the agents over the
//! same hop as exec ([`super::agent::Agents`]: mutual TLS, or plain HTTP with
//! `--insecure`).
//!
//! - `GET /apis/shoal/v1/volumes[?node=N]` → [`VolumeList`]: every ready node's agent is
//!   asked at once (5 s each); a node that fails is listed in `unreachable` with the reason
//!   instead of failing the whole answer. With `?node=`, that node only: 404 unknown, 409
//!   not ready. read-only tokens may list.
//! - `DELETE /apis/shoal/v1/nodes/<node>/volumes/<name>` → the agent's
//!   `DELETE /v1/volumes/<name>`: 204; 404 no such volume; 409 in use (naming the task);
//!   400 for a name that cannot be a volume's. Admin only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use shoal_api_types::volume::{check_volume_name, VolumeList};
use shoal_api_types::{NodeSpec, NodeState, Status};

use super::agent::node_target;
use super::error::ApiResult;
use super::request::{path_name, Query};
use super::state::App;

/// Query of the volume list.
#[derive(Debug, Default, Deserialize)]
pub struct VolumeParams {
    /// Only this node.
    #[serde(default)]
    pub node: Option<String>,
}

/// `GET /apis/shoal/v1/volumes[?node=N]`.
pub async fn list(
    State(app): State<App>,
    Query(params): Query<VolumeParams>,
) -> ApiResult<Json<VolumeList>> {
    let (nodes, _) = app.store.list::<NodeSpec>().await?;
    let targets = match &params.node {
        Some(name) => {
            path_name("Node", name)?;
            let Some(node) = nodes.iter().find(|n| &n.metadata.name == name) else {
                return Err(Status::not_found("Node", name).into());
            };
            vec![node_target(node)?]
        }
        None => nodes
            .iter()
            .filter(|n| n.status.state == NodeState::Ready)
            .filter_map(|n| node_target(n).ok())
            .collect(),
    };
    let mut out = VolumeList::default();
    // Ready nodes without an agent endpoint cannot be asked: say so.
    if params.node.is_none() {
        for n in nodes.iter().filter(|n| n.status.state == NodeState::Ready) {
            if let Err(e) = node_target(n) {
                out.unreachable
                    .push(format!("{}: {}", n.metadata.name, e.message));
            }
        }
    }
    let answers = futures::future::join_all(targets.iter().map(|t| {
        let app = &app;
        async move { (t, app.agents.volumes(&app.store, t).await) }
    }))
    .await;
    for (target, answer) in answers {
        match answer {
            Ok(volumes) => out.items.extend(volumes),
            Err(e) => out
                .unreachable
                .push(format!("{}: {}", target.node, e.message)),
        }
    }
    out.items
        .sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
    out.unreachable.sort();
    Ok(Json(out))
}

/// `DELETE /apis/shoal/v1/nodes/<node>/volumes/<name>`.
pub async fn delete(
    State(app): State<App>,
    Path((node, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    path_name("Node", &node)?;
    check_volume_name(&name).map_err(Status::bad_request)?;
    let Some(n) = app.store.get_named::<NodeSpec>(&node).await? else {
        return Err(Status::not_found("Node", &node).into());
    };
    let target = node_target(&n)?;
    app.agents.delete_volume(&app.store, &target, &name).await?;
    tracing::info!(%node, volume = %name, "volume removed");
    Ok(StatusCode::NO_CONTENT)
}
