//! The allowlists, one per thread kind, as data: one entry per syscall with the reason
//! hull-vmm needs it, and the arguments it may take where that matters.
//!
//! x86_64 is what runs and is tested (natively and in the nested harness). aarch64 gets the
//! same lists with its own names where the syscall tables differ ([`VMM_ARCH`],
//! [`DEVICE_ARCH`]: aarch64 has no `readlink` or `epoll_wait`); they compile to BPF in the
//! aarch64 build but have not run on an aarch64 host yet.
//!
//! A syscall belongs in a list only if that thread makes it *after* it installed its filter
//! (setup before that point is not filtered). Two Rust runtimes meet here: glibc (native
//! builds) and musl (the static build of the nested harness), so a few entries name the
//! variant each libc uses. Adding a device or a feature that makes new syscalls means
//! adding entries here, with the reason; the nested harness (`tests/nested/`) and
//! `vmm/tests/seccomp.rs` show what is missing (the process dies by SIGSYS).

use super::{Allowed, ArgRule};

/// `KVM_RUN`: `_IO(KVMIO = 0xAE, 0x80)`; checked against vmm-sys-util's encoding in a test.
pub const KVM_RUN: u64 = 0xae80;

/// `FIONBIO` (a `c_ulong` in glibc's libc crate, a `c_int` in musl's; the number is one).
pub const FIONBIO: u64 = 0x5421;

/// What every thread of hull-vmm does once running, whatever its job: allocate, lock, log,
/// drop file descriptors, and end (a thread's own exit, or the whole process's).
pub const COMMON: &[Allowed] = &[
    Allowed::any(
        libc::SYS_futex,
        "futex",
        "Mutex, Condvar, Barrier, channels, thread park",
    ),
    Allowed::any(
        libc::SYS_write,
        "write",
        "logging to stderr; eventfds; the console; sockets; blk OUT; net frames to the tap",
    ),
    Allowed::any(libc::SYS_close, "close", "dropping file descriptors"),
    Allowed::args(
        libc::SYS_fcntl,
        "fcntl",
        ArgRule::In {
            index: 1,
            values: &[
                (
                    libc::F_GETFD as u64,
                    "F_GETFD: std's debug check when an fd is dropped",
                ),
                (libc::F_GETFL as u64, "F_GETFL: non-blocking sockets"),
                (libc::F_SETFL as u64, "F_SETFL: non-blocking sockets"),
            ],
        },
    ),
    Allowed::any(
        libc::SYS_mmap,
        "mmap",
        "the allocator's large blocks and arenas",
    ),
    Allowed::any(
        libc::SYS_munmap,
        "munmap",
        "the allocator; a thread's stack at its exit",
    ),
    Allowed::any(
        libc::SYS_mremap,
        "mremap",
        "the allocator growing a large block",
    ),
    Allowed::any(
        libc::SYS_mprotect,
        "mprotect",
        "glibc growing a thread's malloc arena",
    ),
    Allowed::any(
        libc::SYS_madvise,
        "madvise",
        "the allocator returning memory; thread exit",
    ),
    Allowed::any(
        libc::SYS_brk,
        "brk",
        "the main heap (musl's and glibc's malloc)",
    ),
    Allowed::any(
        libc::SYS_sched_yield,
        "sched_yield",
        "spin back-off in std's channels",
    ),
    Allowed::any(
        libc::SYS_clock_gettime,
        "clock_gettime",
        "Instant/SystemTime when the vDSO is not used",
    ),
    Allowed::any(
        libc::SYS_sigaltstack,
        "sigaltstack",
        "std removes a thread's signal stack at its exit",
    ),
    Allowed::any(
        libc::SYS_rt_sigprocmask,
        "rt_sigprocmask",
        "libc blocks signals around thread exit",
    ),
    Allowed::any(
        libc::SYS_rt_sigreturn,
        "rt_sigreturn",
        "returning from std's SIGSEGV handler",
    ),
    Allowed::any(libc::SYS_exit, "exit", "a thread ends"),
    Allowed::any(
        libc::SYS_exit_group,
        "exit_group",
        "the process ends (the VM ended)",
    ),
    Allowed::any(
        libc::SYS_getpid,
        "getpid",
        "abort(): a panic that cannot unwind dies by SIGABRT, with its message",
    ),
    Allowed::any(libc::SYS_gettid, "gettid", "abort(), as getpid"),
    Allowed::any(libc::SYS_tgkill, "tgkill", "abort() raising SIGABRT"),
];

/// The VMM (main) thread once the vCPUs run: it waits for the VM's end (serving the control
/// socket, `--api-sock`, meanwhile), pauses and stops the vCPUs, flushes the console,
/// reports, and exits. It opens nothing and touches no KVM fd.
pub const VMM: &[Allowed] = &[
    Allowed::any(
        libc::SYS_read,
        "read",
        "the exit eventfd (ExitSignal::wait)",
    ),
    Allowed::any(
        libc::SYS_tgkill,
        "tgkill",
        "pause/stop: pthread_kill kicks a vCPU thread out of KVM_RUN (glibc)",
    ),
    Allowed::any(
        libc::SYS_tkill,
        "tkill",
        "pause/stop: musl's pthread_kill kicks a vCPU thread with tkill (found in the nested run)",
    ),
    Allowed::any(
        libc::SYS_epoll_pwait,
        "epoll_pwait",
        "the control socket's event loop (musl; aarch64)",
    ),
    Allowed::any(
        libc::SYS_epoll_ctl,
        "epoll_ctl",
        "the control socket: watching the exit eventfd and clients, forgetting clients",
    ),
    Allowed::any(
        libc::SYS_accept4,
        "accept4",
        "the control socket: a client connects",
    ),
    Allowed::any(
        libc::SYS_recvfrom,
        "recvfrom",
        "the control socket: std reads a client's requests with recv()",
    ),
    Allowed::any(
        libc::SYS_sendto,
        "sendto",
        "the control socket: std writes replies with send(MSG_NOSIGNAL)",
    ),
    Allowed::args(
        libc::SYS_ioctl,
        "ioctl",
        ArgRule::In {
            index: 1,
            values: &[(
                FIONBIO,
                "FIONBIO: the control socket makes an accepted client non-blocking",
            )],
        },
    ),
    Allowed::any(
        libc::SYS_fstat,
        "fstat",
        "guest memory size for the debug log (File::metadata, musl)",
    ),
    Allowed::any(
        libc::SYS_statx,
        "statx",
        "guest memory size for the debug log (File::metadata, glibc)",
    ),
];

/// The VMM thread's entries whose syscall differs between architectures.
#[cfg(target_arch = "x86_64")]
pub const VMM_ARCH: &[Allowed] = &[
    Allowed::any(
        libc::SYS_readlink,
        "readlink",
        "the debug log formats fds with {:?} (std reads /proc/self/fd/N)",
    ),
    Allowed::any(
        libc::SYS_epoll_wait,
        "epoll_wait",
        "the control socket's event loop (glibc on x86_64)",
    ),
    Allowed::any(
        libc::SYS_unlink,
        "unlink",
        "the control socket at exit: removing its file (if still ours)",
    ),
    Allowed::any(
        libc::SYS_lstat,
        "lstat",
        "the control socket at exit: lstat, to remove only our own socket (musl; glibc uses statx)",
    ),
];

/// The VMM thread's entries whose syscall differs between architectures.
#[cfg(target_arch = "aarch64")]
pub const VMM_ARCH: &[Allowed] = &[
    Allowed::any(
        libc::SYS_readlinkat,
        "readlinkat",
        "the debug log formats fds with {:?} (std reads /proc/self/fd/N)",
    ),
    Allowed::any(
        libc::SYS_unlinkat,
        "unlinkat",
        "the control socket at exit: removing its file (if still ours)",
    ),
    Allowed::any(
        libc::SYS_newfstatat,
        "newfstatat",
        "the control socket at exit: lstat, to remove only our own socket (musl's fstatat)",
    ),
];

/// A vCPU thread: `KVM_RUN` and the device emulation it does inline (port I/O and MMIO
/// exits run the device models on this thread), including activating a virtio device when
/// the driver sets DRIVER_OK.
pub const VCPU: &[Allowed] = &[
    Allowed::args(
        libc::SYS_ioctl,
        "ioctl",
        ArgRule::In {
            index: 1,
            values: &[(KVM_RUN, "KVM_RUN: run the guest until its next exit")],
        },
    ),
    Allowed::args(
        libc::SYS_fcntl,
        "fcntl",
        ArgRule::In {
            index: 1,
            values: &[
                (
                    libc::F_DUPFD_CLOEXEC as u64,
                    "F_DUPFD_CLOEXEC: virtio activation clones the queue eventfds (File::try_clone)",
                ),
                (
                    libc::F_SETFD as u64,
                    "F_SETFD: musl's F_DUPFD_CLOEXEC sets FD_CLOEXEC again (found in the nested run)",
                ),
            ],
        },
    ),
    Allowed::any(
        libc::SYS_epoll_ctl,
        "epoll_ctl",
        "virtio activation: the worker registers its queue events",
    ),
    Allowed::any(
        libc::SYS_rt_sigreturn,
        "rt_sigreturn",
        "returning from the kick handler (pause/stop set immediate_exit)",
    ),
    // virtio-fs activation (the driver's DRIVER_OK) sends the vhost-user set-up to
    // virtiofsd from this thread. The only sockets the process holds are the vhost-user
    // ones and vsock's host streams; no thread of a running VM may open or connect one
    // (vsock's device thread connects, under the device list).
    Allowed::args(
        libc::SYS_sendmsg,
        "sendmsg",
        ArgRule::In {
            index: 2,
            values: &[(
                libc::MSG_NOSIGNAL as u64,
                "MSG_NOSIGNAL only: virtio-fs vhost-user messages, with the guest memfd and \
                 the kick/call eventfds as SCM_RIGHTS (vmm-sys-util's send_with_fds)",
            )],
        },
    ),
    Allowed::args(
        libc::SYS_recvmsg,
        "recvmsg",
        ArgRule::In {
            index: 2,
            values: &[(
                0,
                "flags 0 only: virtio-fs vhost-user REPLY_ACK replies (recv_with_fds)",
            )],
        },
    ),
];

/// The signal watcher: it waits for SIGTERM/SIGINT (blocked in every thread) and raises the
/// VM's exit signal (a mutex and an eventfd write, both in [`COMMON`]).
pub const SIGNALS: &[Allowed] = &[Allowed::any(
    libc::SYS_rt_sigtimedwait,
    "rt_sigtimedwait",
    "sigwait() for SIGTERM/SIGINT",
)];

/// A virtio device thread: vsock's worker (an epoll loop over queue eventfds and the
/// muxer's unix sockets), blk's (poll on its queue eventfd, blocking I/O on the image
/// file) and net's (an epoll loop over queue eventfds and the tap).
pub const DEVICE: &[Allowed] = &[
    Allowed::any(
        libc::SYS_epoll_pwait,
        "epoll_pwait",
        "the worker's event loop (musl; aarch64)",
    ),
    Allowed::any(
        libc::SYS_epoll_ctl,
        "epoll_ctl",
        "watching and forgetting host sockets",
    ),
    Allowed::any(
        libc::SYS_read,
        "read",
        "queue eventfds; host sockets; blk IN into guest memory; net frames from the tap",
    ),
    Allowed::any(
        libc::SYS_lseek,
        "lseek",
        "blk: a request's sector (File::seek before the reads or writes)",
    ),
    Allowed::any(
        libc::SYS_fdatasync,
        "fdatasync",
        "blk: FLUSH on a writable disk (File::sync_data)",
    ),
    Allowed::any(
        libc::SYS_recvfrom,
        "recvfrom",
        "std reads sockets with recv()",
    ),
    Allowed::any(
        libc::SYS_sendto,
        "sendto",
        "std writes sockets with send(MSG_NOSIGNAL) (found in the nested run)",
    ),
    Allowed::any(
        libc::SYS_accept4,
        "accept4",
        "vsock: host clients on the listening socket",
    ),
    Allowed::args(
        libc::SYS_socket,
        "socket",
        ArgRule::In {
            index: 0,
            values: &[(
                libc::AF_UNIX as u64,
                "AF_UNIX only: vsock guest → host <uds>_<port>",
            )],
        },
    ),
    Allowed::any(
        libc::SYS_connect,
        "connect",
        "vsock: guest-initiated streams to <uds>_<port>",
    ),
    Allowed::any(
        libc::SYS_shutdown,
        "shutdown",
        "vsock: the guest shut its sending side",
    ),
    Allowed::args(
        libc::SYS_ioctl,
        "ioctl",
        ArgRule::In {
            index: 1,
            values: &[(
                FIONBIO,
                "FIONBIO: std's set_nonblocking on accepted sockets",
            )],
        },
    ),
];

/// The device thread's entries whose syscall differs between architectures.
#[cfg(target_arch = "x86_64")]
pub const DEVICE_ARCH: &[Allowed] = &[
    Allowed::any(
        libc::SYS_epoll_wait,
        "epoll_wait",
        "the worker's event loop (glibc on x86_64)",
    ),
    Allowed::any(
        libc::SYS_poll,
        "poll",
        "blk: waiting on the queue eventfd (glibc and musl on x86_64)",
    ),
];

/// The device thread's entries whose syscall differs between architectures.
#[cfg(target_arch = "aarch64")]
pub const DEVICE_ARCH: &[Allowed] = &[Allowed::any(
    libc::SYS_ppoll,
    "ppoll",
    "blk: waiting on the queue eventfd (libc's poll is ppoll on aarch64)",
)];

/// What creating a thread takes, on both sides of `clone` (the new thread runs its start-up
/// under its creator's filter, before it installs its own). Only the device-thread spawner
/// has these: the VMM thread starts the vCPUs and the spawner before it is filtered.
pub const SPAWN: &[Allowed] = &[
    Allowed::args(
        libc::SYS_clone,
        "clone",
        ArgRule::MaskedEq {
            index: 0,
            mask: libc::CLONE_THREAD as u64,
            value: libc::CLONE_THREAD as u64,
            why: "threads only (CLONE_THREAD), never a new process (musl; glibc's fallback)",
        },
    ),
    // clone3's flags sit in a struct seccomp cannot read: a second filter answers it with
    // ENOSYS, and glibc falls back to clone, whose flags the rule above checks.
    Allowed::any(
        libc::SYS_clone3,
        "clone3",
        "answered ENOSYS by the spawner's second filter",
    ),
    Allowed::any(
        libc::SYS_set_robust_list,
        "set_robust_list",
        "glibc: new thread start-up",
    ),
    Allowed::any(libc::SYS_rseq, "rseq", "glibc: new thread start-up"),
    Allowed::any(
        libc::SYS_set_tid_address,
        "set_tid_address",
        "musl: new thread start-up",
    ),
    Allowed::args(
        libc::SYS_prctl,
        "prctl",
        ArgRule::In {
            index: 0,
            values: &[
                (libc::PR_SET_NAME as u64, "PR_SET_NAME: the thread's name"),
                (
                    libc::PR_SET_NO_NEW_PRIVS as u64,
                    "PR_SET_NO_NEW_PRIVS: the new device thread installs its filter",
                ),
            ],
        },
    ),
    Allowed::args(
        libc::SYS_seccomp,
        "seccomp",
        ArgRule::In {
            index: 0,
            values: &[(
                libc::SECCOMP_SET_MODE_FILTER as u64,
                "SET_MODE_FILTER: the new device thread narrows itself to the device list",
            )],
        },
    ),
    Allowed::any(
        libc::SYS_sched_getaffinity,
        "sched_getaffinity",
        "std: pthread_getattr_np at thread start",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    vmm_sys_util::ioctl_io_nr!(KVM_RUN_NR, 0xae, 0x80);

    #[test]
    fn ioctl_numbers_are_the_ones_the_crates_use() {
        assert_eq!(KVM_RUN_NR(), KVM_RUN);
        #[allow(clippy::unnecessary_cast)] // c_ulong on glibc, c_int on musl
        let fionbio = libc::FIONBIO as u64;
        assert_eq!(fionbio, FIONBIO);
    }
}
