//! hull's host side: hypervisor backends, the hybrid-vsock transport, the agent client and
//! the VM lifecycle, plus the checks behind `hull check`.
//!
//! Both binaries are built on it: the containerd shim (`containerd-shim-hull-v2`, see
//! [`task`]) and the `hull` operator CLI.

#![deny(missing_docs)]

pub mod agent;
pub mod backend;
pub mod bench;
pub mod check;
pub mod config;
pub mod image;
pub mod kvm_probe;
pub mod reclaim;
pub mod task;
pub mod util;
pub mod vm;
pub mod vmm_api;
pub mod vsock;

/// Parent of every VM's state directory.
pub const DEFAULT_STATE_ROOT: &str = "/run/hull";
