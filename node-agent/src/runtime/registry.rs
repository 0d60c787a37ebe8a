//! A minimal client for the registry HTTP API v2 (the "distribution spec"): resolve a
//! reference to a manifest (following an index / manifest list to the platform's manifest),
//! and fetch blobs. Anonymous access only; plain HTTP only for registries the operator lists
//! (`localhost:5000`, or a bare host to allow every port), HTTPS for the rest — which this
//! build cannot do (reqwest without TLS), so such references fail with a message that says so.
//!
//! Also the JSON types of OCI/Docker indexes, manifests and image configs, and chain-id
//! computation: pure code, tested here.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::error::RuntimeError;
use super::reference::{Reference, DOCKER_HUB};
use super::types::ImageConfig;

/// OCI image index.
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list.
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest v2 schema 2.
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// OCI image config.
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Whether a media type is an index / manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == MT_OCI_INDEX || media_type == MT_DOCKER_LIST
}

/// Whether a media type is a single-platform manifest.
pub fn is_manifest(media_type: &str) -> bool {
    media_type == MT_OCI_MANIFEST || media_type == MT_DOCKER_MANIFEST
}

/// Whether a layer media type is one containerd's diff applier handles.
pub fn is_layer(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar"
    )
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:…`.
    pub digest: String,
    /// Size in bytes.
    pub size: i64,
    /// Platform (in indexes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A platform in an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Platform {
    /// GOARCH-style architecture (`amd64`, `arm64`).
    pub architecture: String,
    /// `linux`.
    pub os: String,
    /// `v8` etc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this agent runs on.
    pub fn current() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Platform {
            architecture: architecture.to_string(),
            os: "linux".to_string(),
            variant: None,
        }
    }
}

/// An OCI index or Docker manifest list.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Entries.
    pub manifests: Vec<Descriptor>,
}

/// An OCI or Docker v2 schema 2 manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Media type, when the document states it.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
}

/// The image config document (only what Shoal reads).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ConfigFile {
    /// Architecture.
    #[serde(default)]
    pub architecture: String,
    /// OS.
    #[serde(default)]
    pub os: String,
    /// Execution defaults.
    #[serde(default)]
    pub config: Option<RawImageConfig>,
    /// Layer diff ids.
    pub rootfs: RootFs,
}

/// `config` inside the image config document.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct RawImageConfig {
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `Env`.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// `WorkingDir`.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `User`.
    #[serde(default)]
    pub user: Option<String>,
}

/// `rootfs` inside the image config document.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct RootFs {
    /// Uncompressed layer digests, base first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ConfigFile {
    /// The container-relevant part.
    pub fn image_config(&self) -> ImageConfig {
        let c = self.config.clone().unwrap_or_default();
        ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
        }
    }
}

/// Chain ids for layers with the given diff ids (OCI image spec):
/// `chain[0] = diff[0]`, `chain[i] = sha256(chain[i-1] + " " + diff[i])`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Picks the entry for `platform` from an index (exact os/arch; the variant is ignored).
pub fn select_platform<'a>(index: &'a Index, platform: &Platform) -> Option<&'a Descriptor> {
    index.manifests.iter().find(|d| {
        is_manifest(&d.media_type)
            && d.platform
                .as_ref()
                .is_some_and(|p| p.os == platform.os && p.architecture == platform.architecture)
    })
}

/// A registry client. Cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    plain_http: Vec<String>,
    endpoints: BTreeMap<String, String>,
}

impl RegistryClient {
    /// A client that talks plain HTTP to the listed registries (`host:port`, or `host` for
    /// every port of that host).
    pub fn new(plain_http: Vec<String>) -> RegistryClient {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("shoal-node-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("reqwest client without TLS always builds");
        RegistryClient {
            http,
            plain_http,
            endpoints: BTreeMap::new(),
        }
    }

    /// Reaches registry `name` (as images name it, e.g. `localhost:5000`) at `host:port`
    /// instead — for an agent in its own network namespace, where the local cluster's
    /// registry is on the underlay bridge (`198.18.0.254:5000`), not on its loopback.
    /// Image names stay as written; like a containerd `hosts.toml` mirror.
    pub fn with_endpoint(mut self, name: impl Into<String>, endpoint: impl Into<String>) -> Self {
        self.endpoints.insert(name.into(), endpoint.into());
        self
    }

    /// Whether plain HTTP is allowed for `registry`.
    pub fn is_plain_http(&self, registry: &str) -> bool {
        let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
        self.plain_http.iter().any(|p| p == registry || p == host)
    }

    fn base(&self, r: &Reference) -> Result<String, RuntimeError> {
        if self.is_plain_http(&r.registry) {
            let endpoint = self.endpoints.get(&r.registry).unwrap_or(&r.registry);
            return Ok(format!("http://{endpoint}"));
        }
        let host = if r.registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            r.registry.as_str()
        };
        Err(RuntimeError::Registry {
            registry: r.registry.clone(),
            what: format!("pull of {r}"),
            reason: format!(
                "https://{host} needs TLS, which this agent does not do; \
                 pull from a registry listed as plain HTTP (e.g. localhost:5000)"
            ),
            temporary: false,
        })
    }

    /// GETs `/v2/<repo>/manifests/<object>` accepting indexes and manifests of both
    /// flavours. Returns (media type, body, digest of body). Verifies the digest when
    /// `object` is one.
    pub async fn get_manifest(
        &self,
        r: &Reference,
        object: &str,
    ) -> Result<(String, Vec<u8>, String), RuntimeError> {
        let url = format!("{}/v2/{}/manifests/{}", self.base(r)?, r.repository, object);
        let what = format!("GET /v2/{}/manifests/{}", r.repository, object);
        let accept = [
            MT_OCI_INDEX,
            MT_DOCKER_LIST,
            MT_OCI_MANIFEST,
            MT_DOCKER_MANIFEST,
        ]
        .join(", ");
        let resp = self
            .http
            .get(&url)
            .header("Accept", accept)
            .send()
            .await
            .map_err(|e| transport_error(r, &what, e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(RuntimeError::ImageNotFound {
                reference: r.to_string(),
            });
        }
        if !status.is_success() {
            return Err(http_error(r, &what, resp).await);
        }
        let header_mt = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or("").trim().to_string());
        let body = resp
            .bytes()
            .await
            .map_err(|e| transport_error(r, &what, e))?
            .to_vec();
        let digest = sha256_digest(&body);
        if object.contains(':') && object != digest {
            return Err(RuntimeError::Registry {
                registry: r.registry.clone(),
                what,
                reason: format!("manifest digest is {digest}, not the requested {object}"),
                temporary: false,
            });
        }
        let media_type = match header_mt {
            Some(mt) if is_index(&mt) || is_manifest(&mt) => mt,
            _ => sniff_media_type(&body).ok_or_else(|| RuntimeError::UnsupportedImage {
                reference: r.to_string(),
                reason: "the registry returned a manifest of unknown type \
                         (schema 1 manifests are not supported)"
                    .to_string(),
            })?,
        };
        Ok((media_type, body, digest))
    }

    /// Starts a GET of blob `digest`; read it with [`reqwest::Response::chunk`].
    pub async fn get_blob(
        &self,
        r: &Reference,
        digest: &str,
    ) -> Result<reqwest::Response, RuntimeError> {
        let url = format!("{}/v2/{}/blobs/{}", self.base(r)?, r.repository, digest);
        let what = format!("GET /v2/{}/blobs/{}", r.repository, digest);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| transport_error(r, &what, e))?;
        if !resp.status().is_success() {
            return Err(http_error(r, &what, resp).await);
        }
        Ok(resp)
    }

    /// Reads a whole (small) blob into memory, checking its digest.
    pub async fn get_blob_bytes(
        &self,
        r: &Reference,
        digest: &str,
    ) -> Result<Vec<u8>, RuntimeError> {
        let what = format!("GET /v2/{}/blobs/{}", r.repository, digest);
        let body = self
            .get_blob(r, digest)
            .await?
            .bytes()
            .await
            .map_err(|e| transport_error(r, &what, e))?
            .to_vec();
        let got = sha256_digest(&body);
        if got != digest {
            return Err(RuntimeError::Registry {
                registry: r.registry.clone(),
                what,
                reason: format!("blob digest is {got}"),
                temporary: true,
            });
        }
        Ok(body)
    }
}

/// Media type from the document itself (for registries that send a generic content type).
fn sniff_media_type(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let p: Probe = serde_json::from_slice(body).ok()?;
    match p.media_type {
        Some(mt) if is_index(&mt) || is_manifest(&mt) => Some(mt),
        Some(_) => None,
        None if p.manifests.is_some() => Some(MT_OCI_INDEX.to_string()),
        None if p.config.is_some() => Some(MT_OCI_MANIFEST.to_string()),
        None => None,
    }
}

/// A transport error: unreachable if we never got an answer, else a registry error.
fn transport_error(r: &Reference, what: &str, e: reqwest::Error) -> RuntimeError {
    if e.is_connect() || e.is_timeout() {
        return RuntimeError::RegistryUnreachable {
            registry: r.registry.clone(),
            reason: root_cause(&e),
        };
    }
    RuntimeError::Registry {
        registry: r.registry.clone(),
        what: what.to_string(),
        reason: root_cause(&e),
        temporary: true,
    }
}

/// The innermost error's message, lowercased the way users expect ("connection refused").
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    if let Some(io) = cur.downcast_ref::<std::io::Error>() {
        return match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            std::io::ErrorKind::TimedOut => "connection timed out".to_string(),
            _ => io.to_string(),
        };
    }
    let msg = cur.to_string();
    // "Connection refused (os error 111)" → "connection refused".
    let msg = msg.split(" (os error").next().unwrap_or(&msg).to_string();
    let mut chars = msg.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => msg,
    }
}

async fn http_error(r: &Reference, what: &str, resp: reqwest::Response) -> RuntimeError {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.trim().chars().take(300).collect();
    let temporary = status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
    let reason = if status == reqwest::StatusCode::UNAUTHORIZED {
        format!("{status}: the registry wants credentials, which Shoal does not send yet")
    } else if body.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {body}")
    };
    RuntimeError::Registry {
        registry: r.registry.clone(),
        what: what.to_string(),
        reason,
        temporary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let d1 = format!("sha256:{}", "1".repeat(64));
        let d2 = format!("sha256:{}", "2".repeat(64));
        let c = chain_ids(&[d1.clone(), d2.clone()]);
        assert_eq!(c[0], d1);
        assert_eq!(c[1], sha256_digest(format!("{d1} {d2}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn index_selection_picks_the_platform_manifest() {
        let idx: Index = serde_json::from_str(&format!(
            r#"{{"schemaVersion":2,"manifests":[
              {{"mediaType":"{MT_DOCKER_MANIFEST}","digest":"sha256:a","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
              {{"mediaType":"{MT_DOCKER_MANIFEST}","digest":"sha256:b","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"application/vnd.in-toto+json","digest":"sha256:c","size":1,"platform":{{"architecture":"unknown","os":"unknown"}}}}
            ]}}"#
        ))
        .unwrap();
        let amd = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(select_platform(&idx, &amd).unwrap().digest, "sha256:b");
        let s390 = Platform {
            architecture: "s390x".into(),
            ..amd
        };
        assert!(select_platform(&idx, &s390).is_none());
    }

    #[test]
    fn image_config_defaults_are_empty() {
        let c: ConfigFile = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:x"]}}"#,
        )
        .unwrap();
        let ic = c.image_config();
        assert_eq!(ic.cmd, vec!["sh"]);
        assert!(ic.entrypoint.is_empty());
        assert_eq!(ic.env, vec!["PATH=/bin"]);
        assert_eq!(c.rootfs.diff_ids, vec!["sha256:x"]);
    }

    #[test]
    fn media_types_are_sniffed_when_the_header_is_generic() {
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some(MT_OCI_INDEX)
        );
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":2,"config":{},"layers":[]}"#).as_deref(),
            Some(MT_OCI_MANIFEST)
        );
        assert_eq!(sniff_media_type(br#"{"schemaVersion":1}"#), None);
    }

    #[test]
    fn plain_http_is_only_for_listed_registries() {
        let c = RegistryClient::new(vec!["localhost:5000".into(), "127.0.0.1".into()]);
        assert!(c.is_plain_http("localhost:5000"));
        assert!(!c.is_plain_http("localhost:5001"));
        assert!(c.is_plain_http("127.0.0.1:5999"));
        let r = Reference::parse("busybox").unwrap();
        let e = c.base(&r).unwrap_err();
        assert!(e.to_string().contains("needs TLS"), "{e}");
        let c = c.with_endpoint("localhost:5000", "198.18.0.254:5000");
        let r = Reference::parse("localhost:5000/busybox").unwrap();
        assert_eq!(c.base(&r).unwrap(), "http://198.18.0.254:5000");
        let r = Reference::parse("busybox").unwrap();
        let e = c.base(&r).unwrap_err();
        assert!(e.to_string().contains("needs TLS"), "{e}");
    }

    #[tokio::test]
    async fn a_closed_port_is_reported_as_unreachable() {
        // Bind and drop to get a port that nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = RegistryClient::new(vec![format!("127.0.0.1:{port}")]);
        let r = Reference::parse(&format!("127.0.0.1:{port}/busybox:latest")).unwrap();
        let e = c.get_manifest(&r, "latest").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("registry 127.0.0.1:{port} is not reachable: connection refused")
        );
        assert!(e.is_temporary());
    }
}
