//! virtio-vsock (device id 19) with its host side as hybrid vsock on a unix socket.
//!
//! - [`packet`]: the packet header and reading/writing packets from/to descriptor chains;
//! - [`muxer`]: the unix sockets and the per-connection state machine and credit;
//! - [`device`]: the virtio device (config space: the guest CID) and its worker thread,
//!   which moves packets between the queues and the muxer.
//!
//! Not here: the event queue's transport-reset event (the device never resets), seqpacket
//! sockets, connections between guests.

pub mod device;
pub mod muxer;
pub mod packet;

pub use device::Vsock;

/// The CID hull guests get.
pub const GUEST_CID: u64 = 3;
