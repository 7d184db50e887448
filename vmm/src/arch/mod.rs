//! Architecture-specific VM setup behind one small interface.
//!
//! Each architecture module provides the same items, re-exported here:
//! - constants: `MAX_VCPUS`, `CMDLINE_START`, `CMDLINE_MAX_SIZE`, and where virtio-mmio
//!   devices go: `VIRTIO_MMIO_BASE`, `VIRTIO_IRQ_BASE`, `VIRTIO_MAX_DEVICES`, and how the
//!   guest learns of them: `VIRTIO_ON_CMDLINE` (x86_64: `virtio_mmio.device=` entries;
//!   aarch64: FDT nodes, from [`BootInfo::virtio`]);
//! - `Error`, the architecture's typed error;
//! - `ram_regions(memory_bytes)`: which guest-physical ranges are RAM;
//! - `setup_vm(&VmFd)`: interrupt controllers and timers, before vCPUs exist;
//! - `BootProtocol`: how a loaded kernel is entered (x86_64: PVH or the Linux boot protocol);
//! - `load_kernel(&mem, &mut image) -> KernelEntry`, `image` being any `Read + ReadVolatile +
//!   Seek` (hull-vmm passes a [`crate::memory::ImageFile`]);
//! - `initrd_address(&mem, &KernelEntry, size)`: where the initramfs goes;
//! - `configure_system(&mem, &BootInfo)`: boot tables (x86_64: PVH start info or zero page,
//!   e820, MP table);
//! - `VcpuTemplate` / `vcpu_template(&Kvm)`: what every vCPU is derived from (x86_64: the
//!   supported CPUID);
//! - `configure_vcpu(&template, &VcpuFd, index, vcpus, &KernelEntry, &mem)`;
//! - `register_devices(&VmFd, &mut LegacyDevices)`: where legacy devices sit and their IRQs;
//! - `finish_vcpus(&VmFd, vcpus)`: after every vCPU is configured (aarch64: the GICv3,
//!   which KVM sizes from the vCPUs; x86_64: nothing).
//!
//! x86_64 is implemented and boots. aarch64 implements every step (FDT, GICv3, PSCI vCPUs,
//! Image loader) and the builder follows arm64's ordering (vCPUs, then the GIC, then
//! irqfds); it boots Linux on TCG-emulated arm64 KVM (`tests/nested/arm64`), never yet on
//! arm64 hardware: see the `aarch64` module docs.

use std::sync::{Arc, Mutex};

use vm_memory::GuestAddress;

use crate::devices::i8042::I8042;
use crate::devices::serial::SerialDevice;
use crate::devices::Bus;

// Built for tests on every host too: its layout and FDT builder are pure and tested.
#[cfg(any(target_arch = "aarch64", test))]
pub mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use self::aarch64::*;

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;

/// What the boot tables describe, besides memory.
#[derive(Debug, Clone, PartialEq)]
pub struct BootInfo {
    /// The loaded kernel (x86_64: which boot structure it reads).
    pub kernel: KernelEntry,
    /// Guest address of the NUL-terminated kernel command line.
    pub cmdline_addr: GuestAddress,
    /// Its size including the NUL.
    pub cmdline_size: u64,
    /// Guest address and size of the initramfs, if any.
    pub initrd: Option<(GuestAddress, u64)>,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// The virtio-mmio devices: window base and interrupt line. Boot tables describe them
    /// where the command line cannot (`VIRTIO_ON_CMDLINE` false).
    pub virtio: Vec<(GuestAddress, u32)>,
}

/// Where a loaded kernel starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelEntry {
    /// The entry point (x86_64: the PVH entry, or a bzImage's `code32_start`).
    pub entry: GuestAddress,
    /// First guest address after the memory the kernel claims before it reads the memory
    /// map (for a bzImage: where it decompresses to, plus its `init_size`).
    pub end: GuestAddress,
    /// How it is entered.
    pub protocol: BootProtocol,
}

/// The legacy devices every VM has, to be placed on the buses by the architecture.
#[derive(Debug)]
pub struct LegacyDevices<'a> {
    /// Port I/O bus (x86_64 only; unused elsewhere).
    pub pio: &'a mut Bus,
    /// MMIO bus.
    pub mmio: &'a mut Bus,
    /// The console UART.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The console UART's interrupt eventfd (registered as an irqfd).
    pub serial_irq: &'a vmm_sys_util::eventfd::EventFd,
    /// The reset line.
    pub i8042: Arc<Mutex<I8042>>,
}
