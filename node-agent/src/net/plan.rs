//! Pure diffs for the node's networking, no I/O:
//!
//! - [`plan_network`]: the node as a whole — which overlays, task namespaces, gateway and
//!   peer sets should exist ([`DesiredNet`]) against [`Observed`] — as [`NetOp`]s in a safe
//!   order, applied by [`apply_net_ops`].
//! - [`task_net_spec`] and [`peers_from_endpoints`] build the desired side from api-types.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use shoal_api_types::endpoints::EndpointsSpec;
use shoal_api_types::task::TaskSpec;

use super::error::NetError;
use super::names::PortKind;
use super::network::Network;
use super::types::{Attachment, GatewaySpec, Observed, OverlaySpec, Peer, TaskNetSpec};

/// What the node's networking should be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredNet {
    /// Overlays this node needs (those with at least one local task), by VNI.
    pub overlays: BTreeMap<u32, OverlaySpec>,
    /// Tasks that should have a namespace, by task key.
    pub tasks: BTreeMap<String, TaskNetSpec>,
    /// Remote tasks per overlay (only overlays in `overlays` are synced).
    pub peers: BTreeMap<u32, Vec<Peer>>,
    /// The gateway bridge, when wanted (normally always, or while a task has egress).
    pub gateway: Option<GatewaySpec>,
}

impl DesiredNet {
    /// Desired state from the local tasks: every overlay a task is attached to is wanted
    /// (MTU from `mtus`, else the underlay default); the gateway when any task has egress.
    pub fn from_tasks(
        tasks: impl IntoIterator<Item = TaskNetSpec>,
        mtus: &BTreeMap<u32, Option<u32>>,
        gateway: GatewaySpec,
    ) -> Self {
        let mut d = DesiredNet::default();
        for t in tasks {
            for a in &t.attachments {
                let mtu = mtus.get(&a.vni).copied().flatten();
                d.overlays.insert(
                    a.vni,
                    OverlaySpec {
                        vni: a.vni,
                        mtu,
                        address: None,
                    },
                );
            }
            if t.egress {
                d.gateway = Some(gateway.clone());
            }
            d.tasks.insert(t.task.clone(), t);
        }
        d
    }
}

/// One step of [`plan_network`]; each maps to one [`Network`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetOp {
    /// [`Network::ensure_gateway`].
    EnsureGateway(GatewaySpec),
    /// [`Network::ensure_overlay`].
    EnsureOverlay(OverlaySpec),
    /// [`Network::detach_task`] (a task key not desired any more, or a leftover).
    DetachTask(String),
    /// [`Network::remove_stray_link`].
    RemoveStrayLink(String),
    /// [`Network::attach_task`] (missing or incomplete).
    AttachTask(TaskNetSpec),
    /// [`Network::sync_peers`].
    SyncPeers(u32, Vec<Peer>),
    /// [`Network::remove_overlay`] (no local task on it any more).
    RemoveOverlay(u32),
    /// [`Network::remove_gateway`].
    RemoveGateway,
}

/// The operations that move `observed` to `desired`, in this order: gateway and overlays
/// first (attachments need them), then removal of unwanted tasks and stray links, then
/// attachments, then peer entries of every desired overlay (always listed: syncing a
/// converged overlay is a no-op, and it repairs entries someone removed), and last the
/// removal of overlays and the gateway nobody uses any more.
///
/// Attachments of a running task do not change in Shoal (a changed task is a new task), so
/// a task whose ports match is left alone; one with missing ports is attached again (which
/// keeps what exists). The gateway and overlays are ensured when missing; a periodic
/// resync may also call `ensure_*` unconditionally to repair settings `observe` cannot see.
pub fn plan_network(desired: &DesiredNet, observed: &Observed) -> Vec<NetOp> {
    let mut ops = Vec::new();
    if let Some(gw) = &desired.gateway {
        if !observed.gateway {
            ops.push(NetOp::EnsureGateway(gw.clone()));
        }
    }
    for (vni, spec) in &desired.overlays {
        let have = observed
            .overlays
            .get(vni)
            .is_some_and(|o| o.bridge && o.vxlan);
        if !have {
            ops.push(NetOp::EnsureOverlay(spec.clone()));
        }
    }
    let present: BTreeSet<&String> = observed
        .task_netns
        .iter()
        .chain(observed.task_ports.keys())
        .collect();
    for task in &present {
        if !desired.tasks.contains_key(*task) {
            ops.push(NetOp::DetachTask((*task).clone()));
        }
    }
    for link in &observed.stray_links {
        ops.push(NetOp::RemoveStrayLink(link.clone()));
    }
    for spec in desired.tasks.values() {
        if !task_complete(spec, observed) {
            ops.push(NetOp::AttachTask(spec.clone()));
        }
    }
    for vni in desired.overlays.keys() {
        let peers = desired.peers.get(vni).cloned().unwrap_or_default();
        ops.push(NetOp::SyncPeers(*vni, peers));
    }
    for vni in observed.overlays.keys() {
        if !desired.overlays.contains_key(vni) {
            ops.push(NetOp::RemoveOverlay(*vni));
        }
    }
    if desired.gateway.is_none() && observed.gateway {
        ops.push(NetOp::RemoveGateway);
    }
    ops
}

fn task_complete(spec: &TaskNetSpec, observed: &Observed) -> bool {
    if !observed.task_netns.contains(&spec.task) {
        return false;
    }
    let ports = observed
        .task_ports
        .get(&spec.task)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let have_vnis: BTreeSet<u32> = ports
        .iter()
        .filter_map(|p| match p.kind {
            PortKind::Overlay(vni) => Some(vni),
            PortKind::Gateway(_) => None,
        })
        .collect();
    let want_vnis: BTreeSet<u32> = spec.attachments.iter().map(|a| a.vni).collect();
    let have_gw = ports.iter().any(|p| matches!(p.kind, PortKind::Gateway(_)));
    have_vnis == want_vnis && have_gw == spec.egress
}

/// Apply `ops` in order; every op is attempted (one failure does not stop the others) and
/// its result returned next to it, so the caller can requeue what failed
/// ([`NetError::is_temporary`]). An attach whose overlay failed to come up fails too.
pub async fn apply_net_ops(
    net: &dyn Network,
    ops: Vec<NetOp>,
) -> Vec<(NetOp, Result<(), NetError>)> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let r = match &op {
            NetOp::EnsureGateway(g) => net.ensure_gateway(g).await,
            NetOp::EnsureOverlay(o) => net.ensure_overlay(o).await.map(|_| ()),
            NetOp::DetachTask(t) => net.detach_task(t).await,
            NetOp::RemoveStrayLink(l) => net.remove_stray_link(l).await,
            NetOp::AttachTask(t) => net.attach_task(t).await.map(|_| ()),
            NetOp::SyncPeers(vni, peers) => net.sync_peers(*vni, peers).await.map(|_| ()),
            NetOp::RemoveOverlay(vni) => net.remove_overlay(*vni).await,
            NetOp::RemoveGateway => net.remove_gateway().await,
        };
        out.push((op, r));
    }
    out
}

/// A task's [`TaskNetSpec`] from its api-types spec: attachments in order, each network's
/// VNI from `vni_of(network name)`; egress unless the task is `internal`.
pub fn task_net_spec(
    task: &str,
    spec: &TaskSpec,
    vni_of: impl Fn(&str) -> Option<u32>,
) -> Result<TaskNetSpec, NetError> {
    let mut attachments = Vec::with_capacity(spec.attachments.len());
    for (i, a) in spec.attachments.iter().enumerate() {
        let vni = vni_of(&a.network).ok_or_else(|| {
            NetError::Invalid(format!(
                "spec.attachments[{i}].network: network {:?} has no VNI allocated yet",
                a.network
            ))
        })?;
        let parsed = if a.address.contains('/') {
            a.address
                .parse::<ipnetwork::Ipv4Network>()
                .map_err(|e| e.to_string())
        } else {
            Err("no prefix length".to_string())
        };
        let address = parsed.map_err(|e| {
            NetError::Invalid(format!(
                "spec.attachments[{i}].address: {:?} is not an IPv4 address with prefix ({e})",
                a.address
            ))
        })?;
        attachments.push(Attachment { vni, address });
    }
    Ok(TaskNetSpec {
        task: task.to_string(),
        attachments,
        egress: !spec.internal,
    })
}

/// The remote tasks of one network from all its Endpoints objects: every listed task whose
/// node address is not `local` (tasks here are reached through the bridge, not VXLAN).
/// Tasks that are not ready are included: reachability by IP does not wait for health.
/// Entries with unparsable addresses are skipped; one IP listed twice keeps the last node.
pub fn peers_from_endpoints<'a>(
    endpoints: impl IntoIterator<Item = &'a EndpointsSpec>,
    local: Ipv4Addr,
) -> Vec<Peer> {
    let mut by_ip = BTreeMap::new();
    for e in endpoints {
        for t in &e.tasks {
            let (Ok(ip), Ok(node)) = (t.ip.parse::<Ipv4Addr>(), t.node_address.parse::<Ipv4Addr>())
            else {
                continue;
            };
            if node != local {
                by_ip.insert(ip, Peer { ip, node });
            }
        }
    }
    by_ip.into_values().collect()
}

/// The addresses of `wanted` peers that `synced` does not hold as they are (an address now
/// on another node is new): backends there cannot be reached until a peer sync adds or
/// moves their entries ([`reachable_backends`]).
pub fn new_peer_addresses<'a>(
    wanted: impl IntoIterator<Item = &'a Peer>,
    synced: impl IntoIterator<Item = &'a Peer>,
) -> BTreeSet<Ipv4Addr> {
    let synced: BTreeSet<&Peer> = synced.into_iter().collect();
    wanted
        .into_iter()
        .filter(|p| !synced.contains(p))
        .map(|p| p.ip)
        .collect()
}

/// `backends` without the `pending` addresses (remote tasks whose peer entries are not synced
/// yet), or `None` when that would leave none of a list that had some: the caller keeps what
/// it programmed before rather than refusing connections meanwhile. Shared by the VIP tables
/// ([`crate::lb::without_pending`]) and the mesh table.
pub fn reachable_backends(
    backends: &[Ipv4Addr],
    pending: &BTreeSet<Ipv4Addr>,
) -> Option<Vec<Ipv4Addr>> {
    let kept: Vec<Ipv4Addr> = backends
        .iter()
        .filter(|b| !pending.contains(b))
        .copied()
        .collect();
    (kept.len() == backends.len() || !kept.is_empty()).then_some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::fake::RecordingNetwork;
    use crate::net::types::peer;
    use crate::net::types::{ObservedOverlay, ObservedPort};
    use shoal_api_types::endpoints::EndpointTask;
    use shoal_api_types::task::TaskAttachment;

    fn tspec(task: &str, vnis: &[u32], egress: bool) -> TaskNetSpec {
        TaskNetSpec {
            task: task.into(),
            attachments: vnis
                .iter()
                .enumerate()
                .map(|(i, v)| Attachment {
                    vni: *v,
                    address: format!("10.0.{}.{}/24", v - 4096, i + 2).parse().unwrap(),
                })
                .collect(),
            egress,
        }
    }

    fn desired(tasks: Vec<TaskNetSpec>) -> DesiredNet {
        DesiredNet::from_tasks(tasks, &BTreeMap::new(), GatewaySpec::default())
    }

    /// What the kernel looks like after `d` was applied.
    fn converged(d: &DesiredNet) -> Observed {
        let mut o = Observed {
            gateway: d.gateway.is_some(),
            ..Default::default()
        };
        for vni in d.overlays.keys() {
            o.overlays.insert(
                *vni,
                ObservedOverlay {
                    bridge: true,
                    vxlan: true,
                },
            );
        }
        for (k, t) in &d.tasks {
            o.task_netns.insert(k.clone());
            let mut ports: Vec<ObservedPort> = t
                .attachments
                .iter()
                .map(|a| ObservedPort {
                    link: String::new(),
                    kind: PortKind::Overlay(a.vni),
                })
                .collect();
            if t.egress {
                ports.push(ObservedPort {
                    link: String::new(),
                    kind: PortKind::Gateway(Ipv4Addr::new(172, 18, 0, 2)),
                });
            }
            o.task_ports.insert(k.clone(), ports);
        }
        o
    }

    #[test]
    fn plan_network_should_build_everything_on_an_empty_node_in_dependency_order() {
        let d = desired(vec![tspec("t1", &[4097], true)]);
        let ops = plan_network(&d, &Observed::default());
        assert_eq!(
            ops,
            vec![
                NetOp::EnsureGateway(GatewaySpec::default()),
                NetOp::EnsureOverlay(OverlaySpec {
                    vni: 4097,
                    mtu: None,
                    address: None
                }),
                NetOp::AttachTask(tspec("t1", &[4097], true)),
                NetOp::SyncPeers(4097, vec![]),
            ]
        );
    }

    #[test]
    fn plan_network_should_only_sync_peers_when_converged() {
        let mut d = desired(vec![
            tspec("t1", &[4097, 4098], true),
            tspec("t2", &[4097], false),
        ]);
        d.peers.insert(4097, vec![peer(9, 2)]);
        let ops = plan_network(&d, &converged(&d));
        assert_eq!(
            ops,
            vec![
                NetOp::SyncPeers(4097, vec![peer(9, 2)]),
                NetOp::SyncPeers(4098, vec![])
            ]
        );
    }

    #[test]
    fn plan_network_should_remove_what_is_no_longer_wanted_after_detaching() {
        let before = desired(vec![tspec("t1", &[4097], true), tspec("t2", &[4098], true)]);
        let mut observed = converged(&before);
        observed.stray_links.push("she0123456789a".into());
        let after = DesiredNet {
            gateway: None,
            ..desired(vec![tspec("t1", &[4097], false)])
        };
        let mut observed_t1_no_gw = observed.clone();
        observed_t1_no_gw.task_ports.get_mut("t1").unwrap().pop();
        let ops = plan_network(&after, &observed_t1_no_gw);
        assert_eq!(
            ops,
            vec![
                NetOp::DetachTask("t2".into()),
                NetOp::RemoveStrayLink("she0123456789a".into()),
                NetOp::SyncPeers(4097, vec![]),
                NetOp::RemoveOverlay(4098),
                NetOp::RemoveGateway,
            ]
        );
    }

    #[test]
    fn plan_network_should_reattach_incomplete_tasks_and_detach_leftover_ports() {
        let d = desired(vec![tspec("t1", &[4097, 4098], true)]);
        let mut observed = converged(&d);
        observed.task_ports.get_mut("t1").unwrap().remove(1);
        observed.task_ports.insert("gone".into(), vec![]);
        let ops = plan_network(&d, &observed);
        assert_eq!(
            ops,
            vec![
                NetOp::DetachTask("gone".into()),
                NetOp::AttachTask(tspec("t1", &[4097, 4098], true)),
                NetOp::SyncPeers(4097, vec![]),
                NetOp::SyncPeers(4098, vec![]),
            ]
        );
        let mut no_netns = converged(&d);
        no_netns.task_netns.clear();
        assert!(
            plan_network(&d, &no_netns).contains(&NetOp::AttachTask(tspec(
                "t1",
                &[4097, 4098],
                true
            )))
        );
    }

    #[test]
    fn desired_from_tasks_should_take_mtus_and_want_the_gateway_only_for_egress() {
        let mtus = BTreeMap::from([(4098, Some(1400))]);
        let d = DesiredNet::from_tasks(
            vec![tspec("t", &[4098], false)],
            &mtus,
            GatewaySpec::default(),
        );
        assert_eq!(d.overlays[&4098].mtu, Some(1400));
        assert_eq!(d.gateway, None);
    }

    #[tokio::test]
    async fn apply_net_ops_should_run_every_op_and_report_each_result() {
        let net = RecordingNetwork::new("p-");
        let d = desired(vec![tspec("t1", &[4097], true)]);
        net.fail("ensure_gateway");
        let results = apply_net_ops(&net, plan_network(&d, &Observed::default())).await;
        let failed: Vec<_> = results
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(op, _)| op.clone())
            .collect();
        // The gateway failed, so the attach (which needs it) failed too; the rest went on.
        assert_eq!(
            failed,
            vec![
                NetOp::EnsureGateway(GatewaySpec::default()),
                NetOp::AttachTask(tspec("t1", &[4097], true))
            ]
        );
        net.heal("ensure_gateway");
        let observed = net.observe().await.unwrap();
        let results = apply_net_ops(&net, plan_network(&d, &observed)).await;
        assert!(results.iter().all(|(_, r)| r.is_ok()));
        assert!(plan_network(&d, &net.observe().await.unwrap())
            .iter()
            .all(|op| matches!(op, NetOp::SyncPeers(..))));
    }

    #[test]
    fn task_net_spec_should_map_networks_to_vnis_with_field_paths_on_errors() {
        let spec = TaskSpec {
            attachments: vec![
                TaskAttachment {
                    network: "a".into(),
                    address: "10.0.1.5/24".into(),
                    ..Default::default()
                },
                TaskAttachment {
                    network: "b".into(),
                    address: "10.0.2.5/24".into(),
                    ..Default::default()
                },
            ],
            internal: true,
            ..Default::default()
        };
        let vni = |n: &str| match n {
            "a" => Some(4097),
            "b" => Some(4098),
            _ => None,
        };
        let t = task_net_spec("id1", &spec, vni).unwrap();
        assert_eq!(
            t.attachments.iter().map(|a| a.vni).collect::<Vec<_>>(),
            vec![4097, 4098]
        );
        assert!(!t.egress);
        let err = task_net_spec("id1", &spec, |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("spec.attachments[0].network"), "{err}");
        let mut bad = spec.clone();
        bad.attachments[1].address = "10.0.2.5".into();
        let err = task_net_spec("id1", &bad, vni).unwrap_err().to_string();
        assert!(err.contains("spec.attachments[1].address"), "{err}");
    }

    #[test]
    fn peers_from_endpoints_should_skip_local_tasks_and_bad_addresses() {
        let ep = |tasks: Vec<(&str, &str)>| EndpointsSpec {
            tasks: tasks
                .into_iter()
                .map(|(ip, node)| EndpointTask {
                    ip: ip.into(),
                    node_address: node.into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let a = ep(vec![
            ("10.0.1.3", "198.18.0.2"),
            ("10.0.1.2", "198.18.0.1"),
            ("x", "198.18.0.2"),
        ]);
        let b = ep(vec![("10.0.1.9", "198.18.0.3")]);
        let peers = peers_from_endpoints([&a, &b], Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(peers, vec![peer(3, 2), peer(9, 3)]);
    }
}
