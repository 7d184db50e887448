//! Boots the real guest image (kernel + hull-agent as PID 1) through the QEMU backend, the
//! way the shim will, and checks what the agent reports and what is left afterwards.
//!
//! On this machine the guest runs under TCG (see DESIGN.md); these tests need root, QEMU,
//! vhost-device-vsock and the guest image, which `make test` provides. They fail loudly
//! when something is missing.

use std::time::{Duration, Instant};

use hull_shim::vm::{StopOutcome, Vm, VmError};
use hull_tests::{assert_nothing_left, image_kernel_release, qemu_backend, vm_config};

#[tokio::test]
async fn version_reports_the_guest_kernel_not_the_host() {
    let root = tempfile::tempdir().unwrap();
    let hv = qemu_backend().await;
    let cfg = vm_config(root.path());
    let vm = Vm::boot(&hv, "version", &cfg).await.expect("boot");
    let v = vm.agent().version().await.expect("Version");
    let image = hull_tests::guest_image();
    assert_eq!(v.kernel_release, image_kernel_release(&image));
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(
        v.kernel_release,
        host.trim(),
        "the agent answered from the host kernel"
    );
    assert!(v.pid1, "the agent must run as the guest's PID 1");
    assert_eq!(v.protocol_major, hull_protocol::PROTOCOL_MAJOR);
    assert_eq!(v.agent_version, vm.agent_version());
    assert!(
        v.uptime_seconds > 0.0 && v.uptime_seconds < 60.0,
        "uptime {}",
        v.uptime_seconds
    );
    vm.agent().check().await.expect("Check");

    let outcome = vm.shutdown(Duration::from_secs(10)).await;
    assert!(
        matches!(outcome, StopOutcome::Clean(s) if s.success()),
        "{outcome:?}"
    );
    assert_nothing_left(root.path());
}

#[tokio::test]
async fn five_boots_in_a_row_leave_no_process_socket_or_state() {
    let root = tempfile::tempdir().unwrap();
    let hv = qemu_backend().await;
    let cfg = vm_config(root.path());
    for n in 0..5 {
        let id = format!("seq-{n}");
        let vm = Vm::boot(&hv, &id, &cfg)
            .await
            .unwrap_or_else(|e| panic!("boot {n}: {e}"));
        assert_eq!(vm.state_dir(), root.path().join(&id));
        let pids = vm.pids();
        assert_eq!(pids.len(), 2, "qemu and vhost-device-vsock");
        // Each carries its pod's tag, by which a dead shim's pod is reclaimed.
        let tag = format!(
            "{}={}",
            hull_shim::reclaim::POD_ENV,
            vm.state_dir().display()
        );
        for &pid in &pids {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
            assert!(
                environ.split(|&b| b == 0).any(|v| v == tag.as_bytes()),
                "pid {pid} lacks {tag}"
            );
        }
        vm.agent().check().await.unwrap();
        let outcome = vm.shutdown(Duration::from_secs(10)).await;
        assert!(
            matches!(outcome, StopOutcome::Clean(_)),
            "boot {n}: {outcome:?}"
        );
        for pid in pids {
            assert!(
                !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "pid {pid} survived"
            );
        }
        assert_nothing_left(root.path());
    }
}

#[tokio::test]
async fn a_wrong_kernel_path_fails_at_once_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let hv = qemu_backend().await;
    let mut cfg = vm_config(root.path());
    cfg.kernel = root.path().join("no-such-vmlinux");
    let start = Instant::now();
    let err = Vm::boot(&hv, "badkernel", &cfg).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(err, VmError::Image { what: "kernel", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no-such-vmlinux"), "{err}");
    assert_nothing_left(root.path());
}

#[tokio::test]
async fn a_missing_initrd_fails_at_once_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let hv = qemu_backend().await;
    let mut cfg = vm_config(root.path());
    cfg.initrd = root.path().join("no-such-initramfs");
    let err = Vm::boot(&hv, "badinitrd", &cfg).await.unwrap_err();
    assert!(
        matches!(err, VmError::Image { what: "initrd", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no-such-initramfs"), "{err}");
    assert_nothing_left(root.path());
}

#[tokio::test]
async fn a_kernel_that_is_not_a_kernel_fails_with_the_hypervisors_reason() {
    let root = tempfile::tempdir().unwrap();
    let hv = qemu_backend().await;
    let mut cfg = vm_config(root.path());
    let bogus = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bogus.path(), b"this is not a kernel").unwrap();
    cfg.kernel = bogus.path().to_path_buf();
    let start = Instant::now();
    let err = Vm::boot(&hv, "notakernel", &cfg).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(10));
    match &err {
        VmError::ExitedBeforeReady { backend, .. } => {
            assert!(backend.contains("qemu:"), "{err}");
        }
        other => panic!("expected ExitedBeforeReady, got {other}"),
    }
    assert_nothing_left(root.path());
}

#[tokio::test]
async fn a_guest_whose_init_fails_reports_the_exit_and_the_console() {
    let root = tempfile::tempdir().unwrap();
    let hv = qemu_backend().await;
    let mut cfg = vm_config(root.path());
    // No such init: the guest kernel panics and (panic=-1) reboots, which ends the VM.
    cfg.extra_cmdline = "rdinit=/no-such-init".into();
    let start = Instant::now();
    let err = Vm::boot(&hv, "noinit", &cfg).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    match &err {
        VmError::ExitedBeforeReady { console, .. } => {
            assert!(console.contains("Kernel panic"), "console: {console}");
        }
        other => panic!("expected ExitedBeforeReady, got {other}"),
    }
    assert_nothing_left(root.path());
}

#[tokio::test]
async fn an_agent_that_never_answers_times_out_and_is_cleaned_up() {
    let root = tempfile::tempdir().unwrap();
    let hv = qemu_backend().await;
    let mut cfg = vm_config(root.path());
    // The guest panics without rebooting (panic=0 overrides panic=-1): the VM stays up and
    // nothing ever answers.
    cfg.extra_cmdline = "rdinit=/no-such-init panic=0".into();
    // Long enough for the panic to reach the console while another TCG guest boots beside
    // this one on a loaded host.
    cfg.boot_timeout = Duration::from_secs(15);
    let start = Instant::now();
    let err = Vm::boot(&hv, "hang", &cfg).await.unwrap_err();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(15) && took < Duration::from_secs(25),
        "took {took:?}"
    );
    match &err {
        VmError::BootTimeout { console, .. } => {
            assert!(console.contains("Kernel panic"), "console: {console}");
        }
        other => panic!("expected BootTimeout, got {other}"),
    }
    assert_nothing_left(root.path());
}

#[tokio::test]
async fn a_second_vm_with_the_same_id_is_refused_and_the_first_survives() {
    let root = tempfile::tempdir().unwrap();
    let hv = qemu_backend().await;
    let cfg = vm_config(root.path());
    let vm = Vm::boot(&hv, "dup", &cfg).await.expect("boot");
    let err = Vm::boot(&hv, "dup", &cfg).await.unwrap_err();
    assert!(matches!(err, VmError::AlreadyExists(_)), "{err}");
    vm.agent()
        .check()
        .await
        .expect("the first VM still answers");
    assert!(matches!(
        vm.shutdown(Duration::from_secs(10)).await,
        StopOutcome::Clean(_)
    ));
    assert_nothing_left(root.path());
}

#[tokio::test]
async fn killing_a_vm_reaps_its_processes_and_removes_its_state() {
    let root = tempfile::tempdir().unwrap();
    let hv = qemu_backend().await;
    let cfg = vm_config(root.path());
    let vm = Vm::boot(&hv, "killme", &cfg).await.expect("boot");
    vm.kill().await;
    assert_nothing_left(root.path());
}

/// The uid slots (real, effective, saved, fs) and the root directory of a process.
fn ids_and_root(pid: u32) -> (Vec<u32>, std::path::PathBuf) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    (uids, root)
}

/// Confined as the shim confines every pod by default: QEMU and vhost-device-vsock run as
/// the pod's own id (QEMU chrooted in an empty directory), the guest still reaches the
/// host's readiness listener and the agent answers, and the id is free again afterwards.
#[tokio::test]
async fn a_confined_vm_runs_qemu_and_its_vsock_daemon_as_the_pods_own_id() {
    // A 0700 state root, like the 0700 pod state directory below it: the confined daemon
    // starts inside its own directory and never searches these.
    let root = tempfile::tempdir().unwrap();
    let locks = root.path().join(".locks");
    let hv = hull_shim::backend::qemu::Qemu {
        jail: Some(hull_shim::backend::jail::JailRange::parse("1879050000-1879050001").unwrap()),
        jail_lock_dir: locks.clone(),
        ..qemu_backend().await
    };
    let cfg = vm_config(root.path());
    let vm = Vm::boot(&hv, "confined", &cfg).await.expect("boot");
    vm.agent().check().await.expect("Check");
    let pids = vm.pids();
    assert_eq!(pids.len(), 2, "qemu and vhost-device-vsock");
    let (qemu_uids, qemu_root) = ids_and_root(pids[0]);
    let id = qemu_uids[0];
    assert!(
        (1_879_050_000..=1_879_050_001).contains(&id),
        "{qemu_uids:?}"
    );
    assert_eq!(qemu_uids, [id; 4], "every uid slot of QEMU");
    assert_eq!(qemu_root, vm.state_dir().join("qemu-root"));
    let (daemon_uids, _) = ids_and_root(pids[1]);
    assert_eq!(daemon_uids, [id; 4], "every uid slot of vhost-device-vsock");
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", pids[1])).unwrap();
    assert_eq!(cwd, vm.state_dir().join("vsock"));
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let state = std::fs::metadata(vm.state_dir()).unwrap();
    assert_eq!(
        state.permissions().mode() & 0o777,
        0o700,
        "the pod's state dir"
    );
    let vsock = std::fs::metadata(vm.state_dir().join("vsock")).unwrap();
    assert_eq!(vsock.uid(), id, "the vsock dir is the pod id's");
    assert!(locks.join(format!("{id}.lock")).exists());

    let outcome = vm.shutdown(Duration::from_secs(10)).await;
    assert!(
        matches!(outcome, StopOutcome::Clean(s) if s.success()),
        "{outcome:?}"
    );
    assert_eq!(
        std::fs::read_dir(&locks).unwrap().count(),
        0,
        "the pod's id is still held"
    );
    std::fs::remove_dir(&locks).unwrap();
    assert_nothing_left(root.path());
}
