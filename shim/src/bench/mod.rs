//! Benchmarks behind `hull bench` that live in the library (the CLI only parses and prints).
//!
//! - [`vmm`]: what one hull-vmm costs the host (CPU and wall time to the first `KVM_RUN`,
//!   PSS without guest RAM), beside QEMU.
//!
//! Not here: `hull bench boot` (still in the CLI), assertions of any kind — benchmarks
//! print and record figures; tests assert behaviour.

pub mod vmm;
