//! The embedded DNS server over real sockets, in the test's own namespace on 127.0.0.1 with
//! an ephemeral port (no root needed): answers, NXDOMAIN, empty AAAA, REFUSED without
//! upstreams, forwarding (UDP and TCP) and SERVFAIL when the upstream is silent, and live
//! record updates.

#[path = "lb_support/mod.rs"]
mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use shoal_api_types::endpoints::{EndpointTask, EndpointsSpec};
use shoal_api_types::service::EndpointMode;
use shoal_node_agent::dns::{DnsServer, DnsServerConfig, RecordStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn endpoints(vip: &str, tasks: &[(&str, &str)]) -> EndpointsSpec {
    EndpointsSpec::vip("appnet", "api", vip)
        .tasks(tasks.iter().map(|(n, ip)| EndpointTask::new(n, ip)))
}

fn config(upstreams: Vec<SocketAddr>) -> Arc<DnsServerConfig> {
    Arc::new(DnsServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstreams,
        forward_timeout: Duration::from_millis(500),
        ..Default::default()
    })
}

fn query(name: &str, rtype: RecordType) -> Message {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m.metadata.recursion_desired = true;
    m
}

async fn ask_udp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let q = query(name, rtype);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&q.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("no answer within 5 s")
        .unwrap();
    let reply = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(reply.metadata.id, q.metadata.id);
    reply
}

async fn ask_tcp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let q = query(name, rtype).to_vec().unwrap();
    let mut s = tokio::net::TcpStream::connect(server).await.unwrap();
    s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
    s.write_all(&q).await.unwrap();
    let len = tokio::time::timeout(Duration::from_secs(5), s.read_u16())
        .await
        .expect("no answer within 5 s")
        .unwrap();
    let mut buf = vec![0u8; len as usize];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
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
async fn dns_server_answers_our_names_and_refuses_the_rest_without_upstreams() {
    let store = RecordStore::new();
    store.set_from_endpoints(
        "appnet",
        &[endpoints(
            "10.0.1.2",
            &[("api.1", "10.0.1.5"), ("api.2", "10.0.1.6")],
        )],
    );
    let server = DnsServer::start(None, store.view(&["appnet"]), config(vec![]))
        .await
        .unwrap();
    let addr = server.udp_addr();

    let r = ask_udp(addr, "api.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative);
    assert_eq!(a_records(&r), ["10.0.1.2".parse::<Ipv4Addr>().unwrap()]);
    assert_eq!(r.answers[0].ttl, 0);

    let r = ask_udp(addr, "TASKS.api.", RecordType::A).await;
    assert_eq!(
        a_records(&r),
        [
            "10.0.1.5".parse::<Ipv4Addr>().unwrap(),
            "10.0.1.6".parse().unwrap()
        ]
    );

    let r = ask_udp(addr, "api.2.", RecordType::A).await;
    assert_eq!(a_records(&r), ["10.0.1.6".parse::<Ipv4Addr>().unwrap()]);

    let r = ask_udp(addr, "api.", RecordType::AAAA).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());

    let r = ask_udp(addr, "nosuch.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);

    let r = ask_udp(addr, "example.com.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);

    let r = ask_tcp(server.tcp_addr(), "tasks.api.", RecordType::A).await;
    assert_eq!(a_records(&r).len(), 2);

    server.shutdown().await;
}

#[tokio::test]
async fn dns_server_sees_endpoint_changes_without_restart() {
    let store = RecordStore::new();
    let server = DnsServer::start(None, store.view(&["appnet"]), config(vec![]))
        .await
        .unwrap();
    let addr = server.udp_addr();
    assert_eq!(
        ask_udp(addr, "api.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    store.set_from_endpoints("appnet", &[endpoints("10.0.1.2", &[("api.1", "10.0.1.5")])]);
    assert_eq!(
        a_records(&ask_udp(addr, "tasks.api.", RecordType::A).await),
        ["10.0.1.5".parse::<Ipv4Addr>().unwrap()]
    );
    store.set_from_endpoints("appnet", &[endpoints("10.0.1.2", &[("api.2", "10.0.1.6")])]);
    assert_eq!(
        a_records(&ask_udp(addr, "tasks.api.", RecordType::A).await),
        ["10.0.1.6".parse::<Ipv4Addr>().unwrap()]
    );
    assert_eq!(
        ask_udp(addr, "api.1.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
}

#[tokio::test]
async fn dns_server_forwards_other_names_over_the_clients_transport() {
    let upstream = support::fake_upstream().await;
    let store = RecordStore::new();
    store.set_from_endpoints("appnet", &[endpoints("10.0.1.2", &[])]);
    let server = DnsServer::start(None, store.view(&["appnet"]), config(vec![upstream]))
        .await
        .unwrap();

    let r = ask_udp(server.udp_addr(), "example.com.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&r), ["192.0.2.7".parse::<Ipv4Addr>().unwrap()]);
    let r = ask_tcp(server.tcp_addr(), "example.com.", RecordType::A).await;
    assert_eq!(a_records(&r), ["192.0.2.7".parse::<Ipv4Addr>().unwrap()]);
    // Our names never go upstream, even with one configured.
    let r = ask_udp(server.udp_addr(), "nosuch.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    let r = ask_udp(server.udp_addr(), "api.", RecordType::AAAA).await;
    assert!(r.answers.is_empty());
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
}

#[tokio::test]
async fn forwarded_queries_past_the_namespace_limit_get_servfail_at_once() {
    // An upstream that never answers: every forwarded query waits its whole deadline.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let upstream = silent.local_addr().unwrap();
    let store = RecordStore::new();
    let config = Arc::new(DnsServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstreams: vec![upstream],
        forward_timeout: Duration::from_secs(3),
        max_forwarded_in_flight: 2,
        ..Default::default()
    });
    let server = DnsServer::start(None, store.view(&["appnet"]), config)
        .await
        .unwrap();
    let addr = server.udp_addr();
    let waiting: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(
                async move { ask_udp(addr, &format!("slow{i}.example."), RecordType::A).await },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The third is over the limit: answered at once, long before the deadline.
    let t0 = std::time::Instant::now();
    let r = ask_udp(addr, "third.example.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // The two in flight fail at their deadline; then the namespace may forward again.
    for w in waiting {
        assert_eq!(
            w.await.unwrap().metadata.response_code,
            ResponseCode::ServFail
        );
    }
    let t0 = std::time::Instant::now();
    let r = ask_udp(addr, "again.example.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "it was forwarded this time"
    );
    // Every query went out through the shared pool: few source ports.
    let mut ports = std::collections::HashSet::new();
    let mut buf = [0u8; 512];
    while let Ok(Ok((_, from))) =
        tokio::time::timeout(Duration::from_millis(50), silent.recv_from(&mut buf)).await
    {
        ports.insert(from.port());
    }
    assert!(!ports.is_empty() && ports.len() <= 3, "{ports:?}");
}

#[tokio::test]
async fn dns_server_truncates_big_udp_answers_and_serves_them_whole_over_tcp() {
    let store = RecordStore::new();
    let tasks: Vec<(String, String)> = (1..=100)
        .map(|i| (format!("rr.{i}"), format!("10.0.3.{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = tasks
        .iter()
        .map(|(n, ip)| (n.as_str(), ip.as_str()))
        .collect();
    let mut ep = endpoints("10.0.3.200", &refs);
    ep.service = "rr".into();
    ep.endpoint_mode = EndpointMode::Dnsrr;
    store.set_from_endpoints("appnet", &[ep]);
    let server = DnsServer::start(None, store.view(&["appnet"]), config(vec![]))
        .await
        .unwrap();
    let r = ask_udp(server.udp_addr(), "rr.", RecordType::A).await;
    assert!(
        r.metadata.truncation,
        "100 A records do not fit in 512 bytes"
    );
    let r = ask_tcp(server.tcp_addr(), "rr.", RecordType::A).await;
    assert!(!r.metadata.truncation);
    assert_eq!(a_records(&r).len(), 100);
}

#[tokio::test]
async fn dns_server_answers_servfail_when_the_upstream_is_silent() {
    // A bound socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = DnsServer::start(
        None,
        RecordStore::new().view(&["appnet"]),
        config(vec![silent.local_addr().unwrap()]),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let r = ask_udp(server.udp_addr(), "example.com.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}
