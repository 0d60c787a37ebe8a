//! Owns [`Kernel`]'s side of the overlay fast path ([`crate::net::fastpath`]): loading it
//! with the node policy (attached to the interface holding the underlay address, accepting
//! the policy's VXLAN peers), and telling it about task ports as they come and go. On a
//! load it learns the task ports already there (an agent restarted under running tasks)
//! from their namespaces.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};

use crate::net::error::NetError;
use crate::net::names::PortKind;
use crate::net::netns;

use super::links::*;
use super::Kernel;

impl Kernel {
    /// Load the fast path (or update its peers) after the node policy changed. An error
    /// means it is not loaded; ports it could not learn are logged and left to the kernel.
    pub(super) async fn ensure_fast_path(
        &self,
        peers: &BTreeSet<Ipv4Addr>,
    ) -> Result<(), NetError> {
        let underlay = self.underlay_link().await?;
        let interface = link_name(&underlay).unwrap_or_default();
        let loaded = self
            .fast
            .ensure(
                self.home_ns(),
                (&interface, underlay.header.index),
                self.config.underlay,
                peers,
            )
            .await?;
        if loaded {
            self.fast_path_recover().await;
        }
        Ok(())
    }

    /// Tell the fast path about the overlay ports present: each port's task address is read
    /// in its namespace, on the port's peer interface. What this finds never replaces what
    /// an attach set meanwhile. A task may add addresses of its own (with `NET_ADMIN`), so an
    /// address two ports claim is learned for neither: those tasks keep the kernel's path,
    /// which delivers by MAC, until their next attach.
    async fn fast_path_recover(&self) {
        let ports = match self.ports().await {
            Ok((ports, _)) => ports,
            Err(e) => {
                tracing::warn!(error = %e, "overlay fast path: cannot list task ports");
                return;
            }
        };
        let mut claims: BTreeMap<(u32, Ipv4Addr), Vec<u32>> = BTreeMap::new();
        for (link, ns, kind) in ports {
            let PortKind::Overlay(vni) = kind else {
                continue;
            };
            match self.port_addresses(&link, &ns).await {
                Ok(ips) => {
                    for ip in ips {
                        claims.entry((vni, ip)).or_default().push(link.header.index);
                    }
                }
                // A task going away meanwhile, typically: its port needs no entry.
                Err(e) => {
                    tracing::debug!(error = %e, task = ns, "overlay fast path: port not learned")
                }
            }
        }
        for ((vni, ip), ports) in claims {
            let [ifindex] = ports[..] else {
                tracing::warn!(vni, %ip, "overlay fast path: an address claimed by several ports is left to the kernel's path");
                continue;
            };
            if let Err(e) = self.fast.learn_task(vni, ip, ifindex).await {
                tracing::warn!(error = %e, vni, %ip, "overlay fast path: port not learned");
            }
        }
    }

    /// The IPv4 addresses on the task side of a port (`link`, a veth into namespace `ns`).
    async fn port_addresses(
        &self,
        link: &LinkMessage,
        ns: &str,
    ) -> Result<Vec<Ipv4Addr>, NetError> {
        let peer = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Link(i) => Some(*i),
                _ => None,
            })
            .ok_or_else(|| NetError::Invalid(format!("port of {ns} has no peer")))?;
        let path = netns::path(&self.config.netns_dir, ns);
        if !netns::is_mounted(&path) {
            return Err(NetError::Invalid(format!("no namespace {ns}")));
        }
        let handle = netns::netlink(Some(&path)).await?;
        let addresses: Vec<_> = handle
            .address()
            .get()
            .set_link_index_filter(peer)
            .execute()
            .try_collect()
            .await
            .map_err(nl("list addresses", ns))?;
        Ok(addresses
            .iter()
            .flat_map(|a| &a.attributes)
            .filter_map(|at| match at {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })
            .collect())
    }
    /// A task's port on overlay `vni` (home end `ifindex`) is ready: the fast path may
    /// deliver to it.
    pub(super) async fn fast_path_add(
        &self,
        netns_name: &str,
        vni: u32,
        ip: Ipv4Addr,
        ifindex: u32,
    ) {
        if let Err(e) = self.fast.set_task(vni, ip, ifindex).await {
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
