//! Hypervisor backends: what it takes to start a microVM and stop its processes.
//!
//! A backend turns a [`LaunchSpec`] into running host processes that expose the guest's
//! vsock device as a hybrid-vsock unix socket at [`LaunchSpec::vsock_uds`]. That socket is
//! the only channel the rest of hull uses, so nothing above this module knows which
//! hypervisor runs the VM. Readiness, the agent connection and state-directory cleanup live
//! in [`crate::vm`], not here.

pub mod hullvmm;
pub mod jail;
pub mod qemu;
pub mod qemu_caps;

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use async_trait::async_trait;
use thiserror::Error;

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
    /// Where the backend must expose the hybrid-vsock unix socket. Its directory holds only
    /// vsock sockets (a confined VMM is chrooted into it).
    pub vsock_uds: PathBuf,
    /// The `<vsock_uds>_<port>` sockets the shim already listens on for guest-initiated
    /// connections; the hypervisor must be able to connect to them.
    pub guest_listeners: Vec<PathBuf>,
    /// Where the guest's serial console output goes.
    pub console_log: PathBuf,
    /// A host directory to export to the guest as the virtio-fs pod share, if any.
    pub share_dir: Option<PathBuf>,
}

impl LaunchSpec {
    /// The directory of the vsock sockets (`vsock_uds`'s).
    pub fn vsock_dir(&self) -> PathBuf {
        self.vsock_uds
            .parent()
            .map_or_else(|| self.state_dir.clone(), Path::to_path_buf)
    }
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
    /// A host binary could not be started as a pod's own id.
    #[error("starting {program} as uid {id}: {source}{hint}", hint = spawn_as_hint(source))]
    SpawnAs {
        /// The program.
        program: PathBuf,
        /// The id.
        id: u32,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The QEMU installed cannot drop to a pod's own id.
    #[error(
        "{program} cannot be confined to a pod's own id ({reason}); set jail_ids = \"\" to \
         run it as root"
    )]
    QemuCannotConfine {
        /// The QEMU binary.
        program: PathBuf,
        /// Why.
        reason: String,
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
    /// The pod's own identity could not be taken or set up.
    #[error("confining the VM's processes: {0}")]
    Jail(#[from] jail::JailError),
    /// Writing a file into the state directory failed.
    #[error("writing {path}: {source}")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// What to do about a program a pod's id could not start: only a permission problem has a
/// fix to suggest.
fn spawn_as_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EACCES) => {
            " (install it where every user can run it, e.g. /usr/local/bin, or set \
             jail_ids = \"\" to run it as root)"
        }
        Some(libc::EPERM) => " (changing to a pod's id needs root, as the shim has)",
        _ => "",
    }
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
