//! The containerd runtime against a real containerd and a real registry.
//!
//! Needs root and `containerd`, `containerd-shim-runc-v2`, `runc`, `docker-registry`,
//! `skopeo` and `/bin/busybox` (busybox-static); without them it says why on stderr and
//! passes, or fails when `SHOAL_TESTS_REQUIRED=1` (`shoal_testkit::require!`). It starts
//! its OWN containerd (config, root, state and socket under `/tmp/shoal-test-<id>/`, CRI
//! disabled, a containerd namespace `shoal-test-<id>`) and its own registry on a free
//! loopback port (seeded by `scripts/image/registry.sh`), and a guard removes all of it —
//! containers (through runc if containerd is gone), shims, mounts, cgroups, the registry and
//! the directory — also when an assertion fails.
//! Network: only loopback; containers get fresh, empty network namespaces.

mod containerd_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use containerd_support::*;

use shoal_node_agent::runtime::{
    start_checked, ContainerRuntime, ContainerSpec, ContainerState, ContainerdRuntime,
    RuntimeError, LABEL_MANAGED,
};

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
    shoal_testkit::require!(root, tools = BINARIES, also = busybox_missing());
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

    // A registry that accepts connections and never answers: the pull is abandoned at the
    // deadline, with a reason that says so.
    let stall = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stall_port = stall.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let conns: Vec<_> = stall.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(10));
        drop(conns);
    });
    let mut cfg = env.config();
    cfg.plain_http_registries
        .push(format!("127.0.0.1:{stall_port}"));
    cfg.pull_timeout = Duration::from_secs(1);
    let slow_rt = ContainerdRuntime::connect(cfg).await.unwrap();
    let t0 = Instant::now();
    let e = slow_rt
        .ensure_image(&format!("127.0.0.1:{stall_port}/stalled:1"))
        .await
        .unwrap_err();
    assert!(matches!(e, RuntimeError::PullTimeout { .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    eprintln!("as expected: {e}");
    drop(held);

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
    // The shim copies stdout and stderr into the log on its own schedule: the exit can be
    // seen before the last line lands, so wait (bounded) for both.
    let mut log = String::new();
    for _ in 0..50 {
        log = std::fs::read_to_string(rt.log_path("hello")).unwrap_or_default();
        if log.contains("hello\n") && log.contains("oops\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    // A lookup of a few containers says what the listing says of them: running, exited
    // with its code, and nothing for an unknown id.
    let listed = rt.list().await.unwrap();
    let some = rt.list_some(&["sleeper", "hello", "nope"]).await.unwrap();
    let expected: Vec<_> = listed
        .iter()
        .filter(|c| c.id == "sleeper" || c.id == "hello")
        .cloned()
        .collect();
    assert_eq!(some, expected);
    assert_eq!(some.len(), 2);
    assert_eq!(some[0].status.state, ContainerState::Exited);
    assert_eq!(some[0].status.exit_code, Some(3));
    assert_eq!(some[1].status.state, ContainerState::Running);
    // runc keeps its state below the configured root, not in its shared default.
    let state = env.runc_root().join(&env.namespace).join("sleeper");
    assert!(
        state.join("state.json").exists(),
        "runc state in {}",
        state.display()
    );
    assert!(!Path::new("/run/containerd/runc")
        .join(&env.namespace)
        .join("sleeper")
        .exists());
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
        .exec(
            "sleeper",
            &argv(&["hostname"]),
            Duration::from_secs(10),
            1 << 20,
        )
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
            1 << 20,
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
            1 << 20,
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
            1 << 20,
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
            1 << 20,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, RuntimeError::Timeout { .. }), "{e}");
    // Output over the cap is cut with a marker saying how much there was; the rest is
    // drained, not held, and the command is not held up either.
    let started = std::time::Instant::now();
    let out = rt
        .exec(
            "sleeper",
            &argv(&["sh", "-c", "yes | head -c 20000000; echo done >&2"]),
            Duration::from_secs(30),
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0);
    assert!(out.truncated);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.len(),
        (1 << 20) + "[output truncated: 20000000 bytes, 1048576 kept]\n".len()
    );
    assert!(
        text.ends_with("y\ny\n[output truncated: 20000000 bytes, 1048576 kept]\n"),
        "{}",
        &text[text.len() - 100..]
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "done\n");
    eprintln!("20 MB exec took {:?}", started.elapsed());

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
            1 << 20,
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
    let mut log = String::new();
    for _ in 0..50 {
        log = std::fs::read_to_string(rt.log_path("hello")).unwrap_or_default();
        if log.matches("hello\n").count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
