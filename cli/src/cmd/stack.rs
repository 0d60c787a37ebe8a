//! `shoal stack deploy|ls|services|ps|rm`, as Docker's. A stack is client-side: `deploy`
//! turns the compose files into objects ([`crate::stack`]), prints a warning on stderr for
//! each ignored key, and sends them in one all-or-nothing `POST /apply` (with
//! `?prune=shoal.io/stack=NAME` under `--prune`), then waits for the services it created or
//! changed like `service create` does. `rm` is that apply with prune and no object. `ls`,
//! `services` and `ps` read the services labelled `shoal.io/stack` (as Docker's, `ls` lists
//! the stacks that have services).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use chrono::Utc;
use shoal_api_types::labels::STACK;
use shoal_api_types::manifest::AnyObject;
use shoal_api_types::{ServiceSpec, Status, TaskSpec};

use crate::args::{
    ListArgs, OutputFormat, StackCommand, StackDeployArgs, StackPsArgs, StackServicesArgs,
};
use crate::client::{ApplyResponse, Client, ClientError};
use crate::cmd::resources::print_value;
use crate::format::{services_table, stacks_table, tasks_table};
use crate::progress::{wait_for, Target, WaitOptions};
use crate::stack::{convert, prune_selector, ComposeFile, Inputs, Stack};
use crate::{report, Reported};

/// Runs a `shoal stack` command.
pub async fn run(
    client: &Client,
    cmd: &StackCommand,
    out: &mut dyn Write,
    tty: bool,
) -> Result<()> {
    match cmd {
        StackCommand::Deploy(a) => deploy(client, a, out, tty).await,
        StackCommand::Ls(a) => ls(client, a, out).await,
        StackCommand::Services(a) => services(client, a, out).await,
        StackCommand::Ps(a) => ps(client, a, out).await,
        StackCommand::Rm(a) => {
            let mut failed = false;
            let mut removed = Vec::new();
            for name in &a.names {
                match rm(client, name, out).await {
                    Ok(services) => removed.extend(services),
                    Err(e) => {
                        failed = true;
                        report(&e);
                    }
                }
            }
            if !a.detach && !removed.is_empty() {
                wait_stopped(client, &removed, a.timeout, out).await?;
            }
            if failed {
                return Err(Reported.into());
            }
            Ok(())
        }
    }
}

/// Reads the compose files and converts them (no request yet).
pub fn load_stack(a: &StackDeployArgs) -> Result<Stack> {
    let files = a
        .compose_files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Ok(ComposeFile {
                path: path.clone(),
                text,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let lookup = |k: &str| std::env::var(k).ok();
    let read = |p: &Path| std::fs::read(p);
    convert(
        &a.name,
        &files,
        &Inputs {
            lookup: &lookup,
            read: &read,
        },
    )
}

/// The apply body: one YAML document per object.
pub fn body(objects: &[AnyObject]) -> String {
    objects
        .iter()
        .map(|o| match o {
            AnyObject::Network(x) => serde_yaml_ng::to_string(x),
            AnyObject::Service(x) => serde_yaml_ng::to_string(x),
            AnyObject::Secret(x) => serde_yaml_ng::to_string(x),
            AnyObject::Config(x) => serde_yaml_ng::to_string(x),
        })
        .map(|r| r.expect("objects serialise"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The server's refusal, with each problem at the compose key its object came from.
pub fn describe_rejection(status: &Status, stack: &Stack) -> String {
    if status.details.iter().all(|d| d.document.is_none()) {
        return format!(
            "the stack was rejected; nothing was applied: {}",
            status.describe()
        );
    }
    let mut out = String::from("the stack was rejected; nothing was applied:");
    for d in &status.details {
        let origin = d
            .document
            .and_then(|n| stack.origins.get(n.wrapping_sub(1)))
            .map(|o| format!("{o}: "))
            .unwrap_or_default();
        let object = d
            .object
            .as_deref()
            .map(|o| format!("{o}: "))
            .unwrap_or_default();
        let field = if d.field.is_empty() {
            String::new()
        } else {
            format!("{}: ", d.field)
        };
        out.push_str(&format!("\n  - {origin}{object}{field}{}", d.message));
    }
    out
}

async fn deploy(
    client: &Client,
    a: &StackDeployArgs,
    out: &mut dyn Write,
    tty: bool,
) -> Result<()> {
    let stack = load_stack(a)?;
    for w in &stack.warnings {
        eprintln!("warning: {w}");
    }
    let selector = prune_selector(&a.name);
    let prune = a.prune.then_some(selector.as_str());
    let resp = match client.apply(body(&stack.objects), false, prune).await {
        Ok(r) => r,
        Err(ClientError::Api(status)) => bail!("{}", describe_rejection(&status, &stack)),
        Err(e) => return Err(e.into()),
    };
    let touched = print_items(&resp, out)?;
    out.flush()?;
    if a.wait.detach || touched.is_empty() {
        return Ok(());
    }
    let targets: Vec<Target> = touched.iter().map(Target::converge).collect();
    wait_for(client, &targets, WaitOptions::new(&a.wait, tty), out).await
}

/// Prints `service/shop_web created` per item; the services created or changed.
fn print_items(resp: &ApplyResponse, out: &mut dyn Write) -> Result<Vec<String>> {
    let mut touched = vec![];
    for item in &resp.items {
        writeln!(
            out,
            "{}/{} {}",
            item.kind.to_lowercase(),
            item.name,
            item.action
        )?;
        if item.kind == "Service" && !matches!(item.action.as_str(), "unchanged" | "pruned") {
            touched.push(item.name.clone());
        }
    }
    Ok(touched)
}

/// `stack rm NAME`: an apply of nothing that prunes everything labelled with the stack.
/// Returns the services removed.
async fn rm(client: &Client, name: &str, out: &mut dyn Write) -> Result<Vec<String>> {
    let selector = prune_selector(name);
    let resp = client.apply(String::new(), false, Some(&selector)).await?;
    let pruned: Vec<_> = resp.items.iter().filter(|i| i.action == "pruned").collect();
    if pruned.is_empty() {
        eprintln!("Nothing found in stack: {name}");
        return Ok(vec![]);
    }
    let mut services = Vec::new();
    for item in pruned {
        writeln!(out, "Removing {} {}", item.kind.to_lowercase(), item.name)?;
        if item.kind == "Service" {
            services.push(item.name.clone());
        }
    }
    Ok(services)
}

/// Waits until no task of `services` is still running or stopping, so that what they
/// used (a named volume, a published port) is free when `stack rm` returns.
async fn wait_stopped(
    client: &Client,
    services: &[String],
    timeout: std::time::Duration,
    out: &mut dyn Write,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = usize::MAX;
    loop {
        let tasks = client.list::<TaskSpec>(&[]).await?.items;
        let left = tasks
            .iter()
            .filter(|t| services.contains(&t.spec.service) && !t.status.state.is_terminal())
            .count();
        if left == 0 {
            return Ok(());
        }
        if left != last {
            writeln!(out, "Waiting for {left} task(s) to stop")?;
            last = left;
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "{left} task(s) of the removed services still run after {}; they keep stopping in the background",
                shoal_api_types::HumanDuration(timeout)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

fn stack_of(labels: &BTreeMap<String, String>) -> Option<&str> {
    labels.get(STACK).map(String::as_str)
}

async fn ls(client: &Client, a: &ListArgs, out: &mut dyn Write) -> Result<()> {
    let services = client.list::<ServiceSpec>(&[]).await?.items;
    let mut stacks: BTreeMap<String, usize> = BTreeMap::new();
    for s in &services {
        if let Some(st) = stack_of(&s.metadata.labels) {
            *stacks.entry(st.to_string()).or_default() += 1;
        }
    }
    if a.quiet {
        for name in stacks.keys() {
            writeln!(out, "{name}")?;
        }
        return Ok(());
    }
    match a.output {
        OutputFormat::Table => write!(out, "{}", stacks_table(&stacks))?,
        other => {
            let list: Vec<serde_json::Value> = stacks
                .iter()
                .map(|(name, n)| serde_json::json!({"name": name, "services": n}))
                .collect();
            print_value(out, &list, other)?
        }
    }
    Ok(())
}

async fn stack_services(client: &Client, name: &str) -> Result<Vec<shoal_api_types::Service>> {
    let mut list = client.list::<ServiceSpec>(&[]).await?.items;
    list.retain(|s| stack_of(&s.metadata.labels) == Some(name));
    if list.is_empty() {
        bail!("nothing found in stack: {name}");
    }
    Ok(list)
}

async fn services(client: &Client, a: &StackServicesArgs, out: &mut dyn Write) -> Result<()> {
    let list = stack_services(client, &a.name).await?;
    if a.list.quiet {
        for s in &list {
            writeln!(out, "{}", s.name())?;
        }
        return Ok(());
    }
    match a.list.output {
        OutputFormat::Table => write!(out, "{}", services_table(&list))?,
        other => print_value(out, &list, other)?,
    }
    Ok(())
}

async fn ps(client: &Client, a: &StackPsArgs, out: &mut dyn Write) -> Result<()> {
    let names: BTreeSet<String> = stack_services(client, &a.name)
        .await?
        .into_iter()
        .map(|s| s.metadata.name)
        .collect();
    let mut tasks = client.list::<TaskSpec>(&[]).await?.items;
    tasks.retain(|t| names.contains(&t.spec.service));
    match a.output {
        OutputFormat::Table => write!(out, "{}", tasks_table(&tasks, Utc::now(), a.no_trunc))?,
        other => print_value(out, &tasks, other)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::StatusDetail;

    fn sample() -> Stack {
        let text = "services:\n  web:\n    image: busybox\nsecrets:\n  pw: {file: ./pw}\n";
        let read = |p: &Path| {
            if p.ends_with("pw") {
                Ok(b"x".to_vec())
            } else {
                Err(std::io::ErrorKind::NotFound.into())
            }
        };
        convert(
            "shop",
            &[ComposeFile {
                path: "/s/c.yml".into(),
                text: text.into(),
            }],
            &Inputs {
                lookup: &|_| None,
                read: &read,
            },
        )
        .unwrap()
    }

    #[test]
    fn the_body_is_one_document_per_object_and_parses_as_manifests() {
        let stack = sample();
        let text = body(&stack.objects);
        let parsed = shoal_api_types::manifest::parse_manifests(&text).unwrap();
        let refs: Vec<String> = parsed.iter().map(AnyObject::reference).collect();
        assert_eq!(
            refs,
            ["secret/shop_pw", "network/shop_default", "service/shop_web"]
        );
    }

    #[test]
    fn rejections_point_at_the_compose_key() {
        let stack = sample();
        let status = Status::invalid(
            "invalid manifests",
            vec![StatusDetail {
                field: "spec.secrets[0].source".into(),
                message: "secret nope does not exist".into(),
                document: Some(3),
                object: Some("service/shop_web".into()),
            }],
        );
        assert_eq!(
            describe_rejection(&status, &stack),
            "the stack was rejected; nothing was applied:\n  - services.web: service/shop_web: spec.secrets[0].source: secret nope does not exist"
        );
    }

    #[test]
    fn deploy_and_rm_parse_like_docker() {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from([
            "shoal", "stack", "deploy", "-c", "a.yml", "-c", "b.yml", "--prune", "-d", "shop",
        ])
        .unwrap();
        match cli.command {
            crate::args::Command::Stack(StackCommand::Deploy(a)) => {
                assert_eq!(a.compose_files, [Path::new("a.yml"), Path::new("b.yml")]);
                assert!(a.prune && a.wait.detach);
                assert_eq!(a.name, "shop");
            }
            other => panic!("{other:?}"),
        }
        assert!(crate::Cli::try_parse_from(["shoal", "stack", "deploy", "shop"]).is_err());
        let cli = crate::Cli::try_parse_from(["shoal", "stack", "rm", "a", "b"]).unwrap();
        assert!(matches!(
            cli.command,
            crate::args::Command::Stack(StackCommand::Rm(_))
        ));
    }
}
