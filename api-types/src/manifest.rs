//! Reading manifests: one or more YAML (or JSON) documents, each a user-owned object.
//! Every problem of every document is reported, with its document number and field path;
//! nothing is half-parsed.

use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use crate::error::StatusDetail;
use crate::meta::API_VERSION;
use crate::network::{Network, NetworkSpec};
use crate::object::{Object, Resource};
use crate::payload::{Config, ConfigSpec, Secret, SecretSpec};
use crate::service::{Service, ServiceSpec};
use crate::validation::{FieldError, Validate};

/// A user-owned object of any kind.
// A Service is much larger than a Network; manifests hold a handful of objects, parsed once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum AnyObject {
    /// A Network.
    Network(Network),
    /// A Service.
    Service(Service),
    /// A Secret (its payload only in the write, never stored in the object).
    Secret(Secret),
    /// A Config.
    Config(Config),
}

impl AnyObject {
    /// The kind.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyObject::Network(_) => NetworkSpec::KIND,
            AnyObject::Service(_) => ServiceSpec::KIND,
            AnyObject::Secret(_) => SecretSpec::KIND,
            AnyObject::Config(_) => ConfigSpec::KIND,
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        match self {
            AnyObject::Network(o) => o.name(),
            AnyObject::Service(o) => o.name(),
            AnyObject::Secret(o) => o.name(),
            AnyObject::Config(o) => o.name(),
        }
    }

    /// `network/appnet`, as kubectl prints it.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.kind().to_lowercase(), self.name())
    }

    /// Validation of the object on its own.
    pub fn validate(&self, errs: &mut Vec<FieldError>) {
        match self {
            AnyObject::Network(o) => o.validate(errs),
            AnyObject::Service(o) => o.validate(errs),
            AnyObject::Secret(o) => o.validate(errs),
            AnyObject::Config(o) => o.validate(errs),
        }
    }
}

/// Every problem found in a manifest body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ManifestError(pub Vec<StatusDetail>);

/// The kinds `apply` accepts, for messages.
pub const APPLY_KINDS: &str = "Network, Service, Secret, Config";

/// Parses a body of one or more YAML documents (JSON is YAML too), applies defaults and
/// validates each object. Empty documents are skipped; a body with no object is an error.
pub fn parse_manifests(text: &str) -> Result<Vec<AnyObject>, ManifestError> {
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let number = i + 1;
        let value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                problems.push(detail(
                    number,
                    None,
                    FieldError::new("", format!("not valid YAML: {}", yaml_error(&e, text))),
                ));
                // After a syntax error the rest of the stream cannot be trusted.
                break;
            }
        };
        match parse_value(value) {
            Ok(None) => {}
            Ok(Some(obj)) => {
                let mut errs = Vec::new();
                obj.validate(&mut errs);
                let reference = obj.reference();
                problems.extend(
                    errs.into_iter()
                        .map(|e| detail(number, Some(reference.clone()), e)),
                );
                objects.push(obj);
            }
            Err((reference, errs)) => problems.extend(
                errs.into_iter()
                    .map(|e| detail(number, reference.clone(), e)),
            ),
        }
    }
    if objects.is_empty() && problems.is_empty() {
        problems.push(StatusDetail::from(FieldError::new(
            "",
            "the body holds no object",
        )));
    }
    if problems.is_empty() {
        Ok(objects)
    } else {
        Err(ManifestError(problems))
    }
}

fn detail(document: usize, object: Option<String>, e: FieldError) -> StatusDetail {
    StatusDetail {
        document: Some(document),
        object,
        ..StatusDetail::from(e)
    }
}

type ParseFailure = (Option<String>, Vec<FieldError>);

/// One document: `None` if empty.
fn parse_value(value: Value) -> Result<Option<AnyObject>, ParseFailure> {
    let map = match &value {
        Value::Null => return Ok(None),
        Value::Mapping(m) => m,
        other => {
            return Err((None, vec![FieldError::new(
                "",
                format!(
                    "expected an object (a mapping with apiVersion, kind, metadata and spec), found {}",
                    describe(other)
                ),
            )]))
        }
    };
    let kind = match map.get("kind") {
        Some(Value::String(k)) => k.clone(),
        Some(other) => {
            return Err((
                None,
                vec![FieldError::new(
                    "kind",
                    format!("must be a string, found {}", describe(other)),
                )],
            ))
        }
        None => {
            return Err((
                None,
                vec![FieldError::new(
                    "kind",
                    format!("is required (one of {APPLY_KINDS})"),
                )],
            ))
        }
    };
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let reference = Some(format!("{}/{}", kind.to_lowercase(), name));
    match kind.as_str() {
        "Network" => typed::<NetworkSpec>(value).map(|o| Some(AnyObject::Network(o))),
        "Service" => typed::<ServiceSpec>(value).map(|o| Some(AnyObject::Service(o))),
        "Secret" => typed::<SecretSpec>(value).map(|o| Some(AnyObject::Secret(o))),
        "Config" => typed::<ConfigSpec>(value).map(|o| Some(AnyObject::Config(o))),
        "Node" | "Task" | "Endpoints" => Err(vec![FieldError::new(
            "kind",
            format!("{kind} objects are managed by Shoal and cannot be applied (apply takes {APPLY_KINDS})"),
        )]),
        _ => Err(vec![FieldError::new("kind", format!("unknown kind {kind:?} (apply takes {APPLY_KINDS})"))]),
    }
    .map_err(|errs| (reference, errs))
}

/// Deserialises one document into a typed object, reporting the failing field's path,
/// then applies defaults.
fn typed<S: Resource>(value: Value) -> Result<Object<S>, Vec<FieldError>> {
    let mut obj: Object<S> = from_value_with_path(value)?;
    obj.apply_defaults();
    obj.status = Default::default();
    Ok(obj)
}

/// Deserialises a YAML value, naming the field that failed. A missing field is named
/// itself (`apiVersion`, `spec.image`), not its parent: at the top the parent has no name.
pub fn from_value_with_path<T: DeserializeOwned>(value: Value) -> Result<T, Vec<FieldError>> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let mut field = if path == "." { String::new() } else { path };
        if let Some(missing) = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
        {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(missing);
        }
        vec![FieldError::new(field, message)]
    })
}

/// A YAML error's message with where it is. The parser's errors say `at line N column M`;
/// those of the reader (a character YAML does not allow, such as NUL) say at most `at
/// position N` (a byte offset), so the first such character is found in `text` and named
/// by line and column.
pub fn yaml_error(e: &serde_yaml_ng::Error, text: &str) -> String {
    let message = e.to_string();
    if message.contains(" line ") {
        return message;
    }
    let bare = match message.rfind(" at position ") {
        Some(i) => &message[..i],
        None => &message,
    };
    match (first_disallowed_char(text), e.location()) {
        (Some((line, column)), _) => format!("{bare} at line {line} column {column}"),
        (None, Some(l)) => format!("{bare} at line {} column {}", l.line(), l.column()),
        (None, None) => message,
    }
}

/// Line and column (1-based) of the first character YAML does not allow in `text`.
pub fn first_disallowed_char(text: &str) -> Option<(usize, usize)> {
    text.lines().enumerate().find_map(|(line, l)| {
        l.chars()
            .position(|c| !allowed_in_yaml(c))
            .map(|column| (line + 1, column + 1))
    })
}

/// YAML 1.2's printable set (c-printable) plus line breaks.
fn allowed_in_yaml(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{a0}'..='\u{d7ff}'
        | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
        && c != '\u{feff}'
}

/// Parses one object of kind `S` from a JSON or YAML body (create and replace), applying
/// defaults. Does not validate.
pub fn parse_object<S: Resource>(body: &str) -> Result<Object<S>, Vec<FieldError>> {
    let value: Value = serde_yaml_ng::from_str(body).map_err(|e| {
        vec![FieldError::new(
            "",
            format!("not valid JSON or YAML: {}", yaml_error(&e, body)),
        )]
    })?;
    match &value {
        Value::Mapping(m) => {
            if m.get("apiVersion").is_none() || m.get("kind").is_none() {
                let mut errs = Vec::new();
                if m.get("apiVersion").is_none() {
                    errs.push(FieldError::new(
                        "apiVersion",
                        format!("is required ({API_VERSION:?})"),
                    ));
                }
                if m.get("kind").is_none() {
                    errs.push(FieldError::new(
                        "kind",
                        format!("is required ({:?})", S::KIND),
                    ));
                }
                return Err(errs);
            }
        }
        other => {
            return Err(vec![FieldError::new(
                "",
                format!("expected a {} object, found {}", S::KIND, describe(other)),
            )])
        }
    }
    typed::<S>(value)
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = r#"
apiVersion: shoal/v1
kind: Network
metadata: {name: appnet}
spec: {subnet: 10.1.0.0/24}
---
apiVersion: shoal/v1
kind: Service
metadata: {name: api}
spec:
  image: localhost:5000/busybox:latest
  replicas: 2
  networks: [{name: appnet}]
  ports: [{published: 8080, target: 80}]
"#;

    fn messages(text: &str) -> Vec<String> {
        parse_manifests(text)
            .unwrap_err()
            .0
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    #[test]
    fn manifests_parse_several_documents_with_defaults() {
        let objs = parse_manifests(APP).unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].reference(), "network/appnet");
        match &objs[1] {
            AnyObject::Service(s) => {
                assert_eq!(s.spec.replicas, Some(2));
                assert_eq!(s.spec.ports[0].protocol, crate::Protocol::Tcp);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn manifests_name_unknown_fields_with_their_path() {
        let m = messages("apiVersion: shoal/v1\nkind: Service\nmetadata: {name: api}\nspec: {image: x, ports: [{published: 1, target: 2, colour: red}]}\n");
        assert_eq!(m.len(), 1);
        assert!(
            m[0].starts_with(
                "document 1 (service/api): spec.ports[0].colour: unknown field `colour`"
            ),
            "{m:?}"
        );
    }

    #[test]
    fn manifests_reject_unknown_kind_and_list_documents() {
        let m =
            messages("apiVersion: shoal/v1\nkind: Gadget\nmetadata: {name: a}\n---\n- a\n- b\n");
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].contains("unknown kind \"Gadget\""));
        assert!(m[1].starts_with("document 2: expected an object"), "{m:?}");
    }

    #[test]
    fn manifests_reject_invalid_yaml() {
        let m = messages("kind: [unclosed\n");
        assert!(m[0].starts_with("document 1: not valid YAML"), "{m:?}");
    }

    #[test]
    fn manifests_report_every_invalid_document() {
        let text = format!("{APP}---\napiVersion: shoal/v1\nkind: Network\nmetadata: {{name: Bad}}\nspec: {{subnet: nope}}\n");
        let m = messages(&text);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(
            m[0].starts_with("document 3 (network/Bad): metadata.name"),
            "{m:?}"
        );
        assert!(
            m[1].starts_with("document 3 (network/Bad): spec.subnet"),
            "{m:?}"
        );
    }

    #[test]
    fn manifests_reject_negative_replicas_and_long_names() {
        let long = "a".repeat(64);
        let m = messages(&format!("apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: {long}}}\nspec: {{image: x, replicas: -3}}\n"));
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].contains("metadata.name: must be at most 63 characters"));
        assert!(m[1].contains("spec.replicas: must be 0 or more (got -3)"));
    }

    #[test]
    fn manifests_reject_system_kinds_and_empty_bodies() {
        assert!(
            messages("apiVersion: shoal/v1\nkind: Task\nmetadata: {name: t}\nspec: {}\n")[0]
                .contains("managed by Shoal")
        );
        assert_eq!(messages("---\n"), vec!["the body holds no object"]);
    }

    #[test]
    fn manifests_name_a_missing_top_level_field_itself() {
        // Found by the property tests: `missing field` at the top had an empty field path.
        let m = parse_manifests("kind: Network\nmetadata: {name: a}\nspec: {}\n").unwrap_err();
        assert_eq!(m.0[0].field, "apiVersion", "{m:?}");
        let m = parse_manifests("apiVersion: shoal/v1\nkind: Network\nmetadata: {}\nspec: {}\n")
            .unwrap_err();
        assert_eq!(m.0[0].field, "metadata.name", "{m:?}");
    }

    #[test]
    fn manifests_locate_characters_yaml_does_not_allow() {
        // Found by the property tests: the reader's errors (NUL) came without a place.
        let m = messages("kind: Network\nmetadata: {name: a\u{0}}\n");
        assert!(m[0].ends_with("at line 2 column 19"), "{m:?}");
        let errs = parse_object::<NetworkSpec>("\u{0}").unwrap_err();
        assert!(errs[0].message.ends_with("at line 1 column 1"), "{errs:?}");
    }

    #[test]
    fn parse_object_accepts_json_and_names_missing_kind() {
        let n = parse_object::<NetworkSpec>(
            r#"{"apiVersion":"shoal/v1","kind":"Network","metadata":{"name":"n"},"spec":{}}"#,
        )
        .unwrap();
        assert_eq!(n.spec.driver, "overlay");
        let errs =
            parse_object::<NetworkSpec>(r#"{"metadata":{"name":"n"},"spec":{}}"#).unwrap_err();
        assert_eq!(errs.len(), 2);
    }
}
