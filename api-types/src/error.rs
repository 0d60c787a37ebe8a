//! The error body every API failure returns, as Kubernetes' `Status`:
//! `{code, reason, message, details: [{field, message}]}`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::FieldError;

/// One problem, optionally tied to a document of a multi-document body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetail {
    /// Field path, e.g. `spec.ports[0].published`; empty for the whole body.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// 1-based document number in a multi-document body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    /// `kind/name` of the object the problem is in, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

impl From<FieldError> for StatusDetail {
    fn from(e: FieldError) -> Self {
        StatusDetail {
            field: e.field,
            message: e.message,
            document: None,
            object: None,
        }
    }
}

impl std::fmt::Display for StatusDetail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(d) = self.document {
            write!(f, "document {d}")?;
            if let Some(o) = &self.object {
                write!(f, " ({o})")?;
            }
            f.write_str(": ")?;
        } else if let Some(o) = &self.object {
            write!(f, "{o}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// An API error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{message}")]
pub struct Status {
    /// The HTTP status code.
    pub code: u16,
    /// A CamelCase reason: BadRequest, NotFound, Conflict, AlreadyExists, Invalid, Gone, ...
    pub reason: String,
    /// A sentence for people.
    pub message: String,
    /// Problems with single fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<StatusDetail>,
}

impl Status {
    /// A status without details.
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Status {
            code,
            reason: reason.into(),
            message: message.into(),
            details: vec![],
        }
    }

    /// 400: the body could not be read.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Status::new(400, "BadRequest", message)
    }

    /// 404.
    pub fn not_found(kind: &str, name: &str) -> Self {
        Status::new(
            404,
            "NotFound",
            format!("{} {name:?} not found", kind.to_lowercase()),
        )
    }

    /// 409: the object changed since it was read.
    pub fn conflict(message: impl Into<String>) -> Self {
        Status::new(409, "Conflict", message)
    }

    /// 409: the object exists already.
    pub fn already_exists(kind: &str, name: &str) -> Self {
        Status::new(
            409,
            "AlreadyExists",
            format!("{} {name:?} already exists", kind.to_lowercase()),
        )
    }

    /// 422 with every field problem.
    pub fn invalid(message: impl Into<String>, details: Vec<StatusDetail>) -> Self {
        let message = message.into();
        let message = match details.as_slice() {
            [] => message,
            [one] => format!("{message}: {one}"),
            many => format!("{message}: {} (and {} more)", many[0], many.len() - 1),
        };
        Status {
            code: 422,
            reason: "Invalid".into(),
            message,
            details,
        }
    }

    /// 410: the requested revision was compacted.
    pub fn gone(message: impl Into<String>) -> Self {
        Status::new(410, "Gone", message)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Status::new(500, "InternalError", message)
    }

    /// 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Status::new(503, "ServiceUnavailable", message)
    }

    /// The message and every detail on its own line.
    pub fn describe(&self) -> String {
        let mut out = self.message.clone();
        if self.details.len() > 1 {
            for d in &self.details {
                out.push_str("\n  - ");
                out.push_str(&d.to_string());
            }
        }
        out
    }
}
