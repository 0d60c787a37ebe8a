//! [`FakeRuntime`]: a `Send + Sync` in-memory [`ContainerRuntime`] that records every call,
//! for tests of the agent (inject it explicitly; nothing chooses it by `cfg!(test)`).
//!
//! It keeps the same state machine as the real runtime (create → start → exited/stopped →
//! delete; `AlreadyExists`, `NotFound`) and lets tests script failures: missing images,
//! a registry that is down, containers that exit at once, exec results, and containers that
//! die later ([`FakeRuntime::exit`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::api::ContainerRuntime;
use super::error::{validate_container_id, RuntimeError};
use super::labels::{LABEL_IMAGE, LABEL_MANAGED};
use super::reference::Reference;
use super::types::{
    ContainerInfo, ContainerSpec, ContainerState, ContainerStatus, ExecOutput, ImageConfig,
    ImageInfo,
};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `ensure_image(reference)`.
    EnsureImage(String),
    /// `create(spec)`.
    Create(Box<ContainerSpec>),
    /// `start(id)`.
    Start(String),
    /// `stop(id, grace)`.
    Stop(String, Duration),
    /// `delete(id)`.
    Delete(String),
    /// `list()`.
    List,
    /// `list_some(ids)`.
    ListSome(Vec<String>),
    /// `status(id)`.
    Status(String),
    /// `wait(id)`.
    Wait(String),
    /// `exec(id, argv)`.
    Exec(String, Vec<String>),
}

struct FakeContainer {
    spec: ContainerSpec,
    image_name: String,
    status: watch::Sender<ContainerStatus>,
    oom_killed: bool,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    containers: BTreeMap<String, FakeContainer>,
    pulled: HashSet<String>,
    missing_images: HashSet<String>,
    registry_down: bool,
    exit_on_start: HashMap<String, i32>,
    exec_results: HashMap<String, ExecOutput>,
    next_pid: u32,
}

/// The recording fake. See the module docs.
pub struct FakeRuntime {
    state: Mutex<State>,
    log_dir: PathBuf,
    /// Where `create` waits before it does anything (see [`FakeRuntime::meet_on_create`]).
    create_barrier: Mutex<Option<std::sync::Arc<tokio::sync::Barrier>>>,
    changes: watch::Sender<u64>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRuntime {
    /// A fake whose `log_path`s point under `/nonexistent/shoal-fake`.
    pub fn new() -> Self {
        FakeRuntime {
            state: Mutex::new(State {
                next_pid: 1000,
                ..Default::default()
            }),
            log_dir: PathBuf::from("/nonexistent/shoal-fake"),
            changes: watch::channel(0).0,
            create_barrier: Mutex::new(None),
        }
    }

    /// Points `log_path(id)` at `<dir>/<id>/container.log` (tests that write logs by hand).
    pub fn with_log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = dir.into();
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Makes every later `create` wait at `barrier` before it does anything, so a test can
    /// prove that something else runs at the same time (a barrier of 2 shared with
    /// `RecordingNetwork::meet_on_attach` opens only if both calls are in flight together).
    pub fn meet_on_create(&self, barrier: std::sync::Arc<tokio::sync::Barrier>) {
        *self
            .create_barrier
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(barrier);
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Makes `reference` (as written) fail with `image not found`.
    pub fn set_image_missing(&self, reference: &str) {
        self.lock().missing_images.insert(reference.to_string());
    }

    /// Makes pulls of images not yet pulled fail with "registry ... is not reachable".
    pub fn set_registry_down(&self, down: bool) {
        self.lock().registry_down = down;
    }

    /// Containers of `image` (as written) or with id `image` exit with `code` as soon as
    /// they start.
    pub fn set_exit_on_start(&self, image_or_id: &str, code: i32) {
        self.lock()
            .exit_on_start
            .insert(image_or_id.to_string(), code);
    }

    /// What `exec` in container `id` returns (default: exit 0, no output).
    pub fn set_exec_result(&self, id: &str, out: ExecOutput) {
        self.lock().exec_results.insert(id.to_string(), out);
    }

    /// Simulates the container's main process exiting with `code` (e.g. killed by hand).
    pub fn exit(&self, id: &str, code: i32) {
        if let Some(c) = self.lock().containers.get(id) {
            c.status.send_replace(ContainerStatus::exited(code));
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Simulates the kernel's OOM killer ending the container's main process (SIGKILL).
    pub fn oom_kill(&self, id: &str) {
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.oom_killed = true;
            c.status.send_replace(ContainerStatus::exited(137));
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Simulates a crash that lost the container entirely.
    pub fn remove(&self, id: &str) {
        self.lock().containers.remove(id);
    }

    /// The spec a container was created with.
    pub fn spec(&self, id: &str) -> Option<ContainerSpec> {
        self.lock().containers.get(id).map(|c| c.spec.clone())
    }

    /// Ids of all containers.
    pub fn ids(&self) -> Vec<String> {
        self.lock().containers.keys().cloned().collect()
    }

    fn pull(&self, st: &mut State, reference: &str) -> Result<ImageInfo, RuntimeError> {
        let r = Reference::parse(reference)?;
        let name = r.to_string();
        if st.missing_images.contains(reference) || st.missing_images.contains(&name) {
            return Err(RuntimeError::ImageNotFound {
                reference: reference.to_string(),
            });
        }
        if !st.pulled.contains(&name) {
            if st.registry_down {
                return Err(RuntimeError::RegistryUnreachable {
                    registry: r.registry.clone(),
                    reason: "connection refused".to_string(),
                });
            }
            st.pulled.insert(name.clone());
        }
        Ok(ImageInfo {
            digest: super::registry::sha256_digest(name.as_bytes()),
            chain_id: super::registry::sha256_digest(format!("chain {name}").as_bytes()),
            name,
            config: ImageConfig {
                cmd: vec!["sh".to_string()],
                env: vec!["PATH=/bin".to_string()],
                working_dir: "/".to_string(),
                ..Default::default()
            },
        })
    }
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn ensure_image(&self, reference: &str) -> Result<ImageInfo, RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::EnsureImage(reference.to_string()));
        self.pull(&mut st, reference)
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let barrier = self
            .create_barrier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(barrier) = barrier {
            barrier.wait().await;
        }
        let mut st = self.lock();
        st.calls.push(Call::Create(Box::new(spec.clone())));
        validate_container_id(&spec.id)?;
        if st.containers.contains_key(&spec.id) {
            return Err(RuntimeError::AlreadyExists {
                id: spec.id.clone(),
            });
        }
        let image = self.pull(&mut st, &spec.image)?;
        super::spec::process_args(spec, &image.config)?;
        let (tx, _) = watch::channel(ContainerStatus::CREATED);
        st.containers.insert(
            spec.id.clone(),
            FakeContainer {
                spec: spec.clone(),
                image_name: image.name,
                status: tx,
                oom_killed: false,
            },
        );
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<u32, RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::Start(id.to_string()));
        st.next_pid += 1;
        let pid = st.next_pid;
        let exit = {
            let c = st
                .containers
                .get(id)
                .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })?;
            st.exit_on_start
                .get(id)
                .or_else(|| st.exit_on_start.get(&c.spec.image))
                .copied()
        };
        let c = st.containers.get_mut(id).expect("checked above");
        let cur = *c.status.borrow();
        if cur.state == ContainerState::Running {
            return Ok(cur.pid.unwrap_or(pid));
        }
        // A new process, a new cgroup: its OOM count starts at zero.
        c.oom_killed = false;
        c.status.send_replace(match exit {
            Some(code) => ContainerStatus::exited(code),
            None => ContainerStatus::running(pid),
        });
        Ok(pid)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<Option<i32>, RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::Stop(id.to_string(), grace));
        let c = st
            .containers
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })?;
        let cur = *c.status.borrow();
        Ok(match cur.state {
            ContainerState::Created => None,
            ContainerState::Exited => cur.exit_code,
            _ => {
                // SIGTERM honoured: 128 + 15.
                c.status.send_replace(ContainerStatus::exited(143));
                Some(143)
            }
        })
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::Delete(id.to_string()));
        if let Some(c) = st.containers.remove(id) {
            if c.status.borrow().state == ContainerState::Running {
                c.status.send_replace(ContainerStatus::exited(137));
            }
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::List);
        Ok(infos(&st, |_| true))
    }

    async fn list_some(&self, ids: &[&str]) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::ListSome(
            ids.iter().map(|id| id.to_string()).collect(),
        ));
        Ok(infos(&st, |id| ids.contains(&id)))
    }

    async fn status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::Status(id.to_string()));
        st.containers
            .get(id)
            .map(|c| *c.status.borrow())
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })
    }

    async fn wait(&self, id: &str) -> Result<i32, RuntimeError> {
        let mut rx = {
            let mut st = self.lock();
            st.calls.push(Call::Wait(id.to_string()));
            st.containers
                .get(id)
                .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })?
                .status
                .subscribe()
        };
        loop {
            let cur = *rx.borrow_and_update();
            if cur.state == ContainerState::Exited {
                return Ok(cur.exit_code.unwrap_or(-1));
            }
            if rx.changed().await.is_err() {
                // Deleted while waiting: killed.
                return Ok(137);
            }
        }
    }

    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        _timeout: Duration,
        max_output: usize,
    ) -> Result<ExecOutput, RuntimeError> {
        let mut st = self.lock();
        st.calls.push(Call::Exec(id.to_string(), argv.to_vec()));
        let c = st
            .containers
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })?;
        if c.status.borrow().state != ContainerState::Running {
            return Err(RuntimeError::InvalidSpec {
                id: id.to_string(),
                reason: "exec needs a running container".to_string(),
            });
        }
        if let Some(out) = st.exec_results.get(id) {
            // Cut as a real runtime would.
            let cut = |b: &[u8]| {
                crate::runtime::capture::Capture {
                    kept: b[..b.len().min(max_output)].to_vec(),
                    total: b.len() as u64,
                    complete: true,
                }
                .into_output()
            };
            let (stdout, a) = cut(&out.stdout);
            let (stderr, b) = cut(&out.stderr);
            return Ok(ExecOutput {
                exit_code: out.exit_code,
                stdout,
                stderr,
                truncated: a || b,
            });
        }
        if argv.first().map(String::as_str) == Some("hostname") {
            let hostname = format!("{}\n", c.spec.hostname);
            return Ok(ExecOutput {
                exit_code: 0,
                stdout: hostname.into_bytes(),
                stderr: Vec::new(),
                truncated: false,
            });
        }
        Ok(ExecOutput::default())
    }

    async fn changed(&self) {
        let mut rx = self.changes.subscribe();
        let _ = rx.changed().await;
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.log_dir.join(id).join("container.log")
    }
}

/// What `list` says of the containers whose id `keep` accepts.
fn infos(st: &State, keep: impl Fn(&str) -> bool) -> Vec<ContainerInfo> {
    st.containers
        .iter()
        .filter(|(id, _)| keep(id))
        .map(|(id, c)| {
            let mut labels = c.spec.labels.clone();
            labels.insert(LABEL_MANAGED.to_string(), "true".to_string());
            labels.insert(LABEL_IMAGE.to_string(), c.spec.image.clone());
            ContainerInfo {
                id: id.clone(),
                image: c.image_name.clone(),
                labels,
                status: *c.status.borrow(),
                oom_killed: c.oom_killed,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::api::start_checked;
    use std::sync::Arc;

    fn spec(id: &str) -> ContainerSpec {
        ContainerSpec {
            id: id.into(),
            image: "localhost:5000/busybox:latest".into(),
            hostname: "api.1".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn fake_records_calls_and_keeps_the_lifecycle() {
        let rt = FakeRuntime::new();
        rt.create(&spec("c1")).await.unwrap();
        assert!(matches!(
            rt.create(&spec("c1")).await,
            Err(RuntimeError::AlreadyExists { .. })
        ));
        assert_eq!(rt.status("c1").await.unwrap(), ContainerStatus::CREATED);
        rt.start("c1").await.unwrap();
        assert_eq!(
            rt.status("c1").await.unwrap().state,
            ContainerState::Running
        );
        let out = rt
            .exec(
                "c1",
                &["hostname".to_string()],
                Duration::from_secs(1),
                1024,
            )
            .await
            .unwrap();
        assert_eq!(out.stdout, b"api.1\n");
        assert_eq!(
            rt.stop("c1", Duration::from_secs(1)).await.unwrap(),
            Some(143)
        );
        assert_eq!(rt.list().await.unwrap()[0].labels[LABEL_MANAGED], "true");
        rt.delete("c1").await.unwrap();
        rt.delete("c1").await.unwrap();
        assert!(matches!(
            rt.status("c1").await,
            Err(RuntimeError::NotFound { .. })
        ));
        let calls = rt.calls();
        assert!(matches!(calls[0], Call::Create(_)));
        assert!(calls.contains(&Call::Delete("c1".into())));
        assert_eq!(calls.last(), Some(&Call::Status("c1".into())));
    }

    #[tokio::test]
    async fn fake_scripts_image_and_registry_failures() {
        let rt = FakeRuntime::new();
        rt.set_image_missing("localhost:5000/nope:1");
        let e = rt.ensure_image("localhost:5000/nope:1").await.unwrap_err();
        assert_eq!(e.to_string(), "image not found: localhost:5000/nope:1");
        rt.ensure_image("localhost:5000/busybox:latest")
            .await
            .unwrap();
        rt.set_registry_down(true);
        // Already pulled: still fine.
        rt.ensure_image("localhost:5000/busybox").await.unwrap();
        let e = rt.ensure_image("localhost:5000/other").await.unwrap_err();
        assert!(e.is_temporary());
        assert_eq!(
            e.to_string(),
            "registry localhost:5000 is not reachable: connection refused"
        );
    }

    #[tokio::test]
    async fn start_checked_reports_containers_that_exit_at_once() {
        let rt: Arc<dyn ContainerRuntime> = Arc::new(FakeRuntime::new());
        let fake = FakeRuntime::new();
        fake.set_exit_on_start("bad", 3);
        let mut s = spec("bad");
        s.image = "localhost:5000/busybox:latest".into();
        fake.create(&s).await.unwrap();
        let e = start_checked(&fake, "bad", Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            matches!(e, RuntimeError::ExitedAtOnce { exit_code: 3, .. }),
            "{e}"
        );
        rt.create(&spec("good")).await.unwrap();
        start_checked(rt.as_ref(), "good", Duration::from_millis(100))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn wait_returns_when_the_container_exits() {
        let rt = Arc::new(FakeRuntime::new());
        rt.create(&spec("c1")).await.unwrap();
        rt.start("c1").await.unwrap();
        let waiter = {
            let rt = rt.clone();
            tokio::spawn(async move { rt.wait("c1").await })
        };
        tokio::task::yield_now().await;
        let changed = {
            let rt = rt.clone();
            tokio::spawn(async move { rt.changed().await })
        };
        tokio::task::yield_now().await;
        rt.exit("c1", 7);
        assert_eq!(waiter.await.unwrap().unwrap(), 7);
        changed.await.unwrap();
    }
}
