//! The agent server's volume routes (issue 15), behind the same caller check as exec:
//!
//! ```text
//! GET    /v1/volumes          -> [VolumeInfo]  this node's named volumes and the tasks using them
//! DELETE /v1/volumes/{name}   -> 204; 404 no such volume; 409 "volume data is in use by task …";
//!                                400 not a volume name
//! ```
//!
//! A hollow node, or an agent without task files, answers 501. These are the handlers'
//! bodies; `server.rs` routes to them.

use std::sync::Arc;

use shoal_api_types::volume::VolumeInfo;
use shoal_api_types::Status;

use crate::runtime::ContainerRuntime;
use crate::taskfiles::{TaskFiles, VolumeError};

fn parts(
    node: &str,
    runtime: Option<Arc<dyn ContainerRuntime>>,
    files: Option<Arc<TaskFiles>>,
) -> Result<(Arc<dyn ContainerRuntime>, Arc<TaskFiles>), Status> {
    match (runtime, files) {
        (Some(rt), Some(files)) => Ok((rt, files)),
        _ => Err(Status::new(
            501,
            "NotImplemented",
            format!("node {node} keeps no volumes"),
        )),
    }
}

fn unavailable(node: &str, e: impl std::fmt::Display) -> Status {
    Status::new(503, "ServiceUnavailable", format!("node {node}: {e}"))
}

/// `GET /v1/volumes`.
pub async fn list(
    node: &str,
    runtime: Option<Arc<dyn ContainerRuntime>>,
    files: Option<Arc<TaskFiles>>,
) -> Result<Vec<VolumeInfo>, Status> {
    let (rt, files) = parts(node, runtime, files)?;
    let containers = rt.list().await.map_err(|e| unavailable(node, e))?;
    files
        .volumes(node, &containers)
        .map_err(|e| Status::internal(format!("node {node}: {e}")))
}

/// `DELETE /v1/volumes/{name}`.
pub async fn remove(
    node: &str,
    runtime: Option<Arc<dyn ContainerRuntime>>,
    files: Option<Arc<TaskFiles>>,
    name: &str,
) -> Result<(), Status> {
    let (rt, files) = parts(node, runtime, files)?;
    files
        .remove_volume(node, name, rt.as_ref())
        .await
        .map_err(|e| match e {
            VolumeError::Invalid(m) => Status::bad_request(m),
            e @ VolumeError::NotFound { .. } => Status::new(404, "NotFound", e.to_string()),
            e @ VolumeError::InUse { .. } => Status::conflict(e.to_string()),
            e @ VolumeError::Unavailable(_) => unavailable(node, e),
            e @ VolumeError::Files(_) => Status::internal(format!("node {node}: {e}")),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::labels::LABEL_VOLUMES;
    use crate::runtime::ContainerSpec;
    use crate::taskfiles::{HostFiles, RecordingFiles, TaskFilesConfig};

    #[tokio::test]
    async fn volumes_should_be_listed_and_removed_only_when_unused() {
        let fake = Arc::new(FakeRuntime::new());
        let rt: Option<Arc<dyn ContainerRuntime>> = Some(fake.clone());
        let host = Arc::new(RecordingFiles::new());
        host.ensure_volume("/s/volumes/data".as_ref(), "/s/volumes/data/_data".as_ref())
            .unwrap();
        let files = Some(Arc::new(TaskFiles::new(TaskFilesConfig::new("/s"), host)));
        fake.create(&ContainerSpec {
            id: "t1".into(),
            image: "busybox".into(),
            hostname: "db.1".into(),
            labels: [(LABEL_VOLUMES.to_string(), "data".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let listed = list("node-1", rt.clone(), files.clone()).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].name.as_str(), listed[0].used_by.clone()),
            ("data", vec!["t1".to_string()])
        );
        let code = |r: Result<(), Status>| r.map_or_else(|s| s.code, |()| 204);
        let e = remove("node-1", rt.clone(), files.clone(), "data")
            .await
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (409, "volume data is in use by task t1")
        );
        fake.delete("t1").await.unwrap();
        assert_eq!(
            code(remove("node-1", rt.clone(), files.clone(), "data").await),
            204
        );
        assert_eq!(
            code(remove("node-1", rt.clone(), files.clone(), "data").await),
            404
        );
        assert_eq!(
            code(remove("node-1", rt.clone(), files.clone(), ".x").await),
            400
        );
        assert_eq!(list("node-1", None, None).await.unwrap_err().code, 501);
    }
}
