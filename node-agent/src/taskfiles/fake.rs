//! Recording fakes for tests (feature `test-util`): [`RecordingFiles`], a [`HostFiles`]
//! that keeps payload mounts and volumes in memory, and [`FakePayloads`], a
//! [`PayloadSource`] with scripted answers and failures.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use shoal_api_types::payload::encode_payload;
use shoal_api_types::{DeliveredPayload, TaskPayloads};

use super::host::{FilesError, HostFiles};
use super::plan::PayloadFile;
use super::source::{FetchError, PayloadSource};

/// One call on [`RecordingFiles`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilesCall {
    /// `mount_payloads(dir, size, files)`: the files' paths.
    MountPayloads(PathBuf, u64, Vec<PathBuf>),
    /// `unmount_payloads(dir)`.
    UnmountPayloads(PathBuf),
    /// `ensure_volume(dir)`.
    EnsureVolume(PathBuf),
    /// `remove_volume(dir)`.
    RemoveVolume(PathBuf),
}

#[derive(Default)]
struct State {
    calls: Vec<FilesCall>,
    /// Mounted payload dirs and their files.
    mounted: BTreeMap<PathBuf, Vec<PayloadFile>>,
    /// Volume dirs.
    volumes: BTreeMap<PathBuf, DateTime<Utc>>,
    /// Paths that exist, with what they resolve to.
    paths: BTreeMap<PathBuf, PathBuf>,
}

/// A [`HostFiles`] in memory.
#[derive(Default)]
pub struct RecordingFiles {
    state: Mutex<State>,
}

impl RecordingFiles {
    /// Nothing mounted, no volume, no path.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<FilesCall> {
        self.state().calls.clone()
    }

    /// The payload files mounted at `dir`, if mounted.
    pub fn mounted(&self, dir: &Path) -> Option<Vec<PayloadFile>> {
        self.state().mounted.get(dir).cloned()
    }

    /// Every mounted payload dir.
    pub fn mounted_dirs(&self) -> BTreeSet<PathBuf> {
        self.state().mounted.keys().cloned().collect()
    }

    /// Makes `path` exist, resolving to `to` (itself when no symlink).
    pub fn add_path(&self, path: impl Into<PathBuf>, to: impl Into<PathBuf>) {
        self.state().paths.insert(path.into(), to.into());
    }
}

impl HostFiles for RecordingFiles {
    fn mount_payloads(
        &self,
        dir: &Path,
        size: u64,
        files: &[PayloadFile],
    ) -> Result<(), FilesError> {
        let mut s = self.state();
        s.calls.push(FilesCall::MountPayloads(
            dir.to_path_buf(),
            size,
            files.iter().map(|f| f.path.clone()).collect(),
        ));
        s.mounted.insert(dir.to_path_buf(), files.to_vec());
        Ok(())
    }

    fn unmount_payloads(&self, dir: &Path) -> Result<(), FilesError> {
        let mut s = self.state();
        s.calls.push(FilesCall::UnmountPayloads(dir.to_path_buf()));
        s.mounted.remove(dir);
        Ok(())
    }

    fn subdirectories(&self, parent: &Path) -> Result<Vec<String>, FilesError> {
        let s = self.state();
        let names = s
            .mounted
            .keys()
            .chain(s.volumes.keys())
            .filter(|p| p.parent() == Some(parent))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect::<BTreeSet<_>>();
        Ok(names.into_iter().collect())
    }

    fn ensure_volume(&self, dir: &Path, _data: &Path) -> Result<(), FilesError> {
        let mut s = self.state();
        s.calls.push(FilesCall::EnsureVolume(dir.to_path_buf()));
        s.volumes.entry(dir.to_path_buf()).or_insert_with(Utc::now);
        Ok(())
    }

    fn volume_created(&self, dir: &Path) -> Option<DateTime<Utc>> {
        self.state().volumes.get(dir).copied()
    }

    fn remove_volume(&self, dir: &Path) -> Result<(), FilesError> {
        let mut s = self.state();
        s.calls.push(FilesCall::RemoveVolume(dir.to_path_buf()));
        s.volumes.remove(dir);
        Ok(())
    }

    fn resolve(&self, path: &Path) -> Result<PathBuf, FilesError> {
        self.state().paths.get(path).cloned().ok_or_else(|| {
            FilesError::new(
                "resolving",
                path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })
    }
}

/// A [`PayloadSource`] with fixed payloads and scripted failures.
#[derive(Default)]
pub struct FakePayloads {
    secrets: Mutex<BTreeMap<String, Vec<u8>>>,
    configs: Mutex<BTreeMap<String, Vec<u8>>>,
    failures: Mutex<VecDeque<FetchError>>,
    fetches: Mutex<Vec<String>>,
}

impl FakePayloads {
    /// No payloads.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves secret `name` with `data`.
    pub fn secret(self, name: &str, data: &[u8]) -> Self {
        self.secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.into(), data.to_vec());
        self
    }

    /// Serves config `name` with `data`.
    pub fn config(self, name: &str, data: &[u8]) -> Self {
        self.configs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.into(), data.to_vec());
        self
    }

    /// The next fetches fail with `errors`, in order.
    pub fn fail_with(&self, errors: impl IntoIterator<Item = FetchError>) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(errors);
    }

    /// The task ids fetched so far (failures included).
    pub fn fetches(&self) -> Vec<String> {
        self.fetches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[async_trait]
impl PayloadSource for FakePayloads {
    async fn fetch(&self, task: &str) -> Result<TaskPayloads, FetchError> {
        self.fetches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task.to_string());
        if let Some(e) = self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
        {
            return Err(e);
        }
        let list = |m: &Mutex<BTreeMap<String, Vec<u8>>>| {
            m.lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(name, data)| DeliveredPayload {
                    name: name.clone(),
                    data: encode_payload(data),
                })
                .collect()
        };
        Ok(TaskPayloads {
            secrets: list(&self.secrets),
            configs: list(&self.configs),
        })
    }
}
