//! The virtio-blk device and its worker thread.
//!
//! The device offers VERSION_1, FLUSH, SEG_MAX, BLK_SIZE (and RO for a read-only image);
//! its config space holds the capacity in 512-byte sectors, `seg_max` and `blk_size`. On
//! activation a worker thread takes the one request queue and the [`Disk`], waits on the
//! queue's notification eventfd, and per round executes every available request in order
//! ([`request::process`]) and interrupts the guest once if any was used. The driver's
//! reset stops the thread, which hands the disk back for the next activation.
//!
//! A malformed request is logged at warn the first time per device and at debug after
//! that ([`GuestErrors`]), so a hostile guest cannot flood the log.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::request::{self, Disk, Kind};
use crate::devices::virtio::guest_errors::{pop_chain, GuestErrors};
use crate::devices::virtio::worker::{StopSignal, Stopper};
use crate::devices::virtio::{
    worker, ActivateError, Interrupt, ResetError, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::metrics::{self, BlockMetrics};

/// The virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Most data segments per request we announce (the header and status need two more
/// descriptors; the driver does not use indirect descriptors, which we do not offer).
pub const SEG_MAX: u32 = 128;

/// Feature: the device is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_RO;
/// Feature: `seg_max` in config space is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_SEG_MAX;
/// Feature: `blk_size` in config space is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_BLK_SIZE;
/// Feature: FLUSH requests are supported.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_FLUSH;

/// Errors of opening a block image.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened or its size read.
    #[error("opening the block image {path}: {source}")]
    Open {
        /// The image.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An eventfd could not be created.
    #[error("creating an eventfd: {0}")]
    EventFd(std::io::Error),
}

/// A virtio block device: config space and, until activation, the disk.
#[derive(Debug)]
pub struct Block {
    features: u64,
    config: [u8; 24],
    queue_events: Vec<EventFd>,
    disk: Option<Disk>,
    stopper: Stopper<Disk>,
    /// Shared by every worker of this device: guest errors are logged once in all.
    errors: GuestErrors,
    metrics: Arc<BlockMetrics>,
}

impl Block {
    /// A device on the raw image at `path`. `read_only` opens it read-only; a writable open
    /// that is refused (permissions, read-only filesystem) also falls back to read-only.
    /// `id` is the GET_ID answer.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        let (file, read_only) = if read_only {
            (File::open(path).map_err(open_err)?, true)
        } else {
            match OpenOptions::new().read(true).write(true).open(path) {
                Ok(f) => (f, false),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::PermissionDenied
                            | std::io::ErrorKind::ReadOnlyFilesystem
                    ) =>
                {
                    log::warn!(
                        "virtio-blk: {} is not writable ({e}); the guest gets it read-only",
                        path.display()
                    );
                    (File::open(path).map_err(open_err)?, true)
                }
                Err(e) => return Err(open_err(e)),
            }
        };
        let len = file.metadata().map_err(open_err)?.len();
        if len % request::SECTOR_SIZE != 0 {
            log::warn!(
                "virtio-blk: {} is {len} bytes; its last {} bytes are not visible to the guest",
                path.display(),
                len % request::SECTOR_SIZE
            );
        }
        Block::new(Disk::new(file, len, read_only, id)).map_err(BlockError::EventFd)
    }

    /// A device on `disk`.
    pub fn new(disk: Disk) -> std::io::Result<Self> {
        let mut features =
            VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH;
        if disk.read_only() {
            features |= VIRTIO_BLK_F_RO;
        }
        // struct virtio_blk_config: le64 capacity; le32 size_max; le32 seg_max;
        // geometry (4 bytes); le32 blk_size; the rest (topology, ...) reads as 0.
        let mut config = [0u8; 24];
        config[0..8].copy_from_slice(&disk.capacity().to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&(request::SECTOR_SIZE as u32).to_le_bytes());
        let queue_events = worker::queue_events(QUEUE_SIZES.len())?;
        Ok(Block {
            features,
            config,
            queue_events,
            disk: Some(disk),
            stopper: Stopper::new()?,
            errors: GuestErrors::new("virtio-blk"),
            metrics: Arc::default(),
        })
    }

    /// The disk's request counters (shared with its worker once active).
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        self.features
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
        let event = self.queue_events[0]
            .try_clone()
            .map_err(ActivateError::Spawn)?;
        let launch = self.stopper.prepare()?;
        let disk = self.disk.take().ok_or(ActivateError::AlreadyActive)?;
        let mut state = Worker::new(mem, queues, interrupt, disk)?;
        state.metrics = self.metrics.clone();
        state.errors = self.errors.clone();
        self.stopper
            .launch(launch, "virtio-blk", move |stop| state.run(&event, &stop))
    }

    fn reset(&mut self) -> Result<(), ResetError> {
        self.disk = Some(self.stopper.stop()?);
        Ok(())
    }
}

/// The device's thread state.
#[derive(Debug)]
pub struct Worker {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<Interrupt>,
    disk: Disk,
    errors: GuestErrors,
    metrics: Arc<BlockMetrics>,
}

impl Worker {
    /// A worker for the activated queue.
    pub fn new(
        mem: GuestMemoryMmap,
        mut queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
        disk: Disk,
    ) -> Result<Self, ActivateError> {
        worker::check_queues(&queues, QUEUE_SIZES.len())?;
        let queue = queues.remove(0);
        Ok(Worker {
            mem,
            queue,
            interrupt,
            disk,
            errors: GuestErrors::new("virtio-blk"),
            metrics: Arc::default(),
        })
    }

    /// What it has done so far.
    pub fn metrics(&self) -> &BlockMetrics {
        &self.metrics
    }

    /// Requests that failed validation or I/O, and broken avail rings, so far.
    pub fn malformed(&self) -> u64 {
        self.errors.count()
    }

    /// Waits for queue notifications and executes requests until it is asked to stop;
    /// returns the disk.
    pub fn run(mut self, event: &EventFd, stop: &StopSignal) -> Disk {
        while let Some([queue, stopping]) =
            worker::wait_readable([event, stop.event()], &"virtio-blk")
        {
            if stopping && stop.requested() {
                break;
            }
            if queue {
                let _ = event.read();
                self.process();
            }
        }
        self.disk
    }

    /// One round: executes every available request, then interrupts once if any was used.
    pub fn process(&mut self) {
        let mut used = false;
        while let Some(chain) = pop_chain(&mut self.queue, &self.mem, &mut self.errors) {
            let head = chain.head_index();
            let done = request::process(&self.mem, chain, &mut self.disk);
            let m = &*self.metrics;
            match (&done.error, done.request) {
                (Some(e), _) => {
                    metrics::add(&m.failed, 1);
                    self.errors.record(format_args!("request failed: {e}"));
                }
                (None, Some((Kind::In, n))) => {
                    metrics::add(&m.reads, 1);
                    metrics::add(&m.read_bytes, n);
                }
                (None, Some((Kind::Out, n))) => {
                    metrics::add(&m.writes, 1);
                    metrics::add(&m.write_bytes, n);
                }
                (None, Some((Kind::Flush, _))) => metrics::add(&m.flushes, 1),
                (None, Some((Kind::GetId, _)) | None) => {}
            }
            if let Err(e) = self.queue.add_used(&self.mem, head, done.used_len) {
                self.errors.record(format_args!("returning a request: {e}"));
            }
            used = true;
        }
        if used {
            self.interrupt.signal_used_queue();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::request::tests::disk;
    use crate::devices::virtio::block::request::{req_type, status, RequestHeader};
    use crate::devices::virtio::test_utils::{desc, interrupt, mem, wait_for, Rng};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    #[test]
    fn config_space_and_features() {
        let (_f, d) = disk(8, false);
        let dev = Block::new(d).unwrap();
        let mut b = [0xffu8; 8];
        dev.read_config(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), 8);
        let mut b = [0u8; 4];
        dev.read_config(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), SEG_MAX);
        dev.read_config(20, &mut b);
        assert_eq!(u32::from_le_bytes(b), 512);
        dev.read_config(21, &mut b);
        assert_eq!(b, [2, 0, 0, 0]);
        dev.read_config(u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
        assert_eq!(dev.device_type(), 2);
        assert_eq!(dev.features() & VIRTIO_BLK_F_RO, 0);
        assert_ne!(dev.features() & VIRTIO_BLK_F_FLUSH, 0);
        let (_f, d) = disk(8, true);
        assert_ne!(Block::new(d).unwrap().features() & VIRTIO_BLK_F_RO, 0);
    }

    #[test]
    fn open_honours_ro_and_refuses_missing_files() {
        let (f, _d) = disk(4, false);
        let dev = Block::open(f.path(), true, "x").unwrap();
        assert_ne!(dev.features() & VIRTIO_BLK_F_RO, 0);
        let dev = Block::open(f.path(), false, "x").unwrap();
        assert_eq!(dev.features() & VIRTIO_BLK_F_RO, 0);
        let err = Block::open(Path::new("/nonexistent/disk.img"), false, "x").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/disk.img"), "{err}");
    }

    /// Two requests through a real queue in guest memory: both used, one interrupt.
    #[test]
    fn worker_drains_the_queue_and_interrupts_once() {
        use std::sync::atomic::Ordering::Relaxed;
        let m = mem();
        let (_f, d) = disk(8, false);
        let q = MockSplitQueue::create(&m, GuestAddress(0), 16);
        m.write_obj(RequestHeader::new(req_type::IN, 5), GuestAddress(0x10_0000))
            .unwrap();
        m.write_obj(RequestHeader::new(99, 0), GuestAddress(0x10_1000))
            .unwrap();
        use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
        let chained = |addr, len, write: bool, next: u16| {
            let d = virtio_queue::desc::split::Descriptor::from(desc(addr, len, write));
            virtio_queue::desc::RawDescriptor::from(virtio_queue::desc::split::Descriptor::new(
                d.addr().0,
                d.len(),
                d.flags() | VRING_DESC_F_NEXT as u16,
                next,
            ))
        };
        q.add_desc_chains(
            &[
                chained(0x10_0000, 16, false, 1),
                chained(0x20_0000, 512, true, 2),
                desc(0x30_0000, 1, true),
                chained(0x10_1000, 16, false, 4),
                desc(0x30_1000, 1, true),
            ],
            0,
        )
        .unwrap();
        let (irq, interrupt) = interrupt();
        let mut w = Worker::new(
            m.clone(),
            vec![q.create_queue::<Queue>().unwrap()],
            interrupt,
            d,
        )
        .unwrap();
        w.process();
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(q.used().idx().load(), 2);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x20_0000)).unwrap(), 5);
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0x30_0000)).unwrap(),
            status::OK
        );
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0x30_1000)).unwrap(),
            status::UNSUPP
        );
        // used ring: (id, len) pairs after flags and idx.
        let used = q.used_addr();
        assert_eq!(m.read_obj::<u32>(used.unchecked_add(8)).unwrap(), 513);
        assert_eq!(m.read_obj::<u32>(used.unchecked_add(16)).unwrap(), 1);
        assert_eq!(w.malformed(), 1);
        // Counted: one 512-byte read, one failed (unsupported) request.
        let c = w.metrics();
        assert_eq!(
            (c.reads.load(Relaxed), c.read_bytes.load(Relaxed)),
            (1, 512)
        );
        assert_eq!((c.writes.load(Relaxed), c.failed.load(Relaxed)), (0, 1));
        // Nothing new: no interrupt.
        w.process();
        assert!(irq.read().is_err());
    }

    /// The device's own thread serves a queue; the driver's reset stops it and hands the
    /// disk back, and a second activation (new queue elsewhere) is served by a new thread.
    #[test]
    fn a_reset_returns_the_disk_and_the_device_serves_its_next_activation() {
        let m = mem();
        let (_f, d) = disk(8, false);
        let mut dev = Block::new(d).unwrap();
        assert!(matches!(dev.reset(), Err(ResetError::NotActive)));
        for (round, base) in [(0u64, 0u64), (1, 0x8000)] {
            let q = MockSplitQueue::create(&m, GuestAddress(base), 16);
            let hdr = GuestAddress(0x10_0000 + round * 0x1000);
            m.write_obj(RequestHeader::new(req_type::IN, round), hdr)
                .unwrap();
            use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
            let next = |d: virtio_queue::desc::RawDescriptor, n: u16| {
                let d = virtio_queue::desc::split::Descriptor::from(d);
                virtio_queue::desc::RawDescriptor::from(virtio_queue::desc::split::Descriptor::new(
                    d.addr().0,
                    d.len(),
                    d.flags() | VRING_DESC_F_NEXT as u16,
                    n,
                ))
            };
            q.add_desc_chains(
                &[
                    next(desc(hdr.0, 16, false), 1),
                    next(desc(0x20_0000, 512, true), 2),
                    desc(0x30_0000, 1, true),
                ],
                0,
            )
            .unwrap();
            let (irq, interrupt) = interrupt();
            dev.activate(
                m.clone(),
                vec![q.create_queue::<Queue>().unwrap()],
                0,
                interrupt,
            )
            .unwrap();
            assert!(matches!(
                dev.activate(
                    m.clone(),
                    vec![Queue::new(16).unwrap()],
                    0,
                    interrupt_only()
                ),
                Err(ActivateError::AlreadyActive)
            ));
            dev.queue_events()[0].write(1).unwrap();
            wait_for("an interrupt", || irq.read().ok());
            assert_eq!(q.used().idx().load(), 1, "round {round}");
            // The first byte of sector `round` of the test disk is its sector number.
            assert_eq!(
                m.read_obj::<u8>(GuestAddress(0x20_0000)).unwrap(),
                round as u8
            );
            dev.reset().unwrap();
            // Stopped: a notification is no longer served.
            q.add_desc_chains(&[desc(0x30_0000, 1, true)], 3).unwrap();
            dev.queue_events()[0].write(1).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(q.used().idx().load(), 1, "served after the reset");
            let _ = dev.queue_events()[0].read();
        }
        assert_eq!(
            dev.metrics()
                .reads
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }

    fn interrupt_only() -> Arc<Interrupt> {
        interrupt().1
    }

    /// A hostile guest: random descriptor tables (addresses in and out of memory, any
    /// length, flags and next index), random avail indexes, and headers of every type with
    /// sectors near and past the end. The worker must neither panic nor loop, and the image
    /// keeps its size.
    #[test]
    fn random_queues_and_requests_never_panic_the_worker() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let m = mem();
        let (f, d) = disk(64, false);
        let mut disk = Some(d);
        let (mut used_total, mut ok) = (0u64, 0u64);
        for _round in 0..300 {
            // A fresh queue each round (the mock does not clear the rings).
            m.write_slice(&[0u8; 0x1000], GuestAddress(0)).unwrap();
            let q = MockSplitQueue::create(&m, GuestAddress(0), 16);
            for i in 0..64u64 {
                let types = [0, 1, 4, 8, 2, 11, rng.next() as u32];
                let t = types[rng.below(types.len() as u64) as usize];
                let sector = [0, 1, 62, 63, 64, 65, u64::MAX, rng.next()][rng.below(8) as usize];
                m.write_obj(
                    RequestHeader::new(t, sector),
                    GuestAddress(0x10_0000 + i * 0x1000),
                )
                .unwrap();
            }
            rng.scribble_queue(&m, &q, [0, 1, 16, 512, 1024, 0x10_0000]);
            let (_irq, interrupt) = interrupt();
            let mut w = Worker::new(
                m.clone(),
                vec![q.create_queue::<Queue>().unwrap()],
                interrupt,
                disk.take().unwrap(),
            )
            .unwrap();
            w.process();
            // Not bounded by the queue size: indirect tables made of headers can point
            // IN requests at the rings themselves, and the disk's bytes become new
            // avail entries. The round ends all the same.
            let used = u64::from(q.used().idx().load());
            used_total += used;
            ok += used.saturating_sub(w.malformed());
            disk = Some(w.disk);
        }
        eprintln!("random queues: {used_total} requests used, {ok} of them succeeded");
        assert!(
            used_total > 300,
            "the garbage never got past the queue checks"
        );
        assert!(
            ok > 0,
            "no random request was valid: the generator is too blunt"
        );
        assert_eq!(std::fs::metadata(f.path()).unwrap().len(), 64 * 512);
    }
}
