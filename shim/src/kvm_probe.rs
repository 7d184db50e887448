//! Probe whether this host's KVM runs guest *kernel* (ring-0) code natively.
//!
//! `/dev/kvm` existing is not enough: a nested `kvm_pvm` hypervisor exposes `/dev/kvm`, runs
//! guest user mode natively, but emulates guest ring 0 in software (~1 µs per instruction, and
//! some instructions not at all), so a Linux guest cannot boot on it. [`probe`] therefore creates
//! a throw-away VM with one vCPU in 64-bit long mode at ring 0 (the mode a Linux kernel runs in),
//! times a short `dec`/`jnz` loop ending in `hlt`, and [`classify`]s the cost per instruction.
//!
//! What it does not do: it does not boot a kernel, exercise devices, interrupts, MSRs or SMP, nor
//! check CPU features a guest might need; it only measures ring-0 execution speed. It takes well
//! under a second on a working host and gives up after 3 s. The real probe exists on
//! x86_64 only; elsewhere the verdict is [`KvmVerdict::Unavailable`].

use std::path::Path;

/// Kernel modules reported in [`KvmProbe::modules`] when present under `/sys/module`.
const KVM_MODULES: [&str; 4] = ["kvm_intel", "kvm_amd", "kvm_pvm", "kvm"];
/// Native if one guest ring-0 instruction costs less than this many nanoseconds. Real VT-x/AMD-V
/// runs the loop at ~0.3–1 ns per instruction and nested, hardware-assisted KVM at 2–3 ns, while
/// software emulation of ring 0 (kvm_pvm) costs ~1000 ns. 20 ns leaves a wide margin above the
/// slowest usable host (noise, a busy host, a preempted vCPU) and is still 50x below emulation.
const NATIVE_THRESHOLD_NS: f64 = 20.0;

/// Whether guest kernel code runs natively on this host's KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvmVerdict {
    /// Guest ring-0 code runs at hardware speed: a Linux guest can boot.
    Native,
    /// KVM exists but ring 0 is emulated, too slow or broken: do not boot a Linux guest on it.
    Emulated,
    /// No usable KVM at all (no device, no permission, no VM, unsupported architecture).
    Unavailable,
}

/// Result of [`probe`]: the verdict and the evidence behind it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KvmProbe {
    /// What the probe concluded.
    pub verdict: KvmVerdict,
    /// Human-readable reasons, each a full sentence naming what was found (e.g. "/dev/kvm: No
    /// such file or directory", "a ring-0 loop of 200000 instructions took 212.3 ms").
    pub reasons: Vec<String>,
    /// Measured cost of one guest ring-0 instruction, when the loop ran.
    pub ns_per_instruction: Option<f64>,
    /// KVM modules found loaded under /sys/module (kvm_intel, kvm_amd, kvm_pvm, ...).
    pub modules: Vec<String>,
}

/// Probe `/dev/kvm`. Never panics; returns within about 3 s.
pub fn probe() -> KvmProbe {
    probe_device(Path::new("/dev/kvm"))
}

/// Where [`store`] records a verdict for the shims of this host boot (`/run` is a tmpfs).
pub const CACHE_PATH: &str = "/run/hull/.kvm-probe.json";

/// What a recorded verdict is valid for: this host boot, this `/dev/kvm` node (a reloaded
/// KVM module makes a new one) and this hull version.
fn cache_key() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let kvm = std::fs::metadata("/dev/kvm").ok()?;
    Some(format!(
        "{} {}:{}:{} {}",
        boot.trim(),
        kvm.rdev(),
        kvm.ino(),
        kvm.ctime(),
        env!("CARGO_PKG_VERSION")
    ))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Cached {
    key: String,
    probe: KvmProbe,
}

/// Records `probe` at `path` for [`probe_cached`], unless its verdict is `Unavailable`
/// (which may be passing, and costs nothing to find again). Best effort: a failure to write
/// only means the next shim probes again.
pub fn store(path: &Path, probe: &KvmProbe) {
    let Some(key) = cache_key() else { return };
    if probe.verdict == KvmVerdict::Unavailable {
        return;
    }
    let Ok(json) = serde_json::to_vec(&Cached {
        key,
        probe: probe.clone(),
    }) else {
        return;
    };
    if let Err(e) = crate::util::write_atomic(path, &json) {
        log::debug!("recording the KVM verdict at {}: {e}", path.display());
    }
}

/// The verdict recorded at `path` for this host boot, else a fresh [`probe`] (recorded).
/// A probe costs ~0.1 s of ring-0 guest code; a pod start should not pay it every time.
pub fn probe_cached(path: &Path) -> KvmProbe {
    let key = cache_key();
    let cached = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Cached>(&b).ok())
        .filter(|c| key.as_deref() == Some(c.key.as_str()));
    if let Some(c) = cached {
        return c.probe;
    }
    let p = probe();
    store(path, &p);
    p
}

/// Probe the KVM device node at `path`. Never panics; returns within about 3 s.
pub fn probe_device(path: &Path) -> KvmProbe {
    let mut probe = KvmProbe {
        verdict: KvmVerdict::Unavailable,
        reasons: Vec::new(),
        ns_per_instruction: None,
        modules: (KVM_MODULES.iter())
            .filter(|m| Path::new("/sys/module").join(m).exists())
            .map(|m| m.to_string())
            .collect(),
    };
    if probe.modules.iter().any(|m| m == "kvm_pvm") {
        let pvm = "kernel module kvm_pvm is loaded (nested PVM hypervisor, emulates guest ring 0).";
        probe.reasons.push(pvm.into());
    }
    if let Err(e) = std::fs::metadata(path) {
        probe.reasons.push(format!("{}: {e}.", path.display()));
        return probe;
    }
    #[cfg(target_arch = "x86_64")]
    x86::run_with_watchdog(path, &mut probe);
    #[cfg(not(target_arch = "x86_64"))]
    probe.reasons.push(format!(
        "the KVM ring-0 probe is not implemented for the {} architecture.",
        std::env::consts::ARCH
    ));
    probe
}

/// Pure classification used by probe(): threshold on ns per instruction.
///
/// Native if strictly below 20 ns per instruction; exactly 20 ns, anything slower, and NaN are
/// [`KvmVerdict::Emulated`].
pub fn classify(ns_per_instruction: f64) -> KvmVerdict {
    if ns_per_instruction < NATIVE_THRESHOLD_NS {
        KvmVerdict::Native
    } else {
        KvmVerdict::Emulated
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{classify, KvmProbe, KvmVerdict, NATIVE_THRESHOLD_NS};
    use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
    use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::{Duration, Instant};

    /// A probe that has not finished after this long is treated as emulated.
    const WATCHDOG: Duration = Duration::from_secs(3);
    const MEM_SIZE: usize = 4 << 20; // 4 MiB of guest RAM at GPA 0, identity-mapped.
    const GDT: usize = 0x500;
    const PML4: usize = 0x1000;
    const PDPT: usize = 0x2000;
    const PD: usize = 0x3000;
    const CODE: usize = 0x4000;
    /// Measured loop iterations: 2 instructions each, ~0.2 s at 1 µs/instruction.
    const ITERATIONS: u32 = 100_000;
    const WARMUP_ITERATIONS: u32 = 1_000;

    /// Guest code at [`CODE`]: a counted loop of `n` iterations, then `hlt`.
    fn guest_code(n: u32) -> [u8; 10] {
        let n = n.to_le_bytes();
        [
            0xb9, n[0], n[1], n[2], n[3], // mov ecx, n
            0xff, 0xc9, // loop: dec ecx
            0x75, 0xfc, // jnz loop (rel8 -4: back to the dec)
            0xf4, // hlt
        ]
    }

    /// What the probe thread reports: a measurement, or a reason naming the failing step.
    type Outcome = Result<(f64, Duration), String>;

    /// `map_err` helper: "<step> failed: <error>."
    fn failed<E: std::fmt::Display>(step: impl std::fmt::Display) -> impl FnOnce(E) -> String {
        move |e| format!("{step} failed: {e}.")
    }

    /// Run [`measure`] in its own thread and fill in `probe` from its outcome.
    pub(super) fn run_with_watchdog(path: &Path, probe: &mut KvmProbe) {
        // Set once a VM exists: later failures mean "KVM is there but does not run ring 0".
        let vm_created = Arc::new(AtomicBool::new(false));
        let dev = path.display();
        match supervise(path, &vm_created) {
            Ok((ns, elapsed)) => {
                probe.ns_per_instruction = Some(ns);
                probe.verdict = classify(ns);
                probe.reasons.push(format!(
                    "a ring-0 loop of {} instructions took {:.1} ms ({ns:.1} ns/instruction).",
                    2 * u64::from(ITERATIONS),
                    elapsed.as_secs_f64() * 1e3
                ));
                let how = match probe.verdict {
                    KvmVerdict::Native => "natively (under",
                    _ => "in emulation (at least",
                };
                probe.reasons.push(format!(
                    "{dev} runs guest kernel code {how} {NATIVE_THRESHOLD_NS} ns/instruction)."
                ));
            }
            Err(reason) => {
                probe.verdict = if vm_created.load(Ordering::SeqCst) {
                    KvmVerdict::Emulated
                } else {
                    KvmVerdict::Unavailable
                };
                probe.reasons.push(reason);
            }
        }
    }

    /// Start the probe thread and wait for it at most [`WATCHDOG`].
    fn supervise(path: &Path, vm_created: &Arc<AtomicBool>) -> Outcome {
        let (tx, rx) = mpsc::channel::<Outcome>();
        let (dev, flag) = (path.to_path_buf(), Arc::clone(vm_created));
        let handle = std::thread::Builder::new()
            .name("kvm-probe".into())
            // The receiver may be gone after a timeout; then nobody is left to tell.
            .spawn(move || drop(tx.send(measure(&dev, &flag))))
            .map_err(failed("starting the KVM probe thread"))?;
        match rx.recv_timeout(WATCHDOG) {
            Ok(outcome) => outcome,
            // A vCPU stuck inside KVM_RUN cannot be recalled without signalling its thread, so
            // the thread is abandoned (detached): it keeps its VM and guest memory alive and
            // frees them itself if KVM_RUN ever returns. This costs at most one thread.
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "the ring-0 loop on {} did not finish within {} s (probe thread abandoned).",
                path.display(),
                WATCHDOG.as_secs()
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let p = handle.join().err();
                let msg = p.as_deref().and_then(|p| p.downcast_ref::<&str>().copied());
                let msg = msg.or_else(|| p.as_deref()?.downcast_ref::<String>().map(|s| &**s));
                Err(format!(
                    "the KVM probe thread panicked: {}.",
                    msg.unwrap_or("?")
                ))
            }
        }
    }

    /// Anonymous private mapping used as guest RAM; unmapped on drop.
    struct GuestMem {
        ptr: *mut libc::c_void,
        len: usize,
    }

    impl GuestMem {
        fn new(len: usize) -> std::io::Result<Self> {
            // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing; it aliases
            // no existing Rust memory, and the result is checked before use.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            Ok(GuestMem { ptr, len })
        }

        /// Copy `bytes` to guest physical address `gpa` (only while no vCPU runs).
        fn write(&mut self, gpa: usize, bytes: &[u8]) {
            // SAFETY: `ptr` is a live, writable mapping of `len` bytes owned by `self`; `&mut self`
            // and the caller not running a vCPU mean nothing else accesses it meanwhile.
            let ram = unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<u8>(), self.len) };
            ram[gpa..gpa + bytes.len()].copy_from_slice(bytes);
        }
    }

    impl Drop for GuestMem {
        fn drop(&mut self) {
            // SAFETY: `ptr`/`len` describe a mapping created in `new` and unmapped only here.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }

    /// Build the VM, run a warm-up and the measured loop; return (ns/instruction, elapsed).
    fn measure(path: &Path, vm_created: &AtomicBool) -> Outcome {
        let dev = path.display();
        let cpath = CString::new(path.as_os_str().as_bytes())
            .map_err(failed(format!("{dev}: converting the path")))?;
        // Declared before `vm` so it is dropped (unmapped) after the VM that references it.
        let mut mem = GuestMem::new(MEM_SIZE).map_err(failed("mmap of guest memory"))?;
        let kvm = Kvm::new_with_path(cpath).map_err(|e| format!("{dev}: could not open: {e}."))?;
        let vm = kvm
            .create_vm()
            .map_err(failed(format!("{dev}: KVM_CREATE_VM")))?;
        vm_created.store(true, Ordering::SeqCst);
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: mem.ptr as u64,
        };
        // SAFETY: the region is a live mapping of MEM_SIZE bytes owned by `mem`, which outlives
        // `vm` (declared earlier, so dropped later), so the guest never sees unmapped host memory.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(failed("KVM_SET_USER_MEMORY_REGION"))?;

        // GDT: null, 64-bit ring-0 code (selector 0x8), ring-0 data (selector 0x10).
        let gdt: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
        mem.write(GDT, &gdt.map(u64::to_le_bytes).concat());
        // Identity map of the first 4 MiB with two 2 MiB pages (present | writable | huge).
        mem.write(PML4, &(PDPT as u64 | 0x3).to_le_bytes());
        mem.write(PDPT, &(PD as u64 | 0x3).to_le_bytes());
        mem.write(PD, &0x83u64.to_le_bytes());
        mem.write(PD + 8, &(0x20_0000u64 | 0x83).to_le_bytes());

        let mut vcpu = vm.create_vcpu(0).map_err(failed("KVM_CREATE_VCPU"))?;
        let mut sregs = vcpu.get_sregs().map_err(failed("KVM_GET_SREGS"))?;
        let seg = |selector: u16, type_: u8, l: u8, db: u8| kvm_segment {
            limit: 0xffff_ffff,
            selector,
            type_,
            present: 1,
            dpl: 0,
            db,
            s: 1,
            l,
            g: 1,
            ..Default::default()
        };
        sregs.cs = seg(0x8, 0xb, 1, 0); // execute/read, accessed; L=1 (64-bit), DPL 0
        let data = seg(0x10, 0x3, 0, 1); // read/write, accessed
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        sregs.gdt.base = GDT as u64;
        sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
        sregs.cr3 = PML4 as u64;
        sregs.cr4 = 1 << 5; // PAE
        sregs.cr0 = 1 | (1 << 4) | (1 << 31); // PE | ET | PG
        sregs.efer = (1 << 8) | (1 << 10); // LME | LMA
        vcpu.set_sregs(&sregs)
            .map_err(failed("KVM_SET_SREGS (64-bit long mode, ring 0)"))?;

        run_loop(&mut vcpu, &mut mem, WARMUP_ITERATIONS)
            .map_err(|e| format!("warm-up run: {e}"))?;
        let elapsed = run_loop(&mut vcpu, &mut mem, ITERATIONS)?;
        let ns = elapsed.as_nanos() as f64 / (2.0 * f64::from(ITERATIONS));
        Ok((ns, elapsed))
    }

    /// Load the loop for `n` iterations, run it to `hlt`, and return the time spent in KVM_RUN.
    fn run_loop(vcpu: &mut VcpuFd, mem: &mut GuestMem, n: u32) -> Result<Duration, String> {
        mem.write(CODE, &guest_code(n));
        let regs = kvm_bindings::kvm_regs {
            rip: CODE as u64,
            rflags: 0x2, // reserved bit 1; interrupts off
            ..Default::default()
        };
        vcpu.set_regs(&regs).map_err(failed("KVM_SET_REGS"))?;
        let mut elapsed = Duration::ZERO;
        loop {
            let start = Instant::now();
            let exit = vcpu.run();
            elapsed += start.elapsed();
            let unexpected = match exit {
                Ok(VcpuExit::Hlt) => {
                    // Trust the timing only if the loop really ran to completion.
                    let r = vcpu.get_regs().map_err(failed("KVM_GET_REGS"))?;
                    if r.rcx as u32 == 0 && r.rip == (CODE + guest_code(n).len()) as u64 {
                        return Ok(elapsed);
                    }
                    format!("hlt before the loop finished (ecx {:#x})", r.rcx as u32)
                }
                // A host signal interrupted KVM_RUN: resume where the guest stopped.
                Ok(VcpuExit::Intr) => continue,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return Err(failed("KVM_RUN")(e)),
                Ok(VcpuExit::InternalError) => {
                    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                    // union member the kernel filled in.
                    let sub = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    format!("unexpected exit InternalError (suberror {sub})")
                }
                Ok(other) => format!("unexpected exit {other:?}"),
            };
            let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or_default();
            return Err(format!(
                "the ring-0 loop stopped: {unexpected} at rip {rip:#x}."
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_verdict_is_reused_only_for_the_same_host_boot_and_device() {
        if cache_key().is_none() {
            panic!("this test needs /dev/kvm (present on every hull test host)");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probe.json");
        let fake = KvmProbe {
            verdict: KvmVerdict::Native,
            reasons: vec!["recorded by the test".into()],
            ns_per_instruction: Some(1.0),
            modules: vec![],
        };
        store(&path, &fake);
        let got = probe_cached(&path);
        assert_eq!(got.reasons, fake.reasons, "the recorded verdict is used");
        // A record for another boot (or device) is ignored and replaced by a real probe.
        let stale = serde_json::to_vec(&Cached {
            key: "another-boot".into(),
            probe: fake.clone(),
        })
        .unwrap();
        std::fs::write(&path, stale).unwrap();
        let got = probe_cached(&path);
        assert_ne!(got.reasons, fake.reasons, "a stale record is not trusted");
        // Garbage is ignored too.
        std::fs::write(&path, b"{not json").unwrap();
        assert_ne!(probe_cached(&path).reasons, fake.reasons);
    }

    #[test]
    fn classify_thresholds() {
        assert_eq!(classify(0.5), KvmVerdict::Native);
        assert_eq!(classify(3.0), KvmVerdict::Native);
        assert_eq!(classify(19.99), KvmVerdict::Native);
        // Exactly at the threshold is not native: native means strictly below 20 ns.
        assert_eq!(classify(NATIVE_THRESHOLD_NS), KvmVerdict::Emulated);
        assert_eq!(classify(1000.0), KvmVerdict::Emulated);
        assert_eq!(classify(f64::NAN), KvmVerdict::Emulated);
    }

    #[test]
    fn missing_device_is_unavailable() {
        let path = Path::new("/nonexistent/hull-kvm-probe-test");
        let p = probe_device(path);
        assert_eq!(p.verdict, KvmVerdict::Unavailable);
        assert_eq!(p.ns_per_instruction, None);
        let named = p
            .reasons
            .iter()
            .any(|r| r.contains("/nonexistent/hull-kvm"));
        assert!(named, "{p:?}");
    }

    #[test]
    fn real_probe() {
        let start = std::time::Instant::now();
        let p = probe();
        println!("probe() took {:?}: {p:#?}", start.elapsed());
        assert!(!p.reasons.is_empty());
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert_ne!(p.verdict, KvmVerdict::Native, "{p:?}");
        }
        if p.verdict == KvmVerdict::Native {
            let ns = p.ns_per_instruction.unwrap_or(f64::INFINITY);
            assert!(ns < NATIVE_THRESHOLD_NS, "{p:?}");
        }
    }
}
