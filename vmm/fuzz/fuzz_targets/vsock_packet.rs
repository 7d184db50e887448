//! Fuzzes the vsock packet parser: every chain a hostile driver can put in a queue is read
//! as a TX packet and, where it has writable room, written as an RX packet.
//!
//! Oracles besides "no panic": a TX packet read is exactly as long as its header says and
//! at most MAX_PAYLOAD; an RX chain whose capacity was reported takes a packet of that
//! capacity and reports header + payload bytes written.
#![no_main]

use hull_vmm::devices::virtio::vsock::packet::{self, op, Header, HDR_SIZE, MAX_PAYLOAD};
use hull_vmm_fuzz::{Guest, QUEUE_MAX};
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;

fuzz_target!(|data: &[u8]| {
    let Some(g) = Guest::new(data) else {
        return;
    };
    let mut q = g.queue(0);
    // A queue never yields more chains than its size between two avail-index reads; the
    // bound only guards this harness against a device bug that loops.
    for _ in 0..4 * QUEUE_MAX {
        let Some(chain) = q.pop_descriptor_chain(&g.mem) else {
            break;
        };
        let head = chain.head_index();
        if let Ok((hdr, payload)) = packet::read_tx(&g.mem, chain.clone()) {
            assert_eq!(payload.len(), hdr.len() as usize);
            assert!(payload.len() <= MAX_PAYLOAD);
        }
        if let Ok(cap) = packet::rx_capacity(&g.mem, chain.clone()) {
            let payload = vec![0xa5; cap.min(MAX_PAYLOAD)];
            let n = packet::write_rx(&g.mem, chain, Header::new(3, 1, 2, op::RW), &payload)
                .expect("an RX chain takes the capacity it reported");
            assert_eq!(n as usize, HDR_SIZE + payload.len());
        }
        let _ = q.add_used(&g.mem, head, 0);
    }
});
