//! `POST /apis/shoal/v1/tasks/{name}/exec`: runs a command in a running task through its
//! node's agent and answers what it printed and its exit code.
//!
//! `{name}` is a task id (or a unique prefix of one) or a display name such as `worker.1`
//! ([`agent::resolve`]). The body is an [`ExecRequest`] (`{"argv": [...],
//! "timeoutSeconds": 30}`); the answer an [`ExecResponse`] (`{"exitCode", "stdout",
//! "stderr"}`). A command that ran answers 200 whatever its exit code. Failures: unknown
//! task 404; a task that is not running, or whose node is down or serves no agent endpoint,
//! 409; an agent that cannot be reached or refuses the cluster token 502; a hollow node
//! 501; a command that outlives its timeout 504.

use axum::extract::{Path, State};
use axum::Json;
use shoal_api_types::{ExecRequest, ExecResponse, NodeSpec, Status, Task, TaskSpec};

use super::agent::{self, Target};
use super::error::ApiResult;
use super::request::{path_name, BodyText};
use super::state::App;

/// Finds the task `name` means (404 if none).
pub async fn find_task(app: &App, name: &str) -> ApiResult<Task> {
    path_name("Task", name)?;
    let (tasks, _) = app.store.list::<TaskSpec>().await?;
    agent::resolve(&tasks, name).cloned().ok_or_else(|| {
        Status::new(
            404,
            "NotFound",
            format!(
                "task {name:?} not found (give a task id or a name such as api.1; \
                     `shoal service ps SERVICE` lists them)"
            ),
        )
        .into()
    })
}

/// Where `task`'s agent is, reading its Node (409 if it cannot be asked).
pub async fn task_target(app: &App, task: &Task, must_run: bool) -> ApiResult<Target> {
    let node = match &task.spec.node {
        Some(node) => app.store.get_named::<NodeSpec>(node).await?,
        None => None,
    };
    Ok(agent::target(task, node.as_ref(), must_run)?)
}

/// `POST /apis/shoal/v1/tasks/{name}/exec`.
pub async fn exec(
    State(app): State<App>,
    Path(name): Path<String>,
    BodyText(text): BodyText,
) -> ApiResult<Json<ExecResponse>> {
    let req: ExecRequest = serde_json::from_str(&text).map_err(|e| {
        Status::bad_request(format!(
            "exec body: {e} (send {{\"argv\": [\"cmd\", \"arg\"...]}})"
        ))
    })?;
    req.check()?;
    let task = find_task(&app, &name).await?;
    let target = task_target(&app, &task, true).await?;
    tracing::info!(task = %target.display, node = %target.node, argv = ?req.argv, "exec");
    Ok(Json(app.agents.exec(&app.store, &target, &req).await?))
}
