//! `POST /apis/shoal/v1/tasks/{name}/exec`: runs a command in a running task through its
//! node's agent and answers what it printed and its exit code.
//!
//! `{name}` is a task id (or a unique prefix of one) or a display name such as `worker.1`
//! (from the API replica's task index, [`super::task_index`]). The body is an [`ExecRequest`] (`{"argv": [...],
//! "timeoutSeconds": 30}`); the answer an [`ExecResponse`] (`{"exitCode", "stdout",
//! "stderr"}`). A command that ran answers 200 whatever its exit code. Failures: unknown
//! task 404; a task that is not running, or whose node is down or serves no agent endpoint,
//! 409; an agent that cannot be reached or refuses the cluster token 502; a hollow node
//! 501; a command that outlives its timeout 504.

use axum::extract::{Path, State};
use axum::Json;
use shoal_api_types::{ExecRequest, ExecResponse, NodeSpec, Status, Task, TaskSpec, TaskState};

use super::agent::{self, Target};
use super::error::ApiResult;
use super::request::{path_name, BodyText};
use super::state::App;

/// Finds the task `name` means (404 if none), from the task index, reading the task itself
/// by its key. An answer that may be stale (no task, or one not running as wanted when the
/// name is not its id) is looked up again once the index has caught up with etcd's current
/// revision: a task made or replaced a moment ago is found.
pub async fn find_task(app: &App, name: &str) -> ApiResult<Task> {
    path_name("Task", name)?;
    let first = lookup(app, name).await?;
    if let Some(t) = &first {
        if t.metadata.name == name || running_as_wanted(t) {
            return Ok(first.expect("checked"));
        }
    }
    let revision = app.store.revision().await?;
    let again = if app.tasks.caught_up(revision).await {
        lookup(app, name).await?
    } else {
        None
    };
    again.or(first).ok_or_else(|| {
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

fn running_as_wanted(t: &Task) -> bool {
    t.spec.desired_state == TaskState::Running && t.status.state == TaskState::Running
}

/// The task the index resolves `name` to, as etcd holds it now (`None` if the index knows
/// no such task, or it was deleted since).
async fn lookup(app: &App, name: &str) -> ApiResult<Option<Task>> {
    let key = app
        .tasks
        .read(|index| index.resolve(name).map(|t| t.key.clone()))
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    match key {
        Some(key) => Ok(app.store.get::<TaskSpec>(&key).await?),
        None => Ok(None),
    }
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
