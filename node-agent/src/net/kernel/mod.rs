//! The real [`Network`]: netlink through `rtnetlink`, one connection bound to the home netns
//! for the life of the value, short-lived connections inside task namespaces, and nftables
//! through `nft -j` run from a thread inside the home netns. This file owns the node's links
//! (overlays, the gateway bridge, peer entries, observation); [`task`] owns task namespaces
//! and their veths; [`links`] the netlink helpers both use.
//!
//! Idempotence comes from looking before acting: links are found by their derived names,
//! task ports by their aliases, addresses and entries are added with replace semantics, and
//! deleting something already gone is not an error.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVxlan};

use super::error::NetError;
use super::fastpath::FastPath;
use super::names::{self, OverlayLink, PortKind, GW_BRIDGE};
use super::network::Network;
use super::nodefw::{self, NodePolicy};
use super::types::{
    FdbEntry, GatewaySpec, NeighEntry, NetConfig, Observed, ObservedOverlay, ObservedPort,
    OverlayInfo, OverlaySpec, PeerEntries, PeerOp, TaskNetInfo, TaskNetSpec,
};
use super::{datapath, egress, netns, nft};

mod fast;
mod links;
mod task;

use links::*;

/// Netlink and nftables on this node (see the module docs of `net`).
pub struct Kernel {
    config: NetConfig,
    home: Handle,
    /// Serialises gateway-address allocation (the free list lives in link aliases).
    gw_lock: tokio::sync::Mutex<()>,
    /// Serialises dumps on `home`: the kernel runs one dump per netlink socket at a time and
    /// answers EBUSY to a second one.
    dump: tokio::sync::Mutex<()>,
    /// The overlay's receive fast path (loaded with the node policy, see [`fast`]).
    fast: FastPath,
}

impl Kernel {
    /// Open the home netns's netlink connection. Needs a tokio runtime; fails if the home
    /// namespace cannot be entered.
    pub async fn connect(config: NetConfig) -> Result<Self, NetError> {
        if config.prefix.is_empty() || !names::valid_netns_name(&config.prefix) {
            return Err(NetError::Invalid(format!(
                "netns prefix {:?} must be non-empty and path-safe",
                config.prefix
            )));
        }
        let home = netns::netlink(config.home_netns.as_deref()).await?;
        Ok(Self {
            config,
            home,
            gw_lock: tokio::sync::Mutex::new(()),
            dump: tokio::sync::Mutex::new(()),
            fast: FastPath::default(),
        })
    }

    /// The configuration this was built with.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The path of a task's netns.
    pub fn task_netns_path(&self, task: &str) -> PathBuf {
        netns::path(
            &self.config.netns_dir,
            &names::task_netns_name(&self.config.prefix, task),
        )
    }

    fn home_ns(&self) -> Option<&Path> {
        self.config.home_netns.as_deref()
    }

    /// Every link of the home netns (one dump at a time, see `dump`).
    async fn home_links(&self) -> Result<Vec<LinkMessage>, NetError> {
        let _one_dump = self.dump.lock().await;
        self.home
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("list links", "all"))
    }

    /// Every address of the home netns.
    async fn home_addresses(&self) -> Result<Vec<AddressMessage>, NetError> {
        let _one_dump = self.dump.lock().await;
        self.home
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("list addresses", "all"))
    }

    /// Every neighbour (`Inet`) or FDB (`Bridge`) entry of the home netns.
    async fn home_neighbours(
        &self,
        family: AddressFamily,
    ) -> Result<Vec<NeighbourMessage>, NetError> {
        let _one_dump = self.dump.lock().await;
        self.home
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(nl("list neighbours", format!("{family:?}")))
    }

    /// IPv4 addresses on a home link, with the messages that delete them.
    async fn link_addresses(
        &self,
        index: u32,
    ) -> Result<Vec<(Ipv4Network, AddressMessage)>, NetError> {
        let mut out = Vec::new();
        for a in self
            .home_addresses()
            .await?
            .into_iter()
            .filter(|a| a.header.index == index)
        {
            let ip = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = ip {
                if let Ok(net) = Ipv4Network::new(ip, a.header.prefix_len) {
                    out.push((net, a));
                }
            }
        }
        Ok(out)
    }

    /// The interface holding the underlay address.
    async fn underlay_link(&self) -> Result<LinkMessage, NetError> {
        for a in self.home_addresses().await? {
            let has = a.attributes.iter().any(|at| {
                matches!(at, AddressAttribute::Address(ip) | AddressAttribute::Local(ip) if *ip == IpAddr::V4(self.config.underlay))
            });
            if has {
                if let Some(link) = link_by_index(&self.home, a.header.index).await? {
                    return Ok(link);
                }
            }
        }
        Err(NetError::NoUnderlay(self.config.underlay))
    }

    /// MTU of the interface holding the underlay address.
    async fn underlay_mtu(&self) -> Result<u32, NetError> {
        Ok(link_mtu(&self.underlay_link().await?).unwrap_or(1500))
    }

    async fn vxlan_index(&self, vni: u32) -> Result<u32, NetError> {
        link_by_name(&self.home, &names::vxlan_name(vni))
            .await?
            .map(|l| l.header.index)
            .ok_or(NetError::OverlayMissing { vni })
    }

    /// Ports (host-side veths) of ours in the home netns: (link, netns name, kind), plus
    /// `she…`/`shg…` links without a readable alias.
    async fn ports(&self) -> Result<(Vec<(LinkMessage, String, PortKind)>, Vec<String>), NetError> {
        let mut ports = Vec::new();
        let mut stray = Vec::new();
        for l in self.home_links().await? {
            let Some(name) = link_name(&l) else { continue };
            if !(name.starts_with("she") || name.starts_with("shg")) || name.len() != 14 {
                continue;
            }
            match link_alias(&l).and_then(|a| names::parse_port_alias(&a)) {
                Some((ns, kind)) => ports.push((l, ns, kind)),
                None => stray.push(name),
            }
        }
        Ok((ports, stray))
    }

    /// Bring the home netns's data-path sysctls to [`datapath::overlay_sysctls`], writing
    /// only what differs and skipping keys this kernel does not have; nothing when the home
    /// is the host's namespace.
    async fn ensure_datapath_sysctls(&self) -> Result<(), NetError> {
        let wanted = datapath::overlay_sysctls(self.home_ns().is_some());
        let mut current = BTreeMap::new();
        for s in &wanted {
            current.insert(
                s.key,
                netns::read_sysctl_if_present(self.home_ns(), s.key).await?,
            );
        }
        for s in datapath::plan_sysctls(&wanted, &current) {
            netns::write_sysctl(self.home_ns(), s.key, s.value).await?;
        }
        Ok(())
    }

    /// The gateway bridge's index and subnet (from its address), if it exists.
    async fn gateway(&self) -> Result<Option<(u32, u32, Ipv4Network)>, NetError> {
        let Some(link) = link_by_name(&self.home, GW_BRIDGE).await? else {
            return Ok(None);
        };
        let idx = link.header.index;
        for a in self
            .home_addresses()
            .await?
            .into_iter()
            .filter(|a| a.header.index == idx)
        {
            for at in &a.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = at {
                    let net = Ipv4Network::new(*ip, a.header.prefix_len)
                        .map_err(|e| NetError::Invalid(format!("{GW_BRIDGE} address: {e}")))?;
                    let net = Ipv4Network::new(net.network(), net.prefix())
                        .expect("prefix already valid");
                    return Ok(Some((idx, link_mtu(&link).unwrap_or(1500), net)));
                }
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl Network for Kernel {
    async fn ensure_overlay(&self, spec: &OverlaySpec) -> Result<OverlayInfo, NetError> {
        if spec.vni == 0 || spec.vni > names::VNI_MAX {
            return Err(NetError::Invalid(format!(
                "VNI {} is outside 1..={}",
                spec.vni,
                names::VNI_MAX
            )));
        }
        let mtu = match spec.mtu {
            Some(m) => m,
            None => names::overlay_mtu(None, self.underlay_mtu().await?),
        };
        let (br, vx) = (names::bridge_name(spec.vni), names::vxlan_name(spec.vni));
        let br_index = match link_by_name(&self.home, &br).await? {
            Some(l) => {
                let mut fix = LinkUnspec::new_with_index(l.header.index).mtu(mtu).up();
                // Only when it differs: setting a bridge's address, even to the one it has,
                // flushes the node's neighbour entries on it.
                let mac = spec.address.map(|a| names::mac_for_ip(a.ip()));
                if let Some(mac) = mac.filter(|m| link_mac(&l) != Some(*m)) {
                    fix = fix.address(mac.to_vec());
                }
                set_link(&self.home, &br, fix.build()).await?;
                l.header.index
            }
            None => {
                let mut msg = LinkBridge::new(&br).mtu(mtu);
                if let Some(a) = spec.address {
                    msg = msg.address(names::mac_for_ip(a.ip()).to_vec());
                }
                add_link_tolerant(&self.home, &br, msg.build()).await?;
                link_by_name(&self.home, &br)
                    .await?
                    .ok_or_else(|| {
                        NetError::Invalid(format!("bridge {br} vanished after creation"))
                    })?
                    .header
                    .index
            }
        };
        // The bridge holds the node's own address on this overlay when one is given (the
        // ingress network) and no address otherwise, so the node never routes between overlays.
        // Other addresses go first: a new address in the old one's subnet is added as its
        // secondary, and deleting a primary deletes its secondaries with it.
        for (addr, msg) in self.link_addresses(br_index).await? {
            if Some(addr) != spec.address {
                ignore_missing(self.home.address().del(msg).execute().await)
                    .map_err(nl("delete address", format!("{addr} on {br}")))?;
            }
        }
        if let Some(a) = spec.address {
            add_address(&self.home, br_index, a, &br).await?;
        }
        let existing = match link_by_name(&self.home, &vx).await? {
            // A device left with other settings (the node's address changed, or someone
            // else's device by our name) is replaced; its entries go with it.
            Some(l) if !vxlan_matches(&l, spec.vni, self.config.underlay) => {
                del_link(&self.home, &vx, l.header.index).await?;
                None
            }
            other => other,
        };
        let created = match existing {
            Some(l) => {
                let fix = LinkUnspec::new_with_index(l.header.index)
                    .controller(br_index)
                    .mtu(mtu)
                    .up()
                    .build();
                set_link(&self.home, &vx, fix).await?;
                false
            }
            None => {
                let msg = LinkVxlan::new(&vx, spec.vni)
                    .local(self.config.underlay)
                    .port(names::VXLAN_PORT)
                    .learning(false)
                    .proxy(true)
                    .mtu(mtu)
                    .controller(br_index)
                    .up()
                    .build();
                add_link_tolerant(&self.home, &vx, msg).await?;
                true
            }
        };
        self.ensure_datapath_sysctls().await?;
        Ok(OverlayInfo {
            bridge: br,
            vxlan: vx,
            mtu,
            created,
        })
    }

    async fn remove_overlay(&self, vni: u32) -> Result<(), NetError> {
        // Before the links go: the program must not hand anything to this overlay's ports.
        if let Err(e) = self.fast.forget_vni(vni).await {
            tracing::warn!(error = %e, vni, "overlay fast path: cannot forget an overlay");
        }
        for name in [names::vxlan_name(vni), names::bridge_name(vni)] {
            if let Some(l) = link_by_name(&self.home, &name).await? {
                del_link(&self.home, &name, l.header.index).await?;
            }
        }
        Ok(())
    }

    async fn ensure_gateway(&self, spec: &GatewaySpec) -> Result<(), NetError> {
        if spec.subnet.prefix() > 30 {
            return Err(NetError::Invalid(format!(
                "gateway subnet {} is too small",
                spec.subnet
            )));
        }
        let subnet =
            Ipv4Network::new(spec.subnet.network(), spec.subnet.prefix()).expect("valid prefix");
        let mtu = match spec.mtu {
            Some(m) => m,
            None => self.underlay_mtu().await?,
        };
        // A fixed address: a bridge without one takes the lowest of its ports', so a task
        // leaving could change it under the other tasks, whose cached gateway entry would
        // then point nowhere until it failed (seconds without egress).
        let gw_ip = names::gateway_address(subnet);
        let mac = names::mac_for_ip(gw_ip);
        let idx = match link_by_name(&self.home, GW_BRIDGE).await? {
            Some(l) => {
                // Only when it differs: setting it flushes the node's neighbour entries.
                if link_mac(&l) != Some(mac) {
                    set_link(
                        &self.home,
                        GW_BRIDGE,
                        LinkUnspec::new_with_index(l.header.index)
                            .address(mac.to_vec())
                            .build(),
                    )
                    .await?;
                }
                l.header.index
            }
            None => {
                add_link_tolerant(
                    &self.home,
                    GW_BRIDGE,
                    LinkBridge::new(GW_BRIDGE)
                        .mtu(mtu)
                        .address(mac.to_vec())
                        .build(),
                )
                .await?;
                link_by_name(&self.home, GW_BRIDGE)
                    .await?
                    .ok_or_else(|| {
                        NetError::Invalid(format!("{GW_BRIDGE} vanished after creation"))
                    })?
                    .header
                    .index
            }
        };
        let gw = Ipv4Network::new(gw_ip, subnet.prefix()).expect("valid prefix");
        add_address(&self.home, idx, gw, GW_BRIDGE).await?;
        // A changed subnet: drop the bridge's other addresses. (Adding first is safe here,
        // unlike in `ensure_overlay`: the gateway's address is its subnet's first host, so a
        // new one is never a secondary of the old, which only an address of the same
        // subnet and prefix would be.)
        for (addr, msg) in self.link_addresses(idx).await? {
            if addr != gw {
                ignore_missing(self.home.address().del(msg).execute().await)
                    .map_err(nl("delete address", format!("{addr} on {GW_BRIDGE}")))?;
            }
        }
        set_link(
            &self.home,
            GW_BRIDGE,
            LinkUnspec::new_with_index(idx).up().build(),
        )
        .await?;
        netns::write_sysctl(self.home_ns(), "net.ipv4.ip_forward", "1").await?;
        nft::apply(self.home_ns(), &egress::egress_ruleset(subnet)).await?;
        Ok(())
    }

    async fn remove_gateway(&self) -> Result<(), NetError> {
        self.fast.remove().await;
        nft::apply(self.home_ns(), &egress::TABLE.delete_document()).await?;
        nft::apply(self.home_ns(), &nodefw::delete_node_policy()).await?;
        if let Some(l) = link_by_name(&self.home, GW_BRIDGE).await? {
            del_link(&self.home, GW_BRIDGE, l.header.index).await?;
        }
        Ok(())
    }

    async fn program_node_policy(&self, policy: &NodePolicy) -> Result<(), NetError> {
        nft::apply(self.home_ns(), &nodefw::node_policy_ruleset(policy)).await?;
        // A shortcut only: without it the overlays work as before, so a failure is logged.
        if let Err(e) = self.ensure_fast_path(&policy.vxlan_peers).await {
            tracing::warn!(error = %e, "overlay fast path not loaded; the kernel's path carries everything");
        }
        Ok(())
    }

    async fn attach_task(&self, spec: &TaskNetSpec) -> Result<TaskNetInfo, NetError> {
        self.attach(spec).await
    }

    async fn detach_task(&self, task: &str) -> Result<(), NetError> {
        self.detach(task).await
    }

    async fn list_peer_entries(&self, vni: u32) -> Result<PeerEntries, NetError> {
        let vx = self.vxlan_index(vni).await?;
        let mut out = PeerEntries::default();
        for m in self.home_neighbours(AddressFamily::Bridge).await? {
            if m.header.ifindex != vx || !m.header.flags.contains(NeighbourFlags::Own) {
                continue;
            }
            if let (Some(mac), Some(IpAddr::V4(node))) = (neigh_mac(&m), neigh_dst(&m)) {
                let unicast = mac[0] & 1 == 0 && mac != [0; 6];
                if unicast {
                    out.fdb.insert(FdbEntry { mac, node });
                }
            }
        }
        for m in self.home_neighbours(AddressFamily::Inet).await? {
            if m.header.ifindex != vx {
                continue;
            }
            if let (Some(mac), Some(IpAddr::V4(ip))) = (neigh_mac(&m), neigh_dst(&m)) {
                out.neigh.insert(NeighEntry { ip, mac });
            }
        }
        Ok(out)
    }

    async fn apply_peer_op(&self, vni: u32, op: &PeerOp) -> Result<(), NetError> {
        let vx = self.vxlan_index(vni).await?;
        let n = self.home.neighbours();
        match *op {
            PeerOp::AddFdb(e) => n
                .add_bridge(vx, &e.mac)
                .flags(NeighbourFlags::Own)
                .destination(IpAddr::V4(e.node))
                .replace()
                .execute()
                .await
                .map_err(nl("add fdb", fdb_desc(vni, &e))),
            PeerOp::AddNeigh(e) => n
                .add(vx, IpAddr::V4(e.ip))
                .link_layer_address(&e.mac)
                .replace()
                .execute()
                .await
                .map_err(nl(
                    "add neighbour",
                    format!("{} on {}", e.ip, names::vxlan_name(vni)),
                )),
            PeerOp::DelFdb(e) => {
                let mut m = NeighbourMessage::default();
                m.header.family = AddressFamily::Bridge;
                m.header.ifindex = vx;
                m.header.flags = NeighbourFlags::Own;
                m.header.state = NeighbourState::Permanent;
                m.attributes
                    .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
                m.attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                        e.node,
                    )));
                ignore_missing(n.del(m).execute().await)
                    .map_err(nl("delete fdb", fdb_desc(vni, &e)))
            }
            PeerOp::DelNeigh(e) => {
                let mut m = NeighbourMessage::default();
                m.header.family = AddressFamily::Inet;
                m.header.ifindex = vx;
                m.attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                        e.ip,
                    )));
                ignore_missing(n.del(m).execute().await).map_err(nl(
                    "delete neighbour",
                    format!("{} on {}", e.ip, names::vxlan_name(vni)),
                ))
            }
        }
    }

    async fn observe(&self) -> Result<Observed, NetError> {
        let mut out = Observed::default();
        for l in self.home_links().await? {
            let Some(name) = link_name(&l) else { continue };
            if name == GW_BRIDGE {
                out.gateway = true;
            } else if let Some((kind, vni)) = names::parse_overlay_link(&name) {
                let o = out
                    .overlays
                    .entry(vni)
                    .or_insert_with(ObservedOverlay::default);
                match kind {
                    OverlayLink::Bridge => o.bridge = true,
                    OverlayLink::Vxlan => o.vxlan = true,
                }
            }
        }
        let (ports, stray) = self.ports().await?;
        for (l, ns, kind) in ports {
            if let Some(task) = ns.strip_prefix(&self.config.prefix) {
                out.task_ports
                    .entry(task.to_string())
                    .or_default()
                    .push(ObservedPort {
                        link: link_name(&l).unwrap_or_default(),
                        kind,
                    });
            }
        }
        out.stray_links = stray;
        for name in netns::list(&self.config.netns_dir, &self.config.prefix)? {
            out.task_netns
                .insert(name[self.config.prefix.len()..].to_string());
        }
        Ok(out)
    }

    async fn remove_stray_link(&self, link: &str) -> Result<(), NetError> {
        if !(link.starts_with("she") || link.starts_with("shg")) || link.len() != 14 {
            return Err(NetError::Invalid(format!(
                "{link} is not a task port of ours"
            )));
        }
        if let Some(l) = link_by_name(&self.home, link).await? {
            del_link(&self.home, link, l.header.index).await?;
        }
        Ok(())
    }
}
