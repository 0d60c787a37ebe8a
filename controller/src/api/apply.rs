//! `POST /apis/shoal/v1/apply[?dryRun=true]`: create or update every object of a
//! multi-document YAML or JSON body, all or nothing.
//!
//! Every document is parsed and validated, then planned together against the stored
//! objects (networks created in the body count as existing for services in it, wherever
//! they appear), and only if nothing is wrong are all writes committed in one etcd
//! transaction. `dryRun` stops after planning. The answer lists, in document order, what
//! happened to each object: `created`, `configured` or `unchanged`; then, with
//! `?prune=<label key>=<value>`, the objects carrying that label that the body left out,
//! deleted in the same transaction (`pruned`). With `prune` the body may hold no object
//! (`shoal stack rm`). The body may be up to 4 MiB (payloads of Secrets and Configs).

use axum::extract::State;
use axum::Json;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use shoal_api_types::AnyObject;

use super::body;
use super::error::ApiResult;
use super::payloads::Prune;
use super::plan::{self, Action, Change, Expect};
use super::request::{LargeBodyText, Query, WriteParams};
use super::state::App;

/// The answer to an apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    /// Whether nothing was written because `dryRun` was asked for.
    pub dry_run: bool,
    /// One entry per object, in document order.
    pub items: Vec<ApplyItem>,
}

/// What apply did to one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyItem {
    /// `Network`, `Service`, `Secret` or `Config`.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// `created`, `configured`, `unchanged` or `pruned`.
    pub action: Action,
    /// The object's resourceVersion after the apply (absent for a dry-run create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// The handler.
pub async fn apply(
    State(app): State<App>,
    Query(params): Query<WriteParams>,
    LargeBodyText(text): LargeBodyText,
) -> ApiResult<Json<ApplyResult>> {
    let prune = params.prune.as_deref().map(Prune::parse).transpose()?;
    let objects = if prune.is_some() && body::check_syntax(&text).is_ok_and(|d| d.is_empty())
        || prune.is_some() && text.trim().is_empty()
    {
        vec![]
    } else {
        body::parse_apply(&text)?
    };
    let changes = objects
        .into_iter()
        .map(|(document, object)| Change {
            document: Some(document),
            object,
            expect: Expect::Any,
        })
        .collect();
    let key = app.secrets_key().await?;
    let done =
        plan::write_pruning(&app.store, key, changes, prune.as_ref(), params.dry_run).await?;
    let items = done
        .into_iter()
        .map(|p| {
            let (kind, name, resource_version) = match &p.object {
                AnyObject::Network(n) => (
                    "Network",
                    n.name().to_string(),
                    n.metadata.resource_version.clone(),
                ),
                AnyObject::Service(s) => (
                    "Service",
                    s.name().to_string(),
                    s.metadata.resource_version.clone(),
                ),
                AnyObject::Secret(s) => (
                    "Secret",
                    s.name().to_string(),
                    s.metadata.resource_version.clone(),
                ),
                AnyObject::Config(c) => (
                    "Config",
                    c.name().to_string(),
                    c.metadata.resource_version.clone(),
                ),
            };
            ApplyItem {
                kind: kind.to_string(),
                name,
                action: p.action,
                resource_version,
            }
        })
        .collect();
    Ok(Json(ApplyResult {
        dry_run: params.dry_run,
        items,
    }))
}
