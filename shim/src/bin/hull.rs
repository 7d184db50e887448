//! `hull`: the operator CLI.
//!
//! * `hull check` — what this host supports and which backend hull would use.
//! * `hull boot` — boot one microVM, print what its agent reports, shut it down.
//! * `hull bench boot` — launch → agent `Check` answered, over N sequential boots.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hull_shim::backend::qemu::Accel;
use hull_shim::backend::RequestedBackend;
use hull_shim::check::{self, BackendRequest};
use hull_shim::image::GuestImage;
use hull_shim::vm::{StopOutcome, Vm, VmConfig};

#[derive(Parser)]
#[command(
    name = "hull",
    version,
    about = "hull: VM-isolated containers — operator tool"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report whether this host can run hull guests, and how.
    Check {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Boot one microVM, print the agent's version and the guest kernel release, shut it down.
    Boot {
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Boot N VMs one after another; report launch → agent Check answered.
    Boot {
        /// Number of boots.
        #[arg(short = 'n', long, default_value_t = 10)]
        count: usize,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        #[command(flatten)]
        vm: VmArgs,
    },
}

#[derive(Args, Clone)]
struct VmArgs {
    /// Guest kernel (default: $HULL_KERNEL or /usr/local/share/hull/vmlinux).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Guest initramfs (default: $HULL_INITRD or /usr/local/share/hull/initramfs.cpio).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Accelerator: kvm or tcg (default: probe).
    #[arg(long)]
    accel: Option<Accel>,
    /// Backend: auto (hull-vmm where KVM runs guests natively, else qemu), qemu or hull-vmm.
    #[arg(long, default_value = "auto")]
    backend: RequestedBackend,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u32,
    /// Extra kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Parent of the VMs' state directories.
    #[arg(long, default_value = hull_shim::DEFAULT_STATE_ROOT)]
    state_root: PathBuf,
    /// Boot deadline in seconds.
    #[arg(long, default_value_t = 30)]
    boot_timeout: u64,
}

impl VmArgs {
    fn image(&self) -> GuestImage {
        let env = GuestImage::from_env();
        GuestImage {
            kernel: self.kernel.clone().unwrap_or(env.kernel),
            initrd: self.initrd.clone().unwrap_or(env.initrd),
        }
    }

    fn request(&self) -> BackendRequest {
        match (self.backend, self.accel) {
            (RequestedBackend::HullVmm, _) => BackendRequest::HullVmm,
            (_, Some(a)) => BackendRequest::Qemu(Some(a)),
            (RequestedBackend::Qemu, None) => BackendRequest::Qemu(None),
            (RequestedBackend::Auto, None) => BackendRequest::Auto,
        }
    }

    fn config(&self) -> VmConfig {
        let image = self.image();
        let mut c = VmConfig::new(image.kernel, image.initrd);
        c.vcpus = self.vcpus;
        c.memory_mib = self.memory;
        c.extra_cmdline = self.cmdline.clone();
        c.state_root = self.state_root.clone();
        c.boot_timeout = Duration::from_secs(self.boot_timeout);
        c
    }
}

fn print_check(r: &check::CheckReport) {
    println!("KVM:        {:?}", r.kvm.verdict);
    for reason in &r.kvm.reasons {
        println!("            - {reason}");
    }
    for t in [&r.qemu, &r.vsock_daemon, &r.hull_vmm] {
        match &t.path {
            Some(p) => println!(
                "{:<11} {} ({})",
                format!("{}:", t.name),
                p.display(),
                t.detail
            ),
            None => println!("{:<11} MISSING: {}", format!("{}:", t.name), t.detail),
        }
    }
    for (what, f) in [("kernel:", &r.kernel), ("initrd:", &r.initrd)] {
        match (&f.size, &f.problem) {
            (Some(size), None) => println!("{what:<11} {} ({size} bytes)", f.path.display()),
            (_, problem) => println!(
                "{what:<11} MISSING {}: {} (run `make guest-image install`)",
                f.path.display(),
                problem.as_deref().unwrap_or("unusable")
            ),
        }
    }
    match &r.backend {
        Ok(c) => println!(
            "backend:    {} with accel={} — {}",
            c.backend, c.accel, c.reason
        ),
        Err(e) => println!("backend:    NONE — {e}"),
    }
    println!("ready:      {}", if r.ready() { "yes" } else { "no" });
}

async fn boot_one(args: &VmArgs, id: &str) -> Result<(Vm, check::BackendChoice)> {
    let report = check::run(args.request(), &args.image()).await;
    let choice = report
        .backend
        .map_err(anyhow::Error::msg)
        .context("choosing a backend")?;
    let hv = check::backend(&choice);
    let vm = Vm::boot(hv.as_ref(), id, &args.config()).await?;
    Ok((vm, choice))
}

fn vm_id(tag: &str, n: usize) -> String {
    format!("hull-{tag}-{}-{n}", std::process::id())
}

async fn cmd_boot(args: VmArgs) -> Result<()> {
    let (vm, choice) = boot_one(&args, &vm_id("boot", 0)).await?;
    let v = vm.agent().version().await;
    println!(
        "backend:        {} (accel={})",
        choice.backend, choice.accel
    );
    println!(
        "agent ready in: {:.0} ms (launch -> Check answered)",
        vm.boot_time().as_secs_f64() * 1e3
    );
    let outcome = match v {
        Ok(v) => {
            println!(
                "agent version:  {} (protocol v{}.{})",
                v.agent_version, v.protocol_major, v.protocol_minor
            );
            println!("guest kernel:   {}", v.kernel_release);
            println!(
                "host kernel:    {}",
                nix::sys::utsname::uname()?.release().to_string_lossy()
            );
            println!("agent is PID 1: {}", v.pid1);
            vm.shutdown(Duration::from_secs(10)).await
        }
        Err(e) => {
            vm.kill().await;
            return Err(e.into());
        }
    };
    match outcome {
        StopOutcome::Clean(status) => println!("shutdown:       clean ({status})"),
        StopOutcome::Killed => bail!("the VM did not shut down when asked and was killed"),
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct BootBench {
    backend: &'static str,
    accel: Accel,
    boots: usize,
    launch_to_check_ms: Vec<f64>,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

async fn cmd_bench_boot(args: VmArgs, count: usize, json: Option<PathBuf>) -> Result<()> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let mut times = Vec::with_capacity(count);
    let mut choice = None;
    for n in 0..count {
        let (vm, c) = boot_one(&args, &vm_id("bench", n)).await?;
        times.push(vm.boot_time().as_secs_f64() * 1e3);
        eprintln!("boot {}/{count}: {:.0} ms", n + 1, times[n]);
        if let StopOutcome::Killed = vm.shutdown(Duration::from_secs(10)).await {
            bail!("boot {n}: the VM did not shut down when asked");
        }
        choice = Some(c);
    }
    let choice = choice.context("no boot ran")?;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let result = BootBench {
        backend: choice.backend,
        accel: choice.accel,
        boots: count,
        median_ms: median(&sorted),
        min_ms: sorted[0],
        max_ms: sorted[sorted.len() - 1],
        launch_to_check_ms: times,
    };
    println!("| backend | accel | boots | launch -> Check median | min | max |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {:.0} ms | {:.0} ms | {:.0} ms |",
        result.backend, result.accel, result.boots, result.median_ms, result.min_ms, result.max_ms
    );
    if result.accel == Accel::Tcg {
        println!("(TCG: software emulation — not a KVM boot time)");
    }
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { json, vm } => {
            let report = check::run(vm.request(), &vm.image()).await;
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("hull: {e}"),
                }
            } else {
                print_check(&report);
            }
            return if report.ready() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Command::Boot { vm } => cmd_boot(vm).await,
        Command::Bench {
            what: Bench::Boot { count, json, vm },
        } => cmd_bench_boot(vm, count, json).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hull: {e:#}");
            ExitCode::FAILURE
        }
    }
}
