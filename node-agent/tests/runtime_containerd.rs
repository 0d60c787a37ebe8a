//! The containerd runtime against a real containerd and a real registry.
//!
//! Needs root and `containerd`, `containerd-shim-runc-v2`, `runc`, `docker-registry`,
//! `skopeo` and `/bin/busybox` (busybox-static); without them it says why on stderr and
//! passes. It starts its OWN containerd (config, root, state and socket under
//! `/tmp/shoal-test-<id>/`, CRI disabled, a containerd namespace `shoal-test-<id>`) and its
//! own registry on a free loopback port (seeded by `scripts/image/registry.sh`), and a guard
//! removes all of it — containers (through runc if containerd is gone), shims, mounts,
//! cgroups, the registry and the directory — also when an assertion fails.
//! Network: only loopback; containers get fresh, empty network namespaces.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_node_agent::runtime::{
    start_checked, ContainerRuntime, ContainerSpec, ContainerState, ContainerdConfig,
    ContainerdRuntime, RuntimeError, LABEL_MANAGED,
};

const BINARIES: [&str; 5] = [
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
    "docker-registry",
    "skopeo",
];

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
    })
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective uid.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Why this test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !is_root() {
        return Some("not root".to_string());
    }
    for b in BINARIES {
        if which(b).is_none() {
            return Some(format!(
                "{b} not found (apt-get install containerd runc docker-registry skopeo)"
            ));
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        return Some("/bin/busybox not found (apt-get install busybox-static)".to_string());
    }
    None
}

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/image")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Everything the test started; dropping it removes all of it.
struct TestEnv {
    dir: PathBuf,
    namespace: String,
    cgroup_parent: String,
    socket: PathBuf,
    registry_addr: String,
    netns: Option<String>,
    containerd: Option<Child>,
}

impl TestEnv {
    fn start() -> TestEnv {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let dir = PathBuf::from(format!("/tmp/shoal-test-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut env = TestEnv {
            socket: dir.join("containerd.sock"),
            namespace: format!("shoal-test-{id}"),
            cgroup_parent: format!("/shoal-test-{id}"),
            registry_addr: format!("127.0.0.1:{}", free_port()),
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

    fn registry(&self, cmd: &str) {
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

    fn port(&self) -> &str {
        self.registry_addr.rsplit_once(':').unwrap().1
    }

    fn image(&self, name: &str) -> String {
        format!("localhost:{}/{name}", self.port())
    }

    fn config(&self) -> ContainerdConfig {
        let mut cfg = ContainerdConfig::new(&self.socket, self.dir.join("tasks"));
        cfg.namespace = self.namespace.clone();
        cfg.plain_http_registries = vec![format!("localhost:{}", self.port())];
        cfg.cgroup_parent = self.cgroup_parent.clone();
        cfg
    }

    /// Pids whose command line mentions our directory or namespace (our containerd's shims).
    fn our_processes(&self) -> Vec<i32> {
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
        let runc_root = format!("/run/containerd/runc/{}", self.namespace);
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

fn spec(id: &str, image: &str, hostname: &str, command: &[&str]) -> ContainerSpec {
    ContainerSpec {
        id: id.to_string(),
        image: image.to_string(),
        hostname: hostname.to_string(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_runtime_should_pull_run_exec_stop_and_report_errors() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED containerd_runtime test: {why}");
        return;
    }
    let mut env = TestEnv::start();
    let rt = std::sync::Arc::new(
        ContainerdRuntime::connect(env.config())
            .await
            .expect("connect to our containerd"),
    );
    eprintln!("containerd {}", rt.version().await.unwrap());
    let busybox = env.image("busybox:latest");

    // Pull.
    let t0 = Instant::now();
    let info = rt.ensure_image(&busybox).await.expect("pull busybox");
    eprintln!(
        "pulled {} ({}) in {:?}",
        info.name,
        info.digest,
        t0.elapsed()
    );
    assert_eq!(info.name, busybox);
    assert!(info.chain_id.starts_with("sha256:"));
    assert_eq!(info.config.cmd, ["sh"]);
    let again = rt.ensure_image(&busybox).await.unwrap();
    assert_eq!(again, info);

    // A command that prints and exits 3: exit code and log.
    rt.create(&spec(
        "hello",
        &busybox,
        "hello.1",
        &["sh", "-c", "echo hello; echo oops >&2; exit 3"],
    ))
    .await
    .unwrap();
    assert_eq!(
        rt.status("hello").await.unwrap().state,
        ContainerState::Created
    );
    let changed = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.changed().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    rt.start("hello").await.expect("start hello");
    eprintln!("started hello in {:?}", t0.elapsed());
    assert_eq!(rt.wait("hello").await.unwrap(), 3);
    tokio::time::timeout(Duration::from_secs(5), changed)
        .await
        .expect("changed() resolves on a task exit")
        .unwrap();
    let st = rt.status("hello").await.unwrap();
    assert_eq!((st.state, st.exit_code), (ContainerState::Exited, Some(3)));
    let log = std::fs::read_to_string(rt.log_path("hello")).unwrap();
    assert!(
        log.contains("hello\n") && log.contains("oops\n"),
        "log: {log:?}"
    );
    assert_eq!(
        rt.stop("hello", Duration::from_secs(1)).await.unwrap(),
        Some(3)
    );

    // A container that exits at once is reported as such.
    rt.create(&spec("quick", &busybox, "quick.1", &["sh", "-c", "exit 5"]))
        .await
        .unwrap();
    let e = start_checked(rt.as_ref(), "quick", Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        matches!(e, RuntimeError::ExitedAtOnce { exit_code: 5, .. }),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "container quick exited at once with exit code 5"
    );

    // An executable that does not exist fails to start, with runc's reason.
    rt.create(&spec("noexec", &busybox, "noexec.1", &["/nope"]))
        .await
        .unwrap();
    let e = rt.start("noexec").await.unwrap_err();
    assert!(matches!(e, RuntimeError::StartFailed { .. }), "{e}");
    eprintln!("as expected: {e}");

    // A long sleeper: hostname, files, exec.
    let mut s = spec("sleeper", &busybox, "api.1", &["sleep", "1000"]);
    s.addresses = vec!["10.0.0.5".parse().unwrap()];
    s.env.insert("GREETING".into(), "hi".into());
    rt.create(&s).await.unwrap();
    let pid = rt.start("sleeper").await.unwrap();
    assert!(pid > 0);
    assert_eq!(
        rt.start("sleeper").await.unwrap(),
        pid,
        "start is idempotent"
    );
    assert_eq!(
        rt.status("sleeper").await.unwrap().state,
        ContainerState::Running
    );
    let out = rt
        .exec("sleeper", &argv(&["hostname"]), Duration::from_secs(10))
        .await
        .expect("exec hostname");
    assert_eq!(out.exit_code, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "api.1\n");
    let out = rt
        .exec(
            "sleeper",
            &argv(&[
                "sh",
                "-c",
                "echo out $GREETING $HOSTNAME; echo err >&2; exit 4",
            ]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 4);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out hi api.1\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let out = rt
        .exec(
            "sleeper",
            &argv(&["cat", "/etc/resolv.conf", "/etc/hosts"]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let files = String::from_utf8_lossy(&out.stdout);
    assert!(files.contains("nameserver 127.0.0.11\n"), "{files}");
    assert!(files.contains("10.0.0.5\tapi.1\n"), "{files}");
    // A fresh network namespace: only lo.
    let out = rt
        .exec(
            "sleeper",
            &argv(&["ls", "/sys/class/net"]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "lo");
    // An exec that outlives its timeout is killed.
    let e = rt
        .exec(
            "sleeper",
            &argv(&["sleep", "30"]),
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, RuntimeError::Timeout { .. }), "{e}");

    // Joining a given network namespace (as the agent does with the task's netns).
    let ns = env.namespace.clone();
    let ok = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip netns add {ns}");
    env.netns = Some(ns.clone());
    let ns_path = PathBuf::from(format!("/var/run/netns/{ns}"));
    let mut s = spec("joined", &busybox, "joined.1", &["sleep", "1000"]);
    s.netns = Some(ns_path.clone());
    rt.create(&s).await.unwrap();
    rt.start("joined").await.unwrap();
    let out = rt
        .exec(
            "joined",
            &argv(&["readlink", "/proc/self/ns/net"]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(&ns_path).unwrap().ino();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("net:[{inode}]")
    );
    rt.delete("joined").await.unwrap();

    // list: ours, with states.
    let list = rt.list().await.unwrap();
    let ids: Vec<&str> = list.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["hello", "noexec", "quick", "sleeper"]);
    assert!(list.iter().all(|c| c.labels[LABEL_MANAGED] == "true"));
    assert_eq!(list[3].status.state, ContainerState::Running);

    // Stop with grace: `sleep` as pid 1 ignores SIGTERM, so SIGKILL after the grace.
    let t0 = Instant::now();
    let code = rt.stop("sleeper", Duration::from_secs(1)).await.unwrap();
    let took = t0.elapsed();
    assert_eq!(code, Some(137));
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "{took:?}"
    );
    // A process that handles SIGTERM exits within the grace, with its own code.
    rt.create(&spec(
        "polite",
        &busybox,
        "polite.1",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ],
    ))
    .await
    .unwrap();
    rt.start("polite").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    assert_eq!(
        rt.stop("polite", Duration::from_secs(10)).await.unwrap(),
        Some(0)
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Restart after exit: same container, new process, log appended.
    rt.start("hello").await.unwrap();
    assert_eq!(rt.wait("hello").await.unwrap(), 3);
    let log = std::fs::read_to_string(rt.log_path("hello")).unwrap();
    assert_eq!(log.matches("hello\n").count(), 2, "{log:?}");

    // Delete: idempotent, takes the state directory along.
    for id in ["hello", "noexec", "quick", "sleeper", "polite"] {
        rt.delete(id).await.unwrap();
        rt.delete(id).await.unwrap();
        assert!(!rt.log_path(id).exists());
        assert!(matches!(
            rt.status(id).await,
            Err(RuntimeError::NotFound { .. })
        ));
    }
    assert!(rt.list().await.unwrap().is_empty());

    // Import of the OCI archive the seed step built.
    let imported = rt
        .import_oci_archive(
            &env.dir.join("registry/image/busybox.oci.tar"),
            "localhost:5000/imported:v1",
        )
        .await
        .expect("import");
    assert_eq!(imported.chain_id, info.chain_id);

    // A missing image.
    let nope = env.image("nope:1");
    let e = rt.ensure_image(&nope).await.unwrap_err();
    assert_eq!(e.to_string(), format!("image not found: {nope}"));
    assert!(!e.is_temporary());
    let e = rt
        .create(&spec("nope", &nope, "nope.1", &["true"]))
        .await
        .unwrap_err();
    assert!(matches!(e, RuntimeError::ImageNotFound { .. }), "{e}");

    // Registry down: present images still work, others fail clearly.
    env.registry("stop");
    rt.ensure_image(&busybox).await.expect("busybox is local");
    let other = env.image("other:1");
    let e = rt.ensure_image(&other).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "registry localhost:{} is not reachable: connection refused",
            env.port()
        )
    );
    assert!(e.is_temporary());

    drop(rt);
    drop(env);
}
