//! Figure 9, rolling update, on the local cluster: an httpd service with a health check and
//! `updateConfig {parallelism: 5, order: start-first}` is updated with `shoal service update
//! --force` while paced HTTP load runs through its VIP (from a task on node 1) and through
//! the routing mesh (node 1's namespace → node 3's address). Timed from the update being sent
//! until every task is on the new spec and healthy, and until `status.updateStatus` says
//! `completed`; the lower bound is `ceil(replicas / parallelism) × start-to-healthy`, where
//! start-to-healthy is measured in the same run by scaling the service up by one batch
//! (5 tasks started together, no updater involved): created → the last of them healthy.
//!
//! What happened is recorded from three API watch streams (tasks, endpoints, the service),
//! each line stamped with the wall clock when it arrived, and analysed afterwards by the
//! pure [`analyse`] (unit-tested below): per new task created → healthy → ready in the
//! Endpoints of every network, batches, gaps between batches, the update states. The
//! nftables rules of the two paths' namespaces are traced during the update (`__lbtrace`)
//! to show when each replaced task left them ([`left_lb`]) against when it was wanted
//! stopped and when it ended. The service is removed at the end, also on an error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use shoal_api_types::{
    Endpoints, EventType, Object, Resource, Service, Task, TaskState, UpdateState, WatchEvent,
};

use crate::cluster::{in_ns, poll, Dev, BUSYBOX, HTTPD_APP};
use crate::common::*;
use crate::rules::parse_kv;

/// The service's name.
const SVC: &str = "roll";
/// Its published port (figure 4's `web` has 8080).
const PORT: u16 = 8090;
/// Tasks replaced at once.
const PARALLELISM: usize = 5;
/// Requests per second per path, sent by this many workers (each closed-loop).
const RATE: f64 = 100.0;
const WORKERS: usize = 4;

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn ts_ms(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<f64> {
    t.map(|t| t.timestamp_micros() as f64 / 1000.0)
}

/// An API watch stream (`curl -N`), every line stamped with the wall clock (unix ms) when it
/// arrived. The curl process is killed when taken or dropped.
struct WatchStream {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<(f64, String)>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl WatchStream {
    fn start(dev: &Dev, path: &str) -> Result<WatchStream> {
        let (child, out) = dev.watch_curl(path)?;
        let lines = Arc::new(Mutex::new(vec![]));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let at = now_ms();
                if let Ok(mut l) = sink.lock() {
                    l.push((at, line));
                }
            }
        });
        Ok(WatchStream {
            child: Some(child),
            lines,
            reader: Some(reader),
        })
    }

    fn len(&self) -> usize {
        self.lines.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Stops the stream; returns its lines.
    fn take(mut self) -> Vec<(f64, String)> {
        self.stop();
        std::mem::take(&mut *self.lines.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One stamped event of a watch stream.
#[derive(Debug, Clone)]
pub(crate) struct Stamped<T> {
    /// Unix ms when this tool read it.
    pub at: f64,
    /// DELETED or not.
    pub deleted: bool,
    /// The object.
    pub obj: T,
}

/// Typed events of a stream (bookmarks and lines that do not parse are left out).
fn parse_events<S: Resource>(lines: &[(f64, String)]) -> Vec<Stamped<Object<S>>> {
    lines
        .iter()
        .filter_map(|(at, l)| {
            let ev: WatchEvent<Value> = serde_json::from_str(l).ok()?;
            let deleted = match ev.event_type {
                EventType::Added | EventType::Modified => false,
                EventType::Deleted => true,
                _ => return None,
            };
            Some(Stamped {
                at: *at,
                deleted,
                obj: serde_json::from_value(ev.object).ok()?,
            })
        })
        .collect()
}

/// A paced HTTP load (`shoal-bench __httpload`) in a namespace; stopped through a file.
struct Load {
    what: &'static str,
    child: Option<Child>,
}

impl Load {
    fn start(what: &'static str, ns: &str, addr: &str, stop: &Path, max_secs: u32) -> Result<Load> {
        let exe = std::env::current_exe()?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(exe)
            .args([
                "__httpload",
                addr,
                &RATE.to_string(),
                &WORKERS.to_string(),
                &max_secs.to_string(),
            ])
            .arg(stop)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start the {what} load"))?;
        Ok(Load {
            what,
            child: Some(child),
        })
    }

    /// Waits for it to end (after the stop file appeared); its output.
    fn finish(mut self) -> Result<LoadResult> {
        let child = self.child.take().context("load already finished")?;
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "{} load: {}",
                self.what,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(LoadResult::parse(&text))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `shoal-bench __lbtrace` in a namespace; stopped through the same file as the loads.
struct Trace(Option<Child>);

impl Trace {
    fn start(ns: &str, stop: &Path) -> Result<Trace> {
        let exe = std::env::current_exe()?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(exe)
            .args(["__lbtrace", "100", "600"])
            .arg(stop)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start __lbtrace")?;
        Ok(Trace(Some(child)))
    }

    fn finish(mut self) -> LbTrace {
        let Some(child) = self.0.take() else {
            return vec![];
        };
        let out = child
            .wait_with_output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.lines()
            .filter_map(|l| {
                let (at, ips) = l.split_once(' ').unwrap_or((l, ""));
                Some((
                    at.parse().ok()?,
                    ips.split(',')
                        .filter(|i| !i.is_empty())
                        .map(str::to_string)
                        .collect(),
                ))
            })
            .collect()
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What one load reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LoadResult {
    pub sent: u64,
    pub failed: u64,
    pub slow: u64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub start_ms: f64,
    pub end_ms: f64,
    /// (unix ms, kind) of each failure.
    pub fails: Vec<(f64, String)>,
}

impl LoadResult {
    fn parse(out: &str) -> LoadResult {
        let first = out.lines().next().unwrap_or_default();
        let p = parse_kv(first);
        LoadResult {
            sent: p("sent") as u64,
            failed: p("failed") as u64,
            slow: p("slow") as u64,
            p99_ms: p("p99_ms"),
            max_ms: p("max_ms"),
            start_ms: p("start_ms"),
            end_ms: p("end_ms"),
            fails: out
                .lines()
                .filter_map(|l| l.strip_prefix("fail="))
                .filter_map(|f| {
                    let mut it = f.splitn(3, ',');
                    let at = it.next()?.parse().ok()?;
                    Some((at, it.next()?.to_string()))
                })
                .collect(),
        }
    }
}

/// One batch of new tasks (in creation order, `parallelism` at a time).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Batch {
    /// Unix ms: the first task of the batch created.
    pub first_created: f64,
    /// The last one created.
    pub last_created: f64,
    /// The last one seen running and healthy.
    pub last_healthy: Option<f64>,
    /// The last one seen ready in the Endpoints of every network of the service.
    pub last_ready: Option<f64>,
}

/// A task the update replaced.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OldTask {
    /// Its addresses on every network.
    pub ips: Vec<String>,
    /// Unix ms: seen wanted stopped.
    pub wanted_stop: f64,
    /// Unix ms: first seen listed ready in no Endpoints object after it had been ready (the
    /// controller took it out of service; every agent then withdraws it).
    pub unready: Option<f64>,
    /// Unix ms: seen ended.
    pub ended: Option<f64>,
}

/// Snapshots of the addresses in one namespace's nftables ruleset: (unix ms, addresses),
/// taken whenever they changed.
pub(crate) type LbTrace = Vec<(f64, Vec<String>)>;

/// For each old task listed in the trace: when its last address left the ruleset (unix ms;
/// `None`: still there when the trace ended).
pub(crate) fn left_lb(trace: &LbTrace, old: &[OldTask]) -> Vec<(OldTask, Option<f64>)> {
    old.iter()
        .filter(|o| {
            trace
                .iter()
                .any(|(_, ips)| o.ips.iter().any(|ip| ips.contains(ip)))
        })
        .map(|o| {
            let listed = |ips: &Vec<String>| o.ips.iter().any(|ip| ips.contains(ip));
            let last = trace.iter().rposition(|(_, ips)| listed(ips));
            let left = last.and_then(|i| trace.get(i + 1)).map(|(at, _)| *at);
            (o.clone(), left)
        })
        .collect()
}

/// What the streams say about one update.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Timeline {
    /// New tasks (on the new spec) created.
    pub new_tasks: usize,
    /// Per new task: created → running and healthy (ms).
    pub start_to_healthy: Vec<f64>,
    /// Per new task: created → ready in the Endpoints of every network (ms).
    pub start_to_ready: Vec<f64>,
    /// First time `replicas` new tasks were running and healthy and no old task was wanted
    /// running (unix ms).
    pub all_new_healthy: Option<f64>,
    /// First time every old task had ended.
    pub old_ended: Option<f64>,
    /// Per new task: created → running (`status.startedAt`, the agent's clock) (ms).
    pub start_to_running: Vec<f64>,
    /// Per new task: running (`status.startedAt`) → seen healthy (ms).
    pub running_to_healthy: Vec<f64>,
    /// Per old task: seen wanted stopped → seen ended (ms).
    pub old_stop: Vec<f64>,
    /// Old tasks replaced during the update: addresses, when seen wanted stopped, when
    /// seen ended.
    pub old_tasks: Vec<OldTask>,
    /// Most tasks running and wanted running at once.
    pub max_running: usize,
    /// Most tasks running at once, counting those told to stop that still run.
    pub max_containers: usize,
    /// Most new tasks starting (created, not yet healthy, wanted running) at once.
    pub max_starting: usize,
    /// Batches in creation order.
    pub batches: Vec<Batch>,
    /// Update states as they changed: (unix ms seen, state, message).
    pub states: Vec<(f64, UpdateState, String)>,
    /// When `completed` was first seen.
    pub completed: Option<f64>,
}

/// Which update the streams are read for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpdateRun<'a> {
    /// The service.
    pub service: &'a str,
    /// Its `forceUpdate` after the update: tasks carrying it are on the new spec.
    pub force: u64,
    /// Its replicas.
    pub replicas: usize,
    /// Its `updateConfig.parallelism`.
    pub parallelism: usize,
    /// Unix ms when the update was sent.
    pub since: f64,
}

/// The three watch streams of one update: tasks, endpoints, services.
pub(crate) type Streams = (
    Vec<Stamped<Task>>,
    Vec<Stamped<Endpoints>>,
    Vec<Stamped<Service>>,
);

/// Reads the streams of one update.
pub(crate) fn analyse(streams: &Streams, run: UpdateRun<'_>) -> Timeline {
    let (tasks, endpoints, services) = streams;
    let UpdateRun {
        service,
        force,
        replicas,
        parallelism,
        since,
    } = run;
    let mut tl = Timeline::default();
    let mut live: BTreeMap<String, Task> = BTreeMap::new();
    let mut healthy_at: HashMap<String, f64> = HashMap::new();
    let mut created: HashMap<String, f64> = HashMap::new();
    let mut started: HashMap<String, f64> = HashMap::new();
    let mut stop_wanted: HashMap<String, f64> = HashMap::new();
    let mut ended: HashMap<String, f64> = HashMap::new();
    let mut ips: HashMap<String, Vec<String>> = HashMap::new();
    let is_new = |t: &Task| t.spec.force_update == force;
    for ev in tasks {
        let t = &ev.obj;
        if t.spec.service != service {
            continue;
        }
        let name = t.metadata.name.clone();
        if is_new(t) {
            let c = ts_ms(t.metadata.creation_timestamp).unwrap_or(ev.at);
            created.entry(name.clone()).or_insert(c);
            if let Some(st) = ts_ms(t.status.started_at) {
                started.entry(name.clone()).or_insert(st);
            }
            if t.status.state == TaskState::Running
                && t.status.healthy
                && t.spec.desired_state == TaskState::Running
            {
                healthy_at.entry(name.clone()).or_insert(ev.at);
            }
        }
        if !is_new(t) {
            let a: Vec<String> = t
                .spec
                .attachments
                .iter()
                .map(|a| a.address.split('/').next().unwrap_or_default().to_string())
                .filter(|a| !a.is_empty())
                .collect();
            if !a.is_empty() {
                ips.insert(name.clone(), a);
            }
        }
        if !is_new(t) && ev.at >= since {
            if t.spec.desired_state != TaskState::Running {
                stop_wanted.entry(name.clone()).or_insert(ev.at);
            }
            if t.status.state.is_terminal() || ev.deleted {
                ended.entry(name.clone()).or_insert(ev.at);
            }
        }
        if ev.deleted {
            live.remove(&name);
        } else {
            live.insert(name, t.clone());
        }
        if ev.at < since {
            continue;
        }
        let wanted = |t: &&Task| t.spec.desired_state == TaskState::Running;
        let new_healthy = live
            .values()
            .filter(|t| is_new(t))
            .filter(wanted)
            .filter(|t| t.status.state == TaskState::Running && t.status.healthy)
            .count();
        let old_wanted = live.values().filter(|t| !is_new(t)).filter(wanted).count();
        if tl.all_new_healthy.is_none() && new_healthy >= replicas && old_wanted == 0 {
            tl.all_new_healthy = Some(ev.at);
        }
        let old_live = live
            .values()
            .filter(|t| !is_new(t) && !t.status.state.is_terminal())
            .count();
        if tl.old_ended.is_none() && old_live == 0 && !created.is_empty() {
            tl.old_ended = Some(ev.at);
        }
        let running = live
            .values()
            .filter(|t| t.status.state == TaskState::Running);
        tl.max_containers = tl.max_containers.max(running.clone().count());
        tl.max_running = tl.max_running.max(running.filter(wanted).count());
        tl.max_starting = tl.max_starting.max(
            live.values()
                .filter(|t| is_new(t))
                .filter(wanted)
                .filter(|t| !t.status.state.is_terminal())
                .filter(|t| !(t.status.state == TaskState::Running && t.status.healthy))
                .count(),
        );
    }
    // Ready in the Endpoints: per network, the first time each task is listed ready.
    let mut ready: BTreeMap<String, HashMap<String, f64>> = BTreeMap::new();
    for ev in endpoints {
        if ev.deleted || ev.obj.spec.service != service {
            continue;
        }
        let net = ready.entry(ev.obj.spec.network.clone()).or_default();
        for et in ev.obj.spec.tasks.iter().filter(|et| et.ready) {
            net.entry(et.task.clone()).or_insert(ev.at);
        }
    }
    // Out of service: per Endpoints object, the tasks it lists ready; an old task is out
    // when no object lists it ready any more, having done so before.
    let mut listed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut seen_ready: BTreeSet<String> = BTreeSet::new();
    let mut unready: HashMap<String, f64> = HashMap::new();
    for ev in endpoints {
        if ev.obj.spec.service != service {
            continue;
        }
        let name = ev.obj.metadata.name.clone();
        if ev.deleted {
            listed.remove(&name);
        } else {
            let now: BTreeSet<String> = ev
                .obj
                .spec
                .tasks
                .iter()
                .filter(|t| t.ready)
                .map(|t| t.task.clone())
                .collect();
            seen_ready.extend(now.iter().cloned());
            listed.insert(name, now);
        }
        for task in &seen_ready {
            if !unready.contains_key(task) && !listed.values().any(|l| l.contains(task)) {
                unready.insert(task.clone(), ev.at);
            }
        }
    }
    let ready_at = |task: &str| -> Option<f64> {
        let mut at: Option<f64> = None;
        for net in ready.values() {
            at = Some(at.unwrap_or(0.0).max(*net.get(task)?));
        }
        at
    };
    let mut order: Vec<(f64, String)> = created.iter().map(|(n, c)| (*c, n.clone())).collect();
    order.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    tl.new_tasks = order.len();
    for (c, n) in &order {
        if let Some(h) = healthy_at.get(n) {
            tl.start_to_healthy.push(h - c);
        }
        if let Some(st) = started.get(n) {
            tl.start_to_running.push(st - c);
            if let Some(h) = healthy_at.get(n) {
                tl.running_to_healthy.push(h - st);
            }
        }
        if let Some(r) = ready_at(n) {
            tl.start_to_ready.push(r - c);
        }
    }
    let mut stops: Vec<(&String, &f64)> = stop_wanted.iter().collect();
    stops.sort_by(|a, b| a.0.cmp(b.0));
    for (n, w) in stops {
        if let Some(e) = ended.get(n) {
            tl.old_stop.push(e - w);
        }
        tl.old_tasks.push(OldTask {
            ips: ips.get(n).cloned().unwrap_or_default(),
            wanted_stop: *w,
            unready: unready.get(n).copied(),
            ended: ended.get(n).copied(),
        });
    }
    for chunk in order.chunks(parallelism.max(1)) {
        let all = |f: &dyn Fn(&str) -> Option<f64>| -> Option<f64> {
            chunk
                .iter()
                .map(|(_, n)| f(n))
                .try_fold(0.0f64, |a, v| v.map(|v| a.max(v)))
        };
        tl.batches.push(Batch {
            first_created: chunk[0].0,
            last_created: chunk[chunk.len() - 1].0,
            last_healthy: all(&|n| healthy_at.get(n).copied()),
            last_ready: all(&|n| ready_at(n)),
        });
    }
    for ev in services {
        if ev.obj.metadata.name != service || ev.at < since {
            continue;
        }
        let Some(us) = &ev.obj.status.update_status else {
            continue;
        };
        if tl.states.last().map(|s| s.1) != Some(us.state) {
            tl.states.push((ev.at, us.state, us.message.clone()));
        }
        if us.state == UpdateState::Completed && tl.completed.is_none() {
            tl.completed = Some(ev.at);
        }
    }
    tl
}

/// The tasks of a service (API list).
fn tasks(dev: &Dev, svc: &str) -> Result<Vec<Task>> {
    let v = dev.api(&format!("tasks?service={svc}"))?;
    Ok(v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| serde_json::from_value(t).ok())
        .collect())
}

fn healthy_count(ts: &[Task]) -> usize {
    ts.iter()
        .filter(|t| {
            t.spec.desired_state == TaskState::Running
                && t.status.state == TaskState::Running
                && t.status.healthy
        })
        .count()
}

fn service(dev: &Dev) -> Result<Service> {
    Ok(serde_json::from_value(
        dev.api(&format!("services/{SVC}"))?,
    )?)
}

/// Scales up by one batch (`PARALLELISM` tasks started together, no updater: a
/// replicas-only change) and times created → the last of them running and healthy (ms).
fn scale_up_batch(dev: &Dev, to: usize) -> Result<f64> {
    let watch = WatchStream::start(dev, &format!("tasks?service={SVC}&watch=true"))?;
    poll(Duration::from_secs(10), "the tasks watch", || {
        Ok((watch.len() > 0).then_some(()))
    })?;
    let before: Vec<String> = tasks(dev, SVC)?
        .into_iter()
        .map(|t| t.metadata.name)
        .collect();
    dev.shoal(&[
        "service",
        "update",
        "--replicas",
        &to.to_string(),
        "-d",
        SVC,
    ])?;
    poll(
        Duration::from_secs(120),
        "the scaled-up tasks healthy",
        || Ok((healthy_count(&tasks(dev, SVC)?) >= to).then_some(())),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let evs: Vec<Stamped<Task>> = parse_events(&watch.take());
    let (mut first_created, mut last_healthy) = (f64::MAX, 0.0f64);
    let mut seen: HashMap<String, ()> = HashMap::new();
    for ev in &evs {
        let t = &ev.obj;
        if before.contains(&t.metadata.name) || t.spec.desired_state != TaskState::Running {
            continue;
        }
        if let Some(c) = ts_ms(t.metadata.creation_timestamp) {
            first_created = first_created.min(c);
        }
        if t.status.state == TaskState::Running
            && t.status.healthy
            && seen.insert(t.metadata.name.clone(), ()).is_none()
        {
            last_healthy = last_healthy.max(ev.at);
        }
    }
    if seen.len() < PARALLELISM || first_created == f64::MAX {
        bail!(
            "scale-up to {to}: saw {} of {PARALLELISM} new tasks healthy",
            seen.len()
        );
    }
    Ok(last_healthy - first_created)
}

/// Figure 9. `probe_ns` is the namespace of a task on node 1 on network `bench`.
pub(crate) fn rolling_update(dev: &Dev, quick: bool, probe_ns: &str) -> Result<Vec<Row>> {
    let replicas: usize = if quick { 10 } else { 30 };
    let batches = replicas.div_ceil(PARALLELISM);
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().unwrap_or_default().to_string();
    let monitor_ms = 5000.0; // updateConfig.monitor's default; delay 0
    dev.apply(&format!(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: {SVC}}}\nspec:\n  image: {BUSYBOX}\n  \
         command: [sh, -c]\n  args: [\"{HTTPD_APP}\"]\n  replicas: {replicas}\n  networks: [{{name: bench}}]\n  \
         ports: [{{published: {PORT}, target: 80}}]\n  \
         healthcheck: {{command: [wget, -q, -O, /dev/null, \"http://127.0.0.1/\"], intervalSeconds: 1, timeoutSeconds: 2, retries: 3}}\n  \
         updateConfig: {{parallelism: {PARALLELISM}, order: start-first}}\n"
    ))?;
    let res = (|| -> Result<Vec<Row>> {
        poll(
            Duration::from_secs(300),
            "every task running and healthy",
            || Ok((healthy_count(&tasks(dev, SVC)?) >= replicas).then_some(())),
        )?;
        let vip = poll(Duration::from_secs(30), "the VIP", || dev.vip(SVC))?;
        let vip_addr = format!("{vip}:80");
        let mesh_addr = format!("198.18.0.3:{PORT}");
        poll(Duration::from_secs(30), "an answer through the VIP", || {
            Ok(in_ns(probe_ns, &[&exe, "__http", &vip_addr]).ok())
        })?;
        poll(
            Duration::from_secs(30),
            "an answer through the mesh",
            || Ok(in_ns("shoal-node-1", &[&exe, "__http", &mesh_addr]).ok()),
        )?;
        // Every stream lists what exists first (ADDED), then the changes.
        let tw = WatchStream::start(dev, &format!("tasks?service={SVC}&watch=true"))?;
        let ew = WatchStream::start(dev, &format!("endpoints?service={SVC}&watch=true"))?;
        let sw = WatchStream::start(dev, "services?watch=true")?;
        poll(Duration::from_secs(10), "the watch streams", || {
            Ok((tw.len() >= replicas && ew.len() > 0 && sw.len() > 0).then_some(()))
        })?;
        let stop = PathBuf::from(format!("/tmp/{}-roll-stop", run_id()));
        let _ = std::fs::remove_file(&stop);
        let vip_load = Load::start("VIP", probe_ns, &vip_addr, &stop, 600)?;
        let mesh_load = Load::start("mesh", "shoal-node-1", &mesh_addr, &stop, 600)?;
        // When old tasks leave the load balancers the two paths go through: the VIP rules
        // in the probe's namespace, the mesh rules in node 3's.
        let vip_trace = Trace::start(probe_ns, &stop)?;
        let mesh_trace = Trace::start("shoal-node-3", &stop)?;
        std::thread::sleep(Duration::from_secs(2));
        eprintln!("bench:   rolling update of {replicas} tasks (parallelism {PARALLELISM}, start-first) under load");
        let sent = now_ms();
        let t0 = Instant::now();
        let sent_res = dev.shoal(&["service", "update", "--force", "-d", SVC]);
        // Until the update settles: `completed`, or a state that will not move on its own.
        let mut end_state = None;
        let mut settled_without_status: Option<Instant> = None;
        let waited = poll(
            Duration::from_secs(if quick { 180 } else { 300 }),
            "the update to complete",
            || {
                sent_res.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
                let s = service(dev)?;
                match s.status.update_status.as_ref().map(|u| u.state) {
                    Some(UpdateState::Updating) | Some(UpdateState::RollbackStarted) => Ok(None),
                    Some(st) => {
                        end_state = Some(st);
                        Ok(Some(()))
                    }
                    None => {
                        // No updateStatus: an orchestrator without the updater replaces
                        // the tasks anyway; give up 15 s after they all run on the new spec.
                        let ts = tasks(dev, SVC)?;
                        let done = ts
                            .iter()
                            .filter(|t| {
                                t.spec.force_update == s.spec.force_update
                                    && t.spec.desired_state == TaskState::Running
                                    && t.status.state == TaskState::Running
                                    && t.status.healthy
                            })
                            .count()
                            >= replicas;
                        match (done, settled_without_status) {
                            (false, _) => settled_without_status = None,
                            (true, None) => settled_without_status = Some(Instant::now()),
                            (true, Some(t)) if t.elapsed() > Duration::from_secs(15) => {
                                return Ok(Some(()))
                            }
                            _ => {}
                        }
                        Ok(None)
                    }
                }
            },
        );
        let wall = t0.elapsed();
        std::fs::write(&stop, b"stop")?;
        let vip_res = vip_load.finish();
        let mesh_res = mesh_load.finish();
        let (vip_trace, mesh_trace) = (vip_trace.finish(), mesh_trace.finish());
        let _ = std::fs::remove_file(&stop);
        waited?;
        // Until every replaced task has ended (so the streams show how long stopping takes,
        // and the scale-ups below start on a settled cluster).
        let force = service(dev)?.spec.force_update;
        let settled = poll(Duration::from_secs(60), "the old tasks to end", || {
            Ok(tasks(dev, SVC)?
                .iter()
                .all(|t| t.spec.force_update == force || t.status.state.is_terminal())
                .then_some(()))
        });
        if let Err(e) = settled {
            eprintln!("bench:   {e:#}");
        }
        std::thread::sleep(Duration::from_millis(300));
        let (tl_lines, ep_lines, sv_lines) = (tw.take(), ew.take(), sw.take());
        let (vip_res, mesh_res) = (vip_res?, mesh_res?);
        let tl = analyse(
            &(
                parse_events(&tl_lines),
                parse_events(&ep_lines),
                parse_events(&sv_lines),
            ),
            UpdateRun {
                service: SVC,
                force,
                replicas,
                parallelism: PARALLELISM,
                since: sent,
            },
        );
        eprintln!(
            "bench:   update: all new healthy after {:?} ms, completed after {:?} ms, end state {end_state:?} ({:.1} s wall)",
            tl.all_new_healthy.map(|t| (t - sent).round()),
            tl.completed.map(|t| (t - sent).round()),
            wall.as_secs_f64()
        );
        // The lower bound's start-to-healthy: one batch started by a scale-up, 3 rounds,
        // under the same load as the update.
        let vip_load = Load::start("VIP", probe_ns, &vip_addr, &stop, 300)?;
        let mesh_load = Load::start("mesh", "shoal-node-1", &mesh_addr, &stop, 300)?;
        let mut s2h = vec![];
        for k in 1..=3 {
            let ms = scale_up_batch(dev, replicas + k * PARALLELISM)?;
            eprintln!(
                "bench:   scale-up batch {k}: created → all {PARALLELISM} healthy {ms:.0} ms"
            );
            s2h.push(ms);
        }
        std::fs::write(&stop, b"stop")?;
        let (bv, bm) = (vip_load.finish()?, mesh_load.finish()?);
        let _ = std::fs::remove_file(&stop);
        eprintln!(
            "bench:   load during the scale-ups: VIP {} failed of {}, mesh {} failed of {}",
            bv.failed, bv.sent, bm.failed, bm.sent
        );
        let s2h_med = pct(&mut s2h.clone(), 50.0);
        let lb =
            format!(
            "; old tasks leaving the load balancers (traced every 100 ms; {} old tasks): {}; {}",
            tl.old_tasks.len(),
            lb_summary("VIP rules in the probe's namespace", &left_lb(&vip_trace, &tl.old_tasks)),
            lb_summary("mesh rules in node 3's namespace", &left_lb(&mesh_trace, &tl.old_tasks)),
        );
        let mut r = rows(
            &tl, end_state, &vip_res, &mesh_res, sent, s2h_med, &s2h, replicas, batches, monitor_ms,
        );
        if let Some(f) = r.last_mut() {
            f.note.push_str(&lb);
        }
        Ok(r)
    })();
    let _ = dev.shoal(&["service", "rm", SVC]);
    let _ = poll(Duration::from_secs(60), "the service's tasks gone", || {
        Ok(dev.running(SVC, "bench")?.is_empty().then_some(()))
    });
    res
}

/// How long old tasks' addresses stayed in a namespace's rules after the task was wanted
/// stopped, and relative to when it ended (positive: still listed after it ended).
fn lb_summary(what: &str, left: &[(OldTask, Option<f64>)]) -> String {
    if left.is_empty() {
        return format!("{what}: no old task address seen (trace empty)");
    }
    let mut after_wanted: Vec<f64> = left
        .iter()
        .filter_map(|(o, l)| Some(l.as_ref()? - o.wanted_stop))
        .collect();
    let mut after_end: Vec<f64> = left
        .iter()
        .filter_map(|(o, l)| Some(l.as_ref()? - o.ended?))
        .collect();
    let after_unready: Vec<f64> = left
        .iter()
        .filter_map(|(o, l)| Some(l.as_ref()? - o.unready?))
        .collect();
    let late = after_end.iter().filter(|d| **d > 0.0).count();
    let never = left.iter().filter(|(_, l)| l.is_none()).count();
    format!(
        "{what}: {} tasks, left p50 {:.0} / max {:.0} ms after wanted stopped, p50 {:.0} / max {:.0} ms after out of service in the Endpoints ({} seen), p50 {:+.0} / max {:+.0} ms relative to ended; {late} still listed after they ended{}",
        left.len(),
        pct(&mut after_wanted.clone(), 50.0),
        pct(&mut after_wanted, 100.0),
        pct(&mut after_unready.clone(), 50.0),
        pct(&mut after_unready.clone(), 100.0),
        after_unready.len(),
        pct(&mut after_end.clone(), 50.0),
        pct(&mut after_end, 100.0),
        if never > 0 { format!(", {never} never left while traced") } else { String::new() }
    )
}

#[allow(clippy::too_many_arguments)]
fn rows(
    tl: &Timeline,
    end_state: Option<UpdateState>,
    vip: &LoadResult,
    mesh: &LoadResult,
    sent: f64,
    s2h: f64,
    s2h_rounds: &[f64],
    replicas: usize,
    batches: usize,
    monitor_ms: f64,
) -> Vec<Row> {
    let bound = batches as f64 * s2h;
    let secs = |ms: f64| format!("{:.1} s", ms / 1000.0);
    let rel = |t: Option<f64>| t.map(|t| t - sent);
    let in_update: Vec<f64> = tl
        .batches
        .iter()
        .filter_map(|b| Some(b.last_healthy? - b.first_created))
        .collect();
    let span_med = pct(&mut in_update.clone(), 50.0);
    let mut per_task = tl.start_to_healthy.clone();
    let mut per_ready = tl.start_to_ready.clone();
    let batch_text: Vec<String> = tl
        .batches
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let next = tl.batches.get(i + 1).map(|n| n.first_created);
            format!(
                "{}: created +{:.0}{} → healthy +{} → ready +{}{}",
                i + 1,
                b.first_created - sent,
                if b.last_created - b.first_created > 50.0 {
                    format!("..{:.0}", b.last_created - sent)
                } else {
                    String::new()
                },
                b.last_healthy
                    .map(|h| format!("{:.0}", h - sent))
                    .unwrap_or("never".into()),
                b.last_ready
                    .map(|h| format!("{:.0}", h - sent))
                    .unwrap_or("never".into()),
                match (b.last_ready, next) {
                    (Some(r), Some(n)) => format!(" (next batch {:.0} ms later)", n - r),
                    _ => String::new(),
                }
            )
        })
        .collect();
    let states: Vec<String> = tl
        .states
        .iter()
        .map(|(at, st, msg)| {
            let st = serde_json::to_value(st)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            if msg.is_empty() {
                format!("{st} +{:.0}", at - sent)
            } else {
                format!("{st} +{:.0} ({msg})", at - sent)
            }
        })
        .collect();
    let ended = match end_state {
        Some(UpdateState::Completed) => String::new(),
        Some(st) => format!(
            "; **the update ended {}**, not completed",
            serde_json::to_value(st)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        ),
        None => "; **no status.updateStatus was ever written** (no updater?): timed until every task ran on the new spec".into(),
    };
    let common = format!(
        "{} new tasks in {} batches of ≤ {PARALLELISM} (in creation order; times in ms after the update was sent): {}; update states: {}; most running and wanted at once {} (replicas {replicas} + parallelism {PARALLELISM} = {}; {} counting old tasks told to stop that still ran), most new tasks starting at once {}; start-to-healthy per new task during the update p50 {:.0} ms / max {:.0} ms (created → running p50 {:.0} ms, running → healthy p50 {:.0} ms), to ready in the Endpoints of every network p50 {:.0} ms; per batch (created → last healthy) p50 {span_med:.0} ms, which would make the bound {:.1} s (ratio {:.2}); old tasks all ended +{} (each: wanted stopped → ended p50 {:.0} ms, max {:.0} ms){ended}",
        tl.new_tasks,
        tl.batches.len(),
        batch_text.join("; "),
        if states.is_empty() { "none".to_string() } else { states.join(" → ") },
        tl.max_running,
        replicas + PARALLELISM,
        tl.max_containers,
        tl.max_starting,
        pct(&mut per_task.clone(), 50.0),
        pct(&mut per_task, 100.0),
        pct(&mut tl.start_to_running.clone(), 50.0),
        pct(&mut tl.running_to_healthy.clone(), 50.0),
        pct(&mut per_ready, 50.0),
        batches as f64 * span_med / 1000.0,
        rel(tl.all_new_healthy).map(|t| t / (batches as f64 * span_med).max(1.0)).unwrap_or(0.0),
        rel(tl.old_ended).map(|t| format!("{t:.0}")).unwrap_or("never".into()),
        pct(&mut tl.old_stop.clone(), 50.0),
        pct(&mut tl.old_stop.clone(), 100.0),
    );
    let baseline = format!("{batches} × {:.2} s = {}", s2h / 1000.0, secs(bound));
    let s2h_note = format!(
        "start-to-healthy = one batch of {PARALLELISM} started together by a scale-up (a replicas-only change: no updater) under the same load, created → the last of them running and healthy, median of {} rounds ({})",
        s2h_rounds.len(),
        s2h_rounds
            .iter()
            .map(|v| format!("{v:.0} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut out = vec![];
    let total = rel(tl.all_new_healthy);
    out.push(Row {
        figure: format!("9 rolling update: {replicas} replicas, parallelism {PARALLELISM}, start-first, under load: sent → all tasks on the new spec and healthy"),
        shoal: total.map(secs).unwrap_or("never".into()),
        baseline: format!("bound {baseline}"),
        ratio: total.map(|t| format!("{:.2}", t / bound.max(1.0))).unwrap_or("-".into()),
        target: "≤ 1.25 × bound".into(),
        met: met(total.is_some_and(|t| t <= 1.25 * bound)),
        note: format!("{s2h_note}; {common}"),
    });
    let done = rel(tl.completed);
    let bound_c = bound + monitor_ms;
    out.push(Row {
        figure: "9 rolling update: sent → `completed`".into(),
        shoal: done.map(secs).unwrap_or("never".into()),
        baseline: format!("bound + monitor {} = {}", secs(monitor_ms), secs(bound_c)),
        ratio: done.map(|t| format!("{:.2}", t / bound_c.max(1.0))).unwrap_or("-".into()),
        target: "≤ 1.25 × bound".into(),
        met: met(done.is_some_and(|t| t <= 1.25 * bound_c)),
        note: "after the last batch the updater keeps watching for max(monitor, delay + 1 s) = 5 s (monitor's default) before `completed`, so the bound adds it; `completed` as seen on the service's watch stream".into(),
    });
    let fails = |l: &LoadResult| -> String {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, k) in &l.fails {
            *kinds.entry(k.as_str()).or_default() += 1;
        }
        let when: Vec<String> = l
            .fails
            .iter()
            .take(10)
            .map(|(at, k)| format!("{k} +{:.0}", at - sent))
            .collect();
        if l.failed == 0 {
            format!(
                "{} sent, 0 failed ({} slower than 1 s, p99 {:.1} ms, max {:.0} ms)",
                thousands(l.sent as f64),
                l.slow,
                l.p99_ms,
                l.max_ms
            )
        } else {
            format!(
                "{} sent, {} failed ({}; first at ms after the update was sent: {}), {} slower than 1 s",
                thousands(l.sent as f64),
                l.failed,
                kinds
                    .iter()
                    .map(|(k, n)| format!("{n} {k}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                when.join(", "),
                l.slow
            )
        }
    };
    out.push(Row {
        figure: "9 rolling update: failed requests during the update".into(),
        shoal: format!("VIP {} / {}, mesh {} / {}", vip.failed, thousands(vip.sent as f64), mesh.failed, thousands(mesh.sent as f64)),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "0 failed".into(),
        met: met(vip.failed == 0 && mesh.failed == 0 && vip.sent > 0 && mesh.sent > 0),
        note: format!(
            "{RATE:.0} req/s per path from {WORKERS} closed-loop workers, one GET per new TCP connection (so every request is balanced anew), connect and read timeouts 3 s (a lost SYN is slow, not failed), from {:.1} s before the update was sent until it settled ({:.1} s of load); VIP from a task on node 1: {}; mesh from node 1's namespace to node 3's address {PORT}: {}",
            (sent - vip.start_ms) / 1000.0,
            (vip.end_ms - vip.start_ms) / 1000.0,
            fails(vip),
            fails(mesh)
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::{EndpointTask, EndpointsSpec, TaskSpec, UpdateStatus};

    fn task(
        name: &str,
        force: u64,
        created: f64,
        state: TaskState,
        healthy: bool,
        desired: TaskState,
    ) -> Task {
        let mut t = Task::new(
            name,
            TaskSpec {
                service: "roll".into(),
                force_update: force,
                desired_state: desired,
                ..Default::default()
            },
        );
        t.metadata.creation_timestamp = chrono::DateTime::from_timestamp_millis(created as i64);
        t.status.state = state;
        t.status.healthy = healthy;
        if state >= TaskState::Running {
            t.status.started_at = chrono::DateTime::from_timestamp_millis(created as i64 + 400);
        }
        t
    }

    fn ev<T>(at: f64, obj: T) -> Stamped<T> {
        Stamped {
            at,
            deleted: false,
            obj,
        }
    }

    fn eps(at: f64, net: &str, ready: &[&str]) -> Stamped<Endpoints> {
        let mut spec = EndpointsSpec::vip(net, "roll", "10.0.0.2");
        spec.tasks = ready
            .iter()
            .map(|t| EndpointTask::new(t, "10.0.0.9").id(t).ready(true))
            .collect();
        ev(at, spec.object())
    }

    /// The update of [`two_batches`]: forceUpdate 1, 2 replicas, sent at 1000.
    fn run(parallelism: usize) -> UpdateRun<'static> {
        UpdateRun {
            service: "roll",
            force: 1,
            replicas: 2,
            parallelism,
            since: 1000.0,
        }
    }

    /// Two old tasks replaced one at a time, start-first: n1 replaces o1, then n2 replaces
    /// o2.
    fn two_batches() -> Streams {
        use TaskState::*;
        let tasks = vec![
            ev(0.0, task("o1", 0, -5000.0, Running, true, Running)),
            ev(0.0, task("o2", 0, -5000.0, Running, true, Running)),
            ev(1010.0, task("n1", 1, 1000.0, New, false, Running)),
            ev(1500.0, task("n1", 1, 1000.0, Running, false, Running)),
            ev(1800.0, task("n1", 1, 1000.0, Running, true, Running)),
            ev(1900.0, task("o1", 0, -5000.0, Running, true, Shutdown)),
            ev(2010.0, task("n2", 1, 2000.0, New, false, Running)),
            ev(2900.0, task("o1", 0, -5000.0, Shutdown, false, Shutdown)),
            ev(3000.0, task("n2", 1, 2000.0, Running, true, Running)),
            ev(3100.0, task("o2", 0, -5000.0, Running, true, Shutdown)),
            ev(4000.0, task("o2", 0, -5000.0, Shutdown, false, Shutdown)),
        ];
        let endpoints = vec![
            eps(0.0, "bench", &["o1", "o2"]),
            eps(0.0, "ingress", &["o1", "o2"]),
            eps(1850.0, "bench", &["n1", "o2"]),
            eps(1860.0, "ingress", &["n1", "o2"]),
            eps(3050.0, "bench", &["n1", "n2"]),
            eps(3070.0, "ingress", &["n1", "n2"]),
        ];
        let svc = |state| {
            let mut s = Service::new("roll", Default::default());
            s.status.update_status = Some(UpdateStatus {
                state,
                ..Default::default()
            });
            s
        };
        let services = vec![
            ev(1005.0, svc(UpdateState::Updating)),
            ev(1500.0, svc(UpdateState::Updating)),
            ev(8100.0, svc(UpdateState::Completed)),
        ];
        (tasks, endpoints, services)
    }

    #[test]
    fn analyse_should_time_batches_health_readiness_and_completion() {
        let streams = two_batches();
        let tl = analyse(&streams, run(1));
        assert_eq!(tl.new_tasks, 2);
        assert_eq!(tl.start_to_healthy, vec![800.0, 1000.0]);
        assert_eq!(tl.start_to_ready, vec![860.0, 1070.0]);
        assert_eq!(tl.batches.len(), 2);
        assert_eq!(tl.batches[0].last_ready, Some(1860.0));
        assert_eq!(tl.batches[1].first_created, 2000.0);
        assert_eq!(
            tl.all_new_healthy,
            Some(3100.0),
            "both new tasks healthy and no old task wanted running"
        );
        assert_eq!(tl.old_ended, Some(4000.0));
        assert_eq!(tl.start_to_running, vec![400.0, 400.0]);
        assert_eq!(tl.running_to_healthy, vec![400.0, 600.0]);
        assert_eq!(
            tl.old_stop,
            vec![1000.0, 900.0],
            "o1 then o2: wanted stopped → ended"
        );
        let unready: Vec<Option<f64>> = tl.old_tasks.iter().map(|o| o.unready).collect();
        assert_eq!(
            unready,
            vec![Some(1860.0), Some(3070.0)],
            "out of service once no network's Endpoints lists it ready"
        );
        assert_eq!(tl.max_running, 3, "start-first runs one extra task");
        assert_eq!(tl.max_containers, 3);
        assert_eq!(tl.completed, Some(8100.0));
        assert_eq!(
            tl.states.iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![UpdateState::Updating, UpdateState::Completed]
        );
    }

    #[test]
    fn analyse_should_group_new_tasks_into_batches_of_parallelism() {
        let streams = two_batches();
        let tl = analyse(&streams, run(2));
        assert_eq!(tl.batches.len(), 1);
        assert_eq!(tl.batches[0].last_healthy, Some(3000.0));
        assert_eq!(tl.batches[0].last_created, 2000.0);
    }

    #[test]
    fn analyse_should_not_call_an_update_done_while_new_tasks_are_unhealthy() {
        let mut streams = two_batches();
        // n2 never turns healthy.
        streams
            .0
            .retain(|ev| !(ev.obj.metadata.name == "n2" && ev.obj.status.healthy));
        let tl = analyse(&streams, run(1));
        assert_eq!(tl.all_new_healthy, None);
        assert_eq!(tl.batches[1].last_healthy, None);
        assert_eq!(tl.start_to_healthy.len(), 1);
    }

    #[test]
    fn left_lb_should_find_when_an_old_address_left_the_rules() {
        let old = |ip: &str, w: f64, e: f64| OldTask {
            ips: vec![ip.into()],
            wanted_stop: w,
            unready: Some(w + 100.0),
            ended: Some(e),
        };
        let v = |ips: &[&str]| ips.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let trace: LbTrace = vec![
            (0.0, v(&["10.0.1.2", "10.0.1.3", "10.0.1.9"])),
            (1500.0, v(&["10.0.1.3", "10.0.1.9"])),
            (2600.0, v(&["10.0.1.9"])),
        ];
        let olds = vec![
            old("10.0.1.2", 1000.0, 2000.0),
            old("10.0.1.3", 1200.0, 2500.0),
            old("10.0.1.9", 1300.0, 2400.0),
            old("10.0.7.7", 1300.0, 2400.0),
        ];
        let left = left_lb(&trace, &olds);
        assert_eq!(left.len(), 3, "an address never in the rules is left out");
        assert_eq!(left[0].1, Some(1500.0));
        assert_eq!(left[1].1, Some(2600.0), "left after it ended");
        assert_eq!(left[2].1, None, "still listed when the trace ended");
        let s = lb_summary("VIP", &left);
        assert!(s.contains("1 still listed after they ended"), "{s}");
        assert!(s.contains("1 never left"), "{s}");
        assert_eq!(
            crate::tools::ipv4s(r#"{"a": "10.0.1.2", "v": 1.2, "b": ["10.0.1.2", "198.18.0.3"]}"#),
            vec!["10.0.1.2".to_string(), "198.18.0.3".to_string()]
        );
    }

    #[test]
    fn load_result_should_parse_counts_and_failures() {
        let r = LoadResult::parse(
            "sent=120 ok=118 failed=2 slow=1 p50_ms=1.00 p99_ms=4.50 max_ms=1200.0 start_ms=1000 end_ms=3000\n\
             fail=1500,refused,Connection refused (os error 111)\nfail=1600,timeout,x, y\n",
        );
        assert_eq!(r.sent, 120);
        assert_eq!(r.failed, 2);
        assert_eq!(r.slow, 1);
        assert_eq!(r.p99_ms, 4.5);
        assert_eq!(
            r.fails,
            vec![
                (1500.0, "refused".to_string()),
                (1600.0, "timeout".to_string())
            ]
        );
    }
}
