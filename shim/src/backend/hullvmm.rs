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
//! Confinement ([`HullVmm::jail`], the config's `jail_ids`): each pod's hull-vmm
//! gets a uid and gid of its own ([`super::jail`]), builds the VM as root (it opens
//! `/dev/kvm`, the image, the console file, binds the vsock socket and connects to
//! virtiofsd), then chroots into the pod's vsock directory and becomes that id
//! (`--chroot`, `--uid`, `--gid`). The shim's `<uds>_<port>` listeners are given to the id
//! first, so the guest can still open connections to the host; the directory stays root's.
//! Without a range it runs with the shim's privileges.
//!
//! Not here: network and block devices.

use std::path::PathBuf;
use std::process::ExitStatus;

use async_trait::async_trait;

use super::jail::{self, JailId, JailRange, DEFAULT_LOCK_DIR};
use super::qemu::{terminate_all, virtiofs_socket, virtiofsd_args, Helper, StartAs, SHARE_TAG};
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
    /// The ids pods' hull-vmm processes run as, one each; `None`: the shim's own.
    pub jail: Option<JailRange>,
    /// Where the ids' locks live.
    pub jail_lock_dir: PathBuf,
}

impl Default for HullVmm {
    fn default() -> Self {
        HullVmm {
            binary: DEFAULT_HULL_VMM.into(),
            virtiofsd: super::qemu::DEFAULT_VIRTIOFSD.into(),
            jail: None,
            jail_lock_dir: DEFAULT_LOCK_DIR.into(),
        }
    }
}

/// The flags that confine hull-vmm to `id`, chrooted in the vsock directory.
pub fn jail_args(spec: &LaunchSpec, id: u32) -> Vec<String> {
    vec![
        "--uid".into(),
        id.to_string(),
        "--gid".into(),
        id.to_string(),
        "--chroot".into(),
        spec.vsock_dir().display().to_string(),
    ]
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
        let jail = match self.jail {
            // hull-vmm binds its socket as root before the chroot and creates nothing there
            // afterwards: the directory stays root's.
            Some(range) => Some(jail::for_pod(range, &self.jail_lock_dir, spec, false)?),
            None => None,
        };
        let mut args = hull_vmm_args(spec);
        if let Some(id) = &jail {
            args.extend(jail_args(spec, id.id()));
        }
        // virtiofsd first: hull-vmm connects to its socket while it builds the VM.
        let mut helpers = Vec::new();
        if let Some(share) = &spec.share_dir {
            helpers.push(
                Helper::start(
                    &self.virtiofsd,
                    &virtiofsd_args(spec, share),
                    &spec.state_dir.join("virtiofsd.log"),
                    &virtiofs_socket(spec),
                    &StartAs::of_pod(spec),
                )
                .await?,
            );
        }
        let vmm = match Helper::spawn(
            &self.binary,
            &args,
            &spec.state_dir.join("hull-vmm.log"),
            &StartAs::of_pod(spec),
        ) {
            Ok(v) => v,
            Err(e) => {
                terminate_all(&mut helpers).await;
                return Err(e);
            }
        };
        log::debug!(
            "{}: hull-vmm pid {:?} (uid {:?}), helper pids {:?}",
            spec.id,
            vmm.child.id(),
            jail.as_ref().map(JailId::id),
            helpers.iter().map(|h| h.child.id()).collect::<Vec<_>>()
        );
        Ok(Box::new(HullVmmVm {
            vmm,
            status: None,
            helpers,
            _jail: jail,
        }))
    }
}

/// The processes of one hull-vmm VM. Dropping it kills them (`kill_on_drop`), then frees
/// the VMM's id.
#[derive(Debug)]
pub struct HullVmmVm {
    vmm: Helper,
    status: Option<ExitStatus>,
    helpers: Vec<Helper>,
    // Last: the id is free only once the processes are gone.
    _jail: Option<JailId>,
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
