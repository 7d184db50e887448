//! x86_64: PVH direct boot of an ELF `vmlinux`, in-kernel irqchip and PIT, MP table, e820,
//! CPUID per vCPU, the 8250 console at 0x3f8 (IRQ 4), the i8042 reset port at 0x64, and
//! virtio-mmio windows from 0xd000_0000 on IRQs 5 and up.
//!
//! Not yet: bzImage (Linux boot protocol) boot, ACPI.

pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;

use std::fs::File;

use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use thiserror::Error;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

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
/// How many virtio-mmio devices fit the free IRQs.
pub const VIRTIO_MAX_DEVICES: u32 = 24 - VIRTIO_IRQ_BASE;
/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

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
    /// The kernel has no PVH entry point.
    #[error(
        "the kernel has no PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY); build it with \
         CONFIG_PVH=y (bzImage boot is not implemented yet)"
    )]
    NoPvhEntry,
    /// The initramfs does not fit between the kernel and the end of low RAM.
    #[error("an initramfs of {size} bytes does not fit in guest RAM above the kernel")]
    InitrdTooLarge {
        /// Its size.
        size: u64,
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

/// Loads an ELF `vmlinux` at its physical addresses and returns its PVH entry point.
pub fn load_kernel(mem: &GuestMemoryMmap, kernel: &mut File) -> Result<KernelEntry, Error> {
    let loaded = Elf::load(mem, None, kernel, Some(GuestAddress(layout::HIMEM_START)))
        .map_err(Error::LoadKernel)?;
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(KernelEntry {
            entry,
            end: GuestAddress(loaded.kernel_end),
        }),
        _ => Err(Error::NoPvhEntry),
    }
}

/// Where an initramfs of `size` bytes goes: the top of RAM below the MMIO hole, above the
/// kernel (which ends at `kernel_end`).
pub fn initrd_address(
    mem: &GuestMemoryMmap,
    kernel_end: GuestAddress,
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
    layout::initrd_address(low_end, kernel_end.0, size).ok_or(Error::InitrdTooLarge { size })
}

/// Writes the MP table and the PVH start info (command line, initramfs, memory map).
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
    let memmap: Vec<hvm_memmap_table_entry> = layout::memmap(&regions)
        .into_iter()
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
    regs::set_regs_pvh(vcpu, kernel.entry)?;
    regs::set_sregs_pvh(vcpu, mem)?;
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
