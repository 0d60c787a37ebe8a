//! Owns the names of the labels Shoal puts on the containers it creates (one form,
//! `shoal.io/…`), and reading them back. The agent re-derives what runs after a restart from
//! these labels (see docs/architecture.md, "Node agent"), so a rename must keep reading the
//! old name: containers created by an agent before the rename carry `io.shoal.…` labels.

use std::collections::BTreeMap;

use shoal_api_types::labels;

/// On every container Shoal creates; `list()` returns only containers with it.
pub const LABEL_MANAGED: &str = "shoal.io/managed";
/// The image reference as the task gave it.
pub const LABEL_IMAGE: &str = "shoal.io/image";
/// The task id (the name Shoal uses for a task everywhere: [`labels::TASK`]).
pub const LABEL_TASK: &str = labels::TASK;
/// The task's service ([`labels::SERVICE`]).
pub const LABEL_SERVICE: &str = labels::SERVICE;
/// The node the container was started on ([`labels::NODE`]).
pub const LABEL_NODE: &str = labels::NODE;
/// The task's health check (JSON), so checks of running tasks resume after an agent restart
/// without the task spec.
pub const LABEL_HEALTHCHECK: &str = "shoal.io/healthcheck";

/// The named volumes the container mounts, comma-separated (a volume in use cannot be
/// removed; see `crate::taskfiles`).
pub const LABEL_VOLUMES: &str = "shoal.io/volumes";

/// The name an agent before the `shoal.io/…` labels gave `label`.
// Read both for now: containers made by an older agent carry only the old names, and the
// agent finds its tasks (and their health checks) again through them after a restart. Drop
// this once no node runs containers from before the rename.
fn legacy(label: &str) -> Option<&'static str> {
    Some(match label {
        LABEL_MANAGED => "io.shoal.managed",
        LABEL_IMAGE => "io.shoal.image",
        LABEL_TASK => "io.shoal.task",
        LABEL_SERVICE => "io.shoal.service",
        LABEL_NODE => "io.shoal.node",
        LABEL_HEALTHCHECK => "io.shoal.healthcheck",
        _ => return None,
    })
}

/// The value of `label` on a container: under its name, or under the name an older agent
/// used.
pub fn get<'a>(labels: &'a BTreeMap<String, String>, label: &str) -> Option<&'a String> {
    lookup(|k| labels.get(k), label)
}

/// [`get`] through any map's lookup.
pub fn lookup<'a>(find: impl Fn(&str) -> Option<&'a String>, label: &str) -> Option<&'a String> {
    find(label).or_else(|| legacy(label).and_then(find))
}

/// Whether a container carries [`LABEL_MANAGED`] (under either name) according to `find`
/// (its label map's lookup): it is ours.
pub fn is_managed<'a>(find: impl Fn(&str) -> Option<&'a String>) -> bool {
    lookup(find, LABEL_MANAGED).is_some_and(|v| v == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_of_containers_made_by_an_older_agent_are_still_read() {
        let old = BTreeMap::from([
            ("io.shoal.managed".to_string(), "true".to_string()),
            ("io.shoal.task".to_string(), "t1".to_string()),
        ]);
        assert!(is_managed(|k| old.get(k)));
        assert_eq!(get(&old, LABEL_TASK).map(String::as_str), Some("t1"));
        let new = BTreeMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_TASK.to_string(), "t2".to_string()),
            ("io.shoal.task".to_string(), "stale".to_string()),
        ]);
        assert_eq!(get(&new, LABEL_TASK).map(String::as_str), Some("t2"));
        assert!(!is_managed(|_| None));
    }
}
