//! `shoal system check [-o json|yaml]`: the audit of issue 18. The API checks etcd itself
//! and asks every ready node's agent to compare what it should have with what the kernel
//! and containerd have; this prints each drift (NODE, KIND, OBJECT, DETAIL), or
//! `no drift: N nodes checked`, and exits 1 when there is any drift (the JSON or YAML
//! report is printed either way).

use std::io::Write;

use anyhow::Result;
use shoal_api_types::check::CheckReport;

use crate::args::{OutputFormat, SystemCommand};
use crate::client::Client;
use crate::cmd::resources::print_value;
use crate::format::table;
use crate::ExitWith;

/// Runs a `shoal system` command.
pub async fn run(client: &Client, cmd: &SystemCommand, out: &mut dyn Write) -> Result<()> {
    match cmd {
        SystemCommand::Check(a) => {
            eprintln!("checking etcd and every ready node (each looks twice, a second apart)…");
            let report = client.system_check().await?;
            match a.output {
                OutputFormat::Table => write!(out, "{}", check_table(&report))?,
                other => print_value(out, &report, other)?,
            }
            if report.is_clean() {
                Ok(())
            } else {
                Err(ExitWith(1).into())
            }
        }
    }
}

/// The table of `system check`: one row per drift, or the all-clear line.
pub fn check_table(report: &CheckReport) -> String {
    if report.is_clean() {
        let n = report.nodes.len();
        return format!(
            "no drift: {n} node{} checked\n",
            if n == 1 { "" } else { "s" }
        );
    }
    let rows: Vec<Vec<String>> = report
        .drift
        .iter()
        .map(|d| {
            vec![
                d.node.clone(),
                d.kind.to_string(),
                d.object.clone(),
                d.detail(),
            ]
        })
        .collect();
    table(&["NODE", "KIND", "OBJECT", "DETAIL"], &rows)
}

#[cfg(test)]
mod tests {
    use shoal_api_types::check::{Drift, DriftKind};

    use super::*;

    #[test]
    fn a_clean_report_should_say_how_many_nodes_were_checked() {
        let report = CheckReport {
            nodes: vec!["node-1".into(), "node-2".into()],
            drift: vec![],
        };
        assert_eq!(check_table(&report), "no drift: 2 nodes checked\n");
    }

    #[test]
    fn each_drift_should_be_a_row_naming_node_kind_and_object() {
        let report = CheckReport {
            nodes: vec!["node-1".into()],
            drift: vec![Drift::new(
                "node-1",
                DriftKind::Fdb,
                "appnet (vni 4097)",
                "02:42:0a:00:01:07 dst 198.18.0.2",
                "nothing",
            )],
        };
        let text = check_table(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("NODE"), "{text}");
        for want in [
            "node-1",
            "fdb",
            "appnet (vni 4097)",
            "expected 02:42:0a:00:01:07 dst 198.18.0.2, found nothing",
        ] {
            assert!(lines[1].contains(want), "{want} missing in {text}");
        }
    }
}
