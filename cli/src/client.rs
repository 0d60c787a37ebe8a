//! A small typed client for Shoal's HTTP API (`/apis/shoal/v1/...`). Every non-2xx answer
//! becomes [`ClientError::Api`] carrying the server's [`Status`], so commands print the
//! server's own message and field paths.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_api_types::{
    ExecRequest, ExecResponse, LogOptions, Object, ObjectList, Resource, Status, WatchEvent,
};

use crate::kinds::Kind;

/// What went wrong talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{}", .0.describe())]
    Api(Status),
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
            ClientError::Api(s) => Some(s),
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
    /// `created`, `configured` or `unchanged`.
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
}

const API_PREFIX: [&str; 3] = ["apis", "shoal", "v1"];

impl Client {
    /// A client for the API at `server` (e.g. `http://127.0.0.1:7777`).
    pub fn new(server: &str) -> anyhow::Result<Client> {
        let base = Url::parse(server)
            .map_err(|e| anyhow::anyhow!("server {server:?} is not a URL: {e}"))?;
        if base.cannot_be_a_base() {
            anyhow::bail!("server {server:?} is not an http:// URL");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Client { base, http })
    }

    /// The base URL.
    pub fn server(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `<base>/apis/shoal/v1/<segments...>`, each segment percent-encoded.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("checked in new");
            path.pop_if_empty();
            path.extend(API_PREFIX);
            path.extend(segments);
        }
        url
    }

    async fn send(&self, req: reqwest::RequestBuilder, url: &Url) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                ClientError::Connect {
                    server: self.server().to_string(),
                    cause: root_cause(&e),
                }
            } else {
                ClientError::Http {
                    url: url.to_string(),
                    cause: root_cause(&e),
                }
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let code = resp.status();
        let body = resp.text().await.unwrap_or_default();
        Err(ClientError::Api(status_from_body(code, &body)))
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

    /// `DELETE /<plural>/<name>`: the deleted object.
    pub async fn delete(&self, kind: Kind, name: &str) -> Result<Value> {
        self.call(Method::DELETE, self.url(&[kind.plural(), name]), None)
            .await
    }

    /// `POST /apply[?dryRun=true]` with a multi-document YAML body.
    pub async fn apply(&self, body: String, dry_run: bool) -> Result<ApplyResponse> {
        let mut url = self.url(&["apply"]);
        if dry_run {
            url.query_pairs_mut().append_pair("dryRun", "true");
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
        self.call(
            Method::POST,
            self.url(&["tasks", task, "exec"]),
            Some((body, "application/json")),
        )
        .await
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
}
