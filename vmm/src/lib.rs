//! hull-vmm: hull's KVM microVM monitor on rust-vmm crates.
//!
//! The shape follows Firecracker's: the command line is parsed at the edge ([`config`]) into
//! plain [`config::VmResources`]; the [`builder`] turns resources into a configured
//! [`vstate::Vm`] (KVM VM, memfd-backed guest memory, kernel, initrd, boot tables, devices,
//! vCPUs); [`vstate::Vm::run`] runs it until the guest resets or powers off, or a vCPU
//! fails, and reports why as an [`vstate::ExitReason`].
//!
//! Architecture-specific code lives in [`arch`] behind one small set of functions: x86_64
//! (PVH `vmlinux` or `bzImage`) and aarch64 (Image, FDT, GICv3, PSCI; booted so far only on
//! TCG-emulated arm64 KVM, `tests/nested/arm64/`).
//!
//! virtio devices sit on the virtio-mmio transport ([`devices::virtio`]): vsock, block (raw
//! image files), net (a tap), and virtio-fs as a vhost-user frontend to virtiofsd
//! (`--fs TAG=SOCKET`).
//!
//! Least privilege: every thread runs under its own seccomp allowlist ([`seccomp`]), and
//! hull-vmm started as root can become an unprivileged user once the VM is built
//! ([`privileges`], `--uid`/`--gid`).
//!
//! The control socket ([`api`], `--api-sock`) pauses, resumes, stops and inspects the running
//! VM; the counters it reports are kept in [`metrics`].
//!
//! The kernel is an ELF `vmlinux` (PVH entry) or a `bzImage` (Linux boot protocol) on
//! x86_64 ([`arch`]).
//!
//! Sockets the VMM listens on appear only once they accept connections ([`uds`]).

pub mod api;
pub mod arch;
pub mod builder;
pub mod config;
pub mod devices;
pub mod memory;
pub mod metrics;
pub mod privileges;
pub mod seccomp;
pub mod uds;
pub mod vstate;
