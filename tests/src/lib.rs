//! Shared infrastructure for hull's integration tests: where the guest image is, which
//! backend this host uses, and counting what a test left behind.
//!
//! Tests here boot the real guest kernel and agent. Where the image is missing they fail
//! with a message saying how to build it (`make test` does); they never skip silently.

use std::path::{Path, PathBuf};

use hull_shim::backend::qemu::Qemu;
use hull_shim::check::{self, BackendRequest};
use hull_shim::image::GuestImage;
use hull_shim::vm::VmConfig;

/// The guest image under test (`HULL_KERNEL`/`HULL_INITRD`, set by `make test`). Panics
/// with instructions if it is missing.
pub fn guest_image() -> GuestImage {
    let image = GuestImage::from_env();
    for p in [&image.kernel, &image.initrd] {
        assert!(
            p.is_file(),
            "guest image file {} is missing: run these tests through `make test`, which builds \
             the image and sets HULL_KERNEL/HULL_INITRD",
            p.display()
        );
    }
    image
}

/// The kernel release the guest image was built as (the `release` file beside `vmlinux`).
pub fn image_kernel_release(image: &GuestImage) -> String {
    let p = image.kernel.with_file_name("release");
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .trim()
        .to_string()
}

/// The QEMU backend as `hull check` would choose it on this host.
pub async fn qemu_backend() -> Qemu {
    let report = check::run(BackendRequest::Auto, &guest_image()).await;
    let choice = report
        .backend
        .unwrap_or_else(|e| panic!("no usable backend on this host: {e}"));
    check::hypervisor(&choice)
}

/// A VM configuration for the test image with its state under `state_root`.
pub fn vm_config(state_root: &Path) -> VmConfig {
    let image = guest_image();
    let mut c = VmConfig::new(image.kernel, image.initrd);
    c.state_root = state_root.to_path_buf();
    c
}

/// Pids of live (non-zombie) processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

/// Everything left under `root`: files, sockets, directories (recursive).
pub fn entries_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Asserts that nothing of the VMs under `state_root` survives: no process mentions it, no
/// file is left below it.
pub fn assert_nothing_left(state_root: &Path) {
    let needle = state_root.to_str().expect("utf-8 temp path");
    let procs = processes_mentioning(needle);
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
    let left = entries_under(state_root);
    assert!(left.is_empty(), "state left behind: {left:?}");
}
