//! The desired side: this node's tasks (`tasks/<node>/`), kept by the store's reflector like
//! the cluster-wide caches ([`super::cluster::watch_objects`]): list at revision R, watch
//! from R+1, resume after errors, list again on compaction. The cache is published only
//! once a list is complete (`None` before the first), so the converge loop
//! never mistakes "not listed yet" for "nothing wanted" and removes running tasks.

use shoal_api_types::TaskSpec;

/// This node's tasks by id; `None` until the first list completed.
pub type DesiredTasks = super::cluster::Cache<TaskSpec>;

/// Keeps a [`DesiredTasks`] sender equal to the tasks below a prefix until shutdown.
pub(crate) use super::cluster::watch_objects as watch_tasks;
