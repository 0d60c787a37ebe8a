//! The UDP fast path's wire format: a strict reader of plain A questions and an encoder of
//! their answers from [`Prepared`] records, with no allocation and no hickory message
//! parsing.
//!
//! [`Prepared`] is built with each record table ([`super::NetworkRecords::build`]): the A
//! records of one name already encoded as hickory encodes them (type A, class IN, TTL
//! [`super::TTL`], 4-byte address; the first record's owner name is written out, the others
//! point at it), so a table swap swaps them too and a query sees the old or the new table,
//! never a mix. Per query only the header (the id, the client's RD and CD bits), the
//! question and the first owner name (both copied from the query, so in the client's case)
//! are written around them, plus the EDNS OPT record when the query had one.
//!
//! Invariant: [`parse`] accepts only what the general (hickory) path answers in exactly the
//! same bytes — one question, QTYPE A, QCLASS IN, uncompressed labels of `[A-Za-z0-9_-]`,
//! no answer or authority records, at most one additional that is an EDNS version 0 OPT with
//! no options, no TC/Z bits or rcode in the query. [`encode`] refuses an answer that would
//! not fit the client's UDP limit (512 bytes or the EDNS payload size), which the general
//! path truncates. Everything refused goes to the general path; the unit tests compare both
//! paths' bytes.

use std::net::Ipv4Addr;

use super::config::TTL;

/// Length of an encoded A record after its owner name: type (2), class (2), TTL (4),
/// rdlength (2), address (4).
const RR_BODY: usize = 14;
/// Length of a later A record, whose owner name is a 2-byte pointer.
const RR_LEN: usize = 2 + RR_BODY;
/// Where the address of record `i` sits in [`Prepared::rrs`]: `ADDR_AT + i * RR_LEN`.
const ADDR_AT: usize = 10;
/// The longest name on the wire (RFC 1035 2.3.4).
const MAX_NAME: usize = 255;

/// The A records of one name, encoded once per table: the first record without its owner
/// name (the encoder copies it from the query), the others each with a pointer to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Prepared {
    rrs: Box<[u8]>,
    count: usize,
    shuffle: bool,
}

impl Prepared {
    /// Encode the answers of `name` (normalised: lowercase, no trailing dot) with `addrs`
    /// (answered in this order, or shuffled per answer when `shuffle`).
    pub(crate) fn new(name: &str, addrs: &[Ipv4Addr], shuffle: bool) -> Self {
        // The first answer's owner name follows the header (12), the question's name (its
        // labels, one length byte each, and the root: name + 2) and QTYPE/QCLASS (4).
        let first_owner = 12 + name.len() + 2 + 4;
        let pointer = 0xc000 | (first_owner as u16 & 0x3fff);
        let mut rrs = Vec::with_capacity(addrs.len() * RR_LEN);
        for (i, ip) in addrs.iter().enumerate() {
            if i > 0 {
                rrs.extend_from_slice(&pointer.to_be_bytes());
            }
            rrs.extend_from_slice(&[0, 1, 0, 1]);
            rrs.extend_from_slice(&TTL.to_be_bytes());
            rrs.extend_from_slice(&[0, 4]);
            rrs.extend_from_slice(&ip.octets());
        }
        Prepared {
            rrs: rrs.into_boxed_slice(),
            count: addrs.len(),
            shuffle,
        }
    }
}

/// A query the fast path may answer, as read by [`parse`].
#[derive(Debug)]
pub(crate) struct Question {
    /// The name, lowercase, labels joined by `.`, no trailing dot.
    name: [u8; MAX_NAME],
    name_len: usize,
    /// End of the question section (header + QNAME + QTYPE + QCLASS).
    question_end: usize,
    /// The EDNS payload size of the query's OPT record, if it had one.
    edns_payload: Option<u16>,
}

impl Question {
    /// The normalised name (as the record tables store names).
    pub(crate) fn name(&self) -> &str {
        // Only ASCII bytes are accepted by `parse`.
        std::str::from_utf8(&self.name[..self.name_len]).unwrap_or_default()
    }
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// Read `query` if it is a plain A/IN question the fast path answers exactly like the
/// general path; `None` sends it to the general path.
pub(crate) fn parse(query: &[u8]) -> Option<Question> {
    if query.len() < 12 {
        return None;
    }
    let (flags_hi, flags_lo) = (query[2], query[3]);
    // QR = 0 (a query), OPCODE = 0 (QUERY), TC = 0; Z = 0 and RCODE = 0.
    if flags_hi & 0xfa != 0 || flags_lo & 0x4f != 0 {
        return None;
    }
    let (qd, an, ns, ar) = (
        u16_at(query, 4)?,
        u16_at(query, 6)?,
        u16_at(query, 8)?,
        u16_at(query, 10)?,
    );
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut q = Question {
        name: [0; MAX_NAME],
        name_len: 0,
        question_end: 0,
        edns_payload: None,
    };
    let mut i = 12;
    let mut wire_len = 1; // the root label
    loop {
        let len = *query.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        // Pointers and extended label types: general path.
        if len > 63 {
            return None;
        }
        wire_len += len + 1;
        if wire_len > MAX_NAME {
            return None;
        }
        let label = query.get(i..i + len)?;
        if q.name_len > 0 {
            q.name[q.name_len] = b'.';
            q.name_len += 1;
        }
        for &c in label {
            if !(c.is_ascii_alphanumeric() || c == b'-' || c == b'_') {
                return None;
            }
            q.name[q.name_len] = c.to_ascii_lowercase();
            q.name_len += 1;
        }
        i += len;
    }
    // The root name is not ours to answer here.
    if q.name_len == 0 {
        return None;
    }
    // QTYPE A, QCLASS IN.
    if u16_at(query, i)? != 1 || u16_at(query, i + 2)? != 1 {
        return None;
    }
    i += 4;
    q.question_end = i;
    if ar == 1 {
        // OPT: root name, type 41, class = payload, TTL = ext-rcode . version . flags,
        // RDLENGTH 0.
        if *query.get(i)? != 0 || u16_at(query, i + 1)? != 41 {
            return None;
        }
        let payload = u16_at(query, i + 3)?;
        let (ext_rcode, version) = (*query.get(i + 5)?, *query.get(i + 6)?);
        if ext_rcode != 0 || version != 0 || u16_at(query, i + 9)? != 0 {
            return None;
        }
        q.edns_payload = Some(payload);
        i += 11;
    }
    (i == query.len()).then_some(q)
}

/// Write the answer to `query` (read as `q`) from `prepared` into `out`. Returns `false`
/// (and leaves `out` unspecified) when it does not fit the client's UDP limit.
pub(crate) fn encode(query: &[u8], q: &Question, prepared: &Prepared, out: &mut Vec<u8>) -> bool {
    let payload = q.edns_payload.map(|p| p.max(512));
    let limit = payload.unwrap_or(512) as usize;
    let opt_len = if payload.is_some() { 11 } else { 0 };
    let count = prepared.count;
    let qname = &query[12..q.question_end - 4];
    let owner_len = if count > 0 { qname.len() } else { 0 };
    if q.question_end + owner_len + prepared.rrs.len() + opt_len > limit {
        return false;
    }
    out.clear();
    // ID; QR, OPCODE 0, AA, the client's RD; RA, the client's CD, RCODE NOERROR.
    out.extend_from_slice(&query[..2]);
    out.push(0x84 | (query[2] & 0x01));
    out.push(0x80 | (query[3] & 0x10));
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(count as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, u8::from(payload.is_some())]);
    out.extend_from_slice(&query[12..q.question_end]);
    if count > 0 {
        out.extend_from_slice(qname);
    }
    let start = out.len();
    out.extend_from_slice(&prepared.rrs);
    if prepared.shuffle && count > 1 {
        // Fisher-Yates over the addresses, as `SliceRandom::shuffle` does on the list.
        use rand::Rng;
        let mut rng = rand::rng();
        let recs = &mut out[start..];
        for i in (1..count).rev() {
            let j = rng.random_range(0..=i);
            if i != j {
                let (a, b) = recs.split_at_mut(ADDR_AT + i * RR_LEN);
                a[ADDR_AT + j * RR_LEN..ADDR_AT + j * RR_LEN + 4].swap_with_slice(&mut b[..4]);
            }
        }
    }
    if let Some(p) = payload {
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&p.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    true
}
