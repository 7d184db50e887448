//! virtio-net (device id 1) over a Linux tap.
//!
//! - [`tap`]: opening a tap by name or adopting an inherited tap fd, configured with a
//!   12-byte vnet header and no offloads;
//! - [`device`]: the virtio device (config space: the MAC) and its worker thread, which
//!   moves frames between the RX/TX queues and the tap.
//!
//! Features: VERSION_1 and MAC only. Not here: checksum and segmentation offloads
//! (CSUM, GUEST_/HOST_TSO*), mergeable RX buffers, multiqueue, the control queue, link
//! status, vhost-net, rate limiting.

pub mod device;
pub mod tap;

pub use device::Net;
pub use tap::Tap;

/// The MAC a guest gets when none is given: locally administered, unicast.
pub const DEFAULT_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];
