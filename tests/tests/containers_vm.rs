//! Containers inside a real microVM: the pod share over virtio-fs (virtiofsd), the agent's
//! libcontainer in the guest (cgroup v2, no pivot_root on the initramfs), stdio over vsock
//! streams.

use std::time::Duration;

use hull_protocol::agent::*;
use hull_protocol::protobuf::MessageField;
use hull_shim::backend::qemu::SHARE_TAG;
use hull_shim::vm::{StopOutcome, Vm};
use hull_tests::{
    assert_nothing_left, busybox_rootfs, image_kernel_release, qemu_backend, vm_config,
};
use tokio::io::AsyncReadExt;

/// oci-spec's default spec (runc's `runc spec`) running `args` without a terminal.
fn spec_json(args: &[&str]) -> Vec<u8> {
    let mut spec = oci_spec::runtime::Spec::default();
    let mut p = spec.process().clone().unwrap();
    p.set_terminal(Some(false));
    p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    spec.set_process(Some(p));
    spec.set_hostname(Some("c1-host".into()));
    serde_json::to_vec(&spec).unwrap()
}

async fn read_all(mut s: tokio::net::UnixStream) -> String {
    let mut v = String::new();
    s.read_to_string(&mut v).await.unwrap();
    v
}

#[tokio::test]
async fn a_container_in_the_vm_runs_on_the_guest_kernel() {
    let root = tempfile::tempdir().unwrap();
    let hv = qemu_backend().await;
    let mut cfg = vm_config(root.path());
    cfg.share = true;
    let vm = Vm::boot(&hv, "pod1", &cfg).await.expect("boot");
    let share = vm.share_dir().expect("the VM has a share");
    busybox_rootfs(&share.join("c1/rootfs"));

    let (client, ctx) = vm.agent().raw();
    client
        .create_sandbox(
            ctx.clone(),
            &CreateSandboxRequest {
                hostname: "pod1".into(),
                share_tag: SHARE_TAG.into(),
                ..Default::default()
            },
        )
        .await
        .expect("CreateSandbox");

    let out = vm.agent().open_stream("c1-out").await.unwrap();
    client
        .create_container(
            ctx.clone(),
            &CreateContainerRequest {
                container_id: "c1".into(),
                spec_json: spec_json(&[
                    "sh",
                    "-c",
                    "uname -r; hostname; cat /proc/self/cgroup; exit 4",
                ]),
                rootfs: "c1/rootfs".into(),
                stdio: MessageField::some(StdioStreams {
                    stdout: "c1-out".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("CreateContainer");
    client
        .start_container(
            ctx.clone(),
            &ContainerRequest {
                container_id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .expect("Start");
    let w = client
        .wait_process(
            ctx.clone(),
            &ProcessRequest {
                container_id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .expect("Wait");
    let output = read_all(out).await;
    assert_eq!(w.exit_status, 4, "output: {output}");
    let mut lines = output.lines();
    assert_eq!(
        lines.next(),
        Some(image_kernel_release(&hull_tests::guest_image()).as_str())
    );
    assert_eq!(
        lines.next(),
        Some("c1-host"),
        "the spec's hostname, in its own UTS namespace"
    );
    assert_eq!(
        lines.next(),
        Some("0::/"),
        "cgroup v2 only, in its own cgroup namespace"
    );
    // The container's cgroup (v2, in the guest) outlives its processes until removal.
    let stats = client
        .stats_container(
            ctx.clone(),
            &ContainerRequest {
                container_id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .expect("Stats");
    assert!(stats.cpu_usage_usec > 0, "{stats:?}");
    assert_eq!(stats.pids_current, 0, "{stats:?}");
    // UpdateContainer reaches the guest's cgroup v2 (what the shim's Update passes on).
    client
        .update_container(
            ctx.clone(),
            &UpdateContainerRequest {
                container_id: "c1".into(),
                resources_json: br#"{"memory":{"limit":50000000},"pids":{"limit":64}}"#.to_vec(),
                ..Default::default()
            },
        )
        .await
        .expect("Update");
    let stats = client
        .stats_container(
            ctx.clone(),
            &ContainerRequest {
                container_id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .expect("Stats");
    // cgroup v2 rounds the limit down to whole pages.
    assert_eq!(
        stats.memory_limit_bytes,
        50_000_000 / 4096 * 4096,
        "{stats:?}"
    );
    assert_eq!(stats.pids_limit, 64, "{stats:?}");

    client
        .remove_container(
            ctx.clone(),
            &ContainerRequest {
                container_id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .expect("Remove");
    client
        .destroy_sandbox(ctx, &Empty::new())
        .await
        .expect("DestroySandbox");
    let outcome = vm.shutdown(Duration::from_secs(10)).await;
    assert!(matches!(outcome, StopOutcome::Clean(_)), "{outcome:?}");
    assert_nothing_left(root.path());
}
