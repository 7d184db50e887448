//! `hull-vmm`: boots one microVM and exits when the guest ends.
//!
//! Exit status: 0 when the guest reset or powered off (how a hull guest ends) or the control
//! socket's `shutdown`, SIGTERM or SIGINT stopped it (in order: vCPUs stopped, console
//! flushed, sockets removed), 1 when the VM failed (build error, vCPU error), 2 on
//! invalid arguments. The reason is printed on stderr; `RUST_LOG=info` adds timings (e.g.
//! time to the first `KVM_RUN`, as `first_kvm_run since_start_us=… process_cpu_us=…
//! monotonic_ns=…`). `--api-sock PATH`: the control socket ([`hull_vmm::api`]).

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use hull_vmm::builder;
use hull_vmm::config::{Cli, VmResources};
use hull_vmm::vstate::term::{self, TermSignals};

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
    let resources = match VmResources::try_from(cli) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hull-vmm: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&resources, started, signals) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("hull-vmm: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(resources: &VmResources, started: Instant, signals: TermSignals) -> anyhow::Result<u8> {
    let vm = builder::build(resources, started)?;
    signals.watch(vm.exit_signal())?;
    let reason = vm.run()?;
    eprintln!(
        "hull-vmm: {reason} after {:.3} s",
        started.elapsed().as_secs_f64()
    );
    Ok(reason.exit_code())
}
