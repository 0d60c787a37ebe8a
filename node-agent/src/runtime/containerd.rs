//! [`ContainerdRuntime`]: the [`ContainerRuntime`] over containerd's gRPC API
//! (`containerd-client`), in a containerd namespace of its own.
//!
//! **Pulls are done client-side**, not through CRI's `ImageService.PullImage`: the CRI plugin
//! always pulls into the `k8s.io` namespace (not ours), takes plain-HTTP registries only from
//! containerd's own config (so the agent's `--plain-http-registry` list would have to be
//! written into every node's containerd config), and its proto is not part of
//! `containerd-client`. Client-side, a pull is: resolve the reference over the registry HTTP
//! API v2 ([`super::registry`]), pick the platform's manifest from an index, stream each blob
//! into containerd's content store (`Content.Write`, skipping blobs it already has), label
//! the blobs so containerd's garbage collector keeps the tree (`containerd.io/gc.ref.*`, as
//! containerd's own pull does), unpack the layers into the snapshotter (`Snapshots.Prepare`
//! on the parent chain id + `Diff.Apply` + `Snapshots.Commit` as the chain id), and create
//! the image record (`Images.Create`). All of it runs under a containerd lease, so a
//! half-done pull is never collected under our feet and never leaks: the lease expires.
//! The same code imports an OCI archive ([`ContainerdRuntime::import_oci_archive`]).
//!
//! **Containers**: a snapshot keyed by the container id on the image's top chain id, a
//! container record with the OCI spec of [`super::spec`] and the [`LABEL_MANAGED`] label, and
//! per-container files in `<state_dir>/<id>/` (resolv.conf, hosts, hostname, `container.log`).
//! Tasks run under the runc v2 shim with stdout and stderr appended to the log through the
//! shim's `file://` stdio. `exec` uses FIFOs so stdout and stderr stay apart.
//!
//! Invariant: everything this module creates in containerd (containers, snapshots, images,
//! content, leases) lives in the configured namespace; `delete` removes the container's
//! snapshot and state directory too.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, Container, CreateContainerRequest, CreateImageRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest,
    GetContainerRequest, GetImageRequest, GetRequest, Image, InfoRequest, KillRequest,
    ListContainersRequest, ListTasksRequest, ReadContentRequest, StartRequest, UpdateImageRequest,
    UpdateRequest, WaitRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::metadata::{Ascii, MetadataValue};
use containerd_client::tonic::{Code, Request, Status};
use containerd_client::types::v1::Status as TaskStatus;
use containerd_client::types::{Descriptor as CDescriptor, Mount};
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

use super::registry::{
    chain_ids, is_index, is_layer, is_manifest, select_platform, ConfigFile, Descriptor, Index,
    Manifest, Platform, RegistryClient,
};
use super::{
    spec, validate_container_id, ContainerInfo, ContainerRuntime, ContainerSpec, ContainerState,
    ContainerStatus, ExecOutput, ImageInfo, Reference, RuntimeError, LABEL_IMAGE, LABEL_MANAGED,
};

const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const CHUNK: usize = 1 << 20;
const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;

/// How to reach and use a containerd.
#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    /// containerd's gRPC socket (per node in a local cluster).
    pub socket: PathBuf,
    /// containerd namespace for everything Shoal creates.
    pub namespace: String,
    /// Per-container files go to `<state_dir>/<id>/`.
    pub state_dir: PathBuf,
    /// Snapshotter (`overlayfs`; `native` where overlay mounts are not possible).
    pub snapshotter: String,
    /// Runtime (shim) name.
    pub runtime: String,
    /// Registries reached over plain HTTP (`host:port`, or `host` for all ports).
    pub plain_http_registries: Vec<String>,
    /// cgroup parent; a container's cgroup is `<cgroup_parent>/<id>`.
    pub cgroup_parent: String,
    /// Registry name → `host:port` actually dialled (see
    /// [`RegistryClient::with_endpoint`]); e.g. `localhost:5000` → `198.18.0.254:5000` for
    /// an agent in a local-cluster node namespace.
    pub registry_endpoints: BTreeMap<String, String>,
}

impl ContainerdConfig {
    /// Defaults for a socket and a state directory: namespace `shoal`, overlayfs, runc v2,
    /// plain HTTP to `localhost:5000` and `127.0.0.1:5000`, cgroups under `/shoal`.
    pub fn new(socket: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        ContainerdConfig {
            socket: socket.into(),
            namespace: "shoal".to_string(),
            state_dir: state_dir.into(),
            snapshotter: "overlayfs".to_string(),
            runtime: "io.containerd.runc.v2".to_string(),
            plain_http_registries: vec!["localhost:5000".to_string(), "127.0.0.1:5000".to_string()],
            cgroup_parent: "/shoal".to_string(),
            registry_endpoints: BTreeMap::new(),
        }
    }
}

/// The containerd-backed runtime. Cheap to share (`Arc`); all methods take `&self`.
pub struct ContainerdRuntime {
    cfg: ContainerdConfig,
    client: containerd_client::Client,
    ns: MetadataValue<Ascii>,
    registry: RegistryClient,
    platform: Platform,
    pull_lock: Mutex<()>,
    changes: tokio::sync::watch::Sender<u64>,
    events_task: tokio::task::JoinHandle<()>,
}

impl Drop for ContainerdRuntime {
    fn drop(&mut self) {
        self.events_task.abort();
    }
}

/// Follows containerd's `/tasks/exit` events of `namespace`, bumping `changes` on each (and
/// when the stream breaks, since exits may have been missed). Resubscribes after a second.
async fn follow_exits(
    client: containerd_client::Client,
    namespace: String,
    changes: tokio::sync::watch::Sender<u64>,
) {
    let filter = format!("namespace=={namespace:?},topic==\"/tasks/exit\"");
    loop {
        let stream = client
            .events()
            .subscribe(containerd_client::services::v1::SubscribeRequest {
                filters: vec![filter.clone()],
            })
            .await;
        if let Ok(stream) = stream {
            let mut stream = stream.into_inner();
            while let Ok(Some(_envelope)) = stream.message().await {
                changes.send_modify(|n| *n += 1);
            }
        }
        changes.send_modify(|n| *n += 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The answer of a lookup call as "is it there": NotFound is `false`, other errors fail.
fn exists<T>(
    answer: Result<T, Status>,
    call: &'static str,
    key: &str,
) -> Result<bool, RuntimeError> {
    match answer {
        Ok(_) => Ok(true),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(status_err(call, key)(s)),
    }
}

fn status_err(op: &'static str, object: impl Into<String>) -> impl FnOnce(Status) -> RuntimeError {
    let object = object.into();
    move |s| RuntimeError::Containerd {
        op,
        object,
        code: s.code(),
        message: s.message().to_string(),
    }
}

fn to_cdesc(d: &Descriptor) -> CDescriptor {
    CDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        ..Default::default()
    }
}

/// Where blobs come from: a registry, or an archive read into memory.
enum Source<'a> {
    Registry(&'a RegistryClient, &'a Reference),
    Archive(&'a HashMap<String, Vec<u8>>),
}

/// An open blob being read in chunks.
enum Chunks {
    Http(reqwest::Response, String, String),
    Bytes(Vec<u8>),
}

impl Chunks {
    /// Next chunk of at most about [`CHUNK`] bytes; `None` at the end.
    async fn next(&mut self) -> Result<Option<Vec<u8>>, RuntimeError> {
        match self {
            Chunks::Bytes(b) => {
                if b.is_empty() {
                    return Ok(None);
                }
                let rest = b.split_off(b.len().min(CHUNK));
                Ok(Some(std::mem::replace(b, rest)))
            }
            Chunks::Http(resp, registry, what) => {
                let mut buf = Vec::new();
                while buf.len() < CHUNK {
                    match resp.chunk().await {
                        Ok(Some(c)) => buf.extend_from_slice(&c),
                        Ok(None) => break,
                        Err(e) => {
                            return Err(RuntimeError::Registry {
                                registry: registry.clone(),
                                what: what.clone(),
                                reason: e.to_string(),
                                temporary: true,
                            })
                        }
                    }
                }
                Ok(if buf.is_empty() { None } else { Some(buf) })
            }
        }
    }
}

impl Source<'_> {
    async fn bytes(&self, digest: &str) -> Result<Vec<u8>, RuntimeError> {
        match self {
            Source::Registry(c, r) => c.get_blob_bytes(r, digest).await,
            Source::Archive(m) => {
                m.get(digest)
                    .cloned()
                    .ok_or_else(|| RuntimeError::UnsupportedImage {
                        reference: "archive".to_string(),
                        reason: format!("blob {digest} is missing from the archive"),
                    })
            }
        }
    }

    async fn open(&self, digest: &str) -> Result<Chunks, RuntimeError> {
        match self {
            Source::Registry(c, r) => Ok(Chunks::Http(
                c.get_blob(r, digest).await?,
                r.registry.clone(),
                format!("GET /v2/{}/blobs/{}", r.repository, digest),
            )),
            Source::Archive(_) => Ok(Chunks::Bytes(self.bytes(digest).await?)),
        }
    }
}

impl ContainerdRuntime {
    /// Connects to containerd (and checks that it answers).
    pub async fn connect(cfg: ContainerdConfig) -> Result<Self, RuntimeError> {
        let socket = cfg.socket.display().to_string();
        let unavailable = |reason: String| RuntimeError::Unavailable {
            socket: socket.clone(),
            reason,
        };
        let ns = cfg
            .namespace
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| unavailable(format!("bad namespace {:?}", cfg.namespace)))?;
        let channel = containerd_client::connect(&cfg.socket)
            .await
            .map_err(|e| unavailable(super::registry::root_cause(&e)))?;
        let client = containerd_client::Client::from(channel);
        client
            .version()
            .version(())
            .await
            .map_err(|s| unavailable(s.message().to_string()))?;
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| RuntimeError::io(&cfg.state_dir, e))?;
        let changes = tokio::sync::watch::channel(0).0;
        let events_task = tokio::spawn(follow_exits(
            containerd_client::Client::from(client.channel()),
            cfg.namespace.clone(),
            changes.clone(),
        ));
        Ok(ContainerdRuntime {
            changes,
            events_task,
            registry: cfg.registry_endpoints.iter().fold(
                RegistryClient::new(cfg.plain_http_registries.clone()),
                |c, (name, endpoint)| c.with_endpoint(name.clone(), endpoint.clone()),
            ),
            platform: Platform::current(),
            cfg,
            client,
            ns,
            pull_lock: Mutex::new(()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ContainerdConfig {
        &self.cfg
    }

    /// containerd's version string.
    pub async fn version(&self) -> Result<String, RuntimeError> {
        let v = self
            .client
            .version()
            .version(())
            .await
            .map_err(status_err("Version", ""))?
            .into_inner();
        Ok(v.version)
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert("containerd-namespace", self.ns.clone());
        r
    }

    fn req_lease<T>(&self, msg: T, lease: &str) -> Request<T> {
        let mut r = self.req(msg);
        if let Ok(v) = lease.parse() {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join(id)
    }

    // ---- images ------------------------------------------------------------------------

    /// Pulls `reference` from its registry even if it is present (ensure_image does not).
    pub async fn pull(&self, reference: &str) -> Result<ImageInfo, RuntimeError> {
        let r = Reference::parse(reference)?;
        let _g = self.pull_lock.lock().await;
        self.pull_locked(&r).await
    }

    async fn pull_locked(&self, r: &Reference) -> Result<ImageInfo, RuntimeError> {
        let (media_type, body, digest) = self.registry.get_manifest(r, r.object()).await?;
        let target = Descriptor {
            media_type,
            size: body.len() as i64,
            digest,
            ..Default::default()
        };
        let src = Source::Registry(&self.registry, r);
        self.store_image(&src, &r.to_string(), target, body).await
    }

    /// Imports the single image of an OCI archive (an OCI image layout as a tar, as
    /// `scripts/image/build-busybox.sh` writes) under `name` (e.g.
    /// `localhost:5000/busybox:latest`). Reads the archive into memory: meant for small
    /// test images.
    pub async fn import_oci_archive(
        &self,
        path: &Path,
        name: &str,
    ) -> Result<ImageInfo, RuntimeError> {
        let r = Reference::parse(name)?;
        let path_buf = path.to_path_buf();
        let blobs = tokio::task::spawn_blocking(move || read_oci_archive(&path_buf))
            .await
            .map_err(|e| RuntimeError::io(path, std::io::Error::other(e.to_string())))??;
        let index = blobs
            .get("index.json")
            .ok_or_else(|| RuntimeError::UnsupportedImage {
                reference: path.display().to_string(),
                reason: "no index.json: not an OCI image layout archive".to_string(),
            })?;
        let idx: Index =
            serde_json::from_slice(index).map_err(|e| RuntimeError::UnsupportedImage {
                reference: path.display().to_string(),
                reason: format!("index.json: {e}"),
            })?;
        let first =
            idx.manifests
                .first()
                .cloned()
                .ok_or_else(|| RuntimeError::UnsupportedImage {
                    reference: path.display().to_string(),
                    reason: "index.json lists no image".to_string(),
                })?;
        let body =
            blobs
                .get(&first.digest)
                .cloned()
                .ok_or_else(|| RuntimeError::UnsupportedImage {
                    reference: path.display().to_string(),
                    reason: format!("blob {} is missing", first.digest),
                })?;
        let target = Descriptor {
            media_type: first.media_type,
            digest: first.digest,
            size: first.size,
            ..Default::default()
        };
        let _g = self.pull_lock.lock().await;
        self.store_image(&Source::Archive(&blobs), &r.to_string(), target, body)
            .await
    }

    /// Writes the tree under `target` into the content store, unpacks it and records the
    /// image as `name`, all under a lease.
    async fn store_image(
        &self,
        src: &Source<'_>,
        name: &str,
        target: Descriptor,
        target_body: Vec<u8>,
    ) -> Result<ImageInfo, RuntimeError> {
        let lease = self.create_lease().await?;
        let res = self
            .store_image_leased(src, name, &target, target_body, &lease)
            .await;
        self.delete_lease(&lease).await;
        res
    }

    async fn delete_lease(&self, lease: &str) {
        let _ = self
            .client
            .leases()
            .delete(self.req(containerd_client::services::v1::DeleteRequest {
                id: lease.to_string(),
                sync: false,
            }))
            .await;
    }

    async fn create_lease(&self) -> Result<String, RuntimeError> {
        let id = format!("shoal-pull-{}", uuid::Uuid::new_v4().simple());
        let expire = (chrono::Utc::now() + chrono::Duration::hours(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire)]);
        self.client
            .leases()
            .create(self.req(containerd_client::services::v1::CreateRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(status_err("Leases.Create", &id))?;
        Ok(id)
    }

    async fn store_image_leased(
        &self,
        src: &Source<'_>,
        name: &str,
        target: &Descriptor,
        target_body: Vec<u8>,
        lease: &str,
    ) -> Result<ImageInfo, RuntimeError> {
        let unsupported = |reason: String| RuntimeError::UnsupportedImage {
            reference: name.to_string(),
            reason,
        };
        // Index → the platform's manifest.
        let (manifest_desc, manifest_body, index) = if is_index(&target.media_type) {
            let idx: Index = serde_json::from_slice(&target_body)
                .map_err(|e| unsupported(format!("bad index: {e}")))?;
            let d = select_platform(&idx, &self.platform)
                .cloned()
                .ok_or_else(|| {
                    unsupported(format!(
                        "no {}/{} manifest in its index",
                        self.platform.os, self.platform.architecture
                    ))
                })?;
            let body = src.bytes(&d.digest).await?;
            (d, body, Some(target_body))
        } else if is_manifest(&target.media_type) {
            (target.clone(), target_body, None)
        } else {
            return Err(unsupported(format!(
                "unsupported media type {}",
                target.media_type
            )));
        };
        let manifest: Manifest = serde_json::from_slice(&manifest_body)
            .map_err(|e| unsupported(format!("bad manifest: {e}")))?;
        for l in &manifest.layers {
            if !is_layer(&l.media_type) {
                return Err(unsupported(format!(
                    "unsupported layer media type {}",
                    l.media_type
                )));
            }
        }
        let config_body = src.bytes(&manifest.config.digest).await?;
        let config: ConfigFile = serde_json::from_slice(&config_body)
            .map_err(|e| unsupported(format!("bad image config: {e}")))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(unsupported(format!(
                "config lists {} layers, manifest {}",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            )));
        }
        if !config.os.is_empty() && config.os != "linux" {
            return Err(unsupported(format!("image is for {}", config.os)));
        }
        let chains = chain_ids(&config.rootfs.diff_ids);

        // Content, leaves first, so a parent is only written once its children are.
        for l in &manifest.layers {
            if !self.content_exists(&l.digest).await? {
                let chunks = src.open(&l.digest).await?;
                self.write_content(lease, l, HashMap::new(), chunks).await?;
            }
        }
        let gc_snapshot = format!("containerd.io/gc.ref.snapshot.{}", self.cfg.snapshotter);
        let mut config_labels = HashMap::new();
        if let Some(top) = chains.last() {
            config_labels.insert(gc_snapshot, top.clone());
        }
        self.put_small(lease, &manifest.config, config_body, config_labels)
            .await?;
        let mut manifest_labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            manifest.config.digest.clone(),
        )]);
        for (i, l) in manifest.layers.iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.clone(),
            );
        }
        self.put_small(lease, &manifest_desc, manifest_body, manifest_labels)
            .await?;
        if let Some(index_body) = index {
            let labels = HashMap::from([(
                "containerd.io/gc.ref.content.m.0".to_string(),
                manifest_desc.digest.clone(),
            )]);
            self.put_small(lease, target, index_body, labels).await?;
        }

        self.unpack(lease, &manifest.layers, &config.rootfs.diff_ids, &chains)
            .await?;

        // The image record.
        let image = Image {
            name: name.to_string(),
            target: Some(to_cdesc(target)),
            ..Default::default()
        };
        let mut images = self.client.images();
        match images
            .create(self.req_lease(
                CreateImageRequest {
                    image: Some(image.clone()),
                    ..Default::default()
                },
                lease,
            ))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {
                images
                    .update(self.req(UpdateImageRequest {
                        image: Some(image),
                        ..Default::default()
                    }))
                    .await
                    .map_err(status_err("Images.Update", name))?;
            }
            Err(s) => return Err(status_err("Images.Create", name)(s)),
        }
        Ok(ImageInfo {
            name: name.to_string(),
            digest: target.digest.clone(),
            chain_id: chains.last().cloned().unwrap_or_default(),
            config: config.image_config(),
        })
    }

    async fn content_exists(&self, digest: &str) -> Result<bool, RuntimeError> {
        let found = self
            .client
            .content()
            .info(self.req(InfoRequest {
                digest: digest.to_string(),
            }))
            .await;
        exists(found, "Content.Info", digest)
    }

    /// Writes a small blob, or just sets its labels if containerd has it.
    async fn put_small(
        &self,
        lease: &str,
        desc: &Descriptor,
        body: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError> {
        if self.content_exists(&desc.digest).await? {
            if labels.is_empty() {
                return Ok(());
            }
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            self.client
                .content()
                .update(self.req(UpdateRequest {
                    info: Some(containerd_client::services::v1::Info {
                        digest: desc.digest.clone(),
                        labels,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths }),
                }))
                .await
                .map_err(status_err("Content.Update", &desc.digest))?;
            return Ok(());
        }
        self.write_content(lease, desc, labels, Chunks::Bytes(body))
            .await
    }

    /// Streams a blob into the content store (`Content.Write`: write chunks, then commit
    /// with the expected digest, which containerd verifies).
    async fn write_content(
        &self,
        lease: &str,
        desc: &Descriptor,
        labels: HashMap<String, String>,
        mut chunks: Chunks,
    ) -> Result<(), RuntimeError> {
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
        let mut client = self.client.content();
        let request = self.req_lease(tokio_stream::wrappers::ReceiverStream::new(rx), lease);
        let digest = desc.digest.clone();
        let call = tokio::spawn(async move {
            let mut responses = client.write(request).await?.into_inner();
            while responses.message().await?.is_some() {}
            Ok::<(), Status>(())
        });
        let ingest_ref = format!("shoal-{}", desc.digest);
        let mut offset: i64 = 0;
        let mut cur = chunks.next().await?.unwrap_or_default();
        loop {
            let next = chunks.next().await?;
            let last = next.is_none();
            let len = cur.len() as i64;
            let msg = WriteContentRequest {
                action: if last {
                    WriteAction::Commit
                } else {
                    WriteAction::Write
                } as i32,
                r#ref: ingest_ref.clone(),
                total: desc.size,
                expected: desc.digest.clone(),
                offset,
                data: std::mem::take(&mut cur),
                labels: if last { labels.clone() } else { HashMap::new() },
            };
            if tx.send(msg).await.is_err() {
                break; // the call ended early; its error tells why
            }
            offset += len;
            match next {
                Some(n) => cur = n,
                None => break,
            }
        }
        drop(tx);
        match call.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(s)) if s.code() == Code::AlreadyExists => Ok(()),
            Ok(Err(s)) => Err(status_err("Content.Write", digest)(s)),
            Err(e) => Err(RuntimeError::Containerd {
                op: "Content.Write",
                object: digest,
                code: Code::Internal,
                message: e.to_string(),
            }),
        }
    }

    async fn read_content(&self, digest: &str) -> Result<Vec<u8>, RuntimeError> {
        let mut stream = self
            .client
            .content()
            .read(self.req(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(status_err("Content.Read", digest))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = stream
            .message()
            .await
            .map_err(status_err("Content.Read", digest))?
        {
            out.extend_from_slice(&m.data);
        }
        Ok(out)
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool, RuntimeError> {
        let found = self
            .client
            .snapshots()
            .stat(self.req(StatSnapshotRequest {
                snapshotter: self.cfg.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await;
        exists(found, "Snapshots.Stat", key)
    }

    /// Applies each layer onto a snapshot of its parent chain and commits it as its chain id.
    async fn unpack(
        &self,
        lease: &str,
        layers: &[Descriptor],
        diff_ids: &[String],
        chains: &[String],
    ) -> Result<(), RuntimeError> {
        let sn = self.cfg.snapshotter.clone();
        for (i, layer) in layers.iter().enumerate() {
            let chain = &chains[i];
            if self.snapshot_exists(chain).await? {
                continue;
            }
            let parent = if i == 0 {
                String::new()
            } else {
                chains[i - 1].clone()
            };
            let key = format!("shoal-extract-{}-{}", uuid::Uuid::new_v4().simple(), chain);
            let mounts = self
                .client
                .snapshots()
                .prepare(self.req_lease(
                    PrepareSnapshotRequest {
                        snapshotter: sn.clone(),
                        key: key.clone(),
                        parent,
                        labels: HashMap::new(),
                    },
                    lease,
                ))
                .await
                .map_err(status_err("Snapshots.Prepare", &key))?
                .into_inner()
                .mounts;
            let res = async {
                let applied = self
                    .client
                    .diff()
                    .apply(self.req_lease(
                        ApplyRequest {
                            diff: Some(to_cdesc(layer)),
                            mounts,
                            ..Default::default()
                        },
                        lease,
                    ))
                    .await
                    .map_err(status_err("Diff.Apply", &layer.digest))?
                    .into_inner()
                    .applied
                    .unwrap_or_default();
                if applied.digest != diff_ids[i] {
                    return Err(RuntimeError::UnsupportedImage {
                        reference: layer.digest.clone(),
                        reason: format!(
                            "layer unpacked to {}, the config says {}",
                            applied.digest, diff_ids[i]
                        ),
                    });
                }
                match self
                    .client
                    .snapshots()
                    .commit(self.req_lease(
                        CommitSnapshotRequest {
                            snapshotter: sn.clone(),
                            name: chain.clone(),
                            key: key.clone(),
                            labels: HashMap::new(),
                        },
                        lease,
                    ))
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(s) if s.code() == Code::AlreadyExists => Ok(()),
                    Err(s) => Err(status_err("Snapshots.Commit", chain)(s)),
                }
            }
            .await;
            if res.is_err() || self.snapshot_exists(&key).await.unwrap_or(false) {
                let _ = self.remove_snapshot(&key).await;
            }
            res?;
        }
        Ok(())
    }

    async fn remove_snapshot(&self, key: &str) -> Result<(), RuntimeError> {
        match self
            .client
            .snapshots()
            .remove(self.req(RemoveSnapshotRequest {
                snapshotter: self.cfg.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(status_err("Snapshots.Remove", key)(s)),
        }
    }

    /// The image as stored, if it is complete (content and top snapshot present).
    async fn local_image(&self, r: &Reference) -> Result<Option<ImageInfo>, RuntimeError> {
        let name = r.to_string();
        let image = match self
            .client
            .images()
            .get(self.req(GetImageRequest { name: name.clone() }))
            .await
        {
            Ok(resp) => resp.into_inner().image,
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(status_err("Images.Get", &name)(s)),
        };
        let Some(target) = image.and_then(|i| i.target) else {
            return Ok(None);
        };
        let missing = |e: &RuntimeError| {
            matches!(
                e,
                RuntimeError::Containerd {
                    code: Code::NotFound,
                    ..
                }
            )
        };
        let found: Result<Option<ImageInfo>, RuntimeError> = async {
            let mut manifest_digest = target.digest.clone();
            if is_index(&target.media_type) {
                let idx: Index =
                    match serde_json::from_slice(&self.read_content(&target.digest).await?) {
                        Ok(i) => i,
                        Err(_) => return Ok(None),
                    };
                let Some(d) = select_platform(&idx, &self.platform) else {
                    return Ok(None);
                };
                manifest_digest = d.digest.clone();
            }
            let Ok(manifest) =
                serde_json::from_slice::<Manifest>(&self.read_content(&manifest_digest).await?)
            else {
                return Ok(None);
            };
            let Ok(config) = serde_json::from_slice::<ConfigFile>(
                &self.read_content(&manifest.config.digest).await?,
            ) else {
                return Ok(None);
            };
            let chains = chain_ids(&config.rootfs.diff_ids);
            let top = chains.last().cloned().unwrap_or_default();
            if top.is_empty() || !self.snapshot_exists(&top).await? {
                return Ok(None);
            }
            Ok(Some(ImageInfo {
                name: name.clone(),
                digest: target.digest.clone(),
                chain_id: top,
                config: config.image_config(),
            }))
        }
        .await;
        match found {
            Err(e) if missing(&e) => Ok(None),
            other => other,
        }
    }

    // ---- tasks -------------------------------------------------------------------------

    async fn get_task(
        &self,
        id: &str,
    ) -> Result<Option<containerd_client::types::v1::Process>, RuntimeError> {
        match self
            .client
            .tasks()
            .get(self.req(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().process),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(status_err("Tasks.Get", id)(s)),
        }
    }

    async fn get_container(&self, id: &str) -> Result<Option<Container>, RuntimeError> {
        match self
            .client
            .containers()
            .get(self.req(GetContainerRequest { id: id.to_string() }))
            .await
        {
            Ok(r) => Ok(r.into_inner().container),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(status_err("Containers.Get", id)(s)),
        }
    }

    async fn kill(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), RuntimeError> {
        match self
            .client
            .tasks()
            .kill(self.req(KillRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                signal,
                all,
            }))
            .await
        {
            Ok(_) => Ok(()),
            // Already gone: nothing to signal.
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
            Err(s) => Err(status_err("Tasks.Kill", id)(s)),
        }
    }

    fn spawn_wait(
        &self,
        id: &str,
        exec_id: &str,
    ) -> tokio::task::JoinHandle<Result<i32, RuntimeError>> {
        let mut tasks = self.client.tasks();
        let req = self.req(WaitRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        });
        let id = id.to_string();
        tokio::spawn(async move {
            let r = tasks
                .wait(req)
                .await
                .map_err(status_err("Tasks.Wait", id))?;
            Ok(r.into_inner().exit_status as i32)
        })
    }

    async fn delete_task(&self, id: &str) -> Result<Option<i32>, RuntimeError> {
        match self
            .client
            .tasks()
            .delete(self.req(DeleteTaskRequest {
                container_id: id.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(Some(r.into_inner().exit_status as i32)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(status_err("Tasks.Delete", id)(s)),
        }
    }

    async fn exec_inner(
        &self,
        id: &str,
        exec_id: &str,
        argv: &[String],
        timeout: Duration,
        dir: &Path,
    ) -> Result<ExecOutput, RuntimeError> {
        let container = self
            .get_container(id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })?;
        let spec_any = container.spec.ok_or_else(|| RuntimeError::InvalidSpec {
            id: id.to_string(),
            reason: "container has no spec".to_string(),
        })?;
        let spec_json: serde_json::Value =
            serde_json::from_slice(&spec_any.value).map_err(|e| RuntimeError::InvalidSpec {
                id: id.to_string(),
                reason: format!("container spec: {e}"),
            })?;
        let mut process = spec_json.get("process").cloned().unwrap_or_default();
        process["args"] = serde_json::json!(argv);
        process["terminal"] = serde_json::json!(false);

        std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io(dir, e))?;
        let out_path = dir.join("stdout");
        let err_path = dir.join("stderr");
        for p in [&out_path, &err_path] {
            nix::unistd::mkfifo(p.as_path(), nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| RuntimeError::io(p, std::io::Error::from(e)))?;
        }
        let open = |p: &Path| {
            tokio::net::unix::pipe::OpenOptions::new()
                .open_receiver(p)
                .map_err(|e| RuntimeError::io(p, e))
        };
        let mut out_rx = open(&out_path)?;
        let mut err_rx = open(&err_path)?;
        let out_task = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = out_rx.read_to_end(&mut buf).await;
            buf
        });
        let err_task = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = err_rx.read_to_end(&mut buf).await;
            buf
        });

        let mut tasks = self.client.tasks();
        tasks
            .exec(self.req(ExecProcessRequest {
                container_id: id.to_string(),
                stdin: String::new(),
                stdout: out_path.display().to_string(),
                stderr: err_path.display().to_string(),
                terminal: false,
                spec: Some(prost_types::Any {
                    type_url: PROCESS_TYPE_URL.to_string(),
                    value: serde_json::to_vec(&process).unwrap_or_default(),
                }),
                exec_id: exec_id.to_string(),
            }))
            .await
            .map_err(|s| match s.code() {
                Code::NotFound | Code::FailedPrecondition => RuntimeError::InvalidSpec {
                    id: id.to_string(),
                    reason: format!("exec needs a running container: {}", s.message()),
                },
                _ => status_err("Tasks.Exec", id)(s),
            })?;
        let wait = self.spawn_wait(id, exec_id);
        let started = tasks
            .start(self.req(StartRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await;
        let exit_code = match started {
            Err(s) => {
                wait.abort();
                Err(RuntimeError::StartFailed {
                    id: format!("{id} (exec {argv:?})"),
                    reason: s.message().to_string(),
                })
            }
            Ok(_) => match tokio::time::timeout(timeout, wait).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(RuntimeError::Containerd {
                    op: "Tasks.Wait",
                    object: id.to_string(),
                    code: Code::Internal,
                    message: e.to_string(),
                }),
                Err(_) => {
                    let _ = self.kill(id, exec_id, SIGKILL, false).await;
                    Err(RuntimeError::Timeout {
                        op: "exec",
                        id: id.to_string(),
                        after: timeout,
                    })
                }
            },
        };
        let _ = tasks
            .delete_process(self.req(DeleteProcessRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await;
        let exit_code = exit_code?;
        // The shim closes the FIFOs when the process's output is drained.
        let collect = async {
            (
                out_task.await.unwrap_or_default(),
                err_task.await.unwrap_or_default(),
            )
        };
        let (stdout, stderr) = tokio::time::timeout(Duration::from_secs(5), collect)
            .await
            .unwrap_or_default();
        Ok(ExecOutput {
            exit_code,
            stdout,
            stderr,
        })
    }
}

fn read_oci_archive(path: &Path) -> Result<HashMap<String, Vec<u8>>, RuntimeError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| RuntimeError::io(path, e))?;
    let mut ar = tar::Archive::new(f);
    let mut out = HashMap::new();
    for entry in ar.entries().map_err(|e| RuntimeError::io(path, e))? {
        let mut entry = entry.map_err(|e| RuntimeError::io(path, e))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| RuntimeError::io(path, e))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let key = if name == "index.json" {
            name
        } else if let Some(rest) = name.strip_prefix("blobs/") {
            rest.replacen('/', ":", 1)
        } else {
            continue;
        };
        let mut buf = Vec::new();
        entry
            .read_to_end(&mut buf)
            .map_err(|e| RuntimeError::io(path, e))?;
        out.insert(key, buf);
    }
    Ok(out)
}

fn task_status(p: &containerd_client::types::v1::Process) -> ContainerStatus {
    match p.status() {
        TaskStatus::Running => ContainerStatus::running(p.pid),
        TaskStatus::Paused | TaskStatus::Pausing => ContainerStatus {
            state: ContainerState::Paused,
            pid: Some(p.pid),
            exit_code: None,
        },
        TaskStatus::Stopped => ContainerStatus::exited(p.exit_status as i32),
        TaskStatus::Created => ContainerStatus::CREATED,
        TaskStatus::Unknown => ContainerStatus {
            state: ContainerState::Unknown,
            pid: None,
            exit_code: None,
        },
    }
}

#[async_trait]
impl ContainerRuntime for ContainerdRuntime {
    async fn ensure_image(&self, reference: &str) -> Result<ImageInfo, RuntimeError> {
        let r = Reference::parse(reference)?;
        if let Some(info) = self.local_image(&r).await? {
            return Ok(info);
        }
        let _g = self.pull_lock.lock().await;
        if let Some(info) = self.local_image(&r).await? {
            return Ok(info);
        }
        tracing::info!(image = %r, "pulling");
        let info = self.pull_locked(&r).await.map_err(|e| match e {
            // Name the reference as the user wrote it.
            RuntimeError::ImageNotFound { .. } => RuntimeError::ImageNotFound {
                reference: reference.to_string(),
            },
            other => other,
        })?;
        tracing::info!(image = %r, digest = %info.digest, "pulled");
        Ok(info)
    }

    async fn create(&self, cs: &ContainerSpec) -> Result<(), RuntimeError> {
        validate_container_id(&cs.id)?;
        if self.get_container(&cs.id).await?.is_some() {
            return Err(RuntimeError::AlreadyExists { id: cs.id.clone() });
        }
        let image = self.ensure_image(&cs.image).await?;
        let dir = self.container_dir(&cs.id);
        spec::write_files(&dir, cs)?;
        let cgroups_path = format!("{}/{}", self.cfg.cgroup_parent.trim_end_matches('/'), cs.id);
        let oci = spec::build(cs, &image.config, &dir, &cgroups_path)?;
        let spec_bytes = serde_json::to_vec(&oci).map_err(|e| RuntimeError::InvalidSpec {
            id: cs.id.clone(),
            reason: e.to_string(),
        })?;
        // The lease keeps the new snapshot from being garbage-collected until the container
        // record (which references it) exists.
        let lease = self.create_lease().await?;
        let res = async {
            // A snapshot left by a crash between Prepare and Containers.Create is stale.
            self.remove_snapshot(&cs.id).await?;
            self.client
                .snapshots()
                .prepare(self.req_lease(
                    PrepareSnapshotRequest {
                        snapshotter: self.cfg.snapshotter.clone(),
                        key: cs.id.clone(),
                        parent: image.chain_id.clone(),
                        labels: HashMap::new(),
                    },
                    &lease,
                ))
                .await
                .map_err(status_err("Snapshots.Prepare", &cs.id))?;
            let mut labels: HashMap<String, String> = cs.labels.clone().into_iter().collect();
            labels.insert(LABEL_MANAGED.to_string(), "true".to_string());
            labels.insert(LABEL_IMAGE.to_string(), cs.image.clone());
            let container = Container {
                id: cs.id.clone(),
                labels,
                image: image.name.clone(),
                runtime: Some(Runtime {
                    name: self.cfg.runtime.clone(),
                    options: None,
                }),
                spec: Some(prost_types::Any {
                    type_url: SPEC_TYPE_URL.to_string(),
                    value: spec_bytes,
                }),
                snapshotter: self.cfg.snapshotter.clone(),
                snapshot_key: cs.id.clone(),
                ..Default::default()
            };
            if let Err(s) = self
                .client
                .containers()
                .create(self.req_lease(
                    CreateContainerRequest {
                        container: Some(container),
                    },
                    &lease,
                ))
                .await
            {
                let _ = self.remove_snapshot(&cs.id).await;
                return Err(if s.code() == Code::AlreadyExists {
                    RuntimeError::AlreadyExists { id: cs.id.clone() }
                } else {
                    status_err("Containers.Create", &cs.id)(s)
                });
            }
            Ok(())
        }
        .await;
        self.delete_lease(&lease).await;
        if matches!(&res, Err(e) if !matches!(e, RuntimeError::AlreadyExists { .. })) {
            let _ = std::fs::remove_dir_all(&dir);
        }
        res
    }

    async fn start(&self, id: &str) -> Result<u32, RuntimeError> {
        if self.get_container(id).await?.is_none() {
            return Err(RuntimeError::NotFound { id: id.to_string() });
        }
        let mut tasks = self.client.tasks();
        if let Some(p) = self.get_task(id).await? {
            match p.status() {
                TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing => return Ok(p.pid),
                TaskStatus::Created => {
                    let r = tasks
                        .start(self.req(StartRequest {
                            container_id: id.to_string(),
                            exec_id: String::new(),
                        }))
                        .await
                        .map_err(|s| RuntimeError::StartFailed {
                            id: id.to_string(),
                            reason: s.message().to_string(),
                        })?;
                    return Ok(r.into_inner().pid);
                }
                TaskStatus::Stopped | TaskStatus::Unknown => {
                    self.kill(id, "", SIGKILL, true).await?;
                    self.delete_task(id).await?;
                }
            }
        }
        let mounts: Vec<Mount> = self
            .client
            .snapshots()
            .mounts(self.req(MountsRequest {
                snapshotter: self.cfg.snapshotter.clone(),
                key: id.to_string(),
            }))
            .await
            .map_err(status_err("Snapshots.Mounts", id))?
            .into_inner()
            .mounts;
        let log = self.log_path(id);
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent).map_err(|e| RuntimeError::io(parent, e))?;
        }
        let log_uri = format!("file://{}", log.display());
        tasks
            .create(self.req(CreateTaskRequest {
                container_id: id.to_string(),
                rootfs: mounts,
                stdout: log_uri.clone(),
                stderr: log_uri,
                ..Default::default()
            }))
            .await
            .map_err(|s| RuntimeError::StartFailed {
                id: id.to_string(),
                reason: s.message().to_string(),
            })?;
        match tasks
            .start(self.req(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().pid),
            Err(s) => {
                let _ = self.kill(id, "", SIGKILL, true).await;
                let _ = self.delete_task(id).await;
                Err(RuntimeError::StartFailed {
                    id: id.to_string(),
                    reason: s.message().to_string(),
                })
            }
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<Option<i32>, RuntimeError> {
        let Some(p) = self.get_task(id).await? else {
            if self.get_container(id).await?.is_none() {
                return Err(RuntimeError::NotFound { id: id.to_string() });
            }
            return Ok(None);
        };
        if p.status() == TaskStatus::Stopped {
            return Ok(Some(p.exit_status as i32));
        }
        let mut wait = self.spawn_wait(id, "");
        self.kill(id, "", SIGTERM, false).await?;
        let code = match tokio::time::timeout(grace, &mut wait).await {
            Ok(r) => r.map_err(|e| RuntimeError::Containerd {
                op: "Tasks.Wait",
                object: id.to_string(),
                code: Code::Internal,
                message: e.to_string(),
            })??,
            Err(_) => {
                tracing::info!(
                    container = id,
                    ?grace,
                    "did not stop on SIGTERM; sending SIGKILL"
                );
                self.kill(id, "", SIGKILL, true).await?;
                let after = Duration::from_secs(10);
                match tokio::time::timeout(after, &mut wait).await {
                    Ok(r) => r.map_err(|e| RuntimeError::Containerd {
                        op: "Tasks.Wait",
                        object: id.to_string(),
                        code: Code::Internal,
                        message: e.to_string(),
                    })??,
                    Err(_) => {
                        wait.abort();
                        return Err(RuntimeError::Timeout {
                            op: "stop",
                            id: id.to_string(),
                            after: grace + after,
                        });
                    }
                }
            }
        };
        Ok(Some(code))
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        if let Some(p) = self.get_task(id).await? {
            if p.status() != TaskStatus::Stopped {
                let wait = self.spawn_wait(id, "");
                self.kill(id, "", SIGKILL, true).await?;
                if tokio::time::timeout(Duration::from_secs(10), wait)
                    .await
                    .is_err()
                {
                    return Err(RuntimeError::Timeout {
                        op: "delete",
                        id: id.to_string(),
                        after: Duration::from_secs(10),
                    });
                }
            }
            self.delete_task(id).await?;
        }
        match self
            .client
            .containers()
            .delete(self.req(DeleteContainerRequest { id: id.to_string() }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(status_err("Containers.Delete", id)(s)),
        }
        self.remove_snapshot(id).await?;
        let dir = self.container_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::io(dir, e)),
        }
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let containers = self
            .client
            .containers()
            .list(self.req(ListContainersRequest { filters: vec![] }))
            .await
            .map_err(status_err("Containers.List", ""))?
            .into_inner()
            .containers;
        let tasks = self
            .client
            .tasks()
            .list(self.req(ListTasksRequest {
                filter: String::new(),
            }))
            .await
            .map_err(status_err("Tasks.List", ""))?
            .into_inner()
            .tasks;
        // containerd 1.6 fills `id` (= container id for the init process), not `container_id`.
        let by_id: HashMap<&str, &containerd_client::types::v1::Process> = tasks
            .iter()
            .map(|t| {
                let id = if t.container_id.is_empty() {
                    &t.id
                } else {
                    &t.container_id
                };
                (id.as_str(), t)
            })
            .collect();
        let mut out: Vec<ContainerInfo> = containers
            .iter()
            .filter(|c| c.labels.get(LABEL_MANAGED).is_some_and(|v| v == "true"))
            .map(|c| ContainerInfo {
                id: c.id.clone(),
                image: c.image.clone(),
                labels: c.labels.clone().into_iter().collect::<BTreeMap<_, _>>(),
                status: by_id
                    .get(c.id.as_str())
                    .map(|p| task_status(p))
                    .unwrap_or(ContainerStatus::CREATED),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        if let Some(p) = self.get_task(id).await? {
            return Ok(task_status(&p));
        }
        if self.get_container(id).await?.is_some() {
            Ok(ContainerStatus::CREATED)
        } else {
            Err(RuntimeError::NotFound { id: id.to_string() })
        }
    }

    async fn wait(&self, id: &str) -> Result<i32, RuntimeError> {
        match self.spawn_wait(id, "").await {
            Ok(Err(RuntimeError::Containerd {
                code: Code::NotFound,
                ..
            })) => Err(RuntimeError::NotFound { id: id.to_string() }),
            Ok(r) => r,
            Err(e) => Err(RuntimeError::Containerd {
                op: "Tasks.Wait",
                object: id.to_string(),
                code: Code::Internal,
                message: e.to_string(),
            }),
        }
    }

    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        if argv.is_empty() {
            return Err(RuntimeError::InvalidSpec {
                id: id.to_string(),
                reason: "exec needs a command".to_string(),
            });
        }
        let exec_id = format!("exec-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let dir = self.container_dir(id).join(&exec_id);
        let res = self.exec_inner(id, &exec_id, argv, timeout, &dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        res
    }

    async fn changed(&self) {
        let mut rx = self.changes.subscribe();
        let _ = rx.changed().await;
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("container.log")
    }
}

/// Shared handle type the agent can store.
pub type SharedRuntime = Arc<dyn ContainerRuntime>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_archives_are_read_into_a_digest_map() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for (name, data) in [
            ("./oci-layout", &b"{}"[..]),
            ("./index.json", &b"{\"manifests\":[]}"[..]),
            ("./blobs/sha256/abcd", &b"blob"[..]),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        b.finish().unwrap();
        drop(b);
        let m = read_oci_archive(&path).unwrap();
        assert_eq!(m["index.json"], b"{\"manifests\":[]}");
        assert_eq!(m["sha256:abcd"], b"blob");
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn task_states_map_to_container_states() {
        let p = containerd_client::types::v1::Process {
            pid: 42,
            status: TaskStatus::Stopped as i32,
            exit_status: 3,
            ..Default::default()
        };
        assert_eq!(task_status(&p), ContainerStatus::exited(3));
        let p = containerd_client::types::v1::Process {
            pid: 42,
            status: TaskStatus::Running as i32,
            ..Default::default()
        };
        assert_eq!(task_status(&p), ContainerStatus::running(42));
    }
}
