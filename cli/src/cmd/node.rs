//! `shoal node ls|inspect|update|rm`, as Docker's. `rm` also revokes the node's
//! certificate and etcd user (server side).

use std::io::Write;

use anyhow::Result;
use shoal_api_types::{NodeSpec, TaskSpec};

use crate::args::{NodeCommand, NodeUpdateArgs, OutputFormat};
use crate::client::Client;
use crate::cmd::network::inspect_each;
use crate::cmd::resources::print_value;
use crate::cmd::service::CONFLICT_RETRIES;
use crate::flags::{check_node_update, update_node};
use crate::format::nodes_table;

/// Runs a `shoal node` command.
pub async fn run(client: &Client, cmd: &NodeCommand, out: &mut dyn Write) -> Result<()> {
    match cmd {
        NodeCommand::Ls(a) => {
            let nodes = client.list::<NodeSpec>(&[]).await?;
            if a.quiet {
                for n in &nodes.items {
                    writeln!(out, "{}", n.name())?;
                }
                return Ok(());
            }
            match a.output {
                OutputFormat::Table => {
                    let tasks = client.list::<TaskSpec>(&[]).await?.items;
                    write!(out, "{}", nodes_table(&nodes.items, &tasks))?;
                }
                other => print_value(out, &nodes, other)?,
            }
            Ok(())
        }
        NodeCommand::Inspect(a) => inspect_each::<NodeSpec>(client, a, out).await,
        NodeCommand::Update(a) => {
            update(client, a).await?;
            writeln!(out, "{}", a.name)?;
            Ok(())
        }
        NodeCommand::Rm(a) => {
            crate::cmd::network::remove_each(&a.names, out, |name| {
                client.delete_node(name, a.force)
            })
            .await
        }
    }
}

/// Applies the flags to the node, re-reading and retrying on 409 conflicts (the agent
/// writes the node's status often).
async fn update(client: &Client, a: &NodeUpdateArgs) -> Result<()> {
    check_node_update(a)?;
    for attempt in 1..=CONFLICT_RETRIES {
        let mut node = client.get::<NodeSpec>(&a.name).await?;
        update_node(&mut node, a)?;
        match client.replace(&node).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() && attempt < CONFLICT_RETRIES => continue,
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the last attempt returns")
}
