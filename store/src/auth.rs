//! etcd users and roles: who may touch which key. etcd serves TLS with
//! `--client-cert-auth`, and the CN of a client certificate names the etcd user of every
//! request on that connection; these functions create those users and roles and turn
//! authentication on. Run them as the controller (`shoal-controller`, role `root`).
//!
//! - [`bootstrap`]: role `root`, users `root` and `shoal-controller` with it, then
//!   `auth enable`.
//! - [`ensure_node_user`] / [`remove_node_user`]: user `<node>` with role
//!   `shoal-node-<node>` ([`node_permissions`]); removing it cuts the node off at its next
//!   request and revokes the lease of its liveness key.
//! - [`ensure_fleet_user`]: the hollow fleet's user and role ([`fleet_permissions`]).
//!
//! Invariants:
//! - Every function is idempotent and tolerates a concurrent caller doing the same (two
//!   controllers starting together): "already exists" and "not found" answers mean done.
//! - etcd 3.4 users need a password; each gets a random one that is never stored or shown,
//!   so a client certificate is the only way in.
//! - The permission ranges are computed in `api-types` ([`node_permissions`]), here only
//!   applied; [`ensure_node_user`] also revokes what a role holds beyond them.
//! - The names of Shoal's own users (`root`, `shoal-controller`, `shoal-hollow-fleet`) are
//!   never a node's: node functions refuse them.

use etcd_client::{AuthClient, RoleRevokePermissionOptions};
use rand::distr::{Alphanumeric, SampleString};
use shoal_api_types::keys::{
    fleet_permissions, node_permissions, node_role, Access, Permission, CONTROLLER_USER,
    FLEET_USER, ROOT_ROLE, ROOT_USER,
};
use shoal_api_types::node::check_node_name;

use crate::error::{refusal, StoreError};
use crate::store::Store;
use crate::Result;

/// Creates the role `root`, the users `root` and `shoal-controller` (both with it) and
/// enables authentication. Idempotent; a second controller doing the same concurrently is
/// fine. Run it before anything else with the controller's certificate: once auth is on,
/// only certificates whose CN names a user get in.
pub async fn bootstrap(store: &Store) -> Result<()> {
    let mut auth = store.client().auth_client();
    ensure_role(&mut auth, ROOT_ROLE).await?;
    ensure_user(&mut auth, ROOT_USER, ROOT_ROLE).await?;
    ensure_user(&mut auth, CONTROLLER_USER, ROOT_ROLE).await?;
    match auth.auth_enable().await {
        Ok(_) => Ok(()),
        // etcd 3.5 refuses a second enable; 3.4 ignores it.
        Err(e) if message(&e).contains("already enabled") => Ok(()),
        Err(e) => Err(failed("enable authentication", "", e)),
    }
}

/// Creates (or brings up to date) `node`'s etcd user and its role `shoal-node-<node>` with
/// exactly [`node_permissions`]. Idempotent. Refuses names a Node may not take.
pub async fn ensure_node_user(store: &Store, node: &str) -> Result<()> {
    valid_node(node, "add the etcd user of")?;
    let role = node_role(node);
    let mut auth = store.client().auth_client();
    ensure_role(&mut auth, &role).await?;
    set_permissions(&mut auth, &role, &node_permissions(store.keys(), node)).await?;
    ensure_user(&mut auth, node, &role).await
}

/// Deletes `node`'s etcd user and role: from the next request on, etcd refuses the node's
/// certificate (permission denied), also on connections already open. Then revokes the
/// lease of its liveness key (or deletes the key): etcd does not check permissions on
/// lease keep-alives, so a removed agent would otherwise keep its node alive. Idempotent.
pub async fn remove_node_user(store: &Store, node: &str) -> Result<()> {
    valid_node(node, "remove the etcd user of")?;
    let mut auth = store.client().auth_client();
    match auth.user_delete(node).await {
        Ok(_) => {}
        Err(e) if message(&e).contains("user name not found") => {}
        Err(e) => return Err(failed("delete user", node, e)),
    }
    let role = node_role(node);
    match auth.role_delete(role.as_str()).await {
        Ok(_) => {}
        Err(e) if message(&e).contains("role name not found") => {}
        Err(e) => return Err(failed("delete role", &role, e)),
    }
    let liveness = store.keys().node_lease(node);
    match store.get_raw(&liveness).await? {
        Some(kv) if kv.lease != 0 => match store.client().lease_client().revoke(kv.lease).await {
            Ok(_) => Ok(()),
            Err(e) if message(&e).contains("lease not found") => Ok(()),
            Err(e) => Err(StoreError::from_etcd(e, "revoke the lease of", &liveness)),
        },
        Some(_) => store.delete_raw(&liveness).await.map(drop),
        None => Ok(()),
    }
}

/// Creates (or brings up to date) the hollow fleet's user and role `shoal-hollow-fleet`
/// with exactly [`fleet_permissions`] (testing mode, benchmarks). Idempotent.
pub async fn ensure_fleet_user(store: &Store) -> Result<()> {
    let mut auth = store.client().auth_client();
    ensure_role(&mut auth, FLEET_USER).await?;
    set_permissions(&mut auth, FLEET_USER, &fleet_permissions(store.keys())).await?;
    ensure_user(&mut auth, FLEET_USER, FLEET_USER).await
}

/// Whether etcd has authentication enabled. Asks etcd to authenticate a user that does not
/// exist: etcd answers "authentication is not enabled" or "authentication failed" (etcd
/// 3.4 has no AuthStatus call).
pub async fn auth_enabled(store: &Store) -> Result<bool> {
    let mut auth = store.client().auth_client();
    let probe = "shoal-auth-probe".to_string();
    match auth.authenticate(probe.clone(), password()).await {
        Err(e) if message(&e).contains("authentication is not enabled") => Ok(false),
        Err(e) if message(&e).contains("authentication failed") => Ok(true),
        Ok(_) => Ok(true),
        Err(e) => Err(failed("ask whether authentication is enabled", "", e)),
    }
}

async fn ensure_role(auth: &mut AuthClient, role: &str) -> Result<()> {
    match auth.role_add(role).await {
        Ok(_) => Ok(()),
        Err(e) if message(&e).contains("role name already exists") => Ok(()),
        Err(e) => Err(failed("add role", role, e)),
    }
}

/// Adds `user` with a random, forgotten password (unless it exists) and grants it `role`.
async fn ensure_user(auth: &mut AuthClient, user: &str, role: &str) -> Result<()> {
    match auth.user_add(user, password(), None).await {
        Ok(_) => {}
        Err(e) if message(&e).contains("user name already exists") => {}
        Err(e) => return Err(failed("add user", user, e)),
    }
    // Granting a role the user holds is a no-op.
    auth.user_grant_role(user, role)
        .await
        .map_err(|e| failed("grant its role to user", user, e))?;
    Ok(())
}

/// Makes `role` hold exactly `wanted`: grants what is missing, revokes the rest.
async fn set_permissions(auth: &mut AuthClient, role: &str, wanted: &[Permission]) -> Result<()> {
    let held = auth
        .role_get(role)
        .await
        .map_err(|e| failed("read role", role, e))?
        .permissions();
    let wanted: Vec<etcd_client::Permission> = wanted.iter().map(to_etcd).collect();
    // etcd keeps one access per range: a range held with another access is re-granted
    // (which replaces it), a range not wanted at all is revoked.
    for perm in &held {
        if !wanted.iter().any(|w| same_range(w, perm)) {
            let mut opts = RoleRevokePermissionOptions::new();
            if !perm.range_end().is_empty() {
                opts = opts.with_range_end(perm.range_end());
            }
            match auth
                .role_revoke_permission(role, perm.key(), Some(opts))
                .await
            {
                Ok(_) => {}
                // A concurrent caller revoked it first.
                Err(e) if message(&e).contains("permission is not granted") => {}
                Err(e) => return Err(failed("revoke a permission of role", role, e)),
            }
        }
    }
    for perm in wanted {
        if !held.iter().any(|h| same(&perm, h)) {
            auth.role_grant_permission(role, perm)
                .await
                .map_err(|e| failed("grant a permission to role", role, e))?;
        }
    }
    Ok(())
}

fn to_etcd(p: &Permission) -> etcd_client::Permission {
    let perm = match p.access {
        Access::Read => etcd_client::Permission::read(p.key.as_str()),
        Access::ReadWrite => etcd_client::Permission::read_write(p.key.as_str()),
    };
    match &p.range_end {
        Some(end) => perm.with_range_end(end.clone()),
        None => perm,
    }
}

fn same_range(a: &etcd_client::Permission, b: &etcd_client::Permission) -> bool {
    a.key() == b.key() && a.range_end() == b.range_end()
}

fn same(a: &etcd_client::Permission, b: &etcd_client::Permission) -> bool {
    a.get_type() == b.get_type() && same_range(a, b)
}

/// Checks that `node` may be a node's etcd user (so that removing a "node" can never remove
/// the controllers' user).
fn valid_node(node: &str, what: &str) -> Result<()> {
    check_node_name(node).map_err(|msg| StoreError::Auth {
        what: format!("{what} node {node:?}"),
        source: etcd_client::Error::InvalidArgs(msg),
    })
}

fn password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

fn message(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
        other => other.to_string(),
    }
}

/// The error of the auth call `op` on the user or role `name`.
fn failed(op: &'static str, name: &str, e: etcd_client::Error) -> StoreError {
    match refusal(&e) {
        Some(reason) => StoreError::PermissionDenied {
            op,
            key: name.to_string(),
            reason,
        },
        None => StoreError::Auth {
            what: if name.is_empty() {
                op.to_string()
            } else {
                format!("{op} {name}")
            },
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::PermissionType;

    #[test]
    fn permissions_convert_to_etcd_with_their_range_end() {
        let p = to_etcd(&Permission::prefix(Access::Read, "/r/nodes/"));
        assert_eq!(p.get_type(), PermissionType::Read as i32);
        assert_eq!(p.key(), b"/r/nodes/");
        assert_eq!(p.range_end(), b"/r/nodes0");
        let k = to_etcd(&Permission::key(Access::ReadWrite, "/r/nodes/a"));
        assert_eq!(k.get_type(), PermissionType::Readwrite as i32);
        assert!(k.range_end().is_empty());
        assert!(!same(&p, &k));
        assert!(same(&p, &p.clone()));
        let w = to_etcd(&Permission::prefix(Access::ReadWrite, "/r/nodes/"));
        assert!(same_range(&p, &w) && !same(&p, &w));
    }

    #[test]
    fn shoal_users_are_never_removed_as_nodes() {
        for name in [ROOT_USER, CONTROLLER_USER, FLEET_USER, "Bad_Name"] {
            let err = valid_node(name, "remove the etcd user of").unwrap_err();
            assert!(!err.is_temporary(), "{err}");
            assert!(err.to_string().contains(name), "{err}");
        }
        assert!(valid_node("node-1", "x").is_ok());
    }
}
