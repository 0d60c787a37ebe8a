//! Logs, streamed as plain text from the node agents:
//!
//! - `GET /apis/shoal/v1/tasks/{name}/logs?follow&tail=N`: one task's container output, as
//!   the agent sends it.
//! - `GET /apis/shoal/v1/services/{name}/logs?follow&tail=N`: every task of the service
//!   that has (or had) a container on a ready node, merged line by line as lines arrive,
//!   each prefixed `api.1@node-2 | ` as `docker service logs` does. With `follow`, tasks
//!   that start later join the stream (the service's tasks are looked up again every
//!   [`RESCAN`], in the API replica's task index, [`super::task_index`]); the stream ends when the client goes away, or once the service is deleted
//!   and its tasks' containers are gone.
//!
//! Tasks that cannot be read (node down, agent unreachable) do not fail a service's logs
//! as long as one task can be read; each is named in an `x-shoal-warning` header instead.
//! `tail` applies per task. Lines longer than [`MAX_LOG_LINE`] are split (each piece
//! prefixed), so what is held of an unfinished line is bounded per task.

use std::collections::HashSet;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use shoal_api_types::{LogOptions, ServiceSpec, Status, Task, TaskSpec, TaskState};
use tokio::sync::mpsc;

use super::agent::Target;
use super::error::ApiResult;
use super::exec::{find_task, task_target};
use super::request::{path_name, Query};
use super::state::App;

/// How often a followed service's tasks are re-read for tasks that started since.
pub const RESCAN: Duration = Duration::from_secs(2);

/// The header naming tasks whose logs could not be read.
pub const WARNING_HEADER: &str = "x-shoal-warning";

type Chunk = Result<Bytes, std::io::Error>;

fn text_response(body: Body, warnings: &[String]) -> Response {
    let mut resp = ([(CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response();
    for w in warnings {
        let clean: String = w
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&clean) {
            resp.headers_mut().append(WARNING_HEADER, v);
        }
    }
    resp
}

/// `GET /apis/shoal/v1/tasks/{name}/logs`.
pub async fn task_logs(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(opts): Query<LogOptions>,
) -> ApiResult<Response> {
    let task = find_task(&app, &name).await?;
    let target = task_target(&app, &task, false).await?;
    let resp = app.agents.logs(&app.store, &target, &opts).await?;
    let stream = resp
        .bytes_stream()
        .map(|r| r.map_err(std::io::Error::other));
    Ok(text_response(Body::from_stream(stream), &[]))
}

/// Whether a task may have a container whose logs can be read.
fn has_logs(task: &Task) -> bool {
    task.spec.node.is_some() && task.status.state >= TaskState::Starting
}

/// The longest line a service's log stream passes whole: a longer one is split into
/// pieces of this size, each on its own prefixed line (as Docker splits at 16 KiB), so the
/// partial line held per task never grows past it.
pub const MAX_LOG_LINE: usize = 16 * 1024;

/// Cuts a byte stream into lines of at most `max` bytes (plus the newline), holding at
/// most `max` bytes of an unfinished line between chunks.
#[derive(Debug)]
pub struct LineSplitter {
    partial: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    /// A splitter of lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        LineSplitter {
            partial: Vec::new(),
            max: max.max(1),
        }
    }

    /// The whole lines `chunk` completes (each ending with a newline), possibly none.
    pub fn push(&mut self, mut chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while !chunk.is_empty() {
            let room = self.max - self.partial.len();
            // One byte past the room: a newline right after a full line ends it.
            let window = &chunk[..chunk.len().min(room + 1)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    out.extend_from_slice(&self.partial);
                    out.extend_from_slice(&window[..=i]);
                    self.partial.clear();
                    chunk = &chunk[i + 1..];
                }
                None if window.len() > room => {
                    // More than a line's worth without a newline: cut it at the cap.
                    out.extend_from_slice(&self.partial);
                    out.extend_from_slice(&window[..room]);
                    out.push(b'\n');
                    self.partial.clear();
                    chunk = &chunk[room..];
                }
                None => {
                    self.partial.extend_from_slice(window);
                    chunk = &[];
                }
            }
        }
        out
    }

    /// What is left of an unfinished line, with a newline (None if nothing is).
    pub fn finish(mut self) -> Option<Vec<u8>> {
        if self.partial.is_empty() {
            return None;
        }
        self.partial.push(b'\n');
        Some(self.partial)
    }
}

/// Prefixes every line of `src` with `label | ` and sends whole lines to `tx`.
async fn pump(label: String, resp: reqwest::Response, tx: mpsc::Sender<Chunk>) {
    let prefix = format!("{label} | ");
    let mut stream = resp.bytes_stream();
    let mut lines = LineSplitter::new(MAX_LOG_LINE);
    loop {
        // A client that went away ends the agent's stream too, even while it is quiet.
        let chunk = tokio::select! {
            chunk = stream.next() => chunk,
            _ = tx.closed() => return,
        };
        let Some(Ok(chunk)) = chunk else { break };
        let whole = lines.push(&chunk);
        if whole.is_empty() {
            continue;
        }
        if tx
            .send(Ok(prefix_lines(&prefix, &whole).into()))
            .await
            .is_err()
        {
            return;
        }
    }
    if let Some(rest) = lines.finish() {
        let _ = tx.send(Ok(prefix_lines(&prefix, &rest).into())).await;
    }
}

/// `prefix` before every line of `lines` (which ends with a newline).
pub fn prefix_lines(prefix: &str, lines: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.len() + prefix.len() * 4);
    for line in lines.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(line);
    }
    out
}

/// Opens the logs of every task of `service` not in `seen` that has any; returns the
/// problems met.
async fn open_new(
    app: &App,
    service: &str,
    opts: &LogOptions,
    seen: &mut HashSet<String>,
    tx: &mpsc::Sender<Chunk>,
) -> ApiResult<(usize, Vec<Status>)> {
    // The service's tasks from the index, each read again by its key (what it is now).
    let keys: Vec<String> = app
        .tasks
        .read(|index| {
            index
                .of_service(service)
                .filter(|t| !seen.contains(&t.id) && t.node.is_some())
                .map(|t| t.key.clone())
                .collect()
        })
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut opened = 0;
    let mut problems = vec![];
    for key in keys {
        let Some(task) = app.store.get::<TaskSpec>(&key).await? else {
            continue;
        };
        if !has_logs(&task) || seen.contains(&task.metadata.name) {
            continue;
        }
        let task = &task;
        let target: Target = match task_target(app, task, false).await {
            Ok(t) => t,
            Err(e) => {
                problems.push(e.status());
                continue;
            }
        };
        match app.agents.logs(&app.store, &target, opts).await {
            Ok(resp) => {
                seen.insert(task.metadata.name.clone());
                opened += 1;
                tokio::spawn(pump(target.label(), resp, tx.clone()));
            }
            // The container is gone (removed with its task): nothing to show, ever.
            Err(s) if s.code == 404 => {
                seen.insert(task.metadata.name.clone());
            }
            Err(s) => problems.push(s),
        }
    }
    Ok((opened, problems))
}

/// `GET /apis/shoal/v1/services/{name}/logs`.
pub async fn service_logs(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(opts): Query<LogOptions>,
) -> ApiResult<Response> {
    path_name("Service", &name)?;
    if app.store.get_named::<ServiceSpec>(&name).await?.is_none() {
        return Err(Status::not_found("Service", &name).into());
    }
    let (tx, rx) = mpsc::channel::<Chunk>(64);
    let mut seen = HashSet::new();
    let (opened, problems) = open_new(&app, &name, &opts, &mut seen, &tx).await?;
    if opened == 0 && !opts.follow {
        if let Some(first) = problems.into_iter().next() {
            return Err(first.into());
        }
        return Ok(text_response(Body::empty(), &[]));
    }
    let warnings: Vec<String> = problems.iter().map(|s| s.message.clone()).collect();
    if opts.follow {
        // Later tasks join; a new task's whole log is wanted, not its tail.
        let later = LogOptions {
            follow: true,
            tail: None,
        };
        let app = app.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(RESCAN) => {}
                    _ = tx.closed() => return,
                }
                match app.store.get_named::<ServiceSpec>(&name).await {
                    // The service is gone: the stream ends once its tasks' streams do.
                    Ok(None) => return,
                    Ok(Some(_)) => {}
                    Err(e) => {
                        tracing::debug!(service = %name, error = %e, "re-reading the service for logs");
                        continue;
                    }
                }
                if let Err(e) = open_new(&app, &name, &later, &mut seen, &tx).await {
                    tracing::debug!(service = %name, error = %e, "re-reading tasks for logs");
                }
            }
        });
    } else {
        drop(tx);
    }
    Ok(text_response(
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
        &warnings,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_gets_the_task_prefix() {
        assert_eq!(
            prefix_lines("api.1@node-2 | ", b"a\nb\n"),
            b"api.1@node-2 | a\napi.1@node-2 | b\n".to_vec()
        );
        assert_eq!(prefix_lines("p | ", b"\n"), b"p | \n".to_vec());
    }

    #[test]
    fn lines_are_cut_at_newlines_and_at_the_cap() {
        let mut l = LineSplitter::new(4);
        assert_eq!(l.push(b"ab"), b"");
        assert_eq!(l.push(b"c\nde"), b"abc\n");
        // "de" + "fgh" without a newline: cut after 4 bytes.
        assert_eq!(l.push(b"fgh"), b"defg\n");
        assert_eq!(l.push(b"\n"), b"h\n");
        assert_eq!(l.push(b"\n\n"), b"\n\n");
        // A long run without newlines never makes the held part grow past the cap.
        let out = l.push(&[b'x'; 10]);
        assert_eq!(out, b"xxxx\nxxxx\n");
        assert!(l.partial.len() <= 4);
        assert_eq!(l.finish(), Some(b"xx\n".to_vec()));
        assert_eq!(LineSplitter::new(4).finish(), None);
        // A line of exactly the cap, then its newline: one line, no empty piece.
        let mut l = LineSplitter::new(4);
        assert_eq!(l.push(b"abcd"), b"");
        assert_eq!(l.push(b"\n"), b"abcd\n");
    }

    #[test]
    fn a_huge_line_is_held_at_most_the_cap() {
        let mut l = LineSplitter::new(MAX_LOG_LINE);
        let mut out_lines = 0;
        for _ in 0..1000 {
            let out = l.push(&[b'y'; 64 * 1024]);
            out_lines += out.iter().filter(|&&b| b == b'\n').count();
            assert!(l.partial.len() <= MAX_LOG_LINE);
        }
        assert_eq!(out_lines, 1000 * 64 * 1024 / MAX_LOG_LINE - 1);
        assert_eq!(l.finish().unwrap().len(), MAX_LOG_LINE + 1);
    }
}
