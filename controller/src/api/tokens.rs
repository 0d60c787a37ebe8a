//! The token endpoints (admin only, see [`super::auth`]):
//!
//! ```text
//! POST   /v1/tokens          {"name","role"} → 201 {"name","role","token","createdAt"}
//! GET    /v1/tokens          → {"items":[{"name","role","createdAt"}]}
//! DELETE /v1/tokens/{name}   → 200 {"name","role","createdAt"}, or 404
//! ```
//!
//! The token is in the answer to its creation and nowhere else: etcd keeps its sha256 at
//! `<root>/private/tokens/<name>` ([`StoredToken`]). Deleting the record revokes the token
//! on every controller as soon as their token tables see the delete. Creates and deletes
//! answer once this controller's table has their change ([`auth::wait_for_revision`]).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use shoal_api_types::{
    CreatedToken, Status, StatusDetail, StoredToken, TokenInfo, TokenList, TokenRequest, Validate,
};
use shoal_store::{Batch, StoreError};

use shoal_pki::{new_api_token, sha256_hex};

use super::auth;
use super::error::ApiResult;
use super::request::{path_name, BodyText};
use super::state::App;

/// `POST /v1/tokens`.
pub async fn create(
    State(app): State<App>,
    BodyText(text): BodyText,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let req: TokenRequest = serde_json::from_str(&text).map_err(|e| {
        Status::bad_request(format!(
            "token body: {e} (send {{\"name\": \"ci\", \"role\": \"read-only\"}})"
        ))
    })?;
    if let Err(errs) = req.validated() {
        let details: Vec<StatusDetail> = errs.into_iter().map(Into::into).collect();
        return Err(Status::invalid("invalid token request", details).into());
    }
    let role = req.parsed_role().expect("validated");
    let token = new_api_token();
    let record = StoredToken {
        name: req.name.clone(),
        role,
        sha256: sha256_hex(token.as_bytes()),
        created_at: chrono::Utc::now(),
    };
    let mut batch = Batch::new();
    batch.claim(
        app.store.keys().api_token(&req.name),
        serde_json::to_vec(&record).expect("token records serialise"),
    );
    let revision = match batch.commit(&app.store).await {
        Ok(revision) => revision,
        Err(StoreError::Conflict(_)) => {
            return Err(Status::already_exists("token", &req.name).into());
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(token = %req.name, role = %role, "API token created");
    in_force(&app, revision).await;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            name: record.name,
            role,
            token,
            created_at: record.created_at,
        }),
    ))
}

/// `GET /v1/tokens`.
pub async fn list(State(app): State<App>) -> ApiResult<Json<TokenList>> {
    let (kvs, _) = app.store.list_raw(&app.store.keys().api_tokens()).await?;
    let mut items: Vec<TokenInfo> = kvs
        .iter()
        .filter_map(|kv| match serde_json::from_slice::<StoredToken>(&kv.value) {
            Ok(t) => Some(t.info()),
            Err(e) => {
                tracing::warn!(key = %kv.key, error = %e, "skipping an unreadable token record");
                None
            }
        })
        .collect();
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(TokenList { items }))
}

/// `DELETE /v1/tokens/{name}`.
pub async fn delete(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<Json<TokenInfo>> {
    path_name("token", &name)?;
    let key = app.store.keys().api_token(&name);
    // Read, then delete exactly what was read; a concurrent change is read again.
    for _ in 0..5 {
        let Some(kv) = app.store.get_raw(&key).await? else {
            return Err(Status::not_found("token", &name).into());
        };
        let info = serde_json::from_slice::<StoredToken>(&kv.value)
            .map(|t| t.info())
            .map_err(|e| Status::internal(format!("token record {name:?} is unreadable: {e}")))?;
        let mut batch = Batch::new();
        batch.delete_raw(key.clone(), kv.mod_revision);
        match batch.commit(&app.store).await {
            Ok(revision) => {
                tracing::info!(token = %name, "API token revoked");
                in_force(&app, revision).await;
                return Ok(Json(info));
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Status::conflict(format!(
        "token {name:?} kept changing while being deleted; retry"
    ))
    .into())
}

/// Waits until this controller's token table has the change written at `revision` (no
/// wait when tokens are off; a warning if the table lags behind for long).
async fn in_force(app: &App, revision: i64) {
    if let Some(tokens) = &app.tokens {
        if !auth::wait_for_revision(tokens, revision).await {
            tracing::warn!(
                revision,
                "the token table has not caught up yet; the change applies when it does"
            );
        }
    }
}

/// `GET /v1/whoami`: the caller's token name and role (`{"name","role"}`); without
/// authentication (`--insecure`) everyone is `admin` with no name. The page calls it once
/// to check the token it was given and to learn what to offer.
pub async fn whoami(who: Option<axum::Extension<auth::Principal>>) -> axum::response::Response {
    let body = match who {
        Some(axum::Extension(p)) => serde_json::json!({"name": p.name, "role": p.role}),
        None => serde_json::json!({"name": "", "role": "admin"}),
    };
    axum::response::IntoResponse::into_response(Json(body))
}
