//! The hull-vmm backend: hull's own KVM VMM (`vmm/`), with the pod share served by
//! `virtiofsd` over vhost-user exactly as on the QEMU path.
//!
//! hull-vmm has vsock built in (it binds the hybrid-vsock socket itself, `--vsock-uds`), so
//! the only helper is one `virtiofsd` per VM with a share; it exits when hull-vmm
//! disconnects, and [`HullVmmVm::terminate`] kills it anyway. hull-vmm needs KVM that runs
//! guest kernel code natively: [`crate::check::resolve_backend`] picks it only there.
//!
//! hull-vmm runs with its per-thread seccomp filters (its default; this backend never
//! passes `--no-seccomp`).
//!
//! Not here: `--uid/--gid/--chroot` (hull-vmm runs as the shim's child with the shim's
//! privileges). Not trivial: it needs a per-pod user, a chroot holding the pod's
//! hybrid-vsock socket and `<uds>_<port>` listeners connectable by that user, and the
//! virtiofsd socket opened before the drop; left for a later change. Network and block
//! devices.

use std::path::PathBuf;
use std::process::ExitStatus;

use async_trait::async_trait;

use super::qemu::{terminate_all, virtiofs_socket, virtiofsd_args, Helper, SHARE_TAG};
use super::{BackendError, Hypervisor, LaunchSpec, VmProcesses};
use crate::util::tail_of_file;

/// Default VMM binary (looked up in PATH).
pub const DEFAULT_HULL_VMM: &str = "hull-vmm";

/// The hull-vmm backend's settings.
#[derive(Debug, Clone)]
pub struct HullVmm {
    /// `hull-vmm` (a name is looked up in PATH).
    pub binary: PathBuf,
    /// `virtiofsd` (a name is looked up in PATH), for VMs with a share.
    pub virtiofsd: PathBuf,
}

impl Default for HullVmm {
    fn default() -> Self {
        HullVmm {
            binary: DEFAULT_HULL_VMM.into(),
            virtiofsd: super::qemu::DEFAULT_VIRTIOFSD.into(),
        }
    }
}

/// hull-vmm's command line for `spec` (without the binary).
pub fn hull_vmm_args(spec: &LaunchSpec) -> Vec<String> {
    let mut a: Vec<String> = [
        "--kernel",
        &spec.kernel.display().to_string(),
        "--initrd",
        &spec.initrd.display().to_string(),
        "--cmdline",
        &spec.cmdline,
        "--vcpus",
        &spec.vcpus.to_string(),
        "--memory-mib",
        &spec.memory_mib.to_string(),
        "--console",
        &spec.console_log.display().to_string(),
        "--vsock-uds",
        &spec.vsock_uds.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if spec.share_dir.is_some() {
        a.push("--fs".into());
        a.push(format!("{SHARE_TAG}={}", virtiofs_socket(spec).display()));
    }
    a
}

#[async_trait]
impl Hypervisor for HullVmm {
    fn name(&self) -> &'static str {
        "hull-vmm"
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<Box<dyn VmProcesses>, BackendError> {
        // virtiofsd first: hull-vmm connects to its socket while it builds the VM.
        let mut helpers = Vec::new();
        if let Some(share) = &spec.share_dir {
            helpers.push(
                Helper::start(
                    &self.virtiofsd,
                    &virtiofsd_args(spec, share),
                    &spec.state_dir.join("virtiofsd.log"),
                    &virtiofs_socket(spec),
                )
                .await?,
            );
        }
        let vmm = match Helper::spawn(
            &self.binary,
            &hull_vmm_args(spec),
            &spec.state_dir.join("hull-vmm.log"),
        ) {
            Ok(v) => v,
            Err(e) => {
                terminate_all(&mut helpers).await;
                return Err(e);
            }
        };
        log::debug!(
            "{}: hull-vmm pid {:?}, helper pids {:?}",
            spec.id,
            vmm.child.id(),
            helpers.iter().map(|h| h.child.id()).collect::<Vec<_>>()
        );
        Ok(Box::new(HullVmmVm {
            vmm,
            status: None,
            helpers,
        }))
    }
}

/// The processes of one hull-vmm VM. Dropping it kills them (`kill_on_drop`).
#[derive(Debug)]
pub struct HullVmmVm {
    vmm: Helper,
    status: Option<ExitStatus>,
    helpers: Vec<Helper>,
}

#[async_trait]
impl VmProcesses for HullVmmVm {
    async fn wait(&mut self) -> Result<ExitStatus, BackendError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let status = self
            .vmm
            .child
            .wait()
            .await
            .map_err(|source| BackendError::Wait {
                program: self.vmm.program.clone(),
                source,
            })?;
        self.status = Some(status);
        Ok(status)
    }

    async fn terminate(&mut self) {
        // The VMM first: virtiofsd then sees its frontend go away.
        self.vmm.terminate().await;
        terminate_all(&mut self.helpers).await;
    }

    fn pids(&self) -> Vec<u32> {
        std::iter::once(&self.vmm)
            .chain(&self.helpers)
            .filter_map(|h| h.child.id())
            .collect()
    }

    fn diagnostics(&self) -> String {
        std::iter::once((&self.vmm, 10))
            .chain(self.helpers.iter().map(|h| (h, 5)))
            .map(|(h, n)| format!("{}: {}", h.name(), tail_of_file(&h.log, n)))
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

#[cfg(test)]
#[path = "hullvmm_tests.rs"]
mod tests;
