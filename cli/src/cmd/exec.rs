//! `shoal exec TASK -- CMD [ARGS...]`: runs a command in a running task through the API
//! server (which asks the task's node agent), prints its stdout on stdout and its stderr
//! on stderr, and exits with the command's exit status.

use std::io::Write;

use anyhow::Result;
use shoal_api_types::ExecRequest;

use crate::args::ExecArgs;
use crate::client::Client;
use crate::ExitWith;

/// Runs `shoal exec`.
pub async fn run(client: &Client, a: &ExecArgs, out: &mut dyn Write) -> Result<()> {
    let req = ExecRequest {
        argv: a.command.clone(),
        timeout_seconds: a.timeout.map(|t| t.as_secs().max(1)),
    };
    let resp = client.exec(&a.task, &req).await?;
    out.write_all(resp.stdout.as_bytes())?;
    out.flush()?;
    let mut err = std::io::stderr();
    err.write_all(resp.stderr.as_bytes())?;
    err.flush()?;
    if resp.exit_code != 0 {
        return Err(ExitWith(resp.exit_code).into());
    }
    Ok(())
}
