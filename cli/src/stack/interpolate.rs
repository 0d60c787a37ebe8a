//! Compose's variable interpolation, applied to every string value of a parsed compose
//! file before it is read as compose types (keys are left alone, as compose does).
//!
//! Syntax, as the compose specification defines it: `$VAR` and `${VAR}`; `${VAR:-default}`
//! (unset or empty) and `${VAR-default}` (unset); `${VAR:?message}` and `${VAR?message}`
//! fail the deploy; `${VAR:+other}` and `${VAR+other}` substitute `other` when set; `$$` is
//! a literal `$`. Defaults and messages may themselves hold `${...}`. An unset variable
//! without a default becomes the empty string and is reported (compose warns the same).
//!
//! No crate fits: `shellexpand` knows neither `?` nor `$$` nor nested defaults, `subst`
//! spells defaults `${VAR:default}`. This is the one hand-written parser here; it is small
//! and its tests pin each form.

use std::collections::BTreeSet;

/// What interpolation found besides the result.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unset {
    /// Variables used without a value or default, each once (they became "").
    pub names: BTreeSet<String>,
}

/// Interpolates one string. `lookup` gives a variable's value (`None`: unset). The error
/// says what was wrong (a `${VAR:?message}` of an unset variable, or bad syntax); the caller
/// adds the key path.
pub fn interpolate(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Unset,
) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = closing_brace(body).ok_or_else(|| {
                format!("invalid interpolation in {s:?}: a ${{ has no closing }}")
            })?;
            out.push_str(&braced(&body[..end], s, lookup, unset)?);
            rest = &body[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                return Err(format!(
                    "invalid interpolation in {s:?}: $ must start $VAR or ${{VAR}} (write $$ for a literal $)"
                ));
            }
            let name = &after[..len];
            out.push_str(&value_or_blank(name, lookup, unset));
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Length of the variable name at the start of `s` (`[A-Za-z_][A-Za-z0-9_]*`).
fn name_len(s: &str) -> usize {
    let mut len = 0;
    for (i, c) in s.char_indices() {
        let ok = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
        if !ok {
            break;
        }
        len = i + c.len_utf8();
    }
    len
}

/// Index of the `}` closing a `${` whose body starts `body`, counting nested `${`.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn value_or_blank(
    name: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Unset,
) -> String {
    lookup(name).unwrap_or_else(|| {
        unset.names.insert(name.to_string());
        String::new()
    })
}

/// The inside of `${...}`.
fn braced(
    body: &str,
    whole: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Unset,
) -> Result<String, String> {
    let len = name_len(body);
    let name = &body[..len];
    if len == 0 {
        return Err(format!(
            "invalid interpolation in {whole:?}: ${{{body}}} does not start with a variable name"
        ));
    }
    let op = &body[len..];
    if op.is_empty() {
        return Ok(value_or_blank(name, lookup, unset));
    }
    let value = lookup(name);
    // With ':' an empty value counts as unset.
    let (colon, op) = match op.strip_prefix(':') {
        Some(op) => (true, op),
        None => (false, op),
    };
    let set = match &value {
        Some(v) => !(colon && v.is_empty()),
        None => false,
    };
    let mut chars = op.chars();
    let kind = chars.next();
    let word = chars.as_str();
    match kind {
        Some('-') if set => Ok(value.unwrap_or_default()),
        Some('-') => interpolate(word, lookup, unset),
        Some('+') if set => interpolate(word, lookup, unset),
        Some('+') => Ok(String::new()),
        Some('?') if set => Ok(value.unwrap_or_default()),
        Some('?') => {
            let message = interpolate(word, lookup, unset)?;
            Err(if message.is_empty() {
                format!("required variable {name} is missing a value")
            } else {
                format!("required variable {name} is missing a value: {message}")
            })
        }
        _ => Err(format!(
            "invalid interpolation in {whole:?}: ${{{body}}}: use ${{VAR}}, ${{VAR:-default}}, ${{VAR-default}}, ${{VAR:?message}} or ${{VAR:+other}}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TAG" => Some("1.2".into()),
            "EMPTY" => Some(String::new()),
            "HOST" => Some("db".into()),
            _ => None,
        }
    }

    fn run(s: &str) -> Result<String, String> {
        interpolate(s, &env, &mut Unset::default())
    }

    #[test]
    fn plain_and_braced_variables_are_replaced() {
        assert_eq!(run("busybox:$TAG").unwrap(), "busybox:1.2");
        assert_eq!(run("busybox:${TAG}-x").unwrap(), "busybox:1.2-x");
        assert_eq!(run("$HOST:$TAG").unwrap(), "db:1.2");
        assert_eq!(run("no dollars").unwrap(), "no dollars");
    }

    #[test]
    fn defaults_distinguish_unset_from_empty() {
        assert_eq!(run("${NOPE:-d}").unwrap(), "d");
        assert_eq!(run("${NOPE-d}").unwrap(), "d");
        assert_eq!(run("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(run("${EMPTY-d}").unwrap(), "");
        assert_eq!(run("${TAG:-d}").unwrap(), "1.2");
        assert_eq!(run("${NOPE:-${HOST}:${TAG}}").unwrap(), "db:1.2");
        assert_eq!(run("${NOPE:-}").unwrap(), "");
    }

    #[test]
    fn required_variables_fail_with_their_message() {
        assert_eq!(
            run("${NOPE:?set NOPE to the password}").unwrap_err(),
            "required variable NOPE is missing a value: set NOPE to the password"
        );
        assert_eq!(
            run("${EMPTY:?}").unwrap_err(),
            "required variable EMPTY is missing a value"
        );
        assert_eq!(run("${EMPTY?x}").unwrap(), "");
        assert_eq!(run("${TAG:?x}").unwrap(), "1.2");
    }

    #[test]
    fn alternatives_apply_only_when_set() {
        assert_eq!(run("${TAG:+yes}").unwrap(), "yes");
        assert_eq!(run("${NOPE:+yes}").unwrap(), "");
        assert_eq!(run("${EMPTY:+yes}").unwrap(), "");
        assert_eq!(run("${EMPTY+yes}").unwrap(), "yes");
    }

    #[test]
    fn double_dollars_are_literal_and_unset_variables_are_reported() {
        assert_eq!(run("echo $$HOME $${TAG}").unwrap(), "echo $HOME ${TAG}");
        let mut unset = Unset::default();
        assert_eq!(
            interpolate("a${NOPE}b$NOPE2", &env, &mut unset).unwrap(),
            "ab"
        );
        assert_eq!(
            unset.names.into_iter().collect::<Vec<_>>(),
            ["NOPE", "NOPE2"]
        );
    }

    #[test]
    fn bad_syntax_is_an_error() {
        for bad in ["a $ b", "${", "${TAG", "${1X}", "${TAG!x}", "x$"] {
            assert!(run(bad).is_err(), "{bad}");
        }
    }
}
