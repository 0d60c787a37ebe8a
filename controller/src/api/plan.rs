//! Writing user-owned objects (Networks, Services) all-or-nothing: read the [`World`] at a
//! revision, [`plan`] every change against it (pure: defaults, merges and every cross-object
//! rule of [`super::rules`]), then [`commit`] all writes in one [`Batch`] (one etcd
//! transaction) whose preconditions make the plan's checks race-free. A lost race re-reads
//! and re-plans a few times; a stale `resourceVersion` the client sent is a 409 at once.
//!
//! Create, replace and apply all go through here, so they share one set of rules.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use shoal_api_types::settings::{default_reserved_ports, ReservedPort};
use shoal_api_types::{
    AnyObject, ClusterSettingsSpec, FieldError, Network, NetworkSpec, Object, Resource, Service,
    ServiceSpec, Status, StatusDetail,
};
use shoal_store::{stored, Batch, Store, StoreError};

use super::error::{ApiError, ApiResult};
use super::rules;

/// How often a write re-reads and re-plans after losing a race before giving up with 409.
pub const ATTEMPTS: usize = 5;

/// The user-owned objects, each kind read at its own revision.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// Networks by name.
    pub networks: BTreeMap<String, Network>,
    /// The revision `networks` was read at.
    pub networks_revision: i64,
    /// Services by name.
    pub services: BTreeMap<String, Service>,
    /// The revision `services` was read at.
    pub services_revision: i64,
    /// The published ports no service may take: the stored ClusterSettings' (the
    /// leader's `--reserved-ports`), or the defaults until a leader published them.
    pub reserved_ports: Vec<ReservedPort>,
}

impl World {
    /// Reads every Network and Service, and the reserved ports.
    pub async fn read(store: &Store) -> Result<World, StoreError> {
        let (networks, networks_revision) = store.list::<NetworkSpec>().await?;
        let (services, services_revision) = store.list::<ServiceSpec>().await?;
        let reserved_ports = store
            .get::<ClusterSettingsSpec>(&store.keys().cluster_settings())
            .await?
            .map(|s| s.spec.reserved_ports)
            .unwrap_or_else(default_reserved_ports);
        Ok(World {
            reserved_ports,
            networks: networks
                .into_iter()
                .map(|n| (n.name().to_string(), n))
                .collect(),
            networks_revision,
            services: services
                .into_iter()
                .map(|s| (s.name().to_string(), s))
                .collect(),
            services_revision,
        })
    }

    fn existing(&self, obj: &AnyObject) -> Option<AnyObject> {
        match obj {
            AnyObject::Network(n) => self.networks.get(n.name()).cloned().map(AnyObject::Network),
            AnyObject::Service(s) => self.services.get(s.name()).cloned().map(AnyObject::Service),
            // TODO(issue 15, helper A): secrets and configs.
            AnyObject::Secret(_) | AnyObject::Config(_) => None,
        }
    }

    fn put(&mut self, obj: &AnyObject) {
        match obj {
            AnyObject::Network(n) => {
                self.networks.insert(n.name().to_string(), n.clone());
            }
            AnyObject::Service(s) => {
                self.services.insert(s.name().to_string(), s.clone());
            }
            AnyObject::Secret(_) | AnyObject::Config(_) => {}
        }
    }
}

/// What a change requires of the stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nothing (apply: create or update).
    Any,
    /// It must not exist (create).
    Absent,
    /// It must exist at this revision (replace).
    Revision(i64),
}

/// One object to write.
#[derive(Debug, Clone)]
pub struct Change {
    /// 1-based document number in an apply body.
    pub document: Option<usize>,
    /// The object as the user sent it, defaults applied, status cleared.
    pub object: AnyObject,
    /// The precondition.
    pub expect: Expect,
}

/// What a write did (or would do) to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// It did not exist.
    Created,
    /// Its spec or labels changed.
    Configured,
    /// The same spec and labels were stored already.
    Unchanged,
}

/// One planned (later: written) object.
#[derive(Debug, Clone)]
pub struct Planned {
    /// 1-based document number in an apply body.
    pub document: Option<usize>,
    /// What happens.
    pub action: Action,
    /// The object to store (updates: with the stored uid, status and resourceVersion); after
    /// [`commit`], as stored, with its new resourceVersion.
    pub object: AnyObject,
}

/// Plans `changes` against `world`: merges each with what is stored and checks every rule.
/// Pure; the first failing precondition, else all invalid fields (422), else all port
/// conflicts (409).
pub fn plan(world: &World, changes: Vec<Change>) -> Result<Vec<Planned>, Status> {
    let mut invalid = Vec::new();
    let mut seen: BTreeMap<String, Option<usize>> = BTreeMap::new();
    let mut planned = Vec::new();
    for change in changes {
        let reference = change.object.reference();
        if let Some(first) = seen.insert(reference.clone(), change.document) {
            let where_ = first
                .map(|d| format!("document {d}"))
                .unwrap_or_else(|| "this body".into());
            invalid.push(detail(
                change.document,
                &change.object,
                "metadata.name",
                format!("{reference} is also in {where_}; each object may appear once"),
            ));
            continue;
        }
        if matches!(change.object, AnyObject::Secret(_) | AnyObject::Config(_)) {
            invalid.push(detail(
                change.document,
                &change.object,
                "kind",
                "not supported yet".into(),
            ));
            continue;
        }
        let existing = world.existing(&change.object);
        if let AnyObject::Network(n) = &change.object {
            // The system's network: refused before any other check (a create would
            // otherwise be "already exists"); only an apply that changes nothing passes.
            let reserved = rules::check_network_name(n.name());
            let unchanged_apply = change.expect == Expect::Any
                && existing
                    .as_ref()
                    .is_some_and(|e| merge(Some(e), change.object.clone()).0 == Action::Unchanged);
            if !reserved.is_empty() && !unchanged_apply {
                invalid.extend(
                    reserved
                        .into_iter()
                        .map(|e| detail(change.document, &change.object, &e.field, e.message)),
                );
                continue;
            }
        }
        check_expectation(&change, existing.as_ref())?;
        let (action, object) = merge(existing.as_ref(), change.object);
        planned.push(Planned {
            document: change.document,
            action,
            object,
        });
    }

    // The world as it will be once every change is written.
    let mut after = world.clone();
    for p in &planned {
        after.put(&p.object);
    }
    let mut conflicts = Vec::new();
    for (i, p) in planned.iter().enumerate() {
        if p.action == Action::Unchanged {
            continue;
        }
        // Compare against everything but the changed objects that come later in the body:
        // each clash is reported once, on the later document.
        let later: BTreeSet<String> = planned[i + 1..]
            .iter()
            .filter(|q| q.action != Action::Unchanged)
            .map(|q| q.object.reference())
            .collect();
        let at = |errs: Vec<FieldError>| {
            errs.into_iter()
                .map(|e| detail(p.document, &p.object, &e.field, e.message))
        };
        match &p.object {
            AnyObject::Network(n) => {
                invalid.extend(at(rules::check_network_change(
                    world.networks.get(n.name()),
                    n,
                )));
                let others = after
                    .networks
                    .values()
                    .filter(|o| !later.contains(&format!("network/{}", o.name())));
                invalid.extend(at(rules::check_subnet(n, others)));
            }
            AnyObject::Service(s) => {
                invalid.extend(at(shoal_api_types::settings::check_reserved_ports(
                    &s.spec.ports,
                    &world.reserved_ports,
                )));
                invalid.extend(at(rules::check_service_networks(s, &after.networks)));
                let others = after
                    .services
                    .values()
                    .filter(|o| !later.contains(&format!("service/{}", o.name())));
                conflicts.extend(at(rules::check_ports(s, others)));
            }
            AnyObject::Secret(_) | AnyObject::Config(_) => {}
        }
    }
    if !invalid.is_empty() {
        let what = match planned.as_slice() {
            [one] if one.document.is_none() => format!("{} is invalid", one.object.reference()),
            _ => "nothing was written".to_string(),
        };
        return Err(Status::invalid(what, invalid));
    }
    if !conflicts.is_empty() {
        return Err(conflict_status(conflicts));
    }
    Ok(planned)
}

fn detail(document: Option<usize>, obj: &AnyObject, field: &str, message: String) -> StatusDetail {
    StatusDetail {
        field: field.to_string(),
        message,
        document,
        object: document.map(|_| obj.reference()),
    }
}

/// A 409 whose message is the first clash, e.g. `spec.ports[0].published: port 8080/tcp is
/// already published by service web`.
fn conflict_status(details: Vec<StatusDetail>) -> Status {
    let mut message = details[0].to_string();
    if details.len() > 1 {
        message.push_str(&format!(" (and {} more)", details.len() - 1));
    }
    Status {
        code: 409,
        reason: "Conflict".into(),
        message,
        details,
    }
}

fn check_expectation(change: &Change, existing: Option<&AnyObject>) -> Result<(), Status> {
    let obj = &change.object;
    match (change.expect, existing) {
        (Expect::Absent, Some(_)) => Err(Status::already_exists(obj.kind(), obj.name())),
        (Expect::Revision(_), None) => Err(Status::not_found(obj.kind(), obj.name())),
        (Expect::Revision(want), Some(cur)) => {
            let now = revision_of(cur);
            if now != want {
                return Err(Status::conflict(format!(
                    "{} {:?} was changed since resourceVersion {want} (it is now at {now}); read it again and retry",
                    obj.kind().to_lowercase(),
                    obj.name()
                )));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn revision_of(obj: &AnyObject) -> i64 {
    match obj {
        AnyObject::Network(n) => n.metadata.revision().unwrap_or(0),
        AnyObject::Service(s) => s.metadata.revision().unwrap_or(0),
        AnyObject::Secret(s) => s.metadata.revision().unwrap_or(0),
        AnyObject::Config(c) => c.metadata.revision().unwrap_or(0),
    }
}

/// The object to store and the action, from what is stored and what was asked for.
fn merge(existing: Option<&AnyObject>, wanted: AnyObject) -> (Action, AnyObject) {
    match (existing, wanted) {
        (Some(AnyObject::Network(old)), AnyObject::Network(new)) => {
            let (a, o) = merge_typed(old, new);
            (a, AnyObject::Network(o))
        }
        (Some(AnyObject::Service(old)), AnyObject::Service(new)) => {
            let (a, o) = merge_typed(old, new);
            (a, AnyObject::Service(o))
        }
        (_, new) => (Action::Created, clean_new(new)),
    }
}

/// An update keeps uid, creationTimestamp, status and resourceVersion; takes spec and labels;
/// bumps generation if the spec changed.
fn merge_typed<S: Resource>(old: &Object<S>, new: Object<S>) -> (Action, Object<S>) {
    if old.spec == new.spec && old.metadata.labels == new.metadata.labels {
        return (Action::Unchanged, old.clone());
    }
    let mut next = old.clone();
    if next.spec != new.spec {
        next.metadata.generation = old.metadata.generation + 1;
        S::spec_changed(&old.spec, &mut next.status);
    }
    next.spec = new.spec;
    next.metadata.labels = new.metadata.labels;
    (Action::Configured, next)
}

fn clean_new(obj: AnyObject) -> AnyObject {
    fn clean<S: Resource>(mut o: Object<S>) -> Object<S> {
        o.metadata.uid.clear();
        o.metadata.resource_version = None;
        o.metadata.creation_timestamp = None;
        o.metadata.generation = 0;
        o.status = Default::default();
        o
    }
    match obj {
        AnyObject::Network(n) => AnyObject::Network(clean(n)),
        AnyObject::Service(s) => AnyObject::Service(clean(s)),
        AnyObject::Secret(s) => AnyObject::Secret(clean(s)),
        AnyObject::Config(c) => AnyObject::Config(clean(c)),
    }
}

/// Writes every created or configured object of `planned` in one transaction, with
/// preconditions that keep the plan's checks true: the networks (services) read have not
/// changed if a network (a service publishing ports) is written, and every network a written
/// service joins still exists. Returns the plan with stored objects and resourceVersions.
pub async fn commit(
    store: &Store,
    world: &World,
    mut planned: Vec<Planned>,
) -> Result<Vec<Planned>, StoreError> {
    let mut batch = Batch::new();
    let created_networks: BTreeSet<String> = planned
        .iter()
        .filter_map(|p| match (&p.action, &p.object) {
            (Action::Created, AnyObject::Network(n)) => Some(n.name().to_string()),
            _ => None,
        })
        .collect();
    let mut joined = BTreeSet::new();
    let (mut networks_written, mut ports_written) = (false, false);
    for p in planned.iter_mut() {
        match (&p.action, &mut p.object) {
            (Action::Unchanged, _) => continue,
            (_, AnyObject::Network(_)) => networks_written = true,
            (_, AnyObject::Secret(_) | AnyObject::Config(_)) => continue,
            (_, AnyObject::Service(s)) => {
                ports_written |= !s.spec.ports.is_empty();
                joined.extend(s.spec.networks.iter().map(|a| a.name.clone()));
            }
        }
        match (&p.action, &mut p.object) {
            (Action::Created, AnyObject::Network(n)) => *n = batch.create(store, n),
            (Action::Created, AnyObject::Service(s)) => *s = batch.create(store, s),
            (_, AnyObject::Network(n)) => batch.update(store, n),
            (_, AnyObject::Service(s)) => batch.update(store, s),
            (_, AnyObject::Secret(_) | AnyObject::Config(_)) => {}
        }
    }
    if batch.is_empty() {
        return Ok(planned);
    }
    let keys = store.keys();
    if networks_written {
        batch.require_unchanged_since(&keys.prefix::<NetworkSpec>(), world.networks_revision);
    }
    if ports_written {
        batch.require_unchanged_since(&keys.prefix::<ServiceSpec>(), world.services_revision);
    }
    for name in joined.difference(&created_networks) {
        batch.require_present(keys.named::<NetworkSpec>(name));
    }
    let revision = batch.commit(store).await?;
    Ok(planned
        .into_iter()
        .map(|p| match (p.action, p.object) {
            (Action::Unchanged, object) => Planned { object, ..p },
            (_, AnyObject::Network(n)) => Planned {
                object: AnyObject::Network(stored(n, revision)),
                ..p
            },
            (_, AnyObject::Service(s)) => Planned {
                object: AnyObject::Service(stored(s, revision)),
                ..p
            },
            (_, object) => Planned { object, ..p },
        })
        .collect())
}

/// Plans and commits `changes`, re-reading and re-planning after a lost race. With
/// `dry_run`, plans only.
pub async fn write(store: &Store, changes: Vec<Change>, dry_run: bool) -> ApiResult<Vec<Planned>> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let world = World::read(store).await?;
        let planned = plan(&world, changes.clone())?;
        if dry_run {
            return Ok(planned);
        }
        match commit(store, &world, planned).await {
            Ok(done) => return Ok(done),
            Err(StoreError::Conflict(msg)) => last = Some(msg),
            Err(e) => return Err(e.into()),
        }
    }
    Err(gave_up(last))
}

/// Plans a rollback: `rolled` is the stored service after [`Service::rollback`]. The
/// previous spec passes the same rules as a replace at the revision read (a port or network
/// may have been taken or removed since it was current); the object stored is `rolled`
/// itself, whose status says the rollback started.
pub fn plan_rollback(world: &World, rolled: &Service) -> Result<Vec<Planned>, Status> {
    let change = Change {
        document: None,
        object: AnyObject::Service(rolled.clone()),
        expect: Expect::Revision(rolled.metadata.revision().unwrap_or(0)),
    };
    let mut planned = plan(world, vec![change])?;
    // `plan` merged it as a spec change (previous spec kept, update status reset); the
    // rollback's own status is the one to store.
    for p in &mut planned {
        p.action = Action::Configured;
        p.object = AnyObject::Service(rolled.clone());
    }
    Ok(planned)
}

/// `service rollback`: reads the service, swaps its spec with the previous one
/// ([`Service::rollback`]: generation bumped, `updateStatus` `rollback_started`) and writes
/// it at the revision read, re-reading after a lost race. 404 for an unknown service, 409
/// when there is no previous spec. With `dry_run`, plans only.
pub async fn rollback(
    store: &Store,
    name: &str,
    now: chrono::DateTime<chrono::Utc>,
    dry_run: bool,
) -> ApiResult<Service> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let world = World::read(store).await?;
        let Some(mut rolled) = world.services.get(name).cloned() else {
            return Err(Status::not_found(ServiceSpec::KIND, name).into());
        };
        rolled.rollback(now).map_err(Status::conflict)?;
        let planned = plan_rollback(&world, &rolled)?;
        if dry_run {
            return Ok(rolled);
        }
        match commit(store, &world, planned).await {
            Ok(mut done) => match done.pop().map(|p| p.object) {
                Some(AnyObject::Service(s)) => return Ok(s),
                _ => return Err(Status::internal("a rollback wrote no service").into()),
            },
            Err(StoreError::Conflict(msg)) => last = Some(msg),
            Err(e) => return Err(e.into()),
        }
    }
    Err(gave_up(last))
}

fn gave_up(last: Option<String>) -> ApiError {
    Status::conflict(format!(
        "gave up after {ATTEMPTS} attempts because other writes kept changing the same objects; retry ({})",
        last.unwrap_or_default()
    ))
    .into()
}

/// Deletes a network unless a service uses it (409 naming them), race-free: the delete
/// commits only if no service was created or changed since the services were read. The
/// `ingress` network is the system's: 422 on `metadata.name`.
pub async fn delete_network(
    store: &Store,
    name: &str,
    expected: Option<i64>,
    dry_run: bool,
) -> ApiResult<Network> {
    if let [err, ..] = rules::check_network_name(name).as_slice() {
        return Err(Status::invalid(
            format!("network {name:?} cannot be deleted"),
            vec![StatusDetail {
                field: err.field.clone(),
                message: err.message.clone(),
                document: None,
                object: None,
            }],
        )
        .into());
    }
    let key = store.keys().named::<NetworkSpec>(name);
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let (services, services_revision) = store.list::<ServiceSpec>().await?;
        let Some(net) = store.get::<NetworkSpec>(&key).await? else {
            return Err(Status::not_found(NetworkSpec::KIND, name).into());
        };
        let current = net.metadata.revision().unwrap_or(0);
        if let Some(want) = expected.filter(|w| *w != current) {
            return Err(Status::conflict(format!(
                "network {name:?} was changed since resourceVersion {want} (it is now at {current}); read it again and retry"
            ))
            .into());
        }
        let users = rules::services_using(&net, &services);
        if !users.is_empty() {
            return Err(Status::conflict(rules::in_use_message(name, &users)).into());
        }
        if dry_run {
            return Ok(net);
        }
        let mut batch = Batch::new();
        batch.delete(store, &net);
        batch.require_unchanged_since(&store.keys().prefix::<ServiceSpec>(), services_revision);
        match batch.commit(store).await {
            Ok(revision) => return Ok(stored(net, revision)),
            Err(StoreError::Conflict(msg)) => last = Some(msg),
            Err(e) => return Err(e.into()),
        }
    }
    Err(gave_up(last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::{NetworkAttachmentConfig, PortConfig};

    fn net(name: &str, subnet: Option<&str>) -> Network {
        Network::new(
            name,
            NetworkSpec {
                driver: "overlay".into(),
                subnet: subnet.map(Into::into),
                ..Default::default()
            },
        )
    }

    fn svc(name: &str, nets: &[&str], port: Option<u32>) -> Service {
        let mut s = Service::new(
            name,
            ServiceSpec {
                image: "busybox".into(),
                replicas: Some(1),
                networks: nets
                    .iter()
                    .map(|n| NetworkAttachmentConfig {
                        name: n.to_string(),
                        aliases: vec![],
                    })
                    .collect(),
                ports: port
                    .map(|p| PortConfig {
                        published: p,
                        target: 80,
                        ..Default::default()
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            },
        );
        s.metadata.labels.insert("app".into(), name.into());
        s
    }

    fn stored_as<S: Resource>(mut o: Object<S>, rev: i64) -> Object<S> {
        o.metadata.uid = format!("uid-{}", o.name());
        o.metadata.generation = 1;
        o.metadata.resource_version = Some(rev.to_string());
        o
    }

    fn world(networks: Vec<Network>, services: Vec<Service>) -> World {
        World {
            networks: networks
                .into_iter()
                .map(|n| (n.name().to_string(), stored_as(n, 5)))
                .collect(),
            networks_revision: 10,
            services: services
                .into_iter()
                .map(|s| (s.name().to_string(), stored_as(s, 6)))
                .collect(),
            services_revision: 10,
            reserved_ports: default_reserved_ports(),
        }
    }

    fn apply(objs: Vec<AnyObject>) -> Vec<Change> {
        objs.into_iter()
            .enumerate()
            .map(|(i, object)| Change {
                document: Some(i + 1),
                object,
                expect: Expect::Any,
            })
            .collect()
    }

    #[test]
    fn plan_reports_created_configured_and_unchanged() {
        let w = world(
            vec![net("appnet", None)],
            vec![svc("api", &["appnet"], None)],
        );
        let mut scaled = svc("api", &["appnet"], None);
        scaled.spec.replicas = Some(3);
        let out = plan(
            &w,
            apply(vec![
                AnyObject::Network(net("appnet", None)),
                AnyObject::Service(scaled),
                AnyObject::Service(svc("worker", &["appnet"], None)),
            ]),
        )
        .unwrap();
        let actions: Vec<Action> = out.iter().map(|p| p.action).collect();
        assert_eq!(
            actions,
            [Action::Unchanged, Action::Configured, Action::Created]
        );
        let AnyObject::Service(api) = &out[1].object else {
            panic!()
        };
        assert_eq!(
            (api.metadata.uid.as_str(), api.metadata.generation),
            ("uid-api", 2)
        );
        assert_eq!(
            api.metadata.resource_version.as_deref(),
            Some("6"),
            "updates compare the stored revision"
        );
    }

    #[test]
    fn label_changes_configure_without_bumping_generation() {
        let w = world(vec![], vec![svc("api", &[], None)]);
        let mut relabelled = svc("api", &[], None);
        relabelled
            .metadata
            .labels
            .insert("tier".into(), "front".into());
        let out = plan(&w, apply(vec![AnyObject::Service(relabelled)])).unwrap();
        assert_eq!(out[0].action, Action::Configured);
        let AnyObject::Service(api) = &out[0].object else {
            panic!()
        };
        assert_eq!(api.metadata.generation, 1);
    }

    #[test]
    fn a_spec_change_keeps_the_old_spec_for_rollback_and_resets_the_update_status() {
        let mut stored = svc("api", &[], None);
        stored.status.update_status = Some(shoal_api_types::UpdateStatus {
            state: shoal_api_types::UpdateState::Paused,
            ..Default::default()
        });
        let old_spec = stored.spec.clone();
        let w = world(vec![], vec![stored]);
        let mut changed = svc("api", &[], None);
        changed.spec.image = "busybox:2".into();
        let out = plan(&w, apply(vec![AnyObject::Service(changed)])).unwrap();
        let AnyObject::Service(api) = &out[0].object else {
            panic!()
        };
        assert_eq!(api.status.previous_spec.as_deref(), Some(&old_spec));
        assert_eq!(api.status.update_status, None);
    }

    #[test]
    fn a_rollback_stores_the_swapped_spec_with_its_own_update_status() {
        let mut stored = svc("api", &["appnet"], None);
        let mut old_spec = stored.spec.clone();
        old_spec.image = "busybox:1".into();
        stored.status.previous_spec = Some(Box::new(old_spec.clone()));
        let w = world(vec![net("appnet", None)], vec![stored]);
        let mut rolled = w.services["api"].clone();
        rolled.rollback(chrono::Utc::now()).unwrap();
        let out = plan_rollback(&w, &rolled).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].action, Action::Configured);
        let AnyObject::Service(api) = &out[0].object else {
            panic!()
        };
        assert_eq!(api, &rolled);
        assert_eq!(api.spec, old_spec);
        assert_eq!(
            api.status.update_status.as_ref().map(|u| u.state),
            Some(shoal_api_types::UpdateState::RollbackStarted)
        );
    }

    #[test]
    fn a_rollback_checks_the_previous_spec_against_what_changed_since() {
        // The previous spec joined a network that is gone and published a port that another
        // service took since.
        let mut stored = svc("api", &[], None);
        stored.status.previous_spec = Some(Box::new(svc("api", &["gone"], None).spec));
        let w = world(vec![], vec![stored]);
        let mut rolled = w.services["api"].clone();
        rolled.rollback(chrono::Utc::now()).unwrap();
        let e = plan_rollback(&w, &rolled).unwrap_err();
        assert_eq!(e.code, 422, "{e:?}");
        assert!(
            e.details
                .iter()
                .any(|d| d.field.starts_with("spec.networks")),
            "{e:?}"
        );

        let mut stored = svc("api", &[], None);
        stored.status.previous_spec = Some(Box::new(svc("api", &[], Some(8080)).spec));
        let w = world(vec![], vec![stored, svc("web", &[], Some(8080))]);
        let mut rolled = w.services["api"].clone();
        rolled.rollback(chrono::Utc::now()).unwrap();
        let e = plan_rollback(&w, &rolled).unwrap_err();
        assert_eq!(e.code, 409, "{e:?}");
        assert!(e.message.contains("web"), "{e:?}");
    }

    #[test]
    fn services_may_join_networks_from_the_same_body_in_any_order() {
        let out = plan(
            &world(vec![], vec![]),
            apply(vec![
                AnyObject::Service(svc("api", &["appnet"], None)),
                AnyObject::Network(net("appnet", None)),
            ]),
        )
        .unwrap();
        assert!(out.iter().all(|p| p.action == Action::Created));
    }

    #[test]
    fn plan_reports_every_invalid_document_with_its_number() {
        let err = plan(
            &world(vec![net("taken", Some("10.1.0.0/16"))], vec![]),
            apply(vec![
                AnyObject::Network(net("fine", None)),
                AnyObject::Network(net("clash", Some("10.1.1.0/24"))),
                AnyObject::Service(svc("api", &["nowhere"], None)),
            ]),
        )
        .unwrap_err();
        assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
        let got: Vec<(Option<usize>, &str)> = err
            .details
            .iter()
            .map(|d| (d.document, d.field.as_str()))
            .collect();
        assert_eq!(
            got,
            [(Some(2), "spec.subnet"), (Some(3), "spec.networks[0].name")]
        );
        assert_eq!(err.details[0].object.as_deref(), Some("network/clash"));
    }

    #[test]
    fn two_documents_clashing_are_reported_once_on_the_later_one() {
        let err = plan(
            &world(vec![], vec![]),
            apply(vec![
                AnyObject::Network(net("a", Some("10.1.0.0/24"))),
                AnyObject::Network(net("b", Some("10.1.0.0/16"))),
            ]),
        )
        .unwrap_err();
        assert_eq!(err.details.len(), 1);
        assert_eq!(err.details[0].document, Some(2));
    }

    #[test]
    fn ports_conflicts_are_409_naming_the_other_service() {
        let w = world(vec![], vec![svc("web", &[], Some(8080))]);
        let change = Change {
            document: None,
            object: AnyObject::Service(svc("api", &[], Some(8080))),
            expect: Expect::Absent,
        };
        let err = plan(&w, vec![change]).unwrap_err();
        assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
        assert_eq!(
            err.message,
            "spec.ports[0].published: port 8080/tcp is already published by service web"
        );
    }

    #[test]
    fn a_service_may_take_a_port_another_gives_up_in_the_same_body() {
        let w = world(vec![], vec![svc("web", &[], Some(8080))]);
        let out = plan(
            &w,
            apply(vec![
                AnyObject::Service(svc("api", &[], Some(8080))),
                AnyObject::Service(svc("web", &[], Some(9090))),
            ]),
        );
        assert!(out.is_ok(), "{out:?}");
    }

    #[test]
    fn expectations_give_already_exists_not_found_and_conflict() {
        let w = world(vec![net("appnet", None)], vec![]);
        let one = |expect, name: &str| {
            plan(
                &w,
                vec![Change {
                    document: None,
                    object: AnyObject::Network(net(name, None)),
                    expect,
                }],
            )
            .unwrap_err()
        };
        assert_eq!(one(Expect::Absent, "appnet").reason, "AlreadyExists");
        assert_eq!(one(Expect::Revision(5), "other").code, 404);
        let stale = one(Expect::Revision(4), "appnet");
        assert_eq!(stale.code, 409);
        assert!(
            stale
                .message
                .contains("was changed since resourceVersion 4"),
            "{}",
            stale.message
        );
    }

    #[test]
    fn a_service_publishing_a_reserved_port_is_invalid_in_either_mode() {
        use shoal_api_types::{Protocol, PublishMode};
        let mut s = svc("dns", &[], Some(8080));
        s.spec.ports.push(PortConfig {
            published: 4789,
            target: 4789,
            protocol: Protocol::Udp,
            mode: PublishMode::Ingress,
        });
        s.spec.ports.push(PortConfig {
            published: 22,
            target: 22,
            protocol: Protocol::Tcp,
            mode: PublishMode::Host,
        });
        let err = plan(
            &world(vec![], vec![]),
            apply(vec![AnyObject::Service(s.clone())]),
        )
        .unwrap_err();
        assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
        let got: Vec<(&str, &str)> = err
            .details
            .iter()
            .map(|d| (d.field.as_str(), d.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "spec.ports[1].published",
                    "4789/udp is reserved: VXLAN (the overlay's underlay port); reserved ports \
                     are configured with the controller's --reserved-ports"
                ),
                (
                    "spec.ports[2].published",
                    "22/tcp is reserved: SSH; reserved ports are configured with the \
                     controller's --reserved-ports"
                ),
            ]
        );
        // The stored settings decide: with 22 no longer reserved only 4789/udp is refused.
        let mut w = world(vec![], vec![]);
        w.reserved_ports = vec![ReservedPort::udp(4789)];
        let err = plan(&w, apply(vec![AnyObject::Service(s)])).unwrap_err();
        assert_eq!(err.details.len(), 1);
    }

    #[test]
    fn users_cannot_create_or_replace_the_ingress_network() {
        let mut stored = net("ingress", Some("10.255.0.0/16"));
        stored.spec.ingress = true;
        let w = world(vec![stored.clone()], vec![]);
        for (expect, object) in [
            (Expect::Absent, net("ingress", None)),
            (Expect::Revision(5), net("ingress", Some("10.255.0.0/16"))),
            (Expect::Any, net("ingress", None)),
        ] {
            let err = plan(
                &w,
                vec![Change {
                    document: None,
                    object: AnyObject::Network(object),
                    expect,
                }],
            )
            .unwrap_err();
            assert_eq!(
                (err.code, err.reason.as_str()),
                (422, "Invalid"),
                "{expect:?}"
            );
            assert_eq!(err.details[0].field, "metadata.name", "{expect:?}");
            assert!(
                err.message.contains("\"ingress\" is reserved"),
                "{expect:?}: {}",
                err.message
            );
        }
        // Not even on an empty cluster.
        let err = plan(
            &world(vec![], vec![]),
            apply(vec![AnyObject::Network(net("ingress", None))]),
        )
        .unwrap_err();
        assert_eq!(err.details[0].field, "metadata.name");
        // Applying it back unchanged (a dump of every network) changes nothing and passes.
        let out = plan(&w, apply(vec![AnyObject::Network(stored)])).unwrap();
        assert_eq!(out[0].action, Action::Unchanged);
    }

    #[test]
    fn an_object_may_appear_once_per_body() {
        let err = plan(
            &world(vec![], vec![]),
            apply(vec![
                AnyObject::Network(net("a", None)),
                AnyObject::Network(net("a", None)),
            ]),
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
        assert!(
            err.details[0].message.contains("also in document 1"),
            "{}",
            err.details[0].message
        );
    }
}
