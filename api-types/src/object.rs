//! The generic object envelope (`apiVersion`, `kind`, `metadata`, `spec`, `status`), lists,
//! watch events, and the [`Resource`] trait that ties a spec type to its kind.

use std::fmt::Debug;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::meta::{ObjectMeta, API_VERSION};
use crate::validation::{FieldError, Validate};

/// A spec type that names a kind. Implemented by every `*Spec` type.
pub trait Resource:
    Serialize + DeserializeOwned + JsonSchema + Clone + Debug + PartialEq + Send + Sync + 'static
{
    /// The kind, e.g. `Network`.
    const KIND: &'static str;
    /// The plural used in URLs and keys, e.g. `networks`.
    const PLURAL: &'static str;
    /// Whether users create and change this kind (Network, Service) or Shoal does.
    const USER_OWNED: bool;
    /// Whether names may hold `_` (`shop_web`: the kinds a stack creates), besides the
    /// DNS-1123 label characters every kind takes.
    const STACK_NAMES: bool = false;
    /// The status type of the kind.
    type Status: Serialize
        + DeserializeOwned
        + JsonSchema
        + Clone
        + Debug
        + Default
        + PartialEq
        + Send
        + Sync
        + 'static;

    /// The key of an object below the kind's prefix. Most kinds use the name; tasks are
    /// grouped by node so an agent watches only its own.
    fn key_suffix(meta: &ObjectMeta, _spec: &Self) -> String {
        meta.name.clone()
    }

    /// Checks the spec. Field paths start with `spec.`.
    fn validate_spec(&self, errs: &mut Vec<FieldError>);

    /// Checks the name beyond the DNS-1123 label every kind requires (Nodes refuse the
    /// names of Shoal's own etcd users). Field path `metadata.name`.
    fn validate_name(_name: &str, _errs: &mut Vec<FieldError>) {}

    /// Fills in defaults, in one place. Called before validation and before storing.
    fn apply_defaults(&mut self) {}

    /// Called by the API when a stored object's spec is replaced by a different one, with
    /// the old spec and the status about to be stored (Services keep the old spec for
    /// rollback).
    fn spec_changed(_old: &Self, _status: &mut Self::Status) {}
}

/// One object of kind `S::KIND`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(bound(
    serialize = "S: Serialize, S::Status: Serialize",
    deserialize = "S: DeserializeOwned, S::Status: DeserializeOwned"
))]
#[schemars(bound = "S: Resource")]
pub struct Object<S: Resource> {
    /// Always `shoal/v1`.
    pub api_version: String,
    /// The kind, e.g. `Network`.
    pub kind: String,
    /// Name, labels and server-set fields.
    pub metadata: ObjectMeta,
    /// What the owner wants.
    pub spec: S,
    /// What Shoal observed; ignored when sent by users.
    #[serde(default, skip_serializing_if = "is_default")]
    pub status: S::Status,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl<S: Resource> Object<S> {
    /// A new object with the given name and spec, default status.
    pub fn new(name: impl Into<String>, spec: S) -> Self {
        Object {
            api_version: API_VERSION.to_string(),
            kind: S::KIND.to_string(),
            metadata: ObjectMeta::named(name),
            spec,
            status: S::Status::default(),
        }
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The key below the kind's prefix (see [`Resource::key_suffix`]).
    pub fn key_suffix(&self) -> String {
        S::key_suffix(&self.metadata, &self.spec)
    }

    /// Applies the kind's defaults to the spec.
    pub fn apply_defaults(&mut self) {
        self.spec.apply_defaults();
    }

    /// The object as it is stored in etcd: serialised like the object itself but without
    /// `metadata.resourceVersion` (the key's mod revision is the truth there), and without
    /// copying the object to drop it.
    pub fn stored(&self) -> Stored<'_, S> {
        Stored(self)
    }
}

/// An object in its stored form ([`Object::stored`]). Its fields are listed by exhaustive
/// destructuring, so a field added to [`Object`] or [`ObjectMeta`] fails to compile here
/// instead of being lost on every write.
pub struct Stored<'a, S: Resource>(&'a Object<S>);

impl<S: Resource> Serialize for Stored<'_, S> {
    fn serialize<Z: Serializer>(&self, z: Z) -> Result<Z::Ok, Z::Error> {
        let Object {
            api_version,
            kind,
            metadata,
            spec,
            status,
        } = self.0;
        let mut s = z.serialize_struct("Object", 5)?;
        s.serialize_field("apiVersion", api_version)?;
        s.serialize_field("kind", kind)?;
        s.serialize_field("metadata", &StoredMeta(metadata))?;
        s.serialize_field("spec", spec)?;
        if is_default(status) {
            s.skip_field("status")?;
        } else {
            s.serialize_field("status", status)?;
        }
        s.end()
    }
}

/// [`ObjectMeta`] as stored: every field as its own `Serialize` writes it, but
/// `resourceVersion`.
struct StoredMeta<'a>(&'a ObjectMeta);

impl Serialize for StoredMeta<'_> {
    fn serialize<Z: Serializer>(&self, z: Z) -> Result<Z::Ok, Z::Error> {
        let ObjectMeta {
            name,
            uid,
            labels,
            generation,
            resource_version: _,
            creation_timestamp,
        } = self.0;
        let mut s = z.serialize_struct("ObjectMeta", 5)?;
        s.serialize_field("name", name)?;
        if !uid.is_empty() {
            s.serialize_field("uid", uid)?;
        }
        if !labels.is_empty() {
            s.serialize_field("labels", labels)?;
        }
        if *generation != 0 {
            s.serialize_field("generation", generation)?;
        }
        if let Some(t) = creation_timestamp {
            s.serialize_field("creationTimestamp", t)?;
        }
        s.end()
    }
}

impl<S: Resource> Validate for Object<S> {
    fn validate(&self, errs: &mut Vec<FieldError>) {
        if self.api_version != API_VERSION {
            errs.push(FieldError::new(
                "apiVersion",
                format!("must be {API_VERSION:?} (got {:?})", self.api_version),
            ));
        }
        if self.kind != S::KIND {
            errs.push(FieldError::new(
                "kind",
                format!("must be {:?} (got {:?})", S::KIND, self.kind),
            ));
        }
        self.metadata.validate(S::STACK_NAMES, errs);
        S::validate_name(&self.metadata.name, errs);
        self.spec.validate_spec(errs);
    }
}

/// Metadata of a list: the revision it was read at, to watch from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    /// The etcd revision the list was read at.
    pub resource_version: String,
}

/// A list of objects, as `GET /apis/shoal/v1/<plural>` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[serde(bound(
    serialize = "S: Serialize, S::Status: Serialize",
    deserialize = "S: DeserializeOwned, S::Status: DeserializeOwned"
))]
#[schemars(bound = "S: Resource")]
pub struct ObjectList<S: Resource> {
    /// Always `shoal/v1`.
    pub api_version: String,
    /// `<Kind>List`, e.g. `NetworkList`.
    pub kind: String,
    /// The revision of the list.
    pub metadata: ListMeta,
    /// The objects, sorted by key.
    pub items: Vec<Object<S>>,
}

impl<S: Resource> ObjectList<S> {
    /// A list read at `revision`.
    pub fn new(items: Vec<Object<S>>, revision: i64) -> Self {
        ObjectList {
            api_version: API_VERSION.to_string(),
            kind: format!("{}List", S::KIND),
            metadata: ListMeta {
                resource_version: revision.to_string(),
            },
            items,
        }
    }
}

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    /// The object was created (or existed when the watch started without a revision).
    Added,
    /// The object changed.
    Modified,
    /// The object was deleted; the event carries its last state.
    Deleted,
    /// No object changed; `object.metadata.resourceVersion` says how far the watch got.
    Bookmark,
    /// The watch ended with an error; `object` is a [`crate::Status`].
    Error,
}

/// One line of a watch stream: `{"type":"ADDED","object":{...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WatchEvent<T> {
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The object (for BOOKMARK only kind, apiVersion and metadata.resourceVersion).
    pub object: T,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::task::{TaskSpec, TaskState};

    /// What the stored form was before [`Stored`]: a copy with `resourceVersion` cleared.
    fn copied<S: Resource>(o: &Object<S>) -> Vec<u8> {
        let mut o = o.clone();
        o.metadata.resource_version = None;
        serde_json::to_vec(&o).unwrap()
    }

    #[test]
    fn the_stored_form_should_be_the_object_without_its_resource_version() {
        let mut bare = Object::new("t1", TaskSpec::default());
        bare.metadata.resource_version = Some("7".into());
        let mut full = bare.clone();
        full.metadata.uid = "u-1".into();
        full.metadata.labels = BTreeMap::from([("a".into(), "b \"quoted\"".into())]);
        full.metadata.generation = 3;
        full.metadata.creation_timestamp = Some("2026-12-03T10:00:00Z".parse().unwrap());
        full.status.state = TaskState::Running;
        full.status.message = "started".into();
        for o in [&bare, &full] {
            let stored = serde_json::to_vec(&o.stored()).unwrap();
            assert_eq!(
                String::from_utf8(stored.clone()).unwrap(),
                String::from_utf8(copied(o)).unwrap()
            );
            let back: Object<TaskSpec> = serde_json::from_slice(&stored).unwrap();
            assert_eq!(back.metadata.resource_version, None);
            assert_eq!(back.status, o.status);
            assert_eq!(back.metadata.labels, o.metadata.labels);
        }
    }
}
