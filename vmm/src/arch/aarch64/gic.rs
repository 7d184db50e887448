//! The in-kernel GICv3 through the KVM device API.
//!
//! KVM_CREATE_DEVICE(KVM_DEV_TYPE_ARM_VGIC_V3), then its number of interrupt lines, the
//! distributor base and the redistributor base (KVM lays out one 128 KiB redistributor per
//! vCPU from there), then KVM_DEV_ARM_VGIC_CTRL_INIT. KVM sizes the redistributors from the
//! vCPUs that exist, so this runs after every vCPU is created and initialised and before
//! any runs; irqfds are accepted only after CTRL_INIT. The addresses are
//! [`super::layout`]'s, which the FDT describes.
//!
//! Not here: GICv2 fallback, the ITS (MSIs), saving/restoring GIC state.

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, VmFd};
use thiserror::Error;

use super::layout;

/// Errors of setting up the GICv3.
#[derive(Debug, Error)]
pub enum GicError {
    /// KVM_CREATE_DEVICE refused a GICv3 (the host GIC may be a v2 one).
    #[error("creating the in-kernel GICv3: {0}")]
    Create(kvm_ioctls::Error),
    /// KVM refused one of the GIC's attributes.
    #[error("setting the GICv3 {0}: {1}")]
    SetAttr(&'static str, kvm_ioctls::Error),
}

/// Sets one attribute whose value KVM reads through `addr`.
fn set_attr<T>(
    gic: &DeviceFd,
    what: &'static str,
    group: u32,
    attr: u32,
    value: Option<&T>,
) -> Result<(), GicError> {
    let attr = kvm_device_attr {
        group,
        attr: u64::from(attr),
        addr: value.map_or(0, |v| v as *const T as u64),
        flags: 0,
    };
    gic.set_device_attr(&attr)
        .map_err(|e| GicError::SetAttr(what, e))
}

/// Creates and initialises the GICv3 for the vCPUs that exist. The returned fd may be
/// dropped: the device lives as long as the VM.
pub fn create_gicv3(vm: &VmFd) -> Result<DeviceFd, GicError> {
    let mut dev = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        fd: 0,
        flags: 0,
    };
    let gic = vm.create_device(&mut dev).map_err(GicError::Create)?;
    set_attr(
        &gic,
        "number of interrupts",
        KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
        0,
        Some(&layout::GIC_NR_IRQS),
    )?;
    set_attr(
        &gic,
        "distributor address",
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        KVM_VGIC_V3_ADDR_TYPE_DIST,
        Some(&layout::GICD_BASE),
    )?;
    set_attr(
        &gic,
        "redistributor address",
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        KVM_VGIC_V3_ADDR_TYPE_REDIST,
        Some(&layout::GICR_BASE),
    )?;
    set_attr::<()>(
        &gic,
        "initialisation",
        KVM_DEV_ARM_VGIC_GRP_CTRL,
        KVM_DEV_ARM_VGIC_CTRL_INIT,
        None,
    )?;
    Ok(gic)
}
