//! What the virtio devices' unit tests share: a small guest memory, single descriptors for
//! virtio-queue's `MockSplitQueue`, an interrupt line whose irqfd the test reads, and a
//! fixed-seed generator that fills a queue with a hostile guest's descriptor table and
//! avail ring.
//!
//! Test code only; nothing here runs in hull-vmm.

use std::sync::Arc;

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::Interrupt;

/// 4 MiB of guest memory at 0.
pub(crate) fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
}

/// A descriptor of `len` bytes at `addr`, device-writable if `write`, with no next.
pub(crate) fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
    let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

/// An interrupt line and (a duplicate of) its irqfd, non-blocking, to see it raised.
pub(crate) fn interrupt() -> (EventFd, Arc<Interrupt>) {
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let i = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
    (irq, i)
}

/// Polls `ready` every 2 ms until it gives a value (a device thread's doing); fails the
/// test naming `what` after 10 s.
pub(crate) fn wait_for<T>(what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = ready() {
            return v;
        }
        assert!(start.elapsed().as_secs() < 10, "waited 10 s for {what}");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// xorshift64*: a fixed-seed generator, so a failure reproduces.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Overwrites the 16-entry queue `q` with garbage: every descriptor gets an address in
    /// or out of memory (mostly one of the 64 pages from 1 MiB), one of `lens` or a random
    /// length, any flags (NEXT, WRITE, INDIRECT in any mix) and a next index up to 19; the
    /// avail index is up to 39 and the avail entries up to 19.
    pub(crate) fn scribble_queue(
        &mut self,
        m: &GuestMemoryMmap,
        q: &MockSplitQueue<'_, GuestMemoryMmap>,
        lens: [u32; 6],
    ) {
        for i in 0..16u64 {
            let addr = match self.below(4) {
                0 => self.next(),
                1 => 0x3f_f000 + self.below(0x2000),
                _ => 0x10_0000 + self.below(64) * 0x1000,
            };
            let [l0, l1, l2, l3, l4, l5] = lens;
            let len = [l0, l1, l2, l3, l4, l5, self.next() as u32][self.below(7) as usize];
            let flags = self.below(8) as u16;
            let next = self.below(20) as u16;
            let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
            m.write_obj(d, q.desc_table_addr().unchecked_add(i * 16))
                .unwrap();
        }
        let avail = q.avail_addr();
        m.write_obj(self.below(40) as u16, avail.unchecked_add(2))
            .unwrap();
        for i in 0..16u64 {
            m.write_obj(self.below(20) as u16, avail.unchecked_add(4 + 2 * i))
                .unwrap();
        }
    }
}
