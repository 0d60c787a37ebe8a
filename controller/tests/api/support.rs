//! The one place for API test helpers: a server over a real etcd, request shortcuts, and
//! a reader of newline-delimited watch streams.

use std::time::Duration;

use serde_json::Value;
use shoal_store::testing::TestEtcd;
use shoal_store::Store;
use tokio::sync::watch;

/// An API server on a free loopback port, over its own etcd key root.
pub struct Server {
    pub etcd: TestEtcd,
    pub store: Store,
    pub base: String,
    pub http: reqwest::Client,
    /// The bearer token every request of [`Server::call`] carries (secured servers).
    pub token: Option<String>,
    pub shutdown: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// An HTTP answer: code and JSON body (or the text as a JSON string if not JSON).
#[derive(Debug)]
pub struct Answer {
    pub code: u16,
    pub body: Value,
}

impl Answer {
    /// `body.reason`.
    pub fn reason(&self) -> &str {
        self.body["reason"].as_str().unwrap_or("")
    }
    /// `body.message`.
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }
    /// The field paths of `body.details`.
    pub fn fields(&self) -> Vec<String> {
        self.body["details"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|x| x["field"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
    /// `body.metadata.resourceVersion`.
    pub fn rv(&self) -> String {
        self.body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

impl Server {
    /// A server over the shared (or a private) test etcd.
    pub async fn start() -> Server {
        Server::over(TestEtcd::start().await).await
    }

    /// A server over a private etcd (for compaction and outage tests).
    pub async fn private() -> Server {
        Server::over(TestEtcd::private().await).await
    }

    /// A server that requires tokens, with `admin_token` imported as the token `admin`;
    /// [`Server::call`] sends no token, [`Server::call_as`] the one given.
    pub async fn secured(admin_token: &str) -> Server {
        let auth = shoal_controller::api::Auth::Tokens {
            admin_token: Some(admin_token.to_string()),
        };
        let s = Server::with_auth(TestEtcd::start().await, auth).await;
        // Serving starts after the import of the admin token: wait for it.
        shoal_testkit::eventually(
            "the secured server to serve",
            Duration::from_secs(10),
            || {
                let s = &s;
                async move {
                    let a = s
                        .call_as(Some(admin_token), reqwest::Method::GET, "/v1/tokens", None)
                        .await;
                    (a.code == 200).then_some(())
                }
            },
        )
        .await;
        s
    }

    async fn over(etcd: TestEtcd) -> Server {
        Server::with_auth(etcd, shoal_controller::api::Auth::Off).await
    }

    async fn with_auth(etcd: TestEtcd, auth: shoal_controller::api::Auth) -> Server {
        let store = etcd.store().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(shoal_controller::api::serve_with(
            listener,
            store.clone(),
            rx,
            auth,
        ));
        Server {
            etcd,
            store,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            token: None,
            shutdown,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request with an optional body (sent as YAML unless it starts with '{').
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<&str>) -> Answer {
        self.call_as(self.token.as_deref(), method, path, body)
            .await
    }

    /// [`Server::call`] with `Authorization: Bearer <token>` when a token is given.
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> Answer {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            let ct = if b.trim_start().starts_with('{') {
                "application/json"
            } else {
                "application/yaml"
            };
            req = req.header("content-type", ct).body(b.to_string());
        }
        answer(req.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &str) -> Answer {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &str) -> Answer {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    pub async fn apply(&self, body: &str) -> Answer {
        self.post("/apis/shoal/v1/apply", body).await
    }

    /// The names in a list.
    pub async fn names(&self, plural: &str) -> Vec<String> {
        let a = self.get(&format!("/apis/shoal/v1/{plural}")).await;
        assert_eq!(a.code, 200, "{a:?}");
        a.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// Asserts that no Network and no Service exists.
    pub async fn assert_nothing_written(&self) {
        assert_eq!(
            self.names("networks").await,
            Vec::<String>::new(),
            "networks were written"
        );
        assert_eq!(
            self.names("services").await,
            Vec::<String>::new(),
            "services were written"
        );
    }

    /// Opens a watch stream.
    pub async fn watch(&self, path: &str) -> Lines {
        self.watch_as(self.token.as_deref(), path).await
    }

    /// Opens a watch stream with `Authorization: Bearer <token>` when a token is given.
    pub async fn watch_as(&self, token: Option<&str>, path: &str) -> Lines {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("watch request");
        Lines {
            code: resp.status().as_u16(),
            resp,
            buf: Vec::new(),
        }
    }
}

pub async fn answer(resp: reqwest::Response) -> Answer {
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer { code, body }
}

/// A newline-delimited JSON stream.
pub struct Lines {
    pub code: u16,
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Lines {
    /// The next JSON line, or `None` if the stream ended or nothing came within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).expect("a JSON line"));
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// The next event; panics if none comes within 10 s.
    pub async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("a watch event within 10s")
    }

    /// Whether the stream has ended (the server closed it) within `wait`.
    pub async fn ended_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Ok(None)) | Ok(Err(_)) => return true,
                Err(_) => return false,
            }
        }
    }
}

/// `(type, kind/name or resourceVersion)` of an event, for compact assertions.
pub fn summary(ev: &Value) -> (String, String) {
    let t = ev["type"].as_str().unwrap_or("").to_string();
    let name = ev["object"]["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    (t, name)
}

pub fn network(name: &str, subnet: Option<&str>) -> String {
    match subnet {
        Some(s) => format!("apiVersion: shoal/v1\nkind: Network\nmetadata: {{name: {name}}}\nspec: {{subnet: {s}}}\n"),
        None => format!("apiVersion: shoal/v1\nkind: Network\nmetadata: {{name: {name}}}\nspec: {{}}\n"),
    }
}

/// A service on `networks` publishing `ports` (`"8080"` or `"8080/host"`).
pub fn service(name: &str, networks: &[&str], ports: &[&str]) -> String {
    let nets: Vec<String> = networks.iter().map(|n| format!("{{name: {n}}}")).collect();
    let ports: Vec<String> = ports
        .iter()
        .map(|p| match p.split_once('/') {
            Some((n, mode)) => format!("{{published: {n}, target: 80, mode: {mode}}}"),
            None => format!("{{published: {p}, target: 80}}"),
        })
        .collect();
    format!(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: localhost:5000/busybox:latest\n  networks: [{}]\n  ports: [{}]\n",
        nets.join(", "),
        ports.join(", ")
    )
}

/// `a` then `b` as one multi-document body.
pub fn docs(parts: &[String]) -> String {
    parts.join("---\n")
}
