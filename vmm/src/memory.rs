//! Guest memory: one memfd holds all guest RAM, mapped shared into hull-vmm and handed to
//! KVM region by region.
//!
//! A memfd (rather than anonymous memory) lets a later vhost-user device process (e.g.
//! virtiofsd) map the same RAM. The layout (which guest-physical ranges are RAM) comes from
//! [`crate::arch`]; this module only allocates and registers it.

use std::fs::File;
use std::os::fd::FromRawFd;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use thiserror::Error;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
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
}
