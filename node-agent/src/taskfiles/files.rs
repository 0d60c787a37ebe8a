//! [`TaskFiles`]: everything a task's container mounts besides its image — secrets and
//! configs (fetched from the controller through a [`PayloadSource`], written to a tmpfs per
//! task, `<root>/payloads/<task id>`), named volumes (`<root>/volumes/<name>/_data`, made
//! on first use and kept until removed), bind mounts (allowed only below the agent's
//! `--allow-bind` prefixes, symlinks resolved first) and tmpfs mounts — from the task spec
//! to the container's mounts ([`TaskFiles::prepare`]), and back ([`TaskFiles::release`],
//! [`TaskFiles::collect_garbage`]).
//!
//! Invariants:
//! - A payload tmpfs exists only while its task's container does (or while the task is
//!   being started): removed with the container, and any other one is garbage at the next
//!   collection (agent start, every resync).
//! - Payload bytes are never logged and never touch a disk.
//! - A start holds the shared lock ([`Prepared`] keeps it) until its container exists;
//!   garbage collection and volume removal take it exclusively, so neither removes what a
//!   start is about to use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shoal_api_types::service::MountType;
use shoal_api_types::volume::{check_volume_name, VolumeInfo};
use shoal_api_types::Task;
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use super::host::{FilesError, HostFiles};
use super::plan::{self, MountSource};
use super::source::{FetchError, Fetched, PayloadSource};
use crate::runtime::labels::{self, LABEL_TASK, LABEL_VOLUMES};
use crate::runtime::{ContainerInfo, ContainerMount, ContainerRuntime};

/// Where payload tmpfs mounts live below the root.
pub const PAYLOADS_DIR: &str = "payloads";
/// Where volumes live below the root.
pub const VOLUMES_DIR: &str = "volumes";

/// How [`TaskFiles`] works on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFilesConfig {
    /// The agent's state directory (`--state-dir`).
    pub root: PathBuf,
    /// Host paths below which bind mounts are allowed (`--allow-bind`); none by default.
    pub allow_bind: Vec<PathBuf>,
    /// How long a fetch of payloads is retried while the controller is unreachable before
    /// the task fails.
    pub fetch_for: Duration,
}

impl TaskFilesConfig {
    /// Files below `root`, no binds allowed, fetches retried for 30 s.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        TaskFilesConfig {
            root: root.into(),
            allow_bind: Vec::new(),
            fetch_for: Duration::from_secs(30),
        }
    }
}

/// Why a task's files could not be prepared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    /// The task cannot run here as specified (a bind outside the allowed prefixes).
    #[error("{0}")]
    Rejected(String),
    /// Preparing failed (the controller did not deliver, a mount failed).
    #[error("{0}")]
    Failed(String),
}

/// Why a volume could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Not a volume name.
    #[error("{0}")]
    Invalid(String),
    /// No such volume on this node.
    #[error("no volume {name} on node {node}")]
    NotFound {
        /// The volume.
        name: String,
        /// The node.
        node: String,
    },
    /// Containers mount it.
    #[error("volume data is in use by task {}", tasks.join(", "))]
    InUse {
        /// Their task ids.
        tasks: Vec<String>,
    },
    /// The container runtime could not list containers.
    #[error("cannot tell which containers use volumes: {0}")]
    Unavailable(String),
    /// The filesystem failed.
    #[error(transparent)]
    Files(#[from] FilesError),
}

/// A task's mounts, ready; holds off garbage collection and volume removal until dropped
/// (after the container exists).
#[derive(Debug)]
pub struct Prepared {
    /// The container's extra mounts.
    pub mounts: Vec<ContainerMount>,
    _hold: OwnedRwLockReadGuard<()>,
}

/// A task's files on this node (see the module docs).
pub struct TaskFiles {
    cfg: TaskFilesConfig,
    host: Arc<dyn HostFiles>,
    source: Option<Arc<dyn PayloadSource>>,
    busy: Arc<RwLock<()>>,
}

impl std::fmt::Debug for TaskFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFiles")
            .field("cfg", &self.cfg)
            .field("source", &self.source.is_some())
            .finish_non_exhaustive()
    }
}

/// The reference `spec` fetches payloads for, for messages: `secret pw`, `config c (and 2
/// more)`.
fn payload_names(task: &Task) -> String {
    let names: Vec<String> = task
        .spec
        .secrets
        .iter()
        .map(|s| format!("secret {}", s.source))
        .chain(
            task.spec
                .configs
                .iter()
                .map(|c| format!("config {}", c.source)),
        )
        .collect();
    match names.len() {
        0 | 1 => names.join(""),
        n => format!("{} (and {} more)", names[0], n - 1),
    }
}

impl TaskFiles {
    /// Task files below `cfg.root` through `host`; without a payload source until
    /// [`TaskFiles::with_source`].
    pub fn new(cfg: TaskFilesConfig, host: Arc<dyn HostFiles>) -> Self {
        TaskFiles {
            cfg,
            host,
            source: None,
            busy: Arc::new(RwLock::new(())),
        }
    }

    /// Fetches payloads from `source`.
    pub fn with_source(mut self, source: Arc<dyn PayloadSource>) -> Self {
        self.source = Some(source);
        self
    }

    /// The payload tmpfs of task `id`.
    pub fn payload_dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join(PAYLOADS_DIR).join(id)
    }

    /// Volume `name`'s directory (its data is in `_data`).
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.cfg.root.join(VOLUMES_DIR).join(name)
    }

    /// Makes what `task` mounts: checks binds, makes volumes, fetches and writes payloads.
    /// Keep the result until the container is created.
    pub async fn prepare(&self, task: &Task) -> Result<Prepared, PrepareError> {
        let hold = self.busy.clone().read_owned().await;
        let id = task.name();
        let failed = |e: FilesError| PrepareError::Failed(e.to_string());
        // Binds first: a refused one costs nothing.
        let mut sources = Vec::with_capacity(task.spec.mounts.len());
        for (i, m) in task.spec.mounts.iter().enumerate() {
            sources.push(match m.type_ {
                MountType::Bind => {
                    let resolved = self.host.resolve(Path::new(&m.source)).map_err(|e| {
                        PrepareError::Rejected(format!(
                            "spec.mounts[{i}]: bind source {} cannot be used on this node: {}",
                            m.source, e.source
                        ))
                    })?;
                    let allowed: Vec<PathBuf> = self
                        .cfg
                        .allow_bind
                        .iter()
                        .map(|p| self.host.resolve(p).unwrap_or_else(|_| p.clone()))
                        .collect();
                    if !plan::bind_allowed(&resolved, &allowed) {
                        return Err(PrepareError::Rejected(plan::bind_refused(
                            i,
                            &m.source,
                            &resolved,
                            &self.cfg.allow_bind,
                        )));
                    }
                    MountSource::Bind(resolved)
                }
                MountType::Volume => {
                    check_volume_name(&m.source)
                        .map_err(|e| PrepareError::Rejected(format!("spec.mounts[{i}]: {e}")))?;
                    MountSource::Volume(self.volume_dir(&m.source).join(plan::VOLUME_DATA))
                }
                MountType::Tmpfs => MountSource::Tmpfs,
            });
        }
        let dir = self.payload_dir(id);
        if plan::needs_payloads(&task.spec) {
            let fetched = self.fetch(task).await?;
            let files =
                plan::payload_files(&task.spec, |n| fetched.secret(n), |n| fetched.config(n))
                    .map_err(PrepareError::Failed)?;
            self.host
                .mount_payloads(&dir, plan::tmpfs_size(&files), &files)
                .map_err(failed)?;
        }
        for name in plan::volume_names(&task.spec) {
            let vdir = self.volume_dir(&name);
            self.host
                .ensure_volume(&vdir, &vdir.join(plan::VOLUME_DATA))
                .map_err(failed)?;
        }
        Ok(Prepared {
            mounts: plan::container_mounts(&task.spec, &dir, &sources),
            _hold: hold,
        })
    }

    /// The task's payloads, retrying temporary failures for `fetch_for`.
    async fn fetch(&self, task: &Task) -> Result<Fetched, PrepareError> {
        let what = payload_names(task);
        let Some(source) = &self.source else {
            return Err(PrepareError::Failed(format!(
                "could not fetch {what}: this node's agent knows no controller to fetch secrets \
                 and configs from (start it with --controller URL)"
            )));
        };
        let deadline = tokio::time::Instant::now() + self.cfg.fetch_for;
        let mut pause = Duration::from_millis(200);
        let answer = loop {
            match source.fetch(task.name()).await {
                Ok(answer) => break answer,
                Err(FetchError::Temporary(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::info!(task = %task.name(), error = %e, "payloads not fetched yet; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    return Err(PrepareError::Failed(format!(
                        "could not fetch {what} from the controller: {e}"
                    )))
                }
            }
        };
        Fetched::decode(answer).map_err(|e| {
            PrepareError::Failed(format!("could not fetch {what} from the controller: {e}"))
        })
    }

    /// Removes task `id`'s payload tmpfs (after its container is gone).
    pub fn release(&self, id: &str) -> Result<(), FilesError> {
        self.host.unmount_payloads(&self.payload_dir(id))
    }

    /// Removes the payload tmpfs of every task without a container in `runtime`, unless a
    /// start is in flight (then it is left for the next call).
    pub async fn collect_garbage(&self, runtime: &dyn ContainerRuntime) {
        let parent = self.cfg.root.join(PAYLOADS_DIR);
        match self.host.subdirectories(&parent) {
            Ok(dirs) if dirs.is_empty() => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for leftover payload mounts");
                return;
            }
        }
        let Ok(_exclusive) = self.busy.try_write() else {
            return;
        };
        let Ok(containers) = runtime.list().await else {
            return;
        };
        let Ok(dirs) = self.host.subdirectories(&parent) else {
            return;
        };
        for id in dirs {
            if containers.iter().any(|c| c.id == id) {
                continue;
            }
            match self.release(&id) {
                Ok(()) => {
                    tracing::info!(task = %id, "removed the payload tmpfs of a task without a container")
                }
                Err(e) => {
                    tracing::warn!(task = %id, error = %e, "cannot remove a leftover payload tmpfs")
                }
            }
        }
    }

    /// Collects garbage now and every `every` until `shutdown` turns true.
    pub async fn run_gc(
        &self,
        runtime: Arc<dyn ContainerRuntime>,
        every: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopped = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = tick.tick() => self.collect_garbage(runtime.as_ref()).await,
                _ = &mut stopped => return,
            }
        }
    }

    /// The volumes on this node (`node`), with the tasks of `containers` that mount them.
    pub fn volumes(
        &self,
        node: &str,
        containers: &[ContainerInfo],
    ) -> Result<Vec<VolumeInfo>, FilesError> {
        let names = self.host.subdirectories(&self.cfg.root.join(VOLUMES_DIR))?;
        Ok(names
            .into_iter()
            .map(|name| VolumeInfo {
                used_by: users(&name, containers),
                created_at: self.host.volume_created(&self.volume_dir(&name)),
                node: node.to_string(),
                name,
            })
            .collect())
    }

    /// Removes volume `name` of node `node` unless a container of `runtime` mounts it.
    pub async fn remove_volume(
        &self,
        node: &str,
        name: &str,
        runtime: &dyn ContainerRuntime,
    ) -> Result<(), VolumeError> {
        check_volume_name(name).map_err(VolumeError::Invalid)?;
        let _exclusive = self.busy.write().await;
        let dir = self.volume_dir(name);
        if !self
            .host
            .subdirectories(&self.cfg.root.join(VOLUMES_DIR))?
            .iter()
            .any(|n| n == name)
        {
            return Err(VolumeError::NotFound {
                name: name.to_string(),
                node: node.to_string(),
            });
        }
        let containers = runtime
            .list()
            .await
            .map_err(|e| VolumeError::Unavailable(e.to_string()))?;
        let tasks = users(name, &containers);
        if !tasks.is_empty() {
            return Err(VolumeError::InUse { tasks });
        }
        self.host.remove_volume(&dir)?;
        tracing::info!(volume = %name, "volume removed");
        Ok(())
    }
}

/// The task ids of the containers that mount volume `name` (label [`LABEL_VOLUMES`]).
fn users(name: &str, containers: &[ContainerInfo]) -> Vec<String> {
    let mut tasks: Vec<String> = containers
        .iter()
        .filter(|c| {
            c.labels
                .get(LABEL_VOLUMES)
                .is_some_and(|v| v.split(',').any(|n| n == name))
        })
        .map(|c| {
            labels::get(&c.labels, LABEL_TASK)
                .cloned()
                .unwrap_or_else(|| c.id.clone())
        })
        .collect();
    tasks.sort();
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::ContainerSpec;
    use crate::taskfiles::fake::{FakePayloads, FilesCall, RecordingFiles};
    use shoal_api_types::service::{ConfigReference, Mount, SecretReference};
    use shoal_api_types::TaskSpec;
    use std::collections::BTreeMap;

    fn task(id: &str) -> Task {
        Task::new(
            id,
            TaskSpec {
                service: "api".into(),
                secrets: vec![SecretReference {
                    source: "pw".into(),
                    mode: 0o444,
                    ..Default::default()
                }],
                configs: vec![ConfigReference {
                    source: "conf".into(),
                    mode: 0o444,
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
    }

    fn task_files(source: Option<FakePayloads>) -> (TaskFiles, Arc<RecordingFiles>) {
        let host = Arc::new(RecordingFiles::new());
        let mut cfg = TaskFilesConfig::new("/state");
        cfg.allow_bind = vec!["/srv".into()];
        let mut files = TaskFiles::new(cfg, host.clone());
        if let Some(source) = source {
            files = files.with_source(Arc::new(source));
        }
        (files, host)
    }

    #[tokio::test]
    async fn prepare_should_mount_the_payloads_and_return_the_container_mounts() {
        let (files, host) = task_files(Some(
            FakePayloads::new()
                .secret("pw", b"hunter2")
                .config("conf", b"x=1"),
        ));
        let prepared = files.prepare(&task("t1")).await.unwrap();
        let dir = PathBuf::from("/state/payloads/t1");
        let mounted = host.mounted(&dir).unwrap();
        assert_eq!(mounted[0].data.bytes(), b"hunter2");
        assert_eq!(mounted[1].path, PathBuf::from("configs/0"));
        let targets: Vec<&str> = prepared
            .mounts
            .iter()
            .map(|m| m.destination.as_str())
            .collect();
        assert_eq!(targets, ["/conf", "/run/secrets"]);
        drop(prepared);
        files.release("t1").unwrap();
        assert!(host.mounted(&dir).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_controller_should_be_retried_then_fail_the_task_naming_the_secret() {
        let source = FakePayloads::new()
            .secret("pw", b"hunter2")
            .config("conf", b"x");
        source.fail_with([FetchError::Temporary("connection refused".into())]);
        let (files, host) = task_files(Some(source));
        // One temporary failure: retried, then it works.
        files.prepare(&task("t1")).await.unwrap();
        assert_eq!(host.mounted_dirs().len(), 1);

        let source = FakePayloads::new();
        source.fail_with(std::iter::repeat_n(
            FetchError::Temporary("connection refused".into()),
            1000,
        ));
        let (files, host) = task_files(Some(source));
        let e = files.prepare(&task("t2")).await.unwrap_err();
        assert_eq!(
            e,
            PrepareError::Failed(
                "could not fetch secret pw (and 1 more) from the controller: connection refused"
                    .into()
            )
        );
        assert!(host.mounted_dirs().is_empty());

        let source = FakePayloads::new();
        source.fail_with([FetchError::Refused("403 task t3 is not node-1's".into())]);
        let (files, _) = task_files(Some(source));
        let e = files.prepare(&task("t3")).await.unwrap_err().to_string();
        assert!(
            e.starts_with("could not fetch secret pw (and 1 more) from the controller: 403"),
            "{e}"
        );

        let (files, _) = task_files(None);
        let e = files.prepare(&task("t4")).await.unwrap_err().to_string();
        assert!(e.contains("--controller URL"), "{e}");
    }

    #[tokio::test]
    async fn binds_outside_the_allowed_prefixes_should_reject_the_task() {
        let (files, host) = task_files(None);
        host.add_path("/srv/web", "/srv/web");
        host.add_path("/srv/link", "/etc");
        host.add_path("/srv", "/srv");
        let with = |source: &str| {
            let mut t = Task::new("t1", TaskSpec::default());
            t.spec.mounts = vec![Mount {
                type_: MountType::Bind,
                source: source.into(),
                target: "/web".into(),
                ..Default::default()
            }];
            t
        };
        let ok = files.prepare(&with("/srv/web")).await.unwrap();
        assert_eq!(ok.mounts[0].source, "/srv/web");
        drop(ok);
        let e = files.prepare(&with("/srv/link")).await.unwrap_err();
        assert!(
            matches!(&e, PrepareError::Rejected(m) if m.contains("resolved to /etc") && m.contains("--allow-bind /srv")),
            "{e}"
        );
        let e = files.prepare(&with("/nope")).await.unwrap_err();
        assert!(
            matches!(&e, PrepareError::Rejected(m) if m.contains("/nope")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn volumes_should_be_made_on_first_use_listed_and_removed_only_when_unused() {
        let (files, host) = task_files(None);
        let mut t = Task::new("t1", TaskSpec::default());
        t.spec.mounts = vec![Mount {
            type_: MountType::Volume,
            source: "data".into(),
            target: "/data".into(),
            ..Default::default()
        }];
        let prepared = files.prepare(&t).await.unwrap();
        assert_eq!(prepared.mounts[0].source, "/state/volumes/data/_data");
        drop(prepared);
        assert_eq!(
            host.calls(),
            vec![FilesCall::EnsureVolume("/state/volumes/data".into())]
        );
        let runtime = FakeRuntime::new();
        runtime
            .create(&ContainerSpec {
                id: "t1".into(),
                image: "busybox".into(),
                hostname: "api.1".into(),
                labels: BTreeMap::from([(LABEL_VOLUMES.to_string(), "data".to_string())]),
                ..Default::default()
            })
            .await
            .unwrap();
        let listed = files
            .volumes("node-1", &runtime.list().await.unwrap())
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].name.as_str(), listed[0].node.as_str()),
            ("data", "node-1")
        );
        assert_eq!(listed[0].used_by, vec!["t1".to_string()]);
        assert!(listed[0].created_at.is_some());
        let e = files
            .remove_volume("node-1", "data", &runtime)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "volume data is in use by task t1");
        runtime.delete("t1").await.unwrap();
        files
            .remove_volume("node-1", "data", &runtime)
            .await
            .unwrap();
        let e = files
            .remove_volume("node-1", "data", &runtime)
            .await
            .unwrap_err();
        assert!(matches!(e, VolumeError::NotFound { .. }), "{e}");
        assert!(files.volumes("node-1", &[]).unwrap().is_empty());
    }

    #[tokio::test]
    async fn garbage_collection_should_remove_payloads_of_tasks_without_a_container() {
        let (files, host) = task_files(Some(
            FakePayloads::new().secret("pw", b"a").config("conf", b"b"),
        ));
        let runtime = FakeRuntime::new();
        for id in ["kept", "gone"] {
            drop(files.prepare(&task(id)).await.unwrap());
        }
        runtime
            .create(&ContainerSpec {
                id: "kept".into(),
                image: "busybox".into(),
                hostname: "api.1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        // A start in flight holds collection off.
        let starting = files.prepare(&task("starting")).await.unwrap();
        files.collect_garbage(&runtime).await;
        assert_eq!(host.mounted_dirs().len(), 3);
        drop(starting);
        files.collect_garbage(&runtime).await;
        assert_eq!(
            host.mounted_dirs().into_iter().collect::<Vec<_>>(),
            vec![PathBuf::from("/state/payloads/kept")]
        );
    }
}
