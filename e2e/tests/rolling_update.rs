//! End-to-end: rolling updates and rollback (issue 14) on the secured local cluster, driven
//! through the `shoal` binary as a user drives it. Each test brings up its own cluster and
//! announces its scenarios on stderr; the cluster is removed at the end, also on failure.
//!
//! Every service carries `VERSION` in its environment, so which spec a task was made from
//! reads off its `spec.env`. While an update runs, a sampler thread lists the service's
//! update state and tasks (`service inspect`, `service ps -o json`) about every quarter
//! second; the assertions are over those samples and the tasks' `creationTimestamp`s.
//! Traffic: from the host namespace to the nodes' underlay addresses (the mesh) and from a
//! client task on the overlay (the VIP), bounded by the update's duration.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use shoal_e2e::{http_get, node_ip, require_e2e, step, Cluster, Get, Run, BUSYBOX};

/// Sleeps until stopped, and stops at once on SIGTERM (a bare `sleep` as PID 1 ignores
/// it, so every stop would wait out the grace period).
const SLEEP: &str = "trap 'exit 0' TERM; sleep 100000 & wait";
/// An HTTP server that takes two seconds to listen (a replacement that took traffic before
/// its health check passed would refuse connections) and ends at once on SIGTERM.
const SLOW_HTTPD: &str =
    "trap 'exit 0' TERM; sleep 2; mkdir -p /www && hostname > /www/index.html \
     && httpd -f -p 80 -h /www & wait";
/// The load client's PID 1: a shell that reaps the orphans `exec` leaves behind (busybox
/// `timeout`'s watcher outlives a quick request; under a bare `sleep` they pile up as
/// zombies until fork fails).
const REAPER: &str = "trap 'exit 0' TERM; while :; do sleep 1; done";
/// (Not `wget -T`: the busybox of the test image, 1.35 from Debian, crashes on it.)
const HEALTH: &str = "wget -qO- http://127.0.0.1/ >/dev/null";

// ---- reading tasks and services ----

fn slot(t: &Value) -> u64 {
    t["spec"]["slot"].as_u64().unwrap_or(0)
}

fn state(t: &Value) -> &str {
    t["status"]["state"].as_str().unwrap_or("")
}

fn is_running(t: &Value) -> bool {
    state(t) == "running"
}

fn wanted_running(t: &Value) -> bool {
    t["spec"]["desiredState"] == "running"
}

fn is_terminal(t: &Value) -> bool {
    matches!(
        state(t),
        "complete" | "failed" | "rejected" | "shutdown" | "orphaned"
    )
}

/// The `VERSION` the task was made with.
fn version(t: &Value) -> &str {
    t["spec"]["env"]["VERSION"].as_str().unwrap_or("")
}

fn created(t: &Value) -> DateTime<Utc> {
    t["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no creationTimestamp in {t}"))
}

/// The task's address on `network`, without the prefix length.
fn address<'a>(t: &'a Value, network: &str) -> Option<&'a str> {
    t["spec"]["attachments"]
        .as_array()?
        .iter()
        .find(|a| a["network"] == network)?["address"]
        .as_str()
        .map(|a| a.split('/').next().unwrap_or(a))
}

/// One line per task, for failure messages.
fn table(tasks: &[Value]) -> String {
    let mut tasks: Vec<&Value> = tasks.iter().collect();
    tasks.sort_by_key(|t| (slot(t), t["metadata"]["creationTimestamp"].to_string()));
    tasks
        .iter()
        .map(|t| {
            format!(
                "  slot {} VERSION={} desired={} state={} node={} created={} started={} at={} id={} {}\n",
                slot(t),
                version(t),
                t["spec"]["desiredState"].as_str().unwrap_or(""),
                state(t),
                t["spec"]["node"].as_str().unwrap_or("-"),
                t["metadata"]["creationTimestamp"].as_str().unwrap_or("-"),
                t["status"]["startedAt"].as_str().unwrap_or("-"),
                t["status"]["timestamp"].as_str().unwrap_or("-"),
                t["metadata"]["name"].as_str().unwrap_or(""),
                t["status"]["err"].as_str().unwrap_or(""),
            )
        })
        .collect()
}

/// `flags` (see [`Cluster::controller_flags`]) then `args`.
fn with<'a>(flags: &'a [String], args: &[&'a str]) -> Vec<&'a str> {
    flags
        .iter()
        .map(String::as_str)
        .chain(args.iter().copied())
        .collect()
}

fn try_tasks(c: &Cluster, flags: &[String], service: &str) -> Option<Vec<Value>> {
    let run = c.shoal(&with(flags, &["service", "ps", service, "-o", "json"]));
    if run.code != 0 {
        return None;
    }
    let v: Value = serde_json::from_str(&run.stdout).ok()?;
    v.as_array()
        .cloned()
        .or_else(|| v["items"].as_array().cloned())
}

fn tasks(c: &Cluster, flags: &[String], service: &str) -> Vec<Value> {
    try_tasks(c, flags, service).unwrap_or_else(|| panic!("service ps {service} failed"))
}

fn service(c: &Cluster, flags: &[String], name: &str) -> Value {
    c.try_first(&with(flags, &["service", "inspect", name]))
        .unwrap_or_else(|| panic!("service inspect {name} failed"))
}

fn update_state(svc: &Value) -> &str {
    svc["status"]["updateStatus"]["state"]
        .as_str()
        .unwrap_or("")
}

/// Tasks wanted running and running.
fn serving(tasks: &[Value]) -> Vec<&Value> {
    tasks
        .iter()
        .filter(|t| is_running(t) && wanted_running(t))
        .collect()
}

/// Waits until `n` tasks serve, all made with `VERSION=v`; returns them.
fn all_on(c: &Cluster, flags: &[String], name: &str, v: &str, n: usize) -> Vec<Value> {
    let mut last = vec![];
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        last = try_tasks(c, flags, name).unwrap_or_default();
        let s = serving(&last);
        if s.len() == n && s.iter().all(|t| version(t) == v) {
            return s.into_iter().cloned().collect();
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!(
        "{name}: not {n} tasks serving on VERSION={v} after 90s:\n{}",
        table(&last)
    );
}

/// Waits until the service's update state is `want` (or panics with the status and tasks).
fn await_state(c: &Cluster, flags: &[String], name: &str, want: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(svc) = c.try_first(&with(flags, &["service", "inspect", name])) {
            if update_state(&svc) == want {
                return svc;
            }
            if Instant::now() > deadline {
                panic!(
                    "{name}: update state {want:?} not reached in {timeout:?}; status:\n{}\ntasks:\n{}",
                    svc["status"],
                    table(&try_tasks(c, flags, name).unwrap_or_default())
                );
            }
        } else if Instant::now() > deadline {
            panic!("{name}: service inspect kept failing for {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Sets the flag the sampler and load threads watch when dropped, so a failing assertion
/// inside `thread::scope` ends them instead of waiting for them forever.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What the sampler saw once.
struct Sample {
    at: Instant,
    state: String,
    tasks: Vec<Value>,
}

/// Samples the service's update state and tasks until `stop` is set (failed calls are
/// skipped: a controller may be down).
fn sample(c: &Cluster, flags: &[String], name: &str, stop: &AtomicBool) -> Vec<Sample> {
    let mut out = vec![];
    while !stop.load(Ordering::SeqCst) {
        let at = Instant::now();
        let svc = c.try_first(&with(flags, &["service", "inspect", name]));
        let tasks = try_tasks(c, flags, name);
        if let (Some(svc), Some(tasks)) = (svc, tasks) {
            out.push(Sample {
                at,
                state: update_state(&svc).to_string(),
                tasks,
            });
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    out
}

/// The distinct update states in the order the samples saw them.
fn states_seen(samples: &[Sample]) -> Vec<String> {
    let mut seen: Vec<String> = vec![];
    for s in samples {
        if seen.last() != Some(&s.state) {
            seen.push(s.state.clone());
        }
    }
    seen
}

/// The most slots (of 1..=replicas) in flight at once over the samples, with the tasks of
/// that sample. A slot is in flight when its VERSION=1 task is no longer wanted and no
/// VERSION=2 task runs in it.
fn most_in_flight(samples: &[Sample], replicas: u64) -> (usize, String) {
    let mut most = (0, String::new());
    for s in samples {
        let in_flight = (1..=replicas)
            .filter(|n| {
                let old_wanted = s
                    .tasks
                    .iter()
                    .any(|t| slot(t) == *n && version(t) == "1" && wanted_running(t));
                let new_runs = s
                    .tasks
                    .iter()
                    .any(|t| slot(t) == *n && version(t) == "2" && is_running(t));
                !old_wanted && !new_runs
            })
            .count();
        if in_flight > most.0 {
            most = (in_flight, table(&s.tasks));
        }
    }
    most
}

fn max_running(samples: &[Sample]) -> (usize, String) {
    samples
        .iter()
        .map(|s| {
            (
                s.tasks.iter().filter(|t| is_running(t)).count(),
                table(&s.tasks),
            )
        })
        .max_by_key(|(n, _)| *n)
        .unwrap_or_default()
}

/// `shoal service create ARGS` (waits for the tasks).
fn create(c: &Cluster, args: &[&str]) {
    let mut all = vec!["service", "create"];
    all.extend_from_slice(args);
    c.shoal(&all).ok();
}

/// A service running `sh -c SLEEP` with `VERSION` in its environment; `extra` are more
/// lines of its spec (two-space indented).
fn sleeper(name: &str, replicas: u32, version: &str, extra: &str) -> String {
    format!(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: {BUSYBOX}\n  \
         args: [sh, -c, \"{SLEEP}\"]\n  env: {{VERSION: \"{version}\"}}\n  replicas: {replicas}\n{extra}"
    )
}

/// `shoal [flags] apply -f MANIFEST [more]`, the manifest written to the state directory.
fn apply(c: &Cluster, flags: &[String], yaml: &str, more: &[&str]) -> Run {
    let path = c.state_dir().join(format!(
        "manifest-{}.yaml",
        Utc::now().timestamp_nanos_opt().unwrap_or_default()
    ));
    std::fs::write(&path, yaml).expect("write manifest");
    let mut args = vec!["apply", "-f", path.to_str().expect("utf-8 path")];
    args.extend_from_slice(more);
    c.shoal(&with(flags, &args))
}

fn out(run: &Run) -> String {
    format!("{}{}", run.stdout, run.stderr)
}

// ---- the scenarios ----

/// Must show: 6 replicas, parallelism 2, delay 10 s: at most 2 tasks replaced at a time,
/// batches at least 10 s apart, `updating` → `completed`; and, the update being
/// stop-first, never more tasks running than replicas.
#[test]
fn update_replaces_two_tasks_at_a_time_ten_seconds_apart_never_exceeding_replicas() {
    require_e2e!();
    let c = Cluster::up(3);
    let none: &[String] = &[];

    let policy = "  updateConfig: {parallelism: 2, delay: 10s}\n";
    step("batch: 6 replicas on VERSION=1, updateConfig {parallelism: 2, delay: 10s}");
    apply(
        &c,
        none,
        &sleeper("batch", 6, "1", policy),
        &["--timeout", "120s"],
    );
    all_on(&c, none, "batch", "1", 6);

    step("apply the manifest with VERSION=2, sampling the tasks (apply goes through the updater)");
    let stop = AtomicBool::new(false);
    let (run, samples, sent) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let sampler = s.spawn(|| sample(&c, none, "batch", &stop));
        std::thread::sleep(Duration::from_millis(500));
        let sent = Instant::now();
        let run = apply(
            &c,
            none,
            &sleeper("batch", 6, "2", policy),
            &["--timeout", "180s"],
        );
        // apply returns once the tasks run on the new spec; the update then watches them.
        await_state(&c, none, "batch", "completed", Duration::from_secs(60));
        stop.store(true, Ordering::SeqCst);
        (run, sampler.join().expect("sampler"), sent)
    });
    eprintln!(
        "apply returned {} after {:?}:\n{}",
        run.code,
        sent.elapsed(),
        out(&run)
    );
    let svc = service(&c, none, "batch");
    let all = tasks(&c, none, "batch");
    assert_eq!(
        run.code,
        0,
        "apply failed: {}\nstatus: {}\ntasks:\n{}",
        out(&run),
        svc["status"],
        table(&all)
    );

    step("updating → completed");
    let seen = states_seen(&samples);
    eprintln!(
        "update states seen: {seen:?} over {} samples",
        samples.len()
    );
    let after: Vec<&String> = seen.iter().filter(|s| !s.is_empty()).collect();
    assert_eq!(
        after.first().map(|s| s.as_str()),
        Some("updating"),
        "the first update state: {seen:?}"
    );
    assert_eq!(update_state(&svc), "completed", "{}", svc["status"]);
    assert!(
        after.iter().all(|s| *s == "updating" || *s == "completed"),
        "only updating then completed: {seen:?}"
    );
    assert!(
        svc["status"]["updateStatus"]["completedAt"].is_string(),
        "completedAt is set: {}",
        svc["status"]
    );

    step("at most 2 slots in flight at any sample; never more than 6 running (stop-first)");
    let most = most_in_flight(&samples, 6);
    eprintln!("most slots in flight at once: {}", most.0);
    assert!(
        most.0 <= 2,
        "{} slots replaced at once:\n{}",
        most.0,
        most.1
    );
    assert!(most.0 >= 1, "the sampler never saw a slot being replaced");
    let (running, when) = max_running(&samples);
    eprintln!("most tasks running at once: {running}");
    assert!(running <= 6, "{running} tasks running at once:\n{when}");

    step("the new tasks: one per slot, in batches of at most 2, at least 10s apart");
    let mut new: Vec<&Value> = all.iter().filter(|t| version(t) == "2").collect();
    let slots: BTreeSet<u64> = new.iter().map(|t| slot(t)).collect();
    assert_eq!(
        new.len(),
        6,
        "six VERSION=2 tasks, no slot twice:\n{}",
        table(&all)
    );
    assert_eq!(slots, (1..=6).collect(), "{}", table(&all));
    assert!(new.iter().all(|t| is_running(t)), "{}", table(&all));
    new.sort_by_key(|t| created(t));
    let mut batches: Vec<Vec<DateTime<Utc>>> = vec![];
    for t in &new {
        let at = created(t);
        match batches.last_mut() {
            Some(b) if at - *b.last().unwrap() < chrono::Duration::seconds(1) => b.push(at),
            _ => batches.push(vec![at]),
        }
    }
    eprintln!("batches (createdAt): {batches:?}");
    assert!(
        batches.iter().all(|b| b.len() <= 2),
        "a batch of more than 2: {batches:?}"
    );
    assert_eq!(batches.len(), 3, "three batches of 2: {batches:?}");
    for w in batches.windows(2) {
        let gap = w[1][0] - *w[0].last().unwrap();
        assert!(
            gap >= chrono::Duration::seconds(10),
            "batches {gap} apart (delay 10s): {batches:?}"
        );
    }
    let old = all.iter().filter(|t| version(t) == "1").collect::<Vec<_>>();
    assert!(
        old.iter().all(|t| !wanted_running(t) && is_terminal(t)),
        "every VERSION=1 task ended:\n{}",
        table(&all)
    );
}

/// What the load clients saw during the update.
#[derive(Default, Debug)]
struct Load {
    sent: usize,
    failed: Vec<String>,
    pages: BTreeMap<String, usize>,
}

/// Must show: `--update-order start-first` with a health check: 0 failed requests among
/// at least 500 sent through the VIP and 500 through the mesh during the update, every
/// task replaced at once (`--update-parallelism 0`) so that no old task carries the
/// traffic for a replacement that is not ready yet. Then
/// `--publish-add`/`--publish-rm` through the same updater: the new port answers on every
/// node, the old one closes.
#[test]
fn start_first_update_fails_no_request_through_vip_or_mesh() {
    require_e2e!();
    let c = Cluster::up(3);
    let none: &[String] = &[];
    let replicas = 4;

    step("web: 4 replicas with a health check, on upnet, published on 9201; a client on upnet");
    c.shoal(&["network", "create", "--driver", "overlay", "upnet"])
        .ok();
    create(
        &c,
        &[
            "--name",
            "web",
            "--replicas",
            "4",
            "--network",
            "upnet",
            "-p",
            "9201:80",
            "-e",
            "VERSION=1",
            "--health-cmd",
            HEALTH,
            "--health-interval",
            "1s",
            "--health-start-period",
            "10s",
            "--timeout",
            "120s",
            BUSYBOX,
            "sh",
            "-c",
            SLOW_HTTPD,
        ],
    );
    create(
        &c,
        &[
            "--name",
            "client",
            "--network",
            "upnet",
            BUSYBOX,
            "sh",
            "-c",
            REAPER,
        ],
    );
    all_on(&c, none, "web", "1", replicas);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mesh: Vec<Get> = (1..=3).map(|k| http_get(node_ip(k), 9201)).collect();
        let vip = c.exec("client.1", &["timeout", "3", "wget", "-qO-", "http://web/"]);
        if mesh.iter().all(|g| matches!(g, Get::Ok(200, _)))
            && vip.code == 0
            && vip.stdout.contains("web.")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web does not answer through the mesh and the VIP after 60s: mesh {mesh:?}, VIP {vip:?}\ntasks:\n{}",
            table(&tasks(&c, none, "web"))
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    step("update to VERSION=2, start-first, under load through the VIP and the mesh");
    let stop = AtomicBool::new(false);
    let script = "i=0; while [ $i -lt 50 ]; do timeout 5 wget -qO- http://web/ 2>&1 || echo FAILED; i=$((i+1)); done";
    let (run, mesh, vip, samples) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let sampler = s.spawn(|| sample(&c, none, "web", &stop));
        let mesh = s.spawn(|| {
            let mut log = vec![];
            let mut k = 0;
            while !stop.load(Ordering::SeqCst) {
                k = k % 3 + 1;
                let t0 = Instant::now();
                let got = http_get(node_ip(k), 9201);
                log.push((t0, Instant::now(), k, got));
                std::thread::sleep(Duration::from_millis(5));
            }
            log
        });
        let vip = s.spawn(|| {
            let mut chunks = vec![];
            while !stop.load(Ordering::SeqCst) {
                let t0 = Instant::now();
                let run = c.exec("client.1", &["sh", "-c", script]);
                chunks.push((t0, run));
            }
            chunks
        });
        std::thread::sleep(Duration::from_secs(1));
        let sent = Instant::now();
        let run = c.shoal(&[
            "service",
            "update",
            "--env-add",
            "VERSION=2",
            "--update-order",
            "start-first",
            // All at once: no other task of the old spec carries the traffic while a
            // replacement starts, so only the hand-over keeps requests from failing.
            "--update-parallelism",
            "0",
            "--update-monitor",
            "10s",
            "--timeout",
            "180s",
            "web",
        ]);
        let done = Instant::now();
        stop.store(true, Ordering::SeqCst);
        eprintln!("the update took {:?}", done - sent);
        let mut m = Load::default();
        for (t0, t1, k, got) in mesh.join().expect("mesh load") {
            if t0 < sent || t1 > done {
                continue;
            }
            m.sent += 1;
            match got {
                Get::Ok(200, page) => *m.pages.entry(page).or_default() += 1,
                other => m.failed.push(format!("198.18.0.{k}:9201: {other:?}")),
            }
        }
        let mut v = Load::default();
        for (t0, run) in vip.join().expect("vip load") {
            if t0 < sent {
                continue;
            }
            if run.code != 0 {
                // The exec itself did not start (runc's "read init-p: connection
                // reset"): it sent no request.
                eprintln!("exec in client.1 failed, no request sent: {run:?}");
                continue;
            }
            let mut failing = String::new();
            for line in run.stdout.lines() {
                if line.contains("FAILED") {
                    v.sent += 1;
                    v.failed.push(std::mem::take(&mut failing));
                } else if line.starts_with("web.") {
                    v.sent += 1;
                    *v.pages.entry(line.trim().to_string()).or_default() += 1;
                } else {
                    failing.push_str(line);
                }
            }
        }
        (run, m, v, sampler.join().expect("sampler"))
    });
    eprintln!("service update: {}", out(&run));
    eprintln!(
        "mesh: {} sent, {} failed, pages {:?}",
        mesh.sent,
        mesh.failed.len(),
        mesh.pages
    );
    eprintln!(
        "VIP:  {} sent, {} failed, pages {:?}",
        vip.sent,
        vip.failed.len(),
        vip.pages
    );
    let svc = service(&c, none, "web");
    let all = tasks(&c, none, "web");
    assert_eq!(
        run.code,
        0,
        "service update failed: {}\nstatus: {}\ntasks:\n{}",
        out(&run),
        svc["status"],
        table(&all)
    );
    assert_eq!(update_state(&svc), "completed", "{}", svc["status"]);
    all_on(&c, none, "web", "2", replicas);
    assert!(
        mesh.failed.is_empty(),
        "{} of {} requests through the mesh failed (the first 20: {:?})\ntasks:\n{}",
        mesh.failed.len(),
        mesh.sent,
        &mesh.failed[..mesh.failed.len().min(20)],
        table(&all)
    );
    assert!(
        vip.failed.is_empty(),
        "{} of {} requests through the VIP failed (the first 20: {:?})\ntasks:\n{}",
        vip.failed.len(),
        vip.sent,
        &vip.failed[..vip.failed.len().min(20)],
        table(&all)
    );
    assert!(
        mesh.sent >= 100,
        "only {} requests through the mesh",
        mesh.sent
    );
    assert!(
        vip.sent >= 100,
        "only {} requests through the VIP",
        vip.sent
    );
    let (running, _) = max_running(&samples);
    eprintln!("most tasks running at once: {running}");
    assert!(
        running > replicas,
        "start-first starts a replacement next to the task it replaces (saw at most {running} running)"
    );

    step("--publish-add 9202:80 --publish-rm 9201: the new port answers on every node, the old one closes");
    let run = c.shoal(&[
        "service",
        "update",
        "--publish-add",
        "9202:80",
        "--publish-rm",
        "9201",
        "--timeout",
        "180s",
        "web",
    ]);
    let svc = service(&c, none, "web");
    assert_eq!(
        run.code,
        0,
        "{}\nstatus: {}\ntasks:\n{}",
        out(&run),
        svc["status"],
        table(&tasks(&c, none, "web"))
    );
    assert_eq!(update_state(&svc), "completed", "{}", svc["status"]);
    for k in 1..=3 {
        let got = c.eventually(
            &format!("198.18.0.{k}:9202 answers and 9201 refuses"),
            Duration::from_secs(15),
            || {
                let new = http_get(node_ip(k), 9202);
                let old = http_get(node_ip(k), 9201);
                (matches!(&new, Get::Ok(200, p) if p.starts_with("web.")) && old == Get::Refused)
                    .then_some(new)
            },
        );
        eprintln!("198.18.0.{k}:9202 -> {got:?}; 9201 refused");
    }
}

const EXIT1: &str = "sh -c 'exit 1'";

/// Must show: an image command that exits 1 with `pause` → `paused`, and the other tasks
/// stay on the old spec.
#[test]
fn failing_update_with_pause_pauses_and_the_other_tasks_stay_on_the_old_spec() {
    require_e2e!();
    let c = Cluster::up(2);
    let none: &[String] = &[];
    let exit1 = EXIT1;

    step("pause: VERSION=2 exits 1; the update pauses and the other tasks stay on VERSION=1");
    create(
        &c,
        &[
            "--name",
            "paws",
            "--replicas",
            "4",
            "-e",
            "VERSION=1",
            BUSYBOX,
            "sh",
            "-c",
            SLEEP,
        ],
    );
    all_on(&c, none, "paws", "1", 4);
    let stop = AtomicBool::new(false);
    let (run, samples) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let sampler = s.spawn(|| sample(&c, none, "paws", &stop));
        let run = c.shoal(&[
            "service",
            "update",
            "--env-add",
            "VERSION=2",
            "--args",
            exit1,
            "--update-failure-action",
            "pause",
            "--update-monitor",
            "5s",
            "--timeout",
            "120s",
            "paws",
        ]);
        // Longer than monitor + delay: a paused update replaces nothing more.
        std::thread::sleep(Duration::from_secs(7));
        stop.store(true, Ordering::SeqCst);
        (run, sampler.join().expect("sampler"))
    });
    eprintln!("service update exited {}: {}", run.code, out(&run));
    let svc = await_state(&c, none, "paws", "paused", Duration::from_secs(30));
    let message = svc["status"]["updateStatus"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    eprintln!("paused: {message}");
    assert!(
        message.starts_with("update paused due to failure of task paws.")
            && message.contains("exit"),
        "{}",
        svc["status"]
    );
    assert_ne!(run.code, 0, "a paused update exits non-zero: {run:?}");
    assert!(
        out(&run).contains("paused"),
        "the CLI says why: {}",
        out(&run)
    );
    let most = most_in_flight(&samples, 4);
    eprintln!("most slots in flight at once: {}", most.0);
    assert!(
        most.0 <= 1,
        "parallelism 1, yet {} slots replaced at once:\n{}\nupdate status now: {}",
        most.0,
        most.1,
        service(&c, none, "paws")["status"]["updateStatus"]
    );
    let all = tasks(&c, none, "paws");
    let old: Vec<&Value> = serving(&all)
        .into_iter()
        .filter(|t| version(t) == "1")
        .collect();
    assert_eq!(
        old.len(),
        3,
        "parallelism 1: one slot was tried, the other three stay on VERSION=1:\n{}",
        table(&all)
    );
    assert_eq!(
        update_state(&service(&c, none, "paws")),
        "paused",
        "paused stays paused"
    );
    let inspect = c.shoal(&["service", "inspect", "paws"]).ok();
    assert!(inspect.contains("paused"), "inspect shows it: {inspect}");
    let ps = c.shoal(&["service", "ps", "paws"]).ok();
    eprintln!("{ps}");
    assert!(
        ps.contains("Shutdown"),
        "service ps shows the replaced task as Shutdown:\n{ps}"
    );
}

/// Must show: an image command that exits 1 with `rollback` → `rollback_completed`, and
/// every task back on the old spec.
#[test]
fn failing_update_with_rollback_puts_every_task_back_on_the_old_spec() {
    require_e2e!();
    let c = Cluster::up(2);
    let none: &[String] = &[];
    let exit1 = EXIT1;

    step("rollback: VERSION=2 exits 1; the update rolls back and every task is on VERSION=1");
    create(
        &c,
        &[
            "--name",
            "back",
            "--replicas",
            "4",
            "-e",
            "VERSION=1",
            BUSYBOX,
            "sh",
            "-c",
            SLEEP,
        ],
    );
    all_on(&c, none, "back", "1", 4);
    let run = c.shoal(&[
        "service",
        "update",
        "--env-add",
        "VERSION=2",
        "--args",
        exit1,
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "5s",
        "--rollback-monitor",
        "2s",
        "--timeout",
        "120s",
        "back",
    ]);
    eprintln!("service update exited {}: {}", run.code, out(&run));
    let svc = await_state(
        &c,
        none,
        "back",
        "rollback_completed",
        Duration::from_secs(60),
    );
    let message = svc["status"]["updateStatus"]["message"]
        .as_str()
        .unwrap_or("");
    eprintln!("rolled back: {message}");
    assert!(
        message.contains("update rolled back due to failure of task back."),
        "{}",
        svc["status"]
    );
    assert_ne!(run.code, 0, "a rolled-back update exits non-zero: {run:?}");
    assert!(
        out(&run).contains("rolled back"),
        "the CLI says why: {}",
        out(&run)
    );
    assert_eq!(
        svc["spec"]["env"]["VERSION"], "1",
        "the spec is the old one"
    );
    let back = all_on(&c, none, "back", "1", 4);
    assert!(
        back.iter().all(|t| t["spec"]["args"][2] == SLEEP),
        "{}",
        table(&back)
    );
}

/// Must show: 1 failure in 4 with `maxFailureRatio: 0.5` → `completed`.
#[test]
fn one_failure_in_four_within_max_failure_ratio_half_completes() {
    require_e2e!();
    let c = Cluster::up(2);
    let none: &[String] = &[];

    step("1 failure in 4 with --update-max-failure-ratio 0.5: completed");
    create(
        &c,
        &[
            "--name",
            "ratio",
            "--replicas",
            "4",
            "-e",
            "VERSION=1",
            "--restart-condition",
            "none",
            BUSYBOX,
            "sh",
            "-c",
            SLEEP,
        ],
    );
    all_on(&c, none, "ratio", "1", 4);
    let run = c.shoal(&[
        "service",
        "update",
        "--env-add",
        "VERSION=2",
        "--args",
        "sh -c \"case $HOSTNAME in *.3) exit 1;; esac; trap 'exit 0' TERM; sleep 100000 & wait\"",
        "--update-parallelism",
        "0",
        "--update-max-failure-ratio",
        "0.5",
        "--update-monitor",
        "5s",
        "--timeout",
        "120s",
        "ratio",
    ]);
    eprintln!("service update exited {}: {}", run.code, out(&run));
    let svc = await_state(&c, none, "ratio", "completed", Duration::from_secs(60));
    let all = tasks(&c, none, "ratio");
    eprintln!("{}\n{}", svc["status"]["updateStatus"], table(&all));
    assert_eq!(run.code, 0, "within the ratio the update succeeds: {run:?}");
    assert_eq!(
        svc["status"]["updateStatus"]["failures"], 1,
        "one failure counted: {}",
        svc["status"]
    );
    let ok: BTreeSet<u64> = serving(&all)
        .into_iter()
        .filter(|t| version(t) == "2")
        .map(slot)
        .collect();
    assert_eq!(ok, BTreeSet::from([1, 2, 4]), "{}", table(&all));
    assert!(
        all.iter()
            .any(|t| slot(t) == 3 && version(t) == "2" && state(t) == "failed"),
        "slot 3 failed on VERSION=2:\n{}",
        table(&all)
    );
}

/// Must show: `--rollback` with no previous spec → a clear error; twice in a row toggles
/// between the two specs (`service update --rollback` and `service rollback` alike).
#[test]
fn rollback_without_previous_spec_fails_and_twice_toggles() {
    require_e2e!();
    let c = Cluster::up(2);
    let none: &[String] = &[];

    step("toggle: 2 replicas on VERSION=1, never updated");
    create(
        &c,
        &[
            "--name",
            "toggle",
            "--replicas",
            "2",
            "-e",
            "VERSION=1",
            BUSYBOX,
            "sh",
            "-c",
            SLEEP,
        ],
    );
    all_on(&c, none, "toggle", "1", 2);
    let version_before = service(&c, none, "toggle")["metadata"]["resourceVersion"].clone();

    step("--rollback and service rollback without a previous spec: a clear error, nothing written");
    for args in [
        &["service", "update", "--rollback", "toggle"][..],
        &["service", "rollback", "toggle"][..],
    ] {
        let run = c.shoal(args);
        eprintln!("{args:?}: {}", out(&run).trim());
        assert!(
            run.code != 0 && run.stderr.contains("no previous spec"),
            "{args:?}: {run:?}"
        );
    }
    let run = c.shoal(&[
        "service",
        "update",
        "--rollback",
        "--env-add",
        "X=1",
        "toggle",
    ]);
    eprintln!("--rollback with a change: {}", out(&run).trim());
    assert!(
        run.code != 0 && run.stderr.contains("--rollback"),
        "{run:?}"
    );
    assert_eq!(
        service(&c, none, "toggle")["metadata"]["resourceVersion"],
        version_before,
        "nothing was written"
    );

    step("update to VERSION=2, then roll back three times: 1, 2, 1");
    c.shoal(&["service", "update", "--env-add", "VERSION=2", "toggle"])
        .ok();
    all_on(&c, none, "toggle", "2", 2);
    for (i, (args, want)) in [
        (&["service", "update", "--rollback", "toggle"][..], "1"),
        (&["service", "rollback", "toggle"][..], "2"),
        (&["service", "update", "--rollback", "toggle"][..], "1"),
    ]
    .into_iter()
    .enumerate()
    {
        let run = c.shoal(args);
        eprintln!("rollback {}: {args:?} -> {}", i + 1, out(&run).trim());
        let svc = service(&c, none, "toggle");
        assert_eq!(
            run.code,
            0,
            "{run:?}\nstatus: {}\ntasks:\n{}",
            svc["status"],
            table(&tasks(&c, none, "toggle"))
        );
        assert_eq!(svc["spec"]["env"]["VERSION"], want, "{}", svc["spec"]);
        let prev = if want == "1" { "2" } else { "1" };
        assert_eq!(
            svc["status"]["previousSpec"]["env"]["VERSION"], prev,
            "the previous spec is the other one"
        );
        all_on(&c, none, "toggle", want, 2);
        let svc = await_state(
            &c,
            none,
            "toggle",
            "rollback_completed",
            Duration::from_secs(30),
        );
        assert!(
            svc["status"]["updateStatus"]["completedAt"].is_string(),
            "{}",
            svc["status"]
        );
    }
}

/// Must show: the leading controller killed in the middle of an update: the update
/// finishes, no slot runs twice, no address is given twice.
#[test]
fn update_finishes_after_the_leading_controller_is_killed() {
    require_e2e!();
    let c = Cluster::up_with(3, &["--controllers", "2"]);

    step("ha-upd: 6 replicas on upnet, VERSION=1, updateConfig {delay: 2s, monitor: 2s}");
    c.shoal(&["network", "create", "--driver", "overlay", "upnet"])
        .ok();
    let policy = "  networks: [{name: upnet}]\n  updateConfig: {delay: 2s, monitor: 2s}\n";
    apply(
        &c,
        &[],
        &sleeper("ha-upd", 6, "1", policy),
        &["--timeout", "120s"],
    );
    let leader = c.eventually("a leader", Duration::from_secs(30), || {
        c.leading_controller()
    });
    let other = 3 - leader;
    eprintln!("controller-{leader} leads; controller-{other} will take over");
    // Everything after the kill goes to the survivor; so does the sampler from the start.
    let flags = c.controller_flags(other);
    all_on(&c, &flags, "ha-upd", "1", 6);

    step("apply VERSION=2 (parallelism 1, stop-first); kill the leader after two slots");
    let stop = AtomicBool::new(false);
    let samples = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let sampler = s.spawn(|| sample(&c, &flags, "ha-upd", &stop));
        let run = apply(
            &c,
            &flags,
            &sleeper("ha-upd", 6, "2", policy),
            &["--detach"],
        );
        assert_eq!(run.code, 0, "{run:?}");
        let at_kill = c.eventually("two slots on VERSION=2", Duration::from_secs(60), || {
            let t = try_tasks(&c, &flags, "ha-upd")?;
            let new = serving(&t).iter().filter(|t| version(t) == "2").count();
            (new >= 2).then_some(t)
        });
        eprintln!(
            "killing controller-{leader} with the update under way:\n{}",
            table(&at_kill)
        );
        c.shoal(&["dev", "controller", "stop", &leader.to_string()])
            .ok();
        let killed = Instant::now();
        let svc = await_state(&c, &flags, "ha-upd", "completed", Duration::from_secs(120));
        eprintln!(
            "completed {:?} after the kill: {}",
            killed.elapsed(),
            svc["status"]["updateStatus"]
        );
        assert_eq!(
            c.leading_controller(),
            Some(other),
            "controller-{other} leads now"
        );
        stop.store(true, Ordering::SeqCst);
        sampler.join().expect("sampler")
    });

    step("every slot runs once, on VERSION=2, and no address was ever given twice");
    let all = tasks(&c, &flags, "ha-upd");
    let new = all_on(&c, &flags, "ha-upd", "2", 6);
    let slots: BTreeSet<u64> = new.iter().map(slot).collect();
    assert_eq!(slots, (1..=6).collect(), "{}", table(&all));
    let made: Vec<&Value> = all.iter().filter(|t| version(t) == "2").collect();
    assert_eq!(
        made.len(),
        6,
        "one VERSION=2 task per slot, none made twice across the leader change:\n{}",
        table(&all)
    );
    eprintln!("{} samples", samples.len());
    assert!(samples.len() > 10, "the sampler saw the update");
    for s in &samples {
        let mut per_slot: BTreeMap<u64, usize> = BTreeMap::new();
        let mut addresses: BTreeMap<&str, usize> = BTreeMap::new();
        for t in s.tasks.iter().filter(|t| !is_terminal(t)) {
            if is_running(t) {
                *per_slot.entry(slot(t)).or_default() += 1;
            }
            if let Some(a) = address(t, "upnet") {
                *addresses.entry(a).or_default() += 1;
            }
        }
        assert!(
            per_slot.values().all(|n| *n <= 1),
            "a slot runs twice ({:?} into the test):\n{}",
            s.at.elapsed(),
            table(&s.tasks)
        );
        assert!(
            addresses.values().all(|n| *n <= 1),
            "an address given twice ({addresses:?}):\n{}",
            table(&s.tasks)
        );
    }
    let live: Vec<&str> = new.iter().filter_map(|t| address(t, "upnet")).collect();
    let distinct: BTreeSet<&str> = live.iter().copied().collect();
    assert_eq!(live.len(), 6, "every task has an address: {live:?}");
    assert_eq!(distinct.len(), 6, "distinct addresses: {live:?}");
}
