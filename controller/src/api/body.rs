//! Turning request bodies into objects. A body that is not YAML/JSON at all is 400
//! BadRequest; a readable body with wrong content (a list where an object belongs, an
//! unknown kind or field, invalid values) is 422 Invalid with every problem's field path.

use serde::Deserialize;
use serde_yaml_ng::Value;
use shoal_api_types::manifest::parse_object;
use shoal_api_types::{
    parse_manifests, AnyObject, Object, Resource, Status, StatusDetail, Validate,
};

/// Checks that `text` is one or more YAML (or JSON) documents; returns the 1-based numbers
/// of those that are not empty.
pub fn check_syntax(text: &str) -> Result<Vec<usize>, Status> {
    if text.trim().is_empty() {
        return Err(Status::bad_request(
            "the body is empty: send an object as JSON or YAML",
        ));
    }
    let mut numbers = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(_) => numbers.push(i + 1),
            Err(e) => {
                return Err(Status::bad_request(format!(
                    "document {} is not valid YAML or JSON: {}",
                    i + 1,
                    shoal_api_types::manifest::yaml_error(&e, text)
                )));
            }
        }
    }
    Ok(numbers)
}

/// Parses and validates the one object of kind `S` in a create or replace body. `name` is
/// the name from the URL (replace); an empty `metadata.name` takes it.
pub fn parse_one<S: Resource>(text: &str, name: Option<&str>) -> Result<Object<S>, Status> {
    let count = check_syntax(text)?.len();
    if count != 1 {
        return Err(Status::bad_request(format!(
            "the body must hold exactly one {} object (it holds {count}); POST /apis/shoal/v1/apply takes several",
            S::KIND
        )));
    }
    let what = format!("{} {:?}", S::KIND.to_lowercase(), name.unwrap_or(""));
    let mut obj = parse_object::<S>(text)
        .map_err(|errs| invalid(&what, errs.into_iter().map(Into::into).collect()))?;
    let mut errs = Vec::new();
    if let Some(name) = name {
        if obj.metadata.name.is_empty() {
            obj.metadata.name = name.to_string();
        } else if obj.metadata.name != name {
            errs.push(shoal_api_types::FieldError::new(
                "metadata.name",
                format!(
                    "{:?} does not match the name in the URL ({name:?})",
                    obj.metadata.name
                ),
            ));
        }
    }
    obj.validate(&mut errs);
    if !errs.is_empty() {
        let what = format!("{} {:?}", S::KIND.to_lowercase(), obj.metadata.name);
        return Err(invalid(&what, errs.into_iter().map(Into::into).collect()));
    }
    Ok(obj)
}

fn invalid(what: &str, details: Vec<StatusDetail>) -> Status {
    Status::invalid(format!("{what} is invalid"), details)
}

/// Parses and validates every document of an apply body: each object with its document
/// number.
pub fn parse_apply(text: &str) -> Result<Vec<(usize, AnyObject)>, Status> {
    let numbers = check_syntax(text)?;
    let objects = parse_manifests(text)
        .map_err(|e| Status::invalid("the body is invalid; nothing was written", e.0))?;
    Ok(numbers.into_iter().zip(objects).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::NetworkSpec;

    #[test]
    fn syntax_errors_are_bad_requests_naming_the_document() {
        let err = check_syntax("a: 1\n---\nkind: [unclosed\n").unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message
                .starts_with("document 2 is not valid YAML or JSON"),
            "{}",
            err.message
        );
        assert_eq!(check_syntax("   \n").unwrap_err().code, 400);
        assert_eq!(check_syntax("---\na: 1\n---\n---\nb: 2\n"), Ok(vec![1, 3]));
    }

    #[test]
    fn one_object_bodies_take_the_url_name_and_reject_another() {
        let n = parse_one::<NetworkSpec>(
            r#"{"apiVersion":"shoal/v1","kind":"Network","metadata":{},"spec":{}}"#,
            Some("appnet"),
        )
        .unwrap();
        assert_eq!(n.metadata.name, "appnet");
        let err = parse_one::<NetworkSpec>(
            "apiVersion: shoal/v1\nkind: Network\nmetadata: {name: b}\nspec: {}\n",
            Some("a"),
        )
        .unwrap_err();
        assert_eq!(
            (err.code, err.details[0].field.as_str()),
            (422, "metadata.name")
        );
    }

    #[test]
    fn wrong_content_is_invalid_with_field_paths() {
        let err = parse_one::<NetworkSpec>(
            "apiVersion: shoal/v1\nkind: Network\nmetadata: [a, b]\nspec: {}\n",
            None,
        )
        .unwrap_err();
        assert_eq!((err.code, err.details[0].field.as_str()), (422, "metadata"));
        let err = parse_one::<NetworkSpec>("- a\n- b\n", None).unwrap_err();
        assert_eq!(err.code, 422);
        assert!(err.message.contains("found a list"), "{}", err.message);
        let err = parse_one::<NetworkSpec>(
            "apiVersion: shoal/v1\nkind: Service\nmetadata: {name: a}\nspec: {}\n",
            None,
        )
        .unwrap_err();
        assert_eq!(err.code, 422, "{err:?}");
    }

    #[test]
    fn several_objects_in_a_create_body_are_refused() {
        let two = "apiVersion: shoal/v1\nkind: Network\nmetadata: {name: a}\n---\napiVersion: shoal/v1\nkind: Network\nmetadata: {name: b}\n";
        let err = parse_one::<NetworkSpec>(two, None).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("holds 2"), "{}", err.message);
    }

    /// A small fuzz: random byte edits of a valid manifest never panic and always give
    /// objects, a 400 or a 422.
    #[test]
    fn mangled_manifests_never_panic_and_fail_cleanly() {
        use rand::{Rng, SeedableRng};
        let base = "apiVersion: shoal/v1\nkind: Service\nmetadata: {name: api}\nspec:\n  image: busybox\n  \
                    replicas: 2\n  ports: [{published: 8080, target: 80}]\n---\napiVersion: shoal/v1\nkind: Network\n\
                    metadata: {name: appnet}\nspec: {subnet: 10.1.0.0/24}\n";
        let alphabet = b"{}[]:,-# \n\t'\"&*!|>%@`0123456789abcxyzAZ";
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..3000 {
            let mut bytes = base.as_bytes().to_vec();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..bytes.len());
                let b = alphabet[rng.random_range(0..alphabet.len())];
                match rng.random_range(0..3) {
                    0 => bytes[at] = b,
                    1 => bytes.insert(at, b),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            match parse_apply(&text) {
                Ok(objs) => assert!(!objs.is_empty()),
                Err(status) => {
                    assert!(matches!(status.code, 400 | 422), "{text:?} gave {status:?}")
                }
            }
        }
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused_quickly() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = (b'a' + i - 1) as char;
            let cur = (b'a' + i) as char;
            bomb.push_str(&format!("{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        let start = std::time::Instant::now();
        assert_eq!(parse_apply(&bomb).unwrap_err().code, 400);
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse_apply(&deep).unwrap_err().code, 400);
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
    }
}
