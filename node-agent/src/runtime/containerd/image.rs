//! Owns the image side of [`ContainerdRuntime`]: client-side pulls and OCI archive imports
//! into containerd's content store, unpacking into the snapshotter, and the leases that keep
//! a half-done pull from being collected (why pulls are client-side: see [`super`]).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, GetImageRequest, Image, InfoRequest, ReadContentRequest,
    UpdateImageRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::{Code, Status};
use containerd_client::types::Descriptor as CDescriptor;

use super::{exists, status_err, ContainerdRuntime};
use crate::runtime::error::RuntimeError;
use crate::runtime::reference::Reference;
use crate::runtime::registry::{
    chain_ids, is_index, is_layer, is_manifest, select_platform, ConfigFile, Descriptor, Index,
    Manifest, RegistryClient,
};
use crate::runtime::types::ImageInfo;

const CHUNK: usize = 1 << 20;

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
    pub(super) async fn next(&mut self) -> Result<Option<Vec<u8>>, RuntimeError> {
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
    pub(super) async fn bytes(&self, digest: &str) -> Result<Vec<u8>, RuntimeError> {
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

    pub(super) async fn open(&self, digest: &str) -> Result<Chunks, RuntimeError> {
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
    /// The image `reference` as stored, pulled first unless it is there complete.
    pub(super) async fn ensure_local_image(
        &self,
        reference: &str,
    ) -> Result<ImageInfo, RuntimeError> {
        let r = Reference::parse(reference)?;
        if let Some(info) = self.local_image(&r).await? {
            return Ok(info);
        }
        let _g = self.pull_lock.lock().await;
        if let Some(info) = self.local_image(&r).await? {
            return Ok(info);
        }
        tracing::info!(image = %r, "pulling");
        let info = self
            .pull_with_deadline(&r, reference)
            .await
            .map_err(|e| match e {
                // Name the reference as the user wrote it.
                RuntimeError::ImageNotFound { .. } => RuntimeError::ImageNotFound {
                    reference: reference.to_string(),
                },
                other => other,
            })?;
        tracing::info!(image = %r, digest = %info.digest, "pulled");
        Ok(info)
    }

    /// Pulls `reference` from its registry even if it is present (ensure_image does not).
    pub async fn pull(&self, reference: &str) -> Result<ImageInfo, RuntimeError> {
        let r = Reference::parse(reference)?;
        let _g = self.pull_lock.lock().await;
        self.pull_with_deadline(&r, reference).await
    }

    /// [`Self::pull_locked`] within the configured total deadline. An abandoned pull leaves
    /// only content under its lease, which expires (see [`Self::create_lease`]).
    async fn pull_with_deadline(
        &self,
        r: &Reference,
        reference: &str,
    ) -> Result<ImageInfo, RuntimeError> {
        with_deadline(self.cfg.pull_timeout, reference, self.pull_locked(r)).await
    }

    pub(super) async fn pull_locked(&self, r: &Reference) -> Result<ImageInfo, RuntimeError> {
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

    pub(super) async fn delete_lease(&self, lease: &str) {
        let _ = self
            .client
            .leases()
            .delete(self.req(containerd_client::services::v1::DeleteRequest {
                id: lease.to_string(),
                sync: false,
            }))
            .await;
    }

    pub(super) async fn create_lease(&self) -> Result<String, RuntimeError> {
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

    pub(super) async fn content_exists(&self, digest: &str) -> Result<bool, RuntimeError> {
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
    pub(super) async fn put_small(
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

    pub(super) async fn read_content(&self, digest: &str) -> Result<Vec<u8>, RuntimeError> {
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

    pub(super) async fn snapshot_exists(&self, key: &str) -> Result<bool, RuntimeError> {
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
    pub(super) async fn unpack(
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

    pub(super) async fn remove_snapshot(&self, key: &str) -> Result<(), RuntimeError> {
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
    pub(super) async fn local_image(
        &self,
        r: &Reference,
    ) -> Result<Option<ImageInfo>, RuntimeError> {
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
}

/// `pull` unless it takes longer than `after`: then [`RuntimeError::PullTimeout`].
pub async fn with_deadline<T>(
    after: Duration,
    reference: &str,
    pull: impl std::future::Future<Output = Result<T, RuntimeError>>,
) -> Result<T, RuntimeError> {
    match tokio::time::timeout(after, pull).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(image = %reference, after = ?after, "image pull abandoned: past its deadline");
            Err(RuntimeError::PullTimeout {
                reference: reference.to_string(),
                after,
            })
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pulls_past_their_deadline_fail_with_a_clear_error() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        };
        let e = with_deadline(Duration::from_secs(300), "localhost:5000/big:1", slow)
            .await
            .unwrap_err();
        assert!(matches!(e, RuntimeError::PullTimeout { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "pulling image localhost:5000/big:1 did not finish within 5m (the agent's \
             --pull-timeout); the registry is too slow or the image too large"
        );
        assert_eq!(e.class(), crate::runtime::ErrorClass::Failed);
        let quick = async { Ok(7) };
        assert_eq!(
            with_deadline(Duration::from_secs(1), "x", quick)
                .await
                .unwrap(),
            7
        );
    }

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
}
