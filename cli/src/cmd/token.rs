//! `shoal token create|ls|rm` (API tokens) and `shoal join-token [--rotate]` (the token
//! nodes join with). Both need an admin token.

use std::io::Write;

use anyhow::Result;
use chrono::Utc;
use shoal_api_types::TokenInfo;

use crate::args::{JoinTokenArgs, OutputFormat, TokenCommand};
use crate::client::Client;
use crate::cmd::resources::print_value;
use crate::format::{short_age, table};

/// Runs a `shoal token` command.
pub async fn run(client: &Client, cmd: &TokenCommand, out: &mut dyn Write) -> Result<()> {
    match cmd {
        TokenCommand::Create(a) => {
            let created = client.create_token(&a.name, a.role.into()).await?;
            match a.output {
                OutputFormat::Table => {
                    writeln!(out, "{}", created.token)?;
                    eprintln!(
                        "token {:?} ({}) created; it is shown only this once: keep it now",
                        created.name, created.role
                    );
                }
                other => print_value(out, &created, other)?,
            }
            Ok(())
        }
        TokenCommand::Ls(a) => {
            let list = client.list_tokens().await?;
            if a.quiet {
                for t in &list.items {
                    writeln!(out, "{}", t.name)?;
                }
                return Ok(());
            }
            match a.output {
                OutputFormat::Table => write!(out, "{}", tokens_table(&list.items, Utc::now()))?,
                other => print_value(out, &list, other)?,
            }
            Ok(())
        }
        TokenCommand::Rm(a) => {
            crate::cmd::network::remove_each(&a.names, out, |name| client.delete_token(name)).await
        }
    }
}

/// NAME, ROLE, CREATED (an age).
pub fn tokens_table(items: &[TokenInfo], now: chrono::DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.role.to_string(),
                format!("{} ago", short_age(Some(t.created_at), now)),
            ]
        })
        .collect();
    table(&["NAME", "ROLE", "CREATED"], &rows)
}

/// Runs `shoal join-token`.
pub async fn join_token(client: &Client, a: &JoinTokenArgs, out: &mut dyn Write) -> Result<()> {
    let token = client.join_token(a.rotate).await?.token;
    if a.quiet {
        writeln!(out, "{token}")?;
        return Ok(());
    }
    write!(
        out,
        "{}",
        join_instructions(&token, client.server(), a.rotate)
    )?;
    Ok(())
}

/// The token and the command that joins a node with it.
pub fn join_instructions(token: &str, server: &str, rotated: bool) -> String {
    let mut text = String::new();
    if rotated {
        text.push_str("The join token was rotated: the old one no longer joins nodes (joined nodes keep working).\n\n");
    }
    text.push_str(&format!(
        "{token}\n\nTo add a node, run on it as root:\n\n    shoal-agent join --token {token} --controller {server} --name NODE --address NODE_ADDRESS\n"
    ));
    let loopback = ["://127.", "://localhost", "://[::1]"]
        .iter()
        .any(|l| server.contains(l));
    if loopback {
        text.push_str(&format!(
            "\n({server} is this machine: give an address of the controller that the node can reach.)\n"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::Role;

    #[test]
    fn token_tables_show_name_role_and_age() {
        let now = Utc::now();
        let items = [
            TokenInfo {
                name: "admin".into(),
                role: Role::Admin,
                created_at: now - chrono::Duration::hours(3),
            },
            TokenInfo {
                name: "viewer".into(),
                role: Role::ReadOnly,
                created_at: now - chrono::Duration::seconds(42),
            },
        ];
        assert_eq!(
            tokens_table(&items, now),
            "NAME     ROLE        CREATED\nadmin    admin       3h ago\nviewer   read-only   42s ago\n"
        );
    }

    #[test]
    fn join_instructions_carry_the_token_and_the_controller() {
        let text = join_instructions("SWMTKN-1-abc-def", "https://10.0.0.1:7777", false);
        assert!(text.starts_with("SWMTKN-1-abc-def\n"), "{text}");
        assert!(
            text.contains("shoal-agent join --token SWMTKN-1-abc-def --controller https://10.0.0.1:7777 --name NODE"),
            "{text}"
        );
        assert!(!text.contains("is this machine"), "{text}");
        let text = join_instructions("T", "https://127.0.0.1:7777", true);
        assert!(
            text.contains("rotated") && text.contains("is this machine"),
            "{text}"
        );
    }
}
