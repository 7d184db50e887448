//! The running VM: vCPU threads, and how the VM ends.
//!
//! [`Vm::run`] starts one thread per vCPU and then waits on the [`ExitSignal`], which the
//! first vCPU or device that sees the guest end (reset, power-off, a KVM error) raises.
//! With seccomp on ([`Vm::run_sandboxed`]) each thread installs its filter before guest
//! code runs. hull-vmm is one VM per process: once the reason is known, `run` flushes the
//! console and returns, and the process exit ends the vCPU threads still inside `KVM_RUN`.

mod exit;
mod vcpu;

use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

use kvm_ioctls::{Kvm, VmFd};
use thiserror::Error;

pub use exit::{ExitReason, ExitSignal};
pub use vcpu::Vcpu;

use crate::devices::serial::SerialDevice;
use crate::memory::GuestRam;
use crate::seccomp::{DeviceSpawner, Filters, SeccompError, ThreadKind};

/// Errors of running a built VM.
#[derive(Debug, Error)]
pub enum RunError {
    /// A vCPU thread could not be started.
    #[error("starting the thread of vCPU {index}: {source}")]
    SpawnVcpu {
        /// The vCPU.
        index: u8,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Waiting for the exit signal failed.
    #[error("waiting for the VM to end: {0}")]
    Wait(std::io::Error),
    /// A seccomp filter could not be installed.
    #[error(transparent)]
    InstallFilter(#[from] SeccompError),
}

/// A configured VM, ready to run.
#[derive(Debug)]
pub struct Vm {
    /// The vCPUs, configured for boot.
    pub(crate) vcpus: Vec<Vcpu>,
    /// How the VM ends.
    pub(crate) exit: Arc<ExitSignal>,
    /// The console, flushed at exit.
    pub(crate) serial: Arc<Mutex<SerialDevice>>,
    /// The console's interrupt eventfd (KVM holds it as an irqfd).
    pub(crate) serial_irq: vmm_sys_util::eventfd::EventFd,
    /// Guest memory; must outlive the VM fd (KVM maps it).
    pub(crate) ram: GuestRam,
    /// The VM fd.
    pub(crate) vm_fd: VmFd,
    /// The KVM system fd.
    pub(crate) kvm: Kvm,
    /// When hull-vmm started, for the time-to-first-`KVM_RUN` figure.
    pub(crate) started: Instant,
}

impl Vm {
    /// Guest memory, as the builder left it (for inspection before `run`).
    pub fn memory(&self) -> &vm_memory::GuestMemoryMmap {
        &self.ram.memory
    }

    /// The fd of vCPU `index` (for inspection before `run`).
    pub fn vcpu_fd(&self, index: u8) -> Option<&kvm_ioctls::VcpuFd> {
        self.vcpus.get(usize::from(index)).map(Vcpu::fd)
    }

    /// Runs the guest until it ends, without seccomp filters; returns why.
    pub fn run(self) -> Result<ExitReason, RunError> {
        self.run_sandboxed(None)
    }

    /// Runs the guest until it ends; returns why. With `filters`, every thread installs
    /// its seccomp filter (see [`crate::seccomp`]) before any guest code runs: the vCPU
    /// threads theirs at their start, the device spawner its own, and this thread the VMM
    /// filter once the others exist; the vCPUs enter `KVM_RUN` only after all of that.
    pub fn run_sandboxed(mut self, filters: Option<Arc<Filters>>) -> Result<ExitReason, RunError> {
        let vcpus = std::mem::take(&mut self.vcpus);
        let gate = Arc::new(Barrier::new(vcpus.len() + 1));
        let spawner = match &filters {
            Some(f) => Some(DeviceSpawner::start(f.clone()).map_err(RunError::InstallFilter)?),
            None => None,
        };
        for vcpu in vcpus {
            let index = vcpu.index();
            let (filters, spawner, gate) = (filters.clone(), spawner.clone(), gate.clone());
            let exit = self.exit.clone();
            std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    if let Some(Err(e)) = filters.map(|f| f.install(ThreadKind::Vcpu)) {
                        exit.signal(ExitReason::VcpuError {
                            index,
                            message: e.to_string(),
                        });
                        gate.wait();
                        return;
                    }
                    if let Some(s) = spawner {
                        s.bind_to_current_thread();
                    }
                    gate.wait();
                    vcpu.run()
                })
                .map_err(|source| RunError::SpawnVcpu { index, source })?;
        }
        if let Some(f) = &filters {
            f.install(ThreadKind::Vmm)
                .map_err(RunError::InstallFilter)?;
            log::info!("seccomp filters installed on every thread");
        }
        gate.wait();
        let reason = self.exit.wait().map_err(RunError::Wait)?;
        if let Err(e) = self
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush()
        {
            log::warn!("flushing the console: {e}");
        }
        log::debug!(
            "vm ends after {:?} with {} MiB of guest RAM ({:?}, {:?}, {:?})",
            self.started.elapsed(),
            self.ram
                .memfd
                .metadata()
                .map(|m| m.len() >> 20)
                .unwrap_or(0),
            self.vm_fd,
            self.kvm,
            self.serial_irq,
        );
        Ok(reason)
    }
}
