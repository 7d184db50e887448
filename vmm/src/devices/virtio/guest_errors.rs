//! Rate-limited reporting of a guest's virtio mistakes, and popping chains without
//! virtio-queue's own per-call error logging.
//!
//! A hostile or broken driver can make every notification fail; logging each failure at
//! warn would let it fill the host's disk. [`GuestErrors`] logs the first one per device at
//! warn and the rest at debug, and counts them all; its clones share the count, so a
//! device's successive workers (one per activation, after a driver's reset) log once in all. [`pop_chain`] is
//! `Queue::pop_descriptor_chain` minus its `error!` on a bad avail index (one line per
//! notification), and skips heads that are not descriptor indexes (they cannot be put on
//! the used ring).

use std::fmt::Arguments;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

/// A device's count of guest errors (shared by its clones).
#[derive(Debug, Default, Clone)]
pub struct GuestErrors {
    device: &'static str,
    count: Arc<AtomicU64>,
}

impl GuestErrors {
    /// Errors of `device` (its name in log lines).
    pub fn new(device: &'static str) -> Self {
        GuestErrors {
            device,
            count: Arc::default(),
        }
    }

    /// Counts and logs one error.
    pub fn record(&mut self, what: Arguments<'_>) {
        if self.count.fetch_add(1, Ordering::Relaxed) == 0 {
            log::warn!(
                "{}: guest error: {what} (further ones are logged at debug)",
                self.device
            );
        } else {
            log::debug!("{}: guest error: {what}", self.device);
        }
    }

    /// Errors so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The next available chain of `queue`, if any; a broken avail ring counts as an error and
/// ends the round.
pub fn pop_chain<'a>(
    queue: &mut Queue,
    mem: &'a GuestMemoryMmap,
    errors: &mut GuestErrors,
) -> Option<DescriptorChain<&'a GuestMemoryMmap>> {
    loop {
        let chain = match queue.iter(mem) {
            Ok(mut it) => it.next()?,
            Err(e) => {
                errors.record(format_args!("avail ring: {e}"));
                return None;
            }
        };
        if chain.head_index() < queue.size() {
            return Some(chain);
        }
        errors.record(format_args!(
            "avail ring entry {} is beyond the queue",
            chain.head_index()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    #[test]
    fn clones_share_the_count() {
        let mut first = GuestErrors::new("test");
        let mut next = first.clone();
        first.record(format_args!("one"));
        next.record(format_args!("two"));
        assert_eq!((first.count(), next.count()), (2, 2));
        assert_eq!(GuestErrors::new("other").count(), 0);
    }

    #[test]
    fn heads_beyond_the_queue_are_skipped_and_a_runaway_avail_index_ends_the_round() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let q = MockSplitQueue::create(&m, GuestAddress(0), 16);
        let avail = q.avail_addr();
        // Entries: head 40 (beyond a 16-entry queue), then head 3.
        m.write_obj(40u16, avail.unchecked_add(4)).unwrap();
        m.write_obj(3u16, avail.unchecked_add(6)).unwrap();
        m.write_obj(2u16, avail.unchecked_add(2)).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        let mut errors = GuestErrors::new("test");
        let chain = pop_chain(&mut queue, &m, &mut errors).expect("head 3");
        assert_eq!(chain.head_index(), 3);
        assert_eq!(errors.count(), 1);
        assert!(pop_chain(&mut queue, &m, &mut errors).is_none());
        assert_eq!(errors.count(), 1);
        // The driver claims 1000 new entries in a 16-entry ring.
        m.write_obj(1002u16, avail.unchecked_add(2)).unwrap();
        assert!(pop_chain(&mut queue, &m, &mut errors).is_none());
        assert_eq!(errors.count(), 2);
    }
}
