//! The [`ContainerRuntime`] trait the agent drives (containerd for real, `FakeRuntime` in
//! tests), and [`start_checked`] on top of it.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use super::error::RuntimeError;
use super::types::{
    ContainerInfo, ContainerSpec, ContainerState, ContainerStatus, ExecOutput, ImageInfo,
};

/// The container runtime the agent drives. Object safe; share it as `Arc<dyn ContainerRuntime>`.
#[async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Makes sure `reference` is present and unpacked, pulling it if it is not.
    async fn ensure_image(&self, reference: &str) -> Result<ImageInfo, RuntimeError>;
    /// Creates (does not start) a container. Ensures the image first.
    /// [`RuntimeError::AlreadyExists`] if the id is taken.
    async fn create(&self, spec: &ContainerSpec) -> Result<(), RuntimeError>;
    /// Starts the container's main process (again, if it had exited); returns its pid.
    /// Output goes to [`ContainerRuntime::log_path`].
    async fn start(&self, id: &str) -> Result<u32, RuntimeError>;
    /// SIGTERM, up to `grace` for it to exit, then SIGKILL. Returns the exit code
    /// (`None` if it had never been started).
    async fn stop(&self, id: &str, grace: Duration) -> Result<Option<i32>, RuntimeError>;
    /// Kills what still runs and removes the container, its rootfs and its state directory
    /// (including the log). `Ok` if it does not exist.
    async fn delete(&self, id: &str) -> Result<(), RuntimeError>;
    /// Our containers (those with [`LABEL_MANAGED`](super::labels::LABEL_MANAGED)) and their states.
    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError>;
    /// What [`Self::list`] would return of the containers `ids` (those that exist; in any
    /// order). The default lists everything and keeps those; containerd looks up each one,
    /// so asking for a few costs a few shim round trips, not one per container of the node.
    async fn list_some(&self, ids: &[&str]) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let wanted: std::collections::HashSet<&str> = ids.iter().copied().collect();
        let mut all = self.list().await?;
        all.retain(|c| wanted.contains(c.id.as_str()));
        Ok(all)
    }
    /// One container's state; [`RuntimeError::NotFound`] if it does not exist.
    async fn status(&self, id: &str) -> Result<ContainerStatus, RuntimeError>;
    /// Waits until the container's main process exits; returns its exit code.
    async fn wait(&self, id: &str) -> Result<i32, RuntimeError>;
    /// Runs `argv` inside the running container (its env, cwd, user and capabilities),
    /// waits up to `timeout` (then kills it), and returns its exit code and output: at most
    /// `max_output` bytes of each stream, then a marker line (the rest is read and dropped,
    /// never held; see [`super::capture`]).
    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
        max_output: usize,
    ) -> Result<ExecOutput, RuntimeError>;
    /// Resolves when one of our containers' main processes may have exited since the call
    /// began (or the runtime lost track and the caller should re-list), so the agent
    /// converges at once instead of at its next resync. The default never resolves.
    async fn changed(&self) {
        std::future::pending::<()>().await
    }
    /// The file holding the container's stdout and stderr (appended across restarts; older
    /// output in `<path>.1`, `<path>.2`, ... once rotated, see [`super::logs`]).
    fn log_path(&self, id: &str) -> PathBuf;
}

/// Starts `id` and checks, after `within`, that it is still running: a container whose main
/// process exits that fast gives [`RuntimeError::ExitedAtOnce`] with its exit code, which is
/// what the agent reports instead of "running". Use a short `within` (e.g. 100 ms); with
/// `Duration::ZERO` it only starts.
pub async fn start_checked(
    rt: &dyn ContainerRuntime,
    id: &str,
    within: Duration,
) -> Result<u32, RuntimeError> {
    let pid = rt.start(id).await?;
    if within.is_zero() {
        return Ok(pid);
    }
    tokio::time::sleep(within).await;
    let st = rt.status(id).await?;
    match (st.state, st.exit_code) {
        (ContainerState::Exited, code) => Err(RuntimeError::ExitedAtOnce {
            id: id.to_string(),
            exit_code: code.unwrap_or(-1),
        }),
        _ => Ok(pid),
    }
}
