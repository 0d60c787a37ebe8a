//! Container hardening against a real containerd + runc: no_new_privs and the default
//! seccomp profile (and the `unconfined` opt-out), capabilities, users, a read-only root
//! filesystem, memory (OOM kill reported), pids limits, and log rotation read back through
//! the agent's logs endpoint.
//!
//! Same environment as `runtime_containerd.rs` (`containerd_support`): root, our OWN
//! containerd and registry under `/tmp/shoal-test-<id>/`, a containerd namespace and cgroup
//! parent of the same id, all removed by the guard also when an assertion fails.

mod containerd_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_support::*;

use shoal_node_agent::runtime::logs::{self, LogRotation};
use shoal_node_agent::runtime::{
    ContainerRuntime, ContainerSpec, ContainerState, ContainerdRuntime, Limits,
};

fn spec(id: &str, image: &str, command: &[&str]) -> ContainerSpec {
    ContainerSpec {
        id: id.to_string(),
        image: image.to_string(),
        hostname: format!("{id}.1"),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

async fn sh(rt: &ContainerdRuntime, id: &str, script: &str) -> (i32, String) {
    let out = rt
        .exec(
            id,
            &["sh".into(), "-c".into(), script.into()],
            Duration::from_secs(20),
            1 << 20,
        )
        .await
        .unwrap_or_else(|e| panic!("exec {script:?} in {id}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.exit_code, text)
}

async fn run(rt: &ContainerdRuntime, s: ContainerSpec) {
    let id = s.id.clone();
    rt.create(&s)
        .await
        .unwrap_or_else(|e| panic!("create {id}: {e}"));
    rt.start(&id)
        .await
        .unwrap_or_else(|e| panic!("start {id}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_should_run_with_no_new_privs_seccomp_and_the_task_settings() {
    shoal_testkit::require!(root, tools = BINARIES, also = busybox_missing());
    let env = TestEnv::start();
    let rt = ContainerdRuntime::connect(env.config()).await.unwrap();
    let busybox = env.image("busybox:latest");

    // Default: NoNewPrivs, seccomp filter mode, unshare refused.
    run(&rt, spec("confined", &busybox, &["sleep", "1000"])).await;
    let (_, status) = sh(
        &rt,
        "confined",
        "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status",
    )
    .await;
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    let (code, out) = sh(&rt, "confined", "unshare -r true").await;
    assert_ne!(
        code, 0,
        "unshare -r must fail under the default profile: {out}"
    );
    assert!(out.contains("Operation not permitted"), "{out}");
    // Namespaces through clone are refused too; fork still works.
    let (code, out) = sh(&rt, "confined", "unshare -m true; echo m=$?; (echo forked)").await;
    assert!(out.contains("forked"), "{out}");
    assert!(!out.contains("m=0"), "{out}");
    assert_eq!(code, 0);
    // Time and mounts are not the container's.
    let (code, out) = sh(&rt, "confined", "mount -t tmpfs none /mnt").await;
    assert_ne!(code, 0, "{out}");

    // Unconfined: no filter.
    let mut s = spec("unconfined", &busybox, &["sleep", "1000"]);
    s.seccomp_unconfined = true;
    run(&rt, s).await;
    let (_, status) = sh(
        &rt,
        "unconfined",
        "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status",
    )
    .await;
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t0"), "{status}");
    let (code, out) = sh(&rt, "unconfined", "unshare -r id -u").await;
    eprintln!("unconfined `unshare -r id -u`: exit {code}: {out}");
    assert_eq!(
        (code, out.trim()),
        (0, "0"),
        "user namespaces work unconfined"
    );

    // Read-only root: writes to / fail, the bind-mounted files stay readable (and writable,
    // as in Docker).
    let mut s = spec("readonly", &busybox, &["sleep", "1000"]);
    s.read_only_root = true;
    s.working_dir = "/tmp".into();
    run(&rt, s).await;
    let (code, out) = sh(&rt, "readonly", "touch /x").await;
    assert_ne!(code, 0);
    assert!(out.contains("Read-only file system"), "{out}");
    let (code, out) = sh(&rt, "readonly", "cat /etc/hosts && pwd").await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("readonly.1") && out.ends_with("/tmp\n"),
        "{out}"
    );

    // Users: numeric, and a name from the image's /etc/passwd.
    let mut s = spec("user", &busybox, &["sleep", "1000"]);
    s.user = "1000:1000".into();
    run(&rt, s).await;
    let (_, out) = sh(&rt, "user", "id").await;
    assert!(out.starts_with("uid=1000 gid=1000"), "{out}");
    let mut s = spec("nobody", &busybox, &["sleep", "1000"]);
    s.user = "nobody".into();
    run(&rt, s).await;
    let (_, out) = sh(&rt, "nobody", "id -u; id -g").await;
    assert_eq!(out, "65534\n65534\n");
    let mut s = spec("ghost", &busybox, &["sleep", "1000"]);
    s.user = "ghost".into();
    let e = rt.create(&s).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("\"ghost\" is not in the image's /etc/passwd"),
        "{e}"
    );
    assert!(!rt.list().await.unwrap().iter().any(|c| c.id == "ghost"));

    // Capabilities: drop ALL but add back one.
    let mut s = spec("caps", &busybox, &["sleep", "1000"]);
    s.cap_drop = vec!["ALL".into()];
    s.cap_add = vec!["net_bind_service".into()];
    run(&rt, s).await;
    let (_, out) = sh(&rt, "caps", "grep CapEff /proc/self/status").await;
    assert!(
        out.contains("0000000000000400"),
        "only CAP_NET_BIND_SERVICE: {out}"
    );
    let (_, out) = sh(&rt, "confined", "grep CapEff /proc/self/status").await;
    assert!(
        out.contains("00000000a80425fb"),
        "Docker's default set: {out}"
    );

    // ALL: every capability the node has (CAP_SYS_ADMIN is bit 21).
    let mut s = spec("allcaps", &busybox, &["sleep", "1000"]);
    s.cap_add = vec!["ALL".into()];
    run(&rt, s).await;
    let (_, out) = sh(&rt, "allcaps", "grep CapEff /proc/self/status").await;
    let eff = u64::from_str_radix(out.trim().trim_start_matches("CapEff:").trim(), 16).unwrap();
    assert!(eff & (1 << 21) != 0, "{out}");
    // No ambient capabilities for the process (they would survive execve as non-root).
    let (_, out) = sh(&rt, "user", "grep -E 'Cap(Amb|Inh|Eff)' /proc/self/status").await;
    assert!(out.contains("CapAmb:\t0000000000000000"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "non-root: {out}");

    for id in [
        "confined",
        "unconfined",
        "readonly",
        "user",
        "nobody",
        "caps",
        "allcaps",
    ] {
        rt.delete(id).await.unwrap();
    }
    drop(rt);
    drop(env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_pids_limits_should_hold_and_oom_kills_be_reported() {
    shoal_testkit::require!(root, tools = BINARIES, also = busybox_missing());
    let env = TestEnv::start();
    let rt = ContainerdRuntime::connect(env.config()).await.unwrap();
    let busybox = env.image("busybox:latest");

    // 64 MiB held by `tail` (one "line" without a newline) in a 32 MiB container.
    let mut s = spec(
        "hog",
        &busybox,
        &["sh", "-c", "head -c 64m /dev/zero | tail -n 1 >/dev/null"],
    );
    s.limits = Limits {
        memory: Some(32 << 20),
        ..Default::default()
    };
    run(&rt, s).await;
    let code = tokio::time::timeout(Duration::from_secs(60), rt.wait("hog"))
        .await
        .expect("the hog ends")
        .unwrap();
    assert_eq!(code, 137, "killed by SIGKILL");
    let listed = rt.list().await.unwrap();
    let hog = listed.iter().find(|c| c.id == "hog").unwrap();
    assert_eq!(hog.status.state, ContainerState::Exited);
    assert!(hog.oom_killed, "{hog:?}");
    assert!(rt.oom_kills("hog") >= 1);
    // A container that exits non-zero on its own is not an OOM kill.
    let mut s = spec("plain", &busybox, &["sh", "-c", "exit 137"]);
    s.limits.memory = Some(32 << 20);
    run(&rt, s).await;
    assert_eq!(rt.wait("plain").await.unwrap(), 137);
    let listed = rt.list().await.unwrap();
    assert!(!listed.iter().find(|c| c.id == "plain").unwrap().oom_killed);

    // A fork bomb under a pids limit of 64: bounded, and the host still forks at once.
    let mut s = spec(
        "bomb",
        &busybox,
        &["sh", "-c", "f() { f | f & }; f; sleep 1000"],
    );
    s.limits.pids = Some(64);
    run(&rt, s).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pids = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/pids{}/bomb/pids.current",
        env.cgroup_parent
    ))
    .or_else(|_| {
        std::fs::read_to_string(format!(
            "/sys/fs/cgroup{}/bomb/pids.current",
            env.cgroup_parent
        ))
    })
    .expect("the bomb's pids cgroup");
    let pids: u32 = pids.trim().parse().unwrap();
    eprintln!("fork bomb holds {pids} pids");
    assert!(pids <= 64, "{pids}");
    let t0 = Instant::now();
    let ok = std::process::Command::new("true")
        .status()
        .unwrap()
        .success();
    assert!(
        ok && t0.elapsed() < Duration::from_secs(2),
        "{:?}",
        t0.elapsed()
    );
    rt.delete("bomb").await.unwrap();

    // Without a pids limit in the spec, the default one applies.
    run(&rt, spec("default-pids", &busybox, &["sleep", "1000"])).await;
    let (_, max) = sh(
        &rt,
        "default-pids",
        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max",
    )
    .await;
    eprintln!("default pids.max seen inside: {max:?}");
    let max = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/pids{}/default-pids/pids.max",
        env.cgroup_parent
    ))
    .unwrap_or_default();
    assert_eq!(max.trim(), "1024");

    for id in ["hog", "plain", "default-pids"] {
        rt.delete(id).await.unwrap();
    }
    drop(rt);
    drop(env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_should_rotate_and_be_read_across_files() {
    shoal_testkit::require!(root, tools = BINARIES, also = busybox_missing());
    let env = TestEnv::start();
    let mut cfg = env.config();
    cfg.log_rotation = LogRotation {
        max_size: 4096,
        max_files: 3,
    };
    let rt: Arc<ContainerdRuntime> = Arc::new(ContainerdRuntime::connect(cfg).await.unwrap());
    let busybox = env.image("busybox:latest");
    // ~100 bytes every 10 ms: a rotation every ~0.4 s, checked every second.
    let script = "i=0; while [ $i -lt 600 ]; do printf 'line %06d %090d\\n' $i 0; i=$((i+1)); sleep 0.01; done; sleep 1000";
    run(&rt, spec("chatty", &busybox, &["sh", "-c", script])).await;

    let server = shoal_node_agent::server::AgentServer::bind(
        &shoal_node_agent::server::ServerConfig {
            node: "n1".into(),
            listen: "127.0.0.1:0".into(),
        },
        Some(rt.clone() as Arc<dyn ContainerRuntime>),
        shoal_node_agent::server::Transport::Plain,
    )
    .await
    .unwrap();
    let endpoint = server.endpoint("127.0.0.1");
    let _server = server.spawn();
    let http = reqwest::Client::new();
    // A follower from the start sees every line, in order, across rotations.
    let follow = {
        let url = format!("http://{endpoint}/v1/tasks/chatty/logs?follow=true");
        let http = http.clone();
        tokio::spawn(async move {
            let mut resp = http.get(url).send().await.unwrap();
            let mut text = String::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                text.push_str(&String::from_utf8_lossy(&chunk));
                if text.contains("line 000599") {
                    break;
                }
            }
            text
        })
    };

    let log = rt.log_path("chatty");
    let t0 = Instant::now();
    // The last line may already have been rotated out of the current file (rotation runs
    // every second, after the writer went quiet): look in every file.
    while !logs::log_files(&log).iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .contains("line 000599")
    }) {
        assert!(t0.elapsed() < Duration::from_secs(60), "the writer stalled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let files = logs::log_files(&log);
    eprintln!("log files: {files:?}");
    assert_eq!(files.len(), 3, "current + 2 rotated: {files:?}");
    assert!(!logs::rotated(&log, 3).exists());
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len();
        // A check every second at ~10 KB/s: a file is rotated within ~1 s of the limit.
        assert!(len < 4096 + 30_000, "{} is {len} bytes", f.display());
    }

    let numbers = |text: &str| -> Vec<u32> {
        text.lines()
            .filter_map(|l| l.strip_prefix("line "))
            .filter_map(|l| l.split(' ').next()?.parse().ok())
            .collect()
    };
    // Read (no follow): the kept files oldest first: increasing, ending at the last line.
    let all = http
        .get(format!("http://{endpoint}/v1/tasks/chatty/logs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let n = numbers(&all);
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "contiguous: {n:?}");
    assert_eq!(n.last(), Some(&599));
    assert!(n.len() > 40, "{} lines kept", n.len());
    // --tail across files.
    let tail = http
        .get(format!("http://{endpoint}/v1/tasks/chatty/logs?tail=100"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The last 100 lines of what is kept (the writer has stopped: the files stay as they
    // are); a slow writer may leave fewer than 100 lines in the kept files.
    assert_eq!(numbers(&tail), n[n.len().saturating_sub(100)..]);
    assert_eq!(numbers(&tail).last(), Some(&599));
    let followed = tokio::time::timeout(Duration::from_secs(20), follow)
        .await
        .expect("the follower reaches the last line")
        .unwrap();
    let n = numbers(&followed);
    eprintln!("the follower saw {} of 600 lines", n.len());
    assert!(
        n.windows(2).all(|w| w[1] > w[0]),
        "in order, none twice: {n:?}"
    );
    let missing = 600 - n.len();
    assert!(missing <= 6, "the follower missed {missing} lines");

    rt.delete("chatty").await.unwrap();
    drop(rt);
    drop(env);
}
