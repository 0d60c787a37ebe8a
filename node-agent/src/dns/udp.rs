//! The UDP side of one namespace's server: one socket, read by several threads of its own
//! each blocked in `recvfrom` (the kernel wakes one reader per datagram), so one
//! namespace's lookups use every core and a query wakes its reader directly (under figure
//! 6's load the server's time is almost all in the kernel, in syscalls and wake-ups; a
//! blocking reader needs two syscalls per query, a reactor-driven task also an `epoll_wait`
//! and a receive that finds nothing). Each namespace thus has
//! [`super::DnsServerConfig::udp_workers`] idle threads.
//!
//! Why one shared socket and not a `SO_REUSEPORT` group of one per thread: a group spreads
//! clients over its sockets by a hash of their address and port, so a few busy clients can
//! all land on one socket while another thread idles (figure 6's rounds swung from 0.7× to
//! 1.2× unbound with the hash); readers of one socket take whichever datagram comes next.
//! And with no `SO_REUSEPORT` nothing else can join the address.
//!
//! Per datagram: the fast path ([`View::fast_answer`](super::View)) answers plain A questions
//! for names of ours from the tables' prepared records and sends the reply straight from the
//! receive thread. Everything else runs in a task of its own on the agent's tokio runtime
//! through the same
//! [`RequestHandler`] the TCP side uses (hickory-server drives TCP), exactly as
//! hickory-server's UDP loop would run it: fewer than 12 bytes or a response is dropped, an
//! unparseable message gets FORMERR, a reply is cut to 512 bytes or the client's EDNS size
//! (hickory's truncation) and an encoding failure becomes SERVFAIL.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::task::JoinSet;

use super::handler::Handler;

/// Largest datagram read (hickory's receive buffer size; longer ones are cut, as there).
const RECV_BUF: usize = 4096;

/// Bind the UDP socket on `addr`. Blocking: call it on the thread that is in the target
/// namespace.
pub(super) fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    std::net::UdpSocket::bind(addr)
}

/// The receive threads of one server and the general-path tasks they started. Dropping it
/// stops the threads (their sockets are shut for reading, which wakes a blocked receive)
/// and aborts the tasks.
pub(super) struct UdpWorkers {
    stop: Arc<AtomicBool>,
    socket: Arc<std::net::UdpSocket>,
    threads: Vec<std::thread::JoinHandle<()>>,
    general: Arc<Mutex<JoinSet<()>>>,
}

impl UdpWorkers {
    /// Serve `socket` from `readers` (at least one) threads; the general path runs on the
    /// current tokio runtime.
    pub(super) fn spawn(
        socket: std::net::UdpSocket,
        readers: usize,
        handler: Arc<Handler>,
    ) -> io::Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        let stop = Arc::new(AtomicBool::new(false));
        let general = Arc::new(Mutex::new(JoinSet::new()));
        socket.set_nonblocking(false)?;
        let socket = Arc::new(socket);
        let mut workers = UdpWorkers {
            stop: stop.clone(),
            socket: socket.clone(),
            threads: Vec::with_capacity(readers.max(1)),
            general: general.clone(),
        };
        for _ in 0..readers.max(1) {
            let (socket, handler, stop, general, runtime) = (
                socket.clone(),
                handler.clone(),
                stop.clone(),
                general.clone(),
                runtime.clone(),
            );
            // On failure `workers` is dropped, which stops the threads already started.
            let thread = std::thread::Builder::new()
                .name("shoal-dns-udp".into())
                .stack_size(256 * 1024)
                .spawn(move || serve(&socket, &handler, &stop, &general, &runtime))?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    fn stop_threads(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes every blocked receive (Linux answers ENOTCONN for an unconnected UDP socket
        // but shuts it all the same).
        let _ = socket2::SockRef::from(self.socket.as_ref()).shutdown(std::net::Shutdown::Read);
    }

    /// Stop receiving and wait for the queries in the general path to be answered.
    pub(super) async fn shutdown(mut self) {
        self.stop_threads();
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        let mut general = std::mem::take(&mut *lock(&self.general));
        while general.join_next().await.is_some() {}
    }
}

impl Drop for UdpWorkers {
    fn drop(&mut self) {
        self.stop_threads();
        lock(&self.general).abort_all();
    }
}

fn lock(general: &Mutex<JoinSet<()>>) -> std::sync::MutexGuard<'_, JoinSet<()>> {
    general.lock().unwrap_or_else(|e| e.into_inner())
}

/// One receive thread: blocking reads (the kernel wakes this thread directly, no reactor in
/// between), fast answers sent from here, the rest handed to the runtime.
fn serve(
    socket: &Arc<std::net::UdpSocket>,
    handler: &Arc<Handler>,
    stop: &AtomicBool,
    general: &Mutex<JoinSet<()>>,
    runtime: &tokio::runtime::Handle,
) {
    let mut buf = vec![0u8; RECV_BUF];
    let mut out = Vec::with_capacity(512);
    loop {
        let got = socket.recv_from(&mut buf);
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let (n, src) = match got {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotConnected | io::ErrorKind::ConnectionAborted
                ) =>
            {
                tracing::warn!(error = %e, "dns: udp socket closed");
                break;
            }
            Err(e) => {
                tracing::debug!(error = %e, "dns: udp receive failed");
                continue;
            }
        };
        // hickory's `sanitize_src_address`: never answer port 0 or unspecified/broadcast.
        let bad_src = src.port() == 0
            || src.ip().is_unspecified()
            || matches!(src.ip(), std::net::IpAddr::V4(v4) if v4.is_broadcast());
        if bad_src {
            continue;
        }
        let query = &buf[..n];
        if handler.view().fast_answer(query, &mut out) {
            if let Err(e) = socket.send_to(&out, src) {
                tracing::debug!(%src, error = %e, "dns: udp send failed");
            }
            continue;
        }
        let (h, s, raw) = (handler.clone(), socket.clone(), query.to_vec());
        let mut tasks = lock(general);
        while tasks.try_join_next().is_some() {}
        tasks.spawn_on(async move { general_path(&h, raw, src, s).await }, runtime);
    }
}

/// One datagram through the [`RequestHandler`], as hickory-server's UDP loop runs it.
async fn general_path(
    handler: &Handler,
    raw: Vec<u8>,
    src: SocketAddr,
    socket: Arc<std::net::UdpSocket>,
) {
    let Ok(header) = Header::read(&mut BinDecoder::new(&raw)) else {
        return;
    };
    let mut responder = UdpResponder { socket, dst: src };
    let request = match Request::from_bytes(raw, src, Protocol::Udp) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%src, error = %e, "dns: unparseable query");
            let Ok(queries) = Queries::read(&mut BinDecoder::new(&[]), 0) else {
                return;
            };
            let response = MessageResponseBuilder::new(&queries, None)
                .error_msg(&header, ResponseCode::FormErr);
            if let Err(e) = responder.send_response(response).await {
                tracing::debug!(%src, error = %e, "dns: udp send failed");
            }
            return;
        }
    };
    if request.metadata.message_type == MessageType::Response {
        return;
    }
    handler
        .handle_request::<_, TokioTime>(&request, responder)
        .await;
}

/// Sends one reply to one client from the socket the query came in on. The socket is in
/// blocking mode (its receive thread blocks on it); a UDP send does not wait for the peer,
/// only for buffer space, so it is called directly from the task.
#[derive(Clone)]
struct UdpResponder {
    socket: Arc<std::net::UdpSocket>,
    dst: SocketAddr,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpResponder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let (info, bytes) = encode_udp(response)?;
        self.socket.send_to(&bytes, self.dst)?;
        Ok(info)
    }
}

/// hickory-server's encoding of a UDP reply: at most the client's EDNS payload size (512
/// without EDNS), records that do not fit are left out with TC set; SERVFAIL when the
/// message cannot be encoded at all.
fn encode_udp<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> Result<(ResponseInfo, Vec<u8>), hickory_proto::ProtoError> {
    let id = response.metadata().id;
    let max = response.edns().map_or(512, |e| e.max_payload());
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(max);
    let error = match response.destructive_emit(&mut encoder) {
        Ok(info) => return Ok((info, bytes)),
        Err(e) => e,
    };
    tracing::debug!(%error, "dns: could not encode a reply");
    bytes.clear();
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(512);
    let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
    metadata.response_code = ResponseCode::ServFail;
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    header.emit(&mut encoder)?;
    Ok((ResponseInfo::from(header), bytes))
}

#[cfg(test)]
mod tests {
    //! The fast path against the general path: for the same query, the bytes the fast path
    //! writes must be the bytes the handler sends (or, for shuffled answers, the same message
    //! up to the order of the answers); whatever the fast path refuses must reach the
    //! handler.
    use super::*;
    use std::net::Ipv4Addr;
    use std::sync::Mutex;

    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    use shoal_api_types::endpoints::{EndpointTask, EndpointsSpec};
    use shoal_api_types::service::EndpointMode;

    use crate::dns::config::DnsServerConfig;
    use crate::dns::forward::Forwarder;
    use crate::dns::store::{RecordStore, View};

    /// Keeps the bytes the handler sends.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    #[async_trait::async_trait]
    impl ResponseHandler for Capture {
        async fn send_response<'a>(
            &mut self,
            response: MessageResponse<
                '_,
                'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
            >,
        ) -> Result<ResponseInfo, hickory_server::net::NetError> {
            let (info, bytes) = encode_udp(response)?;
            *self.0.lock().unwrap() = bytes;
            Ok(info)
        }
    }

    fn store() -> RecordStore {
        let store = RecordStore::new();
        let task = |n: &str, ip: &str| EndpointTask::new(n, ip);
        store.set_from_endpoints(
            "appnet",
            &[
                EndpointsSpec {
                    aliases: vec!["backend".into()],
                    ..EndpointsSpec::vip("appnet", "api", "10.0.1.2")
                        .tasks([task("api.1", "10.0.1.5")])
                },
                EndpointsSpec {
                    endpoint_mode: EndpointMode::Dnsrr,
                    ..EndpointsSpec::vip("appnet", "cache", "10.0.1.3").tasks(
                        (1..=6).map(|i| task(&format!("cache.{i}"), &format!("10.0.1.{}", 10 + i))),
                    )
                },
                EndpointsSpec {
                    endpoint_mode: EndpointMode::Dnsrr,
                    ..EndpointsSpec::vip("appnet", "idle", "10.0.1.4")
                },
                EndpointsSpec {
                    endpoint_mode: EndpointMode::Dnsrr,
                    ..EndpointsSpec::vip("appnet", "big", "10.0.1.9")
                        .tasks((1..=40).map(|i| task(&format!("big.{i}"), &format!("10.0.2.{i}"))))
                },
            ],
        );
        store.set_from_endpoints(
            "othernet",
            &[EndpointsSpec::vip("othernet", "api", "10.0.9.2").tasks([task("db.1", "10.0.9.5")])],
        );
        store
    }

    fn handler(view: View) -> Handler {
        Handler::new(
            view,
            Arc::new(DnsServerConfig::default()),
            Arc::new(Forwarder::new()),
        )
    }

    async fn general(handler: &Handler, query: &[u8]) -> Vec<u8> {
        let src: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        let request = Request::from_bytes(query.to_vec(), src, Protocol::Udp).unwrap();
        let capture = Capture::default();
        handler
            .handle_request::<_, TokioTime>(&request, capture.clone())
            .await;
        let bytes = capture.0.lock().unwrap().clone();
        bytes
    }

    fn fast(handler: &Handler, query: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        handler.view().fast_answer(query, &mut out).then_some(out)
    }

    /// A query as a stub resolver sends it.
    fn query(
        id: u16,
        name: &str,
        rtype: RecordType,
        rd: bool,
        cd: bool,
        edns: Option<(u16, bool)>,
    ) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.metadata.recursion_desired = rd;
        m.metadata.checking_disabled = cd;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        if let Some((payload, dnssec_ok)) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            e.set_dnssec_ok(dnssec_ok);
            m.edns = Some(e);
        }
        m.to_vec().unwrap()
    }

    fn addrs(m: &Message) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn fast_answers_are_the_general_paths_bytes() {
        let h = handler(store().view(&["appnet", "othernet"]));
        let mut cases = 0;
        for name in [
            "api",
            "API.",
            "Api",
            "backend",
            "tasks.api",
            "TASKS.Backend.",
            "api.1",
            "idle",
            "tasks.idle",
        ] {
            for (rd, cd) in [(true, false), (false, false), (true, true)] {
                for edns in [
                    None,
                    Some((100, false)),
                    Some((512, false)),
                    Some((1232, true)),
                    Some((4096, false)),
                ] {
                    let q = query(0xbeef, name, RecordType::A, rd, cd, edns);
                    let fast = fast(&h, &q)
                        .unwrap_or_else(|| panic!("{name} {edns:?}: not on the fast path"));
                    assert_eq!(
                        fast,
                        general(&h, &q).await,
                        "{name} rd={rd} cd={cd} edns={edns:?}"
                    );
                    cases += 1;
                }
            }
        }
        assert_eq!(cases, 9 * 3 * 5);
    }

    #[tokio::test]
    async fn the_client_case_is_echoed_in_question_and_answer() {
        let h = handler(store().view(&["appnet"]));
        let q = query(7, "ApI.", RecordType::A, true, false, None);
        let m = Message::from_vec(&fast(&h, &q).unwrap()).unwrap();
        assert_eq!(m.queries[0].name().to_string(), "ApI.");
        assert_eq!(m.answers[0].name.to_string(), "ApI.");
        assert_eq!(m.answers[0].ttl, crate::dns::config::TTL);
    }

    #[tokio::test]
    async fn shuffled_answers_match_the_general_path_up_to_order() {
        let h = handler(store().view(&["appnet"]));
        let mut orders = std::collections::HashSet::new();
        for name in ["cache", "tasks.cache", "Tasks.Cache."] {
            let q = query(42, name, RecordType::A, true, false, None);
            let g = Message::from_vec(&general(&h, &q).await).unwrap();
            for _ in 0..20 {
                let bytes = fast(&h, &q).unwrap();
                let f = Message::from_vec(&bytes).unwrap();
                assert_eq!(f.metadata, g.metadata, "{name}");
                assert_eq!(f.queries, g.queries, "{name}");
                assert_eq!(addrs(&f), addrs(&g), "{name}");
                assert_eq!(addrs(&f).len(), 6);
                assert!(f
                    .answers
                    .iter()
                    .all(|r| r.ttl == crate::dns::config::TTL && r.name == *g.queries[0].name()));
                assert_eq!(bytes.len(), general(&h, &q).await.len());
                orders.insert(f.answers.iter().map(|r| r.data.clone()).collect::<Vec<_>>());
            }
        }
        assert!(orders.len() > 1, "60 answers in one order");
    }

    #[tokio::test]
    async fn the_first_attached_network_wins_on_the_fast_path_too() {
        let s = store();
        for nets in [["appnet", "othernet"], ["othernet", "appnet"]] {
            let h = handler(s.view(&nets));
            let q = query(1, "api", RecordType::A, true, false, None);
            assert_eq!(fast(&h, &q).unwrap(), general(&h, &q).await, "{nets:?}");
        }
    }

    #[tokio::test]
    async fn everything_else_is_left_to_the_general_path() {
        let h = handler(store().view(&["appnet"]));
        let a = |name| query(3, name, RecordType::A, true, false, None);
        let mut two_questions = Message::query();
        two_questions.add_query(Query::query(
            Name::from_ascii("api").unwrap(),
            RecordType::A,
        ));
        two_questions.add_query(Query::query(
            Name::from_ascii("api.1").unwrap(),
            RecordType::A,
        ));
        let mut with_cookie = Message::query();
        with_cookie.add_query(Query::query(
            Name::from_ascii("api").unwrap(),
            RecordType::A,
        ));
        let mut e = Edns::new();
        e.options_mut()
            .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
                10,
                vec![1; 8],
            ));
        with_cookie.edns = Some(e);
        let mut version_1 = Message::query();
        version_1.add_query(Query::query(
            Name::from_ascii("api").unwrap(),
            RecordType::A,
        ));
        let mut e = Edns::new();
        e.set_version(1);
        version_1.edns = Some(e);
        let mut trailing = a("api");
        trailing.push(0);
        let mut truncated_flag = a("api");
        truncated_flag[2] |= 0x02;
        let mut notify = a("api");
        notify[2] |= 4 << 3;
        let mut response = a("api");
        response[2] |= 0x80;
        // A name compressed with a pointer to itself is not read by the fast path.
        let pointer = [0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        let leftovers: Vec<(&str, Vec<u8>)> = vec![
            ("AAAA", query(3, "api", RecordType::AAAA, true, false, None)),
            ("ANY", query(3, "api", RecordType::ANY, true, false, None)),
            (
                "PTR",
                query(
                    3,
                    "2.1.0.10.in-addr.arpa",
                    RecordType::PTR,
                    true,
                    false,
                    None,
                ),
            ),
            ("unknown name", a("nosuch")),
            ("unknown task", a("api.9")),
            ("not ours", a("example.com")),
            ("root", a(".")),
            ("other network", a("db.1")),
            ("two questions", two_questions.to_vec().unwrap()),
            ("EDNS option", with_cookie.to_vec().unwrap()),
            ("EDNS version 1", version_1.to_vec().unwrap()),
            ("trailing byte", trailing),
            ("TC set", truncated_flag),
            ("opcode NOTIFY", notify),
            ("a response", response),
            ("pointer", pointer.to_vec()),
            ("short", vec![0; 11]),
            // 40 addresses need 12 + 9 + 640 bytes: more than 512 without EDNS.
            ("too big for 512", a("tasks.big")),
            (
                "too big for EDNS 600",
                query(
                    3,
                    "tasks.big",
                    RecordType::A,
                    true,
                    false,
                    Some((600, false)),
                ),
            ),
        ];
        for (what, q) in &leftovers {
            assert_eq!(fast(&h, q), None, "{what}");
        }
        // The big answer fits a big enough EDNS buffer, and then matches up to order.
        let q = query(
            3,
            "tasks.big",
            RecordType::A,
            true,
            false,
            Some((1232, false)),
        );
        let f = Message::from_vec(&fast(&h, &q).unwrap()).unwrap();
        let g = Message::from_vec(&general(&h, &q).await).unwrap();
        assert_eq!((addrs(&f), f.metadata), (addrs(&g), g.metadata));
        assert_eq!(addrs(&f).len(), 40);
    }

    #[tokio::test]
    async fn a_table_swap_reaches_the_fast_path() {
        let s = store();
        let h = handler(s.view(&["appnet"]));
        let q = query(9, "api", RecordType::A, true, false, None);
        let before = Message::from_vec(&fast(&h, &q).unwrap()).unwrap();
        assert_eq!(addrs(&before), [Ipv4Addr::new(10, 0, 1, 2)]);
        s.set_from_endpoints(
            "appnet",
            &[EndpointsSpec::vip("appnet", "api", "10.0.1.77")],
        );
        let after = Message::from_vec(&fast(&h, &q).unwrap()).unwrap();
        assert_eq!(addrs(&after), [Ipv4Addr::new(10, 0, 1, 77)]);
        assert_eq!(
            fast(&h, &query(9, "backend", RecordType::A, true, false, None)),
            None
        );
        s.remove("appnet");
        assert_eq!(fast(&h, &q), None);
    }
}
