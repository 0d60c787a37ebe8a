//! Placement constraints: `node.name==x`, `node.name!=x`, `node.labels.k==v`,
//! `node.labels.k!=v` (Swarm's syntax, the subset that needs no engine labels).

use std::collections::BTreeMap;
use std::str::FromStr;

/// What a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstraintTarget {
    /// The node's name.
    NodeName,
    /// One label of the node.
    NodeLabel(String),
}

/// One parsed constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// What is compared.
    pub target: ConstraintTarget,
    /// `==` (true) or `!=` (false).
    pub equal: bool,
    /// The value compared with.
    pub value: String,
}

impl FromStr for Constraint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (lhs, rhs, equal) = if let Some((l, r)) = s.split_once("==") {
            (l, r, true)
        } else if let Some((l, r)) = s.split_once("!=") {
            (l, r, false)
        } else {
            return Err(format!("{s:?} has no == or != (e.g. node.labels.zone==a)"));
        };
        let (lhs, value) = (lhs.trim(), rhs.trim());
        if value.is_empty() {
            return Err(format!("{s:?} compares with an empty value"));
        }
        let target = match lhs {
            "node.name" | "node.hostname" => ConstraintTarget::NodeName,
            _ => match lhs.strip_prefix("node.labels.") {
                Some(key) if !key.is_empty() => ConstraintTarget::NodeLabel(key.to_string()),
                _ => {
                    return Err(format!(
                        "{lhs:?} is not a constraint attribute: use node.name or node.labels.<key>"
                    ))
                }
            },
        };
        Ok(Constraint {
            target,
            equal,
            value: value.to_string(),
        })
    }
}

impl Constraint {
    /// Whether a node with this name and these labels satisfies the constraint.
    pub fn matches(&self, node_name: &str, labels: &BTreeMap<String, String>) -> bool {
        let actual = match &self.target {
            ConstraintTarget::NodeName => Some(node_name),
            ConstraintTarget::NodeLabel(k) => labels.get(k).map(String::as_str),
        };
        (actual == Some(self.value.as_str())) == self.equal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_match_names_and_labels() {
        let labels = BTreeMap::from([("zone".to_string(), "a".to_string())]);
        let c: Constraint = "node.labels.zone==a".parse().unwrap();
        assert!(c.matches("n1", &labels));
        assert!(!c.matches("n1", &BTreeMap::new()));
        let c: Constraint = "node.labels.zone != a".parse().unwrap();
        assert!(!c.matches("n1", &labels));
        assert!(c.matches("n1", &BTreeMap::new()));
        let c: Constraint = "node.name!=n1".parse().unwrap();
        assert!(!c.matches("n1", &labels));
        assert!(c.matches("n2", &labels));
    }

    #[test]
    fn constraints_reject_unknown_attributes_and_operators() {
        assert!("node.colour==red".parse::<Constraint>().is_err());
        assert!("node.name=n1".parse::<Constraint>().is_err());
        assert!("node.name==".parse::<Constraint>().is_err());
    }
}
