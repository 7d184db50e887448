//! Hypervisor backends: what it takes to start a microVM and stop its processes.
//!
//! A backend turns a [`LaunchSpec`] into running host processes that expose the guest's
//! vsock device as a hybrid-vsock unix socket at [`LaunchSpec::vsock_uds`]. That socket is
//! the only channel the rest of hull uses, so nothing above this module knows which
//! hypervisor runs the VM. Readiness, the agent connection and state-directory cleanup live
//! in [`crate::vm`], not here.

pub mod hullvmm;
pub mod qemu;

use std::fmt::Debug;
use std::path::PathBuf;
use std::process::ExitStatus;

use async_trait::async_trait;
use thiserror::Error;

use crate::kvm_probe::KvmVerdict;

/// Everything a backend needs to start one VM. Paths are absolute; the state directory
/// exists and belongs to this VM alone.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The VM's id (also its state directory's name).
    pub id: String,
    /// Directory for every file of this VM (sockets, logs, pid file).
    pub state_dir: PathBuf,
    /// Guest kernel: PVH ELF `vmlinux` or `bzImage`.
    pub kernel: PathBuf,
    /// Initramfs whose `/init` is hull-agent.
    pub initrd: PathBuf,
    /// The complete guest kernel command line.
    pub cmdline: String,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Where the backend must expose the hybrid-vsock unix socket.
    pub vsock_uds: PathBuf,
    /// Where the guest's serial console output goes.
    pub console_log: PathBuf,
    /// A host directory to export to the guest as the virtio-fs pod share, if any.
    pub share_dir: Option<PathBuf>,
}

/// Errors of starting or stopping a VM's processes.
#[derive(Debug, Error)]
pub enum BackendError {
    /// A host binary the backend needs could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A helper process exited or failed to come up before the VM could start.
    #[error("{program} did not come up: {reason}")]
    HelperFailed {
        /// The program.
        program: PathBuf,
        /// What happened, with the tail of its log.
        reason: String,
    },
    /// The hypervisor exited at once, typically because it rejected its arguments.
    #[error("{program} exited during start-up with {status}: {log}")]
    EarlyExit {
        /// The hypervisor binary.
        program: PathBuf,
        /// Its exit status.
        status: ExitStatus,
        /// The tail of its log.
        log: String,
    },
    /// Waiting for a process failed.
    #[error("waiting for {program}: {source}")]
    Wait {
        /// The program.
        program: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Writing a file into the state directory failed.
    #[error("writing {path}: {source}")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A hypervisor that can start VMs.
#[async_trait]
pub trait Hypervisor: Send + Sync + Debug {
    /// Short name for logs and `hull check` (`qemu`, `hull-vmm`).
    fn name(&self) -> &'static str;

    /// Starts the VM's processes. Returns once the hypervisor runs; the guest may still be
    /// booting. On error, every process this call started has been killed and reaped.
    async fn launch(&self, spec: &LaunchSpec) -> Result<Box<dyn VmProcesses>, BackendError>;
}

/// The host processes of one running VM. Dropping it kills them (SIGKILL) as a last
/// resort; callers should call [`VmProcesses::terminate`] so they are also reaped.
#[async_trait]
pub trait VmProcesses: Send + Debug {
    /// Waits until the hypervisor process exits (the guest powered off, rebooted or
    /// crashed). Cancel-safe: may be used in `select!` and called again.
    async fn wait(&mut self) -> Result<ExitStatus, BackendError>;

    /// Kills every process of this VM that is still running (hypervisor and helpers) and
    /// reaps them. Idempotent.
    async fn terminate(&mut self);

    /// Host pids of the VM's processes, hypervisor first.
    fn pids(&self) -> Vec<u32>;

    /// The tails of the backend's own logs, for error messages.
    fn diagnostics(&self) -> String;
}

/// The hypervisor backends hull has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// QEMU microvm (KVM or TCG) with vhost-user helpers ([`qemu`]).
    Qemu,
    /// hull's own KVM VMM ([`hullvmm`]).
    HullVmm,
}

/// The backend a configuration or command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestedBackend {
    /// The best this host runs: see [`resolve_backend`].
    #[default]
    Auto,
    /// QEMU.
    Qemu,
    /// hull-vmm.
    HullVmm,
}

impl std::str::FromStr for RequestedBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(RequestedBackend::Auto),
            "qemu" => Ok(RequestedBackend::Qemu),
            "hull-vmm" => Ok(RequestedBackend::HullVmm),
            other => Err(format!(
                "unknown backend {other:?} (expected auto, qemu or hull-vmm)"
            )),
        }
    }
}

/// Picks the backend for `requested` given `hull check`'s KVM verdict. `auto` takes
/// hull-vmm only where KVM runs guest kernel code natively, QEMU (KVM or TCG) everywhere
/// else. hull-vmm asked for by name where KVM is not native is refused: no Linux guest
/// would boot (hull-vmm has no software emulation).
pub fn resolve_backend(
    requested: RequestedBackend,
    kvm: KvmVerdict,
) -> Result<BackendKind, String> {
    match (requested, kvm) {
        (RequestedBackend::Qemu, _) => Ok(BackendKind::Qemu),
        (RequestedBackend::HullVmm | RequestedBackend::Auto, KvmVerdict::Native) => {
            Ok(BackendKind::HullVmm)
        }
        (RequestedBackend::Auto, _) => Ok(BackendKind::Qemu),
        (RequestedBackend::HullVmm, v) => Err(format!(
            "backend hull-vmm was asked for, but KVM is {v:?} on this host (hull-vmm needs \
             KVM that runs guest kernel code natively; use qemu)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_hull_vmm_only_on_native_kvm() {
        use KvmVerdict::*;
        assert_eq!(
            resolve_backend(RequestedBackend::Auto, Native),
            Ok(BackendKind::HullVmm)
        );
        for v in [Emulated, Unavailable] {
            assert_eq!(
                resolve_backend(RequestedBackend::Auto, v),
                Ok(BackendKind::Qemu)
            );
            let e = resolve_backend(RequestedBackend::HullVmm, v).unwrap_err();
            assert!(e.contains(&format!("{v:?}")), "{e}");
        }
        for v in [Native, Emulated, Unavailable] {
            assert_eq!(
                resolve_backend(RequestedBackend::Qemu, v),
                Ok(BackendKind::Qemu)
            );
        }
        assert_eq!(
            resolve_backend(RequestedBackend::HullVmm, Native),
            Ok(BackendKind::HullVmm)
        );
    }

    #[test]
    fn backend_names_parse() {
        assert_eq!("auto".parse(), Ok(RequestedBackend::Auto));
        assert_eq!("qemu".parse(), Ok(RequestedBackend::Qemu));
        assert_eq!("hull-vmm".parse(), Ok(RequestedBackend::HullVmm));
        assert!("firecracker"
            .parse::<RequestedBackend>()
            .unwrap_err()
            .contains("firecracker"));
    }
}
