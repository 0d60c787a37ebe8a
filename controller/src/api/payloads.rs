//! Secrets and Configs in writes, and apply's pruning: the parts of [`super::plan`] that
//! concern payloads and labelled removal.
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

use std::collections::{BTreeMap, BTreeSet};

use shoal_api_types::payload::{decode_payload, PayloadKind, PayloadStatus};
use shoal_api_types::{
    AnyObject, ConfigSpec, FieldError, Object, Resource, SecretSpec, Service, ServiceSpec, Status,
    StatusDetail,
};
use shoal_store::{stored, Batch, Store, StoreError};

use super::error::ApiResult;
use super::plan::{Action, Planned, World, ATTEMPTS};
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

    fn selects<S: Resource>(&self, obj: &Object<S>) -> bool {
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

/// Merges a Secret or Config write with the stored object: the object to store (no
/// payload in it), the action and, for a create, the bytes to store. 422s at `spec.data`.
pub fn merge_payload<S: StoredPayload>(
    old: Option<&Object<S>>,
    mut new: Object<S>,
    key: Option<&SecretsKey>,
) -> Result<(Action, Object<S>, Option<Payload>), FieldError> {
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
        let mut obj = super::plan::clean_object(new);
        obj.status = PayloadStatus {
            size: bytes.len() as u64,
            fingerprint: key.fingerprint(&bytes),
        };
        return Ok((Action::Created, obj, Some(Payload(stored))));
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
        return Ok((Action::Unchanged, old.clone(), None));
    }
    let mut next = old.clone();
    next.metadata.labels = new.metadata.labels;
    Ok((Action::Configured, next, None))
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

/// The objects an apply with `prune` deletes: those carrying its label whose reference
/// (`kind/name`) is not in `in_body`; services first. The system's networks never.
pub fn pruned(
    world: &World,
    in_body: &BTreeMap<String, Option<usize>>,
    prune: &Prune,
) -> Vec<AnyObject> {
    let mut out: Vec<AnyObject> = Vec::new();
    out.extend(
        world
            .services
            .values()
            .filter(|o| prune.selects(o))
            .cloned()
            .map(AnyObject::Service),
    );
    out.extend(
        world
            .networks
            .values()
            .filter(|n| prune.selects(n))
            .filter(|n| {
                !n.spec.ingress
                    && shoal_api_types::network::reserved_network_name(n.name()).is_none()
            })
            .cloned()
            .map(AnyObject::Network),
    );
    out.extend(
        world
            .secrets
            .values()
            .filter(|o| prune.selects(o))
            .cloned()
            .map(AnyObject::Secret),
    );
    out.extend(
        world
            .configs
            .values()
            .filter(|o| prune.selects(o))
            .cloned()
            .map(AnyObject::Config),
    );
    out.retain(|o| !in_body.contains_key(&o.reference()));
    out
}

/// 409s for pruned Networks, Secrets and Configs that services staying as they are (not in
/// the body, or unchanged in it) still use. Services the body creates or changes are
/// checked by the usual rules (422 at the reference).
pub fn still_used(planned: &[Planned], after: &World) -> Vec<StatusDetail> {
    let written: BTreeSet<String> = planned
        .iter()
        .filter(|p| matches!(p.action, Action::Created | Action::Configured))
        .map(|p| p.object.reference())
        .collect();
    let staying: Vec<&Service> = after
        .services
        .values()
        .filter(|s| !written.contains(&format!("service/{}", s.name())))
        .collect();
    let mut out = Vec::new();
    for p in planned.iter().filter(|p| p.action == Action::Pruned) {
        let message = match &p.object {
            AnyObject::Network(n) => {
                let users = super::rules::services_using(
                    n,
                    &staying.iter().map(|s| (*s).clone()).collect::<Vec<_>>(),
                );
                (!users.is_empty()).then(|| super::rules::in_use_message(n.name(), &users))
            }
            AnyObject::Secret(s) => {
                let users = services_using::<SecretSpec>(s.name(), staying.iter().copied());
                (!users.is_empty()).then(|| in_use_message("secret", s.name(), &users))
            }
            AnyObject::Config(c) => {
                let users = services_using::<ConfigSpec>(c.name(), staying.iter().copied());
                (!users.is_empty()).then(|| in_use_message("config", c.name(), &users))
            }
            AnyObject::Service(_) => None,
        };
        if let Some(message) = message {
            out.push(StatusDetail {
                field: String::new(),
                message: format!("cannot prune {}: {message}", p.object.reference()),
                document: None,
                object: None,
            });
        }
    }
    out
}

/// Deletes a Secret or Config (and its stored payload) unless a service's spec references
/// it (409 naming them), race-free: the delete commits only if no service was created or
/// changed since the services were read.
pub async fn delete_payload<S: StoredPayload>(
    store: &Store,
    name: &str,
    expected: Option<i64>,
    dry_run: bool,
) -> ApiResult<Object<S>> {
    let kind = S::KIND.to_lowercase();
    let key = store.keys().named::<S>(name);
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let (services, services_revision) = store.list::<ServiceSpec>().await?;
        let Some(obj) = store.get::<S>(&key).await? else {
            return Err(Status::not_found(S::KIND, name).into());
        };
        let current = obj.metadata.revision().unwrap_or(0);
        if let Some(want) = expected.filter(|w| *w != current) {
            return Err(Status::conflict(format!(
                "{kind} {name:?} was changed since resourceVersion {want} (it is now at {current}); read it again and retry"
            ))
            .into());
        }
        let users = services_using::<S>(name, &services);
        if !users.is_empty() {
            return Err(Status::conflict(in_use_message(S::KIND, name, &users)).into());
        }
        if dry_run {
            return Ok(obj);
        }
        let mut batch = Batch::new();
        batch.delete(store, &obj);
        batch.remove_raw(store.keys().payload::<S>(name));
        batch.require_unchanged_since(&store.keys().prefix::<ServiceSpec>(), services_revision);
        match batch.commit(store).await {
            Ok(revision) => return Ok(stored(obj, revision)),
            Err(StoreError::Conflict(msg)) => last = Some(msg),
            Err(e) => return Err(e.into()),
        }
    }
    Err(super::plan::gave_up(last))
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
        assert_eq!(action, Action::Created);
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
            assert_eq!((action, payload), (Action::Unchanged, None));
            assert_eq!(obj, stored);
        }
        // Labels only: configured, the payload kept.
        let mut relabelled = secret("pw", None);
        relabelled.metadata.labels.insert("a".into(), "b".into());
        let (action, obj, payload) = merge_payload(Some(&stored), relabelled, Some(&k)).unwrap();
        assert_eq!((action, payload), (Action::Configured, None));
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
