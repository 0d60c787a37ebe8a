//! Bearer tokens and roles (`api::auth`, `api::tokens`) against a real etcd: who gets 401,
//! who gets 403, how tokens are stored, and that a revoked token stops working at once.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use shoal_controller::api::auth::import_admin_token;
use shoal_pki::sha256_hex;

use crate::support::{network, Answer, Server};

const ADMIN: &str = "shoal_testadmintoken0000000000000000000000";

/// A secured server whose plain calls carry the admin token.
async fn secured() -> Server {
    let mut s = Server::secured(ADMIN).await;
    s.token = Some(ADMIN.to_string());
    s
}

/// Creates a token as admin; returns its secret.
async fn create_token(s: &Server, name: &str, role: &str) -> String {
    let a = s
        .post(
            "/v1/tokens",
            &format!(r#"{{"name":"{name}","role":"{role}"}}"#),
        )
        .await;
    assert_eq!(a.code, 201, "{a:?}");
    assert_eq!(a.body["name"], name);
    assert_eq!(a.body["role"], role);
    assert!(a.body["createdAt"].is_string(), "{a:?}");
    a.body["token"].as_str().expect("token").to_string()
}

async fn as_token(s: &Server, token: Option<&str>, method: Method, path: &str) -> Answer {
    let body = (method == Method::POST || method == Method::PUT).then_some("{}");
    s.call_as(token, method, path, body).await
}

fn assert_status(a: &Answer, code: u16, reason: &str) {
    assert_eq!(a.code, code, "{a:?}");
    assert_eq!(a.body["code"], code, "the body is a Status: {a:?}");
    assert_eq!(a.reason(), reason, "{a:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_token_get_401_with_a_status_body() {
    let s = secured().await;
    for (method, path) in [
        (Method::GET, "/apis/shoal/v1/networks"),
        (Method::POST, "/apis/shoal/v1/networks"),
        (Method::GET, "/v1/tokens"),
        (Method::GET, "/metrics"),
        (Method::GET, "/no/such/route"),
    ] {
        let a = as_token(&s, None, method.clone(), path).await;
        assert_status(&a, 401, "Unauthorized");
        assert!(a.message().contains("Bearer"), "{method} {path}: {a:?}");
    }
    let resp = s
        .http
        .get(s.url("/apis/shoal/v1/networks"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers().get("www-authenticate").unwrap(),
        "Bearer",
        "401s name the scheme"
    );
    // Health stays public.
    assert_eq!(as_token(&s, None, Method::GET, "/healthz").await.code, 200);
    assert_eq!(as_token(&s, None, Method::GET, "/readyz").await.code, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_malformed_tokens_get_401() {
    let s = secured().await;
    let wrong = as_token(
        &s,
        Some("shoal_notatoken00000000000000000000000000"),
        Method::GET,
        "/apis/shoal/v1/networks",
    )
    .await;
    assert_status(&wrong, 401, "Unauthorized");
    assert!(
        wrong.message().contains("unknown or was revoked"),
        "{wrong:?}"
    );
    // The stored hash is not a token either.
    let hash = sha256_hex(ADMIN.as_bytes());
    let a = as_token(&s, Some(&hash), Method::GET, "/apis/shoal/v1/networks").await;
    assert_status(&a, 401, "Unauthorized");
    let basic = s
        .http
        .get(s.url("/apis/shoal/v1/networks"))
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_token_may_do_everything() {
    let s = secured().await;
    let a = s
        .post("/apis/shoal/v1/networks", &network("appnet", None))
        .await;
    assert_eq!(a.code, 201, "{a:?}");
    assert_eq!(s.names("networks").await, ["appnet"]);
    let tokens = s.get("/v1/tokens").await;
    assert_eq!(tokens.code, 200, "{tokens:?}");
    assert_eq!(tokens.body["items"][0]["name"], "admin");
    assert_eq!(tokens.body["items"][0]["role"], "admin");
    assert!(
        tokens.body["items"][0].get("sha256").is_none(),
        "lists never show hashes: {tokens:?}"
    );
    // 401s are counted by code.
    as_token(&s, None, Method::GET, "/apis/shoal/v1/networks").await;
    let metrics = s.get("/metrics").await;
    let text = metrics.body.as_str().unwrap_or_default();
    assert!(text.contains(r#"code="401""#), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_tokens_read_and_watch_but_cannot_write_exec_or_read_logs() {
    let s = secured().await;
    assert_eq!(
        s.post("/apis/shoal/v1/networks", &network("appnet", None))
            .await
            .code,
        201
    );
    let ro = create_token(&s, "viewer", "read-only").await;
    let ro = Some(ro.as_str());

    let list = as_token(&s, ro, Method::GET, "/apis/shoal/v1/networks").await;
    assert_eq!(list.code, 200, "{list:?}");
    let one = as_token(&s, ro, Method::GET, "/apis/shoal/v1/networks/appnet").await;
    assert_eq!(one.code, 200, "{one:?}");
    let mut watch = s
        .watch_as(ro, "/apis/shoal/v1/networks?watch=true&resourceVersion=0")
        .await;
    assert_eq!(watch.code, 200);
    let ev = watch.next().await;
    assert_eq!(ev["object"]["metadata"]["name"], "appnet", "{ev}");

    for (method, path) in [
        (Method::POST, "/apis/shoal/v1/networks"),
        (Method::PUT, "/apis/shoal/v1/networks/appnet"),
        (Method::DELETE, "/apis/shoal/v1/networks/appnet"),
        (Method::POST, "/apis/shoal/v1/apply"),
        (Method::POST, "/apis/shoal/v1/services/api/rollback"),
        (Method::POST, "/apis/shoal/v1/tasks/api.1/exec"),
        (Method::GET, "/apis/shoal/v1/tasks/api.1/logs"),
        (Method::GET, "/apis/shoal/v1/services/api/logs"),
        (Method::GET, "/v1/tokens"),
        (Method::POST, "/v1/tokens"),
        (Method::DELETE, "/v1/tokens/admin"),
    ] {
        let a = as_token(&s, ro, method.clone(), path).await;
        assert_status(&a, 403, "Forbidden");
        assert!(
            a.message().contains("read-only") && a.message().contains("viewer"),
            "{method} {path}: the message names the role and the token: {a:?}"
        );
    }
    assert_eq!(s.names("networks").await, ["appnet"], "nothing was deleted");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_tokens_are_refused_at_once() {
    let s = secured().await;
    let token = create_token(&s, "ci", "read-only").await;
    let ok = as_token(&s, Some(&token), Method::GET, "/apis/shoal/v1/networks").await;
    assert_eq!(ok.code, 200, "{ok:?}");

    let gone = s.delete("/v1/tokens/ci").await;
    assert_eq!(gone.code, 200, "{gone:?}");
    assert_eq!(gone.body["name"], "ci");
    assert_eq!(gone.body["role"], "read-only");
    assert!(gone.body.get("token").is_none(), "{gone:?}");

    shoal_testkit::eventually(
        "the revoked token to be refused",
        Duration::from_secs(2),
        || {
            let s = &s;
            let token = token.clone();
            async move {
                let a = as_token(s, Some(&token), Method::GET, "/apis/shoal/v1/networks").await;
                (a.code == 401).then_some(())
            }
        },
    )
    .await;
    let again = s.delete("/v1/tokens/ci").await;
    assert_status(&again, 404, "NotFound");

    // Revoked by another controller (the key deleted in etcd): the watch carries it here.
    let other = create_token(&s, "ci2", "admin").await;
    let ok = as_token(&s, Some(&other), Method::GET, "/v1/tokens").await;
    assert_eq!(ok.code, 200, "{ok:?}");
    assert!(s
        .store
        .delete_raw(&s.store.keys().api_token("ci2"))
        .await
        .unwrap());
    shoal_testkit::eventually(
        "the token deleted in etcd to be refused",
        Duration::from_secs(2),
        || {
            let s = &s;
            let other = other.clone();
            async move {
                let a = as_token(s, Some(&other), Method::GET, "/v1/tokens").await;
                (a.code == 401).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_stored_hashed() {
    let s = secured().await;
    let token = create_token(&s, "ci", "admin").await;
    assert!(token.starts_with("shoal_") && token.len() == 46, "{token}");
    let key = s.store.keys().api_token("ci");
    let kv = s.store.get_raw(&key).await.unwrap().expect("record");
    let value = String::from_utf8(kv.value).unwrap();
    assert!(!value.contains(&token), "the token is in etcd: {value}");
    let record: Value = serde_json::from_str(&value).unwrap();
    assert_eq!(record["sha256"], sha256_hex(token.as_bytes()));
    assert_eq!(record["role"], "admin");
    // The imported admin token too.
    let admin = s
        .store
        .get_raw(&s.store.keys().api_token("admin"))
        .await
        .unwrap()
        .expect("admin record");
    assert!(!String::from_utf8_lossy(&admin.value).contains(ADMIN));
    // And the new token works.
    let a = as_token(&s, Some(&token), Method::GET, "/v1/tokens").await;
    assert_eq!(a.code, 200, "{a:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_name_is_taken_once() {
    let s = secured().await;
    let first = create_token(&s, "ci", "read-only").await;
    let a = s
        .post("/v1/tokens", r#"{"name":"ci","role":"admin"}"#)
        .await;
    assert_status(&a, 409, "AlreadyExists");
    assert!(a.message().contains("\"ci\""), "{a:?}");
    // The first token is untouched (still read-only).
    let denied = as_token(&s, Some(&first), Method::POST, "/v1/tokens").await;
    assert_status(&denied, 403, "Forbidden");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_requests_are_validated_with_field_paths() {
    let s = secured().await;
    let a = s
        .post("/v1/tokens", r#"{"name":"CI_bot","role":"root"}"#)
        .await;
    assert_status(&a, 422, "Invalid");
    assert_eq!(a.fields(), ["name", "role"], "{a:?}");
    let a = s.post("/v1/tokens", r#"{"name":"ci"}"#).await;
    assert_status(&a, 422, "Invalid");
    assert_eq!(a.fields(), ["role"], "{a:?}");
    let a = s
        .post("/v1/tokens", r#"{"name":"ci","role":"admin","extra":1}"#)
        .await;
    assert_status(&a, 400, "BadRequest");
    assert_eq!(
        s.get("/v1/tokens").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_token_is_imported_only_when_none_is_stored() {
    let s = secured().await;
    // The server imported ADMIN at start; another file's token does not replace it.
    let other = "shoal_someothertoken000000000000000000000";
    assert!(!import_admin_token(&s.store, other).await.unwrap());
    let a = as_token(&s, Some(ADMIN), Method::GET, "/v1/tokens").await;
    assert_eq!(a.code, 200, "{a:?}");
    let a = as_token(&s, Some(other), Method::GET, "/v1/tokens").await;
    assert_eq!(a.code, 401, "{a:?}");
    // Once removed, the next start imports the file again.
    assert_eq!(s.delete("/v1/tokens/admin").await.code, 200);
    assert!(import_admin_token(&s.store, other).await.unwrap());
    shoal_testkit::eventually(
        "the re-imported admin token",
        Duration::from_secs(2),
        || async {
            (as_token(&s, Some(other), Method::GET, "/v1/tokens")
                .await
                .code
                == 200)
                .then_some(())
        },
    )
    .await;
}
