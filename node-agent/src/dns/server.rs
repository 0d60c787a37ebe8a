//! The DNS server of one task namespace: UDP and TCP sockets bound to 127.0.0.11:53 *inside*
//! the namespace (on a short-lived thread that `setns`es there, then handed to tokio), served
//! from the agent's own process with our [`RequestHandler`]: hickory-server's [`Server`]
//! runs it for TCP; for UDP a group of `SO_REUSEPORT` sockets (one per CPU by default) is
//! read by our own loops (`super::udp`), which answer plain A questions for our names from
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
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::DnsError;
use super::forward::Forwarder;
use super::records::{Answer, QueryKind};
use super::store::View;
use super::udp::UdpWorkers;
use crate::net::netns::run_in;
use crate::net::NetError;

/// Where the embedded DNS answers inside a task namespace.
pub const DNS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)), 53);

/// TTL of our answers: 0, so a task leaving is seen by the next lookup.
pub const TTL: u32 = 0;

/// How the servers answer and forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsServerConfig {
    /// The address bound inside each namespace (127.0.0.11:53).
    pub listen: SocketAddr,
    /// The node's resolvers, tried in order; none means names that are not ours are REFUSED.
    pub upstreams: Vec<SocketAddr>,
    /// Overall time for a forwarded query, shared by all upstreams.
    pub forward_timeout: Duration,
    /// A TCP client that sends nothing for this long is disconnected.
    pub tcp_idle_timeout: Duration,
    /// Forwarded queries one namespace may have in flight; more are answered SERVFAIL at
    /// once.
    pub max_forwarded_in_flight: usize,
    /// UDP sockets (one `SO_REUSEPORT` group, a receive task each) per namespace; by default
    /// one per CPU, so one namespace's lookups can use every core.
    pub udp_workers: usize,
}

impl Default for DnsServerConfig {
    fn default() -> Self {
        DnsServerConfig {
            listen: DNS_ADDR,
            upstreams: Vec::new(),
            forward_timeout: Duration::from_secs(2),
            tcp_idle_timeout: Duration::from_secs(5),
            max_forwarded_in_flight: 64,
            udp_workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl DnsServerConfig {
    /// The default config with the upstreams of the node's resolv.conf at `path` (usually
    /// `/etc/resolv.conf`); a missing file means no upstreams.
    pub fn from_resolv_conf(path: &Path) -> Result<Self, DnsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(DnsError::Io {
                    what: "read resolv.conf",
                    path: path.to_owned(),
                    source: e,
                })
            }
        };
        Ok(DnsServerConfig {
            upstreams: parse_resolv_conf(&text),
            ..Default::default()
        })
    }
}

/// The `nameserver` addresses of a resolv.conf text, port 53, in order. 127.0.0.11 is left
/// out: inside a task that is us, and forwarding to ourselves would loop.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .map(|l| l.split(['#', ';']).next().unwrap_or_default())
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        // A scoped (link-local) address needs its interface, which we do not track: skip it.
        .filter(|a| !a.contains('%'))
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .filter(|ip| *ip != DNS_ADDR.ip())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Answers one namespace's questions from its [`View`] (the general path: every query over
/// TCP, and over UDP whatever the fast path leaves).
#[derive(Clone)]
pub(super) struct Handler {
    view: View,
    config: Arc<DnsServerConfig>,
    forwarder: Arc<Forwarder>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

fn failure(request: &Request, code: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = code;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        match self.respond(request, response_handle).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "dns: could not send a response");
                failure(request, ResponseCode::ServFail)
            }
        }
    }
}

impl Handler {
    /// The handler of one namespace, with its own cap on forwarded queries.
    pub(super) fn new(view: View, config: Arc<DnsServerConfig>, forwarder: Arc<Forwarder>) -> Self {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(
            config.max_forwarded_in_flight.max(1),
        ));
        Handler {
            view,
            config,
            forwarder,
            in_flight,
        }
    }

    /// The namespace's view (for the UDP fast path).
    pub(super) fn view(&self) -> &View {
        &self.view
    }

    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        mut handle: R,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e
        });
        let builder = || MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let error = |code: ResponseCode| {
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = code;
            m.recursion_available = true;
            m
        };
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            return handle
                .send_response(builder().build_no_records(error(ResponseCode::NotImp)))
                .await;
        }
        let queries = request.queries.queries();
        if queries.len() != 1 {
            return handle
                .send_response(builder().build_no_records(error(ResponseCode::FormErr)))
                .await;
        }
        let query = &queries[0];
        let kind = match query.query_type() {
            RecordType::A | RecordType::ANY => QueryKind::A,
            RecordType::PTR => QueryKind::Ptr,
            _ => QueryKind::Other,
        };
        let decision = if query.query_class() == DNSClass::IN {
            self.view.answer(&query.name().to_string(), kind)
        } else {
            Answer::Forward
        };
        let qname: Name = query.original().name().clone();
        let ours = |code: ResponseCode| {
            let mut m = error(code);
            m.authoritative = true;
            m
        };
        match decision {
            Answer::Addrs(addrs) => {
                let records: Vec<Record> = addrs
                    .into_iter()
                    .map(|ip| Record::from_rdata(qname.clone(), TTL, RData::A(A(ip))))
                    .collect();
                handle
                    .send_response(builder().build(
                        ours(ResponseCode::NoError),
                        records.iter(),
                        [],
                        [],
                        [],
                    ))
                    .await
            }
            Answer::Ptr(target) => {
                let records: Vec<Record> = Name::from_ascii(format!("{target}."))
                    .map(|n| vec![Record::from_rdata(qname.clone(), TTL, RData::PTR(PTR(n)))])
                    .unwrap_or_default();
                handle
                    .send_response(builder().build(
                        ours(ResponseCode::NoError),
                        records.iter(),
                        [],
                        [],
                        [],
                    ))
                    .await
            }
            Answer::NxDomain => {
                handle
                    .send_response(builder().build_no_records(ours(ResponseCode::NXDomain)))
                    .await
            }
            Answer::Forward if self.config.upstreams.is_empty() => {
                handle
                    .send_response(builder().build_no_records(error(ResponseCode::Refused)))
                    .await
            }
            Answer::Forward => match match self.in_flight.clone().try_acquire_owned() {
                Ok(_permit) => {
                    forward(
                        &self.config,
                        &self.forwarder,
                        request.as_slice(),
                        request.protocol() == Protocol::Tcp,
                    )
                    .await
                }
                Err(_) => {
                    tracing::debug!(
                        limit = self.config.max_forwarded_in_flight,
                        "dns: too many forwarded queries in flight in this namespace"
                    );
                    None
                }
            } {
                Some(reply) => {
                    let mut m = reply.metadata;
                    m.id = request.metadata.id;
                    m.recursion_available = true;
                    handle
                        .send_response(builder().build(
                            m,
                            reply.answers.iter(),
                            reply.authorities.iter(),
                            [],
                            reply.additionals.iter(),
                        ))
                        .await
                }
                None => {
                    handle
                        .send_response(builder().build_no_records(error(ResponseCode::ServFail)))
                        .await
                }
            },
        }
    }
}

/// Ask the upstreams in order within the config's overall deadline; the first parseable
/// reply with the query's id wins.
async fn forward(
    config: &DnsServerConfig,
    forwarder: &Forwarder,
    query: &[u8],
    tcp: bool,
) -> Option<Message> {
    let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
    let deadline = tokio::time::Instant::now() + config.forward_timeout;
    let n = config.upstreams.len() as u32;
    for (i, upstream) in config.upstreams.iter().enumerate() {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        let share = (deadline - now) / (n - i as u32);
        let attempt = async {
            if tcp {
                forward_tcp(*upstream, query).await
            } else {
                forwarder.query(*upstream, query).await
            }
        };
        match tokio::time::timeout(share, attempt).await {
            Ok(Ok(bytes)) => match Message::from_vec(&bytes) {
                Ok(m) if m.metadata.id == id => return Some(m),
                Ok(_) => tracing::debug!(%upstream, "dns: upstream answered another id"),
                Err(e) => tracing::debug!(%upstream, error = %e, "dns: bad upstream reply"),
            },
            Ok(Err(e)) => tracing::debug!(%upstream, error = %e, "dns: upstream failed"),
            Err(_) => tracing::debug!(%upstream, "dns: upstream timed out"),
        }
    }
    None
}

async fn forward_tcp(upstream: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long"))?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Binds `udp_count` UDP sockets (one `SO_REUSEPORT` group) and TCP on `addr` inside the
/// namespace at `netns` (our own when `None`) on a thread of [`run_in`]; the sockets keep
/// that namespace after the thread is gone. The bind errors travel back in `run_in`'s
/// result, so a bind that fails says which socket and why.
async fn bind_in_netns(
    netns: Option<&Path>,
    addr: SocketAddr,
    udp_count: usize,
) -> Result<(Vec<std::net::UdpSocket>, std::net::TcpListener), DnsError> {
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
        let udp = super::udp::bind_group(addr, udp_count).map_err(|e| bind_err("udp", e))?;
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
        let (udp, tcp) = bind_in_netns(netns, config.listen, config.udp_workers).await?;
        let io = |e: io::Error| DnsError::Io {
            what: "register socket",
            path: netns.map(Path::to_owned).unwrap_or_default(),
            source: e,
        };
        let udp_addr = udp[0].local_addr().map_err(io)?;
        let tcp_addr = tcp.local_addr().map_err(io)?;
        let tcp = tokio::net::TcpListener::from_std(tcp).map_err(io)?;
        let networks = view.networks().to_vec();
        let tcp_timeout = config.tcp_idle_timeout;
        let handler = Handler::new(view, config, forwarder);
        let udp_workers =
            UdpWorkers::spawn(udp, Arc::new(handler.clone())).map_err(|e| DnsError::Io {
                what: "start udp receive threads",
                path: netns.map(Path::to_owned).unwrap_or_default(),
                source: e,
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
