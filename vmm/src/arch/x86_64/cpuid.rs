//! CPUID per vCPU: start from what KVM supports (`KVM_GET_SUPPORTED_CPUID`) and make the
//! identity and topology leaves describe *this* VM: vCPU `i` has APIC id `i`, the VM is one
//! package of `vcpus` single-threaded cores, and the hypervisor bit is set.
//!
//! Pure: it rewrites `kvm_cpuid_entry2` values, so it is unit tested without KVM. Leaves a
//! CPU does not report are left absent (KVM only reports the vendor's own leaves).

use kvm_bindings::kvm_cpuid_entry2;

/// CPUID.1:ECX bit 31: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: the logical-processor count in EBX[23:16] is valid.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Extended topology level types (leaves 0xB and 0x1F).
const LEVEL_TYPE_INVALID: u32 = 0;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits of an APIC id that number the cores of a package of `vcpus` cores.
fn core_id_bits(vcpus: u8) -> u32 {
    u32::from(vcpus).next_power_of_two().trailing_zeros()
}

/// Rewrites `entries` (from `KVM_GET_SUPPORTED_CPUID`) for vCPU `index` of `vcpus`.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], index: u8, vcpus: u8) {
    let apic_id = u32::from(index);
    let n = u32::from(vcpus);
    let bits = core_id_bits(vcpus);
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                // EBX[31:24] initial APIC id, [23:16] addressable logical processors.
                e.ebx = (e.ebx & 0xffff) | (apic_id << 24) | ((1u32 << bits).min(255) << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if vcpus > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 => {
                // Deterministic cache parameters (Intel). EAX[31:26]: addressable cores per
                // package - 1; EAX[25:14]: threads sharing this cache - 1 (L3 is shared by
                // the package, L1/L2 are per core).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { (1u32 << bits) - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (((1u32 << bits) - 1) << 26) | ((sharing & 0xfff) << 14);
            }
            0xb | 0x1f => {
                // Extended topology: EDX is the x2APIC id on every sub-leaf.
                e.edx = apic_id;
                let (eax, ebx, ecx) = match e.index {
                    // ECX[7:0] is the sub-leaf number (0 here).
                    0 => (0, 1, LEVEL_TYPE_SMT << 8),
                    1 => (bits, n, (LEVEL_TYPE_CORE << 8) | 1),
                    sub => (0, 0, (LEVEL_TYPE_INVALID << 8) | (sub & 0xff)),
                };
                (e.eax, e.ebx, e.ecx) = (eax, ebx, ecx);
            }
            0x8000_0008 => {
                // AMD: ECX[15:12] APIC id bits for cores, ECX[7:0] cores - 1.
                e.ecx = (e.ecx & !0xf0ff) | (bits << 12) | (n - 1);
            }
            0x8000_001e => {
                // AMD extended APIC id; one thread per compute unit; node 0 of 1.
                e.eax = apic_id;
                e.ebx = (e.ebx & !0xffff) | (apic_id & 0xff);
                e.ecx &= !0x7ff;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    fn supported() -> Vec<kvm_cpuid_entry2> {
        let mut v = vec![
            entry(0x1, 0),
            entry(0x4, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(0x8000_0008, 0),
            entry(0x8000_001e, 0),
            entry(0x4000_0001, 0),
        ];
        // Leaf 4 sub-leaf 0 is an L1 cache, sub-leaf 3 an L3.
        v[1].eax = (1 << 5) | 1;
        let mut l3 = entry(0x4, 3);
        l3.eax = (3 << 5) | 3;
        v.push(l3);
        v
    }

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn apic_ids_follow_the_vcpu_index_in_every_leaf() {
        for index in [0u8, 1, 5] {
            let mut v = supported();
            normalize(&mut v, index, 6);
            let id = u32::from(index);
            assert_eq!(find(&v, 1, 0).ebx >> 24, id);
            assert_eq!(find(&v, 0xb, 0).edx, id);
            assert_eq!(find(&v, 0xb, 1).edx, id);
            assert_eq!(find(&v, 0x8000_001e, 0).eax, id);
            assert_eq!(find(&v, 0x8000_001e, 0).ebx & 0xff, id);
        }
    }

    #[test]
    fn topology_is_one_package_of_single_threaded_cores() {
        let mut v = supported();
        normalize(&mut v, 0, 6);
        let smt = find(&v, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx), (0, 1, LEVEL_TYPE_SMT << 8));
        let core = find(&v, 0xb, 1);
        assert_eq!(
            (core.eax, core.ebx, core.ecx),
            (3, 6, (LEVEL_TYPE_CORE << 8) | 1)
        );
        let end = find(&v, 0xb, 2);
        assert_eq!((end.eax, end.ebx, end.ecx & 0xff00), (0, 0, 0));
        assert_eq!(end.ecx & 0xff, 2);
        let amd = find(&v, 0x8000_0008, 0);
        assert_eq!((amd.ecx >> 12) & 0xf, 3);
        assert_eq!(amd.ecx & 0xff, 5);
        assert_eq!((find(&v, 1, 0).ebx >> 16) & 0xff, 8);
        // Leaf 4: 8 addressable cores; L1 private, L3 shared by the package.
        assert_eq!(find(&v, 4, 0).eax >> 26, 7);
        assert_eq!((find(&v, 4, 0).eax >> 14) & 0xfff, 0);
        assert_eq!((find(&v, 4, 3).eax >> 14) & 0xfff, 7);
        assert_eq!(find(&v, 4, 3).eax & 0x3fff, (3 << 5) | 3);
    }

    #[test]
    fn hypervisor_bit_is_set_and_htt_only_with_several_vcpus() {
        let mut v = supported();
        v[0].edx = 0;
        v[0].ecx = 0;
        normalize(&mut v, 0, 1);
        assert_ne!(find(&v, 1, 0).ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(find(&v, 1, 0).edx & LEAF1_EDX_HTT, 0);
        assert_eq!(find(&v, 0xb, 1).ebx, 1);
        assert_eq!(find(&v, 0xb, 1).eax, 0);
        normalize(&mut v, 0, 2);
        assert_ne!(find(&v, 1, 0).edx & LEAF1_EDX_HTT, 0);
        // Leaves hull does not own are untouched.
        assert_eq!(find(&v, 0x4000_0001, 0).eax, 0xffff_ffff);
    }
}
