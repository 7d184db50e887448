//! The virtio-net device and its worker thread.
//!
//! The worker owns the RX and TX queues and the tap once the driver activates the device,
//! and waits on one epoll: both queue notifications and the tap. TX: every available chain
//! is read (device-readable buffers only, 12..=[`MAX_FRAME`] bytes, all in guest memory),
//! its vnet header replaced by a zeroed one (we offer no offloads, so the guest may not ask
//! for any) and written to the tap as one frame; a frame the tap cannot take right now is
//! dropped, as a NIC would. RX: one frame at a time is read from the tap into a bounded
//! buffer and copied into the next RX chain (device-writable buffers only, large enough
//! for the whole frame, since mergeable buffers are not offered); while the guest has no RX
//! buffer the frame waits and the tap is taken out of the epoll until the guest posts
//! buffers, so a full guest never makes the worker spin.
//!
//! Malformed chains are returned to the guest with length 0; the first is logged at warn,
//! the rest at debug ([`GuestErrors`]).
//!
//! The driver's reset stops the worker: it takes its descriptors out of the epoll and hands
//! the tap and the epoll back for the next activation; a frame it held is dropped.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::tap::VNET_HDR_SIZE;
use crate::devices::virtio::guest_errors::{pop_chain, GuestErrors};
use crate::devices::virtio::worker::{StopSignal, Stopper};
use crate::devices::virtio::{
    worker, ActivateError, Interrupt, ResetError, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::metrics::{self, NetMetrics};

/// The virtio device id of a network device.
pub const VIRTIO_ID_NET: u32 = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];
const RXQ: usize = 0;
const TXQ: usize = 1;
/// Feature: `mac` in config space is valid.
pub const VIRTIO_NET_F_MAC: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
/// The largest frame (vnet header included) we move in either direction: without
/// segmentation offloads a frame is at most an MTU-sized packet, and 64 KiB bounds every
/// MTU a tap can have.
pub const MAX_FRAME: usize = VNET_HDR_SIZE + 65535;

const TOKEN_RXQ: u64 = 0;
const TOKEN_TXQ: u64 = 1;
const TOKEN_TAP: u64 = 2;
const TOKEN_STOP: u64 = 3;

/// Why a chain was not used for a frame.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A TX chain has a device-writable buffer, or an RX chain a device-readable one.
    #[error("a buffer has the wrong direction")]
    Direction,
    /// The chain's buffers are not in guest memory (or their lengths overflow).
    #[error("buffers outside guest memory: {0}")]
    Memory(virtio_queue::Error),
    /// A TX frame is shorter than the vnet header or longer than [`MAX_FRAME`].
    #[error("a TX frame of {0} bytes (must be {VNET_HDR_SIZE}..={MAX_FRAME})")]
    TxLength(usize),
    /// An RX chain is too small for the frame waiting for it.
    #[error("an RX buffer of {have} bytes for a frame of {need}")]
    RxTooSmall {
        /// The chain's capacity.
        have: usize,
        /// The frame's length.
        need: usize,
    },
    /// Copying from or to guest memory failed.
    #[error("copying the frame: {0}")]
    Copy(std::io::Error),
}

/// A virtio network device: MAC and, until activation, the tap and the worker's epoll.
#[derive(Debug)]
pub struct Net {
    config: [u8; 8],
    queue_events: Vec<EventFd>,
    tap: Option<File>,
    /// Made at build time: activation runs on a vCPU thread, whose seccomp filter allows
    /// `epoll_ctl` but not `epoll_create1`.
    epoll: Option<Epoll>,
    stopper: Stopper<(File, Epoll)>,
    /// Shared by every worker of this device: guest errors are logged once in all.
    errors: GuestErrors,
    metrics: Arc<NetMetrics>,
}

impl Net {
    /// A device with `mac` whose host side is `tap` (an open tap, or any non-blocking fd
    /// that reads and writes whole frames with a 12-byte vnet header).
    pub fn new(tap: File, mac: [u8; 6]) -> std::io::Result<Self> {
        // struct virtio_net_config: u8 mac[6]; le16 status (LINK_UP; read only if STATUS
        // is negotiated, which we do not offer).
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        config[6] = 1;
        let queue_events = worker::queue_events(QUEUE_SIZES.len())?;
        Ok(Net {
            config,
            queue_events,
            tap: Some(tap),
            epoll: Some(Epoll::new()?),
            stopper: Stopper::new()?,
            errors: GuestErrors::new("virtio-net"),
            metrics: Arc::default(),
        })
    }

    /// The NIC's frame counters (shared with its worker once active).
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        worker::read_config(&self.config, offset, data);
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
        let (Some(tap), Some(epoll)) = (self.tap.take(), self.epoll.take()) else {
            return Err(ActivateError::AlreadyActive);
        };
        let mut state = Worker::new(mem, queues, interrupt, tap, events, epoll)?;
        state.metrics = self.metrics.clone();
        state.errors = self.errors.clone();
        self.stopper
            .launch(launch, "virtio-net", move |stop| state.run(&stop))
    }

    fn reset(&mut self) -> Result<(), ResetError> {
        let (tap, epoll) = self.stopper.stop()?;
        self.tap = Some(tap);
        self.epoll = Some(epoll);
        Ok(())
    }
}

/// Reads the frame of a TX chain into `buf`; returns its length.
fn read_tx(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut [u8],
) -> Result<usize, ChainError> {
    if chain.clone().any(|d| d.is_write_only()) {
        return Err(ChainError::Direction);
    }
    let mut r: Reader = Reader::new(mem, chain).map_err(ChainError::Memory)?;
    let len = r.available_bytes();
    if !(VNET_HDR_SIZE..=buf.len().min(MAX_FRAME)).contains(&len) {
        return Err(ChainError::TxLength(len));
    }
    r.read_exact(&mut buf[..len]).map_err(ChainError::Copy)?;
    Ok(len)
}

/// Writes `frame` into an RX chain; returns the bytes written.
fn write_rx(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    frame: &[u8],
) -> Result<u32, ChainError> {
    if chain.clone().any(|d| !d.is_write_only()) {
        return Err(ChainError::Direction);
    }
    let mut w: Writer = Writer::new(mem, chain).map_err(ChainError::Memory)?;
    if w.available_bytes() < frame.len() {
        return Err(ChainError::RxTooSmall {
            have: w.available_bytes(),
            need: frame.len(),
        });
    }
    w.write_all(frame).map_err(ChainError::Copy)?;
    // frame.len() <= MAX_FRAME, far below u32::MAX.
    Ok(frame.len() as u32)
}

/// The device's thread state.
#[derive(Debug)]
pub struct Worker {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<Interrupt>,
    tap: File,
    events: Vec<EventFd>,
    epoll: Epoll,
    /// The frame read from the tap and not yet delivered (`rx_len` bytes).
    rx_buf: Vec<u8>,
    rx_len: usize,
    tx_buf: Vec<u8>,
    tap_polled: bool,
    /// The tap failed (e.g. its interface was deleted): it is out of the epoll for good.
    tap_dead: bool,
    errors: GuestErrors,
    metrics: Arc<NetMetrics>,
}

impl Worker {
    /// A worker for the activated queues; registers the queue events and the tap on
    /// `epoll` (a new, empty one).
    pub fn new(
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
        tap: File,
        events: Vec<EventFd>,
        epoll: Epoll,
    ) -> Result<Self, ActivateError> {
        if queues.len() != QUEUE_SIZES.len() || events.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::InvalidQueue(queues.len()));
        }
        for (fd, token) in [
            (events[RXQ].as_raw_fd(), TOKEN_RXQ),
            (events[TXQ].as_raw_fd(), TOKEN_TXQ),
            (tap.as_raw_fd(), TOKEN_TAP),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(ActivateError::Spawn)?;
        }
        Ok(Worker {
            mem,
            queues,
            interrupt,
            tap,
            events,
            epoll,
            rx_buf: vec![0; MAX_FRAME],
            rx_len: 0,
            tx_buf: vec![0; MAX_FRAME],
            tap_polled: true,
            tap_dead: false,
            errors: GuestErrors::new("virtio-net"),
            metrics: Arc::default(),
        })
    }

    /// Chains returned unused because they were malformed, so far.
    pub fn malformed(&self) -> u64 {
        self.errors.count()
    }

    /// TX frames the tap did not take (dropped), so far.
    pub fn tx_dropped(&self) -> u64 {
        self.metrics
            .tx_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What it has moved so far.
    pub fn metrics(&self) -> &NetMetrics {
        &self.metrics
    }

    /// Waits for events and moves frames until it is asked to stop; returns the tap and
    /// the epoll, emptied.
    pub fn run(mut self, stop: &StopSignal) -> (File, Epoll) {
        let watching = self.epoll.ctl(
            ControlOperation::Add,
            stop.event().as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_STOP),
        );
        if let Err(e) = watching {
            log::error!("virtio-net: watching the stop event: {e}; the device stops");
            return self.into_resources(stop);
        }
        let mut events = vec![EpollEvent::default(); 8];
        while let Some(n) = worker::wait(&self.epoll, &mut events, &"virtio-net") {
            if events[..n].iter().any(|e| e.data() == TOKEN_STOP) && stop.requested() {
                break;
            }
            for e in &events[..n] {
                if let Some(evt) = usize::try_from(e.data())
                    .ok()
                    .and_then(|i| self.events.get(i))
                {
                    let _ = evt.read();
                }
                if e.data() == TOKEN_RXQ {
                    // The guest posted RX buffers: listen to the tap again.
                    self.poll_tap(true);
                }
                if e.data() == TOKEN_TAP
                    && e.event_set()
                        .intersects(EventSet::ERROR | EventSet::HANG_UP)
                {
                    // Reported even with an empty interest set: stop, or spin.
                    self.tap_failed(&"error or hang-up on the tap");
                }
            }
            self.process();
        }
        self.into_resources(stop)
    }

    /// Takes every descriptor it registered out of the epoll (the stop event's failure to
    /// leave is harmless: it was never added) and gives back the tap and the epoll.
    fn into_resources(self, stop: &StopSignal) -> (File, Epoll) {
        let mut fds = vec![
            self.events[RXQ].as_raw_fd(),
            self.events[TXQ].as_raw_fd(),
            stop.event().as_raw_fd(),
        ];
        if !self.tap_dead {
            fds.push(self.tap.as_raw_fd());
        }
        for fd in fds {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        (self.tap, self.epoll)
    }

    /// Takes a failed tap out of the epoll for good: RX stops, TX frames are dropped.
    fn tap_failed(&mut self, why: &dyn std::fmt::Display) {
        if self.tap_dead {
            return;
        }
        self.tap_dead = true;
        self.rx_len = 0;
        log::error!("virtio-net: {why}; the device receives nothing from now on");
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Delete,
            self.tap.as_raw_fd(),
            EpollEvent::default(),
        ) {
            log::warn!("virtio-net: removing the tap from the epoll: {e}");
        }
    }

    fn poll_tap(&mut self, on: bool) {
        if self.tap_polled == on || self.tap_dead {
            return;
        }
        let set = if on { EventSet::IN } else { EventSet::empty() };
        match self.epoll.ctl(
            ControlOperation::Modify,
            self.tap.as_raw_fd(),
            EpollEvent::new(set, TOKEN_TAP),
        ) {
            Ok(()) => self.tap_polled = on,
            Err(e) => log::warn!("virtio-net: epoll on the tap: {e}"),
        }
    }

    fn bad_chain(&mut self, what: &str, e: &ChainError) {
        self.errors
            .record(format_args!("dropped a {what} chain: {e}"));
    }

    /// One round: drain TX, fill RX, interrupt once if any buffer was used.
    pub fn process(&mut self) {
        let tx = self.process_tx();
        let rx = self.process_rx();
        if tx || rx {
            self.interrupt.signal_used_queue();
        }
    }

    fn process_tx(&mut self) -> bool {
        let mut used = false;
        while let Some(chain) = pop_chain(&mut self.queues[TXQ], &self.mem, &mut self.errors) {
            let head = chain.head_index();
            match read_tx(&self.mem, chain, &mut self.tx_buf) {
                Ok(len) => {
                    // No offloads were offered: whatever the guest put in the header is
                    // not passed to the host kernel.
                    self.tx_buf[..VNET_HDR_SIZE].fill(0);
                    // A tap takes a frame whole or not at all.
                    let m = &*self.metrics;
                    match self.tap.write(&self.tx_buf[..len]) {
                        Ok(n) if n == len => {
                            metrics::add(&m.tx_frames, 1);
                            metrics::add(&m.tx_bytes, len.saturating_sub(VNET_HDR_SIZE) as u64);
                        }
                        Ok(n) => {
                            metrics::add(&m.tx_dropped, 1);
                            log::debug!("virtio-net: the tap took {n} of {len} bytes");
                        }
                        Err(e) => {
                            metrics::add(&m.tx_dropped, 1);
                            log::debug!("virtio-net: tap write dropped a frame: {e}");
                        }
                    }
                }
                Err(e) => self.bad_chain("TX", &e),
            }
            if let Err(e) = self.queues[TXQ].add_used(&self.mem, head, 0) {
                self.errors
                    .record(format_args!("returning a TX buffer: {e}"));
            }
            used = true;
        }
        used
    }

    /// Reads the next frame from the tap if none is waiting; false if there is none.
    fn fill_rx_frame(&mut self) -> bool {
        while self.rx_len == 0 {
            if self.tap_dead {
                return false;
            }
            match self.tap.read(&mut self.rx_buf) {
                Ok(n) if n > VNET_HDR_SIZE => {
                    // num_buffers: always 1 without mergeable RX buffers.
                    self.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
                    self.rx_len = n;
                }
                Ok(0) => return false,
                Ok(n) => log::debug!("virtio-net: ignored a {n}-byte read from the tap"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.tap_failed(&format_args!("reading the tap: {e}"));
                    return false;
                }
            }
        }
        true
    }

    fn process_rx(&mut self) -> bool {
        let mut used = false;
        while self.fill_rx_frame() {
            let Some(chain) = pop_chain(&mut self.queues[RXQ], &self.mem, &mut self.errors) else {
                // The guest has no buffer: keep the frame, stop listening to the tap
                // until the guest posts buffers.
                self.poll_tap(false);
                break;
            };
            let head = chain.head_index();
            let len = match write_rx(&self.mem, chain, &self.rx_buf[..self.rx_len]) {
                Ok(n) => {
                    metrics::add(&self.metrics.rx_frames, 1);
                    metrics::add(
                        &self.metrics.rx_bytes,
                        self.rx_len.saturating_sub(VNET_HDR_SIZE) as u64,
                    );
                    self.rx_len = 0;
                    n
                }
                Err(ChainError::RxTooSmall { have, need }) => {
                    // A frame larger than the guest's buffers (a host MTU above the
                    // guest's): drop the frame, as a NIC would, and keep the buffer for
                    // the next one.
                    log::debug!("virtio-net: dropped a {need}-byte frame for {have}-byte buffers");
                    metrics::add(&self.metrics.rx_dropped, 1);
                    self.rx_len = 0;
                    self.queues[RXQ].go_to_previous_position();
                    continue;
                }
                Err(e) => {
                    // The frame waits for a usable buffer; this one goes back empty.
                    self.bad_chain("RX", &e);
                    0
                }
            };
            if let Err(e) = self.queues[RXQ].add_used(&self.mem, head, len) {
                self.errors
                    .record(format_args!("returning an RX buffer: {e}"));
            }
            used = true;
        }
        if self.rx_len == 0 {
            self.poll_tap(true);
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{desc, interrupt, mem, wait_for, Rng};
    use std::os::unix::net::UnixDatagram;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    /// A datagram socket pair stands in for the tap: whole frames in, whole frames out.
    fn fake_tap() -> (File, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (File::from(std::os::fd::OwnedFd::from(a)), b)
    }

    struct Rig<'a> {
        rxq: MockSplitQueue<'a, GuestMemoryMmap>,
        txq: MockSplitQueue<'a, GuestMemoryMmap>,
        worker: Worker,
        host: UnixDatagram,
        irq: EventFd,
    }

    fn rig(m: &GuestMemoryMmap) -> Rig<'_> {
        let rxq = MockSplitQueue::create(m, GuestAddress(0), 16);
        let txq = MockSplitQueue::create(m, GuestAddress(0x8000), 16);
        let (tap, host) = fake_tap();
        let (irq, interrupt) = interrupt();
        let events = (0..2).map(|_| EventFd::new(0).unwrap()).collect();
        let worker = Worker::new(
            m.clone(),
            vec![
                rxq.create_queue::<Queue>().unwrap(),
                txq.create_queue::<Queue>().unwrap(),
            ],
            interrupt,
            tap,
            events,
            Epoll::new().unwrap(),
        )
        .unwrap();
        Rig {
            rxq,
            txq,
            worker,
            host,
            irq,
        }
    }

    #[test]
    fn config_space_holds_the_mac() {
        let (tap, _h) = fake_tap();
        let dev = Net::new(tap, [2, 3, 4, 5, 6, 7]).unwrap();
        let mut b = [0u8; 6];
        dev.read_config(0, &mut b);
        assert_eq!(b, [2, 3, 4, 5, 6, 7]);
        let mut b = [0xffu8; 4];
        dev.read_config(8, &mut b);
        assert_eq!(b, [0; 4]);
        dev.read_config(u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
        assert_eq!(dev.device_type(), 1);
        assert_eq!(dev.features(), VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC);
    }

    /// A frame split over two TX buffers reaches the tap whole, with a zeroed header; a
    /// frame from the tap lands in an RX buffer with num_buffers = 1.
    #[test]
    fn frames_move_between_queues_and_the_tap() {
        let m = mem();
        let mut r = rig(&m);
        // The guest's header asks for a checksum offload we never offered.
        let mut hdr = [0u8; VNET_HDR_SIZE];
        hdr[0] = 1;
        m.write_slice(&hdr, GuestAddress(0x10_0000)).unwrap();
        m.write_slice(b"ethernet-frame", GuestAddress(0x11_0000))
            .unwrap();
        r.txq
            .build_desc_chain(&[
                desc(0x10_0000, VNET_HDR_SIZE as u32, false),
                desc(0x11_0000, 14, false),
            ])
            .unwrap();
        r.rxq
            .add_desc_chains(&[desc(0x20_0000, 2048, true)], 0)
            .unwrap();
        let mut from_host = vec![0xeeu8; VNET_HDR_SIZE];
        from_host.extend_from_slice(b"reply-frame");
        r.host.send(&from_host).unwrap();
        r.worker.process();
        let mut got = [0u8; 64];
        let n = r.host.recv(&mut got).unwrap();
        assert_eq!(&got[..VNET_HDR_SIZE], &[0; VNET_HDR_SIZE]);
        assert_eq!(&got[VNET_HDR_SIZE..n], b"ethernet-frame");
        assert_eq!(r.txq.used().idx().load(), 1);
        assert_eq!(r.rxq.used().idx().load(), 1);
        let used = r.rxq.used_addr();
        assert_eq!(
            m.read_obj::<u32>(used.unchecked_add(8)).unwrap(),
            from_host.len() as u32
        );
        let mut b = vec![0u8; from_host.len()];
        m.read_slice(&mut b, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(&b[10..12], &[1, 0]);
        assert_eq!(&b[VNET_HDR_SIZE..], b"reply-frame");
        assert_eq!(r.irq.read().unwrap(), 1);
        assert_eq!(r.worker.malformed(), 0);
        // Counted without the vnet header: 14 bytes out, 11 in.
        let c = r.worker.metrics();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!((get(&c.tx_frames), get(&c.tx_bytes)), (1, 14));
        assert_eq!((get(&c.rx_frames), get(&c.rx_bytes)), (1, 11));
        assert_eq!((get(&c.tx_dropped), get(&c.rx_dropped)), (0, 0));
    }

    /// The device's own thread moves frames both ways; the driver's reset stops it and
    /// hands the tap and the epoll back (emptied, or the next activation could not register
    /// the same descriptors), and the next activation's thread moves frames again.
    #[test]
    fn a_reset_returns_the_tap_and_the_device_serves_its_next_activation() {
        let m = mem();
        let (tap, host) = fake_tap();
        host.set_nonblocking(false).unwrap();
        host.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut dev = Net::new(tap, [2, 0, 0, 0, 0, 1]).unwrap();
        let frame = |text: &[u8]| {
            let mut f = vec![0u8; VNET_HDR_SIZE];
            f.extend_from_slice(text);
            f
        };
        for (round, base) in [(0u8, 0u64), (1, 0x10000)] {
            let rxq = MockSplitQueue::create(&m, GuestAddress(base), 16);
            let txq = MockSplitQueue::create(&m, GuestAddress(base + 0x8000), 16);
            m.write_slice(&frame(&[b'a' + round; 20]), GuestAddress(0x10_0000))
                .unwrap();
            txq.add_desc_chains(&[desc(0x10_0000, (VNET_HDR_SIZE + 20) as u32, false)], 0)
                .unwrap();
            rxq.add_desc_chains(&[desc(0x20_0000, 2048, true)], 0)
                .unwrap();
            let (irq, interrupt) = interrupt();
            dev.activate(
                m.clone(),
                vec![
                    rxq.create_queue::<Queue>().unwrap(),
                    txq.create_queue::<Queue>().unwrap(),
                ],
                0,
                interrupt,
            )
            .unwrap();
            dev.queue_events()[TXQ].write(1).unwrap();
            let mut got = [0u8; 64];
            let n = host.recv(&mut got).unwrap();
            assert_eq!(&got[VNET_HDR_SIZE..n], &[b'a' + round; 20], "round {round}");
            host.send(&frame(b"to-guest")).unwrap();
            wait_for(&format!("round {round}: RX"), || {
                (rxq.used().idx().load() > 0).then_some(())
            });
            let mut b = [0u8; 8];
            m.read_slice(&mut b, GuestAddress(0x20_0000 + VNET_HDR_SIZE as u64))
                .unwrap();
            assert_eq!(&b, b"to-guest");
            assert!(irq.read().is_ok());
            dev.reset().unwrap();
            assert!(dev.tap.is_some() && dev.epoll.is_some());
        }
        assert!(matches!(dev.reset(), Err(ResetError::NotActive)));
    }

    /// Without RX buffers a frame waits (the tap leaves the epoll) until the guest posts
    /// one; a frame too large for the buffer is dropped and the buffer kept; a readable RX
    /// buffer goes back empty.
    #[test]
    fn rx_frames_wait_for_usable_buffers() {
        let m = mem();
        let mut r = rig(&m);
        r.host.send(&[7u8; 100]).unwrap();
        r.host.send(&[8u8; 30]).unwrap();
        r.host.send(&[9u8; 100]).unwrap();
        r.worker.process();
        assert!(!r.worker.tap_polled);
        assert_eq!(r.worker.rx_len, 100);
        r.rxq
            .add_desc_chains(
                &[
                    desc(0x20_0000, 50, true),
                    desc(0x21_0000, 200, false),
                    desc(0x22_0000, 200, true),
                ],
                0,
            )
            .unwrap();
        r.worker.process();
        // 7s: dropped (too big for 50); 8s: into the 50-byte buffer; 9s: the readable
        // buffer is returned empty, then into the last one.
        assert_eq!(r.rxq.used().idx().load(), 3);
        assert_eq!(r.worker.malformed(), 1);
        assert_eq!(r.worker.rx_len, 0);
        assert!(r.worker.tap_polled);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x20_0000 + 20)).unwrap(), 8);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x22_0000 + 50)).unwrap(), 9);
        let used = r.rxq.used_addr();
        let len_of = |i: u64| m.read_obj::<u32>(used.unchecked_add(8 + 8 * i)).unwrap();
        assert_eq!((len_of(0), len_of(1), len_of(2)), (30, 0, 100));
    }

    /// Malformed TX chains are returned and send nothing.
    #[test]
    fn malformed_tx_chains_send_nothing() {
        let m = mem();
        let mut r = rig(&m);
        r.txq
            .add_desc_chains(
                &[
                    desc(0x10_0000, 4, false),                      // shorter than the header
                    desc(0x10_0000, 100, true),                     // device-writable
                    desc(0x10_0000, u32::MAX, false),               // huge, outside memory
                    desc(u64::MAX - 8, 64, false),                  // address overflow
                    desc(0x10_0000, (MAX_FRAME + 1) as u32, false), // too long
                ],
                0,
            )
            .unwrap();
        r.worker.process();
        assert_eq!(r.txq.used().idx().load(), 5);
        assert_eq!(r.worker.malformed(), 5);
        let mut b = [0u8; 16];
        assert!(r.host.recv(&mut b).is_err(), "a frame reached the tap");
    }

    /// A frame the tap refuses is dropped and its buffer still returned.
    #[test]
    fn a_frame_the_tap_refuses_is_dropped() {
        let m = mem();
        let mut r = rig(&m);
        drop(std::mem::replace(
            &mut r.host,
            UnixDatagram::unbound().unwrap(),
        ));
        r.txq
            .build_desc_chain(&[desc(0x10_0000, 60, false)])
            .unwrap();
        r.worker.process();
        assert_eq!(r.worker.tx_dropped(), 1);
        assert_eq!(r.worker.malformed(), 0);
        assert_eq!(r.txq.used().idx().load(), 1);
    }

    /// A tap that fails (here: a socket whose peer is gone, read errors) leaves the epoll
    /// once, instead of waking the worker forever.
    #[test]
    fn a_failed_tap_leaves_the_epoll() {
        let m = mem();
        let mut r = rig(&m);
        r.worker.tap_failed(&"test");
        assert!(r.worker.tap_dead);
        r.worker.process();
        let mut ev = [EpollEvent::default(); 4];
        r.host.send(&[1u8; 64]).unwrap();
        assert_eq!(r.worker.epoll.wait(0, &mut ev).unwrap(), 0);
        r.worker.tap_failed(&"twice is harmless");
    }

    /// A hostile guest: random descriptor tables and avail rings on both queues and a host
    /// sending frames of every size. The worker neither panics nor loops.
    #[test]
    fn random_queues_never_panic_the_worker() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let m = mem();
        let (mut used, mut sent) = (0u64, 0u64);
        for _round in 0..300 {
            m.write_slice(&[0u8; 0x10000], GuestAddress(0)).unwrap();
            let mut r = rig(&m);
            for q in [&r.rxq, &r.txq] {
                rng.scribble_queue(&m, q, [0, 4, 12, 60, 1514, 0x10_0000]);
            }
            for _ in 0..rng.below(4) {
                let n = [0, 5, 12, 13, 60, 1514, 9000][rng.below(7) as usize];
                let _ = r.host.send(&vec![0x42; n]);
            }
            r.worker.process();
            r.worker.process();
            used += u64::from(r.txq.used().idx().load()) + u64::from(r.rxq.used().idx().load());
            let mut b = vec![0u8; MAX_FRAME];
            while let Ok(n) = r.host.recv(&mut b) {
                assert!((VNET_HDR_SIZE..=MAX_FRAME).contains(&n));
                assert_eq!(&b[..VNET_HDR_SIZE], &[0; VNET_HDR_SIZE]);
                sent += 1;
            }
        }
        eprintln!("random queues: {used} buffers used, {sent} frames sent");
        assert!(used > 300 && sent > 0);
    }
}
