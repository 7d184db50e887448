//! The running VM: vCPU threads, and how the VM ends.
//!
//! [`Vm::run`] starts one thread per vCPU and then waits on the [`ExitSignal`], which the
//! first vCPU or device that sees the guest end (reset, power-off, a KVM error) raises, or
//! the control socket's `shutdown`. With a control socket ([`crate::api`]) this thread
//! serves it while it waits. Once the reason is known, `run` stops the vCPU threads (kick
//! and join, bounded: [`control::STOP_TIMEOUT`]), flushes the console and returns.
//! Pause/resume: [`pause`].

mod control;
mod exit;
pub mod pause;
pub mod term;
mod vcpu;

use std::sync::{Arc, Mutex};
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

    /// Runs the guest until it ends; returns why.
    pub fn run(mut self) -> Result<ExitReason, RunError> {
        pause::install_kick_handler().map_err(RunError::KickHandler)?;
        let vcpus = std::mem::take(&mut self.vcpus);
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
            let gate = control.gate.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || vcpu.run(&gate));
            match spawned {
                Ok(t) => control.threads.push(t),
                Err(source) => {
                    control.stop_vcpus();
                    return Err(RunError::SpawnVcpu { index, source });
                }
            }
        }
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
