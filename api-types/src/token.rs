//! API tokens: their roles and the JSON of `/v1/tokens`, shared by the API server and the
//! CLI, and the record the controller keeps in etcd (`<root>/private/tokens/<name>`).
//!
//! Invariants: a token is shown once, in the answer that created it ([`CreatedToken`]);
//! what is stored ([`StoredToken`]) and listed ([`TokenInfo`]) never holds it, only its
//! sha256 (stored) or nothing (listed).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{validate_dns_label, FieldError, Validate};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything.
    Admin,
    /// GET and HEAD of objects, lists and watches; not logs, not exec, no change.
    ReadOnly,
}

impl Role {
    /// Every role, as the API spells them.
    pub const ALL: [Role; 2] = [Role::Admin, Role::ReadOnly];

    /// `admin` or `read-only`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read-only",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a role: use admin or read-only"))
    }
}

/// `POST /v1/tokens`: `{"name", "role"}`. The role is a string here so that a wrong one is
/// a validation error naming the field, as every other field problem is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    /// The token's name (a DNS-1123 label), unique in the cluster.
    #[serde(default)]
    pub name: String,
    /// `admin` or `read-only`.
    #[serde(default)]
    pub role: String,
}

impl TokenRequest {
    /// The requested role, once [`Validate`] found none wrong.
    pub fn parsed_role(&self) -> Option<Role> {
        self.role.parse().ok()
    }
}

impl Validate for TokenRequest {
    fn validate(&self, errs: &mut Vec<FieldError>) {
        validate_dns_label("name", &self.name, errs);
        if self.role.is_empty() {
            errs.push(FieldError::new("role", "is required: admin or read-only"));
        } else if let Err(msg) = self.role.parse::<Role>() {
            errs.push(FieldError::new("role", msg));
        }
    }
}

/// The answer to `POST /v1/tokens` (201): the only time the token is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The bearer token itself.
    pub token: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

/// One token as `GET /v1/tokens` and `DELETE /v1/tokens/{name}` show it (without the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

/// `GET /v1/tokens`: every token, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TokenList {
    /// The tokens, sorted by name.
    pub items: Vec<TokenInfo>,
}

/// The value of `<root>/private/tokens/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredToken {
    /// The token's name (= the last segment of the key).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Lowercase hex sha256 of the token.
    pub sha256: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

impl StoredToken {
    /// What may be shown of it.
    pub fn info(&self) -> TokenInfo {
        TokenInfo {
            name: self.name.clone(),
            role: self.role,
            created_at: self.created_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_spelled_as_the_api_spells_them() {
        assert_eq!(
            serde_json::to_string(&Role::ReadOnly).unwrap(),
            "\"read-only\""
        );
        assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
        assert_eq!("read-only".parse::<Role>(), Ok(Role::ReadOnly));
        let err = "root".parse::<Role>().unwrap_err();
        assert!(err.contains("admin or read-only"), "{err}");
    }

    #[test]
    fn token_requests_name_every_bad_field() {
        let req = TokenRequest {
            name: "CI_bot".into(),
            role: "root".into(),
        };
        let fields: Vec<String> = req
            .validated()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["name", "role"]);
        let missing = TokenRequest {
            name: String::new(),
            role: String::new(),
        };
        let errs = missing.validated().unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        let ok = TokenRequest {
            name: "ci".into(),
            role: "read-only".into(),
        };
        assert!(ok.validated().is_ok());
        assert_eq!(ok.parsed_role(), Some(Role::ReadOnly));
    }

    #[test]
    fn token_requests_reject_unknown_fields() {
        let err = serde_json::from_str::<TokenRequest>(r#"{"name":"a","role":"admin","x":1}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn listed_tokens_do_not_carry_the_hash() {
        let stored = StoredToken {
            name: "ci".into(),
            role: Role::Admin,
            sha256: "ab".repeat(32),
            created_at: DateTime::from_timestamp(0, 0).unwrap(),
        };
        let shown = serde_json::to_string(&stored.info()).unwrap();
        assert!(!shown.contains("sha256"), "{shown}");
        assert_eq!(
            shown,
            r#"{"name":"ci","role":"admin","createdAt":"1970-01-01T00:00:00Z"}"#
        );
    }
}
