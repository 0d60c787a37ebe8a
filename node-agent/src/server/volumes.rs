//! The agent server's volume routes (issue 15), behind the same caller check as exec:
//!
//! ```text
//! GET    /v1/volumes          -> [VolumeInfo]  this node's named volumes and the tasks using them
//! DELETE /v1/volumes/{name}   -> 204; 404 no such volume; 409 "volume data is in use by task …"
//! ```
//!
//! A hollow node, or an agent without task files, answers 501.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use shoal_api_types::Status;

use super::{error, runtime, AgentServer, ServerState};
use crate::taskfiles::{TaskFiles, VolumeError};

impl AgentServer {
    /// Serves this node's volumes from `files` (`/v1/volumes`).
    pub fn with_volumes(mut self, files: Arc<TaskFiles>) -> Self {
        self.state.volumes = Some(files);
        self
    }
}

fn files(state: &ServerState) -> Result<Arc<TaskFiles>, Status> {
    state.volumes.clone().ok_or_else(|| {
        Status::new(
            501,
            "NotImplemented",
            format!("node {} keeps no volumes", state.node),
        )
    })
}

/// `GET /v1/volumes`.
pub(super) async fn list(State(state): State<ServerState>) -> Response {
    let result = async {
        let (rt, files) = (runtime(&state)?, files(&state)?);
        let containers = rt.list().await.map_err(|e| {
            Status::new(
                503,
                "ServiceUnavailable",
                format!("node {}: {e}", state.node),
            )
        })?;
        files
            .volumes(&state.node, &containers)
            .map_err(|e| Status::internal(format!("node {}: {e}", state.node)))
    }
    .await;
    match result {
        Ok(list) => Json(list).into_response(),
        Err(status) => error(status),
    }
}

/// `DELETE /v1/volumes/{name}`.
pub(super) async fn remove(State(state): State<ServerState>, Path(name): Path<String>) -> Response {
    let result = async {
        let (rt, files) = (runtime(&state)?, files(&state)?);
        files
            .remove_volume(&state.node, &name, rt.as_ref())
            .await
            .map_err(|e| match e {
                VolumeError::Invalid(m) => Status::bad_request(m),
                e @ VolumeError::NotFound { .. } => Status::new(404, "NotFound", e.to_string()),
                e @ VolumeError::InUse { .. } => Status::conflict(e.to_string()),
                e @ VolumeError::Unavailable(_) => {
                    Status::new(503, "ServiceUnavailable", e.to_string())
                }
                e @ VolumeError::Files(_) => Status::internal(format!("node {}: {e}", state.node)),
            })
    }
    .await;
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(status) => error(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::labels::LABEL_VOLUMES;
    use crate::runtime::{ContainerRuntime, ContainerSpec};
    use crate::taskfiles::{HostFiles, RecordingFiles, TaskFilesConfig};
    use reqwest::Method;

    /// Serves `app` on a loopback port; its base URL.
    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    async fn call(base: &str, method: Method, path: &str) -> (u16, String) {
        let resp = reqwest::Client::new()
            .request(method, format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    #[tokio::test]
    async fn volumes_should_be_listed_and_removed_only_when_unused() {
        let fake = Arc::new(FakeRuntime::new());
        let host = Arc::new(RecordingFiles::new());
        host.ensure_volume("/s/volumes/data".as_ref(), "/s/volumes/data/_data".as_ref())
            .unwrap();
        let files = Arc::new(TaskFiles::new(TaskFilesConfig::new("/s"), host));
        let app = serve(super::super::test_router_with(
            "node-1",
            Some(fake.clone()),
            Some(files),
        ))
        .await;
        fake.create(&ContainerSpec {
            id: "t1".into(),
            image: "busybox".into(),
            hostname: "db.1".into(),
            labels: [(LABEL_VOLUMES.to_string(), "data".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let (code, body) = call(&app, Method::GET, "/v1/volumes").await;
        assert_eq!(code, 200, "{body}");
        let list: Vec<shoal_api_types::volume::VolumeInfo> = serde_json::from_str(&body).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].name.as_str(), list[0].used_by.clone()),
            ("data", vec!["t1".to_string()])
        );
        let (code, body) = call(&app, Method::DELETE, "/v1/volumes/data").await;
        assert_eq!(code, 409, "{body}");
        assert!(body.contains("volume data is in use by task t1"), "{body}");
        fake.delete("t1").await.unwrap();
        assert_eq!(call(&app, Method::DELETE, "/v1/volumes/data").await.0, 204);
        assert_eq!(call(&app, Method::DELETE, "/v1/volumes/data").await.0, 404);
        assert_eq!(call(&app, Method::DELETE, "/v1/volumes/.bad").await.0, 400);
        let hollow = serve(super::super::test_router("node-1", None)).await;
        assert_eq!(call(&hollow, Method::GET, "/v1/volumes").await.0, 501);
    }
}
