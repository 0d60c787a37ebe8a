//! REST: create, get, list, replace, delete; optimistic concurrency; rules that span
//! objects; read-only kinds; nodes; health, metrics and OpenAPI.

use reqwest::Method;
use serde_json::{json, Value};
use shoal_api_types::{Network, NetworkSpec, Node, NodeSpec, NodeState, Task, TaskSpec};

use crate::support::{network, service, Server};

const NETS: &str = "/apis/shoal/v1/networks";
const SVCS: &str = "/apis/shoal/v1/services";

#[tokio::test]
async fn network_can_be_created_read_listed_replaced_and_deleted() {
    let s = Server::start().await;
    let created = s.post(NETS, &network("appnet", Some("10.1.0.0/24"))).await;
    assert_eq!(created.code, 201, "{created:?}");
    let meta = &created.body["metadata"];
    assert_eq!(meta["generation"], 1);
    assert!(!meta["uid"].as_str().unwrap().is_empty());
    assert!(meta["creationTimestamp"].is_string());
    assert_eq!(
        created.body["spec"]["driver"], "overlay",
        "defaults are applied"
    );

    let got = s.get(&format!("{NETS}/appnet")).await;
    assert_eq!(got.code, 200);
    assert_eq!(got.body, created.body);

    let list = s.get(NETS).await;
    assert_eq!(list.code, 200);
    assert_eq!(list.body["kind"], "NetworkList");
    assert_eq!(list.body["apiVersion"], "shoal/v1");
    let list_rv: i64 = list.rv().parse().unwrap();
    assert!(list_rv >= created.rv().parse::<i64>().unwrap());
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);

    // The controller allocates; a replace must keep what it wrote.
    let key = s.store.keys().named::<NetworkSpec>("appnet");
    let allocated = s
        .store
        .update_with::<NetworkSpec>(&key, |n: &mut Network| {
            n.status.vni = Some(4097);
            true
        })
        .await
        .unwrap()
        .unwrap();
    let mut body = got.body.clone();
    body["metadata"]["resourceVersion"] =
        json!(allocated.metadata.resource_version.clone().unwrap());
    body["metadata"]["labels"] = json!({"team": "core"});
    body["spec"]["mtu"] = json!(1400);
    body["status"] = json!({"vni": 1});
    let replaced = s.put(&format!("{NETS}/appnet"), &body.to_string()).await;
    assert_eq!(replaced.code, 200, "{replaced:?}");
    assert_eq!(replaced.body["metadata"]["uid"], meta["uid"]);
    assert_eq!(
        replaced.body["metadata"]["creationTimestamp"],
        meta["creationTimestamp"]
    );
    assert_eq!(replaced.body["metadata"]["generation"], 2, "spec changed");
    assert_eq!(replaced.body["metadata"]["labels"]["team"], "core");
    assert_eq!(replaced.body["spec"]["mtu"], 1400);
    assert_eq!(
        replaced.body["status"]["vni"], 4097,
        "status is the controller's, not the client's"
    );

    // Labels alone do not bump the generation.
    let mut body = replaced.body.clone();
    body["metadata"]["labels"] = json!({"team": "edge"});
    let relabelled = s.put(&format!("{NETS}/appnet"), &body.to_string()).await;
    assert_eq!(relabelled.code, 200, "{relabelled:?}");
    assert_eq!(relabelled.body["metadata"]["generation"], 2);

    let deleted = s.delete(&format!("{NETS}/appnet")).await;
    assert_eq!(deleted.code, 200, "{deleted:?}");
    assert_eq!(deleted.body["metadata"]["name"], "appnet");
    let gone = s.get(&format!("{NETS}/appnet")).await;
    assert_eq!((gone.code, gone.reason()), (404, "NotFound"));
    assert_eq!(s.delete(&format!("{NETS}/appnet")).await.code, 404);
}

#[tokio::test]
async fn service_can_be_created_replaced_and_deleted() {
    let s = Server::start().await;
    assert_eq!(s.post(NETS, &network("appnet", None)).await.code, 201);
    let created = s.post(SVCS, &service("api", &["appnet"], &["8080"])).await;
    assert_eq!(created.code, 201, "{created:?}");
    assert_eq!(created.body["spec"]["replicas"], 1);
    let mut body = created.body.clone();
    body["spec"]["replicas"] = json!(3);
    let scaled = s.put(&format!("{SVCS}/api"), &body.to_string()).await;
    assert_eq!(scaled.code, 200, "{scaled:?}");
    assert_eq!(
        (
            scaled.body["spec"]["replicas"].clone(),
            scaled.body["metadata"]["generation"].clone()
        ),
        (json!(3), json!(2))
    );
    assert_eq!(s.delete(&format!("{SVCS}/api")).await.code, 200);
    assert_eq!(s.names("services").await, Vec::<String>::new());
}

#[tokio::test]
async fn rollback_swaps_to_the_previous_spec_and_toggles_and_needs_one() {
    let s = Server::start().await;
    let rollback = |name: &str| format!("{SVCS}/{name}/rollback");
    let created = s.post(SVCS, &service("api", &[], &[])).await;
    assert_eq!(created.code, 201, "{created:?}");
    let none = s.post(&rollback("api"), "").await;
    assert_eq!((none.code, none.reason()), (409, "Conflict"), "{none:?}");
    assert!(
        none.message()
            .contains("service api has no previous spec to roll back to"),
        "{none:?}"
    );
    let missing = s.post(&rollback("nope"), "").await;
    assert_eq!((missing.code, missing.reason()), (404, "NotFound"));

    let mut body = created.body.clone();
    body["spec"]["image"] = json!("busybox:2");
    let v2 = s.put(&format!("{SVCS}/api"), &body.to_string()).await;
    assert_eq!(v2.code, 200, "{v2:?}");
    assert_eq!(v2.body["metadata"]["generation"], 2);

    // A dry run answers what would be stored and writes nothing.
    let dry = s
        .post(&format!("{}?dryRun=true", rollback("api")), "")
        .await;
    assert_eq!(dry.code, 200, "{dry:?}");
    assert_eq!(dry.body["spec"]["image"], "localhost:5000/busybox:latest");
    assert_eq!(s.get(&format!("{SVCS}/api")).await.rv(), v2.rv());

    let back = s.post(&rollback("api"), "").await;
    assert_eq!(back.code, 200, "{back:?}");
    assert_eq!(back.body["spec"]["image"], "localhost:5000/busybox:latest");
    assert_eq!(back.body["metadata"]["generation"], 3);
    assert_eq!(back.body["status"]["previousSpec"]["image"], "busybox:2");
    let update = &back.body["status"]["updateStatus"];
    assert_eq!(update["state"], "rollback_started", "{back:?}");
    assert_eq!(update["message"], "manually requested rollback");
    assert!(update["startedAt"].is_string(), "{back:?}");
    assert_eq!(s.get(&format!("{SVCS}/api")).await.body, back.body);

    // Twice in a row goes forward again.
    let forward = s.post(&rollback("api"), "").await;
    assert_eq!(forward.code, 200, "{forward:?}");
    assert_eq!(forward.body["spec"]["image"], "busybox:2");
    assert_eq!(
        forward.body["status"]["previousSpec"]["image"],
        "localhost:5000/busybox:latest"
    );
    assert_eq!(forward.body["metadata"]["generation"], 4);
}

#[tokio::test]
async fn rollback_to_a_port_another_service_took_since_is_409_and_writes_nothing() {
    let s = Server::start().await;
    let created = s.post(SVCS, &service("api", &[], &["8080"])).await;
    assert_eq!(created.code, 201, "{created:?}");
    let mut body = created.body.clone();
    body["spec"]["ports"] = json!([]);
    let moved = s.put(&format!("{SVCS}/api"), &body.to_string()).await;
    assert_eq!(moved.code, 200, "{moved:?}");
    assert_eq!(
        s.post(SVCS, &service("web", &[], &["8080"])).await.code,
        201
    );
    let a = s.post(&format!("{SVCS}/api/rollback"), "").await;
    assert_eq!((a.code, a.reason()), (409, "Conflict"), "{a:?}");
    assert!(
        a.message().contains("8080") && a.message().contains("web"),
        "{a:?}"
    );
    assert_eq!(s.get(&format!("{SVCS}/api")).await.rv(), moved.rv());
}

#[tokio::test]
async fn creating_an_existing_object_is_409_already_exists() {
    let s = Server::start().await;
    assert_eq!(s.post(NETS, &network("appnet", None)).await.code, 201);
    let again = s.post(NETS, &network("appnet", None)).await;
    assert_eq!((again.code, again.reason()), (409, "AlreadyExists"));
    assert!(
        again
            .message()
            .contains("network \"appnet\" already exists"),
        "{again:?}"
    );
}

#[tokio::test]
async fn replace_with_a_stale_resource_version_is_409() {
    let s = Server::start().await;
    let first = s.post(NETS, &network("appnet", None)).await;
    let mut body = first.body.clone();
    body["metadata"]["labels"] = json!({"v": "2"});
    assert_eq!(
        s.put(&format!("{NETS}/appnet"), &body.to_string())
            .await
            .code,
        200
    );
    // Same (now stale) resourceVersion again.
    body["metadata"]["labels"] = json!({"v": "3"});
    let stale = s.put(&format!("{NETS}/appnet"), &body.to_string()).await;
    assert_eq!((stale.code, stale.reason()), (409, "Conflict"), "{stale:?}");
    assert!(
        stale
            .message()
            .contains(&format!("changed since resourceVersion {}", first.rv())),
        "{stale:?}"
    );
    assert_eq!(
        s.get(&format!("{NETS}/appnet")).await.body["metadata"]["labels"]["v"],
        "2"
    );
}

#[tokio::test]
async fn replace_without_a_resource_version_is_422() {
    let s = Server::start().await;
    s.post(NETS, &network("appnet", None)).await;
    let a = s
        .put(&format!("{NETS}/appnet"), &network("appnet", None))
        .await;
    assert_eq!((a.code, a.reason()), (422, "Invalid"), "{a:?}");
    assert_eq!(a.fields(), ["metadata.resourceVersion"]);
}

#[tokio::test]
async fn replace_of_a_missing_object_is_404() {
    let s = Server::start().await;
    let body = json!({"apiVersion": "shoal/v1", "kind": "Network", "metadata": {"name": "nope", "resourceVersion": "5"}, "spec": {}});
    assert_eq!(
        s.put(&format!("{NETS}/nope"), &body.to_string()).await.code,
        404
    );
}

#[tokio::test]
async fn two_concurrent_replaces_one_wins_and_one_gets_409() {
    let s = Server::start().await;
    let created = s.post(SVCS, &service("api", &[], &[])).await;
    assert_eq!(created.code, 201, "{created:?}");
    let body_for = |replicas: i64| {
        let mut b = created.body.clone();
        b["spec"]["replicas"] = json!(replicas);
        b.to_string()
    };
    let (b2, b5) = (body_for(2), body_for(5));
    let path = format!("{SVCS}/api");
    let (a, b) = tokio::join!(s.put(&path, &b2), s.put(&path, &b5));
    let mut codes = [a.code, b.code];
    codes.sort();
    assert_eq!(codes, [200, 409], "{a:?} {b:?}");
    let winner = if a.code == 200 { &a } else { &b };
    let loser = if a.code == 409 { &a } else { &b };
    assert_eq!(loser.reason(), "Conflict");
    let now = s.get(&path).await;
    assert_eq!(
        now.body["spec"]["replicas"],
        winner.body["spec"]["replicas"]
    );
    assert_eq!(now.body["metadata"]["generation"], 2);
}

#[tokio::test]
async fn deleting_a_network_in_use_is_409_naming_the_services() {
    let s = Server::start().await;
    assert_eq!(s.post(NETS, &network("appoverlay", None)).await.code, 201);
    for name in ["worker", "api"] {
        assert_eq!(
            s.post(SVCS, &service(name, &["appoverlay"], &[]))
                .await
                .code,
            201
        );
    }
    let refused = s.delete(&format!("{NETS}/appoverlay")).await;
    assert_eq!(refused.code, 409, "{refused:?}");
    assert_eq!(refused.reason(), "Conflict");
    assert_eq!(
        refused.message(),
        "network appoverlay is in use by service(s): api, worker"
    );
    assert_eq!(s.names("networks").await, ["appoverlay"]);

    for name in ["worker", "api"] {
        assert_eq!(s.delete(&format!("{SVCS}/{name}")).await.code, 200);
    }
    assert_eq!(s.delete(&format!("{NETS}/appoverlay")).await.code, 200);
}

#[tokio::test]
async fn a_service_on_a_missing_network_is_422_and_not_written() {
    let s = Server::start().await;
    let a = s.post(SVCS, &service("api", &["ghost"], &[])).await;
    assert_eq!((a.code, a.reason()), (422, "Invalid"), "{a:?}");
    assert_eq!(a.fields(), ["spec.networks[0].name"]);
    assert!(
        a.message().contains("network \"ghost\" does not exist"),
        "{a:?}"
    );
    s.assert_nothing_written().await;
}

#[tokio::test]
async fn a_published_port_taken_by_another_service_is_409_naming_it() {
    let s = Server::start().await;
    assert_eq!(
        s.post(SVCS, &service("web", &[], &["8080"])).await.code,
        201
    );
    let a = s.post(SVCS, &service("api", &[], &["8080"])).await;
    assert_eq!((a.code, a.reason()), (409, "Conflict"), "{a:?}");
    assert!(
        a.message()
            .contains("port 8080/tcp is already published by service web"),
        "{a:?}"
    );
    assert_eq!(a.fields(), ["spec.ports[0].published"]);
    assert_eq!(s.names("services").await, ["web"]);
}

#[tokio::test]
async fn host_ports_may_repeat_but_not_reuse_an_ingress_number() {
    let s = Server::start().await;
    assert_eq!(
        s.post(SVCS, &service("h1", &[], &["9000/host"])).await.code,
        201
    );
    assert_eq!(
        s.post(SVCS, &service("h2", &[], &["9000/host"])).await.code,
        201
    );
    let clash = s.post(SVCS, &service("i1", &[], &["9000"])).await;
    assert_eq!(clash.code, 409, "{clash:?}");
    assert!(
        clash
            .message()
            .contains("published in host mode by service h1"),
        "{clash:?}"
    );
    assert_eq!(s.post(SVCS, &service("i2", &[], &["7000"])).await.code, 201);
    let clash = s.post(SVCS, &service("h3", &[], &["7000/host"])).await;
    assert_eq!(clash.code, 409, "{clash:?}");
    assert_eq!(s.names("services").await, ["h1", "h2", "i2"]);
}

#[tokio::test]
async fn an_explicit_subnet_overlapping_another_network_is_422() {
    let s = Server::start().await;
    assert_eq!(
        s.post(NETS, &network("big", Some("10.1.0.0/16")))
            .await
            .code,
        201
    );
    let a = s.post(NETS, &network("small", Some("10.1.7.0/24"))).await;
    assert_eq!((a.code, a.reason()), (422, "Invalid"), "{a:?}");
    assert_eq!(a.fields(), ["spec.subnet"]);
    assert!(
        a.message()
            .contains("overlaps 10.1.0.0/16 of network \"big\""),
        "{a:?}"
    );
    assert_eq!(s.names("networks").await, ["big"]);
}

#[tokio::test]
async fn user_sent_status_is_ignored_on_create() {
    let s = Server::start().await;
    let body = json!({"apiVersion": "shoal/v1", "kind": "Network", "metadata": {"name": "n", "uid": "mine", "generation": 9},
                      "spec": {}, "status": {"vni": 7, "phase": "Ready"}});
    let a = s.post(NETS, &body.to_string()).await;
    assert_eq!(a.code, 201, "{a:?}");
    assert!(a.body.get("status").is_none(), "{a:?}");
    assert_ne!(a.body["metadata"]["uid"], "mine");
    assert_eq!(a.body["metadata"]["generation"], 1);
}

#[tokio::test]
async fn dry_run_create_writes_nothing() {
    let s = Server::start().await;
    let a = s
        .post(&format!("{NETS}?dryRun=true"), &network("n", None))
        .await;
    assert_eq!(a.code, 201, "{a:?}");
    s.assert_nothing_written().await;
}

async fn put_task(s: &Server, id: &str, service: &str, node: Option<&str>) -> Task {
    let spec = TaskSpec {
        service: service.into(),
        node: node.map(Into::into),
        image: "busybox".into(),
        ..Default::default()
    };
    s.store.create(&Task::new(id, spec)).await.unwrap()
}

#[tokio::test]
async fn tasks_are_found_by_name_and_filtered_by_service_and_node() {
    let s = Server::start().await;
    put_task(&s, "t1", "api", Some("node-1")).await;
    put_task(&s, "t2", "api", None).await;
    put_task(&s, "t3", "web", Some("node-1")).await;
    let one = s.get("/apis/shoal/v1/tasks/t2").await;
    assert_eq!(one.code, 200, "{one:?}");
    assert_eq!(one.body["spec"]["service"], "api");
    assert_eq!(s.get("/apis/shoal/v1/tasks/t9").await.code, 404);
    let names = |a: crate::support::Answer| -> Vec<String> {
        a.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let all = s.get("/apis/shoal/v1/tasks").await;
    assert_eq!(all.body["kind"], "TaskList");
    let mut all = names(all);
    all.sort();
    assert_eq!(all, ["t1", "t2", "t3"]);
    let mut api = names(s.get("/apis/shoal/v1/tasks?service=api").await);
    api.sort();
    assert_eq!(api, ["t1", "t2"]);
    let mut node1 = names(s.get("/apis/shoal/v1/tasks?node=node-1").await);
    node1.sort();
    assert_eq!(node1, ["t1", "t3"]);
    assert_eq!(
        names(s.get("/apis/shoal/v1/tasks?node=node-1&service=web").await),
        ["t3"]
    );
    let bad = s.get("/apis/shoal/v1/networks?service=api").await;
    assert_eq!(bad.code, 400, "{bad:?}");
}

#[tokio::test]
async fn tasks_and_endpoints_are_read_only() {
    let s = Server::start().await;
    put_task(&s, "t1", "api", Some("node-1")).await;
    let body =
        json!({"apiVersion": "shoal/v1", "kind": "Task", "metadata": {"name": "t1"}, "spec": {}})
            .to_string();
    for (method, path) in [
        (Method::POST, "/apis/shoal/v1/tasks"),
        (Method::PUT, "/apis/shoal/v1/tasks/t1"),
        (Method::DELETE, "/apis/shoal/v1/tasks/t1"),
        (Method::POST, "/apis/shoal/v1/endpoints"),
        (Method::DELETE, "/apis/shoal/v1/endpoints/appnet.api"),
    ] {
        let a = s.call(method.clone(), path, Some(&body)).await;
        assert_eq!(
            (a.code, a.reason()),
            (405, "MethodNotAllowed"),
            "{method} {path}: {a:?}"
        );
        assert!(a.message().contains("managed by Shoal"), "{a:?}");
    }
    assert_eq!(s.get("/apis/shoal/v1/tasks/t1").await.code, 200);
}

async fn put_node(s: &Server, name: &str, state: NodeState) -> Node {
    let mut node = Node::new(name, NodeSpec::default());
    node.status.state = state;
    node.status.address = "198.18.0.1".into();
    s.store.create(&node).await.unwrap()
}

#[tokio::test]
async fn node_spec_can_change_but_its_status_is_kept() {
    let s = Server::start().await;
    put_node(&s, "node-1", NodeState::Ready).await;
    let got = s.get("/apis/shoal/v1/nodes/node-1").await;
    let mut body = got.body.clone();
    body["spec"] = json!({"labels": {"zone": "a"}, "availability": "drain"});
    body["status"] = json!({"state": "down", "address": "1.2.3.4"});
    let a = s
        .put("/apis/shoal/v1/nodes/node-1", &body.to_string())
        .await;
    assert_eq!(a.code, 200, "{a:?}");
    assert_eq!(a.body["spec"]["availability"], "drain");
    assert_eq!(a.body["spec"]["labels"]["zone"], "a");
    assert_eq!(a.body["status"]["state"], "ready");
    assert_eq!(a.body["status"]["address"], "198.18.0.1");
    let stale = s
        .put("/apis/shoal/v1/nodes/node-1", &body.to_string())
        .await;
    assert_eq!(stale.code, 409, "{stale:?}");
    let post = s.post("/apis/shoal/v1/nodes", &body.to_string()).await;
    assert_eq!(post.code, 405, "{post:?}");
}

#[tokio::test]
async fn only_a_node_that_is_not_ready_can_be_deleted() {
    let s = Server::start().await;
    put_node(&s, "up", NodeState::Ready).await;
    put_node(&s, "gone", NodeState::Down).await;
    let refused = s.delete("/apis/shoal/v1/nodes/up").await;
    assert_eq!(
        (refused.code, refused.reason()),
        (409, "Conflict"),
        "{refused:?}"
    );
    assert!(
        refused.message().contains("node up is ready"),
        "{refused:?}"
    );
    assert_eq!(s.delete("/apis/shoal/v1/nodes/gone").await.code, 200);
    assert_eq!(s.names("nodes").await, ["up"]);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_status_json() {
    let s = Server::start().await;
    let a = s.get("/apis/shoal/v1/gadgets").await;
    assert_eq!((a.code, a.reason()), (404, "NotFound"), "{a:?}");
    let a = s
        .call(Method::PATCH, "/apis/shoal/v1/networks/x", Some("{}"))
        .await;
    assert_eq!((a.code, a.reason()), (405, "MethodNotAllowed"), "{a:?}");
    let a = s.get("/apis/shoal/v1/networks?watch=perhaps").await;
    assert_eq!((a.code, a.reason()), (400, "BadRequest"), "{a:?}");
}

#[tokio::test]
async fn health_readiness_metrics_and_openapi_are_served() {
    let s = Server::start().await;
    let health = s.get("/healthz").await;
    assert_eq!(
        (health.code, health.body.clone()),
        (200, Value::String("ok".into()))
    );
    assert_eq!(s.get("/readyz").await.code, 200);
    s.get("/apis/shoal/v1/networks/none").await;
    let metrics = s.get("/metrics").await;
    assert_eq!(metrics.code, 200);
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains(r#"shoal_api_requests_total{method="GET",route="/apis/shoal/v1/networks/{name}",code="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("shoal_api_request_duration_seconds_bucket"),
        "{text}"
    );
    let doc = s.get("/openapi.json").await;
    assert_eq!(doc.code, 200);
    assert_eq!(doc.body["openapi"], "3.1.0");
    assert!(doc.body["components"]["schemas"]["Network"].is_object());
    assert!(doc.body["paths"]["/apis/shoal/v1/apply"]["post"].is_object());
}

#[tokio::test]
async fn an_unreachable_etcd_makes_requests_503_and_readiness_fail() {
    let mut s = Server::private().await;
    assert_eq!(s.get("/readyz").await.code, 200);
    s.etcd.kill();
    let start = std::time::Instant::now();
    let a = s.get(NETS).await;
    assert_eq!((a.code, a.reason()), (503, "ServiceUnavailable"), "{a:?}");
    assert_eq!(s.get("/readyz").await.code, 503);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_network_deleted_while_a_service_joins_it_never_leaves_the_service_dangling() {
    let s = Server::start().await;
    for round in 0..8 {
        let net = format!("net{round}");
        let svc = format!("svc{round}");
        assert_eq!(s.post(NETS, &network(&net, None)).await.code, 201);
        let (body, path) = (service(&svc, &[net.as_str()], &[]), format!("{NETS}/{net}"));
        let (created, deleted) = tokio::join!(s.post(SVCS, &body), s.delete(&path));
        let network_exists = s.get(&format!("{NETS}/{net}")).await.code == 200;
        let service_exists = s.get(&format!("{SVCS}/{svc}")).await.code == 200;
        assert!(
            !service_exists || network_exists,
            "round {round}: service created ({}) on a deleted network ({})",
            created.code,
            deleted.code
        );
        assert!(
            created.code == 201 || deleted.code == 200,
            "round {round}: {created:?} {deleted:?}"
        );
    }
}

#[tokio::test]
async fn concurrent_services_claiming_one_port_leave_exactly_one_owner() {
    let s = Server::start().await;
    let bodies: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| service(n, &[], &["8443"]))
        .collect();
    let (a, b, c) = tokio::join!(
        s.post(SVCS, &bodies[0]),
        s.post(SVCS, &bodies[1]),
        s.post(SVCS, &bodies[2])
    );
    let mut codes = [a.code, b.code, c.code];
    codes.sort();
    assert_eq!(codes, [201, 409, 409], "{a:?} {b:?} {c:?}");
    assert_eq!(s.names("services").await.len(), 1);
}
