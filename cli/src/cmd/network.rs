//! `shoal network create|ls|inspect|rm`, as Docker's.

use std::io::Write;

use anyhow::Result;
use chrono::Utc;
use serde::Serialize;
use shoal_api_types::{Endpoints, EndpointsSpec, Network, NetworkSpec};

use crate::args::{InspectArgs, InspectFormat, ListArgs, NamesArgs, NetworkCommand, OutputFormat};
use crate::client::Client;
use crate::cmd::resources::print_value;
use crate::flags::network_from_args;
use crate::format::networks_table;
use crate::kinds::Kind;
use crate::{report, Reported};

/// Runs a `shoal network` command.
pub async fn run(client: &Client, cmd: &NetworkCommand, out: &mut dyn Write) -> Result<()> {
    match cmd {
        NetworkCommand::Create(a) => {
            let net = network_from_args(a)?;
            let created = client.create(&net).await?;
            writeln!(out, "{}", created.name())?;
            Ok(())
        }
        NetworkCommand::Ls(a) => ls(client, a, out).await,
        NetworkCommand::Inspect(a) => inspect(client, a, out).await,
        NetworkCommand::Rm(a) => rm(client, Kind::Network, a, out).await,
    }
}

async fn ls(client: &Client, a: &ListArgs, out: &mut dyn Write) -> Result<()> {
    let list = client.list::<NetworkSpec>(&[]).await?;
    if a.quiet {
        for n in &list.items {
            writeln!(out, "{}", n.name())?;
        }
        return Ok(());
    }
    match a.output {
        OutputFormat::Table => write!(out, "{}", networks_table(&list.items, Utc::now()))?,
        other => print_value(out, &list, other)?,
    }
    Ok(())
}

/// `network inspect`: a JSON array (as Docker prints) of the networks, each with an extra
/// `endpoints` field listing the Endpoints objects of the network (per service: VIP, ports
/// and tasks with their addresses and nodes).
async fn inspect(client: &Client, a: &InspectArgs, out: &mut dyn Write) -> Result<()> {
    let endpoints = client.list::<EndpointsSpec>(&[]).await?.items;
    let mut found = vec![];
    let mut failed = false;
    for name in &a.names {
        match client.get::<NetworkSpec>(name).await {
            Ok(network) => {
                let endpoints = endpoints
                    .iter()
                    .filter(|e| e.spec.network == *name)
                    .cloned()
                    .collect();
                found.push(NetworkInspect { network, endpoints });
            }
            Err(e) => {
                failed = true;
                report(&e.into());
            }
        }
    }
    print_inspect(out, &found, a.output)?;
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}

/// A network as `network inspect` shows it: the object, then its Endpoints objects.
#[derive(Debug, Serialize)]
pub struct NetworkInspect {
    /// The network.
    #[serde(flatten)]
    pub network: Network,
    /// Per service on the network: VIP, ports, and tasks with address and node.
    pub endpoints: Vec<Endpoints>,
}

/// Prints inspect results: a JSON array, or YAML documents.
pub fn print_inspect<T: serde::Serialize>(
    out: &mut dyn Write,
    items: &[T],
    format: InspectFormat,
) -> Result<()> {
    match format {
        InspectFormat::Json => print_value(out, &items, OutputFormat::Json),
        InspectFormat::Yaml => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    writeln!(out, "---")?;
                }
                print_value(out, item, OutputFormat::Yaml)?;
            }
            Ok(())
        }
    }
}

/// `inspect` of any kind: fetches each name, prints those found ([`print_inspect`]) and
/// reports the others; fails (after printing) when one was not found.
pub async fn inspect_each<S: shoal_api_types::Resource>(
    client: &Client,
    a: &InspectArgs,
    out: &mut dyn Write,
) -> Result<()> {
    let mut found = vec![];
    let mut failed = false;
    for name in &a.names {
        match client.get::<S>(name).await {
            Ok(o) => found.push(o),
            Err(e) => {
                failed = true;
                report(&e.into());
            }
        }
    }
    print_inspect(out, &found, a.output)?;
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}

/// `rm`: deletes each name, printing it; errors are reported and the rest still removed.
pub async fn rm(client: &Client, kind: Kind, a: &NamesArgs, out: &mut dyn Write) -> Result<()> {
    remove_each(&a.names, out, |name| client.delete(kind, name)).await
}

/// Removes each of `names` with `remove`, printing each name removed. An error is reported
/// and the rest are still removed; then the command fails (already reported).
pub async fn remove_each<'a, T, E, Fut>(
    names: &'a [String],
    out: &mut dyn Write,
    remove: impl Fn(&'a str) -> Fut,
) -> Result<()>
where
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
    E: Into<anyhow::Error>,
{
    let mut failed = false;
    for name in names {
        match remove(name).await {
            Ok(_) => writeln!(out, "{name}")?,
            Err(e) => {
                failed = true;
                report(&e.into());
            }
        }
    }
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}
