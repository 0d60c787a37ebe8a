//! The embedded DNS at 127.0.0.11:53 inside real task namespaces, asked with `dig` run in the
//! namespace (root only, and `dig` from dnsutils; skipped with a message otherwise). The
//! namespaces are the test's own and are deleted by a guard.

#[path = "lb_support/mod.rs"]
mod support;

use shoal_api_types::endpoints::{EndpointTask, EndpointsSpec};
use shoal_node_agent::dns::{DnsHost, DnsServerConfig, DnsServers, RecordStore};
use support::Namespaces;

fn endpoints(network: &str, service: &str, vip: &str, tasks: &[(&str, &str)]) -> EndpointsSpec {
    EndpointsSpec::vip(network, service, vip)
        .tasks(tasks.iter().map(|(n, ip)| EndpointTask::new(n, ip)))
}

/// `dig` inside `ns`; returns (status, sorted answer lines of `+short`).
async fn dig(ns: &str, args: &[&str]) -> (String, Vec<String>) {
    let mut cmd = vec![
        "ip",
        "netns",
        "exec",
        ns,
        "dig",
        "+time=2",
        "+tries=1",
        "+noall",
        "+comments",
        "+answer",
        "@127.0.0.11",
    ];
    cmd.extend_from_slice(args);
    let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
        support::try_sh(&refs)
    })
    .await
    .unwrap();
    let text = out.1;
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or("NO ANSWER")
        .to_owned();
    let mut answers: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().last().unwrap_or_default().to_owned())
        .collect();
    answers.sort();
    (status, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_inside_task_namespaces_scoped_to_their_networks() {
    let _one_at_a_time = SERIAL.lock().await;
    shoal_testkit::require!(root, tools = ["ip", "dig"]);
    let mut nss = Namespaces::new();
    let worker = nss.add("worker");
    let loner = nss.add("loner");

    let store = RecordStore::new();
    store.set_from_endpoints(
        "appnet",
        &[endpoints(
            "appnet",
            "api",
            "10.0.1.2",
            &[("api.1", "10.0.1.5"), ("api.2", "10.0.1.6")],
        )],
    );
    store.set_from_endpoints(
        "othernet",
        &[endpoints(
            "othernet",
            "db",
            "10.0.2.2",
            &[("db.1", "10.0.2.5")],
        )],
    );
    // No upstreams: names that are not ours are refused at once.
    let host = DnsHost::new(store.clone(), DnsServerConfig::default());
    host.ensure(
        "task-worker",
        &Namespaces::path(&worker),
        &["appnet".to_owned()],
    )
    .await
    .unwrap();
    host.ensure(
        "task-loner",
        &Namespaces::path(&loner),
        &["othernet".to_owned()],
    )
    .await
    .unwrap();
    // Idempotent.
    host.ensure(
        "task-worker",
        &Namespaces::path(&worker),
        &["appnet".to_owned()],
    )
    .await
    .unwrap();
    assert_eq!(host.keys().await, ["task-loner", "task-worker"]);

    assert_eq!(
        dig(&worker, &["api"]).await,
        ("NOERROR".into(), vec!["10.0.1.2".into()])
    );
    assert_eq!(
        dig(&worker, &["tasks.api"]).await,
        ("NOERROR".into(), vec!["10.0.1.5".into(), "10.0.1.6".into()])
    );
    assert_eq!(
        dig(&worker, &["+tcp", "tasks.api"]).await,
        ("NOERROR".into(), vec!["10.0.1.5".into(), "10.0.1.6".into()])
    );
    assert_eq!(
        dig(&worker, &["API.1"]).await,
        ("NOERROR".into(), vec!["10.0.1.5".into()])
    );
    assert_eq!(
        dig(&worker, &["api", "AAAA"]).await,
        ("NOERROR".into(), vec![])
    );
    assert_eq!(dig(&worker, &["nosuch"]).await, ("NXDOMAIN".into(), vec![]));
    assert_eq!(
        dig(&worker, &["example.com"]).await,
        ("REFUSED".into(), vec![])
    );
    assert_eq!(
        dig(&worker, &["-x", "10.0.1.6"]).await,
        ("NOERROR".into(), vec!["api.2.".into()])
    );

    // Scoping: a task on another network cannot resolve api, and the worker cannot see db.
    assert_eq!(dig(&loner, &["api"]).await, ("NXDOMAIN".into(), vec![]));
    assert_eq!(
        dig(&loner, &["db"]).await,
        ("NOERROR".into(), vec!["10.0.2.2".into()])
    );
    assert_eq!(dig(&worker, &["db"]).await, ("NXDOMAIN".into(), vec![]));

    // An endpoints change reaches the running server at once.
    store.set_from_endpoints(
        "appnet",
        &[endpoints(
            "appnet",
            "api",
            "10.0.1.2",
            &[("api.2", "10.0.1.6"), ("api.3", "10.0.1.7")],
        )],
    );
    assert_eq!(
        dig(&worker, &["tasks.api"]).await,
        ("NOERROR".into(), vec!["10.0.1.6".into(), "10.0.1.7".into()])
    );

    // Stopping closes the sockets in the namespace.
    host.stop("task-worker").await;
    assert_eq!(host.keys().await, ["task-loner"]);
    let (status, _) = dig(&worker, &["api"]).await;
    assert_ne!(status, "NOERROR");
    host.stop("task-loner").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_forwards_from_the_agents_namespace_not_the_tasks() {
    let _one_at_a_time = SERIAL.lock().await;
    shoal_testkit::require!(root, tools = ["ip", "dig"]);
    let mut nss = Namespaces::new();
    let task = nss.add("fwd");
    // The upstream listens on the agent's (this test's) loopback, which the task namespace
    // cannot reach: an answer proves the forward left from the agent's namespace.
    let upstream = support::fake_upstream().await;
    let store = RecordStore::new();
    store.set_from_endpoints("appnet", &[endpoints("appnet", "api", "10.0.1.2", &[])]);
    let config = DnsServerConfig {
        upstreams: vec![upstream],
        ..Default::default()
    };
    let host = DnsHost::new(store, config);
    host.ensure("t", &Namespaces::path(&task), &["appnet".to_owned()])
        .await
        .unwrap();
    assert_eq!(
        dig(&task, &["example.com"]).await,
        ("NOERROR".into(), vec!["192.0.2.7".into()])
    );
    assert_eq!(
        dig(&task, &["+tcp", "example.com"]).await,
        ("NOERROR".into(), vec!["192.0.2.7".into()])
    );
    // Ours never go upstream.
    assert_eq!(
        dig(&task, &["tasks.nosuch"]).await,
        ("NXDOMAIN".into(), vec![])
    );
    assert_eq!(
        dig(&task, &["api", "AAAA"]).await,
        ("NOERROR".into(), vec![])
    );
    host.stop("t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_fast_path_answers_from_every_reader_of_the_socket() {
    let _one_at_a_time = SERIAL.lock().await;
    shoal_testkit::require!(root, tools = ["ip", "dig", "ss"]);
    let mut nss = Namespaces::new();
    let task = nss.add("fast");
    let store = RecordStore::new();
    store.set_from_endpoints(
        "appnet",
        &[endpoints(
            "appnet",
            "api",
            "10.0.1.2",
            &[("api.1", "10.0.1.5"), ("api.2", "10.0.1.6")],
        )],
    );
    let config = DnsServerConfig {
        udp_workers: 2,
        ..Default::default()
    };
    let host = DnsHost::new(store.clone(), config);
    host.ensure("t", &Namespaces::path(&task), &["appnet".to_owned()])
        .await
        .unwrap();
    // One UDP socket at 127.0.0.11:53 (no SO_REUSEPORT group), read by two threads.
    let (_, ss, _) = support::try_sh(&["ip", "netns", "exec", &task, "ss", "-uanH"]);
    let udp = ss.lines().filter(|l| l.contains("127.0.0.11:53")).count();
    assert_eq!(udp, 1, "{ss}");
    assert_eq!(reader_threads(), 2);
    // Without EDNS and with EDNS but no options (the fast path's questions), from many source
    // ports, and with a cookie (the general path): the same answers.
    for round in 0..8 {
        for opts in [&["+noedns"][..], &["+nocookie"][..], &[][..]] {
            let mut args = opts.to_vec();
            args.push(if round % 2 == 0 {
                "TASKS.Api"
            } else {
                "tasks.api."
            });
            assert_eq!(
                dig(&task, &args).await,
                ("NOERROR".into(), vec!["10.0.1.5".into(), "10.0.1.6".into()]),
                "{args:?}"
            );
            let mut args = opts.to_vec();
            args.push("Api");
            assert_eq!(
                dig(&task, &args).await,
                ("NOERROR".into(), vec!["10.0.1.2".into()]),
                "{args:?}"
            );
        }
    }
    // The general path still decides everything else on the same sockets.
    assert_eq!(
        dig(&task, &["+noedns", "nosuch"]).await,
        ("NXDOMAIN".into(), vec![])
    );
    assert_eq!(
        dig(&task, &["+noedns", "api", "AAAA"]).await,
        ("NOERROR".into(), vec![])
    );
    // A table swap is seen by the fast path at once.
    store.set_from_endpoints(
        "appnet",
        &[endpoints(
            "appnet",
            "api",
            "10.0.1.9",
            &[("api.3", "10.0.1.7")],
        )],
    );
    assert_eq!(
        dig(&task, &["+noedns", "api"]).await,
        ("NOERROR".into(), vec!["10.0.1.9".into()])
    );
    assert_eq!(
        dig(&task, &["+noedns", "api.1"]).await,
        ("NXDOMAIN".into(), vec![])
    );
    host.stop("t").await;
    let (_, ss, _) = support::try_sh(&["ip", "netns", "exec", &task, "ss", "-uanH"]);
    assert!(!ss.contains("127.0.0.11:53"), "{ss}");
    assert_eq!(reader_threads(), 0, "stopping the server ends its readers");
}

/// Held by each test of this file: they run one at a time, so this process's DNS receive
/// threads are the running test's.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// This process's DNS receive threads (named `shoal-dns-udp`).
fn reader_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("list this process's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == "shoal-dns-udp")
        .count()
}
