//! Guest memory: one memfd holds all guest RAM, mapped shared into hull-vmm and handed to
//! KVM region by region.
//!
//! A memfd (rather than anonymous memory) lets a later vhost-user device process (e.g.
//! virtiofsd) map the same RAM. The layout (which guest-physical ranges are RAM) comes from
//! [`crate::arch`]; this module only allocates and registers it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use thiserror::Error;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress, ReadVolatile, VolatileMemoryError, VolatileSlice,
};

/// Errors of creating or registering guest memory.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// memfd_create failed.
    #[error("creating the guest memory memfd: {0}")]
    CreateMemfd(std::io::Error),
    /// Sizing the memfd failed.
    #[error("sizing the guest memory memfd to {size} bytes: {source}")]
    SizeMemfd {
        /// Total guest RAM.
        size: u64,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Duplicating the memfd for a region failed.
    #[error("duplicating the guest memory memfd: {0}")]
    CloneMemfd(std::io::Error),
    /// Mapping the memfd failed or the layout was invalid.
    #[error("mapping guest memory: {0}")]
    Map(vm_memory::mmap::FromRangesError),
    /// A region is too large for this host's address space.
    #[error("guest memory region of {0} bytes does not fit this host's address space")]
    RegionTooLarge(u64),
    /// KVM refused a memory region.
    #[error("registering guest memory slot {slot} with KVM: {source}")]
    Register {
        /// The KVM memory slot.
        slot: u32,
        /// The underlying error.
        source: kvm_ioctls::Error,
    },
}

/// Guest RAM and the memfd behind it.
#[derive(Debug)]
pub struct GuestRam {
    /// The mapped guest memory.
    pub memory: GuestMemoryMmap,
    /// The memfd that backs every region (region `n` starts at the sum of the sizes of the
    /// regions before it).
    pub memfd: File,
}

/// Allocates `regions` (guest address, size; sorted, non-overlapping) in one memfd.
pub fn create(regions: &[(GuestAddress, u64)]) -> Result<GuestRam, MemoryError> {
    let total: u64 = regions.iter().map(|r| r.1).sum();
    // SAFETY: memfd_create takes a NUL-terminated name (a C string literal) and flags; it
    // returns a new fd or -1 and touches no memory of ours.
    let fd = unsafe { libc::memfd_create(c"hull-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::CreateMemfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh, valid file descriptor that nothing else owns.
    let memfd = unsafe { File::from_raw_fd(fd) };
    memfd
        .set_len(total)
        .map_err(|source| MemoryError::SizeMemfd {
            size: total,
            source,
        })?;
    let mut ranges = Vec::with_capacity(regions.len());
    let mut offset = 0u64;
    for &(addr, size) in regions {
        let len = usize::try_from(size).map_err(|_| MemoryError::RegionTooLarge(size))?;
        let file = memfd.try_clone().map_err(MemoryError::CloneMemfd)?;
        ranges.push((addr, len, Some(FileOffset::new(file, offset))));
        offset += size;
    }
    let memory = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)?;
    Ok(GuestRam { memory, memfd })
}

impl GuestRam {
    /// Where the host bytes `[ptr, ptr + len)` sit in the memfd, if they are guest RAM.
    fn memfd_offset(&self, ptr: *const u8, len: usize) -> Option<u64> {
        let (start, end) = (ptr as usize, (ptr as usize).checked_add(len)?);
        self.memory.iter().find_map(|region| {
            let base = region.get_host_address(MemoryRegionAddress(0)).ok()? as usize;
            let size = usize::try_from(region.len()).ok()?;
            if start < base || end > base.checked_add(size)? {
                return None;
            }
            let skip = u64::try_from(start - base).ok()?;
            region.file_offset()?.start().checked_add(skip)
        })
    }
}

/// A kernel or initramfs file on its way into guest RAM, for linux-loader and
/// `read_exact_volatile_from`.
///
/// Bytes bound for guest RAM take the memfd's write path (`sendfile` from the file into the
/// memfd at the slice's offset) instead of a `read` into the shared mapping: the kernel
/// then allocates each shmem page once, without a page fault per 4 KiB. On the development
/// host that was ~40% less CPU for the 9.5 MB initramfs (docs/vmm.md). The mapping sees the
/// same pages, so nothing else changes. Reads into any other buffer (linux-loader's headers)
/// go to the file as usual.
#[derive(Debug)]
pub struct ImageFile<'a> {
    file: File,
    ram: &'a GuestRam,
}

impl<'a> ImageFile<'a> {
    /// Wraps `file`, to be loaded into `ram`.
    pub fn new(file: File, ram: &'a GuestRam) -> Self {
        ImageFile { file, ram }
    }

    /// The file itself (its size, say).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Copies `len` bytes from the file's position to the memfd at `offset`, or as many as
    /// the file still has; returns how many.
    fn sendfile(&mut self, offset: u64, len: usize) -> std::io::Result<usize> {
        (&self.ram.memfd).seek(SeekFrom::Start(offset))?;
        let mut done = 0;
        while done < len {
            // SAFETY: both descriptors are open files this struct holds; a null offset
            // makes the kernel use (and advance) the source's own position; sendfile
            // writes no memory of ours.
            let n = unsafe {
                libc::sendfile(
                    self.ram.memfd.as_raw_fd(),
                    self.file.as_raw_fd(),
                    std::ptr::null_mut(),
                    len - done,
                )
            };
            match usize::try_from(n) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(_) => {
                    let e = std::io::Error::last_os_error();
                    match e.kind() {
                        std::io::ErrorKind::Interrupted => {}
                        // What was copied counts, as with read(2); the next call fails.
                        _ if done > 0 => break,
                        _ => return Err(e),
                    }
                }
            }
        }
        Ok(done)
    }
}

impl Read for ImageFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for ImageFile<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

impl ReadVolatile for ImageFile<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        // Fills the whole slice where the file has the bytes: `read_exact_volatile_from`
        // calls this once per region and counts a short read as a failed load.
        let Some(offset) = self.ram.memfd_offset(buf.ptr_guard().as_ptr(), buf.len()) else {
            return self.file.read_volatile(buf);
        };
        match self.sendfile(offset, buf.len()) {
            Ok(n) => {
                buf.bitmap().mark_dirty(0, n);
                Ok(n)
            }
            // A file the kernel cannot splice from (a pipe, some filesystems) is read.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                self.file.read_volatile(buf)
            }
            Err(e) => Err(VolatileMemoryError::IOError(e)),
        }
    }
}

/// Hands every region of `memory` to KVM as one memory slot each.
pub fn register(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in (0u32..).zip(memory.iter()) {
        // The mapping is owned by `memory`, which the VM keeps alive as long as the VM fd.
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| MemoryError::RegionTooLarge(region.len()))?;
        let desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: `desc` describes a live mapping of exactly `memory_size` bytes owned by
        // `memory`; the builder keeps `memory` in the `Vm` next to the VM fd, so the
        // mapping outlives every use KVM makes of it. Slots are distinct.
        unsafe { vm.set_user_memory_region(desc) }
            .map_err(|source| MemoryError::Register { slot, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom};
    use vm_memory::Bytes;

    #[test]
    fn regions_share_one_memfd_at_consecutive_offsets() {
        let ram = create(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x1_0000_0000), 0x2000),
        ])
        .unwrap();
        assert_eq!(ram.memfd.metadata().unwrap().len(), 0x10_2000);
        ram.memory
            .write_slice(b"high", GuestAddress(0x1_0000_0010))
            .unwrap();
        ram.memory.write_slice(b"low", GuestAddress(0x20)).unwrap();
        // What the guest writes is visible through the memfd: it can be shared.
        let mut f = ram.memfd.try_clone().unwrap();
        let mut buf = [0u8; 4];
        f.seek(SeekFrom::Start(0x10_0010)).unwrap();
        f.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"high");
        f.seek(SeekFrom::Start(0x20)).unwrap();
        f.read_exact(&mut buf[..3]).unwrap();
        assert_eq!(&buf[..3], b"low");
        // Nothing exists in the gap.
        assert!(ram
            .memory
            .write_slice(b"x", GuestAddress(0x10_0000))
            .is_err());
    }

    /// A file of `len` bytes, each its offset mod 251 (a period no page size shares).
    fn pattern_file(len: usize) -> (File, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &bytes).unwrap();
        f.rewind().unwrap();
        (f, bytes)
    }

    #[test]
    fn an_image_file_lands_in_guest_ram_and_in_the_memfd() {
        let ram = create(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x1_0000_0000), 0x4_0000),
        ])
        .unwrap();
        // Not page aligned, and across the gap: one slice per region.
        let (f, bytes) = pattern_file(0x3_0123);
        let mut image = ImageFile::new(f, &ram);
        let first = 0x1_0000;
        image.seek(SeekFrom::Start(first as u64)).unwrap();
        let (low, high) = (
            0x10_0000 - 0xf_0007,
            bytes.len() - first - (0x10_0000 - 0xf_0007),
        );
        ram.memory
            .read_exact_volatile_from(GuestAddress(0xf_0007), &mut image, low)
            .unwrap();
        ram.memory
            .read_exact_volatile_from(GuestAddress(0x1_0000_0001), &mut image, high)
            .unwrap();
        let mut got = vec![0u8; low];
        ram.memory
            .read_slice(&mut got, GuestAddress(0xf_0007))
            .unwrap();
        assert_eq!(got, bytes[first..first + low]);
        let mut got = vec![0u8; high];
        ram.memory
            .read_slice(&mut got, GuestAddress(0x1_0000_0001))
            .unwrap();
        assert_eq!(got, bytes[first + low..]);
        // Through the memfd too (what a vhost-user process maps), and nothing around it.
        let mut f = ram.memfd.try_clone().unwrap();
        let mut got = vec![0u8; high + 2];
        f.seek(SeekFrom::Start(0x10_0000)).unwrap();
        f.read_exact(&mut got).unwrap();
        assert_eq!(got[0], 0);
        assert_eq!(got[1..=high], bytes[first + low..]);
        assert_eq!(got[high + 1], 0);
    }

    #[test]
    fn an_image_file_reads_headers_into_plain_buffers() {
        let ram = create(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let (f, bytes) = pattern_file(0x3000);
        let mut image = ImageFile::new(f, &ram);
        let mut head = [0u8; 16];
        image.read_exact(&mut head).unwrap();
        assert_eq!(head, bytes[..16]);
        // A volatile read into memory that is not guest RAM is a plain read.
        let mut local = [0u8; 32];
        image
            .read_exact_volatile(&mut VolatileSlice::from(&mut local[..]))
            .unwrap();
        assert_eq!(local, bytes[16..48]);
        // The guest's memory was not touched.
        let mut ram_bytes = vec![1u8; 0x1_0000];
        ram.memory
            .read_slice(&mut ram_bytes, GuestAddress(0))
            .unwrap();
        assert!(ram_bytes.iter().all(|&b| b == 0));
    }

    #[test]
    fn a_short_image_file_fails_the_load() {
        let ram = create(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let (f, _) = pattern_file(0x1000);
        let mut image = ImageFile::new(f, &ram);
        assert!(ram
            .memory
            .read_exact_volatile_from(GuestAddress(0), &mut image, 0x1001)
            .is_err());
    }

    #[test]
    fn guest_ram_bytes_are_found_in_the_memfd_and_nothing_else_is() {
        let ram = create(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x1_0000_0000), 0x4_0000),
        ])
        .unwrap();
        let high = ram
            .memory
            .get_host_address(GuestAddress(0x1_0000_0010))
            .unwrap();
        assert_eq!(ram.memfd_offset(high, 0x3_fff0), Some(0x10_0010));
        // One byte past the region's end, or a buffer of ours: not guest RAM.
        assert_eq!(ram.memfd_offset(high, 0x3_fff1), None);
        let local = [0u8; 8];
        assert_eq!(ram.memfd_offset(local.as_ptr(), local.len()), None);
        assert_eq!(ram.memfd_offset(high, usize::MAX), None);
    }

    #[test]
    fn an_image_file_the_kernel_cannot_splice_from_is_read() {
        let ram = create(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let (rx, tx) = std::io::pipe().unwrap();
        let bytes: Vec<u8> = (0..0x800).map(|i| (i % 251) as u8).collect();
        std::io::Write::write_all(&mut &tx, &bytes).unwrap();
        let mut image = ImageFile::new(File::from(std::os::fd::OwnedFd::from(rx)), &ram);
        ram.memory
            .read_exact_volatile_from(GuestAddress(0x100), &mut image, bytes.len())
            .unwrap();
        let mut got = vec![0u8; bytes.len()];
        ram.memory
            .read_slice(&mut got, GuestAddress(0x100))
            .unwrap();
        assert_eq!(got, bytes);
    }
}
