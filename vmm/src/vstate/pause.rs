//! Pausing, resuming and stopping vCPU threads: a gate every vCPU passes before each
//! `KVM_RUN`, and the kick that gets a vCPU out of `KVM_RUN`.
//!
//! **Gate.** [`VcpuGate`] holds what the VMM thread wants (run, pause, stop) and how many
//! vCPU threads are alive and parked. A vCPU calls [`VcpuGate::pass`] before every
//! `KVM_RUN`: while a pause is wanted it parks on a condition variable (and counts itself
//! parked); it returns `false` once the VM stops.
//!
//! **Kick.** A vCPU inside `KVM_RUN` never looks at the gate, so [`kick`] sends its thread
//! [`kick_signal`] (a real-time signal) with `pthread_kill`. The handler
//! ([`install_kick_handler`]) sets `kvm_run.immediate_exit` of the vCPU that thread runs,
//! found through a thread-local pointer that [`ArmedKick`] sets for the life of the vCPU
//! loop. That closes the race a bare signal leaves: a vCPU that already passed the gate but
//! has not entered `KVM_RUN` yet gets `EINTR` on entry instead of running on; a vCPU inside
//! the guest leaves with `EINTR` (KVM completes pending port/MMIO I/O first). After every
//! `EINTR` the vCPU clears the flag and goes back to the gate.
//!
//! Not here: saving vCPU or device state (snapshots). Device threads (vsock) keep running
//! while the vCPUs are paused: host data can still land in RX buffers the guest posted.

use std::cell::Cell;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// Offset of the kick from `SIGRTMIN` (real-time signals are not used by the C library).
const KICK_SIGNAL_OFFSET: libc::c_int = 0;

/// What the VMM wants from the vCPUs, and where they are.
#[derive(Debug, Default)]
struct GateState {
    pause: bool,
    stop: bool,
    /// vCPU threads between [`VcpuGate::enter`] and [`VcpuGate::leave`].
    alive: usize,
    /// Of those, parked in [`VcpuGate::pass`].
    parked: usize,
}

/// Where the vCPUs are, as [`VcpuGate::state`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// No pause requested.
    Running,
    /// A pause was requested and some vCPUs have not parked yet.
    Pausing,
    /// Every live vCPU is parked.
    Paused,
}

impl RunState {
    /// The name the control socket uses.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Pausing => "pausing",
            RunState::Paused => "paused",
        }
    }
}

/// The pause/stop gate shared by the VMM thread and the vCPU threads.
#[derive(Debug, Default)]
pub struct VcpuGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

impl VcpuGate {
    /// A gate that lets vCPUs run.
    pub fn new() -> Self {
        VcpuGate::default()
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        // Nothing panics while holding this lock; if something did, the counts are still
        // the best information there is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A vCPU thread starts (before its first [`pass`](Self::pass)).
    pub fn enter(&self) {
        self.lock().alive += 1;
        self.changed.notify_all();
    }

    /// A vCPU thread ends.
    pub fn leave(&self) {
        let mut s = self.lock();
        s.alive = s.alive.saturating_sub(1);
        drop(s);
        self.changed.notify_all();
    }

    /// Called by a vCPU before each `KVM_RUN`: parks while a pause is wanted; `false` when
    /// the VM stops and the vCPU must end.
    pub fn pass(&self) -> bool {
        let mut s = self.lock();
        if s.pause && !s.stop {
            s.parked += 1;
            self.changed.notify_all();
            while s.pause && !s.stop {
                s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            s.parked -= 1;
            self.changed.notify_all();
        }
        !s.stop
    }

    /// Asks the vCPUs to park (they still have to be kicked out of `KVM_RUN`).
    pub fn request_pause(&self) {
        self.lock().pause = true;
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        self.lock().pause = false;
        self.changed.notify_all();
    }

    /// Tells every vCPU to end; parked ones wake up.
    pub fn stop(&self) {
        self.lock().stop = true;
        self.changed.notify_all();
    }

    /// Whether a stop was requested.
    pub fn stopping(&self) -> bool {
        self.lock().stop
    }

    /// Waits until every live vCPU is parked; on timeout returns `Err((parked, alive))`.
    pub fn wait_parked(&self, timeout: Duration) -> Result<(), (usize, usize)> {
        self.wait_until(timeout, |s| s.parked == s.alive)
            .map_err(|s| (s.parked, s.alive))
    }

    /// Waits until no vCPU thread is alive; on timeout returns how many still are.
    pub fn wait_all_left(&self, timeout: Duration) -> Result<(), usize> {
        self.wait_until(timeout, |s| s.alive == 0)
            .map_err(|s| s.alive)
    }

    fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&GateState) -> bool,
    ) -> Result<(), GateSummary> {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while !done(&s) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(GateSummary {
                    parked: s.parked,
                    alive: s.alive,
                });
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Running, pausing or paused.
    pub fn state(&self) -> RunState {
        let s = self.lock();
        match (s.pause, s.parked == s.alive) {
            (false, _) => RunState::Running,
            (true, false) => RunState::Pausing,
            (true, true) => RunState::Paused,
        }
    }
}

/// Counts at the moment a wait gave up.
#[derive(Debug, Clone, Copy)]
struct GateSummary {
    parked: usize,
    alive: usize,
}

thread_local! {
    /// `kvm_run.immediate_exit` of the vCPU this thread runs, or null. Const-initialised and
    /// without a destructor, so the signal handler can read it at any time.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = IMMEDIATE_EXIT.with(Cell::get);
    if !p.is_null() {
        // SAFETY: a non-null pointer was set by `ArmedKick::arm` on this very thread and
        // points into the vCPU's `kvm_run` mapping, which stays mapped until the `ArmedKick`
        // (dropped before the vCPU fd) resets the pointer. The byte is shared with the
        // kernel, which reads it on the next KVM_RUN; a volatile byte store is all we do,
        // and it is async-signal-safe.
        unsafe { p.write_volatile(1) };
    }
}

/// Installs the kick handler for the whole process (idempotent).
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), handle_kick).map_err(std::io::Error::from)
}

/// Kicks the vCPU running on `thread` out of `KVM_RUN`. A thread that has already ended is
/// not an error.
pub fn kick<T>(thread: &std::thread::JoinHandle<T>) {
    if thread.is_finished() {
        return;
    }
    if let Err(e) = thread.kill(kick_signal()) {
        log::debug!("kicking a vCPU thread: {e}");
    }
}

/// While alive, the kick handler on this thread sets `immediate_exit` of one vCPU.
#[derive(Debug)]
pub struct ArmedKick {
    flag: *mut u8,
}

impl ArmedKick {
    /// Arms the kick for the vCPU whose `kvm_run` is `run`, on the calling thread. The
    /// returned guard must be dropped before the vCPU fd (which unmaps `kvm_run`).
    pub fn arm(run: &mut kvm_bindings::kvm_run) -> Self {
        let flag = std::ptr::addr_of_mut!(run.immediate_exit);
        IMMEDIATE_EXIT.with(|c| c.set(flag));
        ArmedKick { flag }
    }

    /// Clears `immediate_exit` (after `KVM_RUN` returned `EINTR`), so the next `KVM_RUN`
    /// enters the guest unless another kick arrives.
    pub fn clear(&self) {
        // SAFETY: `flag` points into the live `kvm_run` mapping (see `arm`); a volatile byte
        // store, the same kind the signal handler does on this thread.
        unsafe { self.flag.write_volatile(0) };
    }
}

impl Drop for ArmedKick {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// Fake vCPUs: loops that count while the gate lets them pass.
    fn spawn(gate: &Arc<VcpuGate>, progress: &Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
        let (gate, progress) = (gate.clone(), progress.clone());
        std::thread::spawn(move || {
            gate.enter();
            while gate.pass() {
                progress.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
            }
            gate.leave();
        })
    }

    #[test]
    fn paused_vcpus_make_no_progress_until_resumed_and_stop_wakes_them() {
        let gate = Arc::new(VcpuGate::new());
        let progress = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..3).map(|_| spawn(&gate, &progress)).collect();
        gate.wait_until(Duration::from_secs(5), |s| s.alive == 3)
            .unwrap();
        assert_eq!(gate.state(), RunState::Running);
        gate.request_pause();
        gate.wait_parked(Duration::from_secs(5)).unwrap();
        assert_eq!(gate.state(), RunState::Paused);
        let before = progress.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(progress.load(Ordering::Relaxed), before);
        gate.resume();
        assert_eq!(gate.state(), RunState::Running);
        let t = Instant::now();
        while progress.load(Ordering::Relaxed) == before {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "no progress after resume"
            );
            std::thread::yield_now();
        }
        gate.request_pause();
        gate.wait_parked(Duration::from_secs(5)).unwrap();
        gate.stop();
        gate.wait_all_left(Duration::from_secs(5)).unwrap();
        for t in threads {
            t.join().unwrap();
        }
        assert!(!gate.pass(), "a stopped gate lets nobody through");
    }

    #[test]
    fn a_vcpu_that_never_parks_makes_the_wait_time_out_with_counts() {
        let gate = VcpuGate::new();
        gate.enter();
        gate.request_pause();
        assert_eq!(gate.state(), RunState::Pausing);
        assert_eq!(gate.wait_parked(Duration::from_millis(20)), Err((0, 1)));
        assert_eq!(gate.wait_all_left(Duration::from_millis(1)), Err(1));
        gate.leave();
        assert_eq!(
            gate.state(),
            RunState::Paused,
            "no live vCPU is left unparked"
        );
    }

    #[test]
    fn the_kick_sets_the_armed_flag_of_its_own_thread_only() {
        install_kick_handler().unwrap();
        let mut run = Box::new(kvm_bindings::kvm_run::default());
        let mut other = Box::new(kvm_bindings::kvm_run::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let armed_other = ArmedKick::arm(&mut other);
        let t = std::thread::spawn(move || {
            let armed = ArmedKick::arm(&mut run);
            tx.send(()).unwrap();
            let t = Instant::now();
            // SAFETY: (test) `run` is alive; a volatile read of the byte the handler writes.
            while unsafe { std::ptr::read_volatile(&run.immediate_exit) } == 0 {
                assert!(t.elapsed() < Duration::from_secs(5), "kick not delivered");
                std::thread::yield_now();
            }
            armed.clear();
            drop(armed);
            run.immediate_exit
        });
        rx.recv().unwrap();
        kick(&t);
        assert_eq!(t.join().unwrap(), 0, "cleared after the kick");
        assert_eq!(
            other.immediate_exit, 0,
            "another thread's vCPU is not touched"
        );
        drop(armed_other);
    }
}
