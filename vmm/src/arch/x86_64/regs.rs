//! vCPU boot state for both 32-bit entries: 32-bit protected mode, paging off, flat segments
//! from a GDT in guest memory; for PVH `EBX` = the `hvm_start_info` address, for the Linux
//! boot protocol (bzImage) `ESI` = the zero page. Plus boot MSRs, the FPU and the local
//! APIC's LINT pins.
//!
//! The GDT and segment encodings are pure and unit tested; the `set_*` functions are thin
//! ioctl wrappers.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{BOOT_GDT_START, BOOT_IDT_START, PVH_INFO_START, ZERO_PAGE_START};
use super::Error;

/// Boot GDT: null, unused, 32-bit flat code, 32-bit flat data, TSS. Code and data sit at
/// the selectors the Linux 32-bit boot protocol names (`__BOOT_CS` = 0x10, `__BOOT_DS` =
/// 0x18); PVH leaves the selector values open, so one GDT serves both entries.
pub const BOOT_GDT: [u64; 5] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0, 0, 0),
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];
// The GDT must end before the IDT that follows it in guest memory.
const _: () = assert!(BOOT_GDT_START + 8 * BOOT_GDT.len() as u64 <= BOOT_IDT_START);
const CODE_SELECTOR: u16 = 2 << 3;
const DATA_SELECTOR: u16 = 3 << 3;
const TSS_SELECTOR: u16 = 4 << 3;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// IA32_MISC_ENABLE: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// Local APIC LVT LINT0 / LINT1 register offsets and delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// A GDT descriptor: `flags` holds the access byte (bits 0..8) and the G/DB/L/AVL nibble
/// (bits 12..16); `limit` is 20 bits.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0xf_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The KVM segment register for GDT descriptor `entry` loaded with `selector`.
pub fn segment(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = (entry & 0xffff) | ((entry >> 32) & 0xf_0000);
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let g = bit(55);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bit(47);
    kvm_segment {
        base,
        limit: limit as u32,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes the boot GDT and an empty IDT, and loads 32-bit flat protected mode.
pub fn set_sregs_32bit(vcpu: &VcpuFd, mem: &GuestMemoryMmap) -> Result<(), Error> {
    for (i, e) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(|e| Error::WriteBootData("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|e| Error::WriteBootData("IDT", e))?;
    let mut sregs = vcpu.get_sregs().map_err(Error::VcpuIoctl)?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (8 * BOOT_GDT.len() - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    let data = segment(BOOT_GDT[3], DATA_SELECTOR);
    sregs.cs = segment(BOOT_GDT[2], CODE_SELECTOR);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment(BOOT_GDT[4], TSS_SELECTOR);
    // Both entries: protected mode, paging off, no long mode.
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).map_err(Error::VcpuIoctl)
}

/// General registers for the PVH entry: `EBX` = the `hvm_start_info`.
pub fn set_regs_pvh(vcpu: &VcpuFd, entry: GuestAddress) -> Result<(), Error> {
    vcpu.set_regs(&regs_pvh(entry)).map_err(Error::VcpuIoctl)
}

/// General registers for the Linux 32-bit boot protocol entry (`code32_start`): `ESI` = the
/// zero page; `EBP`, `EDI` and `EBX` zero, interrupts off.
pub fn set_regs_linux(vcpu: &VcpuFd, entry: GuestAddress) -> Result<(), Error> {
    vcpu.set_regs(&regs_linux(entry)).map_err(Error::VcpuIoctl)
}

fn regs_pvh(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        rbx: PVH_INFO_START,
        ..Default::default()
    }
}

fn regs_linux(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// The MSRs a freshly reset x86 CPU would have, as Linux expects them at boot.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Sets [`boot_msrs`]; every one must be accepted.
pub fn set_msrs(vcpu: &VcpuFd) -> Result<(), Error> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::MsrCount(entries.len()))?;
    let set = vcpu.set_msrs(&msrs).map_err(Error::VcpuIoctl)?;
    if set != entries.len() {
        return Err(Error::MsrRejected {
            index: entries.get(set).map_or(0, |e| e.index),
        });
    }
    Ok(())
}

/// x87 and SSE control words as after `FNINIT` / reset.
pub fn set_fpu(vcpu: &VcpuFd) -> Result<(), Error> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(Error::VcpuIoctl)
}

fn lapic_reg(regs: &[std::os::raw::c_char], off: usize) -> u32 {
    let b = |i: usize| regs[off + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char], off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().into_iter().enumerate() {
        regs[off + i] = b as std::os::raw::c_char;
    }
}

/// LINT0 delivers ExtINT (the PIC) and LINT1 NMI, as the MP table says.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), Error> {
    let mut lapic = vcpu.get_lapic().map_err(Error::VcpuIoctl)?;
    for (off, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let v = lapic_reg(&lapic.regs, off);
        set_lapic_reg(&mut lapic.regs, off, (v & !0x700) | (mode << 8));
    }
    vcpu.set_lapic(&lapic).map_err(Error::VcpuIoctl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_encode_flat_segments() {
        assert_eq!(BOOT_GDT[0], 0);
        assert_eq!(BOOT_GDT[1], 0);
        assert_eq!(BOOT_GDT[2], 0x00cf_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[4], 0x0000_8b00_0000_0067);
        // The Linux boot protocol's __BOOT_CS and __BOOT_DS.
        assert_eq!((CODE_SELECTOR, DATA_SELECTOR), (0x10, 0x18));
        assert_eq!(
            gdt_entry(0xa09b, 0x1234_5678, 0xabcde),
            0x12aa_9b34_5678_bcde
        );
    }

    #[test]
    fn segments_decode_what_the_gdt_encodes() {
        let cs = segment(BOOT_GDT[2], CODE_SELECTOR);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 0x10));
        assert_eq!(
            (cs.type_, cs.present, cs.dpl, cs.s, cs.db, cs.l, cs.g),
            (0xb, 1, 0, 1, 1, 0, 1)
        );
        assert_eq!(cs.unusable, 0);
        let ds = segment(BOOT_GDT[3], DATA_SELECTOR);
        assert_eq!((ds.type_, ds.limit, ds.db), (0x3, 0xffff_ffff, 1));
        let tr = segment(BOOT_GDT[4], TSS_SELECTOR);
        assert_eq!((tr.type_, tr.limit, tr.s, tr.g), (0xb, 0x67, 0, 0));
        let null = segment(0, 0);
        assert_eq!(null.unusable, 1);
        let odd = segment(gdt_entry(0xa09b, 0x1234_5678, 0xabcde), 0x10);
        assert_eq!(
            (odd.base, odd.limit, odd.l, odd.db),
            (0x1234_5678, 0xabcd_efff, 1, 0)
        );
    }

    #[test]
    fn each_entry_gets_its_boot_structure_in_its_register() {
        let pvh = regs_pvh(GuestAddress(0x100_0000));
        assert_eq!((pvh.rip, pvh.rbx, pvh.rsi), (0x100_0000, PVH_INFO_START, 0));
        let linux = regs_linux(GuestAddress(0x10_0000));
        assert_eq!((linux.rip, linux.rsi), (0x10_0000, ZERO_PAGE_START));
        // The boot protocol wants EBP, EDI and EBX zero, and interrupts off.
        assert_eq!((linux.rbx, linux.rbp, linux.rdi), (0, 0, 0));
        assert_eq!(linux.rflags & (1 << 9), 0);
    }

    #[test]
    fn boot_msrs_enable_fast_strings_and_write_back_mtrrs() {
        let m = boot_msrs();
        let get = |i| m.iter().find(|e| e.index == i).map(|e| e.data);
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(get(MSR_LSTAR), Some(0));
    }

    #[test]
    fn lapic_registers_round_trip_little_endian() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        set_lapic_reg(&mut regs, APIC_LVT0, 0x0001_0700);
        assert_eq!(lapic_reg(&regs, APIC_LVT0), 0x0001_0700);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x07);
    }
}
