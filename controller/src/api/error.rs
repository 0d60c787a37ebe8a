//! [`ApiError`]: every way a request can fail, and how each becomes an HTTP status with an
//! [`api_types::Status`](shoal_api_types::Status) body.
//!
//! Invariant: every error response of the API, including rejected paths, queries and
//! bodies, is a `Status` JSON document whose `code` equals the HTTP status code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use shoal_api_types::Status;
use shoal_store::StoreError;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A failure already described as a `Status` (validation, conflicts, bad input).
    #[error("{0}")]
    Status(#[from] Status),
    /// A store failure, mapped by [`store_status`].
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl ApiError {
    /// The `Status` body of this error.
    pub fn status(&self) -> Status {
        match self {
            ApiError::Status(s) => s.clone(),
            ApiError::Store(e) => store_status(e),
        }
    }
}

/// How a store error looks to API clients.
pub fn store_status(e: &StoreError) -> Status {
    match e {
        StoreError::NotFound { kind, name } => Status::not_found(kind, name),
        StoreError::AlreadyExists { kind, name } => Status::already_exists(kind, name),
        StoreError::Conflict(msg) => Status::conflict(msg.clone()),
        StoreError::Compacted { .. } => Status::gone(format!(
            "{e}: list the objects again and watch from the list's metadata.resourceVersion"
        )),
        StoreError::Decode { .. } | StoreError::InvalidConnect(_) => {
            Status::internal(e.to_string())
        }
        StoreError::WatchEnded { .. } => {
            Status::unavailable(format!("{e}; watch again from the last resourceVersion"))
        }
        StoreError::Etcd(inner) => Status::unavailable(format!("etcd is unavailable: {inner}")),
        StoreError::Unreachable(_) => Status::unavailable(e.to_string()),
        // The controller's etcd identity holds the root role: a refusal is a misconfigured
        // etcd or certificate, not the client's fault.
        StoreError::PermissionDenied { .. } | StoreError::Auth { .. } => {
            Status::internal(e.to_string())
        }
    }
}

/// Turns a `Status` into a response with the matching HTTP code.
pub fn status_response(status: Status) -> Response {
    let code = StatusCode::from_u16(status.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(status)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.code >= 500 {
            tracing::warn!(code = status.code, message = %status.message, "request failed");
        }
        status_response(status)
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_http_codes() {
        let cases = [
            (
                StoreError::NotFound {
                    kind: "Network",
                    name: "a".into(),
                },
                404,
                "NotFound",
            ),
            (
                StoreError::AlreadyExists {
                    kind: "Network",
                    name: "a".into(),
                },
                409,
                "AlreadyExists",
            ),
            (StoreError::Conflict("x".into()), 409, "Conflict"),
            (
                StoreError::Compacted {
                    requested: 3,
                    compacted: 9,
                },
                410,
                "Gone",
            ),
            (
                StoreError::WatchEnded {
                    prefix: "/p/".into(),
                    reason: "r".into(),
                },
                503,
                "ServiceUnavailable",
            ),
        ];
        for (err, code, reason) in cases {
            let s = store_status(&err);
            assert_eq!((s.code, s.reason.as_str()), (code, reason), "{err}");
        }
    }

    #[test]
    fn compacted_errors_tell_the_client_to_relist() {
        let s = store_status(&StoreError::Compacted {
            requested: 3,
            compacted: 9,
        });
        assert!(
            s.message.contains("revision 3 was compacted"),
            "{}",
            s.message
        );
        assert!(
            s.message.contains("list the objects again"),
            "{}",
            s.message
        );
    }
}
