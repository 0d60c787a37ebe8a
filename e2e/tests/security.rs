//! The security boundary on a secured local cluster (`shoal dev up`'s default): API tokens
//! and roles, etcd's client-certificate authentication and per-node roles, join tokens
//! (CA pinning, rotation) and node removal. Needs root and the tools `.ci/run` installs.

use std::time::{Duration, Instant};

use shoal_e2e::{step, Cluster};
use shoal_testkit::require;

/// Polls `f` every 100 ms until it is true or `timeout` passes; returns how long it took.
fn within(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn service(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: localhost:5000/busybox:latest\n  \
         command: [sleep, \"100000\"]\n  replicas: {replicas}\n"
    )
}

fn denied(run: &shoal_e2e::Run) -> bool {
    run.code != 0
        && (run.stderr.contains("permission denied")
            || run.stderr.contains("user name not found")
            || run.stderr.contains("authentication"))
}

#[test]
fn security_boundary_end_to_end() {
    require!(
        root,
        tools = ["containerd", "runc", "etcd", "etcdctl", "curl", "nft"]
    );
    let c = Cluster::up(3);
    let admin = c.admin_token();

    step("API: no token → 401 with a Status body; a bad token → 401; admin works");
    let (code, body) = c.curl("/apis/shoal/v1/services", None, &[]);
    assert_eq!(code, 401, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("a Status body");
    assert_eq!(status["code"], 401, "{body}");
    let (code, _) = c.curl("/apis/shoal/v1/services", Some("shoal_notatoken"), &[]);
    assert_eq!(code, 401);
    let (code, body) = c.curl("/apis/shoal/v1/services", Some(&admin), &[]);
    assert_eq!(code, 200, "{body}");
    let (code, _) = c.curl("/healthz", None, &[]);
    assert_eq!(code, 200, "/healthz is public");

    step("API: a read-only token reads and watches, but cannot write, exec or read logs");
    c.apply(&service("sec-sleep", 3));
    let created = c.json(&[
        "token",
        "create",
        "--role",
        "read-only",
        "viewer",
        "-o",
        "json",
    ]);
    let viewer = created["token"]
        .as_str()
        .expect("token shown once")
        .to_string();
    let (code, body) = c.curl("/apis/shoal/v1/services/sec-sleep", Some(&viewer), &[]);
    assert_eq!(code, 200, "{body}");
    // A watch streams until curl's own timeout (exit 28) with a 200 and the first event.
    let (code, body) = c.curl(
        "/apis/shoal/v1/services?watch=true",
        Some(&viewer),
        &["-m", "2"],
    );
    assert_eq!(code, 200, "watch as read-only: {body}");
    assert!(
        body.contains("sec-sleep"),
        "the watch streamed the service: {body}"
    );
    let (code, body) = c.curl(
        "/apis/shoal/v1/services",
        Some(&viewer),
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/yaml",
            "--data-binary",
            &service("sec-evil", 1),
        ],
    );
    assert_eq!(code, 403, "POST as read-only: {body}");
    assert!(body.contains("read-only"), "the 403 names the role: {body}");
    let task = c.running("sec-sleep", "")[0].0.clone();
    let (code, body) = c.curl(
        &format!("/apis/shoal/v1/tasks/{task}/exec"),
        Some(&viewer),
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"command":["true"]}"#,
        ],
    );
    assert_eq!(code, 403, "exec as read-only: {body}");
    let (code, body) = c.curl(
        &format!("/apis/shoal/v1/tasks/{task}/logs"),
        Some(&viewer),
        &[],
    );
    assert_eq!(code, 403, "logs as read-only: {body}");
    // exec through the CLI (admin context) crosses the mutual-TLS hop to the agent.
    let out = c.exec(&task, &["echo", "over-mtls"]).ok();
    assert!(out.contains("over-mtls"), "{out}");

    step("API: a revoked token is refused");
    let ls = c.shoal(&["token", "ls"]).ok();
    assert!(ls.contains("viewer") && ls.contains("read-only"), "{ls}");
    c.shoal(&["token", "rm", "viewer"]).ok();
    within(
        Duration::from_secs(5),
        "the revoked token is refused",
        || c.curl("/apis/shoal/v1/services", Some(&viewer), &[]).0 == 401,
    );

    step("etcd: no client certificate → nothing readable");
    let run = c.etcdctl(None, &["get", "--prefix", "/shoal/"]);
    assert_ne!(run.code, 0, "read without a certificate: {}", run.stdout);
    assert!(!run.stdout.contains("shoal/v1"), "{}", run.stdout);

    step("etcd: node-1's certificate reads what an agent needs and writes nothing else");
    let (n1_crt, n1_key) = (
        c.node_pki_dir(1).join("node.crt"),
        c.node_pki_dir(1).join("node.key"),
    );
    let n1 = Some((n1_crt.as_path(), n1_key.as_path()));
    let run = c.etcdctl(n1, &["get", "/shoal/v1/nodes/node-1"]);
    assert_eq!(run.code, 0, "node-1 reads its Node: {}", run.stderr);
    assert!(run.stdout.contains("node-1"), "{}", run.stdout);
    let run = c.etcdctl(n1, &["put", "/shoal/v1/tasks/node-2/evil", "x"]);
    assert!(denied(&run), "node-1 wrote node-2's task: {run:?}");
    let run = c.etcdctl(n1, &["get", "--prefix", "/shoal/v1/private/"]);
    assert!(denied(&run), "node-1 read the private prefix: {run:?}");
    let run = c.etcdctl(n1, &["put", "/shoal/v1/services/evil", "{}"]);
    assert!(denied(&run), "node-1 wrote a Service: {run:?}");
    let run = c.etcdctl(n1, &["get", "--prefix", "/shoal/v1/ipam/"]);
    assert!(denied(&run), "node-1 read the address allocations: {run:?}");

    step("join: a token with a wrong CA digest is refused before the secret is sent");
    let token = c.shoal(&["join-token", "-q"]).ok().trim().to_string();
    assert!(token.starts_with("SWMTKN-1-"), "{token}");
    let parts: Vec<&str> = token.split('-').collect();
    assert_eq!(parts.len(), 4, "{token}");
    let wrong = format!("SWMTKN-1-{}-{}", "0".repeat(parts[2].len()), parts[3]);
    let scratch = c.state_dir().join("join-scratch");
    let scratch_arg = format!("--pki-dir={}", scratch.display());
    let join = |t: &str, name: &str| {
        c.binary(
            "shoal-agent",
            &[
                "join",
                &format!("--token={t}"),
                "--controller=https://127.0.0.1:7777",
                &format!("--name={name}"),
                "--address=198.18.0.99",
                &scratch_arg,
            ],
        )
    };
    let run = join(&wrong, "node-99");
    assert_ne!(run.code, 0, "a wrong digest joined: {run:?}");
    assert!(run.stderr.contains("digest"), "{}", run.stderr);
    assert!(!scratch.join("node.crt").exists());

    step("join: after --rotate the old token is refused; running nodes are unaffected");
    let rotated = c
        .shoal(&["join-token", "--rotate", "-q"])
        .ok()
        .trim()
        .to_string();
    assert_ne!(rotated, token);
    let run = join(&token, "node-99");
    assert_ne!(run.code, 0, "the old token joined: {run:?}");
    assert!(!scratch.join("node.crt").exists());
    let run = join(&rotated, "node-99");
    assert_eq!(run.code, 0, "the new token: {run:?}");
    assert!(scratch.join("node.crt").exists());
    c.shoal(&["node", "rm", "--force", "node-99"]);
    c.apply(&service("sec-after-rotate", 3));
    let running = c.running("sec-after-rotate", "");
    assert_eq!(running.len(), 3, "{running:?}");

    step("node rm: the removed node's agent loses etcd access within 2 s");
    let (n3_crt, n3_key) = (
        c.node_pki_dir(3).join("node.crt"),
        c.node_pki_dir(3).join("node.key"),
    );
    let n3 = Some((n3_crt.as_path(), n3_key.as_path()));
    assert_eq!(c.etcdctl(n3, &["get", "/shoal/v1/nodes/node-3"]).code, 0);
    c.shoal(&["node", "rm", "--force", "node-3"]).ok();
    let took = within(Duration::from_secs(2), "node-3's etcd access ends", || {
        denied(&c.etcdctl(n3, &["get", "/shoal/v1/nodes/node-3"]))
    });
    eprintln!("node-3 lost etcd access {took:?} after node rm");
    // It stays removed: its agent can no longer register it again.
    std::thread::sleep(Duration::from_secs(3));
    let nodes = c.shoal(&["node", "ls"]).ok();
    assert!(!nodes.contains("node-3"), "{nodes}");
    // Its tasks are replaced on the remaining nodes.
    c.eventually(
        "sec-sleep runs 3 tasks on node-1/2",
        Duration::from_secs(60),
        || {
            let r = c.running("sec-sleep", "");
            (r.len() == 3 && r.iter().all(|(_, node, _)| node != "node-3")).then_some(())
        },
    );
}
