//! Forwarding over UDP through a small shared pool of sockets, instead of one socket per
//! forwarded query: each pool socket has one reader that hands replies to the queries
//! waiting on them, matched by upstream address and query id. The id a query goes out with
//! is chosen here (random, unique among the socket's queries in flight) and the client's
//! id is put back on the reply, so clients that reuse ids (every namespace may) never
//! collide, and a spoofed reply must guess the id as well as the port.
//!
//! Invariants: at most [`POOL_SOCKETS`] sockets per address family for the whole agent;
//! at most [`MAX_IN_FLIGHT_PER_SOCKET`] queries waiting on one socket (then the query
//! fails at once); a query that gives up (its deadline) leaves nothing behind. The
//! per-namespace limit of queries in flight is the server's ([`super::server`]).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::sync::{oneshot, OnceCell};
use tokio::task::JoinHandle;

/// Sockets per address family.
pub const POOL_SOCKETS: usize = 4;

/// Queries waiting on one socket at most.
pub const MAX_IN_FLIGHT_PER_SOCKET: usize = 4096;

type Waiters = Mutex<HashMap<u16, (SocketAddr, oneshot::Sender<Vec<u8>>)>>;

struct PoolSocket {
    sock: Arc<UdpSocket>,
    waiting: Arc<Waiters>,
    reader: JoinHandle<()>,
}

impl Drop for PoolSocket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The shared UDP sockets of one agent's forwarded queries.
#[derive(Default)]
pub struct Forwarder {
    v4: [OnceCell<PoolSocket>; POOL_SOCKETS],
    v6: [OnceCell<PoolSocket>; POOL_SOCKETS],
    next: AtomicUsize,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("sockets", &self.sockets_open())
            .finish()
    }
}

/// Removes a query's entry when it is answered or abandoned.
struct Entry<'a> {
    waiting: &'a Waiters,
    id: u16,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Forwarder {
    /// A pool with no socket open yet (they open on first use).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sockets open now.
    pub fn sockets_open(&self) -> usize {
        self.v4
            .iter()
            .chain(&self.v6)
            .filter(|c| c.initialized())
            .count()
    }

    /// Queries waiting for a reply now.
    pub fn in_flight(&self) -> usize {
        self.v4
            .iter()
            .chain(&self.v6)
            .filter_map(|c| c.get())
            .map(|s| s.waiting.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    async fn socket(&self, upstream: SocketAddr) -> io::Result<&PoolSocket> {
        let cells = if upstream.is_ipv4() {
            &self.v4
        } else {
            &self.v6
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % POOL_SOCKETS;
        cells[i]
            .get_or_try_init(|| async {
                let bind: SocketAddr = if upstream.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let sock = Arc::new(UdpSocket::bind(bind).await?);
                let waiting: Arc<Waiters> = Arc::default();
                let reader = tokio::spawn(read_replies(sock.clone(), waiting.clone()));
                Ok(PoolSocket {
                    sock,
                    waiting,
                    reader,
                })
            })
            .await
    }

    /// Sends `query` to `upstream` and waits for its reply (the caller bounds the wait);
    /// the reply carries the query's own id.
    pub async fn query(&self, upstream: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
        if query.len() < 12 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "query too short",
            ));
        }
        let client_id = [query[0], query[1]];
        let pool = self.socket(upstream).await?;
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut waiting = pool.waiting.lock().unwrap_or_else(|e| e.into_inner());
            if waiting.len() >= MAX_IN_FLIGHT_PER_SOCKET {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "too many forwarded queries in flight",
                ));
            }
            let id = loop {
                let id: u16 = rand::random();
                if !waiting.contains_key(&id) {
                    break id;
                }
            };
            waiting.insert(id, (upstream, tx));
            id
        };
        let _entry = Entry {
            waiting: &pool.waiting,
            id,
        };
        let mut out = query.to_vec();
        out[..2].copy_from_slice(&id.to_be_bytes());
        pool.sock.send_to(&out, upstream).await?;
        let mut reply = rx
            .await
            .map_err(|_| io::Error::other("the forwarding socket closed"))?;
        reply[..2].copy_from_slice(&client_id);
        Ok(reply)
    }
}

/// The one reader of a pool socket: hands each reply to the query waiting for its id, if it
/// came from that query's upstream.
async fn read_replies(sock: Arc<UdpSocket>, waiting: Arc<Waiters>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "dns: forwarding socket read failed");
                continue;
            }
        };
        if n < 12 {
            continue;
        }
        let id = u16::from_be_bytes([buf[0], buf[1]]);
        let mut w = waiting.lock().unwrap_or_else(|e| e.into_inner());
        if w.get(&id).is_some_and(|(upstream, _)| *upstream == from) {
            if let Some((_, tx)) = w.remove(&id) {
                let _ = tx.send(buf[..n].to_vec());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An upstream that answers every query with its own bytes, after `delay`, echoing it.
    async fn echo_upstream(delay: Duration) -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = sock.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let s2 = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            loop {
                let (n, from) = sock.recv_from(&mut buf).await.unwrap();
                s2.lock().unwrap().push(from);
                let reply = buf[..n].to_vec();
                let sock = sock.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = sock.send_to(&reply, from).await;
                });
            }
        });
        (addr, seen)
    }

    fn query(id: u16, tag: u8) -> Vec<u8> {
        let mut q = vec![0u8; 12];
        q[..2].copy_from_slice(&id.to_be_bytes());
        q.push(tag);
        q
    }

    #[tokio::test]
    async fn many_queries_share_a_few_sockets_and_get_their_own_replies() {
        let (up, seen) = echo_upstream(Duration::from_millis(20)).await;
        let fwd = Arc::new(Forwarder::new());
        let mut all = vec![];
        // 500 concurrent queries, all with the same client id.
        for i in 0..500u32 {
            let fwd = fwd.clone();
            all.push(tokio::spawn(async move {
                let q = query(7, (i % 251) as u8);
                // UDP: a burst may overflow a receive buffer; ask again as a resolver would.
                for _ in 0..10 {
                    if let Ok(r) =
                        tokio::time::timeout(Duration::from_millis(500), fwd.query(up, &q)).await
                    {
                        assert_eq!(r.unwrap(), q, "the reply to this query, with its id");
                        return;
                    }
                }
                panic!("no reply in 10 tries");
            }));
        }
        for t in all {
            t.await.unwrap();
        }
        let ports: std::collections::HashSet<_> = seen.lock().unwrap().iter().copied().collect();
        assert!(ports.len() <= POOL_SOCKETS, "{} source ports", ports.len());
        assert_eq!(fwd.sockets_open(), ports.len());
        assert_eq!(fwd.in_flight(), 0);
    }

    #[tokio::test]
    async fn abandoned_queries_leave_nothing_behind() {
        let (up, _) = echo_upstream(Duration::from_secs(3600)).await;
        let fwd = Forwarder::new();
        let r = tokio::time::timeout(Duration::from_millis(50), fwd.query(up, &query(1, 0))).await;
        assert!(r.is_err());
        assert_eq!(fwd.in_flight(), 0);
    }
}
