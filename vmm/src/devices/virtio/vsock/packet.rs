//! vsock packets (virtio 1.x, 5.10.6): the 44-byte little-endian header, reading a packet
//! from a TX descriptor chain and writing one into an RX descriptor chain.
//!
//! The chains come from the guest and are untrusted: a chain whose buffers are not in guest
//! memory, a header that is short, a payload length beyond the chain or beyond
//! [`MAX_PAYLOAD`] is a [`PacketError`], never a panic.

use std::io::{Read, Write};

use thiserror::Error;
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{ByteValued, GuestMemoryMmap};

/// Size of the packet header.
pub const HDR_SIZE: usize = std::mem::size_of::<Header>();
/// The largest payload we accept or produce (Linux' VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// The well-known CID of the host.
pub const HOST_CID: u64 = 2;
/// Stream sockets (the only type we support).
pub const TYPE_STREAM: u16 = 1;

/// Packet operations.
pub mod op {
    /// Connect request.
    pub const REQUEST: u16 = 1;
    /// Connect accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset / refused.
    pub const RST: u16 = 3;
    /// Orderly shutdown of one or both directions.
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// The sender's receive credit changed.
    pub const CREDIT_UPDATE: u16 = 6;
    /// The sender asks for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// `struct virtio_vsock_hdr`, kept in guest (little-endian) byte order.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Header {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    type_: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

// SAFETY: Header is `repr(C, packed)` with only integer fields: every byte pattern is a
// valid value and it has no padding.
unsafe impl ByteValued for Header {}

/// Getters of [`Header`] fields: each reads its little-endian field in host byte order.
macro_rules! le_getters {
    ($($(#[$attr:meta])* $field:ident: $ty:ty;)*) => {
        $(
            $(#[$attr])*
            pub fn $field(&self) -> $ty {
                <$ty>::from_le(self.$field)
            }
        )*
    };
}

impl Header {
    /// A stream packet header from host `src_port` to the guest's `dst_cid`:`dst_port`.
    pub fn new(dst_cid: u64, src_port: u32, dst_port: u32, op: u16) -> Self {
        Header::from_fields(HOST_CID, dst_cid, src_port, dst_port, 0, TYPE_STREAM, op)
    }
    le_getters! {
        /// Source CID.
        src_cid: u64;
        /// Destination CID.
        dst_cid: u64;
        /// Source port.
        src_port: u32;
        /// Destination port.
        dst_port: u32;
        /// Payload length.
        #[allow(clippy::len_without_is_empty)] // a header field, not a container
        len: u32;
        /// Socket type.
        type_: u16;
        /// Operation.
        op: u16;
        /// Operation-specific flags.
        flags: u32;
        /// The sender's receive buffer size.
        buf_alloc: u32;
        /// Bytes the sender has consumed from its receive buffer.
        fwd_cnt: u32;
    }
    /// Sets the payload length.
    pub fn set_len(&mut self, len: u32) -> &mut Self {
        self.len = len.to_le();
        self
    }
    /// Sets the flags.
    pub fn set_flags(&mut self, flags: u32) -> &mut Self {
        self.flags = flags.to_le();
        self
    }
    /// Sets the credit fields.
    pub fn set_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) -> &mut Self {
        self.buf_alloc = buf_alloc.to_le();
        self.fwd_cnt = fwd_cnt.to_le();
        self
    }
    /// Builds a header field by field (tests, and replies to odd guest packets).
    #[allow(clippy::too_many_arguments)]
    pub fn from_fields(
        src_cid: u64,
        dst_cid: u64,
        src_port: u32,
        dst_port: u32,
        len: u32,
        type_: u16,
        op: u16,
    ) -> Self {
        Header {
            src_cid: src_cid.to_le(),
            dst_cid: dst_cid.to_le(),
            src_port: src_port.to_le(),
            dst_port: dst_port.to_le(),
            len: len.to_le(),
            type_: type_.to_le(),
            op: op.to_le(),
            ..Default::default()
        }
    }
}

/// Errors of reading or writing a packet.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PacketError {
    /// The chain's buffers are not all in guest memory or overflow.
    #[error("descriptor chain: {0}")]
    Chain(String),
    /// The TX chain is shorter than a header.
    #[error("TX chain of {0} bytes cannot hold a header")]
    ShortHeader(usize),
    /// The header's length is more than the chain holds or than we accept.
    #[error("payload of {len} bytes, chain holds {avail}")]
    BadLength {
        /// The header's `len`.
        len: u32,
        /// Readable bytes after the header.
        avail: usize,
    },
    /// The RX chain is shorter than a header.
    #[error("RX chain of {0} bytes cannot hold a header")]
    ShortRxBuffer(usize),
    /// Copying from or to guest memory failed.
    #[error("guest memory: {0}")]
    Io(String),
}

/// A chain over guest memory, as popped from a queue.
pub type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// Reads a packet from a TX chain: its header and payload (at most [`MAX_PAYLOAD`]).
pub fn read_tx(mem: &GuestMemoryMmap, chain: Chain<'_>) -> Result<(Header, Vec<u8>), PacketError> {
    let mut reader: Reader<'_> =
        Reader::new(mem, chain).map_err(|e| PacketError::Chain(e.to_string()))?;
    let avail = reader.available_bytes();
    if avail < HDR_SIZE {
        return Err(PacketError::ShortHeader(avail));
    }
    let hdr: Header = reader
        .read_obj()
        .map_err(|e| PacketError::Io(e.to_string()))?;
    let avail = reader.available_bytes();
    let len = hdr.len();
    if len as usize > avail || len as usize > MAX_PAYLOAD {
        return Err(PacketError::BadLength { len, avail });
    }
    let mut data = vec![0u8; len as usize];
    reader
        .read_exact(&mut data)
        .map_err(|e| PacketError::Io(e.to_string()))?;
    Ok((hdr, data))
}

/// The payload capacity of an RX chain (its writable bytes less the header).
pub fn rx_capacity(mem: &GuestMemoryMmap, chain: Chain<'_>) -> Result<usize, PacketError> {
    let writer: Writer<'_> =
        Writer::new(mem, chain).map_err(|e| PacketError::Chain(e.to_string()))?;
    writer
        .available_bytes()
        .checked_sub(HDR_SIZE)
        .ok_or(PacketError::ShortRxBuffer(writer.available_bytes()))
}

/// Writes `hdr` (with `len` set to the payload's) and `payload` into an RX chain; returns
/// the bytes written. The caller sized `payload` with [`rx_capacity`].
pub fn write_rx(
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
    mut hdr: Header,
    payload: &[u8],
) -> Result<u32, PacketError> {
    let mut writer: Writer<'_> =
        Writer::new(mem, chain).map_err(|e| PacketError::Chain(e.to_string()))?;
    let avail = writer.available_bytes();
    if avail < HDR_SIZE {
        return Err(PacketError::ShortRxBuffer(avail));
    }
    if payload.len() > avail - HDR_SIZE || payload.len() > MAX_PAYLOAD {
        return Err(PacketError::BadLength {
            len: payload.len() as u32,
            avail: avail - HDR_SIZE,
        });
    }
    hdr.set_len(payload.len() as u32);
    writer
        .write_obj(hdr)
        .and_then(|()| writer.write_all(payload))
        .map_err(|e| PacketError::Io(e.to_string()))?;
    Ok(writer.bytes_written() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{desc, mem};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    fn hdr(len: u32) -> Header {
        Header::from_fields(3, 2, 1000, 1025, len, TYPE_STREAM, op::RW)
    }

    #[test]
    fn header_is_44_bytes_little_endian() {
        assert_eq!(HDR_SIZE, 44);
        let h = hdr(5);
        let b = h.as_slice();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[16..20], &1000u32.to_le_bytes());
        assert_eq!(&b[24..28], &5u32.to_le_bytes());
        assert_eq!(&b[30..32], &op::RW.to_le_bytes());
    }

    #[test]
    fn tx_packet_split_over_descriptors_is_read() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        m.write_obj(hdr(5), GuestAddress(0x10_0000)).unwrap();
        m.write_slice(b"hello", GuestAddress(0x20_0000)).unwrap();
        let chain = q
            .build_desc_chain(&[
                desc(0x10_0000, HDR_SIZE as u32, false),
                desc(0x20_0000, 3, false),
                desc(0x20_0003, 2, false),
            ])
            .unwrap();
        let (h, data) = read_tx(&m, chain).unwrap();
        assert_eq!((h.src_port(), h.dst_port(), h.op()), (1000, 1025, op::RW));
        assert_eq!(data, b"hello");
    }

    #[test]
    fn malformed_tx_chains_are_errors() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        // Short header.
        let c = q.build_desc_chain(&[desc(0x10_0000, 20, false)]).unwrap();
        assert_eq!(read_tx(&m, c), Err(PacketError::ShortHeader(20)));
        // Length beyond the chain.
        m.write_obj(hdr(100), GuestAddress(0x10_0000)).unwrap();
        let c = q
            .build_desc_chain(&[desc(0x10_0000, HDR_SIZE as u32 + 10, false)])
            .unwrap();
        assert_eq!(
            read_tx(&m, c),
            Err(PacketError::BadLength {
                len: 100,
                avail: 10
            })
        );
        // Length beyond MAX_PAYLOAD even if the chain is that long.
        m.write_obj(hdr(u32::MAX), GuestAddress(0x10_0000)).unwrap();
        let c = q
            .build_desc_chain(&[desc(0x10_0000, 0x20_0000, false)])
            .unwrap();
        assert!(matches!(read_tx(&m, c), Err(PacketError::BadLength { .. })));
        // A buffer outside guest memory.
        let c = q
            .build_desc_chain(&[desc(0x3f_fff0, 0x100, false)])
            .unwrap();
        assert!(matches!(read_tx(&m, c), Err(PacketError::Chain(_))));
        // Write-only descriptors carry nothing for TX.
        let c = q.build_desc_chain(&[desc(0x10_0000, 64, true)]).unwrap();
        assert_eq!(read_tx(&m, c), Err(PacketError::ShortHeader(0)));
    }

    #[test]
    fn rx_packets_are_written_and_bounded() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let descs = [
            desc(0x10_0000, HDR_SIZE as u32, true),
            desc(0x20_0000, 8, true),
        ];
        let c = q.build_desc_chain(&descs).unwrap();
        assert_eq!(rx_capacity(&m, c).unwrap(), 8);
        let c = q.build_desc_chain(&descs).unwrap();
        let n = write_rx(&m, c, Header::new(3, 5, 6, op::RW), b"abc").unwrap();
        assert_eq!(n as usize, HDR_SIZE + 3);
        let h: Header = m.read_obj(GuestAddress(0x10_0000)).unwrap();
        assert_eq!((h.len(), h.src_cid(), h.dst_port()), (3, HOST_CID, 6));
        let mut b = [0u8; 3];
        m.read_slice(&mut b, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(&b, b"abc");
        let c = q.build_desc_chain(&descs).unwrap();
        assert!(write_rx(&m, c, Header::default(), &[0; 9]).is_err());
        let c = q.build_desc_chain(&[desc(0x10_0000, 10, true)]).unwrap();
        assert_eq!(rx_capacity(&m, c), Err(PacketError::ShortRxBuffer(10)));
    }
}
