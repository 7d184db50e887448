//! virtio-blk requests (virtio 1.x, 5.2.6): the 16-byte header, the data buffers and the
//! status byte of one descriptor chain, validated; and their execution on a raw [`Disk`].
//!
//! The chain comes from the guest and is untrusted. [`parse`] checks, before any I/O:
//! the last descriptor is device-writable and holds the status byte; the first is
//! device-readable and holds the header; no readable descriptor follows a writable one;
//! data buffers point the way the request type needs (IN and GET_ID: writable, OUT:
//! readable); every buffer lies in guest memory; lengths add up without overflow, are whole
//! sectors and stay within the disk's capacity; no OUT reaches a read-only disk. A request
//! that fails a check is answered IOERR (UNSUPP for an unknown type) when its status byte
//! can be written, and dropped (used with length 0) when it cannot. Nothing here panics on
//! guest input.
//!
//! Not here: the queue itself ([`super::device`]), DISCARD and WRITE_ZEROES.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use thiserror::Error;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// Bytes per sector (virtio-blk's unit of `sector` and `capacity`, whatever BLK_SIZE says).
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;
/// Most descriptors one request may have (data segments + header + status).
pub const MAX_DESCRIPTORS: usize = 1024;

/// Request types.
pub mod req_type {
    /// Read sectors into the guest.
    pub const IN: u32 = 0;
    /// Write sectors from the guest.
    pub const OUT: u32 = 1;
    /// Flush written data to stable storage.
    pub const FLUSH: u32 = 4;
    /// Return the device id string.
    pub const GET_ID: u32 = 8;
}

/// Status byte values.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// The request failed.
    pub const IOERR: u8 = 1;
    /// The request type is not supported.
    pub const UNSUPP: u8 = 2;
}

/// `struct virtio_blk_outhdr`, guest (little-endian) byte order.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    type_: u32,
    reserved: u32,
    sector: u64,
}

// SAFETY: RequestHeader is `repr(C)` with only integer fields and no padding (4 + 4 + 8
// bytes, 8-aligned): every byte pattern is a valid value.
unsafe impl ByteValued for RequestHeader {}

impl RequestHeader {
    /// A header of `type_` at `sector` (for tests and tools).
    pub fn new(type_: u32, sector: u64) -> Self {
        RequestHeader {
            type_: type_.to_le(),
            reserved: 0,
            sector: sector.to_le(),
        }
    }
}

/// Why a request was refused or failed.
#[derive(Debug, Error)]
pub enum RequestError {
    /// The chain has no device-writable status byte at its end.
    #[error("no writable status byte at the end of the chain")]
    NoStatus,
    /// The first descriptor is not a readable buffer holding the 16-byte header.
    #[error("no readable 16-byte request header at the start of the chain")]
    Header,
    /// A buffer points the wrong way (a readable one after a writable one, or data of the
    /// wrong direction for the request type).
    #[error("a data buffer has the wrong direction for a type {0} request")]
    Direction(u32),
    /// The chain has more descriptors than any request needs.
    #[error("the chain has more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    /// A buffer is not (entirely) in guest memory.
    #[error("buffer {addr:#x}+{len} is outside guest memory")]
    OutsideMemory {
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The data buffers' lengths do not add up in 64 bits.
    #[error("the data buffers' lengths overflow")]
    Overflow,
    /// The data length is not a whole number of sectors.
    #[error("data length {0} is not a multiple of {SECTOR_SIZE}")]
    Unaligned(u64),
    /// The sectors are beyond the end of the disk (or overflow).
    #[error("sectors {sector}+{count} are beyond the disk's {capacity} sectors")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        count: u64,
        /// The disk's capacity in sectors.
        capacity: u64,
    },
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// An unknown request type.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// Reading or writing the image or guest memory failed.
    #[error("image I/O: {0}")]
    Io(String),
}

impl RequestError {
    /// The status byte that answers this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => status::UNSUPP,
            _ => status::IOERR,
        }
    }
}

/// The image behind a block device.
#[derive(Debug)]
pub struct Disk {
    file: File,
    capacity: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
}

impl Disk {
    /// A disk on `file` of `len` bytes (the capacity is its whole sectors); `id` is what
    /// GET_ID answers (truncated to 20 bytes).
    pub fn new(file: File, len: u64, read_only: bool, id: &str) -> Self {
        let mut buf = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        buf[..n].copy_from_slice(&id.as_bytes()[..n]);
        Disk {
            file,
            capacity: len / SECTOR_SIZE,
            read_only,
            id: buf,
        }
    }

    /// Capacity in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }
}

/// What a valid request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Read `data` from the disk at `sector`.
    In,
    /// Write `data` to the disk at `sector`.
    Out,
    /// Flush.
    Flush,
    /// Write the id into `data`.
    GetId,
}

/// A validated request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// What it does.
    pub kind: Kind,
    /// First sector (IN/OUT).
    pub sector: u64,
    /// Data buffers, all in guest memory, in order.
    pub data: Vec<(GuestAddress, u32)>,
    /// Total data length.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// A chain that is not a valid request: the error, and where to answer it if the chain
/// has a usable status byte.
#[derive(Debug)]
pub struct Malformed {
    /// The status byte's address, if the chain has one.
    pub status: Option<GuestAddress>,
    /// What is wrong.
    pub error: RequestError,
}

fn in_memory(mem: &GuestMemoryMmap, d: &Descriptor) -> Result<(), RequestError> {
    let outside = RequestError::OutsideMemory {
        addr: d.addr().0,
        len: d.len(),
    };
    if d.len() == 0 {
        return Ok(());
    }
    let access = if d.is_write_only() {
        Permissions::Write
    } else {
        Permissions::Read
    };
    if mem.check_range(d.addr(), d.len() as usize, access) {
        Ok(())
    } else {
        Err(outside)
    }
}

/// Parses and validates the request in `chain` against a disk of `capacity` sectors.
pub fn parse(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    capacity: u64,
    read_only: bool,
) -> Result<Request, Malformed> {
    let descs: Vec<Descriptor> = chain.take(MAX_DESCRIPTORS + 1).collect();
    let no_status = |error| Malformed {
        status: None,
        error,
    };
    // The status byte: the last byte of the last descriptor, which must be writable.
    let last = descs.last().ok_or(no_status(RequestError::NoStatus))?;
    if !last.is_write_only() || last.len() == 0 {
        return Err(no_status(RequestError::NoStatus));
    }
    let status = last
        .addr()
        .0
        .checked_add(u64::from(last.len()) - 1)
        .map(GuestAddress)
        .filter(|&a| mem.check_range(a, 1, Permissions::Write))
        .ok_or(no_status(RequestError::NoStatus))?;
    let fail = |error| Malformed {
        status: Some(status),
        error,
    };
    if descs.len() > MAX_DESCRIPTORS {
        return Err(fail(RequestError::TooManyDescriptors));
    }
    // The header: the first descriptor, readable, at least 16 bytes.
    let first = &descs[0];
    if descs.len() < 2
        || first.is_write_only()
        || (first.len() as usize) < std::mem::size_of::<RequestHeader>()
    {
        return Err(fail(RequestError::Header));
    }
    let hdr: RequestHeader = mem
        .read_obj(first.addr())
        .map_err(|_| fail(RequestError::Header))?;
    let type_ = u32::from_le(hdr.type_);
    let sector = u64::from_le(hdr.sector);
    let kind = match type_ {
        req_type::IN => Kind::In,
        req_type::OUT => Kind::Out,
        req_type::FLUSH => Kind::Flush,
        req_type::GET_ID => Kind::GetId,
        t => return Err(fail(RequestError::Unsupported(t))),
    };
    // Data: the descriptors between header and status, and the status descriptor's bytes
    // before the status byte.
    let mut segments: Vec<Descriptor> = descs[1..descs.len() - 1].to_vec();
    if last.len() > 1 {
        segments.push(Descriptor::new(
            last.addr().0,
            last.len() - 1,
            last.flags(),
            0,
        ));
    }
    let mut seen_writable = false;
    let mut data = Vec::with_capacity(segments.len());
    let mut data_len: u64 = 0;
    for d in &segments {
        if d.is_write_only() {
            seen_writable = true;
        } else if seen_writable {
            return Err(fail(RequestError::Direction(type_)));
        }
        let want_writable = matches!(kind, Kind::In | Kind::GetId);
        if kind != Kind::Flush && d.is_write_only() != want_writable {
            return Err(fail(RequestError::Direction(type_)));
        }
        in_memory(mem, d).map_err(fail)?;
        data_len = data_len
            .checked_add(u64::from(d.len()))
            .ok_or(fail(RequestError::Overflow))?;
        if d.len() > 0 {
            data.push((d.addr(), d.len()));
        }
    }
    if matches!(kind, Kind::In | Kind::Out) {
        if data_len % SECTOR_SIZE != 0 {
            return Err(fail(RequestError::Unaligned(data_len)));
        }
        let count = data_len / SECTOR_SIZE;
        if sector.checked_add(count).is_none_or(|end| end > capacity) {
            return Err(fail(RequestError::OutOfRange {
                sector,
                count,
                capacity,
            }));
        }
        if kind == Kind::Out && read_only {
            return Err(fail(RequestError::ReadOnly));
        }
    }
    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status,
    })
}

impl Request {
    /// Executes the request on `disk`; returns how many bytes it wrote into guest memory
    /// (not counting the status byte).
    pub fn execute(&self, mem: &GuestMemoryMmap, disk: &mut Disk) -> Result<u32, RequestError> {
        let io = |e: &dyn std::fmt::Display| RequestError::Io(e.to_string());
        match self.kind {
            Kind::In | Kind::Out => {
                // parse() bounded sector + count by the capacity, so this cannot overflow.
                let offset = self.sector * SECTOR_SIZE;
                disk.file
                    .seek(SeekFrom::Start(offset))
                    .map_err(|e| io(&e))?;
                for &(addr, len) in &self.data {
                    let r = if self.kind == Kind::In {
                        mem.read_exact_volatile_from(addr, &mut disk.file, len as usize)
                    } else {
                        mem.write_all_volatile_to(addr, &mut disk.file, len as usize)
                    };
                    r.map_err(|e| io(&e))?;
                }
                Ok(if self.kind == Kind::In {
                    // At most the chain's length, which the queue bounds by 2^32.
                    u32::try_from(self.data_len).unwrap_or(u32::MAX)
                } else {
                    0
                })
            }
            Kind::Flush => {
                if !disk.read_only {
                    disk.file.sync_data().map_err(|e| io(&e))?;
                }
                Ok(0)
            }
            Kind::GetId => {
                let mut id: &[u8] = &disk.id;
                let mut written = 0u32;
                for &(addr, len) in &self.data {
                    let n = id.len().min(len as usize);
                    mem.write_slice(&id[..n], addr).map_err(|e| io(&e))?;
                    id = &id[n..];
                    written += n as u32;
                }
                Ok(written)
            }
        }
    }
}

/// What one chain came to.
#[derive(Debug)]
pub struct Completion {
    /// The used length for the used ring.
    pub used_len: u32,
    /// The request and its data length, if the chain parsed.
    pub request: Option<(Kind, u64)>,
    /// Why it failed, if it did.
    pub error: Option<RequestError>,
}

/// Handles one chain completely: parses it, executes it, writes the status byte.
pub fn process(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    disk: &mut Disk,
) -> Completion {
    let (status_addr, request, result) = match parse(mem, chain, disk.capacity, disk.read_only) {
        Ok(req) => (
            Some(req.status),
            Some((req.kind, req.data_len)),
            req.execute(mem, disk),
        ),
        Err(m) => (m.status, None, Err(m.error)),
    };
    let done = |used_len, error| Completion {
        used_len,
        request,
        error,
    };
    let Some(status_addr) = status_addr else {
        return done(0, result.err());
    };
    let (code, len, err) = match result {
        Ok(n) => (status::OK, n, None),
        Err(e) => (e.status(), 0, Some(e)),
    };
    // parse() checked the status byte is in guest memory; a failure here is still no panic.
    match mem.write_obj(code, status_addr) {
        Ok(()) => done(len.saturating_add(1), err),
        Err(e) => done(0, Some(RequestError::Io(e.to_string()))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{desc, mem};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    /// A disk of `sectors` sectors whose sector i is filled with byte i.
    pub(crate) fn disk(sectors: u64, read_only: bool) -> (tempfile::NamedTempFile, Disk) {
        let f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..sectors * SECTOR_SIZE)
            .map(|i| (i / SECTOR_SIZE) as u8)
            .collect();
        std::fs::write(f.path(), &data).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(f.path())
            .unwrap();
        let d = Disk::new(file, data.len() as u64, read_only, "hull-test-disk");
        (f, d)
    }

    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    /// Runs one chain built from `descs` with a header of `type_`/`sector` at HDR.
    fn run(
        m: &GuestMemoryMmap,
        d: &mut Disk,
        type_: u32,
        sector: u64,
        descs: &[RawDescriptor],
    ) -> (u32, Option<RequestError>) {
        m.write_obj(RequestHeader::new(type_, sector), GuestAddress(HDR))
            .unwrap();
        m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let q = MockSplitQueue::new(m, 16);
        let chain = q.build_desc_chain(descs).unwrap();
        let done = process(m, chain, d);
        // A parsed request is reported with its kind and data length.
        if let Some((kind, len)) = done.request {
            let expected = match type_ {
                req_type::IN => Kind::In,
                req_type::OUT => Kind::Out,
                req_type::FLUSH => Kind::Flush,
                _ => Kind::GetId,
            };
            assert_eq!(kind, expected);
            let total: u64 = descs
                .iter()
                .map(|d| u64::from(virtio_queue::desc::split::Descriptor::from(*d).len()))
                .sum();
            assert!(len <= total);
        }
        (done.used_len, done.error)
    }

    /// Runs a chain that must succeed (no error, status OK); returns the used length.
    fn run_ok(
        m: &GuestMemoryMmap,
        d: &mut Disk,
        type_: u32,
        sector: u64,
        descs: &[RawDescriptor],
    ) -> u32 {
        let (len, err) = run(m, d, type_, sector, descs);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(status_byte(m), status::OK);
        len
    }

    /// The usual chain: the header at HDR, then `data`, then the status byte at STATUS.
    fn chain(data: &[RawDescriptor]) -> Vec<RawDescriptor> {
        let mut descs = vec![desc(HDR, 16, false)];
        descs.extend_from_slice(data);
        descs.push(desc(STATUS, 1, true));
        descs
    }

    fn status_byte(m: &GuestMemoryMmap) -> u8 {
        m.read_obj(GuestAddress(STATUS)).unwrap()
    }

    #[test]
    fn header_is_16_bytes_little_endian() {
        let h = RequestHeader::new(req_type::OUT, 0x0102);
        assert_eq!(
            h.as_slice(),
            &[1, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn read_spanning_two_buffers_returns_the_sectors() {
        let m = mem();
        let (_f, mut d) = disk(8, false);
        let data = [desc(DATA, 512, true), desc(DATA + 0x1000, 1024, true)];
        let len = run_ok(&m, &mut d, req_type::IN, 2, &chain(&data));
        assert_eq!(len, 1537);
        let mut b = vec![0u8; 1024];
        m.read_slice(&mut b, GuestAddress(DATA + 0x1000)).unwrap();
        assert_eq!(&b[..512], &[3u8; 512][..]);
        assert_eq!(&b[512..], &[4u8; 512][..]);
        assert_eq!(m.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 2);
    }

    #[test]
    fn write_then_flush_reaches_the_file() {
        let m = mem();
        let (f, mut d) = disk(8, false);
        m.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        let len = run_ok(
            &m,
            &mut d,
            req_type::OUT,
            7,
            &chain(&[desc(DATA, 512, false)]),
        );
        assert_eq!(len, 1);
        assert_eq!(run_ok(&m, &mut d, req_type::FLUSH, 0, &chain(&[])), 1);
        let data = std::fs::read(f.path()).unwrap();
        assert_eq!(&data[7 * 512..], &[0xab; 512][..]);
        assert_eq!(data[6 * 512], 6);
    }

    #[test]
    fn get_id_writes_at_most_20_bytes() {
        let m = mem();
        let (_f, mut d) = disk(1, true);
        let len = run_ok(
            &m,
            &mut d,
            req_type::GET_ID,
            0,
            &chain(&[desc(DATA, 64, true)]),
        );
        // The id zero-padded to 20 bytes, then the status byte.
        assert_eq!(len, 21);
        let mut b = [0u8; 20];
        m.read_slice(&mut b, GuestAddress(DATA)).unwrap();
        assert_eq!(&b[..14], b"hull-test-disk");
        assert_eq!(&b[14..], &[0; 6]);
    }

    #[test]
    fn status_byte_may_share_the_last_data_buffer() {
        let m = mem();
        let (_f, mut d) = disk(2, false);
        let descs = [desc(HDR, 16, false), desc(STATUS - 512, 513, true)];
        assert_eq!(run_ok(&m, &mut d, req_type::IN, 1, &descs), 513);
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS - 1)).unwrap(), 1);
    }

    /// Every malformed chain is answered with IOERR/UNSUPP or dropped, and touches neither
    /// the file nor guest memory outside its status byte.
    #[test]
    fn malformed_requests_fail_without_io() {
        let m = mem();
        let (f, mut d) = disk(8, false);
        let (_rf, mut ro) = disk(8, true);
        let before = std::fs::read(f.path()).unwrap();
        let hdr = desc(HDR, 16, false);
        let st = desc(STATUS, 1, true);
        type Case = (&'static str, u32, u64, Vec<RawDescriptor>, u8);
        let cases: Vec<Case> = vec![
            (
                "header only",
                req_type::IN,
                0,
                vec![desc(HDR, 16, false)],
                0xff,
            ),
            (
                "short header",
                req_type::IN,
                0,
                vec![desc(HDR, 8, false), st],
                status::IOERR,
            ),
            (
                "writable header",
                req_type::IN,
                0,
                vec![desc(HDR, 16, true), st],
                status::IOERR,
            ),
            (
                "readable status",
                req_type::IN,
                0,
                vec![hdr, desc(DATA, 512, true), desc(STATUS, 1, false)],
                0xff,
            ),
            (
                "empty status",
                req_type::IN,
                0,
                vec![hdr, desc(STATUS, 0, true)],
                0xff,
            ),
            (
                "read into a readable buffer",
                req_type::IN,
                0,
                vec![hdr, desc(DATA, 512, false), st],
                status::IOERR,
            ),
            (
                "write from a writable buffer",
                req_type::OUT,
                0,
                vec![hdr, desc(DATA, 512, true), st],
                status::IOERR,
            ),
            (
                "readable after writable",
                req_type::IN,
                0,
                vec![hdr, desc(DATA, 512, true), desc(DATA, 512, false), st],
                status::IOERR,
            ),
            (
                "partial sector",
                req_type::IN,
                0,
                vec![hdr, desc(DATA, 100, true), st],
                status::IOERR,
            ),
            (
                "past the end",
                req_type::IN,
                7,
                vec![hdr, desc(DATA, 1024, true), st],
                status::IOERR,
            ),
            (
                "sector overflow",
                req_type::OUT,
                u64::MAX,
                vec![hdr, desc(DATA, 512, false), st],
                status::IOERR,
            ),
            (
                "huge buffer",
                req_type::IN,
                0,
                vec![hdr, desc(DATA, !511, true), st],
                status::IOERR,
            ),
            (
                "buffer outside memory",
                req_type::IN,
                0,
                vec![hdr, desc(u64::MAX - 100, 512, true), st],
                status::IOERR,
            ),
            (
                "status outside memory",
                req_type::IN,
                0,
                vec![hdr, desc(u64::MAX, 1, true)],
                0xff,
            ),
            (
                "header outside memory",
                req_type::IN,
                0,
                vec![desc(0x3f_fff8, 16, false), st],
                status::IOERR,
            ),
            ("unknown type", 77, 0, vec![hdr, st], status::UNSUPP),
        ];
        for (what, type_, sector, descs, want) in cases {
            m.write_slice(&[0x5a; 1024], GuestAddress(DATA)).unwrap();
            let (len, err) = run(&m, &mut d, type_, sector, &descs);
            assert!(err.is_some(), "{what}: accepted");
            assert_eq!(status_byte(&m), want, "{what}: {err:?}");
            assert_eq!(len, u32::from(want != 0xff), "{what}");
            let mut b = [0u8; 1024];
            m.read_slice(&mut b, GuestAddress(DATA)).unwrap();
            assert_eq!(b, [0x5a; 1024], "{what}: guest memory changed");
        }
        let descs = chain(&[desc(DATA, 512, false)]);
        let (len, err) = run(&m, &mut ro, req_type::OUT, 0, &descs);
        assert!(matches!(err, Some(RequestError::ReadOnly)), "{err:?}");
        assert_eq!((len, status_byte(&m)), (1, status::IOERR));
        assert_eq!(std::fs::read(f.path()).unwrap(), before);
    }

    #[test]
    fn a_file_that_shrank_fails_the_read_with_ioerr() {
        let m = mem();
        let (f, mut d) = disk(8, false);
        std::fs::OpenOptions::new()
            .write(true)
            .open(f.path())
            .unwrap()
            .set_len(512)
            .unwrap();
        let (len, err) = run(
            &m,
            &mut d,
            req_type::IN,
            4,
            &chain(&[desc(DATA, 512, true)]),
        );
        assert!(matches!(err, Some(RequestError::Io(_))), "{err:?}");
        assert_eq!((len, status_byte(&m)), (1, status::IOERR));
    }
}
