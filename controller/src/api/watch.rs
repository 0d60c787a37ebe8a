//! `?watch=true` on list routes: newline-delimited JSON [`WatchEvent`]s.
//!
//! With `resourceVersion=N` (N > 0) the stream carries exactly the changes after N (an etcd
//! watch from N+1); a compacted N is answered 410 Gone before streaming starts, and an
//! ERROR event carrying a 410 `Status` if compaction overtakes the watch later. Without it,
//! the stream first has an ADDED event per existing object (a list at revision R), then the
//! changes after R. BOOKMARK events (`?bookmarkSeconds=`, default 10, 0 = none) carry the
//! revision the watch has reached. The stream ends when the client goes away (the response
//! body is dropped) or the server shuts down.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use shoal_api_types::{EventType, Status, WatchEvent, API_VERSION};
use shoal_store::Event;
use tokio::sync::watch as signal;

use super::error::{store_status, ApiResult};
use super::kinds::{ApiKind, Selection};
use super::request::{parse_revision, ListParams};
use super::state::App;

/// Default seconds between bookmarks.
pub const DEFAULT_BOOKMARK_SECONDS: u64 = 10;

/// The media type of watch streams.
pub const WATCH_CONTENT_TYPE: &str = "application/x-ndjson";

/// Starts a watch stream of kind `S` over `sel`.
pub async fn watch<S: ApiKind>(
    app: &App,
    sel: Selection,
    params: &ListParams,
) -> ApiResult<Response> {
    let from = match params.resource_version.as_deref() {
        None | Some("") => 0,
        Some(v) => parse_revision("resourceVersion", v)?,
    };
    let bookmark = params
        .bookmark_seconds
        .unwrap_or(DEFAULT_BOOKMARK_SECONDS)
        .min(3600);
    let (initial, start) = if from > 0 {
        (Vec::new(), from + 1)
    } else {
        let (mut items, revision) = app.store.list_prefix::<S>(&sel.prefix).await?;
        items.retain(|o| S::selected(o, &sel));
        (items, revision + 1)
    };
    let mut watch = app.store.watch::<S>(&sel.prefix, start).await?;
    if bookmark > 0 {
        watch = watch.with_progress_every(Duration::from_secs(bookmark));
    }
    let guard = app.metrics.watch_started();
    let mut shutdown = app.shutdown.clone();
    let stream = async_stream::stream! {
        let _guard = guard;
        for obj in initial {
            yield line(&WatchEvent { event_type: EventType::Added, object: obj });
        }
        loop {
            let next = tokio::select! {
                ev = watch.next() => ev,
                _ = wait_for_shutdown(&mut shutdown) => break,
            };
            match next {
                Ok(ev) => {
                    if let Some(l) = event_line::<S>(ev, &sel) {
                        yield l;
                    }
                }
                Err(e) => {
                    let status = store_status(&e);
                    tracing::debug!(prefix = %sel.prefix, error = %e, "watch ended");
                    yield line(&WatchEvent { event_type: EventType::Error, object: status });
                    break;
                }
            }
        }
    };
    let body = Body::from_stream(futures::StreamExt::map(stream, Ok::<_, Infallible>));
    Ok(([(CONTENT_TYPE, WATCH_CONTENT_TYPE)], body).into_response())
}

/// The line for one store event, if it is in the selection.
fn event_line<S: ApiKind>(ev: Event<S>, sel: &Selection) -> Option<Bytes> {
    let (event_type, obj) = match ev {
        Event::Added(o) => (EventType::Added, o),
        Event::Modified(o) => (EventType::Modified, o),
        Event::Deleted(o) => (EventType::Deleted, o),
        Event::Progress(revision) => return Some(line(&bookmark::<S>(revision))),
    };
    S::selected(&obj, sel).then(|| {
        line(&WatchEvent {
            event_type,
            object: obj,
        })
    })
}

/// A BOOKMARK event: `{"apiVersion","kind","metadata":{"resourceVersion":"R"}}`.
pub fn bookmark<S: ApiKind>(revision: i64) -> WatchEvent<serde_json::Value> {
    WatchEvent {
        event_type: EventType::Bookmark,
        object: json!({"apiVersion": API_VERSION, "kind": S::KIND, "metadata": {"resourceVersion": revision.to_string()}}),
    }
}

/// One JSON line.
fn line<T: Serialize>(ev: &WatchEvent<T>) -> Bytes {
    let mut v = serde_json::to_vec(ev).unwrap_or_else(|e| {
        let status = Status::internal(format!("cannot encode a watch event: {e}"));
        serde_json::to_vec(&WatchEvent {
            event_type: EventType::Error,
            object: status,
        })
        .unwrap_or_default()
    });
    v.push(b'\n');
    Bytes::from(v)
}

/// Resolves once `shutdown` turns true; never if its sender is gone.
pub async fn wait_for_shutdown(shutdown: &mut signal::Receiver<bool>) {
    if shutdown.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::{NetworkSpec, Object, TaskSpec};

    #[test]
    fn bookmarks_carry_kind_and_revision_only() {
        let text = String::from_utf8(line(&bookmark::<NetworkSpec>(42)).to_vec()).unwrap();
        assert_eq!(
            text,
            "{\"type\":\"BOOKMARK\",\"object\":{\"apiVersion\":\"shoal/v1\",\"kind\":\"Network\",\"metadata\":{\"resourceVersion\":\"42\"}}}\n"
        );
    }

    #[test]
    fn events_outside_the_selection_are_dropped() {
        let sel = Selection {
            prefix: "/r/tasks/".into(),
            service: Some("api".into()),
        };
        let task = |svc: &str| {
            Object::new(
                "t",
                TaskSpec {
                    service: svc.into(),
                    ..Default::default()
                },
            )
        };
        assert!(event_line(Event::Added(task("api")), &sel).is_some());
        assert!(event_line(Event::Deleted(task("web")), &sel).is_none());
        assert!(
            event_line::<TaskSpec>(Event::Progress(7), &sel).is_some(),
            "bookmarks always pass"
        );
    }
}
