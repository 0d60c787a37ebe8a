//! End-to-end: applications from compose files (issue 15) on a 3-node local cluster.
//!
//! - `manifests/stack/compose.yml` (web with a config, a health check and an ingress port;
//!   api with a secret and an update policy; store with a named volume pinned to node-2; a
//!   worker; two overlay networks, one internal) deploys as one stack: web answers on every
//!   node, `wget http://api/` works by short name inside web, the secret file is right (mode
//!   0444, on a read-only tmpfs), no node without an api task holds the secret, etcd holds
//!   no plaintext of it, and the store's data survives a task restart on its node.
//! - Secret sizes (0 bytes, 500 KiB, 500 KiB + 1), `secret rm` of a secret in use, and a
//!   rotation through `service update --secret-rm/--secret-add`.
//! - A stack's life: an unsupported key warns and deploys, a missing external network
//!   creates nothing, an unchanged redeploy restarts nothing, `stack rm` removes the stack's
//!   objects and nothing else, and a deploy right after `stack rm` works; the gateway bridge
//!   shows in `network ls`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use shoal_e2e::{http_get, node_ip, require_e2e, step, Cluster, Get};

const SECRET: &str = "correct-horse-battery-staple";
const PAGE: &str = "<h1>Welcome to the shop</h1>";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn write(c: &Cluster, name: &str, text: &str) -> String {
    let path = c.state_dir().join(name);
    std::fs::write(&path, text).expect("write file");
    path.display().to_string()
}

/// The nodes that run a task of `service`.
fn nodes_of(c: &Cluster, service: &str) -> BTreeSet<String> {
    c.tasks(service)
        .into_iter()
        .filter(|t| t["status"]["state"] == "running" && t["spec"]["desiredState"] == "running")
        .filter_map(|t| t["spec"]["node"].as_str().map(str::to_string))
        .collect()
}

/// Display names (`shop_api.2`) of the running tasks of a service.
fn running_names(c: &Cluster, service: &str) -> Vec<String> {
    c.running(service, "")
        .into_iter()
        .map(|(name, _, _)| name)
        .collect()
}

/// Every regular file below `dir` that contains `needle`, with its filesystem type.
fn files_containing(dir: &Path, needle: &str) -> Vec<(String, String)> {
    let out = std::process::Command::new("grep")
        .args(["-r", "-l", "-F", "-s", "--devices=skip", needle])
        .arg(dir)
        .output()
        .expect("grep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|f| {
            let fs = std::process::Command::new("stat")
                .args(["-f", "-c", "%T", f])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            (f.to_string(), fs)
        })
        .collect()
}

fn base64(text: &str) -> String {
    shoal_api_types::payload::encode_payload(text.as_bytes())
}

#[test]
fn a_compose_app_with_a_secret_a_config_and_a_volume_runs_as_a_stack() {
    require_e2e!();
    let c = Cluster::up(3);
    let compose = repo_file("manifests/stack/compose.yml");
    // The example as users copy it, plus an override (merged as compose merges -c files)
    // keeping api off node-3, so that one node runs no api task.
    let override_file = write(
        &c,
        "override.yml",
        "services:\n  api:\n    deploy:\n      placement:\n        constraints: [node.hostname != node-3]\n",
    );

    step("stack deploy");
    let out = c
        .shoal(&[
            "stack",
            "deploy",
            "-c",
            compose.to_str().unwrap(),
            "-c",
            &override_file,
            "shop",
        ])
        .ok();
    eprintln!("{out}");
    let ls = c.shoal(&["stack", "ls"]).ok();
    assert!(
        ls.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["shop", "4"]),
        "stack ls:\n{ls}"
    );
    let services = c.shoal(&["stack", "services", "shop"]).ok();
    for s in ["shop_web", "shop_api", "shop_store", "shop_worker"] {
        assert!(services.contains(s), "{s} missing:\n{services}");
    }
    assert_eq!(c.running_ids("shop_api").len(), 3);
    assert_eq!(c.running_ids("shop_web").len(), 2);

    step("web answers on every node's port 8080 with the config's page");
    for k in 1..=3 {
        c.eventually(
            &format!("node-{k}:8080 serves the page"),
            Duration::from_secs(60),
            || match http_get(node_ip(k), 8080) {
                Get::Ok(200, body) if body.contains(PAGE) => Some(()),
                _ => None,
            },
        );
    }

    step("inside web, the api answers by its short name");
    let web = running_names(&c, "shop_web");
    let got = c.eventually("wget http://api/ from web", Duration::from_secs(30), || {
        let run = c.exec(&web[0], &["wget", "-q", "-O", "-", "http://api/"]);
        (run.code == 0 && run.stdout.contains("api ")).then_some(run.stdout)
    });
    assert!(got.contains("shop_api."), "{got}");

    step("the secret in an api task: content, mode 0444, a read-only tmpfs");
    let api = running_names(&c, "shop_api");
    let content = c.exec(&api[0], &["cat", "/run/secrets/db_password"]).ok();
    assert_eq!(content.trim(), SECRET);
    let mode = c
        .exec(&api[0], &["stat", "-c", "%a", "/run/secrets/db_password"])
        .ok();
    assert_eq!(mode.trim(), "444");
    let mounts = c.exec(&api[0], &["cat", "/proc/mounts"]).ok();
    let line = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/run/secrets"))
        .unwrap_or_else(|| panic!("no /run/secrets mount:\n{mounts}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[2], "tmpfs", "{line}");
    let opts: BTreeSet<&str> = fields[3].split(',').collect();
    for want in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(opts.contains(want), "{want} missing: {line}");
    }
    let write_attempt = c.exec(&api[0], &["sh", "-c", "echo x > /run/secrets/db_password"]);
    assert_ne!(
        write_attempt.code, 0,
        "the secret file must not be writable"
    );

    step("no plaintext on a node without an api task, only tmpfs elsewhere");
    let api_nodes = nodes_of(&c, "shop_api");
    assert!(!api_nodes.contains("node-3"), "{api_nodes:?}");
    for k in 1..=3 {
        let dir = c.state_dir().join(format!("node-{k}"));
        let found = files_containing(&dir, SECRET);
        if k == 3 {
            assert!(found.is_empty(), "node-3 holds the secret: {found:?}");
        } else if api_nodes.contains(&format!("node-{k}")) {
            // The search sees the task's tmpfs, so an empty result on node-3 means something.
            assert!(
                !found.is_empty(),
                "node-{k} runs api but grep found no secret"
            );
        }
        for (file, fs) in &found {
            assert_eq!(fs, "tmpfs", "{file} holds the secret on disk ({fs})");
        }
    }
    // When node-3 runs a web task, grep also searched its payload tmpfs, which holds the
    // config and nothing else. (The scheduler spreads web's 2 replicas; node-3 may get none.)
    if nodes_of(&c, "shop_web").contains("node-3") {
        let on_node3 = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let node3 = c.state_dir().join("node-3").display().to_string();
        assert!(
            on_node3
                .lines()
                .any(|l| l.contains(&node3) && l.contains("payloads")),
            "node-3's web tasks have a payload tmpfs (with their config), which grep searched"
        );
    }

    step("etcd holds no plaintext of the secret");
    let pki = c.pki_dir();
    let dump = c.etcdctl(
        Some((&pki.join("controller.crt"), &pki.join("controller.key"))),
        &["get", "", "--prefix"],
    );
    assert_eq!(dump.code, 0, "etcdctl: {}", dump.stderr);
    assert!(
        dump.stdout
            .contains("/shoal/v1/private/payloads/secrets/shop_db_password"),
        "the encrypted payload is stored"
    );
    assert!(!dump.stdout.contains(SECRET), "plaintext in etcd");
    assert!(
        !dump.stdout.contains(&base64(SECRET)),
        "base64 plaintext in etcd"
    );
    let (code, body) = c.curl(
        "/apis/shoal/v1/secrets/shop_db_password",
        Some(&c.admin_token()),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        !body.contains(&base64(SECRET)) && !body.contains(SECRET),
        "{body}"
    );

    step("the store's data survives a task restart on its node");
    let store = running_names(&c, "shop_store");
    assert_eq!(
        nodes_of(&c, "shop_store"),
        BTreeSet::from(["node-2".to_string()])
    );
    c.exec(&store[0], &["sh", "-c", "echo kept > /data/f"]).ok();
    let before = c.running_ids("shop_store");
    let _ = c.exec(&store[0], &["kill", "1"]);
    let after = c.eventually("a new store task runs", Duration::from_secs(60), || {
        let ids = c.running_ids("shop_store");
        (!ids.is_empty() && ids.is_disjoint(&before)).then_some(ids)
    });
    assert_eq!(after.len(), 1);
    assert_eq!(
        nodes_of(&c, "shop_store"),
        BTreeSet::from(["node-2".to_string()])
    );
    let kept = c
        .exec(&running_names(&c, "shop_store")[0], &["cat", "/data/f"])
        .ok();
    assert_eq!(kept.trim(), "kept");

    step("secret sizes: 0 bytes and 500 KiB + 1 refused, 500 KiB accepted");
    let big = vec![b'a'; 500 * 1024];
    let path_ok = c.state_dir().join("s500k");
    std::fs::write(&path_ok, &big).unwrap();
    let mut over = big.clone();
    over.push(b'a');
    let path_over = c.state_dir().join("s500k1");
    std::fs::write(&path_over, &over).unwrap();
    let path_empty = c.state_dir().join("s0");
    std::fs::write(&path_empty, b"").unwrap();
    c.shoal(&["secret", "create", "big", path_ok.to_str().unwrap()])
        .ok();
    let refused = c.shoal(&["secret", "create", "bigger", path_over.to_str().unwrap()]);
    assert_ne!(refused.code, 0, "500 KiB + 1 accepted");
    assert!(refused.stderr.contains("spec.data"), "{}", refused.stderr);
    let refused = c.shoal(&["secret", "create", "empty", path_empty.to_str().unwrap()]);
    assert_ne!(refused.code, 0, "0 bytes accepted");
    let names = c.shoal(&["secret", "ls"]).ok();
    assert!(names.contains("big") && !names.contains("bigger") && !names.contains("empty"));

    step("secret rm of a secret in use is refused, naming the service");
    let rm = c.shoal(&["secret", "rm", "shop_db_password"]);
    assert_ne!(rm.code, 0);
    assert!(rm.stderr.contains("shop_api"), "{}", rm.stderr);

    step("rotation: --secret-rm/--secret-add rolls the tasks to the new value");
    let new_value = write(&c, "pw2.txt", "the-new-password\n");
    c.shoal(&["secret", "create", "pw2", &new_value]).ok();
    let before = c.running_ids("shop_api");
    c.shoal(&[
        "service",
        "update",
        "--secret-rm",
        "shop_db_password",
        "--secret-add",
        "source=pw2,target=db_password",
        "shop_api",
    ])
    .ok();
    let after = c.running_ids("shop_api");
    assert_eq!(after.len(), 3);
    assert!(after.is_disjoint(&before), "every task was replaced");
    for name in running_names(&c, "shop_api") {
        let v = c.exec(&name, &["cat", "/run/secrets/db_password"]).ok();
        assert_eq!(v.trim(), "the-new-password", "{name}");
    }
    // The old secret is no longer used: it may go now (it is the stack's, so the next
    // deploy would bring it back; here the stack is removed next).
    c.shoal(&["stack", "rm", "shop"]).ok();
    c.eventually("the stack is gone", Duration::from_secs(60), || {
        let ls = c.shoal(&["service", "ls"]).ok();
        (!ls.contains("shop_")).then_some(())
    });
    let secrets = c.shoal(&["secret", "ls"]).ok();
    assert!(secrets.contains("pw2"), "pw2 is not the stack's: {secrets}");
    assert!(!secrets.contains("shop_db_password"), "{secrets}");
}

#[test]
fn a_stack_warns_refuses_whole_redeploys_nothing_and_is_removed_alone() {
    require_e2e!();
    let c = Cluster::up(2);

    step("objects that belong to no stack");
    c.shoal(&["network", "create", "other"]).ok();
    let keep = write(&c, "keep.txt", "keep me");
    c.shoal(&["secret", "create", "keep", &keep]).ok();
    c.shoal(&[
        "service",
        "create",
        "--name",
        "loner",
        "localhost:5000/busybox:latest",
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done & wait",
    ])
    .ok();

    step("an unsupported key warns and the deploy goes on");
    let compose = write(
        &c,
        "app.yml",
        r#"services:
  front:
    image: localhost:5000/busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; mkdir -p /www && echo ${GREETING:-hello} > /www/index.html && httpd -f -p 80 -h /www & wait"]
    privileged: true
    ports:
      - target: 80
        published: 8090
        mode: host
    deploy:
      mode: global
  back:
    image: localhost:5000/busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done & wait"]
    secrets: [token]
    networks: [inner]
    deploy:
      replicas: 2
      placement:
        max_replicas_per_node: 1
networks:
  inner: {}
secrets:
  token:
    file: ./token.txt
"#,
    );
    write(&c, "token.txt", "t0ken");
    let run = c.shoal(&["stack", "deploy", "-c", &compose, "app"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("privileged"),
        "no warning about privileged:\n{}",
        run.stderr
    );
    assert_eq!(c.running_ids("app_front").len(), 2, "global: one per node");
    assert_eq!(nodes_of(&c, "app_back").len(), 2, "max one per node");
    for k in 1..=2 {
        c.eventually(
            &format!("host port 8090 on node-{k}"),
            Duration::from_secs(30),
            || match http_get(node_ip(k), 8090) {
                Get::Ok(200, body) if body.contains("hello") => Some(()),
                _ => None,
            },
        );
    }
    // `back` is on `app_inner` only; `front` listed no network: `app_default`.
    let nets = c.shoal(&["network", "ls"]).ok();
    assert!(
        nets.contains("app_inner") && nets.contains("app_default"),
        "{nets}"
    );

    step("a missing external network fails the deploy and creates nothing");
    let bad = write(
        &c,
        "bad.yml",
        r#"services:
  one:
    image: localhost:5000/busybox:latest
    networks: [outside]
networks:
  outside:
    external: true
"#,
    );
    let run = c.shoal(&["stack", "deploy", "-c", &bad, "bad"]);
    assert_ne!(run.code, 0, "deployed with a missing external network");
    assert!(run.stderr.contains("outside"), "{}", run.stderr);
    let ls = c.shoal(&["service", "ls"]).ok();
    assert!(!ls.contains("bad_"), "{ls}");
    let nets = c.shoal(&["network", "ls"]).ok();
    assert!(!nets.contains("bad_"), "{nets}");

    step("an unchanged redeploy restarts nothing");
    let before: BTreeSet<String> = c
        .running_ids("app_front")
        .union(&c.running_ids("app_back"))
        .cloned()
        .collect();
    let run = c.shoal(&["stack", "deploy", "-c", &compose, "app"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    std::thread::sleep(Duration::from_secs(5));
    let after: BTreeSet<String> = c
        .running_ids("app_front")
        .union(&c.running_ids("app_back"))
        .cloned()
        .collect();
    assert_eq!(before, after, "tasks were restarted");

    step("the gateway bridge shows as a local bridge network");
    let nets = c.shoal(&["network", "ls"]).ok();
    let gw = nets
        .lines()
        .find(|l| l.split_whitespace().next() == Some("gwbridge"))
        .unwrap_or_else(|| panic!("no gwbridge in:\n{nets}"));
    assert!(gw.contains("bridge") && gw.contains("local"), "{gw}");
    let ingress = nets
        .lines()
        .find(|l| l.split_whitespace().next() == Some("ingress"))
        .unwrap_or_else(|| panic!("no ingress in:\n{nets}"));
    assert!(
        ingress.contains("overlay") && ingress.contains("swarm"),
        "{ingress}"
    );
    let inspect = c.shoal(&["network", "inspect", "gwbridge"]).ok();
    assert!(inspect.contains("172.18.0.0/16"), "{inspect}");

    step("stack rm removes the stack's objects and nothing else");
    c.shoal(&["stack", "rm", "app"]).ok();
    let services = c.shoal(&["service", "ls"]).ok();
    assert!(!services.contains("app_"), "{services}");
    assert!(services.contains("loner"), "{services}");
    let nets = c.shoal(&["network", "ls"]).ok();
    assert!(!nets.contains("app_"), "{nets}");
    assert!(nets.contains("other"), "{nets}");
    let secrets = c.shoal(&["secret", "ls"]).ok();
    assert!(!secrets.contains("app_token"), "{secrets}");
    assert!(secrets.contains("keep"), "{secrets}");
    let stacks = c.shoal(&["stack", "ls"]).ok();
    assert!(!stacks.contains("app"), "{stacks}");

    step("a deploy right after stack rm works");
    let run = c.shoal(&["stack", "deploy", "-c", &compose, "app"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(c.running_ids("app_back").len(), 2);
    let back = running_names(&c, "app_back");
    let token = c.exec(&back[0], &["cat", "/run/secrets/token"]).ok();
    assert_eq!(token.trim(), "t0ken");
    let spec: Value = c.json(&["service", "inspect", "app_back"]);
    let spec = spec.as_array().map(|a| a[0].clone()).unwrap_or(spec);
    assert_eq!(spec["metadata"]["labels"]["shoal.io/stack"], "app");
}
