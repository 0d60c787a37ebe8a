//! Named volumes: directories local to one node, created by its agent the first time a
//! task mounts them (`spec.mounts[].type: volume`) and kept until removed on that node
//! (`shoal volume rm NAME --node N`). They are not objects in etcd: the agent's disk is
//! the truth, and these are the wire types of the API that asks the agents.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One named volume on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeInfo {
    /// The volume's name.
    pub name: String,
    /// The node it lives on.
    pub node: String,
    /// Ids of the tasks on that node whose containers mount it now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
    /// When the agent created it, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
}

/// `GET /apis/shoal/v1/volumes`: every volume of every ready node that answered, and the
/// nodes that did not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeList {
    /// Volumes, by node then name.
    pub items: Vec<VolumeInfo>,
    /// `node: reason` for each ready node that could not be asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

/// The reason `name` is not a volume name: Docker's rule, 1-64 of `[a-zA-Z0-9_.-]`
/// starting with a letter or digit.
pub fn check_volume_name(name: &str) -> Result<(), String> {
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if name.is_empty() || name.len() > 64 || !first_ok || !rest_ok {
        return Err(format!(
            "{name:?} is not a volume name: 1-64 of letters, digits, '_', '.' and '-', starting with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_follow_docker() {
        for ok in ["data", "shop_db-data", "A.1"] {
            assert!(check_volume_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "a/b", "..", &"a".repeat(65)] {
            assert!(check_volume_name(bad).is_err(), "{bad}");
        }
    }
}
