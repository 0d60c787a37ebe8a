//! Validation results with field paths, and checks shared by several kinds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One problem with one field, e.g. `spec.ports[0].published: must be 1-65535`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FieldError {
    /// Path of the field in the object, as written in YAML (`spec.ports[0].published`).
    pub field: String,
    /// What is wrong and, where it helps, what is allowed.
    pub message: String,
}

impl FieldError {
    /// A problem at `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Something that can check itself and report every problem it finds.
pub trait Validate {
    /// Appends every problem to `errs`; appends nothing when valid.
    fn validate(&self, errs: &mut Vec<FieldError>);

    /// All problems, or `Ok(())`.
    fn validated(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        self.validate(&mut errs);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

/// Checks a DNS-1123 label: 1-63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn validate_dns_label(field: &str, value: &str, errs: &mut Vec<FieldError>) {
    if let Err(msg) = check_dns_label(value) {
        errs.push(FieldError::new(field, msg));
    }
}

/// The reason `value` is not a DNS-1123 label, if it is not one.
pub fn check_dns_label(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("is required".into());
    }
    if value.len() > 63 {
        return Err(format!(
            "must be at most 63 characters (has {})",
            value.len()
        ));
    }
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !ok_chars || !ends_ok(value.as_bytes()[0]) || !ends_ok(value.as_bytes()[value.len() - 1]) {
        return Err(format!(
            "{value:?} is not a DNS-1123 label: use lowercase letters, digits and '-', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// The reason `value` is not an object name, if it is not one. Networks, Services, Secrets
/// and Configs take DNS-1123 labels that may also hold `_` inside, because stacks name
/// their objects `<stack>_<name>` as Swarm does (`shop_web`); the first and last characters
/// are still a letter or digit.
pub fn check_object_name(value: &str) -> Result<(), String> {
    let dashed = value.replace('_', "-");
    check_dns_label(&dashed).map_err(|_| {
        if value.len() > 63 {
            format!("must be at most 63 characters (has {})", value.len())
        } else if value.is_empty() {
            "is required".into()
        } else {
            format!(
                "{value:?} is not a valid name: use lowercase letters, digits, '-' and '_', \
                 starting and ending with a letter or digit"
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_also_take_inner_underscores() {
        for ok in ["shop_web", "a", "x_1-y"] {
            assert!(check_object_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "_a", "a_", "Shop_web", "a.b", &"a".repeat(64)] {
            assert!(check_object_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns_labels_accept_lowercase_digits_and_inner_dashes() {
        for ok in ["a", "api", "app-overlay", "x1", "1x", &"a".repeat(63)] {
            assert!(check_dns_label(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn dns_labels_reject_capitals_dots_long_and_edge_dashes() {
        for bad in ["", "Api", "a.b", "-a", "a-", "a_b", &"a".repeat(64)] {
            assert!(check_dns_label(bad).is_err(), "{bad}");
        }
    }
}
