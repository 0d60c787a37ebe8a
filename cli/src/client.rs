//! A small typed client for Shoal's HTTP API (`/apis/shoal/v1/...`, `/v1/...`). Every
//! non-2xx answer becomes [`ClientError::Api`] carrying the server's [`Status`] (or
//! [`ClientError::Denied`] for 401 and 403, with a hint naming the token in use), so
//! commands print the server's own message and field paths.
//!
//! HTTPS is verified against the cluster CA given in the [`Target`] and nothing else (no
//! system roots); the token goes in `Authorization: Bearer`, marked sensitive.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_api_types::check::CheckReport;
use shoal_api_types::volume::VolumeList;
use shoal_api_types::{
    CreatedToken, ExecRequest, ExecResponse, LogOptions, Object, ObjectList, Resource, Role,
    Service, ServiceSpec, Status, TokenInfo, TokenList, TokenRequest, WatchEvent,
};

use crate::context::{Target, TokenSource, CA_ENV, TOKEN_ENV};
use crate::kinds::Kind;

/// What went wrong talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{}", .0.describe())]
    Api(Status),
    /// The server refused the credentials (401) or the role (403).
    #[error("{}\n  hint: {hint}", .status.describe())]
    Denied {
        /// The server's answer.
        status: Status,
        /// What to do about it, naming the token in use.
        hint: String,
    },
    /// The server's certificate is not trusted.
    #[error("cannot verify the Shoal API at {server} ({cause}): pass the cluster CA with --ca, ${CA_ENV} or \"certificateAuthority\" in the context file (ca.crt in the controller's data dir)")]
    Tls {
        /// The base URL.
        server: String,
        /// The innermost cause.
        cause: String,
    },
    /// The server could not be reached.
    #[error("cannot reach the Shoal API at {server} ({cause}); is the controller running? (set --server or SHOAL_SERVER)")]
    Connect {
        /// The base URL.
        server: String,
        /// The innermost cause, e.g. `Connection refused (os error 111)`.
        cause: String,
    },
    /// The request failed midway.
    #[error("request to {url} failed: {cause}")]
    Http {
        /// The URL.
        url: String,
        /// The innermost cause.
        cause: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from {url}: {message}")]
    Decode {
        /// The URL.
        url: String,
        /// What did not parse.
        message: String,
    },
}

impl ClientError {
    /// The server's status, if the server answered.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Api(s) | ClientError::Denied { status: s, .. } => Some(s),
            _ => None,
        }
    }

    /// Whether this is a 409 for a stale resourceVersion (worth re-reading and retrying).
    pub fn is_conflict(&self) -> bool {
        self.status()
            .is_some_and(|s| s.code == 409 && s.reason == "Conflict")
    }

    /// Whether this is a 404.
    pub fn is_not_found(&self) -> bool {
        self.status().is_some_and(|s| s.code == 404)
    }
}

/// Result of client calls.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// One line of `POST /apply`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyItem {
    /// `Network` or `Service`.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// `created`, `configured`, `unchanged` or `pruned`.
    pub action: String,
    /// The object's resourceVersion after the apply.
    #[serde(default)]
    pub resource_version: Option<String>,
}

/// `POST /apply`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResponse {
    /// Whether nothing was written.
    #[serde(default)]
    pub dry_run: bool,
    /// One entry per object, in manifest order.
    pub items: Vec<ApplyItem>,
}

/// The API client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    base: Url,
    http: reqwest::Client,
    /// Where the token came from (`None`: no token is sent), for hints on 401 and 403.
    token_source: Option<TokenSource>,
    /// The context file consulted, for hints.
    context_path: Option<std::path::PathBuf>,
}

const API_PREFIX: [&str; 3] = ["apis", "shoal", "v1"];

/// The answer of `GET /v1/join-token` and `POST /v1/join-token/rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// `SWMTKN-1-<ca digest>-<secret>`.
    pub token: String,
}

impl Client {
    /// A client for the API at `server` (e.g. `https://127.0.0.1:7777`), with no token and
    /// no CA.
    pub fn new(server: &str) -> anyhow::Result<Client> {
        Client::for_target(&Target {
            server: server.to_string(),
            ca: None,
            token: None,
            token_source: None,
            context_path: None,
        })
    }

    /// A client for a resolved [`Target`]: its CA (read now) is the only one trusted for
    /// `https://`, and its token goes with every request.
    pub fn for_target(target: &Target) -> anyhow::Result<Client> {
        let server = &target.server;
        let base = Url::parse(server)
            .map_err(|e| anyhow::anyhow!("server {server:?} is not a URL: {e}"))?;
        if base.cannot_be_a_base() {
            anyhow::bail!("server {server:?} is not an http:// URL");
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tls_built_in_root_certs(false);
        if let Some(path) = &target.ca {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read the CA certificate {}: {e}", path.display())
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{} holds no PEM certificate (give the cluster CA, ca.crt)",
                        path.display()
                    )
                })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(token) = &target.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    anyhow::anyhow!("the API token has characters a header cannot carry")
                })?;
            value.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        Ok(Client {
            base,
            http: builder.build()?,
            token_source: target.token.as_ref().and(target.token_source.clone()),
            context_path: target.context_path.clone(),
        })
    }

    /// The base URL.
    pub fn server(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `<base>/apis/shoal/v1/<segments...>`, each segment percent-encoded.
    pub fn url(&self, segments: &[&str]) -> Url {
        self.url_below(&API_PREFIX, segments)
    }

    /// `<base>/<prefix...>/<segments...>`, each segment percent-encoded.
    fn url_below(&self, prefix: &[&str], segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("checked in new");
            path.pop_if_empty();
            path.extend(prefix);
            path.extend(segments);
        }
        url
    }

    /// `<base>/v1/<segments...>`: tokens and join tokens.
    fn url_v1(&self, segments: &[&str]) -> Url {
        self.url_below(&["v1"], segments)
    }

    /// What to tell the user when the server answers 401 or 403.
    fn auth_hint(&self, code: u16) -> String {
        let context = self
            .context_path
            .as_ref()
            .map(|p| format!(", or \"token\" in the context file {}", p.display()))
            .unwrap_or_default();
        match (&self.token_source, code) {
            (None, _) => format!(
                "no token was sent: pass --token, set ${TOKEN_ENV}{context} \
                 (an admin makes one with `shoal token create --role read-only NAME`)"
            ),
            (Some(src), 401) => format!(
                "the token from {src} was refused: it is unknown or was revoked; \
                 ask an admin for a new one (`shoal token create`)"
            ),
            (Some(src), _) => format!(
                "the token from {src} may not do this: changes, exec and logs need an admin token"
            ),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, url: &Url) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            let cause = root_cause(&e);
            if e.is_connect() && is_tls_failure(&cause) {
                ClientError::Tls {
                    server: self.server().to_string(),
                    cause,
                }
            } else if e.is_connect() || e.is_timeout() {
                ClientError::Connect {
                    server: self.server().to_string(),
                    cause,
                }
            } else {
                ClientError::Http {
                    url: url.to_string(),
                    cause,
                }
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let code = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let status = status_from_body(code, &body);
        if matches!(code.as_u16(), 401 | 403) {
            let hint = self.auth_hint(code.as_u16());
            return Err(ClientError::Denied { status, hint });
        }
        Err(ClientError::Api(status))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<(String, &str)>,
    ) -> Result<T> {
        let mut req = self.http.request(method, url.clone());
        if let Some((body, content_type)) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body);
        }
        let resp = self.send(req, &url).await?;
        let bytes = resp.bytes().await.map_err(|e| ClientError::Http {
            url: url.to_string(),
            cause: root_cause(&e),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: url.to_string(),
            message: e.to_string(),
        })
    }

    /// `GET /<plural>[?query]`, typed.
    pub async fn list<S: Resource>(&self, query: &[(&str, &str)]) -> Result<ObjectList<S>> {
        let mut url = self.url(&[S::PLURAL]);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        self.call(Method::GET, url, None).await
    }

    /// `GET /<plural>/<name>`, typed.
    pub async fn get<S: Resource>(&self, name: &str) -> Result<Object<S>> {
        self.call(Method::GET, self.url(&[S::PLURAL, name]), None)
            .await
    }

    /// `POST /<plural>`: creates an object.
    pub async fn create<S: Resource>(&self, obj: &Object<S>) -> Result<Object<S>> {
        let body = serde_json::to_string(obj).expect("objects serialise");
        self.call(
            Method::POST,
            self.url(&[S::PLURAL]),
            Some((body, "application/json")),
        )
        .await
    }

    /// `PUT /<plural>/<name>`: replaces an object; 409 if its resourceVersion is stale.
    pub async fn replace<S: Resource>(&self, obj: &Object<S>) -> Result<Object<S>> {
        let body = serde_json::to_string(obj).expect("objects serialise");
        self.call(
            Method::PUT,
            self.url(&[S::PLURAL, obj.name()]),
            Some((body, "application/json")),
        )
        .await
    }

    /// `POST /services/<name>/rollback`: back to the previous spec; the stored service (its
    /// generation is the one to wait for). 409 when there is no previous spec.
    pub async fn rollback_service(&self, name: &str) -> Result<Service> {
        self.call(
            Method::POST,
            self.url(&[ServiceSpec::PLURAL, name, "rollback"]),
            None,
        )
        .await
    }

    /// `DELETE /<plural>/<name>`: the deleted object.
    pub async fn delete(&self, kind: Kind, name: &str) -> Result<Value> {
        self.call(Method::DELETE, self.url(&[kind.plural(), name]), None)
            .await
    }

    /// `POST /apply[?dryRun=true][&prune=KEY=VALUE]` with a multi-document YAML body. With
    /// `prune`, objects carrying that label that the body does not hold are deleted in the
    /// same transaction (answer items with action `pruned`), and the body may be empty.
    pub async fn apply(
        &self,
        body: String,
        dry_run: bool,
        prune: Option<&str>,
    ) -> Result<ApplyResponse> {
        let mut url = self.url(&["apply"]);
        if dry_run {
            url.query_pairs_mut().append_pair("dryRun", "true");
        }
        if let Some(selector) = prune {
            url.query_pairs_mut().append_pair("prune", selector);
        }
        self.call(Method::POST, url, Some((body, "application/yaml")))
            .await
    }

    /// `GET /<plural>?watch=true[&resourceVersion=N]`: a stream of events.
    pub async fn watch(&self, kind: Kind, resource_version: Option<&str>) -> Result<EventStream> {
        let mut url = self.url(&[kind.plural()]);
        url.query_pairs_mut().append_pair("watch", "true");
        if let Some(rv) = resource_version {
            url.query_pairs_mut().append_pair("resourceVersion", rv);
        }
        let resp = self.send(self.http.get(url.clone()), &url).await?;
        Ok(EventStream {
            url: url.to_string(),
            resp,
            buf: Vec::new(),
            done: false,
        })
    }
}

impl Client {
    /// `POST /tasks/<task>/exec`: runs a command in a running task.
    pub async fn exec(&self, task: &str, req: &ExecRequest) -> Result<ExecResponse> {
        let body = serde_json::to_string(req).expect("exec requests serialise");
        let url = self.url(&["tasks", task, "exec"]);
        let resp = self
            .send(
                self.http
                    .request(Method::POST, url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body),
                &url,
            )
            .await?;
        // The server caps each stream; a longer answer is not read into memory.
        let limit = shoal_api_types::exec::MAX_EXEC_RESPONSE_BYTES;
        let mut bytes = Vec::new();
        let mut resp = resp;
        while let Some(chunk) = resp.chunk().await.map_err(|e| ClientError::Http {
            url: url.to_string(),
            cause: root_cause(&e),
        })? {
            if bytes.len() + chunk.len() > limit {
                return Err(ClientError::Decode {
                    url: url.to_string(),
                    message: format!("the exec answer is longer than {limit} bytes"),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: url.to_string(),
            message: e.to_string(),
        })
    }

    /// `GET /<tasks|services>/<name>/logs[?follow=true&tail=N]`: a text stream.
    pub async fn logs(&self, plural: &str, name: &str, opts: &LogOptions) -> Result<TextStream> {
        let mut url = self.url(&[plural, name, "logs"]);
        if opts.follow {
            url.query_pairs_mut().append_pair("follow", "true");
        }
        if let Some(n) = opts.tail {
            url.query_pairs_mut().append_pair("tail", &n.to_string());
        }
        let resp = self.send(self.http.get(url.clone()), &url).await?;
        let warnings = resp
            .headers()
            .get_all("x-shoal-warning")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        Ok(TextStream {
            url: url.to_string(),
            resp,
            warnings,
        })
    }
}

impl Client {
    /// `POST /v1/tokens`: a new token (shown only in this answer).
    pub async fn create_token(&self, name: &str, role: Role) -> Result<CreatedToken> {
        let body = serde_json::to_string(&TokenRequest {
            name: name.to_string(),
            role: role.to_string(),
        })
        .expect("token requests serialise");
        self.call(
            Method::POST,
            self.url_v1(&["tokens"]),
            Some((body, "application/json")),
        )
        .await
    }

    /// `GET /v1/tokens`.
    pub async fn list_tokens(&self) -> Result<TokenList> {
        self.call(Method::GET, self.url_v1(&["tokens"]), None).await
    }

    /// `DELETE /v1/tokens/<name>`: revokes a token.
    pub async fn delete_token(&self, name: &str) -> Result<TokenInfo> {
        self.call(Method::DELETE, self.url_v1(&["tokens", name]), None)
            .await
    }

    /// `GET /v1/join-token`, or `POST /v1/join-token/rotate` with `rotate`.
    pub async fn join_token(&self, rotate: bool) -> Result<JoinToken> {
        if rotate {
            self.call(Method::POST, self.url_v1(&["join-token", "rotate"]), None)
                .await
        } else {
            self.call(Method::GET, self.url_v1(&["join-token"]), None)
                .await
        }
    }

    /// `GET /apis/shoal/v1/volumes[?node=N]`: the named volumes of every ready node (or one).
    pub async fn list_volumes(&self, node: Option<&str>) -> Result<VolumeList> {
        let mut url = self.url(&["volumes"]);
        if let Some(node) = node {
            url.query_pairs_mut().append_pair("node", node);
        }
        self.call(Method::GET, url, None).await
    }

    /// `GET /apis/shoal/v1/system/check`: the audit of etcd and every ready node.
    pub async fn system_check(&self) -> Result<CheckReport> {
        self.call(Method::GET, self.url(&["system", "check"]), None)
            .await
    }

    /// `DELETE /apis/shoal/v1/nodes/<node>/volumes/<name>`: removes a volume from a node
    /// (404 unknown, 409 while a task uses it). The answer's body, if any, is not read.
    pub async fn delete_volume(&self, node: &str, name: &str) -> Result<()> {
        let url = self.url(&["nodes", node, "volumes", name]);
        self.send(self.http.delete(url.clone()), &url).await?;
        Ok(())
    }

    /// `DELETE /apis/shoal/v1/nodes/<name>[?force=true]`: removes (and revokes) a node.
    pub async fn delete_node(&self, name: &str, force: bool) -> Result<Value> {
        let mut url = self.url(&["nodes", name]);
        if force {
            url.query_pairs_mut().append_pair("force", "true");
        }
        self.call(Method::DELETE, url, None).await
    }
}

/// Whether a connection failed because the server's certificate was not trusted.
fn is_tls_failure(cause: &str) -> bool {
    let c = cause.to_ascii_lowercase();
    c.contains("certificate") || c.contains("unknownissuer") || c.contains("tls")
}

/// A streamed text answer (logs).
#[derive(Debug)]
pub struct TextStream {
    url: String,
    resp: reqwest::Response,
    /// Problems the server reported besides the stream (tasks whose logs it could not read).
    pub warnings: Vec<String>,
}

impl TextStream {
    /// The next chunk; `Ok(None)` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>> {
        match self.resp.chunk().await {
            Ok(chunk) => Ok(chunk.map(|c| c.to_vec())),
            Err(e) => Err(ClientError::Http {
                url: self.url.clone(),
                cause: root_cause(&e),
            }),
        }
    }
}

/// The innermost error of a chain: what actually went wrong.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The server's error body, or a status made up from the HTTP code when the body is not one.
fn status_from_body(code: StatusCode, body: &str) -> Status {
    if let Ok(status) = serde_json::from_str::<Status>(body) {
        return status;
    }
    let reason = code.canonical_reason().unwrap_or("Error").replace(' ', "");
    let text = body.trim();
    let message = if text.is_empty() {
        format!("the server answered {code}")
    } else {
        format!("the server answered {code}: {text}")
    };
    Status::new(code.as_u16(), &reason, message)
}

/// Newline-delimited JSON watch events.
#[derive(Debug)]
pub struct EventStream {
    url: String,
    resp: reqwest::Response,
    buf: Vec<u8>,
    done: bool,
}

impl EventStream {
    /// The next event; `Ok(None)` when the server closed the stream.
    pub async fn next(&mut self) -> Result<Option<WatchEvent<Value>>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if let Some(ev) = self.parse(&line)? {
                    return Ok(Some(ev));
                }
                continue;
            }
            if self.done {
                let rest = std::mem::take(&mut self.buf);
                return self.parse(&rest);
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => self.done = true,
                Err(e) => {
                    return Err(ClientError::Http {
                        url: self.url.clone(),
                        cause: root_cause(&e),
                    })
                }
            }
        }
    }

    fn parse(&self, line: &[u8]) -> Result<Option<WatchEvent<Value>>> {
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        serde_json::from_str(text)
            .map(Some)
            .map_err(|e| ClientError::Decode {
                url: self.url.clone(),
                message: format!("bad watch event {text:?}: {e}"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_names_and_keep_a_base_path() {
        let c = Client::new("http://127.0.0.1:7777").unwrap();
        assert_eq!(
            c.url(&["networks", "appnet"]).as_str(),
            "http://127.0.0.1:7777/apis/shoal/v1/networks/appnet"
        );
        assert_eq!(
            c.url(&["networks", "a/b"]).as_str(),
            "http://127.0.0.1:7777/apis/shoal/v1/networks/a%2Fb"
        );
        let c = Client::new("http://h/prefix/").unwrap();
        assert_eq!(
            c.url(&["apply"]).as_str(),
            "http://h/prefix/apis/shoal/v1/apply"
        );
    }

    #[test]
    fn token_urls_sit_beside_the_object_api() {
        let c = Client::new("https://h:7777").unwrap();
        assert_eq!(
            c.url_v1(&["tokens", "ci"]).as_str(),
            "https://h:7777/v1/tokens/ci"
        );
        assert_eq!(
            c.url_v1(&["join-token", "rotate"]).as_str(),
            "https://h:7777/v1/join-token/rotate"
        );
    }

    fn target(token: Option<TokenSource>, ca: Option<std::path::PathBuf>) -> Target {
        Target {
            server: "https://h:7777".into(),
            ca,
            token: token.as_ref().map(|_| "shoal_x".to_string()),
            token_source: token,
            context_path: Some("/home/u/.config/shoal/context.json".into()),
        }
    }

    #[test]
    fn hints_name_the_token_in_use() {
        let c = Client::for_target(&target(None, None)).unwrap();
        let h = c.auth_hint(401);
        assert!(
            h.contains("no token was sent") && h.contains("context.json"),
            "{h}"
        );
        let c = Client::for_target(&target(Some(TokenSource::Env), None)).unwrap();
        assert!(
            c.auth_hint(401).contains("$SHOAL_TOKEN was refused"),
            "{}",
            c.auth_hint(401)
        );
        assert!(
            c.auth_hint(403).contains("admin token"),
            "{}",
            c.auth_hint(403)
        );
        let denied = ClientError::Denied {
            status: Status::new(403, "Forbidden", "role read-only may not"),
            hint: c.auth_hint(403),
        };
        let text = denied.to_string();
        assert!(
            text.starts_with("role read-only may not\n  hint: the token from $SHOAL_TOKEN"),
            "{text}"
        );
        assert_eq!(denied.status().map(|s| s.code), Some(403));
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.crt");
        let err = Client::for_target(&target(None, Some(missing)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read the CA certificate"), "{err}");
        let junk = dir.path().join("junk.crt");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = Client::for_target(&target(None, Some(junk)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }

    #[test]
    fn error_bodies_become_statuses_even_when_not_json() {
        let s = status_from_body(
            StatusCode::CONFLICT,
            r#"{"code":409,"reason":"Conflict","message":"in use"}"#,
        );
        assert_eq!(
            (s.code, s.reason.as_str(), s.message.as_str()),
            (409, "Conflict", "in use")
        );
        let s = status_from_body(StatusCode::BAD_GATEWAY, "upstream down");
        assert_eq!(s.reason, "BadGateway");
        assert_eq!(
            s.message,
            "the server answered 502 Bad Gateway: upstream down"
        );
    }

    /// The requests of `stack deploy --prune`/`stack rm`, `volume ls` and `volume rm`, as a
    /// recording fake API sees them (the server side is the controller's).
    #[tokio::test]
    async fn prune_applies_and_volume_requests_reach_their_routes() {
        use axum::extract::{OriginalUri, State};
        use axum::routing::{delete, get, post};
        use std::sync::{Arc, Mutex};
        type Log = Arc<Mutex<Vec<String>>>;
        let log: Log = Arc::default();
        async fn apply(State(log): State<Log>, uri: OriginalUri, body: String) -> String {
            log.lock().unwrap().push(format!("POST {} [{body}]", uri.0));
            r#"{"items":[{"kind":"Service","name":"shop_web","action":"pruned"}]}"#.into()
        }
        async fn volumes(State(log): State<Log>, uri: OriginalUri) -> String {
            log.lock().unwrap().push(format!("GET {}", uri.0));
            r#"{"items":[{"name":"shop_data","node":"node-1","usedBy":["t1"]}],"unreachable":["node-2: timeout"]}"#.into()
        }
        async fn remove(State(log): State<Log>, uri: OriginalUri) -> axum::http::StatusCode {
            log.lock().unwrap().push(format!("DELETE {}", uri.0));
            axum::http::StatusCode::NO_CONTENT
        }
        let app = axum::Router::new()
            .route("/apis/shoal/v1/apply", post(apply))
            .route("/apis/shoal/v1/volumes", get(volumes))
            .route("/apis/shoal/v1/nodes/{node}/volumes/{name}", delete(remove))
            .with_state(log.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let c = Client::new(&url).unwrap();
        let resp = c
            .apply(String::new(), false, Some("shoal.io/stack=shop"))
            .await
            .unwrap();
        assert_eq!(resp.items[0].action, "pruned");
        let list = c.list_volumes(Some("node-1")).await.unwrap();
        assert_eq!(list.items[0].used_by, ["t1"]);
        assert_eq!(list.unreachable, ["node-2: timeout"]);
        c.delete_volume("node-1", "shop_data").await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            [
                "POST /apis/shoal/v1/apply?prune=shoal.io%2Fstack%3Dshop []",
                "GET /apis/shoal/v1/volumes?node=node-1",
                "DELETE /apis/shoal/v1/nodes/node-1/volumes/shop_data",
            ]
        );
    }
}
