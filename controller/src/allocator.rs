//! Network allocator: subnets, VNIs and gateways for Networks.
//!
//! Owns `Network.status` and the records `<root>/ipam/subnets/<cidr>` and `ipam/vnis/<vni>`
//! (holding the network's name); it also releases address records (`ipam/ips/…`) whose
//! owner is gone. Addresses inside a network are picked by [`crate::ipam`] and claimed by
//! the stage that records them (orchestrator: VIPs and tasks; nodes: ingress addresses).
//! Key layout and stage table: docs/architecture.md. Invariants:
//! - every allocation is a claim (create with `create_revision == 0`) written in the same
//!   transaction as the object that records it (Network.status, a Task, Service.status),
//!   so no subnet, VNI or address is ever handed out twice, not even across a leader
//!   change, and none is recorded without its claim;
//! - claims are released in the same transaction that drops their last user (the task's
//!   deletion, the service's deletion, the network's reconcile after deletion);
//! - subnets never overlap: a user subnet overlapping another network's is refused with
//!   `status.phase: Failed` and a message, as is an exhausted pool; neither is retried
//!   until something changes (no hot loop);
//! - the `ingress` network is 10.255.0.0/16 (configurable) with VNI 4096; other networks
//!   get VNIs from 4097 and their gateway is the first host address unless set;
//! - the `ingress` network is always present: when its key is reconciled and it is missing
//!   (first start, or deleted in etcd by hand: users cannot delete it through the API), it
//!   is created again, keeping its subnet and VNI records;
//! - likewise the gateway bridge `gwbridge` (driver `bridge`, scope `local`, 172.18.0.0/16):
//!   the egress bridge every node has, shown as a Network as Swarm's `docker network ls`
//!   does. It has no VNI; its subnet is claimed like any other, so no overlay takes it.
//!
//! The decisions (`plan_subnet`, `plan_vni`, `leaked_addresses`) are pure functions over
//! plain values; `reconcile_network` does the etcd I/O.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnetwork::Ipv4Network;
use shoal_api_types::network::{
    parse_cidr, BRIDGE_DRIVER, GATEWAY_BRIDGE_NETWORK, GATEWAY_BRIDGE_SUBNET, INGRESS_NETWORK,
    SCOPE_LOCAL,
};
use shoal_api_types::{Network, NetworkSpec, NetworkStatus};

use crate::context::Context;
use crate::ipam::gateway;
use crate::reconcile::cache::Claim;
use shoal_store::Batch;

use crate::reconcile::{Action, ControllerError};

/// The VNI of the ingress network.
pub const INGRESS_VNI: u32 = 4096;
/// The first VNI of other networks.
pub const FIRST_VNI: u32 = 4097;
/// The largest VXLAN network identifier.
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// Why an allocation cannot be made. None of these go away by retrying; they are shown to
/// users in a status and revisited when something changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// No free subnet of the pool's mask length is left.
    #[error(
        "address pool {pool} is exhausted: all {total} /{mask} subnets overlap existing networks; \
         delete unused networks, set spec.subnet explicitly, or start the controller with a larger \
         --default-addr-pool"
    )]
    PoolExhausted {
        /// The pool.
        pool: Ipv4Network,
        /// The mask length carved out of it.
        mask: u8,
        /// How many subnets the pool holds.
        total: u64,
    },
    /// The pool cannot be carved at this mask length.
    #[error("--default-addr-pool-mask-length /{mask} is not inside pool {pool}")]
    BadMask {
        /// The pool.
        pool: Ipv4Network,
        /// The mask length.
        mask: u8,
    },
    /// The requested subnet overlaps another network's.
    #[error("subnet {subnet} overlaps subnet {other} of network {network:?}; choose a subnet that overlaps no other network")]
    Overlap {
        /// What was asked for.
        subnet: Ipv4Network,
        /// The subnet in the way.
        other: Ipv4Network,
        /// The network that holds it.
        network: String,
    },
    /// The requested subnet cannot be parsed (validation should have caught it).
    #[error("spec.subnet: {0}")]
    BadSubnet(String),
    /// The ingress VNI is held by another network.
    #[error("VNI {vni} is held by network {network:?}")]
    VniTaken {
        /// The VNI.
        vni: u32,
        /// Its holder.
        network: String,
    },
    /// Every VNI is in use.
    #[error("no VXLAN network identifier is free")]
    VnisExhausted,
}

impl AllocError {
    /// Allocation errors never succeed on a plain retry.
    pub fn is_temporary(&self) -> bool {
        false
    }
}

fn range(net: Ipv4Network) -> (u64, u64) {
    let start = u32::from(net.network()) as u64;
    (start, start + (1u64 << (32 - net.prefix())) - 1)
}

/// Chooses a subnet: `requested` if it overlaps nothing in `taken` (other networks'
/// subnets, with their names), else the first `/mask` of `pool` that overlaps neither
/// `taken` nor `reserved`.
pub fn plan_subnet(
    requested: Option<Ipv4Network>,
    pool: Ipv4Network,
    mask: u8,
    taken: &[(Ipv4Network, String)],
    reserved: &[Ipv4Network],
) -> Result<Ipv4Network, AllocError> {
    if let Some(req) = requested {
        let (s, e) = range(req);
        for (other, network) in taken {
            let (os, oe) = range(*other);
            if s <= oe && os <= e {
                return Err(AllocError::Overlap {
                    subnet: req,
                    other: *other,
                    network: network.clone(),
                });
            }
        }
        return Ok(req);
    }
    if mask < pool.prefix() || mask > 30 {
        return Err(AllocError::BadMask { pool, mask });
    }
    let size = 1u64 << (32 - mask);
    let (pool_start, pool_end) = range(pool);
    let mut busy: Vec<(u64, u64)> = taken
        .iter()
        .map(|(n, _)| range(*n))
        .chain(reserved.iter().map(|n| range(*n)))
        .collect();
    busy.sort_unstable();
    let mut cand = pool_start;
    for (s, e) in busy {
        if e < cand {
            continue;
        }
        if s > cand + size - 1 {
            break;
        }
        // Overlaps the candidate: jump past it, aligned to the mask.
        cand = (e + 1).div_ceil(size) * size;
        if cand + size - 1 > pool_end {
            break;
        }
    }
    if cand + size - 1 > pool_end {
        return Err(AllocError::PoolExhausted {
            pool,
            mask,
            total: (pool_end - pool_start + 1) / size,
        });
    }
    Ok(Ipv4Network::new(Ipv4Addr::from(cand as u32), mask).expect("aligned"))
}

/// Chooses a VNI: [`INGRESS_VNI`] for the ingress network, else the lowest free from
/// [`FIRST_VNI`]. `own` is what the network already holds (kept).
pub fn plan_vni(
    ingress: bool,
    own: Option<u32>,
    taken: &BTreeMap<u32, Claim>,
    name: &str,
) -> Result<u32, AllocError> {
    if let Some(v) = own {
        return Ok(v);
    }
    if ingress {
        return match taken.get(&INGRESS_VNI) {
            Some(c) if c.owner != name => Err(AllocError::VniTaken {
                vni: INGRESS_VNI,
                network: c.owner.clone(),
            }),
            _ => Ok(INGRESS_VNI),
        };
    }
    let mut want = FIRST_VNI;
    for (&v, _) in taken.range(FIRST_VNI..) {
        if v != want {
            break;
        }
        want += 1;
    }
    if want > MAX_VNI {
        return Err(AllocError::VnisExhausted);
    }
    Ok(want)
}

/// The spec of the ingress network the controller creates.
pub fn ingress_network(subnet: Ipv4Network) -> Network {
    let mut net = Network::new(
        INGRESS_NETWORK,
        NetworkSpec {
            driver: "overlay".into(),
            subnet: Some(subnet.to_string()),
            ingress: true,
            ..Default::default()
        },
    );
    net.apply_defaults();
    net
}

/// The spec of the gateway bridge network the controller keeps.
pub fn gateway_bridge_network() -> Network {
    let mut net = Network::new(
        GATEWAY_BRIDGE_NETWORK,
        NetworkSpec {
            driver: BRIDGE_DRIVER.into(),
            subnet: Some(GATEWAY_BRIDGE_SUBNET.into()),
            ..Default::default()
        },
    );
    net.apply_defaults();
    net
}

/// Reconciles one network: allocates and records its subnet, gateway and VNI, or says in
/// its status why it cannot; after deletion releases its records.
pub async fn reconcile_network(name: String, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    ctx.sync().await;
    let leaked = release_leaked(&ctx, &name);
    let result = match network_step(&ctx, &name) {
        Step::Commit(txn) => ctx
            .writer
            .commit(txn)
            .await
            .map(|_| Action::AwaitChange)
            .map_err(Into::into),
        Step::Fail(net, err) => fail(&ctx, &net, err).await,
    };
    ctx.writer.commit_all(leaked, 4).await?;
    result
}

/// Address records of `network` whose owner is gone: neither a task nor the VIP of a
/// service that exists. Claims are created and deleted together with their owner, so these
/// only come from owners removed by hand; they are released, compared on their revision.
pub fn leaked_addresses(
    claims: &std::collections::HashMap<Ipv4Addr, Claim>,
    owner_exists: impl Fn(&str) -> bool,
) -> Vec<(Ipv4Addr, i64)> {
    let mut out: Vec<(Ipv4Addr, i64)> = claims
        .iter()
        .filter(|(_, c)| !owner_exists(&c.owner))
        .map(|(ip, c)| (*ip, c.revision))
        .collect();
    out.sort();
    out
}

fn release_leaked(ctx: &Context, network: &str) -> Vec<Batch> {
    let world = ctx.cache.read();
    let Some(claims) = world.ipam.ips.get(network) else {
        return vec![];
    };
    let exists = |owner: &str| {
        if let Some(service) = owner.strip_prefix("vip/") {
            world.services.contains_key(service)
        } else if let Some(node) = owner.strip_prefix("node/") {
            world.nodes.contains_key(node)
        } else {
            world.tasks.contains_key(owner)
        }
    };
    leaked_addresses(claims, exists)
        .into_iter()
        .map(|(ip, rev)| {
            tracing::info!(%network, %ip, "releasing an address whose owner is gone");
            let mut txn = Batch::new();
            txn.delete_raw(ctx.keys.ip(network, ip), rev);
            txn
        })
        .collect()
}

enum Step {
    Commit(Batch),
    Fail(Box<Network>, AllocError),
}

/// Decides a network's allocation from the cache.
fn network_step(ctx: &Context, name: &str) -> Step {
    let name = name.to_string();
    let keys = ctx.keys.clone();
    {
        let world = ctx.cache.read();
        let mut txn = Batch::new();
        let Some(net) = world.networks.get(&name).cloned() else {
            if name == INGRESS_NETWORK {
                // The system's network is kept present: created at first start, created
                // again if deleted behind the API's back. Its subnet and VNI records are
                // kept, so it comes back with the same addressing.
                if world.ipam.vnis.contains_key(&INGRESS_VNI) {
                    tracing::warn!(
                        subnet = %ctx.config.ingress_subnet,
                        "the ingress network was deleted behind the API's back; creating it again"
                    );
                } else {
                    tracing::info!(subnet = %ctx.config.ingress_subnet, "creating the ingress network");
                }
                txn.create(&keys, &ingress_network(ctx.config.ingress_subnet));
                return Step::Commit(txn);
            }
            if name == GATEWAY_BRIDGE_NETWORK {
                tracing::info!(
                    subnet = GATEWAY_BRIDGE_SUBNET,
                    "creating the gateway bridge network"
                );
                txn.create(&keys, &gateway_bridge_network());
                return Step::Commit(txn);
            }
            // Deleted: release what it held.
            for (subnet, c) in world.ipam.subnets.iter().filter(|(_, c)| c.owner == name) {
                txn.delete_raw(keys.subnet(subnet), c.revision);
            }
            for (vni, c) in world.ipam.vnis.iter().filter(|(_, c)| c.owner == name) {
                txn.delete_raw(keys.vni(*vni), c.revision);
            }
            if !txn.is_empty() {
                tracing::info!(network = %name, "network deleted; releasing its subnet and VNI");
            }
            return Step::Commit(txn);
        };
        let own_subnets: Vec<Ipv4Network> = world
            .ipam
            .subnets
            .iter()
            .filter(|(_, c)| c.owner == name)
            .map(|(s, _)| *s)
            .collect();
        let own_vni = world
            .ipam
            .vnis
            .iter()
            .find(|(_, c)| c.owner == name)
            .map(|(v, _)| *v);
        let taken: Vec<(Ipv4Network, String)> = world
            .ipam
            .subnets
            .iter()
            .filter(|(_, c)| c.owner != name)
            .map(|(s, c)| (*s, c.owner.clone()))
            .collect();
        let requested = match net.spec.subnet.as_deref().map(parse_cidr).transpose() {
            Ok(r) => r,
            Err(msg) => return Step::Fail(Box::new((*net).clone()), AllocError::BadSubnet(msg)),
        };
        // Keep a subnet we already hold if it still fits the spec.
        let kept = own_subnets
            .iter()
            .copied()
            .find(|s| requested.is_none_or(|r| r == *s));
        let subnet = match kept {
            Some(s) => s,
            None => {
                let reserved = if net.spec.ingress {
                    vec![]
                } else {
                    vec![ctx.config.ingress_subnet]
                };
                match plan_subnet(
                    requested,
                    ctx.config.default_addr_pool,
                    ctx.config.default_addr_pool_mask_length,
                    &taken,
                    &reserved,
                ) {
                    Ok(s) => s,
                    Err(e) => return Step::Fail(Box::new((*net).clone()), e),
                }
            }
        };
        // A bridge (the gateway bridge) is local to each node: no VXLAN, no VNI.
        let bridge = net.spec.driver == BRIDGE_DRIVER;
        let vni = if bridge {
            None
        } else {
            match plan_vni(net.spec.ingress, own_vni, &world.ipam.vnis, &name) {
                Ok(v) => Some(v),
                Err(e) => return Step::Fail(Box::new((*net).clone()), e),
            }
        };
        if kept.is_none() {
            txn.claim(keys.subnet(&subnet), &name);
        }
        if let (None, Some(vni)) = (own_vni, vni) {
            txn.claim(keys.vni(vni), &name);
        }
        for s in own_subnets.iter().filter(|s| **s != subnet) {
            txn.delete_raw(keys.subnet(s), world.ipam.subnets[s].revision);
        }
        let status = NetworkStatus {
            subnet: Some(subnet.to_string()),
            gateway: Some(gateway(subnet, net.spec.gateway.as_deref()).to_string()),
            vni,
            phase: "Ready".into(),
            message: String::new(),
            observed_generation: net.metadata.generation,
            scope: if bridge {
                SCOPE_LOCAL.into()
            } else {
                net.status.scope.clone()
            },
        };
        if status != net.status {
            let mut next = (*net).clone();
            next.status = status;
            txn.update(&keys, &next);
        }
        if !txn.is_empty() {
            tracing::info!(network = %name, %subnet, ?vni, "network allocated");
        }
        Step::Commit(txn)
    }
}

/// Records an allocation failure in the network's status (once) and waits for a change.
async fn fail(ctx: &Context, net: &Network, err: AllocError) -> Result<Action, ControllerError> {
    let message = err.to_string();
    if net.status.phase != "Failed"
        || net.status.message != message
        || net.status.observed_generation != net.metadata.generation
    {
        tracing::warn!(network = %net.metadata.name, error = %message, "network allocation failed");
        let mut next = net.clone();
        next.status = NetworkStatus {
            phase: "Failed".into(),
            message,
            observed_generation: net.metadata.generation,
            ..Default::default()
        };
        let mut txn = Batch::new();
        txn.update(&ctx.keys, &next);
        ctx.writer.commit(txn).await?;
    }
    Ok(Action::AwaitChange)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn claims(v: &[u32]) -> BTreeMap<u32, Claim> {
        v.iter()
            .map(|v| {
                (
                    *v,
                    Claim {
                        owner: format!("n{v}"),
                        revision: 1,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn allocator_should_carve_the_first_free_subnet_from_the_pool() {
        let pool = net("10.0.0.0/8");
        assert_eq!(
            plan_subnet(None, pool, 24, &[], &[]).unwrap(),
            net("10.0.0.0/24")
        );
        let taken = vec![
            (net("10.0.0.0/24"), "a".to_string()),
            (net("10.0.1.0/24"), "b".to_string()),
            (net("10.0.2.0/23"), "c".to_string()),
        ];
        assert_eq!(
            plan_subnet(None, pool, 24, &taken, &[]).unwrap(),
            net("10.0.4.0/24")
        );
        // A big subnet in the middle is skipped whole, and so is a reserved one.
        let taken = vec![(net("10.0.0.0/16"), "big".to_string())];
        assert_eq!(
            plan_subnet(None, pool, 24, &taken, &[net("10.1.0.0/16")]).unwrap(),
            net("10.2.0.0/24")
        );
        // Larger subnets are aligned.
        let taken = vec![(net("10.0.0.0/24"), "a".to_string())];
        assert_eq!(
            plan_subnet(None, pool, 20, &taken, &[]).unwrap(),
            net("10.0.16.0/20")
        );
    }

    #[test]
    fn allocator_should_report_pool_exhaustion() {
        let pool = net("10.9.0.0/23");
        let taken = vec![
            (net("10.9.0.0/24"), "a".to_string()),
            (net("10.9.1.0/24"), "b".to_string()),
        ];
        let err = plan_subnet(None, pool, 24, &taken, &[]).unwrap_err();
        assert_eq!(
            err,
            AllocError::PoolExhausted {
                pool,
                mask: 24,
                total: 2
            }
        );
        assert!(
            err.to_string()
                .starts_with("address pool 10.9.0.0/23 is exhausted"),
            "{err}"
        );
        assert!(!err.is_temporary());
    }

    #[test]
    fn allocator_should_refuse_an_overlapping_user_subnet() {
        let taken = vec![(net("10.1.2.0/24"), "front".to_string())];
        let err =
            plan_subnet(Some(net("10.1.0.0/16")), net("10.0.0.0/8"), 24, &taken, &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "subnet 10.1.0.0/16 overlaps subnet 10.1.2.0/24 of network \"front\"; choose a subnet that overlaps no other network"
        );
        assert_eq!(
            plan_subnet(Some(net("10.1.3.0/24")), net("10.0.0.0/8"), 24, &taken, &[]).unwrap(),
            net("10.1.3.0/24")
        );
    }

    #[test]
    fn allocator_should_find_addresses_whose_owner_is_gone() {
        let claim = |o: &str| Claim {
            owner: o.into(),
            revision: 7,
        };
        let claims = std::collections::HashMap::from([
            ("10.0.0.2".parse().unwrap(), claim("task-a")),
            ("10.0.0.3".parse().unwrap(), claim("task-gone")),
            ("10.0.0.4".parse().unwrap(), claim("vip/api")),
            ("10.0.0.5".parse().unwrap(), claim("vip/gone")),
        ]);
        let exists = |o: &str| matches!(o, "task-a" | "vip/api");
        let got = leaked_addresses(&claims, exists);
        assert_eq!(
            got,
            vec![
                ("10.0.0.3".parse().unwrap(), 7),
                ("10.0.0.5".parse().unwrap(), 7)
            ]
        );
    }

    #[test]
    fn allocator_should_give_vnis_from_4097_and_4096_to_ingress() {
        assert_eq!(plan_vni(false, None, &claims(&[]), "a").unwrap(), 4097);
        assert_eq!(
            plan_vni(false, None, &claims(&[4096, 4097, 4098, 4100]), "a").unwrap(),
            4099
        );
        assert_eq!(
            plan_vni(true, None, &claims(&[4097]), "ingress").unwrap(),
            4096
        );
        assert!(plan_vni(true, None, &claims(&[4096]), "ingress").is_err());
        assert_eq!(
            plan_vni(false, Some(5000), &claims(&[]), "a").unwrap(),
            5000
        );
    }
}
