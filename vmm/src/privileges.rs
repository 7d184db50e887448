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
//! With `--chroot DIR` the process also changes its root to `DIR` between building the VM
//! and changing user, so the one path it still opens while running (the vsock device
//! connects to `<uds>_<port>` when the guest asks) resolves inside `DIR`. The vsock socket
//! must then lie inside `DIR`: [`Chroot::prepare`] makes every input path absolute, moves
//! to `DIR` and hands the builder the socket's path relative to it, which names the same
//! file before the chroot (bind) and after it (connect). The control socket (`--api-sock`)
//! likewise: it is bound before the chroot and removed at exit, after it.
//!
//! Not here: a mount or user namespace, capabilities other than by the uid change (a change
//! from uid 0 to another uid clears them all). The `<uds>_<port>` listeners must accept the
//! user hull-vmm becomes.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::config::{ConsoleOutput, VmResources};

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
    /// Resolving a path or moving to the chroot directory failed.
    #[error("preparing the chroot {dir}: {source}")]
    PrepareChroot {
        /// The chroot directory.
        dir: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The vsock socket would not be reachable from inside the chroot.
    #[error("--vsock-uds {path} is not inside --chroot {dir}")]
    VsockOutsideChroot {
        /// The socket path.
        path: PathBuf,
        /// The chroot directory.
        dir: PathBuf,
    },
    /// The control socket would not be reachable from inside the chroot (hull-vmm removes
    /// it at exit, after the chroot).
    #[error("--api-sock {path} is not inside --chroot {dir}")]
    ApiSockOutsideChroot {
        /// The socket path.
        path: PathBuf,
        /// The chroot directory.
        dir: PathBuf,
    },
    /// chroot(2) failed.
    #[error("chroot to {dir}: {source}")]
    Chroot {
        /// The chroot directory.
        dir: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// After the drop the process still holds, or could regain, a privilege.
    #[error("privileges were not dropped: {0}")]
    VerifyDrop(String),
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
        .map_err(|e| PrivilegeError::VerifyDrop(format!("getresuid: {e}")))?;
    if (r, e, s) != (id.uid, id.uid, id.uid) {
        return Err(PrivilegeError::VerifyDrop(format!("uids are {r}/{e}/{s}")));
    }
    // SAFETY: the three pointers are to live locals.
    check(unsafe { libc::getresgid(&mut r, &mut e, &mut s) })
        .map_err(|e| PrivilegeError::VerifyDrop(format!("getresgid: {e}")))?;
    if (r, e, s) != (id.gid, id.gid, id.gid) {
        return Err(PrivilegeError::VerifyDrop(format!("gids are {r}/{e}/{s}")));
    }
    // SAFETY: getgroups with a count of 0 only returns how many groups there are.
    let groups = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if groups != 0 {
        return Err(PrivilegeError::VerifyDrop(format!(
            "{groups} supplementary groups remain"
        )));
    }
    if id.uid != 0 {
        // SAFETY: plain integer argument; success is the failure we test for.
        if unsafe { libc::setuid(0) } == 0 {
            return Err(PrivilegeError::VerifyDrop("setuid(0) succeeded".into()));
        }
    }
    if id.gid != 0 && id.uid != 0 {
        // SAFETY: plain integer argument; success is the failure we test for.
        if unsafe { libc::setgid(0) } == 0 {
            return Err(PrivilegeError::VerifyDrop("setgid(0) succeeded".into()));
        }
    }
    Ok(())
}

/// `socket`'s path relative to `dir` (whose canonical form is `canonical`); `outside` if it
/// does not lie inside.
fn relative_to(
    dir: &Path,
    canonical: &Path,
    socket: &Path,
    outside: PrivilegeError,
) -> Result<PathBuf, PrivilegeError> {
    let parent = match socket.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = socket.file_name() else {
        return Err(outside);
    };
    let parent = parent
        .canonicalize()
        .map_err(|source| PrivilegeError::PrepareChroot {
            dir: dir.to_path_buf(),
            source,
        })?;
    match parent.strip_prefix(canonical) {
        Ok(relative) => Ok(relative.join(name)),
        Err(_) => Err(outside),
    }
}

/// A chroot prepared before the build and entered after it.
#[derive(Debug)]
pub struct Chroot {
    dir: PathBuf,
}

impl Chroot {
    /// Makes every path in `res` work from inside `dir`: kernel, initrd and console become
    /// absolute (they are opened before the chroot), the vsock and control sockets become
    /// relative to `dir` (they must lie inside it), and the working directory becomes `dir`.
    pub fn prepare(dir: &Path, res: &mut VmResources) -> Result<Self, PrivilegeError> {
        let io = |source| PrivilegeError::PrepareChroot {
            dir: dir.to_path_buf(),
            source,
        };
        let canonical = dir.canonicalize().map_err(io)?;
        res.kernel = std::path::absolute(&res.kernel).map_err(io)?;
        if let Some(p) = &mut res.initrd {
            *p = std::path::absolute(&*p).map_err(io)?;
        }
        if let ConsoleOutput::File(p) = &mut res.console {
            *p = std::path::absolute(&*p).map_err(io)?;
        }
        if let Some(uds) = &mut res.vsock_uds {
            let outside = PrivilegeError::VsockOutsideChroot {
                path: uds.clone(),
                dir: dir.to_path_buf(),
            };
            *uds = relative_to(dir, &canonical, uds, outside)?;
        }
        if let Some(api) = &mut res.api_sock {
            let outside = PrivilegeError::ApiSockOutsideChroot {
                path: api.clone(),
                dir: dir.to_path_buf(),
            };
            *api = relative_to(dir, &canonical, api, outside)?;
        }
        std::env::set_current_dir(&canonical).map_err(io)?;
        Ok(Chroot { dir: canonical })
    }

    /// Changes the root to the directory (the working directory since `prepare`).
    pub fn enter(self) -> Result<(), PrivilegeError> {
        let err = |source| PrivilegeError::Chroot {
            dir: self.dir.clone(),
            source,
        };
        std::env::set_current_dir(&self.dir).map_err(err)?;
        // SAFETY: chroot takes a NUL-terminated path (a C string literal).
        check(unsafe { libc::chroot(c".".as_ptr()) }).map_err(err)?;
        std::env::set_current_dir("/").map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resources with relative input paths and the vsock socket at `dir/pod/v.sock` (built
    /// through the parser, so new fields get their defaults).
    fn resources(dir: &Path) -> VmResources {
        use clap::Parser;
        let kernel = dir.join("k");
        std::fs::write(&kernel, b"k").unwrap();
        let cli = crate::config::Cli::try_parse_from([
            "hull-vmm".as_ref(),
            "--kernel".as_ref(),
            kernel.as_os_str(),
        ])
        .unwrap();
        let mut r = VmResources::try_from(cli).unwrap();
        r.kernel = "vmlinux".into();
        r.initrd = Some("initrd".into());
        r.console = ConsoleOutput::File("console.log".into());
        r.vsock_uds = Some(dir.join("pod/v.sock"));
        r.api_sock = Some(dir.join("pod/api.sock"));
        r
    }

    // One test: it changes the process's working directory.
    #[test]
    fn chroot_paths_become_absolute_and_the_socket_relative_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pod")).unwrap();
        let before = std::env::current_dir().unwrap();
        let mut res = resources(dir.path());
        let c = Chroot::prepare(dir.path(), &mut res).unwrap();
        let now = std::env::current_dir().unwrap();
        std::env::set_current_dir(&before).unwrap();
        assert_eq!(now, dir.path().canonicalize().unwrap());
        assert_eq!(res.kernel, before.join("vmlinux"));
        assert_eq!(res.initrd, Some(before.join("initrd")));
        assert_eq!(res.console, ConsoleOutput::File(before.join("console.log")));
        assert_eq!(res.vsock_uds, Some(PathBuf::from("pod/v.sock")));
        assert_eq!(res.api_sock, Some(PathBuf::from("pod/api.sock")));
        assert_eq!(c.dir, now);

        let other = tempfile::tempdir().unwrap();
        let mut res = resources(other.path());
        std::fs::create_dir(other.path().join("pod")).unwrap();
        let err = Chroot::prepare(dir.path(), &mut res).unwrap_err();
        assert!(
            matches!(err, PrivilegeError::VsockOutsideChroot { .. }),
            "{err}"
        );
        assert_eq!(std::env::current_dir().unwrap(), before);

        // The control socket must lie inside too (it is removed after the chroot).
        let mut res = resources(dir.path());
        res.api_sock = Some(other.path().join("pod/api.sock"));
        let err = Chroot::prepare(dir.path(), &mut res).unwrap_err();
        assert!(
            matches!(err, PrivilegeError::ApiSockOutsideChroot { .. }),
            "{err}"
        );
        assert_eq!(std::env::current_dir().unwrap(), before);
    }
}
