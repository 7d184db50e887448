//! hull-vmm: hull's own KVM microVM monitor on rust-vmm crates.
//!
//! Not implemented yet: this binary exists so the workspace has its final shape. It refuses
//! to run rather than pretend; the shim's `auto` backend never selects it.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("hull-vmm: not implemented yet; use the qemu backend");
    ExitCode::from(2)
}
