//! Proptest strategies for user input: Shoal objects as JSON values (well-formed ones of
//! every user kind, and Nodes), mutations of them (wrong types, missing and unknown fields,
//! huge numbers, deep nesting, odd unicode) and garbage text. The property tests of
//! `api-types` (the manifest parser), of the CLI (compose files) and of the HTTP API share
//! them. This crate depends on no Shoal crate, so objects are plain JSON values.
//!
//! Invariants: [`valid_object`] yields objects every Shoal validation accepts on their own
//! (DNS-1123 names, a /24 subnet in 10.0.0.0/8, ports 1-65535 without duplicates, padded
//! base64 payloads); a [`Mutation`] changes exactly one place of a value.

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Map, Value};

/// A DNS-1123 label of 1-20 characters.
pub fn name() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,18}[a-z0-9])?"
}

/// Labels: a few `key: value` pairs of label-safe characters.
fn labels() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-z][a-z0-9.-]{0,10}[a-z]", "[a-zA-Z0-9]{0,10}", 0..3)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
}

fn envelope(kind: &str, name: String, labels: Map<String, Value>, spec: Value) -> Value {
    let mut metadata = Map::new();
    metadata.insert("name".into(), Value::String(name));
    if !labels.is_empty() {
        metadata.insert("labels".into(), Value::Object(labels));
    }
    json!({"apiVersion": "shoal/v1", "kind": kind, "metadata": metadata, "spec": spec})
}

/// A valid Network named `name`, with a subnet of its own when `subnet` is `Some(k)`
/// (`10.<k/256>.<k%256>.0/24`, so distinct `k` never overlap).
pub fn network_with(name: String, subnet: Option<u16>) -> impl Strategy<Value = Value> {
    (
        labels(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(1280u32..9000),
    )
        .prop_map(move |(labels, attachable, internal, mtu)| {
            let mut spec = Map::new();
            if let Some(k) = subnet {
                spec.insert(
                    "subnet".into(),
                    Value::String(format!("10.{}.{}.0/24", 100 + k / 256, k % 256)),
                );
            }
            spec.insert("attachable".into(), Value::Bool(attachable));
            spec.insert("internal".into(), Value::Bool(internal));
            if let Some(m) = mtu {
                spec.insert("mtu".into(), json!(m));
            }
            envelope("Network", name.clone(), labels, Value::Object(spec))
        })
}

/// A valid Service named `name` attached to `networks`.
pub fn service_with(name: String, networks: Vec<String>) -> impl Strategy<Value = Value> {
    (
        labels(),
        "[a-z]{1,8}(:[a-z0-9]{1,5})?",
        0i64..20,
        prop::collection::btree_set(1u16..=65535, 0..3),
        prop::collection::btree_map("[A-Z_][A-Z0-9_]{0,8}", "[ -~]{0,12}", 0..3),
        prop::collection::vec("[ -~]{0,10}", 0..3),
        any::<bool>(),
    )
        .prop_map(move |(labels, image, replicas, ports, env, command, udp)| {
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|p| {
                    json!({"published": p, "target": p.max(1),
                           "protocol": if udp { "udp" } else { "tcp" }})
                })
                .collect();
            let nets: Vec<Value> = networks.iter().map(|n| json!({"name": n})).collect();
            let spec = json!({
                "image": image, "replicas": replicas, "ports": ports,
                "networks": nets, "env": env, "command": command,
            });
            envelope("Service", name.clone(), labels, spec)
        })
}

/// A valid Secret or Config (`kind`) named `name` with 1-64 bytes of payload.
pub fn payload_with(kind: &'static str, name: String) -> impl Strategy<Value = Value> {
    (labels(), prop::collection::vec(any::<u8>(), 1..64)).prop_map(move |(labels, bytes)| {
        envelope(kind, name.clone(), labels, json!({"data": base64(&bytes)}))
    })
}

/// A valid Node spec object named `name`.
pub fn node_with(name: String) -> impl Strategy<Value = Value> {
    (
        labels(),
        prop::sample::select(vec!["active", "pause", "drain"]),
    )
        .prop_map(move |(labels, availability)| {
            let spec = json!({"labels": labels, "availability": availability});
            envelope("Node", name.clone(), Map::new(), spec)
        })
}

/// One valid object of a user kind (Network, Service, Secret, Config), on its own.
pub fn valid_object() -> impl Strategy<Value = Value> {
    prop_oneof![
        (name(), prop::option::of(0u16..2000)).prop_flat_map(|(n, s)| network_with(n, s)),
        (name(), prop::collection::vec(name(), 0..3))
            .prop_flat_map(|(n, nets)| service_with(n, nets)),
        name().prop_flat_map(|n| payload_with("Secret", n)),
        name().prop_flat_map(|n| payload_with("Config", n)),
    ]
}

/// A batch that one apply accepts on an empty cluster: 1-4 networks with distinct names and
/// subnets, services on them, a secret and a config, every name distinct.
pub fn valid_batch() -> impl Strategy<Value = Vec<Value>> {
    (
        prop::collection::btree_set(name(), 2..7),
        0u16..2000,
        1usize..4,
    )
        .prop_flat_map(|(names, base, n_networks)| {
            let names: Vec<String> = names.into_iter().collect();
            let n_networks = n_networks.min(names.len() - 1);
            let nets: Vec<String> = names[..n_networks].to_vec();
            let mut parts: Vec<BoxedStrategy<Value>> = Vec::new();
            for (i, n) in nets.iter().enumerate() {
                parts.push(network_with(n.clone(), Some((base + i as u16) % 2000)).boxed());
            }
            let rest = &names[n_networks..];
            for (i, n) in rest.iter().enumerate() {
                parts.push(match i % 3 {
                    0 => service_with(n.clone(), nets.clone()).boxed(),
                    1 => payload_with("Secret", n.clone()).boxed(),
                    _ => payload_with("Config", n.clone()).boxed(),
                });
            }
            parts
        })
}

/// A value of an unexpected shape or size: null, booleans, huge and negative numbers,
/// floats, odd unicode, long strings, empty and deeply nested collections.
pub fn weird_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop::sample::select(vec![
            json!(i64::MAX),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(-1),
            json!(0),
            json!(4294967296u64),
            json!(65536),
            json!(1e308),
            json!(-0.5),
        ]),
        any::<i64>().prop_map(|n| json!(n)),
        odd_string().prop_map(Value::String),
        Just(json!([])),
        Just(json!({})),
        (1usize..200).prop_map(nested),
    ]
}

/// Strings that break naive code: control characters, right-to-left marks, combining
/// marks, emoji, other scripts, NUL, YAML specials, and long strings.
pub fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,12}",
        ".{0,8}",
        prop::sample::select(vec![
            "\u{202e}api".to_string(),
            "a\u{0301}".to_string(),
            "名前".to_string(),
            "🐟".to_string(),
            "a\u{0}b".to_string(),
            "~".to_string(),
            "yes".to_string(),
            "-".to_string(),
            "${VAR}".to_string(),
            "0x1F".to_string(),
            "*anchor".to_string(),
            "a: b".to_string(),
            "\t\n".to_string(),
            "x".repeat(10_000),
        ]),
    ]
}

/// `depth` lists inside each other around a number.
pub fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = Value::Array(vec![v]);
    }
    v
}

/// One change at one place of a value.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// The value at the place becomes this one.
    Replace(Value),
    /// The place (a key of an object or an item of a list) is removed.
    Remove,
    /// An object gets a key no schema has (at the place if it is an object, else its parent).
    AddUnknown(String, Value),
}

/// Any mutation.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => weird_value().prop_map(Mutation::Replace),
        2 => Just(Mutation::Remove),
        2 => ("[a-zA-Z_][a-zA-Z0-9_]{0,10}", weird_value())
            .prop_map(|(k, v)| Mutation::AddUnknown(k, v)),
    ]
}

/// A step of a path into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A key of an object.
    Key(String),
    /// An item of a list.
    Item(usize),
}

/// Every place in `v`, the root first.
pub fn places(v: &Value) -> Vec<Vec<Step>> {
    let mut out = vec![vec![]];
    fn walk(v: &Value, path: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    path.push(Step::Key(k.clone()));
                    out.push(path.clone());
                    walk(c, path, out);
                    path.pop();
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    path.push(Step::Item(i));
                    out.push(path.clone());
                    walk(c, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    walk(v, &mut vec![], &mut out);
    out
}

fn at_mut<'a>(v: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(v, |v, s| match s {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Item(i) => &mut v[*i],
    })
}

/// Applies `m` at the place `path` of `v`.
pub fn apply(v: &mut Value, path: &[Step], m: Mutation) {
    match m {
        Mutation::Replace(new) => *at_mut(v, path) = new,
        Mutation::Remove => match path.split_last() {
            None => *v = Value::Null,
            Some((last, parent)) => match (at_mut(v, parent), last) {
                (Value::Object(o), Step::Key(k)) => {
                    o.remove(k);
                }
                (Value::Array(a), Step::Item(i)) => {
                    a.remove(*i);
                }
                _ => {}
            },
        },
        Mutation::AddUnknown(key, new) => {
            let mut target = path;
            loop {
                if let Value::Object(o) = at_mut(v, target) {
                    // `x-` keeps the key apart from every real field name.
                    o.insert(format!("x-{key}"), new);
                    return;
                }
                match target.split_last() {
                    Some((_, parent)) => target = parent,
                    None => return,
                }
            }
        }
    }
}

/// `v` with one random mutation at one random place, and where it happened.
pub fn mutated(v: Value) -> impl Strategy<Value = (Value, Vec<Step>)> {
    (any::<Index>(), mutation()).prop_map(move |(i, m)| {
        let mut v = v.clone();
        let all = places(&v);
        let path = all[i.index(all.len())].clone();
        apply(&mut v, &path, m);
        (v, path)
    })
}

/// Text that is rarely a document: random bytes read as UTF-8, YAML punctuation soup.
pub fn garbage_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        "[-:{}\\[\\],&*!|>'\"%@` \n\ta-z0-9#]{0,80}",
        (1usize..300).prop_map(|d| format!("{}1{}", "[".repeat(d), "]".repeat(d))),
        (1usize..300).prop_map(|d| "a:\n ".repeat(d)),
    ]
}

/// `docs` as one body: YAML documents separated by `---`, or (with `json` and one document)
/// JSON.
pub fn body(docs: &[Value], json: bool) -> String {
    if json && docs.len() == 1 {
        return serde_json::to_string(&docs[0]).expect("JSON");
    }
    docs.iter()
        .map(|d| serde_yaml_ng::to_string(d).expect("YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Standard padded base64.
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(if i <= c.len() {
                A[(n >> shift & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// The proptest settings of Shoal's property tests: `cases` cases, a fixed seed (the same
/// cases on every run, so a failure reproduces; `PROPTEST_RNG_SEED` overrides) and no
/// persistence files (failures print the minimal input, which becomes a regression test).
pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(
            std::env::var("PROPTEST_RNG_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0x5ea1),
        ),
        ..ProptestConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads_like_the_standard() {
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    #[test]
    fn mutations_change_one_place() {
        let mut v = json!({"spec": {"ports": [1, 2]}});
        apply(
            &mut v,
            &[
                Step::Key("spec".into()),
                Step::Key("ports".into()),
                Step::Item(0),
            ],
            Mutation::Remove,
        );
        assert_eq!(v, json!({"spec": {"ports": [2]}}));
        apply(
            &mut v,
            &[Step::Key("spec".into()), Step::Key("ports".into())],
            Mutation::AddUnknown("c".into(), json!(1)),
        );
        assert_eq!(v, json!({"spec": {"ports": [2], "x-c": 1}}));
    }
}
