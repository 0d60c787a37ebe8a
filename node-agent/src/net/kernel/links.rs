//! Owns the small netlink helpers [`super::Kernel`] builds on: finding, adding, setting and
//! deleting links, reading attributes off link and neighbour messages, and errno
//! classification (deleting what is already gone is not an error).

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use rtnetlink::Handle;

use crate::net::error::NetError;
use crate::net::names::{self};
use crate::net::types::FdbEntry;

pub(super) const ENOENT: i32 = 2;
pub(super) const ENODEV: i32 = 19;
pub(super) const EEXIST: i32 = 17;
pub(super) const EADDRNOTAVAIL: i32 = 99;

pub(super) fn nl(
    op: &'static str,
    object: impl ToString,
) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let object = object.to_string();
    move |source| NetError::Netlink { op, object, source }
}

pub(super) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

pub(super) fn ignore_missing(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(e) if matches!(errno(&e), Some(ENOENT | ENODEV | EADDRNOTAVAIL)) => Ok(()),
        other => other,
    }
}

pub(super) fn fdb_desc(vni: u32, e: &FdbEntry) -> String {
    format!(
        "{} dst {} on {}",
        names::format_mac(&e.mac),
        e.node,
        names::vxlan_name(vni)
    )
}

pub(super) async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, NetError> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(l) => Ok(l),
        Err(e) if matches!(errno(&e), Some(ENODEV | ENOENT)) => Ok(None),
        Err(e) => Err(nl("get link", name)(e)),
    }
}

pub(super) async fn link_by_index(h: &Handle, index: u32) -> Result<Option<LinkMessage>, NetError> {
    match h.link().get().match_index(index).execute().try_next().await {
        Ok(l) => Ok(l),
        Err(e) if matches!(errno(&e), Some(ENODEV | ENOENT)) => Ok(None),
        Err(e) => Err(nl("get link", index)(e)),
    }
}

pub(super) async fn set_link(h: &Handle, name: &str, msg: LinkMessage) -> Result<(), NetError> {
    h.link()
        .set(msg)
        .execute()
        .await
        .map_err(nl("set link", name))
}

pub(super) async fn del_link(h: &Handle, name: &str, index: u32) -> Result<(), NetError> {
    ignore_missing(h.link().del(index).execute().await).map_err(nl("delete link", name))
}

pub(super) async fn add_link_tolerant(
    h: &Handle,
    name: &str,
    msg: LinkMessage,
) -> Result<(), NetError> {
    match h.link().add(msg).execute().await {
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        r => r.map_err(nl("create link", name)),
    }
}

pub(super) async fn add_address(
    h: &Handle,
    index: u32,
    addr: Ipv4Network,
    name: &str,
) -> Result<(), NetError> {
    match h
        .address()
        .add(index, IpAddr::V4(addr.ip()), addr.prefix())
        .execute()
        .await
    {
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        r => r.map_err(nl("add address", format!("{addr} on {name}"))),
    }
}

/// Whether an existing VXLAN device has the settings `ensure_overlay` would give it.
pub(super) fn vxlan_matches(l: &LinkMessage, vni: u32, local: Ipv4Addr) -> bool {
    let Some(infos) = l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => Some(infos),
        _ => None,
    }) else {
        return false;
    };
    let Some(data) = infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(data)) => Some(data),
        _ => None,
    }) else {
        return false;
    };
    let has = |want: &InfoVxlan| data.iter().any(|d| d == want);
    has(&InfoVxlan::Id(vni))
        && has(&InfoVxlan::Local(local))
        && has(&InfoVxlan::Port(names::VXLAN_PORT))
        && has(&InfoVxlan::Learning(false))
        && has(&InfoVxlan::Proxy(true))
}

pub(super) fn link_name(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

pub(super) fn link_alias(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(n) => Some(n.clone()),
        _ => None,
    })
}

pub(super) fn link_mtu(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// A link's hardware address.
pub(super) fn link_mac(l: &LinkMessage) -> Option<[u8; 6]> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
        _ => None,
    })
}

pub(super) fn neigh_mac(m: &NeighbourMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
        _ => None,
    })
}

pub(super) fn neigh_dst(m: &NeighbourMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        // FDB (AF_BRIDGE) messages carry the remote's address without saying its family.
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice())
                .ok()
                .map(|o| IpAddr::V4(o.into())),
            16 => <[u8; 16]>::try_from(b.as_slice())
                .ok()
                .map(|o| IpAddr::V6(o.into())),
            _ => None,
        },
        _ => None,
    })
}
