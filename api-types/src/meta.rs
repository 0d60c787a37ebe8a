//! Object metadata shared by every kind.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{check_dns_label, check_object_name, FieldError};

/// The one API version this crate speaks.
pub const API_VERSION: &str = "shoal/v1";

/// Metadata every object carries. `uid`, `generation`, `resourceVersion` and
/// `creationTimestamp` are set by the server; what a client sends in them is ignored on
/// create, and `resourceVersion` is the optimistic-concurrency precondition on replace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// A DNS-1123 label: lowercase letters, digits and '-', at most 63 characters.
    #[serde(default)]
    pub name: String,
    /// Unique id given at creation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Bumped on every change of `spec`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: i64,
    /// The etcd mod_revision of the object, as a decimal string (as in Kubernetes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// When the object was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<DateTime<Utc>>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl ObjectMeta {
    /// Metadata with just a name.
    pub fn named(name: impl Into<String>) -> Self {
        ObjectMeta {
            name: name.into(),
            ..Default::default()
        }
    }

    /// The resourceVersion as a revision number, if set and numeric.
    pub fn revision(&self) -> Option<i64> {
        self.resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
    }

    /// Checks the name (a DNS-1123 label) and label keys.
    /// `stack_names`: the name may also hold `_` ([`check_object_name`]).
    pub fn validate(&self, stack_names: bool, errs: &mut Vec<FieldError>) {
        let checked = if stack_names {
            check_object_name(&self.name)
        } else {
            check_dns_label(&self.name)
        };
        if let Err(msg) = checked {
            errs.push(FieldError::new("metadata.name", msg));
        }
        for key in self.labels.keys() {
            if key.is_empty() || key.len() > 253 {
                errs.push(FieldError::new(
                    format!("metadata.labels.{key}"),
                    "label keys must be 1-253 characters",
                ));
            }
        }
    }
}
