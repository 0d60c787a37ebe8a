//! Owns [`Kernel`]'s side of the overlay fast path ([`crate::net::fastpath`]): loading it
//! with the node policy (attached to the interface holding the underlay address, accepting
//! the policy's VXLAN peers), and telling it about task ports as they come and go. On a
//! first load it learns the task ports already there (an agent restarted under running
//! tasks) from their namespaces.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;

use crate::net::error::NetError;
use crate::net::names::{self, PortKind};
use crate::net::netns;

use super::links::*;
use super::Kernel;

impl Kernel {
    /// Load the fast path (or update its peers) after the node policy changed.
    pub(super) async fn ensure_fast_path(
        &self,
        peers: &BTreeSet<Ipv4Addr>,
    ) -> Result<(), NetError> {
        let underlay = self.underlay_link().await?;
        let interface = link_name(&underlay).unwrap_or_default();
        let fresh = !self.fast.is_loaded().await;
        self.fast
            .ensure(self.home_ns(), &interface, self.config.underlay, peers)
            .await?;
        if fresh {
            self.fast_path_recover().await?;
        }
        Ok(())
    }

    /// Tell the fast path about every overlay port present, reading each task's address in
    /// its namespace (the port's peer interface). An attach running meanwhile wins: what
    /// this finds never replaces what an attach set.
    async fn fast_path_recover(&self) -> Result<(), NetError> {
        let (ports, _) = self.ports().await?;
        for (link, ns, kind) in ports {
            let PortKind::Overlay(vni) = kind else {
                continue;
            };
            let Some(peer) = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::Link(i) => Some(*i),
                _ => None,
            }) else {
                continue;
            };
            let path = netns::path(&self.config.netns_dir, &ns);
            if !netns::is_mounted(&path) {
                continue;
            }
            let handle = netns::netlink(Some(&path)).await?;
            let addresses: Vec<_> = handle
                .address()
                .get()
                .set_link_index_filter(peer)
                .execute()
                .try_collect()
                .await
                .map_err(nl("list addresses", &ns))?;
            for a in addresses {
                for at in &a.attributes {
                    if let AddressAttribute::Address(IpAddr::V4(ip)) = at {
                        self.fast.learn_task(vni, *ip, link.header.index).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A task's port on overlay `vni` is ready: the fast path may deliver to it.
    pub(super) async fn fast_path_add(&self, netns_name: &str, vni: u32, ip: Ipv4Addr) {
        let host = names::host_veth_name(netns_name, PortKind::Overlay(vni));
        let added = match link_by_name(&self.home, &host).await {
            Ok(Some(l)) => self.fast.set_task(vni, ip, l.header.index).await,
            Ok(None) => Err(NetError::Invalid(format!("veth {host} vanished"))),
            Err(e) => Err(e),
        };
        if let Err(e) = added {
            tracing::warn!(error = %e, task = netns_name, "overlay fast path: the kernel's path serves this task");
        }
    }

    /// A port is about to go: the fast path must stop delivering to it first.
    pub(super) async fn fast_path_forget(&self, ifindex: u32) {
        if let Err(e) = self.fast.forget_port(ifindex).await {
            tracing::warn!(error = %e, ifindex, "overlay fast path: cannot forget a port");
        }
    }
}
