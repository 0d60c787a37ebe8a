//! [`PayloadSource`]: where an agent gets the secrets and configs of a task it starts (the
//! controller's `GET /v1/node/tasks/<id>/payloads`, see `crate::identity::ControllerClient`;
//! a fake in tests), and [`Payload`], the bytes of one, which never show in `Debug` output
//! or logs.

use async_trait::async_trait;
use shoal_api_types::payload::{decode_payload, MAX_CONFIG_BYTES, MAX_SECRET_BYTES};
use shoal_api_types::TaskPayloads;

/// The bytes of a secret or config. `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(Vec<u8>);

impl Payload {
    /// Wraps `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Payload(bytes)
    }
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
    /// Their number.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The controller could not be reached or failed (connection refused, 5xx, timeout):
    /// worth retrying.
    #[error("{0}")]
    Temporary(String),
    /// The controller refused (401, 403, 404: not this node's task, or not wanted running)
    /// or answered nonsense: retrying will not help.
    #[error("{0}")]
    Refused(String),
}

/// Fetches a task's payloads.
#[async_trait]
pub trait PayloadSource: Send + Sync {
    /// Every secret and config task `task` references.
    async fn fetch(&self, task: &str) -> Result<TaskPayloads, FetchError>;
}

/// The decoded payloads of one task, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Secrets: name and bytes.
    pub secrets: Vec<(String, Payload)>,
    /// Configs: name and bytes.
    pub configs: Vec<(String, Payload)>,
}

impl Fetched {
    /// Decodes an answer (base64, sizes within the kinds' limits).
    pub fn decode(answer: TaskPayloads) -> Result<Fetched, String> {
        let decode = |kind: &str, max: usize, list: Vec<shoal_api_types::DeliveredPayload>| {
            list.into_iter()
                .map(|p| {
                    decode_payload(&p.data, max)
                        .map(|b| (p.name.clone(), Payload::new(b)))
                        .map_err(|e| format!("the controller's {kind} {}: {e}", p.name))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        Ok(Fetched {
            secrets: decode("secret", MAX_SECRET_BYTES, answer.secrets)?,
            configs: decode("config", MAX_CONFIG_BYTES, answer.configs)?,
        })
    }

    /// The secret named `name`.
    pub fn secret(&self, name: &str) -> Option<Payload> {
        find(&self.secrets, name)
    }

    /// The config named `name`.
    pub fn config(&self, name: &str) -> Option<Payload> {
        find(&self.configs, name)
    }
}

fn find(list: &[(String, Payload)], name: &str) -> Option<Payload> {
    list.iter().find(|(n, _)| n == name).map(|(_, p)| p.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::payload::encode_payload;
    use shoal_api_types::DeliveredPayload;

    #[test]
    fn answers_should_be_decoded_and_checked() {
        let answer = TaskPayloads {
            secrets: vec![DeliveredPayload {
                name: "pw".into(),
                data: encode_payload(b"hunter2"),
            }],
            configs: vec![],
        };
        let f = Fetched::decode(answer).unwrap();
        assert_eq!(f.secret("pw").unwrap().bytes(), b"hunter2");
        assert!(!format!("{f:?}").contains("hunter2"));
        let bad = TaskPayloads {
            configs: vec![DeliveredPayload {
                name: "c".into(),
                data: "***".into(),
            }],
            ..Default::default()
        };
        let e = Fetched::decode(bad).unwrap_err();
        assert!(
            e.starts_with("the controller's config c: is not base64"),
            "{e}"
        );
    }
}
