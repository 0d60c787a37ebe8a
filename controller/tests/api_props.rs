//! Property tests of every body-taking route of the HTTP API, against the real in-process
//! API over a real etcd (`SHOAL_TEST_ETCD`, or a private one): apply, POST and PUT of
//! networks, services, secrets and configs, PUT of nodes, rollback, tokens and exec, with
//! well-formed, mutated (`shoal_testkit::gen`) and garbage JSON and YAML bodies.
//!
//! Properties, for every request: no 5xx (and so no panic: axum answers a panicking
//! handler by dropping the connection, which fails the request); every 4xx is a `Status`
//! JSON with the same code, a reason and a message; a 422 has details and every detail
//! names a field (`field` not empty) or its document (`document` set: a document that is
//! not an object), or says the body is not an object at all (`expected a Network object,
//! found a number`: the body is the place); and a rejected request changes nothing: every key under the test's key
//! root (read through the store) is the same, value and revision, before and after. For an
//! apply of several documents with one bad, nothing of the batch is written. Seeds are
//! fixed (`shoal_testkit::gen::config`).

#[path = "api/support.rs"]
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::sync::Mutex;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestRunner;
use reqwest::Method;
use serde_json::{json, Value};
use shoal_api_types::{Node, NodeSpec};
use shoal_testkit::gen;
use support::{Answer, Server};

const CASES: u32 = 64;

/// Every key, value and revision under the test's key root.
async fn snapshot(s: &Server) -> Vec<(String, Vec<u8>, i64)> {
    let (kvs, _) = s
        .store
        .list_raw(s.store.keys().root())
        .await
        .expect("list the key root");
    kvs.into_iter()
        .map(|kv| (kv.key, kv.value, kv.mod_revision))
        .collect()
}

/// A server with objects to replace and roll back: network `base`, service `svc` (changed
/// once, so it has a previous spec), secret `sec`, config `cfg`, node `n1`.
async fn seeded() -> Server {
    let s = Server::start().await;
    let net = "apiVersion: shoal/v1\nkind: Network\nmetadata: {name: base}\nspec: {subnet: 10.250.0.0/24}\n";
    let svc = |r: u8| {
        format!("apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: svc}}\nspec: {{image: busybox, replicas: {r}, networks: [{{name: base}}]}}\n")
    };
    let pay = |k: &str, n: &str| {
        format!("apiVersion: shoal/v1\nkind: {k}\nmetadata: {{name: {n}}}\nspec: {{data: aGk=}}\n")
    };
    let body = support::docs(&[
        net.to_string(),
        svc(1),
        pay("Secret", "sec"),
        pay("Config", "cfg"),
    ]);
    let a = s.apply(&body).await;
    assert_eq!(a.code, 200, "{a:?}");
    let a = s.apply(&svc(2)).await;
    assert_eq!(a.code, 200, "{a:?}");
    s.store
        .create(&Node::new("n1", NodeSpec::default()))
        .await
        .expect("create node");
    s
}

/// Sends one request and checks the properties.
async fn check(
    s: &Server,
    method: Method,
    path: &str,
    body: &str,
    codes: &Mutex<BTreeMap<u16, usize>>,
) -> Result<(), TestCaseError> {
    // A replace names the revision it read: `@RV` stands for the object's current one.
    let body = &if body.contains("@RV") {
        let rv = s.get(path).await.rv();
        body.replace("@RV", &rv)
    } else {
        body.to_string()
    };
    let before = snapshot(s).await;
    let a: Answer = s.call(method.clone(), path, Some(body)).await;
    *codes.lock().unwrap().entry(a.code).or_default() += 1;
    prop_assert!(
        a.code < 500,
        "{method} {path}: {} {}\nbody:\n{body}",
        a.code,
        a.body
    );
    if a.code >= 400 {
        prop_assert_eq!(a.body["code"].as_u64(), Some(a.code as u64), "{:?}", a);
        prop_assert!(!a.reason().is_empty() && !a.message().is_empty(), "{:?}", a);
        if a.code == 422 {
            let details = a.body["details"].as_array().cloned().unwrap_or_default();
            prop_assert!(!details.is_empty(), "422 without details: {:?}", a);
            for d in &details {
                let field = d["field"].as_str().unwrap_or("");
                let message = d["message"].as_str().unwrap_or("");
                prop_assert!(
                    !field.is_empty()
                        || d["document"].is_u64()
                        || message.starts_with("expected a "),
                    "{method} {path}: a detail without a field: {d}\nbody:\n{body}"
                );
            }
        }
        let after = snapshot(s).await;
        prop_assert!(
            before == after,
            "{method} {path}: rejected with {} but the store changed\nbody:\n{body}",
            a.code
        );
    }
    Ok(())
}

/// Runs `strategy` of `(method, path, body)` against one seeded server; returns how many
/// answers had each code (printed, and checked by callers so that the generators reach
/// both acceptance and rejection).
fn run<S>(strategy: S) -> BTreeMap<u16, usize>
where
    S: Strategy<Value = (Method, String, String)>,
{
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let s = rt.block_on(seeded());
    let mut runner = TestRunner::new(gen::config(CASES));
    let codes = Mutex::new(BTreeMap::new());
    let result = runner.run(&strategy, |(method, path, body)| {
        rt.block_on(check(&s, method, &path, &body, &codes))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let codes = codes.into_inner().unwrap();
    println!("answers by code: {codes:?}");
    codes
}

/// Asserts that some requests were accepted and some rejected.
fn assert_both(codes: &BTreeMap<u16, usize>) {
    assert!(
        codes.keys().any(|c| *c < 300),
        "nothing accepted: {codes:?}"
    );
    assert!(
        codes.keys().any(|c| *c >= 400),
        "nothing rejected: {codes:?}"
    );
}

/// A body: a value as JSON or YAML text.
fn text(v: &Value, json: bool) -> String {
    gen::body(std::slice::from_ref(v), json)
}

/// Well-formed, mutated or garbage text from `doc`.
fn variants(doc: impl Strategy<Value = Value>) -> impl Strategy<Value = String> {
    (doc, any::<bool>(), 0u8..8).prop_flat_map(|(doc, json, pick)| match pick {
        0 => Just(text(&doc, json)).boxed(),
        1 => gen::garbage_text().boxed(),
        _ => gen::mutated(doc)
            .prop_map(move |(v, _)| text(&v, json))
            .boxed(),
    })
}

const PLURALS: &[(&str, &str)] = &[
    ("networks", "base"),
    ("services", "svc"),
    ("secrets", "sec"),
    ("configs", "cfg"),
    ("nodes", "n1"),
];

/// An object of the kind of `plural` named `name`, to replace the stored one (at its
/// current revision, `@RV`).
fn object_of(plural: &str, name: String) -> BoxedStrategy<Value> {
    let at_rv = |mut v: Value| {
        v["metadata"]["resourceVersion"] = json!("@RV");
        v
    };
    object_kind(plural, name).prop_map(at_rv).boxed()
}

fn object_kind(plural: &str, name: String) -> BoxedStrategy<Value> {
    match plural {
        "networks" => gen::network_with(name, Some(1999)).boxed(),
        "services" => gen::service_with(name, vec!["base".into()]).boxed(),
        "secrets" => gen::payload_with("Secret", name).boxed(),
        "configs" => gen::payload_with("Config", name).boxed(),
        _ => gen::node_with(name).boxed(),
    }
}

#[test]
fn apply_bodies_answer_4xx_with_fields_and_write_nothing_when_rejected() {
    let batch_with_one_bad = gen::valid_batch().prop_flat_map(|b| {
        let n = b.len();
        (Just(b), 0..n, any::<Index>(), gen::mutation()).prop_map(|(mut b, i, at, m)| {
            let places = gen::places(&b[i]);
            let path = places[at.index(places.len())].clone();
            gen::apply(&mut b[i], &path, m);
            gen::body(&b, false)
        })
    });
    let body = prop_oneof![
        2 => batch_with_one_bad,
        1 => gen::valid_batch().prop_map(|b| gen::body(&b, false)),
        1 => variants(gen::valid_object()),
    ];
    let codes = run(body.prop_map(|b| (Method::POST, "/apis/shoal/v1/apply".to_string(), b)));
    assert_both(&codes);
}

#[test]
fn create_bodies_answer_4xx_with_fields_and_write_nothing_when_rejected() {
    let strategy = (
        prop::sample::select(&PLURALS[..4]),
        variants(gen::valid_object()),
    )
        .prop_map(|((plural, _), body)| (Method::POST, format!("/apis/shoal/v1/{plural}"), body));
    run(strategy);
}

#[test]
fn replace_bodies_answer_4xx_with_fields_and_write_nothing_when_rejected() {
    let strategy = prop::sample::select(PLURALS).prop_flat_map(|(plural, name)| {
        (
            Just(plural),
            Just(name),
            variants(object_of(plural, name.to_string())),
        )
            .prop_map(|(plural, name, body)| {
                (Method::PUT, format!("/apis/shoal/v1/{plural}/{name}"), body)
            })
    });
    assert_both(&run(strategy));
}

#[test]
fn rollback_token_and_exec_bodies_answer_4xx_and_write_nothing_when_rejected() {
    let token = (
        gen::name(),
        prop::sample::select(vec!["admin", "read-only", "operator", "x"]),
    )
        .prop_map(|(name, role)| json!({"name": name, "role": role}));
    let exec = (
        prop::collection::vec("[a-z]{1,5}", 0..3),
        prop::option::of(0u64..100),
    )
        .prop_map(|(argv, t)| json!({"argv": argv, "timeoutSeconds": t}));
    let strategy = prop_oneof![
        (
            prop::sample::select(vec!["svc", "nope", "base"]),
            gen::garbage_text()
        )
            .prop_map(|(name, body)| (
                Method::POST,
                format!("/apis/shoal/v1/services/{name}/rollback?dryRun=true"),
                body
            )),
        variants(token).prop_map(|b| (Method::POST, "/v1/tokens".to_string(), b)),
        variants(exec).prop_map(|b| (
            Method::POST,
            "/apis/shoal/v1/tasks/nope/exec".to_string(),
            b
        )),
    ];
    run(strategy);
}
