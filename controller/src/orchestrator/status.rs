//! `Service.status`, pure: task counts, the VIPs, and the two conditions users read —
//! `NetworksReady` (networks allocated, addresses available) and `Converged` (every
//! wanted task runs, or why not). A condition keeps its transition time while its status
//! stays the same. See docs/architecture.md ("Controller").

use std::sync::Arc;

use chrono::{DateTime, Utc};
use shoal_api_types::service::Condition;
use shoal_api_types::{Service, ServiceStatus, TaskState, VirtualIp};

use crate::reconcile::TaskRecord;

use super::slots::ServicePlan;
use super::vips::NetProblem;

/// What a service's status counts: from a walk over its tasks ([`Counts::of`]) or from the
/// cache's kept tally and the last full pass (see [`super::QuietPlan`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// How many tasks should run.
    pub desired: u64,
    /// Tasks wanted running that run.
    pub running: u64,
    /// Whether tasks are still to be created.
    pub creating: bool,
    /// The first reason a live task waits for a node, if one does.
    pub pending_reason: Option<String>,
}

impl Counts {
    /// The counts of `plan` over `tasks`.
    pub fn of(plan: &ServicePlan, tasks: &[Arc<TaskRecord>]) -> Counts {
        Counts {
            desired: plan.desired,
            running: tasks
                .iter()
                .filter(|t| {
                    t.spec.desired_state == TaskState::Running
                        && t.status.state == TaskState::Running
                })
                .count() as u64,
            creating: !plan.create.is_empty(),
            pending_reason: tasks
                .iter()
                .filter(|t| {
                    t.is_live() && t.spec.node.is_none() && !t.spec.pending_reason.is_empty()
                })
                .map(|t| t.spec.pending_reason.clone())
                .min(),
        }
    }
}

/// The status of `service` after this pass: `plan` is its slot plan, `tasks` its tasks,
/// `vips` its VIPs; `net_problem` and `exhausted` say why tasks cannot be made (a
/// network problem wins).
pub fn service_status(
    service: &Service,
    plan: &ServicePlan,
    tasks: &[Arc<TaskRecord>],
    vips: Vec<VirtualIp>,
    net_problem: Option<&NetProblem>,
    exhausted: Option<&str>,
    now: DateTime<Utc>,
) -> ServiceStatus {
    status_of(
        service,
        &Counts::of(plan, tasks),
        vips,
        net_problem,
        exhausted,
        now,
    )
}

/// [`service_status`] from `counts`.
pub fn status_of(
    service: &Service,
    counts: &Counts,
    vips: Vec<VirtualIp>,
    net_problem: Option<&NetProblem>,
    exhausted: Option<&str>,
    now: DateTime<Utc>,
) -> ServiceStatus {
    let running = counts.running;
    let pending_reason = &counts.pending_reason;
    let plan = counts;
    let prev = &service.status.conditions;
    let net_condition = match (net_problem, exhausted) {
        (Some(p), _) => condition(
            "NetworksReady",
            false,
            p.reason,
            p.message.clone(),
            prev,
            now,
        ),
        (None, Some(msg)) => condition(
            "NetworksReady",
            false,
            "AddressesExhausted",
            msg.to_string(),
            prev,
            now,
        ),
        (None, None) => condition("NetworksReady", true, "Allocated", String::new(), prev, now),
    };
    let converged = running == plan.desired && !plan.creating && net_condition.status == "True";
    let conv_condition = if converged {
        condition(
            "Converged",
            true,
            "AllTasksRunning",
            format!("{running}/{} tasks running", plan.desired),
            prev,
            now,
        )
    } else if net_condition.status != "True" {
        condition(
            "Converged",
            false,
            &net_condition.reason,
            format!(
                "{running}/{} tasks running; {}",
                plan.desired, net_condition.message
            ),
            prev,
            now,
        )
    } else if let Some(reason) = pending_reason {
        condition(
            "Converged",
            false,
            "NoSuitableNode",
            format!("{running}/{} tasks running; {reason}", plan.desired),
            prev,
            now,
        )
    } else {
        condition(
            "Converged",
            false,
            "Progressing",
            format!("{running}/{} tasks running", plan.desired),
            prev,
            now,
        )
    };
    ServiceStatus {
        desired_tasks: plan.desired,
        running_tasks: running,
        virtual_ips: vips,
        observed_generation: service.metadata.generation,
        conditions: vec![conv_condition, net_condition],
        // The updater decides the update status (see `super::update`); the previous spec
        // is the API's.
        update_status: service.status.update_status.clone(),
        previous_spec: service.status.previous_spec.clone(),
    }
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    previous: &[Condition],
    now: DateTime<Utc>,
) -> Condition {
    let status = if ok { "True" } else { "False" }.to_string();
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time)
        .unwrap_or(now);
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        last_transition_time: Some(since),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::{ServiceSpec, Task, TaskSpec};

    fn service() -> Service {
        let mut s = Service::new("api", ServiceSpec::default());
        s.metadata.generation = 3;
        s
    }

    fn task(state: TaskState, node: Option<&str>, pending_reason: &str) -> Arc<TaskRecord> {
        let mut t = Task::new(
            "t",
            TaskSpec {
                service: "api".into(),
                desired_state: TaskState::Running,
                node: node.map(Into::into),
                pending_reason: pending_reason.into(),
                ..Default::default()
            },
        );
        t.status.state = state;
        Arc::new(TaskRecord::from(t))
    }

    fn plan(desired: u64) -> ServicePlan {
        ServicePlan {
            desired,
            ..Default::default()
        }
    }

    fn reasons(s: &ServiceStatus) -> Vec<(&str, &str, &str)> {
        s.conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect()
    }

    #[test]
    fn status_should_say_converged_when_every_wanted_task_runs() {
        let tasks = vec![task(TaskState::Running, Some("n1"), "")];
        let s = service_status(&service(), &plan(1), &tasks, vec![], None, None, Utc::now());
        assert_eq!((s.desired_tasks, s.running_tasks), (1, 1));
        assert_eq!(s.observed_generation, 3);
        assert_eq!(
            reasons(&s),
            vec![
                ("Converged", "True", "AllTasksRunning"),
                ("NetworksReady", "True", "Allocated")
            ]
        );
        assert_eq!(s.conditions[0].message, "1/1 tasks running");
    }

    #[test]
    fn status_should_say_why_it_has_not_converged() {
        let now = Utc::now();
        let pending = vec![task(TaskState::Pending, None, "no suitable node (x)")];
        let s = service_status(&service(), &plan(1), &pending, vec![], None, None, now);
        assert_eq!(reasons(&s)[0], ("Converged", "False", "NoSuitableNode"));
        assert_eq!(
            s.conditions[0].message,
            "0/1 tasks running; no suitable node (x)"
        );

        let s = service_status(&service(), &plan(1), &[], vec![], None, Some("full"), now);
        assert_eq!(
            reasons(&s),
            vec![
                ("Converged", "False", "AddressesExhausted"),
                ("NetworksReady", "False", "AddressesExhausted")
            ]
        );
        assert_eq!(s.conditions[0].message, "0/1 tasks running; full");

        let problem = NetProblem {
            reason: "NetworkPending",
            message: "network \"a\" is not allocated yet".into(),
        };
        let s = service_status(
            &service(),
            &plan(1),
            &[],
            vec![],
            Some(&problem),
            Some("full"),
            now,
        );
        assert_eq!(reasons(&s)[1], ("NetworksReady", "False", "NetworkPending"));

        let starting = vec![task(TaskState::Starting, Some("n1"), "")];
        let s = service_status(&service(), &plan(1), &starting, vec![], None, None, now);
        assert_eq!(reasons(&s)[0], ("Converged", "False", "Progressing"));
    }

    #[test]
    fn status_should_keep_a_condition_transition_time_while_its_status_holds() {
        let then = Utc::now() - chrono::Duration::seconds(60);
        let now = Utc::now();
        let mut svc = service();
        svc.status = service_status(&svc, &plan(0), &[], vec![], None, None, then);
        let s = service_status(&svc, &plan(0), &[], vec![], None, None, now);
        assert_eq!(s.conditions[0].last_transition_time, Some(then));
        let s = service_status(&svc, &plan(1), &[], vec![], None, None, now);
        assert_eq!(s.conditions[0].last_transition_time, Some(now), "flipped");
        assert_eq!(s.conditions[1].last_transition_time, Some(then));
    }
}
