//! [`HostFiles`]: the narrow trait for the node's side of task files (payload tmpfs mounts,
//! volume directories, resolving bind sources), and [`KernelFiles`], its implementation
//! with mount(2) and the filesystem. The recording fake is `super::fake::RecordingFiles`.
//!
//! A payload tmpfs is mounted nodev, nosuid, noexec with a size limit and mode 0700 (only
//! root on the node reads it; containers see only the bound subdirectories), filled, then
//! remounted read-only. Its bytes live in memory only: nothing is written to a disk.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::plan::PayloadFile;

/// A failed file operation on the node, with the path.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct FilesError {
    /// What was being done.
    pub what: &'static str,
    /// On which path.
    pub path: PathBuf,
    /// Why it failed.
    #[source]
    pub source: std::io::Error,
}

impl FilesError {
    /// `what` on `path` failed with `source`.
    pub fn new(what: &'static str, path: &Path, source: impl Into<std::io::Error>) -> Self {
        FilesError {
            what,
            path: path.to_path_buf(),
            source: source.into(),
        }
    }
}

/// The node's side of task files. `Send + Sync`; every method is idempotent.
pub trait HostFiles: Send + Sync {
    /// Mounts a fresh tmpfs of `size` bytes at `dir` (made if missing), writes `files`
    /// into it, and remounts it read-only. A tmpfs already mounted there read-only is
    /// kept (payloads are immutable); a writable one (a start that crashed) is replaced.
    fn mount_payloads(
        &self,
        dir: &Path,
        size: u64,
        files: &[PayloadFile],
    ) -> Result<(), FilesError>;
    /// Unmounts what is mounted at `dir` and removes it. `Ok` if there is nothing.
    fn unmount_payloads(&self, dir: &Path) -> Result<(), FilesError>;
    /// The names of the directories in `parent` (none if it does not exist).
    fn subdirectories(&self, parent: &Path) -> Result<Vec<String>, FilesError>;
    /// Makes the volume directory `dir` with its data directory `data` and records when,
    /// unless it exists.
    fn ensure_volume(&self, dir: &Path, data: &Path) -> Result<(), FilesError>;
    /// When volume `dir` was made, if recorded.
    fn volume_created(&self, dir: &Path) -> Option<DateTime<Utc>>;
    /// Removes volume `dir` and everything in it.
    fn remove_volume(&self, dir: &Path) -> Result<(), FilesError>;
    /// `path` with every symlink resolved; an error if it does not exist.
    fn resolve(&self, path: &Path) -> Result<PathBuf, FilesError>;
}

/// The file in a volume's directory that records when it was made (RFC 3339).
pub const VOLUME_CREATED: &str = "created-at";

/// [`HostFiles`] for real.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelFiles;

const PAYLOAD_FLAGS: MsFlags = MsFlags::MS_NODEV
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NOEXEC);

/// Whether `path` is a mount point, and read-only (from `/proc/self/mountinfo`).
fn mounted(path: &Path) -> Result<Option<bool>, FilesError> {
    let info = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(info).map_err(|e| FilesError::new("reading", info, e))?;
    let want = path.to_string_lossy();
    let mut found = None;
    for line in text.lines() {
        // id parent major:minor root mount-point options ...
        let mut fields = line.split(' ');
        let (Some(point), Some(options)) = (fields.nth(4), fields.next()) else {
            continue;
        };
        if unescape(point) == want {
            found = Some(options.split(',').any(|o| o == "ro"));
        }
    }
    Ok(found)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) if b[i] == b'\\' => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push((v & 0xff) as u8);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn write_file(root: &Path, f: &PayloadFile) -> Result<(), FilesError> {
    let path = root.join(&f.path);
    if let Some(parent) = path.parent() {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(parent)
                .map_err(|e| FilesError::new("creating", parent, e))?;
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| FilesError::new("creating", &path, e))?;
    file.write_all(f.data.bytes())
        .map_err(|e| FilesError::new("writing", &path, e))?;
    std::os::unix::fs::fchown(&file, Some(f.uid), Some(f.gid))
        .map_err(|e| FilesError::new("changing the owner of", &path, e))?;
    file.set_permissions(std::fs::Permissions::from_mode(f.mode))
        .map_err(|e| FilesError::new("changing the mode of", &path, e))?;
    Ok(())
}

impl HostFiles for KernelFiles {
    fn mount_payloads(
        &self,
        dir: &Path,
        size: u64,
        files: &[PayloadFile],
    ) -> Result<(), FilesError> {
        match mounted(dir)? {
            Some(true) => return Ok(()),
            Some(false) => self.unmount_payloads(dir)?,
            None => {}
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| FilesError::new("creating", dir, e))?;
        let data = format!("size={size},mode=0700");
        mount(
            Some("shoal-payloads"),
            dir,
            Some("tmpfs"),
            PAYLOAD_FLAGS,
            Some(data.as_str()),
        )
        .map_err(|e| FilesError::new("mounting a tmpfs on", dir, e))?;
        let filled = (|| {
            for sub in [super::plan::SECRETS_SUBDIR, super::plan::CONFIGS_SUBDIR] {
                if files.iter().any(|f| f.path.starts_with(sub)) {
                    let p = dir.join(sub);
                    std::fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&p)
                        .map_err(|e| FilesError::new("creating", &p, e))?;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                        .map_err(|e| FilesError::new("changing the mode of", &p, e))?;
                }
            }
            for f in files {
                write_file(dir, f)?;
            }
            mount(
                None::<&str>,
                dir,
                None::<&str>,
                PAYLOAD_FLAGS | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                Some(data.as_str()),
            )
            .map_err(|e| FilesError::new("remounting read-only", dir, e))
        })();
        if filled.is_err() {
            let _ = self.unmount_payloads(dir);
        }
        filled
    }

    fn unmount_payloads(&self, dir: &Path) -> Result<(), FilesError> {
        while mounted(dir)?.is_some() {
            // Detach: a shim or exec still holding it must not keep it on the node's tree.
            umount2(dir, MntFlags::MNT_DETACH)
                .map_err(|e| FilesError::new("unmounting", dir, e))?;
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FilesError::new("removing", dir, e)),
        }
    }

    fn subdirectories(&self, parent: &Path) -> Result<Vec<String>, FilesError> {
        let entries = match std::fs::read_dir(parent) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(FilesError::new("listing", parent, e)),
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    fn ensure_volume(&self, dir: &Path, data: &Path) -> Result<(), FilesError> {
        if data.is_dir() {
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(data)
            .map_err(|e| FilesError::new("creating", data, e))?;
        let stamp = dir.join(VOLUME_CREATED);
        std::fs::write(&stamp, Utc::now().to_rfc3339())
            .map_err(|e| FilesError::new("writing", &stamp, e))
    }

    fn volume_created(&self, dir: &Path) -> Option<DateTime<Utc>> {
        let text = std::fs::read_to_string(dir.join(VOLUME_CREATED)).ok()?;
        DateTime::parse_from_rfc3339(text.trim())
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    fn remove_volume(&self, dir: &Path) -> Result<(), FilesError> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FilesError::new("removing", dir, e)),
        }
    }

    fn resolve(&self, path: &Path) -> Result<PathBuf, FilesError> {
        std::fs::canonicalize(path).map_err(|e| FilesError::new("resolving", path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::taskfiles::source::Payload;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn mountinfo_paths_should_be_unescaped() {
        assert_eq!(unescape(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/end\"), r"/end\");
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn payloads_should_sit_on_a_read_only_tmpfs_with_owner_and_mode_and_go_away() {
        if !is_root() {
            eprintln!("skipped: needs root (mounts a tmpfs)");
            return;
        }
        /// Unmounts on drop, so a failing assertion leaves no mount behind.
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = KernelFiles.unmount_payloads(&self.0);
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("payloads").join("t1");
        let _cleanup = Unmount(dir.clone());
        let files = vec![
            PayloadFile {
                path: "secrets/pw".into(),
                data: Payload::new(b"hunter2".to_vec()),
                uid: 1000,
                gid: 1001,
                mode: 0o400,
            },
            PayloadFile {
                path: "configs/0".into(),
                data: Payload::new(b"conf".to_vec()),
                uid: 0,
                gid: 0,
                mode: 0o444,
            },
        ];
        let host = KernelFiles;
        host.mount_payloads(&dir, 64 * 1024, &files).unwrap();
        assert_eq!(mounted(&dir).unwrap(), Some(true), "read-only mount");
        let line = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(&*dir.to_string_lossy()))
            .unwrap()
            .to_string();
        for flag in ["ro", "nosuid", "nodev", "noexec"] {
            assert!(
                line.split(' ')
                    .nth(5)
                    .unwrap()
                    .split(',')
                    .any(|o| o == flag),
                "{line}"
            );
        }
        assert!(line.contains(" - tmpfs "), "{line}");
        let pw = dir.join("secrets/pw");
        assert_eq!(std::fs::read(&pw).unwrap(), b"hunter2");
        let meta = std::fs::metadata(&pw).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (1000, 1001, 0o400)
        );
        let secrets = std::fs::metadata(dir.join("secrets")).unwrap();
        assert_eq!(secrets.mode() & 0o777, 0o755);
        assert!(
            std::fs::write(dir.join("secrets/new"), b"x").is_err(),
            "read-only"
        );
        // Mounting again keeps it; unmounting removes it, twice is fine.
        host.mount_payloads(&dir, 64 * 1024, &files).unwrap();
        host.unmount_payloads(&dir).unwrap();
        assert_eq!(mounted(&dir).unwrap(), None);
        assert!(!dir.exists());
        host.unmount_payloads(&dir).unwrap();
    }

    #[test]
    fn volumes_should_record_when_they_were_made() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("volumes").join("data");
        let host = KernelFiles;
        assert!(host.volume_created(&dir).is_none());
        host.ensure_volume(&dir, &dir.join("_data")).unwrap();
        let made = host.volume_created(&dir).unwrap();
        std::fs::write(dir.join("_data/kept"), b"x").unwrap();
        host.ensure_volume(&dir, &dir.join("_data")).unwrap();
        assert_eq!(host.volume_created(&dir), Some(made));
        assert!(dir.join("_data/kept").exists());
        assert_eq!(
            host.subdirectories(&tmp.path().join("volumes")).unwrap(),
            vec!["data".to_string()]
        );
        host.remove_volume(&dir).unwrap();
        assert!(!dir.exists());
        assert!(host
            .subdirectories(&tmp.path().join("nope"))
            .unwrap()
            .is_empty());
    }
}
