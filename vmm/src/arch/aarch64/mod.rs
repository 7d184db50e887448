//! aarch64: compiles against the same interface as x86_64; nothing boots yet.
//!
//! What it will take (issue 3): a GICv3 (`KVM_CREATE_DEVICE`), an FDT built with vm-fdt
//! describing memory, CPUs, the GIC, the timer, PSCI and the UART, `KVM_ARM_VCPU_INIT` from
//! `KVM_ARM_PREFERRED_TARGET`, and an Image loader. Until then every step returns
//! [`Error::NotImplemented`] naming itself, so a caller learns exactly what is missing.

use std::fs::File;

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{BootInfo, KernelEntry, LegacyDevices};

/// vCPUs a VM may have (GICv3 redistributor limit we intend to support).
pub const MAX_VCPUS: u8 = 254;
/// Where the command line will be placed (inside the FDT's chosen node on aarch64; kept for
/// the common builder).
pub const CMDLINE_START: u64 = 0x8000_0000;
/// The arm64 kernel's COMMAND_LINE_SIZE.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of guest RAM.
pub const DRAM_START: u64 = 0x8000_0000;
/// virtio-mmio device windows (below RAM, one page each; will be described in the FDT).
pub const VIRTIO_MMIO_BASE: u64 = 0x4000_0000;
/// The first virtio-mmio device's interrupt (a GIC SPI number, as KVM irqfd GSIs count).
pub const VIRTIO_IRQ_BASE: u32 = 32;
/// How many virtio-mmio devices we place.
pub const VIRTIO_MAX_DEVICES: u32 = 32;

/// Errors of aarch64 VM setup.
#[derive(Debug, Error)]
pub enum Error {
    /// This step is not written for aarch64 yet.
    #[error("aarch64: {0} is not implemented yet")]
    NotImplemented(&'static str),
}

/// The template vCPUs are derived from (will hold `kvm_vcpu_init`).
#[derive(Debug, Clone)]
pub struct VcpuTemplate;

/// Guest RAM: one region from [`DRAM_START`].
pub fn ram_regions(memory_bytes: u64) -> Result<Vec<(GuestAddress, u64)>, Error> {
    Ok(vec![(GuestAddress(DRAM_START), memory_bytes)])
}

/// GICv3 and the architected timer.
pub fn setup_vm(_vm: &VmFd) -> Result<(), Error> {
    Err(Error::NotImplemented("GICv3 setup"))
}

/// Loads an arm64 Image.
pub fn load_kernel(_mem: &GuestMemoryMmap, _kernel: &mut File) -> Result<KernelEntry, Error> {
    Err(Error::NotImplemented("the arm64 Image loader"))
}

/// Where the initramfs goes.
pub fn initrd_address(
    _mem: &GuestMemoryMmap,
    _kernel_end: GuestAddress,
    _size: u64,
) -> Result<GuestAddress, Error> {
    Err(Error::NotImplemented("initrd placement"))
}

/// Writes the FDT.
pub fn configure_system(_mem: &GuestMemoryMmap, _boot: &BootInfo) -> Result<(), Error> {
    Err(Error::NotImplemented("the FDT"))
}

/// Reads `KVM_ARM_PREFERRED_TARGET`.
pub fn vcpu_template(_kvm: &Kvm, _vm: &VmFd) -> Result<VcpuTemplate, Error> {
    Err(Error::NotImplemented("KVM_ARM_VCPU_INIT"))
}

/// Sets the boot registers (PC, x0 = FDT address) and PSCI state.
pub fn configure_vcpu(
    _template: &VcpuTemplate,
    _vcpu: &VcpuFd,
    _index: u8,
    _vcpus: u8,
    _kernel: &KernelEntry,
    _mem: &GuestMemoryMmap,
) -> Result<(), Error> {
    Err(Error::NotImplemented("vCPU register setup"))
}

/// The PL011/8250 on MMIO with a GIC SPI.
pub fn register_devices(_vm: &VmFd, _devices: &mut LegacyDevices<'_>) -> Result<(), Error> {
    Err(Error::NotImplemented("MMIO legacy devices"))
}
