//! Pure naming and derivation rules for everything `net` creates: link names (kernel limit
//! 15 bytes), the aliases that tie a task's host-side veth back to its task, deterministic
//! MACs, MTUs and gateway addresses. No I/O, so every rule is unit-tested.
//!
//! Invariants: a name is a function of (network VNI) or (task namespace, attachment) only,
//! so a restarted agent finds what it made before; every link name starts with `sh`.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// The per-node gateway (egress) bridge, like Docker's `docker_gwbridge`.
pub const GW_BRIDGE: &str = "shoal_gwbridge";
/// The gateway-bridge subnet: the cluster's `gwbridge` Network (Docker uses 172.18.0.0/16 too).
pub const GW_DEFAULT_SUBNET: &str = shoal_api_types::network::GATEWAY_BRIDGE_SUBNET;
/// UDP port of VXLAN (IANA).
pub const VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN adds to each frame over IPv4 (outer IP 20 + UDP 8 + VXLAN 8 + Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The nftables table (family `ip`) holding the egress masquerade, in the agent's netns.
pub const NFT_TABLE: &str = "shoal_gw";
/// Prefix of every alias we put on a task's host-side veth.
const ALIAS_PREFIX: &str = "shoal/";
/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = (1 << 24) - 1;

/// The bridge of the overlay with `vni` on this node (`shb-4097`).
pub fn bridge_name(vni: u32) -> String {
    format!("shb-{vni}")
}

/// The VXLAN device of the overlay with `vni` on this node (`shv-4097`).
pub fn vxlan_name(vni: u32) -> String {
    format!("shv-{vni}")
}

/// The VNI an overlay link name (`shb-N` or `shv-N`) belongs to, with which kind it is.
pub fn parse_overlay_link(name: &str) -> Option<(OverlayLink, u32)> {
    let (kind, rest) = if let Some(rest) = name.strip_prefix("shb-") {
        (OverlayLink::Bridge, rest)
    } else if let Some(rest) = name.strip_prefix("shv-") {
        (OverlayLink::Vxlan, rest)
    } else {
        return None;
    };
    if rest.is_empty() || rest.starts_with('0') || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let vni: u32 = rest.parse().ok()?;
    (vni <= VNI_MAX).then_some((kind, vni))
}

/// Which half of an overlay a link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayLink {
    /// The per-network bridge.
    Bridge,
    /// The VXLAN device enslaved to it.
    Vxlan,
}

/// What a task's host-side veth connects the task to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortKind {
    /// The overlay with this VNI.
    Overlay(u32),
    /// The gateway bridge; the task side holds this address.
    Gateway(Ipv4Addr),
}

/// The host-side veth of `netns`'s attachment to `kind` (`she…` for overlays, `shg…` for the
/// gateway bridge): a 44-bit FNV-1a hash, so the name stays under 15 bytes and is stable.
pub fn host_veth_name(netns: &str, kind: PortKind) -> String {
    let (tag, key) = match kind {
        PortKind::Overlay(vni) => ('e', format!("{netns}/{vni}")),
        PortKind::Gateway(_) => ('g', format!("{netns}/gw")),
    };
    format!("sh{tag}{:011x}", fnv1a64(key.as_bytes()) >> 20)
}

/// The alias written on a task's host-side veth: `shoal/<netns>/<vni>` or
/// `shoal/<netns>/gw/<ip>`. It lets `observe` map links back to tasks and remembers which
/// gateway address the task holds (the gateway IPAM is local and lives only in these aliases).
pub fn port_alias(netns: &str, kind: PortKind) -> String {
    match kind {
        PortKind::Overlay(vni) => format!("{ALIAS_PREFIX}{netns}/{vni}"),
        PortKind::Gateway(ip) => format!("{ALIAS_PREFIX}{netns}/gw/{ip}"),
    }
}

/// Inverse of [`port_alias`].
pub fn parse_port_alias(alias: &str) -> Option<(String, PortKind)> {
    let rest = alias.strip_prefix(ALIAS_PREFIX)?;
    let mut parts = rest.split('/');
    let netns = parts.next().filter(|s| !s.is_empty())?.to_string();
    let kind = match (parts.next()?, parts.next(), parts.next()) {
        ("gw", Some(ip), None) => PortKind::Gateway(ip.parse().ok()?),
        (vni, None, None) => PortKind::Overlay(vni.parse().ok()?),
        _ => return None,
    };
    Some((netns, kind))
}

/// The name of interface `index` inside a task netns (`eth0`, `eth1`, …).
pub fn task_ifname(index: usize) -> String {
    format!("eth{index}")
}

/// The netns of a task: the caller's prefix (`shoal-node1-`) and the task key.
pub fn task_netns_name(prefix: &str, task: &str) -> String {
    format!("{prefix}{task}")
}

/// Whether `name` is a usable netns / task key: a single path component of safe bytes.
pub fn valid_netns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The deterministic MAC of a task IP, `02:42:a.b.c.d` (same rule as
/// `shoal_api_types::task::mac_for_ip`, as bytes).
pub fn mac_for_ip(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Overlay MTU: the network's own, or the underlay's minus the VXLAN overhead.
pub fn overlay_mtu(network_mtu: Option<u32>, underlay_mtu: u32) -> u32 {
    network_mtu.unwrap_or(underlay_mtu.saturating_sub(VXLAN_OVERHEAD))
}

/// The gateway bridge's own address: the first host of the subnet.
pub fn gateway_address(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The lowest free task address in the gateway subnet, skipping the network address, the
/// bridge's own `.1` and the broadcast address.
pub fn next_gateway_ip(
    subnet: Ipv4Network,
    used: &std::collections::BTreeSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    if subnet.prefix() > 30 {
        return None;
    }
    let first = u32::from(subnet.network()) + 2;
    let last = u32::from(subnet.broadcast()) - 1;
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|ip| !used.contains(ip))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn overlay_names_fit_the_kernel_limit_and_round_trip() {
        for vni in [1, 4096, 4097, VNI_MAX] {
            for name in [bridge_name(vni), vxlan_name(vni)] {
                assert!(name.len() <= IFNAME_MAX, "{name}");
            }
            assert_eq!(
                parse_overlay_link(&bridge_name(vni)),
                Some((OverlayLink::Bridge, vni))
            );
            assert_eq!(
                parse_overlay_link(&vxlan_name(vni)),
                Some((OverlayLink::Vxlan, vni))
            );
        }
        assert_eq!(bridge_name(4097), "shb-4097");
        assert_eq!(vxlan_name(4097), "shv-4097");
    }

    #[test]
    fn foreign_link_names_are_not_overlays() {
        for name in [
            "eth0",
            "shb-",
            "shb-x1",
            "shv-016",
            "shb-16777216",
            "docker0",
            "shoal_gwbridge",
        ] {
            assert_eq!(parse_overlay_link(name), None, "{name}");
        }
    }

    #[test]
    fn host_veth_names_are_stable_distinct_and_short() {
        let a = host_veth_name("shoal-n1-t1", PortKind::Overlay(4097));
        assert_eq!(a, host_veth_name("shoal-n1-t1", PortKind::Overlay(4097)));
        assert_ne!(a, host_veth_name("shoal-n1-t1", PortKind::Overlay(4098)));
        assert_ne!(a, host_veth_name("shoal-n1-t2", PortKind::Overlay(4097)));
        let g = host_veth_name(
            "shoal-n1-t1",
            PortKind::Gateway(Ipv4Addr::new(172, 18, 0, 2)),
        );
        // The gateway port's name does not depend on the address it holds.
        assert_eq!(
            g,
            host_veth_name(
                "shoal-n1-t1",
                PortKind::Gateway(Ipv4Addr::new(172, 18, 0, 9))
            )
        );
        assert!(a.starts_with("she") && g.starts_with("shg"));
        assert_eq!(a.len(), 14);
        assert_eq!(g.len(), 14);
    }

    #[test]
    fn port_aliases_round_trip() {
        let gw = PortKind::Gateway(Ipv4Addr::new(172, 18, 0, 7));
        for kind in [PortKind::Overlay(4097), gw] {
            let alias = port_alias("shoal-n1-abc", kind);
            assert_eq!(
                parse_port_alias(&alias),
                Some(("shoal-n1-abc".to_string(), kind))
            );
        }
        assert_eq!(port_alias("ns", gw), "shoal/ns/gw/172.18.0.7");
        for bad in [
            "",
            "shoal/",
            "shoal//1",
            "shoal/ns/x",
            "shoal/ns/gw",
            "shoal/ns/gw/1.2.3.4/5",
            "other/ns/1",
        ] {
            assert_eq!(parse_port_alias(bad), None, "{bad}");
        }
    }

    #[test]
    fn macs_follow_the_api_rule() {
        let ip = Ipv4Addr::new(10, 0, 1, 5);
        assert_eq!(
            format_mac(&mac_for_ip(ip)),
            shoal_api_types::task::mac_for_ip(ip)
        );
    }

    #[test]
    fn overlay_mtu_defaults_to_underlay_minus_vxlan_overhead() {
        assert_eq!(overlay_mtu(None, 1500), 1450);
        assert_eq!(overlay_mtu(Some(1400), 1500), 1400);
        assert_eq!(overlay_mtu(None, 9000), 8950);
    }

    #[test]
    fn gateway_addresses_skip_network_bridge_and_broadcast() {
        let subnet: Ipv4Network = "172.18.0.0/16".parse().unwrap();
        assert_eq!(gateway_address(subnet), Ipv4Addr::new(172, 18, 0, 1));
        let mut used = BTreeSet::new();
        assert_eq!(
            next_gateway_ip(subnet, &used),
            Some(Ipv4Addr::new(172, 18, 0, 2))
        );
        used.insert(Ipv4Addr::new(172, 18, 0, 2));
        used.insert(Ipv4Addr::new(172, 18, 0, 4));
        assert_eq!(
            next_gateway_ip(subnet, &used),
            Some(Ipv4Addr::new(172, 18, 0, 3))
        );
        let tiny: Ipv4Network = "192.168.9.0/30".parse().unwrap();
        let mut used = BTreeSet::new();
        assert_eq!(
            next_gateway_ip(tiny, &used),
            Some(Ipv4Addr::new(192, 168, 9, 2))
        );
        used.insert(Ipv4Addr::new(192, 168, 9, 2));
        assert_eq!(next_gateway_ip(tiny, &used), None);
    }

    #[test]
    fn netns_names_are_single_safe_components() {
        assert!(valid_netns_name("shoal-node1-3f2a"));
        assert!(valid_netns_name(&task_netns_name("shoal-n1-", "api.1")));
        for bad in ["", ".", "..", "a/b", "a b", "x\0"] {
            assert!(!valid_netns_name(bad), "{bad:?}");
        }
    }
}
