//! [`plan_peers`]: a pure diff of an overlay's FDB and neighbour entries — desired remote
//! tasks (from the Endpoints objects) against what the VXLAN device holds. Deletions come
//! first, so a MAC or IP that moved to another node is never briefly pointed two ways.

use std::collections::BTreeMap;

use super::names::mac_for_ip;
use super::types::{FdbEntry, NeighEntry, Peer, PeerEntries, PeerOp};

/// Operations that turn `observed` into exactly the entries `desired` needs. If `desired`
/// names one IP twice, the last one wins.
pub fn plan_peers(desired: &[Peer], observed: &PeerEntries) -> Vec<PeerOp> {
    let mut want_fdb: BTreeMap<[u8; 6], FdbEntry> = BTreeMap::new();
    let mut want_neigh: BTreeMap<std::net::Ipv4Addr, NeighEntry> = BTreeMap::new();
    for p in desired {
        let mac = mac_for_ip(p.ip);
        want_fdb.insert(mac, FdbEntry { mac, node: p.node });
        want_neigh.insert(p.ip, NeighEntry { ip: p.ip, mac });
    }
    let mut ops = Vec::new();
    for e in &observed.fdb {
        if want_fdb.get(&e.mac) != Some(e) {
            ops.push(PeerOp::DelFdb(*e));
        }
    }
    for e in &observed.neigh {
        if want_neigh.get(&e.ip) != Some(e) {
            ops.push(PeerOp::DelNeigh(*e));
        }
    }
    for e in want_fdb.values() {
        if !observed.fdb.contains(e) {
            ops.push(PeerOp::AddFdb(*e));
        }
    }
    for e in want_neigh.values() {
        if !observed.neigh.contains(e) {
            ops.push(PeerOp::AddNeigh(*e));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::types::peer;
    use std::net::Ipv4Addr;

    fn fdb(p: Peer) -> FdbEntry {
        FdbEntry {
            mac: mac_for_ip(p.ip),
            node: p.node,
        }
    }
    fn neigh(p: Peer) -> NeighEntry {
        NeighEntry {
            ip: p.ip,
            mac: mac_for_ip(p.ip),
        }
    }
    fn observed(peers: &[Peer]) -> PeerEntries {
        PeerEntries {
            fdb: peers.iter().map(|p| fdb(*p)).collect(),
            neigh: peers.iter().map(|p| neigh(*p)).collect(),
        }
    }

    #[test]
    fn plan_peers_should_add_both_entries_for_a_new_peer() {
        let p = peer(3, 2);
        assert_eq!(
            plan_peers(&[p], &PeerEntries::default()),
            vec![PeerOp::AddFdb(fdb(p)), PeerOp::AddNeigh(neigh(p))]
        );
    }

    #[test]
    fn plan_peers_should_do_nothing_when_converged() {
        let ps = [peer(3, 2), peer(4, 3)];
        assert!(plan_peers(&ps, &observed(&ps)).is_empty());
    }

    #[test]
    fn plan_peers_should_remove_entries_of_gone_peers() {
        let p = peer(3, 2);
        assert_eq!(
            plan_peers(&[], &observed(&[p])),
            vec![PeerOp::DelFdb(fdb(p)), PeerOp::DelNeigh(neigh(p))]
        );
    }

    #[test]
    fn plan_peers_should_move_a_mac_to_its_new_node_deleting_first() {
        let old = peer(3, 2);
        let new = peer(3, 5);
        assert_eq!(
            plan_peers(&[new], &observed(&[old])),
            vec![PeerOp::DelFdb(fdb(old)), PeerOp::AddFdb(fdb(new))]
        );
    }

    #[test]
    fn plan_peers_should_repair_half_present_peers() {
        let p = peer(3, 2);
        let only_fdb = PeerEntries {
            fdb: [fdb(p)].into(),
            ..Default::default()
        };
        assert_eq!(
            plan_peers(&[p], &only_fdb),
            vec![PeerOp::AddNeigh(neigh(p))]
        );
        let wrong_mac = PeerEntries {
            fdb: [fdb(p)].into(),
            neigh: [NeighEntry {
                ip: p.ip,
                mac: [2, 0, 0, 0, 0, 1],
            }]
            .into(),
        };
        assert_eq!(
            plan_peers(&[p], &wrong_mac),
            vec![
                PeerOp::DelNeigh(NeighEntry {
                    ip: p.ip,
                    mac: [2, 0, 0, 0, 0, 1]
                }),
                PeerOp::AddNeigh(neigh(p))
            ]
        );
    }

    #[test]
    fn plan_peers_should_drop_extra_remotes_of_one_mac() {
        let p = peer(3, 2);
        let mut obs = observed(&[p]);
        obs.fdb.insert(FdbEntry {
            mac: mac_for_ip(p.ip),
            node: Ipv4Addr::new(198, 18, 0, 9),
        });
        assert_eq!(
            plan_peers(&[p], &obs),
            vec![PeerOp::DelFdb(FdbEntry {
                mac: mac_for_ip(p.ip),
                node: Ipv4Addr::new(198, 18, 0, 9)
            })]
        );
    }
}
