//! Task writes of a service reconcile, pure over the cache: new tasks with their addresses
//! ([`plan_creates`]) and the stops and deletes the slot plan asked for
//! ([`retire_writes`]).
//!
//! Invariant: a task and the claims of its addresses are created in one transaction and
//! deleted in one transaction, so no address is ever held without its task nor handed out
//! twice, not even when the leader dies mid-write (see docs/architecture.md,
//! "Controller").

use std::collections::HashSet;
use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use shoal_api_types::labels;
use shoal_api_types::task::mac_for_ip;
use shoal_api_types::{Service, Task, TaskAttachment, TaskSpec, TaskState, TaskStatus};

use super::slots::{NewTask, ServicePlan};
use super::vips::Attach;
use super::write::Write;
use crate::ipam::{claims_of, AddressesExhausted};
use crate::reconcile::cache::Ipam;

/// A short, unique task id.
pub fn new_task_id() -> String {
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    id.truncate(20);
    id
}

/// Deletes (each with the release of the task's address claims) and stops (desired state
/// `shutdown`) from `plan`, one transaction each; a task is deleted or stopped once.
pub fn retire_writes(plan: &ServicePlan, ipam: &Ipam) -> Vec<Vec<Write>> {
    let mut txns = Vec::new();
    let mut deleted = HashSet::new();
    for t in &plan.delete {
        if !deleted.insert(t.metadata.name.clone()) {
            continue;
        }
        let mut txn = vec![Write::DeleteTask(t.clone())];
        txn.extend(
            claims_of(ipam, &t.metadata.name)
                .into_iter()
                .map(Write::Release),
        );
        txns.push(txn);
    }
    for t in &plan.shutdown {
        if deleted.contains(&t.metadata.name) || t.spec.desired_state == TaskState::Shutdown {
            continue;
        }
        let mut next = t.to_task();
        next.spec.desired_state = TaskState::Shutdown;
        txns.push(vec![Write::UpdateTask(next)]);
    }
    txns
}

/// One new task, not on a node yet, and its address claims: one transaction, which the
/// scheduler's pass writes with the task placed (see [`crate::context::Context::create_placed`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// The claims of its addresses.
    pub claims: Vec<Write>,
    /// The task.
    pub task: Task,
}

/// The task creations of one pass.
#[derive(Debug, Default)]
pub struct Creates {
    /// The new tasks, in order.
    pub tasks: Vec<Created>,
    /// The first network that ran out of addresses (creation stopped there).
    pub exhausted: Option<AddressesExhausted>,
    /// More tasks are wanted than one batch holds: reconcile again at once.
    pub more: bool,
}

/// Builds up to `batch` of the tasks in `create`, each with one picked address per
/// network in `attaches` and its id from `new_id`. Stops at the first network without a
/// free address.
pub fn plan_creates(
    service: &Service,
    create: &[NewTask],
    attaches: &[Attach],
    batch: usize,
    now: DateTime<Utc>,
    mut new_id: impl FnMut() -> String,
    mut pick: impl FnMut(&Attach) -> Result<Ipv4Addr, AddressesExhausted>,
) -> Creates {
    let mut out = Creates {
        more: create.len() > batch,
        ..Default::default()
    };
    let internal = attaches.iter().all(|a| a.addressing.internal) && !attaches.is_empty();
    'create: for new in create.iter().take(batch.max(1)) {
        let id = new_id();
        let mut claims = Vec::with_capacity(attaches.len());
        let mut attachments = Vec::with_capacity(attaches.len());
        for a in attaches {
            match pick(a) {
                Ok(ip) => {
                    claims.push(Write::Claim {
                        network: a.network.clone(),
                        ip,
                        owner: id.clone(),
                    });
                    attachments.push(TaskAttachment {
                        network: a.network.clone(),
                        address: format!("{ip}/{}", a.addressing.subnet.prefix()),
                        mac: mac_for_ip(ip),
                        aliases: a.aliases.clone(),
                    });
                }
                Err(e) => {
                    out.exhausted = Some(e);
                    break 'create;
                }
            }
        }
        let task = build_task(service, &id, new, attachments, internal, now);
        out.tasks.push(Created { claims, task });
    }
    out
}

fn build_task(
    service: &Service,
    id: &str,
    new: &NewTask,
    attachments: Vec<TaskAttachment>,
    internal: bool,
    now: DateTime<Utc>,
) -> Task {
    let s = &service.spec;
    let mut task = Task::new(
        id,
        TaskSpec {
            service: service.metadata.name.clone(),
            slot: new.slot,
            node: None,
            desired_state: TaskState::Running,
            service_generation: service.metadata.generation,
            image: s.image.clone(),
            command: s.command.clone(),
            args: s.args.clone(),
            env: s.env.clone(),
            attachments,
            ports: s.ports.clone(),
            healthcheck: s.healthcheck.clone(),
            restart_policy: s.restart_policy.clone(),
            stop_grace_period_seconds: s.stop_grace_period_seconds.unwrap_or(10),
            internal,
            pending_reason: String::new(),
            user: s.user.clone(),
            working_dir: s.working_dir.clone(),
            read_only_root_filesystem: s.read_only_root_filesystem,
            cap_add: s.cap_add.clone(),
            cap_drop: s.cap_drop.clone(),
            seccomp: s.seccomp,
            resources: s.resources.clone(),
            force_update: s.force_update,
            secrets: s.secrets.clone(),
            configs: s.configs.clone(),
            mounts: s.mounts.clone(),
            container_labels: s.container_labels.clone(),
        },
    );
    task.metadata
        .labels
        .insert(labels::ATTEMPT.into(), new.attempt.to_string());
    if let Some(node) = &new.node {
        task.metadata
            .labels
            .insert(labels::NODE.into(), node.clone());
    }
    task.status = TaskStatus {
        state: TaskState::Pending,
        timestamp: Some(now),
        message: "created".into(),
        ..Default::default()
    };
    task
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::ipam::{Addressing, Release};
    use crate::reconcile::cache::Claim;
    use crate::reconcile::TaskRecord;
    use shoal_api_types::ServiceSpec;

    fn service() -> Service {
        let mut s = Service::new(
            "api",
            ServiceSpec {
                image: "busybox:2".into(),
                ..Default::default()
            },
        );
        s.metadata.generation = 4;
        s
    }

    fn attach(network: &str, internal: bool) -> Attach {
        Attach {
            network: network.into(),
            aliases: vec!["web".into()],
            addressing: Addressing {
                subnet: "10.0.1.0/24".parse().unwrap(),
                gateway: "10.0.1.1".parse().unwrap(),
                internal,
            },
        }
    }

    fn slot(n: u64) -> NewTask {
        NewTask {
            slot: Some(n),
            node: None,
            attempt: 0,
        }
    }

    fn task(id: &str, desired: TaskState) -> Arc<TaskRecord> {
        let mut t = Task::new(
            id,
            TaskSpec {
                service: "api".into(),
                desired_state: desired,
                ..Default::default()
            },
        );
        t.metadata.resource_version = Some("7".into());
        Arc::new(TaskRecord::from(t))
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("t{n}")
        }
    }

    fn counting_picker() -> impl FnMut(&Attach) -> Result<Ipv4Addr, AddressesExhausted> {
        let mut next = 10u8;
        move |_| {
            next += 1;
            Ok(Ipv4Addr::new(10, 0, 1, next))
        }
    }

    #[test]
    fn tasks_should_be_created_with_their_address_claims_in_one_transaction() {
        let now = Utc::now();
        let global = NewTask {
            slot: None,
            node: Some("n2".into()),
            attempt: 2,
        };
        let creates = plan_creates(
            &service(),
            &[slot(1), global],
            &[attach("front", true), attach("back", true)],
            10,
            now,
            ids(),
            counting_picker(),
        );
        assert!(!creates.more && creates.exhausted.is_none());
        assert_eq!(creates.tasks.len(), 2);
        let Created { claims, task: t } = &creates.tasks[0];
        assert_eq!(
            claims[..],
            [
                Write::Claim {
                    network: "front".into(),
                    ip: "10.0.1.11".parse().unwrap(),
                    owner: "t1".into()
                },
                Write::Claim {
                    network: "back".into(),
                    ip: "10.0.1.12".parse().unwrap(),
                    owner: "t1".into()
                },
            ]
        );
        assert_eq!(t.metadata.name, "t1");
        assert_eq!(t.spec.slot, Some(1));
        assert_eq!(t.spec.image, "busybox:2");
        assert_eq!(t.spec.service_generation, 4);
        assert!(t.spec.internal, "every network is internal");
        assert_eq!(t.spec.attachments[1].address, "10.0.1.12/24");
        assert_eq!(t.spec.attachments[1].mac, "02:42:0a:00:01:0c");
        assert_eq!(t.spec.attachments[1].aliases, vec!["web"]);
        assert_eq!(t.status.state, TaskState::Pending);
        assert_eq!(t.attempt(), 0);
        assert_eq!(t.pinned_node(), None);
        let g = &creates.tasks[1].task;
        assert_eq!((g.attempt(), g.pinned_node()), (2, Some("n2")));
    }

    #[test]
    fn tasks_should_be_created_in_batches_and_stop_when_addresses_run_out() {
        let svc = service();
        let create: Vec<NewTask> = (1..=5).map(slot).collect();
        let creates = plan_creates(&svc, &create, &[], 2, Utc::now(), ids(), |_| unreachable!());
        assert_eq!(creates.tasks.len(), 2);
        assert!(creates.more);
        let t = &creates.tasks[0].task;
        assert!(creates.tasks[0].claims.is_empty());
        assert!(!t.spec.internal, "no networks: not internal");

        let mut left = 3;
        let creates = plan_creates(
            &svc,
            &create,
            &[attach("front", false), attach("back", false)],
            10,
            Utc::now(),
            ids(),
            |a| {
                if left == 0 {
                    return Err(AddressesExhausted {
                        network: a.network.clone(),
                        subnet: a.addressing.subnet,
                    });
                }
                left -= 1;
                Ok(Ipv4Addr::new(10, 0, 1, 10 + left))
            },
        );
        assert_eq!(
            creates.tasks.len(),
            1,
            "the second task got one address only"
        );
        assert_eq!(creates.exhausted.unwrap().network, "back");
    }

    #[test]
    fn retired_tasks_should_release_their_addresses_with_their_deletion() {
        let mut ipam = Ipam::default();
        let ip: Ipv4Addr = "10.0.1.5".parse().unwrap();
        ipam.ips.entry("front".into()).or_default().insert(
            ip,
            Claim {
                owner: "gone".into(),
                revision: 9,
            },
        );
        ipam.by_owner
            .entry("gone".into())
            .or_default()
            .insert(("front".into(), ip));
        let plan = ServicePlan {
            delete: vec![
                task("gone", TaskState::Running),
                task("gone", TaskState::Running),
            ],
            shutdown: vec![
                task("gone", TaskState::Running),
                task("run", TaskState::Running),
                task("stopping", TaskState::Shutdown),
            ],
            ..Default::default()
        };
        let txns = retire_writes(&plan, &ipam);
        assert_eq!(txns.len(), 2, "{txns:?}");
        assert_eq!(
            txns[0],
            vec![
                Write::DeleteTask(task("gone", TaskState::Running)),
                Write::Release(Release {
                    network: "front".into(),
                    ip,
                    revision: 9
                })
            ]
        );
        let Write::UpdateTask(stopped) = &txns[1][0] else {
            unreachable!()
        };
        assert_eq!(stopped.metadata.name, "run");
        assert_eq!(stopped.spec.desired_state, TaskState::Shutdown);
        assert_eq!(stopped.metadata.resource_version.as_deref(), Some("7"));
    }
}
