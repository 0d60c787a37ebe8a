//! A `Send + Sync` recording fake of [`Network`] for the agent's unit tests: it records every
//! call in order and keeps a small model of the kernel (overlays, gateway, task namespaces,
//! peer entries) so `observe` and `list_peer_entries` answer consistently with what was
//! done — a restart test can seed it with [`RecordingNetwork::with_observed`]. Failures can
//! be injected per method name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;

use super::error::{NetError, NftError};
use super::names::{self, PortKind};
use super::network::Network;
use super::nodefw::NodePolicy;
use super::types::{
    GatewaySpec, Observed, ObservedOverlay, ObservedPort, OverlayInfo, OverlaySpec, PeerEntries,
    PeerOp, TaskInterface, TaskNetInfo, TaskNetSpec,
};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetCall {
    /// `ensure_overlay`.
    EnsureOverlay(OverlaySpec),
    /// `remove_overlay`.
    RemoveOverlay(u32),
    /// `ensure_gateway`.
    EnsureGateway(GatewaySpec),
    /// `remove_gateway`.
    RemoveGateway,
    /// `program_node_policy`.
    ProgramNodePolicy(NodePolicy),
    /// `attach_task`.
    AttachTask(TaskNetSpec),
    /// `detach_task`.
    DetachTask(String),
    /// `list_peer_entries`.
    ListPeerEntries(u32),
    /// `apply_peer_op`.
    ApplyPeerOp(u32, PeerOp),
    /// `observe`.
    Observe,
    /// `remove_stray_link`.
    RemoveStrayLink(String),
}

#[derive(Default)]
struct State {
    calls: Vec<NetCall>,
    observed: Observed,
    peers: BTreeMap<u32, PeerEntries>,
    fail: BTreeSet<&'static str>,
}

/// The recording fake (see module docs).
pub struct RecordingNetwork {
    prefix: String,
    state: Mutex<State>,
    /// Where `attach_task` waits first (see [`RecordingNetwork::meet_on_attach`]).
    attach_barrier: Mutex<Option<std::sync::Arc<tokio::sync::Barrier>>>,
    /// Where `list_peer_entries` waits first (see [`RecordingNetwork::meet_on_list_peers`]).
    list_peers_barrier: Mutex<Option<std::sync::Arc<tokio::sync::Barrier>>>,
}

impl RecordingNetwork {
    /// An empty node whose task namespaces are named `<prefix><task>`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            state: Mutex::new(State::default()),
            attach_barrier: Mutex::new(None),
            list_peers_barrier: Mutex::new(None),
        }
    }

    /// A node that already holds `observed` (e.g. what a crashed agent left behind).
    pub fn with_observed(prefix: impl Into<String>, observed: Observed) -> Self {
        let me = Self::new(prefix);
        me.state.lock().expect("fake lock").observed = observed;
        me
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<NetCall> {
        self.state.lock().expect("fake lock").calls.clone()
    }

    /// Forget the recorded calls (the model stays).
    pub fn clear_calls(&self) {
        self.state.lock().expect("fake lock").calls.clear();
    }

    /// Make every later call of `method` (e.g. `"attach_task"`) fail with a retryable error,
    /// until [`RecordingNetwork::heal`].
    pub fn fail(&self, method: &'static str) {
        self.state.lock().expect("fake lock").fail.insert(method);
    }

    /// Makes every later `attach_task` wait at `barrier` before it does anything (see
    /// `FakeRuntime::meet_on_create`: a barrier of 2 shared by both opens only if the
    /// attach and a container create are in flight at the same time).
    pub fn meet_on_attach(&self, barrier: std::sync::Arc<tokio::sync::Barrier>) {
        *self.attach_barrier.lock().expect("fake lock") = Some(barrier);
    }

    /// Makes every later `list_peer_entries` (a peer sync's first step) wait at `barrier`
    /// before it does anything, so a test can change the node while a sync is under way.
    pub fn meet_on_list_peers(&self, barrier: std::sync::Arc<tokio::sync::Barrier>) {
        *self.list_peers_barrier.lock().expect("fake lock") = Some(barrier);
    }

    /// Stop failing `method`.
    pub fn heal(&self, method: &'static str) {
        self.state.lock().expect("fake lock").fail.remove(method);
    }

    fn record(
        &self,
        method: &'static str,
        call: NetCall,
    ) -> Result<std::sync::MutexGuard<'_, State>, NetError> {
        let mut s = self.state.lock().expect("fake lock");
        s.calls.push(call);
        if s.fail.contains(method) {
            return Err(NetError::Nft(NftError::Refused {
                what: "injected failure",
                netns: method.to_string(),
                stderr: String::new(),
            }));
        }
        Ok(s)
    }
}

#[async_trait]
impl Network for RecordingNetwork {
    async fn ensure_overlay(&self, spec: &OverlaySpec) -> Result<OverlayInfo, NetError> {
        let mut s = self.record("ensure_overlay", NetCall::EnsureOverlay(spec.clone()))?;
        let created = !s.observed.overlays.get(&spec.vni).is_some_and(|o| o.vxlan);
        s.observed.overlays.insert(
            spec.vni,
            ObservedOverlay {
                bridge: true,
                vxlan: true,
            },
        );
        Ok(OverlayInfo {
            bridge: names::bridge_name(spec.vni),
            vxlan: names::vxlan_name(spec.vni),
            mtu: names::overlay_mtu(spec.mtu, 1500),
            created,
        })
    }

    async fn remove_overlay(&self, vni: u32) -> Result<(), NetError> {
        let mut s = self.record("remove_overlay", NetCall::RemoveOverlay(vni))?;
        s.observed.overlays.remove(&vni);
        s.peers.remove(&vni);
        Ok(())
    }

    async fn ensure_gateway(&self, spec: &GatewaySpec) -> Result<(), NetError> {
        let mut s = self.record("ensure_gateway", NetCall::EnsureGateway(spec.clone()))?;
        s.observed.gateway = true;
        Ok(())
    }

    async fn remove_gateway(&self) -> Result<(), NetError> {
        let mut s = self.record("remove_gateway", NetCall::RemoveGateway)?;
        s.observed.gateway = false;
        Ok(())
    }

    async fn program_node_policy(&self, policy: &NodePolicy) -> Result<(), NetError> {
        let call = NetCall::ProgramNodePolicy(policy.clone());
        drop(self.record("program_node_policy", call)?);
        Ok(())
    }

    async fn attach_task(&self, spec: &TaskNetSpec) -> Result<TaskNetInfo, NetError> {
        let barrier = self.attach_barrier.lock().expect("fake lock").clone();
        if let Some(barrier) = barrier {
            barrier.wait().await;
        }
        let mut s = self.record("attach_task", NetCall::AttachTask(spec.clone()))?;
        for a in &spec.attachments {
            if !s
                .observed
                .overlays
                .get(&a.vni)
                .is_some_and(|o| o.bridge && o.vxlan)
            {
                return Err(NetError::OverlayMissing { vni: a.vni });
            }
        }
        if spec.egress && !s.observed.gateway {
            return Err(NetError::GatewayMissing);
        }
        let netns = names::task_netns_name(&self.prefix, &spec.task);
        let mut interfaces = Vec::new();
        let mut ports = Vec::new();
        for (i, a) in spec.attachments.iter().enumerate() {
            let kind = PortKind::Overlay(a.vni);
            ports.push(ObservedPort {
                link: names::host_veth_name(&netns, kind),
                kind,
            });
            interfaces.push(TaskInterface {
                name: names::task_ifname(i),
                kind,
                address: a.address,
                mac: names::format_mac(&names::mac_for_ip(a.address.ip())),
                mtu: 1450,
            });
        }
        if spec.egress {
            let used: BTreeSet<_> = s
                .observed
                .task_ports
                .iter()
                .filter(|(t, _)| **t != spec.task)
                .flat_map(|(_, ps)| ps.iter())
                .filter_map(|p| match p.kind {
                    PortKind::Gateway(ip) => Some(ip),
                    _ => None,
                })
                .collect();
            let subnet = GatewaySpec::default().subnet;
            let ip =
                names::next_gateway_ip(subnet, &used).ok_or(NetError::GatewayExhausted(subnet))?;
            let kind = PortKind::Gateway(ip);
            ports.push(ObservedPort {
                link: names::host_veth_name(&netns, kind),
                kind,
            });
            interfaces.push(TaskInterface {
                name: names::task_ifname(interfaces.len()),
                kind,
                address: ipnetwork::Ipv4Network::new(ip, subnet.prefix()).expect("valid"),
                mac: names::format_mac(&names::mac_for_ip(ip)),
                mtu: 1500,
            });
        }
        s.observed.task_netns.insert(spec.task.clone());
        s.observed.task_ports.insert(spec.task.clone(), ports);
        Ok(TaskNetInfo {
            path: PathBuf::from("/run/netns").join(&netns),
            netns,
            interfaces,
        })
    }

    async fn detach_task(&self, task: &str) -> Result<(), NetError> {
        let mut s = self.record("detach_task", NetCall::DetachTask(task.to_string()))?;
        s.observed.task_netns.remove(task);
        s.observed.task_ports.remove(task);
        Ok(())
    }

    async fn list_peer_entries(&self, vni: u32) -> Result<PeerEntries, NetError> {
        let barrier = self.list_peers_barrier.lock().expect("fake lock").clone();
        if let Some(barrier) = barrier {
            barrier.wait().await;
        }
        let s = self.record("list_peer_entries", NetCall::ListPeerEntries(vni))?;
        if !s.observed.overlays.contains_key(&vni) {
            return Err(NetError::OverlayMissing { vni });
        }
        Ok(s.peers.get(&vni).cloned().unwrap_or_default())
    }

    async fn apply_peer_op(&self, vni: u32, op: &PeerOp) -> Result<(), NetError> {
        let mut s = self.record("apply_peer_op", NetCall::ApplyPeerOp(vni, *op))?;
        if !s.observed.overlays.contains_key(&vni) {
            return Err(NetError::OverlayMissing { vni });
        }
        let e = s.peers.entry(vni).or_default();
        match *op {
            PeerOp::AddFdb(f) => {
                e.fdb.retain(|x| x.mac != f.mac);
                e.fdb.insert(f);
            }
            PeerOp::DelFdb(f) => {
                e.fdb.remove(&f);
            }
            PeerOp::AddNeigh(n) => {
                e.neigh.retain(|x| x.ip != n.ip);
                e.neigh.insert(n);
            }
            PeerOp::DelNeigh(n) => {
                e.neigh.remove(&n);
            }
        }
        Ok(())
    }

    async fn observe(&self) -> Result<Observed, NetError> {
        let s = self.record("observe", NetCall::Observe)?;
        Ok(s.observed.clone())
    }

    async fn remove_stray_link(&self, link: &str) -> Result<(), NetError> {
        let mut s = self.record(
            "remove_stray_link",
            NetCall::RemoveStrayLink(link.to_string()),
        )?;
        s.observed.stray_links.retain(|l| l != link);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::types::{Attachment, Peer};

    #[tokio::test]
    async fn fake_should_record_calls_and_model_state() {
        let net = RecordingNetwork::new("shoal-n1-");
        let spec = TaskNetSpec {
            task: "t1".into(),
            attachments: vec![Attachment {
                vni: 4097,
                address: "10.0.1.2/24".parse().unwrap(),
            }],
            egress: true,
        };
        assert!(matches!(
            net.attach_task(&spec).await,
            Err(NetError::OverlayMissing { vni: 4097 })
        ));
        net.ensure_overlay(&OverlaySpec {
            vni: 4097,
            mtu: None,
            address: None,
        })
        .await
        .unwrap();
        net.ensure_gateway(&GatewaySpec::default()).await.unwrap();
        let info = net.attach_task(&spec).await.unwrap();
        assert_eq!(info.path, PathBuf::from("/run/netns/shoal-n1-t1"));
        assert_eq!(info.interfaces[0].mac, "02:42:0a:00:01:02");
        assert_eq!(info.interfaces[1].address, "172.18.0.2/16".parse().unwrap());
        let peer = Peer {
            ip: "10.0.1.3".parse().unwrap(),
            node: "198.18.0.2".parse().unwrap(),
        };
        assert_eq!(net.sync_peers(4097, &[peer]).await.unwrap().len(), 2);
        assert!(net.sync_peers(4097, &[peer]).await.unwrap().is_empty());
        let seen = net.observe().await.unwrap();
        assert!(seen.task_netns.contains("t1") && seen.gateway);
        net.fail("detach_task");
        assert!(net.detach_task("t1").await.unwrap_err().is_temporary());
        net.heal("detach_task");
        net.detach_task("t1").await.unwrap();
        assert!(net.observe().await.unwrap().task_netns.is_empty());
        assert_eq!(net.calls()[0], NetCall::AttachTask(spec));
    }
}
