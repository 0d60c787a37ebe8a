//! How the DNS servers answer and forward ([`DnsServerConfig`]), where they listen and the
//! TTL of our answers; read by the server, its handler and the fast path's encoder.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::error::DnsError;

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
    /// Threads reading the namespace's UDP socket; by default one per CPU, so one
    /// namespace's lookups can use every core.
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
