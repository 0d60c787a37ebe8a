//! [`TaskRecord`]: how the cache holds a task. A task copies most of its service's spec
//! (image, command, env, ports, health check, resources, …): every task made from one
//! version of a service carries the same copy. The record keeps what differs per task
//! (name, uid, revision, creation time, slot, node, desired state, addresses, pending
//! reason, status) in its own fields and shares the rest, with the labels, as one
//! [`TaskTemplate`] per distinct value, interned by the cache ([`Templates`]).
//!
//! Invariants:
//! - Lossless: [`TaskRecord::to_task`] gives back the decoded task exactly (with
//!   `resourceVersion` the key's mod_revision), so writers that change a task (the
//!   scheduler's move, a stop, an orphaning) write every field it had.
//! - A template holds no per-task value: its spec has no slot, node, desired state,
//!   pending reason or addresses (each attachment keeps only its network and aliases, what
//!   [`shoal_api_types::ServiceSpec::outdates`] compares), so [`TaskRecord::runs_with`] is a
//!   spec that compares like the task's own.
//! - Interning never changes a value: two records share a template only if the templates
//!   are equal.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use shoal_api_types::keys::Keys;
use shoal_api_types::service::{HealthCheck, PortConfig};
use shoal_api_types::task::UNASSIGNED;
use shoal_api_types::{
    labels, Object, ObjectMeta, Resources, Task, TaskAttachment, TaskSpec, TaskState, TaskStatus,
};

/// What tasks made from one version of a service share: the labels and the spec without
/// its per-task fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskTemplate {
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// The spec with `slot`, `node`, `desiredState` and `pendingReason` at their defaults
    /// and each attachment's `address` and `mac` empty.
    pub spec: TaskSpec,
}

impl TaskTemplate {
    fn key(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.labels.hash(&mut h);
        let s = &self.spec;
        (&s.service, &s.image, s.service_generation, s.force_update).hash(&mut h);
        (&s.command, &s.args, &s.env).hash(&mut h);
        h.finish()
    }
}

/// The interned templates of a cache (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Templates {
    by_key: HashMap<u64, Vec<Arc<TaskTemplate>>>,
    len: usize,
    /// Prune unused templates once there are this many.
    prune_at: usize,
}

impl Templates {
    /// The shared copy of `template`.
    pub fn intern(&mut self, template: TaskTemplate) -> Arc<TaskTemplate> {
        let key = template.key();
        let bucket = self.by_key.entry(key).or_default();
        if let Some(t) = bucket.iter().find(|t| ***t == template) {
            return t.clone();
        }
        let t = Arc::new(template);
        bucket.push(t.clone());
        self.len += 1;
        if self.len >= self.prune_at {
            self.prune();
        }
        t
    }

    /// Forgets templates no record uses any more.
    fn prune(&mut self) {
        self.by_key.retain(|_, bucket| {
            bucket.retain(|t| Arc::strong_count(t) > 1);
            !bucket.is_empty()
        });
        self.len = self.by_key.values().map(Vec::len).sum();
        self.prune_at = (self.len * 2).max(64);
    }

    /// How many distinct templates are held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A task's metadata, as the cache holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    /// The task id.
    pub name: String,
    /// The uid.
    pub uid: String,
    /// `metadata.generation`.
    pub generation: i64,
    /// The key's mod_revision (`resourceVersion`); 0 when unknown.
    pub revision: i64,
    /// When the task was created.
    pub creation_timestamp: Option<DateTime<Utc>>,
}

impl RecordMeta {
    /// The revision, as [`ObjectMeta::revision`] gives it.
    pub fn revision(&self) -> Option<i64> {
        (self.revision != 0).then_some(self.revision)
    }
}

/// A task's per-task spec fields, and the shared rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSpec {
    /// The service the task belongs to.
    pub service: String,
    /// The slot (replicated mode).
    pub slot: Option<u64>,
    /// The node, once assigned.
    pub node: Option<String>,
    /// `running` or `shutdown`.
    pub desired_state: TaskState,
    /// One address per network.
    pub attachments: Vec<TaskAttachment>,
    /// Why the task is still pending, when it is.
    pub pending_reason: String,
    /// Everything else, shared.
    pub template: Arc<TaskTemplate>,
}

impl RecordSpec {
    /// `api.1` (replicated) or `api.<node>` (global), as [`TaskSpec::display_name`].
    pub fn display_name(&self) -> String {
        match (self.slot, &self.node) {
            (Some(slot), _) => format!("{}.{}", self.service, slot),
            (None, Some(node)) => format!("{}.{}", self.service, node),
            (None, None) => self.service.clone(),
        }
    }

    /// The health check.
    pub fn healthcheck(&self) -> Option<&HealthCheck> {
        self.template.spec.healthcheck.as_ref()
    }

    /// The resources.
    pub fn resources(&self) -> &Resources {
        &self.template.spec.resources
    }

    /// The published ports.
    pub fn ports(&self) -> &[PortConfig] {
        &self.template.spec.ports
    }
}

/// One task as the cache holds it (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// Name, uid, revision, creation time.
    pub metadata: RecordMeta,
    /// The spec.
    pub spec: RecordSpec,
    /// What the agent reports.
    pub status: TaskStatus,
}

impl TaskRecord {
    /// The record of `task`, its template interned in `templates`.
    pub fn new(task: Task, templates: &mut Templates) -> TaskRecord {
        let (record, template) = split(task);
        TaskRecord {
            spec: RecordSpec {
                template: templates.intern(template),
                ..record.spec
            },
            ..record
        }
    }

    /// The task's name (its id).
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The whole task, as it was decoded.
    pub fn to_task(&self) -> Task {
        let t = &self.spec.template;
        let mut spec = t.spec.clone();
        spec.slot = self.spec.slot;
        spec.node = self.spec.node.clone();
        spec.desired_state = self.spec.desired_state;
        spec.attachments = self.spec.attachments.clone();
        spec.pending_reason = self.spec.pending_reason.clone();
        let mut task = Object::new(self.metadata.name.clone(), spec);
        task.metadata = ObjectMeta {
            name: self.metadata.name.clone(),
            uid: self.metadata.uid.clone(),
            labels: t.labels.clone(),
            generation: self.metadata.generation,
            resource_version: self.metadata.revision().map(|r| r.to_string()),
            creation_timestamp: self.metadata.creation_timestamp,
        };
        task.status = self.status.clone();
        task
    }

    /// The task's etcd key.
    pub fn key(&self, keys: &Keys) -> String {
        format!(
            "{}{}/{}",
            keys.prefix::<TaskSpec>(),
            self.spec.node.as_deref().unwrap_or(UNASSIGNED),
            self.metadata.name
        )
    }

    /// The spec the task runs with (its per-task fields empty), for
    /// [`shoal_api_types::ServiceSpec::outdates`].
    pub fn runs_with(&self) -> &TaskSpec {
        &self.spec.template.spec
    }

    /// Wanted running and not ended, as [`Task::is_live`].
    pub fn is_live(&self) -> bool {
        self.spec.desired_state == TaskState::Running && !self.status.state.is_terminal()
    }

    /// Restarts in the slot before it, as [`Task::attempt`].
    pub fn attempt(&self) -> u32 {
        self.spec
            .template
            .labels
            .get(labels::ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0)
    }

    /// The only node a global service's task may run on, as [`Task::pinned_node`].
    pub fn pinned_node(&self) -> Option<&str> {
        self.spec
            .template
            .labels
            .get(labels::NODE)
            .map(String::as_str)
    }
}

/// A record with a template of its own (tests, one-off conversions).
impl From<Task> for TaskRecord {
    fn from(task: Task) -> TaskRecord {
        let (record, template) = split(task);
        TaskRecord {
            spec: RecordSpec {
                template: Arc::new(template),
                ..record.spec
            },
            ..record
        }
    }
}

fn split(task: Task) -> (TaskRecord, TaskTemplate) {
    let revision = task.metadata.revision().unwrap_or(0);
    let ObjectMeta {
        name,
        uid,
        labels,
        generation,
        creation_timestamp,
        ..
    } = task.metadata;
    let mut spec = task.spec;
    let attachments = spec.attachments.clone();
    for a in &mut spec.attachments {
        a.address = String::new();
        a.mac = String::new();
    }
    let record = TaskRecord {
        metadata: RecordMeta {
            name,
            uid,
            generation,
            revision,
            creation_timestamp,
        },
        spec: RecordSpec {
            service: spec.service.clone(),
            slot: spec.slot.take(),
            node: spec.node.take(),
            desired_state: std::mem::take(&mut spec.desired_state),
            attachments,
            pending_reason: std::mem::take(&mut spec.pending_reason),
            template: Arc::new(TaskTemplate {
                labels: BTreeMap::new(),
                spec: TaskSpec::default(),
            }),
        },
        status: task.status,
    };
    (record, TaskTemplate { labels, spec })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::service::{Protocol, PublishMode};
    use shoal_api_types::{NetworkAttachmentConfig, ServiceSpec, TaskState};

    fn full_task(id: &str, slot: u64, node: &str) -> Task {
        let mut t = Task::new(
            id,
            TaskSpec {
                service: "api".into(),
                slot: Some(slot),
                node: Some(node.into()),
                desired_state: TaskState::Running,
                service_generation: 3,
                image: "busybox:2".into(),
                command: vec!["sh".into()],
                args: vec!["-c".into(), "sleep 1d".into()],
                env: [("A".to_string(), "1".to_string())].into(),
                attachments: vec![TaskAttachment {
                    network: "front".into(),
                    address: format!("10.0.1.{slot}/24"),
                    mac: format!("02:42:0a:00:01:{slot:02x}"),
                    aliases: vec!["db".into()],
                }],
                ports: vec![PortConfig {
                    target: 80,
                    published: 8080,
                    protocol: Protocol::Tcp,
                    mode: PublishMode::Host,
                    ..Default::default()
                }],
                stop_grace_period_seconds: 7,
                pending_reason: "no node".into(),
                user: "nobody".into(),
                force_update: 2,
                ..Default::default()
            },
        );
        t.metadata.uid = format!("uid-{id}");
        t.metadata.generation = 1;
        t.metadata.resource_version = Some("42".into());
        t.metadata.creation_timestamp = DateTime::from_timestamp(1_800_000_000, 0);
        t.metadata.labels.insert(labels::ATTEMPT.into(), "2".into());
        t.status.state = TaskState::Running;
        t.status.message = "started".into();
        t.status.container_id = format!("c-{id}");
        t
    }

    #[test]
    fn a_record_should_give_back_the_task_it_was_made_from() {
        let mut templates = Templates::default();
        let t = full_task("t1", 1, "n1");
        let r = TaskRecord::new(t.clone(), &mut templates);
        assert_eq!(r.to_task(), t);
        assert_eq!(r.metadata.revision(), Some(42));
        assert_eq!(r.attempt(), 2);
        assert_eq!(r.spec.display_name(), t.spec.display_name());
        assert_eq!(r.key(&Keys::new("/r")), Keys::new("/r").key(&t));
        assert!(r.is_live());
    }

    #[test]
    fn tasks_of_one_service_version_should_share_one_template() {
        let mut templates = Templates::default();
        let a = TaskRecord::new(full_task("a", 1, "n1"), &mut templates);
        let b = TaskRecord::new(full_task("b", 2, "n2"), &mut templates);
        assert!(Arc::ptr_eq(&a.spec.template, &b.spec.template));
        assert_eq!(templates.len(), 1);
        let mut other = full_task("c", 3, "n1");
        other.spec.image = "busybox:3".into();
        let c = TaskRecord::new(other.clone(), &mut templates);
        assert!(!Arc::ptr_eq(&a.spec.template, &c.spec.template));
        assert_eq!(
            c.to_task(),
            other,
            "a shared template never changes a value"
        );
        assert_eq!(b.to_task(), full_task("b", 2, "n2"));
    }

    #[test]
    fn the_template_should_compare_with_a_service_like_the_task_does() {
        let t = full_task("t1", 1, "n1");
        let r = TaskRecord::from(t.clone());
        // The service the task was made from.
        let mut s = ServiceSpec {
            image: "busybox:2".into(),
            command: t.spec.command.clone(),
            args: t.spec.args.clone(),
            env: t.spec.env.clone(),
            ports: t.spec.ports.clone(),
            stop_grace_period_seconds: Some(7),
            user: "nobody".into(),
            force_update: 2,
            networks: vec![NetworkAttachmentConfig {
                name: "front".into(),
                aliases: vec!["db".into()],
            }],
            ..Default::default()
        };
        assert!(!s.outdates(&t.spec));
        assert!(!s.outdates(r.runs_with()), "addresses are not compared");
        for change in [
            |s: &mut ServiceSpec| s.image = "busybox:3".into(),
            |s: &mut ServiceSpec| s.networks[0].aliases.clear(),
            |s: &mut ServiceSpec| s.env.clear(),
        ] {
            let mut changed = s.clone();
            change(&mut changed);
            assert!(changed.outdates(&t.spec));
            assert!(changed.outdates(r.runs_with()));
        }
        s.replicas = Some(9);
        assert!(!s.outdates(r.runs_with()), "a scale outdates nothing");
    }

    #[test]
    fn unused_templates_should_be_forgotten() {
        let mut templates = Templates::default();
        for i in 0..200 {
            let mut t = full_task("t", 1, "n1");
            t.spec.image = format!("img:{i}");
            drop(TaskRecord::new(t, &mut templates));
        }
        assert!(templates.len() < 100, "{}", templates.len());
    }
}
