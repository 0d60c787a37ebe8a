//! The overlay's receive fast path: `bpf/decap.c` (compiled by `build.rs`) at the tc ingress
//! of the node's underlay interface. A VXLAN packet from a node (`shoal_peers`) to this
//! node's underlay address, for a task on this node (`shoal_tasks`: VNI and address → the
//! ifindex of the task veth's node end, MAC checked against the address), loses its outer
//! headers there and goes straight into the task's namespace. That skips the outer IP/UDP
//! receive, the VXLAN device and the overlay bridge: in a local cluster, one stream over the
//! overlay went from 0.70 to 0.89 of the underlay (docs/architecture.md, "Overlay fast
//! path (BPF)").
//!
//! It is only a shortcut. The bridge, the VXLAN device and their entries stay complete, and
//! whatever the program does not know (ARP, another node's sender, a task being attached, a
//! program not loaded) takes the kernel's path as before. So a failure here is logged, never
//! fatal.
//!
//! The program is attached with a BPF link (tcx, kernel 6.6 and later; older kernels keep
//! the kernel's path) owned by this process: when the agent exits the kernel detaches it,
//! and the next agent loads its own and fills its maps again from the links it finds
//! ([`super::Kernel`] does that on load). It passes what it does not take to the next tc
//! program on the interface (`TC_ACT_UNSPEC`), so it stacks with others.
//!
//! Invariant: the maps hold what [`FastPath`]'s `wanted` holds whenever a program is loaded;
//! every change goes to both under one lock, to the map first, so that a failed map update
//! leaves `wanted` describing what to try again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, MapData};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::Ebpf;

use super::error::NetError;
use super::netns;

/// The compiled program (`build.rs`), aligned for the ELF parser.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/decap.o"));

/// The program's name in `bpf/decap.c` (and in `bpftool net`).
pub const PROGRAM: &str = "shoal_decap";
const TASKS: &str = "shoal_tasks";
const PEERS: &str = "shoal_peers";
const LOCAL: &str = "shoal_local";

/// `struct task_key` of `bpf/decap.c`: the VNI, and the address in network order as the
/// packet has it (an array, so that aya's `Pod` covers it without unsafe code here).
type TaskKey = [u32; 2];

/// An address as the program compares it: its bytes in network order.
fn wire(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn task_key((vni, ip): (u32, Ipv4Addr)) -> TaskKey {
    [vni, wire(ip)]
}

fn err(what: &str, e: impl std::fmt::Display) -> NetError {
    NetError::FastPath(format!("{what}: {e}"))
}

/// What the program should know.
#[derive(Debug, Default)]
struct Wanted {
    /// (VNI, task address) → ifindex of the task veth's node end.
    tasks: BTreeMap<(u32, Ipv4Addr), u32>,
    /// The nodes' underlay addresses.
    peers: BTreeSet<Ipv4Addr>,
}

/// A loaded and attached program.
struct Loaded {
    bpf: Ebpf,
    /// The underlay interface it is attached to (a device made again under the same name is
    /// another device: its index tells), and this node's underlay address.
    interface: (String, u32),
    local: Ipv4Addr,
}

impl Loaded {
    fn tasks(&mut self) -> Result<HashMap<&mut MapData, TaskKey, u32>, NetError> {
        hash_map(&mut self.bpf, TASKS)
    }

    fn peers(&mut self) -> Result<HashMap<&mut MapData, u32, u8>, NetError> {
        hash_map(&mut self.bpf, PEERS)
    }
}

/// The program's hash map `name`.
fn hash_map<'a, K: aya::Pod, V: aya::Pod>(
    bpf: &'a mut Ebpf,
    name: &str,
) -> Result<HashMap<&'a mut MapData, K, V>, NetError> {
    let map = bpf.map_mut(name).ok_or_else(|| err(name, "missing"))?;
    HashMap::try_from(map).map_err(|e| err(name, e))
}

/// Remove `key` from `map`; a key already gone is not an error.
fn remove<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<&mut MapData, K, V>,
    key: &K,
    what: &str,
) -> Result<(), NetError> {
    match map.remove(key) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(err(what, e)),
    }
}

/// The fast path of one node (see the module docs). Cheap when never loaded.
#[derive(Default)]
pub struct FastPath {
    state: tokio::sync::Mutex<(Wanted, Option<Loaded>)>,
}

impl FastPath {
    /// Task `ip` on overlay `vni` is behind the veth whose node end is `ifindex`.
    pub async fn set_task(&self, vni: u32, ip: Ipv4Addr, ifindex: u32) -> Result<(), NetError> {
        self.put_task(vni, ip, ifindex, true).await
    }

    /// [`Self::set_task`] for what was found, not made: never replaces a known task's port
    /// (an attach that ran meanwhile knows better).
    pub async fn learn_task(&self, vni: u32, ip: Ipv4Addr, ifindex: u32) -> Result<(), NetError> {
        self.put_task(vni, ip, ifindex, false).await
    }

    async fn put_task(
        &self,
        vni: u32,
        ip: Ipv4Addr,
        ifindex: u32,
        replace: bool,
    ) -> Result<(), NetError> {
        let mut state = self.state.lock().await;
        let (wanted, loaded) = &mut *state;
        if !replace && wanted.tasks.contains_key(&(vni, ip)) {
            return Ok(());
        }
        if let Some(l) = loaded {
            l.tasks()?
                .insert(task_key((vni, ip)), ifindex, 0)
                .map_err(|e| err("add a task", e))?;
        }
        wanted.tasks.insert((vni, ip), ifindex);
        Ok(())
    }

    /// The veth whose node end is `ifindex` goes: forget the tasks behind it.
    pub async fn forget_port(&self, ifindex: u32) -> Result<(), NetError> {
        self.forget(|(_, i)| i == ifindex).await
    }

    /// Overlay `vni` goes: forget every task on it.
    pub async fn forget_vni(&self, vni: u32) -> Result<(), NetError> {
        self.forget(|((v, _), _)| v == vni).await
    }

    async fn forget(&self, gone: impl Fn(((u32, Ipv4Addr), u32)) -> bool) -> Result<(), NetError> {
        let mut state = self.state.lock().await;
        let (wanted, loaded) = &mut *state;
        let gone: Vec<(u32, Ipv4Addr)> = wanted
            .tasks
            .iter()
            .filter(|(k, i)| gone((**k, **i)))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(l) = loaded.as_mut() {
                remove(&mut l.tasks()?, &task_key(k), "remove a task")?;
            }
            wanted.tasks.remove(&k);
        }
        Ok(())
    }

    /// Whether a program is loaded and attached.
    pub async fn is_loaded(&self) -> bool {
        self.state.lock().await.1.is_some()
    }

    /// Load and attach the program to `interface` (name and index) in the namespace `home`
    /// (the caller's when `None`) unless it is already there for the same interface and
    /// address, and make `peers` the nodes it accepts VXLAN from. Returns whether it loaded
    /// a program (the caller then tells it about the ports already there).
    pub async fn ensure(
        &self,
        home: Option<&Path>,
        interface: (&str, u32),
        local: Ipv4Addr,
        peers: &BTreeSet<Ipv4Addr>,
    ) -> Result<bool, NetError> {
        let mut state = self.state.lock().await;
        let (wanted, loaded) = &mut *state;
        if let Some(l) = loaded {
            if (l.interface.0.as_str(), l.interface.1) == interface && l.local == local {
                let mut map = l.peers()?;
                for p in wanted.peers.difference(peers) {
                    remove(&mut map, &wire(*p), "remove a peer")?;
                }
                for p in peers.difference(&wanted.peers) {
                    map.insert(wire(*p), 1, 0)
                        .map_err(|e| err("add a peer", e))?;
                }
                wanted.peers.clone_from(peers);
                return Ok(false);
            }
        }
        // Dropping the old program detaches it (closing its link): the kernel's path
        // carries everything until the new one is attached.
        *loaded = None;
        wanted.peers.clone_from(peers);
        let l = load(
            home.map(Path::to_owned),
            (interface.0.to_owned(), interface.1),
            local,
            wanted,
        )
        .await?;
        *loaded = Some(l);
        Ok(true)
    }

    /// Detach and unload (the node's networking is being removed).
    pub async fn remove(&self) {
        let mut state = self.state.lock().await;
        state.1 = None;
    }
}

/// Load the object, fill its maps from `wanted`, attach it in `home`.
async fn load(
    home: Option<PathBuf>,
    interface: (String, u32),
    local: Ipv4Addr,
    wanted: &Wanted,
) -> Result<Loaded, NetError> {
    let loaded = Ebpf::load(OBJECT);
    // The load parsed the kernel's BTF: give the memory back (crate::memory).
    crate::memory::release_freed();
    let bpf = loaded.map_err(|e| err("load bpf/decap.c", e))?;
    let mut l = Loaded {
        bpf,
        interface,
        local,
    };
    {
        let map = l.bpf.map_mut(LOCAL).ok_or_else(|| err(LOCAL, "missing"))?;
        let mut local_map: Array<&mut MapData, u32> =
            Array::try_from(map).map_err(|e| err(LOCAL, e))?;
        local_map
            .set(0, wire(local), 0)
            .map_err(|e| err("set the local address", e))?;
    }
    {
        let mut peers = l.peers()?;
        for p in &wanted.peers {
            peers
                .insert(wire(*p), 1, 0)
                .map_err(|e| err("add a peer", e))?;
        }
    }
    {
        let mut tasks = l.tasks()?;
        for (k, ifindex) in &wanted.tasks {
            tasks
                .insert(task_key(*k), *ifindex, 0)
                .map_err(|e| err("add a task", e))?;
        }
    }
    // Attaching resolves the interface in the calling thread's namespace.
    let iface = l.interface.0.clone();
    let attached = netns::run_in(home.as_deref(), move || {
        let result = attach(&mut l.bpf, &iface);
        (l, result)
    })
    .await?;
    let (l, result) = attached;
    result.map(|()| l)
}

fn attach(bpf: &mut Ebpf, interface: &str) -> Result<(), NetError> {
    let prog: &mut SchedClassifier = bpf
        .program_mut(PROGRAM)
        .ok_or_else(|| err(PROGRAM, "missing"))?
        .try_into()
        .map_err(|e| err(PROGRAM, e))?;
    prog.load().map_err(|e| err("verify the program", e))?;
    // A link (tcx) only: its lifetime is this process's, and closing it detaches the program
    // from any thread (a netlink filter would outlive the agent, and would have to be
    // deleted from inside the node's namespace).
    prog.attach_with_options(
        interface,
        TcAttachType::Ingress,
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    )
    .map_err(|e| {
        err(
            &format!("attach to {interface} (tcx, kernel 6.6 or later)"),
            e,
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn tasks(f: &FastPath) -> Vec<((u32, Ipv4Addr), u32)> {
        let state = f.state.lock().await;
        state.0.tasks.iter().map(|(k, v)| (*k, *v)).collect()
    }

    #[tokio::test]
    async fn a_found_port_never_replaces_a_made_one_and_forgetting_takes_only_what_it_names() {
        let f = FastPath::default();
        let ip = Ipv4Addr::new(10, 0, 1, 3);
        f.set_task(4097, ip, 20).await.unwrap();
        f.learn_task(4097, ip, 10).await.unwrap();
        f.learn_task(4098, ip, 11).await.unwrap();
        assert_eq!(tasks(&f).await, vec![((4097, ip), 20), ((4098, ip), 11)]);
        // An attach replaces; forgetting a port removes only what is behind it.
        f.set_task(4097, ip, 21).await.unwrap();
        f.forget_port(11).await.unwrap();
        f.forget_port(20).await.unwrap();
        assert_eq!(tasks(&f).await, vec![((4097, ip), 21)]);
        f.learn_task(4098, ip, 12).await.unwrap();
        f.forget_vni(4097).await.unwrap();
        assert_eq!(tasks(&f).await, vec![((4098, ip), 12)]);
        assert!(!f.is_loaded().await);
    }

    #[test]
    fn keys_carry_the_address_in_network_order() {
        let [vni, addr] = task_key((4097, Ipv4Addr::new(10, 0, 1, 3)));
        assert_eq!(vni, 4097);
        assert_eq!(addr.to_ne_bytes(), [10, 0, 1, 3]);
    }
}
