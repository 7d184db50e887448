//! The flattened device tree an arm64 guest boots with, built with rust-vmm's `vm-fdt`.
//!
//! It describes memory, the vCPUs (PSCI enable-method, `reg` = the MPIDR affinity KVM
//! assigns), PSCI 0.2 over HVC, the GICv3 (distributor, redistributors, maintenance IRQ),
//! the architected timer, the 8250 console UART and virtio-mmio devices on the MMIO bus,
//! and `/chosen` (bootargs, initramfs, stdout-path).
//!
//! Pure: it builds bytes from an [`FdtConfig`] and touches neither KVM nor guest memory, so
//! its tests run on every host. Not here: PCI, an RTC, NUMA, CPU topology (cpu-map), and
//! reading the vCPUs' real MPIDR_EL1 (we rely on KVM's documented default).

use thiserror::Error;
use vm_fdt::FdtWriter;

use super::layout;

/// The phandle of the GIC (the root's interrupt-parent).
const GIC_PHANDLE: u32 = 1;
/// Interrupt specifier: an SPI / a PPI (first cell).
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
/// Interrupt specifier: trigger type (third cell).
const IRQ_TYPE_EDGE_RISING: u32 = 1;
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;
/// The GIC maintenance interrupt (PPI).
const GIC_MAINTENANCE_PPI: u32 = 9;
/// The architected timer's PPIs: secure, non-secure physical, virtual, hypervisor.
const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];
/// The 8250's input clock: 1.8432 MHz, the classic 115200 × 16.
const UART_CLOCK_HZ: u32 = 1_843_200;

/// Errors of building the FDT.
#[derive(Debug, Error)]
pub enum FdtError {
    /// vm-fdt refused a node or property.
    #[error("writing the FDT: {0}")]
    Write(#[from] vm_fdt::Error),
    /// The FDT is larger than the boot protocol allows.
    #[error("the FDT is {0} bytes, more than the 2 MiB the arm64 boot protocol allows")]
    TooLarge(usize),
    /// There are no vCPUs or more than the layout has room for.
    #[error("{0} vCPUs: the layout supports 1 to {max}", max = layout::MAX_VCPUS)]
    Vcpus(u8),
}

/// A device on the MMIO bus: its window and its SPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    /// Guest-physical base of its window.
    pub base: u64,
    /// Window size.
    pub size: u64,
    /// Its GIC SPI number.
    pub irq: u32,
}

/// What the FDT describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdtConfig<'a> {
    /// RAM regions (address, size).
    pub memory: &'a [(u64, u64)],
    /// Number of vCPUs.
    pub vcpus: u8,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The initramfs (address, size), if any.
    pub initrd: Option<(u64, u64)>,
    /// The console UART (an 8250), if any; it becomes stdout-path.
    pub serial: Option<MmioDevice>,
    /// virtio-mmio devices.
    pub virtio: &'a [MmioDevice],
}

/// Builds the FDT blob for `cfg`.
pub fn create_fdt(cfg: &FdtConfig<'_>) -> Result<Vec<u8>, FdtError> {
    if cfg.vcpus == 0 || cfg.vcpus > layout::MAX_VCPUS {
        return Err(FdtError::Vcpus(cfg.vcpus));
    }
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_string("model", "hull-vmm")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    write_cpus(&mut fdt, cfg.vcpus)?;
    write_memory(&mut fdt, cfg.memory)?;
    write_chosen(&mut fdt, cfg)?;
    write_psci(&mut fdt)?;
    write_gic(&mut fdt, cfg.vcpus)?;
    write_timer(&mut fdt)?;
    if let Some(uart) = cfg.serial {
        write_uart(&mut fdt, &uart)?;
    }
    for dev in cfg.virtio {
        write_virtio(&mut fdt, dev)?;
    }

    fdt.end_node(root)?;
    let blob = fdt.finish()?;
    if blob.len() as u64 > layout::FDT_MAX_SIZE {
        return Err(FdtError::TooLarge(blob.len()));
    }
    Ok(blob)
}

fn write_cpus(fdt: &mut FdtWriter, vcpus: u8) -> Result<(), FdtError> {
    let cpus = fdt.begin_node("cpus")?;
    // MPIDR affinity fits 32 bits for our vCPU counts; one address cell suffices.
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for i in 0..vcpus {
        let mpidr = layout::mpidr(i) as u32;
        let cpu = fdt.begin_node(&format!("cpu@{mpidr:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_u32("reg", mpidr)?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;
    Ok(())
}

fn write_memory(fdt: &mut FdtWriter, regions: &[(u64, u64)]) -> Result<(), FdtError> {
    let start = regions.first().map_or(layout::DRAM_START, |r| r.0);
    let mem = fdt.begin_node(&format!("memory@{start:x}"))?;
    fdt.property_string("device_type", "memory")?;
    let reg: Vec<u64> = regions.iter().flat_map(|&(a, s)| [a, s]).collect();
    fdt.property_array_u64("reg", &reg)?;
    fdt.end_node(mem)?;
    Ok(())
}

fn write_chosen(fdt: &mut FdtWriter, cfg: &FdtConfig<'_>) -> Result<(), FdtError> {
    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", cfg.cmdline)?;
    if let Some((addr, size)) = cfg.initrd {
        fdt.property_u64("linux,initrd-start", addr)?;
        fdt.property_u64("linux,initrd-end", addr.saturating_add(size))?;
    }
    if let Some(uart) = cfg.serial {
        fdt.property_string("stdout-path", &format!("/uart@{:x}", uart.base))?;
    }
    fdt.end_node(chosen)?;
    Ok(())
}

fn write_psci(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    // KVM implements PSCI 0.2+ when the vCPU is initialised with KVM_ARM_VCPU_PSCI_0_2;
    // calls trap to it through HVC.
    let psci = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,psci-0.2".to_string(), "arm,psci".to_string()],
    )?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(psci)?;
    Ok(())
}

fn write_gic(fdt: &mut FdtWriter, vcpus: u8) -> Result<(), FdtError> {
    let gic = fdt.begin_node(&format!("intc@{:x}", layout::GICD_BASE))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    fdt.property_array_u64(
        "reg",
        &[
            layout::GICD_BASE,
            layout::GICD_SIZE,
            layout::GICR_BASE,
            layout::gicr_size(vcpus),
        ],
    )?;
    fdt.property_phandle(GIC_PHANDLE)?;
    fdt.property_array_u32(
        "interrupts",
        &[GIC_PPI, GIC_MAINTENANCE_PPI, IRQ_TYPE_LEVEL_HIGH],
    )?;
    fdt.end_node(gic)?;
    Ok(())
}

fn write_timer(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    let timer = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    fdt.property_null("always-on")?;
    let irqs: Vec<u32> = TIMER_PPIS
        .iter()
        .flat_map(|&ppi| [GIC_PPI, ppi, IRQ_TYPE_LEVEL_HIGH])
        .collect();
    fdt.property_array_u32("interrupts", &irqs)?;
    fdt.end_node(timer)?;
    Ok(())
}

fn write_uart(fdt: &mut FdtWriter, uart: &MmioDevice) -> Result<(), FdtError> {
    let node = fdt.begin_node(&format!("uart@{:x}", uart.base))?;
    fdt.property_string("compatible", "ns16550a")?;
    fdt.property_array_u64("reg", &[uart.base, uart.size])?;
    fdt.property_u32("clock-frequency", UART_CLOCK_HZ)?;
    // Edge, not level: its line is an irqfd, which KVM raises and lowers at once. A
    // level-sensitive SPI would be pending only while the line is high, so the guest could
    // miss the pulse; an edge-triggered one latches it (as virtio-mmio's below).
    fdt.property_array_u32("interrupts", &[GIC_SPI, uart.irq, IRQ_TYPE_EDGE_RISING])?;
    fdt.end_node(node)?;
    Ok(())
}

fn write_virtio(fdt: &mut FdtWriter, dev: &MmioDevice) -> Result<(), FdtError> {
    let node = fdt.begin_node(&format!("virtio_mmio@{:x}", dev.base))?;
    fdt.property_string("compatible", "virtio,mmio")?;
    fdt.property_array_u64("reg", &[dev.base, dev.size])?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, dev.irq, IRQ_TYPE_EDGE_RISING])?;
    fdt.property_null("dma-coherent")?;
    fdt.end_node(node)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fdt::Fdt;

    const UART: MmioDevice = MmioDevice {
        base: layout::SERIAL_MMIO_BASE,
        size: layout::SERIAL_MMIO_SIZE,
        irq: layout::SERIAL_IRQ,
    };

    fn cells(value: &[u8]) -> Vec<u32> {
        value
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn prop<'a>(fdt: &'a Fdt<'a>, node: &str, name: &str) -> &'a [u8] {
        fdt.find_node(node)
            .unwrap_or_else(|| panic!("no node {node}"))
            .property(name)
            .unwrap_or_else(|| panic!("no {node}:{name}"))
            .value
    }

    fn sample(virtio: &[MmioDevice]) -> Vec<u8> {
        create_fdt(&FdtConfig {
            memory: &[(layout::DRAM_START, 256 << 20)],
            vcpus: 18,
            cmdline: "console=ttyS0 reboot=k panic=1",
            initrd: Some((0x8f00_0000, 0x1_2345)),
            serial: Some(UART),
            virtio,
        })
        .unwrap()
    }

    #[test]
    fn fdt_parses_back_with_memory_cpus_and_chosen() {
        let blob = sample(&[]);
        let fdt = Fdt::new(&blob).expect("a valid FDT");
        assert_eq!(fdt.total_size(), blob.len());
        assert_eq!(fdt.root().compatible().first(), "linux,dummy-virt");

        let mem: Vec<_> = fdt.memory().regions().collect();
        assert_eq!(mem.len(), 1);
        assert_eq!(mem[0].starting_address as u64, layout::DRAM_START);
        assert_eq!(mem[0].size, Some(256 << 20));

        let cpus: Vec<_> = fdt.cpus().collect();
        assert_eq!(cpus.len(), 18);
        let ids: Vec<usize> = cpus.iter().map(|c| c.ids().first()).collect();
        assert_eq!(ids[..3], [0, 1, 2]);
        assert_eq!(ids[16..], [0x100, 0x101], "Aff1 from the 17th vCPU on");
        for c in &cpus {
            assert_eq!(c.property("enable-method").unwrap().as_str(), Some("psci"));
            assert_eq!(c.property("device_type").unwrap().as_str(), Some("cpu"));
        }

        let chosen = fdt.chosen();
        assert_eq!(chosen.bootargs(), Some("console=ttyS0 reboot=k panic=1"));
        assert_eq!(
            chosen.stdout().map(|n| n.name),
            Some(format!("uart@{:x}", layout::SERIAL_MMIO_BASE).as_str())
        );
        let start = prop(&fdt, "/chosen", "linux,initrd-start");
        let end = prop(&fdt, "/chosen", "linux,initrd-end");
        assert_eq!(u64::from_be_bytes(start.try_into().unwrap()), 0x8f00_0000);
        assert_eq!(u64::from_be_bytes(end.try_into().unwrap()), 0x8f01_2345);
    }

    #[test]
    fn fdt_describes_gic_timer_psci_and_uart() {
        let blob = sample(&[]);
        let fdt = Fdt::new(&blob).unwrap();

        let gic = fdt.find_compatible(&["arm,gic-v3"]).expect("a GICv3 node");
        assert!(gic.property("interrupt-controller").is_some());
        assert_eq!(gic.interrupt_cells(), Some(3));
        let reg: Vec<_> = gic.reg().unwrap().collect();
        assert_eq!(reg[0].starting_address as u64, layout::GICD_BASE);
        assert_eq!(reg[0].size, Some(layout::GICD_SIZE as usize));
        assert_eq!(reg[1].starting_address as u64, layout::GICR_BASE);
        assert_eq!(reg[1].size, Some(18 * 0x2_0000));
        let phandle = cells(gic.property("phandle").unwrap().value)[0];
        assert_eq!(cells(prop(&fdt, "/", "interrupt-parent")), [phandle]);

        let psci = fdt.find_node("/psci").unwrap();
        assert_eq!(
            psci.compatible().unwrap().all().collect::<Vec<_>>(),
            ["arm,psci-0.2", "arm,psci"]
        );
        assert_eq!(psci.property("method").unwrap().as_str(), Some("hvc"));

        let timer = cells(prop(&fdt, "/timer", "interrupts"));
        assert_eq!(timer, [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]);

        let uart_path = format!("/uart@{:x}", layout::SERIAL_MMIO_BASE);
        let uart = fdt.find_node(&uart_path).unwrap();
        assert_eq!(uart.compatible().unwrap().first(), "ns16550a");
        let reg: Vec<_> = uart.reg().unwrap().collect();
        assert_eq!(reg[0].starting_address as u64, layout::SERIAL_MMIO_BASE);
        assert_eq!(
            cells(uart.property("interrupts").unwrap().value),
            [0, layout::SERIAL_IRQ, 1],
            "an SPI, edge-triggered: its irqfd only pulses the line"
        );
        // Its interrupts go to the GIC: the root's interrupt-parent resolves to it.
        assert_eq!(fdt.find_phandle(phandle).map(|n| n.name), Some(gic.name));
    }

    #[test]
    fn virtio_devices_become_virtio_mmio_nodes() {
        let devs = [0, 1].map(|i| MmioDevice {
            base: layout::VIRTIO_MMIO_BASE + i * 0x1000,
            size: 0x1000,
            irq: layout::VIRTIO_IRQ_BASE + i as u32,
        });
        let blob = sample(&devs);
        let fdt = Fdt::new(&blob).unwrap();
        let nodes: Vec<_> = fdt
            .all_nodes()
            .filter(|n| n.compatible().is_some_and(|c| c.first() == "virtio,mmio"))
            .collect();
        assert_eq!(nodes.len(), 2);
        for (n, d) in nodes.iter().zip(&devs) {
            let reg: Vec<_> = n.reg().unwrap().collect();
            assert_eq!(reg[0].starting_address as u64, d.base);
            assert_eq!(reg[0].size, Some(0x1000));
            assert_eq!(
                cells(n.property("interrupts").unwrap().value),
                [0, d.irq, 1]
            );
        }
    }

    #[test]
    fn no_initrd_or_uart_means_no_such_properties() {
        let blob = create_fdt(&FdtConfig {
            memory: &[(layout::DRAM_START, 64 << 20), (0x1_0000_0000, 64 << 20)],
            vcpus: 1,
            cmdline: "",
            initrd: None,
            serial: None,
            virtio: &[],
        })
        .unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let chosen = fdt.find_node("/chosen").unwrap();
        assert!(chosen.property("linux,initrd-start").is_none());
        assert!(chosen.property("stdout-path").is_none());
        assert!(fdt.find_compatible(&["ns16550a"]).is_none());
        assert_eq!(fdt.memory().regions().count(), 2);
        assert_eq!(fdt.cpus().count(), 1);
    }

    #[test]
    fn vcpu_counts_outside_the_layout_are_errors() {
        for vcpus in [0, layout::MAX_VCPUS + 1] {
            let r = create_fdt(&FdtConfig {
                memory: &[(layout::DRAM_START, 64 << 20)],
                vcpus,
                cmdline: "",
                initrd: None,
                serial: None,
                virtio: &[],
            });
            assert!(matches!(r, Err(FdtError::Vcpus(v)) if v == vcpus));
        }
    }
}
