//! `shoal volume ls [--node N]` and `shoal volume rm NAME... --node N`. Named volumes are
//! not objects: each node's agent keeps them, and the API asks the agents. Nodes that could
//! not be asked are listed on stderr after the table.

use std::io::Write;

use anyhow::Result;

use crate::args::{OutputFormat, VolumeCommand};
use crate::client::Client;
use crate::cmd::network::remove_each;
use crate::cmd::resources::print_value;
use crate::format::volumes_table;

/// Runs a `shoal volume` command.
pub async fn run(client: &Client, cmd: &VolumeCommand, out: &mut dyn Write) -> Result<()> {
    match cmd {
        VolumeCommand::Ls(a) => {
            let list = client.list_volumes(a.node.as_deref()).await?;
            if a.list.quiet {
                for v in &list.items {
                    writeln!(out, "{}", v.name)?;
                }
            } else {
                match a.list.output {
                    OutputFormat::Table => write!(out, "{}", volumes_table(&list.items))?,
                    other => print_value(out, &list, other)?,
                }
            }
            for node in &list.unreachable {
                eprintln!("warning: could not list the volumes of {node}");
            }
            Ok(())
        }
        VolumeCommand::Rm(a) => {
            remove_each(&a.names, out, |name| client.delete_volume(&a.node, name)).await
        }
    }
}
