//! Task files (issue 15) with a real containerd: a task's secret and config on a read-only
//! tmpfs (content, mode 0444, owner, `ro,nosuid,nodev,noexec` inside the container), a
//! named volume that outlives the task, a tmpfs mount, and the payload tmpfs gone from the
//! node once the container is removed. Payloads come from a fake controller
//! (`FakePayloads`); the mounts are real.
//!
//! Needs root and the tools of `containerd_support` (without them it says why and passes,
//! or fails with `SHOAL_TESTS_REQUIRED=1`). Everything lives under `/tmp/shoal-test-<id>/`,
//! removed (mounts included) by the guard, also when an assertion fails. Network: none
//! (containers get fresh, empty network namespaces).

mod containerd_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use containerd_support::*;
use shoal_api_types::service::{ConfigReference, Mount, MountType, SecretReference};
use shoal_api_types::{Memory, Task, TaskSpec};
use shoal_node_agent::agent::{ContainerTasks, TaskRuntime};
use shoal_node_agent::runtime::{ContainerRuntime, ContainerdRuntime};
use shoal_node_agent::taskfiles::{FakePayloads, KernelFiles, TaskFiles, TaskFilesConfig};

async fn exec(rt: &dyn ContainerRuntime, id: &str, script: &str) -> (i32, String) {
    let out = rt
        .exec(
            id,
            &["sh".to_string(), "-c".to_string(), script.to_string()],
            Duration::from_secs(10),
            1 << 20,
        )
        .await
        .expect("exec");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.exit_code, text)
}

fn mounted_on_node(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*path.to_string_lossy()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_secret_config_and_volume_should_be_mounted_and_the_payloads_leave_with_it() {
    shoal_testkit::require!(root, tools = BINARIES, also = busybox_missing());
    let env = TestEnv::start();
    let runtime: Arc<dyn ContainerRuntime> = Arc::new(
        ContainerdRuntime::connect(env.config())
            .await
            .expect("connect to our containerd"),
    );
    let root = env.dir.join("agent");
    let files = Arc::new(
        TaskFiles::new(TaskFilesConfig::new(&root), Arc::new(KernelFiles)).with_source(Arc::new(
            FakePayloads::new()
                .secret("pw", b"hunter2\n")
                .config("app_conf", b"answer=42\n"),
        )),
    );
    let tasks = ContainerTasks::new(runtime.clone(), "node-1").with_files(files.clone());
    let task = Task::new(
        "t1",
        TaskSpec {
            service: "api".into(),
            slot: Some(1),
            node: Some("node-1".into()),
            image: env.image("busybox:latest"),
            args: vec!["sleep".into(), "300".into()],
            user: "1000:1000".into(),
            secrets: vec![SecretReference {
                source: "pw".into(),
                mode: 0o444,
                ..Default::default()
            }],
            configs: vec![ConfigReference {
                source: "app_conf".into(),
                target: "/etc/app.conf".into(),
                uid: 1000,
                mode: 0o440,
                ..Default::default()
            }],
            mounts: vec![
                Mount {
                    type_: MountType::Volume,
                    source: "data".into(),
                    target: "/data".into(),
                    ..Default::default()
                },
                Mount {
                    type_: MountType::Tmpfs,
                    target: "/scratch".into(),
                    tmpfs_size: Some(Memory(1 << 20)),
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
    );
    tasks.start_task(&task).await.expect("start the task");
    let payloads = root.join("payloads/t1");
    assert!(mounted_on_node(&payloads), "the payload tmpfs is mounted");

    // The secret: content, mode 0444, root's; readable by the task's user 1000.
    let (code, out) = exec(
        runtime.as_ref(),
        "t1",
        "cat /run/secrets/pw; stat -c '%a %u %g' /run/secrets/pw; id -u",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "hunter2\n444 0 0\n1000\n"));
    // On a read-only tmpfs, nosuid, nodev, noexec.
    let (code, out) = exec(runtime.as_ref(), "t1", "grep ' /run/secrets ' /proc/mounts").await;
    assert_eq!(code, 0, "{out}");
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields[2], "tmpfs", "{out}");
    for flag in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(fields[3].split(',').any(|o| o == flag), "{flag}: {out}");
    }
    let (code, _) = exec(runtime.as_ref(), "t1", "echo x > /run/secrets/other").await;
    assert_ne!(code, 0, "nothing can be written to /run/secrets");
    // The config at its path with its owner and mode.
    let (code, out) = exec(
        runtime.as_ref(),
        "t1",
        "cat /etc/app.conf; stat -c '%a %u' /etc/app.conf",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "answer=42\n440 1000\n"));
    // The tmpfs mount and the volume (written on the node: the task's user 1000 may not
    // write the root-owned volume directory).
    let (code, out) = exec(runtime.as_ref(), "t1", "grep ' /scratch ' /proc/mounts").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("tmpfs") && out.contains("size=1024k"), "{out}");
    let (code, out) = exec(runtime.as_ref(), "t1", "grep -c ' /data ' /proc/mounts").await;
    assert_eq!((code, out.as_str()), (0, "1\n"));
    std::fs::write(root.join("volumes/data/_data/kept"), b"yes").unwrap();
    let (_, out) = exec(runtime.as_ref(), "t1", "cat /data/kept").await;
    assert_eq!(out, "yes");

    // Removed with the container; the volume stays.
    tasks.stop_task("t1", Duration::from_secs(1)).await.unwrap();
    assert!(mounted_on_node(&payloads), "kept while the container is");
    tasks.remove_task("t1").await.unwrap();
    assert!(!mounted_on_node(&payloads), "unmounted with the container");
    assert!(!payloads.exists());
    assert_eq!(
        std::fs::read(root.join("volumes/data/_data/kept")).unwrap(),
        b"yes"
    );
    let volumes = files
        .volumes("node-1", &runtime.list().await.unwrap())
        .unwrap();
    assert_eq!(volumes.len(), 1);
    assert!(volumes[0].used_by.is_empty());

    // A leftover tmpfs (an agent that died before removing it) is collected.
    let leftover = Task::new("t2", task.spec.clone());
    drop(files.prepare(&leftover).await.unwrap());
    assert!(mounted_on_node(&root.join("payloads/t2")));
    files.collect_garbage(runtime.as_ref()).await;
    assert!(!mounted_on_node(&root.join("payloads/t2")));
    drop(env);
}
