//! Record tables: a pure function from the Endpoints objects of one network to the names that
//! network answers, and the lookup rules a task's view applies over the networks it is on.
//! A service's Endpoints may be split into slices: they are read as one service.
//!
//! Per network: `<service>` → VIP (vip mode) or every ready task IP (dnsrr, shuffled per
//! answer); `tasks.<service>` → every ready task IP; each alias and `tasks.<alias>` the same
//! way; `<task name>` (`api.1`) → that task's IP. Unready tasks (not running, or unhealthy)
//! appear nowhere, so a stopping task leaves DNS as soon as its Endpoints say so. A vip
//! service keeps answering its VIP with no ready task (the LB then rejects at once). Reverse
//! (PTR) names of task IPs and VIPs answer the task and service names.
//!
//! Names are stored lowercase without a trailing dot; lookups normalise the same way, so
//! `API`, `api` and `api.` are one name. On a conflict inside one network the first claim
//! wins in this order: service names, task names, aliases (so an alias never hides a service).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use shoal_api_types::endpoints::{group_slices, EndpointsSpec, SliceGroup};
use shoal_api_types::service::EndpointMode;

use super::wire::Prepared;

/// What one name resolves to on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameEntry {
    /// The addresses (possibly none: a known name with no ready task).
    pub addrs: Vec<Ipv4Addr>,
    /// Whether answers list the addresses in a fresh random order each time.
    pub shuffle: bool,
}

/// The names of one network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRecords {
    names: HashMap<String, NameEntry>,
    ptrs: HashMap<Ipv4Addr, String>,
    /// The A answers of every name, encoded for the UDP fast path ([`super::wire`]); same
    /// keys as `names`, built with them, so one table swap replaces both.
    wire: HashMap<String, Prepared>,
}

/// Lowercase, without the trailing dot.
pub fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn parse_ip(s: &str) -> Option<Ipv4Addr> {
    s.split('/').next().and_then(|a| a.trim().parse().ok())
}

impl NetworkRecords {
    /// Build the table of one network from its Endpoints slices (slices of other networks
    /// must not be passed; see [`build_tables`]). The slices of one service are read as
    /// one ([`group_slices`]): its service-level fields from slice 0, its tasks from all.
    pub fn build<'a>(endpoints: impl IntoIterator<Item = &'a EndpointsSpec>) -> Self {
        // Sorted by service whatever order the watch delivered them in.
        let groups = group_slices(endpoints);
        let mut names: HashMap<String, NameEntry> = HashMap::new();
        let mut ptrs = HashMap::new();
        let ready = |g: &SliceGroup| -> Vec<Ipv4Addr> {
            g.tasks()
                .filter(|t| t.ready)
                .filter_map(|t| parse_ip(&t.ip))
                .collect()
        };
        let service_entry = |g: &SliceGroup| -> NameEntry {
            match (
                g.head.endpoint_mode,
                g.head.vip.as_deref().and_then(parse_ip),
            ) {
                (EndpointMode::Vip, Some(vip)) => NameEntry {
                    addrs: vec![vip],
                    shuffle: false,
                },
                // dnsrr, or a vip service whose VIP is not allocated yet: the task IPs.
                _ => NameEntry {
                    addrs: ready(g),
                    shuffle: true,
                },
            }
        };
        // 1. Service names and tasks.<service>.
        for g in &groups {
            names
                .entry(normalize_name(g.service()))
                .or_insert_with(|| service_entry(g));
            names
                .entry(format!("tasks.{}", normalize_name(g.service())))
                .or_insert_with(|| NameEntry {
                    addrs: ready(g),
                    shuffle: true,
                });
            if g.head.endpoint_mode == EndpointMode::Vip {
                if let Some(vip) = g.head.vip.as_deref().and_then(parse_ip) {
                    ptrs.entry(vip)
                        .or_insert_with(|| normalize_name(g.service()));
                }
            }
        }
        // 2. Task names.
        for g in &groups {
            for t in g.tasks().filter(|t| t.ready && !t.name.is_empty()) {
                if let Some(ip) = parse_ip(&t.ip) {
                    names
                        .entry(normalize_name(&t.name))
                        .or_insert_with(|| NameEntry {
                            addrs: vec![ip],
                            shuffle: false,
                        });
                    ptrs.entry(ip).or_insert_with(|| normalize_name(&t.name));
                }
            }
        }
        // 3. Aliases and tasks.<alias>.
        for g in &groups {
            for alias in &g.head.aliases {
                names
                    .entry(normalize_name(alias))
                    .or_insert_with(|| service_entry(g));
                names
                    .entry(format!("tasks.{}", normalize_name(alias)))
                    .or_insert_with(|| NameEntry {
                        addrs: ready(g),
                        shuffle: true,
                    });
            }
        }
        let wire = names
            .iter()
            .map(|(n, e)| (n.clone(), Prepared::new(n, &e.addrs, e.shuffle)))
            .collect();
        NetworkRecords { names, ptrs, wire }
    }

    /// The prepared A answer of `name`, which must already be normalised (lowercase, no
    /// trailing dot).
    pub(crate) fn prepared(&self, name: &str) -> Option<&Prepared> {
        self.wire.get(name)
    }

    /// The entry for `name` (any case, with or without the trailing dot).
    pub fn lookup(&self, name: &str) -> Option<&NameEntry> {
        self.names.get(&normalize_name(name))
    }

    /// The name an address of this network answers to in reverse lookups.
    pub fn reverse(&self, ip: Ipv4Addr) -> Option<&str> {
        self.ptrs.get(&ip).map(String::as_str)
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the table has no names.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// All names, sorted (for inspection and tests).
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.names.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

impl AsRef<NetworkRecords> for NetworkRecords {
    fn as_ref(&self) -> &NetworkRecords {
        self
    }
}

/// Build one table per network from Endpoints objects of any networks.
pub fn build_tables<'a>(
    endpoints: impl IntoIterator<Item = &'a EndpointsSpec>,
) -> BTreeMap<String, NetworkRecords> {
    let mut by_net: BTreeMap<&str, Vec<&EndpointsSpec>> = BTreeMap::new();
    for ep in endpoints {
        by_net.entry(ep.network.as_str()).or_default().push(ep);
    }
    by_net
        .into_iter()
        .map(|(net, eps)| (net.to_owned(), NetworkRecords::build(eps)))
        .collect()
}

/// What the server does with one question, decided from the asking task's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A name of ours: these A records (none for AAAA and other types, or when no task is
    /// ready): NOERROR, authoritative.
    Addrs(Vec<Ipv4Addr>),
    /// A reverse name of ours: this PTR target (a name without the trailing dot).
    Ptr(String),
    /// A name in our space that does not exist: NXDOMAIN at once.
    NxDomain,
    /// Not ours: forward upstream (or REFUSED when there is no upstream).
    Forward,
}

/// Which kind of question: only A (and ANY) get addresses; PTR gets reverse names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    /// An A or ANY question.
    A,
    /// A PTR question.
    Ptr,
    /// Anything else (AAAA, MX, TXT, ...).
    Other,
}

/// Decide the answer for `qname` over the tables of the networks the task is on, in the
/// task's attachment order (the first network that knows a name answers it, as Docker's
/// resolver does).
///
/// Our space is: single-label names, `tasks.*`, any name that some table knows, and
/// `<known service or alias>.<anything>` (an unknown task name such as `api.7`). Unknown names
/// there get NXDOMAIN without a forward; everything else is forwarded.
pub fn answer<T: AsRef<NetworkRecords>>(tables: &[T], qname: &str, kind: QueryKind) -> Answer {
    let name = normalize_name(qname);
    if kind == QueryKind::Ptr {
        if let Some(ip) = parse_reverse(&name) {
            if let Some(target) = tables.iter().find_map(|t| t.as_ref().reverse(ip)) {
                return Answer::Ptr(target.to_owned());
            }
        }
        // Reverse names of addresses we do not know are not ours.
        if name.ends_with(".in-addr.arpa") || name.ends_with(".ip6.arpa") {
            return Answer::Forward;
        }
    }
    if let Some(entry) = tables.iter().find_map(|t| t.as_ref().names.get(&name)) {
        return match kind {
            QueryKind::A => {
                let mut addrs = entry.addrs.clone();
                if entry.shuffle && addrs.len() > 1 {
                    use rand::seq::SliceRandom;
                    addrs.shuffle(&mut rand::rng());
                }
                Answer::Addrs(addrs)
            }
            QueryKind::Ptr | QueryKind::Other => Answer::Addrs(Vec::new()),
        };
    }
    if name.is_empty() {
        return Answer::Forward;
    }
    let single_label = !name.contains('.');
    let first = name.split('.').next().unwrap_or_default();
    let under_known_service = name.contains('.')
        && tables
            .iter()
            .any(|t| t.as_ref().names.contains_key(&format!("tasks.{first}")));
    if single_label || name.starts_with("tasks.") || under_known_service {
        Answer::NxDomain
    } else {
        Answer::Forward
    }
}

/// `d.c.b.a.in-addr.arpa` → `a.b.c.d`.
fn parse_reverse(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let mut octets: Vec<u8> = rest
        .split('.')
        .map(|o| o.parse().ok())
        .collect::<Option<_>>()?;
    if octets.len() != 4 {
        return None;
    }
    octets.reverse();
    Some(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::endpoints::EndpointTask;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn task(name: &str, ip: &str, ready: bool) -> EndpointTask {
        EndpointTask::new(name, ip).ready(ready)
    }

    fn ep(
        network: &str,
        service: &str,
        vip: Option<&str>,
        mode: EndpointMode,
        aliases: &[&str],
        tasks: Vec<EndpointTask>,
    ) -> EndpointsSpec {
        EndpointsSpec {
            network: network.into(),
            service: service.into(),
            vip: vip.map(Into::into),
            endpoint_mode: mode,
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            tasks,
            ..Default::default()
        }
    }

    fn app() -> Vec<EndpointsSpec> {
        vec![
            ep(
                "appnet",
                "api",
                Some("10.0.1.2"),
                EndpointMode::Vip,
                &["backend"],
                vec![
                    task("api.1", "10.0.1.5", true),
                    task("api.2", "10.0.1.6", true),
                    task("api.3", "10.0.1.7", false),
                ],
            ),
            ep(
                "appnet",
                "cache",
                Some("10.0.1.3"),
                EndpointMode::Dnsrr,
                &[],
                vec![
                    task("cache.1", "10.0.1.8", true),
                    task("cache.2", "10.0.1.9", true),
                ],
            ),
            ep(
                "othernet",
                "db",
                Some("10.0.2.2"),
                EndpointMode::Vip,
                &[],
                vec![task("db.1", "10.0.2.5", true)],
            ),
        ]
    }

    fn sorted(a: Answer) -> Answer {
        match a {
            Answer::Addrs(mut v) => {
                v.sort();
                Answer::Addrs(v)
            }
            other => other,
        }
    }

    fn view(names: &[&str]) -> Vec<NetworkRecords> {
        let tables = build_tables(&app());
        names
            .iter()
            .map(|n| tables.get(*n).cloned().unwrap_or_default())
            .collect()
    }

    #[test]
    fn a_service_in_several_slices_resolves_as_one() {
        let slice = |n: u32, tasks| EndpointsSpec {
            slice: n,
            ..ep(
                "appnet",
                "big",
                Some("10.0.1.2"),
                EndpointMode::Vip,
                &["large"],
                tasks,
            )
        };
        let eps = [
            slice(
                1,
                vec![
                    task("big.3", "10.0.1.7", true),
                    task("big.4", "10.0.1.8", true),
                ],
            ),
            slice(
                0,
                vec![
                    task("big.1", "10.0.1.5", true),
                    task("big.2", "10.0.1.6", true),
                ],
            ),
            slice(
                2,
                vec![
                    task("big.5", "10.0.1.9", true),
                    task("big.6", "10.0.1.10", false),
                ],
            ),
        ];
        let v = [NetworkRecords::build(&eps)];
        let all = Answer::Addrs(
            ["10.0.1.5", "10.0.1.6", "10.0.1.7", "10.0.1.8", "10.0.1.9"]
                .map(ip)
                .to_vec(),
        );
        assert_eq!(sorted(answer(&v, "tasks.big", QueryKind::A)), all);
        assert_eq!(sorted(answer(&v, "tasks.large", QueryKind::A)), all);
        assert_eq!(
            answer(&v, "big", QueryKind::A),
            Answer::Addrs(vec![ip("10.0.1.2")])
        );
        assert_eq!(
            answer(&v, "big.4", QueryKind::A),
            Answer::Addrs(vec![ip("10.0.1.8")])
        );
        assert_eq!(answer(&v, "big.6", QueryKind::A), Answer::NxDomain);
        // dnsrr: the service name answers every slice's ready tasks.
        let rr: Vec<EndpointsSpec> = eps
            .iter()
            .map(|e| EndpointsSpec {
                endpoint_mode: EndpointMode::Dnsrr,
                ..e.clone()
            })
            .collect();
        let v = [NetworkRecords::build(&rr)];
        assert_eq!(sorted(answer(&v, "big", QueryKind::A)), all);
    }

    #[test]
    fn vip_service_resolves_to_its_vip() {
        let v = view(&["appnet"]);
        assert_eq!(
            answer(&v, "api", QueryKind::A),
            Answer::Addrs(vec![ip("10.0.1.2")])
        );
    }

    #[test]
    fn dnsrr_service_resolves_to_ready_task_ips() {
        let v = view(&["appnet"]);
        assert_eq!(
            sorted(answer(&v, "cache", QueryKind::A)),
            Answer::Addrs(vec![ip("10.0.1.8"), ip("10.0.1.9")])
        );
        assert!(v[0].lookup("cache").unwrap().shuffle);
    }

    #[test]
    fn dnsrr_answers_are_shuffled() {
        let eps = [ep(
            "n",
            "rr",
            None,
            EndpointMode::Dnsrr,
            &[],
            (1..=8)
                .map(|i| task(&format!("rr.{i}"), &format!("10.0.0.{i}"), true))
                .collect(),
        )];
        let v = [NetworkRecords::build(&eps)];
        let orders: std::collections::HashSet<Vec<Ipv4Addr>> = (0..20)
            .map(|_| match answer(&v, "rr", QueryKind::A) {
                Answer::Addrs(a) => a,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(orders.len() > 1, "20 answers in one order");
    }

    #[test]
    fn tasks_name_lists_only_ready_tasks() {
        let v = view(&["appnet"]);
        assert_eq!(
            sorted(answer(&v, "tasks.api", QueryKind::A)),
            Answer::Addrs(vec![ip("10.0.1.5"), ip("10.0.1.6")])
        );
    }

    #[test]
    fn unready_tasks_are_excluded_everywhere() {
        let v = view(&["appnet"]);
        assert_eq!(answer(&v, "api.3", QueryKind::A), Answer::NxDomain);
        let eps = [ep(
            "n",
            "rr",
            None,
            EndpointMode::Dnsrr,
            &[],
            vec![task("rr.1", "10.0.0.5", false)],
        )];
        let v = [NetworkRecords::build(&eps)];
        assert_eq!(answer(&v, "rr", QueryKind::A), Answer::Addrs(vec![]));
        assert_eq!(answer(&v, "tasks.rr", QueryKind::A), Answer::Addrs(vec![]));
    }

    #[test]
    fn aliases_resolve_like_the_service() {
        let v = view(&["appnet"]);
        assert_eq!(
            answer(&v, "backend", QueryKind::A),
            Answer::Addrs(vec![ip("10.0.1.2")])
        );
        assert_eq!(
            sorted(answer(&v, "tasks.backend", QueryKind::A)),
            Answer::Addrs(vec![ip("10.0.1.5"), ip("10.0.1.6")])
        );
    }

    #[test]
    fn an_alias_never_hides_a_service_name() {
        let eps = [
            ep("n", "api", Some("10.0.0.2"), EndpointMode::Vip, &[], vec![]),
            ep(
                "n",
                "web",
                Some("10.0.0.3"),
                EndpointMode::Vip,
                &["api"],
                vec![],
            ),
        ];
        let v = [NetworkRecords::build(&eps)];
        assert_eq!(
            answer(&v, "api", QueryKind::A),
            Answer::Addrs(vec![ip("10.0.0.2")])
        );
    }

    #[test]
    fn task_names_resolve_to_the_task_ip() {
        let v = view(&["appnet"]);
        assert_eq!(
            answer(&v, "api.1", QueryKind::A),
            Answer::Addrs(vec![ip("10.0.1.5")])
        );
        assert_eq!(
            answer(&v, "cache.2", QueryKind::A),
            Answer::Addrs(vec![ip("10.0.1.9")])
        );
    }

    #[test]
    fn names_are_case_insensitive_and_the_trailing_dot_is_optional() {
        let v = view(&["appnet"]);
        for n in ["API", "api.", "Api.", "TASKS.api."] {
            assert!(
                matches!(answer(&v, n, QueryKind::A), Answer::Addrs(a) if !a.is_empty()),
                "{n}"
            );
        }
    }

    #[test]
    fn a_task_only_sees_the_networks_it_is_on() {
        let v = view(&["appnet"]);
        assert_eq!(answer(&v, "db", QueryKind::A), Answer::NxDomain);
        assert_eq!(answer(&v, "tasks.db", QueryKind::A), Answer::NxDomain);
        let v = view(&["othernet"]);
        assert_eq!(
            answer(&v, "db", QueryKind::A),
            Answer::Addrs(vec![ip("10.0.2.2")])
        );
        assert_eq!(answer(&v, "api", QueryKind::A), Answer::NxDomain);
        let v = view(&["othernet", "appnet"]);
        assert_eq!(
            answer(&v, "api", QueryKind::A),
            Answer::Addrs(vec![ip("10.0.1.2")])
        );
    }

    #[test]
    fn the_first_attached_network_wins_a_name_both_know() {
        let eps = [
            ep("a", "api", Some("10.0.1.2"), EndpointMode::Vip, &[], vec![]),
            ep("b", "api", Some("10.0.2.2"), EndpointMode::Vip, &[], vec![]),
        ];
        let t = build_tables(&eps);
        assert_eq!(
            answer(&[&t["b"], &t["a"]], "api", QueryKind::A),
            Answer::Addrs(vec![ip("10.0.2.2")])
        );
    }

    #[test]
    fn aaaa_and_other_types_for_our_names_are_empty_not_forwarded() {
        let v = view(&["appnet"]);
        assert_eq!(answer(&v, "api", QueryKind::Other), Answer::Addrs(vec![]));
        assert_eq!(
            answer(&v, "tasks.api", QueryKind::Other),
            Answer::Addrs(vec![])
        );
    }

    #[test]
    fn unknown_names_in_our_space_are_nxdomain_others_are_forwarded() {
        let v = view(&["appnet"]);
        assert_eq!(answer(&v, "nosuch", QueryKind::A), Answer::NxDomain);
        assert_eq!(answer(&v, "nosuch", QueryKind::Other), Answer::NxDomain);
        assert_eq!(answer(&v, "tasks.nosuch", QueryKind::A), Answer::NxDomain);
        assert_eq!(answer(&v, "api.9", QueryKind::A), Answer::NxDomain);
        assert_eq!(answer(&v, "example.com", QueryKind::A), Answer::Forward);
        assert_eq!(answer(&v, "example.com", QueryKind::Other), Answer::Forward);
        assert_eq!(answer(&v, ".", QueryKind::A), Answer::Forward);
    }

    #[test]
    fn reverse_lookups_answer_task_and_service_names() {
        let v = view(&["appnet"]);
        assert_eq!(
            answer(&v, "5.1.0.10.in-addr.arpa.", QueryKind::Ptr),
            Answer::Ptr("api.1".into())
        );
        assert_eq!(
            answer(&v, "2.1.0.10.in-addr.arpa", QueryKind::Ptr),
            Answer::Ptr("api".into())
        );
        assert_eq!(
            answer(&v, "7.1.0.10.in-addr.arpa", QueryKind::Ptr),
            Answer::Forward
        );
        assert_eq!(answer(&v, "api", QueryKind::Ptr), Answer::Addrs(vec![]));
    }

    #[test]
    fn tables_are_built_per_network() {
        let t = build_tables(&app());
        assert_eq!(t.keys().collect::<Vec<_>>(), ["appnet", "othernet"]);
        assert_eq!(
            t["appnet"].names(),
            [
                "api",
                "api.1",
                "api.2",
                "backend",
                "cache",
                "cache.1",
                "cache.2",
                "tasks.api",
                "tasks.backend",
                "tasks.cache"
            ]
        );
        assert_eq!(t["othernet"].names(), ["db", "db.1", "tasks.db"]);
    }
}
