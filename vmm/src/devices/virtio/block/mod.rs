//! virtio-blk (device id 2) over a raw image file.
//!
//! - [`request`]: parsing and validating one request (header, data buffers, status byte)
//!   from a descriptor chain, and executing it against the [`request::Disk`];
//! - [`device`]: the virtio device (features, config space with the capacity) and its
//!   worker thread, which drains the request queue.
//!
//! Requests: IN, OUT, FLUSH, GET_ID. Features: VERSION_1, FLUSH, SEG_MAX, BLK_SIZE and RO
//! when the image is read-only. Not here: DISCARD/WRITE_ZEROES, multiple queues, async I/O
//! (requests are executed one after another with blocking reads and writes on the device
//! thread), image formats other than raw, config-change events (a resized file is not
//! noticed).

pub mod device;
pub mod request;

pub use device::Block;
