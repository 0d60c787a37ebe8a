//! Apply: create-or-update of a multi-document body, all or nothing, with dryRun.

use serde_json::Value;

use crate::support::{docs, network, service, Server};

fn actions(body: &Value) -> Vec<(String, String, String)> {
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap().to_string(),
                i["name"].as_str().unwrap().to_string(),
                i["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn triple(kind: &str, name: &str, action: &str) -> (String, String, String) {
    (kind.into(), name.into(), action.into())
}

#[tokio::test]
async fn apply_creates_then_reports_unchanged_then_configured() {
    let s = Server::start().await;
    let app = docs(&[
        network("appnet", None),
        service("api", &["appnet"], &["8080"]),
    ]);
    let first = s.apply(&app).await;
    assert_eq!(first.code, 200, "{first:?}");
    assert_eq!(first.body["dryRun"], false);
    assert_eq!(
        actions(&first.body),
        [
            triple("Network", "appnet", "created"),
            triple("Service", "api", "created")
        ]
    );
    let rvs: Vec<&str> = first.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["resourceVersion"].as_str().unwrap())
        .collect();
    assert_eq!(rvs[0], rvs[1], "one transaction wrote both");

    let again = s.apply(&app).await;
    assert_eq!(
        actions(&again.body),
        [
            triple("Network", "appnet", "unchanged"),
            triple("Service", "api", "unchanged")
        ]
    );

    let changed = docs(&[
        network("appnet", None),
        service("api", &["appnet"], &["9090"]),
    ]);
    let third = s.apply(&changed).await;
    assert_eq!(third.code, 200, "{third:?}");
    assert_eq!(
        actions(&third.body),
        [
            triple("Network", "appnet", "unchanged"),
            triple("Service", "api", "configured")
        ]
    );
    let api = s.get("/apis/shoal/v1/services/api").await;
    assert_eq!(api.body["spec"]["ports"][0]["published"], 9090);
    assert_eq!(api.body["metadata"]["generation"], 2);
}

#[tokio::test]
async fn apply_lets_services_use_networks_from_the_same_body_in_any_order() {
    let s = Server::start().await;
    let a = s
        .apply(&docs(&[
            service("api", &["appnet"], &[]),
            network("appnet", None),
        ]))
        .await;
    assert_eq!(a.code, 200, "{a:?}");
    assert_eq!(s.names("services").await, ["api"]);
}

#[tokio::test]
async fn apply_is_all_or_nothing_when_one_document_of_three_is_bad() {
    let s = Server::start().await;
    let bad = "apiVersion: shoal/v1\nkind: Service\nmetadata: {name: worker}\nspec: {image: busybox, replicas: -1}\n".to_string();
    let a = s
        .apply(&docs(&[
            network("appnet", None),
            service("api", &["appnet"], &[]),
            bad,
        ]))
        .await;
    assert_eq!((a.code, a.reason()), (422, "Invalid"), "{a:?}");
    assert_eq!(a.fields(), ["spec.replicas"]);
    assert_eq!(a.body["details"][0]["document"], 3);
    assert_eq!(a.body["details"][0]["object"], "service/worker");
    s.assert_nothing_written().await;
}

#[tokio::test]
async fn apply_is_all_or_nothing_when_a_cross_object_rule_fails() {
    let s = Server::start().await;
    assert_eq!(
        s.post("/apis/shoal/v1/services", &service("web", &[], &["8080"]))
            .await
            .code,
        201
    );
    let a = s
        .apply(&docs(&[
            network("appnet", None),
            service("api", &["appnet"], &["8080"]),
        ]))
        .await;
    assert_eq!((a.code, a.reason()), (409, "Conflict"), "{a:?}");
    assert!(
        a.message()
            .contains("port 8080/tcp is already published by service web"),
        "{a:?}"
    );
    assert_eq!(a.body["details"][0]["document"], 2);
    assert_eq!(s.names("networks").await, Vec::<String>::new());
    assert_eq!(s.names("services").await, ["web"]);
}

#[tokio::test]
async fn apply_dry_run_reports_actions_and_writes_nothing() {
    let s = Server::start().await;
    let a = s
        .post(
            "/apis/shoal/v1/apply?dryRun=true",
            &docs(&[network("appnet", None), service("api", &["appnet"], &[])]),
        )
        .await;
    assert_eq!(a.code, 200, "{a:?}");
    assert_eq!(a.body["dryRun"], true);
    assert_eq!(
        actions(&a.body),
        [
            triple("Network", "appnet", "created"),
            triple("Service", "api", "created")
        ]
    );
    s.assert_nothing_written().await;

    // On existing objects too: a dry-run change leaves them as they were.
    s.apply(&network("appnet", None)).await;
    let before = s.get("/apis/shoal/v1/networks/appnet").await;
    let labelled =
        "apiVersion: shoal/v1\nkind: Network\nmetadata: {name: appnet, labels: {a: b}}\nspec: {}\n";
    let dry = s.post("/apis/shoal/v1/apply?dryRun=true", labelled).await;
    assert_eq!(
        actions(&dry.body),
        [triple("Network", "appnet", "configured")]
    );
    assert_eq!(
        s.get("/apis/shoal/v1/networks/appnet").await.body,
        before.body
    );
}

#[tokio::test]
async fn apply_accepts_json_documents() {
    let s = Server::start().await;
    let a = s.apply(r#"{"apiVersion":"shoal/v1","kind":"Network","metadata":{"name":"jsonnet"},"spec":{"subnet":"10.3.0.0/24"}}"#).await;
    assert_eq!(a.code, 200, "{a:?}");
    assert_eq!(s.names("networks").await, ["jsonnet"]);
}

#[tokio::test]
async fn apply_keeps_uid_and_status_when_configuring() {
    let s = Server::start().await;
    s.apply(&network("appnet", None)).await;
    let key = s
        .store
        .keys()
        .named::<shoal_api_types::NetworkSpec>("appnet");
    s.store
        .update_with::<shoal_api_types::NetworkSpec>(&key, |n| {
            n.status.subnet = Some("10.0.9.0/24".into());
            true
        })
        .await
        .unwrap();
    let before = s.get("/apis/shoal/v1/networks/appnet").await;
    // Pinning the allocated subnet is allowed; it is a spec change.
    let a = s.apply(&network("appnet", Some("10.0.9.0/24"))).await;
    assert_eq!(
        actions(&a.body),
        [triple("Network", "appnet", "configured")],
        "{a:?}"
    );
    let after = s.get("/apis/shoal/v1/networks/appnet").await;
    assert_eq!(
        after.body["metadata"]["uid"],
        before.body["metadata"]["uid"]
    );
    assert_eq!(after.body["status"]["subnet"], "10.0.9.0/24");
    assert_eq!(after.body["metadata"]["generation"], 2);
    // Moving it elsewhere is not.
    let moved = s.apply(&network("appnet", Some("10.0.10.0/24"))).await;
    assert_eq!(
        (moved.code, moved.fields()),
        (422, vec!["spec.subnet".to_string()]),
        "{moved:?}"
    );
}

/// The demo manifests, concatenated in file-name order.
fn demo_manifests() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/demo");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("manifests/demo")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let texts: Vec<String> = files
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("readable"))
        .collect();
    docs(&texts)
}

#[tokio::test]
async fn the_demo_manifests_apply_and_their_network_cannot_be_removed_under_them() {
    let s = Server::start().await;
    let a = s.apply(&demo_manifests()).await;
    assert_eq!(a.code, 200, "{a:?}");
    assert!(
        actions(&a.body).iter().all(|(_, _, act)| act == "created"),
        "{a:?}"
    );
    assert_eq!(s.names("networks").await, ["appoverlay"]);
    assert_eq!(s.names("services").await, ["api", "web", "worker"]);
    let refused = s.delete("/apis/shoal/v1/networks/appoverlay").await;
    assert_eq!(refused.code, 409);
    assert_eq!(
        refused.message(),
        "network appoverlay is in use by service(s): api, web, worker"
    );
    let again = s.apply(&demo_manifests()).await;
    assert!(
        actions(&again.body)
            .iter()
            .all(|(_, _, act)| act == "unchanged"),
        "{again:?}"
    );
}
