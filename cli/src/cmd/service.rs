//! `shoal service create|update|rollback|ls|inspect|ps|scale|rm|logs`, as Docker's.
//! `create`, `update`, `rollback` and `scale` wait (see [`crate::progress`]) unless
//! `--detach`: an update or rollback until its `status.updateStatus` says it completed, and
//! it fails with the updater's reason when the update paused or was rolled back.

use std::io::Write;

use anyhow::{bail, Result};
use chrono::Utc;
use shoal_api_types::{ServiceMode, ServiceSpec, TaskSpec};

use crate::args::{
    ListArgs, OutputFormat, ServiceCommand, ServicePsArgs, ServiceScaleArgs, ServiceUpdateArgs,
    WaitArgs,
};
use crate::client::Client;
use crate::cmd::network::{inspect_each, rm};
use crate::cmd::resources::print_value;
use crate::flags::{check_rollback_alone, parse_scale, service_from_args, update_service};
use crate::format::{services_table, tasks_table};
use crate::kinds::Kind;
use crate::progress::{wait_for, Intent, Target, WaitOptions};
use crate::{report, Reported};

/// How often a read-modify-write is retried after a 409 conflict.
pub const CONFLICT_RETRIES: usize = 5;

/// Runs a `shoal service` command.
pub async fn run(
    client: &Client,
    cmd: &ServiceCommand,
    out: &mut dyn Write,
    tty: bool,
) -> Result<()> {
    match cmd {
        ServiceCommand::Create(a) => {
            let svc = service_from_args(a, |k| std::env::var(k).ok())?;
            let created = client.create(&svc).await?;
            writeln!(out, "{}", created.name())?;
            out.flush()?;
            let target = Target {
                name: created.name().to_string(),
                generation: Some(created.metadata.generation),
                intent: Intent::Change,
            };
            wait(client, target, &a.wait, out, tty).await
        }
        ServiceCommand::Update(a) if a.rollback => {
            check_rollback_alone(a)?;
            rollback(client, &a.name, &a.wait, out, tty).await
        }
        ServiceCommand::Update(a) => update(client, a, out, tty).await,
        ServiceCommand::Rollback(a) => rollback(client, &a.name, &a.wait, out, tty).await,
        ServiceCommand::Ls(a) => ls(client, a, out).await,
        ServiceCommand::Inspect(a) => inspect_each::<ServiceSpec>(client, a, out).await,
        ServiceCommand::Ps(a) => ps(client, a, out).await,
        ServiceCommand::Scale(a) => scale(client, a, out, tty).await,
        ServiceCommand::Rm(a) => rm(client, Kind::Service, a, out).await,
        ServiceCommand::Logs(a) => crate::cmd::logs::service(client, a, out).await,
    }
}

async fn ls(client: &Client, a: &ListArgs, out: &mut dyn Write) -> Result<()> {
    let list = client.list::<ServiceSpec>(&[]).await?;
    if a.quiet {
        for s in &list.items {
            writeln!(out, "{}", s.name())?;
        }
        return Ok(());
    }
    match a.output {
        OutputFormat::Table => write!(out, "{}", services_table(&list.items))?,
        other => print_value(out, &list, other)?,
    }
    Ok(())
}

async fn ps(client: &Client, a: &ServicePsArgs, out: &mut dyn Write) -> Result<()> {
    // A clear "not found" rather than an empty table for a mistyped name.
    client.get::<ServiceSpec>(&a.name).await?;
    let mut list = client.list::<TaskSpec>(&[("service", &a.name)]).await?;
    list.items.retain(|t| t.spec.service == a.name);
    match a.output {
        OutputFormat::Table => write!(out, "{}", tasks_table(&list.items, Utc::now(), a.no_trunc))?,
        other => print_value(out, &list, other)?,
    }
    Ok(())
}

/// Sets `spec.replicas` of one service, re-reading and retrying on 409 conflicts.
pub async fn scale_one(client: &Client, name: &str, replicas: i64) -> Result<()> {
    for attempt in 1..=CONFLICT_RETRIES {
        let mut svc = client.get::<ServiceSpec>(name).await?;
        if svc.spec.mode == ServiceMode::Global {
            bail!("{name}: scale can only be used with replicated mode (the service is global)");
        }
        svc.spec.replicas = Some(replicas);
        match client.replace(&svc).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() && attempt < CONFLICT_RETRIES => continue,
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the last attempt returns")
}

/// What `service update` did to the stored service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updated {
    /// The flags change nothing; nothing was written.
    Unchanged,
    /// The changed service was written, at this generation.
    Written(i64),
}

/// Waits for `target` as the wait flags say: not at all with `-d`.
async fn wait(
    client: &Client,
    target: Target,
    args: &WaitArgs,
    out: &mut dyn Write,
    tty: bool,
) -> Result<()> {
    if args.detach {
        return Ok(());
    }
    wait_for(client, &[target], WaitOptions::new(args, tty), out).await
}

/// `service rollback NAME` and `service update --rollback NAME`: asks the API to go back
/// to the previous spec (its 409 says when there is none), prints the name and waits
/// until the rollback completed.
async fn rollback(
    client: &Client,
    name: &str,
    args: &WaitArgs,
    out: &mut dyn Write,
    tty: bool,
) -> Result<()> {
    let rolled = client.rollback_service(name).await?;
    writeln!(out, "{}", rolled.name())?;
    out.flush()?;
    let target = Target {
        name: rolled.name().to_string(),
        generation: Some(rolled.metadata.generation),
        intent: Intent::Rollback,
    };
    wait(client, target, args, out, tty).await
}

/// Applies `service update` flags to the stored service and writes it back with its
/// resourceVersion, re-reading and re-applying after a 409 conflict. An error from the
/// flags (a bad value, removing something absent) writes nothing.
pub async fn update_one(client: &Client, a: &ServiceUpdateArgs) -> Result<Updated> {
    for attempt in 1..=CONFLICT_RETRIES {
        let stored = client.get::<ServiceSpec>(&a.name).await?;
        let mut svc = stored.clone();
        update_service(&mut svc, a, |k| std::env::var(k).ok())?;
        if svc.spec == stored.spec && svc.metadata.labels == stored.metadata.labels {
            return Ok(Updated::Unchanged);
        }
        match client.replace(&svc).await {
            Ok(written) => return Ok(Updated::Written(written.metadata.generation)),
            Err(e) if e.is_conflict() && attempt < CONFLICT_RETRIES => continue,
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the last attempt returns")
}

async fn update(
    client: &Client,
    a: &ServiceUpdateArgs,
    out: &mut dyn Write,
    tty: bool,
) -> Result<()> {
    let generation = match update_one(client, a).await? {
        Updated::Unchanged => {
            writeln!(out, "no change")?;
            return Ok(());
        }
        Updated::Written(generation) => generation,
    };
    writeln!(out, "{}", a.name)?;
    out.flush()?;
    let target = Target {
        name: a.name.clone(),
        generation: Some(generation),
        intent: Intent::Change,
    };
    wait(client, target, &a.wait, out, tty).await
}

async fn scale(
    client: &Client,
    a: &ServiceScaleArgs,
    out: &mut dyn Write,
    tty: bool,
) -> Result<()> {
    let targets = a
        .targets
        .iter()
        .map(|t| parse_scale(t))
        .collect::<Result<Vec<_>>>()?;
    let mut scaled = vec![];
    let mut failed = false;
    for (name, replicas) in targets {
        match scale_one(client, &name, replicas).await {
            Ok(()) => {
                writeln!(out, "{name} scaled to {replicas}")?;
                scaled.push(name);
            }
            Err(e) => {
                failed = true;
                report(&e);
            }
        }
    }
    out.flush()?;
    if !a.wait.detach && !scaled.is_empty() {
        let targets: Vec<Target> = scaled.iter().map(Target::converge).collect();
        wait_for(client, &targets, WaitOptions::new(&a.wait, tty), out).await?;
    }
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}
