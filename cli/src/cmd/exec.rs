//! `shoal exec TASK -- CMD [ARGS...]`: runs a command in a running task through the API
//! server (which asks the task's node agent), prints its stdout on stdout and its stderr
//! on stderr, and exits with the command's exit status. Each stream is cut after its first
//! MiB (a marker line says how much there was), and a note on stderr says so.

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
    if resp.truncated {
        writeln!(
            err,
            "shoal exec: output truncated (each stream keeps its first {} bytes; redirect \
             to a file in the task for more)",
            shoal_api_types::exec::MAX_EXEC_OUTPUT_BYTES
        )?;
    }
    err.flush()?;
    if resp.exit_code != 0 {
        return Err(ExitWith(resp.exit_code).into());
    }
    Ok(())
}
