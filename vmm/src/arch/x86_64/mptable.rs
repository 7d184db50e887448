//! The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI finds its
//! CPUs (one local APIC each), the IOAPIC and how the 24 IOAPIC pins map to ISA IRQs.
//!
//! Built as bytes by a pure function ([`mptable`]) so its layout and checksums are unit
//! tested; [`super::configure_system`] writes it at [`MPTABLE_START`].

use super::layout::{HIMEM_START, IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_START};

/// IOAPIC pins (KVM's in-kernel IOAPIC has 24).
pub const IOAPIC_PINS: u8 = 24;
/// Local APIC version KVM emulates.
const APIC_VERSION: u8 = 0x14;
/// IOAPIC version KVM emulates.
const IOAPIC_VERSION: u8 = 0x11;

const MPF_SIZE: usize = 16;
const MPC_HEADER_SIZE: usize = 44;
const CPU_ENTRY_SIZE: usize = 20;
const SMALL_ENTRY_SIZE: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// CPU signature: family 6 (the field is informational for Linux).
const CPU_SIGNATURE: u32 = 6 << 8;
/// CPUID.1:EDX features: FPU and APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

/// Errors of building the MP table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    /// No CPUs, or more than APIC ids allow (the IOAPIC takes the id after the last CPU).
    #[error("an MP table describes 1..=254 CPUs, not {0}")]
    CpuCount(u8),
}

/// The number of bytes the table takes for `cpus` CPUs.
pub fn mptable_size(cpus: u8) -> usize {
    MPF_SIZE
        + MPC_HEADER_SIZE
        + CPU_ENTRY_SIZE * usize::from(cpus)
        + SMALL_ENTRY_SIZE * (2 + usize::from(IOAPIC_PINS) + 2)
}

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |s, b| s.wrapping_add(*b))
        .wrapping_neg()
}

/// The MP floating pointer followed by the configuration table, for `cpus` CPUs with APIC
/// ids `0..cpus` (CPU 0 is the bootstrap processor), the IOAPIC with id `cpus`, ISA IRQ `n`
/// on IOAPIC pin `n`, ExtINT on LINT0 and NMI on LINT1 of every CPU.
pub fn mptable(cpus: u8) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 || cpus == u8::MAX {
        return Err(MptableError::CpuCount(cpus));
    }
    let ioapic_id = cpus;
    let mut t = Vec::with_capacity(mptable_size(cpus));

    // Floating pointer structure; its physptr points right behind it.
    t.extend_from_slice(b"_MP_");
    t.extend_from_slice(&(MPTABLE_START as u32 + MPF_SIZE as u32).to_le_bytes());
    t.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length/16, spec 1.4, checksum, features
    t[10] = checksum(&t[..MPF_SIZE]);

    // Configuration table header; length, entry count and checksum are filled in below.
    let h = t.len();
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&[0, 0, 4, 0]); // length, spec 1.4, checksum
    t.extend_from_slice(b"HULL    ");
    t.extend_from_slice(b"HULL-VMM    ");
    t.extend_from_slice(&[0; 8]); // OEM table pointer and size, entry count
    t.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    t.extend_from_slice(&[0; 4]); // extended table length and checksum

    let mut entries: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 };
        t.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        t.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        t.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        t.extend_from_slice(&[0; 8]);
        entries += 1;
    }
    t.extend_from_slice(&[ENTRY_BUS, 0]);
    t.extend_from_slice(b"ISA   ");
    t.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    t.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    entries += 2;
    for pin in 0..IOAPIC_PINS {
        // Interrupt type, flags (conform to the bus), source bus 0, source IRQ, IOAPIC, pin.
        t.extend_from_slice(&[ENTRY_INTSRC, INT_TYPE_INT, 0, 0, 0, pin, ioapic_id, pin]);
        entries += 1;
    }
    t.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    t.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    entries += 2;

    let len = (t.len() - h) as u16;
    t[h + 4..h + 6].copy_from_slice(&len.to_le_bytes());
    t[h + 34..h + 36].copy_from_slice(&entries.to_le_bytes());
    t[h + 7] = checksum(&t[h..]);
    debug_assert_eq!(t.len(), mptable_size(cpus));
    debug_assert!(MPTABLE_START + t.len() as u64 <= HIMEM_START);
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    #[test]
    fn floating_pointer_and_table_checksum_to_zero() {
        for cpus in [1u8, 2, 7, 64, 254] {
            let t = mptable(cpus).unwrap();
            assert_eq!(t.len(), mptable_size(cpus));
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer, {cpus} cpus");
            assert_eq!(u32_at(&t, 4), MPTABLE_START as u32 + 16);
            assert_eq!((t[8], t[9]), (1, 4));
            let c = &t[16..];
            assert_eq!(&c[..4], b"PCMP");
            assert_eq!(usize::from(u16_at(c, 4)), c.len());
            assert_eq!(sum(c), 0, "config table, {cpus} cpus");
            assert_eq!(u32_at(c, 36), LAPIC_ADDR);
            assert!(MPTABLE_START + t.len() as u64 <= HIMEM_START);
        }
    }

    /// Walks the entries as Linux's MP parser does.
    #[test]
    fn entries_describe_cpus_ioapic_and_identity_irq_routing() {
        let t = mptable(3).unwrap();
        let c = &t[16..];
        let count = u16_at(c, 34);
        let (mut off, mut cpus, mut intsrc, mut lint) = (44, vec![], vec![], vec![]);
        let mut ioapic = None;
        for _ in 0..count {
            match c[off] {
                ENTRY_PROCESSOR => {
                    cpus.push((c[off + 1], c[off + 3]));
                    off += 20;
                }
                ENTRY_BUS => {
                    assert_eq!(&c[off + 2..off + 8], b"ISA   ");
                    off += 8;
                }
                ENTRY_IOAPIC => {
                    ioapic = Some((c[off + 1], c[off + 3], u32_at(c, off + 4)));
                    off += 8;
                }
                ENTRY_INTSRC => {
                    intsrc.push((c[off + 5], c[off + 6], c[off + 7]));
                    off += 8;
                }
                ENTRY_LINTSRC => {
                    lint.push((c[off + 1], c[off + 6], c[off + 7]));
                    off += 8;
                }
                other => panic!("unknown entry type {other}"),
            }
        }
        assert_eq!(off, c.len());
        assert_eq!(
            cpus,
            vec![
                (0, CPU_ENABLED | CPU_BOOTSTRAP),
                (1, CPU_ENABLED),
                (2, CPU_ENABLED)
            ]
        );
        assert_eq!(ioapic, Some((3, 1, IOAPIC_ADDR)));
        assert_eq!(intsrc.len(), 24);
        assert!(intsrc
            .iter()
            .enumerate()
            .all(|(i, &(irq, apic, pin))| irq as usize == i && apic == 3 && pin as usize == i));
        assert_eq!(lint, vec![(INT_TYPE_EXTINT, 0, 0), (INT_TYPE_NMI, 0xff, 1)]);
    }

    #[test]
    fn cpu_counts_without_a_free_apic_id_are_rejected() {
        assert_eq!(mptable(0), Err(MptableError::CpuCount(0)));
        assert_eq!(mptable(255), Err(MptableError::CpuCount(255)));
    }
}
