//! Service orchestrator: keeps each service's tasks, VIPs, Endpoints and status true. It
//! owns the service's tasks' desired state, its VIP claims, its Endpoints and its
//! `status`; no other stage writes them. See docs/architecture.md ("Controller").
//!
//! A service reconcile is [`service_step`], pure over the cache, which composes:
//! [`slots`] (which tasks: creates, stops, deletes, restarts), [`update`] (the rolling
//! replacement of out-of-date tasks and `status.updateStatus`),
//! [`vips`] (the networks the tasks join and the VIP on each), [`tasks`] (new tasks with
//! their addresses, deletes with their releases), [`crate::endpoints`] (per network) and
//! [`status`]. It returns transactions of plain [`Write`]s, and the new tasks apart
//! ([`tasks::Created`]); [`reconcile_service`] commits the former ([`mod@write`] turns them
//! into etcd transactions) and hands the new tasks to the scheduler's pass, which writes
//! each placed on its node, or pending with its reason when no node fits
//! ([`crate::context::Context::create_placed`]): a task's key never moves when a node fits
//! at creation. That is the orchestrator's only I/O.
//!
//! A pass creates at most `--task-create-batch` tasks in its first batch; the creates it
//! planned beyond that are its [`Backlog`], which the same reconcile makes batch by batch
//! ([`backlog_step`], O(batch) each: no new slot plan, no walk over the service's tasks)
//! for up to [`BACKLOG_BUDGET`], then a full pass follows. So a scale-up to n tasks costs
//! O(n) planning once per budget, not once per batch, and status, Endpoints and restarts
//! still get a full pass at least every budget.
//!
//! Invariants: at most one live task per slot (per node for global services); a task and
//! the claims of its addresses are created and deleted in one transaction, and a VIP is
//! claimed in the transaction that records it in the status, so a leader dying mid-write
//! never duplicates a task or an address. A backlog holds only slots that were empty when
//! planned; only this reconcile (one at a time per service) creates the service's tasks,
//! so they are still empty when it fills them; it is dropped as soon as the service is
//! gone, replaced, or its spec changed (another uid or generation).

pub mod quiet;
pub mod slots;
pub mod status;
pub mod tasks;
pub mod update;
pub mod vips;
pub mod write;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::config::ManagerConfig;
use crate::context::{Context, Unplaced};
use crate::endpoints::{desired_endpoints, plan_endpoints};
use crate::ipam::{claims_of, Picker};
use crate::reconcile::{Action, ControllerError, World};

pub use quiet::QuietPlan;
use quiet::{shaped_at, updating};
pub use slots::{is_outdated, node_eligible, plan_service, NewTask, ServicePlan};
pub use tasks::Created;
pub use vips::wanted_networks;
pub use write::Write;

/// How long one service reconcile goes on making its [`Backlog`] before a full pass.
pub const BACKLOG_BUDGET: Duration = Duration::from_secs(2);

/// What one service reconcile decided.
#[derive(Debug)]
pub struct ServiceStep {
    /// Independent transactions, in commit order.
    pub txns: Vec<Vec<Write>>,
    /// New tasks, for the scheduler to write placed.
    pub creates: Vec<Created>,
    /// When to look again.
    pub action: Action,
    /// Creates planned beyond this pass's batch.
    pub backlog: Option<Backlog>,
    /// Whether the pass planned the service's slots (a full pass).
    pub planned: bool,
    /// What to keep for the next pass (see [`QuietPlan`]).
    pub quiet: Option<QuietPlan>,
}

/// Tasks a pass planned but did not create in its batch (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// The service's uid and generation when planned.
    pub service: (String, i64),
    /// What is still to create, in order.
    pub create: Vec<NewTask>,
}

/// Reconciles one service: VIPs, tasks, Endpoints and status (or the clean-up of a
/// deleted service). The one place the orchestrator writes.
pub async fn reconcile_service(name: String, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    ctx.sync().await;
    let quiet = ctx
        .quiet_plans
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&name);
    let step = {
        let world = ctx.cache.read();
        service_step(
            &world,
            &name,
            &ctx.config,
            &ctx.ip_cursors,
            Utc::now(),
            quiet.as_ref(),
        )
    };
    if let Some(q) = step.quiet.clone() {
        ctx.quiet_plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), q);
    }
    let txns = step
        .txns
        .into_iter()
        .map(|writes| write::txn(&ctx.keys, writes))
        .collect();
    // Every write is attempted; the first error is returned.
    let written = ctx.writer.commit_all(txns, 16).await;
    let created = ctx.create_placed(unplaced(&ctx, step.creates)).await;
    written?;
    created?;
    let started = Instant::now();
    let mut backlog = step.backlog;
    while let Some(b) = backlog.take() {
        if started.elapsed() >= BACKLOG_BUDGET {
            break;
        }
        // The previous batch's claims must be in the cache before addresses are picked.
        ctx.sync().await;
        let (creates, rest) = {
            let world = ctx.cache.read();
            backlog_step(&world, &name, b, &ctx.config, &ctx.ip_cursors, Utc::now())
        };
        ctx.create_placed(unplaced(&ctx, creates)).await?;
        backlog = rest;
    }
    Ok(step.action)
}

/// New tasks as the scheduler's pass takes them: each with its claims as one batch.
fn unplaced(ctx: &Context, creates: Vec<Created>) -> Vec<Unplaced> {
    creates
        .into_iter()
        .map(|c| Unplaced {
            task: c.task,
            with: write::txn(&ctx.keys, c.claims),
        })
        .collect()
}

/// The next batch of `backlog` for service `name` (new tasks), and what remains after it; nothing
/// when the service is gone or changed, its networks are not ready, or addresses ran out
/// (the full pass that follows says why).
pub fn backlog_step(
    world: &World,
    name: &str,
    backlog: Backlog,
    config: &ManagerConfig,
    cursors: &Mutex<HashMap<String, u32>>,
    now: DateTime<Utc>,
) -> (Vec<Created>, Option<Backlog>) {
    let Some(service) = world.services.get(name) else {
        return (vec![], None);
    };
    if (&service.metadata.uid, service.metadata.generation)
        != (&backlog.service.0, backlog.service.1)
    {
        return (vec![], None);
    }
    let (attaches, net_problem) = vips::resolve_networks(&service.spec, &world.networks);
    if net_problem.is_some() {
        return (vec![], None);
    }
    let creates = {
        let mut cursors = cursors.lock().unwrap_or_else(|p| p.into_inner());
        let mut picker = Picker::new(&mut cursors, |n: &str, ip| world.ipam.ip_taken(n, ip));
        tasks::plan_creates(
            service,
            &backlog.create,
            &attaches,
            config.task_create_batch,
            now,
            tasks::new_task_id,
            |a| picker.pick(&a.network, &a.addressing),
        )
    };
    let rest = backlog_after(&backlog.service, &backlog.create, config, &creates);
    (creates.tasks, rest)
}

/// What `create` leaves after a batch that made `creates`.
fn backlog_after(
    service: &(String, i64),
    create: &[NewTask],
    config: &ManagerConfig,
    creates: &tasks::Creates,
) -> Option<Backlog> {
    let made = config.task_create_batch.max(1).min(create.len());
    (creates.more && creates.exhausted.is_none()).then(|| Backlog {
        service: service.clone(),
        create: create[made..].to_vec(),
    })
}

/// Decides every write of service `name`'s reconcile from `world` at `now`. Addresses are
/// picked next-fit from `cursors` (locked only while picking). `quiet` is what an earlier
/// pass kept (see [`QuietPlan`]); [`ServiceStep::quiet`] is what to keep for the next.
pub fn service_step(
    world: &World,
    name: &str,
    config: &ManagerConfig,
    cursors: &Mutex<HashMap<String, u32>>,
    now: DateTime<Utc>,
    quiet: Option<&QuietPlan>,
) -> ServiceStep {
    let service = world.services.get(name).cloned();
    let quiet = match &service {
        Some(s) => quiet.filter(|q| q.holds(s, world)),
        None => None,
    };
    let (tasks, plan, update) = match quiet {
        Some(q) => {
            let plan = ServicePlan {
                desired: q.desired,
                ..Default::default()
            };
            (None, plan, Some(update::UpdateStep::default()))
        }
        None => {
            let tasks = world.service_tasks(name);
            let mut plan = plan_service(
                service.as_deref(),
                &tasks,
                &world.nodes,
                now,
                config.task_history_limit,
            );
            let update = service.as_deref().map(|s| {
                update::plan_update(s, &tasks, &mut plan, |t| listed_ready(world, name, t), now)
            });
            (Some(tasks), plan, update)
        }
    };
    let plan_is_quiet = plan.create.is_empty()
        && plan.shutdown.is_empty()
        && plan.delete.is_empty()
        && plan.outdated.is_empty()
        && plan.requeue.is_none();
    let mut action = plan.requeue.map_or(Action::AwaitChange, Action::Requeue);
    if let Some(d) = update.as_ref().and_then(|u| u.requeue) {
        action = action.min(Action::Requeue(d));
    }
    // Deletes release the task's addresses in the same transaction.
    let mut txns = tasks::retire_writes(&plan, &world.ipam);

    let Some(service) = service else {
        // Deleted: release VIPs and remove Endpoints, together.
        let mut txn: Vec<Write> = claims_of(&world.ipam, &vips::vip_owner(name))
            .into_iter()
            .map(Write::Release)
            .collect();
        txn.extend(
            plan_endpoints(name, vec![], &world.endpoints, config.endpoints_slice_size)
                .into_iter()
                .map(Write::Endpoints),
        );
        txns.push(txn);
        let n = tasks.as_ref().map_or(0, Vec::len);
        if n > 0 {
            tracing::debug!(service = %name, tasks = n, "service deleted; removing its tasks");
        }
        return ServiceStep {
            txns,
            creates: vec![],
            action,
            backlog: None,
            planned: true,
            quiet: None,
        };
    };

    // Networks: the spec's, plus ingress when publishing through the routing mesh.
    let (attaches, net_problem) = vips::resolve_networks(&service.spec, &world.networks);
    let planned = tasks.is_some();
    // A quiet pass reads the tasks only for the Endpoints.
    let tasks = match tasks {
        Some(tasks) => tasks,
        None if !attaches.is_empty() => world.service_tasks(name),
        None => Vec::new(),
    };
    let counts = match quiet {
        Some(q) => status::Counts {
            desired: q.desired,
            running: world.tallies.get(name).map_or(0, |t| t.running),
            creating: false,
            pending_reason: q.pending_reason.clone(),
        },
        None => status::Counts::of(&plan, &tasks),
    };

    // VIPs, then new tasks, from one picker, so no address is picked twice in a pass.
    let (vip_plan, creates) = {
        let mut cursors = cursors.lock().unwrap_or_else(|p| p.into_inner());
        let mut picker = Picker::new(&mut cursors, |n: &str, ip| world.ipam.ip_taken(n, ip));
        let vip_plan = vips::plan_vips(&service, &attaches, &world.ipam, |a| {
            picker.pick(&a.network, &a.addressing)
        });
        let creates = (net_problem.is_none() && vip_plan.exhausted.is_none()).then(|| {
            tasks::plan_creates(
                &service,
                &plan.create,
                &attaches,
                config.task_create_batch,
                now,
                tasks::new_task_id,
                |a| picker.pick(&a.network, &a.addressing),
            )
        });
        (vip_plan, creates)
    };
    let exhausted = vip_plan
        .exhausted
        .as_ref()
        .or(creates.as_ref().and_then(|c| c.exhausted.as_ref()))
        .map(|e| e.to_string());

    // Endpoints slices per resolved network; stale ones removed.
    let wanted = attaches
        .iter()
        .map(|a| {
            let vip = vip_plan
                .vips
                .iter()
                .find(|v| v.network == a.network)
                .map(|v| v.addr.as_str());
            desired_endpoints(&service, &a.network, &a.aliases, vip, &tasks, &world.nodes)
        })
        .collect();
    let endpoints = plan_endpoints(name, wanted, &world.endpoints, config.endpoints_slice_size);

    // Status, with the VIP claims and releases it records, first.
    let mut status = status::status_of(
        &service,
        &counts,
        vip_plan.vips,
        net_problem.as_ref(),
        exhausted.as_deref(),
        now,
    );
    let update = update.unwrap_or_default();
    let update_is_quiet = update.status.is_none() && !update.rollback && update.requeue.is_none();
    if let Some(us) = update.status {
        status.update_status = Some(us);
    }
    let mut status_txn = vip_plan.writes;
    if status != service.status || !status_txn.is_empty() || update.rollback {
        let mut next = (*service).clone();
        next.status = status;
        if update.rollback {
            // The failure action: back to the previous spec (the updater set the state).
            let state = next.status.update_status.take();
            if next.rollback(now).is_ok() {
                next.status.update_status = state;
            }
            tracing::info!(service = %name, "update failed; rolling back to the previous spec");
        }
        status_txn.push(Write::UpdateService(next));
    }
    txns.insert(0, status_txn);

    let mut backlog = None;
    let mut created = vec![];
    if let Some(creates) = creates {
        if creates.more {
            action = Action::Requeue(Duration::ZERO);
            backlog = backlog_after(
                &(service.metadata.uid.clone(), service.metadata.generation),
                &plan.create,
                config,
                &creates,
            );
        }
        if !creates.tasks.is_empty() {
            tracing::debug!(service = %name, created = creates.tasks.len(), "creating tasks");
        }
        created = creates.tasks;
    }
    // One transaction per slice: a full slice is a few hundred KiB, so slices written
    // together could exceed etcd's request size; a task never moves between slices, so
    // agents never see it twice or lose it while the slices land one by one.
    txns.extend(endpoints.into_iter().map(|e| vec![Write::Endpoints(e)]));
    if net_problem
        .as_ref()
        .is_some_and(|p| p.reason == "NetworkPending")
    {
        action = action.min(Action::Requeue(Duration::from_secs(5)));
    }
    let quiet = match quiet {
        Some(q) => Some(q.clone()),
        None => (plan_is_quiet && update_is_quiet && !updating(&service)).then(|| QuietPlan {
            uid: service.metadata.uid.clone(),
            spec: service.spec.clone(),
            shaped_at: shaped_at(world, name),
            nodes_shaped_at: world.nodes_shaped_at,
            desired: plan.desired,
            pending_reason: counts.pending_reason.clone(),
        }),
    };
    ServiceStep {
        txns,
        creates: created,
        action,
        backlog,
        planned,
        quiet,
    }
}

/// Whether task `t` of service `name` is listed ready in the stored Endpoints (some slice)
/// of the service on each of its networks (so every node's load balancer has it).
fn listed_ready(world: &World, name: &str, t: &crate::reconcile::TaskRecord) -> bool {
    t.spec.attachments.iter().all(|a| {
        match world.endpoints.get(&(a.network.clone(), name.to_string())) {
            Some(slices) => slices.values().any(|ep| {
                ep.spec
                    .tasks
                    .iter()
                    .any(|e| e.task == t.metadata.name && e.ready)
            }),
            None => true,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::Ipv4Addr;

    use shoal_api_types::{
        Endpoints, EndpointsSpec, NetworkAttachmentConfig, NetworkSpec, NetworkStatus, Service,
        ServiceSpec, Task, TaskSpec,
    };

    use crate::endpoints::EndpointsChange;
    use crate::ipam::Release;
    use crate::reconcile::cache::Claim;

    fn world() -> World {
        let mut net = shoal_api_types::Network::new("front", NetworkSpec::default());
        net.status = NetworkStatus {
            subnet: Some("10.0.1.0/24".into()),
            vni: Some(4097),
            phase: "Ready".into(),
            ..Default::default()
        };
        let mut w = World::default();
        w.networks.insert("front".into(), Arc::new(net));
        w
    }

    fn service(replicas: i64) -> Service {
        Service::new(
            "api",
            ServiceSpec {
                image: "busybox".into(),
                replicas: Some(replicas),
                networks: vec![NetworkAttachmentConfig {
                    name: "front".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
    }

    fn claim(w: &mut World, ip: &str, owner: &str) -> Ipv4Addr {
        let ip: Ipv4Addr = ip.parse().unwrap();
        w.ipam.ips.entry("front".into()).or_default().insert(
            ip,
            Claim {
                owner: owner.into(),
                revision: 5,
            },
        );
        w.ipam
            .by_owner
            .entry(owner.into())
            .or_default()
            .insert(("front".into(), ip));
        ip
    }

    fn step(w: &World) -> ServiceStep {
        service_step(
            w,
            "api",
            &ManagerConfig::default(),
            &Mutex::new(HashMap::new()),
            Utc::now(),
            None,
        )
    }

    #[test]
    fn a_new_service_should_get_a_vip_tasks_and_endpoints_each_claimed_once() {
        let mut w = world();
        w.services.insert("api".into(), Arc::new(service(2)));
        claim(&mut w, "10.0.1.2", "someone");
        let step = step(&w);
        assert_eq!(step.action, Action::AwaitChange);
        // The status (with the VIP and its claim) first, then the Endpoints; the two new
        // tasks apart, each with its claim, for the scheduler.
        assert_eq!(step.txns.len(), 2, "{:#?}", step.txns);
        let [Write::Claim { ip: vip, owner, .. }, Write::UpdateService(s)] = &step.txns[0][..]
        else {
            panic!("{:?}", step.txns[0])
        };
        assert_eq!(owner, "vip/api");
        assert_eq!(s.status.virtual_ips[0].addr, vip.to_string());
        assert_eq!(s.status.desired_tasks, 2);
        let mut claimed = HashSet::from([*vip]);
        assert_eq!(step.creates.len(), 2);
        for Created { claims, task: t } in &step.creates {
            let [Write::Claim { ip, owner, .. }] = &claims[..] else {
                panic!("{claims:?}")
            };
            assert_eq!(*owner, t.metadata.name);
            assert_eq!(t.spec.node, None, "the scheduler places it");
            assert_eq!(t.spec.attachments[0].address, format!("{ip}/24"));
            assert!(claimed.insert(*ip), "{ip} handed out twice");
        }
        assert!(
            !claimed.contains(&"10.0.1.2".parse().unwrap()),
            "a claimed address is never picked"
        );
        let [Write::Endpoints(EndpointsChange::Create(ep))] = &step.txns[1][..] else {
            panic!("{:?}", step.txns[1])
        };
        assert_eq!(ep.spec.vip, Some(vip.to_string()));
    }

    #[test]
    fn a_status_pass_over_tasks_that_only_progressed_should_skip_the_slot_plan() {
        let mut w = world();
        let mut n1 = shoal_api_types::Node::new("n1", Default::default());
        n1.status.state = shoal_api_types::NodeState::Ready;
        w.nodes.insert("n1".into(), Arc::new(n1));
        w.services.insert("api".into(), Arc::new(service(2)));
        let now = Utc::now();
        let config = ManagerConfig::default();
        // Fresh cursors each time, so a VIP is picked alike.
        let step = |w: &World, q: Option<&QuietPlan>| {
            service_step(w, "api", &config, &Mutex::new(HashMap::new()), now, q)
        };
        // The tasks as the orchestrator makes them, placed on n1.
        let made = created(&step(&w, None).creates);
        assert_eq!(made.len(), 2);
        let task = |i: usize, state| {
            let mut t: Task = made[i].clone();
            t.metadata.uid = format!("uid-{i}");
            t.spec.node = Some("n1".into());
            t.status.state = state;
            t
        };
        use shoal_api_types::TaskState::{Failed, Running, Starting};
        w.insert_task(task(0, Starting));
        w.insert_task(task(1, Starting));
        let first = step(&w, None);
        assert!(first.planned);
        let quiet = first
            .quiet
            .expect("nothing to create, stop or update: kept");

        // Both report running: the counts come from the tally, the writes are a full pass's.
        w.insert_task(task(0, Running));
        w.insert_task(task(1, Running));
        let second = step(&w, Some(&quiet));
        assert!(!second.planned, "no slot plan");
        assert_eq!(second.quiet.as_ref(), Some(&quiet));
        assert_eq!(second.txns, step(&w, None).txns);
        let Some(Write::UpdateService(s)) = second.txns[0].last() else {
            panic!("{:?}", second.txns[0])
        };
        assert_eq!((s.status.running_tasks, s.status.desired_tasks), (2, 2));
        assert_eq!(s.status.conditions[0].reason, "AllTasksRunning");

        // A task ended: the shape changed, so a full pass plans its restart.
        w.insert_task(task(0, Failed));
        let third = step(&w, Some(&quiet));
        assert!(third.planned);
        assert!(third.quiet.is_none(), "a restart is due");
        // The spec changed: a full pass too.
        let mut w2 = w.clone();
        w2.insert_task(task(0, Running));
        let mut scaled = service(3);
        scaled.metadata.generation = 2;
        w2.services.insert("api".into(), Arc::new(scaled));
        assert!(step(&w2, Some(&quiet)).planned);
    }

    #[test]
    fn a_service_waits_for_its_network_and_creates_nothing_meanwhile() {
        let mut w = world();
        let mut svc = service(1);
        svc.spec.networks[0].name = "later".into();
        w.networks.insert(
            "later".into(),
            Arc::new(shoal_api_types::Network::new(
                "later",
                NetworkSpec::default(),
            )),
        );
        w.services.insert("api".into(), Arc::new(svc));
        let step = step(&w);
        assert_eq!(step.action, Action::Requeue(Duration::from_secs(5)));
        assert_eq!(step.txns.len(), 1, "only the status: {:?}", step.txns);
        let [Write::UpdateService(s)] = &step.txns[0][..] else {
            panic!("{:?}", step.txns)
        };
        assert_eq!(s.status.conditions[1].reason, "NetworkPending");
    }

    #[test]
    fn a_deleted_service_should_lose_its_tasks_vips_and_endpoints() {
        let mut w = world();
        let mut t = Task::new(
            "t1",
            TaskSpec {
                service: "api".into(),
                slot: Some(1),
                desired_state: shoal_api_types::TaskState::Running,
                ..Default::default()
            },
        );
        t.status.state = shoal_api_types::TaskState::Pending;
        w.insert_task(t);
        let task_ip = claim(&mut w, "10.0.1.7", "t1");
        let vip = claim(&mut w, "10.0.1.2", "vip/api");
        let ep = Arc::new(Endpoints::new(
            "front.api",
            EndpointsSpec {
                network: "front".into(),
                service: "api".into(),
                ..Default::default()
            },
        ));
        let ep1 = Arc::new(
            EndpointsSpec::vip("front", "api", "10.0.1.2")
                .slice(1)
                .object(),
        );
        w.endpoints.insert(
            ("front".into(), "api".into()),
            [(0, ep.clone()), (1, ep1.clone())].into(),
        );
        let step = step(&w);
        assert_eq!(step.txns.len(), 2, "{:#?}", step.txns);
        let release = |ip| {
            Write::Release(Release {
                network: "front".into(),
                ip,
                revision: 5,
            })
        };
        assert_eq!(step.txns[0][1..], [release(task_ip)]);
        assert!(matches!(&step.txns[0][0], Write::DeleteTask(t) if t.metadata.name == "t1"));
        assert_eq!(
            step.txns[1],
            vec![
                release(vip),
                Write::Endpoints(EndpointsChange::Delete(ep)),
                Write::Endpoints(EndpointsChange::Delete(ep1)),
            ]
        );
    }

    fn created(creates: &[Created]) -> Vec<Task> {
        creates.iter().map(|c| c.task.clone()).collect()
    }

    fn scale_up(w: &mut World, replicas: i64) -> ManagerConfig {
        let mut svc = service(replicas);
        svc.metadata.uid = "u1".into();
        svc.metadata.generation = 3;
        w.services.insert("api".into(), Arc::new(svc));
        ManagerConfig {
            task_create_batch: 4,
            ..ManagerConfig::default()
        }
    }

    #[test]
    fn a_pass_should_create_one_batch_and_leave_the_other_planned_slots_as_its_backlog() {
        let mut w = world();
        let config = scale_up(&mut w, 10);
        let cursors = Mutex::new(HashMap::new());
        let step = service_step(&w, "api", &config, &cursors, Utc::now(), None);
        assert_eq!(step.action, Action::Requeue(Duration::ZERO));
        let first = created(&step.creates);
        let slots = |ts: &[Task]| ts.iter().map(|t| t.spec.slot.unwrap()).collect::<Vec<_>>();
        assert_eq!(slots(&first), [1, 2, 3, 4]);
        let backlog = step.backlog.expect("a backlog");
        assert_eq!(backlog.service, ("u1".to_string(), 3));
        let rest: Vec<u64> = backlog.create.iter().map(|c| c.slot.unwrap()).collect();
        assert_eq!(rest, [5, 6, 7, 8, 9, 10], "every planned slot once");

        // The next batch comes from the backlog, with no slot of the first batch again.
        for t in first {
            w.insert_task(t);
        }
        let (txns, rest) = backlog_step(&w, "api", backlog, &config, &cursors, Utc::now());
        let second = created(&txns);
        assert_eq!(slots(&second), [5, 6, 7, 8]);
        let rest = rest.expect("two slots left");
        let (txns, none) = backlog_step(&w, "api", rest, &config, &cursors, Utc::now());
        assert_eq!(slots(&created(&txns)), [9, 10]);
        assert!(none.is_none());
        // Addresses are never handed out twice across batches.
        let mut ips: Vec<String> = second
            .iter()
            .chain(&created(&txns))
            .map(|t| t.spec.attachments[0].address.clone())
            .collect();
        let n = ips.len();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), n);
    }

    #[test]
    fn a_backlog_should_be_dropped_when_the_service_changed_or_went() {
        let mut w = world();
        let config = scale_up(&mut w, 10);
        let cursors = Mutex::new(HashMap::new());
        let backlog = service_step(&w, "api", &config, &cursors, Utc::now(), None)
            .backlog
            .expect("a backlog");
        let mut changed = (*w.services["api"]).clone();
        changed.metadata.generation += 1;
        changed.spec.replicas = Some(2);
        let mut w2 = w.clone();
        w2.services.insert("api".into(), Arc::new(changed));
        let (txns, rest) = backlog_step(&w2, "api", backlog.clone(), &config, &cursors, Utc::now());
        assert!(txns.is_empty() && rest.is_none(), "scaled down meanwhile");
        w.services.remove("api");
        let (txns, rest) = backlog_step(&w, "api", backlog, &config, &cursors, Utc::now());
        assert!(txns.is_empty() && rest.is_none(), "deleted meanwhile");
    }
}
