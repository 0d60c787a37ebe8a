//! The web view's routes (`api::web`) on a secured server: the static files are served
//! without a token, with their content types and the security headers; unknown files are
//! 404; `/` leads to `/ui/`; `whoami` names the caller's role and needs a token.

use reqwest::Method;

use crate::support::Server;

const ADMIN: &str = "shoal_testwebadmintoken00000000000000000000";

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn ui_assets_are_served_without_a_token_with_types_and_security_headers() {
    let s = Server::secured(ADMIN).await;
    let http = no_redirects();
    for (path, content_type, needle) in [
        (
            "/ui/",
            "text/html; charset=utf-8",
            "<script type=\"module\"",
        ),
        ("/ui/index.html", "text/html; charset=utf-8", "<title>"),
        ("/ui/style.css", "text/css; charset=utf-8", "{"),
        ("/ui/app.js", "text/javascript; charset=utf-8", "import"),
        ("/ui/api.js", "text/javascript; charset=utf-8", "export"),
        ("/ui/views.js", "text/javascript; charset=utf-8", "export"),
    ] {
        let resp = http.get(s.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers().clone();
        assert_eq!(h["content-type"], content_type, "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        let body = resp.text().await.unwrap();
        assert!(body.contains(needle), "{path}: {body}");
    }
    for path in ["/", "/ui"] {
        let resp = http.get(s.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 302, "{path}");
        assert_eq!(resp.headers()["location"], "/ui/", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_ui_files_are_404_and_data_still_needs_a_token() {
    let s = Server::secured(ADMIN).await;
    let a = s.call_as(None, Method::GET, "/ui/secrets.json", None).await;
    assert_eq!(a.code, 404, "{a:?}");
    assert!(a.message().contains("secrets.json"), "{a:?}");
    let a = s.call_as(None, Method::GET, "/ui/../v1/tokens", None).await;
    assert_ne!(a.code, 200, "{a:?}");
    // The page's data routes are not public.
    for path in ["/v1/whoami", "/apis/shoal/v1/nodes", "/uinodes"] {
        let a = s.call_as(None, Method::GET, path, None).await;
        assert_eq!(a.code, 401, "{path}: {a:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn whoami_names_the_role_of_admin_and_read_only_tokens() {
    let s = Server::secured(ADMIN).await;
    let a = s
        .call_as(Some(ADMIN), Method::GET, "/v1/whoami", None)
        .await;
    assert_eq!(a.code, 200, "{a:?}");
    assert_eq!(a.body["name"], "admin");
    assert_eq!(a.body["role"], "admin");
    let created = s
        .call_as(
            Some(ADMIN),
            Method::POST,
            "/v1/tokens",
            Some(r#"{"name":"viewer","role":"read-only"}"#),
        )
        .await;
    assert_eq!(created.code, 201, "{created:?}");
    let ro = created.body["token"].as_str().unwrap();
    let a = s.call_as(Some(ro), Method::GET, "/v1/whoami", None).await;
    assert_eq!(a.code, 200, "{a:?}");
    assert_eq!(a.body["name"], "viewer");
    assert_eq!(a.body["role"], "read-only");
    let a = s
        .call_as(Some("shoal_nope"), Method::GET, "/v1/whoami", None)
        .await;
    assert_eq!(a.code, 401, "{a:?}");
}
