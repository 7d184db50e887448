//! virtio devices on the virtio-mmio transport (virtio 1.x, MMIO version 2).
//!
//! A device ([`VirtioDevice`]) owns its behaviour and, once the driver sets DRIVER_OK, its
//! queues; the transport ([`mmio::MmioTransport`]) owns the register file the guest drives
//! and hands the queues over on activation. Queues are rust-vmm's `virtio-queue` split
//! queues. Notifications reach the device as eventfds (KVM ioeventfds on the QueueNotify
//! register, with the transport as fallback); the device interrupts the guest through an
//! irqfd on the in-kernel irqchip ([`Interrupt`]).
//!
//! The driver may reset an active device (status 0): the transport asks the device to stop
//! its worker and take back its host resources ([`VirtioDevice::reset`], [`worker::Stopper`]),
//! then forgets the queues and features, so that the driver can set it up again. vsock,
//! blk and net do so; virtio-fs cannot (its queues live in virtiofsd) and keeps running.
//!
//! Not here: packed queues, PCI.

pub mod block;
pub mod fs;
pub mod guest_errors;
pub mod mmio;
pub mod net;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod vsock;
pub mod worker;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use thiserror::Error;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// `VIRTIO_F_VERSION_1`: every device offers it (modern MMIO transport only).
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Interrupt status bit: a queue has new used buffers.
pub const VIRTIO_MMIO_INT_VRING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// Interrupt status bit: the configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// Errors of activating a device.
#[derive(Debug, Error)]
pub enum ActivateError {
    /// The driver set up fewer or more queues than the device has, or an invalid one.
    #[error("queue {0} is not valid in guest memory")]
    InvalidQueue(usize),
    /// The device's worker thread could not be started.
    #[error("starting the device thread: {0}")]
    Spawn(std::io::Error),
    /// The device was activated twice.
    #[error("the device is already active")]
    AlreadyActive,
    /// The device's out-of-process backend (vhost-user) refused or failed a request.
    #[error("the vhost-user backend: {0}")]
    Backend(String),
}

/// Errors of resetting an active device.
#[derive(Debug, Error)]
pub enum ResetError {
    /// The device cannot be reset once active; it keeps running.
    #[error("this device cannot be reset once active")]
    Unsupported,
    /// No worker runs (never activated, or it could not be started).
    #[error("the device has no running worker")]
    NotActive,
    /// Waking the worker failed.
    #[error("waking the device thread: {0}")]
    Wake(std::io::Error),
    /// The worker did not hand its resources back in time; it is asked again at the next
    /// reset.
    #[error("the device thread did not stop within {0:?}")]
    Timeout(std::time::Duration),
    /// The worker ended without handing its resources back: the device cannot start again.
    #[error("the device thread ended without handing its resources back")]
    Lost,
}

/// A device's interrupt line: the MMIO InterruptStatus bits and the irqfd KVM injects.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    /// An interrupt line raised through `irqfd`.
    pub fn new(irqfd: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Tells the driver that a queue has new used buffers.
    pub fn signal_used_queue(&self) {
        self.status
            .fetch_or(VIRTIO_MMIO_INT_VRING, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            log::warn!("virtio: raising the interrupt: {e}");
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver's InterruptACK write: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send + std::fmt::Debug {
    /// The virtio device id (e.g. 19 for vsock).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits the device offers.
    fn features(&self) -> u64;
    /// Reads the device configuration space at `offset`; out-of-range bytes read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// One eventfd per queue, written when the driver notifies that queue.
    fn queue_events(&self) -> &[EventFd];
    /// Starts the device with the queues the driver set up and the features it accepted.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        acked_features: u64,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError>;
    /// The driver reset the active device: stop using the queues, take the host resources
    /// back and be ready for another [`VirtioDevice::activate`]. Devices that cannot keep
    /// the default, which leaves them running.
    fn reset(&mut self) -> Result<(), ResetError> {
        Err(ResetError::Unsupported)
    }
}
