//! The kubectl-style commands over any kind: `get`, `delete` and `watch`.

use std::io::Write;

use anyhow::{bail, Result};
use chrono::Utc;
use serde_json::Value;
use shoal_api_types::{
    ConfigSpec, EndpointsSpec, EventType, NetworkSpec, NodeSpec, SecretSpec, ServiceSpec, Status,
    Task, TaskSpec,
};

use crate::args::{parse_kind_ref, DeleteArgs, GetArgs, OutputFormat, WatchArgs, WatchFormat};
use crate::client::Client;
use crate::cmd::apply::read_sources;
use crate::format::{
    self, endpoints_table, networks_table, nodes_table, payloads_table, services_table, tasks_table,
};
use crate::kinds::Kind;
use crate::{report, Reported};

/// Prints a value as JSON or YAML.
pub fn print_value(
    out: &mut dyn Write,
    value: &impl serde::Serialize,
    output: OutputFormat,
) -> Result<()> {
    match output {
        OutputFormat::Yaml => write!(out, "{}", format::to_yaml(value))?,
        _ => write!(out, "{}", format::to_json(value))?,
    }
    Ok(())
}

/// Runs `shoal get`.
pub async fn get(client: &Client, args: &GetArgs, out: &mut dyn Write) -> Result<()> {
    let (kind, ref_name) = parse_kind_ref(&args.kind).map_err(anyhow::Error::msg)?;
    let name = match (ref_name, args.name.clone()) {
        (Some(_), Some(_)) => bail!(
            "give the name either as {} or as a second argument, not both",
            args.kind
        ),
        (Some(n), None) | (None, Some(n)) => Some(n),
        (None, None) => None,
    };
    if args.output != OutputFormat::Table {
        return match kind {
            Kind::Network => print_typed::<NetworkSpec>(client, &name, args.output, out).await,
            Kind::Service => print_typed::<ServiceSpec>(client, &name, args.output, out).await,
            Kind::Node => print_typed::<NodeSpec>(client, &name, args.output, out).await,
            Kind::Task => print_typed::<TaskSpec>(client, &name, args.output, out).await,
            Kind::Endpoints => print_typed::<EndpointsSpec>(client, &name, args.output, out).await,
            Kind::Secret => print_typed::<SecretSpec>(client, &name, args.output, out).await,
            Kind::Config => print_typed::<ConfigSpec>(client, &name, args.output, out).await,
        };
    }
    let now = Utc::now();
    let text = match kind {
        Kind::Network => networks_table(&fetch::<NetworkSpec>(client, &name).await?, now),
        Kind::Service => services_table(&fetch::<ServiceSpec>(client, &name).await?),
        Kind::Task => tasks_table(&fetch::<TaskSpec>(client, &name).await?, now, false),
        Kind::Endpoints => endpoints_table(&fetch::<EndpointsSpec>(client, &name).await?, now),
        Kind::Secret => payloads_table(&fetch::<SecretSpec>(client, &name).await?, now),
        Kind::Config => payloads_table(&fetch::<ConfigSpec>(client, &name).await?, now),
        Kind::Node => {
            let nodes = fetch::<NodeSpec>(client, &name).await?;
            let tasks = client.list::<TaskSpec>(&[]).await?.items;
            nodes_table(&nodes, &tasks)
        }
    };
    write!(out, "{text}")?;
    Ok(())
}

/// Prints one object, or the list, as JSON or YAML (fields in the types' order).
async fn print_typed<S: shoal_api_types::Resource>(
    client: &Client,
    name: &Option<String>,
    output: OutputFormat,
    out: &mut dyn Write,
) -> Result<()> {
    match name {
        Some(n) => print_value(out, &client.get::<S>(n).await?, output),
        None => print_value(out, &client.list::<S>(&[]).await?, output),
    }
}

async fn fetch<S: shoal_api_types::Resource>(
    client: &Client,
    name: &Option<String>,
) -> Result<Vec<shoal_api_types::Object<S>>> {
    Ok(match name {
        Some(n) => vec![client.get::<S>(n).await?],
        None => client.list::<S>(&[]).await?.items,
    })
}

/// `kind/name` of every object in manifests, services first (they use the networks).
pub fn manifest_refs(texts: &[(String, String)]) -> Result<Vec<(Kind, String)>> {
    let mut refs = vec![];
    for (file, text) in texts {
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let value: serde_yaml_ng::Value = serde::Deserialize::deserialize(doc)
                .map_err(|e| anyhow::anyhow!("{file}: document {}: not valid YAML: {e}", i + 1))?;
            if value.is_null() {
                continue;
            }
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default();
            let name = value
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
                .unwrap_or_default();
            let Some(kind) = Kind::from_object_kind(kind) else {
                bail!("{file}: document {}: unknown kind {kind:?}", i + 1);
            };
            if name.is_empty() {
                bail!("{file}: document {}: metadata.name is missing", i + 1);
            }
            refs.push((kind, name.to_string()));
        }
    }
    // Services first: they use the networks, secrets and configs.
    refs.sort_by_key(|(k, _)| match k {
        Kind::Service => 0,
        Kind::Network | Kind::Secret | Kind::Config => 2,
        _ => 1,
    });
    Ok(refs)
}

/// Runs `shoal delete`.
pub async fn delete(client: &Client, args: &DeleteArgs, out: &mut dyn Write) -> Result<()> {
    let targets: Vec<(Kind, String)> = if !args.files.is_empty() {
        let sources = read_sources(&args.files, &mut std::io::stdin())?;
        manifest_refs(
            &sources
                .into_iter()
                .map(|s| (s.name, s.text))
                .collect::<Vec<_>>(),
        )?
    } else {
        let kind_arg = args.kind.as_deref().unwrap_or_default();
        let (kind, ref_name) = parse_kind_ref(kind_arg).map_err(anyhow::Error::msg)?;
        let mut names: Vec<String> = ref_name.into_iter().collect();
        names.extend(args.names.iter().cloned());
        if names.is_empty() {
            bail!("name what to delete: shoal delete {kind_arg} NAME...");
        }
        names.into_iter().map(|n| (kind, n)).collect()
    };
    let mut failed = false;
    for (kind, name) in targets {
        match client.delete(kind, &name).await {
            Ok(_) => writeln!(out, "{} deleted", kind.reference(&name))?,
            Err(e) => {
                failed = true;
                report(&anyhow::Error::from(e));
            }
        }
    }
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}

/// One watch event as a line: `ADDED      service/api`, with the state of tasks.
pub fn event_line(event_type: EventType, kind: Kind, object: &Value) -> String {
    let ty = serde_json::to_value(event_type)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let mut line = format!("{ty:<9} {}", kind.reference(name));
    if kind == Kind::Task {
        if let Ok(task) = serde_json::from_value::<Task>(object.clone()) {
            line.push_str(&format!(
                " {} {}",
                task.spec.display_name(),
                task.status.state.to_string().to_lowercase()
            ));
            if let Some(node) = &task.spec.node {
                line.push_str(&format!(" on {node}"));
            }
            let err = format::task_error(&task);
            if !err.is_empty() {
                line.push_str(&format!(" ({err})"));
            }
        }
    }
    line
}

/// Runs `shoal watch` until interrupted. When the server ends the stream, the watch resumes
/// from the last revision seen.
pub async fn watch(client: &Client, args: &WatchArgs, out: &mut dyn Write) -> Result<()> {
    let (kind, name) = parse_kind_ref(&args.kind).map_err(anyhow::Error::msg)?;
    if name.is_some() {
        bail!(
            "watch takes a kind, not one object (shoal watch {})",
            kind.plural()
        );
    }
    let mut revision = args.resource_version.clone();
    loop {
        let mut stream = client.watch(kind, revision.as_deref()).await?;
        while let Some(ev) = stream.next().await? {
            if let Some(rv) = ev
                .object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
            {
                revision = Some(rv.to_string());
            }
            match (ev.event_type, args.output) {
                (EventType::Error, _) => {
                    let status: Status = serde_json::from_value(ev.object.clone())
                        .unwrap_or_else(|_| Status::internal(ev.object.to_string()));
                    bail!("the watch failed: {}", status.describe());
                }
                (_, WatchFormat::Json) => writeln!(out, "{}", serde_json::to_string(&ev)?)?,
                (EventType::Bookmark, WatchFormat::Table) => {}
                (t, WatchFormat::Table) => writeln!(out, "{}", event_line(t, kind, &ev.object))?,
            }
            out.flush()?;
        }
        // The server closed the stream (restart, timeout): resume where we were.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_from_manifests_removes_services_before_networks() {
        let text =
            "kind: Network\nmetadata: {name: appnet}\n---\nkind: Service\nmetadata: {name: api}\n"
                .to_string();
        let refs = manifest_refs(&[("app.yaml".into(), text)]).unwrap();
        assert_eq!(
            refs,
            vec![
                (Kind::Service, "api".into()),
                (Kind::Network, "appnet".into())
            ]
        );
        let err = manifest_refs(&[(
            "x.yaml".into(),
            "kind: Gadget\nmetadata: {name: a}\n".into(),
        )])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.yaml: document 1: unknown kind \"Gadget\""
        );
    }

    #[test]
    fn watch_lines_name_the_object_and_task_state() {
        let svc = serde_json::json!({"metadata": {"name": "api"}});
        assert_eq!(
            event_line(EventType::Added, Kind::Service, &svc),
            "ADDED     service/api"
        );
        let task = serde_json::json!({
            "apiVersion": "shoal/v1", "kind": "Task", "metadata": {"name": "abc"},
            "spec": {"service": "api", "slot": 2, "node": "node-1", "desiredState": "running", "image": "busybox"},
            "status": {"state": "failed", "err": "exit code 1"}
        });
        assert_eq!(
            event_line(EventType::Modified, Kind::Task, &task),
            "MODIFIED  task/abc api.2 failed on node-1 (exit code 1)"
        );
    }
}
