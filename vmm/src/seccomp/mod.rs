//! Per-thread seccomp allowlists for hull-vmm, compiled with rust-vmm's `seccompiler`.
//!
//! hull-vmm runs five kinds of thread, and each installs its own filter before it does the
//! work the guest can reach:
//!
//! | thread | installs its filter | then | list |
//! |---|---|---|---|
//! | VMM (main) | after building the VM, dropping privileges and starting the others | waits for the VM's end, reports, exits | [`ThreadKind::Vmm`] |
//! | vCPU | at its start, before its first `KVM_RUN` | `KVM_RUN` loop, port I/O and MMIO device emulation, virtio activation | [`ThreadKind::Vcpu`] |
//! | device spawner | at its start, before the vCPUs run | creates virtio device threads | [`ThreadKind::Spawner`] |
//! | device (e.g. vsock) | first thing in the new thread | the device's event loop | [`ThreadKind::Device`] |
//! | signal watcher | first thing in the new thread, before the vCPUs run | `sigwait` for SIGTERM/SIGINT, then raises the VM's end ([`crate::vstate::term`]) | [`ThreadKind::Signals`] |
//!
//! Guest code runs only once every filter is in place: the vCPU threads wait on a barrier
//! that the VMM thread joins after installing its own (see [`crate::vstate::Vm::run_sandboxed`]),
//! and the signal watcher is started (by `main`) and filtered before that.
//!
//! A thread inherits the filters of the thread that created it and can only narrow them.
//! Virtio devices are activated on a vCPU thread (the driver's DRIVER_OK write), so a device
//! thread created there would be bound by the vCPU list as well as its own. Device threads
//! are therefore created by the spawner ([`spawn_device_thread`]), whose list is the device
//! list plus what creating a thread takes ([`ThreadKind::Spawner`]).
//!
//! A syscall outside a thread's list kills the whole process (`SECCOMP_RET_KILL_PROCESS`),
//! so a missing entry is seen at once (the process dies by SIGSYS; the kernel's audit log
//! names the syscall) rather than turning into a strange error. For debugging,
//! `hull-vmm --seccomp-trap` ([`Mode::Trap`]) prints the thread kind and the syscall's number
//! before exiting (status 159), and `--no-seccomp` turns filtering off.
//!
//! The lists are data, one commented entry per syscall, in [`lists`]: x86_64's are run and
//! tested here; aarch64's are the same with its syscall names, and have run with every
//! filter on only in the TCG-emulated arm64 harness (`tests/nested/arm64/`). Other
//! architectures have none ([`Filters::new`] says so).
//!
//! The control socket ([`crate::api`]) is served by the VMM thread's event loop, so its
//! syscalls (epoll, accept4, recv/send, removing the socket at exit) are in the VMM list;
//! pausing and stopping kick vCPUs with a signal (`tgkill` on the VMM thread, `rt_sigreturn`
//! on the vCPU's).
//!
//! Not here: dropping privileges ([`crate::privileges`]).

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub mod lists;
mod spawner;
mod trap;

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use thiserror::Error;

pub use spawner::{spawn_device_thread, DeviceSpawner};

/// Errors of compiling or installing a filter.
#[derive(Debug, Error)]
pub enum SeccompError {
    /// There are no allowlists for this architecture.
    #[error(
        "hull-vmm has no seccomp allowlists for {0} yet; run with --no-seccomp to run without"
    )]
    UnsupportedArch(&'static str),
    /// An allowlist could not be compiled to BPF (a bug in the lists).
    #[error("compiling the {kind} seccomp filter: {source}")]
    Compile {
        /// The thread kind.
        kind: ThreadKind,
        /// The underlying error.
        source: seccompiler::BackendError,
    },
    /// The kernel refused a filter.
    #[error("installing the {kind} seccomp filter: {source}")]
    Install {
        /// The thread kind.
        kind: ThreadKind,
        /// The underlying error.
        source: seccompiler::Error,
    },
    /// The SIGSYS handler of `--seccomp-trap` could not be installed.
    #[error("installing the SIGSYS handler: {0}")]
    InstallTrapHandler(std::io::Error),
    /// The device-thread spawner could not be started.
    #[error("starting the device-thread spawner: {0}")]
    StartSpawner(std::io::Error),
}

/// What a syscall outside the list does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The kernel kills the process (SIGSYS, `SECCOMP_RET_KILL_PROCESS`). The default.
    Kill,
    /// SIGSYS is delivered to a handler that names the thread kind and the syscall on
    /// stderr and exits with status 159 (debugging).
    Trap,
}

/// The kinds of thread hull-vmm runs; each has its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread once the VM runs.
    Vmm,
    /// A vCPU thread.
    Vcpu,
    /// The thread that creates virtio device threads.
    Spawner,
    /// A virtio device's worker thread.
    Device,
    /// The thread that waits for SIGTERM/SIGINT.
    Signals,
}

impl ThreadKind {
    /// Every kind, in the order of the table above.
    pub const ALL: [ThreadKind; 5] = [
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::Spawner,
        ThreadKind::Device,
        ThreadKind::Signals,
    ];
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ThreadKind::Vmm => "VMM-thread",
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Spawner => "device-spawner",
            ThreadKind::Device => "device",
            ThreadKind::Signals => "signal-watcher",
        })
    }
}

/// Which arguments an allowed syscall may take.
#[derive(Debug, Clone, Copy)]
pub enum ArgRule {
    /// Any.
    Any,
    /// Argument `index` (compared as 32 bits) is one of `values`, each with its reason.
    In {
        /// The argument's index (0-based).
        index: u8,
        /// The allowed values and why each is needed.
        values: &'static [(u64, &'static str)],
    },
    /// Argument `index` (32 bits) masked with `mask` equals `value`.
    MaskedEq {
        /// The argument's index (0-based).
        index: u8,
        /// The bits compared.
        mask: u64,
        /// Their required value.
        value: u64,
        /// Why.
        why: &'static str,
    },
}

/// One allowlist entry: a syscall, the arguments it may take, and why hull-vmm needs it.
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    /// The syscall number (`libc::SYS_*`).
    pub nr: i64,
    /// Its name, for reports.
    pub name: &'static str,
    /// Its allowed arguments.
    pub args: ArgRule,
    /// Why hull-vmm makes it (for `ArgRule::In`, the values carry their own reasons).
    pub why: &'static str,
}

impl Allowed {
    /// `name` with any arguments, needed because of `why`.
    pub const fn any(nr: i64, name: &'static str, why: &'static str) -> Self {
        Allowed {
            nr,
            name,
            args: ArgRule::Any,
            why,
        }
    }

    /// `name` with the arguments `args` allows only.
    pub const fn args(nr: i64, name: &'static str, args: ArgRule) -> Self {
        Allowed {
            nr,
            name,
            args,
            why: "only the arguments listed",
        }
    }
}

/// The entries of `kind`'s allowlist (several may name one syscall with different
/// arguments).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn allowlist(kind: ThreadKind) -> Vec<Allowed> {
    use lists::*;
    let parts: &[&[Allowed]] = match kind {
        ThreadKind::Vmm => &[COMMON, VMM, VMM_ARCH],
        ThreadKind::Vcpu => &[COMMON, VCPU],
        ThreadKind::Device => &[COMMON, DEVICE, DEVICE_ARCH],
        // A device thread starts under the spawner's filter: it holds the device list too.
        ThreadKind::Spawner => &[COMMON, DEVICE, DEVICE_ARCH, SPAWN],
        ThreadKind::Signals => &[COMMON, SIGNALS],
    };
    parts.iter().flat_map(|l| l.iter().copied()).collect()
}

/// The entries of `kind`'s allowlist: none on architectures without lists.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn allowlist(_kind: ThreadKind) -> Vec<Allowed> {
    Vec::new()
}

/// The distinct syscalls `kind` may make, by name, sorted.
pub fn syscall_names(kind: ThreadKind) -> Vec<&'static str> {
    let mut names: Vec<_> = allowlist(kind).iter().map(|a| a.name).collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn condition(
    index: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
}

/// Compiles `entries` into a filter that allows them and answers anything else with
/// `otherwise`.
fn compile(
    kind: ThreadKind,
    entries: &[Allowed],
    otherwise: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let err = |source| SeccompError::Compile { kind, source };
    // None: any arguments; Some(rules): one of the rules must match.
    let mut merged: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for a in entries {
        let rules: Option<Vec<SeccompRule>> = match a.args {
            ArgRule::Any => None,
            ArgRule::In { index, values } => Some(
                values
                    .iter()
                    .map(|&(v, _)| SeccompRule::new(vec![condition(index, SeccompCmpOp::Eq, v)?]))
                    .collect::<Result<_, _>>()
                    .map_err(err)?,
            ),
            ArgRule::MaskedEq {
                index, mask, value, ..
            } => Some(vec![SeccompRule::new(vec![condition(
                index,
                SeccompCmpOp::MaskedEq(mask),
                value,
            )
            .map_err(err)?])
            .map_err(err)?]),
        };
        let slot = merged.entry(a.nr).or_insert_with(|| Some(Vec::new()));
        match (slot.as_mut(), rules) {
            (None, _) => {}
            (Some(_), None) => *slot = None,
            (Some(have), Some(more)) => have.extend(more),
        }
    }
    // seccompiler reads an empty rule list as "any arguments".
    let rules = merged
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect();
    let filter =
        SeccompFilter::new(rules, otherwise, SeccompAction::Allow, arch()?).map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

#[cfg(target_arch = "x86_64")]
fn arch() -> Result<seccompiler::TargetArch, SeccompError> {
    Ok(seccompiler::TargetArch::x86_64)
}

#[cfg(target_arch = "aarch64")]
fn arch() -> Result<seccompiler::TargetArch, SeccompError> {
    Ok(seccompiler::TargetArch::aarch64)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn arch() -> Result<seccompiler::TargetArch, SeccompError> {
    Err(SeccompError::UnsupportedArch(std::env::consts::ARCH))
}

/// The compiled filters of every thread kind.
#[derive(Debug, Clone)]
pub struct Filters {
    programs: [BpfProgram; 5],
    /// The spawner's second filter: `clone3` fails with ENOSYS (libc then uses `clone`).
    no_clone3: BpfProgram,
}

impl Filters {
    /// Compiles every allowlist, killing the process on a violation ([`Mode::Kill`]).
    pub fn new() -> Result<Self, SeccompError> {
        Self::with_mode(Mode::Kill)
    }

    /// Compiles every allowlist (before any thread needs one, so errors come early). With
    /// [`Mode::Trap`] this also installs the process's SIGSYS handler.
    pub fn with_mode(mode: Mode) -> Result<Self, SeccompError> {
        arch()?;
        let otherwise = match mode {
            Mode::Kill => SeccompAction::KillProcess,
            Mode::Trap => {
                trap::install_handler().map_err(SeccompError::InstallTrapHandler)?;
                SeccompAction::Trap
            }
        };
        let mut programs: [BpfProgram; 5] = Default::default();
        for (p, kind) in programs.iter_mut().zip(ThreadKind::ALL) {
            *p = compile(kind, &allowlist(kind), otherwise.clone())?;
        }
        let no_clone3 = SeccompFilter::new(
            [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch()?,
        )
        .and_then(BpfProgram::try_from)
        .map_err(|source| SeccompError::Compile {
            kind: ThreadKind::Spawner,
            source,
        })?;
        Ok(Filters {
            programs,
            no_clone3,
        })
    }

    /// The BPF program of `kind` (its instruction count is the filter's size).
    pub fn program(&self, kind: ThreadKind) -> &BpfProgram {
        let i = ThreadKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        &self.programs[i]
    }

    /// Installs `kind`'s filter on the calling thread (and sets no_new_privs). From then on
    /// a syscall outside the list kills the process.
    pub fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let err = |source| SeccompError::Install { kind, source };
        trap::set_thread_kind(kind);
        // The allowlist goes last: installing a filter takes prctl and seccomp, which it
        // does not allow.
        if kind == ThreadKind::Spawner {
            seccompiler::apply_filter(&self.no_clone3).map_err(err)?;
        }
        seccompiler::apply_filter(self.program(kind)).map_err(err)
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn every_list_compiles_and_its_size_is_printed() {
        let f = Filters::new().unwrap();
        for kind in ThreadKind::ALL {
            let names = syscall_names(kind);
            eprintln!(
                "{kind}: {} syscalls, {} BPF instructions: {}",
                names.len(),
                f.program(kind).len(),
                names.join(" ")
            );
            assert!(!f.program(kind).is_empty());
        }
    }

    #[test]
    fn no_thread_may_open_exec_or_fork() {
        let forbidden = [
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_ptrace,
            libc::SYS_setuid,
            libc::SYS_mount,
            libc::SYS_bind,
            libc::SYS_listen,
        ];
        for kind in ThreadKind::ALL {
            for a in allowlist(kind) {
                assert!(!forbidden.contains(&a.nr), "{kind} allows {}", a.name);
            }
        }
    }

    #[test]
    fn only_the_spawner_creates_threads_and_only_vcpus_run_kvm() {
        for kind in ThreadKind::ALL {
            let names = syscall_names(kind);
            assert_eq!(
                names.contains(&"clone"),
                kind == ThreadKind::Spawner,
                "{kind}"
            );
            let ioctls: Vec<u64> = allowlist(kind)
                .iter()
                .filter(|a| a.nr == libc::SYS_ioctl)
                .flat_map(|a| match a.args {
                    ArgRule::In { values, .. } => values.iter().map(|v| v.0).collect::<Vec<_>>(),
                    _ => panic!("{kind}: ioctl with any request"),
                })
                .collect();
            assert_eq!(
                ioctls.contains(&lists::KVM_RUN),
                kind == ThreadKind::Vcpu,
                "{kind}"
            );
        }
    }

    #[test]
    fn every_entry_says_why() {
        for kind in ThreadKind::ALL {
            for a in allowlist(kind) {
                assert!(!a.why.is_empty(), "{}", a.name);
                if let ArgRule::In { values, .. } = a.args {
                    assert!(values.iter().all(|v| !v.1.is_empty()), "{}", a.name);
                }
            }
        }
    }
}
