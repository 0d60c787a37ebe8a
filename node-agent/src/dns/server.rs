//! The DNS server of one task namespace: UDP and TCP sockets bound to 127.0.0.11:53 *inside*
//! the namespace (on a short-lived thread that `setns`es there, then handed to tokio), served
//! from the agent's own process with our [`RequestHandler`]: hickory-server's [`Server`]
//! runs it for TCP; for UDP one socket is read by our own threads (one per CPU by default,
//! `super::udp`), which answer plain A questions for our names from
//! prepared answers and hand everything else to the same handler.
//!
//! Why a `RequestHandler` and not an `Authority`/`Catalog`: our names are not a zone (single
//! labels, `tasks.*`, task names, reverse names of overlay addresses), every namespace sees a
//! different union of networks, dnsrr answers are reshuffled per response, and the decision
//! "ours → answer or NXDOMAIN at once / not ours → forward or REFUSED" is one function
//! ([`super::records::answer`]) rather than a catalog lookup plus a fallback zone. A handler
//! gets exactly that with no zone bookkeeping.
//!
//! Forwarding happens from the agent's namespace (the sockets for upstream queries are made
//! on tokio workers, which stay in the agent's namespace), so the node's resolvers from its
//! `/etc/resolv.conf` are reachable even when they are on loopback (systemd-resolved) and the
//! task has no route to them. A task that must not reach outside DNS (an `internal` network)
//! gets a config with no upstreams: REFUSED at once. The client's query bytes are forwarded
//! unchanged over the client's transport (UDP, or TCP after a truncated answer) with one
//! overall deadline shared by the upstreams in order; the reply is relayed, SERVFAIL when no
//! upstream answered in time. UDP queries go out through the agent's shared socket pool
//! ([`super::forward::Forwarder`]), not a socket each; and one namespace has at most
//! [`DnsServerConfig::max_forwarded_in_flight`] forwarded queries in flight (64 by default):
//! past that, SERVFAIL at once, so one task cannot tie up the agent's sockets or memory.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hickory_server::Server;

use super::config::DnsServerConfig;
use super::error::DnsError;
use super::forward::Forwarder;
use super::handler::Handler;
use super::store::View;
use super::udp::UdpWorkers;
use crate::net::netns::run_in;
use crate::net::NetError;

/// Binds UDP and TCP on `addr` inside the
/// namespace at `netns` (our own when `None`) on a thread of [`run_in`]; the sockets keep
/// that namespace after the thread is gone. The bind errors travel back in `run_in`'s
/// result, so a bind that fails says which socket and why.
async fn bind_in_netns(
    netns: Option<&Path>,
    addr: SocketAddr,
) -> Result<(std::net::UdpSocket, std::net::TcpListener), DnsError> {
    let path = netns.map(Path::to_owned).unwrap_or_default();
    let label = path.clone();
    let bind = move || {
        let bind_err = |what, e: io::Error| {
            let hint = if e.kind() == io::ErrorKind::AddrNotAvailable {
                " (is loopback up in the namespace?)"
            } else {
                ""
            };
            DnsError::Bind {
                addr,
                netns: label.clone(),
                what,
                source: e,
                hint,
            }
        };
        let udp = super::udp::bind(addr).map_err(|e| bind_err("udp", e))?;
        let tcp = std::net::TcpListener::bind(addr).map_err(|e| bind_err("tcp", e))?;
        tcp.set_nonblocking(true).map_err(|e| bind_err("tcp", e))?;
        Ok((udp, tcp))
    };
    run_in(netns, bind).await.map_err(|e| match e {
        NetError::Io { op, path, source } => DnsError::Io {
            what: op,
            path,
            source,
        },
        NetError::Netns { op, path, source } => DnsError::Io {
            what: op,
            path,
            source: source.into(),
        },
        other => DnsError::Io {
            what: "enter network namespace",
            path,
            source: io::Error::other(other.to_string()),
        },
    })?
}

/// A running DNS server for one task namespace. Dropping it stops serving at once (its tasks
/// are aborted and the sockets closed); [`DnsServer::shutdown`] stops gracefully.
pub struct DnsServer {
    server: Server<Handler>,
    udp_workers: UdpWorkers,
    netns: Option<PathBuf>,
    udp: SocketAddr,
    tcp: SocketAddr,
    networks: Vec<String>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("netns", &self.netns)
            .field("udp", &self.udp)
            .field("networks", &self.networks)
            .finish()
    }
}

impl DnsServer {
    /// Bind `config.listen` (UDP and TCP) inside the namespace at `netns` (the agent's own
    /// when `None`, for tests) and serve `view` from it. Must be called on a tokio runtime,
    /// which then runs the server.
    pub async fn start(
        netns: Option<&Path>,
        view: View,
        config: Arc<DnsServerConfig>,
    ) -> Result<Self, DnsError> {
        Self::start_shared(netns, view, config, Arc::new(Forwarder::new())).await
    }

    /// As [`DnsServer::start`], forwarding through `forwarder` (shared by the agent's
    /// servers).
    pub async fn start_shared(
        netns: Option<&Path>,
        view: View,
        config: Arc<DnsServerConfig>,
        forwarder: Arc<Forwarder>,
    ) -> Result<Self, DnsError> {
        let (udp, tcp) = bind_in_netns(netns, config.listen).await?;
        let io = |e: io::Error| DnsError::Io {
            what: "register socket",
            path: netns.map(Path::to_owned).unwrap_or_default(),
            source: e,
        };
        let udp_addr = udp.local_addr().map_err(io)?;
        let tcp_addr = tcp.local_addr().map_err(io)?;
        let tcp = tokio::net::TcpListener::from_std(tcp).map_err(io)?;
        let networks = view.networks().to_vec();
        let tcp_timeout = config.tcp_idle_timeout;
        let readers = config.udp_workers;
        let handler = Handler::new(view, config, forwarder);
        let udp_workers =
            UdpWorkers::spawn(udp, readers, Arc::new(handler.clone())).map_err(|e| {
                DnsError::Io {
                    what: "start udp receive threads",
                    path: netns.map(Path::to_owned).unwrap_or_default(),
                    source: e,
                }
            })?;
        let mut server = Server::new(handler);
        server.register_listener(tcp, tcp_timeout, 32);
        Ok(DnsServer {
            server,
            udp_workers,
            netns: netns.map(Path::to_owned),
            udp: udp_addr,
            tcp: tcp_addr,
            networks,
        })
    }

    /// The bound UDP address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
    }

    /// The bound TCP address.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp
    }

    /// The namespace served.
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    /// The networks whose names this server answers, in lookup order.
    pub fn networks(&self) -> &[String] {
        &self.networks
    }

    /// Stop accepting, finish in-flight requests, close the sockets.
    pub async fn shutdown(mut self) {
        self.udp_workers.shutdown().await;
        if let Err(e) = self.server.shutdown_gracefully().await {
            tracing::debug!(error = %e, "dns: server ended with an error");
        }
    }
}
