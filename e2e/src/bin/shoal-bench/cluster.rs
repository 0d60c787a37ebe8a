//! Figures on the 3-node local cluster (`shoal dev up`, torn down with `shoal dev down`
//! when dropped): 1 convergence (baseline `ctr run` on node 1's containerd), 4 data plane
//! (wrk from a task namespace: direct task IP vs VIP vs routing mesh; bulk TCP over the
//! overlay vs the underlay), 7 (local half) endpoint propagation, 9 rolling update (in
//! [`crate::rolling`]). Only one local cluster runs per machine: when one already runs, these
//! figures are skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::common::*;
use crate::follow::Follow;
use crate::rules::parse_kv;

pub(crate) const BUSYBOX: &str = "localhost:5000/busybox:latest";

pub(crate) struct Dev {
    bin: PathBuf,
    state: PathBuf,
    ctx: PathBuf,
    security: Security,
}

impl Dev {
    fn up(bin: &Path, security: Security) -> Result<Dev> {
        let state = PathBuf::from(format!("/tmp/{}-dev-{}", run_id(), security.word()));
        let dev = Dev {
            bin: bin.to_path_buf(),
            ctx: state.with_extension("context.json"),
            state,
            security,
        };
        let mut args = vec!["dev", "up", "--nodes", "3", "--timeout", "90"];
        if security == Security::Insecure {
            args.push("--insecure");
        }
        let out = dev.cmd().args(&args).output()?;
        if !out.status.success() {
            bail!(
                "shoal dev up: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(dev)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(self.bin.join("shoal"));
        c.env("SHOAL_DEV_STATE", &self.state)
            .env("SHOAL_CONFIG", &self.ctx)
            .env_remove("SHOAL_SERVER")
            .env_remove("SHOAL_TOKEN")
            .env_remove("SHOAL_CA");
        c
    }

    pub(crate) fn shoal(&self, args: &[&str]) -> Result<String> {
        let out = self.cmd().args(args).output()?;
        if !out.status.success() {
            bail!(
                "shoal {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub(crate) fn apply(&self, yaml: &str) -> Result<()> {
        let p = self.state.join(format!("bench-{}.yaml", rand_u64()));
        std::fs::write(&p, yaml)?;
        self.shoal(&["apply", "-f", p.to_str().unwrap_or_default(), "--detach"])?;
        Ok(())
    }

    /// curl's arguments for an API path (`services/web`, `tasks?watch=true`), with the CA
    /// and the admin token when secured.
    pub(crate) fn curl_args(&self, path: &str) -> Result<Vec<String>> {
        Ok(match self.security {
            Security::Insecure => vec![
                "-sf".into(),
                format!("http://127.0.0.1:7777/apis/shoal/v1/{path}"),
            ],
            Security::Secured => {
                let pki = self.state.join("pki");
                let token = std::fs::read_to_string(pki.join("admin.token"))?;
                vec![
                    "-sf".into(),
                    "--cacert".into(),
                    pki.join("ca.crt").display().to_string(),
                    "-H".into(),
                    format!("Authorization: Bearer {}", token.trim()),
                    format!("https://127.0.0.1:7777/apis/shoal/v1/{path}"),
                ]
            }
        })
    }

    /// Starts `curl -N` on an API watch path; returns the process (the caller kills it)
    /// and its stdout, one JSON event per line.
    pub(crate) fn watch_curl(
        &self,
        path: &str,
    ) -> Result<(std::process::Child, std::process::ChildStdout)> {
        let mut args = self.curl_args(path)?;
        args.insert(0, "-N".into());
        let mut child = std::process::Command::new("curl")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("start curl for a watch")?;
        let out = child.stdout.take().context("curl's stdout")?;
        Ok((child, out))
    }

    pub(crate) fn api(&self, path: &str) -> Result<Value> {
        let args = self.curl_args(path)?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Ok(serde_json::from_str(&sh("curl", &args)?)?)
    }

    /// Running tasks of a service: (id, node, ip on `net`).
    pub(crate) fn running(&self, svc: &str, net: &str) -> Result<Vec<(String, String, String)>> {
        let out = match self.shoal(&["service", "ps", svc, "-o", "json"]) {
            Ok(out) => out,
            Err(e) if format!("{e}").contains("not found") => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        let v: Value = serde_json::from_str(&out)?;
        let items = v
            .as_array()
            .cloned()
            .or_else(|| v["items"].as_array().cloned())
            .unwrap_or_default();
        Ok(items
            .iter()
            .filter(|t| t["status"]["state"] == "running" && t["spec"]["desiredState"] == "running")
            .map(|t| {
                let ip = t["spec"]["attachments"]
                    .as_array()
                    .and_then(|a| a.iter().find(|a| a["network"] == net))
                    .and_then(|a| a["address"].as_str())
                    .map(|a| a.split('/').next().unwrap_or_default().to_string())
                    .unwrap_or_default();
                (
                    t["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    t["spec"]["node"].as_str().unwrap_or_default().to_string(),
                    ip,
                )
            })
            .collect())
    }

    pub(crate) fn vip(&self, svc: &str) -> Result<Option<String>> {
        let s = self.api(&format!("services/{svc}"))?;
        Ok(s["status"]["virtualIps"]
            .as_array()
            .and_then(|a| a.iter().find_map(|v| v["addr"].as_str()))
            .map(|a| a.split('/').next().unwrap_or_default().to_string()))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        eprintln!("bench: shoal dev down");
        let _ = self.cmd().args(["dev", "down"]).output();
        let _ = std::fs::remove_file(&self.ctx);
    }
}

fn rand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The task netns of a task id.
pub(crate) fn task_netns(id: &str) -> Result<String> {
    let out = sh("ip", &["netns", "list"])?;
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|n| n.starts_with("shoal-node-") && n.contains(&id[..12.min(id.len())]))
        .map(str::to_string)
        .with_context(|| format!("no namespace for task {id}"))
}

/// The figures' web server: busybox httpd under a shell that exits on SIGTERM, as a server
/// does (httpd itself as PID 1 would ignore SIGTERM, so every stopped task would run on for
/// the whole 10 s stop grace period until SIGKILL, and a figure that waits for deletions
/// would wait that long each time).
pub(crate) const HTTPD_APP: &str = "mkdir -p /www && hostname > /www/index.html; trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait";

pub(crate) fn httpd(name: &str, replicas: u32, extra: &str) -> String {
    format!(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: {BUSYBOX}\n  command: [sh, -c]\n  \
         args: [\"{HTTPD_APP}\"]\n  replicas: {replicas}\n  \
         networks: [{{name: bench}}]\n{extra}"
    )
}

pub(crate) fn poll<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        check_stop()?;
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn in_ns(ns: &str, argv: &[&str]) -> Result<String> {
    let mut a = vec!["netns", "exec", ns];
    a.extend_from_slice(argv);
    sh("ip", &a)
}

/// Runs `argv` as a process of the task whose namespace is `ns`, as `shoal exec` would: in
/// its namespace and in its containers' cgroup, so that what applies to the task's own
/// processes (VIP balancing at connect()) applies to it.
pub(crate) fn in_task(ns: &str, argv: &[&str]) -> Result<String> {
    let pid = sh("ip", &["netns", "pids", ns])?
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("no process in {ns}"))?;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        .with_context(|| format!("process {pid} of {ns} is in no cgroup v2 group"))?;
    let mount = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .find(|m| Path::new(m).join("cgroup.controllers").exists())
        .context("no cgroup v2 mount")?;
    let procs = format!("{mount}{cgroup}/cgroup.procs");
    let mut a = vec![
        "-c",
        "echo $$ > \"$0\" && exec ip netns exec \"$@\"",
        &procs,
        ns,
    ];
    a.extend_from_slice(argv);
    sh("sh", &a)
}

/// Brings up a local cluster and a probe task on node 1 (on network `bench`); returns the
/// cluster and the probe's network namespace.
fn cluster_with_probe(bin: &Path, security: Security) -> Result<(Dev, String)> {
    let dev = Dev::up(bin, security)?;
    dev.apply("apiVersion: shoal/v1\nkind: Network\nmetadata: {name: bench}\nspec: {}\n")?;
    dev.apply(&format!(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: probe}}\nspec:\n  image: {BUSYBOX}\n  command: [sleep, \"100000\"]\n  \
         replicas: 1\n  networks: [{{name: bench}}]\n  placement: {{constraints: [\"node.name==node-1\"]}}\n"
    ))?;
    let probe = poll(Duration::from_secs(120), "the probe task", || {
        Ok(dev.running("probe", "bench")?.into_iter().next())
    })?;
    let probe_ns = task_netns(&probe.0)?;
    Ok((dev, probe_ns))
}

/// Runs the local-cluster figures.
pub async fn run(bin: &Path, quick: bool, figs: &[u32], rows: &mut Vec<Row>) -> Result<()> {
    let bin = bin.to_path_buf();
    let figs = figs.to_vec();
    let quick2 = quick;
    let new_rows = tokio::task::spawn_blocking(move || -> Result<Vec<Row>> {
        let mut rows = vec![];
        // One local cluster per machine: a full run waits (up to 15 min) for another to end.
        let deadline = Instant::now() + Duration::from_secs(if quick2 { 0 } else { 900 });
        while Path::new("/run/netns/shoal-node-1").exists() && Instant::now() < deadline {
            eprintln!("bench: another local cluster runs; waiting for it to end");
            check_stop()?;
            std::thread::sleep(Duration::from_secs(10));
        }
        if Path::new("/run/netns/shoal-node-1").exists() {
            for f in &figs {
                rows.push(Row::skipped(&format!("{f} local cluster"), "-", "another local cluster (shoal-node-1) is running; one at a time per machine"));
            }
            return Ok(rows);
        }
        for p in ["containerd", "runc", "docker-registry", "skopeo", "curl"] {
            if !have(p) {
                for f in &figs {
                    rows.push(Row::skipped(&format!("{f} local cluster"), "-", format!("{p} is not installed")));
                }
                return Ok(rows);
            }
        }
        eprintln!("bench: shoal dev up --nodes 3 (secured, the default)");
        let (dev, probe_ns) = cluster_with_probe(&bin, Security::Secured)?;
        // The data plane first, on a quiet cluster: right after convergence's 20 services
        // come and go, containers stopping and agents converging skew the first rounds.
        if figs.contains(&4) {
            rows.extend(data_plane(&dev, quick2, &probe_ns)?);
        }
        // The rolling update next, while the cluster is still quiet; a failure here leaves
        // the other figures to run.
        if figs.contains(&9) {
            match crate::rolling::rolling_update(&dev, quick2, &probe_ns) {
                Ok(r) => rows.extend(r),
                Err(e) => {
                    eprintln!("bench: figure 9 failed: {e:#}");
                    rows.push(Row {
                        figure: "9 rolling update".into(),
                        shoal: "error".into(),
                        met: "error".into(),
                        target: "≤ 1.25 × bound; 0 failed".into(),
                        note: format!("{e:#}"),
                        ..Default::default()
                    });
                }
            }
        }
        let mut secured = (None, None);
        if figs.contains(&1) {
            let (r, p50) = convergence(&dev, quick2, &probe_ns)?;
            rows.extend(r);
            secured.0 = Some(p50);
        }
        if figs.contains(&7) {
            let (r, p50) = propagation(&dev, quick2)?;
            rows.extend(r);
            secured.1 = Some(p50);
        }
        drop(dev);
        if secured.0.is_some() || secured.1.is_some() {
            // What security costs: the same figures on an insecure cluster, right after.
            eprintln!("bench: shoal dev up --nodes 3 --insecure (the cost-of-security baseline)");
            let (dev, probe_ns) = cluster_with_probe(&bin, Security::Insecure)?;
            if let Some(s) = secured.0 {
                let (_, i) = convergence(&dev, quick2, &probe_ns)?;
                rows.push(crate::control::security_cost(
                    "1 security cost: convergence p50, secured vs insecure local cluster",
                    s,
                    i,
                    "ms",
                    false,
                    "the same runs on `shoal dev up` (etcd TLS + client certificates + users, HTTPS API with a token, mutual TLS to agents) and on `shoal dev up --insecure`, one after the other",
                ));
            }
            if let Some(s) = secured.1 {
                let (_, i) = propagation(&dev, quick2)?;
                rows.push(crate::control::security_cost(
                    "7 security cost: task running → DNS and VIP on all nodes, p50, secured vs insecure",
                    s,
                    i,
                    "ms",
                    false,
                    "the same trials on a secured and an insecure local cluster, one after the other",
                ));
            }
        }
        Ok(rows)
    })
    .await??;
    rows.extend(new_rows);
    Ok(())
}

struct CtrNs {
    sock: String,
    ns: String,
}

impl Drop for CtrNs {
    fn drop(&mut self) {
        let _ = Command::new("ctr")
            .args([
                "--address",
                &self.sock,
                "-n",
                &self.ns,
                "images",
                "rm",
                BUSYBOX,
            ])
            .output();
        let _ = Command::new("ctr")
            .args(["--address", &self.sock, "namespaces", "remove", &self.ns])
            .output();
        // `ctr run --rm` deleted each container; runc's (empty) directory of the namespace
        // in its default root is left.
        let _ = std::fs::remove_dir(format!("/run/containerd/runc/{}", self.ns));
    }
}

fn convergence(dev: &Dev, quick: bool, probe_ns: &str) -> Result<(Vec<Row>, f64)> {
    let runs = if quick { 3 } else { 20 };
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().unwrap_or_default().to_string();
    // Baseline: ctr run of the same image on node 1's containerd, in a namespace of ours.
    let ctr = CtrNs {
        sock: dev
            .state
            .join("node-1/containerd/containerd.sock")
            .display()
            .to_string(),
        ns: format!("{}-ctr", run_id()),
    };
    sh(
        "ctr",
        &[
            "--address",
            &ctr.sock,
            "-n",
            &ctr.ns,
            "images",
            "pull",
            "--plain-http",
            BUSYBOX,
        ],
    )?;
    // The baseline runs interleaved with the convergence runs (one `ctr run` before each),
    // so both see the same load on this shared machine.
    let ctr_run = |i: u32| -> Result<f64> {
        let t = Instant::now();
        sh(
            "ctr",
            &[
                "--address",
                &ctr.sock,
                "-n",
                &ctr.ns,
                "run",
                "--rm",
                BUSYBOX,
                &format!("{}-{i}", run_id()),
                "true",
            ],
        )?;
        Ok(ms(t.elapsed()))
    };
    let mut base = vec![];
    let (mut times, mut to_running, mut pairs) = (vec![], vec![], vec![]);
    let mut explained: Vec<String> = vec![];
    // Tasks and services followed through the API's watch streams: no polling process adds
    // latency or takes CPU from the runs. Connected once the probe task is seen.
    let mut follow = Follow::start(dev, &["tasks", "services"])?;
    follow.until(Duration::from_secs(30), "the watch streams", |w| {
        (!w.running("probe").is_empty()).then_some(())
    })?;
    // As `ctr images pull` above does for the baseline: the image on every node before the
    // clock runs (one global service, removed again), so no run includes a registry pull.
    dev.apply(&format!(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: conv-warm}}\nspec:\n  image: {BUSYBOX}\n  command: [sleep, \"100000\"]\n  \
         mode: global\n  networks: [{{name: bench}}]\n"
    ))?;
    follow.until(Duration::from_secs(120), "the image on every node", |w| {
        (w.running("conv-warm").len() >= 3).then_some(())
    })?;
    dev.shoal(&["service", "rm", "conv-warm"])?;
    follow.until(
        Duration::from_secs(60),
        "the warm-up's tasks deleted",
        |w| {
            w.all("tasks")
                .all(|t| t["spec"]["service"] != "conv-warm")
                .then_some(())
        },
    )?;
    for i in 0..runs {
        base.push(ctr_run(i)?);
        let name = format!("conv-{i}");
        // The VIP prober starts (and enters the probe's namespace) before the clock runs.
        let mut prober = Prober::start(probe_ns, &exe)?;
        let applied_at = unix_now_ms();
        let t = Instant::now();
        dev.apply(&httpd(&name, 3, ""))?;
        let (vip, running_at) =
            follow.until(Duration::from_secs(120), "3 running tasks and a VIP", |w| {
                if w.running(&name).len() < 3 {
                    return None;
                }
                w.vip(&name)
            })?;
        to_running.push(ms(running_at.saturating_duration_since(t)));
        prober.probe(&format!("{vip}:80"))?;
        let took = ms(t.elapsed());
        let why = explain_run(
            dev,
            &name,
            applied_at,
            to_running.last().copied().unwrap_or(0.0),
            took,
        )
        .unwrap_or_else(|e| format!("no breakdown: {e:#}"));
        eprintln!(
            "bench:   convergence run {i}: {took:.0} ms ({:.0} ms to running; load {}): {why}",
            to_running.last().copied().unwrap_or(0.0),
            load_avg()
        );
        explained.push(why);
        pairs.push((took, to_running.last().copied().unwrap_or(0.0)));
        times.push(took);
        dev.shoal(&["service", "rm", &name])?;
        follow.until(
            Duration::from_secs(60),
            "the service's tasks stopped",
            |w| w.running(&name).is_empty().then_some(()),
        )?;
        // The next run starts once the controller deleted this service's tasks (their
        // containers and namespaces go with them), so it does not share the machine with
        // this one's teardown. Not fatal: a slow deletion only costs the next run.
        let gone = follow.until(
            Duration::from_secs(20),
            "the service's tasks deleted",
            |w| {
                w.all("tasks")
                    .all(|t| t["spec"]["service"] != name.as_str())
                    .then_some(())
            },
        );
        if let Err(e) = gone {
            check_stop()?;
            eprintln!("bench:   {e:#}; going on");
        }
    }
    drop(follow);
    drop(ctr);
    let (p50, p99) = (pct(&mut times, 50.0), pct(&mut times, 99.0));
    let (b50, b99) = (pct(&mut base, 50.0), pct(&mut base, 99.0));
    let r50 = pct(&mut to_running, 50.0);
    let (worst_i, worst) = pairs
        .iter()
        .cloned()
        .enumerate()
        .fold(
            (0, (0.0f64, 0.0f64)),
            |a, b| if b.1 .0 > a.1 .0 { b } else { a },
        );
    let worst_why = explained.get(worst_i).cloned().unwrap_or_default();
    Ok((vec![Row {
        figure: format!("1 convergence: apply 3 replicas → running and answering via VIP ({runs} runs, {})", dev.security.word()),
        shoal: format!("p50 {p50:.0} ms, p99 {p99:.0} ms"),
        baseline: format!("ctr run --rm: p50 {b50:.0} ms, p99 {b99:.0} ms"),
        ratio: format!("p99 − raw p99 = {:.0} ms", p99 - b99),
        target: "p99 ≤ raw p99 + 250 ms".into(),
        met: met(p99 <= b99 + 250.0),
        note: format!("timed from `shoal apply --detach` to 3 tasks running (followed through the API's watch streams of tasks and services, no polling) and an HTTP 200 through the VIP from a task on node 1; breakdown (p50): {r50:.0} ms until the API shows 3 running, {:.0} ms more until the VIP answers (endpoints → agents' nft/DNS, httpd listening; one prober process in the probe task's namespace, started before the clock, tries every 5 ms); each run starts after the previous service's tasks were deleted; the image was pulled on every node by an untimed global service first, as `ctr images pull` does for the baseline; slowest run {:.0} ms, of it {:.0} ms until 3 running; its last task: {worst_why}; the baseline starts one container (`true`) on node 1's containerd, one run before each convergence run", p50 - r50, worst.0, worst.1),
    }], p50))
}

/// `shoal-bench __httpwait` in a namespace: started (and ready) before a run's clock, told
/// the address to probe when the tasks run; killed when dropped.
struct Prober {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Prober {
    fn start(ns: &str, exe: &str) -> Result<Prober> {
        use std::io::BufRead;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, exe, "__httpwait", "60"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("start the VIP prober")?;
        let mut out = std::io::BufReader::new(child.stdout.take().context("prober's stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("the VIP prober did not start: {line:?}");
        }
        Ok(Prober { child, out })
    }

    /// Probes `addr` until an HTTP 200 (or the prober's 60 s pass).
    fn probe(&mut self, addr: &str) -> Result<()> {
        use std::io::{BufRead, Write};
        let stdin = self.child.stdin.as_mut().context("prober's stdin")?;
        writeln!(stdin, "{addr}")?;
        stdin.flush()?;
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        if line.trim() != "ok" {
            bail!("no HTTP 200 through {addr} within 60 s");
        }
        Ok(())
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Unix milliseconds now.
fn unix_now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Where one convergence run's last task spent its time: the tasks' creation timestamps
/// (API) and the agents' `task started` lines (see `shoal_node_agent::agent::stages`).
fn explain_run(
    dev: &Dev,
    svc: &str,
    applied_at: f64,
    running_seen: f64,
    answered: f64,
) -> Result<String> {
    let v: Value = serde_json::from_str(&dev.shoal(&["service", "ps", svc, "-o", "json"])?)?;
    let items = v
        .as_array()
        .cloned()
        .or_else(|| v["items"].as_array().cloned())
        .unwrap_or_default();
    let created: Vec<(String, f64)> = items
        .iter()
        .filter_map(|t| {
            Some((
                t["metadata"]["name"].as_str()?.to_string(),
                unix_ms(t["metadata"]["creationTimestamp"].as_str()?)?,
            ))
        })
        .collect();
    let mut stages: std::collections::HashMap<String, Vec<(String, f64)>> = Default::default();
    for entry in std::fs::read_dir(dev.state.join("logs"))? {
        let path = entry?.path();
        let is_agent = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("agent-"));
        if !is_agent {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            if let Some((task, st)) = shoal_node_agent::agent::stages::parse_started(line) {
                if created.iter().any(|(id, _)| *id == task) {
                    stages.insert(task, st);
                }
            }
        }
    }
    let tasks: Vec<(f64, Vec<(String, f64)>)> = created
        .into_iter()
        .map(|(id, c)| (c, stages.remove(&id).unwrap_or_default()))
        .collect();
    Ok(breakdown(applied_at, &tasks, running_seen, answered))
}

/// The stages of the task that ran last: `apply → created` (the API and the controller's
/// orchestrator), then the agent's stages in order, then when the bench saw 3 running and
/// the VIP answer (ms after the apply). `tasks`: (creation, unix ms; stages, ms).
pub(crate) fn breakdown(
    applied_at: f64,
    tasks: &[(f64, Vec<(String, f64)>)],
    running_seen: f64,
    answered: f64,
) -> String {
    // Inner entries (`+network`, `+create`) ran inside the stage before them: not summed.
    let end = |(c, st): &(f64, Vec<(String, f64)>)| {
        c + st
            .iter()
            .filter(|s| !shoal_node_agent::agent::stages::is_within(&s.0))
            .map(|s| s.1)
            .sum::<f64>()
    };
    let Some(last) = tasks.iter().filter(|t| !t.1.is_empty()).max_by(|a, b| {
        end(a)
            .partial_cmp(&end(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    }) else {
        return format!(
            "no agent stage lines for its {} tasks; 3 running seen at {running_seen:.0} ms, VIP answered at {answered:.0} ms",
            tasks.len()
        );
    };
    let mut parts = vec![format!("apply→created {:.0}", last.0 - applied_at)];
    parts.extend(last.1.iter().map(|(n, v)| format!("{n} {v:.0}")));
    format!(
        "{} ms (running at {:.0} ms); 3 running seen at {running_seen:.0} ms, VIP answered at {answered:.0} ms",
        parts.join(", "),
        end(last) - applied_at
    )
}

/// wrk's socket errors and non-2xx responses, per URL.
static WRK_ERRORS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// wrk against `url` from namespace `ns`: as a process of the task there when `as_task`
/// ([`in_task`]), as one of the node's otherwise.
fn wrk(ns: &str, as_task: bool, url: &str, secs: u32) -> Result<(f64, f64)> {
    let argv = ["wrk", "-t1", "-c8", &format!("-d{secs}s"), "--latency", url];
    let out = if as_task {
        in_task(ns, &argv)?
    } else {
        in_ns(ns, &argv)?
    };
    for l in out
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Socket errors") || l.starts_with("Non-2xx"))
    {
        if let Ok(mut e) = WRK_ERRORS.lock() {
            e.push(format!("{url}: {l}"));
        }
    }
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .context("wrk printed no Requests/sec")?;
    let p99 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| {
            let v = v.trim();
            let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
            let n: f64 = num.parse().unwrap_or(0.0);
            match unit {
                "us" => n / 1000.0,
                "s" => n * 1000.0,
                _ => n,
            }
        })
        .unwrap_or(0.0);
    Ok((rps, p99))
}

/// "median (min–max)" of rates.
fn rates(v: &[f64]) -> (f64, String) {
    let (m, lo, hi) = spread(&mut v.to_vec());
    (
        m,
        format!("{} ({}–{})", thousands(m), thousands(lo), thousands(hi)),
    )
}

fn data_plane(dev: &Dev, quick: bool, probe_ns: &str) -> Result<Vec<Row>> {
    if !have("wrk") {
        return Ok(vec![Row::skipped(
            "4 data plane",
            "VIP/direct ≥ 0.95",
            "wrk is not installed",
        )]);
    }
    let secs = if quick { 2 } else { 5 };
    let rounds = if quick { 1 } else { 7 };
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().unwrap_or_default().to_string();
    // The task only holds the namespace; the server is this binary's keep-alive `__serve`,
    // started in the task's namespace (busybox httpd forks per request and closes every
    // connection: it would measure fork cost, not the data path).
    dev.apply(&format!(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  image: {BUSYBOX}\n  command: [sleep, \"100000\"]\n  \
         replicas: 1\n  networks: [{{name: bench}}]\n  placement: {{constraints: [\"node.name==node-2\"]}}\n  \
         ports: [{{published: 8080, target: 80}}]\n"
    ))?;
    let web = poll(Duration::from_secs(120), "the web task", || {
        Ok(dev.running("web", "bench")?.into_iter().next())
    })?;
    let web_ns = task_netns(&web.0)?;
    let log = std::env::temp_dir().join(format!("{}-serve.log", run_id()));
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &web_ns, &exe, "__serve", "0.0.0.0:80"]);
    let _server = Proc::spawn("keep-alive server", &mut c, &log)?;
    let vip = poll(Duration::from_secs(30), "web's VIP", || dev.vip("web"))?;
    poll(
        Duration::from_secs(30),
        "web answering through its VIP",
        || Ok(in_ns(probe_ns, &[&exe, "__http", &format!("{vip}:80")]).ok()),
    )?;
    // Routing mesh: from node 1's namespace to node 3's address (neither runs web).
    let mesh = poll(Duration::from_secs(20), "the routing mesh", || {
        Ok(in_ns("shoal-node-1", &[&exe, "__http", "198.18.0.3:8080"]).ok())
    });
    let direct_url = format!("http://{}/", web.2);
    let vip_url = format!("http://{vip}/");
    let mesh_url = "http://198.18.0.3:8080/".to_string();
    // The probe task's own process for direct and VIP (its namespace and cgroup, where its
    // connect()s to a VIP are balanced), node 1 for the mesh. The VIP once more from the
    // task's namespace but outside its cgroup: the connect() program does not see that
    // process, so the nftables table balances it (per-packet NAT), the baseline of what the
    // program changes.
    let mut paths: Vec<(&str, &str, bool, &str)> = vec![
        ("direct", probe_ns, true, &direct_url),
        ("VIP", probe_ns, true, &vip_url),
        ("VIP (table)", probe_ns, false, &vip_url),
    ];
    if mesh.is_ok() {
        paths.push(("mesh", "shoal-node-1", false, &mesh_url));
    }
    // Warm-up (ARP/FDB, conntrack), not counted.
    for (_, ns, as_task, url) in &paths {
        wrk(ns, *as_task, url, 1)?;
    }
    // Interleaved rounds: the machine is shared and noisy, so each path sees the same
    // drift; each round starts with the next path (no path always follows the same one).
    // The ratios are medians of the rounds' ratios, as in figures 5 and 6; the median and
    // the spread of each path are reported too.
    let mut got: Vec<(Vec<f64>, Vec<f64>)> = vec![(vec![], vec![]); paths.len()];
    for r in 0..rounds {
        let mut line = vec![];
        for i in (0..paths.len()).map(|k| (k + r) % paths.len()) {
            let (name, ns, as_task, url) = paths[i];
            let (rps, p99) = wrk(ns, as_task, url, secs)?;
            got[i].0.push(rps);
            got[i].1.push(p99);
            line.push(format!("{name} {rps:.0}"));
        }
        eprintln!(
            "bench:   data plane round {r}: {} req/s (load {})",
            line.join(", "),
            load_avg()
        );
    }
    let (d_rps, d_txt) = rates(&got[0].0);
    let (_, v_txt) = rates(&got[1].0);
    let ratios = |i: usize| {
        let (m, lo, hi) = paired_ratios(&got[i].0, &got[0].0);
        (m, lo, hi, rates(&got[i].0).0 / d_rps.max(1.0))
    };
    let (vr, vr_lo, vr_hi, vr_of_medians) = ratios(1);
    let (_, t_txt) = rates(&got[2].0);
    let (tr, tr_lo, tr_hi, _) = ratios(2);
    let (d_p99, _, _) = spread(&mut got[0].1.clone());
    let (v_p99, _, _) = spread(&mut got[1].1.clone());
    let per_round = |i: usize| {
        got[i]
            .0
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join("/")
    };
    let errors = WRK_ERRORS
        .lock()
        .map(|e| {
            if e.is_empty() {
                String::new()
            } else {
                format!("; wrk reported {}", e.join("; "))
            }
        })
        .unwrap_or_default();
    let mut rows = vec![Row {
        figure: format!("4 data plane: HTTP keep-alive from a task on node 1 to a task on node 2 (wrk -t1 -c8, {secs} s, {rounds} interleaved rounds)"),
        shoal: format!("VIP {v_txt} req/s, p99 {v_p99:.2} ms"),
        baseline: format!("direct task IP {d_txt} req/s, p99 {d_p99:.2} ms"),
        ratio: format!("{vr:.2}"),
        target: "VIP/direct ≥ 0.95".into(),
        met: met(vr >= 0.95),
        note: format!(
            "req/s median (min–max) over rounds; ratio = median of the rounds' VIP/direct (spread {vr_lo:.2}–{vr_hi:.2}; ratio of the medians {vr_of_medians:.2}); each round runs the paths back to back, starting with the next path each round; both over the VXLAN overlay to this tool's keep-alive HTTP/1.1 server (`__serve`) in the task's namespace, from wrk run as a process of the probe task (its namespace and cgroup); the VIP is balanced at connect() by the agent's cgroup program, so its connections carry no NAT (wrk keeps its 8 connections open); the same VIP from outside the task's cgroup, balanced by the nftables table (per-packet NAT), interleaved: {t_txt} req/s, {tr:.2} of direct (spread {tr_lo:.2}–{tr_hi:.2}); per round direct {}, VIP {}, VIP through the table {}{errors}",
            per_round(0),
            per_round(1),
            per_round(2),
        ),
    }];
    match mesh {
        Ok(_) => {
            let (_, m_txt) = rates(&got[3].0);
            let (m_p99, _, _) = spread(&mut got[3].1.clone());
            let (mr, mr_lo, mr_hi, mr_of_medians) = ratios(3);
            rows.push(Row {
                figure: "4 data plane: routing mesh via node 3 (no task there)".into(),
                shoal: format!("mesh {m_txt} req/s, p99 {m_p99:.2} ms"),
                baseline: format!("direct {d_txt} req/s"),
                ratio: format!("{mr:.2}"),
                target: "mesh/direct ≥ 0.85".into(),
                met: met(mr >= 0.85),
                note: format!("wrk in node 1's namespace → 198.18.0.3:8080 → ingress overlay → the task on node 2 (DNAT + SNAT), interleaved with the rows above; ratio = median of the rounds' mesh/direct (spread {mr_lo:.2}–{mr_hi:.2}; ratio of the medians {mr_of_medians:.2}); per round {}", per_round(3)),
            });
        }
        Err(e) => rows.push(Row::skipped(
            "4 data plane: routing mesh",
            "mesh/direct ≥ 0.85",
            format!("published port did not answer on a node without the task: {e:#}"),
        )),
    }
    // Bulk TCP: overlay (task to task) vs underlay (node to node).
    let log = std::env::temp_dir().join(format!("{}-sink.log", run_id()));
    let mut a = Command::new("ip");
    a.args(["netns", "exec", &web_ns, &exe, "__sink", "0.0.0.0:5201"]);
    let _s1 = Proc::spawn("overlay sink", &mut a, &log)?;
    let mut b = Command::new("ip");
    b.args([
        "netns",
        "exec",
        "shoal-node-2",
        &exe,
        "__sink",
        "198.18.0.2:5201",
    ]);
    let _s2 = Proc::spawn("underlay sink", &mut b, &log)?;
    std::thread::sleep(Duration::from_millis(300));
    let bulk_secs = if quick { 2 } else { 3 };
    let s = bulk_secs.to_string();
    // One stream moves with whatever else the machine does, so more (short) rounds than
    // above, each pair back to back, alternating which goes first.
    let bulk_rounds = if quick { 1 } else { 9 };
    let (mut o, mut u) = (vec![], vec![]);
    let overlay_to = format!("{}:5201", web.2);
    for r in 0..bulk_rounds {
        let overlay = [exe.as_str(), "__blast", overlay_to.as_str(), s.as_str()];
        let underlay = [exe.as_str(), "__blast", "198.18.0.2:5201", s.as_str()];
        let (ov, un) = if r % 2 == 0 {
            let ov = in_ns(probe_ns, &overlay)?;
            (ov, in_ns("shoal-node-1", &underlay)?)
        } else {
            let un = in_ns("shoal-node-1", &underlay)?;
            (in_ns(probe_ns, &overlay)?, un)
        };
        o.push(parse_kv(&ov)("gbps"));
        u.push(parse_kv(&un)("gbps"));
    }
    let (om, olo, ohi) = spread(&mut o.clone());
    let (um, ulo, uhi) = spread(&mut u.clone());
    let (br, br_lo, br_hi) = paired_ratios(&o, &u);
    let br_of_medians = om / um.max(0.001);
    let mtus = format!(
        "MTU overlay {} / underlay {}",
        link_mtu(probe_ns, "eth0").unwrap_or_default(),
        link_mtu("shoal-node-1", "eth0").unwrap_or_default()
    );
    rows.push(Row {
        figure: format!("4 data plane: bulk TCP, one stream, {bulk_secs} s, {bulk_rounds} interleaved rounds"),
        shoal: format!("overlay {om:.2} Gbit/s ({olo:.2}–{ohi:.2})"),
        baseline: format!("underlay {um:.2} Gbit/s ({ulo:.2}–{uhi:.2})"),
        ratio: format!("{br:.2}"),
        target: "overlay/underlay ≥ 0.9".into(),
        met: met(br >= 0.9),
        note: format!("Gbit/s median (min–max); ratio = median of the rounds' overlay/underlay (spread {br_lo:.2}–{br_hi:.2}; ratio of the medians {br_of_medians:.2}); each round runs both back to back, alternating which goes first; a Rust TCP sender/receiver (this binary) in the task namespaces (overlay: veth → bridge → VXLAN → underlay) vs the node namespaces (veth + bridge); {mtus}; per round overlay/underlay {}", o.iter().zip(&u).map(|(o, u)| format!("{o:.1}/{u:.1}")).collect::<Vec<_>>().join(", ")),
    });
    Ok(rows)
}

/// The MTU of a link in a namespace.
fn link_mtu(ns: &str, link: &str) -> Option<u32> {
    let out = in_ns(ns, &["cat", &format!("/sys/class/net/{link}/mtu")]).ok()?;
    out.trim().parse().ok()
}

/// The 1-minute load average, for the log.
pub(crate) fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

/// Unix milliseconds of an RFC 3339 timestamp.
pub(crate) fn unix_ms(ts: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| t.timestamp_micros() as f64 / 1000.0)
}

fn propagation(dev: &Dev, quick: bool) -> Result<(Vec<Row>, f64)> {
    let trials = if quick { 3 } else { 10 };
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().unwrap_or_default().to_string();
    // A watcher task on every node (global), and a service that grows by one task per trial.
    dev.apply(&format!(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: watch}}\nspec:\n  image: {BUSYBOX}\n  command: [sleep, \"100000\"]\n  \
         mode: global\n  networks: [{{name: bench}}]\n"
    ))?;
    let watchers = poll(
        Duration::from_secs(120),
        "a watcher task on every node",
        || {
            let r = dev.running("watch", "bench")?;
            Ok((r.len() >= 3).then_some(r))
        },
    )?;
    let netns: Vec<String> = watchers
        .iter()
        .map(|w| task_netns(&w.0))
        .collect::<Result<_>>()?;
    dev.apply(&httpd("grow", 1, ""))?;
    poll(Duration::from_secs(120), "grow running", || {
        Ok((!dev.running("grow", "bench")?.is_empty()).then_some(()))
    })?;
    let (mut worst, mut each) = (vec![], vec![]);
    for k in 0..trials {
        let before: Vec<String> = dev
            .running("grow", "bench")?
            .into_iter()
            .map(|t| t.0)
            .collect();
        dev.apply(&httpd("grow", 2 + k, ""))?;
        let (id, ip) = poll(Duration::from_secs(120), "the new task's address", || {
            let v: Value =
                serde_json::from_str(&dev.shoal(&["service", "ps", "grow", "-o", "json"])?)?;
            let items = v
                .as_array()
                .cloned()
                .or_else(|| v["items"].as_array().cloned())
                .unwrap_or_default();
            Ok(items.iter().find_map(|t| {
                let id = t["metadata"]["name"].as_str()?;
                if before.iter().any(|b| b == id) || t["spec"]["desiredState"] != "running" {
                    return None;
                }
                let ip = t["spec"]["attachments"]
                    .as_array()?
                    .iter()
                    .find(|a| a["network"] == "bench")?["address"]
                    .as_str()?;
                Some((id.to_string(), ip.split('/').next()?.to_string()))
            }))
        })?;
        // Watch from every node while the task starts.
        let children: Vec<std::process::Child> = netns
            .iter()
            .map(|ns| {
                Command::new("ip")
                    .args(["netns", "exec", ns, &exe, "__seen", "tasks.grow", &ip, "60"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .context("start __seen")
            })
            .collect::<Result<_>>()?;
        let outs: Vec<String> = children
            .into_iter()
            .map(|c| {
                c.wait_with_output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            })
            .collect::<std::io::Result<_>>()?;
        let running_at = poll(Duration::from_secs(30), "the running timestamp", || {
            let v: Value =
                serde_json::from_str(&dev.shoal(&["service", "ps", "grow", "-o", "json"])?)?;
            let items = v
                .as_array()
                .cloned()
                .or_else(|| v["items"].as_array().cloned())
                .unwrap_or_default();
            Ok(items
                .iter()
                .find(|t| t["metadata"]["name"] == id.as_str() && t["status"]["state"] == "running")
                .and_then(|t| t["status"]["timestamp"].as_str().and_then(unix_ms)))
        })?;
        let mut trial_worst: f64 = 0.0;
        for o in &outs {
            let p = parse_kv(o);
            let (d, l) = (p("dns_ms"), p("lb_ms"));
            if d == 0.0 || l == 0.0 {
                bail!("a node never saw {ip}: {o}");
            }
            let t = d.max(l) - running_at;
            each.push(t.max(0.0));
            trial_worst = trial_worst.max(t);
        }
        eprintln!("bench:   propagation trial {k}: {trial_worst:.0} ms to the last node");
        worst.push(trial_worst.max(0.0));
    }
    let (p50, p99) = (pct(&mut worst, 50.0), pct(&mut worst, 99.0));
    let e99 = pct(&mut each, 99.0);
    Ok((vec![Row {
        figure: format!("7 propagation: task running → DNS and VIP rules on all 3 nodes ({trials} tasks, {})", dev.security.word()),
        shoal: format!("last node p50 {p50:.0} ms, p99 {p99:.0} ms (per node p99 {e99:.0} ms)"),
        baseline: "Kubernetes 5k nodes ~5 s p50".into(),
        ratio: format!("{:.3}", p50 / 5000.0),
        target: "p99 < 200 ms local".into(),
        met: met(p99 < 200.0),
        note: "from the task's `running` status timestamp (agent clock) to its address answering `tasks.<svc>` at 127.0.0.11 and appearing in `nft list table ip shoal_lb`, polled every ~5-10 ms inside a watcher task's namespace on each node; path: agent status write → controller endpoints write → agents' endpoints watch → DNS table swap + nft transaction".into(),
    }], p50))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakdown_should_explain_the_task_that_ran_last() {
        let st = |v: &[(&str, f64)]| v.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        let tasks = vec![
            (
                1_000.0,
                st(&[("placed", 10.0), ("seen", 5.0), ("start", 20.0)]),
            ),
            (
                1_002.0,
                st(&[
                    ("placed", 10.0),
                    ("seen", 4000.0),
                    ("setup", 30.0),
                    ("+network", 29.0),
                    ("+create", 12.0),
                    ("start", 20.0),
                ]),
            ),
            (1_001.0, vec![]),
        ];
        assert_eq!(
            breakdown(990.0, &tasks, 4100.0, 4300.0),
            "apply→created 12, placed 10, seen 4000, setup 30, +network 29, +create 12, start 20 ms (running at 4072 ms); 3 running seen at 4100 ms, VIP answered at 4300 ms"
        );
        assert!(breakdown(0.0, &[(1.0, vec![])], 5.0, 6.0).starts_with("no agent stage lines"));
    }
}
