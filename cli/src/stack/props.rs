//! Property tests of the compose stack parser ([`super::convert`]: load, interpolate, merge,
//! convert): compose files with random services, keys and values, and `${VAR}`
//! interpolation edge cases. Properties: it never panics; an interpolated string is
//! never longer than its text allows (no re-interpolation of values); every error names
//! where it is: the compose key path (`services.web.deploy.replicas: ...`), a top-level
//! key in backticks (`unknown field `foo``, `extension key `a``), or, for a file that is
//! not YAML or not a mapping, the file name (and `line N column M` for syntax, except for a file of
//! several documents, which is wrong as a whole).
//! Seeds are fixed (`shoal_testkit::gen::config`).

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use shoal_testkit::gen;

use super::interpolate::{interpolate, Unset};
use super::{convert, ComposeFile, Inputs};

/// The environment of the tests: `SET=v`, `EMPTY=` and `DOLLAR=$X`; everything else unset.
fn lookup(name: &str) -> Option<String> {
    match name {
        "SET" => Some("v".into()),
        "EMPTY" => Some(String::new()),
        "DOLLAR" => Some("${SET}".into()),
        _ => None,
    }
}

fn no_files(p: &Path) -> std::io::Result<Vec<u8>> {
    if p.ends_with("payload.txt") {
        Ok(b"hello".to_vec())
    } else {
        Err(std::io::Error::new(std::io::ErrorKind::NotFound, "none"))
    }
}

/// A string of interpolation pieces: `$`, `$$`, `${`, `}`, names, operators, words.
fn interpolated() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "$", "$$", "${", "}", "SET", "EMPTY", "UNSET", "DOLLAR", ":-", "-", ":?", "?", ":+",
            "+", "word", " ", "{", "1", "_", "é", ":",
        ]),
        0..12,
    )
    .prop_map(|parts| parts.concat())
}

/// A value for a compose key: usually of a plausible shape, sometimes weird.
fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => interpolated().prop_map(Value::String),
        2 => gen::weird_value(),
        1 => prop::collection::vec(interpolated().prop_map(Value::String), 0..3).prop_map(Value::Array),
        1 => prop::collection::btree_map("[A-Za-z_]{1,6}", interpolated().prop_map(Value::String), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
    ]
}

const SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "ports",
    "networks",
    "secrets",
    "configs",
    "volumes",
    "healthcheck",
    "labels",
    "user",
    "deploy",
    "env_file",
    "cap_add",
    "bogus",
];

/// One service: a plausible base (image, replicas, ports) with random keys over it.
fn service() -> impl Strategy<Value = Value> {
    (
        "[a-z]{1,6}",
        0u32..5,
        prop::collection::vec(
            (1u16..=65535, 1u16..=65535).prop_map(|(a, b)| format!("{a}:{b}")),
            0..2,
        ),
        prop::collection::vec((prop::sample::select(SERVICE_KEYS), value()), 0..3),
        prop::option::of(value()),
    )
        .prop_map(|(image, replicas, ports, extra, replicas_override)| {
            let mut s = Map::new();
            s.insert("image".into(), json!(image));
            s.insert("ports".into(), json!(ports));
            let mut deploy = json!({"replicas": replicas});
            if let Some(r) = replicas_override {
                deploy["replicas"] = r;
            }
            s.insert("deploy".into(), deploy);
            for (k, v) in extra {
                s.insert(k.to_string(), v);
            }
            Value::Object(s)
        })
}

/// A whole compose file.
fn compose() -> impl Strategy<Value = Value> {
    (
        prop::collection::btree_map("[a-z][a-z0-9_-]{0,6}", service(), 0..3),
        prop::collection::btree_map("[a-z]{1,5}", prop::option::of(value()), 0..2),
        prop::collection::btree_map("[a-z]{1,5}", value(), 0..2),
        prop::option::of(("[a-z]{1,8}", value())),
    )
        .prop_map(|(services, networks, secrets, top)| {
            let mut c = Map::new();
            c.insert(
                "services".into(),
                Value::Object(services.into_iter().collect()),
            );
            if !networks.is_empty() {
                let n: Map<String, Value> = networks
                    .into_iter()
                    .map(|(k, v)| (k, v.unwrap_or(Value::Null)))
                    .collect();
                c.insert("networks".into(), Value::Object(n));
            }
            if !secrets.is_empty() {
                let s: Map<String, Value> = secrets
                    .into_iter()
                    .map(|(k, v)| (k, json!({"file": "payload.txt", "name": v})))
                    .collect();
                c.insert("secrets".into(), Value::Object(s));
            }
            if let Some((k, v)) = top {
                c.insert(k, v);
            }
            Value::Object(c)
        })
}

const TOP_KEYS: &[&str] = &[
    "services", "networks", "secrets", "configs", "volumes", "version", "name",
];

/// Whether an error message (with its causes) says where it is (see the module docs).
fn names_key(message: &str, file: &str) -> bool {
    if let Some(rest) = message.strip_prefix(&format!("{file}: ")) {
        return rest.starts_with("not valid YAML")
            && (rest.contains("line ") || rest.contains("more than one document"))
            || rest.starts_with("a compose file is a mapping")
            || rest.starts_with("the file is empty")
            || TOP_KEYS.iter().any(|k| rest.starts_with(&format!("{k}.")))
            || starts_with_key_path(rest);
    }
    TOP_KEYS
        .iter()
        .any(|k| message.starts_with(&format!("{k}.")) || message.starts_with(&format!("{k}:")))
        || message.starts_with("unknown field `")
        || message.starts_with("extension key `")
}

/// Whether `s` starts `a.b[0].c: ` (an interpolation error names the key it is under).
fn starts_with_key_path(s: &str) -> bool {
    s.split_once(": ").is_some_and(|(path, _)| {
        !path.is_empty()
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c))
    })
}

fn check(doc: &Value, json_text: bool) -> Result<(), TestCaseError> {
    let text = if json_text {
        serde_json::to_string(doc).expect("JSON")
    } else {
        serde_yaml_ng::to_string(doc).expect("YAML")
    };
    check_text(&text)
}

fn check_text(text: &str) -> Result<(), TestCaseError> {
    let files = [ComposeFile {
        path: PathBuf::from("c.yml"),
        text: text.to_string(),
    }];
    let inputs = Inputs {
        lookup: &lookup,
        read: &no_files,
    };
    if let Err(e) = convert("st", &files, &inputs) {
        let message = format!("{e:#}");
        prop_assert!(
            names_key(&message, "c.yml"),
            "error without a key path: {message}\nfile:\n{text}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(gen::config(256))]

    #[test]
    fn compose_files_never_panic_and_errors_name_the_key(doc in compose(), json_text in any::<bool>()) {
        check(&doc, json_text)?;
    }

    #[test]
    fn compose_garbage_never_panics(text in gen::garbage_text()) {
        check_text(&text)?;
    }

    #[test]
    fn interpolation_never_panics_and_does_not_reinterpolate(s in interpolated()) {
        let mut unset = Unset::default();
        if let Ok(out) = interpolate(&s, &lookup, &mut unset) {
            // Each variable adds at most its value ("${SET}" of DOLLAR is 6 bytes).
            prop_assert!(out.len() <= s.len() * 6, "{s:?} -> {out:?}");
        }
    }
}

#[test]
fn valid_compose_files_from_the_generator_are_mostly_accepted() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    // The plain base of `service()` converts: the generator is not all-invalid.
    let mut runner = TestRunner::new(gen::config(1));
    let strategy =
        prop::collection::btree_map("[a-z]([a-z0-9-]{0,5}[a-z0-9])?", "[a-z]{1,6}", 1..4);
    for _ in 0..50 {
        let services = strategy.new_tree(&mut runner).unwrap().current();
        let doc = json!({"services": services.into_iter()
            .map(|(k, image)| (k, json!({"image": image, "deploy": {"replicas": 1}})))
            .collect::<Map<String, Value>>()});
        let files = [ComposeFile {
            path: PathBuf::from("c.yml"),
            text: serde_yaml_ng::to_string(&doc).unwrap(),
        }];
        let inputs = Inputs {
            lookup: &lookup,
            read: &no_files,
        };
        convert("st", &files, &inputs).unwrap_or_else(|e| panic!("{e:#}: {doc}"));
    }
}
