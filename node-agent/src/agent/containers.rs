//! [`ContainerTasks`]: the [`TaskRuntime`] over a [`ContainerRuntime`] (containerd, or the
//! runtime module's recording fake). One container per task, its id the task id, labelled
//! with the task, service and node so that [`TaskRuntime::list`] maps containers back to
//! tasks after a restart.
//!
//! Task networking: with [`ContainerTasks::with_network`], every container joins a namespace
//! made by [`NodeNetwork::setup`] (overlays, gateway, DNS server, VIP rules) after its image
//! is present, *while* the container is created (its spec names the namespace's path,
//! [`NodeNetwork::netns_path`]; the process starts only after both finished), and
//! [`NodeNetwork::teardown`] removes it once the container's process has exited, after it
//! is deleted, or when the create failed; a failed setup deletes the container this start
//! created (an exited container is kept for its logs, without networking). A task whose
//! networks are not known ([`NodeNetwork::precheck`]) gets no container. The network's background loop
//! runs as [`TaskRuntime::run_background`], over the caches the agent fills
//! ([`TaskRuntime::caches`]). Without it (unit tests of the runtime side) each
//! container gets a new network namespace with only loopback (`ContainerSpec::netns = None`).
//!
//! Task files: with [`ContainerTasks::with_files`], a task's secrets, configs, volumes, binds
//! and tmpfs mounts are made by [`TaskFiles::prepare`] before its namespace and container
//! (a refused bind or an undelivered secret costs neither), its payload tmpfs is removed
//! with its container, and leftovers are collected in the background.
//! `spec.containerLabels` become container labels (Shoal's own labels win).
//!
//! Health checks (`spec.healthcheck`, stored as a container label so they resume after an
//! agent restart) run through [`ContainerRuntime::exec`] while the container runs; their
//! result is [`ObservedTask::healthy`] (see [`super::health`]).
//!
//! Container exits are noticed without polling: after a start (and for every running
//! container found by a list) a waiter calls [`ContainerRuntime::wait`] and wakes the
//! converge loop through [`TaskRuntime::changed`].

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use shoal_api_types::{SeccompMode, Task};
use tokio::sync::Notify;

use super::health::{self, Health, Probe, LABEL_HEALTHCHECK};
use super::stages::Lap;

/// How long a stopping task waits to leave the Endpoints before SIGTERM regardless (the
/// controller may be down).
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
use super::network::NodeNetwork;
use super::task_runtime::{
    BackgroundContext, ClusterCaches, ObservedState, ObservedTask, Started, TaskError, TaskRuntime,
};
use crate::runtime::capture::HEALTH_OUTPUT_LIMIT;
use crate::runtime::{
    labels, ContainerInfo, ContainerRuntime, ContainerSpec, ContainerState, DnsConfig, ErrorClass,
    Limits, RuntimeError,
};
use crate::taskfiles::{plan::volume_names, PrepareError, TaskFiles};

pub use crate::runtime::labels::{LABEL_NODE, LABEL_SERVICE, LABEL_TASK, LABEL_VOLUMES};

/// Tasks as containers.
pub struct ContainerTasks {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Arc<dyn ContainerRuntime>,
    node: String,
    network: Option<Arc<NodeNetwork>>,
    files: Option<Arc<TaskFiles>>,
    exited: Notify,
    waiting: Mutex<HashSet<String>>,
    /// Health of tasks with a check, while its loop runs.
    health: Mutex<HashMap<String, bool>>,
    /// Tasks with a check that `start_task` is starting: a list that sees one running
    /// before its checks are registered reports it unhealthy (not as a task whose checks
    /// resume after an agent restart, which starts healthy).
    starting: Mutex<HashSet<String>>,
    /// Tasks stopped because their health check kept failing.
    /// Tasks stopped for failing their health check, with the last check's output.
    unhealthy: Mutex<HashMap<String, String>>,
}

impl ContainerTasks {
    /// Tasks of `node` run as containers of `runtime`.
    pub fn new(runtime: Arc<dyn ContainerRuntime>, node: impl Into<String>) -> Self {
        ContainerTasks {
            inner: Arc::new(Inner {
                runtime,
                node: node.into(),
                network: None,
                files: None,
                exited: Notify::new(),
                waiting: Mutex::new(HashSet::new()),
                health: Mutex::new(HashMap::new()),
                starting: Mutex::new(HashSet::new()),
                unhealthy: Mutex::new(Default::default()),
            }),
        }
    }

    /// Runs every task in a namespace of `network` (see the module docs). Call before the
    /// value is shared.
    pub fn with_network(mut self, network: Arc<NodeNetwork>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.network = Some(network);
        }
        self
    }

    /// Mounts every task's secrets, configs, volumes, binds and tmpfs through `files` (see
    /// the module docs). Call before the value is shared.
    pub fn with_files(mut self, files: Arc<TaskFiles>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.files = Some(files);
        }
        self
    }

    /// The task files, if any.
    pub fn files(&self) -> Option<&Arc<TaskFiles>> {
        self.inner.files.as_ref()
    }

    /// The task networking, if any.
    pub fn network(&self) -> Option<&Arc<NodeNetwork>> {
        self.inner.network.as_ref()
    }

    /// The container a task runs as.
    pub fn container_spec(&self, task: &Task) -> ContainerSpec {
        let addresses = task
            .spec
            .attachments
            .iter()
            .filter_map(|a| a.address.split('/').next()?.parse::<IpAddr>().ok())
            .collect();
        // The user's labels first: Shoal's own overwrite any of the same name.
        let mut labels = task.spec.container_labels.clone();
        labels.extend([
            (LABEL_TASK.to_string(), task.name().to_string()),
            (LABEL_SERVICE.to_string(), task.spec.service.clone()),
            (LABEL_NODE.to_string(), self.inner.node.clone()),
        ]);
        let volumes = volume_names(&task.spec);
        if !volumes.is_empty() {
            labels.insert(LABEL_VOLUMES.to_string(), volumes.join(","));
        }
        if let Some(check) = &task.spec.healthcheck {
            labels.insert(LABEL_HEALTHCHECK.to_string(), health::label(check));
        }
        let limits = &task.spec.resources.limits;
        ContainerSpec {
            id: task.name().to_string(),
            image: task.spec.image.clone(),
            hostname: task.spec.display_name(),
            command: task.spec.command.clone(),
            args: task.spec.args.clone(),
            env: task.spec.env.clone(),
            netns: None,
            addresses,
            // `search .`: no search domain. Without a search line, resolvers take the domain
            // part of the hostname (`1` for `api.1`) as one, and busybox's nslookup then asks
            // only for `api.1` when given `api` — the task, not the service's VIP.
            dns: DnsConfig {
                search: vec![".".into()],
                ..DnsConfig::default()
            },
            labels,
            user: task.spec.user.clone(),
            working_dir: task.spec.working_dir.clone(),
            read_only_root: task.spec.read_only_root_filesystem,
            cap_add: task.spec.cap_add.clone(),
            cap_drop: task.spec.cap_drop.clone(),
            seccomp_unconfined: task.spec.seccomp == SeccompMode::Unconfined,
            limits: Limits {
                memory: limits.memory.map(|m| m.bytes()),
                cpu_millis: limits.cpus.map(|c| c.millis()),
                pids: Some(task.spec.resources.pids_limit()),
            },
            // Filled by `start_task` from the task's files.
            mounts: Vec::new(),
        }
    }

    /// Wakes the converge loop when container `id` exits.
    fn wait_for_exit(&self, id: &str) {
        if !self
            .inner
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string())
        {
            return;
        }
        let (inner, id) = (self.inner.clone(), id.to_string());
        tokio::spawn(async move {
            let result = inner.runtime.wait(&id).await;
            tracing::debug!(container = %id, ?result, "container exited");
            // Networking lives as long as the task's process (as Docker tears a sandbox down
            // when its container stops): the exited container stays for its logs, but its
            // address, DNS server and links go now. Not on an error: containerd may be down
            // while the task still runs.
            if let (Ok(_), Some(network)) = (&result, &inner.network) {
                let _held = network.hold().await;
                network.teardown(&id).await;
            }
            inner
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            if result.is_ok() {
                inner
                    .health
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            }
            inner.exited.notify_one();
        });
    }
}

/// Most characters of a health check's output kept for the task's status message.
pub const HEALTH_MESSAGE_CHARS: usize = 512;

/// A health check's output for a status message: stdout then stderr on one line,
/// whitespace collapsed, at most [`HEALTH_MESSAGE_CHARS`] characters (the capture itself
/// held at most [`HEALTH_OUTPUT_LIMIT`] bytes of each).
pub fn health_message(stdout: &[u8], stderr: &[u8]) -> String {
    let text = format!(
        "{} {}",
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr)
    );
    let mut out = String::new();
    for (i, word) in text.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
        if out.chars().count() > HEALTH_MESSAGE_CHARS {
            let cut: String = out.chars().take(HEALTH_MESSAGE_CHARS).collect();
            return cut + "…";
        }
    }
    out
}

impl ContainerTasks {
    /// Runs the task's health check every interval while its container runs (see
    /// [`super::health`]); a change of health wakes the converge loop, which reports it.
    fn check_health(&self, id: &str, probe: Probe, initial: Health) {
        {
            let mut health = self.inner.health.lock().unwrap_or_else(|e| e.into_inner());
            if health.contains_key(id) {
                return;
            }
            health.insert(id.to_string(), initial.healthy);
        }
        let (inner, id) = (self.inner.clone(), id.to_string());
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut state = initial;
            let mut last_output = String::new();
            loop {
                let result = inner
                    .runtime
                    .exec(&id, &probe.command, probe.timeout, HEALTH_OUTPUT_LIMIT)
                    .await;
                let passed = match result {
                    Ok(out) => {
                        last_output = health_message(&out.stdout, &out.stderr);
                        out.exit_code == 0
                    }
                    Err(e) => {
                        let running = matches!(
                            inner.runtime.status(&id).await,
                            Ok(s) if s.state == ContainerState::Running
                        );
                        if !running {
                            break;
                        }
                        tracing::debug!(task = %id, error = %e, "health check could not run");
                        false
                    }
                };
                let in_start = started.elapsed() < probe.start_period;
                let changed = state.record(passed, in_start, probe.retries);
                if state.just_failed(probe.retries) {
                    // Unhealthy: the task fails, as in Swarm. Its container is stopped (it
                    // left the load balancer already: `healthy` is false) and the exit is
                    // reported with the reason; the controller replaces the task.
                    tracing::warn!(task = %id, failures = state.failures, "health check failing: stopping the task");
                    inner
                        .unhealthy
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id.clone(), std::mem::take(&mut last_output));
                    inner
                        .health
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id.clone(), false);
                    inner.exited.notify_one();
                    let _ = inner.runtime.stop(&id, Duration::from_secs(2)).await;
                    inner.exited.notify_one();
                    break;
                }
                if changed {
                    tracing::info!(task = %id, healthy = state.healthy, "health changed");
                    let mut health = inner.health.lock().unwrap_or_else(|e| e.into_inner());
                    if !health.contains_key(&id) {
                        break;
                    }
                    health.insert(id.clone(), state.healthy);
                    drop(health);
                    inner.exited.notify_one();
                }
                tokio::time::sleep(probe.interval).await;
                if !inner
                    .health
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(&id)
                {
                    break;
                }
            }
            inner
                .health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
    }

    fn health_of(&self, id: &str) -> Option<bool> {
        self.inner
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied()
    }
}

/// How a runtime error is reported on a task.
pub fn task_error(task: &str, e: RuntimeError) -> TaskError {
    match e.class() {
        ErrorClass::Rejected => TaskError::Rejected {
            task: task.to_string(),
            reason: e.to_string(),
        },
        ErrorClass::Failed => TaskError::Failed {
            task: task.to_string(),
            reason: e.to_string(),
        },
        ErrorClass::Unavailable => TaskError::Unavailable(e.to_string()),
    }
}

/// `fut` and how long it took.
async fn timed<T>(fut: impl std::future::Future<Output = T>) -> (T, Duration) {
    let at = tokio::time::Instant::now();
    let out = fut.await;
    (out, at.elapsed())
}

/// The error to report when both the create and the networking failed: the one that says
/// more about the task (rejected, then failed, then the runtime unavailable); the
/// networking's on a tie, as when it ran first.
fn graver(create: TaskError, network: TaskError) -> TaskError {
    let rank = |e: &TaskError| match e {
        TaskError::Rejected { .. } => 2,
        TaskError::Failed { .. } => 1,
        TaskError::Unavailable(_) => 0,
    };
    if rank(&create) > rank(&network) {
        create
    } else {
        network
    }
}

/// How a task-files error is reported on a task.
fn files_error(task: &str, e: PrepareError) -> TaskError {
    match e {
        PrepareError::Rejected(reason) => TaskError::Rejected {
            task: task.to_string(),
            reason,
        },
        PrepareError::Failed(reason) => TaskError::Failed {
            task: task.to_string(),
            reason,
        },
    }
}

impl ContainerTasks {
    /// The tasks `containers` run, as the converge loop plans them; resumes the exit
    /// waiters and health checks of running ones (after an agent restart).
    fn observed(&self, containers: Vec<ContainerInfo>) -> Vec<ObservedTask> {
        let mut observed = Vec::with_capacity(containers.len());
        for c in containers {
            let state = match c.status.state {
                ContainerState::Created => ObservedState::Created,
                // Unknown: containerd could not tell this time; assume it still runs rather
                // than failing or restarting a task on a hiccup. The waiter reports its exit.
                ContainerState::Running | ContainerState::Paused | ContainerState::Unknown => {
                    ObservedState::Running
                }
                ContainerState::Exited => ObservedState::Exited {
                    exit_code: c.status.exit_code.unwrap_or(-1),
                },
            };
            if state == ObservedState::Running {
                self.wait_for_exit(&c.id);
            }
            let id = labels::get(&c.labels, LABEL_TASK)
                .cloned()
                .unwrap_or_else(|| c.id.clone());
            let probe =
                labels::get(&c.labels, LABEL_HEALTHCHECK).and_then(|l| Probe::from_label(l));
            let being_started = self
                .inner
                .starting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&c.id);
            let healthy = match (&probe, state) {
                (None, _) => None,
                (Some(_), ObservedState::Running) if being_started => Some(false),
                (Some(probe), ObservedState::Running) => {
                    // Checks of a task that survived an agent restart resume here.
                    self.check_health(&c.id, probe.clone(), Health::resumed());
                    self.health_of(&c.id)
                }
                (Some(_), _) => Some(false),
            };
            let stopped_because = self
                .inner
                .unhealthy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&c.id)
                .map(|output| {
                    let mut why =
                        "task unhealthy: its health check kept failing, so it was stopped"
                            .to_string();
                    if !output.is_empty() {
                        why.push_str(&format!(" (last output: {output})"));
                    }
                    why
                });
            observed.push(ObservedTask {
                id,
                container_id: c.id,
                state,
                healthy,
                stopped_because,
                oom_killed: c.oom_killed,
            });
        }
        observed
    }
}

#[async_trait]
impl TaskRuntime for ContainerTasks {
    fn name(&self) -> &'static str {
        "containerd"
    }

    async fn start_task(&self, task: &Task) -> Result<Started, TaskError> {
        let id = task.name();
        let runtime = &self.inner.runtime;
        let mut spec = self.container_spec(task);
        let mut lap = Lap::start();
        let _held = match &self.inner.network {
            Some(network) => {
                let held = network.hold().await;
                lap.lap("hold");
                // The image first: a wrong name must not cost a namespace.
                runtime
                    .ensure_image(&task.spec.image)
                    .await
                    .map_err(|e| task_error(id, e))?;
                lap.lap("image");
                Some(held)
            }
            None => None,
        };
        // Then the files: a refused bind or an undelivered secret costs no namespace either.
        let prepared = match &self.inner.files {
            Some(files) => {
                let prepared = files.prepare(task).await.map_err(|e| files_error(id, e))?;
                spec.mounts = prepared.mounts.clone();
                lap.lap("files");
                Some(prepared)
            }
            None => None,
        };
        let release = || {
            if let Some(files) = &self.inner.files {
                if let Err(e) = files.release(id) {
                    tracing::warn!(task = %id, error = %e, "cannot remove the task's payload tmpfs");
                }
            }
        };
        // The container and the task's networking are made concurrently: the container's
        // spec only names the namespace path (runc enters it at start), so neither waits for
        // the other; the process starts once both are done. Whichever fails, what the other
        // made is removed again.
        let (created, set_up) = match &self.inner.network {
            Some(network) => {
                // Cache reads only: a task on an unknown network costs no container.
                if let Err(e) = network.precheck(task) {
                    drop(prepared);
                    release();
                    return Err(e);
                }
                let netns = network.netns_path(id);
                spec.netns = Some(netns.clone());
                let create = timed(runtime.create(&spec));
                let mut net_lap = Lap::start();
                let setup = timed(network.setup_timed(task, &mut net_lap));
                let ((created, create_took), (set_up, network_took)) = tokio::join!(create, setup);
                lap.lap("setup");
                lap.within("network", network_took);
                lap.within("create", create_took);
                for (name, took) in net_lap.into_stages().get() {
                    lap.within(name, Duration::from_secs_f64(took / 1000.0));
                }
                // What the container was created with must be what was made (a bug if not:
                // handled as a failed setup whose networking exists).
                let set_up = match set_up {
                    Ok(path) if path != netns => Some(Err((
                        TaskError::Failed {
                            task: id.to_string(),
                            reason: format!(
                                "network namespace made at {}, expected at {}",
                                path.display(),
                                netns.display()
                            ),
                        },
                        true,
                    ))),
                    Ok(_) => Some(Ok(())),
                    // A failed setup removed what it made, or left it to the reconcile.
                    Err(e) => Some(Err((e, false))),
                };
                (created, set_up)
            }
            None => {
                let created = runtime.create(&spec).await;
                lap.lap("create");
                (created, None)
            }
        };
        drop(prepared);
        // Made by this call (not a half-created container found from an earlier attempt).
        let made = created.is_ok();
        let created = match created {
            Ok(()) | Err(RuntimeError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(task_error(id, e)),
        };
        match (created, set_up) {
            (Ok(()), None | Some(Ok(()))) => {}
            (Ok(()), Some(Err((e, made_network)))) => {
                if made {
                    if let Err(de) = runtime.delete(id).await {
                        tracing::warn!(task = %id, error = %de, "cannot delete the container of a task whose networking failed; the next round removes it");
                    }
                }
                if let (true, Some(network)) = (made_network, &self.inner.network) {
                    network.teardown(id).await;
                }
                release();
                return Err(e);
            }
            (Err(e), set_up) => {
                let (e, made_network) = match set_up {
                    None => (e, false),
                    Some(Ok(())) => (e, true),
                    Some(Err((ne, made_network))) => (graver(e, ne), made_network),
                };
                if let (true, Some(network)) = (made_network, &self.inner.network) {
                    network.teardown(id).await;
                }
                release();
                return Err(e);
            }
        }
        // A process that exits at once is reported from the next list, with its exit code.
        let probe = task.spec.healthcheck.as_ref().and_then(Probe::new);
        let starting = || {
            self.inner
                .starting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        if probe.is_some() {
            starting().insert(id.to_string());
        }
        let started = runtime.start(id).await;
        lap.lap("start");
        if started.is_ok() {
            self.wait_for_exit(id);
            if let Some(probe) = probe {
                self.check_health(id, probe, Health::starting());
            }
        }
        starting().remove(id);
        started.map_err(|e| task_error(id, e))?;
        Ok(Started {
            container_id: id.to_string(),
            stages: lap.into_stages(),
        })
    }

    async fn stop_task(&self, id: &str, grace: Duration) -> Result<(), TaskError> {
        // Out of DNS and the VIPs first, on every node; only then SIGTERM.
        if let Some(network) = &self.inner.network {
            if !network.drain(id, DRAIN_LIMIT).await {
                tracing::warn!(task = %id, "still listed as ready after {DRAIN_LIMIT:?}; stopping anyway");
            }
        }
        match self.inner.runtime.stop(id, grace).await {
            Ok(_) | Err(RuntimeError::NotFound { .. }) => Ok(()),
            Err(e) => Err(task_error(id, e)),
        }
    }

    async fn remove_task(&self, id: &str) -> Result<(), TaskError> {
        self.inner
            .unhealthy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let _held = match &self.inner.network {
            Some(network) => Some(network.hold().await),
            None => None,
        };
        self.inner
            .runtime
            .delete(id)
            .await
            .map_err(|e| task_error(id, e))?;
        if let Some(network) = &self.inner.network {
            network.teardown(id).await;
        }
        if let Some(files) = &self.inner.files {
            // Left for garbage collection if it fails: the container is gone already.
            if let Err(e) = files.release(id) {
                tracing::warn!(task = %id, error = %e, "cannot remove the task's payload tmpfs");
            }
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ObservedTask>, TaskError> {
        let containers = self
            .inner
            .runtime
            .list()
            .await
            .map_err(|e| TaskError::Unavailable(e.to_string()))?;
        Ok(self.observed(containers))
    }

    /// Only the containers of `ids` (a task's container is named after it): a round that
    /// plans a few changed tasks costs a few shim round trips, not a listing of every
    /// container, which under load took 100–400 ms and held up every round behind it.
    async fn observe(&self, ids: &[&str]) -> Result<Vec<ObservedTask>, TaskError> {
        let containers = self
            .inner
            .runtime
            .list_some(ids)
            .await
            .map_err(|e| TaskError::Unavailable(e.to_string()))?;
        Ok(self.observed(containers))
    }

    async fn changed(&self) {
        self.inner.exited.notified().await
    }

    fn caches(&self) -> Option<ClusterCaches> {
        self.inner.network.as_ref().map(|n| n.caches())
    }

    async fn run_background(&self, ctx: BackgroundContext) {
        let gc = self.inner.files.clone().map(|files| {
            let (runtime, every, shutdown) =
                (self.inner.runtime.clone(), ctx.resync, ctx.shutdown.clone());
            async move { files.run_gc(runtime, every, shutdown).await }
        });
        let network = async {
            if let Some(network) = &self.inner.network {
                network.clone().run(self.inner.runtime.clone(), ctx).await
            }
        };
        match gc {
            Some(gc) => {
                tokio::join!(network, gc);
            }
            None => network.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::{Call, FakeRuntime};
    use shoal_api_types::{TaskAttachment, TaskSpec};

    fn task(id: &str, image: &str) -> Task {
        Task::new(
            id,
            TaskSpec {
                service: "api".into(),
                slot: Some(2),
                node: Some("node-1".into()),
                image: image.into(),
                args: vec!["httpd".into()],
                attachments: vec![TaskAttachment {
                    network: "appnet".into(),
                    address: "10.0.1.5/24".into(),
                    mac: "02:42:0a:00:01:05".into(),
                    aliases: vec![],
                }],
                ..Default::default()
            },
        )
    }

    fn tasks() -> (ContainerTasks, Arc<FakeRuntime>) {
        let fake = Arc::new(FakeRuntime::new());
        (ContainerTasks::new(fake.clone(), "node-1"), fake)
    }

    #[tokio::test]
    async fn container_settings_and_limits_should_come_from_the_task() {
        use shoal_api_types::{Cpus, Memory};
        let (tasks, fake) = tasks();
        let mut t = task("t1", "busybox");
        t.spec.user = "1000:1000".into();
        t.spec.working_dir = "/srv".into();
        t.spec.read_only_root_filesystem = true;
        t.spec.cap_add = vec!["NET_ADMIN".into()];
        t.spec.cap_drop = vec!["ALL".into()];
        t.spec.seccomp = SeccompMode::Unconfined;
        t.spec.resources.limits.memory = Some(Memory(32 << 20));
        t.spec.resources.limits.cpus = Some(Cpus(1500));
        tasks.start_task(&t).await.unwrap();
        let spec = fake.spec("t1").unwrap();
        assert_eq!(
            (spec.user.as_str(), spec.working_dir.as_str()),
            ("1000:1000", "/srv")
        );
        assert!(spec.read_only_root && spec.seccomp_unconfined);
        assert_eq!(
            (spec.cap_add, spec.cap_drop),
            (t.spec.cap_add, t.spec.cap_drop)
        );
        assert_eq!(
            spec.limits,
            Limits {
                memory: Some(32 << 20),
                cpu_millis: Some(1500),
                pids: Some(shoal_api_types::resources::DEFAULT_PIDS_LIMIT),
            }
        );
        // Defaults: confined, with the default pids limit.
        tasks.start_task(&task("t2", "busybox")).await.unwrap();
        let spec = fake.spec("t2").unwrap();
        assert!(!spec.seccomp_unconfined && !spec.read_only_root);
        assert_eq!(spec.limits.pids, Some(1024));
    }

    #[tokio::test]
    async fn observing_a_few_tasks_should_look_up_only_their_containers() {
        let (tasks, fake) = tasks();
        tasks.start_task(&task("t1", "busybox")).await.unwrap();
        tasks.start_task(&task("t2", "busybox")).await.unwrap();
        let before = fake.calls().len();
        let seen = tasks.observe(&["t2", "gone"]).await.unwrap();
        assert_eq!(seen, vec![ObservedTask::running("t2", "t2")]);
        assert_eq!(
            fake.calls()[before..],
            [Call::ListSome(vec!["t2".into(), "gone".into()])],
            "no listing of every container"
        );
    }

    #[tokio::test]
    async fn oom_kills_should_be_observed_on_the_exited_task() {
        let (tasks, fake) = tasks();
        tasks.start_task(&task("t1", "busybox")).await.unwrap();
        fake.oom_kill("t1");
        let listed = tasks.list().await.unwrap();
        assert_eq!(listed[0].state, ObservedState::Exited { exit_code: 137 });
        assert!(listed[0].oom_killed);
    }

    #[tokio::test]
    async fn start_should_create_a_labelled_container_named_after_the_task_and_start_it() {
        let (tasks, fake) = tasks();
        let started = tasks
            .start_task(&task("t1", "localhost:5000/busybox:latest"))
            .await
            .unwrap();
        assert_eq!(started.container_id, "t1");
        let spec = fake.spec("t1").unwrap();
        assert_eq!(spec.hostname, "api.2");
        assert_eq!(spec.args, vec!["httpd".to_string()]);
        assert_eq!(spec.addresses, vec!["10.0.1.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(spec.labels[LABEL_TASK], "t1");
        assert_eq!(spec.labels[LABEL_NODE], "node-1");
        assert!(fake.calls().contains(&Call::Start("t1".into())));
        let listed = tasks.list().await.unwrap();
        assert_eq!(listed, vec![ObservedTask::running("t1", "t1")]);
    }

    #[tokio::test]
    async fn start_should_resume_a_half_created_container() {
        let (tasks, fake) = tasks();
        let t = task("t1", "busybox");
        fake.create(&tasks.container_spec(&t)).await.unwrap();
        assert_eq!(tasks.list().await.unwrap()[0].state, ObservedState::Created);
        tasks.start_task(&t).await.unwrap();
        assert_eq!(tasks.list().await.unwrap()[0].state, ObservedState::Running);
    }

    #[tokio::test]
    async fn errors_should_be_classified_for_the_task_status() {
        let (tasks, fake) = tasks();
        fake.set_image_missing("localhost:5000/nope:1");
        let err = tasks
            .start_task(&task("t1", "localhost:5000/nope:1"))
            .await
            .unwrap_err();
        assert!(matches!(&err, TaskError::Rejected { .. }), "{err:?}");
        assert_eq!(err.reason(), "image not found: localhost:5000/nope:1");
        fake.set_registry_down(true);
        let err = tasks
            .start_task(&task("t2", "localhost:5000/other:1"))
            .await
            .unwrap_err();
        assert!(matches!(&err, TaskError::Failed { .. }), "{err:?}");
        assert!(err.reason().contains("not reachable"), "{}", err.reason());
    }

    #[tokio::test]
    async fn exits_should_wake_the_converge_loop_and_be_listed_with_their_code() {
        let (tasks, fake) = tasks();
        tasks.start_task(&task("t1", "busybox")).await.unwrap();
        let changed = tasks.changed();
        fake.exit("t1", 3);
        tokio::time::timeout(Duration::from_secs(10), changed)
            .await
            .expect("woken by the exit");
        assert_eq!(
            tasks.list().await.unwrap(),
            vec![ObservedTask::exited("t1", "t1", 3)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn health_checks_should_flip_the_observed_health_and_wake_the_loop() {
        use crate::runtime::ExecOutput;
        use shoal_api_types::HealthCheck;
        let (tasks, fake) = tasks();
        let mut t = task("t1", "busybox");
        t.spec.healthcheck = Some(HealthCheck {
            command: vec!["true".into()],
            interval_seconds: Some(1),
            retries: Some(2),
            ..Default::default()
        });
        tasks.start_task(&t).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), tasks.changed())
            .await
            .expect("woken when the first check passes");
        assert_eq!(tasks.list().await.unwrap()[0].healthy, Some(true));
        fake.set_exec_result(
            "t1",
            ExecOutput {
                exit_code: 1,
                ..Default::default()
            },
        );
        tokio::time::timeout(Duration::from_secs(5), tasks.changed())
            .await
            .expect("woken when the task turns unhealthy");
        assert_eq!(tasks.list().await.unwrap()[0].healthy, Some(false));
        let execs = fake
            .calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Exec(id, argv) if id == "t1" && argv == &["true"]))
            .count();
        assert!(execs >= 3, "{execs} checks");
        // A task without a check reports no health.
        tasks.start_task(&task("t2", "busybox")).await.unwrap();
        let listed = tasks.list().await.unwrap();
        assert_eq!(listed.iter().find(|o| o.id == "t2").unwrap().healthy, None);
    }

    #[tokio::test]
    async fn a_checked_task_seen_running_while_it_starts_should_be_unhealthy() {
        use crate::runtime::ContainerRuntime;
        use shoal_api_types::HealthCheck;
        let (tasks, fake) = tasks();
        let mut t = task("t1", "busybox");
        t.spec.healthcheck = Some(HealthCheck {
            command: vec!["false".into()],
            ..Default::default()
        });
        // The moment between the container's start and its checks' registration, as a
        // converge round's list sees it.
        fake.create(&tasks.container_spec(&t)).await.unwrap();
        tasks.inner.starting.lock().unwrap().insert("t1".into());
        fake.start("t1").await.unwrap();
        assert_eq!(
            tasks.list().await.unwrap()[0].healthy,
            Some(false),
            "no check has passed: not healthy (not a task whose checks resume)"
        );
    }

    #[tokio::test]
    async fn container_labels_should_carry_the_users_labels_under_shoals_own() {
        use shoal_api_types::service::{Mount, MountType};
        let (tasks, _) = tasks();
        let mut t = task("t1", "busybox");
        t.spec.container_labels = std::collections::BTreeMap::from([
            ("com.example.team".to_string(), "web".to_string()),
            (LABEL_TASK.to_string(), "spoofed".to_string()),
        ]);
        t.spec.mounts = vec![Mount {
            type_: MountType::Volume,
            source: "data".into(),
            target: "/data".into(),
            ..Default::default()
        }];
        let spec = tasks.container_spec(&t);
        assert_eq!(spec.labels["com.example.team"], "web");
        assert_eq!(spec.labels[LABEL_TASK], "t1");
        assert_eq!(spec.labels[LABEL_VOLUMES], "data");
    }

    #[tokio::test]
    async fn a_task_with_a_secret_should_mount_it_and_lose_it_with_its_container() {
        use crate::taskfiles::{FakePayloads, RecordingFiles, TaskFilesConfig};
        use shoal_api_types::service::{Mount, MountType, SecretReference};
        let fake = Arc::new(FakeRuntime::new());
        let host = Arc::new(RecordingFiles::new());
        let files = TaskFiles::new(TaskFilesConfig::new("/state"), host.clone())
            .with_source(Arc::new(FakePayloads::new().secret("pw", b"hunter2")));
        let tasks = ContainerTasks::new(fake.clone(), "node-1").with_files(Arc::new(files));
        let mut t = task("t1", "busybox");
        t.spec.secrets = vec![SecretReference {
            source: "pw".into(),
            mode: 0o444,
            ..Default::default()
        }];
        tasks.start_task(&t).await.unwrap();
        let spec = fake.spec("t1").unwrap();
        assert_eq!(spec.mounts.len(), 1);
        assert_eq!(spec.mounts[0].destination, "/run/secrets");
        assert_eq!(spec.mounts[0].source, "/state/payloads/t1/secrets");
        let dir = std::path::Path::new("/state/payloads/t1");
        assert!(host.mounted(dir).is_some());
        tasks.stop_task("t1", Duration::from_secs(1)).await.unwrap();
        assert!(host.mounted(dir).is_some(), "kept while the container is");
        tasks.remove_task("t1").await.unwrap();
        assert!(host.mounted(dir).is_none());

        // A refused bind: rejected before any container.
        let mut t = task("t2", "busybox");
        t.spec.mounts = vec![Mount {
            type_: MountType::Bind,
            source: "/etc".into(),
            target: "/host-etc".into(),
            ..Default::default()
        }];
        host.add_path("/etc", "/etc");
        let e = tasks.start_task(&t).await.unwrap_err();
        assert!(matches!(&e, TaskError::Rejected { .. }), "{e:?}");
        assert!(e.reason().contains("--allow-bind"), "{}", e.reason());
        assert!(fake.spec("t2").is_none());
    }

    #[tokio::test]
    async fn stop_and_remove_should_be_idempotent() {
        let (tasks, fake) = tasks();
        tasks.start_task(&task("t1", "busybox")).await.unwrap();
        tasks.stop_task("t1", Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            tasks.list().await.unwrap(),
            vec![ObservedTask::exited("t1", "t1", 143)]
        );
        tasks.stop_task("t1", Duration::from_secs(1)).await.unwrap();
        tasks.remove_task("t1").await.unwrap();
        tasks.remove_task("t1").await.unwrap();
        tasks.stop_task("t1", Duration::from_secs(1)).await.unwrap();
        assert!(fake.ids().is_empty());
    }
}
