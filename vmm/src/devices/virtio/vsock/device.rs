//! The virtio-vsock device and its worker thread.
//!
//! The worker owns the three queues once the driver activates the device, and waits on one
//! epoll: the RX and TX queue notifications (ioeventfds) and the muxer's host sockets.
//! Each round it drains TX (guest → muxer; each chain read, validated and returned to the
//! guest) and fills RX (muxer → guest) while the guest has RX buffers and the muxer has
//! packets; then it interrupts the guest once if any buffer was used.
//!
//! The driver's reset stops the worker: its events leave the epoll, the muxer closes every
//! connection ([`Muxer::device_reset`]) and goes back to the device for the next activation.

use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::Muxer;
use super::packet;
use crate::devices::virtio::guest_errors::{pop_chain, GuestErrors};
use crate::devices::virtio::worker::{StopSignal, Stopper};
use crate::devices::virtio::{
    worker, ActivateError, Interrupt, ResetError, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::metrics::{self, VsockMetrics};

/// The virtio device id of vsock.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Queue size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;
/// Epoll tokens of the queue events (host socket tokens are their fds, far below these).
const TOKEN_QUEUE_BASE: u64 = u64::MAX - 8;
/// Epoll token of the stop event.
const TOKEN_STOP: u64 = TOKEN_QUEUE_BASE + QUEUE_SIZES.len() as u64;

/// The vsock device: guest CID and, until activation, the muxer.
#[derive(Debug)]
pub struct Vsock {
    cid: u64,
    queue_events: Vec<EventFd>,
    muxer: Option<Muxer>,
    stopper: Stopper<Muxer>,
    /// Shared by every worker of this device: guest errors are logged once in all.
    errors: GuestErrors,
    metrics: Arc<VsockMetrics>,
}

impl Vsock {
    /// A device for the guest `cid` whose host side is `muxer`.
    pub fn new(cid: u64, muxer: Muxer) -> std::io::Result<Self> {
        let queue_events = worker::queue_events(QUEUE_SIZES.len())?;
        Ok(Vsock {
            cid,
            queue_events,
            muxer: Some(muxer),
            stopper: Stopper::new()?,
            errors: GuestErrors::new("vsock"),
            metrics: Arc::default(),
        })
    }

    /// The device's traffic counters.
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        worker::read_config(&self.cid.to_le_bytes(), offset, data);
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        _acked_features: u64,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        worker::check_queues(&queues, QUEUE_SIZES.len())?;
        let events = worker::clone_events(&self.queue_events)?;
        let launch = self.stopper.prepare()?;
        let muxer = self.muxer.take().ok_or(ActivateError::AlreadyActive)?;
        let mut state = Worker::new(mem, queues, interrupt, muxer, events)?;
        state.metrics = self.metrics.clone();
        state.errors = self.errors.clone();
        self.stopper
            .launch(launch, "vsock", move |stop| state.run(&stop))
    }

    fn reset(&mut self) -> Result<(), ResetError> {
        self.muxer = Some(self.stopper.stop()?);
        Ok(())
    }
}

/// The device's thread state: queues, guest memory, the muxer.
#[derive(Debug)]
pub struct Worker {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<Interrupt>,
    muxer: Muxer,
    events: Vec<EventFd>,
    errors: GuestErrors,
    metrics: Arc<VsockMetrics>,
}

impl Worker {
    /// A worker for the activated queues; registers the queue events on the muxer's epoll.
    pub fn new(
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
        muxer: Muxer,
        events: Vec<EventFd>,
    ) -> Result<Self, ActivateError> {
        worker::check_queues(&queues, QUEUE_SIZES.len())?;
        for (i, e) in events.iter().enumerate() {
            use std::os::unix::io::AsRawFd;
            muxer
                .epoll()
                .ctl(
                    ControlOperation::Add,
                    e.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, TOKEN_QUEUE_BASE + i as u64),
                )
                .map_err(ActivateError::Spawn)?;
        }
        Ok(Worker {
            mem,
            queues,
            interrupt,
            muxer,
            events,
            errors: GuestErrors::new("vsock"),
            metrics: Arc::default(),
        })
    }

    /// The muxer (for tests).
    pub fn muxer(&mut self) -> &mut Muxer {
        &mut self.muxer
    }

    /// Waits for events and moves packets until it is asked to stop; returns the muxer,
    /// its connections closed and the worker's events out of its epoll.
    pub fn run(mut self, stop: &StopSignal) -> Muxer {
        use std::os::unix::io::AsRawFd;
        let watching = self.muxer.epoll().ctl(
            ControlOperation::Add,
            stop.event().as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_STOP),
        );
        if let Err(e) = watching {
            log::error!("vsock: watching the stop event: {e}; the device stops");
        } else {
            // The previous worker may have stopped on a wakeup that also carried host events.
            self.muxer.catch_up();
            self.process();
            let mut events = vec![EpollEvent::default(); 32];
            while let Some(n) = worker::wait(self.muxer.epoll(), &mut events, &"vsock") {
                if events[..n].iter().any(|e| e.data() == TOKEN_STOP) && stop.requested() {
                    break;
                }
                for e in &events[..n] {
                    self.dispatch(e.data(), e.event_set());
                }
                self.process();
            }
        }
        let epoll = self.muxer.epoll();
        for fd in self.events.iter().map(AsRawFd::as_raw_fd) {
            let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        let _ = epoll.ctl(
            ControlOperation::Delete,
            stop.event().as_raw_fd(),
            EpollEvent::default(),
        );
        self.muxer.device_reset();
        self.muxer
    }

    fn dispatch(&mut self, token: u64, set: EventSet) {
        if token == TOKEN_STOP {
            // A wakeup that was not a stop request (already consumed by the check in run).
            return;
        }
        if token >= TOKEN_QUEUE_BASE {
            let i = (token - TOKEN_QUEUE_BASE) as usize;
            if let Some(e) = self.events.get(i) {
                let _ = e.read();
            }
            if i == EVQ {
                log::debug!("vsock: event queue notified (nothing to do)");
            }
            return;
        }
        if !self.muxer.handle_event(token, set) {
            log::debug!("vsock: event for unknown token {token}");
        }
    }

    /// One round: drain TX, fill RX, interrupt if anything was used.
    pub fn process(&mut self) {
        let tx_used = self.process_tx();
        let rx_used = self.process_rx();
        if tx_used || rx_used {
            self.interrupt.signal_used_queue();
        }
    }

    fn process_tx(&mut self) -> bool {
        let mut used = false;
        while !self.muxer.control_full() {
            let Some(chain) = pop_chain(&mut self.queues[TXQ], &self.mem, &mut self.errors) else {
                break;
            };
            let head = chain.head_index();
            match packet::read_tx(&self.mem, chain) {
                Ok((hdr, data)) => {
                    metrics::add(&self.metrics.tx_packets, 1);
                    metrics::add(&self.metrics.tx_bytes, data.len() as u64);
                    self.muxer.handle_tx(&hdr, &data)
                }
                Err(e) => {
                    metrics::add(&self.metrics.tx_dropped, 1);
                    log::debug!("vsock: dropped a TX packet: {e}")
                }
            }
            if let Err(e) = self.queues[TXQ].add_used(&self.mem, head, 0) {
                self.errors
                    .record(format_args!("returning a TX buffer: {e}"));
            }
            used = true;
        }
        used
    }

    fn process_rx(&mut self) -> bool {
        let mut used = false;
        while self.muxer.has_rx() {
            let Some(chain) = pop_chain(&mut self.queues[RXQ], &self.mem, &mut self.errors) else {
                break;
            };
            let head = chain.head_index();
            let len = match packet::rx_capacity(&self.mem, chain.clone()) {
                Err(e) => {
                    log::debug!("vsock: dropped an RX buffer: {e}");
                    0
                }
                Ok(cap) => match self.muxer.next_rx(cap) {
                    None => {
                        // Nothing after all (the socket had no data): keep the buffer.
                        self.queues[RXQ].go_to_previous_position();
                        break;
                    }
                    Some((hdr, data)) => match packet::write_rx(&self.mem, chain, hdr, &data) {
                        Ok(n) => {
                            metrics::add(&self.metrics.rx_packets, 1);
                            metrics::add(&self.metrics.rx_bytes, data.len() as u64);
                            n
                        }
                        Err(e) => {
                            log::warn!("vsock: writing an RX packet: {e}");
                            0
                        }
                    },
                },
            };
            if let Err(e) = self.queues[RXQ].add_used(&self.mem, head, len) {
                self.errors
                    .record(format_args!("returning an RX buffer: {e}"));
            }
            used = true;
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{desc, interrupt, mem, wait_for, Rng};
    use crate::devices::virtio::vsock::packet::{op, Header, TYPE_STREAM};
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    /// A hostile guest: random descriptor tables (addresses in and out of memory, any
    /// length, flags and next index), random avail indexes, and buffers full of headers
    /// that are half plausible. The worker must neither panic nor loop; every round ends.
    #[test]
    fn random_queues_and_packets_never_panic_the_worker() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let _l = UnixListener::bind(format!("{}_1025", path.display())).unwrap();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let m = mem();
        let (mut tx_used, mut rx_used, mut conns) = (0u64, 0u64, 0usize);
        for round in 0..300 {
            let muxer = Muxer::new(&path, 3).unwrap();
            let bases = [0u64, 0x8000, 0x10000];
            let mocks: Vec<_> = bases
                .iter()
                .map(|&b| MockSplitQueue::create(&m, GuestAddress(b), 16))
                .collect();
            // Packet-ish data where the descriptors mostly point.
            for i in 0..64u64 {
                let ops = [
                    0,
                    op::REQUEST,
                    op::RESPONSE,
                    op::RST,
                    op::SHUTDOWN,
                    op::RW,
                    6,
                    7,
                    99,
                ];
                let port = [1025, 1024, rng.below(1 << 31) as u32][rng.below(3) as usize];
                let mut h = Header::from_fields(
                    [3, 3, 3, 2, rng.next()][rng.below(5) as usize],
                    [2, 2, 2, 3][rng.below(4) as usize],
                    rng.below(8) as u32,
                    port,
                    [0, 0, 0, 5, 4096, 65536, u32::MAX, rng.next() as u32][rng.below(8) as usize],
                    [TYPE_STREAM, TYPE_STREAM, 2][rng.below(3) as usize],
                    ops[rng.below(ops.len() as u64) as usize],
                );
                h.set_credit(rng.next() as u32, rng.next() as u32);
                h.set_flags(rng.below(4) as u32);
                m.write_obj(h, GuestAddress(0x10_0000 + i * 0x1000))
                    .unwrap();
            }
            for mock in &mocks {
                rng.scribble_queue(&m, mock, [0, 10, 44, 49, 4096, 0x10_0000]);
            }
            let queues = mocks
                .iter()
                .map(|mq| mq.create_queue::<Queue>().unwrap())
                .collect();
            let (_irq, interrupt) = interrupt();
            let events = (0..3).map(|_| EventFd::new(0).unwrap()).collect();
            let mut w = Worker::new(m.clone(), queues, interrupt, muxer, events).unwrap();
            for _ in 0..3 {
                w.process();
                conns += w.muxer().connections();
            }
            assert!(w.muxer().connections() <= 64, "round {round}");
            tx_used += u64::from(mocks[TXQ].used().idx().load());
            rx_used += u64::from(mocks[RXQ].used().idx().load());
        }
        // The garbage reached the parser and the state machine, not only the queue checks.
        eprintln!("random queues: {tx_used} TX and {rx_used} RX buffers used, {conns} connections");
        assert!(tx_used > 300 && rx_used > 30 && conns > 0);
    }

    /// The device's own thread connects a guest stream to its port socket; the driver's
    /// reset stops the thread and closes the stream (the host sees EOF), and after a second
    /// activation a host `CONNECT` reaches the new RX queue as a REQUEST.
    #[test]
    fn a_reset_closes_the_streams_and_the_device_serves_its_next_activation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let l = UnixListener::bind(format!("{}_1025", path.display())).unwrap();
        let mut dev = Vsock::new(3, Muxer::new(&path, 3).unwrap()).unwrap();
        let m = mem();
        let queues = |base: u64| -> Vec<MockSplitQueue<'_, GuestMemoryMmap>> {
            (0..3)
                .map(|i| MockSplitQueue::create(&m, GuestAddress(base + i * 0x8000), 16))
                .collect()
        };
        let activate = |dev: &mut Vsock, mocks: &[MockSplitQueue<'_, GuestMemoryMmap>]| {
            let (irq, interrupt) = interrupt();
            let qs = mocks
                .iter()
                .map(|q| q.create_queue::<Queue>().unwrap())
                .collect();
            dev.activate(m.clone(), qs, 0, interrupt).unwrap();
            irq
        };
        let wait_used = |q: &MockSplitQueue<'_, GuestMemoryMmap>, n: u16| {
            wait_for("the device thread to use a buffer", || {
                (q.used().idx().load() >= n).then_some(())
            })
        };

        let first = queues(0);
        let mut req = Header::from_fields(3, 2, 700, 1025, 0, TYPE_STREAM, op::REQUEST);
        req.set_credit(4096, 0);
        m.write_obj(req, GuestAddress(0x11_0000)).unwrap();
        first[TXQ]
            .add_desc_chains(&[desc(0x11_0000, packet::HDR_SIZE as u32, false)], 0)
            .unwrap();
        let _irq = activate(&mut dev, &first);
        dev.queue_events()[TXQ].write(1).unwrap();
        l.set_nonblocking(true).unwrap();
        let mut host = wait_for("the device thread to connect", || match l.accept() {
            Ok((s, _)) => Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("accept: {e}"),
        });
        host.set_nonblocking(false).unwrap();
        wait_used(&first[TXQ], 1);

        dev.reset().unwrap();
        host.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut host, &mut rest).unwrap();
        assert!(rest.is_empty(), "EOF, nothing else");

        let second = queues(0x40000);
        second[RXQ]
            .add_desc_chains(&[desc(0x20_0000, 4096, true)], 0)
            .unwrap();
        let _irq = activate(&mut dev, &second);
        let mut client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        std::io::Write::write_all(&mut client, b"CONNECT 1024\n").unwrap();
        wait_used(&second[RXQ], 1);
        let h: Header = m.read_obj(GuestAddress(0x20_0000)).unwrap();
        assert_eq!((h.op(), h.dst_port(), h.dst_cid()), (op::REQUEST, 1024, 3));
        dev.reset().unwrap();
    }

    #[test]
    fn config_space_holds_the_cid() {
        let dir = tempfile::tempdir().unwrap();
        let m = Muxer::new(&dir.path().join("v.sock"), 3).unwrap();
        let dev = Vsock::new(3, m).unwrap();
        let mut b = [0xffu8; 8];
        dev.read_config(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), 3);
        let mut b = [0xffu8; 4];
        dev.read_config(6, &mut b);
        assert_eq!(b, [0; 4]);
        dev.read_config(u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
        assert_eq!(dev.device_type(), 19);
    }

    /// A guest REQUEST + RW through real queues in guest memory reaches the port socket,
    /// and the RESPONSE lands in an RX buffer; a garbage TX chain is consumed and dropped.
    #[test]
    fn packets_move_between_queues_and_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let muxer = Muxer::new(&path, 3).unwrap();
        let l = UnixListener::bind(format!("{}_1025", path.display())).unwrap();
        let m = mem();
        let rxq = MockSplitQueue::create(&m, GuestAddress(0), 16);
        let txq = MockSplitQueue::create(&m, GuestAddress(0x8000), 16);
        let evq = MockSplitQueue::create(&m, GuestAddress(0x10000), 16);
        // TX: garbage (short), REQUEST, RW "ready\n".
        m.write_slice(&[1, 2, 3], GuestAddress(0x10_0000)).unwrap();
        let mut req = Header::from_fields(3, 2, 700, 1025, 0, TYPE_STREAM, op::REQUEST);
        req.set_credit(4096, 0);
        m.write_obj(req, GuestAddress(0x11_0000)).unwrap();
        let rw = Header::from_fields(3, 2, 700, 1025, 6, TYPE_STREAM, op::RW);
        m.write_obj(rw, GuestAddress(0x12_0000)).unwrap();
        m.write_slice(
            b"ready\n",
            GuestAddress(0x12_0000 + packet::HDR_SIZE as u64),
        )
        .unwrap();
        txq.add_desc_chains(
            &[
                desc(0x10_0000, 3, false),
                desc(0x11_0000, packet::HDR_SIZE as u32, false),
                desc(0x12_0000, packet::HDR_SIZE as u32 + 6, false),
            ],
            0,
        )
        .unwrap();
        rxq.add_desc_chains(&[desc(0x20_0000, 4096, true)], 0)
            .unwrap();
        let queues = vec![
            rxq.create_queue::<Queue>().unwrap(),
            txq.create_queue::<Queue>().unwrap(),
            evq.create_queue::<Queue>().unwrap(),
        ];
        let (irq, interrupt) = interrupt();
        let events = (0..3).map(|_| EventFd::new(0).unwrap()).collect();
        let mut w = Worker::new(m.clone(), queues, interrupt.clone(), muxer, events).unwrap();
        w.process();
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(interrupt.status(), 1);
        let (host, _) = l.accept().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(host).read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        // All three TX chains used, one RX chain holding the RESPONSE.
        assert_eq!(txq.used().idx().load(), 3);
        assert_eq!(rxq.used().idx().load(), 1);
        let h: Header = m.read_obj(GuestAddress(0x20_0000)).unwrap();
        assert_eq!(
            (h.op(), h.src_port(), h.dst_port(), h.dst_cid()),
            (op::RESPONSE, 1025, 700, 3)
        );
        assert_eq!(w.muxer().connections(), 1);
        let c = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let m = &w.metrics;
        assert_eq!(
            (c(&m.tx_packets), c(&m.tx_bytes), c(&m.tx_dropped)),
            (2, 6, 1)
        );
        assert_eq!((c(&m.rx_packets), c(&m.rx_bytes)), (1, 0), "the RESPONSE");
    }
}
