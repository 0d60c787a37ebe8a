//! What every fault scenario shares: the local cluster with its fixture (an overlay network
//! `chaos`, a service `web` of three httpd tasks publishing port 8080 through the routing
//! mesh, a `client` task on node 1), continuous traffic through web's virtual IP (from the
//! client's task namespace) and through the routing mesh (from node 1's namespace to node
//! 2's address), guards that undo each injected fault when dropped (also on a panic or
//! Ctrl-C), and the final assertion: `shoal system check` clean.
//!
//! Invariants: every fault is injected inside namespaces and processes the local cluster
//! made (node namespaces `shoal-node-K`, their agents, containerd and etcd); nothing touches
//! the root namespace's firewall, routes or interfaces. Every guard's `Drop` undoes its
//! fault, so the cluster's own `shoal dev down` (run when the [`Cluster`] is dropped) finds
//! only what it made.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use shoal_e2e::Cluster;

/// The image every service runs (seeded into the local registry by `shoal dev up`).
pub const BUSYBOX: &str = "localhost:5000/busybox:latest";

/// Set on Ctrl-C: waits fail at their next poll, so guards and the cluster are dropped.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Fails once Ctrl-C was pressed.
pub fn check_stop() -> Result<()> {
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Unix time in milliseconds.
pub fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Polls `f` every `every` until it returns `Some`, or fails after `timeout` (with the last
/// error `f` returned, if any).
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        check_stop()?;
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            match last_err {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what} (last error: {e:#})")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        std::thread::sleep(every);
    }
}

/// Runs `shoal ARGS`; stdout, or an error with stderr.
pub fn shoal(c: &Cluster, args: &[&str]) -> Result<String> {
    let r = c.shoal(args);
    if r.code != 0 {
        bail!(
            "shoal {} (exit {}): {}{}",
            args.join(" "),
            r.code,
            r.stdout.trim(),
            r.stderr.trim()
        );
    }
    Ok(r.stdout)
}

/// Applies a manifest without waiting for its tasks.
pub fn apply(c: &Cluster, yaml: &str) -> Result<()> {
    let path = c
        .state_dir()
        .join(format!("chaos-{:.0}.yaml", unix_ms() * 1000.0));
    std::fs::write(&path, yaml)?;
    shoal(
        c,
        &["apply", "-f", path.to_str().unwrap_or_default(), "--detach"],
    )?;
    Ok(())
}

/// A service manifest: busybox running `script` (`sh -c`), on `networks`, with extra spec
/// lines (`ports:`, `placement:`), indented by two spaces.
pub fn service(name: &str, replicas: u32, networks: &[&str], script: &str, extra: &str) -> String {
    let nets: Vec<String> = networks.iter().map(|n| format!("{{name: {n}}}")).collect();
    format!(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: {BUSYBOX}\n  \
         command: [sh, -c]\n  args: [{script:?}]\n  replicas: {replicas}\n  networks: [{}]\n{extra}",
        nets.join(", ")
    )
}

/// The httpd command of web-like services: answers `/` with the task's hostname. A shell
/// as PID 1 that exits on SIGTERM: a bare httpd or sleep as PID 1 ignores it, so every stop
/// would wait out the grace period.
pub const HTTPD: &str = "mkdir -p /www && hostname > /www/index.html && trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait";

/// The command of idle services (stops at once on SIGTERM, as [`HTTPD`]).
pub const IDLE: &str = "trap 'exit 0' TERM; sleep 1000000 & wait";

/// The `placement:` lines pinning a service to node k.
pub fn on_node(k: u32) -> String {
    format!("  placement: {{constraints: [\"node.name==node-{k}\"]}}\n")
}

/// One task, as the scenarios look at it.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Its name (the task id).
    pub id: String,
    /// Its slot.
    pub slot: u64,
    /// The node it is assigned to.
    pub node: String,
    /// `running`, `shutdown`, ...
    pub desired: String,
    /// The state the agent reported.
    pub state: String,
    /// status.err.
    pub err: String,
    /// Addresses on every network (without the prefix length), `network=ip`.
    pub addrs: Vec<(String, String)>,
}

impl Task {
    /// Parses one task object.
    pub fn from_json(t: &Value) -> Task {
        let s = |p: &str| {
            t.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Task {
            id: s("/metadata/name"),
            slot: t.pointer("/spec/slot").and_then(Value::as_u64).unwrap_or(0),
            node: s("/spec/node"),
            desired: s("/spec/desiredState"),
            state: s("/status/state"),
            err: s("/status/err"),
            addrs: t
                .pointer("/spec/attachments")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|a| {
                            let net = a["network"].as_str().unwrap_or_default().to_string();
                            let ip = a["address"].as_str().unwrap_or_default();
                            (net, ip.split('/').next().unwrap_or_default().to_string())
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Running and wanted running.
    pub fn live(&self) -> bool {
        self.state == "running" && self.desired == "running"
    }

    /// The address on `net`, if any.
    pub fn ip(&self, net: &str) -> Option<&str> {
        self.addrs
            .iter()
            .find(|(n, _)| n == net)
            .map(|(_, ip)| ip.as_str())
    }
}

/// The tasks of a service (none when it does not exist).
pub fn tasks(c: &Cluster, svc: &str) -> Result<Vec<Task>> {
    let r = c.shoal(&["service", "ps", svc, "-o", "json"]);
    if r.code != 0 {
        if r.stderr.contains("not found") {
            return Ok(vec![]);
        }
        bail!("shoal service ps {svc}: {}", r.stderr.trim());
    }
    let v: Value = serde_json::from_str(&r.stdout).context("service ps -o json")?;
    let items = v
        .as_array()
        .cloned()
        .or_else(|| v["items"].as_array().cloned())
        .unwrap_or_default();
    Ok(items.iter().map(Task::from_json).collect())
}

/// The live tasks of a service.
pub fn live(c: &Cluster, svc: &str) -> Result<Vec<Task>> {
    Ok(tasks(c, svc)?.into_iter().filter(Task::live).collect())
}

/// The network namespace of a task (`shoal-node-K-<id prefix>`).
pub fn task_netns(id: &str) -> Result<String> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|n| n.starts_with("shoal-node-") && n.contains(&id[..12.min(id.len())]))
        .map(str::to_string)
        .with_context(|| format!("no namespace for task {id}"))
}

/// Runs argv inside namespace `ns`; stdout, or an error with stderr.
pub fn in_ns(ns: &str, argv: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .output()?;
    if !out.status.success() {
        bail!(
            "in {ns}: {}: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pid in the dev cluster's pid file for `daemon` (`agent-3`, `containerd-3`,
/// `controller-1`, `etcd-1`), when that process runs.
pub fn daemon_pid(c: &Cluster, daemon: &str) -> Option<i32> {
    let text =
        std::fs::read_to_string(c.state_dir().join("run").join(format!("{daemon}.pid"))).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).ok()?;
    Some(pid)
}

/// Sends `sig` to a pid.
pub fn signal(pid: i32, sig: nix::sys::signal::Signal) -> Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
        .with_context(|| format!("signal {sig} to {pid}"))
}

/// A process frozen with SIGSTOP, thawed (SIGCONT) when dropped.
pub struct Frozen(pub i32);

impl Frozen {
    /// Freezes it.
    pub fn freeze(pid: i32) -> Result<Frozen> {
        signal(pid, nix::sys::signal::Signal::SIGSTOP)?;
        Ok(Frozen(pid))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = signal(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// An nftables table inside node k's namespace dropping everything in and out of its
/// underlay interface (`eth0`); deleted when dropped. Only ever inside a node namespace.
/// VXLAN for the node's own tasks still gets in (the agent's fast path runs at tc ingress,
/// before nftables), but what they answer cannot leave, so no connection completes.
pub struct Partition {
    ns: String,
}

/// The table's name inside the node namespace.
const PARTITION_TABLE: &str = "shoal_chaos_partition";

impl Partition {
    /// Cuts node k off the underlay.
    pub fn cut(k: u32) -> Result<Partition> {
        let ns = format!("shoal-node-{k}");
        if !Path::new("/run/netns").join(&ns).exists() {
            bail!("no namespace {ns}: refusing to add a drop rule anywhere else");
        }
        let rules = format!(
            "table inet {PARTITION_TABLE} {{\n\
             chain cut_in {{ type filter hook prerouting priority -400; iifname \"eth0\" drop; }}\n\
             chain cut_out {{ type filter hook output priority -400; oifname \"eth0\" drop; }}\n\
             chain cut_fwd {{ type filter hook forward priority -400; oifname \"eth0\" drop; }}\n}}\n"
        );
        let p = Partition { ns };
        let mut child = Command::new("ip")
            .args(["netns", "exec", &p.ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        use std::io::Write;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(rules.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("nft in {}: {}", p.ns, String::from_utf8_lossy(&out.stderr));
        }
        Ok(p)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "nft",
                "delete",
                "table",
                "inet",
                PARTITION_TABLE,
            ])
            .output();
    }
}

/// What one load (`shoal-bench __httpload`) reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadResult {
    /// Requests sent.
    pub sent: u64,
    /// Requests that did not get a 200.
    pub failed: u64,
    /// (unix ms, kind, what the client saw) of each failure (the first 200).
    pub fails: Vec<(f64, String, String)>,
}

impl LoadResult {
    /// Parses `sent=.. ok=.. failed=..` and the `fail=<ms>,<kind>,<detail>` lines.
    pub fn parse(out: &str) -> LoadResult {
        let first = out.lines().next().unwrap_or_default();
        let kv = |k: &str| {
            first
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        LoadResult {
            sent: kv("sent") as u64,
            failed: kv("failed") as u64,
            fails: out
                .lines()
                .filter_map(|l| l.strip_prefix("fail="))
                .filter_map(|f| {
                    let mut it = f.splitn(3, ',');
                    let at = it.next()?.parse().ok()?;
                    let kind = it.next()?.to_string();
                    Some((at, kind, it.next().unwrap_or_default().to_string()))
                })
                .collect(),
        }
    }

    /// The failures' kinds, counted: `refused×2, timeout×1`.
    pub fn kinds(&self) -> String {
        let mut k: std::collections::BTreeMap<&str, usize> = Default::default();
        for (_, kind, _) in &self.fails {
            *k.entry(kind.as_str()).or_default() += 1;
        }
        let v: Vec<String> = k.iter().map(|(k, n)| format!("{k}×{n}")).collect();
        v.join(", ")
    }

    /// Failures at or after `ms` (unix ms).
    pub fn failed_since(&self, ms: f64) -> usize {
        self.fails.iter().filter(|(at, _, _)| *at >= ms).count()
    }
}

/// A paced HTTP load in a namespace, stopped through a file; killed when dropped.
pub struct Load {
    what: String,
    child: Option<Child>,
}

/// Requests per second of each load, and its workers.
const RATE: u32 = 40;
const WORKERS: u32 = 4;

impl Load {
    fn start(bench: &Path, what: &str, ns: &str, addr: &str, stop: &Path) -> Result<Load> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bench)
            .args([
                "__httpload",
                addr,
                &RATE.to_string(),
                &WORKERS.to_string(),
                "1800",
            ])
            .arg(stop)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start the {what} load"))?;
        Ok(Load {
            what: what.into(),
            child: Some(child),
        })
    }

    fn finish(mut self) -> Result<LoadResult> {
        let child = self.child.take().context("load already finished")?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{} load: {}",
                self.what,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(LoadResult::parse(&String::from_utf8_lossy(&out.stdout)))
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

/// Traffic through web's VIP (from the client task) and through the routing mesh (from
/// node 1's namespace to node 2's published port), both running until [`Traffic::stop`].
pub struct Traffic {
    stop_file: PathBuf,
    loads: Vec<Load>,
}

impl Traffic {
    /// Stops both loads; (path, result) of each.
    pub fn stop(mut self) -> Result<Vec<(String, LoadResult)>> {
        std::fs::write(&self.stop_file, b"stop")?;
        let mut out = vec![];
        for load in std::mem::take(&mut self.loads) {
            let what = load.what.clone();
            out.push((what, load.finish()?));
        }
        Ok(out)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop_file, b"stop");
    }
}

/// One node's tasks (from etcd) against its task namespaces and containerd.
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    /// Every task assigned to it, in any state (ended ones keep their container for logs).
    pub tasks: BTreeSet<String>,
    /// Its live tasks.
    pub live: BTreeSet<String>,
    /// Task namespaces `shoal-node-K-*`.
    pub netns: usize,
    /// Container ids (a container is named after its task).
    pub containers: Vec<String>,
    /// Ids of containers whose process runs.
    pub running: Vec<String>,
}

impl NodeState {
    /// What is wrong: a container no task of the node explains, a process running twice or
    /// for no live task, a live task without one, a namespace more or less than live tasks.
    pub fn problems(&self) -> Vec<String> {
        let mut out = vec![];
        for c in &self.containers {
            if !self.tasks.contains(c) {
                out.push(format!("container {c} belongs to no task of the node"));
            }
        }
        let running: BTreeSet<&String> = self.running.iter().collect();
        if running.len() != self.running.len() {
            out.push("a container runs twice".into());
        }
        for r in &running {
            if !self.live.contains(*r) {
                out.push(format!("container {r} runs for no live task"));
            }
        }
        for l in &self.live {
            if !running.contains(l) {
                out.push(format!("live task {l} has no running container"));
            }
        }
        if self.netns != self.live.len() {
            out.push(format!(
                "{} task namespaces for {} live tasks",
                self.netns,
                self.live.len()
            ));
        }
        out
    }
}

/// The cluster and its fixture.
pub struct Chaos {
    /// The local cluster (`shoal dev down` when dropped).
    pub c: Cluster,
    /// `shoal-bench` (its `__httpload` and `__http` helpers).
    pub bench: PathBuf,
    /// web's virtual IP on `chaos`.
    pub vip: String,
    /// The client task's namespace (on node 1).
    pub client_ns: String,
}

/// The fixture's network and services.
pub fn fixture() -> String {
    format!(
        "apiVersion: shoal/v1\nkind: Network\nmetadata: {{name: chaos}}\nspec: {{}}\n---\n{}---\n{}",
        service(
            "web",
            3,
            &["chaos"],
            HTTPD,
            "  ports:\n    - published: 8080\n      target: 80\n"
        ),
        service("client", 1, &["chaos"], IDLE, &on_node(1)),
    )
}

impl Chaos {
    /// `shoal dev up` (3 nodes, 2 controllers) and the fixture, running.
    pub fn up() -> Result<Chaos> {
        let bench = shoal_e2e::bin_dir().join("shoal-bench");
        if !bench.is_file() {
            bail!(
                "{} missing: cargo build -p shoal-e2e --bins",
                bench.display()
            );
        }
        eprintln!("chaos: shoal dev up --nodes 3 --controllers 2");
        let c = Cluster::up_with(3, &["--controllers", "2"]);
        apply(&c, &fixture())?;
        let (web, client) = wait_for(
            "the fixture (3 web tasks on 3 nodes, the client)",
            Duration::from_secs(180),
            Duration::from_millis(500),
            || {
                let web = live(&c, "web")?;
                let client = live(&c, "client")?;
                let nodes: std::collections::BTreeSet<_> = web.iter().map(|t| &t.node).collect();
                Ok((web.len() == 3 && nodes.len() == 3 && client.len() == 1)
                    .then(|| (web.clone(), client[0].clone())))
            },
        )?;
        let _ = web;
        let svc: Value = serde_json::from_str(&shoal(&c, &["service", "inspect", "web"])?)?;
        let svc = svc
            .as_array()
            .and_then(|a| a.first())
            .unwrap_or(&svc)
            .clone();
        let vip = svc
            .pointer("/status/virtualIps")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .find(|v| v["network"] == "chaos")
                    .or_else(|| a.first())
                    .and_then(|v| v["addr"].as_str())
            })
            .map(|a| a.split('/').next().unwrap_or_default().to_string())
            .context("web has no virtual IP on chaos")?;
        let client_ns = task_netns(&client.id)?;
        let x = Chaos {
            c,
            bench,
            vip,
            client_ns,
        };
        x.paths_answer(Duration::from_secs(60))?;
        Ok(x)
    }

    /// One GET through `addr` from `ns` (`shoal-bench __http`).
    pub fn get(&self, ns: &str, addr: &str) -> Result<()> {
        in_ns(
            ns,
            &[self.bench.to_str().unwrap_or_default(), "__http", addr],
        )
        .map(|_| ())
    }

    /// Waits until both traffic paths answer.
    pub fn paths_answer(&self, timeout: Duration) -> Result<()> {
        let vip = format!("{}:80", self.vip);
        wait_for(
            "web through its VIP and the mesh",
            timeout,
            Duration::from_millis(200),
            || {
                self.get(&self.client_ns, &vip)?;
                self.get("shoal-node-1", "198.18.0.2:8080")?;
                Ok(Some(()))
            },
        )
    }

    /// Starts traffic through the VIP and the mesh.
    pub fn traffic(&self) -> Result<Traffic> {
        let stop_file = self
            .c
            .state_dir()
            .join(format!("chaos-stop-{:.0}", unix_ms()));
        let _ = std::fs::remove_file(&stop_file);
        let vip = Load::start(
            &self.bench,
            "VIP",
            &self.client_ns,
            &format!("{}:80", self.vip),
            &stop_file,
        )?;
        let mesh = Load::start(
            &self.bench,
            "mesh",
            "shoal-node-1",
            "198.18.0.2:8080",
            &stop_file,
        )?;
        // Let both settle before the fault.
        std::thread::sleep(Duration::from_secs(2));
        Ok(Traffic {
            stop_file,
            loads: vec![vip, mesh],
        })
    }

    /// Runs `shoal system check`: (exit code, what it printed on stdout, or both streams
    /// when it failed).
    pub fn check(&self) -> (i32, String) {
        let r = self.c.shoal(&["system", "check"]);
        if r.code == 0 {
            return (0, r.stdout);
        }
        (r.code, format!("{}{}", r.stdout, r.stderr))
    }

    /// Polls the check until it is clean on all three nodes (it checks only ready nodes: a
    /// node still rejoining would pass unchecked); its output. Fails with the last drift
    /// after `timeout`.
    pub fn clean(&self, timeout: Duration) -> Result<String> {
        let mut last = String::new();
        let r = wait_for(
            "shoal system check clean on 3 nodes",
            timeout,
            Duration::from_millis(500),
            || {
                let (code, out) = self.check();
                if code == 0 && out.contains("no drift: 3 nodes checked") {
                    return Ok(Some(out));
                }
                last = out;
                Ok(None)
            },
        );
        r.with_context(|| format!("the last check said:\n{last}"))
    }

    /// Proves node k's data plane works: a task pinned to it answers over the overlay from
    /// the client on node 1, and the routing mesh answers on node k's address.
    pub fn node_serves(&self, k: u32) -> Result<()> {
        let name = format!("probe-{k}");
        apply(&self.c, &service(&name, 1, &["chaos"], HTTPD, &on_node(k)))?;
        let t = wait_for(
            &format!("{name} running on node-{k}"),
            Duration::from_secs(120),
            Duration::from_millis(300),
            || Ok(live(&self.c, &name)?.into_iter().next()),
        )?;
        let ip = t
            .ip("chaos")
            .context("probe task has no address on chaos")?
            .to_string();
        wait_for(
            &format!("node-{k}: its task over the overlay and its mesh port"),
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                self.get(&self.client_ns, &format!("{ip}:80"))?;
                self.get("shoal-node-1", &format!("198.18.0.{k}:8080"))?;
                Ok(Some(()))
            },
        )?;
        shoal(&self.c, &["service", "rm", &name])?;
        wait_for(
            &format!("{name} gone"),
            Duration::from_secs(60),
            Duration::from_millis(300),
            || Ok(tasks(&self.c, &name)?.is_empty().then_some(())),
        )
    }

    /// Makes web run one task on each node again (a node that was away gets none back by
    /// itself): a forced update replaces the tasks one at a time, spread over the nodes.
    pub fn spread_web(&self) -> Result<()> {
        let spread = |x: &Chaos| -> Result<bool> {
            let web = live(&x.c, "web")?;
            let nodes: BTreeSet<&String> = web.iter().map(|t| &t.node).collect();
            Ok(web.len() == 3 && nodes.len() == 3)
        };
        if spread(self)? {
            return Ok(());
        }
        shoal(&self.c, &["service", "update", "web", "--force"])?;
        wait_for(
            "web on all three nodes",
            Duration::from_secs(60),
            Duration::from_millis(300),
            || Ok(spread(self)?.then_some(())),
        )
    }

    /// Removes a service and waits until its tasks are gone.
    pub fn remove(&self, svc: &str) -> Result<()> {
        shoal(&self.c, &["service", "rm", svc])?;
        wait_for(
            &format!("{svc}'s tasks gone"),
            Duration::from_secs(180),
            Duration::from_millis(500),
            || Ok(tasks(&self.c, svc)?.is_empty().then_some(())),
        )
    }

    fn ctr(&self, k: u32, args: &[&str]) -> Result<String> {
        let sock = self
            .c
            .state_dir()
            .join(format!("node-{k}/containerd/containerd.sock"));
        let out = Command::new("ctr")
            .args([
                "--address",
                sock.to_str().unwrap_or_default(),
                "-n",
                "shoal",
            ])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "ctr {} on node-{k}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Node k as the harness audits it after a fault.
    pub fn node_state(&self, k: u32) -> Result<NodeState> {
        let node = format!("node-{k}");
        let tasks: Vec<Task> = self
            .all_tasks()?
            .into_iter()
            .filter(|t| t.node == node)
            .collect();
        let out = Command::new("ip").args(["netns", "list"]).output()?;
        let prefix = format!("shoal-node-{k}-");
        let netns = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .count();
        let containers = self.ctr(k, &["c", "ls", "-q"])?;
        // `ctr t ls`: TASK PID STATUS, after a header line.
        let processes = self.ctr(k, &["t", "ls"])?;
        Ok(NodeState {
            tasks: tasks.iter().map(|t| t.id.clone()).collect(),
            live: tasks
                .iter()
                .filter(|t| t.live())
                .map(|t| t.id.clone())
                .collect(),
            netns,
            containers: containers.lines().map(str::to_string).collect(),
            running: processes
                .lines()
                .skip(1)
                .filter(|l| l.split_whitespace().nth(2) == Some("RUNNING"))
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect(),
        })
    }

    /// Every task of the cluster (`shoal get tasks`).
    pub fn all_tasks(&self) -> Result<Vec<Task>> {
        let v: Value = serde_json::from_str(&shoal(&self.c, &["get", "tasks", "-o", "json"])?)?;
        let items = v
            .as_array()
            .cloned()
            .or_else(|| v["items"].as_array().cloned())
            .unwrap_or_default();
        Ok(items.iter().map(Task::from_json).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_result_should_parse_counts_and_failure_times() {
        let r = LoadResult::parse(
            "sent=10 ok=8 failed=2 slow=0 p50_ms=1 p99_ms=2 max_ms=3 start_ms=1 end_ms=2\n\
             fail=1000,refused,Connection refused\nfail=2000,timeout,timed out\n",
        );
        assert_eq!((r.sent, r.failed), (10, 2));
        assert_eq!(r.failed_since(1500.0), 1);
        assert_eq!(r.kinds(), "refused×1, timeout×1");
        assert_eq!(r.fails[0].1, "refused");
        assert_eq!(r.fails[1].2, "timed out");
    }

    #[test]
    fn task_should_read_slot_node_states_and_addresses() {
        let t = Task::from_json(&serde_json::json!({
            "metadata": {"name": "abc"},
            "spec": {"slot": 3, "node": "node-2", "desiredState": "running",
                     "attachments": [{"network": "chaos", "address": "10.0.0.5/24"}]},
            "status": {"state": "running", "err": ""}
        }));
        assert!(t.live());
        assert_eq!((t.slot, t.node.as_str()), (3, "node-2"));
        assert_eq!(t.ip("chaos"), Some("10.0.0.5"));
        assert_eq!(t.ip("other"), None);
    }

    #[test]
    fn node_state_should_name_strays_duplicates_and_leaked_namespaces() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let ok = NodeState {
            tasks: set(&["a", "b", "old"]),
            live: set(&["a", "b"]),
            netns: 2,
            containers: vec!["a".into(), "b".into(), "old".into()],
            running: vec!["a".into(), "b".into()],
        };
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        let bad = NodeState {
            netns: 3,
            containers: vec!["a".into(), "b".into(), "gone".into()],
            running: vec!["a".into(), "a".into(), "old".into()],
            ..ok
        };
        let p = bad.problems();
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p.iter().any(|m| m.contains("gone")));
        assert!(p.iter().any(|m| m.contains("runs twice")));
        assert!(p.iter().any(|m| m.contains("old runs for no live task")));
        assert!(p.iter().any(|m| m.contains("live task b")));
        assert!(p.iter().any(|m| m.contains("3 task namespaces")));
    }

    #[test]
    fn service_manifest_should_parse_as_a_valid_service() {
        let yaml = service("s", 2, &["a", "b"], HTTPD, &on_node(3));
        let docs = shoal_api_types::manifest::parse_manifests(&yaml);
        assert!(docs.is_ok(), "{yaml}\n{docs:?}");
        let fx = shoal_api_types::manifest::parse_manifests(&fixture());
        assert!(fx.is_ok(), "{fx:?}");
    }
}
