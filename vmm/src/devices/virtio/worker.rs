//! What every virtio device does the same way around its worker thread: reading its config
//! space, making and handing over its queue notification eventfds, checking the queues the
//! transport hands over, starting the thread through the seccomp device spawner, and the
//! wait at the top of the thread's event loop (epoll, or poll on a single eventfd).
//!
//! Not here: what a device does with its queues (each device's `Worker`), the seccomp
//! filters and the spawner themselves ([`crate::seccomp`]), the transport
//! ([`super::mmio`]).

use std::fmt::Display;
use std::os::unix::io::AsRawFd;

use virtio_queue::Queue;
use vmm_sys_util::epoll::{Epoll, EpollEvent};
use vmm_sys_util::eventfd::EventFd;

use super::ActivateError;

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

/// Waits until `event` is readable (retrying after signals); false when poll failed: that is
/// logged as `device`'s end and the worker must stop. For a worker with one eventfd to
/// watch, which needs no epoll.
pub fn wait_readable(event: &EventFd, device: &dyn Display) -> bool {
    let mut pfd = libc::pollfd {
        fd: event.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and nfds is 1.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n >= 0 {
            return true;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            log::error!("{device}: poll: {e}; the device stops");
            return false;
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
        assert!(wait_readable(&event, &"test"));
    }

    #[test]
    fn a_spawned_thread_runs_its_body() {
        let (tx, rx) = std::sync::mpsc::channel();
        spawn("test-worker", move || tx.send(42).unwrap()).unwrap();
        assert_eq!(rx.recv().unwrap(), 42);
    }
}
