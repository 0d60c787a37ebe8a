//! The home namespace's data-path settings for overlays: which `net.*` sysctls the node's
//! overlay bridges need, as plain values ([`overlay_sysctls`]) and a pure diff against what
//! the namespace has ([`plan_sysctls`]). [`super::Kernel::ensure_overlay`] reads the keys,
//! plans and writes, so every ensure (creation and the periodic resync) repairs them.
//!
//! # Bridged frames skip the IP hooks (`br_netfilter` off in the home namespace)
//!
//! With `net.bridge.bridge-nf-call-iptables=1` (the kernel's default in every namespace when
//! `br_netfilter` is built in or loaded) every frame an overlay bridge forwards between two
//! ports — a task's veth and the VXLAN device, both ways, for every packet of every flow —
//! is handed to the IPv4 prerouting, forward and postrouting hooks: conntrack looks it up,
//! and each base chain of the namespace runs. Shoal filters nothing that is bridged: the node
//! policy's forward rules (`nodefw`) are about traffic *routed* into an overlay, the VIP's
//! DNAT happens in the client task's own namespace (`lb`), the routing mesh's DNAT and SNAT
//! on routed traffic (`mesh`), and tasks on the gateway bridge are kept apart by bridge port
//! isolation. So the agent turns the three `bridge-nf-call-*` switches off in its home
//! namespace. Measured on the 2-core VM (docs/benchmarks.md, "Data plane"): one TCP stream
//! task to task over VXLAN cost 0.71 CPU-s/GB with the hooks and 0.66 without (the underlay
//! 0.54), the hooks' conntrack and chain walks on the inner packets being what went.
//!
//! Invariants:
//! - Only a home namespace of the agent's own is written: a node namespace given to it
//!   (`home_netns`, as the local cluster's nodes have). An agent in the host's namespace
//!   writes nothing there: other bridge users on a host rely on `br_netfilter` (kube-proxy
//!   needs `bridge-nf-call-iptables=1`, Docker sets it), and a resync turning it off would
//!   fight them. There the switches stay as the operator set them; Shoal's overlays work
//!   either way, only slower (docs/architecture.md, "Node policy").
//! - The kernel keeps these sysctls per network namespace, so writing the node namespace's
//!   leaves the host's values as they are.
//! - A key the kernel does not have (no `br_netfilter` in the kernel: nothing is hooked, so
//!   nothing to turn off) is not an error and is not written.
//! - A key that already has the wanted value is not written.

use std::collections::BTreeMap;

/// One sysctl and the value the home namespace should have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sysctl {
    /// Dotted key (`net.bridge.bridge-nf-call-iptables`).
    pub key: &'static str,
    /// The wanted value as `/proc/sys` prints it.
    pub value: &'static str,
}

/// What the home namespace should have while it carries overlays (see the module docs):
/// nothing when it is the host's (`own_namespace` false).
pub fn overlay_sysctls(own_namespace: bool) -> Vec<Sysctl> {
    if !own_namespace {
        return vec![];
    }
    [
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
        "net.bridge.bridge-nf-call-arptables",
    ]
    .into_iter()
    .map(|key| Sysctl { key, value: "0" })
    .collect()
}

/// The writes that bring `current` (key → value, `None` when the kernel has no such key) to
/// `wanted`: keys that exist and differ (compared without surrounding whitespace). Keys
/// missing from `current` were not read and are written.
pub fn plan_sysctls(wanted: &[Sysctl], current: &BTreeMap<&str, Option<String>>) -> Vec<Sysctl> {
    wanted
        .iter()
        .filter(|s| match current.get(s.key) {
            Some(None) => false,
            Some(Some(v)) => v.trim() != s.value,
            None => true,
        })
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_sysctls_should_turn_every_bridge_netfilter_switch_off() {
        let got: BTreeMap<&str, &str> = overlay_sysctls(true)
            .into_iter()
            .map(|s| (s.key, s.value))
            .collect();
        let want = BTreeMap::from([
            ("net.bridge.bridge-nf-call-arptables", "0"),
            ("net.bridge.bridge-nf-call-ip6tables", "0"),
            ("net.bridge.bridge-nf-call-iptables", "0"),
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn an_agent_in_the_hosts_namespace_should_leave_its_sysctls_alone() {
        assert!(overlay_sysctls(false).is_empty());
        let current = BTreeMap::from([(
            "net.bridge.bridge-nf-call-iptables",
            Some("1\n".to_string()),
        )]);
        assert!(plan_sysctls(&overlay_sysctls(false), &current).is_empty());
    }

    #[test]
    fn plan_should_write_only_keys_that_exist_and_differ() {
        let wanted = overlay_sysctls(true);
        let current = BTreeMap::from([
            (
                "net.bridge.bridge-nf-call-iptables",
                Some("1\n".to_string()),
            ),
            (
                "net.bridge.bridge-nf-call-ip6tables",
                Some("0\n".to_string()),
            ),
            ("net.bridge.bridge-nf-call-arptables", None),
        ]);
        assert_eq!(
            plan_sysctls(&wanted, &current),
            vec![Sysctl {
                key: "net.bridge.bridge-nf-call-iptables",
                value: "0"
            }]
        );
    }

    #[test]
    fn plan_should_be_empty_when_converged_or_when_the_kernel_has_no_br_netfilter() {
        let wanted = overlay_sysctls(true);
        let converged: BTreeMap<&str, Option<String>> = wanted
            .iter()
            .map(|s| (s.key, Some(format!("{}\n", s.value))))
            .collect();
        assert!(plan_sysctls(&wanted, &converged).is_empty());
        let absent: BTreeMap<&str, Option<String>> = wanted.iter().map(|s| (s.key, None)).collect();
        assert!(plan_sysctls(&wanted, &absent).is_empty());
    }

    #[test]
    fn plan_should_write_keys_that_were_not_read() {
        let wanted = overlay_sysctls(true);
        assert_eq!(plan_sysctls(&wanted, &BTreeMap::new()), wanted);
    }
}
