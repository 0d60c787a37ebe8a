//! The agent's identity on disk (`--pki-dir`, default [`DEFAULT_PKI_DIR`]):
//!
//! | file | what |
//! | --- | --- |
//! | `ca.crt` | the cluster CA, pinned at join by the join token's digest |
//! | `node.crt`, `node.key` (0600) | the node's certificate (CN = node name) and key |
//! | `join.json` | `{"controller","etcdEndpoints","name"}`: where to renew, which etcd |
//! | `fleet.crt`, `fleet.key` (0600) | a hollow fleet's `shoal-hollow-fleet` identity (benchmarks), with `ca.crt` |
//!
//! Invariants: the directory is 0700 and every key 0600 from the moment it exists; every
//! file is replaced atomically (written to a temporary name, synced, renamed); and the
//! certificate and its key change together: a renewal writes both under temporary names,
//! then a commit mark (`node.crt.new`), then renames both — an agent that crashed halfway
//! finishes the renames on its next start ([`PkiDir::recover`]) or, before the mark, drops
//! the temporaries, so `node.crt` and `node.key` always belong together.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::IdentityError;

/// Where `shoal-agent join` writes the node's identity unless told otherwise.
pub const DEFAULT_PKI_DIR: &str = "/var/lib/shoal-agent/pki";

/// `join.json`: what the agent learnt when it joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinInfo {
    /// The controller's URL (`https://HOST:7777`), where certificates are renewed.
    pub controller: String,
    /// The etcd endpoints the controller advertised (`https://…:2379`).
    pub etcd_endpoints: Vec<String>,
    /// The node's name (= its certificate's CN and etcd user).
    pub name: String,
}

impl JoinInfo {
    /// Parses `join.json` (read from `path`, for messages); every field is required.
    pub fn parse(path: &Path, text: &str) -> Result<JoinInfo, IdentityError> {
        let info: JoinInfo =
            serde_json::from_str(text).map_err(|e| IdentityError::InvalidFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let problem = if info.controller.is_empty() {
            Some("controller: must not be empty")
        } else if info.etcd_endpoints.is_empty() {
            Some("etcdEndpoints: must name at least one endpoint")
        } else if info.name.is_empty() {
            Some("name: must not be empty")
        } else {
            None
        };
        match problem {
            Some(reason) => Err(IdentityError::InvalidFile {
                path: path.to_path_buf(),
                reason: reason.into(),
            }),
            None => Ok(info),
        }
    }
}

/// A node's identity: what `join` wrote and every renewal replaces.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The cluster CA (PEM).
    pub ca_pem: String,
    /// The node's certificate (PEM).
    pub cert_pem: String,
    /// The node's private key (PEM).
    pub key_pem: String,
    /// `join.json`.
    pub join: JoinInfo,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("join", &self.join)
            .finish_non_exhaustive()
    }
}

/// A hollow fleet's identity (`fleet.crt`, `fleet.key`, `ca.crt`).
#[derive(Clone, PartialEq, Eq)]
pub struct FleetIdentity {
    /// The cluster CA (PEM).
    pub ca_pem: String,
    /// The `shoal-hollow-fleet` certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for FleetIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetIdentity").finish_non_exhaustive()
    }
}

/// The agent's identity directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiDir {
    root: PathBuf,
}

const CA: &str = "ca.crt";
const CERT: &str = "node.crt";
const KEY: &str = "node.key";
const JOIN: &str = "join.json";
const FLEET_CERT: &str = "fleet.crt";
const FLEET_KEY: &str = "fleet.key";
/// The renewal's temporaries: the new key, the certificate being written, the commit mark.
const KEY_NEW: &str = "node.key.new";
const CERT_PART: &str = "node.crt.part";
const CERT_NEW: &str = "node.crt.new";

impl PkiDir {
    /// The directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> PkiDir {
        PkiDir { root: root.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `ca.crt`.
    pub fn ca_path(&self) -> PathBuf {
        self.root.join(CA)
    }

    /// `node.crt`.
    pub fn cert_path(&self) -> PathBuf {
        self.root.join(CERT)
    }

    /// `node.key`.
    pub fn key_path(&self) -> PathBuf {
        self.root.join(KEY)
    }

    /// `join.json`.
    pub fn join_path(&self) -> PathBuf {
        self.root.join(JOIN)
    }

    /// Whether a node identity is there (`node.crt` exists).
    pub fn is_joined(&self) -> bool {
        self.cert_path().exists()
    }

    /// Reads the node's identity, finishing an interrupted renewal first.
    pub fn load(&self) -> Result<NodeIdentity, IdentityError> {
        if !self.root.is_dir() || !self.is_joined() {
            return Err(IdentityError::NotJoined {
                dir: self.root.clone(),
            });
        }
        self.recover()?;
        let join_path = self.join_path();
        Ok(NodeIdentity {
            ca_pem: read(&self.ca_path())?,
            cert_pem: read(&self.cert_path())?,
            key_pem: read(&self.key_path())?,
            join: JoinInfo::parse(&join_path, &read(&join_path)?)?,
        })
    }

    /// Reads a hollow fleet's identity (`fleet.crt`, `fleet.key`, `ca.crt`).
    pub fn load_fleet(&self) -> Result<FleetIdentity, IdentityError> {
        Ok(FleetIdentity {
            ca_pem: read(&self.ca_path())?,
            cert_pem: read(&self.root.join(FLEET_CERT))?,
            key_pem: read(&self.root.join(FLEET_KEY))?,
        })
    }

    /// Writes a whole identity (join): `ca.crt`, the certificate and key, `join.json`.
    pub fn save(&self, id: &NodeIdentity) -> Result<(), IdentityError> {
        self.ensure_dir()?;
        self.save_ca(&id.ca_pem)?;
        self.save_certificate(&id.cert_pem, &id.key_pem)?;
        self.save_join(&id.join)
    }

    /// Replaces `ca.crt`.
    pub fn save_ca(&self, ca_pem: &str) -> Result<(), IdentityError> {
        self.ensure_dir()?;
        write_atomic(&self.ca_path(), ca_pem.as_bytes(), 0o644)
    }

    /// Replaces `join.json`.
    pub fn save_join(&self, join: &JoinInfo) -> Result<(), IdentityError> {
        self.ensure_dir()?;
        let mut text = serde_json::to_string_pretty(join).expect("join.json serializes");
        text.push('\n');
        write_atomic(&self.join_path(), text.as_bytes(), 0o644)
    }

    /// Replaces the certificate and its key together (see the module's invariants).
    pub fn save_certificate(&self, cert_pem: &str, key_pem: &str) -> Result<(), IdentityError> {
        self.ensure_dir()?;
        self.recover()?;
        write_synced(&self.root.join(KEY_NEW), key_pem.as_bytes(), 0o600)?;
        write_synced(&self.root.join(CERT_PART), cert_pem.as_bytes(), 0o644)?;
        // The commit mark: from here on both new files are complete and win.
        rename(&self.root.join(CERT_PART), &self.root.join(CERT_NEW))?;
        sync_dir(&self.root)?;
        self.recover()
    }

    /// Finishes a renewal that was interrupted after its commit mark, or drops the
    /// temporaries of one interrupted before it.
    pub fn recover(&self) -> Result<(), IdentityError> {
        let (key_new, cert_part, cert_new) = (
            self.root.join(KEY_NEW),
            self.root.join(CERT_PART),
            self.root.join(CERT_NEW),
        );
        if cert_new.exists() {
            if key_new.exists() {
                rename(&key_new, &self.key_path())?;
            }
            rename(&cert_new, &self.cert_path())?;
        } else {
            for stale in [&key_new, &cert_part] {
                match std::fs::remove_file(stale) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(IdentityError::Write {
                            path: stale.clone(),
                            source,
                        })
                    }
                }
            }
        }
        sync_dir(&self.root)
    }

    /// Creates the directory (0700) if needed.
    fn ensure_dir(&self) -> Result<(), IdentityError> {
        let err = |source| IdentityError::Write {
            path: self.root.clone(),
            source,
        };
        if !self.root.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.root)
                .map_err(err)?;
        }
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700)).map_err(err)
    }
}

fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` (created with `mode`, replaced if there) and syncs it.
fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let err = |source| IdentityError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    // An existing file keeps its mode on open: set it.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}

/// Replaces `path` by `bytes` atomically: a temporary file, synced, renamed over it.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    write_synced(&tmp, bytes, mode)?;
    rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn rename(from: &Path, to: &Path) -> Result<(), IdentityError> {
    std::fs::rename(from, to).map_err(|source| IdentityError::Write {
        path: to.to_path_buf(),
        source,
    })
}

/// Makes renames in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| IdentityError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> NodeIdentity {
        NodeIdentity {
            ca_pem: "CA".into(),
            cert_pem: "CERT-1".into(),
            key_pem: "KEY-1".into(),
            join: JoinInfo {
                controller: "https://10.0.0.1:7777".into(),
                etcd_endpoints: vec!["https://10.0.0.1:2379".into()],
                name: "node-1".into(),
            },
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn join_json_should_use_the_contract_field_names() {
        let text = serde_json::to_string(&identity().join).unwrap();
        assert_eq!(
            text,
            r#"{"controller":"https://10.0.0.1:7777","etcdEndpoints":["https://10.0.0.1:2379"],"name":"node-1"}"#
        );
        let p = Path::new("/x/join.json");
        assert_eq!(JoinInfo::parse(p, &text).unwrap(), identity().join);
    }

    #[test]
    fn join_json_should_be_refused_with_the_file_and_field_named() {
        let p = Path::new("/x/join.json");
        let missing = JoinInfo::parse(p, r#"{"controller":"https://c:7777","name":"n"}"#)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/x/join.json") && missing.contains("etcdEndpoints"));
        let empty = JoinInfo::parse(
            p,
            r#"{"controller":"https://c:7777","etcdEndpoints":[],"name":"n"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(empty.contains("etcdEndpoints: must name"), "{empty}");
        let unknown = JoinInfo::parse(
            p,
            r#"{"controller":"c","etcdEndpoints":["e"],"name":"n","x":1}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(unknown.contains("unknown field"), "{unknown}");
    }

    #[test]
    fn saved_identity_should_load_back_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PkiDir::new(tmp.path().join("pki"));
        assert!(matches!(dir.load(), Err(IdentityError::NotJoined { .. })));
        dir.save(&identity()).unwrap();
        assert_eq!(dir.load().unwrap(), identity());
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&dir.key_path()), 0o600);
        assert_eq!(mode(&dir.cert_path()), 0o644);
        // Only the four files: no temporaries left behind.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["ca.crt", "join.json", "node.crt", "node.key"]);
    }

    #[test]
    fn a_renewal_interrupted_after_its_commit_mark_should_be_finished_on_load() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PkiDir::new(tmp.path());
        dir.save(&identity()).unwrap();
        // Crashed after the mark, before the renames.
        std::fs::write(tmp.path().join(KEY_NEW), "KEY-2").unwrap();
        std::fs::write(tmp.path().join(CERT_NEW), "CERT-2").unwrap();
        let id = dir.load().unwrap();
        assert_eq!(
            (id.cert_pem.as_str(), id.key_pem.as_str()),
            ("CERT-2", "KEY-2")
        );
        // Crashed after renaming the key only.
        std::fs::write(tmp.path().join(KEY), "KEY-3").unwrap();
        std::fs::write(tmp.path().join(CERT_NEW), "CERT-3").unwrap();
        let id = dir.load().unwrap();
        assert_eq!(
            (id.cert_pem.as_str(), id.key_pem.as_str()),
            ("CERT-3", "KEY-3")
        );
    }

    #[test]
    fn a_renewal_interrupted_before_its_commit_mark_should_leave_the_old_pair() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PkiDir::new(tmp.path());
        dir.save(&identity()).unwrap();
        std::fs::write(tmp.path().join(KEY_NEW), "KEY-2").unwrap();
        std::fs::write(tmp.path().join(CERT_PART), "CERT-2 (half").unwrap();
        let id = dir.load().unwrap();
        assert_eq!(
            (id.cert_pem.as_str(), id.key_pem.as_str()),
            ("CERT-1", "KEY-1")
        );
        assert!(!tmp.path().join(KEY_NEW).exists());
        assert!(!tmp.path().join(CERT_PART).exists());
        dir.save_certificate("CERT-4", "KEY-4").unwrap();
        let id = dir.load().unwrap();
        assert_eq!(
            (id.cert_pem.as_str(), id.key_pem.as_str()),
            ("CERT-4", "KEY-4")
        );
        assert_eq!(mode(&dir.key_path()), 0o600);
    }
}
