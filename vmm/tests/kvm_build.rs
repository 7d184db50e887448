//! The builder against this machine's real `/dev/kvm`, with tiny hand-built kernels: a PVH
//! ELF and a bzImage.
//!
//! Only VM *construction* is tested here: every KVM ioctl of the boot path (irqchip, PIT,
//! memory slots, CPUID, MSRs, registers, LAPIC, irqfd) runs for real, and the boot tables are
//! read back from guest memory. The guest is not run: the PVH entry is ring-0 code, which
//! this workplace's kvm_pvm cannot execute (the nested harness runs real boots). No KVM is
//! mocked; without /dev/kvm this test fails and says so.

#![cfg(target_arch = "x86_64")]

use std::path::Path;
use std::time::Instant;

use hull_vmm::builder::{self, BuildError};
use hull_vmm::config::{ConsoleOutput, FsShare, VmResources};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

mod support;

use support::LOAD_ADDR;

const ENTRY: u32 = 0x10_0010;

/// A kernel whose one PT_LOAD at 1 MiB holds `hlt`s (0x40 bytes of them in the file) and,
/// if `pvh`, with a PVH entry at [`ENTRY`].
fn tiny_kernel(pvh: bool) -> Vec<u8> {
    support::elf(&[0xf4; 0x40], 0x200, 5, pvh.then_some(ENTRY))
}

/// A built VM's guest memory, read back.
struct Guest<'a>(&'a GuestMemoryMmap);

impl Guest<'_> {
    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.0.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }
    fn u32_at(&self, addr: u64) -> u32 {
        u32::from_le_bytes(self.read(addr, 4).try_into().unwrap())
    }
    fn u64_at(&self, addr: u64) -> u64 {
        u64::from_le_bytes(self.read(addr, 8).try_into().unwrap())
    }
    /// The kernel command line (at 0x2_0000) is `want`, its NUL included.
    fn assert_cmdline(&self, want: &[u8]) {
        let got = self.read(0x2_0000, want.len());
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    }
    /// What both boot paths write: the memory map entry at `last` (PVH's and the zero
    /// page's e820 entries share the layout of their first 20 bytes: address, size, type)
    /// is RAM from 1 MiB to the end of the 64 MiB, and the MP table is where Linux looks.
    fn assert_ram_and_mp_table(&self, last: u64) {
        assert_eq!(
            (
                self.u64_at(last),
                self.u64_at(last + 8),
                self.u32_at(last + 16)
            ),
            (0x10_0000, (64 << 20) - 0x10_0000, 1)
        );
        assert_eq!(self.read(0x9_fc00, 4), b"_MP_");
    }
}

fn resources(dir: &Path, pvh: bool) -> VmResources {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm (KVM API test; nothing is mocked)"
    );
    let kernel = dir.join("vmlinux");
    std::fs::write(&kernel, tiny_kernel(pvh)).unwrap();
    let initrd = dir.join("initrd");
    std::fs::write(&initrd, vec![0xa5u8; 5000]).unwrap();
    VmResources {
        kernel,
        initrd: Some(initrd),
        cmdline: "console=ttyS0 reboot=t".into(),
        vcpus: 2,
        memory_bytes: 64 << 20,
        console: ConsoleOutput::File(dir.join("console.log")),
        vsock_uds: None,
        block: vec![],
        net: None,
        api_sock: None,
        fs: vec![],
    }
}

#[test]
fn builder_loads_a_pvh_kernel_and_writes_boot_tables_through_real_kvm() {
    let dir = tempfile::tempdir().unwrap();
    let vm = builder::build(&resources(dir.path(), true), Instant::now())
        .unwrap_or_else(|e| panic!("building a VM on /dev/kvm: {e}"));
    let mem = Guest(vm.memory());

    // The kernel segment at its physical address; the command line, NUL-terminated.
    assert_eq!(mem.read(LOAD_ADDR, 4), vec![0xf4; 4]);
    assert_eq!(mem.read(0x2_0000, 23), b"console=ttyS0 reboot=t\0");
    // The initramfs: page-aligned at the top of RAM (64 MiB - 8 KiB for 5000 bytes).
    let initrd_addr = (64 << 20) - 0x2000;
    assert_eq!(mem.read(initrd_addr, 5000), vec![0xa5; 5000]);
    // PVH start info: magic, one module (the initramfs), the command line, a memory map.
    let info = 0x6000;
    assert_eq!(mem.u32_at(info), 0x336e_c578);
    assert_eq!(mem.u32_at(info + 12), 1, "nr_modules");
    let modlist = mem.u64_at(info + 16);
    assert_eq!(mem.u64_at(modlist), initrd_addr);
    assert_eq!(mem.u64_at(modlist + 8), 5000);
    assert_eq!(mem.u64_at(info + 24), 0x2_0000, "cmdline_paddr");
    let (memmap, entries) = (mem.u64_at(info + 40), mem.u32_at(info + 48));
    assert_eq!(entries, 3);
    mem.assert_ram_and_mp_table(memmap + 2 * 24);

    for index in 0..2u8 {
        let fd = vm.vcpu_fd(index).expect("vCPU");
        let regs = fd.get_regs().unwrap();
        assert_eq!(
            (regs.rip, regs.rbx, regs.rflags),
            (u64::from(ENTRY), 0x6000, 2)
        );
        let sregs = fd.get_sregs().unwrap();
        assert_eq!(sregs.cr0 & 1, 1, "protected mode");
        assert_eq!(sregs.cr0 & (1 << 31), 0, "paging off");
        assert_eq!(
            (sregs.cs.base, sregs.cs.limit, sregs.cs.db, sregs.cs.l),
            (0, 0xffff_ffff, 1, 0)
        );
        assert_eq!(sregs.gdt.base, 0x500);
        // The GDT in guest memory is whole (the IDT after it does not overwrite its last,
        // TSS, entry) and matches what TR and CS were loaded from.
        let gdt_len = (usize::from(sregs.gdt.limit) + 1) / 8;
        assert_eq!(gdt_len, 5);
        assert_eq!(
            mem.u64_at(0x500 + 8 * 4),
            0x0000_8b00_0000_0067,
            "TSS descriptor"
        );
        assert_eq!(
            mem.u64_at(0x500 + u64::from(sregs.cs.selector)),
            0x00cf_9b00_0000_ffff
        );
        assert!(
            sregs.idt.base >= 0x500 + 8 * gdt_len as u64,
            "IDT overlaps the GDT"
        );
        let cpuid = fd.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES).unwrap();
        let leaf1 = cpuid.as_slice().iter().find(|e| e.function == 1).unwrap();
        assert_eq!(leaf1.ebx >> 24, u32::from(index), "APIC id of vCPU {index}");
        assert_ne!(leaf1.ecx & (1 << 31), 0, "hypervisor bit");
    }
    assert!(vm.vcpu_fd(2).is_none());
}

/// Where the tiny bzImage's protected-mode part runs from, its `initrd_addr_max` and how
/// much memory it claims from `pref_address` (16 MiB) before it reads the memory map.
const BZ_LOAD: u64 = 0x10_0000;
const BZ_INITRD_MAX: u32 = (48 << 20) - 1;
const BZ_INIT_SIZE: u32 = 16 << 20;

/// A bzImage: one setup sector after the boot sector (so the protected-mode part starts at
/// file offset 0x400) carrying a boot protocol `version` header, then a page of `hlt`s.
fn tiny_bzimage(version: u16) -> Vec<u8> {
    let mut b = vec![0u8; 0x400 + 0x1000];
    let put = support::put;
    put(&mut b, 0x1f1, &[1]); // setup_sects
    put(&mut b, 0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
    put(&mut b, 0x200, &[0xeb, 0x6a]); // jmp over the header: it ends at 0x26c (2.15)
    put(&mut b, 0x202, b"HdrS");
    put(&mut b, 0x206, &version.to_le_bytes());
    put(&mut b, 0x211, &[1]); // loadflags: LOADED_HIGH
    put(&mut b, 0x214, &(BZ_LOAD as u32).to_le_bytes()); // code32_start
    put(&mut b, 0x22c, &BZ_INITRD_MAX.to_le_bytes());
    put(&mut b, 0x230, &(2u32 << 20).to_le_bytes()); // kernel_alignment
    put(&mut b, 0x234, &[1]); // relocatable_kernel
    put(&mut b, 0x238, &2047u32.to_le_bytes()); // cmdline_size
    put(&mut b, 0x258, &(16u64 << 20).to_le_bytes()); // pref_address
    put(&mut b, 0x260, &BZ_INIT_SIZE.to_le_bytes());
    b[0x400..].fill(0xf4);
    b
}

fn bzimage_resources(dir: &Path, version: u16) -> VmResources {
    let mut res = resources(dir, true);
    res.kernel = dir.join("bzImage");
    std::fs::write(&res.kernel, tiny_bzimage(version)).unwrap();
    res
}

#[test]
fn builder_loads_a_bzimage_and_writes_its_zero_page_through_real_kvm() {
    let dir = tempfile::tempdir().unwrap();
    let vm = builder::build(&bzimage_resources(dir.path(), 0x020f), Instant::now())
        .unwrap_or_else(|e| panic!("building a VM on /dev/kvm: {e}"));
    let mem = Guest(vm.memory());

    // The protected-mode part (after the setup sectors) at code32_start.
    assert_eq!(mem.read(BZ_LOAD, 4), vec![0xf4; 4]);
    assert_eq!(mem.read(0x2_0000, 23), b"console=ttyS0 reboot=t\0");
    // The initramfs: below initrd_addr_max (48 MiB), not at the top of the 64 MiB of RAM.
    let initrd_addr = u64::from(BZ_INITRD_MAX) + 1 - 0x2000;
    assert_eq!(mem.read(initrd_addr, 5000), vec![0xa5; 5000]);

    // The zero page: the image's own header, with what the loader fills in.
    let zp = 0x8000;
    assert_eq!(&mem.read(zp + 0x202, 4), b"HdrS");
    assert_eq!(mem.read(zp + 0x210, 1), vec![0xff], "type_of_loader");
    assert_eq!(mem.u32_at(zp + 0x228), 0x2_0000, "cmd_line_ptr");
    assert_eq!(
        u64::from(mem.u32_at(zp + 0x218)),
        initrd_addr,
        "ramdisk_image"
    );
    assert_eq!(mem.u32_at(zp + 0x21c), 5000, "ramdisk_size");
    assert_eq!(mem.u32_at(zp + 0x260), BZ_INIT_SIZE, "init_size kept");
    // e820: base memory, the legacy hole, RAM from 1 MiB to the end (20-byte entries).
    assert_eq!(mem.read(zp + 0x1e8, 1), vec![3], "e820_entries");
    mem.assert_ram_and_mp_table(zp + 0x2d0 + 2 * 20);

    for index in 0..2u8 {
        let fd = vm.vcpu_fd(index).expect("vCPU");
        let regs = fd.get_regs().unwrap();
        // The 32-bit boot protocol: ESI = zero page; EBX, EBP, EDI zero.
        assert_eq!(
            (
                regs.rip,
                regs.rsi,
                regs.rbx,
                regs.rbp,
                regs.rdi,
                regs.rflags
            ),
            (BZ_LOAD, zp, 0, 0, 0, 2)
        );
        let sregs = fd.get_sregs().unwrap();
        assert_eq!(sregs.cr0 & 1, 1, "protected mode");
        assert_eq!(sregs.cr0 & (1 << 31), 0, "paging off");
        // __BOOT_CS and __BOOT_DS, as the boot protocol names them.
        assert_eq!((sregs.cs.selector, sregs.ds.selector), (0x10, 0x18));
        assert_eq!((sregs.cs.limit, sregs.ds.limit), (0xffff_ffff, 0xffff_ffff));
    }
}

#[test]
fn a_bzimage_that_needs_more_ram_or_a_newer_loader_and_an_unknown_kernel_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // It decompresses to 16 MiB and claims 16 MiB more: 24 MiB of RAM is not enough.
    let mut res = bzimage_resources(dir.path(), 0x020f);
    res.memory_bytes = 24 << 20;
    let err = builder::build(&res, Instant::now()).unwrap_err();
    assert!(
        err.to_string().contains("needs guest RAM up to 0x2000000"),
        "{err}"
    );

    let err = builder::build(&bzimage_resources(dir.path(), 0x0209), Instant::now()).unwrap_err();
    assert!(err.to_string().contains("boot protocol 2.09"), "{err}");

    let res = resources(dir.path(), true);
    std::fs::write(&res.kernel, b"#!/bin/sh\necho not a kernel\n").unwrap();
    let err = builder::build(&res, Instant::now()).unwrap_err();
    assert!(
        err.to_string()
            .contains("neither an ELF vmlinux nor a bzImage"),
        "{err}"
    );
}

#[test]
fn a_kernel_without_a_pvh_entry_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let err = builder::build(&resources(dir.path(), false), Instant::now()).unwrap_err();
    assert!(matches!(err, BuildError::Arch(_)), "{err:?}");
    assert!(err.to_string().contains("no PVH entry point"), "{err}");
}

#[test]
fn an_initrd_that_does_not_fit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut res = resources(dir.path(), true);
    res.memory_bytes = 32 << 20;
    std::fs::write(res.initrd.as_ref().unwrap(), vec![0u8; 40 << 20]).unwrap();
    let err = builder::build(&res, Instant::now()).unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
}

#[test]
fn a_vsock_device_is_wired_to_kvm_and_declared_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut res = resources(dir.path(), true);
    let uds = dir.path().join("vsock.sock");
    res.vsock_uds = Some(uds.clone());
    let vm = builder::build(&res, Instant::now())
        .unwrap_or_else(|e| panic!("building a VM with vsock on /dev/kvm: {e}"));
    let want = b"console=ttyS0 reboot=t virtio_mmio.device=4K@0xd0000000:5\0";
    Guest(vm.memory()).assert_cmdline(want);
    // The host socket is bound and accepts clients before the guest runs.
    std::os::unix::net::UnixStream::connect(&uds).expect("the vsock socket listens");
}

#[test]
fn block_devices_follow_vsock_on_the_command_line_and_a_missing_image_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut res = resources(dir.path(), true);
    res.vsock_uds = Some(dir.path().join("vsock.sock"));
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    res.block = vec![
        hull_vmm::config::BlockConfig {
            path: img.clone(),
            read_only: false,
        },
        hull_vmm::config::BlockConfig {
            path: img,
            read_only: true,
        },
    ];
    let vm = builder::build(&res, Instant::now())
        .unwrap_or_else(|e| panic!("building a VM with disks on /dev/kvm: {e}"));
    let want = b"console=ttyS0 reboot=t virtio_mmio.device=4K@0xd0000000:5 \
        virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=4K@0xd0002000:7\0";
    Guest(vm.memory()).assert_cmdline(want);
    // Each disk has its counters in the control socket's metrics, in order.
    let m = vm.device_metrics();
    assert_eq!(m.block.len(), 2);
    assert_eq!((m.block[0].reads, m.block[1].failed), (0, 0));
    assert!(m.vsock.is_some() && m.net.is_none());
    drop(vm);
    res.vsock_uds = None;
    res.block[1].path = dir.path().join("gone.img");
    let err = builder::build(&res, Instant::now()).unwrap_err();
    assert!(matches!(err, BuildError::Block(_)), "{err:?}");
    assert!(err.to_string().contains("gone.img"), "{err}");
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run with --ignored as root"]
fn an_inherited_tap_fd_is_adopted_and_the_nic_comes_after_the_disks() {
    use hull_vmm::config::{BlockConfig, NetConfig, TapSource};
    use hull_vmm::devices::virtio::net::Tap;
    use std::os::unix::io::IntoRawFd;
    let dir = tempfile::tempdir().unwrap();
    let mut res = resources(dir.path(), true);
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    res.block = vec![BlockConfig {
        path: img,
        read_only: true,
    }];
    let tap = Tap::open("hullkvm%d").expect("TUNSETIFF (root and /dev/net/tun?)");
    let name = tap.name().to_string();
    let fd = tap.into_file().into_raw_fd();
    res.net = Some(NetConfig {
        tap: TapSource::Fd(fd),
        mac: [6, 0, 0, 0, 0, 1],
    });
    let vm = builder::build(&res, Instant::now())
        .unwrap_or_else(|e| panic!("building a VM with a tap fd on /dev/kvm: {e}"));
    let want = b"console=ttyS0 reboot=t virtio_mmio.device=4K@0xd0000000:5 \
        virtio_mmio.device=4K@0xd0001000:6\0";
    Guest(vm.memory()).assert_cmdline(want);
    assert!(
        Path::new("/sys/class/net").join(&name).exists(),
        "{name} exists while hull-vmm holds it"
    );
}

/// Starts `virtiofsd` (from PATH) on `share`, listening on `socket`.
/// Whether a listening unix socket (Flags `__SO_ACCEPTCON`) is bound at `path`.
fn listening(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    table.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() == 8 && f[3] == "00010000" && Path::new(f[7]) == path
    })
}

fn start_virtiofsd(share: &Path, socket: &Path) -> std::process::Child {
    let mut child = std::process::Command::new("virtiofsd")
        .args(["--socket-path", socket.to_str().unwrap()])
        .args(["--shared-dir", share.to_str().unwrap()])
        .args(["--sandbox", "none", "--cache", "auto"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("this test needs virtiofsd in PATH (cargo install virtiofsd)");
    let start = Instant::now();
    // Its file exists from bind(2); connections are refused until listen(2).
    while !listening(socket) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("virtiofsd exited with {status}");
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "virtiofsd is not listening"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child
}

#[test]
fn a_virtiofs_share_negotiates_with_a_real_virtiofsd_and_is_declared_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let socket = dir.path().join("fs.sock");
    let mut virtiofsd = start_virtiofsd(&share, &socket);
    let mut res = resources(dir.path(), true);
    res.fs = vec![FsShare {
        tag: "hull-share".into(),
        socket: socket.clone(),
    }];
    let vm = builder::build(&res, Instant::now())
        .unwrap_or_else(|e| panic!("building a VM with virtio-fs on /dev/kvm: {e}"));
    let want = b"console=ttyS0 reboot=t virtio_mmio.device=4K@0xd0000000:5\0";
    Guest(vm.memory()).assert_cmdline(want);
    // virtiofsd serves one frontend: when the VM goes, it exits by itself.
    drop(vm);
    let start = Instant::now();
    while virtiofsd.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(5) {
            let _ = virtiofsd.kill();
            let _ = virtiofsd.wait();
            panic!("virtiofsd did not notice its frontend went away");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_virtiofs_socket_nobody_serves_fails_the_build_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fs.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let mut res = resources(dir.path(), true);
    res.fs = vec![FsShare {
        tag: "data".into(),
        socket,
    }];
    let err = builder::build(&res, Instant::now()).unwrap_err();
    assert!(matches!(err, BuildError::Fs { .. }), "{err:?}");
    assert!(err.to_string().contains("virtio-fs share data"), "{err}");
}
