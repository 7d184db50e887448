//! One vCPU thread: `KVM_RUN` in a loop, routing port I/O and MMIO exits to the buses and
//! turning the guest's end (triple fault, system event, KVM error) into an [`ExitReason`].

use std::sync::Arc;
use std::time::Instant;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::{ExitReason, ExitSignal};
use crate::devices::Bus;

/// A configured vCPU and what it needs to run.
#[derive(Debug)]
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitSignal>,
    started: Instant,
}

impl Vcpu {
    /// A vCPU whose fd is already configured for boot.
    pub(crate) fn new(
        index: u8,
        fd: VcpuFd,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: Arc<ExitSignal>,
        started: Instant,
    ) -> Self {
        Vcpu {
            index,
            fd,
            pio,
            mmio,
            exit,
            started,
        }
    }

    /// The vCPU's index (also its APIC id on x86_64).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The KVM vCPU fd.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Runs the vCPU until the VM ends; reports the reason through the exit signal.
    pub fn run(mut self) {
        if self.index == 0 {
            log::info!(
                "first KVM_RUN {:.1} ms after start",
                self.started.elapsed().as_secs_f64() * 1e3
            );
        }
        let reason = loop {
            if self.exit.reason().is_some() {
                return;
            }
            if let Some(reason) = self.run_once() {
                break reason;
            }
        };
        self.exit.signal(reason);
    }

    /// One `KVM_RUN`; `Some` when the VM must end.
    fn run_once(&mut self) -> Option<ExitReason> {
        let index = self.index;
        let error = |message: String| Some(ExitReason::VcpuError { index, message });
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                self.pio.read(u64::from(port), data);
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                self.pio.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    log::debug!("vcpu{index}: unclaimed MMIO read at {addr:#x}");
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !self.mmio.write(addr, data) {
                    log::debug!("vcpu{index}: unclaimed MMIO write at {addr:#x}");
                }
                None
            }
            // A triple fault: with `reboot=t` this is a Linux guest rebooting.
            Ok(VcpuExit::Shutdown) => Some(ExitReason::Reset {
                cause: format!("triple fault on vCPU {index}"),
            }),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_RESET => Some(ExitReason::Reset {
                    cause: "system event".into(),
                }),
                KVM_SYSTEM_EVENT_SHUTDOWN => Some(ExitReason::PowerOff {
                    cause: "system event".into(),
                }),
                KVM_SYSTEM_EVENT_CRASH => error("guest crash (system event)".into()),
                other => {
                    log::debug!("vcpu{index}: ignoring system event {other}");
                    None
                }
            },
            // With the in-kernel irqchip HLT is handled by KVM; a HLT exit means the guest
            // halted with interrupts off for good.
            Ok(VcpuExit::Hlt) => Some(ExitReason::PowerOff {
                cause: format!("vCPU {index} halted"),
            }),
            Ok(VcpuExit::FailEntry(reason, cpu)) => error(format!(
                "KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x} on cpu {cpu}"
            )),
            Ok(VcpuExit::InternalError) => error("KVM_EXIT_INTERNAL_ERROR".into()),
            Ok(VcpuExit::Intr) => None,
            Ok(other) => error(format!("unexpected exit {other:?}")),
            // Interrupted by a signal, or told to try again: run again.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => error(format!("KVM_RUN: {e}")),
        }
    }
}
