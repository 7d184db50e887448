//! The running VM: vCPU threads, and how the VM ends.
//!
//! [`Vm::run`] starts one thread per vCPU and then waits on the [`ExitSignal`], which the
//! first vCPU or device that sees the guest end (reset, power-off, a KVM error) raises, or
//! the control socket's `shutdown`, or SIGTERM ([`term`]). With seccomp on
//! ([`Vm::run_sandboxed`]) each thread installs its filter before guest code runs. With a
//! control socket ([`crate::api`]) this thread serves it while it waits. Once the reason is
//! known, `run` stops the vCPU threads (kick and join, bounded: [`control::STOP_TIMEOUT`]),
//! flushes the console and returns. Pause/resume: [`pause`].

mod control;
mod exit;
pub mod pause;
pub mod term;
mod vcpu;

use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

use kvm_ioctls::{Kvm, VmFd};
use thiserror::Error;

pub use control::VmControl;
pub use exit::{ExitReason, ExitSignal};
pub use vcpu::Vcpu;

use crate::api::ApiServer;
use crate::devices::serial::SerialDevice;
use crate::memory::GuestRam;
use crate::metrics::Metrics;
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
    /// The vCPU kick signal handler could not be installed.
    #[error("installing the vCPU kick signal handler: {0}")]
    KickHandler(std::io::Error),
    /// Serving the control socket failed.
    #[error("serving the control socket: {0}")]
    Api(std::io::Error),
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
    /// The control socket, if any.
    pub(crate) api: Option<ApiServer>,
    /// Device counters (the vCPUs' are added by `run`).
    pub(crate) metrics: Metrics,
}

impl Vm {
    /// Guest memory, as the builder left it (for inspection before `run`).
    pub fn memory(&self) -> &vm_memory::GuestMemoryMmap {
        &self.ram.memory
    }

    /// How the VM ends (to end it from outside, e.g. on SIGTERM: [`term`]).
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    /// The fd of vCPU `index` (for inspection before `run`).
    pub fn vcpu_fd(&self, index: u8) -> Option<&kvm_ioctls::VcpuFd> {
        self.vcpus.get(usize::from(index)).map(Vcpu::fd)
    }

    /// The devices' and console's counters as the builder wired them (vCPU counters join
    /// when the VM runs; the control socket's `metrics` reads them all).
    pub fn device_metrics(&self) -> crate::metrics::MetricsSnapshot {
        self.metrics.snapshot()
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
        pause::install_kick_handler().map_err(RunError::KickHandler)?;
        let vcpus = std::mem::take(&mut self.vcpus);
        let start = Arc::new(Barrier::new(vcpus.len() + 1));
        let spawner = match &filters {
            Some(f) => Some(DeviceSpawner::start(f.clone()).map_err(RunError::InstallFilter)?),
            None => None,
        };
        let mut metrics = self.metrics.clone();
        metrics.vcpus = vcpus.iter().map(Vcpu::metrics).collect();
        let mut control = VmControl {
            gate: Arc::default(),
            threads: Vec::with_capacity(vcpus.len()),
            exit: self.exit.clone(),
            metrics,
            started: self.started,
        };
        for vcpu in vcpus {
            let index = vcpu.index();
            let (filters, spawner, start) = (filters.clone(), spawner.clone(), start.clone());
            let (gate, exit) = (control.gate.clone(), self.exit.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    if let Some(Err(e)) = filters.map(|f| f.install(ThreadKind::Vcpu)) {
                        exit.signal(ExitReason::VcpuError {
                            index,
                            message: e.to_string(),
                        });
                        start.wait();
                        return;
                    }
                    if let Some(s) = spawner {
                        s.bind_to_current_thread();
                    }
                    start.wait();
                    vcpu.run(&gate)
                });
            match spawned {
                Ok(t) => control.threads.push(t),
                // The threads already started wait at `start` until the process ends
                // (hull-vmm exits on this error).
                Err(source) => return Err(RunError::SpawnVcpu { index, source }),
            }
        }
        if let Some(f) = &filters {
            f.install(ThreadKind::Vmm)
                .map_err(RunError::InstallFilter)?;
            log::info!("seccomp filters installed on every thread");
        }
        start.wait();
        let reason = match self.api.as_mut() {
            Some(api) => api.serve(&mut control, &self.exit).map_err(RunError::Api),
            None => self.exit.wait().map_err(RunError::Wait),
        };
        control.stop_vcpus();
        let reason = reason?;
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
