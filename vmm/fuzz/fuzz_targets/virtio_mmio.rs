//! Fuzzes the virtio-mmio transport as a hostile driver drives it: any sequence of register
//! reads and writes (any offset, width and value: feature negotiation, queue selection,
//! sizes and ring addresses, status, interrupt ACK, config space), with guest RAM from the
//! input. When the transport activates the device, the device pops every chain of the
//! queues the driver set up (addresses and sizes of its choosing, unlike the other targets'
//! fixed ones) and parses each as a vsock TX packet or writes an RX packet into it.
//!
//! Input: byte 0 = number of register accesses N (at most 64), then N accesses of 7 bytes
//! (kind, offset u16 LE, value u32 LE; kind bit 0 = write, bits 1-2 = width 1/2/4/8),
//! then a control byte and the RAM image as `hull_vmm_fuzz::Guest` reads them.
//!
//! Oracles besides "no panic": the device is activated at most once between two resets,
//! only with queues that are valid in guest memory and only with features it offered; the
//! transport asks it to reset only while it is active (then the driver may start over).
#![no_main]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hull_vmm::devices::virtio::mmio::MmioTransport;
use hull_vmm::devices::virtio::vsock::packet::{self, op, Header, MAX_PAYLOAD};
use hull_vmm::devices::virtio::{
    ActivateError, Interrupt, ResetError, VirtioDevice, VIRTIO_F_VERSION_1,
};
use hull_vmm::devices::BusDevice;
use hull_vmm_fuzz::{Guest, QUEUE_MAX};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

const EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// A two-queue device that consumes its queues synchronously when activated.
#[derive(Debug)]
struct Consumer {
    events: Vec<EventFd>,
    activated: Arc<AtomicBool>,
}

impl VirtioDevice for Consumer {
    fn device_type(&self) -> u32 {
        19
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX, QUEUE_MAX]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | EVENT_IDX
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset.wrapping_add(i as u64) as u8;
        }
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.events
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        mut queues: Vec<Queue>,
        acked_features: u64,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        assert!(
            !self.activated.swap(true, Ordering::SeqCst),
            "activated twice"
        );
        assert_eq!(acked_features & !self.features(), 0, "unoffered features");
        for q in &mut queues {
            assert!(q.is_valid(&mem), "an invalid queue was handed over");
            q.set_event_idx(acked_features & EVENT_IDX != 0);
            for _ in 0..4 * QUEUE_MAX {
                let Some(chain) = q.pop_descriptor_chain(&mem) else {
                    break;
                };
                let head = chain.head_index();
                let _ = packet::read_tx(&mem, chain.clone());
                if let Ok(cap) = packet::rx_capacity(&mem, chain.clone()) {
                    let payload = vec![0x5a; cap.min(MAX_PAYLOAD)];
                    let _ = packet::write_rx(&mem, chain, Header::new(3, 1, 2, op::RW), &payload);
                }
                let _ = q.add_used(&mem, head, 0);
            }
            if q.needs_notification(&mem).unwrap_or(true) {
                interrupt.signal_used_queue();
            }
        }
        Ok(())
    }
    fn reset(&mut self) -> Result<(), ResetError> {
        assert!(
            self.activated.swap(false, Ordering::SeqCst),
            "reset while not active"
        );
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n.min(64));
    let Some((ops, image)) = rest.split_at_checked(7 * n) else {
        return;
    };
    let Some(g) = Guest::new(image) else {
        return;
    };
    let dev = Consumer {
        events: (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))
            .collect(),
        activated: Arc::new(AtomicBool::new(false)),
    };
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let mut t = MmioTransport::new(Box::new(dev), g.mem.clone(), Arc::new(Interrupt::new(irq)));
    for access in ops.chunks_exact(7) {
        let kind = access[0];
        let offset = u64::from(u16::from_le_bytes([access[1], access[2]])) % 0x200;
        let value = u32::from_le_bytes([access[3], access[4], access[5], access[6]]);
        let width = 1usize << ((kind >> 1) & 3);
        let bytes = u64::from(value).to_le_bytes();
        if kind & 1 == 1 {
            t.write(offset, &bytes[..width]);
        } else {
            let mut buf = [0u8; 8];
            t.read(offset, &mut buf[..width]);
        }
    }
});
