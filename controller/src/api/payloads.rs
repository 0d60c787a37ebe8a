//! Secrets and Configs in writes, and apply's prune selector: the pure parts of
//! [`super::plan`] that concern payloads (plan imports this module, never the reverse).
//!
//! Invariants:
//! - A stored Secret or Config never holds its payload: `spec.data` is cleared and
//!   `status` records `{size, fingerprint}`; the payload goes to
//!   `<root>/private/payloads/<plural>/<name>` in the object's own transaction, a Secret's
//!   sealed under the secrets key ([`crate::secrets_key`]), a Config's as it is.
//! - Payloads are immutable: a write of an existing one without `spec.data` (or with the
//!   same bytes, compared by fingerprint) may change labels only; other bytes are 422 at
//!   `spec.data` saying how to rotate.
//! - A Secret or Config is in use while a Service's *spec* references it (not its
//!   `previousSpec`: after a rotation the old secret can be removed at once; a rollback to
//!   a spec that names a removed secret is then refused, 422 at `spec.secrets[i].source`).
//! - Pruning (`?prune=<label key>=<value>`) deletes every Service, Network, Secret and Config
//!   carrying that label that the body leaves out, never the system's networks, and never
//!   something a remaining service still uses (409 naming the services, or 422 on a service
//!   of the body).

use shoal_api_types::payload::{decode_payload, PayloadKind, PayloadStatus};
use shoal_api_types::{ConfigSpec, FieldError, Object, Resource, SecretSpec, Service, Status};

use crate::secrets_key::SecretsKey;

/// The bytes to store for a created payload (a Secret's sealed). `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(pub Vec<u8>);

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

/// `?prune=<key>=<value>`: the label whose objects an apply owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prune {
    /// The label key.
    pub key: String,
    /// Its value.
    pub value: String,
}

impl Prune {
    /// Parses `key=value` (a label key of 1-253 characters, a non-empty value); 400
    /// otherwise.
    pub fn parse(text: &str) -> Result<Prune, Status> {
        let bad = |why: String| {
            Status::bad_request(format!(
                "?prune={text:?}: {why}; it takes one label as key=value (e.g. \
                 ?prune=shoal.io/stack=shop)"
            ))
        };
        let (key, value) = text.split_once('=').ok_or_else(|| bad("no '='".into()))?;
        if key.is_empty() || key.len() > 253 {
            return Err(bad("label keys are 1-253 characters".into()));
        }
        if value.is_empty() {
            return Err(bad("the value is empty".into()));
        }
        Ok(Prune {
            key: key.into(),
            value: value.into(),
        })
    }

    /// Whether `obj` carries the label.
    pub fn selects<S: Resource>(&self, obj: &Object<S>) -> bool {
        obj.metadata.labels.get(&self.key) == Some(&self.value)
    }
}

/// What stored bytes a kind keeps for its payload.
pub trait StoredPayload: PayloadKind {
    /// Seals (Secret) or keeps (Config) the payload of `name`.
    fn to_stored(key: &SecretsKey, name: &str, bytes: &[u8]) -> Result<Vec<u8>, String>;
    /// Opens what [`StoredPayload::to_stored`] made.
    fn from_stored(key: &SecretsKey, name: &str, stored: &[u8]) -> Result<Vec<u8>, String>;
    /// The rotation hint of the "immutable" error.
    fn rotate_hint(name: &str) -> String;
}

impl StoredPayload for SecretSpec {
    fn to_stored(key: &SecretsKey, name: &str, bytes: &[u8]) -> Result<Vec<u8>, String> {
        key.seal(Self::PLURAL, name, bytes)
            .map_err(|e| e.to_string())
    }
    fn from_stored(key: &SecretsKey, name: &str, stored: &[u8]) -> Result<Vec<u8>, String> {
        key.open(Self::PLURAL, name, stored)
            .map_err(|e| e.to_string())
    }
    fn rotate_hint(name: &str) -> String {
        format!(
            "create a new secret and rotate with `shoal service update --secret-rm {name} \
             --secret-add source={name}2,target={name}`"
        )
    }
}

impl StoredPayload for ConfigSpec {
    fn to_stored(_key: &SecretsKey, _name: &str, bytes: &[u8]) -> Result<Vec<u8>, String> {
        Ok(bytes.to_vec())
    }
    fn from_stored(_key: &SecretsKey, _name: &str, stored: &[u8]) -> Result<Vec<u8>, String> {
        Ok(stored.to_vec())
    }
    fn rotate_hint(name: &str) -> String {
        format!(
            "create a new config and rotate with `shoal service update --config-rm {name} \
             --config-add source={name}2,target=/{name}`"
        )
    }
}

/// What a write does to a Secret or Config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// It did not exist.
    Created,
    /// Its labels changed.
    Configured,
    /// Nothing changed.
    Unchanged,
}

/// A new object as it is created: no identity, revision or status of its own yet.
pub fn clean_object<S: Resource>(mut o: Object<S>) -> Object<S> {
    o.metadata.uid.clear();
    o.metadata.resource_version = None;
    o.metadata.creation_timestamp = None;
    o.metadata.generation = 0;
    o.status = Default::default();
    o
}

/// Merges a Secret or Config write with the stored object: the object to store (no
/// payload in it), what happens and, for a create, the bytes to store. 422s at
/// `spec.data`.
pub fn merge_payload<S: StoredPayload>(
    old: Option<&Object<S>>,
    mut new: Object<S>,
    key: Option<&SecretsKey>,
) -> Result<(Merge, Object<S>, Option<Payload>), FieldError> {
    let kind = S::KIND.to_lowercase();
    let name = new.metadata.name.clone();
    let bytes = match new.spec.data() {
        Some(data) => {
            Some(decode_payload(data, S::MAX_BYTES).map_err(|m| FieldError::new("spec.data", m))?)
        }
        None => None,
    };
    new.spec.clear_data();
    let key = || {
        key.ok_or_else(|| {
            FieldError::new(
                "spec.data",
                "the controller has no secrets key to fingerprint the payload (internal error)",
            )
        })
    };
    let Some(old) = old else {
        let Some(bytes) = bytes else {
            return Err(FieldError::new(
                "spec.data",
                format!(
                    "is required: the {kind}'s content, base64 (1 byte to {} KiB)",
                    S::MAX_BYTES / 1024
                ),
            ));
        };
        let key = key()?;
        let stored =
            S::to_stored(key, &name, &bytes).map_err(|m| FieldError::new("spec.data", m))?;
        let mut obj = clean_object(new);
        obj.status = PayloadStatus {
            size: bytes.len() as u64,
            fingerprint: key.fingerprint(&bytes),
        };
        return Ok((Merge::Created, obj, Some(Payload(stored))));
    };
    if let Some(bytes) = bytes {
        if key()?.fingerprint(&bytes) != old.status.fingerprint {
            return Err(FieldError::new(
                "spec.data",
                format!("{kind} {name} is immutable: {}", S::rotate_hint(&name)),
            ));
        }
    }
    if old.metadata.labels == new.metadata.labels {
        return Ok((Merge::Unchanged, old.clone(), None));
    }
    let mut next = old.clone();
    next.metadata.labels = new.metadata.labels;
    Ok((Merge::Configured, next, None))
}

/// Whether `svc`'s spec references the Secret (`S` = SecretSpec) or Config named `name`.
pub fn references<S: Resource>(svc: &Service, name: &str) -> bool {
    match S::KIND {
        SecretSpec::KIND => svc.spec.secrets.iter().any(|r| r.source == name),
        ConfigSpec::KIND => svc.spec.configs.iter().any(|r| r.source == name),
        _ => false,
    }
}

/// The services whose spec references `name` of kind `S`, sorted.
pub fn services_using<'a, S: Resource>(
    name: &str,
    services: impl IntoIterator<Item = &'a Service>,
) -> Vec<String> {
    let mut users: Vec<String> = services
        .into_iter()
        .filter(|s| references::<S>(s, name))
        .map(|s| s.name().to_string())
        .collect();
    users.sort();
    users.dedup();
    users
}

/// The 409 message for removing a Secret or Config in use: `secret pw is in use by
/// service(s) api, web`.
pub fn in_use_message(kind: &str, name: &str, users: &[String]) -> String {
    format!(
        "{} {name} is in use by service(s) {}",
        kind.to_lowercase(),
        users.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::payload::encode_payload;
    use shoal_api_types::Secret;

    fn key() -> SecretsKey {
        SecretsKey::from_bytes(&[9; 32])
    }

    fn secret(name: &str, data: Option<&[u8]>) -> Secret {
        Secret::new(
            name,
            SecretSpec {
                data: data.map(encode_payload),
            },
        )
    }

    #[test]
    fn a_created_secret_stores_its_fingerprint_and_a_sealed_payload_not_the_data() {
        let k = key();
        let (action, obj, payload) =
            merge_payload(None, secret("pw", Some(b"hunter2")), Some(&k)).unwrap();
        assert_eq!(action, Merge::Created);
        assert_eq!(obj.spec.data, None);
        assert_eq!(obj.status.size, 7);
        assert_eq!(obj.status.fingerprint, k.fingerprint(b"hunter2"));
        let payload = payload.unwrap();
        assert!(!payload.0.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(k.open("secrets", "pw", &payload.0).unwrap(), b"hunter2");
        assert_eq!(
            format!("{payload:?}"),
            format!("Payload({} bytes)", payload.0.len())
        );
    }

    #[test]
    fn a_create_without_data_is_invalid_at_spec_data() {
        let e = merge_payload(None, secret("pw", None), Some(&key())).unwrap_err();
        assert_eq!(e.field, "spec.data");
        assert!(e.message.starts_with("is required"), "{}", e.message);
    }

    #[test]
    fn stored_payloads_keep_their_bytes_and_change_only_labels() {
        let k = key();
        let (_, mut stored, _) = merge_payload(None, secret("pw", Some(b"one")), Some(&k)).unwrap();
        stored.metadata.resource_version = Some("5".into());
        // Same bytes, or none: unchanged.
        for again in [secret("pw", Some(b"one")), secret("pw", None)] {
            let (action, obj, payload) = merge_payload(Some(&stored), again, Some(&k)).unwrap();
            assert_eq!((action, payload), (Merge::Unchanged, None));
            assert_eq!(obj, stored);
        }
        // Labels only: configured, the payload kept.
        let mut relabelled = secret("pw", None);
        relabelled.metadata.labels.insert("a".into(), "b".into());
        let (action, obj, payload) = merge_payload(Some(&stored), relabelled, Some(&k)).unwrap();
        assert_eq!((action, payload), (Merge::Configured, None));
        assert_eq!(obj.status, stored.status);
        assert_eq!(obj.metadata.generation, stored.metadata.generation);
        // Other bytes: immutable.
        let e = merge_payload(Some(&stored), secret("pw", Some(b"two")), Some(&k)).unwrap_err();
        assert_eq!(e.field, "spec.data");
        assert_eq!(
            e.message,
            "secret pw is immutable: create a new secret and rotate with `shoal service update \
             --secret-rm pw --secret-add source=pw2,target=pw`"
        );
    }

    #[test]
    fn prune_selectors_are_one_label() {
        assert_eq!(
            Prune::parse("shoal.io/stack=shop").unwrap(),
            Prune {
                key: "shoal.io/stack".into(),
                value: "shop".into()
            }
        );
        for bad in ["shop", "shoal.io/stack=", "=x"] {
            assert_eq!(Prune::parse(bad).unwrap_err().code, 400, "{bad}");
        }
    }
}
