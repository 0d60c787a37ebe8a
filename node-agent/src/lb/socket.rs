//! VIP balancing at connect() (issue 17): `bpf/socklb.c` (compiled by `build.rs`) attached
//! to the cgroup that holds the node's task containers. A TCP connect() from a task's
//! process to a VIP its namespace balances gets one of the VIP's ready backends as its
//! destination before anything is routed, so the connection runs exactly as one made to the
//! task's address: no packet of it is NATed (a VIP connection cost 0.90–0.96 of a direct
//! one in figure 4 with per-packet NAT).
//!
//! It is only a shortcut over the nftables table (`lb::NftLoadBalancer`), which stays
//! complete and balances what the program leaves alone: UDP, a VIP with no ready backend
//! (the table refuses it), one with more than [`MAX_BACKENDS`] backends or with per-port
//! entries, and every socket of a process outside the cgroup (the node itself, `ip netns
//! exec`). [`SocketLb`] wraps the table and mirrors into the program's map what the table
//! holds, after the table has it: the map never holds a VIP's backends that the table does
//! not, and when a change to the table fails the namespace's entries leave the map (the
//! table alone decides until it is written again).
//!
//! The map is keyed by the namespace's cookie (`SO_NETNS_COOKIE`; the program reads it with
//! `bpf_get_netns_cookie`), so one program serves every task namespace of the node, each
//! with exactly the VIPs of its own table. The program is attached with a BPF link owned by
//! this process (the agents of a local cluster share the cgroup, each
//! program finds only its own namespaces' cookies; programs attached with links always run
//! together); when the agent exits the kernel detaches
//! it, and the next agent fills its map from the tables it reads back at start. A client
//! then sees the backend's address as its peer (`getpeername`; Cilium's socket load
//! balancing hides it with a getpeername hook, which this program does not have). IPv6
//! sockets connecting to a v4-mapped VIP and MPTCP sockets do not take this hook's path:
//! the table balances them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aya::maps::{HashMap, MapData};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::Ebpf;
use shoal_api_types::service::Protocol;

use super::entries::{LbError, LoadBalancer, VipEntry};

/// The compiled program (`build.rs`), aligned for the ELF parser.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/socklb.o"));

/// The program's name in `bpf/socklb.c` (and in `bpftool cgroup tree`).
pub const PROGRAM: &str = "shoal_connect4";
const VIPS: &str = "shoal_vips";

/// The most backends a VIP may have to be balanced at connect(); one with more stays with
/// nftables (`MAX_BACKENDS` in `bpf/socklb.c`).
pub const MAX_BACKENDS: usize = 64;

/// `struct vip_key`: the namespace cookie's two halves (native order) and the VIP in
/// network order (an array, so that aya's `Pod` covers it without unsafe code here).
type Key = [u32; 4];
/// `struct vip_backends`: next turn, count, backends in network order.
type Value = [u32; 2 + MAX_BACKENDS];

/// An address as the program compares it: its bytes in network order.
fn wire(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn key(cookie: u64, vip: Ipv4Addr) -> Key {
    let b = cookie.to_ne_bytes();
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        wire(vip),
        0,
    ]
}

fn value(backends: &[Ipv4Addr]) -> Value {
    let mut v = [0; 2 + MAX_BACKENDS];
    v[1] = backends.len() as u32;
    for (slot, b) in v[2..].iter_mut().zip(backends) {
        *slot = wire(*b);
    }
    v
}

fn err(what: &str, e: impl std::fmt::Display) -> LbError {
    LbError::Socket(format!("{what}: {e}"))
}

/// What the program should do in one namespace, from its table's entries: every TCP VIP
/// balanced over all its ports with 1..=[`MAX_BACKENDS`] ready backends and no per-port
/// entry of its own (a per-port entry overrides the VIP's in the table, which the program
/// does not look at ports to do).
pub fn connect_targets(entries: &[VipEntry]) -> BTreeMap<Ipv4Addr, Vec<Ipv4Addr>> {
    let tcp = entries.iter().filter(|e| e.protocol == Protocol::Tcp);
    let per_port: Vec<Ipv4Addr> = tcp
        .clone()
        .filter(|e| e.port.is_some())
        .map(|e| e.vip)
        .collect();
    tcp.filter(|e| e.port.is_none() && !per_port.contains(&e.vip))
        .filter(|e| (1..=MAX_BACKENDS).contains(&e.backends.len()))
        .map(|e| (e.vip, e.backends.clone()))
        .collect()
}

/// One namespace's entries in the map.
struct Space {
    cookie: u64,
    /// The namespace's identity ([`ns_id`]): a namespace made again at the same path is
    /// another one, with another cookie.
    id: (u64, u64),
    targets: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>,
}

#[derive(Default)]
struct State {
    /// The loaded and attached program; `None`: nftables alone.
    bpf: Option<Ebpf>,
    spaces: BTreeMap<PathBuf, Space>,
}

impl State {
    fn vips(&mut self) -> Result<Option<HashMap<&mut MapData, Key, Value>>, LbError> {
        let Some(bpf) = self.bpf.as_mut() else {
            return Ok(None);
        };
        let map = bpf.map_mut(VIPS).ok_or_else(|| err(VIPS, "missing"))?;
        HashMap::try_from(map).map(Some).map_err(|e| err(VIPS, e))
    }
}

/// The node's VIP tables (`lb::NftLoadBalancer`) with the connect() shortcut over them
/// (see the module docs). Without a program (it could not be loaded) it is exactly the
/// tables.
pub struct SocketLb {
    tables: Arc<dyn LoadBalancer>,
    state: tokio::sync::Mutex<State>,
}

impl SocketLb {
    /// `tables`, with the program attached to the cgroup directory `cgroup` (cgroup v2:
    /// the node's containers' parent, made if missing).
    pub fn attach(cgroup: &Path, tables: Arc<dyn LoadBalancer>) -> Result<Self, LbError> {
        let bpf = load(cgroup)?;
        Ok(Self::over(tables, Some(bpf)))
    }

    /// [`Self::attach`], or `tables` alone when the program cannot be loaded or attached
    /// (logged).
    pub fn attached_or_tables(cgroup: &Path, tables: Arc<dyn LoadBalancer>) -> Self {
        match load(cgroup) {
            Ok(bpf) => {
                tracing::info!(cgroup = %cgroup.display(), "VIPs balanced at connect() for the node's tasks");
                Self::over(tables, Some(bpf))
            }
            Err(e) => {
                tracing::warn!(cgroup = %cgroup.display(), error = %e, "VIP balancing at connect() unavailable; nftables balances every connection");
                Self::over(tables, None)
            }
        }
    }

    fn over(tables: Arc<dyn LoadBalancer>, bpf: Option<Ebpf>) -> Self {
        SocketLb {
            tables,
            state: tokio::sync::Mutex::new(State {
                bpf,
                spaces: BTreeMap::new(),
            }),
        }
    }

    /// Whether the program is loaded and attached.
    pub async fn is_attached(&self) -> bool {
        self.state.lock().await.bpf.is_some()
    }

    /// How many entries the kernel's map holds (every namespace's VIPs).
    pub async fn mapped(&self) -> usize {
        let mut state = self.state.lock().await;
        match state.vips() {
            Ok(Some(map)) => map.keys().filter(Result::is_ok).count(),
            _ => 0,
        }
    }

    /// The VIPs balanced at connect() in the namespace at `netns`, with their backends.
    pub async fn targets(&self, netns: &Path) -> BTreeMap<Ipv4Addr, Vec<Ipv4Addr>> {
        let state = self.state.lock().await;
        state
            .spaces
            .get(netns)
            .map(|s| s.targets.clone())
            .unwrap_or_default()
    }

    /// Make the map hold `entries`' connect targets for the namespace at `netns` (what its
    /// table holds now). Never fails: on failure (logged) the namespace's entries are taken
    /// out, and its table alone balances until the next change mirrors it again.
    async fn mirror(&self, netns: &Path, entries: &[VipEntry]) {
        let wanted = connect_targets(entries);
        let Some(id) = ns_id(netns) else {
            // The namespace is gone.
            self.unmirror(netns).await;
            return;
        };
        let known = {
            let mut state = self.state.lock().await;
            if state.bpf.is_none() {
                return;
            }
            match state.spaces.get(netns) {
                Some(s) if s.id == id => Some(s.cookie),
                // Another namespace at the same path: the old one's entries go.
                Some(_) => {
                    drop_space(&mut state, netns);
                    None
                }
                None => None,
            }
        };
        // A new namespace's cookie is read in the namespace, outside the lock.
        let cookie = match known {
            Some(c) => c,
            None if wanted.is_empty() => return,
            None => match netns_cookie_of(netns).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(netns = %netns.display(), error = %e, "VIPs not balanced at connect() for this task");
                    return;
                }
            },
        };
        let mut state = self.state.lock().await;
        if known.is_none() {
            // Namespaces gone without a word (or replaced at their path) leave here.
            let gone: Vec<PathBuf> = state
                .spaces
                .iter()
                .filter(|(p, s)| ns_id(p) != Some(s.id))
                .map(|(p, _)| p.clone())
                .collect();
            for p in gone {
                drop_space(&mut state, &p);
            }
        }
        write(&mut state, netns, (cookie, id), wanted);
    }

    /// Before a change of the namespace's table to `to`: shrink its map entries to the
    /// backends both the table now and `to` have, so that the map holds no backend the
    /// table lacks at any moment of the change. Returns the backends the map had that `to`
    /// lacks altogether (connections still opening to them are aborted after the change).
    async fn narrow(&self, netns: &Path, to: &[VipEntry]) -> BTreeSet<Ipv4Addr> {
        let allowed = connect_targets(to);
        let kept: BTreeSet<Ipv4Addr> = to.iter().flat_map(|e| &e.backends).copied().collect();
        let mut state = self.state.lock().await;
        let Some(space) = state.spaces.get(netns) else {
            return BTreeSet::new();
        };
        if ns_id(netns) != Some(space.id) {
            drop_space(&mut state, netns);
            return BTreeSet::new();
        }
        let ident = (space.cookie, space.id);
        let dropped = space
            .targets
            .values()
            .flatten()
            .filter(|b| !kept.contains(b))
            .copied()
            .collect();
        let narrowed = space
            .targets
            .iter()
            .filter_map(|(vip, backends)| {
                let allowed = allowed.get(vip)?;
                let both: Vec<Ipv4Addr> = backends
                    .iter()
                    .filter(|b| allowed.contains(b))
                    .copied()
                    .collect();
                (!both.is_empty()).then_some((*vip, both))
            })
            .collect();
        write(&mut state, netns, ident, narrowed);
        dropped
    }

    /// Remove the namespace's entries from the map (its table alone balances).
    async fn unmirror(&self, netns: &Path) {
        drop_space(&mut *self.state.lock().await, netns);
    }

    /// A change of the table to `entries`: the map narrowed first ([`Self::narrow`]),
    /// then the table changed by `change`; after it the map mirrors `entries` and
    /// connections still opening to backends that left are aborted, or, when the change
    /// failed, the namespace leaves the map (the table may hold anything then).
    async fn change(
        &self,
        netns: &Path,
        entries: &[VipEntry],
        change: impl std::future::Future<Output = Result<(), LbError>>,
    ) -> Result<(), LbError> {
        let dropped = self.narrow(netns, entries).await;
        match change.await {
            Ok(()) => {
                self.mirror(netns, entries).await;
                if !dropped.is_empty() {
                    abort_connecting(netns, dropped).await;
                }
                Ok(())
            }
            Err(e) => {
                self.unmirror(netns).await;
                Err(e)
            }
        }
    }
}

/// The identity of the namespace at `netns` (device and inode of its nsfs file), or `None`
/// when there is none.
fn ns_id(netns: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(netns).ok().map(|m| (m.dev(), m.ino()))
}

/// Make the map hold `wanted` for the namespace at `netns` (`ident`: its cookie and
/// identity), replacing what it held. On failure (logged) the namespace's entries are
/// taken out.
fn write(
    state: &mut State,
    netns: &Path,
    ident: (u64, (u64, u64)),
    wanted: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>,
) {
    let (cookie, id) = ident;
    let old = state
        .spaces
        .remove(netns)
        .map(|s| s.targets)
        .unwrap_or_default();
    let mut map = match state.vips() {
        Ok(Some(map)) => map,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "cannot reach the connect() VIP map");
            return;
        }
    };
    let mut failed = None;
    for vip in old.keys().filter(|v| !wanted.contains_key(v)) {
        if let Err(e) = remove(&mut map, &key(cookie, *vip)) {
            failed = Some(e);
        }
    }
    for (vip, backends) in wanted.iter().filter(|(v, b)| old.get(v) != Some(b)) {
        if let Err(e) = map.insert(key(cookie, *vip), value(backends), 0) {
            failed = Some(err("add a VIP", e));
        }
    }
    if let Some(e) = failed {
        tracing::warn!(netns = %netns.display(), error = %e, "cannot mirror the VIP table for connect(); its table alone balances");
        // Take out everything of the namespace, old and new: a VIP whose update failed must
        // not keep its old backends.
        for vip in old.keys().chain(wanted.keys()) {
            if let Err(e) = remove(&mut map, &key(cookie, *vip)) {
                tracing::error!(netns = %netns.display(), vip = %vip, error = %e, "cannot remove a VIP balanced at connect()");
            }
        }
        return;
    }
    if !wanted.is_empty() {
        state.spaces.insert(
            netns.to_owned(),
            Space {
                cookie,
                id,
                targets: wanted,
            },
        );
    }
}

/// Aborts the connections the namespace at `netns` is still opening to `dropped` (they
/// were balanced to a backend that left; [`super::sockdiag`]). Best effort, logged.
async fn abort_connecting(netns: &Path, dropped: BTreeSet<Ipv4Addr>) {
    let done = crate::net::netns::run_in(Some(netns), move || {
        super::sockdiag::abort_connecting(|ip| dropped.contains(&ip))
    })
    .await;
    match done {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => {
            tracing::debug!(netns = %netns.display(), aborted = n, "aborted connections still opening to backends that left")
        }
        Ok(Err(e)) => {
            tracing::warn!(netns = %netns.display(), error = %e, "cannot abort connections opening to backends that left")
        }
        Err(e) => {
            tracing::warn!(netns = %netns.display(), error = %e, "cannot abort connections opening to backends that left")
        }
    }
}

/// Take the namespace at `netns` out of `state` and its entries out of the map.
fn drop_space(state: &mut State, netns: &Path) {
    let Some(space) = state.spaces.remove(netns) else {
        return;
    };
    match state.vips() {
        Ok(Some(mut map)) => {
            for vip in space.targets.keys() {
                if let Err(e) = remove(&mut map, &key(space.cookie, *vip)) {
                    tracing::error!(netns = %netns.display(), vip = %vip, error = %e, "cannot remove a VIP balanced at connect()");
                }
            }
        }
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "cannot reach the connect() VIP map"),
    }
}

#[async_trait::async_trait]
impl LoadBalancer for SocketLb {
    async fn program(&self, netns: &Path, entries: &[VipEntry]) -> Result<(), LbError> {
        self.change(netns, entries, self.tables.program(netns, entries))
            .await
    }
    async fn update(
        &self,
        netns: &Path,
        from: &[VipEntry],
        to: &[VipEntry],
    ) -> Result<(), LbError> {
        self.change(netns, to, self.tables.update(netns, from, to))
            .await
    }
    /// The table read back, and nothing else: a reader that holds no task's lock (the node
    /// audit) must not write the map from what may be an old reading.
    async fn programmed(&self, netns: &Path) -> Result<Option<Vec<VipEntry>>, LbError> {
        self.tables.programmed(netns).await
    }
    async fn remove(&self, netns: &Path) -> Result<(), LbError> {
        self.unmirror(netns).await;
        self.tables.remove(netns).await
    }
    async fn forget(&self, netns: &Path) {
        self.unmirror(netns).await;
        self.tables.forget(netns).await
    }
    /// A table found holding what it should (an agent that starts, a resync) is mirrored.
    async fn adopt(&self, netns: &Path, entries: &[VipEntry]) {
        self.mirror(netns, entries).await;
        self.tables.adopt(netns, entries).await
    }
}

/// Remove `key` from `map`; a key already gone is not an error.
fn remove(map: &mut HashMap<&mut MapData, Key, Value>, key: &Key) -> Result<(), LbError> {
    match map.remove(key) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(err("remove a VIP", e)),
    }
}

/// Load the program and attach it to `cgroup` (made if missing).
fn load(cgroup: &Path) -> Result<Ebpf, LbError> {
    // Namespace cookies are read with SO_NETNS_COOKIE (kernel 5.14 and later).
    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        .and_then(|s| netns_cookie(s.as_fd()))
        .map_err(|e| err("read a namespace cookie (SO_NETNS_COOKIE, kernel 5.14)", e))?;
    std::fs::create_dir_all(cgroup).map_err(|e| err("make the cgroup", e))?;
    let dir = std::fs::File::open(cgroup).map_err(|e| err("open the cgroup", e))?;
    let loaded = Ebpf::load(OBJECT);
    crate::memory::release_freed();
    let mut bpf = loaded.map_err(|e| err("load bpf/socklb.c", e))?;
    let prog: &mut CgroupSockAddr = bpf
        .program_mut(PROGRAM)
        .ok_or_else(|| err(PROGRAM, "missing"))?
        .try_into()
        .map_err(|e| err(PROGRAM, e))?;
    prog.load()
        .map_err(|e| err("verify the program", with_sources(&e)))?;
    // A link takes no flags: programs attached with links always run together, whatever
    // the mode. (`Single` would make the pre-5.7 attach call exclusive, but such a kernel
    // cannot load this program: `bpf_get_netns_cookie` in connect4 came with 5.7.)
    prog.attach(&dir, CgroupAttachMode::Single)
        .map_err(|e| err("attach to the cgroup", with_sources(&e)))?;
    Ok(bpf)
}

/// `e` and its sources, `: `-separated (aya's errors name the call and keep the reason in
/// the source).
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// The cgroup v2 directory of the cgroup parent `parent` (`/shoal`): under the unified
/// hierarchy's mount, `/sys/fs/cgroup` on a cgroup v2 machine and `/sys/fs/cgroup/unified`
/// on a hybrid one (runc puts a container in both). `None` without cgroup v2.
pub fn cgroup_dir(parent: &str) -> Option<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let unified = [root.to_owned(), root.join("unified")]
        .into_iter()
        .find(|d| d.join("cgroup.controllers").exists())?;
    Some(unified.join(parent.trim_start_matches('/')))
}

/// The cookie of the network namespace at `netns` (`SO_NETNS_COOKIE` of a socket made in
/// it): what `bpf_get_netns_cookie` returns for its sockets.
pub async fn netns_cookie_of(netns: &Path) -> Result<u64, LbError> {
    crate::net::netns::run_in(Some(netns), || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        netns_cookie(s.as_fd())
    })
    .await
    .map_err(|e| err("enter the namespace", e))?
    .map_err(|e| err("read the namespace's cookie", e))
}

/// `SO_NETNS_COOKIE` (asm-generic/socket.h; kernel 5.14 and later).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the namespace socket `fd` belongs to. No crate offers this option, hence
/// one of the agent's two unsafe calls (its `Cargo.toml` names them).
#[allow(unsafe_code)]
fn netns_cookie(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket for the call's duration; `cookie` and `len` are valid,
    // writable, and `len` is `cookie`'s size, which is what the kernel writes at most.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::fake::RecordingLb;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn entry(vip: &str, protocol: Protocol, port: Option<u16>, n: usize) -> VipEntry {
        VipEntry {
            vip: ip(vip),
            protocol,
            port,
            backends: (0..n)
                .map(|i| Ipv4Addr::new(10, 0, 1, 10 + i as u8))
                .collect(),
        }
    }

    #[test]
    fn only_whole_tcp_vips_with_ready_backends_that_fit_are_balanced_at_connect() {
        let entries = vec![
            entry("10.0.0.2", Protocol::Tcp, None, 2),
            entry("10.0.0.2", Protocol::Udp, None, 2),
            // No ready backend: the table refuses it.
            entry("10.0.0.3", Protocol::Tcp, None, 0),
            // Too many for the program.
            entry("10.0.0.4", Protocol::Tcp, None, MAX_BACKENDS + 1),
            entry("10.0.0.5", Protocol::Tcp, None, MAX_BACKENDS),
            // A per-port entry overrides the VIP's: the table keeps the VIP.
            entry("10.0.0.6", Protocol::Tcp, None, 1),
            entry("10.0.0.6", Protocol::Tcp, Some(80), 1),
            entry("10.0.0.7", Protocol::Udp, None, 1),
        ];
        let t = connect_targets(&entries);
        assert_eq!(
            t.keys().copied().collect::<Vec<_>>(),
            vec![ip("10.0.0.2"), ip("10.0.0.5")]
        );
        assert_eq!(t[&ip("10.0.0.2")], vec![ip("10.0.1.10"), ip("10.0.1.11")]);
        assert_eq!(t[&ip("10.0.0.5")].len(), MAX_BACKENDS);
    }

    #[test]
    fn keys_and_values_carry_addresses_in_network_order() {
        let k = key(0x0102_0304_0506_0708, ip("10.0.0.2"));
        assert_eq!(k[2].to_ne_bytes(), [10, 0, 0, 2]);
        let mut cookie = [0u8; 8];
        cookie[..4].copy_from_slice(&k[0].to_ne_bytes());
        cookie[4..].copy_from_slice(&k[1].to_ne_bytes());
        assert_eq!(u64::from_ne_bytes(cookie), 0x0102_0304_0506_0708);
        assert_eq!(k[3], 0);
        let v = value(&[ip("10.0.1.5"), ip("10.0.1.6")]);
        assert_eq!((v[0], v[1]), (0, 2));
        assert_eq!(v[3].to_ne_bytes(), [10, 0, 1, 6]);
        assert!(v[4..].iter().all(|x| *x == 0));
    }

    #[tokio::test]
    async fn without_a_program_it_is_the_tables() {
        let tables = Arc::new(RecordingLb::default());
        let lb = SocketLb::over(tables.clone(), None);
        assert!(!lb.is_attached().await);
        let netns = Path::new("/nonexistent/netns");
        let entries = vec![entry("10.0.0.2", Protocol::Tcp, None, 2)];
        lb.program(netns, &entries).await.unwrap();
        assert!(lb.targets(netns).await.is_empty());
        assert_eq!(tables.entries(netns), Some(entries));
    }
}
