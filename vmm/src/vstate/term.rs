//! SIGTERM and SIGINT as an orderly stop of the VM.
//!
//! [`block_term_signals`] blocks both in the calling thread; called first thing in `main`,
//! before any other thread exists, every thread inherits the mask, so the default action
//! (dying on the spot, leaving the control socket behind) never runs. [`TermSignals::watch`]
//! then gives one thread the job of taking them with `sigwait` and raising the VM's exit
//! signal with [`ExitReason::Stopped`]: the VM ends like after a `shutdown` request (vCPUs
//! stopped, console flushed, sockets removed, status 0). A signal that arrives before the
//! watcher starts stays pending and is taken at once.
//!
//! With seccomp on, the watcher runs under its own small filter
//! ([`ThreadKind::Signals`](crate::seccomp::ThreadKind::Signals)), installed before it waits:
//! it is started before the VMM thread filters itself, so it would otherwise run unfiltered.
//!
//! Library users (tests) that never call [`block_term_signals`] keep the default behaviour.

use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use super::{ExitReason, ExitSignal};
use crate::seccomp::{Filters, ThreadKind};

/// SIGTERM and SIGINT, blocked in the calling thread (and every thread it starts later).
#[derive(Clone, Copy)]
pub struct TermSignals {
    set: libc::sigset_t,
}

impl std::fmt::Debug for TermSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TermSignals(SIGTERM, SIGINT)")
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread.
pub fn block_term_signals() -> std::io::Result<TermSignals> {
    // SAFETY: an all-zero sigset_t is a valid value to hand to sigemptyset, which fills it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t; the signal numbers are valid.
    let ok = unsafe {
        libc::sigemptyset(&mut set) == 0
            && libc::sigaddset(&mut set, libc::SIGTERM) == 0
            && libc::sigaddset(&mut set, libc::SIGINT) == 0
    };
    if !ok {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(TermSignals { set })
}

impl TermSignals {
    /// Starts the thread that turns the first SIGTERM or SIGINT into the VM's end. It lives
    /// as long as the process. With `filters` it installs the signal watcher's filter first;
    /// this returns once it did (or failed to).
    pub fn watch(
        self,
        exit: Arc<ExitSignal>,
        filters: Option<Arc<Filters>>,
    ) -> std::io::Result<JoinHandle<()>> {
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let handle = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(f) = filters {
                    if let Err(e) = f.install(ThreadKind::Signals) {
                        let _ = ready_tx.send(Err(std::io::Error::other(e.to_string())));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(()));
                loop {
                    let mut sig: libc::c_int = 0;
                    // SAFETY: `self.set` is an initialised sigset_t and `sig` a writable
                    // int; sigwait only reads the one and writes the other.
                    let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
                    if rc != 0 {
                        continue;
                    }
                    let name = if sig == libc::SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    };
                    exit.signal(ExitReason::Stopped { by: name.into() });
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the signal watcher did not start"))??;
        Ok(handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sigterm_to_the_watcher_becomes_a_stop_reason() {
        // The mask is this test thread's; the watcher inherits it. The signal is sent to the
        // watcher thread alone (a process-wide one would kill the test harness).
        let exit = Arc::new(ExitSignal::new().unwrap());
        let watcher = block_term_signals()
            .unwrap()
            .watch(exit.clone(), None)
            .unwrap();
        // SAFETY: pthread_kill to a live thread (its JoinHandle is held), a valid signal.
        let rc = unsafe {
            libc::pthread_kill(
                std::os::unix::thread::JoinHandleExt::as_pthread_t(&watcher),
                libc::SIGTERM,
            )
        };
        assert_eq!(rc, 0);
        let reason = exit.wait().unwrap();
        assert_eq!(reason.to_string(), "stopped by SIGTERM");
        assert_eq!(reason.exit_code(), 0);
    }
}
