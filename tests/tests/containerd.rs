//! containerd drives hull like runc: `ctr run --runtime io.containerd.hull.v2` against a
//! private containerd (Debian's 1.6), one VM per pod, nothing left behind.
//!
//! Run with one test thread (the Makefile does): the leak test counts hull's footprint on
//! the whole host.

use std::process::Output;

use hull_tests::{image_kernel_release, processes_mentioning, Containerd};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn image_env() -> Vec<(String, String)> {
    let image = hull_tests::guest_image();
    vec![
        ("HULL_KERNEL".into(), image.kernel.display().to_string()),
        ("HULL_INITRD".into(), image.initrd.display().to_string()),
    ]
}

fn start() -> Containerd {
    let env = image_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Containerd::start(&env)
}

/// Nothing of pod `id` survives: no state directory, no process mentioning it. A failure
/// shows what is left and what containerd logged about the pod.
fn assert_pod_gone(c: &Containerd, id: &str) {
    let dir = format!("/run/hull/{id}");
    assert!(
        !std::path::Path::new(&dir).exists(),
        "{dir} left behind: {:?}\ncontainerd's log of it:\n{}",
        hull_tests::entries_under(std::path::Path::new(&dir)),
        c.log_mentioning(id)
    );
    let procs = processes_mentioning(&format!("{dir}/"));
    assert!(procs.is_empty(), "processes of {id} left: {procs:?}");
}

#[test]
fn ctr_run_runs_on_the_guest_kernel_with_stdio_and_exit_codes() {
    let c = start();
    let out = c.run("hull-t-uname", &["uname", "-r"]);
    assert!(
        out.status.success(),
        "ctr run failed: {}",
        text(&out.stderr)
    );
    let release = image_kernel_release(&hull_tests::guest_image());
    assert_eq!(
        text(&out.stdout).trim(),
        release,
        "ran under the guest kernel"
    );

    let out = c.run(
        "hull-t-exit",
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
    );
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");

    let out = c.ctr_with_stdin(
        &[
            "run",
            "--runtime",
            "io.containerd.hull.v2",
            "--rm",
            hull_tests::TEST_IMAGE,
            "hull-t-stdin",
            "tr",
            "a-z",
            "A-Z",
        ],
        b"piped through the vm\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "PIPED THROUGH THE VM\n");

    for id in ["hull-t-uname", "hull-t-exit", "hull-t-stdin"] {
        assert_pod_gone(&c, id);
    }
}

#[test]
fn exec_kill_and_delete_of_a_detached_task() {
    let c = start();
    run_detached(&c, "hull-t-detach");
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "hull-t-detach",
        "sh",
        "-c",
        "echo from exec; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from exec\n");

    let out = c.ctr(&["task", "ps", "hull-t-detach"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = c.ctr(&["task", "kill", "-s", "SIGKILL", "hull-t-detach"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_stopped(&c, "hull-t-detach");
    remove(&c, "hull-t-detach");
}

#[test]
fn two_containers_of_one_sandbox_share_one_vm() {
    let c = start();
    let pod = "io.kubernetes.cri.sandbox-id=hull-t-pod";
    let out = c.ctr(&[
        "run",
        "-d",
        "--annotation",
        pod,
        "--runtime",
        "io.containerd.hull.v2",
        hull_tests::TEST_IMAGE,
        "hull-t-pod",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "b",
        "hull-t-pod",
        "cat",
        "/proc/sys/kernel/random/boot_id",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let boot_first = text(&out.stdout);
    let out = c.ctr(&[
        "run",
        "--rm",
        "--annotation",
        pod,
        "--runtime",
        "io.containerd.hull.v2",
        hull_tests::TEST_IMAGE,
        "hull-t-pod-2",
        "cat",
        "/proc/sys/kernel/random/boot_id",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        boot_first,
        "the second container must run in the first one's VM"
    );
    let qemus = processes_mentioning("/run/hull/hull-t-pod/");
    assert!(
        !qemus.is_empty(),
        "the pod VM should still run for its first container"
    );

    kill_and_remove(&c, "hull-t-pod");
}

#[test]
fn a_missing_kernel_fails_the_create_naming_it_and_leaves_nothing() {
    let c = Containerd::start(&[
        ("HULL_KERNEL", "/nonexistent/vmlinux"),
        ("HULL_INITRD", "/nonexistent/initrd"),
    ]);
    let out = c.run("hull-t-nokernel", &["true"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("/nonexistent/vmlinux"),
        "the error should name the missing kernel: {err}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_pod_gone(&c, "hull-t-nokernel");
}

/// `ctr run --runtime io.containerd.hull.v2 FLAGS --rm IMAGE ID ARGS...`.
fn run_with(c: &Containerd, flags: &[&str], id: &str, args: &[&str]) -> Output {
    let mut a = vec!["run", "--runtime", "io.containerd.hull.v2"];
    a.extend_from_slice(flags);
    a.extend_from_slice(&["--rm", hull_tests::TEST_IMAGE, id]);
    a.extend_from_slice(args);
    c.ctr(&a)
}

/// `ctr run --runtime-config-path CONFIG` (containerd passes it to the shim as the
/// `ConfigPath` of `runtimeoptions.v1.Options`, as the CRI plugin does for a runtime's
/// `options`).
fn run_with_config(c: &Containerd, config: &std::path::Path, id: &str, args: &[&str]) -> Output {
    run_with(
        c,
        &["--runtime-config-path", config.to_str().unwrap()],
        id,
        args,
    )
}

#[test]
fn the_config_file_named_by_the_runtime_options_sizes_the_vm() {
    let c = start();
    let config = c.dir.path().join("hull.toml");
    std::fs::write(
        &config,
        "backend = \"auto\"\nlog_level = \"debug\"\n[guest]\nvcpus = 2\nmemory_mib = 384\n",
    )
    .unwrap();
    let out = run_with_config(
        &c,
        &config,
        "hull-t-config",
        &["sh", "-c", "nproc; grep MemTotal /proc/meminfo; hostname"],
    );
    assert!(out.status.success(), "ctr run: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("2"),
        "vcpus = 2 reached the guest: {stdout}"
    );
    let kib: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {stdout:?}"));
    // MemTotal is RAM minus what the kernel reserved: above the 256 MiB default, at most 384.
    assert!(
        (300 * 1024..=384 * 1024).contains(&kib),
        "memory_mib = 384 should give the guest ~384 MiB, MemTotal is {kib} KiB"
    );
    // Like runc, a container without a spec hostname sees the host's name.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(lines.next(), Some(host.trim()), "hostname: {stdout}");
    assert_pod_gone(&c, "hull-t-config");
}

#[test]
fn a_broken_config_fails_the_create_naming_the_file_and_key_and_leaves_nothing() {
    let c = start();
    let config = c.dir.path().join("broken.toml");
    std::fs::write(&config, "[guest]\nmemory = 512\n").unwrap();
    let out = run_with_config(&c, &config, "hull-t-badconfig", &["true"]);
    assert!(
        !out.status.success(),
        "a broken config must fail the create"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains(config.to_str().unwrap()) && err.contains("unknown field `memory`"),
        "the error should name the file and the key: {err}"
    );
    let missing = c.dir.path().join("absent.toml");
    let out = run_with_config(&c, &missing, "hull-t-badconfig", &["true"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(missing.to_str().unwrap()) && err.contains("No such file"),
        "the error should name the missing file: {err}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_pod_gone(&c, "hull-t-badconfig");
}

/// `ctr run --log-uri URI` (stdout and stderr both name the URI, as containerd does).
fn run_with_log_uri(c: &Containerd, uri: &str, id: &str, args: &[&str]) -> Output {
    run_with(c, &["--log-uri", uri], id, args)
}

#[test]
fn file_and_binary_log_uris_receive_all_output() {
    let c = start();
    let script = ["sh", "-c", "echo out; echo err >&2; seq 1 2000; exit 3"];
    let log = c.dir.path().join("logs/file.log");
    let out = run_with_log_uri(
        &c,
        &format!("file://{}", log.display()),
        "hull-t-filelog",
        &script,
    );
    assert_eq!(out.status.code(), Some(3), "ctr: {}", text(&out.stderr));
    let written = std::fs::read_to_string(&log).unwrap();
    let expected_seq: String = (1..=2000).map(|n| format!("{n}\n")).collect();
    assert!(
        written.contains("out\n") && written.contains("err\n") && written.contains(&expected_seq),
        "file:// log lacks output ({} bytes)",
        written.len()
    );

    // A logging binary: stdout on fd 3, stderr on fd 4, readiness on fd 5.
    let dir = c.dir.path().join("binlog");
    std::fs::create_dir_all(&dir).unwrap();
    let logger = dir.join("logger.sh");
    std::fs::write(
        &logger,
        "#!/bin/sh\nexec 5>&-\ncat <&3 >\"$2/out\" & cat <&4 >\"$2/err\" & wait\n\
         echo \"$CONTAINER_ID $CONTAINER_NAMESPACE\" >\"$2/env\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let uri = format!("binary://{}?dir={}", logger.display(), dir.display());
    let out = run_with_log_uri(&c, &uri, "hull-t-binlog", &script);
    assert_eq!(out.status.code(), Some(3), "ctr: {}", text(&out.stderr));
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap_or_default();
    assert_eq!(read("out"), format!("out\n{expected_seq}"));
    assert_eq!(read("err"), "err\n");
    assert_eq!(read("env").trim(), "hull-t-binlog hull-test");

    let out = run_with_log_uri(
        &c,
        "binary:///nonexistent/logger",
        "hull-t-badlog",
        &["true"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/nonexistent/logger"),
        "the error should name the logging binary: {}",
        text(&out.stderr)
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    for id in ["hull-t-filelog", "hull-t-binlog", "hull-t-badlog"] {
        assert_pod_gone(&c, id);
    }
}

/// Everything hull could leave on the host, one entry each: shim and VM processes, pod state
/// and held pod ids, mounts below /run/hull, shim sockets.
fn hull_footprint() -> std::collections::BTreeSet<String> {
    let mut all = std::collections::BTreeSet::new();
    for pid in processes_mentioning("containerd-shim-hull-v2")
        .into_iter()
        .chain(processes_mentioning("/run/hull/"))
    {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        all.insert(format!(
            "process {pid}: {}",
            text(&cmdline).replace('\0', " ")
        ));
    }
    // Pod state directories; dotfiles are host-wide (the recorded KVM verdict, the lock
    // directory of the pods' ids), plus the ids still held.
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for n in names("/run/hull")
        .into_iter()
        .filter(|n| !n.starts_with('.'))
    {
        all.insert(format!("state /run/hull/{n}"));
    }
    for n in names("/run/hull/.jail") {
        all.insert(format!("id lock {n}"));
    }
    for l in std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
    {
        if l.contains(" /run/hull/") {
            all.insert(format!("mount {l}"));
        }
    }
    for n in names("/run/containerd/s") {
        all.insert(format!("shim socket {n}"));
    }
    all
}

#[test]
fn fifty_sequential_runs_leave_no_process_mount_socket_or_state() {
    // The footprint is host-wide: the Makefile runs this binary with one test thread. What
    // an earlier test left may still go away meanwhile; only what is new counts.
    let c = start();
    let before = hull_footprint();
    for n in 0..50 {
        let id = format!("hull-t-seq-{n}");
        let out = c.run(&id, &["true"]);
        assert!(out.status.success(), "run {n}: {}", text(&out.stderr));
    }
    // The last shim exits right after containerd's Shutdown; give it a moment.
    let new = || -> Vec<String> { hull_footprint().difference(&before).cloned().collect() };
    let mut left = new();
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = new();
    }
    assert!(left.is_empty(), "left after 50 runs: {left:#?}");
    for n in 0..50 {
        assert_pod_gone(&c, &format!("hull-t-seq-{n}"));
    }
}

/// Waits until `ctr task ls` shows `id` as STOPPED.
fn wait_stopped(c: &Containerd, id: &str) {
    for _ in 0..150 {
        let ls = text(&c.ctr(&["task", "ls"]).stdout);
        if ls
            .lines()
            .any(|l| l.split_whitespace().next() == Some(id) && l.contains("STOPPED"))
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!(
        "{id} never stopped: {}",
        text(&c.ctr(&["task", "ls"]).stdout)
    );
}

fn run_detached(c: &Containerd, id: &str) {
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        "io.containerd.hull.v2",
        hull_tests::TEST_IMAGE,
        id,
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// SIGKILL, wait until containerd reports the task stopped, delete task and container.
fn kill_and_remove(c: &Containerd, id: &str) {
    let out = c.ctr(&["task", "kill", "-s", "SIGKILL", id]);
    assert!(out.status.success(), "task kill: {}", text(&out.stderr));
    wait_stopped(c, id);
    remove(c, id);
}

fn remove(c: &Containerd, id: &str) {
    let out = c.ctr(&["task", "rm", id]);
    assert!(out.status.success(), "task rm: {}", text(&out.stderr));
    let out = c.ctr(&["container", "rm", id]);
    assert!(out.status.success(), "container rm: {}", text(&out.stderr));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_pod_gone(c, id);
}

/// Calls the shim's Task API directly, as containerd does: ctr 1.6 has no `task update`
/// (the CRI plugin's UpdateContainerResources ends in the same call).
fn update_through_the_shim(c: &Containerd, id: &str, resources: serde_json::Value) {
    use containerd_shim_protos::api::UpdateTaskRequest;
    use containerd_shim_protos::protobuf::well_known_types::any::Any;
    use containerd_shim_protos::shim_async::{Client, TaskClient};
    let address_file = c
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task")
        .join(c.namespace)
        .join(id)
        .join("address");
    let address = std::fs::read_to_string(&address_file)
        .unwrap_or_else(|e| panic!("{}: {e}", address_file.display()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = TaskClient::new(Client::connect(address.trim()).await.unwrap());
        let mut any = Any::new();
        // containerd's typeurl for specs.LinuxResources; the value is JSON.
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
        any.value = serde_json::to_vec(&resources).unwrap();
        let req = UpdateTaskRequest {
            id: id.into(),
            resources: containerd_shim_protos::protobuf::MessageField::some(any),
            ..Default::default()
        };
        let ctx = ttrpc::context::with_timeout(20_000_000_000);
        client
            .update(ctx, &req)
            .await
            .expect("Update through the shim");
    });
}

#[test]
fn update_reaches_the_containers_cgroup_in_the_guest() {
    let c = start();
    run_detached(&c, "hull-t-update");
    // ctr's spec mounts no cgroupfs in the container; the limits come back through the
    // shim's Stats (the guest's cgroup v2 files, read by the agent).
    let limits = || {
        let out = c.ctr(&["task", "metrics", "--format", "json", "hull-t-update"]);
        assert!(out.status.success(), "metrics: {}", text(&out.stderr));
        let m: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("metrics JSON: {e}: {}", text(&out.stdout)));
        (
            m["memory"]["usage_limit"].as_u64(),
            m["pids"]["limit"].as_u64(),
        )
    };
    let (mem_before, _) = limits();
    assert_ne!(mem_before, Some(100 * 1024 * 1024));
    update_through_the_shim(
        &c,
        "hull-t-update",
        serde_json::json!({"memory": {"limit": 100 * 1024 * 1024}, "pids": {"limit": 77}}),
    );
    assert_eq!(limits(), (Some(100 * 1024 * 1024), Some(77)));
    kill_and_remove(&c, "hull-t-update");
}

#[test]
fn a_restarted_containerd_finds_its_running_hull_tasks_again() {
    let c = start();
    run_detached(&c, "hull-t-restart");
    c.restart();
    let ls = text(&c.ctr(&["task", "ls"]).stdout);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("hull-t-restart") && l.contains("RUNNING")),
        "after the restart: {ls}"
    );
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "hull-t-restart",
        "echo",
        "still here",
    ]);
    assert!(out.status.success(), "exec: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "still here\n");
    kill_and_remove(&c, "hull-t-restart");
}

#[test]
fn pause_resume_and_metrics() {
    let c = start();
    run_detached(&c, "hull-t-pause");
    assert!(c.ctr(&["task", "pause", "hull-t-pause"]).status.success());
    let ls = text(&c.ctr(&["task", "ls"]).stdout);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("hull-t-pause") && l.contains("PAUSED")),
        "{ls}"
    );
    assert!(c.ctr(&["task", "resume", "hull-t-pause"]).status.success());
    let ls = text(&c.ctr(&["task", "ls"]).stdout);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("hull-t-pause") && l.contains("RUNNING")),
        "{ls}"
    );

    let out = c.ctr(&["task", "metrics", "hull-t-pause"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = text(&out.stdout);
    assert!(
        m.contains("memory.usage_in_bytes") || m.contains("memory.usage"),
        "{m}"
    );
    assert!(m.contains("pids.current"), "{m}");

    kill_and_remove(&c, "hull-t-pause");
}

#[test]
fn a_killed_vm_ends_its_tasks_with_255_and_leaves_nothing() {
    let c = start();
    run_detached(&c, "hull-t-vmkill");
    let qemu = processes_mentioning("-name hull-t-vmkill");
    assert_eq!(qemu.len(), 1, "one QEMU for the pod: {qemu:?}");
    nix_kill9(qemu[0]);
    wait_stopped(&c, "hull-t-vmkill");
    let ls = text(&c.ctr(&["task", "ls"]).stdout);
    assert!(ls.contains("STOPPED"), "{ls}");
    // `rm -f` waits for the exit (Wait) before deleting: the recorded exit must answer it
    // even though nobody was waiting when the VM died.
    let out = c.ctr_within(30, &["task", "rm", "-f", "hull-t-vmkill"], b"");
    assert!(
        out.status.success(),
        "task rm -f ({:?}): {}",
        out.status.code(),
        text(&out.stderr)
    );
    let out = c.ctr(&["container", "rm", "hull-t-vmkill"]);
    assert!(out.status.success(), "container rm: {}", text(&out.stderr));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_pod_gone(&c, "hull-t-vmkill");
}

#[test]
fn a_killed_shim_is_cleaned_up_by_containerd() {
    let c = start();
    run_detached(&c, "hull-t-shimkill");
    let shim = processes_mentioning("-id hull-t-shimkill");
    assert_eq!(shim.len(), 1, "{shim:?}");
    nix_kill9(shim[0]);
    // containerd notices the dead shim and runs `containerd-shim-hull-v2 delete`, which
    // cleans the pod from its state directory.
    for _ in 0..100 {
        if !std::path::Path::new("/run/hull/hull-t-shimkill").exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = c.ctr(&["task", "rm", "-f", "hull-t-shimkill"]);
    let _ = c.ctr(&["container", "rm", "hull-t-shimkill"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_pod_gone(&c, "hull-t-shimkill");
    // The killed shim's id lock: released by the lock's death, its file by the cleanup.
    let locks: Vec<_> = std::fs::read_dir("/run/hull/.jail")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(locks.is_empty(), "id locks left: {locks:?}");
}

fn nix_kill9(pid: u32) {
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// The `/tasks/...` topics `ctr events` saw for task `id` while `run` ran: subscribed before
/// it starts, read until the task's delete event (what `ctr run --rm` ends with).
fn task_topics_during(c: &Containerd, id: &str, run: impl FnOnce()) -> (Vec<String>, String) {
    use std::io::BufRead;
    use std::time::{Duration, Instant};
    let mut events = std::process::Command::new("ctr")
        .arg("-a")
        .arg(c.dir.path().join("containerd.sock"))
        .arg("events")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    // `ctr events` has subscribed once an event of our own comes through: a label on the
    // test image publishes /images/update.
    let deadline = Instant::now() + Duration::from_secs(30);
    'subscribed: for n in 0.. {
        assert!(
            Instant::now() < deadline,
            "ctr events saw none of our events: {seen:?}"
        );
        let label = format!("hull-test-sync={n}");
        let _ = c.ctr(&["images", "label", hull_tests::TEST_IMAGE, &label]);
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            let synced = line.contains("/images/update");
            seen.push(line);
            if synced {
                break 'subscribed;
            }
        }
    }
    seen.clear();
    run();
    // `ctr run --rm` ends with the task's delete event.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let last = line.contains(id) && line.contains("/tasks/delete");
        seen.push(line);
        if last {
            break;
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    let _ = reader.join();
    let topics = seen
        .iter()
        .filter(|l| l.contains(id) && l.contains("/tasks/"))
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("/tasks/"))
                .map(String::from)
        })
        .collect();
    (topics, seen.join("\n"))
}

#[test]
fn task_events_come_in_runtime_v2_order() {
    let c = start();
    let (topics, all) = task_topics_during(&c, "hull-t-events", || {
        let out = c.run("hull-t-events", &["true"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    });
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ],
        "events: {all}"
    );
}

#[test]
fn an_oom_kill_in_the_guest_publishes_task_oom() {
    let c = start();
    let (topics, all) = task_topics_during(&c, "hull-t-oom", || {
        let out = run_with(
            &c,
            &["--memory-limit", "33554432"],
            "hull-t-oom",
            &[
                "sh",
                "-c",
                "exec awk 'BEGIN { s = \"x\"; while (1) s = s s }'",
            ],
        );
        assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    });
    assert!(
        topics.iter().any(|t| t == "/tasks/oom"),
        "no /tasks/oom event: {all}"
    );
    assert_pod_gone(&c, "hull-t-oom");
}

#[test]
fn a_tty_task_sees_a_terminal() {
    let c = start();
    // ctr -t needs a terminal of its own: script(1) gives it one.
    let cmd = format!(
        "ctr -a {} -n {} run -t --runtime io.containerd.hull.v2 --rm {} hull-t-tty sh -c 'tty; exit 5'",
        c.dir.path().join("containerd.sock").display(),
        c.namespace,
        hull_tests::TEST_IMAGE
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let o = text(&out.stdout);
    assert!(
        o.contains("/dev/pts/"),
        "no terminal in the container: {o:?} {}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(5), "{o:?}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_pod_gone(&c, "hull-t-tty");
}
