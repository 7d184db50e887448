//! The running VM's side of the control socket: what `pause`, `resume`, `shutdown`, `state`
//! and `metrics` do to the vCPU threads ([`VmControl`] implements [`api::Handler`]), and how
//! the vCPU threads are stopped when the VM ends.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::pause::{self, VcpuGate};
use super::{ExitReason, ExitSignal};
use crate::api::{self, Request, Response};
use crate::metrics::Metrics;

/// How long `pause` waits for every vCPU to park.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the end of the VM waits for vCPU threads to leave.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// The vCPU threads of a running VM and what the control socket needs to act on them.
#[derive(Debug)]
pub struct VmControl {
    /// The pause/stop gate the vCPU threads pass.
    pub gate: Arc<VcpuGate>,
    /// The vCPU threads, to kick them.
    pub threads: Vec<JoinHandle<()>>,
    /// How the VM ends.
    pub exit: Arc<ExitSignal>,
    /// The counters.
    pub metrics: Metrics,
    /// When hull-vmm started.
    pub started: Instant,
}

impl VmControl {
    fn kick_all(&self) {
        for t in &self.threads {
            pause::kick(t);
        }
    }

    /// Parks every vCPU; fails if one does not park within [`PAUSE_TIMEOUT`] (the pause
    /// stays requested and `state` says `pausing`).
    pub fn pause(&self) -> Result<(), String> {
        self.gate.request_pause();
        self.kick_all();
        self.gate
            .wait_parked(PAUSE_TIMEOUT)
            .map_err(|(parked, alive)| {
                format!(
                    "only {parked} of {alive} vCPUs parked within {} ms",
                    PAUSE_TIMEOUT.as_millis()
                )
            })
    }

    /// Stops the vCPU threads (the VM has ended) and joins those that left in time. A
    /// thread stuck in a device call is left behind; the process exit ends it.
    pub fn stop_vcpus(&mut self) {
        self.gate.stop();
        self.kick_all();
        if let Err(n) = self.gate.wait_all_left(STOP_TIMEOUT) {
            log::warn!("{n} vCPU threads did not stop within {STOP_TIMEOUT:?}");
        }
        for t in std::mem::take(&mut self.threads) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl api::Handler for VmControl {
    fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Pause => match self.pause() {
                Ok(()) => Response::Done,
                Err(e) => Response::Error(e),
            },
            Request::Resume => {
                self.gate.resume();
                Response::Done
            }
            Request::Shutdown => {
                self.exit.signal(ExitReason::Stopped {
                    by: "the control socket".into(),
                });
                Response::Done
            }
            Request::State => Response::State {
                state: match self.gate.state() {
                    // A VM that is ending is not running any more, whatever was asked.
                    _ if self.exit.reason().is_some() => "stopped",
                    s => s.as_str(),
                },
                uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                vcpus: self.threads.len(),
            },
            Request::Metrics => Response::Metrics(Box::new(self.metrics.snapshot())),
        }
    }
}
