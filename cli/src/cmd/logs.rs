//! `shoal service logs NAME [-f] [--tail N]` and `shoal logs TASK [-f] [--tail N]`: the
//! output of task containers, streamed from the node agents through the API server.
//! Service logs prefix each line with `task@node | `, as `docker service logs` does.
//! Tasks whose logs the server could not read are named on stderr.

use std::io::Write;

use anyhow::Result;
use shoal_api_types::LogOptions;

use crate::args::{ServiceLogsArgs, TaskLogsArgs};
use crate::client::{Client, TextStream};

/// Runs `shoal service logs`.
pub async fn service(client: &Client, a: &ServiceLogsArgs, out: &mut dyn Write) -> Result<()> {
    let opts = LogOptions {
        follow: a.follow,
        tail: a.tail,
    };
    copy(client.logs("services", &a.name, &opts).await?, out).await
}

/// Runs `shoal logs`.
pub async fn task(client: &Client, a: &TaskLogsArgs, out: &mut dyn Write) -> Result<()> {
    let opts = LogOptions {
        follow: a.follow,
        tail: a.tail,
    };
    copy(client.logs("tasks", &a.task, &opts).await?, out).await
}

async fn copy(mut stream: TextStream, out: &mut dyn Write) -> Result<()> {
    for w in &stream.warnings {
        eprintln!("Warning: {w}");
    }
    while let Some(chunk) = stream.next().await? {
        out.write_all(&chunk)?;
        out.flush()?;
    }
    Ok(())
}
