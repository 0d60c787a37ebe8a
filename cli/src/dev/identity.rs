//! A secured local cluster's identity, made the way an operator makes it on real hosts
//! (docs/deploy.md): `shoal-controller init` for the CA, the API certificate and the admin
//! token; `shoal-controller cert etcd` for each etcd member; a join token from the API; and
//! `shoal-agent join` for each node. Each step is skipped when its files exist, so
//! `shoal dev up` after `shoal dev node stop` or a crash reuses the identity.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use super::cluster::{sibling, Layout};

fn run_binary(program: &str, args: &[String]) -> anyhow::Result<()> {
    let out = Command::new(sibling(program)?)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `shoal-controller init` and one etcd certificate per member, unless present.
pub fn init(layout: &Layout) -> anyhow::Result<()> {
    let pki = layout.pki_dir();
    let dir = pki.display().to_string();
    if !pki.join("ca.crt").exists() {
        run_binary(
            "shoal-controller",
            &[
                "init".into(),
                format!("--data-dir={dir}"),
                "--api-san=127.0.0.1".into(),
            ],
        )?;
    }
    for i in 1..=layout.etcd_members {
        let name = layout.etcd_name(i);
        if pki.join("etcd").join(format!("{name}.crt")).exists() {
            continue;
        }
        run_binary(
            "shoal-controller",
            &[
                "cert".into(),
                "etcd".into(),
                format!("--data-dir={dir}"),
                format!("--name={name}"),
                format!("--san={}", layout.etcd_address(i)),
                "--san=localhost".into(),
            ],
        )?;
    }
    Ok(())
}

/// `shoal-agent join` for node k, unless it has joined.
pub fn join_node(layout: &Layout, k: u32, token: &str) -> anyhow::Result<()> {
    let pki = layout.node_pki_dir(k);
    if pki.join("node.crt").exists() {
        return Ok(());
    }
    println!("joining node-{k}");
    run_binary(
        "shoal-agent",
        &[
            "join".into(),
            format!("--token={token}"),
            format!("--controller={}", layout.api_url()),
            format!("--name={}", layout.node_name(k)),
            format!("--address={}", layout.node_address(k)),
            format!("--pki-dir={}", pki.display()),
        ],
    )
}

/// The admin token `init` wrote.
pub fn admin_token(pki: &Path) -> anyhow::Result<String> {
    let path = pki.join("admin.token");
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

/// The API of controller 1, as the admin.
pub struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Api {
    /// A client for `layout`'s API: trusting the cluster CA, with the admin token (secured),
    /// or plain HTTP (insecure).
    pub fn of(layout: &Layout) -> anyhow::Result<Api> {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        let mut token = None;
        if layout.secure {
            let ca =
                std::fs::read(layout.pki_dir().join("ca.crt")).context("reading the cluster CA")?;
            builder = builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&ca)?);
            token = Some(admin_token(&layout.pki_dir())?);
        }
        Ok(Api {
            base: layout.api_url(),
            http: builder.build()?,
            token,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// GET `path` as JSON (an error for a non-2xx answer).
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self.request(reqwest::Method::GET, path).send().await?;
        let code = resp.status();
        let body = resp.text().await?;
        if !code.is_success() {
            bail!("GET {path}: {code}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Waits until `/healthz` answers.
    pub async fn wait_healthy(&self, layout: &Layout, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            match self.request(reqwest::Method::GET, "/healthz").send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "the API at {} did not answer within {}s ({last})\n--- last lines of controller-1.log:\n{}",
            self.base,
            timeout.as_secs(),
            layout.daemon("controller-1").log_tail(10)
        )
    }

    /// The current join token (`GET /v1/join-token`).
    pub async fn join_token(&self) -> anyhow::Result<String> {
        let v = self.get("/v1/join-token").await?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .context("GET /v1/join-token answered without a token")
    }
}
