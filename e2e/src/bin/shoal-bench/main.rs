//! `shoal-bench`: measures each figure of the benchmark issue together with its baseline in
//! the same run, prints a table and writes it to a Markdown file (`docs/benchmarks.md` by
//! default) with the machine, the command and the date. See docs/benchmarks.md.
//!
//! ```text
//! sudo target/release/shoal-bench                  # everything (tens of minutes)
//! sudo target/debug/shoal-bench --quick --out /tmp/b.md   # small version (CI)
//! sudo target/release/shoal-bench --only 5         # one figure (1..9)
//! sudo target/release/shoal-bench --only 2 --scale 100x100000   # figure 2 at one size
//! sudo target/release/shoal-bench --only 3 --idle-minutes 10   # failover + idle fleet
//! sudo target/release/shoal-bench --only 10 --slice-replicas 2000 --slice-nodes 20
//! ```
//!
//! Everything it starts it stops — processes, namespaces, tmpfs directories, the local
//! cluster (`shoal dev down`) — also on an error or Ctrl-C (guards dropped when `main`
//! drops the benchmark future). Figures that cannot run here are reported as skipped.
//! The workspace binaries are taken from the directory of this one.

mod cluster;
mod common;
mod control;
mod dns;
mod follow;
mod rolling;
mod rules;
mod serve;
mod slices;
mod tools;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;

use common::*;

/// Benchmarks Shoal against its baselines, side by side.
#[derive(Debug, Parser)]
#[command(name = "shoal-bench")]
struct Args {
    /// A small version that runs in a few minutes (CI).
    #[arg(long)]
    quick: bool,
    /// Run only these figures (1..10), comma-separated.
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,
    /// With figure 3: also keep a hollow fleet idle this many minutes (the agent's default
    /// node TTL, as in the failover trials) and count false node-downs.
    #[arg(long, value_name = "N")]
    idle_minutes: Option<u64>,
    /// Figure 2's runs, as NODESxTASKS (comma-separated), instead of the default sizes.
    #[arg(long, value_delimiter = ',', value_name = "NODESxTASKS", value_parser = parse_scale)]
    scale: Vec<(usize, usize)>,
    /// The idle run's fleet size.
    #[arg(long, default_value_t = 100, value_name = "N")]
    idle_nodes: usize,
    /// Figure 10: replicas of the one service (default 20,000; 2,000 with --quick).
    #[arg(long, value_name = "N")]
    slice_replicas: Option<usize>,
    /// Figure 10: hollow nodes (default 1,000; 20 with --quick).
    #[arg(long, value_name = "N")]
    slice_nodes: Option<usize>,
    /// Where to write the Markdown report.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
}

/// `100x10000` → (100, 10000).
fn parse_scale(s: &str) -> std::result::Result<(usize, usize), String> {
    let (n, t) = s
        .split_once('x')
        .ok_or_else(|| format!("{s:?}: expected NODESxTASKS, e.g. 100x10000"))?;
    let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{s:?}: {v:?}: {e}"));
    Ok((num(n)?, num(t)?))
}

fn main() -> Result<()> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if let Some(r) = tools::dispatch(&raw) {
        return r;
    }
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::select! {
            r = run(&args) => r,
            _ = tokio::signal::ctrl_c() => {
                STOP.store(true, std::sync::atomic::Ordering::Relaxed);
                eprintln!("bench: interrupted; cleaning up");
                Err(anyhow::anyhow!("interrupted"))
            }
        }
    })
}

async fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let want = |f: u32| args.only.is_empty() || args.only.contains(&f);
    let bin = bin_dir()?;
    let dir = TempDir::new(&format!("shoal-bench-{}", run_id()))?;
    let mut rows: Vec<Row> = vec![];
    let mut failed = vec![];
    let root = skip_root();
    macro_rules! figure {
        ($n:expr, $name:expr, $target:expr, $body:expr) => {
            if want($n) {
                let t = Instant::now();
                eprintln!("bench: figure {} ({})", $n, $name);
                if let Some(why) = &root {
                    rows.push(Row::skipped(
                        &format!("{} {}", $n, $name),
                        $target,
                        why.clone(),
                    ));
                } else if let Err(e) = $body.await {
                    eprintln!("bench: figure {} failed: {e:#}", $n);
                    failed.push(format!("figure {}: {e:#}", $n));
                    rows.push(Row {
                        figure: format!("{} {}", $n, $name),
                        shoal: "error".into(),
                        met: "error".into(),
                        target: $target.into(),
                        note: format!("{e:#}"),
                        ..Default::default()
                    });
                }
                eprintln!(
                    "bench: figure {} took {:.0} s",
                    $n,
                    t.elapsed().as_secs_f64()
                );
            }
        };
    }
    // Figures without the local cluster first.
    figure!(
        2,
        "scheduling throughput",
        "≥ 5,000 tasks/s",
        control::scheduling(&bin, args.quick, &args.scale, &dir.0, &mut rows)
    );
    figure!(
        2,
        "scheduling: what security costs",
        "≤ 1.10×",
        control::scheduling_security_cost(&bin, args.quick, &dir.0, &mut rows)
    );
    if want(3) || want(8) {
        let (f3, f8) = (want(3), want(8));
        figure!(
            if f3 { 3 } else { 8 },
            "failover / agent footprint",
            "≤ 3 s; agent < 40 MB",
            control::failover_and_agent(&bin, args.quick, &dir.0, &mut rows, f3, f8)
        );
    }
    if let Some(minutes) = args.idle_minutes.filter(|_| want(3)) {
        figure!(
            3,
            "idle fleet",
            "0 false node-downs",
            control::idle(&bin, minutes, args.idle_nodes, &dir.0, &mut rows)
        );
    }
    figure!(
        10,
        "sliced endpoints",
        "converges and resolves; every slice < etcd's request limit",
        slices::sliced_endpoints(
            &bin,
            args.slice_replicas
                .unwrap_or(if args.quick { 2_000 } else { 20_000 }),
            args.slice_nodes
                .unwrap_or(if args.quick { 20 } else { 1_000 }),
            &dir.0,
            &mut rows
        )
    );
    figure!(
        5,
        "rule scale",
        "full < 1 s, change < 50 ms, latency ≤ 1.1×",
        rules::rule_scale(args.quick, &mut rows)
    );
    figure!(
        6,
        "DNS",
        "≥ 1.0× unbound, p99 < 1 ms",
        dns::dns(args.quick, &dir.0, &mut rows)
    );
    figure!(
        7,
        "endpoint propagation to 1,000 watchers",
        "p99 < 1 s",
        control::propagation_watchers(&bin, args.quick, &mut rows)
    );
    let cluster_figs: Vec<u32> = [1, 4, 7, 9].into_iter().filter(|f| want(*f)).collect();
    if !cluster_figs.is_empty() && root.is_none() {
        let t = Instant::now();
        eprintln!("bench: local-cluster figures {cluster_figs:?}");
        if let Err(e) = cluster::run(&bin, args.quick, &cluster_figs, &mut rows).await {
            eprintln!("bench: local-cluster figures failed: {e:#}");
            failed.push(format!("local cluster: {e:#}"));
            rows.push(Row {
                figure: "1/4/7/9 local cluster".into(),
                shoal: "error".into(),
                met: "error".into(),
                note: format!("{e:#}"),
                ..Default::default()
            });
        }
        eprintln!(
            "bench: local-cluster figures took {:.0} s",
            t.elapsed().as_secs_f64()
        );
    }
    rows.sort_by_key(|r| {
        r.figure
            .split(' ')
            .next()
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(99)
    });
    let table = table(&rows);
    println!("{table}");
    let doc = report(args, &table, &rows, started.elapsed().as_secs_f64())?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, doc).with_context(|| format!("write {}", args.out.display()))?;
    eprintln!(
        "bench: wrote {} ({:.0} s)",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        anyhow::bail!("{} figure(s) failed:\n{}", failed.len(), failed.join("\n"));
    }
    Ok(())
}

/// Why nothing can run here (the tool needs root for namespaces), if so.
fn skip_root() -> Option<String> {
    if !shoal_testkit::is_root() {
        return Some("skipped: needs root (namespaces, nftables, containerd)".into());
    }
    for p in ["etcd", "ip"] {
        if !have(p) {
            return Some(format!(
                "skipped: {p} is not installed (scripts/install-deps)"
            ));
        }
    }
    None
}

fn esc(s: &str) -> String {
    s.replace('|', "\\|")
}

fn table(rows: &[Row]) -> String {
    let mut t = String::from("| figure | Shoal | baseline | ratio | target | met? |\n| --- | --- | --- | --- | --- | --- |\n");
    for r in rows {
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            esc(&r.figure),
            esc(&r.shoal),
            esc(&r.baseline),
            esc(&r.ratio),
            esc(&r.target),
            esc(&r.met)
        ));
    }
    t
}

fn report(args: &Args, table: &str, rows: &[Row], secs: f64) -> Result<String> {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = sh("uname", &["-r"]).unwrap_or_default().trim().to_string();
    let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        .unwrap_or_default()
        .trim()
        .to_string();
    let commit = sh("git", &["rev-parse", "--short", "HEAD"])
        .unwrap_or_default()
        .trim()
        .to_string();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let cmd: Vec<String> = std::env::args().collect();
    let cmd = cmd.join(" ");
    let mode = if args.quick {
        "**quick mode** (small sizes; CI runs this)"
    } else {
        "full"
    };
    let mut notes = String::new();
    for r in rows {
        if !r.note.is_empty() {
            notes.push_str(&format!("- **{}** ({}): {}\n", r.figure, r.met, r.note));
        }
    }
    Ok(format!(
        "# Benchmarks\n\n\
         Generated by `shoal-bench` ({mode}); every figure is measured together with its baseline in the same run,\n\
         because these machines are noisy: ratios hold, absolute times do not.\n\n\
         - machine: {nproc} cores, {mem}, kernel {kernel}\n\
         - date: {date}; commit {commit}; {profile} binaries; took {secs:.0} s\n\
         - command: `{cmd}`\n\n\
         {table}\n\
         ## Notes per figure\n\n{notes}\n\
         {method}",
        method = METHOD
    ))
}

const METHOD: &str = include_str!("method.md");

#[cfg(test)]
mod tests {
    /// docs/benchmarks.md is what a full run writes: its method and reading are `method.md`
    /// verbatim, so an edit made only to the document would be lost at the next run.
    #[test]
    fn the_document_ends_with_the_method() {
        let doc = include_str!("../../../../docs/benchmarks.md");
        assert!(
            doc.ends_with(super::METHOD),
            "docs/benchmarks.md does not end with e2e/src/bin/shoal-bench/method.md: edit method.md and copy it into the document"
        );
    }
}
