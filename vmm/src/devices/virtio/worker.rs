//! What every virtio device does the same way around its worker thread: reading its config
//! space, making and handing over its queue notification eventfds, checking the queues the
//! transport hands over, starting the thread through the seccomp device spawner, and the
//! wait at the top of the thread's event loop (epoll, or poll on a single eventfd).
//!
//! The driver's reset of an active device stops its worker thread: [`Stopper`] raises a
//! per-activation stop flag, wakes the thread through an eventfd made at build time, and
//! waits (bounded) for the thread to hand back its host resources (tap, disk, vsock muxer)
//! for the next activation. The thread ends afterwards.
//!
//! Not here: what a device does with its queues (each device's `Worker`), the seccomp
//! filters and the spawner themselves ([`crate::seccomp`]), the transport
//! ([`super::mmio`]).

use std::fmt::Display;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::Queue;
use vmm_sys_util::epoll::{Epoll, EpollEvent};
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, ResetError};

/// How long a reset waits for a device thread to stop and hand its resources back (it
/// blocks the vCPU that wrote the reset; a device thread stuck longer is given up).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Stops a device's worker thread and gets back what it owns (`S`), so that the device can
/// be activated again after the driver's reset.
#[derive(Debug)]
pub struct Stopper<S> {
    /// Made at build time (eventfd creation is on no vCPU or device list); each worker gets
    /// a duplicate.
    event: EventFd,
    running: Option<(Arc<AtomicBool>, Receiver<S>)>,
}

/// A worker's side of its [`Stopper`]: the eventfd to wait on and this activation's flag.
#[derive(Debug)]
pub struct StopSignal {
    event: EventFd,
    flag: Arc<AtomicBool>,
}

impl StopSignal {
    /// The eventfd to watch beside the queue events.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    /// Consumes a wakeup of the eventfd; true if this worker was asked to stop. A wakeup
    /// left over from an earlier worker (one that ended on its own before its stop) is
    /// not this worker's: its flag is not set.
    pub fn requested(&self) -> bool {
        let _ = self.event.read();
        self.flag.load(Ordering::SeqCst)
    }
}

impl<S: Send + 'static> Stopper<S> {
    /// A stopper with no worker yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(Stopper {
            event: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            running: None,
        })
    }

    /// Whether a worker was started and not stopped.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Starts the device thread `name` (as [`spawn`]) running `body`, which watches the
    /// [`StopSignal`] it is given and returns its resources once it is asked to stop (or
    /// once it ends for another reason).
    pub fn spawn<F>(&mut self, name: &str, body: F) -> Result<(), ActivateError>
    where
        F: FnOnce(StopSignal) -> S + Send + 'static,
    {
        if self.running.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let flag = Arc::new(AtomicBool::new(false));
        let signal = StopSignal {
            event: self.event.try_clone().map_err(ActivateError::Spawn)?,
            flag: flag.clone(),
        };
        let (tx, rx) = mpsc::channel();
        spawn(name, move || {
            // The receiver is gone only if the device was dropped: nobody wants it back.
            let _ = tx.send(body(signal));
        })?;
        self.running = Some((flag, rx));
        Ok(())
    }

    /// Asks the running worker to stop and waits up to [`STOP_TIMEOUT`] for what it hands
    /// back. After an error the worker is forgotten (a late one ends unheard).
    pub fn stop(&mut self) -> Result<S, ResetError> {
        let (flag, rx) = self.running.take().ok_or(ResetError::NotActive)?;
        flag.store(true, Ordering::SeqCst);
        self.event.write(1).map_err(ResetError::Wake)?;
        rx.recv_timeout(STOP_TIMEOUT)
            .map_err(|_| ResetError::Timeout(STOP_TIMEOUT))
    }
}

/// Reads `config` (a device's config space) at `offset` into `data`; bytes beyond it, or
/// at an offset that overflows, read as 0.
pub fn read_config(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// One non-blocking notification eventfd per queue, for `queues` queues. Made at build
/// time: eventfd creation is on no device or vCPU thread's seccomp list.
pub fn queue_events(queues: usize) -> std::io::Result<Vec<EventFd>> {
    (0..queues)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
        .collect()
}

/// Duplicates of the device's queue eventfds, for its worker (the device keeps its own for
/// the transport).
pub fn clone_events(events: &[EventFd]) -> Result<Vec<EventFd>, ActivateError> {
    events
        .iter()
        .map(EventFd::try_clone)
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(ActivateError::Spawn)
}

/// Fails activation unless the driver handed over exactly `want` queues.
pub fn check_queues(queues: &[Queue], want: usize) -> Result<(), ActivateError> {
    if queues.len() != want {
        return Err(ActivateError::InvalidQueue(queues.len()));
    }
    Ok(())
}

/// Starts the device thread `name` running `body`. Through the spawner, so that the thread
/// runs under the device filter only (activation runs on a vCPU thread).
pub fn spawn<F>(name: &str, body: F) -> Result<(), ActivateError>
where
    F: FnOnce() + Send + 'static,
{
    crate::seccomp::spawn_device_thread(name, body).map_err(ActivateError::Spawn)
}

/// Waits for events on `epoll` into `events`; returns how many arrived (0 if the wait was
/// interrupted by a signal, a round without events). `None` when the epoll failed: that is
/// logged as `device`'s end and the worker must stop.
pub fn wait(epoll: &Epoll, events: &mut [EpollEvent], device: &dyn Display) -> Option<usize> {
    match epoll.wait(-1, events) {
        Ok(n) => Some(n),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Some(0),
        Err(e) => {
            log::error!("{device}: epoll: {e}; the device stops");
            None
        }
    }
}

/// Waits until one of two eventfds is readable (retrying after signals) and says which
/// are; `None` when poll failed: that is logged as `device`'s end and the worker must stop.
/// For a worker with a queue event and a stop event to watch, which needs no epoll.
pub fn wait_readable(events: [&EventFd; 2], device: &dyn Display) -> Option<[bool; 2]> {
    let mut pfds = events.map(|e| libc::pollfd {
        fd: e.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: `pfds` is an array of two valid pollfds that lives across the call, and
        // nfds is its length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if n >= 0 {
            return Some(pfds.map(|p| p.revents & libc::POLLIN != 0));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            log::error!("{device}: poll: {e}; the device stops");
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueT;
    use vmm_sys_util::epoll::{ControlOperation, EventSet};

    #[test]
    fn config_reads_past_the_end_or_at_huge_offsets_are_zero() {
        let config = [1u8, 2, 3, 4];
        let mut b = [0xffu8; 4];
        read_config(&config, 2, &mut b);
        assert_eq!(b, [3, 4, 0, 0]);
        read_config(&config, u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
        read_config(&config, 0, &mut b[..0]);
    }

    #[test]
    fn queue_events_are_separate_and_their_clones_share_the_counter() {
        let events = queue_events(3).unwrap();
        assert_eq!(events.len(), 3);
        let clones = clone_events(&events).unwrap();
        events[1].write(1).unwrap();
        assert!(clones[0].read().is_err(), "non-blocking and not written");
        assert_eq!(clones[1].read().unwrap(), 1);
    }

    #[test]
    fn the_queue_count_must_match() {
        let queues: Vec<Queue> = (0..2).map(|_| Queue::new(16).unwrap()).collect();
        check_queues(&queues, 2).unwrap();
        assert!(matches!(
            check_queues(&queues, 3),
            Err(ActivateError::InvalidQueue(2))
        ));
    }

    #[test]
    fn waits_return_once_an_event_is_ready() {
        let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let epoll = Epoll::new().unwrap();
        epoll
            .ctl(
                ControlOperation::Add,
                event.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 7),
            )
            .unwrap();
        event.write(1).unwrap();
        let mut events = [EpollEvent::default(); 4];
        assert_eq!(wait(&epoll, &mut events, &"test"), Some(1));
        assert_eq!(events[0].data(), 7);
        let other = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        assert_eq!(
            wait_readable([&other, &event], &"test"),
            Some([false, true])
        );
    }

    #[test]
    fn a_stopped_worker_hands_its_state_back_and_a_new_one_can_start() {
        let mut stopper: Stopper<u32> = Stopper::new().unwrap();
        assert!(matches!(stopper.stop(), Err(ResetError::NotActive)));
        let queue = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let q = queue.try_clone().unwrap();
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        stopper
            .spawn("test-worker", move |stop| {
                let mut rounds = 0;
                loop {
                    let ready = wait_readable([&q, stop.event()], &"test").unwrap();
                    if ready[0] {
                        let _ = q.read();
                        rounds += 1;
                        seen_tx.send(()).unwrap();
                    }
                    if ready[1] && stop.requested() {
                        return rounds;
                    }
                }
            })
            .unwrap();
        assert!(matches!(
            stopper.spawn("second", |_| 0),
            Err(ActivateError::AlreadyActive)
        ));
        queue.write(1).unwrap();
        seen_rx.recv().unwrap();
        assert_eq!(stopper.stop().unwrap(), 1);
        assert!(!stopper.is_running());

        // A worker that ended by itself before its stop: the stop's wakeup is left in the
        // eventfd, and the next worker must not take it for its own.
        stopper.spawn("ends-early", |_| 7).unwrap();
        assert_eq!(stopper.stop().unwrap(), 7);
        let (tx, rx) = std::sync::mpsc::channel();
        stopper
            .spawn("third", move |stop| {
                let spurious = stop.requested();
                tx.send(spurious).unwrap();
                while !(wait_readable([stop.event(), stop.event()], &"t").unwrap()[0]
                    && stop.requested())
                {}
                9
            })
            .unwrap();
        assert!(!rx.recv().unwrap(), "an old wakeup stopped the new worker");
        assert_eq!(stopper.stop().unwrap(), 9);
    }

    #[test]
    fn a_worker_that_does_not_stop_is_given_up_after_the_timeout() {
        let mut stopper: Stopper<()> = Stopper::new().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        stopper
            .spawn("stuck", move |_| {
                let _ = rx.recv();
            })
            .unwrap();
        let t = std::time::Instant::now();
        assert!(matches!(stopper.stop(), Err(ResetError::Timeout(_))));
        assert!(t.elapsed() >= STOP_TIMEOUT);
        assert!(!stopper.is_running());
        drop(tx);
    }

    #[test]
    fn a_spawned_thread_runs_its_body() {
        let (tx, rx) = std::sync::mpsc::channel();
        spawn("test-worker", move || tx.send(42).unwrap()).unwrap();
        assert_eq!(rx.recv().unwrap(), 42);
    }
}
