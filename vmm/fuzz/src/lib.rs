//! What the fuzz targets share: a guest built from the fuzz input.
//!
//! An input is one control byte followed by the guest's RAM image from address 0. RAM is
//! [`RAM_SIZE`] bytes in two adjacent regions (split at [`REGION_SPLIT`]), so buffers may
//! straddle a region boundary; addresses from [`RAM_SIZE`] on are not guest memory. The
//! queues sit at fixed addresses inside the image ([`desc_table`], [`avail_ring`],
//! [`used_ring`]), so the input *is* what a hostile driver writes: descriptor tables, avail
//! rings and buffers. The control byte picks the queue size (bits 0-2: log2, at most
//! [`QUEUE_MAX`]) and VIRTIO_F_EVENT_IDX (bit 3); bits 4-7 are free for a target.
//!
//! [`Seed`] builds well-formed inputs for the seed corpora (`gen-seeds`), so the fuzzer
//! starts from packets the device accepts rather than from nothing.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM: `[0, RAM_SIZE)`.
pub const RAM_SIZE: u64 = 0x4000;
/// Where the first RAM region ends and the second begins.
pub const REGION_SPLIT: u64 = 0x2000;
/// The largest queue size a target sets up.
pub const QUEUE_MAX: u16 = 16;
/// Bytes between queue `n` and queue `n + 1`.
const QUEUE_STRIDE: u64 = 0x400;
/// First address after the three queues' rings: where seeds put buffers.
pub const BUFFERS_START: u64 = 3 * QUEUE_STRIDE;
/// The `virtio_blk` target's disk: 16 sectors.
pub const DISK_LEN: u64 = 16 * 512;

/// What the `virtio_blk` target's disk holds before the guest acts: byte `i` is `i % 251`.
pub fn disk_pattern() -> Vec<u8> {
    (0..DISK_LEN).map(|i| (i % 251) as u8).collect()
}

/// A fresh disk for the `virtio_blk` target: a memfd holding [`disk_pattern`].
pub fn disk_file() -> File {
    // SAFETY: memfd_create takes a NUL-terminated name and flags and returns a new fd (or
    // -1), which nothing else owns.
    let fd = unsafe { libc::memfd_create(c"hull-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.write_all_at(&disk_pattern(), 0)
        .expect("filling the disk");
    f
}

/// Guest address of queue `q`'s descriptor table.
pub fn desc_table(q: u64) -> u64 {
    q * QUEUE_STRIDE
}
/// Guest address of queue `q`'s avail ring.
pub fn avail_ring(q: u64) -> u64 {
    q * QUEUE_STRIDE + 0x100
}
/// Guest address of queue `q`'s used ring.
pub fn used_ring(q: u64) -> u64 {
    q * QUEUE_STRIDE + 0x200
}

/// A guest as the input describes it.
#[derive(Debug)]
pub struct Guest {
    /// Its RAM, holding the input's image.
    pub mem: GuestMemoryMmap,
    /// The control byte.
    pub ctrl: u8,
}

impl Guest {
    /// The guest of `data`, or `None` for an empty input.
    pub fn new(data: &[u8]) -> Option<Guest> {
        let (&ctrl, image) = data.split_first()?;
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), REGION_SPLIT as usize),
            (
                GuestAddress(REGION_SPLIT),
                (RAM_SIZE - REGION_SPLIT) as usize,
            ),
        ])
        .expect("fixed guest memory layout");
        let image = &image[..image.len().min(RAM_SIZE as usize)];
        mem.write_slice(image, GuestAddress(0))
            .expect("the image fits guest memory");
        Some(Guest { mem, ctrl })
    }

    /// The queue size the control byte asks for.
    pub fn queue_size(&self) -> u16 {
        1 << ((self.ctrl & 7) % (QUEUE_MAX.trailing_zeros() as u8 + 1))
    }

    /// Queue `q`, set up the way a driver would through the transport and ready.
    pub fn queue(&self, q: u64) -> Queue {
        let mut queue = Queue::new(QUEUE_MAX).expect("QUEUE_MAX is a power of two");
        queue.set_size(self.queue_size());
        queue.set_event_idx(self.ctrl & 8 != 0);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(desc_table(q));
        queue.set_desc_table_address(lo, hi);
        let (lo, hi) = split(avail_ring(q));
        queue.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(used_ring(q));
        queue.set_used_ring_address(lo, hi);
        queue.set_ready(true);
        queue
    }
}

/// Builds a well-formed input: descriptor chains in queues, bytes in buffers.
#[derive(Debug)]
pub struct Seed {
    ctrl: u8,
    image: Vec<u8>,
    /// Per queue: descriptors used so far and chain heads made available.
    queues: [(u16, Vec<u16>); 3],
    /// Next free buffer address.
    next_buf: u64,
}

impl Seed {
    /// An input whose queues have `1 << log2_size` entries.
    pub fn new(log2_size: u8, event_idx: bool) -> Seed {
        Seed {
            ctrl: log2_size | if event_idx { 8 } else { 0 },
            image: Vec::new(),
            queues: Default::default(),
            next_buf: BUFFERS_START,
        }
    }

    /// Writes `bytes` at guest address `addr`.
    pub fn write(&mut self, addr: u64, bytes: &[u8]) -> &mut Self {
        let end = addr as usize + bytes.len();
        if self.image.len() < end {
            self.image.resize(end, 0);
        }
        self.image[addr as usize..end].copy_from_slice(bytes);
        self
    }

    /// Allocates a buffer of `len` bytes (after the rings), filled with `bytes`.
    pub fn buffer(&mut self, len: u32, bytes: &[u8]) -> u64 {
        let addr = self.next_buf;
        self.next_buf += u64::from(len).max(1).next_multiple_of(8);
        self.write(addr, bytes);
        addr
    }

    /// Adds a chain of `(addr, len, device-writable)` buffers to queue `q` and makes it
    /// available.
    pub fn chain(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> &mut Self {
        let first = self.queues[q].0;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let index = first + i as u16;
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let mut d = Vec::with_capacity(16);
            d.extend_from_slice(&addr.to_le_bytes());
            d.extend_from_slice(&len.to_le_bytes());
            d.extend_from_slice(&flags.to_le_bytes());
            d.extend_from_slice(&(index + 1).to_le_bytes());
            self.write(desc_table(q as u64) + 16 * u64::from(index), &d);
        }
        self.queues[q].0 += bufs.len() as u16;
        self.queues[q].1.push(first);
        self
    }

    /// The input: the control byte, then the image with every queue's avail ring filled.
    pub fn build(&mut self) -> Vec<u8> {
        for q in 0..3 {
            let heads = self.queues[q].1.clone();
            let avail = avail_ring(q as u64);
            self.write(avail + 2, &(heads.len() as u16).to_le_bytes());
            for (i, h) in heads.iter().enumerate() {
                self.write(avail + 4 + 2 * i as u64, &h.to_le_bytes());
            }
        }
        let mut input = vec![self.ctrl];
        input.extend_from_slice(&self.image);
        input
    }
}

/// A vsock packet header (guest CID 3 → host CID 2), in guest byte order.
pub fn vsock_header(src_port: u32, dst_port: u32, len: u32, op: u16, buf_alloc: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(&3u64.to_le_bytes());
    h.extend_from_slice(&2u64.to_le_bytes());
    h.extend_from_slice(&src_port.to_le_bytes());
    h.extend_from_slice(&dst_port.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes()); // stream
    h.extend_from_slice(&op.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes()); // flags
    h.extend_from_slice(&buf_alloc.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes()); // fwd_cnt
    h
}

/// One virtio-mmio register access as the `virtio_mmio` target encodes it (32 bits wide).
pub fn mmio_access(write: bool, offset: u16, value: u32) -> Vec<u8> {
    let mut a = vec![u8::from(write) | (2 << 1)];
    a.extend_from_slice(&offset.to_le_bytes());
    a.extend_from_slice(&value.to_le_bytes());
    a
}

/// A driver's initialisation (virtio 1.x, 3.1.1) of a two-queue device whose queues are at
/// the addresses of queues 0 and 1 here, ending with DRIVER_OK, a notify and an ACK.
pub fn mmio_driver_init(event_idx: bool) -> Vec<Vec<u8>> {
    let a = mmio_access;
    let mut regs = vec![
        a(false, 0x000, 0), // MagicValue
        a(false, 0x008, 0), // DeviceID
        a(true, 0x070, 1),  // Status: ACKNOWLEDGE
        a(true, 0x070, 3),  // Status: DRIVER
        a(true, 0x014, 0),  // DeviceFeaturesSel
        a(false, 0x010, 0), // DeviceFeatures
        a(true, 0x024, 0),  // DriverFeaturesSel
        a(true, 0x020, if event_idx { 1 << 29 } else { 0 }),
        a(true, 0x024, 1),
        a(true, 0x020, 1),  // VERSION_1
        a(true, 0x070, 11), // Status: FEATURES_OK
        a(false, 0x070, 0),
    ];
    for q in 0..2u32 {
        let q64 = u64::from(q);
        regs.extend([
            a(true, 0x030, q),  // QueueSel
            a(false, 0x034, 0), // QueueNumMax
            a(true, 0x038, u32::from(QUEUE_MAX)),
            a(true, 0x080, desc_table(q64) as u32),
            a(true, 0x084, 0),
            a(true, 0x090, avail_ring(q64) as u32),
            a(true, 0x094, 0),
            a(true, 0x0a0, used_ring(q64) as u32),
            a(true, 0x0a4, 0),
            a(true, 0x044, 1), // QueueReady
        ]);
    }
    regs.extend([
        a(true, 0x070, 15), // Status: DRIVER_OK
        a(true, 0x050, 1),  // QueueNotify
        a(false, 0x060, 0), // InterruptStatus
        a(true, 0x064, 1),  // InterruptACK
        a(false, 0x100, 0), // config space
    ]);
    regs
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_vmm::devices::virtio::vsock::packet::{self, op};

    /// A seed's chains pop from the queue the target builds, and parse as the packets
    /// written: the seed layout and the target layout agree.
    #[test]
    fn seeds_decode_as_built() {
        let mut s = Seed::new(4, false);
        let hdr = vsock_header(700, 1025, 5, op::RW, 4096);
        let h = s.buffer(44, &hdr);
        let p = s.buffer(5, b"hello");
        s.chain(1, &[(h, 44, false), (p, 5, false)]);
        let input = s.build();
        let g = Guest::new(&input).unwrap();
        assert_eq!(g.queue_size(), 16);
        let mut q = g.queue(1);
        assert!(q.is_valid(&g.mem));
        let chain = q.pop_descriptor_chain(&g.mem).unwrap();
        let (hdr, data) = packet::read_tx(&g.mem, chain).unwrap();
        assert_eq!(
            (hdr.dst_port(), hdr.op(), data.as_slice()),
            (1025, op::RW, &b"hello"[..])
        );
        assert!(q.pop_descriptor_chain(&g.mem).is_none());
    }

    /// The `virtio_mmio` seeds' register sequence really activates a device: the fuzzer
    /// starts past feature negotiation and queue setup.
    #[test]
    fn mmio_init_sequence_activates_the_device() {
        use hull_vmm::devices::virtio::mmio::MmioTransport;
        use hull_vmm::devices::virtio::{ActivateError, Interrupt, VirtioDevice};
        use hull_vmm::devices::BusDevice;
        use std::sync::{Arc, Mutex};
        use vmm_sys_util::eventfd::EventFd;

        #[derive(Debug)]
        struct Dev(Vec<EventFd>, Arc<Mutex<Option<u64>>>);
        impl VirtioDevice for Dev {
            fn device_type(&self) -> u32 {
                19
            }
            fn queue_max_sizes(&self) -> &[u16] {
                &[QUEUE_MAX, QUEUE_MAX]
            }
            fn features(&self) -> u64 {
                hull_vmm::devices::virtio::VIRTIO_F_VERSION_1 | 1 << 29
            }
            fn read_config(&self, _: u64, _: &mut [u8]) {}
            fn queue_events(&self) -> &[EventFd] {
                &self.0
            }
            fn activate(
                &mut self,
                _: GuestMemoryMmap,
                _: Vec<Queue>,
                acked: u64,
                _: Arc<Interrupt>,
            ) -> Result<(), ActivateError> {
                *self.1.lock().unwrap() = Some(acked);
                Ok(())
            }
        }
        for event_idx in [false, true] {
            let g = Guest::new(&[4]).unwrap();
            let acked = Arc::new(Mutex::new(None));
            let events = (0..2).map(|_| EventFd::new(0).unwrap()).collect();
            let irq = Arc::new(Interrupt::new(EventFd::new(0).unwrap()));
            let mut t = MmioTransport::new(Box::new(Dev(events, acked.clone())), g.mem, irq);
            for r in mmio_driver_init(event_idx) {
                let (write, offset) = (r[0] & 1 == 1, u16::from_le_bytes([r[1], r[2]]));
                let value = [r[3], r[4], r[5], r[6]];
                if write {
                    t.write(u64::from(offset), &value);
                } else {
                    t.read(u64::from(offset), &mut [0; 4]);
                }
            }
            let want = (1 << 32) | if event_idx { 1 << 29 } else { 0 };
            assert_eq!(*acked.lock().unwrap(), Some(want));
            assert_eq!(t.status(), 15);
        }
    }

    /// A `virtio_blk` seed's read request reads the disk the target builds, into the
    /// buffer the seed posted.
    #[test]
    fn blk_seed_reads_the_targets_disk() {
        use hull_vmm::devices::virtio::block::device::Worker;
        use hull_vmm::devices::virtio::block::request::{req_type, Disk, RequestHeader};
        use hull_vmm::devices::virtio::Interrupt;
        use std::sync::Arc;
        use vm_memory::ByteValued;
        use vmm_sys_util::eventfd::EventFd;

        let mut s = Seed::new(4, false);
        let h = s.buffer(16, RequestHeader::new(req_type::IN, 1).as_slice());
        let d = s.buffer(512, &[]);
        let st = s.buffer(1, &[0xff]);
        s.chain(0, &[(h, 16, false), (d, 512, true), (st, 1, true)]);
        let g = Guest::new(&s.build()).unwrap();
        let f = disk_file();
        let irq = Arc::new(Interrupt::new(EventFd::new(0).unwrap()));
        let disk = Disk::new(f, DISK_LEN, true, "seed");
        let mut w = Worker::new(g.mem.clone(), vec![g.queue(0)], irq, disk).unwrap();
        w.process();
        let mut got = vec![0u8; 512];
        g.mem.read_slice(&mut got, GuestAddress(d)).unwrap();
        assert_eq!(got, disk_pattern()[512..1024]);
        assert_eq!(g.mem.read_obj::<u8>(GuestAddress(st)).unwrap(), 0);
        assert_eq!(w.malformed(), 0);
    }
}
