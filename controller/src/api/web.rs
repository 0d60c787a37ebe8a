//! The web view: the static files of the browser UI (`controller/web/`), embedded in the
//! binary and served under `/ui/`, and `GET /v1/whoami`, which tells the page who its
//! token is.
//!
//! Invariants:
//! - The files are hand-written HTML, CSS and JavaScript modules with no third-party code
//!   and no build step: what is served is byte for byte what is in `controller/web/`
//!   (`include_str!`), so the "build output" always matches the sources.
//! - The asset routes (`/`, `/ui`, `/ui/...`) are public ([`is_ui_path`], used by
//!   [`super::auth::is_public`]) and carry no data: the page reads everything through the
//!   API with the token the user typed in, which the page keeps in `sessionStorage`.
//! - Every UI response has a strict Content-Security-Policy (only this origin's scripts,
//!   styles and connections; no inline script, no framing) and `nosniff`, because the page
//!   handles a bearer token.
//! - An unknown file below `/ui/` is a 404 `Status`, never the index page.

use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use shoal_api_types::Status;

use super::error::status_response;

/// The Content-Security-Policy of every UI response.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The embedded files: (name below `/ui/`, content type, contents).
pub const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../web/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/api.js"),
    ),
    (
        "store.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/store.js"),
    ),
    (
        "router.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/router.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/dom.js"),
    ),
    (
        "views.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/views.js"),
    ),
];

/// Whether `path` is one of the UI's public asset paths (`/`, `/ui`, `/ui/...`).
pub fn is_ui_path(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}

/// The UI's routes (public: see [`is_ui_path`]).
pub fn routes() -> Router {
    Router::new()
        .route("/", get(to_ui))
        .route("/ui", get(to_ui))
        .route("/ui/", get(|| async { asset("index.html") }))
        .route(
            "/ui/{file}",
            get(|Path(file): Path<String>| async move { asset(&file) }),
        )
}

async fn to_ui() -> Response {
    let mut resp = StatusCode::FOUND.into_response();
    resp.headers_mut()
        .insert(LOCATION, HeaderValue::from_static("/ui/"));
    secure(resp)
}

/// The embedded file `name`, or a 404.
fn asset(name: &str) -> Response {
    let resp = match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => ([(CONTENT_TYPE, *content_type)], *body).into_response(),
        None => status_response(Status::new(
            404,
            "NotFound",
            format!("no file {name:?} in the web view (it has {})", names()),
        )),
    };
    secure(resp)
}

fn names() -> String {
    ASSETS
        .iter()
        .map(|(n, _, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Adds the security headers every UI response carries.
fn secure(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ui_paths_are_the_assets_only() {
        for p in ["/", "/ui", "/ui/", "/ui/app.js"] {
            assert!(is_ui_path(p), "{p}");
        }
        for p in ["/uix", "/apis/shoal/v1/nodes", "/v1/whoami", "/u"] {
            assert!(!is_ui_path(p), "{p}");
        }
    }

    #[test]
    fn every_module_the_page_imports_is_embedded() {
        // Each `from './x.js'` in a module must name an embedded file, or the page breaks.
        for (name, _, body) in ASSETS {
            for part in body.split("from './").skip(1) {
                let file = part.split('\'').next().unwrap();
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == file),
                    "{name} imports {file}, which is not embedded"
                );
            }
        }
    }

    #[test]
    fn the_page_preloads_every_module() {
        // A module missing here still loads, one round trip later (after its importer).
        let index = ASSETS[0].2;
        for (name, content_type, _) in ASSETS {
            if content_type.starts_with("text/javascript") && *name != "app.js" {
                let preload = format!("<link rel=\"modulepreload\" href=\"{name}\">");
                assert!(
                    index.contains(&preload),
                    "index.html does not preload {name}"
                );
            }
        }
    }

    #[test]
    fn no_inline_script_or_style_in_the_page() {
        let index = ASSETS[0].2;
        assert!(!index.contains("<script>"), "inline script");
        assert!(!index.contains("style="), "inline style");
        assert!(index.contains("<script type=\"module\" src=\"app.js\">"));
    }
}
