//! Owns the container side of [`ContainerdRuntime`]: create, start, stop, delete, list,
//! wait, exec and logs of containers and their containerd tasks, and following task exits
//! (the [`ContainerRuntime`] implementation; images come from [`super::image`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{MountsRequest, PrepareSnapshotRequest};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest, GetContainerRequest, GetRequest,
    KillRequest, ListContainersRequest, ListTasksRequest, StartRequest, WaitRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::v1::Status as TaskStatus;
use containerd_client::types::Mount;

use super::{found, status_err, ContainerdRuntime};
use crate::runtime::api::ContainerRuntime;
use crate::runtime::capture;
use crate::runtime::error::{validate_container_id, RuntimeError};
use crate::runtime::labels::{LABEL_IMAGE, LABEL_MANAGED};
use crate::runtime::spec;
use crate::runtime::types::{
    ContainerInfo, ContainerSpec, ContainerState, ContainerStatus, ExecOutput, ImageInfo,
};

const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// containerd's type name of [`RuncOptions`] (typeurl looks it up by exactly this name).
const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";
const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;

/// The part of containerd's `containerd.runc.v1.Options` (api/types/runc/options/oci.proto)
/// that Shoal sets; containerd-client does not generate that message. The runc shim reads
/// these options at a task's creation and keeps them in its bundle.
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    /// runc's `--root`: its state goes to `<root>/<namespace>/<container id>`.
    #[prost(string, tag = "7")]
    root: String,
}

/// The runtime options of a new container: runc's root when one is configured.
fn runtime_options(runc_root: Option<&Path>) -> Option<prost_types::Any> {
    let root = runc_root?.to_string_lossy().into_owned();
    Some(prost_types::Any {
        type_url: RUNC_OPTIONS_TYPE_URL.to_string(),
        value: prost::Message::encode_to_vec(&RuncOptions { root }),
    })
}

impl ContainerdRuntime {
    /// What `list` says of container `c` whose task (init process) is `task`. The cgroup
    /// of an exited task stays until the task is deleted (or started again), so its OOM
    /// count survives an agent restart.
    fn info(
        &self,
        c: &Container,
        task: Option<&containerd_client::types::v1::Process>,
    ) -> ContainerInfo {
        let status = task.map(task_status).unwrap_or(ContainerStatus::CREATED);
        ContainerInfo {
            id: c.id.clone(),
            image: c.image.clone(),
            labels: c.labels.clone().into_iter().collect::<BTreeMap<_, _>>(),
            status,
            oom_killed: status.state == ContainerState::Exited && self.oom_kills(&c.id) > 0,
        }
    }

    pub(super) async fn get_task(
        &self,
        id: &str,
    ) -> Result<Option<containerd_client::types::v1::Process>, RuntimeError> {
        let answer = self
            .client
            .tasks()
            .get(self.req(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await;
        Ok(found(answer, "Tasks.Get", id)?.and_then(|r| r.into_inner().process))
    }

    pub(super) async fn get_container(&self, id: &str) -> Result<Option<Container>, RuntimeError> {
        let answer = self
            .client
            .containers()
            .get(self.req(GetContainerRequest { id: id.to_string() }))
            .await;
        Ok(found(answer, "Containers.Get", id)?.and_then(|r| r.into_inner().container))
    }

    pub(super) async fn kill(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), RuntimeError> {
        match self
            .client
            .tasks()
            .kill(self.req(KillRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                signal,
                all,
            }))
            .await
        {
            Ok(_) => Ok(()),
            // Already gone: nothing to signal.
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
            Err(s) => Err(status_err("Tasks.Kill", id)(s)),
        }
    }

    pub(super) fn spawn_wait(
        &self,
        id: &str,
        exec_id: &str,
    ) -> tokio::task::JoinHandle<Result<i32, RuntimeError>> {
        let mut tasks = self.client.tasks();
        let req = self.req(WaitRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        });
        let id = id.to_string();
        tokio::spawn(async move {
            let r = tasks
                .wait(req)
                .await
                .map_err(status_err("Tasks.Wait", id))?;
            Ok(r.into_inner().exit_status as i32)
        })
    }

    pub(super) async fn delete_task(&self, id: &str) -> Result<Option<i32>, RuntimeError> {
        let answer = self
            .client
            .tasks()
            .delete(self.req(DeleteTaskRequest {
                container_id: id.to_string(),
            }))
            .await;
        Ok(found(answer, "Tasks.Delete", id)?.map(|r| r.into_inner().exit_status as i32))
    }

    pub(super) async fn exec_inner(
        &self,
        id: &str,
        exec_id: &str,
        argv: &[String],
        timeout: Duration,
        max_output: usize,
        dir: &Path,
    ) -> Result<ExecOutput, RuntimeError> {
        let container = self
            .get_container(id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })?;
        let spec_any = container.spec.ok_or_else(|| RuntimeError::InvalidSpec {
            id: id.to_string(),
            reason: "container has no spec".to_string(),
        })?;
        let spec_json: serde_json::Value =
            serde_json::from_slice(&spec_any.value).map_err(|e| RuntimeError::InvalidSpec {
                id: id.to_string(),
                reason: format!("container spec: {e}"),
            })?;
        let mut process = spec_json.get("process").cloned().unwrap_or_default();
        process["args"] = serde_json::json!(argv);
        process["terminal"] = serde_json::json!(false);

        std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io(dir, e))?;
        let out_path = dir.join("stdout");
        let err_path = dir.join("stderr");
        for p in [&out_path, &err_path] {
            nix::unistd::mkfifo(p.as_path(), nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| RuntimeError::io(p, std::io::Error::from(e)))?;
        }
        let open = |p: &Path| {
            tokio::net::unix::pipe::OpenOptions::new()
                .open_receiver(p)
                .map_err(|e| RuntimeError::io(p, e))
        };
        // Read as the command writes (a full FIFO would stall it), keeping only the first
        // `max_output` bytes of each stream.
        let (out_seen, err_seen) = (capture::Shared::default(), capture::Shared::default());
        let out_task = tokio::spawn(capture::capture_into(
            open(&out_path)?,
            max_output,
            out_seen.clone(),
        ));
        let err_task = tokio::spawn(capture::capture_into(
            open(&err_path)?,
            max_output,
            err_seen.clone(),
        ));

        let mut tasks = self.client.tasks();
        tasks
            .exec(self.req(ExecProcessRequest {
                container_id: id.to_string(),
                stdin: String::new(),
                stdout: out_path.display().to_string(),
                stderr: err_path.display().to_string(),
                terminal: false,
                spec: Some(prost_types::Any {
                    type_url: PROCESS_TYPE_URL.to_string(),
                    value: serde_json::to_vec(&process).unwrap_or_default(),
                }),
                exec_id: exec_id.to_string(),
            }))
            .await
            .map_err(|s| match s.code() {
                Code::NotFound | Code::FailedPrecondition => RuntimeError::InvalidSpec {
                    id: id.to_string(),
                    reason: format!("exec needs a running container: {}", s.message()),
                },
                _ => status_err("Tasks.Exec", id)(s),
            })?;
        let wait = self.spawn_wait(id, exec_id);
        let started = tasks
            .start(self.req(StartRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await;
        let exit_code = match started {
            Err(s) => {
                wait.abort();
                Err(RuntimeError::StartFailed {
                    id: format!("{id} (exec {argv:?})"),
                    reason: s.message().to_string(),
                })
            }
            Ok(_) => match tokio::time::timeout(timeout, wait).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(RuntimeError::Containerd {
                    op: "Tasks.Wait",
                    object: id.to_string(),
                    code: Code::Internal,
                    message: e.to_string(),
                }),
                Err(_) => {
                    let _ = self.kill(id, exec_id, SIGKILL, false).await;
                    Err(RuntimeError::Timeout {
                        op: "exec",
                        id: id.to_string(),
                        after: timeout,
                    })
                }
            },
        };
        let _ = tasks
            .delete_process(self.req(DeleteProcessRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await;
        let exit_code = match exit_code {
            Ok(code) => code,
            Err(e) => {
                out_task.abort();
                err_task.abort();
                return Err(e);
            }
        };
        // The shim closes the FIFOs when the process's output is drained; a child that
        // keeps them open (a daemon) is not waited for long: what was read is kept.
        let (out_abort, err_abort) = (out_task.abort_handle(), err_task.abort_handle());
        let collect = async {
            let _ = out_task.await;
            let _ = err_task.await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), collect).await;
        out_abort.abort();
        err_abort.abort();
        let (stdout, out_cut) = out_seen.snapshot().into_output();
        let (stderr, err_cut) = err_seen.snapshot().into_output();
        Ok(ExecOutput {
            exit_code,
            stdout,
            stderr,
            truncated: out_cut || err_cut,
        })
    }
}

/// The directories a snapshot's mounts stack, topmost first: a bind mount's source, or an
/// overlay's upper directory then its lower ones.
pub(super) fn layer_dirs(mounts: &[Mount]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for m in mounts {
        match m.r#type.as_str() {
            "bind" | "rbind" => dirs.push(PathBuf::from(&m.source)),
            "overlay" => {
                for o in &m.options {
                    if let Some(upper) = o.strip_prefix("upperdir=") {
                        dirs.insert(0, PathBuf::from(upper));
                    }
                }
                for o in &m.options {
                    if let Some(lower) = o.strip_prefix("lowerdir=") {
                        dirs.extend(lower.split(':').map(PathBuf::from));
                    }
                }
            }
            _ => {}
        }
    }
    dirs
}

/// Reads `etc/<name>` from the topmost layer that has it, following no symlink (the image
/// must not make the agent read a host file).
fn read_layered(dirs: &[PathBuf], name: &str) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    for d in dirs {
        let etc = d.join("etc");
        match std::fs::symlink_metadata(&etc) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return None,
            Err(_) => continue,
        }
        let path = etc.join(name);
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => {
                let mut s = String::new();
                // At most 4 MiB of user database.
                return f.take(4 << 20).read_to_string(&mut s).ok().map(|_| s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A whiteout (character device) or nothing: look further down only when
                // absent.
                continue;
            }
            Err(_) => return None,
        }
    }
    None
}

/// Whether a swap limit can be set: always on cgroup v2; on v1 only with swap accounting
/// (`memory.memsw.limit_in_bytes`).
fn swap_accounting() -> bool {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    !v1.is_dir() || v1.join("memory.memsw.limit_in_bytes").exists()
}

fn read_rootfs_files(mounts: &[Mount]) -> spec::RootfsFiles {
    let dirs = layer_dirs(mounts);
    spec::RootfsFiles {
        passwd: read_layered(&dirs, "passwd"),
        group: read_layered(&dirs, "group"),
    }
}

fn task_status(p: &containerd_client::types::v1::Process) -> ContainerStatus {
    match p.status() {
        TaskStatus::Running => ContainerStatus::running(p.pid),
        TaskStatus::Paused | TaskStatus::Pausing => ContainerStatus {
            state: ContainerState::Paused,
            pid: Some(p.pid),
            exit_code: None,
        },
        TaskStatus::Stopped => ContainerStatus::exited(p.exit_status as i32),
        TaskStatus::Created => ContainerStatus::CREATED,
        TaskStatus::Unknown => ContainerStatus {
            state: ContainerState::Unknown,
            pid: None,
            exit_code: None,
        },
    }
}
#[async_trait]
impl ContainerRuntime for ContainerdRuntime {
    async fn ensure_image(&self, reference: &str) -> Result<ImageInfo, RuntimeError> {
        self.ensure_local_image(reference).await
    }

    async fn create(&self, cs: &ContainerSpec) -> Result<(), RuntimeError> {
        validate_container_id(&cs.id)?;
        if self.get_container(&cs.id).await?.is_some() {
            return Err(RuntimeError::AlreadyExists { id: cs.id.clone() });
        }
        let image = self.ensure_image(&cs.image).await?;
        let dir = self.container_dir(&cs.id);
        spec::write_files(&dir, cs)?;
        let cgroups_path = self.cgroups_path(&cs.id);
        // The lease keeps the new snapshot from being garbage-collected until the container
        // record (which references it) exists.
        let lease = self.create_lease().await?;
        let res = async {
            // A snapshot left by a crash between Prepare and Containers.Create is stale.
            self.remove_snapshot(&cs.id).await?;
            let mounts = self
                .client
                .snapshots()
                .prepare(self.req_lease(
                    PrepareSnapshotRequest {
                        snapshotter: self.cfg.snapshotter.clone(),
                        key: cs.id.clone(),
                        parent: image.chain_id.clone(),
                        labels: HashMap::new(),
                    },
                    &lease,
                ))
                .await
                .map_err(status_err("Snapshots.Prepare", &cs.id))?
                .into_inner()
                .mounts;
            // User names resolve through the image's files, read from the snapshot's layer
            // directories without mounting it.
            let rootfs = read_rootfs_files(&mounts);
            let spec_bytes =
                spec::build(cs, &image.config, &dir, &cgroups_path, &rootfs).and_then(|oci| {
                    let mut v =
                        serde_json::to_value(&oci).map_err(|e| RuntimeError::InvalidSpec {
                            id: cs.id.clone(),
                            reason: e.to_string(),
                        })?;
                    // cgroup v1 without swap accounting has no memsw file for runc to write
                    // (Docker drops the swap limit there too); without swap there is
                    // nothing to limit anyway.
                    if !swap_accounting() {
                        if let Some(m) = v.pointer_mut("/linux/resources/memory") {
                            if let Some(m) = m.as_object_mut() {
                                m.remove("swap");
                            }
                        }
                    }
                    serde_json::to_vec(&v).map_err(|e| RuntimeError::InvalidSpec {
                        id: cs.id.clone(),
                        reason: e.to_string(),
                    })
                });
            let spec_bytes = match spec_bytes {
                Ok(b) => b,
                Err(e) => {
                    let _ = self.remove_snapshot(&cs.id).await;
                    return Err(e);
                }
            };
            let mut labels: HashMap<String, String> = cs.labels.clone().into_iter().collect();
            labels.insert(LABEL_MANAGED.to_string(), "true".to_string());
            labels.insert(LABEL_IMAGE.to_string(), cs.image.clone());
            let container = Container {
                id: cs.id.clone(),
                labels,
                image: image.name.clone(),
                runtime: Some(Runtime {
                    name: self.cfg.runtime.clone(),
                    options: runtime_options(self.cfg.runc_root.as_deref()),
                }),
                spec: Some(prost_types::Any {
                    type_url: SPEC_TYPE_URL.to_string(),
                    value: spec_bytes,
                }),
                snapshotter: self.cfg.snapshotter.clone(),
                snapshot_key: cs.id.clone(),
                ..Default::default()
            };
            if let Err(s) = self
                .client
                .containers()
                .create(self.req_lease(
                    CreateContainerRequest {
                        container: Some(container),
                    },
                    &lease,
                ))
                .await
            {
                let _ = self.remove_snapshot(&cs.id).await;
                return Err(if s.code() == Code::AlreadyExists {
                    RuntimeError::AlreadyExists { id: cs.id.clone() }
                } else {
                    status_err("Containers.Create", &cs.id)(s)
                });
            }
            Ok(())
        }
        .await;
        self.delete_lease(&lease).await;
        if matches!(&res, Err(e) if !matches!(e, RuntimeError::AlreadyExists { .. })) {
            let _ = std::fs::remove_dir_all(&dir);
        }
        res
    }

    async fn start(&self, id: &str) -> Result<u32, RuntimeError> {
        if self.get_container(id).await?.is_none() {
            return Err(RuntimeError::NotFound { id: id.to_string() });
        }
        let mut tasks = self.client.tasks();
        if let Some(p) = self.get_task(id).await? {
            match p.status() {
                TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing => return Ok(p.pid),
                TaskStatus::Created => {
                    let r = tasks
                        .start(self.req(StartRequest {
                            container_id: id.to_string(),
                            exec_id: String::new(),
                        }))
                        .await
                        .map_err(|s| RuntimeError::StartFailed {
                            id: id.to_string(),
                            reason: s.message().to_string(),
                        })?;
                    return Ok(r.into_inner().pid);
                }
                TaskStatus::Stopped | TaskStatus::Unknown => {
                    self.kill(id, "", SIGKILL, true).await?;
                    self.delete_task(id).await?;
                }
            }
        }
        let mounts: Vec<Mount> = self
            .client
            .snapshots()
            .mounts(self.req(MountsRequest {
                snapshotter: self.cfg.snapshotter.clone(),
                key: id.to_string(),
            }))
            .await
            .map_err(status_err("Snapshots.Mounts", id))?
            .into_inner()
            .mounts;
        let log = self.log_path(id);
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent).map_err(|e| RuntimeError::io(parent, e))?;
        }
        let log_uri = format!("file://{}", log.display());
        tasks
            .create(self.req(CreateTaskRequest {
                container_id: id.to_string(),
                rootfs: mounts,
                stdout: log_uri.clone(),
                stderr: log_uri,
                ..Default::default()
            }))
            .await
            .map_err(|s| RuntimeError::StartFailed {
                id: id.to_string(),
                reason: s.message().to_string(),
            })?;
        match tasks
            .start(self.req(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().pid),
            Err(s) => {
                let _ = self.kill(id, "", SIGKILL, true).await;
                let _ = self.delete_task(id).await;
                Err(RuntimeError::StartFailed {
                    id: id.to_string(),
                    reason: s.message().to_string(),
                })
            }
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<Option<i32>, RuntimeError> {
        let Some(p) = self.get_task(id).await? else {
            if self.get_container(id).await?.is_none() {
                return Err(RuntimeError::NotFound { id: id.to_string() });
            }
            return Ok(None);
        };
        if p.status() == TaskStatus::Stopped {
            return Ok(Some(p.exit_status as i32));
        }
        let mut wait = self.spawn_wait(id, "");
        self.kill(id, "", SIGTERM, false).await?;
        let code = match tokio::time::timeout(grace, &mut wait).await {
            Ok(r) => r.map_err(|e| RuntimeError::Containerd {
                op: "Tasks.Wait",
                object: id.to_string(),
                code: Code::Internal,
                message: e.to_string(),
            })??,
            Err(_) => {
                tracing::info!(
                    container = id,
                    ?grace,
                    "did not stop on SIGTERM; sending SIGKILL"
                );
                self.kill(id, "", SIGKILL, true).await?;
                let after = Duration::from_secs(10);
                match tokio::time::timeout(after, &mut wait).await {
                    Ok(r) => r.map_err(|e| RuntimeError::Containerd {
                        op: "Tasks.Wait",
                        object: id.to_string(),
                        code: Code::Internal,
                        message: e.to_string(),
                    })??,
                    Err(_) => {
                        wait.abort();
                        return Err(RuntimeError::Timeout {
                            op: "stop",
                            id: id.to_string(),
                            after: grace + after,
                        });
                    }
                }
            }
        };
        Ok(Some(code))
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        if let Some(p) = self.get_task(id).await? {
            if p.status() != TaskStatus::Stopped {
                let wait = self.spawn_wait(id, "");
                self.kill(id, "", SIGKILL, true).await?;
                if tokio::time::timeout(Duration::from_secs(10), wait)
                    .await
                    .is_err()
                {
                    return Err(RuntimeError::Timeout {
                        op: "delete",
                        id: id.to_string(),
                        after: Duration::from_secs(10),
                    });
                }
            }
            self.delete_task(id).await?;
        }
        match self
            .client
            .containers()
            .delete(self.req(DeleteContainerRequest { id: id.to_string() }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(status_err("Containers.Delete", id)(s)),
        }
        self.remove_snapshot(id).await?;
        let dir = self.container_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::io(dir, e)),
        }
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let containers = self
            .client
            .containers()
            .list(self.req(ListContainersRequest { filters: vec![] }))
            .await
            .map_err(status_err("Containers.List", ""))?
            .into_inner()
            .containers;
        let tasks = self
            .client
            .tasks()
            .list(self.req(ListTasksRequest {
                filter: String::new(),
            }))
            .await
            .map_err(status_err("Tasks.List", ""))?
            .into_inner()
            .tasks;
        // containerd 1.6 fills `id` (= container id for the init process), not `container_id`.
        let by_id: HashMap<&str, &containerd_client::types::v1::Process> = tasks
            .iter()
            .map(|t| {
                let id = if t.container_id.is_empty() {
                    &t.id
                } else {
                    &t.container_id
                };
                (id.as_str(), t)
            })
            .collect();
        let mut out: Vec<ContainerInfo> = containers
            .iter()
            .filter(|c| crate::runtime::labels::is_managed(|k| c.labels.get(k)))
            .map(|c| self.info(c, by_id.get(c.id.as_str()).copied()))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn list_some(&self, ids: &[&str]) -> Result<Vec<ContainerInfo>, RuntimeError> {
        // Containers.Get reads containerd's metadata; Tasks.Get asks the one shim. All at
        // once: each waits for a process of its own to be scheduled.
        let one = |id: &str| {
            let id = id.to_string();
            async move {
                let Some(c) = self.get_container(&id).await? else {
                    return Ok(None);
                };
                if !crate::runtime::labels::is_managed(|k| c.labels.get(k)) {
                    return Ok(None);
                }
                let task = self.get_task(&id).await?;
                Ok::<_, RuntimeError>(Some(self.info(&c, task.as_ref())))
            }
        };
        let found = futures::future::try_join_all(ids.iter().map(|id| one(id))).await?;
        let mut out: Vec<ContainerInfo> = found.into_iter().flatten().collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        if let Some(p) = self.get_task(id).await? {
            return Ok(task_status(&p));
        }
        if self.get_container(id).await?.is_some() {
            Ok(ContainerStatus::CREATED)
        } else {
            Err(RuntimeError::NotFound { id: id.to_string() })
        }
    }

    async fn wait(&self, id: &str) -> Result<i32, RuntimeError> {
        match self.spawn_wait(id, "").await {
            Ok(Err(RuntimeError::Containerd {
                code: Code::NotFound,
                ..
            })) => Err(RuntimeError::NotFound { id: id.to_string() }),
            Ok(r) => r,
            Err(e) => Err(RuntimeError::Containerd {
                op: "Tasks.Wait",
                object: id.to_string(),
                code: Code::Internal,
                message: e.to_string(),
            }),
        }
    }

    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
        max_output: usize,
    ) -> Result<ExecOutput, RuntimeError> {
        if argv.is_empty() {
            return Err(RuntimeError::InvalidSpec {
                id: id.to_string(),
                reason: "exec needs a command".to_string(),
            });
        }
        let exec_id = format!("exec-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let dir = self.container_dir(id).join(&exec_id);
        let res = self
            .exec_inner(id, &exec_id, argv, timeout, max_output, &dir)
            .await;
        let _ = std::fs::remove_dir_all(&dir);
        res
    }

    async fn changed(&self) {
        let mut rx = self.changes.subscribe();
        let _ = rx.changed().await;
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join(super::LOG_FILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runc_root_should_be_sent_as_field_7_of_the_runc_options() {
        assert_eq!(runtime_options(None), None);
        let any = runtime_options(Some(Path::new("/n/runc"))).unwrap();
        assert_eq!(any.type_url, "containerd.runc.v1.Options");
        // Tag 7, wire type 2 (length-delimited): 7 << 3 | 2 = 0x3a.
        let mut want = vec![0x3a, 7];
        want.extend_from_slice(b"/n/runc");
        assert_eq!(any.value, want);
    }

    #[test]
    fn snapshot_layers_are_searched_from_the_top() {
        let overlay = Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "workdir=/s/3/work".into(),
                "upperdir=/s/3/fs".into(),
                "lowerdir=/s/2/fs:/s/1/fs".into(),
            ],
            ..Default::default()
        };
        let dirs: Vec<String> = layer_dirs(&[overlay])
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(dirs, ["/s/3/fs", "/s/2/fs", "/s/1/fs"]);
        let bind = Mount {
            r#type: "bind".into(),
            source: "/s/4/fs".into(),
            options: vec!["rbind".into(), "rw".into()],
            ..Default::default()
        };
        assert_eq!(layer_dirs(&[bind]), [PathBuf::from("/s/4/fs")]);
    }

    #[test]
    fn user_databases_are_read_from_the_top_layer_without_following_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let (top, bottom) = (root.path().join("top"), root.path().join("bottom"));
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        std::fs::write(bottom.join("etc/passwd"), "old:x:1:1::/:/bin/sh\n").unwrap();
        std::fs::write(bottom.join("etc/group"), "g:x:5:\n").unwrap();
        std::fs::write(top.join("etc/passwd"), "new:x:2:2::/:/bin/sh\n").unwrap();
        let dirs = vec![top.clone(), bottom.clone()];
        assert_eq!(
            read_layered(&dirs, "passwd").unwrap(),
            "new:x:2:2::/:/bin/sh\n"
        );
        assert_eq!(read_layered(&dirs, "group").unwrap(), "g:x:5:\n");
        // A symlink to a host file is not followed.
        std::fs::remove_file(top.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", top.join("etc/passwd")).unwrap();
        assert_eq!(read_layered(&dirs, "passwd"), None);
        assert_eq!(read_layered(&[root.path().join("none")], "passwd"), None);
    }

    #[test]
    fn task_states_map_to_container_states() {
        let p = containerd_client::types::v1::Process {
            pid: 42,
            status: TaskStatus::Stopped as i32,
            exit_status: 3,
            ..Default::default()
        };
        assert_eq!(task_status(&p), ContainerStatus::exited(3));
        let p = containerd_client::types::v1::Process {
            pid: 42,
            status: TaskStatus::Running as i32,
            ..Default::default()
        };
        assert_eq!(task_status(&p), ContainerStatus::running(42));
    }
}
