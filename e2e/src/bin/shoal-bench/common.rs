//! Shared pieces of the benchmark tool: result rows, percentiles, and guards that stop what
//! the tool started (processes, namespaces, directories) when dropped — also on an error or
//! Ctrl-C, since `main` drops the running benchmark future then.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Set on Ctrl-C: blocking loops (the local-cluster figures) stop at their next poll, so
/// their guards run before the process exits.
pub static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Fails once Ctrl-C was pressed.
pub fn check_stop() -> Result<()> {
    if STOP.load(std::sync::atomic::Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// One line of the results table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// Figure number and name, e.g. `2 scheduling 100 nodes x 2000 tasks`.
    pub figure: String,
    /// Shoal's value.
    pub shoal: String,
    /// The baseline's value.
    pub baseline: String,
    /// Shoal / baseline as the target states it.
    pub ratio: String,
    /// The target.
    pub target: String,
    /// yes / no / `-` (no target for this line) / skipped.
    pub met: String,
    /// What dominates the cost, or why it was skipped.
    pub note: String,
}

impl Row {
    /// A row for a figure that could not run here.
    pub fn skipped(figure: &str, target: &str, why: impl Into<String>) -> Row {
        Row {
            figure: figure.into(),
            shoal: "skipped".into(),
            baseline: "-".into(),
            ratio: "-".into(),
            target: target.into(),
            met: "skipped".into(),
            note: why.into(),
        }
    }
}

/// `yes` or `no`.
pub fn met(ok: bool) -> String {
    if ok { "yes" } else { "no" }.into()
}

/// The p-th percentile (0..=100) of `v` (sorted in place); 0 when empty.
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let idx = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[idx.min(v.len() - 1)]
}

/// Median, minimum and maximum of `v` (sorted in place); zeros when empty.
pub fn spread(v: &mut [f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

/// The median and range of the per-round ratios `num[i] / den[i]` (rounds measured back to
/// back, so that drift of the machine between rounds cancels in each ratio).
pub fn paired_ratios(num: &[f64], den: &[f64]) -> (f64, f64, f64) {
    let mut r: Vec<f64> = num
        .iter()
        .zip(den)
        .map(|(n, d)| n / d.max(f64::MIN_POSITIVE))
        .collect();
    spread(&mut r)
}

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A unique prefix for everything one run makes: `sb<pid hex>`.
pub fn run_id() -> String {
    format!("sb{:x}", std::process::id())
}

/// A child process killed (SIGTERM, then SIGKILL after 3 s) when dropped.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    child: Option<Child>,
}

impl Proc {
    /// Starts `cmd` with output to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        let out =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        Ok(Proc {
            name: name.into(),
            child: Some(child),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(st) = c.try_wait()? {
                bail!("{} exited early ({st})", self.name);
            }
        }
        Ok(())
    }

    /// Peak resident set size (VmHWM) in MiB.
    pub fn peak_rss_mib(&self) -> Result<f64> {
        peak_rss_mib(self.pid())
    }

    /// SIGKILL now and reap.
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to 3 s, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..30 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// VmHWM of a process in MiB.
pub fn peak_rss_mib(pid: u32) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no VmHWM")?;
    Ok(kb / 1024.0)
}

/// CPU seconds (user + system) a process has used so far (0 when it is gone).
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 of /proc/PID/stat (counted from 1; `rest` starts at field 3), in
    // clock ticks of 1/100 s.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// A network namespace (and the processes in it) removed when dropped.
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates it with `lo` up.
    pub fn create(name: &str) -> Result<Netns> {
        sh("ip", &["netns", "add", name])?;
        let ns = Netns { name: name.into() };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// /run/netns/NAME.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs argv inside, failing on a non-zero exit; returns stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> Result<String> {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(argv);
        sh("ip", &args)
    }

    /// A command that runs argv inside.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name.as_str()]).args(argv);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_netns_pids(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// SIGKILLs every process in a namespace.
pub fn kill_netns_pids(name: &str) {
    if let Ok(o) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            if let Ok(p) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Runs a program, failing with its stderr on a non-zero exit; returns stdout.
pub fn sh(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("run {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a program is on PATH (or in /usr/sbin, /sbin).
pub use shoal_testkit::have;

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `<base>/<name>` (base: /dev/shm when there, else /tmp).
    pub fn new(name: &str) -> Result<TempDir> {
        let base = if Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        };
        let p = Path::new(base).join(name);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback TCP port, from below the kernel's ephemeral range
/// ([`shoal_testkit::free_port`]: the fleet's outgoing connections cannot take it).
pub fn free_port() -> Result<u16> {
    Ok(shoal_testkit::free_port())
}

/// Whether a benchmark's control plane runs with Shoal's security boundary (the default:
/// etcd over TLS with client certificates and users, the API over HTTPS with tokens) or
/// without it (the baseline that measures what security costs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// TLS, client certificates, etcd authentication.
    Secured,
    /// Plain text, no authentication (`--insecure`).
    Insecure,
}

impl Security {
    /// `secured` / `insecure`.
    pub fn word(self) -> &'static str {
        match self {
            Security::Secured => "secured",
            Security::Insecure => "insecure",
        }
    }
}

/// An etcd server on tmpfs on free loopback ports, stopped and removed when dropped.
/// Secured, it serves TLS only to certificates of a cluster CA made with
/// `shoal-controller init` in [`Etcd::pki`] (the controller turns on authentication).
pub struct Etcd {
    /// Its client URL.
    pub url: String,
    /// A plain-HTTP URL serving `/metrics` (etcd's `--listen-metrics-urls`).
    pub metrics_url: String,
    /// The controllers' data dir (CA, controller certificate) when secured.
    pub pki: Option<PathBuf>,
    _proc: Proc,
    _dir: TempDir,
}

fn run_bin(bin: &Path, program: &str, args: &[String]) -> Result<()> {
    let out = Command::new(bin.join(program))
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Etcd {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self._proc.pid()
    }

    /// How a client reaches it: as the controller (`shoal-controller`, role root) when
    /// secured.
    pub fn connect(&self) -> shoal_store::Connect {
        let mut c = shoal_store::Connect::to([self.url.as_str()]);
        if let Some(pki) = &self.pki {
            let read = |f: &str| std::fs::read_to_string(pki.join(f)).unwrap_or_default();
            c.ca_cert = Some(read("ca.crt"));
            c.client_cert = Some((read("controller.crt"), read("controller.key")));
        }
        c
    }

    /// Starts one and waits until it answers. `bin` holds `shoal-controller` (for the
    /// secured mode's certificates).
    pub async fn start(name: &str, bin: &Path, security: Security) -> Result<Etcd> {
        let dir = TempDir::new(name)?;
        let (cp, pp, mp) = (free_port()?, free_port()?, free_port()?);
        let scheme = match security {
            Security::Secured => "https",
            Security::Insecure => "http",
        };
        let url = format!("{scheme}://127.0.0.1:{cp}");
        let peer = format!("{scheme}://127.0.0.1:{pp}");
        let metrics_url = format!("http://127.0.0.1:{mp}");
        let mut cmd = Command::new("etcd");
        cmd.envs(shoal_store::ETCD_ENV.iter().copied());
        cmd.args(["--name", name, "--data-dir"])
            .arg(dir.0.join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--listen-metrics-urls", &metrics_url])
            .args(["--initial-cluster", &format!("{name}={peer}")])
            .args([
                "--log-level",
                "error",
                "--quota-backend-bytes",
                "8589934592",
            ]);
        let mut pki = None;
        if security == Security::Secured {
            let d = dir.0.join("pki");
            let data_dir = format!("--data-dir={}", d.display());
            run_bin(bin, "shoal-controller", &["init".into(), data_dir.clone()])?;
            run_bin(
                bin,
                "shoal-controller",
                &[
                    "cert".into(),
                    "etcd".into(),
                    data_dir,
                    "--name=etcd".into(),
                    "--san=127.0.0.1".into(),
                ],
            )?;
            let f = |p: &str| d.join(p).display().to_string();
            cmd.arg(format!("--cert-file={}", f("etcd/etcd.crt")))
                .arg(format!("--key-file={}", f("etcd/etcd.key")))
                .arg(format!("--trusted-ca-file={}", f("ca.crt")))
                .arg("--client-cert-auth")
                .arg(format!("--peer-cert-file={}", f("etcd/etcd.crt")))
                .arg(format!("--peer-key-file={}", f("etcd/etcd.key")))
                .arg(format!("--peer-trusted-ca-file={}", f("ca.crt")));
            pki = Some(d);
        }
        let proc = Proc::spawn("etcd", &mut cmd, &dir.0.join("etcd.log"))?;
        let etcd = Etcd {
            url,
            metrics_url,
            pki,
            _proc: proc,
            _dir: dir,
        };
        // Up to 30 s: a loaded machine (scripts/test's quick run) can take over 10.
        for _ in 0..300 {
            if let Ok(store) = shoal_store::Store::connect(&etcd.connect()).await {
                if store.revision().await.is_ok() {
                    return Ok(etcd);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(etcd._dir.0.join("etcd.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        bail!(
            "etcd did not answer at {} in 30 s; its log ends: {:?}",
            etcd.url,
            tail
        )
    }
}

/// Where the workspace binaries are: next to this one.
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("exe dir")?.to_path_buf();
    for b in ["shoal", "shoal-controller", "shoal-agent"] {
        if !dir.join(b).is_file() {
            bail!(
                "{} missing: cargo build --workspace --bins",
                dir.join(b).display()
            );
        }
    }
    Ok(dir)
}

/// Formats a number with thousands separators.
pub fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let (neg, digits) = s
        .strip_prefix('-')
        .map(|d| (true, d))
        .unwrap_or((false, &s));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if neg {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_ratios_should_take_the_median_of_each_rounds_ratio() {
        // Round by round 0.5, 1.0, 0.9: the median 0.9, although the ratio of the medians
        // (10 / 20) is 0.5.
        assert_eq!(
            paired_ratios(&[10.0, 30.0, 9.0], &[20.0, 30.0, 10.0]),
            (0.9, 0.5, 1.0)
        );
        assert_eq!(paired_ratios(&[], &[]), (0.0, 0.0, 0.0));
    }

    #[test]
    fn spread_should_give_the_median_and_the_range() {
        assert_eq!(spread(&mut [5.0, 1.0, 3.0]), (3.0, 1.0, 5.0));
        assert_eq!(spread(&mut [4.0, 1.0, 2.0, 10.0]), (3.0, 1.0, 10.0));
        assert_eq!(spread(&mut []), (0.0, 0.0, 0.0));
    }
}
