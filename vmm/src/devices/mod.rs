//! Emulated devices and the buses that route guest accesses to them.
//!
//! Legacy devices: the 8250 UART console ([`serial`]) and the i8042 reset line ([`i8042`]).
//! virtio devices on the MMIO transport ([`virtio`]): vsock. Devices own their state; a vCPU
//! thread calls into them through a [`bus::Bus`] under the device's own lock; virtio devices
//! move their queues on their own thread.

pub mod bus;
pub mod i8042;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
