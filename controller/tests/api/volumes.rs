//! Named volumes through the API: the list asks every ready node's agent (here a fake agent
//! over plain HTTP, as `--insecure` reaches agents), removal goes to the node's agent.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use shoal_api_types::{Node, NodeSpec, NodeState, NodeStatus};

use crate::support::Server;

/// A fake agent: volumes `data` (used by task t1) and `cache`; removing `data` is 409,
/// `cache` 204, anything else 404.
async fn fake_agent() -> String {
    let app = Router::new()
        .route(
            "/v1/volumes",
            get(|| async {
                Json(json!([
                    {"name": "data", "node": "", "usedBy": ["t1"]},
                    {"name": "cache", "node": ""}
                ]))
            }),
        )
        .route(
            "/v1/volumes/{name}",
            axum::routing::delete(|Path(name): Path<String>| async move {
                match name.as_str() {
                    "cache" => (StatusCode::NO_CONTENT, String::new()),
                    "data" => (
                        StatusCode::CONFLICT,
                        json!({"code": 409, "reason": "Conflict",
                               "message": "volume data is in use by task t1"})
                        .to_string(),
                    ),
                    _ => (
                        StatusCode::NOT_FOUND,
                        json!({"code": 404, "reason": "NotFound",
                               "message": format!("no volume {name}")})
                        .to_string(),
                    ),
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr.to_string()
}

async fn node(s: &Server, name: &str, state: NodeState, endpoint: &str) {
    let mut n = Node::new(name, NodeSpec::default());
    n.status = NodeStatus {
        state,
        address: "127.0.0.1".into(),
        agent_endpoint: endpoint.into(),
        runtime: "containerd".into(),
        ..Default::default()
    };
    s.store.create(&n).await.unwrap();
}

#[tokio::test]
async fn volumes_are_listed_from_every_ready_node_and_removed_through_its_agent() {
    let s = Server::start().await;
    let agent = fake_agent().await;
    node(&s, "node-1", NodeState::Ready, &agent).await;
    node(&s, "node-2", NodeState::Ready, "127.0.0.1:1").await;
    node(&s, "node-3", NodeState::Down, &agent).await;

    let all = s.get("/apis/shoal/v1/volumes").await;
    assert_eq!(all.code, 200, "{all:?}");
    let items: Vec<(String, String)> = all.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["node"].as_str().unwrap().to_string(),
                v["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        items,
        [
            ("node-1".to_string(), "cache".to_string()),
            ("node-1".to_string(), "data".to_string())
        ]
    );
    assert_eq!(all.body["items"][1]["usedBy"], json!(["t1"]));
    let unreachable = all.body["unreachable"].as_array().unwrap();
    assert_eq!(unreachable.len(), 1, "{unreachable:?}");
    assert!(
        unreachable[0]
            .as_str()
            .unwrap()
            .starts_with("node-2: cannot reach"),
        "{unreachable:?}"
    );

    let one = s.get("/apis/shoal/v1/volumes?node=node-1").await;
    assert_eq!(one.body["items"].as_array().unwrap().len(), 2);
    assert_eq!(s.get("/apis/shoal/v1/volumes?node=nope").await.code, 404);
    assert_eq!(s.get("/apis/shoal/v1/volumes?node=node-3").await.code, 409);

    let removed = s.delete("/apis/shoal/v1/nodes/node-1/volumes/cache").await;
    assert_eq!(removed.code, 204, "{removed:?}");
    let busy = s.delete("/apis/shoal/v1/nodes/node-1/volumes/data").await;
    assert_eq!(busy.code, 409, "{busy:?}");
    assert_eq!(busy.message(), "volume data is in use by task t1");
    assert_eq!(
        s.delete("/apis/shoal/v1/nodes/node-1/volumes/other")
            .await
            .code,
        404
    );
    assert_eq!(
        s.delete("/apis/shoal/v1/nodes/node-1/volumes/.bad")
            .await
            .code,
        400
    );
}
