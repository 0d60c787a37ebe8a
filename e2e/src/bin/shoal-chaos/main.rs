//! `shoal-chaos`: fault scenarios on the 3-node local cluster (issue 18). Each scenario runs
//! under continuous traffic through a service's virtual IP and through the routing mesh,
//! injects one fault, waits for the cluster to recover and ends with `shoal system check`
//! clean, its final assertion. It prints, per scenario, what was injected, the requests sent
//! and failed on each path while the fault and the recovery lasted, the seconds to recover
//! and the check's result. See docs/reliability.md.
//!
//! ```text
//! sudo target/debug/shoal-chaos                         # every scenario, full sizes
//! sudo target/debug/shoal-chaos --scenario partition    # one (repeatable, or a,b,c)
//! sudo target/debug/shoal-chaos --small                 # the short set scripts/test runs
//! sudo target/debug/shoal-chaos --scenario churn --cycles 200
//! ```
//!
//! One cluster serves every scenario of a run (each leaves it as it found it); a failed
//! scenario tears it down and the next gets a fresh one. Everything is removed at the end
//! (`shoal dev down`), also on a failure or Ctrl-C. Needs root and the programs of
//! `shoal_e2e::PROGRAMS`; takes the workspace binaries (and `shoal-bench`'s load helpers)
//! from its own directory. Exits non-zero when any scenario failed.

mod harness;
mod scenarios;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Parser;

use harness::{Chaos, STOP};
use scenarios::{Outcome, Sizes, ALL};

/// Fault scenarios on the local cluster, each ending with `shoal system check` clean.
#[derive(Debug, Parser)]
#[command(name = "shoal-chaos")]
struct Args {
    /// Run only these scenarios (repeatable or comma-separated): agent-kill, node-reboot,
    /// controller-kill, etcd-restart, containerd-stop, partition, churn.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// The short version (`scripts/test`): every scenario with fewer tasks, cycles and
    /// seconds.
    #[arg(long)]
    small: bool,
    /// Churn cycles (default 1,000; 30 with --small).
    #[arg(long, value_name = "N")]
    cycles: Option<u32>,
    /// Replicas of the scale during the controller kill (default 200; 30 with --small).
    #[arg(long, value_name = "N")]
    replicas: Option<u32>,
    /// Also write the results as a Markdown table to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn sizes(args: &Args) -> Sizes {
    let small = args.small;
    Sizes {
        converge: if small { 20 } else { 50 },
        scale: args.replicas.unwrap_or(if small { 30 } else { 200 }),
        cycles: args.cycles.unwrap_or(if small { 30 } else { 1000 }),
        containerd_secs: if small { 10 } else { 30 },
        partition_secs: 15,
        churn_secs: if small { 4 } else { 10 },
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let names: Vec<String> = if !args.scenario.is_empty() {
        args.scenario.clone()
    } else {
        ALL.iter().map(|s| s.to_string()).collect()
    };
    for n in &names {
        if !ALL.contains(&n.as_str()) {
            bail!("no scenario {n:?}; scenarios: {}", ALL.join(", "));
        }
    }
    if !shoal_e2e::testkit::is_root() {
        bail!("shoal-chaos needs root (namespaces, nftables, containerd)");
    }
    for p in shoal_e2e::PROGRAMS
        .iter()
        .chain(&["ctr", "curl", "etcdctl"])
    {
        if !shoal_e2e::testkit::have(p) {
            bail!("{p} is not installed (scripts/install-deps)");
        }
    }
    // Ctrl-C: waits fail at their next poll; guards and the cluster are dropped on the way out.
    std::thread::spawn(|| {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                eprintln!("chaos: interrupted; cleaning up");
                STOP.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let started = Instant::now();
    let s = sizes(&args);
    let mut results: Vec<std::result::Result<Outcome, (String, String)>> = vec![];
    let mut cluster: Option<Chaos> = None;
    for name in &names {
        if STOP.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        eprintln!("chaos: scenario {name}");
        let t = Instant::now();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<Outcome> {
            if cluster.is_none() {
                cluster = Some(Chaos::up()?);
            }
            scenarios::run(cluster.as_ref().expect("cluster is up"), name, s)
        }));
        let r = match r {
            Ok(Ok(o)) => Ok(o),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(p) => Err(format!(
                "panicked: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        };
        match r {
            Ok(o) => {
                eprintln!(
                    "chaos: {name} passed ({:.0} s)\n{}",
                    t.elapsed().as_secs_f64(),
                    text(&o)
                );
                results.push(Ok(o));
            }
            Err(e) => {
                eprintln!(
                    "chaos: {name} FAILED ({:.0} s): {e}",
                    t.elapsed().as_secs_f64()
                );
                // A fresh cluster for the next one; its logs are kept for whoever reads this.
                if let Some(x) = cluster.take() {
                    let logs = x.c.state_dir().join("logs");
                    let kept = shoal_e2e::bin_dir()
                        .join("..")
                        .join("e2e-artifacts")
                        .join(format!(
                            "chaos-{name}-{}",
                            (harness::unix_ms() / 1000.0) as u64
                        ));
                    match keep_logs(&logs, &kept) {
                        Ok(()) => eprintln!("chaos: the cluster's logs are in {}", kept.display()),
                        Err(e) => eprintln!(
                            "chaos: could not keep {} ({e:#}); removed with the cluster",
                            logs.display()
                        ),
                    }
                    drop(x);
                }
                results.push(Err((name.clone(), e)));
            }
        }
    }
    drop(cluster);
    let table = table(&results);
    println!("{table}");
    if let Some(out) = &args.out {
        let cmd: Vec<String> = std::env::args().collect();
        std::fs::write(
            out,
            format!(
                "Command: `{}` ({} binaries), {:.0} s.\n\n{table}",
                cmd.join(" "),
                if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                },
                started.elapsed().as_secs_f64()
            ),
        )?;
    }
    let failed: Vec<&String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|(n, _)| n)
        .collect();
    if !failed.is_empty() || results.len() < names.len() {
        bail!(
            "{} of {} scenario(s) failed or did not run: {failed:?}",
            names.len() - results.iter().filter(|r| r.is_ok()).count(),
            names.len()
        );
    }
    eprintln!(
        "chaos: all {} scenario(s) passed in {:.0} s",
        names.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One scenario's result as text lines.
fn text(o: &Outcome) -> String {
    let mut t = format!("  injected: {}\n", o.injected);
    for (p, sent, failed) in &o.paths {
        t.push_str(&format!("  {p}: {sent} requests, {failed} failed\n"));
    }
    t.push_str(&format!(
        "  fault {:.1} s; recovered {:.1} s after it was lifted; check: {}\n",
        o.fault_s, o.recover_s, o.check
    ));
    for n in &o.notes {
        t.push_str(&format!("  - {n}\n"));
    }
    t
}

fn esc(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The results as a Markdown table.
fn table(results: &[std::result::Result<Outcome, (String, String)>]) -> String {
    let mut t = String::from(
        "| scenario | injected | VIP sent / failed | mesh sent / failed | fault s | recover s | check | notes |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in results {
        match r {
            Ok(o) => {
                let path = |name: &str| {
                    o.paths
                        .iter()
                        .find(|(p, _, _)| p == name)
                        .map(|(_, s, f)| format!("{s} / {f}"))
                        .unwrap_or_else(|| "-".into())
                };
                t.push_str(&format!(
                    "| {} | {} | {} | {} | {:.1} | {:.1} | {} | {} |\n",
                    o.name,
                    esc(&o.injected),
                    path("VIP"),
                    path("mesh"),
                    o.fault_s,
                    o.recover_s,
                    esc(&o.check),
                    esc(&o.notes.join("; "))
                ));
            }
            Err((name, e)) => t.push_str(&format!(
                "| {name} | FAILED | - | - | - | - | - | {} |\n",
                esc(e)
            )),
        }
    }
    t
}

/// Copies a failed scenario's log directory to `to` (`cp -a`: the logs are plain files).
fn keep_logs(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()?
        .success();
    anyhow::ensure!(ok, "cp -a failed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_should_shrink_sizes_and_flags_should_override_them() {
        let a = Args::parse_from(["shoal-chaos", "--small"]);
        let s = sizes(&a);
        assert_eq!((s.converge, s.scale, s.cycles), (20, 30, 30));
        let a = Args::parse_from(["shoal-chaos", "--cycles", "7", "--replicas", "9"]);
        let s = sizes(&a);
        assert_eq!((s.converge, s.scale, s.cycles), (50, 9, 7));
        let a = Args::parse_from(["shoal-chaos", "--scenario", "churn,partition"]);
        assert_eq!(a.scenario, vec!["churn", "partition"]);
    }

    #[test]
    fn table_should_show_each_path_and_failures() {
        let ok = Outcome {
            name: "a".into(),
            injected: "x|y".into(),
            paths: vec![("VIP".into(), 10, 1), ("mesh".into(), 20, 0)],
            fault_s: 1.0,
            recover_s: 2.5,
            check: "no drift: 3 nodes checked".into(),
            notes: vec![],
        };
        let t = table(&[Ok(ok), Err(("b".into(), "boom".into()))]);
        assert!(
            t.contains("| a | x\\|y | 10 / 1 | 20 / 0 | 1.0 | 2.5 | no drift: 3 nodes checked |"),
            "{t}"
        );
        assert!(t.contains("| b | FAILED |"), "{t}");
    }
}
