//! The fault scenarios. Each runs on the shared [`Chaos`] cluster under traffic through
//! web's VIP and the routing mesh, injects one fault through a guard that undoes it when
//! dropped, waits for the cluster to recover, asserts what the scenario promises, and ends
//! with `shoal system check` clean. Each leaves the fixture as it found it (its own services
//! removed), so the next scenario starts from a clean check.
//!
//! Recovery time: from the moment the fault is lifted (the process restarted, the rule
//! removed) until the scenario's own condition holds and the check is clean.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::harness::*;

/// What one scenario measured.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The scenario's name.
    pub name: String,
    /// What was injected.
    pub injected: String,
    /// (path, requests sent, failed) while the fault and the recovery lasted.
    pub paths: Vec<(String, u64, u64)>,
    /// Seconds the fault lasted.
    pub fault_s: f64,
    /// Seconds from lifting the fault to recovered (condition + clean check).
    pub recover_s: f64,
    /// The check's final line.
    pub check: String,
    /// Anything else worth reporting (errors seen, counts).
    pub notes: Vec<String>,
}

/// Sizes of a run.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Tasks the agent converges when it is killed.
    pub converge: u32,
    /// Replicas of the scale during the controller kill.
    pub scale: u32,
    /// Churn cycles.
    pub cycles: u32,
    /// Seconds containerd stays stopped.
    pub containerd_secs: u64,
    /// Seconds the node stays cut off.
    pub partition_secs: u64,
    /// Seconds of churn around the etcd restart.
    pub churn_secs: u64,
}

/// The scenarios, in the order a full run takes them.
pub const ALL: [&str; 7] = [
    "agent-kill",
    "node-reboot",
    "controller-kill",
    "etcd-restart",
    "containerd-stop",
    "partition",
    "churn",
];

/// Runs scenario `name`.
pub fn run(x: &Chaos, name: &str, s: Sizes) -> Result<Outcome> {
    // Whatever ran before must have settled.
    x.clean(Duration::from_secs(120))
        .context("the cluster was not clean before the scenario")?;
    match name {
        "agent-kill" => agent_kill(x, s.converge),
        "node-reboot" => node_reboot(x),
        "controller-kill" => controller_kill(x, s.scale),
        "etcd-restart" => etcd_restart(x, s.churn_secs),
        "containerd-stop" => containerd_stop(x, s.containerd_secs),
        "partition" => partition(x, s.partition_secs),
        "churn" => churn(x, s.cycles),
        other => bail!("no scenario {other:?}; scenarios: {}", ALL.join(", ")),
    }
}

const RECOVER: Duration = Duration::from_secs(240);

/// Ends a scenario: waits for `recovered` and a clean check, keeps the traffic 3 s more,
/// stops it and requires that no request failed after recovery.
fn finish(
    x: &Chaos,
    traffic: Traffic,
    mut out: Outcome,
    fault_end: Instant,
    what: &str,
    mut recovered: impl FnMut() -> Result<Option<()>>,
) -> Result<Outcome> {
    wait_for(what, RECOVER, Duration::from_millis(300), &mut recovered)?;
    let check = x.clean(RECOVER)?;
    out.recover_s = fault_end.elapsed().as_secs_f64();
    let recovered_ms = unix_ms();
    std::thread::sleep(Duration::from_secs(3));
    let results = traffic.stop()?;
    for (path, r) in &results {
        out.paths.push((path.clone(), r.sent, r.failed));
        if r.failed > 0 {
            out.notes.push(format!("{path} failures: {}", r.kinds()));
        }
        let late = r.failed_since(recovered_ms);
        if late > 0 {
            // Where conntrack sent those connections (by their source port), while the
            // entries still exist: the first thing to know about a late failure.
            let ns = if path == "VIP" {
                x.client_ns.as_str()
            } else {
                "shoal-node-1"
            };
            let table = in_ns(ns, &["cat", "/proc/net/nf_conntrack"]).unwrap_or_default();
            let fails: Vec<String> = r
                .fails
                .iter()
                .filter(|(at, _, _)| *at >= recovered_ms)
                .take(5)
                .map(|(at, kind, detail)| {
                    format!(
                        "{at:.0} {kind} {detail}; conntrack: {}",
                        conntrack_of(&table, detail)
                    )
                })
                .collect();
            bail!("{late} request(s) through the {path} failed after recovery: {fails:?}");
        }
    }
    out.check = check.lines().last().unwrap_or_default().trim().to_string();
    Ok(out)
}

/// The lines of a namespace's `/proc/net/nf_conntrack` for the source port that a load's
/// failure `detail` names (`… (from port N)`), or what is missing.
fn conntrack_of(table: &str, detail: &str) -> String {
    let Some(port) = detail
        .rsplit_once("(from port ")
        .and_then(|(_, p)| p.strip_suffix(')'))
    else {
        return "no source port".into();
    };
    let key = format!(" sport={port} ");
    let lines: Vec<String> = table
        .lines()
        .filter(|l| l.contains(&key))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    if lines.is_empty() {
        format!("no entry from port {port}")
    } else {
        lines.join(" | ")
    }
}

/// a. An agent SIGKILLed while it converges `n` tasks, then restarted.
fn agent_kill(x: &Chaos, n: u32) -> Result<Outcome> {
    let c = &x.c;
    let traffic = x.traffic()?;
    apply(c, &service("bulk", n, &["chaos"], IDLE, &on_node(3)))?;
    let seen = wait_for(
        "the agent converging bulk",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || {
            let k = live(c, "bulk")?.len() as u32;
            Ok((k >= (n / 5).max(1)).then_some(k))
        },
    )?;
    let pid = daemon_pid(c, "agent-3").context("agent-3 is not running")?;
    let t0 = Instant::now();
    signal(pid, nix::sys::signal::Signal::SIGKILL)?;
    std::thread::sleep(Duration::from_millis(500));
    c.start_node(3);
    let fault_end = Instant::now();
    let out = Outcome {
        name: "agent-kill".into(),
        injected: format!(
            "SIGKILL of node-3's agent while it converged {n} tasks ({seen} running), restarted 0.5 s later"
        ),
        fault_s: t0.elapsed().as_secs_f64(),
        ..Default::default()
    };
    let mut out = finish(x, traffic, out, fault_end, "bulk converged", || {
        Ok((live(c, "bulk")?.len() as u32 == n).then_some(()))
    })?;
    // No duplicate container: node-3 runs exactly one container per live task, and every
    // container it holds belongs to one of its tasks (a replaced task's container may
    // still be stopping: it gets a few seconds).
    let st = node3_without_problems(
        x,
        "node-3 with one running container per live task",
        Duration::from_secs(30),
        "node-3 after the restart",
    )?;
    out.notes.push(format!(
        "node-3: {} running containers for {} live tasks, none twice",
        st.running.len(),
        st.live.len()
    ));
    x.remove("bulk")?;
    // Nothing leaked: once bulk is gone, node-3 keeps one namespace and one running
    // container per live task, and no container of a removed task.
    let st = node3_without_problems(
        x,
        "node-3 without leftovers of bulk",
        Duration::from_secs(60),
        "leaked on node-3",
    )?;
    out.notes.push(format!(
        "after removing bulk: node-3 has {} live tasks, {} task namespaces, {} containers, none left of bulk",
        st.live.len(),
        st.netns,
        st.containers.len()
    ));
    Ok(out)
}

/// Waits up to `timeout` until node 3's state shows no problem (a stray or duplicate
/// container, a leaked namespace); the error names the problems last seen.
fn node3_without_problems(
    x: &Chaos,
    what: &str,
    timeout: Duration,
    failure: &str,
) -> Result<NodeState> {
    let mut last = vec![];
    wait_for(what, timeout, Duration::from_millis(500), || {
        let st = x.node_state(3)?;
        last = st.problems();
        Ok(last.is_empty().then_some(st))
    })
    .with_context(|| format!("{failure}: {last:?}"))
}

/// b. Node 3 "reboots": agent, containerd, containers and every namespace it made destroyed.
fn node_reboot(x: &Chaos) -> Result<Outcome> {
    let c = &x.c;
    let traffic = x.traffic()?;
    let t0 = Instant::now();
    c.stop_node(3);
    let mut gone = 0;
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    for ns in String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n == "shoal-node-3" || n.starts_with("shoal-node-3-"))
    {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", ns])
            .status();
        gone += 1;
    }
    std::thread::sleep(Duration::from_secs(5));
    c.start_node(3);
    let fault_end = Instant::now();
    let out = Outcome {
        name: "node-reboot".into(),
        injected: format!(
            "node-3 killed (agent, containerd, containers), its {gone} namespaces deleted (node + tasks), back after 5 s"
        ),
        fault_s: t0.elapsed().as_secs_f64(),
        ..Default::default()
    };
    let mut out = finish(
        x,
        traffic,
        out,
        fault_end,
        "web back to 3 running tasks",
        || Ok((live(c, "web")?.len() == 3).then_some(())),
    )?;
    x.node_serves(3)?;
    out.notes.push(format!(
        "{:.1} s after node-3 came back, a new task pinned to it answered over the overlay from node-1, and the mesh answered on 198.18.0.3:8080",
        fault_end.elapsed().as_secs_f64()
    ));
    Ok(out)
}

/// c. The leading controller SIGKILLed during a scale 0 → `n`.
fn controller_kill(x: &Chaos, n: u32) -> Result<Outcome> {
    let c = &x.c;
    apply(
        c,
        &format!(
            "apiVersion: shoal/v1\nkind: Network\nmetadata: {{name: wide}}\nspec: {{}}\n---\n{}",
            service("many", 0, &["wide"], IDLE, "")
        ),
    )?;
    let traffic = x.traffic()?;
    let leader = wait_for(
        "a leading controller",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || Ok(c.leading_controller()),
    )?;
    shoal(c, &["service", "scale", &format!("many={n}"), "--detach"])?;
    // The leader creates the tasks in batches as soon as it sees the new spec: kill it
    // 100 ms after the API took the scale, while it allocates and schedules.
    std::thread::sleep(Duration::from_millis(100));
    let pid = daemon_pid(c, &format!("controller-{leader}")).context("leader pid")?;
    let t0 = Instant::now();
    signal(pid, nix::sys::signal::Signal::SIGKILL)?;
    // What it had done by then (asked of the surviving controller).
    let flags = c.controller_flags(3 - leader);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(["service", "ps", "many", "-o", "json"]);
    let created = c
        .shoal(&args)
        .stdout
        .parse::<serde_json::Value>()
        .ok()
        .and_then(|v| {
            let items = v
                .as_array()
                .cloned()
                .or_else(|| v["items"].as_array().cloned())?;
            let t: Vec<Task> = items.iter().map(Task::from_json).collect();
            Some(format!(
                "{} tasks created, {} on a node, {} running",
                t.len(),
                t.iter().filter(|t| !t.node.is_empty()).count(),
                t.iter().filter(|t| t.live()).count()
            ))
        })
        .unwrap_or_else(|| "progress unknown".into());
    let other = 3 - leader;
    let took_over = wait_for(
        "the other controller leading",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let log = std::fs::read_to_string(
                c.state_dir()
                    .join("logs")
                    .join(format!("controller-{other}.log")),
            )
            .unwrap_or_default();
            Ok(log
                .contains("became leader")
                .then(|| t0.elapsed().as_secs_f64()))
        },
    )?;
    // Bring the killed one back (the CLI's context talks to controller 1).
    shoal(c, &["dev", "controller", "start", &leader.to_string()])?;
    let fault_end = Instant::now();
    let out = Outcome {
        name: "controller-kill".into(),
        injected: format!(
            "SIGKILL of the leading controller (controller-{leader}) during a scale 0 → {n}, 100 ms after the API took it (then: {created}); controller-{other} led after {took_over:.1} s; controller-{leader} restarted"
        ),
        fault_s: t0.elapsed().as_secs_f64(),
        ..Default::default()
    };
    let mut out = finish(
        x,
        traffic,
        out,
        fault_end,
        &format!("{n} many tasks running"),
        || Ok((live(c, "many")?.len() as u32 == n).then_some(())),
    )?;
    let all = tasks(c, "many")?;
    let wanted: Vec<&Task> = all.iter().filter(|t| t.desired == "running").collect();
    let slots: BTreeSet<u64> = wanted.iter().map(|t| t.slot).collect();
    let addrs: BTreeSet<&str> = wanted.iter().filter_map(|t| t.ip("wide")).collect();
    ensure!(
        wanted.len() as u32 == n,
        "{} tasks wanted running, not {n}",
        wanted.len()
    );
    ensure!(
        slots.len() as u32 == n && slots.iter().copied().eq(1..=n as u64),
        "slots are not exactly 1..={n}: {} distinct",
        slots.len()
    );
    ensure!(
        addrs.len() as u32 == n,
        "{} distinct addresses for {n} tasks",
        addrs.len()
    );
    out.notes.push(format!(
        "{n} tasks wanted running, slots 1..={n} each once, {n} distinct addresses; {} tasks in all",
        all.len()
    ));
    x.remove("many")?;
    shoal(c, &["network", "rm", "wide"])?;
    Ok(out)
}

/// Background churn for the etcd scenario: three services scaled between 1 and 3 replicas
/// and updated, one operation every 300 ms, until `stop`; errors while etcd is down are
/// expected and counted.
fn churn_loop(x: &Chaos, stop: &std::sync::atomic::AtomicBool) -> (u64, u64) {
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut i = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        i += 1;
        let svc = format!("ch-{}", i % 3);
        let args: Vec<String> = if i.is_multiple_of(2) {
            vec![
                "service".into(),
                "scale".into(),
                format!("{svc}={}", 1 + i % 3),
                "--detach".into(),
            ]
        } else {
            vec![
                "service".into(),
                "update".into(),
                svc,
                "--env-add".into(),
                format!("GEN={i}"),
                "--detach".into(),
            ]
        };
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        if x.c.shoal(&a).code == 0 {
            ok += 1;
        } else {
            failed += 1;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    (ok, failed)
}

/// d. etcd restarted in the middle of churn, then a compaction forced right after it comes
/// back, before the watchers reconnect (so they resume at a compacted revision: 410 → relist).
fn etcd_restart(x: &Chaos, secs: u64) -> Result<Outcome> {
    let c = &x.c;
    for i in 0..3 {
        apply(c, &service(&format!("ch-{i}"), 1, &["chaos"], IDLE, ""))?;
    }
    let traffic = x.traffic()?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let logs = c.state_dir().join("logs");
    let relists_before = count_in_logs(&logs, "relisting");
    let (t0, fault_end, ops, compacted) = std::thread::scope(|s| -> Result<_> {
        let h = s.spawn(|| churn_loop(x, &stop));
        std::thread::sleep(Duration::from_secs(secs));
        let t0 = Instant::now();
        let r = (|| -> Result<u64> {
            shoal(c, &["dev", "etcd", "stop", "1"])?;
            std::thread::sleep(Duration::from_secs(3));
            shoal(c, &["dev", "etcd", "start", "1"])?;
            // A write outside Shoal's keys, then compact everything before it: every watcher
            // resumes below the compacted revision.
            let ctl = |args: &[&str]| {
                let pki = c.pki_dir();
                let r = c.etcdctl(
                    Some((&pki.join("controller.crt"), &pki.join("controller.key"))),
                    args,
                );
                if r.code != 0 {
                    bail!("etcdctl {}: {}", args.join(" "), r.stderr.trim());
                }
                Ok(r.stdout)
            };
            let rev = wait_for(
                "etcd back",
                Duration::from_secs(30),
                Duration::from_millis(50),
                || {
                    Ok(ctl(&["put", "/shoal-chaos-probe", "x", "-w", "json"])
                        .ok()
                        .and_then(|o| {
                            serde_json::from_str::<serde_json::Value>(&o).ok()?["header"]
                                ["revision"]
                                .as_u64()
                        }))
                },
            )?;
            ctl(&["compact", &rev.to_string()])?;
            ctl(&["del", "/shoal-chaos-probe"])?;
            Ok(rev)
        })();
        let fault_end = Instant::now();
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let ops = h
            .join()
            .map_err(|_| anyhow::anyhow!("churn thread panicked"))?;
        Ok((t0, fault_end, ops, r?))
    })?;
    let out = Outcome {
        name: "etcd-restart".into(),
        injected: format!(
            "etcd SIGKILLed and restarted after 3 s during churn (scale/update of 3 services every 300 ms for {}s: {} ok, {} refused while etcd was down), then compacted at revision {compacted} right as it came back",
            2 * secs, ops.0, ops.1
        ),
        fault_s: fault_end.duration_since(t0).as_secs_f64(),
        ..Default::default()
    };
    let mut out = finish(
        x,
        traffic,
        out,
        fault_end,
        "the churned services converged",
        || {
            for i in 0..3 {
                let svc = format!("ch-{i}");
                let spec: serde_json::Value =
                    serde_json::from_str(&shoal(c, &["service", "inspect", &svc])?)?;
                let spec = spec
                    .as_array()
                    .and_then(|a| a.first())
                    .cloned()
                    .unwrap_or(spec);
                let want = spec
                    .pointer("/spec/replicas")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0);
                let gen = spec
                    .pointer("/spec/env")
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                let t = tasks(c, &svc)?;
                let running: Vec<&Task> = t.iter().filter(|t| t.live()).collect();
                let stale = t.iter().any(|t| t.desired == "running" && !t.live());
                if running.len() as u64 != want || stale || gen.is_empty() {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )?;
    let relists = count_in_logs(&logs, "relisting") - relists_before;
    out.notes.push(format!(
        "{relists} watch(es) logged \"watch revision compacted; relisting\" after the compaction"
    ));
    for i in 0..3 {
        x.remove(&format!("ch-{i}"))?;
    }
    Ok(out)
}

/// How often `word` occurs in the cluster's logs.
fn count_in_logs(dir: &std::path::Path, word: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .matches(word)
                        .count()
                })
                .sum()
        })
        .unwrap_or(0)
}

/// e. containerd stopped on node 3 for `secs` seconds while web scales up.
fn containerd_stop(x: &Chaos, secs: u64) -> Result<Outcome> {
    let c = &x.c;
    x.spread_web()?;
    let traffic = x.traffic()?;
    let pid = daemon_pid(c, "containerd-3").context("containerd-3 is not running")?;
    let t0 = Instant::now();
    signal(pid, nix::sys::signal::Signal::SIGTERM)?;
    wait_for(
        "containerd-3 gone",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || Ok(daemon_pid(c, "containerd-3").is_none().then_some(())),
    )?;
    shoal(c, &["service", "scale", "web=6", "--detach"])?;
    let mut error = None;
    while t0.elapsed() < Duration::from_secs(secs) {
        check_stop()?;
        if error.is_none() {
            error = tasks(c, "web")?
                .into_iter()
                .find(|t| t.node == "node-3" && t.err.contains("container runtime"))
                .map(|t| t.err);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let table = shoal(c, &["service", "ps", "web"])?;
    c.start_node(3);
    let fault_end = Instant::now();
    let error = error.with_context(|| {
        format!("no task on node-3 showed a container runtime error while containerd was stopped:\n{table}")
    })?;
    let mut out = Outcome {
        name: "containerd-stop".into(),
        injected: format!(
            "node-3's containerd stopped (SIGTERM) for {secs} s while web scaled 3 → 6; started again"
        ),
        fault_s: t0.elapsed().as_secs_f64(),
        ..Default::default()
    };
    out.notes
        .push(format!("`service ps web` error on node-3: {error}"));
    let out = finish(x, traffic, out, fault_end, "web at 6 running tasks", || {
        Ok((live(c, "web")?.len() == 6).then_some(()))
    })?;
    shoal(c, &["service", "scale", "web=3"])?;
    wait_for(
        "web back at 3",
        Duration::from_secs(120),
        Duration::from_millis(300),
        || {
            Ok((tasks(c, "web")?
                .iter()
                .filter(|t| t.desired == "running")
                .count()
                == 3
                && live(c, "web")?.len() == 3)
                .then_some(()))
        },
    )?;
    Ok(out)
}

/// f. Node 3 cut off for `secs` seconds: its underlay interface drops everything (an nft
/// table inside its namespace) and its agent is frozen (SIGSTOP: the dev cluster's agents
/// reach etcd over the root namespace's loopback, whose firewall the harness never
/// touches). Its tasks must be replaced elsewhere; once it returns, its stale tasks stop and
/// their addresses are in no other node's load balancer.
fn partition(x: &Chaos, secs: u64) -> Result<Outcome> {
    let c = &x.c;
    x.spread_web()?;
    let before = live(c, "web")?;
    let stale: Vec<Task> = before
        .iter()
        .filter(|t| t.node == "node-3")
        .cloned()
        .collect();
    ensure!(!stale.is_empty(), "no web task on node-3 to cut off");
    let traffic = x.traffic()?;
    let pid = daemon_pid(c, "agent-3").context("agent-3 is not running")?;
    let t0 = Instant::now();
    let replaced;
    {
        let _cut = Partition::cut(3)?;
        let _frozen = Frozen::freeze(pid)?;
        replaced = wait_for(
            "web's node-3 tasks replaced elsewhere",
            Duration::from_secs(secs),
            Duration::from_millis(200),
            || {
                let now = live(c, "web")?;
                let elsewhere = now.iter().filter(|t| t.node != "node-3").count();
                Ok((elsewhere == 3).then(|| t0.elapsed().as_secs_f64()))
            },
        );
        let left = Duration::from_secs(secs).saturating_sub(t0.elapsed());
        std::thread::sleep(left);
    }
    let fault_end = Instant::now();
    let replaced = replaced?;
    let out = Outcome {
        name: "partition".into(),
        injected: format!(
            "node-3 cut off for {secs} s (nft drop on its underlay eth0 inside shoal-node-3, its agent SIGSTOPped); its {} web task(s) were replaced on other nodes after {replaced:.1} s",
            stale.len()
        ),
        fault_s: t0.elapsed().as_secs_f64(),
        ..Default::default()
    };
    let ids: BTreeSet<&str> = stale.iter().map(|t| t.id.as_str()).collect();
    let mut out = finish(
        x,
        traffic,
        out,
        fault_end,
        "the stale tasks stopped",
        || {
            let all = tasks(c, "web")?;
            let still = all
                .iter()
                .filter(|t| ids.contains(t.id.as_str()) && t.state == "running")
                .count();
            Ok((still == 0 && live(c, "web")?.len() == 3).then_some(()))
        },
    )?;
    // No other node (nor the client) balances to a stale address.
    let mut namespaces = vec![
        "shoal-node-1".to_string(),
        "shoal-node-2".to_string(),
        x.client_ns.clone(),
    ];
    namespaces.sort();
    for ns in &namespaces {
        let rules = in_ns(ns, &["nft", "list", "ruleset"])?;
        for t in &stale {
            for (_, ip) in &t.addrs {
                ensure!(
                    !rules.contains(&format!("{ip} ")) && !rules.contains(&format!("{ip},")),
                    "{ns} still balances to the stale task {} at {ip}",
                    t.id
                );
            }
        }
    }
    out.notes.push(format!(
        "the {} stale task(s) stopped; none of their addresses in the rules of {}",
        stale.len(),
        namespaces.join(", ")
    ));
    x.node_serves(3)?;
    out.notes.push(format!(
        "{:.1} s after it came back, a new task pinned to node-3 answered over the overlay and the mesh on 198.18.0.3:8080",
        fault_end.elapsed().as_secs_f64()
    ));
    Ok(out)
}

/// One churn operation on service `svc` (`cs-<i>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create it with these replicas on this network.
    Create(u32, usize),
    /// Scale it.
    Scale(u32),
    /// Change its environment (a rolling replacement of its tasks).
    Update(u32),
    /// Remove it.
    Remove,
}

/// The churn plan: `cycles` operations over `services` services and `networks` networks,
/// from a fixed seed (xorshift), each valid for the state the earlier ones left (create
/// only what is absent; scale, update and remove only what exists).
pub fn plan(cycles: u32, services: usize, networks: usize, seed: u64) -> Vec<(usize, Op)> {
    let mut s = seed.max(1);
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut exists = vec![false; services];
    let mut out = Vec::with_capacity(cycles as usize);
    for _ in 0..cycles {
        let i = (next() % services as u64) as usize;
        let op = if !exists[i] {
            exists[i] = true;
            Op::Create((next() % 3) as u32, i % networks)
        } else {
            match next() % 4 {
                0 => Op::Scale((next() % 3) as u32),
                1 | 2 => Op::Update(next() as u32 % 1000),
                _ => {
                    exists[i] = false;
                    Op::Remove
                }
            }
        };
        out.push((i, op));
    }
    out
}

/// g. `cycles` create / scale / update / remove operations over 20 services and 3
/// networks, under traffic; then every service must run exactly its replicas.
fn churn(x: &Chaos, cycles: u32) -> Result<Outcome> {
    let c = &x.c;
    let nets = ["cn-0", "cn-1", "cn-2"];
    for n in nets {
        apply(
            c,
            &format!("apiVersion: shoal/v1\nkind: Network\nmetadata: {{name: {n}}}\nspec: {{}}\n"),
        )?;
    }
    let traffic = x.traffic()?;
    let t0 = Instant::now();
    let mut replicas: BTreeMap<usize, u32> = BTreeMap::new();
    let mut refused = 0;
    for (i, op) in plan(cycles, 20, nets.len(), 18) {
        check_stop()?;
        let svc = format!("cs-{i}");
        let r = match &op {
            Op::Create(r, n) => {
                replicas.insert(i, *r);
                apply(c, &service(&svc, *r, &[nets[*n]], IDLE, ""))
            }
            Op::Scale(r) => {
                replicas.insert(i, *r);
                shoal(c, &["service", "scale", &format!("{svc}={r}"), "--detach"]).map(|_| ())
            }
            Op::Update(g) => shoal(
                c,
                &[
                    "service",
                    "update",
                    &svc,
                    "--env-add",
                    &format!("GEN={g}"),
                    "--detach",
                ],
            )
            .map(|_| ()),
            Op::Remove => {
                replicas.remove(&i);
                shoal(c, &["service", "rm", &svc]).map(|_| ())
            }
        };
        if let Err(e) = r {
            refused += 1;
            eprintln!("chaos: churn {svc} {op:?}: {e:#}");
        }
    }
    ensure!(refused == 0, "{refused} churn operation(s) were refused");
    let fault_end = Instant::now();
    let out = Outcome {
        name: "churn".into(),
        injected: format!(
            "{cycles} create/scale/update/remove operations over 20 services and 3 networks in {:.0} s ({} services left)",
            t0.elapsed().as_secs_f64(),
            replicas.len()
        ),
        fault_s: t0.elapsed().as_secs_f64(),
        ..Default::default()
    };
    let mut out = finish(
        x,
        traffic,
        out,
        fault_end,
        "every churned service at its replicas",
        || {
            for i in 0..20 {
                let svc = format!("cs-{i}");
                let t = tasks(c, &svc)?;
                let want = replicas.get(&i).copied().unwrap_or(0) as usize;
                let running = t.iter().filter(|t| t.live()).count();
                let other = t
                    .iter()
                    .filter(|t| t.desired == "running" && !t.live())
                    .count();
                if running != want || other != 0 {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )?;
    out.notes.push(format!(
        "{} services at their replicas ({} tasks)",
        replicas.len(),
        replicas.values().sum::<u32>()
    ));
    for i in replicas.keys() {
        x.remove(&format!("cs-{i}"))?;
    }
    for n in nets {
        shoal(c, &["network", "rm", n])?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_of_should_find_the_entries_of_the_failed_source_port() {
        let table = "ipv4     2 tcp      6 117 SYN_SENT src=10.0.1.3 dst=10.0.1.2 sport=40000 dport=80 [UNREPLIED] src=10.0.1.9 dst=10.0.1.3 sport=80 dport=40000 mark=0 zone=0 use=2\n\
                     ipv4     2 tcp      6 110 TIME_WAIT src=10.0.1.3 dst=10.0.1.2 sport=40002 dport=80 src=10.0.1.5 dst=10.0.1.3 sport=80 dport=40002 [ASSURED] mark=0 zone=0 use=2\n";
        let found = conntrack_of(table, "connection timed out (from port 40000)");
        assert!(found.starts_with("ipv4 2 tcp 6 117 SYN_SENT"), "{found}");
        assert!(
            found.contains("src=10.0.1.9") && !found.contains("40002"),
            "{found}"
        );
        assert_eq!(
            conntrack_of(table, "timed out (from port 41000)"),
            "no entry from port 41000"
        );
        assert_eq!(conntrack_of(table, "timed out"), "no source port");
    }

    #[test]
    fn plan_should_only_touch_services_in_a_state_that_allows_the_operation() {
        let p = plan(1000, 20, 3, 18);
        assert_eq!(p.len(), 1000);
        let mut exists = [false; 20];
        let mut kinds = BTreeSet::new();
        for (i, op) in &p {
            match op {
                Op::Create(r, n) => {
                    assert!(!exists[*i] && *r < 3 && *n < 3);
                    exists[*i] = true;
                    kinds.insert("create");
                }
                Op::Remove => {
                    assert!(exists[*i]);
                    exists[*i] = false;
                    kinds.insert("remove");
                }
                Op::Scale(r) => {
                    assert!(exists[*i] && *r < 3);
                    kinds.insert("scale");
                }
                Op::Update(_) => {
                    assert!(exists[*i]);
                    kinds.insert("update");
                }
            }
        }
        assert_eq!(kinds.len(), 4, "every kind of operation occurs");
    }

    #[test]
    fn plan_should_be_the_same_for_the_same_seed() {
        assert_eq!(plan(50, 20, 3, 7), plan(50, 20, 3, 7));
        assert_ne!(plan(50, 20, 3, 7), plan(50, 20, 3, 8));
    }

    #[test]
    fn run_should_name_the_scenarios_when_given_an_unknown_one() {
        assert!(ALL.contains(&"agent-kill") && ALL.len() == 7);
    }
}
