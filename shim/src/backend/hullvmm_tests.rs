//! Tests of the hull-vmm backend: its command lines, and its process tracking with
//! stand-in programs (shell scripts) for hull-vmm and virtiofsd; one test boots the real
//! guest and is ignored here (it needs native KVM or the nested harness).

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn spec(state: &Path) -> LaunchSpec {
    LaunchSpec {
        id: "t1".into(),
        state_dir: state.into(),
        kernel: "/k/vmlinux".into(),
        initrd: "/k/initramfs.cpio".into(),
        cmdline: "console=ttyS0 quiet".into(),
        vcpus: 2,
        memory_mib: 256,
        vsock_uds: state.join("vsock/vsock.sock"),
        guest_listeners: vec![state.join("vsock/vsock.sock_1025")],
        console_log: state.join("console.log"),
        share_dir: None,
    }
}

fn value_of<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

#[test]
fn command_line_carries_the_image_resources_console_and_hybrid_vsock_socket() {
    let a = hull_vmm_args(&spec(Path::new("/run/hull/t1")));
    assert_eq!(value_of(&a, "--kernel"), ["/k/vmlinux"]);
    assert_eq!(value_of(&a, "--initrd"), ["/k/initramfs.cpio"]);
    assert_eq!(value_of(&a, "--cmdline"), ["console=ttyS0 quiet"]);
    assert_eq!(value_of(&a, "--vcpus"), ["2"]);
    assert_eq!(value_of(&a, "--memory-mib"), ["256"]);
    assert_eq!(value_of(&a, "--console"), ["/run/hull/t1/console.log"]);
    // The same socket the shim listens beside (<uds>_1025) and connects to.
    assert_eq!(
        value_of(&a, "--vsock-uds"),
        ["/run/hull/t1/vsock/vsock.sock"]
    );
    // Unconfined unless the backend has a jail range.
    assert!(value_of(&a, "--uid").is_empty() && value_of(&a, "--chroot").is_empty());
    assert!(value_of(&a, "--fs").is_empty());
    // hull-vmm's seccomp filters stay on (its default): never --no-seccomp or the trap mode.
    assert!(!a.iter().any(|x| x.contains("seccomp")), "{a:?}");
    // Every flag is one hull-vmm knows (its parser rejects unknown ones).
    for flag in a.iter().filter(|x| x.starts_with("--")) {
        assert!(
            [
                "--kernel",
                "--initrd",
                "--cmdline",
                "--vcpus",
                "--memory-mib",
                "--console",
                "--vsock-uds",
                "--fs",
            ]
            .contains(&flag.as_str()),
            "{flag}"
        );
    }
}

#[test]
fn a_share_is_served_by_virtiofsd_on_a_socket_in_the_state_dir() {
    let mut s = spec(Path::new("/run/hull/t1"));
    s.share_dir = Some("/run/hull/t1/share".into());
    let a = hull_vmm_args(&s);
    assert_eq!(
        value_of(&a, "--fs"),
        ["hull-share=/run/hull/t1/virtiofs.sock"]
    );
    // virtiofsd gets the same flags as on the QEMU path, on that socket.
    let v = virtiofsd_args(&s, Path::new("/run/hull/t1/share"));
    assert_eq!(
        value_of(&v, "--socket-path"),
        ["/run/hull/t1/virtiofs.sock"]
    );
    assert_eq!(value_of(&v, "--shared-dir"), ["/run/hull/t1/share"]);
}

#[test]
fn a_confined_vmm_runs_as_its_pod_id_chrooted_in_the_vsock_directory() {
    let a = jail_args(&spec(Path::new("/run/hull/t1")), 5000);
    assert_eq!(value_of(&a, "--uid"), ["5000"]);
    assert_eq!(value_of(&a, "--gid"), ["5000"]);
    // hull-vmm requires --vsock-uds to lie inside --chroot.
    assert_eq!(value_of(&a, "--chroot"), ["/run/hull/t1/vsock"]);
    assert!(Path::new("/run/hull/t1/vsock/vsock.sock").starts_with(value_of(&a, "--chroot")[0]));
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    crate::util::write_script(&p, &format!("#!/bin/sh\n{body}\n"));
    p
}

/// A virtiofsd stand-in: records its pid beside `--socket-path`, then listens there (the
/// shim waits for a listening socket, not for the file) and waits.
const FAKE_VIRTIOFSD: &str = r#"while [ $# -gt 0 ]; do
  if [ "$1" = --socket-path ]; then sock=$2; echo $$ > "$(dirname "$2")/vfsd.pid"; fi
  shift
done
exec python3 -c 'import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen()
time.sleep(600)' "$sock""#;

fn alive(pid: u32) -> bool {
    // A reaped child has no /proc entry; a zombie would still have one.
    Path::new(&format!("/proc/{pid}")).exists()
}

struct Setup {
    _dir: tempfile::TempDir,
    state: PathBuf,
    bin: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(state.join("share")).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    Setup {
        _dir: dir,
        state,
        bin,
    }
}

fn spec_with_share(state: &Path) -> LaunchSpec {
    let mut s = spec(state);
    s.share_dir = Some(state.join("share"));
    s
}

#[tokio::test]
async fn launch_tracks_both_processes_and_terminate_reaps_them() {
    let t = setup();
    let hv = HullVmm {
        binary: script(&t.bin, "hull-vmm", "exec sleep 600"),
        virtiofsd: script(&t.bin, "virtiofsd", FAKE_VIRTIOFSD),
        ..HullVmm::default()
    };
    let mut vm = hv.launch(&spec_with_share(&t.state)).await.unwrap();
    let pids = vm.pids();
    assert_eq!(pids.len(), 2, "hull-vmm and virtiofsd");
    assert!(pids.iter().all(|&p| alive(p)));
    let vfsd: u32 = std::fs::read_to_string(t.state.join("vfsd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pids[1], vfsd, "hull-vmm first, then its helper");
    vm.terminate().await;
    assert!(pids.iter().all(|&p| !alive(p)), "left behind: {pids:?}");
    vm.terminate().await; // idempotent
}

#[tokio::test]
async fn a_hull_vmm_that_cannot_start_leaves_no_virtiofsd_behind() {
    let t = setup();
    let hv = HullVmm {
        binary: t.bin.join("no-such-hull-vmm"),
        virtiofsd: script(&t.bin, "virtiofsd", FAKE_VIRTIOFSD),
        ..HullVmm::default()
    };
    let e = hv.launch(&spec_with_share(&t.state)).await.unwrap_err();
    assert!(matches!(e, BackendError::Spawn { .. }), "{e}");
    let vfsd: u32 = std::fs::read_to_string(t.state.join("vfsd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!alive(vfsd), "virtiofsd {vfsd} was left running");
}

#[tokio::test]
async fn a_virtiofsd_that_fails_is_reported_and_hull_vmm_is_not_started() {
    let t = setup();
    let marker = t.state.join("vmm-ran");
    let hv = HullVmm {
        binary: script(
            &t.bin,
            "hull-vmm",
            &format!("touch {}; exec sleep 600", marker.display()),
        ),
        virtiofsd: script(&t.bin, "virtiofsd", "echo 'no share for you' >&2; exit 1"),
        ..HullVmm::default()
    };
    let e = hv.launch(&spec_with_share(&t.state)).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("exited with") && msg.contains("no share for you"),
        "{msg}"
    );
    assert!(!marker.exists());
}

#[tokio::test]
async fn wait_reports_the_vmm_exit_status_and_needs_no_share() {
    let t = setup();
    let hv = HullVmm {
        binary: script(&t.bin, "hull-vmm", "echo 'hull-vmm: bad' >&2; exit 3"),
        virtiofsd: t.bin.join("unused"),
        ..HullVmm::default()
    };
    let mut vm = hv.launch(&spec(&t.state)).await.unwrap();
    assert_eq!(vm.wait().await.unwrap().code(), Some(3));
    assert_eq!(vm.wait().await.unwrap().code(), Some(3));
    assert!(
        vm.diagnostics().contains("hull-vmm: bad"),
        "{}",
        vm.diagnostics()
    );
    vm.terminate().await;
}

fn uid_of(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().uid()
}

/// The jail as the shim sets it up: the pod's id owns the listener (not the vsock
/// directory), hull-vmm gets the flags, the id's lock lives as long as the VM, and nothing is
/// left once it is gone. Needs root (chown), as the shim has.
#[tokio::test]
async fn a_jailed_hull_vmm_gets_the_listener_not_the_vsock_directory_and_its_id_is_freed() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (chown), as the shim"
    );
    let t = setup();
    let s = spec(&t.state);
    std::fs::create_dir(t.state.join("vsock")).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&s.guest_listeners[0]).unwrap();
    let args_file = t.state.join("args");
    let locks = t.state.join("locks");
    let hv = HullVmm {
        binary: script(
            &t.bin,
            "hull-vmm",
            &format!("echo \"$@\" > {}; exec sleep 600", args_file.display()),
        ),
        jail: Some(super::JailRange::parse("60000-60001").unwrap()),
        jail_lock_dir: locks.clone(),
        ..HullVmm::default()
    };
    let mut vm = hv.launch(&s).await.unwrap();
    let mut args = String::new();
    for _ in 0..500 {
        args = std::fs::read_to_string(&args_file).unwrap_or_default();
        if args.ends_with('\n') {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let id = uid_of(&s.guest_listeners[0]);
    assert!(
        (60000..=60001).contains(&id),
        "the listener is owned by {id}"
    );
    // hull-vmm creates nothing there after its chroot: the directory stays root's.
    assert_eq!(uid_of(&t.state.join("vsock")), 0, "the vsock dir");
    assert!(
        args.contains(&format!(
            "--uid {id} --gid {id} --chroot {}",
            t.state.join("vsock").display()
        )),
        "{args}"
    );
    assert!(locks.join(format!("{id}.lock")).exists());
    // A second pod gets the other id; a third finds the range full and starts nothing.
    let other = tempfile::tempdir().unwrap();
    let mut s2 = spec(other.path());
    s2.id = "t2".into();
    std::fs::create_dir(other.path().join("vsock")).unwrap();
    let _l2 = std::os::unix::net::UnixListener::bind(&s2.guest_listeners[0]).unwrap();
    let mut vm2 = hv.launch(&s2).await.unwrap();
    assert_eq!(uid_of(&s2.guest_listeners[0]), 60001 - (id - 60000));
    let e = hv.launch(&s2).await.unwrap_err();
    assert!(e.to_string().contains("jail range 60000-60001"), "{e}");
    vm.terminate().await;
    vm2.terminate().await;
    drop((vm, vm2, listener));
    assert_eq!(
        std::fs::read_dir(&locks).unwrap().count(),
        0,
        "id locks left behind"
    );
}

/// Boots the real guest image with hull-vmm and virtiofsd (both from PATH) through the
/// VM lifecycle the shim uses, and checks the agent answers and the share is exported.
#[tokio::test]
#[ignore = "boots a Linux guest on hull-vmm: needs KVM that runs guest kernels natively \
            (not this host's kvm_pvm) or the nested harness; needs hull-vmm, virtiofsd and \
            the guest image (HULL_KERNEL/HULL_INITRD) installed"]
async fn hull_vmm_boots_the_guest_image_with_a_share_and_shuts_it_down() {
    let image = crate::image::GuestImage::from_env();
    let root = tempfile::tempdir().unwrap();
    let mut cfg = crate::vm::VmConfig::new(image.kernel, image.initrd);
    cfg.share = true;
    cfg.state_root = root.path().into();
    // Confined as the shim confines it by default: its own id, chrooted in the vsock dir.
    let hv = HullVmm {
        jail: Some(super::JailRange::parse("61000-61009").unwrap()),
        jail_lock_dir: root.path().join("locks"),
        ..HullVmm::default()
    };
    let vm = crate::vm::Vm::boot(&hv, "hullvmm-test", &cfg)
        .await
        .unwrap_or_else(|e| panic!("booting on hull-vmm: {e}"));
    let pids = vm.pids();
    assert_eq!(pids.len(), 2, "hull-vmm and virtiofsd");
    // hull-vmm dropped to the pod's id (every uid slot) and its root is the vsock directory;
    // the guest could still reach the shim's readiness listener (Vm::boot waited for it).
    let status = std::fs::read_to_string(format!("/proc/{}/status", pids[0])).unwrap();
    let uids = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    let id = uid_of(
        &vm.state_dir()
            .join(crate::vm::VSOCK_DIR)
            .join("vsock.sock_1025"),
    );
    assert!((61000..=61009).contains(&id), "{uids}");
    let id_text = id.to_string();
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        [id_text.as_str(); 4],
        "{uids}"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/root", pids[0])).unwrap(),
        vm.state_dir().join(crate::vm::VSOCK_DIR)
    );
    assert!(vm.share_dir().is_some());
    vm.agent().check().await.unwrap();
    let outcome = vm.shutdown(std::time::Duration::from_secs(10)).await;
    assert!(
        matches!(outcome, crate::vm::StopOutcome::Clean(s) if s.success()),
        "{outcome:?}"
    );
    assert!(pids.iter().all(|&p| !alive(p)));
    assert!(!root.path().join("hullvmm-test").exists());
    assert_eq!(
        std::fs::read_dir(root.path().join("locks"))
            .unwrap()
            .count(),
        0,
        "id locks left behind"
    );
}

/// A binary the pod's id cannot reach (root's home is 0700) fails with an error that says
/// which id and what to do. Needs root, as the shim.
#[tokio::test]
async fn a_daemon_the_pod_id_cannot_run_is_named_with_the_id_and_the_fix() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (to start a process as another id)"
    );
    let t = setup();
    let daemon = script(&t.bin, "only-root-can-reach-me", "exec sleep 600");
    std::fs::set_permissions(&t.bin, std::fs::Permissions::from_mode(0o700)).unwrap();
    let how = super::super::qemu::StartAs {
        pod: t.state.clone(),
        dir: Some(t.state.clone()),
        id: Some(60005),
    };
    let e =
        super::super::qemu::Helper::spawn(&daemon, &[], &t.state.join("d.log"), &how).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("as uid 60005") && msg.contains("Permission denied"),
        "{msg}"
    );
    assert!(
        msg.contains("/usr/local/bin") && msg.contains("jail_ids"),
        "{msg}"
    );
}
