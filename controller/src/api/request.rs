//! Reading requests: the bounded text body (at most [`MAX_BODY`] bytes of UTF-8 JSON or
//! YAML; [`LargeBodyText`]: [`LARGE_BODY`], for apply and the writes of kinds that carry
//! payloads), query parameters, and names taken from the path. Every rejection is a
//! `Status`.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use futures::StreamExt;
use serde::de::{DeserializeOwned, Deserializer};
use serde::Deserialize;
use shoal_api_types::Status;

use super::error::ApiError;

/// The largest body the API reads.
pub const MAX_BODY: usize = 1 << 20;

/// The largest body of apply and of Secret and Config writes: a 1000 KiB config in base64
/// (1.33 MiB) with a stack around it.
pub const LARGE_BODY: usize = 4 << 20;

/// The 413 answer to a body over `max` bytes.
pub fn too_large(max: usize) -> Status {
    Status::new(
        413,
        "RequestEntityTooLarge",
        format!("request body is larger than {} MiB", max >> 20),
    )
}

/// A request body read as UTF-8 text, at most [`MAX_BODY`] bytes.
#[derive(Debug)]
pub struct BodyText(pub String);

/// A request body read as UTF-8 text, at most [`LARGE_BODY`] bytes (handlers check their
/// kind's own limit, [`super::kinds::ApiKind::MAX_BODY`]).
#[derive(Debug)]
pub struct LargeBodyText(pub String);

impl<S: Send + Sync> FromRequest<S> for BodyText {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        read_text(req, MAX_BODY).await.map(BodyText)
    }
}

impl<S: Send + Sync> FromRequest<S> for LargeBodyText {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        read_text(req, LARGE_BODY).await.map(LargeBodyText)
    }
}

/// Reads at most `max` bytes of UTF-8 text (413 beyond).
async fn read_text(req: Request, max: usize) -> Result<String, ApiError> {
    if let Some(ct) = req.headers().get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !acceptable_content_type(ct) {
            return Err(Status::new(
                415,
                "UnsupportedMediaType",
                format!("content type {ct:?} is not accepted: send JSON (application/json) or YAML (application/yaml)"),
            )
            .into());
        }
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(max).into());
    }
    let mut stream = req.into_body().into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| Status::bad_request(format!("reading the request body failed: {e}")))?;
        if buf.len() + chunk.len() > max {
            return Err(too_large(max).into());
        }
        buf.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(buf).map_err(|e| {
        Status::bad_request(format!(
            "the body is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    Ok(text)
}

/// Whether a Content-Type names something the API can read as JSON or YAML.
pub fn acceptable_content_type(ct: &str) -> bool {
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime.is_empty()
        || mime.starts_with("text/")
        || mime.ends_with("/json")
        || mime.ends_with("+json")
        || mime.ends_with("/yaml")
        || mime.ends_with("+yaml")
        || mime.ends_with("/x-yaml")
        || mime == "application/octet-stream"
}

/// Query parameters deserialised into `T`; a malformed query is a 400 `Status`.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(rejection) => Err(Status::bad_request(rejection.body_text()).into()),
        }
    }
}

/// Parameters of list and watch requests.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListParams {
    /// Stream changes instead of answering a list.
    #[serde(default, deserialize_with = "flag")]
    pub watch: bool,
    /// Watch changes after this revision (a list's `metadata.resourceVersion`).
    #[serde(default)]
    pub resource_version: Option<String>,
    /// Seconds between BOOKMARK events of a watch (0: none).
    #[serde(default)]
    pub bookmark_seconds: Option<u64>,
    /// Only tasks (or endpoints) of this service.
    #[serde(default)]
    pub service: Option<String>,
    /// Only tasks on this node.
    #[serde(default)]
    pub node: Option<String>,
    /// Only endpoints on this network.
    #[serde(default)]
    pub network: Option<String>,
}

/// Parameters of writes.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteParams {
    /// Validate and report, write nothing.
    #[serde(default, deserialize_with = "flag")]
    pub dry_run: bool,
    /// DELETE only: delete only if the object is still at this revision.
    #[serde(default)]
    pub resource_version: Option<String>,
    /// DELETE of a Node only: remove it even while it is ready.
    #[serde(default, deserialize_with = "flag")]
    pub force: bool,
    /// Apply only: `<label key>=<value>`; also delete every labelled object the body leaves
    /// out.
    #[serde(default)]
    pub prune: Option<String>,
}

/// `true`, `1`, `yes` or an empty value (`?watch`) mean true; `false`, `0`, `no` false.
fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let s = String::deserialize(d)?;
    parse_flag(&s)
        .ok_or_else(|| serde::de::Error::custom(format!("expected true or false, found {s:?}")))
}

/// See [`flag`].
pub fn parse_flag(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "" | "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// Parses a `resourceVersion` query value; `param` names it in the error.
pub fn parse_revision(param: &str, value: &str) -> Result<i64, Status> {
    value
        .parse::<i64>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| {
            Status::bad_request(format!(
                "?{param}={value:?} is not a revision (a whole number, 0 or more)"
            ))
        })
}

/// A name taken from the URL: anything with a '/' or empty cannot name an object.
pub fn path_name(kind: &str, name: &str) -> Result<(), Status> {
    if name.is_empty() || name.contains('/') {
        return Err(Status::not_found(kind, name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_accept_json_yaml_and_text_only() {
        for ok in [
            "application/json",
            "application/yaml; charset=utf-8",
            "application/x-yaml",
            "text/plain",
            "application/merge-patch+json",
            "",
        ] {
            assert!(acceptable_content_type(ok), "{ok}");
        }
        for bad in [
            "image/png",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            assert!(!acceptable_content_type(bad), "{bad}");
        }
    }

    #[test]
    fn flags_accept_common_spellings() {
        assert_eq!(parse_flag(""), Some(true));
        assert_eq!(parse_flag("TRUE"), Some(true));
        assert_eq!(parse_flag("0"), Some(false));
        assert_eq!(parse_flag("maybe"), None);
    }

    #[test]
    fn revisions_must_be_whole_non_negative_numbers() {
        assert_eq!(parse_revision("resourceVersion", "42"), Ok(42));
        assert_eq!(
            parse_revision("resourceVersion", "-1").unwrap_err().code,
            400
        );
        assert!(parse_revision("resourceVersion", "abc")
            .unwrap_err()
            .message
            .contains("\"abc\" is not a revision"));
    }

    #[test]
    fn path_names_with_slashes_name_nothing() {
        assert!(path_name("Network", "a").is_ok());
        assert_eq!(path_name("Network", "a/b").unwrap_err().code, 404);
    }
}
