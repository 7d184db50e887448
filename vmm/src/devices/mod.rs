//! Emulated devices and the buses that route guest accesses to them.
//!
//! Legacy devices only so far: the 8250 UART console ([`serial`]) and the i8042 reset line
//! ([`i8042`]). Devices own their state; a vCPU thread calls into them through a [`bus::Bus`]
//! under the device's own lock. virtio-mmio devices come next (issue 3).

pub mod bus;
pub mod i8042;
pub mod serial;

pub use bus::{Bus, BusDevice, BusError};
