//! Owns a task's side of [`Kernel`]: its namespace and the veths that join it to the overlay
//! bridges and the gateway bridge (attach, repair, detach). See [`crate::net`] for the model.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{
    Handle, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::net::error::NetError;
use crate::net::names::{self, PortKind};
use crate::net::netns;
use crate::net::types::{Attachment, TaskInterface, TaskNetInfo, TaskNetSpec};

use super::links::*;
use super::Kernel;

impl Kernel {
    /// Create (or repair) one veth between a home bridge and a task netns; returns the
    /// indexes of its home end and of its task end.
    #[allow(clippy::too_many_arguments)]
    async fn ensure_port(
        &self,
        task_handle: &Handle,
        ns_path: &Path,
        netns_name: &str,
        kind: PortKind,
        bridge_index: u32,
        ifname: &str,
        address: Ipv4Network,
        mtu: u32,
        isolated: bool,
    ) -> Result<(u32, u32), NetError> {
        let host = names::host_veth_name(netns_name, kind);
        let alias = names::port_alias(netns_name, kind);
        let mac = names::mac_for_ip(address.ip());
        let existing = link_by_name(&self.home, &host).await?;
        let (host_idx, fresh) = match existing {
            Some(l) if link_alias(&l).as_deref() == Some(alias.as_str()) => {
                let idx = l.header.index;
                set_link(
                    &self.home,
                    &host,
                    LinkUnspec::new_with_index(idx)
                        .controller(bridge_index)
                        .up()
                        .build(),
                )
                .await?;
                (idx, false)
            }
            other => {
                if let Some(l) = other {
                    del_link(&self.home, &host, l.header.index).await?;
                }
                // A peer left in the task netns by an interrupted attach would clash by name.
                if let Some(old) = link_by_name(task_handle, ifname).await? {
                    del_link(task_handle, ifname, old.header.index).await?;
                }
                let ns_file = std::fs::File::open(ns_path).map_err(|e| NetError::Io {
                    op: "open namespace",
                    path: ns_path.to_owned(),
                    source: e,
                })?;
                use std::os::fd::AsRawFd;
                let peer = LinkMessageBuilder::<LinkUnspec>::new()
                    .name(ifname)
                    .address(mac.to_vec())
                    .mtu(mtu)
                    .setns_by_fd(ns_file.as_raw_fd())
                    .build();
                let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                    .name(host.clone())
                    .mtu(mtu)
                    .controller(bridge_index)
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                    .build();
                self.home
                    .link()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(nl("create veth", &host))?;
                drop(ns_file);
                let idx = link_by_name(&self.home, &host)
                    .await?
                    .ok_or_else(|| {
                        NetError::Invalid(format!("veth {host} vanished after creation"))
                    })?
                    .header
                    .index;
                set_link(
                    &self.home,
                    &host,
                    LinkUnspec::new_with_index(idx).alias(alias).up().build(),
                )
                .await?;
                (idx, true)
            }
        };
        if isolated {
            self.home
                .link()
                .set_port(LinkBridgePort::new(host_idx).isolated(true).build())
                .execute()
                .await
                .map_err(nl("isolate bridge port", &host))?;
        }
        // Task side: always re-applied, each step idempotent.
        let inner = link_by_name(task_handle, ifname).await?.ok_or_else(|| {
            NetError::Invalid(format!(
                "{ifname} missing in {netns_name} although {host} exists"
            ))
        })?;
        let idx = inner.header.index;
        if !fresh && link_mtu(&inner) != Some(mtu) {
            set_link(
                task_handle,
                ifname,
                LinkUnspec::new_with_index(idx).mtu(mtu).build(),
            )
            .await?;
        }
        set_link(
            task_handle,
            ifname,
            LinkUnspec::new_with_index(idx).up().build(),
        )
        .await?;
        add_address(task_handle, idx, address, ifname).await?;
        Ok((host_idx, idx))
    }

    /// Creates the task namespace and its veths (see [`Network::attach_task`]).
    pub(super) async fn attach(&self, spec: &TaskNetSpec) -> Result<TaskNetInfo, NetError> {
        let netns_name = names::task_netns_name(&self.config.prefix, &spec.task);
        if !names::valid_netns_name(&spec.task) || !names::valid_netns_name(&netns_name) {
            return Err(NetError::Invalid(format!(
                "task key {:?} is not a usable netns name",
                spec.task
            )));
        }
        // Check prerequisites before making anything.
        let mut bridges = Vec::new();
        for Attachment { vni, address } in &spec.attachments {
            let br = link_by_name(&self.home, &names::bridge_name(*vni))
                .await?
                .ok_or(NetError::OverlayMissing { vni: *vni })?;
            if link_by_name(&self.home, &names::vxlan_name(*vni))
                .await?
                .is_none()
            {
                return Err(NetError::OverlayMissing { vni: *vni });
            }
            bridges.push((
                br.header.index,
                link_mtu(&br).unwrap_or(1450),
                *vni,
                *address,
            ));
        }
        let gateway = if spec.egress {
            Some(self.gateway().await?.ok_or(NetError::GatewayMissing)?)
        } else {
            None
        };

        let path = netns::create(&self.config.netns_dir, &netns_name)?;
        let task_handle = netns::netlink(Some(&path)).await?;
        if let Some(lo) = link_by_name(&task_handle, "lo").await? {
            set_link(
                &task_handle,
                "lo",
                LinkUnspec::new_with_index(lo.header.index).up().build(),
            )
            .await?;
        }
        let mut interfaces = Vec::new();
        for (i, (br_index, mtu, vni, address)) in bridges.into_iter().enumerate() {
            let ifname = names::task_ifname(i);
            let kind = PortKind::Overlay(vni);
            let (host_idx, _) = self
                .ensure_port(
                    &task_handle,
                    &path,
                    &netns_name,
                    kind,
                    br_index,
                    &ifname,
                    address,
                    mtu,
                    false,
                )
                .await?;
            self.fast_path_add(&netns_name, vni, address.ip(), host_idx)
                .await;
            interfaces.push(TaskInterface {
                name: ifname,
                kind,
                address,
                mac: names::format_mac(&names::mac_for_ip(address.ip())),
                mtu,
            });
        }
        if let Some((gw_index, gw_mtu, subnet)) = gateway {
            let _guard = self.gw_lock.lock().await;
            let (ports, _) = self.ports().await?;
            let mine = ports.iter().find_map(|(_, ns, k)| match k {
                PortKind::Gateway(ip) if *ns == netns_name && subnet.contains(*ip) => Some(*ip),
                _ => None,
            });
            let ip = match mine {
                Some(ip) => ip,
                None => {
                    let used: BTreeSet<Ipv4Addr> = ports
                        .iter()
                        .filter_map(|(_, _, k)| match k {
                            PortKind::Gateway(ip) => Some(*ip),
                            _ => None,
                        })
                        .collect();
                    names::next_gateway_ip(subnet, &used)
                        .ok_or(NetError::GatewayExhausted(subnet))?
                }
            };
            let ifname = names::task_ifname(interfaces.len());
            let kind = PortKind::Gateway(ip);
            let address = Ipv4Network::new(ip, subnet.prefix()).expect("valid prefix");
            let (_, idx) = self
                .ensure_port(
                    &task_handle,
                    &path,
                    &netns_name,
                    kind,
                    gw_index,
                    &ifname,
                    address,
                    gw_mtu,
                    true,
                )
                .await?;
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(names::gateway_address(subnet))
                .output_interface(idx)
                .build();
            task_handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(nl("add default route", &netns_name))?;
            interfaces.push(TaskInterface {
                name: ifname,
                kind,
                address,
                mac: names::format_mac(&names::mac_for_ip(ip)),
                mtu: gw_mtu,
            });
        }
        Ok(TaskNetInfo {
            netns: netns_name,
            path,
            interfaces,
        })
    }

    /// Deletes the task's veths and namespace (see [`Network::detach_task`]).
    pub(super) async fn detach(&self, task: &str) -> Result<(), NetError> {
        let netns_name = names::task_netns_name(&self.config.prefix, task);
        let (ports, _) = self.ports().await?;
        for (l, ns, _) in ports {
            if ns == netns_name {
                self.fast_path_forget(l.header.index).await;
                let name = link_name(&l).unwrap_or_default();
                del_link(&self.home, &name, l.header.index).await?;
            }
        }
        netns::delete(&self.config.netns_dir, &netns_name)
    }
}
