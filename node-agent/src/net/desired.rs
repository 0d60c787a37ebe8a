//! Owns the node's desired networking as a pure function of plain values: from the tasks
//! with a live container, their Task objects, the Networks and what the kernel has,
//! [`desired_node`] says which overlays, task namespaces, peers and gateway should exist, and
//! [`node_ops`] turns that into the [`NetOp`]s the agent's full reconcile applies (through
//! [`super::plan_network`], with the agent's rules on top: live tasks of unknown spec keep
//! their namespace, the gateway bridge is never removed). No I/O; see docs/architecture.md
//! ("Node agent") for where it sits.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use shoal_api_types::service::{PortConfig, PublishMode};
use shoal_api_types::{Network as NetworkObject, Task};

use super::error::NetError;
use super::names::PortKind;
use super::plan::{plan_network, task_net_spec, DesiredNet, NetOp};
use super::types::{GatewaySpec, Observed, OverlaySpec, Peer, TaskNetSpec};

/// A local task's networking, as the agent remembers it for Endpoints updates and the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTask {
    /// Networks in attachment order.
    pub networks: Vec<String>,
    /// Whether its DNS server may forward upstream (not `internal`).
    pub egress: bool,
    /// Its host-mode published ports.
    pub host_ports: Vec<PortConfig>,
    /// Its address on the gateway bridge (host-mode ports go there).
    pub gateway: Option<Ipv4Addr>,
}

impl LocalTask {
    /// `task`'s networking with `egress` (from its [`TaskNetSpec`]) and its gateway address.
    pub fn of(task: &Task, egress: bool, gateway: Option<Ipv4Addr>) -> Self {
        LocalTask {
            networks: task
                .spec
                .attachments
                .iter()
                .map(|a| a.network.clone())
                .collect(),
            egress,
            host_ports: task
                .spec
                .ports
                .iter()
                .filter(|p| p.mode == PublishMode::Host)
                .cloned()
                .collect(),
            gateway,
        }
    }
}

/// The VNI and MTU of `network` among `networks`, once the controller allocated it; else
/// what is missing, for users.
pub fn network_vni(
    networks: &BTreeMap<String, NetworkObject>,
    network: &str,
) -> Result<(u32, Option<u32>), String> {
    let n = networks
        .get(network)
        .ok_or_else(|| format!("network {network:?} does not exist (yet)"))?;
    let vni = n
        .status
        .vni
        .ok_or_else(|| format!("network {network:?} has no VNI allocated yet"))?;
    Ok((vni, n.spec.mtu))
}

/// Why a task's networking cannot be described yet.
#[derive(Debug)]
pub enum SpecError {
    /// A network is unknown or not allocated yet (the message says which): try later.
    Network(String),
    /// The task's attachments are invalid.
    Net(NetError),
}

/// What `task` needs on this node: its namespace and one port per attachment.
pub fn task_spec(
    task: &Task,
    networks: &BTreeMap<String, NetworkObject>,
) -> Result<TaskNetSpec, SpecError> {
    let mut vnis = BTreeMap::new();
    for a in &task.spec.attachments {
        let (vni, _) = network_vni(networks, &a.network).map_err(SpecError::Network)?;
        vnis.insert(a.network.clone(), vni);
    }
    task_net_spec(task.name(), &task.spec, |n| vnis.get(n).copied()).map_err(SpecError::Net)
}

/// What the node's networking should be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeNet {
    /// Overlays, task namespaces, peers and gateway.
    pub want: DesiredNet,
    /// Live tasks whose spec is known, as the agent keeps them.
    pub local: BTreeMap<String, LocalTask>,
    /// Live tasks whose spec is unknown (no Task object, or a network not allocated): their
    /// namespace and the overlays it has ports on stay as they are.
    pub unknown: BTreeSet<String>,
}

/// The node's desired networking. `live` are the tasks with a container whose process has
/// not exited (and whose task has not ended); `tasks` the node's Task objects; `ingress` the
/// ingress overlay with the node's address while the routing mesh runs (it stays whether or
/// not tasks use it); `peers` the remote peers of a network, `None` before its Endpoints are
/// listed (its overlay's entries are then left alone).
pub fn desired_node(
    live: &BTreeSet<String>,
    tasks: &BTreeMap<String, Task>,
    networks: &BTreeMap<String, NetworkObject>,
    observed: &Observed,
    ingress: Option<OverlaySpec>,
    peers: impl Fn(&str) -> Option<Vec<Peer>>,
) -> NodeNet {
    let mut specs = Vec::new();
    let mut local = BTreeMap::new();
    for id in live {
        let Some(task) = tasks.get(id) else { continue };
        match task_spec(task, networks) {
            Ok(spec) => {
                let gateway =
                    observed
                        .task_ports
                        .get(id)
                        .into_iter()
                        .flatten()
                        .find_map(|p| match p.kind {
                            PortKind::Gateway(ip) => Some(ip),
                            PortKind::Overlay(_) => None,
                        });
                local.insert(id.clone(), LocalTask::of(task, spec.egress, gateway));
                specs.push(spec);
            }
            Err(e) => tracing::debug!(task = %id, error = ?e, "network reconcile: skipping task"),
        }
    }
    let mut mtus = BTreeMap::new();
    let mut vni_network = BTreeMap::new();
    for n in networks.values() {
        if let Some(vni) = n.status.vni {
            mtus.insert(vni, n.spec.mtu);
            vni_network.insert(vni, n.name().to_string());
        }
    }
    let mut want = DesiredNet::from_tasks(specs, &mtus, GatewaySpec::default());
    let unknown: BTreeSet<String> = live
        .iter()
        .filter(|id| !want.tasks.contains_key(*id))
        .cloned()
        .collect();
    for id in &unknown {
        for p in observed.task_ports.get(id).into_iter().flatten() {
            if let PortKind::Overlay(vni) = p.kind {
                want.overlays.entry(vni).or_insert(OverlaySpec {
                    vni,
                    mtu: mtus.get(&vni).copied().flatten(),
                    address: None,
                });
            }
        }
    }
    if let Some(spec) = ingress {
        want.overlays.insert(spec.vni, spec);
    }
    for vni in want.overlays.keys() {
        if let Some(p) = vni_network.get(vni).and_then(|n| peers(n)) {
            want.peers.insert(*vni, p);
        }
    }
    NodeNet {
        want,
        local,
        unknown,
    }
}

/// The operations that take `observed` to `node`: [`plan_network`], except that live tasks of
/// unknown spec are not detached, peers of overlays whose network is unknown are left as they
/// are, and the gateway bridge stays once made (cheap, and shared by every task).
pub fn node_ops(node: &NodeNet, observed: &Observed) -> Vec<NetOp> {
    plan_network(&node.want, observed)
        .into_iter()
        .filter(|op| match op {
            NetOp::DetachTask(t) => !node.unknown.contains(t),
            NetOp::SyncPeers(vni, _) => node.want.peers.contains_key(vni),
            NetOp::RemoveGateway => false,
            _ => true,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::types::{ObservedOverlay, ObservedPort};
    use shoal_api_types::{NetworkStatus, TaskAttachment, TaskSpec};

    fn network(name: &str, vni: u32) -> (String, NetworkObject) {
        let mut n = NetworkObject::new(name, Default::default());
        n.status = NetworkStatus {
            vni: Some(vni),
            subnet: Some(format!("10.0.{}.0/24", vni - 4096)),
            ..Default::default()
        };
        (name.to_string(), n)
    }

    fn task(id: &str, network: &str, address: &str) -> (String, Task) {
        let t = Task::new(
            id,
            TaskSpec {
                service: "api".into(),
                attachments: vec![TaskAttachment {
                    network: network.into(),
                    address: format!("{address}/24"),
                    mac: String::new(),
                    aliases: vec![],
                }],
                ..Default::default()
            },
        );
        (id.to_string(), t)
    }

    fn observed_overlay(vni: u32) -> (u32, ObservedOverlay) {
        (
            vni,
            ObservedOverlay {
                bridge: true,
                vxlan: true,
            },
        )
    }

    fn port(vni: u32) -> ObservedPort {
        ObservedPort {
            link: format!("she{vni}"),
            kind: PortKind::Overlay(vni),
        }
    }

    fn ids(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn live_tasks_want_their_overlays_namespaces_and_the_gateway() {
        let networks = BTreeMap::from([network("appnet", 4097), network("other", 4098)]);
        let tasks = BTreeMap::from([task("t1", "appnet", "10.0.1.5")]);
        let node = desired_node(
            &ids(&["t1"]),
            &tasks,
            &networks,
            &Observed::default(),
            None,
            |_| None,
        );
        assert_eq!(node.want.overlays.keys().collect::<Vec<_>>(), [&4097]);
        assert!(node.want.tasks.contains_key("t1"));
        assert!(node.want.gateway.is_some(), "a task with egress wants it");
        assert!(node.want.peers.is_empty(), "no Endpoints listed: no peers");
        assert_eq!(node.local["t1"].networks, ["appnet"]);
        assert!(node.unknown.is_empty());
    }

    #[test]
    fn a_live_task_of_unknown_spec_keeps_its_namespace_and_overlay() {
        let networks = BTreeMap::from([network("appnet", 4097)]);
        let observed = Observed {
            overlays: BTreeMap::from([observed_overlay(4097), observed_overlay(4098)]),
            task_netns: ids(&["ghost", "gone"]),
            task_ports: BTreeMap::from([
                ("ghost".to_string(), vec![port(4097)]),
                ("gone".to_string(), vec![port(4098)]),
            ]),
            ..Default::default()
        };
        let node = desired_node(
            &ids(&["ghost"]),
            &BTreeMap::new(),
            &networks,
            &observed,
            None,
            |_| Some(vec![]),
        );
        assert_eq!(node.unknown, ids(&["ghost"]));
        let ops = node_ops(&node, &observed);
        assert!(!ops.contains(&NetOp::DetachTask("ghost".into())), "{ops:?}");
        assert!(ops.contains(&NetOp::DetachTask("gone".into())), "{ops:?}");
        assert!(ops.contains(&NetOp::RemoveOverlay(4098)), "{ops:?}");
        assert!(!ops.contains(&NetOp::RemoveOverlay(4097)), "{ops:?}");
    }

    #[test]
    fn the_ingress_overlay_stays_without_tasks_and_the_gateway_is_never_removed() {
        let networks = BTreeMap::from([network("ingress", 4096)]);
        let ingress = OverlaySpec {
            vni: 4096,
            mtu: None,
            address: Some("10.255.0.3/16".parse().unwrap()),
        };
        let observed = Observed {
            gateway: true,
            ..Default::default()
        };
        let node = desired_node(
            &BTreeSet::new(),
            &BTreeMap::new(),
            &networks,
            &observed,
            Some(ingress.clone()),
            |n| (n == "ingress").then(Vec::new),
        );
        assert_eq!(node.want.overlays.get(&4096), Some(&ingress));
        assert_eq!(node.want.peers.get(&4096), Some(&vec![]));
        let ops = node_ops(&node, &observed);
        assert!(!ops.contains(&NetOp::RemoveGateway), "{ops:?}");
        assert!(
            ops.iter()
                .any(|op| matches!(op, NetOp::EnsureOverlay(o) if o == &ingress)),
            "{ops:?}"
        );
    }

    #[test]
    fn a_task_on_an_unallocated_network_is_skipped_not_failed() {
        let tasks = BTreeMap::from([task("t1", "later", "10.0.9.5")]);
        let node = desired_node(
            &ids(&["t1"]),
            &tasks,
            &BTreeMap::new(),
            &Observed::default(),
            None,
            |_| None,
        );
        assert_eq!(node.unknown, ids(&["t1"]));
        assert!(node.local.is_empty());
        assert!(matches!(
            task_spec(&tasks["t1"], &BTreeMap::new()),
            Err(SpecError::Network(m)) if m.contains("\"later\" does not exist")
        ));
    }
}
