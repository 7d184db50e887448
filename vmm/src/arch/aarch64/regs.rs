//! vCPU initialisation and boot registers on arm64.
//!
//! Every vCPU is initialised with `KVM_ARM_VCPU_INIT` from the host's preferred target
//! (`KVM_ARM_PREFERRED_TARGET`) with PSCI 0.2; all but vCPU 0 start powered off and are
//! brought up by the guest through PSCI CPU_ON. vCPU 0 starts as the arm64 boot protocol
//! asks: EL1h with DAIF masked, PC at the Image, x0 = the FDT's address.
//!
//! Not here: SVE/pointer-auth features, PMU, reading back MPIDR_EL1 (the FDT uses KVM's
//! documented default, see [`super::layout::mpidr`]).

use kvm_bindings::{
    kvm_regs, kvm_vcpu_init, user_pt_regs, PSR_MODE_EL1h, KVM_ARM_VCPU_POWER_OFF,
    KVM_ARM_VCPU_PSCI_0_2, KVM_REG_ARM64, KVM_REG_ARM_CORE, KVM_REG_SIZE_U64, PSR_A_BIT, PSR_D_BIT,
    PSR_F_BIT, PSR_I_BIT,
};
use kvm_ioctls::{VcpuFd, VmFd};
use thiserror::Error;

/// PSTATE at entry: EL1 with SP_EL1, debug, SError, IRQ and FIQ masked.
const BOOT_PSTATE: u64 = (PSR_MODE_EL1h | PSR_A_BIT | PSR_F_BIT | PSR_I_BIT | PSR_D_BIT) as u64;

/// Errors of vCPU setup.
#[derive(Debug, Error)]
pub enum RegsError {
    /// KVM_ARM_PREFERRED_TARGET failed.
    #[error("reading the preferred vCPU target: {0}")]
    PreferredTarget(kvm_ioctls::Error),
    /// KVM_ARM_VCPU_INIT failed.
    #[error("initialising vCPU {0}: {1}")]
    VcpuInit(u8, kvm_ioctls::Error),
    /// KVM_SET_ONE_REG failed.
    #[error("setting {0} of vCPU 0: {1}")]
    SetReg(&'static str, kvm_ioctls::Error),
}

/// The host's preferred vCPU target with PSCI 0.2 requested.
pub fn preferred_init(vm: &VmFd) -> Result<kvm_vcpu_init, RegsError> {
    let mut kvi = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut kvi)
        .map_err(RegsError::PreferredTarget)?;
    kvi.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    Ok(kvi)
}

/// `KVM_ARM_VCPU_INIT` of vCPU `index`: secondaries start powered off.
pub fn init_vcpu(vcpu: &VcpuFd, template: &kvm_vcpu_init, index: u8) -> Result<(), RegsError> {
    let mut kvi = *template;
    if index > 0 {
        kvi.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
    }
    vcpu.vcpu_init(&kvi)
        .map_err(|e| RegsError::VcpuInit(index, e))
}

/// The KVM_{GET,SET}_ONE_REG id of a 64-bit core register at byte `offset` in `kvm_regs`.
fn core_reg(offset: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | u64::from(KVM_REG_ARM_CORE) | (offset / 4) as u64
}

/// PC, PSTATE and x0 of the boot vCPU.
pub fn set_boot_regs(vcpu: &VcpuFd, entry: u64, fdt: u64) -> Result<(), RegsError> {
    let regs = std::mem::offset_of!(kvm_regs, regs);
    let set = |what, offset, value: u64| {
        vcpu.set_one_reg(core_reg(regs + offset), &value.to_le_bytes())
            .map(|_| ())
            .map_err(|e| RegsError::SetReg(what, e))
    };
    set(
        "PSTATE",
        std::mem::offset_of!(user_pt_regs, pstate),
        BOOT_PSTATE,
    )?;
    set("PC", std::mem::offset_of!(user_pt_regs, pc), entry)?;
    set("x0", std::mem::offset_of!(user_pt_regs, regs), fdt)
}
