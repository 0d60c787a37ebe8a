//! End-to-end harness: a real local cluster (`shoal dev up`: etcd, registry, one containerd
//! and one network namespace per node, the controller, the agents) driven through the
//! `shoal` binary exactly as a user drives it.
//!
//! [`Cluster::up`] brings a cluster up under a unique state directory and [`Drop`] runs
//! `shoal dev down`, also when a test panics. The binaries come from the workspace's target
//! directory (build with `cargo build --workspace` first; `scripts/test` does).
//!
//! The local cluster uses fixed names and ports (`shoal-underlay` holding the bridge
//! `shoal-br0`, `shoal-node-k`, 7777, 5000, 23790), so one runs at a time: tests refuse to
//! start while a `shoal dev` cluster runs.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub use shoal_testkit as testkit;

/// The local cluster's underlay namespace: the bridge `shoal-br0` and its ports live there.
pub const UNDERLAY_NETNS: &str = "shoal-underlay";

/// Runs a command inside network namespace `ns` (`ip netns exec`).
pub fn in_netns(ns: &str, argv: &[&str]) -> Run {
    Run::from(
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .output()
            .expect("ip netns exec"),
    )
}

/// The programs a local cluster needs on the machine (besides root).
pub const PROGRAMS: [&str; 8] = [
    "busybox",
    "etcd",
    "containerd",
    "runc",
    "docker-registry",
    "skopeo",
    "nft",
    "ip",
];

/// Returns early from an end-to-end test when it cannot run here (not root, a program of
/// [`PROGRAMS`] missing), or fails it when `SHOAL_TESTS_REQUIRED=1` (as `scripts/test` sets
/// when root): the workspace's one skip rule, [`shoal_testkit::require!`].
#[macro_export]
macro_rules! require_e2e {
    () => {
        $crate::testkit::require!(root, tools = $crate::PROGRAMS)
    };
}

/// The workspace's binary directory (`target/debug`), found from the running executable:
/// a test's (`target/debug/deps/<test>`) or a binary's next to `shoal` (`shoal-chaos`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let parent = exe.parent().expect("exe dir");
    let dir = if parent.join("shoal").is_file() {
        parent.to_path_buf()
    } else {
        // target/debug/deps/<test> -> target/debug
        parent.parent().expect("target dir").to_path_buf()
    };
    for bin in ["shoal", "shoal-controller", "shoal-agent"] {
        assert!(
            dir.join(bin).is_file(),
            "{} missing: run `cargo build --workspace` first",
            dir.join(bin).display()
        );
    }
    dir
}

/// A running local cluster.
pub struct Cluster {
    /// Number of nodes.
    pub nodes: u32,
    state_dir: PathBuf,
    context: PathBuf,
    bin: PathBuf,
    extra_netns: Vec<String>,
    /// One local cluster per machine: the tests of one file run on threads, so each holds
    /// this until its cluster is torn down (dropped after `Drop::drop`).
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// Serialises the clusters of the tests in one test binary.
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Stdout, panicking with everything when the command failed.
    pub fn ok(self) -> String {
        assert_eq!(
            self.code, 0,
            "command failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self.stdout
    }
}

impl Cluster {
    /// Brings up an N-node cluster with real containers (secured, one etcd, one
    /// controller: `shoal dev up`'s defaults).
    pub fn up(nodes: u32) -> Cluster {
        Cluster::up_with(nodes, &[])
    }

    /// Brings up an N-node cluster with extra `shoal dev up` flags
    /// (`--etcd-members 3`, `--controllers 2`).
    pub fn up_with(nodes: u32, extra: &[&str]) -> Cluster {
        // A test that failed while holding it poisoned it; its cluster is gone all the same.
        let serial = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
        let bin = bin_dir();
        let id = format!("{:x}", std::process::id());
        let state_dir = PathBuf::from(format!("/tmp/shoal-e2e-{id}"));
        let context = state_dir.with_extension("context.json");
        if Path::new("/run/netns/shoal-node-1").exists() {
            panic!("a local cluster is already running (shoal-node-1 exists): run `shoal dev down` first");
        }
        let cluster = Cluster {
            nodes,
            state_dir,
            context,
            bin,
            extra_netns: vec![],
            _serial: serial,
        };
        let nodes_arg = nodes.to_string();
        let mut args = vec!["dev", "up", "--nodes", &nodes_arg, "--timeout", "90"];
        args.extend_from_slice(extra);
        let run = cluster.raw(&args);
        if run.code != 0 {
            // Drop tears down what did start.
            panic!(
                "shoal dev up failed\nstdout:\n{}\nstderr:\n{}",
                run.stdout, run.stderr
            );
        }
        cluster
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut cmd = Command::new(if exe.is_file() {
            exe
        } else {
            PathBuf::from(program)
        });
        cmd.env("SHOAL_DEV_STATE", &self.state_dir)
            .env("SHOAL_CONFIG", &self.context)
            .env_remove("SHOAL_SERVER")
            .env_remove("SHOAL_TOKEN")
            .env_remove("SHOAL_CA");
        cmd
    }

    fn raw(&self, args: &[&str]) -> Run {
        Run::from(
            self.command("shoal")
                .args(args)
                .output()
                .expect("run shoal"),
        )
    }

    /// Runs `shoal ARGS`.
    pub fn shoal(&self, args: &[&str]) -> Run {
        self.raw(args)
    }

    /// Runs `shoal ARGS` and parses its JSON output.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.shoal(args).ok();
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("shoal {args:?} did not print JSON ({e}):\n{out}"))
    }

    /// Runs a bash script (`set -euo pipefail`) as a user would in a shell: `shoal` and
    /// the other binaries on `PATH`, this cluster's context, the repository as the working
    /// directory.
    pub fn script(&self, text: &str) -> Run {
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        Run::from(
            self.command("bash")
                .env("PATH", path)
                .current_dir(repo)
                .args(["-euo", "pipefail", "-c", text])
                .output()
                .expect("run bash"),
        )
    }

    /// Runs `shoal exec TASK -- ARGV`.
    pub fn exec(&self, task: &str, argv: &[&str]) -> Run {
        let mut args = vec!["exec", task, "--"];
        args.extend_from_slice(argv);
        self.shoal(&args)
    }

    /// Applies a manifest given as text.
    pub fn apply(&self, yaml: &str) -> String {
        let path = self
            .state_dir
            .join(format!("manifest-{}.yaml", rand_suffix()));
        std::fs::write(&path, yaml).expect("write manifest");
        self.shoal(&["apply", "-f", path.to_str().unwrap(), "--timeout", "120s"])
            .ok()
    }

    /// Applies a manifest given as text without waiting for convergence.
    pub fn shoal_apply_detached(&self, yaml: &str) -> String {
        let path = self
            .state_dir
            .join(format!("manifest-{}.yaml", rand_suffix()));
        std::fs::write(&path, yaml).expect("write manifest");
        self.shoal(&["apply", "-f", path.to_str().unwrap(), "--detach"])
            .ok()
    }

    /// The tasks of a service (`GET /tasks?service=`), as JSON objects.
    pub fn tasks(&self, service: &str) -> Vec<Value> {
        let v = self.json(&["service", "ps", service, "-o", "json"]);
        v.as_array()
            .cloned()
            .or_else(|| v["items"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Ids of a service's tasks that run and are wanted running.
    pub fn running_ids(&self, service: &str) -> std::collections::BTreeSet<String> {
        self.tasks(service)
            .into_iter()
            .filter(|t| t["status"]["state"] == "running" && t["spec"]["desiredState"] == "running")
            .filter_map(|t| t["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    }

    /// Running tasks of a service: (display name, node, IP on `network`).
    pub fn running(&self, service: &str, network: &str) -> Vec<(String, String, String)> {
        self.tasks(service)
            .into_iter()
            .filter(|t| t["status"]["state"] == "running" && t["spec"]["desiredState"] == "running")
            .map(|t| {
                let slot = t["spec"]["slot"]
                    .as_u64()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                let node = t["spec"]["node"].as_str().unwrap_or_default().to_string();
                let ip = t["spec"]["attachments"]
                    .as_array()
                    .and_then(|a| a.iter().find(|a| a["network"] == network))
                    .and_then(|a| a["address"].as_str())
                    .map(|a| a.split('/').next().unwrap_or_default().to_string())
                    .unwrap_or_default();
                (format!("{service}.{slot}"), node, ip)
            })
            .collect()
    }

    /// Polls `f` until it returns `Some` or `timeout` passes.
    pub fn eventually<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                let ps = self.shoal(&["service", "ls"]);
                panic!(
                    "timed out after {timeout:?} waiting for: {what}\nservice ls:\n{}{}",
                    ps.stdout, ps.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs a command inside node k's network namespace.
    pub fn in_node(&self, k: u32, argv: &[&str]) -> Run {
        in_netns(&format!("shoal-node-{k}"), argv)
    }

    /// Kills node k's agent process only (its containers keep running).
    pub fn kill_agent(&self, k: u32) {
        let pid_file = self.state_dir.join("run").join(format!("agent-{k}.pid"));
        let pid = std::fs::read_to_string(&pid_file).expect("agent pid file");
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        let _ = std::fs::remove_file(pid_file);
    }

    /// `shoal dev node start K`.
    pub fn start_node(&self, k: u32) {
        self.shoal(&["dev", "node", "start", &k.to_string()]).ok();
    }

    /// `shoal dev node stop K`.
    pub fn stop_node(&self, k: u32) {
        self.shoal(&["dev", "node", "stop", &k.to_string()]).ok();
    }

    /// Creates a namespace standing in for the outside world, on the underlay at
    /// 198.18.0.200/24, and returns its name. Removed with the cluster.
    pub fn outside_world(&mut self) -> Result<String> {
        let ns = "shoal-e2e-outside".to_string();
        let sh = |args: &[&str]| -> Result<()> {
            let out = Command::new("ip").args(args).output().context("ip")?;
            if !out.status.success() {
                bail!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        };
        sh(&["netns", "add", &ns])?;
        self.extra_netns.push(ns.clone());
        sh(&[
            "-n",
            UNDERLAY_NETNS,
            "link",
            "add",
            "shoal-e2e-out",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ])?;
        sh(&[
            "-n",
            UNDERLAY_NETNS,
            "link",
            "set",
            "shoal-e2e-out",
            "master",
            "shoal-br0",
            "up",
        ])?;
        sh(&["-n", &ns, "addr", "add", "198.18.0.200/24", "dev", "eth0"])?;
        sh(&["-n", &ns, "link", "set", "eth0", "up"])?;
        sh(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The first object of `shoal ARGS` printing a JSON array (`service inspect`), or
    /// `None` when the command fails (a controller that is down).
    pub fn try_first(&self, args: &[&str]) -> Option<Value> {
        let run = self.shoal(args);
        if run.code != 0 {
            return None;
        }
        match serde_json::from_str(&run.stdout).ok()? {
            Value::Array(mut items) if !items.is_empty() => Some(items.swap_remove(0)),
            Value::Array(_) => None,
            other => Some(other),
        }
    }

    /// Which running controller (1 or 2 with `--controllers 2`) leads: it logged "became
    /// leader" more often than "lost the leader lease" (the log files `dev up` keeps; a
    /// stopped controller has no pid file).
    pub fn leading_controller(&self) -> Option<u32> {
        (1..=2).find(|k| {
            if !self
                .state_dir
                .join("run")
                .join(format!("controller-{k}.pid"))
                .exists()
            {
                return false;
            }
            let log = self
                .state_dir
                .join("logs")
                .join(format!("controller-{k}.log"));
            let text = std::fs::read_to_string(log).unwrap_or_default();
            text.matches("became leader").count() > text.matches("lost the leader lease").count()
        })
    }

    /// The global `shoal` flags that send a command to controller k (`--server`, `--ca`,
    /// `--token`): the CLI sends the context's CA and token only to the context's server,
    /// so another controller needs them named.
    pub fn controller_flags(&self, k: u32) -> Vec<String> {
        vec![
            format!("--server=https://127.0.0.1:{}", 7776 + k),
            format!("--ca={}", self.pki_dir().join("ca.crt").display()),
            format!("--token={}", self.admin_token()),
        ]
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The controllers' data directory (CA, certificates, admin token).
    pub fn pki_dir(&self) -> PathBuf {
        self.state_dir.join("pki")
    }

    /// Node k's identity directory (ca.crt, node.crt, node.key).
    pub fn node_pki_dir(&self, k: u32) -> PathBuf {
        self.state_dir.join(format!("node-{k}")).join("pki")
    }

    /// The admin token `shoal dev up` made.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.pki_dir().join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_string()
    }

    /// Runs a program from the workspace's binaries (`shoal-agent`, `shoal-controller`).
    pub fn binary(&self, program: &str, args: &[&str]) -> Run {
        Run::from(
            self.command(program)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("run {program}: {e}")),
        )
    }

    /// `curl` against the API of controller 1 (HTTPS, verified with the cluster CA):
    /// `(HTTP status, body)`. `token` goes into `Authorization: Bearer`; `extra` are more
    /// curl arguments (`-X POST`, `--data`, `-m 2`).
    pub fn curl(&self, path: &str, token: Option<&str>, extra: &[&str]) -> (u16, String) {
        let ca = self.pki_dir().join("ca.crt");
        let url = format!("https://127.0.0.1:7777{path}");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
            .arg(&ca)
            .args(extra);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let out = cmd.arg(&url).output().expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        let code = code.trim().parse().unwrap_or(0);
        if code == 0 {
            // No answer: say why (curl's own message) instead of an empty body.
            return (0, String::from_utf8_lossy(&out.stderr).to_string());
        }
        (code, body.to_string())
    }

    /// The etcd client URLs (`shoal dev`'s layout: one member on 127.0.0.1:23790, or three
    /// on 198.18.0.241-243:2379), read from the cluster.json `dev up` saved.
    pub fn etcd_endpoints(&self) -> String {
        let layout: Value = serde_json::from_str(
            &std::fs::read_to_string(self.state_dir.join("cluster.json")).expect("cluster.json"),
        )
        .expect("cluster.json is JSON");
        match layout["etcd_members"].as_u64() {
            Some(3) => {
                "https://198.18.0.241:2379,https://198.18.0.242:2379,https://198.18.0.243:2379"
                    .into()
            }
            _ => "https://127.0.0.1:23790".into(),
        }
    }

    /// `etcdctl` against the cluster's etcd endpoints, verified with the cluster CA, with
    /// the given client certificate and key (or none).
    pub fn etcdctl(&self, identity: Option<(&Path, &Path)>, args: &[&str]) -> Run {
        let endpoints = self.etcd_endpoints();
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg("--dial-timeout=3s")
            .arg("--command-timeout=5s")
            .arg(format!(
                "--cacert={}",
                self.pki_dir().join("ca.crt").display()
            ));
        if let Some((cert, key)) = identity {
            cmd.arg(format!("--cert={}", cert.display()))
                .arg(format!("--key={}", key.display()));
        }
        Run::from(cmd.args(args).output().expect("run etcdctl"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for ns in &self.extra_netns {
            // Processes we started in it die with it (they are killed by pid files below).
            let _ = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                });
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["-n", UNDERLAY_NETNS, "link", "del", "shoal-e2e-out"])
            .output();
        let run = self.raw(&["dev", "down"]);
        if run.code != 0 {
            eprintln!("shoal dev down failed: {}{}", run.stdout, run.stderr);
        }
        let _ = std::fs::remove_file(&self.context);
    }
}

/// Node k's underlay address (198.18.0.k), where published ports answer.
pub fn node_ip(k: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, k as u8)
}

/// What one HTTP/1.0 GET from this namespace got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Get {
    /// Status code and body (trimmed).
    Ok(u16, String),
    /// The connection was refused (RST): nothing listens.
    Refused,
    /// Anything else (timeout, reset mid-way), with the error.
    Failed(String),
}

/// An HTTP/1.0 GET of `/` on ip:port (connect within 2 s, answer within 5 s).
pub fn http_get(ip: Ipv4Addr, port: u16) -> Get {
    let addr = SocketAddr::from((ip, port));
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Get::Refused,
        Err(e) => return Get::Failed(e.to_string()),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    if let Err(e) = s.write_all(format!("GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes()) {
        return Get::Failed(e.to_string());
    }
    let mut buf = Vec::new();
    if let Err(e) = s.read_to_end(&mut buf) {
        return Get::Failed(e.to_string());
    }
    let text = String::from_utf8_lossy(&buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Get::Failed(format!("no header end in {text:?}"));
    };
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Get::Ok(code, body.trim().to_string())
}

fn rand_suffix() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}", t.as_nanos())
}

/// The image every end-to-end test runs: busybox, pushed to the local registry by the
/// cluster's set-up.
pub const BUSYBOX: &str = "localhost:5000/busybox:latest";

/// Announces a test's next step on stderr (one cluster runs its scenarios in sequence).
pub fn step(name: &str) {
    eprintln!("\n=== {name}");
}

/// The number of a node name: `node-2` → 2.
pub fn node_k(node: &str) -> u32 {
    node.trim_start_matches("node-").parse().expect("node-k")
}
