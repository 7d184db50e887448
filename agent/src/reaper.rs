//! Child reaping and exit-status delivery.
//!
//! The agent is PID 1 in the guest (and a child subreaper in host mode), so every orphan
//! ends up as its child and must be reaped. Container processes are its children too, and
//! their exit statuses must reach `WaitProcess`. libcontainer, on the other hand, forks
//! helper processes and `waitpid`s them itself while building a container.
//!
//! One lock ([`Reaper::fork_lock`]) orders these: the reaper holds it while it reaps with
//! `waitpid(-1)`, and whoever calls into libcontainer holds it for the whole call and
//! registers the new process's pid before releasing it. So libcontainer's own waits never
//! lose their child to the reaper, and no exit can be reaped before its pid is registered.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::watch;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// runc's convention: the exit code, or 128 + signal.
    pub status: i32,
    /// The terminating signal, 0 if the process exited.
    pub signal: i32,
}

impl Exit {
    /// Converts a wait status; `None` for statuses that are not terminations.
    pub fn from_wait_status(ws: WaitStatus) -> Option<(Pid, Exit)> {
        match ws {
            WaitStatus::Exited(pid, code) => Some((
                pid,
                Exit {
                    status: code,
                    signal: 0,
                },
            )),
            WaitStatus::Signaled(pid, sig, _) => {
                let sig = sig as i32;
                Some((
                    pid,
                    Exit {
                        status: 128 + sig,
                        signal: sig,
                    },
                ))
            }
            _ => None,
        }
    }
}

/// A registered process's exit, once it happens.
pub type ExitReceiver = watch::Receiver<Option<Exit>>;

/// The reaper. One per agent.
#[derive(Debug, Default)]
pub struct Reaper {
    fork_lock: Mutex<()>,
    waiters: Mutex<HashMap<i32, watch::Sender<Option<Exit>>>>,
}

impl Reaper {
    /// Takes the lock that keeps the reaper away. Hold it across every libcontainer call
    /// that forks, and register the resulting pids before dropping it.
    pub fn fork_lock(&self) -> MutexGuard<'_, ()> {
        self.fork_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `pid` for its exit status. The caller holds the fork lock (the guard is
    /// asked for to make that impossible to forget).
    pub fn register(&self, _held: &MutexGuard<'_, ()>, pid: i32) -> ExitReceiver {
        let (tx, rx) = watch::channel(None);
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, tx);
        rx
    }

    /// Reaps every exited child and delivers registered exits. Blocking (takes the fork
    /// lock): call it from a blocking thread.
    pub fn reap_all(&self) -> usize {
        let _held = self.fork_lock();
        let mut reaped = 0;
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => break,
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    log::warn!("waitpid: {e}");
                    break;
                }
                Ok(ws) => {
                    reaped += 1;
                    if let Some((pid, exit)) = Exit::from_wait_status(ws) {
                        let tx = self
                            .waiters
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&pid.as_raw());
                        match tx {
                            Some(tx) => {
                                log::debug!("process {pid} exited: {exit:?}");
                                tx.send_replace(Some(exit));
                            }
                            None => log::debug!("reaped orphan {pid}: {exit:?}"),
                        }
                    }
                }
            }
        }
        reaped
    }

    /// Reaps on every SIGCHLD, forever.
    pub async fn run(self: std::sync::Arc<Self>) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot watch SIGCHLD, children will not be reaped: {e}");
                return;
            }
        };
        loop {
            let me = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || me.reap_all()).await {
                log::error!("reaper task: {e}");
            }
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn exit_statuses_follow_runc() {
        let pid = Pid::from_raw(7);
        assert_eq!(
            Exit::from_wait_status(WaitStatus::Exited(pid, 3)),
            Some((
                pid,
                Exit {
                    status: 3,
                    signal: 0
                }
            ))
        );
        assert_eq!(
            Exit::from_wait_status(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some((
                pid,
                Exit {
                    status: 137,
                    signal: 9
                }
            ))
        );
        assert_eq!(Exit::from_wait_status(WaitStatus::StillAlive), None);
    }
}
