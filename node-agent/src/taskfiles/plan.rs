//! Pure decisions about a task's files: which payload files go into its tmpfs (with owner
//! and mode), how large that tmpfs is, whether a bind source is allowed, and the container
//! mounts that show all of it inside the container. No I/O: the caller resolves bind
//! sources and fetches payloads first.
//!
//! Layout of a task's payload tmpfs (`<root>/payloads/<task id>`, mode 0700):
//! `secrets/` (0755; one file per secret, named after the reference's `file_name()`), bound
//! read-only at `/run/secrets`; `configs/<i>` (the i-th config reference of the spec), each
//! bound read-only at its own path.

use std::path::{Path, PathBuf};

use shoal_api_types::service::{Mount, MountType};
use shoal_api_types::TaskSpec;

use super::source::Payload;
use crate::runtime::ContainerMount;

/// Where secrets appear in the container.
pub const SECRETS_DIR: &str = "/run/secrets";
/// The secrets' directory inside a task's payload tmpfs.
pub const SECRETS_SUBDIR: &str = "secrets";
/// The configs' directory inside a task's payload tmpfs.
pub const CONFIGS_SUBDIR: &str = "configs";
/// A volume's data directory inside `<root>/volumes/<name>/` (as Docker's `_data`).
pub const VOLUME_DATA: &str = "_data";

/// Page size tmpfs accounts in.
const PAGE: u64 = 4096;

/// One file to write into a task's payload tmpfs.
#[derive(Clone, PartialEq, Eq)]
pub struct PayloadFile {
    /// Path relative to the tmpfs root (`secrets/pw`, `configs/0`).
    pub path: PathBuf,
    /// The bytes.
    pub data: Payload,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
}

impl std::fmt::Debug for PayloadFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadFile")
            .field("path", &self.path)
            .field("data", &self.data)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

/// Whether the task needs payloads from the controller.
pub fn needs_payloads(spec: &TaskSpec) -> bool {
    !spec.secrets.is_empty() || !spec.configs.is_empty()
}

/// A name usable as one path component (not empty, no `/`, not `.` or `..`, no NUL).
fn plain_component(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// The files of the task's payload tmpfs, from the payloads the controller sent (`find`
/// looks a secret or config up by name). A reference without its payload is an error
/// naming it.
pub fn payload_files(
    spec: &TaskSpec,
    secret: impl Fn(&str) -> Option<Payload>,
    config: impl Fn(&str) -> Option<Payload>,
) -> Result<Vec<PayloadFile>, String> {
    let mut files = Vec::new();
    for s in &spec.secrets {
        let name = s.file_name();
        if !plain_component(name) {
            return Err(format!(
                "secret {}: target {name:?} is not a file name in {SECRETS_DIR}",
                s.source
            ));
        }
        let data = secret(&s.source)
            .ok_or_else(|| format!("the controller sent no data for secret {}", s.source))?;
        files.push(PayloadFile {
            path: Path::new(SECRETS_SUBDIR).join(name),
            data,
            uid: s.uid,
            gid: s.gid,
            mode: s.mode & 0o7777,
        });
    }
    for (i, c) in spec.configs.iter().enumerate() {
        let data = config(&c.source)
            .ok_or_else(|| format!("the controller sent no data for config {}", c.source))?;
        files.push(PayloadFile {
            path: Path::new(CONFIGS_SUBDIR).join(i.to_string()),
            data,
            uid: c.uid,
            gid: c.gid,
            mode: c.mode & 0o7777,
        });
    }
    Ok(files)
}

/// The size of a tmpfs that holds `files`: each file rounded up to whole pages, plus a
/// page per file and a few for the directories.
pub fn tmpfs_size(files: &[PayloadFile]) -> u64 {
    let data: u64 = files
        .iter()
        .map(|f| (f.data.len() as u64).div_ceil(PAGE) * PAGE)
        .sum();
    data + PAGE * (files.len() as u64 + 8)
}

/// Whether `resolved` (a bind source with its symlinks resolved) lies below one of the
/// `allowed` prefixes (compared by whole path components, so `/srv/data` does not allow
/// `/srv/database`).
pub fn bind_allowed(resolved: &Path, allowed: &[PathBuf]) -> bool {
    allowed.iter().any(|prefix| resolved.starts_with(prefix))
}

/// The message for a bind source outside every allowed prefix.
pub fn bind_refused(index: usize, source: &str, resolved: &Path, allowed: &[PathBuf]) -> String {
    let resolved = if Path::new(source) == resolved {
        String::new()
    } else {
        format!(" (resolved to {})", resolved.display())
    };
    if allowed.is_empty() {
        format!(
            "spec.mounts[{index}]: bind mount of {source}{resolved} refused: this node allows no \
             bind mounts (start its agent with --allow-bind PREFIX)"
        )
    } else {
        let list: Vec<String> = allowed.iter().map(|p| p.display().to_string()).collect();
        format!(
            "spec.mounts[{index}]: bind mount of {source}{resolved} refused: not below a prefix \
             this node allows (--allow-bind {})",
            list.join(", --allow-bind ")
        )
    }
}

/// The host side of each of the task's `spec.mounts`, resolved by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A volume's data directory.
    Volume(PathBuf),
    /// A bind source, symlinks resolved and allowed.
    Bind(PathBuf),
    /// A new tmpfs.
    Tmpfs,
}

fn bind(destination: &str, source: &Path, options: &[&str]) -> ContainerMount {
    ContainerMount {
        destination: destination.to_string(),
        typ: "bind".into(),
        source: source.display().to_string(),
        options: options.iter().map(|o| o.to_string()).collect(),
    }
}

/// The container mounts of a task: secrets (`payload_dir/secrets` at [`SECRETS_DIR`]),
/// configs (each file at its path), all read-only, nosuid, nodev, noexec; then
/// `spec.mounts` with their `sources` (same order). Sorted so that a mount comes after the
/// mounts of the directories above it.
pub fn container_mounts(
    spec: &TaskSpec,
    payload_dir: &Path,
    sources: &[MountSource],
) -> Vec<ContainerMount> {
    const PAYLOAD_OPTIONS: [&str; 6] = ["rbind", "rprivate", "ro", "nosuid", "nodev", "noexec"];
    let mut mounts = Vec::new();
    if !spec.secrets.is_empty() {
        mounts.push(bind(
            SECRETS_DIR,
            &payload_dir.join(SECRETS_SUBDIR),
            &PAYLOAD_OPTIONS,
        ));
    }
    for (i, c) in spec.configs.iter().enumerate() {
        mounts.push(bind(
            &c.path(),
            &payload_dir.join(CONFIGS_SUBDIR).join(i.to_string()),
            &PAYLOAD_OPTIONS,
        ));
    }
    for (m, source) in spec.mounts.iter().zip(sources) {
        mounts.push(user_mount(m, source));
    }
    // Parents first (a volume at /data, a tmpfs at /data/cache); stable otherwise.
    mounts.sort_by_key(|m| Path::new(&m.destination).components().count());
    mounts
}

fn user_mount(m: &Mount, source: &MountSource) -> ContainerMount {
    let mut options: Vec<String> = Vec::new();
    let (typ, src) = match source {
        MountSource::Volume(dir) | MountSource::Bind(dir) => {
            options.extend(["rbind".to_string(), "rprivate".to_string()]);
            ("bind", dir.display().to_string())
        }
        MountSource::Tmpfs => {
            options.extend(["nosuid".to_string(), "nodev".to_string()]);
            if let Some(size) = m.tmpfs_size {
                options.push(format!("size={}", size.bytes()));
            }
            ("tmpfs", "tmpfs".to_string())
        }
    };
    if m.read_only {
        options.push("ro".into());
    }
    ContainerMount {
        destination: m.target.clone(),
        typ: typ.into(),
        source: src,
        options,
    }
}

/// The named volumes of a task, in spec order, each once.
pub fn volume_names(spec: &TaskSpec) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for m in spec.mounts.iter().filter(|m| m.type_ == MountType::Volume) {
        if !names.contains(&m.source) {
            names.push(m.source.clone());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::service::{ConfigReference, SecretReference};
    use shoal_api_types::Memory;

    fn payload(s: &str) -> Option<Payload> {
        Some(Payload::new(s.as_bytes().to_vec()))
    }

    fn spec() -> TaskSpec {
        TaskSpec {
            secrets: vec![
                SecretReference {
                    source: "pw".into(),
                    mode: 0o444,
                    ..Default::default()
                },
                SecretReference {
                    source: "pw2".into(),
                    target: "db_password".into(),
                    uid: 1000,
                    gid: 1001,
                    mode: 0o400,
                },
            ],
            configs: vec![ConfigReference {
                source: "nginx".into(),
                target: "/etc/nginx/nginx.conf".into(),
                mode: 0o444,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn payload_files_should_follow_the_references_with_owner_and_mode() {
        let files = payload_files(
            &spec(),
            |n| payload(&format!("secret {n}")),
            |n| payload(&format!("config {n}")),
        )
        .unwrap();
        let got: Vec<(String, Vec<u8>, u32, u32, u32)> = files
            .iter()
            .map(|f| {
                (
                    f.path.display().to_string(),
                    f.data.bytes().to_vec(),
                    f.uid,
                    f.gid,
                    f.mode,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("secrets/pw".into(), b"secret pw".to_vec(), 0, 0, 0o444),
                (
                    "secrets/db_password".into(),
                    b"secret pw2".to_vec(),
                    1000,
                    1001,
                    0o400
                ),
                ("configs/0".into(), b"config nginx".to_vec(), 0, 0, 0o444),
            ]
        );
    }

    #[test]
    fn a_missing_payload_or_a_path_like_target_should_be_refused_by_name() {
        let e = payload_files(
            &spec(),
            |n| (n == "pw").then(|| payload("x")).flatten(),
            payload,
        )
        .unwrap_err();
        assert_eq!(e, "the controller sent no data for secret pw2");
        let e = payload_files(&spec(), payload, |_| None).unwrap_err();
        assert_eq!(e, "the controller sent no data for config nginx");
        let mut s = spec();
        s.secrets[0].target = "../escape".into();
        let e = payload_files(&s, payload, payload).unwrap_err();
        assert!(e.contains("\"../escape\" is not a file name"), "{e}");
    }

    #[test]
    fn payload_debug_output_should_never_show_the_bytes() {
        let files = payload_files(&spec(), payload, payload).unwrap();
        let shown = format!("{files:?}");
        assert!(!shown.contains("pw2\""), "{shown}");
        assert!(shown.contains("3 bytes"), "{shown}");
    }

    #[test]
    fn the_tmpfs_should_hold_every_file_in_whole_pages() {
        let files = payload_files(&spec(), |_| payload(&"x".repeat(5000)), payload).unwrap();
        // Two secrets of 2 pages, one config of 1 page, plus 3 + 8 pages.
        assert_eq!(tmpfs_size(&files), PAGE * (2 + 2 + 1 + 3 + 8));
    }

    #[test]
    fn binds_should_be_allowed_only_below_a_prefix_by_whole_components() {
        let allowed = vec![PathBuf::from("/srv/data")];
        assert!(bind_allowed(Path::new("/srv/data"), &allowed));
        assert!(bind_allowed(Path::new("/srv/data/x/y"), &allowed));
        assert!(!bind_allowed(Path::new("/srv/database"), &allowed));
        assert!(!bind_allowed(Path::new("/etc"), &allowed));
        assert!(!bind_allowed(Path::new("/srv/data"), &[]));
        let e = bind_refused(1, "/srv/link", Path::new("/etc"), &allowed);
        assert_eq!(
            e,
            "spec.mounts[1]: bind mount of /srv/link (resolved to /etc) refused: not below a \
             prefix this node allows (--allow-bind /srv/data)"
        );
        let e = bind_refused(0, "/etc", Path::new("/etc"), &[]);
        assert!(
            e.contains("allows no bind mounts") && e.contains("--allow-bind"),
            "{e}"
        );
    }

    #[test]
    fn container_mounts_should_show_payloads_read_only_and_honour_mount_options() {
        let mut s = spec();
        s.mounts = vec![
            Mount {
                type_: MountType::Tmpfs,
                target: "/data/cache".into(),
                tmpfs_size: Some(Memory(64 << 20)),
                ..Default::default()
            },
            Mount {
                type_: MountType::Volume,
                source: "data".into(),
                target: "/data".into(),
                ..Default::default()
            },
            Mount {
                type_: MountType::Bind,
                source: "/srv/web".into(),
                target: "/web".into(),
                read_only: true,
                ..Default::default()
            },
        ];
        let sources = [
            MountSource::Tmpfs,
            MountSource::Volume("/state/volumes/data/_data".into()),
            MountSource::Bind("/srv/web".into()),
        ];
        let mounts = container_mounts(&s, Path::new("/state/payloads/t1"), &sources);
        let got: Vec<(&str, &str, &str, String)> = mounts
            .iter()
            .map(|m| {
                (
                    m.destination.as_str(),
                    m.typ.as_str(),
                    m.source.as_str(),
                    m.options.join(","),
                )
            })
            .collect();
        let ro = "rbind,rprivate,ro,nosuid,nodev,noexec".to_string();
        assert_eq!(
            got,
            vec![
                (
                    "/data",
                    "bind",
                    "/state/volumes/data/_data",
                    "rbind,rprivate".into()
                ),
                ("/web", "bind", "/srv/web", "rbind,rprivate,ro".into()),
                (
                    "/run/secrets",
                    "bind",
                    "/state/payloads/t1/secrets",
                    ro.clone()
                ),
                (
                    "/data/cache",
                    "tmpfs",
                    "tmpfs",
                    "nosuid,nodev,size=67108864".into()
                ),
                (
                    "/etc/nginx/nginx.conf",
                    "bind",
                    "/state/payloads/t1/configs/0",
                    ro
                ),
            ]
        );
        assert_eq!(volume_names(&s), vec!["data".to_string()]);
        assert!(container_mounts(&TaskSpec::default(), Path::new("/x"), &[]).is_empty());
    }
}
