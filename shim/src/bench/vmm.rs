//! `hull bench vmm`: what one hull-vmm costs the host, beside QEMU.
//!
//! For each of N runs hull-vmm boots the guest image (1 vCPU, 128 MiB, vsock and control
//! socket as the shim would configure it) and the benchmark reads, over the control socket:
//! - **wall time** from just before `exec` (the benchmark's `CLOCK_MONOTONIC`) to vCPU 0's
//!   first `KVM_RUN` (hull-vmm's `CLOCK_MONOTONIC` at that moment), and hull-vmm's own
//!   `main` → first `KVM_RUN`;
//! - **host CPU time** to the first `KVM_RUN`: hull-vmm's user + system time over all its
//!   threads (`CLOCK_PROCESS_CPUTIME_ID`, ns resolution; `/proc/<pid>/stat` counts in 10 ms
//!   ticks, too coarse for a 3 ms target), read by hull-vmm right before the `KVM_RUN`;
//! - after `--settle-secs`, **PSS without guest RAM**: `/proc/<pid>/smaps` summed, minus the
//!   mappings of the guest-RAM memfd; with the guest's state at that moment (exits so far,
//!   console bytes), because on a host whose KVM emulates guest kernel code the guest is
//!   still booting then, not idle.
//!
//! Then `shutdown` over the socket ends it. The same is repeated with a minimal guest
//! ([`write_minimal_guest`]), which separates hull-vmm's own cost from loading the image.
//! QEMU (`-M microvm`, the shim's QEMU backend with
//! its vhost-user vsock daemon, TCG unless `--accel kvm`) boots the same image to a ready
//! agent, and its PSS is measured the same way (its guest RAM is the
//! `memory-backend-memfd` mapping; the vsock daemon is reported apart). QEMU has no
//! "first KVM_RUN" under TCG; its launch → agent-ready time is reported instead.
//!
//! Not here: the agent's readiness under hull-vmm (not reachable on a kvm_pvm host; the nested
//! harness checks it), CPU time of the guest itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use super::{median, pss, Pss};
use crate::backend::qemu::{Accel, Qemu};
use crate::image::GuestImage;
use crate::vm::{StopOutcome, Vm, VmConfig};
use crate::vmm_api::{VmmApi, VmmApiError};

/// The targets, printed beside the figures.
pub const TARGET_CPU_MS: f64 = 3.0;
/// PSS target without guest RAM, MiB.
pub const TARGET_PSS_MIB: f64 = 4.0;
/// `hull bench vmm`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct VmmBenchArgs {
    /// Runs per VMM.
    #[arg(short = 'n', long, default_value_t = 10)]
    pub count: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// hull-vmm binary (default: $HULL_VMM, else `hull-vmm` next to this program, else PATH).
    #[arg(long)]
    pub hull_vmm: Option<PathBuf>,
    /// Guest kernel (default: $HULL_KERNEL or the installed image).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs (default: $HULL_INITRD or the installed image).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    pub memory: u32,
    /// Seconds between the first `KVM_RUN` (QEMU: agent ready) and the PSS reading.
    #[arg(long, default_value_t = 2)]
    pub settle_secs: u64,
    /// QEMU's accelerator for the comparison.
    #[arg(long, default_value = "tcg")]
    pub accel: Accel,
    /// Skip the QEMU comparison.
    #[arg(long)]
    pub no_qemu: bool,
    /// Skip the runs with a minimal guest (what hull-vmm costs without image loading).
    #[arg(long)]
    pub no_minimal: bool,
    /// Directory for the runs' sockets and logs (default: a new one under the temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

/// Errors of the benchmark.
#[derive(Debug, Error)]
pub enum BenchError {
    /// Bad options.
    #[error("{0}")]
    Usage(String),
    /// A work file or directory could not be created or read.
    #[error("{path}: {source}")]
    File {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// hull-vmm could not be started.
    #[error("starting {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// hull-vmm did not get to the point measured.
    #[error("hull-vmm run {run}: {what}; its log ends:\n{log}")]
    Run {
        /// The run.
        run: usize,
        /// What did not happen.
        what: String,
        /// The tail of its stderr.
        log: String,
    },
    /// The control socket failed.
    #[error("hull-vmm run {run}: {source}")]
    Api {
        /// The run.
        run: usize,
        /// The underlying error.
        source: VmmApiError,
    },
    /// The QEMU comparison failed.
    #[error("QEMU run {run}: {message}")]
    Qemu {
        /// The run.
        run: usize,
        /// What failed.
        message: String,
    },
}

fn read_pss(pid: u32) -> Result<Pss, BenchError> {
    pss(pid).map_err(|source| BenchError::File {
        path: PathBuf::from(format!("/proc/{pid}/smaps")),
        source,
    })
}

/// `CLOCK_MONOTONIC` in ns.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime writes only into it.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// One hull-vmm run.
#[derive(Debug, Clone, Serialize)]
pub struct HullVmmRun {
    /// exec → vCPU 0's first `KVM_RUN`, ms.
    pub exec_to_first_kvm_run_ms: f64,
    /// hull-vmm's `main` → first `KVM_RUN`, ms.
    pub main_to_first_kvm_run_ms: f64,
    /// hull-vmm's CPU time (user + system) at the first `KVM_RUN`, ms.
    pub cpu_to_first_kvm_run_ms: f64,
    /// PSS after settling.
    pub pss: Pss,
    /// PSS without guest RAM, KiB.
    pub pss_vmm_kib: u64,
    /// vCPU exits when PSS was read (how far the guest got).
    pub exits_at_pss: u64,
    /// Console bytes when PSS was read.
    pub console_bytes_at_pss: u64,
    /// `state` when PSS was read.
    pub state_at_pss: String,
    /// hull-vmm's exit status after `shutdown`.
    pub exit_code: Option<i32>,
}

/// One QEMU run.
#[derive(Debug, Clone, Serialize)]
pub struct QemuRun {
    /// Launch → agent answered `Check`, ms.
    pub launch_to_agent_ready_ms: f64,
    /// QEMU's PSS after settling.
    pub pss: Pss,
    /// QEMU's PSS without guest RAM, KiB.
    pub pss_vmm_kib: u64,
    /// PSS of the helper processes (vhost-device-vsock), KiB.
    pub helpers_pss_kib: u64,
}

/// Medians of the hull-vmm runs.
#[derive(Debug, Clone, Serialize)]
pub struct HullVmmSummary {
    /// Median exec → first `KVM_RUN`, ms.
    pub exec_to_first_kvm_run_ms: f64,
    /// Median `main` → first `KVM_RUN`, ms.
    pub main_to_first_kvm_run_ms: f64,
    /// Median CPU to first `KVM_RUN`, ms.
    pub cpu_to_first_kvm_run_ms: f64,
    /// Median PSS without guest RAM, KiB.
    pub pss_vmm_kib: f64,
    /// Median PSS including guest RAM, KiB.
    pub pss_total_kib: f64,
}

/// Medians of the QEMU runs.
#[derive(Debug, Clone, Serialize)]
pub struct QemuSummary {
    /// Median launch → agent ready, ms.
    pub launch_to_agent_ready_ms: f64,
    /// Median PSS without guest RAM, KiB.
    pub pss_vmm_kib: f64,
    /// Median PSS including guest RAM, KiB.
    pub pss_total_kib: f64,
    /// Median helper PSS, KiB.
    pub helpers_pss_kib: f64,
}

/// Everything `hull bench vmm` measured (the JSON it writes).
#[derive(Debug, Clone, Serialize)]
pub struct VmmBenchReport {
    /// Runs per VMM.
    pub runs: usize,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Seconds between boot and the PSS reading.
    pub settle_secs: u64,
    /// The host kernel release.
    pub host_kernel: String,
    /// hull-vmm binary measured.
    pub hull_vmm_binary: PathBuf,
    /// The hull-vmm runs.
    pub hull_vmm: Vec<HullVmmRun>,
    /// Their medians.
    pub hull_vmm_median: HullVmmSummary,
    /// Runs with the minimal guest ([`write_minimal_guest`]): hull-vmm's own cost.
    pub hull_vmm_minimal: Vec<HullVmmRun>,
    /// Their medians.
    pub hull_vmm_minimal_median: Option<HullVmmSummary>,
    /// QEMU's accelerator, if QEMU ran.
    pub qemu_accel: Option<Accel>,
    /// The QEMU runs.
    pub qemu: Vec<QemuRun>,
    /// Their medians.
    pub qemu_median: Option<QemuSummary>,
    /// The targets: CPU ms to first `KVM_RUN`, PSS MiB without guest RAM.
    pub targets: (f64, f64),
}

fn find_hull_vmm(explicit: Option<&Path>) -> Result<PathBuf, BenchError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("HULL_VMM") {
        return Ok(p.into());
    }
    if let Some(p) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("hull-vmm")))
        .filter(|p| p.is_file())
    {
        return Ok(p);
    }
    crate::check::which("hull-vmm").ok_or_else(|| {
        BenchError::Usage("hull-vmm not found: pass --hull-vmm or set HULL_VMM".into())
    })
}

/// hull-vmm while a run measures it; killed if the run fails.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Running {
    fn log_tail(&self) -> String {
        crate::util::tail_of_file(&self.log, 20)
    }
}

fn hull_vmm_run(
    run: usize,
    bin: &Path,
    image: &GuestImage,
    args: &VmmBenchArgs,
    dir: &Path,
) -> Result<HullVmmRun, BenchError> {
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BenchError::File { path, source }
    };
    let log = dir.join(format!("hull-vmm-{run}.log"));
    let sock = dir.join(format!("api-{run}.sock"));
    let stderr = std::fs::File::create(&log).map_err(file_err(&log))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--kernel")
        .arg(&image.kernel)
        .arg("--initrd")
        .arg(&image.initrd)
        .args(["--vcpus", "1", "--memory-mib", &args.memory.to_string()])
        .arg("--console")
        .arg(dir.join(format!("console-{run}.log")))
        .arg("--vsock-uds")
        .arg(dir.join(format!("vsock-{run}.sock")))
        .arg("--api-sock")
        .arg(&sock)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let exec_ns = monotonic_ns();
    let child = cmd.spawn().map_err(|source| BenchError::Spawn {
        path: bin.to_path_buf(),
        source,
    })?;
    let mut vmm = Running { child, log };
    let fail = |vmm: &Running, what: &str| BenchError::Run {
        run,
        what: what.to_string(),
        log: vmm.log_tail(),
    };
    let api_err = |source| BenchError::Api { run, source };

    // The socket exists once the VM is built; the first KVM_RUN follows right after.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut api = loop {
        if let Ok(api) = VmmApi::connect(&sock, Duration::from_secs(5)) {
            break api;
        }
        if !matches!(vmm.child.try_wait(), Ok(None)) {
            return Err(fail(&vmm, "exited before its control socket came up"));
        }
        if Instant::now() > deadline {
            return Err(fail(&vmm, "no control socket within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let first = loop {
        if let Some(f) = api.metrics().map_err(api_err)?.first_kvm_run {
            break f;
        }
        if Instant::now() > deadline {
            return Err(fail(&vmm, "no first KVM_RUN within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    std::thread::sleep(Duration::from_secs(args.settle_secs));
    let pss = read_pss(vmm.child.id())?;
    let m = api.metrics().map_err(api_err)?;
    let state = api.state().map_err(api_err)?;
    api.shutdown().map_err(api_err)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match vmm.child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => break None,
        }
    };
    let Some(status) = status else {
        return Err(fail(&vmm, "did not exit within 5 s of shutdown"));
    };
    Ok(HullVmmRun {
        exec_to_first_kvm_run_ms: first.monotonic_ns.saturating_sub(exec_ns) as f64 / 1e6,
        main_to_first_kvm_run_ms: first.since_start_us as f64 / 1e3,
        cpu_to_first_kvm_run_ms: first.process_cpu_us as f64 / 1e3,
        pss,
        pss_vmm_kib: pss.own_kib(),
        exits_at_pss: m.vcpu_exits.get("total").copied().unwrap_or(0),
        console_bytes_at_pss: m.console_bytes,
        state_at_pss: state,
        exit_code: status.code(),
    })
}

async fn qemu_run(
    run: usize,
    image: &GuestImage,
    args: &VmmBenchArgs,
    dir: &Path,
) -> Result<QemuRun, BenchError> {
    let err = |message: String| BenchError::Qemu { run, message };
    let mut cfg = VmConfig::new(image.kernel.clone(), image.initrd.clone());
    cfg.memory_mib = args.memory;
    cfg.state_root = dir.to_path_buf();
    let hv = Qemu::new(args.accel);
    let id = format!("bench-vmm-{}-{run}", std::process::id());
    let vm = Vm::boot(&hv, &id, &cfg)
        .await
        .map_err(|e| err(format!("boot: {e}")))?;
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let pids = vm.pids();
    let result = (|| {
        let (qemu, helpers) = pids
            .split_first()
            .ok_or_else(|| err("no QEMU process".into()))?;
        let pss = read_pss(*qemu)?;
        let mut helpers_pss_kib = 0;
        for p in helpers {
            helpers_pss_kib += read_pss(*p)?.total_kib;
        }
        Ok(QemuRun {
            launch_to_agent_ready_ms: vm.boot_time().as_secs_f64() * 1e3,
            pss,
            pss_vmm_kib: pss.own_kib(),
            helpers_pss_kib,
        })
    })();
    if let StopOutcome::Killed = vm.shutdown(Duration::from_secs(10)).await {
        log::warn!("QEMU run {run}: the guest did not shut down when asked and was killed");
    }
    result
}

/// Runs the benchmark: `count` hull-vmm runs, then (unless `no_qemu`) `count` QEMU runs.
/// Progress goes to stderr.
pub async fn run(args: &VmmBenchArgs) -> Result<VmmBenchReport, BenchError> {
    if args.count == 0 {
        return Err(BenchError::Usage("--count must be at least 1".into()));
    }
    let bin = find_hull_vmm(args.hull_vmm.as_deref())?;
    let env = GuestImage::from_env();
    let image = GuestImage {
        kernel: args.kernel.clone().unwrap_or(env.kernel),
        initrd: args.initrd.clone().unwrap_or(env.initrd),
    };
    let (dir, remove_dir) = match &args.work_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("hull-bench-vmm-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).map_err(|source| BenchError::File {
        path: dir.clone(),
        source,
    })?;
    let result = run_in(args, &bin, &image, &dir).await;
    if remove_dir && result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// A guest that costs nothing to load: a 768-byte PVH ELF whose entry does `cli; hlt` (with
/// the in-kernel irqchip the vCPU then sleeps in KVM without exits) and a 512-byte
/// initramfs. Running hull-vmm on it separates the VMM's own cost from copying a real
/// kernel and initramfs into guest memory.
pub fn write_minimal_guest(dir: &Path) -> Result<GuestImage, BenchError> {
    const LOAD: u64 = 0x10_0000;
    const ENTRY: u32 = 0x10_0010;
    let mut e = vec![0u8; 0x300];
    let mut put = |off: usize, bytes: &[u8]| e[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, &[0x7f, b'E', b'L', b'F', 2, 1, 1]); // ELF64, little-endian
    put(16, &2u16.to_le_bytes()); // ET_EXEC
    put(18, &62u16.to_le_bytes()); // EM_X86_64
    put(20, &1u32.to_le_bytes());
    put(24, &LOAD.to_le_bytes());
    put(32, &64u64.to_le_bytes()); // e_phoff
    put(52, &64u16.to_le_bytes()); // e_ehsize
    put(54, &56u16.to_le_bytes()); // e_phentsize
    put(56, &2u16.to_le_bytes()); // e_phnum
                                  // PT_LOAD R+X: file 0x200..0x300 at 1 MiB.
    for (off, v) in [(64, 1u64 | 5 << 32), (72, 0x200), (80, LOAD), (88, LOAD)] {
        put(off, &v.to_le_bytes());
    }
    for (off, v) in [(96, 0x100u64), (104, 0x1000), (112, 0x1000)] {
        put(off, &v.to_le_bytes());
    }
    // PT_NOTE at 0x180: XEN_ELFNOTE_PHYS32_ENTRY = ENTRY.
    for (off, v) in [(120, 4u64), (128, 0x180), (152, 20), (160, 20), (168, 4)] {
        put(off, &v.to_le_bytes());
    }
    put(0x180, &4u32.to_le_bytes());
    put(0x184, &4u32.to_le_bytes());
    put(0x188, &18u32.to_le_bytes());
    put(0x18c, b"Xen\0");
    put(0x190, &ENTRY.to_le_bytes());
    put(0x210, &[0xfa, 0xf4, 0xeb, 0xfd]); // cli; 1: hlt; jmp 1b
    let image = GuestImage {
        kernel: dir.join("minimal-vmlinux"),
        initrd: dir.join("minimal-initrd"),
    };
    for (path, bytes) in [(&image.kernel, e), (&image.initrd, vec![0u8; 512])] {
        std::fs::write(path, bytes).map_err(|source| BenchError::File {
            path: path.clone(),
            source,
        })?;
    }
    Ok(image)
}

/// `count` hull-vmm runs with `image` (run numbers from `first`); prints progress.
async fn hull_vmm_series(
    what: &str,
    first: usize,
    args: &VmmBenchArgs,
    bin: &Path,
    image: &GuestImage,
    dir: &Path,
) -> Result<(Vec<HullVmmRun>, HullVmmSummary), BenchError> {
    let mut runs = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let n = first + i;
        let (bin2, image2, args2, dir2) = (
            bin.to_path_buf(),
            image.clone(),
            args.clone(),
            dir.to_path_buf(),
        );
        let r = tokio::task::spawn_blocking(move || hull_vmm_run(n, &bin2, &image2, &args2, &dir2))
            .await
            .map_err(|e| BenchError::Usage(format!("run {n}: {e}")))??;
        eprintln!(
            "hull-vmm ({what}) {}/{}: exec->KVM_RUN {:.2} ms, CPU {:.2} ms, PSS w/o guest RAM {} KiB ({} exits, {} console bytes, {})",
            i + 1,
            args.count,
            r.exec_to_first_kvm_run_ms,
            r.cpu_to_first_kvm_run_ms,
            r.pss_vmm_kib,
            r.exits_at_pss,
            r.console_bytes_at_pss,
            r.state_at_pss
        );
        runs.push(r);
    }
    let med = |f: fn(&HullVmmRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let summary = HullVmmSummary {
        exec_to_first_kvm_run_ms: med(|r| r.exec_to_first_kvm_run_ms),
        main_to_first_kvm_run_ms: med(|r| r.main_to_first_kvm_run_ms),
        cpu_to_first_kvm_run_ms: med(|r| r.cpu_to_first_kvm_run_ms),
        pss_vmm_kib: med(|r| r.pss_vmm_kib as f64),
        pss_total_kib: med(|r| r.pss.total_kib as f64),
    };
    Ok((runs, summary))
}

async fn run_in(
    args: &VmmBenchArgs,
    bin: &Path,
    image: &GuestImage,
    dir: &Path,
) -> Result<VmmBenchReport, BenchError> {
    let (runs, hull_vmm_median) = hull_vmm_series("guest image", 0, args, bin, image, dir).await?;
    let (hull_vmm_minimal, hull_vmm_minimal_median) = if args.no_minimal {
        (Vec::new(), None)
    } else {
        let minimal = write_minimal_guest(dir)?;
        let (r, m) = hull_vmm_series("minimal guest", args.count, args, bin, &minimal, dir).await?;
        (r, Some(m))
    };
    let mut qemu = Vec::new();
    if !args.no_qemu {
        for n in 0..args.count {
            let r = qemu_run(n, image, args, dir).await?;
            eprintln!(
                "qemu {}/{}: agent ready {:.0} ms, PSS w/o guest RAM {} KiB, helpers {} KiB",
                n + 1,
                args.count,
                r.launch_to_agent_ready_ms,
                r.pss_vmm_kib,
                r.helpers_pss_kib
            );
            qemu.push(r);
        }
    }
    let qmed = |f: fn(&QemuRun) -> f64| median(&qemu.iter().map(f).collect::<Vec<_>>());
    let qemu_median = (!qemu.is_empty()).then(|| QemuSummary {
        launch_to_agent_ready_ms: qmed(|r| r.launch_to_agent_ready_ms),
        pss_vmm_kib: qmed(|r| r.pss_vmm_kib as f64),
        pss_total_kib: qmed(|r| r.pss.total_kib as f64),
        helpers_pss_kib: qmed(|r| r.helpers_pss_kib as f64),
    });
    Ok(VmmBenchReport {
        runs: args.count,
        memory_mib: args.memory,
        settle_secs: args.settle_secs,
        host_kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        hull_vmm_binary: bin.to_path_buf(),
        hull_vmm: runs,
        hull_vmm_median,
        hull_vmm_minimal,
        hull_vmm_minimal_median,
        qemu_accel: (!args.no_qemu).then_some(args.accel),
        qemu,
        qemu_median,
        targets: (TARGET_CPU_MS, TARGET_PSS_MIB),
    })
}

/// `hull bench vmm`: runs the benchmark, prints [`table`], writes the JSON if asked.
pub async fn cli(args: &VmmBenchArgs) -> Result<(), BenchError> {
    let report = run(args).await?;
    print!("{}", table(&report));
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report).map_err(|e| BenchError::File {
            path: path.clone(),
            source: e.into(),
        })?;
        std::fs::write(path, json).map_err(|source| BenchError::File {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The report as a Markdown table with a few lines of context.
pub fn table(r: &VmmBenchReport) -> String {
    let mib = |kib: f64| kib / 1024.0;
    let h = &r.hull_vmm_median;
    let last = r.hull_vmm.last();
    let mut s = String::new();
    s.push_str(&format!(
        "medians of {} runs, {} MiB guest, PSS read {} s after boot (host {})\n\n",
        r.runs, r.memory_mib, r.settle_secs, r.host_kernel
    ));
    s.push_str("| VMM | exec -> first KVM_RUN | CPU to first KVM_RUN | PSS w/o guest RAM | PSS total | guest when measured |\n");
    s.push_str("|---|---|---|---|---|---|\n");
    s.push_str(&format!(
        "| hull-vmm, guest image | {:.2} ms (main -> {:.2} ms) | {:.2} ms | {:.2} MiB | {:.2} MiB | {} |\n",
        h.exec_to_first_kvm_run_ms,
        h.main_to_first_kvm_run_ms,
        h.cpu_to_first_kvm_run_ms,
        mib(h.pss_vmm_kib),
        mib(h.pss_total_kib),
        last.map_or(String::new(), |l| format!(
            "{}; {} exits, {} console bytes so far",
            l.state_at_pss, l.exits_at_pss, l.console_bytes_at_pss
        )),
    ));
    if let Some(m) = &r.hull_vmm_minimal_median {
        s.push_str(&format!(
            "| hull-vmm, minimal guest (no image to load) | {:.2} ms (main -> {:.2} ms) | {:.2} ms | {:.2} MiB | {:.2} MiB | {} |\n",
            m.exec_to_first_kvm_run_ms,
            m.main_to_first_kvm_run_ms,
            m.cpu_to_first_kvm_run_ms,
            mib(m.pss_vmm_kib),
            mib(m.pss_total_kib),
            r.hull_vmm_minimal.last().map_or(String::new(), |l| format!(
                "{} (cli; hlt); {} exits",
                l.state_at_pss, l.exits_at_pss
            )),
        ));
    }
    if let (Some(q), Some(accel)) = (&r.qemu_median, r.qemu_accel) {
        s.push_str(&format!(
            "| qemu microvm ({accel}) | n/a (agent ready {:.0} ms) | n/a | {:.2} MiB (+ vsock daemon {:.2} MiB) | {:.2} MiB | agent ready, idle |\n",
            q.launch_to_agent_ready_ms,
            mib(q.pss_vmm_kib),
            mib(q.helpers_pss_kib),
            mib(q.pss_total_kib),
        ));
    }
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    s.push_str(&format!(
        "\ntargets (issue 3), guest image: <= {:.0} CPU-ms to first KVM_RUN: {}; <= {:.0} MiB PSS w/o guest RAM: {}\n",
        r.targets.0,
        met(h.cpu_to_first_kvm_run_ms <= r.targets.0),
        r.targets.1,
        met(mib(h.pss_vmm_kib) <= r.targets.1),
    ));
    if let Some(m) = &r.hull_vmm_minimal_median {
        s.push_str(&format!(
            "targets, minimal guest: CPU {}; PSS {} (the difference is copying the kernel and initramfs into guest memory)\n",
            met(m.cpu_to_first_kvm_run_ms <= r.targets.0),
            met(mib(m.pss_vmm_kib) <= r.targets.1),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimal_guest_is_a_pvh_elf() {
        let dir = std::env::temp_dir().join(format!("hull-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = write_minimal_guest(&dir).unwrap();
        let k = std::fs::read(&img.kernel).unwrap();
        assert_eq!(&k[..4], b"\x7fELF");
        // Program headers: PT_LOAD at 1 MiB from file offset 0x200, PT_NOTE at 0x180.
        assert_eq!(u32::from_le_bytes(k[64..68].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(k[80..88].try_into().unwrap()), 0x10_0000);
        assert_eq!(u32::from_le_bytes(k[120..124].try_into().unwrap()), 4);
        assert_eq!(&k[0x18c..0x190], b"Xen\0");
        assert_eq!(
            u32::from_le_bytes(k[0x190..0x194].try_into().unwrap()),
            0x10_0010
        );
        assert_eq!(&k[0x210..0x214], &[0xfa, 0xf4, 0xeb, 0xfd]);
        assert_eq!(std::fs::metadata(&img.initrd).unwrap().len(), 512);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
