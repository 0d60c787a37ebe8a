//! Named network namespaces, iproute2-compatible: `<dir>/<name>` (normally `/run/netns`) is
//! a bind mount of a namespace file, so `ip netns exec NAME …`, runc and containerd can all
//! join it by path. Also runs code inside a namespace: namespaces are per thread, so work
//! for another netns happens on a fresh OS thread that `setns`es first and then exits —
//! never on a tokio worker, whose namespace must stay the agent's own.
//!
//! A netlink socket stays bound to the namespace it was created in, so [`netlink`] opens
//! the socket on such a thread and hands the handle back to async code.
//!
//! Invariants: we only ever unmount and unlink names we were asked to; a namespace file that
//! exists but is not an nsfs mount (a crash between create and mount) counts as absent.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{statfs, NSFS_MAGIC};

use super::error::NetError;

/// Where iproute2 keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The path of namespace `name` under `dir`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Whether `path` is a mounted namespace (not just a leftover empty file).
pub fn is_mounted(path: &Path) -> bool {
    statfs(path)
        .map(|s| s.filesystem_type() == NSFS_MAGIC)
        .unwrap_or(false)
}

/// Create network namespace `name` under `dir` unless it exists; returns its path.
/// Like `ip netns add`: makes `dir` a shared mount point first so that mounts made here
/// propagate to other mount namespaces.
pub fn create(dir: &Path, name: &str) -> Result<PathBuf, NetError> {
    if !super::names::valid_netns_name(name) {
        return Err(NetError::Invalid(format!("bad namespace name {name:?}")));
    }
    let path = path(dir, name);
    if is_mounted(&path) {
        return Ok(path);
    }
    prepare_dir(dir)?;
    // A leftover file from an interrupted create: reuse it.
    if let Err(e) = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
    {
        return Err(io_err("create namespace file", &path, e));
    }
    let target = path.clone();
    let made = std::thread::scope(|s| {
        s.spawn(move || -> Result<(), NetError> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Netns {
                op: "unshare(CLONE_NEWNET)",
                path: target.clone(),
                source: e,
            })?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| NetError::Netns {
                op: "bind-mount",
                path: target.clone(),
                source: e,
            })
        })
        .join()
        .unwrap_or_else(|_| Err(NetError::Invalid("namespace thread panicked".into())))
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Delete namespace `name` under `dir` (lazy unmount, then unlink). Absent is fine. The
/// namespace itself dies, with its veths, once no process or fd holds it any more.
pub fn delete(dir: &Path, name: &str) -> Result<(), NetError> {
    if !super::names::valid_netns_name(name) {
        return Err(NetError::Invalid(format!("bad namespace name {name:?}")));
    }
    let path = path(dir, name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(NetError::Netns {
                op: "unmount",
                path,
                source: e,
            })
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove namespace file", &path, e)),
    }
}

/// Names under `dir` that start with `prefix`, sorted (mounted or leftover files alike, so
/// garbage collection sees half-made ones too).
pub fn list(dir: &Path, prefix: &str) -> Result<Vec<String>, NetError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list namespaces", dir, e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// Run `f` on a new OS thread that has entered the network namespace at `ns` (or stays in
/// the caller's namespace when `ns` is `None`), and wait for it without blocking the async
/// runtime. Processes `f` spawns (e.g. `nft`) inherit that namespace.
pub async fn run_in<F, R>(ns: Option<&Path>, f: F) -> Result<R, NetError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let file = ns.map(|p| {
        File::open(p)
            .map_err(|e| io_err("open namespace", p, e))
            .map(|f| (f, p.to_owned()))
    });
    let file = file.transpose()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("shoal-netns".into())
        .spawn(move || {
            let result = match &file {
                Some((fd, path)) => setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetError::Netns {
                        op: "setns",
                        path: path.clone(),
                        source: e,
                    })
                    .map(|()| f()),
                None => Ok(f()),
            };
            let _ = tx.send(result);
        })
        .map_err(|e| io_err("spawn namespace thread", Path::new("-"), e))?;
    rx.await
        .unwrap_or_else(|_| Err(NetError::Invalid("namespace thread panicked".into())))
}

/// A netlink (rtnetlink) handle whose socket lives in the namespace at `ns` (the caller's own
/// namespace when `None`). Its connection task is spawned on the current tokio runtime and
/// ends when the last clone of the handle is dropped.
pub async fn netlink(ns: Option<&Path>) -> Result<rtnetlink::Handle, NetError> {
    let rt = tokio::runtime::Handle::current();
    let open = move || {
        let _guard = rt.enter();
        rtnetlink::new_connection().map(|(conn, handle, _)| (conn, handle))
    };
    let (conn, handle) = match ns {
        // Our own namespace: no thread needed, but the socket must be made on a thread whose
        // namespace is the agent's, which every runtime thread's is.
        None => open(),
        Some(_) => run_in(ns, open).await?,
    }
    .map_err(|e| io_err("open netlink socket", ns.unwrap_or(Path::new("-")), e))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Write a sysctl under `/proc/sys` from inside `ns` (net.* sysctls are per namespace and
/// resolved against the writing thread's namespace).
pub async fn write_sysctl(
    ns: Option<&Path>,
    key: &'static str,
    value: &'static str,
) -> Result<(), NetError> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    let p = path.clone();
    run_in(ns, move || std::fs::write(&p, value))
        .await?
        .map_err(|e| io_err("write sysctl", &path, e))
}

/// Read a sysctl from inside `ns`.
pub async fn read_sysctl(ns: Option<&Path>, key: &'static str) -> Result<String, NetError> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    let p = path.clone();
    run_in(ns, move || std::fs::read_to_string(&p))
        .await?
        .map(|s| s.trim().to_string())
        .map_err(|e| io_err("read sysctl", &path, e))
}

/// Read a sysctl from inside `ns`; `None` when the kernel has no such key (its module is not
/// built in or loaded).
pub async fn read_sysctl_if_present(
    ns: Option<&Path>,
    key: &'static str,
) -> Result<Option<String>, NetError> {
    match read_sysctl(ns, key).await {
        Err(NetError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        r => r.map(Some),
    }
}

/// Make `dir` exist and be a shared mount point, as iproute2 does: try `--make-shared`;
/// when `dir` is not a mount point yet (EINVAL), bind-mount it onto itself and try again.
fn prepare_dir(dir: &Path) -> Result<(), NetError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
    let make_shared = || {
        mount(
            None::<&str>,
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| NetError::Netns {
                op: "bind-mount namespace dir",
                path: dir.to_owned(),
                source: e,
            })?;
            make_shared().map_err(|e| NetError::Netns {
                op: "make-shared",
                path: dir.to_owned(),
                source: e,
            })
        }
        Err(e) => Err(NetError::Netns {
            op: "make-shared",
            path: dir.to_owned(),
            source: e,
        }),
    }
}

fn io_err(op: &'static str, path: &Path, source: std::io::Error) -> NetError {
    NetError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}
