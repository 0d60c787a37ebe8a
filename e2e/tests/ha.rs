//! A highly available control plane on the secured local cluster: three etcd members (each
//! in a namespace of its own) and two controllers. Killing the leading controller hands
//! the lead to the other, which keeps converging; stopping one etcd member leaves a quorum
//! that still serves. Needs root and the tools `.ci/run` installs.

use std::time::Duration;

use shoal_e2e::{step, Cluster};
use shoal_testkit::require;

fn service(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: localhost:5000/busybox:latest\n  \
         command: [sleep, \"100000\"]\n  replicas: {replicas}\n"
    )
}

#[test]
fn ha_control_plane_end_to_end() {
    require!(
        root,
        tools = ["containerd", "runc", "etcd", "etcdctl", "curl"]
    );
    let c = Cluster::up_with(3, &["--etcd-members", "3", "--controllers", "2"]);

    step("three etcd members serve over TLS");
    let crt = c.pki_dir().join("controller.crt");
    let key = c.pki_dir().join("controller.key");
    let members = c.etcdctl(Some((&crt, &key)), &["member", "list"]).ok();
    assert_eq!(members.lines().count(), 3, "{members}");
    let run = c.etcdctl(Some((&crt, &key)), &["endpoint", "health", "--cluster"]);
    // etcdctl 3.4 prints the health lines on stderr.
    let status = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(run.code, 0, "{status}");
    assert_eq!(status.matches("is healthy").count(), 3, "{status}");

    step("a service of 2 converges; one controller leads");
    c.apply(&service("ha-web", 2));
    let first = c.eventually("a leader", Duration::from_secs(30), || {
        c.leading_controller()
    });
    let other = 3 - first;
    eprintln!("controller-{first} leads");

    step("kill the leading controller: the other leads and a scale 2 → 6 converges");
    c.shoal(&["dev", "controller", "stop", &first.to_string()])
        .ok();
    // Another server than the context's: the CLI sends the context's CA and token only to
    // the context's server, so name them.
    let server = format!("--server=https://127.0.0.1:{}", 7776 + other);
    let ca = format!("--ca={}", c.pki_dir().join("ca.crt").display());
    let token = format!("--token={}", c.admin_token());
    let out = c
        .shoal(&[
            &server,
            &ca,
            &token,
            "service",
            "scale",
            "ha-web=6",
            "--timeout",
            "120s",
        ])
        .ok();
    eprintln!("{out}");
    let running = c.eventually("6 running", Duration::from_secs(60), || {
        let v = c.json(&[
            &server, &ca, &token, "service", "ps", "ha-web", "-o", "json",
        ]);
        let items = v
            .as_array()
            .cloned()
            .or_else(|| v["items"].as_array().cloned())?;
        let n = items
            .iter()
            .filter(|t| t["status"]["state"] == "running" && t["spec"]["desiredState"] == "running")
            .count();
        (n == 6).then_some(n)
    });
    assert_eq!(running, 6);
    assert_eq!(
        c.leading_controller(),
        Some(other),
        "controller-{other} leads now"
    );
    c.shoal(&["dev", "controller", "start", &first.to_string()])
        .ok();

    step("stop one etcd member (the one every client starts on): a new service still converges");
    c.shoal(&["dev", "etcd", "stop", "1"]).ok();
    // Clients pinned to it move to another member within about a second; /readyz says
    // when this controller's store answers again.
    let port = 7776 + other;
    c.eventually("the API is ready again", Duration::from_secs(15), || {
        let out = std::process::Command::new("curl")
            .args(["-sf", "-m", "2", "--cacert"])
            .arg(c.pki_dir().join("ca.crt"))
            .arg(format!("https://127.0.0.1:{port}/readyz"))
            .output()
            .ok()?;
        out.status.success().then_some(())
    });
    let path = c.state_dir().join("ha-after-etcd.yaml");
    std::fs::write(&path, service("ha-after", 3)).unwrap();
    c.shoal(&[
        &server,
        &ca,
        &token,
        "apply",
        "-f",
        path.to_str().unwrap(),
        "--timeout",
        "120s",
    ])
    .ok();
    let v = c.json(&[
        &server, &ca, &token, "service", "ps", "ha-after", "-o", "json",
    ]);
    let items = v
        .as_array()
        .cloned()
        .or_else(|| v["items"].as_array().cloned())
        .unwrap();
    let n = items
        .iter()
        .filter(|t| t["status"]["state"] == "running")
        .count();
    assert_eq!(n, 3, "{v}");
    c.shoal(&["dev", "etcd", "start", "1"]).ok();
}
