//! Secrets and Configs: named, immutable payloads that services mount into their tasks
//! (Swarm's `docker secret` / `docker config`).
//!
//! The payload travels only in a write request (`spec.data`, base64) and in the answer an
//! agent gets for a task it runs ([`TaskPayloads`]). It is never stored in the object and
//! never returned by the API: the controller keeps it below `<root>/private/` (a Secret's
//! encrypted), and the stored object has `spec.data` unset and a [`PayloadStatus`] with the
//! size and a keyed fingerprint, by which an apply of the same data is "unchanged" and of
//! different data is refused (payloads are immutable; labels may change).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::object::{Object, Resource};
use crate::validation::FieldError;

/// A Secret object.
pub type Secret = Object<SecretSpec>;
/// A Config object.
pub type Config = Object<ConfigSpec>;

/// Largest secret payload, in bytes (Swarm's 500 KiB).
pub const MAX_SECRET_BYTES: usize = 500 * 1024;
/// Largest config payload, in bytes.
pub const MAX_CONFIG_BYTES: usize = 1000 * 1024;

/// What a user writes of a Secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSpec {
    /// The payload, base64 (standard alphabet, padded), 1 byte to 500 KiB decoded. Required
    /// on create; on a replace or apply of an existing secret it must be the same bytes, or
    /// be left out to change only labels. Never stored here, never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// What a user writes of a Config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigSpec {
    /// The payload, base64, 1 byte to 1000 KiB decoded; as for a Secret, never stored here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// What the controller records of a payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PayloadStatus {
    /// Size of the payload in bytes.
    #[serde(default)]
    pub size: u64,
    /// `hmac-sha256:<hex>` of the payload under a key only the controllers hold: equal
    /// fingerprints mean equal payloads; without the key it says nothing about the data.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
}

/// A kind whose objects carry a payload.
pub trait PayloadKind: Resource<Status = PayloadStatus> {
    /// Largest payload in bytes.
    const MAX_BYTES: usize;
    /// The base64 payload of a write, if any.
    fn data(&self) -> Option<&str>;
    /// Drops the payload (before storing).
    fn clear_data(&mut self);
}

impl PayloadKind for SecretSpec {
    const MAX_BYTES: usize = MAX_SECRET_BYTES;
    fn data(&self) -> Option<&str> {
        self.data.as_deref()
    }
    fn clear_data(&mut self) {
        self.data = None;
    }
}

impl PayloadKind for ConfigSpec {
    const MAX_BYTES: usize = MAX_CONFIG_BYTES;
    fn data(&self) -> Option<&str> {
        self.data.as_deref()
    }
    fn clear_data(&mut self) {
        self.data = None;
    }
}

/// Decodes a base64 payload and checks its size: the bytes, or the message for
/// `spec.data`.
pub fn decode_payload(data: &str, max: usize) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("is not base64 (standard alphabet, padded): {e}"))?;
    if bytes.is_empty() {
        return Err("must hold at least 1 byte (got an empty payload)".into());
    }
    if bytes.len() > max {
        return Err(format!(
            "is {} bytes; at most {} bytes ({} KiB) are allowed",
            bytes.len(),
            max,
            max / 1024
        ));
    }
    Ok(bytes)
}

/// Encodes a payload as `spec.data` wants it.
pub fn encode_payload(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn validate_data(data: Option<&str>, max: usize, errs: &mut Vec<FieldError>) {
    if let Some(data) = data {
        if let Err(msg) = decode_payload(data, max) {
            errs.push(FieldError::new("spec.data", msg));
        }
    }
}

impl Resource for SecretSpec {
    const KIND: &'static str = "Secret";
    const PLURAL: &'static str = "secrets";
    const USER_OWNED: bool = true;
    const STACK_NAMES: bool = true;
    type Status = PayloadStatus;

    fn validate_spec(&self, errs: &mut Vec<FieldError>) {
        validate_data(self.data.as_deref(), MAX_SECRET_BYTES, errs);
    }
}

impl Resource for ConfigSpec {
    const KIND: &'static str = "Config";
    const PLURAL: &'static str = "configs";
    const USER_OWNED: bool = true;
    const STACK_NAMES: bool = true;
    type Status = PayloadStatus;

    fn validate_spec(&self, errs: &mut Vec<FieldError>) {
        validate_data(self.data.as_deref(), MAX_CONFIG_BYTES, errs);
    }
}

/// One payload handed to an agent for a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveredPayload {
    /// The Secret's or Config's name (`source` of the reference).
    pub name: String,
    /// The payload, base64.
    pub data: String,
}

/// `GET /v1/node/tasks/<task id>/payloads`: what an agent needs to start one of its tasks:
/// every Secret and Config the task's spec references, by name. Served over mutual TLS only
/// to the node the task is assigned to, while the task is wanted running.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskPayloads {
    /// Secrets referenced by the task.
    #[serde(default)]
    pub secrets: Vec<DeliveredPayload>,
    /// Configs referenced by the task.
    #[serde(default)]
    pub configs: Vec<DeliveredPayload>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::Validate;

    fn secret_errors(data: Option<String>) -> Vec<String> {
        Secret::new("pw", SecretSpec { data })
            .validated()
            .err()
            .unwrap_or_default()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn secret_payloads_are_one_byte_to_500_kib() {
        assert!(secret_errors(Some(encode_payload(b"x"))).is_empty());
        assert!(secret_errors(Some(encode_payload(&vec![7; MAX_SECRET_BYTES]))).is_empty());
        let over = secret_errors(Some(encode_payload(&vec![7; MAX_SECRET_BYTES + 1])));
        assert_eq!(over.len(), 1);
        assert!(
            over[0].starts_with("spec.data: is 512001 bytes"),
            "{over:?}"
        );
        let empty = secret_errors(Some(String::new()));
        assert!(empty[0].contains("at least 1 byte"), "{empty:?}");
        assert!(secret_errors(Some("***".into()))[0].contains("not base64"));
    }

    #[test]
    fn config_payloads_may_reach_1000_kib() {
        let c = Config::new(
            "conf",
            ConfigSpec {
                data: Some(encode_payload(&vec![1; MAX_CONFIG_BYTES])),
            },
        );
        assert!(c.validated().is_ok());
    }

    #[test]
    fn payload_kinds_take_stack_names() {
        assert!(Secret::new("shop_pw", SecretSpec::default())
            .validated()
            .is_ok());
    }
}
