//! Owns running `nft` and the pieces of its JSON input that every table of ours shares; the
//! tables themselves are built by their owners: the VIP table of a task namespace
//! ([`crate::lb`]), the routing mesh of the node ([`crate::mesh`]) and the egress table
//! ([`super::egress`]). See docs/architecture.md ("Node agent").
//!
//! - **One runner**: [`apply`] feeds a document to `nft -j -f -` (one transaction, one
//!   netlink batch) and [`list_table`] reads a table back, both from a short-lived OS thread
//!   that has entered the target namespace ([`super::netns::run_in`]), so the `nft` child
//!   inherits it and tokio workers never change namespace. We spawn `nft` ourselves rather than
//!   through `nftables::helper`, which drops nft's stderr, the only place nft says what it
//!   refused.
//! - **Documents are `serde_json` values** in `nft -j` input form: the `nftables` crate's
//!   schema types (0.6) cannot express a verdict map.
//! - **Atomic replacement**: [`Table::replace`] starts a document with add + delete + add of
//!   the table, so a packet sees the old table or the new one, never a half-built one.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use shoal_api_types::service::Protocol;

pub use super::error::NftError;

/// One of our tables (family `ip`, or `inet` for IPv4 and IPv6 at once), as the JSON
/// objects that make it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    family: &'static str,
    name: &'static str,
}

impl Table {
    /// The `ip` table `name`.
    pub const fn ip(name: &'static str) -> Self {
        Table { family: "ip", name }
    }

    /// The `inet` table `name`.
    pub const fn inet(name: &'static str) -> Self {
        Table {
            family: "inet",
            name,
        }
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its family (`ip`, `inet`).
    pub fn family(&self) -> &'static str {
        self.family
    }

    /// `{"family": …, "name": …}`.
    pub fn obj(&self) -> Value {
        json!({"family": self.family, "name": self.name})
    }

    /// The start of a document that replaces the table atomically: `add` first so that
    /// `delete` succeeds whether or not the table exists, then the table again, empty.
    pub fn replace(&self) -> Vec<Value> {
        vec![
            json!({"add": {"table": self.obj()}}),
            json!({"delete": {"table": self.obj()}}),
            json!({"add": {"table": self.obj()}}),
        ]
    }

    /// The document that removes the table (whether or not it exists).
    pub fn delete_document(&self) -> Value {
        document(vec![
            json!({"add": {"table": self.obj()}}),
            json!({"delete": {"table": self.obj()}}),
        ])
    }

    /// A regular chain.
    pub fn chain(&self, name: &str) -> Value {
        json!({"add": {"chain": {"family": self.family, "table": self.name, "name": name}}})
    }

    /// A base chain of `kind` (`nat`, `filter`) on `hook` at `prio`, policy accept.
    pub fn base_chain(&self, name: &str, kind: &str, hook: &str, prio: i32) -> Value {
        json!({"add": {"chain": {"family": self.family, "table": self.name, "name": name,
            "type": kind, "hook": hook, "prio": prio, "policy": "accept"}}})
    }

    /// A rule appended to `chain`.
    pub fn rule(&self, chain: &str, expr: Value) -> Value {
        json!({"add": {"rule": {"family": self.family, "table": self.name, "chain": chain, "expr": expr}}})
    }

    /// A map keyed by the concatenation `key` to `data`, with `elems` (none: no `elem`).
    pub fn map(&self, name: &str, key: &[&str], data: &str, elems: Vec<Value>) -> Value {
        let mut map = json!({"family": self.family, "table": self.name, "name": name, "type": key, "map": data});
        if !elems.is_empty() {
            map["elem"] = Value::Array(elems);
        }
        json!({"add": {"map": map}})
    }
}

/// `{"nftables": objs}`: the document `nft -j -f -` reads.
pub fn document(objs: Vec<Value>) -> Value {
    json!({ "nftables": objs })
}

/// The protocol's name in nft.
pub fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// `payload protocol field` (`ip daddr`, `th dport`).
pub fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

/// `meta key`.
pub fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

/// `ct state new` (in a nat chain it is redundant, but a `ct` expression is what makes the
/// kernel enable conntrack in a namespace).
pub fn ct_new() -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}})
}

/// `goto target`.
pub fn goto(target: &str) -> Value {
    json!({"goto": {"target": target}})
}

/// `left == right`.
pub fn eq(left: Value, right: impl Into<Value>) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right.into()}})
}

/// The two rules that refuse a connection: TCP reset, ICMP port unreachable otherwise.
pub fn refuse_rules(table: &Table, chain: &str) -> [Value; 2] {
    [
        table.rule(
            chain,
            json!([eq(meta("l4proto"), "tcp"), {"reject": {"type": "tcp reset"}}]),
        ),
        table.rule(
            chain,
            json!([{"reject": {"type": "icmp", "expr": "port-unreachable"}}]),
        ),
    ]
}

/// Run `f` on a fresh OS thread that has entered the network namespace at `netns` (our own
/// namespace when `None`); processes it spawns inherit that namespace.
async fn in_netns<R: Send + 'static>(
    netns: Option<&Path>,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, NftError> {
    super::netns::run_in(netns, f)
        .await
        .map_err(|e| NftError::Netns {
            path: netns.map(Path::to_owned).unwrap_or_default(),
            reason: e.to_string(),
        })
}

fn ns_label(netns: Option<&Path>) -> String {
    netns
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "-".into())
}

/// Run nft with `args`, feeding `stdin`; returns stdout. Blocking: call on a netns thread.
fn run(
    args: &[&str],
    stdin: Option<String>,
    what: &'static str,
    netns: &str,
) -> Result<String, NftError> {
    let spawn_err = |source| NftError::Spawn {
        what,
        netns: netns.to_owned(),
        source,
    };
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // nft reads its whole input before it writes anything, so this cannot deadlock.
        pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(NftError::Refused {
            what,
            netns: netns.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Apply an nft JSON document inside the namespace at `netns` (our own when `None`), as one
/// transaction.
pub async fn apply(netns: Option<&Path>, doc: &Value) -> Result<(), NftError> {
    let json = doc.to_string();
    let label = ns_label(netns);
    in_netns(netns, move || {
        run(&["-j", "-f", "-"], Some(json), "apply ruleset", &label).map(drop)
    })
    .await?
}

/// Apply an nft script in nft's own syntax (`nft -f -` input) inside the namespace at
/// `netns` (our own when `None`), as one transaction. For large tables: nft parses its own
/// syntax faster than JSON, and the script can be written straight into a string.
pub async fn apply_script(
    netns: Option<&Path>,
    script: String,
    what: &'static str,
) -> Result<(), NftError> {
    let label = ns_label(netns);
    in_netns(netns, move || {
        run(&["-f", "-"], Some(script), what, &label).map(drop)
    })
    .await?
}

/// The raw `nft -j list table <family> <table>` output in the namespace at `netns`, or
/// `None` when the table does not exist.
pub async fn list_table(netns: Option<&Path>, table: Table) -> Result<Option<String>, NftError> {
    let label = ns_label(netns);
    let r = in_netns(netns, move || {
        run(
            &["-j", "list", "table", table.family(), table.name()],
            None,
            "list table",
            &label,
        )
    })
    .await?;
    match r {
        Ok(out) => Ok(Some(out)),
        Err(NftError::Refused { stderr, .. }) if stderr.contains("No such file or directory") => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_adds_before_deleting_so_a_missing_table_is_fine() {
        let t = Table::ip("shoal_x");
        let ops: Vec<String> = t
            .replace()
            .iter()
            .map(|o| o.as_object().unwrap().keys().next().unwrap().clone())
            .collect();
        assert_eq!(ops, ["add", "delete", "add"]);
        let text = t.delete_document().to_string();
        assert!(
            text.starts_with(r#"{"nftables":[{"add":{"table""#),
            "{text}"
        );
    }

    #[test]
    fn temporary_errors_are_the_ones_a_retry_can_fix() {
        let refused = |stderr: &str| NftError::Refused {
            what: "apply ruleset",
            netns: "-".into(),
            stderr: stderr.into(),
        };
        assert!(refused("Error: Could not process rule: Resource busy").is_temporary());
        assert!(!refused("Error: syntax error").is_temporary());
        assert!(!NftError::Netns {
            path: "/run/netns/x".into(),
            reason: "gone".into()
        }
        .is_temporary());
    }
}
