//! The x86_64 guest-physical layout and the pure computations on it (RAM regions, the e820
//! map, where the initramfs goes).
//!
//! ```text
//! 0x0000_0500  GDT (boot segments, 5 × 8)   0x0000_0530  IDT (empty)
//! 0x0000_6000  PVH hvm_start_info           0x0000_6040  PVH module list (initramfs)
//! 0x0000_7000  PVH memory map (e820)        0x0000_8000  zero page (bzImage boot_params)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (last KiB of base memory; reserved up to 1 MiB)
//! 0x0010_0000  kernel: vmlinux at its physical load address (usually 16 MiB); a bzImage's
//!              compressed kernel at 1 MiB, which decompresses to 16 MiB ... initramfs at
//!              the top of low RAM (a bzImage's initrd_addr_max permitting)
//! 0xd000_0000  .. 4 GiB: MMIO hole (IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000, TSS)
//! 4 GiB ..     the rest of RAM
//! ```

use vm_memory::GuestAddress;

/// GDT with the boot segments.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT (the kernel installs its own before enabling interrupts), after the GDT's
/// five entries (checked at compile time in `regs`).
pub const BOOT_IDT_START: u64 = 0x530;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one entry: the initramfs).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// The Linux boot protocol's zero page (`boot_params`) for a bzImage.
pub const ZERO_PAGE_START: u64 = 0x8000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Linux x86's COMMAND_LINE_SIZE, terminating NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// The MP table: Linux scans the last KiB of base memory (639 KiB..640 KiB) for it.
pub const MPTABLE_START: u64 = 0x9_fc00;
/// First address of "high" memory; below it sit the boot tables and the legacy hole.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (768 MiB below 4 GiB).
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// The IOAPIC's registers.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The local APICs' registers.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Three pages KVM needs for the TSS on Intel (inside the MMIO hole).
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// One entry of the e820 / PVH memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemmapEntry {
    /// Start address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// Guest RAM for `memory_bytes` of memory: below the MMIO hole, and the rest above 4 GiB.
pub fn ram_regions(memory_bytes: u64) -> Vec<(GuestAddress, u64)> {
    if memory_bytes <= MMIO_GAP_START {
        vec![(GuestAddress(0), memory_bytes)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), memory_bytes - MMIO_GAP_START),
        ]
    }
}

/// The memory map the guest sees: base memory up to the MP table, the legacy hole as
/// reserved, then RAM from 1 MiB (and above 4 GiB).
pub fn memmap(regions: &[(GuestAddress, u64)]) -> Vec<MemmapEntry> {
    let mut map = vec![
        MemmapEntry {
            addr: 0,
            size: MPTABLE_START,
            kind: E820_RAM,
        },
        MemmapEntry {
            addr: MPTABLE_START,
            size: HIMEM_START - MPTABLE_START,
            kind: E820_RESERVED,
        },
    ];
    for &(start, size) in regions {
        let end = start.0 + size;
        let start = start.0.max(HIMEM_START);
        if end > start {
            map.push(MemmapEntry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// Where an initramfs of `size` bytes goes: page-aligned at the top of the RAM below the
/// MMIO hole, above `kernel_end`. `None` if it does not fit.
pub fn initrd_address(low_ram_end: u64, kernel_end: u64, size: u64) -> Option<GuestAddress> {
    let top = low_ram_end.min(MMIO_GAP_START);
    let addr = top.checked_sub(size)? & !0xfff;
    (addr >= kernel_end.max(HIMEM_START)).then_some(GuestAddress(addr))
}

/// The end of the memory a bzImage claims before it reads the memory map: it decompresses
/// to `pref_address` (`LOAD_PHYSICAL_ADDR`) or where it was loaded, whichever is higher,
/// rounded up to `kernel_alignment`, and uses `init_size` bytes from there (boot protocol
/// 2.10+). `None` on overflow.
pub fn bzimage_end(
    kernel_load: u64,
    kernel_end: u64,
    pref_address: u64,
    kernel_alignment: u32,
    init_size: u32,
) -> Option<u64> {
    let align = u64::from(kernel_alignment.max(1));
    let start = pref_address.max(kernel_load).checked_add(align - 1)? / align * align;
    Some(start.checked_add(u64::from(init_size))?.max(kernel_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bzimage_claims_init_size_from_where_it_decompresses() {
        // The usual x86_64 image: loaded at 1 MiB, decompresses to 16 MiB.
        assert_eq!(
            bzimage_end(1 << 20, 5 << 20, 16 << 20, 2 << 20, 20 << 20),
            Some(36 << 20)
        );
        // Loaded above pref_address: it runs where it was loaded, aligned up.
        assert_eq!(
            bzimage_end((32 << 20) + 1, 40 << 20, 16 << 20, 2 << 20, 1 << 20),
            Some(40 << 20)
        );
        assert_eq!(
            bzimage_end((32 << 20) + 1, 33 << 20, 16 << 20, 2 << 20, 1 << 20),
            Some(35 << 20)
        );
        // An unaligned pref_address (a hostile header) is rounded up too.
        assert_eq!(
            bzimage_end(1 << 20, 0, (16 << 20) + 1, 2 << 20, 1 << 20),
            Some(19 << 20)
        );
        // A zero alignment (bad header) is taken as 1, and overflow is caught.
        assert_eq!(bzimage_end(1 << 20, 0, 0, 0, 4096), Some((1 << 20) + 4096));
        assert_eq!(bzimage_end(u64::MAX, 0, 0, 2 << 20, 1), None);
    }

    #[test]
    fn small_guests_have_one_region_and_large_ones_skip_the_mmio_hole() {
        assert_eq!(ram_regions(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
        assert_eq!(
            ram_regions(4 << 30),
            vec![
                (GuestAddress(0), MMIO_GAP_START),
                (GuestAddress(1 << 32), (4 << 30) - MMIO_GAP_START)
            ]
        );
    }

    #[test]
    fn memmap_reserves_the_mp_table_and_legacy_hole() {
        let m = memmap(&ram_regions(256 << 20));
        assert_eq!(
            m,
            vec![
                MemmapEntry {
                    addr: 0,
                    size: 0x9_fc00,
                    kind: E820_RAM
                },
                MemmapEntry {
                    addr: 0x9_fc00,
                    size: 0x6_0400,
                    kind: E820_RESERVED
                },
                MemmapEntry {
                    addr: 0x10_0000,
                    size: (256 << 20) - 0x10_0000,
                    kind: E820_RAM
                },
            ]
        );
        let m = memmap(&ram_regions(8 << 30));
        assert_eq!(m.len(), 4);
        assert_eq!(m[2].addr + m[2].size, MMIO_GAP_START);
        assert_eq!(
            (m[3].addr, m[3].size),
            (1 << 32, (8 << 30) - MMIO_GAP_START)
        );
        // No entry overlaps the next.
        for w in m.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr);
        }
    }

    #[test]
    fn initrd_goes_page_aligned_at_the_top_of_low_ram_above_the_kernel() {
        let end = 256 << 20;
        assert_eq!(
            initrd_address(end, 32 << 20, 5000),
            Some(GuestAddress(end - 0x2000))
        );
        // Large guests: below the MMIO hole, not at the end of RAM.
        assert_eq!(
            initrd_address(MMIO_GAP_START, 32 << 20, 0x1000),
            Some(GuestAddress(MMIO_GAP_START - 0x1000))
        );
        // Does not fit above the kernel.
        assert_eq!(initrd_address(64 << 20, 60 << 20, 8 << 20), None);
        assert_eq!(initrd_address(1 << 20, 0, 2 << 20), None);
    }
}
