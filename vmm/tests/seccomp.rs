//! Least privilege, tested for real: hull-vmm's own seccomp filters kill a process that
//! makes a syscall outside them (by SIGSYS), yet the real `hull-vmm` with every filter on
//! runs tiny hand-built guests to their end, through the vCPU, device-spawner and vsock
//! and blk device threads; and `--uid`/`--gid` leaves the running VMM with that identity.
//!
//! The guests are a few instructions of 32-bit code at the PVH entry (this workplace's
//! kvm_pvm runs such ring-0 code, slowly; a Linux kernel it cannot boot). The `--uid` test
//! needs root (to change user) and says so when it is not.

#![cfg(target_arch = "x86_64")]

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hull_vmm::seccomp::{Filters, Mode, ThreadKind};

mod support;

use support::LOAD_ADDR;

const CHILD_ENV: &str = "HULL_SECCOMP_CHILD";

// ---------------------------------------------------------------------------------------
// A forbidden syscall kills the process.

/// The child half of [`a_syscall_outside_the_list_kills_the_process_by_sigsys`]: installs
/// the filter of the thread kind named in `HULL_SECCOMP_CHILD` (`<kind>:<call>`) with the
/// function hull-vmm uses, then makes the call.
#[test]
#[ignore = "the child half of a_syscall_outside_the_list_kills_the_process_by_sigsys, which runs it"]
fn seccomp_child() {
    let spec = std::env::var(CHILD_ENV)
        .expect("run by a_syscall_outside_the_list_kills_the_process_by_sigsys");
    let (kind, call) = spec.split_once(':').expect("[trap-]<kind>:<call>");
    let (mode, kind) = match kind.strip_prefix("trap-") {
        Some(k) => (Mode::Trap, k),
        None => (Mode::Kill, kind),
    };
    let kind = match kind {
        "vmm" => ThreadKind::Vmm,
        "vcpu" => ThreadKind::Vcpu,
        "device" => ThreadKind::Device,
        "spawner" => ThreadKind::Spawner,
        "signals" => ThreadKind::Signals,
        other => panic!("unknown thread kind {other}"),
    };
    let filters = Filters::with_mode(mode).expect("compiling hull-vmm's filters");
    filters.install(kind).expect("installing the filter");
    println!("HULL-SECCOMP-CHILD: installed");
    // SAFETY: each arm is a plain syscall with constant arguments or pointers to live
    // locals and C string literals; its result is only printed.
    let rc: i64 = unsafe {
        match call {
            "socket-unix" => libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0).into(),
            "socket-inet" => libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0).into(),
            "openat" => libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY).into(),
            "execve" => {
                let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null()];
                libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr()).into()
            }
            "ioctl-tcgets" => {
                let mut t: libc::termios = std::mem::zeroed();
                libc::ioctl(0, libc::TCGETS, &mut t).into()
            }
            "getpid" => libc::getpid().into(),
            other => panic!("unknown call {other}"),
        }
    };
    println!("HULL-SECCOMP-CHILD: survived rc={rc}");
}

/// Runs [`seccomp_child`] in a new process; returns its status and stdout + stderr.
fn run_child(spec: &str) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "seccomp_child", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_ENV, spec)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status, text)
}

#[test]
fn a_syscall_outside_the_list_kills_the_process_by_sigsys() {
    for spec in [
        "vmm:socket-unix",
        "vmm:openat",
        "vmm:execve",
        "vcpu:ioctl-tcgets",
        "vcpu:socket-unix",
        "device:socket-inet",
        "device:execve",
        "spawner:openat",
        "signals:socket-unix",
        "signals:ioctl-tcgets",
    ] {
        let (status, out) = run_child(spec);
        assert!(
            out.contains("installed"),
            "{spec}: filter not installed: {out}"
        );
        assert!(
            !out.contains("survived"),
            "{spec}: the call went through: {out}"
        );
        assert_eq!(
            status.signal(),
            Some(libc::SIGSYS),
            "{spec}: {status:?} {out}"
        );
    }
    // --seccomp-trap: the same filter, but the handler names the thread kind and syscall.
    let (status, out) = run_child("trap-device:socket-inet");
    assert_eq!(status.code(), Some(159), "{status:?} {out}");
    assert!(
        out.contains("the device filter does not allow syscall 41\n"),
        "{out}"
    );
    assert!(!out.contains("survived"), "{out}");
    // The filters are allowlists, not walls: listed calls, with listed arguments, pass.
    for spec in ["vmm:getpid", "device:socket-unix", "signals:getpid"] {
        let (status, out) = run_child(spec);
        assert!(out.contains("survived"), "{spec}: {status:?} {out}");
        assert!(status.success(), "{spec}: {status:?} {out}");
    }
}

// ---------------------------------------------------------------------------------------
// The real hull-vmm, filters on, runs tiny guests.

/// 32-bit code for the PVH entry, assembled by hand.
#[derive(Default)]
struct Code(Vec<u8>);

impl Code {
    /// `mov esi, imm32`
    fn esi(&mut self, v: u32) -> &mut Self {
        self.0.push(0xbe);
        self.0.extend(v.to_le_bytes());
        self
    }
    /// `mov dword [esi + off], imm32` (a 32-bit MMIO write relative to esi)
    fn mmio(&mut self, off: u32, v: u32) -> &mut Self {
        self.0.extend([0xc7, 0x86]);
        self.0.extend(off.to_le_bytes());
        self.0.extend(v.to_le_bytes());
        self
    }
    /// Spins until the u16 at `addr` is `v`.
    fn wait_u16_is(&mut self, addr: u32, v: u8) -> &mut Self {
        self.0.extend([0xf3, 0x90, 0x0f, 0xb7, 0x05]); // pause; movzx eax, word [addr]
        self.0.extend(addr.to_le_bytes());
        self.0.extend([0x83, 0xf8, v, 0x75, 0xf2]); // cmp eax, v; jne back to pause
        self
    }
    /// Writes `s` to the serial port (COM1).
    fn serial(&mut self, s: &[u8]) -> &mut Self {
        self.0.extend([0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
        for &b in s {
            self.0.extend([0xb0, b, 0xee]); // mov al, b; out dx, al
        }
        self
    }
    /// Pulses the reset line through the i8042 (the VM ends with status 0).
    fn reset(&mut self) -> &mut Self {
        self.0.extend([0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfe]);
        self
    }
    /// Halts for good (interrupts are off at the PVH entry): the VM stays up, idle.
    fn halt(&mut self) -> &mut Self {
        self.0.extend([0xfa, 0xf4, 0xeb, 0xfd]); // cli; hlt; jmp hlt
        self
    }
}

/// An ELF64 whose one PT_LOAD (read, write, execute) puts `image` at [`LOAD_ADDR`], with a
/// PVH entry at its start.
fn pvh_elf(image: &[u8]) -> Vec<u8> {
    support::elf(image, 0x1000, 7, Some(LOAD_ADDR as u32))
}

// virtio-mmio registers (virtio 1.x, 4.2.2) and where the vsock guest keeps its queues.
const VIRTIO_BASE: u32 = 0xd000_0000;
const QUEUE_SEL: u32 = 0x30;
const QUEUE_NUM: u32 = 0x38;
const QUEUE_READY: u32 = 0x44;
const QUEUE_NOTIFY: u32 = 0x50;
const STATUS: u32 = 0x70;
const QUEUE_DESC: u32 = 0x80;
const QUEUE_AVAIL: u32 = 0x90;
const QUEUE_USED: u32 = 0xa0;
const QUEUE_SIZE: u32 = 16;
/// Offset in the image of queue `q` (descriptors; avail ring at +0x100, used at +0x180).
const fn queue_at(q: u32) -> u32 {
    0x800 + q * 0x300
}
const PACKET_AT: u32 = 0x1100;
/// The RW packet: header and payload in one descriptor.
const RW_AT: u32 = 0x1180;
const PAYLOAD: &[u8] = b"hi from the guest";
const TXQ: u32 = 1;

/// A guest that drives hull-vmm's vsock device like a driver would: it sets the device up
/// (which starts the device thread through the spawner), puts a REQUEST to host port 1025
/// and an RW with [`PAYLOAD`] on the TX queue and notifies it, waits until the device
/// returned both buffers (the device thread connected to `<uds>_1025` and wrote the payload
/// meanwhile), prints "OK" and resets.
fn vsock_guest() -> Vec<u8> {
    let mut c = Code::default();
    c.esi(VIRTIO_BASE)
        .mmio(STATUS, 1)
        .mmio(STATUS, 3)
        .mmio(STATUS, 0xb);
    for q in 0..3 {
        let at = LOAD_ADDR as u32 + queue_at(q);
        c.mmio(QUEUE_SEL, q)
            .mmio(QUEUE_NUM, QUEUE_SIZE)
            .mmio(QUEUE_DESC, at)
            .mmio(QUEUE_DESC + 4, 0)
            .mmio(QUEUE_AVAIL, at + 0x100)
            .mmio(QUEUE_AVAIL + 4, 0)
            .mmio(QUEUE_USED, at + 0x180)
            .mmio(QUEUE_USED + 4, 0)
            .mmio(QUEUE_READY, 1);
    }
    c.mmio(STATUS, 0xf)
        .mmio(QUEUE_NOTIFY, TXQ)
        .wait_u16_is(LOAD_ADDR as u32 + queue_at(TXQ) + 0x180 + 2, 2)
        .serial(b"OK\n")
        .reset();
    let mut image = c.0;
    assert!(image.len() < 0x800, "code overlaps the queues");
    image.resize(0x1200, 0);
    // TX descriptors 0 (REQUEST) and 1 (RW), device-readable; avail ring: idx 2, ring 0, 1.
    let tx = queue_at(TXQ) as usize;
    for (i, (at, len)) in [(PACKET_AT, 44), (RW_AT, 44 + PAYLOAD.len() as u32)]
        .into_iter()
        .enumerate()
    {
        let d = tx + 16 * i;
        image[d..d + 8].copy_from_slice(&(LOAD_ADDR + u64::from(at)).to_le_bytes());
        image[d + 8..d + 12].copy_from_slice(&len.to_le_bytes());
        image[tx + 0x104 + 2 * i..tx + 0x106 + 2 * i].copy_from_slice(&(i as u16).to_le_bytes());
    }
    image[tx + 0x102..tx + 0x104].copy_from_slice(&2u16.to_le_bytes());
    // struct virtio_vsock_hdr: src_cid 3, dst_cid 2 (host), src_port 5000, dst_port 1025,
    // len, type STREAM, op (1 REQUEST, 5 RW), flags 0, buf_alloc 64 KiB, fwd_cnt 0.
    let header = |len: u32, op: u16| {
        let mut h = Vec::new();
        h.extend(3u64.to_le_bytes());
        h.extend(2u64.to_le_bytes());
        h.extend(5000u32.to_le_bytes());
        h.extend(1025u32.to_le_bytes());
        h.extend(len.to_le_bytes());
        h.extend(1u16.to_le_bytes());
        h.extend(op.to_le_bytes());
        h.extend(0u32.to_le_bytes());
        h.extend(65536u32.to_le_bytes());
        h.extend(0u32.to_le_bytes());
        h
    };
    let mut rw = header(PAYLOAD.len() as u32, 5);
    rw.extend_from_slice(PAYLOAD);
    for (at, bytes) in [(PACKET_AT, header(0, 1)), (RW_AT, rw)] {
        let at = at as usize;
        image[at..at + bytes.len()].copy_from_slice(&bytes);
    }
    image
}

fn hull_vmm() -> Command {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm (it runs hull-vmm on it; nothing is mocked)"
    );
    let mut c = Command::new(env!("CARGO_BIN_EXE_hull-vmm"));
    c.env("RUST_LOG", "info").stdin(Stdio::null());
    c
}

fn write_kernel(dir: &Path, image: &[u8]) -> PathBuf {
    let k = dir.join("vmlinux");
    std::fs::write(&k, pvh_elf(image)).unwrap();
    k
}

#[test]
fn hull_vmm_with_seccomp_runs_a_guest_that_uses_serial_i8042_and_two_vcpus() {
    let dir = tempfile::tempdir().unwrap();
    let mut code = Code::default();
    code.serial(b"OK\n").reset();
    let kernel = write_kernel(dir.path(), &code.0);
    let console = dir.path().join("console");
    let out = hull_vmm()
        .arg("--kernel")
        .arg(&kernel)
        .args(["--vcpus", "2", "--memory-mib", "32", "--console"])
        .arg(&console)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.contains("seccomp filters installed"), "{stderr}");
    assert!(stderr.contains("guest reset (i8042 reset)"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&console).unwrap(), "OK\n");
}

#[test]
fn hull_vmm_with_seccomp_runs_a_vsock_device_thread_that_connects_to_the_host() {
    run_vsock_guest(false);
}

#[test]
fn the_vsock_device_connects_inside_the_chroot_as_nobody() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (hull-vmm chroots and changes its user)"
    );
    run_vsock_guest(true);
}

/// Runs [`vsock_guest`]; with `confined`, under `--chroot <its dir> --uid/--gid 65534`
/// (the listener is made connectable by that user, as a pod's would be).
fn run_vsock_guest(confined: bool) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_kernel(dir.path(), &vsock_guest());
    let uds = dir.path().join("v.sock");
    let port = dir.path().join("v.sock_1025");
    let listener = UnixListener::bind(&port).unwrap();
    listener.set_nonblocking(true).unwrap();
    let console = dir.path().join("console");
    let mut cmd = hull_vmm();
    cmd.arg("--kernel")
        .arg(&kernel)
        .args(["--memory-mib", "32", "--console"])
        .arg(&console)
        .arg("--vsock-uds")
        .arg(&uds)
        .stderr(Stdio::piped());
    if confined {
        let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        mode(dir.path(), 0o755).unwrap();
        mode(&port, 0o777).unwrap();
        cmd.args(["--uid", "65534", "--gid", "65534", "--chroot"])
            .arg(dir.path());
    }
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    let mut connected = None;
    let status = loop {
        if connected.is_none() {
            connected = listener.accept().ok().map(|(s, _)| s);
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the vsock guest did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let connected = connected.or_else(|| listener.accept().ok().map(|(s, _)| s));
    let stderr = support::stderr_of(&mut child);
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("seccomp filters installed"), "{stderr}");
    // The device thread (under the device filter) made the socket, connected, and wrote
    // what the guest sent.
    let mut stream =
        connected.unwrap_or_else(|| panic!("nothing connected to <uds>_1025: {stderr}"));
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = vec![0u8; PAYLOAD.len()];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(got, PAYLOAD);
    assert_eq!(std::fs::read_to_string(&console).unwrap(), "OK\n");
}

/// Where the blk guest keeps its three request headers, status bytes and data sector.
const BLK_HEADERS_AT: u32 = 0x1100;
const BLK_STATUS_AT: u32 = 0x1140;
const BLK_DATA_AT: u32 = 0x1200;

/// A guest that drives hull-vmm's virtio-blk device (the only device, so at the first MMIO
/// slot): one notify hands the device thread three chains, executed in order: IN sector 0
/// into a buffer, OUT of that same buffer to sector 1, FLUSH. Once the device returned all
/// three, the guest prints "OK" and resets. Sector 1 of the image then holds sector 0.
fn blk_guest() -> Vec<u8> {
    let q = LOAD_ADDR as u32 + queue_at(0);
    let mut c = Code::default();
    c.esi(VIRTIO_BASE)
        .mmio(STATUS, 1)
        .mmio(STATUS, 3)
        .mmio(STATUS, 0xb)
        .mmio(QUEUE_SEL, 0)
        .mmio(QUEUE_NUM, QUEUE_SIZE)
        .mmio(QUEUE_DESC, q)
        .mmio(QUEUE_DESC + 4, 0)
        .mmio(QUEUE_AVAIL, q + 0x100)
        .mmio(QUEUE_AVAIL + 4, 0)
        .mmio(QUEUE_USED, q + 0x180)
        .mmio(QUEUE_USED + 4, 0)
        .mmio(QUEUE_READY, 1)
        .mmio(STATUS, 0xf)
        .mmio(QUEUE_NOTIFY, 0)
        .wait_u16_is(q + 0x180 + 2, 3)
        .serial(b"OK\n")
        .reset();
    let mut image = c.0;
    assert!(image.len() < 0x800, "code overlaps the queue");
    image.resize(0x1400, 0);
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    let at = |off: u32| LOAD_ADDR + u64::from(off);
    let (hdr, status, data) = (BLK_HEADERS_AT, BLK_STATUS_AT, BLK_DATA_AT);
    // (address, length, flags) of descriptors 0..8; `next` is always the following one.
    let descriptors = [
        (at(hdr), 16, NEXT),
        (at(data), 512, WRITE | NEXT),
        (at(status), 1, WRITE),
        (at(hdr + 16), 16, NEXT),
        (at(data), 512, NEXT),
        (at(status + 1), 1, WRITE),
        (at(hdr + 32), 16, NEXT),
        (at(status + 2), 1, WRITE),
    ];
    let d0 = queue_at(0) as usize;
    for (i, (addr, len, flags)) in descriptors.into_iter().enumerate() {
        let d = d0 + 16 * i;
        image[d..d + 8].copy_from_slice(&addr.to_le_bytes());
        image[d + 8..d + 12].copy_from_slice(&(len as u32).to_le_bytes());
        image[d + 12..d + 14].copy_from_slice(&flags.to_le_bytes());
        image[d + 14..d + 16].copy_from_slice(&(i as u16 + 1).to_le_bytes());
    }
    // Avail ring: idx 3, heads 0, 3, 6.
    image[d0 + 0x102..d0 + 0x104].copy_from_slice(&3u16.to_le_bytes());
    for (i, head) in [0u16, 3, 6].into_iter().enumerate() {
        image[d0 + 0x104 + 2 * i..d0 + 0x106 + 2 * i].copy_from_slice(&head.to_le_bytes());
    }
    // struct virtio_blk_outhdr: le32 type (IN 0, OUT 1, FLUSH 4), le32 reserved, le64 sector.
    for (i, (type_, sector)) in [(0u32, 0u64), (1, 1), (4, 0)].into_iter().enumerate() {
        let h = hdr as usize + 16 * i;
        image[h..h + 4].copy_from_slice(&type_.to_le_bytes());
        image[h + 8..h + 16].copy_from_slice(&sector.to_le_bytes());
    }
    image
}

#[test]
fn hull_vmm_with_seccomp_runs_a_blk_device_thread_that_reads_writes_and_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_kernel(dir.path(), &blk_guest());
    let disk = dir.path().join("disk.img");
    let sector0: Vec<u8> = (0..512u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut image = sector0.clone();
    image.resize(1024, 0);
    std::fs::write(&disk, &image).unwrap();
    let console = dir.path().join("console");
    let mut child = hull_vmm()
        .arg("--kernel")
        .arg(&kernel)
        .args(["--memory-mib", "32", "--console"])
        .arg(&console)
        .arg("--block")
        .arg(&disk)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = support::wait_exit(
        &mut child,
        Duration::from_secs(60),
        "the blk guest did not finish in 60 s",
    );
    let stderr = support::stderr_of(&mut child);
    // A syscall off the device list would have killed hull-vmm by SIGSYS.
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("seccomp filters installed"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&console).unwrap(), "OK\n");
    // The device thread read sector 0 into guest memory and wrote it back to sector 1.
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(&after[..512], &sector0[..]);
    assert_eq!(&after[512..], &sector0[..], "sector 1 after IN + OUT");
}

// ---------------------------------------------------------------------------------------
// --uid / --gid.

fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn hull_vmm_runs_the_guest_as_nobody_in_a_chroot_with_every_thread_filtered() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (hull-vmm changes its user to 65534)"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut code = Code::default();
    code.serial(b"UP\n").halt();
    let kernel = write_kernel(dir.path(), &code.0);
    let console = dir.path().join("console");
    // The control socket lies inside the chroot, in a directory user nobody may write to (so
    // hull-vmm can remove it at exit: after the chroot, as nobody, under its filter).
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let api_sock = run.join("api.sock");
    let mut child = hull_vmm()
        .arg("--kernel")
        .arg(&kernel)
        .args([
            "--vcpus",
            "2",
            "--memory-mib",
            "32",
            "--uid",
            "65534",
            "--gid",
            "65534",
        ])
        .arg("--chroot")
        .arg(dir.path())
        .arg("--console")
        .arg(&console)
        .arg("--api-sock")
        .arg(&api_sock)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::fs::read_to_string(&console).unwrap_or_default() != "UP\n" {
        if let Some(s) = child.try_wait().unwrap() {
            panic!(
                "hull-vmm ended early ({s:?}): {}",
                support::stderr_of(&mut child)
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the guest never ran"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let proc_dir = PathBuf::from(format!("/proc/{}", child.id()));
    let status = std::fs::read_to_string(proc_dir.join("status")).unwrap();
    let root = std::fs::read_link(proc_dir.join("root")).unwrap();
    let mut threads = Vec::new();
    for t in std::fs::read_dir(proc_dir.join("task")).unwrap() {
        let t = t.unwrap().path();
        let s = std::fs::read_to_string(t.join("status")).unwrap();
        let name = status_field(&s, "Name");
        // KVM's own kernel workers (kvm-nx-lpage-recovery) show up among the VM's tasks.
        if !name.starts_with("kvm-") {
            threads.push((name, status_field(&s, "Seccomp")));
        }
    }
    assert!(api_sock.exists(), "the control socket was not created");
    // SIGTERM ends it in order (the watcher thread under its own filter), status 0, and the
    // socket is removed from inside the chroot.
    // SAFETY: kill(2) to our own child's pid (not yet reaped), a valid signal.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let exit = support::wait_exit(
        &mut child,
        Duration::from_secs(10),
        "hull-vmm ignored SIGTERM",
    );
    let stderr = support::stderr_of(&mut child);
    assert!(exit.success(), "{exit:?}: {stderr}");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    assert!(!api_sock.exists(), "the control socket was left: {stderr}");
    eprintln!("hull-vmm as nobody: threads {threads:?}");
    assert_eq!(root, dir.path().canonicalize().unwrap(), "--chroot");
    assert_eq!(status_field(&status, "Uid"), "65534 65534 65534 65534");
    assert_eq!(status_field(&status, "Gid"), "65534 65534 65534 65534");
    assert_eq!(
        status
            .lines()
            .find(|l| l.starts_with("Groups:"))
            .map(str::trim),
        Some("Groups:")
    );
    assert_eq!(status_field(&status, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    // Every thread (VMM, two vCPUs, the device spawner, the SIGTERM watcher) is in seccomp
    // filter mode (2).
    assert_eq!(threads.len(), 5, "{threads:?}");
    assert!(threads.iter().all(|(_, mode)| mode == "2"), "{threads:?}");
    let names: Vec<&str> = threads.iter().map(|t| t.0.as_str()).collect();
    for want in ["vcpu0", "vcpu1", "dev-spawner", "signals"] {
        assert!(names.contains(&want), "{names:?}");
    }
}
