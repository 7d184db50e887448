//! `--seccomp-trap`: instead of the kernel killing the process without a word, a syscall
//! outside a thread's list raises SIGSYS, and this handler prints which thread kind made
//! which syscall, then ends the process with status 159 (128 + SIGSYS). For finding what
//! a list lacks where the kernel's audit log is not at hand (e.g. in the nested harness's
//! L1); the default stays `SECCOMP_RET_KILL_PROCESS`.
//!
//! The handler runs under the filter of the thread that trapped, so it makes only calls
//! every list allows (`write`, `exit_group`) and allocates nothing.

use std::cell::Cell;

use super::ThreadKind;

thread_local! {
    /// The kind of filter this thread installed (index into `ThreadKind::ALL`), for the
    /// report; const-initialised and without destructor, so reading it is a plain TLS load.
    static KIND: Cell<u8> = const { Cell::new(u8::MAX) };
}

/// Records that the calling thread runs under `kind`'s filter.
pub(super) fn set_thread_kind(kind: ThreadKind) {
    let i = ThreadKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
    KIND.with(|k| k.set(i as u8));
}

/// Byte offset of `si_syscall` in a 64-bit `siginfo_t` (`si_signo`, `si_errno`, `si_code`,
/// padding, then the `_sigsys` union member: `_call_addr` (8 bytes), `_syscall`).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for a SA_SIGINFO handler; SIGSYS from
    // seccomp fills its `_sigsys` member, whose `_syscall` is an int at this offset.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<libc::c_int>()
            .read_unaligned()
    };
    let kind = KIND.with(Cell::get);
    let name: &[u8] = match ThreadKind::ALL.get(usize::from(kind)) {
        Some(ThreadKind::Vmm) => b"VMM-thread",
        Some(ThreadKind::Vcpu) => b"vCPU",
        Some(ThreadKind::Spawner) => b"device-spawner",
        Some(ThreadKind::Device) => b"device",
        Some(ThreadKind::Signals) => b"signal-watcher",
        None => b"unknown",
    };
    let mut msg = [0u8; 128];
    let mut len = 0;
    let mut put = |b: &[u8]| {
        for &c in b {
            if len < msg.len() {
                msg[len] = c;
                len += 1;
            }
        }
    };
    put(b"hull-vmm: seccomp: the ");
    put(name);
    put(b" filter does not allow syscall ");
    let mut digits = [0u8; 12];
    let mut n = i64::from(nr).unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    put(&digits[i..]);
    put(b"\n");
    // SAFETY: write(2) from a stack buffer of `len` initialised bytes, then _exit; both are
    // async-signal-safe and on every allowlist.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), len);
        libc::_exit(128 + libc::SIGSYS);
    }
}

/// Installs the SIGSYS handler for the whole process (before any filter is installed).
pub(super) fn install_handler() -> std::io::Result<()> {
    // SAFETY: sigaction is plain data; all-zero is a valid starting value.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_sigsys as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `act` is a valid sigaction whose handler is an `extern "C"` function with the
    // SA_SIGINFO signature; the old action is not asked for.
    if unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
