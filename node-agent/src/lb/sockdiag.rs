//! Owns aborting the TCP connections a namespace is still opening to addresses that left
//! its VIPs, over sock_diag (`SOCK_DESTROY`) in the calling thread's namespace.
//!
//! Why: a connection balanced at connect() ([`super::socket`]) has its backend in the
//! socket itself. When that backend dies before its VIP table drops it, the client's SYNs
//! go on to the dead address until the kernel gives up (about two minutes), whereas a
//! connection through the table is sent to a live backend at its next SYN once the table
//! has changed and conntrack forgot it (`lb::netlink::conntrack`). Aborting the socket
//! ends the wait at once: the client's connect() fails with `ECONNABORTED`, and it can try
//! again, now to a backend the VIP has. Only sockets in `SYN_SENT` are aborted: an
//! established connection to a backend that leaves (a rolling update's old task) drains.
//!
//! Invariants: a dump is read whole before anything is aborted; a socket gone by the time
//! it is aborted is not an error.

use std::net::Ipv4Addr;

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

// linux/sock_diag.h, linux/inet_diag.h, linux/netlink.h, netinet/tcp.h.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const AF_INET: u8 = 2;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN_SENT: u32 = 2;

/// `struct inet_diag_sockid`: ports, addresses, interface and the socket's cookie, as the
/// kernel gives them and wants them back.
pub type SockId = [u8; 48];

/// A `SOCK_DIAG_BY_FAMILY` or `SOCK_DESTROY` request for IPv4 TCP sockets in `states` (a
/// bit per `TCP_*` state) with `id` (zero for a dump).
pub fn request(kind: u16, flags: u16, seq: u32, states: u32, id: &SockId) -> Vec<u8> {
    let len: u32 = 16 + 8 + 48;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // struct inet_diag_req_v2
    m.extend_from_slice(&[AF_INET, IPPROTO_TCP, 0, 0]);
    m.extend_from_slice(&states.to_ne_bytes());
    m.extend_from_slice(id);
    m
}

/// The destination and id of the socket an answer to a dump describes (`struct
/// inet_diag_msg`: family, state, timer, retransmits, then the id).
pub fn parse_answer(payload: &[u8]) -> Option<(Ipv4Addr, SockId)> {
    if payload.len() < 52 || payload[0] != AF_INET {
        return None;
    }
    let id: SockId = payload[4..52].try_into().ok()?;
    let dst: [u8; 4] = id[20..24].try_into().ok()?;
    Some((Ipv4Addr::from(dst), id))
}

fn io(op: &str) -> impl FnOnce(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("sock_diag {op}: {e}"))
}

/// The messages in `buf`: (type, payload after the header).
fn messages(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        out.push((u16::from_ne_bytes([buf[4], buf[5]]), &buf[16..len]));
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

/// The errno of an `NLMSG_ERROR` payload (0: an acknowledgement).
fn errno(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .map(|b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// Aborts the calling thread's namespace's TCP sockets in `SYN_SENT` whose destination
/// `gone` names; how many it aborted. Blocking.
pub fn abort_connecting(gone: impl Fn(Ipv4Addr) -> bool) -> std::io::Result<usize> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(io("open"))?;
    socket.bind_auto().map_err(io("bind"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(io("connect"))?;
    let dump = request(
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        1 << TCP_SYN_SENT,
        &[0; 48],
    );
    socket.send(&dump, 0).map_err(io("send"))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut doomed = Vec::new();
    'dump: loop {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("receive")(e)),
        };
        for (kind, payload) in messages(&buf[..n]) {
            match kind {
                NLMSG_DONE => break 'dump,
                NLMSG_ERROR if errno(payload) == 0 => break 'dump,
                NLMSG_ERROR => {
                    return Err(std::io::Error::from_raw_os_error(errno(payload)));
                }
                _ => doomed.extend(
                    parse_answer(payload)
                        .filter(|(dst, _)| gone(*dst))
                        .map(|(_, id)| id),
                ),
            }
        }
    }
    let mut aborted = 0;
    for (seq, id) in (2..).zip(&doomed) {
        let msg = request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, seq, u32::MAX, id);
        socket.send(&msg, 0).map_err(io("send"))?;
        let n = loop {
            match socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io("receive")(e)),
            }
        };
        let ack = messages(&buf[..n])
            .into_iter()
            .find(|(kind, _)| *kind == NLMSG_ERROR);
        match ack.map(|(_, p)| errno(p)) {
            Some(0) => aborted += 1,
            // Gone meanwhile (it connected, failed or closed).
            Some(e) if e == nix::libc::ENOENT => {}
            Some(e) => return Err(std::io::Error::from_raw_os_error(e)),
            None => return Err(io("abort")(std::io::ErrorKind::UnexpectedEof.into())),
        }
    }
    Ok(aborted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_should_carry_the_header_and_inet_diag_req_v2() {
        let mut id = [0u8; 48];
        id[20..24].copy_from_slice(&[10, 0, 1, 5]);
        let m = request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 7, 1 << 2, &id);
        assert_eq!(m.len(), 72);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), SOCK_DESTROY);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(&m[16..20], &[AF_INET, IPPROTO_TCP, 0, 0]);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 4);
        assert_eq!(&m[24..], &id[..]);
    }

    #[test]
    fn an_answer_should_give_the_destination_and_the_id_to_send_back() {
        let mut msg = vec![AF_INET, 2, 0, 0];
        let mut id = [0u8; 48];
        id[0..2].copy_from_slice(&40000u16.to_be_bytes());
        id[2..4].copy_from_slice(&80u16.to_be_bytes());
        id[4..8].copy_from_slice(&[10, 0, 1, 3]);
        id[20..24].copy_from_slice(&[10, 0, 1, 5]);
        id[40..48].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        msg.extend_from_slice(&id);
        msg.extend_from_slice(&[0; 20]);
        assert_eq!(parse_answer(&msg), Some((Ipv4Addr::new(10, 0, 1, 5), id)));
        assert_eq!(parse_answer(&msg[..40]), None);
        msg[0] = 10; // AF_INET6
        assert_eq!(parse_answer(&msg), None);
    }
}
