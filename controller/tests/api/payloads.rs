//! Secrets and Configs through the API (issue 15) against a real etcd: their payloads are
//! never answered nor stored in plaintext, they are immutable but for labels, in use while a
//! service references them; apply's prune; delivery of a task's payloads.

use base64::Engine;
use serde_json::Value;
use shoal_api_types::payload::TaskPayloads;
use shoal_api_types::{SecretReference, Task, TaskSpec, TaskState};

use crate::support::{docs, network, Server};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn secret(name: &str, data: Option<&[u8]>, labels: &str) -> String {
    let spec = match data {
        Some(d) => format!("{{data: \"{}\"}}", b64(d)),
        None => "{}".into(),
    };
    format!(
        "apiVersion: shoal/v1\nkind: Secret\nmetadata: {{name: {name}, labels: {{{labels}}}}}\nspec: {spec}\n"
    )
}

fn config(name: &str, data: &[u8]) -> String {
    format!(
        "{{\"apiVersion\":\"shoal/v1\",\"kind\":\"Config\",\"metadata\":{{\"name\":\"{name}\"}},\"spec\":{{\"data\":\"{}\"}}}}",
        b64(data)
    )
}

/// A service using `secrets`, on `networks`, labelled.
fn service(name: &str, networks: &[&str], secrets: &[&str], labels: &str) -> String {
    let nets: Vec<String> = networks.iter().map(|n| format!("{{name: {n}}}")).collect();
    let secrets: Vec<String> = secrets.iter().map(|s| format!("{{source: {s}}}")).collect();
    format!(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: {name}, labels: {{{labels}}}}}\nspec:\n  image: localhost:5000/busybox:latest\n  networks: [{}]\n  secrets: [{}]\n",
        nets.join(", "),
        secrets.join(", ")
    )
}

fn actions(body: &Value) -> Vec<(String, String)> {
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                format!(
                    "{}/{}",
                    i["kind"].as_str().unwrap().to_lowercase(),
                    i["name"].as_str().unwrap()
                ),
                i["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.into(), b.into())
}

/// Whether any value below the test's key root holds `needle`.
async fn etcd_holds(s: &Server, needle: &[u8]) -> bool {
    let (all, _) = s
        .store
        .list_raw(&format!("{}/", s.store.keys().root()))
        .await
        .unwrap();
    assert!(!all.is_empty());
    all.iter()
        .any(|kv| kv.value.windows(needle.len()).any(|w| w == needle))
}

#[tokio::test]
async fn secrets_are_answered_and_stored_without_their_data() {
    let s = Server::start().await;
    let plaintext = b"correct-horse-battery-staple";
    let created = s
        .post("/apis/shoal/v1/secrets", &secret("pw", Some(plaintext), ""))
        .await;
    assert_eq!(created.code, 201, "{created:?}");
    assert_eq!(created.body["spec"], serde_json::json!({}));
    assert_eq!(created.body["status"]["size"], 28);
    let fingerprint = created.body["status"]["fingerprint"].as_str().unwrap();
    assert!(fingerprint.starts_with("hmac-sha256:"), "{fingerprint}");
    let got = s.get("/apis/shoal/v1/secrets/pw").await;
    assert_eq!((got.code, &got.body["spec"]), (200, &serde_json::json!({})));
    assert_eq!(s.names("secrets").await, ["pw"]);
    // Neither the bytes nor their base64 are anywhere in etcd.
    assert!(!etcd_holds(&s, plaintext).await);
    assert!(!etcd_holds(&s, b64(plaintext).as_bytes()).await);
    // A config is stored as it is (not secret), still never in its object.
    let c = s
        .post("/apis/shoal/v1/configs", &config("conf", b"listen 80;"))
        .await;
    assert_eq!(c.code, 201, "{c:?}");
    assert_eq!(c.body["spec"], serde_json::json!({}));
    let stored = s
        .store
        .get_raw(&format!(
            "{}/private/payloads/configs/conf",
            s.store.keys().root()
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.value, b"listen 80;");
}

#[tokio::test]
async fn secrets_are_immutable_but_for_their_labels() {
    let s = Server::start().await;
    let missing = s
        .post("/apis/shoal/v1/secrets", &secret("pw", None, ""))
        .await;
    assert_eq!(missing.code, 422, "{missing:?}");
    assert_eq!(missing.fields(), ["spec.data"]);
    let created = s
        .post("/apis/shoal/v1/secrets", &secret("pw", Some(b"one"), ""))
        .await;
    assert_eq!(created.code, 201, "{created:?}");
    let rv = created.rv();
    let with_rv = |body: String| {
        body.replace(
            "metadata: {name: pw,",
            &format!("metadata: {{name: pw, resourceVersion: \"{rv}\","),
        )
    };
    let other = s
        .put(
            "/apis/shoal/v1/secrets/pw",
            &with_rv(secret("pw", Some(b"two"), "")),
        )
        .await;
    assert_eq!(other.code, 422, "{other:?}");
    assert_eq!(other.fields(), ["spec.data"]);
    assert!(
        other.message().contains(
            "secret pw is immutable: create a new secret and rotate with `shoal service update \
             --secret-rm pw --secret-add source=pw2,target=pw`"
        ),
        "{}",
        other.message()
    );
    let relabelled = s
        .put(
            "/apis/shoal/v1/secrets/pw",
            &with_rv(secret("pw", None, "tier: db")),
        )
        .await;
    assert_eq!(relabelled.code, 200, "{relabelled:?}");
    assert_eq!(relabelled.body["metadata"]["labels"]["tier"], "db");
    assert_eq!(relabelled.body["status"], created.body["status"]);
    // Applying the same bytes again changes nothing.
    let again = s.apply(&secret("pw", Some(b"one"), "tier: db")).await;
    assert_eq!(actions(&again.body), [pair("secret/pw", "unchanged")]);
}

#[tokio::test]
async fn a_secret_in_use_cannot_be_removed_and_services_need_theirs() {
    let s = Server::start().await;
    let orphan = s
        .post("/apis/shoal/v1/services", &service("api", &[], &["pw"], ""))
        .await;
    assert_eq!(orphan.code, 422, "{orphan:?}");
    assert_eq!(orphan.fields(), ["spec.secrets[0].source"]);
    let both = s
        .apply(&docs(&[
            service("api", &[], &["pw"], ""),
            service("web", &[], &["pw"], ""),
            secret("pw", Some(b"x"), ""),
        ]))
        .await;
    assert_eq!(both.code, 200, "{both:?}");
    let refused = s.delete("/apis/shoal/v1/secrets/pw").await;
    assert_eq!(refused.code, 409, "{refused:?}");
    assert_eq!(
        refused.message(),
        "secret pw is in use by service(s) api, web"
    );
    for svc in ["api", "web"] {
        assert_eq!(
            s.delete(&format!("/apis/shoal/v1/services/{svc}"))
                .await
                .code,
            200
        );
    }
    let removed = s.delete("/apis/shoal/v1/secrets/pw").await;
    assert_eq!(removed.code, 200, "{removed:?}");
    let payload = format!("{}/private/payloads/secrets/pw", s.store.keys().root());
    assert!(s.store.get_raw(&payload).await.unwrap().is_none());
}

#[tokio::test]
async fn a_config_of_1000_kib_fits_through_the_api() {
    let s = Server::start().await;
    let data = vec![b'a'; shoal_api_types::payload::MAX_CONFIG_BYTES];
    let created = s
        .post("/apis/shoal/v1/configs", &config("big", &data))
        .await;
    assert_eq!(created.code, 201, "{:?}", created.body["message"]);
    let over = vec![b'a'; shoal_api_types::payload::MAX_CONFIG_BYTES + 1];
    let refused = s
        .post("/apis/shoal/v1/configs", &config("over", &over))
        .await;
    assert_eq!(refused.code, 422);
    assert_eq!(refused.fields(), ["spec.data"]);
    // Other kinds keep the 1 MiB limit.
    let huge = format!(
        "{{\"apiVersion\":\"shoal/v1\",\"kind\":\"Network\",\"metadata\":{{\"name\":\"n\",\"labels\":{{\"x\":\"{}\"}}}},\"spec\":{{}}}}",
        "y".repeat(1 << 20)
    );
    assert_eq!(s.post("/apis/shoal/v1/networks", &huge).await.code, 413);
}

#[tokio::test]
async fn apply_with_prune_removes_what_the_stack_left_out_and_stack_rm_then_deploy_works() {
    let s = Server::start().await;
    let stack = "shoal.io/stack: shop";
    let deploy = |with_worker: bool| {
        let mut parts = vec![
            network("shop_net", None).replace(
                "metadata: {name: shop_net}",
                "metadata: {name: shop_net, labels: {shoal.io/stack: shop}}",
            ),
            secret("shop_pw", Some(b"pw"), stack),
            service("shop_api", &["shop_net"], &["shop_pw"], stack),
        ];
        if with_worker {
            parts.push(service("shop_worker", &["shop_net"], &[], stack));
        }
        docs(&parts)
    };
    let prune = "/apis/shoal/v1/apply?prune=shoal.io/stack=shop";
    let other = s
        .post("/apis/shoal/v1/services", &service("loose", &[], &[], ""))
        .await;
    assert_eq!(other.code, 201, "{other:?}");
    let first = s.post(prune, &deploy(true)).await;
    assert_eq!(first.code, 200, "{first:?}");
    let second = s.post(prune, &deploy(false)).await;
    assert_eq!(
        actions(&second.body),
        [
            pair("network/shop_net", "unchanged"),
            pair("secret/shop_pw", "unchanged"),
            pair("service/shop_api", "unchanged"),
            pair("service/shop_worker", "pruned"),
        ]
    );
    // `stack rm`: an empty body; then a deploy at once.
    let rm = s.post(prune, "").await;
    assert_eq!(rm.code, 200, "{rm:?}");
    assert_eq!(
        actions(&rm.body),
        [
            pair("service/shop_api", "pruned"),
            pair("network/shop_net", "pruned"),
            pair("secret/shop_pw", "pruned"),
        ]
    );
    assert_eq!(s.names("services").await, ["loose"]);
    assert_eq!(s.names("secrets").await, Vec::<String>::new());
    let payload = format!("{}/private/payloads/secrets/shop_pw", s.store.keys().root());
    assert!(s.store.get_raw(&payload).await.unwrap().is_none());
    let again = s.post(prune, &deploy(false)).await;
    assert_eq!(again.code, 200, "{again:?}");
    assert!(actions(&again.body).iter().all(|(_, a)| a == "created"));
    // Something outside the stack still using a stack network: nothing is removed.
    let user = s
        .post(
            "/apis/shoal/v1/services",
            &service("outside", &["shop_net"], &[], ""),
        )
        .await;
    assert_eq!(user.code, 201, "{user:?}");
    let refused = s.post(prune, "").await;
    assert_eq!(refused.code, 409, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("network shop_net is in use by service(s): outside"),
        "{}",
        refused.message()
    );
    assert_eq!(s.names("services").await.len(), 3);
    assert_eq!(
        s.post("/apis/shoal/v1/apply?prune=nolabel", "").await.code,
        400
    );
}

#[tokio::test]
async fn an_insecure_controller_delivers_a_running_tasks_payloads() {
    let s = Server::start().await;
    let created = s
        .apply(&docs(&[
            secret("pw", Some(b"hunter2"), ""),
            config("conf", b"listen 80;"),
        ]))
        .await;
    assert_eq!(created.code, 200, "{created:?}");
    let mut task = Task::new(
        "t1",
        TaskSpec {
            service: "api".into(),
            node: Some("node-1".into()),
            desired_state: TaskState::Running,
            secrets: vec![SecretReference {
                source: "pw".into(),
                target: "pw".into(),
                ..Default::default()
            }],
            configs: vec![shoal_api_types::ConfigReference {
                source: "conf".into(),
                target: "/conf".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    task = s.store.create(&task).await.unwrap();
    let got = s.get("/v1/node/tasks/t1/payloads").await;
    assert_eq!(got.code, 200, "{got:?}");
    let payloads: TaskPayloads = serde_json::from_value(got.body).unwrap();
    assert_eq!(payloads.secrets.len(), 1);
    assert_eq!(payloads.secrets[0].data, b64(b"hunter2"));
    assert_eq!(payloads.configs[0].data, b64(b"listen 80;"));
    assert_eq!(s.get("/v1/node/tasks/nope/payloads").await.code, 404);
    task.spec.desired_state = TaskState::Shutdown;
    s.store.update(&task).await.unwrap();
    assert_eq!(s.get("/v1/node/tasks/t1/payloads").await.code, 403);
}
