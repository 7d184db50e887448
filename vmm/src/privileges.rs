//! Dropping root: hull-vmm started as root opens everything its command line names
//! (`/dev/kvm`, kernel, initramfs, console file, the vsock socket), builds the VM, and then
//! becomes the unprivileged user given by `--uid`/`--gid` before any guest code runs and
//! before any other thread exists.
//!
//! The order is the usual one: supplementary groups cleared (`setgroups(0)`), then the
//! group (`setresgid`), then the user (`setresuid`, real, effective and saved), so no
//! saved id and no capability is left to climb back with. The drop is then checked: the
//! ids read back as asked, and `setuid(0)`/`setgid(0)` fail.
//!
//! It happens while the process has one thread: glibc and musl change the ids of every
//! thread by signalling them, which the other threads' seccomp filters would not allow.
//!
//! Not here: a chroot or mount namespace (the VMM opens nothing by path once running,
//! except the vsock device connecting to `<uds>_<port>`, which that user must be allowed to
//! connect to), capabilities other than by the uid change (a change from uid 0 to another
//! uid clears them all).

use thiserror::Error;

/// The user and group hull-vmm runs as once the VM is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Errors of dropping privileges.
#[derive(Debug, Error)]
pub enum PrivilegeError {
    /// Clearing the supplementary groups failed (hull-vmm is not root?).
    #[error("clearing the supplementary groups (setgroups): {0}")]
    SetGroups(std::io::Error),
    /// Changing the group failed.
    #[error("changing to group {gid} (setresgid): {source}")]
    SetGid {
        /// The group.
        gid: u32,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Changing the user failed.
    #[error("changing to user {uid} (setresuid): {source}")]
    SetUid {
        /// The user.
        uid: u32,
        /// The underlying error.
        source: std::io::Error,
    },
    /// After the drop the process still holds, or could regain, a privilege.
    #[error("privileges were not dropped: {0}")]
    NotDropped(String),
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Becomes `id` for good. Call with one thread only, after opening everything.
pub fn drop_to(id: Identity) -> Result<(), PrivilegeError> {
    // SAFETY: setgroups with a count of 0 reads no memory.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }).map_err(PrivilegeError::SetGroups)?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresgid(id.gid, id.gid, id.gid) }).map_err(|source| {
        PrivilegeError::SetGid {
            gid: id.gid,
            source,
        }
    })?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresuid(id.uid, id.uid, id.uid) }).map_err(|source| {
        PrivilegeError::SetUid {
            uid: id.uid,
            source,
        }
    })?;
    verify(id)
}

/// Checks that the process is `id` in every slot and cannot become root again.
fn verify(id: Identity) -> Result<(), PrivilegeError> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: the three pointers are to live locals.
    check(unsafe { libc::getresuid(&mut r, &mut e, &mut s) })
        .map_err(|e| PrivilegeError::NotDropped(format!("getresuid: {e}")))?;
    if (r, e, s) != (id.uid, id.uid, id.uid) {
        return Err(PrivilegeError::NotDropped(format!("uids are {r}/{e}/{s}")));
    }
    // SAFETY: the three pointers are to live locals.
    check(unsafe { libc::getresgid(&mut r, &mut e, &mut s) })
        .map_err(|e| PrivilegeError::NotDropped(format!("getresgid: {e}")))?;
    if (r, e, s) != (id.gid, id.gid, id.gid) {
        return Err(PrivilegeError::NotDropped(format!("gids are {r}/{e}/{s}")));
    }
    // SAFETY: getgroups with a count of 0 only returns how many groups there are.
    let groups = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if groups != 0 {
        return Err(PrivilegeError::NotDropped(format!(
            "{groups} supplementary groups remain"
        )));
    }
    if id.uid != 0 {
        // SAFETY: plain integer argument; success is the failure we test for.
        if unsafe { libc::setuid(0) } == 0 {
            return Err(PrivilegeError::NotDropped("setuid(0) succeeded".into()));
        }
    }
    if id.gid != 0 && id.uid != 0 {
        // SAFETY: plain integer argument; success is the failure we test for.
        if unsafe { libc::setgid(0) } == 0 {
            return Err(PrivilegeError::NotDropped("setgid(0) succeeded".into()));
        }
    }
    Ok(())
}
