//! aarch64: an arm64 `Image` booted with an FDT on an in-kernel GICv3, PSCI 0.2 vCPUs, the
//! architected timer, the 8250 console and virtio-mmio devices on the MMIO bus.
//!
//! - [`layout`]: the guest-physical map, MPIDRs, where the FDT and initramfs go;
//! - [`fdt`]: the device tree, built with vm-fdt (pure; tested on every host);
//! - `gic`: the GICv3 through KVM_CREATE_DEVICE;
//! - `regs`: KVM_ARM_VCPU_INIT from the preferred target with PSCI 0.2, boot registers.
//!
//! The KVM parts only build for aarch64; `layout` and `fdt` also build for tests anywhere.
//!
//! Ordering KVM imposes on arm64, which the builder follows: the GIC is created and
//! initialised after every vCPU exists and is initialised ([`finish_vcpus`]), and KVM
//! refuses irqfds (`EAGAIN`) until then, so the builder creates vCPUs before any device.
//! PSCI SYSTEM_OFF and SYSTEM_RESET reach the vCPU loop as `KVM_EXIT_SYSTEM_EVENT` and end
//! the VM as a power-off or a reset, as on x86_64.
//!
//! Its pure parts are unit tested on every host. It boots arm64 Linux 6.1 (1, 2 and 17
//! vCPUs, 8250 console, virtio-blk, vsock, PSCI power-off and reset, seccomp on) on arm64 KVM in the
//! TCG-emulated nested setup of `tests/nested/arm64` (QEMU virt with EL2 and a GICv3, not
//! in CI); it has never run on arm64 hardware. Not here: a PL031 RTC, GIC state
//! save/restore, GICv2 hosts.

pub mod fdt;
#[cfg(target_arch = "aarch64")]
pub mod gic;
pub mod layout;
#[cfg(target_arch = "aarch64")]
pub mod regs;

#[cfg(target_arch = "aarch64")]
pub use self::setup::*;
pub use layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, DRAM_START, MAX_VCPUS, VIRTIO_IRQ_BASE, VIRTIO_MAX_DEVICES,
    VIRTIO_MMIO_BASE,
};

/// virtio-mmio devices are FDT nodes, not `virtio_mmio.device=` entries: on arm64 the IRQ
/// number of such an entry is a Linux virq, which no GIC SPI is mapped to.
pub const VIRTIO_ON_CMDLINE: bool = false;

/// The common arch interface ([`crate::arch`]) for aarch64.
#[cfg(target_arch = "aarch64")]
mod setup {
    use std::io::{Read, Seek, SeekFrom};

    use kvm_bindings::kvm_vcpu_init;
    use kvm_ioctls::{Kvm, VcpuFd, VmFd};
    use linux_loader::loader::pe::PE;
    use linux_loader::loader::KernelLoader;
    use thiserror::Error;
    use vm_memory::{
        Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
        ReadVolatile,
    };

    use super::fdt::{self, FdtConfig, FdtError, MmioDevice};
    use super::gic::{self, GicError};
    use super::layout;
    use super::regs::{self, RegsError};
    use crate::arch::{BootInfo, KernelEntry, LegacyDevices};
    use crate::devices::virtio::mmio::MMIO_SIZE;

    /// Errors of aarch64 VM setup.
    #[derive(Debug, Error)]
    pub enum Error {
        /// The GICv3 could not be set up.
        #[error(transparent)]
        Gic(#[from] GicError),
        /// A vCPU could not be initialised.
        #[error(transparent)]
        Regs(#[from] RegsError),
        /// Loading the kernel Image failed.
        #[error("loading the kernel Image: {0}")]
        LoadKernel(linux_loader::loader::Error),
        /// The kernel Image's header could not be read back, or its size overflows.
        #[error("reading the kernel Image's header: {0}")]
        ReadKernelHeader(std::io::Error),
        /// RAM is too small for the kernel base and the FDT slot.
        #[error("guest RAM ending at {0:#x} has no room for the FDT above the kernel")]
        NoRoomForFdt(u64),
        /// The initramfs does not fit between the kernel and the FDT.
        #[error("an initramfs of {size} bytes does not fit in guest RAM above the kernel")]
        InitrdTooLarge {
            /// Its size.
            size: u64,
        },
        /// Reading the command line back from guest memory failed.
        #[error("reading the command line from guest memory: {0}")]
        ReadCmdline(vm_memory::GuestMemoryError),
        /// The FDT could not be built.
        #[error(transparent)]
        Fdt(#[from] FdtError),
        /// Writing the FDT into guest memory failed.
        #[error("writing the FDT into guest memory: {0}")]
        WriteFdt(vm_memory::GuestMemoryError),
        /// Registering a device's interrupt or putting it on a bus failed.
        #[error("registering {0}: {1}")]
        Device(&'static str, String),
    }

    /// How a loaded kernel is entered: arm64 has one way (PC at the Image, x0 = the FDT).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum BootProtocol {
        /// An arm64 `Image`.
        Image,
    }

    /// The template vCPUs are derived from: the preferred target with PSCI 0.2.
    #[derive(Debug, Clone)]
    pub struct VcpuTemplate {
        init: kvm_vcpu_init,
    }

    /// Guest RAM: one region from [`layout::DRAM_START`].
    pub fn ram_regions(memory_bytes: u64) -> Result<Vec<(GuestAddress, u64)>, Error> {
        Ok(vec![(GuestAddress(layout::DRAM_START), memory_bytes)])
    }

    /// Nothing before vCPUs: KVM sizes the GICv3 from the vCPUs, so [`finish_vcpus`]
    /// creates it. The architected timer needs no setup.
    pub fn setup_vm(_vm: &VmFd) -> Result<(), Error> {
        Ok(())
    }

    /// Creates and initialises the GICv3, once every vCPU exists and is initialised.
    pub fn finish_vcpus(vm: &VmFd, _vcpus: u8) -> Result<(), Error> {
        gic::create_gicv3(vm)?;
        Ok(())
    }

    fn ram_end(mem: &GuestMemoryMmap) -> u64 {
        mem.last_addr().raw_value().saturating_add(1)
    }

    fn fdt_address(mem: &GuestMemoryMmap) -> Result<u64, Error> {
        let end = ram_end(mem);
        layout::fdt_address(end).ok_or(Error::NoRoomForFdt(end))
    }

    /// Loads an arm64 `Image` at [`layout::KERNEL_START`] plus its text_offset; its end
    /// counts the header's `image_size` ([`layout::image_end`]).
    pub fn load_kernel<K>(mem: &GuestMemoryMmap, kernel: &mut K) -> Result<KernelEntry, Error>
    where
        K: Read + ReadVolatile + Seek,
    {
        let loaded = PE::load(mem, Some(GuestAddress(layout::KERNEL_START)), kernel, None)
            .map_err(Error::LoadKernel)?;
        let mut header = [0u8; layout::IMAGE_HEADER_SIZE];
        kernel
            .seek(SeekFrom::Start(0))
            .and_then(|_| kernel.read_exact(&mut header))
            .map_err(Error::ReadKernelHeader)?;
        let load = loaded.kernel_load.raw_value();
        let file_size = loaded.kernel_end.saturating_sub(load);
        let end = layout::image_end(&header, load, file_size).ok_or_else(|| {
            Error::ReadKernelHeader(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "image_size overflows the address space",
            ))
        })?;
        Ok(KernelEntry {
            entry: loaded.kernel_load,
            end: GuestAddress(end),
            protocol: BootProtocol::Image,
        })
    }

    /// Where the initramfs goes: right below the FDT, above the kernel.
    pub fn initrd_address(
        mem: &GuestMemoryMmap,
        kernel: &KernelEntry,
        size: u64,
    ) -> Result<GuestAddress, Error> {
        layout::initrd_address(fdt_address(mem)?, kernel.end.raw_value(), size)
            .map(GuestAddress)
            .ok_or(Error::InitrdTooLarge { size })
    }

    /// Builds the FDT (memory, vCPUs, GIC, timer, PSCI, UART, virtio-mmio devices,
    /// `/chosen`) and writes it at the top of RAM.
    pub fn configure_system(mem: &GuestMemoryMmap, boot: &BootInfo) -> Result<(), Error> {
        let mut cmdline = vec![0u8; boot.cmdline_size.saturating_sub(1) as usize];
        mem.read_slice(&mut cmdline, boot.cmdline_addr)
            .map_err(Error::ReadCmdline)?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        let memory: Vec<(u64, u64)> = mem
            .iter()
            .map(|r| (r.start_addr().raw_value(), r.len()))
            .collect();
        let virtio: Vec<MmioDevice> = boot
            .virtio
            .iter()
            .map(|&(base, irq)| MmioDevice {
                base: base.raw_value(),
                size: MMIO_SIZE,
                irq,
            })
            .collect();
        let blob = fdt::create_fdt(&FdtConfig {
            memory: &memory,
            vcpus: boot.vcpus,
            cmdline: &cmdline,
            initrd: boot.initrd.map(|(a, s)| (a.raw_value(), s)),
            serial: Some(MmioDevice {
                base: layout::SERIAL_MMIO_BASE,
                size: layout::SERIAL_MMIO_SIZE,
                irq: layout::SERIAL_IRQ,
            }),
            virtio: &virtio,
        })?;
        mem.write_slice(&blob, GuestAddress(fdt_address(mem)?))
            .map_err(Error::WriteFdt)
    }

    /// Reads `KVM_ARM_PREFERRED_TARGET`.
    pub fn vcpu_template(_kvm: &Kvm, vm: &VmFd) -> Result<VcpuTemplate, Error> {
        Ok(VcpuTemplate {
            init: regs::preferred_init(vm)?,
        })
    }

    /// `KVM_ARM_VCPU_INIT` (PSCI 0.2; secondaries powered off) and, for vCPU 0, the boot
    /// registers: PC at the kernel, x0 = the FDT.
    pub fn configure_vcpu(
        template: &VcpuTemplate,
        vcpu: &VcpuFd,
        index: u8,
        _vcpus: u8,
        kernel: &KernelEntry,
        mem: &GuestMemoryMmap,
    ) -> Result<(), Error> {
        regs::init_vcpu(vcpu, &template.init, index)?;
        if index == 0 {
            regs::set_boot_regs(vcpu, kernel.entry.raw_value(), fdt_address(mem)?)?;
        }
        Ok(())
    }

    /// The 8250 at [`layout::SERIAL_MMIO_BASE`] on the MMIO bus, its SPI as an irqfd.
    /// (arm64 has no i8042: the guest resets through PSCI.)
    pub fn register_devices(vm: &VmFd, devices: &mut LegacyDevices<'_>) -> Result<(), Error> {
        vm.register_irqfd(devices.serial_irq, layout::SERIAL_IRQ)
            .map_err(|e| Error::Device("the console IRQ", e.to_string()))?;
        devices
            .mmio
            .insert(
                layout::SERIAL_MMIO_BASE,
                layout::SERIAL_MMIO_SIZE,
                devices.serial.clone(),
            )
            .map_err(|e| Error::Device("the console UART", e.to_string()))
    }
}
