//! x86_64: direct boot of an ELF `vmlinux` through its PVH entry or of a `bzImage` through
//! the Linux 32-bit boot protocol, in-kernel irqchip and PIT, MP table, e820, CPUID per
//! vCPU, the 8250 console at 0x3f8 (IRQ 4), the i8042 reset port at 0x64, and virtio-mmio
//! windows from 0xd000_0000 on IRQs 5 and up.
//!
//! Both entries start the vCPU in 32-bit protected mode with paging off and the same flat
//! GDT ([`regs`]); they differ in the boot structure (PVH `hvm_start_info` in `EBX`, or the
//! zero page `boot_params` in `ESI`) and where the kernel is entered.
//!
//! Not yet: ACPI.

pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;

use std::io::{Read, Seek};

use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use thiserror::Error;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile};

pub use layout::{CMDLINE_MAX_SIZE, CMDLINE_START};

use super::{BootInfo, KernelEntry, LegacyDevices};

/// vCPUs a VM may have: APIC ids are 8 bits and the IOAPIC takes the id after the last CPU.
pub const MAX_VCPUS: u8 = 254;
/// The console UART's ports and IRQ.
pub const SERIAL_PORT: u64 = 0x3f8;
/// The console UART's IRQ (IOAPIC pin / GSI).
pub const SERIAL_IRQ: u32 = 4;
/// The i8042 command port.
pub const I8042_COMMAND_PORT: u64 = 0x64;
/// virtio-mmio device windows start at the bottom of the 32-bit MMIO hole, one page each.
pub const VIRTIO_MMIO_BASE: u64 = layout::MMIO_GAP_START;
/// The first virtio-mmio device's IRQ (IOAPIC pin / GSI); the next device takes the next.
/// Pins 5..=23 are free (the MP table routes all 24 pins).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// virtio-mmio devices are declared on the command line (`virtio_mmio.device=`): an IOAPIC
/// pin number is also the guest's Linux IRQ number.
pub const VIRTIO_ON_CMDLINE: bool = true;
/// How many virtio-mmio devices fit the free IRQs.
pub const VIRTIO_MAX_DEVICES: u32 = 24 - VIRTIO_IRQ_BASE;
/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// `setup_header.type_of_loader`: a boot loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// The oldest Linux boot protocol we boot: 2.10 added `pref_address` and `init_size`,
/// without which we cannot tell where the decompressed kernel will lie.
const MIN_BOOT_PROTOCOL: u16 = 0x020a;

/// How a loaded kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BootProtocol {
    /// PVH (ELF `vmlinux` with a `XEN_ELFNOTE_PHYS32_ENTRY`): `EBX` = `hvm_start_info`.
    Pvh,
    /// The Linux 32-bit boot protocol (`bzImage`), entered at `code32_start` with `ESI` = the
    /// zero page, which starts from the image's own setup header.
    Linux(setup_header),
}

/// The kernel image formats [`load_kernel`] tells apart by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF `vmlinux`.
    Elf,
    /// A `bzImage` (the `HdrS` magic of the setup header at 0x202).
    BzImage,
}

/// How many bytes [`kernel_format`] looks at.
pub const KERNEL_MAGIC_LEN: usize = 0x206;

/// Which format `head` (the first bytes of a kernel file) is, if any we boot.
pub fn kernel_format(head: &[u8]) -> Option<KernelFormat> {
    if head.starts_with(b"\x7fELF") {
        Some(KernelFormat::Elf)
    } else if head.get(0x202..0x206) == Some(b"HdrS") {
        Some(KernelFormat::BzImage)
    } else {
        None
    }
}

/// Errors of x86_64 VM setup.
#[derive(Debug, Error)]
pub enum Error {
    /// A VM-level KVM ioctl failed.
    #[error("{0}: {1}")]
    VmIoctl(&'static str, kvm_ioctls::Error),
    /// A vCPU-level KVM ioctl failed.
    #[error("vCPU setup: {0}")]
    VcpuIoctl(kvm_ioctls::Error),
    /// `KVM_GET_SUPPORTED_CPUID` failed or returned something unusable.
    #[error("reading the supported CPUID: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
    /// The normalised CPUID could not be handed to KVM.
    #[error("building the CPUID of vCPU {0}")]
    CpuidEntries(u8),
    /// Loading the kernel ELF failed.
    #[error("loading the kernel: {0}")]
    LoadKernel(linux_loader::loader::Error),
    /// Reading the kernel's first bytes failed.
    #[error("reading the kernel: {0}")]
    ReadKernel(std::io::Error),
    /// The kernel is neither an ELF vmlinux nor a bzImage.
    #[error(
        "the kernel is neither an ELF vmlinux nor a bzImage (no ELF magic, no \"HdrS\" at \
         0x202)"
    )]
    UnknownKernelFormat,
    /// The kernel has no PVH entry point.
    #[error(
        "the ELF kernel has no PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY): build it with \
         CONFIG_PVH=y, or boot its bzImage"
    )]
    NoPvhEntry,
    /// The bzImage speaks a boot protocol older than 2.10.
    #[error(
        "the bzImage speaks Linux boot protocol {major}.{minor:02}; hull-vmm needs 2.10 or later"
    )]
    OldBootProtocol {
        /// Major version.
        major: u16,
        /// Minor version.
        minor: u16,
    },
    /// Guest RAM ends before the memory the kernel needs to start.
    #[error(
        "the kernel needs guest RAM up to {needs:#x} before it reads the memory map; give \
         the VM more memory"
    )]
    KernelTooLarge {
        /// The first address past what it needs.
        needs: u64,
    },
    /// The command line is longer than the bzImage accepts.
    #[error("the command line is {len} bytes; this bzImage accepts at most {max}")]
    CmdlineTooLong {
        /// Its length without the NUL.
        len: u64,
        /// The image's `cmdline_size`.
        max: u32,
    },
    /// The initramfs does not fit between the kernel and the end of low RAM.
    #[error("an initramfs of {size} bytes does not fit in guest RAM above the kernel")]
    InitrdTooLarge {
        /// Its size.
        size: u64,
    },
    /// The initramfs does not fit between the kernel and the bzImage's `initrd_addr_max`.
    #[error(
        "an initramfs of {size} bytes does not fit between the kernel's end ({kernel_end:#x}) \
         and the bzImage's initrd_addr_max ({max:#x})"
    )]
    InitrdAboveMax {
        /// Its size.
        size: u64,
        /// Where the kernel's memory ends.
        kernel_end: u64,
        /// The image's limit (inclusive).
        max: u64,
    },
    /// Writing a boot structure into guest memory failed.
    #[error("writing the {0} into guest memory: {1}")]
    WriteBootData(&'static str, vm_memory::GuestMemoryError),
    /// Writing the PVH start info failed.
    #[error("writing the PVH start info: {0}")]
    StartInfo(linux_loader::configurator::Error),
    /// The MP table could not be built.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// Too many MSRs for one `KVM_SET_MSRS`.
    #[error("{0} MSRs do not fit one KVM_SET_MSRS")]
    MsrCount(usize),
    /// KVM refused a boot MSR.
    #[error("KVM refused MSR {index:#x}")]
    MsrRejected {
        /// The first MSR not set.
        index: u32,
    },
    /// Registering a device's interrupt or putting it on a bus failed.
    #[error("registering {0}: {1}")]
    Device(&'static str, String),
}

/// Guest RAM for `memory_bytes`.
pub fn ram_regions(memory_bytes: u64) -> Result<Vec<(GuestAddress, u64)>, Error> {
    Ok(layout::ram_regions(memory_bytes))
}

/// TSS pages, the in-kernel PIC/IOAPIC/LAPICs and the PIT. Must run before vCPUs exist.
pub fn setup_vm(vm: &VmFd) -> Result<(), Error> {
    vm.set_tss_address(layout::KVM_TSS_ADDRESS)
        .map_err(|e| Error::VmIoctl("KVM_SET_TSS_ADDR", e))?;
    vm.create_irq_chip()
        .map_err(|e| Error::VmIoctl("KVM_CREATE_IRQCHIP", e))?;
    // The dummy speaker port lets the PIT's gate (port 0x61) work without an exit.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| Error::VmIoctl("KVM_CREATE_PIT2", e))
}

/// Loads the kernel: an ELF `vmlinux` at its physical addresses (entered through PVH), or a
/// `bzImage`'s protected-mode part at its `code32_start` (1 MiB; entered through the Linux
/// boot protocol). The format is told by the first bytes, not the file name.
pub fn load_kernel<K>(mem: &GuestMemoryMmap, kernel: &mut K) -> Result<KernelEntry, Error>
where
    K: Read + ReadVolatile + Seek,
{
    let mut head = Vec::with_capacity(KERNEL_MAGIC_LEN);
    kernel
        .rewind()
        .and_then(|()| {
            kernel
                .by_ref()
                .take(KERNEL_MAGIC_LEN as u64)
                .read_to_end(&mut head)
        })
        .map_err(Error::ReadKernel)?;
    let entry = match kernel_format(&head) {
        Some(KernelFormat::Elf) => load_elf(mem, kernel)?,
        Some(KernelFormat::BzImage) => load_bzimage(mem, kernel)?,
        None => return Err(Error::UnknownKernelFormat),
    };
    // Contiguous RAM from 1 MiB to the end: a range across the MMIO hole would not do.
    let needs = entry.end.raw_value();
    let len = usize::try_from(needs.saturating_sub(layout::HIMEM_START))
        .map_err(|_| Error::KernelTooLarge { needs })?;
    if !mem.check_range(GuestAddress(layout::HIMEM_START), len) {
        return Err(Error::KernelTooLarge { needs });
    }
    Ok(entry)
}

fn load_elf<K>(mem: &GuestMemoryMmap, kernel: &mut K) -> Result<KernelEntry, Error>
where
    K: Read + ReadVolatile + Seek,
{
    let loaded = Elf::load(mem, None, kernel, Some(GuestAddress(layout::HIMEM_START)))
        .map_err(Error::LoadKernel)?;
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(KernelEntry {
            entry,
            end: GuestAddress(loaded.kernel_end),
            protocol: BootProtocol::Pvh,
        }),
        _ => Err(Error::NoPvhEntry),
    }
}

fn load_bzimage<K>(mem: &GuestMemoryMmap, kernel: &mut K) -> Result<KernelEntry, Error>
where
    K: Read + ReadVolatile + Seek,
{
    let loaded = BzImage::load(mem, None, kernel, Some(GuestAddress(layout::HIMEM_START)))
        .map_err(Error::LoadKernel)?;
    // BzImage::load returns its header on success; without one nothing can be booted.
    let mut hdr = loaded.setup_header.ok_or(Error::LoadKernel(
        linux_loader::loader::Error::InvalidKernelStartAddress,
    ))?;
    // The header ends at 0x202 + the byte at 0x201 (the jump over it); what linux-loader
    // read past that is setup code of an older image, not header fields.
    let declared_end = 0x202 + usize::from((hdr.jump >> 8) as u8);
    let bytes = vm_memory::ByteValued::as_mut_slice(&mut hdr);
    if let Some(past) = bytes.get_mut(declared_end.saturating_sub(0x1f1)..) {
        past.fill(0);
    }
    // Copies: the header is a packed struct.
    let version = hdr.version;
    if version < MIN_BOOT_PROTOCOL {
        return Err(Error::OldBootProtocol {
            major: version >> 8,
            minor: version & 0xff,
        });
    }
    let (pref, align, init_size) = (hdr.pref_address, hdr.kernel_alignment, hdr.init_size);
    let end = layout::bzimage_end(
        loaded.kernel_load.raw_value(),
        loaded.kernel_end,
        pref,
        align,
        init_size,
    )
    .ok_or(Error::KernelTooLarge { needs: u64::MAX })?;
    Ok(KernelEntry {
        entry: loaded.kernel_load,
        end: GuestAddress(end),
        protocol: BootProtocol::Linux(hdr),
    })
}

/// Where an initramfs of `size` bytes goes: the top of RAM below the MMIO hole (and, for a
/// bzImage, below its `initrd_addr_max`), above the memory the kernel claims.
pub fn initrd_address(
    mem: &GuestMemoryMmap,
    kernel: &KernelEntry,
    size: u64,
) -> Result<GuestAddress, Error> {
    let low_end = mem
        .iter()
        .map(|r| {
            vm_memory::GuestMemoryRegion::last_addr(r)
                .unchecked_add(1)
                .0
        })
        .find(|&end| end <= layout::MMIO_GAP_START)
        .unwrap_or(layout::MMIO_GAP_START);
    let (top, max) = match kernel.protocol {
        BootProtocol::Pvh => (low_end, None),
        BootProtocol::Linux(hdr) => {
            let max = u64::from(hdr.initrd_addr_max);
            (low_end.min(max + 1), Some(max))
        }
    };
    layout::initrd_address(top, kernel.end.0, size).ok_or(match max {
        // initrd_addr_max is what limited it.
        Some(max) if top == max + 1 => Error::InitrdAboveMax {
            size,
            kernel_end: kernel.end.0,
            max,
        },
        _ => Error::InitrdTooLarge { size },
    })
}

/// Writes the MP table and the kernel's boot structure: the PVH start info, or the zero
/// page. Both carry the command line, the initramfs and the e820 memory map.
pub fn configure_system(mem: &GuestMemoryMmap, boot: &BootInfo) -> Result<(), Error> {
    let table = mptable::mptable(boot.vcpus)?;
    mem.write_slice(&table, GuestAddress(layout::MPTABLE_START))
        .map_err(|e| Error::WriteBootData("MP table", e))?;

    let regions: Vec<(GuestAddress, u64)> = mem
        .iter()
        .map(|r| {
            use vm_memory::GuestMemoryRegion;
            (r.start_addr(), r.len())
        })
        .collect();
    let memmap = layout::memmap(&regions);
    match boot.kernel.protocol {
        BootProtocol::Pvh => write_pvh_start_info(mem, boot, &memmap),
        BootProtocol::Linux(hdr) => {
            let params = zero_page(hdr, boot, &memmap)?;
            let params = BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_START));
            LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
                .map_err(Error::StartInfo)
        }
    }
}

fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    boot: &BootInfo,
    memmap: &[layout::MemmapEntry],
) -> Result<(), Error> {
    let memmap: Vec<hvm_memmap_table_entry> = memmap
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: boot.cmdline_addr.raw_value(),
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = boot
        .initrd
        .iter()
        .map(|&(addr, size)| hvm_modlist_entry {
            paddr: addr.raw_value(),
            size,
            ..Default::default()
        })
        .collect();
    if !modules.is_empty() {
        info.nr_modules = modules.len() as u32;
        info.modlist_paddr = layout::PVH_MODLIST_START;
    }
    let mut params = BootParams::new(&info, GuestAddress(layout::PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(layout::PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem).map_err(Error::StartInfo)
}

/// The zero page for a bzImage: its own setup header, with what the loader fills in (loader
/// type, command line, initramfs) and the e820 map. Pure, so it is unit tested.
pub fn zero_page(
    hdr: setup_header,
    boot: &BootInfo,
    memmap: &[layout::MemmapEntry],
) -> Result<boot_params, Error> {
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    let max_cmdline = hdr.cmdline_size;
    let len = boot.cmdline_size.saturating_sub(1);
    if len > u64::from(max_cmdline) {
        return Err(Error::CmdlineTooLong {
            len,
            max: max_cmdline,
        });
    }
    // Below 4 GiB by the layout (CMDLINE_START); a failure here is a layout bug.
    params.hdr.cmd_line_ptr = u32::try_from(boot.cmdline_addr.raw_value())
        .map_err(|_| Error::Device("the command line", "above 4 GiB".into()))?;
    if let Some((addr, size)) = boot.initrd {
        // initrd_address placed it below initrd_addr_max, so both fit 32 bits.
        params.hdr.ramdisk_image =
            u32::try_from(addr.raw_value()).map_err(|_| Error::InitrdTooLarge { size })?;
        params.hdr.ramdisk_size =
            u32::try_from(size).map_err(|_| Error::InitrdTooLarge { size })?;
    }
    if memmap.len() > params.e820_table.len() {
        return Err(Error::Device(
            "the e820 map",
            format!("{} entries", memmap.len()),
        ));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(memmap) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = memmap.len() as u8;
    Ok(params)
}

/// What every vCPU's CPUID is derived from.
#[derive(Debug, Clone)]
pub struct VcpuTemplate {
    supported_cpuid: CpuId,
}

/// Reads `KVM_GET_SUPPORTED_CPUID`.
pub fn vcpu_template(kvm: &Kvm, _vm: &VmFd) -> Result<VcpuTemplate, Error> {
    let supported_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::SupportedCpuid)?;
    Ok(VcpuTemplate { supported_cpuid })
}

/// CPUID, MSRs, boot registers, FPU and LAPIC of vCPU `index` of `vcpus`.
pub fn configure_vcpu(
    template: &VcpuTemplate,
    vcpu: &VcpuFd,
    index: u8,
    vcpus: u8,
    kernel: &KernelEntry,
    mem: &GuestMemoryMmap,
) -> Result<(), Error> {
    let mut entries = template.supported_cpuid.as_slice().to_vec();
    cpuid::normalize(&mut entries, index, vcpus);
    let cpuid = CpuId::from_entries(&entries).map_err(|_| Error::CpuidEntries(index))?;
    vcpu.set_cpuid2(&cpuid).map_err(Error::VcpuIoctl)?;
    regs::set_msrs(vcpu)?;
    match kernel.protocol {
        BootProtocol::Pvh => regs::set_regs_pvh(vcpu, kernel.entry)?,
        BootProtocol::Linux(_) => regs::set_regs_linux(vcpu, kernel.entry)?,
    }
    regs::set_sregs_32bit(vcpu, mem)?;
    regs::set_fpu(vcpu)?;
    regs::set_lint(vcpu)
}

/// The UART at 0x3f8 (IRQ 4 through an irqfd) and the i8042 command port at 0x64.
pub fn register_devices(vm: &VmFd, devices: &mut LegacyDevices<'_>) -> Result<(), Error> {
    vm.register_irqfd(devices.serial_irq, SERIAL_IRQ)
        .map_err(|e| Error::Device("the console IRQ", e.to_string()))?;
    devices
        .pio
        .insert(SERIAL_PORT, 8, devices.serial.clone())
        .map_err(|e| Error::Device("the console UART", e.to_string()))?;
    devices
        .pio
        .insert(I8042_COMMAND_PORT, 1, devices.i8042.clone())
        .map_err(|e| Error::Device("the i8042", e.to_string()))
}

/// Nothing on x86_64: the irqchip exists since [`setup_vm`].
pub fn finish_vcpus(_vm: &VmFd, _vcpus: u8) -> Result<(), Error> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_formats_are_told_by_their_magic() {
        let mut bz = vec![0u8; KERNEL_MAGIC_LEN];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(kernel_format(&bz), Some(KernelFormat::BzImage));
        assert_eq!(kernel_format(b"\x7fELF\x02\x01"), Some(KernelFormat::Elf));
        // Too short for the setup header, a zImage-less boot sector, a script.
        assert_eq!(kernel_format(&bz[..0x204]), None);
        assert_eq!(kernel_format(&[0u8; KERNEL_MAGIC_LEN]), None);
        assert_eq!(kernel_format(b"#!/bin/sh"), None);
        assert_eq!(kernel_format(b""), None);
    }
}
