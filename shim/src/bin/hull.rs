//! `hull`: the operator CLI.
//!
//! * `hull check` — what this host supports and which backend hull would use.
//! * `hull boot` — boot one microVM, print what its agent reports, shut it down.
//! * `hull bench boot` — launch → agent `Check` answered, over N sequential boots.
//! * `hull bench ctr` — `ctr run --rm` with hull vs runc, and PSS per running pod.
//! * `hull bench vmm` — hull-vmm's CPU/wall time to the first `KVM_RUN` and PSS, beside QEMU.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hull_shim::backend::qemu::Accel;
use hull_shim::bench::ctr::CtrBench;
use hull_shim::check::{self, BackendRequest};
use hull_shim::config::{Config as HullConfig, ConfigError, DEFAULT_CONFIG_PATH};
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
    /// `ctr run --rm IMAGE true` with hull vs runc through one containerd (medians, ratio),
    /// then the PSS of one running hull pod's host processes.
    Ctr {
        /// containerd's socket (it must have the hull runtime and the image).
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        address: PathBuf,
        /// containerd namespace.
        #[arg(long, default_value = "hull-bench")]
        namespace: String,
        /// The image to run (imported already).
        #[arg(long, default_value = "docker.io/hull/busybox:latest")]
        image: String,
        /// Runs per runtime.
        #[arg(short = 'n', long, default_value_t = 10)]
        count: usize,
        /// The reference runtime.
        #[arg(long, default_value = "io.containerd.runc.v2")]
        reference: String,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// hull's config file (to report the accelerator the guest runs on).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// hull-vmm: exec -> first KVM_RUN (wall, CPU), PSS without guest RAM; QEMU beside it.
    Vmm(hull_shim::bench::vmm::VmmBenchArgs),
}

#[derive(Args, Clone)]
struct VmArgs {
    /// hull's config file (default: $HULL_CONFIG, else /etc/hull/config.toml if it exists).
    /// The flags below override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Guest kernel (default: from the config, $HULL_KERNEL, or
    /// /usr/local/share/hull/vmlinux).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Guest initramfs (default: from the config, $HULL_INITRD, or
    /// /usr/local/share/hull/initramfs.cpio).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// QEMU accelerator: kvm or tcg (default: from the config, else probe).
    #[arg(long)]
    accel: Option<Accel>,
    /// vCPUs (default: from the config, else 1).
    #[arg(long)]
    vcpus: Option<u32>,
    /// Guest memory in MiB (default: from the config, else 256).
    #[arg(long)]
    memory: Option<u32>,
    /// Extra kernel command line (default: the config's kernel_params).
    #[arg(long)]
    cmdline: Option<String>,
    /// Parent of the VMs' state directories.
    #[arg(long, default_value = hull_shim::DEFAULT_STATE_ROOT)]
    state_root: PathBuf,
    /// Boot deadline in seconds (default: from the config, else 30).
    #[arg(long)]
    boot_timeout: Option<u64>,
}

/// What the flags and the config file ask for, together.
struct Resolved {
    config: HullConfig,
    request: BackendRequest,
    vm: VmConfig,
}

impl VmArgs {
    fn resolve(&self) -> Result<Resolved, ConfigError> {
        let mut config = HullConfig::load(self.config.as_deref())?;
        if let Some(k) = &self.kernel {
            config.image.kernel = k.clone();
        }
        if let Some(i) = &self.initrd {
            config.image.initrd = i.clone();
        }
        if let Some(v) = self.vcpus {
            config.vcpus = v;
        }
        if let Some(m) = self.memory {
            config.memory_mib = m;
        }
        if let Some(c) = &self.cmdline {
            config.kernel_params = c.clone();
        }
        if let Some(t) = self.boot_timeout {
            config.boot_timeout = Duration::from_secs(t);
        }
        let request = match self.accel {
            Some(a) => BackendRequest::Qemu(Some(a)),
            None => config.backend_request(),
        };
        let mut vm = config.vm_config();
        vm.state_root = self.state_root.clone();
        Ok(Resolved {
            config,
            request,
            vm,
        })
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
    let r = args.resolve()?;
    let report = check::run(r.request, &r.config.image).await;
    let choice = report
        .backend
        .map_err(anyhow::Error::msg)
        .context("choosing a backend")?;
    let hv = check::backend(&choice, r.config.jail_ids);
    let vm = Vm::boot(hv.as_ref(), id, &r.vm).await?;
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
        median_ms: hull_shim::bench::median(&sorted),
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

async fn cmd_bench_ctr(
    bench: CtrBench,
    json: Option<PathBuf>,
    config: Option<PathBuf>,
) -> Result<()> {
    if bench.runs == 0 {
        bail!("--count must be at least 1");
    }
    // The accelerator the shim will pick: same config, same rule.
    let cfg = HullConfig::load(config.as_deref())?;
    let report = check::run_cached(cfg.backend_request(), &cfg.image).await;
    let accel = match &report.backend {
        Ok(c) => format!("{} {}", c.backend, c.accel),
        Err(e) => bail!("no usable backend: {e}"),
    };
    let b = bench.clone();
    let result = tokio::task::spawn_blocking(move || b.run(|line| eprintln!("{line}"))).await??;
    print!("{}", result.table(&bench.runtime, &bench.reference, &accel));
    if accel.ends_with("tcg") {
        println!("(TCG: the guest runs in software emulation — not a KVM figure)");
    }
    if let Some(path) = json {
        let doc = serde_json::json!({ "accelerator": accel, "result": result });
        std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)
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
            let resolved = match vm.resolve() {
                Ok(r) => r,
                Err(e) => {
                    println!("config:     INVALID — {e}");
                    println!("ready:      no");
                    return ExitCode::FAILURE;
                }
            };
            if !json {
                println!(
                    "config:     {}",
                    resolved.config.source.as_deref().map_or(
                        format!("none ({DEFAULT_CONFIG_PATH} absent): defaults"),
                        |p| format!("{} (valid)", p.display())
                    )
                );
            }
            let report = check::run(resolved.request, &resolved.config.image).await;
            let confinement = check::confinement(resolved.config.jail_ids, &report.backend).await;
            if json {
                let mut value = serde_json::to_value(&report).unwrap_or_default();
                if let Some(o) = value.as_object_mut() {
                    o.insert(
                        "confinement".into(),
                        serde_json::to_value(&confinement).unwrap_or_default(),
                    );
                }
                match serde_json::to_string_pretty(&value) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("hull: {e}"),
                }
            } else {
                print_check(&report);
                match &confinement {
                    Ok(c) => println!("confined:   {c}"),
                    Err(e) => println!("confined:   PROBLEM — {e}"),
                }
            }
            return if report.ready() && confinement.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Command::Boot { vm } => cmd_boot(vm).await,
        Command::Bench {
            what: Bench::Boot { count, json, vm },
        } => cmd_bench_boot(vm, count, json).await,
        Command::Bench {
            what:
                Bench::Ctr {
                    address,
                    namespace,
                    image,
                    count,
                    reference,
                    json,
                    config,
                },
        } => {
            let bench = CtrBench {
                address,
                namespace,
                image,
                runs: count,
                runtime: "io.containerd.hull.v2".into(),
                reference,
                state_root: hull_shim::DEFAULT_STATE_ROOT.into(),
            };
            cmd_bench_ctr(bench, json, config).await
        }
        Command::Bench {
            what: Bench::Vmm(args),
        } => hull_shim::bench::vmm::cli(&args).await.map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hull: {e:#}");
            ExitCode::FAILURE
        }
    }
}
