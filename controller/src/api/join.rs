//! Node join and the join token (issue 12): the public `GET /v1/join/ca`, `POST /v1/join`
//! and `POST /v1/renew`, and the admin `GET /v1/join-token`, `POST /v1/join-token/rotate`.
//!
//! - Join: the token's CA digest must be this cluster's and its secret the current one
//!   ([`private::join_secret`], compared in constant time), else 401; the name must be a
//!   DNS label and not a control-plane user, the address an IP, else 400; a name whose Node
//!   is ready is 409. Then the node's etcd user and role are ensured and its CSR signed:
//!   CN = DNS SAN = name, IP SAN = address, server+client, `--node-cert-lifetime`.
//! - Renew: over mutual TLS, the verified client certificate
//!   ([`PeerIdentity`](shoal_pki::PeerIdentity)) names the node (none: 401); a removed
//!   node's certificates ([`private::Revocation`]) and control-plane names are 403.
//! - With `--insecure` there is no CA: every endpoint here answers 503.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use shoal_api_types::join::RESERVED_NODE_NAMES;
use shoal_api_types::validation::check_dns_label;
use shoal_api_types::{
    JoinRequest, JoinResponse, JoinTokenResponse, NodeSpec, NodeState, RenewRequest, Status,
};
use shoal_pki::{JoinToken, PeerIdentity, Profile, Usage};
use shoal_store::Store;

use super::error::ApiResult;
use super::private;
use super::request::BodyText;
use super::state::{App, Cluster};

/// Creates (or refreshes) the node's etcd user and role.
async fn ensure_node_user(store: &Store, node: &str) -> Result<(), Status> {
    shoal_store::auth::ensure_node_user(store, node)
        .await
        .map_err(|e| super::error::store_status(&e))
}

/// Deletes the node's etcd user and role (its agent loses etcd at once).
pub(crate) async fn remove_node_user(store: &Store, node: &str) -> Result<(), Status> {
    shoal_store::auth::remove_node_user(store, node)
        .await
        .map_err(|e| super::error::store_status(&e))
}

fn cluster(app: &App) -> Result<Arc<Cluster>, Status> {
    app.cluster.clone().ok_or_else(|| {
        Status::unavailable(
            "this controller runs with --insecure: it has no cluster CA and admits no nodes \
             (run `shoal-controller init` and start it with --data-dir)",
        )
    })
}

fn unauthorized(message: impl Into<String>) -> Status {
    Status::new(401, "Unauthorized", message)
}

fn forbidden(message: impl Into<String>) -> Status {
    Status::new(403, "Forbidden", message)
}

fn parse<T: serde::de::DeserializeOwned>(text: &str, what: &str, shape: &str) -> Result<T, Status> {
    serde_json::from_str(text)
        .map_err(|e| Status::bad_request(format!("{what} body: {e} (send {shape})")))
}

/// Why `name` cannot be a node's name, if it cannot.
pub fn check_node_name(name: &str) -> Result<(), Status> {
    if let Err(msg) = check_dns_label(name) {
        return Err(Status::bad_request(format!("name {name:?}: {msg}")));
    }
    if RESERVED_NODE_NAMES.contains(&name) {
        return Err(Status::bad_request(format!(
            "name {name:?} is reserved for the control plane's etcd users; choose another node name"
        )));
    }
    Ok(())
}

/// The certificate profile of node `name` at `address`.
fn node_profile(cluster: &Cluster, name: &str, address: Option<IpAddr>) -> Profile {
    Profile {
        common_name: name.into(),
        dns_names: vec![name.into()],
        ips: address.into_iter().collect(),
        usage: Usage::Both,
        lifetime: cluster.node_cert_lifetime,
    }
}

fn answer(cluster: &Cluster, certificate: String) -> Result<JoinResponse, Status> {
    let info = shoal_pki::inspect(&certificate)
        .map_err(|e| Status::internal(format!("reading the certificate just signed: {e}")))?;
    Ok(JoinResponse {
        certificate,
        ca: cluster.ca.cert_pem().to_string(),
        etcd_endpoints: cluster.etcd_endpoints.clone(),
        not_after: DateTime::<Utc>::from(info.not_after),
    })
}

fn sign(cluster: &Cluster, csr: &str, profile: &Profile) -> Result<String, Status> {
    cluster
        .ca
        .sign_csr(csr, profile)
        .map_err(|e| Status::bad_request(format!("csr: {e} (send a PEM CERTIFICATE REQUEST)")))
}

/// `GET /v1/join/ca`: the cluster CA certificate (PEM). Public: joining nodes check its
/// digest against their token before they send anything.
pub async fn ca(State(app): State<App>) -> ApiResult<Response> {
    let cluster = cluster(&app)?;
    Ok((
        [(CONTENT_TYPE, "application/x-pem-file")],
        cluster.ca.cert_pem().to_string(),
    )
        .into_response())
}

/// `POST /v1/join`.
pub async fn join(
    State(app): State<App>,
    BodyText(text): BodyText,
) -> ApiResult<Json<JoinResponse>> {
    let cluster = cluster(&app)?;
    let req: JoinRequest = parse(
        &text,
        "join",
        r#"{"token": "SWMTKN-1-...", "name": "node-1", "address": "10.0.0.1", "csr": "-----BEGIN CERTIFICATE REQUEST-----..."}"#,
    )?;
    let token: JoinToken = req
        .token
        .parse()
        .map_err(|e: shoal_pki::PkiError| unauthorized(e.to_string()))?;
    if token.ca_digest != cluster.ca.digest() {
        return Err(unauthorized(
            "the join token is for another cluster: its CA digest is not this cluster's",
        )
        .into());
    }
    let current = private::join_secret(&app.store).await?;
    if !shoal_pki::constant_time_eq(token.secret.as_bytes(), current.secret.as_bytes()) {
        return Err(unauthorized(
            "the join token's secret is not the current one (rotated?): get a new token with \
             `shoal join-token`",
        )
        .into());
    }
    check_node_name(&req.name)?;
    let address: IpAddr = req.address.trim().parse().map_err(|_| {
        Status::bad_request(format!("address {:?} is not an IP address", req.address))
    })?;
    if let Some(node) = app.store.get_named::<NodeSpec>(&req.name).await? {
        if node.status.state == NodeState::Ready {
            return Err(Status::conflict(format!(
                "node {} is ready: another agent runs under that name; choose another name, or \
                 remove it first (`shoal node rm --force {}`)",
                req.name, req.name
            ))
            .into());
        }
    }
    let certificate = sign(
        &cluster,
        &req.csr,
        &node_profile(&cluster, &req.name, Some(address)),
    )?;
    ensure_node_user(&app.store, &req.name).await?;
    tracing::info!(node = %req.name, %address, "node joined");
    Ok(Json(answer(&cluster, certificate)?))
}

/// `POST /v1/renew`.
pub async fn renew(
    State(app): State<App>,
    peer: Option<Extension<PeerIdentity>>,
    BodyText(text): BodyText,
) -> ApiResult<Json<JoinResponse>> {
    let cluster = cluster(&app)?;
    let Some(Extension(peer)) = peer else {
        return Err(unauthorized(
            "renewal needs the node's current certificate as TLS client certificate",
        )
        .into());
    };
    let name = peer.common_name.clone();
    if check_node_name(&name).is_err() {
        return Err(forbidden(format!("{name:?} is not a node: only nodes renew here")).into());
    }
    if let Some(revocation) = private::revocation(&app.store, &name).await? {
        if revocation.refuses(peer.not_before) {
            return Err(forbidden(format!(
                "node {name} was removed at {}: its certificate is revoked; join it again with a \
                 join token",
                revocation.revoked_at.to_rfc3339()
            ))
            .into());
        }
    }
    let req: RenewRequest = parse(
        &text,
        "renew",
        r#"{"csr": "-----BEGIN CERTIFICATE REQUEST-----..."}"#,
    )?;
    let address = app
        .store
        .get_named::<NodeSpec>(&name)
        .await?
        .and_then(|n| n.status.address.parse::<IpAddr>().ok());
    let certificate = sign(&cluster, &req.csr, &node_profile(&cluster, &name, address))?;
    ensure_node_user(&app.store, &name).await?;
    tracing::info!(node = %name, "node certificate renewed");
    Ok(Json(answer(&cluster, certificate)?))
}

fn token_answer(cluster: &Cluster, secret: String) -> JoinTokenResponse {
    JoinTokenResponse {
        token: JoinToken {
            ca_digest: cluster.ca.digest(),
            secret,
        }
        .to_string(),
    }
}

/// `GET /v1/join-token` (admin).
pub async fn join_token(State(app): State<App>) -> ApiResult<Json<JoinTokenResponse>> {
    let cluster = cluster(&app)?;
    let current = private::join_secret(&app.store).await?;
    Ok(Json(token_answer(&cluster, current.secret)))
}

/// `POST /v1/join-token/rotate` (admin): tokens with the old secret no longer admit nodes;
/// joined nodes are unaffected.
pub async fn rotate(State(app): State<App>) -> ApiResult<Json<JoinTokenResponse>> {
    let cluster = cluster(&app)?;
    let fresh = private::rotate_join_secret(&app.store).await?;
    tracing::info!("join token rotated");
    Ok(Json(token_answer(&cluster, fresh.secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_must_be_labels_and_not_control_plane_users() {
        assert!(check_node_name("node-1").is_ok());
        for bad in [
            "",
            "Node_1",
            "a.b",
            "root",
            "shoal-controller",
            "shoal-hollow-fleet",
        ] {
            assert_eq!(check_node_name(bad).unwrap_err().code, 400, "{bad}");
        }
    }
}
