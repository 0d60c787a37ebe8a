//! Embedded DNS for service discovery: one server per task network namespace at
//! 127.0.0.11:53 (UDP and TCP), served from the agent's process, answering from record
//! tables built from the Endpoints objects the agent watches.
//!
//! Pieces:
//! - [`records`]: the pure part. [`NetworkRecords::build`] turns the Endpoints objects of one
//!   network into its names; [`records::answer`] decides, for the tables of the networks the
//!   asking task is on, between addresses, NXDOMAIN and forwarding.
//! - [`RecordStore`]: one shared, atomically swapped table per network. Every server of a
//!   task on that network holds the same slot, so [`RecordStore::set`] changes what every
//!   namespace answers at once, with no per-namespace work.
//! - [`View`]: the slots of one task's networks in attachment order — the scoping: a task
//!   only ever sees names of networks it is attached to.
//! - [`DnsServer`] (in `server`): our request handler, run by hickory-server for TCP and by
//!   our own UDP readers (`udp`: one socket per namespace, read by a thread per CPU);
//!   sockets bound inside the namespace. The UDP readers answer plain A questions for names
//!   of ours on a fast path (`wire`): from answers pre-encoded with each table, patched with
//!   the query's id, flags and question; all else goes to the handler.
//! - [`DnsHost`] keeps one server per task behind the [`DnsServers`] trait;
//!   [`RecordingDns`] is its fake for converge-loop tests.
//!
//! Invariants: a table is replaced whole (readers see the old or the new one); answers have
//! TTL 0, so a task leaving the Endpoints leaves DNS with the next lookup; names of ours never
//! go upstream (unknown → NXDOMAIN, AAAA/other types → empty NOERROR).
//!
//! The namespace's loopback must be up before a server starts there (127.0.0.11 is a
//! loopback address); the agent's netns setup does that.

mod config;
mod error;
#[cfg(any(test, feature = "test-util"))]
mod fake;
pub mod forward;
mod handler;
mod host;
pub mod records;
mod server;
mod store;
mod udp;
mod wire;

pub use config::{parse_resolv_conf, DnsServerConfig, DNS_ADDR, TTL};
pub use error::DnsError;
#[cfg(any(test, feature = "test-util"))]
pub use fake::RecordingDns;
pub use forward::Forwarder;
pub use host::{DnsHost, DnsServers};
pub use records::{build_tables, normalize_name, Answer, NameEntry, NetworkRecords, QueryKind};
pub use server::DnsServer;
pub use store::{view_networks, RecordStore, View};

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    use shoal_api_types::endpoints::EndpointTask;
    use shoal_api_types::endpoints::EndpointsSpec;
    use shoal_api_types::service::EndpointMode;

    fn ep(network: &str, service: &str, vip: &str, tasks: &[(&str, &str)]) -> EndpointsSpec {
        EndpointsSpec {
            network: network.into(),
            service: service.into(),
            vip: Some(vip.into()),
            endpoint_mode: EndpointMode::Vip,
            tasks: tasks
                .iter()
                .map(|(n, ip)| EndpointTask {
                    name: (*n).into(),
                    ip: (*ip).into(),
                    ready: true,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_store_update_reaches_every_view_at_once() {
        let store = RecordStore::new();
        let a = store.view(&["appnet"]);
        let b = store.view(&["appnet", "other"]);
        assert_eq!(a.answer("api", QueryKind::A), Answer::NxDomain);
        store.set_from_endpoints(
            "appnet",
            &[ep("appnet", "api", "10.0.1.2", &[("api.1", "10.0.1.5")])],
        );
        for v in [&a, &b] {
            assert_eq!(
                v.answer("api", QueryKind::A),
                Answer::Addrs(vec!["10.0.1.2".parse().unwrap()])
            );
        }
        store.remove("appnet");
        assert_eq!(a.answer("api", QueryKind::A), Answer::NxDomain);
    }

    #[test]
    fn replace_all_empties_networks_that_are_gone() {
        let store = RecordStore::new();
        let v = store.view(&["x"]);
        store.replace_all(build_tables(&[
            ep("x", "api", "10.0.1.2", &[]),
            ep("y", "db", "10.0.2.2", &[]),
        ]));
        assert!(matches!(v.answer("api", QueryKind::A), Answer::Addrs(_)));
        assert_eq!(store.get("y").len(), 2);
        store.replace_all(build_tables(&[ep("y", "db", "10.0.2.2", &[])]));
        assert_eq!(v.answer("api", QueryKind::A), Answer::NxDomain);
        assert_eq!(store.get("y").len(), 2);
    }

    #[test]
    fn set_from_endpoints_ignores_other_networks() {
        let store = RecordStore::new();
        store.set_from_endpoints(
            "x",
            &[
                ep("x", "api", "10.0.1.2", &[]),
                ep("y", "db", "10.0.2.2", &[]),
            ],
        );
        assert_eq!(
            store.view(&["x"]).answer("db", QueryKind::A),
            Answer::NxDomain
        );
    }

    #[tokio::test]
    async fn recording_dns_remembers_servers_and_calls() {
        let dns = RecordingDns::default();
        let nets = vec!["appnet".to_owned()];
        dns.ensure("t1", Path::new("/run/netns/t1"), &nets)
            .await
            .unwrap();
        assert_eq!(
            dns.server("t1"),
            Some((PathBuf::from("/run/netns/t1"), nets))
        );
        assert_eq!(dns.keys().await, ["t1"]);
        dns.stop("t1").await;
        assert_eq!(dns.keys().await, Vec::<String>::new());
        assert_eq!(dns.calls(), ["ensure t1 /run/netns/t1 appnet", "stop t1"]);
    }

    #[test]
    fn resolv_conf_gives_nameservers_in_order_without_ourselves() {
        let text = "# generated\nsearch example.com\nnameserver 10.1.1.1\nnameserver 127.0.0.11\nnameserver fe80::1%eth0 # link-local\n  nameserver 127.0.0.53\noptions ndots:0\n";
        let got: Vec<String> = parse_resolv_conf(text)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["10.1.1.1:53", "127.0.0.53:53"]);
    }
}
