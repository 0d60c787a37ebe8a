//! `GET /apis/shoal/v1/system/check` (`shoal system check`, issue 18): one report of every
//! drift in the cluster. Read-only tokens may call it.
//!
//! - etcd itself ([`etcd_drift`], pure): an address claim (`ipam/ips/<net>/<ip>`) whose
//!   owner — a task, `vip/<service>`, `node/<name>` — does not exist or does not hold that
//!   address; two live objects (non-terminal tasks, service VIPs, nodes' ingress addresses)
//!   holding one address; two tasks wanted running and not ended in one slot of a service;
//!   an Endpoints object listing a task that does not exist or is not running. Everything
//!   is read at one etcd revision, so the lists agree with each other.
//! - every ready node: its agent's own audit (`GET /v1/check` on the agent, over the
//!   mutual-TLS hop of exec and volumes, [`super::agent::Agents::check`]); a ready node
//!   whose agent does not answer is itself a drift of kind `unreachable`. A hollow node
//!   (no containers) answers 501 and is not counted.
//!
//! Work in flight is not drift: etcd is read twice, [`SETTLE`] apart, and only drift found
//! both times is reported (the agents do the same on their side), so a task being started
//! or an Endpoints object about to be rewritten does not show.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use shoal_api_types::check::{CheckReport, Drift, DriftKind, ETCD_NODE};
use shoal_api_types::network::INGRESS_NETWORK;
use shoal_api_types::{
    Endpoints, EndpointsSpec, Node, NodeSpec, NodeState, Resource, Service, ServiceSpec, Task,
    TaskSpec, TaskState,
};
use shoal_store::{decode, Store, StoreError};

use super::agent::node_target;
use super::error::ApiResult;
use super::state::App;

/// How long the controller waits before reading etcd again (see the module docs).
pub const SETTLE: Duration = Duration::from_secs(1);

/// One address claim: network, address, owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The network.
    pub network: String,
    /// The address (as in the key).
    pub ip: String,
    /// The owner (the key's value).
    pub owner: String,
}

/// Everything [`etcd_drift`] looks at, read at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every task.
    pub tasks: Vec<Task>,
    /// Every service.
    pub services: Vec<Service>,
    /// Every node.
    pub nodes: Vec<Node>,
    /// Every Endpoints object.
    pub endpoints: Vec<Endpoints>,
    /// Every address claim.
    pub claims: Vec<Claim>,
}

fn ip_of(address: &str) -> &str {
    address.split('/').next().unwrap_or(address)
}

fn live(t: &Task) -> bool {
    !t.status.state.is_terminal()
}

fn etcd(kind: DriftKind, object: String, expected: &str, found: String) -> Drift {
    Drift::new(ETCD_NODE, kind, object, expected, found)
}

/// The drift in etcd itself (see the module docs).
pub fn etcd_drift(s: &Snapshot) -> Vec<Drift> {
    let mut out = Vec::new();
    let tasks: BTreeMap<&str, &Task> = s.tasks.iter().map(|t| (t.name(), t)).collect();
    let services: BTreeMap<&str, &Service> = s.services.iter().map(|v| (v.name(), v)).collect();
    let nodes: BTreeMap<&str, &Node> = s.nodes.iter().map(|n| (n.name(), n)).collect();

    // Address claims against their owners.
    for c in &s.claims {
        let holds = if let Some(service) = c.owner.strip_prefix("vip/") {
            services.get(service).map(|v| {
                v.status
                    .virtual_ips
                    .iter()
                    .any(|vip| vip.network == c.network && ip_of(&vip.addr) == c.ip)
            })
        } else if let Some(node) = c.owner.strip_prefix("node/") {
            nodes
                .get(node)
                .map(|n| c.network == INGRESS_NETWORK && ip_of(&n.status.ingress_address) == c.ip)
        } else {
            tasks.get(c.owner.as_str()).map(|t| {
                t.spec
                    .attachments
                    .iter()
                    .any(|a| a.network == c.network && ip_of(&a.address) == c.ip)
            })
        };
        let found = match holds {
            Some(true) => continue,
            Some(false) => format!("claimed by {}, which holds another address", c.owner),
            None => format!("claimed by {}, which does not exist", c.owner),
        };
        out.push(etcd(
            DriftKind::Ipam,
            format!("{}/{}", c.network, c.ip),
            "a claim by a live owner",
            found,
        ));
    }

    // One address, one live holder.
    let mut holders: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for t in s.tasks.iter().filter(|t| live(t)) {
        for a in &t.spec.attachments {
            holders
                .entry((a.network.clone(), ip_of(&a.address).to_string()))
                .or_default()
                .push(format!("task {}", t.name()));
        }
    }
    for v in &s.services {
        for vip in &v.status.virtual_ips {
            holders
                .entry((vip.network.clone(), ip_of(&vip.addr).to_string()))
                .or_default()
                .push(format!("vip of {}", v.name()));
        }
    }
    for n in s
        .nodes
        .iter()
        .filter(|n| !n.status.ingress_address.is_empty())
    {
        holders
            .entry((
                INGRESS_NETWORK.to_string(),
                ip_of(&n.status.ingress_address).to_string(),
            ))
            .or_default()
            .push(format!("node {}", n.name()));
    }
    for ((network, ip), who) in holders.into_iter().filter(|(_, w)| w.len() > 1) {
        out.push(etcd(
            DriftKind::Address,
            format!("{network}/{ip}"),
            "one holder",
            who.join(", "),
        ));
    }

    // One live task per slot.
    let mut slots: BTreeMap<(&str, u64), Vec<&str>> = BTreeMap::new();
    for t in s.tasks.iter().filter(|t| live(t)) {
        if t.spec.desired_state != TaskState::Running {
            continue;
        }
        if let Some(slot) = t.spec.slot {
            slots
                .entry((t.spec.service.as_str(), slot))
                .or_default()
                .push(t.name());
        }
    }
    for ((service, slot), ids) in slots.into_iter().filter(|(_, ids)| ids.len() > 1) {
        out.push(etcd(
            DriftKind::Slot,
            format!("{service}.{slot}"),
            "one task wanted running",
            format!("tasks {}", ids.join(", ")),
        ));
    }

    // Endpoints list running tasks only.
    for e in &s.endpoints {
        let EndpointsSpec {
            network, service, ..
        } = &e.spec;
        for et in &e.spec.tasks {
            let found = match tasks.get(et.task.as_str()) {
                None => format!("task {} ({}), which does not exist", et.task, et.ip),
                Some(t) if t.status.state != TaskState::Running => {
                    format!("task {} ({}), which is {}", et.task, et.ip, t.status.state)
                }
                Some(_) => continue,
            };
            out.push(etcd(
                DriftKind::Endpoints,
                format!("{network}/{service}"),
                "running tasks only",
                found,
            ));
        }
    }
    out
}

fn decode_all<S: Resource>(kvs: &[shoal_store::RawKv]) -> Vec<shoal_api_types::Object<S>> {
    kvs.iter()
        .filter_map(|kv| decode::<S>(kv.key.as_bytes(), &kv.value, kv.mod_revision).ok())
        .collect()
}

/// Reads a [`Snapshot`] at one revision.
pub async fn snapshot(store: &Store) -> Result<Snapshot, StoreError> {
    let keys = store.keys();
    let (tasks, rev) = store.list_raw(&keys.prefix::<TaskSpec>()).await?;
    let services = store
        .list_raw_at(&keys.prefix::<ServiceSpec>(), rev)
        .await?;
    let nodes = store.list_raw_at(&keys.prefix::<NodeSpec>(), rev).await?;
    let endpoints = store
        .list_raw_at(&keys.prefix::<EndpointsSpec>(), rev)
        .await?;
    let ips = format!("{}/ipam/ips/", keys.root());
    let claims = store
        .list_raw_at(&ips, rev)
        .await?
        .into_iter()
        .filter_map(|kv| {
            let rest = kv.key.strip_prefix(&ips)?;
            let (network, ip) = rest.split_once('/')?;
            Some(Claim {
                network: network.to_string(),
                ip: ip.to_string(),
                owner: String::from_utf8_lossy(&kv.value).into_owned(),
            })
        })
        .collect();
    Ok(Snapshot {
        tasks: decode_all(&tasks),
        services: decode_all(&services),
        nodes: decode_all(&nodes),
        endpoints: decode_all(&endpoints),
        claims,
    })
}

/// The drift of `second` that `first` found too.
pub fn settled(first: &[Drift], second: Vec<Drift>) -> Vec<Drift> {
    let seen: BTreeSet<&Drift> = first.iter().collect();
    second.into_iter().filter(|d| seen.contains(d)).collect()
}

async fn etcd_report(store: &Store) -> Result<Vec<Drift>, StoreError> {
    let first = etcd_drift(&snapshot(store).await?);
    if first.is_empty() {
        return Ok(first);
    }
    tokio::time::sleep(SETTLE).await;
    Ok(settled(&first, etcd_drift(&snapshot(store).await?)))
}

/// `GET /apis/shoal/v1/system/check`.
pub async fn check(State(app): State<App>) -> ApiResult<Json<CheckReport>> {
    let (nodes, _) = app.store.list::<NodeSpec>().await?;
    let ready: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.status.state == NodeState::Ready)
        .collect();
    let agents = futures::future::join_all(ready.iter().map(|n| {
        let app = &app;
        async move {
            let answer = match node_target(n) {
                Ok(target) => app.agents.check(&app.store, &target).await,
                Err(e) => Err(e),
            };
            (n.name().to_string(), answer)
        }
    }));
    let (etcd, agents) = tokio::join!(etcd_report(&app.store), agents);
    let mut report = CheckReport {
        nodes: Vec::new(),
        drift: etcd?,
    };
    for (node, answer) in agents {
        match answer {
            Ok(Some(r)) => {
                report.nodes.push(node);
                report.drift.extend(r.drift);
            }
            Ok(None) => {}
            Err(e) => report.drift.push(Drift::new(
                &node,
                DriftKind::Unreachable,
                "agent",
                "its audit",
                e.message,
            )),
        }
    }
    report.normalize();
    Ok(Json(report))
}

#[cfg(test)]
mod tests {
    use shoal_api_types::service::VirtualIp;
    use shoal_api_types::{EndpointTask, TaskAttachment};

    use super::*;

    fn task(id: &str, slot: u64, ip: &str, state: TaskState, desired: TaskState) -> Task {
        let mut t = Task::new(
            id,
            TaskSpec {
                service: "web".into(),
                slot: Some(slot),
                desired_state: desired,
                attachments: vec![TaskAttachment {
                    network: "appnet".into(),
                    address: format!("{ip}/24"),
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        t.status.state = state;
        t
    }

    fn service(vip: &str) -> Service {
        let mut s = Service::new("web", ServiceSpec::default());
        s.status.virtual_ips = vec![VirtualIp {
            network: "appnet".into(),
            addr: vip.into(),
        }];
        s
    }

    fn claim(ip: &str, owner: &str) -> Claim {
        Claim {
            network: "appnet".into(),
            ip: ip.into(),
            owner: owner.into(),
        }
    }

    fn healthy() -> Snapshot {
        use TaskState::*;
        Snapshot {
            tasks: vec![
                task("t1", 1, "10.0.1.5", Running, Running),
                // An ended task of slot 1 keeps its address claim until it is deleted.
                task("t0", 1, "10.0.1.4", Failed, Shutdown),
                task("t2", 2, "10.0.1.6", Running, Running),
            ],
            services: vec![service("10.0.1.2")],
            nodes: vec![],
            endpoints: vec![Endpoints::new(
                "appnet.web",
                EndpointsSpec {
                    network: "appnet".into(),
                    service: "web".into(),
                    tasks: vec![EndpointTask {
                        task: "t1".into(),
                        ip: "10.0.1.5".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )],
            claims: vec![
                claim("10.0.1.2", "vip/web"),
                claim("10.0.1.4", "t0"),
                claim("10.0.1.5", "t1"),
                claim("10.0.1.6", "t2"),
            ],
        }
    }

    #[test]
    fn read_only_tokens_may_run_the_check() {
        use axum::http::Method;
        use shoal_api_types::Role;
        let path = "/apis/shoal/v1/system/check";
        assert!(super::super::auth::allows(
            Role::ReadOnly,
            &Method::GET,
            path
        ));
        assert!(!super::super::auth::allows(
            Role::ReadOnly,
            &Method::POST,
            path
        ));
    }

    #[test]
    fn a_consistent_etcd_should_have_no_drift() {
        assert_eq!(etcd_drift(&healthy()), vec![]);
    }

    #[test]
    fn a_claim_without_a_live_owner_should_be_drift() {
        let mut s = healthy();
        s.claims.push(claim("10.0.1.9", "gone"));
        s.claims.push(claim("10.0.1.8", "vip/web"));
        let drift = etcd_drift(&s);
        let objects: Vec<(&str, &str)> = drift
            .iter()
            .map(|d| (d.object.as_str(), d.found.as_str()))
            .collect();
        assert_eq!(
            objects,
            [
                ("appnet/10.0.1.9", "claimed by gone, which does not exist"),
                (
                    "appnet/10.0.1.8",
                    "claimed by vip/web, which holds another address"
                ),
            ]
        );
        assert!(drift.iter().all(|d| d.kind == DriftKind::Ipam));
    }

    #[test]
    fn two_live_tasks_in_one_slot_and_on_one_address_should_be_drift() {
        let mut s = healthy();
        s.tasks.push(task(
            "t3",
            1,
            "10.0.1.6",
            TaskState::Running,
            TaskState::Running,
        ));
        s.claims.push(claim("10.0.1.6", "t3"));
        let drift = etcd_drift(&s);
        let kinds: Vec<(DriftKind, &str)> =
            drift.iter().map(|d| (d.kind, d.object.as_str())).collect();
        assert!(kinds.contains(&(DriftKind::Slot, "web.1")), "{drift:?}");
        assert!(
            kinds.contains(&(DriftKind::Address, "appnet/10.0.1.6")),
            "{drift:?}"
        );
        // The replaced task (desired shutdown) of a rolling update does not count.
        let mut s = healthy();
        s.tasks.push(task(
            "t4",
            2,
            "10.0.1.7",
            TaskState::Running,
            TaskState::Shutdown,
        ));
        s.claims.push(claim("10.0.1.7", "t4"));
        assert_eq!(etcd_drift(&s), vec![]);
    }

    #[test]
    fn endpoints_naming_a_task_that_is_not_running_should_be_drift() {
        let mut s = healthy();
        s.endpoints[0].spec.tasks.push(EndpointTask {
            task: "t0".into(),
            ip: "10.0.1.4".into(),
            ..Default::default()
        });
        s.endpoints[0].spec.tasks.push(EndpointTask {
            task: "nope".into(),
            ip: "10.0.1.99".into(),
            ..Default::default()
        });
        let drift = etcd_drift(&s);
        assert_eq!(drift.len(), 2, "{drift:?}");
        assert_eq!(drift[0].object, "appnet/web");
        assert_eq!(drift[0].found, "task t0 (10.0.1.4), which is Failed");
        assert_eq!(
            drift[1].found,
            "task nope (10.0.1.99), which does not exist"
        );
    }
}
