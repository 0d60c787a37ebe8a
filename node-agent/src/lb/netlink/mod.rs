//! Owns talking nf_tables' netlink protocol for the VIP table, without `nft`: the messages
//! of a change ([`messages`] of a [`Change`]), of the whole table ([`table_messages`]) and of
//! its removal ([`delete_table_messages`]), pure; [`batch`] frames them, [`send`] sends them
//! as one transaction, and [`read_table`] reads the table back with dumps — both from the
//! calling thread's namespace. See [`super`] for the table and docs/architecture.md
//! ("Node agent").
//!
//! Why not `nft`: before any element command nft 1.0.6 loads a cache of the ruleset that
//! includes every chain of the namespace — one per service here — so a one-service change
//! cost grew with the table (a 10,000-chain dump and parse per change, measured with
//! `strace`); nft also spent about half of a full write parsing its input, and seconds of
//! CPU listing a big table. The kernel needs none of that: a batch names the table, maps,
//! elements and chains it touches, so a change costs what it changes.
//!
//! Invariants: a batch is `BATCH_BEGIN`, the messages, `BATCH_END`; the kernel applies all
//! of it or nothing (a missing element or chain fails the whole batch, as `nft -f` would).
//! A change's messages come in [`Change::script`]'s order (new chains, element deletions,
//! element additions, chain deletions). The objects written are the ones nft writes for
//! [`super::ruleset`]'s script (taken from `nft --debug=netlink`/`mnl` of nft 1.0.6, and
//! checked by a netns test that lists both with `nft`), so `nft list` shows them as nft's
//! own. Element keys are nft's concatenations: each field padded to 4 bytes, addresses,
//! protocol and port in network order, the mark (the backend's index) in host order.

use std::net::Ipv4Addr;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use shoal_api_types::service::Protocol;

pub mod conntrack;
pub mod error;

pub use error::NetlinkError;

use super::entries::VipEntry;
use super::plan::Change;
use super::ruleset::{
    backend_map, verdict_map, Key, Listed, BACKENDS_MAP, DNAT_CHAIN, DNAT_PORT_CHAIN, NAT_CHAIN,
    PORT_BACKENDS_MAP, PORT_MAP, REJECT_CHAIN, SERVICE_CHAIN_PREFIX, TABLE, VIP_MAP,
};

// linux/netlink.h, linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h.
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_ERROR: u16 = 0x2;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_IPV4: u8 = 2;

const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_NG_DREG: u16 = 1;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_NG_TYPE: u16 = 3;
const NFTA_NG_OFFSET: u16 = 4;
const NFT_NG_INCREMENTAL: u32 = 0;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFT_META_MARK: u32 = 3;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_GOTO: i32 = -4;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;

/// Elements per message: an attribute's length is 16 bits, so a long list is split over
/// several messages of the same batch (nft does the same).
const ELEMENTS_PER_MESSAGE: usize = 400;

/// One nf_tables message of a batch, before encoding: its type, flags and attributes, and
/// what it does (for errors and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `NFT_MSG_*`.
    kind: u16,
    /// `NLM_F_*` besides `NLM_F_REQUEST` (and the last message's `NLM_F_ACK`).
    flags: u16,
    /// The encoded attributes.
    attrs: Vec<u8>,
    /// What it does, in nft's words (`add 2 element(s) of vips`, `delete chain svc_…`).
    pub what: String,
}

/// The messages of `change`, in the order of [`Change::script`].
pub fn messages(change: &Change) -> Vec<Message> {
    let mut out = Vec::new();
    for (name, n, port) in &change.add_chains {
        let mut a = Attrs::default();
        a.str(NFTA_CHAIN_TABLE, TABLE);
        a.str(NFTA_CHAIN_NAME, name);
        out.push(Message {
            kind: NFT_MSG_NEWCHAIN,
            flags: NLM_F_CREATE,
            attrs: a.0,
            what: format!("add chain {name}"),
        });
        // `flush chain`: a chain left over by a failed change starts empty.
        let mut a = Attrs::default();
        a.str(NFTA_RULE_TABLE, TABLE);
        a.str(NFTA_RULE_CHAIN, name);
        out.push(Message {
            kind: NFT_MSG_DELRULE,
            flags: 0,
            attrs: a.0,
            what: format!("flush chain {name}"),
        });
        let mut a = Attrs::default();
        a.str(NFTA_RULE_TABLE, TABLE);
        a.str(NFTA_RULE_CHAIN, name);
        a.nest(NFTA_RULE_EXPRESSIONS, |a| counter_rule(a, *n, *port));
        out.push(Message {
            kind: NFT_MSG_NEWRULE,
            flags: NLM_F_CREATE | NLM_F_APPEND,
            attrs: a.0,
            what: format!("add rule {name}"),
        });
    }
    elements(&mut out, false, &change.delete_verdicts, |k| {
        (verdict_map(k), key_bytes(k, None), None)
    });
    elements(&mut out, false, &change.delete_backends, |(k, i)| {
        (backend_map(k), key_bytes(k, Some(*i)), None)
    });
    elements(&mut out, true, &change.add_verdicts, |(k, t)| {
        (
            verdict_map(k),
            key_bytes(k, None),
            Some(Data::Goto(t.as_str())),
        )
    });
    elements(&mut out, true, &change.add_backends, |(k, i, ip)| {
        (
            backend_map(k),
            key_bytes(k, Some(*i)),
            Some(Data::Addr(*ip)),
        )
    });
    for name in &change.delete_chains {
        let mut a = Attrs::default();
        a.str(NFTA_CHAIN_TABLE, TABLE);
        a.str(NFTA_CHAIN_NAME, name);
        out.push(Message {
            kind: NFT_MSG_DELCHAIN,
            flags: 0,
            attrs: a.0,
            what: format!("delete chain {name}"),
        });
    }
    out
}

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWSET: u16 = 9;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_ACCEPT: u32 = 1;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFT_SET_MAP: u32 = 0x8;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_META_DREG: u16 = 1;
const NFT_META_L4PROTO: u32 = 16;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFT_NAT_DNAT: u32 = 1;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFTA_REJECT_TYPE: u16 = 1;
const NFTA_REJECT_ICMP_CODE: u16 = 2;
const NFT_REJECT_ICMP_UNREACH: u32 = 0;
const NFT_REJECT_TCP_RST: u32 = 1;
const ICMP_PORT_UNREACH: u8 = 3;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFT_CT_STATE: u32 = 0;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
/// `ct state new`'s bit.
const IP_CT_NEW_BIT: u32 = 1 << 3;
/// 32-bit registers as nft numbers them (`reg 9` is the second 32-bit word of register 1's
/// 128 bits when addressed alone: NFT_REG32_01).
const NFT_REG32_01: u32 = 9;
const NFT_REG32_02: u32 = 10;
const NFT_REG32_03: u32 = 11;

/// One of the four maps as nft 1.0.6 declares it: (name, set id in the batch, key type,
/// key length, data type, data length, whether its key has a port). The key type is
/// nft's concatenation of datatype ids (ipv4_addr 7, inet_proto 12, inet_service 13,
/// mark 19, 6 bits each); data type 7 is ipv4_addr, 0xffffff00 a verdict.
const MAPS: [(&str, u32, u32, u32, u32, u32); 4] = [
    (BACKENDS_MAP, 1, 0x7313, 12, 7, 4),
    (PORT_BACKENDS_MAP, 2, 0x1c_c353, 16, 7, 4),
    (VIP_MAP, 3, 0x1cc, 8, 0xffff_ff00, 0),
    (PORT_MAP, 4, 0x730d, 12, 0xffff_ff00, 0),
];

/// nft 1.0.6's user data of a map (how it prints keys and data: byte orders, and that the
/// key is a concatenation), as `nft --debug=mnl` shows it; `addr` for maps to addresses.
fn map_userdata(addr: bool) -> [u8; 28] {
    let data_order = if addr { 2 } else { 0 };
    [
        0, 4, 0, 0, 0, 0, 1, 4, data_order, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0, 6, 4, 0, 0, 0,
        0,
    ]
}

/// The messages that remove our table, whether or not it exists (added, then deleted).
pub fn delete_table_messages() -> Vec<Message> {
    let mut out = table_messages(&[]);
    out.truncate(2);
    out
}

/// The messages that replace our table with one for `entries` (normalised), in one batch:
/// what `nft -f` sends for [`super::ruleset`]'s script (table added, deleted and added
/// again; chains; each map and its elements; rules), without nft's parsing.
pub fn table_messages(entries: &[VipEntry]) -> Vec<Message> {
    let mut out = Vec::new();
    let table = |kind: u16, flags: bool| {
        let mut a = Attrs::default();
        a.str(NFTA_TABLE_NAME, TABLE);
        if flags {
            a.u32(NFTA_TABLE_FLAGS, 0);
        }
        Message {
            kind,
            flags: if flags { NLM_F_CREATE } else { 0 },
            attrs: a.0,
            what: format!("{} table {TABLE}", if flags { "add" } else { "delete" }),
        }
    };
    out.push(table(NFT_MSG_NEWTABLE, true));
    out.push(table(NFT_MSG_DELTABLE, false));
    out.push(table(NFT_MSG_NEWTABLE, true));
    let change = super::plan::plan(&[], entries);
    let chain = |name: &str, base: bool| {
        let mut a = Attrs::default();
        a.str(NFTA_CHAIN_TABLE, TABLE);
        a.str(NFTA_CHAIN_NAME, name);
        if base {
            a.str(NFTA_CHAIN_TYPE, "nat");
            a.u32(NFTA_CHAIN_POLICY, NF_ACCEPT);
            a.nest(NFTA_CHAIN_HOOK, |a| {
                a.u32(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_OUT);
                a.u32(NFTA_HOOK_PRIORITY, super::ruleset::NAT_PRIORITY as u32);
            });
        }
        Message {
            kind: NFT_MSG_NEWCHAIN,
            flags: NLM_F_CREATE,
            attrs: a.0,
            what: format!("add chain {name}"),
        }
    };
    for name in [DNAT_CHAIN, DNAT_PORT_CHAIN, REJECT_CHAIN] {
        out.push(chain(name, false));
    }
    for (name, _, _) in &change.add_chains {
        out.push(chain(name, false));
    }
    out.push(chain(NAT_CHAIN, true));
    for (name, id, key_type, key_len, data_type, data_len) in MAPS {
        let mut a = Attrs::default();
        a.str(NFTA_SET_TABLE, TABLE);
        a.str(NFTA_SET_NAME, name);
        a.u32(NFTA_SET_FLAGS, NFT_SET_MAP);
        a.u32(NFTA_SET_KEY_TYPE, key_type);
        a.u32(NFTA_SET_KEY_LEN, key_len);
        a.u32(NFTA_SET_DATA_TYPE, data_type);
        a.u32(NFTA_SET_DATA_LEN, data_len);
        a.u32(NFTA_SET_ID, id);
        a.bytes(NFTA_SET_USERDATA, &map_userdata(data_len != 0));
        out.push(Message {
            kind: NFT_MSG_NEWSET,
            flags: NLM_F_CREATE,
            attrs: a.0,
            what: format!("add map {name}"),
        });
        // Its elements right after it (`elements` groups by map: keep this map's).
        if data_len != 0 {
            let mine: Vec<_> = change
                .add_backends
                .iter()
                .filter(|(k, _, _)| backend_map(k) == name)
                .collect();
            elements(&mut out, true, &mine, |(k, i, ip)| {
                (name, key_bytes(k, Some(*i)), Some(Data::Addr(*ip)))
            });
        } else {
            let mine: Vec<_> = change
                .add_verdicts
                .iter()
                .filter(|(k, _)| verdict_map(k) == name)
                .collect();
            elements(&mut out, true, &mine, |(k, t)| {
                (name, key_bytes(k, None), Some(Data::Goto(t.as_str())))
            });
        }
    }
    let rule = |chain: &str, exprs: &dyn Fn(&mut Attrs)| {
        let mut a = Attrs::default();
        a.str(NFTA_RULE_TABLE, TABLE);
        a.str(NFTA_RULE_CHAIN, chain);
        a.nest(NFTA_RULE_EXPRESSIONS, |a| exprs(a));
        Message {
            kind: NFT_MSG_NEWRULE,
            flags: NLM_F_CREATE | NLM_F_APPEND,
            attrs: a.0,
            what: format!("add rule {chain}"),
        }
    };
    out.push(rule(DNAT_CHAIN, &|a| pick_backend(a, false)));
    out.push(rule(DNAT_PORT_CHAIN, &|a| pick_backend(a, true)));
    out.push(rule(REJECT_CHAIN, &|a| {
        meta_load(a, NFT_META_L4PROTO, NFT_REG_1);
        cmp(a, NFT_CMP_EQ, &[6]);
        reject(a, NFT_REJECT_TCP_RST, 0);
    }));
    out.push(rule(REJECT_CHAIN, &|a| {
        reject(a, NFT_REJECT_ICMP_UNREACH, ICMP_PORT_UNREACH)
    }));
    for (name, n, port) in &change.add_chains {
        out.push(rule(name, &|a| counter_rule(a, *n, *port)));
    }
    for port in [true, false] {
        out.push(rule(NAT_CHAIN, &|a| {
            expr(a, "ct", |a| {
                a.u32(NFTA_CT_KEY, NFT_CT_STATE);
                a.u32(NFTA_CT_DREG, NFT_REG_1);
            });
            expr(a, "bitwise", |a| {
                a.u32(NFTA_BITWISE_SREG, NFT_REG_1);
                a.u32(NFTA_BITWISE_DREG, NFT_REG_1);
                a.u32(NFTA_BITWISE_LEN, 4);
                a.nest(NFTA_BITWISE_MASK, |a| {
                    a.bytes(NFTA_DATA_VALUE, &IP_CT_NEW_BIT.to_ne_bytes())
                });
                a.nest(NFTA_BITWISE_XOR, |a| a.bytes(NFTA_DATA_VALUE, &[0; 4]));
            });
            expr(a, "cmp", |a| {
                a.u32(NFTA_CMP_SREG, NFT_REG_1);
                a.u32(NFTA_CMP_OP, NFT_CMP_NEQ);
                a.nest(NFTA_CMP_DATA, |a| a.bytes(NFTA_DATA_VALUE, &[0; 4]));
            });
            daddr_and_proto(a);
            if port {
                dport(a, NFT_REG32_02);
            }
            let (map, id) = if port { (PORT_MAP, 4) } else { (VIP_MAP, 3) };
            lookup(a, map, id, NFT_REG_VERDICT);
        }));
    }
    out
}

/// `ip daddr . meta l4proto . [th dport .] meta mark` looked up in a backend map, and
/// `dnat to` the address found.
fn pick_backend(a: &mut Attrs, port: bool) {
    daddr_and_proto(a);
    if port {
        dport(a, NFT_REG32_02);
    }
    meta_load(
        a,
        NFT_META_MARK,
        if port { NFT_REG32_03 } else { NFT_REG32_02 },
    );
    let (map, id) = if port {
        (PORT_BACKENDS_MAP, 2)
    } else {
        (BACKENDS_MAP, 1)
    };
    lookup(a, map, id, NFT_REG_1);
    expr(a, "nat", |a| {
        a.u32(NFTA_NAT_TYPE, NFT_NAT_DNAT);
        a.u32(NFTA_NAT_FAMILY, u32::from(NFPROTO_IPV4));
        a.u32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1);
    });
}

/// `ip daddr` into register 1, `meta l4proto` into the next 32-bit word.
fn daddr_and_proto(a: &mut Attrs) {
    expr(a, "payload", |a| {
        a.u32(NFTA_PAYLOAD_DREG, NFT_REG_1);
        a.u32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
        a.u32(NFTA_PAYLOAD_OFFSET, 16);
        a.u32(NFTA_PAYLOAD_LEN, 4);
    });
    meta_load(a, NFT_META_L4PROTO, NFT_REG32_01);
}

/// `th dport` into `reg`.
fn dport(a: &mut Attrs, reg: u32) {
    expr(a, "payload", |a| {
        a.u32(NFTA_PAYLOAD_DREG, reg);
        a.u32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_TRANSPORT_HEADER);
        a.u32(NFTA_PAYLOAD_OFFSET, 2);
        a.u32(NFTA_PAYLOAD_LEN, 2);
    });
}

fn meta_load(a: &mut Attrs, key: u32, reg: u32) {
    expr(a, "meta", |a| {
        a.u32(NFTA_META_KEY, key);
        a.u32(NFTA_META_DREG, reg);
    });
}

fn lookup(a: &mut Attrs, map: &str, id: u32, dreg: u32) {
    expr(a, "lookup", |a| {
        a.u32(NFTA_LOOKUP_SREG, NFT_REG_1);
        a.u32(NFTA_LOOKUP_DREG, dreg);
        a.str(NFTA_LOOKUP_SET, map);
        a.u32(NFTA_LOOKUP_SET_ID, id);
    });
}

fn cmp(a: &mut Attrs, op: u32, value: &[u8]) {
    expr(a, "cmp", |a| {
        a.u32(NFTA_CMP_SREG, NFT_REG_1);
        a.u32(NFTA_CMP_OP, op);
        a.nest(NFTA_CMP_DATA, |a| a.bytes(NFTA_DATA_VALUE, value));
    });
}

fn reject(a: &mut Attrs, kind: u32, code: u8) {
    expr(a, "reject", |a| {
        a.u32(NFTA_REJECT_TYPE, kind);
        a.bytes(NFTA_REJECT_ICMP_CODE, &[code]);
    });
}

/// One expression of a rule: `{ name, data { … } }`.
fn expr(a: &mut Attrs, name: &str, data: impl FnOnce(&mut Attrs)) {
    a.nest(NFTA_LIST_ELEM, |a| {
        a.str(NFTA_EXPR_NAME, name);
        a.nest(NFTA_EXPR_DATA, data);
    });
}

/// An element: its key's bytes, and its data (none for a deletion).
type Element<'a> = (Vec<u8>, Option<Data<'a>>);

/// An element's data: a backend address or a verdict.
enum Data<'a> {
    Addr(Ipv4Addr),
    Goto(&'a str),
}

/// `[numgen reg 1 = inc mod n] [meta set mark with reg 1] [immediate reg 0 goto -> pick_…]`:
/// the one rule of a counter chain ([`super::ruleset::service_rule`]).
fn counter_rule(a: &mut Attrs, n: usize, port: bool) {
    a.nest(NFTA_LIST_ELEM, |a| {
        a.str(NFTA_EXPR_NAME, "numgen");
        a.nest(NFTA_EXPR_DATA, |a| {
            a.u32(NFTA_NG_DREG, NFT_REG_1);
            a.u32(NFTA_NG_MODULUS, n as u32);
            a.u32(NFTA_NG_TYPE, NFT_NG_INCREMENTAL);
            a.u32(NFTA_NG_OFFSET, 0);
        });
    });
    a.nest(NFTA_LIST_ELEM, |a| {
        a.str(NFTA_EXPR_NAME, "meta");
        a.nest(NFTA_EXPR_DATA, |a| {
            a.u32(NFTA_META_KEY, NFT_META_MARK);
            a.u32(NFTA_META_SREG, NFT_REG_1);
        });
    });
    a.nest(NFTA_LIST_ELEM, |a| {
        a.str(NFTA_EXPR_NAME, "immediate");
        a.nest(NFTA_EXPR_DATA, |a| {
            a.u32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            a.nest(NFTA_IMMEDIATE_DATA, |a| {
                goto(a, if port { DNAT_PORT_CHAIN } else { DNAT_CHAIN })
            });
        });
    });
}

/// `NFTA_DATA_VERDICT { goto chain }`.
fn goto(a: &mut Attrs, chain: &str) {
    a.nest(NFTA_DATA_VERDICT, |a| {
        a.u32(NFTA_VERDICT_CODE, NFT_GOTO as u32);
        a.str(NFTA_VERDICT_CHAIN, chain);
    });
}

/// nft's bytes for a key: `vip . proto[ . port][ . index]`, each field padded to 4 bytes;
/// the index is a mark (host order).
pub(super) fn key_bytes(k: &Key, index: Option<usize>) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&k.0.octets());
    let proto: u8 = match k.1 {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    };
    b.extend_from_slice(&[proto, 0, 0, 0]);
    if let Some(port) = k.2 {
        b.extend_from_slice(&port.to_be_bytes());
        b.extend_from_slice(&[0, 0]);
    }
    if let Some(i) = index {
        b.extend_from_slice(&(i as u32).to_ne_bytes());
    }
    b
}

/// Element messages for `items` (add with data, or delete), one run per map, split into
/// messages of at most [`ELEMENTS_PER_MESSAGE`].
fn elements<'a, T>(
    out: &mut Vec<Message>,
    add: bool,
    items: &'a [T],
    elem: impl Fn(&'a T) -> (&'static str, Vec<u8>, Option<Data<'a>>),
) {
    let mut by_map: Vec<(&'static str, Vec<Element<'a>>)> = Vec::new();
    for it in items {
        let (map, key, data) = elem(it);
        match by_map.iter_mut().find(|(m, _)| *m == map) {
            Some((_, v)) => v.push((key, data)),
            None => by_map.push((map, vec![(key, data)])),
        }
    }
    for (map, elems) in by_map {
        for chunk in elems.chunks(ELEMENTS_PER_MESSAGE) {
            let mut a = Attrs::default();
            a.str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
            a.str(NFTA_SET_ELEM_LIST_SET, map);
            a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |a| {
                for (key, data) in chunk {
                    a.nest(NFTA_LIST_ELEM, |a| {
                        a.nest(NFTA_SET_ELEM_KEY, |a| a.bytes(NFTA_DATA_VALUE, key));
                        match data {
                            Some(Data::Addr(ip)) => a.nest(NFTA_SET_ELEM_DATA, |a| {
                                a.bytes(NFTA_DATA_VALUE, &ip.octets())
                            }),
                            Some(Data::Goto(chain)) => {
                                a.nest(NFTA_SET_ELEM_DATA, |a| goto(a, chain))
                            }
                            None => {}
                        }
                    });
                }
            });
            let verb = if add { "add" } else { "delete" };
            out.push(Message {
                kind: if add {
                    NFT_MSG_NEWSETELEM
                } else {
                    NFT_MSG_DELSETELEM
                },
                flags: if add { NLM_F_CREATE } else { 0 },
                attrs: a.0,
                what: format!("{verb} {} element(s) of {map}", chunk.len()),
            });
        }
    }
}

/// Netlink attributes being written (lengths and types in host order, nf_tables' numbers
/// in network order, as the kernel reads them).
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn bytes(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.pad();
    }

    fn u32(&mut self, kind: u16, value: u32) {
        self.bytes(kind, &value.to_be_bytes());
    }

    /// A NUL-terminated string.
    fn str(&mut self, kind: u16, value: &str) {
        let mut v = Vec::with_capacity(value.len() + 1);
        v.extend_from_slice(value.as_bytes());
        v.push(0);
        self.bytes(kind, &v);
    }

    fn nest(&mut self, kind: u16, f: impl FnOnce(&mut Attrs)) {
        let start = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        f(self);
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }
}

/// One netlink message: header, `nfgenmsg` (family, version 0, resource id), attributes.
fn frame(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = 16 + 4 + attrs.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
}

/// The batch of `msgs` as bytes: begin, the messages (sequence numbers 1..=n; the last one
/// asks for an acknowledgement, which the kernel sends once the batch is committed), end.
/// Errors are reported whether asked for or not.
pub fn batch(msgs: &[Message]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + msgs.iter().map(|m| 20 + m.attrs.len()).sum::<usize>());
    frame(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        0,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    for (i, m) in msgs.iter().enumerate() {
        let ack = if i + 1 == msgs.len() { NLM_F_ACK } else { 0 };
        frame(
            &mut out,
            (NFNL_SUBSYS_NFTABLES << 8) | m.kind,
            NLM_F_REQUEST | ack | m.flags,
            i as u32 + 1,
            NFPROTO_IPV4,
            0,
            &m.attrs,
        );
    }
    let end = msgs.len() as u32 + 1;
    frame(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        end,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    out
}

/// Sends `msgs` as one batch from the calling thread's network namespace and waits for the
/// kernel's answer: every message acknowledged, or the first refusal. Blocking.
pub fn send(msgs: &[Message]) -> Result<(), NetlinkError> {
    if msgs.is_empty() {
        return Ok(());
    }
    let io = |op: &'static str| move |source| NetlinkError::Socket { op, source };
    let socket = open()?;
    let bytes = batch(msgs);
    // A batch is one datagram, which must fit the send buffer (nft raises it the same way).
    if bytes.len() + 4096 > 200_000 {
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::SndBufForce,
            &(bytes.len() + 65_536),
        )
        .map_err(|e| NetlinkError::Socket {
            op: "SO_SNDBUFFORCE",
            source: e.into(),
        })?;
        let _ = socket.set_rx_buf_sz(msgs.len() * 64 + 65_536);
    }
    socket.send(&bytes, 0).map_err(io("send"))?;
    // The kernel processes the batch inside `send`: every answer is queued by now. Read
    // them without blocking: any error fails the batch (the kernel applied none of it), and
    // the last message's acknowledgement says it was committed.
    let last = msgs.len() as u32;
    let mut acked = false;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match socket.recv(&mut &mut buf[..], nix::libc::MSG_DONTWAIT) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("receive")(e)),
        };
        for (seq, errno, message) in answers(&buf[..n]) {
            if errno != 0 {
                let what = (seq as usize)
                    .checked_sub(1)
                    .and_then(|i| msgs.get(i))
                    .map_or_else(|| "commit".to_owned(), |m| m.what.clone());
                return Err(NetlinkError::Refused {
                    what,
                    errno: -errno,
                    message,
                });
            }
            acked |= seq == last;
        }
    }
    if !acked {
        return Err(NetlinkError::NoAck);
    }
    close_later(socket);
    Ok(())
}

/// How long a socket that committed stays open before it is closed.
const CLOSE_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// Closes `socket` after [`CLOSE_DELAY`], on one closer thread for the process. Closing an
/// nf_tables socket while the kernel still has objects of a recent commit to free
/// waits for that — a grace period, 10–15 ms here (`strace -T` of `close`), whatever the
/// change — and a change sent right after it waited as well (figure 5's second samples
/// took 15–20 ms with an immediate close, under 1 ms with this). A commit is in force when
/// its acknowledgement arrives; by the time the closer gets to the socket, the freeing is
/// done and the close is quick. A socket the closer cannot take is closed at once.
fn close_later(socket: Socket) {
    use std::sync::mpsc::{channel, Sender};
    use std::sync::{Mutex, OnceLock};
    type Closer = Mutex<Option<Sender<(std::time::Instant, Socket)>>>;
    static CLOSER: OnceLock<Closer> = OnceLock::new();
    let closer = CLOSER.get_or_init(|| {
        let (tx, rx) = channel::<(std::time::Instant, Socket)>();
        let spawned = std::thread::Builder::new()
            .name("shoal-nft-close".into())
            .spawn(move || {
                for (at, socket) in rx {
                    std::thread::sleep(at.saturating_duration_since(std::time::Instant::now()));
                    drop(socket);
                }
            });
        Mutex::new(spawned.ok().map(|_| tx))
    });
    let sender = closer.lock().ok().and_then(|tx| tx.clone());
    if let Some(tx) = sender {
        let _ = tx.send((std::time::Instant::now() + CLOSE_DELAY, socket));
    }
}

/// The `NLMSG_ERROR` answers in a datagram: (sequence number, error (0: ack), message).
fn answers(mut buf: &[u8]) -> Vec<(u32, i32, Option<String>)> {
    let u16_at = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32_at(buf, 0) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        let (kind, flags, seq) = (u16_at(buf, 4), u16_at(buf, 6), u32_at(buf, 8));
        if kind == NLMSG_ERROR && len >= 20 {
            let errno = u32_at(buf, 16) as i32;
            // With NETLINK_CAP_ACK the original header follows (16 bytes), then the TLVs.
            let mut message = None;
            if flags & NLM_F_ACK_TLVS != 0 && len > 36 {
                let mut tlv = &buf[36..len];
                while tlv.len() >= 4 {
                    let (alen, akind) = (u16_at(tlv, 0) as usize, u16_at(tlv, 2));
                    if alen < 4 || alen > tlv.len() {
                        break;
                    }
                    if akind == NLMSGERR_ATTR_MSG {
                        let s = &tlv[4..alen];
                        let s = s.split(|c| *c == 0).next().unwrap_or_default();
                        message = Some(String::from_utf8_lossy(s).into_owned());
                    }
                    tlv = &tlv[((alen + 3) & !3).min(tlv.len())..];
                }
            }
            out.push((seq, errno, message));
        }
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

const NLM_F_DUMP: u16 = 0x300;
const NLMSG_DONE: u16 = 0x3;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFTA_TABLE_NAME: u16 = 1;
/// The type bits of an attribute's type (without `NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// An open nf_tables socket in the calling thread's namespace, answering with
/// acknowledgements without a copy of the message, and with the kernel's reason when it
/// refuses.
fn open() -> Result<Socket, NetlinkError> {
    let io = |op: &'static str| move |source| NetlinkError::Socket { op, source };
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io("open"))?;
    socket.bind_auto().map_err(io("bind"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(io("connect"))?;
    socket.set_cap_ack(true).map_err(io("NETLINK_CAP_ACK"))?;
    let _ = socket.set_ext_ack(true);
    Ok(socket)
}

/// Our table as it is in the calling thread's namespace (`None`: there is none), read
/// with netlink dumps of its counter chains, their rules and the four maps' elements:
/// what `nft -j list table` gives, for a fraction of its cost (nft needs seconds of CPU to
/// list 10,000 services). Blocking.
pub(super) fn read_table() -> Result<Option<Listed>, NetlinkError> {
    let socket = open()?;
    let mut a = Attrs::default();
    a.str(NFTA_TABLE_NAME, TABLE);
    match request(&socket, NFT_MSG_GETTABLE, 0, &a.0, "get table", |_| Ok(())) {
        Err(NetlinkError::Refused { errno, .. }) if errno == nix::libc::ENOENT => return Ok(None),
        r => r?,
    }
    let mut listed = Listed::default();
    let mut a = Attrs::default();
    a.str(NFTA_CHAIN_TABLE, TABLE);
    request(
        &socket,
        NFT_MSG_GETCHAIN,
        NLM_F_DUMP,
        &a.0,
        "list chains",
        |attrs| {
            let table = find(attrs, NFTA_CHAIN_TABLE).map(c_str);
            let name = find(attrs, NFTA_CHAIN_NAME).map(c_str).unwrap_or_default();
            if table.as_deref() == Some(TABLE) && name.starts_with(SERVICE_CHAIN_PREFIX) {
                listed.chains.entry(name).or_default();
            }
            Ok(())
        },
    )?;
    let mut a = Attrs::default();
    a.str(NFTA_RULE_TABLE, TABLE);
    request(
        &socket,
        NFT_MSG_GETRULE,
        NLM_F_DUMP,
        &a.0,
        "list rules",
        |attrs| {
            let table = find(attrs, NFTA_RULE_TABLE).map(c_str);
            let chain = find(attrs, NFTA_RULE_CHAIN).map(c_str).unwrap_or_default();
            if table.as_deref() == Some(TABLE) && chain.starts_with(SERVICE_CHAIN_PREFIX) {
                let n = find(attrs, NFTA_RULE_EXPRESSIONS).and_then(counter_modulus);
                listed.chains.entry(chain).or_default().push(n);
            }
            Ok(())
        },
    )?;
    for map in [VIP_MAP, PORT_MAP, BACKENDS_MAP, PORT_BACKENDS_MAP] {
        let (port, verdict) = (
            map == PORT_MAP || map == PORT_BACKENDS_MAP,
            map == VIP_MAP || map == PORT_MAP,
        );
        let mut a = Attrs::default();
        a.str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
        a.str(NFTA_SET_ELEM_LIST_SET, map);
        request(
            &socket,
            NFT_MSG_GETSETELEM,
            NLM_F_DUMP,
            &a.0,
            map,
            |attrs| {
                let Some(elems) = find(attrs, NFTA_SET_ELEM_LIST_ELEMENTS) else {
                    return Ok(());
                };
                for (_, el) in iter(elems) {
                    let bad =
                        || NetlinkError::Unexpected(format!("an element of {map}: {el:02x?}"));
                    let key = find(el, NFTA_SET_ELEM_KEY)
                        .and_then(|k| find(k, NFTA_DATA_VALUE))
                        .ok_or_else(bad)?;
                    let data = find(el, NFTA_SET_ELEM_DATA).ok_or_else(bad)?;
                    let (k, index) = parse_key(key, port, !verdict).ok_or_else(bad)?;
                    if verdict {
                        let v = find(data, NFTA_DATA_VERDICT).ok_or_else(bad)?;
                        let code = find(v, NFTA_VERDICT_CODE).and_then(be32).ok_or_else(bad)?;
                        let chain = find(v, NFTA_VERDICT_CHAIN).map(c_str);
                        listed
                            .verdicts
                            .push((k, chain.filter(|_| code as i32 == NFT_GOTO)));
                    } else {
                        let v = find(data, NFTA_DATA_VALUE)
                            .and_then(|v| <[u8; 4]>::try_from(v).ok())
                            .ok_or_else(bad)?;
                        listed
                            .backends
                            .push((k, index.ok_or_else(bad)?, Ipv4Addr::from(v)));
                    }
                }
                Ok(())
            },
        )?;
    }
    // Closing now could wait for the freeing of a commit made just before (see
    // [`close_later`]).
    close_later(socket);
    Ok(Some(listed))
}

/// The modulus of a counter chain's rule, `[numgen reg 1 = inc mod n] [meta set mark with
/// reg 1] [immediate reg 0 goto …]`; `None` for any other rule.
fn counter_modulus(exprs: &[u8]) -> Option<u64> {
    let list: Vec<(&str, &[u8])> = iter(exprs)
        .map(|(_, e)| {
            let name =
                find(e, NFTA_EXPR_NAME).map(|n| n.split(|c| *c == 0).next().unwrap_or_default());
            (
                name.and_then(|n| std::str::from_utf8(n).ok())
                    .unwrap_or_default(),
                find(e, NFTA_EXPR_DATA).unwrap_or_default(),
            )
        })
        .collect();
    match &list[..] {
        [("numgen", ng), ("meta", meta), ("immediate", _)]
            if find(ng, NFTA_NG_TYPE).and_then(be32) == Some(NFT_NG_INCREMENTAL)
                && find(meta, NFTA_META_KEY).and_then(be32) == Some(NFT_META_MARK) =>
        {
            find(ng, NFTA_NG_MODULUS).and_then(be32).map(u64::from)
        }
        _ => None,
    }
}

/// A key's fields back from nft's concatenation ([`key_bytes`]).
fn parse_key(b: &[u8], port: bool, index: bool) -> Option<(Key, Option<u32>)> {
    let want = 8 + 4 * usize::from(port) + 4 * usize::from(index);
    if b.len() != want {
        return None;
    }
    let vip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let protocol = match b[4] {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        _ => return None,
    };
    let mut at = 8;
    let p = port.then(|| {
        at += 4;
        u16::from_be_bytes([b[8], b[9]])
    });
    let i = index.then(|| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]));
    Some(((vip, protocol, p), i))
}

/// Sends one nf_tables request (a dump with `NLM_F_DUMP`) and hands the attributes of each
/// answer to `each` until the kernel is done. Blocking.
fn request(
    socket: &Socket,
    kind: u16,
    flags: u16,
    attrs: &[u8],
    what: &str,
    each: impl FnMut(&[u8]) -> Result<(), NetlinkError>,
) -> Result<(), NetlinkError> {
    request_to(socket, NFNL_SUBSYS_NFTABLES, kind, flags, attrs, what, each)
}

/// [`request`] to the netfilter subsystem `subsys` (`NFNL_SUBSYS_*`).
fn request_to(
    socket: &Socket,
    subsys: u16,
    kind: u16,
    flags: u16,
    attrs: &[u8],
    what: &str,
    mut each: impl FnMut(&[u8]) -> Result<(), NetlinkError>,
) -> Result<(), NetlinkError> {
    let io = |op: &'static str| move |source| NetlinkError::Socket { op, source };
    let mut msg = Vec::new();
    frame(
        &mut msg,
        (subsys << 8) | kind,
        NLM_F_REQUEST | NLM_F_ACK | flags,
        1,
        NFPROTO_IPV4,
        0,
        attrs,
    );
    socket.send(&msg, 0).map_err(io("send"))?;
    let mut buf = vec![0u8; 1 << 18];
    loop {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("receive")(e)),
        };
        let mut d = &buf[..n];
        while d.len() >= 16 {
            let len = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]) as usize;
            if len < 16 || len > d.len() {
                return Err(NetlinkError::Unexpected(format!(
                    "a truncated answer to {what}"
                )));
            }
            let t = u16::from_ne_bytes([d[4], d[5]]);
            match t {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let (_, errno, message) = answers(&d[..len]).pop().unwrap_or((0, 0, None));
                    if errno != 0 {
                        return Err(NetlinkError::Refused {
                            what: what.to_owned(),
                            errno: -errno,
                            message,
                        });
                    }
                    // The ack of a request that is not a dump ends it.
                    if flags & NLM_F_DUMP == 0 {
                        return Ok(());
                    }
                }
                _ if len >= 20 => each(&d[20..len])?,
                _ => {}
            }
            d = &d[((len + 3) & !3).min(d.len())..];
        }
    }
}

/// The attributes in `b`: (type, payload).
fn iter(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((kind, payload))
    })
}

/// The payload of the first attribute of type `kind` in `b`.
fn find(b: &[u8], kind: u16) -> Option<&[u8]> {
    iter(b).find(|(k, _)| *k == kind).map(|(_, p)| p)
}

/// A NUL-terminated string attribute.
fn c_str(b: &[u8]) -> String {
    String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or_default()).into_owned()
}

/// A 32-bit attribute in network order.
fn be32(b: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(b).ok().map(u32::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::entries::normalize;
    use crate::lb::plan::plan;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// `n` services of 3 backends, TCP and UDP each; service 0's last backend moved when
    /// `changed`.
    fn table(n: u32, changed: bool) -> Vec<VipEntry> {
        normalize((0..n).flat_map(|i| {
            let backends: Vec<Ipv4Addr> = (0..3)
                .map(|j| {
                    let moved = if changed && i == 0 && j == 2 {
                        1 << 20
                    } else {
                        0
                    };
                    Ipv4Addr::from(0xac10_0000 + 3 * i + j + moved)
                })
                .collect();
            [Protocol::Tcp, Protocol::Udp].map(|protocol| VipEntry {
                vip: Ipv4Addr::from(0x0a60_0001 + i),
                protocol,
                port: None,
                backends: backends.clone(),
            })
        }))
    }

    /// 32-bit words as `nft --debug=netlink` prints them (host order).
    fn words(w: &[u32]) -> Vec<u8> {
        w.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    #[test]
    fn keys_are_nfts_concatenations() {
        // nft 1.0.6 `--debug=netlink` for `10.96.0.1 . tcp . 2` in `backends` and
        // `10.96.0.2 . udp` in `vips`: "element 0100600a 00000006 00000002",
        // "element 0200600a 00000011".
        let k = (ip("10.96.0.1"), Protocol::Tcp, None);
        assert_eq!(
            key_bytes(&k, Some(2)),
            words(&[0x0100_600a, 0x0000_0006, 0x0000_0002])
        );
        let k = (ip("10.96.0.2"), Protocol::Udp, None);
        assert_eq!(key_bytes(&k, None), words(&[0x0200_600a, 0x0000_0011]));
        // A port: two bytes in network order, padded.
        let k = (ip("10.0.1.3"), Protocol::Udp, Some(53));
        assert_eq!(
            key_bytes(&k, Some(0)),
            vec![10, 0, 1, 3, 17, 0, 0, 0, 0, 53, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn a_one_service_change_is_the_same_batch_whatever_the_table_holds() {
        let small = messages(&plan(&table(10, false), &table(10, true)));
        let big = messages(&plan(&table(10_000, false), &table(10_000, true)));
        assert_eq!(small, big);
        let what: Vec<&str> = big.iter().map(|m| m.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "delete 2 element(s) of backends",
                "add 2 element(s) of backends"
            ]
        );
        assert_eq!(batch(&small).len(), batch(&big).len());
    }

    #[test]
    fn a_new_backend_count_adds_the_counter_chain_and_moves_the_verdicts() {
        let a = table(3, false);
        let mut b = a.clone();
        for e in b.iter_mut().take(2) {
            e.backends.push(ip("12.0.0.1"));
        }
        let what: Vec<String> = messages(&plan(&a, &b))
            .into_iter()
            .map(|m| m.what)
            .collect();
        assert_eq!(
            what,
            [
                "add chain svc_0a600001_4",
                "flush chain svc_0a600001_4",
                "add rule svc_0a600001_4",
                "delete 2 element(s) of vips",
                "add 2 element(s) of vips",
                "add 2 element(s) of backends",
                "delete chain svc_0a600001_3",
            ]
        );
    }

    #[test]
    fn long_element_lists_are_split_over_messages() {
        let c = plan(&[], &table(1_000, false));
        let msgs = messages(&c);
        // 6,000 backend and 2,000 verdict elements, 1,000 chains of 3 messages each.
        let elems = msgs.iter().filter(|m| m.kind == NFT_MSG_NEWSETELEM).count();
        assert_eq!(
            elems,
            6_000usize.div_ceil(ELEMENTS_PER_MESSAGE) + 2_000usize.div_ceil(ELEMENTS_PER_MESSAGE)
        );
        assert_eq!(msgs.len(), elems + 3 * 1_000);
        assert!(msgs.iter().all(|m| m.attrs.len() < u16::MAX as usize));
    }

    #[test]
    fn batch_frames_each_message_between_begin_and_end() {
        let msgs = messages(&plan(&table(2, false), &table(2, true)));
        let b = batch(&msgs);
        let mut at = 0;
        let mut seen = Vec::new();
        while at < b.len() {
            let len = u32::from_ne_bytes(b[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(b[at + 4..at + 6].try_into().unwrap());
            let seq = u32::from_ne_bytes(b[at + 8..at + 12].try_into().unwrap());
            seen.push((kind, seq));
            at += len;
        }
        assert_eq!(at, b.len());
        assert_eq!(
            seen,
            [
                (NFNL_MSG_BATCH_BEGIN, 0),
                ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM, 1),
                ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM, 2),
                (NFNL_MSG_BATCH_END, 3),
            ]
        );
    }

    #[test]
    fn answers_read_acks_and_the_kernels_reason() {
        let msg = |seq: u32, errno: i32, text: Option<&str>| {
            let mut tlv = Attrs::default();
            if let Some(t) = text {
                tlv.str(NLMSGERR_ATTR_MSG, t);
            }
            let flags = if text.is_some() { NLM_F_ACK_TLVS } else { 0 };
            let mut m = Vec::new();
            let len = 16 + 4 + 16 + tlv.0.len();
            m.extend_from_slice(&(len as u32).to_ne_bytes());
            m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m.extend_from_slice(&flags.to_ne_bytes());
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&errno.to_ne_bytes());
            m.extend_from_slice(&[0; 16]);
            m.extend_from_slice(&tlv.0);
            m
        };
        let mut d = msg(1, 0, None);
        d.extend(msg(2, -2, Some("no such element")));
        assert_eq!(
            answers(&d),
            [(1, 0, None), (2, -2, Some("no such element".to_owned()))]
        );
    }
}
