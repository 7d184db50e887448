//! The virtio-mmio transport, version 2 (virtio 1.x, section 4.2.2): the register file a
//! driver uses to discover a device, negotiate features, set up queues and acknowledge
//! interrupts. The guest learns about a device from `virtio_mmio.device=<size>@<base>:<irq>`
//! on its command line (x86_64) or from a `virtio,mmio` node in its FDT (aarch64).
//!
//! Every register access is checked: registers are 32 bits wide (other widths read as 0 and
//! are ignored), queue selectors out of range select nothing, queue setup after activation
//! is ignored, and features the device did not offer make FEATURES_OK fail. Guest mistakes
//! are logged once at warn, then at debug ([`GuestErrors`]), so a guest cannot flood the
//! log.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::guest_errors::GuestErrors;
use super::{Interrupt, ResetError, VirtioDevice};
use crate::devices::BusDevice;

/// Size of one device's MMIO window.
pub const MMIO_SIZE: u64 = 0x1000;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// Vendor id reported to the guest ("HULL").
const VENDOR_ID: u32 = 0x4c4c_5548;

// Register offsets (virtio 1.x, 4.2.2).
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// The QueueNotify register (also the address of the device's ioeventfds).
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const REG_CONFIG: u64 = 0x100;

// Device status bits (virtio 1.x, 2.1).
const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_FAILED: u32 = 0x80;

/// One virtio device on the MMIO bus.
#[derive(Debug)]
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    status: u32,
    active: bool,
    errors: GuestErrors,
}

impl MmioTransport {
    /// A transport for `device`, whose queues live in `mem` and which interrupts through
    /// `interrupt`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            // A max size that is not a power of two is a bug of ours, not of the guest.
            .map(|&max| Queue::new(max).expect("queue max size is a power of two"))
            .collect();
        MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            status: 0,
            active: false,
            errors: GuestErrors::new("virtio-mmio"),
        }
    }

    /// The device (for tests and the builder).
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        if self.active {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => 0,
            _ => {
                log::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES => {
                if self.status & STATUS_FEATURES_OK != 0 || self.active {
                    return;
                }
                match self.driver_features_sel {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
                    1 => {
                        self.acked_features =
                            (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    // A size that is not a power of two or too big is ignored (through
                    // try_set_size: set_size would log an error per write); the queue then
                    // fails validation at activation.
                    if q.try_set_size(v.try_into().unwrap_or(0)).is_err() {
                        self.errors.record(format_args!("invalid queue size {v}"));
                    }
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            REG_QUEUE_NOTIFY => {
                // Normally KVM consumes this write through an ioeventfd; this is the fallback.
                if let Some(evt) = self.device.queue_events().get(v as usize) {
                    if let Err(e) = evt.write(1) {
                        log::warn!("virtio-mmio: queue notify: {e}");
                    }
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.write_status(v),
            REG_QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            REG_QUEUE_DESC_HIGH => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            REG_QUEUE_DRIVER_LOW => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            REG_QUEUE_DRIVER_HIGH => self.with_queue(|q| q.set_avail_ring_address(None, Some(v))),
            REG_QUEUE_DEVICE_LOW => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            REG_QUEUE_DEVICE_HIGH => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
            _ => log::debug!("virtio-mmio: write of unknown register {offset:#x}"),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            if self.active {
                // The device's thread owns the queues: it must stop and hand its host side
                // back before the registers forget them.
                match self.device.reset() {
                    Ok(()) => {}
                    // Nothing runs any more: the registers start over, and the next
                    // activation fails by name.
                    Err(e @ (ResetError::NotActive | ResetError::Lost)) => {
                        self.errors
                            .record(format_args!("the driver reset an active device: {e}"));
                    }
                    Err(e) => {
                        self.errors.record(format_args!(
                            "the driver reset an active device: {e}; it keeps its queues"
                        ));
                        return;
                    }
                }
                self.active = false;
            }
            self.status = 0;
            self.acked_features = 0;
            self.queue_sel = 0;
            self.queues.iter_mut().for_each(QueueT::reset);
            self.interrupt.ack(u32::MAX);
            return;
        }
        let new = v & !self.status;
        let mut status = v;
        if new & STATUS_FEATURES_OK != 0 && self.acked_features & !self.device.features() != 0 {
            let extra = self.acked_features & !self.device.features();
            self.errors.record(format_args!(
                "driver accepted features {extra:#x} the device did not offer"
            ));
            status &= !STATUS_FEATURES_OK;
        }
        if new & STATUS_DRIVER_OK != 0 && !self.active {
            let ready = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
            if status & ready != ready {
                status |= STATUS_FAILED;
            } else {
                self.activate(&mut status);
            }
        }
        self.status = status;
    }

    fn activate(&mut self, status: &mut u32) {
        if let Some(i) = self.queues.iter().position(|q| !q.is_valid(&self.mem)) {
            self.errors.record(format_args!(
                "queue {i} is not valid; the device stays inactive"
            ));
            *status |= STATUS_FAILED;
            return;
        }
        let queues = std::mem::take(&mut self.queues);
        let sizes: Vec<u16> = queues.iter().map(QueueT::max_size).collect();
        match self.device.activate(
            self.mem.clone(),
            queues,
            self.acked_features,
            self.interrupt.clone(),
        ) {
            Ok(()) => self.active = true,
            Err(e) => {
                log::warn!("virtio-mmio: activating the device: {e}");
                *status |= STATUS_FAILED;
            }
        }
        // Keep the register file answering (QueueNumMax etc.) after the hand-over.
        self.queues = sizes
            .into_iter()
            .filter_map(|max| Queue::new(max).ok())
            .collect();
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            self.device.read_config(offset - REG_CONFIG, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(data) {
            Ok(d) if offset % 4 == 0 => *d = self.read_reg(offset).to_le_bytes(),
            Ok(d) => *d = [0; 4],
            Err(_) => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            // Every config field of our devices is read-only.
            return;
        }
        if let (Ok(d), 0) = (<[u8; 4]>::try_from(data), offset % 4) {
            self.write_reg(offset, u32::from_le_bytes(d));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    /// What the dummy device was activated with: (queues, acked features).
    type Activated = Arc<Mutex<Option<(usize, u64)>>>;

    #[derive(Debug)]
    struct Dummy {
        events: Vec<EventFd>,
        activated: Activated,
        /// What `reset` fails with; `None`: it succeeds.
        reset_err: Option<fn() -> ResetError>,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            19
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn features(&self) -> u64 {
            super::super::VIRTIO_F_VERSION_1
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(0);
            if offset == 0 && !data.is_empty() {
                data[0] = 3;
            }
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.events
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            queues: Vec<Queue>,
            acked: u64,
            _interrupt: Arc<Interrupt>,
        ) -> Result<(), super::super::ActivateError> {
            *self.activated.lock().unwrap() = Some((queues.len(), acked));
            Ok(())
        }
        fn reset(&mut self) -> Result<(), super::super::ResetError> {
            if let Some(err) = self.reset_err {
                return Err(err());
            }
            *self.activated.lock().unwrap() = None;
            Ok(())
        }
    }

    fn transport() -> (MmioTransport, Activated, Arc<Interrupt>) {
        transport_of(Some(|| ResetError::Unsupported))
    }

    fn transport_of(
        reset_err: Option<fn() -> ResetError>,
    ) -> (MmioTransport, Activated, Arc<Interrupt>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let activated = Arc::new(Mutex::new(None));
        let dev = Dummy {
            events: vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()],
            activated: activated.clone(),
            reset_err,
        };
        let irq = Arc::new(Interrupt::new(EventFd::new(0).unwrap()));
        (
            MmioTransport::new(Box::new(dev), mem, irq.clone()),
            activated,
            irq,
        )
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }
    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    #[test]
    fn identification_registers() {
        let (mut t, _, _) = transport();
        assert_eq!(r(&mut t, REG_MAGIC), MAGIC);
        assert_eq!(r(&mut t, REG_VERSION), 2);
        assert_eq!(r(&mut t, REG_DEVICE_ID), 19);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 7);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 0);
        let mut b = [0u8; 8];
        t.read(REG_CONFIG, &mut b);
        assert_eq!(b[0], 3);
        // Odd widths and offsets read as nothing.
        let mut two = [0xffu8; 2];
        t.read(REG_MAGIC, &mut two);
        assert_eq!(two, [0xff; 2]);
        assert_eq!(r(&mut t, REG_MAGIC + 1), 0);
    }

    /// Sets up both queues at valid addresses and drives the status handshake.
    fn bring_up(t: &mut MmioTransport, features_hi: u32) {
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, REG_DRIVER_FEATURES_SEL, 1);
        w(t, REG_DRIVER_FEATURES, features_hi);
        w(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        for q in 0..2u32 {
            let base = 0x1000 * (q + 1);
            w(t, REG_QUEUE_SEL, q);
            assert_eq!(r(t, REG_QUEUE_NUM_MAX), 16);
            w(t, REG_QUEUE_NUM, 16);
            w(t, REG_QUEUE_DESC_LOW, base);
            w(t, REG_QUEUE_DRIVER_LOW, base + 0x100);
            w(t, REG_QUEUE_DEVICE_LOW, base + 0x200);
            w(t, REG_QUEUE_READY, 1);
        }
        w(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
    }

    #[test]
    fn driver_ok_activates_the_device_with_its_queues() {
        let (mut t, activated, _) = transport();
        bring_up(&mut t, 1);
        assert_eq!(*activated.lock().unwrap(), Some((2, 1 << 32)));
        assert_eq!(t.status() & STATUS_FAILED, 0);
        // Queue setup after activation is ignored, and so is the reset of a device that
        // cannot be reset once active.
        w(&mut t, REG_QUEUE_SEL, 0);
        w(&mut t, REG_QUEUE_READY, 0);
        w(&mut t, REG_STATUS, 0);
        assert_ne!(t.status(), 0);
        assert!(activated.lock().unwrap().is_some());
    }

    #[test]
    fn a_device_whose_worker_is_lost_starts_over_and_a_slow_one_keeps_its_queues() {
        let (mut t, _, _) = transport_of(Some(|| ResetError::Lost));
        bring_up(&mut t, 1);
        w(&mut t, REG_STATUS, 0);
        assert_eq!(t.status(), 0, "nothing runs: the registers start over");
        let (mut t, _, _) = transport_of(Some(|| ResetError::Timeout(Duration::ZERO)));
        bring_up(&mut t, 1);
        let before = t.status();
        w(&mut t, REG_STATUS, 0);
        assert_eq!(t.status(), before, "the worker still owns the queues");
    }

    #[test]
    fn a_reset_device_forgets_its_setup_and_can_be_activated_again() {
        let (mut t, activated, irq) = transport_of(None);
        bring_up(&mut t, 1);
        assert_eq!(*activated.lock().unwrap(), Some((2, 1 << 32)));
        irq.signal_used_queue();
        w(&mut t, REG_QUEUE_SEL, 1);
        w(&mut t, REG_STATUS, 0);
        assert_eq!(*activated.lock().unwrap(), None, "the device was reset");
        assert_eq!(t.status(), 0);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
        // The driver starts over, with other features this time.
        bring_up(&mut t, 0);
        assert_eq!(*activated.lock().unwrap(), Some((2, 0)));
        assert_eq!(t.status() & STATUS_FAILED, 0);
    }

    #[test]
    fn unoffered_features_fail_features_ok() {
        let (mut t, activated, _) = transport();
        bring_up(&mut t, 0x8000_0001);
        assert_eq!(t.status() & STATUS_FEATURES_OK, 0);
        assert_eq!(*activated.lock().unwrap(), None);
    }

    #[test]
    fn invalid_queues_do_not_activate() {
        let (mut t, activated, _) = transport();
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        w(&mut t, REG_QUEUE_SEL, 0);
        w(&mut t, REG_QUEUE_DESC_LOW, 0xffff_f000); // outside guest memory
        w(&mut t, REG_QUEUE_READY, 1);
        w(&mut t, REG_QUEUE_SEL, 99); // no such queue: ignored
        w(&mut t, REG_QUEUE_READY, 1);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert_ne!(t.status() & STATUS_FAILED, 0);
        assert_eq!(*activated.lock().unwrap(), None);
    }

    #[test]
    fn notify_and_interrupt_ack() {
        let (mut t, _, irq) = transport();
        w(&mut t, REG_QUEUE_NOTIFY, 1);
        assert_eq!(t.device().queue_events()[1].read().unwrap(), 1);
        w(&mut t, REG_QUEUE_NOTIFY, 1000); // out of range: ignored
        irq.signal_used_queue();
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 1);
        w(&mut t, REG_INTERRUPT_ACK, 1);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
    }
}
