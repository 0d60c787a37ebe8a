//! Property tests of the manifest parser and every kind's validation
//! (`parse_manifests`, `parse_object` + `Validate`): well-formed objects are accepted,
//! mutated and garbage input never panics and is rejected with a located error.
//!
//! "Located" means, for a [`StatusDetail`] of `parse_manifests`: it carries its document
//! number, and either names a field (`field` is not empty), or the document is not an
//! object at all (the message says what was found instead), or the text is not YAML (the
//! message carries `line N column M`). The one detail without a document is "the body
//! holds no object". For a [`FieldError`] of `parse_object` or validation: `field` is not
//! empty, except for text that is not YAML (`line N column M`), a body that is not a
//! mapping and a body of several documents (the API answers those 400 before parsing). Seeds are fixed (see `shoal_testkit::gen::config`).

use proptest::prelude::*;
use shoal_api_types::manifest::parse_object;
use shoal_api_types::validation::{FieldError, Validate};
use shoal_api_types::{
    parse_manifests, ConfigSpec, EndpointsSpec, NetworkSpec, NodeSpec, Resource, SecretSpec,
    ServiceSpec, StatusDetail, TaskSpec,
};
use shoal_testkit::gen;

fn has_line_column(message: &str) -> bool {
    message.contains("line ") && message.contains("column ")
}

/// Whether a manifest error detail says where the problem is (see the module docs).
fn located(d: &StatusDetail) -> bool {
    match d.document {
        None => d.message == "the body holds no object",
        Some(_) => {
            !d.field.is_empty()
                || d.message.starts_with("expected an object")
                || (d.message.starts_with("not valid YAML") && has_line_column(&d.message))
        }
    }
}

/// Whether an error of `parse_object` or validation names its field (see the module docs).
fn names_field(e: &FieldError) -> bool {
    !e.field.is_empty()
        || (e.message.starts_with("not valid JSON or YAML") && has_line_column(&e.message))
        || e.message.starts_with("expected a ")
        || e.message.contains("more than one document")
}

/// Parses `text` as manifests and checks the rejection, if any, is located throughout.
fn check_manifests(text: &str) -> Result<usize, TestCaseError> {
    match parse_manifests(text) {
        Ok(objs) => Ok(objs.len()),
        Err(e) => {
            prop_assert!(!e.0.is_empty(), "a rejection without any detail");
            for d in &e.0 {
                prop_assert!(located(d), "detail without a place: {d:?}\nbody:\n{text}");
            }
            Err(TestCaseError::reject("rejected"))
        }
    }
}

/// `parse_object::<S>` then validation: never panics, every error names its field.
fn check_object<S: Resource>(text: &str) -> Result<bool, TestCaseError> {
    let errs = match parse_object::<S>(text) {
        Ok(obj) => match obj.validated() {
            Ok(()) => return Ok(true),
            Err(errs) => errs,
        },
        Err(errs) => errs,
    };
    prop_assert!(!errs.is_empty());
    for e in &errs {
        prop_assert!(
            names_field(e),
            "{} error without a field: {e:?}\nbody:\n{text}",
            S::KIND
        );
    }
    Ok(false)
}

/// Every kind's parse and validation over one body.
fn check_every_kind(text: &str) -> Result<(), TestCaseError> {
    check_object::<NetworkSpec>(text)?;
    check_object::<ServiceSpec>(text)?;
    check_object::<SecretSpec>(text)?;
    check_object::<ConfigSpec>(text)?;
    check_object::<NodeSpec>(text)?;
    check_object::<TaskSpec>(text)?;
    check_object::<EndpointsSpec>(text)?;
    Ok(())
}

proptest! {
    #![proptest_config(gen::config(256))]

    #[test]
    fn valid_objects_are_accepted_alone_and_in_batches(
        batch in gen::valid_batch(),
        one in gen::valid_object(),
        json in any::<bool>(),
    ) {
        let text = gen::body(&batch, false);
        let objs = parse_manifests(&text);
        prop_assert!(objs.is_ok(), "{:?}\n{text}", objs.err());
        prop_assert_eq!(objs.unwrap().len(), batch.len());
        let text = gen::body(std::slice::from_ref(&one), json);
        prop_assert!(parse_manifests(&text).is_ok(), "{:?}\n{text}", parse_manifests(&text).err());
        let accepted = match one["kind"].as_str() {
            Some("Network") => check_object::<NetworkSpec>(&text)?,
            Some("Service") => check_object::<ServiceSpec>(&text)?,
            Some("Secret") => check_object::<SecretSpec>(&text)?,
            _ => check_object::<ConfigSpec>(&text)?,
        };
        prop_assert!(accepted, "{text}");
    }

    #[test]
    fn valid_nodes_are_accepted(node in gen::name().prop_flat_map(gen::node_with), json in any::<bool>()) {
        let text = gen::body(&[node], json);
        prop_assert!(check_object::<NodeSpec>(&text)?, "{text}");
    }

    #[test]
    fn mutated_objects_never_panic_and_errors_name_a_field(
        (doc, _place) in gen::valid_object().prop_flat_map(gen::mutated),
        json in any::<bool>(),
    ) {
        let text = gen::body(std::slice::from_ref(&doc), json);
        let _ = check_manifests(&text).or_else(ignore_reject)?;
        check_every_kind(&text)?;
    }

    #[test]
    fn a_batch_with_one_mutated_document_names_that_document(
        (batch, bad, (doc, _place)) in gen::valid_batch().prop_flat_map(|b| {
            let n = b.len();
            (Just(b.clone()), 0..n).prop_flat_map(|(b, i)| {
                let d = b[i].clone();
                (Just(b), Just(i), gen::mutated(d))
            })
        }),
    ) {
        let mut docs = batch.clone();
        docs[bad] = doc;
        let text = gen::body(&docs, false);
        if let Err(e) = parse_manifests(&text) {
            for d in &e.0 {
                prop_assert!(located(d), "{d:?}\n{text}");
                // Only the mutated document is wrong (a null document is skipped, and a
                // syntax error stops the stream at its own document).
                prop_assert_eq!(d.document, Some(bad + 1), "{:?}\n{}", d, text);
            }
        }
    }

    #[test]
    fn garbage_text_never_panics_and_is_located(text in gen::garbage_text()) {
        let _ = check_manifests(&text).or_else(ignore_reject)?;
        check_every_kind(&text)?;
    }

    #[test]
    fn weird_values_anywhere_in_a_document_never_panic(v in gen::weird_value(), json in any::<bool>()) {
        let text = gen::body(&[v], json);
        let _ = check_manifests(&text).or_else(ignore_reject)?;
        check_every_kind(&text)?;
    }
}

fn ignore_reject(e: TestCaseError) -> Result<usize, TestCaseError> {
    match e {
        TestCaseError::Reject(_) => Ok(0),
        fail => Err(fail),
    }
}

/// The fraction of mutated documents that are still accepted is not the point; but the
/// valid generator must not be trivially invalid: every valid object is accepted (above),
/// and this checks that mutations do get rejected often enough to exercise the errors.
#[test]
fn mutations_are_mostly_rejected() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::new(gen::config(1));
    let strategy = gen::valid_object().prop_flat_map(gen::mutated);
    let (mut accepted, total) = (0, 200);
    for _ in 0..total {
        let (doc, _) = strategy.new_tree(&mut runner).unwrap().current();
        if parse_manifests(&gen::body(&[doc], false)).is_ok() {
            accepted += 1;
        }
    }
    assert!(
        accepted < total / 2,
        "{accepted} of {total} mutated documents accepted"
    );
}
