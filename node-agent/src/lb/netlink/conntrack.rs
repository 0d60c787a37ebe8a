//! Owns forgetting the connections a VIP table sent to a backend it no longer has, over
//! ctnetlink (conntrack's netlink protocol) in the calling thread's namespace.
//!
//! Why: the table decides a connection's backend on its first packet, and conntrack keeps
//! that decision for the connection's 5-tuple. A client whose SYN went to a backend that
//! died leaves an entry in `SYN_SENT` for 120 s (`nf_conntrack_tcp_timeout_syn_sent`). The
//! kernel hands out source ports to one destination in sequence, so a client that keeps
//! connecting to the VIP comes back to the same port within a minute or two; its new SYN
//! then matches the old entry and goes to the dead backend again, even though the table
//! no longer has it (shoal-chaos saw one VIP request in a few hundred time out after
//! recovery this way). UDP has the same problem with any entry, as Kubernetes' kube-proxy
//! knows (it deletes UDP entries of removed endpoints).
//!
//! What is deleted: entries that were NATed (their reply comes from another address than
//! the client sent to) to a (VIP, backend) pair the table no longer has, when they are UDP
//! or TCP still in `SYN_SENT`. Established TCP connections are left alone: a backend that
//! leaves the table during a rolling update drains its open connections, and deleting their
//! entries would reset them.
//!
//! Invariants: a dump is read whole before anything is deleted; an entry that is gone by
//! the time it is deleted (it expired, the kernel removed it) is not an error.

use std::net::Ipv4Addr;

use super::{find, open, request_to, Attrs, NetlinkError, NLA_F_NESTED, NLM_F_DUMP};

// linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h, nf_conntrack_tcp.h.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_PROTOINFO: u16 = 4;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const TCP_CONNTRACK_SYN_SENT: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// One conntrack entry, as much of it as deciding needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where the client sent it (the VIP, for a NATed connection).
    pub to: Ipv4Addr,
    /// Where the answer comes from (the backend, for a NATed connection).
    pub from: Ipv4Addr,
    /// `IPPROTO_*`.
    pub protocol: u8,
    /// The TCP state (`TCP_CONNTRACK_*`), for TCP.
    pub tcp_state: Option<u8>,
    /// The original tuple's attribute payload, sent back as is to delete the entry.
    tuple: Vec<u8>,
}

impl Entry {
    /// Whether a client reusing this entry's ports would be sent to a backend that is not
    /// in the table any more: it was NATed to a pair for which `kept(vip, backend)` is
    /// false, and it is UDP or a TCP connection that never got an answer.
    pub fn is_stale(&self, kept: impl Fn(Ipv4Addr, Ipv4Addr) -> bool) -> bool {
        let unanswered = match self.protocol {
            IPPROTO_UDP => true,
            IPPROTO_TCP => self.tcp_state == Some(TCP_CONNTRACK_SYN_SENT),
            _ => false,
        };
        unanswered && self.to != self.from && !kept(self.to, self.from)
    }
}

/// An entry from the attributes of one answer to a conntrack dump; `None` when it is not
/// IPv4 or lacks a tuple.
pub fn parse_entry(attrs: &[u8]) -> Option<Entry> {
    let orig = find(attrs, CTA_TUPLE_ORIG)?;
    let reply = find(attrs, CTA_TUPLE_REPLY)?;
    let v4 = |tuple: &[u8], kind: u16| -> Option<Ipv4Addr> {
        let ip = find(find(tuple, CTA_TUPLE_IP)?, kind)?;
        <[u8; 4]>::try_from(ip).ok().map(Ipv4Addr::from)
    };
    let protocol = *find(find(orig, CTA_TUPLE_PROTO)?, CTA_PROTO_NUM)?.first()?;
    let tcp_state = find(attrs, CTA_PROTOINFO)
        .and_then(|p| find(p, CTA_PROTOINFO_TCP))
        .and_then(|t| find(t, CTA_PROTOINFO_TCP_STATE))
        .and_then(|s| s.first().copied());
    Some(Entry {
        to: v4(orig, CTA_IP_V4_DST)?,
        from: v4(reply, CTA_IP_V4_SRC)?,
        protocol,
        tcp_state,
        tuple: orig.to_vec(),
    })
}

/// The attributes of the request that deletes `entry`: its original tuple.
pub fn delete_attrs(entry: &Entry) -> Vec<u8> {
    let mut a = Attrs::default();
    a.bytes(CTA_TUPLE_ORIG | NLA_F_NESTED, &entry.tuple);
    a.0
}

/// Deletes the calling thread's namespace's stale entries ([`Entry::is_stale`] with
/// `kept`); how many it deleted. Blocking.
pub fn forget_stale(kept: impl Fn(Ipv4Addr, Ipv4Addr) -> bool) -> Result<usize, NetlinkError> {
    let socket = open()?;
    let mut stale = Vec::new();
    request_to(
        &socket,
        NFNL_SUBSYS_CTNETLINK,
        IPCTNL_MSG_CT_GET,
        NLM_F_DUMP,
        &[],
        "list connections",
        |attrs| {
            if let Some(e) = parse_entry(attrs).filter(|e| e.is_stale(&kept)) {
                stale.push(e);
            }
            Ok(())
        },
    )?;
    let mut deleted = 0;
    for e in &stale {
        match request_to(
            &socket,
            NFNL_SUBSYS_CTNETLINK,
            IPCTNL_MSG_CT_DELETE,
            0,
            &delete_attrs(e),
            "delete a connection",
            |_| Ok(()),
        ) {
            Ok(()) => deleted += 1,
            Err(NetlinkError::Refused { errno, .. }) if errno == nix::libc::ENOENT => {}
            Err(err) => return Err(err),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attribute types in `b`.
    fn kinds(b: &[u8]) -> Vec<u16> {
        super::super::iter(b).map(|(k, _)| k).collect()
    }

    /// A dump answer's attributes, laid out as the kernel sends them.
    fn answer(to: [u8; 4], from: [u8; 4], protocol: u8, tcp_state: Option<u8>) -> Vec<u8> {
        let client = [10, 0, 0, 2];
        let tuple = |a: &mut Attrs, src: [u8; 4], dst: [u8; 4]| {
            a.nest(CTA_TUPLE_IP, |a| {
                a.bytes(CTA_IP_V4_SRC, &src);
                a.bytes(CTA_IP_V4_DST, &dst);
            });
            a.nest(CTA_TUPLE_PROTO, |a| {
                a.bytes(CTA_PROTO_NUM, &[protocol]);
                a.bytes(2, &40000u16.to_be_bytes());
                a.bytes(3, &80u16.to_be_bytes());
            });
        };
        let mut a = Attrs::default();
        a.nest(CTA_TUPLE_ORIG, |a| tuple(a, client, to));
        a.nest(CTA_TUPLE_REPLY, |a| tuple(a, from, client));
        a.u32(3, 0x188); // CTA_STATUS
        if let Some(state) = tcp_state {
            a.nest(CTA_PROTOINFO, |a| {
                a.nest(CTA_PROTOINFO_TCP, |a| {
                    a.bytes(CTA_PROTOINFO_TCP_STATE, &[state])
                })
            });
        }
        a.0
    }

    const VIP: [u8; 4] = [10, 0, 1, 100];
    const GONE: [u8; 4] = [10, 0, 1, 5];
    const KEPT: [u8; 4] = [10, 0, 1, 6];

    fn kept(vip: Ipv4Addr, backend: Ipv4Addr) -> bool {
        vip == Ipv4Addr::from(VIP) && backend == Ipv4Addr::from(KEPT)
    }

    #[test]
    fn an_entry_should_be_read_from_a_dump_answer() {
        let e = parse_entry(&answer(VIP, GONE, IPPROTO_TCP, Some(1))).unwrap();
        assert_eq!(e.to, Ipv4Addr::from(VIP));
        assert_eq!(e.from, Ipv4Addr::from(GONE));
        assert_eq!((e.protocol, e.tcp_state), (IPPROTO_TCP, Some(1)));
        assert_eq!(kinds(&e.tuple), [CTA_TUPLE_IP, CTA_TUPLE_PROTO]);
        assert_eq!(parse_entry(&[]), None);
    }

    #[test]
    fn only_unanswered_connections_to_a_dropped_backend_should_be_stale() {
        let stale = |to, from, protocol, state| {
            parse_entry(&answer(to, from, protocol, state))
                .unwrap()
                .is_stale(kept)
        };
        let syn_sent = Some(TCP_CONNTRACK_SYN_SENT);
        let established = Some(3);
        assert!(stale(VIP, GONE, IPPROTO_TCP, syn_sent));
        assert!(stale(VIP, GONE, IPPROTO_UDP, None));
        // A backend the table still has, an established connection (it drains), a
        // connection that was not NATed: all kept.
        assert!(!stale(VIP, KEPT, IPPROTO_TCP, syn_sent));
        assert!(!stale(VIP, GONE, IPPROTO_TCP, established));
        assert!(!stale(GONE, GONE, IPPROTO_TCP, syn_sent));
        assert!(!stale(GONE, GONE, IPPROTO_UDP, None));
        // Another VIP that still has the backend does not keep this VIP's pair.
        assert!(stale([10, 0, 1, 101], KEPT, IPPROTO_UDP, None));
    }

    #[test]
    fn a_delete_should_name_the_original_tuple_as_the_dump_gave_it() {
        let e = parse_entry(&answer(VIP, GONE, IPPROTO_UDP, None)).unwrap();
        let attrs = delete_attrs(&e);
        assert_eq!(kinds(&attrs), [CTA_TUPLE_ORIG]);
        assert_eq!(find(&attrs, CTA_TUPLE_ORIG), Some(&e.tuple[..]));
        let raw_kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        assert_eq!(raw_kind, CTA_TUPLE_ORIG | NLA_F_NESTED);
    }
}
