//! Reaching a task's node agent: which task a name means, whether its node can be asked,
//! and the HTTP hop to the agent (`exec` and `logs`, see the node agent's `server` module
//! for the agent's side).
//!
//! - Which task a name means (a task id, a unique prefix of one as `service ps` prints
//!   them, or a display name: `worker.1` for slot 1 of replicated `worker`, `mon.node-2`
//!   for global `mon`) is the API replica's task index's answer
//!   ([`super::task_index::TaskIndex::resolve`]), not a list of every task.
//! - [`target`] (pure too) checks the task's node: it must be ready and publish an agent
//!   endpoint; otherwise 409 with what is wrong.
//! - [`node_target`] (pure) is the same check for a node itself (volumes).
//! - [`Agents`] is the hop. Secure (the default): mutual TLS — the controller presents
//!   `controller.crt` (CN `shoal-controller`, which agents require) and verifies the
//!   agent's certificate against the cluster CA *for the node's name*: one reqwest client
//!   per (node, endpoint, revocation) resolving `https://<node>:<port>` to the published
//!   endpoint, refusing a certificate made at or before the node's revocation
//!   ([`super::private::Revocation`]), following no redirects. Insecure (`--insecure`):
//!   plain HTTP, no authentication. Agent answers map to statuses naming the node
//!   ([`agent_failure`]): unreachable, a refused handshake or certificate is 502, a hollow
//!   node 501.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use shoal_api_types::check::CheckReport;
use shoal_api_types::exec::MAX_EXEC_RESPONSE_BYTES;
use shoal_api_types::volume::VolumeInfo;
use shoal_api_types::{ExecRequest, ExecResponse, LogOptions, Node, Status, Task, TaskState};
use shoal_store::Store;

use super::private;

/// The shortest task id prefix accepted in place of a whole id.
pub const MIN_ID_PREFIX: usize = 4;

/// How long connecting to an agent may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Extra time an exec request gets on top of the command's own timeout.
pub const EXEC_SLACK: Duration = Duration::from_secs(15);

/// The state a task's status reports.
pub fn task_state(task: &Task) -> TaskState {
    task.status.state
}

fn state_word(state: TaskState) -> String {
    format!("{state:?}").to_lowercase()
}

/// A task whose agent can be asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The task id (the agent's container id).
    pub id: String,
    /// `worker.1`.
    pub display: String,
    /// The node it is on.
    pub node: String,
    /// The agent's `host:port`.
    pub endpoint: String,
}

impl Target {
    /// `worker.1@node-2`, as log lines are prefixed.
    pub fn label(&self) -> String {
        format!("{}@{}", self.display, self.node)
    }
}

/// Whether `task` (on `node`, as read) can be asked through its agent. With
/// `must_run`, a task that is not running is a 409 ("task worker.1 is not running (state:
/// pending)"), as for exec; logs only need a container that may exist.
pub fn target(task: &Task, node: Option<&Node>, must_run: bool) -> Result<Target, Status> {
    let display = task.spec.display_name();
    let state = task_state(task);
    let Some(node_name) = task.spec.node.clone() else {
        return Err(Status::conflict(format!(
            "task {display} is not running (state: {}): it has no node yet",
            state_word(state)
        )));
    };
    if must_run && state != TaskState::Running {
        let err = match task.status.err.as_str() {
            "" => String::new(),
            e => format!(": {e}"),
        };
        return Err(Status::conflict(format!(
            "task {display} is not running (state: {}){err}",
            state_word(state)
        )));
    }
    if !must_run && state < TaskState::Starting {
        return Err(Status::conflict(format!(
            "task {display} has no logs yet (state: {})",
            state_word(state)
        )));
    }
    let Some(node) = node else {
        return Err(Status::conflict(format!(
            "task {display} is on node {node_name}, which no longer exists"
        )));
    };
    let status = node.status.clone();
    if status.state != shoal_api_types::NodeState::Ready {
        return Err(Status::conflict(format!(
            "task {display} is on node {node_name}, which is {} (its agent cannot be asked)",
            status.state.to_string().to_lowercase()
        )));
    }
    if status.agent_endpoint.is_empty() {
        return Err(Status::conflict(format!(
            "node {node_name} publishes no agent endpoint: its agent runs without --listen, so \
             task {display} cannot be reached"
        )));
    }
    Ok(Target {
        id: task.metadata.name.clone(),
        display,
        node: node_name,
        endpoint: status.agent_endpoint,
    })
}

/// Whether `node`'s agent can be asked (ready, with an agent endpoint); else 409 naming
/// what is wrong.
pub fn node_target(node: &Node) -> Result<Target, Status> {
    let name = node.metadata.name.clone();
    if node.status.state != shoal_api_types::NodeState::Ready {
        return Err(Status::conflict(format!(
            "node {name} is {} (its agent cannot be asked)",
            node.status.state.to_string().to_lowercase()
        )));
    }
    if node.status.agent_endpoint.is_empty() {
        return Err(Status::conflict(format!(
            "node {name} publishes no agent endpoint: its agent runs without --listen"
        )));
    }
    Ok(Target {
        id: String::new(),
        display: format!("node {name}"),
        node: name,
        endpoint: node.status.agent_endpoint.clone(),
    })
}

/// The most a volume list answer may hold.
pub const MAX_VOLUMES_RESPONSE_BYTES: usize = 4 << 20;

/// How long asking one agent about volumes may take.
pub const VOLUMES_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one agent's check may take (it looks twice, a settle time apart, and waits for
/// task starts in flight).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// What an agent's error answer (`code`, `body`) means for API clients. `for_exec` turns
/// "no container here" into a 409 (the task's status is behind) instead of a 404.
pub fn agent_failure(target: &Target, code: u16, body: &str, for_exec: bool) -> Status {
    let message = serde_json::from_str::<Status>(body)
        .map(|s| s.message)
        .unwrap_or_else(|_| {
            let t = body.trim();
            if t.is_empty() {
                format!("HTTP {code}")
            } else {
                format!("HTTP {code}: {t}")
            }
        });
    let node = &target.node;
    match code {
        401 | 403 => Status::new(
            502,
            "BadGateway",
            format!(
                "the agent of node {node} refused the controller ({message}); does it trust \
                 this cluster's CA?"
            ),
        ),
        404 if for_exec => Status::conflict(format!(
            "task {} is not running on node {node} ({message})",
            target.display
        )),
        404 => Status::new(404, "NotFound", message),
        400 => Status::bad_request(message),
        409 => Status::conflict(message),
        501 => Status::new(501, "NotImplemented", format!("node {node}: {message}")),
        504 => Status::new(504, "GatewayTimeout", message),
        _ => Status::new(
            502,
            "BadGateway",
            format!("the agent of node {node} failed: {message}"),
        ),
    }
}

fn unreachable(target: &Target, e: &reqwest::Error) -> Status {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    Status::new(
        502,
        "BadGateway",
        format!(
            "cannot reach the agent of node {} at {}: {cause}",
            target.node, target.endpoint
        ),
    )
}

/// The socket address of `target`'s published endpoint (`ip:port`, or `host:port` looked up).
async fn endpoint_addr(target: &Target) -> Result<SocketAddr, Status> {
    if let Ok(addr) = target.endpoint.parse() {
        return Ok(addr);
    }
    let bad = |why: String| {
        Status::new(
            502,
            "BadGateway",
            format!(
                "node {} publishes the agent endpoint {:?}, which cannot be reached: {why}",
                target.node, target.endpoint
            ),
        )
    };
    tokio::net::lookup_host(&target.endpoint)
        .await
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("no address".into()))
}

/// How many per-node clients are kept before the cache starts over.
const MAX_CLIENTS: usize = 4096;

/// The controller's identity toward agents.
#[derive(Clone)]
pub struct AgentTls {
    /// The cluster CA (PEM) agents' certificates must chain to.
    pub ca_pem: String,
    /// `controller.crt`.
    pub cert_pem: String,
    /// `controller.key`.
    pub key_pem: String,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTls").finish_non_exhaustive()
    }
}

type ClientKey = (String, SocketAddr, Option<SystemTime>);

/// The HTTP hop to node agents.
pub struct Agents {
    tls: Option<AgentTls>,
    plain: reqwest::Client,
    clients: Mutex<HashMap<ClientKey, reqwest::Client>>,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
}

impl Agents {
    /// Plain HTTP without authentication (`--insecure`).
    pub fn insecure() -> Self {
        Agents {
            tls: None,
            plain: builder().build().expect("a plain HTTP client builds"),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Mutual TLS with `tls` (see the module docs).
    pub fn mutual_tls(tls: AgentTls) -> Self {
        Agents {
            tls: Some(tls),
            ..Agents::insecure()
        }
    }

    /// The client and base URL (`scheme://host:port`) for `target`'s agent.
    async fn client(
        &self,
        store: &Store,
        target: &Target,
    ) -> Result<(reqwest::Client, String), Status> {
        let Some(tls) = &self.tls else {
            return Ok((self.plain.clone(), format!("http://{}", target.endpoint)));
        };
        let addr = endpoint_addr(target).await?;
        let revoked_at = private::revocation(store, &target.node)
            .await?
            .map(|r| SystemTime::from(r.revoked_at));
        let key = (target.node.clone(), addr, revoked_at);
        let base = format!("https://{}:{}", target.node, addr.port());
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok((c.clone(), base));
        }
        let config = shoal_pki::client_config_revoking(
            &tls.ca_pem,
            Some((&tls.cert_pem, &tls.key_pem)),
            revoked_at,
        )
        .map_err(|e| Status::internal(format!("the controller's agent TLS settings: {e}")))?;
        let client = builder()
            .use_preconfigured_tls(config)
            .resolve(&target.node, addr)
            .build()
            .map_err(|e| {
                Status::internal(format!("building the client for node {}: {e}", target.node))
            })?;
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok((client, base))
    }

    /// Sends a request built by `build` (client, base URL). Returns the answer whatever its
    /// status.
    async fn send(
        &self,
        store: &Store,
        target: &Target,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Status> {
        let (client, base) = self.client(store, target).await?;
        build(&client, &base)
            .send()
            .await
            .map_err(|e| unreachable(target, &e))
    }

    fn url(base: &str, target: &Target, what: &str) -> String {
        format!("{base}/v1/tasks/{}/{what}", target.id)
    }

    /// Runs `req` in the task through its agent.
    pub async fn exec(
        &self,
        store: &Store,
        target: &Target,
        req: &ExecRequest,
    ) -> Result<ExecResponse, Status> {
        let timeout = req.timeout() + EXEC_SLACK;
        let resp = self
            .send(store, target, |http, base| {
                http.post(Self::url(base, target, "exec"))
                    .json(req)
                    .timeout(timeout)
            })
            .await?;
        let code = resp.status().as_u16();
        // The agent caps each stream; an answer beyond what that allows is refused, never
        // buffered.
        let body = read_at_most(resp, MAX_EXEC_RESPONSE_BYTES)
            .await
            .map_err(|e| match e {
                Limited::Http(e) => unreachable(target, &e),
                Limited::TooLarge => Status::new(
                    502,
                    "BadGateway",
                    format!(
                        "the agent of node {} answered exec with more than {MAX_EXEC_RESPONSE_BYTES} bytes",
                        target.node
                    ),
                ),
            })?;
        let body = String::from_utf8_lossy(&body);
        if !(200..300).contains(&code) {
            return Err(agent_failure(target, code, &body, true));
        }
        serde_json::from_str(&body).map_err(|e| {
            Status::new(
                502,
                "BadGateway",
                format!(
                    "the agent of node {} answered exec with bad JSON: {e}",
                    target.node
                ),
            )
        })
    }

    /// The named volumes on `target`'s node (`GET /v1/volumes` on its agent).
    pub async fn volumes(&self, store: &Store, target: &Target) -> Result<Vec<VolumeInfo>, Status> {
        let resp = self
            .send(store, target, |http, base| {
                http.get(format!("{base}/v1/volumes"))
                    .timeout(VOLUMES_TIMEOUT)
            })
            .await?;
        let code = resp.status().as_u16();
        let body = read_at_most(resp, MAX_VOLUMES_RESPONSE_BYTES)
            .await
            .map_err(|e| match e {
                Limited::Http(e) => unreachable(target, &e),
                Limited::TooLarge => Status::new(
                    502,
                    "BadGateway",
                    format!("the agent of node {} answered with too much", target.node),
                ),
            })?;
        let body = String::from_utf8_lossy(&body);
        if !(200..300).contains(&code) {
            return Err(agent_failure(target, code, &body, false));
        }
        let mut volumes: Vec<VolumeInfo> = serde_json::from_str(&body).map_err(|e| {
            Status::new(
                502,
                "BadGateway",
                format!(
                    "the agent of node {} answered the volume list with bad JSON: {e}",
                    target.node
                ),
            )
        })?;
        for v in &mut volumes {
            v.node = target.node.clone();
        }
        Ok(volumes)
    }

    /// The audit of `target`'s node (`GET /v1/check` on its agent, see `super::check`);
    /// `None` when the node has nothing to check (a hollow node answers 501).
    pub async fn check(
        &self,
        store: &Store,
        target: &Target,
    ) -> Result<Option<CheckReport>, Status> {
        let resp = self
            .send(store, target, |http, base| {
                http.get(format!("{base}/v1/check")).timeout(CHECK_TIMEOUT)
            })
            .await?;
        let code = resp.status().as_u16();
        if code == 501 {
            return Ok(None);
        }
        let body = read_at_most(resp, MAX_VOLUMES_RESPONSE_BYTES)
            .await
            .map_err(|e| match e {
                Limited::Http(e) => unreachable(target, &e),
                Limited::TooLarge => Status::new(
                    502,
                    "BadGateway",
                    format!("the agent of node {} answered with too much", target.node),
                ),
            })?;
        let body = String::from_utf8_lossy(&body);
        if !(200..300).contains(&code) {
            return Err(agent_failure(target, code, &body, false));
        }
        serde_json::from_str(&body).map(Some).map_err(|e| {
            Status::new(
                502,
                "BadGateway",
                format!(
                    "the agent of node {} answered the check with bad JSON: {e}",
                    target.node
                ),
            )
        })
    }

    /// Removes the volume `name` on `target`'s node (`DELETE /v1/volumes/<name>` on its
    /// agent: 204; 404 unknown; 409 in use, naming the task).
    pub async fn delete_volume(
        &self,
        store: &Store,
        target: &Target,
        name: &str,
    ) -> Result<(), Status> {
        let resp = self
            .send(store, target, |http, base| {
                http.delete(format!("{base}/v1/volumes/{name}"))
                    .timeout(VOLUMES_TIMEOUT)
            })
            .await?;
        let code = resp.status().as_u16();
        if (200..300).contains(&code) {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        Err(agent_failure(target, code, &body, false))
    }

    /// Opens the task's log stream on its agent (a successful answer; its body streams).
    pub async fn logs(
        &self,
        store: &Store,
        target: &Target,
        opts: &LogOptions,
    ) -> Result<reqwest::Response, Status> {
        let mut query = vec![("follow", opts.follow.to_string())];
        if let Some(n) = opts.tail {
            query.push(("tail", n.to_string()));
        }
        let resp = self
            .send(store, target, |http, base| {
                http.get(Self::url(base, target, "logs")).query(&query)
            })
            .await?;
        let code = resp.status().as_u16();
        if (200..300).contains(&code) {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        Err(agent_failure(target, code, &body, false))
    }
}

/// Why [`read_at_most`] stopped.
#[derive(Debug)]
pub enum Limited {
    /// The transfer failed.
    Http(reqwest::Error),
    /// The body is longer than allowed.
    TooLarge,
}

/// Reads `resp`'s body, refusing (and no longer reading) one longer than `limit` bytes.
pub async fn read_at_most(resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, Limited> {
    use futures::StreamExt;
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(Limited::TooLarge);
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Limited::Http)?;
        if body.len() + chunk.len() > limit {
            return Err(Limited::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use shoal_api_types::{NodeSpec, NodeState, NodeStatus, TaskSpec, TaskStatus};

    fn task(
        id: &str,
        service: &str,
        slot: Option<u64>,
        node: &str,
        desired: TaskState,
        state: TaskState,
        age: i64,
    ) -> Task {
        let mut t = Task::new(
            id,
            TaskSpec {
                service: service.into(),
                slot,
                node: Some(node.into()),
                desired_state: desired,
                ..Default::default()
            },
        );
        t.metadata.creation_timestamp = Some(Utc.timestamp_opt(1_700_000_000 - age, 0).unwrap());
        t.status = TaskStatus {
            state,
            ..Default::default()
        };
        t
    }

    fn node(name: &str, state: NodeState, endpoint: &str) -> Node {
        let mut n = Node::new(name, NodeSpec::default());
        n.status = NodeStatus {
            state,
            agent_endpoint: endpoint.into(),
            ..Default::default()
        };
        n
    }

    /// worker.1 failed on node-1 and was replaced on node-2; worker.2 waits for a node.
    /// (Lookups by name have their own, larger history in `task_index`.)
    fn tasks() -> Vec<Task> {
        use TaskState::*;
        vec![
            task(
                "aaaa1111",
                "worker",
                Some(1),
                "node-1",
                Shutdown,
                Failed,
                100,
            ),
            task(
                "bbbb2222",
                "worker",
                Some(1),
                "node-2",
                Running,
                Running,
                50,
            ),
            task(
                "dddd4444",
                "worker",
                Some(2),
                "node-3",
                Running,
                Pending,
                10,
            ),
        ]
    }

    #[test]
    fn targets_need_a_running_task_on_a_ready_node_with_an_endpoint() {
        let ts = tasks();
        let ready = node("node-2", NodeState::Ready, "127.0.0.1:7802");
        let t = target(&ts[1], Some(&ready), true).unwrap();
        assert_eq!(t.endpoint, "127.0.0.1:7802");
        assert_eq!(t.label(), "worker.1@node-2");

        let e = target(&ts[2], Some(&ready), true).unwrap_err();
        assert_eq!(e.code, 409);
        assert_eq!(e.message, "task worker.2 is not running (state: pending)");

        let down = node("node-2", NodeState::Down, "127.0.0.1:7802");
        let e = target(&ts[1], Some(&down), true).unwrap_err();
        assert!(e.message.contains("node-2, which is down"), "{}", e.message);

        let silent = node("node-2", NodeState::Ready, "");
        let e = target(&ts[1], Some(&silent), true).unwrap_err();
        assert!(e.message.contains("no agent endpoint"), "{}", e.message);

        let e = target(&ts[1], None, true).unwrap_err();
        assert!(e.message.contains("no longer exists"), "{}", e.message);

        // Logs of a task that ran need no running state.
        let ready1 = node("node-1", NodeState::Ready, "127.0.0.1:7801");
        assert!(target(&ts[0], Some(&ready1), false).is_ok());
        assert_eq!(target(&ts[0], Some(&ready1), true).unwrap_err().code, 409);
    }

    #[test]
    fn agent_answers_map_to_statuses_naming_the_node() {
        let t = Target {
            id: "x".into(),
            display: "worker.1".into(),
            node: "node-2".into(),
            endpoint: "127.0.0.1:7802".into(),
        };
        let body = r#"{"code":401,"reason":"Unauthorized","message":"bad token"}"#;
        let s = agent_failure(&t, 401, body, true);
        assert_eq!(s.code, 502);
        assert!(
            s.message.contains("node node-2 refused the controller"),
            "{}",
            s.message
        );
        assert_eq!(agent_failure(&t, 404, "{}", true).code, 409);
        assert_eq!(agent_failure(&t, 404, "", false).code, 404);
        let s = agent_failure(
            &t,
            501,
            r#"{"code":501,"reason":"NotImplemented","message":"hollow nodes run no containers"}"#,
            true,
        );
        assert_eq!(
            (s.code, s.message.as_str()),
            (501, "node node-2: hollow nodes run no containers")
        );
        assert_eq!(agent_failure(&t, 500, "boom", true).code, 502);
    }
}
