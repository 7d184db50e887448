//! The aarch64 guest-physical memory map and the placement rules that follow from it.
//!
//! ```text
//! 0x0000_0000 ┬ (unused)
//! 0x0100_0000 ┼ 8250 UART, one page                        SERIAL_MMIO_BASE
//! 0x3e03_0000 ┼ GICv3 redistributors, 128 KiB per vCPU    GICR_BASE (room for MAX_VCPUS)
//! 0x3fff_0000 ┼ GICv3 distributor, 64 KiB                  GICD_BASE
//! 0x4000_0000 ┼ virtio-mmio windows, one page each         VIRTIO_MMIO_BASE
//! 0x8000_0000 ┼ RAM: command line (copied into the FDT)     DRAM_START = CMDLINE_START
//! 0x8020_0000 ┼ kernel Image (2 MiB aligned + text_offset)  KERNEL_START
//!             ┆ initramfs, page aligned, just below the FDT
//!    RAM end  ┴ FDT, in the last 2 MiB-aligned 2 MiB of RAM
//! ```
//!
//! Interrupt numbers here are GIC SPI numbers, which is also what KVM's irqfd GSIs count
//! on arm64 (GSI n raises INTID 32 + n). Pure data and arithmetic: no KVM, so it is
//! unit-tested on every host.

/// vCPUs a VM may have (the redistributor space below is sized for this many).
pub const MAX_VCPUS: u8 = 254;
/// Start of guest RAM.
pub const DRAM_START: u64 = 0x8000_0000;
/// Where the builder writes the command line (the FDT's `bootargs` is read from here).
pub const CMDLINE_START: u64 = DRAM_START;
/// The arm64 kernel's COMMAND_LINE_SIZE.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// The kernel Image's 2 MiB-aligned base (it lands at base + its header's text_offset);
/// the first 2 MiB of RAM hold the command line.
pub const KERNEL_START: u64 = DRAM_START + 0x20_0000;
/// The largest FDT the arm64 boot protocol allows, and the slot reserved for it.
pub const FDT_MAX_SIZE: u64 = 0x20_0000;
/// The 8250 console UART's MMIO window.
pub const SERIAL_MMIO_BASE: u64 = 0x0100_0000;
/// Its size: 8 byte-wide registers (the rest of its page stays unused).
pub const SERIAL_MMIO_SIZE: u64 = 8;
/// The console UART's SPI.
pub const SERIAL_IRQ: u32 = 0;
/// GICv3 distributor base.
pub const GICD_BASE: u64 = 0x3fff_0000;
/// GICv3 distributor size.
pub const GICD_SIZE: u64 = 0x1_0000;
/// One vCPU's redistributor (RD_base and SGI_base frames).
pub const GICR_SIZE_PER_CPU: u64 = 0x2_0000;
/// Redistributors of vCPU 0..MAX_VCPUS, contiguous, ending at the distributor.
pub const GICR_BASE: u64 = GICD_BASE - MAX_VCPUS as u64 * GICR_SIZE_PER_CPU;
/// Interrupt lines the GIC implements (32 private + SPIs; a multiple of 32).
pub const GIC_NR_IRQS: u32 = 128;
/// virtio-mmio device windows (one page each).
pub const VIRTIO_MMIO_BASE: u64 = 0x4000_0000;
/// The first virtio-mmio device's SPI; the next device takes the next.
pub const VIRTIO_IRQ_BASE: u32 = 32;
/// How many virtio-mmio devices fit the SPIs the GIC implements.
pub const VIRTIO_MAX_DEVICES: u32 = GIC_NR_IRQS - 32 - VIRTIO_IRQ_BASE;
// The layout's invariants, checked when it compiles: every SPI we hand out exists on the
// GIC and none is shared; the kernel base is 2 MiB aligned above the command line.
const _: () = assert!(GIC_NR_IRQS % 32 == 0);
const _: () = assert!(VIRTIO_IRQ_BASE + VIRTIO_MAX_DEVICES <= GIC_NR_IRQS - 32);
const _: () = assert!(SERIAL_IRQ < VIRTIO_IRQ_BASE);
const _: () = assert!(KERNEL_START % 0x20_0000 == 0);
const _: () = assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= KERNEL_START);

/// Page size for placement.
const PAGE_SIZE: u64 = 0x1000;

/// The size of the redistributor region `vcpus` vCPUs use.
pub fn gicr_size(vcpus: u8) -> u64 {
    u64::from(vcpus) * GICR_SIZE_PER_CPU
}

/// The MPIDR_EL1 affinity KVM gives vCPU `index` (Aff0 = index % 16, Aff1 = index / 16,
/// as KVM's `reset_mpidr` does), which is the vCPU's `reg` in the FDT.
pub fn mpidr(index: u8) -> u64 {
    let i = u64::from(index);
    (i & 0xf) | ((i >> 4) << 8)
}

/// Where the FDT goes in RAM ending at `ram_end` (exclusive): the last 2 MiB-aligned slot
/// of [`FDT_MAX_SIZE`], or `None` if RAM cannot hold it above the kernel base.
pub fn fdt_address(ram_end: u64) -> Option<u64> {
    let addr = ram_end.checked_sub(FDT_MAX_SIZE)? & !(FDT_MAX_SIZE - 1);
    (addr >= KERNEL_START).then_some(addr)
}

/// Bytes of the arm64 `Image` header [`image_end`] reads.
pub const IMAGE_HEADER_SIZE: usize = 64;
/// Offset of the header's little-endian `image_size` field.
const IMAGE_SIZE_OFFSET: usize = 16;

/// First address after the memory an arm64 `Image` claims once loaded at `load`: its
/// header's `image_size` (Documentation/arch/arm64/booting.rst: the effective size, which
/// counts the BSS and early page tables the file does not hold), the file's size if that is
/// larger or the field is 0 (kernels before 3.17). `None` on overflow. linux-loader's
/// `kernel_end` counts the file only, so an initramfs placed above it could land in the BSS.
pub fn image_end(header: &[u8; IMAGE_HEADER_SIZE], load: u64, file_size: u64) -> Option<u64> {
    let mut field = [0u8; 8];
    field.copy_from_slice(&header[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8]);
    load.checked_add(u64::from_le_bytes(field).max(file_size))
}

/// Where an initramfs of `size` bytes goes: page aligned, right below the FDT at `fdt`,
/// above the kernel ending at `kernel_end`. `None` if it does not fit.
pub fn initrd_address(fdt: u64, kernel_end: u64, size: u64) -> Option<u64> {
    let addr = fdt.checked_sub(size)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmio_windows_do_not_overlap_each_other_or_ram() {
        let windows = [
            (SERIAL_MMIO_BASE, SERIAL_MMIO_SIZE),
            (GICR_BASE, gicr_size(MAX_VCPUS)),
            (GICD_BASE, GICD_SIZE),
            (
                VIRTIO_MMIO_BASE,
                u64::from(VIRTIO_MAX_DEVICES) * crate::devices::virtio::mmio::MMIO_SIZE,
            ),
        ];
        for (i, &(a, alen)) in windows.iter().enumerate() {
            assert!(a + alen <= DRAM_START, "window {i} reaches RAM");
            for &(b, blen) in &windows[i + 1..] {
                assert!(a + alen <= b || b + blen <= a, "{a:#x} overlaps {b:#x}");
            }
        }
        assert_eq!(GICR_BASE + gicr_size(MAX_VCPUS), GICD_BASE);
        assert_eq!(GICR_BASE % 0x1_0000, 0, "redistributors are 64 KiB aligned");
    }

    #[test]
    fn mpidr_follows_kvm_affinity_split() {
        assert_eq!(mpidr(0), 0);
        assert_eq!(mpidr(15), 0xf);
        assert_eq!(mpidr(16), 0x100);
        assert_eq!(mpidr(253), 0xf0d);
    }

    #[test]
    fn fdt_sits_in_the_last_aligned_2mib_of_ram() {
        let end = DRAM_START + (128 << 20);
        assert_eq!(fdt_address(end), Some(end - FDT_MAX_SIZE));
        // RAM ending mid-slot: the slot below.
        assert_eq!(
            fdt_address(end + 0x1000),
            Some(end - FDT_MAX_SIZE),
            "2 MiB aligned and inside RAM"
        );
        assert_eq!(fdt_address(KERNEL_START + FDT_MAX_SIZE), Some(KERNEL_START));
        assert_eq!(fdt_address(KERNEL_START + FDT_MAX_SIZE - 1), None);
        assert_eq!(fdt_address(0), None);
    }

    #[test]
    fn image_end_counts_the_bss_the_file_does_not_hold() {
        let mut header = [0u8; IMAGE_HEADER_SIZE];
        header[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8]
            .copy_from_slice(&0x0123_0000u64.to_le_bytes());
        assert_eq!(
            image_end(&header, KERNEL_START, 0x0100_0000),
            Some(KERNEL_START + 0x0123_0000)
        );
        // A file larger than its claimed size, or a pre-3.17 header (0): the file's size.
        assert_eq!(
            image_end(&header, KERNEL_START, 0x0200_0000),
            Some(KERNEL_START + 0x0200_0000)
        );
        assert_eq!(
            image_end(&[0; IMAGE_HEADER_SIZE], KERNEL_START, 0x1000),
            Some(KERNEL_START + 0x1000)
        );
        header[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(image_end(&header, KERNEL_START, 0), None);
    }

    #[test]
    fn initrd_goes_below_the_fdt_above_the_kernel() {
        let fdt = DRAM_START + (126 << 20);
        let kernel_end = KERNEL_START + (20 << 20);
        let a = initrd_address(fdt, kernel_end, 0x1234).unwrap();
        assert_eq!(a % PAGE_SIZE, 0);
        assert!(a + 0x1234 <= fdt && a >= fdt - 0x2234);
        assert_eq!(
            initrd_address(fdt, kernel_end, fdt - kernel_end),
            Some(kernel_end)
        );
        assert_eq!(initrd_address(fdt, kernel_end, fdt - kernel_end + 1), None);
        assert_eq!(initrd_address(fdt, kernel_end, u64::MAX), None);
    }
}
