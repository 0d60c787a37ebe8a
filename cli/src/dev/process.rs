//! Background processes with pid files and log files, started so they outlive `shoal dev up`
//! (own process group) and stopped with SIGTERM, then SIGKILL.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// A daemon the cluster runs: its name, pid file and log.
#[derive(Debug, Clone)]
pub struct Daemon {
    /// Short name (`etcd`, `controller`, `agent-1`).
    pub name: String,
    /// The pid file.
    pub pid_file: PathBuf,
    /// The log file (stdout and stderr).
    pub log_file: PathBuf,
}

impl Daemon {
    /// A daemon whose files live in `dir`.
    pub fn new(dir: &Path, name: &str) -> Daemon {
        Daemon {
            name: name.to_string(),
            pid_file: dir.join("run").join(format!("{name}.pid")),
            log_file: dir.join("logs").join(format!("{name}.log")),
        }
    }

    /// Starts `program args` in the background unless it already runs.
    pub fn start(
        &self,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
    ) -> anyhow::Result<u32> {
        if let Some(pid) = self.running_pid() {
            return Ok(pid);
        }
        for p in [&self.pid_file, &self.log_file] {
            std::fs::create_dir_all(p.parent().expect("files have parents"))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, program.display()))?;
        let pid = child.id();
        std::fs::write(&self.pid_file, pid.to_string())?;
        // The child is reaped by init once we exit; we never wait on it here.
        std::mem::forget(child);
        Ok(pid)
    }

    /// The pid, if the process runs.
    pub fn running_pid(&self) -> Option<u32> {
        let pid: i32 = std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // Signal 0 probes; a zombie of ours would still answer, so check /proc state too.
        kill(Pid::from_raw(pid), None).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit(')').next()?.split_whitespace().next()?;
        (state != "Z").then_some(pid as u32)
    }

    /// Stops the process group: SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&self, grace: Duration) -> anyhow::Result<()> {
        if let Some(pid) = self.running_pid() {
            let pgid = Pid::from_raw(pid as i32);
            let _ = killpg(pgid, Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + grace;
            while self.running_pid().is_some() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if self.running_pid().is_some() {
                let _ = killpg(pgid, Signal::SIGKILL);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let _ = std::fs::remove_file(&self.pid_file);
        Ok(())
    }

    /// Kills the process group at once (a host dying).
    pub fn kill_now(&self) {
        if let Some(pid) = self.running_pid() {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }

    /// The last lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_file).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Runs a command to completion, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
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
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command, ignoring failure (cleanup of things that may not exist).
pub fn run_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
