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
//! <root>/settings/cluster                ClusterSettings (reserved ports), written by the leader
//! <root>/private/tokens/<name>           API token record {name, role, sha256, createdAt}
//! <root>/private/join-token              the current join secret {secret, createdAt}
//! <root>/private/revoked/<node>          {revokedAt}: the node's certificates up to then are refused
//! <root>/secrets/<name>                  Secret (metadata, size, fingerprint; never the data)
//! <root>/configs/<name>                  Config (likewise)
//! <root>/private/payloads/secrets/<name> a Secret's payload, encrypted (AES-256-GCM)
//! <root>/private/payloads/configs/<name> a Config's payload
//! ```
//!
//! Nothing below `<root>/private/` is served by the HTTP API or readable by a node's etcd
//! role: only the controllers read it.
//!
//! Who may touch which key in etcd (etcd users and roles, one identity per client
//! certificate CN) is decided here too, as plain values the store turns into etcd roles:
//!
//! | etcd user | role | may |
//! | --- | --- | --- |
//! | [`ROOT_USER`] | `root` | everything (etcd requires it before `auth enable`; nobody holds its certificate) |
//! | [`CONTROLLER_USER`] | `root` | everything: the controllers, which also manage node users |
//! | `<node>` | [`node_role`]`(node)` | [`node_permissions`]: read networks, services, nodes, endpoints, settings; write its own Node, tasks and liveness key |
//! | [`FLEET_USER`] | [`FLEET_USER`] | [`fleet_permissions`]: a node's reads, and every node's writes (hollow fleets, testing only) |
//!
//! No role but `root` reaches a key outside those ranges (`ipam/`, `leader`, `private/`…).
//! The user names are reserved: no Node may take them
//! ([`crate::node::RESERVED_NODE_NAMES`]).

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

    /// `<root>/private/`: what only controllers may read (tokens, the join secret,
    /// revocations).
    pub fn private(&self) -> String {
        format!("{}/private/", self.root)
    }

    /// The prefix of API token records.
    pub fn api_tokens(&self) -> String {
        format!("{}tokens/", self.private())
    }

    /// The record of the API token `name` (its sha256, never the token).
    pub fn api_token(&self, name: &str) -> String {
        format!("{}{name}", self.api_tokens())
    }

    /// The current join secret.
    pub fn join_token(&self) -> String {
        format!("{}join-token", self.private())
    }

    /// The revocation record of `node`.
    pub fn revoked(&self, node: &str) -> String {
        format!("{}revoked/{node}", self.private())
    }

    /// The stored payload of a Secret (`S` = [`crate::payload::SecretSpec`], encrypted) or a
    /// Config (`ConfigSpec`, plain): `<root>/private/payloads/<plural>/<name>`.
    pub fn payload<S: Resource>(&self, name: &str) -> String {
        format!("{}payloads/{}/{name}", self.private(), S::PLURAL)
    }

    /// The key of the one ClusterSettings object (`<root>/settings/cluster`).
    pub fn cluster_settings(&self) -> String {
        self.named::<crate::settings::ClusterSettingsSpec>(crate::settings::CLUSTER_SETTINGS)
    }

    /// The prefix of one network's address allocations.
    pub fn network_ips(&self, network: &str) -> String {
        format!("{}/ipam/ips/{}/", self.root, network)
    }
}

/// The etcd user of the controllers (the CN of `controller.crt`); it holds the `root` role.
pub const CONTROLLER_USER: &str = "shoal-controller";

/// etcd's superuser, which must exist (with the `root` role) before auth is enabled.
pub const ROOT_USER: &str = "root";

/// etcd's built-in all-powerful role.
pub const ROOT_ROLE: &str = "root";

/// The etcd user (and role) of hollow fleets: one identity writes for many nodes
/// (benchmarks in testing mode only).
pub const FLEET_USER: &str = "shoal-hollow-fleet";

/// The etcd role of one node's user (the user is the node's name).
pub fn node_role(node: &str) -> String {
    format!("shoal-node-{node}")
}

/// What an etcd permission allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// Range reads and watches.
    Read,
    /// Reads, watches, puts and deletes (and so transactions over them).
    ReadWrite,
}

/// One etcd role permission: `access` on `key` alone, or on `[key, range_end)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission {
    /// Read or read-write.
    pub access: Access,
    /// The key, or the start of the range.
    pub key: String,
    /// The end of the range (exclusive); `None` for the key alone.
    pub range_end: Option<Vec<u8>>,
}

impl Permission {
    /// `access` on every key starting with `prefix`.
    pub fn prefix(access: Access, prefix: impl Into<String>) -> Permission {
        let key = prefix.into();
        let range_end = Some(prefix_range_end(&key));
        Permission {
            access,
            key,
            range_end,
        }
    }

    /// `access` on `key` alone.
    pub fn key(access: Access, key: impl Into<String>) -> Permission {
        Permission {
            access,
            key: key.into(),
            range_end: None,
        }
    }

    /// Whether the permission lets `access` (read or write) touch `key`.
    pub fn allows(&self, access: Access, key: &str) -> bool {
        if access == Access::ReadWrite && self.access != Access::ReadWrite {
            return false;
        }
        match &self.range_end {
            None => self.key == key,
            Some(end) => key >= self.key.as_str() && key.as_bytes() < end.as_slice(),
        }
    }
}

/// What every node (and the hollow fleet) reads: the cluster's shared state, and the
/// cluster settings (a prefix, so that agents can watch it). The store's revision probe
/// (`Store::revision`) reads below `nodes/` too.
fn node_reads(keys: &Keys) -> Vec<Permission> {
    use crate::{ClusterSettingsSpec, EndpointsSpec, NetworkSpec, NodeSpec, ServiceSpec};
    vec![
        Permission::prefix(Access::Read, keys.prefix::<NetworkSpec>()),
        Permission::prefix(Access::Read, keys.prefix::<ServiceSpec>()),
        Permission::prefix(Access::Read, keys.prefix::<NodeSpec>()),
        Permission::prefix(Access::Read, keys.prefix::<EndpointsSpec>()),
        Permission::prefix(Access::Read, keys.prefix::<ClusterSettingsSpec>()),
    ]
}

/// Each range once: etcd keeps one access per (key, range end) in a role, so a range
/// granted twice keeps only its last grant. A read-write grant replaces a read one.
fn merged(perms: Vec<Permission>) -> Vec<Permission> {
    let mut out: Vec<Permission> = Vec::with_capacity(perms.len());
    for p in perms {
        match out
            .iter_mut()
            .find(|o| o.key == p.key && o.range_end == p.range_end)
        {
            Some(o) => o.access = o.access.max(p.access),
            None => out.push(p),
        }
    }
    out
}

/// The permissions of `node`'s role ([`node_role`]): read networks, services, nodes,
/// endpoints and the cluster settings; read and write its own tasks (a prefix: a task's status is not a key of its
/// own yet, so the node can write its tasks' whole objects), its own Node and its own
/// liveness key. Nothing else: not another node's tasks, not `ipam/`, `leader`,
/// `secrets/` or `private/`. Each range appears once.
pub fn node_permissions(keys: &Keys, node: &str) -> Vec<Permission> {
    use crate::NodeSpec;
    let mut perms = node_reads(keys);
    perms.extend([
        Permission::prefix(Access::ReadWrite, keys.node_tasks(node)),
        Permission::key(Access::ReadWrite, keys.named::<NodeSpec>(node)),
        Permission::key(Access::ReadWrite, keys.node_lease(node)),
    ]);
    merged(perms)
}

/// The permissions of the hollow fleet's role ([`FLEET_USER`]): a node's reads, and read
/// and write every Node, every node's tasks and every liveness key (one identity runs
/// many hollow nodes; testing mode only). Each range appears once (`nodes/` read-write).
pub fn fleet_permissions(keys: &Keys) -> Vec<Permission> {
    use crate::NodeSpec;
    let mut perms = node_reads(keys);
    perms.extend([
        Permission::prefix(Access::ReadWrite, keys.prefix::<NodeSpec>()),
        Permission::prefix(Access::ReadWrite, format!("{}/tasks/", keys.root)),
        Permission::prefix(Access::ReadWrite, keys.node_leases()),
    ]);
    merged(perms)
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
        assert_eq!(k.private(), "/shoal/v1/private/");
        assert_eq!(k.api_tokens(), "/shoal/v1/private/tokens/");
        assert_eq!(k.api_token("ci"), "/shoal/v1/private/tokens/ci");
        assert_eq!(k.join_token(), "/shoal/v1/private/join-token");
        assert_eq!(k.revoked("node-1"), "/shoal/v1/private/revoked/node-1");
        assert_eq!(k.cluster_settings(), "/shoal/v1/settings/cluster");
    }

    fn allowed(perms: &[Permission], access: Access, key: &str) -> bool {
        perms.iter().any(|p| p.allows(access, key))
    }

    #[test]
    fn a_node_reads_shared_state_and_writes_only_its_own_keys() {
        let k = Keys::new("/r");
        let p = node_permissions(&k, "a");
        for key in [
            "/r/networks/appnet",
            "/r/services/web",
            "/r/nodes/b",
            "/r/endpoints/appnet/web",
            "/r/tasks/a/t1",
            "/r/settings/cluster",
        ] {
            assert!(allowed(&p, Access::Read, key), "read {key}");
        }
        for key in ["/r/tasks/a/t1", "/r/nodes/a", "/r/leases/nodes/a"] {
            assert!(allowed(&p, Access::ReadWrite, key), "write {key}");
        }
        for key in [
            "/r/tasks/b/t1",
            "/r/tasks/ab/t1",
            "/r/tasks/_unassigned/t1",
            "/r/nodes/b",
            "/r/nodes/ab",
            "/r/leases/nodes/b",
            "/r/services/web",
            "/r/networks/appnet",
            "/r/endpoints/appnet/web",
            "/r/settings/cluster",
        ] {
            assert!(!allowed(&p, Access::ReadWrite, key), "write {key}");
        }
        for key in [
            "/r/private/join-token",
            "/r/secrets/agent-token",
            "/r/ipam/ips/appnet/10.0.0.2",
            "/r/leader",
            "/r/tasks/b/t1",
            "/r/leases/nodes/b",
            "/other/networks/appnet",
        ] {
            assert!(!allowed(&p, Access::Read, key), "read {key}");
        }
    }

    #[test]
    fn node_permissions_are_prefixes_with_range_ends_or_single_keys() {
        let p = node_permissions(&Keys::new("/r"), "a");
        assert_eq!(
            p,
            vec![
                Permission::prefix(Access::Read, "/r/networks/"),
                Permission::prefix(Access::Read, "/r/services/"),
                Permission::prefix(Access::Read, "/r/nodes/"),
                Permission::prefix(Access::Read, "/r/endpoints/"),
                Permission::prefix(Access::Read, "/r/settings/"),
                Permission::prefix(Access::ReadWrite, "/r/tasks/a/"),
                Permission::key(Access::ReadWrite, "/r/nodes/a"),
                Permission::key(Access::ReadWrite, "/r/leases/nodes/a"),
            ]
        );
        assert_eq!(p[5].range_end.as_deref(), Some(&b"/r/tasks/a0"[..]));
        assert_eq!(node_role("a"), "shoal-node-a");
    }

    #[test]
    fn the_fleet_writes_every_node_but_reads_nothing_private() {
        let p = fleet_permissions(&Keys::new("/r"));
        for key in [
            "/r/nodes/hollow-1",
            "/r/tasks/hollow-2/t1",
            "/r/leases/nodes/hollow-3",
        ] {
            assert!(allowed(&p, Access::ReadWrite, key), "write {key}");
        }
        for key in ["/r/private/tokens/x", "/r/leader", "/r/ipam/vnis/00004097"] {
            assert!(!allowed(&p, Access::Read, key), "read {key}");
        }
        assert!(allowed(&p, Access::Read, "/r/settings/cluster"));
        assert!(!allowed(&p, Access::ReadWrite, "/r/services/web"));
        assert!(!allowed(&p, Access::ReadWrite, "/r/settings/cluster"));
    }

    #[test]
    fn every_range_appears_once_with_its_widest_access() {
        let k = Keys::new("/r");
        for perms in [node_permissions(&k, "a"), fleet_permissions(&k)] {
            let mut ranges: Vec<_> = perms.iter().map(|p| (&p.key, &p.range_end)).collect();
            let n = ranges.len();
            ranges.sort();
            ranges.dedup();
            assert_eq!(ranges.len(), n, "{perms:?}");
        }
        let nodes = fleet_permissions(&k)
            .into_iter()
            .find(|p| p.key == "/r/nodes/")
            .unwrap();
        assert_eq!(nodes.access, Access::ReadWrite);
    }

    #[test]
    fn private_keys_sit_below_one_prefix() {
        let k = Keys::default();
        assert_eq!(k.private(), "/shoal/v1/private/");
        assert_eq!(k.api_tokens(), "/shoal/v1/private/tokens/");
        assert_eq!(k.api_token("ci"), "/shoal/v1/private/tokens/ci");
        assert_eq!(k.join_token(), "/shoal/v1/private/join-token");
        assert_eq!(k.revoked("node-2"), "/shoal/v1/private/revoked/node-2");
        assert_eq!(
            k.payload::<crate::payload::SecretSpec>("pw"),
            "/shoal/v1/private/payloads/secrets/pw"
        );
        for key in [k.api_token("ci"), k.join_token(), k.revoked("n")] {
            assert!(key.starts_with(&k.private()), "{key}");
        }
    }

    #[test]
    fn prefix_range_end_increments_last_byte() {
        assert_eq!(prefix_range_end("/a/"), b"/a0".to_vec());
    }
}
