//! One vCPU thread: `KVM_RUN` in a loop, routing port I/O and MMIO exits to the buses and
//! turning the guest's end (triple fault, system event, KVM error) into an [`ExitReason`].
//! Before each `KVM_RUN` the vCPU passes the pause gate ([`super::pause`]); every exit is
//! counted in its [`VcpuMetrics`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::pause::{ArmedKick, VcpuGate};
use super::{ExitReason, ExitSignal};
use crate::devices::Bus;
use crate::metrics::{self, VcpuMetrics};

/// A configured vCPU and what it needs to run.
#[derive(Debug)]
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitSignal>,
    started: Instant,
    metrics: Arc<VcpuMetrics>,
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
            metrics: Arc::default(),
        }
    }

    /// This vCPU's exit counters.
    pub fn metrics(&self) -> Arc<VcpuMetrics> {
        self.metrics.clone()
    }

    /// The vCPU's index (also its APIC id on x86_64).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The KVM vCPU fd.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Runs the vCPU until the VM ends (or `gate` stops it); reports the reason through the
    /// exit signal. Parks at `gate` while the VM is paused.
    pub fn run(mut self, gate: &VcpuGate) {
        gate.enter();
        let armed = ArmedKick::arm(self.fd.get_kvm_run());
        self.record_first_run();
        let reason = loop {
            if self.exit.reason().is_some() || !gate.pass() {
                break None;
            }
            match self.run_once() {
                Ok(None) => {}
                Ok(Some(reason)) => break Some(reason),
                // Kicked (pause, stop) or another signal: back to the gate.
                Err(Interrupted) => armed.clear(),
            }
        };
        drop(armed);
        gate.leave();
        if let Some(reason) = reason {
            self.exit.signal(reason);
        }
    }

    /// Notes when this vCPU first enters the guest (wall and process CPU time).
    fn record_first_run(&self) {
        let m = &self.metrics;
        let since_start = self.started.elapsed();
        let cpu_us = metrics::clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID) / 1000;
        let mono = metrics::clock_ns(libc::CLOCK_MONOTONIC);
        m.first_run_since_start_us.store(
            u64::try_from(since_start.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        m.first_run_process_cpu_us.store(cpu_us, Ordering::Relaxed);
        m.first_run_monotonic_ns.store(mono, Ordering::Relaxed);
        if self.index == 0 {
            // Machine-readable (key=value) for benchmarks; `hull bench vmm` reads the same
            // figures from the control socket.
            log::info!(
                "first KVM_RUN {:.1} ms after start: first_kvm_run since_start_us={} \
                 process_cpu_us={cpu_us} monotonic_ns={mono}",
                since_start.as_secs_f64() * 1e3,
                since_start.as_micros()
            );
        }
    }

    /// One `KVM_RUN`; `Ok(Some)` when the VM must end, `Err` when it was interrupted.
    fn run_once(&mut self) -> Result<Option<ExitReason>, Interrupted> {
        let index = self.index;
        let m = &*self.metrics;
        let count = |c: &std::sync::atomic::AtomicU64| metrics::add(c, 1);
        let error = |message: String| {
            count(&m.other);
            Some(ExitReason::VcpuError { index, message })
        };
        let exit = match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                count(&m.io_in);
                self.pio.read(u64::from(port), data);
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                count(&m.io_out);
                self.pio.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                count(&m.mmio_read);
                if !self.mmio.read(addr, data) {
                    log::debug!("vcpu{index}: unclaimed MMIO read at {addr:#x}");
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                count(&m.mmio_write);
                if !self.mmio.write(addr, data) {
                    log::debug!("vcpu{index}: unclaimed MMIO write at {addr:#x}");
                }
                None
            }
            // A triple fault: with `reboot=t` this is a Linux guest rebooting.
            Ok(VcpuExit::Shutdown) => {
                count(&m.halt_or_event);
                Some(ExitReason::Reset {
                    cause: format!("triple fault on vCPU {index}"),
                })
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_RESET => {
                    count(&m.halt_or_event);
                    Some(ExitReason::Reset {
                        cause: "system event".into(),
                    })
                }
                KVM_SYSTEM_EVENT_SHUTDOWN => {
                    count(&m.halt_or_event);
                    Some(ExitReason::PowerOff {
                        cause: "system event".into(),
                    })
                }
                KVM_SYSTEM_EVENT_CRASH => error("guest crash (system event)".into()),
                other => {
                    count(&m.halt_or_event);
                    log::debug!("vcpu{index}: ignoring system event {other}");
                    None
                }
            },
            // With the in-kernel irqchip HLT is handled by KVM; a HLT exit means the guest
            // halted with interrupts off for good.
            Ok(VcpuExit::Hlt) => {
                count(&m.halt_or_event);
                Some(ExitReason::PowerOff {
                    cause: format!("vCPU {index} halted"),
                })
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => error(format!(
                "KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x} on cpu {cpu}"
            )),
            Ok(VcpuExit::InternalError) => error("KVM_EXIT_INTERNAL_ERROR".into()),
            Ok(VcpuExit::Intr) => {
                count(&m.interrupted);
                return Err(Interrupted);
            }
            Ok(other) => error(format!("unexpected exit {other:?}")),
            // Interrupted by a signal (a kick): back to the gate.
            Err(e) if e.errno() == libc::EINTR => {
                count(&m.interrupted);
                return Err(Interrupted);
            }
            // Told to try again: run again.
            Err(e) if e.errno() == libc::EAGAIN => {
                count(&m.other);
                None
            }
            Err(e) => error(format!("KVM_RUN: {e}")),
        };
        Ok(exit)
    }
}

/// `KVM_RUN` returned without running the guest to an exit: a signal (the pause/stop kick)
/// interrupted it.
#[derive(Debug)]
struct Interrupted;
