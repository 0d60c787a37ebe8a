//! etcd key layout. Every key lives below one root (`/shoal/v1` by default; tests use a
//! unique root each so they can share one etcd).
//!
//! ```text
//! <root>/networks/<name>                 Network
//! <root>/services/<name>                 Service
//! <root>/nodes/<name>                    Node
//! <root>/tasks/<node|_unassigned>/<id>   Task (an agent watches its node's prefix)
//! <root>/endpoints/<network>/<service>   Endpoints (agents watch their networks' prefixes)
//! <root>/leases/nodes/<name>             liveness key bound to the node agent's lease
//! <root>/leader                          controller leader election (bound to a lease)
//! <root>/ipam/subnets/<a.b.c.d-len>      subnet -> network (CAS-allocated)
//! <root>/ipam/vnis/<vni>                 VNI -> network
//! <root>/ipam/ips/<network>/<a.b.c.d>    address -> owner (task id or vip/<service>)
//! <root>/secrets/agent-token             token the API server presents to node agents
//! <root>/private/tokens/<name>           API token: name, role, sha256 of the token, createdAt
//! <root>/private/join-token              the current join secret
//! <root>/private/revoked/<node>          certificates of the node issued up to then are refused
//! ```
//!
//! Nothing below `<root>/secrets/` or `<root>/private/` is served by the HTTP API, and no
//! node's etcd role can read `<root>/private/`.

use crate::object::{Object, Resource};

/// The default root of every key.
pub const DEFAULT_ROOT: &str = "/shoal/v1";

/// Builds keys below one root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new(DEFAULT_ROOT)
    }
}

/// So that functions taking "anything that knows the key layout" (the store's batches
/// take a `Store` or its `Keys`) accept a `Keys` itself.
impl AsRef<Keys> for Keys {
    fn as_ref(&self) -> &Keys {
        self
    }
}

impl Keys {
    /// Keys below `root` (no trailing slash).
    pub fn new(root: impl Into<String>) -> Self {
        let root = root.into().trim_end_matches('/').to_string();
        Keys { root }
    }

    /// The root.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `<root>/<plural>/`: the prefix of every object of a kind.
    pub fn prefix<S: Resource>(&self) -> String {
        format!("{}/{}/", self.root, S::PLURAL)
    }

    /// The key of one object.
    pub fn key<S: Resource>(&self, obj: &Object<S>) -> String {
        format!("{}{}", self.prefix::<S>(), obj.key_suffix())
    }

    /// The key of a kind whose key is its name (everything but tasks and endpoints).
    pub fn named<S: Resource>(&self, name: &str) -> String {
        format!("{}{}", self.prefix::<S>(), name)
    }

    /// The prefix of one node's tasks (what its agent watches).
    pub fn node_tasks(&self, node: &str) -> String {
        format!("{}/tasks/{}/", self.root, node)
    }

    /// The prefix of every Endpoints object of one network.
    pub fn network_endpoints(&self, network: &str) -> String {
        format!("{}/endpoints/{}/", self.root, network)
    }

    /// The prefix of node liveness keys.
    pub fn node_leases(&self) -> String {
        format!("{}/leases/nodes/", self.root)
    }

    /// The liveness key of one node, bound to its agent's lease.
    pub fn node_lease(&self, node: &str) -> String {
        format!("{}{}", self.node_leases(), node)
    }

    /// The leader-election key.
    pub fn leader(&self) -> String {
        format!("{}/leader", self.root)
    }

    /// The allocation record of a subnet.
    pub fn subnet(&self, cidr: &ipnetwork::Ipv4Network) -> String {
        format!(
            "{}/ipam/subnets/{}-{}",
            self.root,
            cidr.network(),
            cidr.prefix()
        )
    }

    /// The prefix of subnet allocations.
    pub fn subnets(&self) -> String {
        format!("{}/ipam/subnets/", self.root)
    }

    /// The allocation record of a VNI.
    pub fn vni(&self, vni: u32) -> String {
        format!("{}/ipam/vnis/{vni:08}", self.root)
    }

    /// The prefix of VNI allocations.
    pub fn vnis(&self) -> String {
        format!("{}/ipam/vnis/", self.root)
    }

    /// The allocation record of one address on one network.
    pub fn ip(&self, network: &str, ip: std::net::Ipv4Addr) -> String {
        format!("{}{}", self.network_ips(network), ip)
    }

    /// The cluster token the API server presents to node agents (`Authorization: Bearer`);
    /// created once, by whichever component needs it first, and never served by the API.
    pub fn agent_token(&self) -> String {
        format!("{}/secrets/agent-token", self.root)
    }

    /// `<root>/private/`: what only the controllers may read (no node role covers it).
    pub fn private(&self) -> String {
        format!("{}/private/", self.root)
    }

    /// The record of the API token `name` (its role and the sha256 of the token, never the
    /// token itself).
    pub fn api_token(&self, name: &str) -> String {
        format!("{}{}", self.api_tokens(), name)
    }

    /// The prefix of every API token record.
    pub fn api_tokens(&self) -> String {
        format!("{}tokens/", self.private())
    }

    /// The current join secret (node join tokens carry it).
    pub fn join_token(&self) -> String {
        format!("{}join-token", self.private())
    }

    /// The revocation record of a removed node.
    pub fn revoked(&self, node: &str) -> String {
        format!("{}revoked/{}", self.private(), node)
    }

    /// The prefix of one network's address allocations.
    pub fn network_ips(&self, network: &str) -> String {
        format!("{}/ipam/ips/{}/", self.root, network)
    }
}

/// The end of the etcd range that covers every key starting with `prefix`.
pub fn prefix_range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Network, NetworkSpec, Task, TaskSpec};

    #[test]
    fn keys_follow_the_documented_layout() {
        let k = Keys::default();
        assert_eq!(
            k.key(&Network::new("appnet", NetworkSpec::default())),
            "/shoal/v1/networks/appnet"
        );
        let t = Task::new(
            "t1",
            TaskSpec {
                node: Some("node-1".into()),
                ..Default::default()
            },
        );
        assert_eq!(k.key(&t), "/shoal/v1/tasks/node-1/t1");
        assert_eq!(k.node_tasks("node-1"), "/shoal/v1/tasks/node-1/");
        assert_eq!(
            k.ip("appnet", "10.0.0.2".parse().unwrap()),
            "/shoal/v1/ipam/ips/appnet/10.0.0.2"
        );
        assert_eq!(Keys::new("/t/").prefix::<NetworkSpec>(), "/t/networks/");
    }

    #[test]
    fn private_keys_sit_below_one_prefix() {
        let k = Keys::default();
        assert_eq!(k.private(), "/shoal/v1/private/");
        assert_eq!(k.api_tokens(), "/shoal/v1/private/tokens/");
        assert_eq!(k.api_token("ci"), "/shoal/v1/private/tokens/ci");
        assert_eq!(k.join_token(), "/shoal/v1/private/join-token");
        assert_eq!(k.revoked("node-2"), "/shoal/v1/private/revoked/node-2");
        for key in [k.api_token("ci"), k.join_token(), k.revoked("n")] {
            assert!(key.starts_with(&k.private()), "{key}");
        }
    }

    #[test]
    fn prefix_range_end_increments_last_byte() {
        assert_eq!(prefix_range_end("/a/"), b"/a0".to_vec());
    }
}
