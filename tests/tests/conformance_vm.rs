//! The differential conformance corpus (issue 4) with hull-agent inside a real microVM
//! (QEMU backend; TCG on hosts without native KVM): the same bundles as the host-mode run
//! (`agent/tests/conformance.rs`, whose corpus and judge this file includes), each run under
//! the host's runc (the reference) and inside the guest, where the rootfs comes from the
//! virtio-fs pod share and stdio over vsock streams.
//!
//! The in-VM subset leaves out one case and allows differences that come from running in a
//! VM, each listed below with its reason; everything else must match runc exactly.

#[path = "../../agent/tests/support/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "../../agent/tests/support/conformance.rs"]
mod conformance;
#[allow(dead_code)]
#[path = "../../agent/tests/support/corpus.rs"]
mod corpus;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use common::*;
use conformance::Runc;
use corpus::{corpus, judge, print_report, run_all, Difference, DIFFERENCES};
use hull_protocol::agent::CreateSandboxRequest;
use hull_protocol::agent_ttrpc::AgentClient;
use hull_shim::agent::Agent;
use hull_shim::backend::qemu::SHARE_TAG;
use hull_shim::vm::Vm;
use tokio::net::UnixStream;

/// Cases left out in the VM, and why.
const NOT_IN_THE_VM: &[(&str, &str)] = &[(
    "mount-bind-ro",
    "its bind source is a host directory; in a VM, volume sources reach the guest through the \
     pod share (the shim puts them there), which the containerd tests cover",
)];

/// Differences that come from running in a VM rather than on the host.
const VM_DIFFERENCES: &[Difference] = &[Difference {
    case: "mount-table",
    what: "rootfs virtiofs; one cgroup2 mount; no /proc/acpi mask",
    why: "the container's rootfs comes from the pod's virtio-fs share; the guest runs cgroup v2 \
          alone (this host is v1/hybrid, so runc mounts a tmpfs of v1 hierarchies); the guest \
          kernel has no ACPI, so the masked path /proc/acpi does not exist to be masked. \
          Every other mount is the same, in the same order",
    expect: |mut o| {
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut lines = Vec::new();
        for l in text.lines() {
            match l {
                _ if l.starts_with("/ ") => lines.push("/ virtiofs".to_string()),
                "/sys/fs/cgroup tmpfs" => lines.push("/sys/fs/cgroup cgroup2".to_string()),
                _ if l.starts_with("/sys/fs/cgroup/") || l == "/proc/acpi tmpfs" => {}
                _ => lines.push(l.to_string()),
            }
        }
        o.stdout = (lines.join("\n") + "\n").into_bytes();
        o
    },
}];

/// hull-agent in a VM, as the corpus drives it.
struct VmTarget {
    agent: Agent,
    share: PathBuf,
}

impl Target for VmTarget {
    fn client(&self) -> &AgentClient {
        self.agent.raw().0
    }

    fn rootfs(&self, name: &str) -> String {
        busybox_rootfs(&self.share.join(name).join("rootfs"));
        format!("{name}/rootfs")
    }

    fn stream(&self, id: &str) -> impl Future<Output = UnixStream> + Send {
        let agent = self.agent.clone();
        let id = id.to_string();
        async move {
            agent
                .open_stream(&id)
                .await
                .unwrap_or_else(|e| panic!("stream {id}: {e}"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_in_a_vm_behaves_like_runc() {
    let root = tempfile::tempdir().unwrap();
    let hv = hull_tests::qemu_backend().await;
    let hv_is_tcg = hv.accel == hull_shim::backend::qemu::Accel::Tcg;
    let mut cfg = hull_tests::vm_config(root.path());
    cfg.share = true;
    cfg.memory_mib = 512;
    cfg.rpc_timeout = std::time::Duration::from_secs(60);
    let vm = Vm::boot(&hv, "conformance", &cfg).await.expect("boot");
    let share = vm.share_dir().expect("the VM has a share");
    let (client, ctx) = vm.agent().raw();
    client
        .create_sandbox(
            ctx,
            &CreateSandboxRequest {
                share_tag: SHARE_TAG.into(),
                ..Default::default()
            },
        )
        .await
        .expect("CreateSandbox");
    let target = Arc::new(VmTarget {
        agent: vm.agent().clone(),
        share,
    });

    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("file"), "from-the-host\n").unwrap();
    let cases: Vec<_> = corpus(host_dir.path())
        .into_iter()
        .filter(|c| NOT_IN_THE_VM.iter().all(|(n, _)| *n != c.name))
        .collect();
    assert!(
        cases.len() >= 30,
        "the in-VM subset must keep at least 30 bundles"
    );
    let runc = Arc::new(Runc::new());
    let started = Instant::now();
    // Two at a time: the guest has one vCPU, emulated.
    let results = run_all(target.clone(), runc.clone(), cases, "vm", 2).await;
    let elapsed = started.elapsed();
    let diffs: Vec<&Difference> = DIFFERENCES.iter().chain(VM_DIFFERENCES).collect();
    let (table, failures) = judge(&results, &diffs);
    print_report(&results, &diffs, "a VM (QEMU backend)", elapsed, &table);
    println!("\nleft out in the VM:");
    for (name, why) in NOT_IN_THE_VM {
        println!("  {name}: {why}");
    }
    assert_eq!(runc.leftovers(), "", "runc still lists containers");

    // stdout throughput from the guest (a figure for the report, not asserted: it depends on
    // the machine and, here, on TCG); the bytes are checked.
    let mib = 64;
    let spec = corpus::case_spec(&corpus::Case {
        name: "stdout-throughput",
        args: [
            "sh",
            "-c",
            &format!("dd if=/dev/zero bs=1M count={mib} 2>/dev/null"),
        ]
        .map(String::from)
        .to_vec(),
        patch: serde_json::json!({}),
        io: conformance::Io::default(),
        exit: 0,
        expect: &[],
        oom: false,
    });
    let t = Instant::now();
    let o =
        conformance::run_hull(target.as_ref(), "vm-throughput", &spec, &Default::default()).await;
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(o.exit, 0, "{:?}", o.error);
    assert_eq!(o.stdout.len(), mib << 20, "every byte of stdout arrives");
    assert!(o.stdout.iter().all(|b| *b == 0), "stdout arrives intact");
    println!(
        "\nstdout from a container in the VM: {mib} MiB in {secs:.2} s = {:.0} MiB/s \
         (guest on {}; includes create and start)",
        mib as f64 / secs,
        if hv_is_tcg { "TCG" } else { "KVM" }
    );
    drop(target);
    let outcome = vm.shutdown(std::time::Duration::from_secs(10)).await;
    assert!(
        matches!(outcome, hull_shim::vm::StopOutcome::Clean(_)),
        "the agent did not power the VM off: {outcome:?}"
    );
    hull_tests::assert_nothing_left(root.path());
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
