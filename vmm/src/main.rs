//! `hull-vmm`: boots one microVM and exits when the guest ends.
//!
//! Exit status: 0 when the guest reset or powered off (how a hull guest ends) or the control
//! socket's `shutdown`, SIGTERM or SIGINT stopped it (in order: vCPUs stopped, console
//! flushed, sockets removed), 1 when the VM failed (build error, vCPU error), 2 on
//! invalid arguments. The reason is printed on stderr; `RUST_LOG=info` adds timings (e.g.
//! time to the first `KVM_RUN`, as `first_kvm_run since_start_us=… process_cpu_us=…
//! monotonic_ns=…`). `--api-sock PATH`: the control socket ([`hull_vmm::api`]).
//!
//! Least privilege: hull-vmm opens everything its command line names and builds the VM,
//! then (with `--chroot`) changes its root, (with `--uid`/`--gid`) becomes that user, then
//! every thread installs its seccomp filter, and only then does guest code run. A syscall
//! outside a thread's allowlist kills the process by SIGSYS; `--seccomp-trap` (names the
//! syscall) and `--no-seccomp` are for debugging.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use hull_vmm::builder;
use hull_vmm::config::{Cli, Sandbox, VmResources};
use hull_vmm::vstate::term::{self, TermSignals};
use hull_vmm::{privileges, seccomp};

fn main() -> ExitCode {
    let started = Instant::now();
    // Before any thread exists, so that every thread inherits the mask.
    let signals = match term::block_term_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hull-vmm: blocking SIGTERM/SIGINT: {e}");
            return ExitCode::from(1);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let sandbox = Sandbox::from(&cli);
    let mut resources = match VmResources::try_from(cli) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hull-vmm: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&mut resources, sandbox, started, signals) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("hull-vmm: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(
    resources: &mut VmResources,
    sandbox: Sandbox,
    started: Instant,
    signals: TermSignals,
) -> anyhow::Result<u8> {
    // Compiled first: a broken list fails before anything is opened.
    let filters = if let Some(mode) = sandbox.seccomp {
        Some(Arc::new(seccomp::Filters::with_mode(mode)?))
    } else {
        log::warn!("seccomp is off (--no-seccomp)");
        None
    };
    let chroot = match &sandbox.chroot {
        Some(dir) => Some(privileges::Chroot::prepare(dir, resources)?),
        None => None,
    };
    let vm = builder::build(resources, started)?;
    if let Some(c) = chroot {
        c.enter()?;
    }
    if let Some(id) = sandbox.run_as {
        privileges::drop_to(id)?;
        log::info!("running as uid {} gid {}", id.uid, id.gid);
    }
    // After the drop (which wants one thread), before guest code runs; the watcher installs
    // its own filter first.
    signals.watch(vm.exit_signal(), filters.clone())?;
    let reason = vm.run_sandboxed(filters)?;
    eprintln!(
        "hull-vmm: {reason} after {:.3} s",
        started.elapsed().as_secs_f64()
    );
    Ok(reason.exit_code())
}
