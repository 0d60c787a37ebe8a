//! `shoal system check` on one node (issue 18): a read-only audit that compares what this
//! agent's desired state says the node should have with what the kernel and containerd
//! have, and reports every difference as a [`Drift`]. Served as `GET /v1/check` on the
//! agent's server ([`crate::server`]).
//!
//! A check is "compute the plan, apply nothing, report every non-empty difference": the
//! desired side comes from the same builders the converge loops use (`net::desired_node`
//! and `net::node_ops`, `net::plan_peers`, `lb::vip_entries`, the mesh's rules and
//! `mesh::ruleset`, `dns::NetworkRecords::build`) over the agent's *own* caches — the
//! desired tasks its converge loop works from and the Networks/Endpoints/Nodes it last
//! listed — never a fresh etcd read, so a change the agent has not seen yet is not drift.
//! The observed side is read from containerd, netlink and `nft -j list` without writing.
//! [`crate::agent::NodeNetwork::check_once`] gathers both; this file holds the pure
//! comparisons (one function per kind, tested with plain values).
//! [`crate::agent::NodeCheck`] runs a pass twice [`SETTLE`] apart and reports only drift
//! seen both times ([`settled`]), so a task that is starting or an Endpoints change being
//! applied is not reported.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_api_types::check::{Drift, DriftKind};
use shoal_api_types::{Task, TaskState};

use crate::dns::NetworkRecords;
use crate::lb::VipEntry;
use crate::net::names::{bridge_name, PortKind};
use crate::net::{NetOp, Observed, PeerOp};
use crate::runtime::{labels, ContainerInfo, ContainerState};

/// How long [`NodeCheck`] waits before looking again at what it found.
pub const SETTLE: Duration = Duration::from_secs(1);

/// What an absent thing is called in a drift's `expected` or `found`.
pub const NOTHING: &str = "nothing";

/// The drift of `second` that `first` found too.
pub fn settled(first: &[Drift], second: Vec<Drift>) -> Vec<Drift> {
    let seen: BTreeSet<&Drift> = first.iter().collect();
    second.into_iter().filter(|d| seen.contains(d)).collect()
}

fn running(state: ContainerState) -> bool {
    matches!(
        state,
        ContainerState::Running | ContainerState::Paused | ContainerState::Unknown
    )
}

fn state_name(state: ContainerState) -> &'static str {
    match state {
        ContainerState::Created => "created",
        ContainerState::Running => "running",
        ContainerState::Paused => "paused",
        ContainerState::Exited => "exited",
        ContainerState::Unknown => "unknown",
    }
}

/// Containers against this node's tasks: a labelled container that no task explains, a
/// container still running for a task that has ended, and a task reported running whose
/// container does not run.
pub fn container_drift(
    node: &str,
    tasks: &BTreeMap<String, Task>,
    containers: &[ContainerInfo],
) -> Vec<Drift> {
    let mut out = Vec::new();
    let mut by_task: BTreeMap<&str, &ContainerInfo> = BTreeMap::new();
    for c in containers {
        let id = labels::get(&c.labels, labels::LABEL_TASK)
            .map(String::as_str)
            .unwrap_or(c.id.as_str());
        by_task.insert(id, c);
        let found = format!("container {} ({})", c.id, state_name(c.status.state));
        match tasks.get(id) {
            None => out.push(Drift::new(
                node,
                DriftKind::Container,
                id,
                format!("{NOTHING} (no task {id} on this node)"),
                found,
            )),
            Some(t) if t.status.state.is_terminal() && running(c.status.state) => {
                out.push(Drift::new(
                    node,
                    DriftKind::Container,
                    id,
                    format!("no running container (task is {})", t.status.state),
                    found,
                ))
            }
            Some(_) => {}
        }
    }
    for (id, t) in tasks {
        if t.status.state != TaskState::Running || t.spec.desired_state != TaskState::Running {
            continue;
        }
        match by_task.get(id.as_str()) {
            Some(c) if running(c.status.state) => {}
            Some(c) => out.push(Drift::new(
                node,
                DriftKind::Container,
                id,
                "a running container (task is running)",
                format!("container {} ({})", c.id, state_name(c.status.state)),
            )),
            None => out.push(Drift::new(
                node,
                DriftKind::Container,
                id,
                "a running container (task is running)",
                NOTHING,
            )),
        }
    }
    out
}

fn vnis(ports: &[crate::net::ObservedPort]) -> String {
    let mut parts: Vec<String> = ports
        .iter()
        .map(|p| match p.kind {
            PortKind::Overlay(vni) => format!("{} (vni {vni})", p.link),
            PortKind::Gateway(_) => format!("{} (gateway)", p.link),
        })
        .collect();
    parts.sort();
    if parts.is_empty() {
        NOTHING.to_string()
    } else {
        parts.join(", ")
    }
}

/// One network operation the reconcile would apply, as drift (`None` for peer syncs, which
/// [`peer_drift`] reports entry by entry, and for what the reconcile never does).
pub fn net_op_drift(node: &str, op: &NetOp, observed: &Observed) -> Option<Drift> {
    let ports = |task: &str| {
        observed
            .task_ports
            .get(task)
            .map(|p| vnis(p))
            .unwrap_or_else(|| NOTHING.to_string())
    };
    Some(match op {
        NetOp::EnsureGateway(_) => Drift::new(
            node,
            DriftKind::BridgePort,
            "gateway",
            format!("bridge {}", crate::net::names::GW_BRIDGE),
            NOTHING,
        ),
        NetOp::EnsureOverlay(spec) => {
            let have = observed.overlays.get(&spec.vni);
            let found = match have {
                Some(o) if o.bridge => "bridge only (no VXLAN device)".to_string(),
                Some(o) if o.vxlan => "VXLAN device only (no bridge)".to_string(),
                _ => NOTHING.to_string(),
            };
            Drift::new(
                node,
                DriftKind::BridgePort,
                format!("vni {}", spec.vni),
                format!("bridge {} with its VXLAN device", bridge_name(spec.vni)),
                found,
            )
        }
        NetOp::RemoveOverlay(vni) => Drift::new(
            node,
            DriftKind::BridgePort,
            format!("vni {vni}"),
            format!("{NOTHING} (no local task on it)"),
            format!("bridge {}", bridge_name(*vni)),
        ),
        NetOp::DetachTask(task) => {
            let netns = observed.task_netns.contains(task);
            Drift::new(
                node,
                if netns {
                    DriftKind::Netns
                } else {
                    DriftKind::Veth
                },
                task,
                format!("{NOTHING} (no live task {task})"),
                if netns {
                    format!("namespace, ports {}", ports(task))
                } else {
                    format!("ports {}", ports(task))
                },
            )
        }
        NetOp::RemoveStrayLink(link) => Drift::new(
            node,
            DriftKind::Veth,
            link,
            NOTHING,
            format!("stray link {link} (an interrupted attach)"),
        ),
        NetOp::AttachTask(spec) => {
            let mut want: Vec<String> = spec
                .attachments
                .iter()
                .map(|a| format!("{} on vni {}", a.address, a.vni))
                .collect();
            if spec.egress {
                want.push("gateway".into());
            }
            if observed.task_netns.contains(&spec.task) {
                Drift::new(
                    node,
                    DriftKind::Veth,
                    &spec.task,
                    format!("ports {}", want.join(", ")),
                    format!("ports {}", ports(&spec.task)),
                )
            } else {
                Drift::new(
                    node,
                    DriftKind::Netns,
                    &spec.task,
                    format!("namespace with ports {}", want.join(", ")),
                    NOTHING,
                )
            }
        }
        NetOp::SyncPeers(..) | NetOp::RemoveGateway => return None,
    })
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The entry changes a peer sync of overlay `vni` (network `network`) would make, as drift.
pub fn peer_drift(node: &str, network: &str, vni: u32, ops: &[PeerOp]) -> Vec<Drift> {
    let object = format!("{network} (vni {vni})");
    ops.iter()
        .map(|op| match op {
            PeerOp::AddFdb(e) => Drift::new(
                node,
                DriftKind::Fdb,
                &object,
                format!("{} dst {}", mac(&e.mac), e.node),
                NOTHING,
            ),
            PeerOp::DelFdb(e) => Drift::new(
                node,
                DriftKind::Fdb,
                &object,
                NOTHING,
                format!("{} dst {}", mac(&e.mac), e.node),
            ),
            PeerOp::AddNeigh(e) => Drift::new(
                node,
                DriftKind::Neigh,
                &object,
                format!("{} lladdr {}", e.ip, mac(&e.mac)),
                NOTHING,
            ),
            PeerOp::DelNeigh(e) => Drift::new(
                node,
                DriftKind::Neigh,
                &object,
                NOTHING,
                format!("{} lladdr {}", e.ip, mac(&e.mac)),
            ),
        })
        .collect()
}

/// Keyed elements (`key` → what it maps to) against what was found, as drift of `kind` on
/// `object`: missing, extra and different elements, each one drift.
pub fn element_drift(
    node: &str,
    kind: DriftKind,
    object: &str,
    expected: &BTreeMap<String, String>,
    found: &BTreeMap<String, String>,
) -> Vec<Drift> {
    let keys: BTreeSet<&String> = expected.keys().chain(found.keys()).collect();
    let mut out = Vec::new();
    for key in keys {
        let (e, f) = (expected.get(key), found.get(key));
        if e == f {
            continue;
        }
        let say = |v: Option<&String>| match v {
            Some(v) => format!("{key} → {v}"),
            None => format!("{NOTHING} for {key}"),
        };
        out.push(Drift::new(node, kind, object, say(e), say(f)));
    }
    out
}

/// VIP entries as keyed elements: `VIP/proto[/port]` → `backends a,b` or `reject`.
pub fn vip_elements(entries: &[VipEntry]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|e| {
            let proto = crate::net::nft::proto_name(e.protocol);
            let key = match e.port {
                Some(p) => format!("{}/{proto}/{p}", e.vip),
                None => format!("{}/{proto}", e.vip),
            };
            let value = if e.backends.is_empty() {
                "reject".to_string()
            } else {
                let b: Vec<String> = e.backends.iter().map(|b| b.to_string()).collect();
                format!("backends {}", b.join(","))
            };
            (key, value)
        })
        .collect()
}

/// A network's DNS records as keyed elements: name → sorted addresses.
pub fn dns_elements(records: &NetworkRecords) -> BTreeMap<String, String> {
    records
        .names()
        .into_iter()
        .filter_map(|name| {
            let entry = records.lookup(name)?;
            let mut addrs: Vec<String> = entry.addrs.iter().map(|a| a.to_string()).collect();
            addrs.sort();
            Some((name.to_string(), format!("[{}]", addrs.join(","))))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use shoal_api_types::endpoints::{EndpointTask, EndpointsSpec};
    use shoal_api_types::service::Protocol;
    use shoal_api_types::TaskSpec;

    use super::*;
    use crate::net::names::mac_for_ip;
    use crate::net::{
        Attachment, FdbEntry, NeighEntry, ObservedOverlay, ObservedPort, TaskNetSpec,
    };
    use crate::runtime::ContainerStatus;

    fn task(id: &str, state: TaskState, desired: TaskState) -> Task {
        let mut t = Task::new(
            id,
            TaskSpec {
                service: "api".into(),
                desired_state: desired,
                ..Default::default()
            },
        );
        t.status.state = state;
        t
    }

    fn container(id: &str, task: Option<&str>, state: ContainerState) -> ContainerInfo {
        let mut l = BTreeMap::from([(labels::LABEL_MANAGED.to_string(), "true".to_string())]);
        if let Some(t) = task {
            l.insert(labels::LABEL_TASK.to_string(), t.to_string());
        }
        ContainerInfo {
            id: id.into(),
            image: "busybox".into(),
            labels: l,
            status: ContainerStatus {
                state,
                pid: None,
                exit_code: None,
            },
            oom_killed: false,
        }
    }

    #[test]
    fn a_labelled_container_no_task_explains_should_be_drift() {
        let tasks = BTreeMap::from([(
            "t1".to_string(),
            task("t1", TaskState::Running, TaskState::Running),
        )]);
        let containers = [
            container("t1", Some("t1"), ContainerState::Running),
            container("intruder", Some("ghost"), ContainerState::Running),
        ];
        let drift = container_drift("node-1", &tasks, &containers);
        assert_eq!(drift.len(), 1, "{drift:?}");
        assert_eq!(drift[0].kind, DriftKind::Container);
        assert_eq!(drift[0].object, "ghost");
        assert_eq!(drift[0].found, "container intruder (running)");
    }

    #[test]
    fn containers_should_match_task_states() {
        let tasks = BTreeMap::from([
            // Reported running, no container.
            (
                "gone".to_string(),
                task("gone", TaskState::Running, TaskState::Running),
            ),
            // Ended, container still running.
            (
                "ended".to_string(),
                task("ended", TaskState::Shutdown, TaskState::Shutdown),
            ),
            // Starting: no container yet is fine.
            (
                "new".to_string(),
                task("new", TaskState::Assigned, TaskState::Running),
            ),
            // Ended with an exited container: fine.
            (
                "done".to_string(),
                task("done", TaskState::Complete, TaskState::Running),
            ),
        ]);
        let containers = [
            container("ended", Some("ended"), ContainerState::Running),
            container("done", Some("done"), ContainerState::Exited),
        ];
        let drift = container_drift("n", &tasks, &containers);
        let objects: Vec<&str> = drift.iter().map(|d| d.object.as_str()).collect();
        assert_eq!(objects, ["ended", "gone"], "{drift:?}");
    }

    #[test]
    fn only_drift_seen_twice_should_be_reported() {
        let a = Drift::new("n", DriftKind::Fdb, "x", "a", NOTHING);
        let b = Drift::new("n", DriftKind::Fdb, "y", "b", NOTHING);
        let c = Drift::new("n", DriftKind::Nft, "z", NOTHING, "c");
        assert_eq!(
            settled(&[a.clone(), b.clone()], vec![b.clone(), c]),
            vec![b]
        );
    }

    #[test]
    fn net_ops_should_name_the_task_and_what_is_missing() {
        let observed = Observed {
            task_netns: ["t1".to_string()].into(),
            task_ports: BTreeMap::from([(
                "t1".to_string(),
                vec![ObservedPort {
                    link: "she1".into(),
                    kind: PortKind::Gateway(Ipv4Addr::new(172, 18, 0, 2)),
                }],
            )]),
            overlays: BTreeMap::from([(
                4097,
                ObservedOverlay {
                    bridge: true,
                    vxlan: false,
                },
            )]),
            ..Default::default()
        };
        let attach = NetOp::AttachTask(TaskNetSpec {
            task: "t1".into(),
            attachments: vec![Attachment {
                vni: 4097,
                address: "10.0.1.5/24".parse().unwrap(),
            }],
            egress: true,
        });
        let d = net_op_drift("n", &attach, &observed).unwrap();
        assert_eq!((d.kind, d.object.as_str()), (DriftKind::Veth, "t1"));
        assert_eq!(d.expected, "ports 10.0.1.5/24 on vni 4097, gateway");
        assert_eq!(d.found, "ports she1 (gateway)");

        let missing = NetOp::AttachTask(TaskNetSpec {
            task: "t2".into(),
            attachments: vec![],
            egress: false,
        });
        assert_eq!(
            net_op_drift("n", &missing, &observed).unwrap().kind,
            DriftKind::Netns
        );
        let d = net_op_drift("n", &NetOp::DetachTask("t1".into()), &observed).unwrap();
        assert_eq!(d.kind, DriftKind::Netns);
        assert_eq!(d.expected, "nothing (no live task t1)");
        let overlay = NetOp::EnsureOverlay(crate::net::OverlaySpec {
            vni: 4097,
            ..Default::default()
        });
        let d = net_op_drift("n", &overlay, &observed).unwrap();
        assert_eq!(d.kind, DriftKind::BridgePort);
        assert_eq!(d.found, "bridge only (no VXLAN device)");
        assert!(net_op_drift("n", &NetOp::SyncPeers(4097, vec![]), &observed).is_none());
    }

    #[test]
    fn a_missing_fdb_entry_should_be_drift_naming_the_network() {
        let ip = Ipv4Addr::new(10, 0, 1, 7);
        let node = Ipv4Addr::new(198, 18, 0, 2);
        let ops = [
            PeerOp::AddFdb(FdbEntry {
                mac: mac_for_ip(ip),
                node,
            }),
            PeerOp::DelNeigh(NeighEntry {
                ip: Ipv4Addr::new(10, 0, 1, 9),
                mac: mac_for_ip(Ipv4Addr::new(10, 0, 1, 9)),
            }),
        ];
        let drift = peer_drift("node-1", "appnet", 4097, &ops);
        assert_eq!(drift[0].kind, DriftKind::Fdb);
        assert_eq!(drift[0].object, "appnet (vni 4097)");
        assert_eq!(drift[0].expected, "02:42:0a:00:01:07 dst 198.18.0.2");
        assert_eq!(drift[0].found, NOTHING);
        assert_eq!(drift[1].kind, DriftKind::Neigh);
        assert_eq!(drift[1].found, "10.0.1.9 lladdr 02:42:0a:00:01:09");
    }

    #[test]
    fn a_stale_vip_element_should_be_drift() {
        let vip = Ipv4Addr::new(10, 0, 1, 2);
        let want = vec![VipEntry {
            vip,
            protocol: Protocol::Tcp,
            port: None,
            backends: vec![Ipv4Addr::new(10, 0, 1, 5)],
        }];
        let mut have = want.clone();
        have.push(VipEntry {
            vip: Ipv4Addr::new(10, 0, 1, 99),
            protocol: Protocol::Tcp,
            port: Some(80),
            backends: vec![],
        });
        let drift = element_drift(
            "n",
            DriftKind::Nft,
            "t1",
            &vip_elements(&want),
            &vip_elements(&have),
        );
        assert_eq!(drift.len(), 1);
        assert_eq!(drift[0].expected, "nothing for 10.0.1.99/tcp/80");
        assert_eq!(drift[0].found, "10.0.1.99/tcp/80 → reject");
        assert!(element_drift(
            "n",
            DriftKind::Nft,
            "t1",
            &vip_elements(&want),
            &vip_elements(&want)
        )
        .is_empty());
    }

    #[test]
    fn dns_records_should_compare_name_by_name() {
        let eps = |ips: &[&str]| EndpointsSpec {
            network: "appnet".into(),
            service: "web".into(),
            tasks: ips
                .iter()
                .enumerate()
                .map(|(i, ip)| EndpointTask {
                    task: format!("t{i}"),
                    name: format!("web.{i}"),
                    ip: ip.to_string(),
                    ready: true,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let want = NetworkRecords::build([&eps(&["10.0.1.5", "10.0.1.6"])]);
        let have = NetworkRecords::build([&eps(&["10.0.1.5"])]);
        let drift = element_drift(
            "n",
            DriftKind::Dns,
            "appnet",
            &dns_elements(&want),
            &dns_elements(&have),
        );
        let names: Vec<String> = drift.iter().map(|d| d.expected.clone()).collect();
        assert_eq!(
            names,
            [
                "tasks.web → [10.0.1.5,10.0.1.6]",
                "web → [10.0.1.5,10.0.1.6]",
                "web.1 → [10.0.1.6]"
            ]
        );
    }
}
