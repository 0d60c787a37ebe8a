//! The general path of a namespace's DNS server: hickory-server's [`RequestHandler`] over
//! the namespace's [`View`], answering our names, forwarding the rest to the node's
//! upstreams (see [`super::server`] for why a handler and how forwarding is bounded). TCP
//! and every UDP query the fast path ([`super::udp`]) leaves come here.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::config::{DnsServerConfig, TTL};
use super::forward::Forwarder;
use super::records::{Answer, QueryKind};
use super::store::View;

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
