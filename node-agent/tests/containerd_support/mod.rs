//! A private containerd and registry for integration tests that run real containers (root
//! only): `TestEnv::start` runs its OWN containerd (config, root, state and socket under
//! `/tmp/shoal-test-<id>/`, CRI disabled, a containerd namespace `shoal-test-<id>`) and its own
//! registry on a free loopback port seeded by `scripts/image/registry.sh` with
//! `busybox:latest`; dropping it removes all of it — containers (through runc if containerd is
//! gone), shims, mounts, cgroups, the registry and the directory — also when a test fails.
//! Tests using it start with `shoal_testkit::require!(root, tools = BINARIES, also =
//! busybox_missing())`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_node_agent::runtime::ContainerdConfig;

pub const BINARIES: [&str; 5] = [
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
    "docker-registry",
    "skopeo",
];

/// Why `/bin/busybox` (which the seeded image is built from) cannot be used, if it cannot.
pub fn busybox_missing() -> Option<String> {
    (!Path::new("/bin/busybox").is_file())
        .then(|| "/bin/busybox (apt-get install busybox-static)".to_string())
}

pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/image")
}

/// Everything the test started; dropping it removes all of it.
pub struct TestEnv {
    pub dir: PathBuf,
    pub namespace: String,
    pub cgroup_parent: String,
    pub socket: PathBuf,
    pub registry_addr: String,
    pub netns: Option<String>,
    pub containerd: Option<Child>,
}

impl TestEnv {
    pub fn start() -> TestEnv {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let dir = PathBuf::from(format!("/tmp/shoal-test-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut env = TestEnv {
            socket: dir.join("containerd.sock"),
            namespace: format!("shoal-test-{id}"),
            cgroup_parent: format!("/shoal-test-{id}"),
            registry_addr: format!("127.0.0.1:{}", shoal_testkit::free_port()),
            dir,
            netns: None,
            containerd: None,
        };
        eprintln!("test env in {}", env.dir.display());
        let config = env.dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#,
                d = env.dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(env.dir.join("containerd.log")).unwrap();
        env.containerd = Some(
            Command::new("containerd")
                .arg("--config")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start containerd"),
        );
        let t0 = Instant::now();
        while !env.socket.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "containerd did not create its socket; see {}/containerd.log",
                env.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        env.registry("seed");
        env
    }

    pub fn registry(&self, cmd: &str) {
        let out = Command::new("bash")
            .arg(scripts_dir().join("registry.sh"))
            .arg(cmd)
            .arg(self.dir.join("registry"))
            .env("SHOAL_REGISTRY_ADDR", &self.registry_addr)
            .output()
            .expect("run registry.sh");
        eprint!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "registry.sh {cmd} failed");
    }

    pub fn port(&self) -> &str {
        self.registry_addr.rsplit_once(':').unwrap().1
    }

    pub fn image(&self, name: &str) -> String {
        format!("localhost:{}/{name}", self.port())
    }

    pub fn config(&self) -> ContainerdConfig {
        let mut cfg = ContainerdConfig::new(&self.socket, self.dir.join("tasks"));
        cfg.namespace = self.namespace.clone();
        cfg.plain_http_registries = vec![format!("localhost:{}", self.port())];
        cfg.cgroup_parent = self.cgroup_parent.clone();
        cfg.runc_root = Some(self.runc_root());
        cfg
    }

    /// runc's `--root` for our containers (their state is in `<it>/<namespace>/<id>`).
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    /// Pids whose command line mentions our directory or namespace (our containerd's shims).
    pub fn our_processes(&self) -> Vec<i32> {
        let me = std::process::id() as i32;
        let needles = [self.dir.display().to_string(), self.namespace.clone()];
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if needles.iter().any(|n| cmdline.contains(n.as_str())) {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        // Containers, through runc directly, in case containerd is already gone.
        let runc_root = self.runc_root().join(&self.namespace);
        let runc_root = runc_root.display().to_string();
        if Path::new(&runc_root).exists() {
            if let Ok(out) = Command::new("runc")
                .args(["--root", &runc_root, "list", "-q"])
                .output()
            {
                for id in String::from_utf8_lossy(&out.stdout).lines() {
                    let _ = Command::new("runc")
                        .args(["--root", &runc_root, "delete", "-f", id])
                        .status();
                }
            }
            let _ = std::fs::remove_dir_all(&runc_root);
        }
        // The network namespace.
        if let Some(ns) = self.netns.take() {
            let _ = Command::new("ip").args(["netns", "delete", &ns]).status();
        }
        // The registry.
        let _ = Command::new("bash")
            .arg(scripts_dir().join("registry.sh"))
            .arg("stop")
            .arg(self.dir.join("registry"))
            .env("SHOAL_REGISTRY_ADDR", &self.registry_addr)
            .stdout(Stdio::null())
            .status();
        // containerd, then its shims.
        if let Some(mut c) = self.containerd.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in self.our_processes() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        // Sockets of shims that were killed instead of exiting: containerd 1.6 puts them at
        // /run/containerd/s/<sha256(socket/namespace/id)>.
        let tasks = self
            .dir
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.namespace);
        for e in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
            use sha2::Digest;
            let key = self
                .socket
                .join(&self.namespace)
                .join(e.file_name())
                .display()
                .to_string();
            let hash = hex::encode(sha2::Sha256::digest(key.as_bytes()));
            let _ = std::fs::remove_file(Path::new("/run/containerd/s").join(hash));
        }
        // Mounts under our directory, deepest first.
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&self.dir.display().to_string()))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        // cgroups (runc removes the containers' own; the parents are ours).
        for e in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = e.path().join(self.cgroup_parent.trim_start_matches('/'));
            if p.is_dir() {
                if let Ok(children) = std::fs::read_dir(&p) {
                    for c in children.flatten() {
                        if c.path().is_dir() {
                            let _ = std::fs::remove_dir(c.path());
                        }
                    }
                }
                let _ = std::fs::remove_dir(&p);
            }
        }
        let p = Path::new("/sys/fs/cgroup").join(self.cgroup_parent.trim_start_matches('/'));
        let _ = std::fs::remove_dir(p);
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {}: {e}", self.dir.display());
        }
    }
}
