//! Writing user-owned objects (Networks, Services, Secrets, Configs) all-or-nothing: read
//! the [`World`] at a revision, [`plan`] every change against it (pure: defaults, merges and
//! every cross-object rule of [`super::rules`]), then [`commit`] all writes in one [`Batch`]
//! (one etcd transaction) whose preconditions make the plan's checks race-free. A lost race
//! re-reads and re-plans a few times; a stale `resourceVersion` the client sent is a 409 at
//! once.
//!
//! Create, replace and apply all go through here, so they share one set of rules. Secrets
//! and Configs ([`super::payloads`]): the payload a write carries is fingerprinted while
//! planning and written (a Secret's sealed under the secrets key) in the same transaction
//! as its object; the object never holds it. An apply with a [`Prune`] selector also
//! deletes, in that transaction, every labelled object the body leaves out.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use shoal_api_types::settings::{default_reserved_ports, ReservedPort};
use shoal_api_types::{
    AnyObject, ClusterSettingsSpec, Config, ConfigSpec, FieldError, Network, NetworkSpec, Object,
    Resource, Secret, SecretSpec, Service, ServiceSpec, Status, StatusDetail,
};
use shoal_store::{stored, Batch, Store, StoreError};

use super::error::{ApiError, ApiResult};
use super::payloads::{self, clean_object, Merge, Payload, Prune, StoredPayload};
use super::rules;
use crate::secrets_key::SecretsKey;

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
    /// Secrets by name (metadata and fingerprint only).
    pub secrets: BTreeMap<String, Secret>,
    /// The revision `secrets` was read at.
    pub secrets_revision: i64,
    /// Configs by name.
    pub configs: BTreeMap<String, Config>,
    /// The revision `configs` was read at.
    pub configs_revision: i64,
    /// The key that fingerprints payloads (set by [`write`]; planning a Secret or Config
    /// without it is an internal error).
    pub key: Option<std::sync::Arc<SecretsKey>>,
    /// The published ports no service may take: the stored ClusterSettings' (the
    /// leader's `--reserved-ports`), or the defaults until a leader published them.
    pub reserved_ports: Vec<ReservedPort>,
}

impl World {
    /// Reads every Network, Service, Secret and Config, and the reserved ports.
    pub async fn read(store: &Store) -> Result<World, StoreError> {
        let (networks, networks_revision) = store.list::<NetworkSpec>().await?;
        let (services, services_revision) = store.list::<ServiceSpec>().await?;
        let (secrets, secrets_revision) = store.list::<SecretSpec>().await?;
        let (configs, configs_revision) = store.list::<ConfigSpec>().await?;

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
            secrets: by_name(secrets),
            secrets_revision,
            configs: by_name(configs),
            configs_revision,
            key: None,
        })
    }

    fn existing(&self, obj: &AnyObject) -> Option<AnyObject> {
        match obj {
            AnyObject::Network(n) => self.networks.get(n.name()).cloned().map(AnyObject::Network),
            AnyObject::Service(s) => self.services.get(s.name()).cloned().map(AnyObject::Service),
            AnyObject::Secret(s) => self.secrets.get(s.name()).cloned().map(AnyObject::Secret),
            AnyObject::Config(c) => self.configs.get(c.name()).cloned().map(AnyObject::Config),
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
            AnyObject::Secret(s) => {
                self.secrets.insert(s.name().to_string(), s.clone());
            }
            AnyObject::Config(c) => {
                self.configs.insert(c.name().to_string(), c.clone());
            }
        }
    }

    fn remove(&mut self, obj: &AnyObject) {
        match obj {
            AnyObject::Network(n) => self.networks.remove(n.name()).map(|_| ()),
            AnyObject::Service(s) => self.services.remove(s.name()).map(|_| ()),
            AnyObject::Secret(s) => self.secrets.remove(s.name()).map(|_| ()),
            AnyObject::Config(c) => self.configs.remove(c.name()).map(|_| ()),
        };
    }
}

fn by_name<S: Resource>(items: Vec<Object<S>>) -> BTreeMap<String, Object<S>> {
    items
        .into_iter()
        .map(|o| (o.name().to_string(), o))
        .collect()
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
    /// Deleted by an apply with `?prune=`: it carries the label and the body left it out.
    Pruned,
}

/// One planned (later: written) object.
#[derive(Debug, Clone)]
pub struct Planned {
    /// 1-based document number in an apply body.
    pub document: Option<usize>,
    /// What happens.
    pub action: Action,
    /// The object to store (updates: with the stored uid, status and resourceVersion); after
    /// [`commit`], as stored, with its new resourceVersion. Pruned: the object deleted.
    pub object: AnyObject,
    /// A created Secret's or Config's payload, written with it.
    pub payload: Option<Payload>,
}

/// Plans `changes` against `world`: merges each with what is stored and checks every rule.
/// Pure; the first failing precondition, else all invalid fields (422), else all port
/// conflicts (409).
pub fn plan(world: &World, changes: Vec<Change>) -> Result<Vec<Planned>, Status> {
    plan_pruning(world, changes, None)
}

/// [`plan`], and with `prune`, also deletes every Service, Network, Secret and Config that
/// carries the selector's label and is not in `changes` (after them, action
/// [`Action::Pruned`]). Removing something a remaining service still uses is refused: 422
/// on a service of the body, else 409 naming the services.
pub fn plan_pruning(
    world: &World,
    changes: Vec<Change>,
    prune: Option<&Prune>,
) -> Result<Vec<Planned>, Status> {
    // A create or replace names its object in the message; an apply counts documents.
    let single = match changes.as_slice() {
        [one] if one.document.is_none() => Some(one.object.reference()),
        _ => None,
    };
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
        let document = change.document;
        let original = change.object.clone();
        match merge_any(world, existing.as_ref(), change.object) {
            Ok((action, object, payload)) => planned.push(Planned {
                document,
                action,
                object,
                payload,
            }),
            Err(errs) => invalid.extend(
                errs.into_iter()
                    .map(|e| detail(document, &original, &e.field, e.message)),
            ),
        }
    }
    if let Some(prune) = prune {
        planned.extend(
            pruned(world, &seen, prune)
                .into_iter()
                .map(|object| Planned {
                    document: None,
                    action: Action::Pruned,
                    object,
                    payload: None,
                }),
        );
    }

    // The world as it will be once every change is written.
    let mut after = world.clone();
    for p in &planned {
        match p.action {
            Action::Pruned => after.remove(&p.object),
            _ => after.put(&p.object),
        }
    }
    let mut conflicts = Vec::new();
    conflicts.extend(still_used(&planned, &after));
    for (i, p) in planned.iter().enumerate() {
        if matches!(p.action, Action::Unchanged | Action::Pruned) {
            continue;
        }
        // Compare against everything but the changed objects that come later in the body:
        // each clash is reported once, on the later document.
        let later: BTreeSet<String> = planned[i + 1..]
            .iter()
            .filter(|q| !matches!(q.action, Action::Unchanged | Action::Pruned))
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
                invalid.extend(at(rules::check_service_payloads(
                    s,
                    &after.secrets,
                    &after.configs,
                )));
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
        let what = match single {
            Some(one) => format!("{one} is invalid"),
            None => "nothing was written".to_string(),
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

/// [`merge`] for every kind: Secrets and Configs through [`payloads::merge_payload`] (with
/// the bytes to store for a create), field errors for their `spec.data`.
fn merge_any(
    world: &World,
    existing: Option<&AnyObject>,
    wanted: AnyObject,
) -> Result<(Action, AnyObject, Option<Payload>), Vec<FieldError>> {
    let key = world.key.as_deref();
    match (existing, wanted) {
        (old, AnyObject::Secret(new)) => {
            let old = match old {
                Some(AnyObject::Secret(o)) => Some(o),
                _ => None,
            };
            payloads::merge_payload(old, new, key)
                .map(|(a, o, p)| (action(a), AnyObject::Secret(o), p))
                .map_err(|e| vec![e])
        }
        (old, AnyObject::Config(new)) => {
            let old = match old {
                Some(AnyObject::Config(o)) => Some(o),
                _ => None,
            };
            payloads::merge_payload(old, new, key)
                .map(|(a, o, p)| (action(a), AnyObject::Config(o), p))
                .map_err(|e| vec![e])
        }
        (old, new) => {
            let (a, o) = merge(old, new);
            Ok((a, o, None))
        }
    }
}

fn action(m: Merge) -> Action {
    match m {
        Merge::Created => Action::Created,
        Merge::Configured => Action::Configured,
        Merge::Unchanged => Action::Unchanged,
    }
}

fn clean_new(obj: AnyObject) -> AnyObject {
    match obj {
        AnyObject::Network(n) => AnyObject::Network(clean_object(n)),
        AnyObject::Service(s) => AnyObject::Service(clean_object(s)),
        AnyObject::Secret(s) => AnyObject::Secret(clean_object(s)),
        AnyObject::Config(c) => AnyObject::Config(clean_object(c)),
    }
}

/// Writes every created, configured or pruned object of `planned` in one transaction (a
/// created Secret's or Config's payload with it, a pruned one's removed with it), with
/// preconditions that keep the plan's checks true: the networks (services) read have not
/// changed if a network (a service publishing ports) is written; no service changed if a
/// network, secret or config is pruned; every network, secret and config a written service
/// references still exists. Returns the plan with stored objects and resourceVersions.
pub async fn commit(
    store: &Store,
    world: &World,
    mut planned: Vec<Planned>,
) -> Result<Vec<Planned>, StoreError> {
    let keys = store.keys();
    let mut batch = Batch::new();
    let created = |kind: &str| -> BTreeSet<String> {
        planned
            .iter()
            .filter(|p| p.action == Action::Created && p.object.kind() == kind)
            .map(|p| p.object.name().to_string())
            .collect()
    };
    let (created_networks, created_secrets, created_configs) = (
        created(NetworkSpec::KIND),
        created(SecretSpec::KIND),
        created(ConfigSpec::KIND),
    );
    let (mut joined, mut secrets_used, mut configs_used) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let (mut networks_written, mut ports_written, mut used_removed) = (false, false, false);
    for p in planned.iter_mut() {
        let create = p.action == Action::Created;
        match (p.action, &mut p.object) {
            (Action::Unchanged, _) => {}
            (Action::Pruned, AnyObject::Service(s)) => batch.delete(store, s),
            (Action::Pruned, AnyObject::Network(n)) => {
                used_removed = true;
                batch.delete(store, n);
            }
            (Action::Pruned, AnyObject::Secret(s)) => {
                used_removed = true;
                batch.delete(store, s);
                batch.remove_raw(keys.payload::<SecretSpec>(s.name()));
            }
            (Action::Pruned, AnyObject::Config(c)) => {
                used_removed = true;
                batch.delete(store, c);
                batch.remove_raw(keys.payload::<ConfigSpec>(c.name()));
            }
            (_, AnyObject::Network(n)) => {
                networks_written = true;
                if create {
                    *n = batch.create(store, n);
                } else {
                    batch.update(store, n);
                }
            }
            (_, AnyObject::Service(s)) => {
                ports_written |= !s.spec.ports.is_empty();
                joined.extend(s.spec.networks.iter().map(|a| a.name.clone()));
                secrets_used.extend(s.spec.secrets.iter().map(|r| r.source.clone()));
                configs_used.extend(s.spec.configs.iter().map(|r| r.source.clone()));
                if create {
                    *s = batch.create(store, s);
                } else {
                    batch.update(store, s);
                }
            }
            (_, AnyObject::Secret(s)) => {
                if create {
                    *s = batch.create(store, s);
                } else {
                    batch.update(store, s);
                }
                if let Some(payload) = &p.payload {
                    batch.put_raw(keys.payload::<SecretSpec>(s.name()), payload.0.clone());
                }
            }
            (_, AnyObject::Config(c)) => {
                if create {
                    *c = batch.create(store, c);
                } else {
                    batch.update(store, c);
                }
                if let Some(payload) = &p.payload {
                    batch.put_raw(keys.payload::<ConfigSpec>(c.name()), payload.0.clone());
                }
            }
        }
    }
    if batch.is_empty() {
        return Ok(planned);
    }
    if networks_written {
        batch.require_unchanged_since(&keys.prefix::<NetworkSpec>(), world.networks_revision);
    }
    if ports_written || used_removed {
        batch.require_unchanged_since(&keys.prefix::<ServiceSpec>(), world.services_revision);
    }
    for name in joined.difference(&created_networks) {
        batch.require_present(keys.named::<NetworkSpec>(name));
    }
    for name in secrets_used.difference(&created_secrets) {
        batch.require_present(keys.named::<SecretSpec>(name));
    }
    for name in configs_used.difference(&created_configs) {
        batch.require_present(keys.named::<ConfigSpec>(name));
    }
    let revision = batch.commit(store).await?;
    Ok(planned
        .into_iter()
        .map(|p| match (p.action, p.object) {
            (Action::Unchanged | Action::Pruned, object) => Planned { object, ..p },
            (_, AnyObject::Network(n)) => Planned {
                object: AnyObject::Network(stored(n, revision)),
                ..p
            },
            (_, AnyObject::Service(s)) => Planned {
                object: AnyObject::Service(stored(s, revision)),
                ..p
            },
            (_, AnyObject::Secret(s)) => Planned {
                object: AnyObject::Secret(stored(s, revision)),
                ..p
            },
            (_, AnyObject::Config(c)) => Planned {
                object: AnyObject::Config(stored(c, revision)),
                ..p
            },
        })
        .collect())
}

/// Plans and commits `changes`, re-reading and re-planning after a lost race. With
/// `dry_run`, plans only. `key` fingerprints and seals payloads.
pub async fn write(
    store: &Store,
    key: std::sync::Arc<SecretsKey>,
    changes: Vec<Change>,
    dry_run: bool,
) -> ApiResult<Vec<Planned>> {
    write_pruning(store, key, changes, None, dry_run).await
}

/// [`write`] with apply's [`Prune`] selector (see [`plan_pruning`]).
pub async fn write_pruning(
    store: &Store,
    key: std::sync::Arc<SecretsKey>,
    changes: Vec<Change>,
    prune: Option<&Prune>,
    dry_run: bool,
) -> ApiResult<Vec<Planned>> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let mut world = World::read(store).await?;
        world.key = Some(key.clone());
        let planned = plan_pruning(&world, changes.clone(), prune)?;
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

pub(super) fn gave_up(last: Option<String>) -> ApiError {
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

/// The objects an apply with `prune` deletes: those carrying its label whose reference
/// (`kind/name`) is not in `in_body`; services first. The system's networks never.
pub fn pruned(
    world: &World,
    in_body: &BTreeMap<String, Option<usize>>,
    prune: &Prune,
) -> Vec<AnyObject> {
    let mut out: Vec<AnyObject> = Vec::new();
    out.extend(
        world
            .services
            .values()
            .filter(|o| prune.selects(o))
            .cloned()
            .map(AnyObject::Service),
    );
    out.extend(
        world
            .networks
            .values()
            .filter(|n| prune.selects(n))
            .filter(|n| {
                !n.spec.ingress
                    && shoal_api_types::network::reserved_network_name(n.name()).is_none()
            })
            .cloned()
            .map(AnyObject::Network),
    );
    out.extend(
        world
            .secrets
            .values()
            .filter(|o| prune.selects(o))
            .cloned()
            .map(AnyObject::Secret),
    );
    out.extend(
        world
            .configs
            .values()
            .filter(|o| prune.selects(o))
            .cloned()
            .map(AnyObject::Config),
    );
    out.retain(|o| !in_body.contains_key(&o.reference()));
    out
}

/// 409s for pruned Networks, Secrets and Configs that services staying as they are (not in
/// the body, or unchanged in it) still use. Services the body creates or changes are
/// checked by the usual rules (422 at the reference).
pub fn still_used(planned: &[Planned], after: &World) -> Vec<StatusDetail> {
    let written: BTreeSet<String> = planned
        .iter()
        .filter(|p| matches!(p.action, Action::Created | Action::Configured))
        .map(|p| p.object.reference())
        .collect();
    let staying: Vec<&Service> = after
        .services
        .values()
        .filter(|s| !written.contains(&format!("service/{}", s.name())))
        .collect();
    let mut out = Vec::new();
    for p in planned.iter().filter(|p| p.action == Action::Pruned) {
        let message = match &p.object {
            AnyObject::Network(n) => {
                let users = rules::services_using(
                    n,
                    &staying.iter().map(|s| (*s).clone()).collect::<Vec<_>>(),
                );
                (!users.is_empty()).then(|| rules::in_use_message(n.name(), &users))
            }
            AnyObject::Secret(s) => {
                let users =
                    payloads::services_using::<SecretSpec>(s.name(), staying.iter().copied());
                (!users.is_empty()).then(|| payloads::in_use_message("secret", s.name(), &users))
            }
            AnyObject::Config(c) => {
                let users =
                    payloads::services_using::<ConfigSpec>(c.name(), staying.iter().copied());
                (!users.is_empty()).then(|| payloads::in_use_message("config", c.name(), &users))
            }
            AnyObject::Service(_) => None,
        };
        if let Some(message) = message {
            out.push(StatusDetail {
                field: String::new(),
                message: format!("cannot prune {}: {message}", p.object.reference()),
                document: None,
                object: None,
            });
        }
    }
    out
}

/// Deletes a Secret or Config (and its stored payload) unless a service's spec references
/// it (409 naming them), race-free: the delete commits only if no service was created or
/// changed since the services were read.
pub async fn delete_payload<S: StoredPayload>(
    store: &Store,
    name: &str,
    expected: Option<i64>,
    dry_run: bool,
) -> ApiResult<Object<S>> {
    let kind = S::KIND.to_lowercase();
    let key = store.keys().named::<S>(name);
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let (services, services_revision) = store.list::<ServiceSpec>().await?;
        let Some(obj) = store.get::<S>(&key).await? else {
            return Err(Status::not_found(S::KIND, name).into());
        };
        let current = obj.metadata.revision().unwrap_or(0);
        if let Some(want) = expected.filter(|w| *w != current) {
            return Err(Status::conflict(format!(
                "{kind} {name:?} was changed since resourceVersion {want} (it is now at {current}); read it again and retry"
            ))
            .into());
        }
        let users = payloads::services_using::<S>(name, &services);
        if !users.is_empty() {
            return Err(Status::conflict(payloads::in_use_message(S::KIND, name, &users)).into());
        }
        if dry_run {
            return Ok(obj);
        }
        let mut batch = Batch::new();
        batch.delete(store, &obj);
        batch.remove_raw(store.keys().payload::<S>(name));
        batch.require_unchanged_since(&store.keys().prefix::<ServiceSpec>(), services_revision);
        match batch.commit(store).await {
            Ok(revision) => return Ok(stored(obj, revision)),
            Err(StoreError::Conflict(msg)) => last = Some(msg),
            Err(e) => return Err(e.into()),
        }
    }
    Err(gave_up(last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::payloads::Prune;
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
            key: Some(std::sync::Arc::new(SecretsKey::from_bytes(&[3; 32]))),
            ..Default::default()
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
            ..Default::default()
        });
        s.spec.ports.push(PortConfig {
            published: 22,
            target: 22,
            protocol: Protocol::Tcp,
            mode: PublishMode::Host,
            ..Default::default()
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

    fn secret(name: &str, data: Option<&[u8]>) -> AnyObject {
        AnyObject::Secret(shoal_api_types::Secret::new(
            name,
            SecretSpec {
                data: data.map(shoal_api_types::payload::encode_payload),
            },
        ))
    }

    fn with_secret(mut s: Service, name: &str) -> Service {
        s.spec.secrets.push(shoal_api_types::SecretReference {
            source: name.into(),
            target: name.into(),
            ..Default::default()
        });
        s
    }

    fn labelled(mut obj: AnyObject, stack: &str) -> AnyObject {
        let labels = match &mut obj {
            AnyObject::Network(o) => &mut o.metadata.labels,
            AnyObject::Service(o) => &mut o.metadata.labels,
            AnyObject::Secret(o) => &mut o.metadata.labels,
            AnyObject::Config(o) => &mut o.metadata.labels,
        };
        labels.insert("shoal.io/stack".into(), stack.into());
        obj
    }

    /// `world` after planning and "storing" `objs` (revision 5).
    fn stored_world(objs: Vec<AnyObject>) -> World {
        let mut w = world(vec![], vec![]);
        for p in plan(&w.clone(), apply(objs)).unwrap() {
            let mut o = p.object;
            match &mut o {
                AnyObject::Network(n) => n.metadata.resource_version = Some("5".into()),
                AnyObject::Service(s) => s.metadata.resource_version = Some("5".into()),
                AnyObject::Secret(s) => s.metadata.resource_version = Some("5".into()),
                AnyObject::Config(c) => c.metadata.resource_version = Some("5".into()),
            }
            w.put(&o);
        }
        w
    }

    #[test]
    fn services_may_reference_secrets_from_the_same_body_and_never_missing_ones() {
        let out = plan(
            &world(vec![], vec![]),
            apply(vec![
                AnyObject::Service(with_secret(svc("api", &[], None), "pw")),
                secret("pw", Some(b"hunter2")),
            ]),
        )
        .unwrap();
        assert!(out.iter().all(|p| p.action == Action::Created));
        let AnyObject::Secret(pw) = &out[1].object else {
            panic!()
        };
        assert_eq!((pw.spec.data.as_deref(), pw.status.size), (None, 7));
        assert!(out[1].payload.is_some() && out[0].payload.is_none());

        let err = plan(
            &world(vec![], vec![]),
            apply(vec![AnyObject::Service(with_secret(
                svc("api", &[], None),
                "pw",
            ))]),
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(err.details[0].field, "spec.secrets[0].source");
    }

    #[test]
    fn a_secret_created_without_data_is_invalid_naming_it() {
        let err = plan(
            &world(vec![], vec![]),
            vec![Change {
                document: None,
                object: secret("pw", None),
                expect: Expect::Absent,
            }],
        )
        .unwrap_err();
        assert!(
            err.message
                .starts_with("secret/pw is invalid: spec.data: is required"),
            "{}",
            err.message
        );
        assert_eq!(err.details[0].field, "spec.data");
        assert_eq!(
            err.details[0].message.split(':').next(),
            Some("is required")
        );
    }

    #[test]
    fn prune_deletes_the_labelled_objects_the_body_leaves_out_and_nothing_else() {
        let w = stored_world(vec![
            labelled(AnyObject::Network(net("shop_net", None)), "shop"),
            labelled(secret("shop_pw", Some(b"x")), "shop"),
            labelled(
                AnyObject::Service(with_secret(svc("shop_api", &["shop_net"], None), "shop_pw")),
                "shop",
            ),
            labelled(
                AnyObject::Service(svc("shop_old", &["shop_net"], None)),
                "shop",
            ),
            labelled(AnyObject::Service(svc("blog_web", &[], None)), "blog"),
            AnyObject::Service(svc("loose", &[], None)),
        ]);
        let prune = Prune::parse("shoal.io/stack=shop").unwrap();
        // A redeploy without shop_old: it alone goes.
        let keep = vec![
            labelled(AnyObject::Network(net("shop_net", None)), "shop"),
            labelled(secret("shop_pw", None), "shop"),
            labelled(
                AnyObject::Service(with_secret(svc("shop_api", &["shop_net"], None), "shop_pw")),
                "shop",
            ),
        ];
        let out = plan_pruning(&w, apply(keep), Some(&prune)).unwrap();
        let got: Vec<(String, Action)> = out
            .iter()
            .map(|p| (p.object.reference(), p.action))
            .collect();
        assert_eq!(
            got,
            [
                ("network/shop_net".to_string(), Action::Unchanged),
                ("secret/shop_pw".to_string(), Action::Unchanged),
                ("service/shop_api".to_string(), Action::Unchanged),
                ("service/shop_old".to_string(), Action::Pruned),
            ]
        );
        // `stack rm`: no objects, everything of the stack goes, services first.
        let out = plan_pruning(&w, vec![], Some(&prune)).unwrap();
        let got: Vec<String> = out.iter().map(|p| p.object.reference()).collect();
        assert_eq!(
            got,
            [
                "service/shop_api",
                "service/shop_old",
                "network/shop_net",
                "secret/shop_pw"
            ]
        );
        assert!(out.iter().all(|p| p.action == Action::Pruned));
    }

    #[test]
    fn prune_refuses_to_remove_what_a_remaining_service_uses() {
        let w = stored_world(vec![
            labelled(AnyObject::Network(net("shop_net", None)), "shop"),
            labelled(secret("shop_pw", Some(b"x")), "shop"),
            AnyObject::Service(with_secret(svc("other", &["shop_net"], None), "shop_pw")),
        ]);
        let prune = Prune::parse("shoal.io/stack=shop").unwrap();
        let err = plan_pruning(&w, vec![], Some(&prune)).unwrap_err();
        assert_eq!(err.code, 409, "{err:?}");
        assert_eq!(
            err.message,
            "cannot prune network/shop_net: network shop_net is in use by service(s): other \
             (and 1 more)"
        );
        assert_eq!(
            err.details[1].message,
            "cannot prune secret/shop_pw: secret shop_pw is in use by service(s) other"
        );
        // A service of the body that still lists a pruned network: 422 at the reference.
        let err = plan_pruning(
            &w,
            apply(vec![AnyObject::Service(svc(
                "other",
                &["shop_net"],
                Some(81),
            ))]),
            Some(&Prune::parse("shoal.io/stack=shop").unwrap()),
        )
        .unwrap_err();
        assert_eq!(err.code, 422, "{err:?}");
        assert_eq!(err.details[0].field, "spec.networks[0].name");
    }
}
