//! The agent's HTTP server: what the API server asks of one node's containers.
//!
//! ```text
//! POST /v1/tasks/{id}/exec                {"argv": [...], "timeoutSeconds": 30}
//!                                         -> {"exitCode": 3, "stdout": "...", "stderr": "...",
//!                                             "truncated": true}  (each stream: its first
//!                                             1 MiB, then a marker line; the rest dropped)
//! GET  /v1/tasks/{id}/logs?follow&tail=N  the container's log file as text/plain
//! GET  /healthz
//! ```
//! and this node's volumes ([`volumes`]: `GET /v1/volumes`, `DELETE /v1/volumes/{name}`),
//! and `GET /v1/check`: the node's audit ([`crate::agent::NodeCheck`]) as a
//! [`CheckReport`](shoal_api_types::CheckReport) (501 without one, 503 when the agent cannot
//! tell yet).
//!
//! `{id}` is the task id, which is also the container id ([`crate::agent::ContainerTasks`]).
//! A task without a container here is 404, one whose container does not run is 409 for
//! exec; a hollow node (no container runtime) answers 501. Errors are
//! [`Status`](shoal_api_types::Status) JSON, as the API server's are.
//!
//! Authentication: only the controller talks to agents. With an identity
//! ([`Transport::Tls`]) the server speaks TLS with the node's certificate and requires a
//! client certificate of the cluster CA (no certificate, or one of another CA: the
//! handshake fails); a request whose certificate's CN is not [`CONTROLLER_CN`] (another
//! node, the hollow fleet) is 403. The certificate can be replaced while serving
//! (renewal, [`Reloadable::set`]); connections accepted afterwards get the new one.
//! [`Transport::Plain`] (`--insecure`: benchmarks' baseline, old tests) serves plain HTTP
//! to anyone.
//!
//! Logs: the runtime appends the container's stdout and stderr to one file
//! ([`ContainerRuntime::log_path`]), rotated into `<log>.1`, `<log>.2`, ... by size
//! ([`crate::runtime::logs`]); a read covers the rotated files oldest first, then the current
//! one. `tail=N` starts N lines before the end (across files); `follow=true` keeps reading as
//! the file grows, also across a rotation, until the container has exited or is gone (then
//! what is left is sent and the stream ends) or the client disconnects.
//!
//! Build then spawn: [`AgentServer::bind`] binds the socket (all fallible setup);
//! [`AgentServer::spawn`] serves until its handle shuts it down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use shoal_api_types::{ExecRequest, ExecResponse, LogOptions, Status};
use shoal_pki::{PeerIdentity, Reloadable};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::agent::NodeCheck;
use crate::runtime::capture::EXEC_OUTPUT_LIMIT;
use crate::runtime::{logs, ContainerRuntime, ContainerState, ExecOutput, RuntimeError};
use crate::taskfiles::TaskFiles;

mod volumes;

/// How often a followed log file is checked for growth.
pub const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// The message of every container request on a hollow node.
pub const HOLLOW: &str = "hollow nodes run no containers";

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address is not `host:port`.
    #[error("--listen: {listen:?} is not an address (give host:port, e.g. 127.0.0.1:7801)")]
    InvalidListen {
        /// What was given.
        listen: String,
    },
    /// The socket could not be bound.
    #[error("cannot listen on {listen}: {source}")]
    Bind {
        /// The address.
        listen: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The CN of the only client certificate the agent serves: the controllers'.
pub const CONTROLLER_CN: &str = "shoal-controller";

/// How the server talks to its clients.
#[derive(Clone)]
pub enum Transport {
    /// Plain HTTP, no authentication (`--insecure`).
    Plain,
    /// TLS with a (replaceable) config that requires client certificates of the cluster
    /// CA ([`crate::identity::NodeIdentity::server_config`]); only [`CONTROLLER_CN`] may
    /// call.
    Tls(Arc<Reloadable>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Plain => "Plain",
            Transport::Tls(_) => "Tls",
        })
    }
}

/// What the handlers share.
#[derive(Clone)]
struct ServerState {
    node: String,
    runtime: Option<Arc<dyn ContainerRuntime>>,
    volumes: Option<Arc<TaskFiles>>,
    check: Option<Arc<NodeCheck>>,
}

/// How the server runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The node's name (for messages).
    pub node: String,
    /// Where to listen (`host:port`; port 0 picks one).
    pub listen: String,
}

/// A bound, not yet serving, agent server.
pub struct AgentServer {
    listener: tokio::net::TcpListener,
    state: ServerState,
    transport: Transport,
}

impl std::fmt::Debug for AgentServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentServer")
            .field("node", &self.state.node)
            .field("listen", &self.listener.local_addr().ok())
            .field("transport", &self.transport)
            .finish()
    }
}

impl AgentServer {
    /// Binds `config.listen`. `runtime` is the node's container runtime; `None` for a
    /// hollow node (exec and logs answer 501).
    pub async fn bind(
        config: &ServerConfig,
        runtime: Option<Arc<dyn ContainerRuntime>>,
        transport: Transport,
    ) -> Result<AgentServer, ServerError> {
        let addr: SocketAddr = config
            .listen
            .parse()
            .map_err(|_| ServerError::InvalidListen {
                listen: config.listen.clone(),
            })?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                listen: config.listen.clone(),
                source,
            })?;
        Ok(AgentServer {
            listener,
            state: ServerState {
                node: config.node.clone(),
                runtime,
                volumes: None,
                check: None,
            },
            transport,
        })
    }

    /// Serves this node's volumes from `files` (`/v1/volumes`).
    pub fn with_volumes(mut self, files: Arc<TaskFiles>) -> Self {
        self.state.volumes = Some(files);
        self
    }

    /// Serves the node's audit (`/v1/check`).
    pub fn with_check(mut self, check: Arc<NodeCheck>) -> Self {
        self.state.check = Some(check);
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// What to publish as the Node's `status.agentEndpoint`: the bound address, with an
    /// unspecified IP (`0.0.0.0`) replaced by the node's `address`.
    pub fn endpoint(&self, address: &str) -> String {
        endpoint_for(self.local_addr(), address)
    }

    /// Serves until the handle shuts it down (or is dropped).
    pub fn spawn(self) -> ServerHandle {
        let (tx, mut rx) = watch::channel(false);
        let listener = self.listener;
        let stop = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let task = match self.transport {
            Transport::Plain => {
                let app = router(self.state, false);
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .await
                    {
                        tracing::error!(error = %e, "agent server failed");
                    }
                })
            }
            Transport::Tls(tls) => {
                let app = router(self.state, true);
                tokio::spawn(async move {
                    if let Err(e) = shoal_pki::serve(listener, tls, app, stop).await {
                        tracing::error!(error = %e, "agent server failed");
                    }
                })
            }
        };
        ServerHandle {
            shutdown: tx,
            task: Some(task),
        }
    }
}

/// `addr` as others reach it: an unspecified IP becomes `address`.
pub fn endpoint_for(addr: SocketAddr, address: &str) -> String {
    if addr.ip().is_unspecified() {
        match address.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, addr.port()).to_string(),
            Err(_) => format!("{address}:{}", addr.port()),
        }
    } else {
        addr.to_string()
    }
}

/// A serving agent server. Dropping it stops it abruptly.
pub struct ServerHandle {
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle").finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// Stops accepting, lets open requests finish (log follows end with the connection),
    /// and waits at most a few seconds for them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(3), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The agent's routes over `runtime` (`None`: hollow), as served over plain HTTP (tests).
pub fn test_router(node: &str, runtime: Option<Arc<dyn ContainerRuntime>>) -> Router {
    test_router_with(node, runtime, None)
}

/// [`test_router`] serving the volumes of `volumes`.
pub fn test_router_with(
    node: &str,
    runtime: Option<Arc<dyn ContainerRuntime>>,
    volumes: Option<Arc<TaskFiles>>,
) -> Router {
    let state = ServerState {
        node: node.to_string(),
        runtime,
        volumes,
        check: None,
    };
    router(state, false)
}

/// The routes; with `controller_only`, `/v1` requests need the controller's certificate.
fn router(state: ServerState, controller_only: bool) -> Router {
    let v1 = Router::new()
        .route("/v1/tasks/{id}/exec", post(exec))
        .route("/v1/tasks/{id}/logs", get(logs))
        .route("/v1/volumes", get(list_volumes))
        .route("/v1/volumes/{name}", delete(remove_volume))
        .route("/v1/check", get(check_node));
    let v1 = if controller_only {
        v1.route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            controller_only_layer,
        ))
    } else {
        v1
    };
    v1.route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { error(Status::new(404, "NotFound", "no such route")) })
        .with_state(state)
}

fn error(status: Status) -> Response {
    let code = StatusCode::from_u16(status.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(status)).into_response()
}

/// Whether a request's verified client certificate may call the agent: 401 without one
/// (the TLS layer already requires it), 403 for any CN but the controllers'.
pub fn check_caller(node: &str, peer: Option<&PeerIdentity>) -> Result<(), Status> {
    match peer {
        None => Err(Status::new(
            401,
            "Unauthorized",
            format!(
                "agent of node {node}: requests need a client certificate of the cluster CA \
                 with CN {CONTROLLER_CN}"
            ),
        )),
        Some(p) if p.common_name == CONTROLLER_CN => Ok(()),
        Some(p) => Err(Status::new(
            403,
            "Forbidden",
            format!(
                "agent of node {node}: {:?} may not call node agents; only {CONTROLLER_CN} may",
                p.common_name
            ),
        )),
    }
}

async fn controller_only_layer(
    State(state): State<ServerState>,
    req: Request,
    next: Next,
) -> Response {
    match check_caller(&state.node, req.extensions().get::<PeerIdentity>()) {
        Ok(()) => next.run(req).await,
        Err(status) => error(status),
    }
}

fn runtime(state: &ServerState) -> Result<Arc<dyn ContainerRuntime>, Status> {
    state
        .runtime
        .clone()
        .ok_or_else(|| Status::new(501, "NotImplemented", HOLLOW))
}

fn runtime_error(state: &ServerState, id: &str, e: RuntimeError) -> Status {
    match e {
        RuntimeError::NotFound { .. } => Status::new(
            404,
            "NotFound",
            format!("task {id} has no container on node {}", state.node),
        ),
        RuntimeError::Timeout { after, .. } => Status::new(
            504,
            "GatewayTimeout",
            format!("the command in task {id} did not finish within {after:?} and was killed"),
        ),
        RuntimeError::InvalidSpec { reason, .. } | RuntimeError::StartFailed { reason, .. } => {
            Status::bad_request(format!("exec in task {id}: {reason}"))
        }
        e => Status::internal(format!("node {}: {e}", state.node)),
    }
}

/// The exit code a shell gives a command that could not start: 127 when it was not found,
/// else 126.
pub fn start_failure_code(reason: &str) -> i32 {
    let r = reason.to_ascii_lowercase();
    if r.contains("not found") || r.contains("no such file") {
        127
    } else {
        126
    }
}

/// `GET /v1/volumes` ([`volumes`]).
async fn list_volumes(State(s): State<ServerState>) -> Response {
    let listed = volumes::list(&s.node, s.runtime.clone(), s.volumes.clone()).await;
    respond(listed.map(|l| Json(l).into_response()))
}

/// `DELETE /v1/volumes/{name}` ([`volumes`]).
async fn remove_volume(State(s): State<ServerState>, Path(name): Path<String>) -> Response {
    let removed = volumes::remove(&s.node, s.runtime.clone(), s.volumes.clone(), &name).await;
    respond(removed.map(|()| StatusCode::NO_CONTENT.into_response()))
}

/// `GET /v1/check` ([`crate::check`]).
async fn check_node(State(s): State<ServerState>) -> Response {
    let Some(check) = s.check.clone() else {
        return error(Status::new(
            501,
            "NotImplemented",
            format!("node {} has no audit (a hollow node)", s.node),
        ));
    };
    respond(
        check
            .run()
            .await
            .map(|r| Json(r).into_response())
            .map_err(|e| Status::new(503, "ServiceUnavailable", format!("node {}: {e}", s.node))),
    )
}

/// A handler's result: any failure is a `Status` answer.
fn respond(result: Result<Response, Status>) -> Response {
    result.unwrap_or_else(error)
}

async fn exec(State(state): State<ServerState>, Path(id): Path<String>, body: Bytes) -> Response {
    respond(exec_in(&state, &id, &body).await)
}

async fn exec_in(state: &ServerState, id: &str, body: &[u8]) -> Result<Response, Status> {
    let rt = runtime(state)?;
    let req: ExecRequest =
        serde_json::from_slice(body).map_err(|e| Status::bad_request(format!("exec body: {e}")))?;
    req.check()?;
    let st = rt
        .status(id)
        .await
        .map_err(|e| runtime_error(state, id, e))?;
    if st.state != ContainerState::Running {
        let what = match st.state {
            ContainerState::Created => "created, not started".to_string(),
            ContainerState::Exited => format!(
                "exited with code {}",
                st.exit_code.map_or("?".to_string(), |c| c.to_string())
            ),
            other => format!("{other:?}").to_lowercase(),
        };
        return Err(Status::conflict(format!(
            "task {id} is not running on node {} (container {what})",
            state.node
        )));
    }
    tracing::info!(task = %id, argv = ?req.argv, "exec");
    let out = match rt
        .exec(id, &req.argv, req.timeout(), EXEC_OUTPUT_LIMIT)
        .await
    {
        Ok(out) => out,
        // As a shell (and `docker exec`) would: 127 when the command does not exist, 126
        // when it cannot be run, with the runtime's reason on stderr.
        Err(RuntimeError::StartFailed { reason, .. }) => ExecOutput {
            exit_code: start_failure_code(&reason),
            stdout: Vec::new(),
            stderr: format!("shoal exec: {}: {reason}\n", req.argv[0]).into_bytes(),
            truncated: false,
        },
        Err(e) => return Err(runtime_error(state, id, e)),
    };
    Ok(Json(ExecResponse {
        exit_code: out.exit_code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        truncated: out.truncated,
    })
    .into_response())
}

async fn logs(
    State(state): State<ServerState>,
    Path(id): Path<String>,
    Query(opts): Query<LogOptions>,
) -> Response {
    respond(logs_of(&state, id, opts).await)
}

async fn logs_of(state: &ServerState, id: String, opts: LogOptions) -> Result<Response, Status> {
    let rt = runtime(state)?;
    rt.status(&id)
        .await
        .map_err(|e| runtime_error(state, &id, e))?;
    let path = rt.log_path(&id);
    let tail = opts.tail;
    let reader = tokio::task::spawn_blocking(move || {
        logs::LogReader::open(&path, tail)
            .map_err(|e| Status::internal(format!("reading {}: {e}", path.display())))
    })
    .await
    .map_err(|e| Status::internal(format!("reading the log: {e}")))??;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(stream_log(rt, id, reader, opts.follow, tx));
    Ok((
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response())
}

/// Sends what `reader` reads; with `follow`, keeps polling until the container has ended
/// (and the rest is sent) or the receiver is gone.
async fn stream_log(
    rt: Arc<dyn ContainerRuntime>,
    id: String,
    reader: logs::LogReader,
    follow: bool,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let mut state = (reader, vec![0u8; 64 * 1024]);
    loop {
        // Decide before reading whether this is the last round: whatever the container
        // wrote before it ended is read below.
        let last = !follow
            || !matches!(
                rt.status(&id).await.map(|s| s.state),
                Ok(ContainerState::Running | ContainerState::Created | ContainerState::Unknown)
            );
        // Send all there is now. A read may wait for a rotation: off the async workers.
        loop {
            let (mut reader, mut buf) = state;
            let Ok((reader, buf, read)) = tokio::task::spawn_blocking(move || {
                let read = reader.read(&mut buf);
                (reader, buf, read)
            })
            .await
            else {
                return; // the read panicked: end the stream
            };
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let chunk = Bytes::copy_from_slice(&buf[..n]);
            state = (reader, buf);
            if n == 0 {
                break;
            }
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
        if last {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(cn: &str) -> PeerIdentity {
        PeerIdentity {
            common_name: cn.into(),
            not_before: std::time::SystemTime::UNIX_EPOCH,
            not_after: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn only_the_controller_certificate_should_be_let_through() {
        assert!(check_caller("n", Some(&peer(CONTROLLER_CN))).is_ok());
        assert_eq!(check_caller("n", None).unwrap_err().code, 401);
        for other in ["node-2", "shoal-hollow-fleet", "shoal-controller2", ""] {
            let e = check_caller("n", Some(&peer(other))).unwrap_err();
            assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"), "{other}");
        }
    }

    #[test]
    fn unspecified_listen_addresses_publish_the_node_address() {
        assert_eq!(
            endpoint_for("0.0.0.0:7801".parse().unwrap(), "198.18.0.2"),
            "198.18.0.2:7801"
        );
        assert_eq!(
            endpoint_for("127.0.0.1:7801".parse().unwrap(), "198.18.0.2"),
            "127.0.0.1:7801"
        );
    }

    #[test]
    fn commands_that_cannot_start_exit_as_in_a_shell() {
        assert_eq!(
            start_failure_code(
                "OCI runtime exec failed: exec: \"nope\": executable file not found in $PATH"
            ),
            127
        );
        assert_eq!(start_failure_code("permission denied"), 126);
    }

    async fn collect(mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> String {
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn logs_should_be_read_across_rotated_files_with_tail() {
        use crate::runtime::FakeRuntime;
        let dir = tempfile::tempdir().unwrap();
        let rt: Arc<dyn ContainerRuntime> = Arc::new(FakeRuntime::new().with_log_dir(dir.path()));
        let path = rt.log_path("t1");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(logs::rotated(&path, 2), "1\n2\n").unwrap();
        std::fs::write(logs::rotated(&path, 1), "3\n4").unwrap();
        std::fs::write(&path, "\n5\n").unwrap();
        let read = |tail: Option<u64>| {
            let rt = rt.clone();
            let reader = logs::LogReader::open(&path, tail).unwrap();
            async move {
                let (tx, rx) = mpsc::channel(16);
                tokio::spawn(stream_log(rt, "t1".into(), reader, false, tx));
                collect(rx).await
            }
        };
        assert_eq!(read(None).await, "1\n2\n3\n4\n5\n");
        assert_eq!(read(Some(2)).await, "4\n5\n");
        assert_eq!(read(Some(4)).await, "2\n3\n4\n5\n");
        assert_eq!(read(Some(0)).await, "");
    }

    #[tokio::test]
    async fn a_followed_log_should_continue_across_a_rotation() {
        use crate::runtime::{ContainerSpec, FakeRuntime};
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::new().with_log_dir(dir.path()));
        fake.create(&ContainerSpec {
            id: "t1".into(),
            image: "busybox".into(),
            hostname: "t.1".into(),
            command: vec!["sh".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        fake.start("t1").await.unwrap();
        let rt: Arc<dyn ContainerRuntime> = fake.clone();
        let path = rt.log_path("t1");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let append = |s: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap()
                .write_all(s.as_bytes())
                .unwrap()
        };
        append("a\n");
        let (tx, mut rx) = mpsc::channel(16);
        let reader = logs::LogReader::open(&path, None).unwrap();
        tokio::spawn(stream_log(rt, "t1".into(), reader, true, tx));
        assert_eq!(&rx.recv().await.unwrap().unwrap()[..], b"a\n");
        // Written, then rotated before the follower's next poll.
        append("b\n");
        let policy = logs::LogRotation {
            max_size: 1,
            max_files: 2,
        };
        assert!(logs::rotate_if_needed(&path, policy).unwrap());
        append("c\n");
        tokio::time::sleep(FOLLOW_POLL * 2).await;
        fake.exit("t1", 0);
        assert_eq!(collect(rx).await, "b\nc\n");
    }
}
