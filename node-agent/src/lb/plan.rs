//! Owns the incremental change of a VIP table: [`plan`] diffs the entries last programmed
//! against the new ones into a [`Change`] (the elements and counter chains to add and
//! delete), and [`Change::script`] writes it as one nft script (`nft -f -` input, one
//! transaction): the change in nft's words, which [`super::netlink::messages`] sends as the
//! same batch without nft. Pure: no namespace, no `nft` process.
//!
//! Invariants of the change (script and batch), so that a packet sees the old table or the
//! new one:
//! - it is one batch (one netlink transaction);
//! - counter chains are created before the verdicts that jump to them, and deleted only after
//!   every verdict that jumped to them (the kernel refuses to delete a chain still in use);
//! - a key whose value changes is deleted and added again in the same batch (an `add` of a
//!   present key with other data is refused);
//! - a new counter chain is added, flushed and given its one rule, so writing it twice never
//!   doubles its rule.
//!
//! The cost is proportional to what changed: the two inputs are walked once, side by side
//! (both are normalised, so sorted by key and grouped by VIP), and unchanged VIPs cost one
//! comparison each. A change never touches a counter chain that stays (its round-robin
//! counter keeps going): a chain's name encodes its backend count
//! ([`super::ruleset::service_chain`]), so a new count is a new chain.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::entries::VipEntry;
use super::ruleset::{
    backend_map, service_chain, service_rule, target, verdict_map, write_backend, write_key,
    write_verdict, Key, TABLE,
};

/// What one change adds and deletes, in the order the script applies it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Change {
    /// New counter chains: (name, backend count, serves port entries).
    pub add_chains: Vec<(String, usize, bool)>,
    /// Verdict elements to delete (gone, or about to be re-added with another target).
    pub delete_verdicts: Vec<Key>,
    /// Backend elements to delete (gone, or about to be re-added with another address).
    pub delete_backends: Vec<(Key, usize)>,
    /// Verdict elements to add: key → target chain.
    pub add_verdicts: Vec<(Key, String)>,
    /// Backend elements to add: (key, index) → address.
    pub add_backends: Vec<(Key, usize, Ipv4Addr)>,
    /// Counter chains no verdict uses any more.
    pub delete_chains: Vec<String>,
}

/// The change that turns the table of `from` into the table of `to` (both [`normalize`]d,
/// as the agent's cache and [`super::vip_entries`] are).
///
/// [`normalize`]: super::normalize
pub fn plan(from: &[VipEntry], to: &[VipEntry]) -> Change {
    let mut c = Change::default();
    let (mut i, mut j) = (0, 0);
    while i < from.len() || j < to.len() {
        // The next VIP in either list, and its run of entries in each.
        let vip = match (from.get(i), to.get(j)) {
            (Some(a), Some(b)) => a.vip.min(b.vip),
            (Some(a), None) => a.vip,
            (None, Some(b)) => b.vip,
            (None, None) => break,
        };
        let old = run(from, &mut i, vip);
        let new = run(to, &mut j, vip);
        if old != new {
            c.vip(old, new);
        }
    }
    c
}

/// The entries of `vip` at `*at` (advancing past them).
fn run<'a>(entries: &'a [VipEntry], at: &mut usize, vip: Ipv4Addr) -> &'a [VipEntry] {
    let start = *at;
    while entries.get(*at).is_some_and(|e| e.vip == vip) {
        *at += 1;
    }
    &entries[start..*at]
}

fn key(e: &VipEntry) -> Key {
    (e.vip, e.protocol, e.port)
}

/// The counter chains a VIP's entries use.
fn chains(entries: &[VipEntry]) -> Vec<(String, usize, bool)> {
    let mut out: Vec<(String, usize, bool)> = Vec::new();
    for e in entries.iter().filter(|e| !e.backends.is_empty()) {
        let c = (e.backends.len(), e.port.is_some());
        if !out.iter().any(|o| (o.1, o.2) == c) {
            out.push((service_chain(e.vip, c.0, c.1), c.0, c.1));
        }
    }
    out
}

impl Change {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self == &Change::default()
    }

    /// The changes of one VIP, from its entries `old` to `new`.
    fn vip(&mut self, old: &[VipEntry], new: &[VipEntry]) {
        let (old_chains, new_chains) = (chains(old), chains(new));
        for c in &new_chains {
            if !old_chains.iter().any(|o| o.0 == c.0) {
                self.add_chains.push(c.clone());
            }
        }
        for o in &old_chains {
            if !new_chains.iter().any(|c| c.0 == o.0) {
                self.delete_chains.push(o.0.clone());
            }
        }
        // Entries by key, side by side (both sorted).
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            let (a, b) = match (old.get(i), new.get(j)) {
                (Some(a), Some(b)) if key(a) == key(b) => (Some(a), Some(b)),
                (Some(a), Some(b)) if key(a) < key(b) => (Some(a), None),
                (Some(_), Some(b)) => (None, Some(b)),
                (a, b) => (a, b),
            };
            i += usize::from(a.is_some());
            j += usize::from(b.is_some());
            self.entry(a, b);
        }
    }

    /// The element changes of one key (present before `a`, after `b`, or both).
    fn entry(&mut self, a: Option<&VipEntry>, b: Option<&VipEntry>) {
        let Some(k) = a.or(b).map(key) else {
            return;
        };
        let (ta, tb) = (a.map(target), b.map(target));
        if ta != tb {
            if ta.is_some() {
                self.delete_verdicts.push(k);
            }
            if let Some(t) = tb {
                self.add_verdicts.push((k, t));
            }
        }
        let none: &[Ipv4Addr] = &[];
        let ba = a.map_or(none, |e| &e.backends);
        let bb = b.map_or(none, |e| &e.backends);
        for idx in 0..ba.len().max(bb.len()) {
            let (x, y) = (ba.get(idx), bb.get(idx));
            if x == y {
                continue;
            }
            if x.is_some() {
                self.delete_backends.push((k, idx));
            }
            if let Some(ip) = y {
                self.add_backends.push((k, idx, *ip));
            }
        }
    }

    /// The nft script of the change (empty when there is nothing to do): new chains, then
    /// deletions of elements, additions of elements, and deletions of chains.
    pub fn script(&self) -> String {
        let mut out = String::new();
        for (name, n, port) in &self.add_chains {
            let _ = writeln!(
                out,
                "add chain ip {TABLE} {name}\nflush chain ip {TABLE} {name}\nadd rule ip {TABLE} {name} {}",
                service_rule(*n, *port)
            );
        }
        element_lines(&mut out, "delete", &self.delete_verdicts, |out, k| {
            write_key(out, k)
        });
        element_lines(&mut out, "delete", &self.delete_backends, |out, (k, i)| {
            write_key(out, k);
            let _ = write!(out, " . {i}");
        });
        element_lines(&mut out, "add", &self.add_verdicts, |out, (k, t)| {
            write_verdict(out, k, t)
        });
        element_lines(&mut out, "add", &self.add_backends, |out, (k, i, ip)| {
            write_backend(out, k, *i, *ip)
        });
        for name in &self.delete_chains {
            let _ = writeln!(out, "delete chain ip {TABLE} {name}");
        }
        out
    }
}

/// Something an element line is about: its key decides the map.
trait Keyed {
    fn key(&self) -> &Key;
    /// The map it lives in.
    fn map(&self) -> &'static str;
}

impl Keyed for Key {
    fn key(&self) -> &Key {
        self
    }
    fn map(&self) -> &'static str {
        verdict_map(self)
    }
}

impl Keyed for (Key, String) {
    fn key(&self) -> &Key {
        &self.0
    }
    fn map(&self) -> &'static str {
        verdict_map(&self.0)
    }
}

impl Keyed for (Key, usize) {
    fn key(&self) -> &Key {
        &self.0
    }
    fn map(&self) -> &'static str {
        backend_map(&self.0)
    }
}

impl Keyed for (Key, usize, Ipv4Addr) {
    fn key(&self) -> &Key {
        &self.0
    }
    fn map(&self) -> &'static str {
        backend_map(&self.0)
    }
}

/// `<verb> element ip shoal_lb <map> { e1, e2 }`, one line per map that has elements.
fn element_lines<T: Keyed>(
    out: &mut String,
    verb: &str,
    items: &[T],
    write: impl Fn(&mut String, &T),
) {
    for port in [false, true] {
        let mut any = false;
        for item in items.iter().filter(|it| it.key().2.is_some() == port) {
            if any {
                out.push_str(", ");
            } else {
                let _ = write!(out, "{verb} element ip {TABLE} {} {{ ", item.map());
                any = true;
            }
            write(out, item);
        }
        if any {
            out.push_str(" }\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::entries::normalize;
    use shoal_api_types::service::Protocol;

    use crate::lb::ruleset::tests::{e, ip};

    /// A whole-VIP service over TCP and UDP.
    fn svc(vip: &str, backends: &[&str]) -> Vec<VipEntry> {
        vec![
            e(vip, Protocol::Tcp, None, backends),
            e(vip, Protocol::Udp, None, backends),
        ]
    }

    fn entries(services: &[(&str, &[&str])]) -> Vec<VipEntry> {
        normalize(services.iter().flat_map(|(v, b)| svc(v, b)))
    }

    #[test]
    fn plan_of_equal_entries_is_empty() {
        let a = entries(&[("10.0.1.2", &["10.0.1.5"]), ("10.0.1.3", &[])]);
        let c = plan(&a, &a);
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(c.script(), "");
    }

    #[test]
    fn plan_should_replace_only_the_backend_that_changed() {
        let a = entries(&[
            ("10.0.1.2", &["10.0.1.5", "10.0.1.6"]),
            ("10.0.1.3", &["10.0.1.7"]),
        ]);
        let b = entries(&[
            ("10.0.1.2", &["10.0.1.5", "10.0.1.8"]),
            ("10.0.1.3", &["10.0.1.7"]),
        ]);
        let c = plan(&a, &b);
        assert_eq!(
            c.script(),
            "delete element ip shoal_lb backends { 10.0.1.2 . tcp . 1, 10.0.1.2 . udp . 1 }\n\
             add element ip shoal_lb backends { 10.0.1.2 . tcp . 1 : 10.0.1.8, 10.0.1.2 . udp . 1 : 10.0.1.8 }\n"
        );
    }

    #[test]
    fn plan_should_move_a_service_to_a_new_counter_chain_when_its_backend_count_changes() {
        let a = entries(&[
            ("10.0.1.2", &["10.0.1.5", "10.0.1.6"]),
            ("10.0.1.3", &["10.0.1.7"]),
        ]);
        let b = entries(&[
            ("10.0.1.2", &["10.0.1.5", "10.0.1.6", "10.0.1.9"]),
            ("10.0.1.3", &["10.0.1.7"]),
        ]);
        assert_eq!(
            plan(&a, &b).script(),
            "add chain ip shoal_lb svc_0a000102_3\n\
             flush chain ip shoal_lb svc_0a000102_3\n\
             add rule ip shoal_lb svc_0a000102_3 meta mark set numgen inc mod 3 goto pick_backend\n\
             delete element ip shoal_lb vips { 10.0.1.2 . tcp, 10.0.1.2 . udp }\n\
             add element ip shoal_lb vips { 10.0.1.2 . tcp : goto svc_0a000102_3, 10.0.1.2 . udp : goto svc_0a000102_3 }\n\
             add element ip shoal_lb backends { 10.0.1.2 . tcp . 2 : 10.0.1.9, 10.0.1.2 . udp . 2 : 10.0.1.9 }\n\
             delete chain ip shoal_lb svc_0a000102_2\n"
        );
    }

    #[test]
    fn plan_should_add_and_remove_whole_services() {
        let a = entries(&[("10.0.1.2", &["10.0.1.5"]), ("10.0.1.4", &["10.0.1.8"])]);
        let b = entries(&[("10.0.1.3", &["10.0.1.7"]), ("10.0.1.4", &["10.0.1.8"])]);
        let c = plan(&a, &b);
        assert_eq!(c.add_chains, vec![("svc_0a000103_1".into(), 1, false)]);
        assert_eq!(c.delete_chains, vec!["svc_0a000102_1".to_string()]);
        assert_eq!(
            c.delete_verdicts,
            vec![
                (ip("10.0.1.2"), Protocol::Tcp, None),
                (ip("10.0.1.2"), Protocol::Udp, None)
            ]
        );
        assert_eq!(c.add_verdicts.len(), 2);
        assert_eq!(c.delete_backends.len(), 2);
        assert_eq!(
            c.add_backends,
            vec![
                ((ip("10.0.1.3"), Protocol::Tcp, None), 0, ip("10.0.1.7")),
                ((ip("10.0.1.3"), Protocol::Udp, None), 0, ip("10.0.1.7"))
            ]
        );
    }

    #[test]
    fn plan_should_refuse_a_service_that_loses_its_last_backend_and_drop_its_chain() {
        let a = entries(&[("10.0.1.2", &["10.0.1.5"])]);
        let b = entries(&[("10.0.1.2", &[])]);
        assert_eq!(
            plan(&a, &b).script(),
            "delete element ip shoal_lb vips { 10.0.1.2 . tcp, 10.0.1.2 . udp }\n\
             delete element ip shoal_lb backends { 10.0.1.2 . tcp . 0, 10.0.1.2 . udp . 0 }\n\
             add element ip shoal_lb vips { 10.0.1.2 . tcp : goto refuse, 10.0.1.2 . udp : goto refuse }\n\
             delete chain ip shoal_lb svc_0a000102_1\n"
        );
    }

    #[test]
    fn plan_should_keep_a_chain_that_another_entry_of_the_vip_still_uses() {
        // TCP grows to 2 backends, UDP stays at 1: svc_…_1 stays for UDP.
        let a = normalize(svc("10.0.1.2", &["10.0.1.5"]));
        let b = normalize(vec![
            e("10.0.1.2", Protocol::Tcp, None, &["10.0.1.5", "10.0.1.6"]),
            e("10.0.1.2", Protocol::Udp, None, &["10.0.1.5"]),
        ]);
        let c = plan(&a, &b);
        assert_eq!(c.add_chains, vec![("svc_0a000102_2".into(), 2, false)]);
        assert!(c.delete_chains.is_empty(), "{c:?}");
    }

    #[test]
    fn plan_should_write_port_entries_into_the_port_maps() {
        let a = normalize(vec![e(
            "10.0.1.3",
            Protocol::Tcp,
            Some(8080),
            &["10.0.1.7"],
        )]);
        let b = normalize(vec![e(
            "10.0.1.3",
            Protocol::Tcp,
            Some(8080),
            &["10.0.1.8"],
        )]);
        assert_eq!(
            plan(&a, &b).script(),
            "delete element ip shoal_lb port_backends { 10.0.1.3 . tcp . 8080 . 0 }\n\
             add element ip shoal_lb port_backends { 10.0.1.3 . tcp . 8080 . 0 : 10.0.1.8 }\n"
        );
        let c = plan(&[], &b);
        assert_eq!(c.add_chains, vec![("svc_0a000103_p1".into(), 1, true)]);
        assert!(c.script().contains(
            "add element ip shoal_lb services { 10.0.1.3 . tcp . 8080 : goto svc_0a000103_p1 }"
        ));
    }

    #[test]
    fn plan_applied_to_the_old_layout_gives_the_new_layout() {
        use crate::lb::ruleset::Layout;
        // Every kind of change at once, between two sets of 50 services.
        let make = |shift: u32| -> Vec<VipEntry> {
            normalize((0..50u32).flat_map(|i| {
                let vip = Ipv4Addr::from(0x0a00_0000 + i + shift / 7);
                let n = ((i + shift) % 4) as usize;
                let backends: Vec<Ipv4Addr> = (0..n)
                    .map(|k| Ipv4Addr::from(0x0b00_0000 + i * 8 + k as u32 + shift % 3))
                    .collect();
                let port = (i % 5 == 0).then_some(80 + (shift % 2) as u16);
                [Protocol::Tcp, Protocol::Udp].map(|protocol| VipEntry {
                    vip,
                    protocol,
                    port,
                    backends: backends.clone(),
                })
            }))
        };
        for (x, y) in [(0, 1), (1, 0), (0, 9), (9, 22), (22, 0)] {
            let (a, b) = (make(x), make(y));
            let c = plan(&a, &b);
            let mut l = Layout::of(&a);
            for (name, n, port) in &c.add_chains {
                assert!(!l.chains.contains_key(name), "{name} exists already");
                l.chains.insert(name.clone(), (*n, *port));
            }
            for k in &c.delete_verdicts {
                assert!(l.verdicts.remove(k).is_some(), "delete of absent {k:?}");
            }
            for k in &c.delete_backends {
                assert!(l.backends.remove(k).is_some(), "delete of absent {k:?}");
            }
            for (k, t) in &c.add_verdicts {
                assert!(l.chains.contains_key(t) || t == "refuse", "{t} missing");
                assert!(l.verdicts.insert(*k, t.clone()).is_none(), "add of present");
            }
            for (k, i, ip) in &c.add_backends {
                assert!(l.backends.insert((*k, *i), *ip).is_none(), "add of present");
            }
            for name in &c.delete_chains {
                assert!(
                    !l.verdicts.values().any(|t| t == name),
                    "{name} still in use"
                );
                assert!(l.chains.remove(name).is_some(), "delete of absent {name}");
            }
            assert_eq!(l, Layout::of(&b), "{x} -> {y}");
        }
    }
}
