//! How a VM ends: the first reason reported wins and wakes the VMM thread.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset itself (triple fault, i8042 reset, PSCI reset). With `reboot=t` this
    /// is how a Linux guest without ACPI reboots; hull treats it as the VM's end.
    Reset {
        /// What reset it.
        cause: String,
    },
    /// The guest powered off.
    PowerOff {
        /// How it did.
        cause: String,
    },
    /// The VMM's owner stopped the VM (the control socket's `shutdown`).
    Stopped {
        /// Who stopped it.
        by: String,
    },
    /// A vCPU failed in a way the VM cannot survive.
    VcpuError {
        /// The vCPU.
        index: u8,
        /// What happened.
        message: String,
    },
}

impl ExitReason {
    /// The process exit code for this reason: 0 when the guest ended itself or was stopped
    /// as asked, 1 on an error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExitReason::Reset { .. } | ExitReason::PowerOff { .. } | ExitReason::Stopped { .. } => {
                0
            }
            ExitReason::VcpuError { .. } => 1,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Reset { cause } => write!(f, "guest reset ({cause})"),
            ExitReason::PowerOff { cause } => write!(f, "guest powered off ({cause})"),
            ExitReason::Stopped { by } => write!(f, "stopped by {by}"),
            ExitReason::VcpuError { index, message } => write!(f, "vCPU {index} failed: {message}"),
        }
    }
}

/// Shared between vCPU threads, devices and the VMM thread: the first [`signal`] sets the
/// reason and wakes [`wait`]; later ones are ignored.
///
/// [`signal`]: ExitSignal::signal
/// [`wait`]: ExitSignal::wait
#[derive(Debug)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitSignal {
    /// A signal nobody has raised.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_CLOEXEC)?,
        })
    }

    /// Reports that the VM ended, unless an earlier reason was reported.
    pub fn signal(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            log::debug!("vm exit: {reason}");
            *r = Some(reason);
            // Only fails if the counter would overflow, which one write cannot do.
            let _ = self.evt.write(1);
        }
    }

    /// The reason, if one was reported.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Blocks until a reason is reported and returns it.
    pub fn wait(&self) -> std::io::Result<ExitReason> {
        loop {
            if let Some(r) = self.reason() {
                return Ok(r);
            }
            self.evt.read()?;
        }
    }
}

/// The eventfd that becomes readable once a reason is reported (for an event loop; only
/// [`ExitSignal::wait`] reads it).
impl AsRawFd for ExitSignal {
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_first_reason_wins_and_wakes_the_waiter() {
        let s = Arc::new(ExitSignal::new().unwrap());
        let waiter = {
            let s = s.clone();
            std::thread::spawn(move || s.wait().unwrap())
        };
        s.signal(ExitReason::Reset {
            cause: "triple fault".into(),
        });
        s.signal(ExitReason::VcpuError {
            index: 1,
            message: "late".into(),
        });
        let r = waiter.join().unwrap();
        assert_eq!(r.to_string(), "guest reset (triple fault)");
        assert_eq!(r.exit_code(), 0);
        assert_eq!(s.reason(), Some(r));
        assert_eq!(
            ExitReason::VcpuError {
                index: 0,
                message: String::new()
            }
            .exit_code(),
            1
        );
    }
}
