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
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::Queue;
use vmm_sys_util::epoll::{Epoll, EpollEvent};
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, ResetError};

/// How long a reset waits for a device thread to stop and hand its resources back (it
/// blocks the vCPU that wrote the reset). A thread that takes longer is asked again at the
/// driver's next reset.
#[cfg(not(test))]
pub const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Tests' worker threads may be slow to run on a loaded host; they are not stuck.
#[cfg(test)]
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Stops a device's worker thread and gets back what it owns (`S`), so that the device can
/// be activated again after the driver's reset.
#[derive(Debug)]
pub struct Stopper<S> {
    /// Made at build time (eventfd creation is on no vCPU or device list); each worker gets
    /// a duplicate.
    event: EventFd,
    running: Option<Running<S>>,
}

#[derive(Debug)]
struct Running<S> {
    flag: Arc<AtomicBool>,
    back: Receiver<S>,
}

/// A worker's start, made before its device gives up its resources: what can fail here
/// (duplicating the eventfd) then costs the device nothing.
#[derive(Debug)]
pub struct Launch<S> {
    signal: StopSignal,
    tx: Sender<S>,
    back: Receiver<S>,
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

    /// Whether a worker was started and has not handed its resources back.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Prepares a worker's start; call it before taking the resources the worker will own.
    pub fn prepare(&self) -> Result<Launch<S>, ActivateError> {
        if self.running.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let (tx, back) = mpsc::channel();
        Ok(Launch {
            signal: StopSignal {
                event: self.event.try_clone().map_err(ActivateError::Spawn)?,
                flag: Arc::new(AtomicBool::new(false)),
            },
            tx,
            back,
        })
    }

    /// Starts the device thread `name` (as [`spawn`]) running `body`, which watches the
    /// [`StopSignal`] it is given and returns its resources once it is asked to stop (or
    /// once it ends for another reason). If the thread cannot be started, what `body`
    /// owns is dropped: the device's next activation then fails by name.
    pub fn launch<F>(&mut self, launch: Launch<S>, name: &str, body: F) -> Result<(), ActivateError>
    where
        F: FnOnce(StopSignal) -> S + Send + 'static,
    {
        let Launch { signal, tx, back } = launch;
        let flag = signal.flag.clone();
        spawn(name, move || {
            // The receiver is gone only if the device was dropped: nobody wants it back.
            let _ = tx.send(body(signal));
        })?;
        self.running = Some(Running { flag, back });
        Ok(())
    }

    /// Asks the running worker to stop and waits up to [`STOP_TIMEOUT`] for what it hands
    /// back.
    pub fn stop(&mut self) -> Result<S, ResetError> {
        self.stop_within(STOP_TIMEOUT)
    }

    /// [`Stopper::stop`], waiting up to `limit`. After a timeout (or a failed wakeup) the
    /// worker is still this stopper's: a later call may get its resources.
    pub fn stop_within(&mut self, limit: Duration) -> Result<S, ResetError> {
        let running = self.running.as_ref().ok_or(ResetError::NotActive)?;
        // The flag first: the worker reads the eventfd, then the flag.
        running.flag.store(true, Ordering::SeqCst);
        self.event.write(1).map_err(ResetError::Wake)?;
        match running.back.recv_timeout(limit) {
            Ok(s) => {
                self.running = None;
                Ok(s)
            }
            Err(RecvTimeoutError::Timeout) => Err(ResetError::Timeout(limit)),
            Err(RecvTimeoutError::Disconnected) => {
                self.running = None;
                Err(ResetError::Lost)
            }
        }
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

    /// Starts `body` as a worker of `stopper`.
    fn start<S: Send + 'static>(
        stopper: &mut Stopper<S>,
        body: impl FnOnce(StopSignal) -> S + Send + 'static,
    ) {
        let launch = stopper.prepare().unwrap();
        stopper.launch(launch, "test-worker", body).unwrap();
    }

    #[test]
    fn a_stopped_worker_hands_its_state_back_and_a_new_one_can_start() {
        let mut stopper: Stopper<u32> = Stopper::new().unwrap();
        assert!(matches!(stopper.stop(), Err(ResetError::NotActive)));
        let queue = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let q = queue.try_clone().unwrap();
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        start(&mut stopper, move |stop| {
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
        });
        assert!(matches!(
            stopper.prepare(),
            Err(ActivateError::AlreadyActive)
        ));
        queue.write(1).unwrap();
        seen_rx.recv().unwrap();
        assert_eq!(stopper.stop().unwrap(), 1);
        assert!(!stopper.is_running());

        // A worker that ended by itself before its stop: the stop's wakeup is left in the
        // eventfd, and the next worker must not take it for its own.
        start(&mut stopper, |_| 7);
        assert_eq!(stopper.stop().unwrap(), 7);
        let (tx, rx) = std::sync::mpsc::channel();
        start(&mut stopper, move |stop| {
            let spurious = stop.requested();
            tx.send(spurious).unwrap();
            while !(wait_readable([stop.event(), stop.event()], &"t").unwrap()[0]
                && stop.requested())
            {}
            9
        });
        assert!(!rx.recv().unwrap(), "an old wakeup stopped the new worker");
        assert_eq!(stopper.stop().unwrap(), 9);
    }

    #[test]
    fn a_slow_worker_is_waited_for_again_at_the_next_stop() {
        let mut stopper: Stopper<u8> = Stopper::new().unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        start(&mut stopper, move |_| {
            held.recv().unwrap();
            5
        });
        let limit = Duration::from_millis(100);
        assert!(matches!(
            stopper.stop_within(limit),
            Err(ResetError::Timeout(_))
        ));
        assert!(stopper.is_running(), "still owed its resources");
        release.send(()).unwrap();
        assert_eq!(stopper.stop().unwrap(), 5);
        // A worker that dies without handing anything back is lost, not waited for.
        start(&mut stopper, |_| -> u8 {
            std::panic::resume_unwind(Box::new("died"))
        });
        assert!(matches!(stopper.stop(), Err(ResetError::Lost)));
        assert!(!stopper.is_running());
    }

    #[test]
    fn a_spawned_thread_runs_its_body() {
        let (tx, rx) = std::sync::mpsc::channel();
        spawn("test-worker", move || tx.send(42).unwrap()).unwrap();
        assert_eq!(rx.recv().unwrap(), 42);
    }
}
